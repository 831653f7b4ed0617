//! `faustus topics` and `faustus groups`: administration.

use std::collections::BTreeMap;

use anyhow::{bail, Context as _, Result};
use faustus::wire::{Admin, Client, ClientConfig, NewTopic, OffsetSpec, Properties};

use crate::{AclAction, AclArgs, GroupAction, TopicAction};
use faustus::wire::acl::{AclBinding, AclFilter, Operation, PatternType, Permission, ResourceType};

/// The resource the flags name, if any.
fn acl_resource(a: &AclArgs) -> Option<(ResourceType, String)> {
    if let Some(t) = &a.topic {
        Some((ResourceType::Topic, t.clone()))
    } else if let Some(g) = &a.group {
        Some((ResourceType::Group, g.clone()))
    } else if let Some(x) = &a.transactional_id {
        Some((ResourceType::TransactionalId, x.clone()))
    } else if a.cluster {
        Some((ResourceType::Cluster, "kafka-cluster".into()))
    } else {
        None
    }
}

fn acl_filter(principal: Option<String>, a: &AclArgs) -> Result<Vec<AclFilter>> {
    let (resource_type, name) = match acl_resource(a) {
        Some((t, n)) => (t, Some(n)),
        None => (ResourceType::Any, None),
    };
    let pattern = match &a.resource_pattern_type {
        Some(p) => p.parse()?,
        None => PatternType::Any,
    };
    let operations: Vec<Operation> = if a.operations.is_empty() {
        vec![Operation::Any]
    } else {
        a.operations
            .iter()
            .map(|o| o.parse())
            .collect::<Result<_, _>>()?
    };
    Ok(operations
        .into_iter()
        .map(|operation| AclFilter {
            resource_type,
            name: name.clone(),
            pattern,
            principal: principal.clone(),
            host: a.host.clone(),
            operation,
            permission: Permission::Any,
        })
        .collect())
}

fn print_acl(a: &AclBinding) {
    out!(
        "{}\t{}\t{}\t{}\t{}\t{}\t{}",
        a.principal,
        a.permission,
        a.operation,
        a.resource_type,
        a.name,
        a.pattern,
        a.host
    );
}

pub(crate) async fn acls(props: &Properties, action: AclAction) -> Result<()> {
    let admin = Admin::new(Client::connect(ClientConfig::from_properties(props)?).await?);
    match action {
        AclAction::List { principal, acl } => {
            let mut all = Vec::new();
            for f in acl_filter(principal, &acl)? {
                all.extend(admin.describe_acls(&f).await?);
            }
            all.sort();
            all.dedup();
            for a in &all {
                print_acl(a);
            }
        }
        AclAction::Create { allow, deny, acl } => {
            let Some((resource_type, name)) = acl_resource(&acl) else {
                bail!("acls create: name the resource (--topic, --group, --transactional-id or --cluster)");
            };
            if acl.operations.is_empty() {
                bail!("acls create: give at least one --operation");
            }
            if allow.is_empty() && deny.is_empty() {
                bail!("acls create: give --allow-principal or --deny-principal (User:NAME)");
            }
            let pattern = match &acl.resource_pattern_type {
                Some(p) => p.parse()?,
                None => PatternType::Literal,
            };
            let mut bindings = Vec::new();
            for (principals, permission) in [(&allow, Permission::Allow), (&deny, Permission::Deny)]
            {
                for p in principals {
                    for o in &acl.operations {
                        bindings.push(AclBinding {
                            resource_type,
                            name: name.clone(),
                            pattern,
                            principal: p.clone(),
                            host: acl.host.clone().unwrap_or_else(|| "*".into()),
                            operation: o.parse()?,
                            permission,
                        });
                    }
                }
            }
            for (b, res) in bindings.iter().zip(admin.create_acls(&bindings).await?) {
                res.with_context(|| format!("creating {b}"))?;
                print_acl(b);
            }
        }
        AclAction::Delete { principal, acl } => {
            let filters = acl_filter(principal, &acl)?;
            for res in admin.delete_acls(&filters).await? {
                for a in res? {
                    print_acl(&a);
                }
            }
        }
    }
    Ok(())
}

pub(crate) async fn groups(props: &Properties, action: GroupAction) -> Result<()> {
    let admin = Admin::new(Client::connect(ClientConfig::from_properties(props)?).await?);
    match action {
        GroupAction::List => {
            for g in admin.list_groups().await? {
                out!("{}\t{}\t{}", g.group_id, g.protocol_type, g.state);
            }
        }
        GroupAction::Describe { group } => {
            let d = admin.describe_group(&group).await?;
            out!(
                "group {}: {} ({} members, assignor {})",
                d.group_id,
                d.state,
                d.members.len(),
                d.protocol
            );
            for m in &d.members {
                out!(
                    "  member {}{}\tclient {}\thost {}\tpartitions {:?}",
                    m.member_id,
                    m.instance_id
                        .as_ref()
                        .map(|i| format!(" (instance {i})"))
                        .unwrap_or_default(),
                    m.client_id,
                    m.host,
                    m.assignment
                );
            }
            let offsets = admin.group_offsets(&group).await?;
            let mut ends: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
            for ((t, p), off) in &offsets {
                if !ends.contains_key(t) {
                    ends.insert(
                        t.clone(),
                        admin
                            .list_offsets(t, &[], OffsetSpec::Latest, false)
                            .await?,
                    );
                }
                let end = ends[t].get(p).copied().unwrap_or(0);
                out!("  {t}-{p}\tcommitted {off}\tend {end}\tlag {}", end - off);
            }
        }
        GroupAction::Delete { group } => {
            admin.delete_group(&group).await?;
            out!("deleted group {group}");
        }
        GroupAction::ResetOffsets {
            group,
            topic,
            to_earliest,
            to_latest,
            to_offset,
        } => {
            let target: BTreeMap<i32, i64> = if to_earliest {
                admin
                    .list_offsets(&topic, &[], OffsetSpec::Earliest, false)
                    .await?
            } else if to_latest {
                admin
                    .list_offsets(&topic, &[], OffsetSpec::Latest, false)
                    .await?
            } else if let Some(o) = to_offset {
                admin
                    .describe_topic(&topic)
                    .await?
                    .partitions
                    .iter()
                    .map(|p| (p.id, o))
                    .collect()
            } else {
                bail!("reset-offsets needs --to-earliest, --to-latest or --to-offset N");
            };
            let offsets = target
                .iter()
                .map(|(p, o)| ((topic.clone(), *p), *o))
                .collect();
            admin.set_group_offsets(&group, &offsets).await?;
            for (p, o) in target {
                out!("{group} {topic}-{p} -> {o}");
            }
        }
    }
    Ok(())
}

pub(crate) async fn topics(props: &Properties, action: TopicAction) -> Result<()> {
    let client = Client::connect(ClientConfig::from_properties(props)?).await?;
    let admin = Admin::new(client);
    match action {
        TopicAction::List => {
            for t in admin.list_topics().await? {
                out!(
                    "{}\t{} partitions{}",
                    t.name,
                    t.partitions.len(),
                    if t.internal { "\tinternal" } else { "" }
                );
            }
        }
        TopicAction::Create {
            name,
            partitions,
            replication,
            config,
        } => {
            let mut t = NewTopic::new(&name, partitions, replication);
            for kv in &config {
                let (k, v) = kv
                    .split_once('=')
                    .with_context(|| format!("-C {kv}: expected key=value"))?;
                t = t.config(k, v);
            }
            admin.create_topic(t, false).await?;
            out!("created {name} ({partitions} partitions, replication {replication})");
        }
        TopicAction::Delete { name } => {
            if let Some(Err(e)) = admin.delete_topics(&[&name]).await?.pop() {
                return Err(e.into());
            }
            out!("deleted {name}");
        }
        TopicAction::Describe { name } => {
            let t = admin.describe_topic(&name).await?;
            let starts = admin
                .list_offsets(&name, &[], OffsetSpec::Earliest, false)
                .await?;
            let ends = admin
                .list_offsets(&name, &[], OffsetSpec::Latest, false)
                .await?;
            out!("topic {name}: {} partitions", t.partitions.len());
            for p in &t.partitions {
                out!(
                    "  partition {}\tleader {}\treplicas {:?}\tisr {:?}\toffsets {}..{}",
                    p.id,
                    p.leader,
                    p.replicas,
                    p.isr,
                    starts.get(&p.id).copied().unwrap_or(-1),
                    ends.get(&p.id).copied().unwrap_or(-1)
                );
            }
            for (k, v) in admin.describe_topic_config(&name).await? {
                out!("  {k}={}", v.unwrap_or_default());
            }
        }
    }
    Ok(())
}

/// `faustus app status`: a Faustus (or any Kafka Streams-style) app at a
/// glance, from its group and its topics: members and what they own, the
/// lag of every input partition with its owner, the app's internal topics
/// (changelogs, repartition and join topics: `<app>-…`).
pub(crate) async fn app_status(props: &Properties, app: &str) -> Result<()> {
    let admin = Admin::new(Client::connect(ClientConfig::from_properties(props)?).await?);
    let d = admin
        .describe_group(app)
        .await
        .with_context(|| format!("describing the group of app {app}"))?;
    let offsets = admin.group_offsets(app).await?;
    if d.members.is_empty() && offsets.is_empty() {
        bail!("app {app}: no group of that name has members or committed offsets");
    }
    out!(
        "app {app}: group {}, {} members{}",
        d.state,
        d.members.len(),
        if d.protocol.is_empty() {
            String::new()
        } else {
            format!(", assignor {}", d.protocol)
        }
    );
    let mut owner: BTreeMap<(String, i32), String> = BTreeMap::new();
    for m in &d.members {
        let n: usize = m.assignment.values().map(Vec::len).sum();
        out!(
            "  member {}\thost {}\t{n} partitions",
            m.instance_id.as_deref().unwrap_or(&m.member_id),
            m.host
        );
        let who = m.instance_id.as_deref().unwrap_or(&m.member_id);
        for (t, ps) in &m.assignment {
            for p in ps {
                owner.insert((t.clone(), *p), who.to_owned());
            }
        }
    }
    // Committed offsets and the ends (last stable offsets: what an
    // exactly-once app can read) of every input partition: those with a
    // committed offset and those a member owns.
    let mut parts: BTreeMap<(String, i32), Option<i64>> = BTreeMap::new();
    for tp in owner.keys() {
        parts.insert(tp.clone(), None);
    }
    for ((t, p), off) in &offsets {
        parts.insert((t.clone(), *p), Some(*off));
    }
    let mut by_topic: BTreeMap<String, Vec<(i32, Option<i64>, i64)>> = BTreeMap::new();
    let mut ends: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
    for ((t, p), off) in &parts {
        if !ends.contains_key(t) {
            ends.insert(
                t.clone(),
                admin.list_offsets(t, &[], OffsetSpec::Latest, true).await?,
            );
        }
        let end = ends[t].get(p).copied().unwrap_or(0);
        by_topic.entry(t.clone()).or_default().push((*p, *off, end));
    }
    // Nothing committed yet: all of the partition is still to read.
    let lag = |off: &Option<i64>, end: &i64| (end - off.unwrap_or(0)).max(0);
    let total: i64 = by_topic
        .values()
        .flatten()
        .map(|(_, off, end)| lag(off, end))
        .sum();
    out!("input lag {total}");
    for (t, parts) in &by_topic {
        let sum: i64 = parts.iter().map(|(_, off, end)| lag(off, end)).sum();
        out!("  {t}\tlag {sum}");
        for (p, off, end) in parts {
            let who = owner.get(&(t.clone(), *p)).map_or("-", String::as_str);
            let committed = off.map_or_else(|| "-".to_owned(), |o| o.to_string());
            out!(
                "    {t}-{p}\tcommitted {committed}\tend {end}\tlag {}\towner {who}",
                lag(off, end)
            );
        }
    }
    let prefix = format!("{app}-");
    let mut internal: Vec<_> = admin
        .list_topics()
        .await?
        .into_iter()
        .filter(|t| t.name.starts_with(&prefix) && !by_topic.contains_key(&*t.name))
        .collect();
    internal.sort_by(|a, b| a.name.cmp(&b.name));
    if !internal.is_empty() {
        out!("internal topics");
        for t in internal {
            let ends = admin
                .list_offsets(&t.name, &[], OffsetSpec::Latest, false)
                .await?;
            let starts = admin
                .list_offsets(&t.name, &[], OffsetSpec::Earliest, false)
                .await?;
            let records: i64 = ends
                .iter()
                .map(|(p, e)| e - starts.get(p).copied().unwrap_or(0))
                .sum();
            out!(
                "  {}\t{} partitions\t{records} records",
                t.name,
                t.partitions.len()
            );
        }
    }
    Ok(())
}

//! `faustus topics` and `faustus groups`: administration.

use std::collections::BTreeMap;

use anyhow::{bail, Context as _, Result};
use faustus::wire::{Admin, Client, ClientConfig, NewTopic, OffsetSpec, Properties};

use crate::{GroupAction, TopicAction};

pub(crate) async fn groups(props: &Properties, action: GroupAction) -> Result<()> {
    let admin = Admin::new(Client::connect(ClientConfig::from_properties(props)?).await?);
    match action {
        GroupAction::List => {
            for g in admin.list_groups().await? {
                println!("{}\t{}\t{}", g.group_id, g.protocol_type, g.state);
            }
        }
        GroupAction::Describe { group } => {
            let d = admin.describe_group(&group).await?;
            println!(
                "group {}: {} ({} members, assignor {})",
                d.group_id,
                d.state,
                d.members.len(),
                d.protocol
            );
            for m in &d.members {
                println!(
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
                println!("  {t}-{p}\tcommitted {off}\tend {end}\tlag {}", end - off);
            }
        }
        GroupAction::Delete { group } => {
            admin.delete_group(&group).await?;
            println!("deleted group {group}");
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
                println!("{group} {topic}-{p} -> {o}");
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
                println!(
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
            println!("created {name} ({partitions} partitions, replication {replication})");
        }
        TopicAction::Delete { name } => {
            if let Some(Err(e)) = admin.delete_topics(&[&name]).await?.pop() {
                return Err(e.into());
            }
            println!("deleted {name}");
        }
        TopicAction::Describe { name } => {
            let t = admin.describe_topic(&name).await?;
            let starts = admin
                .list_offsets(&name, &[], OffsetSpec::Earliest, false)
                .await?;
            let ends = admin
                .list_offsets(&name, &[], OffsetSpec::Latest, false)
                .await?;
            println!("topic {name}: {} partitions", t.partitions.len());
            for p in &t.partitions {
                println!(
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
                println!("  {k}={}", v.unwrap_or_default());
            }
        }
    }
    Ok(())
}

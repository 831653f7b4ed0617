//! kcat's metadata listing (`-L`) and offsets-for-times query (`-Q`), printed
//! as kcat prints them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Context as _, Result};
use faustus::wire::client::{ClusterInfo, TopicInfo};
use faustus::wire::{Admin, Client, ClientConfig, OffsetSpec, Properties};

/// `faustus metadata [-t TOPIC]` (kcat `-L`).
pub(crate) async fn list(props: &Properties, topic: Option<&str>) -> Result<()> {
    let client = Client::connect(ClientConfig::from_properties(props)?).await?;
    let admin = Admin::new(client.clone());
    let mut topics: Vec<Result<std::sync::Arc<TopicInfo>, String>> = Vec::new();
    match topic {
        // One Metadata request, as kcat sends: an unknown topic is reported
        // at once, not retried until it may appear.
        Some(t) => topics.push(
            client
                .topic(t, true, false)
                .await
                .map_err(|e| kcat_error(&e)),
        ),
        None => {
            let mut all = admin.list_topics().await?;
            all.sort_by(|a, b| a.name.cmp(&b.name));
            topics.extend(all.into_iter().map(Ok));
        }
    }
    let bootstrap = client
        .config()
        .bootstrap_servers
        .first()
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = topic.into_iter().collect();
    print!(
        "{}",
        render(&client.cluster(), &bootstrap, topic, &names, &topics)
    );
    Ok(())
}

/// The error text librdkafka gives a broker error code in a listing.
fn kcat_error(e: &faustus::wire::Error) -> String {
    use faustus::wire::protocol::ErrorCode;
    match e {
        faustus::wire::Error::UnknownPartition { .. } => UNKNOWN_TOPIC.to_owned(),
        e if e.code() == Some(ErrorCode::UNKNOWN_TOPIC_OR_PARTITION) => UNKNOWN_TOPIC.to_owned(),
        e => e.to_string(),
    }
}

const UNKNOWN_TOPIC: &str = "Broker: Unknown topic or partition";

fn ids(v: &[i32]) -> String {
    v.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
}

/// The listing, byte for byte as kcat 1.7 writes it.
fn render(
    cluster: &ClusterInfo,
    bootstrap: &str,
    topic: Option<&str>,
    names: &[&str],
    topics: &[Result<std::sync::Arc<TopicInfo>, String>],
) -> String {
    let mut brokers: Vec<(&i32, &String)> = cluster.brokers.iter().collect();
    brokers.sort();
    // The broker that answered: the first bootstrap address, as kcat asks it.
    let origin = brokers
        .iter()
        .find(|(_, addr)| addr.as_str() == bootstrap)
        .or(brokers.first())
        .map_or((-1, bootstrap.to_owned()), |(id, addr)| {
            (**id, (*addr).clone())
        });
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Metadata for {} (from broker {}: {}/{}):",
        topic.unwrap_or("all topics"),
        origin.0,
        origin.1,
        origin.0
    );
    let _ = writeln!(s, " {} brokers:", brokers.len());
    for (id, addr) in &brokers {
        let _ = writeln!(
            s,
            "  broker {id} at {addr}{}",
            if **id == cluster.controller {
                " (controller)"
            } else {
                ""
            }
        );
    }
    let _ = writeln!(s, " {} topics:", topics.len());
    for (i, t) in topics.iter().enumerate() {
        match t {
            Ok(t) => {
                let _ = writeln!(
                    s,
                    "  topic \"{}\" with {} partitions:",
                    t.name,
                    t.partitions.len()
                );
                for p in &t.partitions {
                    let _ = write!(
                        s,
                        "    partition {}, leader {}, replicas: {}, isrs: {}",
                        p.id,
                        p.leader,
                        ids(&p.replicas),
                        ids(&p.isr)
                    );
                    if !p.error.is_ok() {
                        let _ = write!(s, ", {}", p.error);
                    }
                    s.push('\n');
                }
            }
            Err(e) => {
                let name = names.get(i).copied().unwrap_or("?");
                let _ = writeln!(s, "  topic \"{name}\" with 0 partitions: {e}");
            }
        }
    }
    s
}

/// `faustus query -t TOPIC:PARTITION:TS ...` (kcat `-Q`): the first offset at
/// or after each timestamp (-1 past the end; TS -1 the end, -2 the start).
pub(crate) async fn query(props: &Properties, specs: &[String]) -> Result<()> {
    let mut wanted: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for spec in specs {
        let mut parts = spec.rsplitn(3, ':');
        let (ts, p, t) = (parts.next(), parts.next(), parts.next());
        let (Some(t), Some(p), Some(ts)) = (t, p, ts) else {
            anyhow::bail!("-t {spec}: -Q takes TOPIC:PARTITION:TIMESTAMP");
        };
        let p: i32 = p
            .parse()
            .with_context(|| format!("-t {spec}: bad partition"))?;
        let ts: i64 = ts
            .parse()
            .with_context(|| format!("-t {spec}: bad timestamp"))?;
        wanted.insert((t.to_owned(), p), ts);
    }
    let admin = Admin::new(Client::connect(ClientConfig::from_properties(props)?).await?);
    let mut out = String::new();
    for ((t, p), ts) in &wanted {
        let spec = match ts {
            -1 => OffsetSpec::Latest,
            -2 => OffsetSpec::Earliest,
            ts => OffsetSpec::Timestamp(*ts),
        };
        let got = admin.list_offsets(t, &[*p], spec, false).await?;
        let _ = writeln!(
            out,
            "{t} [{p}] offset {}",
            got.get(p).copied().unwrap_or(-1)
        );
    }
    print!("{out}");
    Ok(())
}

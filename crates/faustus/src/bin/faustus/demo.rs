//! `faustus demo`: a produce and consume round trip with a report.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{bail, Result};
use faustus::wire::consumer::{Consumer, ConsumerConfig, Offset};
use faustus::wire::producer::{Producer, ProducerConfig, ProducerRecord};
use faustus::wire::{Admin, Client, ClientConfig, NewTopic, Properties};

/// The demo: produce records keyed by user, read them back, and report.
pub(crate) async fn demo(props: &Properties, n: usize) -> Result<()> {
    let props = props.clone();
    let topic = format!("faustus-demo-{}", std::process::id());
    let client = Client::connect(ClientConfig::from_properties(&props)?).await?;
    let admin = Admin::new(client.clone());
    admin
        .create_topic(NewTopic::new(&topic, 6, 1), true)
        .await?;
    out!("demo: created topic {topic} with 6 partitions");

    let producer = Producer::with_client(client.clone(), ProducerConfig::from_properties(&props)?);
    let started = Instant::now();
    let mut pending = Vec::with_capacity(n);
    for i in 0..n {
        let rec = ProducerRecord::new(&topic)
            .key(format!("user-{}", i % 1000))
            .value(format!("{{\"click\":{i},\"url\":\"/page/{}\"}}", i % 50));
        pending.push(producer.send(rec).await?);
    }
    let mut per_partition: BTreeMap<i32, u64> = BTreeMap::new();
    for d in pending {
        *per_partition.entry(d.await?.partition).or_default() += 1;
    }
    let took = started.elapsed();
    producer.close().await?;
    out!(
        "demo: produced {n} records in {:.2}s ({:.0} records/s), idempotent, acks=all",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
    out!("demo: per partition: {per_partition:?}");

    let mut consumer = Consumer::with_client(client, ConsumerConfig::from_properties(&props)?);
    consumer.assign(&topic, &[], Offset::Beginning).await?;
    let started = Instant::now();
    let mut got = 0usize;
    let mut first = None;
    while got < n {
        for part in consumer.poll().await? {
            for rec in part.records() {
                let rec = rec?;
                if first.is_none() {
                    first = Some(format!(
                        "{}-{}@{} key={} value={}",
                        part.topic(),
                        part.partition(),
                        rec.offset,
                        String::from_utf8_lossy(rec.key().unwrap_or_default()),
                        String::from_utf8_lossy(rec.value().unwrap_or_default())
                    ));
                }
                got += 1;
            }
        }
    }
    let took = started.elapsed();
    out!(
        "demo: consumed {got} records in {:.2}s ({:.0} records/s)",
        took.as_secs_f64(),
        got as f64 / took.as_secs_f64()
    );
    if let Some(f) = first {
        out!("demo: first record: {f}");
    }
    admin.delete_topics(&[&topic]).await?;
    out!("demo: round trip of {got} / {n} records through {topic}: ok");
    if got != n {
        bail!("expected {n} records, got {got}");
    }
    Ok(())
}

//! Faults against real Kafka: a broker killed and restarted under an
//! idempotent producer, and corrupt batches on the broker's disk.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use faustus_suite::{unique_topic, Deadline};
use faustus_testcontainers::{shared, KafkaCluster};
use faustus_wire::consumer::{Consumer, ConsumerConfig, Offset};
use faustus_wire::producer::{DeliveryFuture, Producer, ProducerConfig, ProducerRecord};
use faustus_wire::record::{Batches, RecordError};
use faustus_wire::{Admin, Error, NewTopic, OffsetSpec, Properties};

async fn produce_range(p: &Producer, topic: &str, range: std::ops::Range<usize>) {
    let mut pending: Vec<DeliveryFuture> = Vec::new();
    for i in range {
        pending.push(
            p.send(
                ProducerRecord::new(topic)
                    .key(format!("k{}", i % 64))
                    .value(i.to_string()),
            )
            .await
            .expect("queued"),
        );
    }
    for d in pending {
        d.await.expect("delivered despite the broker failure");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producer_survives_a_broker_kill_and_restart() {
    let kafka = Arc::new(KafkaCluster::start(3).expect("3-node cluster"));
    let props = Properties::new()
        .set("bootstrap.servers", kafka.bootstrap())
        .set("acks", "all")
        .set("request.timeout.ms", "5000")
        .set("retry.backoff.ms", "50")
        .set("linger.ms", "5");
    let producer = Producer::connect(ProducerConfig::from_properties(&props).expect("config"))
        .await
        .expect("producer");
    let topic = unique_topic("idempotence");
    Admin::new(producer.client().clone())
        .create_topic(
            NewTopic::new(&topic, 3, 3).config("min.insync.replicas", "2"),
            false,
        )
        .await
        .expect("topic");

    produce_range(&producer, &topic, 0..30_000).await;
    // Kill a broker while the next range is in flight.
    let k = kafka.clone();
    let kill = tokio::task::spawn_blocking(move || k.kill(2));
    produce_range(&producer, &topic, 30_000..90_000).await;
    kill.await.expect("join").expect("kill node 2");
    // Restart it while producing again.
    let k = kafka.clone();
    let start = tokio::task::spawn_blocking(move || k.start_node(2));
    produce_range(&producer, &topic, 90_000..150_000).await;
    start.await.expect("join").expect("start node 2");
    produce_range(&producer, &topic, 150_000..160_000).await;
    producer.close().await.expect("close");

    // Read everything back: each value once, in send order per partition.
    let mut c = Consumer::connect(ConsumerConfig::from_properties(&props).expect("config"))
        .await
        .expect("consumer");
    c.assign(&topic, &[], Offset::Beginning)
        .await
        .expect("assign");
    let ends = Admin::new(c.client().clone())
        .list_offsets(&topic, &[], OffsetSpec::Latest, false)
        .await
        .expect("ends");
    let total: i64 = ends.values().sum();
    assert_eq!(total, 160_000, "no duplicates and no gaps in the log");
    let mut seen = vec![false; 160_000];
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    let mut got = 0;
    let deadline = Deadline::new("every record back", Duration::from_secs(300));
    while got < 160_000 {
        deadline.check(got);
        for part in c.poll().await.expect("poll") {
            for r in part.records() {
                let r = r.expect("record");
                let i: usize = std::str::from_utf8(r.value().expect("value"))
                    .expect("utf-8")
                    .parse()
                    .expect("number");
                assert!(!seen[i], "duplicate {i}");
                seen[i] = true;
                let l = last.entry(part.partition()).or_insert(-1);
                assert!(
                    *l < i as i64,
                    "partition {} reordered at {i}",
                    part.partition()
                );
                *l = i as i64;
                got += 1;
            }
        }
    }
    assert!(seen.iter().all(|s| *s));
}

/// Writes three single-record batches and returns the topic.
async fn three_batches(bootstrap: &str) -> String {
    let topic = unique_topic("corrupt");
    let props = Properties::new().set("bootstrap.servers", bootstrap);
    let p = Producer::connect(ProducerConfig::from_properties(&props).expect("config"))
        .await
        .expect("producer");
    Admin::new(p.client().clone())
        .create_topic(NewTopic::new(&topic, 1, 1), false)
        .await
        .expect("topic");
    for i in 0..3 {
        // One at a time: each record is its own batch.
        p.send(ProducerRecord::new(&topic).value(format!("batch-{i}")))
            .await
            .expect("queued")
            .await
            .expect("delivered");
    }
    p.close().await.expect("close");
    topic
}

/// Damages the partition's segment on disk: `f` gets the log file's bytes and
/// the file offsets at which each batch starts.
fn damage(kafka: &KafkaCluster, topic: &str, f: impl FnOnce(&mut Vec<u8>, &[usize])) {
    let seg = kafka
        .data_dir(1)
        .expect("a local cluster")
        .join(format!("{topic}-0"))
        .join("00000000000000000000.log");
    let mut bytes = std::fs::read(&seg).expect("segment file");
    let mut starts = Vec::new();
    let mut at = 0;
    for b in Batches::new(bytes::Bytes::from(bytes.clone())) {
        starts.push(at);
        at += b.expect("intact before damage").as_bytes().len();
    }
    assert_eq!(starts.len(), 3);
    f(&mut bytes, &starts);
    std::fs::write(&seg, &bytes).expect("write segment");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_batches_on_disk_give_typed_errors_and_do_not_stall() {
    let kafka = shared().expect("kafka");
    if kafka.data_dir(1).is_none() {
        eprintln!("skipped: the shared cluster's disk is not reachable from here");
        return;
    }
    let topic = three_batches(kafka.bootstrap()).await;
    damage(kafka, &topic, |bytes, starts| {
        // A flipped byte in batch 1's record: its CRC no longer matches.
        // (The broker serves segment bytes as they are, so only a client
        // that checks CRCs notices.)
        let last = starts[2] - 1;
        bytes[last] ^= 0xff;
    });
    let props = Properties::new().set("bootstrap.servers", kafka.bootstrap());
    let mut c = Consumer::connect(ConsumerConfig::from_properties(&props).expect("config"))
        .await
        .expect("consumer");
    c.assign(&topic, &[0], Offset::Beginning)
        .await
        .expect("assign");
    let tp = c.assignment().remove(0);

    let (records, err) = poll_until_error(&mut c).await;
    assert_eq!(
        records,
        vec!["batch-0".to_owned()],
        "the good batch is delivered"
    );
    match &err {
        Error::Record {
            topic: t,
            partition: 0,
            offset: 1,
            source: RecordError::Crc { .. },
        } if *t == topic => {}
        other => panic!("expected a CRC error at {topic}-0 offset 1, got {other}"),
    }
    assert!(
        err.to_string().contains(&format!("{topic}-0 at offset 1")),
        "{err}"
    );
    // The partition is stopped, not retried in a loop: polls return nothing.
    assert!(c.poll().await.expect("poll").is_empty());
    assert_eq!(c.position(&tp), Some(1));

    // Seeking past the bad batch goes on with the next one.
    c.seek(&tp, Offset::At(2)).expect("seek past");
    let mut after = Vec::new();
    let deadline = Deadline::new("the batch after the bad one", Duration::from_secs(60));
    while after.is_empty() {
        deadline.check(());
        for part in c.poll().await.expect("poll") {
            for r in part.records() {
                after.push(
                    String::from_utf8_lossy(r.expect("record").value().unwrap_or_default())
                        .into_owned(),
                );
            }
        }
    }
    assert_eq!(after, vec!["batch-2".to_owned()]);
}

async fn poll_until_error(c: &mut Consumer) -> (Vec<String>, Error) {
    let mut records = Vec::new();
    let deadline = Deadline::new("the bad batch's error", Duration::from_secs(60));
    loop {
        deadline.check(&records);
        match c.poll().await {
            Ok(parts) => {
                for part in parts {
                    for r in part.records() {
                        let r = r.expect("record");
                        records.push(
                            String::from_utf8_lossy(r.value().unwrap_or_default()).into_owned(),
                        );
                    }
                }
            }
            Err(e) => {
                // Data fetched before the bad batch is still handed out.
                for part in c.poll().await.unwrap_or_default() {
                    for r in part.records().flatten() {
                        records.push(
                            String::from_utf8_lossy(r.value().unwrap_or_default()).into_owned(),
                        );
                    }
                }
                return (records, e);
            }
        }
    }
}

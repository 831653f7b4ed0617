//! Produce → consume round trips through the harness Kafka with our own
//! producer and consumer: every compression type and every `acks` setting.
//! Every record must arrive exactly once, in per-partition order, with key,
//! value, headers and timestamp intact.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use faustus_suite::{consumer_from_beginning, init_tracing, millis_ago, unique_topic};
use faustus_testcontainers::shared;
use faustus_wire::consumer::Consumer;
use faustus_wire::producer::{Producer, ProducerConfig, ProducerRecord};
use faustus_wire::{Admin, NewTopic, Properties};

/// Records per round trip: `FAUSTUS_ROUNDTRIP_RECORDS`, 1,000,000 by default
/// (the acceptance figure).
fn records() -> usize {
    std::env::var("FAUSTUS_ROUNDTRIP_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

/// How long producing, and then consuming, may take before the test fails
/// (generous: CI runs the tests side by side on two cores).
const PHASE: Duration = Duration::from_secs(300);

fn value_of(i: usize) -> Vec<u8> {
    let mut v = format!("value-{i:012}-").into_bytes();
    v.resize(100, b'x' + (i % 3) as u8);
    v
}

async fn round_trip(settings: &[(&str, &str)], partitions: i32) {
    init_tracing();
    let kafka = shared().expect("kafka");
    let n = records();
    // Recent timestamps: records older than retention.ms may be deleted
    // while the test runs.
    let base_ts = millis_ago(Duration::from_secs(3600));
    let topic = unique_topic("roundtrip");
    let mut props = Properties::new().set("bootstrap.servers", kafka.bootstrap());
    for (k, v) in settings {
        props.insert(*k, *v);
    }
    props.insert("linger.ms", "5");
    props.insert("batch.size", "65536");
    let producer =
        Producer::connect(ProducerConfig::from_properties(&props).expect("producer config"))
            .await
            .expect("producer");
    Admin::new(producer.client().clone())
        .create_topic(NewTopic::new(&topic, partitions, 1), false)
        .await
        .expect("topic");
    // A stuck phase fails the test with where it stopped instead of hanging.
    let acked = std::sync::atomic::AtomicUsize::new(0);
    let produce = async {
        let mut pending = Vec::new();
        for i in 0..n {
            let rec = ProducerRecord::new(&topic)
                .key(format!("k{i}"))
                .value(value_of(i))
                .header("i", i.to_string())
                .timestamp(base_ts + i as i64);
            pending.push(producer.send(rec).await.expect("queued"));
            if pending.len() >= 100_000 {
                for d in pending.drain(..) {
                    d.await.expect("delivered");
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        for d in pending {
            d.await.expect("delivered");
            acked.fetch_add(1, Ordering::Relaxed);
        }
    };
    if tokio::time::timeout(PHASE, produce).await.is_err() {
        panic!(
            "{topic}: producing stalled with {} of {n} acknowledged",
            acked.load(Ordering::Relaxed)
        );
    }
    producer.close().await.expect("close");

    let mut consumer = consumer_from_beginning(&props, &topic).await;
    let mut seen = vec![false; n];
    let mut last_index: BTreeMap<i32, i64> = BTreeMap::new();
    let mut got = 0usize;
    let mut next_offset: BTreeMap<i32, i64> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + PHASE;
    while got < n {
        let parts = tokio::time::timeout_at(deadline, consumer.poll())
            .await
            .unwrap_or_else(|_| panic!("{topic}: consuming stalled at {got} of {n}: {consumer:?}"))
            .expect("poll");
        assert!(
            tokio::time::Instant::now() < deadline,
            "{topic}: consuming stalled at {got} of {n}: {consumer:?}"
        );
        for part in parts {
            let expected = next_offset.entry(part.partition()).or_insert(0);
            assert_eq!(
                part.start_offset(),
                *expected,
                "{topic}-{}: fetched from {} after delivering up to {}",
                part.partition(),
                part.start_offset(),
                *expected
            );
            for rec in part.records() {
                let rec = rec.expect("valid record");
                assert_eq!(
                    rec.offset,
                    *expected,
                    "{topic}-{}: offset gap; batches {:?}",
                    part.partition(),
                    part.batches()
                        .iter()
                        .map(|b| (b.base_offset(), b.last_offset()))
                        .collect::<Vec<_>>()
                );
                *expected += 1;
                let header: Vec<(&str, Option<&[u8]>)> = rec.headers().collect();
                assert_eq!(header.len(), 1);
                let i: usize = std::str::from_utf8(header[0].1.expect("header value"))
                    .expect("utf-8")
                    .parse()
                    .expect("index");
                assert!(!seen[i], "record {i} delivered twice");
                seen[i] = true;
                assert_eq!(rec.key(), Some(format!("k{i}").as_bytes()));
                assert_eq!(rec.value(), Some(&value_of(i)[..]));
                assert_eq!(rec.timestamp, base_ts + i as i64);
                let last = last_index.entry(part.partition()).or_insert(-1);
                assert!(
                    *last < i as i64,
                    "partition {} out of order at {i}",
                    part.partition()
                );
                *last = i as i64;
                got += 1;
            }
        }
    }
    assert!(seen.iter().all(|s| *s), "every record arrived");
    Admin::new(consumer.client().clone())
        .delete_topics(&[&topic])
        .await
        .expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_uncompressed_acks_all() {
    round_trip(&[("acks", "all")], 6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_acks_1() {
    round_trip(&[("acks", "1")], 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_acks_0() {
    round_trip(&[("acks", "0")], 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_gzip() {
    round_trip(&[("compression.type", "gzip")], 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_snappy() {
    round_trip(&[("compression.type", "snappy")], 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_lz4() {
    round_trip(&[("compression.type", "lz4")], 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_zstd() {
    round_trip(&[("compression.type", "zstd")], 3).await;
}

/// A partition paused between polls hands out none of its records (not
/// even those the consumer fetched ahead while the caller worked) until it
/// is resumed; then they come in order from where it stopped, none lost or
/// repeated. The engine pauses partitions that are restoring or hold too
/// much of a join, so this must hold for every fetch in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_partition_is_held_back_until_resumed() {
    init_tracing();
    let kafka = shared().expect("kafka");
    let topic = unique_topic("paused");
    const PER_PARTITION: i64 = 2_000;
    // Small batches and small fetches: each partition takes many fetches.
    let props = Properties::new()
        .set("bootstrap.servers", kafka.bootstrap())
        .set("batch.size", "1024")
        .set("linger.ms", "0")
        .set("max.partition.fetch.bytes", "4096");
    let producer = Producer::connect(ProducerConfig::from_properties(&props).expect("config"))
        .await
        .expect("producer");
    Admin::new(producer.client().clone())
        .create_topic(NewTopic::new(&topic, 2, 1), false)
        .await
        .expect("topic");
    let mut pending = Vec::new();
    for i in 0..PER_PARTITION {
        for p in 0..2 {
            let rec = ProducerRecord::new(&topic)
                .partition(p)
                .value(value_of(i as usize));
            pending.push(producer.send(rec).await.expect("queued"));
        }
    }
    for d in pending {
        d.await.expect("delivered");
    }
    producer.close().await.expect("close");

    let mut consumer = consumer_from_beginning(&props, &topic).await;
    let mut next = [0i64; 2];
    let deadline = tokio::time::Instant::now() + PHASE;
    let poll = async |consumer: &mut Consumer, next: &mut [i64; 2]| {
        let parts = tokio::time::timeout_at(deadline, consumer.poll())
            .await
            .unwrap_or_else(|_| panic!("{topic}: stalled at {next:?}: {consumer:?}"))
            .expect("poll");
        let mut from = [false; 2];
        for part in parts {
            let p = part.partition() as usize;
            from[p] = true;
            for rec in part.records() {
                let rec = rec.expect("valid record");
                assert_eq!(rec.offset, next[p], "{topic}-{p}: offset gap or repeat");
                assert_eq!(rec.value(), Some(&value_of(rec.offset as usize)[..]));
                next[p] += 1;
            }
        }
        from
    };
    while next[0] == 0 {
        poll(&mut consumer, &mut next).await;
    }
    assert!(
        next[0] < PER_PARTITION,
        "one fetch took the whole partition"
    );
    let tp0 = faustus_wire::types::TopicPartition {
        topic: topic.as_str().into(),
        partition: 0,
    };
    consumer.pause(&tp0);
    let stopped_at = next[0];
    while next[1] < PER_PARTITION {
        let from = poll(&mut consumer, &mut next).await;
        assert!(!from[0], "{topic}-0 delivered records while paused");
    }
    assert_eq!(next[0], stopped_at);
    assert_eq!(consumer.position(&tp0), Some(stopped_at));
    consumer.resume(&tp0);
    while next[0] < PER_PARTITION {
        poll(&mut consumer, &mut next).await;
    }
    assert_eq!(next, [PER_PARTITION; 2]);
}

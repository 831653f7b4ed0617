//! Our producer against the harness Kafka, checked with Kafka's own tools.

use std::collections::BTreeMap;
use std::process::Stdio;

use faustus_suite::unique_topic;
use faustus_testcontainers::shared;
use faustus_wire::producer::{partition_for_key, Producer, ProducerConfig, ProducerRecord};
use faustus_wire::{Admin, NewTopic, Properties};

async fn producer(extra: &[(&str, &str)]) -> Producer {
    let kafka = shared().expect("kafka");
    let mut props = Properties::new().set("bootstrap.servers", kafka.bootstrap());
    for (k, v) in extra {
        props.insert(*k, *v);
    }
    Producer::connect(ProducerConfig::from_properties(&props).expect("config"))
        .await
        .expect("connect")
}

#[tokio::test]
async fn keyed_records_land_where_the_java_client_puts_them_in_order() {
    let p = producer(&[("linger.ms", "2")]).await;
    let topic = unique_topic("produce-keyed");
    Admin::new(p.client().clone())
        .create_topic(NewTopic::new(&topic, 6, 1), false)
        .await
        .expect("topic");
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let mut futures = Vec::with_capacity(n);
    for i in 0..n {
        let key = format!("key-{}", i % 97);
        futures.push((
            key.clone(),
            p.send(
                ProducerRecord::new(&topic)
                    .key(key)
                    .value(format!("value-{i}")),
            )
            .await
            .expect("queued"),
        ));
    }
    let mut offsets: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for (key, f) in futures {
        let meta = f.await.expect("delivered");
        assert_eq!(
            meta.partition,
            partition_for_key(key.as_bytes(), 6),
            "{key}"
        );
        offsets.entry(meta.partition).or_default().push(meta.offset);
    }
    // Per partition, records got consecutive offsets in send order.
    for (part, offs) in &offsets {
        let expect: Vec<i64> = (0..offs.len() as i64).collect();
        assert_eq!(offs, &expect, "partition {part}");
    }
    assert_eq!(offsets.values().map(Vec::len).sum::<usize>(), n);
    p.close().await.expect("close");
}

#[tokio::test]
async fn kafkas_console_consumer_reads_what_we_produce() {
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let p = producer(&[("compression.type", codec)]).await;
        let topic = unique_topic(&format!("produce-{codec}"));
        let n = 300;
        for i in 0..n {
            // Sent without awaiting each delivery; flushed below.
            let _ = p
                .send(
                    ProducerRecord::new(&topic)
                        .key(format!("k{i}"))
                        .value(format!("{codec}-{i}"))
                        .header("h", "x"),
                )
                .await
                .expect("queued");
        }
        p.flush().await.expect("flush");
        let kafka = shared().expect("kafka");
        let out = kafka
            .tool("console-consumer")
            .args(["--bootstrap-server", kafka.bootstrap(), "--topic", &topic])
            .args(["--from-beginning", "--max-messages", &n.to_string()])
            .args(["--property", "print.key=true", "--timeout-ms", "60000"])
            .stderr(Stdio::null())
            .output()
            .expect("console consumer");
        let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        let want: Vec<String> = (0..n).map(|i| format!("k{i}\t{codec}-{i}")).collect();
        assert_eq!(lines, want, "codec {codec}");
    }
}

/// A topic that takes records of at most 1000 bytes.
async fn small_message_topic(p: &Producer) -> String {
    let topic = unique_topic("produce-too-large");
    Admin::new(p.client().clone())
        .create_topic(
            NewTopic::new(&topic, 1, 1).config("max.message.bytes", "1000"),
            false,
        )
        .await
        .expect("topic");
    topic
}

#[tokio::test]
async fn a_record_over_the_broker_limit_is_rejected_with_a_typed_error() {
    let p = producer(&[]).await;
    let topic = small_message_topic(&p).await;
    let err = p
        .send(ProducerRecord::new(&topic).value(vec![7u8; 5000]))
        .await
        .expect("queued")
        .await
        .expect_err("over the topic's max.message.bytes");
    assert_eq!(
        err.code(),
        Some(faustus_wire::protocol::ErrorCode::MESSAGE_TOO_LARGE),
        "{err}"
    );
    assert!(err.to_string().contains(&topic), "{err}");

    let local = p
        .send(ProducerRecord::new(&topic).value(vec![0u8; 2 << 20]))
        .await
        .expect_err("over max.request.size");
    assert!(
        matches!(local, faustus_wire::Error::RecordTooLarge { .. }),
        "{local}"
    );
    // The producer still works after both failures.
    p.send(ProducerRecord::new(&topic).value("small"))
        .await
        .expect("queued")
        .await
        .expect("delivered");
}

/// `flush` reports a failed record (here one larger than the topic's
/// `max.message.bytes`) once, naming its topic; the next flush is clean.
#[tokio::test]
async fn flush_reports_a_failed_record() {
    let p = producer(&[]).await;
    let topic = small_message_topic(&p).await;
    let small = p
        .send(ProducerRecord::new(&topic).value("fits"))
        .await
        .expect("queued");
    p.flush().await.expect("a clean flush");
    small.await.expect("delivered");
    let big = p
        .send(ProducerRecord::new(&topic).value(vec![b'x'; 5000]))
        .await
        .expect("queued");
    let err = p
        .flush()
        .await
        .expect_err("the flush sees the failed record");
    assert!(err.to_string().contains(&topic), "{err}");
    assert!(big.await.is_err(), "the record's own future failed too");
    p.send(ProducerRecord::new(&topic).value("fits again"))
        .await
        .expect("queued");
    p.flush().await.expect("reported once");
    p.close().await.expect("close");
}

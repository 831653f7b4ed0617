//! The admin client against the harness Kafka.

use std::collections::BTreeMap;
use std::time::Duration;

use faustus_suite::{unique_topic, Deadline};
use faustus_testcontainers::shared;
use faustus_wire::{Admin, Client, ClientConfig, NewTopic, OffsetSpec, Properties};

async fn admin() -> Admin {
    let kafka = shared().expect("kafka");
    let client = Client::connect(ClientConfig::new(kafka.bootstrap()).expect("config"))
        .await
        .expect("connect");
    Admin::new(client)
}

#[tokio::test]
async fn create_describe_list_and_delete_a_topic() {
    let admin = admin().await;
    let name = unique_topic("admin");
    let info = admin
        .create_topic(
            NewTopic::new(&name, 3, 1).config("cleanup.policy", "compact"),
            false,
        )
        .await
        .expect("create");
    assert_eq!(info.partitions.len(), 3);
    assert!(info.partitions.iter().all(|p| p.leader >= 0));

    let again = admin
        .create_topics(&[NewTopic::new(&name, 3, 1)])
        .await
        .expect("request");
    let err = again[0].as_ref().expect_err("already exists");
    assert!(err.to_string().contains("TOPIC_ALREADY_EXISTS"), "{err}");
    assert!(err.to_string().contains(&name), "{err}");
    admin
        .create_topic(NewTopic::new(&name, 3, 1), true)
        .await
        .expect("if_missing tolerates existing");

    let topics = admin.list_topics().await.expect("list");
    assert!(topics.iter().any(|t| t.name == name));

    let config = admin.describe_topic_config(&name).await.expect("configs");
    assert!(config.contains(&("cleanup.policy".into(), Some("compact".into()))));

    let ends = admin
        .list_offsets(&name, &[], OffsetSpec::Latest, false)
        .await
        .expect("offsets");
    assert_eq!(ends, BTreeMap::from([(0, 0), (1, 0), (2, 0)]));

    let deleted = admin.delete_topics(&[&name]).await.expect("delete");
    assert!(deleted[0].is_ok(), "{:?}", deleted[0]);
}

#[tokio::test]
async fn unreachable_bootstrap_fails_within_the_timeout() {
    // A port nothing listens on: bind, note the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let props = Properties::new()
        .set("bootstrap.servers", format!("127.0.0.1:{port}"))
        .set("default.api.timeout.ms", "1500")
        .set("socket.connection.setup.timeout.ms", "500");
    let started = std::time::Instant::now();
    let err = Client::connect(ClientConfig::from_properties(&props).expect("config"))
        .await
        .expect_err("nothing listens there");
    let took = started.elapsed();
    assert!(
        matches!(err, faustus_wire::Error::Bootstrap { .. }),
        "{err}"
    );
    assert!(
        took < std::time::Duration::from_secs(5),
        "bootstrap gave up after {took:?}, configured 1.5 s"
    );
}

#[tokio::test]
async fn seek_by_timestamp_and_delete_records() {
    use faustus_wire::consumer::{Consumer, ConsumerConfig, Offset};
    use faustus_wire::producer::{Producer, ProducerConfig, ProducerRecord};

    let admin = admin().await;
    let topic = unique_topic("timestamps");
    admin
        .create_topic(NewTopic::new(&topic, 1, 1), false)
        .await
        .expect("topic");
    let producer = Producer::with_client(
        admin.client().clone(),
        ProducerConfig::new(&admin.client().config().bootstrap_servers.join(",")).expect("config"),
    );
    let base = faustus_suite::millis_ago(Duration::from_secs(3600));
    for i in 0..100 {
        let _ = producer
            .send(
                ProducerRecord::new(&topic)
                    .value(i.to_string())
                    .timestamp(base + i * 1000),
            )
            .await
            .expect("queued");
    }
    producer.flush().await.expect("flush");

    // ListOffsets by timestamp: the first record at or after it.
    let at = admin
        .list_offsets(&topic, &[0], OffsetSpec::Timestamp(base + 41_500), false)
        .await
        .expect("by timestamp");
    assert_eq!(at[&0], 42);

    let mut consumer = Consumer::with_client(
        admin.client().clone(),
        ConsumerConfig::new(&admin.client().config().bootstrap_servers.join(",")).expect("config"),
    );
    consumer
        .assign(&topic, &[0], Offset::Timestamp(base + 90_000))
        .await
        .expect("assign");
    let mut first = None;
    let deadline = Deadline::new(
        "the record at the seeked timestamp",
        Duration::from_secs(60),
    );
    while first.is_none() {
        deadline.check(());
        for part in consumer.poll().await.expect("poll") {
            if let Some(r) = part.records().next() {
                let r = r.expect("record");
                first = Some((r.offset, r.timestamp));
            }
        }
    }
    assert_eq!(first, Some((90, base + 90_000)));

    // DeleteRecords moves the log start; Earliest follows it.
    let low = admin
        .delete_records(&topic, &BTreeMap::from([(0, 60)]))
        .await
        .expect("delete records");
    assert_eq!(low[&0], 60);
    let starts = admin
        .list_offsets(&topic, &[], OffsetSpec::Earliest, false)
        .await
        .expect("earliest");
    assert_eq!(starts[&0], 60);
}

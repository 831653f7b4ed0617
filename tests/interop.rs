//! Interoperability with the reference implementation: we read what Kafka's
//! own producer writes (every compression type), keys land on the same
//! partitions with both clients, and transactional data written by Kafka's
//! own transactional copier is read correctly under read_committed.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::Stdio;

use faustus_suite::{read_all, read_all_settled, unique_topic};
use faustus_testcontainers::{shared, KafkaCluster};

use faustus_wire::producer::{partition_for_key, Producer, ProducerConfig, ProducerRecord};
use faustus_wire::{Admin, NewTopic, Properties};

fn java_produce(kafka: &KafkaCluster, topic: &str, codec: &str, lines: &[String]) {
    let mut child = kafka
        .tool("console-producer")
        .args(["--bootstrap-server", kafka.bootstrap(), "--topic", topic])
        .args(["--compression-codec", codec])
        .args([
            "--property",
            "parse.key=true",
            "--property",
            "key.separator=:",
        ])
        .args(["--request-required-acks", "all"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("console producer");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        for l in lines {
            writeln!(stdin, "{l}").expect("write");
        }
    }
    assert!(child.wait().expect("exit").success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn we_read_what_kafkas_producer_writes_with_every_codec() {
    let kafka = shared().expect("kafka");
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let topic = unique_topic(&format!("java-{codec}"));
        let lines: Vec<String> = (0..2000)
            .map(|i| format!("k{i}:{codec}-value-{i}"))
            .collect();
        java_produce(kafka, &topic, codec, &lines);
        let got = read_all(kafka.bootstrap(), &topic, false).await;
        let got: Vec<String> = got
            .into_iter()
            .map(|(_, k, v)| format!("{k}:{v}"))
            .collect();
        assert_eq!(got, lines, "codec {codec}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_land_on_the_same_partition_with_both_clients() {
    let kafka = shared().expect("kafka");
    let java_topic = unique_topic("keys-java");
    let our_topic = unique_topic("keys-ours");
    let props = Properties::new().set("bootstrap.servers", kafka.bootstrap());
    let producer = Producer::connect(ProducerConfig::from_properties(&props).expect("config"))
        .await
        .expect("producer");
    let admin = Admin::new(producer.client().clone());
    for t in [&java_topic, &our_topic] {
        admin
            .create_topic(NewTopic::new(t, 6, 1), false)
            .await
            .expect("topic");
    }
    let keys: Vec<String> = (0..500).map(|i| format!("user-{i}")).collect();
    java_produce(
        kafka,
        &java_topic,
        "none",
        &keys.iter().map(|k| format!("{k}:x")).collect::<Vec<_>>(),
    );
    let mut ours = BTreeMap::new();
    for k in &keys {
        let meta = producer
            .send(ProducerRecord::new(&our_topic).key(k.clone()).value("x"))
            .await
            .expect("queued")
            .await
            .expect("delivered");
        ours.insert(k.clone(), meta.partition);
    }
    let java: BTreeMap<String, i32> = read_all(kafka.bootstrap(), &java_topic, false)
        .await
        .into_iter()
        .map(|(p, k, _)| (k, p))
        .collect();
    assert_eq!(java.len(), keys.len());
    assert_eq!(
        java, ours,
        "Kafka's producer and ours put every key on the same partition"
    );
    for (k, p) in &java {
        assert_eq!(partition_for_key(k.as_bytes(), 6), *p);
    }
}

/// Kafka's TransactionalMessageCopier copies an input partition to an output
/// topic in transactions and, with random aborts, aborts some of them (and
/// copies those records again). Under read_committed we must see each input
/// record exactly once; under read_uncommitted the aborted copies show too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_committed_hides_aborted_transactions_from_kafkas_copier() {
    let kafka = shared().expect("kafka");
    let input = unique_topic("txn-in");
    let output = unique_topic("txn-out");
    let props = Properties::new().set("bootstrap.servers", kafka.bootstrap());
    let producer = Producer::connect(ProducerConfig::from_properties(&props).expect("config"))
        .await
        .expect("producer");
    let admin = Admin::new(producer.client().clone());
    admin
        .create_topic(NewTopic::new(&input, 1, 1), false)
        .await
        .expect("in");
    admin
        .create_topic(NewTopic::new(&output, 3, 1), false)
        .await
        .expect("out");
    let n = 3000;
    for i in 0..n {
        let _ = producer
            .send(
                ProducerRecord::new(&input)
                    .key(format!("k{i}"))
                    .value(format!("v{i}")),
            )
            .await
            .expect("queued");
    }
    producer.flush().await.expect("flush");

    let status = kafka
        .tool("transactional-copier")
        .args(["--broker-list", kafka.bootstrap()])
        .args(["--input-topic", &input, "--input-partition", "0"])
        .args(["--output-topic", &output])
        .args(["--transactional-id", &unique_topic("copier")])
        .args(["--consumer-group", &unique_topic("copier-group")])
        .args(["--transaction-size", "100", "--enable-random-aborts"])
        .args(["--max-messages", &n.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("copier runs");
    assert!(status.success(), "copier failed");

    let committed = read_all_settled(kafka.bootstrap(), &output).await;
    let values: Vec<&str> = committed.iter().map(|(_, _, v)| v.as_str()).collect();
    let unique: BTreeSet<&str> = values.iter().copied().collect();
    assert_eq!(
        values.len(),
        n,
        "exactly the input count, no aborted copies"
    );
    assert_eq!(unique.len(), n, "no duplicates");
    let want: BTreeSet<String> = (0..n).map(|i| format!("v{i}")).collect();
    assert_eq!(unique, want.iter().map(String::as_str).collect());

    // The copier really did abort something: read_uncommitted sees more
    // records than were committed.
    let all = read_all(kafka.bootstrap(), &output, false).await;
    assert!(
        all.len() > n,
        "expected aborted records under read_uncommitted ({} seen)",
        all.len()
    );
}

//! Proves the Kafka harness with Kafka's own console tools, before and
//! independently of our client: what the console producer writes, the console
//! consumer reads back, in order, on a single-node and on a three-node cluster
//! through node failures.

use std::io::Write;
use std::process::Stdio;

use faustus_suite::unique_topic;
use faustus_testcontainers::{shared, KafkaCluster};

/// Writes `lines` (`key:value`) with the console producer, `acks=all`.
fn console_produce(kafka: &KafkaCluster, topic: &str, lines: &[String]) {
    let mut producer = kafka
        .tool("console-producer")
        .args(["--bootstrap-server", kafka.bootstrap(), "--topic", topic])
        .args([
            "--property",
            "parse.key=true",
            "--property",
            "key.separator=:",
        ])
        .args([
            "--request-required-acks",
            "all",
            "--request-timeout-ms",
            "30000",
        ])
        .args([
            "--message-send-max-retries",
            "20",
            "--retry-backoff-ms",
            "500",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("console producer starts");
    {
        let mut stdin = producer.stdin.take().expect("piped stdin");
        for l in lines {
            writeln!(stdin, "{l}").expect("write to console producer");
        }
    }
    let status = producer.wait().expect("console producer exits");
    assert!(status.success(), "console producer failed: {status}");
}

/// Reads the first `count` records of `topic` with the console consumer, as
/// `key\tvalue` lines.
fn console_consume(kafka: &KafkaCluster, topic: &str, count: usize) -> Vec<String> {
    let out = kafka
        .tool("console-consumer")
        .args(["--bootstrap-server", kafka.bootstrap(), "--topic", topic])
        .args(["--from-beginning", "--max-messages", &count.to_string()])
        .args(["--property", "print.key=true", "--timeout-ms", "60000"])
        .stderr(Stdio::null())
        .output()
        .expect("console consumer runs");
    assert!(
        out.status.success(),
        "console consumer failed: {}",
        out.status
    );
    String::from_utf8(out.stdout)
        .expect("utf-8 output")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn records(n: usize, tag: &str) -> Vec<String> {
    (0..n).map(|i| format!("key-{i}:{tag}-value-{i}")).collect()
}

fn expected(lines: &[String]) -> Vec<String> {
    lines.iter().map(|l| l.replacen(':', "\t", 1)).collect()
}

#[test]
fn console_tools_round_trip_on_the_shared_cluster() {
    let kafka = shared().expect("a Kafka cluster");
    let topic = unique_topic("harness-roundtrip");
    let sent = records(500, "single");
    console_produce(kafka, &topic, &sent);
    // One partition (the harness's num.partitions default): order is total.
    assert_eq!(console_consume(kafka, &topic, sent.len()), expected(&sent));
}

#[test]
fn three_nodes_survive_kill_start_pause_resume() {
    let kafka = KafkaCluster::start(3).expect("a 3-node cluster");
    assert_eq!(kafka.nodes(), 3);
    assert_eq!(kafka.bootstrap().split(',').count(), 3);

    let topic = unique_topic("harness-faults");
    let create = kafka
        .tool("topics")
        .args([
            "--bootstrap-server",
            kafka.bootstrap(),
            "--create",
            "--topic",
            &topic,
        ])
        .args(["--partitions", "1", "--replication-factor", "3"])
        .output()
        .expect("topic tool runs");
    assert!(
        create.status.success(),
        "{}",
        String::from_utf8_lossy(&create.stderr)
    );

    kafka.kill(2).expect("kill node 2");
    let mut sent = records(100, "after-kill");
    console_produce(&kafka, &topic, &sent);
    assert_eq!(console_consume(&kafka, &topic, sent.len()), expected(&sent));

    kafka.start_node(2).expect("start node 2");
    kafka.pause(3).expect("pause node 3");
    kafka.resume(3).expect("resume node 3");
    let more = records(100, "after-resume");
    console_produce(&kafka, &topic, &more);
    sent.extend(more);
    assert_eq!(console_consume(&kafka, &topic, sent.len()), expected(&sent));
    assert!(kafka.kill(4).is_err(), "node 4 does not exist");
}

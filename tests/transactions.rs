//! The transactional producer against the harness Kafka: visibility under
//! read_committed (ours and Kafka's console consumer), offsets committed
//! with the transaction, zombie fencing, and the transaction timeout.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use faustus_suite::{read_all, read_all_settled, unique_topic, Deadline};
use faustus_testcontainers::{shared, KafkaCluster};
use faustus_wire::consumer::TopicPartition;
use faustus_wire::group::{GroupConfig, GroupConsumer, GroupMetadata, NoListener};
use faustus_wire::producer::txn::{TxnError, TxnState};
use faustus_wire::producer::{ProducerConfig, ProducerRecord, TransactionalProducer};
use faustus_wire::{Admin, Error, NewTopic, Properties};

async fn txn_producer(
    kafka: &KafkaCluster,
    id: &str,
    extra: &[(&str, &str)],
) -> TransactionalProducer {
    let mut props = Properties::new()
        .set("bootstrap.servers", kafka.bootstrap())
        .set("transactional.id", id);
    for (k, v) in extra {
        props.insert(*k, *v);
    }
    let p =
        TransactionalProducer::connect(ProducerConfig::from_properties(&props).expect("config"))
            .await
            .expect("producer");
    p.init_transactions().await.expect("init_transactions");
    p
}

async fn topic(kafka: &KafkaCluster, name: &str, partitions: i32) -> String {
    let t = unique_topic(name);
    let client = faustus_wire::Client::connect(
        faustus_wire::ClientConfig::new(kafka.bootstrap()).expect("config"),
    )
    .await
    .expect("client");
    Admin::new(client)
        .create_topic(NewTopic::new(&t, partitions, 1), false)
        .await
        .expect("topic");
    t
}

async fn send_n(p: &TransactionalProducer, topic: &str, prefix: &str, n: usize) {
    let mut pending = Vec::new();
    for i in 0..n {
        pending.push(
            p.send(
                ProducerRecord::new(topic)
                    .key(format!("k{i}"))
                    .value(format!("{prefix}-{i}")),
            )
            .await
            .expect("send"),
        );
    }
    for d in pending {
        d.await.expect("delivered");
    }
}

/// Kafka's console consumer with `--isolation-level read_committed`: the
/// values it reads from the beginning until `expected` arrive (or it times
/// out).
fn java_read_committed(kafka: &KafkaCluster, topic: &str, expected: usize) -> Vec<String> {
    let out = kafka
        .tool("console-consumer")
        .args(["--bootstrap-server", kafka.bootstrap(), "--topic", topic])
        .args(["--from-beginning", "--isolation-level", "read_committed"])
        .args([
            "--max-messages",
            &expected.to_string(),
            "--timeout-ms",
            "20000",
        ])
        .stderr(Stdio::null())
        .output()
        .expect("console consumer");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn values(records: &[(i32, String, String)]) -> Vec<String> {
    let mut v: Vec<String> = records.iter().map(|(_, _, v)| v.clone()).collect();
    v.sort();
    v
}

fn expected(prefixes: &[&str], n: usize) -> Vec<String> {
    let mut v: Vec<String> = prefixes
        .iter()
        .flat_map(|p| (0..n).map(move |i| format!("{p}-{i}")))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_records_stay_hidden_and_committed_ones_appear_once() {
    let kafka = shared().expect("kafka");
    let out = topic(kafka, "txn-visibility", 3).await;
    let p = txn_producer(kafka, &unique_topic("txn-vis"), &[]).await;
    assert_eq!(p.state(), TxnState::Ready);

    p.begin().await.expect("begin");
    send_n(&p, &out, "committed-a", 300).await;
    p.commit().await.expect("commit");

    p.begin().await.expect("begin");
    send_n(&p, &out, "aborted", 300).await;
    p.abort().await.expect("abort");

    p.begin().await.expect("begin");
    send_n(&p, &out, "committed-b", 300).await;
    p.commit().await.expect("commit");

    let committed = read_all_settled(kafka.bootstrap(), &out).await;
    assert_eq!(
        values(&committed),
        expected(&["committed-a", "committed-b"], 300)
    );
    let everything = read_all(kafka.bootstrap(), &out, false).await;
    assert_eq!(
        values(&everything),
        expected(&["aborted", "committed-a", "committed-b"], 300),
        "read_uncommitted sees the aborted records too (and no markers)"
    );
    let mut java = java_read_committed(kafka, &out, 600);
    java.sort();
    assert_eq!(java, expected(&["committed-a", "committed-b"], 300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_transaction_hides_what_follows_until_it_ends() {
    let kafka = shared().expect("kafka");
    let out = topic(kafka, "txn-lso", 1).await;
    let p = txn_producer(kafka, &unique_topic("txn-lso"), &[]).await;
    p.begin().await.expect("begin");
    send_n(&p, &out, "open", 10).await;
    // Acknowledged, but not committed: invisible to read_committed.
    assert!(read_all(kafka.bootstrap(), &out, true).await.is_empty());
    assert_eq!(read_all(kafka.bootstrap(), &out, false).await.len(), 10);
    p.commit().await.expect("commit");
    assert_eq!(
        values(&read_all_settled(kafka.bootstrap(), &out).await),
        expected(&["open"], 10)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_fences_the_first() {
    let kafka = shared().expect("kafka");
    let out = topic(kafka, "txn-fence", 2).await;
    let id = unique_topic("txn-fence");
    let zombie = txn_producer(kafka, &id, &[]).await;
    zombie.begin().await.expect("begin");
    send_n(&zombie, &out, "zombie", 50).await;

    // The new instance aborts the zombie's open transaction and fences it.
    let fresh = txn_producer(kafka, &id, &[]).await;
    let (zid, zepoch) = zombie.producer_id().expect("zombie id");
    let (fid, fepoch) = fresh.producer_id().expect("fresh id");
    assert_eq!(zid, fid);
    assert!(fepoch > zepoch);

    let err = zombie.commit().await.expect_err("the zombie cannot commit");
    assert!(
        matches!(
            &err,
            Error::Transaction {
                error: TxnError::Fatal(..),
                ..
            }
        ),
        "fatal: {err}"
    );
    assert_eq!(zombie.state(), TxnState::Fatal);
    assert!(
        zombie.begin().await.is_err(),
        "a fenced producer stays fenced"
    );

    fresh.begin().await.expect("begin");
    send_n(&fresh, &out, "fresh", 50).await;
    fresh.commit().await.expect("commit");
    assert_eq!(
        values(&read_all_settled(kafka.bootstrap(), &out).await),
        expected(&["fresh"], 50)
    );

    // KIP-588's bump does not take the id from its new holder...
    let err = zombie.recover().await.expect_err("the bump is refused");
    assert!(err.to_string().contains("PRODUCER_FENCED"), "{err}");
    // ...a plain InitProducerId does, fencing the holder in turn (which is
    // why only an application that knows it is the id's only live user,
    // as the engine does from its locked state directory, calls it).
    zombie.restart().await.expect("restart");
    fresh.begin().await.expect("begin");
    let refused = match fresh.send(ProducerRecord::new(&out).value("fenced")).await {
        Ok(delivery) => delivery.await.is_err() && fresh.commit().await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "the old holder is fenced");
    zombie.begin().await.expect("begin");
    send_n(&zombie, &out, "back", 5).await;
    zombie.commit().await.expect("commit");
    let mut want = expected(&["fresh"], 50);
    want.extend(expected(&["back"], 5));
    want.sort();
    assert_eq!(
        values(&read_all_settled(kafka.bootstrap(), &out).await),
        want
    );
}

/// Consume-transform-produce: the group's offsets move with the output,
/// and not at all when the transaction aborts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_commit_with_the_transaction_and_only_then() {
    let kafka = shared().expect("kafka");
    let input = topic(kafka, "txn-in", 2).await;
    let out = topic(kafka, "txn-out", 3).await;
    let plain = faustus_wire::producer::Producer::connect(
        ProducerConfig::from_properties(
            &Properties::new().set("bootstrap.servers", kafka.bootstrap()),
        )
        .expect("config"),
    )
    .await
    .expect("producer");
    for i in 0..200 {
        let _ = plain
            .send(
                ProducerRecord::new(&input)
                    .key(format!("k{i}"))
                    .value(format!("in-{i}")),
            )
            .await
            .expect("queued");
    }
    plain.flush().await.expect("flush");
    let admin = Admin::new(plain.client().clone());

    let group = unique_topic("txn-group");
    let props = Properties::new()
        .set("bootstrap.servers", kafka.bootstrap())
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest");
    let mut consumer = GroupConsumer::subscribe(
        GroupConfig::from_properties(&props).expect("cfg"),
        &[&input],
        NoListener,
    )
    .await
    .expect("subscribe");
    let p = txn_producer(kafka, &unique_topic("txn-eos"), &[]).await;

    // First pass: transform everything, send offsets, but abort.
    let mut positions: BTreeMap<TopicPartition, i64> = BTreeMap::new();
    let mut got = 0;
    p.begin().await.expect("begin");
    let deadline = Deadline::new("200 input records", Duration::from_secs(60));
    while got < 200 {
        deadline.check(got);
        for part in consumer.poll().await.expect("poll") {
            for r in part.records() {
                let r = r.expect("record");
                let v =
                    String::from_utf8_lossy(r.value().unwrap_or_default()).replace("in-", "out-");
                let _ = p
                    .send(ProducerRecord::new(&out).value(v))
                    .await
                    .expect("send");
                got += 1;
            }
            positions.insert(part.topic_partition().clone(), part.next_offset());
        }
    }
    p.send_offsets_to_transaction(&positions, &consumer.group_metadata())
        .await
        .expect("offsets");
    p.abort().await.expect("abort");
    assert!(
        admin
            .group_offsets(&group)
            .await
            .expect("offsets")
            .is_empty(),
        "an aborted transaction commits no offsets"
    );
    assert!(read_all_settled(kafka.bootstrap(), &out).await.is_empty());

    // Second pass, same records again (as after a restart): commit.
    p.begin().await.expect("begin");
    for i in 0..200 {
        let _ = p
            .send(ProducerRecord::new(&out).value(format!("out-{i}")))
            .await
            .expect("send");
    }
    p.send_offsets_to_transaction(&positions, &consumer.group_metadata())
        .await
        .expect("offsets");
    p.commit().await.expect("commit");
    let want: BTreeMap<(String, i32), i64> = positions
        .iter()
        .map(|(tp, off)| ((tp.topic.to_string(), tp.partition), *off))
        .collect();
    // Transactional offsets show once the commit marker reaches the
    // group's offsets partition, which follows EndTxn.
    let deadline = Deadline::new("the transaction's offsets", Duration::from_secs(60));
    loop {
        let committed = admin.group_offsets(&group).await.expect("offsets");
        if committed == want {
            break;
        }
        deadline.check(&committed);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        values(&read_all_settled(kafka.bootstrap(), &out).await),
        expected(&["out"], 200)
    );

    // KIP-447: a member identity the group never had is refused.
    p.begin().await.expect("begin");
    let stale = GroupMetadata {
        generation: 999,
        ..consumer.group_metadata()
    };
    let err = p
        .send_offsets_to_transaction(&positions, &stale)
        .await
        .expect_err("a stale generation is refused");
    assert!(
        matches!(
            &err,
            Error::Transaction {
                error: TxnError::Abortable(_),
                ..
            }
        ),
        "abortable: {err}"
    );
    p.abort().await.expect("abort after the refusal");
    p.begin().await.expect("the producer goes on");
    p.commit().await.expect("an empty transaction commits");
    consumer.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_aborts_a_transaction_left_open_past_its_timeout() {
    let kafka = shared().expect("kafka");
    let out = topic(kafka, "txn-timeout", 1).await;
    let p = Arc::new(
        txn_producer(
            kafka,
            &unique_topic("txn-timeout"),
            &[("transaction.timeout.ms", "2000")],
        )
        .await,
    );
    p.begin().await.expect("begin");
    send_n(&p, &out, "late", 20).await;
    // The coordinator aborts it on its own: read_committed reaches the end
    // (the abort marker) without the records.
    let admin = Admin::new(p.client().clone());
    let deadline = Deadline::new("the coordinator's abort", Duration::from_secs(60));
    loop {
        deadline.check(());
        let lso = admin
            .list_offsets(&out, &[0], faustus_wire::OffsetSpec::Latest, true)
            .await
            .expect("lso");
        if lso[&0] > 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(read_all_settled(kafka.bootstrap(), &out).await.is_empty());
    // The producer's epoch was bumped by the abort: committing fails.
    let err = p.commit().await.expect_err("commit after the timeout");
    assert!(
        matches!(
            &err,
            Error::Transaction {
                error: TxnError::Fatal(..),
                ..
            }
        ),
        "fatal: {err}"
    );
    // Its owner takes the id back: KIP-588's bump (Kafka 4 grants it after
    // a timeout), else a plain InitProducerId, as the engine does.
    let (id, epoch) = p.producer_id().expect("producer id");
    match p.recover().await {
        Ok(()) => println!("the coordinator accepted the KIP-588 bump"),
        Err(e) => {
            println!("the bump was refused ({e}); restarting");
            assert!(
                e.to_string().contains("PRODUCER_FENCED"),
                "refused as fenced: {e}"
            );
            p.restart().await.expect("restart");
        }
    }
    let (id2, epoch2) = p.producer_id().expect("producer id");
    assert!(
        id2 != id || epoch2 > epoch,
        "a new epoch: ({id}, {epoch}) then ({id2}, {epoch2})"
    );
    p.begin().await.expect("begin");
    send_n(&p, &out, "after", 20).await;
    p.commit().await.expect("the next transaction commits");
    assert_eq!(
        values(&read_all_settled(kafka.bootstrap(), &out).await),
        expected(&["after"], 20)
    );
}

/// The transaction coordinator's broker dies mid-transaction: the producer
/// finds the new coordinator and the commit goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commit_follows_a_coordinator_that_moves() {
    let kafka = Arc::new(KafkaCluster::start(3).expect("3-node cluster"));
    let client = faustus_wire::Client::connect(
        faustus_wire::ClientConfig::new(kafka.bootstrap()).expect("config"),
    )
    .await
    .expect("client");
    let out = unique_topic("txn-move");
    Admin::new(client.clone())
        .create_topic(
            NewTopic::new(&out, 3, 3).config("min.insync.replicas", "2"),
            false,
        )
        .await
        .expect("topic");
    let id = unique_topic("txn-move");
    let p = txn_producer(
        &kafka,
        &id,
        &[("request.timeout.ms", "5000"), ("retry.backoff.ms", "50")],
    )
    .await;
    p.begin().await.expect("begin");
    send_n(&p, &out, "before", 100).await;

    // Kill the broker that coordinates this transactional id.
    let addr = client
        .refresh_coordinator(faustus_wire::coordinator::CoordinatorType::Transaction, &id)
        .await
        .expect("coordinator");
    client.refresh_metadata(None).await.expect("metadata");
    let node = client
        .cluster()
        .brokers
        .iter()
        .find(|(_, a)| **a == addr)
        .map(|(id, _)| *id as usize)
        .expect("the coordinator is a broker");
    let k = kafka.clone();
    tokio::task::spawn_blocking(move || k.kill(node))
        .await
        .expect("join")
        .expect("kill the coordinator");

    send_n(&p, &out, "after", 100).await;
    p.commit()
        .await
        .expect("the commit follows the coordinator");
    assert_eq!(
        values(&read_all_settled(kafka.bootstrap(), &out).await),
        expected(&["after", "before"], 100)
    );
    let moved = client
        .refresh_coordinator(faustus_wire::coordinator::CoordinatorType::Transaction, &id)
        .await
        .expect("new coordinator");
    assert_ne!(moved, addr, "the coordinator moved");
}

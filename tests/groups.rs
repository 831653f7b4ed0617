//! Consumer groups against the harness Kafka: members join and leave while
//! consuming; ownership stays exclusive and, with commits after processing,
//! every record is processed exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use faustus_suite::{unique_topic, Deadline};
use faustus_testcontainers::shared;
use faustus_wire::consumer::TopicPartition;
use faustus_wire::group::{GroupConfig, GroupConsumer, RebalanceListener};
use faustus_wire::producer::{Producer, ProducerConfig, ProducerRecord};
use faustus_wire::{Admin, NewTopic, Properties};

#[derive(Debug, Clone)]
enum Change {
    Assigned,
    Revoked,
    Lost,
}

type Log = Arc<Mutex<Vec<(String, Change, Vec<TopicPartition>)>>>;

struct Recorder {
    name: String,
    log: Log,
}

impl RebalanceListener for Recorder {
    async fn revoked(&mut self, tps: &[TopicPartition]) {
        self.log
            .lock()
            .expect("log")
            .push((self.name.clone(), Change::Revoked, tps.to_vec()));
    }
    async fn assigned(&mut self, tps: &[TopicPartition]) {
        self.log
            .lock()
            .expect("log")
            .push((self.name.clone(), Change::Assigned, tps.to_vec()));
    }
    async fn lost(&mut self, tps: &[TopicPartition]) {
        self.log
            .lock()
            .expect("log")
            .push((self.name.clone(), Change::Lost, tps.to_vec()));
    }
}

/// Replays the listener log: no partition is ever owned by two members.
fn check_exclusive(log: &[(String, Change, Vec<TopicPartition>)]) {
    let mut owner: BTreeMap<i32, String> = BTreeMap::new();
    for (member, change, tps) in log {
        for tp in tps {
            match change {
                Change::Assigned => {
                    if let Some(other) = owner.insert(tp.partition, member.clone()) {
                        panic!(
                            "partition {} given to {member} while {other} owns it",
                            tp.partition
                        );
                    }
                }
                Change::Revoked | Change::Lost => {
                    assert_eq!(
                        owner.remove(&tp.partition).as_deref(),
                        Some(member.as_str())
                    );
                }
            }
        }
    }
}

async fn run_members(strategy: &str) {
    faustus_suite::init_tracing();
    let kafka = shared().expect("kafka");
    let topic = unique_topic(&format!("group-{strategy}"));
    let group = unique_topic("g");
    let base = Properties::new().set("bootstrap.servers", kafka.bootstrap());
    let producer = Producer::connect(ProducerConfig::from_properties(&base).expect("config"))
        .await
        .expect("producer");
    Admin::new(producer.client().clone())
        .create_topic(NewTopic::new(&topic, 12, 1), false)
        .await
        .expect("topic");
    let n = 30_000usize;
    for i in 0..n {
        let _ = producer
            .send(
                ProducerRecord::new(&topic)
                    .key(format!("k{i}"))
                    .value(i.to_string()),
            )
            .await
            .expect("queued");
    }
    producer.flush().await.expect("flush");

    let props = base
        .clone()
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("auto.commit.interval.ms", "200");
    // KIP-848 members learn of a rebalance at their next heartbeat (every
    // second on the harness brokers), so records are consumed slowly enough,
    // with some work per poll, for joins and leaves to happen mid-stream.
    let (props, work) = if strategy == "consumer" {
        let p = props
            .set("group.protocol", "consumer")
            .set("max.partition.fetch.bytes", "1024");
        (p, Duration::from_millis(20))
    } else {
        let p = props
            .set("partition.assignment.strategy", strategy)
            .set("max.partition.fetch.bytes", "4096")
            .set("heartbeat.interval.ms", "500")
            .set("session.timeout.ms", "10000");
        (p, Duration::ZERO)
    };
    let log: Log = Arc::default();
    let seen: Arc<Mutex<BTreeMap<usize, usize>>> = Arc::default();

    // Each member consumes until told to stop (after `polls` polls with an
    // assignment) and then leaves cleanly; a1 runs until everything is
    // consumed.
    let spawn = |name: &str, polls: Option<usize>| {
        let cfg = GroupConfig::from_properties(&props).expect("group config");
        let topic = topic.clone();
        let log = log.clone();
        let seen = seen.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            let mut c = GroupConsumer::subscribe(cfg, &[&topic], Recorder { name, log })
                .await
                .expect("subscribe");
            let mut count = 0;
            loop {
                if polls.is_some_and(|p| count >= p) {
                    break;
                }
                if polls.is_none() && seen.lock().expect("seen").len() >= n {
                    break;
                }
                for part in c.poll().await.expect("poll") {
                    for r in part.records() {
                        let i: usize =
                            std::str::from_utf8(r.expect("record").value().expect("value"))
                                .expect("utf-8")
                                .parse()
                                .expect("number");
                        *seen.lock().expect("seen").entry(i).or_default() += 1;
                    }
                }
                if !work.is_zero() {
                    // Processing takes time.
                    tokio::time::sleep(work).await;
                }
                if !c.assignment().is_empty() {
                    count += 1;
                }
            }
            c.close().await.expect("close");
        })
    };
    let a = spawn("a1", None);
    let b = spawn("b1", Some(12));
    let c = spawn("c1", Some(25));
    b.await.expect("b1");
    let b2 = spawn("b2", Some(10));
    c.await.expect("c1");
    b2.await.expect("b2");
    tokio::time::timeout(Duration::from_secs(120), a)
        .await
        .expect("a1 finishes")
        .expect("a1");

    let log = log.lock().expect("log").clone();
    check_exclusive(&log);
    let members: BTreeSet<&str> = log.iter().map(|(m, _, _)| m.as_str()).collect();
    assert!(members.len() >= 3, "several members took part: {members:?}");
    let seen = seen.lock().expect("seen");
    assert_eq!(seen.len(), n, "no record lost");
    let doubled: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).take(5).collect();
    assert!(doubled.is_empty(), "records processed twice: {doubled:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_and_leave_with_cooperative_sticky() {
    run_members("cooperative-sticky").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_and_leave_with_range() {
    run_members("range").await;
}

/// The same join/leave run under the next-generation protocol (KIP-848):
/// the coordinator assigns, members reconcile and acknowledge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_and_leave_with_the_consumer_protocol() {
    run_members("consumer").await;
}

/// Creates `topic` with `partitions` partitions.
async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    Admin::new(
        faustus_wire::Client::connect(faustus_wire::ClientConfig::new(bootstrap).expect("cfg"))
            .await
            .expect("client"),
    )
    .create_topic(NewTopic::new(topic, partitions, 1), false)
    .await
    .expect("topic");
}

async fn stable_consumer(props: &Properties, topic: &str) -> GroupConsumer {
    let cfg = GroupConfig::from_properties(props).expect("group config");
    let mut c = GroupConsumer::subscribe(cfg, &[topic], faustus_wire::group::NoListener)
        .await
        .expect("subscribe");
    let deadline = Deadline::new("an assignment", Duration::from_secs(120));
    while c.assignment().is_empty() {
        deadline.check(());
        c.poll().await.expect("poll");
    }
    c
}

/// A fetch held by the broker for `fetch.max.wait.ms` (longer than the
/// session timeout, on an empty topic) does not hold up the heartbeats: the
/// coordinator has a connection of its own, as in the Java client (a broker
/// answers one request of a connection at a time). The member keeps its
/// generation and its partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_fetch_wait_does_not_hold_up_the_heartbeats() {
    let kafka = shared().expect("kafka");
    let topic = unique_topic("long-wait");
    let props = Properties::new()
        .set("bootstrap.servers", kafka.bootstrap())
        .set("group.id", unique_topic("g-long-wait"))
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("fetch.max.wait.ms", "15000")
        .set("auto.offset.reset", "earliest");
    create_topic(kafka.bootstrap(), &topic, 1).await;

    let mut c = stable_consumer(&props, &topic).await;
    let (generation, member) = c.generation();
    let assignment = c.assignment();
    // Nothing to read: the broker holds the fetch for 15 s.
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        assert!(c.poll().await.expect("poll").is_empty());
    }
    assert_eq!(
        c.generation(),
        (generation, member),
        "the member was dropped while its fetch waited"
    );
    assert_eq!(c.assignment(), assignment);
    c.close().await.expect("close");
}

/// A static member (KIP-345) that restarts within the session timeout gets
/// its partitions back without a rebalance: the generation is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_member_restart_keeps_the_generation() {
    let kafka = shared().expect("kafka");
    let topic = unique_topic("static");
    let props = Properties::new()
        .set("bootstrap.servers", kafka.bootstrap())
        .set("group.id", unique_topic("g-static"))
        .set("group.instance.id", "instance-1")
        .set("session.timeout.ms", "30000")
        .set("auto.offset.reset", "earliest");
    create_topic(kafka.bootstrap(), &topic, 4).await;

    let first = stable_consumer(&props, &topic).await;
    let (generation, _) = first.generation();
    let assignment = first.assignment();
    first.close().await.expect("close");

    let second = stable_consumer(&props, &topic).await;
    assert_eq!(
        second.generation().0,
        generation,
        "no rebalance on a static restart"
    );
    assert_eq!(second.assignment(), assignment);
    second.close().await.expect("close");
}

/// A Faustus member and Kafka's own console consumer share one group: they
/// split the partitions, and each record is consumed once.
async fn mixed_group(java_strategy: &str, ours: &str) {
    let kafka = shared().expect("kafka");
    let topic = unique_topic(&format!("mixed-{ours}"));
    let group = unique_topic("g-mixed");
    let base = Properties::new().set("bootstrap.servers", kafka.bootstrap());
    let producer = Producer::connect(ProducerConfig::from_properties(&base).expect("config"))
        .await
        .expect("producer");
    Admin::new(producer.client().clone())
        .create_topic(NewTopic::new(&topic, 6, 1), false)
        .await
        .expect("topic");
    let java = kafka
        .tool("console-consumer")
        .args(["--bootstrap-server", kafka.bootstrap(), "--topic", &topic])
        .args(["--group", &group, "--timeout-ms", "20000"])
        .args([
            "--consumer-property",
            &format!("partition.assignment.strategy={java_strategy}"),
        ])
        .args(["--consumer-property", "auto.offset.reset=earliest"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("console consumer");
    let props = base
        .clone()
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", ours);
    let cfg = GroupConfig::from_properties(&props).expect("config");
    let mut c = GroupConsumer::subscribe(cfg, &[&topic], faustus_wire::group::NoListener)
        .await
        .expect("subscribe");
    // Wait until the partitions are split between the two members.
    let deadline = Deadline::new("a split with Kafka's consumer", Duration::from_secs(120));
    loop {
        deadline.check(c.assignment());
        c.poll().await.expect("poll");
        let mine: usize = c.assignment().values().map(Vec::len).sum();
        if mine > 0 && mine < 6 {
            break;
        }
    }
    let n = 6000;
    for i in 0..n {
        let _ = producer
            .send(
                ProducerRecord::new(&topic)
                    .key(format!("k{i}"))
                    .value(i.to_string()),
            )
            .await
            .expect("queued");
    }
    producer.flush().await.expect("flush");
    let ends = Admin::new(producer.client().clone())
        .list_offsets(&topic, &[], faustus_wire::OffsetSpec::Latest, false)
        .await
        .expect("ends");
    let mine = c.assignment();
    let mut ours_seen = BTreeSet::new();
    let mut positions: BTreeMap<i32, i64> = BTreeMap::new();
    let done = |positions: &BTreeMap<i32, i64>| {
        mine.values()
            .flatten()
            .all(|p| positions.get(p).copied().unwrap_or(0) >= ends[p])
    };
    let deadline = Deadline::new("our partitions' end offsets", Duration::from_secs(120));
    while !done(&positions) {
        deadline.check(&positions);
        for part in c.poll().await.expect("poll") {
            positions.insert(part.partition(), part.next_offset());
            for r in part.records() {
                let v = String::from_utf8_lossy(r.expect("record").value().unwrap_or_default())
                    .into_owned();
                assert!(ours_seen.insert(v), "we saw a record twice");
            }
        }
    }
    assert_eq!(c.assignment(), mine, "assignment stable while consuming");
    c.close().await.expect("close");
    let out = java.wait_with_output().expect("console consumer exits");
    let theirs: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(
        ours_seen.is_disjoint(&theirs),
        "a record was consumed by both members"
    );
    assert!(!theirs.is_empty(), "the Java member consumed its share");
    assert_eq!(
        ours_seen.len() + theirs.len(),
        n,
        "every record consumed once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_group_with_kafkas_consumer_range() {
    mixed_group("org.apache.kafka.clients.consumer.RangeAssignor", "range").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_group_with_kafkas_consumer_cooperative_sticky() {
    mixed_group(
        "org.apache.kafka.clients.consumer.CooperativeStickyAssignor",
        "cooperative-sticky",
    )
    .await;
}

/// The broker hosting the group's coordinator dies mid-run: the members find
/// the new coordinator and consume everything (no record lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_survives_the_coordinator_broker_dying() {
    let kafka = Arc::new(faustus_testcontainers::KafkaCluster::start(3).expect("3 nodes"));
    let topic = unique_topic("coord-fail");
    let group = unique_topic("g-coord");
    let base = Properties::new()
        .set("bootstrap.servers", kafka.bootstrap())
        .set("request.timeout.ms", "5000");
    let producer = Producer::connect(ProducerConfig::from_properties(&base).expect("config"))
        .await
        .expect("producer");
    Admin::new(producer.client().clone())
        .create_topic(NewTopic::new(&topic, 6, 3), false)
        .await
        .expect("topic");
    let n = 20_000usize;
    for i in 0..n {
        let _ = producer
            .send(
                ProducerRecord::new(&topic)
                    .key(format!("k{i}"))
                    .value(i.to_string()),
            )
            .await
            .expect("queued");
    }
    producer.flush().await.expect("flush");

    // The first lookup creates __consumer_offsets; retry until it is ready.
    let coordinator = producer
        .client()
        .retry("FindCoordinator", Duration::from_secs(60), || {
            producer
                .client()
                .refresh_coordinator(faustus_wire::coordinator::CoordinatorType::Group, &group)
        })
        .await
        .expect("coordinator");
    let node = kafka
        .bootstrap()
        .split(',')
        .position(|b| b == coordinator)
        .expect("coordinator is one of the nodes")
        + 1;

    let props = base
        .clone()
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("max.partition.fetch.bytes", "2048")
        .set("auto.commit.interval.ms", "100")
        .set("heartbeat.interval.ms", "500")
        .set("session.timeout.ms", "10000");
    let seen: Arc<Mutex<BTreeSet<usize>>> = Arc::default();
    let progress = Arc::new(tokio::sync::Notify::new());
    let mut members = Vec::new();
    for _ in 0..2 {
        let cfg = GroupConfig::from_properties(&props).expect("config");
        let topic = topic.clone();
        let seen = seen.clone();
        let progress = progress.clone();
        members.push(tokio::spawn(async move {
            let mut c = GroupConsumer::subscribe(cfg, &[&topic], faustus_wire::group::NoListener)
                .await
                .expect("subscribe");
            while seen.lock().expect("seen").len() < n {
                // Errors while the coordinator moves are retried by polling
                // again; the membership recovers by itself.
                if let Ok(parts) = c.poll().await {
                    for part in parts {
                        for r in part.records() {
                            let i: usize =
                                std::str::from_utf8(r.expect("record").value().expect("value"))
                                    .expect("utf-8")
                                    .parse()
                                    .expect("number");
                            seen.lock().expect("seen").insert(i);
                        }
                    }
                }
                progress.notify_waiters();
            }
            let _ = c.close().await;
        }));
    }
    // Kill the coordinator's broker once consumption is under way.
    let deadline = Deadline::new("a tenth of the records", Duration::from_secs(120));
    loop {
        deadline.check(seen.lock().expect("seen").len());
        let more = progress.notified();
        if seen.lock().expect("seen").len() >= n / 10 {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), more).await;
    }
    let k = kafka.clone();
    tokio::task::spawn_blocking(move || k.kill(node))
        .await
        .expect("join")
        .expect("kill the coordinator");
    for m in members {
        tokio::time::timeout(Duration::from_secs(180), m)
            .await
            .expect("members finish after the coordinator moved")
            .expect("member");
    }
    assert_eq!(seen.lock().expect("seen").len(), n, "no record lost");
}

/// Subscription by pattern picks up a topic created while consuming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pattern_subscription_follows_new_topics() {
    let kafka = shared().expect("kafka");
    let prefix = unique_topic("pat");
    let (first, second) = (format!("{prefix}-a"), format!("{prefix}-b"));
    let base = Properties::new().set("bootstrap.servers", kafka.bootstrap());
    let producer = Producer::connect(ProducerConfig::from_properties(&base).expect("config"))
        .await
        .expect("producer");
    let admin = Admin::new(producer.client().clone());
    admin
        .create_topic(NewTopic::new(&first, 2, 1), false)
        .await
        .expect("topic a");
    for i in 0..100 {
        let _ = producer
            .send(ProducerRecord::new(&first).value(format!("a{i}")))
            .await
            .expect("queued");
    }
    producer.flush().await.expect("flush");
    let props = base
        .set("group.id", unique_topic("g-pat"))
        .set("auto.offset.reset", "earliest")
        .set("metadata.max.age.ms", "300");
    let cfg = GroupConfig::from_properties(&props).expect("config");
    let mut c = GroupConsumer::subscribe_pattern(
        cfg,
        &format!("{prefix}-.*"),
        faustus_wire::group::NoListener,
    )
    .await
    .expect("subscribe");
    assert_eq!(c.subscription(), std::slice::from_ref(&first));
    let mut seen = BTreeSet::new();
    let mut created = false;
    let deadline = Deadline::new("records from both topics", Duration::from_secs(120));
    while seen.len() < 200 {
        deadline.check(seen.len());
        for part in c.poll().await.expect("poll") {
            for r in part.records() {
                seen.insert(
                    String::from_utf8_lossy(r.expect("record").value().unwrap_or_default())
                        .into_owned(),
                );
            }
        }
        if !created && seen.len() == 100 {
            admin
                .create_topic(NewTopic::new(&second, 1, 1), false)
                .await
                .expect("topic b");
            for i in 0..100 {
                let _ = producer
                    .send(ProducerRecord::new(&second).value(format!("b{i}")))
                    .await
                    .expect("queued");
            }
            producer.flush().await.expect("flush");
            created = true;
        }
    }
    assert_eq!(c.subscription(), [first, second]);
    c.close().await.expect("close");
}

/// Manual commits, synchronous and asynchronous, under both protocols: the
/// group's committed offsets are the positions after what was consumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_sync_and_async_commits_under_both_protocols() {
    let kafka = shared().expect("kafka");
    let topic = unique_topic("commits");
    let base = Properties::new().set("bootstrap.servers", kafka.bootstrap());
    let producer = Producer::connect(ProducerConfig::from_properties(&base).expect("config"))
        .await
        .expect("producer");
    let admin = Admin::new(producer.client().clone());
    admin
        .create_topic(NewTopic::new(&topic, 3, 1), false)
        .await
        .expect("topic");
    for i in 0..300 {
        let _ = producer
            .send(
                ProducerRecord::new(&topic)
                    .key(format!("k{i}"))
                    .value(i.to_string()),
            )
            .await
            .expect("queued");
    }
    producer.flush().await.expect("flush");
    for protocol in ["classic", "consumer"] {
        let group = unique_topic(&format!("commits-{protocol}"));
        let props = base
            .clone()
            .set("group.id", &group)
            .set("group.protocol", protocol)
            .set("enable.auto.commit", "false")
            .set("max.partition.fetch.bytes", "512")
            .set("auto.offset.reset", "earliest");
        let mut cfg = GroupConfig::from_properties(&props).expect("group config");
        cfg.user_data = Some(bytes::Bytes::from_static(b"web=127.0.0.1:1"));
        let mut c = GroupConsumer::subscribe(cfg, &[&topic], faustus_wire::group::NoListener)
            .await
            .expect("subscribe");
        let mut positions: BTreeMap<i32, i64> = BTreeMap::new();
        let mut got = 0;
        let mut async_commits = 0;
        let deadline = Deadline::new(format!("300 records ({protocol})"), Duration::from_secs(60));
        while got < 300 {
            deadline.check((got, c.assignment()));
            for part in c.poll().await.expect("poll") {
                got += part.records().count();
                positions.insert(part.partition(), part.next_offset());
            }
            if got > 0 && got < 300 {
                // Part way: an asynchronous commit, awaited.
                c.commit_async().await.expect("async commit");
                async_commits += 1;
                let committed = admin.group_offsets(&group).await.expect("offsets");
                for (p, off) in &positions {
                    assert_eq!(committed.get(&(topic.clone(), *p)), Some(off), "{protocol}");
                }
            }
        }
        assert!(
            async_commits > 0,
            "{protocol}: no asynchronous commit was made"
        );
        c.commit().await.expect("sync commit");
        let committed = admin.group_offsets(&group).await.expect("offsets");
        let expected: BTreeMap<(String, i32), i64> = positions
            .iter()
            .map(|(p, off)| ((topic.clone(), *p), *off))
            .collect();
        assert_eq!(committed, expected, "{protocol}");
        assert_eq!(positions.values().sum::<i64>(), 300);
        // Describe works for both kinds of group.
        let d = admin.describe_group(&group).await.expect("describe");
        assert_eq!(d.members.len(), 1, "{protocol}: {d:?}");
        assert_eq!(
            d.members[0].assignment.get(&topic),
            Some(&vec![0, 1, 2]),
            "{protocol}"
        );
        // The subscription's user data reaches the describers (classic
        // groups; KIP-848's protocol has none).
        let expected_user_data =
            (protocol == "classic").then(|| bytes::Bytes::from_static(b"web=127.0.0.1:1"));
        assert_eq!(d.members[0].user_data, expected_user_data, "{protocol}");
        c.close().await.expect("close");
    }
}

/// Holds the first revocation back, then lets revocations run; records
/// what happened in order.
struct Holder {
    holds_left: usize,
    log: Arc<Mutex<Vec<&'static str>>>,
}

impl RebalanceListener for Holder {
    fn hold_revocation(&mut self, _tps: &[TopicPartition]) -> bool {
        let hold = self.holds_left > 0;
        if hold {
            self.holds_left -= 1;
            self.log.lock().expect("log").push("held");
        }
        hold
    }
    async fn revoked(&mut self, _tps: &[TopicPartition]) {
        self.log.lock().expect("log").push("revoked");
    }
}

/// A listener that holds a revocation back makes that poll return at once,
/// with no records and before `revoked`; the next poll revokes, and the
/// new member gets its partitions. Both group protocols.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_revocation_runs_in_the_next_poll() {
    let kafka = shared().expect("kafka");
    let topic = unique_topic("held");
    create_topic(kafka.bootstrap(), &topic, 4).await;
    for protocol in ["classic", "consumer"] {
        let props = Properties::new()
            .set("bootstrap.servers", kafka.bootstrap())
            .set("group.id", unique_topic(&format!("g-held-{protocol}")))
            .set("group.protocol", protocol);
        let log = Arc::new(Mutex::new(Vec::new()));
        let listener = Holder {
            holds_left: 1,
            log: log.clone(),
        };
        let cfg = GroupConfig::from_properties(&props).expect("group config");
        let mut a = GroupConsumer::subscribe(cfg, &[topic.as_str()], listener)
            .await
            .expect("subscribe");
        let deadline = Deadline::new("a's assignment", Duration::from_secs(120));
        while owned(&a) < 4 {
            deadline.check(());
            a.poll().await.expect("poll");
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let b = tokio::spawn({
            let (props, topic, stop) = (props.clone(), topic.clone(), stop.clone());
            async move {
                let mut b = stable_consumer(&props, &topic).await;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    b.poll().await.expect("b polls");
                }
                let got = b.assignment().values().map(Vec::len).sum::<usize>();
                b.close().await.expect("close b");
                got
            }
        });
        let deadline = Deadline::new("a's revocation", Duration::from_secs(120));
        loop {
            deadline.check(log.lock().expect("log").clone());
            let before = log.lock().expect("log").len();
            let got = a.poll().await.expect("poll");
            let now = log.lock().expect("log").clone();
            if now[before..].contains(&"held") {
                // The poll that held the revocation returned at once,
                // without revoking.
                assert_eq!(&now[before..], ["held"], "{protocol}");
                assert!(got.is_empty(), "{} records", got.len());
            }
            if now.contains(&"revoked") {
                assert_eq!(now, vec!["held", "revoked"], "{protocol}");
                break;
            }
        }
        let deadline = Deadline::new("b's partitions", Duration::from_secs(120));
        while owned(&a) == 4 {
            deadline.check(());
            a.poll().await.expect("poll");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let b_got = b.await.expect("b");
        assert!(b_got > 0, "{protocol}: b got nothing");
        a.close().await.expect("close a");
    }
}

/// How many partitions a member owns.
fn owned<L: RebalanceListener>(c: &GroupConsumer<L>) -> usize {
    c.assignment().values().map(Vec::len).sum()
}

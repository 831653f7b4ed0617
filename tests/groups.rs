//! Consumer groups against the harness Kafka: members join and leave while
//! consuming; ownership stays exclusive and, with commits after processing,
//! every record is processed exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use faustus_suite::unique_topic;
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
        .set("partition.assignment.strategy", strategy)
        .set("auto.commit.interval.ms", "200")
        .set("max.partition.fetch.bytes", "4096")
        .set("heartbeat.interval.ms", "500")
        .set("session.timeout.ms", "10000");
    let log: Log = Arc::default();
    let seen: Arc<Mutex<BTreeMap<usize, usize>>> = Arc::default();

    // Each member consumes until told to stop (after `polls` polls) and
    // then leaves cleanly; a1 runs until everything is consumed.
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
                count += 1;
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

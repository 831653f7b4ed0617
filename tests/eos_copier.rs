//! The exactly-once copier (`examples/eos_copier.rs`) under faults, after
//! Kafka's own transaction system test: the copier process is SIGKILLed and
//! restarted, a broker of a 3-node cluster is killed and restarted, and a
//! paused zombie is fenced by its successor. Every time, the output read with
//! read_committed holds each input record exactly once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use faustus_suite::{read_all_settled, unique_topic, Deadline};
use faustus_testcontainers::{shared, KafkaCluster};
use faustus_wire::producer::{Producer, ProducerConfig, ProducerRecord};
use faustus_wire::{Admin, NewTopic, Properties};

fn copier_binary() -> PathBuf {
    faustus_suite::example_binary("eos_copier")
}

struct Setup {
    bootstrap: String,
    input: String,
    output: String,
    group: String,
    txn_id: String,
    n: usize,
}

impl Setup {
    async fn new(kafka: &KafkaCluster, n: usize, inputs: i32, outputs: i32, rf: i16) -> Self {
        let s = Self {
            bootstrap: kafka.bootstrap().to_owned(),
            input: unique_topic("eos-in"),
            output: unique_topic("eos-out"),
            group: unique_topic("eos-group"),
            txn_id: unique_topic("eos-copier"),
            n,
        };
        let producer = s.producer().await;
        let admin = Admin::new(producer.client().clone());
        for (t, p) in [(&s.input, inputs), (&s.output, outputs)] {
            let mut nt = NewTopic::new(t, p, rf);
            if rf > 1 {
                nt = nt.config("min.insync.replicas", "2");
            }
            admin.create_topic(nt, false).await.expect("topic");
        }
        let mut pending = Vec::new();
        for i in 0..n {
            pending.push(
                producer
                    .send(
                        ProducerRecord::new(&s.input)
                            .key(format!("k{i}"))
                            .value(format!("value-{i:06}")),
                    )
                    .await
                    .expect("queued"),
            );
        }
        for d in pending {
            d.await.expect("delivered");
        }
        producer.close().await.expect("close");
        s
    }

    async fn producer(&self) -> Producer {
        let props = Properties::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("request.timeout.ms", "10000");
        Producer::connect(ProducerConfig::from_properties(&props).expect("config"))
            .await
            .expect("producer")
    }

    fn spawn(&self, extra: &[&str]) -> Child {
        Command::new(copier_binary())
            .args(["--bootstrap", &self.bootstrap])
            .args(["--input", &self.input, "--output", &self.output])
            .args(["--group", &self.group, "--transactional-id", &self.txn_id])
            .args(["--records-per-txn", "500", "--idle-exit-ms", "4000"])
            // A killed member leaves the group within 6 s, not 45.
            .args(["--session-timeout-ms", "6000"])
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("start the copier")
    }

    /// The group's committed input offsets, summed.
    async fn committed(&self, admin: &Admin) -> i64 {
        admin
            .group_offsets(&self.group)
            .await
            .map(|o| o.values().filter(|v| **v > 0).sum())
            .unwrap_or(0)
    }

    /// Runs copiers until the group has committed every input record,
    /// calling `fault(progress)` each round; restarts a copier that exits.
    async fn run_until_copied<F>(&self, mut copier: Child, mut fault: F) -> Child
    where
        F: FnMut(i64, &mut Child) -> Option<Child>,
    {
        let admin = Admin::new(self.producer().await.client().clone());
        let deadline = Deadline::new("every input record copied", Duration::from_secs(300));
        loop {
            let done = self.committed(&admin).await;
            deadline.check(done);
            if done >= self.n as i64 {
                return copier;
            }
            if let Some(next) = fault(done, &mut copier) {
                copier = next;
            }
            if copier.try_wait().expect("copier status").is_some() {
                // Idle exit during a fault, or a crash: carry on.
                copier = self.spawn(&[]);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Checks the output: read_committed holds each transformed input value
    /// once; markers written afterwards to every output partition are
    /// readable (no transaction is left hanging).
    async fn check_output(&self, outputs: i32) {
        // A marker written now to every output partition becomes readable
        // under read_committed only if no transaction is left hanging.
        let producer = self.producer().await;
        for p in 0..outputs {
            let _ = producer
                .send(
                    ProducerRecord::new(&self.output)
                        .partition(p)
                        .value("marker"),
                )
                .await
                .expect("queued");
        }
        producer.flush().await.expect("markers");
        let out = read_all_settled(&self.bootstrap, &self.output).await;
        let markers = out.iter().filter(|(_, _, v)| v == "marker").count();
        assert_eq!(markers, outputs as usize, "every marker is readable");
        let mut values: Vec<String> = out
            .into_iter()
            .map(|(_, _, v)| v)
            .filter(|v| v != "marker")
            .collect();
        values.sort();
        let want: Vec<String> = (0..self.n).map(|i| format!("VALUE-{i:06}")).collect();
        assert_eq!(values.len(), self.n, "no duplicates, nothing lost");
        assert_eq!(values, want);
    }
}

fn wait_exit(mut c: Child, within: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = c.try_wait().expect("status") {
            return s;
        }
        if start.elapsed() > within {
            let _ = c.kill();
            return c.wait().expect("status");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copier_sigkilled_three_times_copies_exactly_once() {
    let kafka = shared().expect("kafka");
    let s = Setup::new(kafka, 100_000, 2, 3, 1).await;
    let mut kills = vec![20_000i64, 45_000, 70_000];
    kills.reverse();
    let copier = s.spawn(&[]);
    let last = s
        .run_until_copied(copier, |done, c| {
            if kills.last().is_some_and(|k| done >= *k) {
                kills.pop();
                c.kill().expect("SIGKILL the copier");
                let _ = c.wait();
                return Some(s.spawn(&[]));
            }
            None
        })
        .await;
    assert!(kills.is_empty(), "all three kills happened");
    wait_exit(last, Duration::from_secs(30));
    s.check_output(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_partition_to_one_keeps_the_order_through_a_kill() {
    let kafka = shared().expect("kafka");
    let s = Setup::new(kafka, 20_000, 1, 1, 1).await;
    let mut killed = false;
    let copier = s.spawn(&[]);
    let last = s
        .run_until_copied(copier, |done, c| {
            if !killed && done >= 8_000 {
                killed = true;
                c.kill().expect("SIGKILL");
                let _ = c.wait();
                return Some(s.spawn(&[]));
            }
            None
        })
        .await;
    assert!(killed);
    wait_exit(last, Duration::from_secs(30));
    let out = read_all_settled(&s.bootstrap, &s.output).await;
    let values: Vec<String> = out.into_iter().map(|(_, _, v)| v).collect();
    let want: Vec<String> = (0..s.n).map(|i| format!("VALUE-{i:06}")).collect();
    assert_eq!(values, want, "in input order, each once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copier_survives_a_broker_killed_and_restarted_twice() {
    let kafka = Arc::new(KafkaCluster::start(3).expect("3-node cluster"));
    let s = Setup::new(&kafka, 100_000, 2, 3, 3).await;
    let mut faults: Vec<(i64, usize, bool)> = vec![
        (15_000, 2, true),
        (30_000, 2, false),
        (55_000, 3, true),
        (70_000, 3, false),
    ];
    faults.reverse();
    let copier = s.spawn(&[]);
    let k = kafka.clone();
    let last = s
        .run_until_copied(copier, move |done, _| {
            if let Some(&(at, node, kill)) = faults.last() {
                if done >= at {
                    faults.pop();
                    if kill {
                        k.kill(node).expect("kill broker");
                    } else {
                        k.start_node(node).expect("restart broker");
                    }
                }
            }
            None
        })
        .await;
    wait_exit(last, Duration::from_secs(60));
    s.check_output(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_zombie_is_fenced_by_its_successor() {
    let kafka = shared().expect("kafka");
    let s = Setup::new(kafka, 30_000, 2, 3, 1).await;
    let admin = Admin::new(s.producer().await.client().clone());
    let zombie = s.spawn(&[]);
    let deadline = Deadline::new("the zombie's progress", Duration::from_secs(120));
    while s.committed(&admin).await < 5_000 {
        deadline.check(());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let paused_at = Instant::now();
    let stop = Command::new("kill")
        .args(["-STOP", &zombie.id().to_string()])
        .status()
        .expect("kill -STOP");
    assert!(stop.success());
    let committed_at_pause: BTreeMap<(String, i32), i64> =
        admin.group_offsets(&s.group).await.expect("offsets");

    // The successor fences the zombie and copies everything.
    let successor = s.spawn(&[]);
    let successor = s.run_until_copied(successor, |_, _| None).await;
    wait_exit(successor, Duration::from_secs(30));
    // Past the zombie's transaction timeout (10 s), then wake it.
    let wake_at = paused_at + Duration::from_secs(11);
    if let Some(left) = wake_at.checked_duration_since(Instant::now()) {
        tokio::time::sleep(left).await;
    }
    let committed_before_wake = admin.group_offsets(&s.group).await.expect("offsets");
    let cont = Command::new("kill")
        .args(["-CONT", &zombie.id().to_string()])
        .status()
        .expect("kill -CONT");
    assert!(cont.success());
    // Woken, it finds itself fenced (if a transaction was open) or has
    // nothing left to copy; either way it ends without writing anything.
    let _ = wait_exit(zombie, Duration::from_secs(60));
    assert_eq!(
        admin.group_offsets(&s.group).await.expect("offsets"),
        committed_before_wake,
        "the zombie commits no offsets"
    );
    assert!(committed_at_pause.values().sum::<i64>() < s.n as i64);
    s.check_output(3).await;
}

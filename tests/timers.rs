//! Timers end to end (`examples/timers.rs` as worker processes against the
//! harness Kafka): a leader timer runs on one worker of three, keeps its
//! grid, moves to one other worker when its worker dies; a crontab fires on
//! the second.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use faustus_suite::{read_records, unique_topic, Deadline, FullRecord, ScratchDir};
use faustus_testcontainers::shared;
use faustus_wire::producer::{Producer, ProducerConfig, ProducerRecord};
use faustus_wire::{Admin, NewTopic, Properties};

const EVERY_MS: i64 = 200;

fn binary() -> PathBuf {
    faustus_suite::example_binary("timers")
}

struct Run {
    bootstrap: String,
    app: String,
    input: String,
    output: String,
    dir: ScratchDir,
}

impl Run {
    async fn new() -> Self {
        let kafka = shared().expect("kafka");
        let app = unique_topic("tm");
        let run = Self {
            bootstrap: kafka.bootstrap().to_owned(),
            input: format!("{app}-words"),
            output: format!("{app}-reports"),
            dir: ScratchDir::new(&app),
            app,
        };
        let props = Properties::new().set("bootstrap.servers", &run.bootstrap);
        let p = Producer::connect(ProducerConfig::from_properties(&props).expect("config"))
            .await
            .expect("producer");
        Admin::new(p.client().clone())
            .create_topic(NewTopic::new(&run.input, 3, 1), false)
            .await
            .expect("input topic");
        let mut pending = Vec::new();
        for i in 0..30 {
            let rec = ProducerRecord::new(run.input.as_str())
                .key(format!("k{i}"))
                .value(format!("w{}", i % 10));
            pending.push(p.send(rec).await.expect("queued"));
        }
        for d in pending {
            d.await.expect("delivered");
        }
        p.close().await.expect("close");
        run
    }

    fn worker(&self, name: &str) -> Child {
        std::fs::create_dir_all(self.dir.path()).expect("scratch dir");
        let log =
            std::fs::File::create(self.dir.path().join(format!("{name}.log"))).expect("log file");
        Command::new(binary())
            .env("TIMERS_APP", &self.app)
            .env("TIMERS_INPUT", &self.input)
            .env("TIMERS_OUTPUT", &self.output)
            .env("TIMERS_EVERY_MS", EVERY_MS.to_string())
            .env("TIMERS_CRON", "* * * * * *")
            .env("TIMERS_WORKER", name)
            .args(["-b", &self.bootstrap])
            .args([
                "-X",
                &format!("state.dir={}", self.dir.path().join(name).display()),
                "-X",
                "session.timeout.ms=6000",
                "-X",
                "heartbeat.interval.ms=1000",
                "-X",
                "commit.interval.ms=200",
                "-X",
                "processing.guarantee=exactly_once",
                "-X",
                "topic.partitions=3",
            ])
            .args(["worker", "-l", "info"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("worker starts")
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// The reports, once `done` holds for them.
    async fn reports_until(
        &self,
        what: &str,
        done: impl Fn(&[FullRecord]) -> bool,
    ) -> Vec<FullRecord> {
        let deadline = Deadline::new(what.to_owned(), Duration::from_secs(90));
        loop {
            let out = read_records(&self.bootstrap, &self.output, true).await;
            if done(&out) {
                return out;
            }
            if deadline.passed() {
                panic!(
                    "{what}: {} reports\n--- a\n{}\n--- b\n{}\n--- c\n{}",
                    out.len(),
                    faustus_suite::log_tail(&self.log("a"), 30),
                    faustus_suite::log_tail(&self.log("b"), 30),
                    faustus_suite::log_tail(&self.log("c"), 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn leader_reports(out: &[FullRecord]) -> Vec<&FullRecord> {
    out.iter().filter(|r| !r.key.starts_with("cron:")).collect()
}

fn now_ms() -> i64 {
    faustus_suite::millis_ago(Duration::ZERO)
}

/// A report's due time.
fn due(r: &FullRecord) -> i64 {
    r.value
        .rsplit('@')
        .next()
        .and_then(|d| d.parse().ok())
        .expect("a due time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_timer_runs_on_one_worker_keeps_its_grid_and_moves_when_it_dies() {
    let run = Run::new().await;
    let a = run.worker("a");
    run.reports_until("a's first reports", |out| leader_reports(out).len() >= 3)
        .await;
    let b = run.worker("b");
    let c = run.worker("c");
    // Once b and c own a task each, the assignment stands (three
    // partitions, three workers).
    let deadline = Deadline::new("b and c to own a task", Duration::from_secs(60));
    while !(run.log("b").contains("task ready") && run.log("c").contains("task ready")) {
        deadline.check("waiting");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Reports due from now on come from the leader of the settled group
    // alone: the other worker gave partition 0 up before b got any task.
    let settled = now_ms();
    let out = run
        .reports_until("ten reports after b joined", |out| {
            leader_reports(out)
                .iter()
                .filter(|r| due(r) > settled)
                .count()
                >= 10
        })
        .await;
    let mut after: Vec<&FullRecord> = leader_reports(&out)
        .into_iter()
        .filter(|r| due(r) > settled)
        .collect();
    after.sort_by_key(|r| due(r));
    let leader = after[0].key.clone();
    assert!(
        after.iter().all(|r| r.key == leader),
        "one worker reports at a time: {:?}",
        after.iter().map(|r| (&r.key, due(r))).collect::<Vec<_>>()
    );
    // Its grid: due times whole intervals apart.
    for w in after.windows(2) {
        let gap = due(w[1]) - due(w[0]);
        assert!(
            gap > 0 && gap % EVERY_MS == 0,
            "ticks {} then {}",
            due(w[0]),
            due(w[1])
        );
    }
    // Every worker's crontab fires on whole seconds.
    let crons: Vec<&FullRecord> = out.iter().filter(|r| r.key.starts_with("cron:")).collect();
    assert!(!crons.is_empty(), "the crontab fired");
    for r in &crons {
        let due: i64 = r.value.parse().expect("a due time");
        assert_eq!(due % 1000, 0, "{} fired at {due}", r.key);
    }
    // The leader dies: one of the others takes partition 0 and the timer,
    // and it alone reports from then on.
    let mut workers = vec![("a", a), ("b", b), ("c", c)];
    let i = workers
        .iter()
        .position(|(n, _)| *n == leader)
        .expect("the leader is a worker");
    let (_, mut dead) = workers.remove(i);
    let _ = dead.kill();
    let _ = dead.wait();
    let killed = now_ms();
    let out = run
        .reports_until("five reports of a survivor", |out| {
            leader_reports(out)
                .iter()
                .filter(|r| r.key != leader && due(r) > killed)
                .count()
                >= 5
        })
        .await;
    let after: Vec<(&str, i64)> = leader_reports(&out)
        .iter()
        .filter(|r| due(r) > killed)
        .map(|r| (r.key.as_str(), due(r)))
        .collect();
    let new_leader = after
        .iter()
        .find(|(k, _)| *k != leader)
        .map(|(k, _)| *k)
        .expect("a survivor reports");
    assert!(
        after.iter().all(|(k, _)| *k == new_leader),
        "one survivor reports: {after:?}"
    );
    for (_, mut w) in workers {
        let _ = w.kill();
        let _ = w.wait();
    }
}

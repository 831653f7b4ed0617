//! Global tables end to end (`examples/global_enrich.rs` as worker processes
//! against the harness Kafka): three workers read the same content, key by
//! key, while the table is updated, and a worker that joins late has caught
//! up before it processes anything.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use faustus_suite::{read_records, unique_topic, Deadline, ScratchDir};
use faustus_testcontainers::shared;
use faustus_wire::producer::{Producer, ProducerConfig, ProducerRecord};
use faustus_wire::{Admin, NewTopic, Properties};

const INPUT_PARTITIONS: i32 = 6;
const KEYS: usize = 200;

fn binary() -> PathBuf {
    faustus_suite::example_binary("global_enrich")
}

struct Run {
    bootstrap: String,
    app: String,
    input: String,
    table: String,
    output: String,
    dir: ScratchDir,
}

impl Run {
    async fn new() -> Self {
        let kafka = shared().expect("kafka");
        let app = unique_topic("ge");
        let run = Self {
            bootstrap: kafka.bootstrap().to_owned(),
            input: format!("{app}-clicks"),
            table: format!("{app}-titles"),
            output: format!("{app}-out"),
            dir: ScratchDir::new(&app),
            app,
        };
        let admin = Admin::new(run.producer().await.client().clone());
        admin
            .create_topic(NewTopic::new(&run.input, INPUT_PARTITIONS, 1), false)
            .await
            .expect("input topic");
        admin
            .create_topic(
                NewTopic::new(&run.table, 3, 1).config("cleanup.policy", "compact"),
                false,
            )
            .await
            .expect("table topic");
        run
    }

    async fn producer(&self) -> Producer {
        let props = Properties::new().set("bootstrap.servers", &self.bootstrap);
        Producer::connect(ProducerConfig::from_properties(&props).expect("config"))
            .await
            .expect("producer")
    }

    fn worker(&self, name: &str) -> Child {
        std::fs::create_dir_all(self.dir.path()).expect("scratch dir");
        let log =
            std::fs::File::create(self.dir.path().join(format!("{name}.log"))).expect("log file");
        Command::new(binary())
            .env("GE_APP", &self.app)
            .env("GE_INPUT", &self.input)
            .env("GE_TABLE", &self.table)
            .env("GE_OUTPUT", &self.output)
            .env("GE_WORKER", name)
            .args(["-b", &self.bootstrap])
            .args([
                "-X",
                &format!("state.dir={}", self.dir.path().join(name).display()),
            ])
            .args([
                "-X",
                "session.timeout.ms=6000",
                "-X",
                "heartbeat.interval.ms=1000",
                "-X",
                "commit.interval.ms=200",
            ])
            .args(["worker", "-l", "info"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("worker starts")
    }

    fn log(&self, name: &str) -> String {
        let s = std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
            .unwrap_or_default();
        let tail: Vec<&str> = s.lines().rev().take(20).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Writes every key of the table with `version`'s titles.
    async fn titles(&self, version: &str) {
        let p = self.producer().await;
        let mut pending = Vec::new();
        for i in 0..KEYS {
            let rec = ProducerRecord::new(&self.table)
                .key(format!("page{i}"))
                .value(format!("{version}-{i}"));
            pending.push(p.send(rec).await.expect("queued"));
        }
        for d in pending {
            d.await.expect("delivered");
        }
        p.close().await.expect("close");
    }

    /// One probe round: every key to every input partition, valued
    /// `r{round}`.
    async fn probe(&self, round: usize) {
        let p = self.producer().await;
        let mut pending = Vec::new();
        for part in 0..INPUT_PARTITIONS {
            for i in 0..KEYS {
                let rec = ProducerRecord::new(&self.input)
                    .partition(part)
                    .key(format!("page{i}"))
                    .value(format!("r{round}"));
                pending.push(p.send(rec).await.expect("queued"));
            }
        }
        for d in pending {
            d.await.expect("delivered");
        }
        p.close().await.expect("close");
    }
}

impl Run {
    /// Sends probe round `round` and waits for all its answers (one per
    /// probe): each worker's title for each key.
    async fn answers(
        &self,
        round: usize,
        deadline: &Deadline,
    ) -> BTreeMap<String, BTreeMap<String, String>> {
        self.probe(round).await;
        loop {
            let out = read_records(&self.bootstrap, &self.output, false).await;
            let mut by_worker: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
            let mut answered = 0;
            for r in &out {
                let (worker, at, title) = parse(&r.value);
                if at == round {
                    by_worker
                        .entry(worker)
                        .or_default()
                        .insert(r.key.clone(), title);
                    answered += 1;
                }
            }
            if answered == KEYS * INPUT_PARTITIONS as usize {
                return by_worker;
            }
            assert!(
                !deadline.passed(),
                "round {round}: {answered} answers\n{}",
                ["a", "b", "c"].map(|w| self.log(w)).join("\n---\n")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The answers that differ from `expected(i)` for key `page{i}` (five at
/// most).
fn mismatches(
    answers: &BTreeMap<String, BTreeMap<String, String>>,
    expected: impl Fn(usize) -> String,
) -> Vec<String> {
    answers
        .iter()
        .flat_map(|(w, m)| {
            m.iter()
                .filter(|(k, t)| {
                    let i: usize = k.trim_start_matches("page").parse().expect("key");
                    **t != expected(i)
                })
                .map(move |(k, t)| format!("{w}: {k}={t}"))
        })
        .take(5)
        .collect()
}

/// An output value `WORKER:rROUND+TITLE`, split.
fn parse(value: &str) -> (String, usize, String) {
    let (worker, rest) = value.split_once(':').expect("worker tag");
    let (round, title) = rest.split_once('+').expect("VALUE+TITLE");
    let round = round.trim_start_matches('r').parse().expect("round");
    (worker.to_owned(), round, title.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_read_the_same_global_table_and_a_late_one_catches_up_first() {
    let run = Run::new().await;
    run.titles("v1").await;
    let a = run.worker("a");
    let b = run.worker("b");
    // a and b follow the table while it changes under them.
    run.titles("v2").await;
    // c starts after the last change: it must have all of it before it
    // processes its first record.
    let c = run.worker("c");
    let deadline = Deadline::new(
        "three workers reading v2 for every key",
        Duration::from_secs(120),
    );
    let mut round = 0;
    loop {
        let answers = run.answers(round, &deadline).await;
        // Answered by all three workers (the group may still be assigning
        // partitions to c: another round), each for every key, and every
        // answer, key by key, is the table's content (a and b may still be
        // reading the last changes: another round).
        let all_three = answers.len() == 3 && answers.values().all(|m| m.len() == KEYS);
        let mismatched = mismatches(&answers, |i| format!("v2-{i}"));
        if all_three && mismatched.is_empty() {
            break;
        }
        assert!(
            !deadline.passed(),
            "round {round}: workers {:?}, mismatches {mismatched:?}",
            answers.keys().collect::<Vec<_>>()
        );
        round += 1;
    }
    // c never answered from an older table.
    for r in read_records(&run.bootstrap, &run.output, false).await {
        let (worker, _, title) = parse(&r.value);
        assert!(
            worker != "c" || title.starts_with("v2-"),
            "c processed {} before catching up: {title}\n{}",
            r.key,
            run.log("c")
        );
    }
    let log = std::fs::read_to_string(run.dir.path().join("c.log")).unwrap_or_default();
    assert!(log.contains("global tables ready"), "{}", run.log("c"));
    faustus_suite::stop_worker(a);
    faustus_suite::stop_worker(b);
    faustus_suite::stop_worker(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_store_its_recreated_topic_cannot_continue_is_rebuilt() {
    let run = Run::new().await;
    run.titles("v1").await;
    let a = run.worker("a");
    let deadline = Deadline::new("the global table's answers", Duration::from_secs(120));
    let answers = run.answers(0, &deadline).await;
    assert_eq!(
        mismatches(&answers, |i| format!("v1-{i}")),
        Vec::<String>::new()
    );
    faustus_suite::stop_worker(a);
    // The topic deleted and created again with ten keys: a's store holds
    // offsets past the new topic's end and keys it no longer has.
    let admin = Admin::new(run.producer().await.client().clone());
    admin.delete_topics(&[&run.table]).await.expect("delete");
    loop {
        let created = admin
            .create_topic(
                NewTopic::new(&run.table, 3, 1).config("cleanup.policy", "compact"),
                false,
            )
            .await;
        if created.is_ok() {
            break;
        }
        deadline.check(format!("recreating {}: {created:?}", run.table));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let p = run.producer().await;
    for i in 0..10 {
        let rec = ProducerRecord::new(&run.table)
            .key(format!("page{i}"))
            .value(format!("v3-{i}"));
        p.send(rec).await.expect("queued").await.expect("delivered");
    }
    p.close().await.expect("close");
    let a = run.worker("a");
    let answers = run.answers(1, &deadline).await;
    let expected = |i: usize| {
        if i < 10 {
            format!("v3-{i}")
        } else {
            "null".to_owned()
        }
    };
    assert_eq!(mismatches(&answers, expected), Vec::<String>::new());
    let log = std::fs::read_to_string(run.dir.path().join("a.log")).unwrap_or_default();
    assert!(
        log.contains("rebuilding it from its topic"),
        "{}",
        run.log("a")
    );
    faustus_suite::stop_worker(a);
}

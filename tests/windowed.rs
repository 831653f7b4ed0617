//! Windowed tables end to end (`examples/windowed_counts.rs` as worker
//! processes against the harness Kafka): final results exactly once through
//! SIGKILLs under exactly-once, and windows restored without local state
//! that still close and still expire.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use faustus_suite::{millis_ago, read_records, unique_topic, Deadline, FullRecord, ScratchDir};
use faustus_testcontainers::shared;
use faustus_wire::producer::{partition_for_key, Producer, ProducerConfig, ProducerRecord};
use faustus_wire::{Admin, NewTopic, Properties};

const PARTITIONS: i32 = 3;
const SIZE: i64 = 1000;

struct Run {
    bootstrap: String,
    app: String,
    input: String,
    output: String,
    dir: ScratchDir,
    env: Vec<(String, String)>,
    extra: Vec<String>,
}

impl Run {
    async fn new(prefix: &str, env: &[(&str, &str)], extra: &[&str]) -> Self {
        let kafka = shared().expect("kafka");
        let app = unique_topic(prefix);
        let run = Self {
            bootstrap: kafka.bootstrap().to_owned(),
            input: format!("{app}-clicks"),
            output: format!("{app}-counts"),
            dir: ScratchDir::new(&app),
            app,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        let admin = Admin::new(run.producer().await.client().clone());
        admin
            .create_topic(NewTopic::new(&run.input, PARTITIONS, 1), false)
            .await
            .expect("input topic");
        run
    }

    async fn producer(&self) -> Producer {
        let props = Properties::new().set("bootstrap.servers", &self.bootstrap);
        Producer::connect(ProducerConfig::from_properties(&props).expect("config"))
            .await
            .expect("producer")
    }

    fn changelog(&self) -> String {
        format!("{}-counts-changelog", self.app)
    }

    fn worker(&self, name: &str) -> Child {
        std::fs::create_dir_all(self.dir.path()).expect("scratch dir");
        let log =
            std::fs::File::create(self.dir.path().join(format!("{name}.log"))).expect("log file");
        let state = self.dir.path().join(name);
        let mut cmd = Command::new(binary());
        cmd.env("WC_APP", &self.app)
            .env("WC_INPUT", &self.input)
            .env("WC_OUTPUT", &self.output)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .args(["-b", &self.bootstrap])
            .args(["-X", &format!("state.dir={}", state.display())])
            .args([
                "-X",
                "session.timeout.ms=6000",
                "-X",
                "heartbeat.interval.ms=1000",
                "-X",
                "commit.interval.ms=200",
            ]);
        for e in &self.extra {
            cmd.args(["-X", e]);
        }
        cmd.args(["worker", "-l", "info"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("worker starts")
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Sends `(key, timestamp)` records, in order.
    async fn send(&self, records: &[(String, i64)]) {
        send_to(&self.bootstrap, &self.input, records).await;
    }

    /// Waits until `done` holds for the committed output.
    async fn output_until(
        &self,
        what: &str,
        done: impl Fn(&[FullRecord]) -> bool,
        workers: &[&str],
    ) -> Vec<FullRecord> {
        let deadline = Deadline::new(what.to_owned(), Duration::from_secs(120));
        loop {
            let out = read_records(&self.bootstrap, &self.output, true).await;
            if done(&out) {
                return out;
            }
            if deadline.passed() {
                let logs: Vec<String> = workers
                    .iter()
                    .map(|w| faustus_suite::log_tail(&self.log(w), 30))
                    .collect();
                panic!(
                    "{what}: {} records so far\n{}",
                    out.len(),
                    logs.join("\n---\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Sends `(key, timestamp)` records to `topic`, in order.
async fn send_to(bootstrap: &str, topic: &str, records: &[(String, i64)]) {
    let props = Properties::new().set("bootstrap.servers", bootstrap);
    let p = Producer::connect(ProducerConfig::from_properties(&props).expect("config"))
        .await
        .expect("producer");
    let mut pending = Vec::new();
    for (k, ts) in records {
        let mut rec = ProducerRecord::new(topic).key(k.clone()).value("x");
        rec.timestamp = Some(*ts);
        pending.push(p.send(rec).await.expect("queued"));
    }
    for d in pending {
        d.await.expect("delivered");
    }
    p.close().await.expect("close");
}

/// `got` equals `expected`; if not, says where they differ (the maps are
/// too large to print whole).
fn assert_same(got: &BTreeMap<String, (u64, i64)>, expected: &BTreeMap<String, (u64, i64)>) {
    let missing: Vec<_> = expected
        .keys()
        .filter(|k| !got.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .take(5)
        .collect();
    let wrong: Vec<_> = expected
        .iter()
        .filter_map(|(k, v)| got.get(k).filter(|g| *g != v).map(|g| (k, v, g)))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && wrong.is_empty(),
        "{} results, {} expected; missing {missing:?}, unexpected {extra:?}, \
         wrong (expected, got) {wrong:?}",
        got.len(),
        expected.len()
    );
}

fn binary() -> PathBuf {
    faustus_suite::example_binary("windowed_counts")
}

fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// One key per partition (by the Java partitioner on its UTF-8 bytes), to
/// move every partition's stream time.
fn a_key_per_partition() -> Vec<String> {
    (0..PARTITIONS)
        .map(|p| {
            (0..)
                .map(|i| format!("tick-{i}"))
                .find(|k| partition_for_key(k.as_bytes(), PARTITIONS) == p)
                .expect("some key lands there")
        })
        .collect()
}

/// Tumbling windows of `SIZE` ms: (key@start/end) -> (count, latest
/// timestamp), a replay of `records`.
fn replay(records: &[(String, i64)]) -> BTreeMap<String, (u64, i64)> {
    let mut out: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    for (k, ts) in records {
        let start = ts - ts.rem_euclid(SIZE);
        let e = out
            .entry(format!("{k}@{start}/{}", start + SIZE))
            .or_insert((0, i64::MIN));
        e.0 += 1;
        e.1 = e.1.max(*ts);
    }
    out
}

/// Sliding windows of `diff` ms: (key@start/end) -> (count, latest
/// timestamp), by the definition.
fn replay_sliding(records: &[(String, i64)], diff: i64) -> BTreeMap<String, (u64, i64)> {
    let mut by_key: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for (k, ts) in records {
        by_key.entry(k).or_default().push(*ts);
    }
    let mut out = BTreeMap::new();
    for (k, ts) in by_key {
        for (w, n) in faustus_engine::window::sliding_windows(&ts, diff) {
            let latest = ts
                .iter()
                .copied()
                .filter(|&t| w.start <= t && t <= w.end)
                .max();
            out.insert(
                format!("{k}@{}/{}", w.start, w.end),
                (n as u64, latest.unwrap_or(i64::MIN)),
            );
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn final_sliding_windows_are_emitted_exactly_once_through_sigkills() {
    // Sliding windows stay in the store after they close (a later record
    // may start its windows from them): a close emitted before a crash is
    // still there after recovery, and only the close point persisted in
    // the transaction keeps it from being emitted again.
    let run = Run::new(
        "wc-eos",
        &[("WC_WINDOW", "sliding:100"), ("WC_EMIT", "final")],
        &["processing.guarantee=exactly_once"],
    )
    .await;
    // Event times 5 ms apart from an hour ago (recent enough for the
    // broker's retention), over 10 keys.
    let base = millis_ago(Duration::from_secs(3600));
    let records: Vec<(String, i64)> = (0..8_000)
        .map(|i| (format!("k{}", i % 10), base + 5 * i as i64))
        .collect();
    let mut worker = run.worker("a");
    // Sent while the worker is killed three times: whatever a worker staged
    // but did not commit is aborted, and the next takes over from the
    // changelog.
    let sending = {
        let (bootstrap, input, records) =
            (run.bootstrap.clone(), run.input.clone(), records.clone());
        tokio::spawn(async move {
            for chunk in records.chunks(200) {
                send_to(&bootstrap, &input, chunk).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    // Each kill once the worker has committed results of its own.
    let mut emitted = 0;
    for round in 0..3 {
        let out = run
            .output_until(
                &format!("results from worker {round}"),
                |out| out.len() >= emitted + 20,
                &["a"],
            )
            .await;
        emitted = out.len();
        kill(worker);
        worker = run.worker("a");
    }
    sending.await.expect("sender");
    // Every partition's stream time past the last window's close.
    let end = base + 5 * 8_000 + 10 * SIZE;
    let ticks: Vec<(String, i64)> = a_key_per_partition()
        .into_iter()
        .map(|k| (k, end))
        .collect();
    run.send(&ticks).await;
    let expected = replay_sliding(&records, 100);
    let out = run
        .output_until(
            "every final window",
            |out| out.len() >= expected.len(),
            &["a"],
        )
        .await;
    let mut seen: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    for r in &out {
        let count: u64 = r.value.parse().expect("a count");
        let before = seen.insert(r.key.clone(), (count, r.timestamp));
        assert!(
            before.is_none(),
            "{} emitted twice: {before:?} and {count}",
            r.key
        );
    }
    assert_eq!(
        seen, expected,
        "final counts and timestamps equal the replay"
    );
    faustus_suite::stop_worker(worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_restored_without_local_state_still_close_and_expire() {
    let run = Run::new(
        "wc-restore",
        &[("WC_WINDOW", "tumbling:1000"), ("WC_EMIT", "final")],
        &[],
    )
    .await;
    let base = millis_ago(Duration::from_secs(3600));
    let base = base - base.rem_euclid(SIZE);
    let first: Vec<(String, i64)> = (0..300)
        .map(|i| (format!("k{}", i % 30), base + (i as i64 % 900)))
        .collect();
    let a = run.worker("a");
    run.send(&first).await;
    // Wait until the windows are in the changelog, then stop and lose the
    // state directory.
    let deadline = Deadline::new("the windows in the changelog", Duration::from_secs(60));
    loop {
        let log = read_records(&run.bootstrap, &run.changelog(), false).await;
        let windows: std::collections::BTreeSet<&str> = log
            .iter()
            .filter(|r| r.key.contains("k"))
            .map(|r| r.key.as_str())
            .collect();
        if windows.len() >= 30 {
            break;
        }
        deadline.check(windows.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    faustus_suite::stop_worker(a);
    std::fs::remove_dir_all(run.dir.path().join("a")).expect("remove the state");
    assert!(
        read_records(&run.bootstrap, &run.output, true)
            .await
            .is_empty(),
        "nothing closed yet"
    );
    let a = run.worker("a");
    // Stream time past the windows' close and retention (both size +
    // grace after the start).
    let ticks: Vec<(String, i64)> = a_key_per_partition()
        .into_iter()
        .map(|k| (k, base + 5 * SIZE))
        .collect();
    run.send(&ticks).await;
    let expected = replay(&first);
    let out = run
        .output_until(
            "the restored windows' final counts",
            |out| out.len() >= expected.len(),
            &["a"],
        )
        .await;
    let got: BTreeMap<String, (u64, i64)> = out
        .iter()
        .map(|r| {
            (
                r.key.clone(),
                (r.value.parse().expect("count"), r.timestamp),
            )
        })
        .collect();
    assert_same(&got, &expected);
    // Expiry: a tombstone for each restored window in the changelog.
    let deadline = Deadline::new(
        "tombstones for the expired windows",
        Duration::from_secs(60),
    );
    loop {
        let log = read_records(&run.bootstrap, &run.changelog(), false).await;
        let tombstones = log
            .iter()
            .filter(|r| r.tombstone && r.key.contains('k'))
            .count();
        if tombstones >= expected.len() {
            break;
        }
        deadline.check(tombstones);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = run.log("a");
    assert!(
        log.contains("recovering"),
        "restored from the changelog:\n{}",
        faustus_suite::log_tail(&log, 30)
    );
    faustus_suite::stop_worker(a);
}

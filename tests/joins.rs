//! Joins end to end (`examples/joins.rs` as a worker process against the
//! harness Kafka): for a stream–table, a table–table and a stream–stream
//! join, the results of a run killed twice under exactly-once equal those
//! of a replay of the inputs in timestamp order, each exactly once, with
//! Kafka Streams' timestamps; and joined topics that are not co-partitioned
//! are refused at start.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use faustus_suite::{millis_ago, read_records, unique_topic, Deadline, FullRecord, ScratchDir};
use faustus_testcontainers::shared;
use faustus_wire::producer::{partition_for_key, Producer, ProducerConfig, ProducerRecord};
use faustus_wire::{Admin, NewTopic, Properties};

const PARTITIONS: i32 = 3;
const KEYS: u64 = 40;

fn binary() -> PathBuf {
    faustus_suite::example_binary("joins")
}

/// One input record: its side, key, value (`None`: a tombstone) and
/// timestamp.
#[derive(Debug, Clone)]
struct Input {
    left: bool,
    key: String,
    value: Option<String>,
    ts: i64,
}

/// A result: key -> (timestamp, value or `None` for a tombstone), sorted.
type Results = BTreeMap<String, Vec<(i64, Option<String>)>>;

struct Run {
    bootstrap: String,
    app: String,
    left: String,
    right: String,
    output: String,
    dir: ScratchDir,
    kind: String,
}

impl Run {
    async fn new(prefix: &str, kind: &str, right_partitions: i32) -> Self {
        let kafka = shared().expect("kafka");
        let app = unique_topic(prefix);
        let run = Self {
            bootstrap: kafka.bootstrap().to_owned(),
            left: format!("{app}-left"),
            right: format!("{app}-right"),
            output: format!("{app}-out"),
            dir: ScratchDir::new(&app),
            app,
            kind: kind.to_owned(),
        };
        let props = Properties::new().set("bootstrap.servers", &run.bootstrap);
        let p = Producer::connect(ProducerConfig::from_properties(&props).expect("config"))
            .await
            .expect("producer");
        let admin = Admin::new(p.client().clone());
        for (t, n) in [(&run.left, PARTITIONS), (&run.right, right_partitions)] {
            admin
                .create_topic(NewTopic::new(t, n, 1), false)
                .await
                .expect("input topic");
        }
        run
    }

    fn worker(&self, name: &str) -> Child {
        std::fs::create_dir_all(self.dir.path()).expect("scratch dir");
        let log =
            std::fs::File::create(self.dir.path().join(format!("{name}.log"))).expect("log file");
        let state = self.dir.path().join(name);
        Command::new(binary())
            .env("JOIN_APP", &self.app)
            .env("JOIN_KIND", &self.kind)
            .env("JOIN_LEFT", &self.left)
            .env("JOIN_RIGHT", &self.right)
            .env("JOIN_OUTPUT", &self.output)
            .env("JOIN_WINDOW_MS", "50")
            .env("JOIN_GRACE_MS", "20")
            .args(["-b", &self.bootstrap])
            .args(["-X", &format!("state.dir={}", state.display())])
            .args([
                "-X",
                "processing.guarantee=exactly_once",
                "-X",
                "session.timeout.ms=6000",
                "-X",
                "heartbeat.interval.ms=1000",
                "-X",
                "commit.interval.ms=100",
                // Small fetches: many polls and commits, so that kills land
                // in the middle of the run.
                "-X",
                "max.partition.fetch.bytes=2048",
                "-X",
                &format!("topic.partitions={PARTITIONS}"),
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

    /// Writes every input: all of the left topic, then all of the right
    /// (written out of timestamp order across the two on purpose).
    async fn send(&self, inputs: &[Input]) {
        let props = Properties::new().set("bootstrap.servers", &self.bootstrap);
        let p = Producer::connect(ProducerConfig::from_properties(&props).expect("config"))
            .await
            .expect("producer");
        let mut pending = Vec::new();
        for left in [true, false] {
            let topic = if left { &self.left } else { &self.right };
            for i in inputs.iter().filter(|i| i.left == left) {
                let mut rec = ProducerRecord::new(topic.as_str()).key(i.key.clone());
                rec.value = i.value.clone().map(Into::into);
                rec.timestamp = Some(i.ts);
                pending.push(p.send(rec).await.expect("queued"));
            }
        }
        for d in pending {
            d.await.expect("delivered");
        }
        p.close().await.expect("close");
    }

    /// Kills the worker twice, each time once it has committed results (or
    /// all of them), then waits for `expected` results and returns them.
    async fn run_with_kills(&self, expected: usize) -> Vec<FullRecord> {
        let mut worker = self.worker("a");
        let mut seen = 0;
        for round in 0..2 {
            let out = self
                .output_until(&format!("results before kill {round}"), |n| {
                    n > seen || n >= expected
                })
                .await;
            seen = out.len();
            eprintln!("kill {round} after {seen} of {expected} results");
            let _ = worker.kill();
            let _ = worker.wait();
            worker = self.worker("a");
        }
        let out = self.output_until("every result", |n| n >= expected).await;
        faustus_suite::stop_worker(worker);
        out
    }

    async fn output_until(&self, what: &str, done: impl Fn(usize) -> bool) -> Vec<FullRecord> {
        let deadline = Deadline::new(what.to_owned(), Duration::from_secs(120));
        loop {
            let out = read_records(&self.bootstrap, &self.output, true).await;
            if done(out.len()) {
                return out;
            }
            if deadline.passed() {
                panic!(
                    "{what}: {} results so far\n{}",
                    out.len(),
                    faustus_suite::log_tail(&self.log("a"), 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `n` inputs over [`KEYS`] keys, timestamps 10 ms apart from an hour ago,
/// sides and keys from a fixed pseudo-random sequence; with `tombstones`,
/// about one in eight is a delete.
fn inputs(n: u64, tombstones: bool) -> Vec<Input> {
    let base = millis_ago(Duration::from_secs(3600));
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let left = x & 1 == 0;
            let key = format!("k{}", (x >> 8) % KEYS);
            let value = (!tombstones || !(x >> 32).is_multiple_of(8)).then(|| format!("v{i}"));
            Input {
                left,
                key,
                value,
                ts: base + 10 * i as i64,
            }
        })
        .collect()
}

fn results(out: &[FullRecord]) -> Results {
    let mut got = Results::new();
    for r in out {
        got.entry(r.key.clone())
            .or_default()
            .push((r.timestamp, (!r.tombstone).then(|| r.value.clone())));
    }
    for v in got.values_mut() {
        v.sort();
    }
    got
}

fn push(out: &mut Results, key: &str, ts: i64, value: Option<String>) {
    out.entry(key.to_owned()).or_default().push((ts, value));
}

fn show(v: Option<&String>) -> &str {
    v.map_or("null", String::as_str)
}

/// A stream–table left join, replayed: each left record takes the right
/// table as of its timestamp.
fn replay_stream_table(inputs: &[Input]) -> Results {
    let mut table: BTreeMap<&str, &String> = BTreeMap::new();
    let mut out = Results::new();
    for i in inputs {
        match (i.left, &i.value) {
            (true, Some(v)) => push(
                &mut out,
                &i.key,
                i.ts,
                Some(format!("{v}+{}", show(table.get(i.key.as_str()).copied()))),
            ),
            (true, None) => {}
            (false, Some(v)) => {
                table.insert(&i.key, v);
            }
            (false, None) => {
                table.remove(i.key.as_str());
            }
        }
    }
    out
}

/// A table–table outer join, replayed: a row while either side has the
/// key, at the larger of the two sides' timestamps; a tombstone when a
/// change leaves neither.
fn replay_table_table_outer(inputs: &[Input]) -> Results {
    let mut sides: [BTreeMap<&str, (&String, i64)>; 2] = [BTreeMap::new(), BTreeMap::new()];
    let mut out = Results::new();
    for i in inputs {
        let (this, other) = if i.left { (0, 1) } else { (1, 0) };
        let old = match &i.value {
            Some(v) => sides[this].insert(&i.key, (v, i.ts)),
            None => sides[this].remove(i.key.as_str()),
        };
        let other_now = sides[other].get(i.key.as_str()).copied();
        let (l, r) = (
            sides[0].get(i.key.as_str()).map(|e| e.0),
            sides[1].get(i.key.as_str()).map(|e| e.0),
        );
        match (other_now, &i.value) {
            (None, None) if old.is_none() => {}
            (None, None) => push(&mut out, &i.key, i.ts, None),
            (None, Some(_)) => push(
                &mut out,
                &i.key,
                i.ts,
                Some(format!("{}+{}", show(l), show(r))),
            ),
            (Some((_, ots)), _) => push(
                &mut out,
                &i.key,
                i.ts.max(ots),
                Some(format!("{}+{}", show(l), show(r))),
            ),
        }
    }
    out
}

/// A stream–stream outer join within `window` ms, replayed over inputs in
/// timestamp order (none late): every pair of records of the two sides
/// with one key at most `window` apart, at the later timestamp; every
/// record without such a partner on its own, at its timestamp, if its
/// window closed before the end of its partition's input (the last
/// timestamp passed its own by more than `window + grace`).
fn replay_stream_stream_outer(inputs: &[Input], window: i64, grace: i64) -> Results {
    let mut out = Results::new();
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    let mut by_key: BTreeMap<&str, Vec<&Input>> = BTreeMap::new();
    for i in inputs {
        let p = partition_for_key(i.key.as_bytes(), PARTITIONS);
        let e = ends.entry(p).or_insert(i64::MIN);
        *e = (*e).max(i.ts);
        if i.value.is_some() {
            by_key.entry(&i.key).or_default().push(i);
        }
    }
    for (key, records) in by_key {
        let end = ends[&partition_for_key(key.as_bytes(), PARTITIONS)];
        for a in &records {
            let av = a.value.as_ref();
            let mut partnered = false;
            for b in records.iter().filter(|b| b.left != a.left) {
                if (b.ts - a.ts).abs() > window {
                    continue;
                }
                partnered = true;
                // Each pair once: from the later record.
                if b.ts < a.ts {
                    let (l, r) = if a.left {
                        (av, b.value.as_ref())
                    } else {
                        (b.value.as_ref(), av)
                    };
                    push(
                        &mut out,
                        key,
                        a.ts,
                        Some(format!("{}+{}", show(l), show(r))),
                    );
                }
            }
            if !partnered && a.ts + window + grace < end {
                let (l, r) = if a.left { (av, None) } else { (None, av) };
                push(
                    &mut out,
                    key,
                    a.ts,
                    Some(format!("{}+{}", show(l), show(r))),
                );
            }
        }
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

fn sorted(mut r: Results) -> Results {
    for v in r.values_mut() {
        v.sort();
    }
    r
}

fn assert_same(got: &Results, expected: &Results) {
    let mut diffs = Vec::new();
    for key in expected.keys().chain(got.keys()) {
        let (e, g) = (expected.get(key), got.get(key));
        if e != g {
            diffs.push(format!("{key}: expected {e:?}\n got {g:?}"));
        }
    }
    diffs.dedup();
    assert!(
        diffs.is_empty(),
        "{} keys differ:\n{}",
        diffs.len(),
        diffs.iter().take(3).cloned().collect::<Vec<_>>().join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_table_join_through_sigkills_equals_its_replay() {
    let run = Run::new("jst", "stream-table:left", PARTITIONS).await;
    let inputs = inputs(6_000, true);
    run.send(&inputs).await;
    let expected = replay_stream_table(&inputs);
    let n = expected.values().map(Vec::len).sum();
    let out = run.run_with_kills(n).await;
    assert_eq!(out.len(), n, "each result exactly once");
    assert_same(&results(&out), &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_table_outer_join_through_sigkills_equals_its_replay() {
    let run = Run::new("jtt", "table-table:outer", PARTITIONS).await;
    let inputs = inputs(6_000, true);
    run.send(&inputs).await;
    let expected = sorted(replay_table_table_outer(&inputs));
    let n = expected.values().map(Vec::len).sum();
    let out = run.run_with_kills(n).await;
    assert_eq!(out.len(), n, "each result exactly once");
    assert_same(&results(&out), &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_stream_outer_join_through_sigkills_equals_its_replay() {
    let run = Run::new("jss", "stream-stream:outer", PARTITIONS).await;
    let inputs = inputs(6_000, false);
    run.send(&inputs).await;
    let expected = replay_stream_stream_outer(&inputs, 50, 20);
    let n = expected.values().map(Vec::len).sum();
    let out = run.run_with_kills(n).await;
    assert_eq!(out.len(), n, "each result exactly once");
    assert_same(&results(&out), &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joined_topics_that_are_not_co_partitioned_are_refused_at_start() {
    let run = Run::new("jcp", "stream-table:inner", PARTITIONS + 1).await;
    let mut worker = run.worker("a");
    let deadline = Deadline::new("the worker to refuse", Duration::from_secs(60));
    let status = loop {
        if let Some(s) = worker.try_wait().expect("wait") {
            break s;
        }
        deadline.check("running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success());
    let log = run.log("a");
    assert!(
        log.contains("co-partitioned") && log.contains(&run.left) && log.contains(&run.right),
        "{}",
        faustus_suite::log_tail(&log, 30)
    );
}

/// Left rows naming a right key (`P<n>:…`, or no `:` for none) and right
/// rows keyed `P<n>`, with deletes, in one timestamp order.
fn foreign_key_inputs(n: u64) -> Vec<Input> {
    let base = millis_ago(Duration::from_secs(3600));
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let left = x & 3 != 0;
            let (key, value) = if left {
                let value = match (x >> 8) % 16 {
                    0 | 1 => None,
                    2 => Some(format!("nofk{i}")),
                    _ => Some(format!("P{}:{i}", (x >> 16) % 10)),
                };
                (format!("o{}", (x >> 24) % KEYS), value)
            } else {
                let value = (!(x >> 8).is_multiple_of(8)).then(|| format!("name{i}"));
                (format!("P{}", (x >> 16) % 10), value)
            };
            Input {
                left,
                key,
                value,
                ts: base + 10 * i as i64,
            }
        })
        .collect()
}

/// What a foreign-key join holds at the end: each left key's last result
/// (`None`: a tombstone, or never a result).
fn settled_foreign_key(inputs: &[Input], left_join: bool) -> BTreeMap<String, Option<String>> {
    let (mut left, mut right) = (BTreeMap::new(), BTreeMap::new());
    for i in inputs {
        let side = if i.left { &mut left } else { &mut right };
        side.insert(i.key.clone(), i.value.clone());
    }
    left.iter()
        .map(|(k, v)| {
            let joined = v.as_ref().and_then(|v: &String| {
                let r = v
                    .split_once(':')
                    .and_then(|(fk, _)| right.get(fk).cloned().flatten());
                match (r, left_join) {
                    (Some(r), _) => Some(format!("{v}+{r}")),
                    (None, true) => Some(format!("{v}+null")),
                    (None, false) => None,
                }
            });
            (k.clone(), joined)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_key_joins_through_a_sigkill_settle_on_the_join_of_the_final_tables() {
    for (kind, left_join) in [("foreign-key:inner", false), ("foreign-key:left", true)] {
        let run = Run::new("jfk", kind, PARTITIONS).await;
        let inputs = foreign_key_inputs(3_000);
        run.send(&inputs).await;
        let expected = settled_foreign_key(&inputs, left_join);
        let worker = run.worker("a");
        run.output_until("first results", |n| n > 0).await;
        let mut worker = worker;
        let _ = worker.kill();
        let _ = worker.wait();
        let worker = run.worker("a");
        let deadline = Deadline::new(format!("{kind} to settle"), Duration::from_secs(120));
        loop {
            let out = read_records(&run.bootstrap, &run.output, true).await;
            let mut last: BTreeMap<String, Option<String>> =
                expected.keys().map(|k| (k.clone(), None)).collect();
            for r in &out {
                last.insert(r.key.clone(), (!r.tombstone).then(|| r.value.clone()));
            }
            if last == expected {
                break;
            }
            if deadline.passed() {
                let wrong: Vec<_> = expected
                    .iter()
                    .filter(|(k, v)| last.get(*k) != Some(v))
                    .take(5)
                    .map(|(k, v)| format!("{k}: expected {v:?}, last {:?}", last.get(k)))
                    .collect();
                panic!(
                    "{kind}: {}\n{}",
                    wrong.join("\n"),
                    faustus_suite::log_tail(&run.log("a"), 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        faustus_suite::stop_worker(worker);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_stream_join_whose_tasks_move_between_workers_equals_its_replay() {
    // Worker b joins while a works (tasks move to b with their buffers,
    // restored from the changelog), then a is killed (its tasks move back
    // to b): every result exactly once all the same.
    let run = Run::new("jmv", "stream-stream:outer", PARTITIONS).await;
    let inputs = inputs(60_000, false);
    run.send(&inputs).await;
    let expected = replay_stream_stream_outer(&inputs, 50, 20);
    let n: usize = expected.values().map(Vec::len).sum();
    let mut a = run.worker("a");
    run.output_until("results from a", |got| got > 0 || got >= n)
        .await;
    let b = run.worker("b");
    let seen = run.output_until("results", |got| got > 0).await.len();
    eprintln!("b started after {seen} of {n} results");
    // Until b owns a task of its own (its log says so), then kill a.
    let deadline = Deadline::new("b to own a task", Duration::from_secs(60));
    while !run.log("b").contains("task ready") && seen < n {
        deadline.check("waiting");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = a.kill();
    let _ = a.wait();
    let out = run.output_until("every result", |got| got >= n).await;
    faustus_suite::stop_worker(b);
    assert_eq!(out.len(), n, "each result exactly once");
    assert_same(&results(&out), &expected);
}

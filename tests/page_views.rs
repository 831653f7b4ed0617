//! The page-view counter (`examples/page_views.rs`) end to end, as worker
//! processes against the harness Kafka: exact counts with two workers and a
//! third joining and leaving, exactly-once through random SIGKILLs and a
//! rebalance storm, recovery without local state or from a truncated
//! changelog, input lost to retention, and dead-lettering of bad input.
//!
//! The strongest check reads the table's changelog: each click of count 1
//! makes one changelog record for its URL, so in changelog order a URL's
//! values must be exactly 1, 2, ..., n. A lost update, a duplicate, or two
//! workers writing one partition at once breaks that sequence.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use faustus_suite::{read_all, read_all_settled, unique_topic, Deadline, ScratchDir};
use faustus_testcontainers::shared;
use faustus_wire::producer::{Producer, ProducerConfig, ProducerRecord};
use faustus_wire::{Admin, NewTopic, OffsetSpec, Properties};

const PARTITIONS: i32 = 6;

fn binary() -> PathBuf {
    faustus_suite::example_binary("page_views")
}

struct Run {
    bootstrap: String,
    app: String,
    topic: String,
    dir: ScratchDir,
    extra: Vec<String>,
    dead_letters: Option<String>,
}

impl Run {
    async fn new(prefix: &str, extra: &[&str]) -> Self {
        let kafka = shared().expect("kafka");
        let app = unique_topic(prefix);
        let dir = ScratchDir::new(&app);
        let run = Self {
            bootstrap: kafka.bootstrap().to_owned(),
            topic: format!("{app}-clicks"),
            app,
            dir,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            dead_letters: None,
        };
        let admin = Admin::new(run.producer().await.client().clone());
        admin
            .create_topic(NewTopic::new(&run.topic, PARTITIONS, 1), false)
            .await
            .expect("clicks topic");
        run
    }

    async fn producer(&self) -> Producer {
        let props = Properties::new().set("bootstrap.servers", &self.bootstrap);
        Producer::connect(ProducerConfig::from_properties(&props).expect("config"))
            .await
            .expect("producer")
    }

    /// Whether the workers' tables cache changes (the default).
    fn cached(&self) -> bool {
        !self.extra.iter().any(|e| e == NO_CACHE)
    }

    fn changelog(&self) -> String {
        format!("{}-click_counts-changelog", self.app)
    }

    /// Starts worker `name` (its own state directory).
    fn worker(&self, name: &str) -> Child {
        self.worker_with(name, &[])
    }

    /// [`worker`](Self::worker) with more `-X` settings.
    fn worker_with(&self, name: &str, settings: &[&str]) -> Child {
        let state = self.dir.path().join(name);
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log")))
            .or_else(|_| {
                std::fs::create_dir_all(self.dir.path())?;
                std::fs::File::create(self.dir.path().join(format!("{name}.log")))
            })
            .expect("log file");
        let mut cmd = Command::new(binary());
        cmd.env("PAGE_VIEWS_APP", &self.app)
            .env("PAGE_VIEWS_TOPIC", &self.topic)
            .env("KAFKA_BOOTSTRAP", &self.bootstrap)
            .args(["-X", &format!("state.dir={}", state.display())])
            .args([
                "-X",
                "session.timeout.ms=6000",
                "-X",
                "heartbeat.interval.ms=1000",
            ])
            .args(["-X", "commit.interval.ms=200"]);
        for e in self
            .extra
            .iter()
            .map(String::as_str)
            .chain(settings.iter().copied())
        {
            cmd.args(["-X", e]);
        }
        if let Some(t) = &self.dead_letters {
            cmd.env("PAGE_VIEWS_DEAD_LETTERS", t);
        }
        cmd.args(["worker", "-l", "info"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("worker starts")
    }

    /// The log of worker `name`, for failure messages.
    fn log(&self, name: &str) -> String {
        let s = std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
            .unwrap_or_default();
        let tail: Vec<&str> = s.lines().rev().take(30).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    async fn clicks(
        &self,
        from: usize,
        n: usize,
        urls: usize,
        pause: Duration,
    ) -> BTreeMap<String, u64> {
        send_clicks(
            self.bootstrap.clone(),
            self.topic.clone(),
            from,
            n,
            urls,
            pause,
        )
        .await
    }

    /// Sends clicks from a task, while the test goes on.
    fn clicks_in_background(
        &self,
        n: usize,
        pause: Duration,
    ) -> tokio::task::JoinHandle<BTreeMap<String, u64>> {
        tokio::spawn(send_clicks(
            self.bootstrap.clone(),
            self.topic.clone(),
            0,
            n,
            1000,
            pause,
        ))
    }

    /// Waits until the changelog's latest values add up to `total`, then
    /// returns (latest value per URL, every value per URL in order).
    async fn table(
        &self,
        total: u64,
        workers: &[&str],
    ) -> (BTreeMap<String, u64>, BTreeMap<String, Vec<u64>>) {
        let deadline = Deadline::new(
            format!("the table to count {total} clicks"),
            Duration::from_secs(180),
        );
        loop {
            let records = read_all_settled(&self.bootstrap, &self.changelog()).await;
            let mut history: BTreeMap<String, Vec<u64>> = BTreeMap::new();
            for (_, k, v) in records {
                history
                    .entry(k)
                    .or_default()
                    .push(v.parse().expect("a count"));
            }
            let latest: BTreeMap<String, u64> = history
                .iter()
                .map(|(k, v)| (k.clone(), *v.last().expect("one value")))
                .collect();
            let sum: u64 = latest.values().sum();
            if sum >= total {
                return (latest, history);
            }
            if deadline.passed() {
                let logs: Vec<String> = workers
                    .iter()
                    .map(|w| format!("--- {w}\n{}", self.log(w)))
                    .collect();
                panic!(
                    "the table counts {sum} of {total} clicks\n{}",
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Sends `n` clicks of count 1 over `urls` URLs, `pause` apart in chunks of
/// 1000; returns the expected count per URL.
async fn send_clicks(
    bootstrap: String,
    topic: String,
    from: usize,
    n: usize,
    urls: usize,
    pause: Duration,
) -> BTreeMap<String, u64> {
    let props = Properties::new().set("bootstrap.servers", &bootstrap);
    let p = Producer::connect(ProducerConfig::from_properties(&props).expect("config"))
        .await
        .expect("producer");
    let mut expected = BTreeMap::new();
    let mut pending = Vec::new();
    for i in from..from + n {
        let url = format!("/page/{}", i % urls);
        *expected.entry(url.clone()).or_insert(0) += 1;
        pending.push(
            p.send(ProducerRecord::new(&topic).key(url).value("1"))
                .await
                .expect("queued"),
        );
        if i % 1000 == 999 && !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    for d in pending {
        d.await.expect("delivered");
    }
    p.close().await.expect("close");
    expected
}

/// SIGTERM, and the worker exits 0 after committing.
fn stop(mut child: Child, name: &str, run: &Run) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Deadline::new(format!("{name} to exit"), Duration::from_secs(60));
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(
                status.success(),
                "{name} exited with {status}\n{}",
                run.log(name)
            );
            return;
        }
        deadline.check(name);
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Every URL's count is the expected one, and its changelog values climb
/// to it: without the table cache 1, 2, ..., n (one update per click, in
/// order); with it, a rising subsequence of those (a click counted twice
/// or lost shows as a repeated, falling or missing value).
fn assert_exact(
    expected: &BTreeMap<String, u64>,
    latest: &BTreeMap<String, u64>,
    history: &BTreeMap<String, Vec<u64>>,
    cached: bool,
) {
    assert_eq!(latest.len(), expected.len(), "URLs in the table");
    for (url, &n) in expected {
        assert_eq!(latest.get(url), Some(&n), "count of {url}");
        let h = &history[url];
        if cached {
            assert!(
                h.windows(2).all(|w| w[0] < w[1]) && h.last() == Some(&n),
                "changelog of {url}: rising to {n}: {h:?}"
            );
        } else {
            let sequence: Vec<u64> = (1..=n).collect();
            assert_eq!(
                h, &sequence,
                "changelog of {url}: one update per click, in order"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_count_exactly_while_a_third_joins_and_leaves() {
    // Commits far apart: the caches hold changes whenever partitions are
    // revoked, and must be flushed first.
    members_come_and_go(&["commit.interval.ms=10000"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_table_cache_two_workers_count_exactly_while_a_third_joins_and_leaves() {
    members_come_and_go(&[NO_CACHE]).await;
}

/// Turns the table cache off: one changelog record per update.
const NO_CACHE: &str = "cache.max.bytes=0";

async fn members_come_and_go(extra: &[&str]) {
    let run = Run::new("pv-alo", extra).await;
    let a = run.worker("a");
    let b = run.worker("b");
    let sending = run.clicks_in_background(100_000, Duration::from_millis(150));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let c = run.worker("c");
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop(c, "c", &run);
    let expected = sending.await.expect("sender");
    let (latest, history) = run.table(100_000, &["a", "b", "c"]).await;
    assert_exact(&expected, &latest, &history, run.cached());
    let log_c = run.log("c");
    assert!(log_c.contains("task ready"), "c took part:\n{log_c}");
    stop(a, "a", &run);
    stop(b, "b", &run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_survives_five_random_sigkills_and_a_lost_state_directory() {
    sigkills_under_exactly_once(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_table_cache_exactly_once_survives_five_random_sigkills_and_a_lost_state_directory(
) {
    sigkills_under_exactly_once(&[NO_CACHE]).await;
}

async fn sigkills_under_exactly_once(extra: &[&str]) {
    let mut settings = vec!["processing.guarantee=exactly_once"];
    settings.extend_from_slice(extra);
    let run = Run::new("pv-eos", &settings).await;
    let mut a = run.worker("a");
    let mut b = run.worker("b");
    let sending = run.clicks_in_background(100_000, Duration::from_millis(150));
    // Five SIGKILLs, of either worker, at random points (the seed is
    // printed so that a failure can be replayed with PV_KILL_SEED).
    let mut rng = Lcg::from_env("PV_KILL_SEED");
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(1000 + rng.below(3000))).await;
        if rng.below(2) == 0 {
            kill(a);
            a = run.worker("a");
        } else {
            kill(b);
            b = run.worker("b");
        }
    }
    let expected = sending.await.expect("sender");
    let (latest, history) = run.table(100_000, &["a", "b"]).await;
    assert_exact(&expected, &latest, &history, run.cached());
    let committed = read_all(&run.bootstrap, &run.changelog(), true).await.len();
    if run.cached() {
        // Each commit carries a URL's latest count once.
        assert!(
            committed < 100_000,
            "{committed} committed changelog updates for 100000 clicks"
        );
    } else {
        assert_eq!(
            committed, 100_000,
            "one committed changelog update per click"
        );
    }

    // Recovery without local state: b's directory goes, and b alone must
    // carry on from the changelog's totals.
    stop(a, "a", &run);
    stop(b, "b", &run);
    std::fs::remove_dir_all(run.dir.path().join("b")).expect("remove b's state");
    let b = run.worker("b");
    let more = run.clicks(100_000, 1000, 1000, Duration::ZERO).await;
    let (latest, _) = run.table(101_000, &["b"]).await;
    for (url, n) in &expected {
        assert_eq!(latest[url], n + more[url], "count of {url} after recovery");
    }
    let log_b = run.log("b");
    assert!(
        log_b.contains("recovering"),
        "b recovered from the changelog:\n{log_b}"
    );
    stop(b, "b", &run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_goes_to_the_dead_letter_topic_and_nothing_stalls() {
    let mut run = Run::new("pv-dlq", &[]).await;
    let dlq = format!("{}-dead-letters", run.app);
    run.dead_letters = Some(dlq.clone());
    let p = run.producer().await;
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let mut bad = 0;
    for i in 0..6000usize {
        let url = format!("/page/{}", i % 60);
        let value = if i % 10 == 3 {
            bad += 1;
            ["{not json", "", "\"one\"", "-"][i % 4].to_owned()
        } else {
            *expected.entry(url.clone()).or_insert(0) += 1;
            "1".to_owned()
        };
        let _ = p
            .send(ProducerRecord::new(&run.topic).key(url).value(value))
            .await
            .expect("queued");
    }
    p.flush().await.expect("flush");
    let w = run.worker("w");
    let (latest, history) = run.table(expected.values().sum(), &["w"]).await;
    assert_exact(&expected, &latest, &history, run.cached());
    // Every bad record, once, with where it came from.
    let dead = faustus_suite::read_with_headers(&run.bootstrap, &dlq).await;
    assert_eq!(dead.len(), bad, "dead letters");
    let mut seen = std::collections::BTreeSet::new();
    for d in &dead {
        assert_eq!(d.header("faustus.source.topic"), Some(run.topic.as_str()));
        let partition: i32 = d
            .header("faustus.source.partition")
            .expect("partition")
            .parse()
            .expect("number");
        let offset: i64 = d
            .header("faustus.source.offset")
            .expect("offset")
            .parse()
            .expect("number");
        assert!(
            d.header("faustus.error")
                .is_some_and(|e| e.contains("decode")),
            "{:?}",
            d.headers
        );
        assert!(
            seen.insert((partition, offset)),
            "dead-lettered twice: {partition}@{offset}"
        );
    }
    stop(w, "w", &run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_replica_makes_a_takeover_replay_only_the_tail() {
    let run = Run::new(
        "pv-standby",
        &[
            "processing.guarantee=exactly_once",
            "table.standby.replicas=1",
        ],
    )
    .await;
    let a = run.worker("a");
    let b = run.worker("b");
    // Both own tasks before the clicks come, so b counts its share.
    let deadline = Deadline::new("both workers to own tasks", Duration::from_secs(60));
    while !(run_log(&run, "a").contains("task ready") && run_log(&run, "b").contains("task ready"))
    {
        deadline.check((run.log("a"), run.log("b")));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let expected = run.clicks(0, 30_000, 600, Duration::from_millis(50)).await;
    let _ = run.table(30_000, &["a", "b"]).await;
    kill(b);
    // a takes b's partitions over once b's session expires.
    let more = run.clicks(30_000, 600, 600, Duration::ZERO).await;
    let (latest, history) = run.table(30_600, &["a"]).await;
    let mut all = expected.clone();
    for (k, n) in more {
        *all.entry(k).or_insert(0) += n;
    }
    assert_exact(&all, &latest, &history, run.cached());
    // The last recovery of each partition a owns now: for b's partitions,
    // the takeover. Each had ~5000 updates; the standby had them already.
    let log = run_log(&run, "a");
    let mut last_recovery = BTreeMap::new();
    for l in log.lines().filter(|l| l.contains(" recovered ")) {
        let field = |name: &str| -> Option<u64> {
            l.split(&format!("{name}="))
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        };
        if let (Some(p), Some(n)) = (field("partition"), field("applied")) {
            last_recovery.insert(p, n);
        }
    }
    assert_eq!(
        last_recovery.len(),
        PARTITIONS as usize,
        "a owns every partition in the end:\n{}",
        run.log("a")
    );
    assert!(
        last_recovery.values().all(|&n| n < 1000),
        "takeover replays {last_recovery:?}\n{}",
        run.log("a")
    );
    assert!(log.contains("standby replica"), "a kept standbys");
    assert!(run_log(&run, "b").contains("task ready"), "b took part");
    stop(a, "a", &run);
}

fn run_log(run: &Run, name: &str) -> String {
    std::fs::read_to_string(run.dir.path().join(format!("{name}.log"))).unwrap_or_default()
}

/// Input deleted before it was processed (retention overran a stopped
/// worker; DeleteRecords does here what retention does): the restarted
/// worker logs each gap with its topic, partition and offsets, resumes at
/// the log start (`auto.offset.reset=earliest`), counts every click that
/// is still there exactly, and `input_records_lost` counts what is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_deleted_before_it_was_processed_is_logged_counted_and_skipped() {
    let run = Run::new("pv-gap", &[]).await;
    let port = free_port();
    let a = run.worker("a");
    let mut expected = run.clicks(0, 600, 30, Duration::ZERO).await;
    let _ = run.table(600, &["a"]).await;
    stop(a, "a", &run);

    // Round two, while no worker runs: sent, then deleted from partitions
    // 0..3, as retention would.
    let props = Properties::new().set("bootstrap.servers", &run.bootstrap);
    let p = Producer::connect(ProducerConfig::from_properties(&props).expect("config"))
        .await
        .expect("producer");
    let mut round_two = Vec::new();
    for i in 0..600 {
        let url = format!("/page/{}", i % 30);
        let d = p
            .send(ProducerRecord::new(&run.topic).key(url.clone()).value("1"))
            .await
            .expect("queued");
        round_two.push((url, d));
    }
    let mut lost: BTreeMap<i32, i64> = BTreeMap::new();
    for (url, d) in round_two {
        let meta = d.await.expect("delivered");
        if meta.partition < 3 {
            *lost.entry(meta.partition).or_default() += 1;
        } else {
            *expected.entry(url).or_default() += 1;
        }
    }
    p.close().await.expect("close");
    let admin = Admin::new(run.producer().await.client().clone());
    let ends = admin
        .list_offsets(&run.topic, &[0, 1, 2], OffsetSpec::Latest, false)
        .await
        .expect("end offsets");
    admin
        .delete_records(&run.topic, &ends)
        .await
        .expect("delete records");
    for (url, n) in run.clicks(0, 300, 30, Duration::ZERO).await {
        *expected.entry(url).or_default() += n;
    }

    let b = run.worker_with("b", &[&format!("web.port={port}")]);
    let total: u64 = expected.values().sum();
    let (latest, _) = run.table(total, &["b"]).await;
    assert_eq!(latest, expected, "every click still in the log, once");
    let log = run.log("b");
    for (&partition, &n) in &lost {
        let to = ends[&partition];
        let from = to - n;
        let line = format!("offsets {from}..{to} were deleted");
        assert!(
            log.lines()
                .any(|l| l.contains(&line) && l.contains(&format!("partition={partition}"))),
            "the gap of partition {partition} is logged ({line}):\n{log}"
        );
    }
    let metrics = http_get(port, "/metrics").await;
    for (&partition, &n) in &lost {
        let series = format!(
            "input_records_lost_total{{topic=\"{}\",partition=\"{partition}\"}} {n}",
            run.topic
        );
        assert!(metrics.contains(&series), "{series} in:\n{metrics}");
    }
    stop(b, "b", &run);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The body of `GET path` from the worker's web server, once it answers.
async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = Deadline::new(format!("GET {path}"), Duration::from_secs(30));
    loop {
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            if s.write_all(req.as_bytes()).await.is_ok() {
                let mut out = String::new();
                if s.read_to_string(&mut out).await.is_ok() && out.starts_with("HTTP/1.1 200") {
                    return out;
                }
            }
        }
        deadline.check(path);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A changelog truncated below a store's checkpoint (records deleted while
/// the worker was away, as retention or an operator would): the store can
/// no longer be brought up to date, so, as Kafka Streams does with a
/// corrupted task, the worker says so, rebuilds the store from what the
/// changelog still holds, and recovery ends (no hang). Here the changelog
/// was emptied, so the counts start again from round three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changelog_truncated_below_the_checkpoint_rebuilds_the_store_and_recovery_ends() {
    let run = Run::new("pv-trunc", &[]).await;
    // Round one: counted by a, whose store keeps it (checkpointed at stop).
    let a = run.worker("a");
    let _ = run.clicks(0, 600, 30, Duration::ZERO).await;
    let _ = run.table(600, &["a"]).await;
    stop(a, "a", &run);
    // Round two: counted by c while a is away; then the whole changelog
    // is deleted, c's updates with it.
    let c = run.worker("c");
    let _ = run.clicks(0, 600, 30, Duration::ZERO).await;
    let _ = run.table(1200, &["c"]).await;
    stop(c, "c", &run);
    let admin = Admin::new(run.producer().await.client().clone());
    // Kafka refuses DeleteRecords on a compact-only topic; windowed
    // changelogs are compact,delete, and so is this one from now on.
    admin
        .alter_topic_config(&run.changelog(), &[("cleanup.policy", "compact,delete")])
        .await
        .expect("cleanup.policy");
    let ends = admin
        .list_offsets(&run.changelog(), &[], OffsetSpec::Latest, false)
        .await
        .expect("changelog ends");
    let deadline = Deadline::new("the changelog to be truncated", Duration::from_secs(30));
    // The brokers apply the new policy a moment after the controller.
    while let Err(e) = admin.delete_records(&run.changelog(), &ends).await {
        deadline.check(e.to_string());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // a comes back with its old store: its checkpoint is below the log
    // start. It must finish recovering, from the (empty) changelog, and
    // count round three.
    let a = run.worker("a");
    let expected = run.clicks(0, 300, 30, Duration::ZERO).await;
    let deadline = Deadline::new("a to count round three", Duration::from_secs(120));
    let latest = loop {
        let records = read_all_settled(&run.bootstrap, &run.changelog()).await;
        let mut latest: BTreeMap<String, u64> = BTreeMap::new();
        for (_, k, v) in records {
            latest.insert(k, v.parse().expect("a count"));
        }
        if latest.len() == expected.len() && latest.values().sum::<u64>() >= 300 {
            break latest;
        }
        if deadline.passed() {
            panic!("a counts {latest:?}\n{}", run.log("a"));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(
        latest, expected,
        "the store rebuilt from the changelog, then round three"
    );
    let log = std::fs::read_to_string(run.dir.path().join("a.log")).unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.contains("changelog records after the store's offset are gone")),
        "the changelog's gap is logged:\n{log}"
    );
    stop(a, "a", &run);
}

/// A small seeded generator for fault timings; the seed comes from `var`
/// or the clock, and is printed.
struct Lcg(u64);

impl Lcg {
    fn from_env(var: &str) -> Self {
        let seed = std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        println!("{var}={seed}");
        Self(seed | 1)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

/// A rebalance storm: for a minute (`PV_STORM_SECS`), every 2 to 4 s a
/// worker joins, leaves (SIGTERM) or dies (SIGKILL), between one and four
/// of them, while clicks stream in under exactly_once. The counts are
/// exact, and the changelog of each URL only rises.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_storm_under_exactly_once_counts_exactly() {
    let secs: u64 = std::env::var("PV_STORM_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let run = Run::new("pv-storm", &["processing.guarantee=exactly_once"]).await;
    let mut rng = Lcg::from_env("PV_STORM_SEED");
    let mut next = 0;
    let name = |next: &mut usize| {
        *next += 1;
        format!("w{next}")
    };
    let mut alive: Vec<(String, Child)> = Vec::new();
    for _ in 0..2 {
        let n = name(&mut next);
        alive.push((n.clone(), run.worker(&n)));
    }
    // About 1,000 clicks a second for the whole storm.
    let total = (secs as usize) * 1000;
    let sending = run.clicks_in_background(total, Duration::from_millis(1000));
    let until = std::time::Instant::now() + Duration::from_secs(secs);
    let mut events = Vec::new();
    while std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(2000 + rng.below(2000))).await;
        let choice = rng.below(3);
        if (choice == 0 && alive.len() < 4) || alive.len() == 1 {
            let n = name(&mut next);
            events.push(format!("+{n}"));
            alive.push((n.clone(), run.worker(&n)));
        } else {
            let (n, child) = alive.remove(rng.below(alive.len() as u64) as usize);
            if choice == 1 {
                events.push(format!("-{n}"));
                stop(child, &n, &run);
            } else {
                events.push(format!("!{n}"));
                kill(child);
            }
        }
    }
    println!("storm: {}", events.join(" "));
    let expected = sending.await.expect("sender");
    let names: Vec<String> = alive.iter().map(|(n, _)| n.clone()).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let (latest, history) = run.table(total as u64, &refs).await;
    assert_exact(&expected, &latest, &history, run.cached());
    for (n, child) in alive {
        stop(child, &n, &run);
    }
}

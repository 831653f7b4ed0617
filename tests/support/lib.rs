//! Helpers shared by Faustus's cross-crate integration tests and benchmarks.
#![deny(missing_docs)]

use std::time::{Duration, Instant};

mod page_views;
pub use page_views::PageViewRun;

use faustus_wire::consumer::{Consumer, ConsumerConfig, Offset};
use faustus_wire::{Admin, OffsetSpec, Properties};

/// Polls `check` every `every` until it returns `Some`, or fails with `what`
/// once `within` has passed. Tests wait on conditions with this, not sleeps.
pub fn wait_until<T>(
    what: &str,
    within: Duration,
    every: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {within:?} waiting for {what}"));
        }
        std::thread::sleep(every);
    }
}

pub use faustus_testcontainers::unique_name as unique_topic;

/// Sends the client's `tracing` output to the test's stderr, filtered by
/// `RUST_LOG` (nothing when it is unset). Safe to call from every test.
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_none() {
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A time limit for a loop that waits on the broker: tests call
/// [`check`](Deadline::check) each round, so a stuck wait fails with what
/// it was waiting for instead of hanging the suite.
#[derive(Debug, Clone)]
pub struct Deadline {
    what: String,
    within: Duration,
    at: Instant,
}

impl Deadline {
    /// A limit of `within` from now for `what`.
    pub fn new(what: impl Into<String>, within: Duration) -> Self {
        Self {
            what: what.into(),
            within,
            at: Instant::now() + within,
        }
    }

    /// Panics, naming the wait and `progress`, once the limit has passed.
    pub fn check(&self, progress: impl std::fmt::Debug) {
        if Instant::now() >= self.at {
            panic!(
                "timed out after {:?} waiting for {} (progress: {progress:?})",
                self.within, self.what
            );
        }
    }

    /// Whether the limit has passed.
    pub fn passed(&self) -> bool {
        Instant::now() >= self.at
    }
}

/// A record timestamp `ago` before now, in ms since the epoch. Tests stamp
/// records with recent times: the broker deletes data older than
/// `retention.ms` (7 days by default) at any moment, even mid-test.
pub fn millis_ago(ago: Duration) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    now - ago.as_millis() as i64
}

/// Reads every partition of `topic` up to its current end (the last stable
/// offset under read_committed), as `(partition, key, value)` in
/// per-partition order.
pub async fn read_all(
    bootstrap: &str,
    topic: &str,
    read_committed: bool,
) -> Vec<(i32, String, String)> {
    read_records(bootstrap, topic, read_committed)
        .await
        .into_iter()
        .map(|r| (r.partition, r.key, r.value))
        .collect()
}

/// The path of example `name`'s binary: built with the tests (`cargo test`
/// builds examples), or built here (dev profile) when a filtered run
/// skipped it.
pub fn example_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target profile directory");
    let bin = dir.join("examples").join(name);
    if !bin.exists() {
        build_example(name, false);
    }
    bin
}

/// Builds example `name` (in release mode with `release`) and returns its
/// binary's path. For benchmarks.
pub fn build_example(name: &str, release: bool) -> std::path::PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut args = vec!["build", "--example", name];
    if release {
        args.push("--release");
    }
    let status = std::process::Command::new(cargo)
        .args(&args)
        .status()
        .expect("cargo build");
    assert!(status.success(), "building example {name} failed");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    target
        .join(if release { "release" } else { "debug" })
        .join("examples")
        .join(name)
}

/// Creates `topic` with `partitions` partitions (replication 1) and
/// returns an admin client on the cluster.
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> Admin {
    let props = Properties::new().set("bootstrap.servers", bootstrap);
    let client = faustus_wire::Client::connect(
        faustus_wire::ClientConfig::from_properties(&props).expect("config"),
    )
    .await
    .expect("client");
    let admin = Admin::new(client);
    admin
        .create_topic(faustus_wire::NewTopic::new(topic, partitions, 1), false)
        .await
        .expect("topic");
    admin
}

/// A consumer with `props`, every partition of `topic` assigned from the
/// beginning.
pub async fn consumer_from_beginning(props: &Properties, topic: &str) -> Consumer {
    let mut consumer = Consumer::connect(ConsumerConfig::from_properties(props).expect("config"))
        .await
        .expect("consumer");
    consumer
        .assign(topic, &[], Offset::Beginning)
        .await
        .expect("assign");
    consumer
}

/// Creates a topic named after `prefix` with `partitions` partitions
/// (replication 1) and fills it with `records` records: 8-digit keys and
/// `value_len`-byte values. Returns the topic's name. For benchmarks.
pub async fn filled_topic(
    bootstrap: &str,
    prefix: &str,
    partitions: i32,
    records: usize,
    value_len: usize,
) -> String {
    use faustus_wire::producer::{Producer, ProducerConfig, ProducerRecord};
    let topic = unique_topic(prefix);
    let props = Properties::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("batch.size", "262144");
    let producer = Producer::connect(ProducerConfig::from_properties(&props).expect("config"))
        .await
        .expect("producer");
    Admin::new(producer.client().clone())
        .create_topic(faustus_wire::NewTopic::new(&topic, partitions, 1), false)
        .await
        .expect("topic");
    let value = vec![b'v'; value_len];
    for i in 0..records {
        let _ = producer
            .send(
                ProducerRecord::new(&topic)
                    .key(format!("{i:08}"))
                    .value(value.clone()),
            )
            .await
            .expect("queued");
    }
    producer.close().await.expect("close");
    topic
}

/// Waits until no transaction is open on any partition of `topic` (the
/// last stable offset has caught up with the high watermark: the
/// coordinator writes commit and abort markers after EndTxn returns), then
/// reads it all under read_committed. Fails after a minute if a transaction
/// stays open.
pub async fn read_all_settled(bootstrap: &str, topic: &str) -> Vec<(i32, String, String)> {
    let client =
        faustus_wire::Client::connect(faustus_wire::ClientConfig::new(bootstrap).expect("config"))
            .await
            .expect("client");
    let admin = Admin::new(client);
    let deadline = Deadline::new(
        format!("the transactions on {topic} to settle"),
        Duration::from_secs(60),
    );
    loop {
        let lso = admin
            .list_offsets(topic, &[], OffsetSpec::Latest, true)
            .await
            .expect("last stable offsets");
        let hw = admin
            .list_offsets(topic, &[], OffsetSpec::Latest, false)
            .await
            .expect("high watermarks");
        if lso == hw {
            break;
        }
        deadline.check((&lso, &hw));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    read_all(bootstrap, topic, true).await
}

/// A record with its headers, as [`read_with_headers`] returns it.
#[derive(Debug, Clone)]
pub struct FullRecord {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key (lossy UTF-8).
    pub key: String,
    /// Value (lossy UTF-8).
    pub value: String,
    /// Headers (values lossy UTF-8).
    pub headers: Vec<(String, String)>,
    /// Timestamp (ms).
    pub timestamp: i64,
    /// Whether the value is null (a tombstone).
    pub tombstone: bool,
}

impl FullRecord {
    /// The first header named `key`.
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Every record of `topic` up to its end offsets, with headers.
pub async fn read_with_headers(bootstrap: &str, topic: &str) -> Vec<FullRecord> {
    read_records(bootstrap, topic, false).await
}

/// Every record of `topic` up to its end offsets (the last stable offsets
/// under read_committed), with headers, timestamps and tombstones.
pub async fn read_records(bootstrap: &str, topic: &str, read_committed: bool) -> Vec<FullRecord> {
    read_records_with(
        Properties::new().set("bootstrap.servers", bootstrap),
        topic,
        read_committed,
    )
    .await
}

/// [`read_records`] with the client settings in `props` (a secured
/// cluster's `security.protocol`, `sasl.*`, `ssl.*`).
pub async fn read_records_with(
    props: Properties,
    topic: &str,
    read_committed: bool,
) -> Vec<FullRecord> {
    let props = props.set(
        "isolation.level",
        if read_committed {
            "read_committed"
        } else {
            "read_uncommitted"
        },
    );
    let mut c = Consumer::connect(ConsumerConfig::from_properties(&props).expect("config"))
        .await
        .expect("consumer");
    c.assign(topic, &[], Offset::Beginning)
        .await
        .expect("assign");
    let ends = Admin::new(c.client().clone())
        .list_offsets(topic, &[], OffsetSpec::Latest, read_committed)
        .await
        .expect("end offsets");
    let mut out = Vec::new();
    let deadline = Deadline::new("the end offsets", Duration::from_secs(120));
    while !c
        .assignment()
        .iter()
        .all(|tp| c.position(tp).unwrap_or(-1) >= ends[&tp.partition])
    {
        deadline.check(out.len());
        for part in c.poll().await.expect("poll") {
            for r in part.records() {
                let r = r.expect("record");
                let lossy =
                    |b: Option<&[u8]>| String::from_utf8_lossy(b.unwrap_or_default()).into_owned();
                out.push(FullRecord {
                    partition: part.partition(),
                    offset: r.offset,
                    key: lossy(r.key()),
                    value: lossy(r.value()),
                    headers: r.headers().map(|(k, v)| (k.to_owned(), lossy(v))).collect(),
                    timestamp: r.timestamp,
                    tombstone: r.value().is_none(),
                });
            }
        }
    }
    out
}

/// Waits until `group` has committed offsets adding up to `records` (inputs
/// starting at offset 0), for benchmarks that time a consumer process.
pub async fn await_group_progress(admin: &Admin, group: &str, records: usize, within: Duration) {
    let deadline = Deadline::new(format!("group {group} to commit {records} records"), within);
    loop {
        let done: i64 = admin
            .group_offsets(group)
            .await
            .map(|o| o.values().filter(|v| **v > 0).sum())
            .unwrap_or(0);
        if done >= records as i64 {
            return;
        }
        deadline.check(done);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A directory under the system temp dir for one test's state (RocksDB
/// stores, worker logs). Removed when dropped, unless the test is failing:
/// then it stays for diagnosis and its path is printed.
#[derive(Debug)]
pub struct ScratchDir(std::path::PathBuf);

impl ScratchDir {
    /// A fresh, empty `faustus-<name>` directory (not yet created on disk).
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("faustus-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }

    /// Its path.
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept for diagnosis: {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A number from the environment variable `key`, or `default` (benchmark
/// settings such as record counts).
pub fn env_or(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The peak resident memory of process `pid` (its `VmHWM`), in MB; NaN when
/// it cannot be read.
pub fn peak_rss_mb(pid: u32) -> f64 {
    status_mb(pid, "VmHWM:")
}

/// The current resident memory of process `pid` (its `VmRSS`), in MB; NaN
/// when it cannot be read.
pub fn rss_mb(pid: u32) -> f64 {
    status_mb(pid, "VmRSS:")
}

/// A kB field of `/proc/<pid>/status`, in MB.
fn status_mb(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Stops a worker process as an operator would (SIGTERM: it commits and
/// leaves its group) and waits for it to exit.
pub fn stop_worker(mut child: std::process::Child) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Deadline::new("the worker to exit", Duration::from_secs(60));
    while child.try_wait().expect("wait").is_none() {
        deadline.check("stopping");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last `n` lines of a log, for a failing test's message.
pub fn log_tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().rev().take(n).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}

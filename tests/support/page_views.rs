//! The page-view counter (`examples/page_views`) as the fault and soak
//! tests run it: a clicks topic on a harness cluster, exactly-once workers
//! started as processes with their own state directories and logs, a click
//! sender, and the check that the table counts every click exactly once.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use faustus_wire::producer::{Producer, ProducerConfig, ProducerRecord};
use faustus_wire::{Admin, Client, ClientConfig, NewTopic, Properties};

use crate::{read_all_settled, unique_topic, Deadline, ScratchDir};

/// One page-view app on a cluster: its clicks topic (6 partitions, every
/// broker a replica) and a scratch directory holding each worker's state
/// and log.
#[derive(Debug)]
pub struct PageViewRun {
    /// The cluster's bootstrap servers.
    pub bootstrap: String,
    /// The app id (also the consumer group).
    pub app: String,
    /// The clicks topic.
    pub topic: String,
    /// Worker state directories and logs.
    pub dir: ScratchDir,
    replicas: i16,
    binary: std::path::PathBuf,
    settings: Vec<String>,
}

impl PageViewRun {
    /// Creates the clicks topic on the cluster at `bootstrap` with
    /// `replicas` replicas; workers run the dev-profile example.
    pub async fn new(bootstrap: &str, replicas: i16, prefix: &str) -> Self {
        let app = unique_topic(prefix);
        let topic = format!("{app}-clicks");
        let client = Client::connect(ClientConfig::new(bootstrap).expect("config"))
            .await
            .expect("client");
        Admin::new(client)
            .create_topic(NewTopic::new(&topic, 6, replicas), false)
            .await
            .expect("clicks topic");
        let dir = ScratchDir::new(&app);
        std::fs::create_dir_all(dir.path()).expect("scratch dir");
        Self {
            bootstrap: bootstrap.to_owned(),
            app,
            topic,
            dir,
            replicas,
            binary: crate::example_binary("page_views"),
            settings: Vec::new(),
        }
    }

    /// Runs the workers from `binary` instead (a release build, for the
    /// soak's memory figures).
    pub fn with_binary(mut self, binary: std::path::PathBuf) -> Self {
        self.binary = binary;
        self
    }

    /// Adds `key=value` settings every worker gets after the defaults
    /// (they win).
    pub fn with_settings(mut self, settings: &[&str]) -> Self {
        self.settings
            .extend(settings.iter().map(|s| (*s).to_owned()));
        self
    }

    /// Starts worker `name` under exactly_once: its own state directory,
    /// a 6 s session, commits every 200 ms, logging to `<name>.log`
    /// (appended, so a restarted worker's log follows its predecessor's).
    pub fn worker(&self, name: &str) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .expect("log");
        Command::new(&self.binary)
            .env("PAGE_VIEWS_APP", &self.app)
            .env("PAGE_VIEWS_TOPIC", &self.topic)
            .env("KAFKA_BOOTSTRAP", &self.bootstrap)
            .args([
                "-X",
                &format!("state.dir={}", self.dir.path().join(name).display()),
            ])
            .args(["-X", "processing.guarantee=exactly_once"])
            .args(["-X", &format!("topic.replication.factor={}", self.replicas)])
            .args([
                "-X",
                "session.timeout.ms=6000",
                "-X",
                "heartbeat.interval.ms=1000",
            ])
            .args(["-X", "commit.interval.ms=200"])
            .args(self.settings.iter().flat_map(|s| ["-X", s.as_str()]))
            .args(["worker", "-l", "info"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("worker starts")
    }

    /// The last 30 lines of worker `name`'s log.
    pub fn log(&self, name: &str) -> String {
        let s = std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
            .unwrap_or_default();
        crate::log_tail(&s, 30)
    }

    /// Sends `n` clicks over 100 URLs, about `per_second` a second, with
    /// acks=all and idempotence (the sender rides out the faults too).
    /// Resolves to the clicks per URL once every one is delivered.
    pub fn clicks(
        &self,
        n: usize,
        per_second: usize,
    ) -> tokio::task::JoinHandle<BTreeMap<String, u64>> {
        self.clicks_until(n, per_second, Arc::new(AtomicBool::new(false)))
    }

    /// Like [`clicks`](Self::clicks), stopping early once `stop` is set.
    /// Deliveries are awaited every 10,000 clicks, so a long run holds
    /// little.
    pub fn clicks_until(
        &self,
        n: usize,
        per_second: usize,
        stop: Arc<AtomicBool>,
    ) -> tokio::task::JoinHandle<BTreeMap<String, u64>> {
        let topic = self.topic.clone();
        let bootstrap = self.bootstrap.clone();
        tokio::spawn(async move {
            let props = Properties::new()
                .set("bootstrap.servers", bootstrap)
                .set("acks", "all")
                .set("delivery.timeout.ms", "300000");
            let p = Producer::connect(ProducerConfig::from_properties(&props).expect("config"))
                .await
                .expect("producer");
            let mut expected: BTreeMap<String, u64> = BTreeMap::new();
            let mut pending = Vec::new();
            for i in 0..n {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let url = format!("/page/{}", i % 100);
                *expected.entry(url.clone()).or_default() += 1;
                pending.push(
                    p.send(ProducerRecord::new(&topic).key(url).value("1"))
                        .await
                        .expect("queued"),
                );
                if i % 100 == 99 {
                    tokio::time::sleep(Duration::from_millis((100_000 / per_second) as u64)).await;
                }
                if pending.len() >= 10_000 {
                    for d in pending.drain(..) {
                        d.await.expect("every click delivered");
                    }
                }
            }
            for d in pending {
                d.await.expect("every click delivered");
            }
            p.close().await.expect("close");
            expected
        })
    }

    /// Waits (up to `within`) until the committed changelog counts add up
    /// to `expected`'s total, then asserts they equal it; on a timeout,
    /// fails with the tails of the `workers`' logs.
    pub async fn await_counts(
        &self,
        expected: &BTreeMap<String, u64>,
        workers: &[&str],
        within: Duration,
    ) {
        let changelog = format!("{}-click_counts-changelog", self.app);
        let total: u64 = expected.values().sum();
        let deadline = Deadline::new(format!("the table to count {total} clicks"), within);
        loop {
            let mut latest: BTreeMap<String, u64> = BTreeMap::new();
            for (_, k, v) in read_all_settled(&self.bootstrap, &changelog).await {
                latest.insert(k, v.parse().expect("a count"));
            }
            let sum: u64 = latest.values().sum();
            if sum >= total {
                assert_eq!(&latest, expected, "every click counted exactly once");
                return;
            }
            if deadline.passed() {
                let logs: Vec<String> = workers
                    .iter()
                    .map(|w| format!("--- {w}\n{}", self.log(w)))
                    .collect();
                panic!("the table counts {sum} of {total}\n{}", logs.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

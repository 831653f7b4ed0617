//! The wire client through the harness's fault proxy: clients stay behind
//! it, a request slower than `request.timeout.ms` fails with a typed
//! timeout and the client recovers, and cut connections (at any point, and
//! just after a Produce request reached the broker) lose and duplicate
//! nothing.

use std::time::Duration;

use faustus_suite::{read_all_settled, unique_topic, wait_until};
use faustus_testcontainers::{shared, Cut, FaultProxy};
use faustus_wire::producer::{Producer, ProducerConfig, ProducerRecord};
use faustus_wire::{Admin, Client, ClientConfig, Error, NewTopic, Properties};

/// The proxy binds node 1's advertised port: one test at a time.
static PROXY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PRODUCE: i16 = 0;
const FETCH: i16 = 1;

fn proxy() -> FaultProxy {
    let kafka = shared().expect("kafka");
    // A proxy dropped by the previous test may still be closing its port.
    wait_until(
        "the fault proxy's port",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || FaultProxy::start(kafka, 1).ok(),
    )
    .expect("fault proxy")
}

async fn topic(partitions: i32) -> String {
    let kafka = shared().expect("kafka");
    let t = unique_topic("proxy");
    let client = Client::connect(ClientConfig::new(kafka.bootstrap()).expect("config"))
        .await
        .expect("client");
    Admin::new(client)
        .create_topic(NewTopic::new(&t, partitions, 1), false)
        .await
        .expect("topic");
    t
}

async fn producer(bootstrap: &str, extra: &[(&str, &str)]) -> Producer {
    let mut props = Properties::new().set("bootstrap.servers", bootstrap);
    for (k, v) in extra {
        props.insert(*k, *v);
    }
    Producer::connect(ProducerConfig::from_properties(&props).expect("config"))
        .await
        .expect("connect")
}

/// Every value of `topic`, read directly from the broker.
async fn values(topic: &str) -> Vec<String> {
    let kafka = shared().expect("kafka");
    read_all_settled(kafka.bootstrap(), topic)
        .await
        .into_iter()
        .map(|(_, _, v)| v)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_bootstrap_through_the_proxy_stay_behind_it() {
    let _one = PROXY.lock().await;
    let proxy = proxy();
    let t = topic(1).await;
    let p = producer(&proxy.bootstrap(), &[("linger.ms", "1")]).await;
    for i in 0..500 {
        p.send(ProducerRecord::new(&t).value(format!("v{i}")))
            .await
            .expect("queued");
    }
    p.flush().await.expect("flush");
    assert!(
        proxy.requests(PRODUCE) > 0,
        "the records went around the proxy"
    );
    let got = faustus_suite::read_all(&proxy.bootstrap(), &t, false).await;
    assert_eq!(got.len(), 500);
    assert!(
        proxy.requests(FETCH) > 0,
        "the fetches went around the proxy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_slower_than_its_timeout_fails_typed_and_the_client_recovers() {
    let _one = PROXY.lock().await;
    let proxy = proxy();
    let t = topic(1).await;
    let p = producer(
        &proxy.bootstrap(),
        &[
            ("request.timeout.ms", "1000"),
            ("delivery.timeout.ms", "2500"),
            ("linger.ms", "0"),
        ],
    )
    .await;
    proxy.set_latency(Duration::from_secs(4));
    let late = p
        .send(ProducerRecord::new(&t).value("late"))
        .await
        .expect("queued");
    let err = late.await.expect_err("a delivery past delivery.timeout.ms");
    assert!(
        matches!(err, Error::Timeout { .. }),
        "not a timeout: {err:?}"
    );
    proxy.set_latency(Duration::ZERO);
    let meta = p
        .send(ProducerRecord::new(&t).value("on time"))
        .await
        .expect("queued")
        .await
        .expect("delivered once the latency is gone");
    assert_eq!(meta.partition, 0);
    let got = values(&t).await;
    assert!(got.contains(&"on time".to_owned()), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_cut_while_producing_lose_and_duplicate_nothing() {
    let _one = PROXY.lock().await;
    let proxy = proxy();
    let t = topic(1).await;
    let p = producer(&proxy.bootstrap(), &[("linger.ms", "2"), ("acks", "all")]).await;
    let n = 20_000;
    let mut pending = Vec::with_capacity(n);
    for i in 0..n {
        pending.push(
            p.send(ProducerRecord::new(&t).value(format!("{i:06}")))
                .await
                .expect("queued"),
        );
        if i % 5_000 == 4_999 {
            proxy.cut_all();
        }
    }
    for d in pending {
        d.await.expect("delivered despite the cuts");
    }
    assert!(proxy.accepted() > 1, "no connection was ever reopened");
    let want: Vec<String> = (0..n).map(|i| format!("{i:06}")).collect();
    assert_eq!(values(&t).await, want, "lost, duplicated or reordered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_produce_answer_lost_after_the_broker_wrote_it_is_not_written_twice() {
    let _one = PROXY.lock().await;
    let proxy = proxy();
    let t = topic(1).await;
    let p = producer(&proxy.bootstrap(), &[("linger.ms", "0")]).await;
    p.send(ProducerRecord::new(&t).value("first"))
        .await
        .expect("queued")
        .await
        .expect("delivered");
    let before = proxy.requests(PRODUCE);
    // The next Produce request reaches the broker; its answer never comes
    // back, so the producer cannot tell whether it was written and resends.
    proxy.cut_at(PRODUCE, Cut::AfterRequest);
    let meta = p
        .send(ProducerRecord::new(&t).value("second"))
        .await
        .expect("queued")
        .await
        .expect("delivered after the resend");
    assert!(!proxy.pending(), "the cut never happened");
    assert!(
        proxy.requests(PRODUCE) >= before + 2,
        "the request was not sent again"
    );
    // The broker answers the resend with the first write's offset, or -1
    // when it no longer has it; a second write would be at 2.
    assert!(
        meta.offset == 1 || meta.offset == -1,
        "the resend was written again, at {}",
        meta.offset
    );
    assert_eq!(values(&t).await, ["first", "second"]);
}

/// A consumer through the proxy reading `topic` (one partition) from the
/// start until `want` records, or the first error.
async fn consume_through(
    proxy: &FaultProxy,
    topic: &str,
    want: usize,
) -> (Vec<String>, Option<Error>) {
    use faustus_wire::consumer::{Consumer, ConsumerConfig, Offset};
    let props = Properties::new().set("bootstrap.servers", proxy.bootstrap().as_str());
    let mut c = Consumer::connect(ConsumerConfig::from_properties(&props).expect("config"))
        .await
        .expect("consumer");
    c.assign(topic, &[0], Offset::Beginning)
        .await
        .expect("assign");
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got.len() < want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "read {} of {want} records",
            got.len()
        );
        let Ok(polled) = tokio::time::timeout(Duration::from_millis(500), c.poll()).await else {
            continue;
        };
        match polled {
            Ok(fetched) => {
                for f in &fetched {
                    for r in f.records() {
                        let r = r.expect("a record that passed its CRC");
                        got.push(
                            String::from_utf8_lossy(r.value().unwrap_or_default()).into_owned(),
                        );
                    }
                }
            }
            Err(e) => return (got, Some(e)),
        }
    }
    (got, None)
}

/// Fills a one-partition topic with `n` records of about 100 bytes.
async fn filled(n: usize) -> String {
    let kafka = shared().expect("kafka");
    let t = topic(1).await;
    let p = producer(kafka.bootstrap(), &[("linger.ms", "5")]).await;
    for i in 0..n {
        p.send(ProducerRecord::new(&t).value(format!("{i:06}-{}", "x".repeat(90))))
            .await
            .expect("queued");
    }
    p.flush().await.expect("flush");
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_damaged_on_the_way_is_fetched_again() {
    let _one = PROXY.lock().await;
    let n = 2_000;
    let t = filled(n).await;
    let proxy = proxy();
    // Fetch responses end with three bytes of tagged fields (partition,
    // topic, response); the fourth from the end is the last partition's
    // last record byte, which its batch's CRC covers.
    proxy.corrupt_responses(FETCH, 1_000, 4, 2);
    let (got, err) = consume_through(&proxy, &t, n).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(proxy.corrupted(), 2, "the damage never happened");
    let want: Vec<String> = (0..n)
        .map(|i| format!("{i:06}-{}", "x".repeat(90)))
        .collect();
    assert_eq!(got, want, "a record was lost, duplicated or garbled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_damaged_on_every_fetch_stops_its_partition_with_a_typed_error() {
    let _one = PROXY.lock().await;
    let n = 2_000;
    let t = filled(n).await;
    let proxy = proxy();
    proxy.corrupt_responses(FETCH, 1_000, 4, 1_000);
    let (got, err) = consume_through(&proxy, &t, n).await;
    let err = err.expect("the damaged batch was never reported");
    match &err {
        Error::Record {
            topic, partition, ..
        } => {
            assert_eq!((topic.as_str(), *partition), (t.as_str(), 0), "{err}");
        }
        other => panic!("not a record error: {other:?}"),
    }
    assert!(
        err.to_string().contains(&t),
        "the error names no topic: {err}"
    );
    // Fetched again before giving up (the first fetch and three retries).
    assert!(
        proxy.corrupted() >= 4,
        "gave up after {} damaged fetches",
        proxy.corrupted()
    );
    // Whatever came before the damaged batch is intact and in order.
    let want: Vec<String> = (0..got.len())
        .map(|i| format!("{i:06}-{}", "x".repeat(90)))
        .collect();
    assert_eq!(got, want);
}

const END_TXN: i16 = 26;

async fn txn_producer_through(
    proxy: &FaultProxy,
    id: &str,
) -> faustus_wire::producer::TransactionalProducer {
    let props = Properties::new()
        .set("bootstrap.servers", proxy.bootstrap().as_str())
        .set("transactional.id", id);
    let p = faustus_wire::producer::TransactionalProducer::connect(
        ProducerConfig::from_properties(&props).expect("config"),
    )
    .await
    .expect("producer");
    p.init_transactions().await.expect("init_transactions");
    p
}

/// One transaction of `n` records through the proxy, ended by `commit`
/// (else abort) while the connection carrying EndTxn is cut after the
/// coordinator got it; then one more committed transaction.
async fn ambiguous_end(commit: bool) -> (String, Vec<String>) {
    let proxy = proxy();
    let t = topic(3).await;
    let p = txn_producer_through(&proxy, &unique_topic("proxy-txn")).await;
    let send = |prefix: &'static str| {
        let (p, t) = (&p, &t);
        async move {
            let mut pending = Vec::new();
            for i in 0..300 {
                pending.push(
                    p.send(
                        ProducerRecord::new(t)
                            .key(format!("k{i}"))
                            .value(format!("{prefix}-{i}")),
                    )
                    .await
                    .expect("send"),
                );
            }
            for d in pending {
                d.await.expect("delivered");
            }
        }
    };
    p.begin().await.expect("begin");
    send("first").await;
    let ends = proxy.requests(END_TXN);
    proxy.cut_at(END_TXN, Cut::AfterRequest);
    if commit {
        p.commit().await.expect("the commit's outcome recovered");
    } else {
        p.abort().await.expect("the abort's outcome recovered");
    }
    assert!(!proxy.pending(), "EndTxn was never cut");
    assert!(
        proxy.requests(END_TXN) >= ends + 2,
        "EndTxn was not sent again"
    );
    p.begin().await.expect("the next transaction begins");
    send("second").await;
    p.commit().await.expect("commit");
    let mut got = values(&t).await;
    got.sort();
    (t, got)
}

fn expected(prefixes: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = prefixes
        .iter()
        .flat_map(|p| (0..300).map(move |i| format!("{p}-{i}")))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_answer_is_lost_is_recovered_as_committed() {
    let _one = PROXY.lock().await;
    let (_, got) = ambiguous_end(true).await;
    assert_eq!(got, expected(&["first", "second"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_whose_answer_is_lost_is_recovered_as_aborted() {
    let _one = PROXY.lock().await;
    let (_, got) = ambiguous_end(false).await;
    assert_eq!(got, expected(&["second"]));
}

/// A page_views worker (`examples/page_views`) whose only way to Kafka is
/// the proxy, logging to `log`.
fn worker_through(
    proxy: &FaultProxy,
    app: &str,
    topic: &str,
    dir: &std::path::Path,
    extra: &[&str],
) -> std::process::Child {
    let log = std::fs::File::create(dir.join("worker.log")).expect("log file");
    let mut cmd = std::process::Command::new(faustus_suite::example_binary("page_views"));
    cmd.env("PAGE_VIEWS_APP", app)
        .env("PAGE_VIEWS_TOPIC", topic)
        .env("KAFKA_BOOTSTRAP", proxy.bootstrap())
        .args(["-X", &format!("state.dir={}", dir.join("state").display())]);
    for e in extra {
        cmd.args(["-X", e]);
    }
    cmd.args(["worker", "-l", "info"])
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("worker starts")
}

/// A page_views worker counting clicks behind the proxy: clicks go
/// straight to the broker, the worker reaches Kafka only through the proxy,
/// and its changelog (read read_committed from the broker) shows its
/// counts.
struct Counting {
    app: String,
    clicks: String,
    dir: faustus_suite::ScratchDir,
    worker: std::process::Child,
    producer: Producer,
}

impl Counting {
    async fn start(proxy: &FaultProxy, prefix: &str, extra: &[&str]) -> Self {
        let kafka = shared().expect("kafka");
        let app = unique_topic(prefix);
        let clicks = format!("{app}-clicks");
        let client = Client::connect(ClientConfig::new(kafka.bootstrap()).expect("config"))
            .await
            .expect("client");
        Admin::new(client)
            .create_topic(NewTopic::new(&clicks, 2, 1), false)
            .await
            .expect("clicks topic");
        let dir = faustus_suite::ScratchDir::new(&app);
        std::fs::create_dir_all(dir.path()).expect("scratch dir");
        let worker = worker_through(proxy, &app, &clicks, dir.path(), extra);
        let producer = producer(kafka.bootstrap(), &[]).await;
        Counting {
            app,
            clicks,
            dir,
            worker,
            producer,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("worker.log")).unwrap_or_default()
    }

    /// Clicks `from..from + n`, click `i` on `/page/{i % 10}`.
    async fn send(&self, from: usize, n: usize) {
        for i in from..from + n {
            self.producer
                .send(
                    ProducerRecord::new(&self.clicks)
                        .key(format!("/page/{}", i % 10))
                        .value("1"),
                )
                .await
                .expect("queued");
        }
        self.producer.flush().await.expect("flush");
    }

    /// Each URL's latest count in the changelog.
    async fn counted(&self) -> std::collections::BTreeMap<String, u64> {
        let kafka = shared().expect("kafka");
        let changelog = format!("{}-click_counts-changelog", self.app);
        let mut latest = std::collections::BTreeMap::new();
        for (_, k, v) in read_all_settled(kafka.bootstrap(), &changelog).await {
            latest.insert(k, v.parse::<u64>().unwrap_or(0));
        }
        latest
    }

    /// Waits until the counts add up to `total`.
    async fn wait_for(&self, total: u64, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let sum: u64 = self.counted().await.values().sum();
            if sum >= total {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the worker counted {sum} of {total} clicks\n{}",
                faustus_suite::log_tail(&self.log(), 40)
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Every URL's count is exactly its clicks among the first `sent`.
    async fn assert_exact(&self, sent: usize) {
        self.wait_for(sent as u64, Duration::from_secs(180)).await;
        let latest = self.counted().await;
        assert_eq!(latest.len(), 10.min(sent), "{latest:?}");
        for (url, n) in &latest {
            let page: usize = url.trim_start_matches("/page/").parse().expect("a page");
            let want = (0..sent).filter(|i| i % 10 == page).count() as u64;
            assert_eq!(
                *n,
                want,
                "{url}\n{}",
                faustus_suite::log_tail(&self.log(), 40)
            );
        }
    }
}

impl Drop for Counting {
    fn drop(&mut self) {
        let _ = self.worker.kill();
        let _ = self.worker.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_the_cluster_is_unreachable_stops_within_the_shutdown_timeout() {
    let _one = PROXY.lock().await;
    let proxy = proxy();
    let mut pv = Counting::start(
        &proxy,
        "proxy-pv",
        // Commits far apart and no table cache: what the worker counts
        // reaches the changelog at once, and its offsets wait for a commit,
        // so a stop must commit.
        &[
            "shutdown.timeout.ms=4000",
            "commit.interval.ms=600000",
            "cache.max.bytes=0",
        ],
    )
    .await;
    pv.send(0, 200).await;
    pv.wait_for(200, Duration::from_secs(120)).await;
    // The cluster goes away, more clicks arrive for when it is back, and
    // the operator asks the worker to stop.
    proxy.set_refusing(true);
    let started = std::time::Instant::now();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pv.worker.id().to_string()])
        .status();
    let status = loop {
        if let Some(status) = pv.worker.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            panic!(
                "SIGTERM ignored for 30 s (shutdown.timeout.ms=4000)\n{}",
                pv.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = started.elapsed();
    let log = pv.log();
    assert!(
        took < Duration::from_secs(15),
        "stopped after {took:?} (shutdown.timeout.ms=4000)\n{log}"
    );
    // Its offsets were never committed (commit.interval.ms is ten
    // minutes), so the stop had to commit and could not.
    assert!(!status.success(), "exited 0 without committing\n{log}");
    assert!(
        log.contains("shutdown did not finish within shutdown.timeout.ms")
            && log.contains("still committing"),
        "a failed stop that does not say what it could not do\n{log}"
    );
}

/// Seconds the cluster stays away in the outage test (the 70 by
/// default: past the group's session timeout and the transaction timeout).
fn outage() -> Duration {
    Duration::from_secs(faustus_suite::env_or("FAUSTUS_OUTAGE_SECS", 70) as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_waits_out_a_cluster_outage_saying_so_and_resumes_by_itself() {
    let _one = PROXY.lock().await;
    let proxy = proxy();
    let pv = Counting::start(
        &proxy,
        "proxy-outage",
        &[
            "processing.guarantee=exactly_once",
            "commit.interval.ms=200",
        ],
    )
    .await;
    pv.send(0, 500).await;
    pv.wait_for(500, Duration::from_secs(120)).await;
    // The cluster goes away; clicks keep coming (straight to the broker,
    // which the worker cannot reach).
    let before = pv.log().len();
    proxy.set_refusing(true);
    let away = outage();
    let gone = std::time::Instant::now();
    let mut sent = 500;
    while gone.elapsed() < away {
        pv.send(sent, 100).await;
        sent += 100;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let during = pv.log()[before..].to_owned();
    proxy.set_refusing(false);
    // It resumes by itself, and counts every click exactly once.
    pv.assert_exact(sent).await;
    // While the cluster was away it kept saying so: a warning at least
    // every 15 s, naming what it waits for.
    let warnings: Vec<&str> = during
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("unreachable"))
        .collect();
    let need = (away.as_secs() / 15).max(1) as usize;
    assert!(
        warnings.len() >= need,
        "{} warnings in {away:?} of outage (want {need}+)\n{during}",
        warnings.len()
    );
}

/// The engine's side of an ambiguous commit (scenario 7): an exactly-once
/// worker's EndTxn reaches the coordinator and the connection is cut
/// before the answer, five times while clicks stream in. The worker's
/// producer sends EndTxn again and learns the outcome the coordinator
/// already decided; the worker neither dies nor counts anything twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_commit_answers_are_lost_counts_exactly() {
    let _one = PROXY.lock().await;
    let proxy = proxy();
    let mut pv = Counting::start(
        &proxy,
        "proxy-endtxn",
        &[
            "processing.guarantee=exactly_once",
            "commit.interval.ms=200",
        ],
    )
    .await;
    pv.send(0, 300).await;
    pv.wait_for(300, Duration::from_secs(120)).await;
    let mut sent = 300;
    for round in 0..5 {
        let ends = proxy.requests(END_TXN);
        proxy.cut_at(END_TXN, Cut::AfterRequest);
        pv.send(sent, 200).await;
        sent += 200;
        wait_until(
            "an EndTxn cut and sent again",
            Duration::from_secs(60),
            Duration::from_millis(50),
            || (!proxy.pending() && proxy.requests(END_TXN) >= ends + 2).then_some(()),
        )
        .unwrap_or_else(|e| {
            panic!(
                "round {round}: {e}\n{}",
                faustus_suite::log_tail(&pv.log(), 40)
            )
        });
        assert!(
            pv.worker.try_wait().expect("wait").is_none(),
            "the worker died at round {round}\n{}",
            faustus_suite::log_tail(&pv.log(), 40)
        );
    }
    pv.assert_exact(sent).await;
}

//! The worker's web server end to end (`examples/page_views.rs` with
//! `-X web.port=0` against the harness Kafka): `/ready` once the worker
//! has its partitions, `/metrics` counting what it processed, `/health`
//! 200 while it keeps up (when a partition stalls is unit-tested in
//! `crates/engine/src/web.rs`); table queries asked of either of two
//! workers answered by the owner of the key's partition, also after a
//! rebalance.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use faustus_suite::{unique_topic, Deadline, ScratchDir};
use faustus_testcontainers::shared;
use faustus_wire::producer::{Producer, ProducerConfig, ProducerRecord};
use faustus_wire::Properties;

/// A GET on the worker: (status, body).
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the web server");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("response");
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

async fn send(bootstrap: &str, topic: &str, n: usize, value: &str) {
    let props = Properties::new().set("bootstrap.servers", bootstrap);
    let p = Producer::connect(ProducerConfig::from_properties(&props).expect("config"))
        .await
        .expect("producer");
    let mut pending = Vec::new();
    for i in 0..n {
        let rec = ProducerRecord::new(topic)
            .key(format!("/page/{}", i % 10))
            .value(value.to_owned());
        pending.push(p.send(rec).await.expect("queued"));
    }
    for d in pending {
        d.await.expect("delivered");
    }
    p.close().await.expect("close");
}

/// `/metrics` through a Prometheus text parser.
fn parse_metrics(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("Prometheus text")
}

/// The sum of a metric's samples over its labels.
fn sum(scrape: &prometheus_parse::Scrape, name: &str) -> u64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v as u64,
            _ => 0,
        })
        .sum()
}

/// Starts a page_views worker named `name` with a web server on a free
/// port; the worker and its web address (from its log).
async fn start_worker(
    dir: &ScratchDir,
    name: &str,
    app: &str,
    topic: &str,
    bootstrap: &str,
) -> (std::process::Child, String) {
    start_worker_with(dir, name, app, topic, bootstrap, &[], &[]).await
}

/// [`start_worker`] with more environment.
async fn start_worker_with(
    dir: &ScratchDir,
    name: &str,
    app: &str,
    topic: &str,
    bootstrap: &str,
    env: &[(&str, &str)],
    settings: &[&str],
) -> (std::process::Child, String) {
    std::fs::create_dir_all(dir.path()).expect("scratch dir");
    let log_path = dir.path().join(format!("{name}.log"));
    let worker = Command::new(faustus_suite::example_binary("page_views"))
        .envs(env.iter().copied())
        .env("PAGE_VIEWS_APP", app)
        .env("PAGE_VIEWS_TOPIC", topic)
        .args(["-b", bootstrap])
        .args([
            "-X",
            &format!("state.dir={}", dir.path().join(name).display()),
            "-X",
            "web.port=0",
            "-X",
            "health.stall.ms=1500",
            "-X",
            "topic.partitions=2",
        ])
        .args(settings.iter().flat_map(|s| ["-X", s]))
        .args(["worker", "-l", "info"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).expect("log"))
        .spawn()
        .expect("worker starts");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    // The log names the address.
    let deadline = Deadline::new("the web server's address", Duration::from_secs(60));
    let addr = loop {
        if let Some(line) = log().lines().find(|l| l.contains("web server listening")) {
            let a = line
                .split("addr=")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .expect("an address")
                .to_owned();
            break a;
        }
        deadline.check(faustus_suite::log_tail(&log(), 5));
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    (worker, addr)
}

/// The latest count of each URL in the app's changelog.
/// Waits until the changelog's latest counts are `expected`: queries read
/// the table cache, the changelog has the counts once the workers commit.
async fn await_changelog(bootstrap: &str, app: &str, expected: &BTreeMap<String, u64>) {
    let deadline = Deadline::new("the changelog to agree", Duration::from_secs(60));
    loop {
        let counts = changelog_counts(bootstrap, app).await;
        if &counts == expected {
            return;
        }
        deadline.check(counts);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn changelog_counts(bootstrap: &str, app: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for r in faustus_suite::read_records(bootstrap, &format!("{app}-click_counts-changelog"), false)
        .await
    {
        out.insert(r.key, r.value.parse().expect("a count"));
    }
    out
}

/// Asks `addr` for every URL's count until each is answered (200) with
/// `expected`'s count; no answer may be a 404 or a count above the
/// expected one on the way.
async fn await_counts(addrs: &[&str], expected: &BTreeMap<String, u64>, what: &str) {
    let deadline = Deadline::new(what, Duration::from_secs(90));
    loop {
        let mut wrong = Vec::new();
        for addr in addrs {
            for (url, count) in expected {
                let path = format!("/tables/click_counts/{}", url.replace('/', "%2F"));
                let (status, body) = get(addr, &path);
                match status {
                    200 => {
                        let got: u64 = body.trim().parse().expect("a count");
                        assert!(
                            got <= *count,
                            "{what}: {addr} answered {url} with {got}, above {count}"
                        );
                        if got != *count {
                            wrong.push((addr.to_string(), url.clone(), got));
                        }
                    }
                    503 => wrong.push((addr.to_string(), url.clone(), 0)),
                    other => panic!("{what}: {addr} answered {url} with {other}: {body}"),
                }
            }
        }
        if wrong.is_empty() {
            return;
        }
        deadline.check(&wrong[..wrong.len().min(4)]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_queries_are_answered_by_the_owner_from_any_worker_through_rebalances() {
    table_queries_through_rebalances("classic").await;
}

/// KIP-848 groups: owners found through the directory topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_queries_reach_the_owner_in_a_kip_848_group_too() {
    table_queries_through_rebalances("consumer").await;
}

async fn table_queries_through_rebalances(protocol: &str) {
    let group_protocol = format!("group.protocol={protocol}");
    let settings = [group_protocol.as_str()];
    let start = |dir, name, app, topic, bootstrap| {
        start_worker_with(dir, name, app, topic, bootstrap, &[], &settings)
    };
    let kafka = shared().expect("kafka");
    let bootstrap = kafka.bootstrap().to_owned();
    let app = unique_topic("webq");
    let topic = format!("{app}-clicks");
    let dir = ScratchDir::new(&app);
    let admin = faustus_suite::create_topic(&bootstrap, &topic, 2).await;
    send(&bootstrap, &topic, 100, "1").await;
    let (a, addr_a) = start(&dir, "a", &app, &topic, &bootstrap).await;
    let (b, addr_b) = start(&dir, "b", &app, &topic, &bootstrap).await;
    // Both workers own a partition.
    let deadline = Deadline::new(
        "both workers in the group with a partition each",
        Duration::from_secs(60),
    );
    loop {
        let members = admin
            .describe_group(&app)
            .await
            .map(|g| g.members)
            .unwrap_or_default();
        if members.len() == 2
            && members
                .iter()
                .all(|m| m.assignment.get(&topic).is_some_and(|p| p.len() == 1))
        {
            break;
        }
        deadline.check(members);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let expected: BTreeMap<String, u64> = (0..10).map(|i| (format!("/page/{i}"), 10)).collect();
    // Every key from both workers: half of them forwarded to the other.
    await_counts(
        &[&addr_a, &addr_b],
        &expected,
        "every count from both workers",
    )
    .await;
    await_changelog(&bootstrap, &app, &expected).await;
    let (status, body) = get(&addr_a, "/tables/click_counts/%2Fnever");
    assert_eq!(status, 404, "{body}");
    let (status, body) = get(&addr_a, "/tables/nope/x");
    assert_eq!(status, 404, "{body}");
    // The app's own page reads the table through any worker too.
    for addr in [&addr_a, &addr_b] {
        for (url, n) in &expected {
            let (status, body) = get(addr, &format!("/views?url={}", url.replace('/', "%2F")));
            assert_eq!(status, 200, "{body}");
            assert_eq!(body, format!("{url} was viewed {n} times\n"));
        }
    }
    let (_, body) = get(&addr_a, "/views?url=%2Fnever");
    assert_eq!(body, "/never was never viewed\n");

    // B leaves: A owns everything, restored from the changelog.
    faustus_suite::stop_worker(b);
    send(&bootstrap, &topic, 10, "1").await;
    let expected: BTreeMap<String, u64> = (0..10).map(|i| (format!("/page/{i}"), 11)).collect();
    await_counts(
        &[&addr_a],
        &expected,
        "every count from A alone after B left",
    )
    .await;
    // A's listing pages through all of them.
    let mut listed = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(c) => format!(
                "/tables/click_counts?limit=3&after={}",
                c.replace('/', "%2F")
            ),
            None => "/tables/click_counts?limit=3".to_owned(),
        };
        let (status, body) = get(&addr_a, &path);
        assert_eq!(status, 200, "{body}");
        let page: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        for e in page["entries"].as_array().expect("entries") {
            listed.insert(
                e["key"].as_str().expect("key").to_owned(),
                e["value"].as_u64().expect("count"),
            );
        }
        match page["next"].as_str() {
            Some(c) => after = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(listed, expected, "A's listing");

    // C joins: the partitions split again, and both answer every key.
    let (c, addr_c) = start(&dir, "c", &app, &topic, &bootstrap).await;
    send(&bootstrap, &topic, 10, "1").await;
    let expected: BTreeMap<String, u64> = (0..10).map(|i| (format!("/page/{i}"), 12)).collect();
    await_counts(
        &[&addr_a, &addr_c],
        &expected,
        "every count from A and C after C joined",
    )
    .await;
    await_changelog(&bootstrap, &app, &expected).await;
    faustus_suite::stop_worker(a);
    faustus_suite::stop_worker(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_metrics_and_health_tell_how_the_worker_is_doing() {
    let kafka = shared().expect("kafka");
    let bootstrap = kafka.bootstrap().to_owned();
    let app = unique_topic("web");
    let topic = format!("{app}-clicks");
    let dir = ScratchDir::new(&app);
    faustus_suite::create_topic(&bootstrap, &topic, 2).await;
    send(&bootstrap, &topic, 100, "1").await;
    let (worker, addr) = start_worker(&dir, "a", &app, &topic, &bootstrap).await;
    let deadline = Deadline::new("ready and the clicks counted", Duration::from_secs(60));
    loop {
        let (ready, _) = get(&addr, "/ready");
        let (_, metrics) = get(&addr, "/metrics");
        let parsed = parse_metrics(&metrics);
        let counted = sum(&parsed, "faustus_records_processed_total");
        if ready == 200 && counted >= 100 {
            assert_eq!(counted, 100, "{metrics}");
            assert_eq!(
                sum(&parsed, "faustus_agent_records_total"),
                100,
                "{metrics}"
            );
            assert!(
                parsed
                    .samples
                    .iter()
                    .any(|s| s.metric == "faustus_agent_records_total"
                        && s.labels.get("agent") == Some("count_click")),
                "{metrics}"
            );
            assert!(
                sum(&parsed, "faustus_wire_responses_total") > 0,
                "{metrics}"
            );
            assert!(metrics.contains("faustus_commits_total"), "{metrics}");
            assert!(
                metrics.contains("faustus_commit_seconds_bucket"),
                "{metrics}"
            );
            assert!(metrics.contains("faustus_consumer_lag{"), "{metrics}");
            break;
        }
        deadline.check((ready, counted));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(&addr, "/health").0, 200, "keeping up");
    faustus_suite::stop_worker(worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_agent_turns_health_to_503_naming_its_partition_and_is_logged() {
    let kafka = shared().expect("kafka");
    let bootstrap = kafka.bootstrap().to_owned();
    let app = unique_topic("stuck");
    let topic = format!("{app}-clicks");
    let dir = ScratchDir::new(&app);
    faustus_suite::create_topic(&bootstrap, &topic, 1).await;
    // The worker's agent never returns from the batch holding /page/3.
    let (worker, addr) = start_worker_with(
        &dir,
        "a",
        &app,
        &topic,
        &bootstrap,
        &[("PAGE_VIEWS_HANG_ON", "/page/3")],
        &[],
    )
    .await;
    let deadline = Deadline::new("the worker ready", Duration::from_secs(60));
    while get(&addr, "/ready").0 != 200 {
        deadline.check("starting");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Healthy while it keeps up.
    assert_eq!(get(&addr, "/health").0, 200);
    send(&bootstrap, &topic, 10, "1").await;
    // Stalled within the stall time (1.5 s) and a little.
    let deadline = Deadline::new("/health to report the stall", Duration::from_secs(30));
    let body = loop {
        let (status, body) = get(&addr, "/health");
        if status == 503 {
            break body;
        }
        assert_eq!(status, 200, "{body}");
        deadline.check(body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let health: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(health["status"], "stalled", "{body}");
    let stalled = &health["stalled"][0];
    assert_eq!(stalled["topic"], topic.as_str(), "{body}");
    assert_eq!(stalled["partition"], 0, "{body}");
    assert!(stalled["lag"].as_i64().is_some_and(|l| l > 0), "{body}");
    // The worker said so in its log, once.
    let log_path = dir.path().join("a.log");
    let deadline = Deadline::new("the stall warning in the log", Duration::from_secs(10));
    loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let warnings = log.matches("partition stalled").count();
        if warnings > 0 {
            assert_eq!(warnings, 1, "{}", faustus_suite::log_tail(&log, 10));
            break;
        }
        deadline.check(faustus_suite::log_tail(&log, 5));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Metrics still answer while the loop is stuck.
    let (status, metrics) = get(&addr, "/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("faustus_wire_requests_in_flight{"),
        "{metrics}"
    );
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &worker.id().to_string()])
        .status();
    let mut worker = worker;
    let _ = worker.wait();
}

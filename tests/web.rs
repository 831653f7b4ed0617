//! The worker's web server end to end (`examples/page_views.rs` with
//! `-X web.port=0` against the harness Kafka): `/ready` once the worker
//! has its partitions, `/metrics` counting what it processed, `/health`
//! 200 while it keeps up (when a partition stalls is unit-tested in
//! `crates/engine/src/web.rs`).

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use faustus_suite::{unique_topic, Deadline, ScratchDir};
use faustus_testcontainers::shared;
use faustus_wire::producer::{Producer, ProducerConfig, ProducerRecord};
use faustus_wire::{Admin, NewTopic, Properties};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_metrics_and_health_tell_how_the_worker_is_doing() {
    let kafka = shared().expect("kafka");
    let bootstrap = kafka.bootstrap().to_owned();
    let app = unique_topic("web");
    let topic = format!("{app}-clicks");
    let dir = ScratchDir::new(&app);
    let props = Properties::new().set("bootstrap.servers", &bootstrap);
    let p = Producer::connect(ProducerConfig::from_properties(&props).expect("config"))
        .await
        .expect("producer");
    Admin::new(p.client().clone())
        .create_topic(NewTopic::new(&topic, 2, 1), false)
        .await
        .expect("topic");
    send(&bootstrap, &topic, 100, "1").await;
    std::fs::create_dir_all(dir.path()).expect("scratch dir");
    let log_path = dir.path().join("a.log");
    let worker = Command::new(faustus_suite::example_binary("page_views"))
        .env("PAGE_VIEWS_APP", &app)
        .env("PAGE_VIEWS_TOPIC", &topic)
        .args(["-b", &bootstrap])
        .args([
            "-X",
            &format!("state.dir={}", dir.path().join("a").display()),
            "-X",
            "web.port=0",
            "-X",
            "health.stall.ms=1500",
            "-X",
            "topic.partitions=2",
        ])
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
        deadline.check("starting");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let deadline = Deadline::new("ready and the clicks counted", Duration::from_secs(60));
    loop {
        let (ready, _) = get(&addr, "/ready");
        let (_, metrics) = get(&addr, "/metrics");
        let counted: u64 = metrics
            .lines()
            .filter(|l| l.starts_with("faustus_records_processed_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        if ready == 200 && counted >= 100 {
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

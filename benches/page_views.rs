//! The page-view counter end to end: `examples/page_views` (release build)
//! counting clicks already in a 6-partition topic, in at-least-once and
//! exactly-once modes, one worker, RocksDB tables.
//!
//! `cargo bench --bench page_views` (`FAUSTUS_PV_RECORDS`, default 500000;
//! `FAUSTUS_PV_ROUNDS`, default 3) alternates the modes, each with a fresh
//! app id (so a fresh group, changelog and state directory), timing from the
//! worker's start until its group has committed every input offset. Peak RSS
//! is the worker's `VmHWM`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use faustus_testcontainers::{shared, unique_name};
use faustus_wire::producer::{Producer, ProducerConfig, ProducerRecord};
use faustus_wire::{Admin, NewTopic, Properties};

fn env_or(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn peak_rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() {
    let n = env_or("FAUSTUS_PV_RECORDS", 500_000);
    let rounds = env_or("FAUSTUS_PV_ROUNDS", 3);
    let bin = faustus_suite::build_example("page_views", true);

    let kafka = shared().expect("kafka");
    let bootstrap = kafka.bootstrap().to_owned();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let topic = unique_name("pv-bench-clicks");
    let admin = rt.block_on(async {
        let props = Properties::new().set("bootstrap.servers", &bootstrap);
        let p = Producer::connect(ProducerConfig::from_properties(&props).expect("config"))
            .await
            .expect("producer");
        let admin = Admin::new(p.client().clone());
        admin
            .create_topic(NewTopic::new(&topic, 6, 1), false)
            .await
            .expect("topic");
        for i in 0..n {
            let rec = ProducerRecord::new(&topic)
                .key(format!("/page/{}", i % 1000))
                .value("1");
            let _ = p.send(rec).await.expect("queued");
        }
        p.close().await.expect("flushed");
        admin
    });
    println!("{n} clicks over 1000 URLs in {topic} (6 partitions)");

    let state = std::env::temp_dir().join(unique_name("pv-bench-state"));
    let mut results: Vec<(&str, f64, f64)> = Vec::new();
    for r in 0..rounds {
        for mode in ["at_least_once", "exactly_once"] {
            let app = unique_name(&format!("pv-bench-{r}"));
            let start = Instant::now();
            let mut child = Command::new(&bin)
                .env("PAGE_VIEWS_APP", &app)
                .env("PAGE_VIEWS_TOPIC", &topic)
                .env("KAFKA_BOOTSTRAP", &bootstrap)
                .args(["-X", &format!("state.dir={}", state.display())])
                .args(["-X", &format!("processing.guarantee={mode}")])
                .args(["worker", "-l", "warn"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("worker");
            rt.block_on(faustus_suite::await_group_progress(
                &admin,
                &app,
                n,
                Duration::from_secs(900),
            ));
            let secs = start.elapsed().as_secs_f64();
            let rss = peak_rss_mb(child.id());
            let _ = child.kill();
            let _ = child.wait();
            println!(
                "round {r} {mode:<14} {:>10.0} records/s ({secs:.2} s), peak RSS {rss:.0} MB",
                n as f64 / secs
            );
            results.push((mode, n as f64 / secs, rss));
        }
    }
    let _ = std::fs::remove_dir_all(&state);
    let median = |mode: &str, f: fn(&(&str, f64, f64)) -> f64| {
        let mut v: Vec<f64> = results.iter().filter(|x| x.0 == mode).map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (alo, eos) = (
        median("at_least_once", |x| x.1),
        median("exactly_once", |x| x.1),
    );
    println!(
        "median: at_least_once {alo:.0} records/s ({:.0} MB peak), exactly_once {eos:.0} records/s ({:.0} MB peak); exactly-once costs {:.1}%",
        median("at_least_once", |x| x.2),
        median("exactly_once", |x| x.2),
        (1.0 - eos / alo) * 100.0
    );
}

//! The page-view counter end to end: `examples/page_views` (release build)
//! counting clicks already in a 6-partition topic, in at-least-once and
//! exactly-once modes, one worker, RocksDB tables.
//!
//! `cargo bench --bench page_views` (`FAUSTUS_PV_RECORDS` clicks, default
//! 500000; `FAUSTUS_PV_SAMPLES` criterion samples per mode, default 10, the
//! least criterion takes): each sample is one worker process counting every
//! click from a fresh app id (so a fresh group, changelog and state
//! directory), timed from the worker's start until its group has committed
//! every input offset; criterion reports records/s. Peak RSS is the worker's
//! `VmHWM`, printed after the group.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput};
use faustus_suite::{env_or, peak_rss_mb};
use faustus_testcontainers::{shared, unique_name};
use faustus_wire::producer::{Producer, ProducerConfig, ProducerRecord};
use faustus_wire::{Admin, NewTopic, Properties};

fn main() {
    let n = env_or("FAUSTUS_PV_RECORDS", 500_000);
    let samples = env_or("FAUSTUS_PV_SAMPLES", 10);
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
    let mut peak: Vec<(&str, f64)> = Vec::new();
    // One iteration = one worker counting every click from a fresh app id;
    // flat sampling, so each sample is one such run.
    let mut c = Criterion::default()
        .sample_size(samples)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();
    let mut g = c.benchmark_group("page_views");
    g.sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements(n as u64));
    for mode in ["at_least_once", "exactly_once"] {
        g.bench_function(mode, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let app = unique_name("pv-bench");
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
                    total += start.elapsed();
                    peak.push((mode, peak_rss_mb(child.id())));
                    let _ = child.kill();
                    let _ = child.wait();
                }
                total
            });
        });
    }
    g.finish();
    let _ = std::fs::remove_dir_all(&state);
    for mode in ["at_least_once", "exactly_once"] {
        let max = peak
            .iter()
            .filter(|p| p.0 == mode)
            .map(|p| p.1)
            .fold(0.0, f64::max);
        println!("page_views/{mode}: peak RSS {max:.0} MB (highest of its runs)");
    }
}

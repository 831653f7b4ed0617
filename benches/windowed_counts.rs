//! The windowed count end to end: `examples/windowed_counts` (release
//! build) counting clicks per URL per 1-second tumbling window, the clicks
//! already in a 6-partition topic (1000 URLs, event times 10 clicks per
//! millisecond), results to an output topic: every update, or each window's
//! final result, in at-least-once and exactly-once modes, one worker,
//! RocksDB tables.
//!
//! `cargo bench --bench windowed_counts` (`FAUSTUS_WC_RECORDS` clicks,
//! default 500000; `FAUSTUS_WC_SAMPLES` criterion samples per mode, default
//! 10, the least criterion takes; `FAUSTUS_WC_WINDOW`, the example's
//! `WC_WINDOW`, default `tumbling:1000`; `FAUSTUS_WC_EMIT`, `update`,
//! `final` or both, the default): each sample is one worker process
//! counting every click from a fresh app id (so a fresh group, changelog,
//! output and state directory), timed from the worker's start until its
//! group has committed every input offset; criterion reports records/s.
//! Peak RSS is the worker's `VmHWM`, printed after the group.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput};
use faustus_suite::{env_or, peak_rss_mb};
use faustus_testcontainers::{shared, unique_name};
use faustus_wire::producer::{Producer, ProducerConfig, ProducerRecord};
use faustus_wire::{Admin, NewTopic, Properties};

fn main() {
    let n = env_or("FAUSTUS_WC_RECORDS", 500_000);
    let samples = env_or("FAUSTUS_WC_SAMPLES", 10);
    let bin = faustus_suite::build_example("windowed_counts", true);

    let kafka = shared().expect("kafka");
    let bootstrap = kafka.bootstrap().to_owned();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let topic = unique_name("wc-bench-clicks");
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
        // Event times from an hour ago (inside the broker's retention), 10
        // clicks per millisecond.
        let base = faustus_suite::millis_ago(Duration::from_secs(3600));
        for i in 0..n {
            let mut rec = ProducerRecord::new(&topic)
                .key(format!("/page/{}", i % 1000))
                .value("1");
            rec.timestamp = Some(base + (i / 10) as i64);
            let _ = p.send(rec).await.expect("queued");
        }
        p.close().await.expect("flushed");
        admin
    });
    println!("{n} clicks over 1000 URLs in {topic} (6 partitions), 10 per ms of event time");

    let state = std::env::temp_dir().join(unique_name("wc-bench-state"));
    let mut peak: Vec<(String, f64)> = Vec::new();
    // One iteration = one worker counting every click from a fresh app id;
    // flat sampling, so each sample is one such run.
    let mut c = Criterion::default()
        .sample_size(samples)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();
    let mut g = c.benchmark_group("windowed_counts");
    g.sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements(n as u64));
    let window = std::env::var("FAUSTUS_WC_WINDOW").unwrap_or_else(|_| "tumbling:1000".into());
    let emits = std::env::var("FAUSTUS_WC_EMIT").unwrap_or_else(|_| "update,final".into());
    let runs: Vec<(&str, &str)> = [
        ("update", "at_least_once"),
        ("update", "exactly_once"),
        ("final", "at_least_once"),
        ("final", "exactly_once"),
    ]
    .into_iter()
    .filter(|(emit, _)| emits.split(',').any(|e| e == *emit))
    .collect();
    println!("window {window}, emit {emits}");
    for &(emit, mode) in &runs {
        let name = format!("{emit}/{mode}");
        g.bench_function(&name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let app = unique_name("wc-bench");
                    let start = Instant::now();
                    let mut child = Command::new(&bin)
                        .env("WC_APP", &app)
                        .env("WC_INPUT", &topic)
                        .env("WC_OUTPUT", format!("{app}-out"))
                        .env("WC_WINDOW", &window)
                        .env("WC_EMIT", emit)
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
                    peak.push((name.clone(), peak_rss_mb(child.id())));
                    let _ = child.kill();
                    let _ = child.wait();
                }
                total
            });
        });
    }
    g.finish();
    let _ = std::fs::remove_dir_all(&state);
    for &(emit, mode) in &runs {
        let name = format!("{emit}/{mode}");
        let max = peak
            .iter()
            .filter(|p| p.0 == name)
            .map(|p| p.1)
            .fold(0.0, f64::max);
        println!("windowed_counts/{name}: peak RSS {max:.0} MB (highest of its runs)");
    }
}

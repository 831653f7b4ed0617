//! Changelog recovery: a worker with a cold store (fresh state directory)
//! restoring one table partition whose changelog holds 5M updates over
//! 1,000 keys (a changelog not compacted yet, as after a busy day).
//!
//! `cargo bench --bench restore` (`FAUSTUS_RESTORE_RECORDS`, default
//! 5000000; `FAUSTUS_RESTORE_SAMPLES`, default 10): the changelog is filled
//! once; each sample starts `examples/page_views` (release build, one
//! partition) from an empty state directory and takes the restoration's
//! time from its `recovered ... ms=` log line (the replay alone, not the
//! process start or the group join); criterion reports records/s.
//! `FAUSTUS_RESTORE_BINS=label=path,...` measures other builds of the
//! example side by side (a before and after in one run).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput};
use faustus_suite::env_or;
use faustus_testcontainers::{shared, unique_name};
use faustus_wire::producer::{Producer, ProducerConfig, ProducerRecord};
use faustus_wire::{Admin, NewTopic, Properties};

/// The restoration's time in one worker's log: `recovered ... ms=N` of
/// partition 0.
fn recovered_ms(line: &str) -> Option<u64> {
    if !line.contains(" recovered ") || !line.contains("partition=0") {
        return None;
    }
    line.split("ms=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn main() {
    let n = env_or("FAUSTUS_RESTORE_RECORDS", 5_000_000);
    let samples = env_or("FAUSTUS_RESTORE_SAMPLES", 10);
    let bins: Vec<(String, std::path::PathBuf)> = match std::env::var("FAUSTUS_RESTORE_BINS") {
        Ok(list) => list
            .split(',')
            .filter_map(|e| e.split_once('='))
            .map(|(l, p)| (l.to_owned(), p.into()))
            .collect(),
        Err(_) => vec![(
            "page_views".to_owned(),
            faustus_suite::build_example("page_views", true),
        )],
    };

    let kafka = shared().expect("kafka");
    let bootstrap = kafka.bootstrap().to_owned();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let app = unique_name("restore-bench");
    let clicks = format!("{app}-clicks");
    let changelog = format!("{app}-click_counts-changelog");
    rt.block_on(async {
        let props = Properties::new().set("bootstrap.servers", &bootstrap);
        let p = Producer::connect(ProducerConfig::from_properties(&props).expect("config"))
            .await
            .expect("producer");
        let admin = Admin::new(p.client().clone());
        admin
            .create_topic(NewTopic::new(&clicks, 1, 1), false)
            .await
            .expect("clicks topic");
        admin
            .create_topic(
                NewTopic::new(&changelog, 1, 1).config("cleanup.policy", "compact"),
                false,
            )
            .await
            .expect("changelog");
        for i in 0..n {
            let rec = ProducerRecord::new(&changelog)
                .partition(0)
                .key(format!("/page/{}", i % 1000))
                .value((i / 1000 + 1).to_string());
            let _ = p.send(rec).await.expect("queued");
        }
        p.close().await.expect("flushed");
    });
    println!("{n} updates over 1000 keys in {changelog}");

    let mut c = Criterion::default()
        .sample_size(samples)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();
    let mut g = c.benchmark_group("restore");
    g.sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements(n as u64));
    for (label, bin) in &bins {
        g.bench_function(label.as_str(), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let state = std::env::temp_dir().join(unique_name("restore-bench-state"));
                    let mut child = Command::new(bin)
                        .env("PAGE_VIEWS_APP", &app)
                        .env("PAGE_VIEWS_TOPIC", &clicks)
                        .env("KAFKA_BOOTSTRAP", &bootstrap)
                        .args(["-X", &format!("state.dir={}", state.display())])
                        .args(["-X", "topic.partitions=1", "worker", "-l", "info"])
                        .env("NO_COLOR", "1")
                        .stdout(Stdio::null())
                        .stderr(Stdio::piped())
                        .spawn()
                        .expect("worker");
                    // Read on a thread to the end, so the worker never
                    // blocks on a full pipe.
                    let log = BufReader::new(child.stderr.take().expect("stderr"));
                    let (tx, rx) = std::sync::mpsc::channel();
                    std::thread::spawn(move || {
                        for line in log.lines().map_while(Result::ok) {
                            if let Some(ms) = recovered_ms(&line) {
                                let _ = tx.send(ms);
                            }
                        }
                    });
                    let ms = rx
                        .recv_timeout(Duration::from_secs(600))
                        .expect("the worker logged its recovery");
                    total += Duration::from_millis(ms.max(1));
                    faustus_suite::stop_worker(child);
                    let _ = std::fs::remove_dir_all(&state);
                }
                total
            });
        });
    }
    g.finish();
}

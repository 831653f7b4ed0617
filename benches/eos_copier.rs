//! The cost of exactly-once: `examples/eos_copier` copying a 2-partition
//! topic to a 3-partition one, in transactions of 500 records, against the
//! same copier with at-least-once commits (an idempotent producer, flushed,
//! then the group's offsets committed, every 500 records).
//!
//! `cargo bench --bench eos_copier` (`FAUSTUS_EOS_RECORDS`, default 200000;
//! `FAUSTUS_EOS_ROUNDS`, default 10, criterion's least sample count) builds
//! the example in release mode; criterion then measures each mode, one copier
//! run per sample on a fresh output topic and group, timed from the copier's
//! start until the group has committed every input record, and keeps the
//! runs of the last bench as the baseline the next is compared with (a
//! regression shows as criterion's "Performance has regressed"). The median
//! cost of exactly-once is printed at the end.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput};

use faustus_suite::env_or;
use faustus_testcontainers::{shared, unique_name};
use faustus_wire::{Admin, NewTopic};

fn main() {
    let n = env_or("FAUSTUS_EOS_RECORDS", 200_000);
    let rounds = env_or("FAUSTUS_EOS_ROUNDS", 10);
    let copier = faustus_suite::build_example("eos_copier", true);

    let kafka = shared().expect("kafka");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let bootstrap = kafka.bootstrap().to_owned();
    let input = rt.block_on(faustus_suite::filled_topic(
        &bootstrap,
        "eos-bench-in",
        2,
        n,
        100,
    ));
    let admin = rt.block_on(async {
        let client = faustus_wire::Client::connect(
            faustus_wire::ClientConfig::new(&bootstrap).expect("config"),
        )
        .await
        .expect("client");
        Admin::new(client)
    });

    let mut results: Vec<(&str, f64)> = Vec::new();
    let mut run = |mode: &'static str| -> Duration {
        let output = unique_name("eos-bench-out");
        let group = unique_name("eos-bench");
        rt.block_on(admin.create_topic(NewTopic::new(&output, 3, 1), false))
            .expect("output topic");
        let mut cmd = Command::new(&copier);
        cmd.args([
            "--bootstrap",
            &bootstrap,
            "--input",
            &input,
            "--output",
            &output,
        ])
        .args(["--group", &group, "--records-per-txn", "500"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if mode == "at-least-once" {
            cmd.arg("--at-least-once");
        } else {
            cmd.args(["--transactional-id", &unique_name("eos-bench-txn")]);
        }
        let start = Instant::now();
        let mut child = cmd.spawn().expect("copier");
        rt.block_on(faustus_suite::await_group_progress(
            &admin,
            &group,
            n,
            Duration::from_secs(600),
        ));
        let took = start.elapsed();
        let _ = child.kill();
        let _ = child.wait();
        results.push((mode, n as f64 / took.as_secs_f64()));
        took
    };
    let mut c = Criterion::default()
        .sample_size(rounds.max(10))
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();
    let mut g = c.benchmark_group("eos_copier");
    g.sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements(n as u64));
    for mode in ["at-least-once", "exactly-once"] {
        g.bench_function(mode, |b| {
            b.iter_custom(|iters| (0..iters).map(|_| run(mode)).sum())
        });
    }
    g.finish();
    drop(c);
    let median = |mode: &str| {
        let mut v: Vec<f64> = results
            .iter()
            .filter(|(m, _)| *m == mode)
            .map(|(_, x)| *x)
            .collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (alo, eos) = (median("at-least-once"), median("exactly-once"));
    println!(
        "median: at-least-once {alo:.0} records/s, exactly-once {eos:.0} records/s; exactly-once costs {:.1}%",
        (1.0 - eos / alo) * 100.0
    );
}

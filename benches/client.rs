//! Producer and consumer throughput against the harness Kafka: 100-byte
//! values, 1 and 6 partitions. Uses the cluster in `KAFKA_BOOTSTRAP`, or
//! starts one.
//!
//! `cargo bench --bench client` prints criterion's records/s and MB/s, then a
//! table with the client process's CPU seconds per million records (user +
//! sys, from /proc/self/stat) for docs/benchmarks.md.

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use faustus_testcontainers::{shared, unique_name};
use faustus_wire::consumer::{Consumer, ConsumerConfig, Offset};
use faustus_wire::producer::{Producer, ProducerConfig, ProducerRecord};
use faustus_wire::{Admin, NewTopic, Properties};
use tokio::runtime::Runtime;

const VALUE: usize = 100;

/// User + system CPU time of this process.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces).
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15; `after` starts at field 3.
    let total = ticks(11) + ticks(12);
    Duration::from_millis(total * 10) // USER_HZ is 100 on Linux
}

fn props(bootstrap: &str) -> Properties {
    Properties::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("batch.size", "262144")
        .set("acks", "all")
}

async fn topic(bootstrap: &str, partitions: i32) -> String {
    let name = unique_name(&format!("bench-{partitions}p"));
    let client =
        faustus_wire::Client::connect(faustus_wire::ClientConfig::new(bootstrap).expect("config"))
            .await
            .expect("client");
    Admin::new(client)
        .create_topic(NewTopic::new(&name, partitions, 1), false)
        .await
        .expect("topic");
    name
}

async fn produce(p: &Producer, topic: &str, n: usize) {
    let value = vec![b'v'; VALUE];
    let value = bytes::Bytes::from(value);
    let mut pending = Vec::with_capacity(n.min(200_000));
    for i in 0..n {
        let rec = ProducerRecord::new(topic)
            .key(format!("{:08}", i % 100_000))
            .value(value.clone());
        pending.push(p.send(rec).await.expect("queued"));
        if pending.len() == 200_000 {
            for d in pending.drain(..) {
                d.await.expect("delivered");
            }
        }
    }
    for d in pending {
        d.await.expect("delivered");
    }
}

async fn consume(bootstrap: &str, topic: &str, n: usize) -> usize {
    let mut c =
        Consumer::connect(ConsumerConfig::from_properties(&props(bootstrap)).expect("config"))
            .await
            .expect("consumer");
    c.assign(topic, &[], Offset::Beginning)
        .await
        .expect("assign");
    let mut got = 0;
    let mut bytes = 0;
    while got < n {
        for part in c.poll().await.expect("poll") {
            for r in part.records() {
                bytes += r.expect("record").value().map_or(0, <[u8]>::len);
                got += 1;
            }
        }
    }
    bytes
}

fn main() {
    let rt = Runtime::new().expect("runtime");
    let kafka = shared().expect("kafka");
    let bootstrap = kafka.bootstrap().to_owned();
    let mut c = Criterion::default()
        .sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .warm_up_time(Duration::from_secs(2))
        .configure_from_args();
    let per_iter = 200_000usize;
    let mut summary = Vec::new();
    for partitions in [1, 6] {
        let producer = rt.block_on(async {
            Producer::connect(ProducerConfig::from_properties(&props(&bootstrap)).expect("config"))
                .await
                .expect("producer")
        });
        let t = rt.block_on(topic(&bootstrap, partitions));
        let mut g = c.benchmark_group("producer");
        g.throughput(Throughput::Elements(per_iter as u64));
        g.bench_function(
            BenchmarkId::new("faustus", format!("{partitions}p-100B")),
            |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        rt.block_on(produce(&producer, &t, per_iter));
                    }
                    start.elapsed()
                })
            },
        );
        g.finish();

        // A topic of 1M records to read, for the consumer and the table.
        let n = 1_000_000;
        let read_topic = rt.block_on(topic(&bootstrap, partitions));
        let cpu0 = cpu_time();
        let t0 = Instant::now();
        rt.block_on(produce(&producer, &read_topic, n));
        let produce_time = t0.elapsed();
        let produce_cpu = cpu_time() - cpu0;

        let mut g = c.benchmark_group("consumer");
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(
            BenchmarkId::new("faustus", format!("{partitions}p-100B")),
            |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        rt.block_on(consume(&bootstrap, &read_topic, n));
                    }
                    start.elapsed()
                })
            },
        );
        g.finish();
        let cpu0 = cpu_time();
        let t0 = Instant::now();
        rt.block_on(consume(&bootstrap, &read_topic, n));
        let consume_time = t0.elapsed();
        let consume_cpu = cpu_time() - cpu0;
        summary.push((
            partitions,
            produce_time,
            produce_cpu,
            consume_time,
            consume_cpu,
        ));
    }
    c.final_summary();
    println!();
    println!("| client | partitions | records/s | MB/s (values) | CPU s per 1M records |");
    println!("|---|---|---|---|---|");
    let n = 1_000_000f64;
    for (p, pt, pc, ct, cc) in summary {
        for (what, t, cpu) in [("producer", pt, pc), ("consumer", ct, cc)] {
            println!(
                "| faustus {what} | {p} | {:.0} | {:.1} | {:.2} |",
                n / t.as_secs_f64(),
                n * VALUE as f64 / t.as_secs_f64() / 1e6,
                cpu.as_secs_f64()
            );
        }
    }
}

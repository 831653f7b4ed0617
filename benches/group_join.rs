//! Group rebalance latency: the time from a member's join to its first
//! records, with 3 members over 12 partitions, for our group consumer and for
//! Kafka's Java consumer on the same broker, under the classic protocol
//! (cooperative-sticky) and the KIP-848 consumer protocol.
//!
//! Per round: two members of a fresh group consume until they own all 12
//! partitions and both have records since; then a third member subscribes,
//! and the clock runs until its first non-empty poll. Both sides do 10 ms of
//! "work" per poll so that the topic does not run dry. The Java side is
//! `benches/java/JoinTime.java`, run by the harness's `tool` verb.
//!
//! `cargo bench --bench group_join` (`FAUSTUS_JOIN_ROUNDS`, default 5)
//! prints one line per client and protocol: median, min and max in ms.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use faustus_testcontainers::{shared, unique_name};
use faustus_wire::group::{GroupConfig, GroupConsumer, NoListener};
use faustus_wire::Properties;

const PARTITIONS: i32 = 12;
// Two members read up to ~120k records/s between them (100 per partition
// per poll, a poll every WORK), and a round lasts ~10-15 s before the third
// member's first records: the topic must outlast that, or the third member
// finds its partitions already drained and never sees a record. 1.2M was
// too close (a fresh-clone run panicked so); 3.6M leaves ~30 s.
const RECORDS: usize = 3_600_000;
const WORK: Duration = Duration::from_millis(10);

fn props(bootstrap: &str, group: &str, protocol: &str) -> Properties {
    let p = Properties::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("group.protocol", protocol)
        .set("auto.offset.reset", "earliest")
        // About 100 records per partition per fetch, like the Java side's
        // max.poll.records=100.
        .set("max.partition.fetch.bytes", "8192");
    if protocol == "classic" {
        p.set("partition.assignment.strategy", "cooperative-sticky")
    } else {
        p
    }
}

/// One round with our consumer: the join time in ms.
async fn round(bootstrap: &str, topic: &str, protocol: &str, r: usize) -> f64 {
    let group = unique_name(&format!("join-ours-{protocol}-{r}"));
    let stop = Arc::new(AtomicBool::new(false));
    let owned: Arc<[AtomicUsize; 2]> = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let seen: Arc<[AtomicI64; 2]> = Arc::new([AtomicI64::new(0), AtomicI64::new(0)]);
    let mut members = Vec::new();
    for m in 0..2 {
        let cfg = GroupConfig::from_properties(&props(bootstrap, &group, protocol)).expect("cfg");
        let (stop, owned, seen, topic) =
            (stop.clone(), owned.clone(), seen.clone(), topic.to_owned());
        members.push(tokio::spawn(async move {
            let mut c = GroupConsumer::subscribe(cfg, &[&topic], NoListener)
                .await
                .expect("subscribe");
            while !stop.load(Ordering::Relaxed) {
                let n: usize = c
                    .poll()
                    .await
                    .expect("poll")
                    .iter()
                    .map(|f| f.records().count())
                    .sum();
                seen[m].fetch_add(n as i64, Ordering::Relaxed);
                owned[m].store(
                    c.assignment().values().map(Vec::len).sum(),
                    Ordering::Relaxed,
                );
                tokio::time::sleep(WORK).await;
            }
            c.close().await.expect("close");
        }));
    }
    let mut base: Option<(i64, i64)> = None;
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "two members never settled"
        );
        let (o0, o1) = (
            owned[0].load(Ordering::Relaxed),
            owned[1].load(Ordering::Relaxed),
        );
        let (s0, s1) = (
            seen[0].load(Ordering::Relaxed),
            seen[1].load(Ordering::Relaxed),
        );
        if o0 > 0 && o1 > 0 && o0 + o1 == PARTITIONS as usize {
            match base {
                None => base = Some((s0, s1)),
                Some((b0, b1)) if s0 > b0 && s1 > b1 => break,
                Some(_) => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cfg = GroupConfig::from_properties(&props(bootstrap, &group, protocol)).expect("cfg");
    let t0 = Instant::now();
    let mut third = GroupConsumer::subscribe(cfg, &[topic], NoListener)
        .await
        .expect("subscribe");
    loop {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the third member never consumed"
        );
        if !third.poll().await.expect("poll").is_empty() {
            break;
        }
    }
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    third.close().await.expect("close");
    stop.store(true, Ordering::Relaxed);
    for m in members {
        m.await.expect("member");
    }
    ms
}

fn summary(label: &str, mut v: Vec<f64>) {
    v.sort_by(f64::total_cmp);
    let median = v[v.len() / 2];
    println!(
        "{label:<34} median {median:>7.0} ms   min {:>7.0}   max {:>7.0}   ({} rounds)",
        v[0],
        v[v.len() - 1],
        v.len()
    );
}

fn main() {
    // `cargo bench` passes `--bench`; there is nothing to filter here.
    let rounds: usize = std::env::var("FAUSTUS_JOIN_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let kafka = shared().expect("kafka");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let topic = rt.block_on(faustus_suite::filled_topic(
        kafka.bootstrap(),
        "join-bench",
        PARTITIONS,
        RECORDS,
        50,
    ));
    let java_src = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/java/JoinTime.java");
    for protocol in ["classic", "consumer"] {
        let ours: Vec<f64> = (0..rounds)
            .map(|r| rt.block_on(round(kafka.bootstrap(), &topic, protocol, r)))
            .collect();
        let out = kafka
            .tool(java_src)
            .args([kafka.bootstrap(), &topic, protocol, &rounds.to_string()])
            .output()
            .expect("java join benchmark");
        assert!(
            out.status.success(),
            "JoinTime.java failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let java: Vec<f64> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("join_ms ")?.trim().parse().ok())
            .collect();
        assert_eq!(java.len(), rounds, "one line per round from JoinTime.java");
        summary(&format!("faustus  group.protocol={protocol}"), ours);
        summary(&format!("java     group.protocol={protocol}"), java);
    }
}

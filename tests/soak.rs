//! The soak (issue 18, scenario 15): two exactly-once page-view workers on
//! a 3-node cluster under continuous load for 30 minutes, a fault every two
//! minutes, their resident memory sampled every two seconds. At the end
//! every click must be counted exactly once, and the worker that is never
//! restarted must show no memory growth.
//!
//! Not part of `scripts/test` (it takes 35 minutes); run it with
//!
//! ```sh
//! cargo test --release --test soak -- --ignored --nocapture
//! ```
//!
//! `SOAK_SECS` (1800) sets the length, `SOAK_FAULT_SECS` (120) the fault
//! interval (0: no faults, steady load only), `SOAK_RATE` (1000) the clicks
//! a second, `SOAK_SETTINGS` adds
//! worker settings (`key=value`, space-separated). It writes the samples
//! to `target/soak/rss.csv` and their plot to `target/soak/rss.svg`
//! (docs/reliability.md shows a copy).

use std::fmt::Write as _;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use faustus_suite::{build_example, env_or, rss_mb, stop_worker, PageViewRun};
use faustus_testcontainers::KafkaCluster;

/// The faults, in the order they come round.
const FAULTS: [&str; 6] = [
    "SIGKILL worker b, restart it",
    "SIGKILL a broker, restart it 10 s later",
    "SIGSTOP worker b for 15 s (a zombie past its session and transaction timeouts)",
    "worker c joins, leaves 30 s later",
    "SIGTERM worker b, restart it",
    "SIGKILL worker b, wipe its state directory, restart it",
];

fn signal(child: &Child, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status();
}

fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// One sample: seconds since the start, worker a's and b's RSS in MB.
struct Sample {
    secs: f64,
    a: f64,
    b: f64,
}

/// The samples as an SVG line chart, faults marked and numbered.
fn plot(samples: &[Sample], faults: &[(f64, usize)]) -> String {
    let (w, h, left, bottom) = (900.0, 360.0, 60.0, 40.0);
    let end = samples.last().map_or(1.0, |s| s.secs).max(1.0);
    let top = samples
        .iter()
        .flat_map(|s| [s.a, s.b])
        .filter(|v| v.is_finite())
        .fold(10.0f64, f64::max)
        * 1.15;
    let x = |secs: f64| left + secs / end * (w - left - 20.0);
    let y = |mb: f64| h - bottom - mb / top * (h - bottom - 20.0);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="white"/>
<line x1="{left}" y1="{b}" x2="{r}" y2="{b}" stroke="black"/>
<line x1="{left}" y1="20" x2="{left}" y2="{b}" stroke="black"/>
<text x="{mid}" y="{t}" text-anchor="middle">minutes</text>
<text x="14" y="{ymid}" transform="rotate(-90 14 {ymid})" text-anchor="middle">RSS (MB)</text>
"#,
        b = h - bottom,
        r = w - 20.0,
        mid = (w + left) / 2.0,
        t = h - 6.0,
        ymid = (h - bottom) / 2.0,
    );
    let step = ((end / 60.0 / 10.0).ceil() as usize).max(1);
    for m in (0..=(end / 60.0) as usize).step_by(step) {
        let xm = x(m as f64 * 60.0);
        let _ = writeln!(
            svg,
            r#"<text x="{xm}" y="{}" text-anchor="middle">{m}</text>"#,
            h - bottom + 14.0
        );
    }
    for i in 0..=4 {
        let mb = top / 4.0 * f64::from(i);
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="end">{mb:.0}</text><line x1="{left}" y1="{yy}" x2="{}" y2="{yy}" stroke="#ddd"/>"##,
            left - 4.0,
            y(mb) + 4.0,
            w - 20.0,
            yy = y(mb),
        );
    }
    for (secs, kind) in faults {
        let xf = x(*secs);
        let _ = writeln!(
            svg,
            r##"<line x1="{xf}" y1="20" x2="{xf}" y2="{}" stroke="#c33" stroke-dasharray="3,3"/><text x="{}" y="30" fill="#c33">{}</text>"##,
            h - bottom,
            xf + 2.0,
            kind + 1
        );
    }
    for (name, colour, pick) in [
        ("worker a (never restarted)", "#1f5fbf", 0),
        ("worker b (the faults' target)", "#e08a00", 1),
    ] {
        let points: Vec<String> = samples
            .iter()
            .map(|s| (s.secs, if pick == 0 { s.a } else { s.b }))
            .filter(|(_, v)| v.is_finite())
            .map(|(t, v)| format!("{:.1},{:.1}", x(t), y(v)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
            points.join(" ")
        );
        let ly = 40.0 + 14.0 * f64::from(pick);
        let _ = writeln!(
            svg,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="2"/><text x="{}" y="{}">{name}</text>"#,
            w - 230.0,
            w - 210.0,
            w - 205.0,
            ly + 4.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a 35-minute soak: cargo test --release --test soak -- --ignored --nocapture"]
async fn two_workers_under_load_and_a_fault_every_two_minutes_for_30_minutes() {
    let secs = env_or("SOAK_SECS", 1800) as u64;
    let every = env_or("SOAK_FAULT_SECS", 120) as u64;
    let rate = env_or("SOAK_RATE", 1000);
    let kafka = KafkaCluster::start(3).expect("3-node cluster");
    let settings = std::env::var("SOAK_SETTINGS").unwrap_or_default();
    let settings: Vec<&str> = settings.split_whitespace().collect();
    let run = PageViewRun::new(kafka.bootstrap(), 3, "soak")
        .await
        .with_binary(build_example("page_views", true))
        .with_settings(&settings);
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/soak");
    std::fs::create_dir_all(&out).expect("target/soak");
    let a = run.worker("a");
    let mut b = Some(run.worker("b"));
    let mut c: Option<(Child, Instant)> = None;
    let stop = Arc::new(AtomicBool::new(false));
    let sending = run.clicks_until(usize::MAX, rate, stop.clone());

    let start = Instant::now();
    let mut samples = Vec::new();
    let mut faults = Vec::new();
    let mut next_fault = Duration::from_secs(every);
    let mut broker_down: Option<(usize, Instant)> = None;
    let mut paused: Option<Instant> = None;
    let mut k = 0;
    while start.elapsed() < Duration::from_secs(secs) {
        let now = start.elapsed();
        samples.push(Sample {
            secs: now.as_secs_f64(),
            a: rss_mb(a.id()),
            b: b.as_ref().map_or(f64::NAN, |b| rss_mb(b.id())),
        });
        if let Some((node, since)) = broker_down {
            if since.elapsed() >= Duration::from_secs(10) {
                kafka.start_node(node).expect("restart the broker");
                broker_down = None;
            }
        }
        if let Some(since) = paused {
            if since.elapsed() >= Duration::from_secs(15) {
                signal(b.as_ref().expect("b"), "-CONT");
                paused = None;
            }
        }
        if let Some((child, since)) = c.take() {
            if since.elapsed() >= Duration::from_secs(30) {
                stop_worker(child);
            } else {
                c = Some((child, since));
            }
        }
        let fault_due = every > 0 && now >= next_fault;
        if fault_due && broker_down.is_none() && paused.is_none() && c.is_none() {
            let kind = k % FAULTS.len();
            println!(
                "soak: {:>5.0} s: fault {}: {}",
                now.as_secs_f64(),
                kind + 1,
                FAULTS[kind]
            );
            faults.push((now.as_secs_f64(), kind));
            match kind {
                0 => {
                    kill(b.take().expect("b"));
                    b = Some(run.worker("b"));
                }
                1 => {
                    let node = k / FAULTS.len() % 3 + 1;
                    kafka.kill(node).expect("kill a broker");
                    broker_down = Some((node, Instant::now()));
                }
                2 => {
                    signal(b.as_ref().expect("b"), "-STOP");
                    paused = Some(Instant::now());
                }
                3 => c = Some((run.worker("c"), Instant::now())),
                4 => {
                    stop_worker(b.take().expect("b"));
                    b = Some(run.worker("b"));
                }
                _ => {
                    kill(b.take().expect("b"));
                    std::fs::remove_dir_all(run.dir.path().join("b")).expect("wipe b's state");
                    b = Some(run.worker("b"));
                }
            }
            k += 1;
            next_fault += Duration::from_secs(every);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    if let Some((node, _)) = broker_down {
        kafka.start_node(node).expect("restart the broker");
    }
    if paused.is_some() {
        signal(b.as_ref().expect("b"), "-CONT");
    }
    stop.store(true, Ordering::Relaxed);
    let expected = sending.await.expect("sender");
    let sent: u64 = expected.values().sum();
    run.await_counts(&expected, &["a", "b", "c"], Duration::from_secs(600))
        .await;
    println!(
        "soak: {sent} clicks in {:.0} s, {} faults, every click counted exactly once",
        start.elapsed().as_secs_f64(),
        faults.len()
    );
    let peak_a = faustus_suite::peak_rss_mb(a.id());
    stop_worker(a);
    if let Some((child, _)) = c {
        stop_worker(child);
    }
    stop_worker(b.expect("b"));

    let mut csv = String::from("secs,a_rss_mb,b_rss_mb\n");
    for s in &samples {
        let _ = writeln!(csv, "{:.1},{:.1},{:.1}", s.secs, s.a, s.b);
    }
    std::fs::write(out.join("rss.csv"), csv).expect("rss.csv");
    std::fs::write(out.join("rss.svg"), plot(&samples, &faults)).expect("rss.svg");

    // Bounded: worker a, never restarted, holds no more in the last third
    // of the run than in the first two (after a minute's warm-up), give or
    // take a quarter and 16 MB (allocator noise, the table cache filling).
    let max_a = |from: f64, to: f64| {
        samples
            .iter()
            .filter(|s| s.secs >= from && s.secs < to && s.a.is_finite())
            .map(|s| s.a)
            .fold(0.0f64, f64::max)
    };
    let total = samples.last().map_or(0.0, |s| s.secs);
    let early = max_a(60.0, total * 2.0 / 3.0);
    let late = max_a(total * 2.0 / 3.0, f64::INFINITY);
    println!("soak: worker a's RSS: {early:.1} MB at most before the last third, {late:.1} MB in it, peak {peak_a:.1} MB");
    assert!(
        late <= early * 1.25 + 16.0,
        "worker a's memory grew: {early:.1} MB, then {late:.1} MB (target/soak/rss.csv)"
    );
}

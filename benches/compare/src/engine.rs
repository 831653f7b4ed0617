//! The page-view count three ways over the same kind of input (clicks keyed
//! by URL, value `1` as JSON, 1000 URLs, 6 partitions): Faustus's
//! `examples/page_views`, the Kafka Streams app in `benches/compare/streams`
//! and the faust-streaming app in `benches/compare/faust`.
//!
//! Each run is a fresh app id (so a fresh group, state and changelog) started
//! as one process. The runner watches the group's committed offsets: the
//! count is done when they cover every input record. It then stops the
//! process with SIGTERM and collects its CPU time and peak RSS. The rate is
//! taken from the first commit to the last (every contender commits each
//! second), which leaves out start-up (JVM, group join, topic creation); the
//! rate from spawn to done is kept as well.

use std::process::Command;
use std::time::{Duration, Instant};

use faustus_wire::{Admin, NewTopic};

use crate::measure::{self, Cost};
use crate::{report, RunArgs, Sample};

/// An admin client on `bootstrap`.
pub async fn admin(bootstrap: &str) -> Result<Admin, String> {
    let cfg = faustus_wire::ClientConfig::new(bootstrap).map_err(|e| e.to_string())?;
    let client = faustus_wire::Client::connect(cfg)
        .await
        .map_err(|e| format!("cannot reach Kafka at {bootstrap}: {e}"))?;
    Ok(Admin::new(client))
}

/// A new topic named `<prefix>-<pid>-<n>`.
pub async fn fresh_topic(admin: &Admin, prefix: &str, partitions: i32) -> Result<String, String> {
    let name = unique(prefix);
    admin
        .create_topic(NewTopic::new(&name, partitions, 1), false)
        .await
        .map_err(|e| format!("create {name}: {e}"))?;
    Ok(name)
}

/// Deletes a topic (its disk space comes back once the broker deletes it).
pub async fn delete_topic(admin: &Admin, name: &str) {
    let _ = admin.delete_topics(&[name]).await;
}

/// A name no other run of this process used: `<prefix>-<pid>-<n>`.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// `n` clicks over 1000 URLs into a new 6-partition topic; with
/// `event_times`, stamped from an hour ago, 10 clicks per millisecond.
async fn clicks(
    admin: &Admin,
    bootstrap: &str,
    n: u64,
    event_times: bool,
) -> Result<String, String> {
    use faustus_wire::producer::{Producer, ProducerConfig, ProducerRecord};
    let topic = fresh_topic(admin, "cmp-clicks", 6).await?;
    let props = faustus_wire::Properties::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5");
    let cfg = ProducerConfig::from_properties(&props).map_err(|e| e.to_string())?;
    let p = Producer::connect(cfg).await.map_err(|e| e.to_string())?;
    let mut pending = std::collections::VecDeque::new();
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
        - 3_600_000;
    for i in 0..n {
        let mut rec = ProducerRecord::new(&topic)
            .key(format!("/page/{}", i % 1000))
            .value(&b"1"[..]);
        if event_times {
            rec.timestamp = Some(base + (i / 10) as i64);
        }
        pending.push_back(p.send(rec).await.map_err(|e| e.to_string())?);
        if pending.len() >= 100_000 {
            for d in pending.drain(..50_000) {
                d.await.map_err(|e| e.to_string())?;
            }
        }
    }
    for d in pending {
        d.await.map_err(|e| e.to_string())?;
    }
    p.close().await.map_err(|e| e.to_string())?;
    Ok(topic)
}

/// An engine contender.
#[derive(Debug, Clone, Copy)]
enum Engine {
    /// Faustus as configured by default: its table cache (10 MB) coalesces
    /// a key's updates between commits, as Kafka Streams' record cache.
    Faustus,
    /// Faustus with `cache.max.bytes=0`: one changelog record per click.
    FaustusNoCache,
    /// Kafka Streams as configured by default: its record cache (10 MB)
    /// coalesces a key's updates between commits, so the changelog gets about
    /// one record per URL per commit instead of one per click.
    KafkaStreams,
    /// Kafka Streams with `statestore.cache.max.bytes=0`: one changelog
    /// record per click, as Faustus and faust-streaming write.
    KafkaStreamsNoCache,
    Faust,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Faustus => "faustus",
            Engine::FaustusNoCache => "faustus-nocache",
            Engine::KafkaStreams => "kafka-streams",
            Engine::KafkaStreamsNoCache => "kafka-streams-nocache",
            Engine::Faust => "faust",
        }
    }

    fn command(self, args: &RunArgs, app: &str, topic: &str, mode: &str) -> Command {
        let state = args.out.join("state").join(app);
        let root = &args.root;
        let mut cmd = match self {
            Engine::Faustus | Engine::FaustusNoCache => {
                let mut c = Command::new(root.join("target/release/examples/page_views"));
                c.env("PAGE_VIEWS_APP", app).env("PAGE_VIEWS_TOPIC", topic);
                if matches!(self, Engine::FaustusNoCache) {
                    c.args(["-X", "cache.max.bytes=0"]);
                }
                faustus_worker(&mut c, args, &state, mode);
                c
            }
            Engine::KafkaStreams | Engine::KafkaStreamsNoCache => {
                let mut c = streams_app(root, "PageViews");
                if matches!(self, Engine::KafkaStreamsNoCache) {
                    c.env("CMP_STREAMS_CACHE_BYTES", "0");
                }
                c
            }
            Engine::Faust => {
                let python = args.faust_python.clone().unwrap_or_default();
                let mut c = Command::new(python);
                c.arg(root.join("benches/compare/faust/page_views.py"))
                    .args(["worker", "-l", "warn"]);
                c
            }
        };
        peer_env(&mut cmd, args, app, topic, mode, &state);
        cmd
    }
}

/// The settings every Faustus worker of the comparison gets.
fn faustus_worker(c: &mut Command, args: &RunArgs, state: &std::path::Path, mode: &str) {
    c.env("KAFKA_BOOTSTRAP", &args.bootstrap)
        .args(["-X", &format!("state.dir={}", state.display())])
        .args(["-X", &format!("processing.guarantee={mode}")])
        .args(["-X", "topic.partitions=6", "worker", "-l", "warn"]);
}

/// The Kafka Streams app `class` of `benches/compare/streams`, on a 512 MB
/// heap.
fn streams_app(root: &std::path::Path, class: &str) -> Command {
    let dir = root.join("benches/compare/streams/target");
    let cp = format!("{}:{}/lib/*", dir.join("classes").display(), dir.display());
    let mut c = Command::new("java");
    c.args(["-Xms512m", "-Xmx512m", "-cp", &cp])
        .arg(format!("faustus.compare.{class}"));
    c
}

/// The environment the peers' apps read their settings from.
fn peer_env(
    cmd: &mut Command,
    args: &RunArgs,
    app: &str,
    topic: &str,
    mode: &str,
    state: &std::path::Path,
) {
    cmd.env("CMP_BOOTSTRAP", &args.bootstrap)
        .env("CMP_APP", app)
        .env("CMP_TOPIC", topic)
        .env("CMP_GUARANTEE", mode)
        .env("CMP_STATE_DIR", state);
}

/// Runs every engine contender, alternating them round by round.
pub fn run_all(
    args: &RunArgs,
    rt: &tokio::runtime::Runtime,
    admin: &Admin,
    samples: &mut Vec<Sample>,
    started: Instant,
) -> Result<(), String> {
    let n = args.engine_records;
    let topic = rt.block_on(clicks(admin, &args.bootstrap, n, false))?;
    let mut runs: Vec<(Engine, &str)> = vec![
        (Engine::Faustus, "at_least_once"),
        (Engine::FaustusNoCache, "at_least_once"),
        (Engine::KafkaStreams, "at_least_once"),
        (Engine::KafkaStreamsNoCache, "at_least_once"),
        (Engine::Faustus, "exactly_once"),
        (Engine::FaustusNoCache, "exactly_once"),
        (Engine::KafkaStreams, "exactly_once"),
        (Engine::KafkaStreamsNoCache, "exactly_once"),
    ];
    for round in 0..args.rounds {
        if round % 2 == 1 {
            runs.reverse();
        }
        for &(engine, mode) in &runs {
            let app = unique(&format!("cmp-{}", engine.name()));
            let cmd = engine.command(args, &app, &topic, mode);
            let s = rt.block_on(count(args, admin, "engine", engine.name(), cmd, &app, n, mode))?;
            samples.push(s);
            report::progress(samples.last().expect("pushed"), started);
        }
    }
    rt.block_on(delete_topic(admin, &topic));

    if args.faust_python.is_some() {
        let m = args.faust_records;
        let topic = rt.block_on(clicks(admin, &args.bootstrap, m, false))?;
        // faust-streaming is orders of magnitude slower: one round at most
        // per two of ours keeps the run inside its budget.
        for _ in 0..args.rounds.div_ceil(2) {
            let engine = Engine::Faust;
            let app = unique(&format!("cmp-{}", engine.name()));
            let cmd = engine.command(args, &app, &topic, "at_least_once");
            let s = rt.block_on(count(
                args,
                admin,
                "engine",
                engine.name(),
                cmd,
                &app,
                m,
                "at_least_once",
            ))?;
            samples.push(s);
            report::progress(samples.last().expect("pushed"), started);
        }
        rt.block_on(delete_topic(admin, &topic));
    }
    Ok(())
}

/// The windowed count contenders: 1-second tumbling windows, no grace,
/// results to an output topic.
#[derive(Debug, Clone, Copy)]
enum WindowedEngine {
    /// Every update emitted.
    Faustus,
    /// Each window once, when it closes.
    FaustusFinal,
    /// Kafka Streams' `count()` with its default record cache in front.
    KafkaStreams,
    /// Without the cache: every update emitted.
    KafkaStreamsNoCache,
    /// `emitStrategy(onWindowClose())`.
    KafkaStreamsFinal,
}

impl WindowedEngine {
    const ALL: [WindowedEngine; 5] = [
        WindowedEngine::Faustus,
        WindowedEngine::KafkaStreams,
        WindowedEngine::KafkaStreamsNoCache,
        WindowedEngine::FaustusFinal,
        WindowedEngine::KafkaStreamsFinal,
    ];

    fn name(self) -> &'static str {
        match self {
            WindowedEngine::Faustus => "faustus",
            WindowedEngine::FaustusFinal => "faustus-final",
            WindowedEngine::KafkaStreams => "kafka-streams",
            WindowedEngine::KafkaStreamsNoCache => "kafka-streams-nocache",
            WindowedEngine::KafkaStreamsFinal => "kafka-streams-final",
        }
    }

    fn command(self, args: &RunArgs, app: &str, topic: &str, mode: &str) -> Command {
        let state = args.out.join("state").join(app);
        let root = &args.root;
        let output = format!("{app}-out");
        let mut cmd = match self {
            WindowedEngine::Faustus | WindowedEngine::FaustusFinal => {
                let mut c = Command::new(root.join("target/release/examples/windowed_counts"));
                let emit = if matches!(self, WindowedEngine::FaustusFinal) {
                    "final"
                } else {
                    "update"
                };
                c.env("WC_APP", app)
                    .env("WC_INPUT", topic)
                    .env("WC_OUTPUT", &output)
                    .env("WC_WINDOW", "tumbling:1000")
                    .env("WC_EMIT", emit);
                faustus_worker(&mut c, args, &state, mode);
                c
            }
            _ => {
                let mut c = streams_app(root, "WindowedCounts");
                match self {
                    WindowedEngine::KafkaStreamsNoCache => {
                        c.env("CMP_STREAMS_CACHE_BYTES", "0");
                    }
                    WindowedEngine::KafkaStreamsFinal => {
                        c.env("CMP_EMIT", "final");
                    }
                    _ => {}
                }
                c
            }
        };
        peer_env(&mut cmd, args, app, topic, mode, &state);
        cmd.env("CMP_OUTPUT", &output);
        cmd
    }
}

/// The windowed count, every contender, alternating them round by round.
pub fn run_windowed(
    args: &RunArgs,
    rt: &tokio::runtime::Runtime,
    admin: &Admin,
    samples: &mut Vec<Sample>,
    started: Instant,
) -> Result<(), String> {
    let n = args.engine_records;
    let topic = rt.block_on(clicks(admin, &args.bootstrap, n, true))?;
    let mut runs: Vec<(WindowedEngine, &str)> = Vec::new();
    for mode in ["at_least_once", "exactly_once"] {
        for e in WindowedEngine::ALL {
            runs.push((e, mode));
        }
    }
    for round in 0..args.rounds {
        if round % 2 == 1 {
            runs.reverse();
        }
        for &(engine, mode) in &runs {
            let app = unique(&format!("cmp-w-{}", engine.name()));
            let cmd = engine.command(args, &app, &topic, mode);
            let s = rt.block_on(count(args, admin, "windowed", engine.name(), cmd, &app, n, mode))?;
            samples.push(s);
            report::progress(samples.last().expect("pushed"), started);
            rt.block_on(delete_topic(admin, &format!("{app}-out")));
        }
    }
    rt.block_on(delete_topic(admin, &topic));
    Ok(())
}

/// A title for each of the 1000 URLs into a new 6-partition topic, stamped
/// before every click (`clicks` stamps from an hour ago).
async fn titles(admin: &Admin, bootstrap: &str) -> Result<String, String> {
    use faustus_wire::producer::{Producer, ProducerConfig, ProducerRecord};
    let topic = fresh_topic(admin, "cmp-titles", 6).await?;
    let props = faustus_wire::Properties::new().set("bootstrap.servers", bootstrap);
    let cfg = ProducerConfig::from_properties(&props).map_err(|e| e.to_string())?;
    let p = Producer::connect(cfg).await.map_err(|e| e.to_string())?;
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
        - 3_601_000;
    let mut pending = Vec::new();
    for i in 0..1000 {
        let mut rec = ProducerRecord::new(&topic)
            .key(format!("/page/{i}"))
            .value(format!("title-{i}"));
        rec.timestamp = Some(base);
        pending.push(p.send(rec).await.map_err(|e| e.to_string())?);
    }
    for d in pending {
        d.await.map_err(|e| e.to_string())?;
    }
    p.close().await.map_err(|e| e.to_string())?;
    Ok(topic)
}

/// The stream–table join contenders: each click joined with its URL's
/// title (a left join), results to an output topic.
#[derive(Debug, Clone, Copy)]
enum JoinEngine {
    /// `examples/joins` with `JOIN_KIND=stream-table:left`.
    Faustus,
    /// `stream.leftJoin(builder.table(titles), joiner)`.
    KafkaStreams,
}

impl JoinEngine {
    fn name(self) -> &'static str {
        match self {
            JoinEngine::Faustus => "faustus",
            JoinEngine::KafkaStreams => "kafka-streams",
        }
    }

    fn command(self, args: &RunArgs, app: &str, clicks: &str, titles: &str, mode: &str) -> Command {
        let state = args.out.join("state").join(app);
        let output = format!("{app}-out");
        let mut cmd = match self {
            JoinEngine::Faustus => {
                let mut c = Command::new(args.root.join("target/release/examples/joins"));
                c.env("JOIN_APP", app)
                    .env("JOIN_KIND", "stream-table:left")
                    .env("JOIN_LEFT", clicks)
                    .env("JOIN_RIGHT", titles)
                    .env("JOIN_OUTPUT", &output);
                faustus_worker(&mut c, args, &state, mode);
                c
            }
            JoinEngine::KafkaStreams => streams_app(&args.root, "StreamTableJoin"),
        };
        peer_env(&mut cmd, args, app, clicks, mode, &state);
        cmd.env("CMP_TABLE", titles).env("CMP_OUTPUT", &output);
        cmd
    }
}

/// The stream–table join, both contenders, alternating them round by
/// round. A run is done when the group has committed every click and
/// every title.
pub fn run_join(
    args: &RunArgs,
    rt: &tokio::runtime::Runtime,
    admin: &Admin,
    samples: &mut Vec<Sample>,
    started: Instant,
) -> Result<(), String> {
    let n = args.engine_records;
    let titles = rt.block_on(titles(admin, &args.bootstrap))?;
    let clicks = rt.block_on(clicks(admin, &args.bootstrap, n, true))?;
    let mut runs: Vec<(JoinEngine, &str)> = Vec::new();
    for mode in ["at_least_once", "exactly_once"] {
        for e in [JoinEngine::Faustus, JoinEngine::KafkaStreams] {
            runs.push((e, mode));
        }
    }
    for round in 0..args.rounds {
        if round % 2 == 1 {
            runs.reverse();
        }
        for &(engine, mode) in &runs {
            let app = unique(&format!("cmp-j-{}", engine.name()));
            let cmd = engine.command(args, &app, &clicks, &titles, mode);
            let s = rt.block_on(count(
                args,
                admin,
                "join",
                engine.name(),
                cmd,
                &app,
                n + 1000,
                mode,
            ))?;
            samples.push(s);
            report::progress(samples.last().expect("pushed"), started);
            rt.block_on(delete_topic(admin, &format!("{app}-out")));
        }
    }
    rt.block_on(delete_topic(admin, &clicks));
    rt.block_on(delete_topic(admin, &titles));
    Ok(())
}

/// One counting run: spawn, watch the group's commits, stop, measure.
#[allow(clippy::too_many_arguments)]
async fn count(
    args: &RunArgs,
    admin: &Admin,
    part: &str,
    name: &str,
    cmd: Command,
    app: &str,
    n: u64,
    mode: &str,
) -> Result<Sample, String> {
    let what = format!("{name} {mode}");
    let child = measure::spawn(cmd, &what)?;
    let limit = Duration::from_secs(900);
    let mut first: Option<(Duration, u64)> = None;
    let done = loop {
        let committed: u64 = admin
            .group_offsets(app)
            .await
            .map(|o| o.values().map(|v| *v as u64).sum())
            .unwrap_or(0);
        let at = child.elapsed();
        if committed > 0 && first.is_none() {
            first = Some((at, committed));
        }
        if committed >= n {
            break at;
        }
        if child.has_exited() || at > limit {
            child.terminate();
            let err = child.finish().err().unwrap_or_default();
            return Err(format!("{what}: {committed} of {n} committed after {at:?}; {err}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    child.terminate();
    let (_, cost): (String, Cost) = child.finish()?;
    let _ = std::fs::remove_dir_all(args.out.join("state").join(app));
    let (t0, c0) = first.unwrap_or((Duration::ZERO, 0));
    let steady = if c0 < n && done > t0 {
        (n - c0) as f64 / (done - t0).as_secs_f64()
    } else {
        n as f64 / done.as_secs_f64()
    };
    Ok(Sample {
        part: part.into(),
        client: name.into(),
        setting: mode.into(),
        size: 1,
        records: n,
        rate: steady,
        mbps: 0.0,
        e2e_rate: n as f64 / done.as_secs_f64(),
        cost,
    })
}

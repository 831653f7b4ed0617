//! The peer comparison runner: Faustus against librdkafka (rdkafka crate),
//! Kafka's Java client (ProducerPerformance / ConsumerPerformance), Kafka
//! Streams and faust-streaming, on one broker, in one run.
//!
//! `benches/compare/run` builds every contender and calls `faustus-compare
//! run`; the `produce` and `consume` subcommands are the Rust contenders,
//! each run as a process of its own so the kernel's accounting of CPU and
//! peak RSS is theirs alone. See docs/benchmarks.md.

mod clients;
mod engine;
mod measure;
mod report;

use std::path::PathBuf;
use std::process::Command;

use clap::{Parser, Subcommand, ValueEnum};

use clients::{Timed, Work};
use measure::Cost;

#[derive(Debug, Parser)]
#[command(about = "Faustus against its peers, side by side")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
enum Client {
    Faustus,
    Rdkafka,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The whole comparison (what benches/compare/run calls).
    Run(RunArgs),
    /// One producer run; prints a JSON `Timed` line.
    Produce {
        #[arg(long, value_enum)]
        client: Client,
        #[command(flatten)]
        work: Work,
    },
    /// One consumer run; prints a JSON `Timed` line.
    Consume {
        #[arg(long, value_enum)]
        client: Client,
        #[arg(long)]
        partitions: i32,
        #[command(flatten)]
        work: Work,
    },
}

/// Settings of a full run.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// `bootstrap.servers` of the broker every contender uses.
    #[arg(long, env = "KAFKA_BOOTSTRAP")]
    pub bootstrap: String,
    /// The repository root (for the harness's `tool` and the built peers).
    #[arg(long)]
    pub root: PathBuf,
    /// Where results go (results.json, results.md, throughput.svg).
    #[arg(long)]
    pub out: PathBuf,
    /// Megabytes of values per client run (records = MB / value size).
    #[arg(long, default_value_t = 100)]
    pub volume_mb: u64,
    /// Rounds per contender (medians are taken over them).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Clicks counted by Faustus and Kafka Streams: enough that counting,
    /// not start-up or the 1 s commit interval, sets the rate.
    #[arg(long, default_value_t = 10_000_000)]
    pub engine_records: u64,
    /// Clicks counted by faust-streaming (it is slow: fewer).
    #[arg(long, default_value_t = 100_000)]
    pub faust_records: u64,
    /// The Python of the faust-streaming virtualenv (skipped when absent).
    #[arg(long)]
    pub faust_python: Option<PathBuf>,
    /// Only these parts: any of producer, consumer, engine, windowed, join.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "producer,consumer,engine,windowed,join"
    )]
    pub parts: Vec<String>,
}

/// One measured sample.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sample {
    /// producer, consumer, engine.
    pub part: String,
    /// faustus, rdkafka, java, kafka-streams, faust.
    pub client: String,
    /// Setting label, e.g. `100B 6p lz4` or `at_least_once`.
    pub setting: String,
    /// Value size (client parts).
    pub size: usize,
    /// Records handled.
    pub records: u64,
    /// Records per second over the timed span.
    pub rate: f64,
    /// Value MB per second over the timed span.
    pub mbps: f64,
    /// Records per second from the process's start to done (engines: start-up
    /// included; clients: same as `rate`).
    pub e2e_rate: f64,
    /// The process's cost.
    pub cost: Cost,
}

impl Sample {
    /// CPU seconds per million records.
    pub fn cpu_per_m(&self) -> f64 {
        self.cost.cpu * 1e6 / self.records as f64
    }
}

fn main() -> std::process::ExitCode {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run(args) => run(&args),
        Cmd::Produce { client, work } => one(client, &work, None),
        Cmd::Consume {
            client,
            partitions,
            work,
        } => one(client, &work, Some(partitions)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("faustus-compare: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A contender process's body: produce (`consume == None`) or consume.
fn one(client: Client, work: &Work, consume: Option<i32>) -> Result<(), String> {
    let timed = match (client, consume) {
        (Client::Rdkafka, None) => clients::rdkafka_produce(work)?,
        (Client::Rdkafka, Some(p)) => clients::rdkafka_consume(work, p)?,
        (Client::Faustus, c) => {
            let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
            rt.block_on(async {
                match c {
                    None => clients::faustus_produce(work).await,
                    Some(_) => clients::faustus_consume(work).await,
                }
            })?
        }
    };
    println!("{}", serde_json::to_string(&timed).map_err(|e| e.to_string())?);
    Ok(())
}

/// One client setting.
#[derive(Debug, Clone, Copy)]
struct Setting {
    size: usize,
    partitions: i32,
    compression: &'static str,
}

impl Setting {
    fn label(&self) -> String {
        let size = if self.size >= 1000 {
            format!("{}KB", self.size / 1000)
        } else {
            format!("{}B", self.size)
        };
        format!("{size} {}p {}", self.partitions, self.compression)
    }
}

const CLIENTS: [&str; 3] = ["faustus", "rdkafka", "java"];

fn run(args: &RunArgs) -> Result<(), String> {
    std::fs::create_dir_all(&args.out).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let admin = rt.block_on(engine::admin(&args.bootstrap))?;
    let mut samples: Vec<Sample> = Vec::new();
    let started = std::time::Instant::now();

    let settings: Vec<Setting> = [100usize, 1000]
        .iter()
        .flat_map(|&size| {
            [1, 6].into_iter().flat_map(move |partitions| {
                ["none", "lz4"].into_iter().map(move |compression| Setting {
                    size,
                    partitions,
                    compression,
                })
            })
        })
        .collect();

    for s in &settings {
        let records = args.volume_mb * 1_000_000 / s.size as u64;
        let label = s.label();
        let work = |topic: &str| Work {
            bootstrap: args.bootstrap.clone(),
            topic: topic.to_owned(),
            records,
            size: s.size,
            compression: s.compression.to_owned(),
        };
        if args.parts.iter().any(|p| p == "producer") {
            for round in 0..args.rounds {
                for client in order(&CLIENTS, round) {
                    let topic = rt.block_on(engine::fresh_topic(&admin, "cmp-p", s.partitions))?;
                    let (timed, cost) = produce(args, client, &work(&topic))?;
                    rt.block_on(engine::delete_topic(&admin, &topic));
                    samples.push(sample("producer", client, &label, s.size, &timed, cost));
                    report::progress(samples.last().expect("pushed"), started);
                }
            }
        }
        if args.parts.iter().any(|p| p == "consumer") {
            let topic = rt.block_on(engine::fresh_topic(&admin, "cmp-c", s.partitions))?;
            produce(args, "faustus", &work(&topic))?;
            for round in 0..args.rounds {
                for client in order(&CLIENTS, round) {
                    let (timed, cost) = consume(args, client, &work(&topic), s.partitions)?;
                    if timed.records < records {
                        return Err(format!("{client} consumed {} of {records}", timed.records));
                    }
                    samples.push(sample("consumer", client, &label, s.size, &timed, cost));
                    report::progress(samples.last().expect("pushed"), started);
                }
            }
            rt.block_on(engine::delete_topic(&admin, &topic));
        }
    }
    if args.parts.iter().any(|p| p == "engine") {
        engine::run_all(args, &rt, &admin, &mut samples, started)?;
    }
    if args.parts.iter().any(|p| p == "windowed") {
        engine::run_windowed(args, &rt, &admin, &mut samples, started)?;
    }
    if args.parts.iter().any(|p| p == "join") {
        engine::run_join(args, &rt, &admin, &mut samples, started)?;
    }
    report::write(args, &samples, started.elapsed().as_secs_f64())
}

/// The contenders of round `round`: forwards on even rounds, backwards on
/// odd ones (A B C, C B A, ...), so no one always runs first after a
/// topic's creation or always follows the same peer.
fn order<'a>(clients: &[&'a str], round: usize) -> Vec<&'a str> {
    let mut v = clients.to_vec();
    if round % 2 == 1 {
        v.reverse();
    }
    v
}

fn sample(part: &str, client: &str, setting: &str, size: usize, t: &Timed, cost: Cost) -> Sample {
    Sample {
        part: part.to_owned(),
        client: client.to_owned(),
        setting: setting.to_owned(),
        size,
        records: t.records,
        rate: t.records as f64 / t.secs,
        mbps: t.bytes as f64 / 1e6 / t.secs,
        e2e_rate: t.records as f64 / t.secs,
        cost,
    }
}

fn self_command(sub: &str, client: &str, w: &Work) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("own path"));
    cmd.args([sub, "--client", client])
        .args(["--bootstrap", &w.bootstrap, "--topic", &w.topic])
        .args(["--records", &w.records.to_string(), "--size", &w.size.to_string()])
        .args(["--compression", &w.compression]);
    cmd
}

fn java_tool(args: &RunArgs, tool: &str) -> Command {
    let mut cmd = Command::new(args.root.join("testcontainers/kafka"));
    cmd.args(["tool", tool])
        .env("KAFKA_TOOL_HEAP_OPTS", "-Xms512m -Xmx512m");
    cmd
}

fn parse_timed(out: &str, what: &str) -> Result<Timed, String> {
    let line = out.lines().rev().find(|l| l.starts_with('{'));
    line.and_then(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| format!("{what}: no result line in its output:\n{out}"))
}

fn produce(args: &RunArgs, client: &str, w: &Work) -> Result<(Timed, Cost), String> {
    let what = format!("{client} producer ({} B, {})", w.size, w.compression);
    if client != "java" {
        let (out, cost) = measure::run(self_command("produce", client, w), &what)?;
        return Ok((parse_timed(&out, &what)?, cost));
    }
    let mut cmd = java_tool(args, "producer-perf");
    cmd.args(["--topic", &w.topic, "--num-records", &w.records.to_string()])
        .args(["--record-size", &w.size.to_string(), "--throughput", "-1"])
        .args(["--producer-props", &format!("bootstrap.servers={}", w.bootstrap)])
        .args(["acks=all", "linger.ms=5", "batch.size=1000000"])
        .arg(format!("compression.type={}", w.compression));
    let (out, cost) = measure::run(cmd, &what)?;
    // The summary: "N records sent, R records/sec (M MB/sec), ..."
    let summary = out
        .lines()
        .rev()
        .find(|l| l.contains("records sent"))
        .ok_or_else(|| format!("{what}: no summary in its output:\n{out}"))?;
    let rate: f64 = summary
        .split(',')
        .nth(1)
        .and_then(|f| f.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{what}: unreadable summary {summary:?}"))?;
    Ok((
        Timed {
            records: w.records,
            bytes: w.records * w.size as u64,
            secs: w.records as f64 / rate,
        },
        cost,
    ))
}

fn consume(
    args: &RunArgs,
    client: &str,
    w: &Work,
    partitions: i32,
) -> Result<(Timed, Cost), String> {
    let what = format!("{client} consumer ({} B, {})", w.size, w.compression);
    if client != "java" {
        let mut cmd = self_command("consume", client, w);
        cmd.args(["--partitions", &partitions.to_string()]);
        let (out, cost) = measure::run(cmd, &what)?;
        return Ok((parse_timed(&out, &what)?, cost));
    }
    // A fresh group each run: a group that has committed would start at its
    // committed offsets, at the end.
    let group = engine::unique("cmp-java");
    let mut cmd = java_tool(args, "consumer-perf");
    cmd.args(["--bootstrap-server", &w.bootstrap, "--topic", &w.topic])
        .args(["--messages", &w.records.to_string(), "--group", &group])
        .args(["--timeout", "60000"]);
    let (out, cost) = measure::run(cmd, &what)?;
    // A header line of column names, then one line of values; fetch.time.ms
    // leaves out the group join, as our consumers (assign) have none.
    let mut lines = out.lines().filter(|l| l.contains(','));
    let header: Vec<&str> = lines
        .find(|l| l.contains("fetch.time.ms"))
        .ok_or_else(|| format!("{what}: no header in its output:\n{out}"))?
        .split(',')
        .map(str::trim)
        .collect();
    let values: Vec<&str> = lines
        .next()
        .ok_or_else(|| format!("{what}: no values in its output:\n{out}"))?
        .split(',')
        .map(str::trim)
        .collect();
    let col = |name: &str| -> Result<f64, String> {
        header
            .iter()
            .position(|h| *h == name)
            .and_then(|i| values.get(i))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{what}: no {name} in its output:\n{out}"))
    };
    let records = col("data.consumed.in.nMsg")? as u64;
    let mb = col("data.consumed.in.MB")?;
    Ok((
        Timed {
            records,
            bytes: (mb * 1024.0 * 1024.0) as u64,
            secs: col("fetch.time.ms")? / 1000.0,
        },
        cost,
    ))
}

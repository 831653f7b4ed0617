//! The `faustus` command-line tool: kcat-style produce and consume, topic
//! administration, and the demo.

mod format;

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Parser, Subcommand};
use faustus::wire::consumer::{Consumer, ConsumerConfig, Offset};
use faustus::wire::group::{GroupConfig, GroupConsumer, NoListener};
use faustus::wire::producer::{Producer, ProducerConfig, ProducerRecord};
use faustus::wire::{Admin, Client, ClientConfig, NewTopic, OffsetSpec, Properties};

use format::Format;

/// Faustus: Kafka stream processing for Rust.
#[derive(Debug, Parser)]
#[command(name = "faustus", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Conn {
    /// Bootstrap brokers, host:port[,host:port...].
    #[arg(short = 'b', long = "brokers", env = "KAFKA_BOOTSTRAP")]
    brokers: String,
    /// A client property by its Java name, e.g. -X compression.type=lz4.
    #[arg(short = 'X', value_name = "KEY=VALUE")]
    props: Vec<String>,
}

impl Conn {
    fn properties(&self) -> Result<Properties> {
        let mut p = Properties::new().set("bootstrap.servers", &self.brokers);
        for kv in &self.props {
            p.insert_pair(kv)?;
        }
        Ok(p)
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Produce one record per stdin line.
    Produce {
        #[command(flatten)]
        conn: Conn,
        /// Topic.
        #[arg(short = 't')]
        topic: String,
        /// Partition (default: the partitioner decides).
        #[arg(short = 'p')]
        partition: Option<i32>,
        /// Key delimiter: each line is KEY<SEP>VALUE.
        #[arg(short = 'K')]
        key_sep: Option<String>,
    },
    /// Consume records and print them.
    Consume {
        #[command(flatten)]
        conn: Conn,
        /// Topic (repeat -t for several topics with -G).
        #[arg(short = 't', required = true)]
        topic: Vec<String>,
        /// Join this consumer group (balanced consumption, commits offsets).
        #[arg(short = 'G')]
        group: Option<String>,
        /// Partition (default: all).
        #[arg(short = 'p')]
        partition: Option<i32>,
        /// Start: beginning, end, an offset, or -N for N before the end.
        #[arg(short = 'o', default_value = "beginning", allow_hyphen_values = true)]
        offset: String,
        /// Exit after this many records.
        #[arg(short = 'c')]
        count: Option<u64>,
        /// Exit at the end of every partition.
        #[arg(short = 'e')]
        exit_at_end: bool,
        /// Output format (kcat tokens: %t %p %o %k %s %T %h %K %S).
        #[arg(short = 'f')]
        format: Option<String>,
        /// Key delimiter for the default format: prints KEY<SEP>VALUE.
        #[arg(short = 'K')]
        key_sep: Option<String>,
    },
    /// Manage consumer groups.
    Groups {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        action: GroupAction,
    },
    /// Manage topics.
    Topics {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        action: TopicAction,
    },
    /// Round-trip records through Kafka and print what happened.
    Demo {
        #[command(flatten)]
        conn: Conn,
        /// How many records.
        #[arg(short = 'n', default_value_t = 100_000)]
        records: usize,
    },
}

#[derive(Debug, Subcommand)]
enum TopicAction {
    /// List topics with their partition counts.
    List,
    /// Create a topic.
    Create {
        /// Name.
        name: String,
        /// Partitions.
        #[arg(short = 'P', long, default_value_t = 1)]
        partitions: i32,
        /// Replication factor.
        #[arg(short = 'R', long, default_value_t = 1)]
        replication: i16,
        /// Topic config, e.g. -C cleanup.policy=compact.
        #[arg(short = 'C', value_name = "KEY=VALUE")]
        config: Vec<String>,
    },
    /// Delete a topic.
    Delete {
        /// Name.
        name: String,
    },
    /// Show partitions, leaders, replicas, offsets and configs.
    Describe {
        /// Name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum GroupAction {
    /// List groups with their state.
    List,
    /// Show a group's members, assignments, committed offsets and lag.
    Describe {
        /// Group id.
        group: String,
    },
    /// Delete an empty group.
    Delete {
        /// Group id.
        group: String,
    },
    /// Reset an empty group's committed offsets for a topic.
    ResetOffsets {
        /// Group id.
        group: String,
        /// Topic.
        #[arg(short = 't', long = "topic")]
        topic: String,
        /// To the log start.
        #[arg(long, group = "to")]
        to_earliest: bool,
        /// To the log end.
        #[arg(long, group = "to")]
        to_latest: bool,
        /// To this offset.
        #[arg(long, group = "to")]
        to_offset: Option<i64>,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("faustus: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Produce {
            conn,
            topic,
            partition,
            key_sep,
        } => produce(&conn, &topic, partition, key_sep.as_deref()).await,
        Command::Consume {
            conn,
            topic,
            group,
            partition,
            offset,
            count,
            exit_at_end,
            format,
            key_sep,
        } => {
            let fmt = match (format, key_sep) {
                (Some(f), _) => Format::parse(&f).map_err(anyhow::Error::msg)?,
                (None, Some(sep)) => {
                    Format::parse(&format!("%k{sep}%s\\n")).map_err(anyhow::Error::msg)?
                }
                (None, None) => Format::parse("%s\\n").map_err(anyhow::Error::msg)?,
            };
            match group {
                Some(g) => consume_group(&conn, &g, &topic, count, exit_at_end, &fmt).await,
                None => {
                    let [topic] = &topic[..] else {
                        bail!("several -t topics need -G GROUP");
                    };
                    consume(&conn, topic, partition, &offset, count, exit_at_end, &fmt).await
                }
            }
        }
        Command::Groups { conn, action } => groups(&conn, action).await,
        Command::Topics { conn, action } => topics(&conn, action).await,
        Command::Demo { conn, records } => demo(&conn, records).await,
    }
}

async fn produce(
    conn: &Conn,
    topic: &str,
    partition: Option<i32>,
    sep: Option<&str>,
) -> Result<()> {
    let producer = Producer::connect(ProducerConfig::from_properties(&conn.properties()?)?).await?;
    let stdin = std::io::stdin();
    let mut pending = Vec::new();
    let mut sent = 0u64;
    for line in stdin.lock().lines() {
        let line = line.context("reading stdin")?;
        let mut rec = ProducerRecord::new(topic);
        match sep.and_then(|s| line.split_once(s)) {
            Some((k, v)) => rec = rec.key(k.to_owned()).value(v.to_owned()),
            None if sep.is_some() => bail!("line {} has no key delimiter: {line:?}", sent + 1),
            None => rec = rec.value(line),
        }
        if let Some(p) = partition {
            rec = rec.partition(p);
        }
        pending.push(producer.send(rec).await?);
        sent += 1;
        if pending.len() >= 10_000 {
            for d in pending.drain(..) {
                d.await?;
            }
        }
    }
    for d in pending {
        d.await?;
    }
    producer.close().await?;
    eprintln!("faustus: produced {sent} records to {topic}");
    Ok(())
}

fn parse_start(s: &str) -> Result<(Option<Offset>, Option<i64>)> {
    Ok(match s {
        "beginning" => (Some(Offset::Beginning), None),
        "end" => (Some(Offset::End), None),
        n => {
            let v: i64 = n
                .parse()
                .with_context(|| format!("-o {n}: expected beginning, end or a number"))?;
            if v < 0 {
                (None, Some(-v))
            } else {
                (Some(Offset::At(v)), None)
            }
        }
    })
}

async fn consume(
    conn: &Conn,
    topic: &str,
    partition: Option<i32>,
    offset: &str,
    count: Option<u64>,
    exit_at_end: bool,
    fmt: &Format,
) -> Result<()> {
    let props = conn.properties()?;
    let cfg = ConsumerConfig::from_properties(&props)?;
    let read_committed = cfg.read_committed;
    let mut consumer = Consumer::connect(cfg).await?;
    let parts: Vec<i32> = partition.into_iter().collect();
    let (start, from_end) = parse_start(offset)?;
    consumer
        .assign(topic, &parts, start.unwrap_or(Offset::End))
        .await?;
    let admin = Admin::new(consumer.client().clone());
    let ends = admin
        .list_offsets(topic, &parts, OffsetSpec::Latest, read_committed)
        .await?;
    if let Some(back) = from_end {
        let starts = admin
            .list_offsets(topic, &parts, OffsetSpec::Earliest, false)
            .await?;
        for tp in consumer.assignment() {
            let end = ends.get(&tp.partition).copied().unwrap_or(0);
            let begin = starts.get(&tp.partition).copied().unwrap_or(0);
            consumer.seek(&tp, Offset::At((end - back).max(begin)))?;
        }
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut printed = 0u64;
    let done = |c: &Consumer| {
        exit_at_end
            && c.assignment().iter().all(|tp| {
                c.position(tp).unwrap_or(-1) >= ends.get(&tp.partition).copied().unwrap_or(0)
            })
    };
    loop {
        if count.is_some_and(|c| printed >= c) || done(&consumer) {
            break;
        }
        'parts: for part in consumer.poll().await? {
            for rec in part.records() {
                if count.is_some_and(|c| printed >= c) {
                    break 'parts;
                }
                let rec = rec?;
                fmt.render(&mut out, part.topic(), part.partition(), &rec)?;
                printed += 1;
            }
        }
        out.flush()?;
    }
    out.flush()?;
    Ok(())
}

/// Balanced consumption in a group (kcat's -G): prints records, commits
/// offsets, and with -e exits once every assigned partition is at its end.
async fn consume_group(
    conn: &Conn,
    group: &str,
    topics: &[String],
    count: Option<u64>,
    exit_at_end: bool,
    fmt: &Format,
) -> Result<()> {
    let mut props = conn.properties()?;
    props.insert("group.id", group);
    if props.get("auto.offset.reset").is_none() {
        props.insert("auto.offset.reset", "earliest");
    }
    let cfg = GroupConfig::from_properties(&props)?;
    let read_committed = cfg.consumer.read_committed;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let mut consumer = GroupConsumer::subscribe(cfg, &names, NoListener).await?;
    let admin = Admin::new(Client::connect(ClientConfig::from_properties(&props)?).await?);
    let mut ends: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for t in topics {
        for (p, end) in admin
            .list_offsets(t, &[], OffsetSpec::Latest, read_committed)
            .await?
        {
            ends.insert((t.clone(), p), end);
        }
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut printed = 0u64;
    let mut positions: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut known = faustus::wire::group::membership::Partitions::new();
    loop {
        if count.is_some_and(|c| printed >= c) {
            break;
        }
        let fetched = consumer.poll().await?;
        let assignment = consumer.assignment();
        if exit_at_end && assignment != known {
            positions.extend(
                consumer
                    .fetch_committed(&assignment)
                    .await?
                    .into_iter()
                    .filter(|(_, off)| *off >= 0),
            );
            known = assignment.clone();
        }
        'parts: for part in fetched {
            positions.insert(
                (part.topic().to_owned(), part.partition()),
                part.next_offset(),
            );
            for rec in part.records() {
                if count.is_some_and(|c| printed >= c) {
                    break 'parts;
                }
                fmt.render(&mut out, part.topic(), part.partition(), &rec?)?;
                printed += 1;
            }
        }
        out.flush()?;
        let at_end = !assignment.is_empty()
            && assignment.iter().all(|(t, ps)| {
                ps.iter().all(|p| {
                    let key = (t.clone(), *p);
                    positions.get(&key).copied().unwrap_or(0)
                        >= ends.get(&key).copied().unwrap_or(0)
                })
            });
        if exit_at_end && at_end {
            break;
        }
    }
    out.flush()?;
    consumer.commit().await?;
    consumer.close().await?;
    Ok(())
}

async fn groups(conn: &Conn, action: GroupAction) -> Result<()> {
    let admin =
        Admin::new(Client::connect(ClientConfig::from_properties(&conn.properties()?)?).await?);
    match action {
        GroupAction::List => {
            for g in admin.list_groups().await? {
                println!("{}\t{}\t{}", g.group_id, g.protocol_type, g.state);
            }
        }
        GroupAction::Describe { group } => {
            let d = admin.describe_group(&group).await?;
            println!(
                "group {}: {} ({} members, assignor {})",
                d.group_id,
                d.state,
                d.members.len(),
                d.protocol
            );
            for m in &d.members {
                println!(
                    "  member {}{}\tclient {}\thost {}\tpartitions {:?}",
                    m.member_id,
                    m.instance_id
                        .as_ref()
                        .map(|i| format!(" (instance {i})"))
                        .unwrap_or_default(),
                    m.client_id,
                    m.host,
                    m.assignment
                );
            }
            let offsets = admin.group_offsets(&group).await?;
            let mut ends: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
            for ((t, p), off) in &offsets {
                if !ends.contains_key(t) {
                    ends.insert(
                        t.clone(),
                        admin
                            .list_offsets(t, &[], OffsetSpec::Latest, false)
                            .await?,
                    );
                }
                let end = ends[t].get(p).copied().unwrap_or(0);
                println!("  {t}-{p}\tcommitted {off}\tend {end}\tlag {}", end - off);
            }
        }
        GroupAction::Delete { group } => {
            admin.delete_group(&group).await?;
            println!("deleted group {group}");
        }
        GroupAction::ResetOffsets {
            group,
            topic,
            to_earliest,
            to_latest,
            to_offset,
        } => {
            let target: BTreeMap<i32, i64> = if to_earliest {
                admin
                    .list_offsets(&topic, &[], OffsetSpec::Earliest, false)
                    .await?
            } else if to_latest {
                admin
                    .list_offsets(&topic, &[], OffsetSpec::Latest, false)
                    .await?
            } else if let Some(o) = to_offset {
                admin
                    .describe_topic(&topic)
                    .await?
                    .partitions
                    .iter()
                    .map(|p| (p.id, o))
                    .collect()
            } else {
                bail!("reset-offsets needs --to-earliest, --to-latest or --to-offset N");
            };
            let offsets = target
                .iter()
                .map(|(p, o)| ((topic.clone(), *p), *o))
                .collect();
            admin.set_group_offsets(&group, &offsets).await?;
            for (p, o) in target {
                println!("{group} {topic}-{p} -> {o}");
            }
        }
    }
    Ok(())
}

async fn topics(conn: &Conn, action: TopicAction) -> Result<()> {
    let client = Client::connect(ClientConfig::from_properties(&conn.properties()?)?).await?;
    let admin = Admin::new(client);
    match action {
        TopicAction::List => {
            for t in admin.list_topics().await? {
                println!(
                    "{}\t{} partitions{}",
                    t.name,
                    t.partitions.len(),
                    if t.internal { "\tinternal" } else { "" }
                );
            }
        }
        TopicAction::Create {
            name,
            partitions,
            replication,
            config,
        } => {
            let mut t = NewTopic::new(&name, partitions, replication);
            for kv in &config {
                let (k, v) = kv
                    .split_once('=')
                    .with_context(|| format!("-C {kv}: expected key=value"))?;
                t = t.config(k, v);
            }
            admin.create_topic(t, false).await?;
            println!("created {name} ({partitions} partitions, replication {replication})");
        }
        TopicAction::Delete { name } => {
            if let Some(Err(e)) = admin.delete_topics(&[&name]).await?.pop() {
                return Err(e.into());
            }
            println!("deleted {name}");
        }
        TopicAction::Describe { name } => {
            let t = admin.describe_topic(&name).await?;
            let starts = admin
                .list_offsets(&name, &[], OffsetSpec::Earliest, false)
                .await?;
            let ends = admin
                .list_offsets(&name, &[], OffsetSpec::Latest, false)
                .await?;
            println!("topic {name}: {} partitions", t.partitions.len());
            for p in &t.partitions {
                println!(
                    "  partition {}\tleader {}\treplicas {:?}\tisr {:?}\toffsets {}..{}",
                    p.id,
                    p.leader,
                    p.replicas,
                    p.isr,
                    starts.get(&p.id).copied().unwrap_or(-1),
                    ends.get(&p.id).copied().unwrap_or(-1)
                );
            }
            for (k, v) in admin.describe_topic_config(&name).await? {
                println!("  {k}={}", v.unwrap_or_default());
            }
        }
    }
    Ok(())
}

/// The demo: produce records keyed by user, read them back, and report.
async fn demo(conn: &Conn, n: usize) -> Result<()> {
    let props = conn.properties()?;
    let topic = format!("faustus-demo-{}", std::process::id());
    let client = Client::connect(ClientConfig::from_properties(&props)?).await?;
    let admin = Admin::new(client.clone());
    admin
        .create_topic(NewTopic::new(&topic, 6, 1), true)
        .await?;
    println!("demo: created topic {topic} with 6 partitions");

    let producer = Producer::with_client(client.clone(), ProducerConfig::from_properties(&props)?);
    let started = Instant::now();
    let mut pending = Vec::with_capacity(n);
    for i in 0..n {
        let rec = ProducerRecord::new(&topic)
            .key(format!("user-{}", i % 1000))
            .value(format!("{{\"click\":{i},\"url\":\"/page/{}\"}}", i % 50));
        pending.push(producer.send(rec).await?);
    }
    let mut per_partition: BTreeMap<i32, u64> = BTreeMap::new();
    for d in pending {
        *per_partition.entry(d.await?.partition).or_default() += 1;
    }
    let took = started.elapsed();
    producer.close().await?;
    println!(
        "demo: produced {n} records in {:.2}s ({:.0} records/s), idempotent, acks=all",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
    println!("demo: per partition: {per_partition:?}");

    let mut consumer = Consumer::with_client(client, ConsumerConfig::from_properties(&props)?);
    consumer.assign(&topic, &[], Offset::Beginning).await?;
    let started = Instant::now();
    let mut got = 0usize;
    let mut first = None;
    while got < n {
        for part in consumer.poll().await? {
            for rec in part.records() {
                let rec = rec?;
                if first.is_none() {
                    first = Some(format!(
                        "{}-{}@{} key={} value={}",
                        part.topic(),
                        part.partition(),
                        rec.offset,
                        String::from_utf8_lossy(rec.key().unwrap_or_default()),
                        String::from_utf8_lossy(rec.value().unwrap_or_default())
                    ));
                }
                got += 1;
            }
        }
    }
    let took = started.elapsed();
    println!(
        "demo: consumed {got} records in {:.2}s ({:.0} records/s)",
        took.as_secs_f64(),
        got as f64 / took.as_secs_f64()
    );
    if let Some(f) = first {
        println!("demo: first record: {f}");
    }
    admin.delete_topics(&[&topic]).await?;
    println!("demo: round trip of {got} / {n} records through {topic}: ok");
    if got != n {
        bail!("expected {n} records, got {got}");
    }
    Ok(())
}

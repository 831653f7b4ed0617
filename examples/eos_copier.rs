//! Exactly-once copy from one topic to another, transforming each value
//! (upper-casing it): consume with a group, produce in a transaction, and
//! commit the consumed offsets in the same transaction. A crash at any point
//! leaves the output with every input record exactly once, as read by
//! read_committed consumers.
//!
//! ```sh
//! cargo run --example eos_copier -- --bootstrap 127.0.0.1:9092 \
//!     --input in --output out --group copier --transactional-id copier-1
//! ```
//!
//! Options: `--records-per-txn N` (500), `--idle-exit-ms MS` (exit once
//! nothing arrived for that long; default: run until killed),
//! `--session-timeout-ms MS` (the group's `session.timeout.ms`),
//! `--at-least-once` (plain idempotent producer and group commits after each
//! batch: the comparison point of the benchmark).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use faustus_wire::consumer::{Offset, TopicPartition};
use faustus_wire::group::membership::Partitions;
use faustus_wire::group::{GroupConfig, GroupConsumer, RebalanceListener};
use faustus_wire::producer::txn::TxnError;
use faustus_wire::producer::{Producer, ProducerConfig, ProducerRecord, TransactionalProducer};
use faustus_wire::{Error, Properties};

struct Args {
    bootstrap: String,
    input: String,
    output: String,
    group: String,
    transactional_id: String,
    per_txn: usize,
    idle_exit: Option<Duration>,
    at_least_once: bool,
    session_timeout_ms: Option<String>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        bootstrap: String::new(),
        input: String::new(),
        output: String::new(),
        group: String::new(),
        transactional_id: String::new(),
        per_txn: 500,
        idle_exit: None,
        at_least_once: false,
        session_timeout_ms: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--at-least-once" {
            a.at_least_once = true;
            continue;
        }
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--bootstrap" => a.bootstrap = value,
            "--input" => a.input = value,
            "--output" => a.output = value,
            "--group" => a.group = value,
            "--transactional-id" => a.transactional_id = value,
            "--session-timeout-ms" => a.session_timeout_ms = Some(value),
            "--records-per-txn" => a.per_txn = value.parse().map_err(|e| format!("{flag}: {e}"))?,
            "--idle-exit-ms" => {
                a.idle_exit = Some(Duration::from_millis(
                    value.parse().map_err(|e| format!("{flag}: {e}"))?,
                ))
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    for (name, v) in [
        ("--bootstrap", &a.bootstrap),
        ("--input", &a.input),
        ("--output", &a.output),
        ("--group", &a.group),
    ] {
        if v.is_empty() {
            return Err(format!("{name} is required"));
        }
    }
    if !a.at_least_once && a.transactional_id.is_empty() {
        return Err("--transactional-id is required (or --at-least-once)".into());
    }
    Ok(a)
}

/// The transformation: upper-case the value.
fn transform(v: Option<&[u8]>) -> Option<Vec<u8>> {
    v.map(<[u8]>::to_ascii_uppercase)
}

/// Notes partitions revoked or lost: the open transaction then holds
/// records of positions the consumer has moved away from, so it must be
/// aborted before anything else is sent.
struct Moved(Arc<AtomicBool>);

impl RebalanceListener for Moved {
    async fn revoked(&mut self, _: &[TopicPartition]) {
        self.0.store(true, Ordering::Release);
    }
    async fn lost(&mut self, _: &[TopicPartition]) {
        self.0.store(true, Ordering::Release);
    }
}

enum Sink {
    Exactly(TransactionalProducer),
    AtLeast(Producer),
}

struct Copier {
    consumer: GroupConsumer<Moved>,
    moved: Arc<AtomicBool>,
    sink: Sink,
    output: String,
    /// Next offsets of what the open transaction (or batch) consumed.
    positions: BTreeMap<TopicPartition, i64>,
    in_txn: usize,
    copied: usize,
}

impl Copier {
    async fn open(&mut self) -> Result<(), Error> {
        if let Sink::Exactly(p) = &self.sink {
            if self.in_txn == 0 {
                p.begin().await?;
            }
        }
        Ok(())
    }

    async fn send(&mut self, rec: ProducerRecord) -> Result<(), Error> {
        // Deliveries are checked at commit: a failed record fails the
        // transaction (or the flush).
        let _ = match &self.sink {
            Sink::Exactly(p) => p.send(rec).await?,
            Sink::AtLeast(p) => p.send(rec).await?,
        };
        Ok(())
    }

    /// Commits the open transaction with its offsets; on an abortable error,
    /// aborts and rewinds the consumer to what was committed (and returns
    /// false: the records of the current poll are to be dropped).
    async fn commit(&mut self) -> Result<bool, Error> {
        if self.in_txn == 0 {
            return Ok(true);
        }
        let result = match &self.sink {
            Sink::Exactly(p) => {
                let r = async {
                    p.send_offsets_to_transaction(&self.positions, &self.consumer.group_metadata())
                        .await?;
                    p.commit().await
                }
                .await;
                if let Err(Error::Transaction {
                    error: TxnError::Abortable(why),
                    ..
                }) = &r
                {
                    eprintln!("eos_copier: aborting: {why}");
                    p.abort().await?;
                    self.rewind().await?;
                    self.in_txn = 0;
                    self.positions.clear();
                    return Ok(false);
                }
                r
            }
            Sink::AtLeast(p) => {
                p.flush().await?;
                self.consumer.commit_offsets(&self.positions).await
            }
        };
        result?;
        self.copied += self.in_txn;
        self.in_txn = 0;
        self.positions.clear();
        Ok(true)
    }

    /// Aborts the open transaction and rewinds (after a rebalance).
    async fn abort(&mut self) -> Result<(), Error> {
        if let Sink::Exactly(p) = &self.sink {
            if self.in_txn > 0 {
                p.abort().await?;
            }
        }
        self.in_txn = 0;
        self.positions.clear();
        self.rewind().await
    }

    /// Back to the group's committed offsets (or the beginning).
    async fn rewind(&mut self) -> Result<(), Error> {
        let owned: Partitions = self.consumer.assignment();
        let committed = self.consumer.fetch_committed(&owned).await?;
        for (topic, parts) in &owned {
            for &p in parts {
                let tp = TopicPartition {
                    topic: topic.as_str().into(),
                    partition: p,
                };
                let to = match committed.get(&(topic.clone(), p)) {
                    Some(&off) if off >= 0 => Offset::At(off),
                    _ => Offset::Beginning,
                };
                self.consumer.seek(&tp, to)?;
            }
        }
        Ok(())
    }
}

async fn run(a: Args) -> Result<(), Error> {
    let base = Properties::new().set("bootstrap.servers", &a.bootstrap);
    let mut consumer_props = base
        .clone()
        .set("group.id", &a.group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest");
    if let Some(ms) = &a.session_timeout_ms {
        consumer_props.insert("session.timeout.ms", ms.as_str());
        consumer_props.insert("heartbeat.interval.ms", "1000");
    }
    let moved = Arc::new(AtomicBool::new(false));
    let consumer = GroupConsumer::subscribe(
        GroupConfig::from_properties(&consumer_props)?,
        &[&a.input],
        Moved(moved.clone()),
    )
    .await?;
    let sink = if a.at_least_once {
        Sink::AtLeast(Producer::connect(ProducerConfig::from_properties(&base)?).await?)
    } else {
        let props = base
            .clone()
            .set("transactional.id", &a.transactional_id)
            .set("transaction.timeout.ms", "10000");
        let p = TransactionalProducer::connect(ProducerConfig::from_properties(&props)?).await?;
        p.init_transactions().await?;
        Sink::Exactly(p)
    };
    let mut c = Copier {
        consumer,
        moved,
        sink,
        output: a.output.clone(),
        positions: BTreeMap::new(),
        in_txn: 0,
        copied: 0,
    };
    let mut last_data = Instant::now();
    loop {
        let parts = c.consumer.poll().await?;
        if c.moved.swap(false, Ordering::AcqRel) {
            // A rebalance: the open transaction's records may be read again
            // (by us from the committed offsets, or by another member).
            eprintln!("eos_copier: rebalanced; aborting the open transaction");
            c.abort().await?;
            continue;
        }
        if parts.is_empty() {
            c.commit().await?;
            if a.idle_exit.is_some_and(|idle| last_data.elapsed() >= idle) {
                break;
            }
            continue;
        }
        last_data = Instant::now();
        'poll: for part in parts {
            for rec in part.records() {
                let rec = rec?;
                c.open().await?;
                let mut out = ProducerRecord::new(&c.output);
                out.key = rec.key().map(bytes::Bytes::copy_from_slice);
                out.value = transform(rec.value()).map(bytes::Bytes::from);
                out.timestamp = Some(rec.timestamp);
                c.send(out).await?;
                c.positions
                    .insert(part.topic_partition().clone(), rec.offset + 1);
                c.in_txn += 1;
                if c.in_txn >= a.per_txn && !c.commit().await? {
                    break 'poll;
                }
            }
        }
    }
    eprintln!("eos_copier: idle; copied {} records", c.copied);
    c.consumer.close().await
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("eos_copier: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(a).await {
        eprintln!("eos_copier: {e}");
        std::process::exit(1);
    }
}

//! `faustus consume` (kcat's `-C`, and `-G` for a consumer group): prints
//! records as `-f`, `-K`/`-D` or `-J` say, from where `-o` says, until `-c`
//! records, the end (`-e`), a stop timestamp (`-o e@TS`) or a signal.
//!
//! In a group, what was printed is committed when partitions are revoked and
//! when the consumer leaves, on every clean exit (SIGINT and SIGTERM
//! included): a member that takes the partitions over starts after the last
//! record printed here, as with kcat's and Java's consumers.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context as _, Result};
use faustus::wire::consumer::{Consumer, ConsumerConfig, Fetched, Offset, TopicPartition};
use faustus::wire::group::{GroupConfig, GroupConsumer, RebalanceListener};
use faustus::wire::{Admin, OffsetSpec, Properties};

use crate::format::{Printer, Source};

/// What `consume` was asked for.
#[derive(Debug)]
pub(crate) struct Consume {
    pub(crate) topics: Vec<String>,
    pub(crate) partition: Option<i32>,
    pub(crate) offsets: Vec<String>,
    pub(crate) count: Option<u64>,
    pub(crate) exit_at_end: bool,
    pub(crate) printer: Printer,
    pub(crate) quiet: bool,
    pub(crate) unbuffered: bool,
}

/// Where to start, as kcat's `-o` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    Beginning,
    End,
    Stored,
    At(i64),
    /// N records before each partition's end.
    FromEnd(i64),
    Timestamp(i64),
}

/// The `-o` options: a start and an optional stop timestamp (`e@TS`).
fn parse_offsets(specs: &[String]) -> Result<(Option<Start>, Option<i64>)> {
    let mut start = None;
    let mut stop = None;
    for s in specs {
        let ts = |t: &str| {
            t.parse::<i64>()
                .with_context(|| format!("-o {s}: expected a timestamp in ms"))
        };
        if let Some(t) = s.strip_prefix("e@") {
            stop = Some(ts(t)?);
            continue;
        }
        start = Some(match s.as_str() {
            "beginning" | "earliest" | "smallest" => Start::Beginning,
            "end" | "latest" | "largest" => Start::End,
            "stored" => Start::Stored,
            s if s.starts_with("s@") => Start::Timestamp(ts(&s[2..])?),
            n => match n.parse::<i64>() {
                Ok(v) if v < 0 => Start::FromEnd(-v),
                Ok(v) => Start::At(v),
                Err(_) => bail!(
                    "-o {n}: expected beginning, end, stored, an offset, -N (N before the end), s@TS or e@TS"
                ),
            },
        });
    }
    Ok((start, stop))
}

/// Set by the first SIGINT or SIGTERM; a second one exits at once.
fn stop_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        loop {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            if set.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
        }
    });
    flag
}

/// Buffered stdout; a closed pipe (`| head`) ends the run quietly.
struct Out {
    w: std::io::BufWriter<std::io::StdoutLock<'static>>,
    unbuffered: bool,
    closed: bool,
}

impl Out {
    fn new(unbuffered: bool) -> Self {
        Self {
            w: std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock()),
            unbuffered,
            closed: false,
        }
    }

    fn print(
        &mut self,
        p: &Printer,
        src: &Source<'_>,
        rec: &faustus::wire::record::Record<'_>,
    ) -> Result<()> {
        let r = p.render(&mut self.w, src, rec).and_then(|()| {
            if self.unbuffered {
                self.w.flush()
            } else {
                Ok(())
            }
        });
        self.check(r)
    }

    fn flush(&mut self) -> Result<()> {
        let r = self.w.flush();
        self.check(r)
    }

    fn check(&mut self, r: std::io::Result<()>) -> Result<()> {
        match r {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            r => r.context("writing to stdout"),
        }
    }
}

/// Prints one fetched partition's records, stopping at `stop` (a
/// timestamp) or when `left` runs out. Returns the next offset after the
/// last record printed, and whether the stop timestamp was reached.
fn print_part(
    part: &Fetched,
    broker: i32,
    args: &Consume,
    stop: Option<i64>,
    left: &mut Option<u64>,
    out: &mut Out,
) -> Result<(i64, bool)> {
    let mut next = part.start_offset();
    for batch in part.batches() {
        let src = Source {
            topic: part.topic(),
            partition: part.partition(),
            log_append_time: batch.is_log_append_time(),
            broker,
        };
        let records = batch.records().map_err(|e| record_error(part, e))?;
        for rec in records {
            let rec = rec.map_err(|e| record_error(part, e))?;
            if rec.offset < part.start_offset() {
                continue;
            }
            if stop.is_some_and(|ts| rec.timestamp >= ts) {
                return Ok((rec.offset, true));
            }
            if *left == Some(0) || out.closed {
                return Ok((next, false));
            }
            out.print(&args.printer, &src, &rec)?;
            next = rec.offset + 1;
            if let Some(l) = left.as_mut() {
                *l -= 1;
            }
        }
    }
    Ok((part.next_offset(), false))
}

fn record_error(part: &Fetched, e: faustus::wire::record::RecordError) -> anyhow::Error {
    anyhow::anyhow!(
        "{} [{}] at offset {}: {e}",
        part.topic(),
        part.partition(),
        e.offset()
    )
}

fn reached_end(args: &Consume, tp: &TopicPartition, at: i64, last: bool) {
    if !args.quiet {
        eprintln!(
            "% Reached end of topic {} [{}] at offset {at}{}",
            tp.topic,
            tp.partition,
            if last { ": exiting" } else { "" }
        );
    }
}

/// Consumes assigned partitions of one topic (kcat's `-C`).
pub(crate) async fn consume(props: &Properties, args: Consume) -> Result<()> {
    let [topic] = &args.topics[..] else {
        bail!("several topics need a group: add -G GROUP");
    };
    let (start, stop) = parse_offsets(&args.offsets)?;
    let cfg = ConsumerConfig::from_properties(props)?;
    let read_committed = cfg.read_committed;
    let mut consumer = Consumer::connect(cfg).await?;
    let admin = Admin::new(consumer.client().clone());
    let parts: Vec<i32> = args.partition.into_iter().collect();
    let ends = admin
        .list_offsets(topic, &parts, OffsetSpec::Latest, read_committed)
        .await?;
    let first = match start.unwrap_or(Start::Beginning) {
        Start::Beginning | Start::FromEnd(_) => Offset::Beginning,
        Start::End => Offset::End,
        Start::At(n) => Offset::At(n),
        Start::Timestamp(t) => Offset::Timestamp(t),
        Start::Stored => bail!("-o stored reads a group's committed offsets: add -G GROUP"),
    };
    consumer.assign(topic, &parts, first).await?;
    if let Some(Start::FromEnd(back)) = start {
        let begins = admin
            .list_offsets(topic, &parts, OffsetSpec::Earliest, false)
            .await?;
        for tp in consumer.assignment() {
            let end = ends.get(&tp.partition).copied().unwrap_or(0);
            let begin = begins.get(&tp.partition).copied().unwrap_or(0);
            consumer.seek(&tp, Offset::At((end - back).max(begin)))?;
        }
    }
    let stopping = stop_flag();
    let mut out = Out::new(args.unbuffered);
    let mut left = args.count;
    let mut done: BTreeSet<i32> = BTreeSet::new();
    let all = consumer.assignment();
    loop {
        if args.exit_at_end {
            for tp in &all {
                let end = ends.get(&tp.partition).copied().unwrap_or(0);
                if !done.contains(&tp.partition) && consumer.position(tp).is_some_and(|p| p >= end)
                {
                    done.insert(tp.partition);
                    reached_end(&args, tp, end, done.len() == all.len());
                }
            }
        }
        if done.len() == all.len()
            || left == Some(0)
            || out.closed
            || stopping.load(Ordering::SeqCst)
        {
            break;
        }
        for part in consumer.poll().await? {
            let broker = consumer
                .client()
                .leader_of(part.topic(), part.partition())
                .unwrap_or(-1);
            let (next, stopped) = print_part(&part, broker, &args, stop, &mut left, &mut out)?;
            if stopped {
                consumer.pause(part.topic_partition());
                if done.insert(part.partition()) {
                    reached_end(&args, part.topic_partition(), next, done.len() == all.len());
                }
            }
        }
        out.flush()?;
    }
    out.flush()?;
    Ok(())
}

/// What this member printed, per partition: the offsets to commit.
#[derive(Debug, Clone, Default)]
struct Printed {
    next: Arc<Mutex<BTreeMap<TopicPartition, i64>>>,
    group: String,
    quiet: bool,
    /// `enable.auto.commit`: off, nothing is committed on revocation (as
    /// librdkafka).
    auto_commit: bool,
}

impl Printed {
    fn positions(&self) -> std::sync::MutexGuard<'_, BTreeMap<TopicPartition, i64>> {
        self.next
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn list(ps: &[TopicPartition]) -> String {
    ps.iter()
        .map(|tp| format!("{} [{}]", tp.topic, tp.partition))
        .collect::<Vec<_>>()
        .join(", ")
}

impl RebalanceListener for Printed {
    async fn revoked(&mut self, partitions: &[TopicPartition]) {
        if !self.quiet && !partitions.is_empty() {
            eprintln!(
                "% Group {} rebalanced: revoked: {}",
                self.group,
                list(partitions)
            );
        }
    }

    fn revoked_offsets(
        &mut self,
        partitions: &[TopicPartition],
    ) -> Option<BTreeMap<TopicPartition, i64>> {
        let mut next = self.positions();
        if !self.auto_commit {
            return Some(BTreeMap::new());
        }
        Some(
            partitions
                .iter()
                .filter_map(|tp| next.remove(tp).map(|o| (tp.clone(), o)))
                .collect(),
        )
    }

    async fn assigned(&mut self, partitions: &[TopicPartition]) {
        if !self.quiet && !partitions.is_empty() {
            eprintln!(
                "% Group {} rebalanced: assigned: {}",
                self.group,
                list(partitions)
            );
        }
    }

    async fn lost(&mut self, partitions: &[TopicPartition]) {
        let mut next = self.positions();
        for tp in partitions {
            next.remove(tp);
        }
    }
}

/// Balanced consumption in a group (kcat's `-G`).
pub(crate) async fn consume_group(props: &Properties, group: &str, args: Consume) -> Result<()> {
    let (start, stop) = parse_offsets(&args.offsets)?;
    let mut props = props.clone();
    props.insert("group.id", group);
    // As kcat: -o picks where a partition with no committed offset starts
    // (librdkafka's default, the end, otherwise).
    match start {
        Some(Start::Beginning) => props.insert("auto.offset.reset", "earliest"),
        Some(Start::End) => props.insert("auto.offset.reset", "latest"),
        None | Some(Start::Stored) => {
            if props.get("auto.offset.reset").is_none() {
                props.insert("auto.offset.reset", "latest");
            }
        }
        Some(other) => bail!("-o {other:?} does not apply with -G: use beginning, end or stored"),
    }
    let cfg = GroupConfig::from_properties(&props)?;
    let read_committed = cfg.consumer.read_committed;
    let printed = Printed {
        group: group.to_owned(),
        quiet: args.quiet,
        auto_commit: cfg.auto_commit,
        ..Printed::default()
    };
    let names: Vec<&str> = args.topics.iter().map(String::as_str).collect();
    let mut consumer = GroupConsumer::subscribe(cfg, &names, printed.clone()).await?;
    let admin = Admin::new(consumer.client().clone());
    let mut ends: BTreeMap<(String, i32), i64> = BTreeMap::new();
    if args.exit_at_end {
        for t in &args.topics {
            for (p, end) in admin
                .list_offsets(t, &[], OffsetSpec::Latest, read_committed)
                .await?
            {
                ends.insert((t.clone(), p), end);
            }
        }
    }
    let stopping = stop_flag();
    let mut out = Out::new(args.unbuffered);
    let mut left = args.count;
    let mut stopped: BTreeSet<TopicPartition> = BTreeSet::new();
    // Every way out of the loop, errors included, goes through `close`:
    // what was printed is committed even when the run fails.
    let result: Result<()> = async {
        loop {
            if left == Some(0) || out.closed || stopping.load(Ordering::SeqCst) {
                return Ok(());
            }
            let fetched = consumer.poll().await?;
            for part in &fetched {
                let broker = consumer
                    .client()
                    .leader_of(part.topic(), part.partition())
                    .unwrap_or(-1);
                let (next, hit_stop) = print_part(part, broker, &args, stop, &mut left, &mut out)?;
                let tp = part.topic_partition().clone();
                if hit_stop {
                    // Nothing past the stop is counted as read.
                    consumer.seek(&tp, Offset::At(next))?;
                    consumer.pause(&tp);
                    stopped.insert(tp.clone());
                }
                printed.positions().insert(tp, next);
            }
            out.flush()?;
            if args.exit_at_end || stop.is_some() {
                let assignment = consumer.assignment();
                let owned: Vec<TopicPartition> = assignment
                    .iter()
                    .flat_map(|(t, ps)| {
                        ps.iter().map(|&p| TopicPartition {
                            topic: t.as_str().into(),
                            partition: p,
                        })
                    })
                    .collect();
                let finished = |tp: &TopicPartition| {
                    stopped.contains(tp)
                        || (args.exit_at_end
                            && consumer.position(tp).is_some_and(|p| {
                                p >= ends
                                    .get(&(tp.topic.to_string(), tp.partition))
                                    .copied()
                                    .unwrap_or(0)
                            }))
                };
                if !owned.is_empty() && owned.iter().all(finished) {
                    if let Some(tp) = owned.last() {
                        let at = consumer.position(tp).unwrap_or(-1);
                        reached_end(&args, tp, at, true);
                    }
                    return Ok(());
                }
            }
        }
    }
    .await;
    let flushed = out.flush();
    // Leaving revokes every partition: what was printed is committed then.
    let closed = consumer.close().await;
    result.and(flushed).and(closed.map_err(Into::into))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(specs: &[&str]) -> (Option<Start>, Option<i64>) {
        parse_offsets(&specs.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("parses")
    }

    #[test]
    fn parses_kcats_offsets() {
        assert_eq!(offsets(&["beginning"]), (Some(Start::Beginning), None));
        assert_eq!(offsets(&["end"]), (Some(Start::End), None));
        assert_eq!(offsets(&["stored"]), (Some(Start::Stored), None));
        assert_eq!(offsets(&["42"]), (Some(Start::At(42)), None));
        assert_eq!(offsets(&["-10"]), (Some(Start::FromEnd(10)), None));
        assert_eq!(
            offsets(&["s@1000", "e@2000"]),
            (Some(Start::Timestamp(1000)), Some(2000))
        );
        assert_eq!(offsets(&["e@5"]), (None, Some(5)));
        assert!(parse_offsets(&["soon".to_string()]).is_err());
        assert!(parse_offsets(&["s@x".to_string()]).is_err());
    }
}

//! The fetch consumer: assigned partitions, seeks, pipelined fetches with
//! incremental fetch sessions (KIP-227), and read_committed filtering (KIP-98).
//! Consumer groups build on it.
//!
//! [`Consumer::poll`] hands out [`Fetched`] partitions: whole record batches
//! as the broker sent them (views over the response buffer), plus a
//! per-record iterator that skips what lies before the fetch position. While
//! the caller works on one response, the next fetch from that broker is
//! already in flight.
//!
//! ```no_run
//! # async fn demo() -> faustus_wire::Result<()> {
//! use faustus_wire::consumer::{Consumer, ConsumerConfig, Offset};
//! use faustus_wire::Properties;
//!
//! let props = Properties::new()
//!     .set("bootstrap.servers", "127.0.0.1:9092")
//!     .set("isolation.level", "read_committed");
//! let mut consumer = Consumer::connect(ConsumerConfig::from_properties(&props)?).await?;
//! consumer.assign("clicks", &[0, 1, 2], Offset::Beginning).await?;
//! for part in consumer.poll().await? {
//!     for rec in part.records() {
//!         let rec = rec?;
//!         println!("{}-{}@{}: {:?}", part.topic(), part.partition(), rec.offset, rec.value());
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Cancel safety
//!
//! [`Consumer::poll`] is cancel safe: fetches in flight stay in flight and
//! their data is returned by the next call.

mod session;
mod txn;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::admin::{Admin, OffsetSpec};
use crate::client::{topic_name, Client};
use crate::config::{ClientConfig, Properties};
use crate::protocol::ErrorCode;
use crate::record::{Batches, Compression, Record, RecordBatch};
pub use crate::types::TopicPartition;
use crate::{Action, Error, Result};
use session::FetchSession;
use txn::AbortedFilter;

/// What to do when there is no valid position (`auto.offset.reset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetReset {
    /// Start at the log start.
    Earliest,
    /// Start at the log end (the default).
    Latest,
    /// Report an error.
    None,
}

/// Consumer settings, by the Java client's names.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Connection settings.
    pub client: ClientConfig,
    /// `isolation.level`: `read_uncommitted` (default) or `read_committed`.
    pub read_committed: bool,
    /// `fetch.min.bytes` (default 1).
    pub fetch_min_bytes: i32,
    /// `fetch.max.bytes` (default 52428800).
    pub fetch_max_bytes: i32,
    /// `max.partition.fetch.bytes` (default 1048576).
    pub max_partition_fetch_bytes: i32,
    /// `fetch.max.wait.ms` (default 500).
    pub fetch_max_wait: Duration,
    /// `auto.offset.reset` (default `latest`).
    pub auto_offset_reset: OffsetReset,
    /// `check.crcs` (default true). CRCs are always checked; `false` is
    /// accepted for compatibility and ignored.
    pub check_crcs: bool,
}

impl ConsumerConfig {
    /// Reads consumer settings.
    pub fn from_properties(p: &Properties) -> Result<Self> {
        let read_committed = match p.get("isolation.level").unwrap_or("read_uncommitted") {
            "read_uncommitted" => false,
            "read_committed" => true,
            other => {
                return Err(Error::Config(format!(
                    "isolation.level={other}: expected read_uncommitted or read_committed"
                )))
            }
        };
        let auto_offset_reset = match p.get("auto.offset.reset").unwrap_or("latest") {
            "earliest" => OffsetReset::Earliest,
            "latest" => OffsetReset::Latest,
            "none" => OffsetReset::None,
            other => {
                return Err(Error::Config(format!(
                    "auto.offset.reset={other}: expected earliest, latest or none"
                )))
            }
        };
        Ok(Self {
            client: ClientConfig::from_properties(p)?,
            read_committed,
            fetch_min_bytes: p.parse_or("fetch.min.bytes", 1)?,
            fetch_max_bytes: p.parse_or("fetch.max.bytes", 52_428_800)?,
            max_partition_fetch_bytes: p.parse_or("max.partition.fetch.bytes", 1_048_576)?,
            fetch_max_wait: p.millis_or("fetch.max.wait.ms", 500)?,
            auto_offset_reset,
            check_crcs: p.bool_or("check.crcs", true)?,
        })
    }

    /// Defaults with the given `bootstrap.servers`.
    pub fn new(bootstrap: &str) -> Result<Self> {
        Self::from_properties(&Properties::new().set("bootstrap.servers", bootstrap))
    }
}

pub use crate::types::Offset;

/// One partition's share of a fetch: whole batches plus a per-record view.
#[derive(Debug)]
pub struct Fetched {
    tp: TopicPartition,
    batches: Vec<RecordBatch>,
    from: i64,
    next_offset: i64,
    high_watermark: i64,
    last_stable_offset: i64,
}

impl Fetched {
    /// The topic.
    pub fn topic(&self) -> &str {
        &self.tp.topic
    }
    /// The partition.
    pub fn partition(&self) -> i32 {
        self.tp.partition
    }
    /// The topic and partition.
    pub fn topic_partition(&self) -> &TopicPartition {
        &self.tp
    }
    /// The data batches, in offset order (control batches and, under
    /// read_committed, aborted ones removed). The first may start before the
    /// fetch position; [`records`](Self::records) skips those records.
    pub fn batches(&self) -> &[RecordBatch] {
        &self.batches
    }
    /// The fetch position these records start at.
    pub fn start_offset(&self) -> i64 {
        self.from
    }
    /// The position after these records: the offset to consume or commit
    /// next.
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }
    /// The partition's high watermark at fetch time.
    pub fn high_watermark(&self) -> i64 {
        self.high_watermark
    }
    /// The partition's last stable offset at fetch time.
    pub fn last_stable_offset(&self) -> i64 {
        self.last_stable_offset
    }
    /// A fetch that did not come from a broker, for in-process test
    /// drivers: one RecordBatch v2 (as [`BatchBuilder`](crate::record::BatchBuilder)
    /// writes it) placed at `base_offset`, as if fetched from there with
    /// the partition's high watermark at `high_watermark`. The batch is
    /// checked (length, magic, CRC-32C) like a fetched one.
    pub fn from_batch(
        tp: TopicPartition,
        base_offset: i64,
        batch: &[u8],
        high_watermark: i64,
    ) -> Result<Self> {
        // The base offset is outside the CRC: set it as a broker does.
        let mut buf = batch.to_vec();
        crate::record::set_base_offset(&mut buf, base_offset);
        let b = match RecordBatch::parse(buf.into()) {
            Ok(crate::record::Parsed::Batch(b, _)) => b,
            Ok(crate::record::Parsed::Partial { needed, .. }) => {
                return Err(record_error(
                    &tp,
                    crate::record::RecordError::Truncated {
                        base_offset,
                        needed,
                        available: batch.len(),
                    },
                ))
            }
            Err(e) => return Err(record_error(&tp, e)),
        };
        let next_offset = b.last_offset() + 1;
        Ok(Self {
            tp,
            batches: vec![b],
            from: base_offset,
            next_offset,
            high_watermark,
            last_stable_offset: high_watermark,
        })
    }

    /// Records from the fetch position on, borrowed from the fetched buffer.
    /// A malformed record yields an [`Error::Record`] naming its offset.
    pub fn records(&self) -> FetchedRecords<'_> {
        FetchedRecords {
            fetched: self,
            batch: 0,
            current: None,
        }
    }
}

/// Iterator over a [`Fetched`]'s records.
#[derive(Debug)]
pub struct FetchedRecords<'a> {
    fetched: &'a Fetched,
    batch: usize,
    current: Option<crate::record::Records<'a>>,
}

impl<'a> Iterator for FetchedRecords<'a> {
    type Item = Result<Record<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(it) = &mut self.current {
                match it.next() {
                    Some(Ok(r)) if r.offset < self.fetched.from => continue,
                    Some(Ok(r)) => return Some(Ok(r)),
                    Some(Err(e)) => {
                        return Some(Err(record_error(&self.fetched.tp, e)));
                    }
                    None => self.current = None,
                }
            }
            let b = self.fetched.batches.get(self.batch)?;
            self.batch += 1;
            match b.records() {
                Ok(it) => self.current = Some(it),
                Err(e) => return Some(Err(record_error(&self.fetched.tp, e))),
            }
        }
    }
}

fn record_error(tp: &TopicPartition, e: crate::record::RecordError) -> Error {
    Error::Record {
        topic: tp.topic.to_string(),
        partition: tp.partition,
        offset: e.offset(),
        source: e,
    }
}

/// One partition's records from a fetch response, split for delivery.
#[derive(Debug)]
pub(crate) struct PartitionRecords {
    /// The batches to hand out: at or after the fetch offset, neither
    /// control batches nor (read_committed) aborted ones; compressed ones
    /// already inflated.
    pub(crate) batches: Vec<RecordBatch>,
    /// The offset after the last batch read (the fetch offset when none).
    pub(crate) next: i64,
    /// The first batch that could not be read; nothing after it is used.
    pub(crate) bad: Option<crate::record::RecordError>,
    /// A batch cut short at the end: its base offset and the bytes it needs.
    pub(crate) partial: Option<(i64, usize)>,
}

/// Splits a partition's fetched `records` (asked for from `offset`) into
/// what to deliver, as [`Consumer::poll`] does; `aborted` holds the
/// response's aborted transactions under read_committed. Pure: the
/// `fetch_response` fuzz target drives it with any bytes.
pub(crate) fn split_partition(
    records: Bytes,
    offset: i64,
    aborted: Option<Vec<(i64, i64)>>,
) -> PartitionRecords {
    let mut filter = aborted.map(AbortedFilter::new);
    let mut batches = Vec::new();
    let mut next = offset;
    let mut iter = Batches::new(records);
    let mut bad = None;
    for b in iter.by_ref() {
        match b {
            Ok(b) => {
                if b.last_offset() < offset {
                    continue; // before our position (compacted or re-sent)
                }
                next = next.max(b.last_offset() + 1);
                let keep = filter.as_mut().is_none_or(|f| f.keep(&b)) && !b.is_control();
                if !keep {
                    continue;
                }
                // Inflate compressed batches now, so that a bad one is
                // reported as this partition's error.
                if b.compression() != Compression::None {
                    if let Err(e) = b.records() {
                        bad = Some(e);
                        break;
                    }
                }
                batches.push(b);
            }
            Err(e) => {
                bad = Some(e);
                break;
            }
        }
    }
    let partial = if bad.is_none() {
        iter.partial_tail()
    } else {
        None
    };
    PartitionRecords {
        batches,
        next,
        bad,
        partial,
    }
}

/// Decodes `data` as a Fetch response (the first byte picks the version,
/// 4 to 17) and splits every partition's records as the consumer does,
/// under read_committed and read_uncommitted, walking every record and
/// header: the body of the `fetch_response` fuzz target and of its corpus
/// replay. The body is checked first by `protocol::guard`, as every Fetch
/// response a connection receives is. It must never panic or abort.
#[doc(hidden)]
pub fn fuzz_fetch_response(data: &[u8]) {
    use kafka_protocol::protocol::Decodable;
    let Some((&v, body)) = data.split_first() else {
        return;
    };
    let version = 4 + i16::from(v % 14);
    if crate::protocol::guard::fetch_response(body, version).is_err() {
        return;
    }
    let mut buf = Bytes::copy_from_slice(body);
    let Ok(resp) = FetchResponse::decode(&mut buf, version) else {
        return;
    };
    for t in resp.responses {
        for p in t.partitions {
            let Some(records) = p.records.as_ref() else {
                continue;
            };
            for committed in [false, true] {
                let aborted = committed.then(|| aborted_transactions(&p));
                let split = split_partition(records.clone(), p.log_start_offset.max(0), aborted);
                for b in &split.batches {
                    if let Ok(recs) = b.records() {
                        for r in recs.flatten() {
                            let _ = (r.key(), r.value(), r.headers().count());
                        }
                    }
                }
            }
        }
    }
}

/// How many times in a row a fetch that returns a corrupt batch at a
/// partition's position is sent again before the partition stops with the
/// error (a byte damaged on the way is gone on the next fetch; one damaged
/// in the broker's log is not).
const CORRUPT_FETCH_RETRIES: u32 = 3;

#[derive(Debug)]
struct PartState {
    /// Next offset to hand to the caller.
    position: i64,
    /// Next offset to fetch (ahead of `position` while data is buffered).
    fetch_offset: i64,
    /// Bumped by seeks, so responses to older fetches are dropped.
    epoch: u64,
    /// Where to (re)start, resolved with ListOffsets before fetching.
    reset: Option<Offset>,
    /// Stopped by an error until the caller seeks.
    failed: bool,
    /// Stopped by the caller.
    paused: bool,
    in_flight: bool,
    /// A batch larger than `max.partition.fetch.bytes` needs this many.
    max_bytes: i32,
    retry_at: Option<Instant>,
    /// The high watermark the last fetch reported (-1 before the first).
    high_watermark: i64,
    /// Fetches in a row that returned a corrupt batch at this position.
    corrupt_fetches: u32,
    /// The fetch offset the broker found out of range (deleted by
    /// retention), while its `auto.offset.reset` is resolved: the start of
    /// a [`Gap`].
    out_of_range_from: Option<i64>,
    /// Where reading ends as the last fetch reported: the high watermark,
    /// or the last stable offset under read_committed (-1 before the first).
    end: i64,
}

/// Whether to hold back a fetch to a broker: it would list only partitions
/// already at their high watermark (so the broker would hold it for
/// `fetch.max.wait.ms`) while `buffered_here`, some other partition of that
/// broker has data waiting to be handed out and will want fetching as soon as
/// it is.
fn hold_fetch<'a>(
    buffered_here: bool,
    mut candidates: impl Iterator<Item = &'a PartState>,
) -> bool {
    buffered_here
        && candidates.all(|st| st.high_watermark >= 0 && st.fetch_offset >= st.high_watermark)
}

struct FetchOutcome {
    broker: i32,
    sent: Vec<(TopicPartition, i64, u64)>,
    result: Result<FetchResponse>,
    /// Every sent partition's records from the response, already split
    /// (and compressed batches inflated) by the fetch's own task.
    splits: HashMap<TopicPartition, PartitionRecords>,
}

/// A partition's aborted transactions from a fetch response, as
/// [`split_partition`] takes them: (producer id, first offset).
fn aborted_transactions(
    p: &kafka_protocol::messages::fetch_response::PartitionData,
) -> Vec<(i64, i64)> {
    p.aborted_transactions
        .iter()
        .flatten()
        .map(|a| (a.producer_id.0, a.first_offset))
        .collect()
}

/// Takes every partition's records out of `resp` and splits them as
/// [`split_partition`] does, each from the offset it was fetched at. The
/// fetch's task runs this as soon as the response arrives, so decompression
/// happens there, on whichever runtime thread is free, while the caller is
/// still working through the previous poll's records, not on the task that
/// polls.
fn split_response(
    resp: &mut FetchResponse,
    sent: &[(TopicPartition, i64, u64)],
    read_committed: bool,
) -> HashMap<TopicPartition, PartitionRecords> {
    let offsets: HashMap<(&str, i32), (&TopicPartition, i64)> = sent
        .iter()
        .map(|(tp, off, _)| ((&*tp.topic, tp.partition), (tp, *off)))
        .collect();
    let mut splits = HashMap::new();
    for t in &mut resp.responses {
        for p in &mut t.partitions {
            if p.error_code != 0 {
                continue;
            }
            let Some(&(tp, offset)) = offsets.get(&(t.topic.0.as_str(), p.partition_index)) else {
                continue;
            };
            let Some(records) = p.records.take().filter(|r| !r.is_empty()) else {
                continue;
            };
            let aborted = read_committed.then(|| aborted_transactions(p));
            splits.insert(tp.clone(), split_partition(records, offset, aborted));
        }
    }
    splits
}

/// A consumer of explicitly assigned partitions.
pub struct Consumer {
    client: Client,
    cfg: ConsumerConfig,
    parts: BTreeMap<TopicPartition, PartState>,
    topics: HashMap<String, Arc<str>>,
    fetches: JoinSet<FetchOutcome>,
    sessions: HashMap<i32, FetchSession>,
    in_flight_brokers: HashMap<i32, ()>,
    buffer: VecDeque<Fetched>,
    errors: VecDeque<Error>,
    /// Ranges skipped because their records were gone, not yet taken.
    gaps: Vec<Gap>,
    /// Last epoch given to each partition, kept across unassignment.
    epochs: HashMap<TopicPartition, u64>,
}

/// Offsets a consumer skipped: its position was no longer in the log
/// (retention or DeleteRecords removed those records before they were
/// read), and `auto.offset.reset` moved it from `from` to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The position the broker found out of range.
    pub from: i64,
    /// Where reading resumed.
    pub to: i64,
}

impl Gap {
    /// How many offsets were skipped (0 when reading resumed at or before
    /// `from`).
    pub fn offsets(&self) -> i64 {
        (self.to - self.from).max(0)
    }
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("partitions", &self.parts)
            .field("buffered", &self.buffer.len())
            .field("fetches_in_flight", &self.fetches.len())
            .field("brokers_in_flight", &self.in_flight_brokers.keys())
            .field("sessions", &self.sessions)
            .finish()
    }
}

impl Consumer {
    /// Connects to the cluster.
    pub async fn connect(cfg: ConsumerConfig) -> Result<Self> {
        let client = Client::connect(cfg.client.clone()).await?;
        Ok(Self::with_client(client, cfg))
    }

    /// A consumer over an existing cluster handle.
    pub fn with_client(client: Client, cfg: ConsumerConfig) -> Self {
        Self {
            client,
            cfg,
            parts: BTreeMap::new(),
            topics: HashMap::new(),
            fetches: JoinSet::new(),
            sessions: HashMap::new(),
            in_flight_brokers: HashMap::new(),
            buffer: VecDeque::new(),
            errors: VecDeque::new(),
            gaps: Vec::new(),
            epochs: HashMap::new(),
        }
    }

    /// The cluster handle.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The ranges skipped since the last call because their records were
    /// deleted before they were read (each is also logged as a warning).
    pub fn take_gaps(&mut self) -> Vec<Gap> {
        std::mem::take(&mut self.gaps)
    }

    fn tp(&mut self, topic: &str, partition: i32) -> TopicPartition {
        let t = self
            .topics
            .entry(topic.to_owned())
            .or_insert_with(|| Arc::from(topic))
            .clone();
        TopicPartition {
            topic: t,
            partition,
        }
    }

    /// Adds partitions of `topic` (all of them when `partitions` is empty)
    /// to the assignment, starting at `start`.
    pub async fn assign(&mut self, topic: &str, partitions: &[i32], start: Offset) -> Result<()> {
        let info = self
            .client
            .retry("Metadata", self.cfg.client.default_api_timeout, || {
                self.client.topic(topic, false, false)
            })
            .await?;
        let ids: Vec<i32> = if partitions.is_empty() {
            info.partitions.iter().map(|p| p.id).collect()
        } else {
            partitions.to_vec()
        };
        for p in ids {
            if !info.partitions.iter().any(|x| x.id == p) {
                return Err(Error::UnknownPartition {
                    topic: topic.to_owned(),
                    partition: p,
                });
            }
            let tp = self.tp(topic, p);
            // Bumped across re-assignments too, so that a fetch sent before
            // the partition was dropped cannot be taken for a current one.
            let epoch = self.epochs.entry(tp.clone()).or_default();
            *epoch += 1;
            let epoch = *epoch;
            let (position, reset) = match start {
                Offset::At(o) => (o, None),
                other => (-1, Some(other)),
            };
            self.parts.insert(
                tp,
                PartState {
                    position,
                    fetch_offset: position,
                    epoch,
                    reset,
                    failed: false,
                    paused: false,
                    in_flight: false,
                    max_bytes: self.cfg.max_partition_fetch_bytes,
                    retry_at: None,
                    corrupt_fetches: 0,
                    out_of_range_from: None,
                    high_watermark: -1,
                    end: -1,
                },
            );
        }
        Ok(())
    }

    /// Removes partitions from the assignment; buffered data for them is
    /// dropped.
    pub fn unassign(&mut self, tps: &[TopicPartition]) {
        for tp in tps {
            self.parts.remove(tp);
        }
        self.buffer.retain(|f| !tps.contains(&f.tp));
    }

    /// The current assignment.
    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.parts.keys().cloned().collect()
    }

    /// Moves a partition's position. Clears an error that stopped it.
    pub fn seek(&mut self, tp: &TopicPartition, to: Offset) -> Result<()> {
        let st = self
            .parts
            .get_mut(tp)
            .ok_or_else(|| Error::UnknownPartition {
                topic: tp.topic.to_string(),
                partition: tp.partition,
            })?;
        st.epoch += 1;
        self.epochs.insert(tp.clone(), st.epoch);
        st.failed = false;
        st.retry_at = None;
        st.corrupt_fetches = 0;
        st.out_of_range_from = None;
        match to {
            Offset::At(o) => {
                st.position = o;
                st.fetch_offset = o;
                st.reset = None;
            }
            other => st.reset = Some(other),
        }
        self.buffer.retain(|f| &f.tp != tp);
        Ok(())
    }

    /// Stops fetching a partition until [`resume`](Self::resume).
    pub fn pause(&mut self, tp: &TopicPartition) {
        if let Some(st) = self.parts.get_mut(tp) {
            st.paused = true;
        }
    }

    /// Resumes a paused partition.
    pub fn resume(&mut self, tp: &TopicPartition) {
        if let Some(st) = self.parts.get_mut(tp) {
            st.paused = false;
        }
    }

    /// The next offset [`poll`](Self::poll) will return for a partition.
    pub fn position(&self, tp: &TopicPartition) -> Option<i64> {
        self.parts
            .get(tp)
            .filter(|s| s.reset.is_none())
            .map(|s| s.position)
    }

    /// How many records a partition has past its position, as the last
    /// fetch response told (its high watermark, or its last stable offset
    /// under read_committed, minus the position): `Some(0)` once everything
    /// readable was handed out; `None` before the first response or while
    /// the position is being looked up. Kafka Streams waits for a joined
    /// partition only while this is unknown or positive (KIP-695).
    pub fn lag(&self, tp: &TopicPartition) -> Option<i64> {
        self.parts
            .get(tp)
            .filter(|s| s.reset.is_none() && s.end >= 0)
            .map(|s| (s.end - s.position).max(0))
    }

    /// Returns fetched data: at least one partition's worth, or an empty list
    /// when nothing arrived within about `fetch.max.wait.ms` (a broker holds
    /// an empty fetch that long). A partition that hits a corrupt batch or an unrecoverable
    /// error is reported once as `Err` and then stops until it is
    /// [`seek`](Self::seek)ed; the others go on.
    pub async fn poll(&mut self) -> Result<Vec<Fetched>> {
        let started = Instant::now();
        let deadline = started + self.cfg.fetch_max_wait + self.cfg.client.request_timeout;
        loop {
            self.resolve_resets().await;
            self.send_fetches();
            if let Some(e) = self.errors.pop_front() {
                return Err(e);
            }
            if let Some(out) = self.take_buffered() {
                // Pipelining, as the Java consumer does: the next fetches
                // go out now, so that their responses arrive (and inflate,
                // in their own tasks) while the caller works through these.
                self.send_fetches();
                return Ok(out);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            if self.fetches.is_empty() {
                // Nothing to wait for: all partitions paused, failed or
                // backing off. Wait for the earliest retry, at most
                // `fetch.max.wait.ms` in all.
                let quiet_until = started + self.cfg.fetch_max_wait;
                if now >= quiet_until {
                    return Ok(Vec::new());
                }
                let wake = self
                    .parts
                    .values()
                    .filter_map(|s| s.retry_at)
                    .min()
                    .unwrap_or(quiet_until)
                    .min(quiet_until);
                tokio::time::sleep_until(wake).await;
                continue;
            }
            match tokio::time::timeout_at(deadline, self.fetches.join_next()).await {
                Ok(Some(Ok(outcome))) => {
                    self.handle(outcome).await;
                    let quiet = self.buffer.is_empty() && self.errors.is_empty();
                    if quiet && Instant::now() >= started + self.cfg.fetch_max_wait {
                        return Ok(Vec::new());
                    }
                }
                Ok(Some(Err(join))) => {
                    return Err(Error::Config(format!("fetch task failed: {join}")));
                }
                Ok(None) | Err(_) => {}
            }
        }
    }

    /// Takes the buffered data of every partition that is not paused (a
    /// paused one's stays until it is resumed, seeked or unassigned) and
    /// moves their positions past it; `None` when there is none.
    fn take_buffered(&mut self) -> Option<Vec<Fetched>> {
        let paused = |parts: &BTreeMap<TopicPartition, PartState>, f: &Fetched| {
            parts.get(&f.tp).is_some_and(|st| st.paused)
        };
        if self.buffer.iter().all(|f| paused(&self.parts, f)) {
            return None;
        }
        let (held, out): (Vec<Fetched>, Vec<Fetched>) =
            self.buffer.drain(..).partition(|f| paused(&self.parts, f));
        self.buffer = held.into();
        for f in &out {
            if let Some(st) = self.parts.get_mut(&f.tp) {
                st.position = st.position.max(f.next_offset);
            }
        }
        Some(out)
    }

    /// Resolves pending position resets with ListOffsets.
    async fn resolve_resets(&mut self) {
        let mut by_spec: BTreeMap<(Arc<str>, u8, i64), Vec<i32>> = BTreeMap::new();
        for (tp, st) in &self.parts {
            if st.failed || st.retry_at.is_some_and(|r| r > Instant::now()) {
                continue;
            }
            let key = match st.reset {
                None => continue,
                Some(Offset::Beginning) => (0, 0),
                Some(Offset::End) => (1, 0),
                Some(Offset::Timestamp(t)) => (2, t),
                Some(Offset::At(_)) => continue,
            };
            by_spec
                .entry((tp.topic.clone(), key.0, key.1))
                .or_default()
                .push(tp.partition);
        }
        let admin = Admin::new(self.client.clone());
        for ((topic, kind, ts), parts) in by_spec {
            let spec = match kind {
                0 => OffsetSpec::Earliest,
                1 => OffsetSpec::Latest,
                _ => OffsetSpec::Timestamp(ts),
            };
            let res = admin
                .list_offsets(&topic, &parts, spec, self.cfg.read_committed)
                .await;
            match res {
                Ok(offsets) => {
                    for (p, mut off) in offsets {
                        if off < 0 {
                            // No record at or after the timestamp: the end.
                            off = admin
                                .list_offsets(
                                    &topic,
                                    &[p],
                                    OffsetSpec::Latest,
                                    self.cfg.read_committed,
                                )
                                .await
                                .ok()
                                .and_then(|m| m.get(&p).copied())
                                .unwrap_or(0);
                        }
                        let tp = TopicPartition {
                            topic: topic.clone(),
                            partition: p,
                        };
                        if let Some(st) = self.parts.get_mut(&tp) {
                            st.position = off;
                            st.fetch_offset = off;
                            st.reset = None;
                            if let Some(from) = st.out_of_range_from.take() {
                                let gap = Gap {
                                    topic: topic.to_string(),
                                    partition: p,
                                    from,
                                    to: off,
                                };
                                tracing::warn!(
                                    topic = %topic,
                                    partition = p,
                                    from,
                                    to = off,
                                    skipped = gap.offsets(),
                                    "records lost: offsets {from}..{off} were deleted (retention?) before they were read; reading resumes at {off}"
                                );
                                self.gaps.push(gap);
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(topic = %topic, error = %e, "ListOffsets failed");
                    for p in parts {
                        let tp = TopicPartition {
                            topic: topic.clone(),
                            partition: p,
                        };
                        if let Some(st) = self.parts.get_mut(&tp) {
                            st.retry_at =
                                Some(Instant::now() + self.client.retry_backoff().delay(0));
                        }
                    }
                }
            }
        }
    }

    /// Starts a fetch to every broker that leads a fetchable partition and
    /// has no fetch in flight.
    fn send_fetches(&mut self) {
        let now = Instant::now();
        let buffered: HashMap<&TopicPartition, usize> =
            self.buffer.iter().fold(HashMap::new(), |mut m, f| {
                *m.entry(&f.tp).or_default() += 1;
                m
            });
        let mut by_broker: BTreeMap<i32, BTreeMap<TopicPartition, (i64, u64, i32)>> =
            BTreeMap::new();
        let mut missing_leader = false;
        for (tp, st) in &self.parts {
            if st.reset.is_some()
                || st.failed
                || st.paused
                || st.in_flight
                || st.retry_at.is_some_and(|r| r > now)
                || buffered.get(tp).copied().unwrap_or(0) > 0
            {
                continue;
            }
            match self.client.leader_of(&tp.topic, tp.partition) {
                Some(b) if !self.in_flight_brokers.contains_key(&b) => {
                    by_broker
                        .entry(b)
                        .or_default()
                        .insert(tp.clone(), (st.fetch_offset, st.epoch, st.max_bytes));
                }
                Some(_) => {}
                None => missing_leader = true,
            }
        }
        if missing_leader {
            let client = self.client.clone();
            tokio::spawn(async move {
                let _ = client.refresh_metadata(None).await;
            });
        }
        // A broker holds a fetch whose partitions are all caught up for
        // `fetch.max.wait.ms`, and we send one fetch per broker at a time: so
        // while some of its partitions still have data waiting in the buffer,
        // do not send it a fetch of only caught-up partitions (it would keep
        // the others from being fetched for that long). The next poll, once
        // the buffer is handed out, fetches them all.
        let busy: HashSet<i32> = buffered
            .keys()
            .filter_map(|tp| self.client.leader_of(&tp.topic, tp.partition))
            .collect();
        by_broker.retain(|broker, parts| {
            let states = parts.keys().filter_map(|tp| self.parts.get(tp));
            !hold_fetch(busy.contains(broker), states)
        });
        for (broker, parts) in by_broker {
            let session = self.sessions.entry(broker).or_default();
            let wanted: BTreeMap<TopicPartition, i64> = parts
                .iter()
                .map(|(tp, (off, _, _))| (tp.clone(), *off))
                .collect();
            let sreq = session.request(&wanted);
            let mut topics: BTreeMap<Arc<str>, Vec<FetchPartition>> = BTreeMap::new();
            for (tp, off) in &sreq.partitions {
                let max = parts
                    .get(tp)
                    .map_or(self.cfg.max_partition_fetch_bytes, |p| p.2);
                topics.entry(tp.topic.clone()).or_default().push(
                    FetchPartition::default()
                        .with_partition(tp.partition)
                        .with_current_leader_epoch(-1)
                        .with_fetch_offset(*off)
                        .with_last_fetched_epoch(-1)
                        .with_log_start_offset(-1)
                        .with_partition_max_bytes(max),
                );
            }
            let mut forgotten: BTreeMap<Arc<str>, Vec<i32>> = BTreeMap::new();
            for tp in &sreq.forgotten {
                forgotten
                    .entry(tp.topic.clone())
                    .or_default()
                    .push(tp.partition);
            }
            let req = FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_max_wait_ms(self.cfg.fetch_max_wait.as_millis().min(i32::MAX as u128) as i32)
                .with_min_bytes(self.cfg.fetch_min_bytes)
                .with_max_bytes(self.cfg.fetch_max_bytes)
                .with_isolation_level(i8::from(self.cfg.read_committed))
                .with_session_id(sreq.session_id)
                .with_session_epoch(sreq.epoch)
                .with_topics(
                    topics
                        .into_iter()
                        .map(|(t, ps)| {
                            FetchTopic::default()
                                .with_topic(topic_name(&t))
                                .with_partitions(ps)
                        })
                        .collect(),
                )
                .with_forgotten_topics_data(
                    forgotten
                        .into_iter()
                        .map(|(t, ps)| {
                            ForgottenTopic::default()
                                .with_topic(topic_name(&t))
                                .with_partitions(ps)
                        })
                        .collect(),
                );
            let sent: Vec<(TopicPartition, i64, u64)> = parts
                .iter()
                .map(|(tp, (off, epoch, _))| (tp.clone(), *off, *epoch))
                .collect();
            for (tp, _, _) in &sent {
                if let Some(st) = self.parts.get_mut(tp) {
                    st.in_flight = true;
                }
            }
            tracing::trace!(broker, session = sreq.session_id, epoch = sreq.epoch, listed = ?sreq.partitions.iter().map(|(tp, o)| (tp.partition, *o)).collect::<Vec<_>>(), forgotten = sreq.forgotten.len(), "fetch");
            self.in_flight_brokers.insert(broker, ());
            let client = self.client.clone();
            let read_committed = self.cfg.read_committed;
            self.fetches.spawn(async move {
                let mut result = async {
                    let conn = client.broker(broker).await?;
                    let resp = conn.call(&req).await?;
                    conn.throttle(resp.throttle_time_ms);
                    Ok(resp)
                }
                .await;
                let splits = match &mut result {
                    Ok(resp) if resp.error_code == 0 => split_response(resp, &sent, read_committed),
                    _ => HashMap::new(),
                };
                FetchOutcome {
                    broker,
                    sent,
                    result,
                    splits,
                }
            });
        }
    }

    /// Takes in one fetch response: buffers data, applies errors.
    async fn handle(&mut self, outcome: FetchOutcome) {
        self.in_flight_brokers.remove(&outcome.broker);
        for (tp, _, _) in &outcome.sent {
            if let Some(st) = self.parts.get_mut(tp) {
                st.in_flight = false;
            }
        }
        let mut splits = outcome.splits;
        let resp = match outcome.result {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(broker = outcome.broker, error = %e, "fetch failed");
                if let Some(s) = self.sessions.get_mut(&outcome.broker) {
                    s.reset();
                }
                self.back_off(&outcome.sent, e.action());
                return;
            }
        };
        let top = ErrorCode(resp.error_code);
        if let Some(s) = self.sessions.get_mut(&outcome.broker) {
            s.response(top, resp.session_id);
        }
        if !top.is_ok() {
            let e = Error::server(top, None, "Fetch", None, None);
            self.back_off(&outcome.sent, e.action());
            return;
        }
        let sent: HashMap<&TopicPartition, (i64, u64)> = outcome
            .sent
            .iter()
            .map(|(tp, off, epoch)| (tp, (*off, *epoch)))
            .collect();
        let mut refresh = false;
        for t in resp.responses {
            let topic = t.topic.0.as_str();
            for p in t.partitions {
                let Some(tp) = self
                    .parts
                    .keys()
                    .find(|k| &*k.topic == topic && k.partition == p.partition_index)
                    .cloned()
                else {
                    continue;
                };
                let Some(&(offset, epoch)) = sent.get(&tp) else {
                    continue;
                };
                let Some(st) = self.parts.get_mut(&tp) else {
                    continue;
                };
                if st.epoch != epoch || st.fetch_offset != offset {
                    continue; // seeked meanwhile
                }
                let code = ErrorCode(p.error_code);
                if !code.is_ok() {
                    if code == ErrorCode::OFFSET_OUT_OF_RANGE {
                        tracing::warn!(
                            topic,
                            partition = tp.partition,
                            offset,
                            reset = ?self.cfg.auto_offset_reset,
                            "fetch offset out of range (deleted by retention?); applying auto.offset.reset"
                        );
                        if !matches!(self.cfg.auto_offset_reset, OffsetReset::None) {
                            st.out_of_range_from = Some(offset);
                        }
                        match self.cfg.auto_offset_reset {
                            OffsetReset::Earliest => st.reset = Some(Offset::Beginning),
                            OffsetReset::Latest => st.reset = Some(Offset::End),
                            OffsetReset::None => {
                                st.failed = true;
                                self.errors.push_back(Error::server(
                                    code,
                                    Some(format!("offset {offset} is out of range and auto.offset.reset=none")),
                                    "Fetch",
                                    Some(topic),
                                    Some(tp.partition),
                                ));
                            }
                        }
                        continue;
                    }
                    let e = Error::server(code, None, "Fetch", Some(topic), Some(tp.partition));
                    match e.action() {
                        Action::Retry { refresh: r } => {
                            refresh |= r;
                            st.retry_at =
                                Some(Instant::now() + self.client.retry_backoff().delay(0));
                        }
                        _ => {
                            st.failed = true;
                            self.errors.push_back(e);
                        }
                    }
                    continue;
                }
                st.high_watermark = p.high_watermark;
                st.end = if self.cfg.read_committed && p.last_stable_offset >= 0 {
                    p.last_stable_offset
                } else {
                    p.high_watermark
                };
                let split = splits.remove(&tp);
                tracing::trace!(
                    topic,
                    partition = p.partition_index,
                    offset,
                    batches = split.as_ref().map_or(0, |s| s.batches.len()),
                    hw = p.high_watermark,
                    "fetched"
                );
                let Some(PartitionRecords {
                    batches,
                    mut next,
                    bad,
                    partial,
                }) = split
                else {
                    continue;
                };
                if let Some(e) = bad {
                    // Deliver what came before the bad batch. A batch
                    // damaged on the way (a CRC mismatch, framing cut short)
                    // is fetched again, up to CORRUPT_FETCH_RETRIES times;
                    // then the partition stops at it with the error.
                    let good_end = batches.last().map_or(offset, |b| b.last_offset() + 1);
                    next = good_end;
                    if st.corrupt_fetches < CORRUPT_FETCH_RETRIES {
                        st.corrupt_fetches += 1;
                        tracing::warn!(
                            topic = %tp.topic,
                            partition = tp.partition,
                            offset = good_end,
                            attempt = st.corrupt_fetches,
                            error = %e,
                            "corrupt record batch in a fetch response; fetching it again"
                        );
                        st.retry_at = Some(Instant::now() + self.client.retry_backoff().delay(0));
                    } else {
                        st.failed = true;
                        self.errors.push_back(record_error(&tp, e));
                    }
                    if batches.is_empty() {
                        continue;
                    }
                } else if next > offset {
                    st.corrupt_fetches = 0;
                }
                if next == offset {
                    if let Some((_, needed)) = partial {
                        // A batch larger than we asked for: ask for more.
                        st.max_bytes = st.max_bytes.max(needed.min(i32::MAX as usize) as i32);
                    }
                    continue;
                }
                st.max_bytes = self.cfg.max_partition_fetch_bytes;
                st.fetch_offset = next;
                if batches.is_empty() {
                    // Only markers or aborted data: move on silently.
                    st.position = st.position.max(next);
                    continue;
                }
                self.buffer.push_back(Fetched {
                    tp,
                    batches,
                    from: offset,
                    next_offset: next,
                    high_watermark: p.high_watermark,
                    last_stable_offset: p.last_stable_offset,
                });
            }
        }
        if refresh {
            let _ = self.client.refresh_metadata(None).await;
        }
    }

    fn back_off(&mut self, sent: &[(TopicPartition, i64, u64)], action: Action) {
        let at = Instant::now() + self.client.retry_backoff().delay(0);
        for (tp, _, _) in sent {
            if let Some(st) = self.parts.get_mut(tp) {
                st.retry_at = Some(at);
            }
        }
        if matches!(action, Action::Retry { refresh: true }) {
            let client = self.client.clone();
            tokio::spawn(async move {
                let _ = client.refresh_metadata(None).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(fetch_offset: i64, high_watermark: i64) -> PartState {
        PartState {
            position: fetch_offset,
            fetch_offset,
            epoch: 0,
            reset: None,
            failed: false,
            paused: false,
            in_flight: false,
            max_bytes: 1 << 20,
            retry_at: None,
            corrupt_fetches: 0,
            out_of_range_from: None,
            high_watermark,
            end: high_watermark,
        }
    }

    #[test]
    fn a_fetch_of_only_caught_up_partitions_waits_while_others_are_buffered() {
        let done = [part(100, 100), part(7, 7)];
        assert!(hold_fetch(true, done.iter()));
        // Nothing else waits to be fetched: the long poll is what we want.
        assert!(!hold_fetch(false, done.iter()));
    }

    #[test]
    fn a_fetch_with_data_to_get_goes_at_once() {
        let mixed = [part(100, 100), part(5, 7)];
        assert!(!hold_fetch(true, mixed.iter()));
        // Before the first response the high watermark is unknown.
        let unknown = [part(0, -1)];
        assert!(!hold_fetch(true, unknown.iter()));
    }
}

#[cfg(test)]
mod split_tests {
    use super::*;
    use crate::record::BatchBuilder;

    fn batch(base: i64, n: usize, codec: Compression) -> Bytes {
        let mut b = BatchBuilder::new(codec);
        for i in 0..n {
            b.append::<&str, &[u8]>(1_000, None, Some(format!("v{i}").as_bytes()), &[]);
        }
        let mut v = b.finish().expect("batch").to_vec();
        crate::record::set_base_offset(&mut v, base);
        Bytes::from(v)
    }

    #[test]
    fn batches_before_the_offset_are_skipped_and_a_cut_tail_is_reported() {
        let mut all = Vec::new();
        all.extend_from_slice(&batch(0, 5, Compression::None));
        all.extend_from_slice(&batch(5, 5, Compression::Lz4));
        let third = batch(10, 5, Compression::None);
        all.extend_from_slice(&third[..third.len() - 3]);
        let split = split_partition(Bytes::from(all), 7, None);
        assert_eq!(
            split.batches.len(),
            1,
            "the batch before offset 5 is skipped"
        );
        assert_eq!(split.batches[0].base_offset(), 5);
        assert_eq!(split.next, 10);
        assert!(split.bad.is_none());
        assert_eq!(split.partial.map(|(o, _)| o), Some(10));
    }

    #[test]
    fn a_bad_batch_stops_the_split_after_the_good_ones() {
        let mut all = batch(0, 3, Compression::None).to_vec();
        let mut bad = batch(3, 3, Compression::None).to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        all.extend_from_slice(&bad);
        all.extend_from_slice(&batch(6, 3, Compression::None));
        let split = split_partition(Bytes::from(all), 0, Some(Vec::new()));
        assert_eq!(split.batches.len(), 1);
        assert_eq!(split.next, 3);
        assert!(split.bad.is_some());
        assert!(split.partial.is_none());
    }

    /// Replays the fetch_response fuzz corpus committed in `fuzz/regressions`.
    #[test]
    fn fuzz_regressions_do_not_panic() {
        crate::test_support::replay_fuzz_corpus("fetch_response", fuzz_fetch_response);
    }
}

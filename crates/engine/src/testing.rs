//! Testing an app without a broker: [`TestDriver`] runs a topology in
//! process (Kafka Streams' `TopologyTestDriver`, Faust's
//! `agent.test_context()`).
//!
//! The driver holds every topic in memory and owns every partition, as one
//! worker alone in its group would. Piping a record in appends it to its
//! topic (partitioned by key as the Java client does) and then runs the app
//! until nothing is left to read: the agents of its topic are called with
//! it, their outputs and changelog records are written to the in-memory
//! topics, agents reading those topics run in turn, and the driver commits
//! after each round with the same commit machine, dispatch and error policy
//! as a worker. Under exactly-once, outputs become visible at the commit and
//! vanish if the transaction aborts. Tables live in memory stores.
//!
//! Time is virtual: records carry the timestamps given (or the driver's
//! clock, which starts at 0 ms), and [`TestDriver::advance_wall_clock`]
//! moves the clock that `take(n, within)` measures (and, later, timers and
//! wall-clock window closing). The same input always gives the same output.
//!
//! ```
//! use faustus_engine::prelude::*;
//! use faustus_engine::testing::TestDriver;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> faustus_engine::Result<()> {
//! let mut app = App::new("counter", Properties::new().set("bootstrap.servers", "unused:9092"));
//! let words = app.topic::<String, String>("words");
//! let counts = app.table::<String, u64>("counts");
//! let table = counts.clone();
//! app.agent("count", &words, async move |batch: Batch<String, String>| {
//!     let mut t = batch.table(&table)?;
//!     for word in batch.values() {
//!         t.update(&word?, |n| *n += 1)?;
//!     }
//!     Ok(())
//! });
//! let mut driver = TestDriver::new(&app)?;
//! for w in ["a", "b", "a"] {
//!     driver.pipe(&words, Some(&w.to_string()), &w.to_string()).await?;
//! }
//! assert_eq!(driver.table(&counts)?, vec![("a".to_string(), 2), ("b".to_string(), 1)]);
//! # Ok(())
//! # }
//! ```

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use faustus_wire::consumer::{Fetched, TopicPartition};
use faustus_wire::producer::partition_for_key;
use faustus_wire::producer::ProducerRecord;
use faustus_wire::record::{BatchBuilder, Compression};

use crate::app::{App, Topic};
use crate::config::Guarantee;
use crate::error::{Error, Result};
use crate::runtime::commit::{CommitAction, CommitEvent, CommitMachine, TxnEnd};
use crate::runtime::dispatch::Dispatcher;
use crate::runtime::order::TaskIdle;
use crate::runtime::setup::task_partitions;
use crate::runtime::task::{
    set_wall_clock, tick_wall_clock, wall_clock_due, write_overlays, Delivery, Sink, TaskCtx, Tasks,
};
use crate::store::{MemoryStore, Store};
use crate::table::{Table, TablePart};
use crate::topology::Topology;
use crate::window::Window;
use crate::windowed::WindowedTable;

/// How many rounds (process, commit) one call may take before the driver
/// calls it a loop: an agent that feeds its own topic forever.
const MAX_ROUNDS: usize = 100_000;

/// A record as written to a topic of the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRecord {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset.
    pub offset: i64,
    /// The key's bytes (`None`: null).
    pub key: Option<Bytes>,
    /// The value's bytes (`None`: null, a tombstone).
    pub value: Option<Bytes>,
    /// The headers.
    pub headers: Vec<(String, Option<Bytes>)>,
    /// The timestamp (ms).
    pub timestamp: i64,
}

impl OutputRecord {
    /// A header's value (the first with this name).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
    }
}

/// A record to pipe in, with headers and a timestamp.
#[derive(Debug, Clone)]
pub struct TestRecord<K, V> {
    key: Option<K>,
    value: V,
    headers: Vec<(String, Option<Bytes>)>,
    timestamp: Option<i64>,
}

impl<K, V> TestRecord<K, V> {
    /// A record with this key and value.
    pub fn new(key: K, value: V) -> Self {
        Self {
            key: Some(key),
            value,
            headers: Vec::new(),
            timestamp: None,
        }
    }
    /// A record with a null key.
    pub fn keyless(value: V) -> Self {
        Self {
            key: None,
            value,
            headers: Vec::new(),
            timestamp: None,
        }
    }
    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((name.into(), Some(value.into())));
        self
    }
    /// Sets the timestamp (ms); by default the driver's clock.
    pub fn timestamp(mut self, ms: i64) -> Self {
        self.timestamp = Some(ms);
        self
    }
}

/// Whether a record written inside a transaction counts yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Visibility {
    Visible,
    Pending,
    Aborted,
}

#[derive(Debug)]
struct Stored {
    rec: OutputRecord,
    visibility: Visibility,
}

#[derive(Debug, Default)]
struct MemTopic {
    /// Every record, in the order written (all partitions).
    log: Vec<Stored>,
    /// Records per partition (the next offset of each).
    ends: Vec<i64>,
    /// Indexes into `log` by partition, in offset order: a record's offset
    /// is its place here (offsets are dense).
    by_partition: Vec<Vec<usize>>,
    /// The next key-less record's partition.
    round_robin: i32,
    /// How far `read_output` has read `log`.
    cursor: usize,
}

impl MemTopic {
    fn new(partitions: i32) -> Self {
        let n = partitions.max(1) as usize;
        Self {
            ends: vec![0; n],
            by_partition: vec![Vec::new(); n],
            ..Self::default()
        }
    }

    /// The record at `offset` of partition `p`.
    fn at(&self, p: usize, offset: i64) -> Option<&Stored> {
        let i = *self.by_partition[p].get(usize::try_from(offset).ok()?)?;
        self.log.get(i)
    }

    /// The end a read_committed reader at `from` sees: up to the first
    /// record still in an open transaction (none can be before `from`: a
    /// reader never passes one).
    fn stable_end(&self, p: usize, from: i64) -> i64 {
        (from..self.ends[p])
            .find(|&o| {
                self.at(p, o)
                    .is_some_and(|s| s.visibility == Visibility::Pending)
            })
            .unwrap_or(self.ends[p])
    }
}

/// The driver's in-memory broker.
struct Broker {
    topics: RefCell<BTreeMap<String, MemTopic>>,
    /// Partition counts of declared topics.
    declared: HashMap<String, i32>,
    default_partitions: i32,
    /// Exactly-once: records written now are pending until the commit.
    in_txn: RefCell<bool>,
    /// The records of the open transaction: topic and place in its log.
    pending: RefCell<Vec<(String, usize)>>,
    clock_ms: RefCell<i64>,
}

impl Broker {
    fn append(&self, rec: ProducerRecord) -> Result<i64> {
        let mut topics = self.topics.borrow_mut();
        let count = self
            .declared
            .get(&rec.topic)
            .copied()
            .unwrap_or(self.default_partitions);
        let t = topics
            .entry(rec.topic.clone())
            .or_insert_with(|| MemTopic::new(count));
        let n = t.ends.len() as i32;
        let partition = match (rec.partition, &rec.key) {
            (Some(p), _) => p,
            (None, Some(k)) => partition_for_key(k, n),
            (None, None) => {
                t.round_robin = (t.round_robin + 1) % n;
                t.round_robin
            }
        };
        if !(0..n).contains(&partition) {
            return Err(faustus_wire::Error::UnknownPartition {
                topic: rec.topic,
                partition,
            }
            .into());
        }
        let offset = t.ends[partition as usize];
        t.ends[partition as usize] += 1;
        t.by_partition[partition as usize].push(t.log.len());
        let visibility = if *self.in_txn.borrow() {
            self.pending
                .borrow_mut()
                .push((rec.topic.clone(), t.log.len()));
            Visibility::Pending
        } else {
            Visibility::Visible
        };
        t.log.push(Stored {
            rec: OutputRecord {
                topic: rec.topic,
                partition,
                offset,
                key: rec.key,
                value: rec.value,
                headers: rec.headers,
                timestamp: rec.timestamp.unwrap_or(*self.clock_ms.borrow()),
            },
            visibility,
        });
        Ok(offset)
    }

    /// Ends the open transaction: its records become visible, or aborted.
    fn end_txn(&self, commit: bool) {
        *self.in_txn.borrow_mut() = false;
        let mut topics = self.topics.borrow_mut();
        for (topic, i) in self.pending.borrow_mut().drain(..) {
            if let Some(s) = topics.get_mut(&topic).and_then(|t| t.log.get_mut(i)) {
                s.visibility = if commit {
                    Visibility::Visible
                } else {
                    Visibility::Aborted
                };
            }
        }
    }

    /// The partition's records from `from` to its stable end as one fetch,
    /// or `None` when there is nothing new.
    fn fetch(&self, tp: &TopicPartition, from: i64) -> Result<Option<Fetched>> {
        let topics = self.topics.borrow();
        let Some(t) = topics.get(&*tp.topic) else {
            return Ok(None);
        };
        let p = tp.partition as usize;
        let end = t.stable_end(p, from);
        if from >= end {
            return Ok(None);
        }
        let mut b = BatchBuilder::new(Compression::None);
        let mut base = None;
        for s in (from..end).filter_map(|o| t.at(p, o)) {
            // Aborted records keep their offsets but are never delivered:
            // a fetch holds a run of visible ones.
            if s.visibility != Visibility::Visible {
                if base.is_some() {
                    break;
                }
                continue;
            }
            base.get_or_insert(s.rec.offset);
            b.append(
                s.rec.timestamp,
                s.rec.key.as_deref(),
                s.rec.value.as_deref(),
                &s.rec.headers,
            );
        }
        let Some(base) = base else {
            return Ok(None);
        };
        let bytes = b
            .finish()
            .map_err(|e| Error::Config(format!("test batch: {e}")))?;
        Ok(Some(Fetched::from_batch(
            tp.clone(),
            base,
            &bytes,
            t.ends[p],
        )?))
    }

    /// The next offset after the aborted records at `from`, if any (a
    /// reader skips them).
    fn skip_aborted(&self, tp: &TopicPartition, mut from: i64) -> i64 {
        let topics = self.topics.borrow();
        if let Some(t) = topics.get(&*tp.topic) {
            let p = tp.partition as usize;
            while t
                .at(p, from)
                .is_some_and(|s| s.visibility == Visibility::Aborted)
            {
                from += 1;
            }
        }
        from
    }
}

impl Sink for Broker {
    async fn send(&self, rec: ProducerRecord) -> Result<Delivery> {
        self.append(rec).map(Delivery::At)
    }
}

/// Runs an app's topology in process, with no broker (see the module doc).
pub struct TestDriver {
    topology: Topology,
    dispatcher: Dispatcher,
    timers: crate::timer::Timers,
    machine: CommitMachine,
    broker: Broker,
    tasks: Tasks,
    /// The source partitions and where the driver's consumer reads next.
    read: BTreeMap<TopicPartition, i64>,
    /// The committed input offsets.
    committed: BTreeMap<TopicPartition, i64>,
    clock: Instant,
    /// The global tables' stores, and where their topics are read next.
    globals: crate::global::Globals,
    global_read: BTreeMap<TopicPartition, i64>,
}

impl std::fmt::Debug for TestDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDriver")
            .field("topology", &self.topology)
            .field("committed", &self.committed)
            .finish()
    }
}

impl TestDriver {
    /// A driver for the app's topology (its settings apply:
    /// `processing.guarantee`, `topic.partitions`; stores are in memory
    /// whatever `store` says).
    pub fn new(app: &App) -> Result<Self> {
        Self::from_topology(app.topology()?)
    }

    /// A driver for a topology.
    pub fn from_topology(topology: Topology) -> Result<Self> {
        let cfg = &topology.config;
        let mut declared: HashMap<String, i32> = topology
            .topics
            .iter()
            .map(|t| (t.name.clone(), t.partitions.unwrap_or(cfg.topic_partitions)))
            .collect();
        for t in &topology.topics {
            if let Some(n) = t.partitions_like.as_ref().and_then(|l| declared.get(l)) {
                declared.insert(t.name.clone(), *n);
            }
        }
        let counts: BTreeMap<String, i32> = topology
            .source_topics()
            .into_iter()
            .map(|t| {
                let n = declared.get(t).copied().unwrap_or(cfg.topic_partitions);
                (t.to_owned(), n)
            })
            .collect();
        let n = task_partitions(&counts, !topology.tables.is_empty(), cfg.topic_partitions)?;
        for t in &topology.tables {
            declared.insert(t.changelog.to_string(), n);
        }
        let mut read = BTreeMap::new();
        for (topic, &count) in &counts {
            for p in 0..count {
                let tp = TopicPartition {
                    topic: topic.as_str().into(),
                    partition: p,
                };
                read.insert(tp, 0);
            }
        }
        let globals: crate::global::Globals = Rc::new(
            topology
                .globals
                .iter()
                .map(|g| {
                    RefCell::new(crate::global::GlobalStore {
                        topic: g.topic.clone(),
                        store: Box::new(MemoryStore::default()),
                    })
                })
                .collect(),
        );
        let mut global_read = BTreeMap::new();
        for g in &topology.globals {
            let count = declared
                .get(&*g.topic)
                .copied()
                .unwrap_or(cfg.topic_partitions);
            for p in 0..count {
                let tp = TopicPartition {
                    topic: g.topic.clone(),
                    partition: p,
                };
                global_read.insert(tp, 0);
            }
        }
        let mut tasks = Tasks::new();
        for p in 0..n {
            let parts = topology
                .tables
                .iter()
                .map(|t| {
                    TablePart::new(
                        t.name.clone(),
                        t.changelog.clone(),
                        p,
                        Box::new(MemoryStore::default()),
                    )
                    .with_window(t.frozen_window, cfg.guarantee == Guarantee::ExactlyOnce)
                    .with_ordered(t.ordered)
                })
                .collect();
            tasks.insert(
                p,
                Rc::new(TaskCtx::new(parts).with_globals(globals.clone())),
            );
        }
        let mut topics = BTreeMap::new();
        for (name, &count) in &declared {
            topics.insert(name.clone(), MemTopic::new(count));
        }
        Ok(Self {
            timers: crate::timer::Timers::new(&topology.timers, 0),
            dispatcher: Dispatcher::new(
                topology.agents.clone(),
                topology.ordered.clone(),
                // Everything piped is fetched each round: joined inputs are
                // always caught up, and wait for nothing.
                TaskIdle::Wait(Duration::ZERO),
            ),
            machine: CommitMachine::new(cfg.guarantee),
            broker: Broker {
                topics: RefCell::new(topics),
                declared,
                default_partitions: cfg.topic_partitions,
                in_txn: RefCell::new(false),
                pending: RefCell::new(Vec::new()),
                clock_ms: RefCell::new(0),
            },
            topology,
            tasks,
            read,
            committed: BTreeMap::new(),
            clock: Instant::now(),
            globals,
            global_read,
        })
    }

    /// Pipes a record into a topic and runs the app until it is idle.
    pub async fn pipe<K, V>(
        &mut self,
        topic: &Topic<K, V>,
        key: Option<&K>,
        value: &V,
    ) -> Result<()> {
        let rec = topic.record(key, value)?;
        self.pipe_raw(rec).await
    }

    /// Pipes a record with headers or a timestamp.
    pub async fn pipe_record<K, V>(
        &mut self,
        topic: &Topic<K, V>,
        rec: TestRecord<K, V>,
    ) -> Result<()> {
        let mut out = topic.record(rec.key.as_ref(), &rec.value)?;
        out.headers = rec.headers;
        out.timestamp = rec.timestamp;
        self.pipe_raw(out).await
    }

    /// Pipes raw bytes into a topic (bytes no codec would write, say).
    pub async fn pipe_bytes(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<()> {
        let mut rec = ProducerRecord::new(topic);
        rec.key = key.map(Bytes::copy_from_slice);
        rec.value = value.map(Bytes::copy_from_slice);
        self.pipe_raw(rec).await
    }

    async fn pipe_raw(&mut self, rec: ProducerRecord) -> Result<()> {
        self.append_outside(rec)?;
        self.run().await
    }

    /// Written by an outside producer: visible at once.
    fn append_outside(&mut self, rec: ProducerRecord) -> Result<()> {
        let in_txn = self.broker.in_txn.replace(false);
        let appended = self.broker.append(rec);
        self.broker.in_txn.replace(in_txn);
        appended.map(|_| ())
    }

    /// Writes a record to a topic without running the app: records queued
    /// in several topics are read as a worker finds them in Kafka, all at
    /// once, joined topics in timestamp order ([`run_queued`](Self::run_queued)).
    pub fn queue_record<K, V>(&mut self, topic: &Topic<K, V>, rec: TestRecord<K, V>) -> Result<()> {
        let mut out = topic.record(rec.key.as_ref(), &rec.value)?;
        out.headers = rec.headers;
        out.timestamp = rec.timestamp;
        self.append_outside(out)
    }

    /// [`queue_record`](Self::queue_record) for a tombstone (a null value)
    /// or raw bytes.
    pub fn queue_bytes(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp: i64,
    ) -> Result<()> {
        let mut rec = ProducerRecord::new(topic);
        rec.key = key.map(Bytes::copy_from_slice);
        rec.value = value.map(Bytes::copy_from_slice);
        rec.timestamp = Some(timestamp);
        self.append_outside(rec)
    }

    /// How many records joins skipped (no key, no value), over every task.
    pub fn dropped_records(&self) -> u64 {
        self.tasks.values().map(|t| t.dropped.get()).sum()
    }

    /// Runs the app until it has read everything queued.
    pub async fn run_queued(&mut self) -> Result<()> {
        self.run().await
    }

    /// Moves the virtual wall clock on, then runs what became due (`take`
    /// gatherings that waited `within`, windows closing by the wall clock).
    pub async fn advance_wall_clock(&mut self, by: Duration) -> Result<()> {
        self.clock += by;
        *self.broker.clock_ms.borrow_mut() += by.as_millis() as i64;
        self.run().await
    }

    /// Records written to a topic since the last read of it (committed ones
    /// only under exactly-once), in the order written.
    pub fn read_records(&mut self, topic: &str) -> Vec<OutputRecord> {
        let mut topics = self.broker.topics.borrow_mut();
        let Some(t) = topics.get_mut(topic) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        while let Some(s) = t.log.get(t.cursor) {
            match s.visibility {
                Visibility::Pending => break,
                Visibility::Aborted => {}
                Visibility::Visible => out.push(s.rec.clone()),
            }
            t.cursor += 1;
        }
        out
    }

    /// Keys (`None`: a null key) and values written to a topic since the
    /// last read of it, decoded with the topic's codecs.
    pub fn read_output<K, V>(&mut self, topic: &Topic<K, V>) -> Result<Vec<(Option<K>, V)>> {
        let codecs = &topic.inner.codecs;
        self.read_records(topic.name())
            .into_iter()
            .map(|r| {
                let at = || crate::Location {
                    topic: r.topic.clone(),
                    partition: r.partition,
                    offset: r.offset,
                };
                let k = match r.key.as_deref() {
                    None => None,
                    Some(k) => {
                        Some(codecs.key.decode(Some(k)).map_err(|source| Error::Decode {
                            at: at(),
                            part: "key",
                            source,
                        })?)
                    }
                };
                let v =
                    codecs
                        .value
                        .decode(r.value.as_deref())
                        .map_err(|source| Error::Decode {
                            at: at(),
                            part: "value",
                            source,
                        })?;
                Ok((k, v))
            })
            .collect()
    }

    /// A table's committed contents, every partition, in key order.
    pub fn table<K, V>(&self, table: &Table<K, V>) -> Result<Vec<(K, V)>> {
        let mut raw = BTreeMap::new();
        for task in self.tasks.values() {
            let part = task.tables.get(table.id()).ok_or_else(|| Error::Table {
                table: table.name().to_owned(),
                message: "not a table of this app".into(),
            })?;
            raw.extend(part.borrow().store.entries()?);
        }
        raw.into_iter()
            .map(|(k, v)| table.decode_entry(&k, &v))
            .collect()
    }

    /// A windowed table's committed windows, every partition, by key then
    /// window start.
    pub fn windowed_table<K, V>(&self, table: &WindowedTable<K, V>) -> Result<Vec<(K, Window, V)>> {
        let mut raw = BTreeMap::new();
        for task in self.tasks.values() {
            let part = task
                .tables
                .get(table.table().id())
                .ok_or_else(|| Error::Table {
                    table: table.name().to_owned(),
                    message: "not a table of this app".into(),
                })?;
            raw.extend(part.borrow().store.entries()?);
        }
        raw.into_iter()
            .filter(|(k, _)| crate::window::is_window_entry(k))
            .map(|(k, v)| table.decode_entry(&k, &v))
            .collect()
    }

    /// A key's committed value in a table (`None`: no value, whatever the
    /// table's default).
    pub fn table_get<K, V>(&self, table: &Table<K, V>, key: &K) -> Result<Option<V>> {
        let mut k = Vec::new();
        table.encode_key(key, &mut k)?;
        for task in self.tasks.values() {
            if let Some(part) = task.tables.get(table.id()) {
                if let Some(v) = part.borrow().store.get(&k)? {
                    return table.decode_entry(&k, &v).map(|(_, v)| Some(v));
                }
            }
        }
        Ok(None)
    }

    /// The committed input offset of a source partition (the next to read).
    pub fn committed(&self, topic: &str, partition: i32) -> Option<i64> {
        self.committed
            .get(&TopicPartition {
                topic: topic.into(),
                partition,
            })
            .copied()
    }

    /// The topology being run.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Runs rounds (fetch what is new, dispatch, commit) until nothing is
    /// left to read. On an error the driver is as a restarted worker: the
    /// open transaction aborted, positions back at the last commit.
    async fn run(&mut self) -> Result<()> {
        for _ in 0..MAX_ROUNDS {
            match self.round().await {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(e) => {
                    self.restart().await;
                    return Err(e);
                }
            }
        }
        Err(Error::Config(format!(
            "the app was still busy after {MAX_ROUNDS} rounds: does an agent feed its own topic?"
        )))
    }

    /// One round; returns whether anything was processed.
    async fn round(&mut self) -> Result<bool> {
        // Global tables first: what their topics hold now, agents read.
        for (tp, at) in &mut self.global_read {
            *at = self.broker.skip_aborted(tp, *at);
            if let Some(f) = self.broker.fetch(tp, *at)? {
                *at = f.next_offset();
                if let Some(i) = self
                    .topology
                    .globals
                    .iter()
                    .position(|g| g.topic == tp.topic)
                {
                    self.globals[i].borrow_mut().apply(&f)?;
                }
            }
        }
        let mut fetched = Vec::new();
        for (tp, at) in &mut self.read {
            *at = self.broker.skip_aborted(tp, *at);
            if let Some(f) = self.broker.fetch(tp, *at)? {
                *at = f.next_offset();
                fetched.push(f);
            }
        }
        let due = self.dispatcher.gathering_due(false, self.clock);
        let wall = *self.broker.clock_ms.borrow();
        let ticking = wall_clock_due(&self.tasks, &self.topology.tables, wall);
        let timing = self.timers.due(wall);
        if fetched.is_empty() && !due && !ticking && !timing {
            return Ok(false);
        }
        self.handle(CommitEvent::Processing).await?;
        set_wall_clock(&self.tasks, wall);
        let mut progress = self
            .dispatcher
            .process(&self.tasks, fetched, &self.broker, self.clock, &|_| Some(0))
            .await?;
        progress.extend(
            self.dispatcher
                .flush_gathered(&self.tasks, &self.broker, false, self.clock)
                .await?,
        );
        if ticking {
            tick_wall_clock(&self.tasks, &self.topology.tables, wall, &self.broker).await?;
        }
        for rec in self.timers.run_stream_due(&self.tasks).await? {
            self.broker.send(rec).await?;
        }
        for t in self.tasks.values() {
            crate::runtime::task::send_staged(t, &self.broker).await?;
        }
        if timing {
            // The driver owns every partition: it is the leader.
            for rec in self.timers.run_due(wall, &self.tasks, true).await? {
                self.broker.send(rec).await?;
            }
            for t in self.tasks.values() {
                crate::runtime::task::send_staged(t, &self.broker).await?;
            }
        }
        for p in progress {
            self.handle(CommitEvent::Processed {
                tp: p.tp,
                next: p.at,
            })
            .await?;
        }
        self.handle(CommitEvent::Commit).await?;
        Ok(true)
    }

    /// Feeds the commit machine and carries out its actions in memory.
    async fn handle(&mut self, ev: CommitEvent) -> Result<()> {
        let mut queue: std::collections::VecDeque<CommitAction> = self.machine.handle(ev).into();
        while let Some(action) = queue.pop_front() {
            let more = match action {
                CommitAction::BeginTxn => {
                    *self.broker.in_txn.borrow_mut() = true;
                    Vec::new()
                }
                CommitAction::Flush => self.machine.handle(CommitEvent::Flushed { ok: true }),
                CommitAction::CommitTxn(offsets) => {
                    self.committed.extend(offsets);
                    self.broker.end_txn(true);
                    self.machine
                        .handle(CommitEvent::TxnEnded(TxnEnd::Committed))
                }
                CommitAction::AbortTxn => {
                    self.broker.end_txn(false);
                    Vec::new()
                }
                CommitAction::WriteStores => {
                    write_overlays(&self.tasks).await?;
                    Vec::new()
                }
                CommitAction::CommitOffsets(offsets) => {
                    self.committed.extend(offsets.clone());
                    self.machine
                        .handle(CommitEvent::OffsetsCommitted { offsets, ok: true })
                }
                CommitAction::RollBack => {
                    self.dispatcher.clear();
                    for t in self.tasks.values() {
                        t.roll_back();
                    }
                    Vec::new()
                }
                CommitAction::Rewind => {
                    self.rewind();
                    Vec::new()
                }
            };
            queue.extend(more);
        }
        Ok(())
    }

    fn rewind(&mut self) {
        for (tp, at) in &mut self.read {
            *at = self.committed.get(tp).copied().unwrap_or(0);
        }
        self.dispatcher.clear();
    }

    /// Stops and starts the app as a worker process would be: exactly-once,
    /// an open transaction aborted; at-least-once, what was processed
    /// committed as the worker leaves; then every store rebuilt from its
    /// changelog (as on a machine without the state directory) and input
    /// read again from the last commit. The driver does this itself after
    /// an error; call it to test what your app keeps across restarts.
    pub async fn restart(&mut self) {
        let _ = self.handle(CommitEvent::Failed).await;
        if self.topology.config.guarantee == Guarantee::AtLeastOnce {
            let _ = self.handle(CommitEvent::Commit).await;
        }
        self.machine = CommitMachine::new(self.topology.config.guarantee);
        self.broker.end_txn(false);
        // A new worker: its timers start now.
        let now = *self.broker.clock_ms.borrow();
        self.timers = crate::timer::Timers::new(&self.topology.timers, now);
        self.rewind();
        // Stores as recovery leaves them: their changelogs replayed.
        for (&p, task) in &self.tasks {
            for part in &task.tables {
                let mut part = part.borrow_mut();
                part.roll_back();
                let mut store = MemoryStore::default();
                let topics = self.broker.topics.borrow();
                if let Some(t) = topics.get(&*part.changelog) {
                    for &i in &t.by_partition[p as usize] {
                        let s = &t.log[i];
                        if s.visibility != Visibility::Visible {
                            continue;
                        }
                        if let Some(k) = &s.rec.key {
                            let change = (k.to_vec(), s.rec.value.as_ref().map(|v| v.to_vec()));
                            // A memory store cannot fail.
                            let _ = store.apply(&mut std::iter::once(change), s.rec.offset);
                        }
                    }
                }
                part.store = Box::new(store);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prelude::*;

    fn app(guarantee: &str) -> App {
        App::new(
            "t",
            Properties::new()
                .set("bootstrap.servers", "unused:9092")
                .set("processing.guarantee", guarantee)
                .set("topic.partitions", "4"),
        )
    }

    type Counter = (
        App,
        Topic<String, String>,
        Table<String, u64>,
        Topic<String, u64>,
    );

    /// Words in, counts in a table, each new count out to `counts-out`.
    fn counter(guarantee: &str) -> Counter {
        let mut app = app(guarantee);
        let words = app.topic::<String, String>("words");
        let out = app.topic::<String, u64>("counts-out");
        let counts = app.table::<String, u64>("counts");
        let (table, sink) = (counts.clone(), out.clone());
        app.agent_with(
            "count",
            &words,
            AgentOptions::default().on_error(ErrorPolicy::DeadLetter("bad-words".into())),
            async move |batch: Batch<String, String>| {
                let mut t = batch.table(&table)?;
                for ev in batch.events() {
                    let ev = ev?;
                    let w = ev.value()?;
                    if w.is_empty() {
                        return Err(ev.fail("empty word"));
                    }
                    let n = t.update(&w, |n| *n += 1)?;
                    batch.send(&sink, Some(&w), &n)?;
                }
                Ok(())
            },
        );
        (app, words, counts, out)
    }

    async fn pipe_words(d: &mut TestDriver, words: &Topic<String, String>, list: &[&str]) {
        for w in list {
            d.pipe(words, Some(&w.to_string()), &w.to_string())
                .await
                .expect("pipe");
        }
    }

    #[tokio::test]
    async fn counts_reach_the_table_and_the_output_topic() {
        for g in ["at_least_once", "exactly_once"] {
            let (app, words, counts, out) = counter(g);
            let mut d = TestDriver::new(&app).expect("driver");
            pipe_words(&mut d, &words, &["a", "b", "a", "c", "a"]).await;
            assert_eq!(
                d.table(&counts).expect("table"),
                vec![("a".into(), 3), ("b".into(), 1), ("c".into(), 1)],
                "{g}"
            );
            assert_eq!(
                d.table_get(&counts, &"a".to_string()).expect("get"),
                Some(3)
            );
            assert_eq!(d.table_get(&counts, &"z".to_string()).expect("get"), None);
            let outs = d.read_output(&out).expect("out");
            let want: Vec<(Option<String>, u64)> =
                [("a", 1), ("b", 1), ("a", 2), ("c", 1), ("a", 3)]
                    .into_iter()
                    .map(|(k, n)| (Some(k.to_string()), n))
                    .collect();
            assert_eq!(outs, want);
            // Read once.
            assert!(d.read_output(&out).expect("out").is_empty());
            // Every input committed.
            for p in 0..4 {
                let piped = ["a", "b", "a", "c", "a"]
                    .iter()
                    .filter(|w| partition_for_key(format!("\"{w}\"").as_bytes(), 4) == p)
                    .count() as i64;
                let want = (piped > 0).then_some(piped);
                assert_eq!(d.committed("words", p), want, "{g} partition {p}");
            }
        }
    }

    #[tokio::test]
    async fn the_changelog_holds_one_record_per_change_in_the_tables_partition() {
        let (app, words, _, _) = counter("exactly_once");
        let mut d = TestDriver::new(&app).expect("driver");
        pipe_words(&mut d, &words, &["a", "a"]).await;
        let log = d.read_records("t-counts-changelog");
        let p = partition_for_key(b"\"a\"", 4);
        assert_eq!(log.len(), 2);
        assert!(log.iter().all(|r| r.partition == p));
        assert_eq!(log[1].value.as_deref(), Some(&b"2"[..]));
    }

    #[tokio::test]
    async fn a_failed_record_is_dead_lettered_with_its_provenance_and_the_rest_goes_on() {
        let (app, words, counts, _) = counter("at_least_once");
        let mut d = TestDriver::new(&app).expect("driver");
        pipe_words(&mut d, &words, &["a", ""]).await;
        d.pipe_bytes("words", Some(b"\"k\""), Some(b"not json"))
            .await
            .expect("pipe");
        pipe_words(&mut d, &words, &["a"]).await;
        assert_eq!(d.table(&counts).expect("table"), vec![("a".into(), 2)]);
        let dead = d.read_records("bad-words");
        assert_eq!(dead.len(), 2);
        assert_eq!(dead[0].value.as_deref(), Some(&b"\"\""[..]));
        assert_eq!(dead[0].header("faustus.source.topic"), Some(&b"words"[..]));
        assert!(
            String::from_utf8_lossy(dead[0].header("faustus.error").unwrap_or_default())
                .contains("empty word")
        );
        assert_eq!(dead[1].value.as_deref(), Some(&b"not json"[..]));
        assert!(
            String::from_utf8_lossy(dead[1].header("faustus.error").unwrap_or_default())
                .contains("cannot decode the value of words[")
        );
    }

    #[tokio::test]
    async fn stop_names_the_record_and_nothing_of_the_failed_call_commits() {
        for g in ["at_least_once", "exactly_once"] {
            let mut app = app(g);
            let words = app.topic::<String, String>("words");
            let out = app.topic::<String, String>("echo");
            let sink = out.clone();
            app.agent("echo", &words, async move |batch: Batch<String, String>| {
                for ev in batch.events() {
                    let ev = ev?;
                    let w = ev.value()?;
                    batch.send(&sink, None, &w)?;
                    if w == "boom" {
                        return Err(ev.fail("boom"));
                    }
                }
                Ok(())
            });
            let mut d = TestDriver::new(&app).expect("driver");
            let key = "k".to_string();
            d.pipe(&words, Some(&key), &"one".to_string())
                .await
                .expect("pipe");
            let e = d
                .pipe(&words, Some(&key), &"boom".to_string())
                .await
                .expect_err("stop");
            let p = partition_for_key(b"\"k\"", 4);
            assert!(e.to_string().contains(&format!("words[{p}]@1")), "{e}");
            // The failed call's output was staged, never sent: the commit
            // is still after "one" alone.
            assert_eq!(d.committed("words", p), Some(1), "{g}");
            let echoed: Vec<String> = d
                .read_output(&out)
                .expect("out")
                .into_iter()
                .map(|(_, v): (Option<String>, String)| v)
                .collect();
            assert_eq!(echoed, vec!["one".to_string()], "{g}");
            // As a restarted worker: the bad record is read again.
            let again = d
                .pipe(&words, Some(&key), &"two".to_string())
                .await
                .expect_err("still there");
            assert!(
                again.to_string().contains(&format!("words[{p}]@1")),
                "{again}"
            );
        }
    }

    #[tokio::test]
    async fn take_gathers_until_n_or_the_virtual_clock_passes_within() {
        let mut app = app("at_least_once");
        let words = app.topic::<String, String>("words");
        let sizes = app.topic::<String, u64>("sizes");
        let sink = sizes.clone();
        app.agent_with(
            "sizes",
            &words,
            AgentOptions::default().take(3, Duration::from_secs(5)),
            async move |batch: Batch<String, String>| {
                let n = batch.events().count() as u64;
                batch.send(&sink, None, &n)?;
                Ok(())
            },
        );
        let mut d = TestDriver::new(&app).expect("driver");
        let key = "k".to_string();
        let p = partition_for_key(b"\"k\"", 4);
        for _ in 0..4 {
            d.pipe(&words, Some(&key), &"w".to_string())
                .await
                .expect("pipe");
        }
        let got: Vec<u64> = d
            .read_output(&sizes)
            .expect("out")
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        assert_eq!(got, vec![3]);
        // The fourth is held: not committed.
        assert_eq!(d.committed("words", p), Some(3));
        d.advance_wall_clock(Duration::from_secs(4))
            .await
            .expect("clock");
        assert!(d.read_output(&sizes).expect("out").is_empty());
        d.advance_wall_clock(Duration::from_secs(1))
            .await
            .expect("clock");
        let got: Vec<u64> = d
            .read_output(&sizes)
            .expect("out")
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        assert_eq!(got, vec![1]);
        assert_eq!(d.committed("words", p), Some(4));
    }

    #[tokio::test]
    async fn agents_downstream_of_a_repartition_run_in_the_same_pipe() {
        let mut app = app("exactly_once");
        let clicks = app.topic::<String, String>("clicks");
        let by_url = app.repartition_topic::<String, String>("by-url", TopicSpec::json());
        let counts = app.table::<String, u64>("url-counts");
        let (to, table) = (by_url.clone(), counts.clone());
        app.agent(
            "regroup",
            &clicks,
            async move |batch: Batch<String, String>| batch.group_by(&to, |ev| ev.value()),
        );
        app.agent(
            "count",
            &by_url,
            async move |batch: Batch<String, String>| {
                let mut t = batch.table(&table)?;
                for k in batch.items() {
                    let (url, _) = k?;
                    t.update(&url, |n| *n += 1)?;
                }
                Ok(())
            },
        );
        let run = || async {
            let mut d = TestDriver::new(&app).expect("driver");
            for (user, url) in [("u1", "/a"), ("u2", "/a"), ("u3", "/b"), ("u1", "/a")] {
                d.pipe(&clicks, Some(&user.to_string()), &url.to_string())
                    .await
                    .expect("pipe");
            }
            (
                d.table(&counts).expect("table"),
                d.read_records("t-url-counts-changelog"),
            )
        };
        let (first, log1) = run().await;
        assert_eq!(first, vec![("/a".into(), 3), ("/b".into(), 1)]);
        // Deterministic: the same input gives the same output.
        let (second, log2) = run().await;
        assert_eq!(first, second);
        assert_eq!(log1, log2);
    }

    #[test]
    fn readers_stop_at_an_open_transaction_and_skip_an_aborted_one() {
        let broker = Broker {
            topics: RefCell::new(BTreeMap::new()),
            declared: HashMap::from([("t".to_string(), 1)]),
            default_partitions: 1,
            in_txn: RefCell::new(false),
            pending: RefCell::new(Vec::new()),
            clock_ms: RefCell::new(0),
        };
        let send = |v: &str| {
            broker
                .append(ProducerRecord::new("t").value(v.as_bytes().to_vec()))
                .expect("append")
        };
        let tp = TopicPartition {
            topic: "t".into(),
            partition: 0,
        };
        let values = |f: &Fetched| -> Vec<Vec<u8>> {
            f.records()
                .map(|r| r.expect("record").value().unwrap_or_default().to_vec())
                .collect()
        };
        send("a");
        *broker.in_txn.borrow_mut() = true;
        send("b");
        send("c");
        // Up to the open transaction only.
        let f = broker.fetch(&tp, 0).expect("fetch").expect("records");
        assert_eq!(values(&f), vec![b"a".to_vec()]);
        assert!(broker.fetch(&tp, 1).expect("fetch").is_none());
        broker.end_txn(false);
        send("d");
        // The aborted records keep their offsets and are skipped.
        assert_eq!(broker.skip_aborted(&tp, 1), 3);
        let f = broker.fetch(&tp, 3).expect("fetch").expect("records");
        assert_eq!((f.start_offset(), values(&f)), (3, vec![b"d".to_vec()]));
    }

    /// Counts per key in windows; "boom" fails the record (Stop policy).
    fn windowed_counter(
        spec: impl FnOnce(Table<String, u64>) -> WindowedTable<String, u64>,
    ) -> (App, Topic<String, String>, WindowedTable<String, u64>) {
        let mut app = app("exactly_once");
        let clicks = app.topic::<String, String>("clicks");
        let counts = spec(app.table::<String, u64>("per-window"));
        let table = counts.clone();
        app.agent(
            "count",
            &clicks,
            async move |batch: Batch<String, String>| {
                let mut t = batch.windowed(&table)?;
                for ev in batch.events() {
                    let ev = ev?;
                    if ev.value()? == "boom" {
                        return Err(ev.fail("boom"));
                    }
                    t.update(&ev, &ev.key()?, |n| *n += 1)?;
                }
                Ok(())
            },
        );
        (app, clicks, counts)
    }

    async fn click(
        d: &mut TestDriver,
        clicks: &Topic<String, String>,
        key: &str,
        ts: i64,
    ) -> Result<()> {
        d.pipe_record(
            clicks,
            TestRecord::new(key.to_string(), "c".to_string()).timestamp(ts),
        )
        .await
    }

    #[tokio::test]
    async fn tumbling_windows_count_per_window_and_drop_what_comes_after_grace() {
        let (app, clicks, counts) = windowed_counter(|t| {
            t.tumbling(Duration::from_secs(10))
                .grace(Duration::from_secs(2))
                .expires(Duration::from_secs(3600))
        });
        let mut d = TestDriver::new(&app).expect("driver");
        for ts in [1_000, 9_999, 10_000, 21_000] {
            click(&mut d, &clicks, "a", ts).await.expect("pipe");
        }
        // Stream time 21 s: [0, 10 s) closed at 12 s, [10, 20 s) at 22 s.
        click(&mut d, &clicks, "a", 5_000)
            .await
            .expect("late, dropped");
        click(&mut d, &clicks, "a", 19_000)
            .await
            .expect("within grace");
        let w = |s: i64| Window::new(s, s + 10_000);
        assert_eq!(
            d.windowed_table(&counts).expect("table"),
            vec![
                ("a".to_string(), w(0), 2),
                ("a".to_string(), w(10_000), 2),
                ("a".to_string(), w(20_000), 1),
            ]
        );
    }

    #[tokio::test]
    async fn sessions_grow_merge_with_tombstones_and_close_after_their_last_record() {
        let (app, clicks, counts) = windowed_counter(|t| {
            t.session(Duration::from_millis(10), |a: &u64, b: &u64| a + b)
                .expires(Duration::from_secs(3600))
        });
        let mut d = TestDriver::new(&app).expect("driver");
        for ts in [0, 5, 30, 20] {
            click(&mut d, &clicks, "a", ts).await.expect("pipe");
        }
        let sessions = |d: &TestDriver| -> Vec<(String, Window, u64)> {
            d.windowed_table(&counts).expect("table")
        };
        assert_eq!(
            sessions(&d),
            vec![
                ("a".to_string(), Window::new(0, 5), 2),
                ("a".to_string(), Window::new(20, 30), 2),
            ]
        );
        // 12 bridges both: one session, the two others tombstoned.
        click(&mut d, &clicks, "a", 12).await.expect("pipe");
        assert_eq!(sessions(&d), vec![("a".to_string(), Window::new(0, 30), 5)]);
        let log = d.read_records("t-per-window-changelog");
        for gone in [Window::new(0, 5), Window::new(20, 30)] {
            let k = crate::window::store_key(b"\"a\"", gone);
            assert!(
                log.iter()
                    .any(|r| r.key.as_deref() == Some(&k[..]) && r.value.is_none()),
                "no tombstone for the merged-away {gone:?}"
            );
        }
        // Stream time (per partition) 30: a new session at 5 for a key of
        // a's partition is closed (its end is more than grace 0 behind); a
        // at 25 still joins [0, 30].
        let part = |k: &str| partition_for_key(format!("\"{k}\"").as_bytes(), 4);
        let neighbour = (0..100)
            .map(|i| format!("b{i}"))
            .find(|k| part(k) == part("a"))
            .expect("a key in a's partition");
        click(&mut d, &clicks, &neighbour, 5)
            .await
            .expect("late, dropped");
        click(&mut d, &clicks, "a", 25).await.expect("pipe");
        assert_eq!(sessions(&d), vec![("a".to_string(), Window::new(0, 30), 6)]);
        // And sessions come back the same after a restart.
        d.restart().await;
        click(&mut d, &clicks, "a", 40).await.expect("pipe");
        assert_eq!(
            sessions(&d),
            vec![("a".to_string(), Window::new(0, 40), 7)],
            "40 is within the gap of 30: the restored session grows"
        );
    }

    /// A windowed count whose results go to the topic `out`, keyed
    /// `KEY@START/END`.
    fn emitting_counter(
        guarantee: &str,
        spec: impl FnOnce(
            Table<String, u64>,
            &Topic<Windowed<String>, u64>,
        ) -> WindowedTable<String, u64>,
    ) -> (App, Topic<String, String>, WindowedTable<String, u64>) {
        let mut app = app(guarantee);
        let clicks = app.topic_with::<String, String>("clicks", TopicSpec::new(Utf8, Utf8));
        let out = app
            .topic_with::<Windowed<String>, u64>("out", TopicSpec::new(WindowedText(Utf8), Json));
        let counts = spec(
            app.table_with("per-window", TableSpec::new(Utf8, Json, || 0u64)),
            &out,
        );
        let table = counts.clone();
        app.agent(
            "count",
            &clicks,
            async move |batch: Batch<String, String>| {
                let mut t = batch.windowed(&table)?;
                for ev in batch.events() {
                    let ev = ev?;
                    t.update(&ev, &ev.key()?, |n| *n += 1)?;
                }
                Ok(())
            },
        );
        (app, clicks, counts)
    }

    /// `out`'s new records as (key, value, timestamp), values as text.
    fn emitted(d: &mut TestDriver) -> Vec<(String, Option<String>, i64)> {
        d.read_records("out")
            .into_iter()
            .map(|r| {
                let text = |b: Option<Bytes>| b.map(|b| String::from_utf8_lossy(&b).into_owned());
                (text(r.key).unwrap_or_default(), text(r.value), r.timestamp)
            })
            .collect()
    }

    fn row(k: &str, v: Option<&str>, ts: i64) -> (String, Option<String>, i64) {
        (k.to_string(), v.map(str::to_string), ts)
    }

    #[tokio::test]
    async fn final_results_come_once_per_window_when_it_closes_and_not_again_after_a_restart() {
        for guarantee in ["exactly_once", "at_least_once"] {
            let (app, clicks, _) = emitting_counter(guarantee, |t, out| {
                t.tumbling(Duration::from_millis(10))
                    .grace(Duration::from_millis(5))
                    .emit(Emit::Final)
                    .to(out)
            });
            let mut d = TestDriver::new(&app).expect("driver");
            for ts in [1, 5, 12] {
                click(&mut d, &clicks, "a", ts).await.expect("pipe");
            }
            assert_eq!(emitted(&mut d), vec![], "[0, 10) closes at 15");
            click(&mut d, &clicks, "a", 15).await.expect("pipe");
            assert_eq!(emitted(&mut d), vec![row("a@0/10", Some("2"), 5)]);
            // A crash: state restored from the changelog, closes pending
            // rebuilt from the store; [0, 10) is not emitted again.
            d.restart().await;
            click(&mut d, &clicks, "a", 18).await.expect("pipe");
            assert_eq!(emitted(&mut d), vec![], "{guarantee}");
            click(&mut d, &clicks, "a", 40).await.expect("pipe");
            assert_eq!(
                emitted(&mut d),
                vec![row("a@10/20", Some("3"), 18)],
                "{guarantee}: the window restored closes"
            );
        }
    }

    #[tokio::test]
    async fn updates_emit_every_change_and_tombstones_for_merged_away_sessions() {
        let (app, clicks, _) = emitting_counter("exactly_once", |t, out| {
            t.session(Duration::from_millis(10), |a: &u64, b: &u64| a + b)
                .expires(Duration::from_secs(3600))
                .to(out)
        });
        let mut d = TestDriver::new(&app).expect("driver");
        for ts in [0, 30, 20] {
            click(&mut d, &clicks, "a", ts).await.expect("pipe");
        }
        // 10 bridges [0, 0] and [20, 30] (gap 10).
        click(&mut d, &clicks, "a", 10).await.expect("pipe");
        assert_eq!(
            emitted(&mut d),
            vec![
                row("a@0/0", Some("1"), 0),
                row("a@30/30", Some("1"), 30),
                row("a@30/30", None, 20),
                row("a@20/30", Some("2"), 30),
                row("a@0/0", None, 10),
                row("a@20/30", None, 10),
                row("a@0/30", Some("4"), 30),
            ]
        );
    }

    #[tokio::test]
    async fn the_close_callback_sees_each_window_once_even_when_restored_from_the_changelog() {
        let closed: Rc<RefCell<Vec<(String, Window, u64)>>> = Rc::default();
        let seen = closed.clone();
        let (app, clicks, _) = emitting_counter("exactly_once", move |t, _| {
            t.sliding(Duration::from_millis(10))
                .on_window_close(move |k: &String, w, n: &u64| {
                    seen.borrow_mut().push((k.clone(), w, *n))
                })
        });
        let mut d = TestDriver::new(&app).expect("driver");
        for ts in [20, 25] {
            click(&mut d, &clicks, "a", ts).await.expect("pipe");
        }
        d.restart().await;
        click(&mut d, &clicks, "a", 100).await.expect("pipe");
        assert_eq!(
            closed.borrow().clone(),
            vec![
                ("a".to_string(), Window::new(10, 20), 1),
                ("a".to_string(), Window::new(15, 25), 2),
                ("a".to_string(), Window::new(21, 31), 1),
            ]
        );
    }

    #[tokio::test]
    async fn windows_closing_by_the_wall_clock_close_without_new_records() {
        let (app, clicks, _) = emitting_counter("exactly_once", |t, out| {
            t.tumbling(Duration::from_millis(10))
                .close_by_wall_clock()
                .emit(Emit::Final)
                .to(out)
        });
        let mut d = TestDriver::new(&app).expect("driver");
        click(&mut d, &clicks, "a", 3).await.expect("pipe");
        d.advance_wall_clock(Duration::from_millis(9))
            .await
            .expect("tick");
        assert_eq!(emitted(&mut d), vec![]);
        d.advance_wall_clock(Duration::from_millis(1))
            .await
            .expect("tick");
        assert_eq!(emitted(&mut d), vec![row("a@0/10", Some("1"), 3)]);
        // The wall clock closed [0, 10): a record for it is late now.
        click(&mut d, &clicks, "a", 4).await.expect("dropped");
        d.advance_wall_clock(Duration::from_millis(100))
            .await
            .expect("tick");
        assert_eq!(emitted(&mut d), vec![]);
    }

    #[tokio::test]
    async fn records_are_placed_by_a_field_the_wall_clock_or_the_stream_time_as_configured() {
        let long = Duration::from_secs(3600);
        let windows = |d: &TestDriver, t: &WindowedTable<String, u64>| -> Vec<(Window, u64)> {
            d.windowed_table(t)
                .expect("table")
                .into_iter()
                .map(|(_, w, n)| (w, n))
                .collect()
        };
        let at = |from: i64| Window::new(from, from + 10);
        let record =
            |v: &str, ts: i64| TestRecord::new("a".to_string(), v.to_string()).timestamp(ts);

        let (app, clicks, counts) = emitting_counter("at_least_once", |t, _| {
            t.tumbling(Duration::from_millis(10))
                .expires(long)
                .relative_to_field(|v: &String| v.parse().unwrap_or(-1))
        });
        let mut d = TestDriver::new(&app).expect("driver");
        d.pipe_record(&clicks, record("25", 3)).await.expect("pipe");
        assert_eq!(
            windows(&d, &counts),
            vec![(at(20), 1)],
            "by the value's field"
        );

        let (app, clicks, counts) = emitting_counter("at_least_once", |t, _| {
            t.tumbling(Duration::from_millis(10))
                .expires(long)
                .relative_to_stream()
        });
        let mut d = TestDriver::new(&app).expect("driver");
        d.pipe_record(&clicks, record("x", 52)).await.expect("pipe");
        d.pipe_record(&clicks, record("x", 5)).await.expect("pipe");
        assert_eq!(
            windows(&d, &counts),
            vec![(at(50), 2)],
            "late: at the stream time"
        );

        let (app, clicks, counts) = emitting_counter("at_least_once", |t, _| {
            t.tumbling(Duration::from_millis(10))
                .expires(long)
                .relative_to_now()
        });
        let mut d = TestDriver::new(&app).expect("driver");
        d.advance_wall_clock(Duration::from_millis(71))
            .await
            .expect("clock");
        d.pipe_record(&clicks, record("x", 5)).await.expect("pipe");
        assert_eq!(windows(&d, &counts), vec![(at(70), 1)], "by the wall clock");

        // A field read from another agent's value type: a clear error.
        let (app, clicks, _) = emitting_counter("at_least_once", |t, _| {
            t.tumbling(Duration::from_millis(10))
                .relative_to_field(|v: &u64| *v as i64)
        });
        let mut d = TestDriver::new(&app).expect("driver");
        let e = d
            .pipe_record(&clicks, record("1", 1))
            .await
            .expect_err("refused");
        assert!(e.to_string().contains("relative_to_field"), "{e}");
    }

    #[tokio::test]
    async fn every_task_reads_every_key_of_a_global_table_as_its_topic_has_it() {
        let mut app = app("exactly_once");
        let clicks = app.topic_with::<String, String>("clicks", TopicSpec::new(Utf8, Utf8));
        // One partition, where the clicks have four: a global table does
        // not depend on co-partitioning.
        let titles =
            app.topic_with::<String, String>("titles", TopicSpec::new(Utf8, Utf8).partitions(1));
        let out = app.topic_with::<String, String>("out", TopicSpec::new(Utf8, Utf8));
        let table = app.global_table(&titles, String::new);
        let (g, o) = (table.clone(), out.clone());
        app.agent(
            "enrich",
            &clicks,
            async move |batch: Batch<String, String>| {
                let mut titles = batch.global(&g)?;
                for item in batch.items() {
                    let (k, v) = item?;
                    let title = titles.get_opt(&k)?.unwrap_or_else(|| "null".into());
                    batch.send(&o, Some(&k), &format!("{v}+{title}"))?;
                }
                Ok(())
            },
        );
        let mut d = TestDriver::new(&app).expect("driver");
        let keys: Vec<String> = (0..8).map(|i| format!("page{i}")).collect();
        for k in &keys {
            d.pipe(&titles, Some(k), &k.to_uppercase())
                .await
                .expect("title");
        }
        for k in &keys {
            d.pipe(&clicks, Some(k), &"c".to_string())
                .await
                .expect("click");
        }
        let got = |d: &mut TestDriver| -> Vec<String> {
            let mut v: Vec<String> = d
                .read_records("out")
                .into_iter()
                .map(|r| String::from_utf8_lossy(&r.value.unwrap_or_default()).into_owned())
                .collect();
            v.sort();
            v
        };
        let mut expected: Vec<String> = keys
            .iter()
            .map(|k| format!("c+{}", k.to_uppercase()))
            .collect();
        expected.sort();
        assert_eq!(
            got(&mut d),
            expected,
            "every partition's task sees every key"
        );
        // A tombstone removes the key; an update replaces it.
        d.pipe_bytes("titles", Some(b"page1"), None)
            .await
            .expect("tombstone");
        d.pipe(&titles, Some(&"page2".to_string()), &"NEW".to_string())
            .await
            .expect("update");
        for k in ["page1", "page2"] {
            d.pipe(&clicks, Some(&k.to_string()), &"c".to_string())
                .await
                .expect("click");
        }
        assert_eq!(got(&mut d), vec!["c+NEW".to_string(), "c+null".to_string()]);
    }

    #[tokio::test]
    async fn a_windowed_table_is_opened_only_as_windowed() {
        let mut app = app("at_least_once");
        let clicks = app.topic::<String, String>("clicks");
        let counts = app
            .table::<String, u64>("w")
            .tumbling(Duration::from_secs(1));
        let table = counts.clone();
        app.agent(
            "plain",
            &clicks,
            async move |batch: Batch<String, String>| batch.table(table.table()).map(drop),
        );
        let mut d = TestDriver::new(&app).expect("driver");
        let e = click(&mut d, &clicks, "a", 0).await.expect_err("refused");
        assert!(e.to_string().contains("Batch::windowed"), "{e}");
    }

    #[tokio::test]
    async fn hopping_windows_count_a_record_in_each_window_that_holds_it() {
        let (app, clicks, counts) = windowed_counter(|t| {
            t.hopping(Duration::from_secs(10), Duration::from_secs(5))
                .expires(Duration::from_secs(3600))
        });
        let mut d = TestDriver::new(&app).expect("driver");
        click(&mut d, &clicks, "k", 12_000).await.expect("pipe");
        let got: Vec<(Window, u64)> = d
            .windowed_table(&counts)
            .expect("table")
            .into_iter()
            .map(|(_, w, n)| (w, n))
            .collect();
        assert_eq!(
            got,
            vec![
                (Window::new(5_000, 15_000), 1),
                (Window::new(10_000, 20_000), 1)
            ]
        );
    }

    #[tokio::test]
    async fn windows_past_their_retention_are_deleted_with_tombstones_even_after_a_restart() {
        let (app, clicks, counts) = windowed_counter(|t| {
            t.tumbling(Duration::from_secs(10))
                .expires(Duration::from_secs(30))
        });
        let mut d = TestDriver::new(&app).expect("driver");
        click(&mut d, &clicks, "a", 1_000).await.expect("pipe");
        click(&mut d, &clicks, "a", 15_000).await.expect("pipe");
        // Restored from the changelog, the windows still expire: the index
        // is rebuilt from the store.
        d.restart().await;
        // Stream time 30 s: [0, 10 s) has lived 30 s since its start.
        click(&mut d, &clicks, "a", 30_000).await.expect("pipe");
        let starts: Vec<i64> = d
            .windowed_table(&counts)
            .expect("table")
            .into_iter()
            .map(|(_, w, _)| w.start)
            .collect();
        assert_eq!(starts, vec![10_000, 30_000]);
        let log = d.read_records("t-per-window-changelog");
        let tombstone = crate::window::store_key(b"\"a\"", Window::new(0, 10_000));
        assert!(
            log.iter()
                .any(|r| r.key.as_deref() == Some(&tombstone[..]) && r.value.is_none()),
            "no tombstone for the expired window"
        );
    }

    #[tokio::test]
    async fn stream_time_survives_a_restart_so_late_records_stay_dropped() {
        let (app, clicks, counts) = windowed_counter(|t| {
            t.tumbling(Duration::from_secs(10))
                .expires(Duration::from_secs(3600))
        });
        let mut d = TestDriver::new(&app).expect("driver");
        click(&mut d, &clicks, "a", 1_000).await.expect("pipe");
        click(&mut d, &clicks, "a", 25_000).await.expect("pipe");
        // Stores rebuilt from the changelog: the stream time (25 s) with
        // them, so [0, 10 s) is still closed.
        d.restart().await;
        click(&mut d, &clicks, "a", 2_000)
            .await
            .expect("late, dropped");
        let got: Vec<(i64, u64)> = d
            .windowed_table(&counts)
            .expect("table")
            .into_iter()
            .map(|(_, w, n)| (w.start, n))
            .collect();
        assert_eq!(got, vec![(0, 1), (20_000, 1)]);
    }

    #[tokio::test]
    async fn tables_must_be_co_partitioned_with_their_sources() {
        let mut app = app("at_least_once");
        let a = app.topic_with::<String, String>("a", TopicSpec::json().partitions(2));
        let b = app.topic_with::<String, String>("b", TopicSpec::json().partitions(3));
        let _t = app.table::<String, u64>("t");
        app.agent("a", &a, async |_b: Batch<String, String>| Ok(()));
        app.agent("b", &b, async |_b: Batch<String, String>| Ok(()));
        let e = TestDriver::new(&app).expect_err("not co-partitioned");
        assert!(e.to_string().contains("co-partitioned"), "{e}");
    }
}

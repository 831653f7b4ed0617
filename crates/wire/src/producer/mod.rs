//! The producer: per-partition batching, one request per broker carrying all
//! of its ready partitions, bounded memory with backpressure, retries that
//! keep per-partition order, and idempotence on by default (KIP-98, with
//! KIP-360's epoch bump on sequence errors).
//!
//! ```no_run
//! # async fn demo() -> faustus_wire::Result<()> {
//! use faustus_wire::producer::{Producer, ProducerConfig, ProducerRecord};
//! use faustus_wire::Properties;
//!
//! let props = Properties::new()
//!     .set("bootstrap.servers", "127.0.0.1:9092")
//!     .set("linger.ms", "5")
//!     .set("compression.type", "lz4");
//! let producer = Producer::connect(ProducerConfig::from_properties(&props)?).await?;
//! let delivery = producer
//!     .send(ProducerRecord::new("clicks").key("user-1").value("/home"))
//!     .await?;
//! let meta = delivery.await?;
//! println!("written to {}-{} at offset {}", meta.topic, meta.partition, meta.offset);
//! producer.close().await?;
//! # Ok(()) }
//! ```
//!
//! # Cancel safety
//!
//! Dropping [`Producer::send`] before it returns drops the record (it was not
//! yet queued). Dropping a [`DeliveryFuture`] does not cancel the delivery.

mod accumulator;
mod partitioner;
mod transactional;
pub mod txn;

pub use transactional::TransactionalProducer;

use std::collections::{BTreeMap, HashMap};
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{InitProducerIdRequest, ProduceRequest, ProducerId};
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::time::Instant;

pub use accumulator::TopicPartition;
use accumulator::{AccConfig, Accumulator, Ack, Batch, Completion};
use partitioner::Sticky;
pub use partitioner::{murmur2, partition_for_key};

use crate::client::{topic_name, Client};
use crate::config::{ClientConfig, Properties};
use crate::protocol::ErrorCode;
use crate::record::{BatchBuilder, Compression, HEADER_LEN};
use crate::{Error, Result};

/// Producer settings, by the Java client's names.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Connection settings.
    pub client: ClientConfig,
    /// `acks`: 0, 1, or -1 (`all`, the default).
    pub acks: i16,
    /// `linger.ms` (default 5, as in Kafka 4.x).
    pub linger: Duration,
    /// `batch.size` in bytes (default 16384).
    pub batch_size: usize,
    /// `buffer.memory` in bytes (default 32 MiB).
    pub buffer_memory: usize,
    /// `compression.type` (default `none`).
    pub compression: Compression,
    /// `enable.idempotence` (default true; off when `acks` is not `all` and
    /// idempotence was not asked for explicitly, as in the Java client).
    pub idempotence: bool,
    /// `max.in.flight.requests.per.connection` (default 5; at most 5 with
    /// idempotence). Without idempotence one request per partition is in
    /// flight at a time, so retries cannot reorder records.
    pub max_in_flight: usize,
    /// `delivery.timeout.ms` (default 120000).
    pub delivery_timeout: Duration,
    /// `max.request.size` (default 1048576).
    pub max_request_size: usize,
    /// `max.block.ms` (default 60000): how long `send` may wait for metadata
    /// or buffer space.
    pub max_block: Duration,
    /// `partitioner.ignore.keys` (default false).
    pub ignore_keys: bool,
    /// `transactional.id`: set for a [`TransactionalProducer`].
    pub transactional_id: Option<String>,
    /// `transaction.timeout.ms` (default 60000): the coordinator aborts a
    /// transaction left open longer.
    pub transaction_timeout: Duration,
}

impl ProducerConfig {
    /// Reads producer settings.
    pub fn from_properties(p: &Properties) -> Result<Self> {
        let client = ClientConfig::from_properties(p)?;
        let acks = match p.get("acks").unwrap_or("all") {
            "all" | "-1" => -1,
            "1" => 1,
            "0" => 0,
            other => {
                return Err(Error::Config(format!(
                    "acks={other}: expected all, -1, 0 or 1"
                )))
            }
        };
        let explicit = p.get("enable.idempotence").is_some();
        let mut idempotence = p.bool_or("enable.idempotence", true)?;
        let transactional_id = p
            .get("transactional.id")
            .filter(|t| !t.is_empty())
            .map(str::to_owned);
        if transactional_id.is_some() && (!idempotence || acks != -1) {
            return Err(Error::Config(
                "transactional.id requires enable.idempotence=true and acks=all".into(),
            ));
        }
        if acks != -1 {
            if explicit && idempotence {
                return Err(Error::Config(
                    "enable.idempotence=true requires acks=all".into(),
                ));
            }
            idempotence = false;
        }
        let max_in_flight: usize = p.parse_or("max.in.flight.requests.per.connection", 5)?;
        if idempotence && max_in_flight > 5 {
            if explicit {
                return Err(Error::Config(
                    "enable.idempotence=true requires max.in.flight.requests.per.connection <= 5"
                        .into(),
                ));
            }
            idempotence = false;
        }
        let compression = p
            .get("compression.type")
            .unwrap_or("none")
            .parse::<Compression>()
            .map_err(|e| Error::Config(format!("compression.type: {e}")))?;
        let cfg = Self {
            acks,
            linger: p.millis_or("linger.ms", 5)?,
            batch_size: p.parse_or("batch.size", 16_384usize)?.max(HEADER_LEN + 1),
            buffer_memory: p.parse_or("buffer.memory", 32 * 1024 * 1024usize)?,
            compression,
            idempotence,
            max_in_flight: max_in_flight.max(1),
            delivery_timeout: p.millis_or("delivery.timeout.ms", 120_000)?,
            max_request_size: p.parse_or("max.request.size", 1_048_576usize)?,
            max_block: p.millis_or("max.block.ms", 60_000)?,
            ignore_keys: p.bool_or("partitioner.ignore.keys", false)?,
            transaction_timeout: p.millis_or("transaction.timeout.ms", 60_000)?,
            transactional_id,
            client,
        };
        if cfg.buffer_memory < cfg.batch_size {
            return Err(Error::Config(
                "buffer.memory must be at least batch.size".into(),
            ));
        }
        Ok(cfg)
    }

    /// Defaults with the given `bootstrap.servers`.
    pub fn new(bootstrap: &str) -> Result<Self> {
        Self::from_properties(&Properties::new().set("bootstrap.servers", bootstrap))
    }
}

/// A record to send.
#[derive(Debug, Clone, Default)]
pub struct ProducerRecord {
    /// Target topic.
    pub topic: String,
    /// Explicit partition, or `None` to let the partitioner choose.
    pub partition: Option<i32>,
    /// Key (`None` for a null key).
    pub key: Option<Bytes>,
    /// Value (`None` for a tombstone).
    pub value: Option<Bytes>,
    /// Headers, in order; keys may repeat.
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Create time in ms since the epoch; `None` for now.
    pub timestamp: Option<i64>,
}

impl ProducerRecord {
    /// A record for `topic` with no key or value yet.
    pub fn new(topic: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            ..Self::default()
        }
    }
    /// Sets the key.
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }
    /// Sets the value.
    pub fn value(mut self, value: impl Into<Bytes>) -> Self {
        self.value = Some(value.into());
        self
    }
    /// Adds a header.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((key.into(), Some(value.into())));
        self
    }
    /// Sets the partition.
    pub fn partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }
    /// Sets the timestamp (ms).
    pub fn timestamp(mut self, ts: i64) -> Self {
        self.timestamp = Some(ts);
        self
    }
}

/// Where a record was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    /// Topic.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: i32,
    /// Offset (-1 with `acks=0`, or when a retry found the record already
    /// written and the broker did not report where).
    pub offset: i64,
    /// The record's timestamp (the broker's when the topic uses log-append
    /// time).
    pub timestamp: i64,
}

/// Resolves when the record is acknowledged (or failed).
#[derive(Debug)]
pub struct DeliveryFuture {
    completion: Arc<Completion>,
    topic: Arc<str>,
    partition: i32,
    delta: i32,
    timestamp: i64,
}

impl DeliveryFuture {
    /// The partition the record was queued for.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// Whether `other` is for a record of the same batch: records of a batch
    /// are delivered, or fail, together.
    pub fn same_batch(&self, other: &DeliveryFuture) -> bool {
        Arc::ptr_eq(&self.completion, &other.completion)
    }

    /// The outcome if it is known already, without waiting: lets a caller
    /// with many records in flight collect finished deliveries as it goes
    /// instead of awaiting each in turn.
    pub fn try_result(&self) -> Option<Result<RecordMetadata>> {
        self.completion.result.get().map(|r| self.resolve(r))
    }

    fn resolve(&self, r: &std::result::Result<Ack, Arc<Error>>) -> Result<RecordMetadata> {
        match r {
            Ok(ack) => Ok(RecordMetadata {
                topic: self.topic.clone(),
                partition: self.partition,
                offset: if ack.base_offset < 0 {
                    -1
                } else {
                    ack.base_offset + i64::from(self.delta)
                },
                timestamp: if ack.log_append_time >= 0 {
                    ack.log_append_time
                } else {
                    self.timestamp
                },
            }),
            Err(e) => Err(e.duplicate()),
        }
    }
}

impl IntoFuture for DeliveryFuture {
    type Output = Result<RecordMetadata>;
    type IntoFuture = Delivery;

    fn into_future(self) -> Delivery {
        // A batch already acknowledged (the usual case for a caller that
        // awaits deliveries well after sending) resolves without a waker
        // registration or an allocation.
        if let Some(r) = self.completion.result.get() {
            return Delivery(DeliveryState::Ready(Some(self.resolve(r))));
        }
        Delivery(DeliveryState::Waiting(Box::pin(async move {
            loop {
                let notified = self.completion.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if let Some(r) = self.completion.result.get() {
                    return self.resolve(r);
                }
                notified.await;
            }
        })))
    }
}

/// The future of a [`DeliveryFuture`] being awaited: ready at once when
/// the record's batch is already acknowledged or failed.
pub struct Delivery(DeliveryState);

enum DeliveryState {
    Ready(Option<Result<RecordMetadata>>),
    Waiting(Pin<Box<dyn Future<Output = Result<RecordMetadata>> + Send>>),
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.0 {
            DeliveryState::Ready(_) => "ready",
            DeliveryState::Waiting(_) => "waiting",
        };
        f.debug_tuple("Delivery").field(&state).finish()
    }
}

impl Future for Delivery {
    type Output = Result<RecordMetadata>;

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match &mut self.0 {
            // Polled again after it completed (a caller's bug): as std's
            // `Ready` would panic, this answers with an error instead.
            DeliveryState::Ready(r) => std::task::Poll::Ready(r.take().unwrap_or_else(|| {
                Err(Error::Config("delivery polled after it completed".into()))
            })),
            DeliveryState::Waiting(f) => f.as_mut().poll(cx),
        }
    }
}

/// What `send` keeps of a topic between records.
struct KnownTopic {
    name: Arc<str>,
    info: Arc<crate::client::TopicInfo>,
    /// The client's metadata version `info` was read at.
    version: u64,
}

struct Inner {
    client: Client,
    cfg: ProducerConfig,
    acc: Mutex<Accumulator>,
    sticky: Mutex<Sticky>,
    /// Per topic: its interned name and its metadata as of a metadata
    /// version (a fast hash, looked up once per record; no metadata
    /// snapshot per record).
    topics: Mutex<rustc_hash::FxHashMap<String, KnownTopic>>,
    wake: Notify,
    idle: Notify,
    memory: Arc<Semaphore>,
    closing: AtomicBool,
    /// Brokers sent `acks=0` requests since the last flush.
    unacked_brokers: Mutex<std::collections::BTreeSet<i32>>,
    /// The transaction state, for a transactional producer.
    txn: Option<Arc<transactional::TxnShared>>,
}

/// An asynchronous Kafka producer. Share it behind an `Arc`; `send` takes
/// `&self`.
pub struct Producer {
    inner: Arc<Inner>,
    sender: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("client", &self.inner.client)
            .finish()
    }
}

/// The partitions of `info` that have a leader (where the sticky partitioner
/// may send null-key records).
fn with_leader(info: &crate::client::TopicInfo) -> Vec<i32> {
    info.partitions
        .iter()
        .filter(|p| p.leader >= 0)
        .map(|p| p.id)
        .collect()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Producer {
    /// Connects to the cluster and starts the sender task.
    pub async fn connect(cfg: ProducerConfig) -> Result<Self> {
        let client = Client::connect(cfg.client.clone()).await?;
        Ok(Self::with_client(client, cfg))
    }

    /// A producer over an existing cluster handle (its `client` settings in
    /// `cfg` are ignored).
    pub fn with_client(client: Client, cfg: ProducerConfig) -> Self {
        let txn = cfg.transactional_id.as_ref().map(|id| {
            Arc::new(transactional::TxnShared::new(
                id.clone(),
                cfg.client.retry_backoff,
            ))
        });
        let acc = Accumulator::new(AccConfig {
            batch_size: cfg.batch_size,
            linger: cfg.linger,
            compression: cfg.compression,
            idempotent: cfg.idempotence,
            max_in_flight: if cfg.idempotence {
                cfg.max_in_flight.min(5)
            } else {
                1
            },
            delivery_timeout: cfg.delivery_timeout,
            backoff: client.retry_backoff(),
            max_request_size: cfg.max_request_size,
            transactional: cfg.transactional_id.is_some(),
        });
        let inner = Arc::new(Inner {
            memory: Arc::new(Semaphore::new(cfg.buffer_memory)),
            client,
            cfg,
            acc: Mutex::new(acc),
            sticky: Mutex::new(Sticky::default()),
            topics: Mutex::new(rustc_hash::FxHashMap::default()),
            wake: Notify::new(),
            idle: Notify::new(),
            closing: AtomicBool::new(false),
            unacked_brokers: Mutex::new(std::collections::BTreeSet::new()),
            txn,
        });
        let sender = tokio::spawn(run_sender(inner.clone()));
        Self { inner, sender }
    }

    /// The cluster handle.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// `topic`'s interned name and partition count: kept from the last
    /// record while the client's metadata is unchanged, else read (and
    /// fetched when unknown, up to `max.block.ms`).
    fn known_topic(&self, topic: &str) -> Option<(Arc<str>, i32)> {
        let version = self.inner.client.metadata_version();
        lock(&self.inner.topics)
            .get(topic)
            .filter(|t| t.version == version)
            .map(|t| (t.name.clone(), t.info.partitions.len() as i32))
    }

    /// The partitions of `topic` that have a leader, for the sticky
    /// partitioner when it picks a partition (all of them if the topic's
    /// metadata is not kept).
    fn leaders(&self, topic: &str, partitions: i32) -> Vec<i32> {
        match lock(&self.inner.topics).get(topic) {
            Some(t) => with_leader(&t.info),
            None => (0..partitions).collect(),
        }
    }

    /// [`known_topic`](Self::known_topic)'s slow path: reads the client's
    /// metadata, fetching it when the topic is unknown.
    async fn topic(&self, topic: &str) -> Result<(Arc<str>, Arc<crate::client::TopicInfo>)> {
        let inner = &self.inner;
        let version = inner.client.metadata_version();
        let info = match inner.client.cluster().topics.get(topic) {
            Some(t) => t.clone(),
            None => {
                inner
                    .client
                    .retry("producer metadata", inner.cfg.max_block, || {
                        inner.client.topic(topic, false, true)
                    })
                    .await?
            }
        };
        let mut topics = lock(&inner.topics);
        let name = match topics.get(topic) {
            Some(t) => t.name.clone(),
            None => Arc::from(topic),
        };
        topics.insert(
            topic.to_owned(),
            KnownTopic {
                name: name.clone(),
                info: info.clone(),
                version,
            },
        );
        Ok((name, info))
    }

    /// Queues a record and returns a future for its delivery. Waits (up to
    /// `max.block.ms`) for the topic's metadata and for room in
    /// `buffer.memory`: that wait is the backpressure.
    pub async fn send(&self, rec: ProducerRecord) -> Result<DeliveryFuture> {
        let inner = &self.inner;
        if inner.closing.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let size =
            BatchBuilder::record_size(rec.key.as_deref(), rec.value.as_deref(), &rec.headers);
        let limit = inner.cfg.max_request_size.min(inner.cfg.buffer_memory);
        if size + HEADER_LEN > limit {
            return Err(Error::RecordTooLarge {
                topic: rec.topic,
                size: size + HEADER_LEN,
                limit,
                setting: if limit == inner.cfg.max_request_size {
                    "max.request.size"
                } else {
                    "buffer.memory"
                },
            });
        }
        // The slow paths are boxed so that `send`'s own future stays small:
        // it is moved on every call.
        let (topic, partitions) = match self.known_topic(&rec.topic) {
            Some(known) => known,
            None => {
                let (name, info) = Box::pin(self.topic(&rec.topic)).await?;
                (name, info.partitions.len() as i32)
            }
        };
        let partition = match (rec.partition, &rec.key) {
            (Some(p), _) => {
                if p < 0 || p >= partitions {
                    return Err(Error::UnknownPartition {
                        topic: rec.topic,
                        partition: p,
                    });
                }
                p
            }
            (None, Some(k)) if !inner.cfg.ignore_keys => partition_for_key(k, partitions),
            _ => {
                let current = lock(&inner.sticky).current(&rec.topic, partitions);
                match current {
                    Some(p) => p,
                    None => {
                        let avail = self.leaders(&rec.topic, partitions);
                        lock(&inner.sticky).partition(&rec.topic, partitions, &avail)
                    }
                }
            }
        };
        // Room in buffer.memory: taken at once when there is some (no timer
        // per record), else awaited up to max.block.ms. The record's batch
        // holds the bytes from here on and gives them back when dropped.
        match inner.memory.try_acquire_many(size as u32) {
            Ok(permit) => permit.forget(),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(Error::Closed),
            Err(tokio::sync::TryAcquireError::NoPermits) => Box::pin(tokio::time::timeout(
                inner.cfg.max_block,
                inner.memory.acquire_many(size as u32),
            ))
            .await
            .map_err(|_| Error::Timeout {
                what: "waiting for buffer.memory".into(),
                after: inner.cfg.max_block,
            })?
            .map_err(|_| Error::Closed)?
            .forget(),
        }
        // Nothing from here to the append awaits: the bytes taken cannot
        // be lost to a dropped future.
        let tp = TopicPartition { topic, partition };
        let appended = {
            let mut acc = lock(&inner.acc);
            let before = acc.outstanding();
            let a = acc.append(
                &tp,
                rec.timestamp,
                rec.key.as_deref(),
                rec.value.as_deref(),
                &rec.headers,
                Some((&inner.memory, size)),
                Instant::now,
                now_ms,
            );
            (a, acc.outstanding() != before)
        };
        let (appended, new_batch) = appended;
        if appended.batch_full
            && rec.partition.is_none()
            && (rec.key.is_none() || inner.cfg.ignore_keys)
        {
            let avail = self.leaders(&rec.topic, partitions);
            lock(&inner.sticky).next(&rec.topic, partitions, &avail, Some(partition));
        }
        if appended.batch_full || new_batch {
            inner.wake.notify_one();
        }
        Ok(DeliveryFuture {
            completion: appended.completion,
            topic: tp.topic,
            partition,
            delta: appended.offset_delta,
            timestamp: appended.timestamp,
        })
    }

    /// Sends everything queued now, without waiting for `linger.ms`, and
    /// waits until every queued record is acknowledged or failed.
    ///
    /// Not transactional: fails with the first record failure since the
    /// previous flush (each delivery future has its own outcome too), or
    /// with [`Error::Closed`] if the sender task is gone, so that a caller
    /// that commits input offsets after a flush never commits past an output
    /// that was not written. A transactional producer reports failures
    /// through its commit instead.
    ///
    /// With `acks=0` no record is ever acknowledged; flush then sends each
    /// broker written to a request that does get an answer, on the same
    /// connection, and waits for it. A broker handles one request per
    /// connection at a time, in order, so the answer means the records
    /// before it were appended (unless the connection broke meanwhile).
    pub async fn flush(&self) -> Result<()> {
        let inner = &self.inner;
        lock(&inner.acc).begin_flush();
        inner.wake.notify_one();
        loop {
            let idle = inner.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if lock(&inner.acc).outstanding() == 0 {
                break;
            }
            if self.sender.is_finished() {
                lock(&inner.acc).end_flush();
                return Err(Error::Closed);
            }
            idle.await;
        }
        let failure = {
            let mut acc = lock(&inner.acc);
            acc.end_flush();
            acc.take_flush_failure()
        };
        let brokers = std::mem::take(&mut *lock(&inner.unacked_brokers));
        for broker in brokers {
            if let Some(conn) = inner.client.connected(broker).await {
                let barrier = kafka_protocol::messages::ApiVersionsRequest::default();
                if let Err(e) = conn.call(&barrier).await {
                    tracing::debug!(broker, error = %e, "acks=0 flush barrier failed");
                }
            }
        }
        match failure {
            Some(e) => Err(e.duplicate()),
            None => Ok(()),
        }
    }

    /// Flushes, then stops the sender task.
    pub async fn close(self) -> Result<()> {
        self.flush().await?;
        self.inner.closing.store(true, Ordering::Release);
        self.inner.wake.notify_one();
        Ok(())
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        // The sender finishes what is queued (bounded by delivery.timeout.ms)
        // and then exits.
        self.inner.closing.store(true, Ordering::Release);
        self.inner.wake.notify_one();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Completed {
    batches: Vec<Batch>,
    result: ProduceOutcome,
}

async fn run_sender(inner: Arc<Inner>) {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Completed>();
    let mut pending_refresh: Option<tokio::task::JoinHandle<()>> = None;
    let mut init_attempt = 0u32;
    loop {
        let now = Instant::now();
        // Producer id: obtain it first, and bump its epoch when asked
        // (KIP-360) once nothing is in flight.
        let needs_id = inner.txn.is_none() && {
            let acc = lock(&inner.acc);
            inner.cfg.idempotence
                && acc.in_flight() == 0
                && (acc.producer().0 < 0 || acc.need_bump)
                && acc.outstanding() > 0
        };
        if needs_id {
            match init_producer_id(&inner).await {
                Ok((id, epoch)) => {
                    tracing::debug!(producer_id = id, epoch, "producer id assigned");
                    lock(&inner.acc).set_producer(id, epoch);
                    init_attempt = 0;
                }
                Err(e) => {
                    if e.action() == crate::Action::Fail {
                        // Not authorized (or another error no retry can
                        // fix): every waiting record fails with it now
                        // rather than at delivery.timeout.ms.
                        tracing::warn!(error = %e, "InitProducerId failed; failing the waiting records");
                        lock(&inner.acc).fail_unsent(&e);
                    } else {
                        tracing::warn!(error = %e, "InitProducerId failed; retrying");
                        let expired = lock(&inner.acc).expire(Instant::now());
                        drop(expired);
                    }
                    let delay = inner.client.retry_backoff().delay(init_attempt);
                    init_attempt += 1;
                    tokio::time::sleep(delay).await;
                    continue;
                }
            }
        }
        let (drained, deadline, outstanding) = {
            let mut acc = lock(&inner.acc);
            let expired = acc.expire(now);
            drop(expired);
            let client = &inner.client;
            let drained = match &inner.txn {
                // Only partitions the coordinator added to the transaction.
                Some(txn) => acc.drain(now, |tp| {
                    if txn.may_send(tp) {
                        client.leader_of(&tp.topic, tp.partition)
                    } else {
                        None
                    }
                }),
                None => acc.drain(now, |tp| client.leader_of(&tp.topic, tp.partition)),
            };
            (drained, acc.next_deadline(), acc.outstanding())
        };
        if outstanding == 0 {
            inner.idle.notify_waiters();
            if inner.closing.load(Ordering::Acquire) {
                break;
            }
        }
        if let Some(txn) = &inner.txn {
            if let Some(parts) = txn.partitions_to_add() {
                tokio::spawn(transactional::add_partitions(
                    inner.clone(),
                    txn.clone(),
                    parts,
                ));
            }
        }
        // Requests are queued on each connection here, in drain order, so
        // that a partition's batches reach the broker in sequence order; the
        // responses are awaited in their own tasks.
        for (broker, batches) in drained {
            let pending = start_produce(&inner, broker, &batches).await;
            let tx = done_tx.clone();
            tokio::spawn(async move {
                let result = match pending {
                    Ok(p) => p.await,
                    Err(e) => Err(e),
                };
                let _ = tx.send(Completed { batches, result });
            });
        }
        // Partitions without a known leader need fresh metadata.
        let stuck = deadline.is_some_and(|d| d <= now) && outstanding > 0;
        if stuck && pending_refresh.as_ref().is_none_or(|h| h.is_finished()) {
            let inner = inner.clone();
            pending_refresh = Some(tokio::spawn(async move {
                let _ = inner.client.refresh_metadata(None).await;
                inner.wake.notify_one();
            }));
        }
        let sleep_until = deadline
            .filter(|d| *d > now)
            .unwrap_or(now + Duration::from_millis(if stuck { 50 } else { 1000 }));
        tokio::select! {
            _ = inner.wake.notified() => {}
            Some(done) = done_rx.recv() => handle_completed(&inner, done, &mut pending_refresh),
            _ = tokio::time::sleep_until(sleep_until) => {}
        }
        // Handle every completion that is already there before draining again.
        while let Ok(done) = done_rx.try_recv() {
            handle_completed(&inner, done, &mut pending_refresh);
        }
    }
}

fn handle_completed(
    inner: &Arc<Inner>,
    done: Completed,
    pending_refresh: &mut Option<tokio::task::JoinHandle<()>>,
) {
    let now = Instant::now();
    let mut refresh = false;
    {
        let mut acc = lock(&inner.acc);
        match done.result {
            Ok(mut by_tp) => {
                for b in done.batches {
                    let key = (b.tp.topic.clone(), b.tp.partition);
                    match by_tp.remove(&key) {
                        Some((code, _, ack)) if code.is_ok() => acc.succeeded(b, ack),
                        Some((code, msg, _)) => {
                            let e = Error::server(
                                code,
                                msg,
                                "Produce",
                                Some(&b.tp.topic),
                                Some(b.tp.partition),
                            );
                            refresh |= acc.failed(b, e, now).refresh_metadata;
                        }
                        None => {
                            let e = Error::Decode {
                                api: "Produce",
                                broker: String::new(),
                                reason: format!("no result for {}-{}", b.tp.topic, b.tp.partition),
                            };
                            refresh |= acc.failed(b, e, now).refresh_metadata;
                        }
                    }
                }
            }
            Err(e) => {
                for b in done.batches {
                    refresh |= acc.failed(b, e.duplicate(), now).refresh_metadata;
                }
            }
        }
    }
    if refresh && pending_refresh.as_ref().is_none_or(|h| h.is_finished()) {
        let inner = inner.clone();
        *pending_refresh = Some(tokio::spawn(async move {
            let _ = inner.client.refresh_metadata(None).await;
            inner.wake.notify_one();
        }));
    }
}

type ProduceOutcome = Result<HashMap<(Arc<str>, i32), (ErrorCode, Option<String>, Ack)>>;

/// Queues one ProduceRequest to `broker`, one batch per partition, and
/// returns the future of its outcome.
async fn start_produce(
    inner: &Inner,
    broker: i32,
    batches: &[Batch],
) -> Result<Pin<Box<dyn Future<Output = ProduceOutcome> + Send>>> {
    let mut by_topic: BTreeMap<&str, Vec<PartitionProduceData>> = BTreeMap::new();
    for b in batches {
        by_topic.entry(&b.tp.topic).or_default().push(
            PartitionProduceData::default()
                .with_index(b.tp.partition)
                .with_records(b.bytes.clone()),
        );
    }
    let timeout_ms = inner
        .cfg
        .client
        .request_timeout
        .as_millis()
        .min(i32::MAX as u128) as i32;
    let req = ProduceRequest::default()
        .with_transactional_id(inner.txn.as_ref().map(|t| {
            kafka_protocol::messages::TransactionalId(
                kafka_protocol::protocol::StrBytes::from_string(t.id().to_owned()),
            )
        }))
        .with_acks(inner.cfg.acks)
        .with_timeout_ms(timeout_ms)
        .with_topic_data(
            by_topic
                .into_iter()
                .map(|(t, parts)| {
                    TopicProduceData::default()
                        .with_name(topic_name(t))
                        .with_partition_data(parts)
                })
                .collect(),
        );
    let conn = inner.client.broker(broker).await?;
    conn.wait_throttle().await;
    let keys: Vec<(Arc<str>, i32)> = batches
        .iter()
        .map(|b| (b.tp.topic.clone(), b.tp.partition))
        .collect();
    if inner.cfg.acks == 0 {
        lock(&inner.unacked_brokers).insert(broker);
        conn.send_only(&req).await?;
        let out = keys
            .into_iter()
            .map(|k| {
                let ack = Ack {
                    base_offset: -1,
                    log_append_time: -1,
                };
                (k, (ErrorCode::NONE, None, ack))
            })
            .collect();
        return Ok(Box::pin(async move { Ok(out) }));
    }
    // A transactional producer registers partitions itself (AddPartitionsToTxn):
    // stay below Produce v12, which would register them implicitly.
    let max_version = if inner.txn.is_some() { 11 } else { i16::MAX };
    let response = conn.enqueue_produce_at_most(&req, max_version)?;
    Ok(Box::pin(async move {
        let resp = response.await?;
        conn.throttle(resp.throttle_time_ms);
        let mut out = HashMap::with_capacity(keys.len());
        for t in &resp.responses {
            let topic = t.name.0.as_str();
            let Some((name, _)) = keys.iter().find(|(k, _)| &**k == topic) else {
                continue;
            };
            for p in &t.partition_responses {
                out.insert(
                    (name.clone(), p.index),
                    (
                        ErrorCode(p.error_code),
                        p.error_message.as_ref().map(|m| m.as_str().to_owned()),
                        Ack {
                            base_offset: p.base_offset,
                            log_append_time: p.log_append_time_ms,
                        },
                    ),
                );
            }
        }
        Ok(out)
    }))
}

/// InitProducerId for an idempotent producer; with a known id and epoch it
/// asks for an epoch bump (KIP-360), falling back to a fresh id on brokers
/// that do not support it.
async fn init_producer_id(inner: &Inner) -> Result<(i64, i16)> {
    let (id, epoch) = lock(&inner.acc).producer();
    let req = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(i32::MAX)
        .with_producer_id(ProducerId(id))
        .with_producer_epoch(epoch);
    let conn = inner.client.any_broker().await?;
    let resp = conn.call(&req).await?;
    conn.throttle(resp.throttle_time_ms);
    let code = ErrorCode(resp.error_code);
    if !code.is_ok() {
        return Err(Error::server(code, None, "InitProducerId", None, None));
    }
    Ok((resp.producer_id.0, resp.producer_epoch))
}

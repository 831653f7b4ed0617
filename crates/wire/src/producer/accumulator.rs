//! The producer's pure core: per-partition batches, when they are ready,
//! which go in the next request to each broker, sequence numbers for
//! idempotence, and what a response means for them. No IO and no clock of its
//! own: the sender task passes `now` in and acts on what comes out.
//!
//! Ordering: a partition has at most `max_in_flight` requests outstanding
//! (1 without idempotence, so retries cannot reorder). After a retriable
//! failure, the partition's failed batches go back to the front of its queue
//! in sequence order and are resent one request at a time until the queue is
//! past them, as the Java client does.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use crate::protocol::ErrorCode;
use crate::record::{restamp_producer, BatchBuilder, Compression};
use crate::{Action, Backoff, Error};

pub use crate::types::TopicPartition;

/// Where a batch ended up.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ack {
    pub(crate) base_offset: i64,
    /// Broker append time, or -1 when create time applies.
    pub(crate) log_append_time: i64,
}

/// The shared outcome of one batch, awaited by its records' delivery futures.
#[derive(Debug, Default)]
pub(crate) struct Completion {
    pub(crate) result: OnceLock<Result<Ack, Arc<Error>>>,
    pub(crate) notify: Notify,
}

impl Completion {
    fn finish(&self, r: Result<Ack, Arc<Error>>) {
        let _ = self.result.set(r);
        self.notify.notify_waiters();
    }
}

/// Settings the accumulator needs.
#[derive(Debug, Clone)]
pub(crate) struct AccConfig {
    pub(crate) batch_size: usize,
    pub(crate) linger: Duration,
    pub(crate) compression: Compression,
    pub(crate) idempotent: bool,
    pub(crate) max_in_flight: usize,
    pub(crate) delivery_timeout: Duration,
    pub(crate) backoff: Backoff,
    pub(crate) max_request_size: usize,
    pub(crate) transactional: bool,
}

/// A batch on its way: open (records still being added), sealed, or sent.
pub(crate) struct Batch {
    pub(crate) tp: TopicPartition,
    builder: Option<BatchBuilder>,
    pub(crate) bytes: Option<Bytes>,
    pub(crate) records: usize,
    created: Instant,
    pub(crate) completion: Arc<Completion>,
    pub(crate) attempts: u32,
    pub(crate) base_sequence: i32,
    retry_at: Option<Instant>,
    _memory: Option<Held>,
}

/// Bytes of `buffer.memory` a batch holds (taken record by record, as
/// permits of the producer's semaphore that were forgotten), given back
/// when the batch is dropped.
struct Held {
    memory: Arc<Semaphore>,
    bytes: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.memory.add_permits(self.bytes);
    }
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("tp", &self.tp)
            .field("records", &self.records)
            .field("attempts", &self.attempts)
            .field("base_sequence", &self.base_sequence)
            .finish()
    }
}

impl Batch {
    fn size(&self) -> usize {
        match (&self.bytes, &self.builder) {
            (Some(b), _) => b.len(),
            (None, Some(b)) => b.size(),
            _ => 0,
        }
    }
}

#[derive(Debug, Default)]
struct PartQueue {
    open: Option<Batch>,
    ready: VecDeque<Batch>,
    in_flight: usize,
    /// Sequence for the next new batch.
    next_seq: i32,
    /// Sequence after the last acknowledged batch.
    acked_seq: i32,
    /// Failed batches were put back: send one at a time until past them.
    retrying: bool,
    /// A batch was acknowledged in the current producer epoch. Until then
    /// only one request is in flight: a broker with no state for this
    /// producer accepts whatever sequence comes first, so a later batch must
    /// not overtake a first one that fails.
    acked_any: bool,
}

/// What the sender should do after a response.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Followup {
    pub(crate) refresh_metadata: bool,
}

/// What [`Accumulator::append`] did.
pub(crate) struct Appended {
    pub(crate) completion: Arc<Completion>,
    pub(crate) offset_delta: i32,
    /// The record's timestamp: the caller's, or the one stamped on it.
    pub(crate) timestamp: i64,
    /// A batch became ready (full): wake the sender.
    pub(crate) batch_full: bool,
}

/// All batches of the producer, by partition.
pub(crate) struct Accumulator {
    cfg: AccConfig,
    /// Keyed with a fast non-keyed hash: looked up once per record.
    parts: rustc_hash::FxHashMap<TopicPartition, PartQueue>,
    producer_id: i64,
    producer_epoch: i16,
    /// KIP-360: the epoch must be bumped before more batches go out.
    pub(crate) need_bump: bool,
    /// Transactional: a batch failed or was dropped after getting a
    /// sequence; the epoch must be bumped when the transaction is aborted.
    pub(crate) sequence_gap: bool,
    /// Transactional: the first batch that failed since the last
    /// [`take_failure`](Self::take_failure).
    failure: Option<Arc<Error>>,
    /// Not transactional: the first batch failure since the last
    /// [`take_flush_failure`](Self::take_flush_failure), which
    /// [`Producer::flush`](super::Producer::flush) reports.
    flush_failure: Option<Arc<Error>>,
    flushing: usize,
    outstanding: usize,
    in_flight_total: usize,
    /// Buffers of acknowledged batches, for the next batches.
    spare: Vec<Vec<u8>>,
    /// Create times for records sent without one.
    stamps: Stamps,
}

/// How many records sent without a timestamp share one read of the wall
/// clock, at most.
pub(crate) const STAMP_EVERY: u32 = 16;

/// Create times for records sent without a timestamp. The wall clock is
/// read for the first record of each batch and then once every
/// [`STAMP_EVERY`] records, not for every record (the read and its
/// conversion to milliseconds were an eighth of the producer's CPU at
/// 100-byte records). A record's create time may thus be that of one of the
/// 15 records sent just before it into the same batch: earlier by the time
/// those took to send, and never earlier than its batch's opening.
#[derive(Debug, Default)]
pub(crate) struct Stamps {
    last: i64,
    left: u32,
}

impl Stamps {
    /// The create time for the next record; `fresh` when it opens a batch.
    pub(crate) fn stamp(&mut self, fresh: bool, read: impl FnOnce() -> i64) -> i64 {
        if fresh || self.left == 0 {
            self.last = read();
            self.left = STAMP_EVERY - 1;
        } else {
            self.left -= 1;
        }
        self.last
    }
}

/// How much of sent batches' buffers is kept for reuse (as much as the
/// default `buffer.memory` lets be in flight).
const SPARE_BYTES: usize = 32 << 20;

impl Accumulator {
    pub(crate) fn new(cfg: AccConfig) -> Self {
        Self {
            cfg,
            parts: rustc_hash::FxHashMap::default(),
            producer_id: -1,
            producer_epoch: -1,
            need_bump: false,
            sequence_gap: false,
            failure: None,
            flush_failure: None,
            flushing: 0,
            stamps: Stamps::default(),
            spare: Vec::new(),
            outstanding: 0,
            in_flight_total: 0,
        }
    }

    /// Batches not yet completed (open, queued or in flight).
    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Requests in flight.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight_total
    }

    /// The idempotent producer identity in use.
    pub(crate) fn producer(&self) -> (i64, i16) {
        (self.producer_id, self.producer_epoch)
    }

    /// Sets the producer identity (after InitProducerId). Sequence numbers of
    /// every partition restart at 0, and batches not yet acknowledged are
    /// restamped in order (KIP-360).
    pub(crate) fn set_producer(&mut self, id: i64, epoch: i16) {
        self.producer_id = id;
        self.producer_epoch = epoch;
        self.need_bump = false;
        self.sequence_gap = false;
        for q in self.parts.values_mut() {
            q.acked_seq = 0;
            q.acked_any = false;
            let mut seq = 0i32;
            for b in q.ready.iter_mut() {
                if let Some(bytes) = b.bytes.take() {
                    let mut v = bytes.to_vec();
                    restamp_producer(&mut v, id, epoch, seq);
                    b.bytes = Some(Bytes::from(v));
                    b.base_sequence = seq;
                    seq = seq.wrapping_add(b.records as i32);
                }
            }
            q.next_seq = seq;
            q.retrying = q.ready.iter().any(|b| b.attempts > 0);
        }
    }

    /// Starts flushing: every open batch counts as ready until
    /// [`end_flush`](Self::end_flush).
    pub(crate) fn begin_flush(&mut self) {
        self.flushing += 1;
    }

    pub(crate) fn end_flush(&mut self) {
        self.flushing = self.flushing.saturating_sub(1);
    }

    /// Appends a record to `tp`'s open batch, sealing it first when the
    /// record would overflow `batch.size`. Returns `true` in `batch_full`
    /// when a batch was sealed. `memory` is the bytes of `buffer.memory`
    /// already taken for the record (permits forgotten), which its batch
    /// then holds until it is dropped.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn append<K: AsRef<str>, V: AsRef<[u8]>>(
        &mut self,
        tp: &TopicPartition,
        timestamp: Option<i64>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(K, Option<V>)],
        memory: Option<(&Arc<Semaphore>, usize)>,
        now: impl FnOnce() -> Instant,
        wall_ms: impl FnOnce() -> i64,
    ) -> Appended {
        let record_size = BatchBuilder::record_size(key, value, headers);
        let cfg = &self.cfg;
        // Looked up before inserting: no key clone for a known partition.
        let q = match self.parts.get_mut(tp) {
            Some(q) => q,
            None => self.parts.entry(tp.clone()).or_default(),
        };
        let mut batch_full = false;
        if let Some(open) = &q.open {
            if open.records > 0 && open.size() + record_size > cfg.batch_size {
                if let Some(b) = q.open.take() {
                    q.ready.push_back(b);
                }
                batch_full = true;
            }
        }
        let fresh = q.open.is_none();
        let open = q.open.get_or_insert_with(|| {
            self.outstanding += 1;
            Batch {
                tp: tp.clone(),
                builder: Some(
                    BatchBuilder::with_buffer(
                        cfg.compression,
                        self.spare.pop().unwrap_or_default(),
                        cfg.batch_size.max(record_size),
                    )
                    .transactional(cfg.transactional),
                ),
                bytes: None,
                records: 0,
                created: now(),
                completion: Arc::new(Completion::default()),
                attempts: 0,
                base_sequence: -1,
                retry_at: None,
                _memory: None,
            }
        });
        let timestamp = match timestamp {
            Some(t) => t,
            None => self.stamps.stamp(fresh, wall_ms),
        };
        let delta = open
            .builder
            .as_mut()
            .map(|b| b.append(timestamp, key, value, headers))
            .unwrap_or(0);
        open.records += 1;
        match (&mut open._memory, memory) {
            (Some(held), Some((_, bytes))) => held.bytes += bytes,
            (slot @ None, Some((memory, bytes))) => {
                *slot = Some(Held {
                    memory: memory.clone(),
                    bytes,
                })
            }
            (_, None) => {}
        }
        let completion = open.completion.clone();
        if open.size() >= cfg.batch_size {
            if let Some(b) = q.open.take() {
                q.ready.push_back(b);
            }
            batch_full = true;
        }
        Appended {
            completion,
            offset_delta: delta,
            timestamp,
            batch_full,
        }
    }

    /// When the sender should look again even if nothing wakes it: the
    /// earliest linger expiry, retry time or delivery deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut consider = |i: Instant| t = Some(t.map_or(i, |c| c.min(i)));
        for q in self.parts.values() {
            if let Some(o) = &q.open {
                consider(o.created + self.cfg.linger);
                consider(o.created + self.cfg.delivery_timeout);
            }
            if let Some(b) = q.ready.front() {
                if let Some(r) = b.retry_at {
                    consider(r);
                }
                consider(b.created + self.cfg.delivery_timeout);
            }
        }
        t
    }

    /// Fails batches older than `delivery.timeout.ms` that are not in flight.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<Batch> {
        let timeout = self.cfg.delivery_timeout;
        let mut expired = Vec::new();
        for q in self.parts.values_mut() {
            if q.open.as_ref().is_some_and(|o| now >= o.created + timeout) {
                expired.extend(q.open.take());
            }
            while q.ready.front().is_some_and(|b| now >= b.created + timeout) {
                expired.extend(q.ready.pop_front());
            }
        }
        for b in &expired {
            self.outstanding -= 1;
            // A batch that may have been written leaves a sequence gap.
            if self.cfg.idempotent && b.attempts > 0 {
                if self.cfg.transactional {
                    self.sequence_gap = true;
                } else {
                    self.need_bump = true;
                }
            }
            let e = Error::Timeout {
                what: format!(
                    "delivery of {} records to {}-{}",
                    b.records, b.tp.topic, b.tp.partition
                ),
                after: timeout,
            };
            let e = Arc::new(e);
            self.note_failure(&e);
            b.completion.finish(Err(e));
        }
        expired
    }

    /// Transactional: the first batch failure since the last call.
    pub(crate) fn take_failure(&mut self) -> Option<Arc<Error>> {
        self.failure.take()
    }

    /// Not transactional: the first batch failure since the last call.
    pub(crate) fn take_flush_failure(&mut self) -> Option<Arc<Error>> {
        self.flush_failure.take()
    }

    /// Keeps the first failure of a batch for whoever asks next: the
    /// transaction (which must abort) or, without one, the next flush.
    fn note_failure(&mut self, e: &Arc<Error>) {
        let slot = if self.cfg.transactional {
            &mut self.failure
        } else {
            &mut self.flush_failure
        };
        if slot.is_none() {
            *slot = Some(e.clone());
        }
    }

    /// Fails every batch not in flight with `err` (a transaction is being
    /// aborted). Batches that had been sent before keep their sequence
    /// numbers in the broker's view, so dropping one leaves a gap: that sets
    /// [`sequence_gap`](Self::sequence_gap).
    pub(crate) fn fail_unsent(&mut self, err: &Error) {
        let mut dropped = Vec::new();
        for q in self.parts.values_mut() {
            dropped.extend(q.open.take());
            dropped.extend(q.ready.drain(..));
            q.retrying = false;
        }
        for b in dropped {
            self.outstanding -= 1;
            if b.attempts > 0 || b.bytes.is_some() {
                self.sequence_gap = true;
            }
            b.completion.finish(Err(Arc::new(err.duplicate())));
        }
        // (Batches that never left had no sequence yet: sequences are given
        // when a batch is built for sending.)
    }

    /// Takes the batches to send now, grouped by leader broker: at most one
    /// per partition per request, within `max.request.size`, respecting the
    /// per-partition in-flight limit and retry backoff.
    pub(crate) fn drain(
        &mut self,
        now: Instant,
        leader: impl Fn(&TopicPartition) -> Option<i32>,
    ) -> BTreeMap<i32, Vec<Batch>> {
        let mut out: BTreeMap<i32, (usize, Vec<Batch>)> = BTreeMap::new();
        if self.need_bump || (self.cfg.idempotent && self.producer_id < 0) {
            return BTreeMap::new();
        }
        let cfg = &self.cfg;
        let flushing = self.flushing > 0;
        let mut broken: Vec<(Batch, String)> = Vec::new();
        let limit = if cfg.idempotent {
            cfg.max_in_flight.max(1)
        } else {
            1
        };
        for (tp, q) in self.parts.iter_mut() {
            let allowed = if q.retrying || !q.acked_any { 1 } else { limit };
            if q.in_flight >= allowed || (q.retrying && q.in_flight > 0) {
                continue;
            }
            if q.ready.is_empty() {
                let linger_done = q
                    .open
                    .as_ref()
                    .is_some_and(|o| flushing || now >= o.created + cfg.linger);
                if !linger_done {
                    continue;
                }
                q.ready.extend(q.open.take());
            }
            let Some(front) = q.ready.front() else {
                continue;
            };
            if front.retry_at.is_some_and(|r| now < r) {
                continue;
            }
            let Some(broker) = leader(tp) else {
                continue;
            };
            let size = front.size();
            let slot = out.entry(broker).or_insert((0, Vec::new()));
            if !slot.1.is_empty() && slot.0 + size > cfg.max_request_size {
                continue;
            }
            let Some(mut b) = q.ready.pop_front() else {
                continue;
            };
            if b.bytes.is_none() {
                let builder = b.builder.take();
                let seq = if cfg.idempotent { q.next_seq } else { -1 };
                let built = builder.map(|bl| {
                    bl.producer(self.producer_id, self.producer_epoch, seq)
                        .finish()
                });
                match built {
                    Some(Ok(bytes)) => {
                        b.bytes = Some(bytes);
                        b.base_sequence = seq;
                        if cfg.idempotent {
                            q.next_seq = q.next_seq.wrapping_add(b.records as i32);
                        }
                    }
                    Some(Err(reason)) => {
                        broken.push((b, reason));
                        continue;
                    }
                    None => continue,
                }
            }
            if q.retrying && q.ready.front().is_none_or(|n| n.attempts == 0) {
                q.retrying = false;
            }
            q.in_flight += 1;
            slot.0 += b.size();
            slot.1.push(b);
        }
        for (b, reason) in broken {
            self.outstanding -= 1;
            let e = Error::Config(format!(
                "could not encode a batch for {}-{}: {reason}",
                b.tp.topic, b.tp.partition
            ));
            let e = Arc::new(e);
            self.note_failure(&e);
            b.completion.finish(Err(e));
        }
        let sent: usize = out.values().map(|(_, v)| v.len()).sum();
        self.in_flight_total += sent;
        out.into_iter()
            .filter(|(_, (_, v))| !v.is_empty())
            .map(|(k, (_, v))| (k, v))
            .collect()
    }

    /// A batch's request succeeded.
    pub(crate) fn succeeded(&mut self, b: Batch, ack: Ack) {
        self.finish_in_flight(&b.tp);
        if let Some(q) = self.parts.get_mut(&b.tp) {
            if b.base_sequence >= 0 {
                q.acked_seq = b.base_sequence.wrapping_add(b.records as i32);
            }
            q.acked_any = true;
        }
        self.outstanding -= 1;
        b.completion.finish(Ok(ack));
        self.recycle(b);
    }

    /// Keeps a sent batch's buffer for a next batch (when nothing else holds
    /// it): fresh multi-MB buffers cost a page fault per 4 KiB, which with
    /// 1 MB batches of small records was a fifth of the producer's CPU.
    fn recycle(&mut self, mut b: Batch) {
        if (self.spare.len() + 1) * self.cfg.batch_size > SPARE_BYTES {
            return;
        }
        if let Some(Ok(buf)) = b.bytes.take().map(Bytes::try_into_mut) {
            if buf.capacity() >= self.cfg.batch_size {
                self.spare.push(Vec::from(buf));
            }
        }
    }

    fn finish_in_flight(&mut self, tp: &TopicPartition) {
        self.in_flight_total = self.in_flight_total.saturating_sub(1);
        if let Some(q) = self.parts.get_mut(tp) {
            q.in_flight = q.in_flight.saturating_sub(1);
        }
    }

    /// A batch's request failed with `err`: retry it, bump the epoch, or fail
    /// it, per [`Error::action`] and the idempotence rules.
    pub(crate) fn failed(&mut self, mut b: Batch, err: Error, now: Instant) -> Followup {
        self.finish_in_flight(&b.tp);
        let idempotent = self.cfg.idempotent;
        let acked = self.parts.get(&b.tp).map_or(0, |q| q.acked_seq);
        let mut action = err.action();
        if err.code() == Some(ErrorCode::DUPLICATE_SEQUENCE_NUMBER) {
            // Already written by an earlier attempt.
            self.succeeded_unknown_offset(b);
            return Followup::default();
        }
        if action == Action::BumpEpoch {
            if !idempotent || self.cfg.transactional {
                // Inside a transaction the epoch moves only when it is
                // aborted (KIP-360): the batch fails, the transaction with it.
                action = Action::Fail;
            } else if err.code() == Some(ErrorCode::OUT_OF_ORDER_SEQUENCE_NUMBER)
                && b.base_sequence > acked
            {
                // An earlier batch of this partition failed first: this one
                // is out of order only because of that, so just retry. (A
                // batch behind the acknowledged sequence can never be written
                // in this epoch: it takes the epoch bump below.)
                action = Action::Retry { refresh: false };
            }
        }
        if b.created + self.cfg.delivery_timeout <= now {
            action = Action::Fail;
        }
        match action {
            Action::Retry { .. } | Action::FindCoordinator => {
                let refresh = matches!(action, Action::Retry { refresh: true });
                b.attempts += 1;
                b.retry_at = Some(now + self.cfg.backoff.delay(b.attempts - 1));
                self.requeue(b);
                Followup {
                    refresh_metadata: refresh,
                }
            }
            Action::BumpEpoch => {
                b.attempts += 1;
                self.need_bump = true;
                self.requeue(b);
                Followup::default()
            }
            _ => {
                if idempotent {
                    // The failed batch leaves a gap in the sequence.
                    if self.cfg.transactional {
                        self.sequence_gap = true;
                    } else {
                        self.need_bump = true;
                    }
                }
                self.outstanding -= 1;
                let err = Arc::new(err);
                self.note_failure(&err);
                b.completion.finish(Err(err));
                Followup::default()
            }
        }
    }

    fn succeeded_unknown_offset(&mut self, b: Batch) {
        self.succeeded(
            b,
            Ack {
                base_offset: -1,
                log_append_time: -1,
            },
        );
    }

    /// Puts a failed batch back in its partition's queue, ordered by sequence.
    fn requeue(&mut self, b: Batch) {
        let q = self.parts.entry(b.tp.clone()).or_default();
        q.retrying = true;
        let at = q
            .ready
            .iter()
            .position(|x| x.bytes.is_none() || x.base_sequence > b.base_sequence)
            .unwrap_or(q.ready.len());
        q.ready.insert(at, b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_read_the_clock_per_batch_and_every_few_records() {
        let mut stamps = Stamps::default();
        let mut reads = 0;
        let mut got = Vec::new();
        for (i, clock) in (0..40u32).zip(1001..) {
            // A batch opens at records 0 and 20.
            let fresh = i == 0 || i == 20;
            got.push(stamps.stamp(fresh, || {
                reads += 1;
                clock
            }));
        }
        // Records 0..16 share the first read, 16..20 the second, the new
        // batch at 20 reads again, then 36 (16 later).
        assert_eq!(reads, 4);
        assert_eq!(got[15], 1001);
        assert_eq!(got[16], 1017);
        assert_eq!(got[19], 1017);
        assert_eq!(got[20], 1021);
        assert_eq!(got[35], 1021);
        assert_eq!(got[36], 1037);
        // Never later than the clock, never more than 15 records behind it.
        for (i, t) in got.iter().enumerate() {
            let now = 1001 + i as i64;
            assert!(*t <= now && now - *t < i64::from(STAMP_EVERY), "record {i}");
        }
    }

    fn cfg(idempotent: bool) -> AccConfig {
        AccConfig {
            batch_size: 200,
            linger: Duration::from_millis(10),
            compression: Compression::None,
            idempotent,
            max_in_flight: 5,
            delivery_timeout: Duration::from_secs(120),
            backoff: Backoff {
                base: Duration::from_millis(100),
                max: Duration::from_secs(1),
            },
            max_request_size: 1 << 20,
            transactional: false,
        }
    }

    fn tp(p: i32) -> TopicPartition {
        TopicPartition {
            topic: Arc::from("t"),
            partition: p,
        }
    }

    fn add(acc: &mut Accumulator, p: i32, n: usize, now: Instant) {
        for i in 0..n {
            let v = format!("value-{i:040}");
            acc.append::<&str, &[u8]>(
                &tp(p),
                Some(1),
                None,
                Some(v.as_bytes()),
                &[],
                None,
                || now,
                || 1,
            );
        }
    }

    fn ack(offset: i64) -> Ack {
        Ack {
            base_offset: offset,
            log_append_time: -1,
        }
    }

    #[test]
    fn batches_wait_for_linger_or_size() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(cfg(false));
        add(&mut acc, 0, 1, t0);
        assert!(acc.drain(t0, |_| Some(1)).is_empty(), "linger not over");
        assert_eq!(acc.next_deadline(), Some(t0 + Duration::from_millis(10)));
        let out = acc.drain(t0 + Duration::from_millis(10), |_| Some(1));
        assert_eq!(out[&1].len(), 1);
        // A full batch goes at once.
        add(&mut acc, 1, 10, t0);
        let out = acc.drain(t0, |_| Some(2));
        assert_eq!(out[&2].len(), 1);
        assert!(out[&2][0].records < 10, "sealed when full");
    }

    /// The bytes of `buffer.memory` taken for a batch's records come back
    /// when the batch is done with, all of them, once.
    #[test]
    fn a_batch_gives_its_memory_back_when_done() {
        let t0 = Instant::now();
        let memory = Arc::new(Semaphore::new(10_000));
        let mut acc = Accumulator::new(cfg(false));
        for i in 0..3 {
            memory.try_acquire_many(100).expect("room").forget();
            acc.append::<&str, &[u8]>(
                &tp(0),
                Some(i),
                None,
                Some(b"v"),
                &[],
                Some((&memory, 100)),
                || t0,
                || 1,
            );
        }
        assert_eq!(memory.available_permits(), 9_700);
        let out = acc.drain(t0 + Duration::from_millis(10), |_| Some(1));
        let mut batches = out.into_values().flatten();
        let b = batches.next().expect("one batch");
        assert_eq!(b.records, 3);
        assert_eq!(memory.available_permits(), 9_700, "held while in flight");
        acc.succeeded(b, ack(0));
        assert_eq!(memory.available_permits(), 10_000);
    }

    #[test]
    fn no_leader_means_no_send() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(cfg(false));
        add(&mut acc, 0, 10, t0);
        assert!(acc.drain(t0, |_| None).is_empty());
        assert_eq!(acc.drain(t0, |_| Some(3))[&3].len(), 1);
    }

    #[test]
    fn idempotent_partitions_start_with_one_request_then_pipeline() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(cfg(true));
        assert!(acc.drain(t0, |_| Some(1)).is_empty(), "no producer id yet");
        acc.set_producer(7, 0);
        add(&mut acc, 0, 40, t0);
        let first = acc.drain(t0, |_| Some(1)).remove(&1).expect("one");
        assert_eq!(first.len(), 1);
        assert!(acc.drain(t0, |_| Some(1)).is_empty(), "first batch alone");
        let b = first.into_iter().next().expect("batch");
        assert_eq!(b.base_sequence, 0);
        acc.succeeded(b, ack(0));
        let mut in_flight = 0;
        loop {
            let got = acc.drain(t0, |_| Some(1));
            if got.is_empty() {
                break;
            }
            in_flight += got.values().map(Vec::len).sum::<usize>();
        }
        assert_eq!(in_flight, 5, "then up to max.in.flight");
    }

    #[test]
    fn failed_batches_are_resent_in_sequence_order_one_at_a_time() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(cfg(true));
        acc.set_producer(7, 0);
        add(&mut acc, 0, 40, t0);
        let b0 = acc.drain(t0, |_| Some(1)).remove(&1).expect("b0").remove(0);
        acc.succeeded(b0, ack(0));
        let mut sent: Vec<Batch> = Vec::new();
        for _ in 0..5 {
            sent.extend(acc.drain(t0, |_| Some(1)).into_values().flatten());
        }
        assert_eq!(sent.len(), 5);
        let seqs: Vec<i32> = sent.iter().map(|b| b.base_sequence).collect();
        // The broker lost leadership: all five fail, in reverse order.
        let err = || {
            Error::server(
                ErrorCode::NOT_LEADER_OR_FOLLOWER,
                None,
                "Produce",
                Some("t"),
                Some(0),
            )
        };
        for b in sent.into_iter().rev() {
            assert!(acc.failed(b, err(), t0).refresh_metadata);
        }
        let later = t0 + Duration::from_secs(5);
        let mut resent = Vec::new();
        for i in 0..5 {
            let mut out = acc.drain(later, |_| Some(2)).remove(&2).expect("one");
            assert_eq!(out.len(), 1, "one at a time while retrying");
            if i < 4 {
                assert!(acc.drain(later, |_| Some(2)).is_empty(), "retry {i}");
            }
            let b = out.remove(0);
            resent.push(b.base_sequence);
            acc.succeeded(b, ack(0));
        }
        assert_eq!(resent, seqs, "same sequences, same order");
    }

    #[test]
    fn out_of_order_behind_an_earlier_failure_is_retried_not_bumped() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(cfg(true));
        acc.set_producer(7, 0);
        add(&mut acc, 0, 20, t0);
        let b0 = acc.drain(t0, |_| Some(1)).remove(&1).expect("b0").remove(0);
        acc.succeeded(b0, ack(0));
        let b1 = acc.drain(t0, |_| Some(1)).remove(&1).expect("b1").remove(0);
        let b2 = acc.drain(t0, |_| Some(1)).remove(&1).expect("b2").remove(0);
        let ooo = Error::server(
            ErrorCode::OUT_OF_ORDER_SEQUENCE_NUMBER,
            None,
            "Produce",
            None,
            None,
        );
        acc.failed(b2, ooo, t0);
        assert!(!acc.need_bump, "b2 is behind b1's unresolved failure");
        let ooo = Error::server(
            ErrorCode::OUT_OF_ORDER_SEQUENCE_NUMBER,
            None,
            "Produce",
            None,
            None,
        );
        acc.failed(b1, ooo, t0);
        assert!(
            acc.need_bump,
            "b1 was next in sequence: the broker lost our state"
        );
        assert!(acc
            .drain(t0 + Duration::from_secs(5), |_| Some(1))
            .is_empty());
        acc.set_producer(7, 1);
        let b = acc
            .drain(t0 + Duration::from_secs(5), |_| Some(1))
            .remove(&1)
            .expect("resent")
            .remove(0);
        assert_eq!(b.base_sequence, 0, "restamped from 0 in the new epoch");
        let view = crate::record::RecordBatch::parse(b.bytes.clone().expect("bytes"));
        match view {
            Ok(crate::record::Parsed::Batch(v, _)) => {
                assert_eq!(
                    (v.producer_id(), v.producer_epoch(), v.base_sequence()),
                    (7, 1, 0)
                );
            }
            other => panic!("bad batch: {other:?}"),
        }
    }

    #[test]
    fn fatal_errors_fail_the_batch_and_expiry_fails_old_ones() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(cfg(false));
        add(&mut acc, 0, 1, t0);
        let b = acc
            .drain(t0 + Duration::from_millis(10), |_| Some(1))
            .remove(&1)
            .expect("b")
            .remove(0);
        let c = b.completion.clone();
        let e = Error::server(
            ErrorCode::MESSAGE_TOO_LARGE,
            None,
            "Produce",
            Some("t"),
            Some(0),
        );
        acc.failed(b, e, t0);
        assert!(matches!(c.result.get(), Some(Err(_))));
        assert_eq!(acc.outstanding(), 0);

        add(&mut acc, 0, 1, t0);
        let expired = acc.expire(t0 + Duration::from_secs(121));
        assert_eq!(expired.len(), 1);
        assert_eq!(acc.outstanding(), 0);
    }
}

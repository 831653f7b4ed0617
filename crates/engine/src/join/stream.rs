//! Stream–stream windowed joins (Kafka Streams' `KStream#join(KStream,
//! JoinWindows)`, `#leftJoin`, `#outerJoin`, with KIP-633's grace and its
//! fix of spurious early results).
//!
//! Each side's records wait in a buffer (a store with a changelog, so they
//! survive restarts and move with the task) for the other side's records
//! that fall in their window. A record of the left side at `t` matches the
//! right side's records in `[t - before, t + after]`; a right record at `t`
//! matches the left's in `[t - after, t + before]`. Each match is a result
//! at the larger of the two timestamps.
//!
//! A record of an outer side (the left of a left join, both of an outer
//! join) that matched nothing also waits in an outer buffer, in timestamp
//! order, until its window has closed (the task's stream time passed its
//! window's end plus the grace period); only then is its `(value, None)`
//! result sent, at its own timestamp, unless a match came meanwhile. A
//! record whose window closed before it came gets its result at once.
//!
//! Buffered records expire once the stream time passes their timestamp by
//! `before + after + grace`. The stream time (the largest timestamp either
//! side brought) is kept in the same store, so a restart continues with
//! the same clock and a replay gives the same results.
//!
//! Store layout: `L|R`, key length (u32), key, timestamp, offset for the
//! buffers (one key's records in time order); `O`, timestamp, side, key
//! length, key, offset for the outer buffer (all keys in time order); `T`
//! for the stream time. Timestamps are big-endian with the sign bit
//! flipped, so that byte order is time order.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use super::{decode, Side};
use crate::app::{AgentFuture, ErasedAgent, Topic};
use crate::batch::BatchInput;
use crate::error::{Error, Location, Result};
use crate::table::TablePart;
use crate::JoinKind;

/// How close in time two stream records must be to join (Kafka Streams'
/// `JoinWindows`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinWindow {
    pub(crate) before: i64,
    pub(crate) after: i64,
    pub(crate) grace: i64,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl JoinWindow {
    /// Records join when their timestamps differ by at most `diff`, either
    /// way (`JoinWindows.ofTimeDifferenceWithNoGrace`); no grace period.
    pub fn symmetric(diff: Duration) -> Self {
        Self {
            before: ms(diff),
            after: ms(diff),
            grace: 0,
        }
    }
    /// A left record matches right records up to `d` older than it.
    pub fn before(mut self, d: Duration) -> Self {
        self.before = ms(d);
        self
    }
    /// A left record matches right records up to `d` newer than it.
    pub fn after(mut self, d: Duration) -> Self {
        self.after = ms(d);
        self
    }
    /// How long after a window's end its records still wait for a match
    /// (for records that come late) before the unmatched ones of a left or
    /// outer join get their result.
    pub fn grace(mut self, d: Duration) -> Self {
        self.grace = ms(d);
        self
    }

    /// The other side's timestamps a record of `side` at `ts` matches
    /// (inclusive; clamped at 0, as Kafka Streams does).
    pub(crate) fn range(&self, side: Side, ts: i64) -> (i64, i64) {
        let (before, after) = match side {
            Side::Left => (self.before, self.after),
            Side::Right => (self.after, self.before),
        };
        (
            ts.saturating_sub(before).max(0),
            ts.saturating_add(after).max(0),
        )
    }

    /// Whether the window of a record of `side` at `ts` has closed at
    /// `stream_time` (its end plus the grace period passed).
    pub(crate) fn closed(&self, side: Side, ts: i64, stream_time: i64) -> bool {
        let ahead = match side {
            Side::Left => self.after,
            Side::Right => self.before,
        };
        ts.saturating_add(ahead).saturating_add(self.grace) < stream_time
    }

    /// How long a buffered record is kept past its timestamp.
    pub(crate) fn retention(&self) -> i64 {
        self.before
            .saturating_add(self.after)
            .saturating_add(self.grace)
    }
}

/// Whether unmatched records of `side` get a result of their own.
pub(crate) fn is_outer(kind: JoinKind, side: Side) -> bool {
    match kind {
        JoinKind::Inner => false,
        JoinKind::Left => side == Side::Left,
        JoinKind::Outer => true,
    }
}

/// A stream–stream join's in-memory state beside its store: the stream
/// time and, for expiry, the buffered records in time order.
#[derive(Debug, Default)]
pub(crate) struct BufferState {
    stream_time: i64,
    expiry: BTreeSet<(i64, Vec<u8>)>,
    /// No unmatched outer record is older than this: while it is, none
    /// can have closed, and the outer buffer is not scanned.
    outer_min: i64,
}

const STREAM_TIME: &[u8] = b"T";
const OUTER: u8 = b'O';

fn side_byte(side: Side) -> u8 {
    match side {
        Side::Left => b'L',
        Side::Right => b'R',
    }
}

fn flip(ts: i64) -> [u8; 8] {
    ((ts as u64) ^ (1 << 63)).to_be_bytes()
}

fn unflip(b: [u8; 8]) -> i64 {
    (u64::from_be_bytes(b) ^ (1 << 63)) as i64
}

fn key_prefix(out: &mut Vec<u8>, key: &[u8]) {
    out.extend_from_slice(&u32::try_from(key.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(key);
}

/// A buffered record's store key.
pub(crate) fn buffer_key(side: Side, key: &[u8], ts: i64, offset: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(21 + key.len());
    out.push(side_byte(side));
    key_prefix(&mut out, key);
    out.extend_from_slice(&flip(ts));
    out.extend_from_slice(&offset.to_be_bytes());
    out
}

/// A buffered record's timestamp and offset.
pub(crate) fn parse_buffer_key(k: &[u8]) -> Option<(i64, i64)> {
    let tail = k.len().checked_sub(16)?;
    let ts = unflip(k[tail..tail + 8].try_into().ok()?);
    let offset = i64::from_be_bytes(k[tail + 8..].try_into().ok()?);
    Some((ts, offset))
}

/// An unmatched outer record's store key.
pub(crate) fn outer_key(side: Side, key: &[u8], ts: i64, offset: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(22 + key.len());
    out.push(OUTER);
    out.extend_from_slice(&flip(ts));
    out.push(side_byte(side));
    key_prefix(&mut out, key);
    out.extend_from_slice(&offset.to_be_bytes());
    out
}

/// An unmatched outer record's timestamp, side and key.
pub(crate) fn parse_outer_key(k: &[u8]) -> Option<(i64, Side, &[u8])> {
    let (&first, rest) = k.split_first()?;
    if first != OUTER || rest.len() < 21 {
        return None;
    }
    let ts = unflip(rest[..8].try_into().ok()?);
    let side = match rest[8] {
        b'L' => Side::Left,
        b'R' => Side::Right,
        _ => return None,
    };
    let len = u32::from_be_bytes(rest[9..13].try_into().ok()?) as usize;
    let key = rest.get(13..13 + len)?;
    Some((ts, side, key))
}

/// The entries of `[lo, hi)`, committed and pending, in key order.
fn scan(part: &TablePart, lo: &[u8], hi: &[u8]) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut out = BTreeMap::new();
    for entry in part.store.range(lo, Some(hi))? {
        let (k, v) = entry?;
        out.insert(k, v);
    }
    for (k, v) in part.changes_in(lo, hi) {
        match v {
            Some(v) => out.insert(k, v),
            None => out.remove(&k),
        };
    }
    Ok(out)
}

/// The state of a buffer partition, from its store on first use.
fn load(part: &TablePart) -> Result<BufferState> {
    let stream_time = part
        .get_raw(STREAM_TIME)?
        .and_then(|v| v.try_into().ok())
        .map_or(i64::MIN, i64::from_be_bytes);
    let mut expiry = BTreeSet::new();
    for (lo, hi) in [(b"L", b"M"), (b"R", b"S")] {
        for k in scan(part, lo, hi)?.into_keys() {
            if let Some((ts, _)) = parse_buffer_key(&k) {
                expiry.insert((ts, k));
            }
        }
    }
    Ok(BufferState {
        stream_time,
        expiry,
        // Not known: the first look scans.
        outer_min: i64::MIN,
    })
}

/// A stream–stream join: both sides' agents share it.
pub(crate) struct StreamStreamJoin<K, L, R, O> {
    pub(crate) left: Topic<K, L>,
    pub(crate) right: Topic<K, R>,
    pub(crate) kind: JoinKind,
    pub(crate) window: JoinWindow,
    pub(crate) out: Topic<K, O>,
    pub(crate) joiner: super::TableJoiner<L, R, O>,
    /// The buffers' table.
    pub(crate) buffer: usize,
}

/// The agent of one side of a stream–stream join.
pub(crate) struct StreamSide<K, L, R, O> {
    pub(crate) join: Rc<StreamStreamJoin<K, L, R, O>>,
    pub(crate) side: Side,
}

impl<K, L, R, O> StreamStreamJoin<K, L, R, O> {
    /// The result of a left and a right value (either missing).
    fn joined(
        &self,
        key: Option<&[u8]>,
        l: Option<&[u8]>,
        r: Option<&[u8]>,
        ts: i64,
        at: &dyn Fn() -> Location,
    ) -> Result<faustus_wire::producer::ProducerRecord> {
        let l = l.map(|v| decode(&self.left, v, at)).transpose()?;
        let r = r.map(|v| decode(&self.right, v, at)).transpose()?;
        let o = (self.joiner)(l.as_ref(), r.as_ref());
        super::result(&self.out, key, Some(&o), ts)
    }

    /// The value of a record of `side` as the left or right argument.
    fn place<'v>(
        side: Side,
        this: &'v [u8],
        other: Option<&'v [u8]>,
    ) -> (Option<&'v [u8]>, Option<&'v [u8]>) {
        match side {
            Side::Left => (Some(this), other),
            Side::Right => (other, Some(this)),
        }
    }

    /// Sends the unmatched outer records whose windows closed by
    /// `stream_time`, oldest first, and drops them from the outer buffer.
    fn emit_closed(
        &self,
        part: &mut TablePart,
        state: &mut BufferState,
        out: &std::cell::RefCell<Vec<faustus_wire::producer::ProducerRecord>>,
        at: &dyn Fn() -> Location,
    ) -> Result<()> {
        let w = &self.window;
        let stream_time = state.stream_time;
        // Nothing at or after this can have closed.
        let bound = stream_time
            .saturating_sub(w.before.min(w.after))
            .saturating_sub(w.grace);
        if state.outer_min >= bound {
            return Ok(());
        }
        let (lo, mut hi) = (vec![OUTER], vec![OUTER]);
        hi.extend_from_slice(&flip(bound));
        let mut open_min = bound;
        for (k, v) in scan(part, &lo, &hi)? {
            let Some((ts, side, key)) = parse_outer_key(&k) else {
                continue;
            };
            if !w.closed(side, ts, stream_time) {
                open_min = open_min.min(ts);
                continue;
            }
            let (l, r) = Self::place(side, &v, None);
            out.borrow_mut().push(self.joined(Some(key), l, r, ts, at)?);
            part.put_raw(k, None);
        }
        state.outer_min = open_min;
        Ok(())
    }

    fn run(&self, side: Side, input: &BatchInput) -> Result<()> {
        let cell = input
            .task
            .tables
            .get(self.buffer)
            .ok_or_else(|| Error::Config("internal: join buffer missing".into()))?;
        let mut part = cell.borrow_mut();
        let mut state = match part.join.take() {
            Some(s) => s,
            None => load(&part)?,
        };
        let result = self.records(side, input, &mut part, &mut state);
        // Kept whatever happened: it matches what the overlay holds.
        part.join = Some(state);
        result
    }

    fn records(
        &self,
        side: Side,
        input: &BatchInput,
        part: &mut TablePart,
        state: &mut BufferState,
    ) -> Result<()> {
        let out = &input.task.outbox;
        let other = match side {
            Side::Left => Side::Right,
            Side::Right => Side::Left,
        };
        let outer = is_outer(self.kind, side);
        let other_outer = is_outer(self.kind, other);
        let w = self.window;
        for rec in input.records() {
            let rec = rec?;
            let at = || input.at(rec.offset);
            let t = rec.timestamp;
            if t > state.stream_time || state.stream_time == i64::MIN {
                state.stream_time = t;
                part.put_raw(STREAM_TIME.to_vec(), Some(t.to_be_bytes().to_vec()));
            }
            let Some(value) = rec.value() else {
                tracing::warn!(at = %at(), "stream record without a value: skipped by the join");
                input.task.drop_record();
                continue;
            };
            // Refused now, with its place, rather than when it is joined.
            match side {
                Side::Left => drop(decode(&self.left, value, &at)?),
                Side::Right => drop(decode(&self.right, value, &at)?),
            }
            let Some(key) = rec.key() else {
                if outer {
                    // Nothing can match it (Kafka Streams since KIP-962).
                    let (l, r) = Self::place(side, value, None);
                    out.borrow_mut().push(self.joined(None, l, r, t, &at)?);
                } else {
                    tracing::warn!(at = %at(), "stream record without a key: skipped by the join");
                    input.task.drop_record();
                }
                continue;
            };
            if t == state.stream_time {
                self.emit_closed(part, state, out, &at)?;
            }
            let (from, to) = w.range(side, t);
            let lo = buffer_key(other, key, from, 0);
            let mut hi = buffer_key(other, key, to, i64::MAX);
            hi.push(0);
            let matches = scan(part, &lo, &hi)?;
            for (k, v) in &matches {
                let Some((ts, offset)) = parse_buffer_key(k) else {
                    continue;
                };
                if other_outer {
                    let ok = outer_key(other, key, ts, offset);
                    if part.get_raw(&ok)?.is_some() {
                        part.put_raw(ok, None);
                    }
                }
                let (l, r) = Self::place(side, value, Some(v));
                out.borrow_mut()
                    .push(self.joined(Some(key), l, r, t.max(ts), &at)?);
            }
            if matches.is_empty() && outer {
                if to < state.stream_time {
                    // Its window closed before it came.
                    let (l, r) = Self::place(side, value, None);
                    out.borrow_mut().push(self.joined(Some(key), l, r, t, &at)?);
                } else {
                    part.put_raw(outer_key(side, key, t, rec.offset), Some(value.to_vec()));
                    state.outer_min = state.outer_min.min(t);
                }
            }
            let horizon = state.stream_time.saturating_sub(w.retention());
            if t >= horizon {
                let k = buffer_key(side, key, t, rec.offset);
                state.expiry.insert((t, k.clone()));
                part.put_raw(k, Some(value.to_vec()));
            }
            while state.expiry.first().is_some_and(|(ts, _)| *ts < horizon) {
                if let Some((_, k)) = state.expiry.pop_first() {
                    part.put_raw(k, None);
                }
            }
        }
        Ok(())
    }
}

impl<K, L, R, O> ErasedAgent for StreamSide<K, L, R, O> {
    fn call<'a>(&'a self, input: BatchInput) -> AgentFuture<'a> {
        Box::pin(async move { self.join.run(self.side, &input) })
    }
}

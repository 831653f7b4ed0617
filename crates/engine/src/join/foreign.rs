//! Foreign-key table–table joins (KIP-213, Kafka Streams'
//! `KTable#join(KTable, foreignKeyExtractor, joiner)` and `#leftJoin`).
//!
//! The left table's value names a key of the right table. The two tables
//! are partitioned by different keys, so the join goes through two internal
//! topics, as Kafka Streams' does:
//!
//! 1. **Subscribe** (the left table's task): each change of a left row
//!    sends a subscription to `<app-id>-<name>-subscription`, keyed by the
//!    foreign key, so it lands in the partition of the right table that
//!    holds that key. It carries the left key, the left row's partition, a
//!    128-bit hash of the new left value and an instruction: when the
//!    foreign key changed, the old one is told to drop the subscription
//!    (retracting the old result), and a deleted row unsubscribes with a
//!    tombstone result to send.
//! 2. **Answer** (the right table's task): the subscription is kept (or
//!    dropped) in a subscription store keyed by (foreign key, left key),
//!    and answered with the right value on `<app-id>-<name>-response`,
//!    into the left row's partition. A change of a right row answers every
//!    subscription of its key.
//! 3. **Join** (the left table's task): an answer is joined with the left
//!    row as it is now, and only if the row's value still has the hash the
//!    answer carries: an answer to an out-of-date subscription is
//!    discarded, so a result never pairs a left value with the right value
//!    of a foreign key it no longer names.
//!
//! The instructions and the answer rules are pure functions below, tested
//! against Kafka Streams' processors.

use std::rc::Rc;

use faustus_wire::producer::ProducerRecord;

use super::{decode, unstored, Listener, TopicTable};
use crate::app::{AgentFuture, ErasedAgent, Topic};
use crate::batch::BatchInput;
use crate::error::{Error, Location, Result};
use crate::runtime::task::TaskCtx;

/// What a subscription asks of the right side (Kafka Streams'
/// `SubscriptionWrapper.Instruction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Instruction {
    /// Drop the subscription; answer nothing (the foreign key changed and
    /// the new one answers).
    DeleteNoPropagate,
    /// Drop the subscription and answer with no right value (the row was
    /// deleted: its result becomes a tombstone; or, in a left join, the
    /// foreign key changed).
    DeleteAndPropagate,
    /// Keep the subscription; answer even when the right side has no value
    /// (a left join, or a row whose old result must be retracted).
    PropagateNullIfNoValue,
    /// Keep the subscription; answer only if the right side has a value.
    PropagateOnlyIfValue,
}

impl Instruction {
    fn byte(self) -> u8 {
        match self {
            Self::DeleteNoPropagate => 0,
            Self::DeleteAndPropagate => 1,
            Self::PropagateNullIfNoValue => 2,
            Self::PropagateOnlyIfValue => 3,
        }
    }
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0 => Self::DeleteNoPropagate,
            1 => Self::DeleteAndPropagate,
            2 => Self::PropagateNullIfNoValue,
            3 => Self::PropagateOnlyIfValue,
            _ => return None,
        })
    }
    fn deletes(self) -> bool {
        matches!(self, Self::DeleteNoPropagate | Self::DeleteAndPropagate)
    }
}

/// The subscriptions a change of a left row sends: (foreign key,
/// instruction), in order, and whether the result is made here instead
/// (`true`). `old` and `new` are the row's foreign keys before and after
/// (the outer `None`: no row; the inner `None`: a row that names no
/// foreign key).
///
/// Kafka Streams' `SubscriptionSendProcessorSupplier`, made exact where it
/// is not:
/// - a left join tells the old foreign key to unsubscribe without an
///   answer, where Kafka Streams asks it for a null answer too: the two
///   answers of one change (old key: none; new key: its value) may cross,
///   and the result would end on the null one;
/// - a left join's row without a foreign key (or deleted) gets its result
///   (`joiner(left, None)`, or a tombstone) here, where Kafka Streams sends
///   a null-keyed subscription for it;
/// - an inner join's row that stops naming a foreign key has its result
///   retracted (a tombstone), and one that starts naming one subscribes,
///   where Kafka Streams skips both changes.
pub(crate) fn subscriptions(
    left_join: bool,
    old: Option<Option<&[u8]>>,
    new: Option<Option<&[u8]>>,
) -> (Vec<(Vec<u8>, Instruction)>, bool) {
    let (old_fk, new_fk) = (old.flatten(), new.flatten());
    let mut out = Vec::new();
    if let Some(o) = old_fk.filter(|o| Some(*o) != new_fk) {
        let retract = !left_join && new_fk.is_none();
        let instruction = if retract {
            // Nothing else will answer for this row: the old key answers
            // with no value, which makes the tombstone.
            Instruction::DeleteAndPropagate
        } else {
            Instruction::DeleteNoPropagate
        };
        out.push((o.to_vec(), instruction));
    }
    if let Some(n) = new_fk {
        let instruction = if left_join || old_fk.is_some() {
            // An answer even without a right value: a left join's row, or
            // an inner result to retract.
            Instruction::PropagateNullIfNoValue
        } else {
            Instruction::PropagateOnlyIfValue
        };
        out.push((n.to_vec(), instruction));
    }
    let local = left_join && new_fk.is_none() && (old.is_some() || new.is_some());
    (out, local)
}

/// Whether a subscription is answered, given whether the right side has
/// its foreign key (Kafka Streams' `SubscriptionJoinProcessorSupplier`).
pub(crate) fn answers(instruction: Instruction, found: bool) -> bool {
    match instruction {
        Instruction::DeleteNoPropagate => false,
        Instruction::DeleteAndPropagate | Instruction::PropagateNullIfNoValue => true,
        Instruction::PropagateOnlyIfValue => found,
    }
}

/// What an answer makes, given whether its hash is the left row's current
/// one, whether the row exists and whether the answer has a right value
/// (Kafka Streams' `ResponseJoinProcessorSupplier`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Out of date: dropped.
    Stale,
    /// A tombstone for the left key.
    Delete,
    /// `joiner(left, right)`.
    Join,
}

pub(crate) fn on_answer(left_join: bool, current: bool, row: bool, right: bool) -> Answer {
    if !current {
        Answer::Stale
    } else if !right && (!left_join || !row) {
        Answer::Delete
    } else {
        Answer::Join
    }
}

/// MurmurHash3 (x64, 128 bits) of `data` with seed 0: the hash Kafka
/// Streams gives left values, which tells a current answer from a stale
/// one.
pub(crate) fn murmur3_128(data: &[u8]) -> [u8; 16] {
    const C1: u64 = 0x87c3_7b91_1142_53d5;
    const C2: u64 = 0x4cf5_ad43_2745_937f;
    fn fmix(mut k: u64) -> u64 {
        k ^= k >> 33;
        k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
        k ^= k >> 33;
        k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        k ^ (k >> 33)
    }
    let (mut h1, mut h2) = (0u64, 0u64);
    let mut blocks = data.chunks_exact(16);
    for b in blocks.by_ref() {
        let mut k1 = u64::from_le_bytes(b[..8].try_into().unwrap_or_default());
        let mut k2 = u64::from_le_bytes(b[8..].try_into().unwrap_or_default());
        k1 = k1.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
        h1 ^= k1;
        h1 = h1
            .rotate_left(27)
            .wrapping_add(h2)
            .wrapping_mul(5)
            .wrapping_add(0x52dc_e729);
        k2 = k2.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);
        h2 ^= k2;
        h2 = h2
            .rotate_left(31)
            .wrapping_add(h1)
            .wrapping_mul(5)
            .wrapping_add(0x3849_5ab5);
    }
    let tail = blocks.remainder();
    let (mut k1, mut k2) = (0u64, 0u64);
    for (i, &b) in tail.iter().enumerate() {
        if i < 8 {
            k1 ^= u64::from(b) << (8 * i);
        } else {
            k2 ^= u64::from(b) << (8 * (i - 8));
        }
    }
    if tail.len() > 8 {
        h2 ^= k2.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);
    }
    if !tail.is_empty() {
        h1 ^= k1.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
    }
    let len = data.len() as u64;
    h1 ^= len;
    h2 ^= len;
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    h1 = fmix(h1);
    h2 = fmix(h2);
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&h1.to_be_bytes());
    out[8..].copy_from_slice(&h2.to_be_bytes());
    out
}

const VERSION: u8 = 1;

/// A subscription as it travels: version, instruction, the left value's
/// hash (if any), the left row's partition, the left key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Subscription {
    pub(crate) instruction: Instruction,
    pub(crate) hash: Option<[u8; 16]>,
    pub(crate) partition: i32,
    pub(crate) key: Vec<u8>,
}

impl Subscription {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(23 + self.key.len());
        out.push(VERSION);
        out.push(self.instruction.byte());
        encode_hash(&mut out, self.hash);
        out.extend_from_slice(&self.partition.to_be_bytes());
        out.extend_from_slice(&self.key);
        out
    }
    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        let (&version, rest) = b.split_first()?;
        if version != VERSION {
            return None;
        }
        let (&instruction, rest) = rest.split_first()?;
        let instruction = Instruction::from_byte(instruction)?;
        let (hash, rest) = decode_hash(rest)?;
        let (partition, key) = rest.split_first_chunk::<4>()?;
        Some(Self {
            instruction,
            hash,
            partition: i32::from_be_bytes(*partition),
            key: key.to_vec(),
        })
    }
}

fn encode_hash(out: &mut Vec<u8>, hash: Option<[u8; 16]>) {
    match hash {
        Some(h) => {
            out.push(1);
            out.extend_from_slice(&h);
        }
        None => out.push(0),
    }
}

fn decode_hash(b: &[u8]) -> Option<(Option<[u8; 16]>, &[u8])> {
    let (&flag, rest) = b.split_first()?;
    if flag == 0 {
        return Some((None, rest));
    }
    let (h, rest) = rest.split_first_chunk::<16>()?;
    Some((Some(*h), rest))
}

/// An answer as it travels: version, the hash it answers, the right value
/// (if any).
pub(crate) fn encode_answer(hash: Option<[u8; 16]>, value: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(19 + value.map_or(0, <[u8]>::len));
    out.push(VERSION);
    encode_hash(&mut out, hash);
    match value {
        Some(v) => {
            out.push(1);
            out.extend_from_slice(v);
        }
        None => out.push(0),
    }
    out
}

/// What an answer carries: the hash it answers and the right value.
pub(crate) type Answered<'a> = (Option<[u8; 16]>, Option<&'a [u8]>);

/// The hash an answer answers and its right value.
pub(crate) fn decode_answer(b: &[u8]) -> Option<Answered<'_>> {
    let (&version, rest) = b.split_first()?;
    if version != VERSION {
        return None;
    }
    let (hash, rest) = decode_hash(rest)?;
    let (&flag, value) = rest.split_first()?;
    Some((hash, (flag == 1).then_some(value)))
}

/// The subscription store's key: the foreign key (length first, so that one
/// key's subscriptions are a prefix range), then the left key.
pub(crate) fn subscription_key(fk: &[u8], key: &[u8]) -> Vec<u8> {
    let mut out = fk_prefix(fk);
    out.extend_from_slice(key);
    out
}

fn fk_prefix(fk: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + fk.len());
    out.extend_from_slice(&u32::try_from(fk.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(fk);
    out
}

/// Extracts a left value's foreign key (encoded with the right table's key
/// codec); `None`: the value names none.
pub(crate) type Extract<V> = Box<dyn Fn(&V) -> Result<Option<Vec<u8>>>>;

/// A foreign-key join: its parts share it.
pub(crate) struct ForeignKeyJoin<K, V, KO, VO, O> {
    pub(crate) left: TopicTable<K, V>,
    pub(crate) right: TopicTable<KO, VO>,
    pub(crate) left_join: bool,
    pub(crate) extract: Extract<V>,
    pub(crate) subscriptions_topic: String,
    pub(crate) answers_topic: String,
    /// The subscription store's table.
    pub(crate) store: usize,
    pub(crate) out: Topic<K, O>,
    pub(crate) joiner: super::StreamJoiner<V, VO, O>,
}

impl<K, V, KO, VO, O> ForeignKeyJoin<K, V, KO, VO, O> {
    fn foreign_key(
        &self,
        raw: Option<&[u8]>,
        at: &dyn Fn() -> Location,
    ) -> Result<Option<Option<Vec<u8>>>> {
        raw.map(|v| {
            let v = decode(&self.left.topic, v, at)?;
            (self.extract)(&v)
        })
        .transpose()
    }

    /// Answers a subscription of `key` (in left partition `partition`) with
    /// the right value (if any), at `ts`.
    fn answer(
        &self,
        task: &TaskCtx,
        key: &[u8],
        partition: i32,
        hash: Option<[u8; 16]>,
        value: Option<&[u8]>,
        ts: i64,
    ) {
        let mut rec = ProducerRecord::new(&self.answers_topic).partition(partition);
        rec.key = Some(bytes::Bytes::copy_from_slice(key));
        rec.value = Some(encode_answer(hash, value).into());
        rec.timestamp = Some(ts);
        task.outbox.borrow_mut().push(rec);
    }

    /// Step 1: a left row changed.
    fn left_changed(
        &self,
        task: &TaskCtx,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<&[u8]>,
        ts: i64,
        at: &dyn Fn() -> Location,
    ) -> Result<()> {
        let old_fk = self.foreign_key(old, at)?;
        let new_fk = self.foreign_key(new, at)?;
        let (subs, local) = subscriptions(
            self.left_join,
            old_fk.as_ref().map(|f| f.as_deref()),
            new_fk.as_ref().map(|f| f.as_deref()),
        );
        let hash = new.map(murmur3_128);
        let partition = at().partition;
        for (fk, instruction) in subs {
            let sub = Subscription {
                instruction,
                hash,
                partition,
                key: key.to_vec(),
            };
            let mut rec = ProducerRecord::new(&self.subscriptions_topic);
            rec.key = Some(fk.into());
            rec.value = Some(sub.encode().into());
            rec.timestamp = Some(ts);
            task.outbox.borrow_mut().push(rec);
        }
        if local {
            // A left join's row without a foreign key (or deleted): no
            // right value can match it.
            let rec = match new {
                Some(v) => {
                    let v = decode(&self.left.topic, v, at)?;
                    super::result(&self.out, Some(key), Some(&(self.joiner)(&v, None)), ts)?
                }
                None => super::result(&self.out, Some(key), None, ts)?,
            };
            task.outbox.borrow_mut().push(rec);
        }
        Ok(())
    }

    /// Step 2a: subscriptions arrive at the right table's task.
    fn subscribe(&self, input: &BatchInput) -> Result<()> {
        let task = &input.task;
        for rec in input.records() {
            let rec = rec?;
            let at = || input.at(rec.offset);
            let (Some(fk), Some(raw)) = (rec.key(), rec.value()) else {
                continue;
            };
            let sub = Subscription::decode(raw).ok_or_else(|| Error::Processing {
                at: at(),
                message: "not a subscription of this join (another version?)".into(),
            })?;
            let skey = subscription_key(fk, &sub.key);
            {
                let mut store = table(task, self.store)?.borrow_mut();
                if sub.instruction.deletes() {
                    store.put_raw(skey, None);
                } else {
                    let mut v = Vec::with_capacity(21);
                    encode_hash(&mut v, sub.hash);
                    v.extend_from_slice(&sub.partition.to_be_bytes());
                    store.put_raw(skey, Some(v));
                }
            }
            let right = table(task, self.right.id)?.borrow().get_raw(fk)?;
            let right = right.as_deref().map(unstored);
            if !answers(sub.instruction, right.is_some()) {
                continue;
            }
            let ts = right.map_or(rec.timestamp, |(t, _)| rec.timestamp.max(t));
            let value = match sub.instruction {
                Instruction::DeleteAndPropagate => None,
                _ => right.map(|(_, v)| v),
            };
            self.answer(task, &sub.key, sub.partition, sub.hash, value, ts);
        }
        Ok(())
    }

    /// Step 2b: a right row changed: every subscription of its key is
    /// answered.
    fn right_changed(&self, task: &TaskCtx, fk: &[u8], new: Option<&[u8]>, ts: i64) -> Result<()> {
        let lo = fk_prefix(fk);
        let hi = increment(&lo);
        let subs = {
            let store = table(task, self.store)?.borrow();
            let mut subs = std::collections::BTreeMap::new();
            for entry in store.store.range(&lo, Some(&hi))? {
                let (k, v) = entry?;
                subs.insert(k, v);
            }
            for (k, v) in store.changes_in(&lo, &hi) {
                match v {
                    Some(v) => subs.insert(k, v),
                    None => subs.remove(&k),
                };
            }
            subs
        };
        for (k, v) in subs {
            let key = &k[lo.len()..];
            let Some((hash, rest)) = decode_hash(&v) else {
                continue;
            };
            let Some((p, _)) = rest.split_first_chunk::<4>() else {
                continue;
            };
            self.answer(task, key, i32::from_be_bytes(*p), hash, new, ts);
        }
        Ok(())
    }

    /// Step 3: answers arrive at the left table's task.
    fn join_answers(&self, input: &BatchInput) -> Result<()> {
        let task = &input.task;
        for rec in input.records() {
            let rec = rec?;
            let at = || input.at(rec.offset);
            let (Some(key), Some(raw)) = (rec.key(), rec.value()) else {
                continue;
            };
            let (hash, right) = decode_answer(raw).ok_or_else(|| Error::Processing {
                at: at(),
                message: "not an answer of this join (another version?)".into(),
            })?;
            let row = table(task, self.left.id)?.borrow().get_raw(key)?;
            let row = row.as_deref().map(|r| unstored(r).1);
            let current = row.map(murmur3_128) == hash;
            let out = match on_answer(self.left_join, current, row.is_some(), right.is_some()) {
                Answer::Stale => continue,
                Answer::Delete => super::result(&self.out, Some(key), None, rec.timestamp)?,
                Answer::Join => {
                    let Some(row) = row else { continue };
                    let l = decode(&self.left.topic, row, &at)?;
                    let r = right
                        .map(|v| decode(&self.right.topic, v, &at))
                        .transpose()?;
                    super::result(
                        &self.out,
                        Some(key),
                        Some(&(self.joiner)(&l, r.as_ref())),
                        rec.timestamp,
                    )?
                }
            };
            task.outbox.borrow_mut().push(out);
        }
        Ok(())
    }
}

/// The smallest byte string after every string starting with `prefix`.
fn increment(prefix: &[u8]) -> Vec<u8> {
    let mut out = prefix.to_vec();
    while let Some(last) = out.pop() {
        if last < 0xff {
            out.push(last + 1);
            return out;
        }
    }
    // All 0xff: no upper bound short of the end.
    vec![0xff; prefix.len() + 1]
}

fn table(task: &TaskCtx, id: usize) -> Result<&std::cell::RefCell<crate::table::TablePart>> {
    task.tables
        .get(id)
        .ok_or_else(|| Error::Config("internal: a foreign-key join's table is missing".into()))
}

/// Which part of a foreign-key join an agent or listener runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    /// Listens to the left table.
    Left,
    /// Listens to the right table.
    Right,
    /// Reads the subscription topic.
    Subscriptions,
    /// Reads the answer topic.
    Answers,
}

/// One part of a foreign-key join.
pub(crate) struct ForeignPart<K, V, KO, VO, O> {
    pub(crate) join: Rc<ForeignKeyJoin<K, V, KO, VO, O>>,
    pub(crate) part: Part,
}

impl<K, V, KO, VO, O> Listener for ForeignPart<K, V, KO, VO, O> {
    fn changed(
        &self,
        task: &TaskCtx,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<&[u8]>,
        ts: i64,
        at: &dyn Fn() -> Location,
    ) -> Result<()> {
        match self.part {
            Part::Left => self.join.left_changed(task, key, old, new, ts, at),
            Part::Right => self.join.right_changed(task, key, new, ts),
            _ => Ok(()),
        }
    }
}

impl<K, V, KO, VO, O> ErasedAgent for ForeignPart<K, V, KO, VO, O> {
    fn call<'a>(&'a self, input: BatchInput) -> AgentFuture<'a> {
        Box::pin(async move {
            match self.part {
                Part::Subscriptions => self.join.subscribe(&input),
                Part::Answers => self.join.join_answers(&input),
                _ => Ok(()),
            }
        })
    }
}

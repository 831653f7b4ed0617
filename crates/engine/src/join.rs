//! Joins: tables kept from topics, stream–table and table–table joins,
//! with Kafka Streams' semantics.
//!
//! - [`App::table_from`](crate::App::table_from) keeps a table from a topic
//!   (Kafka Streams' `builder.table(topic)`): each record sets its key, a
//!   null value deletes it. Its store and changelog are a table's, so it
//!   recovers, has standbys and survives restarts as every table does.
//! - [`App::stream_table_join`](crate::App::stream_table_join): each record
//!   of a stream is joined with the table's value for its key when it comes
//!   (`KStream#join(KTable)`, `#leftJoin`).
//! - [`App::table_table_join`](crate::App::table_table_join): each change of
//!   either table is joined with the other's current value
//!   (`KTable#join(KTable)`, `#leftJoin`, `#outerJoin`).
//! - [`App::stream_stream_join`](crate::App::stream_stream_join): records
//!   of two streams close enough in time (`KStream#join(KStream,
//!   JoinWindows)`, `#leftJoin`, `#outerJoin`); see `join/stream.rs`.
//!
//! The joined topics are read in timestamp order (see `runtime/order.rs`),
//! so that a replay gives the joins the live run gave. What a join does
//! with one change is decided by the pure functions [`stream_table`] and
//! [`table_table`]; the rest moves bytes.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use faustus_wire::producer::ProducerRecord;

use crate::app::{AgentFuture, ErasedAgent, Topic};
use crate::batch::BatchInput;
use crate::codec::encode_into;
use crate::error::{Error, Location, Result};
use crate::runtime::task::TaskCtx;

/// Which keys a join keeps when only one side has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    /// Only keys both sides have.
    Inner,
    /// Every key of the left side (the stream, for a stream–table join);
    /// the right side's value is `None` where it has none.
    Left,
    /// Every key either side has (table–table joins only).
    Outer,
}

impl std::str::FromStr for JoinKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "inner" => Ok(Self::Inner),
            "left" => Ok(Self::Left),
            "outer" => Ok(Self::Outer),
            other => Err(Error::Config(format!(
                "join kind `{other}`: expected inner, left or outer"
            ))),
        }
    }
}

/// Which side of a join a change or record is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Left,
    Right,
}

/// What a join makes of one change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// No result.
    Nothing,
    /// The joiner's result, with this timestamp.
    Join(i64),
    /// A tombstone for the key (the join no longer holds), with this
    /// timestamp.
    Delete(i64),
}

/// A stream record meets the table: `found` is whether the table has its
/// key. The result takes the stream record's timestamp.
pub(crate) fn stream_table(kind: JoinKind, found: bool, ts: i64) -> Outcome {
    match (kind, found) {
        (JoinKind::Inner, false) => Outcome::Nothing,
        _ => Outcome::Join(ts),
    }
}

/// A change on `side` of a table–table join: `new` whether the key has a
/// value now, `old` whether it had one before, `other` the other side's
/// timestamp if it has the key. Kafka Streams' `KTableKTable*Join`
/// processors, with old values sent where they matter (the left side of a
/// left join, both sides of an outer join): a delete gives a tombstone
/// when a result existed; the result's timestamp is the larger of the two
/// sides'.
pub(crate) fn table_table(
    kind: JoinKind,
    side: Side,
    new: bool,
    old: bool,
    other: Option<i64>,
    ts: i64,
) -> Outcome {
    let result = |ts| {
        if new {
            Outcome::Join(ts)
        } else {
            Outcome::Delete(ts)
        }
    };
    match (kind, side, other) {
        (JoinKind::Inner, _, None) => Outcome::Nothing,
        (JoinKind::Inner, _, Some(o)) => result(ts.max(o)),
        // The left side keeps its rows whatever the right has.
        (JoinKind::Left, Side::Left, None) | (JoinKind::Outer, _, None) => {
            if !new && !old {
                Outcome::Nothing
            } else {
                result(ts)
            }
        }
        (JoinKind::Left, Side::Left, Some(o)) => result(ts.max(o)),
        // A right change only matters where the left has the key; the row
        // stays (with no right value) when the right deletes.
        (JoinKind::Left, Side::Right, None) => Outcome::Nothing,
        (JoinKind::Left, Side::Right, Some(o)) | (JoinKind::Outer, _, Some(o)) => {
            Outcome::Join(ts.max(o))
        }
    }
}

/// Bytes of a timestamp prefix on stored values.
const TS: usize = 8;

/// A stored value: the record's timestamp, then its value's bytes.
fn stored(ts: i64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(TS + value.len());
    out.extend_from_slice(&ts.to_be_bytes());
    out.extend_from_slice(value);
    out
}

/// A stored value's timestamp and value bytes.
pub(crate) fn unstored(raw: &[u8]) -> (i64, &[u8]) {
    match raw.split_first_chunk::<TS>() {
        Some((ts, v)) => (i64::from_be_bytes(*ts), v),
        None => (i64::MIN, raw),
    }
}

/// Told of each change a table kept from a topic applies.
pub(crate) trait Listener {
    /// `key` changed from `old` to `new` (value bytes) by the record at
    /// `at` with timestamp `ts`.
    fn changed(
        &self,
        task: &TaskCtx,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<&[u8]>,
        ts: i64,
        at: &dyn Fn() -> Location,
    ) -> Result<()>;
}

/// The agent that keeps a table from its topic, and tells the joins over
/// it of each change.
pub(crate) struct Feeder {
    pub(crate) table: usize,
    pub(crate) empty_deletes: Cell<bool>,
    pub(crate) listeners: RefCell<Vec<Rc<dyn Listener>>>,
}

impl Feeder {
    fn feed(&self, input: &BatchInput) -> Result<()> {
        let listeners = self.listeners.borrow();
        let cell = input.task.tables.get(self.table).ok_or_else(|| {
            Error::Config(format!(
                "internal: table {} missing from its task",
                self.table
            ))
        })?;
        for rec in input.records() {
            let rec = rec?;
            let at = || input.at(rec.offset);
            let Some(key) = rec.key() else {
                tracing::warn!(at = %at(), "table record without a key: skipped");
                input.task.drop_record();
                continue;
            };
            let new = rec
                .value()
                .filter(|v| !(v.is_empty() && self.empty_deletes.get()));
            let old = if listeners.is_empty() {
                None
            } else {
                cell.borrow().get_raw(key)?
            };
            cell.borrow_mut()
                .put_raw(key.to_vec(), new.map(|v| stored(rec.timestamp, v)));
            for l in listeners.iter() {
                l.changed(
                    &input.task,
                    key,
                    old.as_deref().map(|o| unstored(o).1),
                    new,
                    rec.timestamp,
                    &at,
                )?;
            }
        }
        Ok(())
    }
}

impl ErasedAgent for Feeder {
    fn call<'a>(&'a self, input: BatchInput) -> AgentFuture<'a> {
        Box::pin(async move { self.feed(&input) })
    }
}

/// A table kept from a topic (see [`App::table_from`](crate::App::table_from)):
/// each record of the topic sets its key's value, a null value deletes the
/// key. Joins read it; agents read it with
/// [`Batch::topic_table`](crate::Batch::topic_table). Cheap to clone.
pub struct TopicTable<K, V> {
    pub(crate) id: usize,
    pub(crate) name: Rc<str>,
    pub(crate) topic: Topic<K, V>,
    pub(crate) feeder: Rc<Feeder>,
}

impl<K, V> Clone for TopicTable<K, V> {
    fn clone(&self) -> Self {
        Self {
            id: self.id,
            name: self.name.clone(),
            topic: self.topic.clone(),
            feeder: self.feeder.clone(),
        }
    }
}

impl<K, V> std::fmt::Debug for TopicTable<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicTable")
            .field("name", &self.name)
            .field("topic", &self.topic.name())
            .finish()
    }
}

impl<K, V> TopicTable<K, V> {
    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The topic it is kept from.
    pub fn topic(&self) -> &Topic<K, V> {
        &self.topic
    }
    /// Also deletes the key on an empty value (not only on a null one):
    /// for topics written by tools that cannot send a null value.
    pub fn empty_values_delete(self) -> Self {
        self.feeder.empty_deletes.set(true);
        self
    }
}

/// An agent's view of this task's partition of a [`TopicTable`].
pub struct TopicTableView<'b, K, V> {
    pub(crate) part: std::cell::Ref<'b, crate::table::TablePart>,
    pub(crate) table: &'b TopicTable<K, V>,
    pub(crate) key_buf: Vec<u8>,
}

impl<K, V> std::fmt::Debug for TopicTableView<'_, K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicTableView")
            .field("table", &self.table.name())
            .field("partition", &self.part.partition)
            .finish()
    }
}

impl<K, V> TopicTableView<'_, K, V> {
    /// The key's value and the timestamp of the record that set it.
    pub fn get_with_timestamp(&mut self, key: &K) -> Result<Option<(V, i64)>> {
        let codecs = &self.table.topic.inner.codecs;
        self.key_buf.clear();
        encode_into(
            &*codecs.key,
            key,
            &mut self.key_buf,
            self.table.name(),
            "key",
        )?;
        let name = &self.table.name;
        self.part.read_raw(&self.key_buf, |raw| {
            raw.map(|raw| {
                let (ts, v) = unstored(raw);
                codecs
                    .value
                    .decode(Some(v))
                    .map(|v| (v, ts))
                    .map_err(|e| Error::Table {
                        table: name.to_string(),
                        message: format!("undecodable stored value: {e}"),
                    })
            })
            .transpose()
        })
    }

    /// The key's value (`None`: the table does not have the key).
    pub fn get(&mut self, key: &K) -> Result<Option<V>> {
        Ok(self.get_with_timestamp(key)?.map(|(v, _)| v))
    }
}

/// Decodes a side's value bytes for the joiner.
fn decode<T>(topic: &Topic<impl Sized, T>, raw: &[u8], at: &dyn Fn() -> Location) -> Result<T> {
    topic
        .inner
        .codecs
        .value
        .decode(Some(raw))
        .map_err(|source| Error::Decode {
            at: at(),
            part: "value",
            source,
        })
}

/// A join's result record: the input's key, the joiner's value encoded
/// (`None`: a tombstone), the result's timestamp.
pub(crate) fn result<K, O>(
    out: &Topic<K, O>,
    key: Option<&[u8]>,
    value: Option<&O>,
    ts: i64,
) -> Result<ProducerRecord> {
    let mut rec = ProducerRecord::new(out.name());
    rec.key = key.map(bytes::Bytes::copy_from_slice);
    if let Some(v) = value {
        let mut buf = Vec::new();
        encode_into(&*out.inner.codecs.value, v, &mut buf, out.name(), "value")?;
        rec.value = Some(buf.into());
    }
    rec.timestamp = Some(ts);
    Ok(rec)
}

/// Makes a stream–table join's result from the record's value and the
/// table's.
pub(crate) type StreamJoiner<V, T, O> = Box<dyn Fn(&V, Option<&T>) -> O>;

/// Makes a table–table join's result from the two sides' values.
pub(crate) type TableJoiner<L, R, O> = Box<dyn Fn(Option<&L>, Option<&R>) -> O>;

/// Joins each record of a stream with a table kept from a topic.
pub(crate) struct StreamTableJoin<K, V, T, O> {
    pub(crate) stream: Topic<K, V>,
    pub(crate) table: TopicTable<K, T>,
    pub(crate) kind: JoinKind,
    pub(crate) out: Topic<K, O>,
    pub(crate) joiner: StreamJoiner<V, T, O>,
}

impl<K, V, T, O> StreamTableJoin<K, V, T, O> {
    fn run(&self, input: &BatchInput) -> Result<()> {
        let cell = input.task.tables.get(self.table.id).ok_or_else(|| {
            Error::Config(format!("internal: table {} missing", self.table.name()))
        })?;
        for rec in input.records() {
            let rec = rec?;
            let at = || input.at(rec.offset);
            let (Some(key), Some(value)) = (rec.key(), rec.value()) else {
                // Kafka Streams drops these too: nothing to join on.
                tracing::warn!(at = %at(), "stream record without a key or a value: skipped by the join");
                input.task.drop_record();
                continue;
            };
            // Decoded from the table's pending changes in place: no copy
            // of its value per record.
            let out = cell.borrow().read_raw(key, |found| {
                let Outcome::Join(ts) = stream_table(self.kind, found.is_some(), rec.timestamp)
                else {
                    return Ok(None);
                };
                let v = decode(&self.stream, value, &at)?;
                let t = found
                    .map(|raw| decode(&self.table.topic, unstored(raw).1, &at))
                    .transpose()?;
                let o = (self.joiner)(&v, t.as_ref());
                result(&self.out, Some(key), Some(&o), ts).map(Some)
            })?;
            let Some(rec) = out else { continue };
            input.task.outbox.borrow_mut().push(rec);
        }
        Ok(())
    }
}

impl<K, V, T, O> ErasedAgent for StreamTableJoin<K, V, T, O> {
    fn call<'a>(&'a self, input: BatchInput) -> AgentFuture<'a> {
        Box::pin(async move { self.run(&input) })
    }
}

/// A table–table join; each side's feeder tells it of that side's changes
/// (through a [`JoinSide`]).
pub(crate) struct TableTableJoin<K, L, R, O> {
    pub(crate) left: TopicTable<K, L>,
    pub(crate) right: TopicTable<K, R>,
    pub(crate) kind: JoinKind,
    pub(crate) out: Topic<K, O>,
    pub(crate) joiner: TableJoiner<L, R, O>,
}

/// One side of a table–table join, listening to that side's table.
pub(crate) struct JoinSide<K, L, R, O> {
    pub(crate) join: Rc<TableTableJoin<K, L, R, O>>,
    pub(crate) side: Side,
}

impl<K, L, R, O> Listener for JoinSide<K, L, R, O> {
    fn changed(
        &self,
        task: &TaskCtx,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<&[u8]>,
        ts: i64,
        at: &dyn Fn() -> Location,
    ) -> Result<()> {
        let j = &*self.join;
        let other_id = match self.side {
            Side::Left => j.right.id,
            Side::Right => j.left.id,
        };
        let other = task
            .tables
            .get(other_id)
            .ok_or_else(|| Error::Config("internal: joined table missing".into()))?
            .borrow()
            .get_raw(key)?;
        let other = other.as_deref().map(unstored);
        let outcome = table_table(
            j.kind,
            self.side,
            new.is_some(),
            old.is_some(),
            other.map(|(ts, _)| ts),
            ts,
        );
        let rec = match outcome {
            Outcome::Nothing => return Ok(()),
            Outcome::Delete(ts) => result(&j.out, Some(key), None, ts)?,
            Outcome::Join(ts) => {
                let other = other.map(|(_, v)| v);
                let (l, r) = match self.side {
                    Side::Left => (new, other),
                    Side::Right => (other, new),
                };
                let l = l.map(|v| decode(&j.left.topic, v, at)).transpose()?;
                let r = r.map(|v| decode(&j.right.topic, v, at)).transpose()?;
                let o = (j.joiner)(l.as_ref(), r.as_ref());
                result(&j.out, Some(key), Some(&o), ts)?
            }
        };
        task.outbox.borrow_mut().push(rec);
        Ok(())
    }
}

pub(crate) mod foreign;
mod stream;

pub use stream::JoinWindow;
pub(crate) use stream::{BufferState, StreamSide, StreamStreamJoin};

#[cfg(test)]
mod tests;

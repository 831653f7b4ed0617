//! Batches: what an agent is fed. A batch is one partition's records from
//! one fetch, borrowed from the fetched buffer; keys and values are decoded
//! only when asked for.

use std::rc::Rc;

use faustus_wire::consumer::Fetched;
use faustus_wire::producer::ProducerRecord;
use faustus_wire::record::Record;

use crate::app::Topic;
use crate::codec::Codec;
use crate::error::{Error, Location, Result};
use crate::runtime::task::TaskCtx;
use crate::table::{Table, TableView};
use crate::windowed::{WindowedTable, WindowedView};

/// What the engine hands an agent, untyped.
pub(crate) struct BatchInput {
    /// One fetch's records of the partition, or several with
    /// [`AgentOptions::take`](crate::AgentOptions::take), in offset order.
    pub(crate) fetched: Vec<Rc<Fetched>>,
    /// Records before this offset were handled already (an earlier call
    /// failed on one and the error policy let the rest go on).
    pub(crate) from: i64,
    /// Records from this offset on are not the batch's (a join reads its
    /// inputs in timestamp order, so a fetch may be handed out in runs);
    /// `i64::MAX`: all of the fetches.
    pub(crate) until: i64,
    pub(crate) task: Rc<TaskCtx>,
}

impl BatchInput {
    /// The batch's records, undecoded, in offset order.
    pub(crate) fn records(&self) -> impl Iterator<Item = Result<Record<'_>>> + '_ {
        let (from, until) = (self.from, self.until);
        self.fetched
            .iter()
            .flat_map(|f| f.records())
            .map(|r| r.map_err(Error::from))
            .filter(move |r| r.as_ref().map_or(true, |r| r.offset >= from))
            .take_while(move |r| r.as_ref().map_or(true, |r| r.offset < until))
    }

    /// The partition.
    pub(crate) fn partition(&self) -> i32 {
        self.fetched.first().map_or(-1, |f| f.partition())
    }

    /// The topic.
    pub(crate) fn topic(&self) -> &str {
        self.fetched.first().map_or("", |f| f.topic())
    }

    /// Where the batch's record at `offset` is.
    pub(crate) fn at(&self, offset: i64) -> Location {
        Location {
            topic: self.topic().to_owned(),
            partition: self.partition(),
            offset,
        }
    }
}

/// One partition's records from one fetch, for an agent.
pub struct Batch<K, V> {
    input: BatchInput,
    topic: Topic<K, V>,
}

impl<K, V> std::fmt::Debug for Batch<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("topic", &self.topic.name())
            .field("partition", &self.partition())
            .field("from", &self.input.from)
            .finish()
    }
}

impl<K, V> Batch<K, V> {
    pub(crate) fn new(input: BatchInput, topic: Topic<K, V>) -> Self {
        Self { input, topic }
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        self.topic.name()
    }
    /// The partition.
    pub fn partition(&self) -> i32 {
        self.input.fetched.first().map_or(-1, |f| f.partition())
    }
    /// The partition's high watermark when the batch was fetched.
    pub fn high_watermark(&self) -> i64 {
        self.input.fetched.last().map_or(-1, |f| f.high_watermark())
    }
    /// The offset after the batch's last record.
    pub fn next_offset(&self) -> i64 {
        self.input
            .fetched
            .last()
            .map_or(-1, |f| f.next_offset().min(self.input.until))
    }

    /// The records, as views that decode on demand. A malformed record (a
    /// corrupt batch) ends the iteration with an error.
    pub fn events(&self) -> impl Iterator<Item = Result<Event<'_, K, V>>> + '_ {
        self.input
            .records()
            .map(move |r| r.map(|rec| Event { rec, batch: self }))
    }

    /// Keys and values, decoded (Faust's `stream.items()`).
    pub fn items(&self) -> impl Iterator<Item = Result<(K, V)>> + '_ {
        self.events().map(|e| {
            let e = e?;
            Ok((e.key()?, e.value()?))
        })
    }

    /// Values, decoded.
    pub fn values(&self) -> impl Iterator<Item = Result<V>> + '_ {
        self.events().map(|e| e?.value())
    }

    /// This batch's partition of `table` (the same partition number: topics
    /// and tables are co-partitioned). Only one view of a table may be open
    /// at a time in a batch.
    pub fn table<'b, TK, TV>(&'b self, table: &'b Table<TK, TV>) -> Result<TableView<'b, TK, TV>> {
        let cell = self
            .input
            .task
            .tables
            .get(table.id())
            .ok_or_else(|| Error::Table {
                table: table.name().to_owned(),
                message: "not a table of this app".into(),
            })?;
        let part = cell.try_borrow_mut().map_err(|_| Error::Table {
            table: table.name().to_owned(),
            message: format!(
                "partition {} is already open in this task",
                self.partition()
            ),
        })?;
        if part.window.is_some() {
            // Its keys are windowed: a plain view would read and write
            // entries no window holds.
            return Err(Error::Table {
                table: table.name().to_owned(),
                message: "a windowed table: open it with Batch::windowed".into(),
            });
        }
        Ok(TableView {
            part,
            table,
            key_buf: Vec::new(),
        })
    }

    /// This batch's partition of a windowed table (see
    /// [`Table::tumbling`](crate::Table::tumbling)). Only one view of a
    /// table may be open at a time in a batch.
    pub fn windowed<'b, TK, TV>(
        &'b self,
        table: &'b WindowedTable<TK, TV>,
    ) -> Result<WindowedView<'b, TK, TV>> {
        let name = || table.name().to_owned();
        let cell = self
            .input
            .task
            .tables
            .get(table.table().id())
            .ok_or_else(|| Error::Table {
                table: name(),
                message: "not a table of this app".into(),
            })?;
        let part = cell.try_borrow_mut().map_err(|_| Error::Table {
            table: name(),
            message: format!(
                "partition {} is already open in this task",
                self.partition()
            ),
        })?;
        if part.window.is_none() {
            return Err(Error::Table {
                table: name(),
                message: "not a windowed table".into(),
            });
        }
        Ok(WindowedView::new(
            part,
            table,
            self.input.task.wall_ms.get(),
        ))
    }

    /// This batch's partition of a table kept from a topic (see
    /// [`App::table_from`](crate::App::table_from)), to read.
    pub fn topic_table<'b, TK, TV>(
        &'b self,
        table: &'b crate::TopicTable<TK, TV>,
    ) -> Result<crate::TopicTableView<'b, TK, TV>> {
        let cell = self
            .input
            .task
            .tables
            .get(table.id)
            .ok_or_else(|| Error::Table {
                table: table.name().to_owned(),
                message: "not a table of this app".into(),
            })?;
        let part = cell.try_borrow().map_err(|_| Error::Table {
            table: table.name().to_owned(),
            message: format!("partition {} is being written", self.partition()),
        })?;
        Ok(crate::TopicTableView {
            part,
            table,
            key_buf: Vec::new(),
        })
    }

    /// A global table (see [`App::global_table`](crate::App::global_table)):
    /// every key, whatever the batch's partition.
    pub fn global<'b, GK, GV>(
        &'b self,
        table: &'b crate::GlobalTable<GK, GV>,
    ) -> Result<crate::GlobalView<'b, GK, GV>> {
        let cell = self
            .input
            .task
            .globals
            .get(table.inner.id)
            .ok_or_else(|| Error::Table {
                table: table.topic().to_owned(),
                message: "not a global table of this app".into(),
            })?;
        let store = cell.try_borrow().map_err(|_| Error::Table {
            table: table.topic().to_owned(),
            message: "global table busy".into(),
        })?;
        Ok(crate::GlobalView {
            store,
            table,
            key_buf: Vec::new(),
        })
    }

    /// Sends a record to a topic (a sink, or another agent's topic). It is
    /// produced when the agent returns, inside the transaction under
    /// exactly-once.
    pub fn send<K2, V2>(&self, topic: &Topic<K2, V2>, key: Option<&K2>, value: &V2) -> Result<()> {
        let rec = topic.record(key, value)?;
        self.input.task.outbox.borrow_mut().push(rec);
        Ok(())
    }

    /// Answers a request [`Agent::ask`](crate::Agent::ask) (or `join`,
    /// `map`) sent: `value`, as JSON, goes to the requester's reply
    /// topic, produced with the agent's other output (in its transaction
    /// under exactly-once). Returns false, sending nothing, when `event`
    /// asked no reply (it was sent with `send` or `cast`).
    pub fn reply<R: serde::Serialize>(&self, event: &Event<'_, K, V>, value: &R) -> Result<bool> {
        let Some((topic, partition, id)) = crate::rpc::reply_address(event.headers()) else {
            return Ok(false);
        };
        let bytes = serde_json::to_vec(value).map_err(|e| Error::Encode {
            target: topic.clone(),
            part: "value",
            source: crate::codec::CodecError::new(e.to_string()),
        })?;
        let id = bytes::Bytes::from(id);
        let mut rec = ProducerRecord::new(topic).partition(partition);
        rec.key = Some(id.clone());
        rec.value = Some(bytes.into());
        rec.headers = vec![(crate::rpc::CORRELATION_ID.to_owned(), Some(id))];
        self.input.task.outbox.borrow_mut().push(rec);
        Ok(true)
    }

    /// Re-keys every record with `key` and sends it to `topic`, usually a
    /// [`repartition_topic`](crate::App::repartition_topic): the agent
    /// reading that topic sees each new key in the partition it hashes to
    /// (Faust's `group_by`).
    pub fn group_by<K2>(
        &self,
        topic: &Topic<K2, V>,
        key: impl Fn(&Event<'_, K, V>) -> Result<K2>,
    ) -> Result<()> {
        for ev in self.events() {
            let ev = ev?;
            let k = key(&ev)?;
            let v = ev.value()?;
            self.send(topic, Some(&k), &v)?;
        }
        Ok(())
    }

    /// Forwards every record unchanged (bytes, headers, timestamp) to
    /// `topic`, partitioned by its key (Faust's `through`).
    pub fn through(&self, topic: &Topic<K, V>) -> Result<()> {
        let mut out = self.input.task.outbox.borrow_mut();
        for ev in self.events() {
            let ev = ev?;
            let mut rec = ProducerRecord::new(topic.name());
            rec.key = ev.raw_key().map(bytes::Bytes::copy_from_slice);
            rec.value = ev.raw_value().map(bytes::Bytes::copy_from_slice);
            rec.timestamp = Some(ev.timestamp());
            rec.headers = ev
                .rec
                .headers()
                .map(|(k, v)| (k.to_owned(), v.map(bytes::Bytes::copy_from_slice)))
                .collect();
            out.push(rec);
        }
        Ok(())
    }
}

/// One record of a batch, borrowed from the fetched buffer.
pub struct Event<'b, K, V> {
    rec: Record<'b>,
    batch: &'b Batch<K, V>,
}

impl<K, V> std::fmt::Debug for Event<'_, K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("at", &self.location().to_string())
            .finish()
    }
}

impl<K, V> Event<'_, K, V> {
    /// The record's offset.
    pub fn offset(&self) -> i64 {
        self.rec.offset
    }
    /// The record's timestamp (ms).
    pub fn timestamp(&self) -> i64 {
        self.rec.timestamp
    }
    /// The key's bytes (`None`: null).
    pub fn raw_key(&self) -> Option<&[u8]> {
        self.rec.key()
    }
    /// The value's bytes (`None`: null).
    pub fn raw_value(&self) -> Option<&[u8]> {
        self.rec.value()
    }
    /// The record's headers.
    pub fn headers(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
        self.rec.headers()
    }
    /// Where the record is.
    pub fn location(&self) -> Location {
        Location {
            topic: self.batch.topic().to_owned(),
            partition: self.batch.partition(),
            offset: self.rec.offset,
        }
    }
    fn decode<T>(
        &self,
        codec: &dyn Codec<T>,
        bytes: Option<&[u8]>,
        part: &'static str,
    ) -> Result<T> {
        codec.decode(bytes).map_err(|source| Error::Decode {
            at: self.location(),
            part,
            source,
        })
    }
    /// The decoded key.
    pub fn key(&self) -> Result<K> {
        self.decode(&*self.batch.topic.inner.codecs.key, self.rec.key(), "key")
    }
    /// The decoded value.
    pub fn value(&self) -> Result<V> {
        self.decode(
            &*self.batch.topic.inner.codecs.value,
            self.rec.value(),
            "value",
        )
    }
    /// An error that gives up on this record: the agent's
    /// [`ErrorPolicy`](crate::ErrorPolicy) decides what happens to it.
    pub fn fail(&self, message: impl Into<String>) -> Error {
        Error::Processing {
            at: self.location(),
            message: message.into(),
        }
    }
}

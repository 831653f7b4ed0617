//! A task: the worker's state for one partition number (partition *n* of
//! every source topic and every table), and where its outputs go.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::rc::Rc;

use faustus_wire::producer::{DeliveryFuture, ProducerRecord};

use crate::error::Result;
use crate::table::{TableDef, TablePart};

/// One partition number's state.
#[derive(Debug)]
pub(crate) struct TaskCtx {
    /// This partition of each table, by table id.
    pub(crate) tables: Vec<RefCell<TablePart>>,
    /// Records agents sent; the engine produces them after each agent call.
    pub(crate) outbox: RefCell<Vec<ProducerRecord>>,
    /// The wall clock (ms since the epoch) as the loop last read it: the
    /// virtual one under the test driver.
    pub(crate) wall_ms: std::cell::Cell<i64>,
    /// The worker's global tables, shared by its tasks.
    pub(crate) globals: crate::global::Globals,
    /// Records joins skipped (no key, no value, no foreign key: Kafka
    /// Streams' dropped records).
    pub(crate) dropped: std::cell::Cell<u64>,
    /// The largest record timestamp the task's agents were handed (its
    /// stream time; `i64::MIN` before the first record).
    pub(crate) stream_time: std::cell::Cell<i64>,
}

impl TaskCtx {
    /// A task over these table partitions.
    pub(crate) fn new(tables: Vec<TablePart>) -> Self {
        Self {
            tables: tables.into_iter().map(RefCell::new).collect(),
            outbox: RefCell::new(Vec::new()),
            wall_ms: std::cell::Cell::new(0),
            globals: crate::global::Globals::default(),
            dropped: std::cell::Cell::new(0),
            stream_time: std::cell::Cell::new(i64::MIN),
        }
    }

    /// Moves the stream time on to `ts` (never back).
    pub(crate) fn advance_stream_time(&self, ts: Option<i64>) {
        if let Some(ts) = ts {
            self.stream_time.set(self.stream_time.get().max(ts));
        }
    }

    /// Counts a record a join skipped.
    pub(crate) fn drop_record(&self) {
        self.dropped.set(self.dropped.get() + 1);
    }

    /// The task, reading these global tables.
    pub(crate) fn with_globals(mut self, globals: crate::global::Globals) -> Self {
        self.globals = globals;
        self
    }

    /// Closes the task, keeping its stores (by table id) as the last write
    /// left them: changes not written yet are dropped.
    pub(crate) fn into_stores(self) -> Vec<Box<dyn crate::store::Store>> {
        self.tables
            .into_iter()
            .map(|part| part.into_inner().store)
            .collect()
    }

    /// Back to the last commit: staged outputs and table changes dropped.
    pub(crate) fn roll_back(&self) {
        self.outbox.borrow_mut().clear();
        for part in &self.tables {
            part.borrow_mut().roll_back();
        }
    }
}

/// The tasks of a worker, by partition number.
pub(crate) type Tasks = BTreeMap<i32, Rc<TaskCtx>>;

/// Where a record sent to Kafka ended up, or will.
#[derive(Debug)]
pub(crate) enum Delivery {
    /// Sent through a producer; the broker has yet to answer.
    Pending(DeliveryFuture),
    /// Written at this offset.
    At(i64),
}

impl Delivery {
    /// The record's offset, once written.
    pub(crate) async fn offset(self) -> Result<i64> {
        match self {
            Self::Pending(d) => Ok(d.await?.offset),
            Self::At(o) => Ok(o),
        }
    }
}

/// Where a task's outputs and changelog records go: the worker's producer,
/// or the test driver's in-memory topics.
pub(crate) trait Sink {
    /// Sends one record.
    fn send(&self, rec: ProducerRecord) -> impl Future<Output = Result<Delivery>>;
}

/// Produces what the agents of a task staged: outputs (sinks and dead
/// letters), then changelog records. The last changelog record of each
/// table partition is kept: its offset is what the store records.
pub(crate) async fn send_staged<S: Sink>(task: &TaskCtx, sink: &S) -> Result<()> {
    // Buffers go back once drained: their capacity is reused batch after
    // batch instead of grown and freed each time.
    let mut out = std::mem::take(&mut *task.outbox.borrow_mut());
    for rec in out.drain(..) {
        sink.send(rec).await?;
    }
    {
        let mut outbox = task.outbox.borrow_mut();
        if outbox.is_empty() {
            *outbox = out;
        }
    }
    for part in &task.tables {
        let mut emitted = std::mem::take(&mut part.borrow_mut().outputs);
        for rec in emitted.drain(..) {
            sink.send(rec).await?;
        }
        let mut part = part.borrow_mut();
        if part.outputs.is_empty() {
            part.outputs = emitted;
        }
    }
    for part in &task.tables {
        let staged = part.borrow_mut().take_staged();
        let mut last = None;
        for rec in staged {
            last = Some(sink.send(rec).await?);
        }
        if let Some(d) = last {
            part.borrow_mut().last_sent = Some(d);
        }
    }
    Ok(())
}

/// Writes every table overlay to its store with the offset of the last
/// changelog record sent for it (all of which are durable now).
pub(crate) async fn write_overlays(tasks: &Tasks) -> Result<()> {
    for t in tasks.values() {
        for cell in &t.tables {
            let (last, overlay) = {
                let mut part = cell.borrow_mut();
                if let Some(w) = part.window.as_mut() {
                    w.confirm();
                }
                (part.last_sent.take(), part.take_overlay())
            };
            let Some(last) = last else { continue };
            let offset = last.offset().await?;
            cell.borrow_mut()
                .store
                .apply(&mut overlay.into_iter(), offset)?;
        }
    }
    Ok(())
}

/// The wall clock, ms since the epoch.
pub(crate) fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Tells every task the wall-clock time agents see (windowed tables closing
/// by the wall clock read it).
pub(crate) fn set_wall_clock(tasks: &Tasks, now_ms: i64) {
    for t in tasks.values() {
        t.wall_ms.set(now_ms);
    }
}

/// Whether a windowed table closing by the wall clock has something due at
/// `now_ms` in some task.
pub(crate) fn wall_clock_due(tasks: &Tasks, tables: &[TableDef], now_ms: i64) -> bool {
    tasks.values().any(|t| {
        tables.iter().zip(&t.tables).any(|(def, part)| {
            def.frozen_window.is_some_and(|w| w.closes_by_wall_clock())
                && part.try_borrow().is_ok_and(|p| {
                    p.window
                        .as_ref()
                        .is_some_and(|w| w.due_by_wall_clock(now_ms))
                })
        })
    })
}

/// Closes (and expires) the windows due by the wall clock at `now_ms`, in
/// every task, and produces what that emitted. Under exactly-once it runs
/// inside the open transaction.
pub(crate) async fn tick_wall_clock<S: Sink>(
    tasks: &Tasks,
    tables: &[TableDef],
    now_ms: i64,
    sink: &S,
) -> Result<()> {
    for task in tasks.values() {
        task.wall_ms.set(now_ms);
        for (def, part) in tables.iter().zip(&task.tables) {
            if def.frozen_window.is_some_and(|w| w.closes_by_wall_clock()) {
                (def.tick)(part, now_ms)?;
            }
        }
        send_staged(task, sink).await?;
    }
    Ok(())
}

//! Windowed tables: a value per key and window, kept in the table's store
//! under (key, window start, window end) so that a range scan serves a
//! key's windows and expiry deletes them in order.
//!
//! Each stored value carries the largest record timestamp of its window
//! (8 bytes before the encoded value): sliding windows need it to place
//! records (KIP-450), and emitted results take it as their timestamp, as
//! Kafka Streams' timestamped window stores do.
//!
//! A partition's **clock** is its stream time (the largest event time seen),
//! or, for tables closing by the wall clock, the later of that and the wall
//! clock. Windows close when the clock passes their end plus grace
//! ([`WindowSpec::closes_at`]); a close emits the final result and calls
//! the close callback, in order of closing. The clock value closes were
//! handled through is persisted ([`CLOSED_KEY`]) beside the windows: in the
//! same transaction as the emitted records under exactly-once (so each
//! final result is emitted once, across restarts and rebalances, as
//! KIP-825's emit-on-window-close), and once they are flushed under
//! at-least-once (so none is lost; some may repeat). Windows past their
//! retention are deleted with tombstones; the expiry and close indexes are
//! rebuilt from the store whenever a task opens, so restored windows still
//! expire and still close.

use std::cell::{RefCell, RefMut};
use std::collections::{BTreeMap, BTreeSet};

use faustus_wire::producer::ProducerRecord;

use crate::app::Topic;
use crate::codec::encode_into;
use crate::error::{Error, Result};
use crate::table::{Table, TablePart};
use crate::window::{
    parse_store_key, store_key, store_key_from, Window, WindowKind, WindowSpec, Windowed,
    CLOSED_KEY, STREAM_TIME_KEY,
};

/// What a windowed table emits to its output topic (see
/// [`WindowedTable::to`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Emit {
    /// Every change of a window (Kafka Streams' default, Faust's only
    /// behaviour); merged-away sessions get tombstones.
    #[default]
    Update,
    /// One result per window, when it closes (Kafka Streams'
    /// `EmitStrategy.onWindowClose()`, KIP-825), exactly once under
    /// exactly-once processing.
    Final,
}

/// Makes the output record of a window's result (`None`: a tombstone).
type Emitter<K, V> = Box<dyn Fn(&K, Window, Option<&V>, i64) -> Result<ProducerRecord>>;

/// A close callback.
type OnClose<K, V> = Box<dyn Fn(&K, Window, &V)>;

/// Which time places a record in its windows.
enum Relative {
    /// The record's timestamp (the default).
    Timestamp,
    /// The wall clock.
    Now,
    /// The partition's stream time.
    Stream,
    /// A field of the record's value: a `Rc<dyn Fn(&EV) -> i64>` for the
    /// agent's value type `EV`.
    Field(Box<dyn std::any::Any>),
}

/// Where a windowed table's results go, and which time places records.
pub(crate) struct Emission<K, V> {
    mode: Emit,
    to: Option<Emitter<K, V>>,
    on_close: Option<OnClose<K, V>>,
    relative: Relative,
}

impl<K, V> Default for Emission<K, V> {
    fn default() -> Self {
        Self {
            mode: Emit::Update,
            to: None,
            on_close: None,
            relative: Relative::Timestamp,
        }
    }
}

/// Reads an event time from a value of type `EV`.
type FieldTime<EV> = std::rc::Rc<dyn Fn(&EV) -> i64>;

/// A windowed table handle (see [`Table::tumbling`]). Cheap to clone.
pub struct WindowedTable<K, V> {
    pub(crate) table: Table<K, V>,
}

impl<K, V> Clone for WindowedTable<K, V> {
    fn clone(&self) -> Self {
        Self {
            table: self.table.clone(),
        }
    }
}

impl<K, V> std::fmt::Debug for WindowedTable<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowedTable")
            .field("name", &self.name())
            .field("window", &self.spec())
            .finish()
    }
}

impl<K, V> WindowedTable<K, V> {
    fn set(self, f: impl FnOnce(WindowSpec) -> WindowSpec) -> Self {
        {
            let mut w = self
                .table
                .inner
                .window
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            *w = w.map(f);
        }
        self
    }
    fn emission(&self) -> std::cell::RefMut<'_, Emission<K, V>> {
        self.table.inner.emission.borrow_mut()
    }
    /// Closes are tracked when someone hears of them.
    fn track_closes(self) -> Self {
        let on = {
            let e = self.emission();
            (e.mode == Emit::Final && e.to.is_some()) || e.on_close.is_some()
        };
        self.set(|w| w.notifying_close(on))
    }
    /// How late (in stream time) a record may be and still count (default
    /// 0): a window `[start, end)` closes when the stream time reaches
    /// `end + grace`.
    pub fn grace(self, grace: std::time::Duration) -> Self {
        self.set(|w| w.grace(grace))
    }
    /// How long after its start a window is kept (default and least: until
    /// it closes); older windows are deleted, with tombstones in the
    /// changelog.
    pub fn expires(self, expires: std::time::Duration) -> Self {
        self.set(|w| w.expires(expires))
    }
    /// Windows also close when the wall clock passes their end plus grace,
    /// as Faust closes them, not only when the stream time does: results
    /// come even when the input goes quiet, and records that arrive later
    /// are dropped.
    pub fn close_by_wall_clock(self) -> Self {
        self.set(WindowSpec::close_by_wall_clock)
    }
    /// What goes to the output topic ([`to`](Self::to)): every change
    /// ([`Emit::Update`], the default) or each window's final result
    /// ([`Emit::Final`]).
    pub fn emit(self, mode: Emit) -> Self {
        self.emission().mode = mode;
        self.track_closes()
    }
    /// Sends the table's results to `topic`, keyed by key and window (see
    /// [`WindowedText`](crate::codec::WindowedText) for Kafka Streams'
    /// printed form), each with the largest record timestamp of its window.
    /// They are produced with the table's changelog records: in the same
    /// transaction under exactly-once.
    pub fn to(self, topic: &Topic<Windowed<K>, V>) -> Self
    where
        K: Clone + 'static,
        V: 'static,
    {
        let topic = topic.clone();
        self.emission().to = Some(Box::new(move |k, window, v, ts| {
            let key = Windowed {
                key: k.clone(),
                window,
            };
            let mut rec = topic.record_opt(Some(&key), v)?;
            rec.timestamp = Some(ts);
            Ok(rec)
        }));
        self.track_closes()
    }
    /// Calls `f` with each window's final value when it closes (Faust's
    /// `on_window_close`). Windows restored from the changelog after a
    /// crash still close; a close handled in a transaction that aborted is
    /// handled again, so `f` runs at least once per window.
    pub fn on_window_close(self, f: impl Fn(&K, Window, &V) + 'static) -> Self {
        self.emission().on_close = Some(Box::new(f));
        self.track_closes()
    }
    /// Places each record by a time read from its value (Faust's
    /// `relative_to_field`), for agents whose values are `EV`; another
    /// agent's [`update`](WindowedView::update) is refused with an error.
    pub fn relative_to_field<EV: 'static>(self, f: impl Fn(&EV) -> i64 + 'static) -> Self {
        let f: FieldTime<EV> = std::rc::Rc::new(f);
        self.emission().relative = Relative::Field(Box::new(f));
        self
    }
    /// Places each record by the wall clock when it is processed (Faust's
    /// `relative_to_now`).
    pub fn relative_to_now(self) -> Self {
        self.emission().relative = Relative::Now;
        self
    }
    /// Places each record at the partition's stream time, the largest
    /// timestamp seen (Faust's `relative_to_stream`): a late record counts
    /// in the latest windows instead of its own.
    pub fn relative_to_stream(self) -> Self {
        self.emission().relative = Relative::Stream;
        self
    }
    /// Places each record by its timestamp (the default).
    pub fn relative_to_timestamp(self) -> Self {
        self.emission().relative = Relative::Timestamp;
        self
    }
    /// The window spec.
    pub fn spec(&self) -> WindowSpec {
        self.table
            .inner
            .window
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unwrap_or_else(|| WindowSpec::tumbling(std::time::Duration::from_millis(1)))
    }
    /// The table underneath (its name, changelog, codecs).
    pub fn table(&self) -> &Table<K, V> {
        &self.table
    }
    /// The table's name.
    pub fn name(&self) -> &str {
        self.table.name()
    }
    /// Decodes a stored window entry.
    pub(crate) fn decode_entry(&self, k: &[u8], v: &[u8]) -> Result<(K, Window, V)> {
        let bad = |message: &str| Error::Table {
            table: self.name().to_owned(),
            message: message.into(),
        };
        let (key, w) =
            parse_store_key(k).ok_or_else(|| bad("a stored key is not a windowed key"))?;
        let (_, v) = unstamp(v).ok_or_else(|| bad("a stored window value has no timestamp"))?;
        let (k, v) = self.table.decode_entry(key, v)?;
        Ok((k, w, v))
    }
}

/// Splits a stored window value into its timestamp and encoded value.
pub(crate) fn unstamp(raw: &[u8]) -> Option<(i64, &[u8])> {
    let ts = i64::from_be_bytes(raw.get(..8)?.try_into().ok()?);
    Some((ts, &raw[8..]))
}

/// Keys by the clock value at which something happens to them.
type Schedule = BTreeMap<i64, BTreeSet<Vec<u8>>>;

/// A windowed table partition's clock and indexes, loaded from the store on
/// first use (after recovery, a rollback or a restart alike).
#[derive(Debug)]
pub(crate) struct WindowState {
    pub(crate) spec: WindowSpec,
    exactly_once: bool,
    loaded: bool,
    /// The largest timestamp seen (persisted under [`STREAM_TIME_KEY`]).
    stream_time: Option<i64>,
    /// Stream time moved since it was last staged.
    dirty: bool,
    /// The wall clock as last told, ms (tables closing by it).
    wall_ms: Option<i64>,
    /// Stored windows by the clock value they expire at.
    expiring: Schedule,
    /// Windows not closed yet, by the clock value they close at (only when
    /// closes are tracked).
    closing: Schedule,
    /// Closes are handled through this clock value.
    closed_through: Option<i64>,
    /// The close point as the changelog has it.
    persisted_close: Option<i64>,
    /// The close point at the last flush (at-least-once: what may be
    /// persisted).
    confirmed_close: Option<i64>,
    /// Records (window updates) dropped for closed windows.
    pub(crate) dropped: u64,
}

impl WindowState {
    pub(crate) fn new(spec: WindowSpec, exactly_once: bool) -> Self {
        Self {
            spec,
            exactly_once,
            loaded: false,
            stream_time: None,
            dirty: false,
            wall_ms: None,
            expiring: Schedule::new(),
            closing: Schedule::new(),
            closed_through: None,
            persisted_close: None,
            confirmed_close: None,
            dropped: 0,
        }
    }

    /// Back to what the store holds: reloaded on next use.
    pub(crate) fn reset(&mut self) {
        let dropped = self.dropped;
        *self = Self::new(self.spec, self.exactly_once);
        self.dropped = dropped;
    }

    /// Everything staged so far is durable: under at-least-once, the close
    /// point reached may now be persisted.
    pub(crate) fn confirm(&mut self) {
        self.confirmed_close = self.closed_through;
    }

    /// The partition's clock: stream time, or the later of it and the wall
    /// clock.
    fn clock(&self) -> Option<i64> {
        match (
            self.stream_time,
            self.wall_ms.filter(|_| self.spec.closes_by_wall_clock()),
        ) {
            (Some(s), Some(w)) => Some(s.max(w)),
            (s, w) => s.or(w),
        }
    }

    /// Indexes a stored window for expiry and, if it is still to close, for
    /// closing.
    fn index(&mut self, k: &[u8], w: Window) {
        let at = self.spec.expires_at(w);
        let keys = self.expiring.entry(at).or_default();
        if keys.contains(k) {
            // Indexed already (most updates hit a known window): no copy.
            return;
        }
        keys.insert(k.to_vec());
        if self.spec.notifies_close() {
            let at = self.spec.closes_at(w);
            if self.closed_through.is_none_or(|c| at > c) {
                self.closing.entry(at).or_default().insert(k.to_vec());
            }
        }
    }

    /// Forgets a window deleted (a session merged away).
    fn unindex(&mut self, k: &[u8], w: Window) {
        if let Some(keys) = self.expiring.get_mut(&self.spec.expires_at(w)) {
            keys.remove(k);
        }
        if let Some(keys) = self.closing.get_mut(&self.spec.closes_at(w)) {
            keys.remove(k);
        }
    }

    /// The next keys due at `clock` in `schedule`.
    fn pop_due(schedule: &mut Schedule, clock: i64) -> Option<BTreeSet<Vec<u8>>> {
        match schedule.first_key_value() {
            Some((&at, _)) if at <= clock => schedule.pop_first().map(|(_, keys)| keys),
            _ => None,
        }
    }

    /// Whether something is due at the wall-clock time `now`.
    pub(crate) fn due_by_wall_clock(&self, now: i64) -> bool {
        self.spec.closes_by_wall_clock()
            && (!self.loaded
                || [&self.closing, &self.expiring]
                    .iter()
                    .any(|s| s.first_key_value().is_some_and(|(&at, _)| at <= now)))
    }
}

/// An agent's access to the partition of a windowed table matching its
/// batch ([`Batch::windowed`](crate::Batch::windowed)). Event time is the
/// record's timestamp (or any timestamp given to the `_at` methods); the
/// partition's stream time is the largest seen. Windows closed take no more
/// records; windows past their retention are deleted.
pub struct WindowedView<'b, K, V> {
    pub(crate) part: RefMut<'b, TablePart>,
    pub(crate) table: &'b WindowedTable<K, V>,
    pub(crate) key_buf: Vec<u8>,
}

impl<K, V> std::fmt::Debug for WindowedView<'_, K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowedView")
            .field("table", &self.table.name())
            .field("partition", &self.part.partition)
            .finish()
    }
}

/// A window's stored value, decoded, with its largest record timestamp.
type Stamped<V> = (i64, V);

impl<'b, K, V> WindowedView<'b, K, V> {
    /// A view of `part`, its wall clock set to `wall_ms`.
    pub(crate) fn new(
        mut part: RefMut<'b, TablePart>,
        table: &'b WindowedTable<K, V>,
        wall_ms: i64,
    ) -> Self {
        if let Some(w) = part.window.as_mut() {
            w.wall_ms = Some(wall_ms);
        }
        Self {
            part,
            table,
            key_buf: Vec::new(),
        }
    }

    fn name(&self) -> &str {
        self.table.name()
    }

    fn error(&self, message: impl Into<String>) -> Error {
        Error::Table {
            table: self.name().to_owned(),
            message: message.into(),
        }
    }

    fn state(&mut self) -> Result<&mut WindowState> {
        let name = self.table.name();
        self.part.window.as_mut().ok_or_else(|| Error::Table {
            table: name.to_owned(),
            message: "not a windowed table".into(),
        })
    }

    fn spec(&mut self) -> Result<WindowSpec> {
        Ok(self.state()?.spec)
    }

    /// Loads the stream time, the close point and the indexes from the
    /// store, once.
    fn load(&mut self) -> Result<()> {
        if self.state()?.loaded {
            return Ok(());
        }
        let read_i64 = |part: &TablePart, key: &[u8]| -> Result<Option<i64>> {
            part.get_raw(key)?
                .map(|b| {
                    b.as_slice()
                        .try_into()
                        .map(i64::from_be_bytes)
                        .map_err(|_| self.error("a stored clock value is not 8 bytes"))
                })
                .transpose()
        };
        let stream_time = read_i64(&self.part, STREAM_TIME_KEY)?;
        let closed = read_i64(&self.part, CLOSED_KEY)?;
        let mut windows: BTreeMap<Vec<u8>, Window> = BTreeMap::new();
        for entry in self.part.store.range(&[], None)? {
            let (k, _) = entry?;
            if let Some((_, w)) = parse_store_key(&k) {
                windows.insert(k, w);
            }
        }
        for (k, v) in self.part.changes() {
            if let Some((_, w)) = parse_store_key(k) {
                if v.is_some() {
                    windows.insert(k.clone(), w);
                } else {
                    windows.remove(k);
                }
            }
        }
        let state = self.state()?;
        state.stream_time = stream_time;
        state.closed_through = closed;
        state.persisted_close = closed;
        state.confirmed_close = closed;
        state.expiring.clear();
        state.closing.clear();
        for (k, w) in windows {
            state.index(&k, w);
        }
        state.loaded = true;
        Ok(())
    }

    /// Moves stream time to `ts` if it is later, then handles what fell due
    /// on the clock: closes (final results, the close callback), then
    /// expiry. Returns the clock.
    fn advance(&mut self, ts: Option<i64>) -> Result<i64> {
        self.load()?;
        let state = self.state()?;
        if let Some(ts) = ts {
            if state.stream_time.is_none_or(|st| ts > st) {
                state.stream_time = Some(ts);
                state.dirty = true;
            }
        }
        let Some(clock) = state.clock() else {
            return Ok(i64::MIN);
        };
        let tracked = state.spec.notifies_close();
        while let Some(keys) = WindowState::pop_due(&mut self.state()?.closing, clock) {
            for k in keys {
                self.close_window(&k)?;
            }
        }
        let state = self.state()?;
        if tracked && state.closed_through.is_none_or(|c| clock > c) {
            state.closed_through = Some(clock);
        }
        let mut expired = Vec::new();
        while let Some(keys) = WindowState::pop_due(&mut state.expiring, clock) {
            expired.extend(keys);
        }
        for k in expired {
            self.part.put_raw(k, None);
        }
        Ok(clock)
    }

    /// A window closed: its final result goes out, its callback runs.
    fn close_window(&mut self, k: &[u8]) -> Result<()> {
        let Some(raw) = self.part.get_raw(k)? else {
            return Ok(());
        };
        let (key, window, value) = self.table.decode_entry(k, &raw)?;
        let ts = unstamp(&raw).map_or(window.end, |(ts, _)| ts);
        let emission = self.table.table.inner.emission.borrow();
        if emission.mode == Emit::Final {
            if let Some(to) = &emission.to {
                let rec = to(&key, window, Some(&value), ts)?;
                self.part.outputs.push(rec);
            }
        }
        if let Some(f) = &emission.on_close {
            f(&key, window, &value);
        }
        Ok(())
    }

    fn encode_key(&mut self, key: &K) -> Result<()> {
        self.key_buf.clear();
        let t = &self.table.table.inner;
        encode_into(&*t.codecs.key, key, &mut self.key_buf, &t.name, "key")
    }

    fn decode_value(&self, raw: &[u8]) -> Result<V> {
        let t = &self.table.table.inner;
        t.codecs
            .value
            .decode(Some(raw))
            .map_err(|e| self.error(format!("stored value undecodable: {e}")))
    }

    /// A stored window value, decoded.
    fn decode_stamped(&self, raw: &[u8]) -> Result<Stamped<V>> {
        let (ts, v) =
            unstamp(raw).ok_or_else(|| self.error("a stored window value has no timestamp"))?;
        Ok((ts, self.decode_value(v)?))
    }

    /// The window `w` of the key in `key_buf`, if it has a value.
    fn read_window(&self, w: Window) -> Result<Option<Stamped<V>>> {
        match self.part.get_raw(&store_key(&self.key_buf, w))? {
            Some(raw) => self.decode_stamped(&raw).map(Some),
            None => Ok(None),
        }
    }

    /// The windows of the key in `key_buf` starting in `[from, to)`,
    /// committed and pending, in start order, values still encoded.
    fn fetch(&self, from: i64, to: i64) -> Result<BTreeMap<Window, Vec<u8>>> {
        let (lo, hi) = (
            store_key_from(&self.key_buf, from),
            store_key_from(&self.key_buf, to),
        );
        let mut out = BTreeMap::new();
        for entry in self.part.store.range(&lo, Some(&hi))? {
            let (k, v) = entry?;
            if let Some((_, w)) = parse_store_key(&k) {
                out.insert(w, v);
            }
        }
        for (k, v) in self.part.changes_in(&lo, &hi) {
            if let Some((_, w)) = parse_store_key(&k) {
                match v {
                    Some(v) => out.insert(w, v),
                    None => out.remove(&w),
                };
            }
        }
        Ok(out)
    }

    /// Writes `value` as window `w` of `key` (encoded in `key_buf`), with
    /// `ts` its largest record timestamp; emits it under [`Emit::Update`].
    /// A new window (not `existing`) is indexed for expiry and closing.
    fn put_window(&mut self, key: &K, w: Window, ts: i64, value: &V, existing: bool) -> Result<()> {
        let k = store_key(&self.key_buf, w);
        self.put_window_at(k, key, w, ts, value, existing)
    }

    /// [`put_window`](Self::put_window) with the store key made already.
    fn put_window_at(
        &mut self,
        k: Vec<u8>,
        key: &K,
        w: Window,
        ts: i64,
        value: &V,
        existing: bool,
    ) -> Result<()> {
        let t = &self.table.table.inner;
        let mut out = Vec::with_capacity(16);
        out.extend_from_slice(&ts.to_be_bytes());
        encode_into(&*t.codecs.value, value, &mut out, &t.name, "value")?;
        if !existing {
            self.state()?.index(&k, w);
        }
        self.part.put_raw(k, Some(out));
        self.emit_update(key, w, Some(value), ts)
    }

    /// Deletes window `w` of the key in `key_buf` (a merged-away session).
    fn delete_window(&mut self, key: &K, w: Window, ts: i64) -> Result<()> {
        let k = store_key(&self.key_buf, w);
        self.state()?.unindex(&k, w);
        self.part.put_raw(k, None);
        self.emit_update(key, w, None, ts)
    }

    fn emit_update(&mut self, key: &K, w: Window, value: Option<&V>, ts: i64) -> Result<()> {
        let emission = self.table.table.inner.emission.borrow();
        if emission.mode == Emit::Update {
            if let Some(to) = &emission.to {
                let rec = to(key, w, value, ts)?;
                self.part.outputs.push(rec);
            }
        }
        Ok(())
    }

    /// Applies `f` to `base` (or the default) as window `w`'s new value,
    /// unless `w` is closed at `clock` (then the update is dropped: counted
    /// and logged). The window's timestamp becomes the later of `ts` and
    /// the base's. `existing`: `w` is stored already (`base` is its value).
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &mut self,
        key: &K,
        w: Window,
        base: Option<Stamped<V>>,
        existing: bool,
        ts: i64,
        clock: i64,
        f: &mut impl FnMut(&mut V),
        at: Option<&crate::Location>,
    ) -> Result<bool> {
        let spec = self.spec()?;
        if spec.is_closed(w, clock) {
            self.state()?.dropped += 1;
            tracing::debug!(table = %self.name(), window = ?w, clock, at = ?at.map(ToString::to_string), "record for a closed window dropped");
            return Ok(false);
        }
        let (ts, mut v) = match base {
            Some((stamp, v)) => (stamp.max(ts), v),
            None => (ts, (self.table.table.inner.default)()),
        };
        f(&mut v);
        self.put_window(key, w, ts, &v, existing)?;
        Ok(true)
    }

    /// The time that places `event` in its windows, as the table is
    /// configured: its timestamp (the default), a field of its value, the
    /// wall clock or the stream time.
    pub fn event_time<EK, EV: 'static>(&mut self, event: &crate::Event<'_, EK, EV>) -> Result<i64> {
        let field = {
            let emission = self.table.table.inner.emission.borrow();
            match &emission.relative {
                Relative::Timestamp => return Ok(event.timestamp()),
                Relative::Now => return Ok(self.state()?.wall_ms.unwrap_or(0)),
                Relative::Stream => None,
                Relative::Field(f) => {
                    Some(f.downcast_ref::<FieldTime<EV>>().cloned().ok_or_else(|| {
                        self.error(format!(
                            "relative_to_field was declared for values of another type \
                                 than {}'s",
                            event.location().topic
                        ))
                    })?)
                }
            }
        };
        match field {
            Some(f) => Ok(f(&event.value()?)),
            None => {
                let st = self.stream_time()?;
                Ok(st.map_or(event.timestamp(), |st| st.max(event.timestamp())))
            }
        }
    }

    /// Applies `f` to `key`'s value in every window the event falls in
    /// (hopping: all of them; sliding: the windows holding its timestamp,
    /// created as Kafka Streams creates them; sessions: its session, merged
    /// with the sessions it bridges) that is still open; returns how many
    /// windows it changed. The event's time is its timestamp, or as
    /// configured ([`event_time`](Self::event_time)). A record for closed
    /// windows only is dropped: it is counted, logged at debug with its
    /// topic, partition and offset, and is not an error.
    pub fn update<EK, EV: 'static>(
        &mut self,
        event: &crate::Event<'_, EK, EV>,
        key: &K,
        f: impl FnMut(&mut V),
    ) -> Result<usize> {
        let ts = self.event_time(event)?;
        self.update_inner(ts, key, f, Some(&event.location()))
    }

    /// `key`'s value in the latest window holding the event's time as the
    /// table is configured (Faust's `.value()`).
    pub fn value<EK, EV: 'static>(
        &mut self,
        event: &crate::Event<'_, EK, EV>,
        key: &K,
    ) -> Result<V> {
        let ts = self.event_time(event)?;
        self.current(ts, key)
    }

    /// [`update`](Self::update) at an event time of your choosing (a field
    /// of the value, say).
    pub fn update_at(&mut self, ts: i64, key: &K, f: impl FnMut(&mut V)) -> Result<usize> {
        self.update_inner(ts, key, f, None)
    }

    fn update_inner(
        &mut self,
        ts: i64,
        key: &K,
        mut f: impl FnMut(&mut V),
        at: Option<&crate::Location>,
    ) -> Result<usize> {
        let spec = self.spec()?;
        let clock = self.advance(Some(ts))?;
        self.encode_key(key)?;
        match spec.kind() {
            WindowKind::Session => self.update_session(spec, ts, clock, key, &mut f, at),
            WindowKind::Sliding => self.update_sliding(spec, ts, clock, key, &mut f, at),
            WindowKind::Tumbling | WindowKind::Hopping => {
                let mut changed = 0;
                for w in spec.windows_for(ts) {
                    if spec.is_closed(w, clock) {
                        self.apply(key, w, None, false, ts, clock, &mut f, at)?;
                        continue;
                    }
                    // One store key for the read and the write.
                    let k = store_key(&self.key_buf, w);
                    let stored = self
                        .part
                        .read_raw(&k, |raw| raw.map(|r| self.decode_stamped(r)).transpose())?;
                    let (stamp, mut v, existing) = match stored {
                        Some((stamp, v)) => (stamp.max(ts), v, true),
                        None => (ts, (self.table.table.inner.default)(), false),
                    };
                    f(&mut v);
                    self.put_window_at(k, key, w, stamp, &v, existing)?;
                    changed += 1;
                }
                Ok(changed)
            }
        }
    }

    /// A record at `ts` for the key in `key_buf` in sliding windows
    /// (KIP-450): it updates every window that holds it, creates the window
    /// ending at it, the window starting just after it (from the window
    /// holding it that starts last, if a later record falls there) and the
    /// window starting just after the record before it (if it falls
    /// there). A new window's value starts from an existing window that
    /// holds exactly the same records, as Kafka Streams does; stored
    /// timestamps (each window's latest record) say which one that is.
    fn update_sliding(
        &mut self,
        spec: WindowSpec,
        ts: i64,
        clock: i64,
        key: &K,
        f: &mut impl FnMut(&mut V),
        at: Option<&crate::Location>,
    ) -> Result<usize> {
        let diff = spec.size();
        // Kafka Streams drops a record once its right window would be
        // closed.
        let right_end = ts.saturating_add(1).saturating_add(diff);
        if ts < 0 || right_end.saturating_add(spec.grace_ms()) <= clock {
            self.state()?.dropped += 1;
            tracing::debug!(table = %self.name(), ts, clock, at = ?at.map(ToString::to_string), "record for closed sliding windows dropped");
            return Ok(0);
        }
        let early = ts < diff;
        let from = if early {
            0
        } else {
            ts.saturating_sub(diff.saturating_mul(2)).max(0)
        };
        let existing = self.fetch(from, ts.saturating_add(2))?;
        let mut changed = 0;
        let mut starts = BTreeSet::new();
        // The latest window ending before the record: it holds what the
        // record's own window holds, less the record.
        let mut left_base: Option<Vec<u8>> = None;
        // The record before this one, if in reach.
        let mut previous: Option<i64> = None;
        let mut left_exists = false;
        let mut right_exists = false;
        // The window holding the record that starts last, before the
        // record joins it: what the record's right window holds.
        let mut right_base: Option<Vec<u8>> = None;
        // Early records: the window [0, diff] holding them all.
        let mut combined: Option<Vec<u8>> = None;
        let stamp_of = |raw: &[u8]| unstamp(raw).map_or(i64::MIN, |(t, _)| t);
        for (w, raw) in existing {
            starts.insert(w.start);
            let stamp = stamp_of(&raw);
            if early && w.start == 0 {
                if stamp < ts {
                    previous = Some(stamp);
                }
                combined = Some(raw);
            } else if w.start == ts + 1 {
                right_exists = true;
            } else if w.end < ts {
                previous = Some(stamp);
                left_base = Some(raw);
            } else if w.end == ts {
                left_exists = true;
                if stamp < ts {
                    previous = Some(stamp);
                }
                let base = self.decode_stamped(&raw)?;
                changed += usize::from(self.apply(key, w, Some(base), true, ts, clock, f, at)?);
            } else if w.start <= ts {
                let base = self.decode_stamped(&raw)?;
                right_base = Some(raw);
                changed += usize::from(self.apply(key, w, Some(base), true, ts, clock, f, at)?);
            } else {
                return Err(self.error(format!(
                    "sliding window {w:?} cannot be there while a record at {ts} arrives"
                )));
            }
        }
        if early && right_base.is_none() {
            right_base = combined.clone().filter(|raw| stamp_of(raw) > ts);
        }
        // The previous record's right window, if the record falls in it.
        if let Some(p) = previous {
            let w = Window::new(p + 1, p + 1 + diff);
            if !starts.contains(&w.start) && w.end >= ts {
                changed += usize::from(self.apply(key, w, None, false, ts, clock, f, at)?);
            }
        }
        if early {
            let base = combined.map(|raw| self.decode_stamped(&raw)).transpose()?;
            let existing = base.is_some();
            let w = Window::new(0, diff);
            changed += usize::from(self.apply(key, w, base, existing, ts, clock, f, at)?);
        } else if !left_exists {
            let w = Window::new(ts - diff, ts);
            let base = match (previous, left_base) {
                (Some(p), Some(raw)) if p >= ts - diff => Some((ts, self.decode_stamped(&raw)?.1)),
                _ => None,
            };
            changed += usize::from(self.apply(key, w, base, false, ts, clock, f, at)?);
        }
        // The record's right window, from the records after it.
        if let Some(raw) = right_base {
            let (stamp, v) = self.decode_stamped(&raw)?;
            if !right_exists && stamp > ts {
                self.put_window(key, Window::new(ts + 1, right_end), stamp, &v, false)?;
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// A record at `ts` for the key in `key_buf`: merges it into the key's
    /// sessions within `gap`, combining merged sessions' values, and applies
    /// `f` to the result (see [`Table::session`]).
    fn update_session(
        &mut self,
        spec: WindowSpec,
        ts: i64,
        clock: i64,
        key: &K,
        f: &mut impl FnMut(&mut V),
        at: Option<&crate::Location>,
    ) -> Result<usize> {
        let gap = spec.size();
        // The key's sessions that may touch [ts - gap, ts + gap]: every one
        // starting by ts + gap (a session can be long).
        let existing = self.fetch(i64::MIN, ts.saturating_add(gap).saturating_add(1))?;
        let windows: Vec<Window> = existing.keys().copied().collect();
        let m = crate::window::merge_session(ts, gap, &windows);
        if spec.is_closed(m.session, clock) {
            self.state()?.dropped += 1;
            tracing::debug!(table = %self.name(), session = ?m.session, clock, at = ?at.map(ToString::to_string), "record for a closed session dropped");
            return Ok(0);
        }
        let t = &self.table.table.inner;
        let merge = t
            .merge
            .get()
            .ok_or_else(|| self.error("a session table without a merge function"))?;
        // The session's value: its own, combined with each it absorbs.
        let mut value: Option<Stamped<V>> = match existing.get(&m.session) {
            Some(raw) => Some(self.decode_stamped(raw)?),
            None => None,
        };
        for w in &m.merged {
            let Some(raw) = existing.get(w) else { continue };
            let (stamp, v) = self.decode_stamped(raw)?;
            value = Some(match value {
                Some((s, acc)) => (s.max(stamp), merge(&acc, &v)),
                None => (stamp, v),
            });
        }
        for w in &m.merged {
            self.delete_window(key, *w, ts)?;
        }
        let existing = existing.contains_key(&m.session);
        self.apply(key, m.session, value, existing, ts, clock, f, at)?;
        Ok(1)
    }

    /// `key`'s value in `window` (the default if it has none).
    pub fn get(&mut self, key: &K, window: Window) -> Result<V> {
        self.encode_key(key)?;
        match self.read_window(window)? {
            Some((_, v)) => Ok(v),
            None => Ok((self.table.table.inner.default)()),
        }
    }

    /// `key`'s value in the latest window holding `ts` (Faust's
    /// `.current()` for an event at `ts`): for sliding windows the one
    /// ending at `ts`, for sessions the session holding `ts`.
    pub fn current(&mut self, ts: i64, key: &K) -> Result<V> {
        let spec = self.spec()?;
        if spec.kind() == WindowKind::Session {
            self.encode_key(key)?;
            let holding = self
                .fetch(i64::MIN, ts.saturating_add(1))?
                .into_iter()
                .rev()
                .find(|(w, _)| w.start <= ts && ts <= w.end);
            return match holding {
                Some((_, raw)) => Ok(self.decode_stamped(&raw)?.1),
                None => Ok((self.table.table.inner.default)()),
            };
        }
        match spec.windows_for(ts).last() {
            Some(w) => self.get(key, w),
            None => Ok((self.table.table.inner.default)()),
        }
    }

    /// `key`'s value in the latest window holding `ts - delta` (Faust's
    /// `.delta(d)`).
    pub fn delta(&mut self, ts: i64, key: &K, delta: std::time::Duration) -> Result<V> {
        let d = i64::try_from(delta.as_millis()).unwrap_or(i64::MAX);
        self.current(ts.saturating_sub(d), key)
    }

    /// `key`'s value in the latest window holding the wall-clock time
    /// (Faust's `.now()`).
    pub fn now(&mut self, key: &K) -> Result<V> {
        let now = self.state()?.wall_ms.unwrap_or(0);
        self.current(now, key)
    }

    /// `key`'s windows starting in `[from, to)`, in start order, with their
    /// values (committed and pending).
    pub fn windows(&mut self, key: &K, from: i64, to: i64) -> Result<Vec<(Window, V)>> {
        self.encode_key(key)?;
        self.fetch(from, to)?
            .into_iter()
            .map(|(w, raw)| Ok((w, self.decode_stamped(&raw)?.1)))
            .collect()
    }

    /// Every window of the partition (committed and pending), by key then
    /// window start.
    pub fn entries(&mut self) -> Result<Vec<(K, Window, V)>> {
        let mut all: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        for entry in self.part.store.range(&[], None)? {
            let (k, v) = entry?;
            all.insert(k, Some(v));
        }
        for (k, v) in self.part.changes() {
            all.insert(k.clone(), v.clone());
        }
        all.into_iter()
            .filter(|(k, _)| parse_store_key(k).is_some())
            .filter_map(|(k, v)| v.map(|v| self.table.decode_entry(&k, &v)))
            .collect()
    }

    /// The partition's stream time: the largest event time seen.
    pub fn stream_time(&mut self) -> Result<Option<i64>> {
        self.load()?;
        Ok(self.state()?.stream_time)
    }

    /// Window updates dropped since the task opened because their windows
    /// were closed.
    pub fn dropped(&self) -> u64 {
        self.part.window.as_ref().map_or(0, |w| w.dropped)
    }

    /// Handles what fell due by the wall clock (the view was made with
    /// it): closes and expiry, without a record.
    pub(crate) fn tick(&mut self) -> Result<()> {
        self.advance(None).map(|_| ())
    }
}

impl<K, V> Drop for WindowedView<'_, K, V> {
    fn drop(&mut self) {
        // The stream time and the close point go to the changelog once per
        // view, with the changes they cover (in their transaction under
        // exactly-once).
        let Some(w) = self.part.window.as_mut() else {
            return;
        };
        let stream_time = std::mem::take(&mut w.dirty)
            .then_some(w.stream_time)
            .flatten();
        let close = if w.exactly_once {
            w.closed_through
        } else {
            w.confirmed_close
        };
        let close = (w.spec.notifies_close() && close.is_some() && close != w.persisted_close)
            .then(|| {
                w.persisted_close = close;
                close
            })
            .flatten();
        if let Some(st) = stream_time {
            self.part
                .put_raw(STREAM_TIME_KEY.to_vec(), Some(st.to_be_bytes().to_vec()));
        }
        if let Some(c) = close {
            self.part
                .put_raw(CLOSED_KEY.to_vec(), Some(c.to_be_bytes().to_vec()));
        }
    }
}

/// Handles what fell due by the wall clock in one windowed table partition
/// (tables that close by it), outside any agent. Type-erased for the
/// runtime: made when the table is declared.
pub(crate) type Tick = std::rc::Rc<dyn Fn(&RefCell<TablePart>, i64) -> Result<()>>;

/// The wall-clock tick of `table`.
pub(crate) fn tick_fn<K: 'static, V: 'static>(table: &Table<K, V>) -> Tick {
    let table = WindowedTable {
        table: table.clone(),
    };
    std::rc::Rc::new(move |cell, now| {
        let part = cell.try_borrow_mut().map_err(|_| Error::Table {
            table: table.name().to_owned(),
            message: "partition busy during the wall-clock tick".into(),
        })?;
        if !part
            .window
            .as_ref()
            .is_some_and(|w| w.due_by_wall_clock(now))
        {
            return Ok(());
        }
        WindowedView::new(part, &table, now).tick()
    })
}

/// What the raw bytes of a windowed entry show, for the `tables` command.
pub(crate) fn show_value(raw: &[u8]) -> &[u8] {
    unstamp(raw).map_or(raw, |(_, v)| v)
}

#[cfg(test)]
mod tests;

//! Tables: typed, dict-like state per partition, backed by a local store and
//! a compacted changelog topic.
//!
//! An agent reaches the partition of a table that matches the partition of
//! the batch it processes ([`Batch::table`](crate::Batch::table)). Each
//! change is kept in an overlay over the store and staged as a changelog
//! record; the engine sends the staged records after the agent returns, and
//! writes the overlay to the store once those records are durable (see
//! `store.rs`).

use std::cell::RefMut;
use std::collections::HashMap;
use std::sync::Arc;

use faustus_wire::producer::ProducerRecord;

use crate::codec::{encode_into, Codec, Codecs, Json};
use crate::error::{Error, Result};
use crate::runtime::task::Delivery;
use crate::store::Store;
use crate::window::{
    parse_store_key, store_key, store_key_from, Window, WindowSpec, STREAM_TIME_KEY,
};

/// How a table is declared: codecs and the value missing keys read as.
pub struct TableSpec<K, V> {
    key: Box<dyn Codec<K>>,
    value: Box<dyn Codec<V>>,
    default: Box<dyn Fn() -> V>,
}

impl<K, V> std::fmt::Debug for TableSpec<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableSpec")
            .field("key", &self.key.name())
            .field("value", &self.value.name())
            .finish()
    }
}

impl<K, V> TableSpec<K, V> {
    /// A table with these codecs and this default value.
    pub fn new(
        key: impl Codec<K> + 'static,
        value: impl Codec<V> + 'static,
        default: impl Fn() -> V + 'static,
    ) -> Self {
        Self {
            key: Box::new(key),
            value: Box::new(value),
            default: Box::new(default),
        }
    }
    /// JSON keys and values.
    pub fn json(default: impl Fn() -> V + 'static) -> Self
    where
        Json: Codec<K> + Codec<V>,
    {
        Self::new(Json, Json, default)
    }
}

pub(crate) struct TableInner<K, V> {
    id: usize,
    name: String,
    changelog: Arc<str>,
    codecs: Codecs<K, V>,
    default: Box<dyn Fn() -> V>,
    /// Set by [`Table::tumbling`], [`Table::hopping`] or [`Table::session`],
    /// read when the app's topology is frozen.
    window: WindowCell,
    /// Session windows: how two sessions' values combine when a record
    /// bridges them.
    merge: std::cell::OnceCell<Merge<V>>,
}

/// Combines the values of two sessions being merged.
type Merge<V> = Box<dyn Fn(&V, &V) -> V>;

/// A table's window spec, shared by its handles and its definition.
pub(crate) type WindowCell = Arc<std::sync::Mutex<Option<WindowSpec>>>;

/// A typed table handle. Cheap to clone.
pub struct Table<K, V> {
    inner: Arc<TableInner<K, V>>,
}

impl<K, V> Clone for Table<K, V> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<K, V> std::fmt::Debug for Table<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Table").field(&self.inner.name).finish()
    }
}

/// A windowed table handle (see [`Table::tumbling`]). Cheap to clone.
pub struct WindowedTable<K, V> {
    table: Table<K, V>,
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
            .field("name", &self.table.inner.name)
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
    /// How late (in stream time) a record may be and still count (default
    /// 0): a window `[start, end)` closes when the stream time reaches
    /// `end + grace`.
    pub fn grace(self, grace: std::time::Duration) -> Self {
        self.set(|w| w.grace(grace))
    }
    /// How long after its start a window is kept (default and least: size +
    /// grace); older windows are deleted, with tombstones in the changelog.
    pub fn expires(self, expires: std::time::Duration) -> Self {
        self.set(|w| w.expires(expires))
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
    pub(crate) fn decode_entry(&self, k: &[u8], v: &[u8]) -> Result<(K, Window, V)> {
        let (key, w) = crate::window::parse_store_key(k).ok_or_else(|| Error::Table {
            table: self.table.inner.name.clone(),
            message: "a stored key is not a windowed key".into(),
        })?;
        let (k, v) = self.table.decode_entry(key, v)?;
        Ok((k, w, v))
    }
}

/// Renders a raw table entry.
pub(crate) type ShowEntry = std::rc::Rc<dyn Fn(&[u8], &[u8]) -> String>;

/// The engine's untyped view of a table.
#[derive(Clone)]
pub(crate) struct TableDef {
    pub(crate) name: String,
    pub(crate) changelog: Arc<str>,
    /// Renders an entry for the `tables` command.
    pub(crate) show: ShowEntry,
    /// The window spec, shared with the table's handles until the topology
    /// freezes it into `frozen_window`.
    pub(crate) window: WindowCell,
    /// The window spec as the topology froze it.
    pub(crate) frozen_window: Option<WindowSpec>,
}

impl TableDef {
    /// The definition as the topology keeps it: the window spec fixed.
    pub(crate) fn frozen(&self) -> Self {
        let mut def = self.clone();
        def.frozen_window = *self.window.lock().unwrap_or_else(|e| e.into_inner());
        def
    }
}

impl<K: std::fmt::Debug + 'static, V: std::fmt::Debug + 'static> Table<K, V> {
    pub(crate) fn declare(
        id: usize,
        app_id: &str,
        name: &str,
        spec: TableSpec<K, V>,
    ) -> (Self, TableDef) {
        let changelog: Arc<str> = Arc::from(format!("{app_id}-{name}-changelog"));
        let window = WindowCell::default();
        let inner = Arc::new(TableInner {
            id,
            name: name.to_owned(),
            changelog: changelog.clone(),
            codecs: Codecs::new(spec.key, spec.value),
            default: spec.default,
            window: window.clone(),
            merge: std::cell::OnceCell::new(),
        });
        let shown = inner.clone();
        let def = TableDef {
            name: name.to_owned(),
            changelog,
            show: std::rc::Rc::new(move |k, v| {
                // A windowed entry: the key, then its window.
                let windowed = shown.window.lock().is_ok_and(|w| w.is_some());
                let (k, window) = match crate::window::parse_store_key(k).filter(|_| windowed) {
                    Some((k, w)) => (k, format!("@{}/{}", w.start, w.end)),
                    None => (k, String::new()),
                };
                let k = shown.codecs.key.decode(Some(k));
                let v = shown.codecs.value.decode(Some(v));
                match (k, v) {
                    (Ok(k), Ok(v)) => format!("{k:?}{window}\t{v:?}"),
                    (k, v) => format!("<undecodable entry: {:?} {:?}>", k.err(), v.err()),
                }
            }),
            window,
            frozen_window: None,
        };
        (Self { inner }, def)
    }
}

impl<K, V> Table<K, V> {
    /// Makes this a table of tumbling windows of `size` (Faust's
    /// `.tumbling(size)`): each key has a value per window, and agents
    /// reach it through [`Batch::windowed`](crate::Batch::windowed).
    pub fn tumbling(self, size: std::time::Duration) -> WindowedTable<K, V> {
        self.windowed(WindowSpec::tumbling(size))
    }

    /// Makes this a table of hopping windows of `size` starting every
    /// `advance` (Faust's `.hopping(size, step)`).
    pub fn hopping(
        self,
        size: std::time::Duration,
        advance: std::time::Duration,
    ) -> WindowedTable<K, V> {
        self.windowed(WindowSpec::hopping(size, advance))
    }

    /// Makes this a table of session windows (Kafka Streams'
    /// `SessionWindows`): a key's records less than `gap` apart form one
    /// session `[first, last]`; a record that bridges two sessions merges
    /// them, their values combined with `merge` (a sum, for counts), and
    /// the merged-away sessions get tombstones.
    pub fn session(
        self,
        gap: std::time::Duration,
        merge: impl Fn(&V, &V) -> V + 'static,
    ) -> WindowedTable<K, V> {
        let _ = self.inner.merge.set(Box::new(merge));
        self.windowed(WindowSpec::session(gap))
    }

    fn windowed(self, spec: WindowSpec) -> WindowedTable<K, V> {
        *self.inner.window.lock().unwrap_or_else(|e| e.into_inner()) = Some(spec);
        WindowedTable { table: self }
    }

    pub(crate) fn id(&self) -> usize {
        self.inner.id
    }
    /// The table's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }
    /// Its changelog topic.
    pub fn changelog_topic(&self) -> &str {
        &self.inner.changelog
    }
    /// Encodes a key as the table stores it.
    pub(crate) fn encode_key(&self, key: &K, buf: &mut Vec<u8>) -> Result<()> {
        let t = &self.inner;
        encode_into(&*t.codecs.key, key, buf, &t.name, "key")
    }

    pub(crate) fn decode_entry(&self, k: &[u8], v: &[u8]) -> Result<(K, V)> {
        let bad = |e: crate::CodecError| Error::Table {
            table: self.inner.name.clone(),
            message: format!("undecodable entry: {e}"),
        };
        Ok((
            self.inner.codecs.key.decode(Some(k)).map_err(bad)?,
            self.inner.codecs.value.decode(Some(v)).map_err(bad)?,
        ))
    }
}

/// One partition of one table, owned by the worker's task for that
/// partition number.
pub(crate) struct TablePart {
    pub(crate) name: String,
    pub(crate) changelog: Arc<str>,
    pub(crate) partition: i32,
    pub(crate) store: Box<dyn Store>,
    /// Changes not yet in the store (newer than its changelog offset).
    pub(crate) overlay: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Changelog records the agent staged; sent after it returns.
    pub(crate) staged: Vec<ProducerRecord>,
    /// The last changelog record sent since the store was written: its
    /// offset is what the store records.
    pub(crate) last_sent: Option<Delivery>,
    /// A windowed table's spec and per-partition window state.
    pub(crate) window: Option<WindowState>,
}

/// A windowed table partition's stream time and expiry index, loaded from
/// the store on first use (after recovery, a rollback or a restart alike).
#[derive(Debug)]
pub(crate) struct WindowState {
    spec: WindowSpec,
    loaded: bool,
    /// The largest timestamp seen (persisted under
    /// [`STREAM_TIME_KEY`](crate::window::STREAM_TIME_KEY)).
    stream_time: Option<i64>,
    /// Stream time moved since it was last staged.
    dirty: bool,
    /// Stored windows by the stream time they expire at.
    index: std::collections::BTreeMap<i64, std::collections::BTreeSet<Vec<u8>>>,
    /// Records dropped for closed windows.
    pub(crate) dropped: u64,
}

impl WindowState {
    fn new(spec: WindowSpec) -> Self {
        Self {
            spec,
            loaded: false,
            stream_time: None,
            dirty: false,
            index: std::collections::BTreeMap::new(),
            dropped: 0,
        }
    }
}

impl std::fmt::Debug for TablePart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TablePart")
            .field("table", &self.name)
            .field("partition", &self.partition)
            .field("overlay", &self.overlay.len())
            .finish()
    }
}

impl TablePart {
    pub(crate) fn new(
        name: String,
        changelog: Arc<str>,
        partition: i32,
        store: Box<dyn Store>,
    ) -> Self {
        Self {
            name,
            changelog,
            partition,
            store,
            overlay: HashMap::new(),
            staged: Vec::new(),
            last_sent: None,
            window: None,
        }
    }

    /// Makes the partition windowed by `spec` (`None`: a plain table).
    pub(crate) fn with_window(mut self, spec: Option<WindowSpec>) -> Self {
        self.window = spec.map(WindowState::new);
        self
    }

    fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.overlay.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.store.get(key),
        }
    }

    fn put_raw(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        let mut rec = ProducerRecord::new(&*self.changelog).partition(self.partition);
        rec.key = Some(bytes::Bytes::copy_from_slice(&key));
        rec.value = value.as_deref().map(bytes::Bytes::copy_from_slice);
        self.staged.push(rec);
        self.overlay.insert(key, value);
    }

    /// Drops changes the store does not have (after an aborted
    /// transaction): the table is back at its last commit.
    pub(crate) fn roll_back(&mut self) {
        self.overlay.clear();
        self.staged.clear();
        self.last_sent = None;
        if let Some(w) = &mut self.window {
            // Reloaded from the store on next use.
            *w = WindowState::new(w.spec);
        }
    }
}

/// An agent's access to the partition of a table matching its batch.
pub struct TableView<'b, K, V> {
    pub(crate) part: RefMut<'b, TablePart>,
    pub(crate) table: &'b Table<K, V>,
    pub(crate) key_buf: Vec<u8>,
}

impl<K, V> std::fmt::Debug for TableView<'_, K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableView")
            .field("table", &self.table.inner.name)
            .field("partition", &self.part.partition)
            .finish()
    }
}

impl<K, V> TableView<'_, K, V> {
    fn encode_key(&mut self, key: &K) -> Result<()> {
        self.key_buf.clear();
        let t = &self.table.inner;
        encode_into(&*t.codecs.key, key, &mut self.key_buf, &t.name, "key")
    }

    fn decode_value(&self, raw: Option<Vec<u8>>) -> Result<V> {
        match raw {
            None => Ok((self.table.inner.default)()),
            Some(b) => self
                .table
                .inner
                .codecs
                .value
                .decode(Some(&b))
                .map_err(|e| Error::Table {
                    table: self.table.inner.name.clone(),
                    message: format!("stored value undecodable: {e}"),
                }),
        }
    }

    /// The partition this view covers.
    pub fn partition(&self) -> i32 {
        self.part.partition
    }

    /// The value of `key`, or the table's default.
    pub fn get(&mut self, key: &K) -> Result<V> {
        self.encode_key(key)?;
        let raw = self.part.get_raw(&self.key_buf)?;
        self.decode_value(raw)
    }

    /// Whether `key` has a value (other than by default).
    pub fn contains(&mut self, key: &K) -> Result<bool> {
        self.encode_key(key)?;
        Ok(self.part.get_raw(&self.key_buf)?.is_some())
    }

    /// Sets `key` to `value` (one changelog record).
    pub fn set(&mut self, key: &K, value: &V) -> Result<()> {
        self.encode_key(key)?;
        let mut v = Vec::new();
        let t = &self.table.inner;
        encode_into(&*t.codecs.value, value, &mut v, &t.name, "value")?;
        let k = self.key_buf.clone();
        self.part.put_raw(k, Some(v));
        Ok(())
    }

    /// Changes `key`'s value (starting from the default) in place, writes
    /// it back, and returns it.
    pub fn update(&mut self, key: &K, f: impl FnOnce(&mut V)) -> Result<V>
    where
        V: Clone,
    {
        let mut v = self.get(key)?;
        f(&mut v);
        self.set(key, &v)?;
        Ok(v)
    }

    /// Deletes `key` (a tombstone in the changelog).
    pub fn delete(&mut self, key: &K) -> Result<()> {
        self.encode_key(key)?;
        let k = self.key_buf.clone();
        self.part.put_raw(k, None);
        Ok(())
    }

    /// The partition's entries (committed and pending), in key order.
    pub fn entries(&self) -> Result<Vec<(K, V)>> {
        let mut all: std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>> = self
            .part
            .store
            .entries()?
            .into_iter()
            .map(|(k, v)| (k, Some(v)))
            .collect();
        for (k, v) in &self.part.overlay {
            all.insert(k.clone(), v.clone());
        }
        all.into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .map(|(k, v)| self.table.decode_entry(&k, &v))
            .collect()
    }
}

/// An agent's access to the partition of a windowed table matching its
/// batch ([`Batch::windowed`](crate::Batch::windowed)). Event time is the
/// record's timestamp (or any timestamp given to the `_at` methods); the
/// partition's stream time is the largest seen. Windows closed in stream
/// time take no more records; windows past their retention are deleted.
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

impl<K, V> WindowedView<'_, K, V> {
    fn inner(&self) -> &TableInner<K, V> {
        &self.table.table.inner
    }

    fn not_windowed(&self) -> Error {
        Error::Table {
            table: self.inner().name.clone(),
            message: "not a windowed table (declared before .tumbling or .hopping?)".into(),
        }
    }

    /// Loads the stream time and the expiry index from the store, once.
    fn load(&mut self) -> Result<()> {
        let name = self.inner().name.clone();
        let TablePart {
            window,
            store,
            overlay,
            ..
        } = &mut *self.part;
        let Some(w) = window.as_mut() else {
            return Err(Error::Table {
                table: name,
                message: "not a windowed table".into(),
            });
        };
        if w.loaded {
            return Ok(());
        }
        let raw = match overlay.get(STREAM_TIME_KEY) {
            Some(v) => v.clone(),
            None => store.get(STREAM_TIME_KEY)?,
        };
        w.stream_time = match raw {
            Some(b) => Some(i64::from_be_bytes(b.as_slice().try_into().map_err(
                |_| Error::Table {
                    table: name.clone(),
                    message: "stored stream time is not 8 bytes".into(),
                },
            )?)),
            None => None,
        };
        w.index.clear();
        let spec = w.spec;
        for entry in store.range(&[], None)? {
            let (k, _) = entry?;
            if let Some((_, win)) = parse_store_key(&k) {
                w.index.entry(spec.expires_at(win)).or_default().insert(k);
            }
        }
        for (k, v) in overlay.iter() {
            if let Some((_, win)) = parse_store_key(k) {
                let at = spec.expires_at(win);
                if v.is_some() {
                    w.index.entry(at).or_default().insert(k.clone());
                } else if let Some(keys) = w.index.get_mut(&at) {
                    keys.remove(k);
                }
            }
        }
        w.loaded = true;
        Ok(())
    }

    /// Moves stream time to `ts` if it is later, deleting the windows that
    /// outlived their retention (a tombstone each).
    fn advance(&mut self, ts: i64) -> Result<i64> {
        self.load()?;
        let part = &mut *self.part;
        let w = part
            .window
            .as_mut()
            .ok_or_else(|| Error::Config("not windowed".into()))?;
        let now = match w.stream_time {
            Some(st) if st >= ts => return Ok(st),
            _ => ts,
        };
        w.stream_time = Some(now);
        w.dirty = true;
        let mut expired = Vec::new();
        while let Some((&at, _)) = w.index.first_key_value() {
            if at > now {
                break;
            }
            if let Some((_, keys)) = w.index.pop_first() {
                expired.extend(keys);
            }
        }
        for k in expired {
            part.put_raw(k, None);
        }
        Ok(now)
    }

    fn encode_key(&mut self, key: &K) -> Result<()> {
        self.key_buf.clear();
        let t = &self.table.table.inner;
        encode_into(&*t.codecs.key, key, &mut self.key_buf, &t.name, "key")
    }

    fn decode_value(&self, raw: Option<Vec<u8>>) -> Result<V> {
        let t = self.inner();
        match raw {
            None => Ok((t.default)()),
            Some(b) => t.codecs.value.decode(Some(&b)).map_err(|e| Error::Table {
                table: t.name.clone(),
                message: format!("stored value undecodable: {e}"),
            }),
        }
    }

    fn spec(&self) -> Result<WindowSpec> {
        self.part
            .window
            .as_ref()
            .map(|w| w.spec)
            .ok_or_else(|| self.not_windowed())
    }

    /// Applies `f` to `key`'s value in every window that holds the event's
    /// timestamp (hopping: all of them) and is still open; returns how many
    /// windows it changed. A record for closed windows only is dropped: it
    /// is counted, logged at debug with its topic, partition and offset, and
    /// is not an error.
    pub fn update<EK, EV>(
        &mut self,
        event: &crate::Event<'_, EK, EV>,
        key: &K,
        f: impl FnMut(&mut V),
    ) -> Result<usize> {
        self.update_inner(event.timestamp(), key, f, Some(event.location()))
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
        at: Option<crate::Location>,
    ) -> Result<usize> {
        let spec = self.spec()?;
        let stream_time = self.advance(ts)?;
        self.encode_key(key)?;
        if let Some(gap) = spec.gap() {
            return self.update_session(spec, gap, ts, stream_time, f, at);
        }
        let mut changed = 0;
        for win in spec.windows_for(ts) {
            if spec.is_closed(win, stream_time) {
                if let Some(w) = self.part.window.as_mut() {
                    w.dropped += 1;
                }
                tracing::debug!(table = %self.inner().name, window = ?win, stream_time, at = ?at, "record for a closed window dropped");
                continue;
            }
            let k = store_key(&self.key_buf, win);
            let raw = self.part.get_raw(&k)?;
            let mut v = self.decode_value(raw)?;
            f(&mut v);
            let mut out = Vec::new();
            let t = self.inner();
            encode_into(&*t.codecs.value, &v, &mut out, &t.name, "value")?;
            if let Some(w) = self.part.window.as_mut() {
                // Most updates hit a window already indexed: no copy then.
                let keys = w.index.entry(spec.expires_at(win)).or_default();
                if !keys.contains(&k) {
                    keys.insert(k.clone());
                }
            }
            self.part.put_raw(k, Some(out));
            changed += 1;
        }
        Ok(changed)
    }

    /// A record at `ts` for the key in `key_buf`: merges it into the key's
    /// sessions within `gap`, combining merged sessions' values, and applies
    /// `f` to the result (see [`Table::session`]).
    fn update_session(
        &mut self,
        spec: WindowSpec,
        gap: i64,
        ts: i64,
        stream_time: i64,
        mut f: impl FnMut(&mut V),
        at: Option<crate::Location>,
    ) -> Result<usize> {
        // The key's sessions that may touch [ts - gap, ts + gap]: every one
        // starting by ts + gap (a session can be long).
        let (lo, hi) = (
            crate::window::key_prefix(&self.key_buf),
            store_key_from(&self.key_buf, ts.saturating_add(gap).saturating_add(1)),
        );
        let mut existing: std::collections::BTreeMap<Window, Vec<u8>> =
            std::collections::BTreeMap::new();
        for entry in self.part.store.range(&lo, Some(&hi))? {
            let (k, v) = entry?;
            if let Some((_, w)) = parse_store_key(&k) {
                existing.insert(w, v);
            }
        }
        for (k, v) in &self.part.overlay {
            if *k >= lo && *k < hi {
                if let Some((_, w)) = parse_store_key(k) {
                    match v {
                        Some(v) => existing.insert(w, v.clone()),
                        None => existing.remove(&w),
                    };
                }
            }
        }
        let windows: Vec<Window> = existing.keys().copied().collect();
        let m = crate::window::merge_session(ts, gap, &windows);
        if spec.is_closed(m.session, stream_time) {
            if let Some(w) = self.part.window.as_mut() {
                w.dropped += 1;
            }
            tracing::debug!(table = %self.inner().name, session = ?m.session, stream_time, at = ?at, "record for a closed session dropped");
            return Ok(0);
        }
        let t = &self.table.table.inner;
        let merge = t.merge.get().ok_or_else(|| Error::Table {
            table: t.name.clone(),
            message: "a session table without a merge function".into(),
        })?;
        // The session's value: its own, combined with each it absorbs.
        let mut value: Option<V> = match existing.get(&m.session) {
            Some(raw) => Some(self.decode_value(Some(raw.clone()))?),
            None => None,
        };
        for w in &m.merged {
            let v = self.decode_value(existing.get(w).cloned())?;
            value = Some(match value {
                Some(acc) => merge(&acc, &v),
                None => v,
            });
        }
        let mut value = value.unwrap_or_else(|| (t.default)());
        f(&mut value);
        let mut out = Vec::new();
        encode_into(&*t.codecs.value, &value, &mut out, &t.name, "value")?;
        for w in &m.merged {
            let k = store_key(&self.key_buf, *w);
            if let Some(state) = self.part.window.as_mut() {
                if let Some(keys) = state.index.get_mut(&spec.expires_at(*w)) {
                    keys.remove(&k);
                }
            }
            self.part.put_raw(k, None);
        }
        let k = store_key(&self.key_buf, m.session);
        if let Some(state) = self.part.window.as_mut() {
            state
                .index
                .entry(spec.expires_at(m.session))
                .or_default()
                .insert(k.clone());
        }
        self.part.put_raw(k, Some(out));
        Ok(1)
    }

    /// `key`'s value in `window` (the default if it has none).
    pub fn get(&mut self, key: &K, window: Window) -> Result<V> {
        self.encode_key(key)?;
        let raw = self.part.get_raw(&store_key(&self.key_buf, window))?;
        self.decode_value(raw)
    }

    /// `key`'s value in the latest window holding `ts` (Faust's
    /// `.current()` for an event at `ts`).
    pub fn current(&mut self, ts: i64, key: &K) -> Result<V> {
        match self.spec()?.windows_for(ts).last() {
            Some(w) => self.get(key, w),
            None => Ok((self.inner().default)()),
        }
    }

    /// `key`'s value in the latest window holding `ts - delta` (Faust's
    /// `.delta(d)`).
    pub fn delta(&mut self, ts: i64, key: &K, delta: std::time::Duration) -> Result<V> {
        let d = i64::try_from(delta.as_millis()).unwrap_or(i64::MAX);
        self.current(ts.saturating_sub(d), key)
    }

    /// `key`'s windows starting in `[from, to)`, in start order, with their
    /// values (committed and pending).
    pub fn windows(&mut self, key: &K, from: i64, to: i64) -> Result<Vec<(Window, V)>> {
        self.encode_key(key)?;
        let (lo, hi) = (
            store_key_from(&self.key_buf, from),
            store_key_from(&self.key_buf, to),
        );
        let mut all: std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>> =
            std::collections::BTreeMap::new();
        for entry in self.part.store.range(&lo, Some(&hi))? {
            let (k, v) = entry?;
            all.insert(k, Some(v));
        }
        for (k, v) in &self.part.overlay {
            if *k >= lo && *k < hi {
                all.insert(k.clone(), v.clone());
            }
        }
        let mut out = Vec::new();
        for (k, v) in all {
            if let (Some((_, w)), Some(v)) = (parse_store_key(&k), v) {
                out.push((w, self.decode_value(Some(v))?));
            }
        }
        Ok(out)
    }

    /// The partition's stream time: the largest event time seen.
    pub fn stream_time(&mut self) -> Result<Option<i64>> {
        self.load()?;
        Ok(self.part.window.as_ref().and_then(|w| w.stream_time))
    }

    /// Records dropped since the task opened because their windows were
    /// closed.
    pub fn dropped(&self) -> u64 {
        self.part.window.as_ref().map_or(0, |w| w.dropped)
    }
}

impl<K, V> Drop for WindowedView<'_, K, V> {
    fn drop(&mut self) {
        // The stream time goes to the changelog once per view, with the
        // changes it covers (in their transaction under exactly-once).
        let staged = match self.part.window.as_mut() {
            Some(w) if w.dirty => {
                w.dirty = false;
                w.stream_time
            }
            _ => None,
        };
        if let Some(st) = staged {
            self.part
                .put_raw(STREAM_TIME_KEY.to_vec(), Some(st.to_be_bytes().to_vec()));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::codec::Utf8;
    use crate::store::MemoryStore;

    fn setup() -> (Table<String, u64>, RefCell<TablePart>) {
        let (table, def) = Table::declare(0, "app", "counts", TableSpec::new(Utf8, Json, || 0u64));
        assert_eq!(&*def.changelog, "app-counts-changelog");
        let part = TablePart::new(
            "counts".into(),
            def.changelog.clone(),
            3,
            Box::new(MemoryStore::default()),
        );
        (table, RefCell::new(part))
    }

    fn view<'b>(
        table: &'b Table<String, u64>,
        part: &'b RefCell<TablePart>,
    ) -> TableView<'b, String, u64> {
        TableView {
            part: part.borrow_mut(),
            table,
            key_buf: Vec::new(),
        }
    }

    #[test]
    fn missing_keys_read_as_the_default_and_each_change_stages_one_changelog_record() {
        let (table, part) = setup();
        {
            let mut v = view(&table, &part);
            assert_eq!(v.get(&"/a".to_string()).expect("get"), 0);
            assert!(!v.contains(&"/a".to_string()).expect("contains"));
            v.update(&"/a".to_string(), |n| *n += 2).expect("update");
            v.update(&"/a".to_string(), |n| *n += 3).expect("update");
            v.delete(&"/b".to_string()).expect("delete");
            assert_eq!(v.get(&"/a".to_string()).expect("get"), 5);
            assert_eq!(v.entries().expect("entries"), vec![("/a".to_string(), 5)]);
        }
        let p = part.borrow();
        type Staged<'a> = (Option<&'a [u8]>, Option<&'a [u8]>, Option<i32>);
        let staged: Vec<Staged<'_>> = p
            .staged
            .iter()
            .map(|r| (r.key.as_deref(), r.value.as_deref(), r.partition))
            .collect();
        assert_eq!(
            staged,
            vec![
                (Some(&b"/a"[..]), Some(&b"2"[..]), Some(3)),
                (Some(&b"/a"[..]), Some(&b"5"[..]), Some(3)),
                (Some(&b"/b"[..]), None, Some(3)),
            ]
        );
        assert!(p.staged.iter().all(|r| r.topic == "app-counts-changelog"));
    }

    #[test]
    fn roll_back_returns_to_the_store() {
        let (table, part) = setup();
        part.borrow_mut()
            .store
            .apply(
                &mut vec![(b"/a".to_vec(), Some(b"7".to_vec()))].into_iter(),
                10,
            )
            .expect("apply");
        view(&table, &part).set(&"/a".to_string(), &9).expect("set");
        assert_eq!(view(&table, &part).get(&"/a".to_string()).expect("get"), 9);
        part.borrow_mut().roll_back();
        assert!(part.borrow().staged.is_empty());
        assert_eq!(view(&table, &part).get(&"/a".to_string()).expect("get"), 7);
    }

    #[test]
    fn an_undecodable_stored_value_is_a_table_error() {
        let (table, part) = setup();
        part.borrow_mut()
            .store
            .apply(
                &mut vec![(b"/a".to_vec(), Some(b"not json".to_vec()))].into_iter(),
                1,
            )
            .expect("apply");
        let e = view(&table, &part)
            .get(&"/a".to_string())
            .expect_err("undecodable");
        assert!(matches!(e, Error::Table { .. }), "{e}");
    }
}

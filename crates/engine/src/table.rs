//! Tables: typed, dict-like state per partition, backed by a local store and
//! a compacted changelog topic.
//!
//! An agent reaches the partition of a table that matches the partition of
//! the batch it processes ([`Batch::table`](crate::Batch::table)). Changes
//! go through three layers over the store:
//!
//! - the **cache** (`cache.max.bytes`, Kafka Streams' record cache): a
//!   key's changes between commits are coalesced there, and its changelog
//!   gets only the latest value, when the worker commits, when the cache
//!   is full, or before partitions are revoked. Reads see it. Windowed
//!   tables and the engine's ordered buffers coalesce per agent call
//!   instead. With `cache.max.bytes=0` every change is a changelog record;
//! - the **staged** changelog records, sent after the agent returns;
//! - the **overlay**: changes whose changelog records are sent, written to
//!   the store once those records are durable (see `store.rs`).

use rustc_hash::FxHashMap;
use std::cell::{RefCell, RefMut};
use std::rc::Rc;
use std::sync::Arc;

use faustus_wire::producer::ProducerRecord;

use crate::codec::{encode_into, Codec, Codecs, Json};
use crate::error::{Error, Result};
use crate::runtime::task::Delivery;
use crate::store::Store;
use crate::window::WindowSpec;
use crate::windowed::{Emission, WindowState, WindowedTable};

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
    pub(crate) name: String,
    changelog: Arc<str>,
    pub(crate) codecs: Codecs<K, V>,
    pub(crate) default: Box<dyn Fn() -> V>,
    /// Set by [`Table::tumbling`], [`Table::hopping`],
    /// [`Table::sliding`] or [`Table::session`], read when the app's
    /// topology is frozen.
    pub(crate) window: WindowCell,
    /// Session windows: how two sessions' values combine when a record
    /// bridges them.
    pub(crate) merge: std::cell::OnceCell<Merge<V>>,
    /// Windowed tables: where results go.
    pub(crate) emission: RefCell<Emission<K, V>>,
}

/// Combines the values of two sessions being merged.
type Merge<V> = Box<dyn Fn(&V, &V) -> V>;

/// A table's window spec, shared by its handles and its definition.
pub(crate) type WindowCell = Arc<std::sync::Mutex<Option<WindowSpec>>>;

/// A typed table handle. Cheap to clone.
pub struct Table<K, V> {
    pub(crate) inner: Arc<TableInner<K, V>>,
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
    /// Windowed tables: handles what falls due by the wall clock.
    pub(crate) tick: crate::windowed::Tick,
    /// Whether its partitions keep their pending changes in key order
    /// (range scans of a stream–stream join's buffers).
    pub(crate) ordered: bool,
    /// How the web server reads it; `None` for the engine's own stores
    /// (join buffers, subscriptions), which it does not serve.
    pub(crate) web: Option<WebView>,
}

/// Encodes a key given as text.
pub(crate) type KeyFromText = dyn Fn(&str) -> std::result::Result<Vec<u8>, String>;
/// Renders stored bytes as JSON.
pub(crate) type ToJson = dyn Fn(&[u8]) -> serde_json::Value;

/// How the web server (`GET /tables/...`) reads a table: keys from URL
/// text, stored keys and values as JSON, through the table's codecs.
#[derive(Clone)]
pub(crate) struct WebView {
    /// A key as a URL gives it, in the table's key encoding.
    pub(crate) key: Rc<KeyFromText>,
    /// A stored key as JSON (listings).
    pub(crate) key_json: Rc<ToJson>,
    /// A stored value as JSON (the bytes the table keeps for one key, or
    /// for one window of a windowed table).
    pub(crate) value_json: Rc<ToJson>,
}

impl WebView {
    /// The view of a table whose codecs `codecs` finds in `owner`, and
    /// whose stored values `unstore` takes the engine's own bytes off (a
    /// timestamp).
    pub(crate) fn of<T: 'static, K: std::fmt::Debug + 'static, V: std::fmt::Debug + 'static>(
        owner: Arc<T>,
        codecs: fn(&T) -> &Codecs<K, V>,
        unstore: fn(&[u8]) -> &[u8],
    ) -> Self {
        let (a, b, c) = (owner.clone(), owner.clone(), owner);
        Self {
            key: Rc::new(move |text| key_from_text(&*codecs(&a).key, text)),
            key_json: Rc::new(move |k| bytes_to_json(&*codecs(&b).key, k)),
            value_json: Rc::new(move |v| bytes_to_json(&*codecs(&c).value, unstore(v))),
        }
    }
}

/// A key from URL text in a codec's encoding: the text's bytes if the
/// codec reads them (UTF-8 keys, raw keys, a JSON key written as JSON),
/// else the text as a JSON string (a JSON codec of string keys).
pub(crate) fn key_from_text<K>(
    codec: &dyn Codec<K>,
    text: &str,
) -> std::result::Result<Vec<u8>, String> {
    if codec.decode(Some(text.as_bytes())).is_ok() {
        return Ok(text.as_bytes().to_vec());
    }
    let quoted = serde_json::Value::String(text.to_owned()).to_string();
    match codec.decode(Some(quoted.as_bytes())) {
        Ok(_) => Ok(quoted.into_bytes()),
        Err(e) => Err(format!(
            "key `{text}` does not decode with the {} codec: {e}",
            codec.name()
        )),
    }
}

/// Stored bytes as JSON through a codec: JSON as it is, UTF-8 as a
/// string, anything else as its `Debug` text (or an error object).
pub(crate) fn bytes_to_json<T: std::fmt::Debug>(
    codec: &dyn Codec<T>,
    bytes: &[u8],
) -> serde_json::Value {
    match codec.name() {
        "json" => {
            if let Ok(v) = serde_json::from_slice(bytes) {
                return v;
            }
        }
        "utf8" => {
            if let Ok(s) = std::str::from_utf8(bytes) {
                return serde_json::Value::String(s.to_owned());
            }
        }
        _ => {}
    }
    match codec.decode(Some(bytes)) {
        Ok(v) => serde_json::Value::String(format!("{v:?}")),
        Err(e) => serde_json::json!({ "undecodable": e.to_string() }),
    }
}

impl TableDef {
    /// A table that is not windowed, its entries shown by `show`.
    pub(crate) fn plain(name: &str, changelog: Arc<str>, show: ShowEntry) -> Self {
        Self {
            name: name.to_owned(),
            changelog,
            show,
            window: WindowCell::default(),
            frozen_window: None,
            tick: std::rc::Rc::new(|_, _| Ok(())),
            ordered: false,
            web: None,
        }
    }

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
            emission: RefCell::new(Emission::default()),
        });
        let shown = inner.clone();
        let web = WebView::of(inner.clone(), |t: &TableInner<K, V>| &t.codecs, |v| v);
        let table_handle = Self { inner };
        let def = TableDef {
            name: name.to_owned(),
            changelog,
            show: std::rc::Rc::new(move |k, v| {
                // A windowed entry: the key, then its window.
                let windowed = shown.window.lock().is_ok_and(|w| w.is_some());
                let (k, window, v) = match crate::window::parse_store_key(k).filter(|_| windowed) {
                    Some((k, w)) => (
                        k,
                        format!("@{}/{}", w.start, w.end),
                        crate::windowed::show_value(v),
                    ),
                    None => (k, String::new(), v),
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
            tick: crate::windowed::tick_fn(&table_handle),
            ordered: false,
            web: Some(web),
        };
        (table_handle, def)
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

    /// Makes this a table of sliding windows (Kafka Streams'
    /// `SlidingWindows`, KIP-450): windows `[t - diff, t]`, one ending at
    /// each record and one starting just after each record another follows
    /// within `diff`, so every set of records at most `diff` apart has its
    /// window. `f` in [`WindowedView::update`](crate::WindowedView::update)
    /// runs once per window a record falls in.
    pub fn sliding(self, diff: std::time::Duration) -> WindowedTable<K, V> {
        self.windowed(WindowSpec::sliding(diff))
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
    pub(crate) overlay: FxHashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Changelog records the agent staged; sent after it returns.
    pub(crate) staged: Vec<ProducerRecord>,
    /// The last changelog record sent since the store was written: its
    /// offset is what the store records.
    pub(crate) last_sent: Option<Delivery>,
    /// A windowed table's spec and per-partition window state.
    pub(crate) window: Option<WindowState>,
    /// Results a windowed table emitted; sent before the changelog records.
    pub(crate) outputs: Vec<ProducerRecord>,
    /// Changes since changelog records were last staged, over `overlay`:
    /// the cache of a cached table (flushed by [`flush_cache`]), or a
    /// windowed table's changes in one agent call (a window changes many
    /// times within one batch; its changelog gets its latest value once
    /// per batch).
    ///
    /// [`flush_cache`]: Self::flush_cache
    pub(crate) batch: FxHashMap<Vec<u8>, Option<Vec<u8>>>,
    /// The worker's cache budget, and this partition's share of it, when
    /// `batch` is a cache.
    cache: Option<CacheShare>,
    /// Sliding and session windows (whose updates scan a key's windows),
    /// and stream–stream join buffers: the keys of `overlay` and `batch`,
    /// in order, so that a range of changes is found without visiting
    /// every change since the commit.
    ordered: Option<std::collections::BTreeSet<Vec<u8>>>,
    /// A stream–stream join's buffers: what is kept in memory beside the
    /// store (loaded on first use, dropped on roll-back).
    pub(crate) join: Option<crate::join::BufferState>,
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
            overlay: FxHashMap::default(),
            staged: Vec::new(),
            last_sent: None,
            window: None,
            outputs: Vec::new(),
            batch: FxHashMap::default(),
            cache: None,
            ordered: None,
            join: None,
        }
    }

    /// Coalesces changes in the worker's cache (`Some`) until it is
    /// flushed. Windowed tables and ordered buffers keep coalescing per
    /// agent call: a cache is not given to them.
    pub(crate) fn with_cache(mut self, budget: Option<Rc<CacheBudget>>) -> Self {
        self.cache = budget
            .filter(|_| self.window.is_none() && self.ordered.is_none())
            .map(|budget| CacheShare { budget, bytes: 0 });
        self
    }

    /// Keeps pending changes in key order too, for range scans (`ordered`
    /// true).
    pub(crate) fn with_ordered(mut self, ordered: bool) -> Self {
        if ordered && self.ordered.is_none() {
            self.ordered = Some(std::collections::BTreeSet::new());
        }
        self
    }

    /// Makes the partition windowed by `spec` (`None`: a plain table);
    /// `exactly_once` says when window closes may be persisted.
    pub(crate) fn with_window(mut self, spec: Option<WindowSpec>, exactly_once: bool) -> Self {
        self.window = spec.map(|s| WindowState::new(s, exactly_once));
        self.ordered = spec
            .filter(|s| s.gap().is_some() || s.diff().is_some())
            .map(|_| std::collections::BTreeSet::new());
        self
    }

    pub(crate) fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.batch.get(key).or_else(|| self.overlay.get(key)) {
            Some(v) => Ok(v.clone()),
            // The store's value is ours already: no second copy.
            None => self.store.get(key),
        }
    }

    /// Reads `key`'s latest value (the batch's, the overlay's, or the
    /// store's) without copying it out of the overlays.
    pub(crate) fn read_raw<R>(
        &self,
        key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> Result<R>,
    ) -> Result<R> {
        if let Some(v) = self.batch.get(key).or_else(|| self.overlay.get(key)) {
            return f(v.as_deref());
        }
        f(self.store.get(key)?.as_deref())
    }

    /// The changes over the store, oldest first: applied in order, a later
    /// one replaces an earlier one for the same key.
    pub(crate) fn changes(&self) -> impl Iterator<Item = (&Vec<u8>, &Option<Vec<u8>>)> {
        self.overlay.iter().chain(self.batch.iter())
    }

    /// The latest change of each key in `[lo, hi)`, in key order.
    pub(crate) fn changes_in(&self, lo: &[u8], hi: &[u8]) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let latest = |k: &Vec<u8>| self.batch.get(k).or_else(|| self.overlay.get(k)).cloned();
        match &self.ordered {
            Some(keys) => keys
                .range::<[u8], _>((std::ops::Bound::Included(lo), std::ops::Bound::Excluded(hi)))
                .filter_map(|k| latest(k).map(|v| (k.clone(), v)))
                .collect(),
            None => {
                let mut out: Vec<(Vec<u8>, Option<Vec<u8>>)> = self
                    .overlay
                    .keys()
                    .chain(self.batch.keys())
                    .filter(|k| k.as_slice() >= lo && k.as_slice() < hi)
                    .filter_map(|k| latest(k).map(|v| (k.clone(), v)))
                    .collect();
                out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                out.dedup_by(|a, b| a.0 == b.0);
                out
            }
        }
    }

    /// The overlay, taken to be written to the store (its changelog
    /// records are durable); changes not staged yet stay.
    pub(crate) fn take_overlay(&mut self) -> FxHashMap<Vec<u8>, Option<Vec<u8>>> {
        if let Some(keys) = &mut self.ordered {
            keys.clear();
            keys.extend(self.batch.keys().cloned());
        }
        std::mem::take(&mut self.overlay)
    }

    pub(crate) fn put_raw(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        if let Some(keys) = &mut self.ordered {
            if !keys.contains(&key) {
                keys.insert(key.clone());
            }
        }
        if let Some(share) = &mut self.cache {
            // A new key costs its entry; a replaced value only the
            // difference.
            let entry = ENTRY_OVERHEAD + key.len();
            let len = value.as_ref().map_or(0, Vec::len);
            match self.batch.insert(key, value) {
                Some(old) => share.charge(len, old.map_or(0, |v| v.len())),
                None => share.charge(entry + len, 0),
            }
            return;
        }
        if self.window.is_some() {
            self.batch.insert(key, value);
            return;
        }
        let mut rec = ProducerRecord::new(&*self.changelog).partition(self.partition);
        rec.key = Some(bytes::Bytes::copy_from_slice(&key));
        rec.value = value.as_deref().map(bytes::Bytes::copy_from_slice);
        self.staged.push(rec);
        self.overlay.insert(key, value);
    }

    /// The changelog records to send: those staged, and for a windowed
    /// table the latest value of each key changed since the last call. A
    /// cache's changes stay until [`flush_cache`](Self::flush_cache).
    pub(crate) fn take_staged(&mut self) -> Vec<ProducerRecord> {
        if self.cache.is_none() {
            self.stage_batch();
        }
        std::mem::take(&mut self.staged)
    }

    /// Stages the cache's changes, each key's latest value once, to be
    /// sent by the next [`take_staged`](Self::take_staged).
    pub(crate) fn flush_cache(&mut self) {
        if self.cache.is_some() {
            self.stage_batch();
        }
        if let Some(share) = &mut self.cache {
            share.release();
        }
    }

    /// Moves `batch` to the staged records and the overlay, in key order:
    /// the same input makes the same changelog.
    fn stage_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let mut changed: Vec<(Vec<u8>, Option<Vec<u8>>)> = self.batch.drain().collect();
        changed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.staged.reserve(changed.len());
        for (key, value) in changed {
            let mut rec = ProducerRecord::new(&*self.changelog).partition(self.partition);
            rec.key = Some(bytes::Bytes::copy_from_slice(&key));
            rec.value = value.as_deref().map(bytes::Bytes::copy_from_slice);
            self.staged.push(rec);
            self.overlay.insert(key, value);
        }
    }

    /// Drops changes the store does not have (after an aborted
    /// transaction): the table is back at its last commit.
    pub(crate) fn roll_back(&mut self) {
        self.overlay.clear();
        self.staged.clear();
        self.outputs.clear();
        self.batch.clear();
        if let Some(share) = &mut self.cache {
            share.release();
        }
        if let Some(keys) = &mut self.ordered {
            keys.clear();
        }
        self.last_sent = None;
        self.join = None;
        if let Some(w) = &mut self.window {
            // Reloaded from the store on next use.
            w.reset();
        }
    }
}

/// Bytes an entry costs in the cache beside its key and value (the map's
/// slot, two vectors), as Kafka Streams counts a fixed overhead per entry.
const ENTRY_OVERHEAD: usize = 64;

/// The worker's table cache budget (`cache.max.bytes`), shared by every
/// cached table partition of its tasks: when the entries they hold pass
/// it, the worker flushes every cache.
#[derive(Debug)]
pub(crate) struct CacheBudget {
    max: usize,
    used: std::cell::Cell<usize>,
}

impl CacheBudget {
    /// A budget of `max` bytes; `None` for 0 (no cache).
    pub(crate) fn new(max: usize) -> Option<Rc<Self>> {
        (max > 0).then(|| {
            Rc::new(Self {
                max,
                used: std::cell::Cell::new(0),
            })
        })
    }
    /// Bytes the caches hold.
    pub(crate) fn used(&self) -> usize {
        self.used.get()
    }
    /// Whether the caches hold more than the budget.
    pub(crate) fn full(&self) -> bool {
        self.used.get() > self.max
    }
}

/// One table partition's share of the cache budget: released when the
/// cache is flushed, rolled back or dropped with its task.
#[derive(Debug)]
struct CacheShare {
    budget: Rc<CacheBudget>,
    bytes: usize,
}

impl CacheShare {
    fn charge(&mut self, added: usize, removed: usize) {
        let removed = removed.min(self.bytes + added);
        self.bytes = self.bytes + added - removed;
        let used = &self.budget.used;
        used.set((used.get() + added).saturating_sub(removed));
    }
    fn release(&mut self) {
        let used = &self.budget.used;
        used.set(used.get().saturating_sub(self.bytes));
        self.bytes = 0;
    }
}

impl Drop for CacheShare {
    fn drop(&mut self) {
        self.release();
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

    /// The value under the encoded key, decoded where it lies (no copy
    /// out of the pending changes), or the table's default.
    fn read_value(&self) -> Result<V> {
        let inner = &self.table.inner;
        self.part.read_raw(&self.key_buf, |raw| match raw {
            None => Ok((inner.default)()),
            Some(b) => inner
                .codecs
                .value
                .decode(Some(b))
                .map_err(|e| Error::Table {
                    table: inner.name.clone(),
                    message: format!("stored value undecodable: {e}"),
                }),
        })
    }

    /// Stages `value` under the encoded key.
    fn write_value(&mut self, value: &V) -> Result<()> {
        let mut v = Vec::new();
        let t = &self.table.inner;
        encode_into(&*t.codecs.value, value, &mut v, &t.name, "value")?;
        let k = self.key_buf.clone();
        self.part.put_raw(k, Some(v));
        Ok(())
    }

    /// The partition this view covers.
    pub fn partition(&self) -> i32 {
        self.part.partition
    }

    /// The value of `key`, or the table's default.
    pub fn get(&mut self, key: &K) -> Result<V> {
        self.encode_key(key)?;
        self.read_value()
    }

    /// Whether `key` has a value (other than by default).
    pub fn contains(&mut self, key: &K) -> Result<bool> {
        self.encode_key(key)?;
        self.part.read_raw(&self.key_buf, |raw| Ok(raw.is_some()))
    }

    /// Sets `key` to `value` (one changelog record).
    pub fn set(&mut self, key: &K, value: &V) -> Result<()> {
        self.encode_key(key)?;
        self.write_value(value)
    }

    /// Changes `key`'s value (starting from the default) in place, writes
    /// it back, and returns it.
    pub fn update(&mut self, key: &K, f: impl FnOnce(&mut V)) -> Result<V>
    where
        V: Clone,
    {
        // The key encoded once for the read and the write.
        self.encode_key(key)?;
        let mut v = self.read_value()?;
        f(&mut v);
        self.write_value(&v)?;
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
        // The cache's changes are newer than the overlay's.
        for (k, v) in self.part.changes() {
            all.insert(k.clone(), v.clone());
        }
        all.into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .map(|(k, v)| self.table.decode_entry(&k, &v))
            .collect()
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

    fn cached(budget: &Rc<CacheBudget>) -> (Table<String, u64>, RefCell<TablePart>) {
        let (table, part) = setup();
        let part = RefCell::new(part.into_inner().with_cache(Some(budget.clone())));
        (table, part)
    }

    fn staged(p: &mut TablePart) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        p.take_staged()
            .into_iter()
            .map(|r| (r.key.expect("key").to_vec(), r.value.map(|v| v.to_vec())))
            .collect()
    }

    #[test]
    fn a_cache_coalesces_updates_until_flushed_and_reads_see_it() {
        let budget = CacheBudget::new(1 << 20).expect("a budget");
        let (table, part) = cached(&budget);
        {
            let mut v = view(&table, &part);
            for _ in 0..5 {
                v.update(&"/b".to_string(), |n| *n += 1).expect("update");
                v.update(&"/a".to_string(), |n| *n += 10).expect("update");
            }
            v.delete(&"/c".to_string()).expect("delete");
            assert_eq!(v.get(&"/a".to_string()).expect("get"), 50);
            assert_eq!(
                v.entries().expect("entries"),
                vec![("/a".to_string(), 50), ("/b".to_string(), 5)]
            );
        }
        // Nothing goes to the changelog before a flush.
        assert!(staged(&mut part.borrow_mut()).is_empty());
        assert!(budget.used() > 0);
        part.borrow_mut().flush_cache();
        assert_eq!(budget.used(), 0);
        // Each key's latest value once, in key order.
        assert_eq!(
            staged(&mut part.borrow_mut()),
            vec![
                (b"/a".to_vec(), Some(b"50".to_vec())),
                (b"/b".to_vec(), Some(b"5".to_vec())),
                (b"/c".to_vec(), None),
            ]
        );
        // Flushed values are read from the overlay until the store has them.
        assert_eq!(view(&table, &part).get(&"/b".to_string()).expect("get"), 5);
    }

    #[test]
    fn the_budget_counts_what_the_caches_hold_and_gets_it_back() {
        let budget = CacheBudget::new(200).expect("a budget");
        let (table, one) = cached(&budget);
        let (_, two) = cached(&budget);
        view(&table, &one).set(&"/a".to_string(), &1).expect("set");
        let after_one = budget.used();
        assert_eq!(after_one, ENTRY_OVERHEAD + 2 + 1);
        // A replaced value costs the difference only.
        view(&table, &one)
            .set(&"/a".to_string(), &100)
            .expect("set");
        assert_eq!(budget.used(), after_one + 2);
        assert!(!budget.full());
        view(&table, &two).set(&"/b".to_string(), &1).expect("set");
        view(&table, &two).set(&"/c".to_string(), &1).expect("set");
        assert!(budget.full(), "{} of 200", budget.used());
        one.borrow_mut().roll_back();
        assert_eq!(budget.used(), 2 * after_one);
        drop(two);
        assert_eq!(budget.used(), 0);
        assert!(CacheBudget::new(0).is_none());
    }

    #[test]
    fn windowed_and_ordered_partitions_take_no_cache() {
        let budget = CacheBudget::new(1 << 20).expect("a budget");
        let (_, part) = setup();
        let part = part
            .into_inner()
            .with_ordered(true)
            .with_cache(Some(budget));
        assert!(part.cache.is_none());
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

//! Local stores of table partitions: RocksDB (the default) and memory.
//!
//! A store holds a table partition's committed state and the changelog
//! offset that state includes, written in one atomic batch, so that recovery
//! after a restart replays the changelog from the next offset on. The engine
//! writes a store only after the changelog records are durable (flushed
//! under at-least-once, committed under exactly-once): an aborted
//! transaction never reaches it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::error::{Error, Result};

/// One change: a key and its new value, or `None` for a deletion.
pub(crate) type Change = (Vec<u8>, Option<Vec<u8>>);

/// A table partition's local state.
pub(crate) trait Store: Send {
    /// The value of `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// The changelog offset the state includes (the last applied record).
    fn offset(&self) -> Option<i64>;
    /// Applies changes and records `offset`, atomically.
    fn apply(&mut self, changes: &mut dyn Iterator<Item = Change>, offset: i64) -> Result<()>;
    /// The entries with `from <= key < to` (`to` `None`: to the end), in
    /// key order. Windowed tables scan a key's windows this way.
    fn range<'a>(&'a self, from: &[u8], to: Option<&[u8]>) -> Result<Entries<'a>>;
    /// Deletes every key with `from <= key < to` and records `offset`,
    /// atomically (windowed tables drop expired windows this way).
    #[allow(dead_code, reason = "the windowed tables' expiry is its first caller")]
    fn delete_range(&mut self, from: &[u8], to: &[u8], offset: i64) -> Result<()>;
    /// Every entry, in key order.
    fn entries(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.range(&[], None)?.collect()
    }
    /// [`apply`](Self::apply) for a changelog replay (restoration, standby
    /// replicas): may skip the write-ahead log. A crash may then lose the
    /// latest replayed writes, but always together with the offset they
    /// brought, so the store stays at a consistent earlier point and the
    /// replay repeats them.
    fn apply_replayed(
        &mut self,
        changes: &mut dyn Iterator<Item = Change>,
        offset: i64,
    ) -> Result<()> {
        self.apply(changes, offset)
    }
    /// Makes replayed writes durable (a restoration ended).
    fn sync(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Entries in key order, read lazily.
pub(crate) type Entries<'a> = Box<dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + 'a>;

/// A store kept in memory: starts empty, so every assignment recovers the
/// whole changelog.
#[derive(Debug, Default)]
pub(crate) struct MemoryStore {
    data: BTreeMap<Vec<u8>, Vec<u8>>,
    offset: Option<i64>,
}

impl Store for MemoryStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.data.get(key).cloned())
    }
    fn offset(&self) -> Option<i64> {
        self.offset
    }
    fn apply(&mut self, changes: &mut dyn Iterator<Item = Change>, offset: i64) -> Result<()> {
        for (k, v) in changes {
            match v {
                Some(v) => self.data.insert(k, v),
                None => self.data.remove(&k),
            };
        }
        self.offset = Some(offset);
        Ok(())
    }
    fn range<'a>(&'a self, from: &[u8], to: Option<&[u8]>) -> Result<Entries<'a>> {
        use std::ops::Bound;
        let upper = match to {
            Some(to) if to <= from => return Ok(Box::new(std::iter::empty())),
            Some(to) => Bound::Excluded(to.to_vec()),
            None => Bound::Unbounded,
        };
        Ok(Box::new(
            self.data
                .range::<Vec<u8>, _>((Bound::Included(from.to_vec()), upper))
                .map(|(k, v)| Ok((k.clone(), v.clone()))),
        ))
    }
    fn delete_range(&mut self, from: &[u8], to: &[u8], offset: i64) -> Result<()> {
        if from < to {
            let doomed: Vec<Vec<u8>> = self
                .data
                .range::<[u8], _>((
                    std::ops::Bound::Included(from),
                    std::ops::Bound::Excluded(to),
                ))
                .map(|(k, _)| k.clone())
                .collect();
            for k in doomed {
                self.data.remove(&k);
            }
        }
        self.offset = Some(offset);
        Ok(())
    }
}

/// The column family that holds the applied changelog offset.
const META: &str = "faustus-meta";
const OFFSET_KEY: &[u8] = b"changelog-offset";

/// A RocksDB database per table partition, under
/// `<state.dir>/<table>/<partition>`.
pub(crate) struct RocksStore {
    db: rocksdb::DB,
    path: PathBuf,
    offset: Option<i64>,
    /// Writes without the write-ahead log since the last flush.
    unsynced: bool,
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore")
            .field("path", &self.path)
            .field("offset", &self.offset)
            .finish()
    }
}

/// The block cache and write-buffer manager shared by every RocksDB store
/// of the process opened with the same bound (`rocksdb.memory.max.bytes`):
/// Kafka Streams' bounded-memory recipe (its `BoundedMemoryRocksDBConfig`
/// example), built in. The memtables are charged to the cache and take at
/// most half of it, so all stores together hold about `bytes`, however many
/// partitions a worker owns. Without it each store takes RocksDB's defaults
/// (a 64 MB memtable, two of them, and its own cache), and a worker's
/// memory grows with its partitions and with time until each memtable
/// fills: the soak showed a worker growing by 6 KB a second.
fn shared_memory(bytes: usize) -> (rocksdb::Cache, rocksdb::WriteBufferManager) {
    type Shared = HashMap<usize, (rocksdb::Cache, rocksdb::WriteBufferManager)>;
    static SHARED: OnceLock<Mutex<Shared>> = OnceLock::new();
    let mut shared = SHARED
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    shared
        .entry(bytes)
        .or_insert_with(|| {
            let cache = rocksdb::Cache::new_lru_cache(bytes);
            let buffers = rocksdb::WriteBufferManager::new_write_buffer_manager_with_cache(
                bytes / 2,
                false,
                cache.clone(),
            );
            (cache, buffers)
        })
        .clone()
}

impl RocksStore {
    /// Opens (or creates) the store at `path`. With `memory_bytes` above
    /// zero it shares the process's bounded block cache and memtable budget
    /// ([`shared_memory`]); with zero it takes RocksDB's defaults.
    pub(crate) fn open(path: &Path, memory_bytes: usize) -> Result<Self> {
        let err = |e: &dyn std::fmt::Display| Error::Store {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(path).map_err(|e| err(&e))?;
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Replays write without the WAL: the data and offset column
        // families must then reach disk together, or a crash could keep
        // an offset whose data was lost.
        opts.set_atomic_flush(true);
        if memory_bytes > 0 {
            let (cache, buffers) = shared_memory(memory_bytes);
            let mut table = rocksdb::BlockBasedOptions::default();
            table.set_block_cache(&cache);
            // Index and filter blocks count against the bound too.
            table.set_cache_index_and_filter_blocks(true);
            opts.set_block_based_table_factory(&table);
            opts.set_write_buffer_manager(&buffers);
        }
        let db = rocksdb::DB::open_cf(&opts, path, [rocksdb::DEFAULT_COLUMN_FAMILY_NAME, META])
            .map_err(|e| err(&e))?;
        let offset = {
            let cf = db
                .cf_handle(META)
                .ok_or_else(|| err(&"no meta column family"))?;
            match db.get_cf(&cf, OFFSET_KEY).map_err(|e| err(&e))? {
                Some(b) if b.len() == 8 => {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(&b);
                    Some(i64::from_be_bytes(a))
                }
                Some(_) => return Err(err(&"corrupt changelog offset")),
                None => None,
            }
        };
        Ok(Self {
            db,
            path: path.to_owned(),
            offset,
            unsynced: false,
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::Store {
            path: self.path.display().to_string(),
            message: e.to_string(),
        }
    }
}

impl RocksStore {
    /// Writes `batch` with the changelog offset it brings the store to, in
    /// one atomic write (without the WAL with `wal` false).
    fn write_with_offset(
        &mut self,
        mut batch: rocksdb::WriteBatch,
        offset: i64,
        wal: bool,
    ) -> Result<()> {
        let cf = self
            .db
            .cf_handle(META)
            .ok_or_else(|| self.err("no meta column family"))?;
        batch.put_cf(&cf, OFFSET_KEY, offset.to_be_bytes());
        let mut opts = rocksdb::WriteOptions::default();
        opts.disable_wal(!wal);
        self.db.write_opt(batch, &opts).map_err(|e| self.err(e))?;
        self.unsynced |= !wal;
        self.offset = Some(offset);
        Ok(())
    }

    fn batch_of(changes: &mut dyn Iterator<Item = Change>) -> rocksdb::WriteBatch {
        let mut batch = rocksdb::WriteBatch::default();
        for (k, v) in changes {
            match v {
                Some(v) => batch.put(k, v),
                None => batch.delete(k),
            }
        }
        batch
    }
}

impl Store for RocksStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get(key).map_err(|e| self.err(e))
    }
    fn offset(&self) -> Option<i64> {
        self.offset
    }
    fn apply(&mut self, changes: &mut dyn Iterator<Item = Change>, offset: i64) -> Result<()> {
        let batch = Self::batch_of(changes);
        self.write_with_offset(batch, offset, true)
    }
    fn apply_replayed(
        &mut self,
        changes: &mut dyn Iterator<Item = Change>,
        offset: i64,
    ) -> Result<()> {
        let batch = Self::batch_of(changes);
        self.write_with_offset(batch, offset, false)
    }
    fn sync(&mut self) -> Result<()> {
        if std::mem::take(&mut self.unsynced) {
            let cfs: Vec<_> = [rocksdb::DEFAULT_COLUMN_FAMILY_NAME, META]
                .iter()
                .filter_map(|name| self.db.cf_handle(name))
                .collect();
            self.db
                .flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }
    fn range<'a>(&'a self, from: &[u8], to: Option<&[u8]>) -> Result<Entries<'a>> {
        if to.is_some_and(|to| to <= from) {
            return Ok(Box::new(std::iter::empty()));
        }
        let mut opts = rocksdb::ReadOptions::default();
        if let Some(to) = to {
            opts.set_iterate_upper_bound(to.to_vec());
        }
        let iter = self.db.iterator_opt(
            rocksdb::IteratorMode::From(from, rocksdb::Direction::Forward),
            opts,
        );
        Ok(Box::new(iter.map(move |item| {
            item.map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(|e| self.err(e))
        })))
    }
    fn delete_range(&mut self, from: &[u8], to: &[u8], offset: i64) -> Result<()> {
        let mut batch = rocksdb::WriteBatch::default();
        if from < to {
            batch.delete_range(from, to);
        }
        self.write_with_offset(batch, offset, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn exercise(s: &mut dyn Store) {
        assert_eq!(s.offset(), None);
        s.apply(
            &mut vec![
                (b"a".to_vec(), Some(b"1".to_vec())),
                (b"b".to_vec(), Some(b"2".to_vec())),
            ]
            .into_iter(),
            7,
        )
        .expect("ok");
        s.apply(&mut vec![(b"a".to_vec(), None)].into_iter(), 9)
            .expect("ok");
        assert_eq!(s.get(b"a").expect("ok"), None);
        assert_eq!(s.get(b"b").expect("ok"), Some(b"2".to_vec()));
        assert_eq!(s.offset(), Some(9));
        assert_eq!(
            s.entries().expect("ok"),
            vec![(b"b".to_vec(), b"2".to_vec())]
        );
    }

    #[test]
    fn memory_store() {
        exercise(&mut MemoryStore::default());
    }

    /// One operation of a random run.
    #[derive(Debug, Clone)]
    enum Op {
        Put(u8, u8),
        Delete(u8),
        DeleteRange(u8, u8),
        Range(u8, Option<u8>),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..32, any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
            1 => (0u8..32).prop_map(Op::Delete),
            1 => (0u8..34, 0u8..34).prop_map(|(a, b)| Op::DeleteRange(a, b)),
            2 => (0u8..34, proptest::option::of(0u8..34)).prop_map(|(a, b)| Op::Range(a, b)),
        ]
    }

    /// Keys of two bytes, so that ranges cross prefixes.
    fn key(k: u8) -> Vec<u8> {
        vec![k / 8, k % 8]
    }

    /// Runs `ops` on a store and on a `BTreeMap` model; every range read
    /// and the final contents must agree.
    fn agrees_with_the_model(s: &mut dyn Store, ops: &[Op]) -> Result<(), TestCaseError> {
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut written = None;
        for (i, op) in ops.iter().enumerate() {
            let offset = i as i64;
            if !matches!(op, Op::Range(..)) {
                written = Some(offset);
            }
            match *op {
                Op::Put(k, v) => {
                    s.apply(&mut std::iter::once((key(k), Some(vec![v]))), offset)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    model.insert(key(k), vec![v]);
                }
                Op::Delete(k) => {
                    s.apply(&mut std::iter::once((key(k), None)), offset)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    model.remove(&key(k));
                }
                Op::DeleteRange(a, b) => {
                    s.delete_range(&key(a), &key(b), offset)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    model.retain(|k, _| !(key(a) <= *k && *k < key(b)));
                }
                Op::Range(a, b) => {
                    let got: Vec<(Vec<u8>, Vec<u8>)> = s
                        .range(&key(a), b.map(key).as_deref())
                        .and_then(|r| r.collect())
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    let want: Vec<(Vec<u8>, Vec<u8>)> = model
                        .iter()
                        .filter(|(k, _)| **k >= key(a) && b.is_none_or(|b| **k < key(b)))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    prop_assert_eq!(got, want);
                }
            }
            prop_assert_eq!(s.offset(), written);
        }
        let all = s
            .entries()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(all, model.into_iter().collect::<Vec<_>>());
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn stores_scan_and_delete_ranges_as_an_ordered_map(ops in proptest::collection::vec(op(), 1..80)) {
            agrees_with_the_model(&mut MemoryStore::default(), &ops)?;
            let dir = std::env::temp_dir().join(format!(
                "faustus-store-prop-{}-{}",
                std::process::id(),
                rand::random::<u64>()
            ));
            {
                let mut rocks = RocksStore::open(&dir, 1 << 20).map_err(|e| TestCaseError::fail(e.to_string()))?;
                agrees_with_the_model(&mut rocks, &ops)?;
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    #[test]
    fn rocksdb_store_keeps_data_and_offset_across_reopen() {
        let dir = std::env::temp_dir().join(format!("faustus-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let mut s = RocksStore::open(&dir, 1 << 20).expect("ok");
            exercise(&mut s);
        }
        let s = RocksStore::open(&dir, 1 << 20).expect("ok");
        assert_eq!(s.offset(), Some(9));
        assert_eq!(s.get(b"b").expect("ok"), Some(b"2".to_vec()));
        drop(s);
        std::fs::remove_dir_all(&dir).expect("ok");
    }

    #[test]
    fn stores_with_a_memory_bound_charge_one_shared_budget() {
        // A bound no other test uses: its budget is this test's alone.
        const BOUND: usize = 3 << 20;
        let base = std::env::temp_dir().join(format!("faustus-shared-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (_, buffers) = shared_memory(BOUND);
        assert_eq!(buffers.get_buffer_size(), BOUND / 2);
        let before = buffers.get_usage();
        let mut stores: Vec<RocksStore> = (0..2)
            .map(|i| RocksStore::open(&base.join(i.to_string()), BOUND).expect("open"))
            .collect();
        let mut after_first = 0;
        for (i, s) in stores.iter_mut().enumerate() {
            let value = vec![b'v'; 1024];
            let mut changes = (0..200u32).map(|k| (k.to_be_bytes().to_vec(), Some(value.clone())));
            s.apply(&mut changes, i as i64).expect("apply");
            if i == 0 {
                after_first = buffers.get_usage();
            }
        }
        // Both stores' memtables are counted in the one shared manager.
        assert!(after_first > before, "{before} -> {after_first}");
        assert!(
            buffers.get_usage() > after_first,
            "{after_first} -> {}",
            buffers.get_usage()
        );
        drop(stores);
        std::fs::remove_dir_all(&base).expect("ok");
    }

    #[test]
    fn replayed_writes_skip_the_wal_and_are_on_disk_after_sync() {
        let dir = std::env::temp_dir().join(format!("faustus-replay-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let wal_bytes = |dir: &Path| -> u64 {
            std::fs::read_dir(dir)
                .expect("dir")
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
                .map(|e| e.metadata().map_or(0, |m| m.len()))
                .sum()
        };
        {
            let mut s = RocksStore::open(&dir, 1 << 20).expect("ok");
            let big = vec![7u8; 1 << 16];
            let changes: Vec<Change> = (0..64u32)
                .map(|i| (i.to_be_bytes().to_vec(), Some(big.clone())))
                .collect();
            s.apply_replayed(&mut changes.into_iter(), 41).expect("ok");
            assert!(wal_bytes(&dir) < 1 << 16, "4 MB replayed went to the WAL");
            s.sync().expect("ok");
            // Later writes use the WAL again.
            s.apply(
                &mut vec![(b"x".to_vec(), Some(big.clone()))].into_iter(),
                42,
            )
            .expect("ok");
            assert!(wal_bytes(&dir) >= 1 << 16, "a normal write skipped the WAL");
        }
        let s = RocksStore::open(&dir, 1 << 20).expect("ok");
        assert_eq!(s.offset(), Some(42));
        assert_eq!(
            s.get(&63u32.to_be_bytes()).expect("ok").map(|v| v.len()),
            Some(1 << 16)
        );
        assert!(s.get(b"x").expect("ok").is_some());
        drop(s);
        std::fs::remove_dir_all(&dir).expect("ok");
    }
}

//! Local stores of table partitions: RocksDB (the default) and memory.
//!
//! A store holds a table partition's committed state and the changelog
//! offset that state includes, written in one atomic batch, so that recovery
//! after a restart replays the changelog from the next offset on. The engine
//! writes a store only after the changelog records are durable (flushed
//! under at-least-once, committed under exactly-once): an aborted
//! transaction never reaches it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    /// Every entry, in key order.
    fn entries(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
}

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
    fn entries(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(self
            .data
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
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
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore")
            .field("path", &self.path)
            .field("offset", &self.offset)
            .finish()
    }
}

impl RocksStore {
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let err = |e: &dyn std::fmt::Display| Error::Store {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(path).map_err(|e| err(&e))?;
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
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
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::Store {
            path: self.path.display().to_string(),
            message: e.to_string(),
        }
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
        let mut batch = rocksdb::WriteBatch::default();
        for (k, v) in changes {
            match v {
                Some(v) => batch.put(k, v),
                None => batch.delete(k),
            }
        }
        let cf = self
            .db
            .cf_handle(META)
            .ok_or_else(|| self.err("no meta column family"))?;
        batch.put_cf(&cf, OFFSET_KEY, offset.to_be_bytes());
        self.db.write(batch).map_err(|e| self.err(e))?;
        self.offset = Some(offset);
        Ok(())
    }
    fn entries(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        for item in self.db.iterator(rocksdb::IteratorMode::Start) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn rocksdb_store_keeps_data_and_offset_across_reopen() {
        let dir = std::env::temp_dir().join(format!("faustus-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let mut s = RocksStore::open(&dir).expect("ok");
            exercise(&mut s);
        }
        let s = RocksStore::open(&dir).expect("ok");
        assert_eq!(s.offset(), Some(9));
        assert_eq!(s.get(b"b").expect("ok"), Some(b"2".to_vec()));
        drop(s);
        std::fs::remove_dir_all(&dir).expect("ok");
    }
}

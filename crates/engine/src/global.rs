//! Global tables: a topic read whole, on every worker (Kafka Streams'
//! `GlobalKTable`, Faust's `GlobalTable` without its bugs).
//!
//! Every worker reads every partition of the table's topic with its own
//! consumer, outside the app's consumer group, into one local store. A
//! worker restores the table to the topic's end (the last stable offset)
//! before it joins the group, so its agents never see an older table than
//! the one at its start, and then follows the topic between its polls.
//! Workers therefore hold the same content, give or take what they have not
//! read yet; none depends on the group's assignment, and none loops in
//! recovery when workers come and go.
//!
//! The store keeps each partition's last applied offset beside the data (in
//! one atomic write with it), so a restart reads only what is new; a store
//! the topic cannot continue (the topic recreated, records deleted) is
//! rebuilt from the start.
//!
//! Agents read it through [`Batch::global`](crate::Batch::global). It is
//! written the way its topic is: by sending to the topic (from any agent,
//! or from outside the app); every worker sees the change once it reads
//! it.

use std::cell::{Ref, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use faustus_wire::consumer::Fetched;

use crate::app::Topic;
use crate::error::{Error, Result};
use crate::store::Store;

/// A global table handle (see [`App::global_table`](crate::App::global_table)).
/// Cheap to clone.
pub struct GlobalTable<K, V> {
    pub(crate) inner: Arc<GlobalInner<K, V>>,
}

pub(crate) struct GlobalInner<K, V> {
    pub(crate) id: usize,
    pub(crate) topic: Topic<K, V>,
    pub(crate) default: Box<dyn Fn() -> V>,
}

impl<K, V> Clone for GlobalTable<K, V> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<K, V> std::fmt::Debug for GlobalTable<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("GlobalTable")
            .field(&self.inner.topic.name())
            .finish()
    }
}

impl<K, V> GlobalTable<K, V> {
    /// The table's topic (and name).
    pub fn topic(&self) -> &str {
        self.inner.topic.name()
    }

    pub(crate) fn decode_entry(&self, k: &[u8], v: &[u8]) -> Result<(K, V)> {
        let codecs = &self.inner.topic.inner.codecs;
        let bad = |e: crate::CodecError| Error::Table {
            table: self.topic().to_owned(),
            message: format!("undecodable entry: {e}"),
        };
        Ok((
            codecs.key.decode(Some(k)).map_err(bad)?,
            codecs.value.decode(Some(v)).map_err(bad)?,
        ))
    }
}

/// The engine's untyped view of a global table.
#[derive(Clone)]
pub(crate) struct GlobalDef {
    /// Its topic, which is also its name.
    pub(crate) topic: Arc<str>,
}

/// Where a global store keeps the last offset applied from each partition
/// of its topic: this prefix, then the partition (4 bytes, big-endian). No
/// key a codec writes for the table starts with it in practice (the same
/// reserved space as windowed tables' clock keys).
pub(crate) const OFFSET_PREFIX: &[u8] = b"\xff\xff\xff\xffglobal-offset:";

fn offset_key(partition: i32) -> Vec<u8> {
    let mut k = OFFSET_PREFIX.to_vec();
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// The bytes just after every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

/// One global table's local store: its content, and the offset applied from
/// each partition of its topic.
pub(crate) struct GlobalStore {
    pub(crate) topic: Arc<str>,
    pub(crate) store: Box<dyn Store>,
}

impl std::fmt::Debug for GlobalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlobalStore")
            .field("topic", &self.topic)
            .finish()
    }
}

impl GlobalStore {
    /// The last offset applied from each partition.
    pub(crate) fn offsets(&self) -> Result<BTreeMap<i32, i64>> {
        let mut out = BTreeMap::new();
        let end = prefix_end(OFFSET_PREFIX);
        for entry in self.store.range(OFFSET_PREFIX, Some(&end))? {
            let (k, v) = entry?;
            let p = k
                .get(OFFSET_PREFIX.len()..)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(i32::from_be_bytes);
            let o = <[u8; 8]>::try_from(v.as_slice())
                .ok()
                .map(i64::from_be_bytes);
            if let (Some(p), Some(o)) = (p, o) {
                out.insert(p, o);
            }
        }
        Ok(out)
    }

    /// Applies one fetch of the topic, with its partition's new offset, in
    /// one write. Records without a key are skipped (a table has none).
    pub(crate) fn apply(&mut self, f: &Fetched) -> Result<u64> {
        let (mut changes, last) = crate::runtime::restore::changes_of(f)?;
        let n = changes.len() as u64;
        if let Some(offset) = last {
            changes.push((
                offset_key(f.partition()),
                Some(offset.to_be_bytes().to_vec()),
            ));
            self.store.apply(&mut changes.into_iter(), offset)?;
        }
        Ok(n)
    }

    /// The entries (the offsets left out), in key order.
    pub(crate) fn entries(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(self
            .store
            .entries()?
            .into_iter()
            .filter(|(k, _)| !k.starts_with(OFFSET_PREFIX))
            .collect())
    }
}

/// The worker's global stores, by global table id, shared by its tasks.
pub(crate) type Globals = Rc<Vec<RefCell<GlobalStore>>>;

/// An agent's read access to a global table: every key, whichever worker
/// owns the batch's partition.
pub struct GlobalView<'b, K, V> {
    pub(crate) store: Ref<'b, GlobalStore>,
    pub(crate) table: &'b GlobalTable<K, V>,
    pub(crate) key_buf: Vec<u8>,
}

impl<K, V> std::fmt::Debug for GlobalView<'_, K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("GlobalView")
            .field(&self.table.topic())
            .finish()
    }
}

impl<K, V> GlobalView<'_, K, V> {
    fn raw(&mut self, key: &K) -> Result<Option<Vec<u8>>> {
        self.key_buf.clear();
        let inner = &self.table.inner;
        crate::codec::encode_into(
            &*inner.topic.inner.codecs.key,
            key,
            &mut self.key_buf,
            inner.topic.name(),
            "key",
        )?;
        self.store.store.get(&self.key_buf)
    }

    /// `key`'s value, or `None` when the table has none.
    pub fn get_opt(&mut self, key: &K) -> Result<Option<V>> {
        match self.raw(key)? {
            Some(v) => {
                let codecs = &self.table.inner.topic.inner.codecs;
                codecs
                    .value
                    .decode(Some(&v))
                    .map(Some)
                    .map_err(|e| Error::Table {
                        table: self.table.topic().to_owned(),
                        message: format!("stored value undecodable: {e}"),
                    })
            }
            None => Ok(None),
        }
    }

    /// `key`'s value, or the table's default.
    pub fn get(&mut self, key: &K) -> Result<V> {
        match self.get_opt(key)? {
            Some(v) => Ok(v),
            None => Ok((self.table.inner.default)()),
        }
    }

    /// Whether `key` has a value.
    pub fn contains(&mut self, key: &K) -> Result<bool> {
        Ok(self.raw(key)?.is_some())
    }

    /// Every entry, in key order.
    pub fn entries(&self) -> Result<Vec<(K, V)>> {
        self.store
            .entries()?
            .into_iter()
            .map(|(k, v)| self.table.decode_entry(&k, &v))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[test]
    fn offsets_live_beside_the_data_and_stay_out_of_the_entries() {
        let mut g = GlobalStore {
            topic: "t".into(),
            store: Box::new(MemoryStore::default()),
        };
        let mut changes = vec![
            (b"a".to_vec(), Some(b"1".to_vec())),
            (offset_key(2), Some(7i64.to_be_bytes().to_vec())),
            (offset_key(0), Some(3i64.to_be_bytes().to_vec())),
        ]
        .into_iter();
        g.store.apply(&mut changes, 0).expect("apply");
        assert_eq!(
            g.offsets().expect("offsets"),
            BTreeMap::from([(0, 3), (2, 7)])
        );
        assert_eq!(
            g.entries().expect("entries"),
            vec![(b"a".to_vec(), b"1".to_vec())]
        );
        assert_eq!(prefix_end(b"ab"), b"ac".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
    }
}

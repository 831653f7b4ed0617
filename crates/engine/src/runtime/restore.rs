//! Restoring table partitions from their changelogs: recovery when a task
//! opens, standby replicas kept current between polls, and the read of a
//! table's committed contents from outside the agents. All three apply
//! changelog fetches to a store with [`apply_changelog`]; recovery and the
//! outside read share one replay loop, [`replay`].

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use faustus_wire::consumer::{Consumer, ConsumerConfig, Fetched, Offset, TopicPartition};
use faustus_wire::{Admin, Client, OffsetSpec, Properties};

use super::task::TaskCtx;
use crate::config::{EngineConfig, StoreKind};
use crate::error::{Error, Result};
use crate::store::{MemoryStore, RocksStore, Store};
use crate::table::{TableDef, TablePart};

/// Whether a table partition's local store must be wiped and rebuilt from
/// its changelog rather than caught up, and why: a store whose last applied
/// changelog offset is `stored`, a changelog from `log_start` to `end`.
///
/// - At or past the end: the store is ahead of its changelog (a recreated
///   topic?) and cannot be trusted.
/// - Records after the store's offset are gone (`log_start` beyond it:
///   retention or deleted records): replaying from the log start over the
///   old store would keep keys whose tombstones were among the lost records.
pub(crate) fn must_rebuild(stored: Option<i64>, log_start: i64, end: i64) -> Option<&'static str> {
    let stored = stored?;
    if stored >= end {
        Some("store ahead of its changelog")
    } else if stored + 1 < log_start {
        Some("changelog records after the store's offset are gone")
    } else {
        None
    }
}

/// Applies one fetch of changelog records to a store; returns how many.
pub(crate) fn apply_changelog(store: &mut dyn Store, f: &Fetched) -> Result<u64> {
    let mut changes = Vec::new();
    let mut last = None;
    for rec in f.records() {
        let rec = rec?;
        if let Some(k) = rec.key() {
            changes.push((k.to_vec(), rec.value().map(<[u8]>::to_vec)));
        }
        last = Some(rec.offset);
    }
    let n = changes.len() as u64;
    if let Some(offset) = last {
        store.apply(&mut changes.into_iter(), offset)?;
    }
    Ok(n)
}

/// Polls `consumer` (assigned to changelog partitions) until each partition
/// of `ends` reaches its end, handing every fetch to `apply`; `progress` is
/// called every few seconds with the partitions still behind.
async fn replay(
    consumer: &mut Consumer,
    ends: &BTreeMap<TopicPartition, i64>,
    mut apply: impl FnMut(&Fetched) -> Result<()>,
    mut progress: impl FnMut(&Consumer),
) -> Result<()> {
    let behind = |c: &Consumer| {
        ends.iter()
            .any(|(tp, &end)| c.position(tp).is_none_or(|pos| pos < end))
    };
    let mut last_report = Instant::now();
    while behind(consumer) {
        for f in consumer.poll().await? {
            apply(&f)?;
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            progress(consumer);
            last_report = Instant::now();
        }
    }
    Ok(())
}

/// Properties of a changelog reader: read_committed from the beginning,
/// with short fetch waits (a replay ends at a marker it learns of from a
/// fetch: the broker must not hold that fetch for long).
pub(crate) fn changelog_reader_props(base: &Properties) -> Properties {
    base.clone()
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("fetch.max.wait.ms", "20")
}

/// Standby replicas (`table.standby.replicas`): a store per table for each
/// partition number the worker does not own, kept current by a changelog
/// consumer polled between the worker's polls. Taking a partition over
/// closes its standby stores and recovers from where they got to.
struct Standby {
    consumer: Consumer,
    /// By (table, partition).
    stores: BTreeMap<(usize, i32), Box<dyn Store>>,
    /// Table index by changelog topic.
    tables: HashMap<Arc<str>, usize>,
    partitions: i32,
}

/// Opens table partitions and keeps standbys.
pub(crate) struct Restorer<'t> {
    tables: &'t [TableDef],
    cfg: &'t EngineConfig,
    admin: Admin,
    recovery: Consumer,
    standby: Option<Standby>,
}

impl<'t> Restorer<'t> {
    /// A restorer for these tables, with `partitions` partitions each.
    pub(crate) fn new(
        tables: &'t [TableDef],
        cfg: &'t EngineConfig,
        client: Client,
        partitions: i32,
    ) -> Result<Self> {
        let props = changelog_reader_props(&cfg.properties);
        let recovery =
            Consumer::with_client(client.clone(), ConsumerConfig::from_properties(&props)?);
        let standby = if cfg.standby_replicas > 0 && !tables.is_empty() {
            // Polled between the worker's polls: never held by the broker.
            let props = props.set("fetch.max.wait.ms", "0");
            Some(Standby {
                consumer: Consumer::with_client(
                    client.clone(),
                    ConsumerConfig::from_properties(&props)?,
                ),
                stores: BTreeMap::new(),
                tables: tables
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (t.changelog.clone(), i))
                    .collect(),
                partitions,
            })
        } else {
            None
        };
        Ok(Self {
            tables,
            cfg,
            admin: Admin::new(client),
            recovery,
            standby,
        })
    }

    /// Opens partition `p` of every table, recovered from its changelog
    /// (from where a standby got to, if there is one).
    pub(crate) async fn open_task(&mut self, p: i32) -> Result<TaskCtx> {
        self.release_standby(p);
        let mut tables = Vec::new();
        for def in self.tables {
            tables.push(self.recover(def, p).await?);
        }
        tracing::info!(partition = p, tables = tables.len(), "task ready");
        Ok(TaskCtx::new(tables))
    }

    fn store_path(&self, def: &TableDef, p: i32) -> PathBuf {
        self.cfg
            .state_dir
            .join(&self.cfg.app_id)
            .join(&def.name)
            .join(p.to_string())
    }

    fn open_store(&self, def: &TableDef, p: i32) -> Result<Box<dyn Store>> {
        Ok(match self.cfg.store {
            StoreKind::RocksDb => Box::new(RocksStore::open(&self.store_path(def, p))?),
            StoreKind::Memory => Box::new(MemoryStore::default()),
        })
    }

    /// One offset of partition `p` of a table's changelog (the end as
    /// read_committed sees it: the last stable offset).
    async fn changelog_offset(&self, def: &TableDef, p: i32, spec: OffsetSpec) -> Result<i64> {
        Ok(self
            .admin
            .list_offsets(&def.changelog, &[p], spec, true)
            .await?
            .get(&p)
            .copied()
            .unwrap_or(0))
    }

    /// Brings partition `p` of a table up to its changelog's end (the last
    /// stable offset: what read_committed can see).
    async fn recover(&mut self, def: &TableDef, p: i32) -> Result<TablePart> {
        let mut store = self.open_store(def, p)?;
        let end = self.changelog_offset(def, p, OffsetSpec::Latest).await?;
        let log_start = self.changelog_offset(def, p, OffsetSpec::Earliest).await?;
        if let Some(why) = must_rebuild(store.offset(), log_start, end) {
            tracing::warn!(table = %def.name, partition = p, stored = ?store.offset(), log_start, end, "{why}: rebuilding the store from the changelog");
            drop(store);
            let path = self.store_path(def, p);
            if self.cfg.store == StoreKind::RocksDb {
                std::fs::remove_dir_all(&path).map_err(|e| Error::Store {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
            }
            store = self.open_store(def, p)?;
        }
        let start = store
            .offset()
            .map_or(Offset::Beginning, |o| Offset::At(o + 1));
        let tp = TopicPartition {
            topic: def.changelog.clone(),
            partition: p,
        };
        let began = Instant::now();
        let mut applied = 0u64;
        if store.offset().map_or(0, |o| o + 1) < end {
            tracing::info!(table = %def.name, partition = p, from = ?start, end, "recovering");
            self.recovery.assign(&def.changelog, &[p], start).await?;
            let ends = BTreeMap::from([(tp.clone(), end)]);
            replay(
                &mut self.recovery,
                &ends,
                |f| {
                    applied += apply_changelog(&mut *store, f)?;
                    Ok(())
                },
                |c| tracing::info!(table = %def.name, partition = p, position = ?c.position(&tp), end, "recovery progress"),
            )
            .await?;
            self.recovery.unassign(std::slice::from_ref(&tp));
        }
        tracing::info!(table = %def.name, partition = p, applied, ms = began.elapsed().as_millis() as u64, "recovered");
        Ok(TablePart::new(
            def.name.clone(),
            def.changelog.clone(),
            p,
            store,
        ))
    }

    /// Closes the standby stores of partition `p` (about to become a
    /// task: RocksDB allows one opener of a directory).
    fn release_standby(&mut self, p: i32) {
        let Some(sb) = &mut self.standby else { return };
        let keys: Vec<(usize, i32)> = sb.stores.keys().filter(|k| k.1 == p).copied().collect();
        let mut tps = Vec::new();
        for k in keys {
            sb.stores.remove(&k);
            tps.push(TopicPartition {
                topic: self.tables[k.0].changelog.clone(),
                partition: p,
            });
        }
        sb.consumer.unassign(&tps);
    }

    /// Opens standby stores for partitions without a task (`owned` says
    /// which have one), and applies what their changelogs gained since the
    /// last step.
    pub(crate) async fn standby_step(&mut self, owned: impl Fn(i32) -> bool) -> Result<()> {
        let Some(partitions) = self.standby.as_ref().map(|s| s.partitions) else {
            return Ok(());
        };
        for p in 0..partitions {
            if owned(p) {
                continue;
            }
            for (i, def) in self.tables.iter().enumerate() {
                let open = self
                    .standby
                    .as_ref()
                    .is_some_and(|s| s.stores.contains_key(&(i, p)));
                if open {
                    continue;
                }
                let store = self.open_store(def, p)?;
                let start = store
                    .offset()
                    .map_or(Offset::Beginning, |o| Offset::At(o + 1));
                tracing::info!(table = %def.name, partition = p, from = ?start, "standby replica");
                if let Some(sb) = &mut self.standby {
                    sb.consumer.assign(&def.changelog, &[p], start).await?;
                    sb.stores.insert((i, p), store);
                }
            }
        }
        let Some(sb) = &mut self.standby else {
            return Ok(());
        };
        if sb.stores.is_empty() {
            return Ok(());
        }
        for f in sb.consumer.poll().await? {
            let Some(&i) = sb.tables.get(f.topic()) else {
                continue;
            };
            if let Some(store) = sb.stores.get_mut(&(i, f.partition())) {
                apply_changelog(&mut **store, &f)?;
            }
        }
        Ok(())
    }
}

/// A table's committed contents from its changelog (read_committed, up to
/// the last stable offset of each partition).
pub(crate) async fn read_changelog(
    cfg: &EngineConfig,
    def: &TableDef,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let props = changelog_reader_props(&cfg.properties);
    let mut consumer = Consumer::connect(ConsumerConfig::from_properties(&props)?).await?;
    let admin = Admin::new(consumer.client().clone());
    let ends = admin
        .list_offsets(&def.changelog, &[], OffsetSpec::Latest, true)
        .await?;
    let mut store = MemoryStore::default();
    let ends: BTreeMap<TopicPartition, i64> = ends
        .into_iter()
        .filter(|&(_, e)| e > 0)
        .map(|(p, e)| {
            let tp = TopicPartition {
                topic: def.changelog.clone(),
                partition: p,
            };
            (tp, e)
        })
        .collect();
    if !ends.is_empty() {
        let parts: Vec<i32> = ends.keys().map(|tp| tp.partition).collect();
        consumer
            .assign(&def.changelog, &parts, Offset::Beginning)
            .await?;
        replay(
            &mut consumer,
            &ends,
            |f| apply_changelog(&mut store, f).map(drop),
            |_| {},
        )
        .await?;
    }
    store.entries()
}

#[cfg(test)]
mod tests {
    use super::must_rebuild;

    #[test]
    fn a_store_is_rebuilt_when_its_changelog_cannot_continue_it() {
        // No store yet, or one the changelog continues: catch up.
        assert_eq!(must_rebuild(None, 50, 100), None);
        assert_eq!(must_rebuild(Some(49), 50, 100), None);
        assert_eq!(must_rebuild(Some(99), 0, 100), None);
        // Ahead of the changelog, or records after it deleted: rebuild.
        assert!(must_rebuild(Some(100), 0, 100).is_some());
        assert!(must_rebuild(Some(48), 50, 100).is_some());
        assert!(must_rebuild(Some(10), 100, 100).is_some());
    }
}

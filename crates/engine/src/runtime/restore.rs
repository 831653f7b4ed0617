//! Restoring table partitions from their changelogs: a task whose stores
//! are behind restores in steps between the worker's polls (its source
//! partitions paused meanwhile), standby replicas are kept current between
//! polls, and a table's committed contents are read from outside the
//! agents. All apply changelog fetches to a store with [`apply_changelog`],
//! each fetch in one atomic write with its last offset, so restoration
//! interrupted anywhere goes on from where it got to.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use faustus_wire::consumer::{Consumer, ConsumerConfig, Fetched, Offset, TopicPartition};
use faustus_wire::{Admin, Client, OffsetSpec, Properties};

use super::task::TaskCtx;
use crate::config::{EngineConfig, StoreKind};
use crate::error::{Error, Result};
use crate::store::{MemoryStore, RocksStore, Store};
use crate::table::{CacheBudget, TableDef, TablePart};

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

/// A fetch's records as store changes (keyless records skipped), with the
/// last offset it holds.
pub(crate) type Changes = (Vec<(Vec<u8>, Option<Vec<u8>>)>, Option<i64>);

/// Reads one fetch of changelog records as store changes.
pub(crate) fn changes_of(f: &Fetched) -> Result<Changes> {
    let mut changes = Vec::new();
    let mut last = None;
    for rec in f.records() {
        let rec = rec?;
        if let Some(k) = rec.key() {
            changes.push((k.to_vec(), rec.value().map(<[u8]>::to_vec)));
        }
        last = Some(rec.offset);
    }
    Ok((changes, last))
}

/// Applies one fetch of changelog records to a store; returns how many.
/// Only each key's last change in the fetch is written (a changelog not
/// compacted yet repeats hot keys many times), without the WAL (see
/// [`Store::apply_replayed`]).
pub(crate) fn apply_changelog(store: &mut dyn Store, f: &Fetched) -> Result<u64> {
    let (changes, last) = changes_of(f)?;
    let n = changes.len() as u64;
    if let Some(offset) = last {
        let latest: rustc_hash::FxHashMap<Vec<u8>, Option<Vec<u8>>> = changes.into_iter().collect();
        store.apply_replayed(&mut latest.into_iter(), offset)?;
    }
    Ok(n)
}

/// Polls `consumer` (assigned to changelog partitions) until each partition
/// of `ends` reaches its end, handing every fetch to `apply`; `progress` is
/// called every few seconds with the partitions still behind.
pub(crate) async fn replay(
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

/// A task whose table partitions are catching up with their changelogs.
struct Restoring {
    /// Its table partitions, by table id.
    parts: Vec<TablePart>,
    /// The changelog partitions still behind, and the end each must reach
    /// (the last stable offset when restoration began).
    ends: BTreeMap<TopicPartition, i64>,
    began: Instant,
    /// Records applied, by table id.
    applied_by: Vec<u64>,
}

impl Restoring {
    /// Records applied over all its tables.
    fn applied(&self) -> u64 {
        self.applied_by.iter().sum()
    }
}

/// How far one table partition's restoration got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RestoreProgress {
    pub(crate) table: String,
    pub(crate) partition: i32,
    /// Changelog records applied so far.
    pub(crate) restored: u64,
    /// Changelog offsets still to read.
    pub(crate) remaining: i64,
}

/// What opening a task gave.
pub(crate) enum Opened {
    /// Its stores are current: the task can run now.
    Ready(TaskCtx),
    /// Its stores are behind: [`Restorer::restore_step`] brings them up
    /// between polls, then hands the task over.
    Restoring,
}

/// Opens table partitions, restores them from their changelogs between
/// the worker's polls, and keeps standbys.
pub(crate) struct Restorer<'t> {
    tables: &'t [TableDef],
    cfg: &'t EngineConfig,
    admin: Admin,
    recovery: Consumer,
    /// Tasks being restored, by partition number.
    restoring: BTreeMap<i32, Restoring>,
    /// Table index by changelog topic.
    by_changelog: HashMap<Arc<str>, usize>,
    standby: Option<Standby>,
    /// The worker's table cache, given to the partitions it opens.
    cache: Option<Rc<CacheBudget>>,
}

impl<'t> Restorer<'t> {
    /// A restorer for these tables, with `partitions` partitions each,
    /// whose partitions share the cache `cache`.
    pub(crate) fn new(
        tables: &'t [TableDef],
        cfg: &'t EngineConfig,
        client: Client,
        partitions: i32,
        cache: Option<Rc<CacheBudget>>,
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
            restoring: BTreeMap::new(),
            by_changelog: tables
                .iter()
                .enumerate()
                .map(|(i, t)| (t.changelog.clone(), i))
                .collect(),
            standby,
            cache,
        })
    }

    /// Opens partition `p` of every table (closing its standbys first):
    /// ready at once when every store is current, restoring otherwise.
    ///
    /// `kept`: the stores of this partition's task, revoked and assigned
    /// again within one poll, by table id. They are checked against their
    /// changelogs like stores opened from disk: another worker may have
    /// written in between, and only that gap is replayed.
    pub(crate) async fn open_task(
        &mut self,
        p: i32,
        kept: Option<Vec<Box<dyn Store>>>,
    ) -> Result<Opened> {
        self.release_standby(p);
        let mut parts = Vec::new();
        let mut ends = BTreeMap::new();
        let mut kept = kept.map(Vec::into_iter);
        for def in self.tables {
            let store = kept.as_mut().and_then(Iterator::next);
            let (part, behind) = self.prepare(def, p, store).await?;
            if let Some((start, end)) = behind {
                tracing::info!(table = %def.name, partition = p, from = ?start, end, "recovering");
                self.recovery.assign(&def.changelog, &[p], start).await?;
                let tp = TopicPartition {
                    topic: def.changelog.clone(),
                    partition: p,
                };
                ends.insert(tp, end);
            }
            parts.push(part);
        }
        if ends.is_empty() {
            tracing::info!(partition = p, applied = 0u64, "recovered");
            tracing::info!(partition = p, tables = parts.len(), "task ready");
            return Ok(Opened::Ready(TaskCtx::new(parts)));
        }
        self.restoring.insert(
            p,
            Restoring {
                parts,
                ends,
                began: Instant::now(),
                applied_by: vec![0; self.tables.len()],
            },
        );
        Ok(Opened::Restoring)
    }

    /// How far each table partition being restored got.
    pub(crate) fn progress(&self) -> Vec<RestoreProgress> {
        let mut out = Vec::new();
        for (&p, r) in &self.restoring {
            for (tp, &end) in &r.ends {
                let Some(&i) = self.by_changelog.get(&tp.topic) else {
                    continue;
                };
                let at = self.recovery.position(tp).unwrap_or(0);
                out.push(RestoreProgress {
                    table: self.tables[i].name.clone(),
                    partition: p,
                    restored: r.applied_by[i],
                    remaining: (end - at).max(0),
                });
            }
        }
        out
    }

    /// Whether partition `p`'s task is being restored.
    pub(crate) fn is_restoring(&self, p: i32) -> bool {
        self.restoring.contains_key(&p)
    }

    /// The partition numbers being restored.
    pub(crate) fn restoring(&self) -> impl Iterator<Item = i32> + '_ {
        self.restoring.keys().copied()
    }

    /// Stops restoring partition `p` (revoked meanwhile). What was applied
    /// stays in the stores with its offset: the next owner of this
    /// directory goes on from there.
    pub(crate) fn cancel(&mut self, p: i32) {
        if let Some(r) = self.restoring.remove(&p) {
            let tps: Vec<TopicPartition> = r.ends.keys().cloned().collect();
            self.recovery.unassign(&tps);
            tracing::info!(partition = p, applied = r.applied(), "recovery cancelled");
        }
    }

    /// Applies changelog records to the stores being restored for about
    /// `budget` (one fetch at least), between the worker's polls, so that
    /// restoring a large changelog never keeps the worker from polling
    /// (`max.poll.interval.ms`) or committing its other tasks. Returns the
    /// tasks whose stores reached their changelogs' ends.
    pub(crate) async fn restore_step(&mut self, budget: Duration) -> Result<Vec<(i32, TaskCtx)>> {
        let mut done = Vec::new();
        if self.restoring.is_empty() {
            return Ok(done);
        }
        let until = Instant::now() + budget;
        loop {
            for f in self.recovery.poll().await? {
                let Some(&i) = self.by_changelog.get(f.topic()) else {
                    continue;
                };
                if let Some(r) = self.restoring.get_mut(&f.partition()) {
                    r.applied_by[i] += apply_changelog(&mut *r.parts[i].store, &f)?;
                }
            }
            let recovery = &self.recovery;
            let finished: Vec<i32> = self
                .restoring
                .iter()
                .filter(|(_, r)| {
                    r.ends
                        .iter()
                        .all(|(tp, &end)| recovery.position(tp).is_some_and(|pos| pos >= end))
                })
                .map(|(&p, _)| p)
                .collect();
            for p in finished {
                if let Some(mut r) = self.restoring.remove(&p) {
                    for part in &mut r.parts {
                        part.store.sync()?;
                    }
                    let tps: Vec<TopicPartition> = r.ends.keys().cloned().collect();
                    self.recovery.unassign(&tps);
                    tracing::info!(
                        partition = p,
                        applied = r.applied(),
                        ms = r.began.elapsed().as_millis() as u64,
                        "recovered"
                    );
                    tracing::info!(partition = p, tables = r.parts.len(), "task ready");
                    done.push((p, TaskCtx::new(r.parts)));
                }
            }
            if !done.is_empty() || self.restoring.is_empty() || Instant::now() >= until {
                if let Some((p, r)) = self.restoring.iter().next() {
                    tracing::debug!(partition = p, applied = r.applied(), "recovering");
                }
                return Ok(done);
            }
        }
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
            StoreKind::RocksDb => Box::new(RocksStore::open(
                &self.store_path(def, p),
                self.cfg.rocksdb_memory_max_bytes,
            )?),
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

    /// Opens partition `p` of a table's store, wiped first when its
    /// changelog cannot continue it; returns it with where its changelog
    /// must be read from and to (its end as read_committed sees it: the
    /// last stable offset), unless it is current.
    async fn prepare(
        &self,
        def: &TableDef,
        p: i32,
        kept: Option<Box<dyn Store>>,
    ) -> Result<(TablePart, Option<(Offset, i64)>)> {
        let mut store = match kept {
            Some(s) => s,
            None => self.open_store(def, p)?,
        };
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
        let behind = (store.offset().map_or(0, |o| o + 1) < end).then(|| {
            let start = store
                .offset()
                .map_or(Offset::Beginning, |o| Offset::At(o + 1));
            (start, end)
        });
        let part = TablePart::new(def.name.clone(), def.changelog.clone(), p, store)
            .with_window(
                def.frozen_window,
                self.cfg.guarantee == crate::config::Guarantee::ExactlyOnce,
            )
            .with_ordered(def.ordered)
            .with_cache(self.cache.clone());
        Ok((part, behind))
    }

    /// The standby store of table `table`'s partition `p`, if this worker
    /// keeps one.
    pub(crate) fn standby_store(&self, table: usize, p: i32) -> Option<&dyn Store> {
        self.standby.as_ref()?.stores.get(&(table, p)).map(|s| &**s)
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

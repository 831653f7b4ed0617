//! The worker's side of global tables (see `global.rs`): restore each to
//! its topic's end before the worker joins its group, then follow.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use faustus_wire::consumer::{Consumer, ConsumerConfig, Offset, TopicPartition};
use faustus_wire::{Admin, Client, OffsetSpec};

use super::restore::{changelog_reader_props, must_rebuild, replay};
use crate::config::{EngineConfig, StoreKind};
use crate::error::{Error, Result};
use crate::global::{GlobalDef, GlobalStore, Globals};
use crate::store::{MemoryStore, RocksStore, Store};

/// Reads every partition of every global table's topic, outside the group.
pub(crate) struct GlobalFollower {
    consumer: Consumer,
    /// The stores, shared with the worker's tasks.
    pub(crate) stores: Globals,
    /// Global table id by topic.
    by_topic: HashMap<Arc<str>, usize>,
}

fn store_path(cfg: &EngineConfig, topic: &str) -> std::path::PathBuf {
    cfg.state_dir.join(&cfg.app_id).join("global").join(topic)
}

fn open_store(cfg: &EngineConfig, topic: &str) -> Result<Box<dyn Store>> {
    Ok(match cfg.store {
        StoreKind::RocksDb => Box::new(RocksStore::open(
            &store_path(cfg, topic),
            cfg.rocksdb_memory_max_bytes,
        )?),
        StoreKind::Memory => Box::new(MemoryStore::default()),
    })
}

impl GlobalFollower {
    /// Opens the global tables' stores and brings each to its topic's end
    /// (the last stable offset of every partition, read_committed); `None`
    /// when the app has none.
    pub(crate) async fn restore(
        defs: &[GlobalDef],
        cfg: &EngineConfig,
        client: Client,
    ) -> Result<Option<Self>> {
        if defs.is_empty() {
            return Ok(None);
        }
        // Polled between the worker's polls: the broker must not hold it.
        let props = changelog_reader_props(&cfg.properties).set("fetch.max.wait.ms", "0");
        let mut consumer =
            Consumer::with_client(client.clone(), ConsumerConfig::from_properties(&props)?);
        let admin = Admin::new(client);
        let mut stores = Vec::new();
        let mut ends = BTreeMap::new();
        for def in defs {
            let topic = &*def.topic;
            // Created a moment ago, perhaps: wait until the brokers know it.
            admin.wait_for_topic(topic).await?;
            let end = admin
                .list_offsets(topic, &[], OffsetSpec::Latest, true)
                .await?;
            let start = admin
                .list_offsets(topic, &[], OffsetSpec::Earliest, false)
                .await?;
            let mut store = GlobalStore {
                topic: def.topic.clone(),
                store: open_store(cfg, topic)?,
            };
            let stored = store.offsets()?;
            let why = end.iter().find_map(|(p, &e)| {
                must_rebuild(
                    stored.get(p).copied(),
                    start.get(p).copied().unwrap_or(0),
                    e,
                )
            });
            let stored = match why {
                Some(why) => {
                    tracing::warn!(global_table = topic, "{why}: rebuilding it from its topic");
                    drop(store);
                    if cfg.store == StoreKind::RocksDb {
                        let path = store_path(cfg, topic);
                        std::fs::remove_dir_all(&path).map_err(|e| Error::Store {
                            path: path.display().to_string(),
                            message: e.to_string(),
                        })?;
                    }
                    store = GlobalStore {
                        topic: def.topic.clone(),
                        store: open_store(cfg, topic)?,
                    };
                    BTreeMap::new()
                }
                None => stored,
            };
            for (&p, &e) in &end {
                let from = stored
                    .get(&p)
                    .map_or(Offset::Beginning, |&o| Offset::At(o + 1));
                consumer.assign(topic, &[p], from).await?;
                if stored.get(&p).map_or(0, |o| o + 1) < e {
                    let tp = TopicPartition {
                        topic: def.topic.clone(),
                        partition: p,
                    };
                    ends.insert(tp, e);
                }
            }
            stores.push(RefCell::new(store));
        }
        let by_topic: HashMap<Arc<str>, usize> = defs
            .iter()
            .enumerate()
            .map(|(i, d)| (d.topic.clone(), i))
            .collect();
        let began = Instant::now();
        tracing::info!(
            tables = defs.len(),
            behind = ends.len(),
            "global tables restoring"
        );
        let mut applied = 0u64;
        replay(
            &mut consumer,
            &ends,
            |f| {
                if let Some(&i) = by_topic.get(f.topic()) {
                    applied += stores[i].borrow_mut().apply(f)?;
                }
                Ok(())
            },
            |c| {
                let behind: Vec<_> = ends
                    .iter()
                    .filter(|(tp, &e)| c.position(tp).is_none_or(|pos| pos < e))
                    .map(|(tp, _)| format!("{}-{}", tp.topic, tp.partition))
                    .collect();
                tracing::info!(?behind, "global tables restoring");
            },
        )
        .await?;
        tracing::info!(
            applied,
            ms = began.elapsed().as_millis() as u64,
            "global tables ready"
        );
        Ok(Some(Self {
            consumer,
            stores: Rc::new(stores),
            by_topic,
        }))
    }

    /// Applies what the topics gained since the last step (one poll, not
    /// held by the broker).
    pub(crate) async fn step(&mut self) -> Result<()> {
        for f in self.consumer.poll().await? {
            if let Some(&i) = self.by_topic.get(f.topic()) {
                self.stores[i].borrow_mut().apply(&f)?;
            }
        }
        Ok(())
    }
}

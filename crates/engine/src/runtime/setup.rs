//! Before a worker joins: the state directory taken, the worker's id, the
//! topics created and checked for co-partitioning, the clients' settings.

use std::collections::BTreeMap;
use std::path::Path;

use faustus_wire::{Admin, NewTopic, Properties};

use crate::config::{EngineConfig, Guarantee};
use crate::error::{Error, Result};
use crate::topology::Topology;

/// Takes the state directory for this worker alone: an exclusive lock on
/// `worker.lock` (holding this process's pid), kept while the returned file
/// is open. Two workers on one directory would share a worker id and so a
/// `transactional.id`, and fence each other forever; the second one stops at
/// once instead, naming the directory and the holder.
pub(crate) fn lock_state_dir(dir: &Path) -> Result<std::fs::File> {
    use std::io::{Read as _, Seek as _, Write as _};
    let path = dir.join("worker.lock");
    let err = |e: std::io::Error| Error::Store {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(err)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(Error::Store {
                path: dir.display().to_string(),
                message: format!(
                    "in use by another worker (pid {}); give each worker its own state.dir",
                    holder.trim()
                ),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(err(e)),
    }
    file.set_len(0).map_err(err)?;
    file.rewind().map_err(err)?;
    write!(file, "{}", std::process::id()).map_err(err)?;
    Ok(file)
}

/// Reads (or makes) this worker's id, kept in the state directory so that a
/// restarted worker reuses its transactional id and so fences and aborts
/// what its previous run left open at once.
pub(crate) fn worker_id(dir: &Path) -> Result<String> {
    let path = dir.join("worker-id");
    let err = |e: std::io::Error| Error::Store {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim().to_owned();
        if !id.is_empty() {
            return Ok(id);
        }
    }
    std::fs::create_dir_all(dir).map_err(err)?;
    let id = format!("{:016x}", rand::random::<u64>());
    std::fs::write(&path, &id).map_err(err)?;
    Ok(id)
}

/// Creates the app's topics and internal topics; returns the partition
/// count shared by the source topics and tables.
pub(crate) async fn create_topics(topology: &Topology, admin: &Admin) -> Result<i32> {
    let cfg = &topology.config;
    let rf = cfg.replication_factor;
    for t in &topology.topics {
        if t.create {
            let partitions = match &t.partitions_like {
                // Internal topics of a foreign-key join: as many partitions
                // as their twin (declared, so created or checked before).
                Some(like) => admin.wait_for_topic(like).await?.partitions.len() as i32,
                None => t.partitions.unwrap_or(cfg.topic_partitions),
            };
            let mut nt = NewTopic::new(&t.name, partitions, t.replication.unwrap_or(rf));
            for (k, v) in &t.configs {
                nt = nt.config(k, v);
            }
            admin.create_topic(nt, true).await?;
        }
    }
    for t in topology.dead_letter_topics() {
        admin
            .create_topic(NewTopic::new(t, cfg.topic_partitions, rf), true)
            .await?;
    }
    let mut counts = BTreeMap::new();
    let changelogs: Vec<&str> = topology.tables.iter().map(|t| &*t.changelog).collect();
    for t in topology.source_topics() {
        if changelogs.contains(&t) {
            // A table's changes read by an agent: created below, with
            // the tasks' partition count.
            continue;
        }
        let info = admin.wait_for_topic(t).await?;
        counts.insert(t.to_owned(), info.partitions.len() as i32);
    }
    let n = task_partitions(&counts, !topology.tables.is_empty(), cfg.topic_partitions)?;
    for t in &topology.tables {
        let mut topic = NewTopic::new(&*t.changelog, n, rf);
        topic = match t.frozen_window {
            // Windows expire: their records may go once the windows have
            // (a day's margin, as Kafka Streams' window changelogs).
            Some(w) => topic.config("cleanup.policy", "compact,delete").config(
                "retention.ms",
                w.retention()
                    .saturating_add(WINDOW_CHANGELOG_MARGIN_MS)
                    .to_string(),
            ),
            None => topic.config("cleanup.policy", "compact"),
        };
        let info = admin.create_topic(topic, true).await?;
        if info.partitions.len() as i32 != n {
            return Err(Error::Config(format!(
                "changelog {} has {} partitions; its sources have {n}",
                t.changelog,
                info.partitions.len()
            )));
        }
    }
    Ok(n)
}

/// How much longer a windowed table's changelog keeps records than its
/// windows live: one day, as Kafka Streams'
/// `windowstore.changelog.additional.retention.ms`.
pub(crate) const WINDOW_CHANGELOG_MARGIN_MS: i64 = 24 * 60 * 60 * 1000;

/// How many tasks (partition numbers) an app has, from its source topics'
/// partition counts: with tables, every source must have the same count
/// (co-partitioning: partition *n* of each source and each table is one
/// task).
pub(crate) fn task_partitions(
    counts: &BTreeMap<String, i32>,
    has_tables: bool,
    default: i32,
) -> Result<i32> {
    let n = counts.values().copied().max().unwrap_or(default);
    if has_tables && counts.values().any(|&c| c != n) {
        return Err(Error::Config(format!(
            "source topics must be co-partitioned with the tables (same partition count): {counts:?}"
        )));
    }
    Ok(n)
}

/// The worker's consumer and producer settings: the app's, with the
/// engine's defaults where the app set nothing and what the engine needs
/// forced. Offsets are committed by the engine alone (never auto-commit):
/// every `commit.interval.ms`, on revocation and on leaving.
pub(crate) fn client_props(cfg: &EngineConfig, worker_id: &str) -> Properties {
    let mut props = cfg.properties.clone();
    let mut default = |k: &str, v: &str| {
        if props.get(k).is_none() {
            props.insert(k, v);
        }
    };
    default("group.id", &cfg.app_id);
    default("auto.offset.reset", "earliest");
    if cfg.properties.get("group.protocol") == Some("consumer") {
        default("group.remote.assignor", "range");
    } else {
        // Partition n of every topic to the same member: co-partitioning.
        default("partition.assignment.strategy", "range");
    }
    if cfg.guarantee == Guarantee::ExactlyOnce {
        default("isolation.level", "read_committed");
        default("transaction.timeout.ms", "10000");
        default("transactional.id", &format!("{}-{worker_id}", cfg.app_id));
    }
    props.insert("enable.auto.commit", "false");
    props
}

#[cfg(test)]
mod tests {
    use super::lock_state_dir;

    #[test]
    fn a_state_directory_has_one_worker_at_a_time() {
        let dir = std::env::temp_dir().join(format!("faustus-lock-{}", std::process::id()));
        let first = lock_state_dir(&dir).expect("first lock");
        let second = lock_state_dir(&dir).expect_err("a second worker is refused");
        let msg = second.to_string();
        assert!(msg.contains(&dir.display().to_string()), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(first);
        let again = lock_state_dir(&dir).expect("free again once the first is gone");
        drop(again);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}

//! Engine settings. Client settings keep the Java client's names
//! (`bootstrap.servers`, `isolation.level`, `compression.type`, ...) and pass
//! through to the consumer and producer; the engine's own settings follow
//! Kafka Streams and Faust:
//!
//! | property | default | meaning |
//! | --- | --- | --- |
//! | `processing.guarantee` | `at_least_once` | or `exactly_once` (`exactly_once_v2` is accepted as a synonym) |
//! | `commit.interval.ms` | 1000 | how often a worker commits (flushes, writes state, commits offsets or its transaction) |
//! | `topic.partitions` | 8 | partitions of the topics the app creates (Faust's default) |
//! | `topic.replication.factor` | 1 | their replication factor |
//! | `state.dir` | `./<app-id>-data` | where tables keep their local stores |
//! | `store` | `rocksdb` | table store: `rocksdb` or `memory` |
//! | `table.standby.replicas` | 0 | 1 or more: every worker keeps a standby copy of each table partition it does not own, kept current from the changelog, so that taking a partition over replays only the last records (RocksDB stores only) |
//! | `max.task.idle.ms` | 0 | joined inputs: how long a task waits for an input that is caught up before it processes the others' records (it always waits for one whose records are on the broker and not fetched yet); `-1`: never wait (see `docs/joins.md`) |
//! | `web.port` | none | serve `/health`, `/ready`, `/metrics`, `/tables` and the app's pages on this port (0: any free one; the log says which) |
//! | `web.bind` | `127.0.0.1` | the address the web server listens on |
//! | `application.server` | `web.bind:port` | the `host:port` other workers forward table queries to (required with `web.bind=0.0.0.0`) |
//! | `health.stall.ms` | 60000 | `/health` answers 503 (and the worker warns) when an assigned partition with records to read has not moved on for this long |
//! | `cache.max.bytes` | 10485760 | the worker's table cache (Kafka Streams' record cache; `statestore.cache.max.bytes` is accepted too): a key's updates between commits are coalesced and its changelog gets the latest value when the worker commits, when the cache is full, or before partitions are revoked; `0`: every update is a changelog record |
//! | `rocksdb.memory.max.bytes` | 67108864 | what all RocksDB stores of the process hold in memory together: one shared block cache, with the memtables charged to it and taking at most half (Kafka Streams' bounded-memory recipe, built in); `0`: each store takes RocksDB's defaults (64 MB memtables and a cache of its own), so memory grows with the partitions |
//! | `shutdown.timeout.ms` | 30000 | how long a worker told to stop (SIGTERM, SIGINT) may take to commit and leave its group; past it, the worker stops anyway with an error saying what it was waiting for, and the CLI exits non-zero (what was processed and not committed is processed again, or its transaction aborted, by the next owner) |
//! | `transaction.timeout.ms` | 10000 | as Kafka Streams under exactly-once: a crashed worker's open transaction is aborted after this |
//!
//! The consumer group is the app id (`group.id` may override it), assigned
//! with the `range` assignor so that partition *n* of every source topic
//! lands on the same worker (co-partitioning, as Kafka Streams' tasks).

use std::path::PathBuf;
use std::time::Duration;

use faustus_wire::Properties;

use crate::error::{Error, Result};

/// `cache.max.bytes` unless set: 10 MB, as Kafka Streams.
pub const DEFAULT_CACHE_MAX_BYTES: usize = 10 * 1024 * 1024;

/// `rocksdb.memory.max.bytes`' default: 64 MiB for all the process's
/// RocksDB stores together.
pub const DEFAULT_ROCKSDB_MEMORY_MAX_BYTES: usize = 64 * 1024 * 1024;

/// `processing.guarantee`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guarantee {
    /// Flush outputs, then commit input offsets: a crash may repeat work.
    AtLeastOnce,
    /// Changelog writes, outputs and input offsets in one Kafka
    /// transaction (KIP-98, KIP-447).
    ExactlyOnce,
}

/// Where tables keep their partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// RocksDB under `state.dir` (the default).
    RocksDb,
    /// Memory only: every assignment recovers from the changelog.
    Memory,
}

/// The engine's settings, read from [`Properties`].
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The app id: consumer group, prefix of internal topics.
    pub app_id: String,
    /// All properties, for the clients.
    pub properties: Properties,
    /// `processing.guarantee`.
    pub guarantee: Guarantee,
    /// `commit.interval.ms`.
    pub commit_interval: Duration,
    /// `topic.partitions`.
    pub topic_partitions: i32,
    /// `topic.replication.factor`.
    pub replication_factor: i16,
    /// `state.dir`.
    pub state_dir: PathBuf,
    /// `store`.
    pub store: StoreKind,
    /// `table.standby.replicas`.
    pub standby_replicas: u32,
    /// `max.task.idle.ms` (`-1`: never wait).
    pub max_task_idle_ms: i64,
    /// `web.port`: the web server's port, if it runs.
    pub web_port: Option<u16>,
    /// `web.bind`.
    pub web_bind: String,
    /// `health.stall.ms`.
    pub health_stall: Duration,
    /// `application.server` (Kafka Streams' name): the `host:port` other
    /// workers forward table queries to. Default: `web.bind` and the port
    /// the server listens on (the host name when bound to every address).
    pub application_server: Option<String>,
    /// `cache.max.bytes` (or Kafka Streams' `statestore.cache.max.bytes`):
    /// the table cache's bytes per worker; 0 turns it off.
    pub cache_max_bytes: usize,
    /// `shutdown.timeout.ms`: how long a worker told to stop may take to
    /// commit and leave its group before it gives up.
    pub shutdown_timeout: Duration,
    /// `rocksdb.memory.max.bytes`: the RocksDB stores' shared memory
    /// bound (block cache and memtables); 0 leaves each store RocksDB's
    /// defaults.
    pub rocksdb_memory_max_bytes: usize,
}

impl EngineConfig {
    /// Reads the engine's settings; `bootstrap.servers` is required.
    pub fn from_properties(app_id: &str, p: &Properties) -> Result<Self> {
        if app_id.is_empty() || app_id.contains(['/', ' ']) {
            return Err(Error::Config(format!(
                "app id `{app_id}`: must be non-empty, without spaces or slashes"
            )));
        }
        if p.get("bootstrap.servers").is_none_or(str::is_empty) {
            return Err(Error::Config("bootstrap.servers is required".into()));
        }
        let guarantee = match p.get("processing.guarantee").unwrap_or("at_least_once") {
            "at_least_once" => Guarantee::AtLeastOnce,
            "exactly_once" | "exactly_once_v2" => Guarantee::ExactlyOnce,
            other => {
                return Err(Error::Config(format!(
                    "processing.guarantee={other}: expected at_least_once or exactly_once"
                )))
            }
        };
        let store = match p.get("store").unwrap_or("rocksdb") {
            "rocksdb" | "rocksdb://" => StoreKind::RocksDb,
            "memory" | "memory://" => StoreKind::Memory,
            other => {
                return Err(Error::Config(format!(
                    "store={other}: expected rocksdb or memory"
                )))
            }
        };
        let standby_replicas: u32 = p.parse_or("table.standby.replicas", 0)?;
        if standby_replicas > 0 && store == StoreKind::Memory {
            return Err(Error::Config(
                "table.standby.replicas > 0 needs store=rocksdb (a memory store starts empty anyway)"
                    .into(),
            ));
        }
        let topic_partitions: i32 = p.parse_or("topic.partitions", 8)?;
        if topic_partitions < 1 {
            return Err(Error::Config("topic.partitions must be at least 1".into()));
        }
        Ok(Self {
            app_id: app_id.to_owned(),
            properties: p.clone(),
            guarantee,
            commit_interval: p.millis_or("commit.interval.ms", 1000)?,
            topic_partitions,
            replication_factor: p.parse_or("topic.replication.factor", 1)?,
            state_dir: p
                .get("state.dir")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(format!("{app_id}-data"))),
            store,
            standby_replicas,
            max_task_idle_ms: p.parse_or("max.task.idle.ms", 0)?,
            web_port: match p.get("web.port") {
                Some(v) => {
                    Some(v.parse().map_err(|_| {
                        Error::Config(format!("web.port={v}: expected a port number"))
                    })?)
                }
                None => None,
            },
            web_bind: p.get("web.bind").unwrap_or("127.0.0.1").to_owned(),
            health_stall: p.millis_or("health.stall.ms", 60_000)?,
            application_server: p.get("application.server").map(str::to_owned),
            cache_max_bytes: match p.get("cache.max.bytes") {
                Some(_) => p.parse_or("cache.max.bytes", 0)?,
                None => p.parse_or("statestore.cache.max.bytes", DEFAULT_CACHE_MAX_BYTES)?,
            },
            shutdown_timeout: p.millis_or("shutdown.timeout.ms", 30_000)?,
            rocksdb_memory_max_bytes: p
                .parse_or("rocksdb.memory.max.bytes", DEFAULT_ROCKSDB_MEMORY_MAX_BYTES)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props() -> Properties {
        Properties::new().set("bootstrap.servers", "127.0.0.1:9092")
    }

    #[test]
    fn defaults() {
        let c = EngineConfig::from_properties("pv", &props()).expect("ok");
        assert_eq!(c.guarantee, Guarantee::AtLeastOnce);
        assert_eq!(c.commit_interval, Duration::from_millis(1000));
        assert_eq!(c.topic_partitions, 8);
        assert_eq!(c.replication_factor, 1);
        assert_eq!(c.state_dir, PathBuf::from("pv-data"));
        assert_eq!(c.store, StoreKind::RocksDb);
        assert_eq!(c.cache_max_bytes, DEFAULT_CACHE_MAX_BYTES);
        assert_eq!(c.rocksdb_memory_max_bytes, DEFAULT_ROCKSDB_MEMORY_MAX_BYTES);
        let c = EngineConfig::from_properties("pv", &props().set("rocksdb.memory.max.bytes", "0"))
            .expect("config");
        assert_eq!(c.rocksdb_memory_max_bytes, 0);
    }

    #[test]
    fn cache_size_takes_either_name() {
        let c = |p: Properties| EngineConfig::from_properties("pv", &p).expect("ok");
        assert_eq!(c(props().set("cache.max.bytes", "0")).cache_max_bytes, 0);
        assert_eq!(
            c(props().set("statestore.cache.max.bytes", "1024")).cache_max_bytes,
            1024
        );
        let both = props()
            .set("statestore.cache.max.bytes", "1024")
            .set("cache.max.bytes", "7");
        assert_eq!(c(both).cache_max_bytes, 7);
    }

    #[test]
    fn refuses_bad_settings() {
        for (k, v) in [
            ("processing.guarantee", "twice"),
            ("store", "redis"),
            ("topic.partitions", "0"),
            ("table.standby.replicas", "x"),
            ("commit.interval.ms", "soon"),
            ("cache.max.bytes", "-1"),
        ] {
            let e = EngineConfig::from_properties("pv", &props().set(k, v)).expect_err("an error");
            assert!(
                matches!(e, Error::Config(_) | Error::Wire(_)),
                "{k}={v}: {e}"
            );
        }
        assert!(EngineConfig::from_properties("pv", &Properties::new()).is_err());
        assert!(EngineConfig::from_properties("a b", &props()).is_err());
        let c = EngineConfig::from_properties(
            "pv",
            &props().set("processing.guarantee", "exactly_once_v2"),
        )
        .expect("ok");
        assert_eq!(c.guarantee, Guarantee::ExactlyOnce);
    }
}

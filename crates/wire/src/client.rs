//! The cluster handle: bootstrap, one connection per broker (reconnected with
//! exponential backoff and jitter), and the metadata cache.
//!
//! Producers, consumers and the admin client share a [`Client`]; it is cheap
//! to clone.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{MetadataRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use tokio::time::Instant;

use crate::config::ClientConfig;
use crate::conn::{Connection, ConnectionOptions};
use crate::protocol::ErrorCode;
use crate::{Action, Backoff, Error, Result};

/// A topic name for a request.
pub(crate) fn topic_name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_owned()))
}

/// One partition as the metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Partition number.
    pub id: i32,
    /// Leader broker id, -1 if none.
    pub leader: i32,
    /// Leader epoch.
    pub leader_epoch: i32,
    /// Replica broker ids.
    pub replicas: Vec<i32>,
    /// In-sync replica broker ids.
    pub isr: Vec<i32>,
    /// The partition's error code (e.g. LEADER_NOT_AVAILABLE).
    pub error: ErrorCode,
}

/// One topic as the metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// Name.
    pub name: String,
    /// Topic id (KIP-516), as 16 bytes.
    pub id: [u8; 16],
    /// Whether it is an internal topic (`__consumer_offsets`, ...).
    pub internal: bool,
    /// Partitions, ordered by id.
    pub partitions: Vec<PartitionInfo>,
}

/// A snapshot of the cluster's metadata.
#[derive(Debug, Clone, Default)]
pub struct ClusterInfo {
    /// Broker id to `host:port`.
    pub brokers: HashMap<i32, String>,
    /// The active controller's id (as brokers report it).
    pub controller: i32,
    /// Cluster id.
    pub cluster_id: Option<String>,
    /// Known topics.
    pub topics: HashMap<String, Arc<TopicInfo>>,
}

struct Inner {
    config: ClientConfig,
    opts: ConnectionOptions,
    conns: tokio::sync::Mutex<HashMap<String, ConnSlot>>,
    meta: RwLock<Arc<ClusterInfo>>,
    /// Bumped each time `meta` is replaced.
    meta_version: std::sync::atomic::AtomicU64,
    refresh: tokio::sync::Mutex<Instant>,
    coordinators: crate::coordinator::CoordinatorCache,
}

#[derive(Default)]
struct ConnSlot {
    conn: Option<Connection>,
    failures: u32,
    retry_at: Option<Instant>,
}

/// A handle to a Kafka cluster.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("bootstrap", &self.inner.config.bootstrap_servers)
            .finish()
    }
}

impl Client {
    /// Connects to the cluster: tries the bootstrap servers in turn (with
    /// backoff between rounds) until one answers a Metadata request, or fails
    /// with [`Error::Bootstrap`] once `default.api.timeout.ms` has passed.
    pub async fn connect(config: ClientConfig) -> Result<Self> {
        let opts = ConnectionOptions {
            client_id: config.client_id.clone(),
            request_timeout: config.request_timeout,
            connect_timeout: config.connect_timeout,
            security: config.security.clone(),
        };
        let client = Self {
            inner: Arc::new(Inner {
                opts,
                conns: tokio::sync::Mutex::new(HashMap::new()),
                meta: RwLock::new(Arc::new(ClusterInfo::default())),
                meta_version: std::sync::atomic::AtomicU64::new(0),
                refresh: tokio::sync::Mutex::new(Instant::now()),
                coordinators: Default::default(),
                config,
            }),
        };
        client.bootstrap().await?;
        Ok(client)
    }

    /// The cache of known coordinators (see [`crate::coordinator`]).
    pub(crate) fn coordinators(&self) -> &crate::coordinator::CoordinatorCache {
        &self.inner.coordinators
    }

    async fn bootstrap(&self) -> Result<()> {
        let cfg = &self.inner.config;
        let deadline = Instant::now() + cfg.default_api_timeout;
        let mut last = String::from("no attempt");
        let mut round = 0;
        loop {
            for addr in &cfg.bootstrap_servers {
                let remaining = deadline.saturating_duration_since(Instant::now());
                let attempt = tokio::time::timeout(remaining, async {
                    let conn = self.conn_to(addr).await?;
                    self.fetch_metadata(&conn, None, false).await
                })
                .await;
                match attempt {
                    Ok(Ok(())) => return Ok(()),
                    // Wrong credentials or certificates: trying again
                    // cannot help.
                    Ok(Err(e @ (Error::Authentication { .. } | Error::Tls { .. })))
                        if e.action() == crate::Action::Fail =>
                    {
                        return Err(e)
                    }
                    Ok(Err(e)) => last = e.to_string(),
                    // Keep what the last finished attempt said (connection
                    // refused, ...): it says more than the time-out.
                    Err(_) if last == "no attempt" => {
                        last = format!("timed out connecting to {addr}")
                    }
                    Err(_) => {}
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::Bootstrap {
                    servers: cfg.bootstrap_servers.join(","),
                    last,
                });
            }
            let pause = self
                .retry_backoff()
                .delay(round)
                .min(deadline.saturating_duration_since(Instant::now()));
            round += 1;
            tokio::time::sleep(pause).await;
        }
    }

    /// The client's configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The `retry.backoff.ms` / `retry.backoff.max.ms` policy.
    pub fn retry_backoff(&self) -> Backoff {
        Backoff {
            base: self.inner.config.retry_backoff,
            max: self.inner.config.retry_backoff_max,
        }
    }

    /// The current metadata snapshot.
    pub fn cluster(&self) -> Arc<ClusterInfo> {
        self.inner
            .meta
            .read()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// A live connection to `addr`, reconnecting if needed. After a failure,
    /// reconnects wait `reconnect.backoff.ms`, doubling up to
    /// `reconnect.backoff.max.ms`, with jitter.
    pub async fn conn_to(&self, addr: &str) -> Result<Connection> {
        self.conn_in_slot(addr, addr).await
    }

    /// A live connection to the coordinator at `addr`, apart from the one
    /// fetches and produce requests use (as the Java client keeps its
    /// coordinator on a node id of its own): a broker handles one request
    /// of a connection at a time, so a heartbeat queued behind a fetch held
    /// for `fetch.max.wait.ms` could outlast the session timeout.
    pub async fn coordinator_conn(&self, addr: &str) -> Result<Connection> {
        self.conn_in_slot(&format!("{addr} (coordinator)"), addr)
            .await
    }

    /// The connection kept under `key`, to `addr`: made, or remade after a
    /// failure with exponential backoff.
    async fn conn_in_slot(&self, key: &str, addr: &str) -> Result<Connection> {
        let wait = {
            let mut conns = self.inner.conns.lock().await;
            let slot = conns.entry(key.to_owned()).or_default();
            if let Some(c) = &slot.conn {
                if !c.is_closed() {
                    return Ok(c.clone());
                }
                slot.conn = None;
            }
            slot.retry_at
        };
        if let Some(at) = wait {
            tokio::time::sleep_until(at).await;
        }
        let res = Connection::connect(addr, &self.inner.opts).await;
        let mut conns = self.inner.conns.lock().await;
        let slot = conns.entry(key.to_owned()).or_default();
        match res {
            Ok(c) => {
                // Another task may have connected meanwhile; keep one.
                if let Some(existing) = slot.conn.as_ref().filter(|c| !c.is_closed()) {
                    c.close();
                    return Ok(existing.clone());
                }
                slot.conn = Some(c.clone());
                slot.failures = 0;
                slot.retry_at = None;
                Ok(c)
            }
            Err(e) => {
                let backoff = Backoff {
                    base: self.inner.config.reconnect_backoff,
                    max: self.inner.config.reconnect_backoff_max,
                };
                slot.retry_at = Some(Instant::now() + backoff.delay(slot.failures));
                slot.failures = slot.failures.saturating_add(1);
                Err(e)
            }
        }
    }

    /// The open connection to broker `node`, if there is one; never
    /// connects.
    pub async fn connected(&self, node: i32) -> Option<Connection> {
        let addr = self.cluster().brokers.get(&node).cloned()?;
        let conns = self.inner.conns.lock().await;
        conns
            .get(&addr)
            .and_then(|slot| slot.conn.clone())
            .filter(|c| !c.is_closed())
    }

    /// A live connection to broker `node`.
    pub async fn broker(&self, node: i32) -> Result<Connection> {
        let addr = self.cluster().brokers.get(&node).cloned();
        match addr {
            Some(a) => self.conn_to(&a).await,
            None => {
                self.refresh_metadata(None).await?;
                let addr = self.cluster().brokers.get(&node).cloned().ok_or_else(|| {
                    Error::server(
                        ErrorCode::BROKER_NOT_AVAILABLE,
                        Some(format!("no broker {node} in metadata")),
                        "Metadata",
                        None,
                        None,
                    )
                })?;
                self.conn_to(&addr).await
            }
        }
    }

    /// A live connection to any broker: a known broker first, then the
    /// bootstrap servers.
    pub async fn any_broker(&self) -> Result<Connection> {
        let mut addrs: Vec<String> = self.cluster().brokers.values().cloned().collect();
        addrs.sort();
        addrs.extend(self.inner.config.bootstrap_servers.iter().cloned());
        let mut last = None;
        for a in &addrs {
            match self.conn_to(a).await {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(Error::Closed))
    }

    /// Refreshes metadata for `topics` (all topics when `None`), without
    /// auto-creating anything. Concurrent callers share one request.
    pub async fn refresh_metadata(&self, topics: Option<&[&str]>) -> Result<()> {
        let started = Instant::now();
        let mut last = self.inner.refresh.lock().await;
        if *last > started {
            // Someone refreshed while we waited for the lock.
            return Ok(());
        }
        let conn = self.any_broker().await?;
        self.fetch_metadata(&conn, topics, false).await?;
        *last = Instant::now();
        Ok(())
    }

    async fn fetch_metadata(
        &self,
        conn: &Connection,
        topics: Option<&[&str]>,
        auto_create: bool,
    ) -> Result<()> {
        let req = MetadataRequest::default()
            .with_topics(topics.map(|ts| {
                ts.iter()
                    .map(|t| {
                        MetadataRequestTopic::default()
                            .with_name(Some(TopicName(StrBytes::from_string((*t).to_owned()))))
                    })
                    .collect()
            }))
            .with_allow_auto_topic_creation(auto_create);
        let resp = conn.call(&req).await?;
        conn.throttle(resp.throttle_time_ms);
        let mut info = ClusterInfo {
            brokers: resp
                .brokers
                .iter()
                .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
                .collect(),
            controller: resp.controller_id.0,
            cluster_id: resp.cluster_id.as_ref().map(|c| c.as_str().to_owned()),
            topics: HashMap::new(),
        };
        let previous = self.cluster();
        if topics.is_some() {
            info.topics = previous.topics.clone();
        }
        let mut refused = None;
        for t in &resp.topics {
            let Some(name) = t.name.as_ref().map(|n| n.0.as_str().to_owned()) else {
                continue;
            };
            let code = ErrorCode(t.error_code);
            if !code.is_ok() {
                if code == ErrorCode::TOPIC_AUTHORIZATION_FAILED && refused.is_none() {
                    refused = Some(name.clone());
                }
                info.topics.remove(&name);
                continue;
            }
            let mut partitions: Vec<PartitionInfo> = t
                .partitions
                .iter()
                .map(|p| PartitionInfo {
                    id: p.partition_index,
                    leader: p.leader_id.0,
                    leader_epoch: p.leader_epoch,
                    replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                    isr: p.isr_nodes.iter().map(|b| b.0).collect(),
                    error: ErrorCode(p.error_code),
                })
                .collect();
            partitions.sort_by_key(|p| p.id);
            info.topics.insert(
                name.clone(),
                Arc::new(TopicInfo {
                    name,
                    id: *t.topic_id.as_bytes(),
                    internal: t.is_internal,
                    partitions,
                }),
            );
        }
        if let Ok(mut m) = self.inner.meta.write() {
            *m = Arc::new(info);
            self.inner
                .meta_version
                .fetch_add(1, std::sync::atomic::Ordering::Release);
        }
        // A topic asked for by name that this principal may not describe:
        // no retry will change that, so say which.
        if let Some(topic) = refused {
            return Err(Error::server(
                ErrorCode::TOPIC_AUTHORIZATION_FAILED,
                Some("not authorized to describe this topic".into()),
                "Metadata",
                Some(&topic),
                None,
            ));
        }
        Ok(())
    }

    /// A number that changes whenever the cached metadata
    /// ([`cluster`](Self::cluster)) is replaced: callers that keep what
    /// they read from it check this instead of taking a snapshot each time.
    pub fn metadata_version(&self) -> u64 {
        self.inner
            .meta_version
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Metadata of `topic`, refreshing when it is not cached or `refresh` is
    /// set. With `auto_create`, the request lets the broker create it (when
    /// `auto.create.topics.enable` is on there). Unknown topics give
    /// [`Error::UnknownPartition`] with partition -1.
    pub async fn topic(
        &self,
        topic: &str,
        refresh: bool,
        auto_create: bool,
    ) -> Result<Arc<TopicInfo>> {
        if !refresh {
            if let Some(t) = self.cluster().topics.get(topic) {
                return Ok(t.clone());
            }
        }
        let conn = self.any_broker().await?;
        self.fetch_metadata(&conn, Some(&[topic]), auto_create)
            .await?;
        self.cluster()
            .topics
            .get(topic)
            .cloned()
            .ok_or_else(|| Error::UnknownPartition {
                topic: topic.to_owned(),
                partition: -1,
            })
    }

    /// The leader broker id of a partition from cached metadata.
    pub fn leader_of(&self, topic: &str, partition: i32) -> Option<i32> {
        let cluster = self.cluster();
        let t = cluster.topics.get(topic)?;
        let p = t.partitions.get(usize::try_from(partition).ok()?)?;
        (p.id == partition && p.leader >= 0).then_some(p.leader)
    }

    /// Runs `op` until it succeeds, the error's [`Action`] says to stop, or
    /// `timeout` passes; refreshes metadata when the action asks for it, and
    /// backs off between attempts.
    pub async fn retry<T, F, Fut>(&self, what: &str, timeout: Duration, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let deadline = Instant::now() + timeout;
        let mut attempt = 0;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let res = match tokio::time::timeout(remaining, op()).await {
                Ok(r) => r,
                Err(_) => Err(Error::Timeout {
                    what: what.to_owned(),
                    after: timeout,
                }),
            };
            let err = match res {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let action = err.action();
            if Instant::now() >= deadline {
                return Err(err);
            }
            match action {
                Action::Retry { refresh } => {
                    tracing::debug!(%err, what, attempt, "retrying");
                    if refresh {
                        let _ = self.refresh_metadata(None).await;
                    }
                }
                Action::FindCoordinator => {}
                _ => return Err(err),
            }
            let pause = self
                .retry_backoff()
                .delay(attempt)
                .min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
            attempt += 1;
        }
    }
}

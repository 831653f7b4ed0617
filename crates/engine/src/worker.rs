//! The worker: one consumer group member, one producer, and a task per
//! assigned partition number holding that partition of every table.
//!
//! The loop: poll; apply what the rebalance listener reported (recover
//! newly assigned tasks from their changelogs, close revoked ones); feed
//! each fetched batch to the agents of its topic; produce what they staged;
//! commit every `commit.interval.ms`.
//!
//! Committing is the one place that decides what is durable:
//! - at-least-once: flush the producer, write the table overlays to the
//!   stores with their changelog offsets, commit the input offsets;
//! - exactly-once: add the input offsets to the transaction and commit it
//!   (KIP-98; KIP-447 group metadata fences zombies), then write the
//!   overlays. An abortable failure aborts, drops every overlay (the stores
//!   only ever hold committed state) and rewinds the consumer to the
//!   committed offsets.
//!
//! Partitions revoked in a rebalance are committed by the listener before
//! the consumer gives them up.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use faustus_wire::consumer::{Consumer, ConsumerConfig, Fetched, Offset, TopicPartition};
use faustus_wire::group::{GroupConfig, GroupConsumer, GroupMetadataHandle, RebalanceListener};
use faustus_wire::producer::txn::TxnError;
use faustus_wire::producer::{
    DeliveryFuture, Producer, ProducerConfig, ProducerRecord, TransactionalProducer,
};
use faustus_wire::{Admin, Client, ClientConfig, NewTopic, OffsetSpec, Properties};
use futures::StreamExt;

use crate::app::{App, ErrorPolicy};
use crate::batch::{BatchInput, TaskCtx};
use crate::config::{EngineConfig, Guarantee, StoreKind};
use crate::error::{Error, Location, Result};
use crate::store::{MemoryStore, RocksStore, Store};
use crate::table::{TableDef, TablePart};

enum Sink {
    Exactly(TransactionalProducer),
    AtLeast(Producer),
}

impl Sink {
    async fn send(&self, rec: ProducerRecord) -> Result<DeliveryFuture> {
        Ok(match self {
            Self::Exactly(p) => p.send(rec).await?,
            Self::AtLeast(p) => p.send(rec).await?,
        })
    }
}

/// What the rebalance listener saw, for the loop to act on after `poll`.
#[derive(Debug)]
enum Change {
    /// Everything sent so far is durable (flushed, or committed with its
    /// transaction): the overlays may go to the stores.
    Durable,
    /// The open transaction was aborted: overlays are void, positions
    /// rewind.
    Aborted,
    Assigned(Vec<TopicPartition>),
    Revoked(Vec<TopicPartition>),
    Lost(Vec<TopicPartition>),
}

#[derive(Default)]
struct State {
    /// Under exactly-once, whether a transaction is open.
    txn_open: bool,
    /// Input positions consumed since the last commit.
    positions: BTreeMap<TopicPartition, i64>,
    changes: Vec<Change>,
    fatal: Option<Error>,
    /// At-least-once: an output (sink, dead letter or changelog record) was
    /// not written. From then on no input offset is committed, on revocation
    /// and on leaving included: the records after the last commit are read
    /// again by whoever owns their partitions next.
    outputs_failed: bool,
}

struct Shared {
    sink: Sink,
    meta: OnceLock<GroupMetadataHandle>,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes everything consumed so far durable (see the module doc); on
    /// an abortable transaction error, aborts. Returns whether it was
    /// committed.
    async fn commit_txn(&self, p: &TransactionalProducer) -> Result<bool> {
        let positions = {
            let mut s = self.state();
            if !s.txn_open {
                return Ok(true);
            }
            std::mem::take(&mut s.positions)
        };
        let meta = match self.meta.get() {
            Some(m) => m.get(),
            None => return Err(Error::Config("no group membership yet".into())),
        };
        let r = async {
            if !positions.is_empty() {
                p.send_offsets_to_transaction(&positions, &meta).await?;
            }
            p.commit().await
        }
        .await;
        self.state().txn_open = false;
        match r {
            Ok(()) => Ok(true),
            Err(faustus_wire::Error::Transaction {
                error: TxnError::Abortable(why),
                ..
            }) => {
                tracing::warn!(%why, "transaction aborted; rewinding to the committed offsets");
                p.abort().await?;
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }
}

struct Listener(Arc<Shared>);

impl Listener {
    async fn make_durable(&self) {
        let shared = &self.0;
        let change = match &shared.sink {
            Sink::Exactly(p) => match shared.commit_txn(p).await {
                Ok(true) => Change::Durable,
                Ok(false) => Change::Aborted,
                Err(e) => {
                    shared.state().fatal = Some(e);
                    return;
                }
            },
            Sink::AtLeast(p) => match p.flush().await {
                Ok(()) if !shared.state().outputs_failed => Change::Durable,
                Ok(()) => return,
                Err(e) => {
                    let mut s = shared.state();
                    s.outputs_failed = true;
                    s.fatal = Some(e.into());
                    return;
                }
            },
        };
        shared.state().changes.push(change);
    }
}

impl RebalanceListener for Listener {
    async fn revoked(&mut self, partitions: &[TopicPartition]) {
        tracing::info!(?partitions, "partitions revoked: committing");
        // Under at-least-once the consumer commits the revoked partitions'
        // offsets once this returns (the engine runs it with auto-commit on
        // revocation only).
        self.make_durable().await;
        self.0
            .state()
            .changes
            .push(Change::Revoked(partitions.to_vec()));
    }
    fn revoked_offsets(
        &mut self,
        partitions: &[TopicPartition],
    ) -> Option<BTreeMap<TopicPartition, i64>> {
        // What the agents have processed (a `take` may hold records back),
        // not everything the consumer handed out; nothing once an output
        // failed.
        let mut s = self.0.state();
        if s.outputs_failed {
            return Some(BTreeMap::new());
        }
        Some(
            partitions
                .iter()
                .filter_map(|tp| s.positions.remove(tp).map(|o| (tp.clone(), o)))
                .collect(),
        )
    }
    async fn assigned(&mut self, partitions: &[TopicPartition]) {
        tracing::info!(?partitions, "partitions assigned");
        self.0
            .state()
            .changes
            .push(Change::Assigned(partitions.to_vec()));
    }
    async fn lost(&mut self, partitions: &[TopicPartition]) {
        tracing::warn!(?partitions, "partitions lost");
        self.0
            .state()
            .changes
            .push(Change::Lost(partitions.to_vec()));
    }
}

/// Whether a table partition's local store must be wiped and rebuilt from
/// its changelog rather than caught up, and why: a store whose last applied
/// changelog offset is `stored`, a changelog from `log_start` to `end`.
///
/// - At or past the end: the store is ahead of its changelog (a recreated
///   topic?) and cannot be trusted.
/// - Records after the store's offset are gone (`log_start` beyond it:
///   retention or deleted records): replaying from the log start over the
///   old store would keep keys whose tombstones were among the lost records.
fn must_rebuild(stored: Option<i64>, log_start: i64, end: i64) -> Option<&'static str> {
    let stored = stored?;
    if stored >= end {
        Some("store ahead of its changelog")
    } else if stored + 1 < log_start {
        Some("changelog records after the store's offset are gone")
    } else {
        None
    }
}

/// A `take` agent holds records back across fetches, while the input
/// position is one per partition: another agent on the same topic would let
/// a commit pass records the `take` agent still holds. Refused at start.
fn check_take_alone<'a>(agents: impl IntoIterator<Item = (&'a str, &'a str, bool)>) -> Result<()> {
    let mut by_topic: BTreeMap<&str, Vec<(&str, bool)>> = BTreeMap::new();
    for (name, topic, take) in agents {
        by_topic.entry(topic).or_default().push((name, take));
    }
    for (topic, agents) in by_topic {
        if agents.len() > 1 {
            if let Some((taker, _)) = agents.iter().find(|(_, take)| *take) {
                let others: Vec<&str> = agents
                    .iter()
                    .map(|(n, _)| *n)
                    .filter(|n| n != taker)
                    .collect();
                return Err(Error::Config(format!(
                    "agent {taker} uses take() on topic {topic}, which agents {} also read: \
                     a take() agent must be the only agent of its topic",
                    others.join(", ")
                )));
            }
        }
    }
    Ok(())
}

/// Takes the state directory for this worker alone: an exclusive lock on
/// `worker.lock` (holding this process's pid), kept while the returned file
/// is open. Two workers on one directory would share a worker id and so a
/// `transactional.id`, and fence each other forever; the second one stops at
/// once instead, naming the directory and the holder.
fn lock_state_dir(dir: &std::path::Path) -> Result<std::fs::File> {
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
fn worker_id(dir: &std::path::Path) -> Result<String> {
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
async fn create_topics(app: &App, cfg: &EngineConfig, admin: &Admin) -> Result<i32> {
    let rf = cfg.replication_factor;
    let mut wanted: Vec<String> = app.agents.iter().map(|a| a.topic.clone()).collect();
    for t in &app.topics {
        if t.create {
            let mut nt = NewTopic::new(
                &t.name,
                t.partitions.unwrap_or(cfg.topic_partitions),
                t.replication.unwrap_or(rf),
            );
            for (k, v) in &t.configs {
                nt = nt.config(k, v);
            }
            admin.create_topic(nt, true).await?;
        }
    }
    for a in &app.agents {
        if let ErrorPolicy::DeadLetter(t) = &a.options.on_error {
            admin
                .create_topic(NewTopic::new(t, cfg.topic_partitions, rf), true)
                .await?;
        }
    }
    wanted.sort();
    wanted.dedup();
    let mut counts = BTreeMap::new();
    for t in &wanted {
        let info = admin.wait_for_topic(t).await?;
        counts.insert(t.clone(), info.partitions.len() as i32);
    }
    let n = counts
        .values()
        .copied()
        .max()
        .unwrap_or(cfg.topic_partitions);
    if !app.tables.is_empty() && counts.values().any(|&c| c != n) {
        return Err(Error::Config(format!(
            "source topics must be co-partitioned with the tables (same partition count): {counts:?}"
        )));
    }
    for t in &app.tables {
        let info = admin
            .create_topic(
                NewTopic::new(&*t.changelog, n, rf).config("cleanup.policy", "compact"),
                true,
            )
            .await?;
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

/// What an agent with `take` has gathered of one partition.
struct Gather {
    fetched: Vec<Rc<Fetched>>,
    records: usize,
    since: Instant,
}

struct Worker<'a> {
    app: &'a App,
    cfg: EngineConfig,
    shared: Arc<Shared>,
    consumer: GroupConsumer<Listener>,
    admin: Admin,
    recovery: Consumer,
    tasks: BTreeMap<i32, Rc<TaskCtx>>,
    /// Agents by topic.
    agents: HashMap<String, Vec<usize>>,
    concurrency: usize,
    /// Standby copies of the table partitions this worker does not own.
    standby: Option<Standby>,
    /// Fetches gathered for agents with `take`, by agent and partition.
    gathered: RefCell<HashMap<(usize, TopicPartition), Gather>>,
    processed: u64,
    lag: BTreeMap<TopicPartition, i64>,
}

/// Runs a worker (see the module doc).
pub(crate) async fn run(app: &App, shutdown: impl Future<Output = ()>) -> Result<()> {
    let cfg = app.config()?;
    check_take_alone(
        app.agents
            .iter()
            .map(|a| (a.name.as_str(), a.topic.as_str(), a.options.take.is_some())),
    )?;
    let state_dir = cfg.state_dir.join(&cfg.app_id);
    // Held until this function returns: the directory is ours meanwhile.
    let _lock = lock_state_dir(&state_dir)?;
    let client = Client::connect(ClientConfig::from_properties(&cfg.properties)?).await?;
    let admin = Admin::new(client.clone());
    let partitions = create_topics(app, &cfg, &admin).await?;
    let id = worker_id(&state_dir)?;

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
    let sink = match cfg.guarantee {
        Guarantee::ExactlyOnce => {
            default("isolation.level", "read_committed");
            default("transaction.timeout.ms", "10000");
            default("transactional.id", &format!("{}-{id}", cfg.app_id));
            props.insert("enable.auto.commit", "false");
            let p =
                TransactionalProducer::connect(ProducerConfig::from_properties(&props)?).await?;
            p.init_transactions().await?;
            Sink::Exactly(p)
        }
        Guarantee::AtLeastOnce => {
            // Commits on revocation only; the loop commits explicitly.
            props.insert("enable.auto.commit", "true");
            props.insert("auto.commit.interval.ms", i32::MAX.to_string());
            Sink::AtLeast(Producer::connect(ProducerConfig::from_properties(&props)?).await?)
        }
    };
    let shared = Arc::new(Shared {
        sink,
        meta: OnceLock::new(),
        state: Mutex::new(State::default()),
    });
    let mut topics: Vec<&str> = app.agents.iter().map(|a| a.topic.as_str()).collect();
    topics.sort();
    topics.dedup();
    if topics.is_empty() {
        return Err(Error::Config("the app has no agents".into()));
    }
    let consumer = GroupConsumer::subscribe(
        GroupConfig::from_properties(&props)?,
        &topics,
        Listener(shared.clone()),
    )
    .await?;
    let _ = shared.meta.set(consumer.metadata_handle());
    let recovery_props: Properties = cfg
        .properties
        .clone()
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        // Recovery ends at a marker it learns of from a fetch: do not let
        // the broker hold that fetch for long.
        .set("fetch.max.wait.ms", "20");
    let recovery = Consumer::with_client(
        client.clone(),
        ConsumerConfig::from_properties(&recovery_props)?,
    );
    let standby = if cfg.standby_replicas > 0 && !app.tables.is_empty() {
        // Polled between the worker's polls: never held by the broker.
        let props = recovery_props.clone().set("fetch.max.wait.ms", "0");
        Some(Standby {
            consumer: Consumer::with_client(client, ConsumerConfig::from_properties(&props)?),
            stores: BTreeMap::new(),
            tables: app
                .tables
                .iter()
                .enumerate()
                .map(|(i, t)| (t.changelog.clone(), i))
                .collect(),
            partitions,
        })
    } else {
        None
    };
    let mut agents: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, a) in app.agents.iter().enumerate() {
        agents.entry(a.topic.clone()).or_default().push(i);
    }
    tracing::info!(app = %cfg.app_id, worker = %id, guarantee = ?cfg.guarantee, ?topics, "worker starting");
    let mut w = Worker {
        app,
        concurrency: app
            .agents
            .iter()
            .map(|a| a.options.concurrency)
            .max()
            .unwrap_or(1),
        cfg,
        shared,
        consumer,
        admin,
        recovery,
        tasks: BTreeMap::new(),
        agents,
        gathered: RefCell::new(HashMap::new()),
        standby,
        processed: 0,
        lag: BTreeMap::new(),
    };
    let result = w.run_loop(shutdown).await;
    w.finish(result).await
}

impl Worker<'_> {
    async fn run_loop(&mut self, shutdown: impl Future<Output = ()>) -> Result<()> {
        tokio::pin!(shutdown);
        let mut last_commit = Instant::now();
        let mut last_report = Instant::now();
        loop {
            if futures::FutureExt::now_or_never(&mut shutdown).is_some() {
                tracing::info!("shutting down: committing and leaving the group");
                return Ok(());
            }
            let fetched = self.consumer.poll().await?;
            if !self.apply_changes().await? {
                // Rewound: what this poll returned is read again.
                continue;
            }
            if !fetched.is_empty() {
                self.process(fetched).await?;
            }
            self.flush_gathered(false).await?;
            self.standby_step().await?;
            if last_commit.elapsed() >= self.cfg.commit_interval {
                self.commit().await?;
                last_commit = Instant::now();
            }
            if last_report.elapsed() >= Duration::from_secs(10) {
                let lag: i64 = self.lag.values().sum();
                tracing::info!(processed = self.processed, lag, tasks = ?self.tasks.keys().collect::<Vec<_>>(), "progress");
                last_report = Instant::now();
            }
        }
    }

    /// Commits, leaves the group, closes the producer.
    async fn finish(mut self, result: Result<()>) -> Result<()> {
        if result.is_ok() {
            self.flush_gathered(true).await?;
            self.commit().await?;
        } else if let Sink::Exactly(p) = &self.shared.sink {
            // Nothing of the failed run may commit: abort, and leave nothing
            // for the listener to commit while the consumer leaves.
            let open = {
                let mut s = self.shared.state();
                s.positions.clear();
                std::mem::take(&mut s.txn_open)
            };
            if open {
                let _ = p.abort().await;
            }
        }
        let consumer = self.consumer;
        let closed = consumer.close().await;
        result?;
        closed?;
        if let Some(e) = self.shared.state().fatal.take() {
            return Err(e);
        }
        // The listener may have made state durable while leaving.
        let changes = std::mem::take(&mut self.shared.state().changes);
        if changes.iter().any(|c| matches!(c, Change::Durable)) {
            write_overlays(&self.tasks).await?;
        }
        if let Ok(Shared {
            sink: Sink::AtLeast(p),
            ..
        }) = Arc::try_unwrap(self.shared)
        {
            p.close().await?;
        }
        tracing::info!(processed = self.processed, "worker stopped");
        Ok(())
    }

    /// Acts on what the listener reported. Returns false when the consumer
    /// was rewound (the records of the current poll are stale).
    async fn apply_changes(&mut self) -> Result<bool> {
        let (changes, fatal) = {
            let mut s = self.shared.state();
            (std::mem::take(&mut s.changes), s.fatal.take())
        };
        if let Some(e) = fatal {
            return Err(e);
        }
        let mut fresh = true;
        for c in changes {
            match c {
                Change::Durable => self.write_overlays().await?,
                Change::Aborted => {
                    self.roll_back();
                    self.rewind().await?;
                    fresh = false;
                }
                Change::Assigned(tps) => {
                    for p in tps.iter().map(|tp| tp.partition).collect::<BTreeSet<_>>() {
                        if !self.tasks.contains_key(&p) {
                            self.release_standby(p);
                            let task = self.open_task(p).await?;
                            self.tasks.insert(p, Rc::new(task));
                        }
                    }
                }
                Change::Revoked(tps) => {
                    self.close_tasks(&tps);
                }
                Change::Lost(tps) => {
                    // The open transaction (or unflushed work) covered
                    // partitions another member owns now: drop it all and
                    // go back to the committed offsets.
                    if let Sink::Exactly(p) = &self.shared.sink {
                        let open = std::mem::take(&mut self.shared.state().txn_open);
                        if open {
                            let _ = p.abort().await;
                        }
                        self.roll_back();
                    }
                    self.close_tasks(&tps);
                    self.rewind().await?;
                    fresh = false;
                }
            }
        }
        Ok(fresh)
    }

    /// Closes the tasks of partition numbers this worker no longer has any
    /// source partition of.
    fn close_tasks(&mut self, gone: &[TopicPartition]) {
        {
            let mut s = self.shared.state();
            for tp in gone {
                s.positions.remove(tp);
            }
        }
        for tp in gone {
            self.lag.remove(tp);
        }
        self.gathered
            .borrow_mut()
            .retain(|(_, tp), _| !gone.contains(tp));
        let owned: BTreeSet<i32> = self
            .consumer
            .assignment()
            .values()
            .flatten()
            .copied()
            .collect();
        let closing: Vec<i32> = gone
            .iter()
            .map(|tp| tp.partition)
            .filter(|p| !owned.contains(p))
            .collect();
        for p in closing {
            if self.tasks.remove(&p).is_some() {
                tracing::info!(partition = p, "task closed");
            }
        }
    }

    fn roll_back(&mut self) {
        self.gathered.borrow_mut().clear();
        for t in self.tasks.values() {
            t.outbox.borrow_mut().clear();
            for part in &t.tables {
                part.borrow_mut().roll_back();
            }
        }
        let mut s = self.shared.state();
        s.positions.clear();
        s.txn_open = false;
    }

    /// Seeks every assigned partition back to the group's committed offset.
    async fn rewind(&mut self) -> Result<()> {
        let owned = self.consumer.assignment();
        let committed = self.consumer.fetch_committed(&owned).await?;
        for (topic, parts) in &owned {
            for &p in parts {
                let tp = TopicPartition {
                    topic: topic.as_str().into(),
                    partition: p,
                };
                let to = match committed.get(&(topic.clone(), p)) {
                    Some(&off) if off >= 0 => Offset::At(off),
                    _ => Offset::Beginning,
                };
                self.consumer.seek(&tp, to)?;
            }
        }
        self.shared.state().positions.clear();
        self.gathered.borrow_mut().clear();
        Ok(())
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
                topic: self.app.tables[k.0].changelog.clone(),
                partition: p,
            });
        }
        sb.consumer.unassign(&tps);
    }

    /// Opens standby stores for partitions without a task, and applies what
    /// their changelogs gained since the last step.
    async fn standby_step(&mut self) -> Result<()> {
        let Some(partitions) = self.standby.as_ref().map(|s| s.partitions) else {
            return Ok(());
        };
        for p in 0..partitions {
            if self.tasks.contains_key(&p) {
                continue;
            }
            for (i, def) in self.app.tables.iter().enumerate() {
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

    /// Opens partition `p` of every table and recovers it from its
    /// changelog.
    async fn open_task(&mut self, p: i32) -> Result<TaskCtx> {
        let mut tables = Vec::new();
        for def in &self.app.tables {
            let part = self.recover(def, p).await?;
            tables.push(RefCell::new(part));
        }
        tracing::info!(partition = p, tables = tables.len(), "task ready");
        Ok(TaskCtx {
            tables,
            outbox: RefCell::new(Vec::new()),
        })
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
            topic: Arc::from(&*def.changelog),
            partition: p,
        };
        let began = Instant::now();
        let mut applied = 0u64;
        if store.offset().map_or(0, |o| o + 1) < end {
            tracing::info!(table = %def.name, partition = p, from = ?start, end, "recovering");
            self.recovery.assign(&def.changelog, &[p], start).await?;
            let mut last_report = Instant::now();
            while self.recovery.position(&tp).is_none_or(|pos| pos < end) {
                for f in self.recovery.poll().await? {
                    applied += apply_changelog(&mut *store, &f)?;
                }
                if last_report.elapsed() >= Duration::from_secs(5) {
                    tracing::info!(table = %def.name, partition = p, position = ?self.recovery.position(&tp), end, applied, "recovery progress");
                    last_report = Instant::now();
                }
            }
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

    /// Opens a transaction under exactly-once, unless one is open.
    async fn begin(&self) -> Result<()> {
        if let Sink::Exactly(p) = &self.shared.sink {
            let open = self.shared.state().txn_open;
            if !open {
                p.begin().await?;
                self.shared.state().txn_open = true;
            }
        }
        Ok(())
    }

    /// Feeds one poll's batches to the agents: partitions in parallel (up to
    /// the agents' concurrency), each partition's batches in order.
    async fn process(&mut self, fetched: Vec<Fetched>) -> Result<()> {
        self.begin().await?;
        let mut by_partition: BTreeMap<i32, Vec<Rc<Fetched>>> = BTreeMap::new();
        for f in fetched {
            self.lag.insert(
                f.topic_partition().clone(),
                f.high_watermark() - f.next_offset(),
            );
            by_partition
                .entry(f.partition())
                .or_default()
                .push(Rc::new(f));
        }
        let this = &*self;
        let jobs = by_partition.into_iter().map(|(p, fs)| async move {
            let task =
                this.tasks.get(&p).cloned().ok_or_else(|| {
                    Error::Config(format!("partition {p} fetched without its task"))
                })?;
            let mut done = Vec::new();
            let mut count = 0u64;
            for f in fs {
                this.feed(&f, &task).await?;
                count += f.next_offset().saturating_sub(f.start_offset()) as u64;
                done.push((f.topic_partition().clone(), f.next_offset()));
            }
            Ok::<_, Error>((done, count))
        });
        let results: Vec<Result<_>> = futures::stream::iter(jobs)
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        for r in results {
            let (done, count) = r?;
            self.processed += count;
            for (tp, next) in done {
                let at = self.position(&tp, next);
                self.shared.state().positions.insert(tp, at);
            }
        }
        Ok(())
    }

    /// Where a partition's input is processed up to: `next`, or the first
    /// record an agent still gathers for a `take`.
    fn position(&self, tp: &TopicPartition, next: i64) -> i64 {
        self.gathered
            .borrow()
            .iter()
            .filter(|((_, t), g)| t == tp && !g.fetched.is_empty())
            .filter_map(|(_, g)| g.fetched.first().map(|f| f.start_offset()))
            .min()
            .unwrap_or(next)
    }

    /// Hands one fetch to each agent of its topic (or to its gathering, for
    /// agents with `take`), then produces what they staged.
    async fn feed(&self, f: &Rc<Fetched>, task: &Rc<TaskCtx>) -> Result<()> {
        let Some(agents) = self.agents.get(f.topic()) else {
            return Ok(());
        };
        for &i in agents {
            let ready = match self.app.agents[i].options.take {
                None => Some(vec![f.clone()]),
                Some((n, _)) => {
                    let mut gathered = self.gathered.borrow_mut();
                    let g = gathered
                        .entry((i, f.topic_partition().clone()))
                        .or_insert_with(|| Gather {
                            fetched: Vec::new(),
                            records: 0,
                            since: Instant::now(),
                        });
                    if g.fetched.is_empty() {
                        g.since = Instant::now();
                    }
                    g.fetched.push(f.clone());
                    g.records += f.next_offset().saturating_sub(f.start_offset()) as usize;
                    if g.records >= n {
                        g.records = 0;
                        Some(std::mem::take(&mut g.fetched))
                    } else {
                        None
                    }
                }
            };
            if let Some(fs) = ready {
                self.call_agent(i, fs, task).await?;
            }
        }
        self.send_staged(task).await
    }

    /// Calls the agents whose `take` gathering has waited `within` (all
    /// of them with `all`).
    async fn flush_gathered(&mut self, all: bool) -> Result<()> {
        let due: Vec<(usize, TopicPartition)> = self
            .gathered
            .borrow()
            .iter()
            .filter(|((i, _), g)| {
                !g.fetched.is_empty()
                    && self.app.agents[*i]
                        .options
                        .take
                        .is_some_and(|(_, within)| all || g.since.elapsed() >= within)
            })
            .map(|(k, _)| k.clone())
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        self.begin().await?;
        for (i, tp) in due {
            let fs = match self.gathered.borrow_mut().get_mut(&(i, tp.clone())) {
                Some(g) => {
                    g.records = 0;
                    std::mem::take(&mut g.fetched)
                }
                None => continue,
            };
            let Some(next) = fs.last().map(|f| f.next_offset()) else {
                continue;
            };
            let Some(task) = self.tasks.get(&tp.partition).cloned() else {
                continue;
            };
            self.call_agent(i, fs, &task).await?;
            self.send_staged(&task).await?;
            let at = self.position(&tp, next);
            self.shared.state().positions.insert(tp, at);
        }
        Ok(())
    }

    /// Calls agent `i` with the records of `fs`, applying its error policy:
    /// after a failed record it is called again with the rest.
    async fn call_agent(&self, i: usize, fs: Vec<Rc<Fetched>>, task: &Rc<TaskCtx>) -> Result<()> {
        let agent = &self.app.agents[i];
        let Some(first) = fs.first() else {
            return Ok(());
        };
        let (topic, partition) = (first.topic().to_owned(), first.partition());
        let mut from = first.start_offset();
        loop {
            let input = BatchInput {
                fetched: fs.clone(),
                from,
                task: task.clone(),
            };
            let Err(e) = agent.run.call(input).await else {
                return Ok(());
            };
            let at = match e.location() {
                Some(at) if at.topic == topic && at.partition == partition && at.offset >= from => {
                    at.clone()
                }
                _ => return Err(e),
            };
            match &agent.options.on_error {
                ErrorPolicy::Stop => return Err(e),
                ErrorPolicy::Skip => {
                    tracing::warn!(agent = %agent.name, error = %e, "skipping record");
                }
                ErrorPolicy::DeadLetter(dlq) => {
                    tracing::warn!(agent = %agent.name, error = %e, dead_letters = %dlq, "dead-lettering record");
                    let rec = dead_letter(&fs, &at, dlq, &e.to_string())?;
                    task.outbox.borrow_mut().push(rec);
                }
            }
            from = at.offset + 1;
        }
    }

    /// Produces what the agents staged: outputs, then changelog records.
    async fn send_staged(&self, task: &TaskCtx) -> Result<()> {
        let out = std::mem::take(&mut *task.outbox.borrow_mut());
        for rec in out {
            let _ = self.shared.sink.send(rec).await?;
        }
        for part in &task.tables {
            let staged = std::mem::take(&mut part.borrow_mut().staged);
            let mut last = None;
            for rec in staged {
                last = Some(self.shared.sink.send(rec).await?);
            }
            if let Some(d) = last {
                part.borrow_mut().last_sent = Some(d);
            }
        }
        Ok(())
    }

    async fn write_overlays(&mut self) -> Result<()> {
        write_overlays(&self.tasks).await
    }

    /// Commits (see the module doc).
    async fn commit(&mut self) -> Result<()> {
        match &self.shared.sink {
            Sink::Exactly(p) => {
                if self.shared.commit_txn(p).await? {
                    self.write_overlays().await?;
                } else {
                    self.roll_back();
                    self.rewind().await?;
                }
            }
            Sink::AtLeast(p) => {
                if let Err(e) = p.flush().await {
                    // Offsets stay uncommitted, now and when leaving.
                    self.shared.state().outputs_failed = true;
                    return Err(e.into());
                }
                self.write_overlays().await?;
                let positions = std::mem::take(&mut self.shared.state().positions);
                if !positions.is_empty() {
                    if let Err(e) = self.consumer.commit_offsets(&positions).await {
                        // A rebalance under way: the revocation commits.
                        tracing::warn!(error = %e, "offset commit failed");
                    }
                }
            }
        }
        Ok(())
    }
}

/// Writes every table overlay to its store with the offset of the last
/// changelog record sent for it (all of which are durable now).
async fn write_overlays(tasks: &BTreeMap<i32, Rc<TaskCtx>>) -> Result<()> {
    for t in tasks.values() {
        for cell in &t.tables {
            let (last, overlay) = {
                let mut part = cell.borrow_mut();
                (part.last_sent.take(), std::mem::take(&mut part.overlay))
            };
            let Some(last) = last else { continue };
            let offset = last.await?.offset;
            cell.borrow_mut()
                .store
                .apply(&mut overlay.into_iter(), offset)?;
        }
    }
    Ok(())
}

/// Applies one fetch of changelog records to a store.
fn apply_changelog(store: &mut dyn Store, f: &Fetched) -> Result<u64> {
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

/// The dead-letter copy of the record at `at`.
fn dead_letter(
    fs: &[Rc<Fetched>],
    at: &Location,
    topic: &str,
    error: &str,
) -> Result<ProducerRecord> {
    for rec in fs.iter().flat_map(|f| f.records()) {
        let rec = rec?;
        if rec.offset != at.offset {
            continue;
        }
        let mut out = ProducerRecord::new(topic)
            .header("faustus.source.topic", at.topic.clone().into_bytes())
            .header(
                "faustus.source.partition",
                at.partition.to_string().into_bytes(),
            )
            .header("faustus.source.offset", at.offset.to_string().into_bytes())
            .header("faustus.error", error.as_bytes().to_vec());
        out.key = rec.key().map(bytes::Bytes::copy_from_slice);
        out.value = rec.value().map(bytes::Bytes::copy_from_slice);
        out.timestamp = Some(rec.timestamp);
        return Ok(out);
    }
    Err(Error::Processing {
        at: at.clone(),
        message: "dead-lettering: record not found in its batch".into(),
    })
}

/// A table's committed contents from its changelog (read_committed, up to
/// the last stable offset of each partition).
pub(crate) async fn read_changelog(app: &App, def: &TableDef) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let cfg = app.config()?;
    let props = cfg
        .properties
        .clone()
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest");
    let mut consumer = Consumer::connect(ConsumerConfig::from_properties(&props)?).await?;
    let admin = Admin::new(consumer.client().clone());
    let ends = admin
        .list_offsets(&def.changelog, &[], OffsetSpec::Latest, true)
        .await?;
    let mut store = MemoryStore::default();
    let parts: Vec<i32> = ends
        .iter()
        .filter(|(_, &e)| e > 0)
        .map(|(&p, _)| p)
        .collect();
    if !parts.is_empty() {
        consumer
            .assign(&def.changelog, &parts, Offset::Beginning)
            .await?;
        let topic: Arc<str> = Arc::from(&*def.changelog);
        let behind = |c: &Consumer| {
            parts.iter().any(|&p| {
                c.position(&TopicPartition {
                    topic: topic.clone(),
                    partition: p,
                })
                .is_none_or(|pos| pos < ends[&p])
            })
        };
        while behind(&consumer) {
            for f in consumer.poll().await? {
                apply_changelog(&mut store, &f)?;
            }
        }
    }
    store.entries()
}

#[cfg(test)]
mod tests {
    use super::{check_take_alone, lock_state_dir, must_rebuild};

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

    #[test]
    fn a_take_agent_must_be_alone_on_its_topic() {
        assert!(check_take_alone([("a", "t", true), ("b", "u", false), ("c", "u", false)]).is_ok());
        let err = check_take_alone([("a", "t", false), ("b", "t", true)])
            .expect_err("take beside another agent")
            .to_string();
        assert!(
            err.contains("agent b") && err.contains("topic t") && err.contains("agents a"),
            "{err}"
        );
    }

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

//! The runtime: runs a [`Topology`] as one member of the app's consumer
//! group.
//!
//! ```text
//! fetch ─▶ dispatch ─▶ agent ─▶ table overlay ─▶ changelog + outputs ─▶ commit ─▶ store
//!  (poll)   (dispatch)           (table)          (task: send_staged)   (commit)   (task)
//! ```
//!
//! - [`setup`]: the state directory, the worker id, topics and
//!   co-partitioning, the clients' settings;
//! - [`task`]: one partition number's state (its table partitions and
//!   staged outputs) and where outputs go;
//! - [`dispatch`]: batches to agents, `take`, the error policy, dead letters;
//! - [`commit`]: the pure commit machine (at-least-once, exactly-once);
//! - [`rebalance`]: the listener, the driver of the commit machine's
//!   producer actions, task ownership through rebalances;
//! - [`restore`]: recovery, standbys and changelog reads.
//!
//! The loop: poll; apply what the rebalance listener queued, in order
//! (write stores, roll back, rewind, open and close tasks); dispatch the
//! fetched batches; commit every `commit.interval.ms`; on shutdown commit,
//! leave the group and close.

pub(crate) mod commit;
pub(crate) mod dispatch;
pub(crate) mod global;
mod health;
pub(crate) mod order;
pub(crate) mod query;
pub(crate) mod rebalance;
pub(crate) mod restore;
pub(crate) mod setup;
pub(crate) mod task;

use std::collections::BTreeMap;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use faustus_wire::consumer::{Fetched, Offset, TopicPartition};
use faustus_wire::group::{GroupConfig, GroupConsumer};
use faustus_wire::producer::{Producer, ProducerConfig, TransactionalProducer};
use faustus_wire::{Admin, Client, ClientConfig};

use self::commit::{CommitAction, CommitEvent};
use self::dispatch::{Dispatcher, Progress};
use self::rebalance::{Change, Listener, Outputs, Ownership, Shared, TaskChanges};
use self::restore::{Opened, Restorer};
use self::task::{set_wall_clock, wall_clock_ms, write_overlays, TaskCtx, Tasks};
use crate::config::Guarantee;
use crate::error::{Error, Result};
use crate::topology::Topology;

struct Worker<'t> {
    /// The app's tables, as the topology froze them.
    tables: &'t [crate::table::TableDef],
    /// Follows the global tables' topics.
    global: Option<global::GlobalFollower>,
    /// The global tables' stores, handed to every task.
    globals: crate::global::Globals,
    shared: Arc<Shared>,
    consumer: GroupConsumer<Listener>,
    restorer: Restorer<'t>,
    dispatcher: Dispatcher,
    tasks: Tasks,
    ownership: Ownership,
    commit_interval: Duration,
    /// How long a restore step may take between polls.
    restore_budget: Duration,
    /// A task began restoring: commit what is processed first.
    commit_before_restoring: bool,
    processed: u64,
    /// What the worker is doing, for the error when shutdown.timeout.ms
    /// passes.
    doing: std::rc::Rc<std::cell::Cell<&'static str>>,
    /// Partitions owned now, for the unreachable warning.
    owned: std::rc::Rc<std::cell::Cell<usize>>,
    lag: BTreeMap<TopicPartition, i64>,
    /// Joined inputs paused because a task holds too much of them.
    held_paused: std::collections::BTreeSet<TopicPartition>,
    /// The app's timers and when each is next due.
    timers: crate::timer::Timers,
    /// Health and metrics: what the web server answers from (with
    /// `web.port`) and the stall watchdog reads.
    web: Arc<crate::web::WebState>,
    /// The remaining-records gauges of the restorations the metrics show
    /// under way.
    restoring_shown: Vec<prometheus_client::metrics::gauge::Gauge>,
    last_health_check: Instant,
    /// Table queries from the web server.
    queries: Option<tokio::sync::mpsc::UnboundedReceiver<crate::web::Query>>,
    /// The partitions of the app's topics.
    partitions: i32,
    /// KIP-848 groups with a web server: tells the directory topic which
    /// partitions this worker got.
    announce: Option<Announcer>,
    /// The tables' cache budget (`cache.max.bytes`; `None`: no cache).
    cache: Option<Rc<crate::table::CacheBudget>>,
}

/// Writes this worker's web address into the directory topic for each
/// partition it is assigned (what classic groups carry in user data).
struct Announcer {
    producer: Producer,
    topic: String,
    me: String,
}

impl Announcer {
    async fn assigned(&self, tps: &[TopicPartition]) -> Result<()> {
        let parts: std::collections::BTreeSet<i32> = tps.iter().map(|tp| tp.partition).collect();
        let mut sent = Vec::new();
        for p in parts {
            let rec = faustus_wire::producer::ProducerRecord::new(self.topic.as_str())
                .partition(0)
                .key(p.to_string())
                .value(self.me.clone());
            sent.push(self.producer.send(rec).await?);
        }
        for d in sent {
            d.await?;
        }
        Ok(())
    }
}

/// Runs a worker until `shutdown` resolves (or an error stops it), then
/// commits, leaves the group and returns.
pub(crate) async fn run(topology: &Topology, shutdown: impl Future<Output = ()>) -> Result<()> {
    let cfg = &topology.config;
    let flavor = tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor());
    if flavor.is_ok_and(|f| f == tokio::runtime::RuntimeFlavor::CurrentThread) {
        // The loop (agents, table stores) runs on the thread that awaits
        // it; the client's IO (connections, heartbeats, the producer's
        // sender) runs in spawned tasks, on the runtime's worker threads.
        // With a single thread, a slow store read or write holds all of it.
        tracing::warn!(
            "worker on a current-thread runtime: table stores and the Kafka client's IO \
             share one thread; use the multi-thread runtime (App::main does)"
        );
    }
    let topics = topology.source_topics();
    if topics.is_empty() {
        return Err(Error::Config("the app has no agents".into()));
    }
    let state_dir = cfg.state_dir.join(&cfg.app_id);
    // Held until this function returns: the directory is ours meanwhile.
    let _lock = setup::lock_state_dir(&state_dir)?;
    let client = Client::connect(ClientConfig::from_properties(&cfg.properties)?).await?;
    let admin = Admin::new(client.clone());
    let partitions = setup::create_topics(topology, &admin).await?;
    let id = setup::worker_id(&state_dir)?;
    let props = setup::client_props(cfg, &id);
    let outputs = match cfg.guarantee {
        Guarantee::ExactlyOnce => {
            let p =
                TransactionalProducer::connect(ProducerConfig::from_properties(&props)?).await?;
            p.init_transactions().await?;
            Outputs::Exactly(p)
        }
        Guarantee::AtLeastOnce => {
            Outputs::AtLeast(Producer::connect(ProducerConfig::from_properties(&props)?).await?)
        }
    };
    // One table cache for the worker's tasks (`cache.max.bytes`).
    let cache =
        crate::table::CacheBudget::new(cfg.cache_max_bytes).filter(|_| !topology.tables.is_empty());
    let shared = Arc::new(Shared::new(outputs, cache.is_some()));
    let mut group_cfg = GroupConfig::from_properties(&props)?;
    // Well inside `max.poll.interval.ms`: a poll runs beside each step.
    let restore_budget =
        (group_cfg.max_poll_interval / 5).clamp(Duration::from_millis(50), Duration::from_secs(1));
    // Global tables reach their topics' ends before the worker joins: its
    // agents never read an older table than the one at its start.
    let global = global::GlobalFollower::restore(&topology.globals, cfg, client.clone()).await?;
    let globals = global
        .as_ref()
        .map_or_else(Default::default, |g| g.stores.clone());
    // Health and metrics are kept whether or not they are served: the
    // stall warning needs them.
    let state = Arc::new(crate::web::WebState::new(cfg.health_stall));
    let mut announce = None;
    tokio::spawn(crate::web::watch_stalls(Arc::downgrade(&state)));
    if let Some(port) = cfg.web_port {
        let addr =
            crate::web::serve(state.clone(), &cfg.web_bind, port, topology.pages.clone()).await?;
        let me = match &cfg.application_server {
            Some(a) => a.clone(),
            None if addr.ip().is_unspecified() => {
                return Err(Error::Config(format!(
                    "web.bind={}: set application.server to the host:port other workers reach this one at",
                    cfg.web_bind
                )))
            }
            None => addr.to_string(),
        };
        tracing::info!(%addr, advertised = %me, "web server listening");
        // Other members find this worker's tables here: in its
        // subscription, or (KIP-848 groups) in the directory topic.
        group_cfg.user_data = Some(format!("{}{me}", crate::web::WEB_USER_DATA).into());
        let directory = if group_cfg.protocol == faustus_wire::group::GroupProtocol::Consumer {
            let topic = crate::web::directory_topic(&cfg.app_id);
            admin
                .create_topic(
                    faustus_wire::NewTopic::new(&topic, 1, cfg.replication_factor)
                        .config("cleanup.policy", "compact"),
                    true,
                )
                .await?;
            let producer = Producer::connect(ProducerConfig::from_properties(
                &cfg.properties.clone().set("acks", "all"),
            )?)
            .await?;
            announce = Some(Announcer {
                producer,
                topic: topic.clone(),
                me: me.clone(),
            });
            Some((topic, cfg.properties.clone()))
        } else {
            None
        };
        let _ = state.directory.set(crate::web::Directory::new(
            admin.clone(),
            group_cfg.group_id.clone(),
            topics.iter().map(|t| t.to_string()).collect(),
            me,
            directory,
        ));
    }
    let queries = cfg.web_port.and_then(|_| {
        state
            .query_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    });
    let web = state;
    let consumer = GroupConsumer::subscribe(group_cfg, &topics, Listener(shared.clone())).await?;
    shared.set_group_metadata(consumer.metadata_handle());
    tracing::info!(app = %cfg.app_id, worker = %id, guarantee = ?cfg.guarantee, ?topics, "worker starting");
    let mut w = Worker {
        tables: &topology.tables,
        global,
        globals,
        restorer: Restorer::new(&topology.tables, cfg, client, partitions, cache.clone())?,
        cache,
        dispatcher: Dispatcher::new(
            topology.agents.clone(),
            topology.ordered.clone(),
            order::TaskIdle::from_ms(cfg.max_task_idle_ms),
        ),
        held_paused: std::collections::BTreeSet::new(),
        timers: crate::timer::Timers::new(&topology.timers, wall_clock_ms()),
        web,
        restoring_shown: Vec::new(),
        last_health_check: Instant::now(),
        queries,
        partitions,
        announce,
        shared,
        consumer,
        tasks: Tasks::new(),
        ownership: Ownership::default(),
        commit_interval: cfg.commit_interval,
        restore_budget,
        commit_before_restoring: false,
        processed: 0,
        doing: std::rc::Rc::new(std::cell::Cell::new("starting")),
        owned: std::rc::Rc::new(std::cell::Cell::new(0)),
        lag: BTreeMap::new(),
    };
    // The loop checks `stop` between steps; once the signal has come, the
    // worker has shutdown.timeout.ms to commit and leave, however long a
    // step it is in takes (a commit to an unreachable cluster retries for
    // minutes).
    let stop = std::cell::Cell::new(false);
    let doing = w.doing.clone();
    let owned = w.owned.clone();
    let work = async {
        let result = w.run_loop(&stop).await;
        w.finish(result).await
    };
    tokio::pin!(work);
    tokio::pin!(shutdown);
    // The unreachable warning runs beside the loop, not in it: a loop
    // blocked in a step (rejoining the group while no broker answers) must
    // not silence it.
    let watch = warn_while_unreachable(doing.clone(), owned);
    tokio::pin!(watch);
    tokio::select! {
        done = &mut work => return done,
        () = &mut shutdown => stop.set(true),
        () = &mut watch => unreachable!("the watch never ends"),
    }
    tracing::info!(
        timeout_ms = cfg.shutdown_timeout.as_millis() as u64,
        "shutting down: committing and leaving the group"
    );
    let timeout = cfg.shutdown_timeout;
    match tokio::time::timeout(timeout, &mut work).await {
        Ok(done) => done,
        Err(_) => {
            let doing = doing.get().to_owned();
            tracing::error!(doing = %doing, "shutdown.timeout.ms passed; stopping without committing");
            Err(Error::ShutdownTimeout {
                doing,
                after: timeout,
            })
        }
    }
}

/// Every half second, checks whether any broker has answered; once none has
/// for [`health::SILENT_AFTER`], warns every [`health::WARN_EVERY`] what the
/// worker is waiting for. Never ends.
async fn warn_while_unreachable(
    doing: std::rc::Rc<std::cell::Cell<&'static str>>,
    owned: std::rc::Rc<std::cell::Cell<usize>>,
) {
    let mut silence = health::Silence::new(Instant::now());
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let brokers = faustus_wire::stats::snapshot();
        let answers = brokers.iter().map(|b| b.responses).sum();
        if let Some(silent) = silence.observe(answers, Instant::now()) {
            let waiting: Vec<String> = brokers
                .iter()
                .filter(|b| b.in_flight > 0)
                .map(|b| format!("{} ({} requests unanswered)", b.broker, b.in_flight))
                .collect();
            tracing::warn!(
                silent_s = silent.as_secs(),
                doing = doing.get(),
                waiting_on = %if waiting.is_empty() { "reconnecting".to_owned() } else { waiting.join(", ") },
                partitions = owned.get(),
                "Kafka cluster unreachable: no broker has answered for {}s; \
                 fetching, committing and the group wait for it to come back",
                silent.as_secs()
            );
        }
    }
}

impl Worker<'_> {
    async fn run_loop(&mut self, stop: &std::cell::Cell<bool>) -> Result<()> {
        let mut last_commit = Instant::now();
        let mut last_report = Instant::now();
        loop {
            if stop.get() {
                return Ok(());
            }
            self.doing.set("polling the cluster");
            // Restoring tasks catch up while the consumer polls: neither
            // waits for the other, and polls keep their pace. Table queries
            // are answered meanwhile.
            // Revocations happen in polls: the listener holds one back
            // while the caches hold changes (flushed below).
            self.shared.set_cache_dirty(self.cache_dirty());
            let (fetched, restored) = self.poll_and_answer().await;
            let (fetched, restored) = (fetched?, restored?);
            for gap in self.consumer.take_gaps() {
                // The wire consumer has logged it; count it.
                let labels = crate::web::PartitionLabels {
                    topic: gap.topic.clone(),
                    partition: i64::from(gap.partition),
                };
                self.web
                    .metrics
                    .input_lost
                    .get_or_create(&labels)
                    .inc_by(gap.offsets() as u64);
            }
            for (p, task) in restored {
                self.tasks
                    .insert(p, Rc::new(task.with_globals(self.globals.clone())));
                self.set_paused(p, false);
            }
            if !self.apply_changes().await? {
                // Rewound: what this poll returned is read again.
                continue;
            }
            if self.shared.take_revocation_held() {
                // The next poll revokes and commits what is processed:
                // nothing more is processed before it.
                self.flush_caches().await?;
                continue;
            }
            if std::mem::take(&mut self.commit_before_restoring) {
                self.commit().await?;
            }
            let consumer = &self.consumer;
            let held_ready = self
                .dispatcher
                .ordered_ready(&|tp| consumer.lag(tp), Instant::now());
            if !fetched.is_empty() || held_ready {
                self.process(fetched).await?;
            }
            self.flush_gathered(false).await?;
            self.tick_wall_clock().await?;
            self.run_timers().await?;
            if self.cache.as_ref().is_some_and(|c| c.full()) {
                self.flush_caches().await?;
            }
            let owned: std::collections::BTreeSet<i32> = self
                .tasks
                .keys()
                .copied()
                .chain(self.restorer.restoring())
                .collect();
            self.restorer.standby_step(|p| owned.contains(&p)).await?;
            if let Some(g) = &mut self.global {
                g.step().await?;
            }
            self.report_health();
            if last_commit.elapsed() >= self.commit_interval {
                self.commit().await?;
                last_commit = Instant::now();
            }
            if last_report.elapsed() >= Duration::from_secs(10) {
                let lag: i64 = self.lag.values().sum();
                let dropped: u64 = self.tasks.values().map(|t| t.dropped.get()).sum();
                tracing::info!(processed = self.processed, lag, dropped, tasks = ?self.tasks.keys().collect::<Vec<_>>(), "progress");
                last_report = Instant::now();
            }
        }
    }

    /// Polls and takes a restore step, answering the web server's table
    /// queries while they run; those a standby may answer wait for the
    /// end (the restorer keeps the standbys).
    async fn poll_and_answer(
        &mut self,
    ) -> (
        faustus_wire::Result<Vec<Fetched>>,
        Result<Vec<(i32, task::TaskCtx)>>,
    ) {
        let restoring: std::collections::BTreeSet<i32> = self.restorer.restoring().collect();
        let consumer = &mut self.consumer;
        let restorer = &mut self.restorer;
        let budget = self.restore_budget;
        let work = async { tokio::join!(consumer.poll(), restorer.restore_step(budget)) };
        let Some(rx) = self.queries.as_mut() else {
            return work.await;
        };
        let local = query::Local {
            tables: self.tables,
            tasks: &self.tasks,
            restoring: &|p| restoring.contains(&p),
            standby: &|_, _| None,
            partitions: self.partitions,
        };
        let mut for_standby = Vec::new();
        let out = {
            tokio::pin!(work);
            loop {
                tokio::select! {
                    done = &mut work => break done,
                    Some(q) = rx.recv() => {
                        let answer = query::answer(&local, &q.request);
                        let standby = matches!(q.request, crate::web::TableRequest::Get { standby: true, .. });
                        if standby && matches!(answer, crate::web::Answer::Elsewhere { .. } | crate::web::Answer::Restoring { .. }) {
                            for_standby.push(q);
                        } else {
                            let _ = q.reply.send(answer);
                        }
                    }
                }
            }
        };
        let restorer = &self.restorer;
        let local = query::Local {
            standby: &|t, p| restorer.standby_store(t, p),
            ..local
        };
        for q in for_standby {
            let _ = q.reply.send(query::answer(&local, &q.request));
        }
        out
    }

    /// Commits, leaves the group, closes the producer.
    async fn finish(mut self, result: Result<()>) -> Result<()> {
        self.doing.set("committing before leaving the group");
        if result.is_ok() {
            self.flush_gathered(true).await?;
            self.commit().await?;
        } else {
            // Exactly-once: nothing of the failed run may commit, now or
            // while the consumer leaves. The run's error is what matters.
            match self.shared.drive(CommitEvent::Failed).await {
                Ok(rest) => {
                    if let Err(e) = self.act(rest).await {
                        tracing::warn!(error = %e, "rolling back failed");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "aborting the transaction failed"),
            }
        }
        self.doing.set("leaving the group");
        let closed = self.consumer.close().await;
        result?;
        closed?;
        // The listener may have made state durable while leaving.
        for change in self.shared.take_changes()? {
            if let Change::Act(CommitAction::WriteStores) = change {
                write_overlays(&self.tasks).await?;
            }
        }
        self.tasks.clear();
        if let Ok(shared) = Arc::try_unwrap(self.shared) {
            shared.close().await?;
        }
        tracing::info!(processed = self.processed, "worker stopped");
        Ok(())
    }

    /// Carries out what the commit machine left for the loop. Returns false
    /// when the consumer was rewound (the records of the current poll are
    /// stale).
    async fn act(&mut self, actions: Vec<CommitAction>) -> Result<bool> {
        let mut fresh = true;
        for action in actions {
            match action {
                CommitAction::WriteStores => write_overlays(&self.tasks).await?,
                CommitAction::CommitOffsets(offsets) => {
                    let ok = match self.consumer.commit_offsets(&offsets).await {
                        Ok(()) => true,
                        Err(e) => {
                            // A rebalance under way: the revocation commits,
                            // or the next interval.
                            tracing::warn!(error = %e, "offset commit failed");
                            false
                        }
                    };
                    self.shared
                        .note(CommitEvent::OffsetsCommitted { offsets, ok });
                }
                CommitAction::RollBack => {
                    self.web.metrics.rollbacks.inc();
                    self.dispatcher.clear();
                    for t in self.tasks.values() {
                        t.roll_back();
                    }
                }
                CommitAction::Rewind => {
                    self.rewind().await?;
                    fresh = false;
                }
                other => {
                    return Err(Error::Config(format!(
                        "internal: commit action {other:?} reached the loop"
                    )))
                }
            }
        }
        Ok(fresh)
    }

    /// Acts on what the listener queued, in order. Returns false when the
    /// consumer was rewound.
    async fn apply_changes(&mut self) -> Result<bool> {
        let mut fresh = true;
        // Tasks closed by these changes, until the end of them: one
        // assigned again meanwhile reopens with its stores.
        let mut closed = BTreeMap::new();
        let changes = self.shared.take_changes()?;
        if changes.is_empty() {
            return Ok(fresh);
        }
        for change in changes {
            let tasks = match change {
                Change::Act(action) => {
                    fresh &= self.act(vec![action]).await?;
                    continue;
                }
                Change::Assigned(tps) => {
                    self.web.metrics.rebalances.inc();
                    if let Some(a) = &self.announce {
                        // Queries for these partitions answer 503 meanwhile.
                        if let Err(e) = a.assigned(&tps).await {
                            tracing::warn!(error = %e, topic = %a.topic, "announcing this worker's partitions failed");
                        }
                    }
                    self.ownership.assign(&tps)
                }
                Change::Revoked(tps) | Change::Lost(tps) => {
                    for tp in &tps {
                        self.lag.remove(tp);
                    }
                    self.dispatcher.forget(&tps);
                    self.ownership.remove(&tps)
                }
            };
            self.change_tasks(tasks, &mut closed).await?;
        }
        for p in closed.into_keys() {
            tracing::info!(partition = p, "task closed");
        }
        // Source partitions of a task being restored wait for it (also
        // those assigned after its restoration began).
        let restoring: Vec<i32> = self.restorer.restoring().collect();
        for p in restoring {
            self.set_paused(p, true);
        }
        Ok(fresh)
    }

    async fn change_tasks(
        &mut self,
        changes: TaskChanges,
        closed: &mut BTreeMap<i32, Rc<TaskCtx>>,
    ) -> Result<()> {
        for p in changes.close {
            self.restorer.cancel(p);
            if let Some(task) = self.tasks.remove(&p) {
                closed.insert(p, task);
            }
        }
        for p in changes.open {
            let kept = closed
                .remove(&p)
                .and_then(|t| Rc::try_unwrap(t).ok())
                .map(TaskCtx::into_stores);
            if kept.is_some() {
                tracing::info!(
                    partition = p,
                    "task revoked and assigned again: checking its stores against the changelogs"
                );
            }
            match self.restorer.open_task(p, kept).await? {
                Opened::Ready(task) => {
                    self.tasks
                        .insert(p, Rc::new(task.with_globals(self.globals.clone())));
                }
                Opened::Restoring => self.commit_before_restoring = true,
            }
        }
        Ok(())
    }

    /// Pauses (or resumes) fetching the owned source partitions of
    /// partition number `p`.
    fn set_paused(&mut self, p: i32, paused: bool) {
        for tp in self.ownership.owned().filter(|tp| tp.partition == p) {
            if paused {
                self.consumer.pause(tp);
            } else {
                self.consumer.resume(tp);
            }
        }
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
        self.dispatcher.clear();
        Ok(())
    }

    /// Records how far each partition got.
    fn progressed(&mut self, progress: Vec<Progress>) {
        for ((i, tp), n) in std::mem::take(&mut *self.dispatcher.handed.borrow_mut()) {
            let labels = crate::web::AgentLabels {
                agent: self.dispatcher.agent_name(i).to_owned(),
                topic: tp.topic.to_string(),
                partition: i64::from(tp.partition),
            };
            self.web
                .metrics
                .agent_records
                .get_or_create(&labels)
                .inc_by(n);
        }
        for p in progress {
            self.processed += p.records;
            let lag = self.lag.get(&p.tp).copied();
            self.web
                .progressed(&p.tp.topic, p.tp.partition, p.records, lag);
            self.shared.note(CommitEvent::Processed {
                tp: p.tp,
                next: p.at,
            });
        }
    }

    async fn begin(&mut self) -> Result<()> {
        let rest = self.shared.drive(CommitEvent::Processing).await?;
        self.act(rest).await?;
        Ok(())
    }

    /// Feeds one poll's batches to the agents.
    async fn process(&mut self, mut fetched: Vec<Fetched>) -> Result<()> {
        // A poll that assigned a partition may have fetched from it before
        // its task was restoring and paused: read those records again once
        // the task is ready.
        let mut early = Vec::new();
        fetched.retain(|f| {
            let waiting = self.restorer.is_restoring(f.partition());
            if waiting {
                early.push((f.topic_partition().clone(), f.start_offset()));
            }
            !waiting
        });
        for (tp, from) in early {
            self.consumer.seek(&tp, Offset::At(from))?;
        }
        self.begin().await?;
        set_wall_clock(&self.tasks, wall_clock_ms());
        for f in &fetched {
            // Known before the agents run: one that never returns leaves
            // its partition with records to read, which health reports.
            let lag = f.high_watermark() - f.start_offset();
            self.web.progressed(f.topic(), f.partition(), 0, Some(lag));
            self.lag.insert(
                f.topic_partition().clone(),
                f.high_watermark() - f.next_offset(),
            );
        }
        let consumer = &self.consumer;
        let progress = self
            .dispatcher
            .process(&self.tasks, fetched, &*self.shared, Instant::now(), &|tp| {
                consumer.lag(tp)
            })
            .await?;
        self.progressed(progress);
        self.pause_held();
        self.run_stream_timers().await
    }

    /// Runs the stream-time timers whose tasks' stream time passed their
    /// next multiple (inside the transaction the processing opened).
    async fn run_stream_timers(&mut self) -> Result<()> {
        if self.timers.stream.is_empty() {
            return Ok(());
        }
        for rec in self.timers.run_stream_due(&self.tasks).await? {
            task::Sink::send(&*self.shared, rec).await?;
        }
        for t in self.tasks.values() {
            task::send_staged(t, &*self.shared).await?;
        }
        Ok(())
    }

    /// Pauses the joined inputs a task holds too much of (it waits for the
    /// others), and resumes those it has worked through.
    fn pause_held(&mut self) {
        let full = self.dispatcher.over_full();
        // Paused again each time: a task's restoration may have resumed it.
        for tp in &full {
            self.consumer.pause(tp);
        }
        for tp in self.held_paused.difference(&full) {
            if !self.restorer.is_restoring(tp.partition) {
                self.consumer.resume(tp);
            }
        }
        self.held_paused = full;
    }

    /// Whether the tables' caches hold changes no changelog record carries.
    fn cache_dirty(&self) -> bool {
        self.cache.as_ref().is_some_and(|c| c.used() > 0)
    }

    /// Sends each cached table change's latest value to its changelog
    /// (inside the open transaction under exactly-once).
    async fn flush_caches(&mut self) -> Result<()> {
        if !self.cache_dirty() {
            return Ok(());
        }
        for t in self.tasks.values() {
            for part in &t.tables {
                part.borrow_mut().flush_cache();
            }
            task::send_staged(t, &*self.shared).await?;
        }
        Ok(())
    }

    /// Calls the `take` agents whose gathering is due (all with `all`).
    async fn flush_gathered(&mut self, all: bool) -> Result<()> {
        let now = Instant::now();
        if !self.dispatcher.gathering_due(all, now) {
            return Ok(());
        }
        self.begin().await?;
        let progress = self
            .dispatcher
            .flush_gathered(&self.tasks, &*self.shared, all, now)
            .await?;
        self.progressed(progress);
        Ok(())
    }

    /// Closes the windows due by the wall clock (tables that close by it).
    async fn tick_wall_clock(&mut self) -> Result<()> {
        let now = wall_clock_ms();
        if !task::wall_clock_due(&self.tasks, self.tables, now) {
            return Ok(());
        }
        self.begin().await?;
        task::tick_wall_clock(&self.tasks, self.tables, now, &*self.shared).await
    }

    /// Runs the timers that are due (the leader's only on the worker that
    /// owns partition 0), inside the open transaction under exactly-once,
    /// and produces what they sent and wrote.
    async fn run_timers(&mut self) -> Result<()> {
        let now = wall_clock_ms();
        if !self.timers.due(now) {
            return Ok(());
        }
        self.begin().await?;
        let leader = self.tasks.contains_key(&0);
        let sent = self.timers.run_due(now, &self.tasks, leader).await?;
        for rec in sent {
            task::Sink::send(&*self.shared, rec).await?;
        }
        for t in self.tasks.values() {
            task::send_staged(t, &*self.shared).await?;
        }
        Ok(())
    }

    /// Keeps the web server's view current (readiness, assignment,
    /// dropped records) and warns, once, about each partition that stalls.
    fn report_health(&mut self) {
        if self.last_health_check.elapsed() < Duration::from_millis(500) {
            return;
        }
        self.last_health_check = Instant::now();
        self.owned.set(self.ownership.owned().count());
        let web = &self.web;
        let owned: Vec<(String, i32)> = self
            .ownership
            .owned()
            .map(|tp| (tp.topic.to_string(), tp.partition))
            .collect();
        let restoring = self.restorer.restoring().count();
        web.metrics.restoring.set(restoring as i64);
        web.metrics
            .dropped
            .set(self.tasks.values().map(|t| t.dropped.get() as i64).sum());
        web.metrics
            .skipped
            .set(self.dispatcher.skipped.get() as i64);
        web.metrics
            .dead_lettered
            .set(self.dispatcher.dead_lettered.get() as i64);
        web.set_ready(!owned.is_empty() && restoring == 0);
        web.assigned(owned);
        let m = &web.metrics;
        let ordering = std::sync::atomic::Ordering::Relaxed;
        crate::web::raise(&m.send_errors, self.shared.send_errors.load(ordering));
        crate::web::raise(&m.aborts, self.shared.aborts.load(ordering));
        for (&p, t) in &self.tasks {
            for part in &t.tables {
                let Ok(part) = part.try_borrow() else {
                    continue;
                };
                if let Some(w) = &part.window {
                    let labels = crate::web::TableLabels {
                        table: part.name.clone(),
                        partition: i64::from(p),
                    };
                    m.late.get_or_create(&labels).set(w.dropped as i64);
                }
            }
        }
        // Finished restorations read as none remaining.
        for g in self.restoring_shown.drain(..) {
            g.set(0);
        }
        for r in self.restorer.progress() {
            let labels = crate::web::TableLabels {
                table: r.table,
                partition: i64::from(r.partition),
            };
            m.restored.get_or_create(&labels).set(r.restored as i64);
            let remaining = m.restore_remaining.get_or_create(&labels).clone();
            remaining.set(r.remaining);
            self.restoring_shown.push(remaining);
        }
    }

    /// Commits (see [`commit`]).
    async fn commit(&mut self) -> Result<()> {
        let before = self.doing.replace(
            "committing (flushing outputs and changelogs, then the offsets or the transaction)",
        );
        let started = Instant::now();
        self.flush_caches().await?;
        let span = tracing::debug_span!("commit", processed = self.processed);
        let rest =
            tracing::Instrument::instrument(self.shared.drive(CommitEvent::Commit), span.clone())
                .await?;
        tracing::Instrument::instrument(self.act(rest), span).await?;
        tracing::debug!(ms = started.elapsed().as_millis() as u64, "committed");
        self.web.metrics.commits.inc();
        self.web
            .metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        self.doing.set(before);
        Ok(())
    }
}

//! The worker's web server (`web.port`): liveness, readiness and metrics.
//!
//! - `GET /health`: 200 while every assigned partition with records to read
//!   has made progress within `health.stall.ms` (default 60 s); else 503
//!   with a JSON list of the stalled partitions and their lag. The worker
//!   also logs a warning the moment a partition stalls. This is the alarm
//!   Faust never had ("Stream has not started processing TP…").
//! - `GET /ready`: 200 once the worker has its partitions and none is
//!   being restored; 503 before.
//! - `GET /metrics`: Prometheus text format, names prefixed `faustus_`.
//! - `GET /tables/{table}/{key}`: the key's value as JSON (a windowed
//!   table: its windows), 404 for a missing key. Asked of any worker: one
//!   that does not own the key's partition forwards the query to the one
//!   that does (each member advertises its `application.server` in its
//!   group subscription's user data) and relays the answer; 503 with a
//!   JSON error while the partition is restored or has no owner.
//!   `?standby=true` lets a worker answer from its standby replica.
//! - `GET /tables/{table}?limit=N&after=CURSOR`: a page of the entries of
//!   the partitions this worker owns, with the cursor of the next page.
//! - the app's own pages ([`App::page`](crate::App::page)).
//!
//! The worker's loop updates a [`WebState`] shared with the server (which
//! runs on the runtime's other threads); whether a partition stalled is
//! decided by [`stalled`], pure.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::error::{Error, Result};

/// A partition's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PartitionLabels {
    pub(crate) topic: String,
    pub(crate) partition: i64,
}

/// An agent's input partition's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct AgentLabels {
    pub(crate) agent: String,
    pub(crate) topic: String,
    pub(crate) partition: i64,
}

/// A table partition's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TableLabels {
    pub(crate) table: String,
    pub(crate) partition: i64,
}

/// A broker's label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct BrokerLabels {
    pub(crate) broker: String,
}

/// The worker's metrics.
pub(crate) struct Metrics {
    /// Records handed to each agent, per input partition.
    pub(crate) agent_records: Family<AgentLabels, Counter>,
    /// Changelog records applied while restoring, per table partition.
    pub(crate) restored: Family<TableLabels, Gauge>,
    /// Changelog offsets still to restore, per table partition.
    pub(crate) restore_remaining: Family<TableLabels, Gauge>,
    /// Records windowed tables dropped for closed windows, per table
    /// partition (while this worker has it).
    pub(crate) late: Family<TableLabels, Gauge>,
    /// Producer sends and flushes that failed.
    pub(crate) send_errors: Counter,
    /// Transactions aborted.
    pub(crate) aborts: Counter,
    /// The Kafka client's requests awaiting a response, per broker.
    pub(crate) wire_in_flight: Family<BrokerLabels, Gauge>,
    /// Responses received, per broker.
    pub(crate) wire_responses: Family<BrokerLabels, Counter>,
    /// The time responses took, summed, per broker (s).
    pub(crate) wire_response_seconds:
        Family<BrokerLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    /// Records handed to agents, per input partition.
    pub(crate) processed: Family<PartitionLabels, Counter>,
    /// Input offsets skipped because their records were deleted
    /// (retention) before they were read, per input partition.
    pub(crate) input_lost: Family<PartitionLabels, Counter>,
    /// Records past the committed position, per input partition, as the
    /// last fetch told.
    pub(crate) lag: Family<PartitionLabels, Gauge>,
    /// Commits (offsets or transactions).
    pub(crate) commits: Counter,
    /// Rebalances this worker took part in (assignments received).
    pub(crate) rebalances: Counter,
    /// Partitions assigned now.
    pub(crate) assigned: Gauge,
    /// Tasks being restored now.
    pub(crate) restoring: Gauge,
    /// Records joins skipped (no key, no value).
    pub(crate) dropped: Gauge,
    /// Records agents' error policies skipped, and dead-lettered.
    pub(crate) skipped: Gauge,
    pub(crate) dead_lettered: Gauge,
    /// Roll-backs (an aborted transaction, a failed flush).
    pub(crate) rollbacks: Counter,
    /// How long commits take (s).
    pub(crate) commit_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            agent_records: Family::default(),
            restored: Family::default(),
            restore_remaining: Family::default(),
            late: Family::default(),
            send_errors: Counter::default(),
            aborts: Counter::default(),
            wire_in_flight: Family::default(),
            wire_responses: Family::default(),
            wire_response_seconds: Family::default(),
            processed: Family::default(),
            input_lost: Family::default(),
            lag: Family::default(),
            commits: Counter::default(),
            rebalances: Counter::default(),
            assigned: Gauge::default(),
            restoring: Gauge::default(),
            dropped: Gauge::default(),
            skipped: Gauge::default(),
            dead_lettered: Gauge::default(),
            rollbacks: Counter::default(),
            // 1 ms to about 16 s.
            commit_seconds: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15),
            ),
        }
    }
}

/// What one input partition did last.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Progress {
    /// Records known to be past what was processed.
    pub(crate) lag: i64,
    /// When the partition last moved on (or was assigned).
    pub(crate) since: Instant,
}

/// A table query the web server asks the worker's loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TableRequest {
    /// One key's value; `standby`: a standby replica may answer.
    Get {
        table: String,
        key: String,
        standby: bool,
    },
    /// A page of the local partitions' entries.
    List {
        table: String,
        after: Option<String>,
        limit: usize,
    },
}

impl TableRequest {
    /// The table asked about.
    pub(crate) fn table(&self) -> &str {
        match self {
            TableRequest::Get { table, .. } | TableRequest::List { table, .. } => table,
        }
    }
}

/// The loop's answer to a [`TableRequest`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Answer {
    /// The value (or page) as JSON.
    Found(serde_json::Value),
    /// The key is not in the table.
    Missing,
    /// No table of that name is served.
    NoTable,
    /// The key (or cursor) cannot be read.
    BadKey(String),
    /// Another worker owns the key's partition.
    Elsewhere { partition: i32 },
    /// This worker is restoring the key's partition.
    Restoring { partition: i32 },
    /// Reading the store failed.
    Failed(String),
}

/// A request and where its answer goes.
#[derive(Debug)]
pub(crate) struct Query {
    pub(crate) request: TableRequest,
    pub(crate) reply: tokio::sync::oneshot::Sender<Answer>,
}

/// Finds which worker owns a partition, and the web address it
/// advertises: from the members' subscription user data (classic groups),
/// or from the directory topic where each worker writes, for every
/// partition it is assigned, its address (KIP-848 groups, whose protocol
/// has no user data).
pub(crate) struct Directory {
    pub(crate) admin: faustus_wire::Admin,
    pub(crate) group: String,
    /// The app's source topics (co-partitioned: any of them tells).
    pub(crate) topics: Vec<String>,
    /// This worker's advertised address.
    pub(crate) me: String,
    /// The directory topic (KIP-848 groups), and the client settings to
    /// read it with.
    pub(crate) topic: Option<(String, faustus_wire::Properties)>,
    cache: tokio::sync::Mutex<Option<(Instant, BTreeMap<i32, String>)>>,
}

/// What a member's subscription user data says: `faustus-web=host:port`.
pub(crate) const WEB_USER_DATA: &str = "faustus-web=";

/// The directory topic of an app in a KIP-848 group.
pub(crate) fn directory_topic(app_id: &str) -> String {
    format!("{app_id}-web-directory")
}

impl Directory {
    /// A directory of `group`'s members; `topic`: read owners from this
    /// directory topic instead of the members' user data.
    pub(crate) fn new(
        admin: faustus_wire::Admin,
        group: String,
        topics: Vec<String>,
        me: String,
        topic: Option<(String, faustus_wire::Properties)>,
    ) -> Self {
        Self {
            admin,
            group,
            topics,
            me,
            topic,
            cache: tokio::sync::Mutex::new(None),
        }
    }

    /// The web address of partition `p`'s owner, from a description at
    /// most a second old (`fresh`: described now).
    async fn owner(&self, p: i32, fresh: bool) -> Result<Option<String>> {
        let mut cache = self.cache.lock().await;
        let stale = cache
            .as_ref()
            .is_none_or(|(at, _)| fresh || at.elapsed() > Duration::from_secs(1));
        if stale {
            let owners = match &self.topic {
                None => owners(&self.admin.describe_group(&self.group).await?, &self.topics),
                Some((t, props)) => read_directory(&self.admin, t, props).await?,
            };
            *cache = Some((Instant::now(), owners));
        }
        Ok(cache.as_ref().and_then(|(_, m)| m.get(&p).cloned()))
    }
}

/// The latest address written for each partition in a directory topic.
async fn read_directory(
    admin: &faustus_wire::Admin,
    topic: &str,
    props: &faustus_wire::Properties,
) -> Result<BTreeMap<i32, String>> {
    use faustus_wire::consumer::{Consumer, ConsumerConfig, Offset};
    let end = admin
        .list_offsets(topic, &[0], faustus_wire::OffsetSpec::Latest, false)
        .await?
        .get(&0)
        .copied()
        .unwrap_or(0);
    let mut out = BTreeMap::new();
    if end == 0 {
        return Ok(out);
    }
    let props = props
        .clone()
        .set("fetch.max.wait.ms", "50")
        .set("isolation.level", "read_uncommitted");
    let mut c = Consumer::with_client(
        admin.client().clone(),
        ConsumerConfig::from_properties(&props)?,
    );
    c.assign(topic, &[0], Offset::Beginning).await?;
    let tp = faustus_wire::consumer::TopicPartition {
        topic: topic.into(),
        partition: 0,
    };
    let until = Instant::now() + Duration::from_secs(5);
    while c.position(&tp).is_none_or(|pos| pos < end) {
        if Instant::now() > until {
            return Err(Error::Config(format!(
                "reading {topic}: not at its end within 5 s"
            )));
        }
        for f in c.poll().await? {
            for r in f.records() {
                let r = r?;
                let p = r
                    .key()
                    .and_then(|k| std::str::from_utf8(k).ok()?.parse::<i32>().ok());
                let addr = r.value().and_then(|v| std::str::from_utf8(v).ok());
                if let (Some(p), Some(addr)) = (p, addr) {
                    out.insert(p, addr.to_owned());
                }
            }
        }
    }
    Ok(out)
}

/// Each partition's owner's web address, by the members' assignments and
/// user data.
pub(crate) fn owners(
    desc: &faustus_wire::group::GroupDescription,
    topics: &[String],
) -> BTreeMap<i32, String> {
    let mut out = BTreeMap::new();
    for m in &desc.members {
        let Some(addr) = m
            .user_data
            .as_ref()
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| d.strip_prefix(WEB_USER_DATA))
        else {
            continue;
        };
        for (topic, parts) in &m.assignment {
            if topics.contains(topic) {
                for &p in parts {
                    out.insert(p, addr.to_owned());
                }
            }
        }
    }
    out
}

/// What the server answers from, updated by the worker's loop.
pub(crate) struct WebState {
    registry: Registry,
    pub(crate) metrics: Arc<Metrics>,
    progress: Mutex<BTreeMap<(String, i32), Progress>>,
    ready: Mutex<bool>,
    stall: Duration,
    /// Table queries to the loop, and the loop's end of them (taken once).
    queries: tokio::sync::mpsc::UnboundedSender<Query>,
    pub(crate) query_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Query>>>,
    /// Who owns which partition (set once the worker knows its group).
    pub(crate) directory: std::sync::OnceLock<Directory>,
    scrape: Mutex<()>,
}

impl WebState {
    /// A state whose partitions count as stalled after `stall` without
    /// progress while they have records to read.
    pub(crate) fn new(stall: Duration) -> Self {
        let metrics = Arc::new(Metrics::default());
        let mut registry = Registry::with_prefix("faustus");
        let m = &metrics;
        registry.register(
            "records_processed",
            "Records handed to agents, per input partition",
            m.processed.clone(),
        );
        registry.register(
            "consumer_lag",
            "Records past the processed position, per input partition, as the last fetch told",
            m.lag.clone(),
        );
        registry.register("commits", "Commits made", m.commits.clone());
        registry.register(
            "rebalances",
            "Assignments this worker received",
            m.rebalances.clone(),
        );
        registry.register(
            "assigned_partitions",
            "Input partitions assigned to this worker",
            m.assigned.clone(),
        );
        registry.register(
            "restoring_tasks",
            "Tasks whose tables are being restored",
            m.restoring.clone(),
        );
        registry.register(
            "skipped_records",
            "Records agents' error policies skipped, since the worker started",
            m.skipped.clone(),
        );
        registry.register(
            "dead_lettered_records",
            "Records agents' error policies dead-lettered, since the worker started",
            m.dead_lettered.clone(),
        );
        registry.register(
            "rollbacks",
            "Roll-backs to the last commit (aborted transactions, failed flushes)",
            m.rollbacks.clone(),
        );
        registry.register(
            "commit_seconds",
            "How long commits take",
            m.commit_seconds.clone(),
        );
        registry.register(
            "agent_records",
            "Records handed to each agent, per input partition",
            m.agent_records.clone(),
        );
        registry.register(
            "restored_records",
            "Changelog records applied by the restoration under way, per table partition",
            m.restored.clone(),
        );
        registry.register(
            "restore_remaining_records",
            "Changelog offsets the restoration under way still has to read, per table partition",
            m.restore_remaining.clone(),
        );
        registry.register(
            "input_records_lost",
            "Input offsets skipped because retention deleted their records before they were processed (auto.offset.reset moved past them), per input partition",
            m.input_lost.clone(),
        );
        registry.register(
            "late_records",
            "Records windowed tables dropped for windows already closed (late beyond the grace), per table partition, since this worker got it",
            m.late.clone(),
        );
        registry.register(
            "producer_errors",
            "Producer sends and flushes that failed",
            m.send_errors.clone(),
        );
        registry.register(
            "transaction_aborts",
            "Transactions aborted",
            m.aborts.clone(),
        );
        registry.register(
            "wire_requests_in_flight",
            "The Kafka client's requests awaiting a response, per broker",
            m.wire_in_flight.clone(),
        );
        registry.register(
            "wire_responses",
            "Responses the Kafka client received, per broker",
            m.wire_responses.clone(),
        );
        registry.register(
            "wire_response_seconds",
            "The time those responses took, summed, per broker (divide by wire_responses for the mean)",
            m.wire_response_seconds.clone(),
        );
        registry.register(
            "dropped_records",
            "Records joins skipped (no key or no value), over this worker's tasks",
            m.dropped.clone(),
        );
        let (queries, rx) = tokio::sync::mpsc::unbounded_channel();
        Self {
            registry,
            metrics,
            progress: Mutex::new(BTreeMap::new()),
            ready: Mutex::new(false),
            stall,
            queries,
            query_rx: Mutex::new(Some(rx)),
            directory: std::sync::OnceLock::new(),
            scrape: Mutex::new(()),
        }
    }

    /// Notes a partition's processed position moving on (or its lag).
    pub(crate) fn progressed(&self, topic: &str, partition: i32, records: u64, lag: Option<i64>) {
        let labels = PartitionLabels {
            topic: topic.to_owned(),
            partition: i64::from(partition),
        };
        if records > 0 {
            self.metrics
                .processed
                .get_or_create(&labels)
                .inc_by(records);
        }
        let mut progress = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        let p = progress
            .entry((topic.to_owned(), partition))
            .or_insert(Progress {
                lag: 0,
                since: Instant::now(),
            });
        if records > 0 {
            p.since = Instant::now();
        }
        if let Some(lag) = lag {
            // Records to read again after none: the clock starts now.
            if p.lag <= 0 && lag > 0 {
                p.since = Instant::now();
            }
            p.lag = lag;
            self.metrics.lag.get_or_create(&labels).set(lag);
        }
    }

    /// The partitions assigned now: new ones start their clock, gone ones
    /// are forgotten.
    pub(crate) fn assigned(&self, owned: impl IntoIterator<Item = (String, i32)>) {
        let owned: Vec<(String, i32)> = owned.into_iter().collect();
        self.metrics.assigned.set(owned.len() as i64);
        let mut progress = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        progress.retain(|k, _| owned.contains(k));
        for k in owned {
            progress.entry(k).or_insert(Progress {
                lag: 0,
                since: Instant::now(),
            });
        }
    }

    /// Whether the worker is ready (has its partitions, restores nothing).
    pub(crate) fn set_ready(&self, ready: bool) {
        *self.ready.lock().unwrap_or_else(|e| e.into_inner()) = ready;
    }

    /// The partitions stalled now.
    pub(crate) fn stalled_now(&self) -> Vec<((String, i32), i64)> {
        let progress = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        stalled(&progress, Instant::now(), self.stall)
    }

    fn metrics_text(&self) -> String {
        // One scrape at a time raises the wire counters.
        let _one = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        for b in faustus_wire::stats::snapshot() {
            let l = BrokerLabels { broker: b.broker };
            self.metrics
                .wire_in_flight
                .get_or_create(&l)
                .set(b.in_flight);
            raise(&self.metrics.wire_responses.get_or_create(&l), b.responses);
            let secs = self.metrics.wire_response_seconds.get_or_create(&l);
            let delta = b.latency_seconds - secs.get();
            if delta > 0.0 {
                secs.inc_by(delta);
            }
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Warns, once, about each partition the moment it stalls (and again if
/// it stalls again after moving on), until the state is dropped. Runs
/// apart from the worker's loop: an agent that never returns holds the
/// loop, not this.
pub(crate) async fn watch_stalls(state: std::sync::Weak<WebState>) {
    let mut warned: Vec<(String, i32)> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let Some(s) = state.upgrade() else { return };
        let stalled = s.stalled_now();
        for ((topic, partition), lag) in &stalled {
            if !warned.iter().any(|(t, p)| t == topic && p == partition) {
                tracing::warn!(%topic, partition, lag, stall_ms = s.stall.as_millis() as u64, "partition stalled: records to read and no progress within health.stall.ms");
            }
        }
        warned = stalled.into_iter().map(|(k, _)| k).collect();
    }
}

/// Raises a counter to `total` (a total kept elsewhere).
pub(crate) fn raise(c: &Counter, total: u64) {
    let now = c.get();
    if total > now {
        c.inc_by(total - now);
    }
}

/// The partitions with records to read that have not moved on within
/// `stall` of `now`, with their lag.
pub(crate) fn stalled(
    progress: &BTreeMap<(String, i32), Progress>,
    now: Instant,
    stall: Duration,
) -> Vec<((String, i32), i64)> {
    progress
        .iter()
        .filter(|(_, p)| p.lag > 0 && now.saturating_duration_since(p.since) >= stall)
        .map(|(k, p)| (k.clone(), p.lag))
        .collect()
}

/// A JSON response.
type Reply = (
    axum::http::StatusCode,
    [(axum::http::HeaderName, &'static str); 1],
    String,
);

fn reply(status: u16, body: serde_json::Value) -> Reply {
    (
        axum::http::StatusCode::from_u16(status)
            .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR),
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

fn error(status: u16, message: String) -> Reply {
    reply(status, serde_json::json!({ "error": message }))
}

impl WebState {
    /// Asks the loop; its answer, or `None` if the worker did not answer
    /// within 10 s (busy or stopping).
    async fn ask_loop(&self, request: TableRequest) -> Option<Answer> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.queries.send(Query { request, reply: tx }).ok()?;
        tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .ok()?
            .ok()
    }

    /// A key's value: answered here, or by the worker that owns its
    /// partition (a `forwarded` query is answered here or not at all).
    async fn lookup(&self, table: &str, key: &str, standby: bool, forwarded: bool) -> Lookup {
        let request = TableRequest::Get {
            table: table.to_owned(),
            key: key.to_owned(),
            standby,
        };
        let partition = match self.ask_loop(request).await {
            None => return Lookup::Unavailable("the worker did not answer in time".into()),
            Some(Answer::Elsewhere { partition }) => partition,
            Some(other) => return Lookup::Here(other),
        };
        let not_here = Lookup::Unavailable(format!(
            "table {table}: partition {partition} has no owner now (a rebalance under way?)"
        ));
        let Some(dir) = self.directory.get().filter(|_| !forwarded) else {
            return not_here;
        };
        // A second try with a fresh description: the first may predate a
        // rebalance.
        for fresh in [false, true] {
            let owner = match dir.owner(partition, fresh).await {
                Ok(o) => o,
                Err(e) => {
                    return Lookup::Unavailable(format!(
                        "finding the owner of partition {partition}: {e}"
                    ))
                }
            };
            let Some(addr) = owner.filter(|a| *a != dir.me) else {
                continue;
            };
            let mut path = format!(
                "/tables/{}/{}?forwarded=true",
                encode_segment(table),
                encode_segment(key)
            );
            if standby {
                path.push_str("&standby=true");
            }
            match forward(&addr, &path).await {
                Ok((503, _)) if !fresh => continue,
                Ok((status, body)) => return Lookup::There { status, body },
                Err(e) if !fresh => {
                    tracing::debug!(%addr, error = %e, "forwarding a table query failed; asking again")
                }
                Err(e) => {
                    return Lookup::Unavailable(format!(
                        "partition {partition}'s owner at {addr}: {e}"
                    ))
                }
            }
        }
        not_here
    }

    /// `GET /tables/{table}/{key}`.
    async fn table_get(&self, table: String, key: String, standby: bool, forwarded: bool) -> Reply {
        match self.lookup(&table, &key, standby, forwarded).await {
            Lookup::Here(answer) => local_reply(&table, answer),
            Lookup::There { status, body } => (
                axum::http::StatusCode::from_u16(status)
                    .unwrap_or(axum::http::StatusCode::BAD_GATEWAY),
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                body,
            ),
            Lookup::Unavailable(why) => error(503, why),
        }
    }
}

/// Where a key's value was found.
enum Lookup {
    /// This worker's loop answered.
    Here(Answer),
    /// The owner answered this (its HTTP status and JSON body).
    There { status: u16, body: String },
    /// Nobody could answer now.
    Unavailable(String),
}

/// The reply to what the loop answered itself.
fn local_reply(table: &str, answer: Answer) -> Reply {
    match answer {
        Answer::Found(v) => reply(200, v),
        other => {
            let (status, message) = problem(table, &other);
            error(status, message)
        }
    }
}

/// The status and message of an answer that is not a value.
fn problem(table: &str, answer: &Answer) -> (u16, String) {
    match answer {
        Answer::Found(_) => (200, String::new()),
        Answer::Missing => (404, format!("table {table}: no such key")),
        Answer::NoTable => (404, format!("no table {table}")),
        Answer::BadKey(e) => (400, format!("table {table}: {e}")),
        Answer::Restoring { partition } => (
            503,
            format!("table {table}: partition {partition} is being restored"),
        ),
        Answer::Elsewhere { partition } => (
            503,
            format!("table {table}: partition {partition} is not on this worker"),
        ),
        Answer::Failed(e) => (500, format!("table {table}: {e}")),
    }
}

/// A handle for an app's pages ([`App::page`](crate::App::page)) to read
/// tables as `GET /tables/{table}/{key}` does: from whichever worker owns
/// the key. Pages get it as an axum extension:
///
/// ```no_run
/// use faustus_engine::axum::{extract::Path, routing::get, Extension};
/// use faustus_engine::Tables;
/// # let mut app = faustus_engine::App::new("shop", Default::default());
/// app.page(
///     "/count/{url}",
///     get(|Extension(tables): Extension<Tables>, Path(url): Path<String>| async move {
///         match tables.get("click_counts", &url).await {
///             Ok(Some(n)) => format!("{url}: {n}"),
///             Ok(None) => format!("{url}: never"),
///             Err(e) => e.to_string(),
///         }
///     }),
/// );
/// ```
#[derive(Clone)]
pub struct Tables(Arc<WebState>);

impl std::fmt::Debug for Tables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tables")
    }
}

impl Tables {
    /// `key`'s value in `table` as JSON, `None` if the table lacks it; an
    /// error when the table is unknown, the key unreadable, or its
    /// partition restored or without an owner now.
    pub async fn get(&self, table: &str, key: &str) -> Result<Option<serde_json::Value>> {
        let failed = |message: String| Error::Table {
            table: table.to_owned(),
            message,
        };
        match self.0.lookup(table, key, false, false).await {
            Lookup::Here(Answer::Found(v)) => Ok(Some(v)),
            Lookup::Here(Answer::Missing) => Ok(None),
            Lookup::Here(other) => Err(failed(problem(table, &other).1)),
            Lookup::There { status: 200, body } => serde_json::from_str(&body)
                .map(Some)
                .map_err(|e| failed(format!("an unreadable answer: {e}"))),
            // The owner runs the same app: it knows the table, so its
            // 404 is a missing key.
            Lookup::There { status: 404, .. } => Ok(None),
            Lookup::There { body, .. } => Err(failed(body)),
            Lookup::Unavailable(why) => Err(failed(why)),
        }
    }
}

/// Percent-encodes a path segment (all but unreserved characters).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `GET http://addr/path`: the status and body, within 10 s.
async fn forward(addr: &str, path: &str) -> std::result::Result<(u16, String), String> {
    use http_body_util::BodyExt;
    let work = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = axum::http::Request::get(path)
            .header(axum::http::header::HOST, addr)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .map_err(|_| "no answer within 10 s".to_owned())?
}

/// Starts the server on `bind:port` (port 0: any free one) and returns
/// the address it listens on.
pub(crate) async fn serve(
    state: Arc<WebState>,
    bind: &str,
    port: u16,
    pages: axum::Router,
) -> Result<std::net::SocketAddr> {
    use axum::extract::{Path, Query as Params};
    use axum::http::StatusCode;
    use axum::routing::get;
    type Flags = Params<std::collections::HashMap<String, String>>;
    let flag = |q: &Flags, name: &str| q.get(name).is_some_and(|v| v == "true" || v == "1");
    let health = state.clone();
    let ready = state.clone();
    let one = state.clone();
    let list = state.clone();
    let tables = Tables(state.clone());
    let metrics = state;
    let app = pages
        .layer(axum::Extension(tables))
        .route(
            "/tables/{table}/{key}",
            get(
                move |Path((table, key)): Path<(String, String)>, q: Flags| {
                    let s = one.clone();
                    async move {
                        s.table_get(table, key, flag(&q, "standby"), flag(&q, "forwarded"))
                            .await
                    }
                },
            ),
        )
        .route(
            "/tables/{table}",
            get(move |Path(table): Path<String>, q: Flags| {
                let s = list.clone();
                async move {
                    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
                        None => 100,
                        Some(Ok(n)) if (1..=10_000).contains(&n) => n,
                        Some(_) => return error(400, "limit: expected 1 to 10000".into()),
                    };
                    let request = TableRequest::List {
                        table: table.clone(),
                        after: q.get("after").cloned(),
                        limit,
                    };
                    match s.ask_loop(request).await {
                        Some(answer) => local_reply(&table, answer),
                        None => error(503, "the worker did not answer in time".into()),
                    }
                }
            }),
        )
        .route(
            "/health",
            get(move || {
                let s = health.clone();
                async move {
                    let stalled = s.stalled_now();
                    if stalled.is_empty() {
                        return reply(200, serde_json::json!({ "status": "ok" }));
                    }
                    let stalled: Vec<serde_json::Value> = stalled
                        .iter()
                        .map(|((topic, partition), lag)| {
                            serde_json::json!({ "topic": topic, "partition": partition, "lag": lag })
                        })
                        .collect();
                    reply(503, serde_json::json!({ "status": "stalled", "stalled": stalled }))
                }
            }),
        )
        .route(
            "/ready",
            get(move || {
                let s = ready.clone();
                async move {
                    if *s.ready.lock().unwrap_or_else(|e| e.into_inner()) {
                        (StatusCode::OK, "{\"status\":\"ready\"}")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "{\"status\":\"starting\"}")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let s = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        s.metrics_text(),
                    )
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind((bind, port))
        .await
        .map_err(|e| Error::Config(format!("web server on {bind}:{port}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Config(format!("web server: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "web server stopped");
        }
    });
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_stalls_only_with_records_to_read_and_no_progress_for_the_stall_time() {
        let t0 = Instant::now();
        let stall = Duration::from_secs(60);
        let mut progress = BTreeMap::new();
        progress.insert(("in".to_owned(), 0), Progress { lag: 5, since: t0 });
        progress.insert(("in".to_owned(), 1), Progress { lag: 0, since: t0 });
        let later = t0 + Duration::from_secs(59);
        assert!(stalled(&progress, later, stall).is_empty());
        let late = t0 + Duration::from_secs(60);
        assert_eq!(
            stalled(&progress, late, stall),
            vec![(("in".to_owned(), 0), 5)]
        );
    }

    #[test]
    fn owners_come_from_the_members_assignments_and_advertised_addresses() {
        use faustus_wire::group::{GroupDescription, GroupMember};
        let member = |id: &str, data: Option<&str>, parts: &[(&str, Vec<i32>)]| GroupMember {
            member_id: id.into(),
            instance_id: None,
            client_id: id.into(),
            host: "/127.0.0.1".into(),
            assignment: parts
                .iter()
                .map(|(t, p)| ((*t).to_owned(), p.clone()))
                .collect(),
            user_data: data.map(|d| bytes::Bytes::from(d.to_owned())),
        };
        let desc = GroupDescription {
            group_id: "app".into(),
            state: "Stable".into(),
            protocol_type: "consumer".into(),
            protocol: "range".into(),
            members: vec![
                member(
                    "a",
                    Some("faustus-web=h1:1"),
                    &[("in", vec![0, 2]), ("other", vec![1])],
                ),
                member("b", Some("faustus-web=h2:2"), &[("in", vec![1])]),
                // No address: its partitions have no known owner.
                member("c", None, &[("in", vec![3])]),
                member("d", Some("something else"), &[("in", vec![4])]),
            ],
        };
        let got = owners(&desc, &["in".to_owned()]);
        let expected: BTreeMap<i32, String> = [(0, "h1:1"), (1, "h2:2"), (2, "h1:1")]
            .into_iter()
            .map(|(p, a)| (p, a.to_owned()))
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(encode_segment("/page/1 a?b"), "%2Fpage%2F1%20a%3Fb");
        assert_eq!(encode_segment("Az09-._~"), "Az09-._~");
    }

    #[test]
    fn progress_resets_the_clock_and_metrics_count_records() {
        let s = WebState::new(Duration::ZERO);
        s.assigned([("in".to_owned(), 0)]);
        s.progressed("in", 0, 0, Some(3));
        assert_eq!(s.stalled_now(), vec![(("in".to_owned(), 0), 3)]);
        s.progressed("in", 0, 10, Some(0));
        assert!(s.stalled_now().is_empty());
        let text = s.metrics_text();
        assert!(
            text.contains("faustus_records_processed_total{topic=\"in\",partition=\"0\"} 10"),
            "{text}"
        );
        assert!(
            text.contains("faustus_consumer_lag{topic=\"in\",partition=\"0\"} 0"),
            "{text}"
        );
        // Revoked: forgotten.
        s.assigned([]);
        s.progressed("x", 1, 0, Some(0));
        assert!(s.stalled_now().is_empty());
    }
}

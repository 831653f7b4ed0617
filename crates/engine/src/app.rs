//! The app: its topics, tables and agents, and how a program registers them.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;

use faustus_wire::producer::{Producer, ProducerConfig, ProducerRecord, RecordMetadata};
use faustus_wire::Properties;

use crate::batch::{Batch, BatchInput};
use crate::codec::{encode_into, Codec, Codecs, Json};
use crate::config::EngineConfig;
use crate::error::Result;
use crate::table::{Table, TableDef, TableSpec};
use crate::topology::Topology;
use crate::window::Window;
use crate::windowed::WindowedTable;

/// How a topic is declared: codecs, and the settings used when the app
/// creates it.
pub struct TopicSpec<K, V> {
    key: Box<dyn Codec<K>>,
    value: Box<dyn Codec<V>>,
    partitions: Option<i32>,
    replication: Option<i16>,
    create: bool,
    configs: Vec<(String, String)>,
}

impl<K, V> std::fmt::Debug for TopicSpec<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicSpec")
            .field("key", &self.key.name())
            .field("value", &self.value.name())
            .field("partitions", &self.partitions)
            .finish()
    }
}

impl<K, V> TopicSpec<K, V> {
    /// A topic with these codecs, created by the app with `topic.partitions`
    /// and `topic.replication.factor` unless it exists.
    pub fn new(key: impl Codec<K> + 'static, value: impl Codec<V> + 'static) -> Self {
        Self {
            key: Box::new(key),
            value: Box::new(value),
            partitions: None,
            replication: None,
            create: true,
            configs: Vec::new(),
        }
    }
    /// JSON keys and values.
    pub fn json() -> Self
    where
        Json: Codec<K> + Codec<V>,
    {
        Self::new(Json, Json)
    }
    /// Partitions when the app creates the topic.
    pub fn partitions(mut self, n: i32) -> Self {
        self.partitions = Some(n);
        self
    }
    /// Replication factor when the app creates the topic.
    pub fn replication_factor(mut self, n: i16) -> Self {
        self.replication = Some(n);
        self
    }
    /// A topic config (`cleanup.policy`, `retention.ms`, ...) for creation.
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.configs.push((key.into(), value.into()));
        self
    }
    /// The app does not create this topic: it must exist.
    pub fn external(mut self) -> Self {
        self.create = false;
        self
    }
}

/// What the app knows of a topic, untyped.
#[derive(Debug, Clone)]
pub(crate) struct TopicDef {
    pub(crate) name: String,
    pub(crate) partitions: Option<i32>,
    pub(crate) replication: Option<i16>,
    pub(crate) create: bool,
    pub(crate) configs: Vec<(String, String)>,
    pub(crate) codecs: String,
    /// An internal topic created with as many partitions as this topic
    /// has (a foreign-key join's subscription and answer topics).
    pub(crate) partitions_like: Option<String>,
}

pub(crate) struct TopicInner<K, V> {
    pub(crate) name: String,
    pub(crate) codecs: Codecs<K, V>,
}

/// A typed topic: a name and the codecs of its keys and values. Cheap to
/// clone.
pub struct Topic<K, V> {
    pub(crate) inner: Arc<TopicInner<K, V>>,
}

impl<K, V> Clone for Topic<K, V> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<K, V> std::fmt::Debug for Topic<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Topic").field(&self.inner.name).finish()
    }
}

impl<K, V> Topic<K, V> {
    /// The topic's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Encodes a record for this topic (`key` `None` is a null key; the
    /// partitioner then spreads records).
    pub fn record(&self, key: Option<&K>, value: &V) -> Result<ProducerRecord> {
        self.record_opt(key, Some(value))
    }

    /// [`record`](Self::record), or a tombstone (a null value).
    pub(crate) fn record_opt(&self, key: Option<&K>, value: Option<&V>) -> Result<ProducerRecord> {
        let (codecs, name) = (&self.inner.codecs, self.inner.name.as_str());
        let mut rec = ProducerRecord::new(name);
        if let Some(k) = key {
            let mut buf = Vec::new();
            encode_into(&*codecs.key, k, &mut buf, name, "key")?;
            rec.key = Some(buf.into());
        }
        if let Some(v) = value {
            let mut buf = Vec::new();
            encode_into(&*codecs.value, v, &mut buf, name, "value")?;
            rec.value = Some(buf.into());
        }
        Ok(rec)
    }
}

/// What an agent does with a record it cannot decode or process (an
/// [`Error`](crate::Error) with a [`Location`](crate::Location)).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ErrorPolicy {
    /// Stop the worker with the error (the default: nothing is skipped
    /// unless asked).
    #[default]
    Stop,
    /// Log the error and go on with the next record.
    Skip,
    /// Send the record, as it was, to this topic with headers
    /// `faustus.source.topic`, `faustus.source.partition`,
    /// `faustus.source.offset` and `faustus.error`, and go on.
    DeadLetter(String),
}

/// An agent's options.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// What to do with a record that fails.
    pub on_error: ErrorPolicy,
    /// How many partitions' batches the agent may process at once (default
    /// 1). Batches of one partition are always processed in order.
    pub concurrency: usize,
    /// Faust's `take(n, within)`: gather a partition's fetches until at
    /// least `n` records or `within` has passed since the first, then call
    /// the agent once with all of them. `None` (the default): one call per
    /// fetch.
    pub take: Option<(usize, std::time::Duration)>,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            on_error: ErrorPolicy::Stop,
            concurrency: 1,
            take: None,
        }
    }
}

impl AgentOptions {
    /// Sets the error policy.
    pub fn on_error(mut self, p: ErrorPolicy) -> Self {
        self.on_error = p;
        self
    }
    /// Micro-batches of at least `n` records, or whatever arrived `within`
    /// (checked after each poll, so at the fetch wait's granularity). Input
    /// offsets are committed only past records an agent has processed.
    pub fn take(mut self, n: usize, within: std::time::Duration) -> Self {
        self.take = Some((n.max(1), within));
        self
    }
    /// Sets the concurrency.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }
}

pub(crate) type AgentFuture<'a> = Pin<Box<dyn Future<Output = Result<()>> + 'a>>;

/// An agent with its types erased.
pub(crate) trait ErasedAgent {
    fn call<'a>(&'a self, input: BatchInput) -> AgentFuture<'a>;
}

struct TypedAgent<K, V, F> {
    topic: Topic<K, V>,
    f: F,
}

impl<K: 'static, V: 'static, F> ErasedAgent for TypedAgent<K, V, F>
where
    F: AsyncFn(Batch<K, V>) -> Result<()>,
{
    fn call<'a>(&'a self, input: BatchInput) -> AgentFuture<'a> {
        let batch = Batch::new(input, self.topic.clone());
        Box::pin((self.f)(batch))
    }
}

#[derive(Clone)]
pub(crate) struct AgentDef {
    pub(crate) name: String,
    pub(crate) topic: String,
    pub(crate) options: AgentOptions,
    pub(crate) run: Rc<dyn ErasedAgent>,
}

/// A lazily connected producer for sends from outside agents.
#[derive(Clone, Default)]
pub(crate) struct LazyProducer {
    cell: Arc<tokio::sync::OnceCell<Producer>>,
    props: Arc<std::sync::Mutex<Properties>>,
}

impl LazyProducer {
    async fn get(&self) -> Result<&Producer> {
        let props = self.props.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Ok(self
            .cell
            .get_or_try_init(|| async {
                Producer::connect(ProducerConfig::from_properties(&props)?).await
            })
            .await?)
    }
}

/// An agent's handle: its source topic, `send` (or `cast`) to feed it
/// from code, and `ask`, `join` and `map` to ask it for replies (see
/// [`rpc`](crate::rpc)).
pub struct Agent<K, V> {
    topic: Topic<K, V>,
    producer: LazyProducer,
    replies: crate::rpc::Replies,
}

/// How long [`Agent::ask`] waits for a reply unless told (the Java
/// client's `request.timeout.ms` default).
pub const DEFAULT_ASK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A request to an agent, awaited for its reply ([`Agent::ask`]).
#[must_use = "a request is sent when awaited"]
pub struct Ask<'a, K, V, R> {
    agent: &'a Agent<K, V>,
    rec: Result<ProducerRecord>,
    timeout: std::time::Duration,
    _reply: std::marker::PhantomData<fn() -> R>,
}

impl<K, V, R> std::fmt::Debug for Ask<'_, K, V, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ask")
            .field("agent", &self.agent.topic.name())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl<K, V, R> Ask<'_, K, V, R> {
    /// Gives up with [`Error::Timeout`](crate::Error::Timeout) when no
    /// reply came within `d` of sending (default
    /// [`DEFAULT_ASK_TIMEOUT`]).
    pub fn timeout(mut self, d: std::time::Duration) -> Self {
        self.timeout = d;
        self
    }
}

impl<'a, K: Sync, V: Sync, R: serde::de::DeserializeOwned + 'a> std::future::IntoFuture
    for Ask<'a, K, V, R>
{
    type Output = Result<R>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<R>> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let waiting = self.agent.request(self.rec?).await?;
            crate::rpc::await_reply(waiting, self.agent.topic.name(), self.timeout).await
        })
    }
}

impl<K, V> std::fmt::Debug for Agent<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Agent").field(&self.topic.name()).finish()
    }
}

impl<K, V> Agent<K, V> {
    /// The topic the agent reads.
    pub fn topic(&self) -> &Topic<K, V> {
        &self.topic
    }
    /// Feeds the agent a record (through its topic), waiting for the
    /// broker's acknowledgement.
    pub async fn send(&self, key: Option<&K>, value: &V) -> Result<RecordMetadata> {
        let rec = self.topic.record(key, value)?;
        let p = self.producer.get().await?;
        Ok(p.send(rec).await?.await?)
    }

    /// Faust's `cast`: sends the agent a value and asks no reply (the
    /// same as [`send`](Self::send)).
    pub async fn cast(&self, key: Option<&K>, value: &V) -> Result<RecordMetadata> {
        self.send(key, value).await
    }

    /// Faust's `ask`: sends the agent a value and awaits its reply, which
    /// the agent gives with [`Batch::reply`](crate::Batch::reply), decoded
    /// from JSON as `R`. Awaiting it sends it; `.timeout(d)` bounds the
    /// wait:
    ///
    /// ```no_run
    /// # async fn f(square: faustus_engine::Agent<String, u64>) -> faustus_engine::Result<()> {
    /// let n: u64 = square.ask(None, &7).timeout(std::time::Duration::from_secs(5)).await?;
    /// # Ok(()) }
    /// ```
    pub fn ask<R>(&self, key: Option<&K>, value: &V) -> Ask<'_, K, V, R> {
        Ask {
            agent: self,
            rec: self.topic.record(key, value),
            timeout: DEFAULT_ASK_TIMEOUT,
            _reply: std::marker::PhantomData,
        }
    }

    /// Faust's `join`: asks the agent about each value (all sent before any
    /// reply is awaited) and gives the replies in the order of the values;
    /// each waits at most `timeout` after the last was sent.
    pub async fn join<R: serde::de::DeserializeOwned>(
        &self,
        requests: impl IntoIterator<Item = (Option<K>, V)>,
        timeout: std::time::Duration,
    ) -> Vec<Result<R>> {
        let waiting = self.send_all(requests).await;
        futures::future::join_all(waiting.into_iter().map(|w| self.reply_of(w, timeout))).await
    }

    /// Faust's `map`: asks the agent about each value and yields each reply
    /// as it arrives, with the index of its value; each waits at most
    /// `timeout` after the last was sent.
    pub async fn map<R: serde::de::DeserializeOwned>(
        &self,
        requests: impl IntoIterator<Item = (Option<K>, V)>,
        timeout: std::time::Duration,
    ) -> impl futures::Stream<Item = (usize, Result<R>)> + '_ {
        let waiting = self.send_all(requests).await;
        waiting
            .into_iter()
            .enumerate()
            .map(|(i, w)| async move { (i, self.reply_of(w, timeout).await) })
            .collect::<futures::stream::FuturesUnordered<_>>()
    }

    /// The reply to a request sent (or why it was not sent).
    async fn reply_of<R: serde::de::DeserializeOwned>(
        &self,
        waiting: Result<crate::rpc::Waiting>,
        timeout: std::time::Duration,
    ) -> Result<R> {
        crate::rpc::await_reply(waiting?, self.topic.name(), timeout).await
    }

    /// Sends each request, then awaits their acknowledgements.
    async fn send_all(
        &self,
        requests: impl IntoIterator<Item = (Option<K>, V)>,
    ) -> Vec<Result<crate::rpc::Waiting>> {
        let mut sent = Vec::new();
        for (k, v) in requests {
            sent.push(self.queue(self.topic.record(k.as_ref(), &v)).await);
        }
        let mut out = Vec::with_capacity(sent.len());
        for s in sent {
            out.push(acknowledged(s).await);
        }
        out
    }

    /// Sends a request record with its reply headers; what its reply
    /// arrives on.
    async fn request(&self, rec: ProducerRecord) -> Result<crate::rpc::Waiting> {
        acknowledged(self.queue(Ok(rec)).await).await
    }

    async fn queue(
        &self,
        rec: Result<ProducerRecord>,
    ) -> Result<(crate::rpc::Waiting, faustus_wire::producer::DeliveryFuture)> {
        let mut rec = rec?;
        let (headers, waiting) = self.replies.register().await?;
        rec.headers.extend(headers);
        let p = self.producer.get().await?;
        Ok((waiting, p.send(rec).await?))
    }
}

/// A queued request once the broker has it.
async fn acknowledged(
    queued: Result<(crate::rpc::Waiting, faustus_wire::producer::DeliveryFuture)>,
) -> Result<crate::rpc::Waiting> {
    let (waiting, delivery) = queued?;
    delivery.await?;
    Ok(waiting)
}

/// A Faustus application: settings, topics, tables and agents.
pub struct App {
    pub(crate) id: String,
    pub(crate) props: Properties,
    pub(crate) topics: Vec<TopicDef>,
    pub(crate) tables: Vec<TableDef>,
    pub(crate) agents: Vec<AgentDef>,
    pub(crate) globals: Vec<crate::global::GlobalDef>,
    /// Groups of topics read in timestamp order (the inputs of a join).
    pub(crate) ordered: Vec<Vec<String>>,
    /// What a declaration got wrong; [`App::topology`] refuses to start.
    pub(crate) problems: Vec<String>,
    pub(crate) timers: Vec<crate::timer::TimerDef>,
    pub(crate) producer: LazyProducer,
    /// Where agents' replies to this process's requests arrive.
    pub(crate) replies: crate::rpc::Replies,
    /// The app's own web pages ([`App::page`]).
    pub(crate) pages: axum::Router,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("id", &self.id)
            .field("topics", &self.topics.len())
            .field("tables", &self.tables.len())
            .field("agents", &self.agents.len())
            .finish()
    }
}

impl App {
    /// An app with this id (its consumer group and the prefix of its
    /// internal topics) and these properties (see [`crate::config`]).
    /// `bootstrap.servers` may also come from the command line or the
    /// `KAFKA_BOOTSTRAP` environment variable.
    pub fn new(id: impl Into<String>, props: Properties) -> Self {
        let producer = LazyProducer::default();
        *producer.props.lock().unwrap_or_else(|e| e.into_inner()) = props.clone();
        let id: String = id.into();
        let replies = crate::rpc::Replies::new(&id, producer.props.clone());
        Self {
            replies,
            id,
            props,
            topics: Vec::new(),
            tables: Vec::new(),
            agents: Vec::new(),
            globals: Vec::new(),
            ordered: Vec::new(),
            problems: Vec::new(),
            timers: Vec::new(),
            producer,
            pages: axum::Router::new(),
        }
    }

    /// The app id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Sets a property (before the app starts).
    pub fn set(&mut self, key: &str, value: &str) {
        self.props.insert(key, value);
        self.producer
            .props
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, value);
    }

    /// The app's settings, checked.
    pub fn config(&self) -> Result<EngineConfig> {
        EngineConfig::from_properties(&self.id, &self.props)
    }

    /// A topic with JSON keys and values, created by the app if missing.
    pub fn topic<K, V>(&mut self, name: &str) -> Topic<K, V>
    where
        Json: Codec<K> + Codec<V>,
    {
        self.topic_with(name, TopicSpec::json())
    }

    /// A topic declared with a [`TopicSpec`].
    pub fn topic_with<K, V>(&mut self, name: &str, spec: TopicSpec<K, V>) -> Topic<K, V> {
        let codecs = format!("{}/{}", spec.key.name(), spec.value.name());
        match self.topics.iter_mut().find(|t| t.name == name) {
            Some(t) => {
                // Declared again (say, once as a sink and once as a
                // source): the stricter settings win.
                t.partitions = t.partitions.or(spec.partitions);
                t.create |= spec.create;
            }
            None => self.topics.push(TopicDef {
                name: name.to_owned(),
                partitions: spec.partitions,
                replication: spec.replication,
                create: spec.create,
                configs: spec.configs,
                codecs,
                partitions_like: None,
            }),
        }
        Topic {
            inner: Arc::new(TopicInner {
                name: name.to_owned(),
                codecs: Codecs::new(spec.key, spec.value),
            }),
        }
    }

    /// An internal topic `<app-id>-<name>-repartition` for `group_by`: an
    /// agent sends re-keyed records to it, and an agent reading it sees each
    /// key in the partition (and so the table partition) the key hashes to.
    pub fn repartition_topic<K, V>(&mut self, name: &str, spec: TopicSpec<K, V>) -> Topic<K, V> {
        let full = format!("{}-{}-repartition", self.id, name);
        self.topic_with(&full, spec)
    }

    /// A table with JSON keys and values; missing keys read as
    /// `V::default()` (Faust's `default=int` is `u64`'s 0).
    pub fn table<K, V>(&mut self, name: &str) -> Table<K, V>
    where
        Json: Codec<K> + Codec<V>,
        K: std::fmt::Debug + 'static,
        V: Default + std::fmt::Debug + 'static,
    {
        self.table_with(name, TableSpec::json(V::default))
    }

    /// A table declared with a [`TableSpec`]. Its changelog is the compacted
    /// topic `<app-id>-<name>-changelog`.
    pub fn table_with<K, V>(&mut self, name: &str, spec: TableSpec<K, V>) -> Table<K, V>
    where
        K: std::fmt::Debug + 'static,
        V: std::fmt::Debug + 'static,
    {
        let id = self.tables.len();
        let (table, def) = Table::declare(id, &self.id, name, spec);
        self.tables.push(def);
        table
    }

    /// A global table over `topic` (Kafka Streams' `GlobalKTable`, Faust's
    /// `GlobalTable`): every worker reads every partition of the topic, to
    /// its end before it starts processing and as it grows afterwards, so
    /// every agent can read any key ([`Batch::global`]); missing keys read as
    /// `default()`. A topic the app creates is created compacted. Write to
    /// it by sending to the topic.
    pub fn global_table<K, V>(
        &mut self,
        topic: &Topic<K, V>,
        default: impl Fn() -> V + 'static,
    ) -> crate::GlobalTable<K, V> {
        let name = topic.name();
        if let Some(t) = self.topics.iter_mut().find(|t| t.name == name) {
            if !t.configs.iter().any(|(k, _)| k == "cleanup.policy") {
                t.configs
                    .push(("cleanup.policy".to_owned(), "compact".to_owned()));
            }
        }
        let id = self.globals.len();
        self.globals.push(crate::global::GlobalDef {
            topic: Arc::from(name),
        });
        crate::GlobalTable {
            inner: Arc::new(crate::global::GlobalInner {
                id,
                topic: topic.clone(),
                default: Box::new(default),
            }),
        }
    }

    /// A table kept from `topic` (Kafka Streams' `builder.table(topic)`):
    /// each record sets its key's value, a null value deletes the key; a
    /// record without a key is skipped. Its local store and changelog
    /// (`<app-id>-<name>-changelog`) are a table's: it recovers, has
    /// standbys and survives restarts as tables do. Joins read it
    /// ([`stream_table_join`](Self::stream_table_join),
    /// [`table_table_join`](Self::table_table_join)), and so can agents
    /// ([`Batch::topic_table`]). A topic the app creates is created
    /// compacted.
    pub fn table_from<K: std::fmt::Debug + 'static, V: std::fmt::Debug + 'static>(
        &mut self,
        name: &str,
        topic: &Topic<K, V>,
    ) -> crate::TopicTable<K, V> {
        if let Some(t) = self.topics.iter_mut().find(|t| t.name == topic.name()) {
            if !t.configs.iter().any(|(k, _)| k == "cleanup.policy") {
                t.configs
                    .push(("cleanup.policy".to_owned(), "compact".to_owned()));
            }
        }
        let id = self.tables.len();
        let changelog: Arc<str> = Arc::from(format!("{}-{name}-changelog", self.id));
        let shown = topic.clone();
        let show: crate::table::ShowEntry = Rc::new(move |k, v| {
            let (ts, v) = crate::join::unstored(v);
            let codecs = &shown.inner.codecs;
            match (codecs.key.decode(Some(k)), codecs.value.decode(Some(v))) {
                (Ok(k), Ok(v)) => format!("{k:?}\t{v:?}\t@{ts}"),
                (k, v) => format!("<undecodable entry: {:?} {:?}>", k.err(), v.err()),
            }
        });
        let mut def = TableDef::plain(name, changelog, show);
        // Values are stored after their record's timestamp.
        def.web = Some(crate::table::WebView::of(
            topic.inner.clone(),
            |t: &crate::app::TopicInner<K, V>| &t.codecs,
            |v| crate::join::unstored(v).1,
        ));
        self.tables.push(def);
        let feeder = Rc::new(crate::join::Feeder {
            table: id,
            empty_deletes: std::cell::Cell::new(false),
            listeners: std::cell::RefCell::new(Vec::new()),
        });
        self.agents.push(AgentDef {
            name: format!("{name}-table"),
            topic: topic.name().to_owned(),
            options: AgentOptions::default(),
            run: feeder.clone(),
        });
        crate::TopicTable {
            id,
            name: Rc::from(name),
            topic: topic.clone(),
            feeder,
        }
    }

    /// Notes a problem with keys the join passes through as bytes: both
    /// sides and the output must encode keys alike.
    fn check_join_keys(&mut self, what: &str, codecs: &[&str]) {
        if codecs.windows(2).any(|w| w[0] != w[1]) {
            self.problems.push(format!(
                "{what}: the joined topics and the output must use one key codec, not {}",
                codecs.join(", ")
            ));
        }
    }

    /// A table's changes as a topic (Kafka Streams' `KTable#toStream`): its
    /// changelog, read with these codecs (the table's own): an agent over
    /// it sees each change the table's agents made (a null value: a
    /// delete), and `table_from` keeps it as a table to join. Changes are
    /// read once they are committed (read_committed under exactly-once).
    /// For tables that are not windowed.
    pub fn table_changes<K, V>(
        &mut self,
        table: &Table<K, V>,
        spec: TopicSpec<K, V>,
    ) -> Topic<K, V> {
        let name = table.changelog_topic().to_owned();
        // Created with the tables' changelogs, not as a declared topic.
        let topic = self.topic_with(&name, spec.external());
        if let Some(t) = self.topics.iter_mut().find(|t| t.name == name) {
            t.create = false;
        }
        topic
    }

    /// Joins each record of `stream` with `table`'s value for its key when
    /// the record comes (Kafka Streams' `KStream#join(KTable)` with
    /// [`JoinKind::Inner`](crate::JoinKind::Inner), `#leftJoin` with
    /// [`JoinKind::Left`](crate::JoinKind::Left)) and sends
    /// `joiner(value, table value)` to `out` with the record's key and
    /// timestamp. Only stream records make results: a table change alone
    /// makes none. A stream record without a key or a value is skipped.
    /// Inner: a key the table does not have makes nothing; left: it makes
    /// `joiner(value, None)`. Both topics are read in timestamp order, and
    /// must be co-partitioned.
    pub fn stream_table_join<K, V, T, O>(
        &mut self,
        stream: &Topic<K, V>,
        table: &crate::TopicTable<K, T>,
        kind: crate::JoinKind,
        out: &Topic<K, O>,
        joiner: impl Fn(&V, Option<&T>) -> O + 'static,
    ) where
        K: 'static,
        V: 'static,
        T: 'static,
        O: 'static,
    {
        let what = format!("join of {} with table {}", stream.name(), table.name());
        if kind == crate::JoinKind::Outer {
            self.problems.push(format!(
                "{what}: a stream–table join is inner or left, not outer"
            ));
        }
        self.check_join_keys(
            &what,
            &[
                stream.inner.codecs.key.name(),
                table.topic.inner.codecs.key.name(),
                out.inner.codecs.key.name(),
            ],
        );
        self.ordered.push(vec![
            table.topic.name().to_owned(),
            stream.name().to_owned(),
        ]);
        self.agents.push(AgentDef {
            name: format!("{}-join-{}", stream.name(), table.name()),
            topic: stream.name().to_owned(),
            options: AgentOptions::default(),
            run: Rc::new(crate::join::StreamTableJoin {
                stream: stream.clone(),
                table: table.clone(),
                kind,
                out: out.clone(),
                joiner: Box::new(joiner),
            }),
        });
    }

    /// Joins two tables kept from topics (Kafka Streams' `KTable#join`,
    /// `#leftJoin`, `#outerJoin`): each change of either side is joined
    /// with the other side's current value and `joiner(left, right)` is
    /// sent to `out` with the key, at the larger of the two sides'
    /// timestamps. Inner: a key both sides have; left: every key of the
    /// left; outer: every key of either. A delete that ends a result sends
    /// a tombstone for the key. Both topics are read in timestamp order,
    /// and must be co-partitioned.
    pub fn table_table_join<K, L, R, O>(
        &mut self,
        left: &crate::TopicTable<K, L>,
        right: &crate::TopicTable<K, R>,
        kind: crate::JoinKind,
        out: &Topic<K, O>,
        joiner: impl Fn(Option<&L>, Option<&R>) -> O + 'static,
    ) where
        K: 'static,
        L: 'static,
        R: 'static,
        O: 'static,
    {
        let what = format!("join of tables {} and {}", left.name(), right.name());
        self.check_join_keys(
            &what,
            &[
                left.topic.inner.codecs.key.name(),
                right.topic.inner.codecs.key.name(),
                out.inner.codecs.key.name(),
            ],
        );
        self.ordered.push(vec![
            left.topic.name().to_owned(),
            right.topic.name().to_owned(),
        ]);
        let join = Rc::new(crate::join::TableTableJoin {
            left: left.clone(),
            right: right.clone(),
            kind,
            out: out.clone(),
            joiner: Box::new(joiner),
        });
        left.feeder
            .listeners
            .borrow_mut()
            .push(Rc::new(crate::join::JoinSide {
                join: join.clone(),
                side: crate::join::Side::Left,
            }));
        right
            .feeder
            .listeners
            .borrow_mut()
            .push(Rc::new(crate::join::JoinSide {
                join,
                side: crate::join::Side::Right,
            }));
    }

    /// Joins two streams within a time window (Kafka Streams'
    /// `KStream#join(KStream, JoinWindows)`, `#leftJoin`, `#outerJoin`): a
    /// left record at `t` matches each right record with the same key
    /// from `t - before` to `t + after` (inclusive), and each match sends
    /// `joiner(Some(left), Some(right))` to `out` at the larger timestamp.
    /// Left and outer joins also send `joiner(value, None)` (or
    /// `(None, value)`) for a record that matched nothing, once its window
    /// has closed (stream time past its end plus the grace period), never
    /// earlier (KIP-633). Waiting records live in a store with a changelog
    /// (`<app-id>-<left>-<right>-join-changelog`) and expire after
    /// `before + after + grace`. A record without a value is skipped, as
    /// is one without a key unless its side is outer (then it gets its
    /// unmatched result at once). Both topics are read in timestamp order,
    /// and must be co-partitioned.
    pub fn stream_stream_join<K, L, R, O>(
        &mut self,
        left: &Topic<K, L>,
        right: &Topic<K, R>,
        kind: crate::JoinKind,
        window: crate::JoinWindow,
        out: &Topic<K, O>,
        joiner: impl Fn(Option<&L>, Option<&R>) -> O + 'static,
    ) where
        K: 'static,
        L: 'static,
        R: 'static,
        O: 'static,
    {
        let what = format!("join of streams {} and {}", left.name(), right.name());
        self.check_join_keys(
            &what,
            &[
                left.inner.codecs.key.name(),
                right.inner.codecs.key.name(),
                out.inner.codecs.key.name(),
            ],
        );
        let name = format!("{}-{}-join", left.name(), right.name());
        let id = self.tables.len();
        let changelog: Arc<str> = Arc::from(format!("{}-{name}-changelog", self.id));
        let show: crate::table::ShowEntry = Rc::new(|k, v| format!("{k:?}\t{} bytes", v.len()));
        let mut def = TableDef::plain(&name, changelog, show);
        def.ordered = true;
        self.tables.push(def);
        self.ordered
            .push(vec![left.name().to_owned(), right.name().to_owned()]);
        let join = Rc::new(crate::join::StreamStreamJoin {
            left: left.clone(),
            right: right.clone(),
            kind,
            window,
            out: out.clone(),
            joiner: Box::new(joiner),
            buffer: id,
        });
        for (topic, side) in [
            (left.name(), crate::join::Side::Left),
            (right.name(), crate::join::Side::Right),
        ] {
            self.agents.push(AgentDef {
                name: format!(
                    "{name}-{}",
                    if side == crate::join::Side::Left {
                        "left"
                    } else {
                        "right"
                    }
                ),
                topic: topic.to_owned(),
                options: AgentOptions::default(),
                run: Rc::new(crate::join::StreamSide {
                    join: join.clone(),
                    side,
                }),
            });
        }
    }

    /// Joins two tables kept from topics on a foreign key (Kafka Streams'
    /// `KTable#join(KTable, foreignKeyExtractor, joiner)` and `#leftJoin`,
    /// KIP-213): `foreign_key(left value)` names the right row the left row
    /// joins (`None`: none), and each result is `joiner(left, right)` under
    /// the left key. A change on either side updates the results it
    /// touches; a left row whose foreign key changes has its old result
    /// replaced (inner: a tombstone while the new key has no right row); a
    /// deleted left row's result becomes a tombstone; an inner join with a
    /// deleted right row sends tombstones for the rows naming it (left:
    /// `joiner(left, None)`). The join goes through two internal topics
    /// the app creates, `<app-id>-<name>-subscription` (by foreign key) and
    /// `<app-id>-<name>-response` (by left key), and answers to out-of-date
    /// subscriptions are discarded by the hash of the left value they were
    /// asked for, as in Kafka Streams. `kind` is inner or left. The left
    /// and right topics need the same partition count (each partition
    /// number is one task), not the same keys.
    #[allow(clippy::too_many_arguments)]
    pub fn foreign_key_join<K, V, KO, VO, O>(
        &mut self,
        name: &str,
        left: &crate::TopicTable<K, V>,
        right: &crate::TopicTable<KO, VO>,
        foreign_key: impl Fn(&V) -> Option<KO> + 'static,
        kind: crate::JoinKind,
        out: &Topic<K, O>,
        joiner: impl Fn(&V, Option<&VO>) -> O + 'static,
    ) where
        K: 'static,
        V: 'static,
        KO: 'static,
        VO: 'static,
        O: 'static,
    {
        let what = format!("foreign-key join {name}");
        if kind == crate::JoinKind::Outer {
            self.problems.push(format!(
                "{what}: a foreign-key join is inner or left, not outer"
            ));
        }
        self.check_join_keys(
            &what,
            &[
                left.topic.inner.codecs.key.name(),
                out.inner.codecs.key.name(),
            ],
        );
        let internal = |suffix: &str, like: &str| TopicDef {
            name: format!("{}-{name}-{suffix}", self.id),
            partitions: None,
            replication: None,
            create: true,
            configs: Vec::new(),
            codecs: "raw/raw".into(),
            partitions_like: Some(like.to_owned()),
        };
        let subscriptions = internal("subscription", right.topic.name());
        let answers = internal("response", left.topic.name());
        let (sub_topic, ans_topic) = (subscriptions.name.clone(), answers.name.clone());
        self.topics.push(subscriptions);
        self.topics.push(answers);
        let store = self.tables.len();
        let store_name = format!("{name}-subscriptions");
        let changelog: Arc<str> = Arc::from(format!("{}-{store_name}-changelog", self.id));
        let show: crate::table::ShowEntry = Rc::new(|k, v| format!("{k:?}\t{v:?}"));
        let mut def = TableDef::plain(&store_name, changelog, show);
        def.ordered = true;
        self.tables.push(def);
        let fk_codec = right.topic.clone();
        let extract: crate::join::foreign::Extract<V> = Box::new(move |v| {
            foreign_key(v)
                .map(|ko| {
                    let mut buf = Vec::new();
                    encode_into(
                        &*fk_codec.inner.codecs.key,
                        &ko,
                        &mut buf,
                        fk_codec.name(),
                        "key",
                    )?;
                    Ok(buf)
                })
                .transpose()
        });
        let join = Rc::new(crate::join::foreign::ForeignKeyJoin {
            left: left.clone(),
            right: right.clone(),
            left_join: kind == crate::JoinKind::Left,
            extract,
            subscriptions_topic: sub_topic.clone(),
            answers_topic: ans_topic.clone(),
            store,
            out: out.clone(),
            joiner: Box::new(joiner),
        });
        let part = |p| {
            Rc::new(crate::join::foreign::ForeignPart {
                join: join.clone(),
                part: p,
            })
        };
        use crate::join::foreign::Part;
        left.feeder.listeners.borrow_mut().push(part(Part::Left));
        right.feeder.listeners.borrow_mut().push(part(Part::Right));
        for (topic, p, suffix) in [
            (&sub_topic, Part::Subscriptions, "subscribe"),
            (&ans_topic, Part::Answers, "join"),
        ] {
            self.agents.push(AgentDef {
                name: format!("{name}-{suffix}"),
                topic: topic.clone(),
                options: AgentOptions::default(),
                run: part(p),
            });
        }
        self.ordered
            .push(vec![sub_topic, right.topic.name().to_owned()]);
        self.ordered
            .push(vec![left.topic.name().to_owned(), ans_topic]);
    }

    /// Runs `f` every `interval` on each worker (Faust's `@app.timer`), from
    /// the worker's start, drift-corrected; a tick missed while the worker
    /// was busy is not run again. `f` gets a [`TimerCtx`](crate::TimerCtx):
    /// this worker's table partitions and a way to send records, committed
    /// as agents' work is. `.on_leader()` on the result runs it on one
    /// worker of the app at a time.
    pub fn timer<F>(&mut self, name: &str, interval: std::time::Duration, f: F) -> crate::Timer
    where
        F: AsyncFn(crate::TimerCtx) -> Result<()> + 'static,
    {
        let schedule = crate::timer::Schedule::Every(crate::timer::interval_ms(interval));
        self.add_timer(name, schedule, f)
    }

    /// Runs `f` at the times of a cron pattern in time zone `tz` (Faust's
    /// `@app.crontab`): five fields (minute, hour, day of month, month, day
    /// of week; `"0 * * * *"` is every hour), or six with seconds first. A
    /// pattern that does not parse stops the app at start with the reason.
    /// As [`timer`](Self::timer) otherwise.
    pub fn crontab<F>(&mut self, name: &str, pattern: &str, tz: chrono_tz::Tz, f: F) -> crate::Timer
    where
        F: AsyncFn(crate::TimerCtx) -> Result<()> + 'static,
    {
        let schedule = match crate::timer::Schedule::cron(pattern, tz) {
            Ok(s) => s,
            Err(e) => {
                self.problems.push(format!("timer {name}: {e}"));
                crate::timer::Schedule::Every(i64::MAX)
            }
        };
        self.add_timer(name, schedule, f)
    }

    /// Runs `f` on each task whenever its stream time (the largest record
    /// timestamp its agents were handed) passes a multiple of `interval`
    /// (Kafka Streams' stream-time punctuation): once however many
    /// multiples it passed, with `ctx.due_ms()` the stream time and
    /// `ctx.partitions()` that task's partition only. Stream time stands
    /// still while no records come, so neither does this timer.
    pub fn stream_timer<F>(
        &mut self,
        name: &str,
        interval: std::time::Duration,
        f: F,
    ) -> crate::Timer
    where
        F: AsyncFn(crate::TimerCtx) -> Result<()> + 'static,
    {
        let schedule = crate::timer::Schedule::Every(crate::timer::interval_ms(interval));
        let timer = self.add_timer(name, schedule, f);
        if let Some(t) = self.timers.last_mut() {
            t.stream_time = true;
        }
        timer
    }

    fn add_timer<F>(&mut self, name: &str, schedule: crate::timer::Schedule, f: F) -> crate::Timer
    where
        F: AsyncFn(crate::TimerCtx) -> Result<()> + 'static,
    {
        let on_leader = Rc::new(std::cell::Cell::new(false));
        self.timers.push(crate::timer::TimerDef {
            name: name.to_owned(),
            schedule,
            stream_time: false,
            on_leader: on_leader.clone(),
            run: Rc::new(crate::timer::TypedTimer { f }),
        });
        crate::Timer { on_leader }
    }

    /// Registers an agent over `topic` with default options: `f` is called
    /// with each batch of one partition's records, in order.
    pub fn agent<K, V, F>(&mut self, name: &str, topic: &Topic<K, V>, f: F) -> Agent<K, V>
    where
        K: 'static,
        V: 'static,
        F: AsyncFn(Batch<K, V>) -> Result<()> + 'static,
    {
        self.agent_with(name, topic, AgentOptions::default(), f)
    }

    /// Registers an agent with options.
    pub fn agent_with<K, V, F>(
        &mut self,
        name: &str,
        topic: &Topic<K, V>,
        options: AgentOptions,
        f: F,
    ) -> Agent<K, V>
    where
        K: 'static,
        V: 'static,
        F: AsyncFn(Batch<K, V>) -> Result<()> + 'static,
    {
        self.agents.push(AgentDef {
            name: name.to_owned(),
            topic: topic.name().to_owned(),
            options,
            run: Rc::new(TypedAgent {
                topic: topic.clone(),
                f,
            }),
        });
        Agent {
            topic: topic.clone(),
            producer: self.producer.clone(),
            replies: self.replies.clone(),
        }
    }

    /// Sends a record to a topic from outside agents, waiting for the
    /// broker's acknowledgement.
    pub async fn send<K, V>(
        &self,
        topic: &Topic<K, V>,
        key: Option<&K>,
        value: &V,
    ) -> Result<RecordMetadata> {
        let rec = topic.record(key, value)?;
        let p = self.producer.get().await?;
        Ok(p.send(rec).await?.await?)
    }

    /// What the app declared, checked and frozen: what a worker or a
    /// [`TestDriver`](crate::testing::TestDriver) runs.
    pub fn topology(&self) -> Result<Topology> {
        Topology::new(
            self.config()?,
            self.topics.clone(),
            self.tables.iter().map(TableDef::frozen).collect(),
            self.agents.clone(),
            self.globals.clone(),
            &self.ordered,
            &self.problems,
        )
        .map(|t| {
            t.with_timers(self.timers.clone())
                .with_pages(self.pages.clone())
        })
    }

    /// Serves `route` at `path` on the worker's web server (`web.port`),
    /// beside the built-in `/health`, `/ready`, `/metrics` and `/tables`
    /// (Faust's `@app.page`). Routes are axum's:
    ///
    /// ```
    /// # use faustus_engine::prelude::*;
    /// let mut app = App::new("shop", Properties::new());
    /// app.page("/hello", faustus_engine::axum::routing::get(|| async { "hello" }));
    /// ```
    ///
    /// Pages read tables through the [`Tables`](crate::Tables) extension.
    /// A path the server already serves is refused when the worker starts.
    pub fn page(&mut self, path: &str, route: axum::routing::MethodRouter) {
        if ["/health", "/ready", "/metrics"].contains(&path) || path.starts_with("/tables") {
            self.problems.push(format!(
                "page {path}: the web server serves that path itself"
            ));
            return;
        }
        self.pages = std::mem::take(&mut self.pages).route(path, route);
    }

    /// Runs a worker until `shutdown` resolves (or an error stops it), then
    /// commits, leaves the group and returns.
    pub async fn run_worker(&self, shutdown: impl Future<Output = ()>) -> Result<()> {
        crate::runtime::run(&self.topology()?, shutdown).await
    }

    /// A table's committed contents, read from its changelog with
    /// read_committed (the last value of each key): a read from outside the
    /// agents, which does not need a running worker.
    pub async fn table_entries<K, V>(&self, table: &Table<K, V>) -> Result<Vec<(K, V)>>
    where
        K: 'static,
        V: 'static,
    {
        let raw =
            crate::runtime::restore::read_changelog(&self.config()?, &self.tables[table.id()])
                .await?;
        raw.into_iter()
            .map(|(k, v)| table.decode_entry(&k, &v))
            .collect()
    }

    /// A windowed table's committed windows, read from its changelog as
    /// [`table_entries`](Self::table_entries) does.
    pub async fn windowed_table_entries<K, V>(
        &self,
        table: &WindowedTable<K, V>,
    ) -> Result<Vec<(K, Window, V)>>
    where
        K: 'static,
        V: 'static,
    {
        let raw = crate::runtime::restore::read_changelog(
            &self.config()?,
            &self.tables[table.table().id()],
        )
        .await?;
        raw.into_iter()
            .filter(|(k, _)| crate::window::is_window_entry(k))
            .map(|(k, v)| table.decode_entry(&k, &v))
            .collect()
    }

    /// Runs the command line (`worker`, `send`, `agents`, `tables`) and
    /// returns the process's exit code.
    pub fn main(self) -> std::process::ExitCode {
        crate::cli::main(self)
    }
}

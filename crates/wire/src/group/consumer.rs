//! The group consumer: the [`Membership`] state machine driven over the
//! classic group protocol, the fetch [`Consumer`] underneath, offset commits,
//! and a [`RebalanceListener`] awaited at every ownership change.
//!
//! Heartbeats run in a background task and never wait for processing; joins,
//! syncs and listener callbacks run inside [`GroupConsumer::poll`], so a
//! callback sees the consumer between two polls, when everything the previous
//! poll returned has been processed.
//!
//! Offsets: with `enable.auto.commit=true` (the default), the positions after
//! the records returned by the previous poll are committed every
//! `auto.commit.interval.ms` and before partitions are revoked. A committed
//! offset is therefore never past a record the application has not been
//! handed and moved on from. With manual commits, call
//! [`GroupConsumer::commit`] after processing.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::consumer_group_heartbeat_request::TopicPartitions as CghTopicPartitions;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ConsumerGroupHeartbeatRequest, GroupId, HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest,
    SyncGroupRequest,
};
use kafka_protocol::protocol::StrBytes;
use tokio::time::Instant;

use super::assignor::{Assignor, Member, TopicCounts};
use super::membership::{Action, Event, Membership, MembershipConfig, Partitions, Phase};
use super::next::{NextConfig, NextHeartbeat, NextMembership};
use super::offsets::{check_commit, commit_request, fetch_request, fetched_offsets, GroupOffsets};
use super::protocol::{Assignment, Subscription, CONSUMER_PROTOCOL_VERSION};
use crate::client::{topic_name, Client};
use crate::config::Properties;
use crate::conn::Connection;
use crate::consumer::{Consumer, ConsumerConfig, Fetched, Offset, OffsetReset, TopicPartition};
use crate::coordinator::CoordinatorType;
use crate::protocol::ErrorCode;
pub use crate::types::GroupMetadata;
use crate::{Error, Result};

/// Group settings, by the Java client's names.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// Fetch settings.
    pub consumer: ConsumerConfig,
    /// `group.id` (required).
    pub group_id: String,
    /// `group.instance.id`: static membership (KIP-345).
    pub instance_id: Option<String>,
    /// `session.timeout.ms` (default 45000).
    pub session_timeout: Duration,
    /// `heartbeat.interval.ms` (default 3000).
    pub heartbeat_interval: Duration,
    /// `max.poll.interval.ms` (default 300000); also the rebalance timeout.
    pub max_poll_interval: Duration,
    /// `partition.assignment.strategy` (default `range,cooperative-sticky`,
    /// as in Kafka 4.x).
    pub assignors: Vec<Assignor>,
    /// `enable.auto.commit` (default true).
    pub auto_commit: bool,
    /// `auto.commit.interval.ms` (default 5000).
    pub auto_commit_interval: Duration,
    /// `group.protocol`: `classic` (the default) or `consumer` (KIP-848).
    pub protocol: GroupProtocol,
    /// `group.remote.assignor`: the coordinator's assignor under the
    /// `consumer` protocol (`uniform` or `range`; the broker's default when
    /// unset).
    pub remote_assignor: Option<String>,
    /// Bytes every member sees in this member's subscription (the classic
    /// protocol's `user_data`), and that [`Admin::describe_group`] reports:
    /// an application's own data (the engine advertises its web address
    /// this way, as Kafka Streams does `application.server`). Set in code;
    /// `None` by default. The KIP-848 protocol has no such field: ignored
    /// there.
    ///
    /// [`Admin::describe_group`]: crate::Admin::describe_group
    pub user_data: Option<bytes::Bytes>,
}

/// Which group protocol a consumer speaks (`group.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupProtocol {
    /// JoinGroup / SyncGroup / Heartbeat, with a client-side assignor run by
    /// the group's leader.
    Classic,
    /// ConsumerGroupHeartbeat with server-side assignment (KIP-848, Kafka
    /// 4.0+).
    Consumer,
}

impl GroupConfig {
    /// Reads group settings.
    pub fn from_properties(p: &Properties) -> Result<Self> {
        let group_id = p
            .get("group.id")
            .filter(|g| !g.is_empty())
            .ok_or_else(|| Error::Config("group.id is required".into()))?
            .to_owned();
        let mut assignors = Vec::new();
        for name in p
            .get("partition.assignment.strategy")
            .unwrap_or("range,cooperative-sticky")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            assignors.push(Assignor::from_name(name).ok_or_else(|| {
                Error::Config(format!(
                    "partition.assignment.strategy: unknown assignor `{name}`"
                ))
            })?);
        }
        if assignors.is_empty() {
            return Err(Error::Config(
                "partition.assignment.strategy is empty".into(),
            ));
        }
        let protocol = match p
            .get("group.protocol")
            .unwrap_or("classic")
            .to_ascii_lowercase()
            .as_str()
        {
            "classic" => GroupProtocol::Classic,
            "consumer" => GroupProtocol::Consumer,
            other => {
                return Err(Error::Config(format!(
                    "group.protocol={other}: expected classic or consumer"
                )))
            }
        };
        if protocol == GroupProtocol::Consumer {
            // As the Java client: these belong to the coordinator now.
            for key in [
                "partition.assignment.strategy",
                "session.timeout.ms",
                "heartbeat.interval.ms",
            ] {
                if p.get(key).is_some() {
                    return Err(Error::Config(format!(
                        "{key} is not supported with group.protocol=consumer (the coordinator decides it)"
                    )));
                }
            }
        }
        Ok(Self {
            consumer: ConsumerConfig::from_properties(p)?,
            group_id,
            instance_id: p.get("group.instance.id").map(str::to_owned),
            session_timeout: p.millis_or("session.timeout.ms", 45_000)?,
            heartbeat_interval: p.millis_or("heartbeat.interval.ms", 3_000)?,
            max_poll_interval: p.millis_or("max.poll.interval.ms", 300_000)?,
            assignors,
            auto_commit: p.bool_or("enable.auto.commit", true)?,
            auto_commit_interval: p.millis_or("auto.commit.interval.ms", 5_000)?,
            protocol,
            remote_assignor: p.get("group.remote.assignor").map(str::to_owned),
            user_data: None,
        })
    }
}

/// Called when the consumer's partitions change; each call is awaited
/// before the consumer goes on.
pub trait RebalanceListener: Send {
    /// Partitions about to be taken away; their offsets are committed after
    /// this returns (see [`revoked_offsets`](Self::revoked_offsets)). Flush
    /// state here.
    fn revoked(&mut self, partitions: &[TopicPartition]) -> impl Future<Output = ()> + Send {
        let _ = partitions;
        async {}
    }
    /// The offsets to commit for partitions being revoked, asked right
    /// after [`revoked`](Self::revoked), while the member still belongs to
    /// the generation that owns them (what Java's `onPartitionsRevoked`
    /// does with `commitSync`). `Some` offsets are committed, with or
    /// without auto-commit (an empty map commits nothing); `None` (the
    /// default) commits, with auto-commit only, the positions after every
    /// record handed out. An application that commits itself or has not
    /// processed all it was handed (it buffers) returns its own.
    fn revoked_offsets(
        &mut self,
        partitions: &[TopicPartition],
    ) -> Option<BTreeMap<TopicPartition, i64>> {
        let _ = partitions;
        None
    }
    /// Asked before [`revoked`](Self::revoked) during a
    /// [`poll`](GroupConsumer::poll): `true` holds the revocation back,
    /// and that poll returns at once, with no records, so that the caller
    /// can make its state ready to commit (flush what it buffers) outside
    /// the callback; the next poll revokes. A stream processor whose state
    /// lives where the listener cannot reach it (Kafka Streams flushes its
    /// caches inside `onPartitionsRevoked`) uses this. Return `true` only
    /// when the caller has something to flush, or polls never revoke.
    /// Never asked while closing. Default: `false`.
    fn hold_revocation(&mut self, partitions: &[TopicPartition]) -> bool {
        let _ = partitions;
        false
    }
    /// Partitions newly given to this member (positions are set already).
    fn assigned(&mut self, partitions: &[TopicPartition]) -> impl Future<Output = ()> + Send {
        let _ = partitions;
        async {}
    }
    /// Partitions lost without a chance to commit (the group moved on
    /// without us); another member may already own them.
    fn lost(&mut self, partitions: &[TopicPartition]) -> impl Future<Output = ()> + Send {
        let _ = partitions;
        async {}
    }
}

/// A listener that does nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoListener;
impl RebalanceListener for NoListener {}

/// The membership state machine of the protocol in use.
#[derive(Debug)]
// One per consumer, behind a mutex: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
enum GroupMember {
    Classic(Membership),
    Next(NextMembership),
}

impl GroupMember {
    fn phase(&self) -> Phase {
        match self {
            Self::Classic(m) => m.phase(),
            Self::Next(m) => m.phase(),
        }
    }
    fn member_id(&self) -> &str {
        match self {
            Self::Classic(m) => m.member_id(),
            Self::Next(m) => m.member_id(),
        }
    }
    /// The classic generation, or the KIP-848 member epoch: what offset
    /// commits carry.
    fn generation(&self) -> i32 {
        match self {
            Self::Classic(m) => m.generation(),
            Self::Next(m) => m.epoch(),
        }
    }
    fn owned(&self) -> &Partitions {
        match self {
            Self::Classic(m) => m.owned(),
            Self::Next(m) => m.owned(),
        }
    }
    fn next_deadline(&self) -> Instant {
        match self {
            Self::Classic(m) => m.next_deadline(),
            Self::Next(m) => m.next_deadline(),
        }
    }
    fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        match self {
            Self::Classic(m) => m.handle(now, event),
            Self::Next(m) => m.handle(now, event),
        }
    }
    /// Whether the background task heartbeats in this phase: the classic
    /// protocol once stable (joins run in `poll`), KIP-848 whenever the
    /// member is in the group or joining it.
    fn background(&self) -> bool {
        match self {
            Self::Classic(m) => m.phase() == Phase::Stable,
            Self::Next(m) => matches!(m.phase(), Phase::Stable | Phase::Joining),
        }
    }
}

struct Shared {
    membership: GroupMember,
    /// Actions the heartbeat task could not carry out itself.
    pending: VecDeque<Action>,
    /// Signalled when `pending` gets work, to cut a poll's fetch wait short.
    wake: Arc<tokio::sync::Notify>,
}

/// What the group's leader learned from JoinGroup.
#[derive(Default)]
struct JoinState {
    protocol: Option<String>,
    members: Vec<(String, Option<String>, Bytes)>,
    plan: Vec<(String, Bytes)>,
}

/// Reads a group member's current [`GroupMetadata`]; see
/// [`GroupConsumer::metadata_handle`].
#[derive(Clone)]
pub struct GroupMetadataHandle {
    shared: Arc<Mutex<Shared>>,
    group_id: String,
    instance_id: Option<String>,
}

impl std::fmt::Debug for GroupMetadataHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("GroupMetadataHandle")
            .field(&self.get())
            .finish()
    }
}

impl GroupMetadataHandle {
    /// The member's identity now.
    pub fn get(&self) -> GroupMetadata {
        let s = lock(&self.shared);
        GroupMetadata {
            group_id: self.group_id.clone(),
            generation: s.membership.generation(),
            member_id: s.membership.member_id().to_owned(),
            instance_id: self.instance_id.clone(),
        }
    }
}

/// The outcome of [`GroupConsumer::commit_async`]: a future of the commit's
/// result. Dropping it does not cancel the commit.
#[derive(Debug)]
pub struct CommitHandle(tokio::task::JoinHandle<Result<()>>);

impl Future for CommitHandle {
    type Output = Result<()>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|e| Err(Error::Config(format!("commit task failed: {e}")))))
    }
}

/// A consumer in a consumer group.
pub struct GroupConsumer<L: RebalanceListener = NoListener> {
    client: Client,
    cfg: GroupConfig,
    consumer: Consumer,
    topics: Vec<String>,
    /// Subscription by pattern: re-matched against the cluster's topics
    /// every `metadata.max.age.ms`.
    pattern: Option<(regex::Regex, Instant)>,
    shared: Arc<Mutex<Shared>>,
    heartbeat: tokio::task::JoinHandle<()>,
    listener: L,
    join: JoinState,
    /// Positions after the records the last poll returned.
    delivered: BTreeMap<TopicPartition, i64>,
    /// Positions the application has moved on from (safe to commit).
    processed: BTreeMap<TopicPartition, i64>,
    committed: BTreeMap<TopicPartition, i64>,
    last_auto_commit: Instant,
}

impl<L: RebalanceListener> std::fmt::Debug for GroupConsumer<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupConsumer")
            .field("group", &self.cfg.group_id)
            .field("topics", &self.topics)
            .finish()
    }
}

/// How [`GroupConsumer::run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    /// Nothing more to do now.
    Done,
    /// The listener held a revocation back; it is pending.
    Held,
}

fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

impl<L: RebalanceListener> GroupConsumer<L> {
    /// Connects and subscribes to `topics`. Joining happens in the first
    /// [`poll`](Self::poll).
    pub async fn subscribe(cfg: GroupConfig, topics: &[&str], listener: L) -> Result<Self> {
        let client = Client::connect(cfg.consumer.client.clone()).await?;
        let consumer = Consumer::with_client(client.clone(), cfg.consumer.clone());
        let now = Instant::now();
        let membership = match cfg.protocol {
            GroupProtocol::Classic => GroupMember::Classic(Membership::new(
                MembershipConfig {
                    session_timeout: cfg.session_timeout,
                    heartbeat_interval: cfg.heartbeat_interval,
                    max_poll_interval: cfg.max_poll_interval,
                    retry_backoff: cfg.consumer.client.retry_backoff,
                    instance_id: cfg.instance_id.clone(),
                    cooperative: cfg.assignors.first().is_some_and(|a| a.is_cooperative()),
                },
                now,
            )),
            GroupProtocol::Consumer => GroupMember::Next(NextMembership::new(
                NextConfig {
                    member_id: random_member_id(),
                    instance_id: cfg.instance_id.clone(),
                    max_poll_interval: cfg.max_poll_interval,
                    retry_backoff: cfg.consumer.client.retry_backoff,
                    server_assignor: cfg.remote_assignor.clone(),
                },
                topics.iter().map(|t| (*t).to_owned()).collect(),
                now,
            )),
        };
        let shared = Arc::new(Mutex::new(Shared {
            membership,
            pending: VecDeque::new(),
            wake: Arc::new(tokio::sync::Notify::new()),
        }));
        let heartbeat = tokio::spawn(heartbeat_loop(
            client.clone(),
            cfg.group_id.clone(),
            cfg.instance_id.clone(),
            shared.clone(),
        ));
        Ok(Self {
            client,
            consumer,
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            pattern: None,
            shared,
            heartbeat,
            listener,
            join: JoinState::default(),
            delivered: BTreeMap::new(),
            processed: BTreeMap::new(),
            committed: BTreeMap::new(),
            last_auto_commit: now,
            cfg,
        })
    }

    /// Connects and subscribes to every topic whose whole name matches
    /// `pattern` (a regular expression), internal topics excepted. Topics
    /// created or deleted later are picked up every `metadata.max.age.ms`,
    /// with a rebalance.
    pub async fn subscribe_pattern(cfg: GroupConfig, pattern: &str, listener: L) -> Result<Self> {
        let re = regex::Regex::new(&format!("^(?:{pattern})$"))
            .map_err(|e| Error::Config(format!("subscription pattern `{pattern}`: {e}")))?;
        let mut me = Self::subscribe(cfg, &[], listener).await?;
        me.topics = me.matching(&re).await?;
        if let GroupMember::Next(m) = &mut lock(&me.shared).membership {
            m.set_subscription(me.topics.clone());
        }
        me.pattern = Some((re, Instant::now()));
        Ok(me)
    }

    async fn matching(&self, re: &regex::Regex) -> Result<Vec<String>> {
        self.client.refresh_metadata(None).await?;
        let mut topics: Vec<String> = self
            .client
            .cluster()
            .topics
            .values()
            .filter(|t| !t.internal && re.is_match(&t.name))
            .map(|t| t.name.clone())
            .collect();
        topics.sort();
        Ok(topics)
    }

    /// The topics subscribed to now.
    pub fn subscription(&self) -> &[String] {
        &self.topics
    }

    /// The listener.
    pub fn listener(&mut self) -> &mut L {
        &mut self.listener
    }

    /// The partitions this member owns now.
    pub fn assignment(&self) -> Partitions {
        lock(&self.shared).membership.owned().clone()
    }

    /// This member's identity, for
    /// [`TransactionalProducer::send_offsets_to_transaction`](crate::producer::TransactionalProducer::send_offsets_to_transaction).
    pub fn group_metadata(&self) -> GroupMetadata {
        let (generation, member_id) = self.generation();
        GroupMetadata {
            group_id: self.cfg.group_id.clone(),
            generation,
            member_id,
            instance_id: self.cfg.instance_id.clone(),
        }
    }

    /// A handle that reads this member's [`GroupMetadata`] at any time,
    /// from a [`RebalanceListener`] too: a listener that commits a
    /// transaction while partitions are revoked needs the generation of that
    /// moment (under the cooperative protocol, the new one).
    pub fn metadata_handle(&self) -> GroupMetadataHandle {
        GroupMetadataHandle {
            shared: self.shared.clone(),
            group_id: self.cfg.group_id.clone(),
            instance_id: self.cfg.instance_id.clone(),
        }
    }

    /// The current generation and member id.
    pub fn generation(&self) -> (i32, String) {
        let s = lock(&self.shared);
        (
            s.membership.generation(),
            s.membership.member_id().to_owned(),
        )
    }

    /// Joins or rejoins as needed, commits when due, and returns fetched
    /// records. Records returned by the previous call count as processed.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe while a rebalance is in progress: dropping the future
    /// may leave a listener callback half done.
    pub async fn poll(&mut self) -> Result<Vec<Fetched>> {
        for (tp, off) in std::mem::take(&mut self.delivered) {
            self.processed.insert(tp, off);
        }
        let mut actions = lock(&self.shared)
            .membership
            .handle(Instant::now(), Event::Polled);
        if let Some((re, checked)) = self.pattern.clone() {
            if checked.elapsed() >= self.cfg.consumer.client.metadata_max_age {
                let topics = self.matching(&re).await?;
                self.pattern = Some((re, Instant::now()));
                if topics != self.topics {
                    tracing::info!(group = %self.cfg.group_id, ?topics, "pattern subscription changed");
                    self.topics = topics;
                    if let GroupMember::Next(m) = &mut lock(&self.shared).membership {
                        m.set_subscription(self.topics.clone());
                    }
                    actions.extend(
                        lock(&self.shared)
                            .membership
                            .handle(Instant::now(), Event::SubscriptionChanged),
                    );
                }
            }
        }
        if self.run(actions, true).await? == Run::Held {
            return Ok(Vec::new());
        }
        if self.cfg.auto_commit && self.last_auto_commit.elapsed() >= self.cfg.auto_commit_interval
        {
            self.commit_processed(None).await?;
            self.last_auto_commit = Instant::now();
        }
        // Fetch, but wake for membership work the heartbeat task found (a
        // rebalance, an assignment to reconcile) instead of sitting out the
        // fetch wait: a rebalance does not wait for the next poll.
        let wake = lock(&self.shared).wake.clone();
        let fetched = loop {
            let work = wake.notified();
            tokio::select! {
                biased;
                fetched = self.consumer.poll() => break fetched?,
                _ = work => {
                    if !lock(&self.shared).pending.is_empty()
                        && self.run(Vec::new(), true).await? == Run::Held
                    {
                        break Vec::new();
                    }
                }
            }
        };
        for f in &fetched {
            self.delivered
                .insert(f.topic_partition().clone(), f.next_offset());
        }
        Ok(fetched)
    }

    /// The ranges the consumer skipped since the last call because their
    /// records were deleted before they were read
    /// ([`Consumer::take_gaps`](crate::consumer::Consumer::take_gaps)).
    pub fn take_gaps(&mut self) -> Vec<crate::consumer::Gap> {
        self.consumer.take_gaps()
    }

    /// Commits the positions after everything the consumer has returned so
    /// far (call after processing it).
    pub async fn commit(&mut self) -> Result<()> {
        for (tp, off) in std::mem::take(&mut self.delivered) {
            self.processed.insert(tp, off);
        }
        self.commit_processed(None).await
    }

    /// Starts committing the positions after everything the consumer has
    /// returned so far, and returns at once; the returned handle resolves to
    /// the commit's outcome (await it, or drop it to ignore the outcome).
    ///
    /// As with the Java client's `commitAsync`, a failed asynchronous commit
    /// is not retried (a retry could land after a newer commit). Commits
    /// leave on one connection to the coordinator, which handles them in
    /// order. Later automatic or synchronous commits send these offsets
    /// again if needed.
    pub fn commit_async(&mut self) -> CommitHandle {
        for (tp, off) in std::mem::take(&mut self.delivered) {
            self.processed.insert(tp, off);
        }
        let offsets: BTreeMap<TopicPartition, i64> = self
            .processed
            .iter()
            .filter(|(tp, off)| self.committed.get(*tp) != Some(off))
            .map(|(tp, off)| (tp.clone(), *off))
            .collect();
        let (generation, member) = self.generation();
        let group = self.cfg.group_id.clone();
        let req = commit_request(
            &group,
            generation,
            &member,
            self.cfg.instance_id.as_deref(),
            offsets
                .iter()
                .map(|(tp, off)| (&*tp.topic, tp.partition, *off)),
        );
        let client = self.client.clone();
        let addr = client.cached_coordinator(CoordinatorType::Group, &self.cfg.group_id);
        CommitHandle(tokio::spawn(async move {
            if offsets.is_empty() {
                return Ok(());
            }
            let addr = addr.ok_or_else(|| {
                Error::server(
                    ErrorCode::COORDINATOR_NOT_AVAILABLE,
                    Some(format!("group {group}")),
                    "OffsetCommit",
                    None,
                    None,
                )
            })?;
            let conn = client.coordinator_conn(&addr).await?;
            let resp = conn.call(&req).await?;
            conn.throttle(resp.throttle_time_ms);
            check_commit(&resp, &group)
        }))
    }

    /// The client underneath (metadata, leaders).
    pub fn client(&self) -> &Client {
        self.consumer.client()
    }

    /// Stops fetching an owned partition until it is resumed or revoked.
    pub fn pause(&mut self, tp: &TopicPartition) {
        self.consumer.pause(tp);
    }

    /// Fetches a paused partition again, from its position.
    pub fn resume(&mut self, tp: &TopicPartition) {
        self.consumer.resume(tp);
    }

    /// The next offset [`poll`](Self::poll) will return for an owned
    /// partition; `None` while its start is still being looked up (or for a
    /// partition this member does not own).
    pub fn position(&self, tp: &TopicPartition) -> Option<i64> {
        self.consumer.position(tp)
    }

    /// How many records an owned partition has past its position, as the
    /// last fetch response told (see [`Consumer::lag`](crate::consumer::Consumer::lag)).
    pub fn lag(&self, tp: &TopicPartition) -> Option<i64> {
        self.consumer.lag(tp)
    }

    /// Moves an owned partition's position: the next poll returns records
    /// from there (after an aborted transaction, back to what was
    /// committed). Records handed out before no longer count as processed.
    pub fn seek(&mut self, tp: &TopicPartition, to: Offset) -> Result<()> {
        self.consumer.seek(tp, to)?;
        self.delivered.remove(tp);
        self.processed.remove(tp);
        Ok(())
    }

    /// Commits explicit offsets (the next offset to read, per partition).
    pub async fn commit_offsets(&mut self, offsets: &BTreeMap<TopicPartition, i64>) -> Result<()> {
        self.send_commit(offsets).await
    }

    /// Leaves the group: revokes (committing, with auto-commit) and sends
    /// LeaveGroup, unless this is a static member.
    pub async fn close(mut self) -> Result<()> {
        for (tp, off) in std::mem::take(&mut self.delivered) {
            self.processed.insert(tp, off);
        }
        let actions = lock(&self.shared)
            .membership
            .handle(Instant::now(), Event::Close);
        let res = self.run(actions, false).await;
        self.heartbeat.abort();
        res.map(|_| ())
    }

    /// Drives the membership until it is stable (or nothing more can be
    /// done now), carrying out each action in order. With `may_hold`, the
    /// listener may hold a revocation back: the actions left wait for the
    /// next call.
    async fn run(&mut self, first: Vec<Action>, may_hold: bool) -> Result<Run> {
        let mut queue: VecDeque<Action> = first.into();
        let deadline = Instant::now() + self.cfg.max_poll_interval;
        loop {
            {
                let mut s = lock(&self.shared);
                queue.extend(s.pending.drain(..));
            }
            let Some(action) = queue.pop_front() else {
                let (phase, next) = {
                    let s = lock(&self.shared);
                    (s.membership.phase(), s.membership.next_deadline())
                };
                match phase {
                    Phase::Stable | Phase::Left => return Ok(Run::Done),
                    Phase::Failed => return Err(Error::Config("group membership failed".into())),
                    _ => {}
                }
                if Instant::now() >= deadline {
                    return Err(Error::Timeout {
                        what: format!("joining group {}", self.cfg.group_id),
                        after: self.cfg.max_poll_interval,
                    });
                }
                tokio::time::sleep_until(next.max(Instant::now() + Duration::from_millis(10)))
                    .await;
                let acts = lock(&self.shared)
                    .membership
                    .handle(Instant::now(), Event::Tick);
                queue.extend(acts);
                continue;
            };
            if let (Action::Revoke(ps), true) = (&action, may_hold) {
                if self.listener.hold_revocation(&self.tps(ps)) {
                    tracing::debug!(group = %self.cfg.group_id, "revocation held for the application to flush");
                    let mut s = lock(&self.shared);
                    for a in queue.into_iter().rev() {
                        s.pending.push_front(a);
                    }
                    s.pending.push_front(action);
                    return Ok(Run::Held);
                }
            }
            tracing::trace!(?action, "group action");
            let events = self.act(action).await?;
            for e in events {
                let acts = lock(&self.shared).membership.handle(Instant::now(), e);
                queue.extend(acts);
            }
        }
    }

    async fn coordinator(&self) -> Result<Connection> {
        let addr = self
            .client
            .cached_coordinator(CoordinatorType::Group, &self.cfg.group_id);
        match addr {
            Some(a) => self.client.coordinator_conn(&a).await,
            None => Err(Error::server(
                ErrorCode::COORDINATOR_NOT_AVAILABLE,
                None,
                "FindCoordinator",
                None,
                None,
            )),
        }
    }

    /// Carries out one action; returns the events it produced.
    async fn act(&mut self, action: Action) -> Result<Vec<Event>> {
        let group = self.cfg.group_id.clone();
        Ok(match action {
            Action::FindCoordinator { not_before } => {
                tokio::time::sleep_until(not_before).await;
                match self
                    .client
                    .refresh_coordinator(CoordinatorType::Group, &group)
                    .await
                {
                    Ok(_) => vec![Event::CoordinatorFound],
                    // GROUP_AUTHORIZATION_FAILED and the like: no retry
                    // can fix them, so the caller hears of them.
                    Err(mut e @ Error::Server { .. }) if e.action() == crate::Action::Fail => {
                        if let Error::Server { message, .. } = &mut e {
                            *message = Some(match message.take() {
                                Some(m) => format!("group `{group}`: {m}"),
                                None => format!("group `{group}`"),
                            });
                        }
                        return Err(e);
                    }
                    Err(e) => {
                        tracing::debug!(group, error = %e, "FindCoordinator failed");
                        vec![Event::CoordinatorLost]
                    }
                }
            }
            Action::Join {
                member_id,
                owned,
                generation,
            } => match self.join_group(&member_id, &owned, generation).await {
                Ok(e) => vec![e],
                Err(e) if e.action() == crate::Action::Fail && e.code().is_some() => return Err(e),
                Err(e) => {
                    tracing::debug!(group, error = %e, "JoinGroup failed");
                    vec![Event::CoordinatorLost]
                }
            },
            Action::ComputePlan => {
                self.compute_plan().await?;
                vec![Event::PlanReady]
            }
            Action::Sync => match self.sync_group().await {
                Ok(e) => vec![e],
                Err(e) => match e {
                    Error::Server { .. } | Error::Config(_) => return Err(e),
                    other => {
                        tracing::debug!(group, error = %other, "SyncGroup failed");
                        vec![Event::CoordinatorLost]
                    }
                },
            },
            Action::Heartbeat => {
                let (generation, member) = self.generation();
                match self.coordinator().await {
                    Ok(conn) => match send_heartbeat(
                        &conn,
                        &group,
                        generation,
                        &member,
                        &self.cfg.instance_id,
                    )
                    .await
                    {
                        Ok(code) => vec![Event::Heartbeat { code }],
                        Err(_) => vec![Event::CoordinatorLost],
                    },
                    Err(_) => vec![Event::CoordinatorLost],
                }
            }
            Action::Leave => {
                let member = self.generation().1;
                if let Ok(conn) = self.coordinator().await {
                    // v3+ name members in a batch (KIP-345).
                    let req = LeaveGroupRequest::default()
                        .with_group_id(GroupId(sb(&group)))
                        .with_members(vec![MemberIdentity::default()
                            .with_member_id(sb(&member))
                            .with_group_instance_id(self.cfg.instance_id.as_deref().map(sb))]);
                    if let Err(e) = conn.call(&req).await {
                        tracing::debug!(group, error = %e, "LeaveGroup failed");
                    }
                }
                Vec::new()
            }
            Action::Revoke(ps) => {
                let tps = self.tps(&ps);
                self.listener.revoked(&tps).await;
                match self.listener.revoked_offsets(&tps) {
                    Some(offsets) if offsets.is_empty() => {}
                    Some(offsets) => self.send_commit(&offsets).await?,
                    None if self.cfg.auto_commit => self.commit_processed(Some(&tps)).await?,
                    None => {}
                }
                self.forget(&tps);
                Vec::new()
            }
            Action::Lose(ps) => {
                let tps = self.tps(&ps);
                self.listener.lost(&tps).await;
                self.forget(&tps);
                Vec::new()
            }
            Action::Assign(ps) => {
                let tps = self.tps(&ps);
                self.start_partitions(&ps).await?;
                self.listener.assigned(&tps).await;
                Vec::new()
            }
            Action::Fail(code) => {
                return Err(Error::server(
                    code,
                    Some(format!("group {group}")),
                    match self.cfg.protocol {
                        GroupProtocol::Classic => "Heartbeat",
                        GroupProtocol::Consumer => "ConsumerGroupHeartbeat",
                    },
                    None,
                    None,
                ));
            }
            Action::ConsumerHeartbeat(hb) => {
                let addr = self
                    .client
                    .cached_coordinator(CoordinatorType::Group, &group);
                vec![consumer_heartbeat(&self.client, addr, &group, &self.topics, &hb).await]
            }
            Action::Reconciled(id) => vec![Event::Reconciled(id)],
        })
    }

    fn tps(&self, ps: &Partitions) -> Vec<TopicPartition> {
        ps.iter()
            .flat_map(|(t, parts)| {
                let topic: Arc<str> = Arc::from(t.as_str());
                parts.iter().map(move |&p| TopicPartition {
                    topic: topic.clone(),
                    partition: p,
                })
            })
            .collect()
    }

    fn forget(&mut self, tps: &[TopicPartition]) {
        self.consumer.unassign(tps);
        for tp in tps {
            self.delivered.remove(tp);
            self.processed.remove(tp);
            self.committed.remove(tp);
        }
    }

    async fn join_group(
        &mut self,
        member_id: &str,
        owned: &Partitions,
        generation: i32,
    ) -> Result<Event> {
        let conn = self.coordinator().await?;
        let protocols = self
            .cfg
            .assignors
            .iter()
            .map(|a| {
                let sub = Subscription {
                    topics: self.topics.clone(),
                    user_data: self.cfg.user_data.clone(),
                    owned: if a.is_cooperative() {
                        owned.clone()
                    } else {
                        Partitions::new()
                    },
                    generation,
                    rack: None,
                };
                JoinGroupRequestProtocol::default()
                    .with_name(sb(a.name()))
                    .with_metadata(sub.encode(CONSUMER_PROTOCOL_VERSION))
            })
            .collect();
        let req = JoinGroupRequest::default()
            .with_group_id(GroupId(sb(&self.cfg.group_id)))
            .with_session_timeout_ms(self.cfg.session_timeout.as_millis() as i32)
            .with_rebalance_timeout_ms(
                self.cfg.max_poll_interval.as_millis().min(i32::MAX as u128) as i32
            )
            .with_member_id(sb(member_id))
            .with_group_instance_id(self.cfg.instance_id.as_deref().map(sb))
            .with_protocol_type(sb("consumer"))
            .with_protocols(protocols);
        let resp = conn
            .call_timeout(&req, self.cfg.max_poll_interval + Duration::from_secs(5))
            .await?;
        conn.throttle(resp.throttle_time_ms);
        let code = ErrorCode(resp.error_code);
        let me = resp.member_id.as_str().to_owned();
        self.join.protocol = resp.protocol_name.as_ref().map(|p| p.as_str().to_owned());
        self.join.members = resp
            .members
            .iter()
            .map(|m| {
                (
                    m.member_id.as_str().to_owned(),
                    m.group_instance_id.as_ref().map(|i| i.as_str().to_owned()),
                    m.metadata.clone(),
                )
            })
            .collect();
        let leader = code.is_ok() && resp.leader.as_str() == me && !resp.skip_assignment;
        Ok(Event::Joined {
            code,
            member_id: me,
            generation: resp.generation_id,
            leader,
        })
    }

    /// The leader's job: decode every member's subscription, run the chosen
    /// assignor over the subscribed topics' partition counts.
    async fn compute_plan(&mut self) -> Result<()> {
        let name = self.join.protocol.clone().unwrap_or_default();
        let assignor = Assignor::from_name(&name).ok_or_else(|| {
            Error::Config(format!(
                "the group chose assignor `{name}`, which this client does not have"
            ))
        })?;
        let mut members = Vec::new();
        let mut wanted: Vec<String> = Vec::new();
        for (id, instance, meta) in &self.join.members {
            let subscription = Subscription::decode(meta).map_err(|e| {
                Error::Config(format!(
                    "group {}: member {id} sent an unreadable subscription: {e}",
                    self.cfg.group_id
                ))
            })?;
            wanted.extend(subscription.topics.iter().cloned());
            members.push(Member {
                id: id.clone(),
                instance_id: instance.clone(),
                subscription,
            });
        }
        wanted.sort();
        wanted.dedup();
        let mut counts = TopicCounts::new();
        for t in &wanted {
            if let Ok(info) = self.client.topic(t, true, false).await {
                counts.insert(t.clone(), info.partitions.len() as i32);
            }
        }
        let plan = assignor.assign(&counts, &members);
        self.join.plan = plan
            .into_iter()
            .map(|(m, parts)| {
                let a = Assignment {
                    partitions: parts,
                    user_data: None,
                };
                (m, a.encode(CONSUMER_PROTOCOL_VERSION))
            })
            .collect();
        Ok(())
    }

    async fn sync_group(&mut self) -> Result<Event> {
        let conn = self.coordinator().await?;
        let (generation, member) = self.generation();
        let req = SyncGroupRequest::default()
            .with_group_id(GroupId(sb(&self.cfg.group_id)))
            .with_generation_id(generation)
            .with_member_id(sb(&member))
            .with_group_instance_id(self.cfg.instance_id.as_deref().map(sb))
            .with_protocol_type(Some(sb("consumer")))
            .with_protocol_name(self.join.protocol.as_deref().map(sb))
            .with_assignments(
                std::mem::take(&mut self.join.plan)
                    .into_iter()
                    .map(|(m, a)| {
                        SyncGroupRequestAssignment::default()
                            .with_member_id(sb(&m))
                            .with_assignment(a)
                    })
                    .collect(),
            );
        let resp = conn
            .call_timeout(&req, self.cfg.max_poll_interval + Duration::from_secs(5))
            .await?;
        conn.throttle(resp.throttle_time_ms);
        let code = ErrorCode(resp.error_code);
        let assignment = if code.is_ok() {
            Assignment::decode(&resp.assignment).map_err(|e| {
                Error::Config(format!(
                    "group {}: the leader's assignment is unreadable: {e}",
                    self.cfg.group_id
                ))
            })?
        } else {
            Assignment::default()
        };
        // Only partitions of topics we subscribe to: a malformed plan must not
        // make us consume what we did not ask for.
        let mut partitions = assignment.partitions;
        partitions.retain(|t, _| self.topics.contains(t));
        Ok(Event::Synced {
            code,
            assignment: partitions,
        })
    }

    /// Positions newly assigned partitions at their committed offsets, or
    /// per `auto.offset.reset`.
    async fn start_partitions(&mut self, ps: &Partitions) -> Result<()> {
        if ps.is_empty() {
            return Ok(());
        }
        let committed = self.fetch_committed(ps).await?;
        let reset = match self.cfg.consumer.auto_offset_reset {
            OffsetReset::Earliest => Some(Offset::Beginning),
            OffsetReset::Latest => Some(Offset::End),
            OffsetReset::None => None,
        };
        for (t, parts) in ps {
            for &p in parts {
                let start = match committed.get(&(t.clone(), p)) {
                    Some(&off) if off >= 0 => Offset::At(off),
                    _ => reset.ok_or_else(|| {
                        Error::server(
                            ErrorCode::OFFSET_OUT_OF_RANGE,
                            Some(format!(
                                "group {} has no committed offset and auto.offset.reset=none",
                                self.cfg.group_id
                            )),
                            "OffsetFetch",
                            Some(t),
                            Some(p),
                        )
                    })?,
                };
                self.consumer.assign(t, &[p], start).await?;
                if let Offset::At(off) = start {
                    let tp = TopicPartition {
                        topic: Arc::from(t.as_str()),
                        partition: p,
                    };
                    self.committed.insert(tp, off);
                }
            }
        }
        Ok(())
    }

    /// Committed offsets of the group for `ps` (OffsetFetch, require_stable);
    /// -1 where none is committed.
    pub async fn fetch_committed(&self, ps: &Partitions) -> Result<GroupOffsets> {
        let req = fetch_request(&self.cfg.group_id, Some(ps), true);
        let timeout = self.cfg.consumer.client.default_api_timeout;
        self.client
            .retry("OffsetFetch", timeout, || async {
                let result = async {
                    let conn = self.coordinator().await?;
                    let resp = conn.call(&req).await?;
                    conn.throttle(resp.throttle_time_ms);
                    fetched_offsets(&resp)
                }
                .await;
                if let Err(e) = &result {
                    self.refresh_coordinator_after(e).await;
                }
                result
            })
            .await
    }

    /// After a failed request to the group coordinator: looks the
    /// coordinator up again when the error says it moved (NOT_COORDINATOR,
    /// ...) or the connection failed (its broker may be gone or fenced),
    /// so that the next attempt does not ask the same stale address.
    async fn refresh_coordinator_after(&self, e: &Error) {
        let moved = e.code().is_some_and(|c| c.is_coordinator_error())
            || matches!(
                e,
                Error::Disconnected { .. } | Error::Timeout { .. } | Error::Io { .. }
            );
        if moved {
            // Cached for the next call; a failed lookup forgets it.
            let _ = self
                .client
                .refresh_coordinator(CoordinatorType::Group, &self.cfg.group_id)
                .await;
        }
    }

    /// Commits processed positions (of `only` these partitions, if given)
    /// that moved since the last commit.
    async fn commit_processed(&mut self, only: Option<&[TopicPartition]>) -> Result<()> {
        let offsets: BTreeMap<TopicPartition, i64> = self
            .processed
            .iter()
            .filter(|(tp, off)| {
                only.is_none_or(|o| o.contains(tp)) && self.committed.get(*tp) != Some(off)
            })
            .map(|(tp, off)| (tp.clone(), *off))
            .collect();
        if offsets.is_empty() {
            return Ok(());
        }
        self.send_commit(&offsets).await?;
        for (tp, off) in offsets {
            self.committed.insert(tp, off);
        }
        Ok(())
    }

    async fn send_commit(&self, offsets: &BTreeMap<TopicPartition, i64>) -> Result<()> {
        let (generation, member) = self.generation();
        let group = &self.cfg.group_id;
        let req = commit_request(
            group,
            generation,
            &member,
            self.cfg.instance_id.as_deref(),
            offsets
                .iter()
                .map(|(tp, off)| (&*tp.topic, tp.partition, *off)),
        );
        let timeout = self.cfg.consumer.client.default_api_timeout;
        self.client
            .retry("OffsetCommit", timeout, || async {
                let result = match self.coordinator().await {
                    Ok(conn) => {
                        let resp = conn.call(&req).await?;
                        conn.throttle(resp.throttle_time_ms);
                        check_commit(&resp, group)
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = &result {
                    self.refresh_coordinator_after(e).await;
                }
                result
            })
            .await
    }
}

impl<L: RebalanceListener> Drop for GroupConsumer<L> {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

async fn send_heartbeat(
    conn: &Connection,
    group: &str,
    generation: i32,
    member: &str,
    instance: &Option<String>,
) -> Result<ErrorCode> {
    let req = HeartbeatRequest::default()
        .with_group_id(GroupId(sb(group)))
        .with_generation_id(generation)
        .with_member_id(sb(member))
        .with_group_instance_id(instance.as_deref().map(sb));
    let resp = conn.call(&req).await?;
    conn.throttle(resp.throttle_time_ms);
    Ok(ErrorCode(resp.error_code))
}

/// ConsumerGroupHeartbeat (KIP-848) to the coordinator at `addr`, with
/// owned partitions named by topic id; the answer, or the failure, as an
/// event. Assigned topic ids are resolved to names through metadata, and
/// only topics of `subscription` are kept: a coordinator's slip cannot make
/// us consume what we did not ask for.
async fn consumer_heartbeat(
    client: &Client,
    addr: Option<String>,
    group: &str,
    subscription: &[String],
    hb: &NextHeartbeat,
) -> Event {
    let lost = || Event::ConsumerHeartbeat {
        code: ErrorCode::COORDINATOR_NOT_AVAILABLE,
        member_id: None,
        epoch: -1,
        interval: Duration::ZERO,
        assignment: None,
    };
    let Some(addr) = addr else {
        return Event::CoordinatorLost;
    };
    let mut owned = None;
    if let Some(ps) = &hb.owned {
        let mut list = Vec::with_capacity(ps.len());
        for (topic, parts) in ps {
            match client.topic(topic, false, false).await {
                Ok(info) => list.push(
                    CghTopicPartitions::default()
                        .with_topic_id(uuid::Uuid::from_bytes(info.id))
                        .with_partitions(parts.clone()),
                ),
                Err(e) => {
                    tracing::debug!(group, topic, error = %e, "no topic id for an owned topic");
                    return lost();
                }
            }
        }
        owned = Some(list);
    }
    let req = ConsumerGroupHeartbeatRequest::default()
        .with_group_id(GroupId(sb(group)))
        .with_member_id(sb(&hb.member_id))
        .with_member_epoch(hb.epoch)
        .with_instance_id(hb.instance_id.as_deref().map(sb))
        .with_rebalance_timeout_ms(hb.rebalance_timeout_ms)
        .with_subscribed_topic_names(
            hb.subscription
                .as_ref()
                .map(|ts| ts.iter().map(|t| topic_name(t)).collect()),
        )
        .with_server_assignor(hb.server_assignor.as_deref().map(sb))
        .with_topic_partitions(owned);
    let conn = match client.coordinator_conn(&addr).await {
        Ok(c) => c,
        Err(_) => return Event::CoordinatorLost,
    };
    let resp = match conn.call(&req).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(group, error = %e, "ConsumerGroupHeartbeat failed");
            return Event::CoordinatorLost;
        }
    };
    conn.throttle(resp.throttle_time_ms);
    let code = ErrorCode(resp.error_code);
    if !code.is_ok() {
        tracing::debug!(
            group,
            %code,
            message = resp.error_message.as_ref().map(|m| m.as_str()),
            "ConsumerGroupHeartbeat error"
        );
    }
    let assignment = match &resp.assignment {
        Some(a) if code.is_ok() => {
            Some(resolve_assignment(client, group, subscription, &a.topic_partitions).await)
        }
        _ => None,
    };
    Event::ConsumerHeartbeat {
        code,
        member_id: resp.member_id.as_ref().map(|m| m.as_str().to_owned()),
        epoch: resp.member_epoch,
        interval: Duration::from_millis(resp.heartbeat_interval_ms.max(0) as u64),
        assignment,
    }
}

/// Names the topics of a KIP-848 assignment, refreshing metadata once if an
/// id is unknown. Unknown ids and unsubscribed topics are left out.
async fn resolve_assignment(
    client: &Client,
    group: &str,
    subscription: &[String],
    parts: &[kafka_protocol::messages::consumer_group_heartbeat_response::TopicPartitions],
) -> Partitions {
    let lookup = |client: &Client| {
        let cluster = client.cluster();
        let by_id: HashMap<[u8; 16], String> = cluster
            .topics
            .values()
            .map(|t| (t.id, t.name.clone()))
            .collect();
        parts
            .iter()
            .map(|tp| (by_id.get(tp.topic_id.as_bytes()).cloned(), tp))
            .collect::<Vec<_>>()
    };
    let mut named = lookup(client);
    if named.iter().any(|(n, _)| n.is_none()) {
        let topics: Vec<&str> = subscription.iter().map(String::as_str).collect();
        if let Err(e) = client.refresh_metadata(Some(&topics)).await {
            tracing::debug!(group, error = %e, "metadata refresh for an assignment failed");
        }
        named = lookup(client);
    }
    let mut out = Partitions::new();
    for (name, tp) in named {
        match name {
            Some(n) if subscription.contains(&n) => {
                let mut ps = tp.partitions.clone();
                ps.sort_unstable();
                ps.dedup();
                ps.retain(|p| *p >= 0);
                out.insert(n, ps);
            }
            Some(n) => {
                tracing::warn!(
                    group,
                    topic = n,
                    "assigned a topic we do not subscribe to; ignored"
                );
            }
            None => {
                tracing::warn!(group, topic_id = %tp.topic_id, "assigned an unknown topic id; ignored");
            }
        }
    }
    out
}

/// A fresh member id, as the Java client makes them: 16 random bytes in
/// URL-safe base64 without padding.
fn random_member_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes: [u8; 16] = rand::random();
    let mut out = String::with_capacity(22);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// Heartbeats in the background: under the classic protocol while the
/// member is stable, under KIP-848 whenever it is in the group. Anything
/// else the membership asks for (joins, listener callbacks) is left for
/// `poll` to do.
async fn heartbeat_loop(
    client: Client,
    group: String,
    instance: Option<String>,
    shared: Arc<Mutex<Shared>>,
) {
    loop {
        let next = lock(&shared).membership.next_deadline();
        // Wake at least every 250 ms: `poll` may have changed the state.
        let now = Instant::now();
        tokio::time::sleep_until(
            next.max(now + Duration::from_millis(50))
                .min(now + Duration::from_millis(250)),
        )
        .await;
        let mut queue: VecDeque<Action> = {
            let mut s = lock(&shared);
            if !s.membership.background() {
                continue;
            }
            s.membership.handle(Instant::now(), Event::Tick).into()
        };
        while let Some(a) = queue.pop_front() {
            let event = match a {
                Action::FindCoordinator { not_before } => {
                    // Keep heartbeating through a coordinator move without
                    // waiting for the application's next poll.
                    tokio::time::sleep_until(not_before).await;
                    match client
                        .refresh_coordinator(CoordinatorType::Group, &group)
                        .await
                    {
                        Ok(_) => Event::CoordinatorFound,
                        Err(_) => Event::CoordinatorLost,
                    }
                }
                Action::Heartbeat => {
                    let (generation, member) = {
                        let s = lock(&shared);
                        (
                            s.membership.generation(),
                            s.membership.member_id().to_owned(),
                        )
                    };
                    let addr = client.cached_coordinator(CoordinatorType::Group, &group);
                    let result = match addr {
                        Some(addr) => match client.coordinator_conn(&addr).await {
                            Ok(conn) => {
                                send_heartbeat(&conn, &group, generation, &member, &instance).await
                            }
                            Err(e) => Err(e),
                        },
                        None => Err(Error::Closed),
                    };
                    match result {
                        Ok(code) => Event::Heartbeat { code },
                        Err(_) => Event::CoordinatorLost,
                    }
                }
                Action::ConsumerHeartbeat(hb) => {
                    let subscription = {
                        let s = lock(&shared);
                        let subscription = match &s.membership {
                            GroupMember::Next(m) => m.subscription().to_vec(),
                            GroupMember::Classic(_) => Vec::new(),
                        };
                        subscription
                    };
                    let addr = client.cached_coordinator(CoordinatorType::Group, &group);
                    consumer_heartbeat(&client, addr, &group, &subscription, &hb).await
                }
                other => {
                    let mut s = lock(&shared);
                    s.pending.push_back(other);
                    s.wake.notify_one();
                    continue;
                }
            };
            let more = lock(&shared).membership.handle(Instant::now(), event);
            queue.extend(more);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids_look_like_the_java_clients() {
        let a = random_member_id();
        let b = random_member_id();
        assert_eq!(a.len(), 22, "16 bytes in unpadded base64: {a}");
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_ne!(a, b);
    }

    #[test]
    fn the_consumer_protocol_refuses_client_side_group_settings() {
        let base = Properties::new()
            .set("bootstrap.servers", "127.0.0.1:9092")
            .set("group.id", "g")
            .set("group.protocol", "consumer");
        let cfg = GroupConfig::from_properties(&base).expect("plain consumer protocol");
        assert_eq!(cfg.protocol, GroupProtocol::Consumer);
        for key in [
            "partition.assignment.strategy",
            "session.timeout.ms",
            "heartbeat.interval.ms",
        ] {
            let p = base.clone().set(key, "range");
            assert!(
                matches!(GroupConfig::from_properties(&p), Err(Error::Config(m)) if m.contains(key)),
                "{key}"
            );
        }
        let bad = base.clone().set("group.protocol", "eager");
        assert!(GroupConfig::from_properties(&bad).is_err());
    }
}

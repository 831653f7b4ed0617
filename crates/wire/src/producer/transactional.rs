//! The transactional producer: the [`TxnMachine`] driven over Kafka's
//! transaction APIs (KIP-98): FindCoordinator for the `transactional.id`,
//! InitProducerId, AddPartitionsToTxn, AddOffsetsToTxn, TxnOffsetCommit
//! (with the group member's generation, KIP-447) and EndTxn.
//!
//! The protocol spoken is the first transaction version: partitions and
//! groups are registered explicitly, and Produce stays below v12 (whose
//! implicit registration belongs to KIP-890's second version). Brokers of
//! every version since 0.11 speak it.
//!
//! ```no_run
//! # async fn demo() -> faustus_wire::Result<()> {
//! use faustus_wire::producer::{ProducerConfig, ProducerRecord, TransactionalProducer};
//! use faustus_wire::Properties;
//!
//! let props = Properties::new()
//!     .set("bootstrap.servers", "127.0.0.1:9092")
//!     .set("transactional.id", "copier-1");
//! let producer = TransactionalProducer::connect(ProducerConfig::from_properties(&props)?).await?;
//! producer.init_transactions().await?;
//! producer.begin().await?;
//! producer.send(ProducerRecord::new("out").value("v")).await?;
//! producer.commit().await?;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::txn_offset_commit_request::{
    TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddPartitionsToTxnRequest, EndTxnRequest, GroupId,
    InitProducerIdRequest, ProducerId, TransactionalId, TxnOffsetCommitRequest,
};
use kafka_protocol::protocol::StrBytes;
use tokio::time::Instant;

use super::txn::{TxnAction, TxnConfig, TxnError, TxnEvent, TxnMachine, TxnState};
use super::{
    lock, DeliveryFuture, Inner, Producer, ProducerConfig, ProducerRecord, TopicPartition,
};
use crate::client::topic_name;
use crate::coordinator::CoordinatorType;
use crate::group::GroupMetadata;
use crate::protocol::ErrorCode;
use crate::{Error, Result};

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

/// The transaction state the sender task shares with the application's
/// calls.
pub(crate) struct TxnShared {
    id: String,
    machine: Mutex<TxnMachine>,
    /// AddPartitionsToTxn answered CONCURRENT_TRANSACTIONS this many times
    /// in a row.
    concurrent_retries: std::sync::atomic::AtomicU32,
}

impl TxnShared {
    pub(crate) fn new(id: String, retry_backoff: Duration) -> Self {
        Self {
            id,
            machine: Mutex::new(TxnMachine::new(TxnConfig { retry_backoff })),
            concurrent_retries: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// The `transactional.id`.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    fn handle(&self, event: TxnEvent) -> Vec<TxnAction> {
        lock(&self.machine).handle(Instant::now(), event)
    }

    /// Whether `tp`'s batches may be sent (it is in the transaction).
    pub(crate) fn may_send(&self, tp: &TopicPartition) -> bool {
        lock(&self.machine).may_send(tp)
    }

    /// Partitions to register with AddPartitionsToTxn now, if any.
    pub(crate) fn partitions_to_add(&self) -> Option<Vec<TopicPartition>> {
        self.handle(TxnEvent::SenderReady)
            .into_iter()
            .find_map(|a| match a {
                TxnAction::AddPartitions(p) => Some(p),
                _ => None,
            })
    }

    fn error(&self, error: TxnError) -> Error {
        Error::Transaction {
            transactional_id: self.id.clone(),
            error,
        }
    }

    /// The coordinator's address, looking it up when unknown.
    async fn coordinator(&self, inner: &Inner) -> Result<String> {
        inner
            .client
            .coordinator(CoordinatorType::Transaction, &self.id)
            .await
    }

    /// Forgets the coordinator: it moved, or its connection broke.
    fn forget_coordinator(&self, inner: &Inner) {
        inner
            .client
            .forget_coordinator(CoordinatorType::Transaction, &self.id);
    }
}

/// AddPartitionsToTxn for `parts`, from the sender task; the outcome goes to
/// the state machine and the sender is woken.
pub(crate) async fn add_partitions(
    inner: Arc<Inner>,
    txn: Arc<TxnShared>,
    parts: Vec<TopicPartition>,
) {
    let results = match send_add_partitions(&inner, &txn, &parts).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(transactional_id = %txn.id, error = %e, "AddPartitionsToTxn failed");
            let code = e.code().unwrap_or(ErrorCode::COORDINATOR_NOT_AVAILABLE);
            if code.is_coordinator_error() || e.code().is_none() {
                txn.forget_coordinator(&inner);
            }
            tokio::time::sleep(inner.client.retry_backoff().delay(0)).await;
            parts.iter().map(|tp| (tp.clone(), code)).collect()
        }
    };
    if results
        .iter()
        .any(|(_, c)| c.is_coordinator_error() && *c != ErrorCode::COORDINATOR_LOAD_IN_PROGRESS)
    {
        txn.forget_coordinator(&inner);
    }
    if results
        .iter()
        .any(|(_, c)| *c == ErrorCode::COORDINATOR_LOAD_IN_PROGRESS)
    {
        tokio::time::sleep(inner.client.retry_backoff().delay(0)).await;
    } else if results
        .iter()
        .any(|(_, c)| *c == ErrorCode::CONCURRENT_TRANSACTIONS)
    {
        // The previous transaction's markers are still being written: that
        // takes milliseconds, so retry much sooner than retry.backoff.ms
        // (1 ms, doubling up to 20), or every transaction pays the backoff.
        let n = txn
            .concurrent_retries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(transactional_id = %txn.id, retry = n, "AddPartitionsToTxn: the previous transaction is still completing");
        let backoff = inner.client.retry_backoff().delay(0);
        let wait = Duration::from_millis(1 << n.min(5)).min(Duration::from_millis(20));
        tokio::time::sleep(wait.min(backoff)).await;
    } else {
        txn.concurrent_retries
            .store(0, std::sync::atomic::Ordering::Relaxed);
    }
    let _ = txn.handle(TxnEvent::PartitionsAdded(results));
    let state = lock(&txn.machine).state();
    if matches!(state, TxnState::AbortableError | TxnState::Fatal) {
        // Records waiting for a partition that will never join: fail them
        // now so that commit and abort do not wait for them.
        lock(&inner.acc).fail_unsent(&txn.error(TxnError::Abortable(
            "a partition could not be added to the transaction".into(),
        )));
        inner.idle.notify_waiters();
    }
    inner.wake.notify_one();
}

async fn send_add_partitions(
    inner: &Inner,
    txn: &TxnShared,
    parts: &[TopicPartition],
) -> Result<Vec<(TopicPartition, ErrorCode)>> {
    let (id, epoch) = lock(&inner.acc).producer();
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for tp in parts {
        by_topic.entry(&tp.topic).or_default().push(tp.partition);
    }
    let req = AddPartitionsToTxnRequest::default()
        .with_v3_and_below_transactional_id(TransactionalId(sb(&txn.id)))
        .with_v3_and_below_producer_id(ProducerId(id))
        .with_v3_and_below_producer_epoch(epoch)
        .with_v3_and_below_topics(
            by_topic
                .into_iter()
                .map(|(t, ps)| {
                    AddPartitionsToTxnTopic::default()
                        .with_name(topic_name(t))
                        .with_partitions(ps)
                })
                .collect(),
        );
    let addr = txn.coordinator(inner).await?;
    let conn = inner.client.coordinator_conn(&addr).await?;
    let resp = conn.call(&req).await?;
    conn.throttle(resp.throttle_time_ms);
    let top = ErrorCode(resp.error_code);
    let mut out = Vec::with_capacity(parts.len());
    for tp in parts {
        let code = resp
            .results_by_topic_v3_and_below
            .iter()
            .find(|t| t.name.0.as_str() == &*tp.topic)
            .and_then(|t| {
                t.results_by_partition
                    .iter()
                    .find(|p| p.partition_index == tp.partition)
            })
            .map_or(top, |p| ErrorCode(p.partition_error_code));
        let code = if code.is_ok() && !top.is_ok() {
            top
        } else {
            code
        };
        out.push((tp.clone(), code));
    }
    Ok(out)
}

/// A producer whose records become visible in all-or-nothing transactions,
/// together with the consumer offsets sent to it.
///
/// One transaction at a time: [`begin`](Self::begin), [`send`](Self::send)
/// and [`send_offsets_to_transaction`](Self::send_offsets_to_transaction),
/// then [`commit`](Self::commit) or [`abort`](Self::abort). An
/// [`Error::Transaction`] with [`TxnError::Abortable`] asks for `abort`, after
/// which the producer goes on; [`TxnError::Fatal`] means another instance with
/// the same `transactional.id` took over (or the producer may not write).
pub struct TransactionalProducer {
    producer: Producer,
    txn: Arc<TxnShared>,
    /// Offsets for the TxnOffsetCommit of the call under way.
    offsets: Mutex<Option<(BTreeMap<TopicPartition, i64>, GroupMetadata)>>,
    /// One call at a time.
    call: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for TransactionalProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionalProducer")
            .field("transactional_id", &self.txn.id)
            .field("state", &self.state())
            .finish()
    }
}

impl TransactionalProducer {
    /// Connects; `cfg` must have a `transactional.id`. Call
    /// [`init_transactions`](Self::init_transactions) next.
    pub async fn connect(cfg: ProducerConfig) -> Result<Self> {
        if cfg.transactional_id.is_none() {
            return Err(Error::Config(
                "a transactional producer needs transactional.id".into(),
            ));
        }
        let producer = Producer::connect(cfg).await?;
        let txn = producer
            .inner
            .txn
            .clone()
            .ok_or_else(|| Error::Config("transactional.id is not set".into()))?;
        Ok(Self {
            producer,
            txn,
            offsets: Mutex::new(None),
            call: tokio::sync::Mutex::new(()),
        })
    }

    /// The `transactional.id`.
    pub fn transactional_id(&self) -> &str {
        &self.txn.id
    }

    /// Where the producer is.
    pub fn state(&self) -> TxnState {
        lock(&self.txn.machine).state()
    }

    /// The producer id and epoch (after `init_transactions`).
    pub fn producer_id(&self) -> Option<(i64, i16)> {
        lock(&self.txn.machine).producer()
    }

    /// The underlying producer's cluster handle.
    pub fn client(&self) -> &crate::Client {
        self.producer.client()
    }

    /// Registers the `transactional.id` with its coordinator (InitProducerId):
    /// fences every older producer with the same id and completes or aborts
    /// the transaction it left open.
    pub async fn init_transactions(&self) -> Result<()> {
        self.drive(TxnEvent::Init).await
    }

    /// Recovers a producer refused with INVALID_PRODUCER_EPOCH or
    /// PRODUCER_FENCED because the coordinator aborted its transaction on
    /// `transaction.timeout.ms` and bumped the epoch (KIP-588): asks for the
    /// next epoch with the current producer id and epoch. Succeeds, ready
    /// for a new transaction, unless another producer took the
    /// `transactional.id` over (then PRODUCER_FENCED, for good). Records of
    /// the lost transaction are gone; the caller processes them again.
    pub async fn recover(&self) -> Result<()> {
        self.drive(TxnEvent::Recover).await
    }

    /// Takes the `transactional.id` over again with a plain InitProducerId
    /// (no producer id or epoch), as a newly created producer would, after
    /// [`recover`](Self::recover) was refused with PRODUCER_FENCED. The
    /// coordinator grants the KIP-588 bump only to the current or the
    /// previous epoch, so a producer that fell further behind is refused
    /// even when nobody else holds the id; Kafka Streams re-creates its
    /// producer then. Call it only
    /// when no other live process can hold this `transactional.id` (the
    /// engine derives it from a locked state directory): it fences whoever
    /// does.
    pub async fn restart(&self) -> Result<()> {
        self.drive(TxnEvent::Restart).await
    }

    /// Begins a transaction.
    pub async fn begin(&self) -> Result<()> {
        self.drive(TxnEvent::Begin).await
    }

    /// Sends a record inside the transaction. Its partition is added to the
    /// transaction before the record leaves; the delivery future resolves
    /// when the broker has it (it becomes visible to read_committed consumers
    /// only at commit).
    pub async fn send(&self, rec: ProducerRecord) -> Result<DeliveryFuture> {
        // The partition is known only after partitioning: queue first, then
        // register the partition, before the sender may take the batch.
        let state = self.state();
        if state != TxnState::InTransaction {
            return Err(self.txn.error(TxnError::State {
                call: "send",
                state,
            }));
        }
        let delivery = self.producer.send(rec).await?;
        let tp = TopicPartition {
            topic: delivery.topic.clone(),
            partition: delivery.partition,
        };
        if !self.txn.may_send(&tp) {
            // A partition new to this transaction: the sender registers it.
            for a in self.txn.handle(TxnEvent::Send(tp)) {
                if let TxnAction::Complete(Err(e)) = a {
                    return Err(self.txn.error(e));
                }
            }
            self.producer.inner.wake.notify_one();
        }
        Ok(delivery)
    }

    /// Adds consumer offsets to the transaction: they are committed for the
    /// group if and only if the transaction commits (AddOffsetsToTxn, then
    /// TxnOffsetCommit to the group's coordinator with the member's
    /// generation, so that a member the group has moved past is refused).
    /// `offsets` are the next offsets to consume, per partition.
    pub async fn send_offsets_to_transaction(
        &self,
        offsets: &BTreeMap<TopicPartition, i64>,
        group: &GroupMetadata,
    ) -> Result<()> {
        *lock(&self.offsets) = Some((offsets.clone(), group.clone()));
        let r = self
            .drive(TxnEvent::SendOffsets(group.group_id.clone()))
            .await;
        *lock(&self.offsets) = None;
        r
    }

    /// Commits the transaction: sends every record, then EndTxn(commit). A
    /// timed-out EndTxn is sent again as a commit.
    pub async fn commit(&self) -> Result<()> {
        self.drive(TxnEvent::Commit).await
    }

    /// Aborts the transaction: records not sent yet fail, records sent are
    /// discarded by read_committed consumers.
    pub async fn abort(&self) -> Result<()> {
        self.drive(TxnEvent::Abort).await
    }

    /// Feeds one call to the state machine and carries out its actions until
    /// the call completes.
    async fn drive(&self, event: TxnEvent) -> Result<()> {
        let _one = self.call.lock().await;
        let inner = &self.producer.inner;
        let txn = &self.txn;
        let mut queue: VecDeque<TxnAction> = txn.handle(event).into();
        while let Some(action) = queue.pop_front() {
            tracing::trace!(transactional_id = %txn.id, ?action, "transaction action");
            let event = match action {
                TxnAction::Complete(r) => return r.map_err(|e| txn.error(e)),
                TxnAction::FindCoordinator { not_before } => {
                    tokio::time::sleep_until(not_before).await;
                    match inner
                        .client
                        .refresh_coordinator(CoordinatorType::Transaction, &txn.id)
                        .await
                    {
                        Ok(_) => TxnEvent::CoordinatorFound,
                        Err(e) => {
                            tracing::debug!(transactional_id = %txn.id, error = %e, "FindCoordinator failed");
                            refused_or_lost(&e)
                        }
                    }
                }
                TxnAction::InitProducerId { not_before, bump } => {
                    tokio::time::sleep_until(not_before).await;
                    match self.init_producer_id(bump).await {
                        Ok(e) => e,
                        Err(e) => self.lost(e),
                    }
                }
                TxnAction::SetProducer { id, epoch } => {
                    lock(&inner.acc).set_producer(id, epoch);
                    inner.wake.notify_one();
                    continue;
                }
                TxnAction::AddPartitions(parts) => {
                    // The sender's job; put them back for it.
                    let _ = txn.handle(TxnEvent::PartitionsAdded(
                        parts
                            .into_iter()
                            .map(|tp| (tp, ErrorCode::REQUEST_TIMED_OUT))
                            .collect(),
                    ));
                    continue;
                }
                TxnAction::AddOffsets { group, not_before } => {
                    tokio::time::sleep_until(not_before).await;
                    match self.add_offsets(&group).await {
                        Ok(code) => TxnEvent::OffsetsAdded(code),
                        Err(e) => self.lost(e),
                    }
                }
                TxnAction::CommitOffsets { not_before, .. } => {
                    tokio::time::sleep_until(not_before).await;
                    TxnEvent::OffsetsCommitted(self.commit_offsets().await)
                }
                TxnAction::Flush => {
                    self.producer.flush().await?;
                    let failure = lock(&inner.acc).take_failure();
                    TxnEvent::Flushed { failure }
                }
                TxnAction::DropUnsent => {
                    {
                        let mut acc = lock(&inner.acc);
                        acc.fail_unsent(
                            &txn.error(TxnError::Abortable("the transaction was aborted".into())),
                        );
                    }
                    self.producer.flush().await?;
                    let (failure, gap) = {
                        let mut acc = lock(&inner.acc);
                        (acc.take_failure(), acc.sequence_gap)
                    };
                    if gap {
                        lock(&txn.machine).require_epoch_bump();
                    }
                    TxnEvent::Flushed { failure }
                }
                TxnAction::EndTxn { commit, not_before } => {
                    tokio::time::sleep_until(not_before).await;
                    match self.end_txn(commit).await {
                        Ok(code) => TxnEvent::Ended(code),
                        Err(e) => self.lost(e),
                    }
                }
            };
            queue.extend(txn.handle(event));
        }
        Ok(())
    }

    /// A request to the coordinator failed without an answer: look the
    /// coordinator up again, then resend (a timed-out request is resent as
    /// it was).
    fn lost(&self, e: Error) -> TxnEvent {
        tracing::debug!(transactional_id = %self.txn.id, error = %e, "transaction request failed");
        self.txn.forget_coordinator(&self.producer.inner);
        refused_or_lost(&e)
    }

    async fn coordinator_conn(&self) -> Result<crate::conn::Connection> {
        let inner = &self.producer.inner;
        let addr = self.txn.coordinator(inner).await?;
        inner.client.coordinator_conn(&addr).await
    }

    async fn init_producer_id(&self, bump: bool) -> Result<TxnEvent> {
        let inner = &self.producer.inner;
        let (id, epoch) = if bump {
            lock(&inner.acc).producer()
        } else {
            (-1, -1)
        };
        let timeout_ms = inner
            .cfg
            .transaction_timeout
            .as_millis()
            .min(i32::MAX as u128) as i32;
        let req = InitProducerIdRequest::default()
            .with_transactional_id(Some(TransactionalId(sb(&self.txn.id))))
            .with_transaction_timeout_ms(timeout_ms)
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(epoch);
        let conn = self.coordinator_conn().await?;
        let resp = conn.call(&req).await?;
        conn.throttle(resp.throttle_time_ms);
        Ok(TxnEvent::ProducerId {
            code: ErrorCode(resp.error_code),
            id: resp.producer_id.0,
            epoch: resp.producer_epoch,
        })
    }

    async fn add_offsets(&self, group: &str) -> Result<ErrorCode> {
        let (id, epoch) = lock(&self.producer.inner.acc).producer();
        let req = AddOffsetsToTxnRequest::default()
            .with_transactional_id(TransactionalId(sb(&self.txn.id)))
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(epoch)
            .with_group_id(GroupId(sb(group)));
        let conn = self.coordinator_conn().await?;
        let resp = conn.call(&req).await?;
        conn.throttle(resp.throttle_time_ms);
        Ok(ErrorCode(resp.error_code))
    }

    /// TxnOffsetCommit to the group's coordinator; the first error code (a
    /// transport failure counts as COORDINATOR_NOT_AVAILABLE).
    async fn commit_offsets(&self) -> ErrorCode {
        let Some((offsets, group)) = lock(&self.offsets).clone() else {
            return ErrorCode::NONE;
        };
        let inner = &self.producer.inner;
        let (id, epoch) = lock(&inner.acc).producer();
        let mut by_topic: BTreeMap<&str, Vec<TxnOffsetCommitRequestPartition>> = BTreeMap::new();
        for (tp, off) in &offsets {
            by_topic.entry(&tp.topic).or_default().push(
                TxnOffsetCommitRequestPartition::default()
                    .with_partition_index(tp.partition)
                    .with_committed_offset(*off)
                    .with_committed_leader_epoch(-1),
            );
        }
        let req = TxnOffsetCommitRequest::default()
            .with_transactional_id(TransactionalId(sb(&self.txn.id)))
            .with_group_id(GroupId(sb(&group.group_id)))
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(epoch)
            .with_generation_id(group.generation)
            .with_member_id(sb(&group.member_id))
            .with_group_instance_id(group.instance_id.as_deref().map(sb))
            .with_topics(
                by_topic
                    .into_iter()
                    .map(|(t, ps)| {
                        TxnOffsetCommitRequestTopic::default()
                            .with_name(topic_name(t))
                            .with_partitions(ps)
                    })
                    .collect(),
            );
        let result = async {
            let addr = inner
                .client
                .coordinator(CoordinatorType::Group, &group.group_id)
                .await?;
            let conn = inner.client.coordinator_conn(&addr).await?;
            let resp = conn.call(&req).await?;
            conn.throttle(resp.throttle_time_ms);
            Ok::<_, Error>(
                resp.topics
                    .iter()
                    .flat_map(|t| t.partitions.iter())
                    .map(|p| ErrorCode(p.error_code))
                    .find(|c| !c.is_ok())
                    .unwrap_or(ErrorCode::NONE),
            )
        }
        .await;
        let code = result.unwrap_or_else(|e| {
            tracing::debug!(transactional_id = %self.txn.id, error = %e, "TxnOffsetCommit failed");
            ErrorCode::COORDINATOR_NOT_AVAILABLE
        });
        if !code.is_ok() {
            tracing::debug!(transactional_id = %self.txn.id, %code, "TxnOffsetCommit answered");
        }
        if code.is_coordinator_error() {
            inner
                .client
                .forget_coordinator(CoordinatorType::Group, &group.group_id);
        }
        code
    }

    async fn end_txn(&self, commit: bool) -> Result<ErrorCode> {
        let (id, epoch) = lock(&self.producer.inner.acc).producer();
        let req = EndTxnRequest::default()
            .with_transactional_id(TransactionalId(sb(&self.txn.id)))
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(epoch)
            .with_committed(commit);
        let conn = self.coordinator_conn().await?;
        let resp = conn.call(&req).await?;
        conn.throttle(resp.throttle_time_ms);
        Ok(ErrorCode(resp.error_code))
    }
}

/// A failed coordinator request as the state machine's event: the broker's
/// refusal (an authorization error, say) when no retry can fix it, else a
/// lost coordinator to look up again.
fn refused_or_lost(e: &Error) -> TxnEvent {
    match e.code() {
        Some(code) if e.action() == crate::Action::Fail => TxnEvent::CoordinatorRefused(code),
        _ => TxnEvent::CoordinatorLost,
    }
}

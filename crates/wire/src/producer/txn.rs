//! The transactional producer's state machine (KIP-98, with KIP-447's
//! group-aware offset commits and KIP-890's TRANSACTION_ABORTABLE), pure:
//! events in, actions out, the clock passed in.
//!
//! The driver ([`super::TransactionalProducer`]) feeds the application's calls
//! (`init_transactions`, `begin`, `send`, `send_offsets_to_transaction`,
//! `commit`, `abort`) and the coordinator's answers in, and carries out the
//! actions that come back until one completes the call. The sender task asks
//! it which partitions must be added to the transaction before their batches
//! may leave (AddPartitionsToTxn, batched: every partition that appeared
//! since the last request goes in one).
//!
//! Errors sort into four kinds, after the Java client:
//!
//! * **retry** (CONCURRENT_TRANSACTIONS, COORDINATOR_LOAD_IN_PROGRESS,
//!   transient errors): the same request again after `retry.backoff.ms`;
//! * **coordinator moved** (NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE, a
//!   broken connection): FindCoordinator, then the same request;
//! * **abortable** (TRANSACTION_ABORTABLE, a failed batch, a rejected offset
//!   commit): the transaction can only be aborted, after which the producer
//!   goes on;
//! * **fatal** (PRODUCER_FENCED, INVALID_PRODUCER_EPOCH, authorization): the
//!   producer is done; another instance with the same `transactional.id`
//!   took over.
//!
//! A commit whose EndTxn times out is retried as a commit: the outcome the
//! application asked for never changes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::TopicPartition;
use crate::protocol::ErrorCode;
use crate::Error;

/// What happened.
#[derive(Debug, Clone)]
pub enum TxnEvent {
    /// The application calls `init_transactions`.
    Init,
    /// The application calls `begin`.
    Begin,
    /// The application sends a record to this partition.
    Send(TopicPartition),
    /// The application calls `send_offsets_to_transaction` for this group.
    SendOffsets(String),
    /// The application calls `commit`.
    Commit,
    /// The application calls `abort`.
    Abort,
    /// FindCoordinator for the transactional id answered with a broker.
    CoordinatorFound,
    /// FindCoordinator failed, or a request to the coordinator could not be
    /// sent or answered.
    CoordinatorLost,
    /// FindCoordinator, or a request to the coordinator, answered with an
    /// error no retry can fix (TRANSACTIONAL_ID_AUTHORIZATION_FAILED, ...).
    CoordinatorRefused(ErrorCode),
    /// The application asks to recover a producer whose transaction the
    /// coordinator ended under it (KIP-588): a transaction that outlived
    /// `transaction.timeout.ms` is aborted by the coordinator, which bumps
    /// the epoch, and the producer's next request is refused with
    /// INVALID_PRODUCER_EPOCH or PRODUCER_FENCED. InitProducerId with the
    /// producer's id and epoch gets the new epoch when nobody else took the
    /// `transactional.id` over, and PRODUCER_FENCED when someone did.
    Recover,
    /// The application takes the `transactional.id` over again, as a new
    /// producer would, after [`TxnEvent::Recover`] was refused: a plain
    /// InitProducerId, without the old id and epoch. The coordinator grants
    /// KIP-588's bump only when the producer's epoch is its current or its
    /// previous one, so a producer whose epoch fell further behind (seen
    /// after coordinators moved under rolling broker kills) is refused with
    /// PRODUCER_FENCED even when no other producer exists; Kafka Streams
    /// answers by re-creating its producer, and this is that step. Only for
    /// an application that knows no other live process holds the id: it
    /// fences whoever does.
    Restart,
    /// InitProducerId answered.
    ProducerId {
        /// Error code.
        code: ErrorCode,
        /// Producer id.
        id: i64,
        /// Producer epoch.
        epoch: i16,
    },
    /// The sender has batches for partitions; asks what to add first.
    SenderReady,
    /// AddPartitionsToTxn answered, per partition.
    PartitionsAdded(Vec<(TopicPartition, ErrorCode)>),
    /// AddOffsetsToTxn answered.
    OffsetsAdded(ErrorCode),
    /// TxnOffsetCommit answered (the first partition error, or NONE).
    OffsetsCommitted(ErrorCode),
    /// Every batch of the transaction is acknowledged or failed; `failure`
    /// is the first batch failure, if any.
    Flushed {
        /// The first failed batch's error.
        failure: Option<Arc<Error>>,
    },
    /// EndTxn answered.
    Ended(ErrorCode),
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnAction {
    /// Send FindCoordinator (key type 1) for the transactional id, not
    /// before the given time.
    FindCoordinator {
        /// Earliest time to send.
        not_before: Instant,
    },
    /// Send InitProducerId (with the current id and epoch when `bump`, to
    /// bump the epoch after an abortable error, KIP-360).
    InitProducerId {
        /// Earliest time to send.
        not_before: Instant,
        /// Whether to pass the current id and epoch.
        bump: bool,
    },
    /// Hand the producer id and epoch to the accumulator (sequences restart).
    SetProducer {
        /// Producer id.
        id: i64,
        /// Producer epoch.
        epoch: i16,
    },
    /// Send AddPartitionsToTxn for these partitions.
    AddPartitions(Vec<TopicPartition>),
    /// Send AddOffsetsToTxn for this group.
    AddOffsets {
        /// Group id.
        group: String,
        /// Earliest time to send.
        not_before: Instant,
    },
    /// Send TxnOffsetCommit with the offsets the application gave, to the
    /// group's coordinator.
    CommitOffsets {
        /// Group id.
        group: String,
        /// Earliest time to send.
        not_before: Instant,
    },
    /// Send every queued batch now and report [`TxnEvent::Flushed`] when
    /// all are done.
    Flush,
    /// Fail every batch not yet sent, then report [`TxnEvent::Flushed`] when
    /// the ones in flight are done.
    DropUnsent,
    /// Send EndTxn.
    EndTxn {
        /// Commit (true) or abort.
        commit: bool,
        /// Earliest time to send.
        not_before: Instant,
    },
    /// The application's call is over, with this outcome.
    Complete(Result<(), TxnError>),
}

pub use crate::error::{TxnError, TxnState};

/// What a request of the current step is, for retries.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    None,
    Init { bump: bool },
    AddOffsets(String),
    CommitOffsets(String),
    EndTxn(bool),
}

/// Settings the state machine needs.
#[derive(Debug, Clone)]
pub struct TxnConfig {
    /// `retry.backoff.ms`.
    pub retry_backoff: Duration,
}

/// The transactional producer's state.
#[derive(Debug, Clone)]
pub struct TxnMachine {
    cfg: TxnConfig,
    state: TxnState,
    coordinator_known: bool,
    /// The request the current call waits for.
    step: Step,
    /// The producer identity, once initialized.
    producer: Option<(i64, i16)>,
    /// Partitions in this transaction, added or being added.
    added: BTreeSet<TopicPartition>,
    adding: BTreeSet<TopicPartition>,
    wanted: BTreeSet<TopicPartition>,
    /// An abortable error met inside the transaction (a failed batch or
    /// AddPartitions).
    abortable: Option<String>,
    /// The epoch must be bumped before the next transaction (after an error
    /// that left sequence numbers uncertain).
    bump_epoch: bool,
    /// The coordinator knows of this transaction (a partition or a group
    /// was added): it must be ended with EndTxn.
    started: bool,
    /// Why the producer stopped, once fatal.
    fatal: Option<(ErrorCode, String)>,
    /// CONCURRENT_TRANSACTIONS answers in a row to the current step.
    concurrent: u32,
}

fn classify(code: ErrorCode) -> Kind {
    match code {
        ErrorCode::NONE => Kind::Ok,
        ErrorCode::NOT_COORDINATOR | ErrorCode::COORDINATOR_NOT_AVAILABLE => Kind::Coordinator,
        ErrorCode::CONCURRENT_TRANSACTIONS | ErrorCode::COORDINATOR_LOAD_IN_PROGRESS => Kind::Retry,
        ErrorCode::PRODUCER_FENCED
        | ErrorCode::INVALID_PRODUCER_EPOCH
        | ErrorCode::TRANSACTIONAL_ID_AUTHORIZATION_FAILED
        | ErrorCode::CLUSTER_AUTHORIZATION_FAILED
        | ErrorCode::INVALID_TRANSACTION_TIMEOUT
        | ErrorCode::UNSUPPORTED_VERSION
        | ErrorCode::UNSUPPORTED_FOR_MESSAGE_FORMAT
        | ErrorCode::INVALID_TXN_STATE
        | ErrorCode::TRANSACTIONAL_ID_NOT_FOUND => Kind::Fatal,
        ErrorCode::UNKNOWN_PRODUCER_ID | ErrorCode::INVALID_PRODUCER_ID_MAPPING => Kind::AbortBump,
        c if c.is_retriable() => Kind::Retry,
        _ => Kind::Abortable,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ok,
    Retry,
    Coordinator,
    Abortable,
    AbortBump,
    Fatal,
}

impl TxnMachine {
    /// A producer that has not called `init_transactions`.
    pub fn new(cfg: TxnConfig) -> Self {
        Self {
            cfg,
            state: TxnState::Uninitialized,
            coordinator_known: false,
            step: Step::None,
            producer: None,
            added: BTreeSet::new(),
            adding: BTreeSet::new(),
            wanted: BTreeSet::new(),
            abortable: None,
            bump_epoch: false,
            started: false,
            fatal: None,
            concurrent: 0,
        }
    }

    /// The current state.
    pub fn state(&self) -> TxnState {
        self.state
    }

    /// The producer id and epoch, once initialized.
    pub fn producer(&self) -> Option<(i64, i16)> {
        self.producer
    }

    /// Records that a batch failed or was dropped after taking a sequence
    /// number: the abort must bump the epoch (KIP-360).
    pub fn require_epoch_bump(&mut self) {
        self.bump_epoch = true;
    }

    /// Whether batches of `tp` may be sent (the partition is in the
    /// transaction).
    pub fn may_send(&self, tp: &TopicPartition) -> bool {
        self.added.contains(tp)
    }

    fn refuse(&self, call: &'static str) -> Vec<TxnAction> {
        vec![TxnAction::Complete(Err(TxnError::State {
            call,
            state: self.state,
        }))]
    }

    fn fatal(&mut self, code: ErrorCode, what: &str) -> Vec<TxnAction> {
        self.state = TxnState::Fatal;
        self.step = Step::None;
        self.fatal = Some((code, what.to_owned()));
        vec![TxnAction::Complete(Err(TxnError::Fatal(
            code,
            what.to_owned(),
        )))]
    }

    /// The request for the current step, after a backoff or a coordinator
    /// lookup.
    fn resend(&mut self, now: Instant, backoff: bool) -> Vec<TxnAction> {
        self.resend_after(
            now,
            if backoff {
                self.cfg.retry_backoff
            } else {
                Duration::ZERO
            },
        )
    }

    /// The request for the current step, not before `wait` has passed.
    fn resend_after(&mut self, now: Instant, wait: Duration) -> Vec<TxnAction> {
        let not_before = now + wait;
        if !self.coordinator_known && !matches!(self.step, Step::CommitOffsets(_)) {
            return vec![TxnAction::FindCoordinator { not_before }];
        }
        match self.step.clone() {
            Step::None => Vec::new(),
            Step::Init { bump } => vec![TxnAction::InitProducerId { not_before, bump }],
            Step::AddOffsets(group) => vec![TxnAction::AddOffsets { group, not_before }],
            Step::CommitOffsets(group) => vec![TxnAction::CommitOffsets { group, not_before }],
            Step::EndTxn(commit) => vec![TxnAction::EndTxn { commit, not_before }],
        }
    }

    /// Handles a response code for the current step's request.
    fn answer(&mut self, now: Instant, code: ErrorCode, what: &str) -> Option<Vec<TxnAction>> {
        // Kafka 4's group coordinator answers TxnOffsetCommit below v5 (we
        // send v4) with COORDINATOR_LOAD_IN_PROGRESS where a newer client
        // gets CONCURRENT_TRANSACTIONS: the previous transaction's offsets
        // are not completed yet.
        let concurrent = code == ErrorCode::CONCURRENT_TRANSACTIONS
            || (code == ErrorCode::COORDINATOR_LOAD_IN_PROGRESS
                && matches!(self.step, Step::CommitOffsets(_)));
        if concurrent {
            // The previous transaction's markers are still being written,
            // which takes milliseconds: retry after 1 ms, doubling up to
            // 20 (never past `retry.backoff.ms`), or the first requests of
            // every transaction wait the whole backoff (AddOffsetsToTxn and
            // TxnOffsetCommit right after a commit did: 100 ms each, the
            // exactly-once copier's regression).
            let wait = Duration::from_millis(1 << self.concurrent.min(5))
                .min(Duration::from_millis(20))
                .min(self.cfg.retry_backoff);
            self.concurrent += 1;
            return Some(self.resend_after(now, wait));
        }
        self.concurrent = 0;
        match classify(code) {
            Kind::Ok => None,
            Kind::Retry => Some(self.resend(now, true)),
            Kind::Coordinator => {
                self.coordinator_known = false;
                Some(self.resend(now, true))
            }
            Kind::Fatal => Some(self.fatal(code, what)),
            Kind::Abortable | Kind::AbortBump => {
                if matches!(self.step, Step::EndTxn(_) | Step::Init { .. }) {
                    // Nothing to abort into: EndTxn and InitProducerId must
                    // not fail this way.
                    return Some(self.fatal(code, what));
                }
                self.bump_epoch |= classify(code) == Kind::AbortBump;
                self.state = TxnState::AbortableError;
                self.step = Step::None;
                self.abortable = Some(format!("{what}: {code}"));
                Some(vec![TxnAction::Complete(Err(TxnError::Abortable(
                    format!("{what}: {code}"),
                )))])
            }
        }
    }

    /// Feeds one event; returns the actions to carry out, in order.
    pub fn handle(&mut self, now: Instant, event: TxnEvent) -> Vec<TxnAction> {
        if self.state == TxnState::Fatal {
            return match event {
                TxnEvent::Recover => self.renew(now, true),
                TxnEvent::Restart => self.renew(now, false),
                TxnEvent::Init
                | TxnEvent::Begin
                | TxnEvent::SendOffsets(_)
                | TxnEvent::Commit
                | TxnEvent::Abort => {
                    let (code, why) = self
                        .fatal
                        .clone()
                        .unwrap_or((ErrorCode::UNKNOWN_SERVER_ERROR, String::new()));
                    vec![TxnAction::Complete(Err(TxnError::Fatal(code, why)))]
                }
                _ => Vec::new(),
            };
        }
        match event {
            TxnEvent::Recover => self.renew(now, true),
            TxnEvent::Restart => self.renew(now, false),
            TxnEvent::Init => {
                if self.state != TxnState::Uninitialized {
                    return self.refuse("init_transactions");
                }
                self.state = TxnState::Initializing;
                self.step = Step::Init { bump: false };
                self.resend(now, false)
            }
            TxnEvent::CoordinatorFound => {
                self.coordinator_known = true;
                self.resend(now, false)
            }
            TxnEvent::CoordinatorLost => {
                self.coordinator_known = false;
                self.resend(now, true)
            }
            TxnEvent::CoordinatorRefused(code) => {
                self.coordinator_known = false;
                if classify(code) == Kind::Fatal {
                    return self.fatal(code, "FindCoordinator");
                }
                self.resend(now, true)
            }
            TxnEvent::ProducerId { code, id, epoch } => {
                if let Some(out) = self.answer(now, code, "InitProducerId") {
                    return out;
                }
                self.producer = Some((id, epoch));
                self.bump_epoch = false;
                self.step = Step::None;
                self.state = TxnState::Ready;
                vec![
                    TxnAction::SetProducer { id, epoch },
                    TxnAction::Complete(Ok(())),
                ]
            }
            TxnEvent::Begin => {
                if self.state != TxnState::Ready {
                    return self.refuse("begin");
                }
                self.state = TxnState::InTransaction;
                self.added.clear();
                self.adding.clear();
                self.wanted.clear();
                self.abortable = None;
                vec![TxnAction::Complete(Ok(()))]
            }
            TxnEvent::Send(tp) => {
                if self.state != TxnState::InTransaction {
                    return self.refuse("send");
                }
                if !self.added.contains(&tp) && !self.adding.contains(&tp) {
                    self.wanted.insert(tp);
                }
                vec![TxnAction::Complete(Ok(()))]
            }
            TxnEvent::SenderReady => {
                let open = matches!(self.state, TxnState::InTransaction | TxnState::Committing);
                if !open || !self.adding.is_empty() || self.wanted.is_empty() {
                    return Vec::new();
                }
                let batch: Vec<TopicPartition> =
                    std::mem::take(&mut self.wanted).into_iter().collect();
                self.adding.extend(batch.iter().cloned());
                vec![TxnAction::AddPartitions(batch)]
            }
            TxnEvent::PartitionsAdded(results) => {
                let mut retry = Vec::new();
                for (tp, code) in results {
                    self.adding.remove(&tp);
                    match classify(code) {
                        Kind::Ok => {
                            self.added.insert(tp);
                            self.started = true;
                        }
                        Kind::Retry | Kind::Coordinator => {
                            if classify(code) == Kind::Coordinator {
                                self.coordinator_known = false;
                            }
                            retry.push(tp);
                        }
                        Kind::Fatal => {
                            self.state = TxnState::Fatal;
                            self.fatal = Some((code, format!("AddPartitionsToTxn: {code}")));
                        }
                        Kind::Abortable | Kind::AbortBump => {
                            self.bump_epoch |= classify(code) == Kind::AbortBump;
                            // OPERATION_NOT_ATTEMPTED: another partition
                            // failed; the transaction is lost either way.
                            if code != ErrorCode::OPERATION_NOT_ATTEMPTED {
                                self.abortable = Some(format!(
                                    "AddPartitionsToTxn {}-{}: {code}",
                                    tp.topic, tp.partition
                                ));
                            }
                            if matches!(self.state, TxnState::InTransaction) {
                                self.state = TxnState::AbortableError;
                            }
                        }
                    }
                }
                self.adding.clear();
                self.wanted.extend(retry);
                if !self.coordinator_known && self.state != TxnState::Fatal {
                    return vec![TxnAction::FindCoordinator {
                        not_before: now + self.cfg.retry_backoff,
                    }];
                }
                Vec::new()
            }
            TxnEvent::SendOffsets(group) => {
                if self.state != TxnState::InTransaction {
                    return self.refuse("send_offsets_to_transaction");
                }
                self.step = Step::AddOffsets(group);
                self.resend(now, false)
            }
            TxnEvent::OffsetsAdded(code) => {
                if let Some(out) = self.answer(now, code, "AddOffsetsToTxn") {
                    return out;
                }
                let Step::AddOffsets(group) = std::mem::replace(&mut self.step, Step::None) else {
                    return Vec::new();
                };
                self.started = true;
                self.step = Step::CommitOffsets(group.clone());
                vec![TxnAction::CommitOffsets {
                    group,
                    not_before: now,
                }]
            }
            TxnEvent::OffsetsCommitted(code) => {
                // The group's coordinator errors are handled by the driver
                // (it looks the group's coordinator up itself).
                if matches!(
                    code,
                    ErrorCode::UNKNOWN_MEMBER_ID
                        | ErrorCode::ILLEGAL_GENERATION
                        | ErrorCode::FENCED_INSTANCE_ID
                        | ErrorCode::REBALANCE_IN_PROGRESS
                        | ErrorCode::STALE_MEMBER_EPOCH
                ) {
                    // KIP-447: the group moved on; these offsets are not ours.
                    self.state = TxnState::AbortableError;
                    self.step = Step::None;
                    let why = format!("TxnOffsetCommit: {code} (the group rebalanced)");
                    self.abortable = Some(why.clone());
                    return vec![TxnAction::Complete(Err(TxnError::Abortable(why)))];
                }
                if classify(code) == Kind::Coordinator {
                    return vec![TxnAction::CommitOffsets {
                        group: match &self.step {
                            Step::CommitOffsets(g) => g.clone(),
                            _ => return Vec::new(),
                        },
                        not_before: now + self.cfg.retry_backoff,
                    }];
                }
                if let Some(out) = self.answer(now, code, "TxnOffsetCommit") {
                    return out;
                }
                self.step = Step::None;
                vec![TxnAction::Complete(Ok(()))]
            }
            TxnEvent::Commit => match self.state {
                TxnState::InTransaction => {
                    self.state = TxnState::Committing;
                    vec![TxnAction::Flush]
                }
                TxnState::AbortableError => vec![TxnAction::Complete(Err(TxnError::Abortable(
                    self.abortable.clone().unwrap_or_default(),
                )))],
                _ => self.refuse("commit"),
            },
            TxnEvent::Abort => match self.state {
                TxnState::InTransaction | TxnState::AbortableError => {
                    self.state = TxnState::Aborting;
                    vec![TxnAction::DropUnsent]
                }
                _ => self.refuse("abort"),
            },
            TxnEvent::Flushed { failure } => match self.state {
                TxnState::Committing => {
                    if let Some(e) = failure.or_else(|| {
                        self.abortable
                            .as_ref()
                            .map(|a| Arc::new(Error::Config(a.clone())))
                    }) {
                        self.state = TxnState::AbortableError;
                        let why = format!("a record of the transaction failed: {e}");
                        self.abortable = Some(why.clone());
                        if matches!(
                            e.code(),
                            Some(ErrorCode::PRODUCER_FENCED | ErrorCode::INVALID_PRODUCER_EPOCH)
                        ) {
                            return self
                                .fatal(e.code().unwrap_or(ErrorCode::PRODUCER_FENCED), &why);
                        }
                        return vec![TxnAction::Complete(Err(TxnError::Abortable(why)))];
                    }
                    if !self.wanted.is_empty() || !self.adding.is_empty() {
                        // Records still waiting for their partition to join.
                        return vec![TxnAction::Flush];
                    }
                    if !self.started {
                        // An empty transaction: nothing to end.
                        return self.finish(now, true);
                    }
                    self.step = Step::EndTxn(true);
                    self.resend(now, false)
                }
                TxnState::Aborting => {
                    if let Some(code) = failure.as_ref().and_then(|e| e.code()) {
                        if matches!(
                            code,
                            ErrorCode::PRODUCER_FENCED | ErrorCode::INVALID_PRODUCER_EPOCH
                        ) {
                            return self.fatal(code, "a record of the aborted transaction");
                        }
                    }
                    if !self.started {
                        // Nothing reached the coordinator: nothing to end.
                        return self.finish(now, false);
                    }
                    self.step = Step::EndTxn(false);
                    self.resend(now, false)
                }
                _ => Vec::new(),
            },
            TxnEvent::Ended(code) => {
                if let Some(out) = self.answer(now, code, "EndTxn") {
                    return out;
                }
                let committed = self.step == Step::EndTxn(true);
                self.finish(now, committed)
            }
        }
    }

    /// [`TxnEvent::Recover`] (`bump`) and [`TxnEvent::Restart`]: only from
    /// a fenced state, with a producer id.
    fn renew(&mut self, now: Instant, bump: bool) -> Vec<TxnAction> {
        let fenced = self.state == TxnState::Fatal
            && self.producer.is_some()
            && self.fatal.as_ref().is_some_and(|(c, _)| {
                matches!(
                    *c,
                    ErrorCode::INVALID_PRODUCER_EPOCH | ErrorCode::PRODUCER_FENCED
                )
            });
        if !fenced {
            return self.refuse(if bump { "recover" } else { "restart" });
        }
        self.fatal = None;
        self.added.clear();
        self.adding.clear();
        self.wanted.clear();
        self.abortable = None;
        self.started = false;
        self.state = TxnState::Initializing;
        self.step = Step::Init { bump };
        self.resend(now, false)
    }

    /// The transaction is over (committed or aborted).
    fn finish(&mut self, now: Instant, committed: bool) -> Vec<TxnAction> {
        self.added.clear();
        self.adding.clear();
        self.wanted.clear();
        self.abortable = None;
        self.started = false;
        self.step = Step::None;
        if !committed && self.bump_epoch {
            // Sequence numbers are uncertain: a new epoch (KIP-360).
            self.state = TxnState::Initializing;
            self.step = Step::Init { bump: true };
            return self.resend(now, false);
        }
        self.state = TxnState::Ready;
        vec![TxnAction::Complete(Ok(()))]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> TopicPartition {
        TopicPartition {
            topic: Arc::from("out"),
            partition: p,
        }
    }

    fn machine() -> TxnMachine {
        TxnMachine::new(TxnConfig {
            retry_backoff: Duration::from_millis(100),
        })
    }

    fn ok_done(a: &[TxnAction]) -> bool {
        a.last() == Some(&TxnAction::Complete(Ok(())))
    }

    /// Initialized, in a transaction, with partition 0 added.
    fn in_txn(now: Instant) -> TxnMachine {
        let mut m = machine();
        assert!(matches!(
            m.handle(now, TxnEvent::Init).as_slice(),
            [TxnAction::FindCoordinator { .. }]
        ));
        assert!(matches!(
            m.handle(now, TxnEvent::CoordinatorFound).as_slice(),
            [TxnAction::InitProducerId { bump: false, .. }]
        ));
        let a = m.handle(
            now,
            TxnEvent::ProducerId {
                code: ErrorCode::NONE,
                id: 7,
                epoch: 3,
            },
        );
        assert_eq!(a[0], TxnAction::SetProducer { id: 7, epoch: 3 });
        assert!(ok_done(&a));
        assert!(ok_done(&m.handle(now, TxnEvent::Begin)));
        assert!(ok_done(&m.handle(now, TxnEvent::Send(tp(0)))));
        assert_eq!(
            m.handle(now, TxnEvent::SenderReady),
            vec![TxnAction::AddPartitions(vec![tp(0)])]
        );
        assert!(!m.may_send(&tp(0)), "not before the coordinator agreed");
        let _ = m.handle(
            now,
            TxnEvent::PartitionsAdded(vec![(tp(0), ErrorCode::NONE)]),
        );
        assert!(m.may_send(&tp(0)));
        m
    }

    #[test]
    fn commit_flushes_then_ends_and_allows_the_next_transaction() {
        let now = Instant::now();
        let mut m = in_txn(now);
        assert_eq!(m.handle(now, TxnEvent::Commit), vec![TxnAction::Flush]);
        assert!(matches!(
            m.handle(now, TxnEvent::Flushed { failure: None })
                .as_slice(),
            [TxnAction::EndTxn { commit: true, .. }]
        ));
        assert!(ok_done(&m.handle(now, TxnEvent::Ended(ErrorCode::NONE))));
        assert_eq!(m.state(), TxnState::Ready);
        assert!(ok_done(&m.handle(now, TxnEvent::Begin)));
        assert!(
            !m.may_send(&tp(0)),
            "each transaction adds its partitions anew"
        );
    }

    #[test]
    fn partitions_are_added_in_batches_one_request_at_a_time() {
        let now = Instant::now();
        let mut m = in_txn(now);
        for p in 1..4 {
            let _ = m.handle(now, TxnEvent::Send(tp(p)));
        }
        let _ = m.handle(now, TxnEvent::Send(tp(0)));
        assert_eq!(
            m.handle(now, TxnEvent::SenderReady),
            vec![TxnAction::AddPartitions(vec![tp(1), tp(2), tp(3)])]
        );
        let _ = m.handle(now, TxnEvent::Send(tp(4)));
        assert!(
            m.handle(now, TxnEvent::SenderReady).is_empty(),
            "one in flight"
        );
        let _ = m.handle(
            now,
            TxnEvent::PartitionsAdded(vec![
                (tp(1), ErrorCode::NONE),
                (tp(2), ErrorCode::CONCURRENT_TRANSACTIONS),
                (tp(3), ErrorCode::NONE),
            ]),
        );
        assert_eq!(
            m.handle(now, TxnEvent::SenderReady),
            vec![TxnAction::AddPartitions(vec![tp(2), tp(4)])],
            "the retriable one goes again with the new one"
        );
    }

    #[test]
    fn retriable_errors_resend_the_same_request() {
        let now = Instant::now();
        let mut m = in_txn(now);
        let _ = m.handle(now, TxnEvent::Commit);
        let _ = m.handle(now, TxnEvent::Flushed { failure: None });
        for code in [
            ErrorCode::CONCURRENT_TRANSACTIONS,
            ErrorCode::COORDINATOR_LOAD_IN_PROGRESS,
            ErrorCode::REQUEST_TIMED_OUT,
        ] {
            let a = m.handle(now, TxnEvent::Ended(code));
            assert!(
                matches!(a.as_slice(), [TxnAction::EndTxn { commit: true, not_before }] if *not_before > now),
                "{code}: {a:?}"
            );
        }
    }

    #[test]
    fn concurrent_transactions_are_retried_within_milliseconds_not_the_backoff() {
        let now = Instant::now();
        let mut m = in_txn(now);
        let _ = m.handle(now, TxnEvent::SendOffsets("g".into()));
        let mut waits = Vec::new();
        for _ in 0..7 {
            let a = m.handle(
                now,
                TxnEvent::OffsetsAdded(ErrorCode::CONCURRENT_TRANSACTIONS),
            );
            match a.as_slice() {
                [TxnAction::AddOffsets { not_before, .. }] => {
                    waits.push((*not_before - now).as_millis())
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 20, 20]);
        // Another answer starts the count again; other retriable errors
        // wait retry.backoff.ms.
        let a = m.handle(
            now,
            TxnEvent::OffsetsAdded(ErrorCode::COORDINATOR_LOAD_IN_PROGRESS),
        );
        assert!(
            matches!(a.as_slice(), [TxnAction::AddOffsets { not_before, .. }] if *not_before == now + Duration::from_millis(100)),
            "{a:?}"
        );
        let a = m.handle(
            now,
            TxnEvent::OffsetsAdded(ErrorCode::CONCURRENT_TRANSACTIONS),
        );
        assert!(
            matches!(a.as_slice(), [TxnAction::AddOffsets { not_before, .. }] if *not_before == now + Duration::from_millis(1)),
            "{a:?}"
        );
        // TxnOffsetCommit v4's way of saying the same.
        let _ = m.handle(now, TxnEvent::OffsetsAdded(ErrorCode::NONE));
        let a = m.handle(
            now,
            TxnEvent::OffsetsCommitted(ErrorCode::COORDINATOR_LOAD_IN_PROGRESS),
        );
        assert!(
            matches!(a.as_slice(), [TxnAction::CommitOffsets { not_before, .. }] if *not_before == now + Duration::from_millis(1)),
            "{a:?}"
        );
    }

    /// The coordinator grants producer 7 `epoch`: the machine is ready.
    fn granted(m: &mut TxnMachine, now: Instant, epoch: i16) {
        let a = m.handle(
            now,
            TxnEvent::ProducerId {
                code: ErrorCode::NONE,
                id: 7,
                epoch,
            },
        );
        assert_eq!(a[0], TxnAction::SetProducer { id: 7, epoch });
        assert!(ok_done(&a));
        assert_eq!(m.state(), TxnState::Ready);
    }

    /// Commits, and the coordinator refuses EndTxn as fenced (it aborted
    /// the transaction on its timeout and bumped the epoch).
    fn commit_refused_as_fenced(m: &mut TxnMachine, now: Instant) {
        let _ = m.handle(now, TxnEvent::Commit);
        let _ = m.handle(now, TxnEvent::Flushed { failure: None });
        let _ = m.handle(now, TxnEvent::Ended(ErrorCode::PRODUCER_FENCED));
    }

    #[test]
    fn a_producer_whose_transaction_timed_out_recovers_with_a_bumped_epoch() {
        let now = Instant::now();
        let mut m = in_txn(now);
        // Recovering a healthy producer is refused.
        assert!(matches!(
            m.handle(now, TxnEvent::Recover).as_slice(),
            [TxnAction::Complete(Err(TxnError::State {
                call: "recover",
                ..
            }))]
        ));
        // The coordinator aborted the transaction on timeout and bumped the
        // epoch: the commit's offsets are refused.
        commit_refused_as_fenced(&mut m, now);
        assert_eq!(m.state(), TxnState::Fatal);
        assert!(matches!(
            m.handle(now, TxnEvent::Recover).as_slice(),
            [TxnAction::InitProducerId { bump: true, .. }]
        ));
        granted(&mut m, now, 5);
        assert!(ok_done(&m.handle(now, TxnEvent::Begin)));
        assert!(
            !m.may_send(&tp(0)),
            "a new transaction adds its partitions anew"
        );
        // Taken over by another instance: the bump is refused, for good.
        let mut m = in_txn(now);
        commit_refused_as_fenced(&mut m, now);
        let _ = m.handle(now, TxnEvent::Recover);
        let a = m.handle(
            now,
            TxnEvent::ProducerId {
                code: ErrorCode::PRODUCER_FENCED,
                id: -1,
                epoch: -1,
            },
        );
        assert!(
            matches!(a.as_slice(), [TxnAction::Complete(Err(TxnError::Fatal(c, _)))] if *c == ErrorCode::PRODUCER_FENCED)
        );
        assert_eq!(m.state(), TxnState::Fatal);
        // The application knows it is the id's only live holder (its epoch
        // fell too far behind for a bump): a plain InitProducerId.
        assert!(matches!(
            m.handle(now, TxnEvent::Restart).as_slice(),
            [TxnAction::InitProducerId { bump: false, .. }]
        ));
        granted(&mut m, now, 9);
        // Restarting a healthy producer is refused like recovering one.
        assert!(matches!(
            m.handle(now, TxnEvent::Restart).as_slice(),
            [TxnAction::Complete(Err(TxnError::State {
                call: "restart",
                ..
            }))]
        ));
    }

    #[test]
    fn a_refused_coordinator_lookup_is_fatal_not_retried() {
        let now = Instant::now();
        let mut m = machine();
        let _ = m.handle(now, TxnEvent::Init);
        // Transient: looked up again.
        assert!(matches!(
            m.handle(
                now,
                TxnEvent::CoordinatorRefused(ErrorCode::COORDINATOR_NOT_AVAILABLE)
            )
            .as_slice(),
            [TxnAction::FindCoordinator { .. }]
        ));
        // Not authorized for the transactional.id: init fails, once.
        let code = ErrorCode::TRANSACTIONAL_ID_AUTHORIZATION_FAILED;
        assert!(matches!(
            m.handle(now, TxnEvent::CoordinatorRefused(code)).as_slice(),
            [TxnAction::Complete(Err(TxnError::Fatal(c, _)))] if *c == code
        ));
        assert_eq!(m.state(), TxnState::Fatal);
    }

    #[test]
    fn a_lost_end_txn_is_retried_as_a_commit_after_finding_the_coordinator() {
        let now = Instant::now();
        let mut m = in_txn(now);
        let _ = m.handle(now, TxnEvent::Commit);
        let _ = m.handle(now, TxnEvent::Flushed { failure: None });
        // The request timed out or the coordinator moved.
        assert!(matches!(
            m.handle(now, TxnEvent::CoordinatorLost).as_slice(),
            [TxnAction::FindCoordinator { .. }]
        ));
        assert!(matches!(
            m.handle(now, TxnEvent::CoordinatorFound).as_slice(),
            [TxnAction::EndTxn { commit: true, .. }]
        ));
        assert!(matches!(
            m.handle(now, TxnEvent::Ended(ErrorCode::NOT_COORDINATOR))
                .as_slice(),
            [TxnAction::FindCoordinator { .. }]
        ));
        assert!(matches!(
            m.handle(now, TxnEvent::CoordinatorFound).as_slice(),
            [TxnAction::EndTxn { commit: true, .. }]
        ));
        assert!(ok_done(&m.handle(now, TxnEvent::Ended(ErrorCode::NONE))));
    }

    #[test]
    fn fencing_is_fatal_and_stays_fatal() {
        let now = Instant::now();
        for code in [
            ErrorCode::PRODUCER_FENCED,
            ErrorCode::INVALID_PRODUCER_EPOCH,
        ] {
            let mut m = in_txn(now);
            let _ = m.handle(now, TxnEvent::Commit);
            let _ = m.handle(now, TxnEvent::Flushed { failure: None });
            let a = m.handle(now, TxnEvent::Ended(code));
            assert!(
                matches!(a.as_slice(), [TxnAction::Complete(Err(TxnError::Fatal(c, _)))] if *c == code)
            );
            assert_eq!(m.state(), TxnState::Fatal);
            assert!(
                matches!(
                    m.handle(now, TxnEvent::Begin).as_slice(),
                    [TxnAction::Complete(Err(TxnError::Fatal(c, _)))] if *c == code
                ),
                "later calls repeat the fatal error"
            );
            assert!(m.handle(now, TxnEvent::SenderReady).is_empty());
        }
    }

    #[test]
    fn transaction_abortable_leads_to_an_abort_after_which_we_go_on() {
        let now = Instant::now();
        let mut m = in_txn(now);
        let _ = m.handle(now, TxnEvent::Send(tp(1)));
        let _ = m.handle(now, TxnEvent::SenderReady);
        let _ = m.handle(
            now,
            TxnEvent::PartitionsAdded(vec![(tp(1), ErrorCode::TRANSACTION_ABORTABLE)]),
        );
        assert_eq!(m.state(), TxnState::AbortableError);
        assert!(matches!(
            m.handle(now, TxnEvent::Commit).as_slice(),
            [TxnAction::Complete(Err(TxnError::Abortable(_)))]
        ));
        assert_eq!(m.handle(now, TxnEvent::Abort), vec![TxnAction::DropUnsent]);
        assert!(matches!(
            m.handle(now, TxnEvent::Flushed { failure: None })
                .as_slice(),
            [TxnAction::EndTxn { commit: false, .. }]
        ));
        assert!(ok_done(&m.handle(now, TxnEvent::Ended(ErrorCode::NONE))));
        assert!(ok_done(&m.handle(now, TxnEvent::Begin)));
    }

    #[test]
    fn a_failed_batch_makes_commit_fail_and_abort_bumps_the_epoch_when_needed() {
        let now = Instant::now();
        let mut m = in_txn(now);
        let _ = m.handle(now, TxnEvent::Send(tp(1)));
        let _ = m.handle(now, TxnEvent::SenderReady);
        let _ = m.handle(
            now,
            TxnEvent::PartitionsAdded(vec![(tp(1), ErrorCode::INVALID_PRODUCER_ID_MAPPING)]),
        );
        let _ = m.handle(now, TxnEvent::Abort);
        let _ = m.handle(now, TxnEvent::Flushed { failure: None });
        let a = m.handle(now, TxnEvent::Ended(ErrorCode::NONE));
        assert!(matches!(
            a.as_slice(),
            [TxnAction::InitProducerId { bump: true, .. }]
        ));
        let a = m.handle(
            now,
            TxnEvent::ProducerId {
                code: ErrorCode::NONE,
                id: 7,
                epoch: 4,
            },
        );
        assert_eq!(a[0], TxnAction::SetProducer { id: 7, epoch: 4 });
        assert!(ok_done(&a), "the abort completes after the bump");

        // A batch that failed inside the transaction: commit refuses.
        let mut m = in_txn(now);
        let _ = m.handle(now, TxnEvent::Commit);
        let failure = Some(Arc::new(Error::server(
            ErrorCode::NOT_ENOUGH_REPLICAS,
            None,
            "Produce",
            Some("out"),
            Some(0),
        )));
        assert!(matches!(
            m.handle(now, TxnEvent::Flushed { failure }).as_slice(),
            [TxnAction::Complete(Err(TxnError::Abortable(_)))]
        ));
        assert_eq!(m.state(), TxnState::AbortableError);
    }

    #[test]
    fn offsets_go_through_add_offsets_then_txn_offset_commit() {
        let now = Instant::now();
        let mut m = in_txn(now);
        assert!(matches!(
            m.handle(now, TxnEvent::SendOffsets("g".into())).as_slice(),
            [TxnAction::AddOffsets { group, .. }] if group == "g"
        ));
        assert!(matches!(
            m.handle(now, TxnEvent::OffsetsAdded(ErrorCode::NONE)).as_slice(),
            [TxnAction::CommitOffsets { group, .. }] if group == "g"
        ));
        assert!(ok_done(
            &m.handle(now, TxnEvent::OffsetsCommitted(ErrorCode::NONE))
        ));
        // A rebalance meanwhile (KIP-447): abortable, not fatal.
        assert!(matches!(
            m.handle(now, TxnEvent::SendOffsets("g".into())).as_slice(),
            [TxnAction::AddOffsets { .. }]
        ));
        let _ = m.handle(now, TxnEvent::OffsetsAdded(ErrorCode::NONE));
        assert!(matches!(
            m.handle(
                now,
                TxnEvent::OffsetsCommitted(ErrorCode::ILLEGAL_GENERATION)
            )
            .as_slice(),
            [TxnAction::Complete(Err(TxnError::Abortable(_)))]
        ));
    }

    #[test]
    fn empty_transactions_need_no_end_txn_and_calls_out_of_order_are_refused() {
        let now = Instant::now();
        let mut m = machine();
        assert!(matches!(
            m.handle(now, TxnEvent::Begin).as_slice(),
            [TxnAction::Complete(Err(TxnError::State {
                call: "begin",
                ..
            }))]
        ));
        let mut m = in_txn(now);
        let _ = m.handle(now, TxnEvent::Commit);
        let _ = m.handle(now, TxnEvent::Flushed { failure: None });
        let _ = m.handle(now, TxnEvent::Ended(ErrorCode::NONE));
        let _ = m.handle(now, TxnEvent::Begin);
        assert_eq!(m.handle(now, TxnEvent::Commit), vec![TxnAction::Flush]);
        assert!(ok_done(&m.handle(now, TxnEvent::Flushed { failure: None })));
        assert!(matches!(
            m.handle(now, TxnEvent::Commit).as_slice(),
            [TxnAction::Complete(Err(TxnError::State {
                call: "commit",
                ..
            }))]
        ));
    }
}

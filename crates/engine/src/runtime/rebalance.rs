//! The worker's side of the group: the producer and commit state it shares
//! with the rebalance listener, the driver that carries out the commit
//! machine's actions, and the listener itself.
//!
//! The listener runs inside the consumer's `poll`. What it can do there
//! (flush, commit a transaction, name the offsets the consumer commits for
//! revoked partitions) it does at once; what needs the worker's tasks
//! (writing stores, rolling back, rewinding, opening and closing tasks) it
//! queues as [`Change`]s, which the loop applies in order after `poll`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use faustus_wire::consumer::TopicPartition;
use faustus_wire::group::{GroupMetadataHandle, RebalanceListener};
use faustus_wire::producer::{Producer, ProducerRecord, TransactionalProducer};
use faustus_wire::TxnError;

use super::commit::{CommitAction, CommitEvent, CommitMachine, Offsets, TxnEnd};
use super::task::{Delivery, Sink};
use crate::config::Guarantee;
use crate::error::{Error, Result};

/// The worker's producer.
pub(crate) enum Outputs {
    /// Exactly-once: every output inside a transaction.
    Exactly(TransactionalProducer),
    /// At-least-once.
    AtLeast(Producer),
}

/// What the listener saw or did, for the loop to act on after `poll`, in
/// order.
#[derive(Debug)]
pub(crate) enum Change {
    /// Actions of the commit machine that need the tasks or the consumer:
    /// write stores, roll back, rewind (offset commits were handed to the
    /// consumer already).
    Act(CommitAction),
    Assigned(Vec<TopicPartition>),
    Revoked(Vec<TopicPartition>),
    Lost(Vec<TopicPartition>),
}

#[derive(Default)]
struct Pending {
    changes: Vec<Change>,
    fatal: Option<Error>,
    /// The offsets the last revocation's commit asked for, until the
    /// consumer asks for them.
    revoke_commit: Option<Offsets>,
}

/// What the worker's loop and its rebalance listener share.
pub(crate) struct Shared {
    outputs: Outputs,
    meta: OnceLock<GroupMetadataHandle>,
    machine: Mutex<CommitMachine>,
    pending: Mutex<Pending>,
    /// Sends and flushes that failed (the metrics' producer errors).
    pub(crate) send_errors: std::sync::atomic::AtomicU64,
    /// Transactions aborted (abortable errors, roll-backs).
    pub(crate) aborts: std::sync::atomic::AtomicU64,
    /// The tables' caches hold changes no changelog record carries yet
    /// (set by the loop before each poll).
    cache_dirty: AtomicBool,
    /// A revocation waits for the loop to flush the caches.
    revocation_held: AtomicBool,
}

/// A transactional producer refused because its epoch is no longer the
/// coordinator's (KIP-588): recoverable when nobody else holds the id.
fn fenced(e: &faustus_wire::Error) -> bool {
    matches!(
        e,
        faustus_wire::Error::Transaction {
            error: TxnError::Fatal(
                faustus_wire::protocol::ErrorCode::INVALID_PRODUCER_EPOCH
                    | faustus_wire::protocol::ErrorCode::PRODUCER_FENCED,
                _
            ),
            ..
        }
    )
}

/// Gives a fenced transactional producer a new epoch: KIP-588's bump
/// first; when that is refused too (the coordinator grants it only to its
/// current or previous epoch, and the rolling broker kills showed a worker
/// fall further behind after coordinators moved), a plain InitProducerId,
/// as Kafka Streams re-creates its producer. Safe because
/// the transactional id comes from this worker's state directory, which
/// it holds locked: no other live worker has it, and a zombie's offsets
/// are still refused by the group generation they carry.
async fn renew(p: &TransactionalProducer) -> std::result::Result<(), faustus_wire::Error> {
    match p.recover().await {
        Err(e) if fenced(&e) => {
            tracing::warn!(error = %e, "the epoch bump was refused; taking the transactional id over with a new producer session");
            p.restart().await
        }
        r => r,
    }
}

fn count(c: &std::sync::atomic::AtomicU64) {
    c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Sink for Shared {
    async fn send(&self, rec: ProducerRecord) -> Result<Delivery> {
        let sent = match &self.outputs {
            Outputs::Exactly(p) => p.send(rec).await,
            Outputs::AtLeast(p) => p.send(rec).await,
        };
        if sent.is_err() {
            count(&self.send_errors);
        }
        Ok(Delivery::Pending(sent?))
    }
}

impl Shared {
    /// The worker's commit driver; `cached` when its tables cache changes
    /// between commits (`cache.max.bytes` > 0).
    pub(crate) fn new(outputs: Outputs, cached: bool) -> Self {
        let guarantee = match outputs {
            Outputs::Exactly(_) => Guarantee::ExactlyOnce,
            Outputs::AtLeast(_) => Guarantee::AtLeastOnce,
        };
        Self {
            outputs,
            meta: OnceLock::new(),
            machine: Mutex::new(CommitMachine::new(guarantee).with_cache(cached)),
            pending: Mutex::new(Pending::default()),
            send_errors: Default::default(),
            aborts: Default::default(),
            cache_dirty: AtomicBool::new(false),
            revocation_held: AtomicBool::new(false),
        }
    }

    /// Tells the listener whether the caches hold unflushed changes (the
    /// loop calls it before each poll, where revocations happen).
    pub(crate) fn set_cache_dirty(&self, dirty: bool) {
        self.cache_dirty.store(dirty, Ordering::Relaxed);
    }

    /// Whether a revocation waits for the caches to be flushed (the flag
    /// is cleared).
    pub(crate) fn take_revocation_held(&self) -> bool {
        self.revocation_held.swap(false, Ordering::Relaxed)
    }

    /// The group's metadata, once the consumer is subscribed (KIP-447).
    pub(crate) fn set_group_metadata(&self, meta: GroupMetadataHandle) {
        let _ = self.meta.set(meta);
    }

    /// Feeds an event to the commit machine without running any action
    /// (events that never ask for one: `Processed`, `Revoked`,
    /// `OffsetsCommitted`).
    pub(crate) fn note(&self, ev: CommitEvent) {
        let actions = lock(&self.machine).handle(ev);
        debug_assert!(actions.is_empty(), "{actions:?}");
    }

    /// The changes the listener queued, and a fatal error it met.
    pub(crate) fn take_changes(&self) -> Result<Vec<Change>> {
        let mut p = lock(&self.pending);
        if let Some(e) = p.fatal.take() {
            return Err(e);
        }
        Ok(std::mem::take(&mut p.changes))
    }

    fn queue(&self, change: Change) {
        lock(&self.pending).changes.push(change);
    }

    /// Feeds `ev` to the commit machine and carries out the actions that
    /// need only the producer (begin, flush, commit or abort a transaction),
    /// feeding each outcome back; returns the other actions, in order, for
    /// the caller. The one place that sorts a commit's failures: an
    /// abortable transaction error aborts and goes on, anything else stops
    /// the worker.
    pub(crate) async fn drive(&self, ev: CommitEvent) -> Result<Vec<CommitAction>> {
        let mut queue: VecDeque<CommitAction> = lock(&self.machine).handle(ev).into();
        let mut rest = Vec::new();
        while let Some(action) = queue.pop_front() {
            let more = match (action, &self.outputs) {
                (CommitAction::BeginTxn, Outputs::Exactly(p)) => {
                    p.begin().await?;
                    Vec::new()
                }
                (CommitAction::Flush, Outputs::AtLeast(p)) => {
                    let r = p.flush().await;
                    if r.is_err() {
                        count(&self.send_errors);
                    }
                    let more = lock(&self.machine).handle(CommitEvent::Flushed { ok: r.is_ok() });
                    // Offsets stay uncommitted, now and when leaving.
                    r?;
                    more
                }
                (CommitAction::CommitTxn(offsets), Outputs::Exactly(p)) => {
                    let meta = match self.meta.get() {
                        Some(m) => m.get(),
                        None => return Err(Error::Config("no group membership yet".into())),
                    };
                    let r = async {
                        if !offsets.is_empty() {
                            p.send_offsets_to_transaction(&offsets, &meta).await?;
                        }
                        p.commit().await
                    }
                    .await;
                    let (end, err) = match r {
                        Ok(()) => (TxnEnd::Committed, None),
                        Err(faustus_wire::Error::Transaction {
                            error: TxnError::Abortable(why),
                            ..
                        }) => {
                            tracing::warn!(%why, "transaction aborted; rewinding to the committed offsets");
                            (TxnEnd::Abortable, None)
                        }
                        Err(e) if fenced(&e) => match renew(p).await {
                            // The coordinator aborted the transaction (it
                            // outlived transaction.timeout.ms: a paused
                            // process, an unreachable coordinator) and bumped
                            // the epoch; nobody else holds this worker's
                            // transactional.id (its state directory is
                            // locked), so the producer takes the next epoch.
                            Ok(()) => {
                                count(&self.aborts);
                                tracing::warn!(error = %e, "the coordinator ended the transaction under us (timed out?); producer recovered with a new epoch, rewinding to the committed offsets");
                                (TxnEnd::Renewed, None)
                            }
                            Err(again) => (TxnEnd::Fatal, Some(again)),
                        },
                        Err(e) => (TxnEnd::Fatal, Some(e)),
                    };
                    let more = lock(&self.machine).handle(CommitEvent::TxnEnded(end));
                    if let Some(e) = err {
                        return Err(e.into());
                    }
                    more
                }
                (CommitAction::AbortTxn, Outputs::Exactly(p)) => {
                    count(&self.aborts);
                    match p.abort().await {
                        Err(e) if fenced(&e) => {
                            // Already aborted by the coordinator (see the
                            // commit above): take the next epoch.
                            tracing::warn!(error = %e, "abort refused (the coordinator ended the transaction); recovering the producer");
                            renew(p).await?;
                        }
                        r => r?,
                    }
                    Vec::new()
                }
                (other, _) => {
                    rest.push(other);
                    Vec::new()
                }
            };
            queue.extend(more);
        }
        Ok(rest)
    }

    /// Closes the producer (at-least-once; the transactional one closes
    /// when dropped).
    pub(crate) async fn close(self) -> Result<()> {
        if let Outputs::AtLeast(p) = self.outputs {
            p.close().await?;
        }
        Ok(())
    }
}

/// The engine's rebalance listener.
pub(crate) struct Listener(pub(crate) Arc<Shared>);

impl Listener {
    /// Commits what was processed, before partitions go.
    async fn commit(&self) {
        match self.0.drive(CommitEvent::Commit).await {
            Ok(rest) => {
                for action in rest {
                    match action {
                        CommitAction::CommitOffsets(o) => {
                            lock(&self.0.pending).revoke_commit = Some(o);
                        }
                        other => self.0.queue(Change::Act(other)),
                    }
                }
            }
            Err(e) => lock(&self.0.pending).fatal = Some(e),
        }
    }
}

impl RebalanceListener for Listener {
    fn hold_revocation(&mut self, _partitions: &[TopicPartition]) -> bool {
        // The revocation commits what was processed: the tables' cached
        // changes of those records must be in the changelog first. The
        // loop flushes them and polls again.
        let dirty = self.0.cache_dirty.swap(false, Ordering::Relaxed);
        if dirty {
            self.0.revocation_held.store(true, Ordering::Relaxed);
        }
        dirty
    }
    async fn revoked(&mut self, partitions: &[TopicPartition]) {
        tracing::info!(?partitions, "partitions revoked: committing");
        self.commit().await;
        self.0.queue(Change::Revoked(partitions.to_vec()));
    }
    fn revoked_offsets(
        &mut self,
        partitions: &[TopicPartition],
    ) -> Option<BTreeMap<TopicPartition, i64>> {
        // What the agents have processed (a `take` may hold records back),
        // not everything the consumer handed out; nothing once an output
        // failed, or under exactly-once (the transaction carried them).
        let asked = lock(&self.0.pending).revoke_commit.take();
        let offsets = lock(&self.0.machine).revoked_offsets(asked);
        self.0.note(CommitEvent::Revoked(partitions.to_vec()));
        Some(offsets)
    }
    async fn assigned(&mut self, partitions: &[TopicPartition]) {
        tracing::info!(?partitions, "partitions assigned");
        self.0.queue(Change::Assigned(partitions.to_vec()));
    }
    async fn lost(&mut self, partitions: &[TopicPartition]) {
        tracing::warn!(?partitions, "partitions lost");
        match self.0.drive(CommitEvent::Lost(partitions.to_vec())).await {
            Ok(rest) => {
                for action in rest {
                    self.0.queue(Change::Act(action));
                }
            }
            Err(e) => lock(&self.0.pending).fatal = Some(e),
        }
        self.0.queue(Change::Lost(partitions.to_vec()));
    }
}

/// Which partition numbers need a task, followed through the listener's
/// changes one at a time and in order. A partition revoked and assigned
/// again within one `poll` is closed and opened again: its stores are kept,
/// its unwritten changes are not, and opening checks the stores against the
/// changelogs (another worker may have written in between) instead of
/// trusting the task as it was.
#[derive(Debug, Default)]
pub(crate) struct Ownership {
    owned: std::collections::BTreeSet<TopicPartition>,
}

/// What a change means for the tasks.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct TaskChanges {
    /// Partition numbers whose task must close (before any opens).
    pub(crate) close: Vec<i32>,
    /// Partition numbers that need a task.
    pub(crate) open: Vec<i32>,
}

impl Ownership {
    /// The source partitions owned now.
    pub(crate) fn owned(&self) -> impl Iterator<Item = &TopicPartition> {
        self.owned.iter()
    }

    fn has(&self, p: i32) -> bool {
        self.owned.iter().any(|tp| tp.partition == p)
    }

    /// Partitions were assigned: the partition numbers that had no task.
    pub(crate) fn assign(&mut self, tps: &[TopicPartition]) -> TaskChanges {
        let mut open = Vec::new();
        for tp in tps {
            if !self.has(tp.partition) && !open.contains(&tp.partition) {
                open.push(tp.partition);
            }
        }
        self.owned.extend(tps.iter().cloned());
        TaskChanges {
            close: Vec::new(),
            open,
        }
    }

    /// Partitions were revoked or lost: the partition numbers left without
    /// any source partition.
    pub(crate) fn remove(&mut self, tps: &[TopicPartition]) -> TaskChanges {
        for tp in tps {
            self.owned.remove(tp);
        }
        let mut close: Vec<i32> = tps
            .iter()
            .map(|tp| tp.partition)
            .filter(|&p| !self.has(p))
            .collect();
        close.sort_unstable();
        close.dedup();
        TaskChanges {
            close,
            open: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(t: &str, p: i32) -> TopicPartition {
        TopicPartition {
            topic: t.into(),
            partition: p,
        }
    }

    #[test]
    fn a_task_lives_while_any_source_partition_of_its_number_is_owned() {
        let mut o = Ownership::default();
        assert_eq!(
            o.assign(&[tp("a", 0), tp("b", 0), tp("a", 1)]).open,
            vec![0, 1]
        );
        assert!(o.remove(&[tp("a", 0)]).close.is_empty());
        assert_eq!(o.remove(&[tp("b", 0)]).close, vec![0]);
        assert!(o.assign(&[tp("b", 1)]).open.is_empty());
    }

    #[test]
    fn revoked_and_assigned_again_within_one_poll_reopens_the_task() {
        // One poll's changes: the task of partition 2 must close and open
        // again (not be kept, missing what the other owner wrote).
        let mut o = Ownership::default();
        o.assign(&[tp("a", 2)]);
        let mut opened = Vec::new();
        let mut closed = Vec::new();
        for (revoke, tps) in [(true, vec![tp("a", 2)]), (false, vec![tp("a", 2)])] {
            let c = if revoke {
                o.remove(&tps)
            } else {
                o.assign(&tps)
            };
            closed.extend(c.close);
            opened.extend(c.open);
        }
        assert_eq!(closed, vec![2]);
        assert_eq!(opened, vec![2]);
    }
}

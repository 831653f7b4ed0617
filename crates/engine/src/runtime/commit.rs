//! The commit decision, pure: events in, actions out, no IO.
//!
//! A worker makes processed input durable in one of two ways
//! (`processing.guarantee`):
//!
//! - **at-least-once**: flush the producer (every output, dead letter and
//!   changelog record acknowledged), write the table overlays to the stores,
//!   then commit the input offsets to the group. A failed output stops every
//!   later commit, on revocation and on leaving included: the input after the
//!   last commit is read again by whoever owns it next. A failed offset
//!   commit keeps the positions for the next try.
//! - **exactly-once**: a transaction is opened before the agents process
//!   anything; a commit adds the input offsets to it (KIP-447: with the
//!   group's metadata, so a zombie is fenced) and commits it, and only then
//!   are the overlays written to the stores. An abortable failure aborts the
//!   transaction, drops every overlay and rewinds the inputs to the committed
//!   offsets: the stores only ever hold committed state.
//!
//! A commit is due every `commit.interval.ms`, before partitions are revoked
//! (in the rebalance listener) and on shutdown; the machine does not care
//! which. Lost partitions (the group moved on without us) cannot be
//! committed: an open transaction is aborted, and the inputs rewind.
//!
//! The driver (`super::rebalance::Committer`) carries out each action and
//! feeds its outcome back as the next event. Kafka Streams' `TaskExecutor`
//! and `TaskManager.commit` do the same work inline; keeping it here makes
//! the rules testable without a broker (see the property tests below).

use std::collections::BTreeMap;

use faustus_wire::consumer::TopicPartition;

use crate::config::Guarantee;

/// Input positions: the next offset to read, per partition.
pub(crate) type Offsets = BTreeMap<TopicPartition, i64>;

/// How a transaction's commit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxnEnd {
    /// Committed: its records and offsets are visible.
    Committed,
    /// It could not commit and was aborted; the producer goes on.
    Abortable,
    /// The coordinator had already aborted it (timed out) and the producer
    /// took a new epoch (KIP-588): nothing is left to abort.
    Renewed,
    /// The producer is fenced or broken: the worker must stop.
    Fatal,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CommitEvent {
    /// The agents are about to process records.
    Processing,
    /// A partition's input is processed up to `next` (exclusive) and the
    /// outputs of those records are sent.
    Processed {
        /// The input partition.
        tp: TopicPartition,
        /// The next offset to read.
        next: i64,
    },
    /// A commit is due (interval, revocation or shutdown).
    Commit,
    /// At-least-once: the producer's flush answered; `ok` is false when a
    /// record since the last flush failed (or the producer is gone).
    Flushed {
        /// Whether every record was written.
        ok: bool,
    },
    /// At-least-once: an offset commit answered.
    OffsetsCommitted {
        /// What was committed.
        offsets: Offsets,
        /// Whether the group accepted it.
        ok: bool,
    },
    /// Exactly-once: the transaction's commit ended.
    TxnEnded(TxnEnd),
    /// These partitions were revoked (after their commit): forget them.
    Revoked(Vec<TopicPartition>),
    /// These partitions were lost without a commit.
    Lost(Vec<TopicPartition>),
    /// The worker stops on an error.
    Failed,
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CommitAction {
    /// Exactly-once: begin a transaction.
    BeginTxn,
    /// At-least-once: wait until every record sent is acknowledged.
    Flush,
    /// Exactly-once: add these offsets to the transaction (none: only
    /// commit it), then commit it.
    CommitTxn(Offsets),
    /// Exactly-once: abort the open transaction.
    AbortTxn,
    /// Everything sent is durable: write the table overlays to the stores
    /// with the offsets of their last changelog records.
    WriteStores,
    /// At-least-once: commit these input offsets to the group.
    CommitOffsets(Offsets),
    /// Back to the last commit: drop overlays, staged records and records
    /// gathered for `take`.
    RollBack,
    /// Seek every assigned partition to its committed offset.
    Rewind,
}

/// The commit state of one worker (see the module doc).
#[derive(Debug)]
pub(crate) struct CommitMachine {
    guarantee: Guarantee,
    /// Exactly-once: a transaction is open.
    txn_open: bool,
    /// Processed since the last commit.
    positions: Offsets,
    /// At-least-once: an output was not written; nothing commits any more.
    outputs_failed: bool,
    /// The worker is stopping on an error (exactly-once: nothing commits).
    failed: bool,
    /// Tables coalesce changes in a cache (`cache.max.bytes`): processed
    /// records may have changes no changelog record carries yet.
    cached: bool,
}

impl CommitMachine {
    /// A machine for this guarantee, with nothing processed.
    pub(crate) fn new(guarantee: Guarantee) -> Self {
        Self {
            guarantee,
            txn_open: false,
            positions: Offsets::new(),
            outputs_failed: false,
            failed: false,
            cached: false,
        }
    }

    /// The machine of a worker whose tables cache changes between
    /// commits: a failing worker commits nothing it processed, since the
    /// roll-back drops the cached changes of records already processed.
    pub(crate) fn with_cache(mut self, cached: bool) -> Self {
        self.cached = cached;
        self
    }

    /// Whether a transaction is open.
    #[cfg(test)]
    pub(crate) fn txn_open(&self) -> bool {
        self.txn_open
    }

    /// What is processed and not committed yet.
    #[cfg(test)]
    pub(crate) fn positions(&self) -> &Offsets {
        &self.positions
    }

    /// Handles one event.
    pub(crate) fn handle(&mut self, ev: CommitEvent) -> Vec<CommitAction> {
        use CommitAction as A;
        let exactly = self.guarantee == Guarantee::ExactlyOnce;
        match ev {
            CommitEvent::Processing => {
                if exactly && !self.txn_open && !self.failed {
                    self.txn_open = true;
                    vec![A::BeginTxn]
                } else {
                    Vec::new()
                }
            }
            CommitEvent::Processed { tp, next } => {
                if !self.failed {
                    self.positions.insert(tp, next);
                }
                Vec::new()
            }
            CommitEvent::Commit => {
                if exactly {
                    if self.txn_open && !self.failed {
                        vec![A::CommitTxn(self.positions.clone())]
                    } else {
                        Vec::new()
                    }
                } else if self.outputs_failed {
                    Vec::new()
                } else {
                    vec![A::Flush]
                }
            }
            CommitEvent::Flushed { ok } => {
                if exactly {
                    return Vec::new();
                }
                if !ok {
                    self.outputs_failed = true;
                    return Vec::new();
                }
                if self.outputs_failed {
                    return Vec::new();
                }
                let mut actions = vec![A::WriteStores];
                if !self.positions.is_empty() {
                    actions.push(A::CommitOffsets(self.positions.clone()));
                }
                actions
            }
            CommitEvent::OffsetsCommitted { offsets, ok } => {
                if ok {
                    // Positions that moved on since stay for the next commit.
                    for (tp, off) in offsets {
                        if self.positions.get(&tp) == Some(&off) {
                            self.positions.remove(&tp);
                        }
                    }
                }
                Vec::new()
            }
            CommitEvent::TxnEnded(end) => {
                if !exactly || !self.txn_open {
                    return Vec::new();
                }
                self.txn_open = false;
                self.positions.clear();
                match end {
                    TxnEnd::Committed => vec![A::WriteStores],
                    TxnEnd::Abortable => vec![A::AbortTxn, A::RollBack, A::Rewind],
                    TxnEnd::Renewed => vec![A::RollBack, A::Rewind],
                    TxnEnd::Fatal => {
                        self.failed = true;
                        Vec::new()
                    }
                }
            }
            CommitEvent::Revoked(tps) => {
                for tp in &tps {
                    self.positions.remove(tp);
                }
                Vec::new()
            }
            CommitEvent::Lost(tps) => {
                for tp in &tps {
                    self.positions.remove(tp);
                }
                let mut actions = Vec::new();
                if exactly {
                    // The open transaction covered partitions another member
                    // owns now: none of it may commit.
                    if std::mem::take(&mut self.txn_open) {
                        actions.push(A::AbortTxn);
                    }
                    actions.push(A::RollBack);
                }
                self.positions.clear();
                actions.push(A::Rewind);
                actions
            }
            CommitEvent::Failed => {
                // Table changes since the last commit are dropped either way:
                // the failed call may have changed an overlay without
                // sending its changelog records. The store stays at its
                // last commit; recovery replays whatever of the changelog is
                // past it.
                let mut actions = Vec::new();
                if exactly {
                    self.failed = true;
                    self.positions.clear();
                    if std::mem::take(&mut self.txn_open) {
                        actions.push(A::AbortTxn);
                    }
                }
                // At-least-once: what was processed (whole fetches, outputs
                // sent) may still commit when the worker leaves, unless an
                // output failed, or the roll-back drops cached table changes
                // of processed records.
                if self.cached && !exactly {
                    self.positions.clear();
                }
                actions.push(A::RollBack);
                actions
            }
        }
    }

    /// The offsets to commit for partitions being revoked, right after the
    /// commit their revocation triggered: at-least-once, the processed
    /// positions of every partition (none once an output failed);
    /// exactly-once, none (the transaction carried them).
    pub(crate) fn revoked_offsets(&self, committed: Option<Offsets>) -> Offsets {
        if self.guarantee == Guarantee::ExactlyOnce || self.outputs_failed {
            return Offsets::new();
        }
        committed.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tp(p: i32) -> TopicPartition {
        TopicPartition {
            topic: "in".into(),
            partition: p,
        }
    }

    fn offsets(list: &[(i32, i64)]) -> Offsets {
        list.iter().map(|&(p, o)| (tp(p), o)).collect()
    }

    #[test]
    fn at_least_once_flushes_then_writes_stores_then_commits_offsets() {
        let mut m = CommitMachine::new(Guarantee::AtLeastOnce);
        assert!(m.handle(CommitEvent::Processing).is_empty());
        m.handle(CommitEvent::Processed { tp: tp(0), next: 5 });
        m.handle(CommitEvent::Processed { tp: tp(1), next: 9 });
        assert_eq!(m.handle(CommitEvent::Commit), vec![CommitAction::Flush]);
        let want = offsets(&[(0, 5), (1, 9)]);
        assert_eq!(
            m.handle(CommitEvent::Flushed { ok: true }),
            vec![
                CommitAction::WriteStores,
                CommitAction::CommitOffsets(want.clone())
            ]
        );
        m.handle(CommitEvent::OffsetsCommitted {
            offsets: want,
            ok: true,
        });
        assert!(m.positions().is_empty());
    }

    #[test]
    fn a_failed_output_stops_every_later_offset_commit() {
        let mut m = CommitMachine::new(Guarantee::AtLeastOnce);
        m.handle(CommitEvent::Processed { tp: tp(0), next: 5 });
        assert_eq!(m.handle(CommitEvent::Commit), vec![CommitAction::Flush]);
        assert!(m.handle(CommitEvent::Flushed { ok: false }).is_empty());
        m.handle(CommitEvent::Processed { tp: tp(0), next: 8 });
        assert!(m.handle(CommitEvent::Commit).is_empty());
        assert!(m.handle(CommitEvent::Flushed { ok: true }).is_empty());
        let revoked = m.revoked_offsets(Some(offsets(&[(0, 8)])));
        assert!(revoked.is_empty());
    }

    #[test]
    fn a_failed_offset_commit_keeps_the_positions() {
        let mut m = CommitMachine::new(Guarantee::AtLeastOnce);
        m.handle(CommitEvent::Processed { tp: tp(0), next: 5 });
        m.handle(CommitEvent::Commit);
        m.handle(CommitEvent::Flushed { ok: true });
        m.handle(CommitEvent::OffsetsCommitted {
            offsets: offsets(&[(0, 5)]),
            ok: false,
        });
        assert_eq!(m.positions(), &offsets(&[(0, 5)]));
        m.handle(CommitEvent::Commit);
        assert_eq!(
            m.handle(CommitEvent::Flushed { ok: true }),
            vec![
                CommitAction::WriteStores,
                CommitAction::CommitOffsets(offsets(&[(0, 5)]))
            ]
        );
    }

    #[test]
    fn exactly_once_commits_offsets_in_the_transaction_then_writes_stores() {
        let mut m = CommitMachine::new(Guarantee::ExactlyOnce);
        assert_eq!(
            m.handle(CommitEvent::Processing),
            vec![CommitAction::BeginTxn]
        );
        assert!(m.handle(CommitEvent::Processing).is_empty());
        m.handle(CommitEvent::Processed { tp: tp(2), next: 3 });
        assert_eq!(
            m.handle(CommitEvent::Commit),
            vec![CommitAction::CommitTxn(offsets(&[(2, 3)]))]
        );
        assert_eq!(
            m.handle(CommitEvent::TxnEnded(TxnEnd::Committed)),
            vec![CommitAction::WriteStores]
        );
        assert!(!m.txn_open());
        // Nothing open: nothing to commit.
        assert!(m.handle(CommitEvent::Commit).is_empty());
    }

    #[test]
    fn an_aborted_transaction_rolls_back_and_rewinds() {
        let mut m = CommitMachine::new(Guarantee::ExactlyOnce);
        m.handle(CommitEvent::Processing);
        m.handle(CommitEvent::Processed { tp: tp(0), next: 3 });
        m.handle(CommitEvent::Commit);
        assert_eq!(
            m.handle(CommitEvent::TxnEnded(TxnEnd::Abortable)),
            vec![
                CommitAction::AbortTxn,
                CommitAction::RollBack,
                CommitAction::Rewind
            ]
        );
        assert!(m.positions().is_empty());
        assert_eq!(
            m.handle(CommitEvent::Processing),
            vec![CommitAction::BeginTxn]
        );
    }

    #[test]
    fn lost_partitions_abort_the_transaction() {
        let mut m = CommitMachine::new(Guarantee::ExactlyOnce);
        m.handle(CommitEvent::Processing);
        m.handle(CommitEvent::Processed { tp: tp(0), next: 3 });
        assert_eq!(
            m.handle(CommitEvent::Lost(vec![tp(0)])),
            vec![
                CommitAction::AbortTxn,
                CommitAction::RollBack,
                CommitAction::Rewind
            ]
        );
        let mut alo = CommitMachine::new(Guarantee::AtLeastOnce);
        alo.handle(CommitEvent::Processed { tp: tp(0), next: 3 });
        assert_eq!(
            alo.handle(CommitEvent::Lost(vec![tp(0)])),
            vec![CommitAction::Rewind]
        );
        assert!(alo.positions().is_empty());
    }

    #[test]
    fn a_failing_worker_aborts_and_commits_nothing_under_exactly_once() {
        let mut m = CommitMachine::new(Guarantee::ExactlyOnce);
        m.handle(CommitEvent::Processing);
        m.handle(CommitEvent::Processed { tp: tp(0), next: 3 });
        assert_eq!(
            m.handle(CommitEvent::Failed),
            vec![CommitAction::AbortTxn, CommitAction::RollBack]
        );
        assert!(m.handle(CommitEvent::Processing).is_empty());
        assert!(m.handle(CommitEvent::Commit).is_empty());
        assert!(m.revoked_offsets(None).is_empty());
    }

    #[test]
    fn a_failing_worker_with_a_table_cache_commits_nothing_it_processed() {
        for cached in [false, true] {
            let mut m = CommitMachine::new(Guarantee::AtLeastOnce).with_cache(cached);
            m.handle(CommitEvent::Processed { tp: tp(0), next: 3 });
            assert_eq!(m.handle(CommitEvent::Failed), vec![CommitAction::RollBack]);
            // Leaving commits what is left.
            assert_eq!(m.handle(CommitEvent::Commit), vec![CommitAction::Flush]);
            let mut expected = vec![CommitAction::WriteStores];
            if !cached {
                expected.push(CommitAction::CommitOffsets(offsets(&[(0, 3)])));
            }
            assert_eq!(m.handle(CommitEvent::Flushed { ok: true }), expected);
        }
    }

    /// One step of a random run: an event, with the outcomes of the
    /// actions it asks for drawn at random too.
    #[derive(Debug, Clone)]
    enum Step {
        Process(i32, i64),
        Commit {
            flush_ok: bool,
            offsets_ok: bool,
            txn: u8,
        },
        Revoke(i32),
        Lose(i32),
        Fail,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0i32..3, 1i64..5).prop_map(|(p, n)| Step::Process(p, n)),
            3 => (any::<bool>(), any::<bool>(), 0u8..6).prop_map(|(flush_ok, offsets_ok, txn)| Step::Commit { flush_ok, offsets_ok, txn }),
            1 => (0i32..3).prop_map(Step::Revoke),
            1 => (0i32..3).prop_map(Step::Lose),
            1 => Just(Step::Fail),
        ]
    }

    /// Plays a run against a model of Kafka: the group's committed offsets,
    /// the consumer's positions, and which outputs are durable.
    fn play(guarantee: Guarantee, steps: Vec<Step>) -> Result<(), TestCaseError> {
        let exactly = guarantee == Guarantee::ExactlyOnce;
        let mut m = CommitMachine::new(guarantee);
        // The consumer's position per partition (what it reads next).
        let mut read = [0i64; 3];
        // The group's committed offsets.
        let mut committed = [0i64; 3];
        // Offsets up to which every output was written.
        let mut durable = [0i64; 3];
        // A failed output happened at this input offset (at-least-once).
        let mut failed_output: Option<(i32, i64)> = None;
        let mut txn_open = false;
        let mut stopped = false;
        for s in steps {
            let mut pending: Vec<CommitAction> = Vec::new();
            let feed = |m: &mut CommitMachine, ev: CommitEvent, pending: &mut Vec<CommitAction>| {
                pending.extend(m.handle(ev));
            };
            match s {
                Step::Process(p, n) => {
                    if stopped {
                        continue;
                    }
                    for a in m.handle(CommitEvent::Processing) {
                        prop_assert_eq!(a, CommitAction::BeginTxn);
                        prop_assert!(exactly && !txn_open, "a second transaction began");
                        txn_open = true;
                    }
                    read[p as usize] += n;
                    m.handle(CommitEvent::Processed {
                        tp: tp(p),
                        next: read[p as usize],
                    });
                }
                Step::Commit {
                    flush_ok,
                    offsets_ok,
                    txn,
                } => {
                    feed(&mut m, CommitEvent::Commit, &mut pending);
                    let mut i = 0;
                    while i < pending.len() {
                        match pending[i].clone() {
                            CommitAction::BeginTxn => {
                                prop_assert!(!txn_open, "a second transaction began");
                                txn_open = true;
                            }
                            CommitAction::Flush => {
                                prop_assert!(!exactly);
                                if !flush_ok && failed_output.is_none() {
                                    failed_output = Some((0, read[0]));
                                }
                                let more = m.handle(CommitEvent::Flushed { ok: flush_ok });
                                if flush_ok && failed_output.is_none() {
                                    durable = read;
                                }
                                pending.extend(more);
                            }
                            CommitAction::CommitOffsets(o) => {
                                prop_assert!(!exactly);
                                prop_assert!(
                                    failed_output.is_none(),
                                    "offsets committed after a failed output"
                                );
                                for (t, off) in &o {
                                    let p = t.partition as usize;
                                    prop_assert!(
                                        *off <= durable[p],
                                        "offset {off} committed past durable output {}",
                                        durable[p]
                                    );
                                    prop_assert!(*off <= read[p]);
                                    if offsets_ok {
                                        committed[p] = *off;
                                    }
                                }
                                pending.extend(m.handle(CommitEvent::OffsetsCommitted {
                                    offsets: o,
                                    ok: offsets_ok,
                                }));
                            }
                            CommitAction::CommitTxn(o) => {
                                prop_assert!(
                                    exactly && txn_open,
                                    "commit without an open transaction"
                                );
                                let end = match txn {
                                    0 => TxnEnd::Abortable,
                                    1 => TxnEnd::Fatal,
                                    2 => TxnEnd::Renewed,
                                    _ => TxnEnd::Committed,
                                };
                                if end == TxnEnd::Committed {
                                    for (t, off) in &o {
                                        committed[t.partition as usize] = *off;
                                    }
                                }
                                txn_open = false;
                                if end == TxnEnd::Fatal {
                                    stopped = true;
                                }
                                pending.extend(m.handle(CommitEvent::TxnEnded(end)));
                            }
                            CommitAction::AbortTxn => {
                                txn_open = false;
                            }
                            CommitAction::WriteStores => {
                                prop_assert!(!exactly || !txn_open);
                            }
                            CommitAction::RollBack => {}
                            CommitAction::Rewind => read = committed,
                        }
                        i += 1;
                    }
                }
                Step::Revoke(p) => {
                    // The listener commits first, as on a real revocation.
                    feed(&mut m, CommitEvent::Commit, &mut pending);
                    let mut alo_commit = None;
                    for a in std::mem::take(&mut pending) {
                        match a {
                            CommitAction::Flush => {
                                let more = m.handle(CommitEvent::Flushed { ok: true });
                                if failed_output.is_none() {
                                    durable = read;
                                }
                                for b in more {
                                    if let CommitAction::CommitOffsets(o) = b {
                                        alo_commit = Some(o);
                                    }
                                }
                            }
                            CommitAction::CommitTxn(o) => {
                                for (t, off) in &o {
                                    committed[t.partition as usize] = *off;
                                }
                                txn_open = false;
                                m.handle(CommitEvent::TxnEnded(TxnEnd::Committed));
                            }
                            _ => {}
                        }
                    }
                    for (t, off) in m.revoked_offsets(alo_commit) {
                        prop_assert!(
                            failed_output.is_none(),
                            "revocation committed after a failed output"
                        );
                        prop_assert!(off <= durable[t.partition as usize]);
                        committed[t.partition as usize] = off;
                    }
                    m.handle(CommitEvent::Revoked(vec![tp(p)]));
                    // Re-assigned at once: reading resumes from the commit.
                    read[p as usize] = committed[p as usize];
                }
                Step::Lose(p) => {
                    for a in m.handle(CommitEvent::Lost(vec![tp(p)])) {
                        match a {
                            CommitAction::AbortTxn => txn_open = false,
                            CommitAction::Rewind => read = committed,
                            _ => {}
                        }
                    }
                }
                Step::Fail => {
                    for a in m.handle(CommitEvent::Failed) {
                        match a {
                            CommitAction::AbortTxn => txn_open = false,
                            CommitAction::RollBack => {}
                            other => prop_assert!(false, "{other:?} on failure"),
                        }
                    }
                    if exactly {
                        stopped = true;
                    }
                }
            }
            prop_assert_eq!(m.txn_open(), txn_open);
            for (t, off) in m.positions() {
                prop_assert!(
                    *off <= read[t.partition as usize],
                    "position {off} ahead of the consumer"
                );
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn at_least_once_never_commits_past_an_undelivered_output(steps in proptest::collection::vec(step(), 1..60)) {
            play(Guarantee::AtLeastOnce, steps)?;
        }

        #[test]
        fn exactly_once_commits_only_inside_an_open_transaction(steps in proptest::collection::vec(step(), 1..60)) {
            play(Guarantee::ExactlyOnce, steps)?;
        }
    }
}

//! The next-generation consumer group protocol (KIP-848) as a pure state
//! machine: events in, actions out, the clock passed in.
//!
//! There is no JoinGroup or SyncGroup and no group leader: the member sends
//! ConsumerGroupHeartbeat, the coordinator computes the assignment and hands
//! each member its *target* partitions in a heartbeat response. The member
//! then reconciles:
//!
//! 1. partitions it owns but that are not in the target are revoked (the
//!    listener's `revoked`, then a commit);
//! 2. partitions in the target it does not own yet are assigned (offsets are
//!    fetched, then the listener's `assigned`);
//! 3. only then does the next heartbeat report the new set as owned. The
//!    coordinator gives a revoked partition to another member only after this
//!    acknowledgement, so ownership stays exclusive.
//!
//! Heartbeats after the first send only what changed (subscription, owned
//! partitions); after an error the next one is full again. Rules, after the
//! Java client:
//!
//! * FENCED_MEMBER_EPOCH / UNKNOWN_MEMBER_ID: the partitions are *lost* (no
//!   commit) and the member rejoins with epoch 0 and the same member id.
//! * Coordinator errors and transport errors: find the coordinator again.
//! * COORDINATOR_LOAD_IN_PROGRESS: retry after `retry.backoff.ms`.
//! * Anything else (UNRELEASED_INSTANCE_ID, GROUP_MAX_SIZE_REACHED,
//!   UNSUPPORTED_ASSIGNOR, INVALID_REQUEST, ...): fatal.
//! * No poll for `max.poll.interval.ms`: the partitions are lost and the
//!   member leaves; the next poll rejoins.
//! * Leaving sends epoch -1, or -2 for a static member (KIP-345 semantics:
//!   the coordinator keeps its assignment for the session timeout).

use std::time::Duration;

use tokio::time::Instant;

use super::membership::{diff, Action, Event, Partitions, Phase};
use crate::protocol::ErrorCode;

/// Member epoch that joins (or rejoins) the group.
pub const JOIN_EPOCH: i32 = 0;
/// Member epoch that leaves the group.
pub const LEAVE_EPOCH: i32 = -1;
/// Member epoch with which a static member leaves temporarily.
pub const STATIC_LEAVE_EPOCH: i32 = -2;

/// Settings the state machine needs.
#[derive(Debug, Clone)]
pub struct NextConfig {
    /// The member id this client chose (ConsumerGroupHeartbeat v1+ has the
    /// client pick it, once, for the consumer's lifetime).
    pub member_id: String,
    /// `group.instance.id` (static membership).
    pub instance_id: Option<String>,
    /// `max.poll.interval.ms`; also the rebalance timeout.
    pub max_poll_interval: Duration,
    /// `retry.backoff.ms`.
    pub retry_backoff: Duration,
    /// `group.remote.assignor`: the server-side assignor, or `None` for the
    /// broker's default.
    pub server_assignor: Option<String>,
}

/// One ConsumerGroupHeartbeat to send. `None` fields are unchanged since the
/// last heartbeat the coordinator accepted and are sent as null.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextHeartbeat {
    /// Member id.
    pub member_id: String,
    /// Member epoch: 0 joins, -1 / -2 leave, otherwise the current epoch.
    pub epoch: i32,
    /// `group.instance.id`, sent on full heartbeats.
    pub instance_id: Option<String>,
    /// Rebalance timeout in ms, sent on full heartbeats (-1 otherwise).
    pub rebalance_timeout_ms: i32,
    /// Subscribed topics, when changed.
    pub subscription: Option<Vec<String>>,
    /// Server-side assignor, on full heartbeats.
    pub server_assignor: Option<String>,
    /// Owned partitions, when changed (the acknowledgement of a
    /// reconciliation).
    pub owned: Option<Partitions>,
}

impl NextHeartbeat {
    /// Whether this heartbeat leaves the group.
    pub fn is_leave(&self) -> bool {
        self.epoch < 0
    }
}

/// A reconciliation whose actions the driver is carrying out.
#[derive(Debug, Clone)]
struct Reconciling {
    id: u64,
    target: Partitions,
    added: Partitions,
}

/// The member's state.
#[derive(Debug, Clone)]
pub struct NextMembership {
    cfg: NextConfig,
    phase: Phase,
    member_id: String,
    epoch: i32,
    subscription: Vec<String>,
    /// Partitions we own (and report, or are about to report).
    owned: Partitions,
    /// The latest target not reconciled yet.
    target: Option<Partitions>,
    reconciling: Option<Reconciling>,
    /// A reconciliation made void by fencing: undo its assignments when the
    /// driver reports it done.
    cancelled: Option<Reconciling>,
    next_reconcile: u64,
    /// What the coordinator has accepted from us; `None` means "send it".
    sent_subscription: Option<Vec<String>>,
    sent_owned: Option<Partitions>,
    /// What the heartbeat in flight carries.
    in_flight: Option<NextHeartbeat>,
    interval: Duration,
    next_heartbeat: Instant,
    coordinator_known: bool,
    retry_at: Instant,
    last_poll: Instant,
    closing: bool,
}

impl NextMembership {
    /// A member that has not joined yet, subscribed to `subscription`.
    pub fn new(cfg: NextConfig, subscription: Vec<String>, now: Instant) -> Self {
        Self {
            member_id: cfg.member_id.clone(),
            cfg,
            phase: Phase::FindingCoordinator,
            epoch: JOIN_EPOCH,
            subscription,
            owned: Partitions::new(),
            target: None,
            reconciling: None,
            cancelled: None,
            next_reconcile: 0,
            sent_subscription: None,
            sent_owned: None,
            in_flight: None,
            interval: Duration::from_secs(5),
            next_heartbeat: now,
            coordinator_known: false,
            retry_at: now,
            last_poll: now,
            closing: false,
        }
    }

    /// Where the member is.
    pub fn phase(&self) -> Phase {
        self.phase
    }
    /// The member id.
    pub fn member_id(&self) -> &str {
        &self.member_id
    }
    /// The member epoch (0 before the coordinator accepted us).
    pub fn epoch(&self) -> i32 {
        self.epoch
    }
    /// The partitions the member owns now.
    pub fn owned(&self) -> &Partitions {
        &self.owned
    }
    /// Whether a reconciliation is waiting or under way.
    pub fn reconciling(&self) -> bool {
        self.reconciling.is_some() || self.target.is_some()
    }

    /// The topics subscribed to.
    pub fn subscription(&self) -> &[String] {
        &self.subscription
    }

    /// Replaces the subscription; the next heartbeat carries it.
    pub fn set_subscription(&mut self, topics: Vec<String>) {
        self.subscription = topics;
    }

    /// When the driver should call [`Event::Tick`] next.
    pub fn next_deadline(&self) -> Instant {
        match self.phase {
            Phase::FindingCoordinator => self.retry_at,
            Phase::Left | Phase::Failed => self.retry_at + Duration::from_secs(3600),
            _ => {
                let hb = if self.in_flight.is_some() {
                    // The response (or its timeout) wakes the driver.
                    self.retry_at + Duration::from_secs(3600)
                } else if self.has_news() {
                    self.retry_at
                } else {
                    self.next_heartbeat.max(self.retry_at)
                };
                hb.min(self.last_poll + self.cfg.max_poll_interval)
            }
        }
    }

    /// Something the coordinator must hear about now, not at the interval.
    fn has_news(&self) -> bool {
        self.epoch == JOIN_EPOCH
            || self.sent_subscription.as_ref() != Some(&self.subscription)
            || (self.reconciling.is_none() && self.sent_owned.as_ref() != Some(&self.owned))
    }

    /// The heartbeat to send now.
    fn heartbeat(&mut self) -> Action {
        let full = self.epoch == JOIN_EPOCH || self.sent_subscription.is_none();
        let hb = NextHeartbeat {
            member_id: self.member_id.clone(),
            epoch: self.epoch,
            instance_id: if full {
                self.cfg.instance_id.clone()
            } else {
                None
            },
            rebalance_timeout_ms: if full {
                self.cfg.max_poll_interval.as_millis().min(i32::MAX as u128) as i32
            } else {
                -1
            },
            subscription: (full || self.sent_subscription.as_ref() != Some(&self.subscription))
                .then(|| self.subscription.clone()),
            server_assignor: if full {
                self.cfg.server_assignor.clone()
            } else {
                None
            },
            // During a reconciliation the owned set is the old one until
            // the driver reports the callbacks done.
            owned: (full || self.sent_owned.as_ref() != Some(&self.owned))
                .then(|| self.owned.clone()),
        };
        self.in_flight = Some(hb.clone());
        Action::ConsumerHeartbeat(hb)
    }

    fn leave_epoch(&self) -> i32 {
        if self.cfg.instance_id.is_some() {
            STATIC_LEAVE_EPOCH
        } else {
            LEAVE_EPOCH
        }
    }

    fn leave(&mut self) -> Action {
        let hb = NextHeartbeat {
            member_id: self.member_id.clone(),
            epoch: self.leave_epoch(),
            instance_id: self.cfg.instance_id.clone(),
            rebalance_timeout_ms: -1,
            subscription: None,
            server_assignor: None,
            owned: None,
        };
        self.in_flight = Some(hb.clone());
        Action::ConsumerHeartbeat(hb)
    }

    /// Forgets what the coordinator knows of us: the next heartbeat is full.
    fn forget_sent(&mut self) {
        self.sent_subscription = None;
        self.sent_owned = None;
    }

    /// Gives up every partition: a reconciliation under way is cancelled,
    /// the target dropped, and the owned partitions revoked (with a commit)
    /// or lost (without).
    fn give_up(&mut self, lost: bool) -> Vec<Action> {
        if let Some(r) = self.reconciling.take() {
            self.cancelled = Some(r);
        }
        self.target = None;
        let owned = std::mem::take(&mut self.owned);
        if owned.is_empty() {
            Vec::new()
        } else if lost {
            vec![Action::Lose(owned)]
        } else {
            vec![Action::Revoke(owned)]
        }
    }

    /// Drops every partition without a commit and rejoins with epoch 0.
    fn fenced(&mut self, now: Instant) -> Vec<Action> {
        let out = self.give_up(true);
        self.epoch = JOIN_EPOCH;
        self.forget_sent();
        self.phase = if self.coordinator_known {
            Phase::Joining
        } else {
            Phase::FindingCoordinator
        };
        self.retry_at = now;
        out
    }

    fn coordinator_lost(&mut self, now: Instant) -> Vec<Action> {
        self.coordinator_known = false;
        self.in_flight = None;
        self.forget_sent();
        self.retry_at = now + self.cfg.retry_backoff;
        if matches!(self.phase, Phase::Left | Phase::Failed) {
            return Vec::new();
        }
        if self.closing {
            // Nobody to say goodbye to: the session timeout will do.
            self.phase = Phase::Left;
            return Vec::new();
        }
        self.phase = Phase::FindingCoordinator;
        vec![Action::FindCoordinator {
            not_before: self.retry_at,
        }]
    }

    /// Starts reconciling towards the newest target, if idle.
    fn reconcile(&mut self) -> Vec<Action> {
        if self.reconciling.is_some() {
            return Vec::new();
        }
        let Some(target) = self.target.take() else {
            return Vec::new();
        };
        let revoked = diff(&self.owned, &target);
        let added = diff(&target, &self.owned);
        if revoked.is_empty() && added.is_empty() {
            self.owned = target;
            return Vec::new();
        }
        self.next_reconcile += 1;
        let id = self.next_reconcile;
        let mut out = Vec::new();
        if !revoked.is_empty() {
            out.push(Action::Revoke(revoked));
        }
        if !added.is_empty() {
            out.push(Action::Assign(added.clone()));
        }
        out.push(Action::Reconciled(id));
        self.reconciling = Some(Reconciling { id, target, added });
        out
    }

    /// Feeds one event; returns the actions to carry out, in order.
    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        match event {
            Event::Tick => self.tick(now),
            Event::Polled => {
                self.last_poll = now;
                if self.phase == Phase::Left && !self.closing {
                    // Left after a poll timeout: come back.
                    self.phase = if self.coordinator_known {
                        Phase::Joining
                    } else {
                        Phase::FindingCoordinator
                    };
                    self.epoch = JOIN_EPOCH;
                    self.forget_sent();
                    self.retry_at = now;
                }
                self.tick(now)
            }
            Event::CoordinatorFound => {
                self.coordinator_known = true;
                if self.phase == Phase::FindingCoordinator {
                    self.phase = if self.epoch == JOIN_EPOCH {
                        Phase::Joining
                    } else {
                        Phase::Stable
                    };
                }
                self.retry_at = now;
                self.tick(now)
            }
            Event::CoordinatorLost => self.coordinator_lost(now),
            Event::SubscriptionChanged => self.tick(now),
            Event::Reconciled(id) => {
                if let Some(r) = self.cancelled.take_if(|c| c.id == id) {
                    // Fenced while reconciling: what was assigned is not ours.
                    return if r.added.is_empty() {
                        Vec::new()
                    } else {
                        vec![Action::Lose(r.added)]
                    };
                }
                if let Some(r) = self.reconciling.take_if(|r| r.id == id) {
                    self.owned = r.target;
                }
                let mut out = self.reconcile();
                out.extend(self.tick(now));
                out
            }
            Event::ConsumerHeartbeat {
                code,
                member_id,
                epoch,
                interval,
                assignment,
            } => self.heartbeat_response(now, code, member_id, epoch, interval, assignment),
            Event::Close => {
                self.closing = true;
                let mut out = self.give_up(false);
                if self.coordinator_known && self.epoch != JOIN_EPOCH {
                    self.phase = Phase::Joining;
                    out.push(self.leave());
                } else {
                    self.phase = Phase::Left;
                }
                out
            }
            // Classic-protocol events do not apply.
            Event::Joined { .. }
            | Event::PlanReady
            | Event::Synced { .. }
            | Event::Heartbeat { .. } => Vec::new(),
        }
    }

    fn heartbeat_response(
        &mut self,
        now: Instant,
        code: ErrorCode,
        member_id: Option<String>,
        epoch: i32,
        interval: Duration,
        assignment: Option<Partitions>,
    ) -> Vec<Action> {
        let sent = self.in_flight.take();
        if matches!(self.phase, Phase::Left | Phase::Failed) {
            return Vec::new();
        }
        if sent.as_ref().is_some_and(NextHeartbeat::is_leave) {
            self.phase = Phase::Left;
            self.epoch = JOIN_EPOCH;
            return Vec::new();
        }
        if code.is_ok() {
            if let Some(id) = member_id.filter(|m| !m.is_empty()) {
                self.member_id = id;
            }
            self.epoch = epoch;
            if !interval.is_zero() {
                self.interval = interval;
            }
            self.next_heartbeat = now + self.interval;
            if let Some(hb) = sent {
                if let Some(s) = hb.subscription {
                    self.sent_subscription = Some(s);
                }
                if let Some(o) = hb.owned {
                    self.sent_owned = Some(o);
                }
            }
            if self.phase == Phase::Joining {
                self.phase = Phase::Stable;
            }
            if let Some(a) = assignment {
                self.target = Some(a);
            }
            let mut out = self.reconcile();
            out.extend(self.tick(now));
            return out;
        }
        if code == ErrorCode::FENCED_MEMBER_EPOCH || code == ErrorCode::UNKNOWN_MEMBER_ID {
            let mut out = self.fenced(now);
            out.extend(self.tick(now));
            return out;
        }
        if code.is_coordinator_error() && code != ErrorCode::COORDINATOR_LOAD_IN_PROGRESS {
            return self.coordinator_lost(now);
        }
        if code == ErrorCode::COORDINATOR_LOAD_IN_PROGRESS || code.is_retriable() {
            self.forget_sent();
            self.retry_at = now + self.cfg.retry_backoff;
            return Vec::new();
        }
        self.phase = Phase::Failed;
        vec![Action::Fail(code)]
    }

    fn tick(&mut self, now: Instant) -> Vec<Action> {
        match self.phase {
            Phase::Left | Phase::Failed => return Vec::new(),
            Phase::FindingCoordinator => {
                return if now >= self.retry_at && !self.closing {
                    self.retry_at = now + self.cfg.retry_backoff;
                    vec![Action::FindCoordinator { not_before: now }]
                } else {
                    Vec::new()
                };
            }
            _ => {}
        }
        if now >= self.last_poll + self.cfg.max_poll_interval && !self.closing {
            // The application stopped polling: give the partitions up.
            let mut out = self.give_up(true);
            if self.epoch != JOIN_EPOCH && self.in_flight.is_none() {
                out.push(self.leave());
            }
            self.phase = Phase::Left;
            self.epoch = JOIN_EPOCH;
            return out;
        }
        if self.in_flight.is_some() || now < self.retry_at {
            return Vec::new();
        }
        if self.has_news() || now >= self.next_heartbeat {
            return vec![self.heartbeat()];
        }
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(instance: Option<&str>) -> NextConfig {
        NextConfig {
            member_id: "m1".into(),
            instance_id: instance.map(str::to_owned),
            max_poll_interval: Duration::from_secs(300),
            retry_backoff: Duration::from_millis(100),
            server_assignor: None,
        }
    }

    fn parts(ps: &[(&str, &[i32])]) -> Partitions {
        ps.iter()
            .map(|(t, p)| ((*t).to_owned(), p.to_vec()))
            .collect()
    }

    fn ok(epoch: i32, assignment: Option<Partitions>) -> Event {
        Event::ConsumerHeartbeat {
            code: ErrorCode::NONE,
            member_id: None,
            epoch,
            interval: Duration::from_secs(1),
            assignment,
        }
    }

    fn err(code: ErrorCode) -> Event {
        Event::ConsumerHeartbeat {
            code,
            member_id: None,
            epoch: -1,
            interval: Duration::ZERO,
            assignment: None,
        }
    }

    fn only_heartbeat(actions: &[Action]) -> &NextHeartbeat {
        match actions {
            [Action::ConsumerHeartbeat(hb)] => hb,
            other => panic!("expected one heartbeat, got {other:?}"),
        }
    }

    /// A member that joined with epoch `epoch` and owns nothing.
    fn joined(now: Instant) -> NextMembership {
        let mut m = NextMembership::new(cfg(None), vec!["t".into()], now);
        assert!(matches!(
            m.handle(now, Event::Tick).as_slice(),
            [Action::FindCoordinator { .. }]
        ));
        let a = m.handle(now, Event::CoordinatorFound);
        let hb = only_heartbeat(&a);
        assert_eq!(hb.epoch, JOIN_EPOCH);
        assert_eq!(hb.subscription.as_deref(), Some(&["t".to_owned()][..]));
        assert_eq!(
            hb.owned,
            Some(Partitions::new()),
            "a join lists owned partitions"
        );
        assert_eq!(hb.rebalance_timeout_ms, 300_000);
        assert!(m.handle(now, ok(1, None)).is_empty());
        assert_eq!(m.phase(), Phase::Stable);
        m
    }

    #[test]
    fn join_then_incremental_heartbeats_on_the_interval() {
        let t0 = Instant::now();
        let mut m = joined(t0);
        // Nothing new: no heartbeat before the interval.
        assert!(m
            .handle(t0 + Duration::from_millis(500), Event::Tick)
            .is_empty());
        let a = m.handle(t0 + Duration::from_secs(1), Event::Tick);
        let hb = only_heartbeat(&a);
        assert_eq!(hb.epoch, 1);
        assert_eq!(hb.subscription, None, "unchanged fields are null");
        assert_eq!(hb.owned, None);
        assert_eq!(hb.rebalance_timeout_ms, -1);
        // One in flight at a time.
        assert!(m
            .handle(t0 + Duration::from_secs(3), Event::Tick)
            .is_empty());
    }

    #[test]
    fn a_target_is_reconciled_and_then_acknowledged() {
        let t0 = Instant::now();
        let mut m = joined(t0);
        let _ = m.handle(t0 + Duration::from_secs(1), Event::Tick);
        let a = m.handle(
            t0 + Duration::from_secs(1),
            ok(2, Some(parts(&[("t", &[0, 1, 2])]))),
        );
        assert_eq!(
            a,
            vec![
                Action::Assign(parts(&[("t", &[0, 1, 2])])),
                Action::Reconciled(1)
            ]
        );
        // Until the driver is done, heartbeats keep the old owned set.
        assert!(m.owned().is_empty());
        let a = m.handle(t0 + Duration::from_secs(1), Event::Reconciled(1));
        let hb = only_heartbeat(&a);
        assert_eq!(hb.owned, Some(parts(&[("t", &[0, 1, 2])])), "ack at once");
        let _ = m.handle(t0 + Duration::from_secs(1), ok(2, None));
        // A smaller target: revoke only what moves, then acknowledge.
        let _ = m.handle(t0 + Duration::from_secs(2), Event::Tick);
        let a = m.handle(
            t0 + Duration::from_secs(2),
            ok(3, Some(parts(&[("t", &[0])]))),
        );
        assert_eq!(
            a,
            vec![
                Action::Revoke(parts(&[("t", &[1, 2])])),
                Action::Reconciled(2)
            ]
        );
        assert_eq!(m.owned(), &parts(&[("t", &[0, 1, 2])]));
        // A heartbeat due during the callbacks still reports the old set.
        let a = m.handle(t0 + Duration::from_secs(3), Event::Tick);
        assert_eq!(only_heartbeat(&a).owned, None);
        let _ = m.handle(t0 + Duration::from_secs(3), ok(3, None));
        let a = m.handle(t0 + Duration::from_secs(3), Event::Reconciled(2));
        assert_eq!(only_heartbeat(&a).owned, Some(parts(&[("t", &[0])])));
    }

    #[test]
    fn a_target_arriving_mid_reconciliation_waits_its_turn() {
        let t0 = Instant::now();
        let mut m = joined(t0);
        let _ = m.handle(t0 + Duration::from_secs(1), Event::Tick);
        let _ = m.handle(t0, ok(2, Some(parts(&[("t", &[0, 1])]))));
        let _ = m.handle(t0 + Duration::from_secs(2), Event::Tick);
        assert!(
            m.handle(t0, ok(3, Some(parts(&[("t", &[1, 2])]))))
                .is_empty(),
            "no second reconciliation starts while one is under way"
        );
        let a = m.handle(t0, Event::Reconciled(1));
        assert_eq!(
            &a[..3],
            &[
                Action::Revoke(parts(&[("t", &[0])])),
                Action::Assign(parts(&[("t", &[2])])),
                Action::Reconciled(2)
            ]
        );
    }

    #[test]
    fn fencing_loses_partitions_and_rejoins_with_the_same_id() {
        let t0 = Instant::now();
        let mut m = joined(t0);
        let _ = m.handle(t0 + Duration::from_secs(1), Event::Tick);
        let _ = m.handle(t0, ok(2, Some(parts(&[("t", &[0])]))));
        let _ = m.handle(t0, Event::Reconciled(1));
        let a = m.handle(t0, err(ErrorCode::FENCED_MEMBER_EPOCH));
        assert_eq!(a[0], Action::Lose(parts(&[("t", &[0])])));
        let hb = only_heartbeat(&a[1..]);
        assert_eq!(hb.epoch, JOIN_EPOCH);
        assert_eq!(hb.member_id, "m1");
        assert_eq!(hb.owned, Some(Partitions::new()));
        assert!(m.owned().is_empty());
    }

    #[test]
    fn fencing_during_a_reconciliation_undoes_its_assignments() {
        let t0 = Instant::now();
        let mut m = joined(t0);
        let _ = m.handle(t0 + Duration::from_secs(1), Event::Tick);
        let _ = m.handle(t0, ok(2, Some(parts(&[("t", &[0, 1])]))));
        let _ = m.handle(t0 + Duration::from_secs(2), Event::Tick);
        let a = m.handle(t0, err(ErrorCode::UNKNOWN_MEMBER_ID));
        assert!(
            !a.iter().any(|a| matches!(a, Action::Lose(_))),
            "owned nothing yet"
        );
        // The driver finishes the Assign it had started: give it back.
        assert_eq!(
            m.handle(t0, Event::Reconciled(1)),
            vec![Action::Lose(parts(&[("t", &[0, 1])]))]
        );
        assert!(m.owned().is_empty());
    }

    #[test]
    fn coordinator_errors_find_it_again_and_resend_everything() {
        let t0 = Instant::now();
        let mut m = joined(t0);
        let _ = m.handle(t0 + Duration::from_secs(1), Event::Tick);
        let a = m.handle(t0 + Duration::from_secs(1), err(ErrorCode::NOT_COORDINATOR));
        assert!(matches!(a.as_slice(), [Action::FindCoordinator { .. }]));
        assert_eq!(m.phase(), Phase::FindingCoordinator);
        let a = m.handle(t0 + Duration::from_secs(2), Event::CoordinatorFound);
        let hb = only_heartbeat(&a);
        assert_eq!(hb.epoch, 1, "membership kept");
        assert!(
            hb.subscription.is_some() && hb.owned.is_some(),
            "full heartbeat"
        );
    }

    #[test]
    fn fatal_errors_stop_the_member() {
        let t0 = Instant::now();
        let mut m = joined(t0);
        let _ = m.handle(t0 + Duration::from_secs(1), Event::Tick);
        let a = m.handle(t0, err(ErrorCode::UNRELEASED_INSTANCE_ID));
        assert_eq!(a, vec![Action::Fail(ErrorCode::UNRELEASED_INSTANCE_ID)]);
        assert_eq!(m.phase(), Phase::Failed);
        assert!(m
            .handle(t0 + Duration::from_secs(9), Event::Tick)
            .is_empty());
    }

    #[test]
    fn close_revokes_then_leaves_static_members_with_minus_two() {
        let t0 = Instant::now();
        for (instance, epoch) in [(None, LEAVE_EPOCH), (Some("i1"), STATIC_LEAVE_EPOCH)] {
            let mut m = NextMembership::new(cfg(instance), vec!["t".into()], t0);
            let _ = m.handle(t0, Event::Tick);
            let a = m.handle(t0, Event::CoordinatorFound);
            assert_eq!(only_heartbeat(&a).instance_id.as_deref(), instance);
            let _ = m.handle(t0, ok(1, Some(parts(&[("t", &[0])]))));
            let _ = m.handle(t0, Event::Reconciled(1));
            let _ = m.handle(t0, ok(1, None));
            let a = m.handle(t0, Event::Close);
            assert_eq!(a[0], Action::Revoke(parts(&[("t", &[0])])));
            assert_eq!(only_heartbeat(&a[1..]).epoch, epoch);
            assert!(m.handle(t0, ok(-1, None)).is_empty());
            assert_eq!(m.phase(), Phase::Left);
        }
    }

    #[test]
    fn a_poll_timeout_loses_partitions_leaves_and_the_next_poll_rejoins() {
        let t0 = Instant::now();
        let mut m = joined(t0);
        let _ = m.handle(t0 + Duration::from_secs(1), Event::Tick);
        let _ = m.handle(t0, ok(2, Some(parts(&[("t", &[0])]))));
        let _ = m.handle(t0, Event::Reconciled(1));
        let _ = m.handle(t0, ok(2, None));
        let late = t0 + Duration::from_secs(301);
        let a = m.handle(late, Event::Tick);
        assert_eq!(a[0], Action::Lose(parts(&[("t", &[0])])));
        assert_eq!(only_heartbeat(&a[1..]).epoch, LEAVE_EPOCH);
        let _ = m.handle(late, ok(-1, None));
        assert_eq!(m.phase(), Phase::Left);
        let a = m.handle(late, Event::Polled);
        assert_eq!(only_heartbeat(&a).epoch, JOIN_EPOCH);
    }

    #[test]
    fn a_subscription_change_is_sent_at_once() {
        let t0 = Instant::now();
        let mut m = joined(t0);
        m.set_subscription(vec!["t".into(), "u".into()]);
        let a = m.handle(t0, Event::SubscriptionChanged);
        assert_eq!(
            only_heartbeat(&a).subscription,
            Some(vec!["t".to_owned(), "u".to_owned()])
        );
    }
}

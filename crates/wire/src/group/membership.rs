//! Classic group membership (JoinGroup / SyncGroup / Heartbeat / LeaveGroup)
//! as a pure state machine: events in, actions out, the clock passed in.
//!
//! The driver sends the requests the actions ask for, runs the rebalance
//! listener for `Revoke`, `Assign` and `Lose` (awaiting each before going
//! on), and feeds responses back as events. Rules follow the Java client:
//!
//! * MEMBER_ID_REQUIRED (KIP-394): rejoin at once with the id the broker gave.
//! * Eager protocols revoke everything before joining; the cooperative
//!   protocol (KIP-429) keeps owned partitions through the join, revokes only
//!   what the new assignment takes away, and rejoins after a revocation.
//! * UNKNOWN_MEMBER_ID / ILLEGAL_GENERATION: the partitions are *lost* (they
//!   may already belong to someone else: no commit), and the member rejoins.
//! * FENCED_INSTANCE_ID (KIP-345): fatal; another instance took our place.
//! * Coordinator errors: find the coordinator again; membership is kept.
//! * No successful heartbeat for `session.timeout.ms`: lost, rejoin.
//! * No poll for `max.poll.interval.ms`: leave the group; lost.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::protocol::ErrorCode;

/// Partitions by topic.
pub type Partitions = BTreeMap<String, Vec<i32>>;

/// Settings the state machine needs.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// `session.timeout.ms`.
    pub session_timeout: Duration,
    /// `heartbeat.interval.ms`.
    pub heartbeat_interval: Duration,
    /// `max.poll.interval.ms`.
    pub max_poll_interval: Duration,
    /// `retry.backoff.ms`.
    pub retry_backoff: Duration,
    /// `group.instance.id` (static membership).
    pub instance_id: Option<String>,
    /// Whether the assignor is cooperative (KIP-429).
    pub cooperative: bool,
}

/// Where the member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Needs the coordinator.
    FindingCoordinator,
    /// JoinGroup in flight.
    Joining,
    /// SyncGroup in flight (after the leader computed the plan, if leader).
    Syncing,
    /// Member of a stable generation.
    Stable,
    /// Left the group (closed).
    Left,
    /// Stopped by a fatal error.
    Failed,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Time passed (the driver calls this on every poll and timer).
    Tick,
    /// The application polled (resets the max.poll.interval clock).
    Polled,
    /// FindCoordinator answered.
    CoordinatorFound,
    /// FindCoordinator, or a request to the coordinator, failed with a
    /// coordinator error or a transport error.
    CoordinatorLost,
    /// JoinGroup answered.
    Joined {
        /// Error code.
        code: ErrorCode,
        /// Our member id (also set with MEMBER_ID_REQUIRED).
        member_id: String,
        /// The generation.
        generation: i32,
        /// Whether we lead: the driver must compute the plan.
        leader: bool,
    },
    /// The leader's plan is ready (the driver ran the assignor).
    PlanReady,
    /// SyncGroup answered.
    Synced {
        /// Error code.
        code: ErrorCode,
        /// Our assignment.
        assignment: Partitions,
    },
    /// Heartbeat answered.
    Heartbeat {
        /// Error code.
        code: ErrorCode,
    },
    /// The application closes the consumer.
    Close,
    /// The subscription changed (a pattern now matches other topics): rejoin
    /// so the leader can assign the new set.
    SubscriptionChanged,
    /// ConsumerGroupHeartbeat answered (KIP-848).
    ConsumerHeartbeat {
        /// Error code.
        code: ErrorCode,
        /// The member id, when the coordinator chose it (version 0).
        member_id: Option<String>,
        /// The member epoch.
        epoch: i32,
        /// The heartbeat interval the coordinator asks for.
        interval: Duration,
        /// The new target assignment, if it changed.
        assignment: Option<Partitions>,
    },
    /// The driver carried out a reconciliation's actions (KIP-848).
    Reconciled(u64),
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send FindCoordinator (after `not_before`, for backoff).
    FindCoordinator {
        /// Earliest time to send.
        not_before: Instant,
    },
    /// Send JoinGroup with this member id (empty for a new member) and the
    /// partitions we own (for the cooperative protocol's subscription).
    Join {
        /// Member id.
        member_id: String,
        /// Owned partitions, for the subscription's owned-partitions field.
        owned: Partitions,
        /// Generation of `owned`.
        generation: i32,
    },
    /// We lead: run the assignor over the JoinGroup members, then report
    /// [`Event::PlanReady`] and send SyncGroup with the plan.
    ComputePlan,
    /// Send SyncGroup (with the plan if leader, empty otherwise).
    Sync,
    /// Send Heartbeat.
    Heartbeat,
    /// Send LeaveGroup.
    Leave,
    /// Run the listener's revoked callback, then commit offsets.
    Revoke(Partitions),
    /// Run the listener's assigned callback (fetch committed offsets first).
    Assign(Partitions),
    /// Run the listener's lost callback: no commit.
    Lose(Partitions),
    /// Stop with this error.
    Fail(ErrorCode),
    /// Send ConsumerGroupHeartbeat (KIP-848) and report the answer as
    /// [`Event::ConsumerHeartbeat`].
    ConsumerHeartbeat(super::next::NextHeartbeat),
    /// The revoke and assign actions before this one are done: report
    /// [`Event::Reconciled`] with this id.
    Reconciled(u64),
}

/// The member's state.
#[derive(Debug, Clone)]
pub struct Membership {
    cfg: MembershipConfig,
    phase: Phase,
    member_id: String,
    generation: i32,
    owned: Partitions,
    /// Rejoin as soon as the current step allows.
    rejoin: bool,
    coordinator_known: bool,
    retry_at: Instant,
    last_heartbeat_ok: Instant,
    next_heartbeat: Instant,
    heartbeat_in_flight: bool,
    last_poll: Instant,
}

/// The partitions in `a` that are not in `b`.
pub(crate) fn diff(a: &Partitions, b: &Partitions) -> Partitions {
    let mut out = Partitions::new();
    for (t, ps) in a {
        let other = b.get(t);
        let left: Vec<i32> = ps
            .iter()
            .copied()
            .filter(|p| other.is_none_or(|o| !o.contains(p)))
            .collect();
        if !left.is_empty() {
            out.insert(t.clone(), left);
        }
    }
    out
}

impl Membership {
    /// A member that has not joined yet.
    pub fn new(cfg: MembershipConfig, now: Instant) -> Self {
        Self {
            cfg,
            phase: Phase::FindingCoordinator,
            member_id: String::new(),
            generation: -1,
            owned: Partitions::new(),
            rejoin: true,
            coordinator_known: false,
            retry_at: now,
            last_heartbeat_ok: now,
            next_heartbeat: now,
            heartbeat_in_flight: false,
            last_poll: now,
        }
    }

    /// Where the member is.
    pub fn phase(&self) -> Phase {
        self.phase
    }
    /// The member id ("" before the first join).
    pub fn member_id(&self) -> &str {
        &self.member_id
    }
    /// The current generation (-1 before the first join).
    pub fn generation(&self) -> i32 {
        self.generation
    }
    /// The partitions the member owns now.
    pub fn owned(&self) -> &Partitions {
        &self.owned
    }
    /// When the driver should call [`Event::Tick`] next.
    pub fn next_deadline(&self) -> Instant {
        match self.phase {
            Phase::Stable => self
                .next_heartbeat
                .min(self.last_heartbeat_ok + self.cfg.session_timeout)
                .min(self.last_poll + self.cfg.max_poll_interval),
            _ => self.retry_at,
        }
    }

    fn join(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if !self.cfg.cooperative && !self.owned.is_empty() {
            out.push(Action::Revoke(std::mem::take(&mut self.owned)));
        }
        self.rejoin = false;
        if !self.coordinator_known {
            self.phase = Phase::FindingCoordinator;
            out.push(Action::FindCoordinator {
                not_before: self.retry_at.max(now),
            });
            return out;
        }
        self.phase = Phase::Joining;
        out.push(Action::Join {
            member_id: self.member_id.clone(),
            owned: self.owned.clone(),
            generation: self.generation,
        });
        out
    }

    fn lose_all(&mut self) -> Vec<Action> {
        let lost = std::mem::take(&mut self.owned);
        self.member_id.clear();
        self.generation = -1;
        self.rejoin = true;
        if lost.is_empty() {
            Vec::new()
        } else {
            vec![Action::Lose(lost)]
        }
    }

    fn coordinator_lost(&mut self, now: Instant) -> Vec<Action> {
        self.coordinator_known = false;
        self.heartbeat_in_flight = false;
        self.retry_at = now + self.cfg.retry_backoff;
        if self.phase == Phase::Stable && !self.rejoin {
            // Still a member: find the coordinator and go on heartbeating.
            return vec![Action::FindCoordinator {
                not_before: self.retry_at,
            }];
        }
        self.phase = Phase::FindingCoordinator;
        self.rejoin = true;
        vec![Action::FindCoordinator {
            not_before: self.retry_at,
        }]
    }

    /// Takes in an event; returns what to do, in order.
    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        if matches!(self.phase, Phase::Left | Phase::Failed) {
            return Vec::new();
        }
        match event {
            Event::Close => {
                let mut out = Vec::new();
                if !self.owned.is_empty() {
                    out.push(Action::Revoke(std::mem::take(&mut self.owned)));
                }
                // Static members do not leave: a restart within the session
                // timeout keeps the group as it is (KIP-345).
                if self.cfg.instance_id.is_none() && !self.member_id.is_empty() {
                    out.push(Action::Leave);
                }
                self.phase = Phase::Left;
                out
            }
            Event::Polled => {
                self.last_poll = now;
                self.tick(now)
            }
            Event::Tick => self.tick(now),
            Event::CoordinatorFound => {
                self.coordinator_known = true;
                if self.phase == Phase::FindingCoordinator || self.rejoin {
                    self.join(now)
                } else {
                    Vec::new()
                }
            }
            Event::CoordinatorLost => self.coordinator_lost(now),
            Event::SubscriptionChanged => {
                self.rejoin = true;
                self.tick(now)
            }
            Event::Joined {
                code,
                member_id,
                generation,
                leader,
            } => {
                if self.phase != Phase::Joining {
                    return Vec::new();
                }
                match code {
                    ErrorCode::NONE => {
                        self.member_id = member_id;
                        self.generation = generation;
                        self.phase = Phase::Syncing;
                        vec![if leader {
                            Action::ComputePlan
                        } else {
                            Action::Sync
                        }]
                    }
                    ErrorCode::MEMBER_ID_REQUIRED => {
                        self.member_id = member_id;
                        self.join(now)
                    }
                    ErrorCode::UNKNOWN_MEMBER_ID | ErrorCode::ILLEGAL_GENERATION => {
                        let mut out = self.lose_all();
                        out.extend(self.join(now));
                        out
                    }
                    ErrorCode::REBALANCE_IN_PROGRESS => self.join(now),
                    c if c.is_coordinator_error() => self.coordinator_lost(now),
                    c => self.fail(c),
                }
            }
            Event::PlanReady => {
                if self.phase == Phase::Syncing {
                    vec![Action::Sync]
                } else {
                    Vec::new()
                }
            }
            Event::Synced {
                code,
                mut assignment,
            } => {
                if self.phase != Phase::Syncing {
                    return Vec::new();
                }
                // A leader's plan could repeat a partition: own it once.
                assignment.retain(|_, ps| {
                    ps.sort_unstable();
                    ps.dedup();
                    !ps.is_empty()
                });
                match code {
                    ErrorCode::NONE => {
                        let revoked = diff(&self.owned, &assignment);
                        let added = diff(&assignment, &self.owned);
                        let mut out = Vec::new();
                        if !revoked.is_empty() {
                            out.push(Action::Revoke(revoked));
                            // KIP-429: what we gave up can now be assigned to
                            // others in a follow-up rebalance.
                            self.rejoin = true;
                        }
                        out.push(Action::Assign(added));
                        self.owned = assignment;
                        self.phase = Phase::Stable;
                        self.last_heartbeat_ok = now;
                        self.next_heartbeat = now + self.cfg.heartbeat_interval;
                        self.heartbeat_in_flight = false;
                        out
                    }
                    ErrorCode::UNKNOWN_MEMBER_ID | ErrorCode::ILLEGAL_GENERATION => {
                        let mut out = self.lose_all();
                        out.extend(self.join(now));
                        out
                    }
                    ErrorCode::REBALANCE_IN_PROGRESS => self.join(now),
                    c if c.is_coordinator_error() => self.coordinator_lost(now),
                    c => self.fail(c),
                }
            }
            Event::Heartbeat { code } => {
                self.heartbeat_in_flight = false;
                if self.phase != Phase::Stable {
                    return Vec::new();
                }
                match code {
                    ErrorCode::NONE => {
                        self.last_heartbeat_ok = now;
                        self.tick(now)
                    }
                    ErrorCode::REBALANCE_IN_PROGRESS => {
                        self.last_heartbeat_ok = now;
                        self.rejoin = true;
                        self.tick(now)
                    }
                    ErrorCode::UNKNOWN_MEMBER_ID | ErrorCode::ILLEGAL_GENERATION => {
                        let mut out = self.lose_all();
                        out.extend(self.join(now));
                        out
                    }
                    c if c.is_coordinator_error() => self.coordinator_lost(now),
                    c => self.fail(c),
                }
            }
            // Next-generation protocol events do not apply.
            Event::ConsumerHeartbeat { .. } | Event::Reconciled(_) => Vec::new(),
        }
    }

    fn fail(&mut self, code: ErrorCode) -> Vec<Action> {
        self.phase = Phase::Failed;
        let mut out = Vec::new();
        let lost = std::mem::take(&mut self.owned);
        if !lost.is_empty() {
            out.push(Action::Lose(lost));
        }
        out.push(Action::Fail(code));
        out
    }

    fn tick(&mut self, now: Instant) -> Vec<Action> {
        match self.phase {
            Phase::Stable => {
                if now >= self.last_poll + self.cfg.max_poll_interval {
                    // The application stopped polling: leave, as the Java
                    // client does, so the group can move on without us.
                    let mut out = vec![Action::Leave];
                    out.extend(self.lose_all());
                    self.phase = Phase::FindingCoordinator;
                    self.last_poll = now;
                    return out;
                }
                if now >= self.last_heartbeat_ok + self.cfg.session_timeout {
                    let mut out = self.lose_all();
                    out.extend(self.join(now));
                    return out;
                }
                if self.rejoin {
                    return self.join(now);
                }
                if !self.coordinator_known {
                    return Vec::new();
                }
                if now >= self.next_heartbeat && !self.heartbeat_in_flight {
                    self.heartbeat_in_flight = true;
                    self.next_heartbeat = now + self.cfg.heartbeat_interval;
                    return vec![Action::Heartbeat];
                }
                Vec::new()
            }
            Phase::FindingCoordinator if now >= self.retry_at && !self.coordinator_known => {
                self.retry_at = now + self.cfg.retry_backoff;
                vec![Action::FindCoordinator { not_before: now }]
            }
            Phase::FindingCoordinator if self.coordinator_known => self.join(now),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg(cooperative: bool, instance: Option<&str>) -> MembershipConfig {
        MembershipConfig {
            session_timeout: Duration::from_secs(45),
            heartbeat_interval: Duration::from_secs(3),
            max_poll_interval: Duration::from_secs(300),
            retry_backoff: Duration::from_millis(100),
            instance_id: instance.map(str::to_owned),
            cooperative,
        }
    }

    fn parts(ps: &[(&str, &[i32])]) -> Partitions {
        ps.iter()
            .map(|(t, p)| ((*t).to_owned(), p.to_vec()))
            .collect()
    }

    fn joined(code: ErrorCode, id: &str, generation: i32, leader: bool) -> Event {
        Event::Joined {
            code,
            member_id: id.to_owned(),
            generation,
            leader,
        }
    }

    /// Drives a member to Stable with `assignment`.
    fn stable(
        m: &mut Membership,
        now: Instant,
        generation: i32,
        assignment: Partitions,
    ) -> Vec<Action> {
        let mut acts = m.handle(now, Event::Tick);
        acts.extend(m.handle(now, Event::CoordinatorFound));
        acts.extend(m.handle(now, joined(ErrorCode::NONE, "m1", generation, false)));
        acts.extend(m.handle(
            now,
            Event::Synced {
                code: ErrorCode::NONE,
                assignment,
            },
        ));
        acts
    }

    #[test]
    fn first_join_with_member_id_required() {
        let t0 = Instant::now();
        let mut m = Membership::new(cfg(false, None), t0);
        assert!(matches!(
            m.handle(t0, Event::Tick)[..],
            [Action::FindCoordinator { .. }]
        ));
        let a = m.handle(t0, Event::CoordinatorFound);
        assert!(matches!(&a[..], [Action::Join { member_id, .. }] if member_id.is_empty()));
        let a = m.handle(t0, joined(ErrorCode::MEMBER_ID_REQUIRED, "m-42", -1, false));
        assert!(matches!(&a[..], [Action::Join { member_id, .. }] if member_id == "m-42"));
        let a = m.handle(t0, joined(ErrorCode::NONE, "m-42", 1, true));
        assert_eq!(a, [Action::ComputePlan]);
        assert_eq!(m.handle(t0, Event::PlanReady), [Action::Sync]);
        let a = m.handle(
            t0,
            Event::Synced {
                code: ErrorCode::NONE,
                assignment: parts(&[("t", &[0, 1])]),
            },
        );
        assert_eq!(a, [Action::Assign(parts(&[("t", &[0, 1])]))]);
        assert_eq!(m.phase(), Phase::Stable);
        assert_eq!(m.generation(), 1);
    }

    #[test]
    fn heartbeats_run_on_the_interval() {
        let t0 = Instant::now();
        let mut m = Membership::new(cfg(false, None), t0);
        stable(&mut m, t0, 1, parts(&[("t", &[0])]));
        assert!(m
            .handle(t0 + Duration::from_secs(1), Event::Tick)
            .is_empty());
        let t3 = t0 + Duration::from_secs(3);
        assert_eq!(m.handle(t3, Event::Tick), [Action::Heartbeat]);
        assert!(
            m.handle(t3, Event::Tick).is_empty(),
            "one in flight at a time"
        );
        assert!(m
            .handle(
                t3,
                Event::Heartbeat {
                    code: ErrorCode::NONE
                }
            )
            .is_empty());
        assert_eq!(m.next_deadline(), t0 + Duration::from_secs(6));
    }

    #[test]
    fn eager_rebalance_revokes_everything_first() {
        let t0 = Instant::now();
        let mut m = Membership::new(cfg(false, None), t0);
        stable(&mut m, t0, 1, parts(&[("t", &[0, 1])]));
        let a = m.handle(
            t0,
            Event::Heartbeat {
                code: ErrorCode::REBALANCE_IN_PROGRESS,
            },
        );
        assert_eq!(a[0], Action::Revoke(parts(&[("t", &[0, 1])])));
        assert!(matches!(&a[1], Action::Join { owned, .. } if owned.is_empty()));
    }

    #[test]
    fn cooperative_rebalance_revokes_only_what_moves_then_rejoins() {
        let t0 = Instant::now();
        let mut m = Membership::new(cfg(true, None), t0);
        stable(&mut m, t0, 1, parts(&[("t", &[0, 1, 2])]));
        let a = m.handle(
            t0,
            Event::Heartbeat {
                code: ErrorCode::REBALANCE_IN_PROGRESS,
            },
        );
        assert!(
            matches!(&a[..], [Action::Join { owned, generation: 1, .. }] if owned == &parts(&[("t", &[0, 1, 2])]))
        );
        m.handle(t0, joined(ErrorCode::NONE, "m1", 2, false));
        let a = m.handle(
            t0,
            Event::Synced {
                code: ErrorCode::NONE,
                assignment: parts(&[("t", &[0, 1])]),
            },
        );
        assert_eq!(
            a,
            [
                Action::Revoke(parts(&[("t", &[2])])),
                Action::Assign(Partitions::new())
            ]
        );
        // The follow-up rebalance starts on the next tick.
        assert!(matches!(
            m.handle(t0, Event::Tick)[..],
            [Action::Join { .. }]
        ));
    }

    #[test]
    fn fenced_generation_loses_partitions_without_commit() {
        let t0 = Instant::now();
        let mut m = Membership::new(cfg(true, None), t0);
        stable(&mut m, t0, 1, parts(&[("t", &[0])]));
        let a = m.handle(
            t0,
            Event::Heartbeat {
                code: ErrorCode::ILLEGAL_GENERATION,
            },
        );
        assert_eq!(a[0], Action::Lose(parts(&[("t", &[0])])));
        assert!(matches!(&a[1], Action::Join { member_id, .. } if member_id.is_empty()));
    }

    #[test]
    fn fenced_instance_is_fatal_and_static_members_do_not_leave() {
        let t0 = Instant::now();
        let mut m = Membership::new(cfg(false, Some("i1")), t0);
        stable(&mut m, t0, 1, parts(&[("t", &[0])]));
        let a = m.handle(
            t0,
            Event::Heartbeat {
                code: ErrorCode::FENCED_INSTANCE_ID,
            },
        );
        assert_eq!(
            a,
            [
                Action::Lose(parts(&[("t", &[0])])),
                Action::Fail(ErrorCode::FENCED_INSTANCE_ID)
            ]
        );
        let mut s = Membership::new(cfg(false, Some("i1")), t0);
        stable(&mut s, t0, 1, parts(&[("t", &[0])]));
        assert_eq!(
            s.handle(t0, Event::Close),
            [Action::Revoke(parts(&[("t", &[0])]))]
        );
        let mut d = Membership::new(cfg(false, None), t0);
        stable(&mut d, t0, 1, parts(&[("t", &[0])]));
        assert_eq!(
            d.handle(t0, Event::Close),
            [Action::Revoke(parts(&[("t", &[0])])), Action::Leave]
        );
    }

    #[test]
    fn coordinator_moves_keep_the_membership() {
        let t0 = Instant::now();
        let mut m = Membership::new(cfg(false, None), t0);
        stable(&mut m, t0, 1, parts(&[("t", &[0])]));
        let a = m.handle(
            t0,
            Event::Heartbeat {
                code: ErrorCode::NOT_COORDINATOR,
            },
        );
        assert!(matches!(a[..], [Action::FindCoordinator { .. }]));
        assert!(m.handle(t0, Event::CoordinatorFound).is_empty());
        assert_eq!(m.owned(), &parts(&[("t", &[0])]));
        assert_eq!(
            m.handle(t0 + Duration::from_secs(3), Event::Tick),
            [Action::Heartbeat]
        );
    }

    #[test]
    fn session_and_poll_timeouts() {
        let t0 = Instant::now();
        let mut m = Membership::new(cfg(false, None), t0);
        stable(&mut m, t0, 1, parts(&[("t", &[0])]));
        // Heartbeats keep failing to arrive: after the session timeout the
        // partitions are lost.
        let late = t0 + Duration::from_secs(46);
        m.handle(t0 + Duration::from_secs(40), Event::Polled);
        let a = m.handle(late, Event::Tick);
        assert_eq!(a[0], Action::Lose(parts(&[("t", &[0])])));

        let mut m = Membership::new(cfg(false, None), t0);
        stable(&mut m, t0, 1, parts(&[("t", &[0])]));
        let mut now = t0;
        // Heartbeats succeed but nobody polls for 300 s.
        while now + Duration::from_secs(3) < t0 + Duration::from_secs(300) {
            now += Duration::from_secs(3);
            for a in m.handle(now, Event::Tick) {
                if a == Action::Heartbeat {
                    m.handle(
                        now,
                        Event::Heartbeat {
                            code: ErrorCode::NONE,
                        },
                    );
                }
            }
        }
        let a = m.handle(t0 + Duration::from_secs(301), Event::Tick);
        assert_eq!(a[0], Action::Leave);
        assert_eq!(a[1], Action::Lose(parts(&[("t", &[0])])));
    }

    proptest! {
        /// Whatever the broker answers, the member never reports owning a
        /// partition it was not assigned in its current generation, never
        /// assigns a partition it already owns, and every partition it
        /// stops owning is reported as revoked or lost exactly once.
        #[test]
        fn ownership_is_accounted_for(steps in proptest::collection::vec((0u8..8, 0u8..4, proptest::collection::vec(0i32..6, 0..4)), 1..60), cooperative: bool) {
            let t0 = Instant::now();
            let mut m = Membership::new(cfg(cooperative, None), t0);
            let mut believed = std::collections::BTreeSet::new();
            let mut now = t0;
            let mut generation = 0;
            for (kind, code, assignment) in steps {
                now += Duration::from_millis(500);
                let code = [ErrorCode::NONE, ErrorCode::REBALANCE_IN_PROGRESS, ErrorCode::ILLEGAL_GENERATION, ErrorCode::NOT_COORDINATOR][code as usize];
                let event = match kind {
                    0 => Event::Tick,
                    1 => Event::Polled,
                    2 => Event::CoordinatorFound,
                    3 => { generation += 1; Event::Joined { code, member_id: "m".into(), generation, leader: false } }
                    4 => Event::Synced { code, assignment: parts(&[("t", &assignment)]) },
                    5 => Event::Heartbeat { code },
                    6 => Event::CoordinatorLost,
                    _ => Event::PlanReady,
                };
                for a in m.handle(now, event) {
                    match a {
                        Action::Assign(ps) => for p in ps.get("t").into_iter().flatten() {
                            prop_assert!(believed.insert(*p), "assigned {} twice", p);
                        },
                        Action::Revoke(ps) | Action::Lose(ps) => for p in ps.get("t").into_iter().flatten() {
                            prop_assert!(believed.remove(p), "gave up {} it did not own", p);
                        },
                        _ => {}
                    }
                }
                let owned: std::collections::BTreeSet<i32> = m.owned().get("t").into_iter().flatten().copied().collect();
                prop_assert_eq!(&owned, &believed);
            }
        }
    }
}

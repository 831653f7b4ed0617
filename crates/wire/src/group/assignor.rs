//! Partition assignors, as the group leader runs them: `range`,
//! `roundrobin`, `sticky` and `cooperative-sticky` (KIP-54, KIP-429), named
//! and behaving as the Java client's so that mixed groups agree.
//!
//! Pure functions from the members' subscriptions and the topics' partition
//! counts to each member's partitions.

use std::collections::{BTreeMap, BTreeSet};

use super::protocol::Subscription;

/// Topic name to partition count, for the topics the members subscribe to.
pub type TopicCounts = BTreeMap<String, i32>;
/// Member id to its partitions, by topic.
pub type Plan = BTreeMap<String, BTreeMap<String, Vec<i32>>>;

/// One group member as the assignor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The member id.
    pub id: String,
    /// `group.instance.id`, for static members (KIP-345): assignors order
    /// members by it when present, so a restarted static member keeps its
    /// place.
    pub instance_id: Option<String>,
    /// Its subscription.
    pub subscription: Subscription,
}

impl Member {
    fn sort_key(&self) -> (&str, &str) {
        (self.instance_id.as_deref().unwrap_or(&self.id), &self.id)
    }
}

/// Which assignor, by its protocol name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignor {
    /// `range`: per topic, consecutive partitions per member.
    Range,
    /// `roundrobin`: all partitions dealt out in turn.
    RoundRobin,
    /// `sticky`: balanced, keeping owned partitions (eager protocol).
    Sticky,
    /// `cooperative-sticky`: like sticky, but a partition changing owner is
    /// first only revoked, and assigned in the follow-up rebalance.
    CooperativeSticky,
}

impl Assignor {
    /// The protocol name (`partition.assignment.strategy` short name).
    pub fn name(self) -> &'static str {
        match self {
            Self::Range => "range",
            Self::RoundRobin => "roundrobin",
            Self::Sticky => "sticky",
            Self::CooperativeSticky => "cooperative-sticky",
        }
    }

    /// The assignor with this protocol name or Java class name.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name.rsplit('.').next().unwrap_or(name) {
            "range" | "RangeAssignor" => Self::Range,
            "roundrobin" | "RoundRobinAssignor" => Self::RoundRobin,
            "sticky" | "StickyAssignor" => Self::Sticky,
            "cooperative-sticky" | "CooperativeStickyAssignor" => Self::CooperativeSticky,
            _ => return None,
        })
    }

    /// Whether the assignor supports the cooperative protocol (KIP-429).
    pub fn is_cooperative(self) -> bool {
        self == Self::CooperativeSticky
    }

    /// Assigns `topics`' partitions to `members`. Every member appears in the
    /// result, possibly with nothing.
    pub fn assign(self, topics: &TopicCounts, members: &[Member]) -> Plan {
        let mut sorted: Vec<&Member> = members.iter().collect();
        sorted.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        let mut plan: Plan = members
            .iter()
            .map(|m| (m.id.clone(), BTreeMap::new()))
            .collect();
        match self {
            Self::Range => range(topics, &sorted, &mut plan),
            Self::RoundRobin => round_robin(topics, &sorted, &mut plan),
            Self::Sticky => sticky(topics, &sorted, &mut plan, false),
            Self::CooperativeSticky => sticky(topics, &sorted, &mut plan, true),
        }
        for parts in plan.values_mut() {
            parts.retain(|_, ps| {
                ps.sort_unstable();
                !ps.is_empty()
            });
        }
        plan
    }
}

fn subscribes(m: &Member, topic: &str) -> bool {
    m.subscription.topics.iter().any(|t| t == topic)
}

fn give(plan: &mut Plan, member: &str, topic: &str, p: i32) {
    if let Some(m) = plan.get_mut(member) {
        m.entry(topic.to_owned()).or_default().push(p);
    }
}

fn range(topics: &TopicCounts, members: &[&Member], plan: &mut Plan) {
    for (topic, &count) in topics {
        let subs: Vec<&&Member> = members.iter().filter(|m| subscribes(m, topic)).collect();
        if subs.is_empty() || count <= 0 {
            continue;
        }
        let per = count as usize / subs.len();
        let extra = count as usize % subs.len();
        for (i, m) in subs.iter().enumerate() {
            let start = i * per + i.min(extra);
            let len = per + usize::from(i < extra);
            for p in start..start + len {
                give(plan, &m.id, topic, p as i32);
            }
        }
    }
}

fn round_robin(topics: &TopicCounts, members: &[&Member], plan: &mut Plan) {
    if members.is_empty() {
        return;
    }
    let mut next = 0usize;
    for (topic, &count) in topics {
        for p in 0..count.max(0) {
            // The next member in the circle that subscribes to this topic.
            for step in 0..members.len() {
                let m = members[(next + step) % members.len()];
                if subscribes(m, topic) {
                    give(plan, &m.id, topic, p);
                    next = (next + step + 1) % members.len();
                    break;
                }
            }
        }
    }
}

/// Balanced and sticky: members keep what they owned up to their fair share;
/// the rest is dealt to the least-loaded eligible members.
fn sticky(topics: &TopicCounts, members: &[&Member], plan: &mut Plan, cooperative: bool) {
    let all: BTreeSet<(String, i32)> = topics
        .iter()
        .flat_map(|(t, &n)| (0..n.max(0)).map(move |p| (t.clone(), p)))
        .collect();
    // Previous owners; a partition claimed twice goes to the higher
    // generation (the other claim is stale).
    let mut owner: BTreeMap<(String, i32), (&str, i32)> = BTreeMap::new();
    for m in members {
        for (t, ps) in &m.subscription.owned {
            for &p in ps {
                let key = (t.clone(), p);
                if !all.contains(&key) || !subscribes(m, t) {
                    continue;
                }
                let g = m.subscription.generation;
                match owner.get(&key) {
                    Some(&(_, og)) if og >= g => {}
                    _ => {
                        owner.insert(key, (&m.id, g));
                    }
                }
            }
        }
    }
    let eligible = |tp: &(String, i32)| -> Vec<&str> {
        members
            .iter()
            .filter(|m| subscribes(m, &tp.0))
            .map(|m| m.id.as_str())
            .collect()
    };
    // Fair share over members that can take anything.
    let takers = members
        .iter()
        .filter(|m| !m.subscription.topics.is_empty())
        .count()
        .max(1);
    let max_quota = all.len().div_ceil(takers);
    let mut load: BTreeMap<&str, Vec<(String, i32)>> = members
        .iter()
        .map(|m| (m.id.as_str(), Vec::new()))
        .collect();
    // 1. Keep owned partitions up to the quota, in partition order.
    for (tp, (m, _)) in &owner {
        if let Some(l) = load.get_mut(m) {
            if l.len() < max_quota {
                l.push(tp.clone());
            }
        }
    }
    let assigned: BTreeSet<(String, i32)> = load.values().flatten().cloned().collect();
    // 2. Deal the rest to the least-loaded eligible member.
    for tp in all.iter().filter(|tp| !assigned.contains(*tp)) {
        let best = eligible(tp)
            .into_iter()
            .min_by_key(|m| (load.get(m).map_or(usize::MAX, Vec::len), *m));
        if let Some(m) = best {
            if let Some(l) = load.get_mut(m) {
                l.push(tp.clone());
            }
        }
    }
    // 3. Even out: move from the most to the least loaded while they differ
    //    by more than one and the receiver can take the partition.
    loop {
        let (most, least) = match (
            load.iter()
                .max_by_key(|(m, l)| (l.len(), std::cmp::Reverse(**m))),
            load.iter().min_by_key(|(m, l)| (l.len(), **m)),
        ) {
            (Some((a, la)), Some((b, lb))) if la.len() > lb.len() + 1 => (*a, *b),
            _ => break,
        };
        let movable = load[most]
            .iter()
            .rposition(|tp| eligible(tp).contains(&least));
        let Some(i) = movable else { break };
        let tp = load.get_mut(most).map(|l| l.remove(i));
        if let (Some(tp), Some(l)) = (tp, load.get_mut(least)) {
            l.push(tp);
        }
    }
    for (m, tps) in load {
        for (t, p) in tps {
            // Cooperative (KIP-429): a partition that another member still
            // owns is not handed over in this round; its owner revokes it,
            // and the follow-up rebalance assigns it.
            if cooperative {
                if let Some((prev, _)) = owner.get(&(t.clone(), p)) {
                    if *prev != m {
                        continue;
                    }
                }
            }
            give(plan, m, &t, p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn member(id: &str, topics: &[&str], owned: &[(&str, &[i32])], generation: i32) -> Member {
        Member {
            id: id.to_owned(),
            instance_id: None,
            subscription: Subscription {
                topics: topics.iter().map(|t| (*t).to_owned()).collect(),
                owned: owned
                    .iter()
                    .map(|(t, ps)| ((*t).to_owned(), ps.to_vec()))
                    .collect(),
                generation,
                ..Subscription::default()
            },
        }
    }

    fn parts(plan: &Plan, m: &str, t: &str) -> Vec<i32> {
        plan[m].get(t).cloned().unwrap_or_default()
    }

    #[test]
    fn range_matches_the_java_client() {
        // Java: 2 consumers, topics t0 and t1 with 3 partitions each:
        // C0: [t0p0, t0p1, t1p0, t1p1], C1: [t0p2, t1p2].
        let topics = TopicCounts::from([("t0".into(), 3), ("t1".into(), 3)]);
        let ms = [
            member("c0", &["t0", "t1"], &[], -1),
            member("c1", &["t0", "t1"], &[], -1),
        ];
        let plan = Assignor::Range.assign(&topics, &ms);
        assert_eq!(parts(&plan, "c0", "t0"), [0, 1]);
        assert_eq!(parts(&plan, "c0", "t1"), [0, 1]);
        assert_eq!(parts(&plan, "c1", "t0"), [2]);
        assert_eq!(parts(&plan, "c1", "t1"), [2]);
    }

    #[test]
    fn roundrobin_matches_the_java_client() {
        // Java: C0: [t0p0, t0p2, t1p1], C1: [t0p1, t1p0, t1p2].
        let topics = TopicCounts::from([("t0".into(), 3), ("t1".into(), 3)]);
        let ms = [
            member("c0", &["t0", "t1"], &[], -1),
            member("c1", &["t0", "t1"], &[], -1),
        ];
        let plan = Assignor::RoundRobin.assign(&topics, &ms);
        assert_eq!(parts(&plan, "c0", "t0"), [0, 2]);
        assert_eq!(parts(&plan, "c0", "t1"), [1]);
        assert_eq!(parts(&plan, "c1", "t0"), [1]);
        assert_eq!(parts(&plan, "c1", "t1"), [0, 2]);
    }

    #[test]
    fn cooperative_sticky_keeps_owners_and_defers_moves() {
        let topics = TopicCounts::from([("t".into(), 6)]);
        // c0 owned everything; c1 joins.
        let ms = [
            member("c0", &["t"], &[("t", &[0, 1, 2, 3, 4, 5])], 1),
            member("c1", &["t"], &[], -1),
        ];
        let plan = Assignor::CooperativeSticky.assign(&topics, &ms);
        // First round: c0 keeps its share, gives nothing to c1 yet.
        assert_eq!(parts(&plan, "c0", "t"), [0, 1, 2]);
        assert!(parts(&plan, "c1", "t").is_empty());
        // Follow-up round: c0 now owns 0..3; c1 gets the rest.
        let ms = [
            member("c0", &["t"], &[("t", &[0, 1, 2])], 2),
            member("c1", &["t"], &[], 2),
        ];
        let plan = Assignor::CooperativeSticky.assign(&topics, &ms);
        assert_eq!(parts(&plan, "c0", "t"), [0, 1, 2]);
        assert_eq!(parts(&plan, "c1", "t"), [3, 4, 5]);
    }

    #[test]
    fn stale_claims_lose_to_the_newer_generation() {
        let topics = TopicCounts::from([("t".into(), 2)]);
        let ms = [
            member("old", &["t"], &[("t", &[0, 1])], 3),
            member("new", &["t"], &[("t", &[0])], 5),
        ];
        let plan = Assignor::Sticky.assign(&topics, &ms);
        assert_eq!(parts(&plan, "new", "t"), [0]);
        assert_eq!(parts(&plan, "old", "t"), [1]);
    }

    #[test]
    fn names_round_trip() {
        for a in [
            Assignor::Range,
            Assignor::RoundRobin,
            Assignor::Sticky,
            Assignor::CooperativeSticky,
        ] {
            assert_eq!(Assignor::from_name(a.name()), Some(a));
        }
        assert_eq!(
            Assignor::from_name("org.apache.kafka.clients.consumer.CooperativeStickyAssignor"),
            Some(Assignor::CooperativeSticky)
        );
        assert_eq!(Assignor::from_name("uniform"), None);
    }

    fn arb_group() -> impl Strategy<Value = (TopicCounts, Vec<Member>)> {
        (1usize..6, 1i32..13, any::<u64>()).prop_map(|(n, parts, seed)| {
            let topics = TopicCounts::from([("a".into(), parts), ("b".into(), (parts / 2).max(1))]);
            let mut s = seed;
            let mut next = || {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                s >> 33
            };
            let members = (0..n)
                .map(|i| {
                    let mut owned: BTreeMap<String, Vec<i32>> = BTreeMap::new();
                    for (t, &c) in &topics {
                        for p in 0..c {
                            if next() % (n as u64 + 1) == 0 {
                                owned.entry(t.clone()).or_default().push(p);
                            }
                        }
                    }
                    Member {
                        id: format!("m{i}"),
                        instance_id: None,
                        subscription: Subscription {
                            topics: vec!["a".into(), "b".into()],
                            owned,
                            generation: (next() % 3) as i32,
                            ..Subscription::default()
                        },
                    }
                })
                .collect();
            (topics, members)
        })
    }

    fn owners(plan: &Plan) -> BTreeMap<(String, i32), Vec<String>> {
        let mut o: BTreeMap<(String, i32), Vec<String>> = BTreeMap::new();
        for (m, tps) in plan {
            for (t, ps) in tps {
                for p in ps {
                    o.entry((t.clone(), *p)).or_default().push(m.clone());
                }
            }
        }
        o
    }

    proptest! {
        /// Eager assignors give every partition to exactly one member, and
        /// the balanced ones keep loads within one of each other.
        #[test]
        fn eager_assignors_cover_everything_once((topics, members) in arb_group()) {
            let total: i32 = topics.values().sum();
            for a in [Assignor::Range, Assignor::RoundRobin, Assignor::Sticky] {
                let plan = a.assign(&topics, &members);
                let o = owners(&plan);
                prop_assert_eq!(o.len() as i32, total, "{} covers all", a.name());
                prop_assert!(o.values().all(|ms| ms.len() == 1), "{} assigns once", a.name());
                if a != Assignor::Range {
                    let loads: Vec<usize> = plan.values().map(|t| t.values().map(Vec::len).sum()).collect();
                    let (lo, hi) = (loads.iter().min().copied().unwrap_or(0), loads.iter().max().copied().unwrap_or(0));
                    prop_assert!(hi - lo <= 1, "{} balanced: {:?}", a.name(), loads);
                }
            }
        }

        /// Cooperative-sticky never assigns a partition to a member while
        /// another member still owns it, and after the follow-up rebalance
        /// (owners revoked what they lost) everything is assigned.
        #[test]
        fn cooperative_rounds_never_double_own((topics, members) in arb_group()) {
            let plan = Assignor::CooperativeSticky.assign(&topics, &members);
            let o = owners(&plan);
            prop_assert!(o.values().all(|ms| ms.len() == 1));
            for (tp, ms) in &o {
                let prev: Vec<&Member> = members
                    .iter()
                    .filter(|m| m.subscription.owned.get(&tp.0).is_some_and(|ps| ps.contains(&tp.1)))
                    .collect();
                if let Some(max_gen) = prev.iter().map(|m| m.subscription.generation).max() {
                    let holders: Vec<&str> = prev
                        .iter()
                        .filter(|m| m.subscription.generation == max_gen)
                        .map(|m| m.id.as_str())
                        .collect();
                    prop_assert!(holders.contains(&ms[0].as_str()) || holders.len() > 1,
                        "{:?} went to {} while owned by {:?}", tp, ms[0], holders);
                }
            }
            // Round two: members own exactly round one's plan.
            let round2: Vec<Member> = members
                .iter()
                .map(|m| {
                    let mut m = m.clone();
                    m.subscription.owned = plan[&m.id].clone();
                    m.subscription.generation = 10;
                    m
                })
                .collect();
            let plan2 = Assignor::CooperativeSticky.assign(&topics, &round2);
            let o2 = owners(&plan2);
            let total: i32 = topics.values().sum();
            prop_assert_eq!(o2.len() as i32, total);
            prop_assert!(o2.values().all(|ms| ms.len() == 1));
        }
    }
}

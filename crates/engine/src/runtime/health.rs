//! When to say the cluster is unreachable: pure, fed the process's count of
//! broker answers and the time.
//!
//! A worker hears from its brokers several times a second when all is
//! well (fetches return after `fetch.max.wait.ms` even when empty; the group
//! heartbeats every few seconds), so no answer at all for
//! [`SILENT_AFTER`] means the cluster is gone or frozen. The worker then
//! warns every [`WARN_EVERY`] until an answer comes.

use std::time::{Duration, Instant};

/// No answer for this long: the cluster is unreachable.
pub(crate) const SILENT_AFTER: Duration = Duration::from_secs(5);

/// While it stays unreachable, a warning this often.
pub(crate) const WARN_EVERY: Duration = Duration::from_secs(5);

/// Tracks the last time the count of broker answers moved.
#[derive(Debug)]
pub(crate) struct Silence {
    answers: u64,
    since: Instant,
    warned: Option<Instant>,
}

impl Silence {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            answers: 0,
            since: now,
            warned: None,
        }
    }

    /// Feeds the current count of answers; returns how long the cluster has
    /// been silent when a warning is due.
    pub(crate) fn observe(&mut self, answers: u64, now: Instant) -> Option<Duration> {
        if answers != self.answers {
            self.answers = answers;
            self.since = now;
            self.warned = None;
            return None;
        }
        let silent = now.saturating_duration_since(self.since);
        if silent < SILENT_AFTER {
            return None;
        }
        if self
            .warned
            .is_some_and(|w| now.saturating_duration_since(w) < WARN_EVERY)
        {
            return None;
        }
        self.warned = Some(now);
        Some(silent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_after_five_silent_seconds_then_every_five_until_an_answer() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut s = Silence::new(t0);
        assert_eq!(s.observe(10, at(0)), None, "answers moved");
        assert_eq!(s.observe(10, at(4_900)), None, "not silent long enough");
        assert_eq!(s.observe(10, at(5_000)), Some(Duration::from_secs(5)));
        assert_eq!(s.observe(10, at(7_000)), None, "warned 2 s ago");
        assert_eq!(s.observe(10, at(10_000)), Some(Duration::from_secs(10)));
        // An answer: quiet again, and the clock restarts.
        assert_eq!(s.observe(11, at(10_500)), None);
        assert_eq!(s.observe(11, at(15_000)), None);
        assert_eq!(s.observe(11, at(15_500)), Some(Duration::from_secs(5)));
    }

    #[test]
    fn a_busy_cluster_never_warns() {
        let t0 = Instant::now();
        let mut s = Silence::new(t0);
        for i in 0..1_000u64 {
            assert_eq!(s.observe(i, t0 + Duration::from_millis(i * 500)), None);
        }
    }
}

//! Window arithmetic, pure: which windows a timestamp falls in, when a
//! window closes, how sessions merge, and how windowed entries are keyed in
//! a store. Kafka Streams' semantics (KIP-328 grace, KIP-450 sliding
//! windows, KIP-825 emit on close); Faust's names.
//!
//! - **Tumbling** and **hopping** windows (`TimeWindows`) are `[start, end)`
//!   with `end = start + size`, their starts multiples of `advance` counted
//!   from the epoch, never negative: a timestamp `t` falls in every window
//!   whose start is in `(t - size, t]`, so in `size / advance` of them once
//!   `t` is past the first window (tumbling: `advance = size`, one).
//! - **Sliding** windows (KIP-450) are `[t - diff, t]`, both inclusive:
//!   one ends at each record, and one starts just after each record that a
//!   later record follows within `diff`; records within `diff` of the epoch
//!   share `[0, diff]`.
//! - **Session** windows are `[first, last]`, both inclusive: a record at
//!   `t` joins every session of its key that ends at or after `t - gap` and
//!   starts at or before `t + gap`; they merge into one.
//! - A window is **closed** once the stream time (the largest timestamp the
//!   partition has seen) passes its end by the grace period: for `[start,
//!   end)` windows when `end + grace <= stream time`, for inclusive ends when
//!   `end + grace < stream time`. A record for a closed window is dropped.

use std::cmp::Ordering;
use std::time::Duration;

/// Which kind of window a table has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// `[start, end)`, back to back (`TimeWindows` with advance = size).
    Tumbling,
    /// `[start, end)`, overlapping: a new one every `advance`.
    Hopping,
    /// `[t - diff, t]`, one ending at each record and one starting just
    /// after it (KIP-450 `SlidingWindows`).
    Sliding,
    /// `[first, last]`: a key's records less than a gap apart
    /// (`SessionWindows`).
    Session,
}

/// How a table's keys are windowed: the kind of window, a grace period (how
/// late a record may be and still count), a retention (`expires`: how long
/// a window is kept, counted from its start, or from its end for sessions;
/// at least until it closes, so a window is never dropped before it
/// closes), and how windows close (by stream time, or also by the wall
/// clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    kind: WindowKind,
    /// Tumbling and hopping: the size; sliding: the time difference;
    /// sessions: the inactivity gap.
    size: i64,
    advance: i64,
    grace: i64,
    expires: Option<i64>,
    wall_clock: bool,
    notify_close: bool,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl WindowSpec {
    fn new(kind: WindowKind, size: i64, advance: i64) -> Self {
        Self {
            kind,
            size,
            advance,
            grace: 0,
            expires: None,
            wall_clock: false,
            notify_close: false,
        }
    }
    /// Tumbling windows of `size` (at least 1 ms).
    pub fn tumbling(size: Duration) -> Self {
        let size = millis(size).max(1);
        Self::new(WindowKind::Tumbling, size, size)
    }
    /// Hopping windows of `size` starting every `advance` (at least 1 ms,
    /// at most `size`).
    pub fn hopping(size: Duration, advance: Duration) -> Self {
        let size = millis(size).max(1);
        Self::new(WindowKind::Hopping, size, millis(advance).clamp(1, size))
    }
    /// Sliding windows (KIP-450) of `diff`: two records fall in one window
    /// when at most `diff` apart.
    pub fn sliding(diff: Duration) -> Self {
        Self::new(WindowKind::Sliding, millis(diff), 0)
    }
    /// Session windows: a key's records closer than `gap` to each other
    /// form one session `[first, last]`.
    pub fn session(gap: Duration) -> Self {
        Self::new(WindowKind::Session, millis(gap), 0)
    }
    /// The kind of window.
    pub fn kind(&self) -> WindowKind {
        self.kind
    }
    /// The inactivity gap of session windows (`None` for others).
    pub fn gap(&self) -> Option<i64> {
        (self.kind == WindowKind::Session).then_some(self.size)
    }
    /// The time difference of sliding windows (`None` for others).
    pub fn diff(&self) -> Option<i64> {
        (self.kind == WindowKind::Sliding).then_some(self.size)
    }
    /// Whether windows end inclusively (sliding, session).
    pub fn inclusive(&self) -> bool {
        matches!(self.kind, WindowKind::Sliding | WindowKind::Session)
    }
    /// How late (in stream time) a record may be and still count.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = millis(grace);
        self
    }
    /// How long after its start a window is kept (at least until it
    /// closes).
    pub fn expires(mut self, expires: Duration) -> Self {
        self.expires = Some(millis(expires));
        self
    }
    /// Windows also close when the wall clock passes their end plus grace
    /// (Faust's behaviour), not only when the stream time does.
    pub fn close_by_wall_clock(mut self) -> Self {
        self.wall_clock = true;
        self
    }
    /// Whether windows also close by the wall clock.
    pub fn closes_by_wall_clock(&self) -> bool {
        self.wall_clock
    }
    /// Someone wants to hear of each window's close (final emission, a
    /// close callback): closes are tracked and persisted.
    pub(crate) fn notifying_close(mut self, on: bool) -> Self {
        self.notify_close = on;
        self
    }
    /// Whether closes are tracked.
    pub fn notifies_close(&self) -> bool {
        self.notify_close
    }
    /// The window size, ms (the time difference for sliding windows, the
    /// gap for sessions).
    pub fn size(&self) -> i64 {
        self.size
    }
    /// The advance, ms (the size for tumbling windows; 0 for sliding and
    /// session windows).
    pub fn advance(&self) -> i64 {
        self.advance
    }
    /// The grace period, ms.
    pub fn grace_ms(&self) -> i64 {
        self.grace
    }
    /// The retention, ms: as set, but never less than it takes the window
    /// to close (size + grace; one more for inclusive ends). Sliding
    /// windows are kept as long as a record that still counts may need
    /// them to start its own windows from: 3 × diff + grace + 1.
    pub fn retention(&self) -> i64 {
        let extent = if self.kind == WindowKind::Sliding {
            self.size.saturating_mul(3)
        } else {
            self.size
        };
        let least = extent
            .saturating_add(self.grace)
            .saturating_add(i64::from(self.inclusive()));
        self.expires.map_or(least, |e| e.max(least))
    }
    /// When, in stream time, `w` has outlived its retention: counted from
    /// its start, or from its end for sessions (which grow).
    pub fn expires_at(&self, w: Window) -> i64 {
        let from = if self.kind == WindowKind::Session {
            w.end
        } else {
            w.start
        };
        from.saturating_add(self.retention())
    }
    /// The stream time at which `w` closes: `end + grace` for `[start,
    /// end)` windows, one later for inclusive ends.
    pub fn closes_at(&self, w: Window) -> i64 {
        w.end
            .saturating_add(self.grace)
            .saturating_add(i64::from(self.inclusive()))
    }
    /// The windows that hold `ts`, earliest first: for sliding windows the
    /// one ending at `ts` (`[0, diff]` for records within `diff` of the
    /// epoch); none for sessions (they depend on the data).
    pub fn windows_for(&self, ts: i64) -> impl Iterator<Item = Window> {
        let (size, advance) = match self.kind {
            WindowKind::Tumbling | WindowKind::Hopping => (self.size, self.advance),
            _ => (0, 0),
        };
        let left = (self.kind == WindowKind::Sliding && ts >= 0)
            .then(|| sliding_left_window(ts, self.size));
        time_windows(ts, size, advance).chain(left)
    }
    /// Whether `w` is closed at `stream_time`: records for it are dropped.
    pub fn is_closed(&self, w: Window, stream_time: i64) -> bool {
        self.closes_at(w) <= stream_time
    }
    /// Whether `w` has outlived its retention at `stream_time`.
    pub fn is_expired(&self, w: Window, stream_time: i64) -> bool {
        self.expires_at(w) <= stream_time
    }
}

/// The sliding window that ends at a record at `ts`: `[ts - diff, ts]`, or,
/// for a record within `diff` of the epoch, `[0, diff]` (no window starts
/// before the epoch; Kafka Streams gathers such early records there).
pub fn sliding_left_window(ts: i64, diff: i64) -> Window {
    if ts < diff {
        Window::new(0, diff)
    } else {
        Window::new(ts - diff, ts)
    }
}

/// The store and changelog key under which a windowed table keeps its
/// partition's stream time (the largest timestamp seen), so that a restart
/// or a new owner goes on with the same closing and expiry. It parses as no
/// windowed key.
pub const STREAM_TIME_KEY: &[u8] = b"\xff\xff\xff\xffstream-time";

/// The store and changelog key under which a windowed table keeps the
/// clock value through which window closes were emitted (final results, the
/// close callback): after a restart, windows closing later are pending, the
/// others were handled. Under exactly-once it is written in the transaction
/// of the emissions; under at-least-once once they are flushed.
pub const CLOSED_KEY: &[u8] = b"\xff\xff\xff\xffclosed-through";

/// Whether a stored key is a window's entry (not the stream time or the
/// close point).
pub fn is_window_entry(raw: &[u8]) -> bool {
    parse_store_key(raw).is_some()
}

/// A table key with its window: how a windowed table's results are keyed
/// on an output topic (Kafka Streams' `Windowed<K>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Windowed<K> {
    /// The table key.
    pub key: K,
    /// The window.
    pub window: Window,
}

/// A window: `start` and `end` in milliseconds since the epoch. Whether
/// `end` is inclusive depends on the kind of window (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Window {
    /// The first millisecond in the window.
    pub start: i64,
    /// The end: exclusive for tumbling and hopping windows, inclusive for
    /// sliding and session windows.
    pub end: i64,
}

impl Window {
    /// A window from `start` to `end`.
    pub fn new(start: i64, end: i64) -> Self {
        Self { start, end }
    }
}

/// The windows of a tumbling (`advance == size`) or hopping window of
/// `size` ms advancing by `advance` ms that contain `ts`, earliest first.
/// Timestamps before the epoch fall in no window.
///
/// # Panics
///
/// Never for `size >= advance > 0` (the spec checks this when it is built);
/// with `advance <= 0` it yields nothing.
pub fn time_windows(ts: i64, size: i64, advance: i64) -> impl Iterator<Item = Window> {
    let valid = ts >= 0 && advance > 0 && size >= advance;
    // The earliest start: the first multiple of `advance` after ts - size.
    let first = if valid {
        let lowest = (ts - size + advance).max(0);
        lowest / advance * advance
    } else {
        0
    };
    let mut next = first;
    std::iter::from_fn(move || {
        if !valid || next > ts {
            return None;
        }
        let w = Window::new(next, next.saturating_add(size));
        next = next.saturating_add(advance);
        Some(w)
    })
}

/// The sliding windows (KIP-450) of one key's records at `timestamps`, with
/// `diff` ms between the first and the last millisecond of a window, each
/// with the number of records it holds: for every record at `t`, the window
/// ending at it ([`sliding_left_window`]), and, if a later record falls in
/// it, the window starting just after it, `[t + 1, t + 1 + diff]`. Windows
/// are inclusive at both ends; identical windows are listed once, by start.
///
/// This is the definition the incremental aggregation (which sees one
/// record at a time, in any order) must agree with.
pub fn sliding_windows(timestamps: &[i64], diff: i64) -> Vec<(Window, usize)> {
    let mut ts = timestamps.to_vec();
    ts.sort_unstable();
    let holding = |w: Window| ts.iter().filter(|&&t| w.start <= t && t <= w.end).count();
    let mut windows = std::collections::BTreeSet::new();
    for &t in &ts {
        windows.insert(sliding_left_window(t, diff));
        let right = Window::new(
            t.saturating_add(1),
            t.saturating_add(1).saturating_add(diff),
        );
        if ts.iter().any(|&u| right.start <= u && u <= right.end) {
            windows.insert(right);
        }
    }
    windows.into_iter().map(|w| (w, holding(w))).collect()
}

/// What a record at some timestamp does to its key's sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionMerge {
    /// The session the record belongs to now.
    pub session: Window,
    /// Existing sessions it absorbed (each gets a tombstone).
    pub merged: Vec<Window>,
}

/// The sessions of a key a record at `ts` may join: those ending at or after
/// `ts - gap` and starting at or before `ts + gap`.
pub fn session_overlaps(s: Window, ts: i64, gap: i64) -> bool {
    s.end >= ts.saturating_sub(gap) && s.start <= ts.saturating_add(gap)
}

/// Merges a record at `ts` into a key's sessions (`existing`, any order; the
/// ones that do not overlap are ignored).
pub fn merge_session(ts: i64, gap: i64, existing: &[Window]) -> SessionMerge {
    let mut session = Window::new(ts, ts);
    let mut merged = Vec::new();
    for &s in existing {
        if session_overlaps(s, ts, gap) {
            session.start = session.start.min(s.start);
            session.end = session.end.max(s.end);
            merged.push(s);
        }
    }
    merged.sort();
    // The session that keeps its identity is not merged away.
    merged.retain(|&s| s != session);
    SessionMerge { session, merged }
}

/// A windowed entry's key in a store: the table key, length-prefixed, then
/// the window's start and end, so that one key's windows are contiguous and
/// ordered by start (then end), and a range scan or a range delete serves a
/// key's windows between two starts.
pub fn store_key(key: &[u8], w: Window) -> Vec<u8> {
    let mut out = key_prefix(key);
    out.extend_from_slice(&ordered(w.start));
    out.extend_from_slice(&ordered(w.end));
    out
}

/// The prefix all of `key`'s windows share.
pub fn key_prefix(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + key.len() + 16);
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// The store key below every window of `key` starting at or after `start`.
pub fn store_key_from(key: &[u8], start: i64) -> Vec<u8> {
    let mut out = key_prefix(key);
    out.extend_from_slice(&ordered(start));
    out
}

/// Splits a windowed store key into the table key and the window; `None`
/// for bytes that are not one.
pub fn parse_store_key(raw: &[u8]) -> Option<(&[u8], Window)> {
    let len = u32::from_be_bytes(raw.get(..4)?.try_into().ok()?) as usize;
    let key = raw.get(4..4 + len)?;
    let rest = raw.get(4 + len..)?;
    if rest.len() != 16 {
        return None;
    }
    let start = unordered(rest[..8].try_into().ok()?);
    let end = unordered(rest[8..].try_into().ok()?);
    Some((key, Window::new(start, end)))
}

/// `v` as 8 bytes that sort as the numbers do (the sign bit flipped).
fn ordered(v: i64) -> [u8; 8] {
    ((v as u64) ^ (1 << 63)).to_be_bytes()
}

fn unordered(b: [u8; 8]) -> i64 {
    (u64::from_be_bytes(b) ^ (1 << 63)) as i64
}

/// Orders windows as a store does: by start, then end.
pub fn by_start(a: &Window, b: &Window) -> Ordering {
    (a.start, a.end).cmp(&(b.start, b.end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tumbling_windows_are_aligned_to_the_epoch() {
        let ws: Vec<Window> = time_windows(61_500, 60_000, 60_000).collect();
        assert_eq!(ws, vec![Window::new(60_000, 120_000)]);
        let ws: Vec<Window> = time_windows(0, 1000, 1000).collect();
        assert_eq!(ws, vec![Window::new(0, 1000)]);
        assert_eq!(time_windows(-1, 1000, 1000).count(), 0);
    }

    #[test]
    fn hopping_windows_cover_a_timestamp_size_over_advance_times() {
        let ws: Vec<Window> = time_windows(10_000, 5_000, 1_000).collect();
        assert_eq!(
            ws,
            (6..=10)
                .map(|s| Window::new(s * 1000, s * 1000 + 5000))
                .collect::<Vec<_>>()
        );
        // Near the epoch, fewer: no window starts before 0.
        let ws: Vec<Window> = time_windows(1_500, 5_000, 1_000).collect();
        assert_eq!(ws, vec![Window::new(0, 5000), Window::new(1000, 6000)]);
    }

    #[test]
    fn closing_follows_kafka_streams() {
        let w = Window::new(0, 1000);
        let tumbling = WindowSpec::tumbling(Duration::from_millis(1000));
        let graced = tumbling.grace(Duration::from_millis(500));
        assert!(!tumbling.is_closed(w, 999));
        assert!(tumbling.is_closed(w, 1000));
        assert!(!graced.is_closed(w, 1499));
        assert!(graced.is_closed(w, 1500));
        // Inclusive ends close one millisecond later.
        let session = WindowSpec::session(Duration::from_millis(10));
        assert!(!session.is_closed(w, 1000));
        assert!(session.is_closed(w, 1001));
    }

    #[test]
    fn a_record_between_two_sessions_merges_them() {
        let existing = [
            Window::new(0, 10),
            Window::new(30, 40),
            Window::new(100, 100),
        ];
        let m = merge_session(20, 10, &existing);
        assert_eq!(m.session, Window::new(0, 40));
        assert_eq!(m.merged, vec![Window::new(0, 10), Window::new(30, 40)]);
        // Inside a session: it stays as it is, nothing merged away.
        let m = merge_session(5, 10, &[Window::new(0, 10)]);
        assert_eq!(m.session, Window::new(0, 10));
        assert!(m.merged.is_empty());
        // Too far: a new session.
        let m = merge_session(200, 10, &existing);
        assert_eq!(m.session, Window::new(200, 200));
        assert!(m.merged.is_empty());
    }

    #[test]
    fn sliding_windows_end_at_each_record_and_start_just_after_it() {
        // Records at 10 and 15, diff 10: [0,10] {10}, [5,15] {10,15},
        // [11,21] {15} (right of 10, holds 15), and no right window of 15.
        assert_eq!(
            sliding_windows(&[15, 10], 10),
            vec![
                (Window::new(0, 10), 1),
                (Window::new(5, 15), 2),
                (Window::new(11, 21), 1),
            ]
        );
        // Far apart: each alone in its own window; the early one in [0, diff].
        assert_eq!(
            sliding_windows(&[0, 100], 10),
            vec![(Window::new(0, 10), 1), (Window::new(90, 100), 1)]
        );
    }

    /// Sessions built record by record, as a table would keep them.
    fn sessions_of(ts: &[i64], gap: i64) -> Vec<Window> {
        let mut sessions: Vec<Window> = Vec::new();
        for &t in ts {
            let m = merge_session(t, gap, &sessions);
            sessions.retain(|s| !m.merged.contains(s) && *s != m.session);
            sessions.push(m.session);
        }
        sessions.sort();
        sessions
    }

    proptest! {
        #[test]
        fn every_timestamp_falls_in_size_over_advance_hopping_windows(
            ts in 0i64..10_000_000,
            advance in 1i64..5_000,
            hops in 1i64..8,
        ) {
            let size = advance * hops;
            let ws: Vec<Window> = time_windows(ts, size, advance).collect();
            for w in &ws {
                prop_assert!(w.start <= ts && ts < w.end, "{w:?} does not hold {ts}");
                prop_assert_eq!(w.start % advance, 0);
                prop_assert_eq!(w.end - w.start, size);
            }
            // All of them: as many as fit, fewer only before the first full one.
            let expected = if ts >= size - advance { hops } else { ts / advance + 1 };
            prop_assert_eq!(ws.len() as i64, expected);
            // And no other window holds it: the ones just outside do not.
            if let (Some(first), Some(last)) = (ws.first(), ws.last()) {
                prop_assert!(first.start - advance < 0 || first.start - advance + size <= ts);
                prop_assert!(last.start + advance > ts);
            }
        }

        #[test]
        fn every_sliding_window_holds_a_record_and_every_record_is_in_its_own_window(
            ts in proptest::collection::vec(0i64..200, 1..20),
            diff in 0i64..30,
        ) {
            let ws = sliding_windows(&ts, diff);
            for (w, n) in &ws {
                prop_assert_eq!(w.end - w.start, diff);
                prop_assert!(*n > 0, "{w:?} holds nothing");
            }
            for &t in &ts {
                let own = sliding_left_window(t, diff);
                prop_assert!(ws.iter().any(|(w, _)| *w == own), "no window of {t}");
            }
            // Each window is listed once.
            let starts: Vec<i64> = ws.iter().map(|(w, _)| w.start).collect();
            let mut sorted = starts.clone();
            sorted.dedup();
            prop_assert_eq!(sorted.len(), starts.len());
        }

        #[test]
        fn sessions_do_not_depend_on_arrival_order(
            mut ts in proptest::collection::vec(0i64..1_000, 1..30),
            gap in 0i64..50,
            seed in any::<u64>(),
        ) {
            let in_order = {
                let mut sorted = ts.clone();
                sorted.sort_unstable();
                sessions_of(&sorted, gap)
            };
            // A deterministic shuffle.
            let mut s = seed;
            for i in (1..ts.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ts.swap(i, (s >> 33) as usize % (i + 1));
            }
            prop_assert_eq!(sessions_of(&ts, gap), in_order.clone());
            // Sessions are disjoint and more than `gap` apart.
            for pair in in_order.windows(2) {
                prop_assert!(pair[1].start - pair[0].end > gap, "{pair:?}");
            }
        }

        #[test]
        fn store_keys_keep_one_keys_windows_together_in_start_order(
            a in proptest::collection::vec(any::<u8>(), 0..6),
            b in proptest::collection::vec(any::<u8>(), 0..6),
            wa in (any::<i64>(), any::<i64>()),
            wb in (any::<i64>(), any::<i64>()),
        ) {
            let (wa, wb) = (Window::new(wa.0, wa.1), Window::new(wb.0, wb.1));
            let (ka, kb) = (store_key(&a, wa), store_key(&b, wb));
            prop_assert_eq!(parse_store_key(&ka), Some((&a[..], wa)));
            if a == b {
                prop_assert_eq!(ka.cmp(&kb), by_start(&wa, &wb));
                prop_assert!(store_key_from(&a, wa.start) <= ka);
            } else {
                // Another key's windows never share this key's prefix, so
                // they never sit between two of its windows.
                prop_assert!(!kb.starts_with(&key_prefix(&a)));
            }
        }
    }
}

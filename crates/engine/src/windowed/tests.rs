use std::cell::RefCell;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::codec::{Json, Utf8};
use crate::store::MemoryStore;
use crate::table::TableSpec;
use crate::window::{sliding_windows, Window};

fn table(
    f: impl FnOnce(Table<String, u64>) -> WindowedTable<String, u64>,
) -> WindowedTable<String, u64> {
    let (t, _) = Table::declare(0, "app", "counts", TableSpec::new(Utf8, Json, || 0u64));
    f(t)
}

fn part(t: &WindowedTable<String, u64>) -> RefCell<TablePart> {
    RefCell::new(
        TablePart::new(
            "counts".into(),
            "app-counts-changelog".into(),
            0,
            Box::new(MemoryStore::default()),
        )
        .with_window(Some(t.spec()), true),
    )
}

/// What a commit does: the overlay into the store; the window state is
/// reloaded from it on next use (as after a restart).
fn commit_and_reload(part: &RefCell<TablePart>, offset: i64) {
    let mut p = part.borrow_mut();
    p.take_staged();
    let overlay = p.take_overlay();
    p.store
        .apply(&mut overlay.into_iter(), offset)
        .expect("apply");
    if let Some(w) = p.window.as_mut() {
        w.reset();
    }
}

fn count(part: &RefCell<TablePart>, t: &WindowedTable<String, u64>, key: &str, ts: i64) -> usize {
    WindowedView::new(part.borrow_mut(), t, 0)
        .update_at(ts, &key.to_string(), |n| *n += 1)
        .expect("update")
}

fn windows(
    part: &RefCell<TablePart>,
    t: &WindowedTable<String, u64>,
    key: &str,
) -> Vec<(Window, usize)> {
    WindowedView::new(part.borrow_mut(), t, 0)
        .windows(&key.to_string(), i64::MIN, i64::MAX)
        .expect("windows")
        .into_iter()
        .map(|(w, n)| (w, n as usize))
        .collect()
}

#[test]
fn sliding_windows_follow_kafka_streams_example() {
    // KIP-450's picture: records at 10, 15 and 25 with a difference of 10.
    let t = table(|t| {
        t.sliding(Duration::from_millis(10))
            .grace(Duration::from_secs(1))
    });
    let p = part(&t);
    for ts in [10, 15, 25] {
        count(&p, &t, "a", ts);
    }
    assert_eq!(windows(&p, &t, "a"), sliding_windows(&[10, 15, 25], 10));
    assert_eq!(
        windows(&p, &t, "a"),
        vec![
            (Window::new(0, 10), 1),
            (Window::new(5, 15), 2),
            (Window::new(11, 21), 1),
            (Window::new(15, 25), 2),
            (Window::new(16, 26), 1),
        ]
    );
}

#[test]
fn a_record_for_closed_windows_is_dropped_and_counted() {
    let t = table(|t| {
        t.tumbling(Duration::from_millis(100))
            .grace(Duration::from_millis(10))
    });
    let p = part(&t);
    assert_eq!(count(&p, &t, "a", 50), 1);
    assert_eq!(count(&p, &t, "a", 109), 1);
    // Stream time 109: [0, 100) is open until 110.
    assert_eq!(count(&p, &t, "a", 99), 1);
    assert_eq!(count(&p, &t, "a", 110), 1);
    assert_eq!(count(&p, &t, "a", 99), 0);
    let v = WindowedView::new(p.borrow_mut(), &t, 0);
    assert_eq!(v.dropped(), 1);
    drop(v);
    // [0, 100) also reached its retention (size + grace) at 110.
    assert_eq!(windows(&p, &t, "a"), vec![(Window::new(100, 200), 2)]);
}

#[test]
fn windows_expire_with_tombstones_and_the_stream_time_is_kept() {
    let t = table(|t| t.tumbling(Duration::from_millis(100)));
    let p = part(&t);
    count(&p, &t, "a", 10);
    commit_and_reload(&p, 1);
    // Retention is the size: [0, 100) goes once stream time reaches 100.
    count(&p, &t, "a", 100);
    let staged: Vec<_> = p
        .borrow_mut()
        .take_staged()
        .iter()
        .map(|r| (r.key.clone(), r.value.is_none()))
        .collect();
    let tombstone = store_key(b"a", Window::new(0, 100));
    assert!(
        staged.contains(&(Some(tombstone.into()), true)),
        "{staged:?}"
    );
    commit_and_reload(&p, 2);
    assert_eq!(windows(&p, &t, "a"), vec![(Window::new(100, 200), 1)]);
    let st = WindowedView::new(p.borrow_mut(), &t, 0)
        .stream_time()
        .expect("stream time");
    assert_eq!(st, Some(100));
}

/// A deterministic shuffle.
fn shuffle(ts: &mut [i64], seed: u64) {
    let mut s = seed;
    for i in (1..ts.len()).rev() {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ts.swap(i, (s >> 33) as usize % (i + 1));
    }
}

proptest! {
    #[test]
    fn sliding_counts_equal_the_definition_in_any_order_and_across_reloads(
        mut ts in proptest::collection::vec(0i64..120, 1..25),
        diff in 1i64..30,
        seed in any::<u64>(),
        reload_every in 1usize..6,
    ) {
        let t = table(|t| t.sliding(Duration::from_millis(diff as u64)).grace(Duration::from_secs(10)));
        let p = part(&t);
        shuffle(&mut ts, seed);
        for (i, &x) in ts.iter().enumerate() {
            count(&p, &t, "k", x);
            if i % reload_every == 0 {
                commit_and_reload(&p, i as i64);
            }
        }
        prop_assert_eq!(windows(&p, &t, "k"), sliding_windows(&ts, diff));
    }

    #[test]
    fn in_order_sliding_windows_close_once_each_with_their_final_count(
        gaps in proptest::collection::vec(0i64..15, 1..25),
        diff in 1i64..12,
        reload_every in 1usize..6,
    ) {
        let closed: std::rc::Rc<RefCell<Vec<(Window, usize)>>> = Default::default();
        let seen = closed.clone();
        let t = table(|t| {
            t.sliding(Duration::from_millis(diff as u64))
                .on_window_close(move |_, w, n| seen.borrow_mut().push((w, *n as usize)))
        });
        let p = part(&t);
        let mut ts = Vec::new();
        let mut now = 0;
        for (i, gap) in gaps.iter().enumerate() {
            now += gap;
            ts.push(now);
            count(&p, &t, "k", now);
            if i % reload_every == 0 {
                commit_and_reload(&p, i as i64);
            }
        }
        // Far later: everything before closes.
        let end = now + 10 * diff + 10;
        count(&p, &t, "k", end);
        let mut got = closed.borrow().clone();
        got.sort();
        prop_assert_eq!(got, sliding_windows(&ts, diff));
    }

    #[test]
    fn hopping_counts_equal_a_count_of_records_per_window(
        ts in proptest::collection::vec(0i64..1_000, 1..40),
        advance in 1i64..50,
        hops in 1i64..5,
    ) {
        let size = advance * hops;
        let t = table(|t| {
            t.hopping(Duration::from_millis(size as u64), Duration::from_millis(advance as u64))
                .grace(Duration::from_secs(10))
                .expires(Duration::from_secs(100))
        });
        let p = part(&t);
        for &x in &ts {
            prop_assert_eq!(count(&p, &t, "k", x) as i64, crate::window::time_windows(x, size, advance).count() as i64);
        }
        for (w, n) in windows(&p, &t, "k") {
            let holding = ts.iter().filter(|&&x| w.start <= x && x < w.end).count();
            prop_assert_eq!(n, holding, "{:?}", w);
        }
    }
}

use super::*;
use crate::prelude::*;
use crate::testing::{TestDriver, TestRecord};

#[test]
fn a_stream_record_joins_when_the_table_has_its_key_or_the_join_is_left() {
    assert_eq!(stream_table(JoinKind::Inner, true, 7), Outcome::Join(7));
    assert_eq!(stream_table(JoinKind::Inner, false, 7), Outcome::Nothing);
    assert_eq!(stream_table(JoinKind::Left, false, 7), Outcome::Join(7));
    assert_eq!(stream_table(JoinKind::Left, true, 7), Outcome::Join(7));
}

#[test]
fn table_changes_follow_kafka_streams_join_processors() {
    use JoinKind::{Inner, Left, Outer};
    use Outcome::{Delete, Join, Nothing};
    use Side::{Left as L, Right as R};
    // (kind, side, new, old, other's timestamp, expected); the change is at 5.
    let cases = [
        // Inner: nothing unless the other side has the key; then the
        // larger timestamp, and a tombstone for a delete.
        (Inner, L, true, false, None, Nothing),
        (Inner, R, false, true, None, Nothing),
        (Inner, L, true, true, Some(9), Join(9)),
        (Inner, R, true, false, Some(2), Join(5)),
        (Inner, L, false, true, Some(2), Delete(5)),
        // Left join, a left change: the row follows the left side.
        (Left, L, true, false, None, Join(5)),
        (Left, L, false, true, None, Delete(5)),
        (Left, L, false, false, None, Nothing),
        (Left, L, true, true, Some(8), Join(8)),
        (Left, L, false, true, Some(8), Delete(8)),
        // Left join, a right change: only where the left has the key, and
        // a right delete keeps the row (with no right value).
        (Left, R, true, false, None, Nothing),
        (Left, R, true, false, Some(3), Join(5)),
        (Left, R, false, true, Some(3), Join(5)),
        // Outer: a row while either side has the key.
        (Outer, R, true, false, None, Join(5)),
        (Outer, L, false, true, None, Delete(5)),
        (Outer, L, false, false, None, Nothing),
        (Outer, R, false, true, Some(6), Join(6)),
        (Outer, L, true, true, Some(6), Join(6)),
    ];
    for (kind, side, new, old, other, expected) in cases {
        assert_eq!(
            table_table(kind, side, new, old, other, 5),
            expected,
            "{kind:?} {side:?} new={new} old={old} other={other:?}"
        );
    }
}

#[test]
fn stored_values_carry_their_timestamp() {
    let raw = stored(-3, b"abc");
    assert_eq!(unstored(&raw), (-3, &b"abc"[..]));
}

fn app() -> App {
    App::new(
        "j",
        Properties::new()
            .set("bootstrap.servers", "unused:9092")
            .set("processing.guarantee", "exactly_once")
            .set("topic.partitions", "2"),
    )
}

fn utf8(app: &mut App, name: &str) -> Topic<String, String> {
    app.topic_with(name, TopicSpec::new(Utf8, Utf8))
}

fn show(v: Option<&String>) -> String {
    v.cloned().unwrap_or_else(|| "null".into())
}

/// (key, value or None for a tombstone, timestamp) of each result.
fn results(d: &mut TestDriver, topic: &str) -> Vec<(String, Option<String>, i64)> {
    d.read_records(topic)
        .into_iter()
        .map(|r| {
            let k = String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned();
            let v = r
                .value
                .as_deref()
                .map(|v| String::from_utf8_lossy(v).into_owned());
            (k, v, r.timestamp)
        })
        .collect()
}

fn row(k: &str, v: Option<&str>, ts: i64) -> (String, Option<String>, i64) {
    (k.to_owned(), v.map(str::to_owned), ts)
}

fn stream_table_app(kind: JoinKind) -> (App, Topic<String, String>, Topic<String, String>) {
    let mut app = app();
    let clicks = utf8(&mut app, "clicks");
    let users = utf8(&mut app, "users");
    let out = utf8(&mut app, "out");
    let table = app.table_from("users", &users).empty_values_delete();
    app.stream_table_join(&clicks, &table, kind, &out, |c: &String, u| {
        format!("{c}+{}", show(u))
    });
    (app, clicks, users)
}

#[tokio::test]
async fn a_stream_record_meets_the_table_as_it_was_at_its_timestamp_whatever_order_they_were_written_in(
) {
    let (app, clicks, users) = stream_table_app(JoinKind::Left);
    let mut d = TestDriver::new(&app).expect("driver");
    let rec = |k: &str, v: &str, ts| TestRecord::new(k.to_owned(), v.to_owned()).timestamp(ts);
    // Written stream first, but the table's records at 5 and 20 come
    // between the clicks at 3, 10 and 30 by time.
    d.queue_record(&clicks, rec("u1", "c3", 3)).expect("queue");
    d.queue_record(&clicks, rec("u1", "c10", 10))
        .expect("queue");
    d.queue_record(&clicks, rec("u1", "c30", 30))
        .expect("queue");
    d.queue_record(&users, rec("u1", "ann", 5)).expect("queue");
    d.queue_record(&users, rec("u1", "", 20)).expect("queue");
    d.run_queued().await.expect("run");
    assert_eq!(
        results(&mut d, "out"),
        vec![
            row("u1", Some("c3+null"), 3),
            row("u1", Some("c10+ann"), 10),
            // Deleted at 20 (an empty value, with empty_values_delete).
            row("u1", Some("c30+null"), 30),
        ]
    );
}

#[tokio::test]
async fn an_inner_stream_table_join_skips_unmatched_keyless_and_valueless_records() {
    let (app, clicks, users) = stream_table_app(JoinKind::Inner);
    let mut d = TestDriver::new(&app).expect("driver");
    let rec = |k: &str, v: &str, ts| TestRecord::new(k.to_owned(), v.to_owned()).timestamp(ts);
    d.queue_record(&users, rec("u1", "ann", 1)).expect("queue");
    d.queue_record(&clicks, rec("u2", "x", 2)).expect("queue");
    d.queue_bytes("clicks", None, Some(b"keyless"), 3)
        .expect("queue");
    d.queue_bytes("clicks", Some(b"u1"), None, 4)
        .expect("queue");
    d.queue_record(&clicks, rec("u1", "y", 5)).expect("queue");
    d.run_queued().await.expect("run");
    assert_eq!(results(&mut d, "out"), vec![row("u1", Some("y+ann"), 5)]);
    assert_eq!(
        d.dropped_records(),
        2,
        "the keyless and the valueless record"
    );
    // A table update alone makes nothing.
    d.pipe_record(&users, rec("u1", "bob", 6))
        .await
        .expect("pipe");
    assert!(results(&mut d, "out").is_empty());
}

fn table_table_app(kind: JoinKind) -> (App, Topic<String, String>, Topic<String, String>) {
    let mut app = app();
    let l = utf8(&mut app, "left");
    let r = utf8(&mut app, "right");
    let out = utf8(&mut app, "out");
    let lt = app.table_from("left", &l).empty_values_delete();
    let rt = app.table_from("right", &r).empty_values_delete();
    app.table_table_join(
        &lt,
        &rt,
        kind,
        &out,
        |a: Option<&String>, b: Option<&String>| format!("{}+{}", show(a), show(b)),
    );
    (app, l, r)
}

#[tokio::test]
async fn table_table_joins_emit_on_both_sides_at_the_larger_timestamp_with_tombstones() {
    let rec = |k: &str, v: &str, ts| TestRecord::new(k.to_owned(), v.to_owned()).timestamp(ts);
    // left a@1, right x@2, left b@3, right delete@4, left delete@5.
    let expected = [
        (
            JoinKind::Inner,
            vec![
                row("k", Some("a+x"), 2),
                row("k", Some("b+x"), 3),
                row("k", None, 4),
            ],
        ),
        (
            JoinKind::Left,
            vec![
                row("k", Some("a+null"), 1),
                row("k", Some("a+x"), 2),
                row("k", Some("b+x"), 3),
                row("k", Some("b+null"), 4),
                row("k", None, 5),
            ],
        ),
        (
            JoinKind::Outer,
            vec![
                row("k", Some("a+null"), 1),
                row("k", Some("a+x"), 2),
                row("k", Some("b+x"), 3),
                row("k", Some("b+null"), 4),
                row("k", None, 5),
            ],
        ),
    ];
    for (kind, want) in expected {
        let (app, l, r) = table_table_app(kind);
        let mut d = TestDriver::new(&app).expect("driver");
        d.queue_record(&r, rec("k", "x", 2)).expect("queue");
        d.queue_record(&r, rec("k", "", 4)).expect("queue");
        d.queue_record(&l, rec("k", "a", 1)).expect("queue");
        d.queue_record(&l, rec("k", "b", 3)).expect("queue");
        d.queue_record(&l, rec("k", "", 5)).expect("queue");
        d.run_queued().await.expect("run");
        assert_eq!(results(&mut d, "out"), want, "{kind:?}");
    }
}

#[tokio::test]
async fn joined_tables_survive_a_restart_and_results_are_not_repeated() {
    let rec = |k: &str, v: &str, ts| TestRecord::new(k.to_owned(), v.to_owned()).timestamp(ts);
    let (app, l, r) = table_table_app(JoinKind::Inner);
    let mut d = TestDriver::new(&app).expect("driver");
    d.pipe_record(&l, rec("k", "a", 1)).await.expect("pipe");
    d.restart().await;
    d.pipe_record(&r, rec("k", "x", 2)).await.expect("pipe");
    assert_eq!(results(&mut d, "out"), vec![row("k", Some("a+x"), 2)]);
}

#[test]
fn a_stream_table_join_is_inner_or_left_and_keys_pass_through_one_codec() {
    let mut a = app();
    let s = utf8(&mut a, "s");
    let t = utf8(&mut a, "t");
    let out = a.topic_with::<String, String>("o", TopicSpec::new(Json, Utf8));
    let table = a.table_from("t", &t);
    a.stream_table_join(&s, &table, JoinKind::Outer, &out, |v: &String, _| v.clone());
    let err = a
        .topology()
        .expect_err("outer and mixed codecs")
        .to_string();
    assert!(err.contains("not outer"), "{err}");
    assert!(err.contains("one key codec"), "{err}");
}

fn stream_stream_app(
    kind: JoinKind,
    window: JoinWindow,
) -> (App, Topic<String, String>, Topic<String, String>) {
    let mut app = app();
    let l = utf8(&mut app, "left");
    let r = utf8(&mut app, "right");
    let out = utf8(&mut app, "out");
    app.stream_stream_join(
        &l,
        &r,
        kind,
        window,
        &out,
        |a: Option<&String>, b: Option<&String>| format!("{}+{}", show(a), show(b)),
    );
    (app, l, r)
}

fn ms(n: u64) -> std::time::Duration {
    std::time::Duration::from_millis(n)
}

/// Pipes `(side, value, timestamp)` records, all with key `k`, one at a
/// time.
async fn pipe_sides(
    d: &mut TestDriver,
    l: &Topic<String, String>,
    r: &Topic<String, String>,
    records: &[(char, &str, i64)],
) {
    for &(side, v, ts) in records {
        let t = if side == 'L' { l } else { r };
        let rec = TestRecord::new("k".to_owned(), v.to_owned()).timestamp(ts);
        d.pipe_record(t, rec).await.expect("pipe");
    }
}

#[tokio::test]
async fn stream_records_join_within_the_window_at_the_larger_timestamp() {
    let (app, l, r) = stream_stream_app(JoinKind::Inner, JoinWindow::symmetric(ms(10)));
    let mut d = TestDriver::new(&app).expect("driver");
    pipe_sides(
        &mut d,
        &l,
        &r,
        &[
            ('L', "a", 100),
            ('R', "x", 110),
            ('R', "y", 111),
            ('L', "b", 95),
        ],
    )
    .await;
    assert_eq!(
        results(&mut d, "out"),
        vec![
            row("k", Some("a+x"), 110),
            // b at 95 is late (stream time 111) but x at 110 is 15 away;
            // a joins x only.
        ]
    );
    pipe_sides(&mut d, &l, &r, &[('L', "c", 105)]).await;
    assert_eq!(
        results(&mut d, "out"),
        vec![row("k", Some("c+x"), 110), row("k", Some("c+y"), 111)]
    );
}

#[tokio::test]
async fn unmatched_records_of_outer_sides_come_out_once_their_window_closes_and_never_early() {
    let w = JoinWindow::symmetric(ms(10));
    // A left join: a waits; x at 200 closes a's window (110 < 200), and
    // x itself is not outer.
    let (app, l, r) = stream_stream_app(JoinKind::Left, w);
    let mut d = TestDriver::new(&app).expect("driver");
    pipe_sides(&mut d, &l, &r, &[('L', "a", 100)]).await;
    assert!(
        results(&mut d, "out").is_empty(),
        "nothing before the window closes"
    );
    pipe_sides(
        &mut d,
        &l,
        &r,
        &[('R', "x", 200), ('L', "b", 300), ('R', "z", 305)],
    )
    .await;
    assert_eq!(
        results(&mut d, "out"),
        vec![row("k", Some("a+null"), 100), row("k", Some("b+z"), 305)]
    );
    // An outer join: both sides' unmatched records.
    let (app, l, r) = stream_stream_app(JoinKind::Outer, w);
    let mut d = TestDriver::new(&app).expect("driver");
    pipe_sides(
        &mut d,
        &l,
        &r,
        &[('L', "a", 100), ('R', "x", 150), ('L', "c", 300)],
    )
    .await;
    assert_eq!(
        results(&mut d, "out"),
        vec![row("k", Some("a+null"), 100), row("k", Some("null+x"), 150)]
    );
}

#[tokio::test]
async fn a_late_record_within_the_grace_period_still_matches_and_cancels_the_unmatched_result() {
    let w = JoinWindow::symmetric(ms(10)).grace(ms(50));
    let (app, l, r) = stream_stream_app(JoinKind::Left, w);
    let mut d = TestDriver::new(&app).expect("driver");
    pipe_sides(&mut d, &l, &r, &[('L', "a", 100), ('R', "x", 150)]).await;
    // Restarted while a waits: its buffers come back from the changelog.
    d.restart().await;
    pipe_sides(&mut d, &l, &r, &[('R', "y", 105), ('L', "z", 400)]).await;
    assert_eq!(
        results(&mut d, "out"),
        vec![row("k", Some("a+y"), 105)],
        "a matched late, so no a+null; z waits for its window"
    );
}

#[tokio::test]
async fn buffered_records_expire_after_before_plus_after_plus_grace() {
    let (app, l, r) = stream_stream_app(JoinKind::Inner, JoinWindow::symmetric(ms(10)));
    let mut d = TestDriver::new(&app).expect("driver");
    // Stream time 120 keeps a (100 >= 120 - 20); 200 drops it.
    pipe_sides(
        &mut d,
        &l,
        &r,
        &[('L', "a", 100), ('L', "b", 120), ('R', "x", 105)],
    )
    .await;
    assert_eq!(results(&mut d, "out"), vec![row("k", Some("a+x"), 105)]);
    pipe_sides(&mut d, &l, &r, &[('L', "c", 200), ('R', "y", 101)]).await;
    assert!(results(&mut d, "out").is_empty(), "a expired before y came");
}

#[test]
fn buffer_keys_sort_by_key_then_time_and_outer_keys_by_time() {
    use super::stream::{buffer_key, outer_key, parse_buffer_key, parse_outer_key};
    let a = buffer_key(Side::Left, b"k", -5, 3);
    let b = buffer_key(Side::Left, b"k", 7, 1);
    let c = buffer_key(Side::Left, b"kk", -100, 0);
    assert!(a < b && b < c);
    assert_eq!(parse_buffer_key(&a), Some((-5, 3)));
    let o1 = outer_key(Side::Right, b"zz", -1, 9);
    let o2 = outer_key(Side::Left, b"a", 4, 0);
    assert!(o1 < o2);
    assert_eq!(parse_outer_key(&o1), Some((-1, Side::Right, &b"zz"[..])));
}

#[test]
fn murmur3_matches_its_reference_values() {
    use super::foreign::murmur3_128;
    assert_eq!(murmur3_128(b""), [0; 16]);
    assert_eq!(
        murmur3_128(b"hello"),
        [
            0xcb, 0xd8, 0xa7, 0xb3, 0x41, 0xbd, 0x9b, 0x02, 0x5b, 0x1e, 0x90, 0x6a, 0x48, 0xae,
            0x1d, 0x19
        ]
    );
    assert_ne!(murmur3_128(b"P1:a"), murmur3_128(b"P1:b"));
}

/// (left join, old foreign key, new foreign key, subscriptions, answered
/// here).
type Case<'a> = (
    bool,
    Option<Option<&'a [u8]>>,
    Option<Option<&'a [u8]>>,
    Vec<(Vec<u8>, super::foreign::Instruction)>,
    bool,
);

#[test]
fn a_left_rows_change_sends_the_subscriptions_kip_213_asks_for() {
    use super::foreign::{subscriptions, Instruction::*};
    let fk = |s: &str| s.as_bytes().to_vec();
    // (left join, old, new, subscriptions, answered here)
    let cases: Vec<Case<'_>> = vec![
        (
            false,
            None,
            Some(Some(b"a")),
            vec![(fk("a"), PropagateOnlyIfValue)],
            false,
        ),
        (
            false,
            Some(Some(b"a")),
            Some(Some(b"b")),
            vec![
                (fk("a"), DeleteNoPropagate),
                (fk("b"), PropagateNullIfNoValue),
            ],
            false,
        ),
        (
            false,
            Some(Some(b"a")),
            Some(Some(b"a")),
            vec![(fk("a"), PropagateNullIfNoValue)],
            false,
        ),
        (
            false,
            Some(Some(b"a")),
            None,
            vec![(fk("a"), DeleteAndPropagate)],
            false,
        ),
        (
            false,
            Some(Some(b"a")),
            Some(None),
            vec![(fk("a"), DeleteAndPropagate)],
            false,
        ),
        (
            false,
            Some(None),
            Some(Some(b"a")),
            vec![(fk("a"), PropagateOnlyIfValue)],
            false,
        ),
        (false, None, None, vec![], false),
        (
            true,
            None,
            Some(Some(b"a")),
            vec![(fk("a"), PropagateNullIfNoValue)],
            false,
        ),
        (
            true,
            Some(Some(b"a")),
            Some(Some(b"b")),
            vec![
                (fk("a"), DeleteNoPropagate),
                (fk("b"), PropagateNullIfNoValue),
            ],
            false,
        ),
        (
            true,
            Some(Some(b"a")),
            None,
            vec![(fk("a"), DeleteNoPropagate)],
            true,
        ),
        (
            true,
            Some(Some(b"a")),
            Some(None),
            vec![(fk("a"), DeleteNoPropagate)],
            true,
        ),
        (true, None, Some(None), vec![], true),
        (true, None, None, vec![], false),
    ];
    for (left, old, new, subs, local) in cases {
        assert_eq!(
            subscriptions(left, old, new),
            (subs, local),
            "left={left} old={old:?} new={new:?}"
        );
    }
}

#[test]
fn answers_join_only_the_current_left_value() {
    use super::foreign::{answers, on_answer, Answer, Instruction::*};
    assert!(!answers(DeleteNoPropagate, true));
    assert!(answers(DeleteAndPropagate, false));
    assert!(answers(PropagateNullIfNoValue, false));
    assert!(!answers(PropagateOnlyIfValue, false));
    assert!(answers(PropagateOnlyIfValue, true));
    // (left join, current hash, row, right value)
    assert_eq!(on_answer(false, false, true, true), Answer::Stale);
    assert_eq!(on_answer(false, true, true, true), Answer::Join);
    assert_eq!(on_answer(false, true, true, false), Answer::Delete);
    assert_eq!(on_answer(true, true, true, false), Answer::Join);
    assert_eq!(on_answer(true, true, false, false), Answer::Delete);
}

#[test]
fn subscriptions_and_answers_survive_their_encoding() {
    use super::foreign::{decode_answer, encode_answer, Instruction, Subscription};
    let sub = Subscription {
        instruction: Instruction::PropagateNullIfNoValue,
        hash: Some([7; 16]),
        partition: 3,
        key: b"o1".to_vec(),
    };
    assert_eq!(Subscription::decode(&sub.encode()), Some(sub));
    let none = Subscription {
        instruction: Instruction::DeleteAndPropagate,
        hash: None,
        partition: 0,
        key: Vec::new(),
    };
    assert_eq!(Subscription::decode(&none.encode()), Some(none));
    let a = encode_answer(Some([1; 16]), Some(b"pear"));
    assert_eq!(decode_answer(&a), Some((Some([1; 16]), Some(&b"pear"[..]))));
    let b = encode_answer(None, None);
    assert_eq!(decode_answer(&b), Some((None, None)));
}

fn foreign_key_app(kind: JoinKind) -> (App, Topic<String, String>, Topic<String, String>) {
    let mut app = app();
    let orders = utf8(&mut app, "orders");
    let products = utf8(&mut app, "products");
    let out = utf8(&mut app, "out");
    let o = app.table_from("orders", &orders);
    let p = app.table_from("products", &products);
    app.foreign_key_join(
        "order-products",
        &o,
        &p,
        |v: &String| v.split_once(':').map(|(fk, _)| fk.to_owned()),
        kind,
        &out,
        |v: &String, p: Option<&String>| format!("{v}+{}", show(p)),
    );
    (app, orders, products)
}

#[tokio::test]
async fn foreign_key_joins_follow_foreign_key_changes_and_deletes_on_both_sides() {
    let rec = |k: &str, v: &str, ts| TestRecord::new(k.to_owned(), v.to_owned()).timestamp(ts);
    for kind in [JoinKind::Inner, JoinKind::Left] {
        let (app, orders, products) = foreign_key_app(kind);
        let mut d = TestDriver::new(&app).expect("driver");
        d.pipe_record(&products, rec("P1", "apple", 1))
            .await
            .expect("pipe");
        d.pipe_record(&orders, rec("o1", "P1:a", 2))
            .await
            .expect("pipe");
        d.pipe_record(&orders, rec("o2", "P2:b", 3))
            .await
            .expect("pipe");
        d.pipe_record(&products, rec("P2", "pear", 4))
            .await
            .expect("pipe");
        d.pipe_record(&orders, rec("o1", "P2:c", 5))
            .await
            .expect("pipe");
        d.pipe_record(&products, rec("P1", "apple2", 6))
            .await
            .expect("pipe");
        d.queue_bytes("products", Some(b"P2"), None, 7)
            .expect("queue");
        d.run_queued().await.expect("run");
        d.queue_bytes("orders", Some(b"o2"), None, 8)
            .expect("queue");
        d.run_queued().await.expect("run");
        let mut got = results(&mut d, "out");
        // Results of different keys may interleave differently.
        got.sort_by(|a, b| (&a.0, a.2).cmp(&(&b.0, b.2)));
        let expected = match kind {
            JoinKind::Inner => vec![
                row("o1", Some("P1:a+apple"), 2),
                row("o1", Some("P2:c+pear"), 5),
                row("o1", None, 7),
                row("o2", Some("P2:b+pear"), 4),
                row("o2", None, 7),
                row("o2", None, 8),
            ],
            _ => vec![
                row("o1", Some("P1:a+apple"), 2),
                row("o1", Some("P2:c+pear"), 5),
                row("o1", Some("P2:c+null"), 7),
                row("o2", Some("P2:b+null"), 3),
                row("o2", Some("P2:b+pear"), 4),
                row("o2", Some("P2:b+null"), 7),
                row("o2", None, 8),
            ],
        };
        assert_eq!(got, expected, "{kind:?}");
    }
}

#[tokio::test]
async fn a_stale_answer_is_discarded_when_the_left_value_changed_meanwhile() {
    let rec = |k: &str, v: &str, ts| TestRecord::new(k.to_owned(), v.to_owned()).timestamp(ts);
    let (app, orders, products) = foreign_key_app(JoinKind::Inner);
    let mut d = TestDriver::new(&app).expect("driver");
    d.pipe_record(&products, rec("P1", "apple", 1))
        .await
        .expect("pipe");
    d.pipe_record(&products, rec("P2", "pear", 1))
        .await
        .expect("pipe");
    // Both changes are read before either answer comes back: the answer
    // to the first carries the hash of "P1:a", no longer the row's value.
    d.queue_record(&orders, rec("o1", "P1:a", 2))
        .expect("queue");
    d.queue_record(&orders, rec("o1", "P2:b", 3))
        .expect("queue");
    d.run_queued().await.expect("run");
    assert_eq!(
        results(&mut d, "out"),
        vec![row("o1", Some("P2:b+pear"), 3)]
    );
}

#[tokio::test]
async fn a_tables_changes_feed_an_agent_and_a_join() {
    let mut app = app();
    let words = utf8(&mut app, "words");
    let colours = utf8(&mut app, "colours");
    let out = utf8(&mut app, "out");
    let counts = app.table_with::<String, u64>("counts", crate::TableSpec::new(Utf8, Json, || 0));
    let table = counts.clone();
    app.agent(
        "count",
        &words,
        async move |batch: Batch<String, String>| {
            let mut t = batch.table(&table)?;
            for item in batch.items() {
                let (_, w) = item?;
                t.update(&w, |n| *n += 1)?;
            }
            Ok(())
        },
    );
    let changes = app.table_changes(&counts, TopicSpec::new(Utf8, Json));
    let seen = app.topic_with::<String, u64>("seen", TopicSpec::new(Utf8, Json));
    let sink = seen.clone();
    app.agent("watch", &changes, async move |batch: Batch<String, u64>| {
        for item in batch.items() {
            let (w, n) = item?;
            batch.send(&sink, Some(&w), &n)?;
        }
        Ok(())
    });
    let kept = app.table_from("counted", &changes);
    let colour_table = app.table_from("colours", &colours);
    app.table_table_join(
        &kept,
        &colour_table,
        JoinKind::Inner,
        &out,
        |n: Option<&u64>, c| format!("{}:{}", n.copied().unwrap_or(0), show(c)),
    );
    let mut d = TestDriver::new(&app).expect("driver");
    let rec = |k: &str, v: &str, ts| TestRecord::new(k.to_owned(), v.to_owned()).timestamp(ts);
    d.pipe_record(&colours, rec("a", "red", 1))
        .await
        .expect("pipe");
    d.pipe_record(&words, rec("x", "a", 2)).await.expect("pipe");
    d.pipe_record(&words, rec("x", "a", 3)).await.expect("pipe");
    d.pipe_record(&words, rec("x", "b", 4)).await.expect("pipe");
    let seen = d.read_output(&seen).expect("seen");
    assert_eq!(
        seen,
        vec![
            (Some("a".to_owned()), 1),
            (Some("a".to_owned()), 2),
            (Some("b".to_owned()), 1)
        ]
    );
    let joined: Vec<_> = results(&mut d, "out")
        .into_iter()
        .map(|(k, v, _)| (k, v))
        .collect();
    assert_eq!(
        joined,
        vec![
            ("a".to_owned(), Some("1:red".to_owned())),
            ("a".to_owned(), Some("2:red".to_owned()))
        ]
    );
}

mod stream_model {
    use super::*;
    use proptest::prelude::*;

    /// What a stream–stream join of records in timestamp order must send
    /// (one key): every pair within the window at the later timestamp, and
    /// each outer side's record without a partner at its own, once its
    /// window closed before the input ended.
    fn model(
        records: &[(bool, i64)],
        kind: JoinKind,
        before: i64,
        after: i64,
        grace: i64,
    ) -> Vec<(Option<String>, i64)> {
        let end = records.iter().map(|r| r.1).max().unwrap_or(i64::MIN);
        let name = |i: usize| format!("v{i}");
        let mut out = Vec::new();
        for (i, &(left, t)) in records.iter().enumerate() {
            let mut matched = false;
            for (j, &(other, u)) in records.iter().enumerate() {
                if other == left {
                    continue;
                }
                let (lt, rt) = if left { (t, u) } else { (u, t) };
                if lt - before <= rt && rt <= lt + after {
                    matched = true;
                    if left {
                        out.push((Some(format!("{}+{}", name(i), name(j))), t.max(u)));
                    }
                }
            }
            let outer = match kind {
                JoinKind::Inner => false,
                JoinKind::Left => left,
                JoinKind::Outer => true,
            };
            let ahead = if left { after } else { before };
            if !matched && outer && t + ahead + grace < end {
                let v = if left {
                    format!("{}+null", name(i))
                } else {
                    format!("null+{}", name(i))
                };
                out.push((Some(v), t));
            }
        }
        out.sort();
        out
    }

    fn kind() -> impl Strategy<Value = JoinKind> {
        prop_oneof![
            Just(JoinKind::Inner),
            Just(JoinKind::Left),
            Just(JoinKind::Outer)
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        /// Records of one key in timestamp order (ties included), any
        /// window, grace and kind: the join sends what the model says.
        #[test]
        fn stream_stream_joins_agree_with_the_definition(
            steps in prop::collection::vec((any::<bool>(), 0i64..12), 1..40),
            kind in kind(),
            before in 0i64..12,
            after in 0i64..12,
            grace in 0i64..8,
        ) {
            let mut t = 1000;
            let records: Vec<(bool, i64)> = steps
                .iter()
                .map(|&(left, gap)| {
                    t += gap;
                    (left, t)
                })
                .collect();
            let window = JoinWindow::symmetric(ms(0))
                .before(ms(before as u64))
                .after(ms(after as u64))
                .grace(ms(grace as u64));
            let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
            let got = rt.block_on(async {
                let (app, l, r) = stream_stream_app(kind, window);
                let mut d = TestDriver::new(&app).expect("driver");
                for (i, &(left, ts)) in records.iter().enumerate() {
                    let topic = if left { &l } else { &r };
                    let rec = TestRecord::new("k".to_owned(), format!("v{i}")).timestamp(ts);
                    d.pipe_record(topic, rec).await.expect("pipe");
                }
                let mut got: Vec<(Option<String>, i64)> = results(&mut d, "out")
                    .into_iter()
                    .map(|(_, v, ts)| (v, ts))
                    .collect();
                got.sort();
                got
            });
            prop_assert_eq!(got, model(&records, kind, before, after, grace));
        }
    }
}

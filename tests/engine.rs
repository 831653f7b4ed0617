//! The engine in-process against the harness Kafka: micro-batches with
//! `take`, the skip and stop error policies, sinks and `agent.send`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use faustus_engine::prelude::*;
use faustus_engine::Error;
use faustus_suite::{read_all, unique_topic, Deadline, ScratchDir};
use faustus_testcontainers::shared;
use faustus_wire::producer::{Producer, ProducerConfig};
use tokio::sync::Notify;

fn app(prefix: &str) -> (App, String, ScratchDir) {
    let kafka = shared().expect("kafka");
    let id = unique_topic(prefix);
    let dir = ScratchDir::new(&id);
    let props = Properties::new()
        .set("bootstrap.servers", kafka.bootstrap())
        .set("state.dir", dir.path().display().to_string())
        .set("topic.partitions", "3")
        .set("commit.interval.ms", "100");
    (App::new(&id, props), id, dir)
}

/// Registers a counter over `<id>-in` (UTF-8 keys and values): each value
/// adds one to its key in table `counts`, except `probe`, which sends the
/// key's count to `<id>-out`. Returns the input and output topics.
fn counter(app: &mut App, id: &str) -> (Topic<String, String>, Topic<String, u64>) {
    let input = app.topic_with(
        &format!("{id}-in"),
        TopicSpec::<String, String>::new(Utf8, Utf8),
    );
    let output = app.topic_with(
        &format!("{id}-out"),
        TopicSpec::<String, u64>::new(Utf8, Json),
    );
    let counts = app.table_with("counts", TableSpec::new(Utf8, Json, || 0u64));
    let out = output.clone();
    app.agent("count", &input, async move |batch| {
        let mut table = batch.table(&counts)?;
        for item in batch.items() {
            let (key, what) = item?;
            if what == "probe" {
                batch.send(&out, Some(&key), &table.get(&key)?)?;
            } else {
                table.update(&key, |n| *n += 1)?;
            }
        }
        Ok(())
    });
    (input, output)
}

/// A producer on the shared cluster, and an admin client over its connection.
async fn producer_and_admin() -> (Producer, faustus_wire::Admin) {
    let kafka = shared().expect("kafka");
    let props = Properties::new().set("bootstrap.servers", kafka.bootstrap());
    let p = Producer::connect(ProducerConfig::from_properties(&props).expect("config"))
        .await
        .expect("producer");
    let admin = faustus_wire::Admin::new(p.client().clone());
    (p, admin)
}

/// Runs a worker until `done` says its work is done, then stops it (as
/// SIGTERM would) and returns how it ended; or returns early if it fails.
async fn run_until(app: &App, done: impl AsyncFn() -> bool) -> Result<(), Error> {
    let stop = Arc::new(Notify::new());
    let signal = stop.clone();
    let worker = app.run_worker(async move { signal.notified().await });
    tokio::pin!(worker);
    let deadline = Deadline::new("the worker to finish its work", Duration::from_secs(120));
    let mut stopping = false;
    loop {
        tokio::select! {
            r = &mut worker => return r,
            _ = tokio::time::sleep(Duration::from_millis(200)), if !stopping => {
                if done().await {
                    stopping = true;
                    stop.notify_one();
                } else {
                    deadline.check("waiting");
                }
            }
        }
    }
}

/// Runs a worker as [`run_until`] does, and returns every member id its
/// group showed meanwhile: a member dropped from the group (for not polling,
/// or for missing heartbeats) joins again under a new id.
async fn run_watching_members(
    app: &App,
    admin: &faustus_wire::Admin,
    done: impl AsyncFn() -> bool,
) -> std::collections::BTreeSet<String> {
    let members = Mutex::new(std::collections::BTreeSet::new());
    run_until(app, async || {
        if let Ok(g) = admin.describe_group(app.id()).await {
            let mut seen = members.lock().expect("members");
            seen.extend(g.members.iter().map(|m| m.member_id.clone()));
        }
        done().await
    })
    .await
    .expect("worker");
    members.into_inner().expect("members")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn take_hands_agents_micro_batches_and_every_record_once() {
    let (mut app, id, _dir) = app("engine-take");
    let input = app.topic_with(
        &format!("{id}-in"),
        TopicSpec::<String, u64>::new(Utf8, Json),
    );
    let output = app.topic_with(
        &format!("{id}-out"),
        TopicSpec::<String, u64>::new(Utf8, Json),
    );
    let sizes: Arc<Mutex<Vec<usize>>> = Arc::default();
    let seen = sizes.clone();
    let out = output.clone();
    let agent = app.agent_with(
        "batcher",
        &input,
        AgentOptions::default().take(500, Duration::from_millis(300)),
        async move |batch| {
            let mut n = 0;
            for (i, item) in batch.items().enumerate() {
                let (k, v) = item?;
                batch.send(&out, Some(&k), &(v * 10))?;
                n = i + 1;
            }
            seen.lock().expect("lock").push(n);
            Ok(())
        },
    );
    let bootstrap = shared().expect("kafka").bootstrap().to_owned();
    let total = 2000u64;
    let feeder = async {
        // The topics exist once the worker has started.
        tokio::time::sleep(Duration::from_secs(2)).await;
        // One through `agent.send`, the rest queued at once.
        agent
            .send(Some(&"k0".to_string()), &0)
            .await
            .expect("agent.send");
        let props = Properties::new().set("bootstrap.servers", &bootstrap);
        let p = Producer::connect(ProducerConfig::from_properties(&props).expect("config"))
            .await
            .expect("producer");
        for i in 1..total {
            let rec = input
                .record(Some(&format!("k{}", i % 7)), &i)
                .expect("encode");
            let _ = p.send(rec).await.expect("queued");
        }
        p.close().await.expect("flushed");
    };
    let out_name = output.name().to_owned();
    let (r, ()) = tokio::join!(
        run_until(
            &app,
            async || read_all(&bootstrap, &out_name, false).await.len() as u64 >= total
        ),
        feeder
    );
    r.expect("worker");
    let out = read_all(&bootstrap, output.name(), false).await;
    let mut values: Vec<u64> = out
        .iter()
        .map(|(_, _, v)| v.parse().expect("number"))
        .collect();
    values.sort_unstable();
    assert_eq!(
        values,
        (0..total).map(|i| i * 10).collect::<Vec<_>>(),
        "every record once"
    );
    let sizes = sizes.lock().expect("lock").clone();
    assert_eq!(sizes.iter().sum::<usize>() as u64, total);
    assert!(
        sizes.iter().any(|&n| n >= 500),
        "some calls got at least 500 records: {sizes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_goes_on_past_failed_records_and_stop_names_the_record() {
    for policy in [ErrorPolicy::Skip, ErrorPolicy::Stop] {
        let (mut app, id, _dir) = app("engine-policy");
        let input = app.topic_with(
            &format!("{id}-in"),
            TopicSpec::<String, u64>::new(Utf8, Json),
        );
        let table = app.table_with("sums", TableSpec::new(Utf8, Json, || 0u64));
        let t = table.clone();
        app.agent_with(
            "summer",
            &input,
            AgentOptions::default().on_error(policy.clone()),
            async move |batch| {
                let mut sums = batch.table(&t)?;
                for ev in batch.events() {
                    let ev = ev?;
                    let v = ev.value()?;
                    if v % 10 == 3 {
                        return Err(ev.fail(format!("{v} is unlucky")));
                    }
                    sums.update(&ev.key()?, |s| *s += v)?;
                }
                Ok(())
            },
        );
        let feed = async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            for i in 0..300u64 {
                app.send(&input, Some(&"k".to_string()), &i)
                    .await
                    .expect("send");
            }
        };
        let expected: u64 = (0..300u64).filter(|v| v % 10 != 3).sum();
        let (r, ()) = tokio::join!(
            run_until(&app, async || {
                let sum: u64 = app
                    .table_entries(&table)
                    .await
                    .map(|e| e.iter().map(|(_, v)| *v).sum())
                    .unwrap_or(0);
                sum >= expected
            }),
            feed
        );
        match policy {
            ErrorPolicy::Skip => {
                r.expect("the worker goes on");
                let entries = app.table_entries(&table).await.expect("entries");
                assert_eq!(entries, vec![("k".to_string(), expected)]);
            }
            _ => {
                let e = r.expect_err("the worker stops");
                let at = e.location().expect("a record's error").clone();
                assert_eq!(at.topic, input.name());
                assert_eq!(at.offset, 3, "{e}");
                assert!(e.to_string().contains("3 is unlucky"), "{e}");
            }
        }
    }
}

/// At-least-once never commits input offsets past an output that was not
/// written: a sink topic whose `max.message.bytes` is smaller than the
/// outputs makes every send fail; the worker must stop with that error and
/// the input offsets must stay uncommitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_output_stops_the_commit() {
    // The topic's limit (the broker refuses the batch), at least once.
    failed_output_stops_the_commit(&[], "1000").await;
}

/// The same with the producer's own limit (`max.request.size`, refused
/// before sending) under exactly_once: the transaction must not commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_over_max_request_size_stops_the_transaction() {
    failed_output_stops_the_commit(
        &[
            ("processing.guarantee", "exactly_once"),
            ("max.request.size", "2000"),
        ],
        "1000000",
    )
    .await;
}

async fn failed_output_stops_the_commit(settings: &[(&str, &str)], max_message_bytes: &str) {
    let (mut app, id, _dir) = app("engine-failed-sink");
    for (k, v) in settings {
        app.set(k, v);
    }
    let (p, admin) = producer_and_admin().await;
    let (in_name, out_name) = (format!("{id}-in"), format!("{id}-out"));
    admin
        .create_topic(faustus_wire::NewTopic::new(&in_name, 3, 1), false)
        .await
        .expect("input topic");
    admin
        .create_topic(
            faustus_wire::NewTopic::new(&out_name, 3, 1)
                .config("max.message.bytes", max_message_bytes),
            false,
        )
        .await
        .expect("output topic");
    let input = app.topic_with(&in_name, TopicSpec::<String, String>::new(Utf8, Utf8));
    let output = app.topic_with(&out_name, TopicSpec::<String, String>::new(Utf8, Utf8));
    app.agent("too_big", &input, async move |batch| {
        for item in batch.items() {
            let (k, v) = item?;
            batch.send(&output, Some(&k), &v.repeat(5000))?;
        }
        Ok(())
    });
    for i in 0..30 {
        let rec = input
            .record(Some(&format!("k{i}")), &"x".to_string())
            .expect("encode");
        let _ = p.send(rec).await.expect("queued");
    }
    p.close().await.expect("input written");

    // Before the fix the worker committed and went on: stop it then, so the
    // test fails on the assertions below instead of hanging.
    let group = id.clone();
    let committed = async || {
        admin
            .group_offsets(&group)
            .await
            .is_ok_and(|o| o.keys().any(|(t, _)| *t == in_name))
    };
    let r = run_until(&app, committed).await;
    let err = r.expect_err("the worker must stop on the failed output");
    let msg = err.to_string();
    assert!(msg.contains(&out_name), "the error names the topic: {msg}");
    let offsets = admin.group_offsets(&id).await.unwrap_or_default();
    assert!(
        !offsets.keys().any(|(t, _)| *t == in_name),
        "input offsets were committed past failed outputs: {offsets:?}"
    );
}

/// A `take` agent beside another agent of the same topic is refused at
/// start (a shared position would commit past what `take` still holds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn take_beside_another_agent_of_its_topic_is_refused() {
    let (mut app, id, _dir) = app("engine-take-mixed");
    let input = app.topic_with(
        &format!("{id}-in"),
        TopicSpec::<String, u64>::new(Utf8, Json),
    );
    app.agent_with(
        "gatherer",
        &input,
        AgentOptions::default().take(100, Duration::from_millis(100)),
        async move |_batch| Ok(()),
    );
    app.agent("per_batch", &input, async move |_batch| Ok(()));
    let err = app
        .run_worker(std::future::pending())
        .await
        .expect_err("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("gatherer") && msg.contains("per_batch"),
        "{msg}"
    );
}

/// A table partition whose store stopped at an offset the changelog no
/// longer has (records after it deleted, their tombstones with them) is
/// wiped and rebuilt, not replayed over: a key deleted in the lost records
/// must not survive in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_behind_its_changelogs_start_is_rebuilt() {
    let (mut app, id, _dir) = app("engine-rebuild");
    let kafka = shared().expect("kafka");
    let (p, admin) = producer_and_admin().await;
    // The changelog made deletable, so records can be deleted under it.
    let changelog = format!("{id}-counts-changelog");
    admin
        .create_topic(
            faustus_wire::NewTopic::new(&changelog, 3, 1)
                .config("cleanup.policy", "compact,delete")
                .config("retention.ms", "-1"),
            false,
        )
        .await
        .expect("changelog");
    admin
        .create_topic(faustus_wire::NewTopic::new(format!("{id}-in"), 3, 1), false)
        .await
        .expect("input");
    let (input, output) = counter(&mut app, &id);
    let send = async |what: &str| {
        let rec = input
            .record(Some(&"a".to_string()), &what.to_string())
            .expect("encode");
        let _ = p.send(rec).await.expect("queued");
        p.flush().await.expect("written");
    };

    // 1. Count "a" once; stop when the input offset is committed (the
    //    store was written before it).
    send("count").await;
    let committed = async || {
        admin.group_offsets(&id).await.is_ok_and(|o| {
            o.iter()
                .any(|((t, _), off)| *t == input.name() && *off >= 1)
        })
    };
    run_until(&app, committed).await.expect("first run");

    // 2. Meanwhile "a" is deleted (a tombstone), and the changelog records
    //    up to its end are deleted with it.
    let part = faustus_wire::producer::partition_for_key(b"a", 3);
    let _ = p
        .send(
            faustus_wire::producer::ProducerRecord::new(&changelog)
                .key("a")
                .partition(part),
        )
        .await
        .expect("tombstone");
    p.flush().await.expect("tombstone written");
    let end = admin
        .list_offsets(&changelog, &[part], faustus_wire::OffsetSpec::Latest, false)
        .await
        .expect("end")[&part];
    admin
        .delete_records(&changelog, &[(part, end)].into_iter().collect())
        .await
        .expect("delete records");

    // 3. Restarted on the same state directory, the worker answers a probe
    //    with what the changelog says: no "a" (0), not the stale 1.
    send("probe").await;
    let bootstrap = kafka.bootstrap().to_owned();
    let out_name = output.name().to_owned();
    run_until(&app, async || {
        !read_all(&bootstrap, &out_name, false).await.is_empty()
    })
    .await
    .expect("second run");
    let probed = read_all(&bootstrap, output.name(), false).await;
    assert_eq!(
        probed
            .iter()
            .map(|(_, k, v)| (k.as_str(), v.as_str()))
            .collect::<Vec<_>>(),
        vec![("a", "0")],
        "the deleted key survived in the store"
    );
}

/// Restoring a changelog takes longer than `max.poll.interval.ms`: the
/// worker restores between polls with the source paused, so it stays in its
/// group and then answers from the whole table. (Restoring inside one poll,
/// the member is dropped from the group for not polling, loses the task,
/// and with a memory store starts over on every re-assignment: the probe is
/// never answered.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_longer_than_the_poll_interval_keeps_the_worker_in_its_group() {
    const RECORDS: u64 = 2_000_000;
    const KEYS: u64 = 1_000;
    let (mut app, id, _dir) = app("engine-restore");
    app.set("store", "memory");
    app.set("max.poll.interval.ms", "1000");
    app.set("fetch.max.wait.ms", "100");
    let (p, admin) = producer_and_admin().await;
    let changelog = format!("{id}-counts-changelog");
    admin
        .create_topic(
            faustus_wire::NewTopic::new(&changelog, 1, 1).config("cleanup.policy", "compact"),
            false,
        )
        .await
        .expect("changelog");
    admin
        .create_topic(faustus_wire::NewTopic::new(format!("{id}-in"), 1, 1), false)
        .await
        .expect("input");
    // The table as a previous run left it: key k<i % KEYS> counted up to
    // RECORDS / KEYS.
    for i in 0..RECORDS {
        let rec = faustus_wire::producer::ProducerRecord::new(&changelog)
            .key(format!("k{}", i % KEYS))
            .value((i / KEYS + 1).to_string())
            .partition(0);
        let _ = p.send(rec).await.expect("queued");
    }
    p.flush().await.expect("changelog written");

    let (input, output) = counter(&mut app, &id);
    let probe = input
        .record(Some(&"k7".to_string()), &"probe".to_string())
        .expect("encode");
    let _ = p.send(probe).await.expect("queued");
    p.flush().await.expect("probe written");

    let bootstrap = shared().expect("kafka").bootstrap().to_owned();
    let out_name = output.name().to_owned();
    let members = run_watching_members(&app, &admin, async || {
        !read_all(&bootstrap, &out_name, false).await.is_empty()
    })
    .await;
    assert_eq!(
        members.len(),
        1,
        "the worker left its group and joined again while restoring: {members:?}"
    );
    let answers = read_all(&bootstrap, output.name(), false).await;
    let want = (RECORDS / KEYS).to_string();
    assert_eq!(
        answers
            .iter()
            .map(|(_, k, v)| (k.as_str(), v.as_str()))
            .collect::<Vec<_>>(),
        vec![("k7", want.as_str())],
        "the probe saw a table not fully restored, or was answered twice"
    );
}

/// A call that holds the worker's thread (a slow RocksDB read or write, here
/// an agent blocking for longer than `session.timeout.ms`) delays the
/// agents but not the group: heartbeats run in the client's own tasks on the
/// runtime's worker threads, so the member keeps its id and its partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_loop_thread_does_not_stop_the_heartbeats() {
    let (mut app, id, _dir) = app("engine-blocked");
    app.set("session.timeout.ms", "6000");
    app.set("heartbeat.interval.ms", "500");
    let (p, admin) = producer_and_admin().await;
    admin
        .create_topic(faustus_wire::NewTopic::new(format!("{id}-in"), 1, 1), false)
        .await
        .expect("input");
    let input = app.topic_with(
        &format!("{id}-in"),
        TopicSpec::<String, String>::new(Utf8, Utf8),
    );
    let output = app.topic_with(
        &format!("{id}-out"),
        TopicSpec::<String, String>::new(Utf8, Utf8),
    );
    let out = output.clone();
    app.agent("slow", &input, async move |batch| {
        for item in batch.items() {
            let (key, value) = item?;
            if value == "block" {
                // Longer than the session timeout, on the loop's thread.
                std::thread::sleep(Duration::from_secs(8));
            }
            batch.send(&out, Some(&key), &value)?;
        }
        Ok(())
    });
    for v in ["block", "after"] {
        let rec = input
            .record(Some(&"k".to_string()), &v.to_string())
            .expect("encode");
        let _ = p.send(rec).await.expect("queued");
    }
    p.flush().await.expect("written");

    let bootstrap = shared().expect("kafka").bootstrap().to_owned();
    let out_name = output.name().to_owned();
    let members = run_watching_members(&app, &admin, async || {
        read_all(&bootstrap, &out_name, false).await.len() >= 2
    })
    .await;
    assert_eq!(
        members.len(),
        1,
        "the member was dropped while its loop thread was blocked: {members:?}"
    );
    let out = read_all(&bootstrap, output.name(), false).await;
    assert_eq!(
        out.iter().map(|(_, _, v)| v.as_str()).collect::<Vec<_>>(),
        vec!["block", "after"],
        "each record once, in order"
    );
}

/// Polls `cond` every 100 ms until it holds; panics after a minute.
async fn wait_for(what: &str, cond: impl AsyncFn() -> bool) {
    let deadline = Deadline::new(what, Duration::from_secs(60));
    while !cond().await {
        deadline.check("waiting");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Worker A loses its table partition to B and gets it back within one of
/// its polls, while B writes to the partition's changelog in between. A
/// must see B's writes (its kept store is checked against the changelog and
/// the gap replayed), not go on from its own stale state.
///
/// How it is forced: A has a long fetch wait (8 s), so once it owns nothing its
/// `poll` sits in the fetch wait and handles both rebalances (B joining,
/// B leaving) inside the same call. A is a static member whose instance id
/// sorts after B's member id, so the range assignor gives the one
/// partition to B while B is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_lost_and_regained_within_one_poll_sees_the_writes_in_between() {
    let kafka = shared().expect("kafka");
    let id = unique_topic("engine-regain");
    let dir_a = ScratchDir::new(&format!("{id}-a"));
    let dir_b = ScratchDir::new(&format!("{id}-b"));
    let (p, admin) = producer_and_admin().await;
    admin
        .create_topic(faustus_wire::NewTopic::new(format!("{id}-in"), 1, 1), false)
        .await
        .expect("input");
    let build = |dir: &ScratchDir, extra: &[(&str, &str)]| {
        let mut props = Properties::new()
            .set("bootstrap.servers", kafka.bootstrap())
            .set("state.dir", dir.path().display().to_string())
            .set("commit.interval.ms", "100");
        for (k, v) in extra {
            props.insert(*k, *v);
        }
        let mut app = App::new(&id, props);
        let (input, output) = counter(&mut app, &id);
        (app, input, output)
    };
    let (app_a, input, output) = build(
        &dir_a,
        &[
            ("group.instance.id", "zzz-worker-a"),
            ("fetch.max.wait.ms", "8000"),
            ("session.timeout.ms", "10000"),
        ],
    );
    let (app_b, _, _) = build(&dir_b, &[]);
    let send = async |what: &str, n: usize| {
        for _ in 0..n {
            let rec = input
                .record(Some(&"x".to_string()), &what.to_string())
                .expect("encode");
            let _ = p.send(rec).await.expect("queued");
        }
        p.flush().await.expect("written");
    };
    let committed = async |at: i64| {
        admin
            .group_offsets(&id)
            .await
            .is_ok_and(|o| o.values().any(|&off| off >= at))
    };
    let b_owns_it = async || {
        admin.describe_group(&id).await.is_ok_and(|g| {
            g.members
                .iter()
                .any(|m| m.instance_id.is_none() && m.assignment.values().any(|ps| !ps.is_empty()))
        })
    };
    let (stop_a, stop_b, start_b) = (Notify::new(), Notify::new(), Notify::new());
    let worker_a = app_a.run_worker(stop_a.notified());
    let worker_b = async {
        start_b.notified().await;
        app_b.run_worker(stop_b.notified()).await
    };
    let script = async {
        // A alone counts x to 5.
        send("inc", 5).await;
        wait_for("A to commit 5", async || committed(5).await).await;
        // B joins and takes the partition; it counts x to 8.
        start_b.notify_one();
        wait_for("B to own the partition", b_owns_it).await;
        send("inc", 3).await;
        wait_for("B to commit 8", async || committed(8).await).await;
        // B leaves; A gets the partition back in the poll it is still in.
        stop_b.notify_one();
    };
    let (a_result, b_result, ()) = tokio::join!(
        async {
            let r = worker_a.await;
            r
        },
        async {
            let r = worker_b.await;
            // Then A must answer the probe from B's count.
            send("probe", 1).await;
            let bootstrap = kafka.bootstrap().to_owned();
            let out_name = output.name().to_owned();
            wait_for("A to answer the probe", async || {
                !read_all(&bootstrap, &out_name, false).await.is_empty()
            })
            .await;
            stop_a.notify_one();
            r
        },
        script,
    );
    a_result.expect("worker a");
    b_result.expect("worker b");
    let answers = read_all(kafka.bootstrap(), output.name(), false).await;
    assert_eq!(
        answers
            .iter()
            .map(|(_, k, v)| (k.as_str(), v.as_str()))
            .collect::<Vec<_>>(),
        vec![("x", "8")],
        "A answered from its state before B's writes"
    );
}

/// A tumbling windowed count against Kafka: the changelog is created
/// `compact,delete` with the windows' retention plus a day, counts land per
/// window, a record for a closed window is dropped, and a restarted worker
/// without its state directory goes on with the stream time from the
/// changelog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tumbling_window_counts_survive_a_restart_without_local_state() {
    let (mut app, id, dir) = app("engine-windows");
    let (p, admin) = producer_and_admin().await;
    admin
        .create_topic(faustus_wire::NewTopic::new(format!("{id}-in"), 3, 1), false)
        .await
        .expect("input");
    let input = app.topic_with(
        &format!("{id}-in"),
        TopicSpec::<String, String>::new(Utf8, Utf8),
    );
    let counts = app
        .table_with("per-second", TableSpec::new(Utf8, Json, || 0u64))
        .tumbling(Duration::from_secs(1))
        .expires(Duration::from_secs(3600));
    let table = counts.clone();
    app.agent("count", &input, async move |batch| {
        let mut t = batch.windowed(&table)?;
        for ev in batch.events() {
            let ev = ev?;
            t.update(&ev, &ev.key()?, |n| *n += 1)?;
        }
        Ok(())
    });
    // Event times near now (the broker's retention goes by record
    // timestamps), on a second boundary so windows line up with offsets.
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
        / 1000
        * 1000
        - 60_000;
    let send = async |key: &str, ts: i64| {
        let mut rec = input
            .record(Some(&key.to_string()), &"c".to_string())
            .expect("encode");
        rec.timestamp = Some(base + ts);
        let _ = p.send(rec).await.expect("queued");
        p.flush().await.expect("written");
    };
    let committed = async |n: i64| {
        admin
            .group_offsets(&id)
            .await
            .is_ok_and(|o| o.values().sum::<i64>() >= n)
    };
    for ts in [100, 900, 1_500, 5_000] {
        send("a", ts).await;
    }
    run_until(&app, async || committed(4).await)
        .await
        .expect("first run");

    // Without its state directory, the worker restores from the changelog,
    // stream time (5 s) included: a record for [0, 1 s) is late.
    std::fs::remove_dir_all(dir.path()).expect("remove state");
    send("a", 200).await;
    send("a", 5_500).await;
    run_until(&app, async || committed(6).await)
        .await
        .expect("second run");

    let got: Vec<(i64, u64)> = app
        .windowed_table_entries(&counts)
        .await
        .expect("entries")
        .into_iter()
        .map(|(_, w, n)| (w.start - base, n))
        .collect();
    assert_eq!(got, vec![(0, 2), (1_000, 1), (5_000, 2)]);

    let config: std::collections::BTreeMap<String, Option<String>> = admin
        .describe_topic_config(&format!("{id}-per-second-changelog"))
        .await
        .expect("changelog config")
        .into_iter()
        .collect();
    assert_eq!(
        config["cleanup.policy"].as_deref(),
        Some("compact,delete"),
        "windows expire, so their changelog may too"
    );
    // Retention 1 h, plus a day's margin.
    assert_eq!(
        config["retention.ms"].as_deref(),
        Some((3_600_000i64 + 86_400_000).to_string().as_str())
    );
}

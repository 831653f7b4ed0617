//! Broker faults under the exactly-once page-view counter
//! (`examples/page_views.rs`): on a 3-node harness cluster, every broker
//! killed and restarted in turn while two workers count, and the group
//! coordinator's broker paused past the session timeout; on a 1-node
//! cluster, its only broker down for 70 s. The check is the
//! changelog, read read_committed: every URL's count is exactly its clicks.
//!
//! The tests share one cluster and take turns.

use std::sync::OnceLock;
use std::time::Duration;

use faustus_suite::{stop_worker, Deadline, PageViewRun};
use faustus_testcontainers::KafkaCluster;
use faustus_wire::coordinator::CoordinatorType;
use faustus_wire::{Client, ClientConfig};

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn kafka() -> &'static KafkaCluster {
    static CLUSTER: OnceLock<KafkaCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| KafkaCluster::start(3).expect("3-node cluster"))
}

/// A 1-node cluster of its own (the shared one must stay up for others).
fn single() -> &'static KafkaCluster {
    static CLUSTER: OnceLock<KafkaCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| KafkaCluster::start(1).expect("1-node cluster"))
}

/// The page-view app on the shared 3-node cluster.
async fn run(prefix: &str) -> PageViewRun {
    PageViewRun::new(kafka().bootstrap(), 3, prefix).await
}

/// How long a test waits for the table to count every click.
const SETTLE: Duration = Duration::from_secs(240);

/// Each of the 3 brokers killed (SIGKILL) and restarted in turn,
/// `PV_BOUNCE_ROUNDS` rounds (default 5), while two exactly-once workers
/// count a steady stream of clicks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_broker_kills_under_two_exactly_once_workers_count_exactly() {
    let _turn = TURN.lock().await;
    let rounds: usize = std::env::var("PV_BOUNCE_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let run = run("bf-bounce").await;
    let a = run.worker("a");
    let b = run.worker("b");
    // Enough clicks to last through the bounces (about 10 s each).
    let n = rounds * 3 * 10 * 300;
    let sending = run.clicks(n, 300);
    for round in 0..rounds {
        for node in 1..=3 {
            kafka()
                .kill(node)
                .unwrap_or_else(|e| panic!("round {round}: kill {node}: {e}"));
            tokio::time::sleep(Duration::from_secs(2)).await;
            kafka()
                .start_node(node)
                .unwrap_or_else(|e| panic!("round {round}: start {node}: {e}"));
        }
    }
    let expected = sending.await.expect("sender");
    run.await_counts(&expected, &["a", "b"], SETTLE).await;
    stop_worker(a);
    stop_worker(b);
}

/// The group coordinator's broker paused (SIGSTOP) for 20 s, past the
/// workers' session timeout, then resumed: the group moves on, and the
/// counts stay exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_coordinators_broker_paused_for_20_s() {
    let _turn = TURN.lock().await;
    let run = run("bf-pause").await;
    let a = run.worker("a");
    let b = run.worker("b");
    let sending = run.clicks(30 * 500, 500);
    let client = Client::connect(ClientConfig::new(kafka().bootstrap()).expect("config"))
        .await
        .expect("client");
    let deadline = Deadline::new("the group's coordinator", Duration::from_secs(60));
    let addr = loop {
        match client
            .refresh_coordinator(CoordinatorType::Group, &run.app)
            .await
        {
            Ok(a) => break a,
            Err(e) => deadline.check(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let node = client
        .cluster()
        .brokers
        .iter()
        .find(|(_, a)| **a == addr)
        .map(|(id, _)| *id as usize)
        .expect("the coordinator is a known broker");
    tokio::time::sleep(Duration::from_secs(3)).await;
    kafka().pause(node).expect("pause");
    tokio::time::sleep(Duration::from_secs(20)).await;
    kafka().resume(node).expect("resume");
    let expected = sending.await.expect("sender");
    run.await_counts(&expected, &["a", "b"], SETTLE).await;
    stop_worker(a);
    stop_worker(b);
}

/// The only broker of a 1-node cluster stopped for `FAUSTUS_OUTAGE_SECS`
/// (default 70) under an exactly-once worker, then started again: the
/// worker keeps saying that the cluster is unreachable, resumes by itself
/// (its open transaction was aborted by the coordinator's timeout: the
/// producer recovers its epoch), and every click is counted exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_only_broker_down_for_70_s_and_back() {
    let _turn = TURN.lock().await;
    let secs: u64 = std::env::var("FAUSTUS_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(70);
    let run = PageViewRun::new(single().bootstrap(), 1, "bf-outage").await;
    let a = run.worker("a");
    let before = run.clicks(3000, 1000).await.expect("sender");
    run.await_counts(&before, &["a"], SETTLE).await;
    // More clicks are queued in the sender while the broker is away.
    let during = run.clicks(3000, 100);
    tokio::time::sleep(Duration::from_secs(2)).await;
    single().kill(1).expect("kill the broker");
    tokio::time::sleep(Duration::from_secs(secs)).await;
    single().start_node(1).expect("start the broker");
    let mut expected = before;
    for (url, n) in during.await.expect("sender") {
        *expected.entry(url).or_default() += n;
    }
    run.await_counts(&expected, &["a"], SETTLE).await;
    let log = std::fs::read_to_string(run.dir.path().join("a.log")).unwrap_or_default();
    let warnings = log
        .lines()
        .filter(|l| l.contains("Kafka cluster unreachable"))
        .count() as u64;
    assert!(
        warnings >= secs / 15,
        "{warnings} unreachable warnings in a {secs} s outage:\n{}",
        faustus_suite::log_tail(&log, 40)
    );
    stop_worker(a);
}

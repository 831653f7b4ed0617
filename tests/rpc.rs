//! Agent RPC end to end (`examples/rpc.rs` against the harness Kafka):
//! `ask` gives a timeout error while the agent is down and the reply once
//! it runs (under exactly-once, its reply inside the agent's transaction);
//! `join` gives the replies in the order asked.

use std::process::{Command, Output, Stdio};

use faustus_suite::{unique_topic, ScratchDir};
use faustus_testcontainers::shared;

fn ask(app: &str, topic: &str, bootstrap: &str, timeout_ms: u64, numbers: &[&str]) -> Output {
    Command::new(faustus_suite::example_binary("rpc"))
        .env("RPC_APP", app)
        .env("RPC_TOPIC", topic)
        .env("RPC_TIMEOUT_MS", timeout_ms.to_string())
        .args(["-b", bootstrap, "ask"])
        .args(numbers)
        .output()
        .expect("rpc ask runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_times_out_while_the_agent_is_down_and_is_answered_once_it_runs() {
    let kafka = shared().expect("kafka");
    let bootstrap = kafka.bootstrap().to_owned();
    let app = unique_topic("rpc");
    let topic = format!("{app}-numbers");
    let dir = ScratchDir::new(&app);
    faustus_suite::create_topic(&bootstrap, &topic, 2).await;

    // No worker: the request waits in the topic, and the asker gives up.
    let out = ask(&app, &topic, &bootstrap, 1500, &["7"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "no agent, yet: {stderr}");
    assert!(stderr.contains("timed out after 1.5s"), "{stderr}");
    assert!(out.stdout.is_empty());

    std::fs::create_dir_all(dir.path()).expect("scratch dir");
    let log_path = dir.path().join("worker.log");
    let worker = Command::new(faustus_suite::example_binary("rpc"))
        .env("RPC_APP", &app)
        .env("RPC_TOPIC", &topic)
        .args(["-b", &bootstrap])
        .args([
            "-X",
            &format!("state.dir={}", dir.path().join("w").display()),
            "-X",
            "processing.guarantee=exactly_once",
            "-X",
            "topic.partitions=2",
        ])
        .args(["worker", "-l", "info"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).expect("log"))
        .spawn()
        .expect("worker starts");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // The worker answers (the first ask waits for it to join its group).
    let out = ask(&app, &topic, &bootstrap, 60_000, &["7"]);
    assert!(
        out.status.success(),
        "{}\nworker: {}",
        String::from_utf8_lossy(&out.stderr),
        faustus_suite::log_tail(&log(), 20)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "49\n");

    // Many at once: replies in the order asked, whatever order they come.
    let numbers: Vec<String> = (1..=20).map(|n| n.to_string()).collect();
    let refs: Vec<&str> = numbers.iter().map(String::as_str).collect();
    let out = ask(&app, &topic, &bootstrap, 30_000, &refs);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected: String = (1..=20u64).map(|n| format!("{}\n", n * n)).collect();
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);

    // As they come (`map`): every reply once, with its request's index.
    let out = Command::new(faustus_suite::example_binary("rpc"))
        .env("RPC_APP", &app)
        .env("RPC_TOPIC", &topic)
        .env("RPC_AS_THEY_COME", "1")
        .args(["-b", &bootstrap, "ask"])
        .args(&refs)
        .output()
        .expect("rpc ask runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut got: Vec<(usize, u64)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (i, v) = l.split_once('=').expect("INDEX=REPLY");
            (i.parse().expect("index"), v.parse().expect("reply"))
        })
        .collect();
    got.sort_unstable();
    let expected: Vec<(usize, u64)> = (1..=20u64).map(|n| (n as usize - 1, n * n)).collect();
    assert_eq!(got, expected);

    faustus_suite::stop_worker(worker);
}

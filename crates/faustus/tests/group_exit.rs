//! `faustus consume -G` commits what it printed whenever it leaves cleanly:
//! stopped by SIGTERM in a group it shares with Kafka's own Java consumer,
//! the Java member takes its partitions over and reads nothing twice; ended
//! by `-c` in the middle of a fetch, the next run starts right after the
//! last record printed.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use faustus_testcontainers::{shared, unique_name};

fn faustus() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_faustus"));
    cmd.env("KAFKA_BOOTSTRAP", shared().expect("kafka").bootstrap());
    cmd
}

fn run(args: &[&str], stdin: &str) -> String {
    common::stdout_of(common::run_with(faustus().args(args), Some(stdin)), args)
}

/// Collects a child's stdout (or stderr) lines as they come.
fn lines_of(stream: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            sink.lock().expect("lines").push(line);
        }
    });
    lines
}

/// Waits (bounded) until `done` holds, naming `what` if it never does.
fn await_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn produce(topic: &str, round: &str, n: usize) {
    let lines: String = (0..n).map(|i| format!("k{i}:{round}-{i}\n")).collect();
    run(&["produce", "-t", topic, "-K", ":"], &lines);
}

#[test]
fn a_java_member_reads_nothing_twice_after_faustus_leaves_by_sigterm() {
    let kafka = shared().expect("kafka");
    let topic = unique_name("mixed-group");
    let group = unique_name("mixed-g");
    run(&["topics", "create", &topic, "-P", "6"], "");

    let mut ours = faustus()
        .args(["consume", "-G", &group, "-o", "beginning", &topic])
        .args(["-X", "partition.assignment.strategy=cooperative-sticky"])
        // No periodic commit in between: only leaving commits here.
        .args(["-X", "auto.commit.interval.ms=3600000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("faustus consume");
    let ours_out = lines_of(ours.stdout.take().expect("stdout"));
    let ours_err = lines_of(ours.stderr.take().expect("stderr"));
    await_until("faustus joined", Duration::from_secs(60), || {
        ours_err
            .lock()
            .expect("lines")
            .iter()
            .any(|l| l.contains("assigned:"))
    });

    let mut java = kafka.tool("console-consumer");
    java.args(["--bootstrap-server", kafka.bootstrap(), "--topic", &topic])
        .args(["--group", &group])
        .args([
            "--consumer-property",
            "partition.assignment.strategy=org.apache.kafka.clients.consumer.CooperativeStickyAssignor",
        ])
        .args(["--consumer-property", "auto.offset.reset=earliest"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut java = Killed(java.spawn().expect("java console consumer"));
    let java_out = lines_of(java.0.stdout.take().expect("stdout"));
    // Both members own partitions once faustus has given some up.
    await_until("the Java member joined", Duration::from_secs(90), || {
        ours_err
            .lock()
            .expect("lines")
            .iter()
            .any(|l| l.contains("revoked:"))
    });

    produce(&topic, "first", 3000);
    let printed = |round: &str| {
        let count = |l: &Arc<Mutex<Vec<String>>>| {
            l.lock()
                .expect("lines")
                .iter()
                .filter(|v| v.starts_with(round))
                .count()
        };
        (count(&ours_out), count(&java_out))
    };
    await_until("the first round read", Duration::from_secs(60), || {
        let (a, b) = printed("first-");
        a + b >= 3000
    });
    let (ours_first, java_first) = printed("first-");
    assert!(
        ours_first > 0 && java_first > 0,
        "faustus {ours_first}, java {java_first}"
    );

    let status = Command::new("kill")
        .args(["-TERM", &ours.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = ours.wait().expect("faustus exits");
    assert!(exit.success(), "faustus after SIGTERM: {exit:?}");

    // The Java member now owns every partition, from what faustus committed.
    produce(&topic, "second", 3000);
    await_until(
        "the Java member read the second round",
        Duration::from_secs(90),
        || printed("second-").1 >= 3000,
    );
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for v in ours_out
        .lock()
        .expect("lines")
        .iter()
        .chain(java_out.lock().expect("lines").iter())
    {
        *seen.entry(v.clone()).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "read twice: {twice:?}");
    assert_eq!(seen.len(), 6000);
}

#[test]
fn ending_by_count_commits_only_what_was_printed() {
    let topic = unique_name("count-commit");
    let group = unique_name("count-g");
    run(&["topics", "create", &topic, "-P", "1"], "");
    produce(&topic, "r", 100);
    let first = run(
        &[
            "consume",
            "-G",
            &group,
            "-o",
            "beginning",
            "-c",
            "30",
            "-q",
            &topic,
        ],
        "",
    );
    let rest = run(&["consume", "-G", &group, "-e", "-q", &topic], "");
    let want: Vec<String> = (0..100).map(|i| format!("r-{i}")).collect();
    let got: Vec<&str> = first.lines().chain(rest.lines()).collect();
    assert_eq!(got, want);
}

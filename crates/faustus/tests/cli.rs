//! The `faustus` binary's kcat-style commands against the harness Kafka.

use std::io::Write;
use std::process::{Command, Stdio};

mod common;

use faustus_testcontainers::{shared, unique_name as unique_topic};

fn faustus() -> Command {
    Command::new(env!("CARGO_BIN_EXE_faustus"))
}

fn run(args: &[&str], stdin: Option<&str>) -> String {
    let kafka = shared().expect("kafka");
    let out = common::run_with(
        faustus()
            .args(args)
            .env("KAFKA_BOOTSTRAP", kafka.bootstrap()),
        stdin,
    );
    common::stdout_of(out, args)
}

#[test]
fn produce_consume_and_topics() {
    let topic = unique_topic("cli");
    run(&["topics", "create", &topic, "-P", "2"], None);
    assert!(run(&["topics", "list"], None).contains(&topic));

    let lines: String = (0..50).map(|i| format!("key{i}:value{i}\n")).collect();
    run(
        &[
            "produce",
            "-t",
            &topic,
            "-K",
            ":",
            "-X",
            "compression.type=lz4",
        ],
        Some(&lines),
    );

    let out = run(
        &["consume", "-t", &topic, "-e", "-f", "%k=%s %K %S\\n"],
        None,
    );
    let mut got: Vec<&str> = out.lines().collect();
    got.sort_unstable();
    let mut want: Vec<String> = (0..50)
        .map(|i| {
            let (k, v) = (format!("key{i}"), format!("value{i}"));
            format!("{k}={v} {} {}", k.len(), v.len())
        })
        .collect();
    want.sort_unstable();
    assert_eq!(got, want);

    // -c stops after COUNT records; -p reads one partition; -o -1 the last.
    assert_eq!(
        run(&["consume", "-t", &topic, "-c", "7"], None)
            .lines()
            .count(),
        7
    );
    let p0 = run(
        &["consume", "-t", &topic, "-p", "0", "-e", "-f", "%p\\n"],
        None,
    );
    assert!(p0.lines().all(|l| l == "0"));
    let last = run(
        &[
            "consume", "-t", &topic, "-p", "0", "-o", "-1", "-e", "-f", "%o\\n",
        ],
        None,
    );
    let count0 = p0.lines().count();
    assert_eq!(last.trim(), (count0 - 1).to_string());

    let described = run(&["topics", "describe", &topic], None);
    assert!(described.contains("2 partitions"), "{described}");
    run(&["topics", "delete", &topic], None);
}

#[test]
fn groups_consume_describe_reset_and_delete() {
    let topic = unique_topic("cli-group");
    let group = unique_topic("cli-g");
    run(&["topics", "create", &topic, "-P", "3"], None);
    let lines: String = (0..100).map(|i| format!("k{i}:v{i}\n")).collect();
    run(&["produce", "-t", &topic, "-K", ":"], Some(&lines));

    // From the start where the group has no committed offset (kcat: -o).
    let from_start = || {
        run(
            &[
                "consume",
                "-G",
                &group,
                "-t",
                &topic,
                "-o",
                "beginning",
                "-e",
            ],
            None,
        )
    };
    let first = from_start();
    assert_eq!(first.lines().count(), 100);
    // Committed: a second run of the group has nothing left to read.
    let again = run(&["consume", "-G", &group, "-t", &topic, "-e"], None);
    assert_eq!(again.lines().count(), 0);

    assert!(run(&["groups", "list"], None).contains(&group));
    let described = run(&["groups", "describe", &group], None);
    assert!(described.contains("lag 0"), "{described}");
    assert!(!described.contains("lag 1"), "{described}");

    run(
        &[
            "groups",
            "reset-offsets",
            &group,
            "-t",
            &topic,
            "--to-earliest",
        ],
        None,
    );
    let replay = from_start();
    assert_eq!(replay.lines().count(), 100);

    run(&["groups", "delete", &group], None);
    assert!(!run(&["groups", "list"], None).contains(&group));
}

#[test]
fn demo_round_trips() {
    let out = run(&["demo", "-n", "20000"], None);
    assert!(out.contains("round trip of 20000 / 20000 records"), "{out}");
}

#[test]
fn bad_flags_fail_with_a_message() {
    let out = faustus()
        .args(["consume", "-b", "127.0.0.1:1", "-t", "x", "-f", "%z"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown token %z"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn usage_and_connection_errors_are_one_line() {
    let fail = |args: &[&str], env: Option<&str>| {
        let mut cmd = faustus();
        cmd.args(args).env_remove("KAFKA_BOOTSTRAP");
        if let Some(b) = env {
            cmd.env("KAFKA_BOOTSTRAP", b);
        }
        let out = cmd.stdin(Stdio::null()).output().expect("runs");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
            "{err}"
        );
        (out.status.code(), err)
    };
    let (code, err) = fail(
        &["consume", "-t", "x", "--no-such-flag"],
        Some("127.0.0.1:1"),
    );
    assert_eq!(code, Some(2));
    assert!(
        err.contains("--no-such-flag") && err.contains("--help"),
        "{err}"
    );
    let (code, err) = fail(&["consume", "-t", "x", "-e"], None);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("-b HOST:PORT") && err.contains("KAFKA_BOOTSTRAP"),
        "{err}"
    );
    // Nothing listens on port 1: refused at once, reported within -m.
    let (code, err) = fail(&["-C", "-t", "x", "-e", "-m", "2"], Some("127.0.0.1:1"));
    assert_eq!(code, Some(1));
    assert!(
        err.contains("127.0.0.1:1") && err.contains("-b HOST:PORT"),
        "{err}"
    );
}

#[test]
fn compression_and_a_properties_file() {
    let kafka = shared().expect("kafka");
    let topic = unique_topic("cli-z");
    let dir = std::env::temp_dir().join(unique_topic("cli-props"));
    std::fs::create_dir_all(&dir).expect("dir");
    let props = dir.join("client.properties");
    std::fs::write(
        &props,
        format!(
            "# as kcat -F\nbootstrap.servers={}\nclient.id=from-file\n",
            kafka.bootstrap()
        ),
    )
    .expect("write");
    let lines: String = (0..1000).map(|i| format!("record-{i}\n")).collect();
    // No -b and no KAFKA_BOOTSTRAP: the file names the broker.
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let mut child = faustus()
            .args(["produce", "-t", &topic, "-z", codec, "-F"])
            .arg(&props)
            .env_remove("KAFKA_BOOTSTRAP")
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("faustus runs");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(lines.as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("exits");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = run(&["consume", "-t", &topic, "-e", "-q"], None);
    assert_eq!(out.lines().count(), 4000);
    assert!(out.lines().take(1000).eq(lines.lines()));
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn app_status_shows_members_lag_per_partition_and_internal_topics() {
    let app = unique_topic("cli-app");
    let input = format!("{app}-in");
    run(&["topics", "create", &input, "-P", "2"], None);
    run(
        &[
            "topics",
            "create",
            &format!("{app}-counts-changelog"),
            "-P",
            "2",
        ],
        None,
    );
    let lines: String = (0..10).map(|i| format!("k{i}:v{i}\n")).collect();
    run(&["produce", "-t", &input, "-K", ":"], Some(&lines));
    // The app's group consumes all of it, then 5 more records come.
    run(
        &["consume", "-G", &app, "-t", &input, "-o", "beginning", "-e"],
        None,
    );
    let more: String = (10..15).map(|i| format!("k{i}:v{i}\n")).collect();
    run(&["produce", "-t", &input, "-K", ":"], Some(&more));
    let status = run(&["app", "status", &app], None);
    assert!(
        status.contains(&format!("app {app}: group Empty, 0 members")),
        "{status}"
    );
    assert!(status.contains("input lag 5"), "{status}");
    assert!(
        status.contains(&format!("{input}-0\tcommitted")),
        "{status}"
    );
    assert!(status.contains("owner -"), "{status}");
    assert!(
        status.contains(&format!("{app}-counts-changelog\t2 partitions\t0 records")),
        "{status}"
    );
    assert!(
        !status.contains(&format!("  {input}\t2 partitions")),
        "{status}"
    );
}

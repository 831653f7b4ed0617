//! The `faustus` command line side by side with kcat on the harness Kafka:
//! the same command line must print the same bytes, and what one produces
//! the other reads back alike. kcat comes from `scripts/setup test`.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use faustus_testcontainers::{shared, unique_name};

fn bootstrap() -> String {
    shared().expect("kafka").bootstrap().to_owned()
}

fn exec(mut cmd: Command, stdin: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{cmd:?} does not start ({e}); kcat comes from `scripts/setup test`")
        });
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).expect("write stdin");
    drop(input);
    child.wait_with_output().expect("exits")
}

/// Runs faustus with these arguments; must succeed.
fn faustus(args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_faustus"));
    cmd.args(args).env("KAFKA_BOOTSTRAP", bootstrap());
    let out = exec(cmd, stdin);
    assert!(
        out.status.success(),
        "faustus {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Runs kcat with these arguments (and `-b`); must succeed.
fn kcat(args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let mut cmd = Command::new("kcat");
    cmd.arg("-b").arg(bootstrap()).args(args);
    let out = exec(cmd, stdin);
    assert!(
        out.status.success(),
        "kcat {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The same command line, given to both: the same bytes.
fn same(args: &[&str]) -> Vec<u8> {
    let ours = faustus(args, b"");
    let theirs = kcat(args, b"");
    assert_eq!(
        String::from_utf8_lossy(&ours),
        String::from_utf8_lossy(&theirs),
        "faustus and kcat differ on {args:?}"
    );
    ours
}

fn topic(prefix: &str, partitions: &str) -> String {
    let t = unique_name(prefix);
    faustus(&["topics", "create", &t, "-P", partitions], b"");
    t
}

/// Records with keys, null keys, empty values, headers, escapes and bytes
/// JSON must escape, produced with kcat's flags in kcat's spelling.
fn produce_mixed(t: &str) {
    let input =
        b"k1\tv1\nk2\tva\"l\\ue/2\n\nnokey\nk3\t\nk4\tcontrol\x01\x1f tab\x09end\n\tempty-key\n";
    faustus(
        &["-P", "-t", t, "-K", r"\t", "-H", "source=cli", "-H", "flag"],
        input,
    );
    faustus(
        &["-P", "-t", t, "-D", ";", "-K", r"\x3d", "-Z"],
        b"a=1;b=;=c;d",
    );
}

#[test]
fn consume_prints_what_kcat_prints() {
    let t = topic("kcat-consume", "1");
    produce_mixed(&t);
    let json = same(&["-C", "-t", &t, "-e", "-q", "-J"]);
    assert_eq!(String::from_utf8_lossy(&json).lines().count(), 10);
    same(&["-C", "-t", &t, "-e", "-q"]);
    same(&["-C", "-t", &t, "-e", "-q", "-K", ":", "-D", r"\x2c"]);
    same(&["-C", "-t", &t, "-e", "-q", "-K", r"\t", "-Z"]);
    same(&[
        "-C",
        "-t",
        &t,
        "-e",
        "-q",
        "-f",
        r"%t [%p] %o: %k=%s (%h) %K %S %T\n",
    ]);
    same(&["-C", "-t", &t, "-e", "-q", "-f", r"%R%s", "-o", "2"]);
    same(&["-C", "-t", &t, "-e", "-q", "-o", "-3", "-u"]);
    same(&["-C", "-t", &t, "-q", "-c", "4", "-o", "beginning"]);
    same(&["-C", "-t", &t, "-e", "-q", "-p", "0", "-o", "end"]);
    // Our own spelling prints the same as kcat's.
    assert_eq!(faustus(&["consume", "-t", &t, "-e", "-q", "-J"], b""), json);
}

#[test]
fn offsets_relative_and_by_timestamp_as_kcat() {
    let t = topic("kcat-offsets", "3");
    // Three partitions, ten records each, in three rounds a few ms apart.
    let mut stamps = Vec::new();
    for round in 0..3 {
        let lines: String = (0..3)
            .flat_map(|p| (0..10).map(move |i| format!("r{round}-p{p}-{i}\n")))
            .collect();
        for p in 0..3 {
            let mine: String = lines
                .lines()
                .filter(|l| l.contains(&format!("-p{p}-")))
                .map(|l| format!("{l}\n"))
                .collect();
            faustus(&["-P", "-t", &t, "-p", &p.to_string()], mine.as_bytes());
        }
        // Partition 2 was written last: its last record is the round's latest.
        let last = faustus(
            &[
                "-C", "-t", &t, "-p", "2", "-o", "-1", "-e", "-q", "-f", "%T",
            ],
            b"",
        );
        stamps.push(String::from_utf8(last).expect("utf-8"));
    }
    let sorted = |args: &[&str]| {
        let out = same(args);
        let mut lines: Vec<String> = String::from_utf8_lossy(&out)
            .lines()
            .map(String::from)
            .collect();
        lines.sort();
        lines
    };
    // -o -N: N before the end of each partition.
    let last2 = sorted(&["-C", "-t", &t, "-o", "-2", "-e", "-q", "-f", r"%p %s\n"]);
    assert_eq!(last2.len(), 6, "{last2:?}");
    assert!(last2.iter().all(|l| l.contains("r2-")), "{last2:?}");
    // s@TS: from the first record at or after TS; e@TS: up to before it.
    let from = format!("s@{}", stamps[1].trim().parse::<i64>().expect("ts") + 1);
    let until = format!("e@{}", stamps[1].trim().parse::<i64>().expect("ts") + 1);
    let tail = sorted(&["-C", "-t", &t, "-o", &from, "-e", "-q", "-f", r"%s\n"]);
    assert!(tail.iter().all(|l| l.starts_with("r2-")), "{tail:?}");
    let head = sorted(&["-C", "-t", &t, "-o", &until, "-e", "-q", "-f", r"%s\n"]);
    assert!(head.iter().all(|l| !l.starts_with("r2-")), "{head:?}");
    assert_eq!(head.len() + tail.len(), 90, "{head:?} {tail:?}");
    // -Q: offsets for timestamps, and -1 for the end.
    let q = same(&[
        "-Q",
        "-t",
        &format!("{t}:0:{}", stamps[1].trim()),
        "-t",
        &format!("{t}:2:-1"),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&q),
        format!("{t} [0] offset 20\n{t} [2] offset 30\n")
    );
}

#[test]
fn metadata_listing_as_kcat() {
    let t = topic("kcat-meta", "4");
    let listing = String::from_utf8(same(&["-L", "-t", &t])).expect("utf-8");
    // An unknown topic: kcat's one-line error, at once.
    let missing = unique_name("kcat-missing");
    let none = String::from_utf8(same(&["-L", "-t", &missing])).expect("utf-8");
    assert!(
        none.contains("with 0 partitions: Broker: Unknown topic or partition"),
        "{none}"
    );
    assert!(
        listing.contains(&format!("topic \"{t}\" with 4 partitions:")),
        "{listing}"
    );
    assert!(listing.contains("    partition 3, leader "), "{listing}");
    let all = String::from_utf8(faustus(&["metadata"], b"")).expect("utf-8");
    assert!(
        all.starts_with("Metadata for all topics (from broker "),
        "{all}"
    );
    assert!(
        all.contains(&format!("  topic \"{t}\" with 4 partitions:\n")),
        "{all}"
    );
}

#[test]
fn what_kcat_produces_faustus_produces_alike() {
    let (ours, theirs) = (topic("kcat-p-ours", "1"), topic("kcat-p-theirs", "1"));
    let dir = std::env::temp_dir().join(unique_name("kcat-files"));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("records.txt");
    std::fs::write(&file, b"x|1#y|2##z|#|w").expect("write");
    let blob = dir.join("blob.bin");
    std::fs::write(&blob, b"one\nwhole\nfile\x00").expect("write");
    let runs: Vec<Vec<String>> = vec![
        vec![
            "-K".into(),
            r"\t".into(),
            "-H".into(),
            "h=v".into(),
            "-H".into(),
            "n".into(),
        ],
        vec![
            "-D".into(),
            "#".into(),
            "-K".into(),
            "|".into(),
            "-Z".into(),
            "-l".into(),
            file.display().to_string(),
        ],
        vec!["-k".into(), "fixed".into(), blob.display().to_string()],
        vec!["-c".into(), "2".into()],
    ];
    let input = b"a\tb\nc\td\n\n\te\nf\t\nno key here\n";
    for run in &runs {
        let run: Vec<&str> = run.iter().map(String::as_str).collect();
        for (name, t) in [("faustus", &ours), ("kcat", &theirs)] {
            let mut args = vec!["-P", "-t", t.as_str()];
            args.extend(&run);
            if name == "faustus" {
                faustus(&args, input);
            } else {
                kcat(&args, input);
            }
        }
    }
    let read = |t: &str| {
        String::from_utf8(faustus(
            &["-C", "-t", t, "-e", "-q", "-f", r"%o|%k|%K|%s|%S|%h\n"],
            b"",
        ))
        .expect("utf-8")
    };
    let (a, b) = (read(&ours), read(&theirs));
    assert_eq!(a, b);
    let offsets = faustus(&["-C", "-t", &ours, "-e", "-q", "-f", r"%o\n"], b"");
    // Five lines with -K, four from the file, one whole file, two with -c.
    assert_eq!(
        String::from_utf8_lossy(&offsets).lines().count(),
        5 + 4 + 1 + 2,
        "{a}"
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

//! The `faustus` binary against a secured harness cluster: the client
//! settings the harness prints, taken with `-F`; `-X` SASL settings as kcat
//! takes them; `faustus acls create|list|delete`; and a refused user's
//! typed error.

use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use faustus_testcontainers::{unique_name, KafkaCluster, Security};

mod common;

fn kafka() -> &'static KafkaCluster {
    static CLUSTER: OnceLock<KafkaCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        KafkaCluster::start_secured(1, Security::SaslSsl, Duration::from_secs(10))
            .expect("secured cluster")
    })
}

/// `faustus ARGS` with the admin's settings (`-F` the harness's file) or
/// alice's (`-X`, PLAIN), `stdin` fed in.
fn faustus(as_alice: bool, args: &[&str], stdin: &str) -> Output {
    let k = kafka();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_faustus"));
    cmd.args(args).arg("-b").arg(k.bootstrap());
    if as_alice {
        let ca = format!("{}/ca.pem", k.state("KAFKA_TLS_DIR").expect("tls dir"));
        for x in [
            "security.protocol=SASL_SSL".to_owned(),
            "sasl.mechanism=PLAIN".to_owned(),
            "sasl.username=alice".to_owned(),
            "sasl.password=alice-secret".to_owned(),
            format!("ssl.ca.location={ca}"),
        ] {
            cmd.arg("-X").arg(x);
        }
    } else {
        cmd.arg("-F").arg(
            k.state("KAFKA_CLIENT_PROPERTIES")
                .expect("client.properties"),
        );
    }
    common::run_with(&mut cmd, Some(stdin))
}

fn ok(as_alice: bool, args: &[&str], stdin: &str) -> String {
    common::stdout_of(faustus(as_alice, args, stdin), args)
}

#[test]
fn acls_made_with_the_cli_grant_and_refuse_over_sasl_ssl() {
    let topic = unique_name("cli-acl");
    ok(false, &["topics", "create", &topic, "-P", "1"], "");
    ok(false, &["produce", "-t", &topic], "one\ntwo\n");

    // alice has no rights yet: refused, naming the topic.
    let refused = faustus(true, &["consume", "-t", &topic, "-e"], "");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "alice read without an ACL");
    assert!(
        err.contains("TOPIC_AUTHORIZATION_FAILED") && err.contains(&topic),
        "{err}"
    );

    let created = ok(
        false,
        &[
            "acls",
            "create",
            "--allow-principal",
            "User:alice",
            "--operation",
            "read",
            "--operation",
            "describe",
            "--topic",
            &topic,
        ],
        "",
    );
    let want = format!(
        "User:alice\tallow\tread\ttopic\t{topic}\tliteral\t*\nUser:alice\tallow\tdescribe\ttopic\t{topic}\tliteral\t*\n"
    );
    assert_eq!(created, want, "create prints each ACL it made");
    let listed = ok(false, &["acls", "list", "--principal", "User:alice"], "");
    let mut lines: Vec<&str> = listed.lines().collect();
    lines.sort();
    let mut wanted: Vec<&str> = want.lines().collect();
    wanted.sort();
    assert_eq!(lines, wanted);

    // Now alice reads (ACLs reach the broker within moments); she still
    // may not write.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let read = loop {
        let out = faustus(true, &["consume", "-t", &topic, "-e", "-q"], "");
        if out.status.success() {
            break String::from_utf8(out.stdout).expect("utf-8");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "alice still refused: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(read, "one\ntwo\n");
    let write = faustus(true, &["produce", "-t", &topic], "three\n");
    assert!(!write.status.success(), "alice wrote without WRITE");

    let deleted = ok(
        false,
        &[
            "acls",
            "delete",
            "--principal",
            "User:alice",
            "--topic",
            &topic,
        ],
        "",
    );
    let mut lines: Vec<&str> = deleted.lines().collect();
    lines.sort();
    assert_eq!(lines, wanted, "delete prints what it deleted");
    assert_eq!(
        ok(false, &["acls", "list", "--principal", "User:alice"], ""),
        ""
    );
}

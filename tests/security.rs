//! TLS, SASL and ACLs against a real secured Kafka (`kafka up --security`):
//! every mechanism on both SASL listeners, client certificates, host name
//! verification, typed authentication and authorization errors, ACLs made
//! with our admin client, KIP-368 re-authentication of live connections,
//! and the page-view counter under exactly_once over SASL_SSL.
//!
//! One single-node cluster serves the whole file; SASL sessions last 3 s
//! there, so every SASL client here re-authenticates many times. The tests
//! take turns (the re-authentication test counts the process's
//! authentications).

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use faustus_suite::{
    consumer_from_beginning, read_records_with, unique_topic, Deadline, ScratchDir,
};
use faustus_testcontainers::{KafkaCluster, Security};
use faustus_wire::acl::{AclBinding, AclFilter, Operation, PatternType, ResourceType};
use faustus_wire::consumer::{Consumer, ConsumerConfig, Offset};
use faustus_wire::group::{GroupConfig, GroupConsumer, NoListener};
use faustus_wire::producer::{Producer, ProducerConfig, ProducerRecord};
use faustus_wire::protocol::ErrorCode;
use faustus_wire::{Admin, Client, ClientConfig, Error, NewTopic, Properties};

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const REAUTH: Duration = Duration::from_secs(3);

fn kafka() -> &'static KafkaCluster {
    static CLUSTER: OnceLock<KafkaCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        KafkaCluster::start_secured(1, Security::SaslSsl, REAUTH).expect("secured cluster")
    })
}

fn state(key: &str) -> String {
    kafka()
        .state(key)
        .unwrap_or_else(|| panic!("{key} in the harness state"))
}

fn ca() -> String {
    format!("{}/ca.pem", state("KAFKA_TLS_DIR"))
}

/// Settings for `user` with `mechanism` on the SASL listener `listener`
/// (`SASL_PLAINTEXT` or `SASL_SSL`).
fn sasl(listener: &str, mechanism: &str, user: &str) -> Properties {
    let mut p = Properties::new()
        .set(
            "bootstrap.servers",
            state(&format!("KAFKA_{listener}_BOOTSTRAP")),
        )
        .set("security.protocol", listener)
        .set("sasl.mechanism", mechanism);
    if mechanism == "OAUTHBEARER" {
        p.insert("sasl.oauthbearer.config", format!("principal={user}"));
    } else {
        p.insert("sasl.username", user);
        p.insert("sasl.password", format!("{user}-secret"));
    }
    if listener == "SASL_SSL" {
        p.insert("ssl.ca.location", ca());
    }
    p
}

fn admin_props() -> Properties {
    sasl("SASL_SSL", "SCRAM-SHA-512", "admin")
}

async fn admin() -> Admin {
    Admin::new(
        Client::connect(ClientConfig::from_properties(&admin_props()).expect("config"))
            .await
            .expect("admin client"),
    )
}

async fn new_topic(partitions: i32) -> String {
    let t = unique_topic("sec");
    admin()
        .await
        .create_topic(NewTopic::new(&t, partitions, 1), false)
        .await
        .expect("topic");
    t
}

async fn produce(props: &Properties, topic: &str, n: usize) -> Result<(), Error> {
    let p = Producer::connect(ProducerConfig::from_properties(props)?).await?;
    for i in 0..n {
        p.send(
            ProducerRecord::new(topic)
                .key(format!("k{i}"))
                .value(format!("v{i}")),
        )
        .await?
        .await?;
    }
    p.close().await
}

async fn values(props: Properties, topic: &str) -> Vec<String> {
    read_records_with(props, topic, true)
        .await
        .into_iter()
        .map(|r| r.value)
        .collect()
}

fn expected(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("v{i}")).collect()
}

#[tokio::test]
async fn every_mechanism_on_both_sasl_listeners_round_trips() {
    let _turn = TURN.lock().await;
    for listener in ["SASL_PLAINTEXT", "SASL_SSL"] {
        for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] {
            let topic = new_topic(1).await;
            let props = sasl(listener, mechanism, "admin");
            produce(&props, &topic, 50)
                .await
                .unwrap_or_else(|e| panic!("{listener} {mechanism}: {e}"));
            assert_eq!(
                values(props, &topic).await,
                expected(50),
                "{listener} {mechanism}"
            );
        }
    }
    // The Java client's form of the credentials.
    let topic = new_topic(1).await;
    let props = Properties::new()
        .set("bootstrap.servers", state("KAFKA_SASL_SSL_BOOTSTRAP"))
        .set("security.protocol", "SASL_SSL")
        .set("ssl.ca.location", ca())
        .set("sasl.mechanism", "SCRAM-SHA-256")
        .set(
            "sasl.jaas.config",
            r#"org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="admin-secret";"#,
        );
    produce(&props, &topic, 5).await.expect("jaas form");
    assert_eq!(values(props, &topic).await, expected(5));
}

#[tokio::test]
async fn ssl_takes_client_certificates_and_checks_host_names() {
    let _turn = TURN.lock().await;
    let tls = state("KAFKA_TLS_DIR");
    let ssl = Properties::new()
        .set("bootstrap.servers", state("KAFKA_SSL_BOOTSTRAP"))
        .set("security.protocol", "SSL")
        .set("ssl.ca.location", ca());
    let with_cert = ssl
        .clone()
        .set(
            "ssl.certificate.location",
            format!("{tls}/client-admin.pem"),
        )
        .set("ssl.key.location", format!("{tls}/client-admin.key"));
    let topic = new_topic(1).await;
    produce(&with_cert, &topic, 20).await.expect("mutual TLS");
    assert_eq!(values(with_cert, &topic).await, expected(20));

    // The SSL listener requires a client certificate.
    let refused = Client::connect(ClientConfig::from_properties(&ssl).expect("config")).await;
    assert!(matches!(refused, Err(Error::Tls { .. })), "{refused:?}");

    // The broker's certificate names localhost only: 127.0.0.1 is refused
    // unless the check is turned off; the chain is checked either way.
    let sasl_ssl = state("KAFKA_SASL_SSL_BOOTSTRAP");
    let port = sasl_ssl.rsplit_once(':').expect("host:port").1;
    let by_ip = admin_props().set("bootstrap.servers", format!("127.0.0.1:{port}"));
    match Client::connect(ClientConfig::from_properties(&by_ip).expect("config")).await {
        Err(Error::Tls { reason, .. }) => {
            assert!(reason.contains("not valid for name"), "{reason}")
        }
        other => panic!("expected a TLS error, got {other:?}"),
    }
    let unchecked = by_ip
        .clone()
        .set("ssl.endpoint.identification.algorithm", "");
    Client::connect(ClientConfig::from_properties(&unchecked).expect("config"))
        .await
        .expect("host name check off");
    let untrusted = unchecked.set("ssl.ca.location", format!("{tls}/client-alice.pem"));
    match Client::connect(ClientConfig::from_properties(&untrusted).expect("config")).await {
        Err(Error::Tls { reason, .. }) => assert!(reason.contains("UnknownIssuer"), "{reason}"),
        other => panic!("expected a TLS error, got {other:?}"),
    }
}

/// Runs `program` with `args`, failing the test with its output if it fails.
fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The client certificate and trust as Java and librdkafka users keep
/// them, made from the harness's PEM files by openssl and the JDK's
/// keytool: a PKCS#12 and a JKS key store (the JKS key with a password of
/// its own), JKS and PKCS#12 trust stores, and a password-protected PKCS#8
/// key. Each must get through the SSL listener, which requires a client
/// certificate; a wrong password is a config error naming the setting.
#[tokio::test]
async fn key_stores_trust_stores_and_encrypted_keys_as_java_and_librdkafka_keep_them() {
    let _turn = TURN.lock().await;
    let tls = state("KAFKA_TLS_DIR");
    let dir = ScratchDir::new("stores");
    std::fs::create_dir_all(dir.path()).expect("dir");
    let at = |name: &str| dir.path().join(name).display().to_string();
    let (cert, key) = (
        format!("{tls}/client-admin.pem"),
        format!("{tls}/client-admin.key"),
    );
    run(
        "openssl",
        &[
            "pkcs12",
            "-export",
            "-in",
            &cert,
            "-inkey",
            &key,
            "-name",
            "admin",
            "-out",
            &at("admin.p12"),
            "-passout",
            "pass:store-secret",
        ],
    );
    run(
        "keytool",
        &[
            "-importkeystore",
            "-noprompt",
            "-srckeystore",
            &at("admin.p12"),
            "-srcstoretype",
            "PKCS12",
            "-srcstorepass",
            "store-secret",
            "-srcalias",
            "admin",
            "-destkeystore",
            &at("admin.jks"),
            "-deststoretype",
            "JKS",
            "-deststorepass",
            "store-secret",
            "-destkeypass",
            "key-secret",
        ],
    );
    for (file, kind) in [("trust.jks", "JKS"), ("trust.p12", "PKCS12")] {
        run(
            "keytool",
            &[
                "-importcert",
                "-noprompt",
                "-alias",
                "harness-ca",
                "-file",
                &ca(),
                "-keystore",
                &at(file),
                "-storetype",
                kind,
                "-storepass",
                "changeit",
            ],
        );
    }
    run(
        "openssl",
        &[
            "pkcs8",
            "-topk8",
            "-in",
            &key,
            "-out",
            &at("admin-encrypted.key"),
            "-passout",
            "pass:key-secret",
        ],
    );

    let base = Properties::new()
        .set("bootstrap.servers", state("KAFKA_SSL_BOOTSTRAP"))
        .set("security.protocol", "SSL");
    let jks_trust = base
        .clone()
        .set("ssl.truststore.location", at("trust.jks"))
        .set("ssl.truststore.password", "changeit");
    let p12 = jks_trust
        .clone()
        .set("ssl.keystore.location", at("admin.p12"))
        .set("ssl.keystore.password", "store-secret");
    let jks = base
        .clone()
        .set("ssl.truststore.location", at("trust.p12"))
        .set("ssl.truststore.type", "PKCS12")
        .set("ssl.truststore.password", "changeit")
        .set("ssl.keystore.location", at("admin.jks"))
        .set("ssl.keystore.type", "JKS")
        .set("ssl.keystore.password", "store-secret")
        .set("ssl.key.password", "key-secret");
    let encrypted = base
        .clone()
        .set("ssl.ca.location", ca())
        .set("ssl.certificate.location", &cert)
        .set("ssl.key.location", at("admin-encrypted.key"))
        .set("ssl.key.password", "key-secret");
    // A JKS trust store without its password is read unchecked (as Java
    // does).
    let unchecked = base
        .clone()
        .set("ssl.truststore.location", at("trust.jks"))
        .set("ssl.keystore.location", at("admin.p12"))
        .set("ssl.keystore.password", "store-secret");
    let topic = new_topic(1).await;
    for (what, props) in [
        ("PKCS#12 key store, JKS trust store", &p12),
        ("JKS key store, PKCS#12 trust store", &jks),
        ("encrypted PKCS#8 key", &encrypted),
        ("JKS trust store without its password", &unchecked),
    ] {
        produce(props, &topic, 5)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    assert_eq!(values(p12.clone(), &topic).await.len(), 20);

    for (props, setting) in [
        (
            p12.clone().set("ssl.keystore.password", "wrong"),
            "ssl.keystore.location",
        ),
        (
            jks.clone().set("ssl.key.password", "wrong"),
            "ssl.keystore.location",
        ),
        (
            jks_trust.clone().set("ssl.truststore.password", "wrong"),
            "ssl.truststore.location",
        ),
        (
            encrypted.clone().set("ssl.key.password", "wrong"),
            "ssl.key.location",
        ),
    ] {
        match ClientConfig::from_properties(&props) {
            Err(Error::Config(m)) => {
                assert!(m.contains(setting) && m.contains("wrong"), "{m}")
            }
            other => panic!("{setting}: expected a config error, got {other:?}"),
        }
    }
    let no_password = base
        .clone()
        .set("ssl.ca.location", ca())
        .set("ssl.certificate.location", &cert)
        .set("ssl.key.location", at("admin-encrypted.key"));
    match ClientConfig::from_properties(&no_password) {
        Err(Error::Config(m)) => assert!(m.contains("set ssl.key.password"), "{m}"),
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[tokio::test]
async fn wrong_credentials_are_a_typed_error_at_once() {
    let _turn = TURN.lock().await;
    for (mechanism, user, password) in [
        ("PLAIN", "admin", "wrong"),
        ("SCRAM-SHA-256", "admin", "wrong"),
        ("SCRAM-SHA-512", "nobody", "nobody-secret"),
    ] {
        // A minute of default.api.timeout.ms: a client that retried would
        // end in Error::Bootstrap, not this.
        let props = sasl("SASL_SSL", mechanism, user)
            .set("sasl.password", password)
            .set("default.api.timeout.ms", "60000");
        match Client::connect(ClientConfig::from_properties(&props).expect("config")).await {
            Err(Error::Authentication {
                mechanism: m,
                message,
                ..
            }) => {
                assert_eq!(m, mechanism);
                assert!(message.contains("Authentication failed"), "{message}");
            }
            other => panic!("{mechanism} {user}: expected an authentication error, got {other:?}"),
        }
    }
    // No credentials at all. A SASL listener hangs up on the first request
    // after ApiVersions (retried, as a broker going down looks the same,
    // and reported with the reason); a TLS listener answers in TLS.
    let plain = |bootstrap: String| {
        Properties::new()
            .set("bootstrap.servers", bootstrap)
            .set("default.api.timeout.ms", "2000")
    };
    let bare = plain(state("KAFKA_SASL_PLAINTEXT_BOOTSTRAP"));
    match Client::connect(ClientConfig::from_properties(&bare).expect("config")).await {
        Err(Error::Bootstrap { last, .. }) => assert!(last.contains("requires SASL"), "{last}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    for listener in ["KAFKA_SSL_BOOTSTRAP", "KAFKA_SASL_SSL_BOOTSTRAP"] {
        let bare = plain(state(listener));
        match Client::connect(ClientConfig::from_properties(&bare).expect("config")).await {
            Err(Error::Tls { reason, .. }) => {
                assert!(reason.contains("answered in TLS"), "{reason}")
            }
            other => panic!("{listener}: expected a TLS error, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn acls_grant_what_they_name_and_refusals_name_the_topic() {
    let _turn = TURN.lock().await;
    let admin = admin().await;
    let allowed = new_topic(1).await;
    let forbidden = new_topic(1).await;
    let group = unique_topic("sec-group");
    produce(&admin_props(), &allowed, 10)
        .await
        .expect("admin writes");
    let grants = vec![
        AclBinding::allow("User:alice", ResourceType::Topic, &allowed, Operation::Read),
        AclBinding::allow(
            "User:alice",
            ResourceType::Topic,
            &allowed,
            Operation::Write,
        ),
        AclBinding::allow(
            "User:alice",
            ResourceType::Topic,
            &allowed,
            Operation::Describe,
        ),
        AclBinding::allow("User:alice", ResourceType::Group, &group, Operation::Read),
    ];
    for r in admin.create_acls(&grants).await.expect("create acls") {
        r.expect("acl created");
    }
    let mine = AclFilter {
        principal: Some("User:alice".into()),
        ..AclFilter::default()
    };
    let listed = admin.describe_acls(&mine).await.expect("describe acls");
    let mut want = grants.clone();
    want.sort();
    assert_eq!(listed, want);

    // alice, through PLAIN: writes and reads what she was granted, in a
    // group she was granted.
    let alice = sasl("SASL_SSL", "PLAIN", "alice");
    produce(&alice, &allowed, 5).await.expect("alice writes");
    let mut cfg_props = alice
        .clone()
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest");
    cfg_props.insert("isolation.level", "read_committed");
    let cfg = GroupConfig::from_properties(&cfg_props).expect("group config");
    let mut consumer = GroupConsumer::subscribe(cfg, &[&allowed], NoListener)
        .await
        .expect("alice subscribes");
    let mut seen = 0;
    let deadline = Deadline::new("alice's group to read 15 records", Duration::from_secs(60));
    while seen < 15 {
        deadline.check(seen);
        for part in consumer.poll().await.expect("alice polls") {
            seen += part.records().count();
        }
    }
    consumer.commit().await.expect("alice commits");
    drop(consumer);

    // Not granted: refused with the topic's name, at once.
    let err = produce(&alice, &forbidden, 1).await.expect_err("refused");
    assert_eq!(
        err.code(),
        Some(ErrorCode::TOPIC_AUTHORIZATION_FAILED),
        "{err}"
    );
    assert!(err.to_string().contains(&forbidden), "{err}");
    let mut c = Consumer::connect(ConsumerConfig::from_properties(&alice).expect("config"))
        .await
        .expect("consumer");
    let err = c
        .assign(&forbidden, &[], Offset::Beginning)
        .await
        .expect_err("refused");
    assert_eq!(
        err.code(),
        Some(ErrorCode::TOPIC_AUTHORIZATION_FAILED),
        "{err}"
    );
    assert!(err.to_string().contains(&forbidden), "{err}");
    // bob has no ACL at all.
    let err = produce(&sasl("SASL_PLAINTEXT", "SCRAM-SHA-256", "bob"), &allowed, 1)
        .await
        .expect_err("bob refused");
    assert_eq!(
        err.code(),
        Some(ErrorCode::TOPIC_AUTHORIZATION_FAILED),
        "{err}"
    );

    // Deleting the grants takes alice's rights away.
    let deleted = admin
        .delete_acls(std::slice::from_ref(&mine))
        .await
        .expect("delete acls");
    let mut gone = deleted
        .into_iter()
        .next()
        .expect("one filter")
        .expect("deleted");
    gone.sort();
    assert_eq!(gone, want);
    assert!(admin
        .describe_acls(&mine)
        .await
        .expect("describe")
        .is_empty());
    let deadline = Deadline::new("alice's rights to go", Duration::from_secs(30));
    loop {
        match produce(&alice, &allowed, 1).await {
            Err(e) if e.code() == Some(ErrorCode::TOPIC_AUTHORIZATION_FAILED) => break,
            other => deadline.check(format!("{other:?}")),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn live_connections_reauthenticate_before_their_session_ends() {
    let _turn = TURN.lock().await;
    let topic = new_topic(1).await;
    let props = sasl("SASL_SSL", "SCRAM-SHA-256", "admin");
    let producer = Producer::connect(ProducerConfig::from_properties(&props).expect("config"))
        .await
        .expect("producer");
    let mut consumer = consumer_from_beginning(&props, &topic).await;
    producer
        .send(ProducerRecord::new(&topic).value("v0"))
        .await
        .expect("send")
        .await
        .expect("first record");
    let broker = state("KAFKA_SASL_SSL_BOOTSTRAP");
    let counts = || {
        faustus_wire::stats::snapshot()
            .into_iter()
            .find(|s| s.broker == broker)
            .map(|s| (s.authentications, s.reauthentications))
            .expect("stats of the broker")
    };
    let (auth_before, reauth_before) = counts();
    // Four session lifetimes of steady traffic on both connections.
    let mut read = 0;
    let sent: usize = 40;
    for i in 1..=sent {
        producer
            .send(ProducerRecord::new(&topic).value(format!("v{i}")))
            .await
            .expect("send")
            .await
            .unwrap_or_else(|e| panic!("record {i}: {e}"));
        for part in consumer.poll().await.expect("poll") {
            read += part.records().count();
        }
        tokio::time::sleep(REAUTH * 4 / sent as u32).await;
    }
    let deadline = Deadline::new("the consumer to catch up", Duration::from_secs(30));
    while read < sent + 1 {
        deadline.check(read);
        for part in consumer.poll().await.expect("poll") {
            read += part.records().count();
        }
    }
    let (auth_after, reauth_after) = counts();
    assert!(
        reauth_after - reauth_before >= 4,
        "two connections over four lifetimes re-authenticate at least twice each: {reauth_before} -> {reauth_after}"
    );
    assert_eq!(
        auth_after, auth_before,
        "no connection had to be opened again"
    );
    assert_eq!(read, sent + 1);
    producer.close().await.expect("close");
}

/// The page-view counter (examples/page_views.rs) over SASL_SSL under
/// exactly_once; then a worker whose user may not read its input stops
/// with the broker's refusal instead of retrying.
#[tokio::test]
async fn page_views_counts_exactly_over_sasl_ssl_and_stops_when_refused() {
    let _turn = TURN.lock().await;
    let app = unique_topic("sec-views");
    let topic = format!("{app}-clicks");
    admin()
        .await
        .create_topic(NewTopic::new(&topic, 3, 1), false)
        .await
        .expect("clicks topic");
    let props = admin_props();
    let clicks = 600;
    let p = Producer::connect(ProducerConfig::from_properties(&props).expect("config"))
        .await
        .expect("producer");
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..clicks {
        let url = format!("/page/{}", i % 12);
        *want.entry(url.clone()).or_default() += 1;
        let _ = p
            .send(ProducerRecord::new(&topic).key(url).value("1"))
            .await
            .expect("send");
    }
    p.close().await.expect("clicks sent");

    let dir = ScratchDir::new(&app);
    let worker = |user: &str, log: &str| {
        let mut cmd = Command::new(faustus_suite::example_binary("page_views"));
        cmd.env("PAGE_VIEWS_APP", &app)
            .env("PAGE_VIEWS_TOPIC", &topic)
            .env("KAFKA_BOOTSTRAP", state("KAFKA_SASL_SSL_BOOTSTRAP"))
            .args([
                "-X",
                &format!("state.dir={}", dir.path().join(log).display()),
            ])
            .args(["-X", "processing.guarantee=exactly_once"])
            .args(["-X", "commit.interval.ms=200"])
            .args(["-X", "security.protocol=SASL_SSL"])
            .args(["-X", "sasl.mechanism=SCRAM-SHA-512"])
            .args(["-X", &format!("sasl.username={user}")])
            .args(["-X", &format!("sasl.password={user}-secret")])
            .args(["-X", &format!("ssl.ca.location={}", ca())])
            .args(["worker", "-l", "info"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join(format!("{log}.log"))).expect("log"));
        cmd.spawn().expect("worker starts")
    };
    std::fs::create_dir_all(dir.path()).expect("scratch dir");
    let w = worker("admin", "admin");
    let changelog = format!("{app}-click_counts-changelog");
    let deadline = Deadline::new("the counts over SASL_SSL", Duration::from_secs(120));
    loop {
        let mut got: BTreeMap<String, u64> = BTreeMap::new();
        if admin().await.describe_topic(&changelog).await.is_ok() {
            for r in read_records_with(props.clone(), &changelog, true).await {
                got.insert(r.key, r.value.parse().unwrap_or(0));
            }
        }
        if got == want {
            break;
        }
        deadline.check((&got, &want));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    faustus_suite::stop_worker(w);

    // alice may not touch the clicks: the worker says so, naming the
    // topic, and exits. Given the topics and transactional ids but not the
    // group, it names the group.
    let refused = |name: &'static str| {
        let mut child = worker("alice", name);
        let dir = dir.path().to_owned();
        async move {
            let deadline = Deadline::new("the refused worker to exit", Duration::from_secs(90));
            let status = loop {
                if let Some(s) = child.try_wait().expect("wait") {
                    break s;
                }
                deadline.check("running");
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
            assert!(!status.success(), "{log}");
            faustus_suite::log_tail(&log, 3)
        }
    };
    let log = refused("alice").await;
    assert!(
        log.contains("TOPIC_AUTHORIZATION_FAILED") && log.contains(&topic),
        "{log}"
    );
    let prefixed = |resource_type, operation| AclBinding {
        pattern: PatternType::Prefixed,
        ..AclBinding::allow("User:alice", resource_type, &app, operation)
    };
    let mut grants = Vec::new();
    for op in [
        Operation::Read,
        Operation::Write,
        Operation::Describe,
        Operation::Create,
    ] {
        grants.push(prefixed(ResourceType::Topic, op));
    }
    for op in [Operation::Write, Operation::Describe] {
        grants.push(prefixed(ResourceType::TransactionalId, op));
    }
    for r in admin().await.create_acls(&grants).await.expect("acls") {
        r.expect("acl");
    }
    let log = refused("alice-no-group").await;
    assert!(
        log.contains("GROUP_AUTHORIZATION_FAILED") && log.contains(&format!("group `{app}`")),
        "{log}"
    );
}

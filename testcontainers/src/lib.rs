//! A real Apache Kafka for Faustus's tests, benchmarks and demo.
//!
//! Two backends start the same thing, a KRaft cluster of combined
//! broker+controller nodes listening on 127.0.0.1:
//!
//! * **local** (the default, and what CI uses): the `testcontainers/kafka`
//!   script resolves Apache Kafka's jars from Maven Central with `mvn`, formats
//!   storage and starts one JVM per node. It supports 1 or 3 nodes and every
//!   fault verb (kill, stop, start, pause, resume).
//! * **docker** (feature `docker`, chosen with `FAUSTUS_KAFKA_BACKEND=docker`):
//!   the official `apache/kafka` image through the `testcontainers` crate; one
//!   node, no fault injection.
//!
//! A test either starts its own cluster with [`KafkaCluster::start`], reuses
//! the one named by `KAFKA_BOOTSTRAP` with [`KafkaCluster::from_env`], or takes
//! the process-wide [`shared`] cluster, which does the latter when it can and
//! the former otherwise.
//!
//! ```no_run
//! let kafka = faustus_testcontainers::KafkaCluster::start(3)?;
//! println!("bootstrap: {}", kafka.bootstrap());
//! kafka.kill(2)?;
//! kafka.start_node(2)?;
//! # Ok::<(), faustus_testcontainers::HarnessError>(())
//! ```
#![deny(missing_docs)]

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// What went wrong while starting or steering a cluster.
#[derive(Debug)]
#[non_exhaustive]
pub enum HarnessError {
    /// The harness script could not be run at all.
    Spawn {
        /// The command that was attempted.
        command: String,
        /// Why it could not be started.
        source: std::io::Error,
    },
    /// The harness script ran and failed; `stderr` says why.
    Script {
        /// The verb and arguments passed to the script.
        command: String,
        /// The script's exit code, if it exited normally.
        code: Option<i32>,
        /// What the script printed on stderr.
        stderr: String,
    },
    /// The script succeeded but printed no `KAFKA_BOOTSTRAP=` line.
    NoBootstrap(String),
    /// Fault injection was asked of a cluster this process cannot steer
    /// (reused from `KAFKA_BOOTSTRAP` without a harness state, or docker).
    NotSteerable(&'static str),
    /// A node number outside `1..=nodes`.
    NoSuchNode {
        /// The node asked for.
        node: usize,
        /// How many nodes the cluster has.
        nodes: usize,
    },
    /// The requested backend or node count is not available.
    Unsupported(String),
}

impl fmt::Display for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Spawn { command, source } => write!(f, "could not run `{command}`: {source}"),
            Self::Script {
                command,
                code,
                stderr,
            } => write!(
                f,
                "`kafka {command}` failed (exit {}): {}",
                code.map_or_else(|| "signal".to_owned(), |c| c.to_string()),
                stderr.trim()
            ),
            Self::NoBootstrap(out) => write!(f, "harness printed no KAFKA_BOOTSTRAP line: {out}"),
            Self::NotSteerable(why) => write!(f, "cannot inject faults into this cluster: {why}"),
            Self::NoSuchNode { node, nodes } => {
                write!(f, "no node {node}: the cluster has nodes 1..={nodes}")
            }
            Self::Unsupported(why) => write!(f, "unsupported: {why}"),
        }
    }
}

impl std::error::Error for HarnessError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Spawn { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The path of the `testcontainers/kafka` script.
pub fn script_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("kafka")
}

/// Where this crate's clusters keep their state: `<repo>/target/faustus-kafka`.
fn clusters_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("faustus-kafka")
}

enum Backend {
    /// Started by the script; `home` is its FAUSTUS_KAFKA_HOME. `owned`
    /// clusters are torn down on drop.
    Local { home: PathBuf, owned: bool },
    /// Reused from `KAFKA_BOOTSTRAP` with no harness state to steer it.
    External,
    /// Held, never read: the container stops when this is dropped.
    #[cfg(feature = "docker")]
    #[allow(dead_code)]
    Docker(Box<docker::Running>),
}

/// The listener a secured cluster's bootstrap names
/// ([`KafkaCluster::start_secured`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// TLS, client certificates required.
    Ssl,
    /// SASL over plain TCP.
    SaslPlaintext,
    /// SASL over TLS.
    SaslSsl,
}

impl Security {
    fn as_arg(self) -> &'static str {
        match self {
            Security::Ssl => "ssl",
            Security::SaslPlaintext => "sasl_plaintext",
            Security::SaslSsl => "sasl_ssl",
        }
    }
}

/// A running Kafka cluster. Everything it started stops when it is dropped.
pub struct KafkaCluster {
    bootstrap: String,
    nodes: usize,
    backend: Backend,
}

impl fmt::Debug for KafkaCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaCluster")
            .field("bootstrap", &self.bootstrap)
            .field("nodes", &self.nodes)
            .finish()
    }
}

fn run_script(home: &Path, args: &[&str]) -> Result<Output, HarnessError> {
    let command = args.join(" ");
    let out = Command::new("bash")
        .arg(script_path())
        .args(args)
        .env("FAUSTUS_KAFKA_HOME", home)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| HarnessError::Spawn {
            command: format!("kafka {command}"),
            source,
        })?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(HarnessError::Script {
            command,
            code: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

fn parse_bootstrap(stdout: &[u8]) -> Option<String> {
    String::from_utf8_lossy(stdout)
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("KAFKA_BOOTSTRAP=").map(str::to_owned))
}

impl KafkaCluster {
    /// Starts a new cluster of `nodes` nodes (1 or 3) with the backend named
    /// by `FAUSTUS_KAFKA_BACKEND` (`local`, the default, or `docker`).
    ///
    /// Blocks until every node answers a Metadata request that lists all
    /// brokers. The cluster stops, and its data is removed, when the returned
    /// value is dropped or, failing that, when this process exits.
    pub fn start(nodes: usize) -> Result<Self, HarnessError> {
        match std::env::var("FAUSTUS_KAFKA_BACKEND").as_deref() {
            Ok("docker") => Self::start_docker(nodes),
            Ok("local") | Err(_) => Self::start_local(nodes),
            Ok(other) => Err(HarnessError::Unsupported(format!(
                "FAUSTUS_KAFKA_BACKEND={other}: expected `local` or `docker`"
            ))),
        }
    }

    /// Starts a secured cluster (`kafka up --security`): SSL with client
    /// certificates, SASL_PLAINTEXT and SASL_SSL listeners, SCRAM users
    /// `admin` (a super user), `alice` and `bob` (passwords `<user>-secret`)
    /// and an authorizer. [`bootstrap`](Self::bootstrap) names the
    /// `security` listener; [`state`](Self::state) names the others
    /// (`KAFKA_SSL_BOOTSTRAP`, `KAFKA_SASL_PLAINTEXT_BOOTSTRAP`,
    /// `KAFKA_SASL_SSL_BOOTSTRAP`, `KAFKA_TLS_DIR`).
    ///
    /// SASL sessions last `reauth` (`connections.max.reauth.ms`): clients
    /// must re-authenticate (KIP-368) or be disconnected.
    pub fn start_secured(
        nodes: usize,
        security: Security,
        reauth: std::time::Duration,
    ) -> Result<Self, HarnessError> {
        let ms = reauth.as_millis().to_string();
        Self::start_local_with(
            nodes,
            &["--security", security.as_arg(), "--reauth-ms", &ms],
        )
    }

    /// A value from the harness state (`state.env`), such as
    /// `KAFKA_SASL_SSL_BOOTSTRAP`; `None` for clusters the script did not
    /// start.
    pub fn state(&self, key: &str) -> Option<String> {
        let Backend::Local { home, .. } = &self.backend else {
            return None;
        };
        let text = std::fs::read_to_string(home.join("state.env")).ok()?;
        let prefix = format!("{key}=");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
    }

    /// The client settings of a secured cluster's bootstrap listener, as
    /// `up` printed them (`security.protocol`, `sasl.*`, `ssl.*`); empty
    /// for a plaintext cluster.
    pub fn client_settings(&self) -> Vec<(String, String)> {
        let Some(path) = self.state("KAFKA_CLIENT_PROPERTIES") else {
            return Vec::new();
        };
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn start_local(nodes: usize) -> Result<Self, HarnessError> {
        Self::start_local_with(nodes, &[])
    }

    fn start_local_with(nodes: usize, extra: &[&str]) -> Result<Self, HarnessError> {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let home = clusters_root().join(format!(
            "{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let owner = std::process::id().to_string();
        let nodes_arg = nodes.to_string();
        let mut args = vec!["up", "--nodes", &nodes_arg, "--owner", &owner];
        args.extend_from_slice(extra);
        let out = run_script(&home, &args)?;
        let bootstrap = parse_bootstrap(&out.stdout).ok_or_else(|| {
            HarnessError::NoBootstrap(String::from_utf8_lossy(&out.stdout).into_owned())
        })?;
        Ok(Self {
            bootstrap,
            nodes,
            backend: Backend::Local { home, owned: true },
        })
    }

    #[cfg(feature = "docker")]
    fn start_docker(nodes: usize) -> Result<Self, HarnessError> {
        if nodes != 1 {
            return Err(HarnessError::Unsupported(
                "the docker backend runs a single node".into(),
            ));
        }
        let running = docker::Running::start()?;
        Ok(Self {
            bootstrap: running.bootstrap.clone(),
            nodes,
            backend: Backend::Docker(Box::new(running)),
        })
    }

    #[cfg(not(feature = "docker"))]
    fn start_docker(_nodes: usize) -> Result<Self, HarnessError> {
        Err(HarnessError::Unsupported(
            "FAUSTUS_KAFKA_BACKEND=docker needs faustus-testcontainers built with the `docker` feature".into(),
        ))
    }

    /// Reuses the cluster named by `KAFKA_BOOTSTRAP`, or `None` when it is unset.
    ///
    /// If the harness state in `FAUSTUS_KAFKA_HOME` (default
    /// `<repo>/target/kafka-harness`, where `testcontainers/kafka up` puts it)
    /// describes the same cluster, fault injection works on it too. A reused
    /// cluster is never stopped on drop.
    pub fn from_env() -> Option<Self> {
        let bootstrap = std::env::var("KAFKA_BOOTSTRAP")
            .ok()
            .filter(|b| !b.is_empty())?;
        let home = std::env::var_os("FAUSTUS_KAFKA_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("..")
                    .join("target")
                    .join("kafka-harness")
            });
        let state = std::fs::read_to_string(home.join("state.env")).unwrap_or_default();
        let field = |name: &str| {
            state
                .lines()
                .find_map(|l| l.strip_prefix(name).map(str::to_owned))
        };
        let same = field("KAFKA_BOOTSTRAP=").as_deref() == Some(bootstrap.as_str());
        let nodes = if same {
            field("KAFKA_NODES=").and_then(|n| n.parse().ok())
        } else {
            None
        };
        let backend = if same {
            Backend::Local { home, owned: false }
        } else {
            Backend::External
        };
        Some(Self {
            nodes: nodes.unwrap_or_else(|| bootstrap.split(',').count()),
            bootstrap,
            backend,
        })
    }

    /// `host:port,...` of every node, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// How many nodes the cluster has.
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    fn steer(&self, verb: &str, node: usize) -> Result<(), HarnessError> {
        if node == 0 || node > self.nodes {
            return Err(HarnessError::NoSuchNode {
                node,
                nodes: self.nodes,
            });
        }
        match &self.backend {
            Backend::Local { home, .. } => {
                run_script(home, &[verb, &node.to_string()])?;
                Ok(())
            }
            Backend::External => Err(HarnessError::NotSteerable(
                "KAFKA_BOOTSTRAP names a cluster without harness state",
            )),
            #[cfg(feature = "docker")]
            Backend::Docker(_) => Err(HarnessError::NotSteerable(
                "the docker backend has no fault verbs",
            )),
        }
    }

    /// Kills node `n` (1-based) with SIGKILL and waits until it is gone.
    pub fn kill(&self, n: usize) -> Result<(), HarnessError> {
        self.steer("kill", n)
    }

    /// Stops node `n` with SIGTERM (a controlled shutdown) and waits for it.
    pub fn stop(&self, n: usize) -> Result<(), HarnessError> {
        self.steer("stop", n)
    }

    /// Starts node `n` again after [`kill`](Self::kill) or
    /// [`stop`](Self::stop), and waits until it answers and sees every
    /// running broker.
    pub fn start_node(&self, n: usize) -> Result<(), HarnessError> {
        self.steer("start", n)
    }

    /// Restarts node `n`: a controlled stop, then a start.
    pub fn restart(&self, n: usize) -> Result<(), HarnessError> {
        self.stop(n)?;
        self.start_node(n)
    }

    /// Freezes node `n` with SIGSTOP: it keeps its sockets but answers nothing.
    pub fn pause(&self, n: usize) -> Result<(), HarnessError> {
        self.steer("pause", n)
    }

    /// Thaws node `n` after [`pause`](Self::pause).
    pub fn resume(&self, n: usize) -> Result<(), HarnessError> {
        self.steer("resume", n)
    }

    /// For node `n`'s `PROXIED` listener: the port it advertises (where a
    /// [`FaultProxy`] listens) and the port it listens on (where the proxy
    /// forwards). `None` for clusters without harness state, or started by
    /// a harness without that listener.
    pub fn proxy_ports(&self, n: usize) -> Option<(u16, u16)> {
        let Backend::Local { home, .. } = &self.backend else {
            return None;
        };
        let text = std::fs::read_to_string(home.join(format!("node{n}")).join("proxy")).ok()?;
        let mut it = text.split_whitespace().map(str::parse::<u16>);
        Some((it.next()?.ok()?, it.next()?.ok()?))
    }

    /// The log directory of node `n`, where its partitions' segment files
    /// live (`<dir>/<topic>-<partition>/*.log`), for tests that damage data
    /// on disk. `None` for clusters this process cannot see into.
    pub fn data_dir(&self, n: usize) -> Option<PathBuf> {
        match &self.backend {
            Backend::Local { home, .. } => Some(home.join(format!("node{n}")).join("data")),
            _ => None,
        }
    }

    /// A command that runs one of Kafka's own Java tools (an alias such as
    /// `console-producer`, `console-consumer`, `producer-perf`,
    /// `consumer-perf`, `topics`, `consumer-groups`, or a full class name)
    /// from the same jars as the broker. Add the tool's arguments and run it.
    pub fn tool(&self, class: &str) -> Command {
        let mut cmd = Command::new("bash");
        cmd.arg(script_path()).arg("tool").arg(class);
        if let Backend::Local { home, .. } = &self.backend {
            cmd.env("FAUSTUS_KAFKA_HOME", home);
        } else {
            // Any private home works: `tool` only needs the cached jars.
            cmd.env("FAUSTUS_KAFKA_HOME", clusters_root().join("tools"));
        }
        cmd
    }
}

impl Drop for KafkaCluster {
    fn drop(&mut self) {
        if let Backend::Local { home, owned: true } = &self.backend {
            let _ = run_script(home, &["down"]);
        }
    }
}

/// The process-wide single-node cluster for tests that need no faults of their
/// own: the one in `KAFKA_BOOTSTRAP` if set, else one started on first use and
/// stopped when the process exits.
pub fn shared() -> Result<&'static KafkaCluster, HarnessError> {
    static SHARED: OnceLock<Result<KafkaCluster, String>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            KafkaCluster::from_env()
                .map_or_else(|| KafkaCluster::start(1).map_err(|e| e.to_string()), Ok)
        })
        .as_ref()
        .map_err(|e| HarnessError::Unsupported(format!("the shared cluster did not start: {e}")))
}

/// A name unique to this process and call, for topics and groups, so that
/// tests sharing a cluster never see each other's records.
pub fn unique_name(prefix: &str) -> String {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

mod proxy;
pub use proxy::{Cut, FaultProxy};

#[cfg(feature = "docker")]
mod docker {
    use super::HarnessError;
    use testcontainers_modules::kafka::apache::{Kafka, KAFKA_PORT};
    use testcontainers_modules::testcontainers::runners::SyncRunner;
    use testcontainers_modules::testcontainers::{Container, ImageExt};

    pub(super) struct Running {
        pub(super) bootstrap: String,
        _container: Container<Kafka>,
    }

    impl Running {
        pub(super) fn start() -> Result<Self, HarnessError> {
            let fail = |e: &dyn std::fmt::Display| {
                HarnessError::Unsupported(format!("docker backend: {e}"))
            };
            let container = Kafka::default()
                .with_jvm_image()
                .with_tag("4.1.1")
                .start()
                .map_err(|e| fail(&e))?;
            let port = container
                .get_host_port_ipv4(KAFKA_PORT)
                .map_err(|e| fail(&e))?;
            Ok(Self {
                bootstrap: format!("127.0.0.1:{port}"),
                _container: container,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_line_is_found_after_other_output() {
        let out = b"kafka: resolving\nKAFKA_BOOTSTRAP=127.0.0.1:1,127.0.0.1:2\n";
        assert_eq!(
            parse_bootstrap(out).as_deref(),
            Some("127.0.0.1:1,127.0.0.1:2")
        );
        assert_eq!(parse_bootstrap(b"nothing here\n"), None);
    }

    #[test]
    fn node_numbers_are_checked_before_the_script_runs() {
        let cluster = KafkaCluster {
            bootstrap: "127.0.0.1:1".into(),
            nodes: 3,
            backend: Backend::External,
        };
        assert!(matches!(
            cluster.kill(4),
            Err(HarnessError::NoSuchNode { node: 4, nodes: 3 })
        ));
        assert!(matches!(
            cluster.pause(0),
            Err(HarnessError::NoSuchNode { .. })
        ));
        assert!(matches!(
            cluster.kill(1),
            Err(HarnessError::NotSteerable(_))
        ));
    }
}

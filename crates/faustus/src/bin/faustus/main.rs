//! The `faustus` command-line tool: kcat's produce, consume, metadata and
//! query modes with kcat's flags and output, topic and group administration,
//! and a demo.
//!
//! Both spellings work: `faustus consume -t clicks -e` and kcat's own
//! `faustus -C -t clicks -e` (the mode flags `-C`, `-P`, `-L`, `-Q`, `-G`
//! pick the subcommand).

/// `println!` for command output that ends the process quietly once its
/// reader is gone (`faustus groups list | head`), as kcat does, instead of
/// panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            $crate::stdout_failed(e);
        }
    }};
}

/// Standard output failed: quietly done when the reader left, else an
/// error.
pub(crate) fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("faustus: writing to standard output: {e}");
    std::process::exit(1);
}

mod admin;
mod consume;
mod demo;
mod escape;
mod format;
mod metadata;
mod produce;

use std::ffi::OsString;
use std::io::IsTerminal;

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};
use faustus::wire::Properties;

use format::Printer;

/// Faustus: Kafka stream processing for Rust. This tool produces, consumes
/// and inspects Kafka with kcat's flags; kcat's own command lines
/// (`faustus -C -b HOST:PORT -t TOPIC -e`) work as they are.
#[derive(Debug, Parser)]
#[command(
    name = "faustus",
    version,
    about = "Produce, consume and inspect Kafka with kcat's flags and output; manage topics and groups.",
    after_help = "Examples:
  faustus topics create clicks -P 6
  printf 'user-1:/home\\nuser-2:/cart\\n' | faustus produce -t clicks -K :
  faustus consume -t clicks -e -f '%p %o %k=%s\\n'
  faustus -C -t clicks -o -10 -e -J          (kcat's spelling)
  faustus metadata                           (kcat -L)
The broker comes from -b HOST:PORT or the KAFKA_BOOTSTRAP environment variable."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Conn {
    /// Bootstrap brokers, HOST:PORT[,HOST:PORT...] (default: $KAFKA_BOOTSTRAP).
    #[arg(short = 'b', long = "brokers", global = true)]
    brokers: Option<String>,
    /// A client property by its Java name, repeatable: -X compression.type=lz4.
    #[arg(short = 'X', value_name = "KEY=VALUE", global = true)]
    props: Vec<String>,
    /// A file of KEY=VALUE properties (# comments), read before -X.
    #[arg(short = 'F', value_name = "FILE", global = true)]
    config_file: Option<std::path::PathBuf>,
    /// How long to wait for the cluster and each admin call, in seconds
    /// (default.api.timeout.ms; default 10).
    #[arg(short = 'm', value_name = "SECONDS", global = true)]
    timeout: Option<f64>,
}

impl Conn {
    fn properties(&self) -> Result<Properties> {
        // Where the brokers come from, weakest first: KAFKA_BOOTSTRAP, a
        // bootstrap.servers line in -F's file, -b, -X bootstrap.servers.
        let mut p = Properties::new();
        if let Some(env) = std::env::var("KAFKA_BOOTSTRAP")
            .ok()
            .filter(|b| !b.is_empty())
        {
            p.insert("bootstrap.servers", env);
        }
        let ms = (self.timeout.unwrap_or(10.0) * 1000.0) as u64;
        p.insert("default.api.timeout.ms", ms.to_string());
        if let Some(path) = &self.config_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("-F {}: cannot read it", path.display()))?;
            for line in text.lines().map(str::trim) {
                if !line.is_empty() && !line.starts_with('#') {
                    p.insert_pair(line)
                        .with_context(|| format!("-F {}: {line:?}", path.display()))?;
                }
            }
        }
        if let Some(b) = self.brokers.as_ref().filter(|b| !b.is_empty()) {
            p.insert("bootstrap.servers", b);
        }
        for kv in &self.props {
            p.insert_pair(kv).with_context(|| format!("-X {kv}"))?;
        }
        if p.get("bootstrap.servers").is_none() {
            usage_error("no broker given: pass -b HOST:PORT or set KAFKA_BOOTSTRAP");
        }
        Ok(p)
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Produce records from stdin or files (kcat -P).
    #[command(after_help = "Examples:
  seq 1 100 | faustus produce -t numbers
  printf 'k1\\tv1\\nk2\\tv2\\n' | faustus produce -t clicks -K '\\t' -H source=cli
  faustus produce -t clicks -l records.txt -D ';' -X compression.type=lz4
  faustus produce -t blobs image.png                 (each file is one record)
  faustus -P -t clicks -K :                          (kcat's spelling)")]
    Produce {
        #[command(flatten)]
        conn: Conn,
        /// Topic.
        #[arg(short = 't')]
        topic: String,
        /// Partition (default or -1: by key hash, sticky for null keys).
        #[arg(short = 'p', allow_hyphen_values = true)]
        partition: Option<i32>,
        /// Message delimiter, with escapes (\n \t \r \xNN).
        #[arg(short = 'D', default_value = "\\n")]
        delim: String,
        /// Key delimiter: each message is KEY<DELIM>VALUE (escapes as -D); a
        /// message without it has a null key.
        #[arg(short = 'K')]
        key_delim: Option<String>,
        /// A fixed key for every message (-K keys take precedence).
        #[arg(short = 'k')]
        key: Option<String>,
        /// A header NAME=VALUE on every message, repeatable (NAME alone: null).
        #[arg(short = 'H', value_name = "NAME=VALUE")]
        headers: Vec<String>,
        /// Read delimited messages from this file instead of stdin.
        #[arg(short = 'l', value_name = "FILE")]
        file: Option<std::path::PathBuf>,
        /// Compression: none, gzip, snappy, lz4, zstd (compression.type).
        #[arg(short = 'z')]
        compression: Option<String>,
        /// Stop after this many messages.
        #[arg(short = 'c')]
        count: Option<u64>,
        /// Send empty keys and values as null.
        #[arg(short = 'Z')]
        null_empty: bool,
        /// Quiet: no informational messages.
        #[arg(short = 'q')]
        quiet: bool,
        /// Files sent whole, one record each.
        files: Vec<std::path::PathBuf>,
    },
    /// Consume records and print them (kcat -C; -G for a consumer group).
    #[command(after_help = "Examples:
  faustus consume -t clicks -e                       (values, one per line, then exit)
  faustus consume -t clicks -o -10 -e -K :           (last 10 per partition, KEY:VALUE)
  faustus consume -t clicks -o s@1700000000000 -o e@1700000060000 -J
  faustus consume -t clicks -e -f '%t [%p] at %o: %k=%s (%h)\\n'
  faustus consume -G counters -o beginning clicks views   (a group; commits what it printed)
  faustus -C -t clicks -e -q                         (kcat's spelling)
Format tokens (-f): %t topic, %p partition, %o offset, %k key, %s value,
%T timestamp, %h headers, %K key size, %S value size, %R value size as
binary int32, %% percent; escapes \\n \\t \\r \\xNN.")]
    Consume {
        #[command(flatten)]
        conn: Conn,
        /// Topic (repeat -t, or list topics after the flags, with -G).
        #[arg(short = 't')]
        topic: Vec<String>,
        /// Join this consumer group: balanced consumption, commits what it
        /// printed on revocation and on exit (SIGINT/SIGTERM included).
        #[arg(short = 'G')]
        group: Option<String>,
        /// Partition (default: all).
        #[arg(short = 'p')]
        partition: Option<i32>,
        /// Start: beginning | end | stored | OFFSET | -N (N before each
        /// partition's end) | s@TS (first at or after TS ms); e@TS stops
        /// before TS. Repeatable (s@A -o e@B).
        #[arg(short = 'o', allow_hyphen_values = true)]
        offset: Vec<String>,
        /// Exit after this many records.
        #[arg(short = 'c')]
        count: Option<u64>,
        /// Exit at the end of every partition.
        #[arg(short = 'e')]
        exit_at_end: bool,
        /// Output format (tokens below); takes precedence over -K and -D.
        #[arg(short = 'f')]
        format: Option<String>,
        /// Print keys, then this delimiter, then the value (escapes as -D).
        #[arg(short = 'K')]
        key_delim: Option<String>,
        /// Delimiter after each record (default \n).
        #[arg(short = 'D', default_value = "\\n")]
        delim: String,
        /// Print each record as kcat's JSON envelope.
        #[arg(short = 'J')]
        json: bool,
        /// Print null keys and values as NULL.
        #[arg(short = 'Z')]
        null_as_text: bool,
        /// Quiet: no informational messages on stderr.
        #[arg(short = 'q')]
        quiet: bool,
        /// Unbuffered: write each record as soon as it is printed.
        #[arg(short = 'u')]
        unbuffered: bool,
        /// Topics, after the flags (kcat -G GROUP TOPIC...).
        topics: Vec<String>,
    },
    /// List brokers, topics, partitions, leaders, replicas and ISRs (kcat -L).
    #[command(after_help = "Examples:
  faustus metadata
  faustus metadata -t clicks
  faustus -L -t clicks                               (kcat's spelling)")]
    Metadata {
        #[command(flatten)]
        conn: Conn,
        /// Only this topic.
        #[arg(short = 't')]
        topic: Option<String>,
        /// Quiet (accepted for kcat's sake; the listing is all there is).
        #[arg(short = 'q')]
        quiet: bool,
    },
    /// Offsets for timestamps (kcat -Q): the first offset at or after each.
    #[command(after_help = "Examples:
  faustus query -t clicks:0:1700000000000 -t clicks:1:1700000000000
  faustus -Q -t clicks:0:-1                          (TS -1: the end; -2: the start)")]
    Query {
        #[command(flatten)]
        conn: Conn,
        /// TOPIC:PARTITION:TIMESTAMP (ms), repeatable.
        #[arg(short = 't', required = true, allow_hyphen_values = true)]
        targets: Vec<String>,
        /// Quiet (accepted for kcat's sake).
        #[arg(short = 'q')]
        quiet: bool,
    },
    /// Manage consumer groups.
    #[command(after_help = "Examples:
  faustus groups list
  faustus groups describe counters
  faustus groups reset-offsets counters -t clicks --to-earliest
  faustus groups delete counters")]
    Groups {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        action: GroupAction,
    },
    /// Look at a Faustus app: its workers, their partitions, input lag per
    /// partition and internal topics (for those who run no web server).
    #[command(after_help = "Example:\n  faustus app status page_views")]
    App {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        action: AppAction,
    },
    /// Manage topics.
    #[command(after_help = "Examples:
  faustus topics create clicks -P 6 -C retention.ms=86400000
  faustus topics list
  faustus topics describe clicks
  faustus topics delete clicks")]
    Topics {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        action: TopicAction,
    },
    /// Manage ACLs (kafka-acls.sh's flags), on a cluster with an authorizer.
    #[command(after_help = "Examples:
  faustus acls create --allow-principal User:alice --operation read --operation describe --topic orders
  faustus acls create --allow-principal User:alice --operation read --group billing
  faustus acls create --allow-principal User:svc --operation write --topic svc- --resource-pattern-type prefixed
  faustus acls list --principal User:alice
  faustus acls delete --principal User:alice --topic orders
Secured clusters: -X security.protocol=SASL_SSL -X sasl.mechanism=SCRAM-SHA-512
  -X sasl.username=admin -X sasl.password=... -X ssl.ca.location=ca.pem")]
    Acls {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        action: AclAction,
    },
    /// Round-trip records through Kafka and print what happened.
    #[command(after_help = "Example:\n  faustus demo -n 100000")]
    Demo {
        #[command(flatten)]
        conn: Conn,
        /// How many records.
        #[arg(short = 'n', default_value_t = 100_000)]
        records: usize,
    },
}

#[derive(Debug, Subcommand)]
enum TopicAction {
    /// List topics with their partition counts.
    List,
    /// Create a topic.
    Create {
        /// Name.
        name: String,
        /// Partitions.
        #[arg(short = 'P', long, default_value_t = 1)]
        partitions: i32,
        /// Replication factor.
        #[arg(short = 'R', long, default_value_t = 1)]
        replication: i16,
        /// Topic config, repeatable: -C cleanup.policy=compact.
        #[arg(short = 'C', value_name = "KEY=VALUE")]
        config: Vec<String>,
    },
    /// Delete a topic.
    Delete {
        /// Name.
        name: String,
    },
    /// Show partitions, leaders, replicas, offsets and configs.
    Describe {
        /// Name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum AppAction {
    /// Members, partitions with their committed offsets, lag and owner,
    /// and the app's internal topics.
    Status {
        /// The app id (its group id).
        app: String,
    },
}

#[derive(Debug, Subcommand)]
enum GroupAction {
    /// List groups with their state.
    List,
    /// Show a group's members, assignments, committed offsets and lag.
    Describe {
        /// Group id.
        group: String,
    },
    /// Delete an empty group.
    Delete {
        /// Group id.
        group: String,
    },
    /// Reset an empty group's committed offsets for a topic.
    ResetOffsets {
        /// Group id.
        group: String,
        /// Topic.
        #[arg(short = 't', long = "topic")]
        topic: String,
        /// To the log start.
        #[arg(long, group = "to")]
        to_earliest: bool,
        /// To the log end.
        #[arg(long, group = "to")]
        to_latest: bool,
        /// To this offset.
        #[arg(long, group = "to")]
        to_offset: Option<i64>,
    },
}

/// The resource and principal flags of `faustus acls` (kafka-acls.sh's).
#[derive(Debug, clap::Args)]
struct AclArgs {
    /// A topic (`*` for all).
    #[arg(long, group = "resource")]
    topic: Option<String>,
    /// A consumer group (`*` for all).
    #[arg(long, group = "resource")]
    group: Option<String>,
    /// A transactional.id (`*` for all).
    #[arg(long, group = "resource")]
    transactional_id: Option<String>,
    /// The cluster.
    #[arg(long, group = "resource")]
    cluster: bool,
    /// literal (default for create), prefixed; for list and delete also
    /// any (default) and match.
    #[arg(long)]
    resource_pattern_type: Option<String>,
    /// Operations: read, write, create, delete, alter, describe,
    /// cluster-action, describe-configs, alter-configs, idempotent-write,
    /// all (repeatable).
    #[arg(long = "operation")]
    operations: Vec<String>,
    /// The client host the ACL applies to (default `*`).
    #[arg(long)]
    host: Option<String>,
}

#[derive(Debug, Subcommand)]
enum AclAction {
    /// List ACLs (all, or those the flags select).
    List {
        /// Only this principal's (User:NAME).
        #[arg(long)]
        principal: Option<String>,
        #[command(flatten)]
        acl: AclArgs,
    },
    /// Create ACLs: each operation for each principal on the resource.
    Create {
        /// Principals to allow (User:NAME, repeatable).
        #[arg(long = "allow-principal")]
        allow: Vec<String>,
        /// Principals to deny (User:NAME, repeatable).
        #[arg(long = "deny-principal")]
        deny: Vec<String>,
        #[command(flatten)]
        acl: AclArgs,
    },
    /// Delete the ACLs the flags select, and print them.
    Delete {
        /// Only this principal's (User:NAME).
        #[arg(long)]
        principal: Option<String>,
        #[command(flatten)]
        acl: AclArgs,
    },
}

/// Prints one line and exits 2: the command line is wrong.
fn usage_error(msg: &str) -> ! {
    eprintln!("faustus: {msg}");
    std::process::exit(2);
}

/// kcat's spelling (`-C`, `-P`, `-L`, `-Q`, `-G` anywhere among the flags)
/// turned into ours (`consume`, `produce`, `metadata`, `query`).
fn from_kcat(mut args: Vec<OsString>) -> Vec<OsString> {
    let first = args.get(1).and_then(|a| a.to_str()).unwrap_or("");
    if !first.starts_with('-') || ["-h", "--help", "-V", "--version"].contains(&first) {
        return args;
    }
    let modes = [
        ("-C", "consume"),
        ("-P", "produce"),
        ("-L", "metadata"),
        ("-Q", "query"),
    ];
    let found = args.iter().enumerate().skip(1).find_map(|(i, a)| {
        let a = a.to_str()?;
        modes
            .iter()
            .find(|(flag, _)| *flag == a)
            .map(|(_, sub)| (i, *sub))
    });
    let sub = match found {
        Some((i, sub)) => {
            args.remove(i);
            sub
        }
        None if args.iter().any(|a| a == "-G") => "consume",
        // kcat: a terminal on stdin means consume, piped input produce.
        None if std::io::stdin().is_terminal() => "consume",
        None => "produce",
    };
    args.insert(1, sub.into());
    args
}

#[tokio::main]
async fn main() {
    let cli = match Cli::try_parse_from(from_kcat(std::env::args_os().collect())) {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                std::process::exit(
                    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                        2
                    } else {
                        0
                    },
                );
            }
            let text = e.render().to_string();
            let line = text.lines().next().unwrap_or("bad command line");
            usage_error(&format!(
                "{}; see 'faustus --help' or 'faustus SUBCOMMAND --help'",
                line.trim_start_matches("error: ")
            ));
        }
    };
    if let Err(e) = run(cli).await {
        let msg = format!("{e:#}").replace('\n', " ");
        let hint = match e.downcast_ref::<faustus::wire::Error>() {
            Some(faustus::wire::Error::Bootstrap { .. }) => {
                " (is Kafka running there? give its address with -b HOST:PORT or KAFKA_BOOTSTRAP)"
            }
            Some(faustus::wire::Error::Authentication { .. }) => {
                " (check -X sasl.mechanism, sasl.username and sasl.password)"
            }
            Some(faustus::wire::Error::Tls { .. }) => {
                " (check -X ssl.ca.location, and ssl.certificate.location and ssl.key.location if the broker asks for a client certificate; -X ssl.endpoint.identification.algorithm= turns the host name check off)"
            }
            _ => "",
        };
        eprintln!("faustus: {msg}{hint}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Produce {
            conn,
            topic,
            partition,
            delim,
            key_delim,
            key,
            headers,
            file,
            compression,
            count,
            null_empty,
            quiet: _,
            files,
        } => {
            let mut props = conn.properties()?;
            if let Some(c) = compression {
                props.insert("compression.type", &c);
            }
            // kcat's batches (librdkafka's batch.size, 1 MB) rather than the
            // Java client's 16 KB: a command line streams many small lines,
            // and 16 KB batches take 2.5x the time. -X batch.size overrides.
            if props.get("batch.size").is_none() {
                props.insert("batch.size", "1000000");
            }
            let args = produce::Produce {
                topic,
                partition: partition.filter(|p| *p >= 0),
                delim,
                key_delim,
                fixed_key: key,
                headers,
                file,
                files,
                count,
                null_empty,
            };
            produce::produce(&props, args).await
        }
        Command::Consume {
            conn,
            mut topic,
            group,
            partition,
            offset,
            count,
            exit_at_end,
            format,
            key_delim,
            delim,
            json,
            null_as_text,
            quiet,
            unbuffered,
            topics,
        } => {
            let props = conn.properties()?;
            topic.extend(topics);
            if topic.is_empty() {
                usage_error(
                    "consume needs a topic: -t TOPIC (or, with -G, topics after the flags)",
                );
            }
            let printer = match (json, format) {
                (true, _) => Printer::json(),
                (false, Some(f)) => {
                    Printer::format(&f, null_as_text).unwrap_or_else(|e| usage_error(&e))
                }
                (false, None) => Printer::delimited(key_delim.as_deref(), &delim, null_as_text),
            };
            let args = consume::Consume {
                topics: topic,
                partition,
                offsets: offset,
                count,
                exit_at_end,
                printer,
                quiet,
                unbuffered,
            };
            match group {
                Some(g) => consume::consume_group(&props, &g, args).await,
                None => consume::consume(&props, args).await,
            }
        }
        Command::Metadata {
            conn,
            topic,
            quiet: _,
        } => metadata::list(&conn.properties()?, topic.as_deref()).await,
        Command::Query {
            conn,
            targets,
            quiet: _,
        } => metadata::query(&conn.properties()?, &targets).await,
        Command::Groups { conn, action } => admin::groups(&conn.properties()?, action).await,
        Command::App {
            conn,
            action: AppAction::Status { app },
        } => admin::app_status(&conn.properties()?, &app).await,
        Command::Topics { conn, action } => admin::topics(&conn.properties()?, action).await,
        Command::Acls { conn, action } => admin::acls(&conn.properties()?, action).await,
        Command::Demo { conn, records } => demo::demo(&conn.properties()?, records).await,
    }
}

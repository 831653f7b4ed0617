//! `App::main`: the command line of a Faustus program (as Faust's `worker`,
//! `send`, `agents` and `tables` commands).

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use faustus_wire::producer::{Producer, ProducerConfig, ProducerRecord};

use crate::app::{App, ErrorPolicy};
use crate::error::{Error, Result};

#[derive(Debug, Parser)]
#[command(about = "A Faustus stream-processing app")]
struct Cli {
    /// Bootstrap brokers, host:port[,host:port...] (bootstrap.servers).
    #[arg(short = 'b', long = "broker", env = "KAFKA_BOOTSTRAP", global = true)]
    broker: Option<String>,
    /// A property by its Java or engine name, e.g. -X processing.guarantee=exactly_once.
    #[arg(short = 'X', value_name = "KEY=VALUE", global = true)]
    props: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a worker until SIGINT or SIGTERM.
    Worker {
        /// Log level (error, warn, info, debug, trace); RUST_LOG overrides.
        #[arg(short = 'l', long = "loglevel", default_value = "info")]
        level: String,
    },
    /// Send one record (key and value as given, UTF-8) to a topic.
    Send {
        /// The topic.
        topic: String,
        /// The key, when two arguments follow the topic.
        first: String,
        /// The value.
        second: Option<String>,
    },
    /// List the agents.
    Agents,
    /// Print a table's committed contents (all tables without a name).
    Tables {
        /// The table.
        name: Option<String>,
    },
}

/// Runs the command line; see [`App::main`].
pub(crate) fn main(mut app: App) -> ExitCode {
    let cli = Cli::parse();
    if let Some(b) = &cli.broker {
        app.set("bootstrap.servers", b);
    }
    for kv in &cli.props {
        match kv.split_once('=') {
            Some((k, v)) => app.set(k.trim(), v.trim()),
            None => {
                eprintln!("{}: -X {kv}: expected KEY=VALUE", app.id());
                return ExitCode::from(2);
            }
        }
    }
    let level = match &cli.command {
        Command::Worker { level } => level.as_str(),
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{}: cannot start the runtime: {e}", app.id());
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(command(&app, cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}: {e}", app.id());
            ExitCode::FAILURE
        }
    }
}

async fn command(app: &App, command: Command) -> Result<()> {
    match command {
        Command::Worker { .. } => app.run_worker(shutdown_signal()).await,
        Command::Send {
            topic,
            first,
            second,
        } => {
            let (key, value) = match second {
                Some(v) => (Some(first), v),
                None => (None, first),
            };
            let cfg = app.config()?;
            let p = Producer::connect(ProducerConfig::from_properties(&cfg.properties)?).await?;
            let mut rec = ProducerRecord::new(&topic).value(value.into_bytes());
            rec.key = key.map(|k| k.into_bytes().into());
            let md = p.send(rec).await?.await?;
            p.close().await?;
            println!("{}[{}]@{}", md.topic, md.partition, md.offset);
            Ok(())
        }
        Command::Agents => {
            let topology = app.topology()?;
            for a in &topology.agents {
                let policy = match &a.options.on_error {
                    ErrorPolicy::Stop => "stop".to_owned(),
                    ErrorPolicy::Skip => "skip".to_owned(),
                    ErrorPolicy::DeadLetter(t) => format!("dead-letter:{t}"),
                };
                let codecs = topology
                    .topics
                    .iter()
                    .find(|t| t.name == a.topic)
                    .map_or("", |t| t.codecs.as_str());
                println!(
                    "{}\t{}\t{codecs}\tconcurrency={}\ton_error={policy}",
                    a.name, a.topic, a.options.concurrency
                );
            }
            Ok(())
        }
        Command::Tables { name } => {
            let topology = app.topology()?;
            let mut found = false;
            for def in &topology.tables {
                if name.as_deref().is_some_and(|n| n != def.name) {
                    continue;
                }
                found = true;
                let entries =
                    crate::runtime::restore::read_changelog(topology.config(), def).await?;
                let mut out = std::io::stdout().lock();
                // A closed pipe (`| head`) ends the listing quietly.
                let _ = writeln!(out, "# {} ({})", def.name, def.changelog);
                for (k, v) in entries {
                    let windowed = def.frozen_window.is_some();
                    if windowed && !crate::window::is_window_entry(&k) {
                        // The stream time and the close point.
                        continue;
                    }
                    if writeln!(out, "{}", (def.show)(&k, &v)).is_err() {
                        break;
                    }
                }
            }
            if !found {
                return Err(Error::Config(format!(
                    "no table named {}",
                    name.unwrap_or_default()
                )));
            }
            Ok(())
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

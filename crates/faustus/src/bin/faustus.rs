//! The `faustus` command-line tool.

use clap::Parser;

/// Faustus: Kafka stream processing for Rust.
#[derive(Debug, Parser)]
#[command(name = "faustus", version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}

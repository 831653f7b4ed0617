//! Faustus: Kafka stream processing for Rust, after Python's Faust.
//!
//! This is the crate applications depend on. It re-exports the engine
//! ([`engine`]: apps, typed topics, agents, tables with changelogs, standby
//! replicas, exactly-once) and the pure-Rust Kafka client underneath
//! ([`wire`]); [`prelude`] gathers the names most programs need.
//!
//! # The page-view counter
//!
//! Faust's README example: clicks keyed by URL, a table counting them, an
//! agent adding each click to the table.
//!
//! ```no_run
//! use faustus::prelude::*;
//!
//! fn main() -> std::process::ExitCode {
//!     let mut app = App::new("page_views", Properties::new());
//!     let clicks = app.topic_with("page_views", TopicSpec::<String, u64>::new(Utf8, Json));
//!     let click_counts = app.table_with("click_counts", TableSpec::new(Utf8, Json, || 0u64));
//!
//!     app.agent("count_click", &clicks, async move |clicks| {
//!         let mut table = clicks.table(&click_counts)?;
//!         for click in clicks.items() {
//!             let (url, count) = click?;
//!             table.update(&url, |n| *n += count)?;
//!         }
//!         Ok(())
//!     });
//!     app.main()
//! }
//! ```
//!
//! `app.main()` gives the program Faust's commands: `worker` (`-b HOST:PORT`
//! or `KAFKA_BOOTSTRAP`; `-X processing.guarantee=exactly_once`), `send`,
//! `agents`, `tables`.
//!
//! # Guides
//!
//! In the repository's `docs/` directory:
//!
//! - `getting-started.md`: from an empty directory to your own app, in five
//!   minutes (tested by CI as written).
//! - `engine.md`: agents, topics, tables, recovery, standbys, error policies,
//!   at-least-once and exactly-once commits.
//! - `architecture.md`: how the crates and the runtime fit together.
//! - `wire.md`: the Kafka client and the `faustus` command line (kcat's flags).
//! - `groups.md`: consumer groups, classic and KIP-848.
//! - `transactions.md`: the transactional producer and exactly-once copying.
//! - `benchmarks.md`: figures against librdkafka, the Java client, Kafka
//!   Streams and faust-streaming, with the commands that made them.
#![deny(missing_docs)]

pub use faustus_engine as engine;
pub use faustus_wire as wire;

/// The names most Faustus programs need, for `use faustus::prelude::*`: the
/// engine's apps, topics, tables, agents and codecs, and [`Properties`](faustus_wire::Properties).
pub mod prelude {
    pub use faustus_engine::prelude::*;
}

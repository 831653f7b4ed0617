//! Records enriched from a global table: every worker holds all of the
//! table (a topic read whole, outside the consumer group), so an agent can
//! look up any key whatever partition its record came from (Kafka Streams'
//! `KStream.join(GlobalKTable)`, Faust's `GlobalTable`).
//!
//! ```sh
//! cargo run --example global_enrich -- -b 127.0.0.1:9092 worker
//! ```
//!
//! Every `App::main` command works. Configured by environment:
//!
//! - `GE_APP`: the app id (default `global_enrich`);
//! - `GE_INPUT`: the input topic (default `clicks`): UTF-8 keys and values;
//! - `GE_TABLE`: the global table's topic (default `titles`): UTF-8 keys
//!   and values, a null value deletes the key;
//! - `GE_OUTPUT`: the output topic (default `enriched`): each input record
//!   with the same key and the value `VALUE+TITLE` (`null` for a key the
//!   table does not have);
//! - `GE_WORKER`: a name to prefix each output value with (`NAME:`), to
//!   tell which worker wrote it.

use std::process::ExitCode;

use faustus_engine::prelude::*;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn main() -> ExitCode {
    let mut app = App::new(env("GE_APP", "global_enrich"), Properties::new());
    let input = app.topic_with(
        &env("GE_INPUT", "clicks"),
        TopicSpec::<String, String>::new(Utf8, Utf8),
    );
    let table_topic = app.topic_with(
        &env("GE_TABLE", "titles"),
        TopicSpec::<String, String>::new(Utf8, Utf8),
    );
    let output = app.topic_with(
        &env("GE_OUTPUT", "enriched"),
        TopicSpec::<String, String>::new(Utf8, Utf8),
    );
    let titles = app.global_table(&table_topic, String::new);
    let worker = std::env::var("GE_WORKER")
        .map(|w| format!("{w}:"))
        .unwrap_or_default();

    app.agent("enrich", &input, async move |batch| {
        let mut table = batch.global(&titles)?;
        for item in batch.items() {
            let (key, value) = item?;
            let title = table.get_opt(&key)?.unwrap_or_else(|| "null".to_owned());
            batch.send(&output, Some(&key), &format!("{worker}{value}+{title}"))?;
        }
        Ok(())
    });
    app.main()
}

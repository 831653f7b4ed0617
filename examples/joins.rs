//! Joins with Kafka Streams' semantics: a stream with a table, two tables,
//! or two streams within a time window.
//!
//! ```sh
//! JOIN_KIND=stream-table:left cargo run --example joins -- -b 127.0.0.1:9092 worker
//! ```
//!
//! Every `App::main` command works. Configured by environment:
//!
//! - `JOIN_APP`: the app id (default `joins`);
//! - `JOIN_KIND`: `stream-table:inner`, `stream-table:left`,
//!   `table-table:inner`, `table-table:left`, `table-table:outer`,
//!   `stream-stream:inner`, `stream-stream:left`, `stream-stream:outer`,
//!   `foreign-key:inner` or `foreign-key:left` (default
//!   `stream-table:left`);
//! - `JOIN_LEFT`, `JOIN_RIGHT`: the joined topics (default `left`,
//!   `right`), co-partitioned, with UTF-8 keys and values; on a table side
//!   a null or empty value deletes the key;
//! - `JOIN_OUTPUT`: where results go (default `joined`): each with the
//!   same key and the value `LEFT+RIGHT` (`null` for a missing side), or a
//!   tombstone where a table–table join no longer holds, at the timestamp
//!   Kafka Streams would give it;
//! - for `foreign-key`, the left table's value names the right key: the
//!   part before its first `:` (a value without `:` names none);
//! - `JOIN_WINDOW_MS` (stream–stream: records match when their
//!   timestamps differ by at most this, either way; default 1000) and
//!   `JOIN_GRACE_MS` (how late a record may come; default 0).

use std::process::ExitCode;
use std::time::Duration;

use faustus_engine::prelude::*;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn show(v: Option<&String>) -> &str {
    v.map_or("null", String::as_str)
}

fn millis(name: &str, default: u64) -> Result<Duration, String> {
    let raw = env(name, &default.to_string());
    raw.parse()
        .map(Duration::from_millis)
        .map_err(|_| format!("{name}={raw}: expected milliseconds"))
}

/// Declares the join `JOIN_KIND` names.
fn declare(app: &mut App) -> Result<(), String> {
    let kind = env("JOIN_KIND", "stream-table:left");
    let (shape, how) = kind
        .split_once(':')
        .ok_or_else(|| format!("JOIN_KIND={kind}: expected SHAPE:KIND"))?;
    let how: JoinKind = how.parse().map_err(|e| format!("JOIN_KIND={kind}: {e}"))?;
    let utf8 = |app: &mut App, var: &str, default: &str| {
        app.topic_with(
            &env(var, default),
            TopicSpec::<String, String>::new(Utf8, Utf8),
        )
    };
    let left = utf8(app, "JOIN_LEFT", "left");
    let right = utf8(app, "JOIN_RIGHT", "right");
    let out = utf8(app, "JOIN_OUTPUT", "joined");
    match shape {
        "stream-table" => {
            let table = app.table_from("right", &right).empty_values_delete();
            app.stream_table_join(&left, &table, how, &out, |l: &String, r| {
                format!("{l}+{}", show(r))
            });
        }
        "table-table" => {
            let lt = app.table_from("left", &left).empty_values_delete();
            let rt = app.table_from("right", &right).empty_values_delete();
            app.table_table_join(&lt, &rt, how, &out, |l: Option<&String>, r| {
                format!("{}+{}", show(l), show(r))
            });
        }
        "stream-stream" => {
            let window = millis("JOIN_WINDOW_MS", 1000)?;
            let grace = millis("JOIN_GRACE_MS", 0)?;
            app.stream_stream_join(
                &left,
                &right,
                how,
                JoinWindow::symmetric(window).grace(grace),
                &out,
                |l: Option<&String>, r: Option<&String>| format!("{}+{}", show(l), show(r)),
            );
        }
        "foreign-key" => {
            let lt = app.table_from("left", &left).empty_values_delete();
            let rt = app.table_from("right", &right).empty_values_delete();
            app.foreign_key_join(
                "fk",
                &lt,
                &rt,
                |v: &String| v.split_once(':').map(|(fk, _)| fk.to_owned()),
                how,
                &out,
                |l: &String, r| format!("{l}+{}", show(r)),
            );
        }
        other => return Err(format!("JOIN_KIND={kind}: unknown shape {other}")),
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut app = App::new(env("JOIN_APP", "joins"), Properties::new());
    if let Err(e) = declare(&mut app) {
        eprintln!("joins: {e}");
        return ExitCode::from(2);
    }
    app.main()
}

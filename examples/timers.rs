//! Timers: a word count whose totals a timer reports every so often, on
//! one worker of the app at a time (Faust's `@app.timer(on_leader=True)`),
//! and a crontab.
//!
//! ```sh
//! cargo run --example timers -- -b 127.0.0.1:9092 worker
//! ```
//!
//! Every `App::main` command works. Configured by environment:
//!
//! - `TIMERS_APP`: the app id (default `timers`);
//! - `TIMERS_INPUT`: words to count (default `words`; UTF-8 values);
//! - `TIMERS_OUTPUT`: where reports go (default `reports`): each a record
//!   keyed by the reporting worker's name, valued `WORDS@DUE` (the distinct
//!   words in this worker's partitions, and the tick's due time in ms);
//! - `TIMERS_EVERY_MS`: the report interval (default 1000);
//! - `TIMERS_LEADER`: `1` (default) to report on the leader only, `0` on
//!   every worker;
//! - `TIMERS_CRON`: a cron pattern (UTC) for a second report, keyed
//!   `cron:NAME` (default none);
//! - `TIMERS_WORKER`: this worker's name in its reports (default `worker`).

use std::process::ExitCode;
use std::time::Duration;

use faustus_engine::prelude::*;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn main() -> ExitCode {
    let mut app = App::new(env("TIMERS_APP", "timers"), Properties::new());
    let words = app.topic_with(
        &env("TIMERS_INPUT", "words"),
        TopicSpec::<String, String>::new(Utf8, Utf8),
    );
    let reports = app.topic_with(
        &env("TIMERS_OUTPUT", "reports"),
        TopicSpec::<String, String>::new(Utf8, Utf8),
    );
    let counts = app.table_with::<String, u64>("counts", TableSpec::new(Utf8, Json, || 0));
    let worker = env("TIMERS_WORKER", "worker");
    let every = match env("TIMERS_EVERY_MS", "1000").parse::<u64>() {
        Ok(ms) => Duration::from_millis(ms),
        Err(_) => {
            eprintln!("timers: TIMERS_EVERY_MS must be milliseconds");
            return ExitCode::from(2);
        }
    };

    let table = counts.clone();
    app.agent("count", &words, async move |batch| {
        let mut t = batch.table(&table)?;
        for word in batch.values() {
            t.update(&word?, |n| *n += 1)?;
        }
        Ok(())
    });

    let (table, out, name) = (counts.clone(), reports.clone(), worker.clone());
    let timer = app.timer("report", every, async move |ctx: TimerCtx| {
        let mut words = 0;
        for p in ctx.partitions() {
            words += ctx.table(&table, p)?.entries()?.len();
        }
        ctx.send(&out, Some(&name), &format!("{words}@{}", ctx.due_ms()))
    });
    if env("TIMERS_LEADER", "1") == "1" {
        timer.on_leader();
    }
    if let Ok(pattern) = std::env::var("TIMERS_CRON") {
        let (out, key) = (reports.clone(), format!("cron:{worker}"));
        app.crontab("cron", &pattern, Tz::UTC, async move |ctx: TimerCtx| {
            ctx.send(&out, Some(&key), &ctx.due_ms().to_string())
        });
    }
    app.main()
}

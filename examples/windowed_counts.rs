//! Records counted per key and window: the windowed aggregation most Faust
//! apps do ("page views per minute"), with Kafka Streams' window kinds and
//! its emit-final.
//!
//! ```sh
//! WC_WINDOW=tumbling:60000 WC_EMIT=final \
//!   cargo run --example windowed_counts -- -b 127.0.0.1:9092 worker
//! cargo run --example windowed_counts -- -b 127.0.0.1:9092 tables counts
//! ```
//!
//! Every `App::main` command works (`worker`, `send`, `agents`, `tables`);
//! `clicks N [KEYS]` sends N demo records to the input over KEYS keys
//! (default 1000), 10 per millisecond of event time, ending now.
//! Configured by environment:
//!
//! - `WC_APP`: the app id (default `windowed_counts`);
//! - `WC_INPUT`: the input topic (default `clicks`): UTF-8 keys, values
//!   ignored, the record's timestamp is the event time;
//! - `WC_OUTPUT`: the output topic (default `windowed_counts`): one record
//!   per result, keyed `KEY@START/END` (milliseconds; END exclusive for
//!   tumbling and hopping windows, inclusive for sliding and session
//!   windows, as Kafka Streams prints them), the count in decimal as value
//!   (empty: a tombstone for a session merged away), the window's latest
//!   record timestamp as timestamp;
//! - `WC_WINDOW`: `tumbling:SIZE`, `hopping:SIZE:ADVANCE`, `sliding:DIFF`
//!   or `session:GAP`, in milliseconds (default `tumbling:1000`);
//! - `WC_GRACE`: the grace period in milliseconds (default 0);
//! - `WC_EMIT`: `update` (every change, the default) or `final` (each
//!   window once, when it closes).

use std::process::ExitCode;
use std::time::Duration;

use faustus_engine::prelude::*;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// The table `counts` windowed as `WC_WINDOW` says.
fn windowed(table: Table<String, u64>, spec: &str) -> Result<WindowedTable<String, u64>, String> {
    let ms = |s: &str| -> Result<Duration, String> {
        s.parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| format!("WC_WINDOW: {s:?} is not a number of milliseconds"))
    };
    let parts: Vec<&str> = spec.split(':').collect();
    Ok(match parts.as_slice() {
        ["tumbling", size] => table.tumbling(ms(size)?),
        ["hopping", size, advance] => table.hopping(ms(size)?, ms(advance)?),
        ["sliding", diff] => table.sliding(ms(diff)?),
        ["session", gap] => table.session(ms(gap)?, |a: &u64, b: &u64| a + b),
        _ => {
            return Err(format!(
                "WC_WINDOW: {spec:?} is none of tumbling:SIZE, hopping:SIZE:ADVANCE, \
                 sliding:DIFF, session:GAP"
            ))
        }
    })
}

fn main() -> ExitCode {
    let mut app = App::new(env("WC_APP", "windowed_counts"), Properties::new());
    let input = app.topic_with(
        &env("WC_INPUT", "clicks"),
        TopicSpec::<String, Vec<u8>>::new(Utf8, Raw),
    );
    let output = app.topic_with(
        &env("WC_OUTPUT", "windowed_counts"),
        TopicSpec::<Windowed<String>, u64>::new(WindowedText(Utf8), Json),
    );
    let table = app.table_with("counts", TableSpec::new(Utf8, Json, || 0u64));
    let emit = match env("WC_EMIT", "update").as_str() {
        "update" => Emit::Update,
        "final" => Emit::Final,
        other => {
            eprintln!("windowed_counts: WC_EMIT: {other:?} is neither update nor final");
            return ExitCode::FAILURE;
        }
    };
    let grace = match env("WC_GRACE", "0").parse::<u64>() {
        Ok(ms) => Duration::from_millis(ms),
        Err(_) => {
            eprintln!("windowed_counts: WC_GRACE is not a number of milliseconds");
            return ExitCode::FAILURE;
        }
    };
    let counts = match windowed(table, &env("WC_WINDOW", "tumbling:1000")) {
        Ok(t) => t.grace(grace).emit(emit).to(&output),
        Err(e) => {
            eprintln!("windowed_counts: {e}");
            return ExitCode::FAILURE;
        }
    };

    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "clicks") {
        return send_clicks(&input, &args[i + 1..]);
    }
    app.agent("count", &input, async move |batch| {
        let mut windows = batch.windowed(&counts)?;
        for event in batch.events() {
            let event = event?;
            windows.update(&event, &event.key()?, |n| *n += 1)?;
        }
        Ok(())
    });
    app.main()
}

/// `clicks N [KEYS]`: N records over KEYS keys, round robin, 10 per
/// millisecond of event time, the last one now.
fn send_clicks(topic: &Topic<String, Vec<u8>>, args: &[String]) -> ExitCode {
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let keys: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let r: Result<(), faustus_engine::Error> = rt.block_on(async {
        use faustus_engine::wire::producer::{Producer, ProducerConfig};
        let bootstrap = std::env::var("KAFKA_BOOTSTRAP").unwrap_or_default();
        let props = Properties::new().set("bootstrap.servers", bootstrap.as_str());
        let p = Producer::connect(ProducerConfig::from_properties(&props)?).await?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let start = now - (n / 10) as i64;
        let mut pending = std::collections::VecDeque::new();
        for i in 0..n {
            let key = format!("/page/{}", i % keys.max(1));
            let mut rec = topic.record(Some(&key), &b"1".to_vec())?;
            rec.timestamp = Some(start + (i / 10) as i64);
            pending.push_back(p.send(rec).await?);
            if pending.len() >= 100_000 {
                for d in pending.drain(..50_000) {
                    d.await?;
                }
            }
        }
        for d in pending {
            d.await?;
        }
        p.close().await?;
        Ok(())
    });
    match r {
        Ok(()) => {
            println!("sent {n} records");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("windowed_counts: {e}");
            ExitCode::FAILURE
        }
    }
}

//! The page-view counter from Faust's README, in Rust: a topic of clicks
//! keyed by URL with a count as value, a table `click_counts` whose missing
//! keys read as 0, and an agent adding each click's count to the table.
//!
//! ```sh
//! cargo run --example page_views -- -b 127.0.0.1:9092 worker
//! cargo run --example page_views -- -b 127.0.0.1:9092 clicks 10000   # demo clicks
//! cargo run --example page_views -- -b 127.0.0.1:9092 tables click_counts
//! cargo run --example page_views -- -b 127.0.0.1:9092 -X web.port=6066 worker
//! curl 127.0.0.1:6066/health; curl 127.0.0.1:6066/metrics
//! curl 127.0.0.1:6066/tables/click_counts/%2Fpage%2F1   # one URL's count
//! curl '127.0.0.1:6066/tables/click_counts?limit=10'    # this worker's counts
//! ```
//!
//! Table queries can be asked of any worker of the app: one that does not
//! own the URL's partition forwards the query to the one that does. The
//! app's own page `/views?url=URL` answers in words, reading the table the
//! same way (`curl '127.0.0.1:6066/views?url=/page/1'`).
//!
//! Every `App::main` command works (`worker`, `send`, `agents`, `tables`);
//! `clicks N [URLS]` sends N demo clicks over URLS URLs (default 100).
//! Environment, for running several apps side by side (the tests do):
//! `PAGE_VIEWS_APP` (app id, default `page_views`), `PAGE_VIEWS_TOPIC`
//! (default `page_views`), `PAGE_VIEWS_DEAD_LETTERS` (a topic: dead-letter
//! records that do not decode instead of stopping), `PAGE_VIEWS_HANG_ON`
//! (a URL: the agent never returns once it meets a click of it, the stuck
//! agent the liveness test needs).

use std::process::ExitCode;

use faustus_engine::axum::extract::Query;
use faustus_engine::axum::routing::get;
use faustus_engine::axum::Extension;
use faustus_engine::prelude::*;
use faustus_engine::Tables;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn main() -> ExitCode {
    let mut app = App::new(env("PAGE_VIEWS_APP", "page_views"), Properties::new());
    let clicks = app.topic_with(
        &env("PAGE_VIEWS_TOPIC", "page_views"),
        TopicSpec::<String, u64>::new(Utf8, Json),
    );
    let click_counts = app.table_with("click_counts", TableSpec::new(Utf8, Json, || 0u64));
    let options = match std::env::var("PAGE_VIEWS_DEAD_LETTERS") {
        Ok(topic) => AgentOptions::default().on_error(ErrorPolicy::DeadLetter(topic)),
        Err(_) => AgentOptions::default(),
    };

    let hang_on = std::env::var("PAGE_VIEWS_HANG_ON").ok();
    app.agent_with("count_click", &clicks, options, async move |clicks| {
        let mut table = clicks.table(&click_counts)?;
        for click in clicks.items() {
            let (url, count) = click?;
            if hang_on.as_ref() == Some(&url) {
                std::future::pending::<()>().await;
            }
            table.update(&url, |n| *n += count)?;
        }
        Ok(())
    });

    // A page of the app's own (Faust's `@app.page`): any worker answers,
    // from the worker that owns the URL.
    app.page(
        "/views",
        get(
            |Extension(tables): Extension<Tables>,
             Query(q): Query<std::collections::HashMap<String, String>>| async move {
                let url = q.get("url").cloned().unwrap_or_default();
                match tables.get("click_counts", &url).await {
                    Ok(Some(n)) => format!("{url} was viewed {n} times\n"),
                    Ok(None) => format!("{url} was never viewed\n"),
                    Err(e) => format!("{url}: {e}\n"),
                }
            },
        ),
    );

    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "clicks") {
        return send_clicks(&app, &clicks, &args[i + 1..]);
    }
    app.main()
}

/// `clicks N [URLS]`: N clicks of count 1 over URLS URLs, round robin.
fn send_clicks(app: &App, topic: &Topic<String, u64>, args: &[String]) -> ExitCode {
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let urls: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let r: Result<(), faustus_engine::Error> = rt.block_on(async {
        let bootstrap = std::env::var("KAFKA_BOOTSTRAP").unwrap_or_default();
        let props = Properties::new().set("bootstrap.servers", bootstrap.as_str());
        let p = faustus_engine::wire::producer::Producer::connect(
            faustus_engine::wire::producer::ProducerConfig::from_properties(&props)?,
        )
        .await?;
        for i in 0..n {
            let url = format!("/page/{}", i % urls.max(1));
            let _ = p.send(topic.record(Some(&url), &1)?).await?;
        }
        p.close().await?;
        let _ = app;
        Ok(())
    });
    match r {
        Ok(()) => {
            println!("sent {n} clicks");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("page_views: {e}");
            ExitCode::FAILURE
        }
    }
}

//! Agent RPC (Faust's `agent.ask`): an agent that squares numbers and
//! replies, and a command that asks it.
//!
//! ```sh
//! cargo run --example rpc -- -b 127.0.0.1:9092 worker        # the agent
//! cargo run --example rpc -- -b 127.0.0.1:9092 ask 7         # prints 49
//! cargo run --example rpc -- -b 127.0.0.1:9092 ask 1 2 3     # 1 4 9, in order
//! ```
//!
//! `ask N...` asks the agent about each number (`ask` for one, `join` for
//! several) and prints each reply on a line, in the order asked; a reply
//! that does not come within `RPC_TIMEOUT_MS` (default 5000) is an error
//! (exit status 1). With `RPC_AS_THEY_COME=1` it uses `map` instead and
//! prints `INDEX=REPLY` lines as the replies arrive. Every `App::main`
//! command works too. Environment: `RPC_APP` (app id, default `rpc`),
//! `RPC_TOPIC` (default `squares`).

use std::process::ExitCode;
use std::time::Duration;

use faustus_engine::prelude::*;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn main() -> ExitCode {
    let mut app = App::new(env("RPC_APP", "rpc"), Properties::new());
    let numbers = app.topic_with(
        &env("RPC_TOPIC", "squares"),
        TopicSpec::<String, u64>::new(Utf8, Json),
    );
    let square = app.agent("square", &numbers, async |batch| {
        for ev in batch.events() {
            let ev = ev?;
            let n = ev.value()?;
            batch.reply(&ev, &n.saturating_mul(n))?;
        }
        Ok(())
    });

    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "ask") {
        let bootstrap = args
            .iter()
            .position(|a| a == "-b")
            .and_then(|b| args.get(b + 1).cloned())
            .or_else(|| std::env::var("KAFKA_BOOTSTRAP").ok())
            .unwrap_or_default();
        app.set("bootstrap.servers", &bootstrap);
        return ask(&square, &args[i + 1..]);
    }
    app.main()
}

/// `ask N...`: each reply on a line, in order.
fn ask(square: &Agent<String, u64>, args: &[String]) -> ExitCode {
    let numbers: Result<Vec<u64>, _> = args.iter().map(|a| a.parse::<u64>()).collect();
    let numbers = match numbers {
        Ok(n) if !n.is_empty() => n,
        _ => {
            eprintln!("rpc: usage: ask N [N...] (whole numbers)");
            return ExitCode::from(2);
        }
    };
    let timeout = Duration::from_millis(env("RPC_TIMEOUT_MS", "5000").parse().unwrap_or(5000));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut status = ExitCode::SUCCESS;
    // A reply on a line (after `prefix`), or the error on stderr.
    let mut show = |prefix: String, r: faustus_engine::Result<u64>| match r {
        Ok(v) => println!("{prefix}{v}"),
        Err(e) => {
            eprintln!("rpc: {e}");
            status = ExitCode::FAILURE;
        }
    };
    if std::env::var("RPC_AS_THEY_COME").is_ok_and(|v| v == "1") {
        rt.block_on(async {
            use futures::StreamExt;
            let replies = square
                .map::<u64>(numbers.iter().map(|&n| (None, n)), timeout)
                .await;
            let mut replies = std::pin::pin!(replies);
            while let Some((i, r)) = replies.next().await {
                show(format!("{i}="), r);
            }
        });
        return status;
    }
    let replies: Vec<faustus_engine::Result<u64>> = rt.block_on(async {
        if let [n] = numbers[..] {
            vec![square.ask(None, &n).timeout(timeout).await]
        } else {
            square
                .join(numbers.iter().map(|&n| (None, n)), timeout)
                .await
        }
    });
    for r in replies {
        show(String::new(), r);
    }
    status
}

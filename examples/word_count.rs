//! Word count, the streaming "hello world": an agent splits sentences into
//! words and re-keys them by word through a repartition topic (Faust's
//! `group_by`); a second agent counts each word in a table, so that every
//! count lives in the one partition its word hashes to.
//!
//! ```sh
//! cargo run --example word_count -- -b 127.0.0.1:9092 worker
//! cargo run --example word_count -- -b 127.0.0.1:9092 send word_count-sentences "the cat and the hat"
//! cargo run --example word_count -- -b 127.0.0.1:9092 tables word_counts
//! ```
//!
//! `WORD_COUNT_APP` sets the app id (default `word_count`); the sentences
//! topic is `<app id>-sentences`.

use std::process::ExitCode;

use faustus_engine::prelude::*;

fn main() -> ExitCode {
    let id = std::env::var("WORD_COUNT_APP").unwrap_or_else(|_| "word_count".into());
    let mut app = App::new(&id, Properties::new());
    let sentences = app.topic_with(
        &format!("{id}-sentences"),
        TopicSpec::<String, String>::new(Utf8, Utf8),
    );
    let words = app.repartition_topic("words", TopicSpec::<String, u64>::new(Utf8, Json));
    let counts = app.table_with("word_counts", TableSpec::new(Utf8, Json, || 0u64));

    // Split, normalise, and re-key by word: `group_by`.
    let by_word = words.clone();
    app.agent("split", &sentences, async move |batch| {
        for sentence in batch.values() {
            for word in sentence?.split(|c: char| !c.is_alphanumeric()) {
                if !word.is_empty() {
                    batch.send(&by_word, Some(&word.to_lowercase()), &1)?;
                }
            }
        }
        Ok(())
    });

    // Count: each word arrives in the partition of its table entry.
    app.agent("count", &words, async move |batch| {
        let mut table = batch.table(&counts)?;
        for item in batch.items() {
            let (word, n) = item?;
            table.update(&word, |c| *c += n)?;
        }
        Ok(())
    });
    app.main()
}

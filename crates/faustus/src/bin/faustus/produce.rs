//! `faustus produce` (kcat's `-P`): records from stdin, a delimited file
//! (`-l`) or whole files, split on `-D` into messages and on `-K` into key
//! and value, sent through one producer with every delivery checked.
//!
//! Speed: a reader thread fills 1 MiB chunks and hands whole messages over a
//! channel; keys and values are slices of those chunks (no copy per line
//! before the producer's own); deliveries are collected as they finish, not
//! awaited one by one.

use std::collections::VecDeque;
use std::io::{BufRead as _, Read};

use anyhow::{bail, Context as _, Result};
use bytes::{Bytes, BytesMut};
use faustus::wire::producer::{DeliveryFuture, Producer, ProducerConfig, ProducerRecord};
use faustus::wire::Properties;
use memchr::memmem::Finder;

use crate::escape::unescape;

/// What `produce` was asked for.
#[derive(Debug)]
pub(crate) struct Produce {
    pub(crate) topic: String,
    pub(crate) partition: Option<i32>,
    pub(crate) delim: String,
    pub(crate) key_delim: Option<String>,
    pub(crate) fixed_key: Option<String>,
    pub(crate) headers: Vec<String>,
    pub(crate) file: Option<std::path::PathBuf>,
    pub(crate) files: Vec<std::path::PathBuf>,
    pub(crate) count: Option<u64>,
    pub(crate) null_empty: bool,
}

/// Bytes read from the input at a time.
const CHUNK: usize = 1 << 20;
/// Failed deliveries printed one by one before only counting.
const SHOWN_FAILURES: u64 = 10;

/// Sends the input; fails if any record was not delivered.
pub(crate) async fn produce(props: &Properties, args: Produce) -> Result<()> {
    let delim = unescape(&args.delim);
    if delim.is_empty() {
        bail!("-D: the message delimiter is empty");
    }
    let key_delim = args.key_delim.as_deref().map(unescape);
    if key_delim.as_ref().is_some_and(Vec::is_empty) {
        bail!("-K: the key delimiter is empty");
    }
    let mut headers = Vec::new();
    for h in &args.headers {
        // kcat: `-H name=value`; a name without `=` is a null header.
        headers.push(match h.split_once('=') {
            Some((k, v)) => (k.to_owned(), Some(Bytes::copy_from_slice(v.as_bytes()))),
            None => (h.clone(), None),
        });
    }
    if args.file.is_some() && !args.files.is_empty() {
        bail!("-l takes one file: give it as -l FILE, without other files");
    }
    let producer = Producer::connect(ProducerConfig::from_properties(props)?).await?;
    let mut out = Outcome::new();
    let template = Template {
        topic: args.topic.clone(),
        partition: args.partition,
        fixed_key: args.fixed_key.as_ref().map(|k| Bytes::from(k.clone())),
        headers,
        null_empty: args.null_empty,
    };

    // A failure to queue (or to read) stops the input, but what was queued
    // before it is still flushed and every delivery checked.
    let sending: Result<()> = async {
        if !args.files.is_empty() {
            // kcat: each file is one message.
            for path in &args.files {
                let data =
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                let rec = template.record(template.fixed_key.clone(), Bytes::from(data));
                out.sent(producer.send(rec).await?);
            }
        } else {
            let input: Box<dyn Read + Send> = match &args.file {
                Some(path) => Box::new(
                    std::fs::File::open(path)
                        .with_context(|| format!("opening {}", path.display()))?,
                ),
                None => Box::new(std::io::stdin()),
            };
            let (mut chunks, recycle) = read_chunks(input, delim.clone());
            let split = Finder::new(&delim).into_owned();
            let key_split = key_delim.as_deref().map(|k| Finder::new(k).into_owned());
            let key_len = key_delim.as_ref().map_or(0, Vec::len);
            'input: while let Some(chunk) = chunks.recv().await {
                let chunk = chunk.context("reading the input")?;
                let mut start = 0;
                for end in split.find_iter(&chunk).chain(std::iter::once(chunk.len())) {
                    let msg = chunk.slice(start..end);
                    start = (end + delim.len()).min(chunk.len());
                    if msg.is_empty() {
                        continue; // kcat skips empty messages
                    }
                    if args.count.is_some_and(|c| out.total >= c) {
                        break 'input;
                    }
                    let (key, value) = match key_split.as_ref().and_then(|f| f.find(&msg)) {
                        Some(i) => (Some(msg.slice(..i)), msg.slice(i + key_len..)),
                        None => (template.fixed_key.clone(), msg),
                    };
                    out.sent(producer.send(template.record(key, value)).await?);
                }
                // Every record of the chunk is in a batch now: its buffer is
                // free again.
                let _ = recycle.send(chunk);
            }
        }
        Ok(())
    }
    .await;
    // Every failure also shows in its delivery: `finish` counts and reports
    // them; the flush's own error matters only if none did.
    let flushed = producer.flush().await;
    out.finish().await?;
    sending?;
    flushed?;
    producer.close().await?;
    Ok(())
}

/// The parts every record shares.
struct Template {
    topic: String,
    partition: Option<i32>,
    fixed_key: Option<Bytes>,
    headers: Vec<(String, Option<Bytes>)>,
    null_empty: bool,
}

impl Template {
    fn record(&self, key: Option<Bytes>, value: Bytes) -> ProducerRecord {
        let null_if_empty = |b: Bytes| (!(self.null_empty && b.is_empty())).then_some(b);
        ProducerRecord {
            topic: self.topic.clone(),
            partition: self.partition,
            key: key.and_then(null_if_empty),
            value: null_if_empty(value),
            headers: self.headers.clone(),
            timestamp: None,
        }
    }
}

/// Deliveries in flight, collected as they finish: one entry per batch
/// (records of a batch share their outcome), with how many records it holds.
struct Outcome {
    pending: VecDeque<(DeliveryFuture, u64)>,
    total: u64,
    failed: u64,
}

impl Outcome {
    fn new() -> Self {
        Self {
            pending: VecDeque::new(),
            total: 0,
            failed: 0,
        }
    }

    fn sent(&mut self, d: DeliveryFuture) {
        self.total += 1;
        match self.pending.back_mut() {
            Some((last, n)) if last.same_batch(&d) => *n += 1,
            _ => self.pending.push_back((d, 1)),
        }
        // Batches complete mostly in order: collect from the front while
        // it is done.
        while let Some(r) = self.pending.front().and_then(|(d, _)| d.try_result()) {
            if let Some((_, n)) = self.pending.pop_front() {
                self.check(r, n);
            }
        }
    }

    fn check(&mut self, r: faustus::wire::Result<faustus::wire::producer::RecordMetadata>, n: u64) {
        if let Err(e) = r {
            if self.failed < SHOWN_FAILURES {
                eprintln!("% Delivery failed for {n} message(s): {e}");
            }
            self.failed += n;
        }
    }

    async fn finish(mut self) -> Result<()> {
        while let Some((d, n)) = self.pending.pop_front() {
            let r = d.await;
            self.check(r, n);
        }
        if self.failed > 0 {
            bail!(
                "{} of {} records were not delivered",
                self.failed,
                self.total
            );
        }
        Ok(())
    }
}

/// Reads `input` on a thread of its own into chunks that end just after a
/// delimiter (the last chunk may not), so no message spans two chunks. Each
/// read is handed on at once (a slow pipe's lines are not held back); the
/// chunk buffers come back through `recycle` once their records are sent, so
/// the steady state allocates and zeroes no memory.
fn read_chunks(
    input: Box<dyn Read + Send>,
    delim: Vec<u8>,
) -> (
    tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    std::sync::mpsc::Sender<Bytes>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let (recycle, recycled) = std::sync::mpsc::channel::<Bytes>();
    std::thread::spawn(move || {
        let mut input = std::io::BufReader::with_capacity(CHUNK, input);
        // The tail of the last read after its last delimiter.
        let mut carry: Vec<u8> = Vec::new();
        loop {
            let data = match input.fill_buf() {
                Ok(d) => d,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            };
            if data.is_empty() {
                if !carry.is_empty() {
                    let _ = tx.blocking_send(Ok(Bytes::from(carry)));
                }
                return;
            }
            let mut buf = recycled
                .try_recv()
                .ok()
                .and_then(|b| b.try_into_mut().ok())
                .unwrap_or_else(|| BytesMut::with_capacity(2 * CHUNK));
            buf.clear();
            buf.extend_from_slice(&carry);
            carry.clear();
            buf.extend_from_slice(data);
            let n = data.len();
            input.consume(n);
            // The end of the last delimiter as a left-to-right split finds
            // it (the buffer starts on a message boundary): a delimiter that
            // overlaps itself (";\n;") must split here as it will later.
            let last = if delim.len() == 1 {
                memchr::memrchr(delim[0], &buf)
            } else {
                memchr::memmem::find_iter(&buf, &delim).last()
            };
            match last {
                Some(i) => {
                    let cut = i + delim.len();
                    carry.extend_from_slice(&buf[cut..]);
                    buf.truncate(cut);
                    if tx.blocking_send(Ok(buf.freeze())).is_err() {
                        return;
                    }
                }
                None => carry.extend_from_slice(&buf),
            }
        }
    });
    (rx, recycle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A reader that hands out at most `step` bytes per read, as a pipe does.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        step: usize,
    }

    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = self.step.min(out.len()).min(self.data.len() - self.pos);
            out[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    fn chunks_of(data: &[u8], delim: &[u8], step: usize) -> Vec<Vec<u8>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let input = Trickle {
            data: data.to_vec(),
            pos: 0,
            step,
        };
        rt.block_on(async {
            let (mut rx, recycle) = read_chunks(Box::new(input), delim.to_vec());
            let mut out = Vec::new();
            while let Some(c) = rx.recv().await {
                let c = c.expect("read");
                out.push(c.to_vec());
                let _ = recycle.send(c);
            }
            out
        })
    }

    #[test]
    fn chunks_end_after_a_delimiter_and_keep_every_byte() {
        let got = chunks_of(b"a\nbb\ncc", b"\n", 3);
        assert_eq!(got.concat(), b"a\nbb\ncc");
        assert!(got[..got.len() - 1].iter().all(|c| c.ends_with(b"\n")));
        assert_eq!(chunks_of(b"x;;y;;", b";;", 1).concat(), b"x;;y;;");
        assert!(chunks_of(b"", b"\n", 4).is_empty());
    }

    proptest! {
        #[test]
        fn no_message_spans_two_chunks(
            data in proptest::collection::vec(prop_oneof![Just(b'a'), Just(b';'), Just(b'\n')], 0..400),
            delim in prop_oneof![Just(b"\n".to_vec()), Just(b";;".to_vec()), Just(b";\n;".to_vec())],
            step in 1usize..50,
        ) {
            let got = chunks_of(&data, &delim, step);
            prop_assert_eq!(got.concat(), data.clone());
            for c in &got[..got.len().saturating_sub(1)] {
                prop_assert!(c.ends_with(&delim));
            }
            // Splitting chunk by chunk gives the messages of the whole input.
            let split = |b: &[u8]| -> Vec<Vec<u8>> {
                let mut out = Vec::new();
                let mut start = 0;
                for i in memchr::memmem::find_iter(b, &delim) {
                    if i >= start {
                        out.push(b[start..i].to_vec());
                        start = i + delim.len();
                    }
                }
                out.push(b[start..].to_vec());
                out.retain(|m| !m.is_empty());
                out
            };
            let by_chunk: Vec<Vec<u8>> = got.iter().flat_map(|c| split(c)).collect();
            prop_assert_eq!(by_chunk, split(&data));
        }
    }
}

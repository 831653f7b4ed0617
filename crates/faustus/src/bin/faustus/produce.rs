//! `faustus produce` (kcat's `-P`): records from stdin, a delimited file
//! (`-l`) or whole files, split on `-D` into messages and on `-K` into key
//! and value, sent through one producer with every delivery checked.
//!
//! Speed: a reader thread fills 1 MiB chunks and hands whole messages over a
//! channel; keys and values are slices of those chunks (no copy per line
//! before the producer's own); deliveries are collected as they finish, not
//! awaited one by one.

use std::collections::VecDeque;
use std::io::Read;

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
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
            ),
            None => Box::new(std::io::stdin()),
        };
        let mut chunks = read_chunks(input, delim.clone());
        let split = Finder::new(&delim).into_owned();
        let key_split = key_delim.as_deref().map(|k| Finder::new(k).into_owned());
        'input: while let Some(chunk) = chunks.recv().await {
            let chunk = chunk.context("reading the input")?;
            let mut start = 0;
            let ends = split
                .find_iter(&chunk)
                .chain(std::iter::once(chunk.len()))
                .collect::<Vec<_>>();
            for end in ends {
                let msg = chunk.slice(start..end);
                start = (end + delim.len()).min(chunk.len());
                if msg.is_empty() {
                    continue; // kcat skips empty messages
                }
                if args.count.is_some_and(|c| out.total >= c) {
                    break 'input;
                }
                let (key, value) = match key_split.as_ref().and_then(|f| f.find(&msg)) {
                    Some(i) => (
                        Some(msg.slice(..i)),
                        msg.slice(i + key_split.as_ref().map_or(0, |f| f.needle().len())..),
                    ),
                    None => (template.fixed_key.clone(), msg),
                };
                out.sent(producer.send(template.record(key, value)).await?);
            }
        }
    }
    producer.flush().await?;
    out.finish().await?;
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

/// Deliveries in flight, collected as they finish.
struct Outcome {
    pending: VecDeque<DeliveryFuture>,
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
        self.pending.push_back(d);
        // Records complete in batches, mostly in order: collect from the
        // front while it is done.
        while let Some(r) = self.pending.front().and_then(DeliveryFuture::try_result) {
            self.pending.pop_front();
            self.check(r);
        }
    }

    fn check(&mut self, r: faustus::wire::Result<faustus::wire::producer::RecordMetadata>) {
        if let Err(e) = r {
            self.failed += 1;
            if self.failed <= SHOWN_FAILURES {
                eprintln!("% Delivery failed for message: {e}");
            }
        }
    }

    async fn finish(mut self) -> Result<()> {
        while let Some(d) = self.pending.pop_front() {
            let r = d.await;
            self.check(r);
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
/// delimiter (the last chunk may not), so no message spans two chunks.
fn read_chunks(
    mut input: Box<dyn Read + Send>,
    delim: Vec<u8>,
) -> tokio::sync::mpsc::Receiver<std::io::Result<Bytes>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    std::thread::spawn(move || {
        let mut buf = BytesMut::with_capacity(CHUNK);
        let mut scanned: usize = 0;
        loop {
            let len = buf.len();
            buf.resize(len + CHUNK, 0);
            let n = match input.read(&mut buf[len..]) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                    buf.truncate(len);
                    continue;
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            };
            buf.truncate(len + n);
            if n == 0 {
                if !buf.is_empty() {
                    let _ = tx.blocking_send(Ok(buf.freeze()));
                }
                return;
            }
            // The last delimiter in what is new (a delimiter may straddle
            // the previous read's end).
            let from = scanned.saturating_sub(delim.len() - 1);
            match memchr::memmem::rfind(&buf[from..], &delim) {
                Some(i) => {
                    let cut = from + i + delim.len();
                    let whole = buf.split_to(cut).freeze();
                    scanned = buf.len();
                    if tx.blocking_send(Ok(whole)).is_err() {
                        return;
                    }
                }
                None => scanned = buf.len(),
            }
            if buf.capacity() - buf.len() < CHUNK / 4 {
                buf.reserve(CHUNK);
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks_of(input: &'static [u8], delim: &[u8]) -> Vec<Vec<u8>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut rx = read_chunks(Box::new(input), delim.to_vec());
            let mut out = Vec::new();
            while let Some(c) = rx.recv().await {
                out.push(c.expect("read").to_vec());
            }
            out
        })
    }

    #[test]
    fn chunks_end_after_a_delimiter_and_keep_every_byte() {
        let got = chunks_of(b"a\nbb\ncc", b"\n");
        assert_eq!(got.concat(), b"a\nbb\ncc");
        assert!(got[..got.len() - 1].iter().all(|c| c.ends_with(b"\n")));
        assert_eq!(chunks_of(b"x;;y;;", b";;").concat(), b"x;;y;;");
        assert!(chunks_of(b"", b"\n").is_empty());
    }
}

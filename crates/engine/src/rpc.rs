//! Agent RPC: Faust's `ask`, `cast`, `map` and `join`, with timeouts.
//!
//! A request is a record on the agent's topic carrying three headers:
//! the reply topic ([`REPLY_TO`], `<app>-replies`, which the requester
//! creates with a day's retention), the partition of it the requester reads
//! ([`REPLY_PARTITION`]) and a correlation id ([`CORRELATION_ID`]). The
//! agent answers with [`Batch::reply`](crate::Batch::reply): a record on
//! that partition, keyed and headed by the correlation id, its value the
//! answer as JSON. Under exactly-once the reply is in the agent's
//! transaction, and the requester reads with `read_committed`: an answer
//! from an aborted attempt is never seen, the retried one is.
//!
//! The requester reads its partition with an assigned consumer (no group),
//! from the end it had when it started, and hands each reply to the request
//! waiting for its correlation id; a reply nobody waits for (the request
//! timed out, or its requester is gone) is dropped, and expires with the
//! topic's retention.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use faustus_wire::consumer::{Consumer, ConsumerConfig, Offset};
use faustus_wire::{Admin, NewTopic, OffsetSpec, Properties};

use crate::error::{Error, Location, Result};

/// Header naming the topic a request's reply goes to.
pub const REPLY_TO: &str = "faustus.reply.to";
/// Header naming the partition of the reply topic the requester reads.
pub const REPLY_PARTITION: &str = "faustus.reply.partition";
/// Header pairing a reply with its request.
pub const CORRELATION_ID: &str = "faustus.correlation.id";

/// How long a reply is kept for a requester that is gone.
const REPLY_RETENTION_MS: &str = "86400000";

/// A reply as read: where it was, and its value.
type Reply = (Location, Option<Bytes>);

type Pending = Arc<Mutex<HashMap<String, tokio::sync::oneshot::Sender<Reply>>>>;

/// The reading end of the app's reply topic, started on the first request.
#[derive(Clone)]
pub(crate) struct Replies {
    reader: Arc<tokio::sync::OnceCell<Reader>>,
    /// The app's properties (shared with its producer).
    props: Arc<Mutex<Properties>>,
    app_id: Arc<str>,
}

impl std::fmt::Debug for Replies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replies")
            .field("app", &self.app_id)
            .finish()
    }
}

struct Reader {
    topic: String,
    partition: i32,
    pending: Pending,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The app's reply topic.
pub(crate) fn reply_topic(app_id: &str) -> String {
    format!("{app_id}-replies")
}

/// A request waiting for its reply.
pub(crate) struct Waiting {
    pub(crate) id: String,
    pub(crate) rx: tokio::sync::oneshot::Receiver<Reply>,
    pending: Pending,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        // Answered, timed out or dropped: nobody waits any more.
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

impl Replies {
    pub(crate) fn new(app_id: &str, props: Arc<Mutex<Properties>>) -> Self {
        Self {
            reader: Arc::new(tokio::sync::OnceCell::new()),
            props,
            app_id: Arc::from(app_id),
        }
    }

    /// Registers a request: its headers, and what its reply will arrive on.
    pub(crate) async fn register(&self) -> Result<(Vec<(String, Option<Bytes>)>, Waiting)> {
        let reader = self.reader.get_or_try_init(|| self.start()).await?;
        let id = format!("{:032x}", rand::random::<u128>());
        let (tx, rx) = tokio::sync::oneshot::channel();
        reader
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), tx);
        let headers = vec![
            (REPLY_TO.to_owned(), Some(Bytes::from(reader.topic.clone()))),
            (
                REPLY_PARTITION.to_owned(),
                Some(Bytes::from(reader.partition.to_string())),
            ),
            (CORRELATION_ID.to_owned(), Some(Bytes::from(id.clone()))),
        ];
        Ok((
            headers,
            Waiting {
                id,
                rx,
                pending: reader.pending.clone(),
            },
        ))
    }

    /// Creates the reply topic if missing, picks a partition and reads it
    /// from its current end.
    async fn start(&self) -> Result<Reader> {
        let props = self.props.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let cfg = crate::config::EngineConfig::from_properties(&self.app_id, &props)?;
        let topic = reply_topic(&self.app_id);
        let props = props.set("isolation.level", "read_committed");
        let mut consumer = Consumer::connect(ConsumerConfig::from_properties(&props)?).await?;
        let admin = Admin::new(consumer.client().clone());
        let info = admin
            .create_topic(
                NewTopic::new(&topic, cfg.topic_partitions, cfg.replication_factor)
                    .config("retention.ms", REPLY_RETENTION_MS),
                true,
            )
            .await?;
        let partitions = info.partitions.len().max(1) as i32;
        let partition = (rand::random::<u32>() % partitions as u32) as i32;
        // Every reply to a request sent from now on lies past this.
        let end = admin
            .list_offsets(&topic, &[partition], OffsetSpec::Latest, false)
            .await?
            .get(&partition)
            .copied()
            .unwrap_or(0);
        consumer
            .assign(&topic, &[partition], Offset::At(end))
            .await?;
        let pending: Pending = Arc::default();
        let task = tokio::spawn(read_replies(consumer, pending.clone()));
        tracing::debug!(%topic, partition, from = end, "reading replies");
        Ok(Reader {
            topic,
            partition,
            pending,
            task,
        })
    }
}

/// Hands each reply to the request waiting for it.
async fn read_replies(mut consumer: Consumer, pending: Pending) {
    loop {
        let fetched = match consumer.poll().await {
            Ok(f) => f,
            Err(e) => {
                // Requests waiting meanwhile time out; the consumer retries.
                tracing::warn!(error = %e, "reading replies failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        for part in &fetched {
            for rec in part.records() {
                let Ok(rec) = rec else {
                    tracing::warn!(
                        topic = part.topic(),
                        partition = part.partition(),
                        "an unreadable reply record"
                    );
                    continue;
                };
                let Some(id) = rec
                    .headers()
                    .find(|(k, _)| *k == CORRELATION_ID)
                    .and_then(|(_, v)| std::str::from_utf8(v?).ok())
                else {
                    continue;
                };
                let waiting = pending.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
                if let Some(tx) = waiting {
                    let at = Location {
                        topic: part.topic().to_owned(),
                        partition: part.partition(),
                        offset: rec.offset,
                    };
                    let _ = tx.send((at, rec.value().map(Bytes::copy_from_slice)));
                }
            }
        }
    }
}

/// Waits for a registered request's reply, up to `timeout`, and decodes it.
pub(crate) async fn await_reply<R: serde::de::DeserializeOwned>(
    mut waiting: Waiting,
    agent: &str,
    timeout: Duration,
) -> Result<R> {
    let id = waiting.id.clone();
    let (at, value) = match tokio::time::timeout(timeout, &mut waiting.rx).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(_)) | Err(_) => {
            return Err(Error::Timeout {
                what: format!("the reply of agent {agent} to request {id}"),
                after: timeout,
            })
        }
    };
    serde_json::from_slice(value.as_deref().unwrap_or(b"null")).map_err(|e| Error::Decode {
        at,
        part: "value",
        source: crate::codec::CodecError::new(format!("reply: {e}")),
    })
}

/// The reply headers of a request record: where its answer goes and under
/// which correlation id; `None` if it asked for none.
pub(crate) fn reply_address<'h>(
    mut headers: impl Iterator<Item = (&'h str, Option<&'h [u8]>)>,
) -> Option<(String, i32, String)> {
    let (mut to, mut partition, mut id) = (None, None, None);
    for (k, v) in &mut headers {
        let v = v.and_then(|v| std::str::from_utf8(v).ok());
        match k {
            REPLY_TO => to = v.map(str::to_owned),
            REPLY_PARTITION => partition = v.and_then(|p| p.parse().ok()),
            CORRELATION_ID => id = v.map(str::to_owned),
            _ => {}
        }
    }
    Some((to?, partition?, id?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_s_headers_say_where_its_reply_goes() {
        let headers: Vec<(&str, Option<&[u8]>)> = vec![
            ("other", Some(b"x")),
            (REPLY_TO, Some(b"app-replies")),
            (REPLY_PARTITION, Some(b"3")),
            (CORRELATION_ID, Some(b"abc")),
        ];
        assert_eq!(
            reply_address(headers.into_iter()),
            Some(("app-replies".to_owned(), 3, "abc".to_owned()))
        );
        // A record that asked for no reply, or half of one.
        let headers: Vec<(&str, Option<&[u8]>)> = vec![
            (REPLY_TO, Some(b"app-replies")),
            (CORRELATION_ID, Some(b"abc")),
        ];
        assert_eq!(reply_address(headers.into_iter()), None);
        let headers: Vec<(&str, Option<&[u8]>)> = vec![
            (REPLY_TO, Some(b"t")),
            (REPLY_PARTITION, Some(b"x")),
            (CORRELATION_ID, Some(b"abc")),
        ];
        assert_eq!(reply_address(headers.into_iter()), None);
    }
}

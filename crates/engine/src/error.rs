//! The engine's errors. Every error about a record names its topic,
//! partition and offset; [`Error::location`] is the one place that tells an
//! agent's error policy which record to skip or dead-letter.

use crate::codec::CodecError;

/// Where a record sits in Kafka.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Location {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]@{}", self.topic, self.partition, self.offset)
    }
}

/// An engine error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kafka client failed.
    #[error(transparent)]
    Wire(#[from] faustus_wire::Error),
    /// A record's key or value could not be decoded.
    #[error("cannot decode the {part} of {at}: {source}")]
    Decode {
        /// The record.
        at: Location,
        /// `key` or `value`.
        part: &'static str,
        /// The codec's complaint.
        source: CodecError,
    },
    /// A key or value could not be encoded.
    #[error("cannot encode a {part} for {target}: {source}")]
    Encode {
        /// The topic or table it was meant for.
        target: String,
        /// `key` or `value`.
        part: &'static str,
        /// The codec's complaint.
        source: CodecError,
    },
    /// An agent gave up on a record (see [`Event::fail`](crate::Event::fail)).
    #[error("processing {at} failed: {message}")]
    Processing {
        /// The record.
        at: Location,
        /// Why.
        message: String,
    },
    /// A local state store failed.
    #[error("state store {path}: {message}")]
    Store {
        /// The store's directory.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A table was used in a way the engine cannot serve.
    #[error("table {table}: {message}")]
    Table {
        /// The table's name.
        table: String,
        /// What went wrong.
        message: String,
    },
    /// A setting is missing or wrong.
    #[error("configuration: {0}")]
    Config(String),
    /// Something awaited did not come in time (an agent's reply to
    /// [`ask`](crate::Agent::ask)).
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        after: std::time::Duration,
    },
    /// A worker told to stop could not commit and leave its group within
    /// `shutdown.timeout.ms` (the cluster unreachable, say).
    #[error(
        "shutdown did not finish within shutdown.timeout.ms ({after:?}): still {doing}; \
         what was processed since the last commit is not committed (the next owner \
         processes it again, or, under exactly_once, its transaction is aborted)"
    )]
    ShutdownTimeout {
        /// What the worker was doing when the time ran out.
        doing: String,
        /// `shutdown.timeout.ms`.
        after: std::time::Duration,
    },
}

impl Error {
    /// The record this error is about, if it is about one record (decode and
    /// processing errors): what an agent's error policy skips or
    /// dead-letters. Other errors stop the worker.
    pub fn location(&self) -> Option<&Location> {
        match self {
            Self::Decode { at, .. } | Self::Processing { at, .. } => Some(at),
            _ => None,
        }
    }
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

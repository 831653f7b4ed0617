//! The client's error type, and the one place that decides what to do about
//! an error: [`Error::action`].

use std::time::Duration;

use crate::protocol::{ErrorCode, FrameError};
use crate::record::RecordError;

/// What the client does about an error. Decided in one place,
/// [`Error::action`], and acted on by the producer, consumer and admin loops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Retry after backing off; refresh metadata first when `refresh` is set.
    Retry {
        /// Leadership or topic knowledge is stale.
        refresh: bool,
    },
    /// Find the (group or transaction) coordinator again, then retry.
    FindCoordinator,
    /// The producer's epoch must be bumped (KIP-360) before retrying.
    BumpEpoch,
    /// The current transaction can only be aborted.
    AbortTransaction,
    /// Give up and report the error.
    Fail,
}

/// Where a server error happened: which API, topic and partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    /// The request's API name.
    pub api: &'static str,
    /// The topic, if the error is about one.
    pub topic: Option<String>,
    /// The partition, if the error is about one.
    pub partition: Option<i32>,
}

impl std::fmt::Display for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.api)?;
        if let Some(t) = &self.topic {
            write!(f, " {t}")?;
            if let Some(p) = self.partition {
                write!(f, "-{p}")?;
            }
        }
        Ok(())
    }
}

/// The `mechanism` of an [`Error::Authentication`] for a connection that
/// sent no SASL at all to a listener that hung up on it.
pub const NO_SASL: &str = "(none)";

/// Every error faustus-wire reports.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A socket error talking to a broker.
    #[error("I/O error with broker {broker}: {source}")]
    Io {
        /// `host:port`.
        broker: String,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// The connection closed with requests in flight.
    #[error("connection to broker {broker} closed")]
    Disconnected {
        /// `host:port`.
        broker: String,
    },
    /// Nothing answered in time.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long.
        after: Duration,
    },
    /// None of the bootstrap servers could be reached.
    #[error("no bootstrap server reachable ({servers}): {last}")]
    Bootstrap {
        /// The configured `bootstrap.servers`.
        servers: String,
        /// The last failure.
        last: String,
    },
    /// A frame could not be encoded or read.
    #[error("protocol error with broker {broker}: {source}")]
    Frame {
        /// `host:port`.
        broker: String,
        /// What went wrong.
        #[source]
        source: FrameError,
    },
    /// A response body could not be decoded.
    #[error("could not decode {api} response from broker {broker}: {reason}")]
    Decode {
        /// The API.
        api: &'static str,
        /// `host:port`.
        broker: String,
        /// The decoder's complaint.
        reason: String,
    },
    /// The broker supports no version of an API that we implement.
    #[error("broker {broker} supports no version of {api} that this client implements")]
    UnsupportedVersion {
        /// The API.
        api: &'static str,
        /// `host:port`.
        broker: String,
    },
    /// The broker answered with an error code.
    #[error("{context}: {code}{}", message.as_ref().map(|m| format!(": {m}")).unwrap_or_default())]
    Server {
        /// The error code.
        code: ErrorCode,
        /// The broker's message, when it sent one.
        message: Option<String>,
        /// The request, topic and partition.
        context: Context,
    },
    /// A fetched batch or record is corrupt or unsupported.
    #[error("{topic}-{partition} at offset {offset}: {source}")]
    Record {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The offset concerned.
        offset: i64,
        /// What is wrong with it.
        #[source]
        source: RecordError,
    },
    /// A topic or partition the cluster does not have.
    #[error("unknown topic or partition {topic}-{partition}")]
    UnknownPartition {
        /// The topic.
        topic: String,
        /// The partition (-1 if the whole topic is unknown).
        partition: i32,
    },
    /// A record larger than `max.request.size` or the broker's limit.
    #[error("record of {size} bytes for {topic} exceeds the {limit}-byte limit ({setting})")]
    RecordTooLarge {
        /// The topic.
        topic: String,
        /// The record's encoded size.
        size: usize,
        /// The limit.
        limit: usize,
        /// Which setting imposes it.
        setting: &'static str,
    },
    /// The TLS handshake with a broker failed (an untrusted or misnamed
    /// certificate, no common protocol, a refused client certificate).
    #[error("TLS with broker {broker} failed: {reason}")]
    Tls {
        /// `host:port`.
        broker: String,
        /// What rustls or the broker said.
        reason: String,
    },
    /// SASL authentication with a broker failed (wrong credentials, a
    /// mechanism the broker does not enable, a refused token).
    #[error("SASL {mechanism} authentication with broker {broker} failed: {message}")]
    Authentication {
        /// `host:port`.
        broker: String,
        /// `sasl.mechanism`.
        mechanism: &'static str,
        /// The broker's message, or why the client gave up.
        message: String,
    },
    /// A bad configuration value.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
    /// A transactional call failed (see [`TxnError`] for what may follow).
    #[error("transactional.id {transactional_id}: {error}")]
    Transaction {
        /// The producer's `transactional.id`.
        transactional_id: String,
        /// What went wrong.
        error: TxnError,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A server error for `api` about `topic`/`partition`.
    pub fn server(
        code: ErrorCode,
        message: Option<String>,
        api: &'static str,
        topic: Option<&str>,
        partition: Option<i32>,
    ) -> Self {
        Error::Server {
            code,
            message,
            context: Context {
                api,
                topic: topic.map(str::to_owned),
                partition,
            },
        }
    }

    /// `Ok` for `NONE`, else the server error for `api` about
    /// `topic`/`partition`: how every response's error code becomes a
    /// `Result`.
    pub fn check(
        code: ErrorCode,
        message: Option<String>,
        api: &'static str,
        topic: Option<&str>,
        partition: Option<i32>,
    ) -> Result<()> {
        if code.is_ok() {
            Ok(())
        } else {
            Err(Self::server(code, message, api, topic, partition))
        }
    }

    /// The Kafka error code, for server errors.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// What to do about this error: the single retry policy of the client.
    ///
    /// Transport failures and timeouts are retried with a metadata refresh
    /// (the broker may be gone); server errors follow Kafka's table of
    /// retriable codes, with the special cases the Java client makes for
    /// coordinators, idempotence (KIP-360) and transactions.
    pub fn action(&self) -> Action {
        match self {
            Error::Io { .. } | Error::Disconnected { .. } | Error::Timeout { .. } => {
                Action::Retry { refresh: true }
            }
            Error::UnknownPartition { .. } => Action::Retry { refresh: true },
            // A connection closed after ApiVersions without SASL: most
            // likely a SASL listener, but a broker going down does the
            // same, so it is retried (and reported if it lasts).
            Error::Authentication {
                mechanism: NO_SASL, ..
            } => Action::Retry { refresh: true },
            Error::Transaction {
                error: TxnError::Abortable(_),
                ..
            } => Action::AbortTransaction,
            Error::Server { code, .. } => {
                let code = *code;
                if code.is_coordinator_error() {
                    Action::FindCoordinator
                } else if code == ErrorCode::OUT_OF_ORDER_SEQUENCE_NUMBER
                    || code == ErrorCode::UNKNOWN_PRODUCER_ID
                    || code == ErrorCode::INVALID_PRODUCER_EPOCH
                {
                    Action::BumpEpoch
                } else if code == ErrorCode::TRANSACTION_ABORTABLE {
                    Action::AbortTransaction
                } else if code == ErrorCode::CONCURRENT_TRANSACTIONS {
                    // Not retriable in Kafka's table, but every client retries
                    // it: the previous transaction is still completing.
                    Action::Retry { refresh: false }
                } else if code.is_retriable() {
                    Action::Retry {
                        refresh: code.invalidates_metadata(),
                    }
                } else {
                    Action::Fail
                }
            }
            _ => Action::Fail,
        }
    }

    /// A copy of this error for reporting the same failure to several
    /// waiters (I/O errors keep their kind and message).
    pub fn duplicate(&self) -> Error {
        match self {
            Error::Io { broker, source } => Error::Io {
                broker: broker.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            Error::Disconnected { broker } => Error::Disconnected {
                broker: broker.clone(),
            },
            Error::Timeout { what, after } => Error::Timeout {
                what: what.clone(),
                after: *after,
            },
            Error::Bootstrap { servers, last } => Error::Bootstrap {
                servers: servers.clone(),
                last: last.clone(),
            },
            Error::Frame { broker, source } => Error::Frame {
                broker: broker.clone(),
                source: source.clone(),
            },
            Error::Decode {
                api,
                broker,
                reason,
            } => Error::Decode {
                api,
                broker: broker.clone(),
                reason: reason.clone(),
            },
            Error::UnsupportedVersion { api, broker } => Error::UnsupportedVersion {
                api,
                broker: broker.clone(),
            },
            Error::Server {
                code,
                message,
                context,
            } => Error::Server {
                code: *code,
                message: message.clone(),
                context: context.clone(),
            },
            Error::Record {
                topic,
                partition,
                offset,
                source,
            } => Error::Record {
                topic: topic.clone(),
                partition: *partition,
                offset: *offset,
                source: source.clone(),
            },
            Error::Tls { broker, reason } => Error::Tls {
                broker: broker.clone(),
                reason: reason.clone(),
            },
            Error::Authentication {
                broker,
                mechanism,
                message,
            } => Error::Authentication {
                broker: broker.clone(),
                mechanism,
                message: message.clone(),
            },
            Error::UnknownPartition { topic, partition } => Error::UnknownPartition {
                topic: topic.clone(),
                partition: *partition,
            },
            Error::RecordTooLarge {
                topic,
                size,
                limit,
                setting,
            } => Error::RecordTooLarge {
                topic: topic.clone(),
                size: *size,
                limit: *limit,
                setting,
            },
            Error::Config(m) => Error::Config(m.clone()),
            Error::Closed => Error::Closed,
            Error::Transaction {
                transactional_id,
                error,
            } => Error::Transaction {
                transactional_id: transactional_id.clone(),
                error: error.clone(),
            },
        }
    }

    /// Whether [`action`](Self::action) says to retry in some form.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self.action(),
            Action::Retry { .. } | Action::FindCoordinator
        )
    }
}

/// Exponential backoff with full jitter, as `retry.backoff.ms` and
/// `retry.backoff.max.ms` (KIP-580) describe.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The first delay (`retry.backoff.ms`).
    pub base: Duration,
    /// The largest delay (`retry.backoff.max.ms`).
    pub max: Duration,
}

impl Backoff {
    /// The delay before retry number `attempt` (0-based): `base * 2^attempt`,
    /// capped at `max`, then scaled by a random factor in [0.8, 1.2].
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX));
        let capped = exp.min(self.max);
        let jitter = rand::random_range(0.8..1.2);
        capped.mul_f64(jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: ErrorCode) -> Error {
        Error::server(code, None, "Produce", Some("t"), Some(3))
    }

    #[test]
    fn one_place_decides() {
        assert_eq!(
            server(ErrorCode::NOT_LEADER_OR_FOLLOWER).action(),
            Action::Retry { refresh: true }
        );
        assert_eq!(
            server(ErrorCode::REQUEST_TIMED_OUT).action(),
            Action::Retry { refresh: false }
        );
        assert_eq!(
            server(ErrorCode::NOT_COORDINATOR).action(),
            Action::FindCoordinator
        );
        assert_eq!(
            server(ErrorCode::OUT_OF_ORDER_SEQUENCE_NUMBER).action(),
            Action::BumpEpoch
        );
        assert_eq!(server(ErrorCode::MESSAGE_TOO_LARGE).action(), Action::Fail);
        assert_eq!(
            server(ErrorCode::TRANSACTION_ABORTABLE).action(),
            Action::AbortTransaction
        );
        assert_eq!(
            Error::Disconnected { broker: "b".into() }.action(),
            Action::Retry { refresh: true }
        );
        assert_eq!(Error::Config("x".into()).action(), Action::Fail);
    }

    #[test]
    fn server_errors_name_topic_and_partition() {
        let e = Error::server(
            ErrorCode::MESSAGE_TOO_LARGE,
            Some("too big".into()),
            "Produce",
            Some("clicks"),
            Some(2),
        );
        assert_eq!(
            e.to_string(),
            "Produce clicks-2: MESSAGE_TOO_LARGE (10): too big"
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let first = b.delay(0);
        assert!(first >= Duration::from_millis(80) && first <= Duration::from_millis(120));
        let later = b.delay(10);
        assert!(later >= Duration::from_millis(800) && later <= Duration::from_millis(1200));
        let _ = b.delay(u32::MAX);
    }
}

/// Where the transactional producer is (see
/// [`TxnMachine`](crate::producer::txn::TxnMachine)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnState {
    /// `init_transactions` not called yet.
    Uninitialized,
    /// InitProducerId under way.
    Initializing,
    /// Ready to begin a transaction.
    Ready,
    /// Inside a transaction.
    InTransaction,
    /// Flushing, then EndTxn(commit).
    Committing,
    /// Dropping unsent records, then EndTxn(abort).
    Aborting,
    /// The transaction failed: only `abort` is allowed.
    AbortableError,
    /// The producer cannot go on.
    Fatal,
}

/// Why a transactional call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnError {
    /// The call is not allowed in this state (a usage error).
    State {
        /// The call.
        call: &'static str,
        /// The state it met.
        state: TxnState,
    },
    /// The transaction must be aborted; then the producer goes on.
    Abortable(String),
    /// The producer is finished (fenced by a newer instance, or not
    /// authorized).
    Fatal(ErrorCode, String),
}

impl std::fmt::Display for TxnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::State { call, state } => write!(f, "{call} is not allowed in state {state:?}"),
            Self::Abortable(why) => write!(f, "the transaction must be aborted: {why}"),
            Self::Fatal(code, why)
                if *code == ErrorCode::TRANSACTIONAL_ID_AUTHORIZATION_FAILED
                    || *code == ErrorCode::CLUSTER_AUTHORIZATION_FAILED =>
            {
                write!(f, "not authorized ({code}): {why}")
            }
            Self::Fatal(code, why) => write!(f, "the producer is fenced or broken ({code}): {why}"),
        }
    }
}

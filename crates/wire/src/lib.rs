//! faustus-wire: a pure-Rust Kafka wire client.
//!
//! The crate is layered so that every byte of protocol logic can be tested
//! without a broker: [`record`] (the RecordBatch v2 codec) and [`protocol`]
//! (framing, error codes, the retry decision) are pure; connections, metadata,
//! the producer and the consumer are thin async shells over them. See
//! `docs/architecture.md`.
#![deny(missing_docs)]

pub mod acl;
pub mod admin;
pub mod client;
pub mod config;
pub mod conn;
pub mod consumer;
pub mod coordinator;
mod error;
pub mod group;
mod pool;
pub mod producer;
pub mod protocol;
pub mod record;
pub mod security;
pub mod stats;
pub mod types;

#[cfg(test)]
mod test_support;

pub use admin::{Admin, NewTopic, OffsetSpec};
pub use client::{Client, ClusterInfo, PartitionInfo, TopicInfo};
pub use config::{ClientConfig, Properties};
pub use error::{Action, Backoff, Context, Error, Result, TxnError, TxnState, NO_SASL};

//! Faustus: Kafka stream processing for Rust.
//!
//! This is the crate applications depend on. It re-exports the wire client
//! ([`wire`]) and the engine ([`engine`]); [`prelude`] gathers the names most
//! programs need.
#![deny(missing_docs)]

pub use faustus_engine as engine;
pub use faustus_wire as wire;

/// The names most Faustus programs need, for `use faustus::prelude::*`: the
/// engine's apps, topics, tables, agents and codecs, and [`Properties`](faustus_wire::Properties).
pub mod prelude {
    pub use faustus_engine::prelude::*;
}

//! faustus-engine: agents, tables, windows and commits on top of
//! [`faustus_wire`].
//!
//! Nothing is implemented here yet; the engine is built once the wire client's
//! core, consumer groups and transactions are in place (see
//! `docs/architecture.md`).
#![deny(missing_docs)]

pub use faustus_wire as wire;

//! faustus-engine: Faust's programming model on [`faustus_wire`].
//!
//! An [`App`] has typed [`Topic`]s, [`Table`]s whose state lives in local
//! stores backed by compacted changelog topics, and agents: async functions
//! fed with [`Batch`]es, one partition's records at a time, borrowed from the
//! fetched buffer and decoded only when asked. A worker joins one consumer
//! group covering every agent's source topics; partition *n* of each source
//! topic and of each table form one task, owned by one worker at a time.
//! Commits are at-least-once (flush, then commit offsets) or exactly-once
//! (changelog writes, outputs and input offsets in one transaction).
//!
//! ```no_run
//! use faustus_engine::prelude::*;
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Click { count: u64 }
//!
//! fn main() -> std::process::ExitCode {
//!     let mut app = App::new("page_views", Properties::new());
//!     let clicks = app.topic::<String, Click>("page_views");
//!     let counts = app.table::<String, u64>("click_counts");
//!     app.agent("count_click", &clicks, async move |batch: Batch<String, Click>| {
//!         let mut table = batch.table(&counts)?;
//!         for item in batch.items() {
//!             let (url, click) = item?;
//!             table.update(&url, |n| *n += click.count)?;
//!         }
//!         Ok(())
//!     });
//!     app.main()
//! }
//! ```
//!
//! See `docs/engine.md` for the architecture.
#![deny(missing_docs)]

mod app;
mod batch;
mod cli;
pub mod codec;
pub mod config;
mod error;
mod global;
mod join;
pub mod rpc;
mod runtime;
mod store;
mod table;
pub mod testing;
mod timer;
mod topology;
mod web;
pub mod window;
mod windowed;

pub use app::{Agent, AgentOptions, App, Ask, ErrorPolicy, Topic, TopicSpec, DEFAULT_ASK_TIMEOUT};
/// The web framework of [`App::page`].
pub use axum;
pub use batch::{Batch, Event};
pub use chrono_tz;
pub use codec::{Codec, CodecError, Json, Raw, Utf8, WindowedText};
pub use config::{EngineConfig, Guarantee, StoreKind};
pub use error::{Error, Location, Result};
pub use faustus_wire as wire;
pub use global::{GlobalTable, GlobalView};
pub use join::{JoinKind, JoinWindow, TopicTable, TopicTableView};
pub use table::{Table, TableSpec, TableView};
pub use timer::{Timer, TimerCtx};
pub use topology::Topology;
pub use web::Tables;
pub use windowed::{Emit, WindowedTable, WindowedView};

/// The names most Faustus programs need.
pub mod prelude {
    pub use crate::window::{Window, Windowed};
    pub use crate::{
        Agent, AgentOptions, App, Batch, Codec, Emit, ErrorPolicy, Event, GlobalTable, JoinKind,
        JoinWindow, Json, Raw, Table, TableSpec, TableView, Timer, TimerCtx, Topic, TopicSpec,
        TopicTable, Utf8, WindowedTable, WindowedText, WindowedView,
    };
    pub use chrono_tz::Tz;
    pub use faustus_wire::Properties;
}

//! Lockstep: a microbatch stream-processing engine with durable depots, partitioned state in
//! RocksDB, and one atomic commit per batch across every partition.
//!
//! - **Depots** are durable, append-only, partitioned logs. An append returns once the record is
//!   fsync'd; concurrent appends share fsyncs.
//! - **Topologies** consume every depot partition in microbatches, read and write **PStates**
//!   (partitioned, ordered, durable maps and subindexed sets), and send messages to other
//!   partitions within the batch.
//! - **Every write of a batch, on every partition, commits atomically** with the depot offsets
//!   it consumed: exactly-once, all-or-nothing, through any crash.
//! - **Readers** see committed batches only, and all partitions at the same batch.
//!
//! ```
//! use lockstep::{Depot, Engine, EngineOptions, NoMessages, TopologyBuilder};
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let words = Depot::<String>::hashed("words", 4, |w| w.clone())?;
//! let mut counter = TopologyBuilder::<NoMessages>::new("word-count", 4);
//! let counts = counter.pstate::<String, u64>("counts");
//! let counts_in_handler = counts.clone();
//! counter.consume(&words, move |ctx, word: String| {
//!     let n = ctx.get(&counts_in_handler, &word)?.unwrap_or(0) + 1;
//!     ctx.put(&counts_in_handler, &word, &n)?;
//!     ctx.record_outcome(&n)
//! });
//!
//! let engine = Engine::builder(dir.path())
//!     .depot(&words)
//!     .topology(counter.build()?)
//!     .open()?;
//! engine.append(&words, &"lockstep".to_string())?;
//! let id = engine.append(&words, &"lockstep".to_string())?;
//! engine.wait_for("word-count", id, Duration::from_secs(10))?;
//!
//! let snapshot = engine.snapshot()?;
//! assert_eq!(snapshot.get(&counts, &"lockstep".to_string())?, Some(2));
//! let outcome = snapshot.outcome::<u64>("word-count", id)?.expect("recorded");
//! assert_eq!(outcome.value, 2);
//! # Ok(())
//! # }
//! ```
//!
//! The commit and recovery protocol is written down in `engine/docs/commit-protocol.md`.

#![warn(missing_docs)]

mod cache;
mod catalog;
mod engine;
mod error;
mod faults;
#[cfg(feature = "net")]
pub mod net;
mod producers;
mod snapshot;
mod store;

pub use engine::{
    failpoints, AppendStats, BatchDriving, BatchSummary, DepotRetention, Engine, EngineBuilder,
    EngineOptions, LoggedRecord, TopologyStats, UndeclaredTopology,
};
pub use error::Error;
pub use faults::{DurableWrite, StorageFaults, WriteFault};

/// `Result` with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
pub use lockstep_core::exec::BatchError;
pub use lockstep_core::store::{CommitRecord, ConsumedOffset, StoreError};
pub use lockstep_core::{
    decode_envelope, decode_key, decode_key_prefix, encode_key, partition_for_key, CodecError, Ctx,
    Delivery, Depot, HandlerError, KeyCodecError, NoMessages, PState, RecordId, RouteError,
    SchemaError, SetPState, Topology, TopologyBuilder, PARTITIONS_MAX, RECORD_BYTES_MAX_DEFAULT,
};
pub use snapshot::{Outcome, Snapshot};

//! The engine's error type.

use lockstep_core::exec::BatchError;
use lockstep_core::store::StoreError;
use lockstep_core::{CodecError, HandlerError, KeyCodecError, RouteError, SchemaError};

/// Everything an engine call can fail with.
///
/// Write errors say whether the write definitely did not happen ([`Error::Record`],
/// [`Error::UnknownDepot`], ...: refused before anything was written) or may have (a storage
/// failure: the engine is [poisoned](Error::Poisoned) from then on).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A durable write failed earlier; the engine refuses every further write because it cannot
    /// know what reached the disk. Committed data stays readable. Reopen the engine to recover.
    #[error(
        "engine is poisoned by an earlier failed durable write ({reason}); reopen it to recover"
    )]
    Poisoned {
        /// The failure that poisoned it.
        reason: String,
    },
    /// Storage failed. If this was a write, the engine is now poisoned.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A declaration is invalid.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// A declaration disagrees with what the data directory was created with.
    #[error("{what} {name:?} was created with {stored} but is declared with {declared}")]
    CatalogMismatch {
        /// "depot", "pstate" or "topology".
        what: &'static str,
        /// Its name.
        name: String,
        /// What the data directory holds.
        stored: String,
        /// What the code declares.
        declared: String,
    },
    /// A topology was both declared and retired ([`EngineBuilder::retire_topology`](crate::EngineBuilder::retire_topology)) in one engine.
    #[error("topology {0:?} is both declared and retired")]
    RetiredAndDeclared(String),
    /// The data directory was written by an incompatible release.
    #[error("data directory format {found} is not supported (this release reads formats up to {supported})")]
    Format {
        /// What the directory says.
        found: u32,
        /// What this release reads.
        supported: u32,
    },
    /// The depot is not declared in this engine (or is declared differently).
    #[error("unknown depot {0:?}")]
    UnknownDepot(String),
    /// The PState is not declared in this engine (or is declared differently).
    #[error("unknown pstate {0:?}")]
    UnknownPState(String),
    /// The topology is not declared in this engine.
    #[error("unknown topology {0:?}")]
    UnknownTopology(String),
    /// A call pairs a depot with a topology that does not consume it, so the topology would
    /// never process the depot's records.
    #[error("topology {topology:?} does not consume depot {depot:?}")]
    NotConsumed {
        /// The topology.
        topology: String,
        /// The depot.
        depot: String,
    },
    /// A record was refused before anything was written: too large or does not encode.
    #[error("record refused: {0}")]
    Record(#[from] CodecError),
    /// A record's partition could not be chosen; nothing was written.
    #[error("record refused: {0}")]
    Route(#[from] RouteError),
    /// A key does not encode.
    #[error(transparent)]
    Key(#[from] KeyCodecError),
    /// A read failed to decode what it found.
    #[error("read failed: {0}")]
    Read(#[from] HandlerError),
    /// A stored record failed its checksum or did not decode: the data is corrupt or was written
    /// with another type.
    #[error("depot {depot:?} partition {partition} offset {offset}: {source}")]
    CorruptRecord {
        /// The depot.
        depot: String,
        /// The partition.
        partition: u32,
        /// The offset.
        offset: u64,
        /// Why it failed.
        #[source]
        source: CodecError,
    },
    /// A batch failed; nothing of it was committed and the topology has stopped.
    #[error("topology {topology:?} stopped: batch {batch_id} failed: {source}")]
    Batch {
        /// The topology.
        topology: String,
        /// The batch that failed.
        batch_id: u64,
        /// Why (boxed: batch errors are large and rare).
        #[source]
        source: Box<BatchError>,
    },
    /// The topology stopped after an earlier failure (see the log or the first error).
    #[error("topology {topology:?} is stopped: {reason}")]
    TopologyStopped {
        /// The topology.
        topology: String,
        /// The failure that stopped it.
        reason: String,
    },
    /// An idempotent append older than the producer's last accepted one: nothing was written.
    /// (A retry of the last one is not an error: it returns the first call's positions.)
    #[error(
        "producer {producer}: append {sequence} is older than its last accepted append {last}"
    )]
    StaleSequence {
        /// The producer.
        producer: u64,
        /// The refused call's number.
        sequence: u64,
        /// The last accepted call's number.
        last: u64,
    },
    /// An idempotent append reused the producer's last sequence with different records: it is
    /// not a retry, and nothing was written.
    #[error("producer {producer}: append {sequence} was already used for different records")]
    SequenceReused {
        /// The producer.
        producer: u64,
        /// The reused call number.
        sequence: u64,
    },
    /// A depot read asked for records, or an outcome read for the outcome of a record, that
    /// retention has deleted
    /// ([`EngineOptions::depot_retention`](crate::EngineOptions::depot_retention)); nothing is
    /// wrong, and the partition can be read from `first_kept_offset`.
    #[error("depot {depot:?} partition {partition}: offset {from_offset} was trimmed by retention; the first kept offset is {first_kept_offset}")]
    DepotTrimmed {
        /// The depot.
        depot: String,
        /// The partition.
        partition: u32,
        /// Where the read asked to start.
        from_offset: u64,
        /// The partition's first record still stored.
        first_kept_offset: u64,
    },
    /// `run_batch`, `execute_batch` or `commit_held_batch` in automatic mode, where the engine
    /// runs batches itself.
    #[error("run_batch, execute_batch and commit_held_batch need BatchDriving::Manual; this engine runs batches itself")]
    NotManual,
    /// A wait ran out of time. The record may still be processed later.
    #[error("timed out after {waited_ms} ms")]
    Timeout {
        /// How long it waited.
        waited_ms: u64,
    },
    /// The engine is shutting down.
    #[error("engine is closed")]
    Closed,
}

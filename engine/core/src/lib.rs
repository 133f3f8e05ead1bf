//! The storage-free core of [Lockstep](https://docs.rs/lockstep): codecs, partition routing,
//! topology definitions and deterministic batch execution, with storage behind the traits in
//! [`store`].
//!
//! Applications use the `lockstep` crate, which re-exports what they need from here and adds the
//! RocksDB-backed engine. This crate builds and tests without RocksDB, which keeps the logic that
//! decides what a batch does fast to iterate on and cheap to simulate.

#![warn(missing_docs)]

pub mod codec;
mod ctx;
pub mod exec;
mod hash;
mod keycodec;
pub mod layout;
mod schema;
pub mod store;
mod topology;

pub use codec::{decode_envelope, encode_envelope, envelope_bytes, CodecError};
pub use ctx::{
    decode_map_entries, decode_set_elements, decode_set_entry, key_range, outcome_key,
    prefix_key_range, set_range, Ctx, HandlerError, VALUE_BYTES_MAX,
};
pub use exec::Delivery;
pub use hash::{partition_for_key, partition_for_key_bytes};
pub use keycodec::{decode_key, decode_key_prefix, encode_key, encode_key_into, KeyCodecError};
pub use schema::{
    Depot, DepotSpec, PState, PStateKind, PStateSpec, RouteError, SchemaError, SetPState,
    NAME_BYTES_MAX, PARTITIONS_MAX, RECORD_BYTES_CEILING, RECORD_BYTES_MAX_DEFAULT,
};
pub use topology::{
    NoMessages, RecordId, Topology, TopologyBuilder, ROUNDS_MAX_DEFAULT, ROUND_MESSAGES_MAX_DEFAULT,
};

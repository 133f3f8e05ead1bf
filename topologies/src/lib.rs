//! Reference topologies for Lockstep, defined against the storage-free core so that they build
//! and their decision code tests without RocksDB.
//!
//! - [`counter`]: per-key counts plus per-group totals one partition hop away; the small
//!   topology behind the engine benchmark and the first example.

#![warn(missing_docs)]

pub mod counter;

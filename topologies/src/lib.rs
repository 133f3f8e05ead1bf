//! Reference topologies for Lockstep, defined against the storage-free core so that they build
//! and their decision code tests without RocksDB.
//!
//! - [`counter`]: per-key counts plus per-group totals one partition hop away; the small
//!   topology behind the engine benchmark and the first example.
//! - [`components`]: component parent/child integrity across partitions, with its sequential
//!   reference model and invariant checker.
//! - [`graph`]: an edge-distributed property graph whose two records of every edge always
//!   agree (reciprocal consistency), with its sequential model, invariant checker and a
//!   scale-free contended workload.
//! - [`rng`]: the seeded generator behind the workloads.

#![warn(missing_docs)]

pub mod components;
pub mod counter;
pub mod graph;
pub mod rng;

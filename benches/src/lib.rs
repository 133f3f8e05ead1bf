//! Shared pieces of the Lockstep benchmark binaries.

pub mod chart;

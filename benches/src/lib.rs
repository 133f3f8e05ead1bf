//! Shared pieces of the Lockstep benchmark binaries.

pub mod chart;
pub mod components;
pub mod measure;

//! Shared pieces of the Lockstep benchmark binaries.

// jemalloc rather than the system allocator: it halves the allocator's share of the batch
// driver's time (benches/EXPERIMENTS.md, "Memory allocator"). Binaries choose; the engine's
// libraries do not.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

pub mod chart;
pub mod components;
pub mod measure;

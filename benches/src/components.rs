//! The component topology on the embedded engine, as every component benchmark opens it.

use std::path::Path;
use std::sync::Arc;

use lockstep::{Engine, EngineOptions};
use lockstep_topologies::components::{components, Components};

/// Opens the engine in `dir` with the component topology on `partitions` partitions and the
/// default options (automatic batches, the default batch caps).
pub fn open_lockstep(dir: &Path, partitions: u32) -> anyhow::Result<(Arc<Engine>, Components)> {
    let handles = components(partitions)?;
    let engine = Engine::builder(dir)
        .options(EngineOptions::default())
        .depot(&handles.commands)
        .topology(handles.topology.clone())
        .open()?;
    Ok((Arc::new(engine), handles))
}

//! The component topology on the embedded engine, as every component benchmark opens it.

use std::path::Path;
use std::sync::Arc;

use lockstep::{Engine, EngineOptions};
use lockstep_topologies::components::{components, Components};

/// Opens the engine in `dir` with the component topology on `partitions` partitions and the
/// default options (automatic batches, the default batch caps). `LOCKSTEP_STATE_CACHE_MIB`
/// sets the state cache's size (0 turns it off), to measure what it is worth.
pub fn open_lockstep(dir: &Path, partitions: u32) -> anyhow::Result<(Arc<Engine>, Components)> {
    let handles = components(partitions)?;
    let mut options = EngineOptions::default();
    if let Ok(mib) = std::env::var("LOCKSTEP_STATE_CACHE_MIB") {
        let mib: usize = mib
            .parse()
            .map_err(|_| anyhow::anyhow!("LOCKSTEP_STATE_CACHE_MIB={mib:?} is not a number"))?;
        options.state_cache_bytes_max = mib << 20;
    }
    let engine = Engine::builder(dir)
        .options(options)
        .depot(&handles.commands)
        .topology(handles.topology.clone())
        .open()?;
    Ok((Arc::new(engine), handles))
}

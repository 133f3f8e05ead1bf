//! The component topology on the embedded engine, as every component benchmark opens it.

use std::path::Path;
use std::sync::Arc;

use lockstep::{DepotRetention, Engine, EngineOptions};
use lockstep_topologies::components::{components, Components};

/// Opens the engine in `dir` with the component topology on `partitions` partitions and the
/// default options (automatic batches, the default batch caps). To measure what a cache is
/// worth: `LOCKSTEP_STATE_CACHE_MIB` sets the state cache's size (0 turns it off), and
/// `LOCKSTEP_BLOCK_CACHE_MIB` RocksDB's block cache. `LOCKSTEP_BATCH_RECORDS_MAX` sets the
/// records a partition takes per batch. `LOCKSTEP_KEEP_DEPOT_RECORDS` turns depot retention on,
/// keeping that many records per partition. `LOCKSTEP_BACKGROUND_WRITE_MIB_PER_S` (at least 1)
/// limits what RocksDB's flushes and compactions write a second.
pub fn open_lockstep(dir: &Path, partitions: u32) -> anyhow::Result<(Arc<Engine>, Components)> {
    open_lockstep_with(dir, partitions, EngineOptions::default())
}

/// [`open_lockstep`] from `options` instead of the defaults (the environment variables still
/// apply on top).
pub fn open_lockstep_with(
    dir: &Path,
    partitions: u32,
    mut options: EngineOptions,
) -> anyhow::Result<(Arc<Engine>, Components)> {
    let handles = components(partitions)?;
    if let Some(mib) = env_mib("LOCKSTEP_STATE_CACHE_MIB")? {
        options.state_cache_bytes_max = mib << 20;
    }
    if let Some(mib) = env_mib("LOCKSTEP_BLOCK_CACHE_MIB")? {
        options.block_cache_bytes = mib << 20;
    }
    if let Some(mib) = env_mib("LOCKSTEP_BACKGROUND_WRITE_MIB_PER_S")? {
        let bytes_per_s = (mib as u64)
            .checked_mul(1 << 20)
            .filter(|_| mib > 0)
            .ok_or_else(|| {
                anyhow::anyhow!("LOCKSTEP_BACKGROUND_WRITE_MIB_PER_S={mib} is not 1..2^44")
            })?;
        options.background_write_bytes_per_s = Some(bytes_per_s);
    }
    if let Some(records) = env_number("LOCKSTEP_BATCH_RECORDS_MAX")? {
        options.batch_records_max = records;
    }
    if let Some(keep) = env_number("LOCKSTEP_KEEP_DEPOT_RECORDS")? {
        let mut retention = DepotRetention::default();
        retention.keep_records_min = keep as u64;
        options.depot_retention = Some(retention);
    }
    let engine = Engine::builder(dir)
        .options(options)
        .depot(&handles.commands)
        .topology(handles.topology.clone())
        .open()?;
    Ok((Arc::new(engine), handles))
}

/// A size in MiB from the environment variable `name`, if it is set.
fn env_mib(name: &str) -> anyhow::Result<Option<usize>> {
    env_number(name)
}

/// A number from the environment variable `name`, if it is set.
fn env_number(name: &str) -> anyhow::Result<Option<usize>> {
    match std::env::var(name) {
        Err(_) => Ok(None),
        Ok(mib) => mib
            .parse()
            .map(Some)
            .map_err(|_| anyhow::anyhow!("{name}={mib:?} is not a number")),
    }
}

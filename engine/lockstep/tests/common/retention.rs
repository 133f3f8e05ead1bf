//! What the depot retention tests share: a second consumer of the ledger's depot, retention
//! options that trim often, and reads of where each partition starts and ends.

use std::path::Path;

use lockstep::{DepotRetention, Engine, EngineOptions, PState, Topology, TopologyBuilder};

use super::{Ledger, Op};

/// A second consumer of the ledger's depot, named `name`: counts the ops it sees per key in
/// its PState `<name>-seen`.
pub fn audit(name: &str, ledger: &Ledger) -> (Topology, PState<u32, u64>) {
    let mut builder = TopologyBuilder::<()>::new(name, ledger.partitions);
    let seen = builder.pstate::<u32, u64>(&format!("{name}-seen"));
    let counts = seen.clone();
    builder.consume(&ledger.ops, move |ctx, op: Op| {
        let count = ctx.get(&counts, &op.key)?.unwrap_or(0) + 1;
        ctx.put(&counts, &op.key, &count)
    });
    (builder.build().expect("valid topology"), seen)
}

/// Manual batches of at most `batch_records_max` records per partition, and retention that
/// keeps 3 records per partition and trims in steps of 4: trims come after a few appends.
pub fn options(batch_records_max: usize) -> EngineOptions {
    let mut options = EngineOptions::manual();
    options.batch_records_max = batch_records_max;
    let mut retention = DepotRetention::default();
    retention.keep_records_min = 3;
    retention.trim_step_records = 4;
    options.depot_retention = Some(retention);
    options
}

/// `n` ops, numbered from `from`, over 7 keys.
pub fn ops(from: u32, n: u32) -> Vec<Op> {
    (from..from + n)
        .map(|i| Op {
            key: i % 7,
            amount: 1,
            mirror: i % 3,
        })
        .collect()
}

/// Each partition's first kept offset.
pub fn first_kept(engine: &Engine, ledger: &Ledger) -> Vec<u64> {
    (0..ledger.partitions)
        .map(|p| {
            engine
                .depot_first_kept_offset(&ledger.ops, p)
                .expect("start")
        })
        .collect()
}

/// Each partition's next offset.
pub fn heads(engine: &Engine, ledger: &Ledger) -> Vec<u64> {
    (0..ledger.partitions)
        .map(|p| engine.depot_next_offset(&ledger.ops, p).expect("head"))
        .collect()
}

/// The ops an audit has counted, over every key.
pub fn counted(engine: &Engine, seen: &PState<u32, u64>) -> u64 {
    engine
        .snapshot()
        .expect("snapshot")
        .range(
            seen,
            std::ops::Bound::Unbounded,
            std::ops::Bound::Unbounded,
            usize::MAX,
        )
        .expect("range")
        .into_iter()
        .map(|(_, count)| count)
        .sum()
}

/// The first offset `topology` has not committed, per partition of the one depot it consumes.
pub fn committed_offsets(engine: &Engine, topology: &str) -> Vec<u64> {
    engine
        .committed(topology)
        .expect("committed")
        .offsets
        .iter()
        .map(|o| o.next_offset)
        .collect()
}

/// The ledger, and `audit` if given, with [`options`]`(10)`; retiring the topology named
/// "audit" if `retire_audit`.
pub fn open_with_audit(
    dir: &Path,
    ledger: &Ledger,
    audit: Option<&Topology>,
    retire_audit: bool,
) -> lockstep::Result<Engine> {
    let mut builder = Engine::builder(dir)
        .options(options(10))
        .depot(&ledger.ops)
        .topology(ledger.topology.clone());
    if let Some(audit) = audit {
        builder = builder.topology(audit.clone());
    }
    if retire_audit {
        builder = builder.retire_topology("audit");
    }
    builder.open()
}

/// The audit, declared, with one batch committed.
pub fn directory_with_a_committed_audit(dir: &Path, ledger: &Ledger, audit: &Topology) {
    let engine = open_with_audit(dir, ledger, Some(audit), false).expect("open");
    engine.append_many(&ledger.ops, &ops(0, 8)).expect("append");
    engine.run_batch("audit").expect("audit batch");
    assert!(!engine
        .committed("audit")
        .expect("committed")
        .offsets
        .is_empty());
}

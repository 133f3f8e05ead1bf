//! Automatic driving executes batch N + 1 while batch N's commit is in flight, reading N's
//! writes as pending state. With tiny batches and a few hot keys, nearly every batch reads keys
//! the batch before it wrote: a batch that read committed state alone would lose updates, and a
//! running total or the order-sensitive mirror log would differ from the sequential model.

mod common;

use std::time::Duration;

use common::{ledger_with, open, read_state, Model, Op, TOPOLOGY};
use lockstep::{Delivery, EngineOptions};

#[test]
fn batches_executed_during_a_commit_see_its_writes() {
    run(0);
}

/// The state cache is refreshed by the committer while the next batch executes: that batch
/// must read the committing batch's keys from its write sets, never from the cache. A cache of
/// 1 KiB evicts all the time; one of 64 MiB keeps everything.
#[test]
fn with_a_state_cache_too() {
    run(1 << 10);
    run(64 << 20);
}

fn run(state_cache_bytes_max: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let partitions = 4;
    let ledger = ledger_with(partitions, Delivery::Serializable);
    let mut options = EngineOptions::default();
    options.batch_records_max = 3;
    options.state_cache_bytes_max = state_cache_bytes_max;
    let engine = open(dir.path(), &ledger, options).expect("open");
    let mut model = Model::with_delivery(partitions, Delivery::Serializable);
    let mut last = None;
    // Calls of 12 records keep a backlog, so the next batch is ready while one commits.
    for chunk in 0..250u32 {
        let ops: Vec<Op> = (chunk * 12..chunk * 12 + 12)
            .map(|i| Op {
                key: i % 6,
                amount: i64::from(i % 7) - 2,
                mirror: (i / 3) % 5,
            })
            .collect();
        ops.iter().for_each(|op| {
            model.append(*op);
        });
        last = engine.append_many(&ledger.ops, &ops).expect("append").pop();
    }
    let last = last.expect("appended");
    engine
        .wait_for(TOPOLOGY, last, Duration::from_secs(60))
        .expect("processed");
    model.run_until_idle(usize::MAX);
    let stats = engine.stats(TOPOLOGY).expect("stats");
    assert!(stats.batches > 100, "only {} batches", stats.batches);
    // The point of the test: many batches ran over a committing batch's writes.
    assert!(
        stats.batches_pipelined > 10,
        "only {} of {} batches executed during a commit",
        stats.batches_pipelined,
        stats.batches
    );
    let got = read_state(&engine, &ledger);
    // Serializable delivery: the state does not depend on where the batches were cut.
    assert_eq!(got.totals, model.state.totals);
    assert_eq!(got.mirror_log, model.state.mirror_log);
}

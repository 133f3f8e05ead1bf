//! `Engine::stats` counts a batch before the batch is published: once `wait_for` returns for
//! a record, the totals include the batch that processed it. Every record here writes keys of
//! its own, so each batch leaves the committer thousands of state cache inserts to make after
//! publication: the window in which a waiter woken by the publication used to read totals
//! without its batch.

mod common;

use std::time::Duration;

use common::TOPOLOGY;
use lockstep::EngineOptions;

#[test]
fn stats_read_after_a_wait_include_the_batch_that_answered_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = common::ledger(4);
    let engine = common::open(dir.path(), &ledger, EngineOptions::default()).expect("open");
    let ops: Vec<common::Op> = (0..4_000)
        .map(|key| common::Op {
            key,
            amount: 1,
            mirror: key + 4_000,
        })
        .collect();
    let mut appended = 0u64;
    for _ in 0..5 {
        let ids = engine.append_many(&ledger.ops, &ops).expect("append");
        appended += ids.len() as u64;
        let last = *ids.last().expect("appended");
        engine
            .wait_for(TOPOLOGY, last, Duration::from_secs(60))
            .expect("processed");
        let stats = engine.stats(TOPOLOGY).expect("stats");
        assert_eq!(
            stats.records, appended,
            "every record processed by the time its wait returned is counted"
        );
    }
}

//! `EngineOptions::wal_bytes_max` bounds the write-ahead log RocksDB keeps: under the same
//! load, an engine with the least bound (1 MiB) keeps a few MiB of log files at any time,
//! where one with the default bound keeps all it wrote; and the bounded engine, closed and
//! reopened, shows the state it committed. (That a freed log file written over replays only
//! its own records is the store's unit test
//! `a_recycled_write_ahead_log_replays_only_its_own_records`.)

mod common;

use std::path::Path;
use std::time::Duration;

use common::{read_state, LedgerState, TOPOLOGY};
use lockstep::EngineOptions;

/// Append calls of [`CALL_OPS`] ops in the load.
const CALLS: u32 = 120;
const CALL_OPS: u32 = 500;

/// Bytes of RocksDB's write-ahead log files in `dir`, freed ones kept for reuse included.
fn wal_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("read data directory")
        .map(|entry| entry.expect("entry"))
        .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "log"))
        // A file RocksDB deleted since the listing counts for nothing.
        .filter_map(|entry| entry.metadata().ok())
        .map(|metadata| metadata.len())
        .sum()
}

/// Runs the load on an engine opened with `options` in `dir`, waiting for each call's
/// records to be processed; returns the most log bytes seen after a call, and the state.
fn load(dir: &Path, options: EngineOptions) -> (u64, LedgerState) {
    let ledger = common::ledger(4);
    let engine = common::open(dir, &ledger, options).expect("open");
    let mut wal_bytes_max_seen = 0;
    for call in 0..CALLS {
        let ops: Vec<_> = (0..CALL_OPS)
            .map(|i| common::varied_op(call * CALL_OPS + i))
            .collect();
        let ids = engine.append_many(&ledger.ops, &ops).expect("append");
        engine
            .wait_for(
                TOPOLOGY,
                *ids.last().expect("appended"),
                Duration::from_secs(60),
            )
            .expect("processed");
        wal_bytes_max_seen = wal_bytes_max_seen.max(wal_bytes(dir));
    }
    (wal_bytes_max_seen, read_state(&engine, &ledger))
}

#[test]
fn the_least_wal_bound_keeps_a_few_mib_of_log_and_loses_nothing() {
    let unbounded = tempfile::tempdir().expect("tempdir");
    let (default_wal_bytes, _) = load(unbounded.path(), EngineOptions::default());

    let bounded = tempfile::tempdir().expect("tempdir");
    let mut options = EngineOptions::default();
    options.wal_bytes_max = 0;
    let (bounded_wal_bytes, committed) = load(bounded.path(), options.clone());
    eprintln!(
        "log bytes kept: {default_wal_bytes} at the default bound, {bounded_wal_bytes} at 1 MiB"
    );
    // The load writes enough log for the bound to matter: the default keeps all of it.
    assert!(
        default_wal_bytes >= 8 << 20,
        "the load kept only {default_wal_bytes} bytes of log at the default bound"
    );
    // 1 MiB of live log files, give or take the file being written when the bound is passed,
    // and up to four freed files waiting to be written over.
    assert!(
        bounded_wal_bytes <= 6 << 20,
        "{bounded_wal_bytes} bytes of log kept under a bound of 1 MiB"
    );

    let reopened_state = {
        let ledger = common::ledger(4);
        let engine = common::open(bounded.path(), &ledger, options).expect("reopen");
        read_state(&engine, &ledger)
    };
    assert_eq!(reopened_state, committed, "state after reopening");
}

//! Kills a real engine process with SIGKILL mid-load while depot retention trims what its
//! batches have committed, reopens the data directory, and checks that no trim passed the
//! committed offsets, that every acknowledged record not trimmed is stored as acknowledged, and
//! that every record is applied exactly once: each op adds 1, so the totals sum to the number
//! of records consumed, before and after draining the rest (trimmed records are not needed to
//! check that; `common::kill::check_reopened_with_retention`).
//!
//! The child is this same test binary, re-run with `LOCKSTEP_SIGKILL_RETENTION_DIR` set.

mod common;

use common::{kill, ledger, open, Op};
use lockstep::{DepotRetention, EngineOptions};

const CHILD_ENV: &str = "LOCKSTEP_SIGKILL_RETENTION_DIR";
const PARTITIONS: u32 = 4;

fn retention(options: EngineOptions) -> EngineOptions {
    let mut options = options;
    let mut retention = DepotRetention::default();
    retention.keep_records_min = 1;
    retention.trim_step_records = 50;
    options.depot_retention = Some(retention);
    options
}

#[test]
#[ignore = "run by kill_nine_while_trimming as a child process"]
fn child_appends_until_killed() {
    kill::run_child(
        CHILD_ENV,
        PARTITIONS,
        retention(EngineOptions::default()),
        |thread, i, j| Op {
            key: (thread * 31 + i * 7 + j) % 23,
            amount: 1,
            mirror: (i + j * 5) % 19,
        },
    );
}

#[test]
fn kill_nine_while_trimming() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut loaded = kill::Loaded::spawn("child_appends_until_killed", CHILD_ENV, dir.path());
    // Late enough that retention has trimmed (in steps of 50 per partition), at a moment that
    // varies run to run.
    loaded.read_acks(6_000 + kill::varying(6_000) as usize);
    // Every acknowledgment the child printed before it died, the unread ones included.
    let acked = loaded.kill_nine();
    assert!(
        acked.len() >= 2_000,
        "child acknowledged only {}",
        acked.len()
    );

    let ledger = ledger(PARTITIONS);
    let engine = open(dir.path(), &ledger, retention(EngineOptions::manual())).expect("reopen");
    let reopened = kill::check_reopened_with_retention(&engine, &ledger, &acked);
    eprintln!(
        "killed after {} acknowledged appends; {reopened:?}",
        acked.len()
    );
    assert!(
        reopened.trimmed > 0,
        "retention never trimmed before the kill"
    );
}

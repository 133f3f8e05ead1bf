//! Kills a real engine process with SIGKILL mid-load while depot retention trims what its
//! batches have committed, reopens the data directory, and checks that no trim passed the
//! committed offsets, that every acknowledged record not trimmed is stored as acknowledged, and
//! that every record is applied exactly once: each op adds 1, so the totals sum to the number
//! of records consumed, before and after draining the rest (trimmed records are not needed to
//! check that).
//!
//! The child is this same test binary, re-run with `LOCKSTEP_SIGKILL_RETENTION_DIR` set.

mod common;

use std::collections::BTreeMap;

use common::{kill, ledger, open, read_state, LedgerState, Op};
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

/// Records the state's ops account for: every op adds 1 to a total and 1 entry to a log.
fn applied(state: &LedgerState) -> (i64, usize) {
    (
        state.totals.values().sum(),
        state.mirror_log.values().map(Vec::len).sum(),
    )
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
    let committed = engine.committed(common::TOPOLOGY).expect("commit record");
    let mut consumed_total = 0;
    let mut trimmed_total = 0;
    let mut heads_total = 0;
    for p in 0..PARTITIONS {
        let first_kept = engine
            .depot_first_kept_offset(&ledger.ops, p)
            .expect("start");
        let head = engine.depot_next_offset(&ledger.ops, p).expect("head");
        let consumed = committed
            .offsets
            .iter()
            .find(|o| o.partition == p)
            .map_or(0, |o| o.next_offset);
        assert!(
            first_kept <= consumed && consumed <= head,
            "partition {p}: first kept {first_kept}, consumed {consumed}, head {head}"
        );
        let stored: BTreeMap<u64, Op> = engine
            .read_depot(&ledger.ops, p, first_kept, usize::MAX)
            .expect("read depot")
            .into_iter()
            .collect();
        assert_eq!(
            stored.len() as u64,
            head - first_kept,
            "partition {p} is dense"
        );
        for ((_, offset), op) in acked.range((p, first_kept)..(p + 1, 0)) {
            assert_eq!(
                stored.get(offset),
                Some(op),
                "partition {p} offset {offset}"
            );
        }
        consumed_total += consumed;
        trimmed_total += first_kept;
        heads_total += head;
    }
    eprintln!(
        "killed after {} acknowledged appends; {heads_total} durable, {consumed_total} committed, {trimmed_total} trimmed",
        acked.len()
    );
    assert!(trimmed_total > 0, "retention never trimmed before the kill");
    // Exactly the consumed records, each once.
    assert_eq!(
        applied(&read_state(&engine, &ledger)),
        (consumed_total as i64, consumed_total as usize)
    );
    engine.run_until_idle().expect("drain");
    assert_eq!(
        applied(&read_state(&engine, &ledger)),
        (heads_total as i64, heads_total as usize)
    );
}

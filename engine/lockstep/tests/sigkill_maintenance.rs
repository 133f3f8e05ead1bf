//! Kills a real engine process with SIGKILL while it is idle but for its own work: the last
//! batches committing and the appender's maintenance writes, which trim what retention allows
//! once no append has come for `maintenance_interval`. After each kill the data directory
//! must hold every acknowledged record not trimmed, no trim past the committed offsets, and
//! every record applied exactly once (`common::kill::check_reopened_with_retention`).
//!
//! The child is this same test binary, re-run with `LOCKSTEP_SIGKILL_MAINTENANCE_DIR` set: it
//! appends a fixed load, prints `loaded`, then `trimmed` once every partition is trimmed down
//! to its last record (which only a maintenance write can do: the last append group's
//! records are committed after it is written, and it holds at least two records of some
//! partition), and `idle` now and then, until it is killed.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{kill, ledger, open, Op};
use lockstep::{DepotRetention, EngineOptions};

const CHILD_ENV: &str = "LOCKSTEP_SIGKILL_MAINTENANCE_DIR";
const PARTITIONS: u32 = 4;
/// Append calls of 8 records in the child's load.
const LOAD_CALLS: u32 = 150;
/// Children killed, each in a fresh data directory.
const KILLS: usize = 6;

fn options(options: EngineOptions) -> EngineOptions {
    let mut options = options;
    let mut retention = DepotRetention::default();
    retention.keep_records_min = 1;
    // Every committed record but the last per partition can go, so the records of the last
    // append group, committed after it was written, are left to a maintenance write.
    retention.trim_step_records = 1;
    options.depot_retention = Some(retention);
    options.maintenance_interval = Some(Duration::from_millis(10));
    options
}

#[test]
#[ignore = "run by kill_nine_while_maintenance_trims as a child process"]
fn child_loads_then_idles_until_killed() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let ledger = ledger(PARTITIONS);
    let engine = open(dir.as_ref(), &ledger, options(EngineOptions::default())).expect("open");
    let mut out = std::io::stdout();
    // The test harness has printed the test's name without ending its line.
    writeln!(out).expect("write");
    for call in 0..LOAD_CALLS {
        let ops: Vec<Op> = (0..8u32)
            .map(|j| Op {
                key: (call * 7 + j) % 23,
                amount: 1,
                mirror: (call + j * 5) % 19,
            })
            .collect();
        let ids = engine.append_many(&ledger.ops, &ops).expect("append");
        kill::print_acks(&mut out, &ops, &ids);
    }
    writeln!(out, "loaded").expect("write");
    out.flush().expect("flush");
    let mut trimmed = false;
    for tick in 1u64.. {
        std::thread::sleep(Duration::from_millis(1));
        if !trimmed {
            trimmed = (0..PARTITIONS).all(|p| {
                let first_kept = engine.depot_first_kept_offset(&ledger.ops, p);
                let head = engine.depot_next_offset(&ledger.ops, p);
                matches!((first_kept, head), (Ok(first_kept), Ok(head)) if first_kept + 1 == head)
            });
            if trimmed {
                writeln!(out, "trimmed").expect("write");
                out.flush().expect("flush");
            }
        }
        if tick % 25 == 0 {
            // A line now and then lets the parent's reads time out instead of blocking.
            writeln!(out, "idle").expect("write");
            out.flush().expect("flush");
        }
    }
}

#[test]
fn kill_nine_while_maintenance_trims() {
    let ledger = ledger(PARTITIONS);
    for kill_number in 0..KILLS {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child =
            kill::Loaded::spawn("child_loads_then_idles_until_killed", CHILD_ENV, dir.path());
        assert!(
            child.read_until_note("loaded"),
            "the child never finished its load"
        );
        // Every other child is first seen to have trimmed all it can, in a maintenance
        // write, and killed once it has gone quiet: that trim must survive the kill. The
        // others die at any point of the last commits and the first maintenance checks.
        let seen_trimmed = kill_number % 2 == 1;
        if seen_trimmed {
            assert!(
                child.read_until_note("trimmed"),
                "no maintenance write trimmed the rest after the load"
            );
        }
        std::thread::sleep(Duration::from_millis(kill::varying(30)));
        let (acked, _) = child.kill_nine_with_notes();
        assert_eq!(acked.len(), (LOAD_CALLS * 8) as usize);
        // No maintenance of the parent's own: what is trimmed is what the child trimmed.
        let mut reopen_options = options(EngineOptions::manual());
        reopen_options.maintenance_interval = None;
        let engine = open(dir.path(), &ledger, reopen_options).expect("reopen");
        let reopened = kill::check_reopened_with_retention(&engine, &ledger, &acked);
        eprintln!("kill {kill_number}: trimmed by maintenance before it: {seen_trimmed}");
        assert!(
            reopened.trimmed > 0,
            "retention never trimmed before the kill"
        );
        if seen_trimmed {
            assert_eq!(reopened.consumed, reopened.heads);
            assert_eq!(reopened.trimmed, reopened.heads - u64::from(PARTITIONS));
        }
    }
}

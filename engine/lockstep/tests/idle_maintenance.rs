//! The appender's maintenance on an idle engine (`EngineOptions::maintenance_interval`):
//! records that topologies committed after the last append are trimmed, and idle producers
//! forgotten, without another append; with the interval off, both wait for the next append
//! or `Engine::run_maintenance`. A failed maintenance write poisons the engine.

mod common;

use std::time::{Duration, Instant};

use common::retention::{first_kept, heads, ops, options};
use common::{ledger, open, read_state, sample_ops};
use lockstep::{DurableWrite, Error, StorageFaults, WriteFault};

/// How often the tests' engines check when idle.
const INTERVAL: Duration = Duration::from_millis(50);
/// How long a test waits for a check to have happened (many intervals, for a loaded machine).
const PATIENCE: Duration = Duration::from_secs(20);

/// Polls `done` until it holds or `PATIENCE` runs out; whether it held.
fn eventually(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(INTERVAL);
    }
    done()
}

#[test]
fn an_idle_engine_trims_what_its_topologies_committed_after_the_last_append() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(2);
    let mut options = options(10);
    options.maintenance_interval = Some(INTERVAL);
    let retention = options.depot_retention.expect("retention");
    let engine = open(dir.path(), &ledger, options).expect("open");
    engine
        .append_many(&ledger.ops, &ops(0, 60))
        .expect("append");
    // The append planned its trims before any batch: nothing was committed, nothing trimmed.
    assert_eq!(first_kept(&engine, &ledger), [0, 0]);
    engine.run_until_idle().expect("batches");

    // No append follows: checks trim each partition to its newest `keep` records, or to
    // within a step of them (a check that ran while the batches did may have trimmed part
    // of the way, leaving less than a step for the next).
    let target: Vec<u64> = heads(&engine, &ledger)
        .iter()
        .map(|head| head - retention.keep_records_min)
        .collect();
    let trimmed_enough = |kept: &[u64]| {
        kept.iter()
            .zip(&target)
            .all(|(kept, target)| kept <= target && target - kept < retention.trim_step_records)
    };
    assert!(
        eventually(|| trimmed_enough(&first_kept(&engine, &ledger))),
        "first kept {:?}, target {target:?}",
        first_kept(&engine, &ledger)
    );
    let kept = first_kept(&engine, &ledger);
    assert!(kept.iter().all(|kept| *kept > 0), "{kept:?}");
    let stats = engine.append_stats();
    assert_eq!(stats.records, 60);
    assert_eq!(stats.trimmed_records, kept.iter().sum::<u64>(), "{stats:?}");
    let total: i64 = read_state(&engine, &ledger).totals.values().sum();
    assert_eq!(total, 60, "trimming lost no committed effect");
    drop(engine);

    // Durable: the reopened directory starts where the idle trims left it.
    let engine = open(dir.path(), &ledger, common::retention::options(10)).expect("reopen");
    assert_eq!(first_kept(&engine, &ledger), kept);
}

/// A maintenance write that fails poisons the engine, as a failed append does: the next call
/// is told why, and the state committed before stays readable.
#[test]
fn a_failed_maintenance_write_poisons_the_engine() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(2);
    let faults = StorageFaults::new();
    let mut options = options(10);
    options.maintenance_interval = Some(INTERVAL);
    options.storage_faults = Some(faults.clone());
    let engine = open(dir.path(), &ledger, options).expect("open");
    engine
        .append_many(&ledger.ops, &ops(0, 60))
        .expect("append");
    faults.fail_next(DurableWrite::Append, WriteFault::NotWritten);
    engine.run_until_idle().expect("batches");
    assert!(
        eventually(|| engine.poisoned().is_some()),
        "no maintenance write was attempted"
    );
    let reason = engine.poisoned().expect("poisoned");
    assert!(
        reason.contains("maintenance") && reason.contains("injected fault"),
        "unclear reason: {reason}"
    );
    assert!(matches!(
        engine.append_many(&ledger.ops, &ops(60, 1)),
        Err(Error::Poisoned { .. })
    ));
    let total: i64 = read_state(&engine, &ledger).totals.values().sum();
    assert_eq!(total, 60);
    drop(engine);
    // The failed write trimmed nothing: a restart finds every record.
    let engine = open(dir.path(), &ledger, common::retention::options(10)).expect("reopen");
    assert_eq!(first_kept(&engine, &ledger), [0, 0]);
}

/// In manual mode nothing runs by itself: the trims wait for an append, or for
/// `Engine::run_maintenance`, which writes them once and then finds nothing more to write.
#[test]
fn without_the_interval_trims_wait_for_a_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(2);
    let options = options(10);
    assert_eq!(options.maintenance_interval, None, "manual mode has none");
    let engine = open(dir.path(), &ledger, options).expect("open");
    engine
        .append_many(&ledger.ops, &ops(0, 60))
        .expect("append");
    engine.run_until_idle().expect("batches");
    std::thread::sleep(INTERVAL * 6);
    assert_eq!(first_kept(&engine, &ledger), [0, 0]);

    let groups = engine.append_stats().groups;
    engine.run_maintenance().expect("maintenance");
    let expected: Vec<u64> = heads(&engine, &ledger)
        .iter()
        .map(|head| head - 3)
        .collect();
    assert_eq!(first_kept(&engine, &ledger), expected);
    assert_eq!(engine.append_stats().groups, groups + 1, "one synced write");
    engine.run_maintenance().expect("maintenance");
    assert_eq!(
        engine.append_stats().groups,
        groups + 1,
        "nothing left to write"
    );
    assert_eq!(engine.append_stats().records, 60);
}

#[test]
fn an_idle_engine_forgets_expired_producers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(2);
    let mut options = lockstep::EngineOptions::manual();
    options.maintenance_interval = Some(INTERVAL);
    // Long enough that the state is still there when the test first looks, on a loaded
    // machine; the checks come every `INTERVAL` after it.
    options.producer_expiry = Duration::from_secs(2);
    let engine = open(dir.path(), &ledger, options).expect("open");
    engine
        .append_many_idempotent(&ledger.ops, &sample_ops(2), 0xfeed, 1)
        .expect("append");
    assert_eq!(engine.append_stats().producers_remembered, 1);
    assert!(
        eventually(|| engine.append_stats().producers_expired == 1),
        "{:?}",
        engine.append_stats()
    );
    assert_eq!(engine.append_stats().producers_remembered, 0);
    // Forgotten, the same call is new: stored again.
    engine
        .append_many_idempotent(&ledger.ops, &sample_ops(2), 0xfeed, 1)
        .expect("append");
    assert_eq!(engine.append_stats().records, 4);
}

//! Producer expiry: an idempotent producer idle longer than `EngineOptions::producer_expiry`
//! is forgotten, in memory and on disk, by the next group written; a producer still in its
//! window keeps deduplicating; the time of a producer's last call survives a reopen, so a
//! restart does not make an idle producer young again.

mod common;

use std::time::Duration;

use common::{ledger, open, sample_ops as ops, stored_records as stored};
use lockstep::{EngineOptions, Error};

/// Short enough to wait out in a test, long enough that calls made back to back (each one
/// fsync) stay well inside it on a loaded machine.
const EXPIRY: Duration = Duration::from_secs(3);
/// What the tests allow for calls, fsyncs and scheduling on either side of the expiry.
const MARGIN: Duration = Duration::from_millis(500);

fn options(producer_expiry: Duration) -> EngineOptions {
    let mut options = EngineOptions::manual();
    options.producer_expiry = producer_expiry;
    options
}

/// Waits until more than `EXPIRY` has passed since the calls just made.
fn outwait_expiry() {
    std::thread::sleep(EXPIRY + MARGIN);
}

#[test]
fn idle_producers_are_forgotten_and_active_ones_are_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(2);
    let engine = open(dir.path(), &ledger, options(EXPIRY)).expect("open");
    let (idle, active) = (0xa11, 0xb22);
    let first = engine
        .append_many_idempotent(&ledger.ops, &ops(3), idle, 5)
        .expect("append");
    engine
        .append_many_idempotent(&ledger.ops, &ops(1), active, 0)
        .expect("append");
    // Inside the window a retry is recognised, and an older call refused.
    assert_eq!(
        engine
            .append_many_idempotent(&ledger.ops, &ops(3), idle, 5)
            .expect("retry"),
        first
    );
    assert!(matches!(
        engine.append_many_idempotent(&ledger.ops, &ops(1), idle, 4),
        Err(Error::StaleSequence { last: 5, .. })
    ));
    assert_eq!(engine.append_stats().producers_remembered, 2);
    assert_eq!(stored(&engine, &ledger), 4);

    // Half the window later the active producer calls again, then the rest of the window
    // passes and a margin: only the idle one has been quiet for longer than the expiry (the
    // active one for half of it and the margin, a second short of it).
    std::thread::sleep(EXPIRY / 2);
    engine
        .append_many_idempotent(&ledger.ops, &ops(1), active, 1)
        .expect("append");
    std::thread::sleep(EXPIRY / 2 + MARGIN);
    engine
        .append_many_idempotent(&ledger.ops, &ops(1), active, 2)
        .expect("append, which forgets the idle producer");
    let stats = engine.append_stats();
    assert_eq!(stats.producers_expired, 1);
    assert_eq!(stats.producers_remembered, 1);
    assert!(matches!(
        engine.append_many_idempotent(&ledger.ops, &ops(1), active, 1),
        Err(Error::StaleSequence { last: 2, .. })
    ));

    // Forgotten, the idle producer is new: the contract says a retry this late is stored
    // again, and an older sequence is a new call.
    let late_retry = engine
        .append_many_idempotent(&ledger.ops, &ops(3), idle, 5)
        .expect("a late retry is a new call");
    assert_ne!(late_retry, first);
    engine
        .append_many_idempotent(&ledger.ops, &ops(1), idle, 6)
        .expect("append");
    assert_eq!(stored(&engine, &ledger), 10);
}

/// Forgetting is durable: after a reopen with a long expiry, the forgotten producer's old
/// state is not back (an older sequence is accepted, not refused as stale).
#[test]
fn a_forgotten_producer_stays_forgotten_after_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(2);
    let engine = open(dir.path(), &ledger, options(EXPIRY)).expect("open");
    engine
        .append_many_idempotent(&ledger.ops, &ops(2), 0xc33, 9)
        .expect("append");
    outwait_expiry();
    engine
        .append(&ledger.ops, &ops(1)[0])
        .expect("a plain append writes the deletion");
    assert_eq!(engine.append_stats().producers_expired, 1);
    drop(engine);

    let engine = open(dir.path(), &ledger, options(Duration::from_secs(3600))).expect("reopen");
    engine
        .append_many_idempotent(&ledger.ops, &ops(1), 0xc33, 0)
        .expect("sequence 0 of a forgotten producer is a new call");
    assert_eq!(stored(&engine, &ledger), 4);
}

/// The last call's time is stored with the producer's state: a producer that was idle before
/// a restart expires by that time, not a full window after the reopen. A producer that was
/// remembered across the reopen still deduplicates.
#[test]
fn a_producers_idle_time_survives_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(2);
    let engine = open(dir.path(), &ledger, options(Duration::from_secs(3600))).expect("open");
    let (quiet, busy) = (0xd44, 0xe55);
    engine
        .append_many_idempotent(&ledger.ops, &ops(2), quiet, 3)
        .expect("append");
    drop(engine);
    outwait_expiry();

    let engine = open(dir.path(), &ledger, options(EXPIRY)).expect("reopen");
    let busy_first = engine
        .append_many_idempotent(&ledger.ops, &ops(1), busy, 0)
        .expect("an append, which forgets the quiet producer");
    assert_eq!(engine.append_stats().producers_expired, 1);
    engine
        .append_many_idempotent(&ledger.ops, &ops(2), quiet, 2)
        .expect("an older sequence of a forgotten producer is a new call");
    assert_eq!(
        engine
            .append_many_idempotent(&ledger.ops, &ops(1), busy, 0)
            .expect("retry"),
        busy_first
    );
    assert_eq!(stored(&engine, &ledger), 5);
}

/// A group whose only call is a retry (which writes nothing) is still written when a producer
/// expired before it: the deletion is not left to a later write, or after a reopen with a
/// longer expiry the forgotten producer's old state would be back.
#[test]
fn a_group_of_retries_alone_still_deletes_expired_states() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(2);
    let engine = open(dir.path(), &ledger, options(EXPIRY)).expect("open");
    let (idle, live) = (0xf66, 0xf77);
    engine
        .append_many_idempotent(&ledger.ops, &ops(1), idle, 4)
        .expect("append");
    std::thread::sleep(EXPIRY / 2);
    let first = engine
        .append_many_idempotent(&ledger.ops, &ops(2), live, 0)
        .expect("append");
    std::thread::sleep(EXPIRY / 2 + MARGIN);
    assert_eq!(
        engine
            .append_many_idempotent(&ledger.ops, &ops(2), live, 0)
            .expect("a retry, the group's only call"),
        first
    );
    assert_eq!(engine.append_stats().producers_expired, 1);
    assert_eq!(stored(&engine, &ledger), 3);
    drop(engine);

    let engine = open(dir.path(), &ledger, options(Duration::from_secs(3600))).expect("reopen");
    engine
        .append_many_idempotent(&ledger.ops, &ops(1), idle, 0)
        .expect("sequence 0 of the forgotten producer is a new call");
    assert_eq!(stored(&engine, &ledger), 4);
}

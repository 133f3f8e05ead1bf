//! Idempotent appends: a retried call (same producer and sequence) is acknowledged with the
//! first call's positions and stored once, also after reopening; an older call is refused.

mod common;

use common::{ledger, open, sample_ops as ops, stored_records as stored};
use lockstep::{EngineOptions, Error};

#[test]
fn retries_are_acknowledged_once_and_stored_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(3);
    let engine = open(dir.path(), &ledger, EngineOptions::manual()).expect("open");
    let producer = 0xfeed;
    let first = engine
        .append_many_idempotent(&ledger.ops, &ops(4), producer, 0)
        .expect("append");
    let again = engine
        .append_many_idempotent(&ledger.ops, &ops(4), producer, 0)
        .expect("retry");
    assert_eq!(first, again);
    assert_eq!(stored(&engine, &ledger), 4);

    let second = engine
        .append_many_idempotent(&ledger.ops, &ops(2), producer, 1)
        .expect("next call");
    assert_eq!(stored(&engine, &ledger), 6);
    assert!(matches!(
        engine.append_many_idempotent(&ledger.ops, &ops(2), producer, 0),
        Err(Error::StaleSequence {
            producer: 0xfeed,
            sequence: 0,
            last: 1
        })
    ));
    // The last sequence with other records is not a retry: refused, nothing written.
    assert!(matches!(
        engine.append_many_idempotent(&ledger.ops, &ops(3), producer, 1),
        Err(Error::SequenceReused {
            producer: 0xfeed,
            sequence: 1
        })
    ));
    assert_eq!(stored(&engine, &ledger), 6);
    // Another producer is independent.
    engine
        .append_many_idempotent(&ledger.ops, &ops(1), 7, 0)
        .expect("other producer");
    assert_eq!(stored(&engine, &ledger), 7);

    // The producer's state is durable: a retry after reopening still deduplicates.
    drop(engine);
    let engine = open(dir.path(), &ledger, EngineOptions::manual()).expect("reopen");
    let retried = engine
        .append_many_idempotent(&ledger.ops, &ops(2), producer, 1)
        .expect("retry after reopen");
    assert_eq!(retried, second);
    assert_eq!(stored(&engine, &ledger), 7);
    engine.run_until_idle().expect("batches");
    let totals: i64 = common::read_state(&engine, &ledger).totals.values().sum();
    assert_eq!(totals, 7, "each record applied once");
}

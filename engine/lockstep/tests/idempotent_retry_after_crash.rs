//! Idempotent appends across a crash between the durable write and the acknowledgement (and
//! before the write): the client's retry stores and applies the records exactly once.
//! (Failpoints are process-global, so this scenario has its own test binary.)

mod common;

use common::{ledger, open, sample_ops as ops, stored_records as stored};
use lockstep::{failpoints, EngineOptions, Error};

#[test]
fn a_retry_after_a_crash_between_write_and_ack_is_not_duplicated() {
    let scenario = fail::FailScenario::setup();
    for (failpoint, durable) in [
        (failpoints::APPEND_AFTER_WRITE, true),
        (failpoints::APPEND_BEFORE_WRITE, false),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = ledger(2);
        let engine = open(dir.path(), &ledger, EngineOptions::manual()).expect("open");
        fail::cfg(failpoint, "return").expect("failpoint");
        let err = engine
            .append_many_idempotent(&ledger.ops, &ops(3), 42, 0)
            .expect_err("crash");
        assert!(matches!(err, Error::Poisoned { .. }), "{err}");
        fail::remove(failpoint);
        drop(engine);

        // The client did not get an answer, so it retries the same call after the restart.
        let engine = open(dir.path(), &ledger, EngineOptions::manual()).expect("reopen");
        assert_eq!(stored(&engine, &ledger), if durable { 3 } else { 0 });
        let ids = engine
            .append_many_idempotent(&ledger.ops, &ops(3), 42, 0)
            .expect("retry");
        assert_eq!(ids.len(), 3);
        assert_eq!(stored(&engine, &ledger), 3, "{failpoint}: stored once");
        engine.run_until_idle().expect("batches");
        let totals: i64 = common::read_state(&engine, &ledger).totals.values().sum();
        assert_eq!(totals, 3, "{failpoint}: applied once");
    }
    scenario.teardown();
}

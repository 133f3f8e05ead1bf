//! A commit that fails while the next batch has already executed over its pending writes:
//! the engine poisons itself, the executed batch is never written, what is visible is exactly
//! the committed prefix of the input, and after a reopen every record is applied once.
//! Alone in its binary: failpoints are process-global.

mod common;

use std::time::{Duration, Instant};

use common::{ledger_with, open, read_state, serializable_model_after, varied_op, Op};
use lockstep::{failpoints, Delivery, EngineOptions};

const PARTITIONS: u32 = 3;

fn model_after(ops: &[Op], records: usize) -> common::Model {
    serializable_model_after(PARTITIONS, ops, records)
}

#[test]
fn a_failed_commit_drops_the_batch_executed_behind_it() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger_with(PARTITIONS, Delivery::Serializable);
    let mut options = EngineOptions::default();
    options.batch_records_max = 2;
    let ops: Vec<Op> = (0..600).map(varied_op).collect();
    {
        let engine = open(dir.path(), &ledger, options.clone()).expect("open");
        // The 20th commit fails; the batches before it commit normally.
        fail::cfg(failpoints::COMMIT_BEFORE_WRITE, "19*off->return").expect("failpoint");
        let mut appended = 0;
        // The last call is kept for after the reopen.
        for chunk in ops[..ops.len() - 10].chunks(10) {
            if engine.append_many(&ledger.ops, chunk).is_err() {
                break; // poisoned: refused before anything is written
            }
            appended += chunk.len();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while engine.poisoned().is_none() {
            assert!(Instant::now() < deadline, "the failpoint never fired");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(engine
            .poisoned()
            .expect("poisoned")
            .contains("failed to commit"));
        let committed = engine.committed(common::TOPOLOGY).expect("committed");
        assert_eq!(
            committed.batch_id, 19,
            "batches committed before the failure"
        );
        let consumed: u64 = committed.offsets.iter().map(|o| o.next_offset).sum();
        assert!(consumed as usize <= appended);
        // Visible: exactly the committed prefix, nothing of the failed batch or the one after.
        let visible = read_state(&engine, &ledger);
        let expected = model_after(&ops, consumed as usize);
        assert_eq!(visible.totals, expected.state.totals);
        assert_eq!(visible.mirror_log, expected.state.mirror_log);
        fail::remove(failpoints::COMMIT_BEFORE_WRITE);
        drop(engine);
        // Reopen and finish the stream: every op applied exactly once.
        let engine = open(dir.path(), &ledger, options).expect("reopen");
        let rest = &ops[appended..];
        let mut last = None;
        for chunk in rest.chunks(10) {
            last = engine
                .append_many(&ledger.ops, chunk)
                .expect("append")
                .pop();
        }
        let last = last.expect("something left to append");
        engine
            .wait_for(common::TOPOLOGY, last, Duration::from_secs(60))
            .expect("processed");
        let all = model_after(&ops, ops.len());
        let state = read_state(&engine, &ledger);
        assert_eq!(state.totals, all.state.totals);
        assert_eq!(state.mirror_log, all.state.mirror_log);
    }
    scenario.teardown();
}

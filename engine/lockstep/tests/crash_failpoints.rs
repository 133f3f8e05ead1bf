//! Crash at every named failpoint, then reopen and check recovery: no partial batch visible,
//! nothing acknowledged lost, nothing applied twice, and the engine poisoned in between.
//!
//! A failpoint returns an error at its step, which the engine treats like a failed fsync: it
//! poisons itself. Dropping the engine and reopening the directory is then what a restart after
//! a crash at that step sees, because everything before the step reached RocksDB and nothing
//! after it did.

mod common;

use common::{assert_outcomes, ledger, open, read_state, Model, Op};
use lockstep::{failpoints, EngineOptions, Error};

fn ops(seed: u32, n: u32) -> Vec<Op> {
    (0..n)
        .map(|i| Op {
            key: (seed * 7 + i * 3) % 10,
            amount: i64::from(i % 5) - 2,
            mirror: (seed + i) % 10,
        })
        .collect()
}

fn crash_at(failpoint: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(3);
    let options = EngineOptions::manual();
    let mut model = Model::new(3);
    let engine = open(dir.path(), &ledger, options.clone()).expect("open");

    // A committed baseline and some pending, acknowledged records.
    let first = ops(1, 20);
    let ids = engine.append_many(&ledger.ops, &first).expect("append");
    let depot_id = ids[0].depot_id;
    first.iter().for_each(|op| {
        model.append(*op);
    });
    assert!(engine.run_batch(common::TOPOLOGY).expect("batch").is_some());
    model.run_batch(usize::MAX);
    let pending = ops(2, 10);
    engine.append_many(&ledger.ops, &pending).expect("append");
    pending.iter().for_each(|op| {
        model.append(*op);
    });
    let before_crash = model.clone();

    fail::cfg(failpoint, "return").expect("configure failpoint");
    let victim = ops(3, 5);
    let engine = match failpoint {
        failpoints::APPEND_BEFORE_WRITE | failpoints::APPEND_AFTER_WRITE => {
            let err = engine
                .append_many(&ledger.ops, &victim)
                .expect_err("append must fail");
            assert!(matches!(err, Error::Poisoned { .. }), "{failpoint}: {err}");
            if failpoint == failpoints::APPEND_AFTER_WRITE {
                // Durable but not acknowledged: after restart it is there and gets processed.
                victim.iter().for_each(|op| {
                    model.append(*op);
                });
            }
            Some(engine)
        }
        failpoints::COMMIT_BEFORE_WRITE | failpoints::COMMIT_AFTER_WRITE => {
            let err = engine
                .run_batch(common::TOPOLOGY)
                .expect_err("commit must fail");
            assert!(matches!(err, Error::Poisoned { .. }), "{failpoint}: {err}");
            if failpoint == failpoints::COMMIT_AFTER_WRITE {
                model.run_batch(usize::MAX);
            }
            Some(engine)
        }
        failpoints::RECOVERY_AFTER_CATALOG | failpoints::RECOVERY_BEFORE_START => {
            drop(engine);
            let err = open(dir.path(), &ledger, options.clone()).expect_err("open must fail");
            assert!(
                matches!(err, Error::Store(lockstep::StoreError::Injected(_))),
                "{failpoint}: {err}"
            );
            None
        }
        other => panic!("no scenario for failpoint {other}"),
    };

    if let Some(engine) = engine {
        // Poisoned: every write refused with a clear error, committed data still readable.
        assert!(engine.poisoned().is_some(), "{failpoint}: not poisoned");
        let err = engine
            .append(&ledger.ops, &victim[0])
            .expect_err("poisoned");
        assert!(err.to_string().contains("poisoned"), "{err}");
        assert!(matches!(
            engine.run_batch(common::TOPOLOGY),
            Err(Error::Poisoned { .. })
        ));
        let visible = read_state(&engine, &ledger);
        let expected_visible = if failpoint == failpoints::COMMIT_AFTER_WRITE {
            // Durable and readable, though not yet published to waiters.
            model.state.clone()
        } else {
            before_crash.state.clone()
        };
        assert_eq!(visible, expected_visible, "{failpoint}: visible state");
    }
    fail::remove(failpoint);

    let engine = open(dir.path(), &ledger, options).expect("reopen after crash");
    assert!(engine.poisoned().is_none());
    // Recovery resumes from the last committed batch: exactly the model's committed state.
    assert_eq!(
        read_state(&engine, &ledger),
        model.state,
        "{failpoint}: recovered"
    );
    // Every acknowledged record is still there, in order, with its contents.
    for p in 0..3u32 {
        let stored: Vec<Op> = engine
            .read_depot(&ledger.ops, p, 0, usize::MAX)
            .expect("read depot")
            .into_iter()
            .map(|(_, op)| op)
            .collect();
        let mut expected: Vec<Op> = Vec::new();
        for op in first.iter().chain(&pending) {
            if model.partition(op.key) == p {
                expected.push(*op);
            }
        }
        if failpoint == failpoints::APPEND_AFTER_WRITE {
            expected.extend(victim.iter().filter(|op| model.partition(op.key) == p));
        }
        assert_eq!(stored, expected, "{failpoint}: depot partition {p}");
    }
    // The interrupted work is redone once: exactly-once effects.
    engine.run_until_idle().expect("drain");
    model.run_until_idle(usize::MAX);
    assert_eq!(
        read_state(&engine, &ledger),
        model.state,
        "{failpoint}: drained"
    );
    assert_outcomes(&engine, &ledger, &model, depot_id);
}

#[test]
fn recovers_from_a_crash_at_every_failpoint() {
    let scenario = fail::FailScenario::setup();
    for failpoint in failpoints::ALL {
        crash_at(failpoint);
    }
    scenario.teardown();
}

//! A panic while a batch commits poisons the engine, as a failed fsync does, on every path
//! that commits: `run_batch`, the held batch of `execute_batch`, and the automatic committer
//! thread. Waiters wake with the reason, and a restart redoes the batch once, or finds it
//! committed if the panic came after its write. (Failpoints are process-global: own binary,
//! one test.)

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{ledger, open, read_state, Ledger, Model, Op, TOPOLOGY};
use lockstep::{failpoints, Engine, EngineOptions, Error};

const PARTITIONS: u32 = 3;

fn ops() -> Vec<Op> {
    (0..30)
        .map(|i| Op {
            key: i % 10,
            amount: i64::from(i % 7) - 3,
            mirror: (i * 3) % 10,
        })
        .collect()
}

/// How the batch that panics is committed.
#[derive(Debug, Clone, Copy)]
enum CommitPath {
    RunBatch,
    HeldBatch,
    Committer,
}

/// Appends the ops and returns the last record's id with the model after one batch of them.
fn append_all(engine: &Engine, ledger: &Ledger) -> (lockstep::RecordId, Model) {
    let ops = ops();
    let ids = engine.append_many(&ledger.ops, &ops).expect("append");
    let mut model = Model::new(PARTITIONS);
    ops.iter().for_each(|op| {
        model.append(*op);
    });
    model.run_batch(usize::MAX);
    (*ids.last().expect("ids"), model)
}

fn assert_poisoned_by_panic(engine: &Engine, ledger: &Ledger, err: &Error, case: &str) {
    match err {
        Error::Poisoned { reason } => assert!(reason.contains("panicked"), "{case}: {reason}"),
        other => panic!("{case}: expected the poison, got {other}"),
    }
    let reason = engine
        .poisoned()
        .unwrap_or_else(|| panic!("{case}: not poisoned"));
    assert!(reason.contains("panicked"), "{case}: {reason}");
    let op = Op {
        key: 1,
        amount: 1,
        mirror: 2,
    };
    let refused = engine.append(&ledger.ops, &op);
    assert!(
        matches!(refused, Err(Error::Poisoned { .. })),
        "{case}: append after the panic: {refused:?}"
    );
}

fn panic_while_committing(dir: &Path, failpoint: &str, path: CommitPath) {
    let case = format!("{failpoint} on {path:?}");
    let ledger = ledger(PARTITIONS);
    let options = match path {
        CommitPath::Committer => EngineOptions::default(),
        CommitPath::RunBatch | CommitPath::HeldBatch => EngineOptions::manual(),
    };
    let engine = open(dir, &ledger, options.clone()).expect("open");
    let before = read_state(&engine, &ledger);
    fail::cfg(failpoint, "panic").expect("failpoint");
    let (last, model) = append_all(&engine, &ledger);
    let err = match path {
        CommitPath::RunBatch => engine.run_batch(TOPOLOGY).expect_err("commit must fail"),
        CommitPath::HeldBatch => {
            // The first call only executes and holds the batch; the commit is the next step.
            assert!(engine.execute_batch(TOPOLOGY).expect("execute").is_some());
            engine
                .commit_held_batch(TOPOLOGY)
                .expect_err("commit must fail")
        }
        CommitPath::Committer => {
            let started = Instant::now();
            let err = engine
                .wait_for(TOPOLOGY, last, Duration::from_secs(30))
                .expect_err("commit must fail");
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{case}: the waiter slept until its timeout"
            );
            err
        }
    };
    fail::remove(failpoint);
    assert_poisoned_by_panic(&engine, &ledger, &err, &case);
    match path {
        CommitPath::Committer => {
            // The failed commit stops the topology too; once it has, callers still hear the
            // poison, the cause, rather than the stop.
            let deadline = Instant::now() + Duration::from_secs(20);
            while engine
                .topology_failure(TOPOLOGY)
                .expect("topology")
                .is_none()
            {
                assert!(
                    Instant::now() < deadline,
                    "{case}: the topology never stopped"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            let waited = engine.wait_for(TOPOLOGY, last, Duration::ZERO);
            assert!(
                matches!(waited, Err(Error::Poisoned { .. })),
                "{case}: {waited:?}"
            );
            let processed = engine.processed(TOPOLOGY, last);
            assert!(
                matches!(processed, Err(Error::Poisoned { .. })),
                "{case}: {processed:?}"
            );
        }
        CommitPath::RunBatch | CommitPath::HeldBatch => {
            let again = engine.run_batch(TOPOLOGY);
            assert!(
                matches!(again, Err(Error::Poisoned { .. })),
                "{case}: {again:?}"
            );
        }
    }
    let visible = read_state(&engine, &ledger);
    if failpoint == failpoints::COMMIT_BEFORE_WRITE {
        assert_eq!(visible, before, "{case}: visible after the panic");
    }
    drop(engine);

    let engine = open(dir, &ledger, options).expect("reopen");
    assert!(engine.poisoned().is_none(), "{case}: poisoned after reopen");
    match path {
        CommitPath::Committer => {
            engine
                .wait_for(TOPOLOGY, last, Duration::from_secs(30))
                .expect("redone after reopen");
        }
        CommitPath::RunBatch | CommitPath::HeldBatch => {
            // Redone (the panic came before the write) or found committed (after it).
            let committed = engine.committed(TOPOLOGY).expect("committed").batch_id;
            let expected = u64::from(failpoint == failpoints::COMMIT_AFTER_WRITE);
            assert_eq!(committed, expected, "{case}: committed after reopen");
            engine.run_until_idle().expect("drain");
        }
    }
    assert_eq!(
        read_state(&engine, &ledger),
        model.state,
        "{case}: recovered"
    );
}

#[test]
fn a_panic_while_committing_poisons_and_recovers() {
    let scenario = fail::FailScenario::setup();
    for failpoint in [
        failpoints::COMMIT_BEFORE_WRITE,
        failpoints::COMMIT_AFTER_WRITE,
    ] {
        for path in [
            CommitPath::RunBatch,
            CommitPath::HeldBatch,
            CommitPath::Committer,
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            panic_while_committing(dir.path(), failpoint, path);
        }
    }
    scenario.teardown();
}

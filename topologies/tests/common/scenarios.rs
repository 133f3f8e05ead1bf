//! Random step sequences shared by the model and crash tests of every reference topology:
//! appends and batches, and for the crash tests, commits that fail before or after their write
//! and restarts.

use std::fmt::Debug;

use lockstep::{failpoints, Error};
use proptest::prelude::*;

use super::{Reference, TopologyHarness};

#[derive(Debug, Clone)]
pub enum Step<C> {
    Append(Vec<C>),
    Batch,
}

pub fn step<C: Clone + Debug>(command: impl Strategy<Value = C>) -> impl Strategy<Value = Step<C>> {
    prop_oneof![
        3 => prop::collection::vec(command, 1..8).prop_map(Step::Append),
        1 => Just(Step::Batch),
    ]
}

/// Runs `steps`, checking the engine against the model and the invariants after every batch
/// and once everything is consumed.
pub fn run_steps<R: Reference>(partitions: u32, records_max: usize, steps: Vec<Step<R::Command>>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut harness = TopologyHarness::<R>::open(dir.path(), partitions, records_max);
    for step in steps {
        match step {
            Step::Append(commands) => {
                harness.append(&commands);
            }
            Step::Batch => {
                harness.run_batch();
                harness.assert_matches_model();
            }
        }
    }
    while harness.run_batch() {
        harness.assert_matches_model();
    }
    harness.assert_matches_model();
}

#[derive(Debug, Clone)]
pub enum CrashStep<C> {
    Append(Vec<C>),
    Batch,
    /// Fail the next commit before its write (nothing lands) or after it (all lands).
    CrashInCommit {
        after_write: bool,
    },
    Restart,
}

pub fn crash_step<C: Clone + Debug>(
    command: impl Strategy<Value = C>,
) -> impl Strategy<Value = CrashStep<C>> {
    prop_oneof![
        4 => prop::collection::vec(command, 1..6).prop_map(CrashStep::Append),
        2 => Just(CrashStep::Batch),
        1 => any::<bool>().prop_map(|after_write| CrashStep::CrashInCommit { after_write }),
        1 => Just(CrashStep::Restart),
    ]
}

/// Runs `steps` with crashes injected at the commit's failpoints and by dropping the engine:
/// after each recovery the state equals the model fed exactly the committed batches. Only for
/// test binaries of their own (failpoints are process-global).
pub fn run_crash_steps<R: Reference>(partitions: u32, steps: Vec<CrashStep<R::Command>>) {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = TopologyHarness::<R>::open(dir.path(), partitions, 3);
    for step in steps {
        match step {
            CrashStep::Append(commands) => {
                h.append(&commands);
            }
            CrashStep::Batch => {
                h.run_batch();
                h.assert_matches_model();
            }
            CrashStep::CrashInCommit { after_write } => {
                let failpoint = if after_write {
                    failpoints::COMMIT_AFTER_WRITE
                } else {
                    failpoints::COMMIT_BEFORE_WRITE
                };
                fail::cfg(failpoint, "return").expect("failpoint");
                let result = h.engine().run_batch(R::TOPOLOGY);
                fail::remove(failpoint);
                match result {
                    Ok(None) => {}
                    Err(Error::Poisoned { .. }) => {
                        if after_write {
                            // The batch is durable: the model takes it too.
                            h.model_batch();
                        } else {
                            // Nothing landed: the commands are still pending, in order.
                        }
                        h.reopen(dir.path());
                        h.assert_matches_model();
                    }
                    other => panic!("unexpected result {other:?}"),
                }
            }
            CrashStep::Restart => {
                h.reopen(dir.path());
                h.assert_matches_model();
            }
        }
    }
    h.run_until_idle();
    h.assert_matches_model();
    scenario.teardown();
}

//! Random command streams with crashes injected mid-batch (at the commit's failpoints, and by
//! dropping the engine between steps): after each recovery the state equals the sequential
//! model fed exactly the committed batches, and no command is applied twice.

mod common;

use common::{cases, command, Harness};
use lockstep::{failpoints, Error};
use lockstep_topologies::components::Command;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Step {
    Append(Vec<Command>),
    Batch,
    /// Fail the next commit before its write (nothing lands) or after it (all lands).
    CrashInCommit {
        after_write: bool,
    },
    Restart,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => prop::collection::vec(command(), 1..6).prop_map(Step::Append),
        2 => Just(Step::Batch),
        1 => any::<bool>().prop_map(|after_write| Step::CrashInCommit { after_write }),
        1 => Just(Step::Restart),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(24), ..ProptestConfig::default() })]

    #[test]
    fn recovers_to_the_model_after_every_crash(
        partitions in 1u32..5,
        steps in prop::collection::vec(step(), 1..25),
    ) {
        let scenario = fail::FailScenario::setup();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut h = Harness::open(dir.path(), partitions, 3);
        for step in steps {
            match step {
                Step::Append(commands) => {
                    h.append(&commands);
                }
                Step::Batch => {
                    h.run_batch();
                    h.assert_matches_model();
                }
                Step::CrashInCommit { after_write } => {
                    let failpoint = if after_write {
                        failpoints::COMMIT_AFTER_WRITE
                    } else {
                        failpoints::COMMIT_BEFORE_WRITE
                    };
                    fail::cfg(failpoint, "return").expect("failpoint");
                    let result = h.engine().run_batch(lockstep_topologies::components::TOPOLOGY);
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
                Step::Restart => {
                    h.reopen(dir.path());
                    h.assert_matches_model();
                }
            }
        }
        h.run_until_idle();
        h.assert_matches_model();
        scenario.teardown();
    }
}

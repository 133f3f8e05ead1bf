//! The core correctness test: random command streams over a small id space (so conflicts are
//! frequent), split across partitions and batches, give exactly the sequential model's state
//! and outcomes, and every invariant holds after every batch.

mod common;

use common::{cases, command, Harness};
use lockstep_topologies::components::Command;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Step {
    Append(Vec<Command>),
    Batch,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => prop::collection::vec(command(), 1..8).prop_map(Step::Append),
        1 => Just(Step::Batch),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(64), ..ProptestConfig::default() })]

    #[test]
    fn matches_the_sequential_model(
        partitions in 1u32..6,
        records_max in 1usize..6,
        steps in prop::collection::vec(step(), 1..30),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut harness = Harness::open(dir.path(), partitions, records_max);
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
}

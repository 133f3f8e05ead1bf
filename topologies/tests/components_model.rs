//! The core correctness test: random command streams over a small id space (so conflicts are
//! frequent), split across partitions and batches, give exactly the sequential model's state
//! and outcomes, and every invariant holds after every batch.

mod common;

use common::Harness;
use lockstep_topologies::components::{Command, DeleteMode};
use proptest::prelude::*;

fn id() -> impl Strategy<Value = String> {
    (0u8..10).prop_map(|i| format!("c{i}"))
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        4 => (id(), prop::option::weighted(0.7, id())).prop_map(|(id, parent)| Command::Create {
            id,
            parent,
            attrs: Default::default(),
        }),
        2 => (id(), 0u8..3, prop::option::of(1u64..4)).prop_map(|(id, v, if_version)| Command::Update {
            id,
            attrs: [("k".to_string(), v.to_string())].into(),
            if_version,
        }),
        3 => (id(), prop::option::weighted(0.8, id()), prop::option::weighted(0.2, 1u64..4))
            .prop_map(|(id, parent, if_version)| Command::Reparent { id, parent, if_version }),
        2 => (id(), any::<bool>()).prop_map(|(id, cascade)| Command::Delete {
            id,
            mode: if cascade { DeleteMode::Cascade } else { DeleteMode::Restrict },
        }),
    ]
}

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

/// `PROPTEST_CASES` overrides the default case count (for long runs).
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
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

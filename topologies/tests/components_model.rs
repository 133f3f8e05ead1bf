//! The core correctness test: random command streams over a small id space (so conflicts are
//! frequent), split across partitions and batches, give exactly the sequential model's state
//! and outcomes, and every invariant holds after every batch.

mod common;

use common::scenarios::{run_steps, step};
use common::{cases, command};
use lockstep_topologies::components::Components;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(64), ..ProptestConfig::default() })]

    #[test]
    fn matches_the_sequential_model(
        partitions in 1u32..6,
        records_max in 1usize..6,
        steps in prop::collection::vec(step(command()), 1..30),
    ) {
        run_steps::<Components>(partitions, records_max, steps);
    }
}

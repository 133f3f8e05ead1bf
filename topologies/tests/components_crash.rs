//! Random command streams with crashes injected mid-batch (at the commit's failpoints, and by
//! dropping the engine between steps): after each recovery the state equals the sequential
//! model fed exactly the committed batches, and no command is applied twice.

mod common;

use common::scenarios::{crash_step, run_crash_steps};
use common::{cases, command};
use lockstep_topologies::components::Components;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(24), ..ProptestConfig::default() })]

    #[test]
    fn recovers_to_the_model_after_every_crash(
        partitions in 1u32..5,
        steps in prop::collection::vec(crash_step(command()), 1..25),
    ) {
        run_crash_steps::<Components>(partitions, steps);
    }
}

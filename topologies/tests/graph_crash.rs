//! Random graph command streams, hot edges and nodes included, with crashes injected mid-batch
//! (at the commit's failpoints, and by dropping the engine between steps): after each recovery
//! the state equals the sequential model fed exactly the committed batches, and both records
//! of every edge agree. Alone in its binary: failpoints are process-global.

mod common;

use common::cases;
use common::graph::command;
use common::scenarios::{crash_step, run_crash_steps};
use lockstep_topologies::graph::Graph;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(24), ..ProptestConfig::default() })]

    #[test]
    fn recovers_to_the_model_after_every_crash(
        partitions in 1u32..5,
        steps in prop::collection::vec(crash_step(command()), 1..25),
    ) {
        run_crash_steps::<Graph>(partitions, steps);
    }
}

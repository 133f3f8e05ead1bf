//! The graph against its sequential model: random command streams over a few nodes (two of
//! them hot) and a few hot edges, so that adds, conflicting updates and deletes of the same
//! edge and node collide within and across batches; then the seeded scale-free workload with
//! its celebrities and hot edges. The engine must end every batch in the model's state with
//! the model's outcomes, both records of every edge in agreement.

mod common;

use common::cases;
use common::graph::{command, GraphHarness};
use common::scenarios::{run_steps, step};
use lockstep_topologies::graph::invariants::census;
use lockstep_topologies::graph::workload::{Workload, WorkloadConfig};
use lockstep_topologies::graph::Graph;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(128), ..ProptestConfig::default() })]

    #[test]
    fn matches_the_sequential_model(
        partitions in 1u32..6,
        records_max in 1usize..6,
        steps in prop::collection::vec(step(command()), 1..30),
    ) {
        run_steps::<Graph>(partitions, records_max, steps);
    }
}

#[test]
fn scale_free_contended_workload_matches_the_model_after_every_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = GraphHarness::open(dir.path(), 4, 500);
    let mut workload = Workload::new(17, WorkloadConfig::small());
    let commands = 20_000;
    let mut batches = 0;
    for _ in 0..commands / 1000 {
        let chunk: Vec<_> = (0..1000).map(|_| workload.next_with_outcome().0).collect();
        h.append(&chunk);
        while h.run_batch() {
            batches += 1;
            h.assert_matches_model();
        }
    }
    assert!(batches >= commands / 2000, "{batches} batches");
    assert_eq!(
        &h.model,
        workload.model(),
        "the harness and the workload agree"
    );
    let census = census(&h.view());
    assert_eq!(census.corrupted, 0);
    assert!(census.edges > 100, "{census:?}");
}

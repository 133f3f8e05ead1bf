//! The graph topology with automatic batch driving, so that batches execute while the one
//! before them commits: deletes of nodes (prefix scans of their adjacency, deletes of both
//! records of every edge) and updates of hot edges read a committing batch's writes through the
//! overlay. The state must equal the sequential model's and keep reciprocal consistency.

use std::time::Duration;

use lockstep::{Engine, EngineOptions};
use lockstep_topologies::graph::invariants::check;
use lockstep_topologies::graph::workload::{Workload, WorkloadConfig};
use lockstep_topologies::graph::{graph, read_view, Command, TOPOLOGY};

#[test]
fn pipelined_batches_keep_the_graph_equal_to_the_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let handles = graph(4).expect("graph topology");
    let mut options = EngineOptions::default();
    // Small batches: many of them, each likely to read what the one before it wrote.
    options.batch_records_max = 8;
    let engine = Engine::builder(dir.path())
        .options(options)
        .depot(&handles.commands)
        .topology(handles.topology.clone())
        .open()
        .expect("open");
    let mut workload = Workload::new(11, WorkloadConfig::small());
    let mut last = None;
    for _ in 0..300 {
        let commands: Vec<Command> = (0..20).map(|_| workload.next_with_outcome().0).collect();
        last = engine
            .append_many(&handles.commands, &commands)
            .expect("append")
            .pop();
    }
    engine
        .wait_for(TOPOLOGY, last.expect("appended"), Duration::from_secs(120))
        .expect("processed");
    let stats = engine.stats(TOPOLOGY).expect("stats");
    assert!(
        stats.batches_pipelined > 10,
        "only {} of {} batches executed during a commit",
        stats.batches_pipelined,
        stats.batches
    );
    let snapshot = engine.snapshot().expect("snapshot");
    let view = read_view(&snapshot, &handles).expect("read");
    let violations = check(&view);
    assert!(violations.is_empty(), "{violations:?}");
    assert!(
        view == workload.model().view(),
        "state differs from the model"
    );
}

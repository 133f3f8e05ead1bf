//! Cascade delete of a 10,000-node subtree spread over every partition, in one batch.

mod common;

use common::{create, delete, Harness};
use lockstep_topologies::components::DeleteMode;

#[test]
fn cascade_deletes_ten_thousand_nodes_in_one_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = Harness::open(dir.path(), 8, 100_000);
    // One call: a batch applies commands in append order, so the parent exists for the child.
    h.append(&[create("keep", None), create("top", Some("keep"))]);
    h.run_until_idle();
    // A ternary tree under "top", one level per append.
    let mut level = vec!["top".to_string()];
    let mut nodes = 1usize;
    let mut next = 0usize;
    while nodes < 10_000 {
        let mut commands = Vec::new();
        let mut children = Vec::new();
        for parent in &level {
            for _ in 0..3 {
                if nodes == 10_000 {
                    break;
                }
                let id = format!("t{next}");
                next += 1;
                nodes += 1;
                commands.push(create(&id, Some(parent)));
                children.push(id);
            }
        }
        for chunk in commands.chunks(2_000) {
            h.append(chunk);
        }
        h.run_until_idle();
        level = children;
    }
    let view = h.view();
    assert_eq!(view.components.len(), 10_001);
    let partitions: std::collections::BTreeSet<u32> = view
        .components
        .keys()
        .map(|id| h.handles.components.partition_of(id).expect("routes"))
        .collect();
    assert_eq!(partitions.len(), 8, "the subtree spans every partition");

    h.append(&[delete("top", DeleteMode::Cascade)]);
    let summary = h
        .engine()
        .run_batch(lockstep_topologies::components::TOPOLOGY)
        .expect("batch")
        .expect("ran");
    assert!(h.model_batch());
    assert_eq!(
        summary.records, 1,
        "the whole cascade is one command in one batch"
    );
    h.assert_matches_model();
    let view = h.view();
    assert_eq!(view.components.keys().collect::<Vec<_>>(), vec!["keep"]);
    assert!(view.links.is_empty());
}

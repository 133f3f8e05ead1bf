//! A parent with 1,000,000 children: adding or removing one child writes a constant number of
//! entries (the child, one set element, the outcome), never the whole set.

mod common;

use common::{create, delete, Harness};
use lockstep_topologies::components::{DeleteMode, TOPOLOGY};

const CHILDREN: usize = 1_000_000;

#[test]
fn one_child_more_or_less_is_constant_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = Harness::open(dir.path(), 4, 50_000);
    h.append(&[create("parent", None)]);
    h.run_until_idle();
    for start in (0..CHILDREN).step_by(10_000) {
        let commands: Vec<_> = (start..start + 10_000)
            .map(|i| create(&format!("kid{i:07}"), Some("parent")))
            .collect();
        h.engine()
            .append_many(&h.handles.commands, &commands)
            .expect("append");
        // The model is not needed for the bulk load; only the engine runs it.
        while h.engine().run_batch(TOPOLOGY).expect("batch").is_some() {}
    }
    let snapshot = h.engine().snapshot().expect("snapshot");
    let some = snapshot
        .set_members(&h.handles.children, &"parent".to_string(), None, 3)
        .expect("members");
    assert_eq!(some, vec!["kid0000000", "kid0000001", "kid0000002"]);
    drop(snapshot);

    h.engine()
        .append(&h.handles.commands, &create("one-more", Some("parent")))
        .expect("append");
    let added = h.engine().run_batch(TOPOLOGY).expect("batch").expect("ran");
    // The new component, its element in the parent's set, and the outcome.
    assert_eq!(
        added.writes, 3,
        "adding a child wrote {} entries",
        added.writes
    );

    h.engine()
        .append(
            &h.handles.commands,
            &delete("kid0000500", DeleteMode::Restrict),
        )
        .expect("append");
    let removed = h.engine().run_batch(TOPOLOGY).expect("batch").expect("ran");
    // The component, its element in the parent's set, and the outcome.
    assert_eq!(
        removed.writes, 3,
        "removing a child wrote {} entries",
        removed.writes
    );

    let snapshot = h.engine().snapshot().expect("snapshot");
    assert!(snapshot
        .set_contains(
            &h.handles.children,
            &"parent".to_string(),
            &"one-more".to_string()
        )
        .expect("read"));
    assert!(!snapshot
        .set_contains(
            &h.handles.children,
            &"parent".to_string(),
            &"kid0000500".to_string()
        )
        .expect("read"));
}

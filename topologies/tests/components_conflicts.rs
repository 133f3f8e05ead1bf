//! The races that corrupt uncoordinated stores, each within one batch, across partitions: the
//! result must equal the sequential model and keep every invariant. Each scenario appends its
//! racing commands together so they land in the same batch.

mod common;

use common::{create, delete, reparent, update, Harness};
use lockstep_topologies::components::{DeleteMode, Outcome, RejectReason};

const PARTITIONS: u32 = 4;

fn harness(dir: &std::path::Path) -> Harness {
    Harness::open(dir, PARTITIONS, 10_000)
}

/// Ids that land on distinct partitions, so every scenario below really crosses partitions.
fn spread_ids(harness: &Harness, n: usize) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    let mut used = Vec::new();
    for i in 0.. {
        let id = format!("n{i}");
        let p = harness
            .handles
            .commands
            .partition_of(&create(&id, None))
            .expect("routes");
        if !used.contains(&p) || used.len() >= PARTITIONS as usize {
            used.push(p);
            ids.push(id);
            if ids.len() == n {
                break;
            }
        }
    }
    ids
}

#[test]
fn create_child_while_its_parent_is_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = harness(dir.path());
    let ids = spread_ids(&h, 2);
    let (parent, child) = (&ids[0], &ids[1]);
    h.append(&[create(parent, None)]);
    h.run_until_idle();
    h.append(&[
        delete(parent, DeleteMode::Cascade),
        create(child, Some(parent)),
    ]);
    h.run_until_idle();
    h.assert_matches_model();
    // Whichever order the batch put them in, there is no orphan.
    assert!(h
        .view()
        .components
        .get(child.as_str())
        .is_none_or(|c| c.parent.is_none()));
}

#[test]
fn two_reparents_that_together_would_form_a_cycle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = harness(dir.path());
    let ids = spread_ids(&h, 3);
    let (root, a, b) = (&ids[0], &ids[1], &ids[2]);
    h.append(&[create(root, None)]);
    h.run_until_idle();
    h.append(&[create(a, Some(root)), create(b, Some(root))]);
    h.run_until_idle();
    // a under b and b under a: each alone is fine, together a cycle.
    h.append(&[reparent(a, Some(b)), reparent(b, Some(a))]);
    h.run_until_idle();
    h.assert_matches_model();
    let rejected = [h.outcome_from_end(0), h.outcome_from_end(1)]
        .iter()
        .filter(|o| **o == Outcome::Rejected(RejectReason::WouldCreateCycle))
        .count();
    assert_eq!(rejected, 1, "exactly one of the two reparents must lose");
}

#[test]
fn update_racing_delete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = harness(dir.path());
    let ids = spread_ids(&h, 2);
    h.append(&[create(&ids[0], None), create(&ids[1], Some(&ids[0]))]);
    h.run_until_idle();
    h.append(&[
        update(&ids[1], "k", "v", Some(1)),
        delete(&ids[0], DeleteMode::Cascade),
        update(&ids[1], "k", "w", None),
    ]);
    h.run_until_idle();
    h.assert_matches_model();
}

#[test]
fn cascade_delete_of_a_deep_tree_while_children_are_added_under_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = harness(dir.path());
    // A chain root <- n1 <- n2 ... built one level per batch.
    h.append(&[create("root", None)]);
    h.run_until_idle();
    let mut parent = "root".to_string();
    for level in 1..=40 {
        let id = format!("chain{level}");
        h.append(&[create(&id, Some(&parent))]);
        h.run_until_idle();
        parent = id;
    }
    // In one batch: add children at several depths and cascade-delete from the root.
    let mut racing = Vec::new();
    for level in (1..=40).step_by(7) {
        racing.push(create(
            &format!("late{level}"),
            Some(&format!("chain{level}")),
        ));
    }
    racing.push(delete("root", DeleteMode::Cascade));
    racing.push(create("after", Some("chain40")));
    h.append(&racing);
    h.run_until_idle();
    h.assert_matches_model();
    assert!(
        h.view()
            .components
            .keys()
            .all(|id| !id.starts_with("chain")),
        "the whole chain is gone"
    );
}

#[test]
fn reparent_versions_and_restrict() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = harness(dir.path());
    let ids = spread_ids(&h, 4);
    h.append(&[create(&ids[0], None), create(&ids[1], None)]);
    h.run_until_idle();
    h.append(&[
        create(&ids[2], Some(&ids[0])),
        delete(&ids[0], DeleteMode::Restrict),
        reparent(&ids[2], Some(&ids[1])),
        delete(&ids[0], DeleteMode::Restrict),
        reparent(&ids[2], None),
        reparent(&ids[2], Some(&ids[2])),
        reparent(&ids[3], Some(&ids[1])),
        create(&ids[3], Some("missing")),
    ]);
    h.run_until_idle();
    h.assert_matches_model();
    let view = h.view();
    let moved = &view.components[&ids[2]];
    assert_eq!(moved.parent, None);
    assert_eq!(moved.version, 3, "created, then reparented twice");
}

#[test]
fn parent_and_child_appended_together_apply_in_append_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = harness(dir.path());
    // Find a child whose partition sorts before its parent's: partition order would get it wrong.
    let parent = "p".to_string();
    let parent_partition = h
        .handles
        .commands
        .partition_of(&create(&parent, None))
        .expect("routes");
    let child = (0..)
        .map(|i| format!("c{i}"))
        .find(|id| {
            h.handles
                .commands
                .partition_of(&create(id, None))
                .expect("routes")
                != parent_partition
        })
        .expect("some id lands elsewhere");
    h.append(&[create(&parent, None), create(&child, Some(&parent))]);
    assert!(h.run_batch(), "one batch");
    assert!(!h.run_batch(), "and only one");
    h.assert_matches_model();
    assert_eq!(h.outcome_from_end(0), Outcome::Applied);
    assert_eq!(h.outcome_from_end(1), Outcome::Applied);
}

#[test]
fn attributes_that_outgrow_the_limit_are_rejected_not_fatal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = harness(dir.path());
    h.append(&[create("big", None)]);
    h.run_until_idle();
    // Each update adds ~300 KB; the fourth would pass the 1 MiB component limit.
    let updates: Vec<_> = (0..5)
        .map(|i| update("big", &format!("k{i}"), &"x".repeat(300_000), None))
        .collect();
    for update in &updates {
        h.append(std::slice::from_ref(update));
    }
    h.run_until_idle();
    h.assert_matches_model();
    assert_eq!(
        h.outcome_from_end(1),
        Outcome::Rejected(RejectReason::TooLarge),
        "the fourth update is refused"
    );
    assert!(h
        .engine()
        .topology_failure(lockstep_topologies::components::TOPOLOGY)
        .expect("known")
        .is_none());
}

#[test]
fn cascade_of_a_wide_parent_pages_through_its_children() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = harness(dir.path());
    h.append(&[create("wide", None)]);
    let kids: Vec<_> = (0..3_000)
        .map(|i| create(&format!("kid{i}"), Some("wide")))
        .collect();
    h.append(&kids);
    h.run_until_idle();
    h.append(&[delete("wide", DeleteMode::Cascade)]);
    h.run_until_idle();
    h.assert_matches_model();
    assert!(h.view().components.is_empty());
}

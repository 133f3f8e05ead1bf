//! The races that corrupt edge-distributed stores, within one batch and across batches, with
//! the edge's two records on different partitions: both records must end equal, equal to the
//! sequential model, and no edge may point at a missing node.

mod common;

use common::graph::{
    add_edge, add_node, delete_edge, delete_node, props, set_edge_props, spread_nodes, GraphHarness,
};
use lockstep_topologies::graph::{
    read_edges, read_node, Direction, EdgeKey, EdgeState, Outcome, RejectReason, TOPOLOGY,
};

const PARTITIONS: u32 = 4;

/// `rosa` and `karl` on different partitions, with `(rosa)-[:FOLLOWS]->(karl)`.
fn rosa_follows_karl(dir: &std::path::Path) -> (GraphHarness, String, String) {
    let mut h = GraphHarness::open(dir, PARTITIONS, 10_000);
    let ids = spread_nodes(&h.handles, 2);
    let (rosa, karl) = (ids[0].clone(), ids[1].clone());
    assert_ne!(
        h.handles.nodes.partition_of(&rosa).expect("routes"),
        h.handles.nodes.partition_of(&karl).expect("routes")
    );
    h.append(&[add_node(&rosa), add_node(&karl)]);
    h.append(&[add_edge(&rosa, "FOLLOWS", &karl)]);
    h.run_until_idle();
    h.assert_matches_model();
    (h, rosa, karl)
}

/// Both records of the edge as their own partitions store them, from one snapshot.
fn records(h: &GraphHarness, key: &EdgeKey) -> (Option<EdgeState>, Option<EdgeState>) {
    let snapshot = h.engine().snapshot().expect("snapshot");
    let find = |direction: Direction| {
        read_edges(
            &snapshot,
            &h.handles,
            key.holder(direction),
            direction,
            Some(&key.label),
            None,
            usize::MAX,
        )
        .expect("read")
        .into_iter()
        .find(|edge| edge.key == *key)
        .map(|edge| edge.state)
    };
    (find(Direction::Out), find(Direction::In))
}

fn since(state: &Option<EdgeState>) -> Option<&str> {
    state
        .as_ref()
        .and_then(|s| s.props.get("since"))
        .map(String::as_str)
}

#[test]
fn two_conflicting_sets_in_one_batch_leave_both_records_equal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut h, rosa, karl) = rosa_follows_karl(dir.path());
    h.append(&[
        set_edge_props(&rosa, "FOLLOWS", &karl, &[("since", "2010")], None),
        set_edge_props(&rosa, "FOLLOWS", &karl, &[("since", "2015")], None),
    ]);
    assert!(h.run_batch(), "one batch");
    assert!(!h.run_batch(), "and only one");
    h.assert_matches_model();
    let (out_record, in_record) = records(&h, &EdgeKey::new(&rosa, "FOLLOWS", &karl));
    assert_eq!(out_record, in_record);
    assert_eq!(since(&out_record), Some("2015"), "the later append wins");
    assert_eq!(out_record.map(|s| s.version), Some(3));
}

#[test]
fn two_conflicting_sets_in_consecutive_batches_leave_both_records_equal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut h, rosa, karl) = rosa_follows_karl(dir.path());
    let key = EdgeKey::new(&rosa, "FOLLOWS", &karl);
    for year in ["2010", "2015", "2012"] {
        h.append(&[set_edge_props(
            &rosa,
            "FOLLOWS",
            &karl,
            &[("since", year)],
            None,
        )]);
        h.run_until_idle();
        h.assert_matches_model();
        let (out_record, in_record) = records(&h, &key);
        assert_eq!(out_record, in_record);
        assert_eq!(since(&out_record), Some(year));
    }
}

#[test]
fn compare_and_set_racers_in_one_batch_get_one_winner() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut h, rosa, karl) = rosa_follows_karl(dir.path());
    h.append(&[
        set_edge_props(&rosa, "FOLLOWS", &karl, &[("since", "2010")], Some(1)),
        set_edge_props(&rosa, "FOLLOWS", &karl, &[("since", "2015")], Some(1)),
    ]);
    h.run_until_idle();
    h.assert_matches_model();
    assert_eq!(h.outcome_from_end(1), Outcome::Applied);
    assert_eq!(
        h.outcome_from_end(0),
        Outcome::Rejected(RejectReason::VersionConflict)
    );
    let (out_record, in_record) = records(&h, &EdgeKey::new(&rosa, "FOLLOWS", &karl));
    assert_eq!(out_record, in_record);
    assert_eq!(since(&in_record), Some("2010"));
}

#[test]
fn update_racing_delete_of_the_edge_leaves_no_half_edge() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut h, rosa, karl) = rosa_follows_karl(dir.path());
    let key = EdgeKey::new(&rosa, "FOLLOWS", &karl);
    h.append(&[
        set_edge_props(&rosa, "FOLLOWS", &karl, &[("since", "2010")], None),
        delete_edge(&rosa, "FOLLOWS", &karl),
        set_edge_props(&rosa, "FOLLOWS", &karl, &[("since", "2015")], None),
    ]);
    h.run_until_idle();
    h.assert_matches_model();
    assert_eq!(
        h.outcome_from_end(0),
        Outcome::Rejected(RejectReason::NotFound)
    );
    assert_eq!(records(&h, &key), (None, None));

    // And the other way round, re-created in between: the edge is back, whole, at version 2.
    h.append(&[
        delete_edge(&rosa, "FOLLOWS", &karl),
        add_edge(&rosa, "FOLLOWS", &karl),
        set_edge_props(&rosa, "FOLLOWS", &karl, &[("since", "2020")], None),
    ]);
    h.run_until_idle();
    h.assert_matches_model();
    let (out_record, in_record) = records(&h, &key);
    assert_eq!(out_record, in_record);
    assert_eq!(out_record.map(|s| s.version), Some(2));
}

#[test]
fn update_racing_delete_of_the_head_node_across_partitions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut h, rosa, karl) = rosa_follows_karl(dir.path());
    // The updates enter on rosa's partition, the delete on karl's, all in one batch.
    h.append(&[
        set_edge_props(&rosa, "FOLLOWS", &karl, &[("since", "2010")], None),
        delete_node(&karl),
        set_edge_props(&rosa, "FOLLOWS", &karl, &[("since", "2015")], None),
        add_edge(&rosa, "FOLLOWS", &karl),
    ]);
    assert!(h.run_batch());
    assert!(!h.run_batch());
    h.assert_matches_model();
    assert_eq!(
        h.outcomes
            .iter()
            .rev()
            .take(3)
            .map(|(_, o)| *o)
            .collect::<Vec<_>>(),
        vec![
            Outcome::Rejected(RejectReason::NodeMissing),
            Outcome::Rejected(RejectReason::NotFound),
            Outcome::Applied,
        ]
    );
    assert_eq!(
        records(&h, &EdgeKey::new(&rosa, "FOLLOWS", &karl)),
        (None, None)
    );
    let snapshot = h.engine().snapshot().expect("snapshot");
    let rosa_now = read_node(&snapshot, &h.handles, &rosa, 10)
        .expect("read")
        .expect("rosa is still there");
    assert!(rosa_now.out_edges.is_empty(), "no edge to a missing node");
}

#[test]
fn edge_added_while_its_tail_is_deleted_in_the_same_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut h, rosa, karl) = rosa_follows_karl(dir.path());
    // Deleted first: the add finds no tail. Re-created, then the add applies.
    h.append(&[
        delete_node(&rosa),
        add_edge(&rosa, "KNOWS", &karl),
        add_node(&rosa),
        add_edge(&karl, "KNOWS", &rosa),
        add_edge(&rosa, "KNOWS", &karl),
    ]);
    h.run_until_idle();
    h.assert_matches_model();
    let snapshot = h.engine().snapshot().expect("snapshot");
    let karl_now = read_node(&snapshot, &h.handles, &karl, 10)
        .expect("read")
        .expect("karl");
    let labels = |edges: &[lockstep_topologies::graph::Edge]| {
        edges
            .iter()
            .map(|e| (e.key.from.clone(), e.key.label.clone(), e.key.to.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        labels(&karl_now.out_edges),
        vec![(karl.clone(), "KNOWS".to_string(), rosa.clone())]
    );
    assert_eq!(
        labels(&karl_now.in_edges),
        vec![(rosa.clone(), "KNOWS".to_string(), karl.clone())],
        "the FOLLOWS edge went with rosa; the late KNOWS edge is whole"
    );
}

#[test]
fn deleting_a_node_removes_self_loops_and_edges_both_ways_on_every_partition() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = GraphHarness::open(dir.path(), PARTITIONS, 10_000);
    let ids = spread_nodes(&h.handles, 4);
    h.append(&ids.iter().map(|id| add_node(id)).collect::<Vec<_>>());
    let hub = &ids[0];
    let mut edges = vec![add_edge(hub, "LIKES", hub)];
    for other in &ids[1..] {
        edges.push(add_edge(hub, "FOLLOWS", other));
        edges.push(add_edge(other, "FOLLOWS", hub));
        edges.push(add_edge(other, "KNOWS", hub));
    }
    // One edge that does not touch the hub stays.
    edges.push(add_edge(&ids[1], "FOLLOWS", &ids[2]));
    h.append(&edges);
    h.run_until_idle();
    h.assert_matches_model();
    h.append(&[delete_node(hub)]);
    h.run_until_idle();
    h.assert_matches_model();
    let view = h.view();
    let left = vec![EdgeKey::new(&ids[1], "FOLLOWS", &ids[2])];
    assert_eq!(view.out_records.keys().cloned().collect::<Vec<_>>(), left);
    assert_eq!(view.in_records.keys().cloned().collect::<Vec<_>>(), left);
}

#[test]
fn a_node_and_its_edges_by_label_page_by_page() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = GraphHarness::open(dir.path(), PARTITIONS, 10_000);
    let mut commands = vec![add_node("star")];
    for i in 0..25 {
        let fan = format!("fan{i:02}");
        commands.push(add_node(&fan));
        commands.push(add_edge(&fan, "FOLLOWS", "star"));
        if i % 5 == 0 {
            commands.push(add_edge(&fan, "LIKES", "star"));
            commands.push(add_edge("star", "KNOWS", &fan));
        }
    }
    h.append(&commands);
    h.run_until_idle();
    h.assert_matches_model();

    let snapshot = h.engine().snapshot().expect("snapshot");
    let star = "star".to_string();
    let node = read_node(&snapshot, &h.handles, &star, 100)
        .expect("read")
        .expect("exists");
    assert_eq!(node.in_edges.len(), 30);
    assert_eq!(node.out_edges.len(), 5);
    assert_eq!(node.batch, snapshot.batch_id(TOPOLOGY).expect("batch"));
    // Labels come in order, and a label's edges are contiguous.
    assert_eq!(node.in_edges[0].key.label, "FOLLOWS");
    assert_eq!(node.in_edges[29].key.label, "LIKES");

    let mut followers = Vec::new();
    let mut after = None;
    loop {
        let page = read_edges(
            &snapshot,
            &h.handles,
            &star,
            Direction::In,
            Some("FOLLOWS"),
            after.as_ref(),
            7,
        )
        .expect("read");
        if page.is_empty() {
            break;
        }
        after = page.last().cloned();
        followers.extend(page.into_iter().map(|edge| edge.key.from));
    }
    let expected: Vec<String> = (0..25).map(|i| format!("fan{i:02}")).collect();
    assert_eq!(followers, expected);
    let likes = read_edges(
        &snapshot,
        &h.handles,
        &star,
        Direction::In,
        Some("LIKES"),
        None,
        100,
    )
    .expect("read");
    assert_eq!(likes.len(), 5);
    let none = read_edges(
        &snapshot,
        &h.handles,
        &star,
        Direction::In,
        Some("BLOCKS"),
        None,
        100,
    )
    .expect("read");
    assert!(none.is_empty());
}

#[test]
fn properties_that_outgrow_the_limit_are_rejected_not_fatal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut h, rosa, karl) = rosa_follows_karl(dir.path());
    // Each set adds ~6 KB; the third would pass the 16 KiB edge limit.
    let sets: Vec<_> = (0..4)
        .map(|i| {
            set_edge_props(
                &rosa,
                "FOLLOWS",
                &karl,
                &[(&format!("k{i}"), &"x".repeat(6_000))],
                None,
            )
        })
        .collect();
    h.append(&sets);
    h.append(&[lockstep_topologies::graph::Command::AddEdge {
        from: karl.clone(),
        to: rosa.clone(),
        label: "FOLLOWS".into(),
        props: props(&[("big", &"y".repeat(20_000))]),
    }]);
    h.run_until_idle();
    h.assert_matches_model();
    let rejected = h
        .outcomes
        .iter()
        .filter(|(_, o)| *o == Outcome::Rejected(RejectReason::TooLarge))
        .count();
    assert_eq!(rejected, 3, "the third and fourth set, and the big add");
    assert!(h
        .engine()
        .topology_failure(TOPOLOGY)
        .expect("known")
        .is_none());
}

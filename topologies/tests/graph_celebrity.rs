//! A celebrity: a node with 100,000 followers (`GRAPH_CELEBRITY_DEGREE` sets another count).
//! Adding or changing one of its edges writes a constant number of entries, and deleting it
//! removes every edge, both records of each, in one command of one batch, a page per round.

mod common;

use common::graph::{add_edge, add_node, delete_node, set_edge_props, GraphHarness};
use lockstep_topologies::graph::{read_node, EdgeKey, TOPOLOGY, UNLINK_PAGE};

fn degree() -> usize {
    std::env::var("GRAPH_CELEBRITY_DEGREE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

#[test]
fn a_celebrity_is_cheap_to_follow_and_deleted_in_one_batch() {
    let followers = degree();
    let followed = followers / 100;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = GraphHarness::open(dir.path(), 4, 50_000);
    let star = "star".to_string();
    h.append(&[add_node(&star), add_edge(&star, "LIKES", &star)]);
    for start in (0..followers).step_by(10_000) {
        let fans: Vec<String> = (start..(start + 10_000).min(followers))
            .map(|i| format!("fan{i:07}"))
            .collect();
        let mut commands: Vec<_> = fans.iter().map(|fan| add_node(fan)).collect();
        commands.extend(fans.iter().map(|fan| add_edge(fan, "FOLLOWS", &star)));
        h.append(&commands);
        h.run_until_idle();
    }
    let followed_back: Vec<_> = (0..followed)
        .map(|i| add_edge(&star, "FOLLOWS", &format!("fan{i:07}")))
        .collect();
    h.append(&followed_back);
    h.run_until_idle();
    h.assert_matches_model();

    let snapshot = h.engine().snapshot().expect("snapshot");
    let node = read_node(&snapshot, &h.handles, &star, 3)
        .expect("read")
        .expect("exists");
    assert_eq!(node.in_edges.len(), 3, "a page, not the whole adjacency");
    drop(snapshot);

    h.append(&[add_node("newcomer"), add_edge("newcomer", "FOLLOWS", &star)]);
    h.run_until_idle();
    h.append(&[add_edge("newcomer", "LIKES", &star)]);
    let added = h.engine().run_batch(TOPOLOGY).expect("batch").expect("ran");
    assert!(h.model_batch());
    // The in-record at the star, the out-record at the newcomer, the outcome.
    assert_eq!(
        added.writes, 3,
        "adding an edge wrote {} entries",
        added.writes
    );

    h.append(&[set_edge_props(
        "newcomer",
        "FOLLOWS",
        &star,
        &[("since", "2010")],
        None,
    )]);
    let updated = h.engine().run_batch(TOPOLOGY).expect("batch").expect("ran");
    assert!(h.model_batch());
    // Each record rewritten in place, and the outcome.
    assert_eq!(
        updated.writes, 3,
        "an update wrote {} entries",
        updated.writes
    );
    h.assert_matches_model();

    h.append(&[delete_node(&star)]);
    let deleted = h.engine().run_batch(TOPOLOGY).expect("batch").expect("ran");
    assert!(h.model_batch());
    let edges = followers + followed + 3;
    assert_eq!(deleted.records, 1, "one command");
    assert!(
        deleted.rounds as usize > edges / UNLINK_PAGE,
        "{} rounds for {edges} edges: paged",
        deleted.rounds
    );
    // One message per edge record elsewhere (the self-loop needs none), one per next page.
    assert!(deleted.messages as usize >= edges - 1);
    assert!(deleted.messages as usize <= edges + edges / UNLINK_PAGE + 1);
    h.assert_matches_model();
    let view = h.view();
    assert!(view.out_records.is_empty() && view.in_records.is_empty());
    assert_eq!(
        view.nodes.len(),
        followers + 1,
        "the fans and the newcomer stay"
    );
    assert!(!h
        .model
        .edges
        .contains_key(&EdgeKey::new(&star, "LIKES", &star)));
}

//! Reciprocal consistency, checked over one view of every node and every edge record.
//!
//! The view holds both records of every edge separately, as the partitions store them, so the
//! same checker serves the engine (read from one snapshot), the sequential model, and models of
//! stores that keep the two records apart without coordination.

use std::collections::{BTreeMap, BTreeSet};

use super::{Direction, Edge, EdgeKey, EdgeState, Node, NodeId};

/// Every node and both records of every edge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GraphView {
    /// id → node.
    pub nodes: BTreeMap<NodeId, Node>,
    /// The out-records (stored with the tail), by edge.
    pub out_records: BTreeMap<EdgeKey, EdgeState>,
    /// The in-records (stored with the head), by edge.
    pub in_records: BTreeMap<EdgeKey, EdgeState>,
    /// Records beyond the first of the same edge on the same side (a store could hold two
    /// entries for one record, under different keys; the maps above cannot).
    pub duplicate_records: Vec<(Direction, Edge)>,
}

impl GraphView {
    /// The records of `direction`.
    pub fn records(&self, direction: Direction) -> &BTreeMap<EdgeKey, EdgeState> {
        match direction {
            Direction::Out => &self.out_records,
            Direction::In => &self.in_records,
        }
    }

    /// The records of `direction`, to change.
    pub fn records_mut(&mut self, direction: Direction) -> &mut BTreeMap<EdgeKey, EdgeState> {
        match direction {
            Direction::Out => &mut self.out_records,
            Direction::In => &mut self.in_records,
        }
    }
}

/// One broken invariant, always about one edge.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Violation {
    /// Only one of the edge's records exists: a half-edge.
    HalfEdge {
        /// The edge.
        edge: EdgeKey,
        /// The record that exists.
        present: Direction,
    },
    /// Both records exist but carry different states.
    Diverged {
        /// The edge.
        edge: EdgeKey,
        /// What the tail stores.
        out_state: EdgeState,
        /// What the head stores.
        in_state: EdgeState,
    },
    /// A record of the edge names a node that does not exist.
    EndpointMissing {
        /// The edge.
        edge: EdgeKey,
        /// The missing endpoint.
        node: NodeId,
    },
    /// A side stores more than one record of the edge.
    DuplicateRecord {
        /// The edge.
        edge: EdgeKey,
        /// The side.
        record: Direction,
        /// The extra record's state.
        state: EdgeState,
    },
    /// A record with a version below 1.
    ZeroVersion {
        /// The edge.
        edge: EdgeKey,
        /// The record.
        record: Direction,
    },
}

impl Violation {
    /// The edge the violation is about.
    pub fn edge(&self) -> &EdgeKey {
        match self {
            Violation::HalfEdge { edge, .. }
            | Violation::Diverged { edge, .. }
            | Violation::EndpointMissing { edge, .. }
            | Violation::DuplicateRecord { edge, .. }
            | Violation::ZeroVersion { edge, .. } => edge,
        }
    }
}

/// Checks reciprocal consistency and returns every violation (empty when it holds), edge by
/// edge in key order.
pub fn check(view: &GraphView) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut duplicates: BTreeMap<&EdgeKey, Vec<(Direction, &EdgeState)>> = BTreeMap::new();
    for (record, edge) in &view.duplicate_records {
        duplicates
            .entry(&edge.key)
            .or_default()
            .push((*record, &edge.state));
    }
    let keys: BTreeSet<&EdgeKey> = view
        .out_records
        .keys()
        .chain(view.in_records.keys())
        .chain(duplicates.keys().copied())
        .collect();
    for edge in keys {
        let out_state = view.out_records.get(edge);
        let in_state = view.in_records.get(edge);
        match (out_state, in_state) {
            (Some(out_state), Some(in_state)) if out_state != in_state => {
                violations.push(Violation::Diverged {
                    edge: edge.clone(),
                    out_state: out_state.clone(),
                    in_state: in_state.clone(),
                });
            }
            (Some(_), None) => violations.push(Violation::HalfEdge {
                edge: edge.clone(),
                present: Direction::Out,
            }),
            (None, Some(_)) => violations.push(Violation::HalfEdge {
                edge: edge.clone(),
                present: Direction::In,
            }),
            _ => {}
        }
        let endpoints: BTreeSet<&NodeId> = [&edge.from, &edge.to].into();
        for node in endpoints {
            if !view.nodes.contains_key(node) {
                violations.push(Violation::EndpointMissing {
                    edge: edge.clone(),
                    node: node.clone(),
                });
            }
        }
        for (record, state) in duplicates.get(edge).into_iter().flatten() {
            violations.push(Violation::DuplicateRecord {
                edge: edge.clone(),
                record: *record,
                state: (*state).clone(),
            });
        }
        for (record, state) in [(Direction::Out, out_state), (Direction::In, in_state)] {
            if state.is_some_and(|s| s.version < 1) {
                violations.push(Violation::ZeroVersion {
                    edge: edge.clone(),
                    record,
                });
            }
        }
    }
    violations
}

/// How much of a view is corrupt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    /// Nodes.
    pub nodes: usize,
    /// Distinct edges with at least one record.
    pub edges: usize,
    /// Of those, edges with at least one violation.
    pub corrupted: usize,
}

impl Census {
    /// Corrupted edges over all edges (0 for an empty graph).
    pub fn corrupted_fraction(&self) -> f64 {
        if self.edges == 0 {
            0.0
        } else {
            self.corrupted as f64 / self.edges as f64
        }
    }
}

/// Counts the edges of `view` and the corrupted ones among them.
pub fn census(view: &GraphView) -> Census {
    let edges = view
        .out_records
        .keys()
        .chain(view.in_records.keys())
        .chain(view.duplicate_records.iter().map(|(_, edge)| &edge.key))
        .collect::<BTreeSet<_>>()
        .len();
    let corrupted = check(view)
        .iter()
        .map(Violation::edge)
        .collect::<BTreeSet<_>>()
        .len();
    Census {
        nodes: view.nodes.len(),
        edges,
        corrupted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Props;

    fn state(version: u64, since: &str) -> EdgeState {
        EdgeState {
            version,
            props: [("since".to_string(), since.to_string())].into(),
        }
    }

    fn nodes(ids: &[&str]) -> BTreeMap<NodeId, Node> {
        ids.iter()
            .map(|id| {
                (
                    id.to_string(),
                    Node {
                        props: Props::new(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn reciprocal_records_have_no_violations() {
        let edge = EdgeKey::new("rosa", "FOLLOWS", "karl");
        let view = GraphView {
            nodes: nodes(&["rosa", "karl"]),
            out_records: [(edge.clone(), state(2, "2015"))].into(),
            in_records: [(edge, state(2, "2015"))].into(),
            duplicate_records: Vec::new(),
        };
        assert!(check(&view).is_empty());
        assert_eq!(
            census(&view),
            Census {
                nodes: 2,
                edges: 1,
                corrupted: 0
            }
        );
    }

    #[test]
    fn reports_every_violation_not_just_the_first() {
        let diverged = EdgeKey::new("rosa", "FOLLOWS", "karl");
        let half_out = EdgeKey::new("karl", "FOLLOWS", "rosa");
        let half_in = EdgeKey::new("rosa", "KNOWS", "karl");
        let dangling = EdgeKey::new("rosa", "FOLLOWS", "ghost");
        let zero = EdgeKey::new("karl", "KNOWS", "karl");
        let view = GraphView {
            nodes: nodes(&["rosa", "karl"]),
            out_records: [
                (diverged.clone(), state(2, "2010")),
                (half_out.clone(), state(1, "x")),
                (dangling.clone(), state(1, "x")),
                (zero.clone(), state(0, "x")),
            ]
            .into(),
            in_records: [
                (diverged.clone(), state(2, "2015")),
                (half_in.clone(), state(1, "x")),
                (dangling.clone(), state(1, "x")),
                (zero.clone(), state(0, "x")),
            ]
            .into(),
            duplicate_records: vec![(
                Direction::In,
                Edge {
                    key: diverged.clone(),
                    state: state(3, "y"),
                },
            )],
        };
        let expected = vec![
            Violation::HalfEdge {
                edge: half_out,
                present: Direction::Out,
            },
            Violation::ZeroVersion {
                edge: zero.clone(),
                record: Direction::Out,
            },
            Violation::ZeroVersion {
                edge: zero,
                record: Direction::In,
            },
            Violation::EndpointMissing {
                edge: dangling,
                node: "ghost".into(),
            },
            Violation::Diverged {
                edge: diverged.clone(),
                out_state: state(2, "2010"),
                in_state: state(2, "2015"),
            },
            Violation::DuplicateRecord {
                edge: diverged,
                record: Direction::In,
                state: state(3, "y"),
            },
            Violation::HalfEdge {
                edge: half_in,
                present: Direction::In,
            },
        ];
        assert_eq!(check(&view), expected);
        let census = census(&view);
        assert_eq!((census.edges, census.corrupted), (5, 5));
        assert!((census.corrupted_fraction() - 1.0).abs() < 1e-12);
    }
}

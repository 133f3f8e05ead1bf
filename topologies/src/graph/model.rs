//! The sequential reference model: the graph commands applied one at a time, in memory, each
//! edge held once. The topology must match it exactly when fed the same commands in append
//! order.

use std::collections::{BTreeMap, BTreeSet};

use super::invariants::GraphView;
use super::{edge_fits, node_fits, Command, EdgeKey, EdgeState, Node, NodeId, Outcome};
use super::{Props, RejectReason};

/// Nodes and edges, as plain maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    /// id → node.
    pub nodes: BTreeMap<NodeId, Node>,
    /// Every edge, once.
    pub edges: BTreeMap<EdgeKey, EdgeState>,
    /// `(head, edge)` for every edge: a node's in-edges without a scan of all edges.
    incoming: BTreeSet<(NodeId, EdgeKey)>,
}

impl Model {
    /// An empty model.
    pub fn new() -> Self {
        Self::default()
    }

    /// The edges whose tail is `id`, in key order.
    pub fn out_edges<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a EdgeKey> + 'a {
        let start = EdgeKey::new(id, "", "");
        self.edges
            .range(start..)
            .map(|(key, _)| key)
            .take_while(move |key| key.from == id)
    }

    /// The edges whose head is `id`, in key order.
    pub fn in_edges<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a EdgeKey> + 'a {
        let start = (id.to_string(), EdgeKey::new("", "", ""));
        self.incoming
            .range(start..)
            .take_while(move |(head, _)| head == id)
            .map(|(_, key)| key)
    }

    fn remove_edge(&mut self, key: &EdgeKey) {
        self.edges.remove(key);
        self.incoming.remove(&(key.to.clone(), key.clone()));
    }

    /// Applies one command; returns its outcome.
    pub fn apply(&mut self, command: &Command) -> Outcome {
        use RejectReason::*;
        let reject = Outcome::Rejected;
        match command {
            Command::AddNode { id, props } => {
                if self.nodes.contains_key(id) {
                    return reject(AlreadyExists);
                }
                let node = Node {
                    props: props.clone(),
                };
                if !node_fits(&node) {
                    return reject(TooLarge);
                }
                self.nodes.insert(id.clone(), node);
            }
            Command::DeleteNode { id } => {
                if self.nodes.remove(id).is_none() {
                    return reject(NotFound);
                }
                let incident: Vec<EdgeKey> = self
                    .out_edges(id)
                    .chain(self.in_edges(id))
                    .cloned()
                    .collect();
                for key in &incident {
                    self.remove_edge(key);
                }
            }
            Command::AddEdge {
                from,
                to,
                label,
                props,
            } => {
                if !self.nodes.contains_key(from) {
                    return reject(NodeMissing);
                }
                let key = EdgeKey::new(from.clone(), label.clone(), to.clone());
                if self.edges.contains_key(&key) {
                    return reject(AlreadyExists);
                }
                let state = EdgeState {
                    version: 1,
                    props: props.clone(),
                };
                if !edge_fits(&key, &state) {
                    return reject(TooLarge);
                }
                if !self.nodes.contains_key(to) {
                    return reject(NodeMissing);
                }
                self.incoming.insert((to.clone(), key.clone()));
                self.edges.insert(key, state);
            }
            Command::SetEdgeProps {
                from,
                to,
                label,
                props,
                if_version,
            } => {
                let key = EdgeKey::new(from.clone(), label.clone(), to.clone());
                let Some(state) = self.edges.get_mut(&key) else {
                    return reject(NotFound);
                };
                if if_version.is_some_and(|v| v != state.version) {
                    return reject(VersionConflict);
                }
                let updated = merged(state, props);
                if !edge_fits(&key, &updated) {
                    return reject(TooLarge);
                }
                *state = updated;
            }
            Command::DeleteEdge { from, to, label } => {
                let key = EdgeKey::new(from.clone(), label.clone(), to.clone());
                if !self.edges.contains_key(&key) {
                    return reject(NotFound);
                }
                self.remove_edge(&key);
            }
        }
        Outcome::Applied
    }

    /// The model's state in the shape the invariant checker and the engine reader use: each
    /// edge as both of its records.
    pub fn view(&self) -> GraphView {
        GraphView {
            nodes: self.nodes.clone(),
            out_records: self.edges.clone(),
            in_records: self.edges.clone(),
            duplicate_records: Vec::new(),
        }
    }
}

/// `state` with `props` merged in and its version bumped: what `set_edge_props` writes.
pub fn merged(state: &EdgeState, props: &Props) -> EdgeState {
    let mut updated = state.clone();
    updated
        .props
        .extend(props.iter().map(|(k, v)| (k.clone(), v.clone())));
    updated.version += 1;
    updated
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::invariants::check;

    fn add_node(id: &str) -> Command {
        Command::AddNode {
            id: id.into(),
            props: Props::new(),
        }
    }

    fn add_edge(from: &str, label: &str, to: &str) -> Command {
        Command::AddEdge {
            from: from.into(),
            to: to.into(),
            label: label.into(),
            props: Props::new(),
        }
    }

    fn set(from: &str, to: &str, since: &str, if_version: Option<u64>) -> Command {
        Command::SetEdgeProps {
            from: from.into(),
            to: to.into(),
            label: "FOLLOWS".into(),
            props: [("since".to_string(), since.to_string())].into(),
            if_version,
        }
    }

    #[test]
    fn edges_need_both_nodes_and_are_unique() {
        let mut model = Model::new();
        model.apply(&add_node("rosa"));
        assert_eq!(
            model.apply(&add_edge("rosa", "FOLLOWS", "karl")),
            Outcome::Rejected(RejectReason::NodeMissing)
        );
        assert_eq!(
            model.apply(&add_edge("karl", "FOLLOWS", "rosa")),
            Outcome::Rejected(RejectReason::NodeMissing)
        );
        model.apply(&add_node("karl"));
        assert_eq!(
            model.apply(&add_edge("rosa", "FOLLOWS", "karl")),
            Outcome::Applied
        );
        assert_eq!(
            model.apply(&add_edge("rosa", "FOLLOWS", "karl")),
            Outcome::Rejected(RejectReason::AlreadyExists)
        );
        // Another label, the reverse direction and a self-loop are other edges.
        for (from, label, to) in [
            ("rosa", "KNOWS", "karl"),
            ("karl", "FOLLOWS", "rosa"),
            ("rosa", "FOLLOWS", "rosa"),
        ] {
            assert_eq!(model.apply(&add_edge(from, label, to)), Outcome::Applied);
        }
        assert_eq!(model.edges.len(), 4);
        assert!(check(&model.view()).is_empty());
    }

    #[test]
    fn later_sets_win_and_versions_count_them() {
        let mut model = Model::new();
        for command in [
            add_node("rosa"),
            add_node("karl"),
            add_edge("rosa", "FOLLOWS", "karl"),
        ] {
            model.apply(&command);
        }
        assert_eq!(
            model.apply(&set("rosa", "karl", "2010", None)),
            Outcome::Applied
        );
        assert_eq!(
            model.apply(&set("rosa", "karl", "2015", Some(2))),
            Outcome::Applied
        );
        assert_eq!(
            model.apply(&set("rosa", "karl", "2020", Some(2))),
            Outcome::Rejected(RejectReason::VersionConflict)
        );
        let state = &model.edges[&EdgeKey::new("rosa", "FOLLOWS", "karl")];
        assert_eq!(state.version, 3);
        assert_eq!(state.props["since"], "2015");
    }

    #[test]
    fn deleting_a_node_removes_every_incident_edge_and_nothing_else() {
        let mut model = Model::new();
        for id in ["a", "b", "c"] {
            model.apply(&add_node(id));
        }
        for (from, to) in [("a", "b"), ("b", "a"), ("b", "b"), ("c", "b"), ("a", "c")] {
            model.apply(&add_edge(from, "L", to));
        }
        assert_eq!(
            model.apply(&Command::DeleteNode { id: "b".into() }),
            Outcome::Applied
        );
        assert_eq!(
            model.edges.keys().collect::<Vec<_>>(),
            vec![&EdgeKey::new("a", "L", "c")]
        );
        assert_eq!(model.in_edges("b").count(), 0);
        assert_eq!(model.in_edges("c").count(), 1);
        assert!(check(&model.view()).is_empty());
        assert_eq!(
            model.apply(&Command::DeleteNode { id: "b".into() }),
            Outcome::Rejected(RejectReason::NotFound)
        );
    }
}

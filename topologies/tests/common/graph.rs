//! The graph topology in the harness, its command builders and property-test strategies.

use lockstep::{RecordId, Snapshot};
use lockstep_topologies::graph::invariants::{check, GraphView, Violation};
use lockstep_topologies::graph::model::Model;
use lockstep_topologies::graph::{
    graph, read_outcome, read_view, Command, Graph, Outcome, Props, TOPOLOGY,
};
use proptest::prelude::*;

use super::{Reference, TopologyHarness};

impl Reference for Graph {
    type Command = Command;
    type Outcome = Outcome;
    type Model = Model;
    type View = GraphView;
    type Violation = Violation;
    const TOPOLOGY: &'static str = TOPOLOGY;

    fn declare(partitions: u32) -> Self {
        graph(partitions).expect("declare")
    }

    fn depot(&self) -> &lockstep::Depot<Command> {
        &self.commands
    }

    fn topology(&self) -> lockstep::Topology {
        self.topology.clone()
    }

    fn apply(model: &mut Model, command: &Command) -> Outcome {
        model.apply(command)
    }

    fn model_view(model: &Model) -> GraphView {
        model.view()
    }

    fn read_view(&self, snapshot: &Snapshot<'_>) -> GraphView {
        read_view(snapshot, self).expect("read view")
    }

    fn read_outcome(snapshot: &Snapshot<'_>, record: RecordId) -> Option<Outcome> {
        read_outcome(snapshot, record)
            .expect("read outcome")
            .map(|(o, _)| o)
    }

    fn check(view: &GraphView) -> Vec<Violation> {
        check(view)
    }
}

/// The graph topology next to its model.
pub type GraphHarness = TopologyHarness<Graph>;

pub fn props(pairs: &[(&str, &str)]) -> Props {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn add_node(id: &str) -> Command {
    Command::AddNode {
        id: id.into(),
        props: Props::new(),
    }
}

pub fn delete_node(id: &str) -> Command {
    Command::DeleteNode { id: id.into() }
}

pub fn add_edge(from: &str, label: &str, to: &str) -> Command {
    Command::AddEdge {
        from: from.into(),
        to: to.into(),
        label: label.into(),
        props: Props::new(),
    }
}

pub fn set_edge_props(
    from: &str,
    label: &str,
    to: &str,
    pairs: &[(&str, &str)],
    if_version: Option<u64>,
) -> Command {
    Command::SetEdgeProps {
        from: from.into(),
        to: to.into(),
        label: label.into(),
        props: props(pairs),
        if_version,
    }
}

pub fn delete_edge(from: &str, label: &str, to: &str) -> Command {
    Command::DeleteEdge {
        from: from.into(),
        to: to.into(),
        label: label.into(),
    }
}

/// Ids that land on distinct partitions (as far as there are partitions), so that scenarios
/// over them really cross partitions.
pub fn spread_nodes(handles: &Graph, n: usize) -> Vec<String> {
    let partitions = handles.commands.partitions() as usize;
    let mut ids: Vec<String> = Vec::new();
    let mut used = Vec::new();
    for i in 0.. {
        let id = format!("v{i}");
        let p = handles.nodes.partition_of(&id).expect("routes");
        if !used.contains(&p) || used.len() >= partitions {
            used.push(p);
            ids.push(id);
            if ids.len() == n {
                break;
            }
        }
    }
    ids
}

// ---- property-test strategies: a few nodes, two of them hot, and a few hot edges ----

/// Node ids `g0`..`g5`, half of the picks on the two hot ones.
pub fn node() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => (0u8..2).prop_map(|i| format!("g{i}")),
        1 => (2u8..6).prop_map(|i| format!("g{i}")),
    ]
}

pub fn label() -> impl Strategy<Value = String> {
    prop_oneof![3 => Just("FOLLOWS".to_string()), 1 => Just("KNOWS".to_string())]
}

/// An edge, half of the picks among the hot ones (between the hot nodes, both ways).
pub fn edge() -> impl Strategy<Value = (String, String, String)> {
    prop_oneof![
        1 => (0u8..2, 0u8..2).prop_map(|(a, b)| (format!("g{a}"), "FOLLOWS".to_string(), format!("g{b}"))),
        1 => (node(), label(), node()),
    ]
}

pub fn edge_props() -> impl Strategy<Value = Props> {
    prop::collection::btree_map(
        prop_oneof![Just("since".to_string()), Just("weight".to_string())],
        (0u8..3).prop_map(|v| v.to_string()),
        0..3,
    )
}

pub fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        2 => node().prop_map(|id| Command::AddNode { id, props: Props::new() }),
        1 => node().prop_map(|id| Command::DeleteNode { id }),
        4 => (edge(), edge_props()).prop_map(|((from, label, to), props)| Command::AddEdge {
            from, to, label, props,
        }),
        5 => (edge(), edge_props(), prop::option::weighted(0.3, 1u64..4)).prop_map(
            |((from, label, to), props, if_version)| Command::SetEdgeProps {
                from, to, label, props, if_version,
            }
        ),
        2 => edge().prop_map(|(from, label, to)| Command::DeleteEdge { from, to, label }),
    ]
}

//! Reading the graph from an engine snapshot. Every function takes the snapshot from its
//! caller, so several reads made on one snapshot see every partition at the same batch.

use std::ops::Bound;

use lockstep::{Error, RecordId, Snapshot};

use super::invariants::GraphView;
use super::{Direction, Edge, Graph, Node, NodeId, Outcome, TOPOLOGY};

/// A node with (a first page of) its out- and in-edges, from one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeWithEdges {
    /// The node's id.
    pub id: NodeId,
    /// The node.
    pub node: Node,
    /// Its out-edges as its own partition stores them, by label then head.
    pub out_edges: Vec<Edge>,
    /// Its in-edges as its own partition stores them, by label then tail.
    pub in_edges: Vec<Edge>,
    /// The batch the snapshot saw.
    pub batch: u64,
}

/// Node `id` with up to `edges_max` edges in each direction (page on with [`read_edges`]), or
/// `None` if it does not exist. Node and edges come from the same snapshot.
pub fn read_node(
    snapshot: &Snapshot<'_>,
    handles: &Graph,
    id: &NodeId,
    edges_max: usize,
) -> Result<Option<NodeWithEdges>, Error> {
    let Some(node) = snapshot.get(&handles.nodes, id)? else {
        return Ok(None);
    };
    Ok(Some(NodeWithEdges {
        id: id.clone(),
        node,
        out_edges: read_edges(snapshot, handles, id, Direction::Out, None, None, edges_max)?,
        in_edges: read_edges(snapshot, handles, id, Direction::In, None, None, edges_max)?,
        batch: snapshot.batch_id(TOPOLOGY)?,
    }))
}

/// Up to `limit` of `node`'s edges in `direction`, only those labelled `label` if given, in
/// (label, other endpoint) order, after the edge `after` (a previous page's last edge).
pub fn read_edges(
    snapshot: &Snapshot<'_>,
    handles: &Graph,
    node: &NodeId,
    direction: Direction,
    label: Option<&str>,
    after: Option<&Edge>,
    limit: usize,
) -> Result<Vec<Edge>, Error> {
    let records = handles.records(direction);
    let entries = match after {
        None => match label {
            Some(label) => snapshot.prefix(records, &(node, label), limit)?,
            None => snapshot.prefix(records, &(node,), limit)?,
        },
        Some(edge) => {
            // A node's records all sit on its partition, in key order after the last one read.
            let last = handles.record_key(&edge.key, direction)?;
            let partition = handles.nodes.partition_of(node)?;
            snapshot.partition_range(
                records,
                partition,
                Bound::Excluded(&last),
                Bound::Unbounded,
                limit,
            )?
        }
    };
    Ok(entries
        .into_iter()
        .take_while(|(record, _)| {
            record.node == *node && label.is_none_or(|label| record.label == label)
        })
        .map(|(record, state)| Edge {
            key: record.edge(direction),
            state,
        })
        .collect())
}

/// Every node and both records of every edge, from one snapshot (so the view is consistent
/// across partitions). Reads the whole graph: for checks and tests.
pub fn read_view(snapshot: &Snapshot<'_>, handles: &Graph) -> Result<GraphView, Error> {
    let mut view = GraphView {
        nodes: snapshot
            .range(
                &handles.nodes,
                Bound::Unbounded,
                Bound::Unbounded,
                usize::MAX,
            )?
            .into_iter()
            .collect(),
        ..GraphView::default()
    };
    for direction in [Direction::Out, Direction::In] {
        let records = snapshot.range(
            handles.records(direction),
            Bound::Unbounded,
            Bound::Unbounded,
            usize::MAX,
        )?;
        for (record, state) in records {
            let key = record.edge(direction);
            if view.records(direction).contains_key(&key) {
                view.duplicate_records
                    .push((direction, Edge { key, state }));
            } else {
                view.records_mut(direction).insert(key, state);
            }
        }
    }
    Ok(view)
}

/// The outcome recorded for the command appended at `record`, with the batch that recorded it.
pub fn read_outcome(
    snapshot: &Snapshot<'_>,
    record: RecordId,
) -> Result<Option<(Outcome, u64)>, Error> {
    Ok(snapshot
        .outcome::<Outcome>(TOPOLOGY, record)?
        .map(|o| (o.value, o.batch_id)))
}

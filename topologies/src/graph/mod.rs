//! An edge-distributed property graph that never corrupts: the second reference topology.
//!
//! Nodes are partitioned by id. An edge `(from)-[:label]->(to)` is stored twice, as in the
//! edge-distributed graph stores it models: an *out-record* in `from`'s adjacency, on `from`'s
//! partition, and an *in-record* in `to`'s adjacency, on `to`'s partition. Both records carry
//! the edge's version and properties. **Reciprocal consistency** is the invariant that both
//! records of every edge exist together, carry identical state, and name existing nodes;
//! [`invariants::check`] lists every way a view breaks it.
//!
//! Stores that apply the two halves of an update independently break it in normal, fault-free
//! operation: two conflicting updates reach the two partitions in different orders and the
//! records never agree again. Here every command that touches both records does so within one
//! batch, with messages between the partitions, under [`Delivery::Serializable`]: each command,
//! with all its hops, completes before the next starts, so a batch equals applying its commands
//! one at a time in append order (see [`lockstep_core::exec`]), and the batch commits on every
//! partition at once. [`model::Model`] is that sequential definition.
//!
//! Adjacency is stored per element: each record is its own map entry, keyed by its node, label
//! and other endpoint ([`RecordKey`]), on its node's partition, so adding or updating an edge of
//! a node with a million followers reads and writes one entry per side, one prefix scan lists a
//! node's edges (by label), and deleting such a node unlinks its edges a page per round.
//!
//! ## Commands and their hops
//!
//! | command | routed by | hops (partition of) |
//! |---|---|---|
//! | `add_node` | id | id |
//! | `delete_node` | id | id (node, then a page of its records per round) → each neighbour (its record) |
//! | `add_edge` | from | from (check) → to (check `to`, in-record) → from (out-record) |
//! | `set_edge_props` | from | from (check, out-record) → to (in-record) |
//! | `delete_edge` | from | from (out-record) → to (in-record) |

pub mod invariants;
pub mod model;
#[cfg(feature = "engine")]
mod read;
pub mod workload;

use std::collections::BTreeMap;

use lockstep_core::{
    envelope_bytes, partition_for_key, Ctx, Delivery, Depot, HandlerError, PState, RecordId,
    SchemaError, Topology, TopologyBuilder,
};
use serde::{Deserialize, Serialize};

#[cfg(feature = "engine")]
pub use read::{read_edges, read_node, read_outcome, read_view, NodeWithEdges};

/// The topology's name.
pub const TOPOLOGY: &str = "graph";
/// The command depot's name.
pub const DEPOT: &str = "graph-commands";

/// A node's id.
pub type NodeId = String;
/// An edge's label (its relationship type, e.g. `FOLLOWS`).
pub type Label = String;
/// Properties of a node or an edge.
pub type Props = BTreeMap<String, String>;

/// A node as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Its properties.
    pub props: Props,
}

/// What identifies an edge: at most one edge per `(from, label, to)`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EdgeKey {
    /// The tail.
    pub from: NodeId,
    /// The label.
    pub label: Label,
    /// The head.
    pub to: NodeId,
}

impl EdgeKey {
    /// The edge `(from)-[:label]->(to)`.
    pub fn new(from: impl Into<NodeId>, label: impl Into<Label>, to: impl Into<NodeId>) -> Self {
        Self {
            from: from.into(),
            label: label.into(),
            to: to.into(),
        }
    }

    /// The endpoint whose partition stores the record of `direction`.
    pub fn holder(&self, direction: Direction) -> &NodeId {
        match direction {
            Direction::Out => &self.from,
            Direction::In => &self.to,
        }
    }

    /// The endpoint the record of `direction` points at.
    pub fn other(&self, direction: Direction) -> &NodeId {
        match direction {
            Direction::Out => &self.to,
            Direction::In => &self.from,
        }
    }
}

/// What both records of an edge carry, identical on both sides when the graph is consistent.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EdgeState {
    /// 1 at `add_edge`, +1 for every applied `set_edge_props`.
    pub version: u64,
    /// Its properties.
    pub props: Props,
}

/// Which of an edge's two records: the one its tail stores or the one its head stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Direction {
    /// The out-record, in the tail's adjacency.
    Out,
    /// The in-record, in the head's adjacency.
    In,
}

/// Where one record of an edge is stored: the key of a map entry, on `node`'s partition.
///
/// The engine places a map entry on the partition its whole key hashes to; `salt` is the
/// smallest number that makes this key hash to `node`'s partition, so that all of a node's
/// records sit with the node and one prefix scan there, by `(node,)` or `(node, label)`, lists
/// them in (label, other endpoint) order. Finding the salt takes about as many hashes as there
/// are partitions.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RecordKey {
    /// The endpoint that stores the record: the tail for an out-record, the head for an in-record.
    pub node: NodeId,
    /// The edge's label.
    pub label: Label,
    /// The other endpoint.
    pub other: NodeId,
    /// Places the key on `node`'s partition.
    pub salt: u32,
}

/// Salts tried before giving up. Each lands on the node's partition with probability
/// 1/partitions, so with at most [`lockstep_core::PARTITIONS_MAX`] partitions a miss after this
/// many is a 1-in-e^256 event.
const SALT_TRIES_MAX: u32 = 1 << 20;

impl RecordKey {
    /// The key of `edge`'s `direction` record in a topology of `partitions` partitions.
    pub fn of(edge: &EdgeKey, direction: Direction, partitions: u32) -> Result<Self, HandlerError> {
        let node = edge.holder(direction);
        let home = partition_for_key(node, partitions)?;
        let mut key = RecordKey {
            node: node.clone(),
            label: edge.label.clone(),
            other: edge.other(direction).clone(),
            salt: 0,
        };
        while key.salt < SALT_TRIES_MAX {
            if partition_for_key(&key, partitions)? == home {
                return Ok(key);
            }
            key.salt += 1;
        }
        Err(HandlerError::user(format!(
            "no salt places the record {key:?} on partition {home}"
        )))
    }

    /// The edge this record, stored as a `direction` record, belongs to.
    pub fn edge(&self, direction: Direction) -> EdgeKey {
        let (from, to) = match direction {
            Direction::Out => (self.node.clone(), self.other.clone()),
            Direction::In => (self.other.clone(), self.node.clone()),
        };
        EdgeKey {
            from,
            label: self.label.clone(),
            to,
        }
    }
}

/// An edge with the state one of its records carries.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Edge {
    /// Which edge.
    pub key: EdgeKey,
    /// Its state.
    pub state: EdgeState,
}

/// A command, as appended to the depot (partitioned by [`Command::routing_node`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Create node `id`. Rejected if it exists.
    AddNode {
        /// The node.
        id: NodeId,
        /// Its properties.
        props: Props,
    },
    /// Delete node `id` and every edge incident to it, both records of each.
    DeleteNode {
        /// The node.
        id: NodeId,
    },
    /// Create `(from)-[:label]->(to)` at version 1. Rejected if either node is missing or the
    /// edge exists.
    AddEdge {
        /// The tail.
        from: NodeId,
        /// The head.
        to: NodeId,
        /// The label.
        label: Label,
        /// Its properties.
        props: Props,
    },
    /// Merge `props` into the edge's properties and bump its version; with `if_version`, only
    /// at that version.
    SetEdgeProps {
        /// The tail.
        from: NodeId,
        /// The head.
        to: NodeId,
        /// The label.
        label: Label,
        /// Properties to set.
        props: Props,
        /// Compare-and-set on the version.
        if_version: Option<u64>,
    },
    /// Delete the edge, both records.
    DeleteEdge {
        /// The tail.
        from: NodeId,
        /// The head.
        to: NodeId,
        /// The label.
        label: Label,
    },
}

impl Command {
    /// The node the command is routed by: the node itself, or an edge's tail.
    pub fn routing_node(&self) -> &NodeId {
        match self {
            Command::AddNode { id, .. } | Command::DeleteNode { id } => id,
            Command::AddEdge { from, .. }
            | Command::SetEdgeProps { from, .. }
            | Command::DeleteEdge { from, .. } => from,
        }
    }

    /// The edge an edge command names.
    pub fn edge_key(&self) -> Option<EdgeKey> {
        match self {
            Command::AddNode { .. } | Command::DeleteNode { .. } => None,
            Command::AddEdge {
                from, to, label, ..
            }
            | Command::SetEdgeProps {
                from, to, label, ..
            }
            | Command::DeleteEdge { from, to, label } => {
                Some(EdgeKey::new(from.clone(), label.clone(), to.clone()))
            }
        }
    }
}

/// Why a command was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RejectReason {
    /// `add_node` of a node that exists, or `add_edge` of an edge that exists.
    AlreadyExists,
    /// `add_edge` names a node that does not exist.
    NodeMissing,
    /// The node or edge to change or delete does not exist.
    NotFound,
    /// `if_version` did not match.
    VersionConflict,
    /// The node or edge would exceed [`NODE_BYTES_MAX`] or [`EDGE_BYTES_MAX`].
    TooLarge,
}

impl RejectReason {
    /// The reason's wire name (`already_exists`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::AlreadyExists => "already_exists",
            RejectReason::NodeMissing => "node_missing",
            RejectReason::NotFound => "not_found",
            RejectReason::VersionConflict => "version_conflict",
            RejectReason::TooLarge => "too_large",
        }
    }
}

/// What a command led to; recorded durably with the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The command took effect.
    Applied,
    /// The command was refused; nothing changed.
    Rejected(RejectReason),
}

/// Largest stored node (encoded). Larger `add_node`s are rejected, so no command can make a
/// batch fail.
pub const NODE_BYTES_MAX: usize = 1 << 20;

/// Largest edge, key and state encoded. Every update rewrites both records, so edges stay
/// small.
pub const EDGE_BYTES_MAX: usize = 16 << 10;

/// Whether `node` fits [`NODE_BYTES_MAX`].
pub fn node_fits(node: &Node) -> bool {
    envelope_bytes(node).is_ok_and(|bytes| bytes <= NODE_BYTES_MAX)
}

/// Whether an edge fits [`EDGE_BYTES_MAX`].
pub fn edge_fits(key: &EdgeKey, state: &EdgeState) -> bool {
    envelope_bytes(&(key, state)).is_ok_and(|bytes| bytes <= EDGE_BYTES_MAX)
}

/// Messages between partitions within a batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Msg {
    /// At the head's partition: check the head and write the in-record.
    Link {
        key: EdgeKey,
        state: EdgeState,
        origin: RecordId,
    },
    /// At the tail's partition (the origin's): the head took it; write the out-record.
    Linked {
        key: EdgeKey,
        state: EdgeState,
        origin: RecordId,
    },
    /// At the origin's partition: record a rejection.
    Reject {
        origin: RecordId,
        reason: RejectReason,
    },
    /// At the head's partition: the tail replaced `old` by `new`; do the same.
    Restate {
        key: EdgeKey,
        old: EdgeState,
        new: EdgeState,
    },
    /// At the partition of the endpoint that stores the `direction` record: remove it (its
    /// other record is gone).
    Unlink {
        key: EdgeKey,
        direction: Direction,
        state: EdgeState,
    },
    /// At a deleted node's partition: unlink the next page of its edges.
    UnlinkEdges { id: NodeId },
}

/// Handles for the graph topology's depot, PStates and topology.
#[derive(Debug, Clone)]
pub struct Graph {
    /// Commands, partitioned by [`Command::routing_node`].
    pub commands: Depot<Command>,
    /// id → node.
    pub nodes: PState<NodeId, Node>,
    /// Out-records, one entry per edge, with the tail.
    pub out_edges: PState<RecordKey, EdgeState>,
    /// In-records, one entry per edge, with the head.
    pub in_edges: PState<RecordKey, EdgeState>,
    /// The topology; each command's outcome is an [`Outcome`].
    pub topology: Topology,
}

impl Graph {
    /// The records of `direction`.
    pub fn records(&self, direction: Direction) -> &PState<RecordKey, EdgeState> {
        match direction {
            Direction::Out => &self.out_edges,
            Direction::In => &self.in_edges,
        }
    }

    /// The key of `edge`'s `direction` record.
    pub fn record_key(
        &self,
        edge: &EdgeKey,
        direction: Direction,
    ) -> Result<RecordKey, HandlerError> {
        RecordKey::of(edge, direction, self.topology.partitions())
    }
}

/// Rounds one command may take. Deleting a node takes one round per page of its edges: a
/// node with ten million edges still fits.
pub const ROUNDS_MAX: u32 = 100_000;

/// Records unlinked per round while deleting a node: a celebrity's delete sends at most this
/// many messages per round instead of one per edge at once.
pub const UNLINK_PAGE: usize = 1024;

#[derive(Clone)]
struct Handles {
    nodes: PState<NodeId, Node>,
    out_edges: PState<RecordKey, EdgeState>,
    in_edges: PState<RecordKey, EdgeState>,
}

fn integrity_violation(what: String) -> HandlerError {
    // A broken invariant found mid-command: stopping the topology keeps it from spreading.
    HandlerError::user(format!("integrity violation: {what}"))
}

impl Handles {
    fn records(&self, direction: Direction) -> &PState<RecordKey, EdgeState> {
        match direction {
            Direction::Out => &self.out_edges,
            Direction::In => &self.in_edges,
        }
    }

    /// The state the `direction` record of `edge` holds, if the record exists. One read.
    fn record(
        &self,
        ctx: &Ctx<'_, Msg>,
        edge: &EdgeKey,
        direction: Direction,
    ) -> Result<Option<EdgeState>, HandlerError> {
        let key = RecordKey::of(edge, direction, ctx.partitions())?;
        ctx.get(self.records(direction), &key)
    }

    fn put_record(
        &self,
        ctx: &mut Ctx<'_, Msg>,
        edge: &EdgeKey,
        direction: Direction,
        state: &EdgeState,
    ) -> Result<(), HandlerError> {
        let key = RecordKey::of(edge, direction, ctx.partitions())?;
        ctx.put(self.records(direction), &key, state)
    }

    /// Checks that the `direction` record of `edge` holds `expected` (its other record did,
    /// and the two never differ), then replaces it by `new`, or removes it.
    fn replace_record(
        &self,
        ctx: &mut Ctx<'_, Msg>,
        edge: &EdgeKey,
        direction: Direction,
        expected: &EdgeState,
        new: Option<&EdgeState>,
    ) -> Result<(), HandlerError> {
        let key = RecordKey::of(edge, direction, ctx.partitions())?;
        let found = ctx.get(self.records(direction), &key)?;
        if found.as_ref() != Some(expected) {
            return Err(integrity_violation(format!(
                "{direction:?} record of {edge:?} is {found:?}, its other record says {expected:?}"
            )));
        }
        match new {
            Some(state) => ctx.put(self.records(direction), &key, state),
            None => ctx.delete(self.records(direction), &key),
        }
    }

    fn reject(
        &self,
        ctx: &mut Ctx<'_, Msg>,
        origin: RecordId,
        reason: RejectReason,
    ) -> Result<(), HandlerError> {
        if origin.partition == ctx.partition() {
            ctx.record_outcome_for(origin, &Outcome::Rejected(reason))
        } else {
            ctx.send_to_partition(origin.partition, Msg::Reject { origin, reason })
        }
    }

    fn command(&self, ctx: &mut Ctx<'_, Msg>, command: Command) -> Result<(), HandlerError> {
        let origin = ctx
            .record_id()
            .ok_or_else(|| HandlerError::user("command handled outside a record"))?;
        match command {
            Command::AddNode { id, props } => {
                if ctx.contains(&self.nodes, &id)? {
                    return self.reject(ctx, origin, RejectReason::AlreadyExists);
                }
                let node = Node { props };
                if !node_fits(&node) {
                    return self.reject(ctx, origin, RejectReason::TooLarge);
                }
                ctx.put(&self.nodes, &id, &node)?;
                ctx.record_outcome(&Outcome::Applied)
            }
            Command::DeleteNode { id } => {
                if !ctx.contains(&self.nodes, &id)? {
                    return self.reject(ctx, origin, RejectReason::NotFound);
                }
                ctx.delete(&self.nodes, &id)?;
                self.unlink_page(ctx, &id)?;
                ctx.record_outcome(&Outcome::Applied)
            }
            Command::AddEdge {
                from,
                to,
                label,
                props,
            } => {
                if !ctx.contains(&self.nodes, &from)? {
                    return self.reject(ctx, origin, RejectReason::NodeMissing);
                }
                let key = EdgeKey { from, label, to };
                if self.record(ctx, &key, Direction::Out)?.is_some() {
                    return self.reject(ctx, origin, RejectReason::AlreadyExists);
                }
                let state = EdgeState { version: 1, props };
                if !edge_fits(&key, &state) {
                    return self.reject(ctx, origin, RejectReason::TooLarge);
                }
                let head = key.to.clone();
                ctx.send(&head, Msg::Link { key, state, origin })
            }
            Command::SetEdgeProps {
                from,
                to,
                label,
                props,
                if_version,
            } => {
                let key = EdgeKey { from, label, to };
                let Some(old) = self.record(ctx, &key, Direction::Out)? else {
                    return self.reject(ctx, origin, RejectReason::NotFound);
                };
                if if_version.is_some_and(|v| v != old.version) {
                    return self.reject(ctx, origin, RejectReason::VersionConflict);
                }
                let new = model::merged(&old, &props);
                if !edge_fits(&key, &new) {
                    return self.reject(ctx, origin, RejectReason::TooLarge);
                }
                self.put_record(ctx, &key, Direction::Out, &new)?;
                let head = key.to.clone();
                ctx.send(&head, Msg::Restate { key, old, new })?;
                ctx.record_outcome(&Outcome::Applied)
            }
            Command::DeleteEdge { from, to, label } => {
                let key = EdgeKey { from, label, to };
                let Some(state) = self.record(ctx, &key, Direction::Out)? else {
                    return self.reject(ctx, origin, RejectReason::NotFound);
                };
                self.replace_record(ctx, &key, Direction::Out, &state, None)?;
                let head = key.to.clone();
                let message = Msg::Unlink {
                    key,
                    direction: Direction::In,
                    state,
                };
                ctx.send(&head, message)?;
                ctx.record_outcome(&Outcome::Applied)
            }
        }
    }

    /// Unlinks one page of deleted node `id`'s edges: its records go here, each edge's other
    /// record is sent its removal. Out-records go first; a page that ends among them, or fills
    /// up, continues in the next round, so a celebrity never floods one round.
    fn unlink_page(&self, ctx: &mut Ctx<'_, Msg>, id: &NodeId) -> Result<(), HandlerError> {
        let node_prefix = (id,);
        let outs = ctx.prefix(&self.out_edges, &node_prefix, UNLINK_PAGE)?;
        let room = UNLINK_PAGE - outs.len();
        for (record, state) in outs {
            ctx.delete(&self.out_edges, &record)?;
            let key = record.edge(Direction::Out);
            if key.to == *id {
                // A self-loop's in-record is here too; no message needed.
                self.replace_record(ctx, &key, Direction::In, &state, None)?;
            } else {
                let head = key.to.clone();
                let message = Msg::Unlink {
                    key,
                    direction: Direction::In,
                    state,
                };
                ctx.send(&head, message)?;
            }
        }
        // Only reached with room when every out-record is gone, self-loops included: the
        // in-records left all come from other nodes.
        let ins = if room > 0 {
            ctx.prefix(&self.in_edges, &node_prefix, room)?
        } else {
            Vec::new()
        };
        let taken = UNLINK_PAGE - room + ins.len();
        for (record, state) in ins {
            ctx.delete(&self.in_edges, &record)?;
            let key = record.edge(Direction::In);
            let tail = key.from.clone();
            let message = Msg::Unlink {
                key,
                direction: Direction::Out,
                state,
            };
            ctx.send(&tail, message)?;
        }
        if taken == UNLINK_PAGE {
            ctx.send(id, Msg::UnlinkEdges { id: id.clone() })?;
        }
        Ok(())
    }

    fn message(&self, ctx: &mut Ctx<'_, Msg>, message: Msg) -> Result<(), HandlerError> {
        match message {
            Msg::Link { key, state, origin } => {
                if !ctx.contains(&self.nodes, &key.to)? {
                    return self.reject(ctx, origin, RejectReason::NodeMissing);
                }
                if let Some(found) = self.record(ctx, &key, Direction::In)? {
                    return Err(integrity_violation(format!(
                        "{key:?} has an in-record {found:?} but no out-record"
                    )));
                }
                self.put_record(ctx, &key, Direction::In, &state)?;
                ctx.send_to_partition(origin.partition, Msg::Linked { key, state, origin })
            }
            Msg::Linked { key, state, origin } => {
                self.put_record(ctx, &key, Direction::Out, &state)?;
                ctx.record_outcome_for(origin, &Outcome::Applied)
            }
            Msg::Reject { origin, reason } => {
                ctx.record_outcome_for(origin, &Outcome::Rejected(reason))
            }
            Msg::Restate { key, old, new } => {
                self.replace_record(ctx, &key, Direction::In, &old, Some(&new))
            }
            Msg::Unlink {
                key,
                direction,
                state,
            } => self.replace_record(ctx, &key, direction, &state, None),
            Msg::UnlinkEdges { id } => self.unlink_page(ctx, &id),
        }
    }
}

/// Declares the graph topology on `partitions` partitions.
pub fn graph(partitions: u32) -> Result<Graph, SchemaError> {
    let commands = Depot::<Command>::hashed(DEPOT, partitions, |c| c.routing_node().clone())?;
    let mut builder = TopologyBuilder::<Msg>::new(TOPOLOGY, partitions);
    let handles = Handles {
        nodes: builder.pstate("graph-nodes"),
        out_edges: builder.pstate("graph-out-edges"),
        in_edges: builder.pstate("graph-in-edges"),
    };
    let on_record = handles.clone();
    builder.consume(&commands, move |ctx, command: Command| {
        on_record.command(ctx, command)
    });
    let on_message = handles.clone();
    builder.on_message(move |ctx, message: Msg| on_message.message(ctx, message));
    builder.delivery(Delivery::Serializable);
    builder.rounds_max(ROUNDS_MAX);
    Ok(Graph {
        commands,
        nodes: handles.nodes,
        out_edges: handles.out_edges,
        in_edges: handles.in_edges,
        topology: builder.build()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_keys_sit_on_their_nodes_partition_and_name_their_edge() {
        let edge = EdgeKey::new("rosa", "FOLLOWS", "karl");
        for partitions in [1, 2, 7, 64, 1000] {
            for direction in [Direction::Out, Direction::In] {
                let key = RecordKey::of(&edge, direction, partitions).expect("a salt");
                assert_eq!(
                    partition_for_key(&key, partitions).expect("encodes"),
                    partition_for_key(edge.holder(direction), partitions).expect("encodes")
                );
                assert_eq!(key.edge(direction), edge);
                // The smallest salt that does it: the same key every time.
                assert_eq!(RecordKey::of(&edge, direction, partitions).ok(), Some(key));
            }
        }
    }
}

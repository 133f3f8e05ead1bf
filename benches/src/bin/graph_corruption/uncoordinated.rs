//! A model of an uncoordinated edge-distributed graph store: a seeded, deterministic
//! discrete-event simulation of its partitions, not of Lockstep.
//!
//! Each node lives on one partition; an edge's out-record lives with its tail and its
//! in-record with its head. A command is split into one *half* per partition it touches, and
//! every half travels to its partition on its own: a fixed network delay, plus, with the
//! straggler probability, an exponentially distributed extra delay (a retransmission, a pause).
//! Each partition applies the halves in the order they arrive, each half as one local ACID
//! transaction that checks only what the partition holds. That is what eventually consistent
//! stores and stores with per-partition ("ACID shard") transactions do. With no stragglers
//! every partition applies the halves in the order they were sent; even then, deleting a node
//! reaches the other records of its edges one hop later (its partition must first find them),
//! and an edge re-added in between can lose one of its records.
//!
//! The model is generous to the store it models: it is fed only commands that the sequential
//! history applied (no validation races at the client), replicas within a partition converge
//! instantly, and nothing ever fails. Corruption comes from arrival order alone.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use lockstep_topologies::graph::invariants::GraphView;
use lockstep_topologies::graph::model::merged;
use lockstep_topologies::graph::{Command, Direction, EdgeKey, EdgeState, Node, NodeId, Props};
use lockstep_topologies::rng::SplitMix64;

/// How halves travel.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    /// Partitions.
    pub partitions: u32,
    /// Delay every half takes, in seconds.
    pub delay_s: f64,
    /// Probability that a half is a straggler.
    pub straggler_probability: f64,
    /// Mean extra delay of a straggler, in seconds.
    pub straggler_delay_mean_s: f64,
    /// Seed of the delays.
    pub seed: u64,
}

/// One partition's part of a command.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Half {
    PutNode {
        id: NodeId,
        props: Props,
    },
    /// Deletes the node and the records it holds here; the other records of its edges are
    /// sent their removal from here, when this half is applied.
    DropNode {
        id: NodeId,
    },
    /// The records of `directions` are held here (both for an edge inside the partition).
    AddRecords {
        key: EdgeKey,
        directions: Vec<Direction>,
        props: Props,
    },
    SetRecords {
        key: EdgeKey,
        directions: Vec<Direction>,
        props: Props,
        if_version: Option<u64>,
    },
    RemoveRecords {
        key: EdgeKey,
        directions: Vec<Direction>,
    },
}

impl Half {
    /// The edge an edge half changes.
    fn edge(&self) -> Option<&EdgeKey> {
        match self {
            Half::PutNode { .. } | Half::DropNode { .. } => None,
            Half::AddRecords { key, .. }
            | Half::SetRecords { key, .. }
            | Half::RemoveRecords { key, .. } => Some(key),
        }
    }
}

/// A half on its way: ordered by arrival, then by the order it was sent.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    arrival_ns: u64,
    sent: u64,
    partition: u32,
    half: Half,
}

/// The simulated store.
#[derive(Debug, Clone)]
pub struct Uncoordinated {
    network: NetworkConfig,
    rng: SplitMix64,
    now_ns: u64,
    sent: u64,
    in_flight: BinaryHeap<Reverse<InFlight>>,
    /// The union of every partition's state; each record belongs to the partition of the
    /// node holding it, and only that partition's halves change it.
    view: GraphView,
    /// `(head, edge)` for every in-record, to find a node's in-records.
    in_by_head: BTreeSet<(NodeId, EdgeKey)>,
    placement: BTreeMap<NodeId, u32>,
    /// Per partition, the latest send number among the halves it applied.
    latest_applied: Vec<u64>,
    halves_applied: u64,
    halves_overtaken: u64,
    /// Halves on their way, per edge they change.
    in_flight_per_edge: BTreeMap<EdgeKey, u32>,
    /// Edges found corrupted the last time none of their halves was on its way.
    corrupted: BTreeSet<EdgeKey>,
    /// Every time an edge went from sound to corrupted, once its traffic had arrived.
    corruption_events: Vec<EdgeKey>,
}

fn ns(seconds: f64) -> u64 {
    (seconds * 1e9).round() as u64
}

impl Uncoordinated {
    /// An empty store.
    pub fn new(network: NetworkConfig) -> Self {
        Self {
            rng: SplitMix64::new(network.seed),
            latest_applied: vec![0; network.partitions as usize],
            network,
            now_ns: 0,
            sent: 0,
            in_flight: BinaryHeap::new(),
            view: GraphView::default(),
            in_by_head: BTreeSet::new(),
            placement: BTreeMap::new(),
            halves_applied: 0,
            halves_overtaken: 0,
            in_flight_per_edge: BTreeMap::new(),
            corrupted: BTreeSet::new(),
            corruption_events: Vec::new(),
        }
    }

    /// The edges that became corrupted, one entry each time one did (an edge can heal, when
    /// both records are deleted, and be corrupted again). Counted when no half of the edge is
    /// on its way, so a difference that the traffic in flight will undo does not count.
    pub fn corruption_events(&self) -> &[EdgeKey] {
        &self.corruption_events
    }

    /// Every node and record, as the partitions hold them now.
    pub fn view(&self) -> &GraphView {
        &self.view
    }

    /// Share of applied halves that arrived after a half sent later to the same partition.
    pub fn overtaken_share(&self) -> f64 {
        if self.halves_applied == 0 {
            0.0
        } else {
            self.halves_overtaken as f64 / self.halves_applied as f64
        }
    }

    /// Share of edges whose records live on different partitions.
    pub fn crossing_share(&self) -> f64 {
        let keys: BTreeSet<&EdgeKey> = self
            .view
            .out_records
            .keys()
            .chain(self.view.in_records.keys())
            .collect();
        let crossing = keys
            .iter()
            .filter(|key| self.partition_of(&key.from) != self.partition_of(&key.to))
            .count();
        if keys.is_empty() {
            0.0
        } else {
            crossing as f64 / keys.len() as f64
        }
    }

    fn partition_of(&self, node: &str) -> u32 {
        self.placement.get(node).copied().unwrap_or(0)
    }

    fn send(&mut self, partition: u32, half: Half) {
        if let Some(key) = half.edge() {
            *self.in_flight_per_edge.entry(key.clone()).or_default() += 1;
        }
        let mut delay_s = self.network.delay_s;
        if self.rng.chance(self.network.straggler_probability) {
            delay_s += self.rng.exponential(self.network.straggler_delay_mean_s);
        }
        self.sent += 1;
        self.in_flight.push(Reverse(InFlight {
            arrival_ns: self.now_ns + ns(delay_s),
            sent: self.sent,
            partition,
            half,
        }));
    }

    /// Applies every half that has arrived by `until_ns`, in arrival order.
    fn run_until(&mut self, until_ns: u64) {
        while self
            .in_flight
            .peek()
            .is_some_and(|Reverse(next)| next.arrival_ns <= until_ns)
        {
            if let Some(Reverse(next)) = self.in_flight.pop() {
                self.now_ns = self.now_ns.max(next.arrival_ns);
                self.apply(next);
            }
        }
        self.now_ns = self.now_ns.max(until_ns);
    }

    /// Issues `command` at `at_s` seconds; `placement` names each node's partition (the first
    /// placement of a node sticks).
    pub fn issue(&mut self, at_s: f64, command: &Command, placement: impl Fn(&str) -> u32) {
        self.run_until(ns(at_s));
        let mut place = |node: &NodeId| -> u32 {
            *self
                .placement
                .entry(node.clone())
                .or_insert_with(|| placement(node))
        };
        let halves: Vec<(u32, Half)> = match command {
            Command::AddNode { id, props } => vec![(
                place(id),
                Half::PutNode {
                    id: id.clone(),
                    props: props.clone(),
                },
            )],
            Command::DeleteNode { id } => vec![(place(id), Half::DropNode { id: id.clone() })],
            Command::AddEdge { .. } | Command::SetEdgeProps { .. } | Command::DeleteEdge { .. } => {
                let Some(key) = command.edge_key() else {
                    return;
                };
                let (tail, head) = (place(&key.from), place(&key.to));
                let sides: Vec<(u32, Vec<Direction>)> = if tail == head {
                    vec![(tail, vec![Direction::Out, Direction::In])]
                } else {
                    vec![(tail, vec![Direction::Out]), (head, vec![Direction::In])]
                };
                sides
                    .into_iter()
                    .map(|(partition, directions)| {
                        let key = key.clone();
                        let half = match command {
                            Command::AddEdge { props, .. } => Half::AddRecords {
                                key,
                                directions,
                                props: props.clone(),
                            },
                            Command::SetEdgeProps {
                                props, if_version, ..
                            } => Half::SetRecords {
                                key,
                                directions,
                                props: props.clone(),
                                if_version: *if_version,
                            },
                            _ => Half::RemoveRecords { key, directions },
                        };
                        (partition, half)
                    })
                    .collect()
            }
        };
        for (partition, half) in halves {
            self.send(partition, half);
        }
    }

    /// The store once every half sent so far has arrived (and every half those sent): what
    /// stays when the traffic stops. Only a copy settles; this store runs on unchanged.
    pub fn settled(&self) -> Self {
        let mut copy = self.clone();
        copy.run_until(u64::MAX);
        copy
    }

    fn record(&self, key: &EdgeKey, direction: Direction) -> Option<&EdgeState> {
        self.view.records(direction).get(key)
    }

    fn insert_record(&mut self, key: &EdgeKey, direction: Direction, state: EdgeState) {
        if direction == Direction::In {
            self.in_by_head.insert((key.to.clone(), key.clone()));
        }
        self.view.records_mut(direction).insert(key.clone(), state);
    }

    fn remove_record(&mut self, key: &EdgeKey, direction: Direction) {
        if direction == Direction::In {
            self.in_by_head.remove(&(key.to.clone(), key.clone()));
        }
        self.view.records_mut(direction).remove(key);
    }

    /// Whether the edge breaks reciprocal consistency (as `invariants::check` would find).
    fn is_corrupted(&self, key: &EdgeKey) -> bool {
        match (
            self.view.out_records.get(key),
            self.view.in_records.get(key),
        ) {
            (None, None) => false,
            (Some(out_state), Some(in_state)) if out_state == in_state => {
                !(self.view.nodes.contains_key(&key.from) && self.view.nodes.contains_key(&key.to))
            }
            _ => true,
        }
    }

    /// Records a corruption event if the edge, with none of its halves on the way, has just
    /// become corrupted.
    fn settle_edge(&mut self, key: &EdgeKey) {
        if self.in_flight_per_edge.contains_key(key) {
            return;
        }
        if self.is_corrupted(key) {
            if self.corrupted.insert(key.clone()) {
                self.corruption_events.push(key.clone());
            }
        } else {
            self.corrupted.remove(key);
        }
    }

    /// One half, as one local transaction of its partition: it checks and changes only what
    /// the partition holds, all of it or none.
    fn apply(&mut self, in_flight: InFlight) {
        let edge = in_flight.half.edge().cloned();
        if let Some(key) = &edge {
            if let Some(count) = self.in_flight_per_edge.get_mut(key) {
                *count -= 1;
                if *count == 0 {
                    self.in_flight_per_edge.remove(key);
                }
            }
        }
        self.apply_half(in_flight);
        if let Some(key) = &edge {
            self.settle_edge(key);
        }
    }

    fn apply_half(&mut self, in_flight: InFlight) {
        let partition = in_flight.partition;
        self.halves_applied += 1;
        let latest = &mut self.latest_applied[partition as usize];
        if in_flight.sent < *latest {
            self.halves_overtaken += 1;
        }
        *latest = (*latest).max(in_flight.sent);
        match in_flight.half {
            Half::PutNode { id, props } => {
                self.view.nodes.entry(id).or_insert(Node { props });
            }
            Half::DropNode { id } => {
                if self.view.nodes.remove(&id).is_none() {
                    return;
                }
                let start = EdgeKey::new(id.clone(), "", "");
                let outs: Vec<EdgeKey> = self
                    .view
                    .out_records
                    .range(start..)
                    .map(|(key, _)| key)
                    .take_while(|key| key.from == id)
                    .cloned()
                    .collect();
                let ins: Vec<EdgeKey> = self
                    .in_by_head
                    .range((id.clone(), EdgeKey::new("", "", ""))..)
                    .take_while(|(head, _)| *head == id)
                    .map(|(_, key)| key.clone())
                    .collect();
                for (key, held) in outs
                    .into_iter()
                    .map(|key| (key, Direction::Out))
                    .chain(ins.into_iter().map(|key| (key, Direction::In)))
                {
                    self.remove_record(&key, held);
                    let other = match held {
                        Direction::Out => Direction::In,
                        Direction::In => Direction::Out,
                    };
                    let other_partition = self.partition_of(key.holder(other));
                    if other_partition == partition {
                        self.remove_record(&key, other);
                        self.settle_edge(&key);
                    } else {
                        let half = Half::RemoveRecords {
                            key,
                            directions: vec![other],
                        };
                        self.send(other_partition, half);
                    }
                }
            }
            Half::AddRecords {
                key,
                directions,
                props,
            } => {
                // The partition checks the endpoints it holds (both, for an edge inside it).
                let possible = directions.iter().all(|&direction| {
                    self.view.nodes.contains_key(key.holder(direction))
                        && self.record(&key, direction).is_none()
                });
                if possible {
                    for direction in directions {
                        let state = EdgeState {
                            version: 1,
                            props: props.clone(),
                        };
                        self.insert_record(&key, direction, state);
                    }
                }
            }
            Half::SetRecords {
                key,
                directions,
                props,
                if_version,
            } => {
                let current: Vec<Option<EdgeState>> = directions
                    .iter()
                    .map(|&direction| self.record(&key, direction).cloned())
                    .collect();
                let possible = current.iter().all(|state| {
                    state
                        .as_ref()
                        .is_some_and(|s| if_version.is_none_or(|v| v == s.version))
                });
                if possible {
                    for (direction, state) in directions.into_iter().zip(current) {
                        if let Some(state) = state {
                            self.insert_record(&key, direction, merged(&state, &props));
                        }
                    }
                }
            }
            Half::RemoveRecords { key, directions } => {
                for direction in directions {
                    self.remove_record(&key, direction);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockstep_topologies::graph::invariants::{census, check, Violation};
    use lockstep_topologies::graph::workload::{Workload, WorkloadConfig};
    use lockstep_topologies::graph::Outcome;

    fn network(straggler_probability: f64, seed: u64) -> NetworkConfig {
        NetworkConfig {
            partitions: 2,
            delay_s: 0.001,
            straggler_probability,
            straggler_delay_mean_s: 0.010,
            seed,
        }
    }

    /// rosa on partition 0, karl on partition 1.
    fn placement(node: &str) -> u32 {
        u32::from(node == "karl")
    }

    fn set(since: &str) -> Command {
        Command::SetEdgeProps {
            from: "rosa".into(),
            to: "karl".into(),
            label: "FOLLOWS".into(),
            props: [("since".to_string(), since.to_string())].into(),
            if_version: None,
        }
    }

    fn add_edge() -> Command {
        Command::AddEdge {
            from: "rosa".into(),
            to: "karl".into(),
            label: "FOLLOWS".into(),
            props: Props::new(),
        }
    }

    /// rosa follows karl, settled; then `racing`, 0.1 ms apart.
    fn race(straggler_probability: f64, seed: u64, racing: &[Command]) -> Uncoordinated {
        let mut store = Uncoordinated::new(network(straggler_probability, seed));
        for (i, command) in [
            Command::AddNode {
                id: "rosa".into(),
                props: Props::new(),
            },
            Command::AddNode {
                id: "karl".into(),
                props: Props::new(),
            },
        ]
        .iter()
        .chain([add_edge()].iter())
        .enumerate()
        {
            store.issue(i as f64, command, placement);
        }
        for (i, command) in racing.iter().enumerate() {
            store.issue(10.0 + i as f64 * 0.0001, command, placement);
        }
        store.settled()
    }

    /// The small workload on four partitions; `celebrity_deletes` per million commands.
    fn run_workload(
        straggler_probability: f64,
        celebrity_deletes: u64,
    ) -> (Workload, Uncoordinated) {
        let config = WorkloadConfig {
            hot_node_delete_per_million: celebrity_deletes,
            ..WorkloadConfig::small()
        };
        let mut workload = Workload::new(3, config);
        let mut store = Uncoordinated::new(NetworkConfig {
            partitions: 4,
            ..network(straggler_probability, 1)
        });
        for update in 1..=30_000u32 {
            let (command, outcome) = workload.next_with_outcome();
            if outcome == Outcome::Applied {
                store.issue(f64::from(update) / 10_000.0, &command, |node| {
                    workload.community_of(node) % 4
                });
            }
        }
        (workload, store.settled())
    }

    #[test]
    fn without_stragglers_only_the_second_hop_of_a_node_delete_races() {
        // Halves arrive in the order they were sent. But a deleted node's edges are unlinked one
        // hop after the delete arrives, and a celebrity (the only kind of node that comes back)
        // re-created with an edge meanwhile finds its old record on one side only.
        let (workload, settled) = run_workload(0.0, 2_000);
        assert_eq!(settled.overtaken_share(), 0.0);
        assert!(
            settled.crossing_share() > 0.2,
            "{}",
            settled.crossing_share()
        );
        let events = settled.corruption_events();
        assert!(!events.is_empty());
        let celebrities = workload.hot_nodes();
        assert!(events
            .iter()
            .all(|key| celebrities.contains(&key.from) || celebrities.contains(&key.to)));
    }

    #[test]
    fn stragglers_let_two_sets_leave_the_records_diverged_for_good() {
        let key = EdgeKey::new("rosa", "FOLLOWS", "karl");
        let mut diverged = 0;
        for seed in 0..64 {
            let store = race(0.5, seed, &[set("2010"), set("2015")]);
            let violations = check(store.view());
            if violations.is_empty() {
                // Both partitions saw the same order, whichever it was.
                assert!(store.corruption_events().is_empty());
                continue;
            }
            diverged += 1;
            assert!(
                matches!(&violations[..], [Violation::Diverged { edge, .. }] if *edge == key),
                "seed {seed}: {violations:?}"
            );
            assert_eq!(store.corruption_events(), std::slice::from_ref(&key));
        }
        assert!(
            (1..64).contains(&diverged),
            "{diverged} of 64 seeds diverged"
        );
    }

    #[test]
    fn stragglers_let_a_delete_and_a_re_add_leave_a_half_edge() {
        let delete = Command::DeleteEdge {
            from: "rosa".into(),
            to: "karl".into(),
            label: "FOLLOWS".into(),
        };
        let half_edges = (0..64)
            .filter(|seed| {
                let store = race(0.5, *seed, &[delete.clone(), add_edge()]);
                check(store.view())
                    .iter()
                    .any(|v| matches!(v, Violation::HalfEdge { .. }))
            })
            .count();
        assert!((1..64).contains(&half_edges), "{half_edges} of 64");
    }

    #[test]
    fn deleting_a_node_reaches_the_other_records_of_its_edges() {
        let mut store = race(0.0, 0, &[]);
        store.issue(
            20.0,
            &Command::AddEdge {
                from: "karl".into(),
                to: "rosa".into(),
                label: "KNOWS".into(),
                props: Props::new(),
            },
            placement,
        );
        store.issue(30.0, &Command::DeleteNode { id: "karl".into() }, placement);
        let settled = store.settled();
        let census = census(settled.view());
        assert_eq!((census.nodes, census.edges, census.corrupted), (1, 0, 0));
    }

    #[test]
    fn settling_a_copy_leaves_the_store_running_and_is_deterministic() {
        let mut store = race(0.0, 0, &[]);
        store.issue(20.0, &set("2010"), placement);
        let before = store.view().clone();
        let settled = store.settled();
        assert_eq!(store.view(), &before, "the half is still on its way");
        assert_ne!(settled.view(), &before);
        let again = race(0.5, 9, &[set("2010"), set("2015")]);
        assert_eq!(
            again.view(),
            race(0.5, 9, &[set("2010"), set("2015")]).view()
        );
    }
}

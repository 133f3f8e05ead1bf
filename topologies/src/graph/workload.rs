//! A seeded, scale-free, contended graph workload: one stream of commands, deterministic for a
//! seed, with the features that corrupt edge-distributed stores.
//!
//! - **Scale-free**: heads of new edges are picked by preferential attachment (in proportion to
//!   how many edges they have been given), so in-degrees follow a power law and a few
//!   *celebrities* (the hot nodes, which start with a head start) hold a large share of edges.
//! - **Hot edges**: a few edges among celebrities take a fixed share of all edge updates and
//!   deletes, and are re-created when gone: many conflicting updates close together in time.
//! - **Hot nodes**: celebrities are occasionally deleted (with every incident edge) and
//!   re-created, racing the stream of edges added to them.
//! - **Locality**: every node belongs to a community and most new edges stay inside their
//!   tail's community; a store that places one community per partition (as a good graph
//!   partitioner would) sees about 30% of edges cross partitions with the defaults.
//! - **Steady size**: node adds and deletes balance, and edge adds balance edge and node
//!   deletes at about three edges per node, so the graph keeps its size over a long run. A
//!   deleted celebrity comes back as a new node, without its old popularity.
//!
//! The generator keeps its own sequential [`Model`] to aim commands at what exists (as real
//! clients do after reading); [`Workload::next`] returns each command with the outcome the
//! model gave it, which is the outcome every correct execution must give too.

use std::collections::BTreeMap;

use super::model::Model;
use super::{Command, EdgeKey, NodeId, Outcome, Props};
use crate::rng::SplitMix64;

/// The shape of a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadConfig {
    /// Ordinary nodes created first.
    pub nodes_initial: u64,
    /// Edges added (by preferential attachment) right after the nodes.
    pub edges_initial: u64,
    /// Celebrities, created first with a head start in preferential attachment.
    pub hot_nodes: u64,
    /// `FOLLOWS` edges among celebrities that take [`hot_edge_per_mille`](Self::hot_edge_per_mille)
    /// of edge updates and deletes.
    pub hot_edges: u64,
    /// Per mille of `set_edge_props` and `delete_edge` commands aimed at a hot edge.
    pub hot_edge_per_mille: u64,
    /// Per million commands that delete a celebrity, with all its edges.
    pub hot_node_delete_per_million: u64,
    /// Locality groups of nodes.
    pub communities: u32,
    /// Per mille of new edges whose head is picked in the tail's community.
    pub local_per_mille: u64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        Self {
            nodes_initial: 20_000,
            edges_initial: 60_000,
            hot_nodes: 8,
            hot_edges: 16,
            hot_edge_per_mille: 250,
            hot_node_delete_per_million: 10,
            communities: 8,
            local_per_mille: 650,
        }
    }
}

impl WorkloadConfig {
    /// A small graph for tests: a few hundred nodes, the same mix.
    pub fn small() -> Self {
        Self {
            nodes_initial: 300,
            edges_initial: 600,
            hot_nodes: 4,
            hot_edges: 6,
            hot_edge_per_mille: 150,
            hot_node_delete_per_million: 500,
            communities: 4,
            local_per_mille: 650,
        }
    }
}

/// Edge labels, the first the most common.
pub const LABELS: [&str; 3] = ["FOLLOWS", "LIKES", "KNOWS"];
/// Property keys that updates set; updates of the same key do not commute.
const PROP_KEYS: [&str; 4] = ["since", "weight", "note", "rank"];
/// Tries to find a live element in a list that holds dead ones too before giving up.
const SAMPLE_TRIES: usize = 16;
/// Per mille of preferential-attachment picks replaced by a uniform pick, so that new nodes
/// get their first edges.
const UNIFORM_HEAD_PER_MILLE: u64 = 200;
/// Entries each celebrity starts with in the attachment pools: its head start.
const HOT_NODE_HEAD_START: usize = 50;

/// The command mix in steady state, per mille; the rest are `set_edge_props`.
const ADD_NODE_PER_MILLE: u64 = 15;
const DELETE_NODE_PER_MILLE: u64 = 15;
const ADD_EDGE_PER_MILLE: u64 = 110;
const DELETE_EDGE_PER_MILLE: u64 = 30;

/// A workload: call [`next`](Self::next) for each command.
#[derive(Debug, Clone)]
pub struct Workload {
    config: WorkloadConfig,
    rng: SplitMix64,
    model: Model,
    /// Commands issued so far.
    issued: u64,
    /// Ordinary nodes created so far (ids `n0`, `n1`, …).
    created: u64,
    hot_nodes: Vec<NodeId>,
    hot_edges: Vec<EdgeKey>,
    community: BTreeMap<NodeId, u32>,
    /// Nodes by community, dead ones dropped lazily when picked.
    community_nodes: Vec<Vec<NodeId>>,
    /// One entry per edge head ever attached, by community: picking an entry is picking a
    /// node in proportion to its attachments.
    community_pools: Vec<Vec<NodeId>>,
    /// Edges ever added, dead ones dropped lazily when picked.
    edges: Vec<EdgeKey>,
}

impl Workload {
    /// A workload of shape `config`, seeded by `seed`.
    pub fn new(seed: u64, config: WorkloadConfig) -> Self {
        let communities = config.communities.max(1) as usize;
        let hot_nodes: Vec<NodeId> = (0..config.hot_nodes).map(|i| format!("celeb{i}")).collect();
        let mut hot_edges = Vec::new();
        'pairs: for from in &hot_nodes {
            for to in &hot_nodes {
                if hot_edges.len() as u64 == config.hot_edges {
                    break 'pairs;
                }
                if from != to {
                    hot_edges.push(EdgeKey::new(from.clone(), LABELS[0], to.clone()));
                }
            }
        }
        let mut workload = Self {
            rng: SplitMix64::new(seed),
            model: Model::new(),
            issued: 0,
            created: 0,
            hot_nodes,
            hot_edges,
            community: BTreeMap::new(),
            community_nodes: vec![Vec::new(); communities],
            community_pools: vec![Vec::new(); communities],
            edges: Vec::new(),
            config,
        };
        for (i, id) in workload.hot_nodes.iter().enumerate() {
            workload
                .community
                .insert(id.clone(), (i % communities) as u32);
        }
        workload
    }

    /// The sequential model after every command so far.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The community `node` belongs to (0 for a node this workload never named).
    pub fn community_of(&self, node: &str) -> u32 {
        self.community.get(node).copied().unwrap_or(0)
    }

    /// The celebrities.
    pub fn hot_nodes(&self) -> &[NodeId] {
        &self.hot_nodes
    }

    /// The hot edges.
    pub fn hot_edges(&self) -> &[EdgeKey] {
        &self.hot_edges
    }

    /// The next command, and the outcome the sequential model gave it.
    pub fn next_with_outcome(&mut self) -> (Command, Outcome) {
        let command = self.next_command();
        let outcome = self.model.apply(&command);
        self.issued += 1;
        if outcome == Outcome::Applied {
            self.observe_applied(&command);
        }
        (command, outcome)
    }

    fn next_command(&mut self) -> Command {
        let setup_nodes = self.config.hot_nodes + self.config.nodes_initial;
        if self.issued < self.config.hot_nodes {
            return add_node(&self.hot_nodes[self.issued as usize]);
        }
        if self.issued < setup_nodes {
            return self.new_node();
        }
        let setup_edges = setup_nodes + self.config.hot_edges;
        if self.issued < setup_edges {
            let key = self.hot_edges[(self.issued - setup_nodes) as usize].clone();
            return self.add_edge(key);
        }
        if self.issued < setup_edges + self.config.edges_initial {
            return self.new_edge();
        }
        if self.rng.below(1_000_000) < self.config.hot_node_delete_per_million {
            let i = self.rng.below(self.hot_nodes.len() as u64) as usize;
            if let Some(id) = self.hot_nodes.get(i) {
                return Command::DeleteNode { id: id.clone() };
            }
        }
        let roll = self.rng.below(1000);
        let mut threshold = ADD_NODE_PER_MILLE;
        if roll < threshold {
            // A deleted celebrity comes back first: its fans are still out there.
            let dead = self
                .hot_nodes
                .iter()
                .find(|id| !self.model.nodes.contains_key(*id));
            return match dead {
                Some(id) => add_node(id),
                None => self.new_node(),
            };
        }
        threshold += DELETE_NODE_PER_MILLE;
        if roll < threshold {
            let c = self.rng.below(self.community_nodes.len() as u64) as usize;
            return match self.live_node(c) {
                Some(id) => Command::DeleteNode { id },
                None => self.new_node(),
            };
        }
        threshold += ADD_EDGE_PER_MILLE;
        if roll < threshold {
            return self.new_edge();
        }
        threshold += DELETE_EDGE_PER_MILLE;
        let deleting = roll < threshold;
        let hot = self.rng.below(1000) < self.config.hot_edge_per_mille;
        let key = if hot {
            let i = self.rng.below(self.hot_edges.len() as u64) as usize;
            self.hot_edges.get(i).cloned()
        } else {
            self.live_edge()
        };
        let Some(key) = key else {
            return self.new_edge();
        };
        let Some(state) = self.model.edges.get(&key) else {
            // A hot edge that is gone is wanted back.
            return self.add_edge(key);
        };
        if deleting {
            return Command::DeleteEdge {
                from: key.from,
                to: key.to,
                label: key.label,
            };
        }
        // A quarter of updates are compare-and-set after a read; a fifth of those read a
        // version that another update has since replaced.
        let if_version = (self.rng.below(4) == 0).then(|| {
            if self.rng.below(5) == 0 {
                state.version.saturating_sub(1).max(1)
            } else {
                state.version
            }
        });
        let props = self.props();
        Command::SetEdgeProps {
            from: key.from,
            to: key.to,
            label: key.label,
            props,
            if_version,
        }
    }

    fn observe_applied(&mut self, command: &Command) {
        match command {
            Command::AddNode { id, .. } => {
                let community = self.community_of(id) as usize;
                if let Some(nodes) = self.community_nodes.get_mut(community) {
                    nodes.push(id.clone());
                }
                if self.hot_nodes.contains(id) {
                    if let Some(pool) = self.community_pools.get_mut(community) {
                        pool.extend(std::iter::repeat_n(id.clone(), HOT_NODE_HEAD_START));
                    }
                }
            }
            Command::DeleteNode { id } if self.hot_nodes.contains(id) => {
                // A celebrity comes back as a new node: its old popularity goes with it. (Other
                // nodes never come back, so their entries are dropped lazily when picked.)
                let community = self.community_of(id) as usize;
                if let Some(pool) = self.community_pools.get_mut(community) {
                    pool.retain(|entry| entry != id);
                }
            }
            Command::AddEdge { to, .. } => {
                let community = self.community_of(to) as usize;
                if let Some(pool) = self.community_pools.get_mut(community) {
                    pool.push(to.clone());
                }
                self.edges.extend(command.edge_key());
            }
            Command::DeleteNode { .. }
            | Command::SetEdgeProps { .. }
            | Command::DeleteEdge { .. } => {}
        }
    }

    fn new_node(&mut self) -> Command {
        let id = format!("n{}", self.created);
        let community = (self.created % self.community_nodes.len() as u64) as u32;
        self.created += 1;
        self.community.insert(id.clone(), community);
        add_node(&id)
    }

    /// A live node of community `c`, uniformly.
    fn live_node(&mut self, c: usize) -> Option<NodeId> {
        let model = &self.model;
        sample_live(&mut self.rng, &mut self.community_nodes[c], |id| {
            model.nodes.contains_key(id)
        })
    }

    /// A live edge, uniformly.
    fn live_edge(&mut self) -> Option<EdgeKey> {
        let model = &self.model;
        sample_live(&mut self.rng, &mut self.edges, |key| {
            model.edges.contains_key(key)
        })
    }

    /// A head for an edge out of community `c`: by preferential attachment, mostly inside `c`.
    fn head(&mut self, c: usize) -> Option<NodeId> {
        let communities = self.community_nodes.len() as u64;
        let local = self.rng.below(1000) < self.config.local_per_mille;
        let community = if local {
            c
        } else {
            self.rng.below(communities) as usize
        };
        if self.rng.below(1000) < UNIFORM_HEAD_PER_MILLE {
            return self.live_node(community);
        }
        let model = &self.model;
        sample_live(&mut self.rng, &mut self.community_pools[community], |id| {
            model.nodes.contains_key(id)
        })
        .or_else(|| self.live_node(community))
    }

    /// An edge between live nodes, not yet there if possible.
    fn new_edge(&mut self) -> Command {
        let c = self.rng.below(self.community_nodes.len() as u64) as usize;
        let (Some(from), Some(to)) = (self.live_node(c), self.head(c)) else {
            return self.new_node();
        };
        let label = if self.rng.below(10) < 6 {
            LABELS[0]
        } else {
            LABELS[1 + self.rng.below(2) as usize]
        };
        self.add_edge(EdgeKey::new(from, label, to))
    }

    fn add_edge(&mut self, key: EdgeKey) -> Command {
        let props = self.props();
        Command::AddEdge {
            from: key.from,
            to: key.to,
            label: key.label,
            props,
        }
    }

    fn props(&mut self) -> Props {
        let mut props = Props::new();
        let keys = 1 + usize::from(self.rng.below(5) == 0);
        for _ in 0..keys {
            let key = PROP_KEYS[self.rng.below(PROP_KEYS.len() as u64) as usize];
            let value = if key == "since" {
                (1990 + self.rng.below(36)).to_string()
            } else {
                self.rng.below(10_000).to_string()
            };
            props.insert(key.to_string(), value);
        }
        props
    }
}

fn add_node(id: &NodeId) -> Command {
    Command::AddNode {
        id: id.clone(),
        props: Props::new(),
    }
}

/// A uniformly picked element of `list` for which `alive` holds; dead ones met on the way are
/// dropped (the lists are only ever appended to, so they shed the dead lazily).
fn sample_live<T: Clone>(
    rng: &mut SplitMix64,
    list: &mut Vec<T>,
    alive: impl Fn(&T) -> bool,
) -> Option<T> {
    for _ in 0..SAMPLE_TRIES {
        if list.is_empty() {
            return None;
        }
        let i = rng.below(list.len() as u64) as usize;
        if alive(&list[i]) {
            return Some(list[i].clone());
        }
        list.swap_remove(i);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::invariants::check;
    use crate::graph::RejectReason;

    fn run(seed: u64, config: WorkloadConfig, commands: usize) -> (Workload, Vec<Command>) {
        let mut workload = Workload::new(seed, config);
        let stream = (0..commands)
            .map(|_| workload.next_with_outcome().0)
            .collect();
        (workload, stream)
    }

    #[test]
    fn is_deterministic_for_a_seed() {
        let (_, a) = run(7, WorkloadConfig::small(), 5_000);
        let (_, b) = run(7, WorkloadConfig::small(), 5_000);
        let (_, c) = run(8, WorkloadConfig::small(), 5_000);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn in_degrees_are_scale_free_with_celebrities_on_top() {
        let (workload, _) = run(3, WorkloadConfig::default(), 150_000);
        let model = workload.model();
        let mut in_degree: BTreeMap<&str, usize> = BTreeMap::new();
        for key in model.edges.keys() {
            *in_degree.entry(key.to.as_str()).or_default() += 1;
        }
        let nodes = model.nodes.len();
        let mean = model.edges.len() as f64 / nodes as f64;
        let mut degrees: Vec<usize> = in_degree.values().copied().collect();
        degrees.sort_unstable_by(|a, b| b.cmp(a));
        // A heavy tail: the top node holds hundreds of times the mean, and the top 1% of nodes
        // a large share of all edges.
        assert!(
            degrees[0] as f64 > 100.0 * mean,
            "top {} mean {mean}",
            degrees[0]
        );
        let top_percent: usize = degrees.iter().take(nodes / 100).sum();
        assert!(
            top_percent * 5 > model.edges.len(),
            "top 1% hold {top_percent} of {}",
            model.edges.len()
        );
        let celebrities_alive = workload
            .hot_nodes()
            .iter()
            .filter(|id| model.nodes.contains_key(*id))
            .count();
        assert!(celebrities_alive > 0);
    }

    #[test]
    fn keeps_a_steady_size_with_about_a_third_of_edges_across_communities() {
        let config = WorkloadConfig::default();
        let mut workload = Workload::new(5, config.clone());
        let mut sizes = Vec::new();
        for i in 1..=300_000 {
            workload.next_with_outcome();
            if i % 100_000 == 0 {
                sizes.push((workload.model().nodes.len(), workload.model().edges.len()));
            }
        }
        let model = workload.model();
        for (nodes, edges) in &sizes {
            let nodes_initial = config.nodes_initial as usize;
            assert!(
                (nodes_initial * 8 / 10..nodes_initial * 12 / 10).contains(nodes),
                "{sizes:?}"
            );
            assert!((nodes * 2..nodes * 4).contains(edges), "{sizes:?}");
        }
        let crossing = model
            .edges
            .keys()
            .filter(|key| workload.community_of(&key.from) != workload.community_of(&key.to))
            .count();
        let share = crossing as f64 / model.edges.len() as f64;
        assert!((0.22..0.4).contains(&share), "crossing share {share}");
    }

    #[test]
    fn mixes_applied_commands_with_every_kind_of_conflict() {
        let (workload, _) = run(11, WorkloadConfig::small(), 30_000);
        assert!(check(&workload.model().view()).is_empty());
        let mut workload = Workload::new(11, WorkloadConfig::small());
        let mut counts: BTreeMap<Option<RejectReason>, u32> = BTreeMap::new();
        let mut kinds: BTreeMap<&'static str, u32> = BTreeMap::new();
        for _ in 0..30_000 {
            let (command, outcome) = workload.next_with_outcome();
            let reason = match outcome {
                Outcome::Applied => None,
                Outcome::Rejected(reason) => Some(reason),
            };
            *counts.entry(reason).or_default() += 1;
            let kind = match command {
                Command::AddNode { .. } => "add_node",
                Command::DeleteNode { .. } => "delete_node",
                Command::AddEdge { .. } => "add_edge",
                Command::SetEdgeProps { .. } => "set_edge_props",
                Command::DeleteEdge { .. } => "delete_edge",
            };
            *kinds.entry(kind).or_default() += 1;
        }
        assert!(counts[&None] > 30_000 * 8 / 10, "{counts:?}");
        for reason in [RejectReason::AlreadyExists, RejectReason::VersionConflict] {
            assert!(
                counts.get(&Some(reason)).is_some_and(|n| *n > 0),
                "{counts:?}"
            );
        }
        assert_eq!(kinds.len(), 5, "{kinds:?}");
        assert!(kinds["set_edge_props"] > kinds["add_edge"], "{kinds:?}");
    }
}

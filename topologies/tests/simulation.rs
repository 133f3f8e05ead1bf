//! Deterministic simulation of the reference topologies (see `lockstep-testkit`): seeded
//! interleavings of concurrent clients, arbitrary batch boundaries, restarts and failed fsyncs,
//! checked after every step against the sequential models and the invariants.
//!
//! `LOCKSTEP_SIM_SEEDS=5000 cargo test --release -p lockstep-topologies --test simulation`
//! runs more seeds; `LOCKSTEP_SIM_SEED=n` reproduces one.

use std::collections::BTreeMap;
use std::ops::Bound;

use lockstep::{Depot, EngineBuilder, Snapshot};
use lockstep_testkit::rand::Rng;
use lockstep_testkit::{check_seeds, SimConfig, SimRng, SimSummary, SimTarget};
use lockstep_topologies::components::invariants::check;
use lockstep_topologies::components::model::Model;
use lockstep_topologies::components::{
    components, read_view, Command, Components, DeleteMode, Outcome, TOPOLOGY,
};
use lockstep_topologies::counter::{self, CountEvent, Counter};
use lockstep_topologies::graph::{self, Graph};

/// Seeds each test runs by default (CI); more with `LOCKSTEP_SIM_SEEDS`.
const SEEDS_DEFAULT: u64 = 200;

struct ComponentsSim {
    handles: Components,
}

impl SimTarget for ComponentsSim {
    type Command = Command;
    type Outcome = Outcome;
    type Model = Model;

    fn topology(&self) -> &str {
        TOPOLOGY
    }

    fn depot(&self) -> &Depot<Command> {
        &self.handles.commands
    }

    fn declare(&self, builder: EngineBuilder) -> EngineBuilder {
        builder
            .depot(&self.handles.commands)
            .topology(self.handles.topology.clone())
    }

    fn new_model(&self) -> Model {
        Model::new()
    }

    /// Ten ids shared by every client: creates race creates, reparents race deletes, and
    /// reparents close cycles.
    fn generate(&self, rng: &mut SimRng, _client: u32, _model: &Model) -> Command {
        let id = |rng: &mut SimRng| format!("c{}", rng.gen_range(0..10));
        let maybe_id = |rng: &mut SimRng, p: f64| rng.gen_bool(p).then(|| id(rng));
        let if_version = |rng: &mut SimRng| rng.gen_bool(0.3).then(|| rng.gen_range(1..4));
        match rng.gen_range(0..11) {
            0..=3 => Command::Create {
                id: id(rng),
                parent: maybe_id(rng, 0.7),
                attrs: Default::default(),
            },
            4..=5 => Command::Update {
                id: id(rng),
                attrs: [("k".to_string(), rng.gen_range(0..3).to_string())].into(),
                if_version: if_version(rng),
            },
            6..=8 => Command::Reparent {
                id: id(rng),
                parent: maybe_id(rng, 0.8),
                if_version: if_version(rng),
            },
            _ => Command::Delete {
                id: id(rng),
                mode: if rng.gen_bool(0.5) {
                    DeleteMode::Cascade
                } else {
                    DeleteMode::Restrict
                },
            },
        }
    }

    fn apply(&self, model: &mut Model, command: &Command) -> Option<Outcome> {
        Some(model.apply(command))
    }

    fn check(&self, snapshot: &Snapshot<'_>, model: &Model) -> Result<(), String> {
        let view = read_view(snapshot, &self.handles).map_err(|e| e.to_string())?;
        let violations = check(&view);
        if !violations.is_empty() {
            return Err(format!("invariants broken: {violations:?}"));
        }
        let expected = model.view();
        if view != expected {
            return Err(format!(
                "state differs from the model:\n  engine {view:?}\n  model  {expected:?}"
            ));
        }
        Ok(())
    }
}

/// Counts per key and totals per group: every event sends a message to its group's
/// partition, so a batch that committed one side without the other shows.
struct CounterSim {
    handles: Counter,
}

#[derive(Debug, Default)]
struct CounterModel {
    counts: BTreeMap<String, i64>,
    group_totals: BTreeMap<String, i64>,
}

impl SimTarget for CounterSim {
    type Command = CountEvent;
    type Outcome = i64;
    type Model = CounterModel;

    fn topology(&self) -> &str {
        counter::TOPOLOGY
    }

    fn depot(&self) -> &Depot<CountEvent> {
        &self.handles.events
    }

    fn declare(&self, builder: EngineBuilder) -> EngineBuilder {
        builder
            .depot(&self.handles.events)
            .topology(self.handles.topology.clone())
    }

    fn new_model(&self) -> CounterModel {
        CounterModel::default()
    }

    fn generate(&self, rng: &mut SimRng, client: u32, _model: &CounterModel) -> CountEvent {
        CountEvent {
            key: format!("k{}", rng.gen_range(0..6)),
            group: format!("g{client}"),
            amount: rng.gen_range(-3..5),
        }
    }

    fn apply(&self, model: &mut CounterModel, event: &CountEvent) -> Option<i64> {
        let count = model.counts.entry(event.key.clone()).or_default();
        *count += event.amount;
        *model.group_totals.entry(event.group.clone()).or_default() += event.amount;
        Some(*count)
    }

    fn check(&self, snapshot: &Snapshot<'_>, model: &CounterModel) -> Result<(), String> {
        let all = |pstate| -> Result<BTreeMap<String, i64>, String> {
            Ok(snapshot
                .range(pstate, Bound::Unbounded, Bound::Unbounded, usize::MAX)
                .map_err(|e| e.to_string())?
                .into_iter()
                .collect())
        };
        let counts = all(&self.handles.counts)?;
        let totals = all(&self.handles.group_totals)?;
        if counts != model.counts || totals != model.group_totals {
            return Err(format!(
                "engine counts {counts:?} totals {totals:?}, model counts {:?} totals {:?}",
                model.counts, model.group_totals
            ));
        }
        // Every count has been added to exactly one group total: the two sides of each event
        // committed together.
        let counted: i64 = counts.values().sum();
        let totalled: i64 = totals.values().sum();
        if counted != totalled {
            return Err(format!(
                "counts sum to {counted}, group totals to {totalled}"
            ));
        }
        Ok(())
    }
}

/// The edge-distributed graph, contended: six nodes, two of them "celebrities" in most edges,
/// two labels, so the same few edges are added, updated (with and without compare-and-set),
/// deleted and orphaned by node deletes from every client at once.
struct GraphSim {
    handles: Graph,
}

impl SimTarget for GraphSim {
    type Command = graph::Command;
    type Outcome = graph::Outcome;
    type Model = graph::model::Model;

    fn topology(&self) -> &str {
        graph::TOPOLOGY
    }

    fn depot(&self) -> &Depot<graph::Command> {
        &self.handles.commands
    }

    fn declare(&self, builder: EngineBuilder) -> EngineBuilder {
        builder
            .depot(&self.handles.commands)
            .topology(self.handles.topology.clone())
    }

    fn new_model(&self) -> Self::Model {
        graph::model::Model::new()
    }

    fn generate(&self, rng: &mut SimRng, client: u32, _model: &Self::Model) -> graph::Command {
        let node = |rng: &mut SimRng| {
            if rng.gen_bool(0.6) {
                format!("celebrity{}", rng.gen_range(0..2))
            } else {
                format!("n{}", rng.gen_range(0..4))
            }
        };
        let label = |rng: &mut SimRng| ["follows", "knows"][rng.gen_range(0..2)].to_string();
        let props = |rng: &mut SimRng| {
            [(
                "since".to_string(),
                format!("{}", 2010 + rng.gen_range(0..3) + client),
            )]
            .into()
        };
        match rng.gen_range(0..12) {
            0..=2 => graph::Command::AddNode {
                id: node(rng),
                props: Default::default(),
            },
            3 => graph::Command::DeleteNode { id: node(rng) },
            4..=6 => graph::Command::AddEdge {
                from: node(rng),
                to: node(rng),
                label: label(rng),
                props: props(rng),
            },
            7..=9 => graph::Command::SetEdgeProps {
                from: node(rng),
                to: node(rng),
                label: label(rng),
                props: props(rng),
                if_version: rng.gen_bool(0.3).then(|| rng.gen_range(1..4)),
            },
            _ => graph::Command::DeleteEdge {
                from: node(rng),
                to: node(rng),
                label: label(rng),
            },
        }
    }

    fn apply(&self, model: &mut Self::Model, command: &graph::Command) -> Option<graph::Outcome> {
        Some(model.apply(command))
    }

    fn check(&self, snapshot: &Snapshot<'_>, model: &Self::Model) -> Result<(), String> {
        let view = graph::read_view(snapshot, &self.handles).map_err(|e| e.to_string())?;
        let violations = graph::invariants::check(&view);
        if !violations.is_empty() {
            return Err(format!("reciprocal consistency broken: {violations:?}"));
        }
        let expected = model.view();
        if view != expected {
            return Err(format!(
                "state differs from the model:\n  engine {view:?}\n  model  {expected:?}"
            ));
        }
        Ok(())
    }
}

/// The schedule must actually reach the interesting places, or the test proves little: faults
/// fired, records processed, records trimmed and their outcomes seen deleted.
fn assert_schedule_reached(summary: &SimSummary) {
    assert!(summary.restarts > 0, "no restart: {summary}");
    assert!(summary.faults_fired > 0, "no fault fired: {summary}");
    assert!(summary.records_checked > 0, "nothing processed: {summary}");
    assert!(
        summary.records_trimmed > 0,
        "retention never trimmed: {summary}"
    );
    assert!(
        summary.outcomes_trimmed > 0,
        "no outcome was seen deleted with its record: {summary}"
    );
}

#[test]
fn graph_stays_reciprocally_consistent_through_interleavings_crashes_and_failed_fsyncs() {
    let target = GraphSim {
        handles: graph::graph(4).expect("declare"),
    };
    let summary = check_seeds(&target, SimConfig::default(), SEEDS_DEFAULT);
    assert_schedule_reached(&summary);
}

#[test]
fn components_survive_interleavings_crashes_and_failed_fsyncs() {
    let target = ComponentsSim {
        handles: components(4).expect("declare"),
    };
    let summary = check_seeds(&target, SimConfig::default(), SEEDS_DEFAULT);
    assert_schedule_reached(&summary);
}

#[test]
fn counter_survives_interleavings_crashes_and_failed_fsyncs() {
    let target = CounterSim {
        handles: counter::counter(3).expect("declare"),
    };
    let summary = check_seeds(&target, SimConfig::default(), SEEDS_DEFAULT);
    assert_schedule_reached(&summary);
}

#[test]
fn a_seed_replays_the_same_run() {
    let target = CounterSim {
        handles: counter::counter(3).expect("declare"),
    };
    let simulation = lockstep_testkit::Simulation::new(&target, SimConfig::default());
    let first = simulation.run_seed(7).expect("seed 7 passes");
    let second = simulation.run_seed(7).expect("seed 7 passes again");
    assert_eq!(first, second);
    let other = simulation.run_seed(8).expect("seed 8 passes");
    assert_ne!(first, other, "different seeds should schedule differently");
}

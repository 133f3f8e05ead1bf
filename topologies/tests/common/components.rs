//! The component topology in the harness, its command builders and property-test strategies.

use lockstep::{RecordId, Snapshot};
use lockstep_topologies::components::invariants::{check, ComponentsView, Violation};
use lockstep_topologies::components::model::Model;
use lockstep_topologies::components::{
    components, read_outcome, read_view, Command, Components, DeleteMode, Outcome, TOPOLOGY,
};
use proptest::prelude::*;

use super::{Reference, TopologyHarness};

impl Reference for Components {
    type Command = Command;
    type Outcome = Outcome;
    type Model = Model;
    type View = ComponentsView;
    type Violation = Violation;
    const TOPOLOGY: &'static str = TOPOLOGY;

    fn declare(partitions: u32) -> Self {
        components(partitions).expect("declare")
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

    fn model_view(model: &Model) -> ComponentsView {
        model.view()
    }

    fn read_view(&self, snapshot: &Snapshot<'_>) -> ComponentsView {
        read_view(snapshot, self).expect("read view")
    }

    fn read_outcome(snapshot: &Snapshot<'_>, record: RecordId) -> Option<Outcome> {
        read_outcome(snapshot, record)
            .expect("read outcome")
            .map(|(o, _)| o)
    }

    fn check(view: &ComponentsView) -> Vec<Violation> {
        check(view)
    }
}

/// The component topology next to its model.
pub type Harness = TopologyHarness<Components>;

pub fn create(id: &str, parent: Option<&str>) -> Command {
    Command::Create {
        id: id.into(),
        parent: parent.map(Into::into),
        attrs: Default::default(),
    }
}

pub fn reparent(id: &str, parent: Option<&str>) -> Command {
    Command::Reparent {
        id: id.into(),
        parent: parent.map(Into::into),
        if_version: None,
    }
}

pub fn delete(id: &str, mode: DeleteMode) -> Command {
    Command::Delete {
        id: id.into(),
        mode,
    }
}

pub fn update(id: &str, key: &str, value: &str, if_version: Option<u64>) -> Command {
    Command::Update {
        id: id.into(),
        attrs: [(key.to_string(), value.to_string())].into(),
        if_version,
    }
}

// ---- property-test strategies shared by the model and crash tests ----

/// A small id space, so commands collide often.
pub fn id() -> impl Strategy<Value = String> {
    (0u8..10).prop_map(|i| format!("c{i}"))
}

pub fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        4 => (id(), prop::option::weighted(0.7, id())).prop_map(|(id, parent)| Command::Create {
            id,
            parent,
            attrs: Default::default(),
        }),
        2 => (id(), 0u8..3, prop::option::of(1u64..4)).prop_map(|(id, v, if_version)| Command::Update {
            id,
            attrs: [("k".to_string(), v.to_string())].into(),
            if_version,
        }),
        3 => (id(), prop::option::weighted(0.8, id()), prop::option::weighted(0.2, 1u64..4))
            .prop_map(|(id, parent, if_version)| Command::Reparent { id, parent, if_version }),
        2 => (id(), any::<bool>()).prop_map(|(id, cascade)| Command::Delete {
            id,
            mode: if cascade { DeleteMode::Cascade } else { DeleteMode::Restrict },
        }),
    ]
}

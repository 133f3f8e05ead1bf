//! Runs the component topology on a real engine, batch by batch, next to the sequential model.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::path::Path;

use lockstep::{Engine, EngineOptions, RecordId};
use lockstep_topologies::components::invariants::{check, ComponentsView};
use lockstep_topologies::components::model::Model;
use lockstep_topologies::components::{
    components, read_outcome, read_view, Command, Components, Outcome,
};

pub struct Harness {
    pub engine: Option<Engine>,
    pub handles: Components,
    pub model: Model,
    pub options: EngineOptions,
    pub partitions: u32,
    /// Acknowledged, not yet consumed commands, in append order.
    pub pending: VecDeque<(RecordId, Command)>,
    /// Expected outcome of every consumed command.
    pub outcomes: Vec<(RecordId, Outcome)>,
}

impl Harness {
    pub fn open(dir: &Path, partitions: u32, records_max: usize) -> Self {
        let handles = components(partitions).expect("declare");
        let mut options = EngineOptions::manual();
        options.batch_records_max = records_max;
        let mut harness = Self {
            engine: None,
            handles,
            model: Model::new(),
            options,
            partitions,
            pending: VecDeque::new(),
            outcomes: Vec::new(),
        };
        harness.reopen(dir);
        harness
    }

    pub fn reopen(&mut self, dir: &Path) {
        self.engine = None;
        self.engine = Some(
            Engine::builder(dir)
                .options(self.options.clone())
                .depot(&self.handles.commands)
                .topology(self.handles.topology.clone())
                .open()
                .expect("open"),
        );
    }

    pub fn engine(&self) -> &Engine {
        self.engine.as_ref().expect("open engine")
    }

    pub fn append(&mut self, commands: &[Command]) -> Vec<RecordId> {
        let ids = self
            .engine()
            .append_many(&self.handles.commands, commands)
            .expect("append");
        for (id, command) in ids.iter().zip(commands) {
            self.pending.push_back((*id, command.clone()));
        }
        ids
    }

    /// Applies the next batch to the model exactly as the engine forms it: the longest prefix of
    /// the pending commands, in append order, in which no partition exceeds the cap; applied
    /// one at a time in that order.
    pub fn model_batch(&mut self) -> bool {
        let cap = self.options.batch_records_max;
        let mut per_partition = vec![0usize; self.partitions as usize];
        let mut take = 0;
        for (id, _) in &self.pending {
            if per_partition[id.partition as usize] >= cap {
                break;
            }
            per_partition[id.partition as usize] += 1;
            take += 1;
        }
        for (id, command) in self.pending.drain(..take).collect::<Vec<_>>() {
            let outcome = self.model.apply(&command);
            self.outcomes.push((id, outcome));
        }
        take > 0
    }

    /// Runs one batch on both; false when neither had anything to do.
    pub fn run_batch(&mut self) -> bool {
        let ran = self
            .engine()
            .run_batch(lockstep_topologies::components::TOPOLOGY)
            .expect("batch")
            .is_some();
        assert_eq!(
            ran,
            self.model_batch(),
            "engine and model disagree on batch formation"
        );
        ran
    }

    pub fn run_until_idle(&mut self) {
        while self.run_batch() {}
    }

    pub fn view(&self) -> ComponentsView {
        let snapshot = self.engine().snapshot().expect("snapshot");
        read_view(&snapshot, &self.handles).expect("read view")
    }

    /// Engine state equals the model's, every invariant holds, every outcome matches.
    pub fn assert_matches_model(&self) {
        let view = self.view();
        let violations = check(&view);
        assert!(violations.is_empty(), "invariants broken: {violations:#?}");
        assert_eq!(
            view,
            self.model.view(),
            "engine state differs from the model"
        );
        let snapshot = self.engine().snapshot().expect("snapshot");
        for (id, expected) in &self.outcomes {
            let got = read_outcome(&snapshot, *id)
                .expect("read outcome")
                .map(|(o, _)| o);
            assert_eq!(got, Some(*expected), "outcome of {id:?}");
        }
    }
}

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

pub fn delete(id: &str, mode: lockstep_topologies::components::DeleteMode) -> Command {
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

use lockstep_topologies::components::DeleteMode;
use proptest::prelude::*;

/// `PROPTEST_CASES` overrides the default case count (for long runs).
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

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

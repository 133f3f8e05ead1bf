//! Runs a reference topology on a real engine, batch by batch, next to its sequential model.
//! [`Reference`] is what the harness needs of a topology; `components` and `graph` implement it
//! with their command builders and property-test strategies.

#![allow(dead_code)]

pub mod components;
pub mod graph;
pub mod scenarios;

// The component tests predate the graph ones and import these from here.
#[allow(unused_imports)]
pub use components::*;

use std::collections::VecDeque;
use std::fmt::Debug;
use std::path::Path;

use lockstep::{Depot, Engine, EngineOptions, RecordId, Snapshot, Topology};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A reference topology: its handles, its sequential model, its reader and its checker.
pub trait Reference: Sized {
    type Command: Clone + Debug + Serialize + DeserializeOwned + Send + 'static;
    type Outcome: Copy + Debug + PartialEq + DeserializeOwned;
    type Model: Default + Debug;
    type View: Debug + PartialEq;
    type Violation: Debug;
    /// The topology's name.
    const TOPOLOGY: &'static str;

    fn declare(partitions: u32) -> Self;
    fn depot(&self) -> &Depot<Self::Command>;
    fn topology(&self) -> Topology;
    fn apply(model: &mut Self::Model, command: &Self::Command) -> Self::Outcome;
    fn model_view(model: &Self::Model) -> Self::View;
    fn read_view(&self, snapshot: &Snapshot<'_>) -> Self::View;
    fn read_outcome(snapshot: &Snapshot<'_>, record: RecordId) -> Option<Self::Outcome>;
    fn check(view: &Self::View) -> Vec<Self::Violation>;
}

pub struct TopologyHarness<R: Reference> {
    pub engine: Option<Engine>,
    pub handles: R,
    pub model: R::Model,
    pub options: EngineOptions,
    pub partitions: u32,
    /// Acknowledged, not yet consumed commands, in append order.
    pub pending: VecDeque<(RecordId, R::Command)>,
    /// Expected outcome of every consumed command.
    pub outcomes: Vec<(RecordId, R::Outcome)>,
}

impl<R: Reference> TopologyHarness<R> {
    pub fn open(dir: &Path, partitions: u32, records_max: usize) -> Self {
        let mut options = EngineOptions::manual();
        options.batch_records_max = records_max;
        let mut harness = Self {
            engine: None,
            handles: R::declare(partitions),
            model: R::Model::default(),
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
                .depot(self.handles.depot())
                .topology(self.handles.topology())
                .open()
                .expect("open"),
        );
    }

    pub fn engine(&self) -> &Engine {
        self.engine.as_ref().expect("open engine")
    }

    pub fn append(&mut self, commands: &[R::Command]) -> Vec<RecordId> {
        let ids = self
            .engine()
            .append_many(self.handles.depot(), commands)
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
            let outcome = R::apply(&mut self.model, &command);
            self.outcomes.push((id, outcome));
        }
        take > 0
    }

    /// Runs one batch on both; false when neither had anything to do.
    pub fn run_batch(&mut self) -> bool {
        let ran = self
            .engine()
            .run_batch(R::TOPOLOGY)
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

    pub fn view(&self) -> R::View {
        let snapshot = self.engine().snapshot().expect("snapshot");
        self.handles.read_view(&snapshot)
    }

    /// Engine state equals the model's, every invariant holds, every outcome matches.
    pub fn assert_matches_model(&self) {
        let view = self.view();
        let violations = R::check(&view);
        assert!(violations.is_empty(), "invariants broken: {violations:#?}");
        assert_eq!(
            view,
            R::model_view(&self.model),
            "engine state differs from the model"
        );
        let snapshot = self.engine().snapshot().expect("snapshot");
        for (id, expected) in &self.outcomes {
            let got = R::read_outcome(&snapshot, *id);
            assert_eq!(got, Some(*expected), "outcome of {id:?}");
        }
    }

    /// The expected outcome of the command `index_from_end` places before the last consumed.
    pub fn outcome_from_end(&self, index_from_end: usize) -> R::Outcome {
        self.outcomes[self.outcomes.len() - 1 - index_from_end].1
    }
}

/// `PROPTEST_CASES` overrides the default case count (for long runs).
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

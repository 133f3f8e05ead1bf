//! What a simulation needs to know about the topology under test.

use std::fmt::Debug;

use lockstep::{Depot, EngineBuilder, Snapshot};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::SimRng;

/// A topology under simulation, with its sequential reference model.
///
/// The simulation appends generated commands to [`depot`](Self::depot), lets the engine
/// process them, and feeds the model the same commands in the engine's processing order (the
/// global append order; see `lockstep::LoggedRecord::seq`). The engine must then agree with the
/// model record by record ([`apply`](Self::apply)'s outcome) and state by state
/// ([`check`](Self::check)).
pub trait SimTarget {
    /// A depot record: one command.
    type Command: Serialize + DeserializeOwned + Clone + PartialEq + Debug + Send + 'static;
    /// What the topology records as a command's outcome (`Ctx::record_outcome`).
    type Outcome: DeserializeOwned + PartialEq + Debug;
    /// The sequential reference model's state.
    type Model;

    /// The name of the topology under test.
    fn topology(&self) -> &str;

    /// The depot commands are appended to. It must be consumed by the topology.
    fn depot(&self) -> &Depot<Self::Command>;

    /// Declares the depots and topologies on `builder`; called at every (re)open.
    fn declare(&self, builder: EngineBuilder) -> EngineBuilder;

    /// The model before any command.
    fn new_model(&self) -> Self::Model;

    /// A command from `client`. `model` is the state after every command processed so far,
    /// for generators that aim at what exists; `rng` is the only source of randomness allowed,
    /// or runs stop being reproducible.
    fn generate(&self, rng: &mut SimRng, client: u32, model: &Self::Model) -> Self::Command;

    /// Applies one command to the model; returns the outcome the topology must have recorded
    /// for it, or `None` if it records none (or it is not to be compared).
    fn apply(&self, model: &mut Self::Model, command: &Self::Command) -> Option<Self::Outcome>;

    /// Compares the committed state in `snapshot` with `model` and checks the topology's
    /// invariants on it; returns every problem found.
    fn check(&self, snapshot: &Snapshot<'_>, model: &Self::Model) -> Result<(), String>;
}

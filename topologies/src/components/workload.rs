//! A seeded, mixed, conflicting component workload: creates (roots and children), updates
//! (some with compare-and-set), reparents and deletes, with a share aimed at a few hot ids so
//! that commands from concurrent clients race on the same components. Deterministic for a seed.

use super::{Attrs, Command, ComponentId, DeleteMode, Outcome};
use crate::rng::SplitMix64;

/// Generates commands for one client.
///
/// Most commands work on components this client created (fresh ids, so most apply); a share
/// targets a small set of "hot" ids that every client uses, which is where concurrent clients
/// race: duplicate creates, updates and reparents of the same component, deletes under
/// others' feet, reparents that would close a cycle.
#[derive(Debug, Clone)]
pub struct Workload {
    rng: SplitMix64,
    client: u64,
    hot_ids: u64,
    created: u64,
    /// Hot ids are `{hot_prefix}{n}`: shared by every client, or this client's own.
    hot_prefix: String,
    /// Ids this client saw created and not deleted (bounded): alive, unless another client or
    /// a cascade removed them since.
    alive: Vec<ComponentId>,
}

/// How many live ids a client remembers.
const ALIVE_MAX: usize = 4096;

impl Workload {
    /// The workload of client `client`, sharing `hot_ids` hot components with every other
    /// client, seeded by `seed`.
    pub fn new(seed: u64, client: u64, hot_ids: u64) -> Self {
        Self::with_hot_prefix(seed, client, hot_ids, "h".to_string())
    }

    /// Like [`new`](Self::new), but the hot ids are this client's own: no two clients ever
    /// touch the same component, so the final state does not depend on how clients interleave
    /// (conflicts still arise within each client's own stream). For comparing systems.
    pub fn isolated(seed: u64, client: u64, hot_ids: u64) -> Self {
        Self::with_hot_prefix(seed, client, hot_ids, format!("h{client}-"))
    }

    fn with_hot_prefix(seed: u64, client: u64, hot_ids: u64, hot_prefix: String) -> Self {
        Self {
            rng: SplitMix64::new(seed ^ client.wrapping_mul(0xA24B_AED4_963E_E407)),
            client,
            hot_ids: hot_ids.max(1),
            hot_prefix,
            created: 0,
            alive: Vec::new(),
        }
    }

    fn hot(&mut self) -> ComponentId {
        format!("{}{}", self.hot_prefix, self.rng.below(self.hot_ids))
    }

    fn fresh(&mut self) -> ComponentId {
        self.created += 1;
        format!("c{}-{}", self.client, self.created)
    }

    /// One of the ids this client knows alive most of the time, else a hot one.
    fn known(&mut self) -> ComponentId {
        if !self.alive.is_empty() && self.rng.below(100) < 85 {
            let i = self.rng.below(self.alive.len() as u64) as usize;
            self.alive[i].clone()
        } else {
            self.hot()
        }
    }

    /// Feeds back what a command led to, so later commands aim at live components (a closed
    /// loop, as real clients work). Optional: without it every command targets hot ids.
    pub fn observe(&mut self, command: &Command, outcome: Outcome) {
        if outcome != Outcome::Applied {
            return;
        }
        match command {
            Command::Create { id, .. } => {
                if self.alive.len() == ALIVE_MAX {
                    let i = self.rng.below(ALIVE_MAX as u64) as usize;
                    self.alive.swap_remove(i);
                }
                self.alive.push(id.clone());
            }
            Command::Delete { id, .. } => self.alive.retain(|alive| alive != id),
            Command::Update { .. } | Command::Reparent { .. } => {}
        }
    }

    fn attrs(&mut self) -> Attrs {
        let mut attrs = Attrs::new();
        attrs.insert(
            format!("k{}", self.rng.below(4)),
            format!("v{}", self.rng.below(1000)),
        );
        attrs
    }

    /// The next command.
    pub fn next_command(&mut self) -> Command {
        let roll = self.rng.below(100);
        match roll {
            0..=44 => {
                let id = if self.rng.below(10) == 0 {
                    self.hot()
                } else {
                    self.fresh()
                };
                let parent = (self.rng.below(10) < 7).then(|| self.known());
                Command::Create {
                    id,
                    parent,
                    attrs: self.attrs(),
                }
            }
            45..=74 => {
                let id = self.known();
                let if_version = (self.rng.below(4) == 0).then(|| 1 + self.rng.below(3));
                Command::Update {
                    id,
                    attrs: self.attrs(),
                    if_version,
                }
            }
            75..=92 => {
                let id = self.known();
                let parent = (self.rng.below(10) != 0).then(|| self.known());
                Command::Reparent {
                    id,
                    parent,
                    if_version: None,
                }
            }
            93..=96 => Command::Delete {
                id: self.known(),
                mode: DeleteMode::Restrict,
            },
            _ => Command::Delete {
                id: self.known(),
                mode: DeleteMode::Cascade,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::invariants::check;
    use crate::components::model::Model;
    use crate::components::RejectReason;
    use std::collections::BTreeMap;

    #[test]
    fn is_deterministic_for_a_seed() {
        let a: Vec<Command> = {
            let mut w = Workload::new(7, 1, 100);
            (0..200).map(|_| w.next_command()).collect()
        };
        let b: Vec<Command> = {
            let mut w = Workload::new(7, 1, 100);
            (0..200).map(|_| w.next_command()).collect()
        };
        assert_eq!(a, b);
    }

    #[test]
    fn mixes_applied_commands_with_every_kind_of_conflict() {
        let mut model = Model::new();
        let mut clients: Vec<Workload> = (0..4).map(|c| Workload::new(3, c, 50)).collect();
        let mut counts: BTreeMap<Option<RejectReason>, u32> = BTreeMap::new();
        for i in 0..20_000 {
            let command = clients[i % 4].next_command();
            let outcome = model.apply(&command);
            clients[i % 4].observe(&command, outcome);
            let reason = match outcome {
                Outcome::Applied => None,
                Outcome::Rejected(reason) => Some(reason),
            };
            *counts.entry(reason).or_default() += 1;
        }
        assert!(check(&model.view()).is_empty());
        // Most commands apply, and every rejection reason shows up.
        assert!(counts[&None] > 20_000 * 3 / 5, "{counts:?}");
        for reason in [
            RejectReason::AlreadyExists,
            RejectReason::ParentMissing,
            RejectReason::NotFound,
            RejectReason::WouldCreateCycle,
            RejectReason::VersionConflict,
            RejectReason::HasChildren,
        ] {
            assert!(
                counts.get(&Some(reason)).copied().unwrap_or(0) > 0,
                "no {reason:?}: {counts:?}"
            );
        }
    }
}

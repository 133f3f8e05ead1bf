//! Component parent/child integrity: the reference topology.
//!
//! Components are partitioned by their own id; a component's set of children lives with it
//! (keyed by the parent's id), so a parent and its children usually sit on different partitions.
//! Every command that touches both sides of a link does so in one batch, with messages between
//! the partitions, and the topology uses [`Delivery::Serializable`]: each command, with all its
//! hops, completes before the next starts, so a batch equals applying its commands one at a time
//! in append order (see [`lockstep_core::exec`]). Append order is the order the engine made the
//! appends durable: a client that appends a parent and then (in the same call, or after the
//! first call returned) its child always gets the parent applied first. [`model::Model`] is that sequential definition,
//! and [`invariants::check`] lists every broken link in a snapshot.
//!
//! ## Commands and their hops
//!
//! | command | hops (partition of) |
//! |---|---|
//! | `create` root | id |
//! | `create` under `p` | id → p (check `p`, add to its children) → id (write) |
//! | `update` | id |
//! | `reparent` to `q` | id (version) → q → q's ancestors, one hop each (cycle check) → q (adopt) → id (move) → old parent (detach) |
//! | `delete restrict` | id → parent (detach) |
//! | `delete cascade` | id → each child → each grandchild … (one round per level) and id → parent |

pub mod invariants;
#[cfg(feature = "json")]
pub mod json;
pub mod model;
#[cfg(feature = "engine")]
mod read;
pub mod workload;

use std::collections::BTreeMap;

use lockstep_core::{
    Ctx, Delivery, Depot, HandlerError, PState, RecordId, SchemaError, SetPState, Topology,
    TopologyBuilder,
};
use serde::{Deserialize, Serialize};

#[cfg(feature = "engine")]
pub use read::{read_outcome, read_view};

/// The topology's name.
pub const TOPOLOGY: &str = "components";
/// The command depot's name.
pub const DEPOT: &str = "component-commands";

/// A component's id.
pub type ComponentId = String;
/// A component's attributes.
pub type Attrs = BTreeMap<String, String>;

/// A component as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    /// Its parent, if it is not a root.
    pub parent: Option<ComponentId>,
    /// Its attributes.
    pub attrs: Attrs,
    /// 1 at create, +1 for every applied update or reparent.
    pub version: u64,
}

/// How a delete treats children.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeleteMode {
    /// Delete the whole subtree, at any depth.
    Cascade,
    /// Refuse while the component has children.
    Restrict,
}

/// A command, as appended to the depot (partitioned by `id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Create `id`, under `parent` if given. Rejected if `id` exists or `parent` does not.
    Create {
        /// The new component.
        id: ComponentId,
        /// Its parent.
        parent: Option<ComponentId>,
        /// Its attributes.
        attrs: Attrs,
    },
    /// Merge `attrs` into `id`'s attributes; with `if_version`, only at that version.
    Update {
        /// The component.
        id: ComponentId,
        /// Attributes to set.
        attrs: Attrs,
        /// Compare-and-set on the version.
        if_version: Option<u64>,
    },
    /// Move `id` under `parent` (or make it a root). Rejected if the parent is missing, is `id`
    /// itself or one of its descendants.
    Reparent {
        /// The component.
        id: ComponentId,
        /// The new parent.
        parent: Option<ComponentId>,
        /// Compare-and-set on the version.
        if_version: Option<u64>,
    },
    /// Delete `id`.
    Delete {
        /// The component.
        id: ComponentId,
        /// What happens to its children.
        mode: DeleteMode,
    },
}

impl Command {
    /// The component the command is routed by.
    pub fn id(&self) -> &ComponentId {
        match self {
            Command::Create { id, .. }
            | Command::Update { id, .. }
            | Command::Reparent { id, .. }
            | Command::Delete { id, .. } => id,
        }
    }
}

/// Why a command was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RejectReason {
    /// `create` of an id that exists.
    AlreadyExists,
    /// The named parent does not exist.
    ParentMissing,
    /// The component does not exist.
    NotFound,
    /// The new parent is the component or one of its descendants.
    WouldCreateCycle,
    /// `if_version` did not match.
    VersionConflict,
    /// `delete restrict` of a component with children.
    HasChildren,
    /// The component would exceed [`COMPONENT_BYTES_MAX`] (its attributes grew too large).
    TooLarge,
}

/// Largest stored component (encoded, attributes included). Commands that would exceed it are
/// rejected, so no command can make a batch fail.
pub const COMPONENT_BYTES_MAX: usize = 1 << 20;

/// Whether `component` fits the size limit.
pub fn fits(component: &Component) -> bool {
    lockstep_core::envelope_bytes(component).is_ok_and(|bytes| bytes <= COMPONENT_BYTES_MAX)
}

impl RejectReason {
    /// The reason's wire name (`already_exists`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::AlreadyExists => "already_exists",
            RejectReason::ParentMissing => "parent_missing",
            RejectReason::NotFound => "not_found",
            RejectReason::WouldCreateCycle => "would_create_cycle",
            RejectReason::VersionConflict => "version_conflict",
            RejectReason::HasChildren => "has_children",
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

/// Messages between partitions within a batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Msg {
    /// At the parent's partition: check it and list the child.
    Attach {
        child: ComponentId,
        parent: ComponentId,
        attrs: Attrs,
        origin: RecordId,
    },
    /// At the child's partition: the parent listed it; write it.
    Created {
        child: ComponentId,
        parent: ComponentId,
        attrs: Attrs,
        origin: RecordId,
    },
    /// At the origin's partition: record a rejection.
    Reject {
        origin: RecordId,
        reason: RejectReason,
    },
    /// At `at`'s partition: is `id` among `at` and its ancestors?
    CycleCheck {
        id: ComponentId,
        new_parent: ComponentId,
        at: ComponentId,
        origin: RecordId,
    },
    /// At the new parent's partition: list the moved component.
    Adopt {
        id: ComponentId,
        new_parent: ComponentId,
        origin: RecordId,
    },
    /// At the moved component's partition: point it at its new parent.
    Moved {
        id: ComponentId,
        new_parent: ComponentId,
        origin: RecordId,
    },
    /// At the parent's partition: unlist a child.
    Detach {
        parent: ComponentId,
        child: ComponentId,
    },
    /// At the component's partition: delete it and its subtree (its parent is going too).
    DeleteSubtree { id: ComponentId },
    /// At a deleted component's partition: unlist the next page of its children.
    DeleteChildren { id: ComponentId },
}

/// Handles for the component topology's depot, PStates and topology.
#[derive(Debug, Clone)]
pub struct Components {
    /// Commands, partitioned by component id.
    pub commands: Depot<Command>,
    /// id → component.
    pub components: PState<ComponentId, Component>,
    /// parent id → child ids, one entry per child.
    pub children: SetPState<ComponentId, ComponentId>,
    /// The topology; each command's outcome is an [`Outcome`].
    pub topology: Topology,
}

/// Rounds one command may take: its tree depth, about. Deeper trees fail their batch.
pub const ROUNDS_MAX: u32 = 10_000_000;

/// Children listed per page while deleting a subtree.
const CHILDREN_PAGE: usize = 1024;

#[derive(Clone)]
struct Handles {
    components: PState<ComponentId, Component>,
    /// Written blind (`set_put`, `set_delete`): a set write is idempotent, and no handler
    /// needs the report `set_insert` and `set_remove` give of whether the element was there,
    /// which costs a read of the store per call.
    children: SetPState<ComponentId, ComponentId>,
}

impl Handles {
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
            Command::Create { id, parent, attrs } => {
                if ctx.contains(&self.components, &id)? {
                    return self.reject(ctx, origin, RejectReason::AlreadyExists);
                }
                let probe = Component {
                    parent: parent.clone(),
                    attrs,
                    version: 1,
                };
                if !fits(&probe) {
                    return self.reject(ctx, origin, RejectReason::TooLarge);
                }
                let attrs = probe.attrs;
                match parent {
                    None => {
                        let component = Component {
                            parent: None,
                            attrs,
                            version: 1,
                        };
                        ctx.put(&self.components, &id, &component)?;
                        ctx.record_outcome(&Outcome::Applied)
                    }
                    // The component does not exist yet, so it cannot be its own parent.
                    Some(parent) if parent == id => {
                        self.reject(ctx, origin, RejectReason::ParentMissing)
                    }
                    Some(parent) => {
                        let message = Msg::Attach {
                            child: id,
                            parent: parent.clone(),
                            attrs,
                            origin,
                        };
                        ctx.send(&parent, message)
                    }
                }
            }
            Command::Update {
                id,
                attrs,
                if_version,
            } => {
                let Some(mut component) = ctx.get(&self.components, &id)? else {
                    return self.reject(ctx, origin, RejectReason::NotFound);
                };
                if if_version.is_some_and(|v| v != component.version) {
                    return self.reject(ctx, origin, RejectReason::VersionConflict);
                }
                component.attrs.extend(attrs);
                component.version += 1;
                if !fits(&component) {
                    return self.reject(ctx, origin, RejectReason::TooLarge);
                }
                ctx.put(&self.components, &id, &component)?;
                ctx.record_outcome(&Outcome::Applied)
            }
            Command::Reparent {
                id,
                parent,
                if_version,
            } => {
                let Some(mut component) = ctx.get(&self.components, &id)? else {
                    return self.reject(ctx, origin, RejectReason::NotFound);
                };
                if if_version.is_some_and(|v| v != component.version) {
                    return self.reject(ctx, origin, RejectReason::VersionConflict);
                }
                match parent {
                    Some(new_parent) if new_parent == id => {
                        self.reject(ctx, origin, RejectReason::WouldCreateCycle)
                    }
                    Some(new_parent) if component.parent.as_ref() != Some(&new_parent) => {
                        let message = Msg::CycleCheck {
                            id,
                            new_parent: new_parent.clone(),
                            at: new_parent.clone(),
                            origin,
                        };
                        ctx.send(&new_parent, message)
                    }
                    // Same parent (no structural change) or make a root: decided here.
                    new_parent => {
                        if new_parent.is_none() {
                            if let Some(old) = component.parent.take() {
                                ctx.send(
                                    &old,
                                    Msg::Detach {
                                        parent: old.clone(),
                                        child: id.clone(),
                                    },
                                )?;
                            }
                        }
                        component.version += 1;
                        ctx.put(&self.components, &id, &component)?;
                        ctx.record_outcome(&Outcome::Applied)
                    }
                }
            }
            Command::Delete { id, mode } => {
                let Some(component) = ctx.get(&self.components, &id)? else {
                    return self.reject(ctx, origin, RejectReason::NotFound);
                };
                if mode == DeleteMode::Restrict && !ctx.set_is_empty(&self.children, &id)? {
                    return self.reject(ctx, origin, RejectReason::HasChildren);
                }
                if let Some(parent) = component.parent {
                    ctx.send(
                        &parent,
                        Msg::Detach {
                            parent: parent.clone(),
                            child: id.clone(),
                        },
                    )?;
                }
                self.delete_subtree(ctx, &id)?;
                ctx.record_outcome(&Outcome::Applied)
            }
        }
    }

    /// Deletes `id` and unlists its children, sending each child the same fate.
    fn delete_subtree(&self, ctx: &mut Ctx<'_, Msg>, id: &ComponentId) -> Result<(), HandlerError> {
        ctx.delete(&self.components, id)?;
        self.unlist_children(ctx, id)
    }

    /// Unlists one page of `id`'s children (each told to delete its subtree) and, if more
    /// remain, continues in the next round: a parent with a million children never floods one
    /// round with a million messages.
    fn unlist_children(
        &self,
        ctx: &mut Ctx<'_, Msg>,
        id: &ComponentId,
    ) -> Result<(), HandlerError> {
        let page = ctx.set_members(&self.children, id, None, CHILDREN_PAGE)?;
        let more = page.len() == CHILDREN_PAGE;
        for child in page {
            ctx.set_delete(&self.children, id, &child)?;
            ctx.send(&child, Msg::DeleteSubtree { id: child.clone() })?;
        }
        if more {
            ctx.send(id, Msg::DeleteChildren { id: id.clone() })?;
        }
        Ok(())
    }

    fn message(&self, ctx: &mut Ctx<'_, Msg>, message: Msg) -> Result<(), HandlerError> {
        match message {
            Msg::Attach {
                child,
                parent,
                attrs,
                origin,
            } => {
                if !ctx.contains(&self.components, &parent)? {
                    return self.reject(ctx, origin, RejectReason::ParentMissing);
                }
                ctx.set_put(&self.children, &parent, &child)?;
                let message = Msg::Created {
                    child,
                    parent,
                    attrs,
                    origin,
                };
                ctx.send_to_partition(origin.partition, message)
            }
            Msg::Created {
                child,
                parent,
                attrs,
                origin,
            } => {
                let component = Component {
                    parent: Some(parent),
                    attrs,
                    version: 1,
                };
                ctx.put(&self.components, &child, &component)?;
                ctx.record_outcome_for(origin, &Outcome::Applied)
            }
            Msg::Reject { origin, reason } => {
                ctx.record_outcome_for(origin, &Outcome::Rejected(reason))
            }
            Msg::CycleCheck {
                id,
                new_parent,
                at,
                origin,
            } => {
                let Some(ancestor) = ctx.get(&self.components, &at)? else {
                    if at == new_parent {
                        return self.reject(ctx, origin, RejectReason::ParentMissing);
                    }
                    // An ancestor named by a child is always there: anything else is a broken
                    // invariant, and going on would spread it.
                    return Err(HandlerError::user(format!(
                        "integrity violation: ancestor {at:?} of {new_parent:?} is missing"
                    )));
                };
                if at == id {
                    return self.reject(ctx, origin, RejectReason::WouldCreateCycle);
                }
                match ancestor.parent {
                    Some(next) => {
                        let message = Msg::CycleCheck {
                            id,
                            new_parent,
                            at: next.clone(),
                            origin,
                        };
                        ctx.send(&next, message)
                    }
                    None => {
                        let message = Msg::Adopt {
                            id,
                            new_parent: new_parent.clone(),
                            origin,
                        };
                        ctx.send(&new_parent, message)
                    }
                }
            }
            Msg::Adopt {
                id,
                new_parent,
                origin,
            } => {
                ctx.set_put(&self.children, &new_parent, &id)?;
                ctx.send_to_partition(
                    origin.partition,
                    Msg::Moved {
                        id,
                        new_parent,
                        origin,
                    },
                )
            }
            Msg::Moved {
                id,
                new_parent,
                origin,
            } => {
                let mut component = ctx.get(&self.components, &id)?.ok_or_else(|| {
                    HandlerError::user(format!(
                        "integrity violation: moved component {id:?} vanished"
                    ))
                })?;
                if let Some(old) = component.parent.replace(new_parent) {
                    ctx.send(
                        &old,
                        Msg::Detach {
                            parent: old.clone(),
                            child: id.clone(),
                        },
                    )?;
                }
                component.version += 1;
                ctx.put(&self.components, &id, &component)?;
                ctx.record_outcome_for(origin, &Outcome::Applied)
            }
            Msg::Detach { parent, child } => {
                ctx.set_delete(&self.children, &parent, &child)?;
                Ok(())
            }
            Msg::DeleteSubtree { id } => self.delete_subtree(ctx, &id),
            Msg::DeleteChildren { id } => self.unlist_children(ctx, &id),
        }
    }
}

/// Declares the component topology on `partitions` partitions.
pub fn components(partitions: u32) -> Result<Components, SchemaError> {
    let commands = Depot::<Command>::hashed(DEPOT, partitions, |c| c.id().clone())?;
    let mut builder = TopologyBuilder::<Msg>::new(TOPOLOGY, partitions);
    let handles = Handles {
        components: builder.pstate("components"),
        children: builder.set_pstate("children"),
    };
    let on_record = handles.clone();
    builder.consume(&commands, move |ctx, command: Command| {
        on_record.command(ctx, command)
    });
    let on_message = handles.clone();
    builder.on_message(move |ctx, message: Msg| on_message.message(ctx, message));
    builder.delivery(Delivery::Serializable);
    // One round per tree level (cycle checks walk up, cascades walk down): allow deep trees.
    builder.rounds_max(ROUNDS_MAX);
    Ok(Components {
        commands,
        components: handles.components,
        children: handles.children,
        topology: builder.build()?,
    })
}

//! The sequential reference model: the component commands applied one at a time, in memory.
//! The topology must match it exactly when fed the same commands in append order.

use std::collections::{BTreeMap, BTreeSet};

use super::invariants::ComponentsView;
use super::{fits, Command, Component, ComponentId, DeleteMode, Outcome, RejectReason};

/// Components and children, as plain maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    /// id → component.
    pub components: BTreeMap<ComponentId, Component>,
    /// parent → children.
    pub children: BTreeMap<ComponentId, BTreeSet<ComponentId>>,
}

impl Model {
    /// An empty model.
    pub fn new() -> Self {
        Self::default()
    }

    fn is_ancestor_or_self(&self, candidate: &ComponentId, of: &ComponentId) -> bool {
        let mut at = Some(of);
        while let Some(id) = at {
            if id == candidate {
                return true;
            }
            at = self.components.get(id).and_then(|c| c.parent.as_ref());
        }
        false
    }

    fn link(&mut self, parent: &ComponentId, child: &ComponentId) {
        self.children
            .entry(parent.clone())
            .or_default()
            .insert(child.clone());
    }

    fn unlink(&mut self, parent: &ComponentId, child: &ComponentId) {
        if let Some(set) = self.children.get_mut(parent) {
            set.remove(child);
            if set.is_empty() {
                self.children.remove(parent);
            }
        }
    }

    fn remove_subtree(&mut self, id: &ComponentId) {
        let mut stack = vec![id.clone()];
        while let Some(next) = stack.pop() {
            self.components.remove(&next);
            if let Some(children) = self.children.remove(&next) {
                stack.extend(children);
            }
        }
    }

    /// Applies one command; returns its outcome.
    pub fn apply(&mut self, command: &Command) -> Outcome {
        use RejectReason::*;
        let reject = Outcome::Rejected;
        match command {
            Command::Create { id, parent, attrs } => {
                if self.components.contains_key(id) {
                    return reject(AlreadyExists);
                }
                let component = Component {
                    parent: parent.clone(),
                    attrs: attrs.clone(),
                    version: 1,
                };
                if !fits(&component) {
                    return reject(TooLarge);
                }
                if let Some(parent) = parent {
                    if !self.components.contains_key(parent) {
                        return reject(ParentMissing);
                    }
                    self.link(parent, id);
                }
                self.components.insert(id.clone(), component);
                Outcome::Applied
            }
            Command::Update {
                id,
                attrs,
                if_version,
            } => {
                let Some(component) = self.components.get_mut(id) else {
                    return reject(NotFound);
                };
                if if_version.is_some_and(|v| v != component.version) {
                    return reject(VersionConflict);
                }
                let mut updated = component.clone();
                updated
                    .attrs
                    .extend(attrs.iter().map(|(k, v)| (k.clone(), v.clone())));
                updated.version += 1;
                if !fits(&updated) {
                    return reject(TooLarge);
                }
                *component = updated;
                Outcome::Applied
            }
            Command::Reparent {
                id,
                parent,
                if_version,
            } => {
                let Some(component) = self.components.get(id) else {
                    return reject(NotFound);
                };
                if if_version.is_some_and(|v| v != component.version) {
                    return reject(VersionConflict);
                }
                let old = component.parent.clone();
                if let Some(new_parent) = parent {
                    if new_parent == id {
                        return reject(WouldCreateCycle);
                    }
                    if old.as_ref() != Some(new_parent) {
                        if !self.components.contains_key(new_parent) {
                            return reject(ParentMissing);
                        }
                        if self.is_ancestor_or_self(id, new_parent) {
                            return reject(WouldCreateCycle);
                        }
                        if let Some(old) = &old {
                            self.unlink(old, id);
                        }
                        self.link(new_parent, id);
                    }
                } else if let Some(old) = &old {
                    self.unlink(old, id);
                }
                if let Some(component) = self.components.get_mut(id) {
                    component.parent = parent.clone();
                    component.version += 1;
                }
                Outcome::Applied
            }
            Command::Delete { id, mode } => {
                let Some(component) = self.components.get(id) else {
                    return reject(NotFound);
                };
                if *mode == DeleteMode::Restrict && self.children.contains_key(id) {
                    return reject(HasChildren);
                }
                if let Some(parent) = component.parent.clone() {
                    self.unlink(&parent, id);
                }
                self.remove_subtree(id);
                Outcome::Applied
            }
        }
    }

    /// The model's state in the shape the invariant checker and the engine reader use.
    pub fn view(&self) -> ComponentsView {
        ComponentsView {
            components: self.components.clone(),
            links: self
                .children
                .iter()
                .flat_map(|(parent, children)| children.iter().map(|c| (parent.clone(), c.clone())))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(id: &str, parent: Option<&str>) -> Command {
        Command::Create {
            id: id.into(),
            parent: parent.map(Into::into),
            attrs: Default::default(),
        }
    }

    #[test]
    fn reparent_under_a_descendant_is_a_cycle() {
        let mut model = Model::new();
        assert_eq!(model.apply(&create("a", None)), Outcome::Applied);
        assert_eq!(model.apply(&create("b", Some("a"))), Outcome::Applied);
        assert_eq!(model.apply(&create("c", Some("b"))), Outcome::Applied);
        let reparent = Command::Reparent {
            id: "a".into(),
            parent: Some("c".into()),
            if_version: None,
        };
        assert_eq!(
            model.apply(&reparent),
            Outcome::Rejected(RejectReason::WouldCreateCycle)
        );
        assert!(super::super::invariants::check(&model.view()).is_empty());
    }

    #[test]
    fn cascade_removes_the_subtree_and_the_link() {
        let mut model = Model::new();
        for (id, parent) in [
            ("r", None),
            ("a", Some("r")),
            ("b", Some("a")),
            ("c", Some("b")),
        ] {
            assert_eq!(model.apply(&create(id, parent)), Outcome::Applied);
        }
        let restrict = Command::Delete {
            id: "a".into(),
            mode: DeleteMode::Restrict,
        };
        assert_eq!(
            model.apply(&restrict),
            Outcome::Rejected(RejectReason::HasChildren)
        );
        let cascade = Command::Delete {
            id: "a".into(),
            mode: DeleteMode::Cascade,
        };
        assert_eq!(model.apply(&cascade), Outcome::Applied);
        assert_eq!(model.components.keys().collect::<Vec<_>>(), vec!["r"]);
        assert!(model.children.is_empty());
    }

    #[test]
    fn versions_count_applied_changes_only() {
        let mut model = Model::new();
        model.apply(&create("a", None));
        let update = |v| Command::Update {
            id: "a".into(),
            attrs: [("k".to_string(), "v".to_string())].into(),
            if_version: Some(v),
        };
        assert_eq!(model.apply(&update(1)), Outcome::Applied);
        assert_eq!(
            model.apply(&update(1)),
            Outcome::Rejected(RejectReason::VersionConflict)
        );
        assert_eq!(model.components["a"].version, 2);
    }
}

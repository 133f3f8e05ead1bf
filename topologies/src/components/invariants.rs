//! The integrity invariants, checked over one consistent view of all components.

use std::collections::{BTreeMap, BTreeSet};

use super::{Component, ComponentId};

/// Every component and every parent → child link, as read from one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ComponentsView {
    /// id → component.
    pub components: BTreeMap<ComponentId, Component>,
    /// `(parent, child)` for every entry of the children sets.
    pub links: BTreeSet<(ComponentId, ComponentId)>,
}

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Violation {
    /// A component names a parent that does not exist.
    ParentMissing {
        /// The component.
        child: ComponentId,
        /// The parent it names.
        parent: ComponentId,
    },
    /// A component's parent exists but does not list it.
    NotListedByParent {
        /// The component.
        child: ComponentId,
        /// Its parent.
        parent: ComponentId,
    },
    /// A parent lists a child that does not exist.
    ListedChildMissing {
        /// The parent.
        parent: ComponentId,
        /// The missing child.
        child: ComponentId,
    },
    /// A parent lists a child that names another parent (or none).
    ListedChildDisagrees {
        /// The listing parent.
        parent: ComponentId,
        /// The child.
        child: ComponentId,
        /// The parent the child names.
        actual_parent: Option<ComponentId>,
    },
    /// Following parents from this component comes back to it.
    Cycle {
        /// The components on the cycle, starting at the smallest id.
        ids: Vec<ComponentId>,
    },
    /// A version below 1.
    ZeroVersion {
        /// The component.
        id: ComponentId,
    },
}

/// Checks every invariant and returns every violation found (empty when all hold), in a
/// deterministic order.
pub fn check(view: &ComponentsView) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (id, component) in &view.components {
        if component.version < 1 {
            violations.push(Violation::ZeroVersion { id: id.clone() });
        }
        if let Some(parent) = &component.parent {
            if !view.components.contains_key(parent) {
                violations.push(Violation::ParentMissing {
                    child: id.clone(),
                    parent: parent.clone(),
                });
            } else if !view.links.contains(&(parent.clone(), id.clone())) {
                violations.push(Violation::NotListedByParent {
                    child: id.clone(),
                    parent: parent.clone(),
                });
            }
        }
    }
    for (parent, child) in &view.links {
        match view.components.get(child) {
            None => violations.push(Violation::ListedChildMissing {
                parent: parent.clone(),
                child: child.clone(),
            }),
            Some(component) if component.parent.as_ref() != Some(parent) => {
                violations.push(Violation::ListedChildDisagrees {
                    parent: parent.clone(),
                    child: child.clone(),
                    actual_parent: component.parent.clone(),
                })
            }
            Some(_) => {}
        }
    }
    violations.extend(cycles(view));
    violations
}

/// Every cycle of parent pointers, each reported once.
fn cycles(view: &ComponentsView) -> Vec<Violation> {
    // 0 = unvisited, 1 = on the current path, 2 = known to reach a root (or a reported cycle).
    let mut state: BTreeMap<&ComponentId, u8> = BTreeMap::new();
    let mut found = Vec::new();
    for start in view.components.keys() {
        let mut path: Vec<&ComponentId> = Vec::new();
        let mut at = Some(start);
        while let Some(id) = at {
            match state.get(id).copied().unwrap_or(0) {
                2 => break,
                1 => {
                    let from = path.iter().position(|p| *p == id).unwrap_or(0);
                    let mut ids: Vec<ComponentId> =
                        path[from..].iter().map(|s| (*s).clone()).collect();
                    let smallest = ids
                        .iter()
                        .enumerate()
                        .min_by(|a, b| a.1.cmp(b.1))
                        .map_or(0, |(i, _)| i);
                    ids.rotate_left(smallest);
                    found.push(Violation::Cycle { ids });
                    break;
                }
                _ => {
                    state.insert(id, 1);
                    path.push(id);
                    at = view
                        .components
                        .get(id)
                        .and_then(|c| c.parent.as_ref())
                        .filter(|p| view.components.contains_key(*p));
                }
            }
        }
        for id in path {
            state.insert(id, 2);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn component(parent: Option<&str>, version: u64) -> Component {
        Component {
            parent: parent.map(Into::into),
            attrs: Default::default(),
            version,
        }
    }

    #[test]
    fn a_consistent_tree_has_no_violations() {
        let view = ComponentsView {
            components: [
                ("a".to_string(), component(None, 1)),
                ("b".to_string(), component(Some("a"), 3)),
            ]
            .into(),
            links: [("a".to_string(), "b".to_string())].into(),
        };
        assert!(check(&view).is_empty());
    }

    #[test]
    fn reports_every_violation_not_just_the_first() {
        let view = ComponentsView {
            components: [
                ("a".to_string(), component(Some("ghost"), 1)),
                ("b".to_string(), component(Some("a"), 0)),
                ("c".to_string(), component(None, 1)),
                ("x".to_string(), component(Some("y"), 1)),
                ("y".to_string(), component(Some("x"), 1)),
            ]
            .into(),
            links: [
                ("c".to_string(), "b".to_string()),
                ("c".to_string(), "nobody".to_string()),
                ("x".to_string(), "y".to_string()),
                ("y".to_string(), "x".to_string()),
            ]
            .into(),
        };
        let violations = check(&view);
        let expected = vec![
            Violation::ParentMissing {
                child: "a".into(),
                parent: "ghost".into(),
            },
            Violation::ZeroVersion { id: "b".into() },
            Violation::NotListedByParent {
                child: "b".into(),
                parent: "a".into(),
            },
            Violation::ListedChildDisagrees {
                parent: "c".into(),
                child: "b".into(),
                actual_parent: Some("a".into()),
            },
            Violation::ListedChildMissing {
                parent: "c".into(),
                child: "nobody".into(),
            },
            Violation::Cycle {
                ids: vec!["x".into(), "y".into()],
            },
        ];
        assert_eq!(violations, expected);
    }
}

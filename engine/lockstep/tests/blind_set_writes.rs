//! `set_put` and `set_delete` write without reading: mixed with the reporting `set_insert`
//! and `set_remove`, in batches of several records (so later records read earlier ones'
//! writes from the batch's write set), every set ends as a `BTreeSet` model says, and every
//! report and membership check a handler makes matches the model at that point.

use std::collections::{BTreeMap, BTreeSet};

use lockstep::{Depot, Engine, EngineOptions, NoMessages, TopologyBuilder};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
enum Op {
    /// `set_put`; the outcome is `set_contains` right after.
    Put,
    /// `set_delete`; the outcome is `set_contains` right after.
    Delete,
    /// `set_insert`; the outcome is what it reports.
    Insert,
    /// `set_remove`; the outcome is what it reports.
    Remove,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Edit {
    key: u8,
    element: u8,
    op: Op,
}

fn edit_strategy() -> impl Strategy<Value = Edit> {
    let op = prop_oneof![
        Just(Op::Put),
        Just(Op::Delete),
        Just(Op::Insert),
        Just(Op::Remove)
    ];
    (0u8..3, 0u8..5, op).prop_map(|(key, element, op)| Edit { key, element, op })
}

/// The outcome the model expects for `edit`, applying it to `sets`.
fn model_apply(sets: &mut BTreeMap<u8, BTreeSet<u8>>, edit: Edit) -> bool {
    let set = sets.entry(edit.key).or_default();
    match edit.op {
        Op::Put => {
            set.insert(edit.element);
            true
        }
        Op::Delete => {
            set.remove(&edit.element);
            false
        }
        Op::Insert => set.insert(edit.element),
        Op::Remove => set.remove(&edit.element),
    }
}

fn run(chunks: &[Vec<Edit>]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let edits = Depot::<Edit>::hashed("edits", 2, |edit: &Edit| edit.key).expect("depot");
    let mut builder = TopologyBuilder::<NoMessages>::new("sets", 2);
    let sets = builder.set_pstate::<u8, u8>("sets");
    let handle = sets.clone();
    builder.consume(&edits, move |ctx, edit: Edit| {
        let (key, element) = (&edit.key, &edit.element);
        let outcome = match edit.op {
            Op::Put => {
                ctx.set_put(&handle, key, element)?;
                ctx.set_contains(&handle, key, element)?
            }
            Op::Delete => {
                ctx.set_delete(&handle, key, element)?;
                ctx.set_contains(&handle, key, element)?
            }
            Op::Insert => ctx.set_insert(&handle, key, element)?,
            Op::Remove => ctx.set_remove(&handle, key, element)?,
        };
        ctx.record_outcome(&outcome)
    });
    let engine = Engine::builder(dir.path())
        .options(EngineOptions::manual())
        .depot(&edits)
        .topology(builder.build().expect("topology"))
        .open()
        .expect("open");

    let mut model = BTreeMap::new();
    for chunk in chunks {
        let ids = engine.append_many(&edits, chunk).expect("append");
        engine.run_until_idle().expect("batches");
        let snapshot = engine.snapshot().expect("snapshot");
        for (id, edit) in ids.into_iter().zip(chunk) {
            let expected = model_apply(&mut model, *edit);
            let outcome = snapshot.outcome::<bool>("sets", id).expect("outcome");
            assert_eq!(outcome.map(|o| o.value), Some(expected), "{edit:?}");
        }
    }
    let snapshot = engine.snapshot().expect("snapshot");
    for key in 0u8..3 {
        let members: BTreeSet<u8> = snapshot
            .set_members(&sets, &key, None, 100)
            .expect("members")
            .into_iter()
            .collect();
        let expected = model.get(&key).cloned().unwrap_or_default();
        assert_eq!(members, expected, "set {key}");
        for element in 0u8..5 {
            assert_eq!(
                snapshot.set_contains(&sets, &key, &element).expect("read"),
                expected.contains(&element),
                "set {key} element {element}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn blind_and_reporting_set_writes_match_a_set_model(
        chunks in prop::collection::vec(prop::collection::vec(edit_strategy(), 1..12), 1..8)
    ) {
        run(&chunks);
    }
}

/// The cases the property draws at random, spelled out: a blind put of a present element and
/// a blind delete of an absent one change nothing, within one batch and across batches.
#[test]
fn blind_writes_of_what_is_already_so_change_nothing() {
    let edit = |op, element| Edit {
        key: 1,
        element,
        op,
    };
    run(&[
        vec![edit(Op::Delete, 3), edit(Op::Put, 3), edit(Op::Put, 3)],
        vec![edit(Op::Put, 3), edit(Op::Insert, 3), edit(Op::Delete, 4)],
        vec![
            edit(Op::Remove, 4),
            edit(Op::Delete, 3),
            edit(Op::Delete, 3),
        ],
        vec![edit(Op::Remove, 3), edit(Op::Insert, 3)],
    ]);
}

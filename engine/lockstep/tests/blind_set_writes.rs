//! `set_put` and `set_delete` write without reading: mixed with the reporting `set_insert`
//! and `set_remove`, in batches of several records (so later records read earlier ones'
//! writes from the batch's write set), every set ends as a `BTreeSet` model says, and every
//! report, membership check and listing a handler makes matches the model at that point;
//! with and without the state cache. (That they do not read is checked in `lockstep-core`,
//! by counting the store's reads.)

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
    /// The outcome is the set's members, listed by the handler.
    Members,
}

/// What a handler saw, recorded as the record's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Seen {
    Flag(bool),
    Members(Vec<u8>),
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
        Just(Op::Remove),
        Just(Op::Members)
    ];
    (0u8..3, 0u8..5, op).prop_map(|(key, element, op)| Edit { key, element, op })
}

/// The outcome the model expects for `edit`, applying it to `sets`.
fn model_apply(sets: &mut BTreeMap<u8, BTreeSet<u8>>, edit: Edit) -> Seen {
    let set = sets.entry(edit.key).or_default();
    match edit.op {
        Op::Put => {
            set.insert(edit.element);
            Seen::Flag(true)
        }
        Op::Delete => {
            set.remove(&edit.element);
            Seen::Flag(false)
        }
        Op::Insert => Seen::Flag(set.insert(edit.element)),
        Op::Remove => Seen::Flag(set.remove(&edit.element)),
        Op::Members => Seen::Members(set.iter().copied().collect()),
    }
}

fn run(chunks: &[Vec<Edit>], state_cache_bytes_max: usize) {
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
                Seen::Flag(ctx.set_contains(&handle, key, element)?)
            }
            Op::Delete => {
                ctx.set_delete(&handle, key, element)?;
                Seen::Flag(ctx.set_contains(&handle, key, element)?)
            }
            Op::Insert => Seen::Flag(ctx.set_insert(&handle, key, element)?),
            Op::Remove => Seen::Flag(ctx.set_remove(&handle, key, element)?),
            Op::Members => Seen::Members(ctx.set_members(&handle, key, None, 100)?),
        };
        ctx.record_outcome(&outcome)
    });
    let mut options = EngineOptions::manual();
    options.state_cache_bytes_max = state_cache_bytes_max;
    let engine = Engine::builder(dir.path())
        .options(options)
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
            let outcome = snapshot.outcome::<Seen>("sets", id).expect("outcome");
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
        chunks in prop::collection::vec(prop::collection::vec(edit_strategy(), 1..12), 1..8),
        state_cache_bytes_max in prop_oneof![Just(0usize), Just(1usize << 10), Just(64usize << 20)],
    ) {
        run(&chunks, state_cache_bytes_max);
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
    let chunks = [
        vec![edit(Op::Delete, 3), edit(Op::Put, 3), edit(Op::Put, 3)],
        vec![edit(Op::Put, 3), edit(Op::Insert, 3), edit(Op::Delete, 4)],
        vec![
            edit(Op::Remove, 4),
            edit(Op::Delete, 3),
            edit(Op::Delete, 3),
        ],
        vec![
            edit(Op::Remove, 3),
            edit(Op::Insert, 3),
            edit(Op::Members, 0),
        ],
        vec![
            edit(Op::Delete, 0),
            edit(Op::Delete, 1),
            edit(Op::Members, 0),
        ],
    ];
    for state_cache_bytes_max in [0, 64 << 20] {
        run(&chunks, state_cache_bytes_max);
    }
}

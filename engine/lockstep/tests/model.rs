//! Model test: random appends, batches, reads and reopen against the sequential reference
//! model in `common`. Every step compares the whole committed state, the assigned offsets and
//! every outcome.

mod common;

use common::{assert_outcomes, ledger_with, open, read_state, Model, Op};
use lockstep::{Delivery, EngineOptions};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Step {
    Append(Vec<Op>),
    RunBatch,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    // A small key space so partitions and keys collide often.
    (0u32..12, -5i64..=5, 0u32..12).prop_map(|(key, amount, mirror)| Op {
        key,
        amount,
        mirror,
    })
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => prop::collection::vec(op(), 1..5).prop_map(Step::Append),
        3 => Just(Step::RunBatch),
        1 => Just(Step::Reopen),
    ]
}

/// `PROPTEST_CASES` overrides the default case count (for long runs).
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(64), ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_sequential_model(
        partitions in 1u32..5,
        records_max in 1usize..4,
        serializable in any::<bool>(),
        steps in prop::collection::vec(step(), 1..40),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let delivery = if serializable { Delivery::Serializable } else { Delivery::Parallel };
        let ledger = ledger_with(partitions, delivery);
        let mut options = EngineOptions::manual();
        options.batch_records_max = records_max;
        let mut engine = open(dir.path(), &ledger, options.clone()).expect("open");
        let mut model = Model::with_delivery(partitions, delivery);
        let mut depot_id = None;
        for step in steps {
            match step {
                Step::Append(ops) => {
                    let ids = engine.append_many(&ledger.ops, &ops).expect("append");
                    for (op, id) in ops.iter().zip(ids) {
                        let (partition, offset) = model.append(*op);
                        prop_assert_eq!((id.partition, id.offset), (partition, offset));
                        depot_id = Some(id.depot_id);
                    }
                }
                Step::RunBatch => {
                    let ran = engine.run_batch(common::TOPOLOGY).expect("batch").is_some();
                    prop_assert_eq!(ran, model.run_batch(records_max));
                }
                Step::Reopen => {
                    drop(engine);
                    engine = open(dir.path(), &ledger, options.clone()).expect("reopen");
                }
            }
            prop_assert_eq!(read_state(&engine, &ledger), model.state.clone());
        }
        engine.run_until_idle().expect("drain");
        model.run_until_idle(records_max);
        prop_assert_eq!(read_state(&engine, &ledger), model.state.clone());
        if let Some(depot_id) = depot_id {
            assert_outcomes(&engine, &ledger, &model, depot_id);
        }
    }
}

//! Model test: random appends, batches, reads and reopen against the sequential reference
//! model in `common`. Every step compares the whole committed state, the assigned offsets and
//! every outcome; with depot retention drawn on, also where every partition now starts and
//! the records it still holds.

mod common;

use common::{assert_outcomes, ledger_with, open, read_state, Ledger, Model, Op};
use lockstep::{Delivery, DepotRetention, Engine, EngineOptions, Error};
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

/// Where retention must have left each partition's start after an append call (one group: the
/// calls here come one at a time): the rule of `DepotRetention`, on the model's consumed
/// offsets and heads.
fn expected_first_kept(retention: &DepotRetention, model: &Model, first_kept: &mut [u64]) {
    for (p, kept) in first_kept.iter_mut().enumerate() {
        let head = model.next_offset[p];
        let pending = model
            .pending
            .iter()
            .filter(|(q, _, _)| *q as usize == p)
            .count() as u64;
        let candidate =
            (head - pending).min(head.saturating_sub(retention.keep_records_min.max(1)));
        if candidate >= *kept + retention.trim_step_records.max(1) {
            *kept = candidate;
        }
    }
}

/// Each partition starts where the model says, holds exactly the model's records from there,
/// and refuses a read from before it.
fn assert_depot(engine: &Engine, ledger: &Ledger, appended: &[Vec<Op>], first_kept: &[u64]) {
    for (p, ops) in appended.iter().enumerate() {
        let partition = p as u32;
        let start = first_kept[p];
        assert_eq!(
            engine
                .depot_first_kept_offset(&ledger.ops, partition)
                .expect("start"),
            start
        );
        let stored = engine
            .read_depot(&ledger.ops, partition, start, usize::MAX)
            .expect("read");
        let expected: Vec<(u64, Op)> = (start..)
            .zip(ops[start as usize..].iter().copied())
            .collect();
        assert_eq!(stored, expected, "partition {p}");
        if start > 0 {
            let refused = engine.read_depot(&ledger.ops, partition, start - 1, usize::MAX);
            assert!(
                matches!(refused, Err(Error::DepotTrimmed { first_kept_offset, .. }) if first_kept_offset == start),
                "partition {p}: {refused:?}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(64), ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_sequential_model(
        partitions in 1u32..5,
        records_max in 1usize..4,
        serializable in any::<bool>(),
        retention in prop::option::of((0u64..4, 1u64..4)),
        steps in prop::collection::vec(step(), 1..40),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let delivery = if serializable { Delivery::Serializable } else { Delivery::Parallel };
        let ledger = ledger_with(partitions, delivery);
        let mut options = EngineOptions::manual();
        options.batch_records_max = records_max;
        options.depot_retention = retention.map(|(keep_records_min, trim_step_records)| {
            let mut retention = DepotRetention::default();
            retention.keep_records_min = keep_records_min;
            retention.trim_step_records = trim_step_records;
            retention
        });
        let mut appended: Vec<Vec<Op>> = vec![Vec::new(); partitions as usize];
        let mut first_kept = vec![0u64; partitions as usize];
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
                        appended[partition as usize].push(*op);
                        depot_id = Some(id.depot_id);
                    }
                    if let Some(retention) = &options.depot_retention {
                        expected_first_kept(retention, &model, &mut first_kept);
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
            assert_depot(&engine, &ledger, &appended, &first_kept);
        }
        engine.run_until_idle().expect("drain");
        model.run_until_idle(records_max);
        prop_assert_eq!(read_state(&engine, &ledger), model.state.clone());
        if let Some(depot_id) = depot_id {
            assert_outcomes(&engine, &ledger, &model, depot_id);
        }
    }
}

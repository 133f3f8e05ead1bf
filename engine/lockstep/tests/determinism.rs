//! The same input, run twice in fresh directories with different thread counts, gives identical
//! PState contents, byte for byte.

mod common;

use common::{ledger, open, Op};
use lockstep::EngineOptions;

fn run(threads: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(8);
    let mut options = EngineOptions::manual();
    options.threads = threads;
    options.batch_records_max = 300;
    let engine = open(dir.path(), &ledger, options).expect("open");
    // Enough records per batch that rounds run on several threads.
    let ops: Vec<Op> = (0..5_000u32)
        .map(|i| Op {
            key: i.wrapping_mul(2_654_435_761) % 97,
            amount: i64::from(i % 13) - 6,
            mirror: i.wrapping_mul(40_503) % 89,
        })
        .collect();
    for chunk in ops.chunks(250) {
        engine.append_many(&ledger.ops, chunk).expect("append");
    }
    assert!(engine.run_until_idle().expect("batches") > 1);
    engine.raw_state_entries().expect("dump")
}

#[test]
fn same_input_gives_identical_state_bytes() {
    let single = run(1);
    let parallel = run(4);
    assert!(!single.is_empty());
    assert_eq!(single.len(), parallel.len());
    assert!(single == parallel, "state differs between runs");
}

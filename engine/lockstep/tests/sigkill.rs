//! Kills a real engine process with SIGKILL mid-load, reopens its data directory, and checks
//! that every acknowledged append survived, that the committed state is exactly the effect of
//! the consumed prefix of each partition (no partial batch), and that draining the rest applies
//! every record exactly once.
//!
//! The child is this same test binary, re-run with `LOCKSTEP_SIGKILL_CHILD_DIR` set: it appends
//! from several threads with batches running automatically and prints `ack <partition>
//! <offset> <key> <amount> <mirror>` after each acknowledged append.

mod common;

use std::collections::BTreeMap;

use common::{kill, ledger, open, read_state, Op};
use lockstep::EngineOptions;

const CHILD_ENV: &str = "LOCKSTEP_SIGKILL_CHILD_DIR";
const PARTITIONS: u32 = 4;

#[test]
#[ignore = "run by kill_nine_mid_load as a child process"]
fn child_appends_until_killed() {
    kill::run_child(
        CHILD_ENV,
        PARTITIONS,
        EngineOptions::default(),
        |thread, i, j| Op {
            key: (thread * 31 + i * 7 + j) % 23,
            amount: i64::from((i + j) % 7) - 3,
            mirror: (i + j * 5) % 19,
        },
    );
}

#[test]
fn kill_nine_mid_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut loaded = kill::Loaded::spawn("child_appends_until_killed", CHILD_ENV, dir.path());
    loaded.read_acks(1_000 + kill::varying(4_000) as usize);
    let acked = loaded.kill_nine();
    assert!(
        acked.len() >= 100,
        "child acknowledged only {} appends",
        acked.len()
    );

    let ledger = ledger(PARTITIONS);
    let engine = open(dir.path(), &ledger, EngineOptions::manual()).expect("reopen");
    let mut durable: Vec<Vec<Op>> = Vec::new();
    for p in 0..PARTITIONS {
        let records = engine
            .read_depot(&ledger.ops, p, 0, usize::MAX)
            .expect("read depot");
        for (offset, op) in &records {
            if let Some(acked_op) = acked.get(&(p, *offset)) {
                assert_eq!(acked_op, op, "partition {p} offset {offset} changed");
            }
        }
        durable.push(records.into_iter().map(|(_, op)| op).collect());
    }
    for (p, offset) in acked.keys() {
        assert!(
            (*offset as usize) < durable[*p as usize].len(),
            "acknowledged record {p}/{offset} lost"
        );
    }

    // Committed state = effect of exactly the consumed prefix of every partition.
    let committed = engine.committed(common::TOPOLOGY).expect("commit record");
    let state = read_state(&engine, &ledger);
    let consumed: Vec<u64> = (0..PARTITIONS)
        .map(|p| {
            committed
                .offsets
                .iter()
                .find(|o| o.partition == p)
                .map_or(0, |o| o.next_offset)
        })
        .collect();
    assert_effects(&durable, &consumed, &state);
    eprintln!(
        "killed after {} acknowledged appends; {} durable; batch {} committed {} records",
        acked.len(),
        durable.iter().map(Vec::len).sum::<usize>(),
        committed.batch_id,
        consumed.iter().sum::<u64>()
    );
    assert!(committed.batch_id > 0, "no batch committed before the kill");

    engine.run_until_idle().expect("drain");
    let all: Vec<u64> = durable.iter().map(|d| d.len() as u64).collect();
    assert_effects(&durable, &all, &read_state(&engine, &ledger));
}

/// Totals and mirror logs are exactly what the first `consumed[p]` records of each partition
/// produce (logs compared as multisets: their order depends on where batches were cut).
fn assert_effects(durable: &[Vec<Op>], consumed: &[u64], state: &common::LedgerState) {
    let mut totals: BTreeMap<u32, i64> = BTreeMap::new();
    let mut logs: BTreeMap<u32, Vec<(u32, i64)>> = BTreeMap::new();
    for (p, records) in durable.iter().enumerate() {
        for op in &records[..consumed[p] as usize] {
            *totals.entry(op.key).or_default() += op.amount;
            logs.entry(op.mirror).or_default().push((op.key, op.amount));
        }
    }
    assert_eq!(state.totals, totals, "totals");
    let mut got = state.mirror_log.clone();
    for log in got.values_mut().chain(logs.values_mut()) {
        log.sort_unstable();
    }
    assert_eq!(got, logs, "mirror logs");
}

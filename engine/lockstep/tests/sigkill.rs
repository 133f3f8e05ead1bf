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
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ledger, open, read_state, Op};
use lockstep::EngineOptions;

const CHILD_ENV: &str = "LOCKSTEP_SIGKILL_CHILD_DIR";
const PARTITIONS: u32 = 4;

#[test]
#[ignore = "run by kill_nine_mid_load as a child process"]
fn child_appends_until_killed() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let ledger = ledger(PARTITIONS);
    let engine = open(dir.as_ref(), &ledger, EngineOptions::default()).expect("open");
    let stdout = std::sync::Mutex::new(std::io::stdout());
    std::thread::scope(|scope| {
        for thread in 0..4u32 {
            let (engine, ledger, stdout) = (&engine, &ledger, &stdout);
            scope.spawn(move || {
                for i in 0u32.. {
                    let ops: Vec<Op> = (0..8u32)
                        .map(|j| Op {
                            key: (thread * 31 + i * 7 + j) % 23,
                            amount: i64::from((i + j) % 7) - 3,
                            mirror: (i + j * 5) % 19,
                        })
                        .collect();
                    let ids = engine.append_many(&ledger.ops, &ops).expect("append");
                    let mut out = stdout.lock().expect("stdout");
                    for (op, id) in ops.iter().zip(ids) {
                        writeln!(
                            out,
                            "ack {} {} {} {} {}",
                            id.partition, id.offset, op.key, op.amount, op.mirror
                        )
                        .expect("write");
                    }
                    out.flush().expect("flush");
                }
            });
        }
    });
}

#[test]
fn kill_nine_mid_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "child_appends_until_killed",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut acked: BTreeMap<(u32, u64), Op> = BTreeMap::new();
    let started = Instant::now();
    let mut lines = BufReader::new(stdout).lines();
    // Kill at a moment that varies run to run, not at a fixed point in the protocol.
    let kill_after = 1_000 + (started.elapsed().as_nanos() % 4_000) as usize;
    while acked.len() < kill_after && started.elapsed() < Duration::from_secs(60) {
        let Some(Ok(line)) = lines.next() else { break };
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.first() != Some(&"ack") {
            continue;
        }
        let n = |i: usize| fields[i].parse::<i64>().expect("number");
        acked.insert(
            (n(1) as u32, n(2) as u64),
            Op {
                key: n(3) as u32,
                amount: n(4),
                mirror: n(5) as u32,
            },
        );
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
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

//! Cross-partition atomicity as readers see it: transfers move money between accounts on
//! different partitions (a debit on one, a credit on another, one message apart). Under
//! concurrent appenders with batches running automatically, every snapshot must show the two
//! halves of every transfer together: the total is always zero.

use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lockstep::{Depot, Engine, EngineOptions, TopologyBuilder};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Transfer {
    from: u32,
    to: u32,
    amount: i64,
}

#[test]
fn every_snapshot_sees_both_halves_of_every_transfer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let transfers = Depot::<Transfer>::hashed("transfers", 4, |t| t.from).expect("depot");
    let mut builder = TopologyBuilder::<(u32, i64)>::new("bank", 4);
    let balances = builder.pstate::<u32, i64>("balances");
    let b = balances.clone();
    builder.consume(&transfers, move |ctx, t: Transfer| {
        let from = ctx.get(&b, &t.from)?.unwrap_or(0);
        ctx.put(&b, &t.from, &(from - t.amount))?;
        ctx.send(&t.to, (t.to, t.amount))
    });
    let b = balances.clone();
    builder.on_message(move |ctx, (to, amount): (u32, i64)| {
        let balance = ctx.get(&b, &to)?.unwrap_or(0);
        ctx.put(&b, &to, &(balance + amount))
    });
    let mut options = EngineOptions::default();
    options.batch_records_max = 64; // many small batches
    let engine = Engine::builder(dir.path())
        .options(options)
        .depot(&transfers)
        .topology(builder.build().expect("topology"))
        .open()
        .expect("open");

    let done = AtomicBool::new(false);
    let (snapshots, batches_seen) = std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut snapshots = 0u64;
            let mut last_batch = 0;
            let mut batches = std::collections::BTreeSet::new();
            while !done.load(Ordering::Acquire) {
                let snapshot = engine.snapshot().expect("snapshot");
                let batch = snapshot.batch_id("bank").expect("batch");
                assert!(batch >= last_batch, "batch id went back");
                last_batch = batch;
                batches.insert(batch);
                let total: i64 = snapshot
                    .range(&balances, Bound::Unbounded, Bound::Unbounded, usize::MAX)
                    .expect("scan")
                    .iter()
                    .map(|(_, v)| v)
                    .sum();
                assert_eq!(total, 0, "snapshot at batch {batch} saw half a transfer");
                snapshots += 1;
            }
            (snapshots, batches.len())
        });
        let writers: Vec<_> = (0..4u32)
            .map(|w| {
                let (engine, transfers) = (&engine, &transfers);
                scope.spawn(move || {
                    let mut last = None;
                    for i in 0..300u32 {
                        let t = Transfer {
                            from: (w * 13 + i) % 37,
                            to: (w * 7 + i * 3 + 1) % 37,
                            amount: i64::from(i % 9) + 1,
                        };
                        last = Some(engine.append(transfers, &t).expect("append"));
                    }
                    last
                })
            })
            .collect();
        for writer in writers {
            let last = writer.join().expect("writer").expect("appended");
            engine
                .wait_for("bank", last, Duration::from_secs(60))
                .expect("processed");
        }
        done.store(true, Ordering::Release);
        reader.join().expect("reader")
    });
    assert!(snapshots > 0);
    assert!(batches_seen > 1, "reader saw only {batches_seen} batch ids");
}

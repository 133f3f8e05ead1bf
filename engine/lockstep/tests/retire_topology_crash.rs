//! A crash right after the catalog write that retires a topology (failpoint
//! `recovery.after_catalog`): the open fails, and the retirement is durable and whole. The
//! next open, without the retirement, finds the topology gone (a declaration of its name is
//! new) and the other topology untouched.

mod common;

use common::{ledger, open, read_state, Op};
use lockstep::{failpoints, Engine, EngineOptions, Error, TopologyBuilder};

#[test]
fn a_crash_after_the_retiring_catalog_write_leaves_it_whole() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(2);
    let audit = || {
        let mut builder = TopologyBuilder::<()>::new("audit", 2);
        let seen = builder.pstate::<u32, u64>("audit-seen");
        builder.consume(&ledger.ops, move |ctx, op: Op| {
            let count = ctx.get(&seen, &op.key)?.unwrap_or(0) + 1;
            ctx.put(&seen, &op.key, &count)
        });
        builder.build().expect("valid topology")
    };
    let open_with = |audit_declared: bool, retire: bool| {
        let mut builder = Engine::builder(dir.path())
            .options(EngineOptions::manual())
            .depot(&ledger.ops)
            .topology(ledger.topology.clone());
        if audit_declared {
            builder = builder.topology(audit());
        }
        if retire {
            builder = builder.retire_topology("audit");
        }
        builder.open()
    };
    let ops: Vec<Op> = (0..12)
        .map(|i| Op {
            key: i % 5,
            amount: 1,
            mirror: i % 3,
        })
        .collect();
    let engine = open_with(true, false).expect("open");
    engine.append_many(&ledger.ops, &ops).expect("append");
    engine.run_until_idle().expect("batches");
    assert!(!engine
        .committed("audit")
        .expect("committed")
        .offsets
        .is_empty());
    drop(engine);

    fail::cfg(failpoints::RECOVERY_AFTER_CATALOG, "return").expect("configure failpoint");
    let crashed = open_with(false, true);
    assert!(
        matches!(&crashed, Err(Error::Store(_))),
        "the failpoint fails the open: {crashed:?}"
    );
    fail::remove(failpoints::RECOVERY_AFTER_CATALOG);

    let engine = open(dir.path(), &ledger, EngineOptions::manual()).expect("reopen");
    let total: i64 = read_state(&engine, &ledger).totals.values().sum();
    assert_eq!(total, 12, "the ledger's state is untouched");
    drop(engine);
    let engine = open_with(true, false).expect("reopen with the audit declared");
    assert!(
        engine
            .committed("audit")
            .expect("committed")
            .offsets
            .is_empty(),
        "the audit was retired by the write before the crash: declared again, it is new"
    );
    scenario.teardown();
}

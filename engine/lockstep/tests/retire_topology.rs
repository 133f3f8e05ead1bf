//! Retiring a topology (`EngineBuilder::retire_topology`): an absent topology's commit record
//! holds depot records back from retention until it is retired; after that, trims go past its
//! offsets, and declaring its name again starts a new topology, with empty state, at the
//! depot's first kept records. Retiring is idempotent, and declaring and retiring one name is
//! refused. Until it is retired, an absent topology is listed as undeclared, with where it
//! left off (and the open warns about it when retention is on: `undeclared_topology_warning.rs`).

mod common;

use common::retention::{
    audit, committed_offsets, counted, directory_with_a_committed_audit, first_kept, heads,
    open_with_audit as open, ops,
};
use common::{ledger, read_state, Ledger};
use lockstep::{Error, Topology};

const PARTITIONS: u32 = 2;

#[test]
fn a_retired_topology_stops_holding_records_back_and_its_name_starts_afresh() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(PARTITIONS);
    let (audit, seen) = audit("audit", &ledger);

    // The audit commits one small batch, then leaves the run.
    let engine = open(dir.path(), &ledger, Some(&audit), false).expect("open");
    engine
        .append_many(&ledger.ops, &ops(0, 60))
        .expect("append");
    let audit_batch = engine
        .run_batch("audit")
        .expect("audit batch")
        .expect("a batch")
        .batch_id;
    let audit_consumed = committed_offsets(&engine, "audit");
    assert!(counted(&engine, &seen) > 0);
    assert!(engine.undeclared_topologies().is_empty());
    drop(engine);

    // Absent, its commit record still holds the depot back, and the open says so.
    let engine = open(dir.path(), &ledger, None, false).expect("reopen without the audit");
    let undeclared = engine.undeclared_topologies();
    assert_eq!(undeclared.len(), 1, "{undeclared:?}");
    assert_eq!(undeclared[0].name, "audit");
    assert_eq!(undeclared[0].batch_id, Some(audit_batch));
    assert_eq!(undeclared[0].depots, ["ops".to_string()]);
    engine.run_until_idle().expect("ledger batches");
    engine
        .append_many(&ledger.ops, &ops(60, 2))
        .expect("append");
    assert_eq!(first_kept(&engine, &ledger), audit_consumed);
    engine.run_until_idle().expect("ledger batches");
    drop(engine);

    // Retired, it no longer does: the next append trims to the newest 3 of each partition
    // (the ledger has committed everything).
    let engine = open(dir.path(), &ledger, None, true).expect("reopen retiring the audit");
    assert_eq!(engine.retired_topologies(), ["audit".to_string()]);
    assert!(engine.undeclared_topologies().is_empty());
    engine
        .append_many(&ledger.ops, &ops(62, 2))
        .expect("append");
    engine.run_until_idle().expect("ledger batches");
    let kept = first_kept(&engine, &ledger);
    let expected: Vec<u64> = heads(&engine, &ledger)
        .iter()
        .map(|head| head.saturating_sub(3))
        .collect();
    assert_eq!(kept, expected);
    assert!(
        kept.iter().zip(&audit_consumed).all(|(k, a)| k > a),
        "{kept:?} {audit_consumed:?}"
    );
    let ledger_total: i64 = read_state(&engine, &ledger).totals.values().sum();
    assert_eq!(ledger_total, 64);
    drop(engine);

    // Retiring again changes nothing, and the name can be declared again: a new topology,
    // which reads from the first kept records. (Its PState is a new one under the same name,
    // so it starts empty even if the old entries were left behind: the unit test in
    // `engine.rs` checks that they are deleted.)
    let engine = open(dir.path(), &ledger, None, true).expect("retiring again");
    assert!(engine.retired_topologies().is_empty());
    assert_eq!(first_kept(&engine, &ledger), kept);
    let ledger_again: i64 = read_state(&engine, &ledger).totals.values().sum();
    assert_eq!(ledger_again, 64);
    drop(engine);
    let engine = open(dir.path(), &ledger, Some(&audit), false).expect("the audit anew");
    assert_eq!(counted(&engine, &seen), 0);
    assert!(engine
        .committed("audit")
        .expect("committed")
        .offsets
        .is_empty());
    while engine.run_batch("audit").expect("audit batch").is_some() {}
    let still_stored: u64 = heads(&engine, &ledger)
        .iter()
        .zip(&kept)
        .map(|(head, kept)| head - kept)
        .sum();
    assert_eq!(counted(&engine, &seen), still_stored);
}

/// A topology that never committed a batch is listed too, with nothing consumed.
#[test]
fn an_undeclared_topology_that_never_committed_is_listed_with_no_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(PARTITIONS);
    let (audit, _) = audit("audit", &ledger);
    drop(open(dir.path(), &ledger, Some(&audit), false).expect("open"));
    let engine = open(dir.path(), &ledger, None, false).expect("reopen without the audit");
    let undeclared = engine.undeclared_topologies();
    assert_eq!(undeclared.len(), 1, "{undeclared:?}");
    assert_eq!(undeclared[0].name, "audit");
    assert_eq!(undeclared[0].batch_id, None);
    assert!(undeclared[0].depots.is_empty());
}

/// Whether the audit's commit record is still there: the retirement was not written.
fn audit_still_committed(dir: &std::path::Path, ledger: &Ledger, audit: &Topology) -> bool {
    let engine = open(dir, ledger, Some(audit), false).expect("open");
    let committed = engine.committed("audit").expect("committed");
    !committed.offsets.is_empty()
}

#[test]
fn declaring_and_retiring_one_topology_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(PARTITIONS);
    let (audit, _) = audit("audit", &ledger);
    directory_with_a_committed_audit(dir.path(), &ledger, &audit);
    let refused = open(dir.path(), &ledger, Some(&audit), true);
    assert!(
        matches!(&refused, Err(Error::RetiredAndDeclared(name)) if name == "audit"),
        "{refused:?}"
    );
    assert!(audit_still_committed(dir.path(), &ledger, &audit));
}

/// A declaration that contradicts the directory fails the open before the retirement is
/// written: the user can fix the declaration without having lost the topology meanwhile.
#[test]
fn a_contradicting_declaration_fails_the_open_before_retiring() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(PARTITIONS);
    let (audit, _) = audit("audit", &ledger);
    directory_with_a_committed_audit(dir.path(), &ledger, &audit);
    let wider = common::ledger(PARTITIONS + 1);
    let refused = open(dir.path(), &wider, None, true);
    assert!(
        matches!(&refused, Err(Error::CatalogMismatch { .. })),
        "{refused:?}"
    );
    assert!(audit_still_committed(dir.path(), &ledger, &audit));
}

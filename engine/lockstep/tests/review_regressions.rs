//! Regressions for defects a review found: byte caps must not reorder records across batches,
//! extreme limits must not wrap or panic, and a panicking handler stops its topology with the
//! reason recorded.

mod common;

use std::time::Duration;

use common::{ledger, open, Op};
use lockstep::{Depot, Engine, EngineOptions, Error, NoMessages, TopologyBuilder};

fn op(key: u32) -> Op {
    Op {
        key,
        amount: 1,
        mirror: key,
    }
}

/// Two keys on different partitions.
fn keys_on_two_partitions(partitions: u32) -> (u32, u32) {
    let model = common::Model::new(partitions);
    let a = 0;
    let b = (1..)
        .find(|k| model.partition(*k) != model.partition(a))
        .expect("another partition");
    (a, b)
}

#[test]
fn a_byte_cap_never_lets_a_later_record_overtake_an_earlier_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(2);
    let mut options = EngineOptions::manual();
    options.batch_bytes_max = 1; // every record is over the cap: one per partition per batch
    let engine = open(dir.path(), &ledger, options).expect("open");
    let (a, b) = keys_on_two_partitions(2);
    let a1 = engine.append(&ledger.ops, &op(a)).expect("append");
    let a2 = engine.append(&ledger.ops, &op(a)).expect("append");
    let b1 = engine.append(&ledger.ops, &op(b)).expect("append");
    engine
        .run_batch(common::TOPOLOGY)
        .expect("batch")
        .expect("ran");
    // Only a1 may be in the first batch: b1 was appended after a2, which the cap left out.
    assert!(engine
        .processed(common::TOPOLOGY, a1)
        .expect("known")
        .is_some());
    assert!(engine
        .processed(common::TOPOLOGY, a2)
        .expect("known")
        .is_none());
    assert!(engine
        .processed(common::TOPOLOGY, b1)
        .expect("known")
        .is_none());
    engine.run_until_idle().expect("batches");
    let snapshot = engine.snapshot().expect("snapshot");
    let first = snapshot
        .outcome::<i64>(common::TOPOLOGY, a2)
        .expect("read")
        .expect("recorded");
    let second = snapshot
        .outcome::<i64>(common::TOPOLOGY, b1)
        .expect("read")
        .expect("recorded");
    assert!(first.batch_id <= second.batch_id, "b1 ran before a2");
}

#[test]
fn unbounded_record_cap_and_endless_wait_are_handled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(2);
    let mut options = EngineOptions::manual();
    options.batch_records_max = usize::MAX;
    let engine = open(dir.path(), &ledger, options).expect("open");
    let id = engine.append(&ledger.ops, &op(3)).expect("append");
    assert!(engine.run_batch(common::TOPOLOGY).expect("batch").is_some());
    assert!(engine.wait_for(common::TOPOLOGY, id, Duration::MAX).is_ok());
}

#[test]
fn a_panicking_handler_stops_its_topology_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = Depot::<u32>::hashed("events", 2, |e| *e).expect("depot");
    let mut builder = TopologyBuilder::<NoMessages>::new("fragile", 2);
    let _state = builder.pstate::<u32, u32>("fragile-state");
    builder.consume(&events, |_ctx, event: u32| {
        assert!(event != 13, "unlucky record");
        Ok(())
    });
    let engine = Engine::builder(dir.path())
        .depot(&events)
        .topology(builder.build().expect("topology"))
        .open()
        .expect("open");
    let id = engine.append(&events, &13).expect("append");
    let result = engine.wait_for("fragile", id, Duration::from_secs(30));
    assert!(
        matches!(result, Err(Error::TopologyStopped { ref reason, .. }) if reason.contains("unlucky")),
        "{result:?}"
    );
    assert!(engine.topology_failure("fragile").expect("known").is_some());
}

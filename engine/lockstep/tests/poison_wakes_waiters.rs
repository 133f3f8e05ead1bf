//! A failed durable write wakes every `wait_for` caller at once with the poison, instead of
//! leaving them asleep until their timeout. (Failpoints are process-global: own binary.)

mod common;

use std::time::{Duration, Instant};

use common::{ledger, open, Op};
use lockstep::{EngineOptions, Error};

fn op(key: u32) -> Op {
    Op {
        key,
        amount: 1,
        mirror: key,
    }
}

#[test]
fn a_failed_write_wakes_waiters_at_once() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(2);
    let engine = open(dir.path(), &ledger, EngineOptions::manual()).expect("open");
    let id = engine.append(&ledger.ops, &op(1)).expect("append");
    let started = Instant::now();
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| engine.wait_for(common::TOPOLOGY, id, Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(100));
        fail::cfg(lockstep::failpoints::APPEND_BEFORE_WRITE, "return").expect("failpoint");
        assert!(engine.append(&ledger.ops, &op(2)).is_err());
        fail::remove(lockstep::failpoints::APPEND_BEFORE_WRITE);
        let result = waiter.join().expect("waiter");
        assert!(matches!(result, Err(Error::Poisoned { .. })), "{result:?}");
    });
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "waiter slept until its timeout"
    );
    scenario.teardown();
}

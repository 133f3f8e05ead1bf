//! `Engine::append_stats` counts what the appender made durable: one group per synced write,
//! every record, and the bytes each record took (key, sequence number, envelope).

mod common;

use common::Op;
use lockstep::EngineOptions;

#[test]
fn append_stats_count_groups_records_and_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = common::ledger(4);
    let engine = common::open(dir.path(), &ledger, EngineOptions::default()).expect("open");
    assert_eq!(engine.append_stats(), lockstep::AppendStats::default());

    let op = Op {
        key: 7,
        amount: 1,
        mirror: 3,
    };
    engine.append(&ledger.ops, &op).expect("append");
    let one = engine.append_stats();
    assert_eq!((one.groups, one.records), (1, 1));
    // Key and sequence number are 24 bytes; the envelope adds at least a byte.
    assert!(one.write_bytes > 24, "{one:?}");

    // Each call returns once durable, so calls one after another are separate groups.
    engine.append_many(&ledger.ops, &[op; 2]).expect("append");
    engine.append_many(&ledger.ops, &[op; 5]).expect("append");
    let all = engine.append_stats();
    assert_eq!((all.groups, all.records), (3, 8));
    // The same record each time: every one took the same bytes.
    assert_eq!(all.write_bytes, 8 * one.write_bytes);
}

//! Bad input gets a clear, typed error and loses nothing: oversize and unroutable records,
//! unknown names, declarations that contradict the data directory, corrupt bytes on disk, and
//! handlers that break the partition contract.

mod common;

use std::ops::Bound;

use common::{ledger, open, read_state, Op};
use lockstep::{
    BatchError, Depot, Engine, EngineOptions, Error, HandlerError, NoMessages, TopologyBuilder,
};

fn batch_error(err: &Error) -> &BatchError {
    match err {
        Error::Batch { source, .. } => source,
        other => panic!("expected a batch error, got {other}"),
    }
}

fn op(key: u32) -> Op {
    Op {
        key,
        amount: 1,
        mirror: key,
    }
}

#[test]
fn oversize_record_is_refused_and_nothing_else_is_affected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let notes = Depot::<String>::hashed("notes", 2, |n| n.clone())
        .expect("depot")
        .with_record_bytes_max(64)
        .expect("limit");
    let mut builder = TopologyBuilder::<NoMessages>::new("notes-count", 2);
    let seen = builder.pstate::<String, u32>("seen");
    let seen_handle = seen.clone();
    builder.consume(&notes, move |ctx, note: String| {
        ctx.put(&seen_handle, &note, &1)
    });
    let engine = Engine::builder(dir.path())
        .options(EngineOptions::manual())
        .depot(&notes)
        .topology(builder.build().expect("topology"))
        .open()
        .expect("open");

    let err = engine
        .append(&notes, &"x".repeat(1_000))
        .expect_err("oversize");
    assert!(
        matches!(
            err,
            Error::Record(lockstep::CodecError::TooLarge { bytes_max: 64, .. })
        ),
        "{err}"
    );
    // In a batch append one bad record refuses the whole call before anything is written.
    let err = engine
        .append_many(&notes, &["ok".to_string(), "y".repeat(500)])
        .expect_err("oversize in batch");
    assert!(matches!(err, Error::Record(_)), "{err}");
    assert!(engine.poisoned().is_none());
    let id = engine.append(&notes, &"fine".to_string()).expect("append");
    assert_eq!(id.offset, 0, "the refused records took no offsets");
    engine.run_until_idle().expect("batch");
    let snapshot = engine.snapshot().expect("snapshot");
    let all = snapshot
        .range(&seen, Bound::Unbounded, Bound::Unbounded, 10)
        .expect("range");
    assert_eq!(all, vec![("fine".to_string(), 1)]);
}

#[test]
fn explicit_partition_out_of_range_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let depot = Depot::<u32>::explicit("explicit", 2, |r| *r).expect("depot");
    let engine = Engine::builder(dir.path())
        .depot(&depot)
        .open()
        .expect("open");
    assert!(matches!(
        engine.append(&depot, &7),
        Err(Error::Route(lockstep::RouteError::OutOfRange {
            partition: 7,
            ..
        }))
    ));
    assert_eq!(engine.append(&depot, &1).expect("append").partition, 1);
}

#[test]
fn unknown_names_are_typed_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(2);
    let engine = open(dir.path(), &ledger, EngineOptions::manual()).expect("open");

    let stranger = Depot::<Op>::hashed("stranger", 2, |o| o.key).expect("depot");
    assert!(matches!(
        engine.append(&stranger, &op(1)),
        Err(Error::UnknownDepot(name)) if name == "stranger"
    ));
    // Same name, different declaration: not the declared depot either.
    let impostor = Depot::<Op>::hashed("ops", 3, |o| o.key).expect("depot");
    assert!(matches!(
        engine.append(&impostor, &op(1)),
        Err(Error::UnknownDepot(_))
    ));
    assert!(matches!(
        engine.run_batch("no-such-topology"),
        Err(Error::UnknownTopology(_))
    ));
    let other = common::ledger(5);
    let snapshot = engine.snapshot().expect("snapshot");
    assert!(matches!(
        snapshot.get(&other.totals, &1),
        Err(Error::UnknownPState(_))
    ));
    assert!(matches!(
        snapshot.batch_id("nope"),
        Err(Error::UnknownTopology(_))
    ));
}

#[test]
fn topology_consuming_an_undeclared_depot_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(2);
    let err = Engine::builder(dir.path())
        .topology(ledger.topology.clone())
        .open()
        .expect_err("depot missing");
    assert!(
        matches!(
            err,
            Error::Schema(lockstep::SchemaError::UnknownDepot { .. })
        ),
        "{err}"
    );
}

#[test]
fn changed_partition_count_is_refused_on_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let engine = open(dir.path(), &ledger(2), EngineOptions::manual()).expect("open");
        engine.append(&ledger(2).ops, &op(1)).expect("append");
    }
    let err = open(dir.path(), &ledger(3), EngineOptions::manual()).expect_err("mismatch");
    assert!(matches!(err, Error::CatalogMismatch { .. }), "{err}");
    assert!(err.to_string().contains("2 partitions"), "{err}");
    // The data is untouched: the original declaration still opens and reads it.
    let engine = open(dir.path(), &ledger(2), EngineOptions::manual()).expect("reopen");
    let p = engine.append(&ledger(2).ops, &op(1)).expect("append");
    assert_eq!(p.offset, 1);
}

#[test]
fn corrupt_depot_bytes_are_detected_not_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(2);
    let id = {
        let engine = open(dir.path(), &ledger, EngineOptions::manual()).expect("open");
        engine.append(&ledger.ops, &op(1)).expect("append")
    };
    {
        // Flip one payload byte of the stored record behind the engine's back.
        let db = rocksdb::DB::open_cf(
            &rocksdb::Options::default(),
            dir.path(),
            ["depot", "state", "meta"],
        )
        .expect("raw open");
        let cf = db.cf_handle("depot").expect("depot cf");
        let mut key = Vec::new();
        key.extend_from_slice(&id.depot_id.to_be_bytes());
        key.extend_from_slice(&id.partition.to_be_bytes());
        key.extend_from_slice(&id.offset.to_be_bytes());
        let mut value = db.get_cf(cf, &key).expect("get").expect("stored");
        let last = value.len() - 1;
        value[last] ^= 0x01;
        db.put_cf(cf, &key, &value).expect("put");
    }
    let engine = open(dir.path(), &ledger, EngineOptions::manual()).expect("reopen");
    let err = engine
        .read_depot(&ledger.ops, id.partition, 0, 10)
        .expect_err("corrupt");
    assert!(
        matches!(
            err,
            Error::CorruptRecord {
                offset: 0,
                source: lockstep::CodecError::Checksum { .. },
                ..
            }
        ),
        "{err}"
    );
    let err = engine
        .run_batch(common::TOPOLOGY)
        .expect_err("batch must fail");
    assert!(
        matches!(
            batch_error(&err),
            BatchError::Handler {
                source: HandlerError::RecordDecode(_),
                ..
            }
        ),
        "{err}"
    );
    // Nothing of the failed batch is visible, and the topology stays stopped with the reason.
    assert_eq!(read_state(&engine, &ledger).batch_id, 0);
    assert!(engine
        .topology_failure(common::TOPOLOGY)
        .expect("known topology")
        .is_some_and(|reason| reason.contains("checksum")));
    assert!(matches!(
        engine.run_batch(common::TOPOLOGY),
        Err(Error::TopologyStopped { .. })
    ));
}

#[test]
fn writing_another_partitions_key_fails_the_batch_and_commits_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let common::Sloppy {
        events,
        state,
        topology,
    } = common::sloppy();
    let engine = Engine::builder(dir.path())
        .options(EngineOptions::manual())
        .depot(&events)
        .topology(topology)
        .open()
        .expect("open");
    let candidate = common::misplaced_event(&state);
    engine.append(&events, &candidate).expect("append");
    let err = engine.run_batch("sloppy").expect_err("must fail");
    assert!(
        matches!(
            batch_error(&err),
            BatchError::Handler {
                source: HandlerError::WrongPartition { .. },
                ..
            }
        ),
        "{err}"
    );
    let snapshot = engine.snapshot().expect("snapshot");
    assert_eq!(snapshot.get(&state, &candidate).expect("read"), None);
    assert_eq!(snapshot.batch_id("sloppy").expect("batch"), 0);
}

#[test]
fn endless_messages_hit_the_round_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = Depot::<u32>::hashed("pings", 2, |e| *e).expect("depot");
    let mut builder = TopologyBuilder::<u32>::new("ping-pong", 2);
    let hits = builder.pstate::<u32, u64>("hits");
    let h = hits.clone();
    builder.consume(&events, |ctx, e: u32| ctx.send(&e, e));
    builder.on_message(move |ctx, e: u32| {
        let n = ctx.get(&h, &e)?.unwrap_or(0);
        ctx.put(&h, &e, &(n + 1))?;
        ctx.send(&e, e)
    });
    builder.rounds_max(10);
    let engine = Engine::builder(dir.path())
        .options(EngineOptions::manual())
        .depot(&events)
        .topology(builder.build().expect("topology"))
        .open()
        .expect("open");
    engine.append(&events, &3).expect("append");
    let err = engine.run_batch("ping-pong").expect_err("unbounded");
    assert!(
        matches!(
            batch_error(&err),
            BatchError::RoundsExceeded { rounds_max: 10 }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("10 rounds"), "{err}");
    let snapshot = engine.snapshot().expect("snapshot");
    assert_eq!(snapshot.get(&hits, &3).expect("read"), None);
}

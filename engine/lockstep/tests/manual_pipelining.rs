//! Manual driving, one step at a time, of what the automatic driver does while a commit is in
//! flight: a batch executes over the held batch's writes, then the held batch commits and the
//! new one is held in its place. The visible state must always be the model's after exactly
//! the committed records, through any order of steps, and through a failed commit of the held
//! batch: poisoned, the batch executed behind it dropped, and after a reopen every record
//! applied once.

mod common;

use common::{
    ledger_with, open, read_state, serializable_model_after, varied_op, Ledger, Op, TOPOLOGY,
};
use lockstep::{
    Delivery, Depot, DurableWrite, Engine, EngineOptions, Error, HandlerError, NoMessages,
    StorageFaults, TopologyBuilder, WriteFault,
};

const PARTITIONS: u32 = 3;

fn options(faults: &StorageFaults) -> EngineOptions {
    options_with_cache(faults, 0)
}

fn options_with_cache(faults: &StorageFaults, state_cache_bytes_max: usize) -> EngineOptions {
    let mut options = EngineOptions::manual();
    options.state_cache_bytes_max = state_cache_bytes_max;
    // Small batches: many of them, cut at varied places.
    options.batch_records_max = 2;
    options.storage_faults = Some(faults.clone());
    options
}

/// The committed state must be the model's after the records the committed batches consumed
/// (with serializable delivery, a prefix of the input in append order).
fn assert_visible_is_committed_prefix(engine: &Engine, ledger: &Ledger, ops: &[Op]) -> usize {
    let committed = engine.committed(TOPOLOGY).expect("committed");
    let consumed: u64 = committed.offsets.iter().map(|o| o.next_offset).sum();
    let model = serializable_model_after(PARTITIONS, ops, consumed as usize);
    let visible = read_state(engine, ledger);
    assert_eq!(visible.batch_id, committed.batch_id);
    assert_eq!(
        visible.totals, model.state.totals,
        "after {consumed} records"
    );
    assert_eq!(visible.mirror_log, model.state.mirror_log);
    consumed as usize
}

#[test]
fn executed_batches_commit_in_order_and_read_the_held_batch() {
    // Without the state cache, with one so small it evicts all the time, and with a large one:
    // the next batch must read the held batch's keys from its writes, never from the cache.
    for state_cache_bytes_max in [0, 1 << 10, 64 << 20] {
        steps_in_every_mix(state_cache_bytes_max);
    }
}

/// Runs batches until idle, checks that every op of `ops` is then applied, exactly once, and
/// returns how many batches committed.
fn drain_applies_every_op(engine: &Engine, ledger: &Ledger, ops: &[Op]) -> u64 {
    let committed = engine.run_until_idle().expect("idle");
    assert_eq!(
        assert_visible_is_committed_prefix(engine, ledger, ops),
        ops.len()
    );
    committed
}

fn committed_id(engine: &Engine) -> u64 {
    engine.committed(TOPOLOGY).expect("committed").batch_id
}

fn steps_in_every_mix(state_cache_bytes_max: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger_with(PARTITIONS, Delivery::Serializable);
    let faults = StorageFaults::new();
    let options = options_with_cache(&faults, state_cache_bytes_max);
    let engine = open(dir.path(), &ledger, options).expect("open");
    let ops: Vec<Op> = (0..120).map(varied_op).collect();

    engine.append_many(&ledger.ops, &ops[..10]).expect("append");
    assert_eq!(engine.execute_batch(TOPOLOGY).expect("execute"), Some(1));
    // Held, not committed: nothing visible yet.
    assert_eq!(committed_id(&engine), 0);
    assert_visible_is_committed_prefix(&engine, &ledger, &ops);
    assert_eq!(engine.execute_batch(TOPOLOGY).expect("execute"), Some(2));
    assert_eq!(committed_id(&engine), 1);
    assert_visible_is_committed_prefix(&engine, &ledger, &ops);

    // Every mix of steps: appends, executions over a held batch, commits of the held one,
    // and whole batches (which commit the held one first). Batches commit in id order, each
    // once: an executed batch is the one after the held one, which it commits.
    let mut appended = 10;
    let mut held: Option<u64> = Some(2);
    for round in 0..60u32 {
        if round % 3 == 0 && appended < ops.len() {
            let end = (appended + 7).min(ops.len());
            engine
                .append_many(&ledger.ops, &ops[appended..end])
                .expect("append");
            appended = end;
        }
        let before = committed_id(&engine);
        match round % 5 {
            0 | 1 | 3 => match engine.execute_batch(TOPOLOGY).expect("execute") {
                Some(id) => {
                    assert_eq!(id, before + 1 + u64::from(held.is_some()));
                    assert_eq!(committed_id(&engine), id - 1);
                    held = Some(id);
                }
                // No new input: the held batch stays held, nothing commits.
                None => assert_eq!(committed_id(&engine), before),
            },
            2 => {
                let summary = engine.commit_held_batch(TOPOLOGY).expect("commit held");
                let committed = summary.map(|s| s.batch_id);
                assert_eq!(committed, held.take());
                assert_eq!(
                    committed_id(&engine),
                    before + u64::from(committed.is_some())
                );
            }
            _ => {
                let summary = engine.run_batch(TOPOLOGY).expect("run");
                let held_committed = u64::from(held.take().is_some());
                let ran = summary.map(|s| s.batch_id);
                if let Some(id) = ran {
                    assert_eq!(id, before + held_committed + 1);
                }
                assert_eq!(
                    committed_id(&engine),
                    before + held_committed + u64::from(ran.is_some())
                );
            }
        }
        assert_visible_is_committed_prefix(&engine, &ledger, &ops);
    }
    let before = committed_id(&engine);
    let committed = drain_applies_every_op(&engine, &ledger, &ops);
    assert_eq!(
        committed_id(&engine),
        before + committed,
        "run_until_idle counts the held batch"
    );
    let stats = engine.stats(TOPOLOGY).expect("stats");
    assert!(
        stats.batches_pipelined >= 5,
        "{} of {} batches executed over a held batch",
        stats.batches_pipelined,
        stats.batches
    );
    // Nothing is held any more.
    assert!(engine
        .commit_held_batch(TOPOLOGY)
        .expect("commit held")
        .is_none());
}

#[test]
fn closing_discards_the_held_batch_and_its_records_run_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger_with(PARTITIONS, Delivery::Serializable);
    let faults = StorageFaults::new();
    let ops: Vec<Op> = (0..30).map(varied_op).collect();
    {
        let engine = open(dir.path(), &ledger, options(&faults)).expect("open");
        engine.append_many(&ledger.ops, &ops).expect("append");
        assert_eq!(engine.execute_batch(TOPOLOGY).expect("execute"), Some(1));
        assert_eq!(engine.execute_batch(TOPOLOGY).expect("execute"), Some(2));
        engine.close();
    }
    let engine = open(dir.path(), &ledger, options(&faults)).expect("reopen");
    assert_eq!(committed_id(&engine), 1, "the held batch was never written");
    assert_visible_is_committed_prefix(&engine, &ledger, &ops);
    drain_applies_every_op(&engine, &ledger, &ops);
}

#[test]
fn a_failed_append_poisons_and_the_held_batch_never_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger_with(PARTITIONS, Delivery::Serializable);
    let faults = StorageFaults::new();
    let ops: Vec<Op> = (0..20).map(varied_op).collect();
    let engine = open(dir.path(), &ledger, options(&faults)).expect("open");
    engine.append_many(&ledger.ops, &ops[..10]).expect("append");
    assert_eq!(engine.execute_batch(TOPOLOGY).expect("execute"), Some(1));
    faults.fail_next(DurableWrite::Append, WriteFault::WrittenButFailed);
    assert!(engine.append_many(&ledger.ops, &ops[10..]).is_err());
    assert!(engine.poisoned().is_some());
    for result in [
        engine.commit_held_batch(TOPOLOGY).map(|_| ()),
        engine.execute_batch(TOPOLOGY).map(|_| ()),
        engine.run_batch(TOPOLOGY).map(|_| ()),
    ] {
        assert!(matches!(result, Err(Error::Poisoned { .. })), "{result:?}");
    }
    assert_eq!(committed_id(&engine), 0);
    assert_eq!(read_state(&engine, &ledger).batch_id, 0);
}

/// A topology whose handler refuses the record 666, to fail a batch on demand.
fn pill_topology() -> (Depot<u32>, lockstep::Topology, lockstep::PState<u32, u32>) {
    let events = Depot::<u32>::hashed("events", 2, |e| *e).expect("depot");
    let mut builder = TopologyBuilder::<NoMessages>::new("pill", 2);
    let seen = builder.pstate::<u32, u32>("seen");
    let handle = seen.clone();
    builder.consume(&events, move |ctx, event: u32| {
        if event == 666 {
            return Err(HandlerError::user("poison pill"));
        }
        ctx.put(&handle, &event, &1)
    });
    (events, builder.build().expect("topology"), seen)
}

#[test]
fn a_failing_handler_lets_the_held_batch_commit_then_stops_the_topology() {
    for commit_fault in [None, Some(WriteFault::NotWritten)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (events, topology, seen) = pill_topology();
        let faults = StorageFaults::new();
        let engine = Engine::builder(dir.path())
            .options(options(&faults))
            .depot(&events)
            .topology(topology)
            .open()
            .expect("open");
        engine.append_many(&events, &[1, 2]).expect("append");
        assert_eq!(engine.execute_batch("pill").expect("execute"), Some(1));
        engine.append(&events, &666).expect("append");
        if let Some(fault) = commit_fault {
            faults.fail_next(DurableWrite::Commit, fault);
        }
        let error = engine
            .execute_batch("pill")
            .expect_err("the pill fails the batch");
        let failure = engine
            .topology_failure("pill")
            .expect("topology")
            .expect("stopped");
        let committed = engine.committed("pill").expect("committed").batch_id;
        match commit_fault {
            None => {
                assert!(matches!(error, Error::Batch { .. }), "{error}");
                assert!(failure.contains("poison pill"), "{failure}");
                // The held batch committed before the stop.
                assert_eq!(committed, 1);
                let snapshot = engine.snapshot().expect("snapshot");
                assert_eq!(snapshot.get(&seen, &1).expect("read"), Some(1));
                assert_eq!(snapshot.get(&seen, &2).expect("read"), Some(1));
                assert!(matches!(
                    engine.execute_batch("pill"),
                    Err(Error::TopologyStopped { .. })
                ));
            }
            Some(_) => {
                assert!(matches!(error, Error::Poisoned { .. }), "{error}");
                assert!(failure.contains("failed to commit"), "{failure}");
                assert_eq!(committed, 0);
                // Stopped and poisoned: later calls hear the poison, the cause.
                let again = engine.execute_batch("pill");
                assert!(matches!(again, Err(Error::Poisoned { .. })), "{again:?}");
            }
        }
    }
}

#[test]
fn a_failed_commit_of_the_held_batch_drops_the_batch_executed_behind_it() {
    for fault in [WriteFault::NotWritten, WriteFault::WrittenButFailed] {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = ledger_with(PARTITIONS, Delivery::Serializable);
        let faults = StorageFaults::new();
        let ops: Vec<Op> = (0..40).map(varied_op).collect();
        {
            let engine = open(dir.path(), &ledger, options(&faults)).expect("open");
            engine.append_many(&ledger.ops, &ops[..20]).expect("append");
            assert_eq!(engine.execute_batch(TOPOLOGY).expect("execute"), Some(1));
            assert_eq!(engine.execute_batch(TOPOLOGY).expect("execute"), Some(2));
            // Batch 1 committed; batch 2 is held. Its commit fails once batch 3 has executed
            // over its writes.
            faults.fail_next(DurableWrite::Commit, fault);
            match engine.execute_batch(TOPOLOGY) {
                Err(Error::Poisoned { reason }) => {
                    assert!(reason.contains("failed to commit"), "{reason}")
                }
                other => panic!("{fault:?}: expected poisoning, got {other:?}"),
            }
            assert!(engine.poisoned().is_some());
            // Batch 3 was dropped, not held: nothing is left to commit, and nothing may be.
            assert!(engine
                .commit_held_batch(TOPOLOGY)
                .expect("nothing held")
                .is_none());
            assert!(matches!(
                engine.run_batch(TOPOLOGY),
                Err(Error::Poisoned { .. })
            ));
            assert!(matches!(
                engine.execute_batch(TOPOLOGY),
                Err(Error::Poisoned { .. })
            ));
            // Published: batch 1 only. A commit that was written but reported failed is
            // already in the store (a snapshot may show it); the reopen below settles it.
            // Nothing of batch 3 is anywhere.
            let committed = engine.committed(TOPOLOGY).expect("committed");
            assert_eq!(committed.batch_id, 1, "{fault:?}");
            if fault == WriteFault::NotWritten {
                assert_visible_is_committed_prefix(&engine, &ledger, &ops);
            }
            engine.close();
        }
        let engine = open(dir.path(), &ledger, options(&StorageFaults::new())).expect("reopen");
        let recovered = engine.committed(TOPOLOGY).expect("committed").batch_id;
        let expected = match fault {
            WriteFault::NotWritten => 1,
            _ => 2,
        };
        assert_eq!(recovered, expected, "{fault:?}: batches durable at reopen");
        assert_visible_is_committed_prefix(&engine, &ledger, &ops);
        engine.append_many(&ledger.ops, &ops[20..]).expect("append");
        // Every record applied exactly once, whichever side of the failure it was on.
        drain_applies_every_op(&engine, &ledger, &ops);
    }
}

#[test]
fn the_halves_are_refused_when_the_engine_drives_batches_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger_with(PARTITIONS, Delivery::Serializable);
    let engine = open(dir.path(), &ledger, EngineOptions::default()).expect("open");
    assert!(matches!(
        engine.execute_batch(TOPOLOGY),
        Err(Error::NotManual)
    ));
    assert!(matches!(
        engine.commit_held_batch(TOPOLOGY),
        Err(Error::NotManual)
    ));
}

//! Depot retention with several topologies over one depot: a topology that lags holds the
//! depot's records back, also while the engine runs without it (its commit record does); a
//! topology declared after records were trimmed starts at each partition's first kept record;
//! after a reopen, appends continue at the partitions' heads and sequence numbers keep rising.

mod common;

use common::retention::{audit, committed_offsets, counted, first_kept, heads, ops, options};
use common::{ledger, open, read_state, Ledger, Op, TOPOLOGY};
use lockstep::{DepotRetention, Engine, EngineOptions, Error, Topology, TopologyBuilder};

const PARTITIONS: u32 = 2;

fn open_with(
    dir: &std::path::Path,
    ledger: &Ledger,
    others: &[Topology],
    batch_records_max: usize,
) -> Engine {
    let mut builder = Engine::builder(dir)
        .options(options(batch_records_max))
        .depot(&ledger.ops)
        .topology(ledger.topology.clone());
    for topology in others {
        builder = builder.topology(topology.clone());
    }
    builder.open().expect("open")
}

#[test]
fn lagging_and_absent_topologies_hold_records_back_and_new_ones_start_at_the_first_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(PARTITIONS);
    let (audit_topology, audit_seen) = audit("audit", &ledger);

    // Both topologies declared; only the ledger runs: the audit, at offset 0, holds every
    // record back.
    let engine = open_with(
        dir.path(),
        &ledger,
        std::slice::from_ref(&audit_topology),
        10,
    );
    engine
        .append_many(&ledger.ops, &ops(0, 60))
        .expect("append");
    while engine.run_batch(TOPOLOGY).expect("batch").is_some() {}
    engine
        .append_many(&ledger.ops, &ops(60, 2))
        .expect("append");
    assert_eq!(first_kept(&engine, &ledger), vec![0, 0]);
    assert_eq!(engine.append_stats().trims, 0);

    // The audit runs one batch of at most 10 records per partition; the next append trims
    // down to what it has committed.
    engine.run_batch("audit").expect("audit batch");
    let audit_consumed = committed_offsets(&engine, "audit");
    // A batch is a prefix of the append order: it stops when one partition reaches its cap.
    assert!(audit_consumed.contains(&10), "{audit_consumed:?}");
    assert!(audit_consumed.iter().all(|c| *c >= 4), "{audit_consumed:?}");
    engine
        .append_many(&ledger.ops, &ops(62, 2))
        .expect("append");
    assert_eq!(first_kept(&engine, &ledger), audit_consumed);
    let stats = engine.append_stats();
    let audit_total: u64 = audit_consumed.iter().sum();
    assert_eq!((stats.trims, stats.trimmed_records), (2, audit_total));
    let refused = engine.read_depot(&ledger.ops, 1, audit_consumed[1] - 1, usize::MAX);
    assert!(
        matches!(
            refused,
            Err(Error::DepotTrimmed { first_kept_offset, .. }) if first_kept_offset == audit_consumed[1]
        ),
        "{refused:?}"
    );
    // The ledger's next batch deletes the trimmed records' outcomes: one is then refused as
    // trimmed, not answered "none recorded"; a kept record's outcome is still there.
    engine
        .append_many(&ledger.ops, &ops(64, 1))
        .expect("append");
    while engine.run_batch(TOPOLOGY).expect("batch").is_some() {}
    let depot_id = engine.committed(TOPOLOGY).expect("committed").offsets[0].depot_id;
    let snapshot = engine.snapshot().expect("snapshot");
    let record = |offset| lockstep::RecordId {
        depot_id,
        partition: 1,
        offset,
    };
    let trimmed = snapshot.outcome::<i64>(TOPOLOGY, record(audit_consumed[1] - 1));
    assert!(
        matches!(
            trimmed,
            Err(Error::DepotTrimmed { first_kept_offset, .. }) if first_kept_offset == audit_consumed[1]
        ),
        "{trimmed:?}"
    );
    assert!(snapshot
        .outcome::<i64>(TOPOLOGY, record(audit_consumed[1]))
        .expect("kept outcome")
        .is_some());
    drop(snapshot);
    engine.close();

    // Without the audit: its commit record still holds the depot back.
    let engine = open_with(dir.path(), &ledger, &[], 10);
    let heads_before = heads(&engine, &ledger);
    let seq_before = (0..PARTITIONS)
        .flat_map(|p| {
            engine
                .read_depot_log(&ledger.ops, p, audit_consumed[p as usize], usize::MAX)
                .expect("read")
        })
        .map(|logged| logged.seq)
        .max()
        .expect("records");
    let ids = engine
        .append_many(&ledger.ops, &ops(64, 40))
        .expect("append");
    // Appends continue at the heads, and after every earlier sequence number.
    for p in 0..PARTITIONS {
        let first_new = ids
            .iter()
            .filter(|id| id.partition == p)
            .map(|id| id.offset)
            .min();
        assert_eq!(first_new, Some(heads_before[p as usize]), "partition {p}");
        let logged = engine
            .read_depot_log(&ledger.ops, p, heads_before[p as usize], usize::MAX)
            .expect("read");
        assert!(logged.iter().all(|l| l.seq > seq_before), "partition {p}");
    }
    while engine.run_batch(TOPOLOGY).expect("batch").is_some() {}
    engine
        .append_many(&ledger.ops, &ops(104, 2))
        .expect("append");
    assert_eq!(first_kept(&engine, &ledger), audit_consumed);
    engine.close();

    // The audit comes back, with a topology declared for the first time.
    let (late_topology, late_seen) = audit("late", &ledger);
    let engine = open_with(
        dir.path(),
        &ledger,
        &[audit_topology.clone(), late_topology.clone()],
        1000,
    );
    assert_eq!(first_kept(&engine, &ledger), audit_consumed);
    engine.run_until_idle().expect("drain");
    // The audit saw every record: its first batch's, and every one after it.
    let total: u64 = heads(&engine, &ledger).iter().sum();
    assert_eq!(counted(&engine, &audit_seen), total);
    // The late topology saw exactly the records kept when it was declared.
    assert_eq!(counted(&engine, &late_seen), total - audit_total);
    // A record trimmed before it existed counts as processed for it.
    let trimmed = lockstep::RecordId {
        depot_id: ids[0].depot_id,
        partition: 0,
        offset: 0,
    };
    assert!(engine
        .processed("late", trimmed)
        .expect("processed")
        .is_some());

    // Every topology is at the heads now: the next append trims each partition down to its
    // newest `keep_records_min` records (those of the new call included).
    let ids = engine
        .append_many(&ledger.ops, &ops(106, 2))
        .expect("append");
    let heads_now = heads(&engine, &ledger);
    for p in 0..PARTITIONS {
        let head = heads_now[p as usize];
        assert_eq!(
            first_kept(&engine, &ledger)[p as usize],
            head - 3,
            "partition {p}"
        );
        assert_eq!(
            engine
                .read_depot(&ledger.ops, p, head - 3, usize::MAX)
                .expect("read")
                .len(),
            3
        );
    }
    engine.run_until_idle().expect("drain");
    let snapshot_ledger = read_state(&engine, &ledger);
    let ops_total: i64 = snapshot_ledger.totals.values().sum();
    assert_eq!(ops_total as u64, heads_now.iter().sum::<u64>());
    assert!(ids.iter().all(|id| engine
        .processed(TOPOLOGY, *id)
        .expect("processed")
        .is_some()));
    engine.close();

    // A reopen after the trims finds the same starts and the same state.
    let engine = open(dir.path(), &ledger, options(1000)).expect("reopen");
    assert_eq!(
        first_kept(&engine, &ledger),
        heads_now.iter().map(|h| h - 3).collect::<Vec<_>>()
    );
    assert_eq!(read_state(&engine, &ledger), snapshot_ledger);
}

/// Automatic driving: the appender plans trims from progress the committer publishes
/// concurrently. Every acknowledged record is processed exactly once, and whatever is still
/// stored is what was acknowledged.
#[test]
fn trims_while_clients_append_and_batches_run_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(PARTITIONS);
    let mut options = EngineOptions::default();
    options.batch_records_max = 50;
    // The trims come with the appends only: the check below reads from where the last one
    // left each partition, which a maintenance write must not move meanwhile.
    options.maintenance_interval = None;
    let mut retention = DepotRetention::default();
    retention.keep_records_min = 10;
    retention.trim_step_records = 25;
    options.depot_retention = Some(retention);
    let engine = open(dir.path(), &ledger, options).expect("open");
    let acked = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for client in 0..4u32 {
            let (engine, ledger, acked) = (&engine, &ledger, &acked);
            scope.spawn(move || {
                for call in 0..60u32 {
                    let batch = ops(client * 10_000 + call * 8, 8);
                    let ids = engine.append_many(&ledger.ops, &batch).expect("append");
                    acked
                        .lock()
                        .expect("acked")
                        .extend(ids.into_iter().zip(batch));
                }
            });
        }
    });
    let acked: std::collections::BTreeMap<lockstep::RecordId, Op> =
        acked.into_inner().expect("acked").into_iter().collect();
    assert_eq!(acked.len(), 4 * 60 * 8, "every position acknowledged once");
    for id in acked.keys() {
        engine
            .wait_for(TOPOLOGY, *id, std::time::Duration::from_secs(60))
            .expect("processed");
    }
    // One more call carries the trims that the last commits allow.
    let last_ops = ops(0, 8);
    let last_ids = engine.append_many(&ledger.ops, &last_ops).expect("append");
    let stats = engine.append_stats();
    assert!(stats.trimmed_records > 0, "nothing was trimmed: {stats:?}");
    let starts = first_kept(&engine, &ledger);
    let committed = engine.committed(TOPOLOGY).expect("committed");
    for (p, start) in starts.iter().enumerate() {
        let partition = p as u32;
        let consumed = committed.offsets[p].next_offset;
        assert!(
            *start <= consumed,
            "partition {p}: trimmed to {start}, consumed {consumed}"
        );
        let stored = engine
            .read_depot(&ledger.ops, partition, *start, usize::MAX)
            .expect("read");
        let expected: Vec<(u64, Op)> = acked
            .iter()
            .chain(last_ids.iter().zip(&last_ops))
            .filter(|(id, _)| id.partition == partition && id.offset >= *start)
            .map(|(id, op)| (id.offset, *op))
            .collect();
        assert_eq!(stored, expected, "partition {p}");
    }
    for id in &last_ids {
        engine
            .wait_for(TOPOLOGY, *id, std::time::Duration::from_secs(60))
            .expect("processed");
    }
    // Exactly once: the totals are the sums of every acknowledged op.
    let expected: i64 = acked.values().chain(&last_ops).map(|op| op.amount).sum();
    let total: i64 = read_state(&engine, &ledger).totals.values().sum();
    assert_eq!(total, expected);
}

/// A topology that stops consuming a depot keeps its offsets of it through later commits and
/// reopens, so retention holds that depot's records for it, and when it consumes the depot
/// again it resumes where it stopped.
#[test]
fn a_depot_a_topology_stops_consuming_is_held_until_it_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(PARTITIONS);
    let extra = lockstep::Depot::<Op>::hashed("extra", PARTITIONS, |op| op.key).expect("depot");
    // "both" counts the ops of every depot it consumes: the ledger's, and "extra" always.
    let both = |consume_ops: bool| {
        let mut builder = TopologyBuilder::<()>::new("both", PARTITIONS);
        let seen = builder.pstate::<u32, u64>("both-seen");
        let depots = if consume_ops {
            vec![&ledger.ops, &extra]
        } else {
            vec![&extra]
        };
        for depot in depots {
            let counts = seen.clone();
            builder.consume(depot, move |ctx, op: Op| {
                let count = ctx.get(&counts, &op.key)?.unwrap_or(0) + 1;
                ctx.put(&counts, &op.key, &count)
            });
        }
        (builder.build().expect("valid topology"), seen)
    };
    let open_run = |consume_ops: bool, batch_records_max: usize| {
        Engine::builder(dir.path())
            .options(options(batch_records_max))
            .depot(&ledger.ops)
            .depot(&extra)
            .topology(ledger.topology.clone())
            .topology(both(consume_ops).0)
            .open()
            .expect("open")
    };
    // Where "both" has consumed the ledger's depot (catalog id `ops_id`), by partition.
    let held_at = |engine: &Engine, ops_id: u32| -> Vec<u64> {
        let mut offsets: Vec<(u32, u64)> = engine
            .committed("both")
            .expect("committed")
            .offsets
            .iter()
            .filter(|o| o.depot_id == ops_id)
            .map(|o| (o.partition, o.next_offset))
            .collect();
        offsets.sort_unstable();
        offsets.into_iter().map(|(_, offset)| offset).collect()
    };

    // Run 1: "both" consumes the ledger's depot, one batch of at most 10 records per partition.
    let engine = open_run(true, 10);
    let ops_id = engine
        .append_many(&ledger.ops, &ops(0, 60))
        .expect("append")[0]
        .depot_id;
    engine.run_batch("both").expect("batch");
    let held = held_at(&engine, ops_id);
    assert!(held.iter().all(|offset| *offset > 0), "{held:?}");
    engine.close();

    // Runs 2 and 3: "both" consumes only "extra", and commits; the ledger runs ahead.
    for run in 0..2u32 {
        let engine = open_run(false, 1000);
        engine
            .append_many(&extra, &ops(1000 + run * 10, 10))
            .expect("append extra");
        engine.run_until_idle().expect("drain");
        assert_eq!(
            held_at(&engine, ops_id),
            held,
            "run {}: offsets carried forward",
            run + 2
        );
        engine
            .append_many(&ledger.ops, &ops(100 + run * 40, 40))
            .expect("append");
        engine.run_until_idle().expect("drain");
        engine
            .append_many(&ledger.ops, &ops(200 + run * 4, 4))
            .expect("append");
        assert_eq!(first_kept(&engine, &ledger), held, "run {}", run + 2);
        engine.close();
    }

    // Run 4: "both" consumes the ledger's depot again and resumes where it stopped.
    let engine = open_run(true, 1000);
    engine.run_until_idle().expect("drain");
    let (_, seen) = both(true);
    let extra_total: u64 = (0..PARTITIONS)
        .map(|p| engine.depot_next_offset(&extra, p).expect("head"))
        .sum();
    let ops_total: u64 = heads(&engine, &ledger).iter().sum();
    assert_eq!(counted(&engine, &seen), ops_total + extra_total);
}

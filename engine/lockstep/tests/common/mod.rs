//! A small test topology ("ledger") and its sequential reference model.
//!
//! Each `Op { key, amount, mirror }` adds `amount` to `totals[key]` on the key's partition,
//! records the new total as the op's outcome, and sends a message to `mirror`'s partition that
//! appends `(key, amount)` to `mirror_log[mirror]`. The log is order-sensitive, so comparing it
//! with the model checks the documented processing order, not just the sums.

#![allow(dead_code)]

pub mod kill;
pub mod retention;

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;

use lockstep::{
    partition_for_key, Delivery, Depot, Engine, EngineOptions, NoMessages, PState, RecordId,
    Topology, TopologyBuilder,
};
use serde::{Deserialize, Serialize};

pub const TOPOLOGY: &str = "ledger";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    pub key: u32,
    pub amount: i64,
    pub mirror: u32,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Mirror {
    pub to: u32,
    pub from: u32,
    pub amount: i64,
}

#[derive(Clone)]
pub struct Ledger {
    pub partitions: u32,
    pub ops: Depot<Op>,
    pub totals: PState<u32, i64>,
    pub mirror_log: PState<u32, Vec<(u32, i64)>>,
    pub topology: Topology,
}

pub fn ledger(partitions: u32) -> Ledger {
    ledger_with(partitions, Delivery::Parallel)
}

pub fn ledger_with(partitions: u32, delivery: Delivery) -> Ledger {
    let ops = Depot::<Op>::hashed("ops", partitions, |op| op.key).expect("valid depot");
    let mut builder = TopologyBuilder::<Mirror>::new(TOPOLOGY, partitions);
    let totals = builder.pstate::<u32, i64>("totals");
    let mirror_log = builder.pstate::<u32, Vec<(u32, i64)>>("mirror-log");
    let (t, m) = (totals.clone(), mirror_log.clone());
    builder.consume(&ops, move |ctx, op: Op| {
        let total = ctx.get(&t, &op.key)?.unwrap_or(0) + op.amount;
        ctx.put(&t, &op.key, &total)?;
        ctx.record_outcome(&total)?;
        ctx.send(
            &op.mirror,
            Mirror {
                to: op.mirror,
                from: op.key,
                amount: op.amount,
            },
        )
    });
    builder.on_message(move |ctx, msg: Mirror| {
        let mut log = ctx.get(&m, &msg.to)?.unwrap_or_default();
        log.push((msg.from, msg.amount));
        ctx.put(&m, &msg.to, &log)
    });
    builder.delivery(delivery);
    Ledger {
        partitions,
        ops,
        totals,
        mirror_log,
        topology: builder.build().expect("valid topology"),
    }
}

pub fn open(dir: &Path, ledger: &Ledger, options: EngineOptions) -> lockstep::Result<Engine> {
    Engine::builder(dir)
        .options(options)
        .depot(&ledger.ops)
        .topology(ledger.topology.clone())
        .open()
}

/// Committed state as the engine shows it in one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerState {
    pub batch_id: u64,
    pub totals: BTreeMap<u32, i64>,
    pub mirror_log: BTreeMap<u32, Vec<(u32, i64)>>,
}

pub fn read_state(engine: &Engine, ledger: &Ledger) -> LedgerState {
    let snapshot = engine.snapshot().expect("snapshot");
    let all = usize::MAX;
    LedgerState {
        batch_id: snapshot.batch_id(TOPOLOGY).expect("batch id"),
        totals: snapshot
            .range(&ledger.totals, Bound::Unbounded, Bound::Unbounded, all)
            .expect("totals")
            .into_iter()
            .collect(),
        mirror_log: snapshot
            .range(&ledger.mirror_log, Bound::Unbounded, Bound::Unbounded, all)
            .expect("mirror log")
            .into_iter()
            .collect(),
    }
}

/// The sequential reference model: the documented processing order, one step at a time.
#[derive(Debug, Clone)]
pub struct Model {
    pub partitions: u32,
    /// Serializable delivery: each record's message is handled before the next record.
    pub serializable: bool,
    pub state: LedgerState,
    /// Durable but not yet consumed records in append order: (partition, offset, op).
    pub pending: std::collections::VecDeque<(u32, u64, Op)>,
    pub next_offset: Vec<u64>,
    pub outcomes: BTreeMap<(u32, u64), (u64, i64)>,
}

impl Model {
    pub fn new(partitions: u32) -> Self {
        Self::with_delivery(partitions, Delivery::Parallel)
    }

    pub fn with_delivery(partitions: u32, delivery: Delivery) -> Self {
        Self {
            partitions,
            serializable: delivery == Delivery::Serializable,
            state: LedgerState::default(),
            pending: std::collections::VecDeque::new(),
            next_offset: vec![0; partitions as usize],
            outcomes: BTreeMap::new(),
        }
    }

    pub fn partition(&self, key: u32) -> u32 {
        partition_for_key(&key, self.partitions).expect("u32 encodes")
    }

    /// Records an append; returns the (partition, offset) the engine must assign.
    pub fn append(&mut self, op: Op) -> (u32, u64) {
        let p = self.partition(op.key);
        let offset = self.next_offset[p as usize];
        self.next_offset[p as usize] += 1;
        self.pending.push_back((p, offset, op));
        (p, offset)
    }

    /// Applies one batch: the longest prefix of the pending records, in append order, in which
    /// no partition has more than `records_max`; false if there was nothing to do.
    pub fn run_batch(&mut self, records_max: usize) -> bool {
        let mut per_partition = vec![0usize; self.partitions as usize];
        let mut take = 0;
        for (p, _, _) in &self.pending {
            if per_partition[*p as usize] >= records_max {
                break;
            }
            per_partition[*p as usize] += 1;
            take += 1;
        }
        if take == 0 {
            return false;
        }
        let batch: Vec<(u32, u64, Op)> = self.pending.drain(..take).collect();
        let batch_id = self.state.batch_id + 1;
        if self.serializable {
            // One record at a time in append order, its message delivered before the next.
            for (p, offset, op) in batch {
                let message = self.apply_record(batch_id, p, offset, op);
                self.deliver(vec![message]);
            }
        } else {
            // Round 0 partition by partition; inboxes fill in (sending partition, send order).
            let mut inboxes: Vec<Vec<Mirror>> = vec![Vec::new(); self.partitions as usize];
            for partition in 0..self.partitions {
                for (p, offset, op) in &batch {
                    if *p == partition {
                        let message = self.apply_record(batch_id, *p, *offset, *op);
                        inboxes[self.partition(op.mirror) as usize].push(message);
                    }
                }
            }
            for inbox in inboxes {
                self.deliver(inbox);
            }
        }
        self.state.batch_id = batch_id;
        true
    }

    fn apply_record(&mut self, batch_id: u64, partition: u32, offset: u64, op: Op) -> Mirror {
        let total = self.state.totals.get(&op.key).copied().unwrap_or(0) + op.amount;
        self.state.totals.insert(op.key, total);
        self.outcomes.insert((partition, offset), (batch_id, total));
        Mirror {
            to: op.mirror,
            from: op.key,
            amount: op.amount,
        }
    }

    fn deliver(&mut self, inbox: Vec<Mirror>) {
        for msg in inbox {
            self.state
                .mirror_log
                .entry(msg.to)
                .or_default()
                .push((msg.from, msg.amount));
        }
    }

    pub fn run_until_idle(&mut self, records_max: usize) {
        while self.run_batch(records_max) {}
    }
}

/// Checks every outcome the model knows against the engine's. Below a partition's first kept
/// offset (depot retention), an outcome may already be deleted: then the read says the record
/// was trimmed; one still there must be the model's.
pub fn assert_outcomes(engine: &Engine, ledger: &Ledger, model: &Model, depot_id: u32) {
    let snapshot = engine.snapshot().expect("snapshot");
    for p in 0..ledger.partitions {
        let first_kept = engine
            .depot_first_kept_offset(&ledger.ops, p)
            .expect("first kept");
        for offset in 0..model.next_offset[p as usize] {
            let id = RecordId {
                depot_id,
                partition: p,
                offset,
            };
            let expected = model.outcomes.get(&(p, offset)).copied();
            match snapshot.outcome::<i64>(TOPOLOGY, id) {
                Err(lockstep::Error::DepotTrimmed { .. }) if offset < first_kept => {}
                read => assert_eq!(
                    read.expect("outcome read").map(|o| (o.batch_id, o.value)),
                    expected,
                    "outcome of partition {p} offset {offset}"
                ),
            }
        }
    }
}

/// `n` ops over a few keys.
pub fn sample_ops(n: u32) -> Vec<Op> {
    (0..n)
        .map(|i| Op {
            key: i % 5,
            amount: 1,
            mirror: i % 3,
        })
        .collect()
}

/// The `i`-th of a stream of ops over few keys, with amounts of both signs and varied mirrors,
/// so that a batch reading stale state shows in the totals.
pub fn varied_op(i: u32) -> Op {
    Op {
        key: i % 5,
        amount: i64::from(i % 9) - 3,
        mirror: (i / 2) % 4,
    }
}

/// The model after the first `records` of `ops`, in append order, with serializable delivery
/// (which makes the state independent of where batches were cut).
pub fn serializable_model_after(partitions: u32, ops: &[Op], records: usize) -> Model {
    let mut model = Model::with_delivery(partitions, Delivery::Serializable);
    for op in &ops[..records] {
        model.append(*op);
    }
    model.run_until_idle(usize::MAX);
    model
}

/// How many records the ledger's depot holds, over all partitions.
pub fn stored_records(engine: &Engine, ledger: &Ledger) -> usize {
    (0..ledger.partitions)
        .map(|p| {
            engine
                .read_depot(&ledger.ops, p, 0, usize::MAX)
                .expect("read")
                .len()
        })
        .sum()
}

/// A topology ("sloppy", 4 partitions, depot "events") whose handler breaks the partition
/// contract for some events: it writes `event` and also `event + 1000`, which may hash to
/// another partition; such an event fails its batch.
pub struct Sloppy {
    pub events: Depot<u32>,
    pub state: PState<u32, u32>,
    pub topology: Topology,
}

pub fn sloppy() -> Sloppy {
    let events = Depot::<u32>::hashed("events", 4, |e| *e).expect("depot");
    let mut builder = TopologyBuilder::<NoMessages>::new("sloppy", 4);
    let state = builder.pstate::<u32, u32>("sloppy-state");
    let handle = state.clone();
    builder.consume(&events, move |ctx, event: u32| {
        ctx.put(&handle, &event, &1)?;
        ctx.put(&handle, &(event + 1_000), &1)
    });
    Sloppy {
        events,
        state,
        topology: builder.build().expect("topology"),
    }
}

/// An event whose two keys in the sloppy topology's `state` land on two partitions: it fails
/// its batch.
pub fn misplaced_event(state: &PState<u32, u32>) -> u32 {
    (0..100u32)
        .find(|&e| {
            state.partition_of(&e).expect("encodes")
                != state.partition_of(&(e + 1_000)).expect("encodes")
        })
        .expect("some key pair lands on two partitions")
}

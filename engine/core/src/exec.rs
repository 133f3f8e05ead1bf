//! Batch execution: runs a topology's handlers over one batch of input, deterministically.
//!
//! ## Processing order (a documented contract)
//!
//! Every depot record carries the global sequence number the appender gave it (append order:
//! the order appends were made durable, and within one append call the call's order). A
//! batch's input is a list of records in that order.
//!
//! 1. **Round 0**: every partition `p` handles its records, in append order (for one depot,
//!    that is offset order).
//! 2. **Routing**: messages sent in a round are delivered in the next round. Partition `q`
//!    receives them ordered by sending partition (ascending), then by the order they were sent.
//! 3. **Round r ≥ 1**: every partition handles its delivered messages in that order. Rounds
//!    repeat until no messages remain, or fail the batch past `rounds_max`.
//!
//! Partitions of one round run in parallel, but a partition only touches its own keys and its
//! own outbox, so the result is the same as running them one after another in partition order:
//! the same input gives the same write sets, byte for byte, whatever the thread count.
//!
//! ## Serializable delivery
//!
//! A topology built with [`Delivery::Serializable`] is handed its records one at a time, in
//! append order across all partitions and depots. Each record's messages, and their messages,
//! are all handled (in rounds, as above) before the next record starts. The batch's effect is therefore
//! exactly that of applying its records one after another in append order, whatever partitions
//! their messages visit: a sequential reference model fed the same records in that order must
//! end in the same state with the same outcomes.

use std::sync::Arc;

use crate::ctx::{Ctx, HandlerError, View};
use crate::schema::{DepotSpec, PStateSpec};
use crate::store::{StateRead, StoreError, WriteSet};
use crate::topology::{Consumer, MessageFn, RecordId};

/// The catalog ids the engine resolved for a topology's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedIds {
    /// One id per consumed depot, in consumption order.
    pub depot_ids: Vec<u32>,
    /// One id per PState, in declaration order.
    pub pstate_ids: Vec<u32>,
    /// The id of the topology's outcome table.
    pub outcome_pstate_id: u32,
}

/// One depot record of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputRecord {
    /// Index of the consuming depot in the topology's consumption order.
    pub consumer: usize,
    /// Partition of the record (and of the handler that gets it).
    pub partition: u32,
    /// Offset within the partition.
    pub offset: u64,
    /// Global append sequence number.
    pub seq: u64,
    /// The record's envelope.
    pub bytes: Vec<u8>,
}

/// The input of one batch.
#[derive(Debug, Clone, Default)]
pub struct BatchInput {
    /// The id the batch commits under.
    pub batch_id: u64,
    /// The batch's records in append order (ascending `seq`).
    pub records: Vec<InputRecord>,
}

/// What one batch produced.
#[derive(Debug, Clone, Default)]
pub struct BatchOutput {
    /// The final write set of each partition, indexed by partition.
    pub writes: Vec<WriteSet>,
    /// Rounds run, including round 0 (with serializable delivery: summed over records).
    pub rounds: u32,
    /// Depot records handled.
    pub records: u64,
    /// Messages delivered.
    pub messages: u64,
}

/// Why a batch failed. Nothing of a failed batch is committed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// A handler returned an error.
    #[error("handler failed on partition {partition} in round {round}{}: {source}", record_suffix(.record))]
    Handler {
        /// Where.
        partition: u32,
        /// Which round (0 = depot records).
        round: u32,
        /// The record being handled, in round 0.
        record: Option<RecordId>,
        /// What went wrong.
        #[source]
        source: HandlerError,
    },
    /// Messages were still flowing after `rounds_max` rounds.
    #[error("batch still had messages after {rounds_max} rounds (raise rounds_max, or look for a message cycle)")]
    RoundsExceeded {
        /// The bound.
        rounds_max: u32,
    },
    /// One round sent more messages than allowed.
    #[error("round {round} sent {messages} messages, over the limit of {messages_max}")]
    MessagesExceeded {
        /// The round.
        round: u32,
        /// How many it sent.
        messages: usize,
        /// The bound.
        messages_max: usize,
    },
    /// The input does not match the topology (an engine bug, reported rather than ignored).
    #[error("batch input has {got} partitions/slices where the topology expects {expected}")]
    InputShape {
        /// Expected count.
        expected: usize,
        /// Given count.
        got: usize,
    },
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn record_suffix(record: &Option<RecordId>) -> String {
    match record {
        Some(r) => format!(
            " at depot {} partition {} offset {}",
            r.depot_id, r.partition, r.offset
        ),
        None => String::new(),
    }
}

/// How a batch's records are handed to the handlers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Delivery {
    /// Round 0 hands every partition all its records at once; partitions run in parallel and
    /// messages flow in later rounds. Fastest; right when a record's messages never race
    /// another record's on the same keys (or when such races are resolved by the topology).
    #[default]
    Parallel,
    /// Records are handled one at a time in append order, each with all its messages, before
    /// the next: the batch is equivalent to applying its records sequentially (see the module
    /// docs). Right for cross-partition invariants such as parent/child links.
    Serializable,
}

/// The object-safe face of a typed topology.
pub(crate) trait RunBatch: Send + Sync {
    fn name(&self) -> &str;
    fn partitions(&self) -> u32;
    fn consumed_depots(&self) -> Vec<Arc<DepotSpec>>;
    fn pstates(&self) -> &[Arc<PStateSpec>];
    fn execute(
        &self,
        input: BatchInput,
        ids: &ResolvedIds,
        base: &dyn StateRead,
        threads: usize,
    ) -> Result<BatchOutput, BatchError>;
}

pub(crate) struct TypedTopology<M> {
    pub(crate) name: Arc<str>,
    pub(crate) partitions: u32,
    pub(crate) consumers: Vec<Consumer<M>>,
    pub(crate) on_message: Option<Arc<MessageFn<M>>>,
    pub(crate) pstates: Vec<Arc<PStateSpec>>,
    pub(crate) rounds_max: u32,
    pub(crate) round_messages_max: usize,
    pub(crate) delivery: Delivery,
}

/// One partition's working state for the whole batch.
struct PartitionWork<M> {
    writes: WriteSet,
    /// Round-0 records, in append order.
    records: Vec<InputRecord>,
    inbox: Vec<M>,
    outbox: Vec<(u32, M)>,
}

/// Rounds smaller than this run on the calling thread: spawning costs more than they do.
const PARALLEL_ITEMS_MIN: usize = 256;

impl<M: Send + 'static> TypedTopology<M> {
    fn run_partition(
        &self,
        partition: u32,
        round: u32,
        work: &mut PartitionWork<M>,
        batch_id: u64,
        ids: &ResolvedIds,
        base: &dyn StateRead,
    ) -> Result<(), BatchError> {
        // Taken out while the context borrows the rest, and put back emptied afterwards, so a
        // partition's buffers are allocated once per batch rather than once per record.
        let mut records = std::mem::take(&mut work.records);
        let mut inbox = std::mem::take(&mut work.inbox);
        let mut ctx = Ctx {
            topology: &self.name,
            partition,
            partitions: self.partitions,
            batch_id,
            record: None,
            pstate_ids: &ids.pstate_ids,
            outcome_pstate_id: ids.outcome_pstate_id,
            view: View {
                base,
                writes: &mut work.writes,
            },
            outbox: &mut work.outbox,
            has_message_handler: self.on_message.is_some(),
        };
        for input in records.drain(..) {
            let (Some(consumer), Some(depot_id)) = (
                self.consumers.get(input.consumer),
                ids.depot_ids.get(input.consumer),
            ) else {
                return Err(BatchError::InputShape {
                    expected: self.consumers.len(),
                    got: input.consumer + 1,
                });
            };
            let record = RecordId {
                depot_id: *depot_id,
                partition,
                offset: input.offset,
            };
            ctx.record = Some(record);
            (consumer.handler)(&mut ctx, &input.bytes).map_err(|source| BatchError::Handler {
                partition,
                round,
                record: Some(record),
                source,
            })?;
        }
        ctx.record = None;
        if !inbox.is_empty() {
            let handler = self.on_message.as_ref().ok_or(BatchError::Handler {
                partition,
                round,
                record: None,
                source: HandlerError::NoMessageHandler,
            })?;
            for message in inbox.drain(..) {
                handler(&mut ctx, message).map_err(|source| BatchError::Handler {
                    partition,
                    round,
                    record: None,
                    source,
                })?;
            }
        }
        work.records = records;
        work.inbox = inbox;
        Ok(())
    }

    /// The round after `round`, whose `sent` messages are about to be delivered, unless that
    /// breaks the message or round bound.
    fn next_round(&self, round: u32, sent: usize) -> Result<u32, BatchError> {
        if sent > self.round_messages_max {
            return Err(BatchError::MessagesExceeded {
                round,
                messages: sent,
                messages_max: self.round_messages_max,
            });
        }
        round
            .checked_add(1)
            .filter(|next| *next <= self.rounds_max)
            .ok_or(BatchError::RoundsExceeded {
                rounds_max: self.rounds_max,
            })
    }

    /// Handles one record on its partition, then every message it causes, round by round.
    /// Returns the rounds run (at least 1) and the messages delivered.
    fn run_record_to_quiescence(
        &self,
        record: InputRecord,
        work: &mut [PartitionWork<M>],
        batch_id: u64,
        ids: &ResolvedIds,
        base: &dyn StateRead,
    ) -> Result<(u32, u64), BatchError> {
        let partition = record.partition as usize;
        let slot = &mut work[partition];
        slot.records.push(record);
        self.run_partition(partition as u32, 0, slot, batch_id, ids, base)?;
        if work[partition].outbox.is_empty() {
            // The usual first hop of most commands: no messages, nothing more to set up.
            return Ok((1, 0));
        }
        let mut senders: Vec<usize> = vec![partition];
        let mut receivers: Vec<usize> = Vec::new();
        let mut round = 0u32;
        let mut messages = 0u64;
        while !senders.is_empty() {
            let sent: usize = senders.iter().map(|&s| work[s].outbox.len()).sum();
            round = self.next_round(round, sent)?;
            // Senders are ascending, so each inbox fills in (sending partition, send order).
            receivers.clear();
            for &sender in &senders {
                let mut outbox = std::mem::take(&mut work[sender].outbox);
                for (destination, message) in outbox.drain(..) {
                    work[destination as usize].inbox.push(message);
                    receivers.push(destination as usize);
                }
                work[sender].outbox = outbox;
            }
            receivers.sort_unstable();
            receivers.dedup();
            messages += sent as u64;
            senders.clear();
            for &receiver in &receivers {
                self.run_partition(
                    receiver as u32,
                    round,
                    &mut work[receiver],
                    batch_id,
                    ids,
                    base,
                )?;
                if !work[receiver].outbox.is_empty() {
                    senders.push(receiver);
                }
            }
        }
        Ok((round + 1, messages))
    }

    fn execute_serializable(
        &self,
        records: Vec<InputRecord>,
        work: &mut [PartitionWork<M>],
        batch_id: u64,
        ids: &ResolvedIds,
        base: &dyn StateRead,
    ) -> Result<(u32, u64), BatchError> {
        let mut rounds = 0u32;
        let mut messages = 0u64;
        for record in records {
            let (record_rounds, record_messages) =
                self.run_record_to_quiescence(record, work, batch_id, ids, base)?;
            rounds = rounds.saturating_add(record_rounds);
            messages += record_messages;
        }
        Ok((rounds, messages))
    }

    fn run_round(
        &self,
        round: u32,
        work: &mut [PartitionWork<M>],
        batch_id: u64,
        ids: &ResolvedIds,
        base: &dyn StateRead,
        threads: usize,
    ) -> Result<(), BatchError> {
        let items: usize = work.iter().map(|w| w.inbox.len() + w.records.len()).sum();
        let busy = work
            .iter()
            .filter(|w| !w.inbox.is_empty() || !w.records.is_empty())
            .count();
        if threads <= 1 || busy <= 1 || items < PARALLEL_ITEMS_MIN {
            for (p, w) in work.iter_mut().enumerate() {
                self.run_partition(p as u32, round, w, batch_id, ids, base)?;
            }
            return Ok(());
        }
        let chunk = work.len().div_ceil(threads);
        let results: Vec<Result<(), BatchError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = work
                .chunks_mut(chunk)
                .enumerate()
                .map(|(c, chunk_work)| {
                    scope.spawn(move || {
                        for (i, w) in chunk_work.iter_mut().enumerate() {
                            let p = (c * chunk + i) as u32;
                            self.run_partition(p, round, w, batch_id, ids, base)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| match h.join() {
                    Ok(result) => result,
                    // A panicking handler is a bug in user code; propagate it as the panic it is.
                    Err(panic) => std::panic::resume_unwind(panic),
                })
                .collect()
        });
        // Chunks are in partition order, so the first error is the lowest partition's: the same
        // error a sequential run reports.
        results.into_iter().collect()
    }
}

impl<M: Send + 'static> RunBatch for TypedTopology<M> {
    fn name(&self) -> &str {
        &self.name
    }

    fn partitions(&self) -> u32 {
        self.partitions
    }

    fn consumed_depots(&self) -> Vec<Arc<DepotSpec>> {
        self.consumers.iter().map(|c| c.depot.clone()).collect()
    }

    fn pstates(&self) -> &[Arc<PStateSpec>] {
        &self.pstates
    }

    fn execute(
        &self,
        input: BatchInput,
        ids: &ResolvedIds,
        base: &dyn StateRead,
        threads: usize,
    ) -> Result<BatchOutput, BatchError> {
        let partitions = self.partitions as usize;
        if ids.depot_ids.len() != self.consumers.len() || ids.pstate_ids.len() != self.pstates.len()
        {
            return Err(BatchError::InputShape {
                expected: self.consumers.len() + self.pstates.len(),
                got: ids.depot_ids.len() + ids.pstate_ids.len(),
            });
        }
        if let Some(bad) = input
            .records
            .iter()
            .find(|r| r.partition as usize >= partitions || r.consumer >= self.consumers.len())
        {
            return Err(BatchError::InputShape {
                expected: partitions,
                got: bad.partition as usize + 1,
            });
        }
        let records = input.records.len() as u64;
        // Sized for two keys per record of the partition (an outcome and about one more: the
        // component topology writes 1.8 per record), so the write sets rarely rehash as they
        // grow; a partition's messages write there too, which the estimate leaves to growth.
        let mut records_per_partition = vec![0usize; partitions];
        for record in &input.records {
            records_per_partition[record.partition as usize] += 1;
        }
        let mut work: Vec<PartitionWork<M>> = records_per_partition
            .into_iter()
            .map(|partition_records| PartitionWork {
                writes: WriteSet::with_capacity(partition_records * 2),
                records: Vec::new(),
                inbox: Vec::new(),
                outbox: Vec::new(),
            })
            .collect();
        if self.delivery == Delivery::Serializable {
            let (rounds, messages) =
                self.execute_serializable(input.records, &mut work, input.batch_id, ids, base)?;
            return Ok(BatchOutput {
                writes: work.into_iter().map(|w| w.writes).collect(),
                rounds,
                records,
                messages,
            });
        }
        // Each partition's list keeps the input's append order.
        for record in input.records {
            work[record.partition as usize].records.push(record);
        }
        let mut round = 0u32;
        let mut messages = 0u64;
        loop {
            self.run_round(round, &mut work, input.batch_id, ids, base, threads)?;
            let sent: usize = work.iter().map(|w| w.outbox.len()).sum();
            if sent == 0 {
                break;
            }
            round = self.next_round(round, sent)?;
            // Deliver in (sending partition, send order): iterate senders in partition order.
            for sender in 0..work.len() {
                let outbox = std::mem::take(&mut work[sender].outbox);
                for (destination, message) in outbox {
                    work[destination as usize].inbox.push(message);
                }
            }
            messages += sent as u64;
        }
        Ok(BatchOutput {
            writes: work.into_iter().map(|w| w.writes).collect(),
            rounds: round + 1,
            records,
            messages,
        })
    }
}

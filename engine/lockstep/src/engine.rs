//! The engine: opens the data directory, recovers, and runs the appender and the batch drivers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use lockstep_core::exec::{BatchInput, InputRecord, ResolvedIds};
use lockstep_core::layout::key_pstate_id;
use lockstep_core::store::{
    append_digest, BatchCommit, CommitRecord, CommitStore, ConsumedOffset, DepotEntry, DepotLog,
    DepotTrim, Entry, Overlaid, ProducerState, StateRead, StoreError,
};
use lockstep_core::{
    decode_envelope, outcome_key, Depot, DepotSpec, PStateKind, PStateSpec, RecordId, SchemaError,
    Topology,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::cache::{CachePolicy, CachedState, StateCache};
use crate::catalog::{self, outcome_table_name};
use crate::error::Error;
use crate::faults::{faulted_write, DurableWrite, StorageFaults};
use crate::producers::{CallKind, Producers, EXPIRED_PER_GROUP_MAX};
use crate::snapshot::Snapshot;
use crate::store::{depot_entry_bytes, RocksStore, StoreOptions, WAL_BYTES_MAX_DEFAULT};

/// Who starts batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BatchDriving {
    /// A thread per topology starts a batch as soon as there is new input and the previous
    /// batch has executed; a second thread commits it, while the next one executes (see the
    /// commit protocol, *Pipelining*).
    #[default]
    Automatic,
    /// Batches run only when the caller runs them: [`Engine::run_batch`], or its two halves
    /// [`Engine::execute_batch`] and [`Engine::commit_held_batch`] (tests, simulations, replays).
    Manual,
}

/// Whether depot records are deleted once every topology that consumes them has committed
/// past them ([`EngineOptions::depot_retention`]).
///
/// A depot partition is trimmed below the lowest offset any of its consuming topologies has
/// yet to commit (topologies declared in this run, and those the data directory has commit
/// records of, declared or not), keeping at least its `keep_records_min` newest records and
/// always its last one. A depot no topology consumes is never trimmed. The deletion is written
/// with a depot append (to any depot), so it costs no synced write of its own; on an idle
/// engine, the appender's maintenance check ([`EngineOptions::maintenance_interval`]) writes
/// it by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DepotRetention {
    /// Newest records of each partition kept even once consumed (at least one is always kept:
    /// the last record is where the engine finds the partition's next offset at open).
    pub keep_records_min: u64,
    /// A partition is trimmed only when at least this many more of its records can go (0
    /// counts as 1). Each trim is one range deletion, which reads of the partition step over
    /// until compaction drops it, so trims are kept few; a partition holds up to this many
    /// consumed records beyond `keep_records_min`.
    pub trim_step_records: u64,
}

impl Default for DepotRetention {
    fn default() -> Self {
        Self {
            keep_records_min: 100_000,
            trim_step_records: 16_384,
        }
    }
}

/// [`EngineOptions::producer_expiry`] by default.
const PRODUCER_EXPIRY_DEFAULT: Duration = Duration::from_secs(24 * 60 * 60);

/// [`EngineOptions::maintenance_interval`] by default.
const MAINTENANCE_INTERVAL_DEFAULT: Duration = Duration::from_secs(1);

/// The shortest [`EngineOptions::maintenance_interval`]: checks closer together would keep
/// the appender busy for nothing.
const MAINTENANCE_INTERVAL_MIN: Duration = Duration::from_millis(10);

/// [`EngineOptions::state_cache_bytes_max`] by default.
const STATE_CACHE_BYTES_DEFAULT: usize = 64 << 20;

/// [`EngineOptions::block_cache_bytes`] by default.
const BLOCK_CACHE_BYTES_DEFAULT: usize = 64 << 20;

/// Tuning knobs. The defaults suit a small machine.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EngineOptions {
    /// Who starts batches.
    pub batch_driving: BatchDriving,
    /// Most records one partition consumes per batch, across all its depots.
    ///
    /// 2,000 by default. A batch commits while the next one executes, so the last batch of a
    /// burst commits with nothing to overlap it: a smaller batch shortens that wait, keeps the
    /// committer busy sooner, and bounds how long a record waits for its batch. On the
    /// component workload (8 partitions, ~3 µs of execution per command under load) 2,000 per
    /// partition is up to ~50 ms of execution per batch, long enough to hide a commit's sync;
    /// it was 4–9% faster than 10,000, the default before (BENCHMARKS.md).
    pub batch_records_max: usize,
    /// Most record bytes one partition consumes per batch (at least one record is always
    /// taken, so one large record cannot stall a partition).
    pub batch_bytes_max: usize,
    /// Most append calls waiting for the appender; further appenders block (backpressure).
    pub append_queue_max: usize,
    /// Most record bytes written in one group commit.
    pub append_group_bytes_max: usize,
    /// Threads that run the partitions of one round.
    pub threads: usize,
    /// Bytes of committed state kept in memory for handlers' point reads and set scans (0:
    /// none), counting keys, values and an estimate of each entry's bookkeeping; the cache's
    /// real footprint is proportional to this (up to about twice it), and independent of the
    /// state's size. Commits write their map entries through to it, and reads of existing keys
    /// fill it. An eighth of it holds small sets' elements whole, for their scans.
    ///
    /// 64 MiB by default. Under a steady load the memtables grow to millions of entries and
    /// every read of recently written state walks their skiplist; the cache answers those
    /// reads instead. In the component benchmark's 15-second runs at half its peak it cut the
    /// append-to-visible p99 4–6× embedded and 1.3–1.9× over the network, and it drained a
    /// 2-million-command backlog ~20% faster. It costs bulk loads of fresh keys about a
    /// quarter of their rate, random reads over a large state nothing measurable, and the
    /// memory (benches/EXPERIMENTS.md, *A write-through state cache, on by default*). Set 0 for a
    /// load-only engine or when memory is short.
    pub state_cache_bytes_max: usize,
    /// Bytes of RocksDB's cache of uncompressed table blocks, shared by the depots, the
    /// PStates and the catalog. Reads of state that has left the memtables for table files
    /// (large states, or state not written lately) find their blocks here, or else read and
    /// decompress them again. Pages of the table files are also in the operating system's
    /// page cache, which this does not count.
    ///
    /// 64 MiB by default. One cache for all bounds what RocksDB's defaults would spend (a
    /// cache of 32 MiB per column family); its size made no difference beyond the machine's
    /// noise in the component scaling run at 1M components, from 32 to 256 MiB
    /// (BENCHMARKS.md): there, fetching the blocks it missed (from the operating system's
    /// page cache) took about a tenth of the batch driver's time. The table files' index and
    /// Bloom filter blocks are kept in memory outside it (RocksDB's defaults), and those grow
    /// slowly with the state on disk.
    pub block_cache_bytes: usize,
    /// Most bytes a second RocksDB's memtable flushes and compactions write, on average
    /// (`None`: as fast as they can). Below 1 MiB/s counts as 1 MiB/s.
    ///
    /// `None` by default. A flush writes a memtable out in one burst (the depot family's 64 MiB
    /// memtable is ~26 MB of table file, written in ~0.4 s on the benchmark machine), and a
    /// commit's synced write that lands behind the burst on the device waits for it. A limit
    /// spreads the bursts out, and trades the median for the tail: on the 2-core benchmark
    /// machine at 130,000 component commands/s, 16 MiB/s lowered the embedded
    /// append-to-visible p99 in 14 of 18 alternated pairs (median 65 → 44 ms), left the
    /// network p99 as it was, and raised the p50s (embedded 8.6 → 10.0 ms, network 13.0 →
    /// 16.5) (benches/EXPERIMENTS.md, *Background writes at a limited rate*). It is not the default
    /// because a limit that suits one disk and load can starve another: compactions rewrite
    /// more as the state grows (that benchmark's state is small, and a large state's need was
    /// not measured), and when they fall behind, RocksDB slows writes and then stops them.
    /// Slowed writes then go at this rate too (RocksDB's `delayed_write_rate` follows its
    /// limiter), not at RocksDB's usual 16 MiB/s. Set it to a fraction of what the disk
    /// sustains, above what flushes and compactions need at the engine's peak load.
    pub background_write_bytes_per_s: Option<u64>,
    /// Most bytes of write-ahead log RocksDB keeps (below 1 MiB counts as 1 MiB): once its
    /// live log files pass it, RocksDB flushes the memtables that still need the oldest one,
    /// so that it can go. A restart replays the log kept before the engine serves, so this
    /// bounds the restart's time as well as the log's room on disk. Freed log files are
    /// written over rather than deleted (up to 4 of them wait to be), so the log takes up to
    /// those files' room more.
    ///
    /// 256 MiB by default: a restart replayed 207–213 MiB and opened in 0.9–1.0 s after a
    /// 15-second sustained run of the component benchmark, against 422–449 MiB and 1.9–2.4 s
    /// without a bound of the engine's, and more the longer the engine ran, up to
    /// RocksDB's own bound of four times the memtables' total (1.75 GiB): the catalog's
    /// memtable, written a few bytes a commit, keeps every log file alive until then. A much
    /// smaller bound flushes memtables before they fill: more, smaller table files, more
    /// compaction (benches/EXPERIMENTS.md, *A bounded, recycled write-ahead log*).
    pub wal_bytes_max: u64,
    /// Whether consumed depot records are deleted (`None`, the default: nothing is deleted, so
    /// a topology added later, or a replay, can read a depot from its start; partitions
    /// trimmed while retention was on stay trimmed).
    ///
    /// A topology with no commit record yet (declared for the first time, or never
    /// committed) starts at each partition's first kept record: the records trimmed before
    /// that count as processed for it (by [`Engine::processed`] and [`Engine::wait_for`]),
    /// and reading them with [`Engine::read_depot`] is refused with [`Error::DepotTrimmed`].
    /// A trimmed record's outcome is deleted by each consuming topology's next batch after
    /// the trim (reading it then is refused the same way): keep enough records for clients
    /// that read outcomes late. Each trim thus also costs one range deletion per consuming
    /// topology and partition in the state column family (and one more per partition after
    /// each open).
    /// A topology's commit record keeps the offsets of depots it no longer consumes, so
    /// those hold their records back until it returns, or is retired
    /// ([`EngineBuilder::retire_topology`]).
    pub depot_retention: Option<DepotRetention>,
    /// How long an idempotent producer is remembered after its last accepted append call.
    /// A retry is recognised (answered with its first positions, written once) only while its
    /// producer is remembered; once forgotten, the producer is new again and any call of it is
    /// accepted, so a retry arriving later is stored a second time. Retries must come well
    /// within this: a network client's own retries stop after `ClientConfig::retry_for`, and
    /// an application that retries a call in doubt later must do so within the expiry. Zero
    /// forgets every producer at the next group, which turns deduplication off.
    ///
    /// 24 hours by default (Kafka's producer id expiration). The appender holds one state per
    /// remembered producer (its last call's positions included), so this bounds what producers
    /// cost in memory and in `meta` by the producers active in the window, not by every
    /// producer id ever used (each network `Client` takes a fresh id). Forgetting rides on
    /// appends, and on an idle engine on [`maintenance_interval`](Self::maintenance_interval):
    /// a group written after a producer's expiry deletes its state (at most 4096 states a
    /// group, oldest first).
    pub producer_expiry: Duration,
    /// How long the appender waits for appends before it checks, on its own, for work that
    /// otherwise rides on appends: depot retention's trims (records whose topologies
    /// committed them after the last append) and expired producers. A check writes (one
    /// synced write) only when there is something to trim or forget. `None`: only appends
    /// do it, so an idle engine keeps what it would trim. Shorter than 10 ms counts as 10 ms.
    /// The outcomes of records trimmed this way are deleted by each topology's next batch,
    /// as after any trim (see the commit protocol, §3a T5).
    ///
    /// One second by default; `None` with [`EngineOptions::manual`], so that in manual mode
    /// every write the engine makes is caused by a call (what simulations need to replay).
    pub maintenance_interval: Option<Duration>,
    /// Faults to inject into durable writes (tests and simulations); `None` in production.
    pub storage_faults: Option<StorageFaults>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            batch_driving: BatchDriving::Automatic,
            batch_records_max: 2_000,
            batch_bytes_max: 8 << 20,
            append_queue_max: 4096,
            append_group_bytes_max: 8 << 20,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            state_cache_bytes_max: STATE_CACHE_BYTES_DEFAULT,
            block_cache_bytes: BLOCK_CACHE_BYTES_DEFAULT,
            background_write_bytes_per_s: None,
            wal_bytes_max: WAL_BYTES_MAX_DEFAULT,
            depot_retention: None,
            producer_expiry: PRODUCER_EXPIRY_DEFAULT,
            maintenance_interval: Some(MAINTENANCE_INTERVAL_DEFAULT),
            storage_faults: None,
        }
    }
}

impl EngineOptions {
    /// Options with batches run only by the caller ([`Engine::run_batch`] and its halves),
    /// and no maintenance of the appender's own ([`maintenance_interval`](Self::maintenance_interval)
    /// `None`): trims and producer expiry happen with appends.
    pub fn manual() -> Self {
        Self {
            batch_driving: BatchDriving::Manual,
            maintenance_interval: None,
            ..Self::default()
        }
    }
}

/// What one committed batch did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchSummary {
    /// The committed batch id.
    pub batch_id: u64,
    /// Depot records consumed.
    pub records: u64,
    /// Rounds run (1 when no messages were sent).
    pub rounds: u32,
    /// Messages delivered.
    pub messages: u64,
    /// Entries written (puts and deletes).
    pub writes: u64,
    /// Key and value bytes written.
    pub write_bytes: u64,
    /// Time from planning to published commit. With automatic driving this includes waiting
    /// for the previous batch's commit before this one is handed over.
    pub batch_latency_us: u64,
    /// Time spent in the synced commit write.
    pub commit_latency_us: u64,
}

/// A durable depot record with its place in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoggedRecord<T> {
    /// Where it is stored.
    pub id: RecordId,
    /// Its global append sequence number, unique across every depot and partition. Batches
    /// consume records in this order: every batch takes a prefix of the unconsumed records
    /// in sequence order, and serializable topologies apply them one at a time in it.
    pub seq: u64,
    /// The record.
    pub record: T,
}

/// Failpoint names (compiled in with the `failpoints` feature). Each sits at a durable step of
/// `engine/docs/commit-protocol.md`; firing one makes that step fail as a crash there would.
pub mod failpoints {
    /// Before a group of appends is written.
    pub const APPEND_BEFORE_WRITE: &str = "append.before_write";
    /// After a group of appends is durable, before it is acknowledged.
    pub const APPEND_AFTER_WRITE: &str = "append.after_write";
    /// Before a batch's commit is written.
    pub const COMMIT_BEFORE_WRITE: &str = "commit.before_write";
    /// After a batch's commit is durable, before it is published to readers.
    pub const COMMIT_AFTER_WRITE: &str = "commit.after_write";
    /// During open, after the catalog is resolved and before depots are scanned.
    pub const RECOVERY_AFTER_CATALOG: &str = "recovery.after_catalog";
    /// During open, after recovery, before threads start.
    pub const RECOVERY_BEFORE_START: &str = "recovery.before_start";
    /// Every failpoint, for tests that visit them all.
    pub const ALL: [&str; 6] = [
        APPEND_BEFORE_WRITE,
        APPEND_AFTER_WRITE,
        COMMIT_BEFORE_WRITE,
        COMMIT_AFTER_WRITE,
        RECOVERY_AFTER_CATALOG,
        RECOVERY_BEFORE_START,
    ];
}

/// Set once by the first failed durable write; checked before every write.
#[derive(Debug, Default)]
pub(crate) struct Poison {
    reason: OnceLock<String>,
    /// Held (shared) from a writer's last check to the end of its write, and exclusively to
    /// set the reason: once poisoned, no write can start (I6), not even one that checked
    /// just before.
    gate: RwLock<()>,
}

impl Poison {
    /// Admits a durable write: hold the guard across the write.
    fn admit(&self) -> Result<RwLockReadGuard<'_, ()>, Error> {
        let guard = self
            .gate
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.check()?;
        Ok(guard)
    }

    pub(crate) fn check(&self) -> Result<(), Error> {
        match self.reason.get() {
            None => Ok(()),
            Some(reason) => Err(Error::Poisoned {
                reason: reason.clone(),
            }),
        }
    }

    fn set(&self, reason: String) {
        tracing::error!(%reason, "engine poisoned: refusing all further writes");
        let _gate = self
            .gate
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let _ = self.reason.set(reason);
    }
}

/// Wakes batch drivers when appends become durable or the engine shuts down.
#[derive(Debug, Default)]
struct InputSignal {
    generation: Mutex<u64>,
    changed: Condvar,
}

impl InputSignal {
    fn generation(&self) -> u64 {
        *lock(&self.generation)
    }

    fn bump(&self) {
        *lock(&self.generation) += 1;
        self.changed.notify_all();
    }

    fn wait_past(&self, seen: u64, shutdown: &AtomicBool) {
        let mut generation = lock(&self.generation);
        while *generation == seen && !shutdown.load(Ordering::Acquire) {
            generation = self
                .changed
                .wait(generation)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

/// Batch commits in their synced write, so the appender can hold a group open while one is.
///
/// Commits and append groups share one RocksDB write queue (one WAL): a group written while a
/// commit is writing would wait for that commit's sync and memtable insert before starting its
/// own sync. Waiting in the appender's channel instead costs the group nothing, and every call
/// that arrives meanwhile joins it rather than waiting for a sync of its own: fewer, larger
/// groups at moderate load, where each sync's kernel and device round trips dominate the
/// appender's time. A lone caller with no commit writing is never held.
#[derive(Debug)]
struct CommitsWriting {
    writing: AtomicU32,
    /// A token after each commit write ends (at most one kept: the appender only needs to wake
    /// and look at `writing` again).
    ended_tx: Sender<()>,
    ended_rx: Receiver<()>,
}

impl Default for CommitsWriting {
    fn default() -> Self {
        let (ended_tx, ended_rx) = crossbeam_channel::bounded(1);
        Self {
            writing: AtomicU32::new(0),
            ended_tx,
            ended_rx,
        }
    }
}

impl CommitsWriting {
    /// Marks a commit write as started until the guard drops (also on an error or a panic).
    fn begin(&self) -> CommitWriteGuard<'_> {
        self.writing.fetch_add(1, Ordering::AcqRel);
        CommitWriteGuard { commits: self }
    }

    fn any(&self) -> bool {
        self.writing.load(Ordering::Acquire) > 0
    }
}

struct CommitWriteGuard<'a> {
    commits: &'a CommitsWriting,
}

impl Drop for CommitWriteGuard<'_> {
    fn drop(&mut self) {
        self.commits.writing.fetch_sub(1, Ordering::AcqRel);
        // Full: a token is already waiting, which wakes the appender just as well.
        let _ = self.commits.ended_tx.try_send(());
    }
}

/// The longest an append group is held for commit writes, in all: a bound in case a write
/// hangs or several topologies commit back to back, not a linger (a commit write ends in
/// milliseconds).
const APPEND_HOLD_FOR_COMMIT_MAX: Duration = Duration::from_millis(20);

/// Locks a mutex, ignoring std's lock poisoning: every guarded value here is replaced whole,
/// never left half-updated, so it is consistent even after a panicking holder.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Decodes an encoded record as the depot's type and picks its partition: how records that
/// arrive already encoded (over the network) are checked before they are accepted.
type RouteEncoded = Arc<dyn Fn(&[u8]) -> Result<u32, Error> + Send + Sync>;

pub(crate) struct DepotState {
    pub(crate) spec: Arc<DepotSpec>,
    pub(crate) id: u32,
    route_encoded: RouteEncoded,
    /// One past the last acknowledged (durable) offset, per partition. Written only by the
    /// appender, after the write is durable.
    heads: Vec<AtomicU64>,
    /// Each partition's first stored offset (0 unless retention trimmed it): where a
    /// topology that never committed starts, and below which outcomes go. Written only by
    /// the appender, after the trim is durable.
    first_kept: Vec<AtomicU64>,
}

impl std::fmt::Debug for DepotState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DepotState")
            .field("spec", &self.spec)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// `consumed[input][partition]`: the first offset not yet committed.
type Consumed = Vec<Vec<u64>>;

/// `[start, end)` of state keys.
type KeyRange = (Vec<u8>, Vec<u8>);

#[derive(Debug, Clone)]
pub(crate) struct Progress {
    pub(crate) record: CommitRecord,
    consumed: Consumed,
    stopped: Option<String>,
}

pub(crate) struct TopologyState {
    pub(crate) topology: Topology,
    pub(crate) id: u32,
    ids: ResolvedIds,
    /// What this topology's commits put in the state cache.
    cache_policy: CachePolicy,
    inputs: Vec<Arc<DepotState>>,
    progress: Mutex<Progress>,
    progress_changed: Condvar,
    commits: tokio::sync::watch::Sender<u64>,
    /// Serializes batches of this topology (manual calls from several threads).
    run_lock: Mutex<()>,
    /// With manual driving, the batch [`Engine::execute_batch`] executed and has not
    /// committed yet: what the automatic driver has in flight while it executes the next.
    /// Never written until it commits; closing the engine discards it.
    held: Mutex<Option<PreparedBatch>>,
    /// Totals over the batches committed since open.
    stats: Mutex<TopologyStats>,
    /// `[input][partition]`: the outcomes of records below this offset are deleted, or are
    /// by a batch prepared (§3a T5). 0 at open: the first batch deletes below each first
    /// kept offset again, which also catches up on trims made while the topology was absent.
    outcomes_deleted_below: Mutex<Consumed>,
}

/// Totals over the depot appends the engine made durable since it opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AppendStats {
    /// Synced writes of the appender: group commits, each making one or more append calls
    /// durable, and maintenance writes ([`EngineOptions::maintenance_interval`]), which carry
    /// only trims and expired producers.
    pub groups: u64,
    /// Records appended.
    pub records: u64,
    /// Key and value bytes written for them (key, sequence number and envelope per record).
    pub write_bytes: u64,
    /// Time spent in synced append writes.
    pub write_time_us: u64,
    /// Depot partitions trimmed by retention (range deletions written with the appends, or by
    /// a maintenance write).
    pub trims: u64,
    /// Records those trims deleted.
    pub trimmed_records: u64,
    /// Idempotent producers forgotten after [`EngineOptions::producer_expiry`] idle (those
    /// that called again in the group that forgot them included).
    pub producers_expired: u64,
    /// Idempotent producers remembered: at the open, then after each group written.
    pub producers_remembered: u64,
}

/// Totals over the batches a topology committed since the engine opened. A batch is counted
/// before it is published: once [`Engine::wait_for`] returns for a record, these include the
/// batch that processed it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TopologyStats {
    /// Batches committed.
    pub batches: u64,
    /// Depot records consumed.
    pub records: u64,
    /// Entries written (puts and deletes).
    pub writes: u64,
    /// Key and value bytes written.
    pub write_bytes: u64,
    /// Time spent in synced commit writes.
    pub commit_time_us: u64,
    /// Batches that executed while the batch before them was committing (pipelining).
    pub batches_pipelined: u64,
}

/// A topology the data directory holds that this open neither declared nor retired
/// ([`Engine::undeclared_topologies`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UndeclaredTopology {
    /// Its name.
    pub name: String,
    /// The last batch it committed; `None` if it never committed one.
    pub batch_id: Option<u64>,
    /// The depots, by name and in name order, in which its last batch left positions. With
    /// depot retention on, their records from those positions on are kept for it: declare it
    /// again to resume there, or retire it ([`EngineBuilder::retire_topology`]) to let them go.
    pub depots: Vec<String>,
}

impl TopologyState {
    /// For a depot this topology consumes: its name and the first kept offset of
    /// `partition` (`None` for a depot it does not consume, or no such partition).
    pub(crate) fn consumed_first_kept(&self, depot_id: u32, partition: u32) -> Option<(&str, u64)> {
        let depot = self.inputs.iter().find(|d| d.id == depot_id)?;
        let kept = depot.first_kept.get(partition as usize)?;
        Some((depot.spec.name.as_str(), kept.load(Ordering::Acquire)))
    }

    /// The index, among this topology's inputs, of the depot `record` belongs to.
    fn input_of(&self, record: RecordId) -> Result<usize, Error> {
        self.inputs
            .iter()
            .position(|d| d.id == record.depot_id)
            .ok_or_else(|| Error::UnknownDepot(format!("id {}", record.depot_id)))
    }
}

impl std::fmt::Debug for TopologyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopologyState")
            .field("name", &self.topology.name())
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// State shared by the engine handle, the appender and the drivers.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) store: RocksStore,
    pub(crate) options: EngineOptions,
    pub(crate) poison: Poison,
    pub(crate) depots: BTreeMap<String, Arc<DepotState>>,
    pub(crate) topologies: BTreeMap<String, Arc<TopologyState>>,
    /// Every PState (outcome tables included) by name, with its catalog id.
    pub(crate) pstates: BTreeMap<String, (Option<Arc<PStateSpec>>, u32)>,
    /// Committed state recently read by handlers (see `cache`).
    state_cache: Option<StateCache>,
    input: InputSignal,
    commits_writing: CommitsWriting,
    shutdown: AtomicBool,
    /// One past the largest sequence number whose whole group is durable and whose heads are
    /// published. Stored after the heads (release), so a planner that loads it first (acquire)
    /// sees every head up to it.
    durable_seq: AtomicU64,
    append_stats: Mutex<AppendStats>,
    /// `(depot id, partition)` → the lowest offset that stored commit records of topologies
    /// not declared in this run (or of depots a declared topology no longer consumes) have yet
    /// to consume: retention keeps those records for them.
    retention_floors: BTreeMap<(u32, u32), u64>,
    /// The topologies this open retired, by name (those the directory held).
    retired_topologies: Vec<String>,
    /// The topologies the directory holds that this open neither declared nor retired.
    undeclared_topologies: Vec<UndeclaredTopology>,
}

impl Shared {
    /// Poisons the engine and wakes every waiter and driver so they see it now, not at their
    /// timeout. Notifies under each topology's progress lock so no waiter can miss it between
    /// its check and its wait.
    fn poison_and_wake(&self, reason: String) {
        self.poison.set(reason);
        for topology in self.topologies.values() {
            let _guard = lock(&topology.progress);
            topology.progress_changed.notify_all();
            topology.commits.send_modify(|_| ());
        }
        self.input.bump();
    }

    /// [`Self::poison_and_wake`], for a batch that cannot be (or may not have been) committed:
    /// the error its committer returns.
    fn poison_batch(&self, reason: String) -> Error {
        self.poison_and_wake(reason.clone());
        Error::Poisoned { reason }
    }

    pub(crate) fn topology(&self, name: &str) -> Result<&Arc<TopologyState>, Error> {
        self.topologies
            .get(name)
            .ok_or_else(|| Error::UnknownTopology(name.to_string()))
    }

    /// The depot declared under `name` (what the server, which knows depots by name, asks for).
    pub(crate) fn depot_named(&self, name: &str) -> Result<&Arc<DepotState>, Error> {
        self.depots
            .get(name)
            .ok_or_else(|| Error::UnknownDepot(name.to_string()))
    }

    fn depot(&self, spec: &Arc<DepotSpec>) -> Result<&Arc<DepotState>, Error> {
        match self.depots.get(&spec.name) {
            Some(state) if state.spec == *spec => Ok(state),
            _ => Err(Error::UnknownDepot(spec.name.clone())),
        }
    }

    pub(crate) fn pstate_id(&self, spec: &PStateSpec) -> Result<u32, Error> {
        match self.pstates.get(&spec.name) {
            Some((Some(declared), id)) if **declared == *spec => Ok(*id),
            _ => Err(Error::UnknownPState(spec.name.clone())),
        }
    }

    pub(crate) fn outcome_table_id(&self, topology: &str) -> Result<u32, Error> {
        self.pstates
            .get(&outcome_table_name(topology))
            .map(|(_, id)| *id)
            .ok_or_else(|| Error::UnknownTopology(topology.to_string()))
    }
}

struct AppendRequest {
    depot: Arc<DepotState>,
    records: Vec<(u32, Vec<u8>)>,
    /// `(producer, sequence)` for idempotent appends.
    producer: Option<(u64, u64)>,
    reply: tokio::sync::oneshot::Sender<Result<Vec<RecordId>, Error>>,
}

struct DeclaredDepot {
    spec: Arc<DepotSpec>,
    route_encoded: RouteEncoded,
}

/// Declares what an engine holds, then opens it.
pub struct EngineBuilder {
    path: PathBuf,
    options: EngineOptions,
    depots: Vec<DeclaredDepot>,
    topologies: Vec<Topology>,
    retired_topologies: Vec<String>,
}

impl std::fmt::Debug for EngineBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineBuilder")
            .field("path", &self.path)
            .field(
                "depots",
                &self.depots.iter().map(|d| &d.spec.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl EngineBuilder {
    /// Replaces the options.
    pub fn options(mut self, options: EngineOptions) -> Self {
        self.options = options;
        self
    }

    /// Declares a depot.
    pub fn depot<T>(mut self, depot: &Depot<T>) -> Self
    where
        T: Serialize + DeserializeOwned + Send + 'static,
    {
        let typed = depot.clone();
        let route_encoded: RouteEncoded = Arc::new(move |bytes: &[u8]| {
            let record: T = decode_envelope(bytes)?;
            Ok(typed.partition_of(&record)?)
        });
        self.depots.push(DeclaredDepot {
            spec: depot.spec().clone(),
            route_encoded,
        });
        self
    }

    /// Declares a topology. Every depot it consumes must be declared too.
    pub fn topology(mut self, topology: Topology) -> Self {
        self.topologies.push(topology);
        self
    }

    /// Retires a topology that will not be declared again as it was: at the open, in the
    /// synced write that records the catalog, its PStates (its outcome table included) are
    /// deleted with everything in them, its names leave the catalog, and its commit record
    /// goes, so it no longer holds its depots' records back from retention
    /// ([`EngineOptions::depot_retention`]; a depot that then has no consumer at all keeps its
    /// records for a topology declared later, as a depot never consumed does). Nothing of it
    /// can be read afterwards. A declaration that contradicts the directory fails the open
    /// before anything, the retirement included, is written.
    ///
    /// Declaring the name later starts a new topology: new ids, empty PStates, each depot
    /// partition read from its first kept record. A name the directory does not hold is
    /// skipped, so a program may keep retiring a topology on every open. Declaring and
    /// retiring one name in one engine is refused with [`Error::RetiredAndDeclared`].
    pub fn retire_topology(mut self, name: &str) -> Self {
        self.retired_topologies.push(name.to_string());
        self
    }

    /// Opens (creating if needed) and recovers the data directory, then starts the appender and,
    /// in automatic mode, one batch driver per topology.
    pub fn open(self) -> Result<Engine, Error> {
        Engine::open(self)
    }
}

/// A Lockstep engine: depots, topologies and their PStates in one data directory.
///
/// Dropping it (or calling [`Engine::close`]) stops accepting appends, lets the in-flight group
/// and batch finish, and closes the database.
pub struct Engine {
    shared: Arc<Shared>,
    append_tx: Option<Sender<AppendRequest>>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

fn validate_declarations(builder: &EngineBuilder) -> Result<(), SchemaError> {
    let mut depot_names = BTreeMap::new();
    for depot in builder.depots.iter().map(|d| &d.spec) {
        if depot_names.insert(depot.name.as_str(), depot).is_some() {
            return Err(SchemaError::Duplicate {
                what: "depot",
                name: depot.name.clone(),
            });
        }
    }
    let mut topology_names = BTreeMap::new();
    let mut pstate_names = BTreeMap::new();
    for topology in &builder.topologies {
        if topology_names.insert(topology.name(), ()).is_some() {
            return Err(SchemaError::Duplicate {
                what: "topology",
                name: topology.name().to_string(),
            });
        }
        for name in topology.pstate_names() {
            if pstate_names.insert(name, ()).is_some() {
                return Err(SchemaError::Duplicate {
                    what: "pstate",
                    name: name.to_string(),
                });
            }
        }
        for consumed in topology.consumed_depots() {
            match depot_names.get(consumed.name.as_str()) {
                Some(declared) if ***declared == *consumed => {}
                _ => {
                    return Err(SchemaError::UnknownDepot {
                        topology: topology.name().to_string(),
                        depot: consumed.name.clone(),
                    })
                }
            }
        }
    }
    Ok(())
}

impl Engine {
    /// Starts declaring an engine stored at `path`.
    pub fn builder(path: impl AsRef<Path>) -> EngineBuilder {
        EngineBuilder {
            path: path.as_ref().to_path_buf(),
            options: EngineOptions::default(),
            depots: Vec::new(),
            topologies: Vec::new(),
            retired_topologies: Vec::new(),
        }
    }

    /// The partition count an existing data directory recorded for `depot` (`None` if the
    /// directory never held it), so tools can open a directory without being told its layout.
    /// Opens and closes the directory; fails if another process has it open.
    pub fn stored_depot_partitions(
        path: impl AsRef<Path>,
        depot: &str,
    ) -> Result<Option<u32>, Error> {
        let path = path.as_ref();
        if !path.join("CURRENT").exists() {
            return Err(StoreError::Io {
                op: "open",
                message: format!("{} is not a Lockstep data directory", path.display()),
            }
            .into());
        }
        // Only the catalog is read: RocksDB's own default cache size is plenty.
        let store = RocksStore::open(path, 32 << 20)?;
        catalog::stored_depot_partitions(&store, depot)
    }

    fn open(builder: EngineBuilder) -> Result<Self, Error> {
        validate_declarations(&builder)?;
        if let Some(both) = builder
            .retired_topologies
            .iter()
            .find(|name| builder.topologies.iter().any(|t| t.name() == name.as_str()))
        {
            return Err(Error::RetiredAndDeclared(both.clone()));
        }
        std::fs::create_dir_all(&builder.path).map_err(|e| StoreError::Io {
            op: "create data directory",
            message: e.to_string(),
        })?;
        let store = RocksStore::open_with(
            &builder.path,
            &StoreOptions {
                block_cache_bytes: builder.options.block_cache_bytes,
                background_write_bytes_per_s: builder.options.background_write_bytes_per_s,
                wal_bytes_max: builder.options.wal_bytes_max,
            },
        )?;
        let specs: Vec<Arc<DepotSpec>> = builder.depots.iter().map(|d| d.spec.clone()).collect();
        let (catalog, retired) = catalog::resolve(
            &store,
            &specs,
            &builder.topologies,
            &builder.retired_topologies,
        )?;
        let retired_names: BTreeSet<&str> = builder
            .retired_topologies
            .iter()
            .map(String::as_str)
            .collect();
        for name in retired_names {
            match retired.iter().find(|t| t.name == *name) {
                Some(topology) => tracing::info!(
                    topology = name,
                    id = topology.id,
                    pstates = ?topology.pstates,
                    "retired topology: its PStates, catalog entries and commit record are deleted"
                ),
                None => tracing::debug!(
                    topology = name,
                    "retire_topology: the data directory holds no such topology (retired before?)"
                ),
            }
        }
        fail::fail_point!(failpoints::RECOVERY_AFTER_CATALOG, |_| Err(Error::Store(
            StoreError::Injected(failpoints::RECOVERY_AFTER_CATALOG)
        )));

        let mut depots = BTreeMap::new();
        for declared in builder.depots {
            let spec = declared.spec;
            let id = catalog.depots[&spec.name];
            let mut heads = Vec::with_capacity(spec.partitions as usize);
            let mut first_kept = Vec::with_capacity(spec.partitions as usize);
            for partition in 0..spec.partitions {
                heads.push(AtomicU64::new(store.next_offset(id, partition)?));
                first_kept.push(AtomicU64::new(store.first_kept_offset(id, partition)?));
            }
            depots.insert(
                spec.name.clone(),
                Arc::new(DepotState {
                    spec: spec.clone(),
                    id,
                    route_encoded: declared.route_encoded,
                    heads,
                    first_kept,
                }),
            );
        }

        let mut pstates = BTreeMap::new();
        let mut topologies = BTreeMap::new();
        for topology in builder.topologies {
            let name = topology.name().to_string();
            let id = catalog.topologies[&name];
            let inputs: Vec<Arc<DepotState>> = topology
                .consumed_depots()
                .iter()
                .map(|spec| depots[&spec.name].clone())
                .collect();
            let outcome_name = outcome_table_name(&name);
            let outcome_pstate_id = catalog.pstates[&outcome_name];
            pstates.insert(outcome_name, (None, outcome_pstate_id));
            let mut pstate_ids = Vec::new();
            let mut map_pstate_ids = Vec::new();
            for spec in topology.pstates() {
                let pstate_id = catalog.pstates[&spec.name];
                pstate_ids.push(pstate_id);
                if spec.kind == PStateKind::Map {
                    map_pstate_ids.push(pstate_id);
                }
                pstates.insert(spec.name.clone(), (Some(spec.clone()), pstate_id));
            }
            let record = store.load_commit(id)?.unwrap_or_default();
            let progress = recover_progress(&name, &inputs, record)?;
            let (commits, _) = tokio::sync::watch::channel(progress.record.batch_id);
            tracing::info!(
                topology = %name,
                batch_id = progress.record.batch_id,
                "recovered topology"
            );
            topologies.insert(
                name,
                Arc::new(TopologyState {
                    ids: ResolvedIds {
                        depot_ids: inputs.iter().map(|d| d.id).collect(),
                        pstate_ids,
                        outcome_pstate_id,
                    },
                    cache_policy: CachePolicy::new(map_pstate_ids, outcome_pstate_id),
                    outcomes_deleted_below: Mutex::new(
                        inputs.iter().map(|d| vec![0; d.first_kept.len()]).collect(),
                    ),
                    topology,
                    id,
                    inputs,
                    progress: Mutex::new(progress),
                    progress_changed: Condvar::new(),
                    commits,
                    run_lock: Mutex::new(()),
                    held: Mutex::new(None),
                    stats: Mutex::new(TopologyStats::default()),
                }),
            );
        }
        fail::fail_point!(failpoints::RECOVERY_BEFORE_START, |_| Err(Error::Store(
            StoreError::Injected(failpoints::RECOVERY_BEFORE_START)
        )));

        // Offsets stored for topologies not declared now, or for depots a declared topology
        // no longer consumes, hold retention back for the whole run: a topology that returns
        // must find its records.
        let declared_inputs: BTreeMap<u32, BTreeSet<u32>> = topologies
            .values()
            .map(|t| (t.id, t.inputs.iter().map(|d| d.id).collect()))
            .collect();
        let mut retention_floors: BTreeMap<(u32, u32), u64> = BTreeMap::new();
        let stored_records = match builder.options.depot_retention {
            Some(_) => store.commit_records()?,
            None => Vec::new(),
        };
        for (topology_id, record) in stored_records {
            let inputs = declared_inputs.get(&topology_id);
            for offset in record.offsets {
                if inputs.is_some_and(|inputs| inputs.contains(&offset.depot_id)) {
                    continue;
                }
                let floor = retention_floors
                    .entry((offset.depot_id, offset.partition))
                    .or_insert(offset.next_offset);
                *floor = (*floor).min(offset.next_offset);
            }
        }
        let undeclared_topologies = undeclared_topologies(&store, &catalog)?;
        for topology in &undeclared_topologies {
            // Only depots declared in this run are trimmed, so only those are held back.
            let holds_back = topology
                .depots
                .iter()
                .any(|depot| catalog.depots.contains_key(depot));
            if builder.options.depot_retention.is_some() && holds_back {
                tracing::warn!(
                    topology = topology.name.as_str(),
                    depots = ?topology.depots,
                    "stored topology not declared: depot retention keeps the records it has \
                     not consumed; retire it (EngineBuilder::retire_topology) if it is gone"
                );
            } else {
                tracing::info!(
                    topology = topology.name.as_str(),
                    "stored topology not declared"
                );
            }
        }
        let next_seq = store.max_seq()?.map_or(0, |max| max + 1);
        let state_cache = StateCache::new(builder.options.state_cache_bytes_max);
        let shared = Arc::new(Shared {
            durable_seq: AtomicU64::new(next_seq),
            append_stats: Mutex::new(AppendStats::default()),
            retention_floors,
            retired_topologies: retired.iter().map(|t| t.name.clone()).collect(),
            undeclared_topologies,
            store,
            options: builder.options,
            poison: Poison::default(),
            depots,
            topologies,
            pstates,
            state_cache,
            input: InputSignal::default(),
            commits_writing: CommitsWriting::default(),
            shutdown: AtomicBool::new(false),
        });
        let (append_tx, append_rx) =
            crossbeam_channel::bounded(shared.options.append_queue_max.max(1));
        let (producers, dated) = Producers::load(
            shared.store.load_producers()?,
            shared.options.producer_expiry,
        );
        if !dated.is_empty() {
            shared.store.append(&[], &dated, &[], &[])?;
        }
        lock(&shared.append_stats).producers_remembered = producers.len() as u64;
        // Build the handle first: if a thread fails to start, dropping it stops and joins the
        // ones already running (and closes the database).
        let mut engine = Self {
            shared: shared.clone(),
            append_tx: Some(append_tx),
            threads: Vec::new(),
        };
        let appender_shared = shared.clone();
        engine.threads.push(spawn("lockstep-appender", move || {
            run_appender(&appender_shared, &append_rx, producers)
        })?);
        if shared.options.batch_driving == BatchDriving::Automatic {
            for (name, topology) in &shared.topologies {
                let driver_shared = shared.clone();
                let topology = topology.clone();
                engine
                    .threads
                    .push(spawn(&format!("lockstep-driver:{name}"), move || {
                        run_driver(&driver_shared, &topology)
                    })?);
            }
        }
        Ok(engine)
    }

    /// Appends one record; returns its position once it is durable.
    pub fn append<T>(&self, depot: &Depot<T>, record: &T) -> Result<RecordId, Error>
    where
        T: Serialize + serde::de::DeserializeOwned + Send + 'static,
    {
        let mut ids = self.append_many(depot, std::slice::from_ref(record))?;
        ids.pop().ok_or(Error::Closed)
    }

    /// Appends records atomically (all become durable together, or none is acknowledged);
    /// returns their positions, in input order, once they are durable.
    ///
    /// A record that is too large or does not encode fails the call before anything is written.
    pub fn append_many<T>(&self, depot: &Depot<T>, records: &[T]) -> Result<Vec<RecordId>, Error>
    where
        T: Serialize + serde::de::DeserializeOwned + Send + 'static,
    {
        let receiver = self.submit(depot, records, None)?;
        receiver.blocking_recv().map_err(|_| Error::Closed)?
    }

    /// Appends records idempotently for `producer`, which numbers its calls (`sequence`) and
    /// makes one call at a time. The engine keeps, durably and atomically with the records,
    /// each producer's last accepted call and the positions it got: a retry of that call (same
    /// `sequence`, after a lost reply, a timeout or a restart) returns those positions and
    /// writes nothing, so the records are stored, and processed, once. An older `sequence` is
    /// refused with [`Error::StaleSequence`]; a newer one is a new call.
    ///
    /// Producer ids must be unique among the engine's clients (a random `u64` per client
    /// process is the usual choice).
    pub fn append_many_idempotent<T>(
        &self,
        depot: &Depot<T>,
        records: &[T],
        producer: u64,
        sequence: u64,
    ) -> Result<Vec<RecordId>, Error>
    where
        T: Serialize + serde::de::DeserializeOwned + Send + 'static,
    {
        let receiver = self.submit(depot, records, Some((producer, sequence)))?;
        receiver.blocking_recv().map_err(|_| Error::Closed)?
    }

    /// As [`append_many`](Self::append_many), for async callers: the wait for durability does
    /// not block the executor (enqueuing may, briefly, under backpressure).
    pub async fn append_many_async<T>(
        &self,
        depot: &Depot<T>,
        records: &[T],
    ) -> Result<Vec<RecordId>, Error>
    where
        T: Serialize + serde::de::DeserializeOwned + Send + 'static,
    {
        let receiver = self.submit(depot, records, None)?;
        receiver.await.map_err(|_| Error::Closed)?
    }

    fn submit<T>(
        &self,
        depot: &Depot<T>,
        records: &[T],
        producer: Option<(u64, u64)>,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<Vec<RecordId>, Error>>, Error>
    where
        T: Serialize + serde::de::DeserializeOwned + Send + 'static,
    {
        self.shared.poison.check()?;
        let state = self.shared.depot(depot.spec())?.clone();
        let mut encoded = Vec::with_capacity(records.len());
        for record in records {
            let partition = depot.partition_of(record)?;
            encoded.push((partition, depot.encode(record)?));
        }
        self.enqueue(state, encoded, producer)
    }

    fn enqueue(
        &self,
        depot: Arc<DepotState>,
        records: Vec<(u32, Vec<u8>)>,
        producer: Option<(u64, u64)>,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<Vec<RecordId>, Error>>, Error> {
        let (reply, receiver) = tokio::sync::oneshot::channel();
        let tx = self.append_tx.as_ref().ok_or(Error::Closed)?;
        tx.send(AppendRequest {
            depot,
            records,
            producer,
            reply,
        })
        .map_err(|_| Error::Closed)?;
        Ok(receiver)
    }

    /// Appends records that arrive already encoded (the depot's envelopes, e.g. from the
    /// network), optionally idempotently. Each record is checked before anything is written:
    /// its size, its checksum, that it decodes as the depot's record type, and its partition
    /// is chosen by the depot's own partitioner. Returns once the records are durable.
    pub async fn append_encoded(
        &self,
        depot: &str,
        envelopes: Vec<Vec<u8>>,
        producer: Option<(u64, u64)>,
    ) -> Result<Vec<RecordId>, Error> {
        self.shared.poison.check()?;
        let state = self.shared.depot_named(depot)?.clone();
        let mut records = Vec::with_capacity(envelopes.len());
        for bytes in envelopes {
            if bytes.len() > state.spec.record_bytes_max {
                return Err(Error::Record(lockstep_core::CodecError::TooLarge {
                    bytes: bytes.len(),
                    bytes_max: state.spec.record_bytes_max,
                }));
            }
            let partition = (state.route_encoded)(&bytes)?;
            records.push((partition, bytes));
        }
        let (reply, receiver) = tokio::sync::oneshot::channel();
        let tx = self.append_tx.as_ref().ok_or(Error::Closed)?;
        let mut request = AppendRequest {
            depot: state,
            records,
            producer,
            reply,
        };
        // Backpressure without blocking the async runtime's threads: wait, not block, while
        // the appender's queue is full.
        loop {
            match tx.try_send(request) {
                Ok(()) => break,
                Err(crossbeam_channel::TrySendError::Full(back)) => {
                    request = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(crossbeam_channel::TrySendError::Disconnected(_)) => return Err(Error::Closed),
            }
        }
        receiver.await.map_err(|_| Error::Closed)?
    }

    /// Checks that `topology` consumes `depot` and has not stopped, so that waiting for it to
    /// process the depot's records can succeed: the server checks this before an
    /// append-and-wait writes anything. (The topology may still stop after the check.)
    #[cfg(feature = "net")]
    pub(crate) fn check_consumes(&self, topology: &str, depot: &str) -> Result<(), Error> {
        let state = self.shared.topology(topology)?;
        let depot_id = self.shared.depot_named(depot)?.id;
        if !state.inputs.iter().any(|input| input.id == depot_id) {
            return Err(Error::NotConsumed {
                topology: topology.to_string(),
                depot: depot.to_string(),
            });
        }
        if self.shared.shutdown.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        self.check_running(&lock(&state.progress), topology)
    }

    /// The committed batch id if `topology` has processed `record`, without waiting.
    pub fn processed(&self, topology: &str, record: RecordId) -> Result<Option<u64>, Error> {
        let state = self.shared.topology(topology)?;
        let input = state.input_of(record)?;
        let progress = lock(&state.progress);
        self.verdict(&progress, input, topology, record)
    }

    /// `Some(batch)` once `progress` has consumed `record`; an error if it never will
    /// ([`check_running`](Self::check_running)); `None` while it may still.
    fn verdict(
        &self,
        progress: &Progress,
        input: usize,
        topology: &str,
        record: RecordId,
    ) -> Result<Option<u64>, Error> {
        if consumed_past(progress, input, record)? {
            return Ok(Some(progress.record.batch_id));
        }
        self.check_running(progress, topology)?;
        Ok(None)
    }

    /// Fails if `topology` (whose progress is `progress`) will process nothing more: the
    /// engine is poisoned, or the topology stopped. The poison comes first: a failed commit
    /// also stops its topology, and the caller should hear the cause (worth a retry against a
    /// restarted server), whichever thread the commit failed on.
    fn check_running(&self, progress: &Progress, topology: &str) -> Result<(), Error> {
        self.shared.poison.check()?;
        match &progress.stopped {
            Some(reason) => Err(Error::TopologyStopped {
                topology: topology.to_string(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// As [`wait_for`](Self::wait_for), for async callers.
    pub async fn wait_for_async(
        &self,
        topology: &str,
        record: RecordId,
        timeout: Duration,
    ) -> Result<u64, Error> {
        let mut commits = self.subscribe(topology)?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(batch_id) = self.processed(topology, record)? {
                return Ok(batch_id);
            }
            if self.shared.shutdown.load(Ordering::Acquire) {
                return Err(Error::Closed);
            }
            match tokio::time::timeout_at(deadline, commits.changed()).await {
                Ok(Ok(())) => {}
                // The topology's sender lives as long as the engine: closed means shutting down.
                Ok(Err(_)) => return Err(Error::Closed),
                Err(_) => {
                    return match self.processed(topology, record)? {
                        Some(batch_id) => Ok(batch_id),
                        None => Err(Error::Timeout {
                            waited_ms: timeout.as_millis() as u64,
                        }),
                    }
                }
            }
        }
    }

    /// Runs one batch of `topology` now; `None` if it had no new input. A batch held by
    /// [`execute_batch`](Self::execute_batch) commits first (it is counted by
    /// [`run_until_idle`](Self::run_until_idle), not reported here). Only with
    /// [`BatchDriving::Manual`].
    pub fn run_batch(&self, topology: &str) -> Result<Option<BatchSummary>, Error> {
        let state = self.manual_topology(topology)?;
        run_one_batch(&self.shared, &state)
    }

    /// Executes the next batch of `topology` without committing it, and holds it: the first
    /// half of what the automatic driver does while the batch before is still committing,
    /// as a step of its own, so that tests and the simulation can put faults and restarts
    /// between the halves. Only with [`BatchDriving::Manual`].
    ///
    /// The batch plans from where the held batch (if any) leaves off and reads its writes over
    /// the committed state. Once it has executed, the held batch commits and the new one is
    /// held in its place; returns the new batch's id.
    ///
    /// - `Ok(None)`: no new input; the held batch stays held.
    /// - The held batch's commit fails: the engine is poisoned, the new batch is dropped, and
    ///   [`Error::Poisoned`] is returned.
    /// - A handler fails ([`Error::Batch`]): the held batch commits, then the topology stops
    ///   with the handler's error (or the commit's, if that failed too), which is returned.
    /// - Any other error (the engine poisoned by another write, a read failing): nothing
    ///   commits; the held batch stays held unless the engine is poisoned, when it is dropped.
    ///
    /// A held batch is never written until it commits: [`close`](Self::close), a drop or a
    /// crash discards it, and after the reopen its records are executed again.
    pub fn execute_batch(&self, topology: &str) -> Result<Option<u64>, Error> {
        let state = self.manual_topology(topology)?;
        let _serial = lock(&state.run_lock);
        let mut held = lock(&state.held);
        // Plan from where the held batch leaves off, as the driver plans from its batch in
        // flight.
        let mut progress = lock(&state.progress).clone();
        if let Some(previous) = held.as_ref() {
            progress.record.batch_id = previous.batch_id;
            progress.consumed = previous.consumed.clone();
        }
        let pending = held.as_ref().map(|previous| previous.writes.as_slice());
        match prepare_batch(&self.shared, &state, &progress, pending) {
            Ok(Some(prepared)) => {
                let batch_id = prepared.batch_id;
                if let Some(previous) = held.take() {
                    commit_or_poison(&self.shared, &state, previous)?;
                }
                *held = Some(prepared);
                Ok(Some(batch_id))
            }
            Ok(None) => Ok(None),
            Err(error @ Error::Batch { .. }) => {
                // The held batch is good: it commits before the topology stops, as the
                // driver lets its batch in flight commit.
                let settled = held
                    .take()
                    .map(|previous| commit_or_poison(&self.shared, &state, previous));
                match settled {
                    Some(Err(commit_error)) => {
                        stop_topology(&state, &commit_error);
                        Err(commit_error)
                    }
                    _ => {
                        stop_topology(&state, &error);
                        Err(error)
                    }
                }
            }
            Err(error) => {
                if matches!(error, Error::Poisoned { .. }) {
                    // It can never commit now; keep no batch's worth of writes for nothing.
                    held.take();
                }
                Err(error)
            }
        }
    }

    /// Commits the batch [`execute_batch`](Self::execute_batch) holds for `topology`; `None`
    /// if it holds none. A failed commit poisons the engine. Only with
    /// [`BatchDriving::Manual`].
    pub fn commit_held_batch(&self, topology: &str) -> Result<Option<BatchSummary>, Error> {
        let state = self.manual_topology(topology)?;
        let _serial = lock(&state.run_lock);
        commit_held(&self.shared, &state)
    }

    fn manual_topology(&self, topology: &str) -> Result<Arc<TopologyState>, Error> {
        if self.shared.options.batch_driving != BatchDriving::Manual {
            return Err(Error::NotManual);
        }
        Ok(self.shared.topology(topology)?.clone())
    }

    /// Commits every batch [`execute_batch`](Self::execute_batch) holds, then runs batches of
    /// every topology until none has new input. Only with [`BatchDriving::Manual`]. Returns
    /// how many batches committed.
    pub fn run_until_idle(&self) -> Result<u64, Error> {
        let mut committed = 0;
        for name in self.shared.topologies.keys() {
            if self.commit_held_batch(name)?.is_some() {
                committed += 1;
            }
        }
        loop {
            let mut progressed = false;
            for name in self.shared.topologies.keys() {
                if self.run_batch(name)?.is_some() {
                    committed += 1;
                    progressed = true;
                }
            }
            if !progressed {
                return Ok(committed);
            }
        }
    }

    /// A consistent view of every topology's committed state: all partitions at one batch.
    pub fn snapshot(&self) -> Result<Snapshot<'_>, Error> {
        Ok(Snapshot::new(&self.shared, self.shared.store.snapshot()?))
    }

    /// Waits until `topology` has committed the batch that processed `record`; returns the
    /// topology's committed batch id at that moment (at or after the one that processed it).
    /// Fails at once, without waiting out `timeout`, if it never will: [`Error::Poisoned`]
    /// after a failed durable write (a failed commit included), else
    /// [`Error::TopologyStopped`] after a handler failed.
    pub fn wait_for(
        &self,
        topology: &str,
        record: RecordId,
        timeout: Duration,
    ) -> Result<u64, Error> {
        let state = self.shared.topology(topology)?;
        let input = state.input_of(record)?;
        // A timeout too long to represent means no deadline.
        let deadline = Instant::now().checked_add(timeout);
        let mut progress = lock(&state.progress);
        loop {
            if let Some(batch_id) = self.verdict(&progress, input, topology, record)? {
                return Ok(batch_id);
            }
            if self.shared.shutdown.load(Ordering::Acquire) {
                return Err(Error::Closed);
            }
            let now = Instant::now();
            let remaining = match deadline {
                Some(deadline) if now >= deadline => {
                    return Err(Error::Timeout {
                        waited_ms: timeout.as_millis() as u64,
                    });
                }
                Some(deadline) => deadline - now,
                None => Duration::from_secs(3600),
            };
            progress = state
                .progress_changed
                .wait_timeout(progress, remaining)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// The last committed batch of `topology` and where it has consumed each depot partition.
    pub fn committed(&self, topology: &str) -> Result<CommitRecord, Error> {
        Ok(lock(&self.shared.topology(topology)?.progress)
            .record
            .clone())
    }

    /// Totals over the batches `topology` committed since the engine opened.
    pub fn stats(&self, topology: &str) -> Result<TopologyStats, Error> {
        Ok(lock(&self.shared.topology(topology)?.stats).clone())
    }

    /// The topologies this open retired ([`EngineBuilder::retire_topology`]), in name order:
    /// those the data directory held. A name asked for but absent (retired before, or never
    /// declared) is not listed.
    pub fn retired_topologies(&self) -> &[String] {
        &self.shared.retired_topologies
    }

    /// The topologies the data directory holds that this open neither declared nor retired,
    /// in name order, with their last batch and the depots it left positions in. Each keeps
    /// its state on disk, and with depot retention on it keeps the records of this run's
    /// depots it has not consumed; retiring it ([`EngineBuilder::retire_topology`]) deletes
    /// both. Listing them reads every topology and depot entry of the catalog at the open:
    /// a malformed one fails the open as corruption.
    pub fn undeclared_topologies(&self) -> &[UndeclaredTopology] {
        &self.shared.undeclared_topologies
    }

    /// Runs the appender's maintenance now, as it runs by itself when
    /// [`EngineOptions::maintenance_interval`] passes without an append: writes the trims
    /// depot retention allows and deletes expired producers, in one synced write if there is
    /// anything to write, and returns once that is durable. For manual mode, where nothing
    /// runs by itself (tests, simulations, replays). It joins the appender's queue as a call
    /// without records (an empty [`append_many`](Self::append_many) does the same, on its
    /// depot); an engine without depots has nothing to maintain.
    ///
    /// Fails with [`Error::Poisoned`] if the engine was poisoned, or is by this write failing.
    pub fn run_maintenance(&self) -> Result<(), Error> {
        self.shared.poison.check()?;
        let Some(depot) = self.shared.depots.values().next().cloned() else {
            return Ok(());
        };
        let receiver = self.enqueue(depot, Vec::new(), None)?;
        receiver
            .blocking_recv()
            .map_err(|_| Error::Closed)?
            .map(|_| ())
    }

    /// Totals over the depot appends made durable since the engine opened.
    pub fn append_stats(&self) -> AppendStats {
        lock(&self.shared.append_stats).clone()
    }

    /// Watches `topology`'s committed batch id (for async callers).
    pub fn subscribe(&self, topology: &str) -> Result<tokio::sync::watch::Receiver<u64>, Error> {
        Ok(self.shared.topology(topology)?.commits.subscribe())
    }

    /// Why `topology` stopped, if a batch failed.
    pub fn topology_failure(&self, topology: &str) -> Result<Option<String>, Error> {
        Ok(lock(&self.shared.topology(topology)?.progress)
            .stopped
            .clone())
    }

    /// The first durable-write failure, if the engine is poisoned.
    pub fn poisoned(&self) -> Option<String> {
        self.shared.poison.reason.get().cloned()
    }

    /// One past the last acknowledged offset of a depot partition.
    pub fn depot_next_offset<T>(&self, depot: &Depot<T>, partition: u32) -> Result<u64, Error> {
        let state = self.shared.depot(depot.spec())?;
        state
            .heads
            .get(partition as usize)
            .map(|h| h.load(Ordering::Acquire))
            .ok_or_else(|| Error::UnknownDepot(format!("{} partition {partition}", depot.name())))
    }

    /// The first offset of a depot partition whose record is still stored: 0 unless
    /// [retention](EngineOptions::depot_retention) has trimmed the partition.
    pub fn depot_first_kept_offset<T>(
        &self,
        depot: &Depot<T>,
        partition: u32,
    ) -> Result<u64, Error> {
        let state = self.shared.depot(depot.spec())?;
        if partition >= depot.spec().partitions {
            return Err(Error::UnknownDepot(format!(
                "{} partition {partition}",
                depot.name()
            )));
        }
        Ok(state.first_kept[partition as usize].load(Ordering::Acquire))
    }

    /// Reads up to `limit` acknowledged records of a depot partition from `from_offset`,
    /// checking each one's checksum and type. Records that
    /// [retention](EngineOptions::depot_retention) has deleted are refused
    /// ([`Error::DepotTrimmed`]), never skipped.
    pub fn read_depot<T: DeserializeOwned>(
        &self,
        depot: &Depot<T>,
        partition: u32,
        from_offset: u64,
        limit: usize,
    ) -> Result<Vec<(u64, T)>, Error> {
        Ok(self
            .read_depot_log(depot, partition, from_offset, limit)?
            .into_iter()
            .map(|logged| (logged.id.offset, logged.record))
            .collect())
    }

    /// As [`read_depot`](Self::read_depot), with each record's position and global append
    /// sequence number: the order in which topologies process records (see
    /// [`LoggedRecord::seq`]).
    pub fn read_depot_log<T: DeserializeOwned>(
        &self,
        depot: &Depot<T>,
        partition: u32,
        from_offset: u64,
        limit: usize,
    ) -> Result<Vec<LoggedRecord<T>>, Error> {
        let state = self.shared.depot(depot.spec())?;
        let head = self.depot_next_offset(depot, partition)?;
        let trimmed = |first_kept_offset| Error::DepotTrimmed {
            depot: depot.name().to_string(),
            partition,
            from_offset,
            first_kept_offset,
        };
        let first_kept_offset = self.depot_first_kept_offset(depot, partition)?;
        if from_offset < first_kept_offset {
            return Err(trimmed(first_kept_offset));
        }
        let wanted = head.saturating_sub(from_offset).min(limit as u64) as usize;
        // A trim between the check above and this read is found by the read itself.
        let raw = match self
            .shared
            .store
            .read(state.id, partition, from_offset, wanted, usize::MAX)
        {
            Err(StoreError::Trimmed {
                first_kept_offset, ..
            }) => return Err(trimmed(first_kept_offset)),
            other => other?,
        };
        raw.into_iter()
            .map(|stored| {
                let id = RecordId {
                    depot_id: state.id,
                    partition,
                    offset: stored.offset,
                };
                decode_envelope(&stored.bytes)
                    .map(|record| LoggedRecord {
                        id,
                        seq: stored.seq,
                        record,
                    })
                    .map_err(|source| Error::CorruptRecord {
                        depot: depot.name().to_string(),
                        partition,
                        offset: stored.offset,
                        source,
                    })
            })
            .collect()
    }

    /// Every committed state entry, raw, in key order (for determinism checks and debugging;
    /// the layout is described in `lockstep_core::layout`).
    pub fn raw_state_entries(&self) -> Result<Vec<Entry>, Error> {
        Ok(self.shared.store.state_entries()?)
    }

    /// Stops accepting appends, finishes the in-flight group and batch, and closes. A batch
    /// held by [`execute_batch`](Self::execute_batch) is discarded, not committed: it was
    /// never written, and its records run again after the reopen, as after a crash.
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.append_tx = None;
        self.shared.input.bump();
        for topology in self.shared.topologies.values() {
            topology.progress_changed.notify_all();
            topology.commits.send_modify(|_| ());
        }
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::error!("an engine thread panicked");
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Whether `progress` has consumed `record` (of the topology's input `input`).
fn consumed_past(progress: &Progress, input: usize, record: RecordId) -> Result<bool, Error> {
    let consumed = progress
        .consumed
        .get(input)
        .and_then(|partitions| partitions.get(record.partition as usize))
        .copied()
        .ok_or_else(|| Error::UnknownDepot(format!("partition {}", record.partition)))?;
    Ok(consumed > record.offset)
}

fn spawn<F: FnOnce() + Send + 'static>(name: &str, f: F) -> Result<JoinHandle<()>, Error> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map_err(spawn_error)
}

fn spawn_error(e: std::io::Error) -> Error {
    Error::Store(StoreError::Io {
        op: "spawn thread",
        message: e.to_string(),
    })
}

/// Turns a stored commit record into per-input consumed offsets, checking it against the
/// durable depot heads: a commit can never have consumed records that are not durable, nor
/// records retention has deleted. A partition the record does not name (a new topology, or a
/// depot it newly consumes) starts at its first kept record.
fn recover_progress(
    topology: &str,
    inputs: &[Arc<DepotState>],
    record: CommitRecord,
) -> Result<Progress, Error> {
    let mut consumed: Vec<Vec<u64>> = inputs
        .iter()
        .map(|d| {
            d.first_kept
                .iter()
                .map(|k| k.load(Ordering::Acquire))
                .collect()
        })
        .collect();
    for offset in &record.offsets {
        // A depot the topology no longer consumes keeps its offsets in the record (each commit
        // carries them forward) but plays no part.
        let Some(input) = inputs.iter().position(|d| d.id == offset.depot_id) else {
            continue;
        };
        let partition = offset.partition as usize;
        let (Some(slot), Some(head)) = (
            consumed[input].get_mut(partition),
            inputs[input].heads.get(partition),
        ) else {
            continue;
        };
        let head = head.load(Ordering::Acquire);
        if offset.next_offset > head {
            return Err(StoreError::Corruption(format!(
                "topology {topology:?} committed offset {} of depot {} partition {} but the depot ends at {head}",
                offset.next_offset, offset.depot_id, offset.partition
            ))
            .into());
        }
        // `slot` holds the partition's first kept offset until now.
        if offset.next_offset < *slot {
            return Err(StoreError::Corruption(format!(
                "topology {topology:?} has consumed depot {} partition {} only up to offset {}, but records up to {} were trimmed",
                offset.depot_id, offset.partition, offset.next_offset, *slot
            ))
            .into());
        }
        *slot = offset.next_offset;
    }
    Ok(Progress {
        record,
        consumed,
        stopped: None,
    })
}

// ---- the appender: group commit of depot records ----

fn run_appender(shared: &Shared, requests: &Receiver<AppendRequest>, mut producers: Producers) {
    let mut next_seq = shared.durable_seq.load(Ordering::Acquire);
    let mut next_offsets: BTreeMap<u32, Vec<u64>> = shared
        .depots
        .values()
        .map(|d| {
            let heads = d.heads.iter().map(|h| h.load(Ordering::Acquire)).collect();
            (d.id, heads)
        })
        .collect();
    let depots_by_id: BTreeMap<u32, Arc<DepotState>> =
        shared.depots.values().map(|d| (d.id, d.clone())).collect();
    loop {
        // `None`: the maintenance interval passed without an append.
        let first = match shared.options.maintenance_interval {
            Some(interval) => match requests.recv_timeout(interval.max(MAINTENANCE_INTERVAL_MIN)) {
                Ok(request) => Some(request),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            },
            None => match requests.recv() {
                Ok(request) => Some(request),
                Err(_) => break,
            },
        };
        let maintenance = first.is_none();
        let mut group_bytes: usize = first.iter().map(append_request_bytes).sum();
        let mut group: Vec<AppendRequest> = first.into_iter().collect();
        if !maintenance {
            fill_group(
                requests,
                &shared.commits_writing,
                &mut group,
                &mut group_bytes,
                shared.options.append_group_bytes_max,
                APPEND_HOLD_FOR_COMMIT_MAX,
                append_request_bytes,
            );
        }
        if let Err(e) = shared.poison.check() {
            reply_all(group, &e);
            continue;
        }
        // Producers idle past their expiry are forgotten before this group's calls are
        // classified, so a call of one is new (and its state, written after the deletion,
        // stays).
        producers.tick();
        let mut expired = producers.expire(EXPIRED_PER_GROUP_MAX);
        let expired_count = expired.len() as u64;
        // Decide each request: a retry gets its first call's positions (once this group is
        // durable, in case that call is in it), a stale one an error, the rest new positions.
        let mut accepted: Vec<(AppendRequest, Vec<(RecordId, u64)>)> = Vec::new();
        let mut retries = Vec::new();
        let mut marks = Vec::new();
        let mut touched = BTreeMap::new();
        for request in group {
            let digest = request.producer.map(|_| {
                append_digest(
                    request.depot.id,
                    request.records.iter().map(|(p, b)| (*p, b.as_slice())),
                )
            });
            if let (Some((producer, sequence)), Some(digest)) = (request.producer, digest) {
                match producers.classify(producer, sequence, digest) {
                    CallKind::New => {}
                    CallKind::Retry(ids) => {
                        retries.push((request.reply, ids));
                        continue;
                    }
                    CallKind::Refused(error) => {
                        let _ = request.reply.send(Err(error));
                        continue;
                    }
                }
            }
            let depot_id = request.depot.id;
            let offsets = next_offsets.entry(depot_id).or_default();
            let mut positions = Vec::with_capacity(request.records.len());
            for (partition, _) in &request.records {
                let slot = &mut offsets[*partition as usize];
                positions.push((
                    RecordId {
                        depot_id,
                        partition: *partition,
                        offset: *slot,
                    },
                    next_seq,
                ));
                next_seq += 1;
                *slot += 1;
                touched.insert((depot_id, *partition), (request.depot.clone(), *slot));
            }
            if let (Some((producer, sequence)), Some(digest)) = (request.producer, digest) {
                let ids: Vec<RecordId> = positions.iter().map(|(id, _)| *id).collect();
                marks.push(producers.accept(producer, sequence, ids, digest));
            }
            accepted.push((request, positions));
        }
        let entries: Vec<DepotEntry<'_>> = accepted
            .iter()
            .flat_map(|(request, positions)| {
                request
                    .records
                    .iter()
                    .zip(positions)
                    .map(|((_, bytes), (id, seq))| DepotEntry {
                        depot_id: id.depot_id,
                        partition: id.partition,
                        offset: id.offset,
                        seq: *seq,
                        bytes,
                    })
            })
            .collect();
        // A producer that expired and called again in this group has its new state written:
        // deleting it too would be undone by the write order, but say what is meant.
        let called_again: BTreeSet<u64> = marks.iter().map(|mark| mark.producer).collect();
        expired.retain(|producer| !called_again.contains(producer));
        // Every pass plans, a maintenance check as a group of retries alone: both write only
        // if there is something to trim (or forget).
        let trims = match shared.options.depot_retention {
            Some(retention) => plan_trims(shared, &retention, &next_offsets, &depots_by_id),
            None => Vec::new(),
        };
        // A write without records or producer states is a maintenance write: a check's, or
        // one that calls without records asked for (`Engine::run_maintenance`).
        let maintenance_write = entries.is_empty() && marks.is_empty();
        let nothing_to_write = maintenance_write && expired.is_empty() && trims.is_empty();
        if maintenance && nothing_to_write {
            continue;
        }
        let write_started = Instant::now();
        let written = if nothing_to_write {
            Ok(())
        } else {
            match shared.poison.admit() {
                Ok(_gate) => {
                    write_group(shared, &entries, &marks, &expired, &trims).map_err(Error::from)
                }
                Err(poisoned) => Err(poisoned),
            }
        };
        if written.is_ok() && !nothing_to_write {
            let mut stats = lock(&shared.append_stats);
            stats.groups += 1;
            stats.records += entries.len() as u64;
            stats.write_bytes += entries.iter().map(depot_entry_bytes).sum::<u64>();
            stats.write_time_us += write_started.elapsed().as_micros() as u64;
            stats.producers_expired += expired_count;
            stats.producers_remembered = producers.len() as u64;
            for trim in &trims {
                stats.trims += 1;
                stats.trimmed_records += trim.first_kept_offset - trim.previous_first_kept_offset;
                // Durable: the next plan starts from it, and topologies may now delete the
                // outcomes below it (§3a T5).
                if let Some(depot) = depots_by_id.get(&trim.depot_id) {
                    if let Some(kept) = depot.first_kept.get(trim.partition as usize) {
                        kept.store(trim.first_kept_offset, Ordering::Release);
                    }
                }
            }
        }
        drop(entries);
        match written {
            Ok(()) => {
                for ((_, partition), (depot, next)) in touched {
                    depot.heads[partition as usize].store(next, Ordering::Release);
                }
                shared.durable_seq.store(next_seq, Ordering::Release);
                shared.input.bump();
                for (request, positions) in accepted {
                    let ids = positions.into_iter().map(|(id, _)| id).collect();
                    let _ = request.reply.send(Ok(ids));
                }
                for (reply, ids) in retries {
                    let _ = reply.send(Ok(ids));
                }
            }
            Err(e) => {
                let reason = match e {
                    // Poisoned by a batch's commit since this group's check: nothing written.
                    Error::Poisoned { reason } => reason,
                    e => {
                        let write = if maintenance_write {
                            "depot maintenance write (trims, expiry)"
                        } else {
                            "depot append"
                        };
                        let reason = format!("{write} failed: {e}");
                        shared.poison_and_wake(reason.clone());
                        reason
                    }
                };
                let replies = accepted
                    .into_iter()
                    .map(|(request, _)| request.reply)
                    .chain(retries.into_iter().map(|(reply, _)| reply));
                for reply in replies {
                    let _ = reply.send(Err(Error::Poisoned {
                        reason: reason.clone(),
                    }));
                }
                // Wake drivers and waiters so they see the poison.
                shared.input.bump();
            }
        }
    }
}

/// The record bytes an append call adds to its group.
fn append_request_bytes(request: &AppendRequest) -> usize {
    request.records.iter().map(|(_, bytes)| bytes.len()).sum()
}

/// Fills a group commit, up to `group_bytes_max`: everything already queued joins this fsync.
/// Then, if a batch commit is writing, holds the group open instead of writing it behind the
/// commit in RocksDB's write queue, adding the calls that arrive meanwhile (`CommitsWriting`),
/// until no commit is writing, the group is full or `hold_max` has passed in all (commits of
/// several topologies back to back, or a hung write, cannot hold it longer), and adds what is
/// queued by then. With no commit writing, nothing is waited for.
fn fill_group<R>(
    requests: &Receiver<R>,
    commits: &CommitsWriting,
    group: &mut Vec<R>,
    group_bytes: &mut usize,
    group_bytes_max: usize,
    hold_max: Duration,
    request_bytes: impl Fn(&R) -> usize,
) {
    let join = |request: R, group: &mut Vec<R>, group_bytes: &mut usize| {
        *group_bytes += request_bytes(&request);
        group.push(request);
    };
    let drain = |group: &mut Vec<R>, group_bytes: &mut usize| {
        while *group_bytes < group_bytes_max {
            match requests.try_recv() {
                Ok(request) => join(request, group, group_bytes),
                Err(_) => break,
            }
        }
    };
    drain(group, group_bytes);
    if !commits.any() {
        return;
    }
    let deadline = Instant::now() + hold_max;
    while *group_bytes < group_bytes_max && commits.any() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        crossbeam_channel::select! {
            recv(requests) -> request => match request {
                Ok(request) => join(request, group, group_bytes),
                Err(_) => return,
            },
            recv(commits.ended_rx) -> _ => {}
            default(left) => break,
        }
    }
    // The end of a commit write and calls may be ready at once, and `select!` picks at random.
    drain(group, group_bytes);
}

/// The trims retention allows now: each consumed depot partition down to the lowest offset a
/// consuming topology has yet to commit (its published progress: what is durable), keeping
/// the newest `keep_records_min` records and always the last, once at least
/// `trim_step_records` can go. `heads` are the next offsets after the group being written,
/// whose records are written with the trims; `depots` publish each partition's first kept
/// offset (only the appender writes it).
fn plan_trims(
    shared: &Shared,
    retention: &DepotRetention,
    heads: &BTreeMap<u32, Vec<u64>>,
    depots: &BTreeMap<u32, Arc<DepotState>>,
) -> Vec<DepotTrim> {
    let keep = retention.keep_records_min.max(1);
    let step = retention.trim_step_records.max(1);
    // The trim a partition may take with this floor, if it moves its start by a step.
    let trim = |depot_id: u32, partition: u32, head: u64, floor: u64| {
        let previous_first_kept_offset = depots
            .get(&depot_id)
            .and_then(|depot| depot.first_kept.get(partition as usize))
            .map_or(0, |kept| kept.load(Ordering::Acquire));
        let first_kept_offset = floor.min(head.saturating_sub(keep));
        (first_kept_offset >= previous_first_kept_offset.saturating_add(step)).then_some(
            DepotTrim {
                depot_id,
                partition,
                previous_first_kept_offset,
                first_kept_offset,
            },
        )
    };
    // Until some partition's head has moved a step past its start (plus what is kept), no
    // floor can allow a trim: say so without taking the topologies' progress locks.
    let any_trimmable = heads.iter().any(|(depot_id, heads)| {
        (0u32..)
            .zip(heads)
            .any(|(partition, head)| trim(*depot_id, partition, *head, u64::MAX).is_some())
    });
    if !any_trimmable {
        return Vec::new();
    }
    let mut floors = shared.retention_floors.clone();
    for topology in shared.topologies.values() {
        let progress = lock(&topology.progress);
        for (depot, consumed) in topology.inputs.iter().zip(&progress.consumed) {
            for (partition, next_offset) in consumed.iter().enumerate() {
                let floor = floors
                    .entry((depot.id, partition as u32))
                    .or_insert(*next_offset);
                *floor = (*floor).min(*next_offset);
            }
        }
    }
    floors
        .into_iter()
        .filter_map(|((depot_id, partition), floor)| {
            // Only depots declared in this run are appended to, and so trimmed.
            let head = heads.get(&depot_id)?.get(partition as usize)?;
            trim(depot_id, partition, *head, floor)
        })
        .collect()
}

fn write_group(
    shared: &Shared,
    entries: &[DepotEntry<'_>],
    producers: &[ProducerState],
    expired_producers: &[u64],
    trims: &[DepotTrim],
) -> Result<(), StoreError> {
    fail::fail_point!(failpoints::APPEND_BEFORE_WRITE, |_| Err(
        StoreError::Injected(failpoints::APPEND_BEFORE_WRITE)
    ));
    faulted_write(
        shared.options.storage_faults.as_ref(),
        DurableWrite::Append,
        "depot append",
        || {
            shared
                .store
                .append(entries, producers, expired_producers, trims)
        },
    )?;
    fail::fail_point!(failpoints::APPEND_AFTER_WRITE, |_| Err(
        StoreError::Injected(failpoints::APPEND_AFTER_WRITE)
    ));
    Ok(())
}

fn reply_all(group: Vec<AppendRequest>, error: &Error) {
    for request in group {
        let again = match error {
            Error::Poisoned { reason } => Error::Poisoned {
                reason: reason.clone(),
            },
            other => Error::Poisoned {
                reason: other.to_string(),
            },
        };
        let _ = request.reply.send(Err(again));
    }
}

// ---- batch drivers ----

fn run_driver(shared: &Shared, topology: &TopologyState) {
    // The committer thread commits batch N while this thread executes batch N + 1 over N's
    // pending writes; N + 1 is handed over only once N is published, so at most one batch is
    // in flight and commits stay in batch order (see the commit protocol, section 4, Pipelining).
    let (batches_tx, batches_rx) = crossbeam_channel::bounded::<PreparedBatch>(0);
    let (done_tx, done_rx) = crossbeam_channel::bounded::<Result<BatchSummary, Error>>(1);
    std::thread::scope(|scope| {
        let committer = std::thread::Builder::new()
            .name(format!("lockstep-commit:{}", topology.topology.name()))
            .spawn_scoped(scope, move || {
                for mut prepared in batches_rx {
                    // Freed after the driver has heard this batch's result (below), so that
                    // neither the driver nor this batch's publication waits for the freeing.
                    let retired_writes = prepared.retired_writes.take();
                    let committed = commit_or_poison(shared, topology, prepared);
                    let sent = done_tx.send(committed);
                    drop(retired_writes);
                    if sent.is_err() {
                        return;
                    }
                }
            });
        if let Err(e) = committer {
            stop_topology(topology, &spawn_error(e));
            return;
        }
        drive_batches(shared, topology, &batches_tx, &done_rx);
        drop(batches_tx);
    });
}

/// Commits `prepared` (B5–B6); a panic on the way poisons the engine, since whether the batch
/// reached the disk is then unknown, and committing it again could apply it twice.
fn commit_or_poison(
    shared: &Shared,
    state: &TopologyState,
    prepared: PreparedBatch,
) -> Result<BatchSummary, Error> {
    let batch_id = prepared.batch_id;
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        commit_batch(shared, state, prepared)
    }))
    .unwrap_or_else(|panic| {
        let reason = format!(
            "committing batch {batch_id} of topology {:?} panicked: {}",
            state.topology.name(),
            panic_message(panic.as_ref())
        );
        Err(shared.poison_batch(reason))
    })
}

/// Commits the batch [`Engine::execute_batch`] holds for `state`, if any. The caller holds
/// the topology's `run_lock`.
fn commit_held(shared: &Shared, state: &TopologyState) -> Result<Option<BatchSummary>, Error> {
    let held = lock(&state.held).take();
    held.map(|held| commit_or_poison(shared, state, held))
        .transpose()
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

/// The batch in flight on the committer thread.
struct InFlight {
    batch_id: u64,
    consumed: Consumed,
    writes: Arc<Vec<lockstep_core::store::WriteSet>>,
}

fn drive_batches(
    shared: &Shared,
    topology: &TopologyState,
    batches: &Sender<PreparedBatch>,
    done: &Receiver<Result<BatchSummary, Error>>,
) {
    let mut in_flight: Option<InFlight> = None;
    // Waits for the batch in flight to be published; false if it failed (the engine is then
    // poisoned and the topology stopped).
    let settle = |in_flight: &mut Option<InFlight>| -> bool {
        if in_flight.take().is_none() {
            return true;
        }
        match done.recv() {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => {
                stop_topology(topology, &e);
                false
            }
            Err(_) => {
                stop_topology(topology, &Error::Closed);
                false
            }
        }
    };
    loop {
        let seen = shared.input.generation();
        if shared.shutdown.load(Ordering::Acquire) || shared.poison.check().is_err() {
            settle(&mut in_flight);
            return;
        }
        // Plan from where the batch in flight leaves off.
        let mut progress = lock(&topology.progress).clone();
        if let Some(flight) = &in_flight {
            progress.record.batch_id = flight.batch_id;
            progress.consumed = flight.consumed.clone();
        }
        let pending = in_flight.as_ref().map(|flight| flight.writes.as_slice());
        let prepared = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            prepare_batch(shared, topology, &progress, pending)
        }))
        .unwrap_or_else(|panic| {
            Err(Error::TopologyStopped {
                topology: topology.topology.name().to_string(),
                reason: format!("a handler panicked: {}", panic_message(panic.as_ref())),
            })
        });
        match prepared {
            Ok(Some(mut prepared)) => {
                prepared.retired_writes = in_flight.as_ref().map(|flight| flight.writes.clone());
                if !settle(&mut in_flight) {
                    return;
                }
                in_flight = Some(InFlight {
                    batch_id: prepared.batch_id,
                    consumed: prepared.consumed.clone(),
                    writes: prepared.writes.clone(),
                });
                if batches.send(prepared).is_err() {
                    stop_topology(topology, &Error::Closed);
                    return;
                }
            }
            Ok(None) if in_flight.is_some() => {
                if !settle(&mut in_flight) {
                    return;
                }
            }
            Ok(None) => shared.input.wait_past(seen, &shared.shutdown),
            Err(e) => {
                // The batch in flight is good: let it commit before stopping.
                settle(&mut in_flight);
                stop_topology(topology, &e);
                return;
            }
        }
    }
}

/// Plans the next batch: the longest prefix, in append order, of the durable records past the
/// committed offsets in which no partition exceeds its record or byte cap. Returns the input
/// and the consumed offsets after it; `None` when there is nothing new.
fn plan_batch(
    shared: &Shared,
    state: &TopologyState,
    progress: &Progress,
) -> Result<Option<(BatchInput, Consumed)>, Error> {
    // Load the watermark before the heads: every head of a group below it is then visible.
    let durable_seq = shared.durable_seq.load(Ordering::Acquire);
    let records_max = shared.options.batch_records_max.max(1);
    let bytes_max = shared.options.batch_bytes_max.max(1);
    let partitions = state.topology.partitions() as usize;
    let mut candidates = Vec::new();
    let mut horizon = u64::MAX;
    for partition in 0..partitions {
        for (consumer, depot) in state.inputs.iter().enumerate() {
            let from = progress.consumed[consumer][partition];
            let head = depot.heads[partition].load(Ordering::Acquire);
            // One record past the cap tells where the cap cuts this partition.
            let wanted = head
                .saturating_sub(from)
                .min((records_max as u64).saturating_add(1)) as usize;
            if wanted == 0 {
                continue;
            }
            let stored = shared
                .store
                .read(depot.id, partition as u32, from, wanted, bytes_max)?;
            // A read that stopped before the head (at a cap) leaves records unread whose seqs
            // are above its last one; nothing later than that may be taken, or an unread record
            // would be processed after one appended after it.
            if from + (stored.len() as u64) < head {
                if let Some(last) = stored.last() {
                    horizon = horizon.min(last.seq);
                }
            }
            candidates.extend(stored.into_iter().filter(|r| r.seq < durable_seq).map(|r| {
                InputRecord {
                    consumer,
                    partition: partition as u32,
                    offset: r.offset,
                    seq: r.seq,
                    bytes: r.bytes,
                }
            }));
        }
    }
    candidates.retain(|r| r.seq <= horizon);
    if candidates.is_empty() {
        return Ok(None);
    }
    candidates.sort_by_key(|r| r.seq);
    let mut records_in = vec![0usize; partitions];
    let mut bytes_in = vec![0usize; partitions];
    let mut take = 0;
    for record in &candidates {
        let p = record.partition as usize;
        let over_records = records_in[p] >= records_max;
        let over_bytes = records_in[p] > 0 && bytes_in[p] + record.bytes.len() > bytes_max;
        if over_records || over_bytes {
            break;
        }
        records_in[p] += 1;
        bytes_in[p] += record.bytes.len();
        take += 1;
    }
    candidates.truncate(take);
    let mut consumed = progress.consumed.clone();
    for record in &candidates {
        consumed[record.consumer][record.partition as usize] = record.offset + 1;
    }
    Ok(Some((
        BatchInput {
            batch_id: progress.record.batch_id + 1,
            records: candidates,
        },
        consumed,
    )))
}

/// The topologies `store` holds that `catalog` (this open's declarations, after
/// retirement) does not name, with their commit records' batch and depots.
fn undeclared_topologies(
    store: &RocksStore,
    catalog: &catalog::Catalog,
) -> Result<Vec<UndeclaredTopology>, Error> {
    let mut undeclared = Vec::new();
    let mut depot_names = None;
    for (name, id) in catalog::stored_topologies(store)? {
        if catalog.topologies.contains_key(&name) {
            continue;
        }
        let record = store.load_commit(id)?;
        let depot_ids: BTreeSet<u32> = record
            .iter()
            .flat_map(|r| r.offsets.iter().map(|o| o.depot_id))
            .collect();
        let names = match &depot_names {
            Some(names) => names,
            None => depot_names.insert(catalog::stored_depot_names(store)?),
        };
        let mut depots: Vec<String> = depot_ids
            .iter()
            .map(|id| names.get(id).cloned().unwrap_or_else(|| format!("#{id}")))
            .collect();
        depots.sort();
        undeclared.push(UndeclaredTopology {
            name,
            batch_id: record.map(|r| r.batch_id),
            depots,
        });
    }
    Ok(undeclared)
}

/// A batch planned and executed, not yet committed.
struct PreparedBatch {
    batch_id: u64,
    record: CommitRecord,
    consumed: Consumed,
    /// Shared with the next batch while this one commits: it reads them as pending state.
    writes: Arc<Vec<lockstep_core::store::WriteSet>>,
    records: u64,
    rounds: u32,
    messages: u64,
    /// Executed while the batch before it was committing.
    pipelined: bool,
    started: Instant,
    /// Outcomes of trimmed records, deleted with the batch's writes (§3a T5).
    deleted_ranges: Vec<KeyRange>,
    /// The previous batch's writes, which the driver no longer reads. The committer frees
    /// them once it has reported this batch's result: freeing a batch's worth of keys and
    /// values takes a while, and neither the driver (the busier thread) nor this batch's
    /// publication should wait for it.
    retired_writes: Option<Arc<Vec<lockstep_core::store::WriteSet>>>,
}

/// Plans and executes the batch after the one `progress` describes, reading committed state
/// with `pending` (the writes of the previous batch, if it has not committed yet) laid over
/// it. Side-effect free: a failure leaves nothing to undo. `Ok(None)` when there is no new
/// input.
fn prepare_batch(
    shared: &Shared,
    state: &TopologyState,
    progress: &Progress,
    pending: Option<&[lockstep_core::store::WriteSet]>,
) -> Result<Option<PreparedBatch>, Error> {
    let started = Instant::now();
    let name = state.topology.name();
    // The poison first: a failed commit stops its topology too, and the caller should hear
    // the cause (as `wait_for` does).
    shared.poison.check()?;
    if let Some(reason) = &progress.stopped {
        return Err(Error::TopologyStopped {
            topology: name.to_string(),
            reason: reason.clone(),
        });
    }

    let Some((input, consumed)) = plan_batch(shared, state, progress)? else {
        return Ok(None);
    };
    let batch_id = input.batch_id;
    let _entered = tracing::debug_span!("execute", topology = name, batch_id).entered();

    let live = shared.store.live()?;
    let cached = shared.state_cache.as_ref().map(|cache| CachedState {
        base: &live,
        cache,
        policy: &state.cache_policy,
    });
    let committed: &dyn StateRead = match &cached {
        Some(cached) => cached,
        None => &live,
    };
    let overlaid = pending.map(|pending| Overlaid::new(committed, pending));
    let base: &dyn StateRead = match &overlaid {
        Some(overlaid) => overlaid,
        None => committed,
    };
    let output = state
        .topology
        .execute(input, &state.ids, base, shared.options.threads)
        .map_err(|source| Error::Batch {
            topology: name.to_string(),
            batch_id,
            source: Box::new(source),
        })?;

    let mut record = CommitRecord {
        batch_id,
        offsets: Vec::new(),
    };
    for (i, depot) in state.inputs.iter().enumerate() {
        for (partition, next_offset) in consumed[i].iter().enumerate() {
            record.offsets.push(ConsumedOffset {
                depot_id: depot.id,
                partition: partition as u32,
                next_offset: *next_offset,
            });
        }
    }
    // A depot the topology no longer consumes keeps its offsets: if the topology consumes it
    // again it resumes there, and until then retention keeps those records for it.
    record.offsets.extend(
        progress
            .record
            .offsets
            .iter()
            .filter(|offset| state.inputs.iter().all(|d| d.id != offset.depot_id))
            .copied(),
    );
    record.offsets.sort();
    let deleted_ranges = trimmed_outcome_ranges(state)?;
    Ok(Some(PreparedBatch {
        batch_id,
        record,
        consumed,
        writes: Arc::new(output.writes),
        deleted_ranges,
        records: output.records,
        rounds: output.rounds,
        messages: output.messages,
        pipelined: pending.is_some(),
        started,
        retired_writes: None,
    }))
}

/// The key ranges of `state`'s outcomes that retention has made deletable since its last
/// batch: per consumed depot partition, the outcomes of records from where the last deletion
/// stopped up to the partition's first kept offset (§3a T5). Every record below that offset
/// is committed by every topology (I9), so no batch in flight records their outcomes (but
/// through `record_outcome_for`, and the commit deletes after writing). Advancing the marks
/// here, before the commit, is safe: a batch that does not commit poisons or closes the
/// engine, and the next open deletes from 0 again. Depots the topology no longer consumes
/// are left alone: their outcomes stay until it consumes them again or is retired.
fn trimmed_outcome_ranges(state: &TopologyState) -> Result<Vec<KeyRange>, Error> {
    let mut deleted_below = lock(&state.outcomes_deleted_below);
    let mut ranges = Vec::new();
    for (depot, depot_deleted_below) in state.inputs.iter().zip(deleted_below.iter_mut()) {
        for (partition, (below, kept)) in depot_deleted_below
            .iter_mut()
            .zip(&depot.first_kept)
            .enumerate()
        {
            let kept = kept.load(Ordering::Acquire);
            if kept <= *below {
                continue;
            }
            let record = |offset: u64| RecordId {
                depot_id: depot.id,
                partition: partition as u32,
                offset,
            };
            let outcome_pstate_id = state.ids.outcome_pstate_id;
            let range = (
                outcome_key(outcome_pstate_id, record(*below))?,
                outcome_key(outcome_pstate_id, record(kept))?,
            );
            ranges.push(range);
            *below = kept;
        }
    }
    Ok(ranges)
}

/// Whether every range lies within PState `pstate_id`: keys order by their PState's id first,
/// so a range does when both its ends carry that id.
fn ranges_within_pstate(ranges: &[KeyRange], pstate_id: u32) -> bool {
    ranges.iter().all(|(start, end)| {
        key_pstate_id(start) == Some(pstate_id) && key_pstate_id(end) == Some(pstate_id)
    })
}

/// Stops `state` for good after its batch failed: waiters hear why nothing more will commit.
fn stop_topology(state: &TopologyState, error: &Error) {
    let name = state.topology.name();
    tracing::error!(topology = name, error = %error, "batch failed; topology stopped");
    lock(&state.progress)
        .stopped
        .get_or_insert_with(|| error.to_string());
    state.progress_changed.notify_all();
    state.commits.send_modify(|_| ());
}

/// Commits a prepared batch (one synced write) and publishes it: stats, progress, waiters,
/// cache. A failed commit, or a batch that deletes a range outside its outcome table, poisons
/// the engine.
fn commit_batch(
    shared: &Shared,
    state: &TopologyState,
    prepared: PreparedBatch,
) -> Result<BatchSummary, Error> {
    let PreparedBatch {
        batch_id,
        record,
        consumed,
        writes: output_writes,
        deleted_ranges,
        records,
        rounds,
        messages,
        pipelined,
        started,
        // Taken out and freed by the committer loop; `None` here.
        retired_writes: _,
    } = prepared;
    let name = state.topology.name();
    let writes: u64 = output_writes.iter().map(|w| w.len() as u64).sum();
    let write_bytes: u64 = output_writes
        .iter()
        .flat_map(|w| w.iter_unordered())
        .map(|(k, v)| (k.len() + v.as_ref().map_or(0, Vec::len)) as u64)
        .sum();

    // Retention deletes only trimmed records' outcomes. A range anywhere else could cover keys
    // the state cache holds, or that the next batch, executing over this one's pending writes,
    // reads from the store: neither follows range deletions. Such a batch is an engine bug;
    // it is refused before anything is written.
    if !ranges_within_pstate(&deleted_ranges, state.ids.outcome_pstate_id) {
        let reason = format!(
            "batch {batch_id} of topology {name:?} deletes a key range outside its outcome \
             table (an engine bug); nothing of it was written"
        );
        return Err(shared.poison_batch(reason));
    }
    let commit_started = Instant::now();
    let committed = {
        let _gate = shared.poison.admit()?;
        commit(shared, state.id, &record, &output_writes, &deleted_ranges)
    };
    if let Err(e) = committed {
        let reason = format!("batch {batch_id} of topology {name:?} failed to commit: {e}");
        // Wakes this topology's waiters too, with every other topology's.
        return Err(shared.poison_batch(reason));
    }
    let commit_latency_us = commit_started.elapsed().as_micros() as u64;

    // Counted before the batch is published, so that stats read once a wait for one of its
    // records returns include it.
    {
        let mut stats = lock(&state.stats);
        stats.batches += 1;
        stats.records += records;
        stats.writes += writes;
        stats.write_bytes += write_bytes;
        stats.commit_time_us += commit_latency_us;
        stats.batches_pipelined += u64::from(pipelined);
    }
    {
        let mut progress = lock(&state.progress);
        progress.record = record;
        progress.consumed = consumed;
    }
    state.progress_changed.notify_all();
    state.commits.send_modify(|_| ());
    state.commits.send_replace(batch_id);
    // Durable and published: the cache may now show it. Waiters are woken first, as they read
    // snapshots, never the cache. The next batch of this topology, the only reader of these
    // keys through the cache, either starts after this returns (the driver waits for this
    // batch's result, and manual batches hold the run lock) or reads them from
    // `output_writes` as pending state until it does.
    if let Some(cache) = &shared.state_cache {
        cache.apply(&output_writes, &state.cache_policy);
    }
    let summary = BatchSummary {
        batch_id,
        records,
        rounds,
        messages,
        writes,
        write_bytes,
        batch_latency_us: started.elapsed().as_micros() as u64,
        commit_latency_us,
    };
    tracing::debug!(
        topology = name,
        batch_id,
        records = summary.records,
        rounds = summary.rounds,
        messages = summary.messages,
        writes = summary.writes,
        commit_latency_us = summary.commit_latency_us,
        batch_latency_us = summary.batch_latency_us,
        "committed"
    );
    Ok(summary)
}

/// Plans, executes and commits one batch, nothing overlapping. `Ok(None)` when there is no new
/// input.
fn run_one_batch(shared: &Shared, state: &TopologyState) -> Result<Option<BatchSummary>, Error> {
    let _serial = lock(&state.run_lock);
    commit_held(shared, state)?;
    let progress = lock(&state.progress).clone();
    match prepare_batch(shared, state, &progress, None) {
        Ok(Some(prepared)) => commit_or_poison(shared, state, prepared).map(Some),
        Ok(None) => Ok(None),
        Err(error @ Error::Batch { .. }) => {
            stop_topology(state, &error);
            Err(error)
        }
        Err(error) => Err(error),
    }
}

fn commit(
    shared: &Shared,
    topology_id: u32,
    record: &CommitRecord,
    writes: &[lockstep_core::store::WriteSet],
    deleted_ranges: &[KeyRange],
) -> Result<(), StoreError> {
    fail::fail_point!(failpoints::COMMIT_BEFORE_WRITE, |_| Err(
        StoreError::Injected(failpoints::COMMIT_BEFORE_WRITE)
    ));
    faulted_write(
        shared.options.storage_faults.as_ref(),
        DurableWrite::Commit,
        "batch commit",
        || {
            shared.store.commit_marked(
                BatchCommit {
                    topology_id,
                    record,
                    writes,
                    deleted_ranges,
                },
                || shared.commits_writing.begin(),
            )
        },
    )?;
    fail::fail_point!(failpoints::COMMIT_AFTER_WRITE, |_| Err(
        StoreError::Injected(failpoints::COMMIT_AFTER_WRITE)
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockstep_core::{NoMessages, TopologyBuilder};

    /// A commit write's guard counts it as writing until dropped, also when the write panics,
    /// and leaves the appender a token when it ends.
    #[test]
    fn a_commit_write_counts_until_its_guard_drops() {
        let commits = CommitsWriting::default();
        assert!(!commits.any());
        let first = commits.begin();
        let second = commits.begin();
        drop(first);
        assert!(commits.any(), "one of two writes still writing");
        drop(second);
        assert!(!commits.any());
        assert!(commits.ended_rx.try_recv().is_ok(), "a token for the ends");
        assert!(commits.ended_rx.try_recv().is_err(), "at most one kept");
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _writing = commits.begin();
            panic!("the write panicked");
        }));
        assert!(panicked.is_err());
        assert!(!commits.any(), "a panicking write still ends");
    }

    /// A group is held while a commit writes: every call sent before the write ends joins it,
    /// the wait ends with the write, and with no write there is no wait at all.
    #[test]
    fn a_group_is_held_open_while_a_commit_writes() {
        let commits = CommitsWriting::default();
        let (requests_tx, requests_rx) = crossbeam_channel::unbounded::<Vec<u8>>();
        let hold = |group: &mut Vec<Vec<u8>>, bytes: &mut usize, bytes_max: usize| {
            // Far past any scheduling delay: only the write's end (or the byte cap) ends it.
            fill_group(
                &requests_rx,
                &commits,
                group,
                bytes,
                bytes_max,
                Duration::from_secs(60),
                Vec::len,
            );
        };

        // No commit writing: what is queued joins, and nothing is waited for (the 60 s bound
        // would fail the timed check).
        requests_tx.send(vec![0; 3]).expect("send");
        let (mut group, mut bytes) = (Vec::new(), 0);
        let started = Instant::now();
        hold(&mut group, &mut bytes, usize::MAX);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "nothing waited for"
        );
        assert_eq!((group.len(), bytes), (1, 3), "the queued call joins");

        // A commit writing: the calls sent during the write join, and its end ends the wait.
        std::thread::scope(|scope| {
            let writing = commits.begin();
            let (sender, taken) = (requests_tx.clone(), requests_rx.clone());
            scope.spawn(move || {
                for call in 0..50u8 {
                    sender.send(vec![call; 2]).expect("send");
                }
                // Only the group takes calls: once all are taken, the write has not ended, so
                // it is holding. (Bounded, so that a hold that takes nothing fails the test
                // rather than hanging it.)
                let deadline = Instant::now() + Duration::from_secs(10);
                while !taken.is_empty() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
                // And a while longer: a group filled without holding returns in the meantime,
                // with the write still going, which the checks below see.
                std::thread::sleep(Duration::from_millis(100));
                drop(writing);
            });
            let (mut group, mut bytes) = (Vec::new(), 0);
            let started = Instant::now();
            hold(&mut group, &mut bytes, usize::MAX);
            // Woken by the write's end, not by the 60 s bound (the sender waits up to 10 s).
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "woken by the write's end"
            );
            assert_eq!(group.len(), 50, "the 50 calls sent during the write");
            assert_eq!(bytes, 100);
            assert!(!commits.any());
        });

        // The byte cap ends a hold as well, with the write still going.
        let writing = commits.begin();
        for call in 0..10u8 {
            requests_tx.send(vec![call; 10]).expect("send");
        }
        let (mut group, mut bytes) = (Vec::new(), 0);
        let started = Instant::now();
        hold(&mut group, &mut bytes, 35);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "ended by the cap"
        );
        assert_eq!(
            (group.len(), bytes),
            (4, 40),
            "stops at the first call past the cap"
        );

        // And the bound, in all: calls keep coming, the write never ends. (The calls stop
        // after 10 s, so that a bound per look fails the test rather than hanging it.)
        let (mut group, mut bytes) = (Vec::new(), 0);
        let stop = AtomicBool::new(false);
        let started = Instant::now();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                while !stop.load(Ordering::Acquire) && started.elapsed() < Duration::from_secs(10) {
                    let _ = requests_tx.send(vec![0; 1]);
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
            fill_group(
                &requests_rx,
                &commits,
                &mut group,
                &mut bytes,
                usize::MAX,
                Duration::from_millis(200),
                Vec::len,
            );
            stop.store(true, Ordering::Release);
        });
        let held = started.elapsed();
        assert!(
            held >= Duration::from_millis(200),
            "held {held:?}, for the bound"
        );
        assert!(
            held < Duration::from_secs(5),
            "held {held:?}: the bound is for the whole hold"
        );
        assert!(commits.any());
        drop(writing);
    }

    /// A commit's range deletions must lie in one PState (the outcome table): a range with an
    /// end in another PState, or too short to name one, does not.
    #[test]
    fn ranges_lie_within_a_pstate_only_when_both_ends_do() {
        let key = |pstate_id: u32, rest: &[u8]| {
            let mut key = pstate_id.to_be_bytes().to_vec();
            key.extend_from_slice(rest);
            key
        };
        let inside = (key(7, b"\x00"), key(7, b"\xff"));
        assert!(ranges_within_pstate(&[], 7));
        assert!(ranges_within_pstate(std::slice::from_ref(&inside), 7));
        assert!(!ranges_within_pstate(std::slice::from_ref(&inside), 8));
        for outside in [
            (key(7, b"\x00"), key(8, b"")),
            (key(6, b"\xff"), key(7, b"\x01")),
            (vec![0, 0], key(7, b"")),
        ] {
            assert!(!ranges_within_pstate(&[inside.clone(), outside], 7));
        }
    }

    /// Retiring a topology deletes every entry of its PStates, its outcome table included,
    /// and its catalog entries and commit record; another topology's state is untouched.
    #[test]
    fn retiring_a_topology_deletes_its_state_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let words = Depot::<String>::hashed("words", 2, |w| w.clone()).expect("depot");
        let counter = |name: &str| {
            let mut builder = TopologyBuilder::<NoMessages>::new(name, 2);
            let counts = builder.pstate::<String, u64>(&format!("{name}-counts"));
            builder.consume(&words, move |ctx, word: String| {
                let n = ctx.get(&counts, &word)?.unwrap_or(0) + 1;
                ctx.put(&counts, &word, &n)?;
                ctx.record_outcome(&n)
            });
            builder.build().expect("topology")
        };
        let open = |builder: EngineBuilder| {
            builder
                .options(EngineOptions::manual())
                .depot(&words)
                .topology(counter("kept"))
                .open()
                .expect("open")
        };
        let engine = open(Engine::builder(dir.path()).topology(counter("gone")));
        let ids = |engine: &Engine, topology: &str| -> Vec<u32> {
            [format!("{topology}-counts"), outcome_table_name(topology)]
                .iter()
                .map(|name| engine.shared.pstates[name].1)
                .collect()
        };
        let (gone_ids, kept_ids) = (ids(&engine, "gone"), ids(&engine, "kept"));
        let words_appended: Vec<String> = (0..20).map(|i| format!("w{}", i % 6)).collect();
        engine.append_many(&words, &words_appended).expect("append");
        engine.run_until_idle().expect("batches");
        let pstate_id_of = |key: &[u8]| u32::from_be_bytes(key[..4].try_into().expect("id"));
        let pstate_ids_stored = |engine: &Engine| -> BTreeSet<u32> {
            let entries = engine.shared.store.state_entries().expect("scan");
            entries.iter().map(|(key, _)| pstate_id_of(key)).collect()
        };
        let everything: BTreeSet<u32> = gone_ids.iter().chain(&kept_ids).copied().collect();
        assert_eq!(pstate_ids_stored(&engine), everything);
        let kept_before = engine.shared.store.state_entries().expect("scan");
        drop(engine);

        let engine = open(Engine::builder(dir.path()).retire_topology("gone"));
        assert_eq!(
            pstate_ids_stored(&engine),
            kept_ids.iter().copied().collect::<BTreeSet<u32>>()
        );
        let kept_expected: Vec<Entry> = kept_before
            .into_iter()
            .filter(|(key, _)| kept_ids.contains(&pstate_id_of(key)))
            .collect();
        assert_eq!(
            engine.shared.store.state_entries().expect("scan"),
            kept_expected
        );
        let committed: Vec<u32> = engine
            .shared
            .store
            .commit_records()
            .expect("commit records")
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(
            committed,
            vec![engine.shared.topology("kept").expect("kept").id]
        );
        let catalog_keys: Vec<String> = engine
            .shared
            .store
            .meta_entries_with_prefix(b"catalog/")
            .expect("catalog")
            .into_iter()
            .map(|(key, _)| String::from_utf8_lossy(&key).into_owned())
            .collect();
        assert!(
            catalog_keys.iter().all(|key| !key.contains("gone")),
            "{catalog_keys:?}"
        );
        assert!(catalog_keys.contains(&"catalog/topology/kept".to_string()));
    }

    /// A producer state stored without a time (format 1) is dated with the open and written
    /// back before the engine runs, so the next open does not date it anew (an engine
    /// restarted more often than the expiry would otherwise keep it forever), and it expires
    /// by that date.
    #[test]
    fn untimed_producer_states_are_dated_once_at_the_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let words = Depot::<String>::hashed("words", 2, |w| w.clone()).expect("depot");
        let open = |expiry: Duration| {
            let mut options = EngineOptions::manual();
            options.producer_expiry = expiry;
            Engine::builder(dir.path())
                .options(options)
                .depot(&words)
                .open()
                .expect("open")
        };
        drop(open(Duration::from_secs(3600)));
        let untimed = ProducerState {
            producer: 77,
            sequence: 4,
            ids: vec![RecordId {
                depot_id: 1,
                partition: 0,
                offset: 0,
            }],
            digest: 9,
            last_append_unix_ms: 0,
        };
        {
            let store = RocksStore::open(dir.path(), 1 << 20).expect("raw open");
            store.put_format_1_producer_state(&untimed).expect("put");
        }
        let before_open = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis() as u64;
        let engine = open(Duration::from_secs(3600));
        assert_eq!(engine.append_stats().producers_remembered, 1);
        let stored = engine.shared.store.load_producers().expect("load");
        let [dated] = stored.as_slice() else {
            panic!("one producer state expected, found {stored:?}");
        };
        assert!(dated.last_append_unix_ms >= before_open, "{dated:?}");
        assert_eq!(
            ProducerState {
                last_append_unix_ms: 0,
                ..dated.clone()
            },
            untimed
        );
        drop(engine);
        // Reopened once that date is past the expiry, the first group forgets it.
        std::thread::sleep(Duration::from_millis(50));
        let engine = open(Duration::from_millis(10));
        engine.append(&words, &"w".to_string()).expect("append");
        assert_eq!(engine.append_stats().producers_expired, 1);
        assert!(engine
            .shared
            .store
            .load_producers()
            .expect("load")
            .is_empty());
    }

    /// What the appender trims is gone from the depot column family, not only hidden by the
    /// trim mark (which every public read checks first), trim after trim; and the batch after
    /// a trim deletes the trimmed records' outcomes.
    #[test]
    fn trims_delete_the_records_they_cover() {
        let dir = tempfile::tempdir().expect("tempdir");
        let words = Depot::<String>::hashed("words", 2, |w| w.clone()).expect("depot");
        let mut builder = TopologyBuilder::<NoMessages>::new("count", 2);
        let counts = builder.pstate::<String, u64>("counts");
        builder.consume(&words, move |ctx, word: String| {
            let n = ctx.get(&counts, &word)?.unwrap_or(0) + 1;
            ctx.put(&counts, &word, &n)?;
            ctx.record_outcome(&n)
        });
        let mut options = EngineOptions::manual();
        options.depot_retention = Some(DepotRetention {
            keep_records_min: 2,
            trim_step_records: 3,
        });
        let engine = Engine::builder(dir.path())
            .options(options)
            .depot(&words)
            .topology(builder.build().expect("topology"))
            .open()
            .expect("open");
        let depot_id = engine.shared.depot(words.spec()).expect("declared").id;
        let outcome_pstate_id = engine.shared.outcome_table_id("count").expect("outcomes");
        let mut trims_seen = 0;
        for round in 0..6 {
            let batch: Vec<String> = (0..10)
                .map(|i| format!("w{}", (round * 10 + i) % 7))
                .collect();
            engine.append_many(&words, &batch).expect("append");
            engine.run_until_idle().expect("batches");
            for partition in 0..2 {
                let first_kept = engine
                    .depot_first_kept_offset(&words, partition)
                    .expect("first kept");
                let head = engine.depot_next_offset(&words, partition).expect("head");
                let stored = engine
                    .shared
                    .store
                    .depot_offsets_stored(depot_id, partition);
                assert_eq!(
                    stored,
                    (first_kept..head).collect::<Vec<_>>(),
                    "round {round} partition {partition}"
                );
                // The batch after a trim deleted the trimmed records' outcomes, and only those.
                let live = engine.shared.store.live().expect("live");
                let outcomes_stored: Vec<u64> = (0..head)
                    .filter(|offset| {
                        let record = RecordId {
                            depot_id,
                            partition,
                            offset: *offset,
                        };
                        let key = outcome_key(outcome_pstate_id, record).expect("key");
                        live.get(&key).expect("read").is_some()
                    })
                    .collect();
                assert_eq!(
                    outcomes_stored,
                    (first_kept..head).collect::<Vec<_>>(),
                    "outcomes, round {round} partition {partition}"
                );
            }
            trims_seen = engine.append_stats().trims;
        }
        assert!(trims_seen >= 4, "{trims_seen} trims");
    }
}

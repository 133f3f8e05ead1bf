//! The seams between the engine and its storage, with their contracts.
//!
//! The engine needs three things from storage, each a small trait so that a later release can
//! move depots onto a replicated log and the commit decision into a consensus store without
//! touching batch execution:
//!
//! - [`DepotLog`]: durable append and ordered read of depot records.
//! - [`CommitStore`]: the commit point, where a batch's writes and consumed offsets become
//!   durable and visible together, or not at all.
//! - [`StateRead`]: reads of committed PState entries (and, inside a batch, through the batch's
//!   own overlay).
//!
//! Keys handed to these traits are already laid out by [`crate::layout`]; values are opaque.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::{Arc, OnceLock};

use hashbrown::hash_map::EntryRef;
use hashbrown::HashMap;
use serde::{Deserialize, Serialize};

use crate::codec::{decode_envelope, CodecError};
use crate::layout::{key_partition, key_pstate_id};
use crate::topology::RecordId;

/// A laid-out key and its stored value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// A storage operation that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend reported an error. For writes this means the write **may or may not** be
    /// durable: the caller cannot tell, which is why the engine poisons itself on it.
    #[error("storage {op} failed: {message}")]
    Io {
        /// The operation, e.g. "depot append" or "batch commit".
        op: &'static str,
        /// The backend's message.
        message: String,
    },
    /// Stored bytes are not what Lockstep wrote.
    #[error("corruption: {0}")]
    Corruption(String),
    /// A failpoint fired (tests only).
    #[error("injected failure at failpoint {0}")]
    Injected(&'static str),
    /// A read asked for depot records that retention has deleted. A refusal, not a failure:
    /// nothing is wrong with the store, and the partition can be read from
    /// `first_kept_offset`.
    #[error(
        "depot {depot_id} partition {partition}: offset {from_offset} was trimmed; the first kept offset is {first_kept_offset}"
    )]
    Trimmed {
        /// Catalog id of the depot.
        depot_id: u32,
        /// Partition within the depot.
        partition: u32,
        /// Where the read asked to start.
        from_offset: u64,
        /// The partition's first record that is still stored.
        first_kept_offset: u64,
    },
}

/// Reads of committed state, by laid-out key.
///
/// Contract: every call on one value sees the same set of committed batches (a snapshot), or,
/// for the live store a batch reads from, the state as of the last commit of the topology that
/// owns the keys read: only that topology writes them, and it writes only at commit.
pub trait StateRead: Send + Sync {
    /// The value stored under `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Entries with `from <= key < to`, ascending, at most `limit` of them.
    fn scan(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError>;
    /// Hands the value under `key` (or `None`) to `visit`. Stores that can lend their bytes
    /// override this to skip the copy [`get`](StateRead::get) makes; the default copies.
    fn get_with(&self, key: &[u8], visit: &mut dyn FnMut(Option<&[u8]>)) -> Result<(), StoreError> {
        let value = self.get(key)?;
        visit(value.as_deref());
        Ok(())
    }
}

impl<T: StateRead + ?Sized> StateRead for &T {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        (**self).get(key)
    }

    fn get_with(&self, key: &[u8], visit: &mut dyn FnMut(Option<&[u8]>)) -> Result<(), StoreError> {
        (**self).get_with(key, visit)
    }

    fn scan(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError> {
        (**self).scan(from, to, limit)
    }
}

/// One record to append: its envelope bytes at an offset the caller has assigned.
#[derive(Debug, Clone, Copy)]
pub struct DepotEntry<'a> {
    /// Catalog id of the depot.
    pub depot_id: u32,
    /// Partition within the depot.
    pub partition: u32,
    /// The next offset of that partition when the group was formed.
    pub offset: u64,
    /// The global append sequence number (append order across all depots and partitions).
    pub seq: u64,
    /// The record's envelope.
    pub bytes: &'a [u8],
}

/// One stored depot record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepotRecord {
    /// Offset within its partition.
    pub offset: u64,
    /// Global append sequence number.
    pub seq: u64,
    /// The record's envelope.
    pub bytes: Vec<u8>,
}

/// What the log remembers of an idempotent producer: the last append call it accepted from it
/// (producers number their calls) and the positions that call got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerState {
    /// The producer's id.
    pub producer: u64,
    /// Its last accepted call.
    pub sequence: u64,
    /// What that call's records were assigned.
    pub ids: Vec<RecordId>,
    /// Digest of that call's depot and records ([`append_digest`]): a "retry" with other
    /// records under the same sequence is refused instead of answered with these ids.
    pub digest: u64,
    /// When that call was accepted, in milliseconds since the Unix epoch (the appender's
    /// clock, which never goes backwards): an idle producer is forgotten once this is older
    /// than the engine's producer expiry. 0 for a state written before times were kept.
    pub last_append_unix_ms: u64,
}

/// A producer state as format 1 wrote it, before the last append's time was kept.
#[derive(Deserialize)]
struct ProducerStateV1 {
    producer: u64,
    sequence: u64,
    ids: Vec<RecordId>,
    digest: u64,
}

/// Decodes a stored [`ProducerState`] envelope in the current layout or in format 1's, which
/// has no time (read as 0, "before times were kept"). The first open of a format-1 directory
/// dates and rewrites such states, but a crash right after it marked the directory format 2
/// leaves them as they were, so both layouts are read whatever the directory's format says.
/// The two cannot be confused: each decodes only if every byte is used.
pub fn decode_producer_state(bytes: &[u8]) -> Result<ProducerState, CodecError> {
    decode_envelope::<ProducerState>(bytes).or_else(|current| {
        decode_envelope::<ProducerStateV1>(bytes)
            .map(|v1| ProducerState {
                producer: v1.producer,
                sequence: v1.sequence,
                ids: v1.ids,
                digest: v1.digest,
                last_append_unix_ms: 0,
            })
            .map_err(|_| current)
    })
}

/// Deletes a depot partition's records below `first_kept_offset` (retention): written with an
/// append group, so the deletion and the record of where the partition now starts are durable
/// together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepotTrim {
    /// Catalog id of the depot.
    pub depot_id: u32,
    /// Partition within the depot.
    pub partition: u32,
    /// The partition's first kept offset before this trim: the records below it are already
    /// gone, so the deletion covers only `[previous_first_kept_offset, first_kept_offset)`
    /// and never overlaps an earlier one.
    pub previous_first_kept_offset: u64,
    /// Every record below this offset is deleted; this one and later are kept.
    pub first_kept_offset: u64,
}

/// The digest that identifies one append call's content: its depot and every record's
/// partition and bytes, in order.
pub fn append_digest<'a>(depot_id: u32, records: impl IntoIterator<Item = (u32, &'a [u8])>) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(&depot_id.to_be_bytes());
    for (partition, bytes) in records {
        hasher.update(&partition.to_be_bytes());
        hasher.update(&(bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    }
    hasher.digest()
}

/// The depot log.
///
/// Contract:
/// - `append` writes all entries of one call, the producer states and the trims given with
///   them, atomically and durably: when it returns `Ok`, every entry survives a crash or power
///   loss; when it returns `Err`, any subset may have survived (the caller must not acknowledge
///   any of them and must stop writing: poison). `load_producers` returns the latest state
///   written for each producer.
/// - A trim deletes a prefix of its partition, and `first_kept_offset` returns where the
///   partition starts after the last durable trim (0 if it was never trimmed). A trim never
///   moves a partition's start back, and the caller never trims a partition's last record,
///   so `next_offset` and `max_seq` stay exact.
/// - Offsets within a partition are dense and increasing; the caller assigns them and never
///   reuses one. The log does not reorder. Each entry keeps the global sequence number the
///   caller gave it (strictly increasing in append order across the whole log).
/// - `read` returns entries in offset order, starting at `from_offset`, stopping before
///   `records_max` entries or once `bytes_max` is reached (always at least one entry if any
///   exists, so one large record cannot stall a partition). A read from below the
///   partition's first kept offset is refused with [`StoreError::Trimmed`]; any other gap in
///   the offsets is corruption.
/// - `next_offset` is one past the last durable entry of a partition (0 when empty), and
///   `max_seq` the largest sequence number of any durable entry of any depot; both are only
///   called while no append is in flight (at open).
pub trait DepotLog: Send + Sync {
    /// Durably appends `entries`, with `producers`' new states, the deletion of the
    /// `expired_producers`' states and the `trims`, as one atomic group.
    fn append(
        &self,
        entries: &[DepotEntry<'_>],
        producers: &[ProducerState],
        expired_producers: &[u64],
        trims: &[DepotTrim],
    ) -> Result<(), StoreError>;
    /// Every producer's last written state.
    fn load_producers(&self) -> Result<Vec<ProducerState>, StoreError>;
    /// Reads a partition from `from_offset`.
    fn read(
        &self,
        depot_id: u32,
        partition: u32,
        from_offset: u64,
        records_max: usize,
        bytes_max: usize,
    ) -> Result<Vec<DepotRecord>, StoreError>;
    /// One past the last durable offset of a partition.
    fn next_offset(&self, depot_id: u32, partition: u32) -> Result<u64, StoreError>;
    /// The first offset of a partition that is still stored (0 if it was never trimmed).
    fn first_kept_offset(&self, depot_id: u32, partition: u32) -> Result<u64, StoreError>;
    /// The largest sequence number in the whole log (`None` when it is empty).
    fn max_seq(&self) -> Result<Option<u64>, StoreError>;
}

/// Where a topology has consumed a depot partition up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConsumedOffset {
    /// Catalog id of the depot.
    pub depot_id: u32,
    /// Partition within the depot.
    pub partition: u32,
    /// The first offset not yet consumed.
    pub next_offset: u64,
}

/// What a topology has committed: the last batch id and every consumed position.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRecord {
    /// Id of the last committed batch; 0 before the first.
    pub batch_id: u64,
    /// Sorted by (depot, partition); one entry for every partition the topology consumes.
    pub offsets: Vec<ConsumedOffset>,
}

/// The final state of every key a batch wrote on one partition: `None` is a delete.
///
/// A batch looks a key up in its own write set, and in the previous batch's while that one
/// commits, before every read of the store, so point lookups go through a hash index. Scans
/// merge the write set's range with the store's, and the commit writes in key order, so the
/// keys are also kept in order: one ordered index per PState (per group of keys sharing their
/// first 4 bytes, the PState id of the layout), built the first time a scan or an
/// iteration needs it and kept up to date after that. Most PStates a batch writes (outcomes,
/// maps) are never scanned within it, so their keys are put in order once, by the commit,
/// instead of one insert at a time by the batch. Iteration is always in key order: the hash
/// index never decides an order (it is seeded per process); it is walked only to gather a
/// group's keys into its ordered index, and by [`iter_unordered`](Self::iter_unordered).
#[derive(Clone, Default)]
pub struct WriteSet {
    values: HashMap<Arc<[u8]>, Option<Vec<u8>>, ahash::RandomState>,
    /// Group prefix (a key's first `ORDER_GROUP_BYTES` bytes, or the whole of a shorter key)
    /// → the group's keys in order, once built. Groups partition the keys, and compare as
    /// their keys do: every key of a group is below every key of a later group.
    orders: BTreeMap<Box<[u8]>, GroupOrder>,
}

/// One group's keys in order, built when first needed.
type GroupOrder = OnceLock<BTreeSet<Arc<[u8]>>>;

/// Bytes of the prefix that groups a write set's keys for ordering: the PState id of the
/// layout (`crate::layout`).
const ORDER_GROUP_BYTES: usize = 4;

fn order_group(key: &[u8]) -> &[u8] {
    &key[..key.len().min(ORDER_GROUP_BYTES)]
}

impl WriteSet {
    /// An empty write set.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty write set with room for `keys` keys before its hash index grows.
    pub fn with_capacity(keys: usize) -> Self {
        Self {
            values: HashMap::with_capacity_and_hasher(keys, ahash::RandomState::new()),
            orders: BTreeMap::new(),
        }
    }

    /// Keys written.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// What was written under `key`: `Some(None)` for a delete, `None` if nothing was.
    pub fn get(&self, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        self.values.get(key)
    }

    /// Whether `key` was written (or deleted).
    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.values.contains_key(key)
    }

    /// Records that `key` ends the batch as `value` (`None`: deleted), replacing an earlier write.
    pub fn insert(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        // One probe of the hash index whether the key is new or not.
        let entry = match self.values.entry_ref(key.as_slice()) {
            EntryRef::Occupied(mut slot) => {
                slot.insert(value);
                return;
            }
            EntryRef::Vacant(slot) => slot.insert_entry(value),
        };
        // The new key is cloned (an atomic increment, which showed up as a tenth of the
        // driver's time when done for every key) only when its group's order is built and
        // must hold it too.
        let key = entry.key();
        match self.orders.get_mut(order_group(key)) {
            // Built already: keep it up to date. Not built: it will find the key when built.
            Some(order) => {
                if let Some(order) = order.get_mut() {
                    order.insert(Arc::clone(key));
                }
            }
            None => {
                self.orders.insert(order_group(key).into(), OnceLock::new());
            }
        }
    }

    /// The keys of the group `group` in order, building the index if it is not built yet.
    fn order<'s>(&'s self, group: &[u8], order: &'s GroupOrder) -> &'s BTreeSet<Arc<[u8]>> {
        order.get_or_init(|| {
            self.values
                .keys()
                .filter(|key| order_group(key) == group)
                .cloned()
                .collect()
        })
    }

    /// Builds every group's index not built yet, in one pass over the keys.
    fn build_orders(&self) {
        if self.orders.values().all(|order| order.get().is_some()) {
            return;
        }
        // Gathered unordered, then collected: collecting sorts the keys once and builds the
        // `BTreeSet` from the sorted run in one pass, where inserting a commit's thousands of
        // keys one at a time searched the tree for each (a seventh of the committer's time).
        let mut unbuilt: BTreeMap<&[u8], Vec<Arc<[u8]>>> = BTreeMap::new();
        for key in self.values.keys() {
            let group = order_group(key);
            if self
                .orders
                .get(group)
                .is_some_and(|order| order.get().is_none())
            {
                unbuilt.entry(group).or_default().push(Arc::clone(key));
            }
        }
        for (group, keys) in unbuilt {
            if let Some(order) = self.orders.get(group) {
                // Another thread may have built it meanwhile, from the same keys.
                let _ = order.set(keys.into_iter().collect());
            }
        }
    }

    /// Every write, in key order.
    pub fn iter(&self) -> WriteSetIter<'_> {
        self.build_orders();
        WriteSetIter {
            set: self,
            groups: self.orders.iter(),
            keys: None,
        }
    }

    /// Every write, in no particular order (the hash index's, seeded per process): for checks
    /// and sums that do not depend on order, which then need no ordered index. Never for
    /// anything whose output depends on order.
    pub fn iter_unordered(&self) -> impl Iterator<Item = (&[u8], &Option<Vec<u8>>)> + '_ {
        self.values.iter().map(|(key, value)| (&key[..], value))
    }

    /// The written keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.iter().map(|(key, _)| key)
    }

    /// The writes with `from <= key < to`, in key order.
    pub fn range<'s>(
        &'s self,
        from: &[u8],
        to: &[u8],
    ) -> impl Iterator<Item = (&'s [u8], &'s Option<Vec<u8>>)> + 's {
        let mut ranges = Vec::new();
        if from < to {
            // A group's keys are all at or above the group, so groups from `to` on are out;
            // and all below `from` exactly when the group is below `from`'s group.
            for (group, order) in self
                .orders
                .range::<[u8], _>((Bound::Included(order_group(from)), Bound::Excluded(to)))
            {
                ranges.push(
                    self.order(group, order)
                        .range::<[u8], _>((Bound::Included(from), Bound::Excluded(to))),
                );
            }
        }
        ranges.into_iter().flatten().map(move |key| self.entry(key))
    }

    fn entry<'s>(&'s self, key: &'s Arc<[u8]>) -> (&'s [u8], &'s Option<Vec<u8>>) {
        // `orders` and `values` hold the same keys: `insert` is the only way in.
        let value = self.values.get(&key[..]);
        debug_assert!(value.is_some(), "write set indexes disagree");
        (&key[..], value.unwrap_or(&None))
    }
}

/// The writes of a [`WriteSet`], in key order.
#[derive(Debug)]
pub struct WriteSetIter<'a> {
    set: &'a WriteSet,
    groups: std::collections::btree_map::Iter<'a, Box<[u8]>, GroupOrder>,
    keys: Option<std::collections::btree_set::Iter<'a, Arc<[u8]>>>,
}

impl<'a> Iterator for WriteSetIter<'a> {
    type Item = (&'a [u8], &'a Option<Vec<u8>>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(key) = self.keys.as_mut().and_then(Iterator::next) {
                return Some(self.set.entry(key));
            }
            let (group, order) = self.groups.next()?;
            self.keys = Some(self.set.order(group, order).iter());
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.set.len()))
    }
}

impl<'a> IntoIterator for &'a WriteSet {
    type Item = (&'a [u8], &'a Option<Vec<u8>>);
    type IntoIter = WriteSetIter<'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl PartialEq for WriteSet {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for WriteSet {}

impl std::fmt::Debug for WriteSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<const N: usize> From<[(Vec<u8>, Option<Vec<u8>>); N]> for WriteSet {
    fn from(writes: [(Vec<u8>, Option<Vec<u8>>); N]) -> Self {
        writes.into_iter().collect()
    }
}

impl FromIterator<(Vec<u8>, Option<Vec<u8>>)> for WriteSet {
    fn from_iter<I: IntoIterator<Item = (Vec<u8>, Option<Vec<u8>>)>>(iter: I) -> Self {
        let mut writes = Self::new();
        for (key, value) in iter {
            writes.insert(key, value);
        }
        writes
    }
}

/// Everything one batch commits.
#[derive(Debug, Clone, Copy)]
pub struct BatchCommit<'a> {
    /// Catalog id of the topology.
    pub topology_id: u32,
    /// The new commit record (its `batch_id` is the previous one plus one).
    pub record: &'a CommitRecord,
    /// One write set per partition, disjoint by construction (each key has one owner).
    pub writes: &'a [WriteSet],
    /// `[start, end)` key ranges of state to delete with the batch, after its writes: the
    /// outcomes of depot records retention has trimmed (every one of them committed earlier;
    /// an outcome a handler records now for a record in a range is deleted too).
    pub deleted_ranges: &'a [(Vec<u8>, Vec<u8>)],
}

/// The commit point.
///
/// Contract:
/// - `commit` makes the writes and the commit record durable and visible **atomically**: after a
///   crash at any moment, either all of them are there or none is; readers never observe a
///   subset. When it returns `Ok` they are durable; on `Err` the outcome is unknown and the
///   caller must poison.
/// - `load_commit` returns the last record committed for the topology (`None` before the first).
pub trait CommitStore: Send + Sync {
    /// Atomically and durably commits a batch.
    fn commit(&self, commit: BatchCommit<'_>) -> Result<(), StoreError>;
    /// The last committed record of a topology.
    fn load_commit(&self, topology_id: u32) -> Result<Option<CommitRecord>, StoreError>;
}

/// Committed state with the writes of batches that executed but have not committed yet laid
/// over it: what the next batch of the same topology must read, so that it can execute while
/// the previous one's synced write is in flight.
///
/// `pending` holds one write set per partition, as a batch produces them. Reads look a key up
/// in the set of the partition its `[pstate id][partition]` prefix names; if some set holds a
/// key of another partition (the engine never writes one), every set is searched instead.
pub struct Overlaid<'a> {
    base: &'a dyn StateRead,
    pending: &'a [WriteSet],
    keys_in_own_partition: bool,
}

impl<'a> Overlaid<'a> {
    /// `pending` over `base`; checks once where `pending`'s keys sit.
    pub fn new(base: &'a dyn StateRead, pending: &'a [WriteSet]) -> Self {
        let keys_in_own_partition = pending.iter().enumerate().all(|(partition, writes)| {
            writes
                .iter_unordered()
                .all(|(key, _)| key_partition(key) == Some(partition as u32))
        });
        Self {
            base,
            pending,
            keys_in_own_partition,
        }
    }

    /// The pending sets that can hold keys in `[from, to)`. When every set holds only its own
    /// partition's keys and both bounds name the same PState, a key between them names a
    /// partition between theirs, so only those sets are searched: a scan of one partition
    /// looks at one set, not at all of them.
    fn pending_for_range(&self, from: &[u8], to: &[u8]) -> &[WriteSet] {
        if !self.keys_in_own_partition || key_pstate_id(from) != key_pstate_id(to) {
            return self.pending;
        }
        let (Some(first), Some(last)) = (key_partition(from), key_partition(to)) else {
            return self.pending;
        };
        let (first, last) = (first as usize, last as usize);
        if first > last || first >= self.pending.len() {
            return &[];
        }
        &self.pending[first..=last.min(self.pending.len() - 1)]
    }

    fn pending_get(&self, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        if self.keys_in_own_partition {
            let partition = key_partition(key)? as usize;
            self.pending.get(partition)?.get(key)
        } else {
            self.pending.iter().find_map(|writes| writes.get(key))
        }
    }
}

impl std::fmt::Debug for Overlaid<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overlaid")
            .field(
                "pending_writes",
                &self.pending.iter().map(WriteSet::len).sum::<usize>(),
            )
            .field("keys_in_own_partition", &self.keys_in_own_partition)
            .finish_non_exhaustive()
    }
}

impl StateRead for Overlaid<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.pending_get(key) {
            Some(written) => Ok(written.clone()),
            None => self.base.get(key),
        }
    }

    fn get_with(&self, key: &[u8], visit: &mut dyn FnMut(Option<&[u8]>)) -> Result<(), StoreError> {
        match self.pending_get(key) {
            Some(written) => {
                visit(written.as_deref());
                Ok(())
            }
            None => self.base.get_with(key, visit),
        }
    }

    fn scan(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError> {
        if from >= to {
            return Ok(Vec::new());
        }
        let sets = self.pending_for_range(from, to);
        let mut touched = sets
            .iter()
            .filter(|writes| writes.range(from, to).next().is_some());
        match (touched.next(), touched.next()) {
            (None, _) => self.base.scan(from, to, limit),
            // The usual case, a scan within one partition: that partition's set as it is.
            (Some(writes), None) => crate::ctx::scan_merged(self.base, writes, from, to, limit),
            (Some(_), Some(_)) => {
                // Write sets are disjoint, so their entries in the range merge into one set.
                let mut in_range = WriteSet::new();
                for writes in sets {
                    for (key, value) in writes.range(from, to) {
                        in_range.insert(key.to_vec(), value.clone());
                    }
                }
                crate::ctx::scan_merged(self.base, &in_range, from, to, limit)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::layout::entry_key;
    use proptest::prelude::*;

    #[test]
    fn producer_states_decode_in_both_layouts_and_nothing_else() {
        let state = ProducerState {
            producer: 7,
            sequence: 3,
            ids: vec![RecordId {
                depot_id: 1,
                partition: 2,
                offset: 9,
            }],
            digest: 0xabc,
            last_append_unix_ms: 1_700_000_000_000,
        };
        let current = crate::encode_envelope(&state, usize::MAX).expect("encode");
        assert_eq!(decode_producer_state(&current).expect("current"), state);

        #[derive(Serialize)]
        struct V1<'a> {
            producer: u64,
            sequence: u64,
            ids: &'a [RecordId],
            digest: u64,
        }
        let v1 = crate::encode_envelope(
            &V1 {
                producer: state.producer,
                sequence: state.sequence,
                ids: &state.ids,
                digest: state.digest,
            },
            usize::MAX,
        )
        .expect("encode");
        let undated = ProducerState {
            last_append_unix_ms: 0,
            ..state.clone()
        };
        assert_eq!(decode_producer_state(&v1).expect("format 1"), undated);

        // Other bytes are neither layout.
        let other = crate::encode_envelope(&(1u64, 2u64, 3u8), usize::MAX).expect("encode");
        assert!(decode_producer_state(&other).is_err());
        assert!(decode_producer_state(&current[..current.len() - 1]).is_err());
    }

    struct Committed(BTreeMap<Vec<u8>, Vec<u8>>);

    impl StateRead for Committed {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(self.0.get(key).cloned())
        }

        fn scan(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError> {
            if from >= to {
                return Ok(Vec::new());
            }
            Ok(self
                .0
                .range::<[u8], _>((
                    std::ops::Bound::Included(from),
                    std::ops::Bound::Excluded(to),
                ))
                .take(limit)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect())
        }
    }

    const PARTITIONS: u32 = 3;

    fn key(pstate: u32, partition: u32, k: u8) -> Vec<u8> {
        entry_key(pstate, partition, &[k])
    }

    fn entry() -> impl Strategy<Value = (u32, u32, u8)> {
        (0u32..2, 0..PARTITIONS, 0u8..12)
    }

    /// A key to read or bound a scan with: also naming partitions past the last one, and cut
    /// short (too short to name a partition, or a PState) now and then.
    fn probe() -> impl Strategy<Value = Vec<u8>> {
        (
            0u32..2,
            0..PARTITIONS + 2,
            0u8..12,
            prop::option::weighted(0.2, 0usize..9),
        )
            .prop_map(|(s, p, k, cut)| {
                let mut bytes = key(s, p, k);
                if let Some(cut) = cut {
                    bytes.truncate(cut);
                }
                bytes
            })
    }

    /// The model's entries with `a <= key < b`, as a write set's range lists them.
    fn model_range<'m>(
        model: &'m BTreeMap<Vec<u8>, Option<Vec<u8>>>,
        a: &[u8],
        b: &[u8],
    ) -> Vec<(&'m [u8], &'m Option<Vec<u8>>)> {
        if a >= b {
            return Vec::new();
        }
        model
            .range::<[u8], _>((std::ops::Bound::Included(a), std::ops::Bound::Excluded(b)))
            .map(|(k, v)| (k.as_slice(), v))
            .collect()
    }

    proptest! {
        /// A write set answers like an ordered map of its last writes: lookups, order, ranges.
        /// Keys run from empty to past the ordering group's prefix, over a small alphabet, so
        /// groups hold one key (short keys) or many, and ranges start and end inside groups,
        /// between them and across several; ranges are asked before, between and after the
        /// writes, so that the order indexes are built early, late and in between.
        #[test]
        fn write_set_behaves_like_an_ordered_map(
            writes in prop::collection::vec(
                (prop::collection::vec(0u8..3, 0..7), prop::option::of(any::<u8>())),
                0..60,
            ),
            probes in prop::collection::vec(
                (prop::collection::vec(0u8..3, 0..7), prop::collection::vec(0u8..3, 0..7)),
                1..10,
            ),
            probe_every in 1usize..20,
        ) {
            let mut set = WriteSet::new();
            let mut model: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
            // A copy taken halfway, with some indexes built and some not, must stay as it was
            // while the original takes more writes.
            let halfway = writes.len() / 2;
            let mut copy = None;
            for (i, (key, value)) in writes.into_iter().enumerate() {
                if i == halfway {
                    copy = Some((set.clone(), model.clone()));
                }
                let value = value.map(|v| vec![v]);
                set.insert(key.clone(), value.clone());
                model.insert(key, value);
                if i % probe_every == 0 {
                    let (a, b) = &probes[i % probes.len()];
                    prop_assert_eq!(set.range(a, b).collect::<Vec<_>>(), model_range(&model, a, b));
                }
                if i % (2 * probe_every) == 1 {
                    prop_assert!(set.iter().eq(model.iter().map(|(k, v)| (k.as_slice(), v))));
                }
            }
            if let Some((copy, model_then)) = copy {
                prop_assert!(copy.iter().eq(model_then.iter().map(|(k, v)| (k.as_slice(), v))));
            }
            prop_assert_eq!(set.len(), model.len());
            prop_assert!(set
                .iter()
                .eq(model.iter().map(|(k, v)| (k.as_slice(), v))));
            prop_assert_eq!(set.clone(), model.clone().into_iter().collect::<WriteSet>());
            for (a, b) in probes {
                prop_assert_eq!(set.get(&a), model.get(&a));
                prop_assert_eq!(set.contains_key(&a), model.contains_key(&a));
                prop_assert_eq!(set.range(&a, &b).collect::<Vec<_>>(), model_range(&model, &a, &b));
            }
        }

        /// Reads through the overlay equal reads of the state with the pending writes applied.
        #[test]
        fn overlaid_reads_equal_the_state_after_the_pending_writes(
            committed in prop::collection::vec((entry(), any::<u8>()), 0..30),
            pending in prop::collection::vec((entry(), prop::option::of(any::<u8>())), 0..30),
            misplaced in any::<bool>(),
            probes in prop::collection::vec((probe(), probe(), 0usize..8), 1..10),
        ) {
            let committed: BTreeMap<Vec<u8>, Vec<u8>> = committed
                .into_iter()
                .map(|((s, p, k), v)| (key(s, p, k), vec![v]))
                .collect();
            let mut sets = vec![WriteSet::new(); PARTITIONS as usize];
            let mut after = committed.clone();
            for (i, ((s, p, k), v)) in pending.into_iter().enumerate() {
                let key = key(s, p, k);
                if sets.iter().any(|set| set.contains_key(&key)) {
                    continue; // write sets are disjoint
                }
                // The engine never files a key under another partition's set; the overlay
                // must stay right if it did.
                let set = if misplaced && i % 5 == 0 { (p + 1) % PARTITIONS } else { p };
                let value = v.map(|v| vec![v, 1]);
                match &value {
                    Some(bytes) => after.insert(key.clone(), bytes.clone()),
                    None => after.remove(&key),
                };
                sets[set as usize].insert(key, value);
            }
            let base = Committed(committed);
            let overlaid = Overlaid::new(&base, &sets);
            let expected = Committed(after);
            for (a, b, limit) in probes {
                prop_assert_eq!(overlaid.get(&a).expect("get"), expected.get(&a).expect("get"));
                let mut lent = None;
                overlaid
                    .get_with(&a, &mut |value| lent = Some(value.map(<[u8]>::to_vec)))
                    .expect("get_with");
                prop_assert_eq!(lent, Some(expected.get(&a).expect("get")));
                prop_assert_eq!(
                    overlaid.scan(&a, &b, limit).expect("scan"),
                    expected.scan(&a, &b, limit).expect("scan")
                );
            }
        }
    }
}

//! What a handler sees: its partition's PStates (committed state plus this batch's own writes),
//! an outbox to other partitions, and the outcome table.

use std::ops::Bound;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{decode_envelope, encode_envelope, CodecError};
use crate::hash::partition_for_key_bytes;
use crate::keycodec::{decode_key, decode_key_prefix, encode_key, encode_key_into, KeyCodecError};
use crate::layout::{entry_key, partition_prefix, prefix_range, PARTITION_PREFIX_BYTES};
use crate::schema::{PState, PStateSpec, SetPState};
use crate::store::{Entry, StateRead, StoreError, WriteSet};
use crate::topology::RecordId;

/// Room reserved for a laid-out key (the 8-byte prefix and a short encoded key) or a bare
/// encoded key: either fits without growing the buffer.
const ENTRY_KEY_BYTES_GUESS: usize = 48;

/// Largest encoded PState value or outcome.
pub const VALUE_BYTES_MAX: usize = 16 << 20;

/// Why a handler failed. Any error aborts the whole batch: nothing of it is committed, and the
/// topology stops until the cause is fixed (an error is deterministic, so retrying the same
/// records would fail the same way). Expected conflicts are not errors: record them as outcomes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerError {
    /// A key did not encode.
    #[error("key does not encode: {0}")]
    Key(#[from] KeyCodecError),
    /// A value did not encode, or a stored value did not decode.
    #[error("value codec: {0}")]
    Codec(#[from] CodecError),
    /// Storage failed underneath a read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A depot record failed its checksum or did not decode as the depot's type.
    #[error("depot record does not decode: {0}")]
    RecordDecode(CodecError),
    /// The key lives on another partition; send a message there instead.
    #[error("pstate {pstate:?}: key belongs to partition {key_partition}, handler runs on partition {partition}")]
    WrongPartition {
        /// The PState.
        pstate: String,
        /// Where the key lives.
        key_partition: u32,
        /// Where the handler runs.
        partition: u32,
    },
    /// The PState belongs to another topology; only its owner writes (and reads in batch) it.
    #[error("pstate {pstate:?} belongs to topology {owner:?}, not {topology:?}")]
    ForeignPState {
        /// The PState.
        pstate: String,
        /// Its owner.
        owner: String,
        /// The topology that tried to use it.
        topology: String,
    },
    /// `record_outcome` in a message handler, which has no current record.
    #[error("no current record: use record_outcome_for with the record id carried in the message")]
    NoCurrentRecord,
    /// A message was sent but the topology has no message handler.
    #[error("message sent but the topology has no on_message handler")]
    NoMessageHandler,
    /// `send_to_partition` named a partition that does not exist.
    #[error("partition {partition} is out of range (topology has {partitions})")]
    PartitionOutOfRange {
        /// What was named.
        partition: u32,
        /// How many there are.
        partitions: u32,
    },
    /// The handler's own error.
    #[error("{0}")]
    User(String),
}

impl HandlerError {
    /// A handler-defined failure that should stop the topology.
    pub fn user(message: impl Into<String>) -> Self {
        Self::User(message.into())
    }
}

/// The committed state under this batch's writes.
pub(crate) struct View<'a> {
    pub(crate) base: &'a dyn StateRead,
    pub(crate) writes: &'a mut WriteSet,
}

impl View<'_> {
    /// Hands the value under `key` to `visit`, lent rather than copied where the write set or
    /// the store can lend it: most reads only decode the bytes, or only ask whether they exist.
    pub(crate) fn get_with(
        &self,
        key: &[u8],
        visit: &mut dyn FnMut(Option<&[u8]>),
    ) -> Result<(), StoreError> {
        match self.writes.get(key) {
            Some(written) => {
                visit(written.as_deref());
                Ok(())
            }
            None => self.base.get_with(key, visit),
        }
    }

    pub(crate) fn contains(&self, key: &[u8]) -> Result<bool, StoreError> {
        let mut found = false;
        self.get_with(key, &mut |value| found = value.is_some())?;
        Ok(found)
    }

    pub(crate) fn scan(
        &self,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        scan_merged(self.base, self.writes, from, to, limit)
    }
}

/// Merges committed entries with a write set: written keys win, deletes hide.
pub(crate) fn scan_merged(
    base: &dyn StateRead,
    writes: &WriteSet,
    from: &[u8],
    to: &[u8],
    limit: usize,
) -> Result<Vec<Entry>, StoreError> {
    if from >= to || limit == 0 {
        return Ok(Vec::new());
    }
    let written: Vec<(&[u8], &Option<Vec<u8>>)> = writes.range(from, to).collect();
    // Each delete can hide at most one committed entry, so this many committed entries are
    // always enough to produce `limit` results.
    let deletes = written.iter().filter(|(_, v)| v.is_none()).count();
    let committed = base.scan(from, to, limit.saturating_add(deletes))?;
    let mut out = Vec::with_capacity(limit.min(committed.len() + written.len()));
    let (mut c, mut w) = (
        committed.into_iter().peekable(),
        written.into_iter().peekable(),
    );
    while out.len() < limit {
        let take_written = match (c.peek(), w.peek()) {
            (None, None) => break,
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (Some((ck, _)), Some((wk, _))) => {
                if ck.as_slice() == *wk {
                    c.next(); // shadowed by the write
                    true
                } else {
                    *wk < ck.as_slice()
                }
            }
        };
        if take_written {
            if let Some((k, Some(v))) = w.next() {
                out.push((k.to_vec(), v.clone()));
            }
        } else if let Some(entry) = c.next() {
            out.push(entry);
        }
    }
    Ok(out)
}

/// A handler's access to its partition during a batch.
///
/// Reads see the committed state as of the previous batch plus everything this partition wrote
/// earlier in this batch. Writes are buffered and committed with the whole batch, atomically
/// across every partition, or not at all.
///
/// Contract: a handler reads and writes only keys its partition owns (the partition
/// [`PState::partition_of`] names); anything else is an error. To act on another partition's
/// keys, [`send`](Ctx::send) it a message: it is handled later in the same batch.
pub struct Ctx<'a, M> {
    pub(crate) topology: &'a Arc<str>,
    pub(crate) partition: u32,
    pub(crate) partitions: u32,
    pub(crate) batch_id: u64,
    pub(crate) record: Option<RecordId>,
    pub(crate) pstate_ids: &'a [u32],
    pub(crate) outcome_pstate_id: u32,
    pub(crate) view: View<'a>,
    pub(crate) outbox: &'a mut Vec<(u32, M)>,
    pub(crate) has_message_handler: bool,
}

impl<M> std::fmt::Debug for Ctx<'_, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("topology", &self.topology)
            .field("partition", &self.partition)
            .field("batch_id", &self.batch_id)
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

impl<M> Ctx<'_, M> {
    /// The partition this handler runs on.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// The topology's partition count.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The id the batch will commit under.
    pub fn batch_id(&self) -> u64 {
        self.batch_id
    }

    /// The depot record being handled; `None` in a message handler.
    pub fn record_id(&self) -> Option<RecordId> {
        self.record
    }

    fn pstate_id(&self, spec: &PStateSpec) -> Result<u32, HandlerError> {
        if spec.topology != *self.topology {
            return Err(HandlerError::ForeignPState {
                pstate: spec.name.clone(),
                owner: spec.topology.to_string(),
                topology: self.topology.to_string(),
            });
        }
        // The builder assigned `index` and the engine resolved one id per index.
        self.pstate_ids
            .get(spec.index)
            .copied()
            .ok_or_else(|| HandlerError::ForeignPState {
                pstate: spec.name.clone(),
                owner: spec.topology.to_string(),
                topology: self.topology.to_string(),
            })
    }

    /// The laid-out key of `key` in `spec` (`[pstate id][partition][encoded key]`, built in one
    /// buffer), after checking that this partition owns it.
    fn owned_entry_key<K: Serialize + ?Sized>(
        &self,
        spec: &PStateSpec,
        key: &K,
    ) -> Result<Vec<u8>, HandlerError> {
        let id = self.pstate_id(spec)?;
        let entry = laid_out_key(id, self.partition, key)?;
        let key_partition =
            partition_for_key_bytes(&entry[PARTITION_PREFIX_BYTES..], self.partitions);
        if key_partition != self.partition {
            return Err(HandlerError::WrongPartition {
                pstate: spec.name.clone(),
                key_partition,
                partition: self.partition,
            });
        }
        Ok(entry)
    }

    /// The value under `key`, if any.
    pub fn get<K, V>(&self, pstate: &PState<K, V>, key: &K) -> Result<Option<V>, HandlerError>
    where
        K: Serialize,
        V: DeserializeOwned,
    {
        let entry = self.owned_entry_key(pstate.spec(), key)?;
        let mut decoded = None;
        self.view.get_with(&entry, &mut |bytes| {
            decoded = bytes.map(decode_envelope::<V>)
        })?;
        Ok(decoded.transpose()?)
    }

    /// Whether `key` has a value, without decoding it: for a handler that only asks whether
    /// something exists, it saves [`get`](Self::get)'s decoding (and its allocations). A value
    /// that would not decode still counts as there.
    pub fn contains<K, V>(&self, pstate: &PState<K, V>, key: &K) -> Result<bool, HandlerError>
    where
        K: Serialize,
    {
        let entry = self.owned_entry_key(pstate.spec(), key)?;
        Ok(self.view.contains(&entry)?)
    }

    /// Sets `key` to `value`.
    pub fn put<K, V>(
        &mut self,
        pstate: &PState<K, V>,
        key: &K,
        value: &V,
    ) -> Result<(), HandlerError>
    where
        K: Serialize,
        V: Serialize,
    {
        let entry = self.owned_entry_key(pstate.spec(), key)?;
        let bytes = encode_envelope(value, VALUE_BYTES_MAX)?;
        self.view.writes.insert(entry, Some(bytes));
        Ok(())
    }

    /// Removes `key` (a no-op if it is absent).
    pub fn delete<K, V>(&mut self, pstate: &PState<K, V>, key: &K) -> Result<(), HandlerError>
    where
        K: Serialize,
    {
        let entry = self.owned_entry_key(pstate.spec(), key)?;
        self.view.writes.insert(entry, None);
        Ok(())
    }

    /// Up to `limit` entries of this partition with keys in `(from, to)`, ascending.
    pub fn range<K, V>(
        &self,
        pstate: &PState<K, V>,
        from: Bound<&K>,
        to: Bound<&K>,
        limit: usize,
    ) -> Result<Vec<(K, V)>, HandlerError>
    where
        K: Serialize + DeserializeOwned,
        V: DeserializeOwned,
    {
        let id = self.pstate_id(pstate.spec())?;
        let (start, end) = key_range(id, self.partition, from, to)?;
        let entries = self.view.scan(&start, &end, limit)?;
        decode_map_entries(&entries)
    }

    /// Up to `limit` entries of this partition whose keys start with the tuple elements
    /// `prefix` (e.g. `&("tenant-1",)` or `&"tenant-1"` for `(String, u64)` keys), ascending.
    pub fn prefix<K, V, P>(
        &self,
        pstate: &PState<K, V>,
        prefix: &P,
        limit: usize,
    ) -> Result<Vec<(K, V)>, HandlerError>
    where
        K: DeserializeOwned,
        V: DeserializeOwned,
        P: Serialize + ?Sized,
    {
        let id = self.pstate_id(pstate.spec())?;
        let (start, end) = prefix_key_range(id, self.partition, prefix)?;
        let entries = self.view.scan(&start, &end, limit)?;
        decode_map_entries(&entries)
    }

    /// Adds `element` to the set under `key`; `true` if it was not there. Writes one entry
    /// whatever the size of the set. Reads the store to answer; [`set_put`](Self::set_put)
    /// writes without reading.
    pub fn set_insert<K, E>(
        &mut self,
        pstate: &SetPState<K, E>,
        key: &K,
        element: &E,
    ) -> Result<bool, HandlerError>
    where
        K: Serialize,
        E: Serialize,
    {
        let entry = self.set_entry(pstate, key, element)?;
        let fresh = !self.view.contains(&entry)?;
        if fresh {
            self.view.writes.insert(entry, Some(Vec::new()));
        }
        Ok(fresh)
    }

    /// Removes `element` from the set under `key`; `true` if it was there. Reads the store to
    /// answer; [`set_delete`](Self::set_delete) writes without reading.
    pub fn set_remove<K, E>(
        &mut self,
        pstate: &SetPState<K, E>,
        key: &K,
        element: &E,
    ) -> Result<bool, HandlerError>
    where
        K: Serialize,
        E: Serialize,
    {
        let entry = self.set_entry(pstate, key, element)?;
        let present = self.view.contains(&entry)?;
        if present {
            self.view.writes.insert(entry, None);
        }
        Ok(present)
    }

    /// Adds `element` to the set under `key` without reading whether it is there: the set
    /// counterpart of [`put`](Self::put). For a handler that knows the element is absent
    /// (or does not care), it saves [`set_insert`](Self::set_insert)'s read of the store.
    pub fn set_put<K, E>(
        &mut self,
        pstate: &SetPState<K, E>,
        key: &K,
        element: &E,
    ) -> Result<(), HandlerError>
    where
        K: Serialize,
        E: Serialize,
    {
        self.set_write_blind(pstate, key, element, true)
    }

    /// Removes `element` from the set under `key` without reading whether it is there: the
    /// set counterpart of [`delete`](Self::delete), which saves [`set_remove`](Self::set_remove)'s
    /// read of the store. An absent element stays absent, but the deletion is still written
    /// with the batch (and counted in its writes).
    pub fn set_delete<K, E>(
        &mut self,
        pstate: &SetPState<K, E>,
        key: &K,
        element: &E,
    ) -> Result<(), HandlerError>
    where
        K: Serialize,
        E: Serialize,
    {
        self.set_write_blind(pstate, key, element, false)
    }

    /// Writes `element`'s entry as present or absent, reading nothing.
    fn set_write_blind<K: Serialize, E: Serialize>(
        &mut self,
        pstate: &SetPState<K, E>,
        key: &K,
        element: &E,
        present: bool,
    ) -> Result<(), HandlerError> {
        let entry = self.set_entry(pstate, key, element)?;
        self.view.writes.insert(entry, present.then(Vec::new));
        Ok(())
    }

    /// Whether the set under `key` holds `element`.
    pub fn set_contains<K, E>(
        &self,
        pstate: &SetPState<K, E>,
        key: &K,
        element: &E,
    ) -> Result<bool, HandlerError>
    where
        K: Serialize,
        E: Serialize,
    {
        let entry = self.set_entry(pstate, key, element)?;
        Ok(self.view.contains(&entry)?)
    }

    /// Up to `limit` elements of the set under `key`, ascending, starting after `after`.
    pub fn set_members<K, E>(
        &self,
        pstate: &SetPState<K, E>,
        key: &K,
        after: Option<&E>,
        limit: usize,
    ) -> Result<Vec<E>, HandlerError>
    where
        K: Serialize,
        E: Serialize + DeserializeOwned,
    {
        let entry = self.owned_entry_key(pstate.spec(), key)?;
        let (start, end) = set_entry_range(&entry, after)?;
        let entries = self.view.scan(&start, &end, limit)?;
        decode_set_elements(&entries, entry.len())
    }

    /// Whether the set under `key` is empty. Reads at most one entry.
    pub fn set_is_empty<K, E>(
        &self,
        pstate: &SetPState<K, E>,
        key: &K,
    ) -> Result<bool, HandlerError>
    where
        K: Serialize,
        E: Serialize + DeserializeOwned,
    {
        Ok(self.set_members(pstate, key, None, 1)?.is_empty())
    }

    fn set_entry<K: Serialize, E: Serialize>(
        &self,
        pstate: &SetPState<K, E>,
        key: &K,
        element: &E,
    ) -> Result<Vec<u8>, HandlerError> {
        let mut entry = self.owned_entry_key(pstate.spec(), key)?;
        encode_key_into(element, &mut entry)?;
        Ok(entry)
    }

    /// Sends `message` to the partition that owns `key`; it is handled in the next round of
    /// this batch.
    pub fn send<K: Serialize + ?Sized>(&mut self, key: &K, message: M) -> Result<(), HandlerError> {
        let mut encoded = Vec::with_capacity(ENTRY_KEY_BYTES_GUESS);
        encode_key_into(key, &mut encoded)?;
        let partition = partition_for_key_bytes(&encoded, self.partitions);
        self.send_to_partition(partition, message)
    }

    /// Sends `message` to `partition`; it is handled in the next round of this batch.
    pub fn send_to_partition(&mut self, partition: u32, message: M) -> Result<(), HandlerError> {
        if !self.has_message_handler {
            return Err(HandlerError::NoMessageHandler);
        }
        if partition >= self.partitions {
            return Err(HandlerError::PartitionOutOfRange {
                partition,
                partitions: self.partitions,
            });
        }
        self.outbox.push((partition, message));
        Ok(())
    }

    /// Records what the current depot record led to, committed with the batch; clients read it
    /// back by the record's id. A later call for the same record replaces the earlier one.
    pub fn record_outcome<O: Serialize>(&mut self, outcome: &O) -> Result<(), HandlerError> {
        let record = self.record.ok_or(HandlerError::NoCurrentRecord)?;
        self.record_outcome_for(record, outcome)
    }

    /// Records the outcome of `record`, which must have been read on this partition (carry its
    /// id in the messages of a multi-hop command, and record the outcome back home).
    pub fn record_outcome_for<O: Serialize>(
        &mut self,
        record: RecordId,
        outcome: &O,
    ) -> Result<(), HandlerError> {
        if record.partition != self.partition {
            return Err(HandlerError::WrongPartition {
                pstate: "$outcomes".to_string(),
                key_partition: record.partition,
                partition: self.partition,
            });
        }
        let key = outcome_key(self.outcome_pstate_id, record)?;
        let bytes = encode_envelope(&(self.batch_id, outcome), VALUE_BYTES_MAX)?;
        self.view.writes.insert(key, Some(bytes));
        Ok(())
    }
}

/// The laid-out key of a record's outcome.
pub fn outcome_key(outcome_pstate_id: u32, record: RecordId) -> Result<Vec<u8>, KeyCodecError> {
    laid_out_key(
        outcome_pstate_id,
        record.partition,
        &(record.depot_id, record.offset),
    )
}

/// `[pstate id][partition][encoded key]`, encoded straight into one buffer (what
/// [`entry_key`] lays out from a key encoded apart).
fn laid_out_key<K: Serialize + ?Sized>(
    pstate_id: u32,
    partition: u32,
    key: &K,
) -> Result<Vec<u8>, KeyCodecError> {
    let mut laid_out = Vec::with_capacity(ENTRY_KEY_BYTES_GUESS);
    laid_out.extend_from_slice(&partition_prefix(pstate_id, partition));
    encode_key_into(key, &mut laid_out)?;
    Ok(laid_out)
}

/// `[start, end)` of a map PState partition restricted to keys in `(from, to)`.
pub fn key_range<K: Serialize>(
    pstate_id: u32,
    partition: u32,
    from: Bound<&K>,
    to: Bound<&K>,
) -> Result<(Vec<u8>, Vec<u8>), KeyCodecError> {
    let (partition_start, partition_end) = prefix_range(&partition_prefix(pstate_id, partition));
    let start = match from {
        Bound::Unbounded => partition_start,
        Bound::Included(k) => entry_key(pstate_id, partition, &encode_key(k)?),
        Bound::Excluded(k) => {
            // Keys are prefix-free, so the next key after `k` starts after `k ++ 0x00...`:
            // appending a zero byte is the smallest string greater than `k`.
            let mut key = entry_key(pstate_id, partition, &encode_key(k)?);
            key.push(0);
            key
        }
    };
    let end = match to {
        Bound::Unbounded => partition_end,
        Bound::Excluded(k) => entry_key(pstate_id, partition, &encode_key(k)?),
        Bound::Included(k) => {
            let mut key = entry_key(pstate_id, partition, &encode_key(k)?);
            key.push(0);
            key
        }
    };
    Ok((start, end))
}

/// `[start, end)` of the entries of one partition whose keys start with `prefix`'s encoding.
/// The key codec concatenates tuple elements, so a prefix of a tuple key's elements is a byte
/// prefix of its encoding.
pub fn prefix_key_range<P: Serialize + ?Sized>(
    pstate_id: u32,
    partition: u32,
    prefix: &P,
) -> Result<(Vec<u8>, Vec<u8>), KeyCodecError> {
    Ok(prefix_range(&entry_key(
        pstate_id,
        partition,
        &encode_key(prefix)?,
    )))
}

/// `[start, end)` of the elements of one set, starting after `after`.
pub fn set_range<E: Serialize>(
    pstate_id: u32,
    partition: u32,
    encoded_key: &[u8],
    after: Option<&E>,
) -> Result<(Vec<u8>, Vec<u8>), KeyCodecError> {
    set_entry_range(&entry_key(pstate_id, partition, encoded_key), after)
}

/// `[start, end)` of the elements after `after` of the set whose laid-out key is `set_key`.
fn set_entry_range<E: Serialize>(
    set_key: &[u8],
    after: Option<&E>,
) -> Result<(Vec<u8>, Vec<u8>), KeyCodecError> {
    let (set_start, set_end) = prefix_range(set_key);
    let start = match after {
        None => set_start,
        Some(element) => {
            let mut key = set_start;
            crate::keycodec::encode_key_into(element, &mut key)?;
            key.push(0);
            key
        }
    };
    Ok((start, set_end))
}

/// Decodes laid-out map entries into typed pairs.
pub fn decode_map_entries<K, V>(entries: &[Entry]) -> Result<Vec<(K, V)>, HandlerError>
where
    K: DeserializeOwned,
    V: DeserializeOwned,
{
    entries
        .iter()
        .map(|(key, value)| {
            let encoded = key.get(PARTITION_PREFIX_BYTES..).unwrap_or_default();
            Ok((decode_key(encoded)?, decode_envelope(value)?))
        })
        .collect()
}

/// Decodes laid-out set entries (whose key part is `key_bytes` long) into elements.
pub fn decode_set_elements<E: DeserializeOwned>(
    entries: &[Entry],
    key_bytes: usize,
) -> Result<Vec<E>, HandlerError> {
    entries
        .iter()
        .map(|(key, _)| {
            let encoded = key.get(key_bytes..).unwrap_or_default();
            Ok(decode_key(encoded)?)
        })
        .collect()
}

/// Splits a laid-out set entry into its key and element.
pub fn decode_set_entry<K, E>(entry_key: &[u8]) -> Result<(K, E), KeyCodecError>
where
    K: DeserializeOwned,
    E: DeserializeOwned,
{
    let encoded = entry_key.get(PARTITION_PREFIX_BYTES..).unwrap_or_default();
    let (key, used) = decode_key_prefix::<K>(encoded)?;
    let element = decode_key(&encoded[used..])?;
    Ok((key, element))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::topology::{NoMessages, TopologyBuilder};

    /// An empty store that counts the reads that reach it.
    #[derive(Default)]
    struct CountingEmpty {
        reads: AtomicUsize,
    }

    impl StateRead for CountingEmpty {
        fn get(&self, _key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            Ok(None)
        }

        fn scan(&self, _from: &[u8], _to: &[u8], _limit: usize) -> Result<Vec<Entry>, StoreError> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            Ok(Vec::new())
        }
    }

    /// The id the tests' one PState is resolved to.
    const PSTATE_ID: u32 = 7;

    /// A handler's context on partition 0 of 1, reading `store` under `writes`, with the
    /// topology's one PState resolved to [`PSTATE_ID`] (its outcomes to the next id).
    fn test_ctx<'a>(
        topology: &'a Arc<str>,
        store: &'a dyn StateRead,
        writes: &'a mut WriteSet,
        outbox: &'a mut Vec<(u32, NoMessages)>,
    ) -> Ctx<'a, NoMessages> {
        Ctx {
            topology,
            partition: 0,
            partitions: 1,
            batch_id: 1,
            record: None,
            pstate_ids: &[PSTATE_ID],
            outcome_pstate_id: PSTATE_ID + 1,
            view: View {
                base: store,
                writes,
            },
            outbox,
            has_message_handler: false,
        }
    }

    /// `set_put` and `set_delete` write without asking the store anything, while
    /// `set_insert` reads (the count of store reads tells them apart, which the final
    /// contents cannot: both kinds leave a set in the same state).
    #[test]
    fn blind_set_writes_read_nothing_and_reporting_ones_read() {
        let mut builder = TopologyBuilder::<NoMessages>::new("t", 1);
        let set = builder.set_pstate::<u32, u32>("children");
        let store = CountingEmpty::default();
        let mut writes = WriteSet::new();
        let mut outbox = Vec::new();
        let topology: Arc<str> = Arc::from("t");
        let mut ctx = test_ctx(&topology, &store, &mut writes, &mut outbox);
        ctx.set_put(&set, &1, &2).expect("put");
        ctx.set_delete(&set, &1, &3).expect("delete");
        assert_eq!(store.reads.load(Ordering::Relaxed), 0);
        assert!(ctx.set_insert(&set, &1, &4).expect("insert"));
        assert_eq!(store.reads.load(Ordering::Relaxed), 1);
        // The blind writes are in the batch's write set, where later reads find them.
        assert!(ctx.set_contains(&set, &1, &2).expect("contains"));
        assert!(!ctx.set_contains(&set, &1, &3).expect("contains"));
        assert_eq!(store.reads.load(Ordering::Relaxed), 1);
        assert_eq!(writes.len(), 3);
    }

    /// A store holding one entry, whose bytes are no value's envelope.
    struct OneUndecodable {
        key: Vec<u8>,
    }

    impl StateRead for OneUndecodable {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            Ok((key == self.key.as_slice()).then(|| vec![0xff; 3]))
        }

        fn scan(&self, _from: &[u8], _to: &[u8], _limit: usize) -> Result<Vec<Entry>, StoreError> {
            Ok(Vec::new())
        }
    }

    /// `contains` answers from the entry's presence alone (it never decodes: the stored bytes
    /// here would not), and sees the batch's own puts and deletes over the store.
    #[test]
    fn contains_sees_presence_without_decoding() {
        let mut builder = TopologyBuilder::<NoMessages>::new("t", 1);
        let map = builder.pstate::<u32, String>("names");
        let store = OneUndecodable {
            key: entry_key(PSTATE_ID, 0, &encode_key(&1u32).expect("encode")),
        };
        let mut writes = WriteSet::new();
        let mut outbox = Vec::new();
        let topology: Arc<str> = Arc::from("t");
        let mut ctx = test_ctx(&topology, &store, &mut writes, &mut outbox);
        assert!(
            ctx.get(&map, &1).is_err(),
            "the stored bytes must not decode"
        );
        assert!(ctx.contains(&map, &1).expect("contains"));
        assert!(!ctx.contains(&map, &2).expect("contains"));
        ctx.put(&map, &2, &"two".to_string()).expect("put");
        ctx.delete(&map, &1).expect("delete");
        assert!(ctx.contains(&map, &2).expect("contains"));
        assert!(!ctx.contains(&map, &1).expect("contains"));
    }

    /// An outcome is stored as an entry of a map keyed by `(depot id, offset)` on the record's
    /// partition: the layout that readers and retention's range deletions assume.
    #[test]
    fn outcome_keys_are_map_entries_keyed_by_depot_and_offset() {
        let record = RecordId {
            depot_id: 3,
            partition: 5,
            offset: 1 << 40,
        };
        let encoded = encode_key(&(3u32, 1u64 << 40)).expect("encode");
        assert_eq!(
            outcome_key(9, record).expect("outcome key"),
            entry_key(9, 5, &encoded)
        );
    }
}

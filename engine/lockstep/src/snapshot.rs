//! Consistent reads: every call on one [`Snapshot`] sees the same committed batches, on every
//! partition.

use std::ops::Bound;

use lockstep_core::store::StateRead;
use lockstep_core::{
    decode_envelope, decode_map_entries, decode_set_elements, decode_set_entry, encode_key,
    key_range,
    layout::{entry_key, partition_prefix, prefix_range, PARTITION_PREFIX_BYTES},
    outcome_key, prefix_key_range, set_range, PState, RecordId, SetPState,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::engine::Shared;
use crate::error::Error;
use crate::store::SnapshotState;

/// What a topology recorded for one depot record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome<O> {
    /// The batch that recorded it.
    pub batch_id: u64,
    /// The recorded value.
    pub value: O,
}

/// A point-in-time view of everything committed: all partitions of every topology at one
/// batch each. Holding one pins the data it sees (RocksDB keeps it from compaction), so keep
/// snapshots short-lived.
pub struct Snapshot<'e> {
    shared: &'e Shared,
    state: SnapshotState<'e>,
}

impl std::fmt::Debug for Snapshot<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").finish_non_exhaustive()
    }
}

impl<'e> Snapshot<'e> {
    pub(crate) fn new(shared: &'e Shared, state: SnapshotState<'e>) -> Self {
        Self { shared, state }
    }

    /// Scans `partitions` partitions, each over the range `range` gives it, and merges them in
    /// key order: encoded keys sort as the keys do, so sorting past the partition prefix does.
    fn scan_partitions(
        &self,
        partitions: u32,
        limit: usize,
        range: impl Fn(u32) -> Result<(Vec<u8>, Vec<u8>), Error>,
    ) -> Result<Vec<lockstep_core::store::Entry>, Error> {
        let mut merged = Vec::new();
        for partition in 0..partitions {
            let (start, end) = range(partition)?;
            merged.extend(self.state.scan(&start, &end, limit)?);
        }
        merged.sort_by(|a, b| a.0[PARTITION_PREFIX_BYTES..].cmp(&b.0[PARTITION_PREFIX_BYTES..]));
        merged.truncate(limit);
        Ok(merged)
    }

    /// The batch of `topology` this snapshot sees (0 before the first commit).
    pub fn batch_id(&self, topology: &str) -> Result<u64, Error> {
        let state = self.shared.topology(topology)?;
        Ok(self
            .state
            .load_commit(state.id)?
            .map_or(0, |record| record.batch_id))
    }

    /// The value under `key`.
    pub fn get<K, V>(&self, pstate: &PState<K, V>, key: &K) -> Result<Option<V>, Error>
    where
        K: Serialize,
        V: DeserializeOwned,
    {
        let id = self.shared.pstate_id(pstate.spec())?;
        let encoded = encode_key(key)?;
        let partition = lockstep_core::partition_for_key_bytes(&encoded, pstate.spec().partitions);
        match self.state.get(&entry_key(id, partition, &encoded))? {
            Some(bytes) => Ok(Some(
                decode_envelope(&bytes).map_err(lockstep_core::HandlerError::from)?,
            )),
            None => Ok(None),
        }
    }

    /// Up to `limit` entries with keys in `(from, to)` across all partitions, in key order.
    pub fn range<K, V>(
        &self,
        pstate: &PState<K, V>,
        from: Bound<&K>,
        to: Bound<&K>,
        limit: usize,
    ) -> Result<Vec<(K, V)>, Error>
    where
        K: Serialize + DeserializeOwned,
        V: DeserializeOwned,
    {
        let id = self.shared.pstate_id(pstate.spec())?;
        let merged = self.scan_partitions(pstate.spec().partitions, limit, |partition| {
            Ok(key_range(id, partition, from, to)?)
        })?;
        Ok(decode_map_entries(&merged)?)
    }

    /// Up to `limit` entries across all partitions whose keys start with the tuple elements
    /// `prefix`, in key order.
    pub fn prefix<K, V, P>(
        &self,
        pstate: &PState<K, V>,
        prefix: &P,
        limit: usize,
    ) -> Result<Vec<(K, V)>, Error>
    where
        K: DeserializeOwned,
        V: DeserializeOwned,
        P: Serialize + ?Sized,
    {
        let id = self.shared.pstate_id(pstate.spec())?;
        let merged = self.scan_partitions(pstate.spec().partitions, limit, |partition| {
            Ok(prefix_key_range(id, partition, prefix)?)
        })?;
        Ok(decode_map_entries(&merged)?)
    }

    /// Up to `limit` entries of one partition with keys in `(from, to)`, in key order.
    pub fn partition_range<K, V>(
        &self,
        pstate: &PState<K, V>,
        partition: u32,
        from: Bound<&K>,
        to: Bound<&K>,
        limit: usize,
    ) -> Result<Vec<(K, V)>, Error>
    where
        K: Serialize + DeserializeOwned,
        V: DeserializeOwned,
    {
        let id = self.shared.pstate_id(pstate.spec())?;
        let (start, end) = key_range(id, partition, from, to)?;
        Ok(decode_map_entries(&self.state.scan(&start, &end, limit)?)?)
    }

    /// Whether the set under `key` holds `element`.
    pub fn set_contains<K, E>(
        &self,
        pstate: &SetPState<K, E>,
        key: &K,
        element: &E,
    ) -> Result<bool, Error>
    where
        K: Serialize,
        E: Serialize,
    {
        let id = self.shared.pstate_id(pstate.spec())?;
        let mut encoded = encode_key(key)?;
        let partition = lockstep_core::partition_for_key_bytes(&encoded, pstate.spec().partitions);
        lockstep_core::encode_key_into(element, &mut encoded)?;
        Ok(self
            .state
            .get(&entry_key(id, partition, &encoded))?
            .is_some())
    }

    /// Up to `limit` elements of the set under `key`, ascending, after `after`.
    pub fn set_members<K, E>(
        &self,
        pstate: &SetPState<K, E>,
        key: &K,
        after: Option<&E>,
        limit: usize,
    ) -> Result<Vec<E>, Error>
    where
        K: Serialize,
        E: Serialize + DeserializeOwned,
    {
        let id = self.shared.pstate_id(pstate.spec())?;
        let encoded = encode_key(key)?;
        let partition = lockstep_core::partition_for_key_bytes(&encoded, pstate.spec().partitions);
        let (start, end) = set_range(id, partition, &encoded, after)?;
        let entries = self.state.scan(&start, &end, limit)?;
        Ok(decode_set_elements(
            &entries,
            PARTITION_PREFIX_BYTES + encoded.len(),
        )?)
    }

    /// Up to `limit` `(key, element)` pairs of a set PState across all partitions, in key then
    /// element order.
    pub fn set_entries<K, E>(
        &self,
        pstate: &SetPState<K, E>,
        limit: usize,
    ) -> Result<Vec<(K, E)>, Error>
    where
        K: DeserializeOwned,
        E: DeserializeOwned,
    {
        let id = self.shared.pstate_id(pstate.spec())?;
        let merged = self.scan_partitions(pstate.spec().partitions, limit, |partition| {
            Ok(prefix_range(&partition_prefix(id, partition)))
        })?;
        merged
            .iter()
            .map(|(key, _)| Ok(decode_set_entry(key)?))
            .collect()
    }

    fn pstate_by_name(&self, name: &str) -> Result<(u32, u32), Error> {
        match self.shared.pstates.get(name) {
            Some((Some(spec), id)) => Ok((*id, spec.partitions)),
            _ => Err(Error::UnknownPState(name.to_string())),
        }
    }

    /// The stored value envelope under an encoded key of the PState named `pstate` (for
    /// callers that decode themselves, such as network clients).
    pub fn raw_get(&self, pstate: &str, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let (id, partitions) = self.pstate_by_name(pstate)?;
        let partition = lockstep_core::partition_for_key_bytes(key, partitions);
        Ok(self.state.get(&entry_key(id, partition, key))?)
    }

    /// Up to `limit` entries of the PState named `pstate` across all partitions, in key order,
    /// after the encoded key `after` (exclusive): `(encoded key, stored value)`. For a set
    /// PState the encoded key is the key's encoding followed by the element's.
    pub fn raw_scan(
        &self,
        pstate: &str,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<lockstep_core::store::Entry>, Error> {
        let (id, partitions) = self.pstate_by_name(pstate)?;
        let merged = self.scan_partitions(partitions, limit, |partition| {
            let (mut start, end) = prefix_range(&partition_prefix(id, partition));
            if let Some(after) = after {
                // The smallest key greater than `after`.
                start = entry_key(id, partition, after);
                start.push(0);
            }
            Ok((start, end))
        })?;
        Ok(merged
            .into_iter()
            .map(|(mut key, value)| {
                key.drain(..PARTITION_PREFIX_BYTES);
                (key, value)
            })
            .collect())
    }

    /// Up to `limit` encoded elements of the set under the encoded key `key` of the set PState
    /// named `pstate`, after the encoded element `after` (exclusive).
    pub fn raw_set_members(
        &self,
        pstate: &str,
        key: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, Error> {
        let (id, partitions) = self.pstate_by_name(pstate)?;
        let partition = lockstep_core::partition_for_key_bytes(key, partitions);
        let (mut start, end) = prefix_range(&entry_key(id, partition, key));
        if let Some(after) = after {
            start.extend_from_slice(after);
            start.push(0);
        }
        let skip = PARTITION_PREFIX_BYTES + key.len();
        Ok(self
            .state
            .scan(&start, &end, limit)?
            .into_iter()
            .map(|(entry, _)| entry[skip..].to_vec())
            .collect())
    }

    /// The stored outcome envelope (`(batch id, outcome)`) `topology` recorded for `record`
    /// (see [`outcome`](Self::outcome) for records retention has trimmed).
    pub fn raw_outcome(&self, topology: &str, record: RecordId) -> Result<Option<Vec<u8>>, Error> {
        let id = self.shared.outcome_table_id(topology)?;
        match self.state.get(&outcome_key(id, record)?)? {
            Some(bytes) => Ok(Some(bytes)),
            None => self.absent_outcome(topology, record),
        }
    }

    /// Why `topology` has no outcome for `record`: trimmed (an error), or none was recorded.
    fn absent_outcome(&self, topology: &str, record: RecordId) -> Result<Option<Vec<u8>>, Error> {
        match self
            .shared
            .topology(topology)?
            .consumed_first_kept(record.depot_id, record.partition)
        {
            Some((depot, first_kept_offset)) if record.offset < first_kept_offset => {
                Err(Error::DepotTrimmed {
                    depot: depot.to_string(),
                    partition: record.partition,
                    from_offset: record.offset,
                    first_kept_offset,
                })
            }
            _ => Ok(None),
        }
    }

    /// What `topology` recorded for `record`, if it has processed it and recorded anything.
    ///
    /// With [depot retention](crate::EngineOptions::depot_retention), the outcomes of trimmed
    /// records are deleted too (by the topology's next batch after the trim): asked for one
    /// that is gone, this answers [`Error::DepotTrimmed`] rather than `None`, which would say
    /// nothing was recorded. An outcome not yet deleted is still answered. Below a
    /// partition's first kept offset the engine can no longer tell a deleted outcome from none
    /// recorded (or from a record this snapshot predates): all three answer trimmed.
    pub fn outcome<O: DeserializeOwned>(
        &self,
        topology: &str,
        record: RecordId,
    ) -> Result<Option<Outcome<O>>, Error> {
        let id = self.shared.outcome_table_id(topology)?;
        match self.state.get(&outcome_key(id, record)?)? {
            None => self.absent_outcome(topology, record).map(|_| None),
            Some(bytes) => {
                let (batch_id, value): (u64, O) =
                    decode_envelope(&bytes).map_err(lockstep_core::HandlerError::from)?;
                Ok(Some(Outcome { batch_id, value }))
            }
        }
    }
}

//! RocksDB behind the core's storage traits: one database, one write-ahead log, so a depot
//! append and a batch commit are each one `WriteBatch` and a batch commit is atomic across every
//! partition and PState. See `engine/docs/commit-protocol.md`.

use std::path::Path;

use lockstep_core::store::{
    decode_producer_state, BatchCommit, CommitRecord, CommitStore, DepotEntry, DepotLog,
    DepotRecord, DepotTrim, Entry, ProducerState, StateRead, StoreError,
};
use lockstep_core::{decode_envelope, encode_envelope};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType,
    DBRecoveryMode, Direction, IteratorMode, Options, ReadOptions, SliceTransform, WriteBatch,
    WriteOptions, DB,
};

pub(crate) const CF_DEPOT: &str = "depot";
pub(crate) const CF_STATE: &str = "state";
pub(crate) const CF_META: &str = "meta";
/// The name the state family's prefix extractor (`lockstep_core::layout::bloom_prefix`) records
/// in each table file. A change to the function's cut needs a new name, so that files filtered
/// under the old one are read without their prefix filters rather than wrongly.
const STATE_PREFIX_EXTRACTOR: &str = "lockstep.bloom_prefix.1";

/// The least [`StoreOptions::background_write_bytes_per_s`] lets flushes and compactions
/// write a second: below it, a flush of a full `depot` memtable (64 MiB; 26 MB of table file
/// in the component benchmark, up to 64 MiB for incompressible records) would take from half
/// a minute to over a minute, and writes would stop waiting for it.
pub(crate) const BACKGROUND_WRITE_BYTES_PER_S_MIN: u64 = 1 << 20;

/// [`StoreOptions::wal_bytes_max`] unless set otherwise (see `EngineOptions::wal_bytes_max`).
pub(crate) const WAL_BYTES_MAX_DEFAULT: u64 = 256 << 20;

/// The least [`StoreOptions::wal_bytes_max`]: a bound that small already flushes a memtable
/// every few hundred commits under load.
pub(crate) const WAL_BYTES_MAX_MIN: u64 = 1 << 20;

/// Freed write-ahead log files kept to be written over (RocksDB's `recycle_log_file_num`).
/// Files are freed a few at a time, when the last memtable a file holds data of is flushed.
const WAL_FILES_RECYCLED: usize = 4;

/// How [`RocksStore::open_with`] sets the database up, beyond what every store shares.
#[derive(Debug, Clone)]
pub(crate) struct StoreOptions {
    /// Bytes of the one cache of uncompressed table blocks the three column families share.
    pub(crate) block_cache_bytes: usize,
    /// Most bytes a second flushes and compactions write, on average (`None`: no limit); at
    /// least [`BACKGROUND_WRITE_BYTES_PER_S_MIN`].
    pub(crate) background_write_bytes_per_s: Option<u64>,
    /// Most bytes of live write-ahead log files, at least [`WAL_BYTES_MAX_MIN`].
    pub(crate) wal_bytes_max: u64,
}

impl StoreOptions {
    /// A block cache of `block_cache_bytes`, no limit on background writes, and a write-ahead
    /// log of at most [`WAL_BYTES_MAX_DEFAULT`].
    pub(crate) fn new(block_cache_bytes: usize) -> Self {
        Self {
            block_cache_bytes,
            background_write_bytes_per_s: None,
            wal_bytes_max: WAL_BYTES_MAX_DEFAULT,
        }
    }
}

/// Memtable size of the `state` column family (why not RocksDB's default: `RocksStore::open`).
const STATE_WRITE_BUFFER_BYTES: usize = 32 << 20;

/// Bytes of a depot key: `[depot id: u32 BE][partition: u32 BE][offset: u64 BE]`.
const DEPOT_KEY_BYTES: usize = 16;
/// Meta values are small; this bounds what a corrupt one can make us allocate.
const META_VALUE_BYTES_MAX: usize = 16 << 20;

pub(crate) fn depot_key(depot_id: u32, partition: u32, offset: u64) -> [u8; DEPOT_KEY_BYTES] {
    let mut key = [0u8; DEPOT_KEY_BYTES];
    key[..4].copy_from_slice(&depot_id.to_be_bytes());
    key[4..8].copy_from_slice(&partition.to_be_bytes());
    key[8..].copy_from_slice(&offset.to_be_bytes());
    key
}

/// Bytes of the sequence number that opens a depot value: `[seq: u64 BE][envelope]`.
const DEPOT_SEQ_BYTES: usize = 8;

/// Writes a depot record's value (`[seq: u64 BE][envelope]`) into `value`, replacing its
/// contents.
fn encode_depot_value(entry: &DepotEntry<'_>, value: &mut Vec<u8>) {
    value.clear();
    value.reserve(DEPOT_SEQ_BYTES + entry.bytes.len());
    value.extend_from_slice(&entry.seq.to_be_bytes());
    value.extend_from_slice(entry.bytes);
}

/// Key and value bytes a depot record takes in its synced write (as `append` lays them out).
pub(crate) fn depot_entry_bytes(entry: &DepotEntry<'_>) -> u64 {
    (DEPOT_KEY_BYTES + DEPOT_SEQ_BYTES + entry.bytes.len()) as u64
}

const PRODUCER_PREFIX: &[u8] = b"producer/";

const TRIM_PREFIX: &[u8] = b"trim/";

/// Where a trimmed depot partition's kept records start: `trim/[depot id u32 BE][partition
/// u32 BE]` in `meta`, written with the trim's deletion.
fn trim_key(depot_id: u32, partition: u32) -> Vec<u8> {
    let mut key = TRIM_PREFIX.to_vec();
    key.extend_from_slice(&depot_key(depot_id, partition, 0)[..8]);
    key
}

const COMMIT_PREFIX: &[u8] = b"commit/";

fn producer_key(producer: u64) -> Vec<u8> {
    let mut key = PRODUCER_PREFIX.to_vec();
    key.extend_from_slice(&producer.to_be_bytes());
    key
}

fn commit_key(topology_id: u32) -> Vec<u8> {
    let mut key = COMMIT_PREFIX.to_vec();
    key.extend_from_slice(&topology_id.to_be_bytes());
    key
}

fn io(op: &'static str) -> impl FnOnce(rocksdb::Error) -> StoreError {
    move |e| StoreError::Io {
        op,
        message: e.into_string(),
    }
}

/// A key and value as RocksDB's iterators return them.
pub(crate) type RawEntry = (Box<[u8]>, Box<[u8]>);

/// The engine's one RocksDB database.
pub(crate) struct RocksStore {
    db: DB,
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore")
            .field("path", &self.db.path())
            .finish()
    }
}

impl RocksStore {
    /// Opens (or creates) the database at `path` with the defaults of [`StoreOptions::new`]:
    /// `block_cache_bytes` sizes the one cache of uncompressed table blocks that the three
    /// column families share (RocksDB would otherwise give each its own 32 MiB).
    pub(crate) fn open(path: &Path, block_cache_bytes: usize) -> Result<Self, StoreError> {
        Self::open_with(path, &StoreOptions::new(block_cache_bytes))
    }

    /// Opens (or creates) the database at `path`, set as `store_options` says.
    pub(crate) fn open_with(path: &Path, store_options: &StoreOptions) -> Result<Self, StoreError> {
        let block_cache = Cache::new_lru_cache(store_options.block_cache_bytes);
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        // Point-in-time recovery replays the WAL up to the first torn or corrupt record and stops:
        // a synced write is before that point, so it is kept, and nothing after a hole is applied.
        options.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
        options.set_paranoid_checks(true);
        options.set_max_background_jobs(2);
        // Past `wal_bytes_max` of live log files, RocksDB flushes the column families that
        // hold the oldest one, so that it can go. RocksDB's own bound, four times the
        // memtables' total (1.75 GiB here, RocksDB's `default` family counted), is no bound in
        // practice: the `meta` family takes a few bytes a commit, so its memtable fills after
        // hours, and until then it keeps every log file since the engine opened. A restart
        // replays them all: 422–449 MiB, 1.9–2.4 s, after a 15-second sustained component
        // benchmark run, and growing with uptime (benches/EXPERIMENTS.md, *A bounded, recycled
        // write-ahead log*). The bound is checked as writes come, and the flushes it asks for
        // run in the background, so the log can pass it while they are behind.
        options.set_max_total_wal_size(store_options.wal_bytes_max.max(WAL_BYTES_MAX_MIN));
        // Freed log files are written over instead of deleted and created anew. A synced
        // append to a fresh log file (RocksDB preallocates it) makes ext4 record the file's
        // new size and written extents in its journal at every sync; writing over blocks the
        // file already has needs none of that (an `fdatasync` alone: 0.10 ms against
        // 0.16–0.20). Point-in-time recovery reads a recycled file's records up to the first
        // one of an earlier life of the file (each record names its log), as it stops at a
        // torn tail, and goes on into the next log file when that one's sequence numbers
        // follow on. RocksDB refuses unlogged writes (`disableWAL`) with recycling on; the
        // engine makes none.
        options.set_recycle_log_file_num(WAL_FILES_RECYCLED);
        if let Some(bytes_per_s) = store_options.background_write_bytes_per_s {
            let bytes_per_s = bytes_per_s.max(BACKGROUND_WRITE_BYTES_PER_S_MIN);
            // RocksDB's limiter hands out write budget every refill period; 100 ms and a
            // fairness of 10 are its defaults. It also turns on `bytes_per_sync` (1 MiB),
            // so table files are written back as they grow rather than all at their end.
            options.set_ratelimiter(i64::try_from(bytes_per_s).unwrap_or(i64::MAX), 100_000, 10);
        }
        options.set_compression_type(DBCompressionType::Lz4);
        let cfs = [CF_DEPOT, CF_STATE, CF_META].map(|name| {
            let mut cf_options = Options::default();
            cf_options.set_compression_type(DBCompressionType::Lz4);
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&block_cache);
            if name == CF_STATE {
                // Handlers look up many keys that do not exist (a create checks its id is free,
                // a command names a missing parent): the table files' bloom filters answer
                // those without reading a block.
                table.set_bloom_filter(10.0, false);
                // Memtables have no filter, on purpose: with one (`memtable_prefix_bloom_ratio`),
                // each insert paid two cache misses into a filter of megabytes, a tenth of the
                // committer's time, and the committer, which also waits for the sync, is what
                // paces a loaded pipeline. The state cache answers most reads before they reach
                // a memtable; what the filter saved the driver on the rest was less than it
                // cost (benches/EXPERIMENTS.md, *No memtable filter*).
                //
                // And they are 32 MiB, not RocksDB's 64. A batch rewrites keys it rewrote
                // before, so its inserts land among the versions the memtable holds of them,
                // and each insert's skiplist search (half of the committer's time) grows with
                // the entries in between: half the memtable made the committer 16% cheaper
                // and a sustained run 6% faster. At 16 MiB, flushes and compactions came so
                // often that at 1M components the p50 latency grew eightfold and the p99
                // threefold (benches/EXPERIMENTS.md, *Smaller memtables*).
                cf_options.set_write_buffer_size(STATE_WRITE_BUFFER_BYTES);
                // The table files' filters also hold each key's bloom prefix, so that a scan
                // of a set that a file lacks (a deleted leaf's children: most cascade steps)
                // skips it. Only scans that ask for it use it (`scan_options`); every other
                // iterator of this family reads in total order. Table files written without
                // it (by an older build) are read without it: RocksDB checks the extractor's
                // name each file records.
                cf_options.set_prefix_extractor(SliceTransform::create(
                    STATE_PREFIX_EXTRACTOR,
                    lockstep_core::layout::bloom_prefix,
                    None,
                ));
            }
            cf_options.set_block_based_table_factory(&table);
            ColumnFamilyDescriptor::new(name, cf_options)
        });
        let db = DB::open_cf_descriptors(&options, path, cfs).map_err(io("open"))?;
        Ok(Self { db })
    }

    fn cf(&self, name: &'static str) -> Result<&ColumnFamily, StoreError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| StoreError::Corruption(format!("column family {name:?} is missing")))
    }

    pub(crate) fn meta_get<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        let cf = self.cf(CF_META)?;
        match self.db.get_pinned_cf(cf, key).map_err(io("meta read"))? {
            None => Ok(None),
            Some(bytes) => decode_envelope(&bytes).map(Some).map_err(|e| {
                StoreError::Corruption(format!(
                    "meta entry {:?}: {e}",
                    String::from_utf8_lossy(key)
                ))
            }),
        }
    }

    /// Writes meta entries durably in one batch (catalog changes at open).
    #[cfg(test)]
    pub(crate) fn meta_put_all(&self, entries: &[Entry]) -> Result<(), StoreError> {
        let cf = self.cf(CF_META)?;
        let mut batch = WriteBatch::default();
        for (key, value) in entries {
            batch.put_cf(cf, key, value);
        }
        self.db
            .write_opt(batch, &synced())
            .map_err(io("catalog write"))
    }

    pub(crate) fn encode_meta<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
        encode_envelope(value, META_VALUE_BYTES_MAX)
            .map_err(|e| StoreError::Corruption(format!("meta entry does not encode: {e}")))
    }

    /// The live committed state, for a batch to read under its own overlay.
    pub(crate) fn live(&self) -> Result<LiveState<'_>, StoreError> {
        Ok(LiveState {
            db: &self.db,
            cf: self.cf(CF_STATE)?,
            read_options: ReadOptions::default(),
        })
    }

    /// A point-in-time view of everything committed.
    pub(crate) fn snapshot(&self) -> Result<SnapshotState<'_>, StoreError> {
        Ok(SnapshotState {
            snapshot: self.db.snapshot(),
            state: self.cf(CF_STATE)?,
            meta: self.cf(CF_META)?,
        })
    }

    /// The offsets a depot partition physically holds (no trim mark consulted), for tests
    /// that check a trim deleted what it says.
    #[cfg(test)]
    pub(crate) fn depot_offsets_stored(&self, depot_id: u32, partition: u32) -> Vec<u64> {
        let cf = self.cf(CF_DEPOT).expect("depot column family");
        let mut iter = self.db.raw_iterator_cf(cf);
        iter.seek(depot_key(depot_id, partition, 0));
        let mut offsets = Vec::new();
        while let Some(key) = iter.key() {
            match parse_depot_offset(key, depot_id, partition) {
                Ok(offset) => offsets.push(offset),
                Err(_) => break,
            }
            iter.next();
        }
        offsets
    }

    /// Every `meta` entry whose key starts with `prefix`, in key order.
    fn meta_entries(&self, prefix: &[u8], op: &'static str) -> Result<Vec<RawEntry>, StoreError> {
        let cf = self.cf(CF_META)?;
        let mut read_options = ReadOptions::default();
        if let Some(end) = lockstep_core::layout::prefix_successor(prefix) {
            read_options.set_iterate_upper_bound(end);
        }
        self.db
            .iterator_cf_opt(
                cf,
                read_options,
                IteratorMode::From(prefix, Direction::Forward),
            )
            .map(|entry| entry.map_err(io(op)))
            .collect()
    }

    /// The meta entries whose keys start with `prefix`, in key order.
    pub(crate) fn meta_entries_with_prefix(
        &self,
        prefix: &[u8],
    ) -> Result<Vec<RawEntry>, StoreError> {
        self.meta_entries(prefix, "catalog scan")
    }

    /// Writes the catalog's changes in one synced write: deletes the `meta` keys
    /// `catalog_deletes`, the commit records of the retired `topology_ids` and every entry of
    /// their PStates `pstate_ids` (one range deletion over each id's key prefix), then puts
    /// `puts` (a retired name declared again gets its new entry).
    pub(crate) fn write_catalog(
        &self,
        puts: &[Entry],
        catalog_deletes: &[Vec<u8>],
        topology_ids: &[u32],
        pstate_ids: &[u32],
    ) -> Result<(), StoreError> {
        let meta = self.cf(CF_META)?;
        let state = self.cf(CF_STATE)?;
        let mut batch = WriteBatch::default();
        for key in catalog_deletes {
            batch.delete_cf(meta, key);
        }
        for id in topology_ids {
            batch.delete_cf(meta, commit_key(*id));
        }
        for id in pstate_ids {
            let (start, end) = lockstep_core::layout::prefix_range(&id.to_be_bytes());
            batch.delete_range_cf(state, start, end);
        }
        for (key, value) in puts {
            batch.put_cf(meta, key, value);
        }
        self.db
            .write_opt(batch, &synced())
            .map_err(io("catalog write"))
    }

    /// Stores `state` as format 1 laid it out, without its time (for tests of the upgrade).
    #[cfg(test)]
    pub(crate) fn put_format_1_producer_state(
        &self,
        state: &ProducerState,
    ) -> Result<(), StoreError> {
        #[derive(serde::Serialize)]
        struct V1Layout<'a> {
            producer: u64,
            sequence: u64,
            ids: &'a [lockstep_core::RecordId],
            digest: u64,
        }
        let value = Self::encode_meta(&V1Layout {
            producer: state.producer,
            sequence: state.sequence,
            ids: &state.ids,
            digest: state.digest,
        })?;
        self.meta_put_all(&[(producer_key(state.producer), value)])
    }

    /// Every stored commit record, by topology id: those of topologies the engine was not
    /// opened with still hold records back from retention.
    pub(crate) fn commit_records(&self) -> Result<Vec<(u32, CommitRecord)>, StoreError> {
        self.meta_entries(COMMIT_PREFIX, "commit record scan")?
            .into_iter()
            .map(|(key, value)| {
                let id = key
                    .get(COMMIT_PREFIX.len()..)
                    .and_then(|id| <[u8; 4]>::try_from(id).ok())
                    .map(u32::from_be_bytes)
                    .ok_or_else(|| {
                        StoreError::Corruption(format!("malformed commit record key {key:02x?}"))
                    })?;
                let record = decode_envelope(&value)
                    .map_err(|e| StoreError::Corruption(format!("commit record: {e}")))?;
                Ok((id, record))
            })
            .collect()
    }

    /// Every entry of the state column family, for determinism checks and debugging.
    pub(crate) fn state_entries(&self) -> Result<Vec<Entry>, StoreError> {
        let cf = self.cf(CF_STATE)?;
        let mut read_options = ReadOptions::default();
        read_options.set_total_order_seek(true);
        self.db
            .iterator_cf_opt(cf, read_options, IteratorMode::Start)
            .map(|entry| {
                entry
                    .map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(io("state scan"))
            })
            .collect()
    }
}

fn synced() -> WriteOptions {
    let mut options = WriteOptions::default();
    options.set_sync(true);
    options
}

impl DepotLog for RocksStore {
    fn append(
        &self,
        entries: &[DepotEntry<'_>],
        producers: &[ProducerState],
        expired_producers: &[u64],
        trims: &[DepotTrim],
    ) -> Result<(), StoreError> {
        let cf = self.cf(CF_DEPOT)?;
        let mut batch = WriteBatch::default();
        if !producers.is_empty() || !expired_producers.is_empty() || !trims.is_empty() {
            let meta = self.cf(CF_META)?;
            // Deletions first: a producer that expired and appended again in one group keeps
            // the state its new call wrote.
            for producer in expired_producers {
                batch.delete_cf(meta, producer_key(*producer));
            }
            for state in producers {
                batch.put_cf(
                    meta,
                    producer_key(state.producer),
                    Self::encode_meta(state)?,
                );
            }
            for trim in trims {
                // One range deletion per trim: RocksDB drops the covered records at flush or
                // compaction, and reads skip them until then.
                batch.delete_range_cf(
                    cf,
                    depot_key(
                        trim.depot_id,
                        trim.partition,
                        trim.previous_first_kept_offset,
                    ),
                    depot_key(trim.depot_id, trim.partition, trim.first_kept_offset),
                );
                batch.put_cf(
                    meta,
                    trim_key(trim.depot_id, trim.partition),
                    Self::encode_meta(&trim.first_kept_offset)?,
                );
            }
        }
        // When RocksDB inserts a batch into the memtable on its own (no other writer in its
        // write group), each insert's skiplist search starts where the previous one ended; a
        // group interleaves partitions as its callers do, so in key order those searches stay
        // short (the appender's skiplist work all but vanished in profiles; BENCHMARKS.md).
        let mut in_key_order: Vec<&DepotEntry<'_>> = entries.iter().collect();
        in_key_order.sort_unstable_by_key(|entry| (entry.depot_id, entry.partition, entry.offset));
        let mut value = Vec::new();
        for entry in in_key_order {
            encode_depot_value(entry, &mut value);
            batch.put_cf(
                cf,
                depot_key(entry.depot_id, entry.partition, entry.offset),
                &value,
            );
        }
        self.db
            .write_opt(batch, &synced())
            .map_err(io("depot append"))
    }

    fn read(
        &self,
        depot_id: u32,
        partition: u32,
        from_offset: u64,
        records_max: usize,
        bytes_max: usize,
    ) -> Result<Vec<DepotRecord>, StoreError> {
        let cf = self.cf(CF_DEPOT)?;
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_upper_bound(depot_key(depot_id, partition, u64::MAX).to_vec());
        let mut iter = self.db.raw_iterator_cf_opt(cf, read_options);
        iter.seek(depot_key(depot_id, partition, from_offset));
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut expected = from_offset;
        while out.len() < records_max && (out.is_empty() || bytes < bytes_max) {
            let (Some(key), Some(value)) = (iter.key(), iter.value()) else {
                break;
            };
            let offset = parse_depot_offset(key, depot_id, partition)?;
            if out.is_empty() && offset > expected {
                // Records before the first one found are gone: trimmed, if the partition's
                // start has moved past them (the mark is written with the deletion and only
                // moves forward, so it is at least as new as what this iterator saw).
                let first_kept_offset = self.first_kept_offset(depot_id, partition)?;
                if from_offset < first_kept_offset {
                    return Err(StoreError::Trimmed {
                        depot_id,
                        partition,
                        from_offset,
                        first_kept_offset,
                    });
                }
            }
            // Offsets are dense: a gap means lost records, which must never be skipped silently.
            if offset != expected {
                return Err(StoreError::Corruption(format!(
                    "depot {depot_id} partition {partition}: expected offset {expected}, found {offset}"
                )));
            }
            let (seq, envelope) = split_depot_value(value, depot_id, partition, offset)?;
            bytes += envelope.len();
            out.push(DepotRecord {
                offset,
                seq,
                bytes: envelope.to_vec(),
            });
            expected += 1;
            iter.next();
        }
        iter.status().map_err(io("depot read"))?;
        Ok(out)
    }

    fn next_offset(&self, depot_id: u32, partition: u32) -> Result<u64, StoreError> {
        let cf = self.cf(CF_DEPOT)?;
        let mut iter = self.db.raw_iterator_cf(cf);
        iter.seek_for_prev(depot_key(depot_id, partition, u64::MAX));
        let next = match iter.key() {
            Some(key) if key.get(..8) == Some(&depot_key(depot_id, partition, 0)[..8]) => {
                parse_depot_offset(key, depot_id, partition)? + 1
            }
            // Empty, or (never by the engine, which keeps every partition's last record)
            // trimmed whole.
            _ => self.first_kept_offset(depot_id, partition)?,
        };
        iter.status().map_err(io("depot scan"))?;
        Ok(next)
    }

    fn first_kept_offset(&self, depot_id: u32, partition: u32) -> Result<u64, StoreError> {
        Ok(self
            .meta_get::<u64>(&trim_key(depot_id, partition))?
            .unwrap_or(0))
    }

    fn load_producers(&self) -> Result<Vec<ProducerState>, StoreError> {
        self.meta_entries(PRODUCER_PREFIX, "producer scan")?
            .into_iter()
            .map(|(_, value)| {
                decode_producer_state(&value)
                    .map_err(|e| StoreError::Corruption(format!("producer state: {e}")))
            })
            .collect()
    }

    fn max_seq(&self) -> Result<Option<u64>, StoreError> {
        // The last entry of each (depot, partition) holds its largest seq; skip from one
        // partition's range to the next with one seek each.
        let cf = self.cf(CF_DEPOT)?;
        let mut iter = self.db.raw_iterator_cf(cf);
        let mut max = None;
        iter.seek_to_first();
        while let Some(key) = iter.key() {
            if key.len() != DEPOT_KEY_BYTES {
                return Err(StoreError::Corruption(format!(
                    "malformed depot key {key:02x?}"
                )));
            }
            let mut prefix = [0u8; 8];
            prefix.copy_from_slice(&key[..8]);
            let mut last_key = prefix.to_vec();
            last_key.extend_from_slice(&u64::MAX.to_be_bytes());
            iter.seek_for_prev(&last_key);
            let (Some(key), Some(value)) = (iter.key(), iter.value()) else {
                break;
            };
            let (depot_id, partition) = split_prefix(prefix);
            let offset = parse_depot_offset(key, depot_id, partition)?;
            let (seq, _) = split_depot_value(value, depot_id, partition, offset)?;
            max = max.max(Some(seq));
            // The next partition's range starts right after this one's prefix.
            match u64::from_be_bytes(prefix).checked_add(1) {
                Some(next) => iter.seek(next.to_be_bytes()),
                None => break,
            }
        }
        iter.status().map_err(io("depot scan"))?;
        Ok(max)
    }
}

fn split_prefix(prefix: [u8; 8]) -> (u32, u32) {
    let mut depot = [0u8; 4];
    let mut partition = [0u8; 4];
    depot.copy_from_slice(&prefix[..4]);
    partition.copy_from_slice(&prefix[4..]);
    (u32::from_be_bytes(depot), u32::from_be_bytes(partition))
}

/// A depot value is `[seq: u64 BE][envelope]`.
fn split_depot_value(
    value: &[u8],
    depot_id: u32,
    partition: u32,
    offset: u64,
) -> Result<(u64, &[u8]), StoreError> {
    let (seq, envelope) = value.split_at_checked(DEPOT_SEQ_BYTES).ok_or_else(|| {
        StoreError::Corruption(format!(
            "depot {depot_id} partition {partition} offset {offset}: value of {} bytes",
            value.len()
        ))
    })?;
    let mut seq_bytes = [0u8; DEPOT_SEQ_BYTES];
    seq_bytes.copy_from_slice(seq);
    Ok((u64::from_be_bytes(seq_bytes), envelope))
}

fn parse_depot_offset(key: &[u8], depot_id: u32, partition: u32) -> Result<u64, StoreError> {
    let prefix = depot_key(depot_id, partition, 0);
    if key.len() != DEPOT_KEY_BYTES || key[..8] != prefix[..8] {
        return Err(StoreError::Corruption(format!(
            "depot {depot_id} partition {partition}: malformed key {key:02x?}"
        )));
    }
    let mut offset = [0u8; 8];
    offset.copy_from_slice(&key[8..]);
    Ok(u64::from_be_bytes(offset))
}

impl CommitStore for RocksStore {
    fn commit(&self, commit: BatchCommit<'_>) -> Result<(), StoreError> {
        self.commit_marked(commit, || ())
    }

    fn load_commit(&self, topology_id: u32) -> Result<Option<CommitRecord>, StoreError> {
        self.meta_get(&commit_key(topology_id))
    }
}

impl RocksStore {
    /// [`CommitStore::commit`], calling `mark_writing` once the write batch is built and
    /// keeping what it returns until the synced write ends: the span in which the commit holds
    /// RocksDB's write queue, which the appender waits out rather than queueing behind it.
    pub(crate) fn commit_marked<M>(
        &self,
        commit: BatchCommit<'_>,
        mark_writing: impl FnOnce() -> M,
    ) -> Result<(), StoreError> {
        let state = self.cf(CF_STATE)?;
        let meta = self.cf(CF_META)?;
        let mut batch = WriteBatch::default();
        for writes in commit.writes {
            for (key, value) in writes {
                match value {
                    Some(value) => batch.put_cf(state, key, value),
                    None => batch.delete_cf(state, key),
                }
            }
        }
        // After the writes: an outcome a handler records for a record in a range goes too.
        for (start, end) in commit.deleted_ranges {
            batch.delete_range_cf(state, start, end);
        }
        batch.put_cf(
            meta,
            commit_key(commit.topology_id),
            Self::encode_meta(commit.record)?,
        );
        let _writing = mark_writing();
        self.db
            .write_opt(batch, &synced())
            .map_err(io("batch commit"))
    }
}

/// Committed state read straight from the database (see [`StateRead`]'s contract).
pub(crate) struct LiveState<'a> {
    db: &'a DB,
    cf: &'a ColumnFamily,
    /// Made once: the default options a bare `get` would otherwise allocate and free per read.
    read_options: ReadOptions,
}

impl StateRead for LiveState<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .get_cf_opt(self.cf, key, &self.read_options)
            .map_err(io("state read"))
    }

    fn get_with(&self, key: &[u8], visit: &mut dyn FnMut(Option<&[u8]>)) -> Result<(), StoreError> {
        let value = self
            .db
            .get_pinned_cf_opt(self.cf, key, &self.read_options)
            .map_err(io("state read"))?;
        visit(value.as_deref());
        Ok(())
    }

    fn scan(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError> {
        let iter = self.db.iterator_cf_opt(
            self.cf,
            scan_options(from, to),
            IteratorMode::From(from, Direction::Forward),
        );
        collect_scan(iter, limit)
    }
}

/// Read options for a scan of the state family over `[from, to)`: in prefix mode, which consults
/// the bloom filters, when every key of the range has `from`'s bloom prefix (so the mode cannot
/// hide one); in total order otherwise, as RocksDB would not by default once the family has a
/// prefix extractor.
fn scan_options(from: &[u8], to: &[u8]) -> ReadOptions {
    let mut read_options = ReadOptions::default();
    read_options.set_iterate_upper_bound(to.to_vec());
    if lockstep_core::layout::range_bloom_prefix(from, to).is_some() {
        read_options.set_prefix_same_as_start(true);
    } else {
        read_options.set_total_order_seek(true);
    }
    read_options
}

fn collect_scan<I>(iter: I, limit: usize) -> Result<Vec<Entry>, StoreError>
where
    I: Iterator<Item = Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>>,
{
    iter.take(limit)
        .map(|entry| {
            entry
                .map(|(k, v)| (k.into_vec(), v.into_vec()))
                .map_err(io("state scan"))
        })
        .collect()
}

/// A RocksDB snapshot: every read sees the same set of committed batches.
pub(crate) struct SnapshotState<'a> {
    snapshot: rocksdb::Snapshot<'a>,
    state: &'a ColumnFamily,
    meta: &'a ColumnFamily,
}

impl SnapshotState<'_> {
    pub(crate) fn load_commit(&self, topology_id: u32) -> Result<Option<CommitRecord>, StoreError> {
        let key = commit_key(topology_id);
        match self
            .snapshot
            .get_cf(self.meta, &key)
            .map_err(io("meta read"))?
        {
            None => Ok(None),
            Some(bytes) => decode_envelope(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Corruption(format!("commit record: {e}"))),
        }
    }
}

impl StateRead for SnapshotState<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.snapshot
            .get_cf(self.state, key)
            .map_err(io("state read"))
    }

    fn scan(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError> {
        let iter = self.snapshot.iterator_cf_opt(
            self.state,
            scan_options(from, to),
            IteratorMode::From(from, Direction::Forward),
        );
        collect_scan(iter, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockstep_core::store::WriteSet;

    fn producer_state(producer: u64, sequence: u64, last_append_unix_ms: u64) -> ProducerState {
        ProducerState {
            producer,
            sequence,
            ids: vec![lockstep_core::RecordId {
                depot_id: 1,
                partition: 2,
                offset: sequence,
            }],
            digest: producer ^ sequence,
            last_append_unix_ms,
        }
    }

    /// Producer states read back as written; an append that names a producer as expired
    /// deletes its state, unless the same group writes it a new one (its new call); a state
    /// stored in format 1's layout, without a time, reads with time 0.
    #[test]
    fn producer_states_round_trip_expire_and_read_the_old_layout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RocksStore::open(dir.path(), 1 << 20).expect("open");
        let (one, two) = (producer_state(1, 4, 1_000), producer_state(2, 9, 2_000));
        store
            .append(&[], &[one.clone(), two.clone()], &[], &[])
            .expect("append");
        assert_eq!(
            store.load_producers().expect("load"),
            vec![one, two.clone()]
        );
        let three = producer_state(3, 1, 3_000);
        store
            .append(&[], std::slice::from_ref(&three), &[1, 3], &[])
            .expect("append");
        assert_eq!(
            store.load_producers().expect("load"),
            vec![two.clone(), three.clone()]
        );
        let old = producer_state(4, 6, 0);
        store.put_format_1_producer_state(&old).expect("put");
        drop(store);
        let store = RocksStore::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(store.load_producers().expect("load"), vec![two, three, old]);
    }

    #[test]
    fn a_depot_value_is_counted_as_append_writes_it_and_reads_back() {
        let entry = DepotEntry {
            depot_id: 3,
            partition: 1,
            offset: 9,
            seq: 0x0102_0304_0506_0708,
            bytes: b"envelope",
        };
        let mut value = b"left over from the previous record".to_vec();
        encode_depot_value(&entry, &mut value);
        let key = depot_key(entry.depot_id, entry.partition, entry.offset);
        assert_eq!(depot_entry_bytes(&entry), (key.len() + value.len()) as u64);
        // The layout's bytes, fixed: the sequence number big-endian, then the envelope. A depot
        // written by one build or machine must read back on another.
        assert_eq!(value, [&[1, 2, 3, 4, 5, 6, 7, 8][..], b"envelope"].concat());
        let (seq, envelope) = split_depot_value(&value, 3, 1, 9).expect("a whole value");
        assert_eq!((seq, envelope), (entry.seq, &b"envelope"[..]));
        assert!(split_depot_value(&value[..7], 3, 1, 9).is_err());
    }

    /// A limit on background writes holds a flush to it, and a limit of zero counts as the
    /// least one: 3 MiB of incompressible state, flushed at 1 MiB/s, takes two seconds at the
    /// very least (RocksDB's limiter lets a tenth of a second's budget through at once).
    #[test]
    fn a_flush_keeps_to_the_background_write_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store_options = StoreOptions::new(1 << 20);
        store_options.background_write_bytes_per_s = Some(0);
        let store = RocksStore::open_with(dir.path(), &store_options).expect("open");
        let cf = store.cf(CF_STATE).expect("state family");
        let mut noise = 0x9E37_79B9_7F4A_7C15_u64;
        let mut batch = WriteBatch::default();
        for key in 0u32..48 {
            let value: Vec<u8> = (0..64 << 10)
                .map(|_| {
                    noise ^= noise << 13;
                    noise ^= noise >> 7;
                    noise ^= noise << 17;
                    noise as u8
                })
                .collect();
            batch.put_cf(cf, key.to_be_bytes(), value);
        }
        store.db.write_opt(batch, &synced()).expect("write");
        let started = std::time::Instant::now();
        store.db.flush_cf(cf).expect("flush");
        let took = started.elapsed();
        assert!(
            took >= std::time::Duration::from_secs(2),
            "3 MiB flushed in {took:?}, faster than 1 MiB/s allows"
        );
    }

    /// Freed log files are written over, and what is written into one replays at the next
    /// open, where the records the file held before end its replay. Round 1 fills a log and
    /// is flushed (the first flush moves writes to a new log; the others find it empty and
    /// keep it), which frees the log; round 2 goes to the new log and is flushed, and the log
    /// after it is the freed one, written over. Round 3 writes fewer records of the same size
    /// as round 1's, so round 1's later records follow its own in the file, each at a record's
    /// start. The data directory is copied as a crash would leave it (a clean close would cut
    /// the file to round 3's records) and the copy opened: replaying round 1's records would
    /// bring back its values over round 2's.
    #[test]
    fn a_recycled_write_ahead_log_replays_only_its_own_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RocksStore::open(dir.path(), 1 << 20).expect("open");
        // One synced write a key: one log record each, all of one size.
        let write_round = |round: u8, keys: u8| {
            for name in [CF_DEPOT, CF_STATE, CF_META] {
                let cf = store.cf(name).expect("family");
                for key in 0..keys {
                    let mut batch = WriteBatch::default();
                    batch.put_cf(cf, [key], [round; 100]);
                    store.db.write_opt(batch, &synced()).expect("write");
                }
            }
        };
        for round in 1..=2 {
            write_round(round, 64);
            for name in [CF_DEPOT, CF_STATE, CF_META] {
                store
                    .db
                    .flush_cf(store.cf(name).expect("family"))
                    .expect("flush");
            }
        }
        write_round(3, 16);
        let crashed = tempfile::tempdir().expect("tempdir");
        for entry in std::fs::read_dir(dir.path()).expect("read data directory") {
            let path = entry.expect("entry").path();
            if let Some(name) = path.file_name() {
                std::fs::copy(&path, crashed.path().join(name)).expect("copy");
            }
        }
        drop(store);
        let info_log = std::fs::read_to_string(dir.path().join("LOG")).expect("RocksDB's LOG");
        assert!(
            info_log.contains("from recycle list"),
            "no log file was written over"
        );

        let store = RocksStore::open(crashed.path(), 1 << 20).expect("reopen");
        for name in [CF_DEPOT, CF_STATE, CF_META] {
            let cf = store.cf(name).expect("family");
            for key in 0u8..64 {
                let value = store.db.get_cf(cf, [key]).expect("get");
                let round = if key < 16 { 3 } else { 2 };
                assert_eq!(value, Some(vec![round; 100]), "{name} key {key}");
            }
        }
        let info_log = std::fs::read_to_string(crashed.path().join("LOG")).expect("RocksDB's LOG");
        assert!(
            info_log.contains("possibly recycled"),
            "the replay did not meet a record of the file's earlier life"
        );
    }

    /// A commit's mark spans its synced write: taken once the write batch is built (nothing of
    /// the commit stored yet), dropped once the write is done (the commit record stored).
    #[test]
    fn a_commits_mark_spans_its_write() {
        struct Mark<'a> {
            store: &'a RocksStore,
            dropped: &'a std::cell::Cell<bool>,
        }
        impl Drop for Mark<'_> {
            fn drop(&mut self) {
                let stored = self.store.load_commit(7).expect("load");
                assert_eq!(
                    stored.map(|record| record.batch_id),
                    Some(1),
                    "written by the drop"
                );
                self.dropped.set(true);
            }
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RocksStore::open(dir.path(), 1 << 20).expect("open");
        let record = CommitRecord {
            batch_id: 1,
            offsets: Vec::new(),
        };
        let dropped = std::cell::Cell::new(false);
        store
            .commit_marked(
                BatchCommit {
                    topology_id: 7,
                    record: &record,
                    writes: &[[(b"key".to_vec(), Some(b"value".to_vec()))].into()],
                    deleted_ranges: &[],
                },
                || {
                    assert_eq!(store.load_commit(7).expect("load"), None, "not yet written");
                    Mark {
                        store: &store,
                        dropped: &dropped,
                    }
                },
            )
            .expect("commit");
        assert!(dropped.get(), "the mark ends with the write");
    }

    /// The pinned read lends exactly what the copying read returns: present values (empty ones
    /// too), deleted keys and keys never written.
    #[test]
    fn live_state_lends_what_it_would_copy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RocksStore::open(dir.path(), 1 << 20).expect("open");
        let writes: WriteSet = [
            (b"kept".to_vec(), Some(b"value".to_vec())),
            (b"empty".to_vec(), Some(Vec::new())),
            (b"gone".to_vec(), Some(b"soon deleted".to_vec())),
        ]
        .into();
        let first = CommitRecord {
            batch_id: 1,
            offsets: Vec::new(),
        };
        store
            .commit(BatchCommit {
                topology_id: 1,
                record: &first,
                writes: std::slice::from_ref(&writes),
                deleted_ranges: &[],
            })
            .expect("commit");
        // Into a table file, so that the reads below lend bytes pinned in a block, and the
        // delete below is a tombstone in the memtable over a value in a table.
        store
            .db
            .flush_cf(store.cf(CF_STATE).expect("state column family"))
            .expect("flush");
        let second = CommitRecord {
            batch_id: 2,
            offsets: Vec::new(),
        };
        store
            .commit(BatchCommit {
                topology_id: 1,
                record: &second,
                writes: &[[(b"gone".to_vec(), None)].into()],
                deleted_ranges: &[],
            })
            .expect("commit");

        let live = store.live().expect("live");
        for (key, expected) in [
            (&b"kept"[..], Some(&b"value"[..])),
            (b"empty", Some(b"")),
            (b"gone", None),
            (b"never", None),
        ] {
            let mut lent = None;
            live.get_with(key, &mut |value| lent = Some(value.map(<[u8]>::to_vec)))
                .expect("get_with");
            assert_eq!(lent, Some(expected.map(<[u8]>::to_vec)), "{key:?}");
            assert_eq!(live.get(key).expect("get"), expected.map(<[u8]>::to_vec));
        }
    }

    fn depot_entries(
        depot_id: u32,
        partition: u32,
        offsets: std::ops::Range<u64>,
    ) -> Vec<(u64, Vec<u8>)> {
        offsets
            .map(|offset| {
                (
                    offset,
                    format!("record {depot_id}/{partition}/{offset}").into_bytes(),
                )
            })
            .collect()
    }

    fn append_records(
        store: &RocksStore,
        depot_id: u32,
        partition: u32,
        offsets: std::ops::Range<u64>,
        trims: &[DepotTrim],
    ) {
        let records = depot_entries(depot_id, partition, offsets);
        let entries: Vec<DepotEntry<'_>> = records
            .iter()
            .map(|(offset, bytes)| DepotEntry {
                depot_id,
                partition,
                offset: *offset,
                seq: 1000 + offset,
                bytes,
            })
            .collect();
        store.append(&entries, &[], &[], trims).expect("append");
    }

    /// A trim deletes its partition's prefix and nothing else, moves the partition's start,
    /// and a read from below that start is refused as trimmed, while any other gap is still
    /// corruption; the partition's next offset and the log's largest sequence number hold,
    /// also after a flush (where RocksDB drops the deleted records) and a reopen.
    #[test]
    fn a_trim_deletes_a_prefix_and_reads_below_it_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RocksStore::open(dir.path(), 1 << 20).expect("open");
        append_records(&store, 1, 0, 0..10, &[]);
        append_records(&store, 1, 1, 0..10, &[]);
        assert_eq!(store.first_kept_offset(1, 0).expect("first kept"), 0);
        let trim = DepotTrim {
            depot_id: 1,
            partition: 0,
            previous_first_kept_offset: 0,
            first_kept_offset: 6,
        };
        // The trim travels with a later group's records, as the appender writes it.
        append_records(&store, 1, 0, 10..12, &[trim]);
        let check = |store: &RocksStore| {
            assert_eq!(store.first_kept_offset(1, 0).expect("first kept"), 6);
            assert_eq!(store.first_kept_offset(1, 1).expect("first kept"), 0);
            let kept: Vec<u64> = store
                .read(1, 0, 6, usize::MAX, usize::MAX)
                .expect("read kept")
                .iter()
                .map(|r| r.offset)
                .collect();
            assert_eq!(kept, (6..12).collect::<Vec<_>>());
            for from_offset in [0, 5] {
                assert_eq!(
                    store.read(1, 0, from_offset, usize::MAX, usize::MAX),
                    Err(StoreError::Trimmed {
                        depot_id: 1,
                        partition: 0,
                        from_offset,
                        first_kept_offset: 6
                    })
                );
            }
            let untouched = store.read(1, 1, 0, usize::MAX, usize::MAX).expect("read");
            assert_eq!(untouched.len(), 10);
            assert_eq!(store.next_offset(1, 0).expect("next offset"), 12);
            assert_eq!(store.next_offset(1, 1).expect("next offset"), 10);
            assert_eq!(store.max_seq().expect("max seq"), Some(1011));
        };
        check(&store);
        store
            .db
            .flush_cf(store.cf(CF_DEPOT).expect("depot cf"))
            .expect("flush");
        drop(store);
        let store = RocksStore::open(dir.path(), 1 << 20).expect("reopen");
        check(&store);

        // The records are gone, not only refused: a raw scan of the partition starts at the
        // mark.
        assert_eq!(
            store.depot_offsets_stored(1, 0),
            (6..12).collect::<Vec<_>>()
        );

        // A second trim deletes from where the first one stopped.
        let second = DepotTrim {
            depot_id: 1,
            partition: 0,
            previous_first_kept_offset: 6,
            first_kept_offset: 9,
        };
        append_records(&store, 1, 0, 12..13, &[second]);
        assert_eq!(store.first_kept_offset(1, 0).expect("first kept"), 9);
        assert_eq!(
            store.depot_offsets_stored(1, 0),
            (9..13).collect::<Vec<_>>()
        );
        assert!(matches!(
            store.read(1, 0, 3, usize::MAX, usize::MAX),
            Err(StoreError::Trimmed {
                first_kept_offset: 9,
                ..
            })
        ));
        let kept = store.read(1, 0, 9, usize::MAX, usize::MAX).expect("read");
        assert_eq!(
            kept.iter().map(|r| r.offset).collect::<Vec<_>>(),
            vec![9, 10, 11, 12]
        );

        // A hole the trim did not make is corruption, not a trim.
        store
            .db
            .delete_cf(store.cf(CF_DEPOT).expect("depot cf"), depot_key(1, 0, 11))
            .expect("delete");
        assert!(matches!(
            store.read(1, 0, 11, usize::MAX, usize::MAX),
            Err(StoreError::Corruption(_))
        ));
        assert!(matches!(
            store.read(1, 0, 9, usize::MAX, usize::MAX),
            Err(StoreError::Corruption(_))
        ));
    }

    /// A state key of the shapes the engine writes: a set element under a string key, a map
    /// entry under a string key, or an entry under a `u64` key (whose encoding holds `0x00`
    /// bytes anywhere), in two PStates and two partitions; strings from an alphabet heavy in
    /// the codec's markers.
    fn state_key() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let text = || {
            prop::collection::vec(prop::sample::select(vec!['a', 'b', '\0', 'ÿ']), 0..3)
                .prop_map(|chars| chars.into_iter().collect::<String>())
        };
        (
            1u32..3,
            0u32..2,
            prop_oneof![
                (text(), text()).prop_map(|(key, element)| {
                    let mut encoded = lockstep_core::encode_key(&key).expect("encode");
                    lockstep_core::encode_key_into(&element, &mut encoded).expect("encode");
                    encoded
                }),
                text().prop_map(|key| lockstep_core::encode_key(&key).expect("encode")),
                (0u64..600).prop_map(|key| lockstep_core::encode_key(&key).expect("encode")),
            ],
        )
            .prop_map(|(pstate_id, partition, encoded)| {
                lockstep_core::layout::entry_key(pstate_id, partition, &encoded)
            })
    }

    /// One round of writes: each key put (with a value naming the round) or deleted.
    type Round = Vec<(Vec<u8>, bool)>;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// Scans of the state family (live and snapshot, prefix mode where the range allows it,
        /// total order elsewhere) return exactly what a model holds, whether the entries and
        /// their tombstones sit in the memtable, in table files filtered by bloom prefix, or in
        /// a table file an older build wrote without a prefix extractor.
        #[test]
        fn state_scans_match_a_model_across_memtables_and_table_files(
            old_round in proptest::collection::vec((state_key(), proptest::bool::ANY), 0..30),
            rounds in proptest::collection::vec(
                (proptest::collection::vec((state_key(), proptest::bool::ANY), 1..30), proptest::bool::ANY),
                1..5,
            ),
            probes in proptest::collection::vec((state_key(), state_key(), 1usize..8), 1..20),
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut model = std::collections::BTreeMap::<Vec<u8>, Vec<u8>>::new();
            apply_round_without_extractor(dir.path(), &old_round, &mut model);
            let store = RocksStore::open(dir.path(), 1 << 20).expect("open");
            for (batch_id, (round, flush)) in rounds.iter().enumerate() {
                let mut writes = WriteSet::new();
                for (key, put) in round {
                    let value = format!("round {batch_id}").into_bytes();
                    if *put {
                        model.insert(key.clone(), value.clone());
                    } else {
                        model.remove(key);
                    }
                    writes.insert(key.clone(), put.then_some(value));
                }
                let record = CommitRecord { batch_id: batch_id as u64 + 1, offsets: Vec::new() };
                store
                    .commit(BatchCommit {
                        topology_id: 1,
                        record: &record,
                        writes: std::slice::from_ref(&writes),
                        deleted_ranges: &[],
                    })
                    .expect("commit");
                if *flush {
                    store.db.flush_cf(store.cf(CF_STATE).expect("state")).expect("flush");
                }
                let live = store.live().expect("live");
                let snapshot = store.snapshot().expect("snapshot");
                for (a, b, limit) in &probes {
                    // Both a set's whole range (prefix mode) and an arbitrary one (mostly
                    // total order).
                    let (set_from, set_to) = lockstep_core::layout::prefix_range(a);
                    for (from, to) in [(set_from, set_to), (a.min(b).clone(), a.max(b).clone())] {
                        let expected: Vec<Entry> = model
                            .range(from.clone()..to.clone())
                            .take(*limit)
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect();
                        proptest::prop_assert_eq!(&live.scan(&from, &to, *limit).expect("scan"), &expected);
                        proptest::prop_assert_eq!(&snapshot.scan(&from, &to, *limit).expect("scan"), &expected);
                    }
                }
            }
            let all: Vec<Entry> = model.into_iter().collect();
            proptest::prop_assert_eq!(store.state_entries().expect("entries"), all);
        }
    }

    /// Writes `round` into the state family of a database opened without a prefix extractor, as
    /// builds before it wrote, flushed into a table file.
    fn apply_round_without_extractor(
        path: &Path,
        round: &Round,
        model: &mut std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
    ) {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let db = DB::open_cf(&options, path, [CF_DEPOT, CF_STATE, CF_META]).expect("open");
        let cf = db.cf_handle(CF_STATE).expect("state");
        for (key, put) in round {
            if *put {
                db.put_cf(cf, key, b"old").expect("put");
                model.insert(key.clone(), b"old".to_vec());
            } else {
                db.delete_cf(cf, key).expect("delete");
                model.remove(key);
            }
        }
        db.flush_cf(cf).expect("flush");
    }
}

//! A bounded in-memory cache of committed state, in front of RocksDB, for handlers' point reads
//! and set scans.
//!
//! Handlers read before they write (is this id free, does the parent exist, what is the count),
//! and mostly what was written lately: a component is updated, reparented or given children
//! soon after it is created. Those keys sit in the memtable, whose skiplist grows to millions
//! of entries under a steady load; searching it and comparing its keys took a fifth of the
//! whole process's CPU in a profile of such a load, with the cache off (benches/EXPERIMENTS.md,
//! *A write-through state cache, on by default*). A hash lookup costs a fraction of that. So
//! the cache is filled from both sides:
//!
//! - **Write-through.** A topology's batch commit, the one writer of its keys, inserts every
//!   entry it wrote to a map PState once the commit is durable (deletions as cached absence).
//!   Entries of set PStates are refreshed only if cached (a `set_contains` may have read them);
//!   outcomes are skipped without a lookup, as no handler reads them.
//! - **Filled on a miss**, when the key exists. A miss on an absent key is not cached: RocksDB's
//!   Bloom filters confirm absence cheaply, and every create reads its fresh id first, so
//!   caching those misses only churned the cache.
//!
//! Coherence rests on who can read while a commit refreshes. The only reader that can run then
//! is the topology's next batch, executing while the commit is in flight (pipelining), and it
//! reads every key the committing batch wrote from that batch's write sets (`Overlaid`, laid
//! over this cache), never from here; the batch after it starts once the refresh is done. A
//! miss here is filled from RocksDB without excluding the refresh, which is safe only for that
//! reason: the key it fills is not one the refresh writes. No topology reads another's keys.
//! Snapshots never use the cache: they read RocksDB at a point in time.
//!
//! **Set scans.** A scan of a set PState within one bloom group (`layout::bloom_prefix`: for a
//! string-keyed set, one set) is answered from the group's cached elements when it holds at
//! most [`GROUP_ENTRIES_MAX`]. Hot sets change in nearly every batch, so each RocksDB scan of
//! one seeks every memtable and table file and walks every version of every element the
//! memtable holds, tombstones included: some 13 internal entries and several microseconds a
//! scan, and over 40% of the driver's time in a sustained component run (benches/EXPERIMENTS.md,
//! *Set scans from the cache*). A commit refreshes each cached group it wrote into, in place, as
//! it refreshes point entries. Empty groups are cached too (a deleted component's children);
//! the cache's eviction keeps the hot ones. A group is filled on a miss, and that fill may race a
//! commit of the same group (a pipelined batch scans the committed state under the committing
//! batch's writes, unlike its point reads): a fill is kept only if no commit refreshed the
//! cache between the fill's read and its insert (`groups_refreshed`, counted under the lock
//! that also orders the insert against the next refresh), so a fill from before a commit's
//! write is either refreshed by that commit's refresh, which follows it, or dropped.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use lockstep_core::layout::{
    bloom_group_end, bloom_prefix, key_pstate_id, range_bloom_prefix, PARTITION_PREFIX_BYTES,
};
use lockstep_core::store::{Entry, StateRead, StoreError, WriteSet};
use quick_cache::sync::{Cache, DefaultLifecycle};
use quick_cache::Weighter;
use xxhash_rust::xxh3::Xxh3DefaultBuilder;

/// Bookkeeping bytes an entry costs beyond its key and value (hash slot, `Arc`, `Vec` headers).
const ENTRY_OVERHEAD_BYTES: u64 = 64;

/// A cached lookup: the value, or that there is none.
type Cached = Option<Arc<[u8]>>;

#[derive(Debug, Clone, Copy)]
struct EntryBytes;

impl Weighter<Vec<u8>, Cached> for EntryBytes {
    fn weight(&self, key: &Vec<u8>, value: &Cached) -> u64 {
        key.len() as u64 + value.as_ref().map_or(0, |v| v.len() as u64) + ENTRY_OVERHEAD_BYTES
    }
}

/// Most elements a bloom group may hold to be cached: a scan of a larger one reads RocksDB.
pub(crate) const GROUP_ENTRIES_MAX: usize = 64;

/// A cached bloom group (keyed by its prefix): its entries in key order, or that it holds more
/// than [`GROUP_ENTRIES_MAX`].
#[derive(Debug, Clone)]
enum Group {
    Complete(Arc<[Entry]>),
    TooLarge,
}

#[derive(Debug, Clone, Copy)]
struct GroupBytes;

impl Weighter<Vec<u8>, Group> for GroupBytes {
    fn weight(&self, prefix: &Vec<u8>, group: &Group) -> u64 {
        let entries = match group {
            Group::Complete(entries) => entries
                .iter()
                .map(|(key, value)| (key.len() + value.len()) as u64 + ENTRY_OVERHEAD_BYTES)
                .sum(),
            Group::TooLarge => 0,
        };
        prefix.len() as u64 + ENTRY_OVERHEAD_BYTES + entries
    }
}

/// A commit's write to a set, with its bloom group: `(prefix, key, value)`.
type GroupWrite<'a> = (&'a [u8], &'a [u8], &'a Option<Vec<u8>>);

/// The share of the cache's bytes its bloom groups may use (the rest is for point entries).
const GROUP_BYTES_DIVISOR: u64 = 8;

pub(crate) struct StateCache {
    /// A fixed hasher, not a randomly seeded one: which entries are evicted is then the same
    /// on every run, so a simulation seed replays evictions too.
    entries: Cache<Vec<u8>, Cached, EntryBytes, Xxh3DefaultBuilder>,
    /// Set PStates' bloom groups, by prefix.
    groups: Cache<Vec<u8>, Group, GroupBytes, Xxh3DefaultBuilder>,
    /// How many commits have refreshed `groups`. Held while a commit refreshes them and while
    /// a fill checks it and inserts, so that a fill is inserted either before a refresh (which
    /// then updates it) or not at all.
    groups_refreshed: Mutex<u64>,
}

impl std::fmt::Debug for StateCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateCache")
            .field("entries", &self.entries.len())
            .field("bytes", &self.entries.weight())
            .field("groups", &self.groups.len())
            .field("group_bytes", &self.groups.weight())
            .finish()
    }
}

impl StateCache {
    /// A cache of at most `bytes_max` bytes; `None` (no cache) for 0.
    pub(crate) fn new(bytes_max: usize) -> Option<Self> {
        if bytes_max == 0 {
            return None;
        }
        let bytes_max = bytes_max as u64;
        let group_bytes_max = bytes_max / GROUP_BYTES_DIVISOR;
        let entry_bytes_max = bytes_max - group_bytes_max;
        let items_estimate = (entry_bytes_max / (ENTRY_OVERHEAD_BYTES * 2)).max(16) as usize;
        let groups_estimate = (group_bytes_max / (ENTRY_OVERHEAD_BYTES * 8)).max(16) as usize;
        Some(Self {
            entries: Cache::with(
                items_estimate,
                entry_bytes_max,
                EntryBytes,
                Xxh3DefaultBuilder::new(),
                DefaultLifecycle::default(),
            ),
            groups: Cache::with(
                groups_estimate,
                group_bytes_max,
                GroupBytes,
                Xxh3DefaultBuilder::new(),
                DefaultLifecycle::default(),
            ),
            groups_refreshed: Mutex::new(0),
        })
    }

    fn lock_groups_refreshed(&self) -> MutexGuard<'_, u64> {
        // The count is only ever incremented; a panic elsewhere cannot leave it torn.
        self.groups_refreshed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts what a durable commit wrote into the cache, as `policy` says for each key's
    /// PState. An insert or a refresh that the cache declines (a value heavier than it allows)
    /// leaves no entry for the key, so a write never leaves a stale entry behind: quick_cache
    /// drops the old entry of a declined insert itself (`a_value_too_heavy_*` tests pin that),
    /// and a declined refresh is removed here.
    ///
    /// Deleting a map entry caches its absence: a tombstone in the memtable would otherwise
    /// cost a skiplist walk to read. The range deletions a commit makes
    /// (`BatchCommit::deleted_ranges`) are not seen here: they lie in the outcome table, which
    /// is never cached, and the commit refuses any that does not (`commit_batch`), since
    /// neither this cache nor a pipelined batch's pending state could follow a range deletion
    /// anywhere else.
    ///
    /// Entries that are only refreshed are looked up by reference first, as most are not
    /// cached: copying each key and value only to have `replace` decline it was a quarter to a
    /// third of what the cache added to the committer's time. Checking and then replacing is
    /// not racy: no reader fills a key this commit wrote until it returns (see the module
    /// doc), and an entry evicted in between makes `replace` decline, leaving nothing stale.
    ///
    /// Set writes also refresh their bloom group if it is cached. Writes come in key order and
    /// a group is contiguous, so each group's writes are applied together.
    pub(crate) fn apply(&self, writes: &[WriteSet], policy: &CachePolicy) {
        // Each set write's bloom group, with the write: in key order, so a group's writes are
        // adjacent. Refreshed below under the lock, which fills of other batches wait for.
        let mut group_writes: Vec<GroupWrite<'_>> = Vec::new();
        for (key, value) in writes.iter().flatten() {
            match policy.on_write(key) {
                OnWrite::Skip => {}
                OnWrite::Insert => self
                    .entries
                    .insert(key.to_vec(), value.as_deref().map(Arc::from)),
                OnWrite::RefreshIfCached => {
                    if self.entries.contains_key(key.as_ref()) {
                        let refreshed = self.entries.replace(
                            key.to_vec(),
                            value.as_deref().map(Arc::from),
                            true,
                        );
                        if refreshed.is_err() {
                            self.entries.remove(key.as_ref());
                        }
                    }
                    if key.len() >= PARTITION_PREFIX_BYTES {
                        group_writes.push((bloom_prefix(key), key, value));
                    }
                }
            }
        }
        let mut refreshed = self.lock_groups_refreshed();
        *refreshed += 1;
        for one_group in group_writes.chunk_by(|a, b| a.0 == b.0) {
            self.refresh_group(one_group[0].0, one_group);
        }
    }

    /// Applies one commit's writes (in key order) to the bloom group `prefix`, if cached. A
    /// group grown past [`GROUP_ENTRIES_MAX`] becomes a marker, which stays however the group
    /// shrinks (until evicted: its scans read the store, as they would uncached); a group whose
    /// new entries the cache declines is dropped, to be read again.
    fn refresh_group(&self, prefix: &[u8], writes: &[GroupWrite<'_>]) {
        let Some(Group::Complete(entries)) = self.groups.peek(prefix) else {
            return;
        };
        let mut entries = entries.to_vec();
        for (_, key, value) in writes {
            let at = entries.binary_search_by(|(entry_key, _)| entry_key.as_slice().cmp(*key));
            match (at, value) {
                (Ok(at), Some(value)) => entries[at].1.clone_from(value),
                (Err(at), Some(value)) => entries.insert(at, (key.to_vec(), value.clone())),
                (Ok(at), None) => {
                    entries.remove(at);
                }
                (Err(_), None) => {}
            }
        }
        let group = if entries.len() > GROUP_ENTRIES_MAX {
            Group::TooLarge
        } else {
            Group::Complete(entries.into())
        };
        if self.groups.replace(prefix.to_vec(), group, true).is_err() {
            self.groups.remove(prefix);
        }
    }

    /// The cached group `prefix`, if any.
    fn group(&self, prefix: &[u8]) -> Option<Group> {
        self.groups.get(prefix)
    }

    /// Caches `group`, read from the store after `refreshed_before` commits had refreshed the
    /// groups, unless another has since (its write may be missing from what was read).
    fn fill_group(&self, prefix: &[u8], group: Group, refreshed_before: u64) {
        let refreshed = self.lock_groups_refreshed();
        if *refreshed == refreshed_before {
            self.groups.insert(prefix.to_vec(), group);
        }
    }

    fn groups_refreshed(&self) -> u64 {
        *self.lock_groups_refreshed()
    }
}

/// What a topology's commit does with each key it wrote, by the key's PState (a laid-out
/// key's first four bytes, `lockstep_core::layout`).
#[derive(Debug, Clone)]
pub(crate) struct CachePolicy {
    /// The topology's map PStates, sorted: their written entries are inserted.
    map_pstate_ids: Vec<u32>,
    /// The topology's outcome table: never cached, as no handler can read it (`Ctx` resolves
    /// only the topology's declared PStates). A read of it through the cache would break
    /// this: such a read must not fill the cache, or the skip must become a refresh.
    outcome_pstate_id: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnWrite {
    Insert,
    RefreshIfCached,
    Skip,
}

impl CachePolicy {
    pub(crate) fn new(mut map_pstate_ids: Vec<u32>, outcome_pstate_id: u32) -> Self {
        map_pstate_ids.sort_unstable();
        map_pstate_ids.dedup();
        Self {
            map_pstate_ids,
            outcome_pstate_id,
        }
    }

    /// Whether scans of `key`'s PState may be answered from cached bloom groups: those of set
    /// PStates, whose commits refresh them (`StateCache::apply`).
    fn caches_groups(&self, key: &[u8]) -> bool {
        self.on_write(key) == OnWrite::RefreshIfCached
    }

    fn on_write(&self, key: &[u8]) -> OnWrite {
        // A key too short to name a PState is refreshed if cached: the safe choice for a key
        // this policy cannot place.
        let Some(pstate_id) = key_pstate_id(key) else {
            return OnWrite::RefreshIfCached;
        };
        if pstate_id == self.outcome_pstate_id {
            OnWrite::Skip
        } else if self.map_pstate_ids.binary_search(&pstate_id).is_ok() {
            OnWrite::Insert
        } else {
            OnWrite::RefreshIfCached
        }
    }
}

/// Committed state read through the cache.
pub(crate) struct CachedState<'a, S> {
    pub(crate) base: S,
    pub(crate) cache: &'a StateCache,
    /// The reading topology's: which scans bloom groups may answer.
    pub(crate) policy: &'a CachePolicy,
}

impl<S: StateRead> StateRead for CachedState<'_, S> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(cached) = self.cache.entries.get(key) {
            return Ok(cached.map(|value| value.to_vec()));
        }
        let value = self.base.get(key)?;
        if let Some(found) = &value {
            self.cache
                .entries
                .insert(key.to_vec(), Some(Arc::from(found.as_slice())));
        }
        Ok(value)
    }

    fn get_with(&self, key: &[u8], visit: &mut dyn FnMut(Option<&[u8]>)) -> Result<(), StoreError> {
        if let Some(cached) = self.cache.entries.get(key) {
            visit(cached.as_deref());
            return Ok(());
        }
        // A miss is copied once, from the store's pinned bytes into the entry the cache keeps,
        // so the handler reads the bytes the cache will hold.
        let mut value: Cached = None;
        self.base
            .get_with(key, &mut |found| value = found.map(Arc::from))?;
        visit(value.as_deref());
        if value.is_some() {
            self.cache.entries.insert(key.to_vec(), value);
        }
        Ok(())
    }

    fn scan(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError> {
        let Some(prefix) = range_bloom_prefix(from, to).filter(|_| self.policy.caches_groups(from))
        else {
            return self.base.scan(from, to, limit);
        };
        let entries = match self.cache.group(prefix) {
            Some(Group::Complete(entries)) => entries,
            Some(Group::TooLarge) => return self.base.scan(from, to, limit),
            None => {
                let refreshed_before = self.cache.groups_refreshed();
                let group_end = bloom_group_end(prefix);
                let read = self.base.scan(prefix, &group_end, GROUP_ENTRIES_MAX + 1)?;
                if read.len() > GROUP_ENTRIES_MAX {
                    self.cache
                        .fill_group(prefix, Group::TooLarge, refreshed_before);
                    return self.base.scan(from, to, limit);
                }
                let entries: Arc<[Entry]> = read.into();
                self.cache.fill_group(
                    prefix,
                    Group::Complete(Arc::clone(&entries)),
                    refreshed_before,
                );
                entries
            }
        };
        let start = entries.partition_point(|(key, _)| key.as_slice() < from);
        Ok(entries[start..]
            .iter()
            .take_while(|(key, _)| key.as_slice() < to)
            .take(limit)
            .cloned()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// A store that counts its reads, and can run a commit in the middle of its next scan
    /// (after reading, before returning), as a commit may race a pipelined batch's scan.
    #[derive(Default)]
    struct Counting {
        entries: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
        reads: Mutex<u64>,
        during_next_scan: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    }

    impl StateRead for Counting {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            *self.reads.lock().expect("lock") += 1;
            Ok(self.entries.lock().expect("lock").get(key).cloned())
        }

        fn scan(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<Entry>, StoreError> {
            *self.reads.lock().expect("lock") += 1;
            let read = if from < to {
                self.entries
                    .lock()
                    .expect("lock")
                    .range(from.to_vec()..to.to_vec())
                    .take(limit)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            } else {
                Vec::new()
            };
            let during = self.during_next_scan.lock().expect("lock").take();
            if let Some(during) = during {
                during();
            }
            Ok(read)
        }
    }

    /// What a lent read of `key` hands its reader, copied out.
    fn lent(state: &impl StateRead, key: &[u8]) -> Option<Vec<u8>> {
        let mut lent = None;
        state
            .get_with(key, &mut |value| lent = Some(value.map(<[u8]>::to_vec)))
            .expect("get_with");
        lent.expect("get_with calls its visitor")
    }

    const MAP: u32 = 1;
    const SET: u32 = 2;
    const OUTCOMES: u32 = 3;

    fn policy() -> CachePolicy {
        CachePolicy::new(vec![MAP], OUTCOMES)
    }

    static POLICY: std::sync::LazyLock<CachePolicy> = std::sync::LazyLock::new(policy);

    /// `store` read through `cache`, under the tests' policy.
    fn cached<'a, S: StateRead>(store: &'a S, cache: &'a StateCache) -> CachedState<'a, &'a S> {
        CachedState {
            base: store,
            cache,
            policy: &POLICY,
        }
    }

    /// A laid-out key of PState `pstate_id`.
    fn key(pstate_id: u32, name: &[u8]) -> Vec<u8> {
        let mut key = pstate_id.to_be_bytes().to_vec();
        key.extend_from_slice(name);
        key
    }

    fn commit(store: &Counting, cache: &StateCache, writes: WriteSet) {
        let mut entries = store.entries.lock().expect("lock");
        for (key, value) in &writes {
            match value {
                Some(value) => entries.insert(key.to_vec(), value.clone()),
                None => entries.remove(key),
            };
        }
        drop(entries);
        cache.apply(&[writes], &policy());
    }

    fn reads(store: &Counting) -> u64 {
        *store.reads.lock().expect("lock")
    }

    #[test]
    fn map_writes_go_through_and_present_misses_fill() {
        let store = Counting::default();
        let cache = StateCache::new(1 << 20).expect("cache");
        let state = cached(&store, &cache);
        let a = key(MAP, b"a");
        assert_eq!(state.get(&a).expect("get"), None);
        assert_eq!(state.get(&a).expect("get"), None);
        assert_eq!(lent(&state, &a), None);
        assert_eq!(lent(&state, &a), None);
        assert_eq!(
            reads(&store),
            4,
            "a miss on an absent key is not cached, read or lent"
        );

        commit(&store, &cache, [(a.clone(), Some(b"1".to_vec()))].into());
        assert_eq!(state.get(&a).expect("get"), Some(b"1".to_vec()));
        assert_eq!(lent(&state, &a), Some(b"1".to_vec()));
        assert_eq!(
            reads(&store),
            4,
            "the commit put what it wrote in the cache"
        );
        commit(&store, &cache, [(a.clone(), None)].into());
        assert_eq!(state.get(&a).expect("get"), None);
        assert_eq!(reads(&store), 4, "a deletion is cached as absence");

        // A key present in the store but not cached is read once, then from the cache.
        let b = key(MAP, b"b");
        store
            .entries
            .lock()
            .expect("lock")
            .insert(b.clone(), b"2".to_vec());
        for _ in 0..2 {
            assert_eq!(lent(&state, &b), Some(b"2".to_vec()));
        }
        assert_eq!(reads(&store), 5);
    }

    #[test]
    fn set_entries_are_refreshed_only_if_cached_and_outcomes_never_cached() {
        let store = Counting::default();
        let cache = StateCache::new(1 << 20).expect("cache");
        let state = cached(&store, &cache);
        let element = key(SET, b"parent/child");
        commit(&store, &cache, [(element.clone(), Some(Vec::new()))].into());
        assert!(
            !cache.entries.contains_key(&element),
            "not read, not cached"
        );
        assert_eq!(state.get(&element).expect("get"), Some(Vec::new()));
        assert!(cache.entries.contains_key(&element), "filled by the read");
        commit(&store, &cache, [(element.clone(), None)].into());
        assert_eq!(
            state.get(&element).expect("get"),
            None,
            "the commit refreshed the cached element"
        );
        assert_eq!(reads(&store), 1);

        let outcome = key(OUTCOMES, b"record");
        commit(
            &store,
            &cache,
            [(outcome.clone(), Some(b"ok".to_vec()))].into(),
        );
        assert!(!cache.entries.contains_key(&outcome));

        // A key too short to name its PState is treated as possibly cached.
        let short = b"ab".to_vec();
        store
            .entries
            .lock()
            .expect("lock")
            .insert(short.clone(), b"1".to_vec());
        assert_eq!(state.get(&short).expect("get"), Some(b"1".to_vec()));
        commit(
            &store,
            &cache,
            [(short.clone(), Some(b"2".to_vec()))].into(),
        );
        assert_eq!(state.get(&short).expect("get"), Some(b"2".to_vec()));
    }

    #[test]
    fn a_value_too_heavy_to_cache_drops_the_stale_entry() {
        let store = Counting::default();
        let cache = StateCache::new(16 << 10).expect("cache");
        let state = cached(&store, &cache);
        let a = key(MAP, b"a");
        commit(
            &store,
            &cache,
            [(a.clone(), Some(b"small".to_vec()))].into(),
        );
        assert!(cache.entries.contains_key(&a));
        let heavy = vec![7u8; 64 << 10];
        commit(&store, &cache, [(a.clone(), Some(heavy.clone()))].into());
        assert_eq!(state.get(&a).expect("get"), Some(heavy.clone()));
        assert_eq!(reads(&store), 1, "read from the store, not a stale entry");

        // The same for a refresh: a cached set element whose new value is too heavy.
        let element = key(SET, b"parent/child");
        store
            .entries
            .lock()
            .expect("lock")
            .insert(element.clone(), Vec::new());
        assert_eq!(state.get(&element).expect("get"), Some(Vec::new()));
        assert!(cache.entries.contains_key(&element));
        commit(
            &store,
            &cache,
            [(element.clone(), Some(heavy.clone()))].into(),
        );
        assert!(!cache.entries.contains_key(&element));
        assert_eq!(state.get(&element).expect("get"), Some(heavy));
        assert_eq!(reads(&store), 3);
    }

    #[test]
    fn the_cache_stays_within_its_bytes_and_coherent_under_eviction() {
        let store = Counting::default();
        let cache = StateCache::new(16 << 10).expect("cache");
        let state = cached(&store, &cache);
        for round in 0..5u32 {
            for i in 0..2_000u32 {
                let entry = key(MAP, &i.to_be_bytes());
                let value = (i + round).to_be_bytes().to_vec();
                commit(
                    &store,
                    &cache,
                    [(entry.clone(), Some(value.clone()))].into(),
                );
                assert_eq!(state.get(&entry).expect("get"), Some(value));
            }
            assert!(cache.entries.weight() <= 16 << 10);
        }
        for i in 0..2_000u32 {
            let entry = key(MAP, &i.to_be_bytes());
            assert_eq!(
                state.get(&entry).expect("get"),
                Some((i + 4).to_be_bytes().to_vec())
            );
        }
    }

    /// The laid-out key of `element` in the set `set_key` of the set PState (partition 0).
    fn element(set_key: &str, element: &str) -> Vec<u8> {
        let mut encoded = lockstep_core::encode_key(&set_key).expect("encode");
        lockstep_core::encode_key_into(&element, &mut encoded).expect("encode");
        lockstep_core::layout::entry_key(SET, 0, &encoded)
    }

    /// The range a scan of the whole set `set_key` reads.
    fn set_range(set_key: &str) -> (Vec<u8>, Vec<u8>) {
        let encoded = lockstep_core::encode_key(&set_key).expect("encode");
        lockstep_core::layout::prefix_range(&lockstep_core::layout::entry_key(SET, 0, &encoded))
    }

    fn scan(state: &impl StateRead, (from, to): &(Vec<u8>, Vec<u8>), limit: usize) -> Vec<Vec<u8>> {
        state
            .scan(from, to, limit)
            .expect("scan")
            .into_iter()
            .map(|(key, _)| key)
            .collect()
    }

    /// A set's scan is read from the store once, then answered from its cached group, which
    /// commits keep current (adds, removes, a value rewritten); a group grown past the limit
    /// is read from the store again; map scans are never cached.
    #[test]
    fn set_scans_answer_from_cached_groups_that_commits_refresh() {
        let store = Counting::default();
        let cache = StateCache::new(1 << 20).expect("cache");
        let state = cached(&store, &cache);
        let parent = set_range("parent");
        commit(
            &store,
            &cache,
            [(element("parent", "a"), Some(Vec::new()))].into(),
        );
        assert_eq!(scan(&state, &parent, 10), vec![element("parent", "a")]);
        assert_eq!(reads(&store), 1);
        assert_eq!(scan(&state, &parent, 10), vec![element("parent", "a")]);
        assert_eq!(scan(&state, &parent, 0), Vec::<Vec<u8>>::new());
        assert_eq!(reads(&store), 1, "answered from the cached group");

        commit(
            &store,
            &cache,
            [
                (element("parent", "a"), None),
                (element("parent", "b"), Some(Vec::new())),
                (element("parent", "c"), Some(Vec::new())),
                (element("other", "x"), Some(Vec::new())),
            ]
            .into(),
        );
        assert_eq!(
            scan(&state, &parent, 10),
            vec![element("parent", "b"), element("parent", "c")]
        );
        assert_eq!(scan(&state, &parent, 1), vec![element("parent", "b")]);
        // A page after "b": a range within the group.
        let after_b = (element("parent", "b\0"), parent.1.clone());
        assert_eq!(scan(&state, &after_b, 10), vec![element("parent", "c")]);
        assert_eq!(reads(&store), 1, "the commit refreshed the group in place");

        // An empty set is cached as an empty group.
        let empty = set_range("nobody");
        assert!(scan(&state, &empty, 10).is_empty());
        assert!(scan(&state, &empty, 10).is_empty());
        assert_eq!(reads(&store), 2);

        // Past the limit: a marker, and every scan reads the store.
        let many: WriteSet = (0..=GROUP_ENTRIES_MAX)
            .map(|i| (element("parent", &format!("{i:03}")), Some(Vec::new())))
            .collect();
        commit(&store, &cache, many);
        let all = scan(&state, &parent, 1000);
        assert_eq!(all.len(), GROUP_ENTRIES_MAX + 3);
        let reads_before = reads(&store);
        assert_eq!(scan(&state, &parent, 1000), all);
        assert_eq!(reads(&store), reads_before + 1);
        // The marker stays as the group shrinks: its scans read the store, and see it shrink.
        let fewer: WriteSet = (0..=GROUP_ENTRIES_MAX)
            .map(|i| (element("parent", &format!("{i:03}")), None))
            .collect();
        commit(&store, &cache, fewer);
        let reads_before = reads(&store);
        assert_eq!(scan(&state, &parent, 10).len(), 2);
        assert_eq!(scan(&state, &parent, 10).len(), 2);
        assert_eq!(reads(&store), reads_before + 2);

        // A map's scans always read the store.
        let map_range = lockstep_core::layout::prefix_range(&lockstep_core::layout::entry_key(
            MAP,
            0,
            &lockstep_core::encode_key(&"k").expect("encode"),
        ));
        let reads_before = reads(&store);
        scan(&state, &map_range, 10);
        scan(&state, &map_range, 10);
        assert_eq!(reads(&store), reads_before + 2);
    }

    /// A group read from the store before a commit's write, and filled after that commit's
    /// refresh, would be stale forever: the fill is dropped, and the next scan reads the
    /// commit's elements. A fill that no commit raced is kept and refreshed.
    #[test]
    fn a_fill_that_races_a_commit_is_not_kept() {
        let store = Arc::new(Counting::default());
        let cache = Arc::new(StateCache::new(1 << 20).expect("cache"));
        let state = cached(&*store, &cache);
        let parent = set_range("parent");
        let (racing_store, racing_cache) = (Arc::clone(&store), Arc::clone(&cache));
        *store.during_next_scan.lock().expect("lock") = Some(Box::new(move || {
            commit(
                &racing_store,
                &racing_cache,
                [(element("parent", "new"), Some(Vec::new()))].into(),
            );
        }));
        assert!(
            scan(&state, &parent, 10).is_empty(),
            "read before the commit"
        );
        assert_eq!(scan(&state, &parent, 10), vec![element("parent", "new")]);
        assert_eq!(scan(&state, &parent, 10), vec![element("parent", "new")]);
        assert_eq!(
            reads(&store),
            2,
            "the second fill raced nothing and was kept"
        );
        commit(&store, &cache, [(element("parent", "new"), None)].into());
        assert!(scan(&state, &parent, 10).is_empty());
        assert_eq!(reads(&store), 2);
    }

    proptest::proptest! {
        /// Scans through the cache, of whole sets and of pages within them, equal the store's,
        /// over commits of puts and deletes to a few sets (some past the group limit), with a
        /// cache small enough to evict.
        #[test]
        fn cached_scans_equal_the_stores(
            steps in proptest::collection::vec(
                (
                    proptest::collection::vec((0usize..3, 0usize..80, proptest::bool::ANY), 0..40),
                    0usize..3,
                    0usize..80,
                    1usize..100,
                ),
                1..30,
            ),
            cache_bytes in proptest::sample::select(vec![4usize << 10, 1 << 20]),
        ) {
            let sets = ["a", "a\0b", "ab"];
            let store = Counting::default();
            let cache = StateCache::new(cache_bytes).expect("cache");
            let state = cached(&store, &cache);
            for (writes, set, after, limit) in steps {
                let writes: WriteSet = writes
                    .into_iter()
                    .map(|(set, i, put)| {
                        (element(sets[set], &format!("{i:02}")), put.then(|| vec![i as u8]))
                    })
                    .collect();
                commit(&store, &cache, writes);
                let whole = set_range(sets[set]);
                let page = (element(sets[set], &format!("{after:02}")), whole.1.clone());
                for range in [whole, page] {
                    let through_cache = state.scan(&range.0, &range.1, limit).expect("scan");
                    let from_store = store.scan(&range.0, &range.1, limit).expect("scan");
                    proptest::prop_assert_eq!(through_cache, from_store);
                }
            }
        }
    }
}

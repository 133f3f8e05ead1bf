//! A bounded in-memory cache of committed state, in front of RocksDB, for handlers' point reads.
//!
//! Handlers read before they write (is this id free, does the parent exist, what is the count),
//! and mostly what was written lately: a component is updated, reparented or given children
//! soon after it is created. Those keys sit in the memtable, whose skiplist grows to millions
//! of entries under a steady load; searching it and comparing its keys took a fifth of the
//! whole process's CPU in a profile of such a load, with the cache off (BENCHMARKS.md, *A
//! write-through state cache, on by default*). A hash lookup costs a fraction of that. So
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

use std::sync::Arc;

use lockstep_core::layout::key_pstate_id;
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

pub(crate) struct StateCache {
    /// A fixed hasher, not a randomly seeded one: which entries are evicted is then the same
    /// on every run, so a simulation seed replays evictions too.
    entries: Cache<Vec<u8>, Cached, EntryBytes, Xxh3DefaultBuilder>,
}

impl std::fmt::Debug for StateCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateCache")
            .field("entries", &self.entries.len())
            .field("bytes", &self.entries.weight())
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
        let items_estimate = (bytes_max / (ENTRY_OVERHEAD_BYTES * 2)).max(16) as usize;
        Some(Self {
            entries: Cache::with(
                items_estimate,
                bytes_max,
                EntryBytes,
                Xxh3DefaultBuilder::new(),
                DefaultLifecycle::default(),
            ),
        })
    }

    /// Puts what a durable commit wrote into the cache, as `policy` says for each key's
    /// PState. An insert or a refresh that the cache declines (a value heavier than it allows)
    /// leaves no entry for the key, so a write never leaves a stale entry behind: quick_cache
    /// drops the old entry of a declined insert itself (`a_value_too_heavy_*` tests pin that),
    /// and a declined refresh is removed here.
    ///
    /// Deleting a map entry caches its absence: a tombstone in the memtable would otherwise
    /// pass the memtable's Bloom filter and cost a skiplist walk to read. The range deletions
    /// a commit makes (`BatchCommit::deleted_ranges`) are not seen here: they lie in the
    /// outcome table, which is never cached, and the commit refuses any that does not
    /// (`commit_batch`), since neither this cache nor a pipelined batch's pending state could
    /// follow a range deletion anywhere else.
    ///
    /// Entries that are only refreshed are looked up by reference first, as most are not
    /// cached: copying each key and value only to have `replace` decline it was a quarter to a
    /// third of what the cache added to the committer's time. Checking and then replacing is
    /// not racy: no reader fills a key this commit wrote until it returns (see the module
    /// doc), and an entry evicted in between makes `replace` decline, leaving nothing stale.
    pub(crate) fn apply(&self, writes: &[WriteSet], policy: &CachePolicy) {
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
                }
            }
        }
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
        self.base.scan(from, to, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// A store that counts its reads.
    #[derive(Default)]
    struct Counting {
        entries: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
        reads: Mutex<u64>,
    }

    impl StateRead for Counting {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            *self.reads.lock().expect("lock") += 1;
            Ok(self.entries.lock().expect("lock").get(key).cloned())
        }

        fn scan(&self, _: &[u8], _: &[u8], _: usize) -> Result<Vec<Entry>, StoreError> {
            Ok(Vec::new())
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
        let state = CachedState {
            base: &store,
            cache: &cache,
        };
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
        let state = CachedState {
            base: &store,
            cache: &cache,
        };
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
        let state = CachedState {
            base: &store,
            cache: &cache,
        };
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
        let state = CachedState {
            base: &store,
            cache: &cache,
        };
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
}

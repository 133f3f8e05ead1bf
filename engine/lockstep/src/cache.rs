//! A bounded in-memory cache of committed state, in front of RocksDB, for handlers' point reads.
//!
//! Handlers read before they write (is this id free, does the parent exist, what is the count),
//! and a point read that misses RocksDB's block cache still walks the memtable's skiplist and
//! the levels' filters: several times the cost of a hash lookup. The cache holds what handlers
//! recently read (misses too) and is kept coherent by the one writer of each key: a topology's
//! batch commit, which refreshes every cached key it wrote once the commit is durable. The only
//! reader that can run during that refresh is the topology's next batch, executing while the
//! commit is in flight (pipelining), and it reads every key the committing batch wrote from
//! that batch's write sets (`Overlaid`, laid over this cache), never from here; the batch after
//! it starts once the refresh is done. A miss here is filled from RocksDB without excluding the
//! refresh, which is safe only for that reason. No topology reads another's keys. Snapshots never use
//! the cache: they read RocksDB at a point in time.

use std::sync::Arc;

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

    /// Refreshes every cached key a durable commit wrote. `replace` touches only keys already
    /// cached, and drops the entry when it declines the new value (too heavy), so a write
    /// never leaves a stale entry behind.
    ///
    /// Most written keys are not cached (outcomes, and state no handler has read lately), so
    /// they are looked up by reference first: copying every written key and value only to
    /// have `replace` decline it was a quarter to a third of what the cache added to the
    /// committer's time. Checking and then replacing is not racy: no reader fills a key this
    /// commit wrote until it returns (see the module doc), and an entry evicted in between
    /// makes `replace` decline, leaving nothing stale.
    pub(crate) fn apply(&self, writes: &[WriteSet]) {
        for (key, value) in writes.iter().flatten() {
            if !self.entries.contains_key(key.as_ref()) {
                continue;
            }
            let _ = self
                .entries
                .replace(key.to_vec(), value.as_deref().map(Arc::from), true);
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
        self.cache
            .entries
            .insert(key.to_vec(), value.as_deref().map(Arc::from));
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
        self.cache.entries.insert(key.to_vec(), value);
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

    fn commit(store: &Counting, cache: &StateCache, writes: WriteSet) {
        let mut entries = store.entries.lock().expect("lock");
        for (key, value) in &writes {
            match value {
                Some(value) => entries.insert(key.to_vec(), value.clone()),
                None => entries.remove(key),
            };
        }
        drop(entries);
        cache.apply(&[writes]);
    }

    #[test]
    fn reads_hit_the_cache_and_commits_keep_it_coherent() {
        let store = Counting::default();
        let cache = StateCache::new(1 << 20).expect("cache");
        let state = CachedState {
            base: &store,
            cache: &cache,
        };
        assert_eq!(state.get(b"a").expect("get"), None);
        assert_eq!(state.get(b"a").expect("get"), None);
        assert_eq!(
            *store.reads.lock().expect("lock"),
            1,
            "a miss is cached too"
        );
        assert_eq!(lent(&state, b"a"), None, "a cached miss is lent as a miss");
        assert_eq!(*store.reads.lock().expect("lock"), 1);

        commit(
            &store,
            &cache,
            [(b"a".to_vec(), Some(b"1".to_vec()))].into(),
        );
        assert_eq!(state.get(b"a").expect("get"), Some(b"1".to_vec()));
        commit(&store, &cache, [(b"a".to_vec(), None)].into());
        assert_eq!(state.get(b"a").expect("get"), None);
        assert_eq!(*store.reads.lock().expect("lock"), 1);

        // A key written before it was ever read is not cached, and reads the store.
        commit(
            &store,
            &cache,
            [(b"b".to_vec(), Some(b"2".to_vec()))].into(),
        );
        assert_eq!(state.get(b"b").expect("get"), Some(b"2".to_vec()));
        assert_eq!(*store.reads.lock().expect("lock"), 2);

        // A lent read fills the cache on a miss and lends from it afterwards.
        commit(
            &store,
            &cache,
            [(b"c".to_vec(), Some(b"3".to_vec()))].into(),
        );
        for _ in 0..2 {
            assert_eq!(lent(&state, b"c"), Some(b"3".to_vec()));
        }
        assert_eq!(*store.reads.lock().expect("lock"), 3);
        commit(&store, &cache, [(b"c".to_vec(), None)].into());
        assert_eq!(
            lent(&state, b"c"),
            None,
            "the commit refreshed the lent entry"
        );
        assert_eq!(*store.reads.lock().expect("lock"), 3);
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
                let key = i.to_be_bytes().to_vec();
                let value = (i + round).to_be_bytes().to_vec();
                commit(&store, &cache, [(key.clone(), Some(value.clone()))].into());
                assert_eq!(state.get(&key).expect("get"), Some(value));
            }
            assert!(cache.entries.weight() <= 16 << 10);
        }
        for i in 0..2_000u32 {
            let key = i.to_be_bytes().to_vec();
            assert_eq!(
                state.get(&key).expect("get"),
                Some((i + 4).to_be_bytes().to_vec())
            );
        }
    }
}

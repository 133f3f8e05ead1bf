//! How PState entries are laid out as keys of one ordered keyspace.
//!
//! ```text
//! map entry:   [pstate id: u32 BE][partition: u32 BE][key_codec(key)]                 -> envelope(value)
//! set element: [pstate id: u32 BE][partition: u32 BE][key_codec(key)][key_codec(elem)] -> empty
//! ```
//!
//! The key codec is order-preserving and prefix-free, so a map's keys sort as the keys do, and
//! a set's elements sit contiguously under their key's encoding (one prefix scan lists them).
//! The partition sits in the prefix so that a partition's state is one contiguous range, which
//! is what a later move of partitions between machines copies.

/// Bytes of the `[pstate id][partition]` prefix.
pub const PARTITION_PREFIX_BYTES: usize = 8;

/// The prefix of every entry of one PState partition.
pub fn partition_prefix(pstate_id: u32, partition: u32) -> [u8; PARTITION_PREFIX_BYTES] {
    let mut prefix = [0u8; PARTITION_PREFIX_BYTES];
    prefix[..4].copy_from_slice(&pstate_id.to_be_bytes());
    prefix[4..].copy_from_slice(&partition.to_be_bytes());
    prefix
}

/// The PState id a laid-out key names, if it is long enough to name one.
pub fn key_pstate_id(key: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(key.get(..4)?.try_into().ok()?))
}

/// The partition a laid-out key names, if it is long enough to name one.
pub(crate) fn key_partition(key: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(
        key.get(4..PARTITION_PREFIX_BYTES)?.try_into().ok()?,
    ))
}

/// The full key of an entry whose encoded key (and, for sets, element) is `encoded`.
pub fn entry_key(pstate_id: u32, partition: u32, encoded: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(PARTITION_PREFIX_BYTES + encoded.len());
    key.extend_from_slice(&partition_prefix(pstate_id, partition));
    key.extend_from_slice(encoded);
    key
}

/// The smallest byte string greater than every string starting with `prefix`, or `None` when
/// there is none (the prefix is all `0xFF`).
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.last_mut() {
        if *last == u8::MAX {
            end.pop();
        } else {
            *last += 1;
            return Some(end);
        }
    }
    None
}

/// `[start, end)` covering every entry whose key starts with `prefix`. An all-`0xFF` prefix
/// (unreachable for real PState ids) gets an end past every key Lockstep writes.
pub fn prefix_range(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let end = prefix_successor(prefix).unwrap_or_else(|| vec![u8::MAX; prefix.len() + 1]);
    (prefix.to_vec(), end)
}

/// The part of a laid-out key that RocksDB's prefix bloom filters group it under: the key up to
/// its first unescaped `0x00` after the `[pstate id][partition]` prefix, or the whole key if it
/// has none.
///
/// For a map or set whose key is a string or bytes, that `0x00` begins the key's terminator, so
/// this is `[pstate id][partition]` and the key's escaped bytes: every element of one set shares
/// it, and so does the whole range a scan of the set reads. A scan of a set absent from a
/// table file then skips it on the bloom filter's word, where it used to seek through its
/// index. Keys of other types cut somewhere inside: their groups are
/// coarser (at worst a whole PState partition), which costs filtering, never a result.
///
/// RocksDB requires of a prefix extractor that keys sharing a prefix be contiguous in key order
/// (its "essential property"); this cut is monotone (`k1 <= k2` implies
/// `bloom_prefix(k1) <= bloom_prefix(k2)`), is a prefix of its key, and is idempotent, which
/// together give it. Property-tested below; the scans' use of it in `lockstep`'s store.
pub fn bloom_prefix(key: &[u8]) -> &[u8] {
    let mut at = PARTITION_PREFIX_BYTES;
    while at < key.len() {
        if key[at] == 0 {
            // The key codec escapes a data `0x00` in a string as `0x00 0xFF`.
            if key.get(at + 1) != Some(&u8::MAX) {
                return &key[..at];
            }
            at += 2;
        } else {
            at += 1;
        }
    }
    key
}

/// The end of the keys whose bloom prefix is `prefix`, itself a bloom prefix at least
/// [`PARTITION_PREFIX_BYTES`] long: they are `prefix` and the keys from `prefix ++ 0x00` up to,
/// not including, `prefix ++ 0x00 0xFF` (where an escaped `0x00` goes on with a longer string).
pub fn bloom_group_end(prefix: &[u8]) -> Vec<u8> {
    [prefix, &BLOOM_GROUP_END_SUFFIX].concat()
}

/// What follows a bloom prefix to make its group's end: an escaped `0x00`, the least byte pair
/// that continues a string rather than ending it.
const BLOOM_GROUP_END_SUFFIX: [u8; 2] = [0, u8::MAX];

/// The bloom prefix of `from`, if every key in `[from, to)` has it, so that a scan of the range
/// may consult prefix bloom filters and the range lies within one bloom group: when `to` is at
/// most the group's end ([`bloom_group_end`]). Never for keys shorter than the partition
/// prefix, whose bloom prefix is the whole key.
pub fn range_bloom_prefix<'a>(from: &'a [u8], to: &[u8]) -> Option<&'a [u8]> {
    if from >= to || from.len() < PARTITION_PREFIX_BYTES {
        return None;
    }
    let prefix = bloom_prefix(from);
    // `bloom_group_end(prefix)`, compared without building it.
    let group_end = prefix.iter().chain(&BLOOM_GROUP_END_SUFFIX);
    (to.iter().cmp(group_end) != std::cmp::Ordering::Greater).then_some(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn successor_carries() {
        assert_eq!(prefix_successor(&[1, 2, 3]), Some(vec![1, 2, 4]));
        assert_eq!(prefix_successor(&[1, 0xFF, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_successor(&[0xFF]), None);
        assert_eq!(prefix_successor(&[]), None);
    }

    /// Bytes from an alphabet heavy in the codec's marker bytes, so that escapes, terminators
    /// and keys differing just around them are common.
    fn marker_heavy_key() -> impl Strategy<Value = Vec<u8>> {
        (
            prop::sample::select(vec![0u32, 1, 0x0100]),
            prop::sample::select(vec![0u32, 2]),
            prop::collection::vec(
                prop::sample::select(vec![0u8, 1, 2, 0x7F, 0xFE, 0xFF]),
                0..12,
            ),
        )
            .prop_map(|(pstate_id, partition, tail)| entry_key(pstate_id, partition, &tail))
    }

    proptest! {
        /// RocksDB's requirements of a prefix extractor, on arbitrary keys: the prefix is a
        /// prefix of its key and idempotent, prefixes keep the keys' order, and keys sharing a
        /// prefix are contiguous (no key between two with one prefix has another).
        #[test]
        fn bloom_prefixes_are_a_valid_prefix_extractor(
            mut keys in prop::collection::vec(
                prop_oneof![marker_heavy_key(), prop::collection::vec(any::<u8>(), 0..12)],
                3..40,
            )
        ) {
            keys.sort();
            for key in &keys {
                let prefix = bloom_prefix(key);
                prop_assert!(key.starts_with(prefix));
                prop_assert_eq!(bloom_prefix(prefix), prefix);
            }
            for pair in keys.windows(2) {
                prop_assert!(bloom_prefix(&pair[0]) <= bloom_prefix(&pair[1]));
            }
            for (i, first) in keys.iter().enumerate() {
                // A range that shares a bloom prefix holds only keys with it, and a bloom
                // group's range holds exactly the keys of the group.
                for to in &keys {
                    if range_bloom_prefix(first, to).is_some() {
                        for key in keys.iter().filter(|k| *k >= first && *k < to) {
                            prop_assert_eq!(bloom_prefix(key), bloom_prefix(first));
                        }
                    }
                }
                let prefix = bloom_prefix(first);
                if prefix.len() >= PARTITION_PREFIX_BYTES {
                    let end = bloom_group_end(prefix);
                    prop_assert!(range_bloom_prefix(prefix, &end).is_some());
                    for key in &keys {
                        let in_group = key.as_slice() >= prefix && *key < end;
                        prop_assert_eq!(in_group, bloom_prefix(key) == prefix, "{:?}", key);
                    }
                }
                for last in &keys[i..] {
                    if bloom_prefix(first) == bloom_prefix(last) {
                        let between = keys.iter().filter(|k| *k >= first && *k <= last);
                        for key in between {
                            prop_assert_eq!(bloom_prefix(key), bloom_prefix(first));
                        }
                    }
                }
            }
        }

        /// A set with a string key: its elements and the whole range a scan of it reads share
        /// one bloom prefix, which no other set's elements have.
        #[test]
        fn a_string_keyed_sets_scan_range_shares_one_bloom_prefix(
            set_key in "[a\\x00-\\x02\\u{ff}]{0,6}",
            other_key in "[a\\x00-\\x02\\u{ff}]{0,6}",
            element in "[a\\x00]{0,4}",
        ) {
            let encoded = crate::keycodec::encode_key(&set_key).expect("encode");
            let (from, to) = prefix_range(&entry_key(3, 1, &encoded));
            prop_assert!(range_bloom_prefix(&from, &to).is_some());
            let mut element_key = entry_key(3, 1, &encoded);
            crate::keycodec::encode_key_into(&element, &mut element_key).expect("encode");
            prop_assert_eq!(bloom_prefix(&element_key), bloom_prefix(&from));
            let other = entry_key(3, 1, &crate::keycodec::encode_key(&other_key).expect("encode"));
            prop_assert_eq!(bloom_prefix(&other) == bloom_prefix(&from), other_key == set_key);
        }
    }

    #[test]
    fn a_bloom_prefix_ends_at_the_first_unescaped_nul() {
        let key = entry_key(1, 2, &[b'a', 0, 0xFF, b'b', 0, 1, b'c']);
        assert_eq!(bloom_prefix(&key), &key[..12]);
        // A trailing `0x00` cuts: the key may yet be extended by anything.
        let key = entry_key(1, 2, &[b'a', 0]);
        assert_eq!(bloom_prefix(&key), &key[..9]);
        // Nothing after the partition prefix is cut; a short key is its own prefix.
        assert_eq!(bloom_prefix(&[0, 0, 0]), &[0, 0, 0]);
        assert!(range_bloom_prefix(b"b", b"a").is_none());
    }

    #[test]
    fn partitions_are_contiguous_and_ordered() {
        let (start, end) = prefix_range(&partition_prefix(7, 3));
        let inside = entry_key(7, 3, &[0xFF, 0xFF, 0xFF]);
        let next = entry_key(7, 4, &[]);
        assert!(start <= inside && inside < end);
        assert!(end <= next);
    }
}

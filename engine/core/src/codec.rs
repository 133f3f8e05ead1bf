//! The versioned envelope around every record and value Lockstep writes.
//!
//! Layout (format version 1):
//!
//! ```text
//! [version: u8 = 1][crc32 of payload: u32 LE][payload: bincode (standard config)]
//! ```
//!
//! RocksDB checksums its blocks, but the envelope's CRC also catches corruption that happens
//! above RocksDB (a bad write path, a torn copy of a data directory) and the version byte lets a
//! later release change the payload encoding without guessing.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Bytes the envelope adds in front of the payload.
pub const ENVELOPE_HEADER_BYTES: usize = 5;
const FORMAT_V1: u8 = 1;

/// Why a record or value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The encoded record is larger than the limit it is written under.
    #[error("record is {bytes} bytes encoded, over the limit of {bytes_max} bytes")]
    TooLarge {
        /// Encoded size including the envelope.
        bytes: usize,
        /// The limit in force.
        bytes_max: usize,
    },
    /// Serde refused to encode the value.
    #[error("record does not encode: {0}")]
    Encode(String),
    /// The bytes are shorter than the envelope header.
    #[error("truncated envelope: {bytes} bytes")]
    Truncated {
        /// How many bytes there were.
        bytes: usize,
    },
    /// The version byte names no format this release reads.
    #[error("unknown envelope format version {0}")]
    UnknownVersion(u8),
    /// The payload does not match its checksum.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// The CRC in the envelope.
        stored: u32,
        /// The CRC of the payload as read.
        computed: u32,
    },
    /// The payload is intact but does not decode as the requested type.
    #[error("payload does not decode: {0}")]
    Decode(String),
}

/// Bytes `value` takes encoded in the envelope, counted without encoding it into memory.
pub fn envelope_bytes<T: Serialize + ?Sized>(value: &T) -> Result<usize, CodecError> {
    let mut counter = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(value, &mut counter, bincode::config::standard())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(ENVELOPE_HEADER_BYTES + counter.bytes_written)
}

/// Encodes `value` in the envelope, refusing results over `bytes_max` bytes.
pub fn encode_envelope<T: Serialize + ?Sized>(
    value: &T,
    bytes_max: usize,
) -> Result<Vec<u8>, CodecError> {
    // Counting first sizes the buffer exactly (a growing one reallocates a few times for
    // even a small value) and refuses an oversized value before allocating for it.
    let bytes = envelope_bytes(value)?;
    if bytes > bytes_max {
        return Err(CodecError::TooLarge { bytes, bytes_max });
    }
    let mut out = Vec::with_capacity(bytes);
    out.extend_from_slice(&[FORMAT_V1, 0, 0, 0, 0]);
    bincode::serde::encode_into_std_write(value, &mut out, bincode::config::standard())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    // A `Serialize` impl may write differently the second time it runs: check what was
    // written, not only what was counted.
    if out.len() > bytes_max {
        return Err(CodecError::TooLarge {
            bytes: out.len(),
            bytes_max,
        });
    }
    let crc = crc32fast::hash(&out[ENVELOPE_HEADER_BYTES..]);
    out[1..ENVELOPE_HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Checks the envelope and returns its payload bytes.
pub fn envelope_payload(bytes: &[u8]) -> Result<&[u8], CodecError> {
    if bytes.len() < ENVELOPE_HEADER_BYTES {
        return Err(CodecError::Truncated { bytes: bytes.len() });
    }
    if bytes[0] != FORMAT_V1 {
        return Err(CodecError::UnknownVersion(bytes[0]));
    }
    let mut crc_bytes = [0u8; 4];
    crc_bytes.copy_from_slice(&bytes[1..ENVELOPE_HEADER_BYTES]);
    let stored = u32::from_le_bytes(crc_bytes);
    let payload = &bytes[ENVELOPE_HEADER_BYTES..];
    let computed = crc32fast::hash(payload);
    if stored != computed {
        return Err(CodecError::Checksum { stored, computed });
    }
    Ok(payload)
}

/// Decodes an envelope written by [`encode_envelope`], checking version and checksum first.
pub fn decode_envelope<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_exact(envelope_payload(bytes)?)
}

/// Bytes bincode may count against its decode limit per byte of input. It counts every
/// primitive at its size in memory before reading it (16 for a `u128`, however short its
/// varint) and every string or byte array at its stated length, before allocating that.
const CLAIMED_BYTES_PER_INPUT_BYTE: usize = 16;

/// Decodes `payload` as exactly one bincode value (standard config); trailing bytes are an
/// error.
///
/// Lengths stated in the payload count against a limit before anything is allocated for them.
/// The limit grows with the payload in steps of 16 (`CLAIMED_BYTES_PER_INPUT_BYTE` times the
/// step's largest payload, up to 1 GiB), so every value whose encoding fits the payload decodes,
/// while a few bytes stating a huge length are refused instead of making the decoder allocate
/// it: allocation stays within a small multiple of the input. The network frame decoder uses
/// it too.
pub fn decode_exact<T: DeserializeOwned>(payload: &[u8]) -> Result<T, CodecError> {
    const PER_BYTE: usize = CLAIMED_BYTES_PER_INPUT_BYTE;
    let decoded = match payload.len() {
        n if n <= 1 << 8 => decode_limited::<T, { PER_BYTE << 8 }>(payload),
        n if n <= 1 << 12 => decode_limited::<T, { PER_BYTE << 12 }>(payload),
        n if n <= 1 << 16 => decode_limited::<T, { PER_BYTE << 16 }>(payload),
        n if n <= 1 << 20 => decode_limited::<T, { PER_BYTE << 20 }>(payload),
        n if n <= 1 << 24 => decode_limited::<T, { PER_BYTE << 24 }>(payload),
        // Records are at most 64 MiB (`RECORD_BYTES_CEILING`): 16 × 64 MiB.
        _ => decode_limited::<T, { 1 << 30 }>(payload),
    };
    let (value, used) = decoded.map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != payload.len() {
        return Err(CodecError::Decode(format!(
            "{} trailing bytes after the value",
            payload.len() - used
        )));
    }
    Ok(value)
}

fn decode_limited<T: DeserializeOwned, const LIMIT: usize>(
    payload: &[u8],
) -> Result<(T, usize), bincode::error::DecodeError> {
    bincode::serde::decode_from_slice(payload, bincode::config::standard().with_limit::<LIMIT>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary bytes never panic the record decoder, whatever type is asked for.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_envelope::<(String, Vec<u64>, Option<bool>)>(&bytes);
            let _ = decode_envelope::<std::collections::BTreeMap<String, String>>(&bytes);
        }

        /// The counted size is the encoded size (a limit of exactly that size takes the value),
        /// the bytes are the format's, and a limit one byte below refuses the value, naming
        /// both.
        #[test]
        fn counted_bytes_are_the_encoded_bytes(
            value in (any::<String>(), prop::collection::vec(any::<u64>(), 0..64), any::<Option<bool>>())
        ) {
            let bytes = envelope_bytes(&value).expect("count");
            let encoded = encode_envelope(&value, bytes).expect("encode at exactly its size");
            prop_assert_eq!(encoded.len(), bytes);
            // The format: the header, then bincode's standard encoding, unchanged.
            let payload = bincode::serde::encode_to_vec(&value, bincode::config::standard())
                .expect("bincode");
            prop_assert_eq!(&encoded[..1], &[FORMAT_V1][..]);
            prop_assert_eq!(&encoded[1..ENVELOPE_HEADER_BYTES], &crc32fast::hash(&payload).to_le_bytes()[..]);
            prop_assert_eq!(&encoded[ENVELOPE_HEADER_BYTES..], &payload[..]);
            prop_assert_eq!(decode_envelope::<(String, Vec<u64>, Option<bool>)>(&encoded).expect("decode"), value.clone());
            match encode_envelope(&value, bytes - 1) {
                Err(CodecError::TooLarge { bytes: refused, bytes_max }) => {
                    prop_assert_eq!(refused, bytes);
                    prop_assert_eq!(bytes_max, bytes - 1);
                }
                other => prop_assert!(false, "{:?}", other),
            }
        }

        /// Valid envelopes with their CRC fixed up after a payload change still never panic.
        #[test]
        fn reframed_garbage_never_panics(payload in prop::collection::vec(any::<u8>(), 0..256)) {
            let mut bytes = vec![1u8, 0, 0, 0, 0];
            bytes.extend_from_slice(&payload);
            let crc = crc32fast::hash(&payload);
            bytes[1..5].copy_from_slice(&crc.to_le_bytes());
            let _ = decode_envelope::<(String, Vec<u64>, Option<bool>)>(&bytes);
            let _ = decode_envelope::<Vec<String>>(&bytes);
        }
    }

    /// Found by the `record_decoder` fuzz target (`-malloc_limit_mb=64`): a command envelope
    /// whose nine payload bytes state a 64 MiB id made the decoder allocate 64 MiB before
    /// finding the bytes missing (up to 1 GiB for other lengths; a process that cannot get it
    /// aborts). The server decodes every record a client sends. Now the stated length counts
    /// against a limit proportional to the payload and is refused first.
    #[test]
    fn a_short_record_stating_a_huge_length_is_refused_before_allocating() {
        // Variant 0, then a string of 0x0400_0120 bytes (varint: 252, u32 LE), then two bytes.
        let payload = [0u8, 252, 0x20, 0x01, 0x00, 0x04, 0, 0];
        let mut bytes = vec![1u8];
        bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        match decode_envelope::<(u32, String)>(&bytes) {
            Err(CodecError::Decode(reason)) => {
                assert!(reason.contains("LimitExceeded"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// The limit grows with the payload: values full of short varints (each counted at 16
    /// bytes) and long strings decode at every size step.
    #[test]
    fn dense_values_decode_at_every_size() {
        for count in [1usize, 200, 3_000, 50_000, 900_000] {
            let value = (vec![1u128; count], "x".repeat(count));
            let bytes = encode_envelope(&value, usize::MAX).expect("encodes");
            let back: (Vec<u128>, String) = decode_envelope(&bytes).expect("decodes");
            assert_eq!(back, value, "{count}");
        }
    }

    #[test]
    fn round_trips() {
        let value = ("hello".to_string(), 42u64, vec![1i32, -2, 3]);
        let bytes = encode_envelope(&value, 1024).expect("encodes");
        let back: (String, u64, Vec<i32>) = decode_envelope(&bytes).expect("decodes");
        assert_eq!(back, value);
    }

    #[test]
    fn refuses_oversize() {
        let value = vec![7u8; 100];
        let err = encode_envelope(&value, 50).expect_err("too large");
        assert!(matches!(err, CodecError::TooLarge { bytes_max: 50, .. }));
    }

    #[test]
    fn detects_every_single_byte_flip() {
        let bytes = encode_envelope(&("some record", 7u32), 1024).expect("encodes");
        for i in 0..bytes.len() {
            let mut corrupt = bytes.clone();
            corrupt[i] ^= 0x40;
            assert!(
                decode_envelope::<(String, u32)>(&corrupt).is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
    }

    #[test]
    fn reports_truncation_and_type_mismatch() {
        assert!(matches!(
            decode_envelope::<u32>(&[1, 2]),
            Err(CodecError::Truncated { bytes: 2 })
        ));
        let bytes = encode_envelope(&(1u8, 2u8), 1024).expect("encodes");
        assert!(matches!(
            decode_envelope::<u8>(&bytes),
            Err(CodecError::Decode(_))
        ));
    }
}

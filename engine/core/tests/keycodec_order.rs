//! Property tests for the order-preserving key codec: byte order must match
//! `Ord`, encodings must be prefix-free, and hostile input must not panic.

use std::fmt::Debug;

use lockstep_core::{decode_key, decode_key_prefix, encode_key, KeyCodecError};
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Strings from a tiny alphabet (so shared prefixes and NULs are common) mixed
/// with arbitrary Unicode.
fn key_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[\\x00\\x01ab\u{e9}\u{1F600}]{0,6}",
        1 => any::<String>(),
    ]
}

fn enc<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    encode_key(value).expect("encoding a plain value cannot fail")
}

fn check_order<T: Ord + Serialize + Debug>(a: &T, b: &T) -> Result<(), TestCaseError> {
    let (ea, eb) = (enc(a), enc(b));
    prop_assert_eq!(
        a.cmp(b),
        ea.cmp(&eb),
        "{:?} vs {:?} encoded as {:02x?} vs {:02x?}",
        a,
        b,
        ea,
        eb
    );
    Ok(())
}

fn check_prefix<A, B>(a: &A, b: &B) -> Result<(), TestCaseError>
where
    A: Serialize + DeserializeOwned + PartialEq + Debug,
    B: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let ea = enc(a);
    let pair = enc(&(a, b));
    prop_assert!(pair.starts_with(&ea));
    let (decoded, used) = decode_key_prefix::<A>(&pair).expect("prefix decodes");
    prop_assert_eq!(&decoded, a);
    prop_assert_eq!(used, ea.len());
    let rest: B = decode_key(&pair[used..]).expect("suffix decodes");
    prop_assert_eq!(&rest, b);
    Ok(())
}

type Row = (u64, i64, String, Vec<u8>, Option<u32>, Vec<String>);

fn row() -> impl Strategy<Value = Row> {
    (
        any::<u64>(),
        any::<i64>(),
        key_string(),
        prop::collection::vec(any::<u8>(), 0..8),
        any::<Option<u32>>(),
        prop::collection::vec(key_string(), 0..4),
    )
}

/// Bytes biased towards the codec's marker values, so decoding gets past the
/// first byte more often than with uniform noise.
fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        2 => any::<u8>(),
        2 => 0u8..=1,
        1 => Just(0xFFu8),
        1 => Just(b'a'),
    ];
    prop::collection::vec(byte, 0..48)
}

proptest! {
    #[test]
    fn round_trip(value in row()) {
        let bytes = enc(&value);
        let decoded: Row = decode_key(&bytes).expect("decodes");
        prop_assert_eq!(decoded, value);
    }

    #[test]
    fn order_string(a in key_string(), b in key_string()) {
        check_order(&a, &b)?;
    }

    #[test]
    fn order_i64(a in any::<i64>(), b in any::<i64>()) {
        check_order(&a, &b)?;
    }

    #[test]
    fn order_string_u64(a in (key_string(), 0u64..4), b in (key_string(), 0u64..4)) {
        check_order(&a, &b)?;
    }

    #[test]
    fn order_u32_string_i16(
        a in (0u32..3, key_string(), any::<i16>()),
        b in (0u32..3, key_string(), any::<i16>()),
    ) {
        check_order(&a, &b)?;
    }

    #[test]
    fn order_vec_string(
        a in prop::collection::vec(key_string(), 0..4),
        b in prop::collection::vec(key_string(), 0..4),
    ) {
        check_order(&a, &b)?;
    }

    #[test]
    fn order_option_string(a in prop::option::of(key_string()), b in prop::option::of(key_string())) {
        check_order(&a, &b)?;
    }

    #[test]
    fn prefix_string_u64(a in key_string(), b in any::<u64>()) {
        check_prefix(&a, &b)?;
    }

    #[test]
    fn prefix_vec_string(a in prop::collection::vec(key_string(), 0..4), b in key_string()) {
        check_prefix(&a, &b)?;
    }

    #[test]
    fn prefix_option_tuple(a in prop::option::of((key_string(), any::<i32>())), b in row()) {
        check_prefix(&a, &b)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in hostile_bytes()) {
        type Target = (String, u64, Vec<i32>, Option<bool>);
        match decode_key::<Target>(&bytes) {
            // Decoding is strict, so anything accepted must be canonical.
            Ok(value) => prop_assert_eq!(enc(&value), bytes),
            Err(KeyCodecError::Unsupported(what)) => {
                prop_assert!(false, "unexpected Unsupported({})", what);
            }
            Err(_) => {}
        }
    }

    #[test]
    fn corrupted_encodings_never_panic(value in row(), index in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = enc(&value);
        let i = index.index(bytes.len());
        bytes[i] = byte;
        if let Ok(decoded) = decode_key::<Row>(&bytes) {
            prop_assert_eq!(&enc(&decoded), &bytes);
        }
        // Encodings are prefix-free, so no proper prefix of one decodes.
        prop_assert!(decode_key::<Row>(&bytes[..i]).is_err());
    }
}

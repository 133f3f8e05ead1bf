//! The component topology's stored types through the record decoder, as a short property run:
//! the checks of the `record_decoder` fuzz target (`fuzz/`, see TESTING.md) in CI. Any bytes,
//! and any payload inside a valid envelope, decode or are refused, never panic; what decodes
//! encodes again to the same value; a command that decodes routes to a partition, as the server
//! checks before it accepts a record.

use std::fmt::Debug;

use lockstep::{decode_envelope, RECORD_BYTES_MAX_DEFAULT};
use lockstep_core::codec::ENVELOPE_HEADER_BYTES;
use lockstep_core::encode_envelope;
use lockstep_topologies::components::{components, Command, Component, DeleteMode, Outcome};
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

const PARTITIONS: u32 = 8;

/// `bytes` as a version-1 envelope with a correct checksum, so the payload decoder sees them.
fn wrap(payload: &[u8]) -> Vec<u8> {
    let mut envelope = vec![1u8];
    debug_assert_eq!(envelope.len() + 4, ENVELOPE_HEADER_BYTES);
    envelope.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    envelope.extend_from_slice(payload);
    envelope
}

fn decodes_to_itself<T: Serialize + DeserializeOwned + PartialEq + Debug>(
    bytes: &[u8],
) -> Result<Option<T>, TestCaseError> {
    let Ok(value) = decode_envelope::<T>(bytes) else {
        return Ok(None);
    };
    let again = encode_envelope(&value, usize::MAX).expect("a decoded value encodes");
    prop_assert_eq!(&decode_envelope::<T>(&again).expect("decodes"), &value);
    Ok(Some(value))
}

fn check_all(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Some(command) = decodes_to_itself::<Command>(bytes)? {
        let handles = components(PARTITIONS).expect("declare");
        let partition = handles.commands.partition_of(&command);
        prop_assert!(
            matches!(partition, Ok(p) if p < PARTITIONS),
            "{partition:?}"
        );
    }
    decodes_to_itself::<Component>(bytes)?;
    decodes_to_itself::<(u64, Outcome)>(bytes)?;
    Ok(())
}

fn any_command() -> impl Strategy<Value = Command> {
    let id = "\\PC{1,8}";
    let attrs = prop::collection::btree_map("\\PC{0,4}", "\\PC{0,4}", 0..3);
    prop_oneof![
        (id, prop::option::of(id), attrs.clone()).prop_map(|(id, parent, attrs)| Command::Create {
            id,
            parent,
            attrs
        }),
        (id, attrs, prop::option::of(any::<u64>())).prop_map(|(id, attrs, if_version)| {
            Command::Update {
                id,
                attrs,
                if_version,
            }
        }),
        (id, prop::option::of(id), prop::option::of(any::<u64>())).prop_map(
            |(id, parent, if_version)| Command::Reparent {
                id,
                parent,
                if_version,
            }
        ),
        (id, any::<bool>()).prop_map(|(id, cascade)| Command::Delete {
            id,
            mode: if cascade {
                DeleteMode::Cascade
            } else {
                DeleteMode::Restrict
            },
        }),
    ]
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check_all(&bytes)?;
    }

    #[test]
    fn arbitrary_payloads_in_valid_envelopes_never_panic(
        payload in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        check_all(&wrap(&payload))?;
    }

    /// Real commands with one payload byte changed and the checksum fixed up: the decoder sees
    /// inputs close to valid ones, where a length or a variant tag is wrong.
    #[test]
    fn commands_with_a_byte_changed_never_panic(
        command in any_command(),
        at in any::<prop::sample::Index>(),
        mask in 1u8..,
    ) {
        let record = encode_envelope(&command, RECORD_BYTES_MAX_DEFAULT).expect("encodes");
        let mut payload = record[ENVELOPE_HEADER_BYTES..].to_vec();
        let i = at.index(payload.len());
        payload[i] ^= mask;
        check_all(&wrap(&payload))?;
    }
}

/// The `record_decoder` fuzz target's first find (fuzz/regressions/record_decoder): a command
/// of nine payload bytes stating a 64 MiB id made the decoder allocate 64 MiB before finding
/// the bytes missing. It is refused, as any record the server is sent that does not decode.
#[test]
fn a_command_stating_a_huge_id_is_refused() {
    let record = wrap(&[0, 252, 0x20, 0x01, 0x00, 0x04, 0, 0]);
    let error = decode_envelope::<Command>(&record).expect_err("refused");
    assert!(error.to_string().contains("LimitExceeded"), "{error}");
}

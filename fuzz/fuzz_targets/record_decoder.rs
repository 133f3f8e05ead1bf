//! The record decoder: the checksummed envelope around every stored record and value, decoded
//! as each type the engine and the components topology store (producer states in both
//! layouts, the current one and format 1's), and the depot value and key layouts around it.
//!
//! The first input byte picks the type and whether the rest is used as stored bytes (so the
//! checksum almost always refuses them) or as a payload wrapped in a valid envelope (so the
//! payload decoder sees arbitrary bytes). Any input must decode or be refused, never panic; a
//! decoded value must encode again and decode to itself. A command the envelope accepts must
//! route, as the server checks every record it is sent.

#![no_main]

use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use lockstep_core::store::{decode_producer_state, CommitRecord};
use lockstep_core::{decode_envelope, decode_key_prefix, encode_envelope, encode_key};
use lockstep_topologies::components::{components, Command, Component, Outcome};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Bytes of the depot value's sequence number, in front of the envelope.
const SEQ_BYTES: usize = 8;
/// Envelope format version 1: `[1][crc32 LE][payload]`.
const FORMAT_V1: u8 = 1;

fn wrap(payload: &[u8]) -> Vec<u8> {
    let mut envelope = vec![FORMAT_V1];
    envelope.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    envelope.extend_from_slice(payload);
    envelope
}

fn decodes_to_itself<T: Serialize + DeserializeOwned + PartialEq + Debug>(
    bytes: &[u8],
) -> Option<T> {
    let value: T = decode_envelope(bytes).ok()?;
    let again = encode_envelope(&value, usize::MAX).expect("a decoded value encodes");
    let back: T = decode_envelope(&again).expect("an encoded value decodes");
    assert_eq!(back, value);
    Some(value)
}

fn command(bytes: &[u8]) {
    if let Some(command) = decodes_to_itself::<Command>(bytes) {
        // What the server does with a record before accepting it.
        let handles = components(8).expect("the topology declares");
        let partition = handles.commands.partition_of(&command);
        assert!(matches!(partition, Ok(p) if p < 8), "{partition:?}");
    }
}

/// A stored producer state, in the current layout or format 1's (no time): what decodes is
/// stored again in the current layout, and reads back the same.
fn producer_state(bytes: &[u8]) {
    if let Ok(state) = decode_producer_state(bytes) {
        let again = encode_envelope(&state, usize::MAX).expect("a decoded state encodes");
        let back = decode_producer_state(&again).expect("an encoded state decodes");
        assert_eq!(back, state);
    }
}

/// A depot value: `[seq u64 BE][envelope]`, as the store splits it before decoding.
fn depot_value(bytes: &[u8], wrap_payload: bool) {
    if let Some((_seq, rest)) = bytes.split_at_checked(SEQ_BYTES) {
        if wrap_payload {
            command(&wrap(rest));
        } else {
            command(rest);
        }
    }
}

/// Stored keys: the key codec is strict, so what decodes is the canonical encoding.
fn keys(bytes: &[u8]) {
    if let Ok((id, used)) = decode_key_prefix::<String>(bytes) {
        assert_eq!(
            encode_key(&id).expect("a decoded key encodes"),
            &bytes[..used]
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let wrap_payload = selector & 0x80 != 0;
    let wrapped;
    let bytes = if wrap_payload {
        wrapped = wrap(rest);
        &wrapped
    } else {
        rest
    };
    match selector & 0x7F {
        0 => command(bytes),
        1 => {
            decodes_to_itself::<Component>(bytes);
        }
        // Outcomes are stored with the batch that recorded them.
        2 => {
            decodes_to_itself::<(u64, Outcome)>(bytes);
        }
        3 => producer_state(bytes),
        4 => {
            decodes_to_itself::<CommitRecord>(bytes);
        }
        5 => depot_value(rest, wrap_payload),
        _ => keys(rest),
    }
});

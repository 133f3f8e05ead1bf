//! The command JSON parser `components append` runs on every input line, and what the line
//! becomes: a depot record the server accepts and the topology reads back unchanged.
//!
//! Any line must parse or be refused with a reason, never panic. A parsed command must print
//! back to a line that parses to the same command, and must either be refused as too large or
//! encode to a record that decodes to the same command and routes to a valid partition.

#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep_core::{decode_envelope, CodecError, RECORD_BYTES_MAX_DEFAULT};
use lockstep_topologies::components::json::{command_json, parse_command};
use lockstep_topologies::components::{components, Command};

/// Partitions of the depot the record is routed on.
const PARTITIONS: u32 = 8;

fuzz_target!(|data: &[u8]| {
    // The binary answers a line that is not UTF-8 before parsing; only text reaches the parser.
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(command) = parse_command(line) else {
        return;
    };
    assert_eq!(
        parse_command(&command_json(&command)).as_ref(),
        Ok(&command),
        "the printed form of a parsed command parses back to it"
    );
    let handles = components(PARTITIONS).expect("the topology declares");
    match handles.commands.encode(&command) {
        Ok(record) => {
            assert!(record.len() <= RECORD_BYTES_MAX_DEFAULT);
            let stored: Command = decode_envelope(&record).expect("an encoded command decodes");
            assert_eq!(stored, command);
            let partition = handles
                .commands
                .partition_of(&stored)
                .expect("a parsed command routes");
            assert!(partition < PARTITIONS);
        }
        Err(CodecError::TooLarge { .. }) => {}
        Err(other) => panic!("a parsed command does not encode: {other}"),
    }
});

//! The JSON forms of commands (input) and components (output).

use std::collections::BTreeMap;

use lockstep_topologies::components::{Attrs, Command, Component, DeleteMode, Outcome};
use serde::Deserialize;
use serde_json::{json, Value};

/// One input line, e.g. `{"op":"create","id":"a","parent":null,"attrs":{"k":"v"}}`.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum JsonCommand {
    Create {
        id: String,
        #[serde(default)]
        parent: Option<String>,
        #[serde(default)]
        attrs: Attrs,
    },
    Update {
        id: String,
        #[serde(default)]
        attrs: Attrs,
        #[serde(default)]
        if_version: Option<u64>,
    },
    Reparent {
        id: String,
        #[serde(default)]
        parent: Option<String>,
        #[serde(default)]
        if_version: Option<u64>,
    },
    Delete {
        id: String,
        mode: JsonDeleteMode,
    },
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum JsonDeleteMode {
    Cascade,
    Restrict,
}

/// Longest component id accepted, in bytes.
const ID_BYTES_MAX: usize = 1024;

fn check_id(id: &str, what: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if id.len() > ID_BYTES_MAX {
        return Err(format!("{what} is longer than {ID_BYTES_MAX} bytes"));
    }
    Ok(())
}

/// Parses one input line into a command, or says what is wrong with it.
pub fn parse_command(line: &str) -> Result<Command, String> {
    let parsed: JsonCommand =
        serde_json::from_str(line).map_err(|e| format!("bad command: {e}"))?;
    let command = match parsed {
        JsonCommand::Create { id, parent, attrs } => Command::Create { id, parent, attrs },
        JsonCommand::Update {
            id,
            attrs,
            if_version,
        } => Command::Update {
            id,
            attrs,
            if_version,
        },
        JsonCommand::Reparent {
            id,
            parent,
            if_version,
        } => Command::Reparent {
            id,
            parent,
            if_version,
        },
        JsonCommand::Delete { id, mode } => Command::Delete {
            id,
            mode: match mode {
                JsonDeleteMode::Cascade => DeleteMode::Cascade,
                JsonDeleteMode::Restrict => DeleteMode::Restrict,
            },
        },
    };
    check_id(command.id(), "id")?;
    if let Command::Create {
        parent: Some(parent),
        ..
    }
    | Command::Reparent {
        parent: Some(parent),
        ..
    } = &command
    {
        check_id(parent, "parent")?;
    }
    Ok(command)
}

/// A component as `get` and `dump` print it.
pub fn component_json(id: &str, component: &Component, children: &[String], batch: u64) -> Value {
    json!({
        "id": id,
        "parent": component.parent,
        "children": children,
        "attrs": component.attrs,
        "version": component.version,
        "batch": batch,
    })
}

/// The acknowledgement of one appended line.
pub fn ack_json(partition: u32, offset: u64, outcome: Option<(Outcome, u64)>) -> Value {
    let mut ack: BTreeMap<&str, Value> = BTreeMap::new();
    ack.insert("ok", json!(true));
    ack.insert("partition", json!(partition));
    ack.insert("offset", json!(offset));
    if let Some((outcome, batch)) = outcome {
        match outcome {
            Outcome::Applied => {
                ack.insert("outcome", json!("applied"));
            }
            Outcome::Rejected(reason) => {
                ack.insert("outcome", json!("rejected"));
                ack.insert("reason", json!(reason.as_str()));
            }
        }
        ack.insert("batch", json!(batch));
    }
    json!(ack)
}

/// The answer to a line that could not be appended.
pub fn error_json(error: &str) -> Value {
    json!({ "ok": false, "error": error })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any input line gets a command or a reason, never a panic.
        #[test]
        fn arbitrary_lines_never_panic(line in "\\PC{0,200}") {
            let _ = parse_command(&line);
        }

        /// JSON-shaped lines with random fields and values never panic either.
        #[test]
        fn json_shaped_lines_never_panic(
            op in prop::sample::select(vec!["create", "update", "reparent", "delete", "x"]),
            id in "\\PC{0,20}",
            extra in "\\PC{0,40}",
        ) {
            let line = format!(r#"{{"op":{op:?},"id":{id:?},"parent":{extra:?},"mode":{extra:?},"attrs":{{"k":{extra:?}}}}}"#);
            let _ = parse_command(&line);
        }
    }

    #[test]
    fn parses_the_documented_forms() {
        let create = parse_command(r#"{"op":"create","id":"a","parent":null,"attrs":{"k":"v"}}"#)
            .expect("create");
        assert_eq!(create.id(), "a");
        assert!(
            parse_command(r#"{"op":"update","id":"a","attrs":{"k":"w"},"if_version":2}"#).is_ok()
        );
        assert!(parse_command(r#"{"op":"reparent","id":"a","parent":"b"}"#).is_ok());
        assert!(parse_command(r#"{"op":"delete","id":"a","mode":"cascade"}"#).is_ok());
    }

    #[test]
    fn refuses_bad_lines_with_a_reason() {
        for (line, needle) in [
            ("not json", "bad command"),
            (r#"{"op":"explode","id":"a"}"#, "unknown variant"),
            (r#"{"op":"create"}"#, "missing field"),
            (r#"{"op":"create","id":""}"#, "must not be empty"),
            (
                r#"{"op":"delete","id":"a","mode":"sideways"}"#,
                "unknown variant",
            ),
            (r#"{"op":"create","id":"a","attrs":{"k":1}}"#, "bad command"),
        ] {
            let error = parse_command(line).expect_err(line);
            assert!(error.contains(needle), "{line}: {error}");
        }
    }
}

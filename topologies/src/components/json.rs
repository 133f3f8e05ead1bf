//! The JSON form of commands: what `components append` reads, one command per line, e.g.
//! `{"op":"create","id":"a","parent":null,"attrs":{"k":"v"}}` (feature `json`).
//!
//! [`parse_command`] takes any line from the network or a file, so it never panics: a line is
//! a command or a reason. [`command_json`] is its inverse for every command it accepts.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{Attrs, Command, DeleteMode};

/// One input line.
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
pub const ID_BYTES_MAX: usize = 1024;

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

/// The JSON line of a command, in the form [`parse_command`] reads back.
pub fn command_json(command: &Command) -> String {
    let string = |s: &str| Value::String(s.to_string());
    let optional = |s: &Option<String>| s.as_deref().map_or(Value::Null, string);
    let version = |v: &Option<u64>| v.map_or(Value::Null, Value::from);
    let attrs = |attrs: &Attrs| {
        Value::Object(
            attrs
                .iter()
                .map(|(key, value)| (key.clone(), string(value)))
                .collect(),
        )
    };
    let fields: Vec<(&str, Value)> = match command {
        Command::Create {
            id,
            parent,
            attrs: a,
        } => vec![
            ("op", string("create")),
            ("id", string(id)),
            ("parent", optional(parent)),
            ("attrs", attrs(a)),
        ],
        Command::Update {
            id,
            attrs: a,
            if_version,
        } => vec![
            ("op", string("update")),
            ("id", string(id)),
            ("attrs", attrs(a)),
            ("if_version", version(if_version)),
        ],
        Command::Reparent {
            id,
            parent,
            if_version,
        } => vec![
            ("op", string("reparent")),
            ("id", string(id)),
            ("parent", optional(parent)),
            ("if_version", version(if_version)),
        ],
        Command::Delete { id, mode } => vec![
            ("op", string("delete")),
            ("id", string(id)),
            (
                "mode",
                string(match mode {
                    DeleteMode::Cascade => "cascade",
                    DeleteMode::Restrict => "restrict",
                }),
            ),
        ],
    };
    let object: Map<String, Value> = fields
        .into_iter()
        .map(|(key, value)| (key.to_string(), value))
        .collect();
    Value::Object(object).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_id() -> impl Strategy<Value = String> {
        // Mostly ordinary ids, sometimes empty or over the limit (both refused), any characters.
        prop_oneof![
            8 => "\\PC{1,12}",
            1 => Just(String::new()),
            1 => "[a-z]{1025,1030}",
        ]
    }

    fn any_attrs() -> impl Strategy<Value = Attrs> {
        prop::collection::btree_map("\\PC{0,8}", "\\PC{0,8}", 0..4)
    }

    fn any_command() -> impl Strategy<Value = Command> {
        prop_oneof![
            (any_id(), prop::option::of(any_id()), any_attrs())
                .prop_map(|(id, parent, attrs)| Command::Create { id, parent, attrs }),
            (any_id(), any_attrs(), prop::option::of(any::<u64>())).prop_map(
                |(id, attrs, if_version)| Command::Update {
                    id,
                    attrs,
                    if_version
                }
            ),
            (
                any_id(),
                prop::option::of(any_id()),
                prop::option::of(any::<u64>())
            )
                .prop_map(|(id, parent, if_version)| Command::Reparent {
                    id,
                    parent,
                    if_version
                }),
            (any_id(), any::<bool>()).prop_map(|(id, cascade)| Command::Delete {
                id,
                mode: if cascade {
                    DeleteMode::Cascade
                } else {
                    DeleteMode::Restrict
                },
            }),
        ]
    }

    fn ids_are_valid(command: &Command) -> bool {
        let parent = match command {
            Command::Create { parent, .. } | Command::Reparent { parent, .. } => parent.as_deref(),
            Command::Update { .. } | Command::Delete { .. } => None,
        };
        [Some(command.id().as_str()), parent]
            .into_iter()
            .flatten()
            .all(|id| !id.is_empty() && id.len() <= ID_BYTES_MAX)
    }

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

        /// Every command prints as a line that parses back to it, exactly when its ids are
        /// acceptable; a refused one is refused with a reason naming the id.
        #[test]
        fn command_lines_round_trip(command in any_command()) {
            let line = command_json(&command);
            match parse_command(&line) {
                Ok(parsed) => {
                    prop_assert!(ids_are_valid(&command), "accepted {line}");
                    prop_assert_eq!(parsed, command);
                }
                Err(reason) => {
                    prop_assert!(!ids_are_valid(&command), "{line}: {reason}");
                    prop_assert!(reason.contains("id") || reason.contains("parent"), "{reason}");
                }
            }
        }
    }

    #[test]
    fn parses_the_documented_forms() {
        let create = parse_command(r#"{"op":"create","id":"a","parent":null,"attrs":{"k":"v"}}"#)
            .expect("create");
        assert_eq!(
            create,
            Command::Create {
                id: "a".into(),
                parent: None,
                attrs: [("k".to_string(), "v".to_string())].into(),
            }
        );
        assert_eq!(
            parse_command(r#"{"op":"update","id":"a","attrs":{"k":"w"},"if_version":2}"#),
            Ok(Command::Update {
                id: "a".into(),
                attrs: [("k".to_string(), "w".to_string())].into(),
                if_version: Some(2),
            })
        );
        assert_eq!(
            parse_command(r#"{"op":"reparent","id":"a","parent":"b"}"#),
            Ok(Command::Reparent {
                id: "a".into(),
                parent: Some("b".into()),
                if_version: None,
            })
        );
        assert_eq!(
            parse_command(r#"{"op":"delete","id":"a","mode":"cascade"}"#),
            Ok(Command::Delete {
                id: "a".into(),
                mode: DeleteMode::Cascade,
            })
        );
    }

    #[test]
    fn prints_the_documented_form() {
        let create = Command::Create {
            id: "a".into(),
            parent: None,
            attrs: [("k".to_string(), "v".to_string())].into(),
        };
        assert_eq!(
            command_json(&create),
            r#"{"attrs":{"k":"v"},"id":"a","op":"create","parent":null}"#
        );
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

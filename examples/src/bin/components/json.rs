//! The JSON forms of components and answers (output). Commands (input) are parsed by
//! `lockstep_topologies::components::json`, where the fuzz target can reach the parser.

use std::collections::BTreeMap;

use lockstep_topologies::components::{Component, Outcome};
use serde_json::{json, Value};

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

/// The answer to a line that was appended and processed, but whose outcome retention deleted
/// before it could be read.
pub fn trimmed_ack_json(partition: u32, offset: u64, detail: &str) -> Value {
    json!({
        "ok": true,
        "partition": partition,
        "offset": offset,
        "outcome": "trimmed",
        "detail": detail,
    })
}

/// The answer to a line that could not be appended.
pub fn error_json(error: &str) -> Value {
    json!({ "ok": false, "error": error })
}

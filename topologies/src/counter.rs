//! The counting topology: each event adds to its key's count (on the key's partition) and to
//! its group's total (on the group's partition, one message away), atomically in one batch.
//!
//! ```
//! let counter = lockstep_topologies::counter::counter(4).unwrap();
//! assert_eq!(counter.topology.name(), "counter");
//! ```

use lockstep_core::{Depot, PState, SchemaError, Topology, TopologyBuilder};
use serde::{Deserialize, Serialize};

/// The topology's name.
pub const TOPOLOGY: &str = "counter";

/// One counted event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountEvent {
    /// What is counted; routes the event.
    pub key: String,
    /// The group the key belongs to; its total lives wherever the group hashes.
    pub group: String,
    /// How much to add (may be negative).
    pub amount: i64,
}

/// The message that carries an event's amount to its group's partition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupAdd {
    /// The group.
    pub group: String,
    /// The amount.
    pub amount: i64,
}

/// Handles for the counter's depot, PStates and topology.
#[derive(Debug, Clone)]
pub struct Counter {
    /// Where events are appended, partitioned by key.
    pub events: Depot<CountEvent>,
    /// Key -> running count.
    pub counts: PState<String, i64>,
    /// Group -> running total.
    pub group_totals: PState<String, i64>,
    /// The topology to hand to the engine. Each event's outcome is the key's new count.
    pub topology: Topology,
}

/// Declares the counter on `partitions` partitions.
pub fn counter(partitions: u32) -> Result<Counter, SchemaError> {
    let events = Depot::<CountEvent>::hashed("events", partitions, |e| e.key.clone())?;
    let mut builder = TopologyBuilder::<GroupAdd>::new(TOPOLOGY, partitions);
    let counts = builder.pstate::<String, i64>("counts");
    let group_totals = builder.pstate::<String, i64>("group-totals");
    let c = counts.clone();
    builder.consume(&events, move |ctx, event: CountEvent| {
        let count = ctx.get(&c, &event.key)?.unwrap_or(0) + event.amount;
        ctx.put(&c, &event.key, &count)?;
        ctx.record_outcome(&count)?;
        let add = GroupAdd {
            group: event.group.clone(),
            amount: event.amount,
        };
        ctx.send(&event.group, add)
    });
    let g = group_totals.clone();
    builder.on_message(move |ctx, add: GroupAdd| {
        let total = ctx.get(&g, &add.group)?.unwrap_or(0) + add.amount;
        ctx.put(&g, &add.group, &total)
    });
    Ok(Counter {
        events,
        counts,
        group_totals,
        topology: builder.build()?,
    })
}

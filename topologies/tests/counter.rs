//! The counter on a real engine: counts and group totals match a direct computation, and every
//! event's outcome is the count right after it.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::time::Duration;

use lockstep::Engine;
use lockstep_topologies::counter::{counter, CountEvent, TOPOLOGY};

#[test]
fn counts_and_group_totals_match() {
    let dir = tempfile::tempdir().expect("tempdir");
    let counter = counter(4).expect("declare");
    let engine = Engine::builder(dir.path())
        .depot(&counter.events)
        .topology(counter.topology.clone())
        .open()
        .expect("open");
    let mut counts: BTreeMap<String, i64> = BTreeMap::new();
    let mut groups: BTreeMap<String, i64> = BTreeMap::new();
    let mut last = None;
    for i in 0..500i64 {
        let event = CountEvent {
            key: format!("k{}", i % 17),
            group: format!("g{}", i % 5),
            amount: i % 7 - 3,
        };
        *counts.entry(event.key.clone()).or_default() += event.amount;
        *groups.entry(event.group.clone()).or_default() += event.amount;
        let id = engine.append(&counter.events, &event).expect("append");
        last = Some((id, counts[&event.key]));
    }
    let (id, expected_count) = last.expect("appended");
    engine
        .wait_for(TOPOLOGY, id, Duration::from_secs(30))
        .expect("processed");
    let snapshot = engine.snapshot().expect("snapshot");
    let all = usize::MAX;
    let got_counts: BTreeMap<String, i64> = snapshot
        .range(&counter.counts, Bound::Unbounded, Bound::Unbounded, all)
        .expect("counts")
        .into_iter()
        .collect();
    let got_groups: BTreeMap<String, i64> = snapshot
        .range(
            &counter.group_totals,
            Bound::Unbounded,
            Bound::Unbounded,
            all,
        )
        .expect("groups")
        .into_iter()
        .collect();
    assert_eq!(got_counts, counts);
    assert_eq!(got_groups, groups);
    let outcome = snapshot
        .outcome::<i64>(TOPOLOGY, id)
        .expect("read")
        .expect("recorded");
    assert_eq!(outcome.value, expected_count);
}

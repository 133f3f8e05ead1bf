//! Prefix scans over tuple keys: in a handler (own partition, own writes of the batch included)
//! and in a snapshot (all partitions, merged in key order).

use lockstep::{Depot, Engine, EngineOptions, NoMessages, TopologyBuilder};

#[test]
fn prefix_scans_see_whole_tuple_elements_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    // (tenant, item) keys; records carry the key itself.
    let puts = Depot::<(String, u32)>::hashed("puts", 3, |k| k.clone()).expect("depot");
    let mut builder = TopologyBuilder::<NoMessages>::new("index", 3);
    let items = builder.pstate::<(String, u32), u32>("items");
    let i = items.clone();
    builder.consume(&puts, move |ctx, key: (String, u32)| {
        ctx.put(&i, &key, &key.1)?;
        // This partition's entries under the same tenant, this batch's writes included.
        let local = ctx.prefix(&i, &(key.0.clone(),), usize::MAX)?;
        assert!(
            local.iter().any(|(k, _)| *k == key),
            "own write not visible"
        );
        assert!(local.iter().all(|(k, _)| k.0 == key.0), "prefix leaked");
        ctx.record_outcome(&(local.len() as u32))
    });
    let engine = Engine::builder(dir.path())
        .options(EngineOptions::manual())
        .depot(&puts)
        .topology(builder.build().expect("topology"))
        .open()
        .expect("open");
    let mut keys = Vec::new();
    for tenant in ["a", "ab", "b"] {
        for item in 0..20u32 {
            keys.push((tenant.to_string(), item));
        }
    }
    engine.append_many(&puts, &keys).expect("append");
    engine.run_until_idle().expect("batches");

    let snapshot = engine.snapshot().expect("snapshot");
    let a = snapshot
        .prefix(&items, &("a".to_string(),), usize::MAX)
        .expect("scan");
    // "ab" shares the bytes "a" but is another tuple element: not included.
    assert_eq!(a.len(), 20);
    assert!(a.iter().all(|(k, _)| k.0 == "a"));
    let items_of_a: Vec<u32> = a.iter().map(|(k, _)| k.1).collect();
    assert_eq!(
        items_of_a,
        (0..20).collect::<Vec<_>>(),
        "merged in key order"
    );
    assert_eq!(
        snapshot
            .prefix(&items, &("ab".to_string(), 7u32), 10)
            .expect("scan"),
        vec![(("ab".to_string(), 7), 7)]
    );
    assert_eq!(
        snapshot
            .prefix(&items, &("b".to_string(),), 5)
            .expect("scan")
            .len(),
        5
    );
}

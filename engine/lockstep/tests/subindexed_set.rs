//! A set PState stores one entry per element: adding or removing one element of a large set
//! writes exactly one entry, and members page in order.

use lockstep::{Depot, Engine, EngineOptions, NoMessages, TopologyBuilder};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Edit {
    Add { parent: u32, first: u32, count: u32 },
    Remove { parent: u32, child: u32 },
}

fn parent_of(edit: &Edit) -> u32 {
    match edit {
        Edit::Add { parent, .. } | Edit::Remove { parent, .. } => *parent,
    }
}

#[test]
fn one_element_change_writes_one_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let edits = Depot::<Edit>::hashed("edits", 4, parent_of).expect("depot");
    let mut builder = TopologyBuilder::<NoMessages>::new("family", 4);
    let children = builder.set_pstate::<u32, u32>("children");
    let c = children.clone();
    builder.consume(&edits, move |ctx, edit: Edit| {
        match edit {
            Edit::Add {
                parent,
                first,
                count,
            } => {
                for child in first..first + count {
                    ctx.set_insert(&c, &parent, &child)?;
                }
            }
            Edit::Remove { parent, child } => {
                ctx.set_remove(&c, &parent, &child)?;
            }
        }
        Ok(())
    });
    let engine = Engine::builder(dir.path())
        .options(EngineOptions::manual())
        .depot(&edits)
        .topology(builder.build().expect("topology"))
        .open()
        .expect("open");

    let big = 100_000;
    engine
        .append(
            &edits,
            &Edit::Add {
                parent: 7,
                first: 0,
                count: big,
            },
        )
        .expect("append");
    let summary = engine.run_batch("family").expect("batch").expect("ran");
    assert_eq!(summary.writes, u64::from(big));

    engine
        .append(
            &edits,
            &Edit::Add {
                parent: 7,
                first: big,
                count: 1,
            },
        )
        .expect("append");
    let summary = engine.run_batch("family").expect("batch").expect("ran");
    assert_eq!(
        summary.writes, 1,
        "adding one child rewrote more than one entry"
    );

    engine
        .append(
            &edits,
            &Edit::Remove {
                parent: 7,
                child: 500,
            },
        )
        .expect("append");
    let summary = engine.run_batch("family").expect("batch").expect("ran");
    assert_eq!(
        summary.writes, 1,
        "removing one child rewrote more than one entry"
    );

    let snapshot = engine.snapshot().expect("snapshot");
    assert!(snapshot.set_contains(&children, &7, &big).expect("read"));
    assert!(!snapshot.set_contains(&children, &7, &500).expect("read"));
    let page = snapshot
        .set_members(&children, &7, Some(&498), 4)
        .expect("page");
    assert_eq!(page, vec![499, 501, 502, 503]);
    assert!(snapshot
        .set_members(&children, &8, None, 10)
        .expect("empty set")
        .is_empty());
}

//! The `components` binary end to end: the demo's data verifies clean, `verify` finds and lists
//! every violation in corrupted data, and bad invocations fail with a message, not a panic.

mod common;

use common::bin;
use lockstep::{Engine, EngineOptions, NoMessages, TopologyBuilder};
use lockstep_topologies::components::{Command as ComponentCommand, Component, DEPOT, TOPOLOGY};

#[test]
fn demo_then_verify_passes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let out = bin()
        .args([
            "demo",
            "--commands",
            "3000",
            "--clients",
            "3",
            "--partitions",
            "4",
            "--data",
        ])
        .arg(&data)
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("every invariant holds"), "{stdout}");
    assert!(stdout.contains("applied"), "{stdout}");

    let out = bin()
        .args(["verify", "--data"])
        .arg(&data)
        .output()
        .expect("run verify");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.starts_with("ok: "), "{stdout}");
}

#[test]
fn verify_lists_every_violation_in_corrupted_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        // A rogue topology under the same names writes children that point at missing
        // parents: exactly what an uncoordinated store would leave behind.
        let commands = lockstep::Depot::<ComponentCommand>::hashed(DEPOT, 2, |c| c.id().clone())
            .expect("depot");
        let mut rogue = TopologyBuilder::<NoMessages>::new(TOPOLOGY, 2);
        let components = rogue.pstate::<String, Component>("components");
        let _children = rogue.set_pstate::<String, String>("children");
        rogue.consume(&commands, move |ctx, command: ComponentCommand| {
            let orphan = Component {
                parent: Some("ghost".to_string()),
                attrs: Default::default(),
                version: 1,
            };
            ctx.put(&components, command.id(), &orphan)
        });
        let engine = Engine::builder(dir.path())
            .options(EngineOptions::manual())
            .depot(&commands)
            .topology(rogue.build().expect("topology"))
            .open()
            .expect("open");
        for id in ["a", "b"] {
            let create = ComponentCommand::Create {
                id: id.to_string(),
                parent: None,
                attrs: Default::default(),
            };
            engine.append(&commands, &create).expect("append");
        }
        engine.run_until_idle().expect("batch");
    }
    let out = bin()
        .args(["verify", "--data"])
        .arg(dir.path())
        .output()
        .expect("run verify");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAILED: 2 violations"), "{stdout}");
    assert!(
        stdout.contains(r#"child: "a""#) && stdout.contains(r#"child: "b""#),
        "{stdout}"
    );
}

#[test]
fn bad_invocations_fail_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = bin()
        .args(["verify", "--data"])
        .arg(dir.path().join("missing"))
        .output()
        .expect("run verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("not a Lockstep data directory"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let out = bin()
        .args(["demo", "--clients", "0"])
        .output()
        .expect("run demo");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 1"));

    // A limit of 0 MiB/s is no limit one would mean (the engine would raise it to its least,
    // 1 MiB/s): refused before anything is opened.
    let out = bin()
        .args(["serve", "--background-write-mib-per-s", "0", "--data"])
        .arg(dir.path().join("unopened"))
        .output()
        .expect("run serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--background-write-mib-per-s"), "{stderr}");
    assert!(!dir.path().join("unopened").exists(), "nothing created");

    let out = bin().arg("--help").output().expect("help");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("verify"));
}

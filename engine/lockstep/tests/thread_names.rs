//! The engine's threads carry their role in the first 15 bytes of their names, the part the
//! kernel keeps (`/proc/*/task/*/comm`, `top -H`, `perf`), and close takes them all down.
//! Profiles and the benchmark's CPU-per-role figures find the threads by those names. In its own
//! binary, so that no other test's engine adds threads of its own.

#![cfg(target_os = "linux")]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{ledger, open};
use lockstep::EngineOptions;

/// The names of this process's threads, as the kernel keeps them.
fn thread_names() -> BTreeSet<String> {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
        .map(|name| name.trim_end().to_string())
        .collect()
}

const ROLES: [&str; 3] = ["lockstep-append", "lockstep-driver", "lockstep-commit"];

#[test]
fn threads_are_named_by_role_and_closed_with_the_engine() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path(), &ledger(2), EngineOptions::default()).expect("open");
    // The committer is started by the driver, a moment after the open returns.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut names = thread_names();
    while !ROLES.iter().all(|role| names.contains(*role)) {
        assert!(
            Instant::now() < deadline,
            "missing a role among {names:?} (want {ROLES:?})"
        );
        std::thread::sleep(Duration::from_millis(10));
        names = thread_names();
    }
    engine.close();
    // Joined by then, but a thread leaves `/proc` a moment after its joiner wakes (and the
    // committer, scoped inside the driver, signals its end before it exits).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<String> = thread_names()
            .into_iter()
            .filter(|name| name.starts_with("lockstep-"))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "threads left after close: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

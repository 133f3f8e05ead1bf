//! Kills a real engine process with SIGKILL mid-load, reopens its data directory, and checks
//! that every acknowledged append survived, that the committed state is exactly the effect of
//! the consumed prefix of each partition (no partial batch), and that draining the rest applies
//! every record exactly once.
//!
//! The child is this same test binary, re-run with `LOCKSTEP_SIGKILL_CHILD_DIR` set: it appends
//! from several threads with batches running automatically and prints `ack <partition>
//! <offset> <key> <amount> <mirror>` after each acknowledged append.

mod common;

use common::{kill, Op};
use lockstep::EngineOptions;

const CHILD_ENV: &str = "LOCKSTEP_SIGKILL_CHILD_DIR";
const PARTITIONS: u32 = 4;

#[test]
#[ignore = "run by kill_nine_mid_load as a child process"]
fn child_appends_until_killed() {
    kill::run_child(
        CHILD_ENV,
        PARTITIONS,
        EngineOptions::default(),
        |thread, i, j| Op {
            key: (thread * 31 + i * 7 + j) % 23,
            amount: i64::from((i + j) % 7) - 3,
            mirror: (i + j * 5) % 19,
        },
    );
}

#[test]
fn kill_nine_mid_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut loaded = kill::Loaded::spawn("child_appends_until_killed", CHILD_ENV, dir.path());
    loaded.read_acks(1_000 + kill::varying(4_000) as usize);
    let acked = loaded.kill_nine();
    assert!(
        acked.len() >= 100,
        "child acknowledged only {} appends",
        acked.len()
    );

    kill::check_reopened(dir.path(), PARTITIONS, &acked);
}

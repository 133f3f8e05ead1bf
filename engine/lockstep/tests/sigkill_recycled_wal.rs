//! Kills a real engine process with SIGKILL mid-load while its write-ahead log files are
//! being freed and written over: the child's `wal_bytes_max` is the least (1 MiB), so RocksDB
//! flushes every MiB or so of log and the next log files take over freed ones. A recycled
//! file holds the records of its earlier lives behind the new ones, and a kill leaves them
//! there (a clean close would cut the file short). After the kill, the checks of `sigkill.rs`:
//! every acknowledged append survived, the committed state is the effect of the consumed
//! prefix of each partition, and draining the rest applies every record exactly once.

mod common;

use std::path::Path;

use common::{kill, Op};
use lockstep::EngineOptions;

const CHILD_ENV: &str = "LOCKSTEP_SIGKILL_RECYCLED_WAL_DIR";
const PARTITIONS: u32 = 4;

#[test]
#[ignore = "run by kill_nine_while_log_files_are_written_over as a child process"]
fn child_appends_until_killed() {
    let mut options = EngineOptions::default();
    options.wal_bytes_max = 0;
    kill::run_child(CHILD_ENV, PARTITIONS, options, |thread, i, j| Op {
        key: (thread * 31 + i * 7 + j) % 23,
        amount: i64::from((i + j) % 7) - 3,
        mirror: (i + j * 5) % 19,
    });
}

/// How many times RocksDB's info logs in `dir` (the child's, and any of its earlier opens')
/// say a log file was taken from the freed ones.
fn log_files_written_over(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .expect("read data directory")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("LOG"))
        })
        .map(|path| {
            std::fs::read_to_string(&path)
                .expect("read info log")
                .matches("from recycle list")
                .count()
        })
        .sum()
}

#[test]
fn kill_nine_while_log_files_are_written_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut loaded = kill::Loaded::spawn("child_appends_until_killed", CHILD_ENV, dir.path());
    loaded.read_acks(20_000 + kill::varying(20_000) as usize);
    let acked = loaded.kill_nine();
    let written_over = log_files_written_over(dir.path());
    eprintln!("log files written over before the kill: {written_over}");
    assert!(
        written_over >= 2,
        "{written_over} log files written over before the kill"
    );

    kill::check_reopened(dir.path(), PARTITIONS, &acked);
}

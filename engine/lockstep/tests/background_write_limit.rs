//! `EngineOptions::background_write_bytes_per_s` reaches RocksDB. RocksDB does not record its
//! rate limiter in the options file it writes at every open, but it records `bytes_per_sync`,
//! which it raises from 0 to 1 MiB when a limiter is set: so the file of an engine opened with
//! a limit says 1 MiB, and that of one opened without says 0. (That the limit holds a flush to
//! its rate is the store's unit test `a_flush_keeps_to_the_background_write_limit`.)

mod common;

use std::path::Path;
use std::time::Duration;

use common::TOPOLOGY;
use lockstep::EngineOptions;

/// `bytes_per_sync` as the newest RocksDB options file in `dir` records it.
fn recorded_bytes_per_sync(dir: &Path) -> u64 {
    let newest = std::fs::read_dir(dir)
        .expect("read data directory")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter_map(|name| {
            let number: u64 = name.strip_prefix("OPTIONS-")?.parse().ok()?;
            Some((number, name))
        })
        .max()
        .expect("an options file");
    let text = std::fs::read_to_string(dir.join(newest.1)).expect("read options file");
    let value = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("bytes_per_sync="))
        .expect("bytes_per_sync recorded");
    value.parse().expect("a number")
}

/// Opens an engine with `options`, processes one batch, closes it, and returns what RocksDB
/// recorded.
fn open_process_close(dir: &Path, options: EngineOptions) -> u64 {
    let ledger = common::ledger(2);
    let engine = common::open(dir, &ledger, options).expect("open");
    let ops = common::sample_ops(100);
    let ids = engine.append_many(&ledger.ops, &ops).expect("append");
    engine
        .wait_for(
            TOPOLOGY,
            *ids.last().expect("appended"),
            Duration::from_secs(60),
        )
        .expect("processed under the limit");
    drop(engine);
    recorded_bytes_per_sync(dir)
}

#[test]
fn a_background_write_limit_reaches_rocksdb_and_none_leaves_it_off() {
    let limited = tempfile::tempdir().expect("tempdir");
    let mut options = EngineOptions::default();
    options.background_write_bytes_per_s = Some(16 << 20);
    assert_eq!(open_process_close(limited.path(), options), 1 << 20);

    let unlimited = tempfile::tempdir().expect("tempdir");
    assert_eq!(
        open_process_close(unlimited.path(), EngineOptions::default()),
        0
    );
}

//! Disk faults: a failed fsync (before or after the write reached the disk) at an append or a
//! commit, a full disk (injected, and a real one on a small tmpfs). Each must poison the engine
//! with a clear error, leave committed data readable, and lose nothing acknowledged: after a
//! restart the state is exactly the model's, with the failed write either fully there or fully
//! absent.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{ledger, open, read_state, Ledger, Model, Op};
use lockstep::{DurableWrite, Engine, EngineOptions, Error, StorageFaults, WriteFault};

fn options_with(faults: &StorageFaults) -> EngineOptions {
    let mut options = EngineOptions::manual();
    options.storage_faults = Some(faults.clone());
    options
}

fn op(i: u32) -> Op {
    Op {
        key: i % 7,
        amount: i64::from(i) + 1,
        mirror: i % 3,
    }
}

/// Appends `ops` one call each, recording them in the model.
fn append_all(engine: &Engine, ledger: &Ledger, model: &mut Model, ops: impl Iterator<Item = Op>) {
    for op in ops {
        let (partition, offset) = model.append(op);
        let id = engine.append(&ledger.ops, &op).expect("append");
        assert_eq!((id.partition, id.offset), (partition, offset));
    }
}

fn assert_poisoned(engine: &Engine, ledger: &Ledger, error: Error) {
    let Error::Poisoned { reason } = error else {
        panic!("expected the engine to poison itself, got {error:?}");
    };
    assert!(
        reason.contains("injected fault"),
        "unclear reason: {reason}"
    );
    assert_eq!(engine.poisoned().as_deref(), Some(reason.as_str()));
    assert!(matches!(
        engine.append(&ledger.ops, &op(99)),
        Err(Error::Poisoned { .. })
    ));
    assert!(matches!(
        engine.run_batch(common::TOPOLOGY),
        Err(Error::Poisoned { .. })
    ));
}

#[test]
fn failed_append_fsync_loses_nothing_acknowledged() {
    for fault in [WriteFault::NotWritten, WriteFault::WrittenButFailed] {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = ledger(4);
        let faults = StorageFaults::new();
        let mut model = Model::new(4);
        let engine = open(dir.path(), &ledger, options_with(&faults)).expect("open");
        append_all(&engine, &ledger, &mut model, (0..20).map(op));
        engine.run_until_idle().expect("batches");
        model.run_batch(usize::MAX);

        faults.fail_next(DurableWrite::Append, fault);
        let failed = op(1000);
        let error = engine.append(&ledger.ops, &failed).expect_err("injected");
        assert_poisoned(&engine, &ledger, error);
        // Committed data stays readable while poisoned.
        assert_eq!(read_state(&engine, &ledger), model.state, "{fault:?}");
        drop(engine);

        let engine = open(dir.path(), &ledger, EngineOptions::manual()).expect("reopen");
        let partition = model.partition(failed.key);
        let head = engine
            .depot_next_offset(&ledger.ops, partition)
            .expect("head");
        let expected_head = model.next_offset[partition as usize];
        match fault {
            WriteFault::NotWritten => assert_eq!(head, expected_head, "a lost write reappeared"),
            WriteFault::WrittenButFailed => {
                // It reached the disk: it is a record like any other, processed once.
                assert_eq!(head, expected_head + 1, "a durable write vanished");
                model.append(failed);
            }
            _ => unreachable!("only two faults are injected"),
        }
        append_all(&engine, &ledger, &mut model, (20..30).map(op));
        engine.run_until_idle().expect("batches");
        model.run_batch(usize::MAX);
        assert_eq!(read_state(&engine, &ledger), model.state, "{fault:?}");
    }
}

#[test]
fn failed_commit_fsync_applies_the_batch_exactly_once() {
    for fault in [WriteFault::NotWritten, WriteFault::WrittenButFailed] {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = ledger(4);
        let faults = StorageFaults::new();
        let mut model = Model::new(4);
        let engine = open(dir.path(), &ledger, options_with(&faults)).expect("open");
        append_all(&engine, &ledger, &mut model, (0..20).map(op));
        engine.run_until_idle().expect("batches");
        model.run_batch(usize::MAX);
        let before = model.state.clone();

        append_all(&engine, &ledger, &mut model, (20..40).map(op));
        faults.fail_next(DurableWrite::Commit, fault);
        let error = engine.run_batch(common::TOPOLOGY).expect_err("injected");
        assert_poisoned(&engine, &ledger, error);
        model.run_batch(usize::MAX);
        let visible = read_state(&engine, &ledger);
        match fault {
            WriteFault::NotWritten => assert_eq!(visible, before),
            // Durable, so readers of the database may see it; it was never acknowledged.
            WriteFault::WrittenButFailed => assert_eq!(visible, model.state),
            _ => unreachable!("only two faults are injected"),
        }
        drop(engine);

        let engine = open(dir.path(), &ledger, EngineOptions::manual()).expect("reopen");
        let rerun = engine.run_until_idle().expect("batches");
        match fault {
            WriteFault::NotWritten => assert_eq!(rerun, 1, "the lost batch runs again"),
            WriteFault::WrittenButFailed => assert_eq!(rerun, 0, "the durable batch stays done"),
            _ => unreachable!("only two faults are injected"),
        }
        assert_eq!(read_state(&engine, &ledger), model.state, "{fault:?}");
    }
}

#[test]
fn a_full_disk_refuses_writes_until_restarted_with_space() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(4);
    let faults = StorageFaults::new();
    let mut model = Model::new(4);
    let engine = open(dir.path(), &ledger, options_with(&faults)).expect("open");
    append_all(&engine, &ledger, &mut model, (0..10).map(op));

    faults.set_disk_full(true);
    let Err(Error::Poisoned { reason }) = engine.append(&ledger.ops, &op(500)) else {
        panic!("an append to a full disk must fail");
    };
    assert!(reason.contains("no space left on device"), "{reason}");
    assert!(engine.run_batch(common::TOPOLOGY).is_err());
    drop(engine);

    let engine = open(dir.path(), &ledger, EngineOptions::manual()).expect("reopen");
    engine.run_until_idle().expect("batches");
    model.run_batch(usize::MAX);
    assert_eq!(read_state(&engine, &ledger), model.state);
}

/// A small tmpfs, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts `size_mib` MiB. Needs the right to mount (root, CAP_SYS_ADMIN). Where mounting
    /// is refused the test says so and passes, unless `LOCKSTEP_REQUIRE_TMPFS=1` (CI sets it)
    /// makes that a failure.
    fn mount(size_mib: u32) -> Option<Self> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|status| status.success());
        if !mounted {
            assert!(
                std::env::var_os("LOCKSTEP_REQUIRE_TMPFS").is_none(),
                "mounting a tmpfs failed, and LOCKSTEP_REQUIRE_TMPFS is set"
            );
            eprintln!("cannot mount a tmpfs here (needs root): the real full-disk test is skipped");
            return None;
        }
        Some(Self {
            path: dir.path().to_path_buf(),
            _dir: dir,
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

fn fill(path: &Path, bytes: usize) {
    std::fs::write(path, vec![0x5au8; bytes]).expect("write ballast");
}

#[test]
fn a_real_full_disk_poisons_and_recovers_every_acknowledged_record() {
    let Some(tmpfs) = Tmpfs::mount(24) else {
        return;
    };
    let ballast = tmpfs.path.join("ballast");
    fill(&ballast, 4 << 20);
    let data = tmpfs.path.join("data");
    let ledger = ledger(4);
    let mut model = Model::new(4);
    let engine = open(&data, &ledger, EngineOptions::manual()).expect("open");

    // Fill the disk with acknowledged appends (and committed batches) until a write fails.
    const CHUNK: u32 = 50;
    let mut in_doubt = Vec::new();
    for chunk in 0..100_000u32 {
        let ops: Vec<Op> = (chunk * CHUNK..(chunk + 1) * CHUNK)
            .map(|i| Op {
                key: i,
                amount: 1,
                mirror: i % 5,
            })
            .collect();
        match engine.append_many(&ledger.ops, &ops) {
            Ok(ids) => {
                for (id, op) in ids.iter().zip(&ops) {
                    assert_eq!((id.partition, id.offset), model.append(*op));
                }
            }
            Err(error) => {
                let Error::Poisoned { reason } = &error else {
                    panic!("a full disk must poison the engine, got {error:?}");
                };
                assert!(
                    reason.to_lowercase().contains("no space left on device"),
                    "the error should say the disk is full: {reason}"
                );
                in_doubt = ops;
                break;
            }
        }
        if chunk % 20 == 19 {
            match engine.run_until_idle() {
                Ok(_) => {
                    model.run_batch(usize::MAX);
                }
                Err(Error::Poisoned { reason }) => {
                    assert!(reason.to_lowercase().contains("no space left"), "{reason}");
                    break;
                }
                Err(other) => panic!("unexpected batch error: {other}"),
            }
        }
    }
    assert!(engine.poisoned().is_some(), "the disk never filled up");
    assert!(matches!(
        engine.append(&ledger.ops, &op(1)),
        Err(Error::Poisoned { .. })
    ));
    // Reads still work on a full disk, and show the last committed batch.
    assert_eq!(read_state(&engine, &ledger), model.state);
    eprintln!(
        "disk full after {} acknowledged records: {}",
        model.next_offset.iter().sum::<u64>(),
        engine.poisoned().unwrap_or_default()
    );
    drop(engine);

    // Make room and restart: everything acknowledged is there, the call in doubt entirely or
    // not at all, and it is all processed once.
    std::fs::remove_file(&ballast).expect("remove ballast");
    let engine = open(&data, &ledger, EngineOptions::manual()).expect("reopen with space");
    let heads: Vec<u64> = (0..4)
        .map(|p| engine.depot_next_offset(&ledger.ops, p).expect("head"))
        .collect();
    let acknowledged = model.next_offset.clone();
    if heads != acknowledged {
        for op in &in_doubt {
            model.append(*op);
        }
        assert_eq!(
            heads, model.next_offset,
            "depot heads {heads:?}: neither the acknowledged {acknowledged:?} nor those plus the call in doubt"
        );
    }
    engine.run_until_idle().expect("batches after restart");
    model.run_batch(usize::MAX);
    assert_eq!(read_state(&engine, &ledger), model.state);
}

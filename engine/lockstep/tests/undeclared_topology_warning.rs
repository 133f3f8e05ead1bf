//! The open's warning about an undeclared topology that holds depot records back, read from
//! its logs. One test in its own binary: tracing caches, per process, whether a log line is
//! wanted the first time any thread reaches it, so a test in a shared binary could see the
//! line judged unwanted on a thread with no subscriber and dropped.

mod common;

use std::sync::{Arc, Mutex};

use common::ledger;
use common::retention::{audit, directory_with_a_committed_audit, open_with_audit as open};
use lockstep::EngineOptions;

const PARTITIONS: u32 = 2;

/// Log lines written while `f` runs on this thread (the open logs on the caller's thread).
fn logs_of<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let result = tracing::subscriber::with_default(subscriber, f);
    let bytes = captured.0.lock().expect("log buffer").clone();
    (result, String::from_utf8_lossy(&bytes).into_owned())
}

/// With retention on, an open that leaves out a stored topology holding a declared depot
/// back warns, naming it and the way out; without retention it only notes it; once the
/// topology is retired, nothing is said.
#[test]
fn an_undeclared_topology_holding_records_back_is_warned_about() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(PARTITIONS);
    let (audit, _) = audit("audit", &ledger);
    directory_with_a_committed_audit(dir.path(), &ledger, &audit);

    let (engine, logs) = logs_of(|| open(dir.path(), &ledger, None, false));
    drop(engine.expect("open with retention, without the audit"));
    let warning = undeclared_line(&logs);
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("audit"), "{warning}");
    assert!(warning.contains("retire_topology"), "{warning}");

    let (engine, logs) = logs_of(|| common::open(dir.path(), &ledger, EngineOptions::manual()));
    drop(engine.expect("open without retention, without the audit"));
    let note = undeclared_line(&logs);
    assert!(note.contains("INFO"), "{note}");
    assert!(note.contains("audit"), "{note}");

    let (engine, logs) = logs_of(|| open(dir.path(), &ledger, None, true));
    drop(engine.expect("open retiring the audit"));
    let (engine, logs_after) = logs_of(|| open(dir.path(), &ledger, None, false));
    drop(engine.expect("open after the audit is retired"));
    for logs in [logs, logs_after] {
        assert!(!logs.contains(UNDECLARED), "{logs}");
    }
}

/// What the open logs about each undeclared topology.
const UNDECLARED: &str = "stored topology not declared";

/// The line of `logs` about an undeclared topology.
fn undeclared_line(logs: &str) -> &str {
    logs.lines()
        .find(|line| line.contains(UNDECLARED))
        .unwrap_or_else(|| panic!("no line about the audit in {logs:?}"))
}

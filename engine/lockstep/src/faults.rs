//! Storage faults injected on purpose, per engine, for tests and simulations.
//!
//! A real disk fails in two ways that matter to the commit protocol: a write that never
//! reaches the disk (a full disk, an I/O error), and a write that reaches the disk while its
//! sync reports failure, leaving the caller unable to tell whether it is durable. The engine
//! treats both alike (it poisons itself and refuses further writes), and recovery must accept
//! either outcome. [`StorageFaults`] makes either happen at the next durable write of a kind,
//! or at every write while the disk is "full", without touching the process-wide failpoints,
//! so simulations can run in parallel threads.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use lockstep_core::store::StoreError;

use crate::engine::lock;

/// A durable write of the commit protocol (`engine/docs/commit-protocol.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum DurableWrite {
    /// A group of depot appends (step A5).
    Append,
    /// A batch commit (step B5).
    Commit,
}

/// How an injected write fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum WriteFault {
    /// The write fails before anything reaches the disk.
    NotWritten,
    /// The write reaches the disk, then its sync reports failure: durable but never
    /// acknowledged, the ambiguous case a failed fsync leaves behind.
    WrittenButFailed,
}

#[derive(Debug, Default)]
struct FaultPlan {
    next: BTreeMap<DurableWrite, WriteFault>,
    disk_full: bool,
    injected: u64,
}

/// Faults to inject into one engine's durable writes. Clones share one plan, so a test keeps
/// a clone to arm faults after handing another to
/// [`EngineOptions::storage_faults`](crate::EngineOptions::storage_faults).
#[derive(Debug, Clone, Default)]
pub struct StorageFaults {
    plan: Arc<Mutex<FaultPlan>>,
}

impl StorageFaults {
    /// A plan that injects nothing until armed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next durable write of kind `write` fail with `fault` (replacing any fault
    /// already armed for that kind).
    pub fn fail_next(&self, write: DurableWrite, fault: WriteFault) {
        lock(&self.plan).next.insert(write, fault);
    }

    /// While `full`, every durable write fails before reaching the disk, as on a full disk.
    pub fn set_disk_full(&self, full: bool) {
        lock(&self.plan).disk_full = full;
    }

    /// How many faults have fired.
    pub fn injected(&self) -> u64 {
        lock(&self.plan).injected
    }

    /// The fault to apply to the write about to happen (consuming an armed one) and its
    /// message.
    fn take(&self, write: DurableWrite) -> Option<(WriteFault, &'static str)> {
        let mut plan = lock(&self.plan);
        let fault = if plan.disk_full {
            Some((
                WriteFault::NotWritten,
                "injected fault: no space left on device",
            ))
        } else {
            plan.next.remove(&write).map(|fault| {
                let message = match fault {
                    WriteFault::NotWritten => "injected fault: write failed, nothing written",
                    WriteFault::WrittenButFailed => {
                        "injected fault: fsync failed after the write reached the disk"
                    }
                };
                (fault, message)
            })
        };
        if fault.is_some() {
            plan.injected += 1;
        }
        fault
    }
}

/// Runs `write` under `faults`: fails before it, or after it, as armed.
pub(crate) fn faulted_write(
    faults: Option<&StorageFaults>,
    kind: DurableWrite,
    op: &'static str,
    write: impl FnOnce() -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let Some(faults) = faults else {
        return write();
    };
    // A faulted write reports the backend's I/O error, as a real failure would.
    let error = |message: &str| StoreError::Io {
        op,
        message: message.to_string(),
    };
    match faults.take(kind) {
        None => write(),
        Some((WriteFault::NotWritten, message)) => Err(error(message)),
        Some((WriteFault::WrittenButFailed, message)) => {
            write()?;
            Err(error(message))
        }
    }
}

//! The plumbing of the `kill -9` tests: the test binary re-runs itself as a child that loads
//! an engine and prints every acknowledged record (and, for some tests, notes on what it is
//! doing), and the parent kills it at a chosen moment, collects what it printed, and checks
//! the data directory it left.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Lines, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockstep::{Engine, EngineOptions};

use super::{ledger, open, read_state, Ledger, LedgerState, Op};

/// How long a child may live: past it, a watchdog kills it, so that a parent blocked reading
/// a stalled child's output sees the output end and fails instead of hanging.
const CHILD_LIFETIME_MAX: Duration = Duration::from_secs(120);

/// What the parent learned: every acknowledged `(partition, offset)` and its op.
pub type Acked = BTreeMap<(u32, u64), Op>;

/// Appends from 4 threads, 8 ops per call (`op(thread, call, index)`), until the process is
/// killed, printing `ack <partition> <offset> <key> <amount> <mirror>` for each acknowledged
/// record once its call returns.
pub fn append_until_killed(
    engine: &Engine,
    ledger: &Ledger,
    op: impl Fn(u32, u32, u32) -> Op + Sync,
) {
    // The test harness has printed the test's name without ending its line.
    println!();
    let stdout = std::sync::Mutex::new(std::io::stdout());
    std::thread::scope(|scope| {
        for thread in 0..4u32 {
            let (stdout, op) = (&stdout, &op);
            scope.spawn(move || {
                for call in 0u32.. {
                    let ops: Vec<Op> = (0..8u32).map(|j| op(thread, call, j)).collect();
                    let ids = engine.append_many(&ledger.ops, &ops).expect("append");
                    let mut out = stdout.lock().expect("stdout");
                    print_acks(&mut *out, &ops, &ids);
                    out.flush().expect("flush");
                }
            });
        }
    });
}

/// Prints `ack <partition> <offset> <key> <amount> <mirror>` for each acknowledged record,
/// the line [`Loaded`] reads.
pub fn print_acks(out: &mut impl Write, ops: &[Op], ids: &[lockstep::RecordId]) {
    for (op, id) in ops.iter().zip(ids) {
        writeln!(
            out,
            "ack {} {} {} {} {}",
            id.partition, id.offset, op.key, op.amount, op.mirror
        )
        .expect("write");
    }
}

/// The body of a child test: if `env` names a data directory (the parent spawned this
/// process), opens the ledger on `partitions` there with `options` and appends until killed;
/// otherwise (an ordinary test run) does nothing.
pub fn run_child(
    env: &str,
    partitions: u32,
    options: EngineOptions,
    op: impl Fn(u32, u32, u32) -> Op + Sync,
) {
    let Ok(dir) = std::env::var(env) else {
        return;
    };
    let ledger = ledger(partitions);
    let engine = open(dir.as_ref(), &ledger, options).expect("open");
    append_until_killed(&engine, &ledger, op);
}

/// A child process running `child_test` of this test binary, with `env` set to `dir`.
pub struct Loaded {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    /// Acknowledgments read so far.
    pub acked: Acked,
    /// Every other line the child printed, in order.
    pub notes: Vec<String>,
    /// Set once the child is killed, which stands the watchdog down.
    killed: Arc<AtomicBool>,
}

impl Loaded {
    pub fn spawn(child_test: &str, env: &str, dir: &Path) -> Self {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                child_test,
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(env, dir)
            .stdout(Stdio::piped())
            // A child's panic message shows in the parent's output.
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let killed = Arc::new(AtomicBool::new(false));
        let (watched, pid) = (Arc::clone(&killed), child.id().to_string());
        std::thread::spawn(move || {
            let started = Instant::now();
            while started.elapsed() < CHILD_LIFETIME_MAX {
                if watched.load(Ordering::Acquire) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if !watched.load(Ordering::Acquire) {
                let _ = Command::new("kill").args(["-9", &pid]).status();
            }
        });
        Self {
            child,
            lines: BufReader::new(stdout).lines(),
            acked: Acked::new(),
            notes: Vec::new(),
            killed,
        }
    }

    /// Reads acknowledgments until `count` (or a minute) has passed.
    pub fn read_acks(&mut self, count: usize) {
        let started = Instant::now();
        while self.acked.len() < count && started.elapsed() < Duration::from_secs(60) {
            let Some(Ok(line)) = self.lines.next() else {
                break;
            };
            self.record(&line);
        }
    }

    /// Reads lines until one that starts with `prefix` (or a minute has passed, or the
    /// child's output ended); whether it came.
    pub fn read_until_note(&mut self, prefix: &str) -> bool {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            let Some(Ok(line)) = self.lines.next() else {
                return false;
            };
            self.record(&line);
            if line.starts_with(prefix) {
                return true;
            }
        }
        false
    }

    /// SIGKILL, reap, and read what the child printed before it died.
    pub fn kill_nine(self) -> Acked {
        self.kill_nine_with_notes().0
    }

    /// [`kill_nine`](Self::kill_nine), also returning the child's other lines.
    pub fn kill_nine_with_notes(mut self) -> (Acked, Vec<String>) {
        self.stop();
        while let Some(Ok(line)) = self.lines.next() {
            self.record(&line);
        }
        (
            std::mem::take(&mut self.acked),
            std::mem::take(&mut self.notes),
        )
    }

    fn stop(&mut self) {
        if !self.killed.swap(true, Ordering::AcqRel) {
            self.child.kill().expect("SIGKILL");
            self.child.wait().expect("reap");
        }
    }

    fn record(&mut self, line: &str) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.first() != Some(&"ack") || fields.len() != 6 {
            self.notes.push(line.to_string());
            return;
        }
        let n = |i: usize| fields[i].parse::<i64>().expect("number");
        self.acked.insert(
            (n(1) as u32, n(2) as u64),
            Op {
                key: n(3) as u32,
                amount: n(4),
                mirror: n(5) as u32,
            },
        );
    }
}

impl Drop for Loaded {
    /// A parent that fails before it kills its child does not leave it running.
    fn drop(&mut self) {
        if !self.killed.swap(true, Ordering::AcqRel) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Checks the data directory `dir` a child loading the ledger on `partitions` left when it was
/// killed, having acknowledged `acked`: reopened, every acknowledged record is stored as
/// acknowledged, the committed state is exactly the effect of the consumed prefix of each
/// partition (no partial batch), and draining the rest applies every record exactly once.
pub fn check_reopened(dir: &Path, partitions: u32, acked: &Acked) {
    let ledger = ledger(partitions);
    let engine = open(dir, &ledger, EngineOptions::manual()).expect("reopen");
    let mut durable: Vec<Vec<Op>> = Vec::new();
    for p in 0..partitions {
        let records = engine
            .read_depot(&ledger.ops, p, 0, usize::MAX)
            .expect("read depot");
        for (offset, op) in &records {
            if let Some(acked_op) = acked.get(&(p, *offset)) {
                assert_eq!(acked_op, op, "partition {p} offset {offset} changed");
            }
        }
        durable.push(records.into_iter().map(|(_, op)| op).collect());
    }
    for (p, offset) in acked.keys() {
        assert!(
            (*offset as usize) < durable[*p as usize].len(),
            "acknowledged record {p}/{offset} lost"
        );
    }

    let committed = engine.committed(super::TOPOLOGY).expect("commit record");
    let state = read_state(&engine, &ledger);
    let consumed: Vec<u64> = (0..partitions)
        .map(|p| {
            committed
                .offsets
                .iter()
                .find(|o| o.partition == p)
                .map_or(0, |o| o.next_offset)
        })
        .collect();
    assert_effects(&durable, &consumed, &state);
    eprintln!(
        "killed after {} acknowledged appends; {} durable; batch {} committed {} records",
        acked.len(),
        durable.iter().map(Vec::len).sum::<usize>(),
        committed.batch_id,
        consumed.iter().sum::<u64>()
    );
    assert!(committed.batch_id > 0, "no batch committed before the kill");

    engine.run_until_idle().expect("drain");
    let all: Vec<u64> = durable.iter().map(|d| d.len() as u64).collect();
    assert_effects(&durable, &all, &read_state(&engine, &ledger));
}

/// Totals and mirror logs are exactly what the first `consumed[p]` records of each partition
/// produce (logs compared as multisets: their order depends on where batches were cut).
fn assert_effects(durable: &[Vec<Op>], consumed: &[u64], state: &LedgerState) {
    let mut totals: BTreeMap<u32, i64> = BTreeMap::new();
    let mut logs: BTreeMap<u32, Vec<(u32, i64)>> = BTreeMap::new();
    for (p, records) in durable.iter().enumerate() {
        for op in &records[..consumed[p] as usize] {
            *totals.entry(op.key).or_default() += op.amount;
            logs.entry(op.mirror).or_default().push((op.key, op.amount));
        }
    }
    assert_eq!(state.totals, totals, "totals");
    let mut got = state.mirror_log.clone();
    for log in got.values_mut().chain(logs.values_mut()) {
        log.sort_unstable();
    }
    assert_eq!(got, logs, "mirror logs");
}

/// A number that varies run to run, in `0..bound`: when to kill, so that it is not a fixed
/// point in the protocol.
pub fn varying(bound: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    nanos % bound.max(1)
}

/// Records the state's ops account for: every op adds 1 to a total and 1 entry to a log.
pub fn applied(state: &LedgerState) -> (i64, usize) {
    (
        state.totals.values().sum(),
        state.mirror_log.values().map(Vec::len).sum(),
    )
}

/// Depot totals over all partitions after a kill.
#[derive(Debug, Default)]
pub struct Reopened {
    pub consumed: u64,
    pub trimmed: u64,
    pub heads: u64,
}

/// Checks a data directory the child left with retention on, reopened in `engine`: no trim
/// passed the committed offsets, each partition is dense from its first kept record, every
/// acknowledged record not trimmed is stored as acknowledged, and the state holds exactly
/// the consumed records, each once (every op adds 1), before and after draining the rest.
pub fn check_reopened_with_retention(engine: &Engine, ledger: &Ledger, acked: &Acked) -> Reopened {
    let committed = engine.committed(super::TOPOLOGY).expect("commit record");
    let mut totals = Reopened::default();
    for p in 0..ledger.partitions {
        let first_kept = engine
            .depot_first_kept_offset(&ledger.ops, p)
            .expect("start");
        let head = engine.depot_next_offset(&ledger.ops, p).expect("head");
        let consumed = committed
            .offsets
            .iter()
            .find(|o| o.partition == p)
            .map_or(0, |o| o.next_offset);
        assert!(
            first_kept <= consumed && consumed <= head,
            "partition {p}: first kept {first_kept}, consumed {consumed}, head {head}"
        );
        let stored: BTreeMap<u64, Op> = engine
            .read_depot(&ledger.ops, p, first_kept, usize::MAX)
            .expect("read depot")
            .into_iter()
            .collect();
        assert_eq!(
            stored.len() as u64,
            head - first_kept,
            "partition {p} is dense"
        );
        for ((_, offset), op) in acked.range((p, first_kept)..(p + 1, 0)) {
            assert_eq!(
                stored.get(offset),
                Some(op),
                "partition {p} offset {offset}"
            );
        }
        totals.consumed += consumed;
        totals.trimmed += first_kept;
        totals.heads += head;
    }
    eprintln!("reopened after the kill: {totals:?}");
    assert_eq!(
        applied(&read_state(engine, ledger)),
        (totals.consumed as i64, totals.consumed as usize)
    );
    engine.run_until_idle().expect("drain");
    assert_eq!(
        applied(&read_state(engine, ledger)),
        (totals.heads as i64, totals.heads as usize)
    );
    totals
}

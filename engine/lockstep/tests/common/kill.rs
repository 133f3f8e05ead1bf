//! The plumbing of the `kill -9` tests: the test binary re-runs itself as a child that loads
//! an engine from several threads and prints every acknowledged record, and the parent kills
//! it mid-load and collects what it printed.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Lines, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use lockstep::{Engine, EngineOptions};

use super::{ledger, open, Ledger, Op};

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
    let stdout = std::sync::Mutex::new(std::io::stdout());
    std::thread::scope(|scope| {
        for thread in 0..4u32 {
            let (stdout, op) = (&stdout, &op);
            scope.spawn(move || {
                for call in 0u32.. {
                    let ops: Vec<Op> = (0..8u32).map(|j| op(thread, call, j)).collect();
                    let ids = engine.append_many(&ledger.ops, &ops).expect("append");
                    let mut out = stdout.lock().expect("stdout");
                    for (op, id) in ops.iter().zip(ids) {
                        writeln!(
                            out,
                            "ack {} {} {} {} {}",
                            id.partition, id.offset, op.key, op.amount, op.mirror
                        )
                        .expect("write");
                    }
                    out.flush().expect("flush");
                }
            });
        }
    });
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
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        Self {
            child,
            lines: BufReader::new(stdout).lines(),
            acked: Acked::new(),
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

    /// SIGKILL, reap, and read what the child printed before it died.
    pub fn kill_nine(mut self) -> Acked {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
        while let Some(Ok(line)) = self.lines.next() {
            self.record(&line);
        }
        self.acked
    }

    fn record(&mut self, line: &str) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.first() != Some(&"ack") || fields.len() != 6 {
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

/// A number that varies run to run, in `0..bound`: when to kill, so that it is not a fixed
/// point in the protocol.
pub fn varying(bound: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    nanos % bound.max(1)
}

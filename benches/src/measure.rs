//! Measurement helpers shared by the benchmark binaries: percentiles and medians, process
//! memory and bytes on disk, and the client runners (closed loop and open loop).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

/// The median (the upper one for an even count); 0 for no values.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// The `q` quantile (0..=1) of ascending microsecond latencies, in milliseconds.
pub fn percentile_ms(sorted_us: &[u64], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    sorted_us[((sorted_us.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0
}

/// Bytes of every file under `dir`.
pub fn disk_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// RocksDB's write-ahead log files directly in `dir` (`000123.log`), by file number, and their
/// bytes: the live ones and the freed ones kept to be written over.
pub fn wal_files_bytes(dir: &Path) -> BTreeMap<u64, u64> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let number = name.to_str()?.strip_suffix(".log")?.parse().ok()?;
            Some((number, entry.metadata().ok()?.len()))
        })
        .collect()
}

/// Bytes of the write-ahead log files the last open of the database in `dir` replayed, as its
/// info log (`LOG`) names them (`Recovering log #N`), sized from `before`, the files as
/// [`wal_files_bytes`] found them before that open: freed files kept to be written over are
/// in the directory too, and the open skips them.
pub fn replayed_wal_bytes(dir: &Path, before: &BTreeMap<u64, u64>) -> u64 {
    let Ok(info_log) = std::fs::read_to_string(dir.join("LOG")) else {
        return 0;
    };
    let replayed: BTreeSet<u64> = info_log
        .lines()
        .filter_map(|line| {
            let rest = &line[line.find("Recovering log #")? + "Recovering log #".len()..];
            rest.split(' ').next()?.parse().ok()
        })
        .collect();
    replayed
        .iter()
        .filter_map(|number| before.get(number))
        .sum()
}

/// A `kB` field (`VmRSS:`, `VmHWM:`) of `/proc/{pid}/status`; 0 where there is none.
pub fn status_kib(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Resets this process's peak RSS so the next run's peak is its own.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// This process's peak resident memory since it started or since [`reset_peak_rss`].
pub fn peak_rss_mib() -> f64 {
    status_kib("self", "VmHWM:") as f64 / 1024.0
}

/// This process's resident memory now.
pub fn rss_mib() -> f64 {
    status_kib("self", "VmRSS:") as f64 / 1024.0
}

/// CPU time, in nanoseconds, that this process's live threads whose name starts with
/// `prefix` have used (from `/proc/self/task/*/schedstat`); 0 where there is no `/proc`.
/// It moves less than elapsed time when other processes share the cores, but it moves too
/// (they share the caches, and the host's other guests share the machine).
pub fn threads_cpu_ns(prefix: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|name| name.starts_with(prefix))
        })
        .filter_map(|task| schedstat_cpu_ns(&task.path().join("schedstat")))
        .sum()
}

/// CPU time, in nanoseconds, that the calling thread has used so far; 0 where there is no
/// `/proc`.
pub fn this_thread_cpu_ns() -> u64 {
    schedstat_cpu_ns(Path::new("/proc/thread-self/schedstat")).unwrap_or(0)
}

/// The CPU time a thread's `schedstat` file reports (its first field, in nanoseconds).
fn schedstat_cpu_ns(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Runs `per_client` closures on threads, one per client; returns elapsed seconds.
pub fn run_clients<F>(clients: usize, f: F) -> anyhow::Result<f64>
where
    F: Fn(usize) -> anyhow::Result<()> + Sync,
{
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let f = &f;
                scope.spawn(move || f(c))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("client panicked")))
            })
            .collect()
    });
    for result in results {
        result?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Open-loop latency: each client sends one command per period, on schedule, and each latency
/// is measured from the scheduled send time (so a stall is not hidden by sending later).
pub fn latency_run<F>(
    clients: usize,
    rate_per_s: f64,
    seconds: f64,
    send: F,
) -> anyhow::Result<Vec<u64>>
where
    F: Fn(usize, usize) -> anyhow::Result<()> + Sync,
{
    let latencies = std::sync::Mutex::new(Vec::new());
    run_clients(clients, |c| {
        let mut schedule = Schedule::new(clients, rate_per_s, seconds);
        // Clients staggered across one period, so their sends do not all fall together.
        schedule.start += schedule.period.mul_f64(c as f64 / clients as f64);
        let mut mine = Vec::with_capacity(schedule.per_client);
        for i in 0..schedule.per_client {
            let scheduled = schedule.scheduled(i);
            if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            send(c, i)?;
            mine.push(scheduled.elapsed().as_micros() as u64);
        }
        add(&latencies, mine)?;
        Ok(())
    })?;
    sorted(latencies)
}

/// A client's share of an open-loop schedule: `per_client` commands, one every `period`, the
/// first due at `start`.
struct Schedule {
    start: Instant,
    period: Duration,
    per_client: usize,
}

impl Schedule {
    fn new(clients: usize, rate_per_s: f64, seconds: f64) -> Self {
        Self {
            start: Instant::now(),
            period: Duration::from_secs_f64(clients as f64 / rate_per_s.max(1.0)),
            per_client: ((seconds * rate_per_s) as usize / clients).max(1),
        }
    }

    /// How many of the commands are due by now.
    fn due(&self) -> usize {
        ((self.start.elapsed().as_secs_f64() / self.period.as_secs_f64()) as usize + 1)
            .min(self.per_client)
    }

    /// When command `k` was due.
    fn scheduled(&self, k: usize) -> Instant {
        self.start + self.period * k as u32
    }

    /// Hands `send` each run of commands that has fallen due since the last one, until all
    /// have been sent, sleeping `tick` whenever none has.
    fn send_as_due(
        &self,
        tick: Duration,
        mut send: impl FnMut(std::ops::Range<usize>) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut sent = 0;
        while sent < self.per_client {
            let due = self.due();
            if due > sent {
                send(sent..due)?;
                sent = due;
            } else {
                std::thread::sleep(tick);
            }
        }
        Ok(())
    }
}

/// Adds one client's latencies to everyone's.
fn add(latencies: &std::sync::Mutex<Vec<u64>>, mine: Vec<u64>) -> anyhow::Result<()> {
    latencies
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .extend(mine);
    Ok(())
}

/// Everyone's latencies, ascending.
fn sorted(latencies: std::sync::Mutex<Vec<u64>>) -> anyhow::Result<Vec<u64>> {
    let mut all = latencies
        .into_inner()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    all.sort_unstable();
    Ok(all)
}

/// Open-loop latency for a pipelined system: a submitter per client appends the commands that
/// are due (on a fixed schedule at `rate_per_s` in all) every tick, as one call, and a waiter
/// per client waits for each to become visible. Latency runs from a command's scheduled time
/// to its visibility, so queueing behind a slow batch counts.
pub fn pipelined_latency_run<S, W>(
    clients: usize,
    rate_per_s: f64,
    seconds: f64,
    tick: Duration,
    submit: S,
    wait: W,
) -> anyhow::Result<Vec<u64>>
where
    S: Fn(usize, std::ops::Range<usize>) -> anyhow::Result<Vec<lockstep::RecordId>> + Sync,
    W: Fn(usize, lockstep::RecordId) -> anyhow::Result<()> + Sync,
{
    let latencies = std::sync::Mutex::new(Vec::new());
    run_clients(clients, |c| {
        let schedule = Schedule::new(clients, rate_per_s, seconds);
        // Each submitted group goes to the waiter whole: a client's records are processed in
        // append order, so once the group's last record is visible, all of it is.
        let (tx, rx) = std::sync::mpsc::channel::<(lockstep::RecordId, Vec<Instant>)>();
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| -> anyhow::Result<Vec<u64>> {
                let mut mine = Vec::with_capacity(schedule.per_client);
                for (last, scheduled) in rx {
                    wait(c, last)?;
                    mine.extend(scheduled.iter().map(|t| t.elapsed().as_micros() as u64));
                }
                Ok(mine)
            });
            schedule.send_as_due(tick, |due| {
                let ids = submit(c, due.clone())?;
                let scheduled = due.map(|k| schedule.scheduled(k)).collect();
                if let Some(last) = ids.last() {
                    tx.send((*last, scheduled))
                        .map_err(|_| anyhow::anyhow!("waiter gone"))?;
                }
                Ok(())
            })?;
            drop(tx);
            let mine = waiter
                .join()
                .map_err(|_| anyhow::anyhow!("waiter panicked"))??;
            add(&latencies, mine)?;
            anyhow::Ok(())
        })
    })?;
    sorted(latencies)
}

/// Open-loop latency for a client whose one call appends and returns once the records are
/// visible (`Client::append_and_wait`): each client, when its previous call has returned,
/// sends every command due by then as one call (or waits a tick for one), so the commands
/// that fall due during a call go in the next. Latency runs from a command's scheduled time
/// to the return of its call.
pub fn call_latency_run<C>(
    clients: usize,
    rate_per_s: f64,
    seconds: f64,
    tick: Duration,
    call: C,
) -> anyhow::Result<Vec<u64>>
where
    C: Fn(usize, std::ops::Range<usize>) -> anyhow::Result<()> + Sync,
{
    let latencies = std::sync::Mutex::new(Vec::new());
    run_clients(clients, |c| {
        let schedule = Schedule::new(clients, rate_per_s, seconds);
        let mut mine = Vec::with_capacity(schedule.per_client);
        schedule.send_as_due(tick, |due| {
            call(c, due.clone())?;
            mine.extend(due.map(|k| schedule.scheduled(k).elapsed().as_micros() as u64));
            Ok(())
        })?;
        add(&latencies, mine)?;
        Ok(())
    })?;
    sorted(latencies)
}

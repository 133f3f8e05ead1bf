//! The component workload on Lockstep (embedded and over the network), on PostgreSQL (one
//! transaction per command, and batched), and the raw RocksDB ceiling, side by side in one run.
//!
//! Every client works in its own id namespace (with its own hot ids, so its stream still has a
//! realistic share of conflicts), which makes the final state independent of how clients
//! interleave: every system must end in the sequential model's state, checked by digest.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Parser;
use lockstep::net::{Client, ClientConfig, Server, ServerConfig};
use lockstep::{Engine, EngineOptions};
use lockstep_benches::chart::{bar_chart, Bar};
use lockstep_benches::components::{open_lockstep, open_lockstep_with};
use lockstep_benches::measure::{
    call_latency_run, disk_bytes, latency_run, median, peak_rss_mib, percentile_ms,
    pipelined_latency_run, replayed_wal_bytes, reset_peak_rss, run_clients, status_kib,
    this_thread_cpu_ns, threads_cpu_ns, wal_files_bytes,
};
use lockstep_topologies::components::model::Model;
use lockstep_topologies::components::workload::Workload;
use lockstep_topologies::components::{
    read_view, Command, Component, Components, DeleteMode, Outcome, RejectReason, TOPOLOGY,
};
use rocksdb::{ColumnFamily, WriteBatch, WriteOptions, DB};

/// Latency runs shorter than this end before the engine's first memtable flush at the
/// benchmark's rates (64 MiB memtables), so they show the engine before its steady state;
/// sustained runs, at twice the rate, fill memtables sooner and see several flushes in this
/// time (a run's RocksDB LOG at 120,000 commands/s for 15 s counted 15–16).
const FLUSH_SECONDS_MIN: f64 = 10.0;

/// Calls a sustained run keeps unanswered per client: enough that the driver always has a full
/// batch waiting (8 clients × 32 calls × 100 commands is 25,600 commands, more than the 16,000
/// a batch takes at the default caps), and few enough that the run's end waits for a fraction
/// of a second of backlog, not for an unbounded queue.
const SUSTAINED_CALLS_IN_FLIGHT: usize = 32;

#[derive(Debug, Parser)]
struct Args {
    /// Concurrent clients (connections) for every system.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Commands in all, split evenly over the clients.
    #[arg(long, default_value_t = 40_000)]
    commands: usize,
    /// Throughput runs per system; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Lockstep partitions.
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Hot ids per client (fewer: more conflicts).
    #[arg(long, default_value_t = 20)]
    hot_ids: u64,
    /// Commands per append call (Lockstep) and per transaction (PostgreSQL batched).
    #[arg(long, default_value_t = 100)]
    chunk: usize,
    /// Seconds of each latency run at half of each system's peak. 15 by default: long enough
    /// for RocksDB to fill and flush memtables at these rates, so the figures are the steady
    /// state's. Shorter runs (3 s was the default until 2026-11-30) end before the first flush
    /// and report a lower tail; the bench says so under its table.
    #[arg(long, default_value_t = 15.0)]
    latency_seconds: f64,
    /// Latency runs per system. The p50 and p99 reported are the medians of the runs' own,
    /// and every run's are printed: one run's tail is at the mercy of whatever else the
    /// machine does in its 15 seconds (3 since 2026-12-01; 1 before).
    #[arg(long, default_value_t = 3)]
    latency_runs: usize,
    /// Seconds of each sustained throughput run (Lockstep): clients append without pause,
    /// cycling through their workloads as the latency runs do, long enough for memtable
    /// flushes. Its median is the peak the latency runs take half of. 0 skips these runs, and
    /// the short throughput run's rate stands in for the peak (as it did until 2026-11-30).
    #[arg(long, default_value_t = 15.0)]
    sustained_seconds: f64,
    /// Offer this many commands/s in every latency run instead of half of each system's peak
    /// (to compare builds at one load).
    #[arg(long)]
    latency_rate: Option<f64>,
    /// Workload seed.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Leave PostgreSQL out.
    #[arg(long)]
    skip_postgres: bool,
    /// Measure only how fast batches drain a backlog: append every command with batches
    /// stopped (the clients' calls in turn), reopen with batches running, and time until
    /// every outcome is visible (the batch driver and committer alone, without clients
    /// competing for the cores). Prints the workload's header, each run and the medians of
    /// the rate and of the driver's and the committer's CPU time per command, which a busy
    /// machine moves less than the rate.
    #[arg(long)]
    drain: bool,
    /// Where the charts of throughput and p99 latency per system go.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/charts"))]
    charts: PathBuf,
}

// ---- workload and digest ----

struct Workloads {
    per_client: Vec<Vec<Command>>,
    digest: u64,
    applied: usize,
}

fn workloads(args: &Args) -> Workloads {
    let mut model = Model::new();
    let per = args.commands / args.clients;
    let mut applied = 0;
    let per_client = (0..args.clients as u64)
        .map(|client| {
            let mut workload = Workload::isolated(args.seed, client, args.hot_ids);
            (0..per)
                .map(|_| {
                    let command = workload.next_command();
                    let outcome = model.apply(&command);
                    applied += usize::from(outcome == Outcome::Applied);
                    workload.observe(&command, outcome);
                    command
                })
                .collect()
        })
        .collect();
    Workloads {
        per_client,
        digest: digest(&model.components),
        applied,
    }
}

fn digest(components: &BTreeMap<String, Component>) -> u64 {
    // SipHash with fixed keys: stable within this binary, which is all a side-by-side needs.
    #[allow(deprecated)]
    let mut hasher = std::hash::SipHasher::new();
    for (id, c) in components {
        (id, &c.parent, &c.attrs, c.version).hash(&mut hasher);
    }
    hasher.finish()
}

/// The digest of the state a client-by-client sequence ends in when client `c` sends the first
/// `sent[c]` commands of its workload cycled (as sustained and latency runs send them), and
/// how many of those commands apply. Clients' namespaces are disjoint, so their order does not
/// matter.
fn cycled_digest(work: &Workloads, sent: &[usize]) -> (u64, usize) {
    let mut model = Model::new();
    let mut applied = 0;
    for (commands, &count) in work.per_client.iter().zip(sent) {
        for command in commands.iter().cycle().take(count) {
            applied += usize::from(model.apply(command) == Outcome::Applied);
        }
    }
    (digest(&model.components), applied)
}

// ---- measurements ----

#[derive(Debug, Default, Clone)]
struct Measured {
    /// Lockstep's sustained rate (its short runs' with `--sustained-seconds 0`), the others'
    /// throughput runs' rate; the ceiling's replay of the sustained runs.
    commands_per_s: f64,
    /// Lockstep's short throughput runs of `--commands` on a fresh state, and the ceiling's
    /// replay of them; NaN for PostgreSQL.
    short_commands_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    rss_peak_mib: f64,
    disk_mib: f64,
    digest_ok: bool,
}

// ---- Lockstep ----

fn lockstep_digest(engine: &Engine, handles: &Components) -> anyhow::Result<u64> {
    let snapshot = engine.snapshot()?;
    Ok(digest(&read_view(&snapshot, handles)?.components))
}

struct EmbeddedRun {
    seconds: f64,
    cpu: CpuPerRole,
    digest: u64,
    rss_mib: f64,
    disk_mib: f64,
    stats: lockstep::TopologyStats,
    appends: lockstep::AppendStats,
}

fn lockstep_embedded(args: &Args, work: &Workloads) -> anyhow::Result<EmbeddedRun> {
    let dir = tempfile::tempdir()?;
    reset_peak_rss();
    let (engine, handles) = open_lockstep(dir.path(), args.partitions)?;
    let clients_cpu_ns = AtomicU64::new(0);
    let seconds = run_clients(args.clients, |c| {
        let mut last = None;
        // Appends of one client are processed in append order: no need to wait in between.
        for chunk in work.per_client[c].chunks(args.chunk) {
            last = engine
                .append_many(&handles.commands, chunk)?
                .last()
                .copied()
                .or(last);
        }
        clients_cpu_ns.fetch_add(this_thread_cpu_ns(), Ordering::Relaxed);
        if let Some(last) = last {
            engine.wait_for(TOPOLOGY, last, Duration::from_secs(600))?;
        }
        Ok(())
    })?;
    let rss_mib = peak_rss_mib();
    let result = EmbeddedRun {
        seconds,
        cpu: CpuPerRole::of_engine(clients_cpu_ns.into_inner()),
        digest: lockstep_digest(&engine, &handles)?,
        rss_mib,
        disk_mib: disk_bytes(dir.path()) as f64 / (1 << 20) as f64,
        stats: engine.stats(TOPOLOGY)?,
        appends: engine.append_stats(),
    };
    Ok(result)
}

/// One sustained run: clients appending without pause for `--sustained-seconds`.
struct Sustained {
    /// From the first append until every command sent is visible.
    seconds: f64,
    /// Commands each client sent.
    sent: Vec<usize>,
    digest: u64,
    /// Embedded only: the engine's threads' CPU, its peak RSS and its synced writes.
    cpu: CpuPerRole,
    rss_mib: f64,
    stats: Option<(lockstep::TopologyStats, lockstep::AppendStats)>,
    /// Embedded only: what a restart costs after the run (`Reopen`).
    reopen: Option<Reopen>,
}

/// The engine closed after a sustained run and opened again on its data directory, as a
/// restart would: RocksDB replays the write-ahead log it kept into memtables and flushes them
/// before the engine can serve.
struct Reopen {
    /// The whole open: the replay, RocksDB's flush after it, and the engine's own recovery.
    seconds: f64,
    /// Bytes of the log files the open replayed.
    wal_replayed_bytes: u64,
}

impl Sustained {
    fn commands(&self) -> usize {
        self.sent.iter().sum()
    }

    fn commands_per_s(&self) -> f64 {
        self.commands() as f64 / self.seconds
    }
}

/// The values of per-client counters, once their clients are done.
fn loaded(counters: &[AtomicU64]) -> Vec<usize> {
    counters
        .iter()
        .map(|n| n.load(Ordering::Relaxed) as usize)
        .collect()
}

/// A client of a sustained run: sends its workload's calls of `chunk` commands in turn,
/// cycling, until `deadline`, with at most [`SUSTAINED_CALLS_IN_FLIGHT`] calls whose last
/// record is not known visible (it waits for the oldest before sending another), then waits
/// for its last. Returns the commands sent.
fn sustained_client(
    commands: &[Command],
    chunk: usize,
    deadline: Instant,
    mut append: impl FnMut(&[Command]) -> anyhow::Result<Option<lockstep::RecordId>>,
    mut wait: impl FnMut(lockstep::RecordId) -> anyhow::Result<()>,
) -> anyhow::Result<usize> {
    let mut unanswered = std::collections::VecDeque::new();
    let mut sent = 0;
    while Instant::now() < deadline {
        if unanswered.len() >= SUSTAINED_CALLS_IN_FLIGHT {
            if let Some(oldest) = unanswered.pop_front() {
                wait(oldest)?;
            }
        }
        let due = due_commands(commands, sent..sent + chunk);
        unanswered.extend(append(&due)?);
        sent += due.len();
    }
    if let Some(&last) = unanswered.back() {
        wait(last)?;
    }
    Ok(sent)
}

/// The embedded engine under a sustained load: as fast as it drains, for long enough that
/// RocksDB fills and flushes memtables (the steady state the latency runs meet), unlike the
/// short throughput run, which ends before the first flush.
fn lockstep_embedded_sustained(args: &Args, work: &Workloads) -> anyhow::Result<Sustained> {
    let dir = tempfile::tempdir()?;
    reset_peak_rss();
    let (engine, handles) = open_lockstep(dir.path(), args.partitions)?;
    let sent: Vec<AtomicU64> = (0..args.clients).map(|_| AtomicU64::new(0)).collect();
    let clients_cpu_ns = AtomicU64::new(0);
    let deadline = Instant::now() + Duration::from_secs_f64(args.sustained_seconds);
    let seconds = run_clients(args.clients, |c| {
        let count = sustained_client(
            &work.per_client[c],
            args.chunk,
            deadline,
            |due| Ok(engine.append_many(&handles.commands, due)?.last().copied()),
            |id| {
                engine.wait_for(TOPOLOGY, id, Duration::from_secs(600))?;
                Ok(())
            },
        )?;
        sent[c].store(count as u64, Ordering::Relaxed);
        clients_cpu_ns.fetch_add(this_thread_cpu_ns(), Ordering::Relaxed);
        Ok(())
    })?;
    // Read before the digest, whose read of the whole state is not the run's.
    let rss_mib = peak_rss_mib();
    let cpu = CpuPerRole::of_engine(clients_cpu_ns.into_inner());
    let sent = loaded(&sent);
    let sent_total: usize = sent.iter().sum();
    let stats = engine.stats(TOPOLOGY)?;
    ensure!(
        stats.records == sent_total as u64,
        "the engine processed {} records of the {sent_total} commands sent",
        stats.records
    );
    let digest = lockstep_digest(&engine, &handles)?;
    let appends = engine.append_stats();
    drop(engine);
    let wal_files = wal_files_bytes(dir.path());
    let reopening = Instant::now();
    let (engine, handles) = open_lockstep(dir.path(), args.partitions)?;
    let reopen = Reopen {
        seconds: reopening.elapsed().as_secs_f64(),
        wal_replayed_bytes: replayed_wal_bytes(dir.path(), &wal_files),
    };
    ensure!(
        lockstep_digest(&engine, &handles)? == digest,
        "the state read after reopening differs from the state read before closing"
    );
    Ok(Sustained {
        seconds,
        sent,
        digest,
        cpu,
        rss_mib,
        stats: Some((stats, appends)),
        reopen: Some(reopen),
    })
}

/// CPU time by thread role over one run, in nanoseconds: read from `/proc` (0 where there is
/// none) for the engine's live threads, by the role their names begin with, as the kernel keeps
/// them (15 bytes: `lockstep-driver`, `lockstep-commit`, `lockstep-append`). The engine must have
/// been opened for the run, so that its threads' whole lives are the run's.
#[derive(Debug, Clone, Copy, Default)]
struct CpuPerRole {
    driver_ns: u64,
    committer_ns: u64,
    appender_ns: u64,
    /// The clients' threads: in short runs up to their last append (not their wait for the
    /// outcomes); in sustained runs the whole run, their waits for their oldest calls (each
    /// woken by batch commits) included.
    clients_ns: u64,
}

impl CpuPerRole {
    fn of_engine(clients_ns: u64) -> Self {
        Self {
            driver_ns: threads_cpu_ns("lockstep-driver"),
            committer_ns: threads_cpu_ns("lockstep-commit"),
            appender_ns: threads_cpu_ns("lockstep-append"),
            clients_ns,
        }
    }

    /// Microseconds per command, per role, for `commands` commands.
    fn per_command_us(&self, commands: f64) -> CpuUsPerCommand {
        let us = |ns: u64| ns as f64 / 1000.0 / commands;
        CpuUsPerCommand {
            driver: us(self.driver_ns),
            committer: us(self.committer_ns),
            appender: us(self.appender_ns),
            clients: us(self.clients_ns),
        }
    }
}

/// [`CpuPerRole`] in microseconds per command.
#[derive(Debug, Clone, Copy)]
struct CpuUsPerCommand {
    driver: f64,
    committer: f64,
    appender: f64,
    clients: f64,
}

/// Per-role CPU microseconds per command, each the median over `runs` (each run's CPU and the
/// commands it processed).
fn median_cpu_us(runs: &[(CpuPerRole, usize)]) -> CpuUsPerCommand {
    let per_run: Vec<CpuUsPerCommand> = runs
        .iter()
        .map(|(cpu, commands)| cpu.per_command_us(*commands as f64))
        .collect();
    let median_of = |role: fn(&CpuUsPerCommand) -> f64| median(per_run.iter().map(role).collect());
    CpuUsPerCommand {
        driver: median_of(|us| us.driver),
        committer: median_of(|us| us.committer),
        appender: median_of(|us| us.appender),
        clients: median_of(|us| us.clients),
    }
}

/// One `--drain` run.
struct Drained {
    seconds: f64,
    /// CPU time of the driver and the committer over the run (no clients, no appends).
    cpu: CpuPerRole,
}

/// How long the engine takes, reopened with batches running, to process a backlog of every
/// command appended while batches were stopped, and the CPU its driver and committer use
/// (`--drain`).
fn lockstep_drain(args: &Args, work: &Workloads) -> anyhow::Result<Drained> {
    let dir = tempfile::tempdir()?;
    let mut lasts = Vec::new();
    {
        let (engine, handles) =
            open_lockstep_with(dir.path(), args.partitions, EngineOptions::manual())?;
        // The clients' calls taken in turn, as concurrent clients interleave them. Appended
        // one client after another, each command would mostly touch components its client
        // had just touched, still in the CPU's caches: the driver then spent 1.9 us of CPU per
        // command where it spends 2.8 on the interleaved order of a real run.
        let mut calls: Vec<_> = work
            .per_client
            .iter()
            .map(|commands| commands.chunks(args.chunk))
            .collect();
        let mut appended_any = true;
        while appended_any {
            appended_any = false;
            for client_calls in &mut calls {
                if let Some(call) = client_calls.next() {
                    appended_any = true;
                    lasts.extend(engine.append_many(&handles.commands, call)?.last().copied());
                }
            }
        }
    }
    let (engine, handles) = open_lockstep(dir.path(), args.partitions)?;
    // The driver starts at the end of the open: this misses at most its first moments.
    let started = Instant::now();
    for last in lasts {
        engine.wait_for(TOPOLOGY, last, Duration::from_secs(600))?;
    }
    let seconds = started.elapsed().as_secs_f64();
    // The topology's threads were born with this open: their CPU time is the drain's.
    let cpu = CpuPerRole::of_engine(0);
    ensure!(
        lockstep_digest(&engine, &handles)? == work.digest,
        "the drained state differs from the sequential model's"
    );
    Ok(Drained { seconds, cpu })
}

/// The commands a latency client sends for the send slots in `range`, cycling through its
/// workload: borrowed where the slots do not wrap around its end, so that the client's share
/// of the two cores goes to sending, not to copying commands (cloning each one was 3% of the
/// whole process's CPU in a 15-second run's profile).
fn due_commands(commands: &[Command], range: std::ops::Range<usize>) -> Cow<'_, [Command]> {
    let count = range.len();
    if commands.is_empty() {
        return Cow::Borrowed(commands);
    }
    let start = range.start % commands.len();
    match commands.get(start..start + count) {
        Some(due) => Cow::Borrowed(due),
        None => Cow::Owned(
            range
                .map(|i| commands[i % commands.len()].clone())
                .collect(),
        ),
    }
}

/// How a run's engine batched its load: its batches and append groups, each with its own
/// synced write, and their mean sizes and sync times.
fn batching(stats: &lockstep::TopologyStats, appends: &lockstep::AppendStats) -> String {
    let batches = stats.batches.max(1) as f64;
    let groups = appends.groups.max(1) as f64;
    format!(
        "{} batches of {:.0} records, commit sync {:.2} ms; {} append groups of {:.0} records, \
         sync {:.2} ms",
        stats.batches,
        stats.records as f64 / batches,
        stats.commit_time_us as f64 / 1000.0 / batches,
        appends.groups,
        appends.records as f64 / groups,
        appends.write_time_us as f64 / 1000.0 / groups,
    )
}

/// How a latency run's engine batched its load, and what that cost per command: a steady load
/// well below the peak comes in small batches and append groups, each with its own synced write.
fn print_latency_run_batches(label: &str, engine: &Engine, rate: f64) -> anyhow::Result<()> {
    let stats = engine.stats(TOPOLOGY)?;
    let cpu = CpuPerRole::of_engine(0).per_command_us(stats.records.max(1) as f64);
    println!(
        "{label} latency run at {rate:.0} commands/s: {}; CPU per command: driver {:.2} us, \
         committer {:.2}, appender {:.2}",
        batching(&stats, &engine.append_stats()),
        cpu.driver,
        cpu.committer,
        cpu.appender
    );
    Ok(())
}

fn lockstep_embedded_latency(args: &Args, work: &Workloads, rate: f64) -> anyhow::Result<Vec<u64>> {
    let dir = tempfile::tempdir()?;
    let (engine, handles) = open_lockstep(dir.path(), args.partitions)?;
    let latencies = pipelined_latency_run(
        args.clients,
        rate,
        args.latency_seconds,
        Duration::from_millis(1),
        |c, range| {
            let due = due_commands(&work.per_client[c], range);
            Ok(engine.append_many(&handles.commands, &due)?)
        },
        |_, id| {
            engine.wait_for(TOPOLOGY, id, Duration::from_secs(60))?;
            Ok(())
        },
    )?;
    print_latency_run_batches("embedded", &engine, rate)?;
    Ok(latencies)
}

async fn network_clients(args: &Args, address: &str) -> anyhow::Result<Vec<Client>> {
    let mut clients = Vec::new();
    for _ in 0..args.clients {
        let mut config = ClientConfig::default();
        config.retry_for = Duration::from_secs(10);
        clients.push(Client::connect(address, config).await?);
    }
    Ok(clients)
}

/// Serves `engine` on a loopback port; returns the address, the stop switch and the task.
async fn start_server(
    engine: Arc<Engine>,
) -> anyhow::Result<(
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
)> {
    let mut config = ServerConfig::default();
    config.listen = ([127, 0, 0, 1], 0).into();
    let server = Server::bind(engine, config).await?;
    let address = server.local_addr()?.to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    Ok((address, stop, serving))
}

fn lockstep_network(args: &Args, work: &Workloads) -> anyhow::Result<(f64, u64)> {
    let mut served = Served::start(args)?;
    // Each client is a task of the server's runtime, so the short run pays no thread switch
    // between a client's calls.
    let clients = served.take_clients()?;
    let seconds = served.runtime.block_on(async {
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (c, mut client) in clients.into_iter().enumerate() {
            let commands = work.per_client[c].clone();
            let depot = served.handles.commands.clone();
            let chunk = args.chunk;
            tasks.spawn(async move {
                let mut last = None;
                for piece in commands.chunks(chunk) {
                    last = client.append(&depot, piece).await?.last().copied().or(last);
                }
                if let Some(last) = last {
                    client
                        .wait_for(TOPOLOGY, last, Duration::from_secs(600))
                        .await?;
                }
                anyhow::Ok(())
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined??;
        }
        anyhow::Ok(started.elapsed().as_secs_f64())
    })?;
    let (engine, handles, _dir) = served.stop_serving()?;
    Ok((seconds, lockstep_digest(&engine, &handles)?))
}

/// A fresh engine served on a loopback port, with one client connection per bench client:
/// for runs that call through blocking client threads, or that take the clients into tasks
/// of the server's runtime.
struct Served {
    // Held for the engine's life: dropping it deletes the data directory.
    dir: tempfile::TempDir,
    engine: Arc<Engine>,
    handles: Components,
    runtime: tokio::runtime::Runtime,
    clients: Vec<std::sync::Mutex<Client>>,
    stop: tokio::sync::oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Served {
    fn start(args: &Args) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let (engine, handles) = open_lockstep(dir.path(), args.partitions)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let (address, stop, serving) = runtime.block_on(start_server(engine.clone()))?;
        let clients = runtime
            .block_on(network_clients(args, &address))?
            .into_iter()
            .map(std::sync::Mutex::new)
            .collect();
        Ok(Self {
            dir,
            engine,
            handles,
            runtime,
            clients,
            stop,
            serving,
        })
    }

    /// Client `c`'s connection, for the calling thread's turn.
    fn client(&self, c: usize) -> anyhow::Result<std::sync::MutexGuard<'_, Client>> {
        self.clients
            .get(c)
            .ok_or_else(|| anyhow::anyhow!("client {c} was taken or never connected"))?
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))
    }

    /// The clients, for tasks that own them; [`Served::client`] then has none to lend.
    fn take_clients(&mut self) -> anyhow::Result<Vec<Client>> {
        std::mem::take(&mut self.clients)
            .into_iter()
            .map(|client| client.into_inner().map_err(|_| anyhow::anyhow!("poisoned")))
            .collect()
    }

    /// Stops the server and waits for it; the engine stays open.
    fn stop_serving(self) -> anyhow::Result<(Arc<Engine>, Components, tempfile::TempDir)> {
        let _ = self.stop.send(());
        self.runtime.block_on(self.serving)??;
        Ok((self.engine, self.handles, self.dir))
    }
}

/// [`lockstep_embedded_sustained`] through the server and the client library: each client
/// appends (answered once durable) and waits for visibility on its own connection.
fn lockstep_network_sustained(args: &Args, work: &Workloads) -> anyhow::Result<Sustained> {
    let served = Served::start(args)?;
    let handle = served.runtime.handle().clone();
    let sent: Vec<AtomicU64> = (0..args.clients).map(|_| AtomicU64::new(0)).collect();
    let deadline = Instant::now() + Duration::from_secs_f64(args.sustained_seconds);
    let seconds = run_clients(args.clients, |c| {
        let mut client = served.client(c)?;
        let client = std::cell::RefCell::new(&mut *client);
        let count = sustained_client(
            &work.per_client[c],
            args.chunk,
            deadline,
            |due| {
                let mut client = client.borrow_mut();
                let ids = handle.block_on(client.append(&served.handles.commands, due))?;
                Ok(ids.last().copied())
            },
            |id| {
                let mut client = client.borrow_mut();
                handle.block_on(client.wait_for(TOPOLOGY, id, Duration::from_secs(600)))?;
                Ok(())
            },
        )?;
        sent[c].store(count as u64, Ordering::Relaxed);
        Ok(())
    })?;
    let (engine, handles, _dir) = served.stop_serving()?;
    Ok(Sustained {
        seconds,
        sent: loaded(&sent),
        digest: lockstep_digest(&engine, &handles)?,
        cpu: CpuPerRole::default(),
        rss_mib: f64::NAN,
        stats: None,
        reopen: None,
    })
}

fn lockstep_network_latency(args: &Args, work: &Workloads, rate: f64) -> anyhow::Result<Vec<u64>> {
    let served = Served::start(args)?;
    let handle = served.runtime.handle().clone();
    // One round trip per call, answered once the commands are visible (as the embedded run
    // waits: for visibility, not reading the outcomes).
    let latencies = call_latency_run(
        args.clients,
        rate,
        args.latency_seconds,
        Duration::from_millis(1),
        |c, range| {
            let due = due_commands(&work.per_client[c], range);
            let mut client = served.client(c)?;
            handle.block_on(client.append_and_wait_for(
                &served.handles.commands,
                &due,
                TOPOLOGY,
                Duration::from_secs(60),
            ))?;
            Ok(())
        },
    )?;
    let (engine, _, _dir) = served.stop_serving()?;
    print_latency_run_batches("network", &engine, rate)?;
    Ok(latencies)
}

/// Synced `WriteBatch`es of `entries` entries of `entry_bytes` bytes each (a 16-byte key and
/// the rest value) into one column family, with keys from `next_key`, sorted within a batch as
/// Lockstep writes them.
struct RawWrites<'a> {
    db: &'a DB,
    cf: &'a ColumnFamily,
    sync: WriteOptions,
    entries: u64,
    value: Vec<u8>,
}

impl RawWrites<'_> {
    fn write(&self, next_key: &mut impl FnMut() -> [u8; 16]) -> anyhow::Result<()> {
        let mut keys: Vec<[u8; 16]> = (0..self.entries).map(|_| next_key()).collect();
        keys.sort_unstable();
        let mut batch = WriteBatch::default();
        for key in &keys {
            batch.put_cf(self.cf, key, &self.value);
        }
        self.db.write_opt(batch, &self.sync)?;
        Ok(())
    }
}

fn raw_writes<'a>(
    db: &'a DB,
    cf: &'a ColumnFamily,
    writes: u64,
    bytes: u64,
    syncs: u64,
) -> RawWrites<'a> {
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    let entry_bytes = (bytes / writes.max(1)) as usize;
    RawWrites {
        db,
        cf,
        sync,
        entries: (writes / syncs.max(1)).max(1),
        value: vec![1u8; entry_bytes.saturating_sub(16)],
    }
}

/// The keys a replay of Lockstep's commits writes, in Lockstep's pattern: of every `writes`
/// state entries, `records` are outcomes (one per record, each a new key, ascending), and the
/// rest fall on `distinct` keys of the state at random, rewritten as a run comes back to them
/// (a sustained run cycles through its workloads: every key a new one would make the replay's
/// flushes and compactions far heavier than Lockstep's).
struct StateKeys {
    writes: u64,
    records: u64,
    distinct: u64,
    written: u64,
    outcomes: u64,
    others: u64,
}

impl StateKeys {
    fn new(stats: &lockstep::TopologyStats, distinct: u64) -> Self {
        Self {
            writes: stats.writes.max(1),
            records: stats.records.min(stats.writes),
            distinct: distinct.max(1),
            written: 0,
            outcomes: 0,
            others: 0,
        }
    }

    fn next_key(&mut self) -> [u8; 16] {
        let mut key = [0u8; 16];
        // Outcomes spread evenly among the writes, as each command writes one.
        let outcome_due = (self.written + 1) * self.records / self.writes > self.outcomes;
        self.written += 1;
        if outcome_due {
            key[0] = 0xFF;
            key[8..].copy_from_slice(&self.outcomes.to_be_bytes());
            self.outcomes += 1;
        } else {
            let slot = self.others % self.distinct;
            key[..8].copy_from_slice(&slot.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
            key[0] &= 0x7F;
            self.others += 1;
        }
        key
    }
}

/// Seconds raw RocksDB takes for the same synced writes as an embedded run: as many batch
/// commits as Lockstep made, with the same entries and bytes (keys as [`StateKeys`] lays them
/// out, over `state_keys_distinct` keys of state), and, unless `commits_only`, as many depot
/// appends with the same records and bytes (depot keys ascend, as offsets do) from a second
/// thread at the same time, as Lockstep's appender and committer do (RocksDB may then share a
/// sync between them); in two column families, as Lockstep keeps its depots and its state.
/// Nothing else: no execution, no reads, no clients.
fn ceiling(
    stats: &lockstep::TopologyStats,
    appends: &lockstep::AppendStats,
    commits_only: bool,
    state_keys_distinct: u64,
) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let mut options = rocksdb::Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    // As Lockstep's store does: freed write-ahead log files are written over, whose `fdatasync`
    // is cheaper (measured alone); without it the ceiling could be held to dearer syncs than
    // Lockstep's.
    options.set_recycle_log_file_num(4);
    let db = DB::open_cf(&options, dir.path(), ["depot", "state"])?;
    let (Some(depot_cf), Some(state_cf)) = (db.cf_handle("depot"), db.cf_handle("state")) else {
        bail!("the ceiling's column families are missing");
    };
    let commits = stats.batches.max(1);
    let commit = raw_writes(&db, state_cf, stats.writes, stats.write_bytes, commits);
    let groups = if commits_only { 0 } else { appends.groups };
    let append = raw_writes(&db, depot_cf, appends.records, appends.write_bytes, groups);
    let mut state_keys = StateKeys::new(stats, state_keys_distinct);
    let started = Instant::now();
    std::thread::scope(|scope| {
        let appender = scope.spawn(|| -> anyhow::Result<()> {
            let mut offset = 0u64;
            let mut depot_key = || {
                let mut key = [0u8; 16];
                key[8..].copy_from_slice(&offset.to_be_bytes());
                offset += 1;
                key
            };
            for _ in 0..groups {
                append.write(&mut depot_key)?;
            }
            Ok(())
        });
        for _ in 0..commits {
            commit.write(&mut || state_keys.next_key())?;
        }
        appender
            .join()
            .map_err(|_| anyhow::anyhow!("ceiling appender panicked"))?
    })?;
    Ok(started.elapsed().as_secs_f64())
}

// ---- PostgreSQL ----

struct Postgres {
    dir: tempfile::TempDir,
    child: Child,
    port: u16,
}

fn pg_bin() -> anyhow::Result<PathBuf> {
    let find = || -> Option<PathBuf> {
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("postgres").exists())
            .collect();
        versions.sort();
        versions.pop()
    };
    if let Some(bin) = find() {
        return Ok(bin);
    }
    eprintln!("installing PostgreSQL with apt-get ...");
    let status = Process::new("sh")
        .args(["-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null"])
        .status()?;
    ensure!(status.success(), "apt-get install postgresql failed");
    find().context("postgresql installed but no server binary found")
}

impl Postgres {
    fn start() -> anyhow::Result<Self> {
        let bin = pg_bin()?;
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("pgdata");
        // PostgreSQL refuses to run as root: run it as the `postgres` user the package made.
        let as_postgres = |program: &Path| {
            let mut command = Process::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        };
        Process::new("chown")
            .args(["-R", "postgres"])
            .arg(dir.path())
            .status()?;
        let status = as_postgres(&bin.join("initdb"))
            .args(["-D"])
            .arg(&data)
            .args(["-U", "bench", "--auth=trust", "-E", "UTF8"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        ensure!(status.success(), "initdb failed");
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = as_postgres(&bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=on",
                "-c",
                "synchronous_commit=on",
                "-c",
                "shared_buffers=256MB",
                "-c",
                "max_connections=64",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let pg = Self { dir, child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match pg.connect() {
                Ok(_) => return Ok(pg),
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => return Err(e.context("postgres did not start")),
            }
        }
    }

    fn connect(&self) -> anyhow::Result<postgres::Client> {
        Ok(postgres::Client::connect(
            &format!(
                "host=127.0.0.1 port={} user=bench dbname=postgres",
                self.port
            ),
            postgres::NoTls,
        )?)
    }

    fn reset(&self) -> anyhow::Result<()> {
        let mut client = self.connect()?;
        client.batch_execute(
            "DROP TABLE IF EXISTS components;
             CREATE TABLE components (
                 id text PRIMARY KEY,
                 parent text REFERENCES components(id) ON DELETE CASCADE,
                 attrs jsonb NOT NULL,
                 version bigint NOT NULL CHECK (version >= 1));
             CREATE INDEX components_parent ON components(parent);
             CHECKPOINT;",
        )?;
        Ok(())
    }

    fn digest(&self) -> anyhow::Result<u64> {
        let mut client = self.connect()?;
        let mut components = BTreeMap::new();
        for row in client.query(
            "SELECT id, parent, attrs::text, version FROM components",
            &[],
        )? {
            let attrs: String = row.get(2);
            let version: i64 = row.get(3);
            components.insert(
                row.get::<_, String>(0),
                Component {
                    parent: row.get(1),
                    attrs: serde_json::from_str(&attrs)?,
                    version: version as u64,
                },
            );
        }
        Ok(digest(&components))
    }

    /// The postmaster's pid, from its pid file.
    fn postmaster_pid(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.dir.path().join("pgdata/postmaster.pid")).ok()?;
        text.lines().next().map(|l| l.trim().to_string())
    }

    /// Sum of the server processes' resident memory.
    fn rss_mib(&self) -> f64 {
        let Some(root) = self.postmaster_pid() else {
            return 0.0;
        };
        let mut total = status_kib(&root, "VmRSS:");
        // Every process whose parent is the postmaster is one of its backends or workers.
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let stat = std::fs::read_to_string(format!("/proc/{name}/stat")).unwrap_or_default();
            // Field 4 of stat is the parent pid (after the parenthesized command name).
            let parent = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().nth(1));
            if parent == Some(root.as_str()) {
                total += status_kib(&name, "VmRSS:");
            }
        }
        total as f64 / 1024.0
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT to the postmaster (not to `runuser`, which does not forward it): fast shutdown.
        match self.postmaster_pid() {
            Some(pid) => {
                let _ = Process::new("kill").args(["-INT", &pid]).status();
            }
            None => {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
    }
}

/// Applies one command inside `tx` with the same semantics as the model; the foreign key keeps
/// integrity, the statements decide the outcome.
fn pg_apply(tx: &mut postgres::Transaction<'_>, command: &Command) -> anyhow::Result<Outcome> {
    use RejectReason::*;
    let exists = |tx: &mut postgres::Transaction<'_>, id: &str| -> anyhow::Result<bool> {
        Ok(!tx
            .query("SELECT 1 FROM components WHERE id = $1", &[&id])?
            .is_empty())
    };
    Ok(match command {
        Command::Create { id, parent, attrs } => {
            if exists(tx, id)? {
                Outcome::Rejected(AlreadyExists)
            } else if parent.as_ref().is_some_and(|p| p == id) {
                Outcome::Rejected(ParentMissing)
            } else if let Some(p) = parent.as_ref().filter(|p| !exists(tx, p).unwrap_or(false)) {
                let _ = p;
                Outcome::Rejected(ParentMissing)
            } else {
                tx.execute(
                    "INSERT INTO components (id, parent, attrs, version) VALUES ($1, $2, ($3::text)::jsonb, 1)",
                    &[id, parent, &serde_json::to_string(attrs)?],
                )?;
                Outcome::Applied
            }
        }
        Command::Update {
            id,
            attrs,
            if_version,
        } => {
            let expected = if_version.map(|v| v as i64);
            let updated = tx.execute(
                "UPDATE components SET attrs = attrs || ($2::text)::jsonb, version = version + 1
                 WHERE id = $1 AND ($3::bigint IS NULL OR version = $3)",
                &[id, &serde_json::to_string(attrs)?, &expected],
            )?;
            if updated == 1 {
                Outcome::Applied
            } else if exists(tx, id)? {
                Outcome::Rejected(VersionConflict)
            } else {
                Outcome::Rejected(NotFound)
            }
        }
        Command::Reparent {
            id,
            parent,
            if_version,
        } => {
            let rows = tx.query(
                "SELECT parent, version FROM components WHERE id = $1 FOR UPDATE",
                &[id],
            )?;
            let Some(row) = rows.first() else {
                return Ok(Outcome::Rejected(NotFound));
            };
            let current: Option<String> = row.get(0);
            let version: i64 = row.get(1);
            if if_version.is_some_and(|v| v as i64 != version) {
                return Ok(Outcome::Rejected(VersionConflict));
            }
            if let Some(new_parent) = parent {
                if new_parent == id {
                    return Ok(Outcome::Rejected(WouldCreateCycle));
                }
                if current.as_ref() != Some(new_parent) {
                    if !exists(tx, new_parent)? {
                        return Ok(Outcome::Rejected(ParentMissing));
                    }
                    let cycle = tx.query(
                        "WITH RECURSIVE up(id, parent) AS (
                             SELECT id, parent FROM components WHERE id = $1
                             UNION ALL
                             SELECT c.id, c.parent FROM components c JOIN up ON c.id = up.parent)
                         SELECT 1 FROM up WHERE id = $2 LIMIT 1",
                        &[new_parent, id],
                    )?;
                    if !cycle.is_empty() {
                        return Ok(Outcome::Rejected(WouldCreateCycle));
                    }
                }
            }
            tx.execute(
                "UPDATE components SET parent = $2, version = version + 1 WHERE id = $1",
                &[id, parent],
            )?;
            Outcome::Applied
        }
        Command::Delete { id, mode } => {
            if !exists(tx, id)? {
                Outcome::Rejected(NotFound)
            } else if *mode == DeleteMode::Restrict
                && !tx
                    .query("SELECT 1 FROM components WHERE parent = $1 LIMIT 1", &[id])?
                    .is_empty()
            {
                Outcome::Rejected(HasChildren)
            } else {
                // ON DELETE CASCADE removes the subtree.
                tx.execute("DELETE FROM components WHERE id = $1", &[id])?;
                Outcome::Applied
            }
        }
    })
}

fn postgres_run(
    pg: &Postgres,
    args: &Args,
    work: &Workloads,
    per_tx: usize,
) -> anyhow::Result<(f64, f64)> {
    pg.reset()?;
    let sampling = AtomicBool::new(true);
    let peak_kib = AtomicU64::new(0);
    let seconds = std::thread::scope(|scope| {
        scope.spawn(|| {
            while sampling.load(Ordering::Relaxed) {
                peak_kib.fetch_max((pg.rss_mib() * 1024.0) as u64, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let result = run_clients(args.clients, |c| {
            let mut client = pg.connect()?;
            for group in work.per_client[c].chunks(per_tx) {
                let mut tx = client.transaction()?;
                for command in group {
                    pg_apply(&mut tx, command)?;
                }
                tx.commit()?;
            }
            Ok(())
        });
        sampling.store(false, Ordering::Relaxed);
        result
    })?;
    Ok((seconds, peak_kib.load(Ordering::Relaxed) as f64 / 1024.0))
}

fn postgres_latency(
    pg: &Postgres,
    args: &Args,
    work: &Workloads,
    rate: f64,
) -> anyhow::Result<Vec<u64>> {
    pg.reset()?;
    let connections: Vec<std::sync::Mutex<postgres::Client>> = (0..args.clients)
        .map(|_| pg.connect().map(std::sync::Mutex::new))
        .collect::<Result<_, _>>()?;
    latency_run(args.clients, rate, args.latency_seconds, |c, i| {
        let Some(command) = work.per_client[c].get(i % work.per_client[c].len()) else {
            return Ok(());
        };
        let mut client = connections[c]
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        let mut tx = client.transaction()?;
        pg_apply(&mut tx, command)?;
        tx.commit()?;
        Ok(())
    })
}

/// The p50 and p99 of each of a system's latency runs, in milliseconds.
#[derive(Debug, Default)]
struct LatencyRuns {
    p50_ms: Vec<f64>,
    p99_ms: Vec<f64>,
}

impl LatencyRuns {
    /// Runs `run` `runs` times and keeps each run's percentiles.
    fn measure(
        runs: usize,
        mut run: impl FnMut() -> anyhow::Result<Vec<u64>>,
    ) -> anyhow::Result<Self> {
        let mut measured = Self::default();
        for _ in 0..runs {
            let latencies = run()?;
            measured.p50_ms.push(percentile_ms(&latencies, 0.5));
            measured.p99_ms.push(percentile_ms(&latencies, 0.99));
        }
        Ok(measured)
    }

    /// Every run's p50/p99, in run order.
    fn each_run(&self) -> String {
        self.p50_ms
            .iter()
            .zip(&self.p99_ms)
            .map(|(p50, p99)| format!("{p50:.1}/{p99:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Puts the medians of the runs' p50s and p99s into `measured`, and says what they are
    /// the medians of.
    fn report(&self, label: &str, measured: &mut Measured) {
        measured.p50_ms = median(self.p50_ms.clone());
        measured.p99_ms = median(self.p99_ms.clone());
        println!("{label} latency runs, p50/p99 ms each: {}", self.each_run());
    }
}

// ---- charts ----

/// Throughput of every system, and p99 latency of those measured for it, as bar charts.
fn system_charts(
    dir: &Path,
    rows: &[(&str, Measured)],
    title: &str,
    latency_runs: usize,
) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let bars = |value: fn(&Measured) -> f64| -> Vec<Bar> {
        rows.iter()
            .filter(|(_, m)| value(m).is_finite())
            .map(|(label, m)| Bar {
                label: (*label).to_string(),
                value: value(m),
            })
            .collect()
    };
    let throughput = dir.join("components-throughput.png");
    bar_chart(
        &throughput,
        &format!("Component workload: throughput per system ({title}; median)"),
        "commands/s (log scale)",
        &bars(|m| m.commands_per_s),
        true,
    )?;
    let latency = dir.join("components-p99.png");
    bar_chart(
        &latency,
        &format!(
            "Component workload: p99 append-to-visible (median of {latency_runs} runs at half \
             of commands/s)"
        ),
        "p99 milliseconds",
        &bars(|m| m.p99_ms),
        false,
    )?;
    Ok(vec![throughput, latency])
}

/// The load a latency run offers: `--latency-rate`, or half of the system's measured peak.
fn latency_rate(args: &Args, peak_commands_per_s: f64) -> f64 {
    args.latency_rate.unwrap_or(peak_commands_per_s / 2.0)
}

// ---- main ----

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // `RUST_LOG=lockstep=debug` logs every batch's commit latency and batch latency with a
    // timestamp, to line a latency run's slow batches up with RocksDB's LOG (flushes,
    // compactions). Warnings only otherwise.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    ensure!(
        args.clients > 0 && args.runs > 0 && args.latency_runs > 0 && args.chunk > 0,
        "--clients, --runs, --latency-runs and --chunk must be at least 1"
    );
    ensure!(
        args.commands >= args.clients,
        "--commands must be at least --clients"
    );
    let work = workloads(&args);
    let total = work.per_client.iter().map(Vec::len).sum::<usize>() as f64;
    println!(
        "components-bench: {} commands from {} clients ({:.0}% applied, the rest conflicts), {} runs, medians; {} cores",
        total,
        args.clients,
        100.0 * work.applied as f64 / total,
        args.runs,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    if args.drain {
        let mut rates = Vec::new();
        let mut cpus = Vec::new();
        for run in 1..=args.runs {
            let drained = lockstep_drain(&args, &work)?;
            let rate = total / drained.seconds;
            let CpuUsPerCommand {
                driver, committer, ..
            } = drained.cpu.per_command_us(total);
            println!(
                "drain run {run}: {rate:.0} commands/s; CPU per command: driver {driver:.2} us, committer {committer:.2} us"
            );
            rates.push(rate);
            cpus.push((drained.cpu, total as usize));
        }
        let CpuUsPerCommand {
            driver, committer, ..
        } = median_cpu_us(&cpus);
        println!(
            "drain median: {:.0} commands/s; CPU per command: driver {driver:.2} us, committer {committer:.2} us",
            median(rates),
        );
        return Ok(());
    }
    let mut rows: Vec<(&str, Measured)> = Vec::new();

    // Lockstep embedded, and the ceilings replaying its synced writes.
    let mut rates = Vec::new();
    let mut ceiling_rates = Vec::new();
    let mut commit_ceiling_rates = Vec::new();
    let mut embedded = Measured {
        digest_ok: true,
        ..Measured::default()
    };
    let mut embedded_cpus = Vec::new();
    let mut sustained_ceiling_rate = None;
    let mut state_keys_distinct = 0;
    for _ in 0..args.runs {
        let run = lockstep_embedded(&args, &work)?;
        embedded.digest_ok &= run.digest == work.digest;
        rates.push(total / run.seconds);
        embedded_cpus.push((run.cpu, total as usize));
        // One pass of the workloads writes each state key it touches at least once: an upper
        // bound on the keys a run over them, cycled or not, rewrites.
        state_keys_distinct = run.stats.writes - run.stats.records.min(run.stats.writes);
        ceiling_rates.push(total / ceiling(&run.stats, &run.appends, false, state_keys_distinct)?);
        commit_ceiling_rates
            .push(total / ceiling(&run.stats, &run.appends, true, state_keys_distinct)?);
        embedded.rss_peak_mib = embedded.rss_peak_mib.max(run.rss_mib);
        embedded.disk_mib = run.disk_mib;
    }
    embedded.short_commands_per_s = median(rates);
    embedded.commands_per_s = embedded.short_commands_per_s;
    let mut embedded_sustained = Vec::new();
    // Of the commands the embedded sustained runs sent, those the model applies.
    let mut sustained_applied = 0;
    if args.sustained_seconds > 0.0 {
        let mut rates = Vec::new();
        let mut cpus = Vec::new();
        let mut ceiling_rates = Vec::new();
        for _ in 0..args.runs {
            let run = lockstep_embedded_sustained(&args, &work)?;
            let (digest, applied) = cycled_digest(&work, &run.sent);
            embedded.digest_ok &= run.digest == digest;
            sustained_applied += applied;
            rates.push(run.commands_per_s());
            cpus.push((run.cpu, run.commands()));
            if let Some((stats, appends)) = &run.stats {
                ceiling_rates.push(
                    run.commands() as f64 / ceiling(stats, appends, false, state_keys_distinct)?,
                );
            }
            embedded.rss_peak_mib = embedded.rss_peak_mib.max(run.rss_mib);
            if let Some((stats, appends)) = &run.stats {
                // The ceiling replays these synced writes: as many commits and groups.
                let reopen = run.reopen.as_ref().map_or(String::new(), |r| {
                    format!(
                        "; reopened in {:.2} s (replaying {:.0} MiB of write-ahead log, then \
                         flushing it)",
                        r.seconds,
                        r.wal_replayed_bytes as f64 / (1 << 20) as f64
                    )
                });
                println!(
                    "embedded sustained run at {:.0} commands/s: {}{reopen}",
                    run.commands_per_s(),
                    batching(stats, appends)
                );
            }
            embedded_sustained.push(run);
        }
        embedded.commands_per_s = median(rates);
        sustained_ceiling_rate = Some(median(ceiling_rates));
        embedded_cpus = cpus;
    }
    let rate = latency_rate(&args, embedded.commands_per_s);
    LatencyRuns::measure(args.latency_runs, || {
        lockstep_embedded_latency(&args, &work, rate)
    })?
    .report("embedded", &mut embedded);
    rows.push(("lockstep embedded", embedded.clone()));

    let mut network = Measured {
        digest_ok: true,
        ..Measured::default()
    };
    let mut rates = Vec::new();
    for _ in 0..args.runs {
        let (seconds, digest) = lockstep_network(&args, &work)?;
        network.digest_ok &= digest == work.digest;
        rates.push(total / seconds);
    }
    network.short_commands_per_s = median(rates);
    network.commands_per_s = network.short_commands_per_s;
    if args.sustained_seconds > 0.0 {
        let mut rates = Vec::new();
        for _ in 0..args.runs {
            let run = lockstep_network_sustained(&args, &work)?;
            network.digest_ok &= run.digest == cycled_digest(&work, &run.sent).0;
            rates.push(run.commands_per_s());
        }
        network.commands_per_s = median(rates);
    }
    let rate = latency_rate(&args, network.commands_per_s);
    LatencyRuns::measure(args.latency_runs, || {
        lockstep_network_latency(&args, &work, rate)
    })?
    .report("network", &mut network);
    network.rss_peak_mib = f64::NAN;
    network.disk_mib = embedded.disk_mib;
    rows.push(("lockstep network", network));

    let mut pg_single_rate = None;
    if !args.skip_postgres {
        let pg = Postgres::start()?;
        for (label, per_tx) in [
            ("postgres 1 cmd/tx", 1usize),
            ("postgres batched", args.chunk),
        ] {
            let mut measured = Measured {
                short_commands_per_s: f64::NAN,
                digest_ok: true,
                ..Measured::default()
            };
            let mut rates = Vec::new();
            for _ in 0..args.runs {
                let (seconds, rss) = postgres_run(&pg, &args, &work, per_tx)?;
                measured.digest_ok &= pg.digest()? == work.digest;
                measured.rss_peak_mib = measured.rss_peak_mib.max(rss);
                rates.push(total / seconds);
            }
            measured.commands_per_s = median(rates);
            measured.disk_mib = disk_bytes(&pg.dir.path().join("pgdata")) as f64 / (1 << 20) as f64;
            if per_tx == 1 {
                let rate = latency_rate(&args, measured.commands_per_s);
                LatencyRuns::measure(args.latency_runs, || {
                    postgres_latency(&pg, &args, &work, rate)
                })?
                .report("postgres 1 cmd/tx", &mut measured);
                pg_single_rate = Some(measured.commands_per_s);
            } else {
                measured.p50_ms = f64::NAN;
                measured.p99_ms = f64::NAN;
            }
            rows.push((label, measured));
        }
    }
    let ceiling_rate = median(ceiling_rates);
    let sustained = !embedded_sustained.is_empty();
    rows.push((
        "raw rocksdb ceiling",
        Measured {
            commands_per_s: sustained_ceiling_rate.unwrap_or(ceiling_rate),
            short_commands_per_s: ceiling_rate,
            p50_ms: f64::NAN,
            p99_ms: f64::NAN,
            rss_peak_mib: f64::NAN,
            disk_mib: f64::NAN,
            digest_ok: true,
        },
    ));

    let show = |v: f64, digits: usize| {
        if v.is_nan() {
            "-".to_string()
        } else {
            format!("{v:.digits$}")
        }
    };
    println!();
    println!(
        "{:<22} {:>12} {:>10} {:>9} {:>9} {:>10} {:>9} {:>7}",
        "system", "commands/s", "short/s", "p50 ms", "p99 ms", "peak RSS", "disk MiB", "state"
    );
    for (label, m) in &rows {
        println!(
            "{:<22} {:>12.0} {:>10} {:>9} {:>9} {:>10} {:>9} {:>7}",
            label,
            m.commands_per_s,
            show(m.short_commands_per_s, 0),
            show(m.p50_ms, 1),
            show(m.p99_ms, 1),
            show(m.rss_peak_mib, 0),
            show(m.disk_mib, 1),
            if m.digest_ok { "same" } else { "DIFFERS" }
        );
    }
    println!();
    if sustained {
        let sent: usize = embedded_sustained.iter().map(Sustained::commands).sum();
        // At these rates a memtable fills within seconds; the default 15 s sees several flushes.
        let flushes = if args.sustained_seconds >= FLUSH_SECONDS_MIN {
            "through memtable flushes; "
        } else {
            ""
        };
        println!(
            "commands/s: Lockstep sustained, its clients appending without pause for {} s a run \
             ({flushes}{:.0} commands a run, {:.0}% applied: the workloads cycled, as the \
             latency runs send them); the others, their runs of {} commands",
            args.sustained_seconds,
            sent as f64 / embedded_sustained.len() as f64,
            100.0 * sustained_applied as f64 / sent.max(1) as f64,
            total
        );
        println!(
            "short/s: Lockstep's runs of {total} commands on a fresh state, over before the first \
             memtable flush (the peak the latency runs took half of until 2026-11-30)"
        );
    }
    println!(
        "latency: append to outcome visible (PostgreSQL: to commit), open loop at half of each \
         system's commands/s; p50 and p99 are the medians of {} runs' (each run's above)",
        args.latency_runs
    );
    if args.latency_seconds < FLUSH_SECONDS_MIN {
        println!(
            "latency runs of {} s are too short for RocksDB to flush a memtable; in steady state \
             (--latency-seconds 15, the default) the p99 is several times higher \
             (benches/EXPERIMENTS.md, *Latency in steady state*)",
            args.latency_seconds
        );
    }
    // The short runs send PostgreSQL's mix (one pass of each workload); the sustained runs'
    // cycled workloads apply fewer of their commands, so both ratios are shown.
    let short_too = |ratio: f64| {
        if sustained {
            format!(" (short run, PostgreSQL's mix: {ratio:.1}x)")
        } else {
            String::new()
        }
    };
    if let Some(pg) = pg_single_rate {
        println!(
            "lockstep embedded / postgres 1 cmd/tx: {:.1}x{}",
            embedded.commands_per_s / pg,
            short_too(embedded.short_commands_per_s / pg)
        );
    }
    if let Some((_, batched)) = rows.iter().find(|(l, _)| *l == "postgres batched") {
        println!(
            "lockstep embedded / postgres batched:  {:.1}x{}",
            embedded.commands_per_s / batched.commands_per_s,
            short_too(embedded.short_commands_per_s / batched.commands_per_s)
        );
    }
    if let Some(sustained_ceiling) = sustained_ceiling_rate {
        println!(
            "lockstep embedded / raw rocksdb ceiling: {:.0}% sustained, {:.0}% short \
             (each against a replay of its own runs' synced writes)",
            100.0 * embedded.commands_per_s / sustained_ceiling,
            100.0 * embedded.short_commands_per_s / ceiling_rate
        );
    } else {
        println!(
            "lockstep embedded / raw rocksdb ceiling: {:.0}%",
            100.0 * embedded.commands_per_s / ceiling_rate
        );
    }
    let commit_ceiling_rate = median(commit_ceiling_rates);
    println!(
        "lockstep embedded short / raw rocksdb ceiling of the commits alone ({:.0} commands/s): {:.0}%",
        commit_ceiling_rate,
        100.0 * embedded.short_commands_per_s / commit_ceiling_rate
    );
    // Which thread sets the pace: the driver is serial, the others share the remaining cores.
    let CpuUsPerCommand {
        driver,
        committer,
        appender,
        clients,
    } = median_cpu_us(&embedded_cpus);
    println!(
        "lockstep embedded CPU per command ({} runs, medians): driver {driver:.2} us, committer {committer:.2}, appender {appender:.2}, clients {clients:.2}; elapsed {:.2}",
        if sustained { "sustained" } else { "short" },
        1e6 / embedded.commands_per_s
    );
    let title = if sustained {
        format!("Lockstep sustained {} s", args.sustained_seconds)
    } else {
        format!("{total} commands")
    };
    for chart in system_charts(&args.charts, &rows, &title, args.latency_runs)? {
        println!("chart: {}", chart.display());
    }
    if rows.iter().any(|(_, m)| !m.digest_ok) {
        bail!("a system ended in a different state than the sequential model");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_workloads(commands: usize) -> Workloads {
        let args = Args::parse_from(["components-bench", "--commands", &commands.to_string()]);
        workloads(&args)
    }

    /// A system's latency figures are the medians of its runs' own percentiles, so one run's
    /// stall moves neither; each run's are kept in run order, and a failed run fails it all.
    #[test]
    fn latency_figures_are_the_medians_of_the_runs_percentiles() {
        // Microseconds, ascending: 100 latencies each, the last two the run's tail.
        let run = |p50_us: u64, tail_us: u64| -> Vec<u64> {
            let mut latencies = vec![p50_us; 98];
            latencies.extend([tail_us; 2]);
            latencies
        };
        let mut runs = vec![run(7_000, 80_000), run(9_000, 30_000), run(8_000, 40_000)].into_iter();
        let measured =
            LatencyRuns::measure(3, || Ok(runs.next().unwrap_or_default())).expect("three runs");
        assert_eq!(measured.each_run(), "7.0/80.0, 9.0/30.0, 8.0/40.0");
        let mut row = Measured::default();
        measured.report("embedded", &mut row);
        assert_eq!((row.p50_ms, row.p99_ms), (8.0, 40.0));

        let mut calls = 0;
        let failed = LatencyRuns::measure(3, || {
            calls += 1;
            anyhow::ensure!(calls < 2, "run {calls} failed");
            Ok(run(1_000, 2_000))
        });
        assert!(failed.is_err());
        assert_eq!(calls, 2);
    }

    /// Each client's workload sent once, in order, ends where the generator's model ended:
    /// the sustained runs' check agrees with the short runs'.
    #[test]
    fn one_cycle_of_every_workload_ends_in_the_generators_state() {
        let work = small_workloads(800);
        let sent: Vec<usize> = work.per_client.iter().map(Vec::len).collect();
        assert_eq!(cycled_digest(&work, &sent), (work.digest, work.applied));
    }

    /// Sending past the end of a workload starts it again: the state then differs from one
    /// cycle's, and nothing sent is counted as applied twice by accident (a second cycle of
    /// creates conflicts with the first's).
    #[test]
    fn a_cycled_workload_is_its_commands_in_turn() {
        let work = small_workloads(800);
        let once: Vec<usize> = work.per_client.iter().map(Vec::len).collect();
        let twice: Vec<usize> = once.iter().map(|n| 2 * n).collect();
        let (digest_twice, applied_twice) = cycled_digest(&work, &twice);
        assert_ne!(digest_twice, work.digest);
        assert!(applied_twice > work.applied && applied_twice < 2 * work.applied);
        // A client's count past a cycle is the same as replaying its commands by hand.
        let mut model = Model::new();
        for commands in &work.per_client {
            for command in commands.iter().chain(commands.iter()) {
                model.apply(command);
            }
        }
        assert_eq!(digest(&model.components), digest_twice);
    }

    /// A sustained client sends its workload's commands in order, cycling, in calls of `chunk`,
    /// never has more than its window of calls unanswered, and waits for its last call.
    #[test]
    fn a_sustained_client_cycles_in_calls_and_bounds_what_is_unanswered() {
        let work = small_workloads(8 * 250);
        let commands = &work.per_client[0];
        let mut sent_commands: Vec<Command> = Vec::new();
        let mut appended: Vec<lockstep::RecordId> = Vec::new();
        let mut waited: Vec<lockstep::RecordId> = Vec::new();
        let mut unanswered_max = 0;
        let deadline = Instant::now() + Duration::from_millis(50);
        let sent = std::cell::RefCell::new((&mut sent_commands, &mut appended));
        let count = sustained_client(
            commands,
            100,
            deadline,
            |due| {
                let mut sent = sent.borrow_mut();
                sent.0.extend_from_slice(due);
                let id = lockstep::RecordId {
                    depot_id: 0,
                    partition: 0,
                    offset: sent.1.len() as u64,
                };
                sent.1.push(id);
                Ok(Some(id))
            },
            |id| {
                waited.push(id);
                let appended_count = sent.borrow().1.len();
                // The calls from `id` on are unanswered until it is visible.
                unanswered_max = unanswered_max.max(appended_count - id.offset as usize);
                Ok(())
            },
        )
        .expect("sustained client");
        assert!(
            count > 2 * commands.len(),
            "50 ms sends more than two cycles"
        );
        assert_eq!(sent_commands.len(), count);
        let cycled: Vec<Command> = commands.iter().cycle().take(count).cloned().collect();
        assert!(
            sent_commands == cycled,
            "the commands sent are the workload, cycled"
        );
        assert_eq!(
            waited.last(),
            appended.last(),
            "the client waits for its last call"
        );
        assert!(
            waited.windows(2).all(|w| w[0] < w[1]),
            "waits in call order"
        );
        assert_eq!(
            unanswered_max, SUSTAINED_CALLS_IN_FLIGHT,
            "the window is used, and never exceeded"
        );
    }

    /// The ceiling's state keys: one new, ascending outcome key per record, spread among the
    /// writes, and the rest over the state's distinct keys.
    #[test]
    fn the_ceilings_state_keys_follow_locksteps_pattern() {
        let mut stats = lockstep::TopologyStats::default();
        stats.writes = 1_000;
        stats.records = 400;
        let mut keys = StateKeys::new(&stats, 50);
        let written: Vec<[u8; 16]> = (0..1_000).map(|_| keys.next_key()).collect();
        let (outcomes, others): (Vec<[u8; 16]>, Vec<[u8; 16]>) =
            written.iter().partition(|k| k[0] == 0xFF);
        assert_eq!(outcomes.len(), 400);
        assert!(
            outcomes.windows(2).all(|w| w[0] < w[1]),
            "new and ascending"
        );
        assert!(
            written[..100].iter().filter(|k| k[0] == 0xFF).count() == 40,
            "spread evenly"
        );
        let distinct: std::collections::BTreeSet<_> = others.iter().collect();
        assert_eq!(distinct.len(), 50);
    }
}

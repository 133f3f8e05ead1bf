//! The component workload on embedded Lockstep as the state grows (to 1M components by
//! default, 10M with `--sizes`) and as the partition count goes 1 → 4 → 16 → 64: throughput,
//! append-to-visible latency, resident memory and bytes on disk at each checkpoint.
//!
//! The components are loaded with large append calls of creates, as a forest (trees of 1000
//! components by default, each new component under a random earlier one of its tree), then
//! measured with the mixed workload of `components-bench`, whose clients are seeded with
//! components spread over the whole forest, so reads and writes land all over the state rather
//! than on the recent part of it.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Parser;
use lockstep::{Engine, RecordId};
use lockstep_benches::chart::{line_chart, Series};
use lockstep_benches::components::open_lockstep;
use lockstep_benches::measure::{
    disk_bytes, median, peak_rss_mib, percentile_ms, pipelined_latency_run, reset_peak_rss,
    rss_mib, run_clients,
};
use lockstep_topologies::components::workload::Workload;
use lockstep_topologies::components::{
    read_outcome, Attrs, Command, Components, Outcome, TOPOLOGY,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Parser)]
// Each measured run is this binary again, with overriding flags appended to the caller's.
#[command(args_override_self = true)]
struct Args {
    /// Tree sizes (components) at which the workload is measured, loading the tree up to each
    /// in turn. `--sizes 10000,100000,1000000,10000000` is the 10M run.
    #[arg(long, value_delimiter = ',', default_values_t = [10_000u64, 100_000, 1_000_000])]
    sizes: Vec<u64>,
    /// Partitions of the growing-tree run.
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Partition counts of the partition run.
    #[arg(long, value_delimiter = ',', default_values_t = [1u32, 4, 16, 64])]
    partition_counts: Vec<u32>,
    /// Tree size of the partition run.
    #[arg(long, default_value_t = 100_000)]
    partition_run_size: u64,
    /// Concurrent clients in the measurement windows.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Commands per append call in the measurement windows.
    #[arg(long, default_value_t = 100)]
    chunk: usize,
    /// Append calls a client has outstanding in the throughput windows before it waits for
    /// the oldest one's outcomes.
    #[arg(long, default_value_t = 4)]
    in_flight: usize,
    /// Whole runs (loading included); each figure reported is the median over them.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Throughput windows per checkpoint; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds of each throughput window.
    #[arg(long, default_value_t = 1.0)]
    window_seconds: f64,
    /// Seconds of the latency window, open loop at half the checkpoint's throughput.
    #[arg(long, default_value_t = 2.0)]
    latency_seconds: f64,
    /// Components per tree of the loaded forest (each a random recursive tree).
    #[arg(long, default_value_t = 1000)]
    components_per_tree: u64,
    /// Creates per append call while loading the tree.
    #[arg(long, default_value_t = 10_000)]
    load_chunk: usize,
    /// Load calls outstanding before the loader waits for the oldest to be processed, which
    /// keeps it a bounded distance ahead of the topology.
    #[arg(long, default_value_t = 8)]
    load_in_flight: usize,
    /// Hot ids shared by the clients (fewer: more conflicts).
    #[arg(long, default_value_t = 20)]
    hot_ids: u64,
    /// Workload and tree seed.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Leave out the growing-tree run.
    #[arg(long)]
    skip_sizes: bool,
    /// Leave out the partition run.
    #[arg(long)]
    skip_partitions: bool,
    /// Where the charts go.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/charts"))]
    charts: PathBuf,
    /// Seconds to pause after loading, before measuring: lets RocksDB work off the
    /// compactions the bulk load queued (on two cores they compete with the workload).
    #[arg(long, default_value_t = 10.0)]
    settle_seconds: f64,
    /// Directory under which the engine's data directories are made (removed afterwards).
    #[arg(long)]
    data_parent: Option<PathBuf>,
    /// Internal: run once, write the checkpoints as JSON here, and draw nothing.
    #[arg(long, hide = true)]
    child_output: Option<PathBuf>,
    /// Internal: the one partition count of a child's partition run (list flags given twice
    /// add up rather than override).
    #[arg(long, hide = true)]
    child_partitions: Option<u32>,
}

/// One checkpoint: the tree as loaded, then the workload measured on it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Checkpoint {
    partitions: u32,
    /// Components when the windows started, and when they ended (the windows' own creates and
    /// deletes change the tree too).
    components_start: u64,
    components_end: u64,
    load_seconds: f64,
    load_components_per_s: f64,
    commands_per_s: f64,
    applied_share: f64,
    /// Over the throughput windows: state entries written per command, commands per batch,
    /// and the share of the time spent in synced commit writes.
    writes_per_command: f64,
    commands_per_batch: f64,
    commit_share: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Peak resident memory while loading up to this checkpoint and measuring it.
    rss_peak_mib: f64,
    rss_end_mib: f64,
    disk_mib: f64,
}

// ---- the tree loader ----

/// Loads the tree in component order: component `n` is `t{n}`. Components come in trees of
/// `components_per_tree` (a root, then each later one a child of a uniformly chosen earlier
/// one of its tree: a random recursive tree, average depth about ln of its size), so the state
/// grows with the component count while the shape of each tree stays the same: what changes
/// with size is how much state there is, not how far a cycle check walks or how much one
/// cascade deletes. (One ever-growing random tree would make a cascade delete near its root
/// remove most of the state in one command.) Parents come from the current pass only because
/// nothing deletes while a pass loads, so every parent exists; components of earlier passes
/// may have been deleted by the measured workload since.
struct TreeLoader {
    seed: u64,
    components_per_tree: u64,
    next_index: u64,
    pass_start: u64,
}

/// SplitMix64's finalizer: a well-mixed hash of an index, so the tree needs no stored state.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn tree_id(index: u64) -> String {
    format!("t{index}")
}

impl TreeLoader {
    fn new(seed: u64, components_per_tree: u64) -> Self {
        Self {
            seed,
            components_per_tree: components_per_tree.max(1),
            next_index: 0,
            pass_start: 0,
        }
    }

    /// Starts a pass: later creates choose their parents among the components it loads.
    fn begin_pass(&mut self) {
        self.pass_start = self.next_index;
    }

    fn create(&self, index: u64) -> Command {
        let hash = mix(self.seed ^ index.wrapping_mul(0xA24B_AED4_963E_E407));
        let in_tree = (index - self.pass_start) % self.components_per_tree;
        let tree_root = index - in_tree;
        let parent = (in_tree > 0).then(|| tree_id(tree_root + hash % in_tree));
        let mut attrs = Attrs::new();
        attrs.insert("k0".to_string(), format!("v{}", hash % 1000));
        Command::Create {
            id: tree_id(index),
            parent,
            attrs,
        }
    }

    /// Appends `count` more creates in calls of `chunk`, at most `in_flight` calls ahead of
    /// the topology; returns once all are processed.
    fn load(
        &mut self,
        engine: &Engine,
        handles: &Components,
        count: u64,
        chunk: usize,
        in_flight: usize,
    ) -> anyhow::Result<()> {
        let end = self.next_index + count;
        let mut outstanding: VecDeque<RecordId> = VecDeque::new();
        let started = Instant::now();
        let first = self.next_index;
        while self.next_index < end {
            let loaded = self.next_index - first;
            if loaded > 0
                && loaded / LOAD_PROGRESS_EVERY != (loaded - chunk as u64) / LOAD_PROGRESS_EVERY
            {
                eprintln!(
                    "    appended {loaded} creates in {:.0}s ({:.0}/s)",
                    started.elapsed().as_secs_f64(),
                    loaded as f64 / started.elapsed().as_secs_f64()
                );
            }
            let upto = (self.next_index + chunk as u64).min(end);
            let creates: Vec<Command> = (self.next_index..upto).map(|i| self.create(i)).collect();
            let ids = engine.append_many(&handles.commands, &creates)?;
            outstanding.extend(ids.last().copied());
            self.next_index = upto;
            if outstanding.len() >= in_flight {
                if let Some(oldest) = outstanding.pop_front() {
                    engine.wait_for(TOPOLOGY, oldest, Duration::from_secs(600))?;
                }
            }
        }
        if let Some(last) = outstanding.pop_back() {
            engine.wait_for(TOPOLOGY, last, Duration::from_secs(600))?;
        }
        Ok(())
    }
}

/// Components in the tree now, counted from one snapshot (the stored entries, not decoded).
fn count_components(engine: &Engine) -> anyhow::Result<u64> {
    const PAGE: usize = 100_000;
    let snapshot = engine.snapshot()?;
    let mut count = 0u64;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = snapshot.raw_scan("components", after.as_deref(), PAGE)?;
        count += page.len() as u64;
        let full = page.len() == PAGE;
        match page.into_iter().last() {
            Some((key, _)) if full => after = Some(key),
            _ => return Ok(count),
        }
    }
}

// ---- the measured workload ----

/// One client of the measurement windows: the shared workload generator, fed back the
/// outcomes of its commands so it aims at live components, as real clients do.
struct Client {
    workload: Workload,
    /// Append calls not yet settled, oldest first: their positions and commands.
    pending: VecDeque<(Vec<RecordId>, Vec<Command>)>,
    commands: u64,
    applied: u64,
}

/// How often a long load reports its progress, in creates.
const LOAD_PROGRESS_EVERY: u64 = 1_000_000;

/// Load-and-count rounds before measuring a tree that is still short of its target size.
const LOAD_ROUNDS_MAX: usize = 5;

/// Components each client starts out knowing alive, drawn from the whole tree.
const SEEDED_IDS: usize = 4096;

impl Client {
    /// Client `number` (unique over the whole run, so fresh ids never repeat), knowing
    /// [`SEEDED_IDS`] components drawn uniformly from the `tree_size` loaded ones.
    fn new(args: &Args, number: u64, tree_size: u64) -> Self {
        let mut workload = Workload::new(args.seed, number, args.hot_ids);
        if tree_size > 0 {
            for k in 0..SEEDED_IDS as u64 {
                let index =
                    mix(args.seed ^ number.wrapping_mul(0x9E6C_63D0_676A_9A99) ^ k) % tree_size;
                let known = Command::Create {
                    id: tree_id(index),
                    parent: None,
                    attrs: Attrs::new(),
                };
                workload.observe(&known, Outcome::Applied);
            }
        }
        Self {
            workload,
            pending: VecDeque::new(),
            commands: 0,
            applied: 0,
        }
    }

    fn next_commands(&mut self, count: usize) -> Vec<Command> {
        (0..count).map(|_| self.workload.next_command()).collect()
    }

    /// Waits for the oldest pending call to be processed and learns its outcomes.
    fn settle_oldest(&mut self, engine: &Engine) -> anyhow::Result<()> {
        let Some((ids, commands)) = self.pending.pop_front() else {
            return Ok(());
        };
        let Some(last) = ids.last() else {
            return Ok(());
        };
        engine.wait_for(TOPOLOGY, *last, Duration::from_secs(600))?;
        let snapshot = engine.snapshot()?;
        for (command, id) in commands.iter().zip(&ids) {
            let (outcome, _) = read_outcome(&snapshot, *id)?
                .with_context(|| format!("no outcome for processed record {id:?}"))?;
            self.workload.observe(command, outcome);
            self.commands += 1;
            self.applied += u64::from(outcome == Outcome::Applied);
        }
        Ok(())
    }
}

struct Measurer<'a> {
    args: &'a Args,
    engine: &'a Engine,
    handles: &'a Components,
    next_client: u64,
}

impl Measurer<'_> {
    fn clients(&mut self, tree_size: u64) -> Vec<Mutex<Client>> {
        let first = self.next_client;
        self.next_client += self.args.clients as u64;
        (first..self.next_client)
            .map(|number| Mutex::new(Client::new(self.args, number, tree_size)))
            .collect()
    }

    /// Closed loop: every client keeps `in_flight` calls of `chunk` commands outstanding for
    /// `window_seconds`, then settles them. Returns commands/s and the applied share.
    fn throughput(&mut self, tree_size: u64) -> anyhow::Result<(f64, f64)> {
        let clients = self.clients(tree_size);
        let (engine, handles, args) = (self.engine, self.handles, self.args);
        let window = Duration::from_secs_f64(args.window_seconds);
        let seconds = run_clients(args.clients, |c| {
            let mut client = clients[c].lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            let started = Instant::now();
            while started.elapsed() < window {
                let commands = client.next_commands(args.chunk);
                let ids = engine.append_many(&handles.commands, &commands)?;
                client.pending.push_back((ids, commands));
                if client.pending.len() >= args.in_flight {
                    client.settle_oldest(engine)?;
                }
            }
            while !client.pending.is_empty() {
                client.settle_oldest(engine)?;
            }
            Ok(())
        })?;
        let (commands, applied) = totals(clients)?;
        Ok((
            commands as f64 / seconds,
            applied as f64 / commands.max(1) as f64,
        ))
    }

    /// Open loop at `rate_per_s`: sorted append-to-visible latencies in microseconds.
    fn latency(&mut self, tree_size: u64, rate_per_s: f64) -> anyhow::Result<Vec<u64>> {
        let clients = self.clients(tree_size);
        let (engine, handles, args) = (self.engine, self.handles, self.args);
        pipelined_latency_run(
            args.clients,
            rate_per_s,
            args.latency_seconds,
            Duration::from_millis(1),
            // The client's lock is never held across a wait (for durability or visibility),
            // so that neither side of the client delays the other's schedule.
            |c, due| {
                let lock = || clients[c].lock().map_err(|_| anyhow::anyhow!("poisoned"));
                let commands = lock()?.next_commands(due.len());
                let ids = engine.append_many(&handles.commands, &commands)?;
                lock()?.pending.push_back((ids.clone(), commands));
                Ok(ids)
            },
            // One wait per submitted call, in order: the oldest pending call is this one.
            |c, last| {
                engine.wait_for(TOPOLOGY, last, Duration::from_secs(600))?;
                let mut client = clients[c].lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                client.settle_oldest(engine)
            },
        )
    }

    /// Measures the workload at the tree's current size: `runs` throughput windows, then
    /// the latency window at half their median.
    fn checkpoint(&mut self, checkpoint: &mut Checkpoint) -> anyhow::Result<()> {
        let tree_size = checkpoint.components_start;
        let mut rates = Vec::new();
        let mut applied = Vec::new();
        let before = self.engine.stats(TOPOLOGY)?;
        let started = Instant::now();
        for _ in 0..self.args.runs {
            let (rate, share) = self.throughput(tree_size)?;
            rates.push(rate);
            applied.push(share);
        }
        let elapsed_us = started.elapsed().as_micros() as f64;
        let after = self.engine.stats(TOPOLOGY)?;
        let records = after.records.saturating_sub(before.records).max(1) as f64;
        checkpoint.writes_per_command = after.writes.saturating_sub(before.writes) as f64 / records;
        checkpoint.commands_per_batch =
            records / after.batches.saturating_sub(before.batches).max(1) as f64;
        checkpoint.commit_share =
            after.commit_time_us.saturating_sub(before.commit_time_us) as f64 / elapsed_us;
        checkpoint.commands_per_s = median(rates);
        checkpoint.applied_share = median(applied);
        let latencies = self.latency(tree_size, checkpoint.commands_per_s / 2.0)?;
        checkpoint.p50_ms = percentile_ms(&latencies, 0.5);
        checkpoint.p99_ms = percentile_ms(&latencies, 0.99);
        Ok(())
    }
}

fn totals(clients: Vec<Mutex<Client>>) -> anyhow::Result<(u64, u64)> {
    let mut commands = 0;
    let mut applied = 0;
    for client in clients {
        let client = client
            .into_inner()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        commands += client.commands;
        applied += client.applied;
    }
    Ok((commands, applied))
}

// ---- the two runs ----

fn data_dir(args: &Args) -> anyhow::Result<tempfile::TempDir> {
    Ok(match &args.data_parent {
        Some(parent) => tempfile::tempdir_in(parent)?,
        None => tempfile::tempdir()?,
    })
}

/// Loads the tree to `target` components (counting what is there) and measures it.
fn load_and_measure(
    measurer: &mut Measurer<'_>,
    loader: &mut TreeLoader,
    dir: &Path,
    partitions: u32,
    target: u64,
    components_now: u64,
) -> anyhow::Result<Checkpoint> {
    let args = measurer.args;
    reset_peak_rss();
    loader.begin_pass();
    let mut load_seconds = 0.0;
    let mut components = components_now;
    let mut loaded = 0;
    // The windows' cascade deletes remove subtrees, and a create under a deleted parent is
    // rejected: load, count, and top up until the tree has (nearly) the target size.
    for _ in 0..LOAD_ROUNDS_MAX {
        let to_load = target.saturating_sub(components);
        if to_load <= target / 100 {
            break;
        }
        let started = Instant::now();
        loader.load(
            measurer.engine,
            measurer.handles,
            to_load,
            args.load_chunk,
            args.load_in_flight,
        )?;
        load_seconds += started.elapsed().as_secs_f64();
        loaded += to_load;
        components = count_components(measurer.engine)?;
    }
    let mut checkpoint = Checkpoint {
        partitions,
        components_start: components,
        load_seconds,
        load_components_per_s: loaded as f64 / load_seconds.max(1e-9),
        ..Checkpoint::default()
    };
    eprintln!(
        "  {partitions} partitions: appended {loaded} creates in {load_seconds:.1}s \
         ({:.0}/s), {} in the tree; measuring ...",
        checkpoint.load_components_per_s, checkpoint.components_start
    );
    std::thread::sleep(Duration::from_secs_f64(args.settle_seconds));
    measurer.checkpoint(&mut checkpoint)?;
    checkpoint.rss_peak_mib = peak_rss_mib();
    checkpoint.rss_end_mib = rss_mib();
    checkpoint.disk_mib = disk_bytes(dir) as f64 / (1 << 20) as f64;
    checkpoint.components_end = count_components(measurer.engine)?;
    eprintln!(
        "  {:.0} commands/s, p50 {:.1} ms, p99 {:.1} ms, peak RSS {:.0} MiB, disk {:.0} MiB",
        checkpoint.commands_per_s,
        checkpoint.p50_ms,
        checkpoint.p99_ms,
        checkpoint.rss_peak_mib,
        checkpoint.disk_mib
    );
    Ok(checkpoint)
}

fn size_run(args: &Args) -> anyhow::Result<(Vec<Checkpoint>, f64)> {
    let dir = data_dir(args)?;
    let (engine, handles) = open_lockstep(dir.path(), args.partitions)?;
    let mut measurer = Measurer {
        args,
        engine: &engine,
        handles: &handles,
        next_client: 0,
    };
    let mut loader = TreeLoader::new(args.seed, args.components_per_tree);
    let started = Instant::now();
    let mut checkpoints: Vec<Checkpoint> = Vec::new();
    for &size in &args.sizes {
        eprintln!(
            "size run: up to {size} components ({:.0}s so far)",
            started.elapsed().as_secs_f64()
        );
        let now = checkpoints.last().map_or(0, |c| c.components_end);
        let checkpoint = load_and_measure(
            &mut measurer,
            &mut loader,
            dir.path(),
            args.partitions,
            size,
            now,
        )?;
        checkpoints.push(checkpoint);
    }
    let seconds = started.elapsed().as_secs_f64();
    close(engine);
    Ok((checkpoints, seconds))
}

fn partition_run(args: &Args) -> anyhow::Result<Vec<Checkpoint>> {
    let mut checkpoints = Vec::new();
    let counts = args
        .child_partitions
        .map_or_else(|| args.partition_counts.clone(), |p| vec![p]);
    for partitions in counts {
        eprintln!(
            "partition run: {partitions} partitions, {} components",
            args.partition_run_size
        );
        let dir = data_dir(args)?;
        let (engine, handles) = open_lockstep(dir.path(), partitions)?;
        let mut measurer = Measurer {
            args,
            engine: &engine,
            handles: &handles,
            next_client: 0,
        };
        let mut loader = TreeLoader::new(args.seed, args.components_per_tree);
        checkpoints.push(load_and_measure(
            &mut measurer,
            &mut loader,
            dir.path(),
            partitions,
            args.partition_run_size,
            0,
        )?);
        close(engine);
    }
    Ok(checkpoints)
}

/// Stops the engine's threads before its directory is removed.
fn close(engine: Arc<Engine>) {
    if let Ok(engine) = Arc::try_unwrap(engine) {
        engine.close();
    }
}

/// Runs this binary once more with the caller's flags and `overrides`, in a process of its
/// own: memory a run freed stays with the process (the allocator keeps it), so a later run in
/// the same process would start from the earlier one's peak and its RSS figures would mean
/// nothing.
fn child_run(overrides: &[String]) -> anyhow::Result<Vec<Checkpoint>> {
    let output = tempfile::NamedTempFile::new()?;
    let status = std::process::Command::new(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .args(overrides)
        .args(["--repeats", "1", "--child-output"])
        .arg(output.path())
        .stdout(std::process::Stdio::null())
        .status()
        .context("starting a measured run")?;
    ensure!(status.success(), "a measured run failed: {status}");
    let json = std::fs::read(output.path())?;
    Ok(serde_json::from_slice(&json)?)
}

/// Each checkpoint's every figure, the median over the repeated runs (figures of one row may
/// then come from different runs).
fn median_checkpoints(repeats: &[Vec<Checkpoint>]) -> Vec<Checkpoint> {
    let Some(first) = repeats.first() else {
        return Vec::new();
    };
    let of = |row: usize, field: fn(&Checkpoint) -> f64| {
        median(
            repeats
                .iter()
                .filter_map(|run| run.get(row))
                .map(field)
                .collect(),
        )
    };
    (0..first.len())
        .map(|row| Checkpoint {
            partitions: first[row].partitions,
            components_start: of(row, |c| c.components_start as f64) as u64,
            components_end: of(row, |c| c.components_end as f64) as u64,
            load_seconds: of(row, |c| c.load_seconds),
            load_components_per_s: of(row, |c| c.load_components_per_s),
            commands_per_s: of(row, |c| c.commands_per_s),
            applied_share: of(row, |c| c.applied_share),
            writes_per_command: of(row, |c| c.writes_per_command),
            commands_per_batch: of(row, |c| c.commands_per_batch),
            commit_share: of(row, |c| c.commit_share),
            p50_ms: of(row, |c| c.p50_ms),
            p99_ms: of(row, |c| c.p99_ms),
            rss_peak_mib: of(row, |c| c.rss_peak_mib),
            rss_end_mib: of(row, |c| c.rss_end_mib),
            disk_mib: of(row, |c| c.disk_mib),
        })
        .collect()
}

// ---- output ----

fn print_table(title: &str, checkpoints: &[Checkpoint]) {
    println!("{title}");
    println!(
        "{:>5} {:>10} {:>10} {:>8} {:>10} {:>11} {:>8} {:>7} {:>9} {:>8} {:>7} {:>7} {:>9} {:>8} {:>9}",
        "parts",
        "tree start",
        "tree end",
        "load s",
        "load/s",
        "commands/s",
        "applied",
        "wr/cmd",
        "cmd/batch",
        "commit",
        "p50 ms",
        "p99 ms",
        "peak RSS",
        "RSS end",
        "disk MiB"
    );
    for c in checkpoints {
        println!(
            "{:>5} {:>10} {:>10} {:>8.1} {:>10.0} {:>11.0} {:>7.0}% {:>7.1} {:>9.0} {:>7.0}% {:>7.1} {:>7.1} {:>9.0} {:>8.0} {:>9.0}",
            c.partitions,
            c.components_start,
            c.components_end,
            c.load_seconds,
            c.load_components_per_s,
            c.commands_per_s,
            100.0 * c.applied_share,
            c.writes_per_command,
            c.commands_per_batch,
            100.0 * c.commit_share,
            c.p50_ms,
            c.p99_ms,
            c.rss_peak_mib,
            c.rss_end_mib,
            c.disk_mib
        );
    }
    println!();
}

fn series(
    label: &str,
    checkpoints: &[Checkpoint],
    x: fn(&Checkpoint) -> f64,
    y: fn(&Checkpoint) -> f64,
) -> Series {
    Series {
        label: label.to_string(),
        points: checkpoints.iter().map(|c| (x(c), y(c))).collect(),
    }
}

fn size_charts(dir: &Path, checkpoints: &[Checkpoint]) -> anyhow::Result<Vec<PathBuf>> {
    let tree = |c: &Checkpoint| c.components_start as f64;
    let paths = [
        dir.join("scaling-size-throughput.png"),
        dir.join("scaling-size-latency.png"),
        dir.join("scaling-size-memory.png"),
    ];
    line_chart(
        &paths[0],
        "Component workload as the state grows (embedded, 8 partitions)",
        "components stored",
        "per second",
        &[
            series("mixed commands/s", checkpoints, tree, |c| c.commands_per_s),
            {
                // A checkpoint the windows before it already grew past loads nothing: no
                // load rate to draw.
                let mut load = series("tree load, creates/s", checkpoints, tree, |c| {
                    c.load_components_per_s
                });
                load.points.retain(|(_, rate)| *rate > 0.0);
                load
            },
        ],
        true,
        false,
    )?;
    line_chart(
        &paths[1],
        "Append-to-visible latency as the state grows (open loop, half of peak)",
        "components stored",
        "milliseconds",
        &[
            series("p50", checkpoints, tree, |c| c.p50_ms),
            series("p99", checkpoints, tree, |c| c.p99_ms),
        ],
        true,
        false,
    )?;
    line_chart(
        &paths[2],
        "Memory and disk as the state grows",
        "components stored",
        "MiB",
        &[
            series("peak RSS", checkpoints, tree, |c| c.rss_peak_mib),
            series("bytes on disk", checkpoints, tree, |c| c.disk_mib),
        ],
        true,
        true,
    )?;
    Ok(paths.to_vec())
}

fn partition_charts(dir: &Path, checkpoints: &[Checkpoint]) -> anyhow::Result<Vec<PathBuf>> {
    let parts = |c: &Checkpoint| f64::from(c.partitions);
    let paths = [
        dir.join("scaling-partitions-throughput.png"),
        dir.join("scaling-partitions-latency.png"),
    ];
    let size = checkpoints.first().map_or(0, |c| c.components_start);
    line_chart(
        &paths[0],
        &format!("Component workload by partition count ({size} components)"),
        "partitions",
        "commands/s",
        &[series("mixed commands/s", checkpoints, parts, |c| {
            c.commands_per_s
        })],
        true,
        false,
    )?;
    line_chart(
        &paths[1],
        &format!("Latency and memory by partition count ({size} components)"),
        "partitions",
        "milliseconds / MiB",
        &[
            series("p50 ms", checkpoints, parts, |c| c.p50_ms),
            series("p99 ms", checkpoints, parts, |c| c.p99_ms),
            series("peak RSS MiB", checkpoints, parts, |c| c.rss_peak_mib),
        ],
        true,
        true,
    )?;
    Ok(paths.to_vec())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        args.clients > 0
            && args.chunk > 0
            && args.in_flight > 0
            && args.runs > 0
            && args.repeats > 0,
        "--clients, --chunk, --in-flight, --runs and --repeats must be at least 1"
    );
    ensure!(
        args.load_chunk > 0 && args.load_in_flight > 0,
        "--load-chunk and --load-in-flight must be at least 1"
    );
    println!(
        "scaling-bench: {} clients x {} commands per call, {} in flight; {} throughput windows of {}s (median), latency {}s open loop at half of it; {} cores",
        args.clients,
        args.chunk,
        args.in_flight,
        args.runs,
        args.window_seconds,
        args.latency_seconds,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    if let Some(output) = &args.child_output {
        let checkpoints = if args.skip_sizes {
            partition_run(&args)?
        } else {
            size_run(&args)?.0
        };
        std::fs::write(output, serde_json::to_vec(&checkpoints)?)?;
        return Ok(());
    }
    std::fs::create_dir_all(&args.charts)
        .with_context(|| format!("creating {}", args.charts.display()))?;
    let mut charts = Vec::new();
    if !args.skip_sizes {
        let mut repeats = Vec::new();
        let mut seconds = Vec::new();
        for repeat in 1..=args.repeats {
            eprintln!("size run {repeat} of {}", args.repeats);
            let started = Instant::now();
            let checkpoints = child_run(&["--skip-partitions".to_string()])?;
            seconds.push(started.elapsed().as_secs_f64());
            if args.repeats > 1 {
                print_table(&format!("size run {repeat}"), &checkpoints);
            }
            repeats.push(checkpoints);
        }
        let checkpoints = median_checkpoints(&repeats);
        print_table(
            &format!(
                "growing state, {} partitions, median of {} runs (a run: {:.0}s, loading included)",
                args.partitions,
                args.repeats,
                median(seconds)
            ),
            &checkpoints,
        );
        charts.extend(size_charts(&args.charts, &checkpoints)?);
    }
    if !args.skip_partitions {
        let mut repeats = Vec::new();
        for repeat in 1..=args.repeats {
            eprintln!("partition run {repeat} of {}", args.repeats);
            let mut checkpoints = Vec::new();
            for partitions in &args.partition_counts {
                checkpoints.extend(child_run(&[
                    "--skip-sizes".to_string(),
                    "--child-partitions".to_string(),
                    partitions.to_string(),
                ])?);
            }
            if args.repeats > 1 {
                print_table(&format!("partition run {repeat}"), &checkpoints);
            }
            repeats.push(checkpoints);
        }
        let checkpoints = median_checkpoints(&repeats);
        print_table(
            &format!(
                "partitions, {} components, median of {} runs",
                args.partition_run_size, args.repeats
            ),
            &checkpoints,
        );
        charts.extend(partition_charts(&args.charts, &checkpoints)?);
    }
    for chart in charts {
        println!("chart: {}", chart.display());
    }
    Ok(())
}

//! `components`: the component parent/child integrity app on Lockstep.
//!
//! `components demo` runs the engine in-process, drives a mixed, conflicting workload from
//! concurrent clients, verifies every invariant and prints a summary. `components serve` runs
//! it as a server; `append`, `get`, `dump`, `verify` and `load` are its clients (`verify` also
//! checks a data directory directly).

mod json;
mod remote;

// jemalloc rather than the system allocator: it halves the allocator's share of the batch
// driver's time (benches/EXPERIMENTS.md, "Memory allocator"). Binaries choose; the engine's
// libraries do not.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use lockstep::{Engine, EngineOptions, RecordId};
use lockstep_topologies::components::invariants::{check, ComponentsView};
use lockstep_topologies::components::workload::Workload;
use lockstep_topologies::components::{
    components, read_outcome, read_view, Components, Outcome, DEPOT, TOPOLOGY,
};

#[derive(Debug, Parser)]
#[command(version, about = "Component parent/child integrity on Lockstep")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the engine in-process under a mixed, conflicting workload, verify it, and report.
    Demo {
        /// Data directory (a temporary one, removed afterwards, if not given).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Concurrent clients.
        #[arg(long, default_value_t = 8)]
        clients: u64,
        /// Commands in all.
        #[arg(long, default_value_t = 200_000)]
        commands: u64,
        /// Hot ids every client also targets (fewer: more conflicts).
        #[arg(long, default_value_t = 100)]
        hot_ids: u64,
        /// Commands per append call.
        #[arg(long, default_value_t = 100)]
        chunk: u64,
        /// Partitions (fixed once a data directory exists).
        #[arg(long, default_value_t = 8)]
        partitions: u32,
        /// Workload seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Serve a data directory over TCP.
    Serve {
        /// The data directory (created if missing).
        #[arg(long)]
        data: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7420")]
        listen: std::net::SocketAddr,
        /// Partitions for a new data directory (an existing one keeps its own).
        #[arg(long)]
        partitions: Option<u32>,
        /// Require clients to present this token.
        #[arg(long, env = "LOCKSTEP_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Delete command records, and their outcomes, once processed, keeping the newest
        /// this many of each partition (default: keep every record). A client that reads an
        /// outcome after its record is deleted is told it was trimmed.
        #[arg(long)]
        keep_depot_records: Option<u64>,
        /// Forget a client (an idempotent producer) this many seconds after its last append;
        /// a retry must come sooner to be recognised (default: a day). At least 1: 0 would
        /// forget every client at once and so turn retry deduplication off.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        producer_expiry_secs: Option<u64>,
        /// Limit what the storage's flushes and compactions write, in MiB a second (default:
        /// no limit). Smooths their bursts so that commits' synced writes wait less behind
        /// them; set it well above what they need at peak load, or writes stall. At most
        /// 1048576 (1 TiB/s).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
        background_write_mib_per_s: Option<u64>,
    },
    /// Append commands read as JSON Lines from stdin; one JSON line out per line in, in order.
    Append {
        /// The server.
        #[arg(long, default_value = DEFAULT_SERVER)]
        server: String,
        /// Also wait for each command's outcome.
        #[arg(long)]
        wait: bool,
        /// Keep retrying through disconnects and restarts for this many seconds.
        #[arg(long, default_value_t = 0.0)]
        retry_for: f64,
        /// Token for the server.
        #[arg(long, env = "LOCKSTEP_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Print one component as JSON (exit status 1 if it does not exist).
    Get {
        /// The component's id.
        id: String,
        /// The server.
        #[arg(long, default_value = DEFAULT_SERVER)]
        server: String,
        /// Token for the server.
        #[arg(long, env = "LOCKSTEP_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Print a consistent snapshot as JSON Lines: a header, then every component by id.
    Dump {
        /// The server.
        #[arg(long, default_value = DEFAULT_SERVER)]
        server: String,
        /// Token for the server.
        #[arg(long, env = "LOCKSTEP_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Check every invariant on a consistent snapshot, of a data directory or a server.
    Verify {
        /// A data directory (not in use by another process).
        #[arg(long, conflicts_with = "server", required_unless_present = "server")]
        data: Option<PathBuf>,
        /// A server.
        #[arg(long)]
        server: Option<String>,
        /// Token for the server.
        #[arg(long, env = "LOCKSTEP_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Drive a server with concurrent clients and report throughput and latency.
    Load {
        /// The server.
        #[arg(long, default_value = DEFAULT_SERVER)]
        server: String,
        /// Concurrent clients.
        #[arg(long, default_value_t = 8)]
        clients: u64,
        /// Commands in all.
        #[arg(long, default_value_t = 10_000)]
        ops: u64,
        /// Workload seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Hot ids every client also targets (fewer: more conflicts).
        #[arg(long, default_value_t = 100)]
        hot_ids: u64,
        /// Print a machine-readable JSON summary instead.
        #[arg(long)]
        json: bool,
        /// Token for the server.
        #[arg(long, env = "LOCKSTEP_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

const DEFAULT_SERVER: &str = "127.0.0.1:7420";

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Demo {
            data,
            clients,
            commands,
            hot_ids,
            chunk,
            partitions,
            seed,
        } => demo(DemoArgs {
            data,
            clients,
            commands,
            hot_ids,
            chunk,
            partitions,
            seed,
        }),
        Cmd::Serve {
            data,
            listen,
            partitions,
            token,
            keep_depot_records,
            producer_expiry_secs,
            background_write_mib_per_s,
        } => remote::serve(
            &data,
            listen,
            partitions,
            token,
            keep_depot_records,
            producer_expiry_secs.map(Duration::from_secs),
            background_write_mib_per_s.map(|mib| mib << 20),
        ),
        Cmd::Append {
            server,
            wait,
            retry_for,
            token,
        } => match Duration::try_from_secs_f64(retry_for) {
            Ok(retry_for) => remote::append(&server, wait, retry_for, token),
            Err(_) => Err(anyhow::anyhow!(
                "--retry-for must be a non-negative number of seconds"
            )),
        },
        Cmd::Get { id, server, token } => remote::get(&server, &id, token),
        Cmd::Dump { server, token } => remote::dump(&server, token),
        Cmd::Verify {
            data: Some(data), ..
        } => verify(&data),
        Cmd::Verify {
            server: Some(server),
            token,
            ..
        } => remote::verify_server(&server, token),
        Cmd::Verify { .. } => Err(anyhow::anyhow!("verify needs --data DIR or --server ADDR")),
        Cmd::Load {
            server,
            clients,
            ops,
            seed,
            hot_ids,
            json,
            token,
        } => remote::load(&server, clients, ops, seed, hot_ids, json, token),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn open(
    dir: &Path,
    partitions: u32,
    options: EngineOptions,
) -> anyhow::Result<(Engine, Components)> {
    let handles = components(partitions)?;
    let engine = Engine::builder(dir)
        .options(options)
        .depot(&handles.commands)
        .topology(handles.topology.clone())
        .open()
        .with_context(|| format!("opening {}", dir.display()))?;
    Ok((engine, handles))
}

struct DemoArgs {
    data: Option<PathBuf>,
    clients: u64,
    commands: u64,
    hot_ids: u64,
    chunk: u64,
    partitions: u32,
    seed: u64,
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    if args.clients == 0 || args.chunk == 0 || args.hot_ids == 0 {
        bail!("--clients, --chunk and --hot-ids must be at least 1");
    }
    let temp = tempfile::tempdir().context("creating a temporary data directory")?;
    let dir = args
        .data
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    let (engine, handles) = open(&dir, args.partitions, EngineOptions::default())?;
    let first_batch = engine.committed(TOPOLOGY)?.batch_id;

    let progress = ProgressBar::new(args.commands);
    progress.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} commands applied or rejected  {per_sec}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let done = AtomicU64::new(0);
    let per_client = args.commands.div_ceil(args.clients);
    let started = Instant::now();
    // Each client appends a chunk, waits until it is processed, and records, per command, the
    // time from its append call to its outcome being readable.
    type ClientResult = anyhow::Result<(Vec<RecordId>, Vec<u64>)>;
    let results: Vec<ClientResult> = std::thread::scope(|scope| {
        let handles_ref = &handles;
        let engine_ref = &engine;
        let (progress, done) = (&progress, &done);
        let workers: Vec<_> = (0..args.clients)
            .map(|client| {
                scope.spawn(move || -> ClientResult {
                    let mut workload = Workload::new(args.seed, client, args.hot_ids);
                    let first = client * per_client;
                    let end = (first + per_client).min(args.commands);
                    let mut ids = Vec::new();
                    let mut latencies_us = Vec::new();
                    let mut i = first;
                    while i < end {
                        let n = args.chunk.min(end - i);
                        let commands: Vec<_> = (0..n).map(|_| workload.next_command()).collect();
                        let call = Instant::now();
                        let chunk_ids = engine_ref.append_many(&handles_ref.commands, &commands)?;
                        if let Some(last) = chunk_ids.last() {
                            engine_ref.wait_for(TOPOLOGY, *last, Duration::from_secs(120))?;
                        }
                        let latency = call.elapsed().as_micros() as u64;
                        // Clients learn what happened and aim their next commands at live
                        // components, as real clients do.
                        let snapshot = engine_ref.snapshot()?;
                        for (command, id) in commands.iter().zip(&chunk_ids) {
                            if let Some((outcome, _)) = read_outcome(&snapshot, *id)? {
                                workload.observe(command, outcome);
                            }
                        }
                        drop(snapshot);
                        latencies_us.extend(std::iter::repeat_n(latency, chunk_ids.len()));
                        ids.extend(chunk_ids);
                        progress.inc(n);
                        done.fetch_add(n, Ordering::Relaxed);
                        i += n;
                    }
                    Ok((ids, latencies_us))
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("client panicked")))
            })
            .collect()
    });
    let elapsed = started.elapsed();
    progress.finish_and_clear();
    let mut all_ids = Vec::new();
    let mut latencies_us = Vec::new();
    for result in results {
        let (ids, latencies) = result?;
        all_ids.extend(ids);
        latencies_us.extend(latencies);
    }
    latencies_us.sort_unstable();

    let snapshot = engine.snapshot()?;
    let mut by_outcome: BTreeMap<&'static str, u64> = BTreeMap::new();
    for id in &all_ids {
        let label = match read_outcome(&snapshot, *id)? {
            Some((Outcome::Applied, _)) => "applied",
            Some((Outcome::Rejected(reason), _)) => reason.as_str(),
            None => bail!(
                "command at partition {} offset {} has no outcome",
                id.partition,
                id.offset
            ),
        };
        *by_outcome.entry(label).or_default() += 1;
    }
    let view = read_view(&snapshot, &handles)?;
    let violations = check(&view);
    let batch = snapshot.batch_id(TOPOLOGY)?;

    println!(
        "components demo: {} ({} partitions)",
        dir.display(),
        args.partitions
    );
    println!(
        "  commands    {} from {} concurrent clients, {} per append, {} hot ids shared",
        all_ids.len(),
        args.clients,
        args.chunk,
        args.hot_ids
    );
    let applied = by_outcome.get("applied").copied().unwrap_or(0);
    println!("  applied     {applied}");
    let rejected: Vec<String> = by_outcome
        .iter()
        .filter(|(label, _)| **label != "applied")
        .map(|(label, n)| format!("{label} {n}"))
        .collect();
    println!(
        "  rejected    {} ({})",
        all_ids.len() as u64 - applied,
        rejected.join(", ")
    );
    println!("  batches     {}", batch - first_batch);
    println!(
        "  throughput  {:.0} commands/s ({:.2?})",
        all_ids.len() as f64 / elapsed.as_secs_f64(),
        elapsed
    );
    println!(
        "  latency     p50 {:.1} ms, p99 {:.1} ms (append call to outcome readable)",
        percentile(&latencies_us, 0.5) as f64 / 1000.0,
        percentile(&latencies_us, 0.99) as f64 / 1000.0
    );
    println!(
        "  state       {} components, {} parent/child links at batch {batch}",
        view.components.len(),
        view.links.len()
    );
    if violations.is_empty() {
        println!("  verified    every invariant holds (parents exist and list their children, children agree, no cycles, versions >= 1)");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("  VIOLATIONS  {}", violations.len());
        for violation in &violations {
            println!("    {violation:?}");
        }
        Ok(ExitCode::FAILURE)
    }
}

fn verify(dir: &Path) -> anyhow::Result<ExitCode> {
    let partitions = Engine::stored_depot_partitions(dir, DEPOT)?
        .with_context(|| format!("{} holds no component data", dir.display()))?;
    // Manual driving: verifying must not process pending commands.
    let (engine, handles) = open(dir, partitions, EngineOptions::manual())?;
    let snapshot = engine.snapshot()?;
    let view = read_view(&snapshot, &handles)?;
    let batch = snapshot.batch_id(TOPOLOGY)?;
    Ok(report_verification(&view, batch))
}

/// Prints the verdict on a view: one summary line, or every violation. Exit status 1 on any.
fn report_verification(view: &ComponentsView, batch: u64) -> ExitCode {
    let violations = check(view);
    if violations.is_empty() {
        println!(
            "ok: {} components, {} links, batch {batch}: every invariant holds",
            view.components.len(),
            view.links.len()
        );
        ExitCode::SUCCESS
    } else {
        println!(
            "FAILED: {} violations in {} components at batch {batch}",
            violations.len(),
            view.components.len()
        );
        for violation in &violations {
            println!("  {violation:?}");
        }
        ExitCode::FAILURE
    }
}

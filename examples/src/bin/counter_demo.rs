//! The first thing to run: an embedded engine with the counting topology, fed by concurrent
//! appenders, checked against a direct computation, with a short report.

// jemalloc rather than the system allocator: it halves the allocator's share of the batch
// driver's time (benches/EXPERIMENTS.md, "Memory allocator"). Binaries choose; the engine's
// libraries do not.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use lockstep::Engine;
use lockstep_topologies::counter::{counter, CountEvent, TOPOLOGY};

/// Runs the counting topology in-process and verifies the result.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Data directory (a temporary one, removed afterwards, if not given).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Events to append in all.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Concurrent appender threads.
    #[arg(long, default_value_t = 8)]
    appenders: u64,
    /// Events per append call.
    #[arg(long, default_value_t = 100)]
    append_batch: u64,
    /// Partitions of the depot and topology (fixed once a data directory exists).
    #[arg(long, default_value_t = 8)]
    partitions: u32,
}

fn event(i: u64) -> CountEvent {
    CountEvent {
        key: format!("key-{}", i % 1_000),
        group: format!("group-{}", i % 16),
        amount: (i % 5) as i64 - 1,
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if args.appenders == 0 || args.append_batch == 0 {
        bail!("--appenders and --append-batch must be at least 1");
    }
    let temp = tempfile::tempdir().context("creating a temporary data directory")?;
    let dir = args
        .data
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    let counter = counter(args.partitions)?;
    let engine = Engine::builder(&dir)
        .depot(&counter.events)
        .topology(counter.topology.clone())
        .open()
        .with_context(|| format!("opening {}", dir.display()))?;
    let before = engine.committed(TOPOLOGY)?.batch_id;
    let baseline = engine.snapshot()?;
    let start_counts: BTreeMap<String, i64> = baseline
        .range(
            &counter.counts,
            Bound::Unbounded,
            Bound::Unbounded,
            usize::MAX,
        )?
        .into_iter()
        .collect();
    drop(baseline);

    let progress = ProgressBar::new(args.events);
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} events  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let per_thread = args.events.div_ceil(args.appenders);
    let results: Vec<anyhow::Result<(Option<lockstep::RecordId>, Vec<u64>)>> =
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..args.appenders)
                .map(|t| {
                    let (engine, counter, progress) = (&engine, &counter, &progress);
                    scope.spawn(move || {
                        let first = t * per_thread;
                        let end = (first + per_thread).min(args.events);
                        let mut last = None;
                        let mut latencies_us = Vec::new();
                        let mut i = first;
                        while i < end {
                            let n = args.append_batch.min(end - i);
                            let events: Vec<CountEvent> = (i..i + n).map(event).collect();
                            let call = Instant::now();
                            let ids = engine.append_many(&counter.events, &events)?;
                            latencies_us.push(call.elapsed().as_micros() as u64);
                            last = ids.last().copied().or(last);
                            progress.inc(n);
                            i += n;
                        }
                        Ok((last, latencies_us))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("appender panicked")))
                })
                .collect()
        });
    let appended_in = started.elapsed();
    let mut latencies_us = Vec::new();
    for result in results {
        let (last, latencies) = result?;
        latencies_us.extend(latencies);
        if let Some(id) = last {
            engine.wait_for(TOPOLOGY, id, Duration::from_secs(120))?;
        }
    }
    let visible_in = started.elapsed();
    progress.finish_and_clear();

    let mut expected = start_counts;
    for i in 0..args.events {
        let e = event(i);
        *expected.entry(e.key).or_default() += e.amount;
    }
    let snapshot = engine.snapshot()?;
    let got: BTreeMap<String, i64> = snapshot
        .range(
            &counter.counts,
            Bound::Unbounded,
            Bound::Unbounded,
            usize::MAX,
        )?
        .into_iter()
        .collect();
    if got != expected {
        bail!("verification FAILED: committed counts differ from the events appended");
    }
    let groups_total: i64 = snapshot
        .range(
            &counter.group_totals,
            Bound::Unbounded,
            Bound::Unbounded,
            usize::MAX,
        )?
        .iter()
        .map(|(_, v)| v)
        .sum();
    let counts_total: i64 = got.values().sum();
    if groups_total != counts_total {
        bail!("verification FAILED: group totals ({groups_total}) != counts ({counts_total})");
    }
    let batches = snapshot.batch_id(TOPOLOGY)? - before;
    latencies_us.sort_unstable();
    let pct = |q: f64| {
        latencies_us
            .get(((latencies_us.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0)
    };
    println!("lockstep counter demo: {}", dir.display());
    println!(
        "  events        {} from {} appenders, {} per append call, {} partitions",
        args.events, args.appenders, args.append_batch, args.partitions
    );
    println!(
        "  ingest        {:.0} events/s (all durable in {:.2?})",
        args.events as f64 / appended_in.as_secs_f64(),
        appended_in
    );
    println!(
        "  processed     {:.0} events/s (all committed in {:.2?}), {} batches",
        args.events as f64 / visible_in.as_secs_f64(),
        visible_in,
        batches
    );
    println!(
        "  append call   p50 {} us, p99 {} us (until durable)",
        pct(0.5),
        pct(0.99)
    );
    println!(
        "  verified      {} keys, group totals = counts = {}",
        got.len(),
        counts_total
    );
    Ok(())
}

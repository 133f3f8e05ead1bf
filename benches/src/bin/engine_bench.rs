//! Engine benchmark: depot append throughput and end-to-end batch throughput and commit
//! latency, each measured side by side with raw RocksDB `WriteBatch` + sync writing the same
//! bytes (the ceiling on this machine). Prints medians of several runs and the ratios.

// Links the benches' library, whose allocator (jemalloc) every bench binary runs on.
use lockstep_benches as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use lockstep::{Depot, Engine, EngineOptions};
use lockstep_topologies::counter::{counter, CountEvent, TOPOLOGY};
use rocksdb::{WriteBatch, WriteOptions, DB};

#[derive(Debug, Parser)]
struct Args {
    /// Runs per configuration; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds per append run.
    #[arg(long, default_value_t = 1.5)]
    seconds: f64,
    /// Events for the end-to-end batch run.
    #[arg(long, default_value_t = 400_000)]
    events: u64,
    /// Partitions for the end-to-end run.
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Skip the depot append part.
    #[arg(long)]
    skip_append: bool,
}

/// A 100-byte record once in its envelope (5 header bytes + 1 length byte + 94 payload bytes).
#[derive(serde::Serialize, serde::Deserialize)]
struct Payload(Vec<u8>);

const PAYLOAD_BYTES: usize = 94;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn synced() -> WriteOptions {
    let mut options = WriteOptions::default();
    options.set_sync(true);
    options
}

/// Runs `threads` workers until the deadline; each call of `work` writes `batch` records.
fn run_for<F>(threads: usize, seconds: f64, batch: usize, work: F) -> anyhow::Result<f64>
where
    F: Fn(usize, u64) -> anyhow::Result<()> + Sync,
{
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let counts: Vec<anyhow::Result<u64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let work = &work;
                scope.spawn(move || {
                    let mut calls = 0u64;
                    while Instant::now() < deadline {
                        work(t, calls)?;
                        calls += 1;
                    }
                    Ok(calls * batch as u64)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("worker panicked")))
            })
            .collect()
    });
    let mut records = 0;
    for count in counts {
        records += count?;
    }
    Ok(records as f64 / started.elapsed().as_secs_f64())
}

fn engine_append(dir: &Path, threads: usize, batch: usize, seconds: f64) -> anyhow::Result<f64> {
    let depot = Depot::<Payload>::explicit("bench", 8, |_| 0)?;
    // Spread partitions by thread rather than hashing the payload.
    let depot_by_thread: Vec<Depot<Payload>> = (0..threads)
        .map(|t| Depot::<Payload>::explicit("bench", 8, move |_| (t % 8) as u32))
        .collect::<Result<_, _>>()?;
    let mut options = EngineOptions::default();
    options.append_queue_max = 1 << 14;
    let engine = Engine::builder(dir).options(options).depot(&depot).open()?;
    drop(depot);
    let records: Vec<Payload> = (0..batch)
        .map(|i| Payload(vec![(i % 251) as u8; PAYLOAD_BYTES]))
        .collect();
    let rate = run_for(threads, seconds, batch, |t, _| {
        // The same declaration as `depot` (name, partitions, limit): the engine accepts it.
        engine.append_many(&depot_by_thread[t], &records)?;
        Ok(())
    })?;
    Ok(rate)
}

/// Raw RocksDB with its defaults, but for one setting Lockstep's store also makes: freed
/// write-ahead log files are written over (4 kept), whose `fdatasync` is cheaper (measured
/// alone), so that the raw figures are not held to dearer syncs than the engine's.
fn open_raw(dir: &Path) -> anyhow::Result<DB> {
    let mut options = rocksdb::Options::default();
    options.create_if_missing(true);
    options.set_recycle_log_file_num(4);
    Ok(DB::open(&options, dir)?)
}

fn raw_append(dir: &Path, threads: usize, batch: usize, seconds: f64) -> anyhow::Result<f64> {
    let db = open_raw(dir)?;
    let value = {
        let depot = Depot::<Payload>::explicit("raw", 1, |_| 0)?;
        depot.encode(&Payload(vec![7; PAYLOAD_BYTES]))?
    };
    anyhow::ensure!(value.len() == 100, "record is {} bytes", value.len());
    run_for(threads, seconds, batch, |t, call| {
        let mut wb = WriteBatch::default();
        for i in 0..batch as u64 {
            let mut key = [0u8; 16];
            key[..8].copy_from_slice(&(t as u64).to_be_bytes());
            key[8..].copy_from_slice(&(call * batch as u64 + i).to_be_bytes());
            wb.put(key, &value);
        }
        db.write_opt(wb, &synced())?;
        Ok(())
    })
}

struct BatchRun {
    events_per_s: f64,
    batches: usize,
    commit_p50_us: u64,
    batch_p50_us: u64,
    batch_p99_us: u64,
    /// Per batch: everything but the commit write (plan, read, execute, publish).
    overhead_p50_us: u64,
    overhead_p99_us: u64,
    events: u64,
    /// Per batch: entries written and their key + value bytes, to replay as the raw ceiling.
    shapes: Vec<(u64, u64)>,
    /// Distinct keys in the final state, the key space the raw replay overwrites.
    keyspace: u64,
}

fn engine_batches(
    dir: &Path,
    args: &Args,
    records_max: usize,
    events: u64,
) -> anyhow::Result<BatchRun> {
    let counter = counter(args.partitions)?;
    let mut options = EngineOptions::manual();
    options.batch_records_max = records_max;
    let engine = Engine::builder(dir)
        .options(options)
        .depot(&counter.events)
        .topology(counter.topology.clone())
        .open()?;
    let events: Vec<CountEvent> = (0..events)
        .map(|i| CountEvent {
            key: format!("key-{}", i % 50_000),
            group: format!("group-{}", i % 64),
            amount: 1,
        })
        .collect();
    for chunk in events.chunks(1_000) {
        engine.append_many(&counter.events, chunk)?;
    }
    let started = Instant::now();
    let mut summaries = Vec::new();
    while let Some(summary) = engine.run_batch(TOPOLOGY)? {
        summaries.push(summary);
    }
    let elapsed = started.elapsed();
    let keyspace = engine.raw_state_entries()?.len() as u64;
    let mut commit: Vec<u64> = summaries.iter().map(|s| s.commit_latency_us).collect();
    let mut batch: Vec<u64> = summaries.iter().map(|s| s.batch_latency_us).collect();
    let mut overhead: Vec<u64> = summaries
        .iter()
        .map(|s| s.batch_latency_us.saturating_sub(s.commit_latency_us))
        .collect();
    commit.sort_unstable();
    batch.sort_unstable();
    overhead.sort_unstable();
    Ok(BatchRun {
        events_per_s: events.len() as f64 / elapsed.as_secs_f64(),
        events: events.len() as u64,
        overhead_p50_us: percentile(&overhead, 0.5),
        overhead_p99_us: percentile(&overhead, 0.99),
        batches: summaries.len(),
        commit_p50_us: percentile(&commit, 0.5),
        batch_p50_us: percentile(&batch, 0.5),
        batch_p99_us: percentile(&batch, 0.99),
        shapes: summaries
            .iter()
            .map(|s| (s.writes, s.write_bytes))
            .collect(),
        keyspace,
    })
}

/// Replays the engine's commits as raw synced `WriteBatch`es: per batch the same number of
/// entries and the same bytes, keys spread over the same key space (so it overwrites as the
/// engine does). Building the batch is timed, as it is in the engine's commit.
fn raw_batches(dir: &Path, run: &BatchRun) -> anyhow::Result<(f64, u64, u64)> {
    let db = open_raw(dir)?;
    let mut latencies = Vec::new();
    let started = Instant::now();
    let mut n = 0u64;
    for (writes, bytes) in &run.shapes {
        let call = Instant::now();
        let entry_bytes = (bytes / writes.max(&1)) as usize;
        let value = vec![1u8; entry_bytes.saturating_sub(16)];
        // A multiplicative hash scatters keys as the engine's partition hashing does; sorted,
        // as the engine's write sets are.
        let mut keys: Vec<[u8; 16]> = (0..*writes)
            .map(|i| {
                let slot = ((n + i) % run.keyspace.max(1)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let mut key = [0u8; 16];
                key[..8].copy_from_slice(&slot.to_be_bytes());
                key
            })
            .collect();
        n += writes;
        keys.sort_unstable();
        let mut wb = WriteBatch::default();
        for key in &keys {
            wb.put(key, &value);
        }
        db.write_opt(wb, &synced())?;
        latencies.push(call.elapsed().as_micros() as u64);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    Ok((
        run.events as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
    ))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    println!(
        "engine-bench: {} runs per row, medians; {} cores",
        args.runs,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!();
    println!("depot append, 100-byte records (records/s, durable when acknowledged)");
    println!(
        "{:>9} {:>9} {:>14} {:>14} {:>8}",
        "batch", "appenders", "lockstep", "raw rocksdb", "ratio"
    );
    let thread_counts: &[usize] = if args.skip_append { &[] } else { &[1, 8] };
    for &threads in thread_counts {
        for batch in [1usize, 100, 1000] {
            let mut engine_rates = Vec::new();
            let mut raw_rates = Vec::new();
            for _ in 0..args.runs {
                // Interleave the two systems so drift on a shared machine hits both.
                let dir = tempfile::tempdir()?;
                engine_rates.push(engine_append(dir.path(), threads, batch, args.seconds)?);
                let dir = tempfile::tempdir()?;
                raw_rates.push(raw_append(dir.path(), threads, batch, args.seconds)?);
            }
            let (engine, raw) = (median(engine_rates), median(raw_rates));
            println!(
                "{batch:>9} {threads:>9} {engine:>14.0} {raw:>14.0} {:>7.0}%",
                100.0 * engine / raw
            );
        }
    }

    println!();
    println!(
        "end to end: counter topology (1 message hop per event), {} partitions, manual batches",
        args.partitions
    );
    println!(
        "raw = synced WriteBatches with the same entries and bytes as each engine commit (the ceiling)"
    );
    println!("overhead = batch time beyond its commit write: plan + read + execute + publish");
    println!(
        "{:>8} {:>7} {:>8} {:>11} {:>11} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "cap/part",
        "events",
        "batches",
        "lockstep/s",
        "raw/s",
        "ratio",
        "commit p50",
        "raw p50",
        "ovh p50",
        "ovh p99",
        "batch p50",
        "batch p99"
    );
    for records_max in [1usize, 10, 100, 1_000, 10_000] {
        // At least ~50 batches per row, or all the events.
        let events = (records_max as u64 * u64::from(args.partitions) * 50).min(args.events);
        let mut rows = Vec::new();
        for _ in 0..args.runs {
            let dir = tempfile::tempdir()?;
            let run = engine_batches(dir.path(), &args, records_max, events)
                .context("engine batch run")?;
            let dir = tempfile::tempdir()?;
            let raw = raw_batches(dir.path(), &run)?;
            rows.push((run, raw));
        }
        rows.sort_by(|a, b| a.0.events_per_s.total_cmp(&b.0.events_per_s));
        let (run, (raw_rate, raw_p50, _raw_p99)) = &rows[rows.len() / 2];
        println!(
            "{:>8} {:>7} {:>8} {:>11.0} {:>11.0} {:>5.0}% {:>8}us {:>8}us {:>8}us {:>8}us {:>8}us {:>8}us",
            records_max,
            run.events,
            run.batches,
            run.events_per_s,
            raw_rate,
            100.0 * run.events_per_s / raw_rate,
            run.commit_p50_us,
            raw_p50,
            run.overhead_p50_us,
            run.overhead_p99_us,
            run.batch_p50_us,
            run.batch_p99_us,
        );
    }
    Ok(())
}

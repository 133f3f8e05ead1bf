//! The corruption study: one seeded, scale-free, contended graph workload run two ways, with
//! the share of corrupted edges (edges whose two records are not reciprocally consistent)
//! measured as the updates go by.
//!
//! 1. **Lockstep**: the `graph` topology on the embedded engine, every batch checked. The
//!    corrupted share must be exactly zero after every batch; the run fails otherwise, and
//!    also if the final state differs from the sequential model's.
//! 2. **Uncoordinated partitions** ([`uncoordinated`]): the same partitions applying the two
//!    halves of every update independently, in their own arrival order, for a few straggler
//!    probabilities. Measured at checkpoints once the traffic so far has settled.
//!
//! Then a two-parameter model (corruption per update, and healing as corrupted edges are
//! deleted) is fitted to each uncoordinated curve and extrapolated to a year at the same rate
//! for graphs of production sizes. See `topologies/README.md` for the method and the figures.

mod uncoordinated;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Parser;
use lockstep::{Engine, EngineOptions};
use lockstep_benches::chart::{line_chart, Series};
use lockstep_topologies::graph::invariants::{census, check, Census, GraphView};
use lockstep_topologies::graph::workload::{Workload, WorkloadConfig};
use lockstep_topologies::graph::{graph, read_view, Command, EdgeKey, Outcome, TOPOLOGY};

use uncoordinated::{NetworkConfig, Uncoordinated};

#[derive(Debug, Parser)]
struct Args {
    /// Updates (commands) in the stream.
    #[arg(long, default_value_t = 1_000_000)]
    updates: u64,
    /// Updates run through Lockstep (the start of the same stream); 0 skips Lockstep.
    #[arg(long, default_value_t = 1_000_000)]
    lockstep_updates: u64,
    /// Partitions, for both.
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Workload and network seed.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Update rate the uncoordinated model is driven at, and the extrapolation assumes.
    #[arg(long, default_value_t = 10_000.0)]
    updates_per_s: f64,
    /// Network delay of every half, in milliseconds.
    #[arg(long, default_value_t = 1.0)]
    delay_ms: f64,
    /// Straggler probabilities to run the uncoordinated model with.
    #[arg(long, value_delimiter = ',', default_values_t = [0.0, 0.001, 0.01, 0.05])]
    straggler_probabilities: Vec<f64>,
    /// Mean extra delay of a straggler, in milliseconds.
    #[arg(long, default_value_t = 10.0)]
    straggler_delay_ms: f64,
    /// Threads that run a batch's partitions in Lockstep.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Commands per Lockstep append (and so per batch, about).
    #[arg(long, default_value_t = 10_000)]
    chunk: usize,
    /// Draw the charts into this directory: `graph-corruption.png` (measured) and
    /// `graph-corruption-year.png` (extrapolated).
    #[arg(long)]
    charts: Option<PathBuf>,
}

const SECONDS_PER_YEAR: f64 = 365.0 * 24.0 * 3600.0;
/// The share of corrupted edges at which a graph is garbage (the background study's yardstick).
const GARBAGE_SHARE: f64 = 0.10;
/// The graph size the year chart extrapolates to.
const EXTRAPOLATION_CHART_EDGES: f64 = 1e9;

/// Ten checkpoints per decade of updates, from the first 100,000 (the setup, nodes then
/// edges, takes 80,000), and `last`.
fn checkpoints(last: u64) -> Vec<u64> {
    let mut points = BTreeSet::new();
    for step in 0.. {
        let mark = (100_000.0 * 10f64.powf(f64::from(step) / 10.0)).round() as u64;
        // Round to a thousand so the table reads well.
        let mark = mark / 1000 * 1000;
        if mark >= last {
            break;
        }
        points.insert(mark);
    }
    points.insert(last);
    points.into_iter().collect()
}

/// The state after some updates.
#[derive(Debug, Clone, Copy)]
struct Point {
    updates: u64,
    census: Census,
    /// Corrupted hot edges among the corrupted ones.
    hot_corrupted: usize,
}

/// Where corrupted edges are: hot edges, other edges of celebrities, ordinary edges.
#[derive(Debug, Clone, Copy, Default)]
struct Breakdown {
    hot_edges: usize,
    celebrity_edges: usize,
    ordinary_edges: usize,
}

impl Breakdown {
    fn of<'a>(edges: impl IntoIterator<Item = &'a EdgeKey>, workload: &Workload) -> Self {
        let hot: BTreeSet<&EdgeKey> = workload.hot_edges().iter().collect();
        let celebrities: BTreeSet<&String> = workload.hot_nodes().iter().collect();
        let mut counts = Self::default();
        for key in edges {
            if hot.contains(key) {
                counts.hot_edges += 1;
            } else if celebrities.contains(&key.from) || celebrities.contains(&key.to) {
                counts.celebrity_edges += 1;
            } else {
                counts.ordinary_edges += 1;
            }
        }
        counts
    }

    /// Corrupted edges outside the hot ones: these spread over the graph, one edge each.
    fn spread(&self) -> usize {
        self.celebrity_edges + self.ordinary_edges
    }
}

fn corrupted_edges(view: &GraphView) -> BTreeSet<EdgeKey> {
    check(view).into_iter().map(|v| v.edge().clone()).collect()
}

// ---- Lockstep ----

struct LockstepRun {
    points: Vec<Point>,
    batches: u64,
    checked: u64,
    engine_time: Duration,
    wall_time: Duration,
}

fn run_lockstep(args: &Args) -> anyhow::Result<LockstepRun> {
    let dir = tempfile::tempdir()?;
    let handles = graph(args.partitions)?;
    let mut options = EngineOptions::manual();
    options.batch_records_max = args.chunk;
    options.threads = args.threads;
    let engine = Engine::builder(dir.path())
        .options(options)
        .depot(&handles.commands)
        .topology(handles.topology.clone())
        .open()?;
    let mut workload = Workload::new(args.seed, WorkloadConfig::default());
    let marks = checkpoints(args.lockstep_updates);
    let mut run = LockstepRun {
        points: Vec::new(),
        batches: 0,
        checked: 0,
        engine_time: Duration::ZERO,
        wall_time: Duration::ZERO,
    };
    let started = Instant::now();
    let mut issued = 0u64;
    for &mark in &marks {
        while issued < mark {
            let take = (mark - issued).min(args.chunk as u64);
            let commands: Vec<Command> =
                (0..take).map(|_| workload.next_with_outcome().0).collect();
            let appending = Instant::now();
            engine.append_many(&handles.commands, &commands)?;
            run.engine_time += appending.elapsed();
            loop {
                let batching = Instant::now();
                let ran = engine.run_batch(TOPOLOGY)?.is_some();
                run.engine_time += batching.elapsed();
                if !ran {
                    break;
                }
                run.batches += 1;
                let snapshot = engine.snapshot()?;
                let violations = check(&read_view(&snapshot, &handles)?);
                run.checked += 1;
                ensure!(
                    violations.is_empty(),
                    "Lockstep broke reciprocal consistency at batch {}: {} violations, first {:?}",
                    run.batches,
                    violations.len(),
                    violations.first()
                );
            }
            issued += take;
        }
        let snapshot = engine.snapshot()?;
        let view = read_view(&snapshot, &handles)?;
        let point = Point {
            updates: issued,
            census: census(&view),
            hot_corrupted: 0,
        };
        ensure!(point.census.corrupted == 0, "Lockstep corrupted edges");
        eprintln!(
            "  lockstep   {:>10} updates  {:>7} edges  corrupted {}  ({:.0} s in the engine)",
            issued,
            point.census.edges,
            point.census.corrupted,
            run.engine_time.as_secs_f64()
        );
        run.points.push(point);
    }
    let snapshot = engine.snapshot()?;
    ensure!(
        read_view(&snapshot, &handles)? == workload.model().view(),
        "Lockstep's final state differs from the sequential model's"
    );
    run.wall_time = started.elapsed();
    Ok(run)
}

// ---- uncoordinated ----

struct UncoordinatedRun {
    straggler_probability: f64,
    points: Vec<Point>,
    overtaken_share: f64,
    crossing_share: f64,
    /// Where the corrupted edges are at the end.
    corrupted_at_end: Breakdown,
    /// Where edges were corrupted, once per event.
    events: Breakdown,
    edges_deleted_per_update: f64,
}

fn run_uncoordinated(args: &Args, straggler_probability: f64) -> UncoordinatedRun {
    let mut workload = Workload::new(args.seed, WorkloadConfig::default());
    let mut store = Uncoordinated::new(NetworkConfig {
        partitions: args.partitions,
        delay_s: args.delay_ms / 1e3,
        straggler_probability,
        straggler_delay_mean_s: args.straggler_delay_ms / 1e3,
        seed: args.seed ^ straggler_probability.to_bits(),
    });
    let partitions = args.partitions;
    let mut marks = checkpoints(args.updates).into_iter().peekable();
    let mut points = Vec::new();
    let mut edges_deleted = 0u64;
    for update in 1..=args.updates {
        let edges_before = workload.model().edges.len();
        let (command, outcome) = workload.next_with_outcome();
        if outcome == Outcome::Applied {
            if matches!(
                command,
                Command::DeleteEdge { .. } | Command::DeleteNode { .. }
            ) {
                edges_deleted += (edges_before - workload.model().edges.len()) as u64;
            }
            let at_s = update as f64 / args.updates_per_s;
            store.issue(at_s, &command, |node| {
                workload.community_of(node) % partitions
            });
        }
        if marks.next_if_eq(&update).is_some() {
            let settled = store.settled();
            let census = census(settled.view());
            let corrupted = corrupted_edges(settled.view());
            let point = Point {
                updates: update,
                census,
                hot_corrupted: Breakdown::of(&corrupted, &workload).hot_edges,
            };
            eprintln!(
                "  p={straggler_probability:<6} {update:>10} updates  {:>7} edges  corrupted {:>6} ({:.3}%), {} hot",
                census.edges,
                census.corrupted,
                100.0 * census.corrupted_fraction(),
                point.hot_corrupted
            );
            points.push(point);
        }
    }
    let settled = store.settled();
    UncoordinatedRun {
        straggler_probability,
        points,
        overtaken_share: store.overtaken_share(),
        crossing_share: settled.crossing_share(),
        corrupted_at_end: Breakdown::of(&corrupted_edges(settled.view()), &workload),
        events: Breakdown::of(settled.corruption_events(), &workload),
        edges_deleted_per_update: edges_deleted as f64 / args.updates as f64,
    }
}

// ---- extrapolation ----

/// The corrupted share of a graph of `edges` edges after `updates` updates, if each update
/// corrupts an edge with probability `per_update`, corrupted edges stay corrupted, and the
/// edges hit are spread over the graph: a hit on an already corrupted edge adds nothing, so
/// the share saturates, `1 − exp(−per_update · updates / edges)`.
fn extrapolate(per_update: f64, edges: f64, updates: f64) -> f64 {
    -(-per_update * updates / edges).exp_m1()
}

/// Seconds until `share` of `edges` are corrupted at `updates_per_s`, by the same model.
fn time_to(per_update: f64, edges: f64, share: f64, updates_per_s: f64) -> Option<f64> {
    (per_update > 0.0).then(|| -(edges / per_update) * (-share).ln_1p() / updates_per_s)
}

fn human_duration(seconds: f64) -> String {
    if seconds < 120.0 {
        format!("{seconds:.0} s")
    } else if seconds < 2.0 * 3600.0 {
        format!("{:.0} min", seconds / 60.0)
    } else if seconds < 2.0 * 86_400.0 {
        format!("{:.1} h", seconds / 3600.0)
    } else if seconds < 2.0 * SECONDS_PER_YEAR / 12.0 {
        format!("{:.0} days", seconds / 86_400.0)
    } else {
        format!("{:.1} months", seconds / (SECONDS_PER_YEAR / 12.0))
    }
}

fn percent(share: f64) -> String {
    format!("{:.3}%", 100.0 * share)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.partitions > 0, "--partitions must be at least 1");
    ensure!(args.updates > 0, "--updates must be at least 1");
    ensure!(
        args.lockstep_updates <= args.updates,
        "--lockstep-updates cannot exceed --updates"
    );
    let config = WorkloadConfig::default();
    println!(
        "graph-corruption: {} updates, {} partitions, seed {}; workload {:?}",
        args.updates, args.partitions, args.seed, config
    );

    let lockstep = if args.lockstep_updates > 0 {
        eprintln!("Lockstep:");
        Some(run_lockstep(&args).context("Lockstep run")?)
    } else {
        None
    };

    let mut runs = Vec::new();
    for &p in &args.straggler_probabilities {
        ensure!(
            (0.0..=1.0).contains(&p),
            "straggler probability {p} is not in [0, 1]"
        );
        eprintln!("uncoordinated, straggler probability {p}:");
        runs.push(run_uncoordinated(&args, p));
    }

    println!();
    println!("## Corrupted edges (share of all edges) against updates");
    println!();
    let mut header = String::from("| updates | edges |");
    let mut rule = String::from("|---:|---:|");
    if lockstep.is_some() {
        header.push_str(" Lockstep |");
        rule.push_str("---:|");
    }
    for run in &runs {
        header.push_str(&format!(
            " uncoordinated, p = {} |",
            percent(run.straggler_probability).trim_end_matches('0')
        ));
        rule.push_str("---:|");
    }
    println!("{header}");
    println!("{rule}");
    for mark in checkpoints(args.updates) {
        let in_run = |points: &[Point]| points.iter().find(|p| p.updates == mark).copied();
        let edges = runs
            .first()
            .and_then(|r| in_run(&r.points))
            .map_or(0, |p| p.census.edges);
        let mut row = format!("| {mark} | {edges} |");
        if let Some(lockstep) = &lockstep {
            match in_run(&lockstep.points) {
                Some(point) => row.push_str(&format!(" {} |", point.census.corrupted)),
                None => row.push_str(" |"),
            }
        }
        for run in &runs {
            match in_run(&run.points) {
                Some(point) => row.push_str(&format!(
                    " {} ({}) |",
                    point.census.corrupted,
                    percent(point.census.corrupted_fraction())
                )),
                None => row.push_str(" |"),
            }
        }
        println!("{row}");
    }

    if let Some(run) = &lockstep {
        let updates = run.points.last().map_or(0, |p| p.updates);
        println!();
        println!(
            "Lockstep: {updates} updates in {} batches, reciprocal consistency checked after every one ({} checks): 0 corrupted edges, final state equal to the sequential model's; {:.0} updates/s in the engine, {:.1} s with the checks",
            run.batches,
            run.checked,
            updates as f64 / run.engine_time.as_secs_f64().max(1e-9),
            run.wall_time.as_secs_f64()
        );
    }

    println!();
    println!("## Uncoordinated runs");
    println!();
    let hot_edges = WorkloadConfig::default().hot_edges as f64;
    println!("| straggler probability | halves overtaken | edges crossing partitions | edges deleted per update | hot edges corrupted, mean over checkpoints | corruption events: hot / celebrity / ordinary | corrupted at the end: hot / celebrity / ordinary |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for run in &runs {
        let hot_mean = run
            .points
            .iter()
            .map(|p| p.hot_corrupted as f64)
            .sum::<f64>()
            / run.points.len().max(1) as f64;
        println!(
            "| {} | {} | {} | {:.3} | {} | {} / {} / {} | {} / {} / {} |",
            percent(run.straggler_probability),
            percent(run.overtaken_share),
            percent(run.crossing_share),
            run.edges_deleted_per_update,
            percent(hot_mean / hot_edges),
            run.events.hot_edges,
            run.events.celebrity_edges,
            run.events.ordinary_edges,
            run.corrupted_at_end.hot_edges,
            run.corrupted_at_end.celebrity_edges,
            run.corrupted_at_end.ordinary_edges
        );
    }

    let year_updates = args.updates_per_s * SECONDS_PER_YEAR;
    let sizes = [1e8, 1e9, 1e10];
    println!();
    println!(
        "## Extrapolation to one year at {} updates/s ({year_updates:.3e} updates), no repair",
        args.updates_per_s
    );
    println!();
    let mut header =
        String::from("| straggler probability | edges corrupted per update (events seen) |");
    let mut rule = String::from("|---:|---:|");
    for edges in sizes {
        header.push_str(&format!(
            " {edges:.0e} edges: after a year | {edges:.0e} edges: 10% after |"
        ));
        rule.push_str("---:|---:|");
    }
    println!("{header}");
    println!("{rule}");
    for run in &runs {
        // Hot edges are a handful whatever the graph's size: only the spread events scale.
        let events = run.events.spread();
        // With no event seen, the rate is below 3 / updates (95% confidence, Poisson), and the
        // row gives the bound.
        let (per_update, below) = if events == 0 {
            (3.0 / args.updates as f64, "< ")
        } else {
            (events as f64 / args.updates as f64, "")
        };
        let above = if below.is_empty() { "" } else { "> " };
        let mut row = format!(
            "| {} | {below}{per_update:.2e} ({events} events) |",
            percent(run.straggler_probability)
        );
        for edges in sizes {
            let after_year = extrapolate(per_update, edges, year_updates);
            let garbage = time_to(per_update, edges, GARBAGE_SHARE, args.updates_per_s)
                .map_or_else(|| "never".to_string(), human_duration);
            row.push_str(&format!(
                " {below}{} | {above}{garbage} |",
                percent(after_year)
            ));
        }
        println!("{row}");
    }

    if let Some(dir) = &args.charts {
        draw_charts(dir, &args, lockstep.as_ref(), &runs)?;
    }
    Ok(())
}

fn run_label(run: &UncoordinatedRun) -> String {
    format!(
        "uncoordinated, {}% stragglers",
        100.0 * run.straggler_probability
    )
}

fn draw_charts(
    dir: &Path,
    args: &Args,
    lockstep: Option<&LockstepRun>,
    runs: &[UncoordinatedRun],
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let share = |points: &[Point]| -> Vec<(f64, f64)> {
        points
            .iter()
            .map(|p| (p.updates as f64, 100.0 * p.census.corrupted_fraction()))
            .collect()
    };
    let mut series: Vec<Series> = runs
        .iter()
        .map(|run| Series {
            label: run_label(run),
            points: share(&run.points),
        })
        .collect();
    if let Some(lockstep) = lockstep {
        series.push(Series {
            label: "Lockstep".to_string(),
            points: share(&lockstep.points),
        });
    }
    let measured = dir.join("graph-corruption.png");
    line_chart(
        &measured,
        &format!(
            "Corrupted edges, {} partitions, {:.0} updates/s",
            args.partitions, args.updates_per_s
        ),
        "updates",
        "corrupted edges (% of all edges)",
        &series,
        true,
        false,
    )?;

    let edges = EXTRAPOLATION_CHART_EDGES;
    let days = 365;
    // Runs that saw no spread corruption have only a bound, which is not a curve to draw.
    let series: Vec<Series> = runs
        .iter()
        .filter(|run| run.events.spread() > 0)
        .map(|run| {
            let per_update = run.events.spread() as f64 / args.updates as f64;
            Series {
                label: run_label(run),
                points: (0..=days)
                    .step_by(5)
                    .map(|day| {
                        let updates = f64::from(day) * 86_400.0 * args.updates_per_s;
                        (
                            f64::from(day),
                            100.0 * extrapolate(per_update, edges, updates),
                        )
                    })
                    .collect(),
            }
        })
        .collect();
    println!();
    println!("chart: {}", measured.display());
    if series.is_empty() {
        println!("no extrapolation chart: no run saw an edge outside the hot ones corrupted");
        return Ok(());
    }
    let year = dir.join("graph-corruption-year.png");
    line_chart(
        &year,
        &format!(
            "Extrapolated: {edges:.0e} edges at {:.0} updates/s, no repair",
            args.updates_per_s
        ),
        "days",
        "corrupted edges (% of all edges)",
        &series,
        false,
        false,
    )?;
    println!("chart: {}", year.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_rise_ten_per_decade_and_end_at_the_last_update() {
        let marks = checkpoints(1_000_000);
        assert_eq!(marks.first(), Some(&100_000));
        assert_eq!(marks.last(), Some(&1_000_000));
        assert_eq!(marks.len(), 11);
        assert!(marks.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(checkpoints(5_000), vec![5_000]);
    }

    #[test]
    fn the_extrapolation_starts_linear_saturates_and_inverts() {
        // Few hits on a big graph: about one edge per hit.
        let share = extrapolate(1e-6, 1e9, 1e9);
        assert!((share - 1e-6).abs() < 1e-9, "{share}");
        // Many hits: the share approaches, never passes, all edges.
        assert!(extrapolate(1e-3, 1e3, 1e9) <= 1.0);
        assert!(extrapolate(1e-3, 1e3, 1e9) > 0.999);
        let seconds = time_to(1e-5, 1e9, 0.1, 1e4).expect("reached");
        let share = extrapolate(1e-5, 1e9, seconds * 1e4);
        assert!((share - 0.1).abs() < 1e-9, "{share}");
        assert_eq!(time_to(0.0, 1e9, 0.1, 1e4), None);
    }
}

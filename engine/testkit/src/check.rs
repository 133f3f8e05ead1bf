//! Running seeds from a test, chosen by the environment.

use crate::{SimConfig, SimSummary, SimTarget, Simulation};

/// Runs the seeds the environment asks for, or `default_seeds` seeds from 0, and panics with
/// the failure report (seed and shortest trace) on the first failure.
///
/// - `LOCKSTEP_SIM_SEED=n` runs seed `n` alone (to reproduce a failure);
/// - `LOCKSTEP_SIM_SEEDS=count` runs `count` seeds, from `LOCKSTEP_SIM_SEED_START` (default 0);
/// - `LOCKSTEP_SIM_STEPS=n` overrides the steps per seed.
///
/// # Panics
/// On a failing seed, or on an environment variable that is not a number.
pub fn check_seeds<T: SimTarget>(
    target: &T,
    mut config: SimConfig,
    default_seeds: u64,
) -> SimSummary {
    let number = |name: &str| -> Option<u64> {
        std::env::var(name).ok().map(|value| {
            value
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name}={value:?} is not a number"))
        })
    };
    if let Some(steps) = number("LOCKSTEP_SIM_STEPS") {
        config.steps = usize::try_from(steps).unwrap_or(usize::MAX);
    }
    let seeds = match number("LOCKSTEP_SIM_SEED") {
        Some(seed) => seed..seed.saturating_add(1),
        None => {
            let start = number("LOCKSTEP_SIM_SEED_START").unwrap_or(0);
            let count = number("LOCKSTEP_SIM_SEEDS").unwrap_or(default_seeds);
            start..start.saturating_add(count)
        }
    };
    let range = format!("{}..{}", seeds.start, seeds.end);
    match Simulation::new(target, config).run_seeds(seeds) {
        Ok(summary) => {
            eprintln!(
                "simulation of {:?}, seeds {range}: {summary}",
                target.topology()
            );
            summary
        }
        Err(failure) => panic!("{failure}"),
    }
}

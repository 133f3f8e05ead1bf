//! The simulation: a seeded scheduler that generates steps, an executor that runs them against
//! a real engine and checks everything after each one, and a shrinker for failing traces.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use lockstep::{
    DepotRetention, DurableWrite, Engine, EngineOptions, Error, LoggedRecord, RecordId,
    StorageFaults, WriteFault,
};
use rand::{Rng, SeedableRng};

use crate::{SimRng, SimTarget};

/// How a simulation schedules its steps. Weights are relative: a step is an append with
/// probability `append_weight / (sum of weights)`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SimConfig {
    /// Steps per seed (before the final drain).
    pub steps: usize,
    /// Simulated clients, each an idempotent producer with its own queue of calls.
    pub clients: u32,
    /// Most commands in one append call (at least 1).
    pub call_commands_max: usize,
    /// Weight of "a client appends".
    pub append_weight: u32,
    /// Weight of "run one batch" (execute and commit).
    pub batch_weight: u32,
    /// Weight of "execute the next batch over the held one, commit the held one, hold the
    /// new one": the automatic driver's pipelining, a step at a time.
    pub execute_weight: u32,
    /// Weight of "commit the held batch".
    pub commit_held_weight: u32,
    /// Weight of "the process dies and restarts".
    pub restart_weight: u32,
    /// Weight of "the next durable write of some kind fails".
    pub fault_weight: u32,
    /// Weight of "the appender's maintenance runs" ([`Engine::run_maintenance`]: the trims
    /// and producer expiry an idle engine writes by itself, which manual mode leaves to
    /// calls).
    pub maintain_weight: u32,
    /// Time the shrinker may spend on a failing trace.
    pub shrink_time_max: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            steps: 120,
            clients: 4,
            call_commands_max: 3,
            append_weight: 50,
            batch_weight: 16,
            execute_weight: 16,
            commit_held_weight: 8,
            restart_weight: 4,
            fault_weight: 6,
            maintain_weight: 4,
            shrink_time_max: Duration::from_secs(60),
        }
    }
}

/// The engine options a simulated process opens with. Small, varied caps cut batches at
/// arbitrary places.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimEngineOptions {
    /// [`EngineOptions::batch_records_max`].
    pub batch_records_max: usize,
    /// [`EngineOptions::batch_bytes_max`].
    pub batch_bytes_max: usize,
    /// [`EngineOptions::threads`].
    pub threads: usize,
    /// [`EngineOptions::state_cache_bytes_max`].
    pub state_cache_bytes_max: usize,
    /// [`EngineOptions::depot_retention`].
    pub depot_retention: Option<DepotRetention>,
}

impl SimEngineOptions {
    fn draw(rng: &mut SimRng) -> Self {
        const RECORDS: [usize; 6] = [1, 2, 3, 5, 8, 10_000];
        const BYTES: [usize; 4] = [1, 64, 256, 8 << 20];
        // None, one that evicts all the time, and one that holds everything.
        const CACHE_BYTES: [usize; 3] = [0, 1 << 10, 64 << 20];
        Self {
            batch_records_max: RECORDS[rng.gen_range(0..RECORDS.len())],
            batch_bytes_max: BYTES[rng.gen_range(0..BYTES.len())],
            threads: rng.gen_range(1..=2),
            state_cache_bytes_max: CACHE_BYTES[rng.gen_range(0..CACHE_BYTES.len())],
            // Off, or trims of a few records at a time, so that they happen in short runs.
            depot_retention: rng.gen_bool(0.5).then(|| {
                let mut retention = DepotRetention::default();
                retention.keep_records_min = rng.gen_range(0..4);
                retention.trim_step_records = rng.gen_range(1..4);
                retention
            }),
        }
    }

    fn engine_options(&self, faults: &StorageFaults) -> EngineOptions {
        let mut options = EngineOptions::manual();
        options.batch_records_max = self.batch_records_max;
        options.batch_bytes_max = self.batch_bytes_max;
        options.threads = self.threads;
        options.state_cache_bytes_max = self.state_cache_bytes_max;
        options.depot_retention = self.depot_retention;
        options.storage_faults = Some(faults.clone());
        options
    }
}

impl Default for SimEngineOptions {
    fn default() -> Self {
        Self {
            batch_records_max: 10_000,
            batch_bytes_max: 8 << 20,
            threads: 1,
            state_cache_bytes_max: 64 << 20,
            depot_retention: None,
        }
    }
}

/// One step of a simulated run.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Step<C> {
    /// `client` queues `commands` as one append call, then sends its oldest unacknowledged
    /// call (a retry, with the same producer sequence, if that call failed before).
    Append {
        /// The client.
        client: u32,
        /// The commands of the new call.
        commands: Vec<C>,
    },
    /// One batch runs (a held batch commits first).
    RunBatch,
    /// The next batch executes over the held one's writes; the held one commits; the new one
    /// is held ([`Engine::execute_batch`]).
    ExecuteBatch,
    /// The held batch commits ([`Engine::commit_held_batch`]).
    CommitHeld,
    /// The next durable write of kind `write` fails with `fault`.
    Fault {
        /// Which write.
        write: DurableWrite,
        /// How it fails.
        fault: WriteFault,
    },
    /// The appender's maintenance runs ([`Engine::run_maintenance`]).
    Maintain,
    /// The process dies between two steps and restarts with `options` (armed faults die with
    /// it).
    Restart {
        /// The options it restarts with.
        options: SimEngineOptions,
    },
}

/// A replayable run: the options of the first open and every step.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace<C> {
    /// The options the engine first opens with.
    pub initial: SimEngineOptions,
    /// The steps, in order.
    pub steps: Vec<Step<C>>,
}

impl<C: fmt::Debug> fmt::Display for Trace<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "    open {:?}", self.initial)?;
        for (i, step) in self.steps.iter().enumerate() {
            writeln!(f, "    {i:>4}: {step:?}")?;
        }
        Ok(())
    }
}

/// A failed simulation: what broke, where, and the shortest trace that still breaks it.
#[derive(Debug, Clone)]
pub struct SimFailure<C> {
    /// The seed of the failing run (`None` for a replayed trace).
    pub seed: Option<u64>,
    /// The first problem found.
    pub message: String,
    /// The step after which it was found (`steps.len()` for the final drain).
    pub step: usize,
    /// Steps in the original run.
    pub original_steps: usize,
    /// The shortest failing trace found.
    pub trace: Trace<C>,
    /// The problem the shortest trace reports (it may differ from the original's).
    pub shrunk_message: String,
}

impl<C: fmt::Debug> fmt::Display for SimFailure<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.seed {
            Some(seed) => writeln!(f, "simulation failed: seed {seed}")?,
            None => writeln!(f, "simulation failed replaying a trace")?,
        }
        writeln!(f, "  after step {}: {}", self.step, self.message)?;
        if let Some(seed) = self.seed {
            writeln!(
                f,
                "  reproduce: LOCKSTEP_SIM_SEED={seed} (with the same test)"
            )?;
        }
        writeln!(
            f,
            "  shortest failing trace: {} of {} steps, failing with: {}",
            self.trace.steps.len(),
            self.original_steps,
            self.shrunk_message
        )?;
        write!(f, "{}", self.trace)
    }
}

impl<C: fmt::Debug> std::error::Error for SimFailure<C> {}

/// Totals over the seeds run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SimSummary {
    /// Seeds run.
    pub seeds: u64,
    /// Steps executed (drains included).
    pub steps: u64,
    /// Append calls acknowledged.
    pub appends_acknowledged: u64,
    /// Append calls refused or failed (retried later).
    pub appends_failed: u64,
    /// Batches committed.
    pub batches: u64,
    /// Process restarts.
    pub restarts: u64,
    /// Injected faults that fired.
    pub faults_fired: u64,
    /// Records processed and checked against the model.
    pub records_checked: u64,
    /// Records retention had deleted by the end of each seed.
    pub records_trimmed: u64,
    /// Outcomes checked against the model and later found deleted by retention with their
    /// records (or deleted before the first check could read them).
    pub outcomes_trimmed: u64,
}

impl SimSummary {
    fn add(&mut self, other: &SimSummary) {
        self.seeds += other.seeds;
        self.steps += other.steps;
        self.appends_acknowledged += other.appends_acknowledged;
        self.appends_failed += other.appends_failed;
        self.batches += other.batches;
        self.restarts += other.restarts;
        self.faults_fired += other.faults_fired;
        self.records_checked += other.records_checked;
        self.outcomes_trimmed += other.outcomes_trimmed;
        self.records_trimmed += other.records_trimmed;
    }
}

impl fmt::Display for SimSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} seeds, {} steps: {} appends acknowledged, {} failed and retried, {} batches, \
             {} restarts, {} faults fired, {} records checked against the model, {} trimmed \
             ({} outcomes seen deleted with them)",
            self.seeds,
            self.steps,
            self.appends_acknowledged,
            self.appends_failed,
            self.batches,
            self.restarts,
            self.faults_fired,
            self.records_checked,
            self.records_trimmed,
            self.outcomes_trimmed
        )
    }
}

/// Runs seeded simulations of one target.
#[derive(Debug)]
pub struct Simulation<'t, T> {
    target: &'t T,
    config: SimConfig,
}

impl<'t, T: SimTarget> Simulation<'t, T> {
    /// A simulation of `target` scheduled by `config`.
    pub fn new(target: &'t T, config: SimConfig) -> Self {
        Self { target, config }
    }

    /// Runs every seed in `seeds`; stops at the first failure, shrunk.
    pub fn run_seeds(&self, seeds: Range<u64>) -> Result<SimSummary, Box<SimFailure<T::Command>>> {
        let mut summary = SimSummary::default();
        for seed in seeds {
            summary.add(&self.run_seed(seed)?);
        }
        Ok(summary)
    }

    /// Runs one seed: generates and executes its steps, then drains (restarts without faults,
    /// retries every unacknowledged call, runs batches until idle) and checks once more.
    pub fn run_seed(&self, seed: u64) -> Result<SimSummary, Box<SimFailure<T::Command>>> {
        let mut rng = SimRng::seed_from_u64(seed);
        let initial = SimEngineOptions::draw(&mut rng);
        let mut trace = Trace {
            initial,
            steps: Vec::new(),
        };
        let fail = |trace: Trace<T::Command>, step: usize, message: String| {
            let original_steps = trace.steps.len();
            let (trace, shrunk_message) = self.shrink(trace, message.clone());
            Box::new(SimFailure {
                seed: Some(seed),
                message,
                step,
                original_steps,
                trace,
                shrunk_message,
            })
        };
        let mut run = match Execution::start(self.target, &self.config, initial) {
            Ok(run) => run,
            Err(message) => return Err(fail(trace, 0, message)),
        };
        for index in 0..self.config.steps {
            let step = self.draw_step(&mut rng, &run);
            trace.steps.push(step.clone());
            if let Err(message) = run.step(&step).and_then(|()| run.check()) {
                return Err(fail(trace, index, message));
            }
        }
        if let Err(message) = run.drain() {
            let steps = trace.steps.len();
            return Err(fail(trace, steps, message));
        }
        let mut summary = run.summary;
        summary.seeds = 1;
        Ok(summary)
    }

    /// Executes `trace` and drains, as a seed's run would.
    pub fn replay(
        &self,
        trace: &Trace<T::Command>,
    ) -> Result<SimSummary, Box<SimFailure<T::Command>>> {
        match execute(self.target, &self.config, trace) {
            Ok(summary) => Ok(summary),
            Err((step, message)) => Err(Box::new(SimFailure {
                seed: None,
                message: message.clone(),
                step,
                original_steps: trace.steps.len(),
                trace: trace.clone(),
                shrunk_message: message,
            })),
        }
    }

    fn draw_step(&self, rng: &mut SimRng, run: &Execution<'_, T>) -> Step<T::Command> {
        let config = &self.config;
        // A poisoned process gets restarted soon, as an operator (or supervisor) would.
        if run.poisoned() && rng.gen_bool(0.5) {
            return Step::Restart {
                options: SimEngineOptions::draw(rng),
            };
        }
        let weights = [
            config.append_weight,
            config.batch_weight,
            config.restart_weight,
            config.fault_weight,
            config.execute_weight,
            config.commit_held_weight,
            config.maintain_weight,
        ];
        let total: u32 = weights.iter().sum();
        let mut pick = rng.gen_range(0..total.max(1));
        let mut kind = 0;
        while kind < weights.len() - 1 && pick >= weights[kind] {
            pick -= weights[kind];
            kind += 1;
        }
        match kind {
            0 => {
                let client = rng.gen_range(0..config.clients.max(1));
                let count = rng.gen_range(1..=config.call_commands_max.max(1));
                let commands = (0..count)
                    .map(|_| self.target.generate(rng, client, &run.model))
                    .collect();
                Step::Append { client, commands }
            }
            1 => Step::RunBatch,
            2 => Step::Restart {
                options: SimEngineOptions::draw(rng),
            },
            4 => Step::ExecuteBatch,
            5 => Step::CommitHeld,
            6 => Step::Maintain,
            _ => Step::Fault {
                write: if rng.gen_bool(0.5) {
                    DurableWrite::Append
                } else {
                    DurableWrite::Commit
                },
                fault: if rng.gen_bool(0.5) {
                    WriteFault::NotWritten
                } else {
                    WriteFault::WrittenButFailed
                },
            },
        }
    }

    /// Greedily removes chunks of steps (halves, then quarters, ... then single steps), then
    /// single commands, keeping every removal after which the trace still fails.
    fn shrink(
        &self,
        mut trace: Trace<T::Command>,
        mut message: String,
    ) -> (Trace<T::Command>, String) {
        let deadline = Instant::now() + self.config.shrink_time_max;
        let fails = |candidate: &Trace<T::Command>| -> Option<String> {
            execute(self.target, &self.config, candidate)
                .err()
                .map(|(_, message)| message)
        };
        let mut chunk = trace.steps.len().div_ceil(2).max(1);
        loop {
            let mut start = 0;
            while start < trace.steps.len() {
                if Instant::now() >= deadline {
                    return (trace, message);
                }
                let mut candidate = trace.clone();
                let end = (start + chunk).min(candidate.steps.len());
                candidate.steps.drain(start..end);
                match fails(&candidate) {
                    Some(found) => {
                        trace = candidate;
                        message = found;
                    }
                    None => start += chunk,
                }
            }
            if chunk == 1 {
                break;
            }
            chunk = chunk.div_ceil(2);
        }
        for index in 0..trace.steps.len() {
            let mut command = 0;
            while let Step::Append { commands, .. } = &trace.steps[index] {
                if command >= commands.len() || commands.len() == 1 {
                    break;
                }
                if Instant::now() >= deadline {
                    return (trace, message);
                }
                let mut candidate = trace.clone();
                if let Step::Append { commands, .. } = &mut candidate.steps[index] {
                    commands.remove(command);
                }
                match fails(&candidate) {
                    Some(found) => {
                        trace = candidate;
                        message = found;
                    }
                    None => command += 1,
                }
            }
        }
        (trace, message)
    }
}

/// Executes a whole trace and its drain: `Err((step, problem))` at the first problem.
fn execute<T: SimTarget>(
    target: &T,
    config: &SimConfig,
    trace: &Trace<T::Command>,
) -> Result<SimSummary, (usize, String)> {
    let mut run = Execution::start(target, config, trace.initial).map_err(|m| (0, m))?;
    for (index, step) in trace.steps.iter().enumerate() {
        run.step(step)
            .and_then(|()| run.check())
            .map_err(|m| (index, m))?;
    }
    run.drain().map_err(|m| (trace.steps.len(), m))?;
    let mut summary = run.summary;
    summary.seeds = 1;
    Ok(summary)
}

/// Where simulated data directories go: `LOCKSTEP_SIM_DIR`, else `/dev/shm` (memory: fsync
/// is free, and the protocol does not depend on its cost), else the system's temp directory.
fn sim_dir_parent() -> PathBuf {
    if let Some(dir) = std::env::var_os("LOCKSTEP_SIM_DIR") {
        return PathBuf::from(dir);
    }
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    }
}

#[derive(Debug)]
struct Call<C> {
    sequence: u64,
    commands: Vec<C>,
    /// Sent at least once without an acknowledgment: it may or may not be durable.
    in_doubt: bool,
}

#[derive(Debug)]
struct Client<C> {
    producer: u64,
    next_sequence: u64,
    outbox: VecDeque<Call<C>>,
}

/// One simulated run in progress: the engine, the clients, and what has been checked so far.
struct Execution<'t, T: SimTarget> {
    target: &'t T,
    dir: tempfile::TempDir,
    engine: Option<Engine>,
    faults: StorageFaults,
    /// Faults fired in this process: a poisoned engine without one is a bug.
    faults_fired_here: u64,
    clients: Vec<Client<T::Command>>,
    model: T::Model,
    /// Every acknowledged record: where the engine said it is, and what it is.
    acknowledged: BTreeMap<RecordId, T::Command>,
    /// Records fed to the model, and the sequence number of the last one.
    applied: BTreeSet<RecordId>,
    applied_seq_last: Option<u64>,
    /// The outcomes read for applied records: each must read the same at every later check,
    /// until retention deletes it with its record; then it must read as trimmed.
    outcomes: BTreeMap<RecordId, T::Outcome>,
    /// Records whose outcome was seen deleted: it must stay so.
    outcomes_deleted: BTreeSet<RecordId>,
    /// The last committed batch id seen: it never goes back, through any crash.
    batch_id_seen: u64,
    /// Whether any process of this run had depot retention on: if none did, nothing may be
    /// trimmed.
    retention_seen: bool,
    summary: SimSummary,
}

impl<'t, T: SimTarget> Execution<'t, T> {
    fn start(target: &'t T, config: &SimConfig, options: SimEngineOptions) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("lockstep-sim-")
            .tempdir_in(sim_dir_parent())
            .map_err(|e| format!("cannot create a data directory: {e}"))?;
        let clients = (0..config.clients.max(1))
            .map(|client| Client {
                producer: u64::from(client) + 1,
                next_sequence: 1,
                outbox: VecDeque::new(),
            })
            .collect();
        let mut run = Self {
            target,
            dir,
            engine: None,
            faults: StorageFaults::new(),
            faults_fired_here: 0,
            clients,
            model: target.new_model(),
            acknowledged: BTreeMap::new(),
            applied: BTreeSet::new(),
            applied_seq_last: None,
            outcomes: BTreeMap::new(),
            outcomes_deleted: BTreeSet::new(),
            batch_id_seen: 0,
            retention_seen: false,
            summary: SimSummary::default(),
        };
        run.open(options)?;
        Ok(run)
    }

    fn open(&mut self, options: SimEngineOptions) -> Result<(), String> {
        self.faults = StorageFaults::new();
        self.retention_seen |= options.depot_retention.is_some();
        let builder =
            Engine::builder(self.dir.path()).options(options.engine_options(&self.faults));
        let engine = self
            .target
            .declare(builder)
            .open()
            .map_err(|e| format!("reopen failed: {e}"))?;
        self.engine = Some(engine);
        Ok(())
    }

    fn engine(&self) -> Result<&Engine, String> {
        self.engine
            .as_ref()
            .ok_or_else(|| "no engine is open".to_string())
    }

    fn poisoned(&self) -> bool {
        self.engine.as_ref().is_some_and(|e| e.poisoned().is_some())
    }

    fn step(&mut self, step: &Step<T::Command>) -> Result<(), String> {
        self.summary.steps += 1;
        match step {
            Step::Append { client, commands } => {
                let Some(state) = self.clients.get_mut(*client as usize) else {
                    return Err(format!("no client {client}"));
                };
                let sequence = state.next_sequence;
                state.next_sequence += 1;
                state.outbox.push_back(Call {
                    sequence,
                    commands: commands.clone(),
                    in_doubt: false,
                });
                self.send(*client as usize)
            }
            Step::RunBatch => {
                self.batch_step(|engine, topology| engine.run_batch(topology).map(|_| ()))
            }
            Step::ExecuteBatch => {
                self.batch_step(|engine, topology| engine.execute_batch(topology).map(|_| ()))
            }
            Step::CommitHeld => {
                self.batch_step(|engine, topology| engine.commit_held_batch(topology).map(|_| ()))
            }
            Step::Fault { write, fault } => {
                self.faults.fail_next(*write, *fault);
                Ok(())
            }
            Step::Maintain => self.maintain(),
            Step::Restart { options } => self.restart(*options),
        }
    }

    /// Runs the appender's maintenance: a poisoned engine must refuse it (and so write
    /// nothing); a failed write poisons, as an injected fault may make it.
    fn maintain(&mut self) -> Result<(), String> {
        let was_poisoned = self.poisoned();
        match self.engine()?.run_maintenance() {
            Ok(()) if was_poisoned => Err("a poisoned engine ran its maintenance".to_string()),
            Ok(()) => Ok(()),
            Err(Error::Poisoned { .. }) => {
                self.note_faults();
                Ok(())
            }
            Err(e) => Err(format!("maintenance failed: {e}")),
        }
    }

    /// Runs one of the batch steps. Whatever it commits (a held batch, a new one) is counted
    /// by the committed batch id; a poisoned engine must commit nothing.
    fn batch_step(
        &mut self,
        run: impl FnOnce(&Engine, &str) -> Result<(), Error>,
    ) -> Result<(), String> {
        let topology = self.target.topology();
        let was_poisoned = self.poisoned();
        let engine = self.engine()?;
        let committed_before = committed_batch_id(engine, topology)?;
        let result = run(engine, topology);
        let committed = committed_batch_id(engine, topology)?.saturating_sub(committed_before);
        if was_poisoned && committed > 0 {
            return Err("a poisoned engine committed a batch".to_string());
        }
        self.summary.batches += committed;
        match result {
            Ok(()) => Ok(()),
            Err(Error::Poisoned { .. }) => {
                self.note_faults();
                Ok(())
            }
            Err(e) => Err(format!("batch failed: {e}")),
        }
    }

    fn restart(&mut self, options: SimEngineOptions) -> Result<(), String> {
        self.note_faults();
        // Every step runs to completion, so no write is in flight: closing now leaves the disk
        // exactly as a kill -9 here would (every write the engine makes is synced). A batch
        // held by `execute_batch` was never written, and closing discards it, as a crash
        // loses it.
        if let Some(engine) = self.engine.take() {
            engine.close();
        }
        self.summary.restarts += 1;
        self.faults_fired_here = 0;
        self.open(options)
    }

    fn note_faults(&mut self) {
        let fired = self.faults.injected();
        self.summary.faults_fired += fired.saturating_sub(self.faults_fired_here);
        self.faults_fired_here = fired;
    }

    /// Sends `client`'s oldest unacknowledged call.
    fn send(&mut self, client: usize) -> Result<(), String> {
        let engine = self
            .engine
            .as_ref()
            .ok_or_else(|| "no engine is open".to_string())?;
        let state = &mut self.clients[client];
        let Some(call) = state.outbox.front_mut() else {
            return Ok(());
        };
        // A call to an engine already poisoned must write nothing, so it cannot be in doubt:
        // a record of it found on disk later is a write after poisoning (I6).
        let poisoned_before = engine.poisoned().is_some();
        let result = engine.append_many_idempotent(
            self.target.depot(),
            &call.commands,
            state.producer,
            call.sequence,
        );
        match result {
            Ok(ids) => {
                if ids.len() != call.commands.len() {
                    return Err(format!(
                        "client {client} call {}: {} commands acknowledged with {} positions",
                        call.sequence,
                        call.commands.len(),
                        ids.len()
                    ));
                }
                for (id, command) in ids.iter().zip(&call.commands) {
                    let partition = self
                        .target
                        .depot()
                        .partition_of(command)
                        .map_err(|e| format!("command does not route: {e}"))?;
                    if id.partition != partition {
                        return Err(format!(
                            "{command:?} acknowledged on partition {}, routes to {partition}",
                            id.partition
                        ));
                    }
                    if self.acknowledged.insert(*id, command.clone()).is_some() {
                        return Err(format!(
                            "client {client} call {}: position {id:?} acknowledged twice",
                            call.sequence
                        ));
                    }
                }
                state.outbox.pop_front();
                self.summary.appends_acknowledged += 1;
                Ok(())
            }
            Err(Error::Poisoned { .. }) => {
                call.in_doubt |= !poisoned_before;
                self.summary.appends_failed += 1;
                Ok(())
            }
            Err(e) => Err(format!(
                "client {client} call {}: unexpected append error: {e}",
                call.sequence
            )),
        }
    }

    /// Everything that must hold between any two steps.
    fn check(&mut self) -> Result<(), String> {
        self.note_faults();
        let engine = self
            .engine
            .as_ref()
            .ok_or_else(|| "no engine is open".to_string())?;
        if let Some(reason) = engine.poisoned() {
            if self.faults_fired_here == 0 {
                return Err(format!("poisoned without an injected fault: {reason}"));
            }
            // A poisoned engine refuses writes and still serves reads; what it serves is
            // compared with the model after the restart (a commit whose sync failed may be
            // durable, and visible, without having been published).
            engine
                .snapshot()
                .map_err(|e| format!("a poisoned engine refused a snapshot: {e}"))?;
            return match engine.append_many(self.target.depot(), &[]) {
                Err(Error::Poisoned { .. }) => Ok(()),
                other => Err(format!("a poisoned engine accepted an append: {other:?}")),
            };
        }
        let topology = self.target.topology();
        let committed = engine
            .committed(topology)
            .map_err(|e| format!("committed: {e}"))?;
        if committed.batch_id < self.batch_id_seen {
            return Err(format!(
                "committed batch went back from {} to {}",
                self.batch_id_seen, committed.batch_id
            ));
        }
        self.batch_id_seen = committed.batch_id;
        let consumed: BTreeMap<(u32, u32), u64> = committed
            .offsets
            .iter()
            .map(|o| ((o.depot_id, o.partition), o.next_offset))
            .collect();

        let (log, first_kept) = durable_log(self.target, engine)?;
        for (partition, kept) in first_kept.iter().filter(|(_, kept)| **kept > 0) {
            if !self.retention_seen {
                return Err(format!(
                    "partition {partition} starts at {kept} though retention was never on"
                ));
            }
            // Retention keeps every partition's last record, which names the depot.
            let depot_id = log
                .iter()
                .find(|r| r.id.partition == *partition)
                .map(|r| r.id.depot_id)
                .ok_or_else(|| format!("partition {partition} was trimmed to nothing"))?;
            let consumed = consumed.get(&(depot_id, *partition)).copied().unwrap_or(0);
            if *kept > consumed {
                return Err(format!(
                    "partition {partition} was trimmed to {kept}, past its committed offset {consumed}"
                ));
            }
        }
        self.check_durability(&log, &first_kept)?;

        // Processed records: those below the committed offsets. They must be a prefix of the
        // durable records in append order, and the model must see them in that order.
        let is_processed = |id: &RecordId| {
            consumed
                .get(&(id.depot_id, id.partition))
                .is_some_and(|next| id.offset < *next)
        };
        let processed_seq_max = log
            .iter()
            .filter(|r| is_processed(&r.id))
            .map(|r| r.seq)
            .max();
        let unprocessed_seq_min = log
            .iter()
            .filter(|r| !is_processed(&r.id))
            .map(|r| r.seq)
            .min();
        if let (Some(max), Some(min)) = (processed_seq_max, unprocessed_seq_min) {
            if max > min {
                return Err(format!(
                    "processed records are not an append-order prefix: seq {max} processed, seq {min} not"
                ));
            }
        }
        if let Some(lost) = self.applied.iter().find(|id| !is_processed(id)) {
            return Err(format!("{lost:?} was processed, and no longer is"));
        }
        let snapshot = engine.snapshot().map_err(|e| format!("snapshot: {e}"))?;
        let snapshot_batch = snapshot
            .batch_id(topology)
            .map_err(|e| format!("snapshot batch: {e}"))?;
        if snapshot_batch != committed.batch_id {
            return Err(format!(
                "snapshot sees batch {snapshot_batch}, the engine committed {}",
                committed.batch_id
            ));
        }
        let mut fresh: Vec<&LoggedRecord<T::Command>> = log
            .iter()
            .filter(|r| is_processed(&r.id) && !self.applied.contains(&r.id))
            .collect();
        fresh.sort_by_key(|r| r.seq);
        for record in fresh {
            if self.applied_seq_last.is_some_and(|last| record.seq <= last) {
                return Err(format!(
                    "{:?} (seq {}) processed after seq {:?}: out of append order",
                    record.id, record.seq, self.applied_seq_last
                ));
            }
            let expected = self.target.apply(&mut self.model, &record.record);
            if let Some(expected) = expected {
                match snapshot.outcome::<T::Outcome>(topology, record.id) {
                    // Retention trimmed the record, and a batch since deleted its outcome:
                    // only the state check below vouches for it.
                    Err(Error::DepotTrimmed { .. }) => {
                        self.summary.outcomes_trimmed += 1;
                    }
                    read => {
                        let recorded = read
                            .map_err(|e| format!("outcome of {:?}: {e}", record.id))?
                            .map(|o| o.value);
                        match recorded {
                            Some(recorded) if recorded == expected => {
                                self.outcomes.insert(record.id, recorded);
                            }
                            recorded => {
                                return Err(format!(
                                    "{:?} {:?}: recorded outcome {recorded:?}, model {expected:?}",
                                    record.id, record.record
                                ))
                            }
                        }
                    }
                }
            }
            self.applied.insert(record.id);
            self.applied_seq_last = Some(record.seq);
            self.summary.records_checked += 1;
        }
        // Outcomes read before read the same, until retention deletes them with their records
        // (deleting any other outcome would show here), and then read as trimmed for good.
        for id in &self.outcomes_deleted {
            match snapshot.outcome::<T::Outcome>(topology, *id) {
                Err(Error::DepotTrimmed { .. }) => {}
                other => return Err(format!("{id:?}: deleted outcome read back as {other:?}")),
            }
        }
        let mut deleted = Vec::new();
        for (id, outcome) in &self.outcomes {
            match snapshot.outcome::<T::Outcome>(topology, *id) {
                Ok(Some(read)) if read.value == *outcome => {}
                Err(Error::DepotTrimmed { .. }) if self.trimmed(id, &first_kept) => {
                    deleted.push(*id);
                }
                other => {
                    return Err(format!(
                        "{id:?}: outcome {outcome:?} read back as {other:?}"
                    ))
                }
            }
        }
        for id in deleted {
            self.outcomes.remove(&id);
            self.outcomes_deleted.insert(id);
            self.summary.outcomes_trimmed += 1;
        }
        self.target
            .check(&snapshot, &self.model)
            .map_err(|problem| format!("state check failed at batch {snapshot_batch}: {problem}"))
    }

    /// Every acknowledged record is durable where it was acknowledged (or, below its
    /// partition's first kept offset, was trimmed by retention after it had been checked
    /// durable and processed), and every other durable record belongs to a call still in doubt
    /// (its acknowledgment was lost to a fault).
    fn check_durability(
        &self,
        log: &[LoggedRecord<T::Command>],
        first_kept: &BTreeMap<u32, u64>,
    ) -> Result<(), String> {
        let durable: BTreeMap<RecordId, &T::Command> =
            log.iter().map(|r| (r.id, &r.record)).collect();
        let seqs: BTreeSet<u64> = log.iter().map(|r| r.seq).collect();
        if seqs.len() != log.len() {
            return Err("two durable records share a sequence number".to_string());
        }
        for (id, command) in &self.acknowledged {
            match durable.get(id) {
                Some(stored) if *stored == command => {}
                Some(stored) => {
                    return Err(format!(
                        "acknowledged {command:?} at {id:?}, the depot holds {stored:?}"
                    ))
                }
                None if self.trimmed(id, first_kept) => {
                    if !self.applied.contains(id) {
                        return Err(format!(
                            "acknowledged {command:?} at {id:?} was trimmed before it was processed"
                        ));
                    }
                }
                None => return Err(format!("acknowledged {command:?} at {id:?} is lost")),
            }
        }
        let mut in_doubt: Vec<&T::Command> = self
            .clients
            .iter()
            .filter_map(|c| c.outbox.front())
            .filter(|call| call.in_doubt)
            .flat_map(|call| call.commands.iter())
            .collect();
        for (id, stored) in &durable {
            if self.acknowledged.contains_key(id) {
                continue;
            }
            match in_doubt.iter().position(|command| command == stored) {
                Some(index) => {
                    in_doubt.swap_remove(index);
                }
                None => {
                    return Err(format!(
                        "{stored:?} at {id:?} is durable, but no call in doubt sent it"
                    ))
                }
            }
        }
        Ok(())
    }

    /// Whether retention has deleted the record at `id`.
    fn trimmed(&self, id: &RecordId, first_kept: &BTreeMap<u32, u64>) -> bool {
        first_kept
            .get(&id.partition)
            .is_some_and(|kept| id.offset < *kept)
    }

    /// Restarts without faults, retries every unacknowledged call, processes everything, and
    /// checks that every call is stored exactly once and processed.
    fn drain(&mut self) -> Result<(), String> {
        self.restart(SimEngineOptions::default())?;
        self.check()?;
        for client in 0..self.clients.len() {
            while !self.clients[client].outbox.is_empty() {
                let before = self.clients[client].outbox.len();
                self.send(client)?;
                if self.clients[client].outbox.len() == before {
                    return Err(format!("client {client}: a retry failed without faults"));
                }
            }
        }
        let batches = self
            .engine()?
            .run_until_idle()
            .map_err(|e| format!("draining batches: {e}"))?;
        self.summary.batches += batches;
        self.check()?;
        let (log, first_kept) = durable_log(self.target, self.engine()?)?;
        // Every record trimmed was acknowledged and processed (checked above), so it counts as
        // stored once.
        let trimmed = self
            .applied
            .iter()
            .filter(|id| self.trimmed(id, &first_kept))
            .count();
        let stored = log.len() + trimmed;
        self.summary.records_trimmed = trimmed as u64;
        if stored != self.acknowledged.len() {
            return Err(format!(
                "{stored} records were durable ({trimmed} since trimmed), {} were acknowledged: a call was stored twice",
                self.acknowledged.len()
            ));
        }
        if self.applied.len() != stored {
            return Err(format!(
                "{} of {stored} durable records processed after draining",
                self.applied.len(),
            ));
        }
        Ok(())
    }
}

/// Every durable record of the target's depot still stored, on every partition, and each
/// partition's first kept offset (retention deletes what every topology has processed).
type DurableLog<C> = (Vec<LoggedRecord<C>>, BTreeMap<u32, u64>);

fn durable_log<T: SimTarget>(
    target: &T,
    engine: &Engine,
) -> Result<DurableLog<T::Command>, String> {
    let depot = target.depot();
    let mut log = Vec::new();
    let mut first_kept = BTreeMap::new();
    for partition in 0..depot.partitions() {
        let kept = engine
            .depot_first_kept_offset(depot, partition)
            .map_err(|e| format!("reading the depot's start: {e}"))?;
        first_kept.insert(partition, kept);
        log.extend(
            engine
                .read_depot_log(depot, partition, kept, usize::MAX)
                .map_err(|e| format!("reading the depot: {e}"))?,
        );
    }
    Ok((log, first_kept))
}

fn committed_batch_id(engine: &Engine, topology: &str) -> Result<u64, String> {
    engine
        .committed(topology)
        .map(|record| record.batch_id)
        .map_err(|e| format!("committed: {e}"))
}

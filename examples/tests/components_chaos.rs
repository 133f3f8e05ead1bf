//! Chaos against the real binary: `components serve` under several concurrent `components
//! append --wait --retry-for` clients, killed with SIGKILL at random moments (sometimes again
//! while it recovers) and restarted on the same data directory and port, for a bounded time.
//!
//! Afterwards `verify` must pass, and the data directory, opened with the library, must show
//! that every command a client sent was acknowledged once, stored once and applied once: the
//! depot holds exactly the acknowledged commands at the acknowledged positions, every outcome
//! the engine recorded (and every client was told) is the sequential model's, and the final
//! state equals the model fed the durable commands in the engine's processing order (global
//! append sequence: batches are append-order prefixes, and a serializable batch applies its
//! records one at a time in that order).
//!
//! `LOCKSTEP_CHAOS_SECONDS` sets how long the chaos lasts (default 40), `LOCKSTEP_CHAOS_SEED`
//! the seed (default: from the clock; it is printed). The seed fixes the kill schedule and each
//! client's workload generator; process timing, and so which commands a kill interrupts, is not
//! deterministic.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{bin, run, spawn_serve, Served, PARTITIONS};
use lockstep::{Engine, EngineOptions, RecordId};
use lockstep_topologies::components::invariants::{check, ComponentsView};
use lockstep_topologies::components::json::command_json;
use lockstep_topologies::components::model::Model;
use lockstep_topologies::components::workload::Workload;
use lockstep_topologies::components::{
    components, read_outcome, read_view, Command, Outcome, DEPOT, TOPOLOGY,
};

/// Concurrent `append` processes.
const CLIENTS: u64 = 3;
/// Ids every client also works on: few, so the clients' commands race on the same components.
const HOT_IDS: u64 = 8;
/// Chaos time when `LOCKSTEP_CHAOS_SECONDS` is not set.
const CHAOS_SECONDS_DEFAULT: u64 = 40;
/// How long a client rides out a server that is down; far above any down time here.
const CLIENT_RETRY_SECONDS: u64 = 120;
/// How long the server runs between kills, at most.
const UP_MS_MAX: u64 = 2_000;
/// How long the server stays down after a kill, at most.
const DOWN_MS_MAX: u64 = 300;
/// How long a restart may run before it is killed again without listening, at most.
const RECOVERY_KILL_MS_MAX: u64 = 40;
/// Attribute carrying each create's and update's unique tag (`c<client>-<n>`).
const TAG: &str = "cmd";

/// SplitMix64: the kill schedule's generator (the clients' workloads have their own).
struct Schedule(u64);

impl Schedule {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn millis(&mut self, min: u64, max: u64) -> Duration {
        Duration::from_millis(min + self.next() % (max - min + 1))
    }

    fn one_in(&mut self, n: u64) -> bool {
        self.next().is_multiple_of(n)
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a whole number")),
    )
}

/// Where a command is stored in the depot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Position {
    partition: u32,
    offset: u64,
}

/// What a client was told about one command.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ack {
    position: Position,
    /// `applied`, or the rejection reason's wire name.
    outcome: String,
    batch: u64,
}

fn outcome_label(outcome: Outcome) -> String {
    match outcome {
        Outcome::Applied => "applied".to_string(),
        Outcome::Rejected(reason) => reason.as_str().to_string(),
    }
}

fn parse_ack(line: &str) -> Ack {
    let ack: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("answer {line:?}: {e}"));
    assert_eq!(ack["ok"], true, "a command was not acknowledged: {line}");
    let number = |field: &str| {
        ack[field]
            .as_u64()
            .unwrap_or_else(|| panic!("no {field} in {line}"))
    };
    let outcome = match ack["outcome"].as_str() {
        Some("applied") => "applied".to_string(),
        Some("rejected") => ack["reason"]
            .as_str()
            .unwrap_or_else(|| panic!("no reason in {line}"))
            .to_string(),
        _ => panic!("no outcome in {line}"),
    };
    Ack {
        position: Position {
            partition: u32::try_from(number("partition")).expect("partition"),
            offset: number("offset"),
        },
        outcome,
        batch: number("batch"),
    }
}

/// Gives creates and updates a unique tag, so each one is recognisable in the depot.
fn tag(command: &mut Command, tag: String) {
    if let Command::Create { attrs, .. } | Command::Update { attrs, .. } = command {
        attrs.insert(TAG.to_string(), tag);
    }
}

/// One `append` process: sends commands one at a time until told to stop, each answered (with
/// its outcome) before the next is sent, aiming later commands at what it saw applied.
fn client(
    client: u64,
    seed: u64,
    address: &str,
    stderr: File,
    stop: &AtomicBool,
) -> Vec<(Command, Ack)> {
    let mut child = bin()
        .args(["append", "--server", address, "--wait", "--retry-for"])
        .arg(CLIENT_RETRY_SECONDS.to_string())
        .env_remove("LOCKSTEP_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn append");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut workload = Workload::new(seed, client, HOT_IDS);
    let mut sent = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let mut command = workload.next_command();
        tag(&mut command, format!("c{client}-{}", sent.len()));
        writeln!(stdin, "{}", command_json(&command)).expect("write a command");
        stdin.flush().expect("flush");
        let mut answer = String::new();
        let read = stdout.read_line(&mut answer).expect("read an answer");
        assert!(read > 0, "client {client} exited before answering");
        let ack = parse_ack(answer.trim());
        if ack.outcome == "applied" {
            workload.observe(&command, Outcome::Applied);
        }
        sent.push((command, ack));
    }
    drop(stdin);
    let mut extra = String::new();
    stdout.read_to_string(&mut extra).expect("read to the end");
    assert_eq!(
        extra, "",
        "client {client} answered more lines than it was sent"
    );
    let status = child.wait().expect("client exit");
    assert!(status.success(), "client {client} exited with {status}");
    sent
}

/// Kills and restarts the server until `deadline`; returns the kills of a listening server,
/// the kills of a restart before it listened (while it opens and recovers the directory), and
/// the server left running.
fn chaos(
    data: &Path,
    log: &Path,
    mut served: Served,
    schedule: &mut Schedule,
    deadline: Instant,
    clients_alive: impl Fn() -> bool,
) -> (u64, u64, Served) {
    let logged = || {
        Stdio::from(
            File::options()
                .append(true)
                .create(true)
                .open(log)
                .expect("server log"),
        )
    };
    let address = served.address.clone();
    let (mut kills, mut recovery_kills) = (0, 0);
    while Instant::now() < deadline && clients_alive() {
        thread::sleep(schedule.millis(50, UP_MS_MAX));
        served.kill_nine();
        kills += 1;
        // Sometimes the restarted server dies again before it listens: a crash in recovery, or
        // before it even got there.
        while schedule.one_in(4) {
            let mut child = spawn_serve(data, &address, None, logged());
            thread::sleep(schedule.millis(0, RECOVERY_KILL_MS_MAX));
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
            recovery_kills += 1;
        }
        thread::sleep(schedule.millis(0, DOWN_MS_MAX));
        served = Served::try_start(data, &address, None, logged()).unwrap_or_else(|line| {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("restart after kill {kills} failed: {line:?}\nserver log:\n{log}")
        });
    }
    (kills, recovery_kills, served)
}

#[test]
fn commands_survive_random_kill_nine_exactly_once() {
    let seed = env_u64("LOCKSTEP_CHAOS_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let chaos_time =
        Duration::from_secs(env_u64("LOCKSTEP_CHAOS_SECONDS").unwrap_or(CHAOS_SECONDS_DEFAULT));
    println!(
        "chaos seed {seed} for {chaos_time:?} (rerun: LOCKSTEP_CHAOS_SEED={seed} \
         LOCKSTEP_CHAOS_SECONDS={})",
        chaos_time.as_secs()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server_log = dir.path().join("serve.log");
    let mut schedule = Schedule(seed);

    let served = Served::start(&data, "127.0.0.1:0", None);
    let address = served.address.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let stderr = File::create(dir.path().join(format!("client-{c}.log"))).expect("log");
            let (address, stop) = (address.clone(), stop.clone());
            thread::spawn(move || client(c, seed, &address, stderr, &stop))
        })
        .collect();
    let (kills, recovery_kills, served) = chaos(
        &data,
        &server_log,
        served,
        &mut schedule,
        started + chaos_time,
        || clients.iter().all(|c| !c.is_finished()),
    );
    stop.store(true, Ordering::Relaxed);
    let sent: Vec<Vec<(Command, Ack)>> = clients
        .into_iter()
        .enumerate()
        .map(|(c, handle)| {
            handle.join().unwrap_or_else(|_| {
                let log = std::fs::read_to_string(dir.path().join(format!("client-{c}.log")))
                    .unwrap_or_default();
                panic!("client {c} failed; its stderr:\n{log}")
            })
        })
        .collect();
    // Every answer included the outcome, so everything is processed: one last crash loses
    // nothing.
    served.kill_nine();
    let elapsed = started.elapsed();

    let (code, stdout, stderr) = run(&["verify", "--data", &data.to_string_lossy()], "");
    assert_eq!(code, 0, "verify failed: {stdout}{stderr}");

    let report = check_exactly_once_against_model(&data, &sent);
    println!(
        "chaos: {elapsed:.1?}, {kills} kills of a listening server, {recovery_kills} of a \
         restart before it listened; {} commands from {CLIENTS} clients ({}), {} applied, {} batches; \
         final state {} components, equal to the model",
        report.commands,
        sent.iter()
            .map(|s| s.len().to_string())
            .collect::<Vec<_>>()
            .join(" + "),
        report.applied,
        report.batches,
        report.components,
    );
    assert!(kills > 0, "the chaos never killed the server");
    assert!(
        sent.iter().all(|s| !s.is_empty()),
        "a client got no command through"
    );
}

struct Report {
    commands: usize,
    applied: usize,
    batches: u64,
    components: usize,
}

/// Opens the data directory with the library and checks every acknowledgement, every stored
/// command, every recorded outcome and the final state against the sequential model.
fn check_exactly_once_against_model(data: &Path, sent: &[Vec<(Command, Ack)>]) -> Report {
    let partitions = Engine::stored_depot_partitions(data, DEPOT)
        .expect("read the catalog")
        .expect("the depot exists");
    assert_eq!(partitions, PARTITIONS);
    let handles = components(partitions).expect("declare");
    // Manual driving: the check must see the state the server left, not process anything.
    let engine = Engine::builder(data)
        .options(EngineOptions::manual())
        .depot(&handles.commands)
        .topology(handles.topology.clone())
        .open()
        .expect("open the data directory");

    // Every durable command, in the engine's processing order.
    let mut stored = Vec::new();
    for partition in 0..partitions {
        for record in engine
            .read_depot_log(&handles.commands, partition, 0, usize::MAX)
            .expect("read the depot")
        {
            let position = Position {
                partition,
                offset: record.id.offset,
            };
            stored.push((record.seq, position, record.record));
        }
    }
    stored.sort_by_key(|(seq, _, _)| *seq);
    let seqs: BTreeSet<u64> = stored.iter().map(|(seq, _, _)| *seq).collect();
    assert_eq!(
        seqs.len(),
        stored.len(),
        "two records share a sequence number"
    );

    // Nothing is left to process: every record was waited for by its client.
    let committed = engine.committed(TOPOLOGY).expect("commit record");
    assert_eq!(committed.offsets.len(), partitions as usize);
    let depot_id = committed.offsets[0].depot_id;
    for consumed in &committed.offsets {
        let head = engine
            .depot_next_offset(&handles.commands, consumed.partition)
            .expect("head");
        assert_eq!(
            consumed.next_offset, head,
            "partition {} is not fully processed",
            consumed.partition
        );
    }

    // Acknowledged once, stored once: the acknowledged positions are exactly the stored ones,
    // each holding the command that was acknowledged there.
    let by_position: BTreeMap<Position, &Command> = stored
        .iter()
        .map(|(_, position, command)| (*position, command))
        .collect();
    let mut acked: BTreeMap<Position, &Ack> = BTreeMap::new();
    for (command, ack) in sent.iter().flatten() {
        if let Some(other) = acked.insert(ack.position, ack) {
            panic!("two commands acknowledged at {:?}: {other:?}", ack.position);
        }
        assert_eq!(
            by_position.get(&ack.position),
            Some(&command),
            "the command acknowledged at {:?} is not the one stored there",
            ack.position
        );
    }
    let unacknowledged: Vec<_> = by_position
        .keys()
        .filter(|position| !acked.contains_key(position))
        .collect();
    assert!(
        unacknowledged.is_empty(),
        "stored but never acknowledged (a duplicate?): {unacknowledged:?}"
    );
    let mut tags = BTreeSet::new();
    for (_, _, command) in &stored {
        if let Command::Create { attrs, .. } | Command::Update { attrs, .. } = command {
            let tag = attrs.get(TAG).expect("every create and update is tagged");
            assert!(tags.insert(tag.clone()), "command {tag} stored twice");
        }
    }

    // Applied once, in the documented order: the model fed the stored commands by sequence
    // number gives every outcome the engine recorded and every client was told.
    let snapshot = engine.snapshot().expect("snapshot");
    let mut model = Model::new();
    let mut previous_batch = 0;
    let mut applied = 0;
    // Versions tell, independently of the model: a component's version is one plus the applied
    // updates and reparents since its last applied create, as the clients were told.
    let mut expected_versions: BTreeMap<&str, u64> = BTreeMap::new();
    for (seq, position, command) in &stored {
        let expected = model.apply(command);
        let record = RecordId {
            depot_id,
            partition: position.partition,
            offset: position.offset,
        };
        let (recorded, batch) = read_outcome(&snapshot, record)
            .expect("read an outcome")
            .unwrap_or_else(|| panic!("no outcome for {position:?}"));
        assert_eq!(
            recorded, expected,
            "seq {seq} at {position:?}: {command:?} had outcome {recorded:?}, the model says \
             {expected:?}"
        );
        assert!(
            batch >= previous_batch,
            "seq {seq} at {position:?} committed in batch {batch}, before an earlier record's \
             batch {previous_batch}: batches are not append-order prefixes"
        );
        previous_batch = batch;
        let ack = acked[position];
        assert_eq!(ack.outcome, outcome_label(recorded), "told {ack:?}");
        assert_eq!(ack.batch, batch, "told {ack:?}");
        if ack.outcome == "applied" {
            applied += 1;
            match command {
                Command::Create { id, .. } => {
                    expected_versions.insert(id, 1);
                }
                Command::Update { id, .. } | Command::Reparent { id, .. } => {
                    *expected_versions
                        .get_mut(id.as_str())
                        .expect("applied to a live id") += 1;
                }
                Command::Delete { .. } => {}
            }
        }
    }
    assert!(previous_batch <= committed.batch_id);

    let view = read_view(&snapshot, &handles).expect("read the state");
    assert_eq!(check(&view), Vec::new(), "invariants");
    for (id, component) in &view.components {
        assert_eq!(
            Some(&component.version),
            expected_versions.get(id.as_str()),
            "version of {id}"
        );
    }
    let expected = model.view();
    assert!(
        view == expected,
        "final state differs from the model: {}",
        differences(&view, &expected)
    );
    Report {
        commands: stored.len(),
        applied,
        batches: committed.batch_id,
        components: view.components.len(),
    }
}

/// The first few components and links on which two views disagree.
fn differences(engine: &ComponentsView, model: &ComponentsView) -> String {
    let ids: BTreeSet<&String> = engine
        .components
        .keys()
        .chain(model.components.keys())
        .collect();
    let components = ids
        .into_iter()
        .filter(|id| engine.components.get(*id) != model.components.get(*id))
        .take(5)
        .map(|id| {
            format!(
                "{id}: engine {:?}, model {:?}",
                engine.components.get(id),
                model.components.get(id)
            )
        });
    let links = engine
        .links
        .symmetric_difference(&model.links)
        .take(5)
        .map(|(parent, child)| {
            let side = if engine.links.contains(&(parent.clone(), child.clone())) {
                "engine"
            } else {
                "model"
            };
            format!("link {parent} -> {child} only in the {side}")
        });
    components.chain(links).collect::<Vec<_>>().join("; ")
}

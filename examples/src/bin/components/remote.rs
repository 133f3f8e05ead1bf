//! The networked commands: `serve`, and the clients `append`, `get`, `dump`, `verify --server`
//! and `load`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use lockstep::net::{
    Client, ClientConfig, ClientError, Read, ReadResult, Server, ServerConfig, WireErrorKind,
};
use lockstep::{
    decode_envelope, decode_key, decode_key_prefix, encode_key, DepotRetention, Engine,
    EngineOptions,
};
use lockstep_topologies::components::invariants::ComponentsView;
use lockstep_topologies::components::workload::Workload;
use lockstep_topologies::components::{
    components, Component, Components, Outcome, DEPOT, TOPOLOGY,
};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::json::{ack_json, component_json, error_json, trimmed_ack_json};
use lockstep_topologies::components::json::parse_command;

/// How long `append --wait` waits for one command when no `--retry-for` is given.
const WAIT_DEFAULT: Duration = Duration::from_secs(60);

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn client_config(token: Option<String>, retry_for: Duration) -> ClientConfig {
    let mut config = ClientConfig::default();
    config.token = token;
    config.retry_for = retry_for;
    config
}

/// `components serve`.
pub fn serve(
    data: &Path,
    listen: std::net::SocketAddr,
    partitions: Option<u32>,
    token: Option<String>,
    keep_depot_records: Option<u64>,
    producer_expiry: Option<Duration>,
    background_write_bytes_per_s: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let stored = if data.join("CURRENT").exists() {
        Engine::stored_depot_partitions(data, DEPOT)?
    } else {
        None
    };
    let partitions = match (stored, partitions) {
        (Some(stored), Some(asked)) if stored != asked => {
            bail!(
                "{} was created with {stored} partitions, not {asked}",
                data.display()
            )
        }
        (Some(stored), _) => stored,
        (None, asked) => asked.unwrap_or(8),
    };
    let handles = components(partitions)?;
    let mut options = EngineOptions::default();
    options.depot_retention = keep_depot_records.map(|keep| {
        let mut retention = DepotRetention::default();
        retention.keep_records_min = keep;
        retention
    });
    if let Some(expiry) = producer_expiry {
        options.producer_expiry = expiry;
    }
    options.background_write_bytes_per_s = background_write_bytes_per_s;
    let engine = Engine::builder(data)
        .options(options)
        .depot(&handles.commands)
        .topology(handles.topology.clone())
        .open()
        .with_context(|| format!("opening {}", data.display()))?;
    let engine = Arc::new(engine);
    let runtime = runtime()?;
    runtime.block_on(async move {
        let mut config = ServerConfig::default();
        config.listen = listen;
        config.token = token;
        let server = Server::bind(engine, config)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        let address = server.local_addr()?;
        println!("listening on {address}");
        std::io::stdout().flush()?;
        server.run(shutdown_signal()).await?;
        eprintln!("shut down cleanly");
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// `components append`: JSON Lines in, one JSON line out per input line, in order.
pub fn append(
    server: &str,
    wait: bool,
    retry_for: Duration,
    token: Option<String>,
) -> anyhow::Result<ExitCode> {
    let runtime = runtime()?;
    runtime.block_on(async move {
        let handles = components(1)?;
        let mut client = Client::connect(server, client_config(token, retry_for)).await?;
        let mut stdin = BufReader::new(tokio::io::stdin());
        let mut stdout = std::io::stdout().lock();
        let mut failed = false;
        let mut raw = Vec::new();
        loop {
            raw.clear();
            if stdin
                .read_until(b'\n', &mut raw)
                .await
                .context("reading stdin")?
                == 0
            {
                break;
            }
            // A line that is not UTF-8 is a bad line like any other: answered, not fatal.
            let parsed = std::str::from_utf8(&raw)
                .map_err(|_| "bad command: line is not UTF-8".to_string())
                .and_then(|line| parse_command(line.trim()));
            let answer = match parsed {
                Err(error) => {
                    failed = true;
                    error_json(&error)
                }
                // The depot's partition count does not matter to the client: the server
                // routes every record itself.
                Ok(command) => {
                    match append_one(&mut client, &handles, command, wait, retry_for).await {
                        Ok(answer) => answer,
                        Err(ClientError::Unreachable(message)) => {
                            writeln!(
                                stdout,
                                "{}",
                                error_json(&format!("server unreachable: {message}"))
                            )?;
                            stdout.flush()?;
                            bail!("server unreachable: {message}");
                        }
                        Err(other) => {
                            failed = true;
                            error_json(&other.to_string())
                        }
                    }
                }
            };
            writeln!(stdout, "{answer}")?;
            stdout.flush()?;
        }
        Ok(if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        })
    })
}

async fn append_one(
    client: &mut Client,
    handles: &Components,
    command: lockstep_topologies::components::Command,
    wait: bool,
    retry_for: Duration,
) -> Result<serde_json::Value, ClientError> {
    let ids = client
        .append(&handles.commands, std::slice::from_ref(&command))
        .await?;
    let Some(id) = ids.first().copied() else {
        return Err(ClientError::Protocol(
            "no position for the appended command".to_string(),
        ));
    };
    if !wait {
        return Ok(ack_json(id.partition, id.offset, None));
    }
    let timeout = if retry_for.is_zero() {
        WAIT_DEFAULT
    } else {
        retry_for.max(WAIT_DEFAULT)
    };
    client.wait_for(TOPOLOGY, id, timeout).await?;
    let outcome = match client.outcome::<Outcome>(TOPOLOGY, id).await {
        Ok(Some(outcome)) => outcome,
        Ok(None) => {
            return Err(ClientError::Protocol(
                "processed command has no outcome".to_string(),
            ))
        }
        // Processed (the wait said so), and its outcome already deleted with its record by
        // retention (`serve --keep-depot-records`). `Refused` is the server's catch-all kind,
        // but for a topology the wait just found and a record it found processed, the one
        // refusal an outcome read gets is a trimmed record (`Error::DepotTrimmed`); its
        // message goes out as the detail. Applied or rejected is no longer known, and failing
        // the line would invite a retry of a command that took effect.
        Err(ClientError::Server(error)) if error.kind == WireErrorKind::Refused => {
            return Ok(trimmed_ack_json(id.partition, id.offset, &error.message));
        }
        Err(error) => return Err(error),
    };
    Ok(ack_json(
        id.partition,
        id.offset,
        Some((outcome.value, outcome.batch_id)),
    ))
}

fn decode_component(bytes: &[u8]) -> anyhow::Result<Component> {
    decode_envelope(bytes).context("stored component does not decode")
}

/// Reads every component and link from one snapshot on the server.
async fn read_everything(client: &mut Client) -> anyhow::Result<(u64, ComponentsView)> {
    let results = client
        .read(vec![
            Read::BatchId {
                topology: TOPOLOGY.into(),
            },
            Read::Scan {
                pstate: "components".into(),
            },
            Read::Scan {
                pstate: "children".into(),
            },
        ])
        .await?;
    let [ReadResult::Batch(batch), ReadResult::Entries(components), ReadResult::Entries(links)] =
        results.as_slice()
    else {
        bail!("unexpected read results");
    };
    let mut view = ComponentsView::default();
    for (key, value) in components {
        view.components
            .insert(decode_key::<String>(key)?, decode_component(value)?);
    }
    for (key, _) in links {
        let (parent, used) = decode_key_prefix::<String>(key)?;
        let child = decode_key::<String>(&key[used..])?;
        view.links.insert((parent, child));
    }
    Ok((*batch, view))
}

fn children_by_parent(view: &ComponentsView) -> BTreeMap<&str, Vec<String>> {
    let mut children: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (parent, child) in &view.links {
        children
            .entry(parent.as_str())
            .or_default()
            .push(child.clone());
    }
    children
}

/// `components get ID`.
pub fn get(server: &str, id: &str, token: Option<String>) -> anyhow::Result<ExitCode> {
    let runtime = runtime()?;
    runtime.block_on(async move {
        let mut client = Client::connect(server, client_config(token, Duration::ZERO)).await?;
        let key = encode_key(id)?;
        let results = client
            .read(vec![
                Read::BatchId {
                    topology: TOPOLOGY.into(),
                },
                Read::Get {
                    pstate: "components".into(),
                    key: key.clone(),
                },
                Read::SetMembers {
                    pstate: "children".into(),
                    key,
                },
            ])
            .await?;
        let [ReadResult::Batch(batch), ReadResult::Value(value), ReadResult::Entries(children)] =
            results.as_slice()
        else {
            bail!("unexpected read results");
        };
        let Some(bytes) = value else {
            eprintln!("not found: {id}");
            return Ok(ExitCode::FAILURE);
        };
        let component = decode_component(bytes)?;
        let children: Vec<String> = children
            .iter()
            .map(|(element, _)| decode_key::<String>(element))
            .collect::<Result<_, _>>()?;
        println!("{}", component_json(id, &component, &children, *batch));
        Ok(ExitCode::SUCCESS)
    })
}

/// `components dump`.
pub fn dump(server: &str, token: Option<String>) -> anyhow::Result<ExitCode> {
    let runtime = runtime()?;
    runtime.block_on(async move {
        let mut client = Client::connect(server, client_config(token, Duration::ZERO)).await?;
        let (batch, view) = read_everything(&mut client).await?;
        let children = children_by_parent(&view);
        let mut stdout = std::io::stdout().lock();
        writeln!(
            stdout,
            "{}",
            json!({"batch": batch, "components": view.components.len()})
        )?;
        for (id, component) in &view.components {
            let kids = children.get(id.as_str()).map_or(&[][..], Vec::as_slice);
            writeln!(stdout, "{}", component_json(id, component, kids, batch))?;
        }
        stdout.flush()?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `components verify --server`.
pub fn verify_server(server: &str, token: Option<String>) -> anyhow::Result<ExitCode> {
    let runtime = runtime()?;
    runtime.block_on(async move {
        let mut client = Client::connect(server, client_config(token, Duration::ZERO)).await?;
        let (batch, view) = read_everything(&mut client).await?;
        Ok(crate::report_verification(&view, batch))
    })
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// `components load`.
pub fn load(
    server: &str,
    clients: u64,
    ops: u64,
    seed: u64,
    hot_ids: u64,
    as_json: bool,
    token: Option<String>,
) -> anyhow::Result<ExitCode> {
    if clients == 0 || hot_ids == 0 {
        bail!("--clients and --hot-ids must be at least 1");
    }
    let runtime = runtime()?;
    runtime.block_on(async move {
        let progress = if as_json {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(ops)
        };
        progress.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} ops  {per_sec}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let started = Instant::now();
        let per_client = ops.div_ceil(clients);
        let mut tasks = tokio::task::JoinSet::new();
        for c in 0..clients {
            let n = per_client.min(ops.saturating_sub(c * per_client));
            let config = client_config(token.clone(), Duration::from_secs(10));
            let server = server.to_string();
            let progress = progress.clone();
            tasks.spawn(async move {
                let handles = components(1)?;
                let mut client = Client::connect(&server, config).await?;
                let mut workload = Workload::new(seed, c, hot_ids);
                let mut latencies_us = Vec::with_capacity(n as usize);
                let mut outcomes: BTreeMap<&'static str, u64> = BTreeMap::new();
                for _ in 0..n {
                    let command = workload.next_command();
                    let call = Instant::now();
                    let ids = client
                        .append(&handles.commands, std::slice::from_ref(&command))
                        .await?;
                    let id = *ids.first().context("no position")?;
                    client
                        .wait_for(TOPOLOGY, id, Duration::from_secs(60))
                        .await?;
                    let outcome = client
                        .outcome::<Outcome>(TOPOLOGY, id)
                        .await?
                        .context("processed command has no outcome")?
                        .value;
                    latencies_us.push(call.elapsed().as_micros() as u64);
                    workload.observe(&command, outcome);
                    let label = match outcome {
                        Outcome::Applied => "applied",
                        Outcome::Rejected(reason) => reason.as_str(),
                    };
                    *outcomes.entry(label).or_default() += 1;
                    progress.inc(1);
                }
                anyhow::Ok((latencies_us, outcomes))
            });
        }
        let mut latencies_us = Vec::new();
        let mut outcomes: BTreeMap<&'static str, u64> = BTreeMap::new();
        while let Some(joined) = tasks.join_next().await {
            let (latencies, counts) = joined.context("load client panicked")??;
            latencies_us.extend(latencies);
            for (label, n) in counts {
                *outcomes.entry(label).or_default() += n;
            }
        }
        progress.finish_and_clear();
        let elapsed = started.elapsed().as_secs_f64();
        latencies_us.sort_unstable();
        let done = latencies_us.len() as u64;
        let (p50, p99, max) = (
            percentile(&latencies_us, 0.5),
            percentile(&latencies_us, 0.99),
            latencies_us.last().copied().unwrap_or(0),
        );
        if as_json {
            println!(
                "{}",
                json!({
                    "ops": done,
                    "clients": clients,
                    "seconds": elapsed,
                    "ops_per_second": done as f64 / elapsed,
                    "latency_us": {"p50": p50, "p99": p99, "max": max},
                    "outcomes": outcomes,
                })
            );
        } else {
            println!("load: {done} ops from {clients} clients in {elapsed:.2}s");
            println!("  throughput  {:.0} ops/s", done as f64 / elapsed);
            println!(
                "  latency     p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (append to outcome)",
                p50 as f64 / 1000.0,
                p99 as f64 / 1000.0,
                max as f64 / 1000.0
            );
            let summary: Vec<String> = outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
            println!("  outcomes    {}", summary.join(", "));
        }
        Ok(ExitCode::SUCCESS)
    })
}

//! Arbitrary connections against a live server: random bytes before or after a handshake,
//! random payloads in well-formed frames, and well-formed requests (appends, waits and
//! append-and-waits among them) with random names, records, positions, producers and
//! timeouts. None may panic the server (in any task), stop the topology or poison the engine,
//! and none may change state except through appends the server accepted: afterwards the state
//! is exactly the effect of the records the depot holds.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{ledger, open, read_state, sample_ops, Op, TOPOLOGY};
use lockstep::net::{
    write_frame, Client, ClientConfig, ClientFrame, Read, Request, Server, ServerConfig,
    PROTOCOL_VERSION,
};
use lockstep::{EngineOptions, RecordId};
use lockstep_core::encode_envelope;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Panics anywhere in the process (server tasks included) since the hook was set.
static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Longest a connection may take to be answered and closed after the client stops sending.
const CLOSE_WITHIN: Duration = Duration::from_secs(10);

/// What one connection sends, in order.
#[derive(Debug, Clone)]
enum Send {
    /// Bytes as they are: a length prefix or not.
    Bytes(Vec<u8>),
    /// A correct length prefix around arbitrary payload bytes.
    Payload(Vec<u8>),
    /// A well-formed frame.
    Frame(ClientFrame),
}

#[derive(Debug, Clone)]
struct Connection {
    hello: bool,
    sends: Vec<Send>,
}

fn any_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "ops",
            TOPOLOGY,
            "totals",
            "mirror-log",
            "$outcomes.ledger",
            ""
        ])
        .prop_map(str::to_string),
        "\\PC{0,12}",
    ]
}

fn any_record_id() -> impl Strategy<Value = RecordId> {
    (0u32..4, 0u32..5, prop_oneof![0u64..64, any::<u64>()]).prop_map(
        |(depot_id, partition, offset)| RecordId {
            depot_id,
            partition,
            offset,
        },
    )
}

/// A record as a client might send it: a real op (small amounts), bytes whose checksum is
/// wrong, or a valid envelope around a payload too short to be an op.
fn any_record() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => (0u32..10, -5i64..5, 0u32..10).prop_map(|(key, amount, mirror)| {
            encode_envelope(
                &Op {
                    key,
                    amount,
                    mirror,
                },
                1 << 10,
            )
            .expect("encodes")
        }),
        1 => prop::collection::vec(any::<u8>(), 0..24),
        1 => prop::collection::vec(any::<u8>(), 0..3).prop_map(|payload| {
            let envelope = match payload[..] {
                [] => encode_envelope(&(), 8),
                [a] => encode_envelope(&a, 8),
                [a, b, ..] => encode_envelope(&(a, b), 8),
            };
            envelope.expect("encodes")
        }),
    ]
}

fn any_read() -> impl Strategy<Value = Read> {
    let key = prop::collection::vec(any::<u8>(), 0..12);
    prop_oneof![
        (any_name(), key.clone()).prop_map(|(pstate, key)| Read::Get { pstate, key }),
        any_name().prop_map(|pstate| Read::Scan { pstate }),
        (any_name(), key).prop_map(|(pstate, key)| Read::SetMembers { pstate, key }),
        any_name().prop_map(|topology| Read::BatchId { topology }),
    ]
}

fn any_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (
            // Mostly the real depot, so appends get past the name to the records.
            prop_oneof![3 => Just("ops".to_string()), 1 => any_name()],
            prop::collection::vec(any_record(), 0..4),
            // Few producers and sequences, so retries, reuses and stale calls all happen.
            prop::option::of((0u64..3, 0u64..4)),
        )
            .prop_map(|(depot, records, producer)| Request::Append {
                depot,
                records,
                producer
            }),
        (any_name(), any_record_id(), any::<u64>()).prop_map(|(topology, record, timeout_ms)| {
            Request::WaitFor {
                topology,
                record,
                timeout_ms,
            }
        }),
        (any_name(), any_record_id())
            .prop_map(|(topology, record)| Request::Outcome { topology, record }),
        prop::collection::vec(any_read(), 0..4).prop_map(|reads| Request::Read { reads }),
        (
            prop_oneof![3 => Just("ops".to_string()), 1 => any_name()],
            prop::collection::vec(any_record(), 0..4),
            prop::option::of((0u64..3, 0u64..4)),
            any_name(),
            any::<u64>(),
            any::<bool>(),
        )
            .prop_map(
                |(depot, records, producer, topology, timeout_ms, outcomes)| {
                    Request::AppendAndWait {
                        depot,
                        records,
                        producer,
                        topology,
                        timeout_ms,
                        outcomes,
                    }
                }
            ),
    ]
}

fn any_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        1 => (prop_oneof![Just(PROTOCOL_VERSION), any::<u32>()], prop::option::of("\\PC{0,8}"))
            .prop_map(|(protocol, token)| ClientFrame::Hello { protocol, token }),
        12 => (any::<u64>(), any_request()).prop_map(|(id, request)| ClientFrame::Request { id, request }),
    ]
}

fn any_connection() -> impl Strategy<Value = Connection> {
    let send = prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Send::Bytes),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Send::Payload),
        10 => any_frame().prop_map(Send::Frame),
    ];
    (prop::bool::weighted(0.8), prop::collection::vec(send, 0..5))
        .prop_map(|(hello, sends)| Connection { hello, sends })
}

/// Sends everything, half-closes, and reads until the server closes.
async fn connect_and_send(address: &str, connection: &Connection) -> Result<(), String> {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut bytes = Vec::new();
    if connection.hello {
        let hello = ClientFrame::Hello {
            protocol: PROTOCOL_VERSION,
            token: None,
        };
        write_frame(&mut bytes, &hello, usize::MAX)
            .await
            .map_err(|e| e.to_string())?;
    }
    for send in &connection.sends {
        match send {
            Send::Bytes(raw) => bytes.extend_from_slice(raw),
            Send::Payload(payload) => {
                bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
                bytes.extend_from_slice(payload);
            }
            Send::Frame(frame) => write_frame(&mut bytes, frame, usize::MAX)
                .await
                .map_err(|e| e.to_string())?,
        }
    }
    // The server may close early (a refused frame); what it does not read is not our concern.
    let _ = stream.write_all(&bytes).await;
    let _ = stream.shutdown().await;
    let mut reply = Vec::new();
    match tokio::time::timeout(CLOSE_WITHIN, stream.read_to_end(&mut reply)).await {
        Ok(_) => Ok(()),
        Err(_) => Err(format!("not closed within {CLOSE_WITHIN:?}")),
    }
}

#[test]
fn arbitrary_connections_never_panic_the_server_or_change_state_but_by_accepted_appends() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(3);
    let engine = Arc::new(open(dir.path(), &ledger, EngineOptions::default()).expect("open"));
    let mut config = ServerConfig::default();
    config.listen = ([127, 0, 0, 1], 0).into();
    config.frame_bytes_max = 1 << 16;
    config.wait_max = Duration::from_millis(100);
    config.handshake_timeout = Duration::from_secs(2);
    let server = runtime
        .block_on(Server::bind(engine.clone(), config))
        .expect("bind");
    let address = server.local_addr().expect("addr").to_string();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = runtime.spawn(server.run(async {
        let _ = stop_rx.await;
    }));
    let mut client = runtime
        .block_on(Client::connect(&address, ClientConfig::default()))
        .expect("connect");
    let ids = runtime
        .block_on(client.append(&ledger.ops, &sample_ops(20)))
        .expect("append");
    runtime
        .block_on(client.wait_for(TOPOLOGY, ids[19], Duration::from_secs(10)))
        .expect("processed");

    let mut runner = TestRunner::new(Config {
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&any_connection(), |connection| {
        runtime
            .block_on(connect_and_send(&address, &connection))
            .map_err(TestCaseError::fail)?;
        prop_assert_eq!(PANICS.load(Ordering::SeqCst), 0, "the server panicked");
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }

    assert_eq!(engine.poisoned(), None);
    assert_eq!(engine.topology_failure(TOPOLOGY).expect("topology"), None);
    // The server still serves; once its append is processed, so is everything before it.
    let last = runtime
        .block_on(client.append(&ledger.ops, &sample_ops(1)))
        .expect("append after the garbage")[0];
    runtime
        .block_on(client.wait_for(TOPOLOGY, last, Duration::from_secs(10)))
        .expect("processed");

    // The state is the effect of exactly the stored ops: totals summed per key, and each
    // mirror log holding one entry per op aimed at it (its order depends on batch boundaries,
    // which the garbage's timing decided).
    let mut totals: BTreeMap<u32, i64> = BTreeMap::new();
    let mut mirror_log: BTreeMap<u32, Vec<(u32, i64)>> = BTreeMap::new();
    for partition in 0..ledger.partitions {
        for (_, op) in engine
            .read_depot(&ledger.ops, partition, 0, usize::MAX)
            .expect("read the depot")
        {
            *totals.entry(op.key).or_default() += op.amount;
            mirror_log
                .entry(op.mirror)
                .or_default()
                .push((op.key, op.amount));
        }
    }
    let mut state = read_state(&engine, &ledger);
    for log in state.mirror_log.values_mut().chain(mirror_log.values_mut()) {
        log.sort_unstable();
    }
    assert_eq!(state.totals, totals);
    assert_eq!(state.mirror_log, mirror_log);
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "the server panicked");

    let _ = stop_tx.send(());
    runtime.block_on(serving).expect("join").expect("serve");
}

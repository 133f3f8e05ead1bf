//! `Client::append_and_wait` and `append_and_wait_for` over the server's one-round-trip
//! request: positions, batch and (if asked) outcomes in one answer, the outcomes past half a
//! frame read one by one; a topology that would never process the records is refused before
//! anything is written (a stopped topology too); a wait that fails after the append says
//! where the records are (after waiting out an engine that became unavailable); an older
//! client's protocol version is still accepted and answered in kind.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{ledger, stored_records, Op};
use lockstep::net::{
    read_frame, write_frame, Client, ClientConfig, ClientError, ClientFrame, Request, Response,
    Server, ServerConfig, ServerFrame, WireErrorKind, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN,
};
use lockstep::{Depot, DurableWrite, Engine, EngineOptions, StorageFaults, WriteFault};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

fn op(key: u32) -> Op {
    Op {
        key,
        amount: 1,
        mirror: key + 1,
    }
}

struct Served {
    engine: Arc<Engine>,
    address: String,
    stop: tokio::sync::oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Served {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.serving.await.expect("join").expect("serve");
    }
}

/// Serves `engine` on a loopback port.
async fn serve(engine: Engine) -> Served {
    serve_with(engine, ServerConfig::default()).await
}

/// Serves `engine` with `config`, on a loopback port.
async fn serve_with(engine: Engine, mut config: ServerConfig) -> Served {
    let engine = Arc::new(engine);
    config.listen = ([127, 0, 0, 1], 0).into();
    let server = Server::bind(engine.clone(), config).await.expect("bind");
    let address = server.local_addr().expect("addr").to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    Served {
        engine,
        address,
        stop,
        serving,
    }
}

async fn client(address: &str) -> Client {
    let mut config = ClientConfig::default();
    config.retry_for = Duration::from_secs(5);
    Client::connect(address, config).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_positions_and_outcomes_and_refuses_what_cannot_be_processed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(3);
    let unconsumed = Depot::<Op>::hashed("unconsumed", 3, |op| op.key).expect("depot");
    let engine = Engine::builder(dir.path())
        .options(EngineOptions::default())
        .depot(&ledger.ops)
        .depot(&unconsumed)
        .topology(ledger.topology.clone())
        .open()
        .expect("open");
    let served = serve(engine).await;
    let mut client = client(&served.address).await;

    // Keys 1, 2, 1, 1: the ledger's outcome is the key's running total.
    let answers = client
        .append_and_wait::<_, i64>(
            &ledger.ops,
            &[op(1), op(2), op(1), op(1)],
            common::TOPOLOGY,
            Duration::from_secs(10),
        )
        .await
        .expect("append and wait");
    let totals: Vec<Option<i64>> = answers
        .iter()
        .map(|(_, outcome)| outcome.as_ref().map(|o| o.value))
        .collect();
    assert_eq!(totals, [Some(1), Some(1), Some(2), Some(3)]);
    for (id, outcome) in &answers {
        let read = client
            .outcome::<i64>(common::TOPOLOGY, *id)
            .await
            .expect("outcome")
            .expect("recorded");
        let outcome = outcome.as_ref().expect("answered");
        assert_eq!(
            (read.batch_id, read.value),
            (outcome.batch_id, outcome.value),
            "the answer carries the stored outcome of {id:?}"
        );
    }
    assert_eq!(stored_records(&served.engine, &ledger), 4);

    // Without the outcomes: the positions, and a batch at or after the one that processed
    // them, whose effects any read now sees.
    let (ids, batch_id) = client
        .append_and_wait_for(
            &ledger.ops,
            &[op(2), op(7)],
            common::TOPOLOGY,
            Duration::from_secs(10),
        )
        .await
        .expect("append and wait for");
    assert_eq!(ids.len(), 2);
    let outcome = client
        .outcome::<i64>(common::TOPOLOGY, ids[1])
        .await
        .expect("outcome")
        .expect("recorded: the records were processed");
    assert!(
        batch_id >= outcome.batch_id,
        "{batch_id} < {}",
        outcome.batch_id
    );
    let (total, _) = client
        .get(&ledger.totals, &2, common::TOPOLOGY)
        .await
        .expect("get");
    assert_eq!(total, Some(2), "the second add to key 2 is visible");
    assert_eq!(stored_records(&served.engine, &ledger), 6);

    // No records: nothing to wait for, and nothing appended.
    let none = client
        .append_and_wait::<_, i64>(&ledger.ops, &[], common::TOPOLOGY, Duration::from_secs(1))
        .await
        .expect("empty call");
    assert!(none.is_empty());

    // Refused before the append: the records are not stored, and a later call still works.
    let refused = client
        .append_and_wait::<_, i64>(
            &unconsumed,
            &[op(5)],
            common::TOPOLOGY,
            Duration::from_secs(1),
        )
        .await;
    assert!(
        matches!(refused, Err(ClientError::Server(ref e))
            if e.kind == WireErrorKind::Refused && e.message.contains("does not consume")),
        "{refused:?}"
    );
    let unknown = client
        .append_and_wait::<_, i64>(&ledger.ops, &[op(5)], "no-such", Duration::from_secs(1))
        .await;
    assert!(
        matches!(unknown, Err(ClientError::Server(ref e))
            if e.kind == WireErrorKind::Refused && e.message.contains("unknown topology")),
        "{unknown:?}"
    );
    assert_eq!(stored_records(&served.engine, &ledger), 6);
    assert!(served
        .engine
        .read_depot(&unconsumed, 0, 0, usize::MAX)
        .expect("read")
        .is_empty());
    let after = client
        .append_and_wait::<_, i64>(
            &ledger.ops,
            &[op(2)],
            common::TOPOLOGY,
            Duration::from_secs(10),
        )
        .await
        .expect("append and wait after refusals");
    assert_eq!(after[0].1.as_ref().map(|o| o.value), Some(3));

    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_wait_says_where_the_appended_records_are() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(2);
    // Batches run only when asked: the wait times out.
    let engine = common::open(dir.path(), &ledger, EngineOptions::manual()).expect("open");
    let served = serve(engine).await;
    let mut client = client(&served.address).await;

    let failed = client
        .append_and_wait::<_, i64>(
            &ledger.ops,
            &[op(1), op(2)],
            common::TOPOLOGY,
            Duration::from_millis(50),
        )
        .await;
    let Err(ClientError::AfterAppend { records, error }) = failed else {
        panic!("expected AfterAppend, got {failed:?}");
    };
    assert!(
        matches!(*error, ClientError::Server(ref e) if e.kind == WireErrorKind::Timeout),
        "{error:?}"
    );
    assert_eq!(records.len(), 2);
    assert_eq!(
        stored_records(&served.engine, &ledger),
        2,
        "the records are durable"
    );
    // The call was answered: its sequence is spent, and the next call is a new one.
    let next = client
        .append(&ledger.ops, &[op(3)])
        .await
        .expect("next append");
    assert!(!records.contains(&next[0]));
    assert_eq!(stored_records(&served.engine, &ledger), 3);

    served
        .engine
        .run_batch(common::TOPOLOGY)
        .expect("batch")
        .expect("records to process");
    client
        .wait_for(common::TOPOLOGY, records[1], Duration::from_secs(5))
        .await
        .expect("processed once a batch ran");
    let outcome = client
        .outcome::<i64>(common::TOPOLOGY, records[0])
        .await
        .expect("outcome")
        .expect("recorded");
    assert_eq!(outcome.value, 1);

    served.stop().await;
}

/// A bare connection that has sent a handshake at `protocol`, and the server's reply.
async fn connect_raw(
    address: &str,
    protocol: u32,
) -> (BufReader<OwnedReadHalf>, OwnedWriteHalf, ServerFrame) {
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let (read_half, mut write_half) = stream.into_split();
    let mut reader = BufReader::new(read_half);
    let hello = ClientFrame::Hello {
        protocol,
        token: None,
    };
    write_frame(&mut write_half, &hello, 1 << 16)
        .await
        .expect("hello");
    write_half.flush().await.expect("flush");
    let reply = read_frame::<_, ServerFrame>(&mut reader, 1 << 16)
        .await
        .expect("reply")
        .expect("a frame");
    (reader, write_half, reply)
}

/// The server's answer to a bare handshake at `protocol`.
async fn handshake(address: &str, protocol: u32) -> ServerFrame {
    connect_raw(address, protocol).await.2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_clients_are_accepted_and_unknown_versions_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(1);
    let engine = common::open(dir.path(), &ledger, EngineOptions::default()).expect("open");
    let served = serve(engine).await;

    for protocol in [PROTOCOL_VERSION_MIN, PROTOCOL_VERSION] {
        let reply = handshake(&served.address, protocol).await;
        assert!(
            matches!(reply, ServerFrame::Welcome { protocol: p, .. } if p == protocol),
            "version {protocol} is answered in kind: {reply:?}"
        );
    }
    for protocol in [PROTOCOL_VERSION_MIN - 1, PROTOCOL_VERSION + 1] {
        let reply = handshake(&served.address, protocol).await;
        assert!(
            matches!(reply, ServerFrame::Fatal { ref message }
                if message.contains("not supported")),
            "version {protocol}: {reply:?}"
        );
    }

    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_come_inline_up_to_half_a_frame_and_the_client_reads_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(2);
    let engine = common::open(dir.path(), &ledger, EngineOptions::default()).expect("open");
    let mut config = ServerConfig::default();
    // Half a frame, less 100 positions at their largest, leaves room for a few dozen of the
    // ledger's outcomes.
    config.frame_bytes_max = 6144;
    let served = serve_with(engine, config).await;
    let address = served.address.clone();

    // On the wire: one answer, with the positions of all and the outcomes of the first.
    let ops: Vec<Op> = (0..100).map(|i| op(i % 10)).collect();
    let (mut reader, mut write_half, welcome) = connect_raw(&address, PROTOCOL_VERSION).await;
    assert!(
        matches!(welcome, ServerFrame::Welcome { .. }),
        "{welcome:?}"
    );
    let request = ClientFrame::Request {
        id: 1,
        request: Request::AppendAndWait {
            depot: "ops".to_string(),
            records: ops
                .iter()
                .map(|op| ledger.ops.encode(op).expect("encode"))
                .collect(),
            producer: None,
            topology: common::TOPOLOGY.to_string(),
            timeout_ms: 10_000,
            outcomes: true,
        },
    };
    write_frame(&mut write_half, &request, 6144)
        .await
        .expect("request");
    write_half.flush().await.expect("flush");
    let answer = read_frame::<_, ServerFrame>(&mut reader, 6144)
        .await
        .expect("answer")
        .expect("a frame");
    let ServerFrame::Response {
        id: 1,
        result:
            Ok(Response::AppendedAndWaited {
                records,
                visible: Ok(visible),
            }),
    } = answer
    else {
        panic!("unexpected answer {answer:?}");
    };
    assert_eq!(records.len(), 100);
    let inline = visible.outcomes.len();
    assert!(
        (10..100).contains(&inline),
        "{inline} outcomes inline: some, not all"
    );
    assert!(visible.outcomes.iter().all(Option::is_some));

    // Through the client: every outcome, the ones past the inline part read one by one.
    let mut client = client(&address).await;
    let answers = client
        .append_and_wait::<_, i64>(&ledger.ops, &ops, common::TOPOLOGY, Duration::from_secs(10))
        .await
        .expect("append and wait");
    assert_eq!(answers.len(), 100);
    // Each key got 10 adds in the raw call; these are its 11th to 20th.
    let mut expected = std::collections::BTreeMap::new();
    for (op, (_, outcome)) in ops.iter().zip(&answers) {
        let total = expected.entry(op.key).or_insert(10);
        *total += 1;
        assert_eq!(
            outcome.as_ref().map(|o| o.value),
            Some(*total),
            "key {}",
            op.key
        );
    }

    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_topology_fails_the_wait_and_then_refuses_before_appending() {
    let dir = tempfile::tempdir().expect("tempdir");
    let common::Sloppy {
        events,
        state,
        topology,
    } = common::sloppy();
    let engine = Engine::builder(dir.path())
        .depot(&events)
        .topology(topology)
        .open()
        .expect("open");
    let misplaced = common::misplaced_event(&state);
    let served = serve(engine).await;
    let mut client = client(&served.address).await;

    let failed = client
        .append_and_wait_for(&events, &[misplaced], "sloppy", Duration::from_secs(10))
        .await;
    let Err(ClientError::AfterAppend { records, error }) = failed else {
        panic!("expected AfterAppend, got {failed:?}");
    };
    assert!(
        matches!(*error, ClientError::Server(ref e) if e.kind == WireErrorKind::Stopped),
        "{error:?}"
    );
    let stored = |engine: &Engine| -> usize {
        (0..4)
            .map(|p| {
                engine
                    .read_depot(&events, p, 0, usize::MAX)
                    .expect("read")
                    .len()
            })
            .sum()
    };
    assert_eq!(stored(&served.engine), 1);
    assert_eq!(records.len(), 1);

    // Now the topology is known to have stopped: refused before anything is written.
    let refused = client
        .append_and_wait_for(&events, &[misplaced + 1], "sloppy", Duration::from_secs(10))
        .await;
    assert!(
        matches!(refused, Err(ClientError::Server(ref e)) if e.kind == WireErrorKind::Stopped),
        "{refused:?}"
    );
    assert_eq!(
        stored(&served.engine),
        1,
        "nothing appended for a stopped topology"
    );

    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_cut_short_by_a_poisoned_engine_is_waited_out_then_names_the_positions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(2);
    let faults = StorageFaults::new();
    let mut options = EngineOptions::default();
    options.storage_faults = Some(faults.clone());
    let engine = common::open(dir.path(), &ledger, options).expect("open");
    let served = serve(engine).await;
    let mut config = ClientConfig::default();
    config.retry_for = Duration::from_millis(500);
    let mut client = Client::connect(&served.address, config)
        .await
        .expect("connect");

    // The append is durable; the batch's commit fails and poisons the engine, so the wait
    // is answered `Unavailable`. The client keeps waiting, as `wait_for` does, through its
    // retry budget (a restarted server could have answered), then reports the positions.
    faults.fail_next(DurableWrite::Commit, WriteFault::NotWritten);
    let failed = client
        .append_and_wait_for(
            &ledger.ops,
            &[op(1)],
            common::TOPOLOGY,
            Duration::from_secs(10),
        )
        .await;
    let Err(ClientError::AfterAppend { records, error }) = failed else {
        panic!("expected AfterAppend, got {failed:?}");
    };
    assert!(
        matches!(*error, ClientError::Unreachable(_)),
        "the fallback wait ran out of retries: {error:?}"
    );
    assert_eq!(records.len(), 1);
    assert_eq!(stored_records(&served.engine, &ledger), 1);

    // Poisoned before the append: refused (and retried, then given up) with nothing written.
    let refused = client
        .append_and_wait_for(
            &ledger.ops,
            &[op(2)],
            common::TOPOLOGY,
            Duration::from_secs(10),
        )
        .await;
    assert!(
        matches!(refused, Err(ClientError::Unreachable(_))),
        "{refused:?}"
    );
    assert_eq!(stored_records(&served.engine, &ledger), 1);

    served.stop().await;
}

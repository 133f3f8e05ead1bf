//! `Client::append_and_wait` and `append_and_wait_for` over the server's one-round-trip
//! request: positions, batch and (if asked) outcomes in one answer; a topology that would never process the records is refused before
//! anything is written; a wait that fails after the append says where the records are; an
//! older client's protocol version is still accepted.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{ledger, stored_records, Op};
use lockstep::net::{
    read_frame, write_frame, Client, ClientConfig, ClientError, ClientFrame, Server, ServerConfig,
    ServerFrame, WireErrorKind, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN,
};
use lockstep::{Depot, Engine, EngineOptions};
use tokio::io::{AsyncWriteExt, BufReader};

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

async fn serve(engine: Engine) -> Served {
    let engine = Arc::new(engine);
    let mut config = ServerConfig::default();
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

    let _ = served.stop.send(());
    served.serving.await.expect("join").expect("serve");
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
    let Err(ClientError::NotVisible { records, error }) = failed else {
        panic!("expected NotVisible, got {failed:?}");
    };
    assert_eq!(error.kind, WireErrorKind::Timeout);
    assert_eq!(records.len(), 2);
    assert_eq!(
        stored_records(&served.engine, &ledger),
        2,
        "the records are durable"
    );

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

    let _ = served.stop.send(());
    served.serving.await.expect("join").expect("serve");
}

/// The server's answer to a bare handshake at `protocol`.
async fn handshake(address: &str, protocol: u32) -> ServerFrame {
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let (read_half, mut write_half) = stream.into_split();
    let hello = ClientFrame::Hello {
        protocol,
        token: None,
    };
    write_frame(&mut write_half, &hello, 1 << 16)
        .await
        .expect("hello");
    write_half.flush().await.expect("flush");
    read_frame::<_, ServerFrame>(&mut BufReader::new(read_half), 1 << 16)
        .await
        .expect("reply")
        .expect("a frame")
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
            matches!(reply, ServerFrame::Welcome { protocol: p, .. } if p == PROTOCOL_VERSION),
            "version {protocol}: {reply:?}"
        );
    }
    for protocol in [PROTOCOL_VERSION_MIN - 1, PROTOCOL_VERSION + 1] {
        let reply = handshake(&served.address, protocol).await;
        assert!(
            matches!(reply, ServerFrame::Fatal { ref message } if message.contains("not supported")),
            "version {protocol}: {reply:?}"
        );
    }

    let _ = served.stop.send(());
    served.serving.await.expect("join").expect("serve");
}

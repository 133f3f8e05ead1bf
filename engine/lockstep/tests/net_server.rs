//! The network server and client: append, wait, outcomes and snapshot reads over TCP; a wrong
//! token, garbage and oversize frames are refused without harming other connections; a client
//! retries an append through a server restart and it is applied once; an answer over the
//! client's frame limit fails that call only (the client drops the connection it was on).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{ledger, open, Op};
use lockstep::net::{Client, ClientConfig, ClientError, Read, ReadResult, Server, ServerConfig};
use lockstep::{encode_key, EngineOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(port: u16, token: Option<&str>) -> ServerConfig {
    let mut config = ServerConfig::default();
    config.listen = ([127, 0, 0, 1], port).into();
    config.token = token.map(str::to_string);
    config.frame_bytes_max = 1 << 20;
    config
}

fn client_config(token: Option<&str>, retry_for: Duration) -> ClientConfig {
    let mut config = ClientConfig::default();
    config.token = token.map(str::to_string);
    config.retry_for = retry_for;
    config
}

fn op(key: u32) -> Op {
    Op {
        key,
        amount: 1,
        mirror: key + 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_appends_and_consistent_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(3);
    let engine = Arc::new(open(dir.path(), &ledger, EngineOptions::default()).expect("open"));
    let server = Server::bind(engine.clone(), config(0, Some("sesame")))
        .await
        .expect("bind");
    let address = server.local_addr().expect("addr").to_string();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async {
        let _ = stop_rx.await;
    }));

    // A wrong token is refused at the handshake and not retried.
    let refused = Client::connect(
        &address,
        client_config(Some("wrong"), Duration::from_secs(2)),
    )
    .await;
    assert!(
        matches!(refused, Err(ClientError::Refused(ref m)) if m.contains("authentication")),
        "{refused:?}"
    );

    let mut client = Client::connect(
        &address,
        client_config(Some("sesame"), Duration::from_secs(5)),
    )
    .await
    .expect("connect");
    let ids = client
        .append(&ledger.ops, &[op(1), op(2), op(1)])
        .await
        .expect("append");
    assert_eq!(ids.len(), 3);
    let batch = client
        .wait_for(common::TOPOLOGY, ids[2], Duration::from_secs(10))
        .await
        .expect("processed");
    assert!(batch >= 1);
    let outcome = client
        .outcome::<i64>(common::TOPOLOGY, ids[2])
        .await
        .expect("outcome")
        .expect("recorded");
    assert_eq!(outcome.value, 2, "second add to key 1");
    let answers = client
        .append_and_wait::<_, i64>(
            &ledger.ops,
            &[op(2)],
            common::TOPOLOGY,
            Duration::from_secs(10),
        )
        .await
        .expect("append and wait");
    assert_eq!(
        answers[0].1.as_ref().map(|o| o.value),
        Some(2),
        "second add to key 2"
    );
    let (total, at_batch) = client
        .get(&ledger.totals, &2, common::TOPOLOGY)
        .await
        .expect("get");
    assert_eq!(total, Some(2));
    assert!(at_batch >= answers[0].1.as_ref().map_or(0, |o| o.batch_id));

    // A garbage frame and an oversize frame each close only their own connection.
    let mut garbage = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    garbage
        .write_all(&[0, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef])
        .await
        .expect("write");
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), garbage.read_to_end(&mut reply)).await;
    assert!(
        String::from_utf8_lossy(&reply).contains("malformed"),
        "{reply:?}"
    );
    let mut oversize = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    oversize
        .write_all(&u32::MAX.to_be_bytes())
        .await
        .expect("write");
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), oversize.read_to_end(&mut reply)).await;
    assert!(
        String::from_utf8_lossy(&reply).contains("exceeds"),
        "{reply:?}"
    );

    // The first client is unharmed; its reads come from one snapshot.
    let ids = client
        .append(&ledger.ops, &[op(3)])
        .await
        .expect("append after garbage");
    client
        .wait_for(common::TOPOLOGY, ids[0], Duration::from_secs(10))
        .await
        .expect("processed");
    let results = client
        .read(vec![
            Read::Get {
                pstate: "totals".into(),
                key: encode_key(&1u32).expect("key"),
            },
            Read::Scan {
                pstate: "totals".into(),
            },
            Read::BatchId {
                topology: common::TOPOLOGY.into(),
            },
        ])
        .await
        .expect("read");
    let ReadResult::Value(Some(bytes)) = &results[0] else {
        panic!("no total for key 1: {results:?}");
    };
    assert_eq!(lockstep_core_decode::<i64>(bytes), 2);
    let ReadResult::Entries(entries) = &results[1] else {
        panic!("{results:?}");
    };
    assert_eq!(entries.len(), 3, "keys 1, 2 and 3");
    assert!(matches!(results[2], ReadResult::Batch(b) if b >= 1));

    // Unknown names are refused, not fatal.
    let unknown = client
        .read(vec![Read::Scan {
            pstate: "nope".into(),
        }])
        .await;
    assert!(
        matches!(unknown, Err(ClientError::Server(_))),
        "{unknown:?}"
    );
    let _ = stop_tx.send(());
    serving.await.expect("join").expect("serve");
}

fn lockstep_core_decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> T {
    lockstep::decode_envelope(bytes).expect("decodes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_retried_through_a_restart_is_applied_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(2);
    // Reserve a port, then serve on it twice.
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("probe");
        probe.local_addr().expect("addr").port()
    };
    let start = move |dir: std::path::PathBuf, ledger: common::Ledger| async move {
        let engine = Arc::new(open(&dir, &ledger, EngineOptions::default()).expect("open"));
        let server = Server::bind(engine, config(port, None))
            .await
            .expect("bind");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stop_rx.await;
        }));
        (stop_tx, task)
    };
    let (stop, task) = start(dir.path().to_path_buf(), ledger.clone()).await;
    let address = format!("127.0.0.1:{port}");
    let mut client = Client::connect(&address, client_config(None, Duration::from_secs(20)))
        .await
        .expect("connect");
    client
        .append(&ledger.ops, &[op(1)])
        .await
        .expect("first append");

    // Stop the server; start it again a little later while the client is retrying.
    let _ = stop.send(());
    task.await.expect("join").expect("serve");
    let restart_dir = dir.path().to_path_buf();
    let restart_ledger = ledger.clone();
    let restarted = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        start(restart_dir, restart_ledger).await
    });
    let ids = client
        .append(&ledger.ops, &[op(1), op(1)])
        .await
        .expect("append through restart");
    let last = *ids.last().expect("ids");
    client
        .wait_for(common::TOPOLOGY, last, Duration::from_secs(10))
        .await
        .expect("processed");
    let outcome = client
        .outcome::<i64>(common::TOPOLOGY, last)
        .await
        .expect("outcome")
        .expect("recorded");
    assert_eq!(outcome.value, 3, "three adds to key 1, none twice");
    let (stop, task) = restarted.await.expect("restart");
    let _ = stop.send(());
    task.await.expect("join").expect("serve");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_over_the_clients_frame_limit_fails_that_call_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(2);
    let engine = Arc::new(open(dir.path(), &ledger, EngineOptions::default()).expect("open"));
    let server = Server::bind(engine.clone(), config(0, None))
        .await
        .expect("bind");
    let address = server.local_addr().expect("addr").to_string();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async {
        let _ = stop_rx.await;
    }));

    // 200 keys' totals: a scan answer of a few kilobytes.
    let mut loader = Client::connect(&address, client_config(None, Duration::from_secs(5)))
        .await
        .expect("connect");
    let ops: Vec<Op> = (0..200).map(op).collect();
    let ids = loader.append(&ledger.ops, &ops).await.expect("append");
    loader
        .wait_for(common::TOPOLOGY, ids[199], Duration::from_secs(10))
        .await
        .expect("processed");

    let mut small = client_config(None, Duration::from_secs(5));
    small.frame_bytes_max = 512;
    let mut client = Client::connect(&address, small).await.expect("connect");
    let read = client
        .read(vec![Read::Scan {
            pstate: "totals".to_string(),
        }])
        .await;
    assert!(matches!(read, Err(ClientError::Protocol(_))), "{read:?}");
    // The rest of that frame is still on its connection; the next call must not read it as
    // an answer.
    let next = client
        .append(&ledger.ops, &[op(1)])
        .await
        .expect("the next call works");
    assert_eq!(next.len(), 1);
    let batch = client
        .wait_for(common::TOPOLOGY, next[0], Duration::from_secs(10))
        .await
        .expect("and the one after");
    assert!(batch >= 1);

    let _ = stop_tx.send(());
    serving.await.expect("join").expect("serve");
}

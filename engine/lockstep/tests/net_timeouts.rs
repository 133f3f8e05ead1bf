//! Connections that go quiet: the server closes idle connections and the client resends on a
//! new one; a half-open connection (a black hole in between) cannot hold a client call past
//! its request timeout, and an append (or append-and-wait) whose answer it swallowed is resent
//! and stored once; a request larger than the server's whole request budget is still served
//! rather than waiting forever.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{ledger, open, Ledger, Op};
use lockstep::net::{Client, ClientConfig, ClientError, Server, ServerConfig};
use lockstep::{Engine, EngineOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn op(key: u32) -> Op {
    Op {
        key,
        amount: 1,
        mirror: key + 1,
    }
}

struct Running {
    address: String,
    engine: Arc<Engine>,
    ledger: Ledger,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn serve(config: ServerConfig) -> Running {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = ledger(2);
    let engine = Arc::new(open(dir.path(), &ledger, EngineOptions::default()).expect("open"));
    let server = Server::bind(engine.clone(), config).await.expect("bind");
    let address = server.local_addr().expect("addr").to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    Running {
        address,
        engine,
        ledger,
        _dir: dir,
        _stop: stop,
    }
}

fn server_config() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.listen = ([127, 0, 0, 1], 0).into();
    config
}

fn client_config(request_timeout: Duration, retry_for: Duration) -> ClientConfig {
    let mut config = ClientConfig::default();
    config.request_timeout = request_timeout;
    config.retry_for = retry_for;
    config
}

/// What the proxy swallows: bytes towards the server, and bytes back to the client.
#[derive(Default)]
struct BlackHole {
    requests: AtomicBool,
    answers: AtomicBool,
}

/// A TCP proxy that swallows the bytes its black hole says and keeps the sockets open: what a
/// dead peer behind a NAT, or a pulled cable, looks like.
async fn proxy(upstream: String, black_hole: Arc<BlackHole>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let address = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(&upstream).await else {
                continue;
            };
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            let hole = black_hole.clone();
            tokio::spawn(pump(client_read, server_write, move || {
                hole.requests.load(Ordering::Acquire)
            }));
            let hole = black_hole.clone();
            tokio::spawn(pump(server_read, client_write, move || {
                hole.answers.load(Ordering::Acquire)
            }));
        }
    });
    address
}

/// A server, and a client connected to it through a proxy that swallows every answer for the
/// next second (the returned task lets them through again). The client gives up on an answer
/// after 300 ms and retries for 20 s.
async fn swallowing_answers_for_a_second() -> (Running, Client, tokio::task::JoinHandle<()>) {
    let running = serve(server_config()).await;
    let black_hole = Arc::new(BlackHole::default());
    let address = proxy(running.address.clone(), black_hole.clone()).await;
    let client = Client::connect(
        &address,
        client_config(Duration::from_millis(300), Duration::from_secs(20)),
    )
    .await
    .expect("connect");
    black_hole.answers.store(true, Ordering::Release);
    let healer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        black_hole.answers.store(false, Ordering::Release);
    });
    (running, client, healer)
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    swallow: impl Fn() -> bool,
) {
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if swallow() {
            continue;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_and_the_next_call_reconnects() {
    let mut config = server_config();
    config.idle_timeout = Duration::from_millis(200);
    let running = serve(config).await;
    let mut client = Client::connect(
        &running.address,
        client_config(Duration::from_secs(5), Duration::ZERO),
    )
    .await
    .expect("connect");
    client
        .append(&running.ledger.ops, &[op(1)])
        .await
        .expect("first append");
    tokio::time::sleep(Duration::from_millis(600)).await;
    // The server closed the connection; with no retry budget at all, the call still succeeds
    // by resending once on a new connection.
    let ids = client
        .append(&running.ledger.ops, &[op(2)])
        .await
        .expect("append after the idle close");
    assert_eq!(ids.len(), 1);
    assert_eq!(
        running
            .engine
            .depot_next_offset(&running.ledger.ops, ids[0].partition)
            .expect("head"),
        ids[0].offset + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_cannot_hold_a_call_past_its_request_timeout() {
    let running = serve(server_config()).await;
    let black_hole = Arc::new(BlackHole::default());
    let address = proxy(running.address.clone(), black_hole.clone()).await;
    let request_timeout = Duration::from_millis(300);
    let mut client = Client::connect(&address, client_config(request_timeout, Duration::ZERO))
        .await
        .expect("connect");
    client
        .append(&running.ledger.ops, &[op(1)])
        .await
        .expect("append before the black hole");

    black_hole.requests.store(true, Ordering::Release);
    black_hole.answers.store(true, Ordering::Release);
    let started = Instant::now();
    let result = client.append(&running.ledger.ops, &[op(2)]).await;
    let waited = started.elapsed();
    assert!(
        matches!(result, Err(ClientError::Unreachable(_))),
        "{result:?}"
    );
    // One attempt: a timeout is not a closed connection, so there is no free resend.
    assert!(waited < Duration::from_secs(2), "waited {waited:?}");

    // Once the path heals, the same client reconnects on its next call, even with no retry
    // budget at all.
    black_hole.requests.store(false, Ordering::Release);
    black_hole.answers.store(false, Ordering::Release);
    client
        .append(&running.ledger.ops, &[op(3)])
        .await
        .expect("the next call reconnects");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_lost_in_a_black_hole_are_recovered_by_resending_once() {
    // The request reaches the server and is made durable; its answer is lost, and so are the
    // handshakes of the reconnections, until the black hole heals.
    let (running, mut client, healer) = swallowing_answers_for_a_second().await;
    let ids = client
        .append(&running.ledger.ops, &[op(7)])
        .await
        .expect("the call outlives the black hole");
    healer.await.expect("healer");
    let stored: Vec<Op> = running
        .engine
        .read_depot(&running.ledger.ops, ids[0].partition, 0, usize::MAX)
        .expect("read depot")
        .into_iter()
        .map(|(_, op)| op)
        .filter(|stored| stored.key == 7)
        .collect();
    assert_eq!(stored.len(), 1, "resent, but stored once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_larger_than_the_whole_budget_is_still_served() {
    let mut config = server_config();
    config.request_bytes_max = 1024;
    let running = serve(config).await;
    let mut client = Client::connect(
        &running.address,
        client_config(Duration::from_secs(5), Duration::ZERO),
    )
    .await
    .expect("connect");
    let ops: Vec<Op> = (0..2_000).map(op).collect();
    let ids = tokio::time::timeout(
        Duration::from_secs(10),
        client.append(&running.ledger.ops, &ops),
    )
    .await
    .expect("not stuck waiting for budget")
    .expect("append");
    assert_eq!(ids.len(), ops.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_and_wait_whose_answer_is_lost_is_resent_and_stored_once() {
    // The records are appended and processed, and the answer is lost: the resend (same
    // producer sequence) must get the same positions back, not append the records again.
    let (running, mut client, healer) = swallowing_answers_for_a_second().await;
    let started = Instant::now();
    let (ids, _batch_id) = client
        .append_and_wait_for(
            &running.ledger.ops,
            &[op(9)],
            common::TOPOLOGY,
            Duration::from_millis(500),
        )
        .await
        .expect("the call outlives the black hole");
    // Answered only after the first attempt's answer timed out (300 ms + the 500 ms wait): so
    // it was the resend that was answered.
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
    healer.await.expect("healer");
    let stored: Vec<(u64, Op)> = running
        .engine
        .read_depot(&running.ledger.ops, ids[0].partition, 0, usize::MAX)
        .expect("read depot")
        .into_iter()
        .filter(|(_, stored)| stored.key == 9)
        .collect();
    assert_eq!(stored.len(), 1, "resent, but stored once");
    assert_eq!(
        stored[0].0, ids[0].offset,
        "the answer names the stored record"
    );
}

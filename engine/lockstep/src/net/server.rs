//! The TCP server: one task per connection, requests on a connection answered in order.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};

use super::proto::{
    decode_payload, read_frame, read_frame_length, read_payload, write_frame, ClientFrame,
    FrameError, Read, Request, Response, ServerFrame, Visible, WireError, WireErrorKind,
    FRAME_BYTES_MAX_DEFAULT, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN,
};
use crate::{Engine, Error, RecordId};

/// Server settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Where to listen (default `127.0.0.1:7420`; port 0 picks a free one).
    pub listen: SocketAddr,
    /// When set, clients must present it in the handshake.
    pub token: Option<String>,
    /// Largest frame accepted or sent.
    pub frame_bytes_max: usize,
    /// Connections served at once; more are told the server is busy and closed.
    pub connections_max: usize,
    /// How long a new connection has to complete its handshake.
    pub handshake_timeout: Duration,
    /// Longest wait a `WaitFor` or an `AppendAndWait` may ask for.
    pub wait_max: Duration,
    /// How long shutdown waits for connections to finish their current request.
    pub shutdown_grace: Duration,
    /// A connection that starts no frame for this long is closed (clients reconnect).
    pub idle_timeout: Duration,
    /// A frame must arrive whole within this of its length prefix, plus one second per
    /// `frame_bytes_per_second_min` bytes (no trickling bytes); an answer frame must be taken
    /// by the client within the same.
    pub frame_timeout: Duration,
    /// The slowest transfer rate a large frame is allowed.
    pub frame_bytes_per_second_min: usize,
    /// Request bytes being received or decoded at once, across every connection; further
    /// requests wait for room before they are read. Bounds the server's buffers for requests
    /// whatever the number of connections. (Bytes on the wire: a decoded request of many tiny
    /// elements takes several times its frame size.)
    pub request_bytes_max: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7420)),
            token: None,
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            connections_max: 1024,
            handshake_timeout: Duration::from_secs(10),
            wait_max: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
            frame_timeout: Duration::from_secs(30),
            frame_bytes_per_second_min: 1 << 20,
            request_bytes_max: 256 << 20,
        }
    }
}

/// A bound server; [`Server::run`] serves until shutdown.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    engine: Arc<Engine>,
    config: Arc<ServerConfig>,
}

/// Entries per `ReadEntries` frame, at most.
const READ_CHUNK_ENTRIES: usize = 1024;
/// Bytes per `ReadEntries` frame, about: a chunk closes once it passes this, well under the
/// frame limit.
const READ_CHUNK_BYTES: usize = 1 << 20;
/// Wire bytes an outcome in an `AppendedAndWaited` takes beyond its envelope, at most.
const OUTCOME_FRAMING_BYTES: usize = 16;
/// Wire bytes of a `RecordId`, at most (three varints).
const RECORD_ID_WIRE_BYTES_MAX: usize = 20;
/// Largest handshake frame: a stranger gets no large buffer before it has authenticated.
const HELLO_BYTES_MAX: usize = 4096;

impl Server {
    /// Binds the listening socket.
    pub async fn bind(engine: Arc<Engine>, config: ServerConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.listen).await?;
        Ok(Self {
            listener,
            engine,
            config: Arc::new(config),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes; then stops accepting, lets each connection finish the
    /// request it is on (up to the grace period), and returns. Dropping the engine afterwards
    /// finishes the in-flight batch and closes the database.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let slots = Arc::new(Semaphore::new(self.config.connections_max.max(1)));
        let budget = Arc::new(RequestBudget::new(self.config.request_bytes_max));
        let mut connections = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            // Out of file descriptors and the like: keep serving the others.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let engine = self.engine.clone();
                    let config = self.config.clone();
                    let stop = stop_rx.clone();
                    let budget = budget.clone();
                    match slots.clone().try_acquire_owned() {
                        Ok(slot) => {
                            connections.spawn(async move {
                                serve_connection(stream, engine, config, budget, stop).await;
                                drop(slot);
                            });
                        }
                        Err(_) => {
                            connections.spawn(async move {
                                refuse(stream, "server busy: too many connections", &config).await;
                            });
                        }
                    }
                    tracing::debug!(%peer, "accepted");
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        let _ = stop_tx.send(true);
        let grace = self.config.shutdown_grace;
        if tokio::time::timeout(grace, async {
            while connections.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            connections.abort_all();
        }
        Ok(())
    }
}

async fn refuse(stream: TcpStream, message: &str, config: &ServerConfig) {
    let mut writer = BufWriter::new(stream);
    let fatal = ServerFrame::Fatal {
        message: message.to_string(),
    };
    if write_frame(&mut writer, &fatal, config.frame_bytes_max)
        .await
        .is_ok()
    {
        let _ = writer.flush().await;
    }
}

async fn send(
    writer: &mut BufWriter<OwnedWriteHalf>,
    frame: &ServerFrame,
    config: &ServerConfig,
) -> Result<(), FrameError> {
    // A client that stops reading must not hold this connection's task forever.
    let limit = frame_time_limit(config, config.frame_bytes_max);
    tokio::time::timeout(limit, async {
        write_frame(writer, frame, config.frame_bytes_max).await?;
        writer.flush().await?;
        Ok(())
    })
    .await
    .map_err(|_| {
        FrameError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the client did not take an answer in time",
        ))
    })?
}

/// How long a frame of `bytes` may take to cross the connection.
fn frame_time_limit(config: &ServerConfig, bytes: usize) -> Duration {
    let rate = config.frame_bytes_per_second_min.max(1) as u64;
    config
        .frame_timeout
        .saturating_add(Duration::from_secs(bytes as u64 / rate))
}

fn token_accepted(expected: Option<&str>, presented: Option<&str>) -> bool {
    match (expected, presented) {
        (None, _) => true,
        (Some(_), None) => false,
        // Constant time in the content, so answer timing does not tell how much of a guess
        // was right.
        (Some(expected), Some(presented)) => bool::from(subtle::ConstantTimeEq::ct_eq(
            expected.as_bytes(),
            presented.as_bytes(),
        )),
    }
}

/// The server-wide budget of request bytes (`ServerConfig::request_bytes_max`).
#[derive(Debug)]
struct RequestBudget {
    bytes: Semaphore,
    /// Permits in all: a frame larger than the budget takes all of it rather than wait forever.
    capacity: u32,
}

impl RequestBudget {
    fn new(bytes_max: usize) -> Self {
        let capacity =
            u32::try_from(bytes_max.clamp(1, Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX);
        Self {
            bytes: Semaphore::new(capacity as usize),
            capacity,
        }
    }

    /// Waits for room for a frame of `bytes`.
    async fn reserve(&self, bytes: usize) -> Option<tokio::sync::SemaphorePermit<'_>> {
        let permits = u32::try_from(bytes)
            .unwrap_or(u32::MAX)
            .clamp(1, self.capacity);
        self.bytes.acquire_many(permits).await.ok()
    }
}

async fn serve_connection(
    stream: TcpStream,
    engine: Arc<Engine>,
    config: Arc<ServerConfig>,
    budget: Arc<RequestBudget>,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let (read_half, write_half) = stream.into_split();
    let mut reader = BufReader::new(read_half);
    let mut writer = BufWriter::new(write_half);
    let max = config.frame_bytes_max;

    // Handshake: version, then token.
    let hello = tokio::time::timeout(
        config.handshake_timeout,
        read_frame::<_, ClientFrame>(&mut reader, HELLO_BYTES_MAX),
    )
    .await;
    // The client's version, once accepted: the server answers in it.
    let mut agreed = PROTOCOL_VERSION;
    let refusal = match hello {
        Err(_) => Some("handshake timed out".to_string()),
        Ok(Ok(Some(ClientFrame::Hello { protocol, token }))) => {
            if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION).contains(&protocol) {
                Some(format!(
                    "protocol version {protocol} is not supported (server speaks \
                     {PROTOCOL_VERSION_MIN} to {PROTOCOL_VERSION})"
                ))
            } else if !token_accepted(config.token.as_deref(), token.as_deref()) {
                Some("authentication failed: wrong or missing token".to_string())
            } else {
                agreed = protocol;
                None
            }
        }
        Ok(Ok(Some(ClientFrame::Request { .. }))) => {
            Some("expected a Hello frame first".to_string())
        }
        Ok(Ok(None)) => return,
        Ok(Err(e)) => Some(e.to_string()),
    };
    if let Some(message) = refusal {
        tracing::info!(%message, "connection refused");
        let _ = send(&mut writer, &ServerFrame::Fatal { message }, &config).await;
        return;
    }
    let welcome = ServerFrame::Welcome {
        protocol: agreed,
        server: format!("lockstep {}", env!("CARGO_PKG_VERSION")),
    };
    if send(&mut writer, &welcome, &config).await.is_err() {
        return;
    }

    loop {
        let length = tokio::select! {
            length = tokio::time::timeout(config.idle_timeout, read_frame_length(&mut reader, max)) => length,
            _ = stop.changed() => return,
        };
        let length = match length {
            Ok(Ok(Some(length))) => length,
            Ok(Ok(None)) | Ok(Err(FrameError::Io(_))) => return,
            Err(_) => {
                // Closed without a word: a frame sent now would be read as the answer to the
                // client's next request. The client sees the close and reconnects.
                tracing::debug!(
                    idle_timeout_ms = config.idle_timeout.as_millis() as u64,
                    "closing an idle connection"
                );
                return;
            }
            Ok(Err(e)) => {
                tracing::info!(error = %e, "bad frame; closing connection");
                let message = e.to_string();
                let _ = send(&mut writer, &ServerFrame::Fatal { message }, &config).await;
                return;
            }
        };
        // Room for the request first, so the frames of many connections cannot together
        // exhaust memory; held while the frame is received and decoded, never while it is
        // served, so a client that stops reading its answers cannot hold it.
        let reserved = tokio::select! {
            reserved = budget.reserve(length) => reserved,
            _ = stop.changed() => return,
        };
        let Some(reserved) = reserved else {
            return;
        };
        let frame_limit = frame_time_limit(&config, length);
        let payload =
            match tokio::time::timeout(frame_limit, read_payload(&mut reader, length)).await {
                Ok(Ok(payload)) => payload,
                Ok(Err(_)) => return,
                Err(_) => {
                    let message = format!(
                        "a frame of {length} bytes did not arrive within {} ms",
                        frame_limit.as_millis()
                    );
                    tracing::info!(%message, "closing connection");
                    let _ = send(&mut writer, &ServerFrame::Fatal { message }, &config).await;
                    return;
                }
            };
        let decoded = decode_payload::<ClientFrame>(&payload);
        drop(payload);
        drop(reserved);
        match decoded {
            Ok(ClientFrame::Request { id, request }) => {
                if handle(id, request, &engine, &config, &mut writer)
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(ClientFrame::Hello { .. }) => {
                let message = "unexpected Hello after the handshake".to_string();
                let _ = send(&mut writer, &ServerFrame::Fatal { message }, &config).await;
                return;
            }
            Err(e) => {
                // Malformed: say why, then close this connection only.
                tracing::info!(error = %e, "bad frame; closing connection");
                let message = e.to_string();
                let _ = send(&mut writer, &ServerFrame::Fatal { message }, &config).await;
                return;
            }
        }
    }
}

fn wire_error(error: &Error) -> WireError {
    let kind = match error {
        Error::Poisoned { .. } | Error::Closed | Error::Store(_) => WireErrorKind::Unavailable,
        Error::StaleSequence { .. } | Error::SequenceReused { .. } => WireErrorKind::Stale,
        Error::TopologyStopped { .. } | Error::Batch { .. } => WireErrorKind::Stopped,
        Error::Timeout { .. } => WireErrorKind::Timeout,
        _ => WireErrorKind::Refused,
    };
    WireError {
        kind,
        message: error.to_string(),
    }
}

async fn handle(
    id: u64,
    request: Request,
    engine: &Arc<Engine>,
    config: &ServerConfig,
    writer: &mut BufWriter<OwnedWriteHalf>,
) -> Result<(), FrameError> {
    let result = match request {
        Request::Append {
            depot,
            records,
            producer,
        } => engine
            .append_encoded(&depot, records, producer)
            .await
            .map(Response::Appended),
        Request::WaitFor {
            topology,
            record,
            timeout_ms,
        } => {
            let timeout = Duration::from_millis(timeout_ms).min(config.wait_max);
            engine
                .wait_for_async(&topology, record, timeout)
                .await
                .map(|batch_id| Response::Waited { batch_id })
        }
        Request::Outcome { topology, record } => {
            let engine = engine.clone();
            blocking(move || {
                let snapshot = engine.snapshot()?;
                snapshot
                    .raw_outcome(&topology, record)
                    .map(Response::Outcome)
            })
            .await
        }
        Request::Read { reads } => return stream_reads(id, reads, engine, config, writer).await,
        Request::AppendAndWait {
            depot,
            records,
            producer,
            topology,
            timeout_ms,
            outcomes,
        } => {
            let timeout = Duration::from_millis(timeout_ms).min(config.wait_max);
            let wait = Wait {
                topology,
                timeout,
                outcomes,
                answer_bytes_max: READ_CHUNK_BYTES.min(config.frame_bytes_max / 2),
            };
            append_and_wait(engine, &depot, records, producer, wait).await
        }
    };
    let frame = ServerFrame::Response {
        id,
        result: result.map_err(|e| wire_error(&e)),
    };
    send(writer, &frame, config).await
}

/// The wait half of an `AppendAndWait`.
struct Wait {
    topology: String,
    timeout: Duration,
    outcomes: bool,
    /// What the positions and outcomes may take on the wire: at most half a frame, so that
    /// the answer fits whatever else it carries.
    answer_bytes_max: usize,
}

/// Appends `records`, waits for the topology to process them and reads their outcomes if
/// asked. Fails only when nothing was appended; a failed wait is part of the answer, with the
/// positions.
async fn append_and_wait(
    engine: &Arc<Engine>,
    depot: &str,
    records: Vec<Vec<u8>>,
    producer: Option<(u64, u64)>,
    wait: Wait,
) -> Result<Response, Error> {
    let Wait {
        topology,
        timeout,
        outcomes,
        answer_bytes_max,
    } = wait;
    // A topology that will never process the records would leave the caller with records
    // appended and a wait that cannot succeed: refuse before writing.
    engine.check_consumes(&topology, depot)?;
    let appended = engine.append_encoded(depot, records, producer).await?;
    let visible = match appended.last() {
        // Records of one call are processed in append order: the last one is enough.
        Some(last) => match engine.wait_for_async(&topology, *last, timeout).await {
            Ok(batch_id) => {
                let outcomes = if outcomes {
                    read_outcomes(engine, topology, appended.clone(), answer_bytes_max).await
                } else {
                    Vec::new()
                };
                Ok(Visible { batch_id, outcomes })
            }
            Err(e) => Err(wire_error(&e)),
        },
        None => engine
            .subscribe(&topology)
            .map(|commits| Visible {
                batch_id: *commits.borrow(),
                outcomes: Vec::new(),
            })
            .map_err(|e| wire_error(&e)),
    };
    Ok(Response::AppendedAndWaited {
        records: appended,
        visible,
    })
}

/// The outcomes of the first `records`, in order, as many as fit in `answer_bytes_max` on the
/// wire beside the positions of all; fewer (even none) if one cannot be read: the client reads
/// those one by one and hears why.
async fn read_outcomes(
    engine: &Arc<Engine>,
    topology: String,
    records: Vec<RecordId>,
    answer_bytes_max: usize,
) -> Vec<Option<Vec<u8>>> {
    let engine = engine.clone();
    blocking(move || {
        let snapshot = engine.snapshot()?;
        let mut outcomes = Vec::with_capacity(records.len());
        let bytes_max =
            answer_bytes_max.saturating_sub(records.len().saturating_mul(RECORD_ID_WIRE_BYTES_MAX));
        let mut bytes = 0;
        for record in records {
            let Ok(outcome) = snapshot.raw_outcome(&topology, record) else {
                break;
            };
            // The envelope, and a generous allowance for its option tag and length prefix.
            bytes += outcome.as_ref().map_or(0, Vec::len) + OUTCOME_FRAMING_BYTES;
            if bytes > bytes_max {
                break;
            }
            outcomes.push(outcome);
        }
        Ok(outcomes)
    })
    .await
    .unwrap_or_default()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|_| Err(Error::Closed))
}

/// Runs the reads on a blocking thread against one snapshot and streams the answers.
async fn stream_reads(
    id: u64,
    reads: Vec<Read>,
    engine: &Arc<Engine>,
    config: &ServerConfig,
    writer: &mut BufWriter<OwnedWriteHalf>,
) -> Result<(), FrameError> {
    // A small bound: the reader waits for the socket instead of buffering a whole scan.
    let (tx, mut rx) = mpsc::channel::<Result<Response, Error>>(4);
    let engine = engine.clone();
    let producer = tokio::task::spawn_blocking(move || {
        let outcome = run_reads(&engine, reads, &tx);
        let last = outcome.map(|()| Response::ReadDone);
        let _ = tx.blocking_send(last);
    });
    while let Some(item) = rx.recv().await {
        // The stream ends with `ReadDone` or an error.
        let done = !matches!(
            item,
            Ok(Response::ReadValue { .. }
                | Response::ReadEntries { .. }
                | Response::ReadBatch { .. })
        );
        let frame = ServerFrame::Response {
            id,
            result: item.map_err(|e| wire_error(&e)),
        };
        send(writer, &frame, config).await?;
        if done {
            break;
        }
    }
    drop(rx);
    let _ = producer.await;
    Ok(())
}

fn run_reads(
    engine: &Engine,
    reads: Vec<Read>,
    tx: &mpsc::Sender<Result<Response, Error>>,
) -> Result<(), Error> {
    let snapshot = engine.snapshot()?;
    let emit = |response: Response| tx.blocking_send(Ok(response)).map_err(|_| Error::Closed);
    for (index, read) in reads.into_iter().enumerate() {
        let read_index = index as u32;
        match read {
            Read::Get { pstate, key } => {
                let value = snapshot.raw_get(&pstate, &key)?;
                emit(Response::ReadValue {
                    read: read_index,
                    value,
                })?;
            }
            Read::BatchId { topology } => {
                let batch_id = snapshot.batch_id(&topology)?;
                emit(Response::ReadBatch {
                    read: read_index,
                    batch_id,
                })?;
            }
            Read::Scan { pstate } => {
                let mut after: Option<Vec<u8>> = None;
                loop {
                    let page = snapshot.raw_scan(&pstate, after.as_deref(), READ_CHUNK_ENTRIES)?;
                    let full = page.len() == READ_CHUNK_ENTRIES;
                    after = page.last().map(|(key, _)| key.clone());
                    for entries in split_by_bytes(page) {
                        emit(Response::ReadEntries {
                            read: read_index,
                            entries,
                        })?;
                    }
                    if !full {
                        break;
                    }
                }
            }
            Read::SetMembers { pstate, key } => {
                let mut after: Option<Vec<u8>> = None;
                loop {
                    let page = snapshot.raw_set_members(
                        &pstate,
                        &key,
                        after.as_deref(),
                        READ_CHUNK_ENTRIES,
                    )?;
                    let full = page.len() == READ_CHUNK_ENTRIES;
                    after = page.last().cloned();
                    let entries = page
                        .into_iter()
                        .map(|element| (element, Vec::new()))
                        .collect();
                    for entries in split_by_bytes(entries) {
                        emit(Response::ReadEntries {
                            read: read_index,
                            entries,
                        })?;
                    }
                    if !full {
                        break;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Splits entries into chunks of about [`READ_CHUNK_BYTES`] each (at least one entry per chunk).
fn split_by_bytes(entries: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut chunks = Vec::new();
    let mut chunk = Vec::new();
    let mut bytes = 0;
    for entry in entries {
        bytes += entry.0.len() + entry.1.len();
        chunk.push(entry);
        if bytes >= READ_CHUNK_BYTES {
            chunks.push(std::mem::take(&mut chunk));
            bytes = 0;
        }
    }
    if !chunk.is_empty() || chunks.is_empty() {
        chunks.push(chunk);
    }
    chunks
}

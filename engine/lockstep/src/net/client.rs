//! The client: typed appends and reads over the network, retried through disconnects and
//! server restarts until a deadline, with idempotent appends so a retry never duplicates.

use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::proto::{
    read_frame, write_frame, ClientFrame, FrameError, Read, Request, Response, ServerFrame,
    Visible, WireError, WireErrorKind, FRAME_BYTES_MAX_DEFAULT, PROTOCOL_VERSION,
};
use crate::{Depot, RecordId};

/// Client settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Presented in the handshake.
    pub token: Option<String>,
    /// How long a call keeps retrying through connection failures (0: one attempt).
    pub retry_for: Duration,
    /// Largest frame sent or accepted. Keep it at least the server's: an answer larger than
    /// this is a `Protocol` error, after the server has acted on the request.
    pub frame_bytes_max: usize,
    /// Limit on one connection attempt.
    pub connect_timeout: Duration,
    /// How long to wait for any frame of an answer (beyond the wait a `wait_for` or an
    /// `append_and_wait` asks for) before the connection is deemed dead and the call retried,
    /// so a half-open connection cannot hold a call forever. A call lasts at most about
    /// `retry_for` plus one attempt (`request_timeout` plus the asked wait), plus one resend on
    /// a new connection when a connection kept from an earlier call turns out closed. (An
    /// `append_and_wait` whose engine closes mid-wait makes a second such call, a `wait_for`,
    /// for the rest of its timeout.)
    pub request_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            token: None,
            retry_for: Duration::ZERO,
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server could not be reached or the connection kept failing until the deadline. For
    /// an append this means *maybe*: the records may be durable; retrying the call with the
    /// same client resolves it without duplicating.
    #[error("server unreachable: {0}")]
    Unreachable(String),
    /// The server refused the handshake (wrong token, other protocol version). Not retried.
    #[error("connection refused by server: {0}")]
    Refused(String),
    /// The server answered the request with an error.
    #[error("server error: {0}")]
    Server(#[from] WireError),
    /// The server sent something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// [`Client::append_and_wait`] or [`Client::append_and_wait_for`] appended the records
    /// (they are durable at these positions), and then failed: the wait for the topology (it
    /// timed out, the topology stopped, the engine closed) or reading the outcomes. Calling it
    /// again would append the records again: wait for them ([`Client::wait_for`]) or read
    /// their outcomes ([`Client::outcome`]) instead.
    #[error("appended {} records, then: {error}", records.len())]
    AfterAppend {
        /// Where the records are.
        records: Vec<RecordId>,
        /// What failed after the append.
        error: Box<ClientError>,
    },
    /// A record, key or value did not encode or decode.
    #[error("codec: {0}")]
    Codec(String),
}

struct Connection {
    reader: BufReader<OwnedReadHalf>,
    writer: BufWriter<OwnedWriteHalf>,
    /// A call has completed on it: if it fails now, it may have been closed while idle.
    used: bool,
}

/// The answer to one [`Read`] of [`Client::read`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadResult {
    /// For `Get`: the stored value envelope.
    Value(Option<Vec<u8>>),
    /// For `Scan` (`(encoded key, value)`) and `SetMembers` (`(encoded element, empty)`).
    Entries(Vec<(Vec<u8>, Vec<u8>)>),
    /// For `BatchId`.
    Batch(u64),
}

/// A connection to a Lockstep server. One call at a time (`&mut self`); open several clients
/// for concurrency. Each client is an idempotent producer with a random id: its appends are
/// numbered, and a retried append is applied once, as long as the server still remembers the
/// client's producer id: for `EngineOptions::producer_expiry` after its last accepted append,
/// 24 hours by default. The client's own retries stop after `retry_for`; a call retried later
/// by the application must come within the expiry too.
pub struct Client {
    address: String,
    config: ClientConfig,
    connection: Option<Connection>,
    producer: u64,
    next_sequence: u64,
    next_request: u64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("address", &self.address)
            .field("producer", &self.producer)
            .finish_non_exhaustive()
    }
}

enum Attempt<T> {
    Done(Result<T, ClientError>),
    /// The connection failed: reconnect and try again if there is time.
    Retry(String),
    /// The connection turned out closed or reset (not merely slow).
    Closed(String),
}

fn random_producer_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS per process; mix in the time and the pid for clients
    // created in the same process.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}

impl Client {
    /// Connects (retrying until `config.retry_for` has passed) and completes the handshake.
    pub async fn connect(address: &str, config: ClientConfig) -> Result<Self, ClientError> {
        let mut client = Self {
            address: address.to_string(),
            config,
            connection: None,
            producer: random_producer_id(),
            next_sequence: 0,
            next_request: 0,
        };
        let deadline = Instant::now() + client.config.retry_for;
        let mut backoff = Duration::from_millis(20);
        loop {
            match client.open().await {
                Ok(connection) => {
                    client.connection = Some(connection);
                    return Ok(client);
                }
                Err(ClientError::Unreachable(message)) => {
                    if Instant::now() + backoff > deadline {
                        return Err(ClientError::Unreachable(message));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(other) => return Err(other),
            }
        }
    }

    /// This client's producer id.
    pub fn producer_id(&self) -> u64 {
        self.producer
    }

    async fn open(&self) -> Result<Connection, ClientError> {
        let unreachable =
            |e: &dyn std::fmt::Display| ClientError::Unreachable(format!("{}: {e}", self.address));
        let stream = tokio::time::timeout(
            self.config.connect_timeout,
            TcpStream::connect(&self.address),
        )
        .await
        .map_err(|_| unreachable(&"connect timed out"))?
        .map_err(|e| unreachable(&e))?;
        let _ = stream.set_nodelay(true);
        let (read_half, write_half) = stream.into_split();
        let mut connection = Connection {
            reader: BufReader::new(read_half),
            writer: BufWriter::new(write_half),
            used: false,
        };
        let hello = ClientFrame::Hello {
            protocol: PROTOCOL_VERSION,
            token: self.config.token.clone(),
        };
        let max = self.config.frame_bytes_max;
        write_frame(&mut connection.writer, &hello, max)
            .await
            .map_err(|e| unreachable(&e))?;
        connection
            .writer
            .flush()
            .await
            .map_err(|e| unreachable(&e))?;
        let reply = tokio::time::timeout(
            self.config.request_timeout,
            read_frame::<_, ServerFrame>(&mut connection.reader, max),
        )
        .await
        .map_err(|_| unreachable(&"no handshake reply"))?;
        match reply {
            Ok(Some(ServerFrame::Welcome { .. })) => Ok(connection),
            Ok(Some(ServerFrame::Fatal { message })) => {
                if message.starts_with("server busy") {
                    Err(ClientError::Unreachable(message))
                } else {
                    Err(ClientError::Refused(message))
                }
            }
            Ok(Some(other)) => Err(ClientError::Protocol(format!(
                "unexpected handshake reply {other:?}"
            ))),
            Ok(None) => Err(unreachable(&"closed during handshake")),
            Err(e) => Err(unreachable(&e)),
        }
    }

    /// Sends `request` and collects its answer frames, reconnecting and resending until the
    /// deadline when the connection fails. Safe because every request is idempotent: reads,
    /// waits, and appends (numbered per producer).
    async fn call(&mut self, request: Request) -> Result<Vec<Response>, ClientError> {
        let deadline = Instant::now() + self.config.retry_for;
        let mut backoff = Duration::from_millis(20);
        if self.connection.is_none() {
            // An earlier call failed: this one starts by reconnecting, whatever the deadline.
            match self.open().await {
                Ok(connection) => self.connection = Some(connection),
                Err(ClientError::Unreachable(_)) => {}
                Err(other) => return Err(other),
            }
        }
        // A connection kept from an earlier call may have been closed while idle (the server's
        // idle timeout, a restart): if it turns out closed, one immediate resend on a new
        // connection is allowed, whatever the deadline. Safe, as every request is idempotent.
        let mut resend_on_new_connection = self.connection.as_ref().is_some_and(|c| c.used);
        loop {
            let failure = match self.attempt(&request).await {
                Attempt::Done(result) => {
                    if let Some(connection) = self.connection.as_mut() {
                        connection.used = true;
                    }
                    return result;
                }
                Attempt::Closed(message) if std::mem::take(&mut resend_on_new_connection) => {
                    self.connection = None;
                    match self.open().await {
                        Ok(connection) => {
                            self.connection = Some(connection);
                            continue;
                        }
                        Err(ClientError::Unreachable(_)) => message,
                        Err(other) => return Err(other),
                    }
                }
                Attempt::Retry(message) | Attempt::Closed(message) => message,
            };
            resend_on_new_connection = false;
            self.connection = None;
            if Instant::now() + backoff > deadline {
                return Err(ClientError::Unreachable(failure));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            match self.open().await {
                Ok(connection) => self.connection = Some(connection),
                Err(ClientError::Unreachable(_)) => {}
                Err(other) => return Err(other),
            }
        }
    }

    async fn attempt(&mut self, request: &Request) -> Attempt<Vec<Response>> {
        let max = self.config.frame_bytes_max;
        self.next_request += 1;
        let id = self.next_request;
        let Some(connection) = self.connection.as_mut() else {
            return Attempt::Retry("not connected".to_string());
        };
        let frame = ClientFrame::Request {
            id,
            request: request.clone(),
        };
        let request_timeout = self.config.request_timeout;
        let sent = tokio::time::timeout(request_timeout, async {
            write_frame(&mut connection.writer, &frame, max).await?;
            connection.writer.flush().await?;
            Ok::<(), FrameError>(())
        })
        .await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(FrameError::Io(e))) => return Attempt::Closed(e.to_string()),
            Ok(Err(e)) => return Attempt::Done(Err(ClientError::Codec(e.to_string()))),
            Err(_) => return Attempt::Retry("sending the request timed out".to_string()),
        }
        let streaming = matches!(request, Request::Read { .. });
        // The server may legitimately hold a `wait_for` answer for as long as it was asked to.
        let asked_wait = match request {
            Request::WaitFor { timeout_ms, .. } | Request::AppendAndWait { timeout_ms, .. } => {
                Duration::from_millis(*timeout_ms)
            }
            _ => Duration::ZERO,
        };
        let frame_wait = request_timeout.saturating_add(asked_wait);
        let mut responses = Vec::new();
        loop {
            let Ok(frame) = tokio::time::timeout(
                frame_wait,
                read_frame::<_, ServerFrame>(&mut connection.reader, max),
            )
            .await
            else {
                return Attempt::Retry(format!("no answer within {} ms", frame_wait.as_millis()));
            };
            match frame {
                // Answers to an earlier call that was abandoned mid-way (its future dropped).
                Ok(Some(ServerFrame::Response { id: got, .. })) if got < id => continue,
                Ok(Some(ServerFrame::Response { id: got, result })) if got == id => match result {
                    Ok(Response::ReadDone) => return Attempt::Done(Ok(responses)),
                    Ok(response) => {
                        responses.push(response);
                        if !streaming {
                            return Attempt::Done(Ok(responses));
                        }
                    }
                    Err(error) if error.kind == WireErrorKind::Unavailable => {
                        // The engine is poisoned or closing: a restarted server may take it.
                        return Attempt::Retry(error.to_string());
                    }
                    Err(error) => return Attempt::Done(Err(ClientError::Server(error))),
                },
                // Busy is worth another try; any other fatal reply would repeat itself.
                Ok(Some(ServerFrame::Fatal { message })) if message.starts_with("server busy") => {
                    return Attempt::Retry(message)
                }
                Ok(Some(ServerFrame::Fatal { message })) => {
                    return Attempt::Done(Err(ClientError::Protocol(message)))
                }
                Ok(Some(other)) => {
                    // Out of step with the server: start afresh on a new connection.
                    self.connection = None;
                    return Attempt::Done(Err(ClientError::Protocol(format!(
                        "unexpected frame {other:?}"
                    ))));
                }
                Ok(None) => return Attempt::Closed("server closed the connection".to_string()),
                Err(FrameError::Io(e)) => return Attempt::Closed(e.to_string()),
                Err(e) => {
                    // An answer over this client's frame limit, or one that does not decode:
                    // what follows on the stream cannot be trusted to start a frame.
                    self.connection = None;
                    return Attempt::Done(Err(ClientError::Protocol(e.to_string())));
                }
            }
        }
    }

    /// Appends records to `depot`; returns their positions once durable. Idempotent: retried
    /// through failures until the deadline, applied once.
    pub async fn append<T>(
        &mut self,
        depot: &Depot<T>,
        records: &[T],
    ) -> Result<Vec<RecordId>, ClientError>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
    {
        let request = Request::Append {
            depot: depot.name().to_string(),
            records: encode_records(depot, records)?,
            producer: Some((self.producer, self.next_sequence)),
        };
        match self.call_appending(request).await? {
            Response::Appended(ids) => Ok(ids),
            other => Err(ClientError::Protocol(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }

    /// Sends a request that appends under this client's next sequence, and moves the sequence
    /// on if the answer is definite.
    async fn call_appending(&mut self, request: Request) -> Result<Response, ClientError> {
        let result = self.call(request).await;
        // Only a definite answer moves the sequence on. Otherwise the records may or may not be
        // stored: the caller's retry of the same records deduplicates, and other records under
        // the same sequence are refused (`SequenceReused`) rather than mistaken for a retry.
        if matches!(result, Ok(_) | Err(ClientError::Server(_))) {
            self.next_sequence += 1;
        }
        result?
            .pop()
            .ok_or_else(|| ClientError::Protocol("an empty answer".to_string()))
    }

    /// Waits until `topology` has processed `record`; returns its committed batch id.
    pub async fn wait_for(
        &mut self,
        topology: &str,
        record: RecordId,
        timeout: Duration,
    ) -> Result<u64, ClientError> {
        let request = Request::WaitFor {
            topology: topology.to_string(),
            record,
            timeout_ms: duration_ms(timeout),
        };
        match self.call(request).await?.pop() {
            Some(Response::Waited { batch_id }) => Ok(batch_id),
            other => Err(ClientError::Protocol(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }

    /// The outcome `topology` recorded for `record`, with the batch that recorded it. With
    /// depot retention on the server, the outcome of a trimmed record is deleted after it;
    /// reading it then fails with a `Refused` server error that says the record was trimmed.
    pub async fn outcome<O: DeserializeOwned>(
        &mut self,
        topology: &str,
        record: RecordId,
    ) -> Result<Option<crate::Outcome<O>>, ClientError> {
        let request = Request::Outcome {
            topology: topology.to_string(),
            record,
        };
        match self.call(request).await?.pop() {
            Some(Response::Outcome(envelope)) => decode_outcome(envelope),
            other => Err(ClientError::Protocol(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }

    /// Appends `records`, waits until `topology` has processed them, and returns each record's
    /// position with the outcome the topology recorded for it (if any): one round trip, and
    /// one more per outcome beyond those the answer carries (up to 1 MiB of them, and half the
    /// server's frame limit).
    ///
    /// The topology must consume `depot` and be running; the server checks that before
    /// appending. Idempotent like [`append`](Self::append) until the records are appended;
    /// once they are, any failure is [`ClientError::AfterAppend`], with their positions. If
    /// the engine closes during the wait, the wait goes on as a [`wait_for`](Self::wait_for)
    /// for the rest of `timeout`, through a restart within `retry_for`.
    pub async fn append_and_wait<T, O>(
        &mut self,
        depot: &Depot<T>,
        records: &[T],
        topology: &str,
        timeout: Duration,
    ) -> Result<Vec<(RecordId, Option<crate::Outcome<O>>)>, ClientError>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        O: DeserializeOwned,
    {
        let (appended, visible) = self
            .append_waiting(depot, records, topology, timeout, true)
            .await?;
        let mut outcomes = visible.outcomes.into_iter();
        let mut answers = Vec::with_capacity(appended.len());
        for index in 0..appended.len() {
            let id = appended[index];
            let outcome = match outcomes.next() {
                Some(envelope) => decode_outcome(envelope),
                None => self.outcome(topology, id).await,
            };
            match outcome {
                Ok(outcome) => answers.push((id, outcome)),
                Err(error) => {
                    return Err(ClientError::AfterAppend {
                        records: appended,
                        error: Box::new(error),
                    })
                }
            }
        }
        Ok(answers)
    }

    /// Appends `records` and waits until `topology` has processed them, in one round trip;
    /// returns their positions and the topology's committed batch id then. What
    /// [`append_and_wait`](Self::append_and_wait) does, without reading the outcomes: for a
    /// caller that only needs its records visible (read-your-writes).
    pub async fn append_and_wait_for<T>(
        &mut self,
        depot: &Depot<T>,
        records: &[T],
        topology: &str,
        timeout: Duration,
    ) -> Result<(Vec<RecordId>, u64), ClientError>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
    {
        let (appended, visible) = self
            .append_waiting(depot, records, topology, timeout, false)
            .await?;
        Ok((appended, visible.batch_id))
    }

    /// Sends an `AppendAndWait`; once the records are appended, every failure is
    /// [`ClientError::AfterAppend`].
    async fn append_waiting<T>(
        &mut self,
        depot: &Depot<T>,
        records: &[T],
        topology: &str,
        timeout: Duration,
        outcomes: bool,
    ) -> Result<(Vec<RecordId>, Visible), ClientError>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
    {
        let started = Instant::now();
        let request = Request::AppendAndWait {
            depot: depot.name().to_string(),
            records: encode_records(depot, records)?,
            producer: Some((self.producer, self.next_sequence)),
            topology: topology.to_string(),
            timeout_ms: duration_ms(timeout),
            outcomes,
        };
        let (appended, error) = match self.call_appending(request).await? {
            Response::AppendedAndWaited {
                records,
                visible: Ok(visible),
            } => return Ok((records, visible)),
            Response::AppendedAndWaited {
                records,
                visible: Err(error),
            } => (records, error),
            other => {
                return Err(ClientError::Protocol(format!(
                    "unexpected answer {other:?}"
                )))
            }
        };
        // The engine closed during the wait: as a plain `wait_for` would, keep waiting, for
        // the rest of the timeout, through a restart within `retry_for`.
        let waited = match appended.last() {
            Some(last) if error.kind == WireErrorKind::Unavailable => {
                let rest = timeout.saturating_sub(started.elapsed());
                self.wait_for(topology, *last, rest).await
            }
            _ => Err(ClientError::Server(error)),
        };
        match waited {
            Ok(batch_id) => Ok((
                appended,
                Visible {
                    batch_id,
                    outcomes: Vec::new(),
                },
            )),
            Err(error) => Err(ClientError::AfterAppend {
                records: appended,
                error: Box::new(error),
            }),
        }
    }

    /// The value under `key` in `pstate`, and the batch of `topology` it was read at.
    pub async fn get<K, V>(
        &mut self,
        pstate: &crate::PState<K, V>,
        key: &K,
        topology: &str,
    ) -> Result<(Option<V>, u64), ClientError>
    where
        K: Serialize,
        V: DeserializeOwned,
    {
        let key = lockstep_core::encode_key(key).map_err(|e| ClientError::Codec(e.to_string()))?;
        let results = self
            .read(vec![
                Read::Get {
                    pstate: pstate.name().to_string(),
                    key,
                },
                Read::BatchId {
                    topology: topology.to_string(),
                },
            ])
            .await?;
        match results.as_slice() {
            [ReadResult::Value(value), ReadResult::Batch(batch)] => {
                let value = value
                    .as_deref()
                    .map(lockstep_core::decode_envelope)
                    .transpose()
                    .map_err(|e| ClientError::Codec(e.to_string()))?;
                Ok((value, *batch))
            }
            other => Err(ClientError::Protocol(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }

    /// Runs `reads` against one consistent snapshot on the server; one result per read.
    pub async fn read(&mut self, reads: Vec<Read>) -> Result<Vec<ReadResult>, ClientError> {
        let count = reads.len();
        let responses = self.call(Request::Read { reads }).await?;
        let mut results: Vec<Option<ReadResult>> = vec![None; count];
        for response in responses {
            let (read, piece) = match response {
                Response::ReadValue { read, value } => (read, ReadResult::Value(value)),
                Response::ReadBatch { read, batch_id } => (read, ReadResult::Batch(batch_id)),
                Response::ReadEntries { read, entries } => (read, ReadResult::Entries(entries)),
                other => {
                    return Err(ClientError::Protocol(format!(
                        "unexpected answer {other:?}"
                    )))
                }
            };
            let slot = results
                .get_mut(read as usize)
                .ok_or_else(|| ClientError::Protocol(format!("answer to unknown read {read}")))?;
            match (slot.as_mut(), piece) {
                (Some(ReadResult::Entries(all)), ReadResult::Entries(more)) => all.extend(more),
                (None, piece) => *slot = Some(piece),
                _ => return Err(ClientError::Protocol(format!("read {read} answered twice"))),
            }
        }
        results
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.ok_or_else(|| ClientError::Protocol(format!("read {i} unanswered"))))
            .collect()
    }
}

/// The records' envelopes, as the depot encodes them.
fn encode_records<T>(depot: &Depot<T>, records: &[T]) -> Result<Vec<Vec<u8>>, ClientError>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    records
        .iter()
        .map(|record| {
            depot
                .encode(record)
                .map_err(|e| ClientError::Codec(e.to_string()))
        })
        .collect()
}

/// An outcome as the server stores it: the envelope of `(batch id, value)`.
fn decode_outcome<O: DeserializeOwned>(
    envelope: Option<Vec<u8>>,
) -> Result<Option<crate::Outcome<O>>, ClientError> {
    let Some(bytes) = envelope else {
        return Ok(None);
    };
    let (batch_id, value): (u64, O) =
        lockstep_core::decode_envelope(&bytes).map_err(|e| ClientError::Codec(e.to_string()))?;
    Ok(Some(crate::Outcome { batch_id, value }))
}

/// `duration` in milliseconds, rounded up (a wait of 0.5 ms is not a wait of none), saturating.
fn duration_ms(duration: Duration) -> u64 {
    let ms = duration.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX)
}

//! Wire messages and framing.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::RecordId;

/// The protocol version this release speaks. Version 2 added [`Request::AppendAndWait`]. A
/// client speaks its own version and an older server refuses it at the handshake: upgrade
/// servers before clients.
pub const PROTOCOL_VERSION: u32 = 2;
/// The oldest version the server still accepts: a later version only adds requests, so an
/// older client's requests all mean what they meant. The handshake refuses any other.
pub const PROTOCOL_VERSION_MIN: u32 = 1;
/// Default limit on one frame's payload.
pub const FRAME_BYTES_MAX_DEFAULT: usize = 16 << 20;

/// What a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientFrame {
    /// The first frame of a connection.
    Hello {
        /// From [`PROTOCOL_VERSION_MIN`] to [`PROTOCOL_VERSION`].
        protocol: u32,
        /// Required when the server has a token.
        token: Option<String>,
    },
    /// A request; the server answers with frames carrying the same id.
    Request {
        /// Chosen by the client, echoed in the answer.
        id: u64,
        /// What to do.
        request: Request,
    },
}

/// A request. New versions of the protocol add variants at the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Request {
    /// Append encoded records (depot envelopes) to a depot, optionally idempotently.
    Append {
        /// The depot's name.
        depot: String,
        /// The records' envelopes.
        records: Vec<Vec<u8>>,
        /// `(producer, sequence)` for an idempotent append.
        producer: Option<(u64, u64)>,
    },
    /// Wait until a topology has processed a record.
    WaitFor {
        /// The topology.
        topology: String,
        /// The record.
        record: RecordId,
        /// How long to wait at most.
        timeout_ms: u64,
    },
    /// The outcome a topology recorded for a record.
    Outcome {
        /// The topology.
        topology: String,
        /// The record.
        record: RecordId,
    },
    /// Reads, all from one consistent snapshot; answered by a stream of `Read*` responses and
    /// a final `ReadDone`.
    Read {
        /// The reads, answered in order.
        reads: Vec<Read>,
    },
    /// `Append`, then wait until a topology has processed the records, then (if asked) their
    /// outcomes: what `Append`, `WaitFor` and one `Outcome` per record do, in one round trip.
    /// The topology must consume the depot, which is checked before anything is written.
    /// Answered by [`Response::AppendedAndWaited`] (protocol version 2).
    AppendAndWait {
        /// The depot's name.
        depot: String,
        /// The records' envelopes.
        records: Vec<Vec<u8>>,
        /// `(producer, sequence)` for an idempotent append.
        producer: Option<(u64, u64)>,
        /// The topology to wait for.
        topology: String,
        /// How long to wait at most, once the records are durable (the server caps it at its
        /// `wait_max`).
        timeout_ms: u64,
        /// Whether to answer with the records' outcomes too.
        outcomes: bool,
    },
}

/// One read of a [`Request::Read`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Read {
    /// The value under an encoded key.
    Get {
        /// The PState.
        pstate: String,
        /// The key, encoded with the key codec.
        key: Vec<u8>,
    },
    /// Every entry of a PState, all partitions, in key order.
    Scan {
        /// The PState.
        pstate: String,
    },
    /// Every element of one set.
    SetMembers {
        /// The set PState.
        pstate: String,
        /// The key, encoded.
        key: Vec<u8>,
    },
    /// The batch a topology is at in the snapshot.
    BatchId {
        /// The topology.
        topology: String,
    },
}

/// What a server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerFrame {
    /// Accepts the handshake.
    Welcome {
        /// The protocol version of the connection: the client's.
        protocol: u32,
        /// The server's name and version.
        server: String,
    },
    /// An answer (or part of one) to a request.
    Response {
        /// The request's id.
        id: u64,
        /// The answer.
        result: Result<Response, WireError>,
    },
    /// The connection is being closed because of this.
    Fatal {
        /// Why.
        message: String,
    },
}

/// A successful answer. New versions of the protocol add variants at the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Response {
    /// The records are durable at these positions.
    Appended(Vec<RecordId>),
    /// The record is processed; the topology's committed batch.
    Waited {
        /// The batch id.
        batch_id: u64,
    },
    /// The stored outcome envelope, if any.
    Outcome(Option<Vec<u8>>),
    /// The answer to a `Get` (the stored value envelope).
    ReadValue {
        /// Index of the read in the request.
        read: u32,
        /// The value, if any.
        value: Option<Vec<u8>>,
    },
    /// Part of the answer to a `Scan` (`(encoded key, value)`) or `SetMembers` (`(encoded
    /// element, empty)`); more parts may follow.
    ReadEntries {
        /// Index of the read in the request.
        read: u32,
        /// The entries.
        entries: Vec<(Vec<u8>, Vec<u8>)>,
    },
    /// The answer to a `BatchId`.
    ReadBatch {
        /// Index of the read in the request.
        read: u32,
        /// The batch id.
        batch_id: u64,
    },
    /// The last frame of a `Read`.
    ReadDone,
    /// The answer to an `AppendAndWait` whose records were appended.
    AppendedAndWaited {
        /// The records' positions: they are durable, whatever `visible` says.
        records: Vec<RecordId>,
        /// What the wait for the topology came to.
        visible: Result<Visible, WireError>,
    },
}

/// Records a topology has processed: the batch that did, and their outcomes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Visible {
    /// The topology's committed batch once the last record was processed.
    pub batch_id: u64,
    /// When asked for: the stored outcome envelopes of the first records, in order, as many as
    /// fit in about 1 MiB (a read chunk) and in half the server's frame limit less the
    /// positions; the client reads the others' with `Outcome`.
    pub outcomes: Vec<Option<Vec<u8>>>,
}

/// A refused request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct WireError {
    /// What kind of failure.
    pub kind: WireErrorKind,
    /// The server's message.
    pub message: String,
}

/// Kinds of [`WireError`], by what a client should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum WireErrorKind {
    /// Bad input (a record that does not decode, an unknown name, ...): nothing was written;
    /// retrying the same request fails the same way.
    Refused,
    /// An idempotent append older than the producer's last accepted one.
    Stale,
    /// The engine cannot write (poisoned or closing); nothing more will be accepted until it is
    /// restarted. A retry against the restarted server may succeed.
    Unavailable,
    /// The topology stopped after a failed batch.
    Stopped,
    /// A wait timed out.
    Timeout,
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The connection failed or closed mid-frame.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The length prefix is over the limit.
    #[error("frame of {bytes} bytes exceeds the limit of {bytes_max}")]
    TooLarge {
        /// The announced length.
        bytes: usize,
        /// The limit.
        bytes_max: usize,
    },
    /// The payload does not decode.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Reads one frame; `Ok(None)` on a clean end of stream before a frame starts.
pub async fn read_frame<R, T>(reader: &mut R, bytes_max: usize) -> Result<Option<T>, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let Some(bytes) = read_frame_length(reader, bytes_max).await? else {
        return Ok(None);
    };
    let payload = read_payload(reader, bytes).await?;
    decode_payload(&payload).map(Some)
}

/// Reads a frame's length prefix and checks it against `bytes_max`; `Ok(None)` on a clean end
/// of stream. The server reserves memory for the payload between this and [`read_payload`].
pub(crate) async fn read_frame_length<R>(
    reader: &mut R,
    bytes_max: usize,
) -> Result<Option<usize>, FrameError>
where
    R: AsyncRead + Unpin,
{
    let mut length = [0u8; 4];
    match reader.read_exact(&mut length).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let bytes = u32::from_be_bytes(length) as usize;
    if bytes > bytes_max {
        return Err(FrameError::TooLarge { bytes, bytes_max });
    }
    Ok(Some(bytes))
}

/// Reads a frame's payload of `bytes` bytes (already checked against the limit).
pub(crate) async fn read_payload<R>(reader: &mut R, bytes: usize) -> Result<Vec<u8>, FrameError>
where
    R: AsyncRead + Unpin,
{
    let mut payload = vec![0u8; bytes];
    reader.read_exact(&mut payload).await?;
    Ok(payload)
}

/// Decodes one frame's payload (what follows the length prefix) as a whole message.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    // Stated lengths count against a limit proportional to the payload before anything is
    // allocated for them: a frame cannot ask for more memory than a small multiple of its size,
    // and every message that fits a frame decodes.
    lockstep_core::codec::decode_exact(payload).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Writes one frame (not flushed).
pub async fn write_frame<W, T>(
    writer: &mut W,
    frame: &T,
    bytes_max: usize,
) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let payload = bincode::serde::encode_to_vec(frame, bincode::config::standard())
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    if payload.len() > bytes_max {
        return Err(FrameError::TooLarge {
            bytes: payload.len(),
            bytes_max,
        });
    }
    writer
        .write_all(&(payload.len() as u32).to_be_bytes())
        .await?;
    writer.write_all(&payload).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// No byte string makes the frame decoder panic: it decodes or says why not.
        #[test]
        fn arbitrary_payloads_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_payload::<ClientFrame>(&bytes);
            let _ = decode_payload::<ServerFrame>(&bytes);
        }

        /// Whatever decodes is a message the encoder writes back and the decoder reads again
        /// unchanged: nothing a peer sends is altered on the way in.
        #[test]
        fn decoded_payloads_round_trip(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(frame) = decode_payload::<ClientFrame>(&bytes) {
                let mut buffer = Vec::new();
                futures_lite_block_on(write_frame(&mut buffer, &frame, 1 << 16)).expect("write");
                let again = futures_lite_block_on(read_frame::<_, ClientFrame>(&mut buffer.as_slice(), 1 << 16));
                prop_assert_eq!(again.expect("read"), Some(frame));
            }
            if let Ok(frame) = decode_payload::<ServerFrame>(&bytes) {
                let mut buffer = Vec::new();
                futures_lite_block_on(write_frame(&mut buffer, &frame, 1 << 16)).expect("write");
                let again = futures_lite_block_on(read_frame::<_, ServerFrame>(&mut buffer.as_slice(), 1 << 16));
                prop_assert_eq!(again.expect("read"), Some(frame));
            }
        }

        /// Frames cut or corrupted anywhere are refused or read, never a panic, and a length
        /// over the limit is refused before anything is allocated for it.
        #[test]
        fn corrupted_frames_never_panic(
            cut in 0usize..64,
            flip in 0usize..64,
            mask in any::<u8>(),
        ) {
            let frame = ClientFrame::Request {
                id: 1,
                request: Request::Read {
                    reads: vec![Read::Get { pstate: "p".into(), key: vec![1, 2] }],
                },
            };
            let mut buffer = Vec::new();
            futures_lite_block_on(write_frame(&mut buffer, &frame, 1 << 16)).expect("write");
            if let Some(byte) = buffer.get_mut(flip) {
                *byte ^= mask;
            }
            buffer.truncate(cut.min(buffer.len()));
            let _ = futures_lite_block_on(read_frame::<_, ClientFrame>(&mut buffer.as_slice(), 1 << 16));
        }
    }

    /// Runs a future that never waits on I/O readiness (in-memory buffers) to completion.
    fn futures_lite_block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(future)
    }

    /// Every message that fits a frame decodes, however many small integers it holds. bincode
    /// counts a one-byte varint at its size in memory against its decode limit, and the limit
    /// was a flat 16 MiB: the acknowledgement of one append of 1.5 million tiny records, a
    /// 4.5 MB frame, was refused as malformed, after the records were durable.
    #[test]
    fn a_frame_within_the_limit_decodes_however_dense() {
        let id = RecordId {
            depot_id: 0,
            partition: 0,
            offset: 0,
        };
        let frame = ServerFrame::Response {
            id: 1,
            result: Ok(Response::Appended(vec![id; 1_500_000])),
        };
        let mut buffer = Vec::new();
        futures_lite_block_on(write_frame(&mut buffer, &frame, FRAME_BYTES_MAX_DEFAULT))
            .expect("fits a frame");
        let back = futures_lite_block_on(read_frame::<_, ServerFrame>(
            &mut buffer.as_slice(),
            FRAME_BYTES_MAX_DEFAULT,
        ))
        .expect("decodes");
        assert_eq!(back, Some(frame));
    }

    /// A few bytes stating a huge string are refused before anything is allocated for it (the
    /// limit is proportional to the payload), not answered by allocating what they state.
    #[test]
    fn a_short_frame_stating_a_huge_length_is_refused_before_allocating() {
        // Hello { protocol: 1, token: Some(<a string of 15 MiB>) }, and nothing of the string.
        let mut payload = vec![0, 1, 1, 252];
        payload.extend_from_slice(&(15u32 << 20).to_le_bytes());
        match decode_payload::<ClientFrame>(&payload) {
            Err(FrameError::Malformed(reason)) => {
                assert!(reason.contains("LimitExceeded"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn frames_round_trip_and_limits_hold() {
        let frame = ClientFrame::Request {
            id: 7,
            request: Request::Append {
                depot: "d".into(),
                records: vec![vec![1, 2, 3]],
                producer: Some((1, 2)),
            },
        };
        let mut buffer = Vec::new();
        write_frame(&mut buffer, &frame, 1024).await.expect("write");
        let back: Option<ClientFrame> = read_frame(&mut buffer.as_slice(), 1024)
            .await
            .expect("read");
        assert_eq!(back, Some(frame.clone()));
        assert!(matches!(
            read_frame::<_, ClientFrame>(&mut buffer.as_slice(), 4).await,
            Err(FrameError::TooLarge { .. })
        ));
        let empty: Option<ClientFrame> = read_frame(&mut [].as_slice(), 1024).await.expect("eof");
        assert_eq!(empty, None);
        let garbage = [0u8, 0, 0, 3, 0xFF, 0xFF, 0xFF];
        assert!(matches!(
            read_frame::<_, ClientFrame>(&mut garbage.as_slice(), 1024).await,
            Err(FrameError::Malformed(_))
        ));
        let truncated = &buffer[..buffer.len() - 1];
        assert!(matches!(
            read_frame::<_, ClientFrame>(&mut &truncated[..], 1024).await,
            Err(FrameError::Io(_))
        ));
    }
}

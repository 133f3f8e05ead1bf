//! Lockstep over the network: a TCP server for an engine, and a client that appends to it and
//! reads from it (feature `net`).
//!
//! The protocol is length-prefixed frames (`u32` big-endian length, then a bincode payload),
//! opened by a version handshake that also carries the optional token. Records travel as the
//! depot's envelopes, encoded and decoded by the typed handles on the client; the server checks
//! every record against its depot's type before accepting it. Every frame has a size limit; a
//! malformed, oversize or unexpected frame gets a `Fatal` reply and its connection is closed,
//! and nothing else is affected.

mod client;
mod proto;
mod server;

pub use client::{Client, ClientConfig, ClientError, ReadResult};
pub use proto::{
    ClientFrame, FrameError, Read, Request, Response, ServerFrame, Visible, WireError,
    WireErrorKind, FRAME_BYTES_MAX_DEFAULT, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN,
};
pub use server::{Server, ServerConfig};

/// The framing functions client and server use, for the fuzz targets and property tests that
/// feed them arbitrary bytes; not part of the supported API.
#[doc(hidden)]
pub use proto::{decode_payload, read_frame, write_frame};

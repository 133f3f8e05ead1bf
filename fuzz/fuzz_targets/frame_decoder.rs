//! The network frame decoder, as the server and the client run it on bytes from a socket.
//!
//! Any input must decode or be refused with a reason, never panic, and must not allocate beyond
//! the frame limit. Whatever decodes must survive a round trip: written back as a frame and read
//! again, it is the same message (so nothing a peer sends is silently altered on the way in).

#![no_main]

use std::fmt::Debug;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use lockstep::net::{
    decode_payload, read_frame, write_frame, ClientFrame, FrameError, ServerFrame,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Frame limit for the stream reads: small, so over-limit lengths are common inputs.
const FRAME_BYTES_MAX: usize = 4096;

/// Runs a future over in-memory buffers, which never wait, to completion.
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("an in-memory frame read or write waited"),
    }
}

fn round_trips<T: Serialize + DeserializeOwned + PartialEq + Debug>(frame: &T) {
    let mut written = Vec::new();
    ready(write_frame(&mut written, frame, usize::MAX)).expect("a decoded frame writes");
    let again: Option<T> =
        ready(read_frame(&mut written.as_slice(), usize::MAX)).expect("a written frame reads");
    assert_eq!(again.as_ref(), Some(frame));
}

/// A whole payload, as the message of either side.
fn payload<T: Serialize + DeserializeOwned + PartialEq + Debug>(data: &[u8]) {
    if let Ok(frame) = decode_payload::<T>(data) {
        round_trips(&frame);
    }
}

/// A stream of length-prefixed frames, as a connection delivers them: read until the end, the
/// first refusal, or the first frame over the limit.
fn stream<T: Serialize + DeserializeOwned + PartialEq + Debug>(data: &[u8]) {
    let mut rest = data;
    loop {
        let before = rest.len();
        match ready(read_frame::<_, T>(&mut rest, FRAME_BYTES_MAX)) {
            Ok(Some(frame)) => {
                assert!(rest.len() < before, "a frame consumed no input");
                round_trips(&frame);
            }
            Ok(None) => break,
            Err(FrameError::TooLarge { bytes, bytes_max }) => {
                assert!(bytes > bytes_max);
                break;
            }
            Err(_) => break,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    payload::<ClientFrame>(data);
    payload::<ServerFrame>(data);
    stream::<ClientFrame>(data);
    stream::<ServerFrame>(data);
});

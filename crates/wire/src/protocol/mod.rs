//! Pure protocol logic: framing, error codes, version negotiation. No IO.

pub mod bounded;
mod codes;
mod frame;
pub mod guard;
mod produce;
mod versions;

pub use codes::ErrorCode;
pub use frame::{
    api_name, encode_request, read_response_header, split_frame, FrameError, MAX_FRAME,
};
pub use produce::{encode_produce, Pieces, SPLICE_MIN};
pub use versions::{client_range, BrokerVersions};

/// Splits `data` into response frames and reads each one's header with both
/// header versions, discarding the results: the body of the `response_frame`
/// fuzz target and of its corpus replay. It must never panic.
#[doc(hidden)]
pub fn fuzz_frames(data: &[u8]) {
    let mut buf = bytes::BytesMut::from(data);
    while let Ok(Some(frame)) = split_frame(&mut buf) {
        let frame = frame.freeze();
        let _ = read_response_header(&mut frame.clone(), 0);
        let _ = read_response_header(&mut frame.clone(), 1);
    }
}

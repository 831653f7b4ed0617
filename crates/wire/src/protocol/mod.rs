//! Pure protocol logic: framing, error codes, version negotiation. No IO.

mod codes;
mod frame;
mod versions;

pub use codes::ErrorCode;
pub use frame::{
    api_name, encode_request, read_response_header, split_frame, FrameError, MAX_FRAME,
};
pub use versions::{client_range, BrokerVersions};

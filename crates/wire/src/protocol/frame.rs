//! Request and response framing: a 4-byte big-endian length, a header whose
//! version depends on the API and its version, then the message body.
//!
//! Pure functions over buffers; the connection task does the IO.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::{Encodable, StrBytes};

/// The largest response frame we accept (a fetch response is bounded by
/// `fetch.max.bytes`, 50 MiB by default, plus overhead).
pub const MAX_FRAME: usize = 512 * 1024 * 1024;

/// Why a frame could not be made or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix is negative or over [`MAX_FRAME`].
    #[error("response frame length {0} is negative or over the limit")]
    BadLength(i64),
    /// The frame is shorter than its header.
    #[error("response frame too short for its header")]
    ShortHeader,
    /// The header's tagged fields are malformed.
    #[error("malformed tagged fields in the response header")]
    BadTaggedFields,
    /// An API key that the kafka-protocol crate does not know.
    #[error("unknown API key {0}")]
    UnknownApi(i16),
    /// The message could not be encoded.
    #[error("encoding {api} v{version} failed: {reason}")]
    Encode {
        /// The API's name.
        api: &'static str,
        /// The version.
        version: i16,
        /// Why.
        reason: String,
    },
}

/// Encodes a whole request frame (length prefix, header, body) into `out`.
pub fn encode_request<M: Encodable>(
    out: &mut BytesMut,
    api_key: i16,
    version: i16,
    correlation_id: i32,
    client_id: &StrBytes,
    body: &M,
) -> Result<(), FrameError> {
    let api = ApiKey::try_from(api_key).map_err(|_| FrameError::UnknownApi(api_key))?;
    let header_version = api.request_header_version(version);
    let header = RequestHeader::default()
        .with_request_api_key(api_key)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(client_id.clone()));
    let err = |e: String| FrameError::Encode {
        api: api_name(api_key),
        version,
        reason: e,
    };
    let size = header
        .compute_size(header_version)
        .map_err(|e| err(e.to_string()))?
        + body.compute_size(version).map_err(|e| err(e.to_string()))?;
    let len = i32::try_from(size).map_err(|_| err("request over 2 GiB".into()))?;
    out.reserve(4 + size);
    out.put_i32(len);
    header
        .encode(out, header_version)
        .map_err(|e| err(e.to_string()))?;
    body.encode(out, version).map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// The API's protocol name, for errors and logs.
pub fn api_name(api_key: i16) -> &'static str {
    match ApiKey::try_from(api_key) {
        Ok(ApiKey::Produce) => "Produce",
        Ok(ApiKey::Fetch) => "Fetch",
        Ok(ApiKey::SaslHandshake) => "SaslHandshake",
        Ok(ApiKey::SaslAuthenticate) => "SaslAuthenticate",
        Ok(ApiKey::DescribeAcls) => "DescribeAcls",
        Ok(ApiKey::CreateAcls) => "CreateAcls",
        Ok(ApiKey::DeleteAcls) => "DeleteAcls",
        Ok(ApiKey::IncrementalAlterConfigs) => "IncrementalAlterConfigs",
        Ok(ApiKey::ListOffsets) => "ListOffsets",
        Ok(ApiKey::Metadata) => "Metadata",
        Ok(ApiKey::OffsetCommit) => "OffsetCommit",
        Ok(ApiKey::OffsetFetch) => "OffsetFetch",
        Ok(ApiKey::FindCoordinator) => "FindCoordinator",
        Ok(ApiKey::JoinGroup) => "JoinGroup",
        Ok(ApiKey::Heartbeat) => "Heartbeat",
        Ok(ApiKey::LeaveGroup) => "LeaveGroup",
        Ok(ApiKey::SyncGroup) => "SyncGroup",
        Ok(ApiKey::ApiVersions) => "ApiVersions",
        Ok(ApiKey::CreateTopics) => "CreateTopics",
        Ok(ApiKey::DeleteTopics) => "DeleteTopics",
        Ok(ApiKey::DeleteRecords) => "DeleteRecords",
        Ok(ApiKey::InitProducerId) => "InitProducerId",
        Ok(ApiKey::DescribeConfigs) => "DescribeConfigs",
        Ok(_) => "Request",
        Err(_) => "UnknownApi",
    }
}

/// If `buf` starts with a whole frame, splits it off and returns its payload
/// (without the length prefix). `Ok(None)` means more bytes are needed.
pub fn split_frame(buf: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| l <= MAX_FRAME)
        .ok_or(FrameError::BadLength(i64::from(len)))?;
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(len)))
}

/// Reads a response header of `header_version` (0: correlation id; 1: plus
/// tagged fields) off the front of `frame`, returning the correlation id.
pub fn read_response_header(frame: &mut Bytes, header_version: i16) -> Result<i32, FrameError> {
    if frame.len() < 4 {
        return Err(FrameError::ShortHeader);
    }
    let correlation_id = frame.get_i32();
    if header_version >= 1 {
        let count = read_uvarint(frame)?;
        for _ in 0..count {
            let _tag = read_uvarint(frame)?;
            let size = read_uvarint(frame)? as usize;
            if frame.len() < size {
                return Err(FrameError::BadTaggedFields);
            }
            frame.advance(size);
        }
    }
    Ok(correlation_id)
}

fn read_uvarint(buf: &mut Bytes) -> Result<u32, FrameError> {
    let mut value = 0u32;
    for i in 0..5 {
        if buf.is_empty() {
            return Err(FrameError::BadTaggedFields);
        }
        let b = buf.get_u8();
        value |= u32::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(FrameError::BadTaggedFields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::MetadataRequest;
    use proptest::prelude::*;

    #[test]
    fn request_frames_decode_as_the_broker_would() {
        let mut out = BytesMut::new();
        let client = StrBytes::from_static_str("faustus-test");
        encode_request(&mut out, 3, 12, 77, &client, &MetadataRequest::default()).expect("encode");
        let mut frame = split_frame(&mut out).expect("ok").expect("whole").freeze();
        assert!(out.is_empty());
        let header = kafka_protocol::protocol::decode_request_header_from_buffer(&mut frame)
            .expect("header");
        assert_eq!(header.correlation_id, 77);
        assert_eq!(header.request_api_version, 12);
        assert_eq!(header.client_id.as_deref(), Some("faustus-test"));
    }

    #[test]
    fn partial_and_bad_frames() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 5, 1, 2][..]);
        assert_eq!(split_frame(&mut buf), Ok(None));
        buf.extend_from_slice(&[3, 4, 5, 9]);
        assert_eq!(
            &split_frame(&mut buf).expect("ok").expect("frame")[..],
            &[1, 2, 3, 4, 5]
        );
        assert_eq!(&buf[..], &[9]);
        let mut neg = BytesMut::from(&[0xffu8, 0xff, 0xff, 0xff][..]);
        assert_eq!(split_frame(&mut neg), Err(FrameError::BadLength(-1)));
    }

    #[test]
    fn flexible_header_skips_tagged_fields() {
        let mut frame = Bytes::from_static(&[0, 0, 0, 9, 1, 5, 2, 0xaa, 0xbb, 0x42]);
        assert_eq!(read_response_header(&mut frame, 1), Ok(9));
        assert_eq!(&frame[..], &[0x42]);
        let mut short = Bytes::from_static(&[0, 0, 0, 9, 1, 5, 9, 0xaa]);
        assert_eq!(
            read_response_header(&mut short, 1),
            Err(FrameError::BadTaggedFields)
        );
    }

    /// Replays the response_frame fuzz corpus committed in
    /// `fuzz/regressions`.
    #[test]
    fn fuzz_regressions_do_not_panic() {
        crate::test_support::replay_fuzz_corpus("response_frame", crate::protocol::fuzz_frames);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data: Vec<u8>, hv in 0i16..2) {
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(f)) = split_frame(&mut buf) {
                let _ = read_response_header(&mut f.freeze(), hv);
            }
        }
    }
}

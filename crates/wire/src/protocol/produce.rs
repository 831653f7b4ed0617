//! The Produce request encoded without copying its record batches: the
//! frame is written as pieces, the batches' own buffers among them, and the
//! connection writes the pieces in order. A byte-for-byte equal frame to
//! [`encode_request`](super::encode_request)'s (tested for every version).

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ProduceRequest, RequestHeader};
use kafka_protocol::protocol::{Encodable, StrBytes};

use super::frame::{api_name, FrameError};

/// Batches at least this large are sent from their own buffer; smaller
/// ones are copied into the frame, where a copy costs less than a piece.
pub const SPLICE_MIN: usize = 16 * 1024;

/// A request frame in pieces, written in order: `head`, then `tail`.
#[derive(Debug, Default)]
pub struct Pieces {
    /// The length prefix, header and body up to the first spliced batch.
    pub head: BytesMut,
    /// What follows: batches and the bytes between them.
    pub tail: Vec<Bytes>,
}

impl Pieces {
    /// The frame's bytes in one buffer (tests, and connections that
    /// cannot write pieces).
    pub fn concat(&self) -> BytesMut {
        let mut out = self.head.clone();
        for t in &self.tail {
            out.extend_from_slice(t);
        }
        out
    }
}

/// Encodes a whole Produce request frame at `version`, the record batches
/// of at least [`SPLICE_MIN`] bytes spliced in by reference.
pub fn encode_produce(
    version: i16,
    correlation_id: i32,
    client_id: &StrBytes,
    req: &ProduceRequest,
) -> Result<Pieces, FrameError> {
    let api_key = ApiKey::Produce as i16;
    let err = |e: String| FrameError::Encode {
        api: api_name(api_key),
        version,
        reason: e,
    };
    let header_version = ApiKey::Produce.request_header_version(version);
    let header = RequestHeader::default()
        .with_request_api_key(api_key)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(client_id.clone()));
    let size = header
        .compute_size(header_version)
        .map_err(|e| err(e.to_string()))?
        + req.compute_size(version).map_err(|e| err(e.to_string()))?;
    let len = i32::try_from(size).map_err(|_| err("request over 2 GiB".into()))?;
    let flexible = version >= 9;
    let tagged = !req.unknown_tagged_fields.is_empty()
        || req.topic_data.iter().any(|t| {
            !t.unknown_tagged_fields.is_empty()
                || t.partition_data
                    .iter()
                    .any(|p| !p.unknown_tagged_fields.is_empty())
        });
    if !(3..=13).contains(&version) || tagged {
        // Not a frame this encoder writes: the generic one copies.
        let mut head = BytesMut::new();
        super::encode_request(&mut head, api_key, version, correlation_id, client_id, req)?;
        return Ok(Pieces {
            head,
            tail: Vec::new(),
        });
    }
    let mut pieces = Pieces::default();
    let mut cur = BytesMut::with_capacity(512);
    cur.put_i32(len);
    header
        .encode(&mut cur, header_version)
        .map_err(|e| err(e.to_string()))?;
    put_string(
        &mut cur,
        req.transactional_id.as_ref().map(|t| t.0.as_str()),
        flexible,
    );
    cur.put_i16(req.acks);
    cur.put_i32(req.timeout_ms);
    let count = |cur: &mut BytesMut, n: usize| {
        if flexible {
            put_uvarint(cur, n as u32 + 1);
        } else {
            cur.put_i32(n as i32);
        }
    };
    count(&mut cur, req.topic_data.len());
    for t in &req.topic_data {
        if version >= 13 {
            cur.extend_from_slice(t.topic_id.as_bytes());
        } else {
            put_string(&mut cur, Some(t.name.0.as_str()), flexible);
        }
        count(&mut cur, t.partition_data.len());
        for p in &t.partition_data {
            cur.put_i32(p.index);
            match &p.records {
                None if flexible => put_uvarint(&mut cur, 0),
                None => cur.put_i32(-1),
                Some(batch) => {
                    if flexible {
                        put_uvarint(&mut cur, batch.len() as u32 + 1);
                    } else {
                        cur.put_i32(batch.len() as i32);
                    }
                    if batch.len() >= SPLICE_MIN {
                        let before = std::mem::replace(&mut cur, BytesMut::with_capacity(64));
                        if pieces.tail.is_empty() && pieces.head.is_empty() {
                            pieces.head = before;
                        } else {
                            pieces.tail.push(before.freeze());
                        }
                        pieces.tail.push(batch.clone());
                    } else {
                        cur.extend_from_slice(batch);
                    }
                }
            }
            if flexible {
                cur.put_u8(0);
            }
        }
        if flexible {
            cur.put_u8(0);
        }
    }
    if flexible {
        cur.put_u8(0);
    }
    if pieces.head.is_empty() {
        pieces.head = cur;
    } else {
        pieces.tail.push(cur.freeze());
    }
    Ok(pieces)
}

/// An unsigned varint (the flexible versions' lengths and counts).
fn put_uvarint(out: &mut BytesMut, mut v: u32) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

/// A nullable string: compact (length + 1 as a varint, 0 for null) in
/// flexible versions, else an `i16` length (-1 for null).
fn put_string(out: &mut BytesMut, s: Option<&str>, flexible: bool) {
    match (s, flexible) {
        (None, true) => put_uvarint(out, 0),
        (None, false) => out.put_i16(-1),
        (Some(s), true) => {
            put_uvarint(out, s.len() as u32 + 1);
            out.extend_from_slice(s.as_bytes());
        }
        (Some(s), false) => {
            out.put_i16(s.len() as i16);
            out.extend_from_slice(s.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::TransactionalId;
    use proptest::prelude::*;

    /// A topic's name and its partitions' (index, batch length).
    type Topic = (String, Vec<(i32, Option<usize>)>);

    fn request(txn: Option<String>, topics: &[Topic]) -> ProduceRequest {
        ProduceRequest::default()
            .with_transactional_id(txn.map(|t| TransactionalId(StrBytes::from_string(t))))
            .with_acks(-1)
            .with_timeout_ms(30_000)
            .with_topic_data(
                topics
                    .iter()
                    .map(|(name, parts)| {
                        TopicProduceData::default()
                            .with_name(kafka_protocol::messages::TopicName(StrBytes::from_string(
                                name.clone(),
                            )))
                            .with_topic_id(uuid::Uuid::from_u128(0x1234_5678_9abc))
                            .with_partition_data(
                                parts
                                    .iter()
                                    .map(|(i, len)| {
                                        PartitionProduceData::default().with_index(*i).with_records(
                                            len.map(|n| {
                                                Bytes::from(
                                                    (0..n).map(|b| b as u8).collect::<Vec<u8>>(),
                                                )
                                            }),
                                        )
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            )
    }

    proptest! {
        /// The pieces joined are exactly the generic encoder's frame, at
        /// every version, with batches under and over the splice size.
        #[test]
        fn pieces_equal_the_generic_frame(
            version in 3i16..=13,
            txn in proptest::option::of("[a-z]{1,12}"),
            topics in proptest::collection::vec(
                ("[a-z]{1,10}", proptest::collection::vec(
                    (0i32..100, proptest::option::of(prop_oneof![0usize..300, SPLICE_MIN - 1..SPLICE_MIN + 2, 40_000usize..70_000])),
                    0..4,
                )),
                0..4,
            ),
        ) {
            let req = request(txn, &topics);
            let client = StrBytes::from_static_str("faustus-test");
            let pieces = encode_produce(version, 77, &client, &req).expect("pieces");
            let mut whole = BytesMut::new();
            super::super::encode_request(&mut whole, ApiKey::Produce as i16, version, 77, &client, &req).expect("whole");
            prop_assert_eq!(&pieces.concat()[..], &whole[..]);
            // Each batch of at least SPLICE_MIN bytes is a piece of its own:
            // the request's buffer itself, not a copy.
            let batches: Vec<&Bytes> = req.topic_data.iter().flat_map(|t| &t.partition_data).filter_map(|p| p.records.as_ref()).collect();
            let spliced = batches.iter().filter(|b| b.len() >= SPLICE_MIN).count();
            let shared = pieces.tail.iter().filter(|t| batches.iter().any(|b| b.as_ptr() == t.as_ptr() && b.len() == t.len())).count();
            prop_assert_eq!(shared, spliced);
        }
    }
}

//! Decoding any response so that a damaged count cannot abort the process.
//!
//! kafka-protocol sizes each array from the count the bytes claim
//! (`Vec::with_capacity(count)`) before it reads an element, so a response
//! that claims billions of elements asks for hundreds of gigabytes at once;
//! the allocation fails, and a failed allocation aborts the process. The
//! Fetch response, the largest and the most frequent, is walked field by
//! field first ([`guard`](super::guard)). Every other response goes through
//! [`decode`], which needs no description of the message: it hands the
//! decoder a buffer (`Bounded`) that watches the two kinds of read an
//! array count is made of and keeps every count within what the bytes can
//! hold.
//!
//! - **Compact counts and lengths** (flexible versions, KIP-482) are
//!   unsigned varints, and in a response a varint is never anything else: an
//!   array's or string's length plus one, a tagged-field count, a tag or its
//!   size. Each array element takes at least one byte (every struct ends in
//!   its tagged-field count; every primitive is at least a byte), so a
//!   legitimate varint never exceeds the bytes that follow it by more than
//!   one. The decoder reads a varint one byte at a time; `Bounded` puts the
//!   bytes of each varint back together and refuses one whose value exceeds
//!   the rest of the body by more than [`SLACK`]. The decode fails there,
//!   before the allocation.
//! - **`INT32` counts** (older versions) look like every other `INT32`
//!   field, and a port, a session id or a generation may legitimately be
//!   larger than the bytes that follow. So `Bounded` does not refuse a large
//!   `INT32`; it hands the decoder a smaller one (the rest of the body plus
//!   [`SLACK`] plus one) and remembers that it did. If that value was a
//!   count, the decoder now needs more elements than the bytes can hold and
//!   fails. If the decode succeeds, no count was changed, only plain fields:
//!   the body is decoded a second time as it is, and every count that
//!   decode sees is one the first decode read whole.
//!
//! An allocation is thus bounded by the body's length plus [`SLACK`] times
//! the element's size. The first decode's result is the answer whenever no
//! `INT32` was lowered, which is nearly always.

use bytes::{Buf, Bytes, TryGetError};
use kafka_protocol::protocol::buf::ByteBuf;
use kafka_protocol::protocol::Decodable;
use std::ops::Range;

use super::guard::Refusal;

/// How far a count or length may exceed the bytes after it before it is
/// treated as damage (varints) or lowered (`INT32`): wide enough for any
/// tag number, port or broker id, small enough that the largest array it
/// lets through costs megabytes, not gigabytes.
pub const SLACK: usize = 1 << 16;

/// Decodes `body` (a response without its header) at `version`, refusing a
/// count or length the bytes cannot hold instead of letting the decoder
/// ask for an allocation that aborts the process.
pub fn decode<T: Decodable>(body: Bytes, version: i16) -> Result<T, Refusal> {
    let mut first = Bounded::new(body.clone());
    match T::decode(&mut first, version) {
        Ok(value) if !first.lowered => Ok(value),
        // Only plain fields were lowered (a count that was would have
        // failed the decode): decode the body as it came.
        Ok(_) => T::decode(&mut body.clone(), version).map_err(|e| e.to_string()),
        Err(e) => Err(first.refused.unwrap_or_else(|| e.to_string())),
    }
}

/// A read buffer over a response body that keeps the counts and lengths a
/// decoder reads within what the body can hold (see the module's docs).
#[derive(Debug)]
struct Bounded {
    inner: Bytes,
    /// The varint being read: the value of its bytes so far and the shift
    /// of the next one. A byte without the continuation bit ends it. Other
    /// reads do not: between two bytes of a well-formed varint there are
    /// none, and bytes that are not a varint's (a boolean of 0x80 or more,
    /// a varint the decoder cut at five bytes) can only make the next one
    /// look larger, never smaller.
    varint: u64,
    shift: u32,
    /// An `INT32` was lowered: the decode's result needs a second decode.
    lowered: bool,
    /// Why a varint was refused, for the error.
    refused: Option<Refusal>,
}

impl Bounded {
    /// A buffer over `body`.
    fn new(body: Bytes) -> Self {
        Self {
            inner: body,
            varint: 0,
            shift: 0,
            lowered: false,
            refused: None,
        }
    }

    fn end_varint(&mut self) {
        self.varint = 0;
        self.shift = 0;
    }
}

impl Buf for Bounded {
    fn remaining(&self) -> usize {
        self.inner.remaining()
    }

    fn chunk(&self) -> &[u8] {
        self.inner.chunk()
    }

    fn advance(&mut self, cnt: usize) {
        self.inner.advance(cnt);
    }

    /// Single bytes are what varints are read as (and booleans, which are
    /// 0 or 1 and so end a varint as its last byte would).
    fn try_get_u8(&mut self) -> Result<u8, TryGetError> {
        let Some(&b) = self.inner.first() else {
            return Err(TryGetError {
                requested: 1,
                available: 0,
            });
        };
        self.inner.advance(1);
        // Every byte is checked, not only a varint's last: the decoder
        // stops after five bytes whatever the fifth says, and a partial
        // value is never more than the whole.
        let bits = u64::from(b & 0x7f);
        self.varint = match bits.checked_shl(self.shift) {
            Some(v) if self.shift < 57 => self.varint | v,
            _ if bits == 0 => self.varint,
            _ => u64::MAX,
        };
        let value = self.varint;
        if b & 0x80 != 0 {
            self.shift = self.shift.saturating_add(7);
        } else {
            self.end_varint();
        }
        let rest = self.inner.len();
        if value > (rest + SLACK) as u64 {
            self.refused = Some(format!(
                "a compact count or length of at least {value} with {rest} bytes left"
            ));
            // The decoder's own error for a short read: it stops here.
            return Err(TryGetError {
                requested: usize::try_from(value).unwrap_or(usize::MAX),
                available: rest,
            });
        }
        Ok(b)
    }

    fn try_get_i32(&mut self) -> Result<i32, TryGetError> {
        let value = self.inner.try_get_i32()?;
        let ceiling = self.inner.len().saturating_add(SLACK).saturating_add(1);
        if value > 0 && value as usize > ceiling {
            self.lowered = true;
            // `ceiling` < `value` <= i32::MAX.
            return Ok(ceiling as i32);
        }
        Ok(value)
    }
}

impl ByteBuf for Bounded {
    fn peek_bytes(&mut self, r: Range<usize>) -> Bytes {
        self.inner.slice(r)
    }

    fn get_bytes(&mut self, size: usize) -> Bytes {
        self.inner.split_to(size)
    }
}

/// Decodes `data` as a response body of the API and version its first
/// three bytes pick, through [`decode`] (Fetch, walked by its guard
/// instead, has its own target): the body of the `response_body` fuzz
/// target and of its corpus replay. It must never panic or abort.
#[doc(hidden)]
pub fn fuzz_response_body(data: &[u8]) {
    use kafka_protocol::messages::*;
    let [k, v0, v1, body @ ..] = data else {
        return;
    };
    let version = i16::from_be_bytes([*v0, *v1]) & 0x1f;
    let body = Bytes::copy_from_slice(body);
    macro_rules! each {
        ($($t:ty),* $(,)?) => {{
            let all: &[fn(Bytes, i16)] = &[$(|b, v| {
                let _ = decode::<$t>(b, v);
            }),*];
            all[usize::from(*k) % all.len()](body, version);
        }};
    }
    each!(
        ProduceResponse,
        ListOffsetsResponse,
        MetadataResponse,
        OffsetCommitResponse,
        OffsetFetchResponse,
        FindCoordinatorResponse,
        JoinGroupResponse,
        HeartbeatResponse,
        LeaveGroupResponse,
        SyncGroupResponse,
        DescribeGroupsResponse,
        ListGroupsResponse,
        SaslHandshakeResponse,
        ApiVersionsResponse,
        CreateTopicsResponse,
        DeleteTopicsResponse,
        DeleteRecordsResponse,
        InitProducerIdResponse,
        AddPartitionsToTxnResponse,
        AddOffsetsToTxnResponse,
        EndTxnResponse,
        TxnOffsetCommitResponse,
        DescribeAclsResponse,
        CreateAclsResponse,
        DeleteAclsResponse,
        DescribeConfigsResponse,
        SaslAuthenticateResponse,
        DeleteGroupsResponse,
        IncrementalAlterConfigsResponse,
        ConsumerGroupHeartbeatResponse,
        ConsumerGroupDescribeResponse,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
    use kafka_protocol::messages::metadata_response::{
        MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
    };
    use kafka_protocol::messages::{BrokerId, JoinGroupResponse, MetadataResponse, TopicName};
    use kafka_protocol::protocol::{Encodable, Message, StrBytes};
    use proptest::prelude::*;

    fn encoded<T: Encodable>(m: &T, version: i16) -> Option<Bytes> {
        let mut b = BytesMut::new();
        m.encode(&mut b, version).ok()?;
        Some(b.freeze())
    }

    /// Metadata at every version with its first array (the brokers)
    /// claiming about four billion elements: as an `INT32` count (v0–v8)
    /// and as a compact one (v9+). Without `Bounded` the decoder asks for
    /// hundreds of gigabytes and the test process aborts.
    #[test]
    fn a_count_the_bytes_cannot_hold_is_refused_before_it_is_allocated() {
        let range = MetadataResponse::VERSIONS;
        for version in range.min..=range.max {
            let mut body = Vec::new();
            if version >= 3 {
                body.extend(0i32.to_be_bytes());
            }
            if version >= 9 {
                body.extend([0xff, 0xff, 0xff, 0xff, 0x0f]);
            } else {
                body.extend(i32::MAX.to_be_bytes());
            }
            body.extend([0u8; 64]);
            let refused = decode::<MetadataResponse>(Bytes::from(body), version);
            assert!(refused.is_err(), "v{version} decoded");
        }
        // A count deeper in: JoinGroup v9's members.
        let mut body = encoded(&JoinGroupResponse::default(), 9)
            .expect("encodes")
            .to_vec();
        // The members count is the byte before the final tagged-field count.
        let at = body.len() - 2;
        body.splice(at..=at, [0xfe, 0xff, 0xff, 0xff, 0x0f]);
        let refused = decode::<JoinGroupResponse>(Bytes::from(body), 9).expect_err("refused");
        assert!(refused.contains("compact count"), "{refused}");
    }

    fn varint(mut v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return out;
            }
            out.push(b | 0x80);
        }
    }

    /// Reads `value` as a varint followed by `rest` bytes, as the decoder
    /// does: a byte at a time.
    fn read_varint(value: u64, rest: usize) -> Result<(), TryGetError> {
        let mut bytes = varint(value);
        let n = bytes.len();
        bytes.resize(n + rest, 0);
        let mut buf = Bounded::new(Bytes::from(bytes));
        for _ in 0..n {
            buf.try_get_u8()?;
        }
        Ok(())
    }

    /// A varint up to `SLACK` beyond the bytes left passes; one more is
    /// refused, whatever its length.
    #[test]
    fn varints_are_refused_exactly_past_the_slack() {
        for rest in [0usize, 1, 100, 70_000] {
            for value in [0u64, 1, 127, 128, 16_384, (rest + SLACK) as u64] {
                assert!(read_varint(value, rest).is_ok(), "{value} with {rest} left");
            }
            let past = (rest + SLACK + 1) as u64;
            assert!(read_varint(past, rest).is_err(), "{past} with {rest} left");
            assert!(read_varint(u64::from(u32::MAX), rest).is_err());
        }
        // Five bytes that all say "more" are the decoder's whole varint.
        let mut buf = Bounded::new(Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0xff, 0, 0]));
        let read: Result<Vec<u8>, _> = (0..5).map(|_| buf.try_get_u8()).collect();
        assert!(read.is_err());
    }

    fn arb_i32() -> impl Strategy<Value = i32> {
        prop_oneof![0i32..100, any::<i32>(), Just(i32::MAX), 65_000i32..70_000]
    }

    fn arb_metadata() -> impl Strategy<Value = MetadataResponse> {
        let broker = (
            arb_i32(),
            "[a-z.]{0,12}",
            arb_i32(),
            proptest::option::of("[a-z]{1,4}"),
        )
            .prop_map(|(id, host, port, rack)| {
                let mut b = MetadataResponseBroker::default();
                b.node_id = BrokerId(id);
                b.host = StrBytes::from_string(host);
                b.port = port;
                b.rack = rack.map(StrBytes::from_string);
                b
            });
        let partition = (
            arb_i32(),
            arb_i32(),
            proptest::collection::vec(arb_i32(), 0..4),
        )
            .prop_map(|(index, leader, replicas)| {
                let mut p = MetadataResponsePartition::default();
                p.partition_index = index;
                p.leader_id = BrokerId(leader);
                p.replica_nodes = replicas.iter().map(|&r| BrokerId(r)).collect();
                p.isr_nodes = replicas.into_iter().rev().map(BrokerId).collect();
                p
            });
        let topic = ("[a-z]{1,10}", proptest::collection::vec(partition, 0..4)).prop_map(
            |(name, partitions)| {
                let mut t = MetadataResponseTopic::default();
                t.name = Some(TopicName(StrBytes::from_string(name)));
                t.partitions = partitions;
                t
            },
        );
        (
            arb_i32(),
            proptest::collection::vec(broker, 0..4),
            proptest::collection::vec(topic, 0..4),
            arb_i32(),
        )
            .prop_map(|(throttle, brokers, topics, controller)| {
                let mut m = MetadataResponse::default();
                m.throttle_time_ms = throttle;
                m.brokers = brokers;
                m.topics = topics;
                m.controller_id = BrokerId(controller);
                m
            })
    }

    fn arb_join_group() -> impl Strategy<Value = JoinGroupResponse> {
        let member = (
            "[a-z-]{1,20}",
            proptest::collection::vec(any::<u8>(), 0..40),
        )
            .prop_map(|(id, metadata)| {
                let mut m = JoinGroupResponseMember::default();
                m.member_id = StrBytes::from_string(id);
                m.metadata = Bytes::from(metadata);
                m
            });
        (
            arb_i32(),
            "[a-z-]{0,20}",
            proptest::collection::vec(member, 0..5),
        )
            .prop_map(|(generation, leader, members)| {
                let mut r = JoinGroupResponse::default();
                r.generation_id = generation;
                r.leader = StrBytes::from_string(leader);
                r.members = members;
                r
            })
    }

    /// A well-formed body decodes through `Bounded` exactly as it does
    /// directly, whatever its `INT32` fields hold (large ones are lowered
    /// in the first decode and read as they are in the second).
    fn same_as_direct<T: Decodable + Encodable + Message + PartialEq + std::fmt::Debug>(
        m: &T,
    ) -> Result<(), TestCaseError> {
        let mut any = false;
        for version in T::VERSIONS.min..=T::VERSIONS.max {
            let Some(body) = encoded(m, version) else {
                continue;
            };
            any = true;
            let direct = T::decode(&mut body.clone(), version).expect("direct decode");
            let bounded = decode::<T>(body, version);
            prop_assert_eq!(bounded.as_ref(), Ok(&direct), "v{}", version);
        }
        prop_assert!(any, "no version encoded");
        Ok(())
    }

    /// Any damage to a well-formed body (bytes overwritten, a big-endian
    /// count written anywhere, the end cut off) is decoded or refused,
    /// never a panic or an abort.
    fn damaged<T: Decodable + Encodable + Message>(
        m: &T,
        edits: &[(usize, u8)],
        count_at: usize,
        cut: usize,
    ) {
        for version in T::VERSIONS.min..=T::VERSIONS.max {
            let Some(body) = encoded(m, version) else {
                continue;
            };
            let mut bytes = body.to_vec();
            for &(at, b) in edits {
                if !bytes.is_empty() {
                    let i = at % bytes.len();
                    bytes[i] = b;
                }
            }
            let mut counted = bytes.clone();
            if counted.len() >= 4 {
                let i = count_at % (counted.len() - 3);
                counted[i..i + 4].copy_from_slice(&0x7fff_fff0i32.to_be_bytes());
            }
            let cut = cut % (bytes.len() + 1);
            for b in [bytes.clone(), counted, bytes[..cut].to_vec()] {
                let _ = decode::<T>(Bytes::from(b), version);
            }
        }
    }

    proptest! {
        #[test]
        fn well_formed_metadata_decodes_as_directly(m in arb_metadata()) {
            same_as_direct(&m)?;
        }

        #[test]
        fn well_formed_join_group_decodes_as_directly(m in arb_join_group()) {
            same_as_direct(&m)?;
        }

        #[test]
        fn damaged_bodies_never_abort(
            m in arb_metadata(),
            j in arb_join_group(),
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
            count_at: usize,
            cut: usize,
        ) {
            damaged(&m, &edits, count_at, cut);
            damaged(&j, &edits, count_at, cut);
        }

        #[test]
        fn arbitrary_bodies_of_any_response_never_abort(data: Vec<u8>) {
            fuzz_response_body(&data);
        }
    }

    /// Replays the response_body fuzz corpus committed in `fuzz/regressions`.
    #[test]
    fn fuzz_regressions_do_not_panic() {
        crate::test_support::replay_fuzz_corpus("response_body", fuzz_response_body);
    }
}

//! The consumer group's embedded protocol: the subscription each member
//! sends in JoinGroup and the assignment the leader hands out in SyncGroup
//! (`ConsumerProtocolSubscription` / `ConsumerProtocolAssignment`, versions
//! 0-3; owned partitions are KIP-429's, generation KIP-792's, rack KIP-881's).
//!
//! Other members write these bytes, so they are parsed here with every
//! length checked against what is left before anything is allocated.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};

/// The highest version we write and fully understand.
pub const CONSUMER_PROTOCOL_VERSION: i16 = 3;

/// Why member metadata could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MemberMetadataError {
    /// The bytes end inside a field.
    #[error("member metadata truncated while reading {0}")]
    Truncated(&'static str),
    /// A length or count is negative (where null is not allowed) or larger
    /// than the bytes that remain.
    #[error("member metadata has an impossible length for {0}")]
    BadLength(&'static str),
    /// A string is not UTF-8.
    #[error("member metadata has a non-UTF-8 {0}")]
    NotUtf8(&'static str),
    /// A negative version.
    #[error("member metadata has version {0}")]
    BadVersion(i16),
}

/// What a member subscribes to (`ConsumerProtocolSubscription`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscription {
    /// Topics, as the member sees them.
    pub topics: Vec<String>,
    /// Assignor-specific data.
    pub user_data: Option<Bytes>,
    /// Partitions the member owns now (cooperative rebalancing, v1+).
    pub owned: BTreeMap<String, Vec<i32>>,
    /// The generation in which it got them (v2+; -1 if unknown).
    pub generation: i32,
    /// The member's rack (v3+).
    pub rack: Option<String>,
}

/// What the leader assigns a member (`ConsumerProtocolAssignment`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignment {
    /// Partitions by topic.
    pub partitions: BTreeMap<String, Vec<i32>>,
    /// Assignor-specific data.
    pub user_data: Option<Bytes>,
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], MemberMetadataError> {
        if self.buf.len() < n {
            return Err(MemberMetadataError::Truncated(what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn i16(&mut self, what: &'static str) -> Result<i16, MemberMetadataError> {
        let b = self.take(2, what)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self, what: &'static str) -> Result<i32, MemberMetadataError> {
        let b = self.take(4, what)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn string(&mut self, what: &'static str) -> Result<String, MemberMetadataError> {
        self.nullable_string(what)?
            .ok_or(MemberMetadataError::BadLength(what))
    }
    fn nullable_string(
        &mut self,
        what: &'static str,
    ) -> Result<Option<String>, MemberMetadataError> {
        let len = self.i16(what)?;
        if len < 0 {
            return Ok(None);
        }
        let b = self.take(len as usize, what)?;
        std::str::from_utf8(b)
            .map(|s| Some(s.to_owned()))
            .map_err(|_| MemberMetadataError::NotUtf8(what))
    }
    fn nullable_bytes(&mut self, what: &'static str) -> Result<Option<Bytes>, MemberMetadataError> {
        let len = self.i32(what)?;
        if len < 0 {
            return Ok(None);
        }
        Ok(Some(Bytes::copy_from_slice(self.take(len as usize, what)?)))
    }
    /// An array count, checked against the bytes left given each element's
    /// smallest encoding.
    fn count(&mut self, what: &'static str, min_elem: usize) -> Result<usize, MemberMetadataError> {
        let n = self.i32(what)?;
        let n = usize::try_from(n).map_err(|_| MemberMetadataError::BadLength(what))?;
        if n.saturating_mul(min_elem) > self.buf.len() {
            return Err(MemberMetadataError::BadLength(what));
        }
        Ok(n)
    }
    fn topic_partitions(
        &mut self,
        what: &'static str,
    ) -> Result<BTreeMap<String, Vec<i32>>, MemberMetadataError> {
        let n = self.count(what, 6)?;
        let mut out = BTreeMap::new();
        for _ in 0..n {
            let topic = self.string(what)?;
            let m = self.count(what, 4)?;
            let mut parts = Vec::with_capacity(m);
            for _ in 0..m {
                parts.push(self.i32(what)?);
            }
            out.entry(topic).or_insert_with(Vec::new).extend(parts);
        }
        Ok(out)
    }
}

fn put_string(out: &mut BytesMut, s: &str) {
    out.put_i16(s.len().min(i16::MAX as usize) as i16);
    out.put_slice(&s.as_bytes()[..s.len().min(i16::MAX as usize)]);
}

fn put_nullable_bytes(out: &mut BytesMut, b: Option<&Bytes>) {
    match b {
        Some(b) => {
            out.put_i32(b.len() as i32);
            out.put_slice(b);
        }
        None => out.put_i32(-1),
    }
}

fn put_topic_partitions(out: &mut BytesMut, tps: &BTreeMap<String, Vec<i32>>) {
    out.put_i32(tps.len() as i32);
    for (t, ps) in tps {
        put_string(out, t);
        out.put_i32(ps.len() as i32);
        for p in ps {
            out.put_i32(*p);
        }
    }
}

impl Subscription {
    /// Encodes at `version` (0-3).
    pub fn encode(&self, version: i16) -> Bytes {
        let mut out = BytesMut::new();
        out.put_i16(version);
        out.put_i32(self.topics.len() as i32);
        for t in &self.topics {
            put_string(&mut out, t);
        }
        put_nullable_bytes(&mut out, self.user_data.as_ref());
        if version >= 1 {
            put_topic_partitions(&mut out, &self.owned);
        }
        if version >= 2 {
            out.put_i32(self.generation);
        }
        if version >= 3 {
            match &self.rack {
                Some(r) => put_string(&mut out, r),
                None => out.put_i16(-1),
            }
        }
        out.freeze()
    }

    /// Decodes any version; fields of versions above 3 are ignored, as the
    /// protocol only ever appends fields.
    pub fn decode(buf: &[u8]) -> Result<Self, MemberMetadataError> {
        let mut r = Reader { buf };
        let version = r.i16("version")?;
        if version < 0 {
            return Err(MemberMetadataError::BadVersion(version));
        }
        let n = r.count("topics", 2)?;
        let mut topics = Vec::with_capacity(n);
        for _ in 0..n {
            topics.push(r.string("topic")?);
        }
        let user_data = r.nullable_bytes("user data")?;
        let owned = if version >= 1 {
            r.topic_partitions("owned partitions")?
        } else {
            BTreeMap::new()
        };
        let generation = if version >= 2 {
            r.i32("generation")?
        } else {
            -1
        };
        let rack = if version >= 3 {
            r.nullable_string("rack")?
        } else {
            None
        };
        Ok(Self {
            topics,
            user_data,
            owned,
            generation,
            rack,
        })
    }
}

impl Assignment {
    /// Encodes at `version` (0-3; the layout is the same for all).
    pub fn encode(&self, version: i16) -> Bytes {
        let mut out = BytesMut::new();
        out.put_i16(version);
        put_topic_partitions(&mut out, &self.partitions);
        put_nullable_bytes(&mut out, self.user_data.as_ref());
        out.freeze()
    }

    /// Decodes any version. An empty buffer is an empty assignment (what the
    /// broker sends a member the leader gave nothing).
    pub fn decode(buf: &[u8]) -> Result<Self, MemberMetadataError> {
        if buf.is_empty() {
            return Ok(Self::default());
        }
        let mut r = Reader { buf };
        let version = r.i16("version")?;
        if version < 0 {
            return Err(MemberMetadataError::BadVersion(version));
        }
        let partitions = r.topic_partitions("assigned partitions")?;
        let user_data = r.nullable_bytes("user data")?;
        Ok(Self {
            partitions,
            user_data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ConsumerProtocolAssignment, ConsumerProtocolSubscription};
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
    use proptest::prelude::*;

    fn arb_tps() -> impl Strategy<Value = BTreeMap<String, Vec<i32>>> {
        proptest::collection::btree_map(
            "[a-z]{1,8}",
            proptest::collection::vec(0i32..1000, 0..6),
            0..4,
        )
    }

    fn arb_subscription() -> impl Strategy<Value = Subscription> {
        (
            proptest::collection::vec("[a-z.]{1,12}", 0..5),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
            arb_tps(),
            -1i32..100,
            proptest::option::of("[a-z0-9]{1,6}"),
        )
            .prop_map(|(topics, ud, owned, generation, rack)| Subscription {
                topics,
                user_data: ud.map(Bytes::from),
                owned,
                generation,
                rack,
            })
    }

    proptest! {
        #[test]
        fn subscriptions_round_trip(s in arb_subscription()) {
            let back = Subscription::decode(&s.encode(3)).expect("decode");
            prop_assert_eq!(back, s.clone());
            // v0 drops owned partitions, generation and rack.
            let v0 = Subscription::decode(&s.encode(0)).expect("decode v0");
            prop_assert_eq!(v0.topics, s.topics);
            prop_assert!(v0.owned.is_empty());
        }

        #[test]
        fn assignments_round_trip(partitions in arb_tps(), ud in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20))) {
            let a = Assignment { partitions, user_data: ud.map(Bytes::from) };
            prop_assert_eq!(Assignment::decode(&a.encode(3)).expect("decode"), a);
        }

        /// Garbage never panics and never allocates beyond the input.
        #[test]
        fn garbage_is_an_error_not_a_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Subscription::decode(&data);
            let _ = Assignment::decode(&data);
        }
    }

    /// Replays the member_metadata fuzz corpus committed in
    /// `fuzz/regressions`.
    #[test]
    fn fuzz_regressions_do_not_panic() {
        crate::test_support::replay_fuzz_corpus("member_metadata", |data| {
            let _ = Subscription::decode(data);
            let _ = Assignment::decode(data);
        });
    }

    #[test]
    fn huge_counts_are_refused_before_allocating() {
        // version 0, then a topic count of 2^31-1 with nothing behind it.
        let data = [0u8, 0, 0x7f, 0xff, 0xff, 0xff];
        assert_eq!(
            Subscription::decode(&data),
            Err(MemberMetadataError::BadLength("topics"))
        );
        assert!(Assignment::decode(&[0, 1, 0xff, 0xff, 0xff, 0xfe]).is_err());
    }

    /// What the Java client writes (kafka-protocol's encoding of the same
    /// schema) reads the same through our decoder, and vice versa.
    #[test]
    fn matches_the_reference_encoding() {
        use kafka_protocol::messages::consumer_protocol_subscription::TopicPartition as SubTp;
        use kafka_protocol::messages::TopicName;
        let theirs = ConsumerProtocolSubscription::default()
            .with_topics(vec![
                StrBytes::from_static_str("a"),
                StrBytes::from_static_str("b"),
            ])
            .with_owned_partitions(vec![SubTp::default()
                .with_topic(TopicName(StrBytes::from_static_str("a")))
                .with_partitions(vec![0, 2])])
            .with_generation_id(7)
            .with_rack_id(Some(StrBytes::from_static_str("r1")));
        let mut buf = BytesMut::new();
        buf.put_i16(3);
        theirs.encode(&mut buf, 3).expect("encode");
        let ours = Subscription::decode(&buf).expect("decode");
        assert_eq!(ours.topics, ["a", "b"]);
        assert_eq!(ours.owned, BTreeMap::from([("a".to_owned(), vec![0, 2])]));
        assert_eq!((ours.generation, ours.rack.as_deref()), (7, Some("r1")));

        let mut enc = ours.encode(3);
        let _version = bytes::Buf::get_i16(&mut enc);
        let back = ConsumerProtocolSubscription::decode(&mut enc, 3).expect("theirs decodes ours");
        assert_eq!(back, theirs);

        let a = Assignment {
            partitions: BTreeMap::from([("a".to_owned(), vec![1, 3])]),
            user_data: None,
        };
        let mut enc = a.encode(3);
        let _version = bytes::Buf::get_i16(&mut enc);
        let back = ConsumerProtocolAssignment::decode(&mut enc, 3).expect("decode");
        assert_eq!(back.assigned_partitions[0].partitions, vec![1, 3]);
    }
}

//! A Fetch response's shape, checked before kafka-protocol decodes it.
//!
//! kafka-protocol's decoder sizes every array from the count the bytes
//! claim (`Vec::with_capacity(count)`) before it reads one element. A
//! damaged or hostile response that claims billions of topics or partitions
//! therefore asks for hundreds of gigabytes up front; the allocation fails,
//! and a failed allocation aborts the process: no error, no unwinding, no
//! chance to retry. The `fetch_response` fuzz target found this within
//! seconds.
//!
//! [`fetch_response`] walks the body in exactly the order the decoder reads
//! it (Fetch v4–v18, including the tagged fields it knows), allocating
//! nothing, and accepts it only when every array is really there, element
//! by element. After it, every count the decoder sees is one whose elements
//! were read, so what the decoder allocates is bounded by the bytes
//! received. A rejected body becomes [`Error::Decode`](crate::Error::Decode)
//! naming the field, which the consumer treats as it treats any undecodable
//! response.
//!
//! The Fetch response is walked here because it carries the data, is by far
//! the largest and is decoded on every poll; every other response goes
//! through [`bounded`](super::bounded), which needs no description of the
//! message.

/// Why a body was refused: the field and what was wrong with it.
pub type Refusal = String;

/// Checks that `body` (a Fetch response without its header, at `version`)
/// holds every element each of its arrays claims.
pub fn fetch_response(body: &[u8], version: i16) -> Result<(), Refusal> {
    if !(4..=18).contains(&version) {
        return Err(format!("Fetch v{version} is not one this check knows"));
    }
    let w = &mut Walk {
        rest: body,
        flexible: version >= 12,
    };
    w.int(4, "throttle_time_ms")?;
    if version >= 7 {
        w.int(2, "error_code")?;
        w.int(4, "session_id")?;
    }
    w.array("responses", |w| topic(w, version))?;
    w.tagged(|w, tag| match tag {
        0 if version >= 16 => w
            .array("node_endpoints", |w| {
                w.int(4, "node_id")?;
                w.string("host")?;
                w.int(4, "port")?;
                w.string("rack")?;
                w.tagged(|_, _| Ok(false))
            })
            .map(|()| true),
        0 => Err(format!("tag 0 is not valid for Fetch v{version}")),
        _ => Ok(false),
    })
}

fn topic(w: &mut Walk<'_>, version: i16) -> Result<(), Refusal> {
    if version <= 12 {
        w.string("topic")?;
    }
    if version >= 13 {
        w.int(16, "topic_id")?;
    }
    w.array("partitions", |w| partition(w, version))?;
    w.tagged(|_, _| Ok(false))
}

fn partition(w: &mut Walk<'_>, version: i16) -> Result<(), Refusal> {
    w.int(4, "partition_index")?;
    w.int(2, "error_code")?;
    w.int(8, "high_watermark")?;
    w.int(8, "last_stable_offset")?;
    if version >= 5 {
        w.int(8, "log_start_offset")?;
    }
    w.array("aborted_transactions", |w| {
        w.int(8, "producer_id")?;
        w.int(8, "first_offset")?;
        w.tagged(|_, _| Ok(false))
    })?;
    if version >= 11 {
        w.int(4, "preferred_read_replica")?;
    }
    w.bytes("records")?;
    // The decoder reads the tags it knows from the stream itself, whatever
    // size the tag claims; so does this walk.
    w.tagged(|w, tag| {
        let (a, b) = match tag {
            0 => (4, 8), // diverging_epoch: epoch, end_offset
            1 => (4, 4), // current_leader: leader_id, leader_epoch
            2 => (8, 4), // snapshot_id: end_offset, epoch
            _ => return Ok(false),
        };
        w.int(a, "tagged field")?;
        w.int(b, "tagged field")?;
        w.tagged(|_, _| Ok(false))?;
        Ok(true)
    })
}

/// A cursor over the body; nothing it does allocates.
struct Walk<'a> {
    rest: &'a [u8],
    /// Flexible versions: compact lengths and tagged fields (KIP-482).
    flexible: bool,
}

impl Walk<'_> {
    fn skip(&mut self, n: usize, what: &str) -> Result<(), Refusal> {
        if n > self.rest.len() {
            return Err(format!(
                "{what}: {n} bytes claimed, {} left",
                self.rest.len()
            ));
        }
        self.rest = &self.rest[n..];
        Ok(())
    }

    /// A fixed-width field of `n` bytes.
    fn int(&mut self, n: usize, what: &str) -> Result<(), Refusal> {
        self.skip(n, what)
    }

    /// A big-endian `i16` or `i32` length.
    fn signed(&mut self, width: usize, what: &str) -> Result<i64, Refusal> {
        let Some((head, rest)) = self.rest.split_at_checked(width) else {
            return Err(format!("{what}: the body ends inside its length"));
        };
        self.rest = rest;
        Ok(match *head {
            [a, b] => i64::from(i16::from_be_bytes([a, b])),
            [a, b, c, d] => i64::from(i32::from_be_bytes([a, b, c, d])),
            _ => unreachable!("lengths are 2 or 4 bytes"),
        })
    }

    /// An unsigned varint, read as the decoder reads it: at most five
    /// bytes, extra high bits dropped.
    fn uvarint(&mut self, what: &str) -> Result<u32, Refusal> {
        let mut value = 0u32;
        for i in 0..5 {
            let Some((&b, rest)) = self.rest.split_first() else {
                return Err(format!("{what}: the body ends inside a varint"));
            };
            self.rest = rest;
            value |= (u32::from(b) & 0x7f).wrapping_shl(i * 7);
            if b < 0x80 {
                break;
            }
        }
        Ok(value)
    }

    /// A length or count: `None` for null.
    fn length(&mut self, width: usize, what: &str) -> Result<Option<usize>, Refusal> {
        if self.flexible {
            return Ok(self.uvarint(what)?.checked_sub(1).map(|n| n as usize));
        }
        match self.signed(width, what)? {
            -1 => Ok(None),
            n if n >= 0 => Ok(Some(n as usize)),
            n => Err(format!("{what}: negative length {n}")),
        }
    }

    fn string(&mut self, what: &str) -> Result<(), Refusal> {
        match self.length(2, what)? {
            Some(n) => self.skip(n, what),
            None => Ok(()),
        }
    }

    fn bytes(&mut self, what: &str) -> Result<(), Refusal> {
        match self.length(4, what)? {
            Some(n) => self.skip(n, what),
            None => Ok(()),
        }
    }

    /// An array: every element it claims is walked. Each takes at least a
    /// byte, so a count above the bytes left is refused before the first.
    fn array(
        &mut self,
        what: &str,
        mut element: impl FnMut(&mut Self) -> Result<(), Refusal>,
    ) -> Result<(), Refusal> {
        let Some(n) = self.length(4, what)? else {
            return Ok(());
        };
        if n > self.rest.len() {
            return Err(format!(
                "{what}: {n} elements claimed, {} bytes left",
                self.rest.len()
            ));
        }
        for _ in 0..n {
            element(self)?;
        }
        Ok(())
    }

    /// Tagged fields (flexible versions only): `known` walks a tag it
    /// knows and returns true; others are skipped by their size.
    fn tagged(
        &mut self,
        mut known: impl FnMut(&mut Self, u32) -> Result<bool, Refusal>,
    ) -> Result<(), Refusal> {
        if !self.flexible {
            return Ok(());
        }
        let n = self.uvarint("tagged fields")?;
        for _ in 0..n {
            let tag = self.uvarint("tag")?;
            let size = self.uvarint("tag size")?;
            if !known(self, tag)? {
                self.skip(size as usize, "tagged field")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::fetch_response;
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::messages::fetch_response::{
        AbortedTransaction, EpochEndOffset, FetchableTopicResponse, LeaderIdAndEpoch, NodeEndpoint,
        PartitionData, SnapshotId,
    };
    use kafka_protocol::messages::{BrokerId, FetchResponse, ProducerId, TopicName};
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
    use proptest::prelude::*;

    /// A response with every field its version carries set.
    fn response(
        version: i16,
        topics: usize,
        partitions: usize,
        aborted: usize,
        seed: u64,
    ) -> FetchResponse {
        let part = |i: usize| {
            let mut p = PartitionData::default()
                .with_partition_index(i as i32)
                .with_high_watermark(seed as i64)
                .with_last_stable_offset(7)
                .with_aborted_transactions(i.is_multiple_of(2).then(|| {
                    (0..aborted)
                        .map(|a| {
                            AbortedTransaction::default()
                                .with_producer_id(ProducerId(a as i64))
                                .with_first_offset(seed as i64)
                        })
                        .collect()
                }))
                .with_records((!i.is_multiple_of(3)).then(|| Bytes::from(vec![seed as u8; i * 5])));
            if version >= 5 {
                p = p.with_log_start_offset(3);
            }
            if version >= 11 {
                p = p.with_preferred_read_replica(BrokerId(2));
            }
            if version >= 12 {
                p = p
                    .with_diverging_epoch(EpochEndOffset::default().with_epoch(i as i32))
                    .with_current_leader(LeaderIdAndEpoch::default().with_leader_epoch(seed as i32))
                    .with_snapshot_id(SnapshotId::default().with_end_offset(i as i64));
            }
            p
        };
        let topic = |t: usize| {
            let mut r = FetchableTopicResponse::default()
                .with_partitions((0..partitions).map(part).collect());
            if version <= 12 {
                r = r.with_topic(TopicName(StrBytes::from_string(format!("topic-{t}"))));
            } else {
                r = r.with_topic_id(uuid::Uuid::from_u64_pair(seed, t as u64));
            }
            r
        };
        let mut r = FetchResponse::default()
            .with_throttle_time_ms(1)
            .with_responses((0..topics).map(topic).collect());
        if version >= 7 {
            r = r.with_session_id(seed as i32);
        }
        if version >= 16 {
            r = r.with_node_endpoints(vec![NodeEndpoint::default()
                .with_node_id(BrokerId(1))
                .with_host(StrBytes::from_static_str("localhost"))
                .with_port(9092)
                .with_rack(Some(StrBytes::from_static_str("r1")))]);
        }
        r
    }

    fn encode(r: &FetchResponse, version: i16) -> Vec<u8> {
        let mut buf = BytesMut::new();
        r.encode(&mut buf, version).expect("encodes");
        buf.to_vec()
    }

    proptest! {
        /// Every response kafka-protocol encodes, at every version, passes
        /// and decodes; every truncation and every damaged byte either
        /// passes and then decodes without an oversized allocation, or is
        /// refused. (An abort would end the test run.)
        #[test]
        fn real_responses_pass_and_damaged_ones_never_reach_the_decoder_unchecked(
            version in 4i16..=18,
            topics in 0usize..4,
            partitions in 0usize..4,
            aborted in 0usize..3,
            seed in any::<u64>(),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let body = encode(&response(version, topics, partitions, aborted, seed), version);
            prop_assert_eq!(fetch_response(&body, version), Ok(()));
            let decoded = FetchResponse::decode(&mut Bytes::from(body.clone()), version);
            prop_assert!(decoded.is_ok(), "{:?}", decoded.err());
            let cut = cut.index(body.len() + 1);
            if fetch_response(&body[..cut], version).is_ok() {
                let _ = FetchResponse::decode(&mut Bytes::copy_from_slice(&body[..cut]), version);
            }
            if !body.is_empty() {
                let mut damaged = body.clone();
                damaged[flip.index(body.len())] ^= byte | 1;
                if fetch_response(&damaged, version).is_ok() {
                    let _ = FetchResponse::decode(&mut Bytes::from(damaged), version);
                }
            }
        }
    }

    #[test]
    fn a_count_of_billions_is_refused_naming_the_array() {
        // v11: throttle, error, session, then the topic count.
        let mut body = vec![0; 10];
        body.extend_from_slice(&0x7fff_ffffi32.to_be_bytes());
        let why = fetch_response(&body, 11).expect_err("refused");
        assert!(
            why.starts_with("responses: 2147483647 elements claimed"),
            "{why}"
        );
        // v12: a compact count inside a partition's aborted transactions.
        let mut body = vec![0; 10]; // throttle, error, session
        body.extend_from_slice(&[2, 2, b't', 2]); // 1 topic "t", 1 partition
        body.extend_from_slice(&[0; 30]); // index, error, three offsets
        body.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]); // u32::MAX
        body.extend_from_slice(&[0; 64]);
        let why = fetch_response(&body, 12).expect_err("refused");
        assert!(
            why.starts_with("aborted_transactions: 4294967294 elements claimed, 64 bytes left"),
            "{why}"
        );
        // The same body with a count of one is walked further.
        body[44..49].copy_from_slice(&[2, 0, 0, 0, 0]);
        assert_ne!(fetch_response(&body, 12), Err(why));
    }

    #[test]
    fn versions_it_does_not_know_are_refused() {
        assert!(fetch_response(&[0; 16], 3).is_err());
        assert!(fetch_response(&[0; 16], 19).is_err());
    }
}

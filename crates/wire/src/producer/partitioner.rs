//! The Java client's default partitioner, so that a key lands on the same
//! partition whichever client wrote it.
//!
//! * Keyed records: `toPositive(murmur2(key)) % partitions`, with Kafka's
//!   murmur2 (seed `0x9747b28c`).
//! * Null keys: sticky partitioning (KIP-480): stay on one partition until its
//!   batch is sealed, then move to another, so that batches fill up.

/// Kafka's murmur2 hash of `data` (`org.apache.kafka.common.utils.Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition the Java client picks for `key` among `partitions`.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    debug_assert!(partitions > 0);
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

/// Sticky choice for null-key records, per topic.
#[derive(Debug, Default)]
pub(crate) struct Sticky {
    current: rustc_hash::FxHashMap<String, i32>,
}

impl Sticky {
    /// The partition null-key records of `topic` stick to, if one is chosen.
    pub(crate) fn current(&self, topic: &str, partitions: i32) -> Option<i32> {
        self.current.get(topic).copied().filter(|&p| p < partitions)
    }

    /// The partition null-key records of `topic` go to now. `available` are
    /// the partitions that have a leader (all of them if empty).
    pub(crate) fn partition(&mut self, topic: &str, partitions: i32, available: &[i32]) -> i32 {
        if let Some(&p) = self.current.get(topic) {
            if p < partitions {
                return p;
            }
        }
        self.next(topic, partitions, available, None)
    }

    /// Moves `topic` to another partition (its batch on `sealed` closed).
    pub(crate) fn next(
        &mut self,
        topic: &str,
        partitions: i32,
        available: &[i32],
        sealed: Option<i32>,
    ) -> i32 {
        if let Some(s) = sealed {
            if self.current.get(topic) != Some(&s) {
                // Already moved on.
                return self.current.get(topic).copied().unwrap_or(0);
            }
        }
        let pick = |n: usize| rand::random_range(0..n.max(1));
        let p = if available.len() > 1 {
            let mut p = available[pick(available.len())];
            if Some(p) == sealed {
                p = available
                    [(available.iter().position(|&x| x == p).unwrap_or(0) + 1) % available.len()];
            }
            p
        } else if let Some(&only) = available.first() {
            only
        } else {
            pick(partitions.max(1) as usize) as i32
        };
        self.current.insert(topic.to_owned(), p);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hashes and partitions (of 6) computed with Kafka 4.1.1's
    /// `Utils.murmur2` and `Utils.toPositive`.
    #[test]
    fn matches_the_java_client() {
        let vectors: &[(&str, i32, i32)] = &[
            ("", 275646681, 3),
            ("a", -1563381124, 4),
            ("21", -973932308, 0),
            ("foobar", -790332482, 0),
            ("a-little-bit-long-string", -985981536, 2),
            ("a-little-bit-longer-string", -1486304829, 5),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
                5,
            ),
            ("user-42", 1459644460, 4),
            ("été", -2101193575, 1),
        ];
        for &(key, hash, partition) in vectors {
            assert_eq!(murmur2(key.as_bytes()), hash, "murmur2({key:?})");
            assert_eq!(
                partition_for_key(key.as_bytes(), 6),
                partition,
                "partition of {key:?}"
            );
        }
    }

    #[test]
    fn sticky_stays_until_sealed() {
        let mut s = Sticky::default();
        let avail = [0, 1, 2, 3];
        assert_eq!(s.current("t", 4), None);
        let first = s.partition("t", 4, &avail);
        assert_eq!(s.current("t", 4), Some(first));
        for _ in 0..10 {
            assert_eq!(s.partition("t", 4, &avail), first);
        }
        let moved = s.next("t", 4, &avail, Some(first));
        assert_ne!(moved, first);
        assert_eq!(s.partition("t", 4, &avail), moved);
        // A stale seal notice (for a partition we already left) is ignored.
        assert_eq!(s.next("t", 4, &avail, Some(first)), moved);
    }
}

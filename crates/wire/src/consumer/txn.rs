//! read_committed filtering: which batches of a fetched partition belong to
//! aborted transactions.
//!
//! The broker returns, with each partition, the aborted transactions that
//! overlap the fetched range as `(producer id, first offset)`. Walking the
//! batches in offset order, a producer becomes "aborted" when a batch at or
//! past its first offset appears, and stops being so at its ABORT marker.
//! Transactional batches of an aborted producer are dropped; control batches
//! (markers) are never delivered.

use std::collections::HashSet;

use crate::record::RecordBatch;

/// Filters one partition's batches for read_committed delivery.
#[derive(Debug, Default)]
pub(crate) struct AbortedFilter {
    /// Aborted transactions not yet reached, sorted by first offset.
    upcoming: Vec<(i64, i64)>,
    next: usize,
    aborted: HashSet<i64>,
}

impl AbortedFilter {
    /// A filter for this fetch's list of aborted transactions
    /// `(producer_id, first_offset)`.
    pub(crate) fn new(mut aborted: Vec<(i64, i64)>) -> Self {
        aborted.sort_by_key(|&(_, first)| first);
        Self {
            upcoming: aborted,
            next: 0,
            aborted: HashSet::new(),
        }
    }

    /// Whether `batch` is delivered. Call in offset order.
    pub(crate) fn keep(&mut self, batch: &RecordBatch) -> bool {
        while let Some(&(pid, first)) = self.upcoming.get(self.next) {
            if first > batch.last_offset() {
                break;
            }
            self.aborted.insert(pid);
            self.next += 1;
        }
        if batch.is_control() {
            if batch.control_commit() == Some(false) {
                self.aborted.remove(&batch.producer_id());
            }
            return false;
        }
        !(batch.is_transactional() && self.aborted.contains(&batch.producer_id()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{set_base_offset, BatchBuilder, Compression, Parsed};
    use bytes::Bytes;

    fn batch(base: i64, pid: i64, txn: bool, marker: Option<bool>) -> RecordBatch {
        let mut b = BatchBuilder::new(Compression::None)
            .producer(pid, 0, 0)
            .transactional(txn)
            .control(marker.is_some());
        match marker {
            Some(commit) => {
                b.append::<&str, &[u8]>(0, Some(&[0, 0, 0, u8::from(commit)]), Some(&[0; 6]), &[]);
            }
            None => {
                b.append::<&str, &[u8]>(0, None, Some(b"v"), &[]);
            }
        }
        let mut v = b.finish().expect("finish").to_vec();
        set_base_offset(&mut v, base);
        match RecordBatch::parse(Bytes::from(v)).expect("parse") {
            Parsed::Batch(b, _) => b,
            Parsed::Partial { .. } => unreachable!(),
        }
    }

    #[test]
    fn aborted_data_and_all_markers_are_dropped() {
        // pid 1 aborts at 0..=2, pid 2 commits at 1..=3, plain batch at 4,
        // pid 1 again (committed) at 5..=6.
        let batches = [
            batch(0, 1, true, None),
            batch(1, 2, true, None),
            batch(2, 1, true, Some(false)),
            batch(3, 2, true, Some(true)),
            batch(4, -1, false, None),
            batch(5, 1, true, None),
            batch(6, 1, true, Some(true)),
        ];
        let mut f = AbortedFilter::new(vec![(1, 0)]);
        let kept: Vec<i64> = batches
            .iter()
            .filter(|b| f.keep(b))
            .map(RecordBatch::base_offset)
            .collect();
        assert_eq!(kept, [1, 4, 5]);
    }
}

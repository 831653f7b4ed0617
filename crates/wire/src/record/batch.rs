//! A zero-copy view of one RecordBatch v2 (KIP-98's format, magic 2).
//!
//! Layout of the 61-byte header, then the records:
//!
//! ```text
//! 0  baseOffset i64      27 baseTimestamp i64
//! 8  batchLength i32     35 maxTimestamp i64
//! 12 leaderEpoch i32     43 producerId i64
//! 16 magic i8            51 producerEpoch i16
//! 17 crc u32 (CRC-32C of bytes 21..end)
//! 21 attributes i16      53 baseSequence i32
//! 23 lastOffsetDelta i32 57 recordCount i32
//! ```
//!
//! [`RecordBatch::parse`] checks length, magic and CRC once; header fields are
//! read at fixed offsets; [`RecordBatch::records`] walks records lazily with
//! keys, values and headers borrowed from the buffer (or from the batch's one
//! decompressed copy).

use std::sync::OnceLock;

use bytes::Bytes;

use super::compression::{decompress, Compression};
use super::varint::{read_varint, read_varlong, VarintError};

/// Size of the RecordBatch v2 header.
pub const HEADER_LEN: usize = 61;
/// Bytes before `batchLength` counts: baseOffset and batchLength itself.
pub const LOG_OVERHEAD: usize = 12;
const MAGIC_OFFSET: usize = 16;
const CRC_OFFSET: usize = 17;
const ATTRIBUTES_OFFSET: usize = 21;
/// The largest batch the parser accepts, and the largest decompressed records
/// section; anything larger is treated as corrupt rather than allocated.
pub const MAX_BATCH_BYTES: usize = 256 * 1024 * 1024;

const TIMESTAMP_TYPE_BIT: i16 = 0x08;
const TRANSACTIONAL_BIT: i16 = 0x10;
const CONTROL_BIT: i16 = 0x20;

/// Why a batch or a record could not be read. The consumer wraps it with the
/// topic and partition it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The bytes end before the batch does.
    #[error("truncated record batch at offset {base_offset}: needs {needed} bytes, {available} available")]
    Truncated {
        /// The batch's base offset, or -1 if not even that could be read.
        base_offset: i64,
        /// Bytes the batch claims.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// A magic byte other than 2: v0/v1 message sets are not supported.
    #[error("unsupported record batch magic {magic} at offset {base_offset} (only v2 is supported; v0/v1 message sets come from brokers older than 0.11)")]
    UnsupportedMagic {
        /// The batch's base offset.
        base_offset: i64,
        /// The magic byte found.
        magic: i8,
    },
    /// The stored CRC-32C does not match the computed one.
    #[error("corrupt record batch at offset {base_offset}: CRC-32C stored {stored:#010x}, computed {computed:#010x}")]
    Crc {
        /// The batch's base offset.
        base_offset: i64,
        /// The CRC in the header.
        stored: u32,
        /// The CRC of the bytes.
        computed: u32,
    },
    /// The compression id in the attributes is not one we know.
    #[error("record batch at offset {base_offset} uses unknown compression id {id}")]
    UnknownCompression {
        /// The batch's base offset.
        base_offset: i64,
        /// The codec id.
        id: i16,
    },
    /// The records section could not be decompressed.
    #[error("record batch at offset {base_offset}: {codec} decompression failed: {reason}")]
    Decompression {
        /// The batch's base offset.
        base_offset: i64,
        /// The codec.
        codec: Compression,
        /// The codec's complaint.
        reason: String,
    },
    /// A record inside the batch is malformed.
    #[error("corrupt record at offset {offset}: {reason}")]
    CorruptRecord {
        /// The offset of the record (base offset plus the index when the
        /// record's own delta could not be read).
        offset: i64,
        /// What is wrong.
        reason: &'static str,
    },
}

impl RecordError {
    /// The offset the error concerns.
    pub fn offset(&self) -> i64 {
        match self {
            Self::Truncated { base_offset, .. }
            | Self::UnsupportedMagic { base_offset, .. }
            | Self::Crc { base_offset, .. }
            | Self::UnknownCompression { base_offset, .. }
            | Self::Decompression { base_offset, .. } => *base_offset,
            Self::CorruptRecord { offset, .. } => *offset,
        }
    }
}

#[inline]
fn i16_at(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
#[inline]
fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
#[inline]
fn i64_at(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

/// One RecordBatch v2, checked, over a shared buffer.
#[derive(Debug, Clone)]
pub struct RecordBatch {
    buf: Bytes,
    /// The decompressed records section of a compressed batch, made once.
    inflated: OnceLock<Result<Bytes, RecordError>>,
}

/// What the start of a buffer holds.
#[derive(Debug)]
pub enum Parsed {
    /// A whole, checked batch and the bytes after it.
    Batch(RecordBatch, Bytes),
    /// The buffer ends inside a batch whose header was readable: a fetch
    /// response may end this way when the size limit cut the last batch.
    Partial {
        /// The cut batch's base offset.
        base_offset: i64,
        /// Its full size.
        needed: usize,
    },
}

impl RecordBatch {
    /// Reads the batch at the start of `buf`: checks the length, the magic
    /// byte and the CRC-32C.
    pub fn parse(buf: Bytes) -> Result<Parsed, RecordError> {
        if buf.len() < LOG_OVERHEAD {
            return Err(RecordError::Truncated {
                base_offset: -1,
                needed: LOG_OVERHEAD,
                available: buf.len(),
            });
        }
        let base_offset = i64_at(&buf, 0);
        let batch_len = i32_at(&buf, 8);
        let total = usize::try_from(batch_len)
            .ok()
            .and_then(|l| l.checked_add(LOG_OVERHEAD))
            .filter(|&t| t <= MAX_BATCH_BYTES)
            .ok_or(RecordError::CorruptRecord {
                offset: base_offset,
                reason: "batch length is negative or over the 256 MiB limit",
            })?;
        // Check the magic byte first where present, so that an old message
        // set is named as such rather than as a short batch.
        if let Some(&magic) = buf.get(MAGIC_OFFSET) {
            if magic != 2 {
                return Err(RecordError::UnsupportedMagic {
                    base_offset,
                    magic: magic as i8,
                });
            }
        }
        if total < HEADER_LEN {
            return Err(RecordError::CorruptRecord {
                offset: base_offset,
                reason: "batch length is shorter than the v2 header",
            });
        }
        if buf.len() < total {
            return Ok(Parsed::Partial {
                base_offset,
                needed: total,
            });
        }
        let mut buf = buf;
        let rest = buf.split_off(total);
        let stored = i32_at(&buf, CRC_OFFSET) as u32;
        let computed = super::crc32c(&buf[ATTRIBUTES_OFFSET..]);
        if stored != computed {
            return Err(RecordError::Crc {
                base_offset,
                stored,
                computed,
            });
        }
        let batch = Self {
            buf,
            inflated: OnceLock::new(),
        };
        if Compression::from_attributes(batch.attributes()).is_none() {
            return Err(RecordError::UnknownCompression {
                base_offset,
                id: batch.attributes() & 0x07,
            });
        }
        Ok(Parsed::Batch(batch, rest))
    }

    /// The whole batch as it is on the wire.
    pub fn as_bytes(&self) -> &Bytes {
        &self.buf
    }
    /// Offset of the first record.
    pub fn base_offset(&self) -> i64 {
        i64_at(&self.buf, 0)
    }
    /// The leader epoch the batch was written in.
    pub fn partition_leader_epoch(&self) -> i32 {
        i32_at(&self.buf, 12)
    }
    /// The raw attributes.
    pub fn attributes(&self) -> i16 {
        i16_at(&self.buf, ATTRIBUTES_OFFSET)
    }
    /// The codec of the records section.
    pub fn compression(&self) -> Compression {
        Compression::from_attributes(self.attributes()).unwrap_or_default()
    }
    /// Whether timestamps are broker append times rather than create times.
    pub fn is_log_append_time(&self) -> bool {
        self.attributes() & TIMESTAMP_TYPE_BIT != 0
    }
    /// Whether the batch belongs to a transaction.
    pub fn is_transactional(&self) -> bool {
        self.attributes() & TRANSACTIONAL_BIT != 0
    }
    /// Whether the batch holds a control record (a transaction marker).
    pub fn is_control(&self) -> bool {
        self.attributes() & CONTROL_BIT != 0
    }
    /// Offset delta of the last record; kept even when compaction removed it,
    /// so `last_offset() + 1` is where the next fetch starts.
    pub fn last_offset_delta(&self) -> i32 {
        i32_at(&self.buf, 23)
    }
    /// Offset of the last record the batch was written with.
    pub fn last_offset(&self) -> i64 {
        self.base_offset() + i64::from(self.last_offset_delta())
    }
    /// Timestamp of the first record.
    pub fn base_timestamp(&self) -> i64 {
        i64_at(&self.buf, 27)
    }
    /// The largest timestamp in the batch.
    pub fn max_timestamp(&self) -> i64 {
        i64_at(&self.buf, 35)
    }
    /// Producer id (-1 when not idempotent).
    pub fn producer_id(&self) -> i64 {
        i64_at(&self.buf, 43)
    }
    /// Producer epoch.
    pub fn producer_epoch(&self) -> i16 {
        i16_at(&self.buf, 51)
    }
    /// Sequence number of the first record.
    pub fn base_sequence(&self) -> i32 {
        i32_at(&self.buf, 53)
    }
    /// How many records the header claims.
    pub fn record_count(&self) -> i32 {
        i32_at(&self.buf, 57)
    }
    /// For a control batch: `Some(true)` for a COMMIT marker, `Some(false)` for
    /// ABORT, `None` if this is not a control batch or its key is unreadable.
    pub fn control_commit(&self) -> Option<bool> {
        if !self.is_control() {
            return None;
        }
        let rec = self.records().ok()?.next()?.ok()?;
        let key = rec.key()?;
        (key.len() >= 4).then(|| i16::from_be_bytes([key[2], key[3]]) == 1)
    }

    /// The records section, decompressed once for compressed batches.
    fn records_section(&self) -> Result<&[u8], RecordError> {
        let codec = self.compression();
        if codec == Compression::None {
            return Ok(&self.buf[HEADER_LEN..]);
        }
        self.inflated
            .get_or_init(|| {
                decompress(codec, &self.buf[HEADER_LEN..], MAX_BATCH_BYTES)
                    .map(crate::pool::bytes)
                    .map_err(|reason| RecordError::Decompression {
                        base_offset: self.base_offset(),
                        codec,
                        reason,
                    })
            })
            .as_ref()
            .map(|b| &b[..])
            .map_err(Clone::clone)
    }

    /// Iterates the records lazily. Each item borrows from the batch. A
    /// compressed batch is decompressed on the first call, once.
    pub fn records(&self) -> Result<Records<'_>, RecordError> {
        Ok(Records {
            base_offset: self.base_offset(),
            base_timestamp: self.base_timestamp(),
            log_append_time: self.is_log_append_time().then(|| self.max_timestamp()),
            data: self.records_section()?,
            pos: 0,
            index: 0,
            count: self.record_count().max(0),
        })
    }
}

/// Iterator over a batch's records; see [`RecordBatch::records`].
#[derive(Debug)]
pub struct Records<'a> {
    base_offset: i64,
    base_timestamp: i64,
    log_append_time: Option<i64>,
    data: &'a [u8],
    pos: usize,
    index: i32,
    count: i32,
}

/// One record, its key, value and headers borrowed from the batch's buffer.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// Absolute offset.
    pub offset: i64,
    /// Timestamp in milliseconds (create or log-append time, per the batch).
    pub timestamp: i64,
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    headers: &'a [u8],
    header_count: i32,
}

impl<'a> Record<'a> {
    /// The key, or `None` for a null key.
    pub fn key(&self) -> Option<&'a [u8]> {
        self.key
    }
    /// The value, or `None` for a null value (a tombstone).
    pub fn value(&self) -> Option<&'a [u8]> {
        self.value
    }
    /// The headers, in order, duplicates kept.
    pub fn headers(&self) -> Headers<'a> {
        Headers {
            data: self.headers,
            pos: 0,
            left: self.header_count,
        }
    }
    /// How many headers the record has.
    pub fn header_count(&self) -> usize {
        self.header_count.max(0) as usize
    }
}

/// Iterator over a record's headers as `(key, value)`.
#[derive(Debug, Clone)]
pub struct Headers<'a> {
    data: &'a [u8],
    pos: usize,
    left: i32,
}

impl<'a> Iterator for Headers<'a> {
    type Item = (&'a str, Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left <= 0 {
            return None;
        }
        self.left -= 1;
        // Already validated when the record was read.
        let key = read_bytes(self.data, &mut self.pos).ok()??;
        let value = read_bytes(self.data, &mut self.pos).ok()?;
        Some((std::str::from_utf8(key).unwrap_or(""), value))
    }
}

/// Reads a varint length and then that many bytes (-1 means null).
#[inline]
fn read_bytes<'a>(data: &'a [u8], pos: &mut usize) -> Result<Option<&'a [u8]>, &'static str> {
    let len = read_varint(data, pos).map_err(varint_reason)?;
    if len < 0 {
        return Ok(None);
    }
    let end = pos
        .checked_add(len as usize)
        .filter(|&e| e <= data.len())
        .ok_or("field length runs past the record")?;
    let s = &data[*pos..end];
    *pos = end;
    Ok(Some(s))
}

fn varint_reason(e: VarintError) -> &'static str {
    match e {
        VarintError::Truncated => "truncated varint",
        VarintError::Overlong => "overlong varint",
    }
}

/// Reads a zigzag varint of at most three bytes (21 bits: every length up
/// to 1 MiB and every delta within ±1 Mi), the common case; `None` for
/// anything else, which the careful reader then takes.
#[inline(always)]
fn short_zigzag(d: &[u8], p: usize) -> Option<(i64, usize)> {
    let b0 = *d.get(p)?;
    let (raw, n) = if b0 < 0x80 {
        (u32::from(b0), 1)
    } else {
        let b1 = *d.get(p + 1)?;
        if b1 < 0x80 {
            (u32::from(b0 & 0x7f) | u32::from(b1) << 7, 2)
        } else {
            let b2 = *d.get(p + 2)?;
            if b2 >= 0x80 {
                return None;
            }
            (
                u32::from(b0 & 0x7f) | u32::from(b1 & 0x7f) << 7 | u32::from(b2) << 14,
                3,
            )
        }
    };
    Some((i64::from(raw >> 1) ^ -i64::from(raw & 1), p + n))
}

/// A length-prefixed field of at most 1 MiB read with [`short_zigzag`].
#[inline(always)]
fn short_bytes(d: &[u8], p: usize) -> Option<(Option<&[u8]>, usize)> {
    let (len, p) = short_zigzag(d, p)?;
    if len < 0 {
        return (len == -1).then_some((None, p));
    }
    let end = p + len as usize;
    Some((Some(d.get(p..end)?), end))
}

impl<'a> Records<'a> {
    /// The record at `self.pos` when it has no headers and every varint is
    /// short: one pass, no error bookkeeping. `None` sends the record to
    /// [`Records::read_one`], which accepts the same records and names
    /// what is wrong with the others.
    #[inline(always)]
    fn read_plain(&mut self) -> Option<Record<'a>> {
        let data = self.data;
        let (len, body_start) = short_zigzag(data, self.pos)?;
        let end = body_start + usize::try_from(len).ok()?;
        let body = data.get(..end)?;
        // Skip the attributes byte.
        let (ts_delta, p) = short_zigzag(body, body_start + 1)?;
        let (offset_delta, p) = short_zigzag(body, p)?;
        let (key, p) = short_bytes(body, p)?;
        let (value, p) = short_bytes(body, p)?;
        // No headers: a single zero byte ends the record.
        if p + 1 != end || body[p] != 0 {
            return None;
        }
        self.pos = end;
        Some(Record {
            offset: self.base_offset + offset_delta,
            timestamp: self
                .log_append_time
                .unwrap_or_else(|| self.base_timestamp.wrapping_add(ts_delta)),
            key,
            value,
            headers: &[],
            header_count: 0,
        })
    }

    fn read_one(&mut self) -> Result<Record<'a>, &'static str> {
        let data = self.data;
        let mut pos = self.pos;
        let len = read_varint(data, &mut pos).map_err(varint_reason)?;
        let body_start = pos;
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| body_start.checked_add(l))
            .filter(|&e| e <= data.len())
            .ok_or("record length runs past the batch")?;
        let body = &data[..end];
        pos += 1; // attributes, unused in v2
        if pos > end {
            return Err("record shorter than its attributes");
        }
        let ts_delta = read_varlong(body, &mut pos).map_err(varint_reason)?;
        let offset_delta = read_varint(body, &mut pos).map_err(varint_reason)?;
        let key = read_bytes(body, &mut pos)?;
        let value = read_bytes(body, &mut pos)?;
        let header_count = read_varint(body, &mut pos).map_err(varint_reason)?;
        if header_count < 0 {
            return Err("negative header count");
        }
        let headers_start = pos;
        for _ in 0..header_count {
            read_bytes(body, &mut pos)?.ok_or("null header key")?;
            read_bytes(body, &mut pos)?;
        }
        if pos != end {
            return Err("record length does not match its fields");
        }
        self.pos = end;
        Ok(Record {
            offset: self.base_offset + i64::from(offset_delta),
            timestamp: self
                .log_append_time
                .unwrap_or_else(|| self.base_timestamp.wrapping_add(ts_delta)),
            key,
            value,
            headers: &body[headers_start..end],
            header_count,
        })
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, RecordError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.index >= self.count {
            return None;
        }
        let index = self.index;
        self.index += 1;
        if let Some(r) = self.read_plain() {
            return Some(Ok(r));
        }
        match self.read_one() {
            Ok(r) => Some(Ok(r)),
            Err(reason) => {
                // Stop after the first bad record: what follows cannot be framed.
                self.index = self.count;
                Some(Err(RecordError::CorruptRecord {
                    offset: self.base_offset + i64::from(index),
                    reason,
                }))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.count - self.index).max(0) as usize;
        (0, Some(left))
    }
}

/// Iterates the whole batches in a fetched records buffer. A batch cut short
/// by the fetch size limit at the end is not an error: iteration stops, and
/// [`Batches::partial_tail`] tells about it.
#[derive(Debug)]
pub struct Batches {
    rest: Bytes,
    partial: Option<(i64, usize)>,
    failed: bool,
}

impl Batches {
    /// Iterates the batches in `records`.
    pub fn new(records: Bytes) -> Self {
        Self {
            rest: records,
            partial: None,
            failed: false,
        }
    }

    /// The base offset and full size of a batch cut off at the end, if any.
    pub fn partial_tail(&self) -> Option<(i64, usize)> {
        self.partial
    }
}

impl Iterator for Batches {
    type Item = Result<RecordBatch, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        if self.rest.len() < LOG_OVERHEAD + 5 {
            // Not even a header: a cut-off tail (offset unknown).
            let base = if self.rest.len() >= 8 {
                i64_at(&self.rest, 0)
            } else {
                -1
            };
            self.partial = Some((base, LOG_OVERHEAD + 5));
            self.rest = Bytes::new();
            return None;
        }
        match RecordBatch::parse(std::mem::take(&mut self.rest)) {
            Ok(Parsed::Batch(b, rest)) => {
                self.rest = rest;
                Some(Ok(b))
            }
            Ok(Parsed::Partial {
                base_offset,
                needed,
            }) => {
                self.partial = Some((base_offset, needed));
                None
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod fast_path_tests {
    use super::*;
    use crate::record::{BatchBuilder, Compression};
    use proptest::prelude::*;

    type Fields = (i64, i64, Option<Vec<u8>>, Option<Vec<u8>>, Vec<u8>, i32);
    type Seen = Result<Fields, String>;

    fn records(data: &[u8], count: i32) -> Records<'_> {
        Records {
            base_offset: 1000,
            base_timestamp: 5000,
            log_append_time: None,
            data,
            pos: 0,
            index: 0,
            count,
        }
    }

    fn seen(r: Record<'_>) -> Fields {
        (
            r.offset,
            r.timestamp,
            r.key().map(<[u8]>::to_vec),
            r.value().map(<[u8]>::to_vec),
            r.headers()
                .flat_map(|(k, v)| [k.as_bytes().to_vec(), v.unwrap_or_default().to_vec()])
                .flatten()
                .collect(),
            r.header_count,
        )
    }

    /// The iterator as it runs: the fast path first.
    fn walk(data: &[u8], count: i32) -> Vec<Seen> {
        records(data, count)
            .map(|r| match r {
                Ok(r) => Ok(seen(r)),
                Err(RecordError::CorruptRecord { reason, .. }) => Err(reason.to_owned()),
                Err(e) => Err(e.to_string()),
            })
            .collect()
    }

    /// The careful reader alone, the reference the fast path must agree with.
    fn walk_careful(data: &[u8], count: i32) -> Vec<Seen> {
        let mut recs = records(data, count);
        let mut out = Vec::new();
        for _ in 0..count {
            match recs.read_one() {
                Ok(r) => out.push(Ok(seen(r))),
                Err(reason) => {
                    out.push(Err(reason.to_owned()));
                    break;
                }
            }
        }
        out
    }

    type Rec = (i64, Option<Vec<u8>>, Option<Vec<u8>>, bool);

    fn arb_rec() -> impl Strategy<Value = Rec> {
        (
            // Deltas of one to four varint bytes.
            prop_oneof![0i64..64, 0i64..10_000, 0i64..3_000_000],
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
            proptest::bool::weighted(0.2),
        )
    }

    proptest! {
        /// Valid records, and the same with one byte of the records section
        /// changed: the fast path yields exactly what the careful reader
        /// does, records and errors alike.
        #[test]
        fn fast_path_agrees_with_careful_reader(
            recs in proptest::collection::vec(arb_rec(), 1..30),
            flip in proptest::option::of((any::<prop::sample::Index>(), any::<u8>())),
            extra in 0i32..3,
        ) {
            let mut b = BatchBuilder::new(Compression::None);
            for (delta, key, value, header) in &recs {
                let headers: &[(&str, Option<&[u8]>)] = if *header { &[("h", Some(b"x"))] } else { &[] };
                b.append(5000 + delta, key.as_deref(), value.as_deref(), headers);
            }
            let batch = b.finish().expect("batch");
            let mut data = batch[HEADER_LEN..].to_vec();
            if let Some((at, x)) = flip {
                let i = at.index(data.len());
                data[i] ^= x;
            }
            let count = recs.len() as i32 + extra;
            prop_assert_eq!(walk(&data, count), walk_careful(&data, count));
        }
    }

    #[test]
    fn long_varints_take_the_careful_path() {
        // A 1.1 MB value's length needs four varint bytes; a delta of
        // 2^40 ms needs six.
        let big = vec![7u8; 1_100_000];
        let mut b = BatchBuilder::new(Compression::None);
        b.append::<&str, &[u8]>(5000, Some(b"k"), Some(&big), &[]);
        b.append::<&str, &[u8]>(5000 + (1 << 40), None, Some(b"v"), &[]);
        let batch = b.finish().expect("batch");
        let data = &batch[HEADER_LEN..];
        let got = walk(data, 2);
        assert_eq!(got, walk_careful(data, 2));
        let (_, ts, _, value, _, _) = got[1].clone().expect("second record");
        assert_eq!((ts, value.as_deref()), (5000 + (1 << 40), Some(&b"v"[..])));
        assert_eq!(
            got[0].as_ref().expect("first").3.as_ref().map(Vec::len),
            Some(big.len())
        );
    }
}

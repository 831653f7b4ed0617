//! Writes a RecordBatch v2: records are appended straight into the output
//! buffer (or, for a compressed batch, into one scratch buffer compressed when
//! the batch closes); the header and CRC-32C are filled in at the end.

use bytes::Bytes;

use super::batch::{HEADER_LEN, LOG_OVERHEAD};
use super::compression::{compress, Compression};
use super::varint::{varint_len, varlong_len};

/// Builds one RecordBatch v2.
#[derive(Debug)]
pub struct BatchBuilder {
    compression: Compression,
    /// Uncompressed: header placeholder then records. Compressed: records
    /// only. Only `buf[..len]` is the batch: the rest is room already
    /// zeroed, or bytes of a recycled batch, overwritten as records come.
    buf: Vec<u8>,
    /// Bytes written into `buf`.
    len: usize,
    /// The room asked for: a compressed batch's output is sized for it,
    /// not for what was written, so that every buffer that goes round
    /// between batches is of one size.
    capacity: usize,
    count: i32,
    base_timestamp: Option<i64>,
    max_timestamp: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    transactional: bool,
    control: bool,
}

fn bytes_len(b: Option<&[u8]>) -> usize {
    match b {
        Some(b) => varint_len(b.len() as i32) + b.len(),
        None => 1,
    }
}

/// Writes into a slice sized in advance.
struct SliceWriter<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl SliceWriter<'_> {
    #[inline]
    fn byte(&mut self, b: u8) {
        self.buf[self.pos] = b;
        self.pos += 1;
    }

    #[inline]
    fn unsigned(&mut self, mut v: u64) {
        if v < 0x80 {
            self.byte(v as u8);
            return;
        }
        if v < 0x4000 {
            // Two bytes: most record lengths, value lengths and deltas.
            let at = self.pos;
            self.buf[at..at + 2].copy_from_slice(&[(v as u8) | 0x80, (v >> 7) as u8]);
            self.pos = at + 2;
            return;
        }
        while v >= 0x80 {
            self.byte((v as u8) | 0x80);
            v >>= 7;
        }
        self.byte(v as u8);
    }

    #[inline]
    fn varint(&mut self, v: i32) {
        self.unsigned(u64::from(((v << 1) ^ (v >> 31)) as u32));
    }

    #[inline]
    fn varlong(&mut self, v: i64) {
        self.unsigned(((v << 1) ^ (v >> 63)) as u64);
    }

    #[inline]
    fn bytes(&mut self, b: Option<&[u8]>) {
        match b {
            Some(b) => {
                self.varint(b.len() as i32);
                self.buf[self.pos..self.pos + b.len()].copy_from_slice(b);
                self.pos += b.len();
            }
            None => self.varint(-1),
        }
    }
}

/// Room for a compressed batch of `len` bytes of records: its header, the
/// records, a sixty-fourth more, and an eighth of one 64 KiB block, which
/// covers what the LZ4 frame writer reserves (a block's worst-case
/// overrun, a tenth of it) and zstd's and gzip's worst cases; a codec that
/// needs more (snappy, on input it cannot compress) grows the buffer.
fn compressed_bound(len: usize) -> usize {
    HEADER_LEN + len + len / 64 + len.min(64 * 1024) / 8 + 64
}

/// `v` (below 2^21) as a varint: its bytes, least significant first, in a
/// word, and how many there are.
#[inline(always)]
fn small_varint(v: u64) -> (u64, u32) {
    if v < 0x80 {
        (v, 1)
    } else if v < 0x4000 {
        ((v & 0x7f) | 0x80 | ((v >> 7) << 8), 2)
    } else {
        (
            (v & 0x7f) | 0x80 | ((((v >> 7) & 0x7f) | 0x80) << 8) | ((v >> 14) << 16),
            3,
        )
    }
}

impl BatchBuilder {
    /// A new, empty batch with the given codec, not idempotent
    /// (producer id -1).
    pub fn new(compression: Compression) -> Self {
        Self::with_capacity(compression, 16 * 1024)
    }

    /// Like [`new`](Self::new), with room for `capacity` bytes of records.
    pub fn with_capacity(compression: Compression, capacity: usize) -> Self {
        Self::with_buffer(compression, Vec::new(), capacity)
    }

    /// Like [`with_capacity`](Self::with_capacity), writing into `buf`: a
    /// producer hands back the buffer of a batch it has sent, so the next
    /// batch fills memory that is already mapped. Its old bytes are not
    /// cleared, only overwritten: nothing past what this batch writes is
    /// ever part of it.
    pub fn with_buffer(compression: Compression, mut buf: Vec<u8>, capacity: usize) -> Self {
        let len = if compression == Compression::None {
            HEADER_LEN
        } else {
            0
        };
        // A compressed batch's records are written here and compressed into
        // a second buffer; the two then trade places (this one goes to the
        // pool, where `finish` of a later batch takes it for its output,
        // and the output, once sent, comes back as a later batch's records
        // buffer). Both are sized for the compressed bound of `capacity`,
        // so each fits either role and none is allocated afresh.
        let room = if compression == Compression::None {
            capacity + HEADER_LEN
        } else {
            compressed_bound(capacity)
        };
        buf.reserve(room.saturating_sub(buf.len()));
        if buf.len() < len {
            buf.resize(len, 0);
        }
        Self {
            compression,
            buf,
            len,
            capacity,
            count: 0,
            base_timestamp: None,
            max_timestamp: -1,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            transactional: false,
            control: false,
        }
    }

    /// Sets the idempotent producer's id, epoch and the batch's first sequence.
    pub fn producer(mut self, id: i64, epoch: i16, base_sequence: i32) -> Self {
        self.producer_id = id;
        self.producer_epoch = epoch;
        self.base_sequence = base_sequence;
        self
    }

    /// Marks the batch as part of a transaction.
    pub fn transactional(mut self, yes: bool) -> Self {
        self.transactional = yes;
        self
    }

    /// Marks the batch as a control batch (used by tests that write markers).
    pub fn control(mut self, yes: bool) -> Self {
        self.control = yes;
        self
    }

    /// Number of records appended.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether no record was appended.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes the batch takes so far, before compression.
    pub fn size(&self) -> usize {
        if self.compression == Compression::None {
            self.len
        } else {
            self.len + HEADER_LEN
        }
    }

    /// Bytes one record would add, for batch-size decisions before appending.
    pub fn record_size<K: AsRef<str>, V: AsRef<[u8]>>(
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(K, Option<V>)],
    ) -> usize {
        // Worst-case deltas: 10-byte timestamp and 5-byte offset varints.
        let body = 1 + 10 + 5 + Self::fields_len(key, value, headers);
        varint_len(body as i32) + body
    }

    fn fields_len<K: AsRef<str>, V: AsRef<[u8]>>(
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(K, Option<V>)],
    ) -> usize {
        let mut n = bytes_len(key) + bytes_len(value) + varint_len(headers.len() as i32);
        for (k, v) in headers {
            n += bytes_len(Some(k.as_ref().as_bytes()));
            n += bytes_len(v.as_ref().map(AsRef::as_ref));
        }
        n
    }

    /// Appends a record; returns its offset delta within the batch.
    #[inline]
    pub fn append<K: AsRef<str>, V: AsRef<[u8]>>(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(K, Option<V>)],
    ) -> i32 {
        let base = *self.base_timestamp.get_or_insert(timestamp);
        self.max_timestamp = self.max_timestamp.max(timestamp);
        let ts_delta = timestamp.wrapping_sub(base);
        let offset_delta = self.count;
        if headers.is_empty() && self.append_small(ts_delta, key, value) {
            self.count += 1;
            return offset_delta;
        }
        let body = 1
            + varlong_len(ts_delta)
            + varint_len(offset_delta)
            + Self::fields_len(key, value, headers);
        // Size the record exactly, then fill it in place: one bounds check
        // per field instead of a capacity check per byte. The buffer is
        // zeroed in bulk, a whole allocation at a time, not per record.
        let start = self.len;
        let total = varint_len(body as i32) + body;
        let end = start + total;
        if self.buf.len() < end {
            self.grow(end);
        }
        let mut w = SliceWriter {
            buf: &mut self.buf[start..end],
            pos: 0,
        };
        w.varint(body as i32);
        w.byte(0);
        w.varlong(ts_delta);
        w.varint(offset_delta);
        w.bytes(key);
        w.bytes(value);
        w.varint(headers.len() as i32);
        for (k, v) in headers {
            w.bytes(Some(k.as_ref().as_bytes()));
            w.bytes(v.as_ref().map(AsRef::as_ref));
        }
        debug_assert_eq!(w.pos, total);
        self.len = end;
        self.count += 1;
        offset_delta
    }

    /// The common record, written without a per-byte bounds check: no
    /// headers, timestamp and offset deltas within ±8191, a key under
    /// 8 KiB and a value under 1 MiB, so every varint before the key takes
    /// at most 2 bytes (the length at most 3) and all of them are put
    /// together in a register and stored at once. Returns false, having
    /// written nothing, for any other record.
    #[inline]
    fn append_small(&mut self, ts_delta: i64, key: Option<&[u8]>, value: Option<&[u8]>) -> bool {
        /// Zigzag of a slice's length, or of -1 for null.
        #[inline(always)]
        fn zz_len(b: Option<&[u8]>) -> u64 {
            b.map_or(1, |b| 2 * b.len() as u64)
        }
        let ts = ((ts_delta << 1) ^ (ts_delta >> 63)) as u64;
        let od = 2 * self.count as u64;
        let (k, v) = (zz_len(key), zz_len(value));
        if (ts | od | k) >= 1 << 14 || v >= 1 << 21 {
            return false;
        }
        let (klen, vlen) = (key.map_or(0, <[u8]>::len), value.map_or(0, <[u8]>::len));
        // Attributes (0), then the deltas and the key's length.
        let (mut head, mut n) = (0u64, 1u32);
        for x in [ts, od, k] {
            let (bytes, len) = small_varint(x);
            head |= bytes << (8 * n);
            n += len;
        }
        let (vbytes, vn) = small_varint(v);
        let body = n as usize + klen + vn as usize + vlen + 1;
        if 2 * body >= 1 << 21 {
            return false;
        }
        let (bbytes, bn) = small_varint(2 * body as u64);
        let total = bn as usize + body;
        let start = self.len;
        let end = start + total;
        // Room for the 16-byte store of the head and the 3-byte store of
        // the value's length, even past the record.
        let room = (end + 2).max(start + 16);
        if self.buf.len() < room {
            self.grow(room);
        }
        let head = u128::from(bbytes) | (u128::from(head) << (8 * bn));
        let buf = &mut self.buf[start..];
        buf[..16].copy_from_slice(&head.to_le_bytes());
        let mut at = (bn + n) as usize;
        if let Some(key) = key {
            buf[at..at + klen].copy_from_slice(key);
            at += klen;
        }
        buf[at..at + 3].copy_from_slice(&vbytes.to_le_bytes()[..3]);
        at += vn as usize;
        if let Some(value) = value {
            buf[at..at + vlen].copy_from_slice(value);
            at += vlen;
        }
        buf[at] = 0; // no headers
        debug_assert_eq!(at + 1, total);
        self.len = end;
        true
    }

    /// Makes `buf` at least `end` bytes long, filling all the capacity it
    /// then has (doubling it if `end` does not fit).
    #[cold]
    fn grow(&mut self, end: usize) {
        if end > self.buf.capacity() {
            self.buf
                .reserve(end.max(self.buf.capacity() * 2) - self.buf.len());
        }
        let cap = self.buf.capacity();
        self.buf.resize(cap, 0);
    }

    /// Closes the batch: compresses the records if asked, writes the header
    /// with base offset 0, and the CRC-32C.
    pub fn finish(mut self) -> Result<Bytes, String> {
        self.buf.truncate(self.len);
        let mut out = if self.compression == Compression::None {
            self.buf
        } else {
            // Both the output and the records' scratch buffer circulate
            // through the pool: a batch of a megabyte otherwise maps fresh
            // pages for its output every time.
            let mut out = crate::pool::take(compressed_bound(self.len.max(self.capacity)));
            out.resize(HEADER_LEN, 0);
            compress(self.compression, &self.buf, &mut out)?;
            crate::pool::give(std::mem::take(&mut self.buf));
            out
        };
        let batch_len = i32::try_from(out.len() - LOG_OVERHEAD)
            .map_err(|_| "batch larger than 2 GiB".to_owned())?;
        let mut attributes = self.compression.id();
        if self.transactional {
            attributes |= 0x10;
        }
        if self.control {
            attributes |= 0x20;
        }
        let base_ts = self.base_timestamp.unwrap_or(-1);
        let h = &mut out[..HEADER_LEN];
        h[0..8].copy_from_slice(&0i64.to_be_bytes());
        h[8..12].copy_from_slice(&batch_len.to_be_bytes());
        h[12..16].copy_from_slice(&(-1i32).to_be_bytes());
        h[16] = 2;
        h[21..23].copy_from_slice(&attributes.to_be_bytes());
        h[23..27].copy_from_slice(&(self.count - 1).max(0).to_be_bytes());
        h[27..35].copy_from_slice(&base_ts.to_be_bytes());
        h[35..43].copy_from_slice(&self.max_timestamp.to_be_bytes());
        h[43..51].copy_from_slice(&self.producer_id.to_be_bytes());
        h[51..53].copy_from_slice(&self.producer_epoch.to_be_bytes());
        h[53..57].copy_from_slice(&self.base_sequence.to_be_bytes());
        h[57..61].copy_from_slice(&self.count.to_be_bytes());
        let crc = super::crc32c(&out[21..]);
        out[17..21].copy_from_slice(&crc.to_be_bytes());
        Ok(Bytes::from(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A compressed batch's output, however little was written, is large
    /// enough to be a later batch's records buffer as it is: handed back
    /// (as the producer does once the batch is sent), it is not grown, so
    /// not allocated afresh. Fails when the output is sized for what was
    /// written rather than for the room asked for.
    #[test]
    fn compressed_outputs_recycle_without_growing() {
        let cap = 200_000;
        for codec in [
            Compression::Lz4,
            Compression::Zstd,
            Compression::Gzip,
            Compression::Snappy,
        ] {
            let mut b = BatchBuilder::with_capacity(codec, cap);
            for i in 0..10 {
                b.append::<&str, &[u8]>(i, Some(b"k"), Some(&[b'v'; 100]), &[]);
            }
            let out = b.finish().expect("finish");
            let out = Vec::from(out.try_into_mut().expect("unshared"));
            assert!(out.capacity() >= compressed_bound(cap), "{codec}");
            let at = out.as_ptr();
            let next = BatchBuilder::with_buffer(codec, out, cap);
            assert_eq!(next.buf.as_ptr(), at, "{codec}: grown");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// A compressed batch's output fits in `compressed_bound` of its
        /// records, even when they do not compress at all: the buffers that
        /// trade places between batches never grow, so they are never
        /// allocated afresh. Fails when the bound is cut below what the LZ4
        /// frame writer reserves.
        #[test]
        fn compressed_output_fits_its_bound(
            len in 0usize..400_000,
            incompressible in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let mut x = seed | 1;
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    if incompressible { x as u8 } else { (x % 4) as u8 }
                })
                .collect();
            for codec in [Compression::Lz4, Compression::Zstd, Compression::Gzip] {
                let mut out = Vec::with_capacity(compressed_bound(len));
                out.resize(HEADER_LEN, 0);
                let (at, cap) = (out.as_ptr(), out.capacity());
                compress(codec, &data, &mut out).expect("compress");
                prop_assert_eq!(out.capacity(), cap, "{} grew its output", codec);
                prop_assert_eq!(out.as_ptr(), at);
            }
        }
    }
}

//! The compression codecs of RecordBatch v2 (attributes bits 0-2).
//!
//! A batch's records section is compressed as one unit. Formats follow what
//! the Java client writes: gzip streams, snappy in xerial framing (raw snappy is
//! accepted on read, as librdkafka may write it), LZ4 frames, and zstd frames.

use std::io::{Read, Write};

/// A batch's compression codec, named as the Java client's `compression.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Compression {
    /// No compression (`none`).
    #[default]
    None,
    /// `gzip` (deflate in a gzip stream).
    Gzip,
    /// `snappy` (xerial block framing).
    Snappy,
    /// `lz4` (LZ4 frame format).
    Lz4,
    /// `zstd`.
    Zstd,
}

impl Compression {
    /// The codec id stored in attribute bits 0-2, or `None` for an unknown id.
    pub fn from_attributes(attributes: i16) -> Option<Self> {
        Some(match attributes & 0x07 {
            0 => Self::None,
            1 => Self::Gzip,
            2 => Self::Snappy,
            3 => Self::Lz4,
            4 => Self::Zstd,
            _ => return None,
        })
    }

    /// The codec id for attribute bits 0-2.
    pub fn id(self) -> i16 {
        match self {
            Self::None => 0,
            Self::Gzip => 1,
            Self::Snappy => 2,
            Self::Lz4 => 3,
            Self::Zstd => 4,
        }
    }

    /// The `compression.type` name.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gzip => "gzip",
            Self::Snappy => "snappy",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
        }
    }
}

impl std::str::FromStr for Compression {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "none" | "" => Self::None,
            "gzip" => Self::Gzip,
            "snappy" => Self::Snappy,
            "lz4" => Self::Lz4,
            "zstd" => Self::Zstd,
            other => {
                return Err(format!(
                    "unknown compression.type `{other}` (none, gzip, snappy, lz4, zstd)"
                ))
            }
        })
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The xerial snappy stream header: magic, then version 1 and compatible 1.
const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_LEN: usize = 16;
/// Block size of xerial framing, as the Java client's snappy stream uses.
const XERIAL_BLOCK: usize = 32 * 1024;

/// Compresses `input` with `codec`, appending to `out`.
pub(crate) fn compress(codec: Compression, input: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    match codec {
        Compression::None => out.extend_from_slice(input),
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
            enc.write_all(input).map_err(|e| e.to_string())?;
            enc.finish().map_err(|e| e.to_string())?;
        }
        Compression::Snappy => {
            out.extend_from_slice(XERIAL_MAGIC);
            out.extend_from_slice(&1i32.to_be_bytes());
            out.extend_from_slice(&1i32.to_be_bytes());
            let mut enc = snap::raw::Encoder::new();
            let mut block = Vec::new();
            for chunk in input.chunks(XERIAL_BLOCK) {
                block.resize(snap::raw::max_compress_len(chunk.len()), 0);
                let n = enc.compress(chunk, &mut block).map_err(|e| e.to_string())?;
                let len = i32::try_from(n).map_err(|_| "snappy block too large".to_owned())?;
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&block[..n]);
            }
        }
        Compression::Lz4 => lz4_frame(input, out)?,
        Compression::Zstd => {
            let compressed = zstd::bulk::compress(input, 1).map_err(|e| e.to_string())?;
            out.extend_from_slice(&compressed);
        }
    }
    Ok(())
}

/// The LZ4 frame header Faustus writes, as the Java client and librdkafka
/// do: magic, FLG (version 01, independent blocks, no checksums, no content
/// size), BD (64 KiB blocks) and the header checksum (second byte of the
/// xxHash32 of FLG and BD).
const LZ4_FRAME_HEADER: [u8; 7] = [0x04, 0x22, 0x4d, 0x18, 0x60, 0x40, 0x82];
/// Largest uncompressed block in a frame of [`LZ4_FRAME_HEADER`].
const LZ4_BLOCK: usize = 64 * 1024;
/// Marks a block stored uncompressed (LZ4 frame format, block size field).
const LZ4_STORED: u32 = 0x8000_0000;

/// Writes `input` as one LZ4 frame straight into `out`: each 64 KiB block is
/// compressed in place after its size field (stored as is when compressing
/// does not shrink it), with no staging buffer and no per-frame allocation
/// beyond the block compressor's hash table.
fn lz4_frame(input: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    // The most the frame can take while it is written: every block stored
    // as is (a block is kept compressed only when that is smaller), plus the
    // compressor's worst-case overrun of one block, which each block is
    // given room for before it is compressed in place.
    let big = input.len().min(LZ4_BLOCK);
    out.reserve(
        LZ4_FRAME_HEADER.len()
            + input.len().div_ceil(LZ4_BLOCK).max(1) * 4
            + input.len()
            + (lz4_flex::block::get_maximum_output_size(big) - big)
            + 4,
    );
    out.extend_from_slice(&LZ4_FRAME_HEADER);
    for block in input.chunks(LZ4_BLOCK) {
        let at = out.len();
        out.resize(
            at + 4 + lz4_flex::block::get_maximum_output_size(block.len()),
            0,
        );
        let n = lz4_flex::block::compress_into(block, &mut out[at + 4..])
            .map_err(|e| format!("lz4: {e}"))?;
        let size = if n < block.len() {
            out.truncate(at + 4 + n);
            n as u32
        } else {
            out.truncate(at + 4);
            out.extend_from_slice(block);
            block.len() as u32 | LZ4_STORED
        };
        out[at..at + 4].copy_from_slice(&size.to_le_bytes());
    }
    // End mark.
    out.extend_from_slice(&0u32.to_le_bytes());
    Ok(())
}

/// Decompresses `input`, refusing to produce more than `limit` bytes.
pub(crate) fn decompress(
    codec: Compression,
    input: &[u8],
    limit: usize,
) -> Result<Vec<u8>, String> {
    // Pooled: the batch's Bytes give it back (see `pool`).
    let mut out = crate::pool::take(input.len().saturating_mul(4).min(limit));
    let read_capped = |r: &mut dyn Read, out: &mut Vec<u8>| -> Result<(), String> {
        let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
        r.take(cap).read_to_end(out).map_err(|e| e.to_string())?;
        if out.len() > limit {
            return Err(format!("decompressed size exceeds the {limit}-byte limit"));
        }
        Ok(())
    };
    match codec {
        Compression::None => out.extend_from_slice(input),
        Compression::Gzip => read_capped(&mut flate2::read::GzDecoder::new(input), &mut out)?,
        Compression::Lz4 => lz4_frames(input, &mut out, limit)?,
        Compression::Zstd => read_capped(
            &mut zstd::stream::read::Decoder::new(input).map_err(|e| e.to_string())?,
            &mut out,
        )?,
        Compression::Snappy => {
            if input.len() >= XERIAL_HEADER_LEN && input.starts_with(XERIAL_MAGIC) {
                let mut rest = &input[XERIAL_HEADER_LEN..];
                let mut dec = snap::raw::Decoder::new();
                while !rest.is_empty() {
                    let Some((len, body)) = rest.split_first_chunk::<4>() else {
                        return Err("truncated xerial snappy block length".into());
                    };
                    let len = usize::try_from(i32::from_be_bytes(*len))
                        .map_err(|_| "negative xerial snappy block length".to_owned())?;
                    if body.len() < len {
                        return Err("truncated xerial snappy block".into());
                    }
                    let (block, tail) = body.split_at(len);
                    snappy_raw(&mut dec, block, &mut out, limit)?;
                    rest = tail;
                }
            } else {
                snappy_raw(&mut snap::raw::Decoder::new(), input, &mut out, limit)?;
            }
        }
    }
    Ok(out)
}

/// Decodes LZ4 frames (the format Kafka's clients write) straight into
/// `out`: each block is decompressed in place, a linked block reading the
/// blocks before it from `out` itself, with no intermediate buffer. Block and
/// content checksums are skipped, not verified: the batch's CRC-32C already
/// covers every byte. Dictionary ids are refused.
fn lz4_frames(input: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), String> {
    const MAGIC: u32 = 0x184D_2204;
    const WINDOW: usize = 64 * 1024;
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        if rest.len() < n {
            return Err("truncated lz4 frame".into());
        }
        let (head, tail) = rest.split_at(n);
        *rest = tail;
        Ok(head)
    }
    fn u32_le(rest: &mut &[u8]) -> Result<u32, String> {
        let b = take(rest, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    let too_big = || format!("decompressed size exceeds the {limit}-byte limit");
    let mut rest = input;
    while !rest.is_empty() {
        let magic = u32_le(&mut rest)?;
        if magic & 0xFFFF_FFF0 == 0x184D_2A50 {
            // A skippable frame: its length, then bytes to ignore.
            let len = u32_le(&mut rest)? as usize;
            take(&mut rest, len)?;
            continue;
        }
        if magic != MAGIC {
            return Err(format!("not an lz4 frame (magic {magic:#x})"));
        }
        let d = take(&mut rest, 2)?;
        let (flg, bd) = (d[0], d[1]);
        if flg >> 6 != 1 {
            return Err(format!("unsupported lz4 frame version {}", flg >> 6));
        }
        if flg & 0x01 != 0 {
            return Err("lz4 frames with a dictionary id are not supported".into());
        }
        let independent = flg & 0x20 != 0;
        let block_checksums = flg & 0x10 != 0;
        let block_max = match (bd >> 4) & 0x07 {
            4 => 64 << 10,
            5 => 256 << 10,
            6 => 1 << 20,
            7 => 4 << 20,
            other => return Err(format!("bad lz4 block size id {other}")),
        };
        if flg & 0x08 != 0 {
            let size = take(&mut rest, 8)?;
            let size = u64::from_le_bytes(size.try_into().map_err(|_| "truncated lz4 frame")?);
            let size = usize::try_from(size).unwrap_or(usize::MAX);
            if out.len().saturating_add(size) > limit {
                return Err(too_big());
            }
            out.reserve(size);
        }
        take(&mut rest, 1)?; // header checksum
        let frame_start = out.len();
        loop {
            let raw = u32_le(&mut rest)?;
            if raw == 0 {
                break; // end mark
            }
            let data = take(&mut rest, (raw & 0x7FFF_FFFF) as usize)?;
            let start = out.len();
            if raw & 0x8000_0000 != 0 {
                if start + data.len() > limit {
                    return Err(too_big());
                }
                out.extend_from_slice(data);
            } else {
                // Room for a whole block, or one byte past the limit, so a
                // block that would cross it is caught either way.
                let room = block_max.min(limit.saturating_sub(start).saturating_add(1));
                out.resize(start + room, 0);
                let (before, after) = out.split_at_mut(start);
                let written = if independent {
                    lz4_flex::block::decompress_into(data, after)
                } else {
                    let dict = &before[start.saturating_sub(WINDOW).max(frame_start)..];
                    lz4_flex::block::decompress_into_with_dict(data, after, dict)
                };
                let written = match written {
                    Ok(n) => n,
                    Err(_) if room < block_max => return Err(too_big()),
                    Err(e) => return Err(format!("corrupt lz4 block: {e}")),
                };
                out.truncate(start + written);
                if out.len() > limit {
                    return Err(too_big());
                }
            }
            if block_checksums {
                take(&mut rest, 4)?;
            }
        }
        if flg & 0x04 != 0 {
            take(&mut rest, 4)?; // content checksum
        }
    }
    Ok(())
}

fn snappy_raw(
    dec: &mut snap::raw::Decoder,
    block: &[u8],
    out: &mut Vec<u8>,
    limit: usize,
) -> Result<(), String> {
    let n = snap::raw::decompress_len(block).map_err(|e| e.to_string())?;
    if out.len().saturating_add(n) > limit {
        return Err(format!("decompressed size exceeds the {limit}-byte limit"));
    }
    let start = out.len();
    out.resize(start + n, 0);
    let written = dec
        .decompress(block, &mut out[start..])
        .map_err(|e| e.to_string())?;
    out.truncate(start + written);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    #[test]
    fn names_round_trip() {
        for c in ALL {
            assert_eq!(c.name().parse::<Compression>(), Ok(c));
            assert_eq!(Compression::from_attributes(c.id()), Some(c));
        }
        assert!("brotli".parse::<Compression>().is_err());
        assert_eq!(Compression::from_attributes(5), None);
    }

    #[test]
    fn raw_snappy_is_accepted() {
        let data = b"hello hello hello hello".repeat(100);
        let raw = snap::raw::Encoder::new()
            .compress_vec(&data)
            .expect("compress");
        assert_eq!(
            decompress(Compression::Snappy, &raw, 1 << 20).expect("raw"),
            data
        );
    }

    /// The header is the one the reference `lz4` tool writes for
    /// `-B4 --no-frame-crc` (64 KiB independent blocks, no checksums), and a
    /// block that does not shrink is stored.
    #[test]
    fn lz4_frames_are_laid_out_as_the_reference_tool_writes_them() {
        let mut frame = Vec::new();
        compress(Compression::Lz4, b"hello", &mut frame).expect("compress");
        let mut want = LZ4_FRAME_HEADER.to_vec();
        want.extend_from_slice(&(5u32 | LZ4_STORED).to_le_bytes());
        want.extend_from_slice(b"hello");
        want.extend_from_slice(&[0; 4]);
        assert_eq!(frame, want);
        assert_eq!(
            frame,
            [
                0x04, 0x22, 0x4d, 0x18, 0x60, 0x40, 0x82, 0x05, 0x00, 0x00, 0x80, b'h', b'e', b'l',
                b'l', b'o', 0, 0, 0, 0
            ]
        );
        // Several blocks, compressed.
        let data = b"0123456789".repeat(20_000);
        frame.clear();
        compress(Compression::Lz4, &data, &mut frame).expect("compress");
        assert!(frame.len() < data.len() / 10);
        assert_eq!(
            decompress(Compression::Lz4, &frame, 1 << 20).expect("ours"),
            data
        );
    }

    #[test]
    fn decompression_bombs_are_capped() {
        let data = vec![0u8; 1 << 20];
        for c in &ALL[1..] {
            let c = *c;
            let mut out = Vec::new();
            compress(c, &data, &mut out).expect("compress");
            assert!(decompress(c, &out, 1000).is_err(), "{c} not capped");
        }
    }

    proptest! {
        #[test]
        fn every_codec_round_trips(data in proptest::collection::vec(any::<u8>(), 0..100_000)) {
            for c in ALL {
                let mut out = Vec::new();
                compress(c, &data, &mut out).expect("compress");
                prop_assert_eq!(&decompress(c, &out, 1 << 24).expect("decompress"), &data);
            }
        }

        #[test]
        fn lz4_frames_decode_as_lz4_flex_does(
            data in proptest::collection::vec(0u8..8, 0..300_000),
            linked in any::<bool>(),
            checksums in any::<bool>(),
            size in 0usize..3,
        ) {
            use lz4_flex::frame::{BlockMode, BlockSize, FrameEncoder, FrameInfo};
            let info = FrameInfo::new()
                .block_size([BlockSize::Max64KB, BlockSize::Max256KB, BlockSize::Max1MB][size])
                .block_mode(if linked { BlockMode::Linked } else { BlockMode::Independent })
                .block_checksums(checksums)
                .content_checksum(checksums)
                .content_size(checksums.then_some(data.len() as u64));
            let mut enc = FrameEncoder::with_frame_info(info, Vec::new());
            enc.write_all(&data).expect("write");
            let frame = enc.finish().expect("finish");
            let mut theirs = Vec::new();
            lz4_flex::frame::FrameDecoder::new(&frame[..])
                .read_to_end(&mut theirs)
                .expect("lz4_flex decodes");
            prop_assert_eq!(&theirs, &data);
            prop_assert_eq!(&decompress(Compression::Lz4, &frame, 1 << 24).expect("ours"), &data);
        }

        #[test]
        fn our_lz4_frames_decode_with_lz4_flex(data in proptest::collection::vec(0u8..4, 0..300_000)) {
            let mut frame = Vec::new();
            compress(Compression::Lz4, &data, &mut frame).expect("compress");
            let mut theirs = Vec::new();
            lz4_flex::frame::FrameDecoder::new(&frame[..])
                .read_to_end(&mut theirs)
                .expect("lz4_flex decodes");
            prop_assert_eq!(&theirs, &data);
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            for c in ALL {
                let _ = decompress(c, &data, 1 << 20);
            }
        }
    }
}

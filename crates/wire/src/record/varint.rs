//! Zigzag varints as the RecordBatch v2 format uses them (the protobuf
//! encoding: 7 bits a byte, least significant group first).

/// Why a varint could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VarintError {
    /// The buffer ended inside the varint.
    Truncated,
    /// More continuation bytes than the type can hold.
    Overlong,
}

/// Reads a zigzag varint (at most 5 bytes) from `buf` at `*pos`, advancing it.
#[inline]
pub(crate) fn read_varint(buf: &[u8], pos: &mut usize) -> Result<i32, VarintError> {
    let raw = read_unsigned(buf, pos, 5)?;
    let raw = u32::try_from(raw).map_err(|_| VarintError::Overlong)?;
    Ok(((raw >> 1) as i32) ^ -((raw & 1) as i32))
}

/// Reads a zigzag varlong (at most 10 bytes) from `buf` at `*pos`.
#[inline]
pub(crate) fn read_varlong(buf: &[u8], pos: &mut usize) -> Result<i64, VarintError> {
    let raw = read_unsigned(buf, pos, 10)?;
    Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
}

#[inline]
fn read_unsigned(buf: &[u8], pos: &mut usize, max_bytes: usize) -> Result<u64, VarintError> {
    let mut value: u64 = 0;
    let mut shift = 0u32;
    let mut i = *pos;
    for n in 0..max_bytes {
        let Some(&b) = buf.get(i) else {
            return Err(VarintError::Truncated);
        };
        i += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            // The last byte of a 10-byte varlong carries only one bit.
            if n == 9 && b > 1 {
                return Err(VarintError::Overlong);
            }
            *pos = i;
            return Ok(value);
        }
        shift += 7;
    }
    Err(VarintError::Overlong)
}

/// Appends `v` as a zigzag varint (the reference the builder's in-place
/// writer is tested against).
#[cfg(test)]
pub(crate) fn put_varint(out: &mut Vec<u8>, v: i32) {
    put_unsigned(out, u64::from(((v << 1) ^ (v >> 31)) as u32));
}

/// Appends `v` as a zigzag varlong.
#[cfg(test)]
pub(crate) fn put_varlong(out: &mut Vec<u8>, v: i64) {
    put_unsigned(out, ((v << 1) ^ (v >> 63)) as u64);
}

#[cfg(test)]
fn put_unsigned(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// How many bytes `v` takes as a zigzag varint.
#[inline]
pub(crate) fn varint_len(v: i32) -> usize {
    let z = ((v << 1) ^ (v >> 31)) as u32;
    groups_of_7((31 - (z | 1).leading_zeros()) as usize)
}

/// How many bytes `v` takes as a zigzag varlong.
#[inline]
pub(crate) fn varlong_len(v: i64) -> usize {
    let z = ((v << 1) ^ (v >> 63)) as u64;
    groups_of_7((63 - (z | 1).leading_zeros()) as usize)
}

/// The 7-bit groups needed by a number whose highest set bit is `top`
/// (0 for 0 and 1): `top / 7 + 1`, as `(top * 9 + 73) / 64`, which equals it
/// for every `top` up to 63 and costs a multiply and a shift instead of a
/// division (the encoder computes several per record).
#[inline]
fn groups_of_7(top: usize) -> usize {
    (top * 9 + 73) >> 6
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_encodings() {
        let mut out = Vec::new();
        put_varint(&mut out, 0);
        put_varint(&mut out, -1);
        put_varint(&mut out, 1);
        put_varint(&mut out, 63);
        put_varint(&mut out, -65);
        assert_eq!(out, [0x00, 0x01, 0x02, 0x7e, 0x81, 0x01]);
    }

    #[test]
    fn truncated_and_overlong_are_errors() {
        let mut pos = 0;
        assert_eq!(read_varint(&[0x80], &mut pos), Err(VarintError::Truncated));
        assert_eq!(pos, 0, "position is untouched on error");
        assert_eq!(
            read_varint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x01], &mut pos),
            Err(VarintError::Overlong)
        );
        assert_eq!(
            read_varlong(&[0xff; 10], &mut pos),
            Err(VarintError::Overlong)
        );
    }

    #[test]
    fn groups_of_7_is_a_division() {
        for top in 0..64 {
            assert_eq!(groups_of_7(top), top / 7 + 1, "top bit {top}");
        }
    }

    proptest! {
        #[test]
        fn varint_round_trips(v: i32) {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            prop_assert_eq!(out.len(), varint_len(v));
            let mut pos = 0;
            prop_assert_eq!(read_varint(&out, &mut pos), Ok(v));
            prop_assert_eq!(pos, out.len());
        }

        #[test]
        fn varlong_round_trips(v: i64) {
            let mut out = Vec::new();
            put_varlong(&mut out, v);
            prop_assert_eq!(out.len(), varlong_len(v));
            let mut pos = 0;
            prop_assert_eq!(read_varlong(&out, &mut pos), Ok(v));
            prop_assert_eq!(pos, out.len());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes: Vec<u8>) {
            let mut pos = 0;
            let _ = read_varint(&bytes, &mut pos);
            let _ = read_varlong(&bytes, &mut pos);
        }
    }
}

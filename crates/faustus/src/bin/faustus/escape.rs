//! kcat's escapes for delimiters and formats: `\n`, `\r`, `\t`, `\\`, `\xNN`
//! (one or two hex digits). Anything else after a backslash stays as typed.

/// The bytes `s` stands for, escapes resolved.
pub(crate) fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' || i + 1 == b.len() {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let (byte, used) = match b[i + 1] {
            b'n' => (b'\n', 2),
            b'r' => (b'\r', 2),
            b't' => (b'\t', 2),
            b'\\' => (b'\\', 2),
            b'x' => {
                let digits = b[i + 2..]
                    .iter()
                    .take(2)
                    .take_while(|c| c.is_ascii_hexdigit())
                    .count();
                match std::str::from_utf8(&b[i + 2..i + 2 + digits])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => (v, 2 + digits),
                    None => (b'\\', 1),
                }
            }
            _ => (b'\\', 1),
        };
        out.push(byte);
        i += used;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::unescape;

    #[test]
    fn resolves_kcats_escapes() {
        assert_eq!(unescape(r"\t"), b"\t");
        assert_eq!(unescape(r"a\nb\r\\"), b"a\nb\r\\");
        assert_eq!(unescape(r"\x3d\x2C\x7"), b"=,\x07");
        assert_eq!(unescape(r"\xZZ"), b"\\xZZ");
        assert_eq!(unescape(r"\q\"), b"\\q\\");
        assert_eq!(unescape("::"), b"::");
    }
}

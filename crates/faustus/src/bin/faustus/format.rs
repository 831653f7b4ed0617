//! How `faustus consume` prints a record, as kcat does: a `-f` format, the
//! default `-K`/`-D` layout, or the `-J` JSON envelope.
//!
//! Format tokens: `%t` topic, `%p` partition, `%o` offset, `%k` key, `%s`
//! value, `%T` timestamp (ms), `%h` headers (`k=v,k=v`), `%K` key size, `%S`
//! value size (-1 for null), `%R` value size as a big-endian 32-bit integer,
//! `%%` a percent sign; kcat's escapes (`\n`, `\t`, `\xNN`, ...) anywhere.

use std::io::Write;

use faustus::wire::record::Record;

use crate::escape::unescape;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Lit(Vec<u8>),
    Topic,
    Partition,
    Offset,
    Key,
    Value,
    Timestamp,
    Headers,
    KeySize,
    ValueSize,
    ValueSizeBinary,
}

/// Where a record came from, for the tokens and the JSON envelope.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Source<'a> {
    pub(crate) topic: &'a str,
    pub(crate) partition: i32,
    /// The batch's timestamps are the broker's (log-append time).
    pub(crate) log_append_time: bool,
    /// The broker the record was fetched from (-1 if unknown).
    pub(crate) broker: i32,
}

/// A record printer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Printer {
    tokens: Vec<Token>,
    json: bool,
    /// What a null key or value prints as (`-Z`: `NULL`).
    null: &'static [u8],
}

impl Printer {
    /// A `-f` format string.
    pub(crate) fn format(s: &str, null_as_text: bool) -> Result<Self, String> {
        let mut tokens = Vec::new();
        let mut lit = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                lit.push(c);
                continue;
            }
            let t = match chars.next() {
                Some('t') => Token::Topic,
                Some('p') => Token::Partition,
                Some('o') => Token::Offset,
                Some('k') => Token::Key,
                Some('s') => Token::Value,
                Some('T') => Token::Timestamp,
                Some('h') => Token::Headers,
                Some('K') => Token::KeySize,
                Some('S') => Token::ValueSize,
                Some('R') => Token::ValueSizeBinary,
                Some('%') => {
                    lit.push('%');
                    continue;
                }
                Some(o) => {
                    return Err(format!(
                        "-f: unknown token %{o} (known: %t %p %o %k %s %T %h %K %S %R %%)"
                    ))
                }
                None => return Err("-f: the format ends with a lone %".into()),
            };
            if !lit.is_empty() {
                tokens.push(Token::Lit(unescape(&std::mem::take(&mut lit))));
            }
            tokens.push(t);
        }
        if !lit.is_empty() {
            tokens.push(Token::Lit(unescape(&lit)));
        }
        Ok(Self::new(tokens, false, null_as_text))
    }

    /// kcat's layout without `-f`: `[KEY<key delimiter>]VALUE<delimiter>`.
    pub(crate) fn delimited(key_delim: Option<&str>, delim: &str, null_as_text: bool) -> Self {
        let mut tokens = Vec::new();
        if let Some(k) = key_delim {
            tokens.extend([Token::Key, Token::Lit(unescape(k))]);
        }
        tokens.extend([Token::Value, Token::Lit(unescape(delim))]);
        Self::new(tokens, false, null_as_text)
    }

    /// kcat's `-J` envelope, one JSON object per line.
    pub(crate) fn json() -> Self {
        Self::new(Vec::new(), true, false)
    }

    fn new(tokens: Vec<Token>, json: bool, null_as_text: bool) -> Self {
        Self {
            tokens,
            json,
            null: if null_as_text { b"NULL" } else { b"" },
        }
    }

    /// A key or value as printed: with `-Z`, kcat prints NULL for an empty
    /// one too (librdkafka hands both over alike).
    fn text<'r>(&self, b: Option<&'r [u8]>) -> &'r [u8]
    where
        'static: 'r,
    {
        match b {
            Some(b) if !b.is_empty() || self.null.is_empty() => b,
            _ => self.null,
        }
    }

    /// Writes one record.
    pub(crate) fn render(
        &self,
        out: &mut impl Write,
        src: &Source<'_>,
        rec: &Record<'_>,
    ) -> std::io::Result<()> {
        if self.json {
            return render_json(out, src, rec);
        }
        let size = |b: Option<&[u8]>| b.map_or(-1, |b| b.len() as i64);
        for t in &self.tokens {
            match t {
                Token::Lit(l) => out.write_all(l)?,
                Token::Topic => out.write_all(src.topic.as_bytes())?,
                Token::Partition => write_int(out, i64::from(src.partition))?,
                Token::Offset => write_int(out, rec.offset)?,
                Token::Key => out.write_all(self.text(rec.key()))?,
                Token::Value => out.write_all(self.text(rec.value()))?,
                Token::Timestamp => write_int(out, rec.timestamp)?,
                Token::Headers => {
                    for (i, (k, v)) in rec.headers().enumerate() {
                        if i > 0 {
                            out.write_all(b",")?;
                        }
                        out.write_all(k.as_bytes())?;
                        out.write_all(b"=")?;
                        // kcat prints a null header value as NULL, -Z or not.
                        out.write_all(v.unwrap_or(b"NULL"))?;
                    }
                }
                Token::KeySize => write_int(out, size(rec.key()))?,
                Token::ValueSize => write_int(out, size(rec.value()))?,
                Token::ValueSizeBinary => {
                    out.write_all(&(size(rec.value()) as i32).to_be_bytes())?
                }
            }
        }
        Ok(())
    }
}

fn write_int(out: &mut impl Write, v: i64) -> std::io::Result<()> {
    let mut buf = itoa::Buffer::new();
    out.write_all(buf.format(v).as_bytes())
}

/// The envelope kcat prints with `-J` (its key order; `headers` only when
/// the record has some, as `[name, value, ...]`).
fn render_json(out: &mut impl Write, src: &Source<'_>, rec: &Record<'_>) -> std::io::Result<()> {
    out.write_all(b"{\"topic\":")?;
    json_str(out, Some(src.topic.as_bytes()))?;
    out.write_all(b",\"partition\":")?;
    write_int(out, i64::from(src.partition))?;
    out.write_all(b",\"offset\":")?;
    write_int(out, rec.offset)?;
    out.write_all(if src.log_append_time {
        b",\"tstype\":\"logappend\",\"ts\":"
    } else {
        b",\"tstype\":\"create\",\"ts\":"
    })?;
    write_int(out, rec.timestamp)?;
    out.write_all(b",\"broker\":")?;
    write_int(out, i64::from(src.broker))?;
    if rec.header_count() > 0 {
        out.write_all(b",\"headers\":[")?;
        for (i, (k, v)) in rec.headers().enumerate() {
            if i > 0 {
                out.write_all(b",")?;
            }
            json_str(out, Some(k.as_bytes()))?;
            out.write_all(b",")?;
            json_str(out, v)?;
        }
        out.write_all(b"]")?;
    }
    out.write_all(b",\"key\":")?;
    json_str(out, rec.key())?;
    out.write_all(b",\"payload\":")?;
    json_str(out, rec.value())?;
    out.write_all(b"}\n")
}

/// A JSON string as kcat's generator writes it: quotes, backslashes and
/// control characters escaped, every other byte as it is.
fn json_str(out: &mut impl Write, s: Option<&[u8]>) -> std::io::Result<()> {
    let Some(s) = s else {
        return out.write_all(b"null");
    };
    out.write_all(b"\"")?;
    let mut start = 0;
    for (i, &c) in s.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            c if c < 0x20 => b"",
            _ => continue,
        };
        out.write_all(&s[start..i])?;
        if esc.is_empty() {
            write!(out, "\\u{c:04X}")?;
        } else {
            out.write_all(esc)?;
        }
        start = i + 1;
    }
    out.write_all(&s[start..])?;
    out.write_all(b"\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use faustus::wire::record::{BatchBuilder, Compression, Parsed, RecordBatch};

    fn with_record(
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
        f: impl FnOnce(&Record<'_>),
    ) {
        let mut b = BatchBuilder::new(Compression::None);
        b.append(42, key, value, headers);
        let Ok(Parsed::Batch(batch, _)) = RecordBatch::parse(b.finish().expect("batch")) else {
            panic!("batch");
        };
        let rec = batch
            .records()
            .expect("records")
            .next()
            .expect("one")
            .expect("ok");
        f(&rec);
    }

    fn render(p: &Printer, rec: &Record<'_>) -> Vec<u8> {
        let src = Source {
            topic: "clicks",
            partition: 3,
            log_append_time: false,
            broker: 1,
        };
        let mut out = Vec::new();
        p.render(&mut out, &src, rec).expect("render");
        out
    }

    #[test]
    fn renders_every_token() {
        with_record(
            Some(b"key"),
            Some(b"value"),
            &[("a", Some(b"1")), ("b", None)],
            |rec| {
                let f = Printer::format(r"%t|%p|%o|%k|%s|%T|%h|%K|%S|100%%\t\x41%R\n", false)
                    .expect("format");
                let mut want = b"clicks|3|0|key|value|42|a=1,b=NULL|3|5|100%\tA".to_vec();
                want.extend_from_slice(&5i32.to_be_bytes());
                want.push(b'\n');
                assert_eq!(render(&f, rec), want);
            },
        );
        assert!(Printer::format("%z", false).is_err());
        assert!(Printer::format("%", false).is_err());
    }

    #[test]
    fn default_layout_and_nulls_as_kcat_prints_them() {
        with_record(None, Some(b"v"), &[], |rec| {
            assert_eq!(render(&Printer::delimited(None, r"\n", false), rec), b"v\n");
            assert_eq!(
                render(&Printer::delimited(Some(r"\t"), ";", false), rec),
                b"\tv;"
            );
            assert_eq!(
                render(&Printer::delimited(Some(":"), r"\n", true), rec),
                b"NULL:v\n"
            );
        });
    }

    #[test]
    fn json_envelope_as_kcat_writes_it() {
        with_record(
            Some(b"k"),
            Some(b"a/b\"c\\d\x01e\tf\xc3\xa9g\x7f\x1f\x08\x0c"),
            &[("n", Some(b"")), ("m", None)],
            |rec| {
                assert_eq!(
                    String::from_utf8_lossy(&render(&Printer::json(), rec)),
                    "{\"topic\":\"clicks\",\"partition\":3,\"offset\":0,\"tstype\":\"create\",\
                     \"ts\":42,\"broker\":1,\"headers\":[\"n\",\"\",\"m\",null],\"key\":\"k\",\
                     \"payload\":\"a/b\\\"c\\\\d\\u0001e\\tf\u{e9}g\u{7f}\\u001F\\b\\f\"}\n"
                );
            },
        );
        with_record(None, None, &[], |rec| {
            assert!(String::from_utf8_lossy(&render(&Printer::json(), rec))
                .ends_with("\"broker\":1,\"key\":null,\"payload\":null}\n"));
        });
    }
}

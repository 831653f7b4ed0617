//! kcat-style output formats for `faustus consume -f`.
//!
//! Tokens: `%t` topic, `%p` partition, `%o` offset, `%k` key, `%s` value,
//! `%T` timestamp (ms), `%h` headers (`k=v,k=v`), `%K` key size, `%S` value
//! size (-1 for null), `%%` a percent sign; escapes `\n`, `\t`, `\r`, `\\`.

use std::io::Write;

use faustus::wire::record::Record;

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
}

/// A parsed `-f` format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Format(Vec<Token>);

impl Format {
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        let mut lit = Vec::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            match c {
                '%' => {
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
                        Some('%') => {
                            lit.push(b'%');
                            continue;
                        }
                        Some(o) => return Err(format!("unknown format token %{o}")),
                        None => return Err("format ends with a lone %".into()),
                    };
                    if !lit.is_empty() {
                        out.push(Token::Lit(std::mem::take(&mut lit)));
                    }
                    out.push(t);
                }
                '\\' => match chars.next() {
                    Some('n') => lit.push(b'\n'),
                    Some('t') => lit.push(b'\t'),
                    Some('r') => lit.push(b'\r'),
                    Some('\\') => lit.push(b'\\'),
                    Some(o) => {
                        lit.push(b'\\');
                        let mut buf = [0u8; 4];
                        lit.extend_from_slice(o.encode_utf8(&mut buf).as_bytes());
                    }
                    None => lit.push(b'\\'),
                },
                c => {
                    let mut buf = [0u8; 4];
                    lit.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        if !lit.is_empty() {
            out.push(Token::Lit(lit));
        }
        Ok(Self(out))
    }

    pub(crate) fn render(
        &self,
        out: &mut impl Write,
        topic: &str,
        partition: i32,
        rec: &Record<'_>,
    ) -> std::io::Result<()> {
        let size = |b: Option<&[u8]>| b.map_or(-1, |b| b.len() as i64);
        for t in &self.0 {
            match t {
                Token::Lit(l) => out.write_all(l)?,
                Token::Topic => out.write_all(topic.as_bytes())?,
                Token::Partition => write!(out, "{partition}")?,
                Token::Offset => write!(out, "{}", rec.offset)?,
                Token::Key => out.write_all(rec.key().unwrap_or_default())?,
                Token::Value => out.write_all(rec.value().unwrap_or_default())?,
                Token::Timestamp => write!(out, "{}", rec.timestamp)?,
                Token::Headers => {
                    for (i, (k, v)) in rec.headers().enumerate() {
                        if i > 0 {
                            out.write_all(b",")?;
                        }
                        out.write_all(k.as_bytes())?;
                        out.write_all(b"=")?;
                        out.write_all(v.unwrap_or_default())?;
                    }
                }
                Token::KeySize => write!(out, "{}", size(rec.key()))?,
                Token::ValueSize => write!(out, "{}", size(rec.value()))?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use faustus::wire::record::{BatchBuilder, Compression, Parsed, RecordBatch};

    #[test]
    fn renders_every_token() {
        let mut b = BatchBuilder::new(Compression::None);
        b.append(
            42,
            Some(b"key"),
            Some(b"value"),
            &[("a", Some(b"1")), ("b", Some(b"2"))],
        );
        let Ok(Parsed::Batch(batch, _)) = RecordBatch::parse(b.finish().expect("batch")) else {
            panic!("batch");
        };
        let rec = batch
            .records()
            .expect("records")
            .next()
            .expect("one")
            .expect("ok");
        let f = Format::parse(r"%t|%p|%o|%k|%s|%T|%h|%K|%S|100%%\t\n").expect("format");
        let mut out = Vec::new();
        f.render(&mut out, "clicks", 3, &rec).expect("render");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "clicks|3|0|key|value|42|a=1,b=2|3|5|100%\t\n"
        );
        assert!(Format::parse("%z").is_err());
        assert!(Format::parse("%").is_err());
    }
}

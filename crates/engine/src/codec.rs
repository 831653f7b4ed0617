//! Codecs turn keys and values into bytes and back. [`Json`] (serde),
//! [`Utf8`] and [`Raw`] come with the engine; implement [`Codec`] for more
//! (Avro, protobuf, ...). A serde struct with [`Json`] plays the part of
//! Faust's `Record`.

use std::marker::PhantomData;

/// Why a codec refused some bytes or a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(pub String);

impl CodecError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// Encodes and decodes values of type `T`.
///
/// Decoding takes the record's bytes borrowed from the fetched buffer; a
/// null key or value reaches the codec as `None`.
pub trait Codec<T>: Send + Sync {
    /// Appends `item`'s encoding to `out`.
    fn encode(&self, item: &T, out: &mut Vec<u8>) -> Result<(), CodecError>;
    /// Decodes one item; `None` is a null key or value.
    fn decode(&self, bytes: Option<&[u8]>) -> Result<T, CodecError>;
    /// The codec's name, for logs and the `agents` command.
    fn name(&self) -> &'static str;
}

fn required(bytes: Option<&[u8]>) -> Result<&[u8], CodecError> {
    bytes.ok_or_else(|| CodecError::new("null where a value was expected"))
}

/// JSON through serde, for any `Serialize + DeserializeOwned` type. A null
/// record decodes as JSON `null` (so `Option<T>` accepts it).
#[derive(Debug, Default, Clone, Copy)]
pub struct Json;

impl<T> Codec<T> for Json
where
    T: serde::Serialize + serde::de::DeserializeOwned + 'static,
{
    fn encode(&self, item: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
        serde_json::to_writer(out, item).map_err(|e| CodecError::new(e.to_string()))
    }
    fn decode(&self, bytes: Option<&[u8]>) -> Result<T, CodecError> {
        serde_json::from_slice(bytes.unwrap_or(b"null"))
            .map_err(|e| CodecError::new(format!("invalid JSON: {e}")))
    }
    fn name(&self) -> &'static str {
        "json"
    }
}

/// UTF-8 text as [`String`].
#[derive(Debug, Default, Clone, Copy)]
pub struct Utf8;

impl Codec<String> for Utf8 {
    fn encode(&self, item: &String, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.extend_from_slice(item.as_bytes());
        Ok(())
    }
    fn decode(&self, bytes: Option<&[u8]>) -> Result<String, CodecError> {
        std::str::from_utf8(required(bytes)?)
            .map(str::to_owned)
            .map_err(|e| CodecError::new(format!("invalid UTF-8: {e}")))
    }
    fn name(&self) -> &'static str {
        "utf8"
    }
}

/// Bytes as they are.
#[derive(Debug, Default, Clone, Copy)]
pub struct Raw;

impl Codec<Vec<u8>> for Raw {
    fn encode(&self, item: &Vec<u8>, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.extend_from_slice(item);
        Ok(())
    }
    fn decode(&self, bytes: Option<&[u8]>) -> Result<Vec<u8>, CodecError> {
        Ok(required(bytes)?.to_vec())
    }
    fn name(&self) -> &'static str {
        "raw"
    }
}

impl Codec<bytes::Bytes> for Raw {
    fn encode(&self, item: &bytes::Bytes, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.extend_from_slice(item);
        Ok(())
    }
    fn decode(&self, bytes: Option<&[u8]>) -> Result<bytes::Bytes, CodecError> {
        Ok(bytes::Bytes::copy_from_slice(required(bytes)?))
    }
    fn name(&self) -> &'static str {
        "raw"
    }
}

/// A windowed key as text, the way Kafka Streams prints windows:
/// `KEY@START/END` (milliseconds), the key encoded by the inner codec. It
/// decodes what it writes (the last `@` splits the key from the window).
#[derive(Debug, Default, Clone, Copy)]
pub struct WindowedText<C>(pub C);

impl<K, C: Codec<K>> Codec<crate::window::Windowed<K>> for WindowedText<C> {
    fn encode(
        &self,
        item: &crate::window::Windowed<K>,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        self.0.encode(&item.key, out)?;
        let mut n = itoa::Buffer::new();
        out.push(b'@');
        out.extend_from_slice(n.format(item.window.start).as_bytes());
        out.push(b'/');
        out.extend_from_slice(n.format(item.window.end).as_bytes());
        Ok(())
    }
    fn decode(&self, bytes: Option<&[u8]>) -> Result<crate::window::Windowed<K>, CodecError> {
        let raw = required(bytes)?;
        let bad = || CodecError::new("not a windowed key (KEY@START/END)");
        let at = raw.iter().rposition(|&b| b == b'@').ok_or_else(bad)?;
        let window = std::str::from_utf8(&raw[at + 1..]).map_err(|_| bad())?;
        let (start, end) = window.split_once('/').ok_or_else(bad)?;
        let (start, end) = (
            start.parse().map_err(|_| bad())?,
            end.parse().map_err(|_| bad())?,
        );
        Ok(crate::window::Windowed {
            key: self.0.decode(Some(&raw[..at]))?,
            window: crate::window::Window::new(start, end),
        })
    }
    fn name(&self) -> &'static str {
        "windowed-text"
    }
}

/// Appends `item`'s encoding to `out`; a refusal names the topic or table
/// and the part (`key` or `value`).
pub(crate) fn encode_into<T>(
    codec: &dyn Codec<T>,
    item: &T,
    out: &mut Vec<u8>,
    target: &str,
    part: &'static str,
) -> crate::Result<()> {
    codec
        .encode(item, out)
        .map_err(|source| crate::Error::Encode {
            target: target.to_owned(),
            part,
            source,
        })
}

/// A key and a value codec, shared by a topic's or a table's handles.
pub(crate) struct Codecs<K, V> {
    pub(crate) key: Box<dyn Codec<K>>,
    pub(crate) value: Box<dyn Codec<V>>,
    _t: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Codecs<K, V> {
    pub(crate) fn new(key: Box<dyn Codec<K>>, value: Box<dyn Codec<V>>) -> Self {
        Self {
            key,
            value,
            _t: PhantomData,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Click {
        url: String,
        count: u64,
    }

    #[test]
    fn json_round_trips_a_record_struct() {
        let c = Click {
            url: "/a".into(),
            count: 3,
        };
        let mut out = Vec::new();
        Json.encode(&c, &mut out).expect("ok");
        let back: Click = Json.decode(Some(&out)).expect("ok");
        assert_eq!(back, c);
    }

    #[test]
    fn json_refuses_bad_input_and_null_unless_optional() {
        let r: Result<Click, _> = Json.decode(Some(b"{not json"));
        assert!(r.expect_err("an error").0.contains("invalid JSON"));
        let r: Result<Click, _> = Json.decode(None);
        assert!(r.is_err());
        let r: Option<Click> = Json.decode(None).expect("ok");
        assert_eq!(r, None);
    }

    #[test]
    fn windowed_text_prints_windows_as_kafka_streams_does_and_reads_them_back() {
        use crate::window::{Window, Windowed};
        let w = Windowed {
            key: "a@b".to_string(),
            window: Window::new(1000, 2000),
        };
        let mut out = Vec::new();
        WindowedText(Utf8).encode(&w, &mut out).expect("ok");
        assert_eq!(out, b"a@b@1000/2000");
        assert_eq!(WindowedText(Utf8).decode(Some(&out)).expect("ok"), w);
        let r: Result<Windowed<String>, _> = WindowedText(Utf8).decode(Some(b"a@x/1"));
        assert!(r.is_err());
    }

    #[test]
    fn utf8_and_raw() {
        let mut out = Vec::new();
        Utf8.encode(&"héllo".to_string(), &mut out).expect("ok");
        assert_eq!(Utf8.decode(Some(&out)).expect("ok"), "héllo");
        assert!(Utf8.decode(Some(&[0xff, 0xfe])).is_err());
        assert!(Utf8.decode(None).is_err());
        let v: Vec<u8> = Raw.decode(Some(&[1, 2, 3])).expect("ok");
        assert_eq!(v, vec![1, 2, 3]);
    }
}

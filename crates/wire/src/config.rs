//! Configuration by the Java client's property names (`bootstrap.servers`,
//! `acks`, `linger.ms`, `isolation.level`, ...), so settings carry over.
//!
//! [`Properties`] holds `key=value` pairs; [`ClientConfig`],
//! `ProducerConfig` and
//! [`ConsumerConfig`](crate::consumer::ConsumerConfig) read the keys they know
//! with the Java defaults, and a bad value is an [`Error::Config`] naming the
//! key.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use crate::{Error, Result};

/// `key=value` settings, as in a Java `.properties` file.
#[derive(Debug, Clone, Default)]
pub struct Properties {
    map: BTreeMap<String, String>,
}

impl Properties {
    /// Empty settings.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value`.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.map.insert(key.into(), value.into());
        self
    }

    /// Sets `key` to `value` in place.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.map.insert(key.into(), value.into());
    }

    /// Parses `key=value` (as given to `-X`).
    pub fn insert_pair(&mut self, pair: &str) -> Result<()> {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| Error::Config(format!("`{pair}` is not key=value")))?;
        self.insert(k.trim(), v.trim());
        Ok(())
    }

    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.map.get(key).map(String::as_str)
    }

    /// `key` parsed as `T`, or `default` when unset.
    pub fn parse_or<T: FromStr>(&self, key: &str, default: T) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|e| Error::Config(format!("{key}={v}: {e}"))),
        }
    }

    /// `key` in milliseconds, or `default_ms`.
    pub fn millis_or(&self, key: &str, default_ms: u64) -> Result<Duration> {
        Ok(Duration::from_millis(self.parse_or(key, default_ms)?))
    }

    /// `key` as a boolean (`true`/`false`), or `default`.
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
            Some(v) => Err(Error::Config(format!("{key}={v}: expected true or false"))),
        }
    }

    /// All keys that are set.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Properties {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self {
            map: iter
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }
}

/// Settings every client shares.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `bootstrap.servers`: `host:port,...`.
    pub bootstrap_servers: Vec<String>,
    /// `client.id` (default `faustus`).
    pub client_id: String,
    /// `request.timeout.ms` (default 30000).
    pub request_timeout: Duration,
    /// `socket.connection.setup.timeout.ms` (default 10000).
    pub connect_timeout: Duration,
    /// `reconnect.backoff.ms` (default 50).
    pub reconnect_backoff: Duration,
    /// `reconnect.backoff.max.ms` (default 1000).
    pub reconnect_backoff_max: Duration,
    /// `retry.backoff.ms` (default 100).
    pub retry_backoff: Duration,
    /// `retry.backoff.max.ms` (default 1000).
    pub retry_backoff_max: Duration,
    /// `metadata.max.age.ms` (default 300000).
    pub metadata_max_age: Duration,
    /// `default.api.timeout.ms` (default 60000): the overall deadline of admin
    /// and metadata operations, retries included.
    pub default_api_timeout: Duration,
    /// `security.protocol` and the `ssl.*`/`sasl.*` settings
    /// (see [`crate::security`]).
    pub security: crate::security::Security,
}

impl ClientConfig {
    /// Reads the shared settings; `bootstrap.servers` is required.
    pub fn from_properties(p: &Properties) -> Result<Self> {
        let bootstrap_servers: Vec<String> = p
            .get("bootstrap.servers")
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if bootstrap_servers.is_empty() {
            return Err(Error::Config("bootstrap.servers is required".into()));
        }
        for s in &bootstrap_servers {
            let port_ok = s
                .rsplit_once(':')
                .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                return Err(Error::Config(format!(
                    "bootstrap.servers: `{s}` is not host:port"
                )));
            }
        }
        Ok(Self {
            bootstrap_servers,
            client_id: p.get("client.id").unwrap_or("faustus").to_owned(),
            request_timeout: p.millis_or("request.timeout.ms", 30_000)?,
            connect_timeout: p.millis_or("socket.connection.setup.timeout.ms", 10_000)?,
            reconnect_backoff: p.millis_or("reconnect.backoff.ms", 50)?,
            reconnect_backoff_max: p.millis_or("reconnect.backoff.max.ms", 1_000)?,
            retry_backoff: p.millis_or("retry.backoff.ms", 100)?,
            retry_backoff_max: p.millis_or("retry.backoff.max.ms", 1_000)?,
            metadata_max_age: p.millis_or("metadata.max.age.ms", 300_000)?,
            default_api_timeout: p.millis_or("default.api.timeout.ms", 60_000)?,
            security: crate::security::Security::from_properties(p)?,
        })
    }

    /// Shorthand: defaults with the given `bootstrap.servers`.
    pub fn new(bootstrap: &str) -> Result<Self> {
        Self::from_properties(&Properties::new().set("bootstrap.servers", bootstrap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_names_and_defaults() {
        let p = Properties::new()
            .set("bootstrap.servers", "a:1, b:2")
            .set("request.timeout.ms", "500");
        let c = ClientConfig::from_properties(&p).expect("valid");
        assert_eq!(c.bootstrap_servers, ["a:1", "b:2"]);
        assert_eq!(c.request_timeout, Duration::from_millis(500));
        assert_eq!(c.retry_backoff, Duration::from_millis(100));
        assert_eq!(c.client_id, "faustus");
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = ClientConfig::from_properties(
            &Properties::new()
                .set("bootstrap.servers", "a:1")
                .set("request.timeout.ms", "soon"),
        )
        .expect_err("invalid");
        assert!(err.to_string().contains("request.timeout.ms=soon"), "{err}");
        assert!(ClientConfig::from_properties(&Properties::new()).is_err());
        assert!(ClientConfig::new("no-port").is_err());
        let mut p = Properties::new();
        assert!(p.insert_pair("novalue").is_err());
        p.insert_pair("acks = all").expect("pair");
        assert_eq!(p.get("acks"), Some("all"));
        assert!(p.bool_or("acks", true).is_err());
    }
}

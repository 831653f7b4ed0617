//! Encryption and authentication: TLS (rustls) and SASL (PLAIN,
//! SCRAM-SHA-256/512, OAUTHBEARER, with KIP-368 re-authentication).
//!
//! Configured by the names the Java client and librdkafka use:
//!
//! | setting | meaning |
//! | --- | --- |
//! | `security.protocol` | `PLAINTEXT` (default), `SSL`, `SASL_PLAINTEXT`, `SASL_SSL` |
//! | `ssl.ca.location` | PEM file of trusted CAs (default: the system's store); also `ssl.ca.pem`, `ssl.truststore.certificates`, or `ssl.truststore.location` with `ssl.truststore.type=PEM` |
//! | `ssl.truststore.location`, `ssl.truststore.password` | a JKS or PKCS#12 trust store (the format is read from the file; a JKS store without a password is read unchecked, as Java does) |
//! | `ssl.certificate.location`, `ssl.key.location` | client certificate and key (PEM); also `ssl.certificate.pem`/`ssl.key.pem`, `ssl.keystore.certificate.chain`/`ssl.keystore.key` |
//! | `ssl.key.password` | the password of an encrypted PKCS#8 key (`ENCRYPTED PRIVATE KEY`), or of a JKS store's key when it differs from the store's |
//! | `ssl.keystore.location`, `ssl.keystore.password` | a JKS or PKCS#12 key store holding the client's key and certificate chain (its first key entry); with `ssl.keystore.type=PEM`, one PEM file holding both |
//! | `ssl.endpoint.identification.algorithm` | `https` (default) verifies the broker's host name; empty or `none` does not |
//! | `sasl.mechanism` | `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`, `OAUTHBEARER` |
//! | `sasl.username`, `sasl.password` | credentials (as librdkafka and kcat take them) |
//! | `sasl.jaas.config` | the Java client's form: `...PlainLoginModule required username="u" password="p";` |
//! | `sasl.oauthbearer.token` | a static OAUTHBEARER token |
//! | `sasl.oauthbearer.config` | librdkafka's unsecured-JWT form: `principal=u [lifeSeconds=N] [scope=s]` |
//!
//! The settings are read and the TLS files loaded once, when the client is
//! configured, so a bad path or a missing password is an
//! [`Error::Config`] naming the setting before any
//! connection is tried.

pub mod sasl;
pub mod scram;
pub mod store;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use crate::config::Properties;
use crate::{Error, Result};

pub use sasl::{Mechanism, SaslSettings, Token};
pub use tls::{Identity, TlsSettings, Trust};

/// `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// No encryption, no authentication.
    #[default]
    Plaintext,
    /// TLS.
    Ssl,
    /// SASL over plain TCP.
    SaslPlaintext,
    /// SASL over TLS.
    SaslSsl,
}

impl Protocol {
    /// Parses `security.protocol` (case-insensitive).
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim().to_ascii_uppercase().as_str() {
            "PLAINTEXT" => Ok(Self::Plaintext),
            "SSL" => Ok(Self::Ssl),
            "SASL_PLAINTEXT" => Ok(Self::SaslPlaintext),
            "SASL_SSL" => Ok(Self::SaslSsl),
            other => Err(Error::Config(format!(
                "security.protocol={other}: expected PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
            ))),
        }
    }

    /// Whether connections use TLS.
    pub fn tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    /// Whether connections authenticate with SASL.
    pub fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

/// A client's security settings, with its TLS configuration built.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// `security.protocol`.
    pub protocol: Protocol,
    /// The `ssl.*` settings (SSL and SASL_SSL).
    pub tls: Option<TlsSettings>,
    /// The `sasl.*` settings (SASL_PLAINTEXT and SASL_SSL).
    pub sasl: Option<SaslSettings>,
    connector: Option<Arc<rustls::ClientConfig>>,
}

impl Security {
    /// Reads the security settings; loads and checks the TLS files.
    pub fn from_properties(p: &Properties) -> Result<Self> {
        let protocol = match p.get("security.protocol") {
            None => Protocol::Plaintext,
            Some(v) => Protocol::parse(v)?,
        };
        let tls = if protocol.tls() {
            Some(tls_settings(p)?)
        } else {
            None
        };
        let sasl = if protocol.sasl() {
            Some(sasl_settings(p)?)
        } else {
            if p.get("sasl.mechanism").is_some() || p.get("sasl.username").is_some() {
                return Err(Error::Config(format!(
                    "sasl.* is set but security.protocol={}: set security.protocol=SASL_SSL (or SASL_PLAINTEXT)",
                    p.get("security.protocol").unwrap_or("PLAINTEXT")
                )));
            }
            None
        };
        let connector = match &tls {
            Some(t) => Some(t.client_config().map_err(Error::Config)?),
            None => None,
        };
        Ok(Self {
            protocol,
            tls,
            sasl,
            connector,
        })
    }

    /// The TLS configuration connections use, when `security.protocol` is
    /// SSL or SASL_SSL.
    pub fn tls_config(&self) -> Option<&Arc<rustls::ClientConfig>> {
        self.connector.as_ref()
    }
}

fn tls_settings(p: &Properties) -> Result<TlsSettings> {
    let trust = if let Some(path) = p.get("ssl.ca.location") {
        Trust::File(path.to_owned())
    } else if let Some(text) = p.get("ssl.ca.pem").or(p.get("ssl.truststore.certificates")) {
        Trust::Pem(text.to_owned())
    } else if let Some(path) = p.get("ssl.truststore.location") {
        if store_type(p, "ssl.truststore.type")? == StoreType::Pem {
            Trust::File(path.to_owned())
        } else {
            Trust::Store {
                path: path.to_owned(),
                password: p.get("ssl.truststore.password").map(str::to_owned),
            }
        }
    } else {
        Trust::System
    };
    let key_password = p.get("ssl.key.password").map(str::to_owned);
    let identity = match (
        p.get("ssl.certificate.location"),
        p.get("ssl.key.location"),
        p.get("ssl.certificate.pem")
            .or(p.get("ssl.keystore.certificate.chain")),
        p.get("ssl.key.pem").or(p.get("ssl.keystore.key")),
    ) {
        (None, None, None, None) => match p.get("ssl.keystore.location") {
            None => None,
            // A PEM key store is one file holding the chain and the key.
            Some(path) if store_type(p, "ssl.keystore.type")? == StoreType::Pem => {
                Some(Identity::Files {
                    certificate: path.to_owned(),
                    key: path.to_owned(),
                    password: key_password,
                })
            }
            Some(path) => Some(Identity::Store {
                path: path.to_owned(),
                password: p.get("ssl.keystore.password").map(str::to_owned),
                key_password,
            }),
        },
        (Some(c), Some(k), _, _) => Some(Identity::Files {
            certificate: c.to_owned(),
            key: k.to_owned(),
            password: key_password,
        }),
        (None, None, Some(c), Some(k)) => Some(Identity::Pem {
            certificate: c.to_owned(),
            key: k.to_owned(),
            password: key_password,
        }),
        _ => {
            return Err(Error::Config(
                "a client certificate needs both ssl.certificate.location and ssl.key.location (or both PEM texts)".into(),
            ))
        }
    };
    let verify_hostname = match p.get("ssl.endpoint.identification.algorithm") {
        None => true,
        Some(v) if v.eq_ignore_ascii_case("https") => true,
        Some(v) if v.trim().is_empty() || v.eq_ignore_ascii_case("none") => false,
        Some(v) => {
            return Err(Error::Config(format!(
                "ssl.endpoint.identification.algorithm={v}: expected https, none or empty"
            )))
        }
    };
    Ok(TlsSettings {
        trust,
        identity,
        verify_hostname,
    })
}

/// `ssl.keystore.type` / `ssl.truststore.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoreType {
    /// JKS or PKCS12 (told apart by the file's bytes, as the JDK does).
    Binary,
    /// PEM.
    Pem,
}

fn store_type(p: &Properties, key: &str) -> Result<StoreType> {
    match p.get(key).map(str::trim) {
        None => Ok(StoreType::Binary),
        Some(t) if t.eq_ignore_ascii_case("PEM") => Ok(StoreType::Pem),
        Some(t) if t.eq_ignore_ascii_case("JKS") || t.eq_ignore_ascii_case("PKCS12") => {
            Ok(StoreType::Binary)
        }
        Some(t) => Err(Error::Config(format!(
            "{key}={t}: expected JKS, PKCS12 or PEM"
        ))),
    }
}

fn sasl_settings(p: &Properties) -> Result<SaslSettings> {
    let name = p
        .get("sasl.mechanism")
        .or(p.get("sasl.mechanisms"))
        .ok_or_else(|| {
            Error::Config(
                "sasl.mechanism is required with SASL_SSL or SASL_PLAINTEXT: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER".into(),
            )
        })?;
    let mechanism =
        Mechanism::parse(name).map_err(|e| Error::Config(format!("sasl.mechanism={name}: {e}")))?;
    let jaas = match p.get("sasl.jaas.config") {
        Some(text) => Some(
            sasl::Jaas::parse(text).map_err(|e| Error::Config(format!("sasl.jaas.config: {e}")))?,
        ),
        None => None,
    };
    let from_jaas = |key: &str| jaas.as_ref().and_then(|j| j.option(key)).map(str::to_owned);
    let mut settings = SaslSettings {
        mechanism,
        username: p
            .get("sasl.username")
            .map(str::to_owned)
            .or_else(|| from_jaas("username"))
            .unwrap_or_default(),
        password: p
            .get("sasl.password")
            .map(str::to_owned)
            .or_else(|| from_jaas("password"))
            .unwrap_or_default(),
        token: None,
    };
    match mechanism {
        Mechanism::Plain | Mechanism::ScramSha256 | Mechanism::ScramSha512 => {
            if settings.username.is_empty() {
                return Err(Error::Config(format!(
                    "sasl.mechanism={}: set sasl.username and sasl.password (or sasl.jaas.config)",
                    mechanism.name()
                )));
            }
        }
        Mechanism::OAuthBearer => {
            settings.token = Some(oauth_token(p, jaas.as_ref())?);
        }
    }
    Ok(settings)
}

fn oauth_token(p: &Properties, jaas: Option<&sasl::Jaas>) -> Result<Token> {
    if let Some(t) = p.get("sasl.oauthbearer.token") {
        return Ok(Token::Static(t.to_owned()));
    }
    if let Some(cfg) = p.get("sasl.oauthbearer.config") {
        let mut principal = None;
        let mut lifetime = Duration::from_secs(3600);
        let mut scope = None;
        for pair in cfg.split_whitespace() {
            match pair.split_once('=') {
                Some(("principal", v)) => principal = Some(v.to_owned()),
                Some(("lifeSeconds", v)) => {
                    lifetime = Duration::from_secs(v.parse().map_err(|_| {
                        Error::Config(format!("sasl.oauthbearer.config: lifeSeconds={v}"))
                    })?)
                }
                Some(("scope", v)) => scope = Some(v.replace(',', " ")),
                _ => {}
            }
        }
        let principal = principal.ok_or_else(|| {
            Error::Config("sasl.oauthbearer.config: principal=... is required".into())
        })?;
        return Ok(Token::Unsecured {
            principal,
            lifetime,
            scope,
        });
    }
    if let Some(j) = jaas {
        if let Some(sub) = j.option("unsecuredLoginStringClaim_sub") {
            let lifetime = j
                .option("unsecuredLoginLifetimeSeconds")
                .and_then(|s| s.parse().ok())
                .map_or(Duration::from_secs(3600), Duration::from_secs);
            return Ok(Token::Unsecured {
                principal: sub.to_owned(),
                lifetime,
                scope: j
                    .option("unsecuredLoginStringClaim_scope")
                    .map(str::to_owned),
            });
        }
    }
    Err(Error::Config(
        "sasl.mechanism=OAUTHBEARER: set sasl.oauthbearer.token, sasl.oauthbearer.config=principal=..., or sasl.jaas.config with unsecuredLoginStringClaim_sub".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> Properties {
        pairs.iter().map(|&(k, v)| (k, v)).collect()
    }

    #[test]
    fn plaintext_by_default() {
        let s = Security::from_properties(&Properties::new()).expect("default");
        assert_eq!(s.protocol, Protocol::Plaintext);
        assert!(s.tls_config().is_none() && s.sasl.is_none());
    }

    #[test]
    fn sasl_credentials_from_either_form() {
        let s = Security::from_properties(&props(&[
            ("security.protocol", "sasl_plaintext"),
            ("sasl.mechanism", "SCRAM-SHA-256"),
            ("sasl.username", "alice"),
            ("sasl.password", "pw"),
        ]))
        .expect("librdkafka form");
        let sasl = s.sasl.expect("sasl");
        assert_eq!(
            (
                sasl.mechanism,
                sasl.username.as_str(),
                sasl.password.as_str()
            ),
            (Mechanism::ScramSha256, "alice", "pw")
        );
        let s = Security::from_properties(&props(&[
            ("security.protocol", "SASL_PLAINTEXT"),
            ("sasl.mechanism", "PLAIN"),
            ("sasl.jaas.config", r#"org.apache.kafka.common.security.plain.PlainLoginModule required username="bob" password="b pw";"#),
        ]))
        .expect("java form");
        let sasl = s.sasl.expect("sasl");
        assert_eq!(
            (sasl.username.as_str(), sasl.password.as_str()),
            ("bob", "b pw")
        );
    }

    #[test]
    fn oauthbearer_token_sources() {
        let base = [
            ("security.protocol", "SASL_PLAINTEXT"),
            ("sasl.mechanism", "OAUTHBEARER"),
        ];
        let with = |extra: (&str, &str)| {
            let mut v = base.to_vec();
            v.push(extra);
            Security::from_properties(&props(&v)).map(|s| s.sasl.and_then(|s| s.token))
        };
        assert_eq!(
            with(("sasl.oauthbearer.token", "abc")).expect("static"),
            Some(Token::Static("abc".into()))
        );
        assert_eq!(
            with((
                "sasl.oauthbearer.config",
                "principal=admin lifeSeconds=60 scope=a,b"
            ))
            .expect("librdkafka"),
            Some(Token::Unsecured {
                principal: "admin".into(),
                lifetime: Duration::from_secs(60),
                scope: Some("a b".into())
            })
        );
        assert!(matches!(
            with(("sasl.jaas.config", "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required unsecuredLoginStringClaim_sub=\"svc\";")).expect("jaas"),
            Some(Token::Unsecured { principal, .. }) if principal == "svc"
        ));
        assert!(with(("client.id", "x")).is_err());
    }

    #[test]
    fn mistakes_name_the_setting() {
        let err = |pairs: &[(&str, &str)]| {
            Security::from_properties(&props(pairs))
                .expect_err("invalid")
                .to_string()
        };
        assert!(err(&[("security.protocol", "TLS")]).contains("security.protocol=TLS"));
        assert!(err(&[
            ("security.protocol", "SASL_SSL"),
            ("ssl.ca.location", "/dev/null")
        ])
        .contains("sasl.mechanism is required"));
        assert!(err(&[
            ("security.protocol", "SASL_PLAINTEXT"),
            ("sasl.mechanism", "GSSAPI")
        ])
        .contains("GSSAPI"));
        assert!(err(&[
            ("security.protocol", "SASL_PLAINTEXT"),
            ("sasl.mechanism", "PLAIN")
        ])
        .contains("sasl.username"));
        assert!(err(&[("sasl.mechanism", "PLAIN"), ("sasl.username", "u")])
            .contains("security.protocol=PLAINTEXT"));
        assert!(err(&[
            ("security.protocol", "SSL"),
            ("ssl.ca.location", "/nonexistent.pem")
        ])
        .contains("ssl.ca.location=/nonexistent.pem"));
        assert!(err(&[
            ("security.protocol", "SSL"),
            ("ssl.truststore.location", "/x.jks")
        ])
        .contains("ssl.truststore.location=/x.jks"));
        assert!(err(&[
            ("security.protocol", "SSL"),
            ("ssl.keystore.location", "/x.p12"),
            ("ssl.keystore.password", "pw")
        ])
        .contains("ssl.keystore.location=/x.p12"));
        assert!(err(&[
            ("security.protocol", "SSL"),
            ("ssl.keystore.location", "/x.jceks"),
            ("ssl.keystore.type", "JCEKS")
        ])
        .contains("ssl.keystore.type=JCEKS: expected JKS, PKCS12 or PEM"));
        assert!(err(&[
            ("security.protocol", "SSL"),
            ("ssl.certificate.location", "/c.pem")
        ])
        .contains("ssl.key.location"));
        assert!(err(&[
            ("security.protocol", "SSL"),
            ("ssl.endpoint.identification.algorithm", "dns")
        ])
        .contains("ssl.endpoint.identification.algorithm=dns"));
    }
}

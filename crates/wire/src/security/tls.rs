//! TLS with rustls (ring for cryptography; no OpenSSL): the client
//! configuration built once from the `ssl.*` settings, and the handshake.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Where the trusted CA certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The system's store (`ssl.ca.location` unset).
    System,
    /// A PEM file (`ssl.ca.location`, or `ssl.truststore.location` with
    /// `ssl.truststore.type=PEM`).
    File(String),
    /// PEM text (`ssl.ca.pem`, `ssl.truststore.certificates`).
    Pem(String),
    /// A JKS or PKCS#12 trust store (`ssl.truststore.location`,
    /// `ssl.truststore.password`).
    Store {
        /// The store's path.
        path: String,
        /// Its password (a JKS store without one is read unchecked).
        password: Option<String>,
    },
}

/// A client certificate and its key.
#[derive(Clone, PartialEq, Eq)]
pub enum Identity {
    /// PEM files (`ssl.certificate.location`, `ssl.key.location`; or one
    /// file holding both, `ssl.keystore.location` with
    /// `ssl.keystore.type=PEM`).
    Files {
        /// The certificate chain.
        certificate: String,
        /// The private key (PKCS#8, PKCS#1 or SEC1; or an encrypted PKCS#8
        /// `ENCRYPTED PRIVATE KEY` with `password`).
        key: String,
        /// The key's password (`ssl.key.password`).
        password: Option<String>,
    },
    /// PEM text (`ssl.certificate.pem`, `ssl.key.pem`; or the Java
    /// client's `ssl.keystore.certificate.chain`, `ssl.keystore.key`).
    Pem {
        /// The certificate chain.
        certificate: String,
        /// The private key.
        key: String,
        /// The key's password (`ssl.key.password`).
        password: Option<String>,
    },
    /// A JKS or PKCS#12 key store (`ssl.keystore.location`): its first
    /// private key entry and that entry's certificate chain.
    Store {
        /// The store's path.
        path: String,
        /// The store's password (`ssl.keystore.password`).
        password: Option<String>,
        /// The key's, when it differs (`ssl.key.password`; JKS only).
        key_password: Option<String>,
    },
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Files {
                certificate, key, ..
            } => f
                .debug_struct("Files")
                .field("certificate", certificate)
                .field("key", key)
                .finish_non_exhaustive(),
            Identity::Pem { .. } => f.write_str("Pem(<redacted>)"),
            Identity::Store { path, .. } => f
                .debug_struct("Store")
                .field("path", path)
                .finish_non_exhaustive(),
        }
    }
}

/// The `ssl.*` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Trusted CAs.
    pub trust: Trust,
    /// The client's certificate, for brokers that ask for one
    /// (`ssl.client.auth=required`).
    pub identity: Option<Identity>,
    /// Whether the broker's certificate must name the host connected to
    /// (`ssl.endpoint.identification.algorithm=https`, the default; empty
    /// or `none` turns it off).
    pub verify_hostname: bool,
}

impl TlsSettings {
    /// Builds the rustls configuration: reads the files, parses the PEM.
    /// Every failure names the setting it came from.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        // ring, not aws-lc-rs: its C and assembly build with the C
        // compiler alone, so the static musl build needs no CMake or Go
        // for it. rustls 0.23.48
        // deprecates ring's provider for lacking post-quantum key
        // exchange; the allow keeps a newer lock file from failing the
        // build's -D warnings.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        match &self.trust {
            Trust::System => {
                let found = rustls_native_certs::load_native_certs();
                for cert in found.certs {
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    return Err(
                        "ssl.ca.location is unset and no system CA certificates were found: set ssl.ca.location to the CA's PEM file".into(),
                    );
                }
            }
            Trust::File(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("ssl.ca.location={path}: {e}"))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("ssl.ca.location={path}: {e}"))?;
                add_all(&mut roots, certs, &format!("ssl.ca.location={path}"))?;
            }
            Trust::Pem(text) => {
                let certs = CertificateDer::pem_slice_iter(text.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("ssl.ca.pem: {e}"))?;
                add_all(&mut roots, certs, "ssl.ca.pem")?;
            }
            Trust::Store { path, password } => {
                let what = format!("ssl.truststore.location={path}");
                let loaded = load_store(&what, path, password.as_deref(), None)?;
                add_all(&mut roots, loaded.trusted, &what)?;
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| format!("TLS trust store: {e}"))?;
        let verifier: Arc<dyn ServerCertVerifier> = if self.verify_hostname {
            webpki
        } else {
            Arc::new(AnyName(webpki))
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match &self.identity {
            None => builder.with_no_client_auth(),
            Some(identity) => {
                let (chain, key) = load_identity(identity)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("ssl.certificate/ssl.key: {e}"))?
            }
        };
        Ok(Arc::new(config))
    }
}

fn add_all(
    roots: &mut RootCertStore,
    certs: Vec<CertificateDer<'static>>,
    what: &str,
) -> Result<(), String> {
    if certs.is_empty() {
        return Err(format!("{what}: no certificate found"));
    }
    for c in certs {
        roots.add(c).map_err(|e| format!("{what}: {e}"))?;
    }
    Ok(())
}

fn load_identity(
    identity: &Identity,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let (chain, key) = match identity {
        Identity::Files {
            certificate,
            key,
            password,
        } => {
            let what = format!("ssl.key.location={key}");
            let text = std::fs::read(key).map_err(|e| format!("{what}: {e}"))?;
            (
                CertificateDer::pem_file_iter(certificate)
                    .map_err(|e| format!("ssl.certificate.location={certificate}: {e}"))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("ssl.certificate.location={certificate}: {e}"))?,
                pem_key(&text, password.as_deref(), &what)?,
            )
        }
        Identity::Pem {
            certificate,
            key,
            password,
        } => (
            CertificateDer::pem_slice_iter(certificate.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("ssl.certificate.pem: {e}"))?,
            pem_key(key.as_bytes(), password.as_deref(), "ssl.key.pem")?,
        ),
        Identity::Store {
            path,
            password,
            key_password,
        } => {
            let what = format!("ssl.keystore.location={path}");
            let loaded = load_store(&what, path, password.as_deref(), key_password.as_deref())?;
            let key = loaded
                .key
                .ok_or_else(|| format!("{what}: the store holds no private key entry"))?;
            (loaded.chain, key)
        }
    };
    if chain.is_empty() {
        return Err("the client certificate file holds no PEM certificate".into());
    }
    Ok((chain, key))
}

/// Reads the JKS or PKCS#12 store at `path`; errors start with `what`
/// (the setting that named it).
fn load_store(
    what: &str,
    path: &str,
    password: Option<&str>,
    key_password: Option<&str>,
) -> Result<super::store::Loaded, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{what}: {e}"))?;
    super::store::read(&bytes, password, key_password).map_err(|e| format!("{what}: {e}"))
}

/// The private key in PEM `text`: decrypted with `password` when it is an
/// `ENCRYPTED PRIVATE KEY`, else as it is (librdkafka, too, ignores a
/// password given for a key that has none).
fn pem_key(
    text: &[u8],
    password: Option<&str>,
    what: &str,
) -> Result<PrivateKeyDer<'static>, String> {
    if super::store::is_encrypted_pem(text) {
        let password = password
            .ok_or_else(|| format!("{what}: the key is encrypted; set ssl.key.password"))?;
        return super::store::decrypt_pem_key(text, password).map_err(|e| format!("{what}: {e}"));
    }
    PrivateKeyDer::from_pem_slice(text).map_err(|e| format!("{what}: {e}"))
}

/// The server name to verify for `host` (a DNS name or an IP address).
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned())
        .map_err(|e| format!("`{host}` is not a valid TLS server name: {e}"))
}

/// Chain verification without the hostname check
/// (`ssl.endpoint.identification.algorithm=`): the certificate must still be
/// issued by a trusted CA and be valid now.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_name_the_setting() {
        let s = TlsSettings {
            trust: Trust::File("/nonexistent/ca.pem".into()),
            identity: None,
            verify_hostname: true,
        };
        let err = s.client_config().expect_err("no file");
        assert!(
            err.starts_with("ssl.ca.location=/nonexistent/ca.pem"),
            "{err}"
        );
        let s = TlsSettings {
            trust: Trust::Pem("not a certificate".into()),
            identity: None,
            verify_hostname: false,
        };
        let err = s.client_config().expect_err("no pem");
        assert!(err.contains("no certificate found"), "{err}");
    }

    #[test]
    fn server_names_for_hosts_and_addresses() {
        assert!(server_name("broker-1.example.com").is_ok());
        assert!(matches!(
            server_name("127.0.0.1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(server_name("[::1]"), Ok(ServerName::IpAddress(_))));
        assert!(server_name("bad name").is_err());
    }

    #[test]
    fn keys_and_passwords_are_redacted_in_debug() {
        let id = Identity::Pem {
            certificate: "CERT".into(),
            key: "PRIVATE".into(),
            password: Some("SECRET".into()),
        };
        assert!(!format!("{id:?}").contains("PRIVATE"));
        let files = Identity::Files {
            certificate: "c.pem".into(),
            key: "k.pem".into(),
            password: Some("SECRET".into()),
        };
        let store = Identity::Store {
            path: "k.p12".into(),
            password: Some("SECRET".into()),
            key_password: Some("SECRET".into()),
        };
        for id in [id, files, store] {
            assert!(!format!("{id:?}").contains("SECRET"), "{id:?}");
        }
    }
}

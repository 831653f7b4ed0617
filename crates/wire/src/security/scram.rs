//! SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677), as Kafka speaks them
//! (KIP-84): the client side of the exchange as a pure state machine, with no
//! IO. [`super::sasl`] carries its messages in SaslAuthenticate requests.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256, Sha512};

/// The hash a SCRAM mechanism is built on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScramHash {
    /// SCRAM-SHA-256.
    Sha256,
    /// SCRAM-SHA-512.
    Sha512,
}

impl ScramHash {
    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            ScramHash::Sha256 => {
                // HMAC takes keys of any length: `new_from_slice` cannot fail.
                let Ok(mut m) = Hmac::<Sha256>::new_from_slice(key) else {
                    return Vec::new();
                };
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
            ScramHash::Sha512 => {
                let Ok(mut m) = Hmac::<Sha512>::new_from_slice(key) else {
                    return Vec::new();
                };
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
        }
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            ScramHash::Sha256 => Sha256::digest(data).to_vec(),
            ScramHash::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    /// `Hi()` of RFC 5802: PBKDF2 with this hash's HMAC.
    fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            ScramHash::Sha256 => {
                let mut out = vec![0u8; 32];
                pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
                out
            }
            ScramHash::Sha512 => {
                let mut out = vec![0u8; 64];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out);
                out
            }
        }
    }
}

/// Why a SCRAM exchange failed on the client's side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// The server answered with `e=...`.
    #[error("the server refused: {0}")]
    Server(String),
    /// The server's message is not what RFC 5802 allows at this step.
    #[error("malformed server message: {0}")]
    Malformed(String),
    /// The server's nonce does not extend ours.
    #[error("the server's nonce does not start with the client's")]
    Nonce,
    /// The server could not prove it knows the password.
    #[error("the server's signature does not verify")]
    ServerSignature,
    /// Fewer iterations than RFC 7677 asks of a server (4096).
    #[error("the server asks for {0} iterations, fewer than the 4096 RFC 7677 requires")]
    Iterations(u32),
}

/// The client's side of one SCRAM exchange.
///
/// [`first`](Self::first) → send; [`answer`](Self::answer) with the server's
/// first message → send; [`verify`](Self::verify) the server's final message.
#[derive(Debug, Clone)]
pub struct ScramClient {
    hash: ScramHash,
    password: String,
    nonce: String,
    first_bare: String,
    server_signature: Option<Vec<u8>>,
}

impl ScramClient {
    /// A new exchange for `username`/`password` with the client nonce
    /// `nonce` (printable ASCII without commas; see [`random_nonce`]).
    pub fn new(hash: ScramHash, username: &str, password: &str, nonce: &str) -> Self {
        let first_bare = format!("n={},r={nonce}", escape_name(username));
        Self {
            hash,
            password: password.to_owned(),
            nonce: nonce.to_owned(),
            first_bare,
            server_signature: None,
        }
    }

    /// The client-first message (no channel binding, no authzid).
    pub fn first(&self) -> Vec<u8> {
        format!("n,,{}", self.first_bare).into_bytes()
    }

    /// The client-final message answering the server-first message.
    pub fn answer(&mut self, server_first: &[u8]) -> Result<Vec<u8>, ScramError> {
        let text = std::str::from_utf8(server_first)
            .map_err(|_| ScramError::Malformed("not UTF-8".into()))?;
        if let Some(e) = text.strip_prefix("e=") {
            return Err(ScramError::Server(e.to_owned()));
        }
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for attr in text.split(',') {
            match attr.split_once('=') {
                Some(("r", v)) => nonce = Some(v),
                Some(("s", v)) => salt = Some(v),
                Some(("i", v)) => iterations = Some(v),
                Some(("m", _)) => {
                    return Err(ScramError::Malformed(
                        "mandatory extension the client does not know".into(),
                    ))
                }
                _ => {}
            }
        }
        let (Some(nonce), Some(salt), Some(iterations)) = (nonce, salt, iterations) else {
            return Err(ScramError::Malformed(format!(
                "`{text}` lacks r=, s= or i="
            )));
        };
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(ScramError::Nonce);
        }
        let salt = B64
            .decode(salt)
            .map_err(|e| ScramError::Malformed(format!("salt: {e}")))?;
        let iterations: u32 = iterations
            .parse()
            .map_err(|_| ScramError::Malformed(format!("i={iterations}")))?;
        if iterations < 4096 {
            return Err(ScramError::Iterations(iterations));
        }
        let h = self.hash;
        let salted = h.salted_password(self.password.as_bytes(), &salt, iterations);
        let client_key = h.hmac(&salted, b"Client Key");
        let stored_key = h.hash(&client_key);
        // "biws" is base64("n,,"): no channel binding.
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{text},{without_proof}", self.first_bare);
        let signature = h.hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = h.hmac(&salted, b"Server Key");
        self.server_signature = Some(h.hmac(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks the server-final message: the server proved it knows the
    /// password, or said why it refused.
    pub fn verify(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let text = std::str::from_utf8(server_final)
            .map_err(|_| ScramError::Malformed("not UTF-8".into()))?;
        let mut verifier = None;
        for attr in text.split(',') {
            match attr.split_once('=') {
                Some(("e", v)) => return Err(ScramError::Server(v.to_owned())),
                Some(("v", v)) => verifier = Some(v),
                _ => {}
            }
        }
        let verifier = verifier
            .ok_or_else(|| ScramError::Malformed(format!("`{text}` lacks v=")))
            .and_then(|v| {
                B64.decode(v)
                    .map_err(|e| ScramError::Malformed(format!("v=: {e}")))
            })?;
        match &self.server_signature {
            Some(expected) if *expected == verifier => Ok(()),
            _ => Err(ScramError::ServerSignature),
        }
    }
}

/// `saslname` of RFC 5802: `=` and `,` escaped.
fn escape_name(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

/// A fresh client nonce: 24 random printable characters without a comma.
pub fn random_nonce() -> String {
    use rand::Rng as _;
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut rng = rand::rng();
    (0..24)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example exchange of RFC 7677, section 3.
    #[test]
    fn rfc_7677_sha256_exchange() {
        let mut c = ScramClient::new(ScramHash::Sha256, "user", "pencil", "rOprNGfwEbeRWgbNEkqO");
        assert_eq!(c.first(), b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first =
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let fin = c.answer(server_first).expect("answer");
        assert_eq!(
            String::from_utf8(fin).expect("utf8"),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        c.verify(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .expect("server signature");
        assert_eq!(
            c.verify(b"v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
            Err(ScramError::ServerSignature)
        );
    }

    #[test]
    fn refusals_and_bad_messages_are_errors() {
        let mut c = ScramClient::new(ScramHash::Sha512, "a=b,c", "pw", "abc");
        assert_eq!(c.first(), b"n,,n=a=3Db=2Cc,r=abc");
        assert_eq!(
            c.answer(b"e=unknown-user"),
            Err(ScramError::Server("unknown-user".into()))
        );
        assert_eq!(c.answer(b"r=xyz1,s=AAAA,i=4096"), Err(ScramError::Nonce));
        assert_eq!(c.answer(b"r=abc,s=AAAA,i=4096"), Err(ScramError::Nonce));
        assert_eq!(
            c.answer(b"r=abcdef,s=AAAA,i=100"),
            Err(ScramError::Iterations(100))
        );
        assert!(matches!(
            c.answer(b"r=abcdef,i=4096"),
            Err(ScramError::Malformed(_))
        ));
        assert!(matches!(c.answer(&[0xff]), Err(ScramError::Malformed(_))));
        // Before an answer there is nothing to verify against.
        assert_eq!(c.verify(b"v=AAAA"), Err(ScramError::ServerSignature));
        assert_eq!(
            c.verify(b"e=invalid-proof"),
            Err(ScramError::Server("invalid-proof".into()))
        );
        let fin = c.answer(b"r=abcdef,s=AAAA,i=4096").expect("answer");
        assert!(fin.starts_with(b"c=biws,r=abcdef,p="));
        let proof = &fin[b"c=biws,r=abcdef,p=".len()..];
        assert_eq!(B64.decode(proof).expect("b64").len(), 64, "SHA-512 proof");
    }

    #[test]
    fn nonces_are_fresh_and_comma_free() {
        let a = random_nonce();
        let b = random_nonce();
        assert_ne!(a, b);
        assert_eq!(a.len(), 24);
        assert!(!a.contains(','));
    }
}

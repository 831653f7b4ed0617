//! SASL mechanisms (PLAIN, SCRAM-SHA-256/512, OAUTHBEARER) as pure message
//! exchanges, and the settings that choose them.
//!
//! Kafka carries SASL in two requests (KIP-43, KIP-152): SaslHandshake names
//! the mechanism, then SaslAuthenticate requests carry the mechanism's
//! messages until it is done. [`Exchange`] produces and checks those
//! messages; the connection ([`crate::conn`]) sends them, first when it
//! opens and again before the session the broker granted expires (KIP-368).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;

use super::scram::{random_nonce, ScramClient, ScramError, ScramHash};

/// A SASL mechanism this client speaks (`sasl.mechanism`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// `PLAIN` (RFC 4616): username and password, in the clear (use TLS).
    Plain,
    /// `SCRAM-SHA-256` (KIP-84).
    ScramSha256,
    /// `SCRAM-SHA-512` (KIP-84).
    ScramSha512,
    /// `OAUTHBEARER` (KIP-255) with a token this client is given or makes.
    OAuthBearer,
}

impl Mechanism {
    /// Parses `sasl.mechanism`.
    pub fn parse(name: &str) -> Result<Self, String> {
        match name.trim().to_ascii_uppercase().as_str() {
            "PLAIN" => Ok(Self::Plain),
            "SCRAM-SHA-256" => Ok(Self::ScramSha256),
            "SCRAM-SHA-512" => Ok(Self::ScramSha512),
            "OAUTHBEARER" => Ok(Self::OAuthBearer),
            "GSSAPI" => Err("GSSAPI (Kerberos) is not supported; use PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER".into()),
            other => Err(format!(
                "unknown mechanism `{other}`: use PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER"
            )),
        }
    }

    /// The name as SaslHandshake carries it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
            Self::OAuthBearer => "OAUTHBEARER",
        }
    }
}

/// Where an OAUTHBEARER token comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum Token {
    /// A token given as is (`sasl.oauthbearer.token`); sent unchanged on
    /// every (re-)authentication.
    Static(String),
    /// An unsecured JWT (`alg: none`) made afresh for each authentication,
    /// as the Java client's `unsecuredLoginStringClaim_sub` and librdkafka's
    /// `sasl.oauthbearer.config=principal=...` make it: for brokers running
    /// Kafka's unsecured validator (development and tests only).
    Unsecured {
        /// The `sub` claim: the principal.
        principal: String,
        /// How long the token is valid (`exp - iat`).
        lifetime: Duration,
        /// The `scope` claim, when set.
        scope: Option<String>,
    },
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Token::Static(_) => f.write_str("Static(<redacted>)"),
            Token::Unsecured {
                principal,
                lifetime,
                scope,
            } => f
                .debug_struct("Unsecured")
                .field("principal", principal)
                .field("lifetime", lifetime)
                .field("scope", scope)
                .finish(),
        }
    }
}

impl Token {
    /// The token to send now.
    pub fn value(&self) -> String {
        match self {
            Token::Static(t) => t.clone(),
            Token::Unsecured {
                principal,
                lifetime,
                scope,
            } => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                let mut fields = vec![
                    ("sub", Claim::Str(principal)),
                    ("iat", Claim::Num(now)),
                    ("exp", Claim::Num(now + lifetime.as_secs().max(1))),
                ];
                if let Some(scope) = scope {
                    fields.push(("scope", Claim::Str(scope)));
                }
                let claims = serde_like_object(&fields);
                format!(
                    "{}.{}.",
                    B64URL.encode(br#"{"alg":"none"}"#),
                    B64URL.encode(claims.as_bytes())
                )
            }
        }
    }
}

enum Claim<'a> {
    Str(&'a str),
    Num(u64),
}

fn serde_like_object(fields: &[(&str, Claim<'_>)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| match v {
            Claim::Str(s) => format!("\"{k}\":{}", json_string(s)),
            Claim::Num(n) => format!("\"{k}\":{n}"),
        })
        .collect();
    format!("{{{}}}", body.join(","))
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// What SASL authentication uses: the mechanism and its credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct SaslSettings {
    /// `sasl.mechanism`.
    pub mechanism: Mechanism,
    /// `sasl.username` (PLAIN, SCRAM).
    pub username: String,
    /// `sasl.password` (PLAIN, SCRAM).
    pub password: String,
    /// The OAUTHBEARER token (OAUTHBEARER only).
    pub token: Option<Token>,
}

impl std::fmt::Debug for SaslSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaslSettings")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("token", &self.token)
            .finish()
    }
}

/// Why authentication failed on the client's side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// SCRAM's checks failed.
    #[error(transparent)]
    Scram(#[from] ScramError),
    /// The broker refused an OAUTHBEARER token, saying why (RFC 7628's JSON).
    #[error("the broker refused the token: {0}")]
    Refused(String),
    /// The broker sent more than the mechanism expects.
    #[error("unexpected message from the broker after the exchange ended")]
    Unexpected,
}

/// What to do after the broker's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send these bytes in the next SaslAuthenticate request.
    Send(Vec<u8>),
    /// Authentication is complete.
    Done,
}

/// One authentication exchange, from the client's first message to the
/// broker's last.
#[derive(Debug)]
pub struct Exchange {
    state: State,
}

#[derive(Debug)]
enum State {
    /// PLAIN and OAUTHBEARER: one message, then an empty answer.
    OneShot {
        oauth: bool,
    },
    /// OAUTHBEARER refused: we sent the `%x01` the RFC asks for and wait
    /// for the broker's error.
    OAuthRefused(String),
    ScramFirst(ScramClient),
    ScramFinal(ScramClient),
    Done,
}

impl Exchange {
    /// Starts an exchange; returns it and the client's first message.
    pub fn start(settings: &SaslSettings) -> (Self, Vec<u8>) {
        match settings.mechanism {
            Mechanism::Plain => {
                // RFC 4616: authzid NUL authcid NUL passwd, no authzid.
                let mut msg =
                    Vec::with_capacity(settings.username.len() + settings.password.len() + 2);
                msg.push(0);
                msg.extend_from_slice(settings.username.as_bytes());
                msg.push(0);
                msg.extend_from_slice(settings.password.as_bytes());
                (
                    Self {
                        state: State::OneShot { oauth: false },
                    },
                    msg,
                )
            }
            Mechanism::ScramSha256 | Mechanism::ScramSha512 => {
                let hash = if settings.mechanism == Mechanism::ScramSha256 {
                    ScramHash::Sha256
                } else {
                    ScramHash::Sha512
                };
                let c = ScramClient::new(
                    hash,
                    &settings.username,
                    &settings.password,
                    &random_nonce(),
                );
                let first = c.first();
                (
                    Self {
                        state: State::ScramFirst(c),
                    },
                    first,
                )
            }
            Mechanism::OAuthBearer => {
                let token = settings
                    .token
                    .as_ref()
                    .map(Token::value)
                    .unwrap_or_default();
                // RFC 7628's initial client response: GS2 header, then
                // kvpairs separated by %x01.
                let msg = format!("n,,\x01auth=Bearer {token}\x01\x01").into_bytes();
                (
                    Self {
                        state: State::OneShot { oauth: true },
                    },
                    msg,
                )
            }
        }
    }

    /// Takes the broker's answer (its `auth_bytes`) to the last message.
    pub fn step(&mut self, server: &[u8]) -> Result<Step, SaslError> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::OneShot { oauth } => {
                if oauth && !server.is_empty() {
                    let why = String::from_utf8_lossy(server).into_owned();
                    self.state = State::OAuthRefused(why);
                    return Ok(Step::Send(vec![0x01]));
                }
                Ok(Step::Done)
            }
            State::OAuthRefused(why) => Err(SaslError::Refused(why)),
            State::ScramFirst(mut c) => {
                let fin = c.answer(server)?;
                self.state = State::ScramFinal(c);
                Ok(Step::Send(fin))
            }
            State::ScramFinal(c) => {
                c.verify(server)?;
                Ok(Step::Done)
            }
            State::Done => Err(SaslError::Unexpected),
        }
    }

    /// What the exchange was waiting for when the broker refused it: an
    /// OAUTHBEARER refusal's JSON, for the error message.
    pub fn refusal(&self) -> Option<&str> {
        match &self.state {
            State::OAuthRefused(why) => Some(why),
            _ => None,
        }
    }
}

/// A `sasl.jaas.config` value, as the Java client takes it:
/// `<LoginModule class> <flag> key="value" ...;`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jaas {
    /// The login module's class name.
    pub module: String,
    /// Its options.
    pub options: Vec<(String, String)>,
}

impl Jaas {
    /// Parses one login module entry.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim().trim_end_matches(';').trim();
        let mut chars = text.char_indices().peekable();
        let mut words: Vec<String> = Vec::new();
        let mut options = Vec::new();
        // Tokens: bare words, or key=value / key="quoted value".
        while let Some(&(i, c)) = chars.peek() {
            if c.is_whitespace() {
                chars.next();
                continue;
            }
            let start = i;
            let mut key_end = None;
            while let Some(&(j, c)) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                if c == '=' {
                    key_end = Some(j);
                    chars.next();
                    break;
                }
                chars.next();
            }
            let Some(key_end) = key_end else {
                let end = chars.peek().map_or(text.len(), |&(j, _)| j);
                words.push(text[start..end].to_owned());
                continue;
            };
            let key = text[start..key_end].to_owned();
            let mut value = String::new();
            if chars.peek().is_some_and(|&(_, c)| c == '"') {
                chars.next();
                let mut closed = false;
                while let Some((_, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, n)) = chars.next() {
                                value.push(n);
                            }
                        }
                        '"' => {
                            closed = true;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                if !closed {
                    return Err(format!("unterminated quote in the value of `{key}`"));
                }
            } else {
                while let Some(&(_, c)) = chars.peek() {
                    if c.is_whitespace() {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
            options.push((key, value));
        }
        let mut words = words.into_iter();
        let module = words
            .next()
            .ok_or_else(|| "no login module class".to_owned())?;
        match words.next().as_deref() {
            Some("required" | "requisite" | "sufficient" | "optional") => {}
            Some(other) => return Err(format!("`{other}` is not a JAAS control flag")),
            None => return Err(format!("{module}: the control flag (required) is missing")),
        }
        if let Some(extra) = words.next() {
            return Err(format!("unexpected `{extra}`: is a `;` missing?"));
        }
        Ok(Self { module, options })
    }

    /// The value of option `key`.
    pub fn option(&self, key: &str) -> Option<&str> {
        self.options
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The login module's short name (`PlainLoginModule`, ...).
    pub fn short_module(&self) -> &str {
        self.module.rsplit('.').next().unwrap_or(&self.module)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(mechanism: Mechanism) -> SaslSettings {
        SaslSettings {
            mechanism,
            username: "alice".into(),
            password: "secret".into(),
            token: Some(Token::Unsecured {
                principal: "alice".into(),
                lifetime: Duration::from_secs(60),
                scope: Some("read".into()),
            }),
        }
    }

    #[test]
    fn plain_is_one_message() {
        let (mut x, first) = Exchange::start(&settings(Mechanism::Plain));
        assert_eq!(first, b"\0alice\0secret");
        assert_eq!(x.step(b""), Ok(Step::Done));
        assert_eq!(x.step(b""), Err(SaslError::Unexpected));
    }

    #[test]
    fn scram_takes_two_round_trips() {
        let (mut x, first) = Exchange::start(&settings(Mechanism::ScramSha256));
        let first = String::from_utf8(first).expect("utf8");
        let nonce = first.strip_prefix("n,,n=alice,r=").expect("client-first");
        let server_first = format!("r={nonce}srv,s=c2FsdA==,i=4096");
        let Ok(Step::Send(fin)) = x.step(server_first.as_bytes()) else {
            panic!("expected client-final");
        };
        assert!(fin.starts_with(format!("c=biws,r={nonce}srv,p=").as_bytes()));
        // A forged server signature is refused.
        assert_eq!(
            x.step(b"v=AAAA"),
            Err(SaslError::Scram(ScramError::ServerSignature))
        );
    }

    #[test]
    fn oauthbearer_sends_an_unsecured_jwt_and_reports_a_refusal() {
        let (mut x, first) = Exchange::start(&settings(Mechanism::OAuthBearer));
        let first = String::from_utf8(first).expect("utf8");
        let token = first
            .strip_prefix("n,,\x01auth=Bearer ")
            .and_then(|t| t.strip_suffix("\x01\x01"))
            .expect("gs2 framing");
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[2], "", "unsigned");
        let claims = String::from_utf8(B64URL.decode(parts[1]).expect("b64")).expect("utf8");
        assert!(
            claims.starts_with("{\"sub\":\"alice\",\"iat\":"),
            "{claims}"
        );
        assert!(claims.ends_with(",\"scope\":\"read\"}"), "{claims}");
        let refusal = br#"{"status":"invalid_token"}"#;
        assert_eq!(x.step(refusal), Ok(Step::Send(vec![1])));
        assert_eq!(x.refusal(), Some(r#"{"status":"invalid_token"}"#));
        assert!(matches!(x.step(b""), Err(SaslError::Refused(_))));
        let (mut ok, _) = Exchange::start(&settings(Mechanism::OAuthBearer));
        assert_eq!(ok.step(b""), Ok(Step::Done));
    }

    #[test]
    fn mechanisms_by_name() {
        assert_eq!(
            Mechanism::parse("scram-sha-512"),
            Ok(Mechanism::ScramSha512)
        );
        assert!(Mechanism::parse("GSSAPI")
            .expect_err("unsupported")
            .contains("GSSAPI"));
        assert!(Mechanism::parse("MD5").is_err());
        for m in [
            Mechanism::Plain,
            Mechanism::ScramSha256,
            Mechanism::ScramSha512,
            Mechanism::OAuthBearer,
        ] {
            assert_eq!(Mechanism::parse(m.name()), Ok(m));
        }
    }

    #[test]
    fn jaas_entries_as_the_java_client_writes_them() {
        let j = Jaas::parse(
            r#"org.apache.kafka.common.security.scram.ScramLoginModule required username="al ice" password="p\"w=1";"#,
        )
        .expect("jaas");
        assert_eq!(j.short_module(), "ScramLoginModule");
        assert_eq!(j.option("username"), Some("al ice"));
        assert_eq!(j.option("password"), Some("p\"w=1"));
        let j = Jaas::parse(
            "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required unsecuredLoginStringClaim_sub=admin",
        )
        .expect("jaas");
        assert_eq!(j.option("unsecuredLoginStringClaim_sub"), Some("admin"));
        assert!(Jaas::parse("PlainLoginModule").is_err());
        assert!(Jaas::parse("PlainLoginModule maybe username=a").is_err());
        assert!(Jaas::parse(r#"PlainLoginModule required username="a"#).is_err());
        assert!(Jaas::parse("").is_err());
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let mut s = settings(Mechanism::OAuthBearer);
        s.token = Some(Token::Static("tok-123".into()));
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("secret") && !shown.contains("tok-123"),
            "{shown}"
        );
    }
}

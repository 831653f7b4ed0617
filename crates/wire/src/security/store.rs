//! Key and trust stores as Java and librdkafka users keep them: JKS and
//! PKCS#12 files (`ssl.keystore.location`, `ssl.truststore.location`) and
//! password-protected PKCS#8 PEM keys (`ssl.key.location` with
//! `ssl.key.password`). Pure: bytes and passwords in, DER certificates and
//! keys out, so that every format is tested without a file or a broker.
//!
//! The format is told from the bytes, not from `ssl.keystore.type`: the
//! JDK does the same since Java 9 (`keystore.type.compat`), so a store
//! whose declared type is stale still loads.

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha1::{Digest, Sha1};

/// What a store holds, as rustls takes it.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The client certificate chain of the store's private key entry (the
    /// entity certificate first); empty when it has none.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key (PKCS#8) belonging to `chain`.
    pub key: Option<PrivateKeyDer<'static>>,
    /// The certificates it trusts: every trusted-certificate entry, and the
    /// entity certificate of every key entry (as Java's trust manager takes
    /// them).
    pub trusted: Vec<CertificateDer<'static>>,
}

/// A store's file format, told from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Java's proprietary key store (magic `FEEDFEED`).
    Jks,
    /// PKCS#12 (RFC 7292; a DER SEQUENCE).
    Pkcs12,
    /// PEM text.
    Pem,
}

/// The format of a store whose contents are `bytes`.
pub fn detect(bytes: &[u8]) -> Result<Format, String> {
    match bytes {
        [0xFE, 0xED, 0xFE, 0xED, ..] => Ok(Format::Jks),
        [0xCE, 0xCE, 0xCE, 0xCE, ..] => Err(
            "a JCEKS store; convert it with `keytool -importkeystore -deststoretype PKCS12`".into(),
        ),
        [0x30, ..] => Ok(Format::Pkcs12),
        _ if bytes.windows(11).any(|w| w == b"-----BEGIN ") => Ok(Format::Pem),
        _ => Err("neither a JKS, a PKCS#12 nor a PEM file".into()),
    }
}

/// Reads a JKS or PKCS#12 store. `password` is the store's
/// (`ssl.keystore.password`, `ssl.truststore.password`); `key_password`
/// its key's, when it differs (`ssl.key.password`, JKS only: a PKCS#12
/// store has one password). Without a password a JKS trust store is read
/// without checking its integrity, as Java does; a PKCS#12 store cannot be
/// read without one.
pub fn read(
    bytes: &[u8],
    password: Option<&str>,
    key_password: Option<&str>,
) -> Result<Loaded, String> {
    match detect(bytes)? {
        Format::Jks => read_jks(bytes, password, key_password.or(password)),
        Format::Pkcs12 => read_pkcs12(bytes, password.unwrap_or("")),
        Format::Pem => Err("a PEM file, not a key store (set its type to PEM)".into()),
    }
}

/// The JKS integrity check's whitening text (from the JDK's
/// `JavaKeyStore`).
const JKS_WHITENER: &[u8] = b"Mighty Aphrodite";
/// The JDK `KeyProtector`'s algorithm (a proprietary SHA-1 keystream).
const JKS_KEY_PROTECTOR_OID: &[u8] = &[0x2B, 0x06, 0x01, 0x04, 0x01, 0x2A, 0x02, 0x11, 0x01, 0x01];
const SHA1_LEN: usize = 20;

/// A password as the JDK hashes it: each UTF-16 unit, high byte first.
fn utf16_be(password: &str) -> Vec<u8> {
    password.encode_utf16().flat_map(u16::to_be_bytes).collect()
}

/// A bounds-checked reader over a JKS file.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| {
                format!(
                    "cut short: {what} needs {n} bytes at byte {}, {} left",
                    self.pos,
                    self.bytes.len().saturating_sub(self.pos)
                )
            })?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u16(&mut self, what: &str) -> Result<u16, String> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A length-prefixed (u32) block.
    fn block(&mut self, what: &str) -> Result<&'a [u8], String> {
        let n = self.u32(what)? as usize;
        self.take(n, what)
    }

    /// A `DataOutput.writeUTF` string (u16 length, modified UTF-8).
    fn utf(&mut self, what: &str) -> Result<String, String> {
        let n = self.u16(what)? as usize;
        Ok(String::from_utf8_lossy(self.take(n, what)?).into_owned())
    }
}

/// Reads a JKS store (the JDK's `JavaKeyStore` format, versions 1 and 2).
fn read_jks(
    bytes: &[u8],
    password: Option<&str>,
    key_password: Option<&str>,
) -> Result<Loaded, String> {
    let body_len = bytes
        .len()
        .checked_sub(SHA1_LEN)
        .ok_or("cut short: no integrity digest")?;
    if let Some(password) = password {
        let mut digest = Sha1::new();
        digest.update(utf16_be(password));
        digest.update(JKS_WHITENER);
        digest.update(&bytes[..body_len]);
        if digest.finalize().as_slice() != &bytes[body_len..] {
            return Err(
                "wrong password, or the store is damaged (its integrity check failed)".into(),
            );
        }
    }
    let mut r = Reader {
        bytes: &bytes[..body_len],
        pos: 0,
    };
    r.take(4, "the magic number")?;
    let version = r.u32("the version")?;
    if version != 1 && version != 2 {
        return Err(format!("JKS version {version}: expected 1 or 2"));
    }
    let count = r.u32("the entry count")?;
    let mut loaded = Loaded::default();
    let cert = |r: &mut Reader<'_>| -> Result<CertificateDer<'static>, String> {
        if version == 2 {
            let kind = r.utf("a certificate type")?;
            if kind != "X.509" {
                return Err(format!("a {kind} certificate: only X.509 is read"));
            }
        }
        Ok(CertificateDer::from(r.block("a certificate")?.to_vec()))
    };
    for _ in 0..count {
        let tag = r.u32("an entry tag")?;
        let alias = r.utf("an alias")?;
        r.take(8, "a creation date")?;
        match tag {
            1 => {
                let protected = r.block("a protected key")?;
                let chain_len = r.u32("a chain length")?;
                let mut chain = Vec::new();
                for _ in 0..chain_len {
                    chain.push(cert(&mut r)?);
                }
                if let Some(first) = chain.first() {
                    loaded.trusted.push(first.clone());
                }
                if loaded.key.is_none() {
                    let password = key_password
                        .ok_or_else(|| format!("entry {alias:?}: its key needs a password"))?;
                    let key = recover_jks_key(protected, password)
                        .map_err(|e| format!("entry {alias:?}: {e}"))?;
                    loaded.key = Some(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)));
                    loaded.chain = chain;
                }
            }
            2 => loaded.trusted.push(cert(&mut r)?),
            other => return Err(format!("entry {alias:?}: unknown entry type {other}")),
        }
    }
    if r.pos != r.bytes.len() {
        return Err(format!(
            "{} bytes after the last entry",
            r.bytes.len() - r.pos
        ));
    }
    Ok(loaded)
}

/// One DER element's contents: `bytes` must start with `tag`.
fn der<'a>(bytes: &mut &'a [u8], tag: u8) -> Result<&'a [u8], String> {
    let (&t, rest) = bytes.split_first().ok_or("DER cut short")?;
    if t != tag {
        return Err(format!("DER tag {t:#04x}, expected {tag:#04x}"));
    }
    let (&first, mut rest) = rest.split_first().ok_or("DER cut short")?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 || rest.len() < n {
            return Err("bad DER length".into());
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |l, &b| l << 8 | usize::from(b));
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return Err("DER cut short".into());
    }
    let (contents, after) = rest.split_at(len);
    *bytes = after;
    Ok(contents)
}

/// Undoes the JDK `KeyProtector`: the DER `EncryptedPrivateKeyInfo` holds
/// a 20-byte salt, the key XORed with a SHA-1 keystream
/// (`d[0] = salt`, `d[i] = SHA-1(password || d[i-1])`), and
/// `SHA-1(password || key)` to check the password by.
fn recover_jks_key(protected: &[u8], password: &str) -> Result<Vec<u8>, String> {
    let mut outer = protected;
    let mut info = der(&mut outer, 0x30)?;
    let mut algorithm = der(&mut info, 0x30)?;
    let oid = der(&mut algorithm, 0x06)?;
    if oid != JKS_KEY_PROTECTOR_OID {
        return Err("its key is not protected by the JDK's KeyProtector".into());
    }
    let data = der(&mut info, 0x04)?;
    if data.len() < 2 * SHA1_LEN {
        return Err("its protected key is cut short".into());
    }
    let (salt, rest) = data.split_at(SHA1_LEN);
    let (encrypted, check) = rest.split_at(rest.len() - SHA1_LEN);
    let password = utf16_be(password);
    let key = key_protector_xor(&password, salt, encrypted);
    if key_protector_check(&password, &key).as_slice() != check {
        return Err("wrong key password (ssl.key.password, else the store's password)".into());
    }
    Ok(key)
}

/// The KeyProtector's keystream over `data` (its own inverse): each
/// 20-byte chunk XORed with `d[i] = SHA-1(password || d[i-1])`,
/// `d[0] = salt`. `password` is in [`utf16_be`] form.
fn key_protector_xor(password: &[u8], salt: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut stream = salt.to_vec();
    for chunk in data.chunks(SHA1_LEN) {
        let mut h = Sha1::new();
        h.update(password);
        h.update(&stream);
        stream = h.finalize().to_vec();
        out.extend(chunk.iter().zip(&stream).map(|(a, b)| a ^ b));
    }
    out
}

/// The KeyProtector's check value: `SHA-1(password || key)`.
fn key_protector_check(password: &[u8], key: &[u8]) -> Vec<u8> {
    let mut h = Sha1::new();
    h.update(password);
    h.update(key);
    h.finalize().to_vec()
}

/// Reads a PKCS#12 store (Java's default since Java 9; what
/// `openssl pkcs12 -export` writes).
fn read_pkcs12(bytes: &[u8], password: &str) -> Result<Loaded, String> {
    use p12_keystore::{KeyStore, KeyStoreEntry, Pkcs12ImportPolicy};
    let store = KeyStore::from_pkcs12(bytes, password, Pkcs12ImportPolicy::Relaxed).map_err(
        |e| match e {
            p12_keystore::error::Error::MacError(_) => {
                "wrong password, or the store is damaged (its integrity check failed)".to_owned()
            }
            other => format!("not a readable PKCS#12 store: {other}"),
        },
    )?;
    let mut loaded = Loaded::default();
    for (_, entry) in store.entries() {
        match entry {
            KeyStoreEntry::Certificate(c) => {
                loaded
                    .trusted
                    .push(CertificateDer::from(c.as_der().to_vec()));
            }
            KeyStoreEntry::PrivateKeyChain(chain) => {
                let certs: Vec<CertificateDer<'static>> = chain
                    .certs()
                    .iter()
                    .map(|c| CertificateDer::from(c.as_der().to_vec()))
                    .collect();
                if let Some(first) = certs.first() {
                    loaded.trusted.push(first.clone());
                }
                if loaded.key.is_none() {
                    loaded.key = Some(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                        chain.key().as_der().to_vec(),
                    )));
                    loaded.chain = certs;
                }
            }
            KeyStoreEntry::Secret(_) => {}
        }
    }
    Ok(loaded)
}

const ENCRYPTED_BEGIN: &str = "-----BEGIN ENCRYPTED PRIVATE KEY-----";
const ENCRYPTED_END: &str = "-----END ENCRYPTED PRIVATE KEY-----";

/// Whether PEM `text` holds a password-protected PKCS#8 key.
pub fn is_encrypted_pem(text: &[u8]) -> bool {
    text.windows(ENCRYPTED_BEGIN.len())
        .any(|w| w == ENCRYPTED_BEGIN.as_bytes())
}

/// Decrypts the `ENCRYPTED PRIVATE KEY` (PKCS#8, PBES2 or PBES1 with
/// 3DES) in PEM `text` with `password`, as `openssl pkcs8 -topk8` and
/// `openssl genpkey -aes256` write it.
pub fn decrypt_pem_key(text: &[u8], password: &str) -> Result<PrivateKeyDer<'static>, String> {
    let text = std::str::from_utf8(text).map_err(|_| "not PEM text")?;
    let start = text.find(ENCRYPTED_BEGIN).ok_or_else(|| {
        if text.contains("Proc-Type: 4,ENCRYPTED") {
            "a key in OpenSSL's legacy encrypted form; convert it with `openssl pkcs8 -topk8`"
                .to_owned()
        } else {
            "no ENCRYPTED PRIVATE KEY in it".to_owned()
        }
    })?;
    let end = text[start..]
        .find(ENCRYPTED_END)
        .map(|e| start + e + ENCRYPTED_END.len())
        .ok_or("its ENCRYPTED PRIVATE KEY has no END line")?;
    let (_, der) = pkcs8::der::pem::decode_vec(&text.as_bytes()[start..end])
        .map_err(|e| format!("its ENCRYPTED PRIVATE KEY is not valid PEM: {e}"))?;
    let info = pkcs8::EncryptedPrivateKeyInfoRef::try_from(der.as_slice())
        .map_err(|e| format!("its ENCRYPTED PRIVATE KEY is not PKCS#8: {e}"))?;
    let key = info
        .decrypt(password)
        .map_err(|_| "wrong password (ssl.key.password), or an unsupported cipher".to_owned())?;
    Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        key.as_bytes().to_vec(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Writes a JKS store the way the JDK does (test vectors for the
    /// reader): `keys` are (alias, PKCS#8 key, chain), `certs` (alias,
    /// certificate).
    /// A key entry to write: alias, PKCS#8 key, certificate chain.
    type KeyEntry<'a> = (&'a str, &'a [u8], &'a [&'a [u8]]);

    fn write_jks(
        version: u32,
        password: &str,
        key_password: &str,
        keys: &[KeyEntry<'_>],
        certs: &[(&str, &[u8])],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(0xFEEDFEEDu32.to_be_bytes());
        out.extend(version.to_be_bytes());
        out.extend(((keys.len() + certs.len()) as u32).to_be_bytes());
        let utf = |out: &mut Vec<u8>, s: &str| {
            out.extend((s.len() as u16).to_be_bytes());
            out.extend(s.as_bytes());
        };
        let cert = |out: &mut Vec<u8>, c: &[u8]| {
            if version == 2 {
                utf(out, "X.509");
            }
            out.extend((c.len() as u32).to_be_bytes());
            out.extend(c);
        };
        for (alias, key, chain) in keys {
            out.extend(1u32.to_be_bytes());
            utf(&mut out, alias);
            out.extend(1_700_000_000_000u64.to_be_bytes());
            let protected = protect(key, key_password);
            out.extend((protected.len() as u32).to_be_bytes());
            out.extend(&protected);
            out.extend((chain.len() as u32).to_be_bytes());
            for c in *chain {
                cert(&mut out, c);
            }
        }
        for (alias, c) in certs {
            out.extend(2u32.to_be_bytes());
            utf(&mut out, alias);
            out.extend(1_700_000_000_000u64.to_be_bytes());
            cert(&mut out, c);
        }
        let mut h = Sha1::new();
        h.update(utf16_be(password));
        h.update(JKS_WHITENER);
        h.update(&out);
        out.extend(h.finalize());
        out
    }

    /// The JDK KeyProtector's protection of `key`, DER-wrapped.
    fn protect(key: &[u8], password: &str) -> Vec<u8> {
        let pw = utf16_be(password);
        let salt = [7u8; SHA1_LEN];
        let mut data = salt.to_vec();
        data.extend(key_protector_xor(&pw, &salt, key));
        data.extend(key_protector_check(&pw, key));
        let tlv = |tag: u8, body: &[u8]| {
            let mut v = vec![tag];
            if body.len() < 0x80 {
                v.push(body.len() as u8);
            } else {
                v.extend([0x82, (body.len() >> 8) as u8, body.len() as u8]);
            }
            v.extend(body);
            v
        };
        let mut alg = tlv(0x06, JKS_KEY_PROTECTOR_OID);
        alg.extend([0x05, 0x00]);
        let mut info = tlv(0x30, &alg);
        info.extend(tlv(0x04, &data));
        tlv(0x30, &info)
    }

    #[test]
    fn formats_are_told_from_the_bytes() {
        assert_eq!(detect(&[0xFE, 0xED, 0xFE, 0xED, 0]), Ok(Format::Jks));
        assert_eq!(detect(&[0x30, 0x82]), Ok(Format::Pkcs12));
        assert_eq!(
            detect(b"junk\n-----BEGIN CERTIFICATE-----"),
            Ok(Format::Pem)
        );
        assert!(detect(&[0xCE; 8]).expect_err("an error").contains("JCEKS"));
        assert!(detect(b"hello").is_err());
    }

    #[test]
    fn a_jks_key_store_gives_its_key_chain_and_trusted_certificates() {
        let key: Vec<u8> = (0..=200u8).collect(); // not a multiple of 20
        for version in [1, 2] {
            let store = write_jks(
                version,
                "store-pw",
                "key-pw",
                &[("client", &key, &[b"leaf", b"ca"])],
                &[("root", b"root-cert")],
            );
            let loaded = read(&store, Some("store-pw"), Some("key-pw")).expect("reads");
            let Some(PrivateKeyDer::Pkcs8(k)) = &loaded.key else {
                panic!("a PKCS#8 key");
            };
            assert_eq!(k.secret_pkcs8_der(), &key[..]);
            let ders = |v: &[CertificateDer<'_>]| v.iter().map(|c| c.to_vec()).collect::<Vec<_>>();
            assert_eq!(ders(&loaded.chain), vec![b"leaf".to_vec(), b"ca".to_vec()]);
            assert_eq!(
                ders(&loaded.trusted),
                vec![b"leaf".to_vec(), b"root-cert".to_vec()]
            );
        }
    }

    #[test]
    fn jks_passwords_are_checked() {
        let key = [1u8; 40];
        let store = write_jks(2, "store-pw", "store-pw", &[("k", &key, &[b"c"])], &[]);
        // The key's password defaults to the store's.
        assert!(read(&store, Some("store-pw"), None).is_ok());
        let wrong = read(&store, Some("nope"), None).expect_err("an error");
        assert!(wrong.contains("wrong password"), "{wrong}");
        let wrong_key = read(&store, Some("store-pw"), Some("nope")).expect_err("an error");
        assert!(wrong_key.contains("wrong key password"), "{wrong_key}");
        // A trust store without a password: read, not checked.
        let trust = write_jks(2, "changeit", "x", &[], &[("ca", b"ca-cert")]);
        assert_eq!(read(&trust, None, None).expect("reads").trusted.len(), 1);
        // Damage is caught by the integrity check.
        let mut damaged = trust.clone();
        damaged[30] ^= 1;
        assert!(read(&damaged, Some("changeit"), None).is_err());
    }

    #[test]
    fn a_cut_jks_store_is_an_error_naming_what_is_missing() {
        let store = write_jks(
            2,
            "pw",
            "pw",
            &[("k", &[9u8; 30], &[b"c"])],
            &[("r", b"rr")],
        );
        for cut in [4, 12, 20, 40, store.len() - 21] {
            let mut short = store[..cut].to_vec();
            // Re-seal it so that the integrity check passes.
            let mut h = Sha1::new();
            h.update(utf16_be("pw"));
            h.update(JKS_WHITENER);
            h.update(&short);
            short.extend(h.finalize());
            let e = read(&short, Some("pw"), None).expect_err("an error");
            assert!(
                e.contains("cut short") || e.contains("version"),
                "{cut}: {e}"
            );
        }
    }

    #[test]
    fn an_encrypted_pem_key_is_decrypted_with_its_password() {
        use pkcs8::der::Encode;
        // An Ed25519 PKCS#8 key: the format is all that matters here.
        let seed = [5u8; 32];
        let mut inner = vec![0x04, 32];
        inner.extend(seed);
        let info = pkcs8::PrivateKeyInfoRef::new(
            pkcs8::AlgorithmIdentifierRef {
                oid: pkcs8::ObjectIdentifier::new_unwrap("1.3.101.112"),
                parameters: None,
            },
            pkcs8::der::asn1::OctetStringRef::new(&inner).expect("octets"),
        );
        let plain = info.to_der().expect("der");
        let params = pkcs8::pkcs5::pbes2::Parameters::generate_pbkdf2_sha256_aes256cbc(
            2048, &[3; 16], [4; 16],
        )
        .expect("parameters");
        let encrypted = info
            .encrypt_with_params(params, "secret")
            .expect("encrypts");
        let pem = pkcs8::der::pem::encode_string(
            "ENCRYPTED PRIVATE KEY",
            pkcs8::LineEnding::LF,
            encrypted.as_bytes(),
        )
        .expect("pem");
        assert!(is_encrypted_pem(pem.as_bytes()));
        let Ok(PrivateKeyDer::Pkcs8(k)) = decrypt_pem_key(pem.as_bytes(), "secret") else {
            panic!("decrypts");
        };
        assert_eq!(k.secret_pkcs8_der(), &plain[..]);
        let wrong = decrypt_pem_key(pem.as_bytes(), "other").expect_err("an error");
        assert!(wrong.contains("wrong password"), "{wrong}");
        let legacy = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n";
        assert!(decrypt_pem_key(legacy.as_bytes(), "x")
            .expect_err("an error")
            .contains("pkcs8 -topk8"));
    }

    /// The `key_store` fuzz target's seeds (`fuzz/regressions/key_store`)
    /// are real stores, made by OpenSSL 3 (`pkcs12 -export`, `pkcs8
    /// -topk8`) and the JDK 17 keytool (JKS), password `fuzzpw`: each reads
    /// as what it holds, and every other file there (inputs the fuzzer
    /// found) reads without a panic.
    #[test]
    fn stores_made_by_openssl_and_keytool_are_read() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/regressions/key_store");
        let file = |name: &str| std::fs::read(dir.join(name)).expect("seed");
        let pw = Some("fuzzpw");
        for name in ["pkcs12-key-store", "jks-key-store"] {
            let loaded = read(&file(name), pw, None).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(
                matches!(loaded.key, Some(PrivateKeyDer::Pkcs8(_))),
                "{name}"
            );
            assert_eq!(loaded.chain.len(), 1, "{name}");
            assert_eq!(loaded.trusted, loaded.chain, "{name}");
        }
        let trust = read(&file("jks-trust-store"), pw, None).expect("trust store");
        assert!(trust.key.is_none());
        assert_eq!(trust.trusted.len(), 1);
        assert!(decrypt_pem_key(&file("encrypted-pkcs8-pem"), "fuzzpw").is_ok());
        for entry in std::fs::read_dir(&dir).expect("corpus") {
            let bytes = std::fs::read(entry.expect("entry").path()).expect("input");
            let _ = read(&bytes, None, pw);
            let _ = read(&bytes, pw, None);
            let _ = decrypt_pem_key(&bytes, "fuzzpw");
        }
    }

    proptest! {
        /// Any bytes: an error or a store, never a panic.
        #[test]
        fn any_bytes_are_read_without_panicking(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            jks in any::<bool>(),
        ) {
            let mut bytes = bytes;
            if jks && bytes.len() >= 4 {
                bytes[..4].copy_from_slice(&[0xFE, 0xED, 0xFE, 0xED]);
            }
            let _ = read(&bytes, None, Some("pw"));
            let _ = read(&bytes, Some("pw"), None);
            let _ = decrypt_pem_key(&bytes, "pw");
        }

        /// A JKS store with one byte changed: an error or a store, never a
        /// panic (read without its password, so the damage gets past the
        /// integrity check into the parser).
        #[test]
        fn damaged_jks_stores_are_read_without_panicking(at in 0usize..200, xor in 1u8..) {
            let store = write_jks(2, "pw", "pw", &[("k", &[3u8; 50], &[b"c1", b"c2"])], &[("r", b"rr")]);
            let mut damaged = store.clone();
            let at = at % damaged.len();
            damaged[at] ^= xor;
            let _ = read(&damaged, None, Some("pw"));
        }
    }
}

//! Any bytes as a key or trust store file (JKS, PKCS#12) or a
//! password-protected PEM key: a typed error or what the store holds,
//! never a panic or an unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use faustus_wire::security::store;

fuzz_target!(|data: &[u8]| {
    // With no password a JKS store's integrity check is skipped, so the
    // parser itself sees the bytes.
    let _ = store::read(data, None, Some("fuzzpw"));
    let _ = store::read(data, Some("fuzzpw"), None);
    let _ = store::decrypt_pem_key(data, "fuzzpw");
});

//! Any bytes as a response body of the API and version its first three
//! bytes pick, decoded as a connection decodes every response but Fetch
//! (which has its own target): counts kept within the bytes
//! (`protocol::bounded`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    faustus_wire::protocol::bounded::fuzz_response_body(data);
});

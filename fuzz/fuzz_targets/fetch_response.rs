//! Any bytes as a Fetch response (the first byte picks the version): every
//! partition's records are split for delivery as the consumer does, under
//! both isolation levels, down to each record's headers. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    faustus_wire::consumer::fuzz_fetch_response(data);
});

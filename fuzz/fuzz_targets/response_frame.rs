//! Any bytes as a connection's read buffer: frames are split off and their
//! response headers read, for both header versions.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    faustus_wire::protocol::fuzz_frames(data);
});

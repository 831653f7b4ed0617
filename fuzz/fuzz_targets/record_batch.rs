//! Any bytes as a fetched records buffer: batches, records and headers are
//! walked to the end; nothing may panic or allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    faustus_wire::record::fuzz_batches(bytes::Bytes::copy_from_slice(data));
});

//! Any bytes as another group member's subscription or assignment: a typed
//! error or a value, never a panic or an unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = faustus_wire::group::Subscription::decode(data);
    let _ = faustus_wire::group::Assignment::decode(data);
});

#![no_main]
//! See `warren_fuzz::targets::link_handshake`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = warren_fuzz::targets::link_handshake(data);
});

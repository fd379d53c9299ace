#![no_main]
//! See `warren_fuzz::targets::ca_armor`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = warren_fuzz::targets::ca_armor(data);
});

#![no_main]
//! See `warren_fuzz::targets::artifacts_unpack`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = warren_fuzz::targets::artifacts_unpack(data);
});

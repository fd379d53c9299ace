#![no_main]
//! See `warren_fuzz::targets::component_signature`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = warren_fuzz::targets::component_signature(data);
});

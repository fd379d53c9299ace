#![no_main]
//! See `warren_fuzz::targets::control_request`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = warren_fuzz::targets::control_request(data);
});

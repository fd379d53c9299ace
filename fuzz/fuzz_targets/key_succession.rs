#![no_main]
//! See `warren_fuzz::targets::key_succession`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = warren_fuzz::targets::key_succession(data);
});

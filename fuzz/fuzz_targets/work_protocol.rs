#![no_main]
//! See `warren_fuzz::targets::work_protocol`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = warren_fuzz::targets::work_protocol(data);
});

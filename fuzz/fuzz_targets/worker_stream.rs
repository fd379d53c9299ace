#![no_main]
//! See `warren_fuzz::targets::worker_stream`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = warren_fuzz::targets::worker_stream(data);
});

#![no_main]
//! See `warren_fuzz::targets::terminal_filter`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = warren_fuzz::targets::terminal_filter(data);
});

#![no_main]
//! See `warren_fuzz::targets::config_toml`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = warren_fuzz::targets::config_toml(data);
});

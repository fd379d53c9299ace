#![no_main]
//! See `warren_fuzz::targets::lsdb_advert`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = warren_fuzz::targets::lsdb_advert(data);
});

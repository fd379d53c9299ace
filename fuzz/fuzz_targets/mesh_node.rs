#![no_main]
//! See `warren_fuzz::targets::mesh_node`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = warren_fuzz::targets::mesh_node(data);
});

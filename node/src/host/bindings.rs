//! The one `bindgen!` over `../wit`: Rust types and traits for the `work-handler` world.
//!
//! WASI types (streams, pollables) are wasmtime-wasi's own, so the job's streams and the
//! child's pipes are ordinary WASI resources. Host calls are async and may trap (a trap is
//! a host fault; expected refusals are WIT error values). The WIT's `///` docs become the
//! generated items' docs.
#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "warren:worker/work-handler",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "wasi": wasmtime_wasi::p2::bindings,
        "warren:worker/process.child": crate::host::process::Child,
    },
});

//! The bodies of Warren's fuzz targets, and what they share.
//!
//! Each `fuzz_targets/<name>.rs` is one line calling [`targets`]`::<name>` with libFuzzer's
//! input. The bodies live here so that they are type-checked with the rest of this crate
//! on stable (`scripts/test.sh`), and so that `examples/seeds.rs` can check that every
//! checked-in seed still reaches what its target is meant to reach.
//!
//! - [`ops`]: the little record format that structured targets read their steps from.
//! - [`mesh`] and [`session`]: a hostile peer with real keys that drives a `MeshNode` or a `Link` through
//!   their sans-IO APIs (handshakes done for real, then whatever the input says).
//! - [`scratch`]: a fresh directory per input for the targets that write files, and the
//!   check that nothing was written outside it.
//! - [`targets`]: one function per fuzz target.
//! - [`seeds`]: the seed inputs, built from real frames, hellos, adverts and streams.

pub mod mesh;
pub mod ops;
pub mod scratch;
pub mod seeds;
pub mod session;
pub mod targets;

/// A current-thread tokio runtime, built once per process, for the async readers (the
/// work protocol, the worker stream). Blocking tasks go to its blocking pool.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime builds")
    })
}

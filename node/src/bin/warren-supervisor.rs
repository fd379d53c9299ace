//! `warren-supervisor`: the per-job supervisor on its own, a small binary that starts in a
//! fraction of the time the whole `warren` binary takes (see `host::contain::supervisor`).
//! The node runs it as `warren-supervisor __warren-supervise` from the directory of its own
//! binary, and falls back to `warren __warren-supervise` where it is missing.
//!
//! Its entry point is C's `main`, not Rust's: every job waits for this binary to start,
//! and the Rust runtime's set-up before `main` (a stack-overflow handler, which reads
//! `/proc/self/maps` to find the main thread's stack, and a poll of descriptors 0 to 2)
//! was about a tenth of its start. The supervisor needs none of it: it ignores `SIGPIPE`
//! itself, and its descriptors are set up by the node.

#![no_main]

/// The process's entry point, called by the C library's start-up code.
#[unsafe(no_mangle)]
extern "C" fn main(
    _argc: std::ffi::c_int,
    _argv: *const *const std::ffi::c_char,
) -> std::ffi::c_int {
    warren::host::contain::supervisor::main_if_requested();
    eprintln!("warren-supervisor is started by a Warren node for each job; it takes no commands");
    2
}

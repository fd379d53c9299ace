//! The job host: what runs work-handler WebAssembly components on this node.
//!
//! - [`signing`]: signed component manifests, signer keys, and verification before a
//!   component may run.

pub mod signing;

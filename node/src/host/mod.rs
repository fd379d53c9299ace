//! The wasm host: runs work handler components under the node's policy.
//!
//! - [`builtin`]: the work handler components built into the node.

pub mod builtin;

//! `warren._native`: the Rust half of Warren's Python package. It embeds Warren's client
//! node (the library's [`warren::client::ClientNode`]) in the Python process and moves a
//! job's bytes across the mesh; the Python half (`warren/`) makes and reads those bytes with
//! ansible-runner's own streaming pieces.
//!
//! - `process`: the tokio runtime and the shared client nodes, one set per process (a
//!   forked child starts its own).
//! - `shared`: one embedded node per (peer, identity, node id), shared by every job that
//!   names them, closed when idle.
//! - `link`: `link::Link`, the link and the route checked before a unit is made (what
//!   `run_async` waits for).
//! - `job`: `job::Job`, one submitted unit: payload in, results out, cancel, release, and
//!   the artifact dir written without following symlinks.
//! - `errors`: Rust errors as the `NativeError(kind, message)` the Python half maps to its
//!   exception classes.
//!
//! Every call that waits (linking, routing, network, disk) releases the GIL.

mod errors;
mod job;
mod link;
mod process;
mod shared;

use pyo3::prelude::*;

/// Text from a worker or a peer made safe to print: colour (SGR) kept, every other escape
/// sequence and control character dropped.
#[pyfunction]
fn sanitize(text: &str) -> String {
    warren::terminal::sanitize(text).into_owned()
}

/// Closes every embedded node of this process (each link is told why), waiting at most
/// `timeout` seconds. Jobs still running lose their link.
#[pyfunction]
#[pyo3(signature = (timeout = 2.0))]
fn shutdown_all(py: Python<'_>, timeout: f64) {
    py.detach(|| process::shutdown_all(errors::seconds(timeout)));
}

/// How many embedded nodes this process holds (for tests and diagnostics).
#[pyfunction]
fn node_count(py: Python<'_>) -> usize {
    py.detach(process::node_count)
}

/// Warren's Rust half: the embedded client node.
#[pymodule]
mod _native {
    #[pymodule_export]
    use super::errors::NativeError;
    #[pymodule_export]
    use super::job::{Job, start};
    #[pymodule_export]
    use super::link::{Link, link};
    #[pymodule_export]
    use super::{node_count, sanitize, shutdown_all};

    #[pymodule_export]
    const VERSION: &str = warren::VERSION;
}

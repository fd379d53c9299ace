//! Warren: run Ansible jobs and other work on remote nodes across an encrypted mesh.
//!
//! Crate map (see ARCHITECTURE.md for the whole picture):
//!
//! - [`access`]: who may do what on this node over the mesh (allow rules, deny by default).
//! - [`ansible`]: ansible-runner's transmit and worker streams, natively: packing a job for
//!   `ansible-runner worker` and processing its output into artifacts.
//! - [`ca`]: mesh authorities: certificates binding node ids to link keys, revocation lists.
//! - [`client`]: the short-lived client node embedded in `warren run`, the front end and the
//!   Python package: identity, known keys, the target check.
//! - [`clock`]: the wall clock, for drivers (cores take the time as an argument).
//! - [`cli`]: command-line arguments and their conversion to library types.
//! - [`config`]: the node's TOML config and flags, validated into a `Config`.
//! - [`control`]: the Receptor control-socket protocol (so `receptorctl` works): request
//!   parser, exact reply bytes, session driver, Unix-socket listener and the CLI's client.
//! - [`daemon`]: a running node: listeners, mesh driver and control socket wired together.
//! - [`host`]: the WebAssembly host that runs every job inside a work-handler component,
//!   and the signing of components.
//! - [`id`]: typed node ids and service names.
//! - [`keys`]: every key Warren uses, in one place: X25519 link identities (which also sign
//!   adverts, XEdDSA), Ed25519 signing keys, their tokens and their files.
//! - [`mesh`]: the overlay network: frames, Noise links, link-state routing, streams, and the
//!   tokio driver that is its only IO.
//! - [`terminal`]: text from peers, workers and jobs made safe to print (colour kept, other
//!   escape sequences dropped).
//! - [`work`]: work units: ids, the state life cycle, status JSON and the on-disk unit store.
//!
//! Feature `host` (default) builds the node side: the WebAssembly host, the daemon and the
//! command line. Without it (the Python package), the crate is the client node and what it
//! needs: mesh, work client, ansible streams, and no wasmtime.
#![warn(missing_docs)]

pub mod access;
pub mod ansible;
pub mod ca;
#[cfg(feature = "host")]
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod control;
#[cfg(feature = "host")]
pub mod daemon;
#[cfg(feature = "host")]
pub(crate) mod heap;
pub mod host;
pub mod id;
pub mod keys;
pub mod logging;
pub mod mesh;
pub mod metrics;
pub mod terminal;
pub mod work;

/// The version reported by `warren --version` and in `status`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

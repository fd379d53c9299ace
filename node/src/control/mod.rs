//! The Receptor control-socket protocol, so `receptorctl` and AWX-style tooling work.
//!
//! Owns the operator protocol on the node's control socket:
//! - [`request`]: typed requests parsed from Receptor's text and JSON forms (the `work`
//!   family in [`request::work`]);
//! - [`reply`]: the exact reply bytes, with Go's formats in [`goformat`];
//! - [`line`](mod@line): line framing that never loses payload bytes;
//! - [`session`]: one session's driver over any byte stream, and the [`Backend`] seam;
//! - [`listener`]: the Unix-socket listener and the default socket path, with
//!   [`socket_dir`]: the socket directory's ownership checks and the private bind;
//! - [`client`]: what the `warren` CLI verbs use, rendered for people by [`render`].
//!
//! It knows nothing of the mesh: answers come from a [`Backend`]. Parsing and formatting are
//! pure; only `session`, `listener`, `socket_dir` and `client` do IO.

pub mod client;
mod deploy_failure;
pub mod goformat;
pub mod line;
pub mod listener;
pub mod render;
pub mod reply;
pub mod request;
pub mod session;
pub mod socket_dir;

#[cfg(test)]
mod fake;

pub use client::{Client, ClientError};
pub use deploy_failure::DeployFailure;
pub use listener::{ControlSocket, ListenError, default_socket_path, serve_unix};
pub use reply::{
    Advertisement, Connection, PingReply, Reply, StatusReport, SubmitReply, TraceHop,
    TracerouteReply, UnitStatusReply, WorkCommand, WorkReply,
};
pub use request::{ParseError, Request, WorkRequest, parse_request};
pub use session::{Backend, serve_peer_session, serve_session};

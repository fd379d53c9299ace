//! Why a `deploy` failed, as the control socket's backend reports it: typed up to the
//! seam, printed as the reply's `ERROR:` line only there.

#[cfg(feature = "host")]
use crate::host::deploy::DeployError;
use crate::host::signing::VerifyError;
use crate::id::{NameError, NodeId};
use crate::mesh::driver::ConnectError;

/// Why a deployment failed. `Display` is the operator's message.
#[derive(Debug, thiserror::Error)]
pub enum DeployFailure {
    /// The target is not a valid node id.
    #[error("bad target node: {0}")]
    BadTarget(#[from] NameError),
    /// The signature file could not be read.
    #[error("{0}")]
    BadSignatureFile(VerifyError),
    /// The node checked the component and refused it.
    #[cfg(feature = "host")]
    #[error(transparent)]
    Refused(#[from] DeployError),
    /// The task that checks and compiles the component ended abnormally.
    #[error("deploy task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The target's `deploy` service could not be reached.
    #[error("cannot reach the deploy service of {node}: {source}")]
    Unreachable {
        /// The target.
        node: NodeId,
        /// Why.
        #[source]
        source: ConnectError,
    },
    /// The stream to or from the target broke.
    #[error("deploy to {node}: {source}")]
    Io {
        /// The target.
        node: NodeId,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The target refused the deployment; its own words.
    #[error("{message}")]
    Remote {
        /// The target.
        node: NodeId,
        /// What it said.
        message: String,
    },
    /// The target's answer could not be read.
    #[error("bad deploy reply {line:?}: {source}")]
    BadReply {
        /// The answer.
        line: String,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },
    /// A deployment arriving over the mesh had a header that does not parse.
    #[error("bad deploy header: {0}")]
    BadHeader(serde_json::Error),
    /// A deployment arriving over the mesh gave a length that is not a number.
    #[error("bad deploy length {0:?}")]
    BadLength(String),
    /// A deployment arriving over the mesh announced more than a component may be.
    #[error("component of {length} bytes exceeds {limit} bytes")]
    TooLarge {
        /// The announced length.
        length: u64,
        /// The limit.
        limit: u64,
    },
    /// A deployment arriving over the mesh ended before its announced length.
    #[error("got {got} of {length} component bytes")]
    Short {
        /// Bytes received.
        got: u64,
        /// Bytes announced.
        length: u64,
    },
    /// Reading a deployment arriving over the mesh failed.
    #[error("reading the component: {0}")]
    Read(std::io::Error),
}

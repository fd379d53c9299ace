//! Errors on their way to Python: every failure becomes `NativeError(kind, message)`, with
//! a stable `kind` the Python half maps to an exception class (`warren.errors`) and the
//! library's own explanation as the message. Text a peer or a worker chose is made safe
//! to print first.

use std::time::Duration;

use pyo3::PyErr;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use warren::client::ClientError;
use warren::work::client::ClientError as WorkError;
use warren::work::protocol::WorkRefusal;

create_exception!(
    _native,
    NativeError,
    PyException,
    "A failure of the embedded node: args are (kind, message)."
);

/// What went wrong, for the Python half's choice of exception class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The peer could not be reached (nothing listening, no answer, a TLS failure).
    PeerUnreachable,
    /// The peer refused this client's key.
    PeerRefused,
    /// A peer's or the target's key is not the one remembered.
    KeyChanged,
    /// No route to the target node.
    UnknownNode,
    /// The target does not offer the work type.
    NotOffered,
    /// The target refused the submission (access, limits, signature).
    SubmitRefused,
    /// The client's identity or its known-keys files.
    Identity,
    /// A bad argument (a peer address, a node id).
    Value,
    /// Anything else (the embedded node stopped, a protocol error).
    Other,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::PeerUnreachable => "peer_unreachable",
            Self::PeerRefused => "peer_refused",
            Self::KeyChanged => "key_changed",
            Self::UnknownNode => "unknown_node",
            Self::NotOffered => "not_offered",
            Self::SubmitRefused => "submit_refused",
            Self::Identity => "identity",
            Self::Value => "value",
            Self::Other => "other",
        }
    }
}

/// A `NativeError(kind, message)`, the message made safe to print.
pub(crate) fn native(kind: Kind, message: &str) -> PyErr {
    let message = warren::terminal::sanitize(message).into_owned();
    NativeError::new_err((kind.as_str(), message))
}

/// The client node's error, classified.
pub(crate) fn client(error: &ClientError) -> PyErr {
    let kind = match error {
        ClientError::Identity(_) | ClientError::Write { .. } => Kind::Identity,
        ClientError::Refused { .. } => Kind::PeerRefused,
        ClientError::PeerKeyChanged { .. } | ClientError::NodeKeyChanged { .. } => Kind::KeyChanged,
        ClientError::Unreachable { .. } | ClientError::Tls(_) => Kind::PeerUnreachable,
        ClientError::NoRoute { .. } => Kind::UnknownNode,
        ClientError::NotOffered { .. } => Kind::NotOffered,
        ClientError::Stopped => Kind::Other,
    };
    native(kind, &error.to_string())
}

/// A work request's error at submission, classified.
pub(crate) fn submit(error: &WorkError) -> PyErr {
    let kind = match error {
        WorkError::Refused(WorkRefusal::UnknownWorkType { .. }) => Kind::NotOffered,
        WorkError::Refused(_) => Kind::SubmitRefused,
        WorkError::Unreachable { .. } => Kind::UnknownNode,
        // Unverified does not arise here: the client node checks far keys itself
        // (`known_nodes`) and opens to nodes known first-seen.
        WorkError::Protocol { .. }
        | WorkError::Sink(_)
        | WorkError::Payload(_)
        | WorkError::Unverified(_) => Kind::Other,
    };
    native(kind, &error.to_string())
}

/// An error with its causes, one line: what the library says, then why.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    warren::terminal::one_line(&text).into_owned()
}

/// Seconds from Python as a duration; nonsense (negative, NaN, huge) is clamped.
pub(crate) fn seconds(secs: f64) -> Duration {
    if secs.is_nan() || secs <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(secs).unwrap_or(Duration::from_secs(u64::from(u32::MAX)))
}

/// The runtime the client node runs on could not be started.
pub(crate) fn runtime_start(e: &impl std::fmt::Display) -> PyErr {
    pyo3::exceptions::PyOSError::new_err(format!("starting Warren's client runtime: {e}"))
}

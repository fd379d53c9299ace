//! What can be wrong with a config, and where: every error names the file (or the command
//! line), the key and the problem.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::host::signing::SigningKeyError;
use crate::id::{NameError, NodeId};
use crate::keys::{KeyError, PublicKey};

use super::addr::{AddrError, EndpointAddr};
use super::cost::CostError;
use super::worktype::{HANDLER_NAMES, MAX_WORK_TYPE_NAME};

/// Why a config could not be loaded or built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file does not exist.
    #[error("config file {} does not exist", path.display())]
    NotFound {
        /// The file asked for.
        path: PathBuf,
    },
    /// The config file exists but could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not TOML, or not shaped like a node config (unknown key, wrong type,
    /// missing key). toml's message gives the line, the column and the key.
    #[error("{}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's error, with its span and the file's text.
        source: Box<toml::de::Error>,
    },
    /// A setting is well-formed but its value is not acceptable.
    #[error("{origin}: {key}: {problem}")]
    Invalid {
        /// Where the setting came from.
        origin: Origin,
        /// The setting, as written in the file (`[[peer]] #2 address`) or a flag (`--peer`).
        key: String,
        /// What is wrong with it.
        problem: Box<Problem>,
    },
    /// Without `--config`, flags the node cannot run without are missing.
    #[error("{} required when --config is not given", list_flags(flags))]
    MissingFlags {
        /// The missing flags, such as `--id`.
        flags: Vec<&'static str>,
    },
}

fn list_flags(flags: &[&str]) -> String {
    match flags {
        [] => "nothing is".to_owned(),
        [one] => format!("{one} is"),
        [init @ .., last] => format!("{} and {last} are", init.join(", ")),
    }
}

/// Where a setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A config file, and the line of the value when known.
    File {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending value, when known.
        line: Option<usize>,
    },
    /// Command-line flags alone.
    Flags,
    /// A config file merged with command-line flags.
    FileAndFlags {
        /// The file.
        path: PathBuf,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File {
                path,
                line: Some(line),
            } => write!(f, "{}:{line}", path.display()),
            Self::File { path, line: None } => write!(f, "{}", path.display()),
            Self::Flags => f.write_str("command line"),
            Self::FileAndFlags { path } => write!(f, "{} with command-line flags", path.display()),
        }
    }
}

/// Which kind of address a setting takes (peers cannot use port 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrRole {
    /// An address to listen on.
    Listen,
    /// An address to dial.
    Peer,
}

impl fmt::Display for AddrRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Listen => "listen",
            Self::Peer => "peer",
        })
    }
}

/// What is wrong with one setting.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    /// Not an address of the kind the setting takes.
    #[error("{value:?} is not a {role} address: {source}")]
    Address {
        /// The text as written.
        value: String,
        /// Listen or peer.
        role: AddrRole,
        /// Why it does not parse.
        source: AddrError,
    },
    /// Not a valid node id.
    #[error(transparent)]
    NodeId(#[from] NameError),
    /// Not a valid link key token.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Not a valid link cost.
    #[error(transparent)]
    Cost(#[from] CostError),
    /// A path setting is empty.
    #[error("the path is empty")]
    EmptyPath,
    /// Not a log level or filter.
    #[error(transparent)]
    LogLevel(#[from] crate::logging::LogLevelError),
    /// A file mode is not an octal string of at most `0777`.
    #[error("{value:?} is not an octal file mode such as \"0600\"")]
    Permissions {
        /// The text as written.
        value: String,
    },
    /// A number is outside the range the setting allows.
    #[error("{value} is not between {min} and {max}")]
    OutOfRange {
        /// The number given.
        value: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// The idle timeout would expire between two keepalives.
    #[error(
        "the idle timeout ({}s) must be longer than the keepalive interval ({}s)",
        idle.as_secs(),
        keepalive.as_secs()
    )]
    IdleNotAboveKeepalive {
        /// The idle timeout.
        idle: Duration,
        /// The keepalive interval.
        keepalive: Duration,
    },
    /// One key is trusted under two different pins (or both pinned and unpinned).
    #[error(
        "{key} is trusted both {} and {}; trust a key once, pinned to one node id or to none",
        describe_pin(first.as_ref()),
        describe_pin(second.as_ref())
    )]
    TrustConflict {
        /// The key.
        key: PublicKey,
        /// The first entry's pin.
        first: Option<NodeId>,
        /// The conflicting entry's pin.
        second: Option<NodeId>,
    },
    /// A `wss://` listener without a certificate and key.
    #[error(
        "a wss:// listener needs a certificate and key: [tls] cert and key, or --tls-cert and --tls-key"
    )]
    WssNeedsCertificate,
    /// The same address appears twice in one list.
    #[error("{addr} is listed twice")]
    DuplicateAddress {
        /// The address.
        addr: EndpointAddr,
    },
    /// Not a valid work type name.
    #[error(
        "{value:?} is not a work type name: use 1 to {MAX_WORK_TYPE_NAME} letters, digits, \
         '.', '_' or '-'"
    )]
    WorkTypeName {
        /// The text as written.
        value: String,
    },
    /// A handler that does not exist.
    #[error("unknown handler {value:?}; accepted: {}", HANDLER_NAMES.join(", "))]
    UnknownHandler {
        /// The text as written.
        value: String,
    },
    /// A key the work type's handler needs is missing.
    #[error("handler {handler:?} needs `{key}`")]
    MissingForHandler {
        /// The handler.
        handler: &'static str,
        /// The missing key.
        key: &'static str,
    },
    /// Not a usable range of job uids.
    #[error(transparent)]
    JobUsers(#[from] crate::host::contain::users::JobUsersError),
    /// A value that is not one of the few a key accepts.
    #[error("{value:?} is not one of: {accepted}")]
    UnknownChoice {
        /// The text as written.
        value: String,
        /// The accepted values, for the message.
        accepted: &'static str,
    },
    /// A key that the work type's handler does not use.
    #[error("`{key}` does not apply to handler {handler:?}")]
    NotForHandler {
        /// The handler.
        handler: &'static str,
        /// The key given.
        key: &'static str,
    },
    /// Fixed params with quotes, which splitting on whitespace cannot honour.
    #[error(
        "{value:?} contains a quote; params are split on whitespace and quoting is not \
         supported, so no argument can contain a space"
    )]
    QuotedParams {
        /// The text as written.
        value: String,
    },
    /// An argument pattern that cannot be used.
    #[error(transparent)]
    ArgPattern(#[from] crate::host::args::PatternError),
    /// `args` given where submissions may not add arguments.
    #[error("`args` lists what submissions may add, so it needs `allow-runtime-params = true`")]
    ArgsWithoutRuntimeParams,
    /// Not an environment variable name.
    #[error("{value:?} is not an environment variable name (letters, digits and '_')")]
    EnvName {
        /// The text as written.
        value: String,
    },
    /// Not a valid component signer key token.
    #[error(transparent)]
    SignerKey(#[from] SigningKeyError),
    /// Not a node id, `group:NAME` or key token.
    #[error(transparent)]
    Who(#[from] crate::access::WhoError),
    /// Not a work type name or `*`.
    #[error("{value:?} is not a work type name or *")]
    WorkTypePattern {
        /// The text as written.
        value: String,
    },
    /// An allow rule that grants nothing.
    #[error("the rule grants nothing: give work-types, control = true or deploy = true")]
    EmptyGrant,
    /// Two work types share a name.
    #[error("work type {name:?} is defined twice")]
    DuplicateWorkType {
        /// The name.
        name: String,
    },
    /// A work type takes the name of the default ansible-runner work type.
    #[error(
        "work type {name:?} clashes with the default ansible-runner work type; use handler \
         \"ansible-runner\", another name, or set [ansible-runner] enabled = false \
         (--no-ansible-runner)"
    )]
    AnsibleRunnerClash {
        /// The name.
        name: String,
    },
    /// A work type uses ansible-runner while ansible-runner is disabled.
    #[error(
        "handler \"ansible-runner\" is used while ansible-runner is disabled \
         ([ansible-runner] enabled = false or --no-ansible-runner)"
    )]
    AnsibleRunnerDisabled,
    /// A component work type on a node that trusts no signer could never run.
    #[error("handler \"component\" needs at least one [[signer]] (--signer) to verify it")]
    NoSigner,
    /// A link-cost override names this node itself.
    #[error("{node} is this node's own id; a node has no link to itself")]
    CostToSelf {
        /// This node's id.
        node: NodeId,
    },
}

fn describe_pin(pin: Option<&NodeId>) -> String {
    match pin {
        Some(node) => format!("as {node}"),
        None => "as any node".to_owned(),
    }
}

impl ConfigError {
    /// An [`ConfigError::Invalid`] for `key` at `origin`.
    pub(crate) fn invalid(origin: Origin, key: impl Into<String>, problem: Problem) -> Self {
        Self::Invalid {
            origin,
            key: key.into(),
            problem: Box::new(problem),
        }
    }
}

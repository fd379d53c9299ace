//! The node's configuration: a TOML file (or command-line flags, see
//! [`cli::NodeArgs`](crate::cli::NodeArgs)) turned into a validated [`Config`].
//!
//! ```toml
//! [node]
//! id = "node1"                       # required
//! data-dir = "/var/lib/warren/node1" # required; relative to the config file's directory
//! key-file = "node1.key"             # required; relative to the config file's directory
//! log-level = "info"                 # optional: a level for Warren's modules or a RUST_LOG-
//!                                    # style filter; RUST_LOG and -v take precedence; reloadable
//!
//! [[listen]]
//! address = "0.0.0.0:8888"           # host:port, receptor://host:port or host; port 0 allowed
//! cost = 1.0                         # optional, default 1.0
//!
//! [[peer]]
//! address = "receptor://relay.example.com:8888"
//!
//! [[trust]]
//! key = "x25519:..."                 # a trusted link key
//! node = "relay"                     # optional: only as this node id
//!
//! [link-costs]                       # optional per-neighbour cost overrides
//! relay = 2.5
//!
//! [control]
//! socket = "/run/warren/control.sock" # optional; relative to the config file's directory
//! permissions = "0600"                # optional octal string
//!
//! [work]                              # optional
//! max-running = 4                     # units at once (default: 2 per CPU)
//! max-payload-mb = 1024               # largest payload (default 1 GiB)
//! keep-finished-hours = 24            # release finished units after this (0: never)
//! signing-key = "work.key"            # sign submissions that ask for it (signwork)
//! verify-keys = ["ed25519:..."]       # accept work signed by these keys
//! require-signed = false              # refuse unsigned submissions from other nodes
//! drain-on-stop = false               # on SIGTERM, let running units end first
//! content-cache-mb = 2048             # contents kept for content-addressed runs (0: off)
//! containment = "auto"                # "auto" | "cgroup" | "subreaper" (see host::contain)
//!
//! [mesh]                              # optional tuning
//! keepalive-seconds = 10
//! idle-timeout-seconds = 30
//! rekey-minutes = 60
//! max-hops = 30
//! max-first-seen = 1000               # far nodes known only by the first key seen for
//!                                     # their id (no pin or certificate binds it)
//!
//! [[work-type]]                       # optional, repeatable
//! name = "cat"                        # letters, digits, . _ -; unique
//! handler = "command"                 # "command" | "ansible-runner" | "component"
//! program = "/bin/cat"                # command: a path, or a bare name found on PATH
//! params = "-n"                       # command: fixed arguments, split on whitespace
//! allow-runtime-params = false        # command: may submissions add arguments?
//! args = ["-n", "{job-path}"]         # command, with runtime params: what each added
//!                                     # argument may be (default anything): exact text,
//!                                     # `text*`, or `text{job-path}` (a path that stays in
//!                                     # the job directory, symlinks followed)
//! env = ["FOO"]                       # node variables passed through (default none)
//! memory-mb = 64                      # guest memory cap (default 64)
//! deadline-seconds = 21600            # wall-clock limit (default 6 h)
//! output-mb = 4096                    # results cap (default 4 GiB)
//! descriptors = 256                   # host descriptors a job may hold (default: the
//!                                     # node's share of RLIMIT_NOFILE, see below)
//! disk-mb = 4096                      # job directory quota (default 4 GiB)
//! disk-inodes = 200000                # job directory files and directories (default)
//! program-memory-mb = 2048            # memory of the programs it starts, with all their
//!                                     # descendants (cgroup; default 2 GiB)
//! program-pids = 512                  # their processes and threads (cgroup; default 512)
//! program-open-files = 4096           # RLIMIT_NOFILE of each (default 4096)
//! program-file-size-mb = 16384        # RLIMIT_FSIZE of each (default 16 GiB)
//! network = "host"                    # command only: "none" = private network, loopback only
//! # handler = "component" instead takes:
//! # component = "handlers/x.wasm"     # relative to the config file's directory
//! # signature = "handlers/x.wasm.sig" # default: the component's path plus .sig
//!
//! A command work type's program is held to `params` then, with runtime params, what `args`
//! allows: a component deployed over it cannot run the program with anything else. The
//! default `descriptors` keeps an eighth of the node's `RLIMIT_NOFILE` (at least 256) for
//! the node and shares the rest among `[work] max-running` jobs, at most 1024 each.
//!
//! [work]                              # optional
//! max-running = 4                     # units run at once (default: 2 per CPU)
//! max-payload-mb = 1024               # largest payload (default 1 GiB)
//! free-space-floor-mb = 512           # new units are refused, and jobs that write are
//!                                     # stopped, below this much free space (0: off)
//! mirror-output-mb = 4096             # most results a unit sent to another node may send
//!                                     # back here: past it the unit fails and is cancelled
//!                                     # there (default 4 GiB; a work type offered here uses
//!                                     # its own output-mb instead)
//! content-cache-mb = 2048             # file contents kept for content-addressed runs,
//!                                     # all submitters together, LRU (default 2 GiB;
//!                                     # 0: off; read at start)
//! max-units-per-submitter = 10000     # units one peer may hold here until it releases
//!                                     # them; more are refused (default 10,000)
//!
//! [[signer]]                          # optional, repeatable: whose components run here
//! key = "ed25519:..."
//!
//! [[allow]]                           # optional, repeatable: what peers may do here
//! who = "group:controllers"           # a node id, group:NAME, or x25519:TOKEN
//! work-types = ["ansible-runner"]     # may submit these ("*" for any)
//! control = false                     # may use the control service over the mesh
//! deploy = false                      # may deploy components (a trusted signature too)
//!
//! [certificates]                      # optional: a mesh authority instead of per-peer trust
//! authorities = ["ed25519:..."]       # `warren ca init` prints the token
//! cert = "node1.cert"                 # this node's certificate (`warren ca sign`)
//! revocations = ["revoked.list"]      # `warren ca revoke`; relative to the config's dir
//!
//! [ansible-runner]                    # optional
//! path = "/opt/venv/bin/ansible-runner" # default: search PATH
//! enabled = true                      # default true: offer the ansible-runner work type
//! env = ["ANSIBLE_FORCE_COLOR"]       # node variables passed through to it
//! ```
//!
//! Unknown keys are errors, and every error names the file, the line when known, the key
//! and the problem. Loading reads one file; nothing else here does IO.
//! [`Config::trusts`] is the one place that decides whether a peer's key may claim a node
//! id.
//!
//! Without feature `host` (the Python package's client) the file parser is left out: the
//! client needs the addresses and types, not a node's config file.
#![cfg_attr(not(feature = "host"), allow(dead_code, unused_imports))]

mod addr;
mod cost;
mod error;
#[cfg(feature = "host")]
mod file;
mod validate;
mod worktype;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::host::contain::ContainMode;
use crate::host::signing::SignerKey;
use crate::id::NodeId;
use crate::keys::PublicKey;

pub use crate::mesh::trust::{TrustDecision, TrustEntry};
pub use addr::{AddrError, DEFAULT_PORT, EndpointAddr, Scheme};
pub use cost::{CostError, LinkCost};
pub use error::{AddrRole, ConfigError, Origin, Problem};
pub use worktype::{
    ANSIBLE_RUNNER_WORK_TYPE, AnsibleRunnerConfig, DEFAULT_DEADLINE_SECONDS, DEFAULT_DISK_INODES,
    DEFAULT_DISK_MB, DEFAULT_FREE_SPACE_FLOOR_MB, DEFAULT_MEMORY_MB, DEFAULT_OUTPUT_MB,
    HANDLER_NAMES, HandlerKind, MAX_WORK_TYPE_NAME, WorkTypeConfig,
};

/// `[work] content-cache-mb` when none is configured: a few large private data dirs per
/// submitter fit, on any data disk worth running jobs from.
pub const DEFAULT_CONTENT_CACHE_MB: u64 = 2048;

/// Keepalive interval when none is configured: frequent enough to hold NAT and firewall
/// state open, rare enough to cost nothing.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(10);

/// Idle timeout when none is configured: three missed keepalives.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Rekey interval when none is configured: hourly, far inside Noise's nonce limits.
pub const DEFAULT_REKEY_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// Hop limit when none is configured: Receptor's default, ample for real meshes.
pub const DEFAULT_MAX_HOPS: u8 = 30;

/// Default `[mesh] max-first-seen`.
pub const DEFAULT_MAX_FIRST_SEEN: usize = 1_000;

/// Control socket mode when none is configured: owner only, since the socket can submit
/// work.
pub const DEFAULT_CONTROL_PERMISSIONS: u32 = 0o600;

/// A node's validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// This node's id on the mesh.
    pub node_id: NodeId,
    /// Where work units and other state live.
    pub data_dir: PathBuf,
    /// This node's private link key file.
    pub key_file: PathBuf,
    /// Addresses to accept links on.
    pub listen: Vec<ListenConfig>,
    /// Peers to dial and keep linked.
    pub peers: Vec<PeerConfig>,
    /// Link keys accepted from peers; no two entries share a key.
    pub trust: Vec<TrustEntry>,
    /// Per-neighbour cost overrides, which win over listener and peer costs.
    pub link_costs: BTreeMap<NodeId, LinkCost>,
    /// The operator control socket.
    pub control: ControlConfig,
    /// Mesh timers and limits.
    pub mesh: MeshTuning,
    /// How much work runs at once, and how large a payload may be.
    pub work: WorkLimits,
    /// Work types offered besides the default ansible-runner one; names are unique.
    pub work_types: Vec<WorkTypeConfig>,
    /// Signers whose components this node runs; no duplicates.
    pub signers: Vec<SignerKey>,
    /// Where to find ansible-runner, and whether to offer it.
    pub ansible_runner: AnsibleRunnerConfig,
    /// Mesh authorities this node trusts, its own certificate and the revocation lists.
    pub certificates: CertificatesConfig,
    /// What mesh peers may do here (deny by default).
    pub access: crate::access::AccessPolicy,
    /// Where to serve Prometheus metrics (`/metrics`); `None`: not served.
    pub metrics: Option<EndpointAddr>,
    /// TLS for `wss://` listeners and peers.
    pub tls: TlsConfig,
    /// `[node] log-level`: a level for Warren's modules or a `RUST_LOG`-style filter
    /// (validated); `RUST_LOG` and `-v` take precedence. Reloadable.
    pub log_level: Option<String>,
}

/// `[certificates]`: mesh authorities (`--ca`), this node's certificate (`--cert`) and
/// revocation lists (`--revocations`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificatesConfig {
    /// Authorities whose certificates vouch for peers (`warren ca init` prints the token).
    pub authorities: Vec<SignerKey>,
    /// This node's certificate file (`warren ca sign` writes it).
    pub cert: Option<PathBuf>,
    /// Revocation list files of trusted authorities (`warren ca revoke` writes them).
    pub revocations: Vec<PathBuf>,
}

/// TLS for `wss://` links (`[tls]`): the listeners' certificate and key, and extra roots
/// the dialler trusts besides the system's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM certificate chain served by `wss://` listeners.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// PEM files of CA (or self-signed) certificates trusted for `wss://` peers.
    pub ca: Vec<PathBuf>,
}

/// One address to accept links on.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenConfig {
    /// Where to listen; port 0 lets the OS choose.
    pub addr: EndpointAddr,
    /// Cost advertised for links accepted here.
    pub cost: LinkCost,
}

/// One peer to dial.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerConfig {
    /// Where to dial; never port 0.
    pub addr: EndpointAddr,
    /// Cost advertised for this link.
    pub cost: LinkCost,
}

/// The operator control socket's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlConfig {
    /// The socket's path; `None` leaves the choice to the daemon.
    pub socket: Option<PathBuf>,
    /// The socket file's mode, such as `0o600`.
    pub permissions: u32,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            socket: None,
            permissions: DEFAULT_CONTROL_PERMISSIONS,
        }
    }
}

/// Limits of the node's work units (`[work]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkLimits {
    /// Units that run at once; more wait in a queue.
    pub max_running: usize,
    /// Largest payload accepted, in bytes.
    pub max_payload: u64,
    /// How long finished units are kept before they are released (`None`: until released).
    pub keep_finished: Option<Duration>,
    /// The key this node signs submissions with when asked (`signwork`).
    pub signing_key: Option<PathBuf>,
    /// Keys whose signed submissions this node accepts.
    pub verify_keys: Vec<SignerKey>,
    /// Whether submissions from other nodes must be signed by one of `verify_keys`.
    pub require_signed: bool,
    /// Whether a stop signal first lets the running units end (`--drain`).
    pub drain_on_stop: bool,
    /// Free bytes the node keeps for results and status: below them it refuses new units
    /// and stops jobs that write. 0 turns the floor off.
    pub free_space_floor: u64,
    /// Most results bytes a unit run on another node may send back here (when its work
    /// type is not offered here; one that is uses its own `output-mb`).
    pub mirror_output: u64,
    /// Bytes the content cache of content-addressed submissions may hold (0: off).
    pub content_cache: u64,
    /// Most units one peer may hold here, submitted and not yet released.
    pub max_units_per_submitter: usize,
    /// How jobs' programs are contained (`containment = "auto" | "cgroup" | "subreaper"`).
    pub containment: ContainMode,
    /// The uids (each also a gid) reserved for jobs' programs (`job-users = "FIRST-LAST"`);
    /// `None`: they run as the node's user.
    pub job_users: Option<crate::host::contain::users::UidRange>,
}

#[cfg(feature = "host")]
impl Default for WorkLimits {
    fn default() -> Self {
        let defaults = crate::work::WorkConfig::default();
        Self {
            max_running: defaults.max_running,
            max_payload: defaults.max_payload,
            keep_finished: defaults.keep_finished,
            signing_key: None,
            verify_keys: Vec::new(),
            require_signed: false,
            drain_on_stop: false,
            free_space_floor: DEFAULT_FREE_SPACE_FLOOR_MB << 20,
            mirror_output: defaults.mirror_output,
            content_cache: DEFAULT_CONTENT_CACHE_MB << 20,
            max_units_per_submitter: defaults.max_units_per_submitter,
            containment: ContainMode::Auto,
            job_users: None,
        }
    }
}

/// Mesh timers and limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeshTuning {
    /// How often an idle link sends a keepalive.
    pub keepalive: Duration,
    /// How long a silent link lives; always longer than `keepalive`.
    pub idle_timeout: Duration,
    /// How often a link rekeys.
    pub rekey_interval: Duration,
    /// Hops a message may take before it is dropped.
    pub max_hops: u8,
    /// Most far nodes stored that only the first key seen for their id binds (see
    /// `LsdbLimits::max_first_seen`).
    pub max_first_seen: usize,
}

impl Default for MeshTuning {
    fn default() -> Self {
        Self {
            keepalive: DEFAULT_KEEPALIVE,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            rekey_interval: DEFAULT_REKEY_INTERVAL,
            max_hops: DEFAULT_MAX_HOPS,
            max_first_seen: DEFAULT_MAX_FIRST_SEEN,
        }
    }
}

impl Config {
    /// Reads and validates the config file at `path`.
    ///
    /// # Errors
    /// [`ConfigError::NotFound`] or [`ConfigError::Read`] when the file cannot be read,
    /// [`ConfigError::Parse`] when it is not a node config, [`ConfigError::Invalid`] when a
    /// value is not acceptable.
    #[cfg(feature = "host")]
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let origin = Origin::File {
            path: path.to_owned(),
            line: None,
        };
        Self::load_unvalidated(path)?.validate(origin)
    }

    /// Reads the config file at `path` and checks each value, but not the checks across
    /// settings: for a caller that changes the config (merging flags that may settle a
    /// conflict) and then calls [`Config::validate`].
    ///
    /// # Errors
    /// As [`Config::load`], except for the checks across settings.
    #[cfg(feature = "host")]
    pub fn load_unvalidated(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ConfigError::NotFound {
                    path: path.to_owned(),
                }
            } else {
                ConfigError::Read {
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
        file::decode(&text, path)
    }

    /// Parses and validates config text as if read from `path`, which names it in errors
    /// and is the base of relative paths. Does no IO.
    ///
    /// # Errors
    /// As [`Config::load`], except for reading.
    #[cfg(feature = "host")]
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let origin = Origin::File {
            path: path.to_owned(),
            line: None,
        };
        file::decode(text, path)?.validate(origin)
    }

    /// Runs the checks across settings again, after a caller changed the config (flags
    /// merged into a file), and drops exact duplicate trust entries.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] at `origin` naming the first setting at fault.
    pub fn validate(self, origin: Origin) -> Result<Self, ConfigError> {
        validate::check(self, origin)
    }

    /// Whether the default `ansible-runner` work type is offered (if ansible-runner is
    /// found): it is enabled and no configured work type takes its name.
    pub fn offers_default_ansible_runner(&self) -> bool {
        self.ansible_runner.enabled
            && !(self.work_types.iter()).any(|w| w.name == ANSIBLE_RUNNER_WORK_TYPE)
    }

    /// Decides whether a peer presenting `key` (and no certificate) is accepted as
    /// `claimed`.
    ///
    /// A key pinned to a node id is accepted only as that id; an unpinned key is accepted
    /// as any id that no other key is pinned to.
    pub fn trusts(&self, key: &PublicKey, claimed: &NodeId) -> TrustDecision {
        let policy = crate::mesh::trust::TrustPolicy {
            entries: self.trust.clone(),
            authorities: crate::ca::Authorities::new(self.certificates.authorities.clone()),
            successions: Default::default(),
        };
        crate::mesh::trust::decide_peer(&policy, key, claimed, None, 0)
    }
}

/// Parses an octal file mode (`"0600"`, `"600"` or `"0o600"`) of at most `0o777`.
pub(crate) fn parse_mode(s: &str) -> Option<u32> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return None;
    }
    u32::from_str_radix(digits, 8).ok().filter(|&m| m <= 0o777)
}

#[cfg(test)]
mod tests;

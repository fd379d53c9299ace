//! Flags of `warren node`: a config file, quick flags instead of one, or both.

use std::path::{Path, PathBuf};

use crate::config::{
    AnsibleRunnerConfig, CertificatesConfig, Config, ConfigError, ControlConfig, EndpointAddr,
    LinkCost, ListenConfig, MeshTuning, Origin, PeerConfig, TlsConfig, TrustEntry, WorkLimits,
    WorkTypeConfig,
};
use crate::host::signing::SignerKey;
use crate::id::NodeId;

/// Run a mesh node (the flags of warren node).
///
/// Give --config FILE, or the quick flags with at least --id, --key and --data-dir. Flags
/// given with --config win: --id, --key, --data-dir, --control-socket and --ansible-runner
/// replace the file's values; --listen, --peer, --trust, --work-type and --signer add to the
/// file's lists; --cost overrides the file's [link-costs] entry for its node;
/// --no-ansible-runner turns ansible-runner off.
// The field docs are the `--help` text, so they are written for a terminal, not rustdoc.
#[allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NodeArgs {
    /// Read settings from this TOML file (see examples/mesh/).
    ///
    /// Other flags given with it change it: --id, --key, --data-dir, --control-socket and
    /// --ansible-runner replace the file's values; --listen, --peer, --trust, --work-type and
    /// --signer add to its lists; --cost overrides its [link-costs] entry for that node;
    /// --no-ansible-runner sets [ansible-runner] enabled = false. Relative paths in the file are
    /// relative to the file's directory; relative paths in flags, to the current directory.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// This node's id on the mesh: letters, digits and . _ - @ : (required without --config).
    #[arg(long, value_name = "ID")]
    pub id: Option<NodeId>,

    /// Accept links on ADDR (repeatable).
    ///
    /// ADDR is host:port, receptor://host:port, or a bare host (port 8888); write IPv6 as
    /// [::1]:port. Port 0 lets the OS choose a free port; use --ready-file to learn it.
    /// ws://host:port[/path] accepts WebSocket links at that path (for a reverse proxy or
    /// ingress in front); wss://... the same over TLS, with --tls-cert and --tls-key.
    #[arg(long = "listen", value_name = "ADDR")]
    pub listen: Vec<EndpointAddr>,

    /// Dial ADDR and keep a link to it (repeatable).
    ///
    /// ADDR is host:port, receptor://host:port, or a bare host (port 8888); write IPv6 as
    /// [::1]:port. Port 0 is not allowed here. The link's cost is 1.0 unless --cost sets one
    /// for the peer's node id. ws://host[:port][/path] and wss://... dial a WebSocket
    /// listener, through $HTTP_PROXY / $HTTPS_PROXY (CONNECT) unless $NO_PROXY names the host;
    /// wss:// checks the certificate against the system's roots and --tls-ca.
    #[arg(long = "peer", value_name = "ADDR", value_parser = EndpointAddr::parse_peer)]
    pub peers: Vec<EndpointAddr>,

    /// This node's private link key file, as written by warren keygen (required without
    /// --config).
    #[arg(long = "key", value_name = "FILE")]
    pub key_file: Option<PathBuf>,

    /// Trust a peer's link key (repeatable).
    ///
    /// TOKEN is the public key as warren keygen prints it: x25519:<base64url>. A bare
    /// TOKEN accepts the key as any node id that no other key is pinned to; NODE=TOKEN
    /// accepts it only as node NODE. A node links only with peers whose keys it trusts.
    #[arg(long = "trust", value_name = "[NODE=]TOKEN", value_parser = parse_trust)]
    pub trust: Vec<TrustEntry>,

    /// Directory for work units and other node state (required without --config).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Path of the control socket, which speaks Receptor's protocol (receptorctl works
    /// with it). Created with mode 0600 unless the config file says otherwise.
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,

    /// Once every listener is bound, write the bound listen addresses to PATH, one
    /// host:port per line, so scripts can wait for the node and learn ports chosen for
    /// port 0.
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,

    /// Set the cost of the link to neighbour NODE (repeatable); lower is preferred.
    ///
    /// COST is a number above 0 and at most 1000000; links cost 1.0 by default. Overrides
    /// the cost of the listener or peer the link came through.
    #[arg(long = "cost", value_name = "NODE=COST", value_parser = parse_cost)]
    pub costs: Vec<(NodeId, LinkCost)>,

    /// Offer work type NAME, which runs PROGRAM (repeatable), as in --work-type cat=/bin/cat.
    ///
    /// PROGRAM is an absolute path or a bare name looked up on the node's PATH at startup;
    /// words after it, separated by spaces, are fixed arguments (quotes are not supported):
    /// --work-type 'numbered=cat -n'. The submission is the program's stdin and its stdout
    /// the result; submissions may not add arguments, no node variables are passed
    /// through, and the default limits apply. Use a [[work-type]] in a config file for more.
    #[arg(long = "work-type", value_name = "NAME=PROGRAM[ ARGS]", value_parser = parse_work_type)]
    pub work_types: Vec<WorkTypeConfig>,

    /// Run work-handler components signed by this key (repeatable).
    ///
    /// TOKEN is the public key as warren component keygen prints it: ed25519:<base64url>.
    #[arg(long = "signer", value_name = "TOKEN")]
    pub signers: Vec<SignerKey>,

    /// Let WHO submit work type TYPE here over the mesh (repeatable); TYPE may be `*`.
    ///
    /// WHO is a node id (matched only when a --trust pin or a certificate binds its key),
    /// group:NAME (a certificate's group), or a key token x25519:<base64url>. Nothing is
    /// allowed by default; the local control socket always has full rights.
    #[arg(long = "allow-work", value_name = "TYPE=WHO")]
    pub allow_work: Vec<crate::access::WorkGrant>,

    /// Let WHO use this node's control service over the mesh (repeatable): full control of
    /// the node, as its local control socket has.
    #[arg(long = "allow-control", value_name = "WHO")]
    pub allow_control: Vec<crate::access::Who>,

    /// Let WHO deploy components to this node (repeatable); a trusted --signer must have
    /// signed them as well.
    #[arg(long = "allow-deploy", value_name = "WHO")]
    pub allow_deploy: Vec<crate::access::Who>,

    /// Sign submissions to other nodes with this Ed25519 key when asked (receptorctl's
    /// --signwork); make one with warren component keygen.
    #[arg(long = "work-signing-key", value_name = "FILE")]
    pub work_signing_key: Option<PathBuf>,

    /// Accept work signed by this key (repeatable): ed25519:<base64url>.
    #[arg(long = "work-verify-key", value_name = "TOKEN")]
    pub work_verify_keys: Vec<SignerKey>,

    /// Refuse submissions from other nodes unless signed by a --work-verify-key.
    #[arg(long = "require-signed-work")]
    pub require_signed_work: bool,

    /// On SIGTERM or SIGINT, let the running units end before stopping: new submissions are
    /// refused meanwhile (saying the node is draining) and queued units wait for the next
    /// start. A second signal stops at once.
    #[arg(long = "drain")]
    pub drain: bool,

    /// Trust this mesh authority (repeatable): peers holding a valid certificate it signed
    /// are accepted without a --trust entry, and far nodes' adverts and sessions are
    /// checked against their certificates.
    ///
    /// TOKEN is the authority's public key as warren ca init prints it: ed25519:<base64url>.
    #[arg(long = "ca", value_name = "TOKEN")]
    pub authorities: Vec<SignerKey>,

    /// This node's certificate, as warren ca sign writes it; shown to peers.
    #[arg(long = "cert", value_name = "FILE")]
    pub cert: Option<PathBuf>,

    /// A revocation list of a trusted authority, as warren ca revoke writes it (repeatable).
    #[arg(long = "revocations", value_name = "FILE")]
    pub revocations: Vec<PathBuf>,

    /// Use the ansible-runner at PATH instead of searching the node's PATH (turns
    /// ansible-runner on even if the config file turned it off).
    #[arg(long, value_name = "PATH", conflicts_with = "no_ansible_runner")]
    pub ansible_runner: Option<PathBuf>,

    /// Do not offer the ansible-runner work type, even if ansible-runner is installed.
    #[arg(long)]
    pub no_ansible_runner: bool,

    /// Serve Prometheus metrics at http://ADDR/metrics (ADDR is host:port, such as
    /// 127.0.0.1:9100; replaces the config file's [metrics] listen). Anyone who can reach
    /// ADDR can read them: bind loopback or a management network. `warren top` shows them.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<EndpointAddr>,

    /// PEM certificate chain for wss:// listeners (replaces [tls] cert).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert (replaces [tls] key).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// Trust the CA (or self-signed) certificates in FILE for wss:// peers, besides the
    /// system's (repeatable; adds to [tls] ca).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Vec<PathBuf>,
}

impl NodeArgs {
    /// Builds the node's config from the file and the flags, and returns it with the
    /// ready file, which only a flag can set.
    ///
    /// # Errors
    /// [`ConfigError::MissingFlags`] without `--config` when `--id`, `--key` or
    /// `--data-dir` is missing; any error of [`Config::load`]; [`ConfigError::Invalid`]
    /// when the flags conflict with each other or with the file.
    pub fn into_config(mut self) -> Result<(Config, Option<PathBuf>), ConfigError> {
        let ready_file = self.ready_file.take();
        let config = match self.config.take() {
            // Flags may settle a conflict in the file (--signer, --no-ansible-runner), so
            // the checks across settings run once, after merging.
            Some(path) => {
                let file = Config::load_unvalidated(&path)?;
                if self.changes_nothing() {
                    let origin = Origin::File { path, line: None };
                    file.validate(origin)?
                } else {
                    self.merge_into(file, &path)?
                }
            }
            None => self.flags_only()?,
        };
        Ok((config, ready_file))
    }

    /// Whether no flag changes the config (only --config and --ready-file were given).
    fn changes_nothing(&self) -> bool {
        // Destructured so that a new flag cannot be forgotten here.
        let Self {
            config: _,
            ready_file: _,
            id,
            listen,
            peers,
            key_file,
            trust,
            data_dir,
            control_socket,
            costs,
            work_types,
            signers,
            ansible_runner,
            no_ansible_runner,
            authorities,
            cert,
            revocations,
            allow_work,
            allow_control,
            allow_deploy,
            work_signing_key,
            work_verify_keys,
            require_signed_work,
            drain,
            metrics,
            tls_cert,
            tls_key,
            tls_ca,
        } = self;
        id.is_none()
            && key_file.is_none()
            && data_dir.is_none()
            && control_socket.is_none()
            && ansible_runner.is_none()
            && !no_ansible_runner
            && metrics.is_none()
            && tls_cert.is_none()
            && tls_key.is_none()
            && tls_ca.is_empty()
            && listen.is_empty()
            && peers.is_empty()
            && trust.is_empty()
            && costs.is_empty()
            && work_types.is_empty()
            && signers.is_empty()
            && authorities.is_empty()
            && cert.is_none()
            && revocations.is_empty()
            && allow_work.is_empty()
            && allow_control.is_empty()
            && allow_deploy.is_empty()
            && work_signing_key.is_none()
            && work_verify_keys.is_empty()
            && !require_signed_work
            && !drain
    }

    fn flags_only(self) -> Result<Config, ConfigError> {
        let (Some(node_id), Some(key_file), Some(data_dir)) = (
            self.id.clone(),
            self.key_file.clone(),
            self.data_dir.clone(),
        ) else {
            let flags = [
                ("--id", self.id.is_none()),
                ("--key", self.key_file.is_none()),
                ("--data-dir", self.data_dir.is_none()),
            ];
            let flags = flags.iter().filter(|f| f.1).map(|f| f.0).collect();
            return Err(ConfigError::MissingFlags { flags });
        };
        let config = Config {
            node_id,
            data_dir,
            key_file,
            listen: Vec::new(),
            peers: Vec::new(),
            trust: Vec::new(),
            link_costs: Default::default(),
            control: ControlConfig::default(),
            mesh: MeshTuning::default(),
            work: WorkLimits::default(),
            work_types: Vec::new(),
            signers: Vec::new(),
            ansible_runner: AnsibleRunnerConfig::default(),
            certificates: CertificatesConfig::default(),
            access: Default::default(),
            metrics: None,
            tls: TlsConfig::default(),
        };
        self.extend(config).validate(Origin::Flags)
    }

    fn merge_into(self, mut config: Config, path: &Path) -> Result<Config, ConfigError> {
        if let Some(id) = self.id.clone() {
            config.node_id = id;
        }
        if let Some(key_file) = self.key_file.clone() {
            config.key_file = key_file;
        }
        if let Some(data_dir) = self.data_dir.clone() {
            config.data_dir = data_dir;
        }
        let origin = Origin::FileAndFlags {
            path: path.to_owned(),
        };
        self.extend(config).validate(origin)
    }

    /// Adds the list flags, the control socket and the ansible-runner flags to `config`.
    fn extend(self, mut config: Config) -> Config {
        let listen = self.listen.into_iter().map(|addr| ListenConfig {
            addr,
            cost: LinkCost::DEFAULT,
        });
        config.listen.extend(listen);
        let peers = self.peers.into_iter().map(|addr| PeerConfig {
            addr,
            cost: LinkCost::DEFAULT,
        });
        config.peers.extend(peers);
        config.trust.extend(self.trust);
        config.link_costs.extend(self.costs);
        if let Some(socket) = self.control_socket {
            config.control.socket = Some(socket);
        }
        config.work_types.extend(self.work_types);
        config.signers.extend(self.signers);
        config.certificates.authorities.extend(self.authorities);
        if let Some(cert) = self.cert {
            config.certificates.cert = Some(cert);
        }
        config.certificates.revocations.extend(self.revocations);
        config.access.work.extend(self.allow_work);
        config.access.control.extend(self.allow_control);
        config.access.deploy.extend(self.allow_deploy);
        if let Some(key) = self.work_signing_key {
            config.work.signing_key = Some(key);
        }
        config.work.verify_keys.extend(self.work_verify_keys);
        config.work.require_signed |= self.require_signed_work;
        config.work.drain_on_stop |= self.drain;
        if let Some(path) = self.ansible_runner {
            config.ansible_runner.path = Some(path);
            config.ansible_runner.enabled = true;
        }
        if self.no_ansible_runner {
            config.ansible_runner.enabled = false;
        }
        if let Some(metrics) = self.metrics {
            config.metrics = Some(metrics);
        }
        if let Some(cert) = self.tls_cert {
            config.tls.cert = Some(cert);
        }
        if let Some(key) = self.tls_key {
            config.tls.key = Some(key);
        }
        config.tls.ca.extend(self.tls_ca);
        config
    }
}

/// Parses `--trust`: `TOKEN` or `NODE=TOKEN` (tokens and node ids never hold `=`).
fn parse_trust(s: &str) -> Result<TrustEntry, String> {
    let (node, token) = match s.split_once('=') {
        Some((node, token)) => (Some(node.parse().map_err(|e| format!("{e}"))?), token),
        None => (None, s),
    };
    let key = token.parse().map_err(|e| format!("{e}"))?;
    Ok(TrustEntry { key, node })
}

/// Parses `--cost NODE=COST`.
fn parse_cost(s: &str) -> Result<(NodeId, LinkCost), String> {
    let (node, cost) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NODE=COST, as in relay=2.5"))?;
    let node = node.parse().map_err(|e| format!("{e}"))?;
    let cost = cost.parse().map_err(|e| format!("{e}"))?;
    Ok((node, cost))
}

/// Parses `--work-type NAME=PROGRAM[ ARGS]` into a command work type with defaults.
fn parse_work_type(s: &str) -> Result<WorkTypeConfig, String> {
    let (name, command) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=PROGRAM, as in cat=/bin/cat"))?;
    WorkTypeConfig::command(name, command).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;

//! A short-lived client node, embedded in a program that submits work (`warren run`, the
//! `ansible-runner` front end, the Python package): it links to one peer, waits for the
//! target node, and talks to it through the work [`WorkClient`].
//!
//! Owns the client's identity (see `identity.rs`), the keys it remembers on first contact
//! (`known_peers` for the peer it dials, `known_nodes` for the nodes it runs work on, as SSH
//! does), and the explanations a user needs when something refuses: the exact flag to give
//! the refusing node.

pub mod identity;
pub mod known;

use std::path::PathBuf;
use std::time::Duration;

use crate::ca::Authorities;
use crate::config::{EndpointAddr, Scheme};
use crate::id::NodeId;
use crate::keys::succession;
use crate::keys::{PublicKey, SignedSuccession};
use crate::mesh::driver::{self, DriverConfig, MeshHandle, PeerTarget};
use crate::mesh::node::MeshConfig;
use crate::mesh::route::Cost;
use crate::mesh::transport::Dial;
use crate::mesh::transport::tls::{self, TlsError};
use crate::mesh::trust::{TrustEntry, TrustPolicy};
use crate::work::client::WorkClient;
use known::KnownKeys;

/// Why a client could not get to work.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The identity or its certificate is unusable.
    #[error("client identity: {0}")]
    Identity(String),
    /// The peer refused this client's key.
    #[error(
        "{peer} refused this client's key {token}.\nTrust it on that node: warren node ... {advice}"
    )]
    Refused {
        /// The peer.
        peer: EndpointAddr,
        /// The client's key.
        token: PublicKey,
        /// The flag to add there.
        advice: String,
    },
    /// The peer's key is not the one first seen at its address.
    #[error(
        "the key of {peer} is not the one first seen there: refusing it (possible impostor).\n\
         If the node was re-keyed on purpose, remove its line from {}.",
        file.display()
    )]
    PeerKeyChanged {
        /// The peer.
        peer: EndpointAddr,
        /// The known_peers file.
        file: PathBuf,
    },
    /// The peer could not be reached.
    #[error("cannot link to {peer}: {why}")]
    Unreachable {
        /// The peer.
        peer: EndpointAddr,
        /// What happened.
        why: String,
    },
    /// No route to the target node.
    #[error("{node} is not reachable from {peer}: no route after {secs} s")]
    NoRoute {
        /// The target.
        node: NodeId,
        /// The peer.
        peer: EndpointAddr,
        /// How long it waited.
        secs: f64,
    },
    /// The target does not offer the work type.
    #[error("node {node} does not offer work type {work_type}")]
    NotOffered {
        /// The target.
        node: NodeId,
        /// The work type.
        work_type: String,
    },
    /// The target's key is not the one it had when this client first ran work there.
    #[error(
        "node {node} now has key {seen}, not {known} as when this client first ran work there: refusing it (possible impostor).\n\
         If {node} was re-keyed on purpose, remove its line from {}.",
        file.display()
    )]
    NodeKeyChanged {
        /// The target.
        node: NodeId,
        /// The key remembered.
        known: PublicKey,
        /// The key seen now.
        seen: PublicKey,
        /// The known_nodes file.
        file: PathBuf,
    },
    /// The embedded node stopped.
    #[error("the embedded node stopped")]
    Stopped,
    /// A `wss://` peer's trusted roots (`$WARREN_TLS_CA`) could not be loaded.
    #[error("{0}")]
    Tls(#[from] TlsError),
    /// A known-keys file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl From<driver::DriverGone> for ClientError {
    fn from(_: driver::DriverGone) -> Self {
        Self::Stopped
    }
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The peer to dial.
    pub peer: EndpointAddr,
    /// The client's node id [default: the certificate's, else a unique temporary id].
    pub node_id: Option<NodeId>,
    /// The identity key file [default: see `identity.rs`].
    pub identity: Option<PathBuf>,
    /// How long to wait for the link and the target.
    pub timeout: Duration,
}

/// A running client node.
#[derive(Debug)]
pub struct ClientNode {
    mesh: MeshHandle,
    id: NodeId,
    peer: EndpointAddr,
    known_nodes: KnownKeys,
    /// Whether an authority (the certificate's issuer) vouches for target keys; otherwise
    /// `known_nodes` does.
    certified: bool,
    timeout: Duration,
}

/// The mesh notes that the client prints (first contact, new identity).
pub type Notice = String;

impl ClientNode {
    /// Starts the embedded node and waits for its link to the peer; `notice` is told of
    /// keys created or remembered.
    ///
    /// # Errors
    /// [`ClientError`] explaining a refusal, an impostor or an unreachable peer.
    pub async fn connect(
        options: ClientOptions,
        mut notice: impl FnMut(Notice),
    ) -> Result<Self, ClientError> {
        let path = identity::identity_path(options.identity.as_deref())?;
        let me = identity::load(&path)?;
        if me.created {
            notice(format!(
                "created this client's identity {} ({})",
                path.display(),
                me.keys.public()
            ));
        }
        let id = client_id(options.node_id.as_ref(), me.cert.as_ref())?;
        let mut known_peers = KnownKeys::load(&path, "known_peers");
        let pinned = known_peers.get(&options.peer.to_string());
        let token = me.keys.public();
        let certified = me.cert.is_some();
        let mesh = start(&id, me, &options.peer, pinned)?;
        let advice = match &options.node_id {
            Some(id) => format!("--trust {id}={token}"),
            None => format!(
                "--trust {token} (or run with --receptor-node-id ID and use --trust ID={token})"
            ),
        };
        let link = wait_for_link(
            &mesh,
            &options.peer,
            &advice,
            &token,
            pinned.is_some(),
            &known_peers,
            options.timeout,
        )
        .await;
        let key = match link {
            Ok(key) => key,
            Err(e) => {
                mesh.shutdown().await;
                return Err(e);
            }
        };
        // A key other than the remembered one was admitted only through a key succession
        // signed by the remembered key (the peer rotated): remember its new key.
        if pinned != Some(key) {
            known_peers
                .remember(&options.peer.to_string(), key)
                .map_err(|source| ClientError::Write {
                    path: known_peers.path().to_owned(),
                    source,
                })?;
            notice(match pinned {
                None => format!("remembered the key of {}: {key}", options.peer),
                Some(old) => format!(
                    "{} rotated its key (signed by the remembered {old}): remembered {key}",
                    options.peer
                ),
            });
        }
        Ok(Self {
            mesh,
            id,
            peer: options.peer,
            known_nodes: KnownKeys::load(&path, "known_nodes"),
            certified,
            timeout: options.timeout,
        })
    }

    /// This client's node id.
    pub fn id(&self) -> &NodeId {
        &self.id
    }

    /// The embedded node.
    pub fn mesh(&self) -> &MeshHandle {
        &self.mesh
    }

    /// How long [`ClientNode::wait_for`] waits from now on (a node shared by several
    /// submissions, as in the Python package, takes each one's own timeout).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// A work client over the embedded node.
    pub fn work(&self) -> WorkClient {
        WorkClient::new(self.mesh.clone())
    }

    /// Waits for a route to `node` and for its advert to offer `work_type` (a node's first
    /// advert may come before it has found its handlers), and checks its key: against its
    /// certificate in a mesh with an authority, else against `known_nodes` (remembered on
    /// first contact).
    ///
    /// # Errors
    /// [`ClientError`] for no route, no such work type, or a changed key.
    pub async fn wait_for(&mut self, node: &NodeId, work_type: &str) -> Result<(), ClientError> {
        let wait = self.timeout;
        let deadline = tokio::time::Instant::now() + wait;
        if !self.mesh.wait_reachable(node, wait).await? {
            return Err(ClientError::NoRoute {
                node: node.clone(),
                peer: self.peer.clone(),
                secs: wait.as_secs_f64(),
            });
        }
        loop {
            let status = self.mesh.status().await?;
            let advert = status.adverts.iter().find(|a| &a.origin == node);
            if let Some(advert) = advert
                && advert.work_types.iter().any(|w| w == work_type)
            {
                let (key, chain) = (advert.key, advert.successions.clone());
                return self.check_key(node, key, &chain);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::NotOffered {
                    node: node.clone(),
                    work_type: work_type.to_owned(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn check_key(
        &mut self,
        node: &NodeId,
        seen: PublicKey,
        chain: &[SignedSuccession],
    ) -> Result<(), ClientError> {
        if self.certified {
            // The mesh stored the advert only because the authority's certificate binds it.
            return Ok(());
        }
        match self.known_nodes.get(node.as_str()) {
            Some(known) if known == seen => Ok(()),
            // The node rotated its key: each step is signed by the key it retires, starting
            // with the one remembered.
            Some(known) if succession::leads(chain, &known, &seen) => self
                .known_nodes
                .remember(node.as_str(), seen)
                .map_err(|source| ClientError::Write {
                    path: self.known_nodes.path().to_owned(),
                    source,
                }),
            Some(known) => Err(ClientError::NodeKeyChanged {
                node: node.clone(),
                known,
                seen,
                file: self.known_nodes.path().to_owned(),
            }),
            None => self
                .known_nodes
                .remember(node.as_str(), seen)
                .map_err(|source| ClientError::Write {
                    path: self.known_nodes.path().to_owned(),
                    source,
                }),
        }
    }

    /// Closes the link (telling the peer why) and stops the embedded node.
    pub async fn shutdown(self) {
        self.mesh.shutdown().await;
    }
}

/// The client's node id: as asked, else the certificate's, else `warren-run-<random>`.
fn client_id(
    asked: Option<&NodeId>,
    cert: Option<&crate::ca::SignedCertificate>,
) -> Result<NodeId, ClientError> {
    match (asked, cert) {
        (Some(asked), Some(cert)) if *asked != cert.cert.node => {
            Err(ClientError::Identity(format!(
                "the certificate is for node id {}, not {asked}; run without --receptor-node-id",
                cert.cert.node
            )))
        }
        (Some(asked), _) => Ok(asked.clone()),
        (None, Some(cert)) => Ok(cert.cert.node.clone()),
        (None, None) => {
            let mut b = [0u8; 4];
            getrandom::fill(&mut b)
                .map_err(|e| ClientError::Identity(format!("no randomness: {e}")))?;
            let suffix: String = b.iter().map(|x| format!("{x:02x}")).collect();
            NodeId::new(format!("warren-run-{suffix}"))
                .map_err(|e| ClientError::Identity(e.to_string()))
        }
    }
}

fn start(
    me: &NodeId,
    identity: identity::Identity,
    peer: &EndpointAddr,
    pinned: Option<PublicKey>,
) -> Result<MeshHandle, ClientError> {
    // A certified client trusts its certificate's issuer: far nodes' adverts and the target
    // are then checked against that authority.
    let authorities = identity
        .cert
        .as_ref()
        .map_or_else(Authorities::default, |c| Authorities::new([c.cert.issuer]));
    let trust = TrustPolicy {
        entries: pinned
            .map(|key| TrustEntry { key, node: None })
            .into_iter()
            .collect(),
        authorities,
        successions: Default::default(),
    };
    let mut config = MeshConfig::new(me.clone(), identity.keys, trust, crate::clock::now_ms());
    config.cert = identity.cert;
    config.trust_first_contact = pinned.is_none();
    // The target's key is checked here against `known_nodes` (`ClientNode::wait_for`), as
    // SSH checks known_hosts; a node sending work onwards has no such record and refuses.
    config.first_seen_targets = true;
    let mut seed = [0u8; 8];
    if getrandom::fill(&mut seed).is_ok() {
        config.rng_seed = u64::from_le_bytes(seed);
    }
    let target = PeerTarget {
        host: peer.host.clone(),
        port: peer.port,
        cost: Cost::DEFAULT,
    };
    // A wss:// peer's certificate is checked against the system's roots and
    // $WARREN_TLS_CA (a PEM file), if set.
    let roots: Vec<PathBuf> = std::env::var_os("WARREN_TLS_CA")
        .filter(|v| !v.is_empty())
        .map(Into::into)
        .into_iter()
        .collect();
    let dial = dial_for(peer, &roots)?;
    let (mesh, _task) = driver::start_with(
        config,
        DriverConfig::default(),
        Vec::new(),
        vec![(target, dial)],
    );
    Ok(mesh)
}

/// How to dial `addr`: TCP, or a WebSocket (through the environment's proxy), over TLS
/// trusting the system's roots and `extra_roots` for `wss://`.
///
/// # Errors
/// [`TlsError`] when the roots cannot be loaded for a `wss://` address.
pub fn dial_for(addr: &EndpointAddr, extra_roots: &[PathBuf]) -> Result<Dial, TlsError> {
    Ok(match addr.scheme {
        Scheme::Tcp => Dial::Tcp,
        Scheme::Ws => Dial::Ws {
            path: addr.path.clone(),
            tls: None,
        },
        Scheme::Wss => Dial::Ws {
            path: addr.path.clone(),
            tls: Some(tls::client_config(extra_roots)?),
        },
    })
}

/// Waits for the link to the peer; explains a refusal. Returns the peer's key.
async fn wait_for_link(
    mesh: &MeshHandle,
    peer: &EndpointAddr,
    advice: &str,
    token: &PublicKey,
    pinned: bool,
    known_peers: &KnownKeys,
    wait: Duration,
) -> Result<PublicKey, ClientError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let status = mesh.status().await?;
        if let Some(link) = status.links.first() {
            return Ok(link.key);
        }
        let ended = mesh.last_link_end().await?.unwrap_or_default();
        if ended.contains("closed by peer: untrusted key") {
            return Err(ClientError::Refused {
                peer: peer.clone(),
                token: *token,
                advice: advice.to_owned(),
            });
        }
        if pinned && ended.contains("closed by us: untrusted key") {
            return Err(ClientError::PeerKeyChanged {
                peer: peer.clone(),
                file: known_peers.path().to_owned(),
            });
        }
        if tokio::time::Instant::now() >= deadline {
            let why = if ended.is_empty() {
                "no answer".to_owned()
            } else {
                ended
            };
            return Err(ClientError::Unreachable {
                peer: peer.clone(),
                why,
            });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

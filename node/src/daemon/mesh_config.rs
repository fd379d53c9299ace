//! The mesh's side of a node's config: its link key (warned about when others can read
//! it), the trust policy with authorities and revocations, its own certificate and key
//! succession, link settings, the peers to dial and the listeners to bind. Files are read
//! and checked here, once, before the mesh starts; nothing runs.

use std::path::{Path, PathBuf};

use tokio::net::TcpListener;

use super::{KeyFileError, StartError};
use crate::ca::{Authorities, SignedCertificate, SignedRevocationList};
use crate::client::dial_for;
use crate::config::{Config, LinkCost, ListenConfig, Scheme, TlsConfig};
use crate::keys::{LinkKeypair, SignedSuccession, rotation};
use crate::mesh::driver::{PeerTarget, succession_store};
use crate::mesh::link::LinkConfig;
use crate::mesh::node::MeshConfig;
use crate::mesh::route::Cost;
use crate::mesh::transport::tls::{self, TlsError};
use crate::mesh::transport::{Accept, Dial, Listener};
use crate::mesh::trust::TrustPolicy;

fn cost(c: LinkCost) -> Cost {
    Cost::from_f64(c.as_f64()).unwrap_or(Cost::DEFAULT)
}

/// The mesh settings of a node config.
///
/// # Errors
/// [`StartError::Key`] when the key file cannot be loaded.
pub fn mesh_config(config: &Config) -> Result<MeshConfig, StartError> {
    let keys = LinkKeypair::load(&config.key_file)?;
    warn_if_readable_by_others(&config.key_file);
    let trust = trust_policy(config)?;
    let cert = own_certificate(config, &keys)?;
    let successions = own_successions(config, &keys)?;
    let mut mesh = MeshConfig::new(config.node_id.clone(), keys, trust, crate::clock::now_ms());
    mesh.cert = cert;
    mesh.successions = successions;
    mesh.rng_seed = random_seed();
    mesh.link = LinkConfig {
        keepalive: config.mesh.keepalive,
        idle_timeout: config.mesh.idle_timeout,
        rekey_interval: config.mesh.rekey_interval,
        ..LinkConfig::default()
    };
    mesh.max_hops = config.mesh.max_hops;
    mesh.lsdb.max_first_seen = config.mesh.max_first_seen;
    mesh.link_costs = config
        .link_costs
        .iter()
        .map(|(n, c)| (n.clone(), cost(*c)))
        .collect();
    Ok(mesh)
}

/// A seed from the OS for the node's ids and jitter (a clock-derived seed would make circuit
/// numbers and probe ids guessable).
fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return crate::clock::now_ms();
    }
    u64::from_le_bytes(b)
}

/// The trust entries, authorities and revocation lists of a config, files read and checked.
///
/// # Errors
/// [`StartError::Certificates`] for an unreadable or invalid revocation list.
pub fn trust_policy(config: &Config) -> Result<TrustPolicy, StartError> {
    let mut authorities = Authorities::new(config.certificates.authorities.iter().copied());
    for path in &config.certificates.revocations {
        let bad = |problem: KeyFileError| StartError::Certificates {
            path: path.clone(),
            problem: Box::new(problem),
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.into()))?;
        let list = SignedRevocationList::from_armored(&text).map_err(|e| bad(e.into()))?;
        authorities.revoke(&list).map_err(|e| bad(e.into()))?;
    }
    let store = succession_store::store_path(&config.data_dir);
    let successions =
        succession_store::load(&store).map_err(|source| StartError::SuccessionStore {
            path: store.clone(),
            source,
        })?;
    Ok(TrustPolicy {
        entries: config.trust.clone(),
        authorities,
        successions,
    })
}

/// This node's key succession chain (`<key file>.succession`, written by `warren keygen
/// --rotate`), when it ends at the node's key.
///
/// # Errors
/// [`StartError::KeySuccession`] when the chain file is unreadable or invalid.
pub(crate) fn own_successions(
    config: &Config,
    keys: &LinkKeypair,
) -> Result<Vec<SignedSuccession>, StartError> {
    Ok(rotation::chain_for(&config.key_file, keys)?)
}

/// This node's certificate, checked to be for its id and key and still valid.
fn own_certificate(
    config: &Config,
    keys: &LinkKeypair,
) -> Result<Option<SignedCertificate>, StartError> {
    let Some(path) = &config.certificates.cert else {
        return Ok(None);
    };
    let bad = |problem: KeyFileError| StartError::Certificates {
        path: path.clone(),
        problem: Box::new(problem),
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.into()))?;
    let cert = SignedCertificate::from_armored(&text).map_err(|e| bad(e.into()))?;
    cert.check_binding(&config.node_id, &keys.public(), crate::clock::now_ms())
        .map_err(|source| {
            bad(KeyFileError::NotOurs {
                source,
                node: config.node_id.clone(),
                key: keys.public(),
            })
        })?;
    Ok(Some(cert))
}

/// A private key others can read is a key others may have copied; say so (as ssh does).
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = %format!("{mode:04o}"),
                "private key file is readable by others; run `chmod 600` on it"
            );
        }
    }
}

/// Binds the config's listeners, in order, each with where it is bound.
pub(super) async fn bind_listeners(config: &Config) -> Result<Vec<(Listener, Cost)>, StartError> {
    let mut listeners = Vec::new();
    for listen in &config.listen {
        listeners.push(bind_listener(listen, &config.tls).await?);
    }
    Ok(listeners)
}

/// Binds one listener (with its TLS acceptor for `wss://`).
///
/// # Errors
/// [`StartError::Bind`] or [`StartError::Tls`].
pub(crate) async fn bind_listener(
    listen: &ListenConfig,
    tls_config: &TlsConfig,
) -> Result<(Listener, Cost), StartError> {
    let addr = listen.addr.to_string();
    let tcp = TcpListener::bind((listen.addr.host.as_str(), listen.addr.port))
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let accept = match listen.addr.scheme {
        Scheme::Tcp => Accept::Tcp,
        Scheme::Ws => Accept::Ws {
            path: listen.addr.path.clone(),
            tls: None,
        },
        Scheme::Wss => {
            let (Some(cert), Some(key)) = (&tls_config.cert, &tls_config.key) else {
                return Err(StartError::Tls(TlsError::File {
                    path: PathBuf::from("[tls] cert"),
                    problem: "a wss:// listener needs --tls-cert and --tls-key".into(),
                }));
            };
            Accept::Ws {
                path: listen.addr.path.clone(),
                tls: Some(tls::acceptor(cert, key).map_err(StartError::Tls)?),
            }
        }
    };
    Ok((Listener { tcp, accept }, cost(listen.cost)))
}

/// The peers to dial and how.
///
/// # Errors
/// [`StartError::Tls`] when a `wss://` peer's roots cannot be loaded.
pub(crate) fn peer_targets(config: &Config) -> Result<Vec<(PeerTarget, Dial)>, StartError> {
    (config.peers.iter())
        .map(|p| {
            let target = PeerTarget {
                host: p.addr.host.clone(),
                port: p.addr.port,
                cost: cost(p.cost),
            };
            Ok((target, dial_for(&p.addr, &config.tls.ca)?))
        })
        .collect::<Result<_, TlsError>>()
        .map_err(StartError::Tls)
}

/// The trust policy and this node's certificate, as the config says (files read and
/// checked against the node's key).
///
/// # Errors
/// [`StartError`] for an unreadable key, certificate or revocation list.
pub(crate) fn trust_settings(
    config: &Config,
) -> Result<(TrustPolicy, Option<SignedCertificate>), StartError> {
    let keys = LinkKeypair::load(&config.key_file)?;
    Ok((trust_policy(config)?, own_certificate(config, &keys)?))
}

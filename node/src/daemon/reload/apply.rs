//! Applying a planned reload to the running node's parts: whatever can fail (reading
//! certificates and keys, binding new listeners) is done first, so a failed reload changes
//! nothing; then the mesh, the access policy, the work limits and the offered work types
//! take their new settings.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

use crate::access::AccessPolicy;
use crate::config::{Config, ListenConfig};
use crate::daemon::StartError;
use crate::host::registry::Registry;
use crate::host::runner::Host;
use crate::host::signing::SignerKey;
use crate::mesh::driver::{DriverGone, MeshHandle, Reconfigure};
use crate::mesh::route::Cost;
use crate::mesh::transport::Listener;
use crate::work::server::SignedWork;
use crate::work::{Work, WorkConfig, WorkError};

/// Why a planned reload could not be applied (the reload reply prints it).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A new setting could not be read or bound (certificates, keys, peers, a listener).
    #[error(transparent)]
    Settings(#[from] StartError),
    /// A new listener's address could not be read back.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The mesh node has stopped.
    #[error(transparent)]
    MeshGone(#[from] DriverGone),
    /// The work layer refused the new limits.
    #[error(transparent)]
    Work(#[from] WorkError),
    /// A listener rebound on another cost failed after its old socket was closed.
    #[error("{0} (its old listener is closed)")]
    OldListenerClosed(Box<Self>),
}

/// The running config and the listeners bound for it.
pub(super) struct Running {
    pub(super) config: Config,
    /// The node's link key (`None` in tests that only judge); a rotation replaces it.
    pub(super) key: Option<crate::keys::PublicKey>,
    pub(super) listeners: Vec<LiveListener>,
}

/// A configured listener and the address it is bound to.
#[derive(Debug, Clone)]
pub struct LiveListener {
    /// As configured.
    pub config: ListenConfig,
    /// Where it is bound (port 0 resolved).
    pub addr: SocketAddr,
}

/// The running node's parts that a reload changes.
pub struct Applier {
    /// The mesh: peers, listeners, trust.
    pub mesh: MeshHandle,
    /// Who may do what over the mesh.
    pub access: watch::Sender<Arc<AccessPolicy>>,
    /// Which work signatures are required and trusted.
    pub signed: watch::Sender<SignedWork>,
    /// Whose signatures deployed components need.
    pub signers: watch::Sender<Vec<SignerKey>>,
    /// The work layer's limits and signing key.
    pub work: Work,
    /// The offered work types, rebuilt when their settings change.
    pub registry: watch::Sender<Arc<Registry>>,
    /// Compiles handlers for the rebuilt work types.
    pub host: Arc<Host>,
}

/// The listeners a reload closes, binds now, and binds once the old ones are closed (same
/// address, new cost).
struct ListenerChange {
    close: Vec<LiveListener>,
    keep: Vec<LiveListener>,
    open: Vec<ListenConfig>,
    rebind: Vec<ListenConfig>,
}

impl ListenerChange {
    fn plan(running: &[LiveListener], wanted: &[ListenConfig]) -> Self {
        let (keep, close): (Vec<_>, Vec<_>) =
            (running.iter().cloned()).partition(|l| wanted.contains(&l.config));
        let (rebind, open) = (wanted.iter())
            .filter(|&w| !keep.iter().any(|k| &k.config == w))
            .cloned()
            .partition(|w| close.iter().any(|c| c.config.addr == w.addr));
        Self {
            close,
            keep,
            open,
            rebind,
        }
    }
}

impl Applier {
    /// Applies `changed` settings of `new` to the node whose running state is `running`;
    /// the error says what could not be done (nothing was then changed, but for a listener
    /// re-bound with a new cost, which is named).
    pub(super) async fn apply(
        &self,
        running: &mut Running,
        new: &Config,
        changed: &[&str],
        rotation: Option<super::rotation::Rotation>,
    ) -> Result<(), ApplyError> {
        let has = |setting: &str| changed.contains(&setting);
        // A new key needs its certificate checked (a CA mesh needs one for the new key).
        let trust = match has("trust") || has("certificates") || rotation.is_some() {
            true => Some(crate::daemon::trust_settings(new)?),
            false => None,
        };
        let peers = match has("peer") {
            true => Some(crate::daemon::peer_targets(new)?),
            false => None,
        };
        let signing_key = match has("work") {
            true => Some(crate::daemon::work_signing_key(new)?),
            false => None,
        };
        let listeners =
            has("listen").then(|| ListenerChange::plan(&running.listeners, &new.listen));
        let mut opened = Vec::new();
        for config in listeners.iter().flat_map(|l| &l.open) {
            opened.push(bind(config, new).await?);
        }
        let mut live: Vec<LiveListener> = match &listeners {
            Some(change) => change.keep.clone(),
            None => running.listeners.clone(),
        };
        let mut open_listeners = Vec::new();
        for (addr, bound, config) in opened {
            live.push(LiveListener { config, addr });
            open_listeners.push(bound);
        }
        let change = Reconfigure {
            peers,
            close_listeners: (listeners.iter().flat_map(|l| &l.close))
                .map(|l| l.addr)
                .collect(),
            open_listeners,
            trust,
            keys: rotation.clone(),
        };
        self.mesh.reconfigure(change)?;
        if let Some((keys, _)) = rotation {
            running.key = Some(keys.public());
        }
        let rebinds = listeners.map(|l| l.rebind).unwrap_or_default();
        let (rebound, failed) = self.rebind(rebinds, new).await;
        live.extend(rebound);
        running.listeners = live;
        if has("allow") {
            self.access.send_replace(Arc::new(new.access.clone()));
        }
        if let Some(key) = signing_key {
            self.apply_work(new, key)?;
        }
        if has("signer") {
            self.signers.send_replace(new.signers.clone());
        }
        if has("node.log-level") {
            crate::daemon::apply_log_level(new);
        }
        if has("work-type") || has("signer") || has("ansible-runner") {
            crate::daemon::offer_work_types(
                new.clone(),
                self.host.clone(),
                self.mesh.clone(),
                self.registry.clone(),
            );
        }
        match failed {
            None => Ok(()),
            Some(problem) => Err(problem),
        }
    }

    fn apply_work(
        &self,
        new: &Config,
        signing_key: Option<crate::keys::SigningKeypair>,
    ) -> Result<(), ApplyError> {
        let limits = WorkConfig {
            max_running: new.work.max_running,
            max_payload: new.work.max_payload,
            keep_finished: new.work.keep_finished,
            free_space_floor: new.work.free_space_floor,
            mirror_output: new.work.mirror_output,
            max_units_per_submitter: new.work.max_units_per_submitter,
            ..WorkConfig::default()
        };
        self.work.reconfigure(&limits, signing_key)?;
        self.signed.send_replace(crate::daemon::signed_work(new));
        Ok(())
    }

    /// Binds listeners whose old socket (same address, another cost) was just closed.
    async fn rebind(
        &self,
        configs: Vec<ListenConfig>,
        new: &Config,
    ) -> (Vec<LiveListener>, Option<ApplyError>) {
        let mut live = Vec::new();
        let mut opened = Vec::new();
        for config in configs {
            match bind(&config, new).await {
                Ok((addr, bound, config)) => {
                    live.push(LiveListener { config, addr });
                    opened.push(bound);
                }
                Err(problem) => {
                    let _ = self.mesh.reconfigure(Reconfigure {
                        open_listeners: opened,
                        ..Reconfigure::default()
                    });
                    return (live, Some(ApplyError::OldListenerClosed(Box::new(problem))));
                }
            }
        }
        let _ = self.mesh.reconfigure(Reconfigure {
            open_listeners: opened,
            ..Reconfigure::default()
        });
        (live, None)
    }
}

/// Binds one listener; its bound address, the listener, and its config.
async fn bind(
    config: &ListenConfig,
    new: &Config,
) -> Result<(SocketAddr, (Listener, Cost), ListenConfig), ApplyError> {
    let (listener, cost) = crate::daemon::bind_listener(config, &new.tls).await?;
    let addr = listener.tcp.local_addr()?;
    Ok((addr, (listener, cost), config.clone()))
}

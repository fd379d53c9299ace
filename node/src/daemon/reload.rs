//! `reload` (and SIGHUP): re-read the node's config and apply what changed.
//!
//! A reload re-reads the config the way the node was started (the file, then the flags
//! given with it) and compares it with the running one. Peers, listeners, trust and
//! certificates, allow rules, work limits and signing, and the offered work types change
//! live, without touching unaffected links or running jobs (`apply`). Settings a running
//! node cannot change (its id, data dir, key, control socket, mesh tuning, link costs,
//! metrics and TLS) are named with Receptor's error code for "restart needed", and then
//! nothing is applied: a reload never claims a change it did not make. Each applied reload
//! raises the config generation shown in `status`. A key file rotated with `warren keygen
//! --rotate` is adopted live (`rotation`): links and jobs running under the old key go on.

mod apply;
mod rotation;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::{Config, ConfigError};
use crate::control::reply::ReloadReply;
use crate::control::reply::reload::{ERRORCODE_BAD_CONFIG, ERRORCODE_NOT_RELOADABLE};
use crate::keys::PublicKey;

pub use apply::{Applier, ApplyError, LiveListener};

/// Rebuilds the node's config from where it came from (the config file and the flags given
/// with it).
pub type ConfigSource = Arc<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// Settings a reload applies to the running node, as the config file names them.
const RELOADABLE: &[&str] = &[
    "listen",
    "peer",
    "trust",
    "certificates",
    "allow",
    "work",
    "work-type",
    "signer",
    "ansible-runner",
    "node.log-level",
];

/// The running config, where to re-read it from, and how to apply a new one.
#[derive(Clone)]
pub struct Reloader {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None` when the node was started from flags only: there is nothing to re-read.
    source: Option<ConfigSource>,
    /// The running config and listeners; held across a reload, so reloads run one at a time.
    state: tokio::sync::Mutex<apply::Running>,
    generation: AtomicU64,
    /// `None` in tests that only judge.
    applier: Option<Applier>,
}

impl fmt::Debug for Reloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloader")
            .field("has_source", &self.inner.source.is_some())
            .field("generation", &self.generation())
            .finish()
    }
}

impl Reloader {
    /// A reloader for a node running `running` with link key `key` and `listeners` bound,
    /// re-read from `source`, applying through `applier`. Without `key` (tests that only
    /// judge), the key file is not looked at.
    pub fn new(
        running: Config,
        key: Option<PublicKey>,
        listeners: Vec<LiveListener>,
        source: Option<ConfigSource>,
        applier: Option<Applier>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                source,
                state: tokio::sync::Mutex::new(apply::Running {
                    config: running,
                    key,
                    listeners,
                }),
                generation: AtomicU64::new(0),
                applier,
            }),
        }
    }

    /// How many reloads changed the running config since the node started.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Relaxed)
    }

    /// The running config.
    pub async fn current(&self) -> Config {
        self.inner.state.lock().await.config.clone()
    }

    /// Re-reads the config and applies what changed; the answer for `reload`.
    pub async fn reload(&self) -> ReloadReply {
        let loaded = match self.inner.source.clone() {
            Some(source) => match tokio::task::spawn_blocking(move || source()).await {
                Ok(loaded) => Some(loaded),
                Err(e) => {
                    return ReloadReply::Failed {
                        message: format!("reading the config failed: {e}"),
                        code: ERRORCODE_BAD_CONFIG,
                    };
                }
            },
            None => None,
        };
        let mut state = self.inner.state.lock().await;
        let planned = match loaded {
            Some(loaded) => match plan(&state.config, loaded) {
                Ok(planned) => planned,
                Err(refused) => return refused,
            },
            None => {
                tracing::info!("reload: started from flags only; only the key file is re-read");
                None
            }
        };
        let key_config = planned.as_ref().map_or(&state.config, |(new, _)| new);
        let rotation = match &state.key {
            Some(running) => match rotation::plan(running, key_config) {
                Ok(rotation) => rotation,
                Err(refused) => return refused,
            },
            None => None,
        };
        let (new, mut changed) = match (planned, &rotation) {
            (Some(planned), _) => planned,
            (None, None) => return ReloadReply::Applied,
            (None, Some(_)) => (state.config.clone(), Vec::new()),
        };
        if rotation.is_some() {
            changed.push("node.key");
        }
        let Some(applier) = &self.inner.applier else {
            return not_reloadable(&changed);
        };
        match applier.apply(&mut state, &new, &changed, rotation).await {
            Ok(()) => {
                state.config = new;
                let generation = self.inner.generation.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::info!(changed = %changed.join(", "), generation, "reload applied");
                ReloadReply::Applied
            }
            Err(problem) => {
                tracing::warn!(%problem, "reload not applied");
                ReloadReply::Failed {
                    message: format!("{problem}; nothing was changed"),
                    code: ERRORCODE_BAD_CONFIG,
                }
            }
        }
    }
}

/// What a re-read config asks for: `Ok(None)` when it equals the running one; the new config
/// and the names of the changed settings when all of them can change live; otherwise the
/// answer (error code 4 when unreadable, 3 naming the settings that need a restart).
pub fn plan(
    running: &Config,
    reloaded: Result<Config, ConfigError>,
) -> Result<Option<(Config, Vec<&'static str>)>, ReloadReply> {
    let reloaded = match reloaded {
        Ok(config) => config,
        Err(e) => {
            tracing::warn!(error = %e, "reload: config not usable");
            return Err(ReloadReply::Failed {
                message: e.to_string(),
                code: ERRORCODE_BAD_CONFIG,
            });
        }
    };
    let changed = changed_settings(running, &reloaded);
    if changed.is_empty() {
        tracing::info!("reload: config unchanged");
        return Ok(None);
    }
    let fixed: Vec<&str> = (changed.iter().copied())
        .filter(|c| !RELOADABLE.contains(c))
        .collect();
    if !fixed.is_empty() {
        return Err(not_reloadable(&fixed));
    }
    Ok(Some((reloaded, changed)))
}

fn not_reloadable(settings: &[&str]) -> ReloadReply {
    let list = settings.join(", ");
    tracing::warn!(changed = %list, "reload: changes need a restart; nothing applied");
    ReloadReply::Failed {
        message: format!(
            "changed settings cannot be applied while running ({list}); restart the node (nothing was changed)"
        ),
        code: ERRORCODE_NOT_RELOADABLE,
    }
}

/// The names of the settings that differ, as the config file spells them.
fn changed_settings(old: &Config, new: &Config) -> Vec<&'static str> {
    let checks = [
        (old.node_id != new.node_id, "node.id"),
        (old.data_dir != new.data_dir, "node.data-dir"),
        (old.key_file != new.key_file, "node.key-file"),
        (old.listen != new.listen, "listen"),
        (old.peers != new.peers, "peer"),
        (old.trust != new.trust, "trust"),
        (old.link_costs != new.link_costs, "link-costs"),
        (old.control != new.control, "control"),
        (old.mesh != new.mesh, "mesh"),
        (old.work != new.work, "work"),
        (old.work_types != new.work_types, "work-type"),
        (old.signers != new.signers, "signer"),
        (old.ansible_runner != new.ansible_runner, "ansible-runner"),
        (old.certificates != new.certificates, "certificates"),
        (old.access != new.access, "allow"),
        (old.metrics != new.metrics, "metrics"),
        (old.tls != new.tls, "tls"),
        (old.log_level != new.log_level, "node.log-level"),
    ];
    checks
        .into_iter()
        .filter_map(|(changed, name)| changed.then_some(name))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::{EndpointAddr, LinkCost, PeerConfig};
    use crate::id::NodeId;

    fn config() -> Config {
        Config {
            node_id: NodeId::new("n1").unwrap(),
            data_dir: PathBuf::from("/tmp/d"),
            key_file: PathBuf::from("/tmp/k"),
            listen: Vec::new(),
            peers: Vec::new(),
            trust: Vec::new(),
            link_costs: Default::default(),
            control: Default::default(),
            certificates: Default::default(),
            access: Default::default(),
            mesh: Default::default(),
            work: Default::default(),
            work_types: Vec::new(),
            signers: Vec::new(),
            ansible_runner: Default::default(),
            metrics: None,
            tls: Default::default(),
            log_level: None,
        }
    }

    #[tokio::test]
    async fn unchanged_config_is_success() {
        assert!(matches!(plan(&config(), Ok(config())), Ok(None)));
        let flags_only = Reloader::new(config(), None, Vec::new(), None, None);
        assert_eq!(flags_only.reload().await, ReloadReply::Applied);
        assert_eq!(flags_only.generation(), 0);
    }

    #[test]
    fn live_changes_are_planned_and_restart_changes_named_with_errorcode_3() {
        let mut new = config();
        new.peers.push(PeerConfig {
            addr: "127.0.0.1:9".parse::<EndpointAddr>().unwrap(),
            cost: LinkCost::default(),
        });
        let Ok(Some((_, changed))) = plan(&config(), Ok(new.clone())) else {
            panic!("a new peer is applied live");
        };
        assert_eq!(changed, ["peer"]);
        new.data_dir = PathBuf::from("/elsewhere");
        let Err(ReloadReply::Failed { message, code }) = plan(&config(), Ok(new)) else {
            panic!("a new data dir must not be reported as applied");
        };
        assert_eq!(code, 3);
        assert!(message.contains("(node.data-dir)"), "{message}");
        assert!(message.contains("nothing was changed"), "{message}");
    }

    #[tokio::test]
    async fn unreadable_config_is_errorcode_4() {
        let source: ConfigSource = Arc::new(|| {
            Err(ConfigError::NotFound {
                path: PathBuf::from("/nope.toml"),
            })
        });
        let reloader = Reloader::new(config(), None, Vec::new(), Some(source), None);
        let ReloadReply::Failed { code, .. } = reloader.reload().await else {
            panic!("an unreadable config must fail");
        };
        assert_eq!(code, 4);
    }
}

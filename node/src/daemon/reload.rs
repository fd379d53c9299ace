//! `reload`: re-read the node's config and judge what changed.
//!
//! Warren applies its config once, at start; nothing in it can yet be changed on a running
//! node. So a reload re-reads the config the way the node was started (the file, then the
//! flags given with it), answers success when nothing changed, and names the changed
//! settings otherwise, with Receptor's error code for a change that needs a restart. It
//! never claims a change it did not apply.

use std::fmt;
use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::control::reply::ReloadReply;
use crate::control::reply::reload::{ERRORCODE_BAD_CONFIG, ERRORCODE_NOT_RELOADABLE};

/// Rebuilds the node's config from where it came from (the config file and the flags given
/// with it).
pub type ConfigSource = Arc<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// The running config and where to re-read it from.
#[derive(Clone)]
pub struct Reloader {
    running: Config,
    /// `None` when the node was started from flags only: there is nothing to re-read.
    source: Option<ConfigSource>,
}

impl fmt::Debug for Reloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloader")
            .field("node", &self.running.node_id)
            .field("has_source", &self.source.is_some())
            .finish()
    }
}

impl Reloader {
    /// A reloader for a node running `running`, re-read from `source`.
    pub fn new(running: Config, source: Option<ConfigSource>) -> Self {
        Self { running, source }
    }

    /// Re-reads the config (file IO: call off the async threads) and judges it.
    pub fn reload(&self) -> ReloadReply {
        match &self.source {
            None => ReloadReply::Applied,
            Some(source) => judge(&self.running, source()),
        }
    }
}

/// The answer for a re-read config: success when it equals the running one, error code 4
/// when it cannot be read, error code 3 naming the changed settings otherwise.
pub fn judge(running: &Config, reloaded: Result<Config, ConfigError>) -> ReloadReply {
    let reloaded = match reloaded {
        Ok(config) => config,
        Err(e) => {
            tracing::warn!(error = %e, "reload: config not usable");
            return ReloadReply::Failed {
                message: e.to_string(),
                code: ERRORCODE_BAD_CONFIG,
            };
        }
    };
    let changed = changed_settings(running, &reloaded);
    if changed.is_empty() {
        tracing::info!("reload: config unchanged");
        return ReloadReply::Applied;
    }
    let list = changed.join(", ");
    tracing::warn!(changed = %list, "reload: changes need a restart; nothing applied");
    ReloadReply::Failed {
        message: format!(
            "changed settings cannot be applied while running ({list}); restart the node"
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
        }
    }

    #[test]
    fn unchanged_config_is_success() {
        assert_eq!(judge(&config(), Ok(config())), ReloadReply::Applied);
        let flags_only = Reloader::new(config(), None);
        assert_eq!(flags_only.reload(), ReloadReply::Applied);
    }

    #[test]
    fn changes_are_named_with_errorcode_3() {
        let mut new = config();
        new.peers.push(PeerConfig {
            addr: "127.0.0.1:9".parse::<EndpointAddr>().unwrap(),
            cost: LinkCost::default(),
        });
        new.data_dir = PathBuf::from("/elsewhere");
        let ReloadReply::Failed { message, code } = judge(&config(), Ok(new)) else {
            panic!("a changed config must not be reported as applied");
        };
        assert_eq!(code, 3);
        assert!(message.contains("(node.data-dir, peer)"), "{message}");
    }

    #[test]
    fn unreadable_config_is_errorcode_4() {
        let source: ConfigSource = Arc::new(|| {
            Err(ConfigError::NotFound {
                path: PathBuf::from("/nope.toml"),
            })
        });
        let ReloadReply::Failed { code, .. } = Reloader::new(config(), Some(source)).reload()
        else {
            panic!("an unreadable config must fail");
        };
        assert_eq!(code, 4);
    }
}

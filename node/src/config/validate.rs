//! Checks across settings, run on every [`Config`] however it was built (file, flags, or
//! both): each value is already valid on its own; here they must also agree.

use std::collections::BTreeSet;

use crate::host::signing::SignerKey;

use super::error::{ConfigError, Origin, Problem};
use super::{ANSIBLE_RUNNER_WORK_TYPE, Config, HandlerKind, TrustEntry};

/// A setting that a cross-check found at fault, named for the file and for the flags.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Setting {
    Listen(usize),
    Peer(usize),
    Trust(usize),
    LinkCost(String),
    IdleTimeout,
    WorkTypeName(usize),
    WorkTypeHandler(usize),
}

impl Setting {
    fn file_key(&self) -> String {
        match self {
            Self::Listen(i) => format!("[[listen]] #{} address", i + 1),
            Self::Peer(i) => format!("[[peer]] #{} address", i + 1),
            Self::Trust(i) => format!("[[trust]] #{} key", i + 1),
            Self::LinkCost(node) => format!("[link-costs] {node}"),
            Self::IdleTimeout => "[mesh] idle-timeout-seconds".to_owned(),
            Self::WorkTypeName(i) => format!("[[work-type]] #{} name", i + 1),
            Self::WorkTypeHandler(i) => format!("[[work-type]] #{} handler", i + 1),
        }
    }

    fn key(&self, origin: &Origin) -> String {
        let flag = match self {
            Self::Listen(_) => "--listen",
            Self::Peer(_) => "--peer",
            Self::Trust(_) => "--trust",
            Self::LinkCost(_) => "--cost",
            Self::WorkTypeName(_) | Self::WorkTypeHandler(_) => "--work-type",
            Self::IdleTimeout => return self.file_key(),
        };
        match origin {
            Origin::File { .. } => self.file_key(),
            Origin::Flags => flag.to_owned(),
            Origin::FileAndFlags { .. } => {
                let file_key = self.file_key();
                let section = file_key.split(" #").next().unwrap_or(&file_key);
                format!("{section} / {flag}")
            }
        }
    }
}

/// Runs the cross-checks and drops exact duplicate trust entries and signers.
///
/// # Errors
/// [`ConfigError::Invalid`] naming `origin` and the first setting at fault.
pub(super) fn check(mut config: Config, origin: Origin) -> Result<Config, ConfigError> {
    let result = check_mesh(&config)
        .and_then(|()| check_addresses(&config))
        .and_then(|()| check_link_costs(&config))
        .and_then(|()| check_work_types(&config))
        .and_then(|()| dedupe_trust(&mut config.trust));
    dedupe_signers(&mut config.signers);
    dedupe_signers(&mut config.certificates.authorities);
    match result {
        Ok(()) => Ok(config),
        Err((setting, problem)) => Err(ConfigError::invalid(
            origin.clone(),
            setting.key(&origin),
            problem,
        )),
    }
}

type Fault = (Setting, Problem);

fn check_mesh(config: &Config) -> Result<(), Fault> {
    let mesh = &config.mesh;
    if mesh.idle_timeout <= mesh.keepalive {
        return Err((
            Setting::IdleTimeout,
            Problem::IdleNotAboveKeepalive {
                idle: mesh.idle_timeout,
                keepalive: mesh.keepalive,
            },
        ));
    }
    Ok(())
}

fn check_addresses(config: &Config) -> Result<(), Fault> {
    let listen = config.listen.iter().map(|l| &l.addr);
    if let Some((i, addr)) = first_repeat(listen) {
        return Err((Setting::Listen(i), Problem::DuplicateAddress { addr }));
    }
    let tls = &config.tls;
    if let Some(i) = (config.listen.iter()).position(|l| l.addr.scheme == super::Scheme::Wss)
        && (tls.cert.is_none() || tls.key.is_none())
    {
        return Err((Setting::Listen(i), Problem::WssNeedsCertificate));
    }
    let peers = config.peers.iter().map(|p| &p.addr);
    if let Some((i, addr)) = first_repeat(peers) {
        return Err((Setting::Peer(i), Problem::DuplicateAddress { addr }));
    }
    Ok(())
}

fn first_repeat<'a, T: Ord + Clone + 'a>(items: impl Iterator<Item = &'a T>) -> Option<(usize, T)> {
    let mut seen = BTreeSet::new();
    items
        .enumerate()
        .find(|(_, item)| !seen.insert(*item))
        .map(|(i, item)| (i, item.clone()))
}

fn check_link_costs(config: &Config) -> Result<(), Fault> {
    if config.link_costs.contains_key(&config.node_id) {
        return Err((
            Setting::LinkCost(config.node_id.to_string()),
            Problem::CostToSelf {
                node: config.node_id.clone(),
            },
        ));
    }
    Ok(())
}

/// Work type names are unique; ansible-runner work needs ansible-runner enabled and its
/// default name stays free while it is; component work needs a signer to verify it.
fn check_work_types(config: &Config) -> Result<(), Fault> {
    let names = config.work_types.iter().map(|w| &w.name);
    if let Some((i, name)) = first_repeat(names) {
        return Err((
            Setting::WorkTypeName(i),
            Problem::DuplicateWorkType { name },
        ));
    }
    let runner_enabled = config.ansible_runner.enabled;
    for (i, work) in config.work_types.iter().enumerate() {
        let problem = match &work.handler {
            HandlerKind::AnsibleRunner if !runner_enabled => {
                (Setting::WorkTypeHandler(i), Problem::AnsibleRunnerDisabled)
            }
            HandlerKind::Component { .. } if config.signers.is_empty() => {
                (Setting::WorkTypeHandler(i), Problem::NoSigner)
            }
            HandlerKind::Command { .. } | HandlerKind::Component { .. }
                if runner_enabled && work.name == ANSIBLE_RUNNER_WORK_TYPE =>
            {
                let name = work.name.clone();
                (
                    Setting::WorkTypeName(i),
                    Problem::AnsibleRunnerClash { name },
                )
            }
            _ => continue,
        };
        return Err(problem);
    }
    Ok(())
}

/// Keeps the first of each signer.
fn dedupe_signers(signers: &mut Vec<SignerKey>) {
    let mut seen = BTreeSet::new();
    signers.retain(|key| seen.insert(*key));
}

/// Keeps the first of exact duplicates; a key trusted under two pins is an error.
fn dedupe_trust(trust: &mut Vec<TrustEntry>) -> Result<(), Fault> {
    let mut kept: Vec<TrustEntry> = Vec::with_capacity(trust.len());
    for (i, entry) in trust.drain(..).enumerate() {
        match kept.iter().find(|k| k.key == entry.key) {
            None => kept.push(entry),
            Some(first) if first.node == entry.node => {}
            Some(first) => {
                let problem = Problem::TrustConflict {
                    key: entry.key,
                    first: first.node.clone(),
                    second: entry.node,
                };
                return Err((Setting::Trust(i), problem));
            }
        }
    }
    *trust = kept;
    Ok(())
}

//! Switching a work type to a newly deployed component: verify, check it against each
//! affected work type's policy, compile, and build the registry that replaces the current
//! one. Pure with respect to the node: the caller publishes the new registry, so a refusal
//! changes nothing.

use std::sync::Arc;
use std::time::SystemTime;

use super::component::{ComponentError, ComponentInfo, check_args, check_capabilities};
use super::policy::Policy;
use super::registry::{ActiveHandler, Registry};
use super::runner::Host;
use super::signing::{SignedManifest, SignerKey, unix_secs, verify};

/// Largest component accepted for deployment.
pub const MAX_COMPONENT_LEN: u64 = 64 << 20;

/// Why a deploy was refused.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The component failed a check.
    #[error(transparent)]
    Component(#[from] ComponentError),
    /// No offered work type is among those the component is signed for.
    #[error(
        "component {name} is signed for {signed:?}, but this node offers none of them (it offers {offered:?})"
    )]
    NoWorkType {
        /// The component.
        name: String,
        /// What it is signed for.
        signed: Vec<String>,
        /// What the node offers.
        offered: Vec<String>,
    },
    /// The component is larger than [`MAX_COMPONENT_LEN`].
    #[error("component of {len} bytes exceeds the limit of {MAX_COMPONENT_LEN} bytes")]
    TooLarge {
        /// Its length.
        len: u64,
    },
    /// The component is not newer than what a work type runs: versions only go forward, so
    /// an old signed component cannot be rolled back in.
    #[error(
        "component {name} version {offered} is not newer than version {active} that work type \
         {work_type} runs; deploy a newer version"
    )]
    NotNewer {
        /// The component.
        name: String,
        /// Its version.
        offered: String,
        /// The work type.
        work_type: String,
        /// The version it runs now.
        active: String,
    },
}

/// Orders two component versions: dot- (or dash-) separated parts, numbers compared as
/// numbers (`1.10.0` is newer than `1.9.0`), other parts as text.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |v: &str| -> Vec<String> { v.split(['.', '-', '+']).map(str::to_owned).collect() };
    let (pa, pb) = (parts(a), parts(b));
    for (x, y) in pa.iter().zip(&pb) {
        let order = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            _ => x.cmp(y),
        };
        if order.is_ne() {
            return order;
        }
    }
    pa.len().cmp(&pb.len())
}

/// The programs and variables granted by any of `policies`.
fn union<'a>(policies: impl Iterator<Item = &'a Policy>) -> Policy {
    let mut all = Policy::default();
    for policy in policies {
        all.programs.extend(policy.programs.clone());
        all.env_allow.extend(policy.env_allow.iter().cloned());
    }
    all
}

/// What a deploy made active.
#[derive(Debug, Clone)]
pub struct Deployed {
    /// The component now active.
    pub info: ComponentInfo,
    /// The work types switched to it.
    pub work_types: Vec<String>,
}

/// Verifies `bytes` against `signature` and builds the registry in which every offered work
/// type the component is signed for (by work type name, or by handler name such as
/// `ansible-runner` or `command`) runs it.
///
/// # Errors
/// [`DeployError`] naming the first failed check; the current registry is untouched.
pub fn apply(
    host: &Host,
    current: &Registry,
    signers: &[SignerKey],
    bytes: &[u8],
    signature: &SignedManifest,
) -> Result<(Registry, Deployed), DeployError> {
    let len = bytes.len() as u64;
    if len > MAX_COMPONENT_LEN {
        return Err(DeployError::TooLarge { len });
    }
    let manifest = verify(bytes, signature, signers, unix_secs(SystemTime::now()))
        .map_err(ComponentError::from)?;
    let signed_for = |a: &ActiveHandler| {
        manifest
            .work_types
            .iter()
            .any(|w| *w == a.work_type || w == a.handler_name())
    };
    let affected: Vec<Arc<ActiveHandler>> =
        current.iter().filter(|a| signed_for(a)).cloned().collect();
    if affected.is_empty() {
        return Err(DeployError::NoWorkType {
            name: manifest.name.clone(),
            signed: manifest.work_types.clone(),
            offered: current.names(),
        });
    }
    // What the component asks for must fit what the node grants the work types it takes
    // over; each job stays limited to its own work type's policy when it runs.
    let granted = union(affected.iter().map(|a| a.policy.as_ref()));
    let names: Vec<&str> = affected.iter().map(|a| a.work_type.as_str()).collect();
    check_capabilities(manifest, &names.join(", "), &granted)?;
    // Versions only go forward (redeploying the very same component is harmless).
    for active in &affected {
        let same = active.info.sha256 == manifest.sha256;
        if !same && compare_versions(&manifest.version, &active.info.version).is_le() {
            return Err(DeployError::NotNewer {
                name: manifest.name.clone(),
                offered: manifest.version.clone(),
                work_type: active.work_type.clone(),
                active: active.info.version.clone(),
            });
        }
    }
    // Arguments are held to each work type's own policy: the component runs under each.
    for active in &affected {
        check_args(manifest, &active.work_type, &active.policy)?;
    }
    let handler = host.load(bytes).map_err(ComponentError::from)?;
    let info = ComponentInfo {
        name: manifest.name.clone(),
        version: manifest.version.clone(),
        sha256: manifest.sha256,
        signer: Some(signature.signer),
    };
    let mut next = current.clone();
    for active in &affected {
        next.insert(ActiveHandler {
            work_type: active.work_type.clone(),
            task: active.task.clone(),
            handler: handler.clone(),
            policy: active.policy.clone(),
            info: info.clone(),
            allow_runtime_params: active.allow_runtime_params,
        });
    }
    let work_types = affected.iter().map(|a| a.work_type.clone()).collect();
    Ok((next, Deployed { info, work_types }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering;

    #[test]
    fn versions_compare_by_number() {
        assert_eq!(compare_versions("1.10.0", "1.9.0"), Ordering::Greater);
        assert_eq!(compare_versions("2.0.0", "2.0.0"), Ordering::Equal);
        assert_eq!(compare_versions("0.1.0", "1.0.0"), Ordering::Less);
        assert_eq!(compare_versions("1.0", "1.0.1"), Ordering::Less);
        assert_eq!(
            compare_versions("1.0.0-beta", "1.0.0-alpha"),
            Ordering::Greater
        );
    }
}

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
            .any(|w| *w == a.work_type || *w == a.handler_name)
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
            handler_name: active.handler_name.clone(),
            handler: handler.clone(),
            policy: active.policy.clone(),
            info: info.clone(),
            fixed_params: active.fixed_params.clone(),
            allow_runtime_params: active.allow_runtime_params,
        });
    }
    let work_types = affected.iter().map(|a| a.work_type.clone()).collect();
    Ok((next, Deployed { info, work_types }))
}

//! Which components may run here: a built-in component is trusted as part of the binary;
//! any other (loaded from disk or deployed) runs only if a trusted signer signed it, its
//! hash and length match, it is within its validity window, its requested capabilities fit
//! the work type's policy, and its actual imports are ones the world allows.

use std::time::SystemTime;

use super::policy::Policy;
use super::runner::{Handler, Host, HostError, hex};
use super::signing::{Manifest, SignedManifest, SignerKey, VerifyError, unix_secs, verify};

/// What vouches for a component, for status and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentInfo {
    /// The component's name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// sha256 of its bytes.
    pub sha256: [u8; 32],
    /// Who signed it; `None` for a component built into the binary.
    pub signer: Option<SignerKey>,
}

impl ComponentInfo {
    /// The hash as 64 hex digits.
    pub fn sha256_hex(&self) -> String {
        hex(&self.sha256)
    }

    /// The signer's token, or `built-in`.
    pub fn signer_label(&self) -> String {
        self.signer
            .as_ref()
            .map_or_else(|| "built-in".to_owned(), ToString::to_string)
    }
}

/// Why a component was refused. Nothing changes on the node when this is returned.
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    /// The signature does not check out.
    #[error("signature check failed: {0}")]
    Signature(#[from] VerifyError),
    /// The manifest asks for a program this work type's policy does not grant.
    #[error(
        "component {name} asks for program {program:?}, which work type {work_type} does not allow"
    )]
    ProgramNotGranted {
        /// The component.
        name: String,
        /// The work type.
        work_type: String,
        /// The program asked for.
        program: String,
    },
    /// The manifest asks for an environment variable the policy does not pass.
    #[error(
        "component {name} asks for environment variable {var:?}, which work type {work_type} does not pass"
    )]
    EnvNotGranted {
        /// The component.
        name: String,
        /// The work type.
        work_type: String,
        /// The variable.
        var: String,
    },
    /// The manifest declares arguments for a program beyond what the work type allows.
    #[error(
        "component {name} asks to run {program:?} with arguments work type {work_type} does not allow: {reason}"
    )]
    ArgsTooBroad {
        /// The component.
        name: String,
        /// The work type.
        work_type: String,
        /// The program.
        program: String,
        /// What is broader than the node allows.
        reason: Box<super::args::TooBroad>,
    },
    /// The manifest does not cover this work type.
    #[error("component {name} is signed for work types {signed:?}, not {work_type}")]
    NotForWorkType {
        /// The component.
        name: String,
        /// The work type.
        work_type: String,
        /// What it is signed for.
        signed: Vec<String>,
    },
    /// The component does not compile or link, or imports what the world does not allow.
    #[error(transparent)]
    Host(#[from] HostError),
}

/// Verifies a signed component for `work_type` under `policy`, then compiles and links it.
///
/// # Errors
/// [`ComponentError`] naming the first check that failed.
pub fn load_signed(
    host: &Host,
    bytes: &[u8],
    signature: &SignedManifest,
    signers: &[SignerKey],
    work_type: &str,
    work_type_aliases: &[&str],
    policy: &Policy,
) -> Result<(Handler, ComponentInfo), ComponentError> {
    let manifest = verify(bytes, signature, signers, unix_secs(SystemTime::now()))?;
    let covered = manifest
        .work_types
        .iter()
        .any(|w| w == work_type || work_type_aliases.contains(&w.as_str()));
    if !covered {
        return Err(ComponentError::NotForWorkType {
            name: manifest.name.clone(),
            work_type: work_type.to_owned(),
            signed: manifest.work_types.clone(),
        });
    }
    check_capabilities(manifest, work_type, policy)?;
    check_args(manifest, work_type, policy)?;
    let handler = host.load(bytes)?;
    let info = ComponentInfo {
        name: manifest.name.clone(),
        version: manifest.version.clone(),
        sha256: manifest.sha256,
        signer: Some(signature.signer),
    };
    Ok((handler, info))
}

/// Whether what the manifest asks for fits what the work type's policy grants: its
/// programs and variables.
///
/// # Errors
/// [`ComponentError::ProgramNotGranted`] or [`ComponentError::EnvNotGranted`].
pub fn check_capabilities(
    manifest: &Manifest,
    work_type: &str,
    policy: &Policy,
) -> Result<(), ComponentError> {
    let caps = &manifest.capabilities;
    if let Some(program) = caps
        .programs
        .iter()
        .find(|p| p.as_str() != "*" && !policy.programs.contains_key(p.as_str()))
    {
        return Err(ComponentError::ProgramNotGranted {
            name: manifest.name.clone(),
            work_type: work_type.to_owned(),
            program: program.clone(),
        });
    }
    if let Some(var) = caps.env.iter().find(|v| !policy.env_allow.contains(*v)) {
        return Err(ComponentError::EnvNotGranted {
            name: manifest.name.clone(),
            work_type: work_type.to_owned(),
            var: var.clone(),
        });
    }
    Ok(())
}

/// Whether the arguments the manifest declares fit the work type's argument policies:
/// each declared program's arguments must be ones the policy allows. A declaration for a
/// program the work type does not grant, or grants with any arguments, constrains nothing.
///
/// # Errors
/// [`ComponentError::ArgsTooBroad`] naming the program and what is too broad.
pub fn check_args(
    manifest: &Manifest,
    work_type: &str,
    policy: &Policy,
) -> Result<(), ComponentError> {
    for (program, declared) in &manifest.capabilities.args {
        let Some(allowed) = policy.args.get(program) else {
            continue;
        };
        allowed
            .covers(declared)
            .map_err(|reason| ComponentError::ArgsTooBroad {
                name: manifest.name.clone(),
                work_type: work_type.to_owned(),
                program: program.clone(),
                reason: Box::new(reason),
            })?;
    }
    Ok(())
}

/// Interfaces a work handler may import: the `warren:worker` world's own and the parts of
/// WASI that the host limits to the job directory. Sockets and anything else are refused.
pub const ALLOWED_IMPORT_PACKAGES: [&str; 6] = [
    "warren:worker/",
    "wasi:io/",
    "wasi:cli/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:filesystem/",
];

/// The first import not in [`ALLOWED_IMPORT_PACKAGES`], if any.
pub fn forbidden_import<'a>(imports: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    imports
        .into_iter()
        .find(|name| !ALLOWED_IMPORT_PACKAGES.iter().any(|p| name.starts_with(p)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::signing::Capabilities;

    fn manifest(programs: &[&str], env: &[&str]) -> Manifest {
        Manifest {
            name: "x".into(),
            version: "1".into(),
            work_types: vec!["cat".into()],
            sha256: [0; 32],
            length: 0,
            capabilities: Capabilities {
                programs: programs.iter().map(|s| (*s).to_owned()).collect(),
                env: env.iter().map(|s| (*s).to_owned()).collect(),
                args: Default::default(),
            },
            issued_at: 0,
            expires_at: 0,
        }
    }

    #[test]
    fn capabilities_must_fit_the_policy() {
        let policy = Policy {
            programs: [("cat".to_owned(), "/bin/cat".into())].into(),
            env_allow: ["LANG".to_owned()].into(),
            ..Policy::default()
        };
        assert!(check_capabilities(&manifest(&["cat"], &["LANG"]), "cat", &policy).is_ok());
        assert!(check_capabilities(&manifest(&["*"], &[]), "cat", &policy).is_ok());
        assert!(matches!(
            check_capabilities(&manifest(&["sh"], &[]), "cat", &policy),
            Err(ComponentError::ProgramNotGranted { .. })
        ));
        assert!(matches!(
            check_capabilities(&manifest(&[], &["AWS_SECRET"]), "cat", &policy),
            Err(ComponentError::EnvNotGranted { .. })
        ));
    }

    #[test]
    fn declared_arguments_must_fit_the_program_policy() {
        use crate::host::args::ArgPolicy;
        let job_paths: ArgPolicy = serde_json::from_str(r#"{"allow":["{job-path}"]}"#).unwrap();
        let policy = Policy {
            programs: [("cat".to_owned(), "/bin/cat".into())].into(),
            args: [("cat".to_owned(), job_paths.clone())].into(),
            ..Policy::default()
        };
        let mut m = manifest(&["cat"], &[]);
        assert!(check_args(&m, "cat", &policy).is_ok(), "nothing declared");
        m.capabilities.args.insert("cat".into(), job_paths);
        assert!(
            check_args(&m, "cat", &policy).is_ok(),
            "as narrow as the node"
        );
        m.capabilities
            .args
            .insert("cat".into(), ArgPolicy::default());
        let err = check_args(&m, "cat", &policy).unwrap_err();
        assert!(matches!(err, ComponentError::ArgsTooBroad { .. }));
        assert!(
            err.to_string()
                .contains("asks to run \"cat\" with arguments work type cat does not allow"),
            "{err}"
        );
        // A program the work type does not restrict (or grant) is not judged here.
        let mut m = manifest(&["*"], &[]);
        m.capabilities
            .args
            .insert("sh".into(), ArgPolicy::default());
        assert!(check_args(&m, "cat", &policy).is_ok());
    }

    #[test]
    fn network_imports_are_forbidden() {
        let ok = ["wasi:io/streams@0.2.12", "warren:worker/process@0.1.0"];
        assert_eq!(forbidden_import(ok), None);
        let bad = ["wasi:io/streams@0.2.12", "wasi:sockets/tcp@0.2.0"];
        assert_eq!(forbidden_import(bad), Some("wasi:sockets/tcp@0.2.0"));
    }
}

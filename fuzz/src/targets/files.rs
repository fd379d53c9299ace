//! Files a user or a deployer hands the node: the TOML config, component signature files
//! (and the manifest a component embeds), certificates and revocation lists.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use warren::ca::{
    Authorities, Certificate, RevocationList, SignedCertificate, SignedRevocationList,
};
use warren::config::{Config, Origin};
use warren::host::component::{check_capabilities, forbidden_import};
use warren::host::deploy::compare_versions;
use warren::host::policy::Policy;
use warren::host::signing::{
    Manifest, SignedManifest, SigningKeypair, embedded_manifest, sign, unix_to_rfc3339, verify,
};

use super::Reached;
use crate::mesh::{EPOCH_MS, authority};
use crate::ops::Ops;

/// "Now" for signatures and certificates, in Unix seconds.
const NOW_SECS: u64 = EPOCH_MS / 1000;

/// The input as a node's config file: what loads must validate again unchanged.
pub fn config_toml(data: &[u8]) -> Reached {
    let mut reached = Reached::new();
    let text = String::from_utf8_lossy(data);
    let path = Path::new("/etc/warren/warren.toml");
    match Config::from_toml(&text, path) {
        Ok(config) => {
            let origin = Origin::File {
                path: path.to_owned(),
                line: None,
            };
            let again = config.clone().validate(origin);
            assert_eq!(
                again.as_ref().ok(),
                Some(&config),
                "validation is idempotent"
            );
            let _ = config.offers_default_ansible_runner();
            reached.push("loaded");
        }
        Err(error) => {
            let _ = error.to_string();
            reached.push("refused");
        }
    }
    reached
}

/// Ops over a component and its signature file: a signature file as sent, a component's
/// bytes, a manifest signed by a trusted key (bound to the component when asked), and the
/// component's embedded manifest signed as `warren component sign` does.
pub fn component_signature(data: &[u8]) -> Reached {
    let mut reached = Reached::new();
    let signer = SigningKeypair::from_private([0x51; 32]);
    let trusted = [signer.public()];
    let policy = policy();
    let mut component: Vec<u8> = Vec::new();
    for op in Ops::new(data).take(16) {
        match op.tag % 4 {
            0 => {
                let Ok(sig) = SignedManifest::from_json(op.data) else {
                    continue;
                };
                let again = SignedManifest::from_json(sig.to_json().as_bytes())
                    .expect("a written signature file reads back");
                assert_eq!(again, sig);
                judge(&component, &sig, &[sig.signer], &policy, &mut reached);
            }
            1 => component = op.data.to_vec(),
            2 => {
                let Some((&bind, json)) = op.data.split_first() else {
                    continue;
                };
                let Ok(mut manifest) = serde_json::from_slice::<Manifest>(json) else {
                    continue;
                };
                if bind & 1 == 1 {
                    manifest.sha256 = sha256(&component);
                    manifest.length = component.len() as u64;
                }
                let sig = sign(&signer, manifest);
                judge(&component, &sig, &trusted, &policy, &mut reached);
            }
            _ => embedded(&component, &signer, &trusted, &mut reached),
        }
    }
    reached
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// Checks a signature as a node does before running or deploying a component.
fn judge(
    component: &[u8],
    sig: &SignedManifest,
    trusted: &[warren::host::signing::SignerKey],
    policy: &Policy,
    reached: &mut Reached,
) {
    let manifest = &sig.manifest;
    let _ = unix_to_rfc3339(manifest.issued_at);
    let _ = unix_to_rfc3339(manifest.expires_at);
    let (a, b) = (manifest.version.as_str(), manifest.name.as_str());
    assert_eq!(compare_versions(a, b), compare_versions(b, a).reverse());
    let _ = forbidden_import(manifest.work_types.iter().map(String::as_str));
    match verify(component, sig, trusted, NOW_SECS) {
        Ok(manifest) => {
            let _ = check_capabilities(manifest, "command", policy).map_err(|e| e.to_string());
            reached.push("verified");
        }
        Err(error) => {
            let _ = error.to_string();
            reached.push("refused");
        }
    }
}

/// The component's own manifest, signed now for its bytes, must verify.
fn embedded(
    component: &[u8],
    signer: &SigningKeypair,
    trusted: &[warren::host::signing::SignerKey],
    reached: &mut Reached,
) {
    match embedded_manifest(component) {
        Ok(Some(about)) => {
            let manifest = Manifest::for_component(component, about, NOW_SECS, NOW_SECS + 60);
            let sig = sign(signer, manifest);
            verify(component, &sig, trusted, NOW_SECS).expect("a fresh signature verifies");
            reached.push("embedded");
        }
        Ok(None) => {}
        Err(error) => {
            let _ = error.to_string();
        }
    }
}

fn policy() -> Policy {
    Policy {
        programs: BTreeMap::from([(
            "ansible-runner".to_owned(),
            PathBuf::from("/usr/bin/ansible-runner"),
        )]),
        env_allow: BTreeSet::from(["ANSIBLE_FORCE_COLOR".to_owned()]),
        ..Policy::default()
    }
}

/// Ops over certificates and revocation lists: armoured files as given, and bodies signed
/// by the trusted authority, checked as a node checks a peer's certificate; lists revoke.
pub fn ca_armor(data: &[u8]) -> Reached {
    let mut reached = Reached::new();
    let ca = authority();
    let mut authorities = Authorities::new([ca.public()]);
    for op in Ops::new(data).take(16) {
        match op.tag % 4 {
            0 => {
                let text = String::from_utf8_lossy(op.data);
                if let Ok(cert) = SignedCertificate::from_armored(&text) {
                    check_cert(&authorities, &cert, &mut reached);
                }
            }
            1 => {
                let text = String::from_utf8_lossy(op.data);
                if let Ok(list) = SignedRevocationList::from_armored(&text) {
                    revoke(&mut authorities, &list, &mut reached);
                }
            }
            2 => {
                if let Ok(cert) = postcard::from_bytes::<Certificate>(op.data) {
                    check_cert(&authorities, &cert.sign(&ca), &mut reached);
                }
            }
            _ => {
                if let Ok(list) = postcard::from_bytes::<RevocationList>(op.data) {
                    revoke(&mut authorities, &list.sign(&ca), &mut reached);
                }
            }
        }
    }
    reached
}

fn check_cert(authorities: &Authorities, cert: &SignedCertificate, reached: &mut Reached) {
    let again = SignedCertificate::from_armored(&cert.to_armored());
    if cert.cert.version == warren::ca::CERT_VERSION {
        assert_eq!(
            again.ok().as_ref(),
            Some(cert),
            "a certificate file reads back"
        );
    }
    let now = EPOCH_MS;
    let (node, key) = (&cert.cert.node, &cert.cert.key);
    let _ = cert.has_valid_signature();
    match authorities.check(cert, node, key, now) {
        Ok(_) => reached.push("cert-valid"),
        Err(error) => {
            let _ = error.to_string();
            reached.push("cert-refused");
        }
    }
}

fn revoke(authorities: &mut Authorities, list: &SignedRevocationList, reached: &mut Reached) {
    let again = SignedRevocationList::from_armored(&list.to_armored());
    if again.is_ok() {
        assert_eq!(again.ok().as_ref(), Some(list), "a list file reads back");
    }
    match authorities.revoke(list) {
        Ok(()) => reached.push("revoked"),
        Err(error) => {
            let _ = error.to_string();
        }
    }
}

//! Deployed components survive a restart: each one's bytes and signature are kept under
//! `<data-dir>/deployed/`, with `active.json` naming which component each work type runs.
//! At start they are verified and checked again, exactly as when they were deployed (a
//! signer no longer trusted, or a component that no longer fits the policy, falls back to
//! the configured handler, and the log says why).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::host::deploy::apply;
use crate::host::registry::Registry;
use crate::host::runner::{Host, hex};
use crate::host::signing::{SignedManifest, SignerKey};

/// The directory under the data dir.
const DIR: &str = "deployed";

/// The file naming each work type's deployed component (by sha256).
const ACTIVE: &str = "active.json";

/// Where deployed components are kept.
#[derive(Debug, Clone)]
pub struct DeployedStore {
    dir: PathBuf,
}

impl DeployedStore {
    /// The store under `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join(DIR),
        }
    }

    /// Keeps `bytes` and `signature` and records them as what `work_types` run.
    ///
    /// # Errors
    /// When the files cannot be written (the deploy is still in effect until a restart).
    pub fn record(
        &self,
        bytes: &[u8],
        signature: &str,
        sha256: &[u8; 32],
        work_types: &[String],
    ) -> std::io::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let name = hex(sha256);
        write_atomic(&self.dir.join(format!("{name}.wasm")), bytes)?;
        write_atomic(&self.dir.join(format!("{name}.sig")), signature.as_bytes())?;
        let mut active = self.active();
        for work_type in work_types {
            active.insert(work_type.clone(), name.clone());
        }
        let json = serde_json::to_vec_pretty(&active).map_err(std::io::Error::other)?;
        write_atomic(&self.dir.join(ACTIVE), &json)?;
        self.prune(&active);
        Ok(())
    }

    /// Work type -> sha256 (hex) of its deployed component.
    fn active(&self) -> BTreeMap<String, String> {
        fs::read(self.dir.join(ACTIVE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Removes kept components no work type runs any more.
    fn prune(&self, active: &BTreeMap<String, String>) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let stem = name.split('.').next().unwrap_or_default();
            let kept = name == ACTIVE || active.values().any(|sha| sha == stem);
            if !kept {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// Switches `registry`'s work types back to their deployed components, verifying each
    /// again; returns what could not be restored and why.
    pub fn restore(
        &self,
        host: &Host,
        registry: &mut Registry,
        signers: &[SignerKey],
    ) -> Vec<String> {
        let mut problems = Vec::new();
        let mut by_component: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (work_type, sha) in self.active() {
            by_component.entry(sha).or_default().push(work_type);
        }
        for (sha, work_types) in by_component {
            match self.restore_one(host, registry, signers, &sha) {
                Ok(restored) => tracing::info!(
                    component = %sha, work_types = ?restored,
                    "restored a deployed component"
                ),
                Err(why) => problems.push(format!(
                    "deployed component {sha} for {work_types:?} not restored: {why}; the configured handler runs instead"
                )),
            }
        }
        problems
    }

    fn restore_one(
        &self,
        host: &Host,
        registry: &mut Registry,
        signers: &[SignerKey],
        sha: &str,
    ) -> Result<Vec<String>, String> {
        let bytes = fs::read(self.dir.join(format!("{sha}.wasm"))).map_err(|e| e.to_string())?;
        let sig = fs::read(self.dir.join(format!("{sha}.sig"))).map_err(|e| e.to_string())?;
        let signature = SignedManifest::from_json(&sig).map_err(|e| e.to_string())?;
        let (next, deployed) =
            apply(host, registry, signers, &bytes, &signature).map_err(|e| e.to_string())?;
        *registry = next;
        Ok(deployed.work_types)
    }
}

/// Writes `bytes` to `path` through a temp file, synced, renamed, directory synced.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

//! Keys first seen, remembered like SSH's `known_hosts`: `known_peers` (address -> the key
//! of the node dialled there) and `known_nodes` (node id -> the key of the node that ran
//! work). A changed key is refused; removing its line accepts a re-keyed node.

use std::path::{Path, PathBuf};

use crate::keys::PublicKey;

/// A file of `name token` lines next to the client's identity.
#[derive(Debug, Clone)]
pub struct KnownKeys {
    path: PathBuf,
    entries: Vec<(String, PublicKey)>,
}

impl KnownKeys {
    /// Loads `file_name` next to the identity key at `identity` (missing: empty).
    pub fn load(identity: &Path, file_name: &str) -> Self {
        let path = identity.with_file_name(file_name);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let entries = text
            .lines()
            .filter_map(|l| {
                let (name, token) = l.split_once(' ')?;
                Some((name.to_owned(), token.trim().parse().ok()?))
            })
            .collect();
        Self { path, entries }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The key remembered for `name`.
    pub fn get(&self, name: &str) -> Option<PublicKey> {
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, k)| *k)
    }

    /// Remembers `key` for `name` (written aside and renamed, so a concurrent run never
    /// reads half a file).
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn remember(&mut self, name: &str, key: PublicKey) -> std::io::Result<()> {
        self.entries.retain(|(n, _)| n != name);
        self.entries.push((name.to_owned(), key));
        let text: String = self
            .entries
            .iter()
            .map(|(n, k)| format!("{n} {k}\n"))
            .collect();
        let tmp = self
            .path
            .with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.path)
    }
}

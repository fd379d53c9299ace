//! The file where a node keeps the key successions it accepted for pinned peers
//! (`<data dir>/key-successions`): one statement per line, appended as they are accepted,
//! read back at start and on reload, so that a pin follows its peer's rotated key across
//! restarts while the config still names the old key. Every line is verified again when
//! read; a bad line is skipped with a warning, never trusted.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::keys::SignedSuccession;
use crate::keys::succession::MAX_CHAIN;
use crate::mesh::succession::{SuccessionRefusal, Successions};

/// The store's file name in the data dir.
pub const STORE_FILE: &str = "key-successions";

/// Where the store of a node with data dir `data_dir` lives.
pub fn store_path(data_dir: &Path) -> PathBuf {
    data_dir.join(STORE_FILE)
}

/// Appends an accepted statement (mode 0600, synced).
///
/// # Errors
/// The I/O error.
pub fn append(path: &Path, statement: &SignedSuccession) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(format!("{}\n", statement.to_line()).as_bytes())?;
    file.sync_all()
}

/// Reads the store: every verified statement that neither forks nor loops. A missing file
/// is an empty store; bad lines are logged and skipped.
///
/// # Errors
/// An I/O error other than "not found".
pub fn load(path: &Path) -> io::Result<Successions> {
    let mut book = Successions::default();
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(book),
        Err(e) => return Err(e),
    };
    let mut trimmed = 0usize;
    let mut restore = book.restorer();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let restored = SignedSuccession::from_line(line)
            .map_err(|e| e.to_string())
            .and_then(|s| match restore.add(s) {
                Err(SuccessionRefusal::ChainFull { .. }) => {
                    trimmed += 1;
                    Ok(false)
                }
                other => other.map_err(|e| e.to_string()),
            });
        if let Err(problem) = restored {
            tracing::warn!(path = %path.display(), line = n + 1, %problem, "skipped a stored key succession");
        }
    }
    if trimmed > 0 {
        tracing::warn!(
            path = %path.display(), trimmed, limit = MAX_CHAIN,
            "skipped stored key successions beyond a chain's limit (kept each chain's oldest statements, which lead from the pin); pin such a node's current key by hand"
        );
    }
    Ok(book)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::succession::tests::{pair, step};

    #[test]
    fn appended_statements_are_read_back_and_bad_lines_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = store_path(dir.path());
        assert!(load(&path).unwrap().is_empty());
        append(&path, &step(1, 2)).unwrap();
        let mut forged = step(2, 3);
        forged.succession.new = pair(9).public();
        append(&path, &forged).unwrap();
        append(&path, &step(1, 5)).unwrap();
        let mut text = fs::read_to_string(&path).unwrap();
        text.push_str("garbage\n");
        fs::write(&path, text).unwrap();
        let book = load(&path).unwrap();
        assert_eq!(book.len(), 1, "only the genuine, first statement");
        assert_eq!(book.current(&pair(1).public()), pair(2).public());
    }

    #[test]
    fn a_store_with_a_chain_beyond_the_limit_loads_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = store_path(dir.path());
        let chain = 1..=MAX_CHAIN as u8 + 4;
        for k in chain {
            append(&path, &step(k, k + 1)).unwrap();
        }
        let book = load(&path).unwrap();
        assert_eq!(book.len(), MAX_CHAIN);
        let pinned = pair(1).public();
        assert_eq!(book.current(&pinned), pair(MAX_CHAIN as u8 + 1).public());
    }
}

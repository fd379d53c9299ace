//! Rotating a node's link key on disk (`warren keygen --rotate`), and reading back the
//! chain of successions that goes with a key file.
//!
//! Next to the key file `node.key`, rotation keeps `node.key.previous` (the retired key,
//! mode 0600) and `node.key.succession` (the node's chain of statements, oldest first, at
//! most [`MAX_CHAIN`]). It writes the retired key and the chain before it replaces the key
//! file (through a temporary file and a rename), so an interruption never loses a key: at
//! worst the chain names a successor that never made it into the key file, and the next
//! rotation replaces that statement.

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::link::{KeyError, LinkKeypair, PublicKey};
use super::succession::{self, MAX_CHAIN, SignedSuccession, Succession, SuccessionError};

/// What went wrong rotating a key or reading its chain.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// The key file (or the previous key file) could not be read or is not a key file.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A chain file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The chain file does not hold a valid chain.
    #[error("{path}: {problem}")]
    BadChain {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: SuccessionError,
    },
    /// The previous key file holds a key the chain does not retire: overwriting it would
    /// lose a key nothing succeeded.
    #[error("{path} holds a key that no rotation retired ({key}); move it away before rotating")]
    PreviousInUse {
        /// The previous key file.
        path: PathBuf,
        /// Its key.
        key: PublicKey,
    },
}

/// What a rotation did.
#[derive(Debug, Clone)]
pub struct Rotated {
    /// The retired key.
    pub old: PublicKey,
    /// The new key, now in the key file.
    pub new: PublicKey,
    /// Where the retired key was kept.
    pub previous: PathBuf,
    /// Where the chain was written.
    pub chain: PathBuf,
}

fn with_suffix(key_file: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(key_file.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

/// The chain file of `key_file`: `<key_file>.succession`.
pub fn chain_path(key_file: &Path) -> PathBuf {
    with_suffix(key_file, ".succession")
}

/// Where rotation keeps the retired key: `<key_file>.previous`.
pub fn previous_path(key_file: &Path) -> PathBuf {
    with_suffix(key_file, ".previous")
}

/// Reads the chain file of `key_file` (empty when there is none) and checks it.
///
/// # Errors
/// [`RotationError::Io`] or [`RotationError::BadChain`].
pub fn read_chain(key_file: &Path) -> Result<Vec<SignedSuccession>, RotationError> {
    let path = chain_path(key_file);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(RotationError::Io { path, source }),
    };
    let bad = |problem| RotationError::BadChain {
        path: path.clone(),
        problem,
    };
    let chain = succession::parse_lines(&text).map_err(|(_, e)| bad(e))?;
    succession::check_chain(&chain).map_err(bad)?;
    Ok(chain)
}

/// The chain to run `keys` with: the chain file's, when it ends at `keys` (else, a key file
/// replaced by hand, none).
///
/// # Errors
/// As [`read_chain`].
pub fn chain_for(
    key_file: &Path,
    keys: &LinkKeypair,
) -> Result<Vec<SignedSuccession>, RotationError> {
    let chain = read_chain(key_file)?;
    match chain.last() {
        Some(last) if last.new_key() == keys.public() => Ok(chain),
        Some(_) => {
            tracing::warn!(
                path = %chain_path(key_file).display(), key = %keys.public(),
                "the key succession file does not end at this node's key; peers that pinned an older key will not follow it"
            );
            Ok(Vec::new())
        }
        None => Ok(chain),
    }
}

/// Rotates the key in `key_file`: a new key pair, a statement signed by the old key, the
/// old key kept in the previous file, the chain extended, then the key file replaced.
///
/// # Errors
/// [`RotationError`] when the key file is not a valid key, the chain is broken, the
/// previous file holds a key still in use, or a file cannot be written. Nothing is replaced
/// then.
pub fn rotate(key_file: &Path, now_ms: u64) -> Result<Rotated, RotationError> {
    let old = LinkKeypair::load(key_file)?;
    let mut chain = read_chain(key_file)?;
    // A statement retiring the current key is from an interrupted rotation whose new key
    // never reached the key file: replace it.
    if chain.last().is_some_and(|s| s.old() == old.public()) {
        chain.pop();
    }
    if chain.last().is_some_and(|s| s.new_key() != old.public()) {
        tracing::warn!(
            "the key succession file does not end at the current key; starting a new chain"
        );
        chain.clear();
    }
    let previous = previous_path(key_file);
    check_previous(&previous, &old, &chain)?;
    let new = LinkKeypair::generate()?;
    let mut nonce = [0u8; 64];
    getrandom::fill(&mut nonce).map_err(|e| KeyError::Random(e.to_string()))?;
    let statement = Succession::new(old.public(), new.public(), now_ms)
        .sign(&old, &nonce)
        .map_err(|problem| RotationError::BadChain {
            path: key_file.to_owned(),
            problem,
        })?;
    chain.push(statement);
    if chain.len() > MAX_CHAIN {
        chain.drain(..chain.len() - MAX_CHAIN);
    }
    old.save(&previous, true)?;
    let chain_file = chain_path(key_file);
    write_atomically(&chain_file, &chain_text(&chain))?;
    let staged = with_suffix(key_file, ".new");
    new.save(&staged, true)?;
    fs::rename(&staged, key_file).map_err(|source| RotationError::Io {
        path: key_file.to_owned(),
        source,
    })?;
    Ok(Rotated {
        old: old.public(),
        new: new.public(),
        previous,
        chain: chain_file,
    })
}

/// Refuses to overwrite a previous key file unless it holds the key being retired now or
/// one the chain already retired.
fn check_previous(
    previous: &Path,
    old: &LinkKeypair,
    chain: &[SignedSuccession],
) -> Result<(), RotationError> {
    if !previous.exists() {
        return Ok(());
    }
    let kept = LinkKeypair::load(previous)?.public();
    if kept == old.public() || chain.iter().any(|s| s.old() == kept) {
        return Ok(());
    }
    Err(RotationError::PreviousInUse {
        path: previous.to_owned(),
        key: kept,
    })
}

fn chain_text(chain: &[SignedSuccession]) -> String {
    let mut text = String::from(
        "# warren key successions of this node, oldest first (written by `warren keygen --rotate`)\n",
    );
    for statement in chain {
        text.push_str(&statement.to_line());
        text.push('\n');
    }
    text
}

fn write_atomically(path: &Path, text: &str) -> Result<(), RotationError> {
    let io = |source| RotationError::Io {
        path: path.to_owned(),
        source,
    };
    let staged = with_suffix(path, ".new");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&staged)
        .map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&staged, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A temp dir holding a fresh key at `node.key` (the dir lives as long as the guard).
    fn key_file_in_temp_dir() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("node.key");
        LinkKeypair::generate()
            .unwrap()
            .save(&key_file, false)
            .unwrap();
        (dir, key_file)
    }

    #[test]
    fn rotation_keeps_the_old_key_and_chains_successions() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("node.key");
        let first = LinkKeypair::generate().unwrap();
        first.save(&key_file, false).unwrap();
        let one = rotate(&key_file, 10).unwrap();
        assert_eq!(one.old, first.public());
        assert_eq!(LinkKeypair::load(&key_file).unwrap().public(), one.new);
        assert_eq!(
            LinkKeypair::load(&one.previous).unwrap().public(),
            first.public()
        );
        let mode = fs::metadata(&one.previous).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let two = rotate(&key_file, 20).unwrap();
        assert_eq!(two.old, one.new);
        let chain = read_chain(&key_file).unwrap();
        assert_eq!(chain.len(), 2);
        assert!(succession::leads(&chain, &first.public(), &two.new));
        let keys = LinkKeypair::load(&key_file).unwrap();
        assert_eq!(chain_for(&key_file, &keys).unwrap().len(), 2);
    }

    #[test]
    fn refuses_to_rotate_what_is_not_a_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("node.key");
        fs::write(&key_file, "not a key\n").unwrap();
        assert!(matches!(
            rotate(&key_file, 1),
            Err(RotationError::Key(KeyError::BadFile { .. }))
        ));
        assert_eq!(fs::read_to_string(&key_file).unwrap(), "not a key\n");
        assert!(!previous_path(&key_file).exists());
        assert!(matches!(
            rotate(&dir.path().join("missing.key"), 1),
            Err(RotationError::Key(KeyError::Io { .. }))
        ));
    }

    #[test]
    fn refuses_to_overwrite_a_previous_key_nothing_retired() {
        let (_dir, key_file) = key_file_in_temp_dir();
        let stranger = LinkKeypair::generate().unwrap();
        stranger.save(&previous_path(&key_file), false).unwrap();
        let before = fs::read_to_string(&key_file).unwrap();
        assert!(matches!(
            rotate(&key_file, 1),
            Err(RotationError::PreviousInUse { .. })
        ));
        assert_eq!(fs::read_to_string(&key_file).unwrap(), before);
        assert_eq!(
            LinkKeypair::load(&previous_path(&key_file))
                .unwrap()
                .public(),
            stranger.public()
        );
    }

    #[test]
    fn a_chain_not_ending_at_the_key_is_not_used() {
        let (_dir, key_file) = key_file_in_temp_dir();
        rotate(&key_file, 1).unwrap();
        // The operator replaces the key by hand.
        let other = LinkKeypair::generate().unwrap();
        other.save(&key_file, true).unwrap();
        assert!(chain_for(&key_file, &other).unwrap().is_empty());
    }
}

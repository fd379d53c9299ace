//! The manifest of a private data dir, sent instead of its transmit stream to a node that
//! keeps a content cache: the kwargs line, and per zip entry its name, mode, time, size
//! and where its bytes come from (a SHA-256 the node may hold, inline after the manifest,
//! a symlink's target, or nothing for a directory).
//!
//! Pure: the wire types and the node's checks of a peer's manifest, no IO. A manifest is
//! peer input: [`Manifest::check`] bounds it (entries, sizes, inline bytes, the payload
//! cap) and refuses names a zip must not carry before the node writes anything.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::layout::MAX_NAME_LEN;
use super::plan::{TYPE_DIR, TYPE_FILE, TYPE_LINK};

/// SHA-256 of a file's contents.
pub type ContentHash = [u8; 32];

/// Most entries a manifest may list: the node's lacking list and the manifest itself stay
/// a few MiB at most.
pub const MAX_ENTRIES: usize = 200_000;

/// Largest encoded manifest, in bytes (names of 80 bytes on average at [`MAX_ENTRIES`]).
pub const MAX_MANIFEST_LEN: usize = 32 << 20;

/// Most bytes sent inline (files under `env/`): the node holds them in memory until the
/// stream is assembled, so they are never written under its content cache.
pub const MAX_INLINE_BYTES: u64 = 64 << 20;

/// The top-level directory whose files are never cached (keys, passwords, extra vars):
/// the client sends them inline, and the node refuses a manifest that offers one by hash.
pub const NEVER_CACHED: &str = "env/";

/// Where an entry's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Content {
    /// A directory: no bytes.
    Dir,
    /// A symlink: its target.
    Link(String),
    /// A regular file the node may have cached: sent only if the node lacks it.
    Hashed(ContentHash),
    /// A regular file never cached (`env/`: keys, passwords): always sent, after the
    /// manifest in manifest order.
    Inline,
}

/// One zip entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// The name in the zip (relative, `/`-separated; directories end with `/`).
    pub name: String,
    /// `st_mode`: type bits and permission bits.
    pub mode: u32,
    /// DOS date and time.
    pub time: (u16, u16),
    /// Bytes of a regular file (0 otherwise).
    pub size: u64,
    /// Where its bytes come from.
    pub content: Content,
}

/// A whole manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The transmit stream's first line (the job's kwargs as JSON, with its `\n`).
    pub kwargs_line: String,
    /// The zip's entries in order. Decoding a peer's list stops as soon as it says it
    /// holds more than [`MAX_ENTRIES`], before anything is allocated for them.
    #[serde(deserialize_with = "at_most_max_entries")]
    pub entries: Vec<ManifestEntry>,
}

/// Decodes a list of at most [`MAX_ENTRIES`] entries. Without the bound, a 32 MiB manifest
/// of 6-byte entries decodes into 5.6 M entries, over 500 MB, before [`Manifest::check`]
/// could refuse it.
fn at_most_max_entries<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<ManifestEntry>, D::Error> {
    struct Bounded;
    impl<'de> serde::de::Visitor<'de> for Bounded {
        type Value = Vec<ManifestEntry>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "at most {MAX_ENTRIES} manifest entries")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let said = seq.size_hint().unwrap_or(0);
            if said > MAX_ENTRIES {
                return Err(serde::de::Error::invalid_length(said, &self));
            }
            let mut entries = Vec::with_capacity(said);
            while let Some(entry) = seq.next_element()? {
                if entries.len() == MAX_ENTRIES {
                    return Err(serde::de::Error::invalid_length(MAX_ENTRIES + 1, &self));
                }
                entries.push(entry);
            }
            Ok(entries)
        }
    }
    deserializer.deserialize_seq(Bounded)
}

/// Why a node refuses a manifest. `Display` names the entry and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// More entries than [`MAX_ENTRIES`].
    #[error("the manifest lists {entries} entries, over the limit of {MAX_ENTRIES}")]
    TooManyEntries {
        /// How many it lists.
        entries: usize,
    },
    /// The stream assembled from it would pass the node's payload limit.
    #[error(
        "the private data dir makes a payload of about {bytes} bytes, over the node's limit of {limit} ([work] max-payload-mb)"
    )]
    TooLarge {
        /// The assembled stream's least length.
        bytes: u64,
        /// The node's limit.
        limit: u64,
    },
    /// More inline bytes than [`MAX_INLINE_BYTES`].
    #[error(
        "files under env/ hold {bytes} bytes, over the limit of {MAX_INLINE_BYTES} sent inline"
    )]
    TooMuchInline {
        /// Their total.
        bytes: u64,
    },
    /// A name a zip entry must not have.
    #[error("entry {name:?} is refused: {why}")]
    BadName {
        /// The name (as sent).
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The mode's type bits do not match the entry's kind.
    #[error("entry {name:?} has mode {mode:o}, which is not that of a {kind}")]
    BadMode {
        /// The name.
        name: String,
        /// The mode.
        mode: u32,
        /// What the content says it is.
        kind: &'static str,
    },
    /// The kwargs line is not one line.
    #[error("the kwargs line must be one line ending with a newline")]
    BadKwargs,
    /// A file under `env/` offered by hash: secrets are sent inline and never cached.
    #[error("entry {name:?} is under env/ (keys, passwords) and must be sent inline, never cached")]
    CachedSecret {
        /// The name.
        name: String,
    },
}

impl ManifestEntry {
    /// Bytes this entry puts in the zip's data.
    pub fn data_len(&self) -> u64 {
        match &self.content {
            Content::Dir => 0,
            Content::Link(target) => target.len() as u64,
            Content::Hashed(_) | Content::Inline => self.size,
        }
    }
}

impl Manifest {
    /// Whether a node can take this manifest at all: at most [`MAX_ENTRIES`] entries and
    /// [`MAX_INLINE_BYTES`] inline. A client sends a dir that does not fit whole instead.
    pub fn fits_the_wire(&self) -> bool {
        self.entries.len() <= MAX_ENTRIES && self.inline_bytes() <= MAX_INLINE_BYTES
    }

    /// Bytes of the files sent inline (after the manifest, every time).
    pub fn inline_bytes(&self) -> u64 {
        (self.entries.iter())
            .filter(|e| e.content == Content::Inline)
            .map(|e| e.size)
            .fold(0, u64::saturating_add)
    }

    /// Checks a peer's manifest against the node's bounds: at most [`MAX_ENTRIES`], an
    /// assembled stream of at most `max_payload` bytes, at most [`MAX_INLINE_BYTES`] inline,
    /// names relative without `..`, empty parts or NUL, unique, modes matching kinds, and
    /// no file under `env/` offered by hash.
    ///
    /// # Errors
    /// The first [`ManifestError`] found.
    pub fn check(&self, max_payload: u64) -> Result<(), ManifestError> {
        let body = self.kwargs_line.strip_suffix('\n');
        if body.is_none_or(|b| b.contains('\n')) {
            return Err(ManifestError::BadKwargs);
        }
        if self.entries.len() > MAX_ENTRIES {
            return Err(ManifestError::TooManyEntries {
                entries: self.entries.len(),
            });
        }
        let mut names = HashSet::with_capacity(self.entries.len());
        let mut data = 0u64;
        for entry in &self.entries {
            check_name(entry)?;
            check_mode(entry)?;
            if !names.insert(entry.name.as_str()) {
                return Err(bad_name(entry, "it is listed twice"));
            }
            if entry.name.starts_with(NEVER_CACHED) && matches!(entry.content, Content::Hashed(_)) {
                return Err(ManifestError::CachedSecret {
                    name: entry.name.clone(),
                });
            }
            data = data.saturating_add(entry.data_len());
        }
        let inline = self.inline_bytes();
        if inline > MAX_INLINE_BYTES {
            return Err(ManifestError::TooMuchInline { bytes: inline });
        }
        // Base64 of the data alone is a lower bound of the stream's length.
        let bytes = data.saturating_add(2) / 3 * 4;
        if bytes > max_payload {
            return Err(ManifestError::TooLarge {
                bytes,
                limit: max_payload,
            });
        }
        Ok(())
    }
}

fn bad_name(entry: &ManifestEntry, why: &'static str) -> ManifestError {
    ManifestError::BadName {
        name: entry.name.clone(),
        why,
    }
}

fn check_name(entry: &ManifestEntry) -> Result<(), ManifestError> {
    let name = entry.name.as_str();
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(bad_name(entry, "its length is 0 or over 65535 bytes"));
    }
    if name.contains('\0') || name.contains('\\') {
        return Err(bad_name(entry, "it contains NUL or a backslash"));
    }
    if name.starts_with('/') {
        return Err(bad_name(entry, "it is absolute"));
    }
    let is_dir = entry.content == Content::Dir;
    if name.ends_with('/') != is_dir {
        return Err(bad_name(entry, "only a directory's name ends with /"));
    }
    let parts = name.strip_suffix('/').unwrap_or(name);
    for part in parts.split('/') {
        match part {
            "" => return Err(bad_name(entry, "it has an empty part")),
            "." | ".." => return Err(bad_name(entry, "it has a . or .. part")),
            _ => {}
        }
    }
    Ok(())
}

fn check_mode(entry: &ManifestEntry) -> Result<(), ManifestError> {
    let (want, kind) = match entry.content {
        Content::Dir => (TYPE_DIR, "directory"),
        Content::Link(_) => (TYPE_LINK, "symlink"),
        Content::Hashed(_) | Content::Inline => (TYPE_FILE, "regular file"),
    };
    let sized = matches!(entry.content, Content::Hashed(_) | Content::Inline) || entry.size == 0;
    if entry.mode & !0o777 != want || !sized {
        return Err(ManifestError::BadMode {
            name: entry.name.clone(),
            mode: entry.mode,
            kind,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, size: u64) -> ManifestEntry {
        ManifestEntry {
            name: name.into(),
            mode: TYPE_FILE | 0o644,
            time: (0, 0),
            size,
            content: Content::Hashed([7; 32]),
        }
    }

    fn manifest(entries: Vec<ManifestEntry>) -> Manifest {
        Manifest {
            kwargs_line: "{}\n".into(),
            entries,
        }
    }

    #[test]
    fn refuses_traversal_absolute_and_odd_names() {
        for name in [
            "../x",
            "project/../../x",
            "/etc/passwd",
            "a//b",
            "./a",
            "a\0b",
            "a\\..\\b",
            "",
        ] {
            let err = manifest(vec![file(name, 1)]).check(u64::MAX).unwrap_err();
            assert!(
                matches!(err, ManifestError::BadName { .. }),
                "{name:?}: {err}"
            );
        }
        assert!(
            manifest(vec![file("project/a.yml", 1)])
                .check(u64::MAX)
                .is_ok()
        );
    }

    #[test]
    fn refuses_duplicates_wrong_modes_and_a_multi_line_kwargs() {
        let twice = manifest(vec![file("a", 1), file("a", 2)]);
        assert!(matches!(
            twice.check(u64::MAX),
            Err(ManifestError::BadName { .. })
        ));
        let mut device = file("a", 1);
        device.mode = 0o020_644;
        assert!(matches!(
            manifest(vec![device]).check(u64::MAX),
            Err(ManifestError::BadMode { .. })
        ));
        let mut lines = manifest(vec![]);
        lines.kwargs_line = "{}\n{}\n".into();
        assert_eq!(lines.check(u64::MAX), Err(ManifestError::BadKwargs));
    }

    #[test]
    fn bounds_entries_payload_and_inline_bytes() {
        let many = manifest(
            (0..=MAX_ENTRIES)
                .map(|i| file(&format!("f{i}"), 0))
                .collect(),
        );
        assert!(matches!(
            many.check(u64::MAX),
            Err(ManifestError::TooManyEntries { .. })
        ));
        let big = manifest(vec![file("a", 3_000)]);
        assert!(matches!(
            big.check(3_999),
            Err(ManifestError::TooLarge { .. })
        ));
        assert!(big.check(4_000).is_ok());
        let mut secret = file("env/password", MAX_INLINE_BYTES + 1);
        secret.content = Content::Inline;
        assert!(matches!(
            manifest(vec![secret]).check(u64::MAX),
            Err(ManifestError::TooMuchInline { .. })
        ));
    }

    #[test]
    fn a_file_under_env_offered_by_hash_is_refused() {
        let secret = file("env/ssh_key", 10);
        assert!(matches!(secret.content, Content::Hashed(_)));
        assert_eq!(
            manifest(vec![secret]).check(u64::MAX),
            Err(ManifestError::CachedSecret {
                name: "env/ssh_key".into()
            })
        );
        let mut inline = file("env/ssh_key", 10);
        inline.content = Content::Inline;
        assert!(manifest(vec![inline]).check(u64::MAX).is_ok());
    }

    /// An encoded manifest listing `n` directories with empty names (6 bytes each).
    fn listing(n: usize) -> Vec<u8> {
        let mut bytes = postcard::to_stdvec(&manifest(vec![])).unwrap();
        // An empty list is its length, 0, last: say there are `n`, then send them.
        assert_eq!(bytes.pop(), Some(0));
        bytes.extend(postcard::to_stdvec(&n).unwrap());
        let dir = ManifestEntry {
            name: String::new(),
            mode: 0,
            time: (0, 0),
            size: 0,
            content: Content::Dir,
        };
        let one = postcard::to_stdvec(&dir).unwrap();
        assert_eq!(one.len(), 6);
        bytes.extend(one.repeat(n));
        bytes
    }

    #[test]
    fn a_list_longer_than_the_bound_is_refused_while_it_is_decoded() {
        // Found by an attacker's review: 5.6 M six-byte entries fit a 32 MiB frame, and
        // decoding them all took over 500 MB before check() refused the count.
        let over = listing(MAX_ENTRIES + 1);
        assert!(over.len() < MAX_MANIFEST_LEN);
        assert!(postcard::from_bytes::<Manifest>(&over).is_err());
        let at = postcard::from_bytes::<Manifest>(&listing(MAX_ENTRIES)).unwrap();
        assert_eq!(at.entries.len(), MAX_ENTRIES);
    }

    #[test]
    fn a_manifest_over_the_bounds_does_not_fit_the_wire() {
        assert!(manifest(vec![file("a", 1)]).fits_the_wire());
        let many = manifest(
            (0..=MAX_ENTRIES)
                .map(|i| file(&format!("f{i}"), 0))
                .collect(),
        );
        assert!(!many.fits_the_wire());
        let mut secret = file("env/password", MAX_INLINE_BYTES + 1);
        secret.content = Content::Inline;
        assert!(!manifest(vec![secret]).fits_the_wire());
    }
}

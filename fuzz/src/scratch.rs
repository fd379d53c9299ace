//! A fresh directory tree per input for the targets that write files, and the check that
//! nothing was written outside the artifacts dir inside it:
//!
//! ```text
//! <tmp>/warren-fuzz-XXXX/
//!   victim                 a file an attack would overwrite ("precious")
//!   outside/               an empty directory an attack would write into
//!   pdd/artifacts/ident/   the artifacts dir: everything written must be beneath it
//! ```
//!
//! Set `TMPDIR` to a tmpfs (`scripts/fuzz.sh` uses `/dev/shm`) to keep this fast.

use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// What the victim file holds, before and (it must) after.
const PRECIOUS: &[u8] = b"precious";

/// One input's directory tree; removed when dropped.
pub struct Scratch {
    root: tempfile::TempDir,
}

impl Scratch {
    /// A new tree (see the module docs).
    ///
    /// # Panics
    /// If the temp dir cannot be written: no input can be judged then.
    pub fn new() -> Self {
        let root = tempfile::Builder::new()
            .prefix("warren-fuzz-")
            .tempdir()
            .expect("a scratch dir in TMPDIR");
        std::fs::write(root.path().join("victim"), PRECIOUS).expect("victim written");
        std::fs::create_dir(root.path().join("outside")).expect("outside made");
        std::fs::create_dir_all(root.path().join("pdd/artifacts")).expect("pdd made");
        Self { root }
    }

    /// The private data dir (`pdd/`).
    pub fn private_data_dir(&self) -> PathBuf {
        self.root.path().join("pdd")
    }

    /// The artifacts dir (`pdd/artifacts/ident`); it may not exist yet.
    pub fn artifact_dir(&self) -> PathBuf {
        self.root.path().join("pdd/artifacts/ident")
    }

    /// Asserts that nothing was written outside the artifacts dir, that the victim and
    /// `outside/` are untouched, and that inside the artifacts dir every symlink is
    /// relative without `..` and no mode carries setuid, setgid or sticky bits.
    ///
    /// # Panics
    /// On the first breach found, naming it.
    pub fn check(&self) {
        let root = self.root.path();
        let victim = std::fs::symlink_metadata(root.join("victim")).expect("victim is there");
        assert!(victim.file_type().is_file(), "the victim was replaced");
        assert_eq!(
            std::fs::read(root.join("victim")).expect("victim reads"),
            PRECIOUS,
            "the victim was overwritten"
        );
        let outside = std::fs::read_dir(root.join("outside")).expect("outside is a dir");
        assert_eq!(outside.count(), 0, "something was written into outside/");
        let allowed = [
            "victim",
            "outside",
            "pdd",
            "pdd/artifacts",
            "pdd/artifacts/ident",
        ];
        walk(root, &mut |path| {
            let relative = path.strip_prefix(root).expect("walked beneath the root");
            let inside = relative.starts_with("pdd/artifacts/ident");
            assert!(
                inside || allowed.iter().any(|a| relative == Path::new(a)),
                "written outside the artifacts dir: {}",
                relative.display()
            );
            if inside {
                check_artifact(path);
            }
        });
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

/// One entry of the artifacts dir: a safe link, no special mode bits.
fn check_artifact(path: &Path) {
    let meta = std::fs::symlink_metadata(path).expect("walked entries exist");
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(path).expect("a link reads");
        assert!(
            target
                .components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir)),
            "a symlink that can leave its directory: {} -> {}",
            path.display(),
            target.display()
        );
    } else {
        assert_eq!(
            meta.permissions().mode() & 0o7000,
            0,
            "setuid, setgid or sticky bits on {}",
            path.display()
        );
    }
}

/// Calls `visit` on every entry beneath `dir`, not following symlinks.
fn walk(dir: &Path, visit: &mut dyn FnMut(&Path)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        visit(&path);
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&path, visit);
        }
    }
}

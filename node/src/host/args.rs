//! What arguments a granted program may be asked to run with: a fixed prefix of words and,
//! after it, an allow-list of argument patterns. A node's policy holds every component to
//! it at spawn; a component's manifest declares what it needs, and a declaration broader
//! than the node's policy is refused at deploy.
//!
//! Pattern syntax (config, manifests, status), chosen so that matching is a string compare
//! and can never be slow:
//!
//! - `-n`: exactly this argument;
//! - `--format=*`, `*`: this text, then anything (a `*` only at the end);
//! - `{job-path}`, `--out={job-path}`: this text, then a path that stays inside the job
//!   directory when the child resolves it from its working directory, symlinks followed.
//!   The path may not start with `-` (it would read as an option; write `./-x`).
//!
//! Pure, except that `{job-path}` values are resolved against the file system.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The placeholder for a path inside the job directory.
pub const JOB_PATH: &str = "{job-path}";

/// One allowed shape of an argument.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ArgPattern {
    /// Exactly this text.
    Exact(String),
    /// This text, then anything.
    Prefix(String),
    /// This text, then a path inside the job directory.
    JobPath(String),
}

/// Why a pattern was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// A `*` somewhere other than at the end.
    #[error("argument pattern {0:?} has a `*` before its end (only a trailing `*` is supported)")]
    InnerWildcard(String),
    /// `{job-path}` somewhere other than at the end, or followed by `*`.
    #[error("argument pattern {0:?} has `{JOB_PATH}` before its end (it may only end a pattern)")]
    InnerJobPath(String),
}

impl std::str::FromStr for ArgPattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (head, pattern): (&str, fn(String) -> Self) =
            if let Some(head) = s.strip_suffix(JOB_PATH) {
                (head, Self::JobPath)
            } else if let Some(head) = s.strip_suffix('*') {
                (head, Self::Prefix)
            } else {
                (s, Self::Exact)
            };
        if head.contains('*') {
            return Err(PatternError::InnerWildcard(s.to_owned()));
        }
        if head.contains(JOB_PATH) {
            return Err(PatternError::InnerJobPath(s.to_owned()));
        }
        Ok(pattern(head.to_owned()))
    }
}

impl fmt::Display for ArgPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(text) => f.write_str(text),
            Self::Prefix(head) => write!(f, "{head}*"),
            Self::JobPath(head) => write!(f, "{head}{JOB_PATH}"),
        }
    }
}

impl Serialize for ArgPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ArgPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl ArgPattern {
    /// Whether the literal word `arg` has this shape, judging `{job-path}` by the text
    /// alone (a relative path that never climbs out). For deploy-time comparisons; at spawn
    /// [`ArgPolicy::check`] resolves paths for real.
    fn accepts_literal(&self, arg: &str) -> bool {
        match self {
            Self::Exact(text) => arg == text,
            Self::Prefix(head) => arg.starts_with(head.as_str()),
            Self::JobPath(head) => arg
                .strip_prefix(head.as_str())
                .is_some_and(stays_inside_lexically),
        }
    }

    /// Whether every argument `narrower` accepts, this pattern accepts too.
    fn covers(&self, narrower: &Self) -> bool {
        match (narrower, self) {
            (Self::Exact(text), _) => self.accepts_literal(text),
            (Self::Prefix(a) | Self::JobPath(a), Self::Prefix(b)) => a.starts_with(b.as_str()),
            (Self::JobPath(a), Self::JobPath(b)) => a == b,
            (Self::Prefix(_), _) | (Self::JobPath(_), Self::Exact(_)) => false,
        }
    }
}

/// Whether `path` is relative and its `..` never climb above where it starts.
fn stays_inside_lexically(path: &str) -> bool {
    if path.is_empty() || path.starts_with('-') {
        return false;
    }
    let mut depth = 0usize;
    for part in Path::new(path).components() {
        match part {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// The arguments one program may be given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArgPolicy {
    /// Words every argument list starts with, exactly.
    #[serde(default)]
    pub prefix: Vec<String>,
    /// What each argument after the prefix may be; `None` allows anything.
    #[serde(default)]
    pub allow: Option<Vec<ArgPattern>>,
}

/// Where a child's `{job-path}` arguments are resolved: both paths canonical.
#[derive(Debug, Clone, Copy)]
pub struct JobPaths<'a> {
    /// The job directory.
    pub root: &'a Path,
    /// The child's working directory (inside `root`).
    pub cwd: &'a Path,
}

/// Why an argument list was refused at spawn.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgRefusal {
    /// The list does not start with the fixed prefix.
    #[error("the arguments must start with {expected:?}")]
    MissingPrefix {
        /// The prefix the policy fixes.
        expected: Vec<String>,
    },
    /// An argument after the prefix matches no allowed pattern.
    #[error("argument {index} {arg:?} matches none of {allowed}")]
    NotAllowed {
        /// Its position (0 is the first argument after the program).
        index: usize,
        /// The argument.
        arg: String,
        /// The allowed patterns, as configured.
        allowed: String,
    },
    /// An argument that must be a path inside the job directory is not.
    #[error("argument {index} {arg:?} is not a path inside the job directory")]
    OutsideJob {
        /// Its position.
        index: usize,
        /// The argument.
        arg: String,
    },
}

/// Why a manifest's declared arguments are broader than the node's policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TooBroad {
    /// The declared prefix does not start with the node's.
    #[error("the arguments must start with {node:?}, but it declares the prefix {declared:?}")]
    Prefix {
        /// The node's prefix.
        node: Vec<String>,
        /// The declared prefix.
        declared: Vec<String>,
    },
    /// A declared prefix word the node's patterns do not allow.
    #[error(
        "it declares the argument {word:?}, which the node does not allow (allowed: {allowed})"
    )]
    PrefixWord {
        /// The word.
        word: String,
        /// The node's patterns.
        allowed: String,
    },
    /// The declaration allows any argument where the node allows a list.
    #[error("it declares any arguments, but the node allows only: {allowed}")]
    Unrestricted {
        /// The node's patterns.
        allowed: String,
    },
    /// A declared pattern no node pattern covers.
    #[error(
        "it declares arguments `{pattern}`, which the node does not allow (allowed: {allowed})"
    )]
    Pattern {
        /// The declared pattern.
        pattern: ArgPattern,
        /// The node's patterns.
        allowed: String,
    },
}

impl ArgPolicy {
    /// A policy that fixes `prefix` and allows nothing after it.
    pub fn exactly(prefix: Vec<String>) -> Self {
        Self {
            prefix,
            allow: Some(Vec::new()),
        }
    }

    /// Whether this policy allows any argument list.
    pub fn is_unrestricted(&self) -> bool {
        self.prefix.is_empty() && self.allow.is_none()
    }

    /// Checks a child's arguments.
    ///
    /// # Errors
    /// [`ArgRefusal`] naming the first argument at fault.
    pub fn check(&self, args: &[String], paths: JobPaths<'_>) -> Result<(), ArgRefusal> {
        let starts =
            args.len() >= self.prefix.len() && args.iter().zip(&self.prefix).all(|(a, p)| a == p);
        if !starts {
            return Err(ArgRefusal::MissingPrefix {
                expected: self.prefix.clone(),
            });
        }
        let Some(allow) = &self.allow else {
            return Ok(());
        };
        for (index, arg) in args.iter().enumerate().skip(self.prefix.len()) {
            let mut outside = false;
            let fits = allow.iter().any(|pattern| match pattern {
                ArgPattern::Exact(text) => arg == text,
                ArgPattern::Prefix(head) => arg.starts_with(head.as_str()),
                ArgPattern::JobPath(head) => match arg.strip_prefix(head.as_str()) {
                    Some(path) if is_job_path(path, paths) => true,
                    Some(_) => {
                        outside = true;
                        false
                    }
                    None => false,
                },
            });
            if fits {
                continue;
            }
            let arg = arg.clone();
            return Err(if outside {
                ArgRefusal::OutsideJob { index, arg }
            } else {
                ArgRefusal::NotAllowed {
                    index,
                    arg,
                    allowed: list(allow),
                }
            });
        }
        Ok(())
    }

    /// Whether every argument list `declared` allows, this policy allows too.
    ///
    /// # Errors
    /// [`TooBroad`] naming what `declared` allows beyond this policy.
    pub fn covers(&self, declared: &Self) -> Result<(), TooBroad> {
        let Some(extra) = declared.prefix.strip_prefix(self.prefix.as_slice()) else {
            return Err(TooBroad::Prefix {
                node: self.prefix.clone(),
                declared: declared.prefix.clone(),
            });
        };
        let Some(allow) = &self.allow else {
            return Ok(());
        };
        if let Some(word) = extra
            .iter()
            .find(|w| !allow.iter().any(|p| p.accepts_literal(w)))
        {
            return Err(TooBroad::PrefixWord {
                word: word.clone(),
                allowed: list(allow),
            });
        }
        let Some(wanted) = &declared.allow else {
            return Err(TooBroad::Unrestricted {
                allowed: list(allow),
            });
        };
        match wanted.iter().find(|w| !allow.iter().any(|p| p.covers(w))) {
            Some(pattern) => Err(TooBroad::Pattern {
                pattern: pattern.clone(),
                allowed: list(allow),
            }),
            None => Ok(()),
        }
    }
}

impl fmt::Display for ArgPolicy {
    /// `PREFIX... then PATTERN|PATTERN`, for status and logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let after = match &self.allow {
            None => "anything".to_owned(),
            Some(allow) if allow.is_empty() => "nothing".to_owned(),
            Some(allow) => allow
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" | "),
        };
        if self.prefix.is_empty() {
            write!(f, "{after}")
        } else {
            write!(f, "{} then {after}", self.prefix.join(" "))
        }
    }
}

/// The patterns as a readable list.
fn list(allow: &[ArgPattern]) -> String {
    if allow.is_empty() {
        return "no further arguments".to_owned();
    }
    let items: Vec<String> = allow.iter().map(|p| format!("`{p}`")).collect();
    items.join(", ")
}

/// Whether `value`, resolved from the child's working directory with symlinks followed,
/// is inside the job directory. A path that does not exist yet counts when its parent is
/// inside and its last part is a plain name that is not a (dangling) symlink.
fn is_job_path(value: &str, paths: JobPaths<'_>) -> bool {
    if value.is_empty() || value.starts_with('-') {
        return false;
    }
    let path: PathBuf = paths.cwd.join(value);
    match path.canonicalize() {
        Ok(real) => real.starts_with(paths.root),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A dangling symlink also says NotFound: it would be followed on create.
            if path.symlink_metadata().is_ok() {
                return false;
            }
            let Some(Component::Normal(_)) = path.components().next_back() else {
                return false;
            };
            path.parent()
                .and_then(|parent| parent.canonicalize().ok())
                .is_some_and(|parent| parent.starts_with(paths.root))
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests;

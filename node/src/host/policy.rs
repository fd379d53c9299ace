//! What a work type may do: which logical programs map to which executables, what
//! arguments each may be given, which environment reaches a child, where it may run, and
//! the job's limits.
//!
//! Deny by default: a program not listed, arguments its [`ArgPolicy`] does not allow, a
//! variable not allowed, a directory outside the job directory are refused. The checks are
//! pure functions of the policy (plus, for the working directory and job-path arguments,
//! the file system's view of symlinks), testable without wasm.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use super::args::{ArgPolicy, ArgRefusal, JobPaths};
use super::contain::ProgramLimits;
use super::disk::DiskQuota;

/// The logical program name under which [`Policy::for_ansible_runner`] lists ansible-runner.
pub const ANSIBLE_RUNNER_PROGRAM: &str = "ansible-runner";

/// `PATH` of a command work type's child.
pub const COMMAND_PATH: &str = "/usr/bin:/bin";

/// `LANG` of every child built by the constructors: UTF-8 without a locale's quirks.
pub const CHILD_LANG: &str = "C.UTF-8";

/// The job directory's quota when none is configured: 4 GiB and 200,000 files, room for
/// a large playbook's artifacts and events (one file per event).
pub const DEFAULT_DISK_QUOTA: DiskQuota = DiskQuota {
    bytes: 4 << 30,
    inodes: 200_000,
};

/// Limits of one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most linear memory the guest may grow to, in bytes.
    pub memory_bytes: usize,
    /// Wall-clock time the whole job may take.
    pub deadline: Duration,
    /// Most bytes the job may write to its results.
    pub output_bytes: u64,
    /// After a cancel, how long the guest has to wind its child down before both are killed.
    pub cancel_grace: Duration,
    /// Host descriptors the job may hold at once (files and directories its guest opened,
    /// its children's pipes). `None` in a config means the node's share of its
    /// `RLIMIT_NOFILE` (the registry fills it in); at run time, no cap (benchmarks).
    pub descriptors: Option<usize>,
    /// The job directory's quota; `None` is not enforced (benchmarks).
    pub disk: Option<DiskQuota>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            deadline: Duration::from_secs(6 * 3600),
            output_bytes: 4 << 30,
            cancel_grace: Duration::from_secs(10),
            descriptors: None,
            disk: Some(DEFAULT_DISK_QUOTA),
        }
    }
}

/// A refused capability request: returned to the guest as a WIT error value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The logical program is not listed.
    #[error("program {0:?} is not allowed for this work type")]
    NotAllowed(String),
    /// The program is listed but its executable is missing.
    #[error("program {name:?} maps to {path}, which does not exist on this node")]
    NotFound {
        /// The logical name.
        name: String,
        /// The configured path.
        path: PathBuf,
    },
    /// The working directory leaves the job directory.
    #[error("working directory {0:?} is outside the job directory")]
    BadWorkingDirectory(String),
    /// An environment variable the policy does not let through.
    #[error("environment variable {0:?} is not allowed for this work type")]
    EnvNotAllowed(String),
    /// Arguments the program's [`ArgPolicy`] does not allow.
    #[error("program {program:?} may not be run with these arguments: {reason}")]
    ArgNotAllowed {
        /// The logical program.
        program: String,
        /// What is wrong with the arguments.
        reason: ArgRefusal,
    },
}

/// The capabilities of one work type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Logical program name -> absolute path of the executable.
    pub programs: BTreeMap<String, PathBuf>,
    /// Variables every child gets (for example `PATH`, `LANG`). `HOME` is always the job
    /// directory.
    pub env: Vec<(String, String)>,
    /// Names of variables a guest may set for its child.
    pub env_allow: BTreeSet<String>,
    /// Logical program name -> the arguments it may be given; a program not listed here
    /// takes any arguments.
    pub args: BTreeMap<String, ArgPolicy>,
    /// The job's limits.
    pub limits: Limits,
    /// Limits on the programs the job starts (containment, `host/contain`).
    pub program_limits: ProgramLimits,
}

impl Policy {
    /// The policy of command work type `name`: the logical program `name` is `program`;
    /// children get `PATH=/usr/bin:/bin`, `LANG=C.UTF-8` and the `env_pass` variables that
    /// the node has (`node_env` looks them up), which override those two. The guest may
    /// set no variables.
    pub fn for_command(
        name: &str,
        program: &Path,
        env_pass: &[String],
        node_env: impl Fn(&str) -> Option<String>,
        limits: Limits,
    ) -> Self {
        let defaults = [
            ("PATH", COMMAND_PATH.to_owned()),
            ("LANG", CHILD_LANG.into()),
        ];
        Self {
            programs: [(name.to_owned(), program.to_owned())].into(),
            env: child_vars(defaults, env_pass, node_env),
            env_allow: BTreeSet::new(),
            args: BTreeMap::new(),
            limits,
            program_limits: ProgramLimits::default(),
        }
    }

    /// The policy of ansible-runner work: the logical program [`ANSIBLE_RUNNER_PROGRAM`]
    /// is `runner`; children get a `PATH` of the runner's directory then `/usr/bin:/bin`
    /// (so it finds the `ansible-playbook` installed beside it), `LANG=C.UTF-8`, and the
    /// `env_pass` variables that the node has, which override those two. The guest may
    /// set no variables.
    pub fn for_ansible_runner(
        runner: &Path,
        env_pass: &[String],
        node_env: impl Fn(&str) -> Option<String>,
        limits: Limits,
    ) -> Self {
        let mut path: Vec<String> = runner
            .parent()
            .filter(|dir| !dir.as_os_str().is_empty())
            .map(|dir| dir.to_string_lossy().into_owned())
            .into_iter()
            .collect();
        for dir in COMMAND_PATH.split(':') {
            if !path.iter().any(|p| p == dir) {
                path.push(dir.to_owned());
            }
        }
        let defaults = [("PATH", path.join(":")), ("LANG", CHILD_LANG.into())];
        Self {
            programs: [(ANSIBLE_RUNNER_PROGRAM.to_owned(), runner.to_owned())].into(),
            env: child_vars(defaults, env_pass, node_env),
            // The submitter's terminal type, so Ansible colours output as a local run does.
            env_allow: BTreeSet::from(["TERM".to_owned()]),
            args: [(ANSIBLE_RUNNER_PROGRAM.to_owned(), ansible_runner_args())].into(),
            limits,
            program_limits: ProgramLimits::default(),
        }
    }

    /// The executable for `name`.
    ///
    /// # Errors
    /// [`Denied::NotAllowed`] for an unlisted name, [`Denied::NotFound`] when the listed
    /// path is not a file.
    pub fn resolve_program(&self, name: &str) -> Result<&Path, Denied> {
        let path = self
            .programs
            .get(name)
            .ok_or_else(|| Denied::NotAllowed(name.to_owned()))?;
        if !path.is_file() {
            return Err(Denied::NotFound {
                name: name.to_owned(),
                path: path.clone(),
            });
        }
        Ok(path)
    }

    /// Checks a child's arguments against the program's [`ArgPolicy`]; `root` is the job
    /// directory and `cwd` the child's working directory (inside it).
    ///
    /// # Errors
    /// [`Denied::ArgNotAllowed`] naming the first argument at fault, or the job directory
    /// when it cannot be resolved.
    pub fn check_args(
        &self,
        program: &str,
        args: &[String],
        root: &Path,
        cwd: &Path,
    ) -> Result<(), Denied> {
        let Some(policy) = self.args.get(program) else {
            return Ok(());
        };
        // Job paths are judged by where symlinks really lead: compare canonical paths.
        let bad_dir = || Denied::BadWorkingDirectory(cwd.display().to_string());
        let root = root.canonicalize().map_err(|_| bad_dir())?;
        let cwd = cwd.canonicalize().map_err(|_| bad_dir())?;
        let paths = JobPaths {
            root: &root,
            cwd: &cwd,
        };
        policy
            .check(args, paths)
            .map_err(|reason| Denied::ArgNotAllowed {
                program: program.to_owned(),
                reason,
            })
    }

    /// The complete environment of a child: the policy's variables, `HOME` set to the job
    /// directory, then the guest's requested variables (each must be allowed).
    ///
    /// # Errors
    /// [`Denied::EnvNotAllowed`] naming the first variable that is not allowed.
    pub fn child_env(
        &self,
        job_dir: &Path,
        requested: &[(String, String)],
    ) -> Result<Vec<(String, String)>, Denied> {
        if let Some((name, _)) = requested.iter().find(|(n, _)| !self.env_allow.contains(n)) {
            return Err(Denied::EnvNotAllowed(name.clone()));
        }
        let mut env: BTreeMap<String, String> = self.env.iter().cloned().collect();
        env.insert("HOME".to_owned(), job_dir.display().to_string());
        env.extend(requested.iter().cloned());
        Ok(env.into_iter().collect())
    }
}

/// What ansible-runner may be asked to do: `worker --private-data-dir .` (the job
/// directory), then `--worker-info` or `--delete` (what AWX sends), as guest-runner runs it.
pub fn ansible_runner_args() -> ArgPolicy {
    let words = |w: &[&str]| w.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    ArgPolicy {
        prefix: words(&["worker", "--private-data-dir", "."]),
        allow: Some(vec![
            super::args::ArgPattern::Exact("--worker-info".into()),
            super::args::ArgPattern::Exact("--delete".into()),
        ]),
    }
}

/// `defaults`, then each passed-through variable the node has, replacing a default of the
/// same name.
fn child_vars<const N: usize>(
    defaults: [(&str, String); N],
    env_pass: &[String],
    node_env: impl Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = defaults
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
    for name in env_pass {
        let Some(value) = node_env(name) else {
            continue;
        };
        match env.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => env.push((name.clone(), value)),
        }
    }
    env
}

/// Resolves a guest's working directory (relative to the job directory) to a path that is
/// inside it, following symlinks.
///
/// # Errors
/// [`Denied::BadWorkingDirectory`] for absolute paths, `..` that climbs out, a path that
/// does not exist, or a symlink that leads out.
pub fn resolve_cwd(job_dir: &Path, cwd: Option<&str>) -> Result<PathBuf, Denied> {
    let Some(cwd) = cwd else {
        return Ok(job_dir.to_owned());
    };
    let bad = || Denied::BadWorkingDirectory(cwd.to_owned());
    let mut relative = PathBuf::new();
    for part in Path::new(cwd).components() {
        match part {
            Component::Normal(p) => relative.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                if !relative.pop() {
                    return Err(bad());
                }
            }
            Component::RootDir | Component::Prefix(_) => return Err(bad()),
        }
    }
    let root = job_dir.canonicalize().map_err(|_| bad())?;
    let target = root.join(relative).canonicalize().map_err(|_| bad())?;
    if target.starts_with(&root) && target.is_dir() {
        Ok(target)
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            programs: [
                ("cat".to_owned(), PathBuf::from("/bin/cat")),
                ("ghost".to_owned(), PathBuf::from("/nonexistent/ghost")),
            ]
            .into(),
            env: vec![("LANG".into(), "C.UTF-8".into())],
            env_allow: ["EXTRA".to_owned()].into(),
            args: BTreeMap::new(),
            limits: Limits::default(),
            program_limits: ProgramLimits::default(),
        }
    }

    #[test]
    fn denies_unlisted_program_and_reports_missing_executable() {
        let p = policy();
        assert_eq!(p.resolve_program("cat").unwrap(), Path::new("/bin/cat"));
        assert_eq!(
            p.resolve_program("sh"),
            Err(Denied::NotAllowed("sh".into()))
        );
        assert!(matches!(
            p.resolve_program("ghost"),
            Err(Denied::NotFound { .. })
        ));
    }

    #[test]
    fn environment_is_policy_plus_allowed_requests_with_home_in_job_dir() {
        let p = policy();
        let env = p
            .child_env(Path::new("/jobs/u1"), &[("EXTRA".into(), "1".into())])
            .unwrap();
        assert_eq!(
            env,
            vec![
                ("EXTRA".into(), "1".into()),
                ("HOME".into(), "/jobs/u1".into()),
                ("LANG".into(), "C.UTF-8".into())
            ]
        );
        assert_eq!(
            p.child_env(Path::new("/j"), &[("LD_PRELOAD".into(), "x".into())]),
            Err(Denied::EnvNotAllowed("LD_PRELOAD".into()))
        );
    }

    fn node_env(name: &str) -> Option<String> {
        match name {
            "FOO" => Some("foo value".into()),
            "LANG" => Some("de_DE.UTF-8".into()),
            "ANSIBLE_FORCE_COLOR" => Some("1".into()),
            _ => None,
        }
    }

    fn pairs(env: &[(&str, &str)]) -> Vec<(String, String)> {
        env.iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn command_policy_lists_the_work_type_and_passes_chosen_variables() {
        let limits = Limits {
            memory_bytes: 1 << 20,
            ..Limits::default()
        };
        let pass = ["FOO".to_owned(), "MISSING".to_owned()];
        let p = Policy::for_command(
            "cat",
            Path::new("/bin/cat"),
            &pass,
            node_env,
            limits.clone(),
        );
        assert_eq!(
            p.programs,
            [("cat".to_owned(), PathBuf::from("/bin/cat"))].into()
        );
        assert_eq!(
            p.env,
            pairs(&[
                ("PATH", "/usr/bin:/bin"),
                ("LANG", "C.UTF-8"),
                ("FOO", "foo value")
            ])
        );
        assert!(p.env_allow.is_empty());
        assert_eq!(p.limits, limits);
        assert_eq!(p.resolve_program("cat").unwrap(), Path::new("/bin/cat"));
        assert!(p.resolve_program("ansible-runner").is_err());
        let p = Policy::for_command("c", Path::new("/bin/cat"), &[], node_env, Limits::default());
        assert_eq!(
            p.env,
            pairs(&[("PATH", "/usr/bin:/bin"), ("LANG", "C.UTF-8")])
        );
        let lang = ["LANG".to_owned()];
        let p = Policy::for_command(
            "c",
            Path::new("/bin/cat"),
            &lang,
            node_env,
            Limits::default(),
        );
        assert_eq!(
            p.env[1],
            ("LANG".into(), "de_DE.UTF-8".into()),
            "node value wins"
        );
    }

    #[test]
    fn ansible_runner_policy_puts_the_runner_dir_first_on_path() {
        let runner = Path::new("/opt/venv/bin/ansible-runner");
        let pass = ["ANSIBLE_FORCE_COLOR".to_owned()];
        let p = Policy::for_ansible_runner(runner, &pass, node_env, Limits::default());
        assert_eq!(
            p.programs,
            [(ANSIBLE_RUNNER_PROGRAM.to_owned(), runner.to_owned())].into()
        );
        assert_eq!(
            p.env,
            pairs(&[
                ("PATH", "/opt/venv/bin:/usr/bin:/bin"),
                ("LANG", "C.UTF-8"),
                ("ANSIBLE_FORCE_COLOR", "1")
            ])
        );
        assert_eq!(p.env_allow, BTreeSet::from(["TERM".to_owned()]));
        let system = Policy::for_ansible_runner(
            Path::new("/usr/bin/ansible-runner"),
            &[],
            node_env,
            Limits::default(),
        );
        assert_eq!(system.env[0], ("PATH".into(), "/usr/bin:/bin".into()));
        let home = system.child_env(Path::new("/jobs/1"), &[]).unwrap();
        assert!(home.contains(&("HOME".into(), "/jobs/1".into())));
    }

    #[test]
    fn working_directory_stays_inside_the_job_dir() {
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path().join("job");
        std::fs::create_dir_all(job.join("project/sub")).unwrap();
        std::os::unix::fs::symlink("/etc", job.join("escape")).unwrap();
        let root = job.canonicalize().unwrap();
        assert_eq!(resolve_cwd(&job, None).unwrap(), job);
        assert_eq!(
            resolve_cwd(&job, Some("project/./sub/..")).unwrap(),
            root.join("project")
        );
        for bad in ["/etc", "..", "project/../../x", "escape", "missing"] {
            assert!(
                matches!(
                    resolve_cwd(&job, Some(bad)),
                    Err(Denied::BadWorkingDirectory(_))
                ),
                "{bad} must be refused"
            );
        }
    }
}

//! The work types a node offers, each with its active handler component, policy and fixed
//! parameters, built from the node's config at startup and switched atomically by a deploy.
//!
//! A job takes an `Arc` of its work type's [`ActiveHandler`] when it starts, so a deploy
//! changes what new jobs run while running jobs finish on the component they started with.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::args::ArgPolicy;
use super::builtin::GUEST_RUNNER;
use super::component::{ComponentError, ComponentInfo, load_signed};
use super::contain::ProgramLimits;
use super::detect::{DetectError, find_ansible_runner, resolve_program};
use super::fds::{Budget, nofile_limit, per_job_budget};
use super::params::Task;
use super::policy::{Limits, Policy};
use super::runner::{Handler, Host, HostError};
use super::signing::{SignedManifest, SignerKey, VerifyError, embedded_manifest};
use crate::config::{ANSIBLE_RUNNER_WORK_TYPE, Config, HandlerKind, WorkTypeConfig};

/// One offered work type.
#[derive(Debug)]
pub struct ActiveHandler {
    /// The work type's name.
    pub work_type: String,
    /// What the work type's config asks of the component (`job.task`).
    pub task: Task,
    /// The compiled component.
    pub handler: Handler,
    /// What its jobs may do.
    pub policy: Arc<Policy>,
    /// Which component it is.
    pub info: ComponentInfo,
    /// Whether a submission may add arguments.
    pub allow_runtime_params: bool,
}

impl ActiveHandler {
    /// The handler name shown in status and matched by a deploy's signed work types.
    pub fn handler_name(&self) -> &str {
        self.task.handler_name(&self.work_type)
    }
}

/// Every offered work type, by name.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    types: BTreeMap<String, Arc<ActiveHandler>>,
    /// How the node contains its jobs' programs, for status.
    containment: String,
}

impl Registry {
    /// How the node contains its jobs' programs (`cgroup v1 (memory, pids) + cgroup v2
    /// (kill)`, ...), as found when the registry was built.
    pub fn containment(&self) -> &str {
        &self.containment
    }

    /// The handler of `work_type`, if offered.
    pub fn get(&self, work_type: &str) -> Option<Arc<ActiveHandler>> {
        self.types.get(work_type).cloned()
    }

    /// The offered work types' names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.types.keys().cloned().collect()
    }

    /// Every offered work type.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<ActiveHandler>> {
        self.types.values()
    }

    /// Offers `active` under its work type's name, replacing what was there.
    pub fn insert(&mut self, active: ActiveHandler) {
        self.types
            .insert(active.work_type.clone(), Arc::new(active));
    }
}

/// The built-in guest-runner, compiled, with its identity.
///
/// # Errors
/// [`HostError`] when it does not compile (a broken build).
pub fn builtin(host: &Host) -> Result<(Handler, ComponentInfo), HostError> {
    let handler = host.load(GUEST_RUNNER)?;
    let manifest = embedded_manifest(GUEST_RUNNER).ok().flatten();
    let (name, version) = manifest.map_or_else(
        || ("guest-runner".to_owned(), crate::VERSION.to_owned()),
        |m| (m.name, m.version),
    );
    let info = ComponentInfo {
        name,
        version,
        sha256: handler.sha256(),
        signer: None,
    };
    Ok((handler, info))
}

/// Why a configured work type is not offered.
#[derive(Debug, thiserror::Error)]
pub enum OfferError {
    /// A command work type's program does not exist.
    #[error("work type {work_type}: program {} not found", program.display())]
    ProgramNotFound {
        /// The work type.
        work_type: String,
        /// The configured program.
        program: PathBuf,
    },
    /// No working ansible-runner was found.
    #[error("work type {work_type}: {source}")]
    AnsibleRunner {
        /// The work type.
        work_type: String,
        /// What was tried.
        #[source]
        source: DetectError,
    },
    /// A component or signature file could not be read.
    #[error("work type {work_type}: {}: {source}", path.display())]
    Read {
        /// The work type.
        work_type: String,
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The signature file is not a signed manifest.
    #[error("work type {work_type}: {source}")]
    Signature {
        /// The work type.
        work_type: String,
        /// Why.
        #[source]
        source: VerifyError,
    },
    /// The component failed a check or does not load.
    #[error("work type {work_type}: {source}")]
    Component {
        /// The work type.
        work_type: String,
        /// Which check.
        #[source]
        source: ComponentError,
    },
}

/// What building the registry found.
#[derive(Debug, Default)]
pub struct Built {
    /// The offered work types.
    pub registry: Registry,
    /// Work types not offered, and why (for the log).
    pub skipped: Vec<OfferError>,
}

/// The descriptor limit assumed when this process's cannot be read: a common soft limit.
const FALLBACK_NOFILE: u64 = 1024;

/// Builds the registry from the config: command work types whose program exists,
/// ansible-runner where a working one is found, and signed components that verify. Each
/// work type's jobs may hold the configured number of descriptors, else the node's share
/// of its `RLIMIT_NOFILE` among `[work] max-running` jobs.
pub fn build(
    config: &Config,
    host: &Host,
    builtin: &(Handler, ComponentInfo),
    node_env: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Built {
    let nofile = nofile_limit().unwrap_or(FALLBACK_NOFILE);
    let budget = per_job_budget(nofile, config.work.max_running);
    if budget.squeezed {
        tracing::warn!(
            nofile,
            max_running = config.work.max_running,
            per_job = budget.per_job,
            "RLIMIT_NOFILE is too low to keep a reserve and give every running job its \
             minimum; raise it (LimitNOFILE= in systemd) or lower [work] max-running"
        );
    }
    tracing::info!(
        nofile,
        reserve = budget.reserve,
        per_job = budget.per_job,
        "descriptor budget"
    );
    let config = &with_descriptors(config, budget);
    let path_env = node_env("PATH");
    let path_env = path_env.as_deref().map(OsStr::new);
    let mut built = Built::default();
    built.registry.containment = host.containment().describe();
    if config.offers_default_ansible_runner() {
        let default = WorkTypeConfig {
            name: ANSIBLE_RUNNER_WORK_TYPE.to_owned(),
            handler: HandlerKind::AnsibleRunner,
            env_pass: Vec::new(),
            limits: Limits {
                descriptors: Some(budget.per_job),
                ..Limits::default()
            },
            program_limits: ProgramLimits::default(),
        };
        add(
            &mut built,
            offer(config, host, builtin, &default, path_env, node_env),
        );
    }
    for work_type in &config.work_types {
        let result = offer(config, host, builtin, work_type, path_env, node_env);
        add(&mut built, result);
    }
    built
}

/// The config with every work type's descriptor cap filled in from `budget`: the default
/// share where none is configured, at most the node's equal share where one is.
fn with_descriptors(config: &Config, budget: Budget) -> Config {
    let mut config = config.clone();
    for work_type in &mut config.work_types {
        let limits = &mut work_type.limits;
        limits.descriptors = Some(match limits.descriptors {
            None => budget.per_job,
            Some(n) if n > budget.share => {
                tracing::warn!(
                    work_type = %work_type.name, configured = n, share = budget.share,
                    "descriptors above the node's share of RLIMIT_NOFILE; using the share"
                );
                budget.share
            }
            Some(n) => n,
        });
    }
    config
}

fn add(built: &mut Built, result: Result<ActiveHandler, OfferError>) {
    match result {
        Ok(active) => built.registry.insert(active),
        Err(why) => built.skipped.push(why),
    }
}

fn offer(
    config: &Config,
    host: &Host,
    builtin: &(Handler, ComponentInfo),
    work_type: &WorkTypeConfig,
    path_env: Option<&OsStr>,
    node_env: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Result<ActiveHandler, OfferError> {
    let name = &work_type.name;
    match &work_type.handler {
        HandlerKind::Command {
            program,
            params,
            allow_runtime_params,
            args,
        } => {
            let path =
                resolve_program(program, path_env).ok_or_else(|| OfferError::ProgramNotFound {
                    work_type: name.clone(),
                    program: program.clone(),
                })?;
            let mut policy = Policy {
                program_limits: work_type.program_limits,
                ..Policy::for_command(
                    name,
                    &path,
                    &work_type.env_pass,
                    node_env,
                    work_type.limits.clone(),
                )
            };
            // The program runs with the configured params first; a submission (or a
            // component deployed over this work type) may add only what runtime params
            // and `args` allow.
            let allow = if *allow_runtime_params {
                args.clone()
            } else {
                Some(Vec::new())
            };
            let prefix = params.clone();
            policy
                .args
                .insert(name.clone(), ArgPolicy { prefix, allow });
            Ok(ActiveHandler {
                work_type: name.clone(),
                task: Task::Command {
                    program: name.clone(),
                    args: params.clone(),
                },
                handler: builtin.0.clone(),
                policy: Arc::new(policy),
                info: builtin.1.clone(),
                allow_runtime_params: *allow_runtime_params,
            })
        }
        HandlerKind::AnsibleRunner => {
            let mut env_pass = config.ansible_runner.env_pass.clone();
            env_pass.extend(work_type.env_pass.iter().cloned());
            let found = AnsibleRunnerSetup {
                configured: config.ansible_runner.path.as_deref(),
                path_env,
                env_pass: &env_pass,
                limits: work_type.limits.clone(),
                program_limits: work_type.program_limits,
            };
            ansible_runner(builtin, name, &found, node_env)
        }
        HandlerKind::Component { path, signature } => {
            let policy = Policy {
                env: Vec::new(),
                limits: work_type.limits.clone(),
                program_limits: work_type.program_limits,
                ..Policy::default()
            };
            let (handler, info) =
                load_from_disk(host, path, signature, &config.signers, name, &policy)?;
            Ok(ActiveHandler {
                work_type: name.clone(),
                task: Task::Component,
                handler,
                policy: Arc::new(policy),
                info,
                allow_runtime_params: true,
            })
        }
    }
}

/// Where and how to find ansible-runner for an `ansible-runner` work type.
#[derive(Debug)]
pub struct AnsibleRunnerSetup<'a> {
    /// A configured path; `None` searches `path_env`.
    pub configured: Option<&'a Path>,
    /// The node's `PATH`.
    pub path_env: Option<&'a OsStr>,
    /// Node variables passed through to it.
    pub env_pass: &'a [String],
    /// The jobs' limits.
    pub limits: Limits,
    /// Limits on the programs they start.
    pub program_limits: ProgramLimits,
}

/// The handler for work type `name` served by a working ansible-runner, if one is found.
///
/// # Errors
/// [`OfferError::AnsibleRunner`]: why no usable ansible-runner was found (what was tried).
pub fn ansible_runner(
    builtin: &(Handler, ComponentInfo),
    name: &str,
    setup: &AnsibleRunnerSetup<'_>,
    node_env: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Result<ActiveHandler, OfferError> {
    let runner = find_ansible_runner(setup.configured, setup.path_env).map_err(|source| {
        OfferError::AnsibleRunner {
            work_type: name.to_owned(),
            source,
        }
    })?;
    let policy = Policy {
        program_limits: setup.program_limits,
        ..Policy::for_ansible_runner(&runner.path, setup.env_pass, node_env, setup.limits.clone())
    };
    tracing::info!(work_type = %name, path = %runner.path.display(), version = %runner.version, "found ansible-runner");
    Ok(ActiveHandler {
        work_type: name.to_owned(),
        task: Task::AnsibleRunner,
        handler: builtin.0.clone(),
        policy: Arc::new(policy),
        info: builtin.1.clone(),
        allow_runtime_params: true,
    })
}

fn load_from_disk(
    host: &Host,
    path: &Path,
    signature: &Path,
    signers: &[SignerKey],
    work_type: &str,
    policy: &Policy,
) -> Result<(Handler, ComponentInfo), OfferError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| OfferError::Read {
            work_type: work_type.to_owned(),
            path: path.to_owned(),
            source,
        })
    };
    let bytes = read(path)?;
    let sig =
        SignedManifest::from_json(&read(signature)?).map_err(|source| OfferError::Signature {
            work_type: work_type.to_owned(),
            source,
        })?;
    load_signed(host, &bytes, &sig, signers, work_type, &[], policy).map_err(|source| {
        OfferError::Component {
            work_type: work_type.to_owned(),
            source,
        }
    })
}

//! The `[[work-type]]`, `[[signer]]` and `[ansible-runner]` sections as written, and their
//! decoding.

use std::ops::Range;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use crate::host::contain::{Network, ProgramLimits};
use crate::host::signing::SignerKey;

use super::super::error::{ConfigError, Problem};
use super::super::worktype::{
    self, AnsibleRunnerConfig, DEFAULT_DEADLINE_SECONDS, DEFAULT_DISK_INODES, DEFAULT_DISK_MB,
    DEFAULT_MEMORY_MB, DEFAULT_OUTPUT_MB, HandlerKind, WorkTypeConfig,
};
use super::Decoder;

/// Allowed range of `memory-mb`: a 32-bit guest cannot use more than 4 GiB.
const MEMORY_MB: (u64, u64) = (1, 4_096);
/// Allowed range of `deadline-seconds`: up to a year.
const DEADLINE_SECONDS: (u64, u64) = (1, 366 * 86_400);
/// Allowed range of `output-mb`: up to a pebibyte.
const OUTPUT_MB: (u64, u64) = (1, 1 << 30);
/// Allowed range of `program-memory-mb`: enough to exec a program, up to a pebibyte.
const PROGRAM_MEMORY_MB: (u64, u64) = (16, 1 << 30);
/// Allowed range of `program-pids`: a program and a few children, up to the kernel's
/// largest pid count.
const PROGRAM_PIDS: (u64, u64) = (4, 1 << 22);
/// Allowed range of `program-open-files`: stdio and a few more, up to the kernel's
/// `nr_open` ceiling.
const PROGRAM_OPEN_FILES: (u64, u64) = (16, 1 << 30);
/// Allowed range of `program-file-size-mb`: up to a pebibyte.
const PROGRAM_FILE_SIZE_MB: (u64, u64) = (1, 1 << 30);
/// Allowed range of `descriptors`: from what guest-runner needs to far past any limit.
const DESCRIPTORS: (u64, u64) = (crate::host::fds::MIN_PER_JOB as u64, 1 << 20);
/// Allowed range of `disk-mb`: up to a pebibyte.
const DISK_MB: (u64, u64) = (1, 1 << 30);
/// Allowed range of `disk-inodes`.
const DISK_INODES: (u64, u64) = (16, 1 << 32);

/// A `[[work-type]]` entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct WorkTypeSection {
    name: Spanned<String>,
    handler: Spanned<String>,
    program: Option<Spanned<String>>,
    params: Option<Spanned<String>>,
    allow_runtime_params: Option<Spanned<bool>>,
    #[serde(default)]
    env: Vec<Spanned<String>>,
    memory_mb: Option<Spanned<u64>>,
    deadline_seconds: Option<Spanned<u64>>,
    output_mb: Option<Spanned<u64>>,
    program_memory_mb: Option<Spanned<u64>>,
    program_pids: Option<Spanned<u64>>,
    program_open_files: Option<Spanned<u64>>,
    program_file_size_mb: Option<Spanned<u64>>,
    network: Option<Spanned<String>>,
    descriptors: Option<Spanned<u64>>,
    disk_mb: Option<Spanned<u64>>,
    disk_inodes: Option<Spanned<u64>>,
    args: Option<Spanned<Vec<Spanned<String>>>>,
    component: Option<Spanned<String>>,
    signature: Option<Spanned<String>>,
}

impl WorkTypeSection {
    /// The handler-specific keys that were given, with where they were written.
    fn handler_keys(&self) -> [(&'static str, Option<Range<usize>>); 7] {
        [
            ("program", self.program.as_ref().map(Spanned::span)),
            ("params", self.params.as_ref().map(Spanned::span)),
            (
                "allow-runtime-params",
                self.allow_runtime_params.as_ref().map(Spanned::span),
            ),
            ("args", self.args.as_ref().map(Spanned::span)),
            ("component", self.component.as_ref().map(Spanned::span)),
            ("signature", self.signature.as_ref().map(Spanned::span)),
            ("network", self.network.as_ref().map(Spanned::span)),
        ]
    }
}

/// A `[[signer]]` entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct SignerSection {
    key: Spanned<String>,
}

/// The `[ansible-runner]` section.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct AnsibleRunnerSection {
    path: Option<Spanned<String>>,
    enabled: Option<bool>,
    #[serde(default)]
    env: Vec<Spanned<String>>,
}

impl Decoder<'_> {
    pub(super) fn work_type(
        &self,
        i: usize,
        entry: &WorkTypeSection,
    ) -> Result<WorkTypeConfig, ConfigError> {
        let key = format!("[[work-type]] #{}", i + 1);
        self.parse(&entry.name, &format!("{key} name"), worktype::check_name)?;
        let handler = self.handler(entry, &key)?;
        let memory = self.bounded(
            entry.memory_mb.as_ref(),
            &format!("{key} memory-mb"),
            MEMORY_MB,
        )?;
        let deadline = self.bounded(
            entry.deadline_seconds.as_ref(),
            &format!("{key} deadline-seconds"),
            DEADLINE_SECONDS,
        )?;
        let output = self.bounded(
            entry.output_mb.as_ref(),
            &format!("{key} output-mb"),
            OUTPUT_MB,
        )?;
        let mut limits = worktype::limits(
            memory.unwrap_or(DEFAULT_MEMORY_MB),
            deadline.unwrap_or(DEFAULT_DEADLINE_SECONDS),
            output.unwrap_or(DEFAULT_OUTPUT_MB),
        );
        self.job_limits(entry, &key, &mut limits)?;
        Ok(WorkTypeConfig {
            name: entry.name.get_ref().clone(),
            handler,
            env_pass: self.env_names(&entry.env, &format!("{key} env"))?,
            limits,
            program_limits: self.program_limits(entry, &key)?,
        })
    }

    /// The `program-*` and `network` keys, each defaulting to [`ProgramLimits::default`].
    fn program_limits(
        &self,
        entry: &WorkTypeSection,
        key: &str,
    ) -> Result<ProgramLimits, ConfigError> {
        let defaults = ProgramLimits::default();
        let get = |value: &Option<Spanned<u64>>, name: &str, range| {
            self.bounded(value.as_ref(), &format!("{key} {name}"), range)
        };
        let memory = get(
            &entry.program_memory_mb,
            "program-memory-mb",
            PROGRAM_MEMORY_MB,
        )?;
        let pids = get(&entry.program_pids, "program-pids", PROGRAM_PIDS)?;
        let files = get(
            &entry.program_open_files,
            "program-open-files",
            PROGRAM_OPEN_FILES,
        )?;
        let size = get(
            &entry.program_file_size_mb,
            "program-file-size-mb",
            PROGRAM_FILE_SIZE_MB,
        )?;
        let network = match &entry.network {
            None => defaults.network,
            Some(value) => self.parse(value, &format!("{key} network"), |s| match s {
                "host" => Ok(Network::Host),
                "none" => Ok(Network::None),
                _ => Err(Problem::UnknownChoice {
                    value: s.into(),
                    accepted: "host, none",
                }),
            })?,
        };
        Ok(ProgramLimits {
            memory_bytes: memory.map_or(defaults.memory_bytes, |mb| mb << 20),
            pids: pids.unwrap_or(defaults.pids),
            open_files: files.unwrap_or(defaults.open_files),
            file_size_bytes: size.map_or(defaults.file_size_bytes, |mb| mb << 20),
            network,
        })
    }

    /// The descriptor cap and the job-directory quota.
    fn job_limits(
        &self,
        entry: &WorkTypeSection,
        key: &str,
        limits: &mut crate::host::policy::Limits,
    ) -> Result<(), ConfigError> {
        let descriptors = self.bounded(
            entry.descriptors.as_ref(),
            &format!("{key} descriptors"),
            DESCRIPTORS,
        )?;
        let disk_mb = self.bounded(entry.disk_mb.as_ref(), &format!("{key} disk-mb"), DISK_MB)?;
        let inodes = self.bounded(
            entry.disk_inodes.as_ref(),
            &format!("{key} disk-inodes"),
            DISK_INODES,
        )?;
        // `bounded` kept it within 16..=2^20, which fits any usize of a 32-bit target.
        limits.descriptors = descriptors.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        limits.disk = Some(worktype::disk_quota(
            disk_mb.unwrap_or(DEFAULT_DISK_MB),
            inodes.unwrap_or(DEFAULT_DISK_INODES),
        ));
        Ok(())
    }

    /// The handler and its keys; keys of other handlers are errors.
    fn handler(&self, entry: &WorkTypeSection, key: &str) -> Result<HandlerKind, ConfigError> {
        let handler =
            self.parse(
                &entry.handler,
                &format!("{key} handler"),
                |s| match worktype::HANDLER_NAMES.iter().find(|&&h| h == s) {
                    Some(&h) => Ok(h),
                    None => Err(Problem::UnknownHandler { value: s.into() }),
                },
            )?;
        let allowed: &[&str] = match handler {
            "command" => &[
                "program",
                "params",
                "allow-runtime-params",
                "args",
                "network",
            ],
            "component" => &["component", "signature"],
            _ => &[],
        };
        for (name, span) in entry.handler_keys() {
            if let Some(span) = span
                && !allowed.contains(&name)
            {
                let problem = Problem::NotForHandler { handler, key: name };
                return Err(self.error(span, format!("{key} {name}"), problem));
            }
        }
        let missing = |name| {
            let problem = Problem::MissingForHandler { handler, key: name };
            self.error(entry.handler.span(), format!("{key} {name}"), problem)
        };
        match handler {
            "command" => {
                let program = entry.program.as_ref().ok_or_else(|| missing("program"))?;
                self.command(entry, program, key)
            }
            "component" => {
                let path = entry
                    .component
                    .as_ref()
                    .ok_or_else(|| missing("component"))?;
                self.component(path, entry.signature.as_ref(), key)
            }
            _ => Ok(HandlerKind::AnsibleRunner),
        }
    }

    fn command(
        &self,
        entry: &WorkTypeSection,
        program: &Spanned<String>,
        key: &str,
    ) -> Result<HandlerKind, ConfigError> {
        let program = if program.get_ref().contains('/') {
            self.path_value(program, &format!("{key} program"))?
        } else {
            self.parse(program, &format!("{key} program"), |s| match s {
                "" => Err(Problem::EmptyPath),
                _ => Ok(PathBuf::from(s)),
            })?
        };
        let params = match &entry.params {
            None => Vec::new(),
            Some(params) => self.parse(params, &format!("{key} params"), worktype::split_params)?,
        };
        let allow_runtime_params = entry
            .allow_runtime_params
            .as_ref()
            .is_some_and(|b| *b.get_ref());
        let args = match &entry.args {
            None => None,
            Some(list) if !allow_runtime_params => {
                let problem = Problem::ArgsWithoutRuntimeParams;
                return Err(self.error(list.span(), format!("{key} args"), problem));
            }
            Some(patterns) => Some(self.arg_patterns(patterns.get_ref(), key)?),
        };
        Ok(HandlerKind::Command {
            program,
            params,
            allow_runtime_params,
            args,
        })
    }

    fn arg_patterns(
        &self,
        patterns: &[Spanned<String>],
        key: &str,
    ) -> Result<Vec<crate::host::args::ArgPattern>, ConfigError> {
        patterns
            .iter()
            .map(|p| self.parse(p, &format!("{key} args"), |s| Ok(s.parse()?)))
            .collect()
    }

    fn component(
        &self,
        path: &Spanned<String>,
        signature: Option<&Spanned<String>>,
        key: &str,
    ) -> Result<HandlerKind, ConfigError> {
        let path = self.path_value(path, &format!("{key} component"))?;
        let signature = match signature {
            Some(sig) => self.path_value(sig, &format!("{key} signature"))?,
            None => {
                let mut sig = path.clone().into_os_string();
                sig.push(".sig");
                PathBuf::from(sig)
            }
        };
        Ok(HandlerKind::Component { path, signature })
    }

    fn env_names(&self, names: &[Spanned<String>], key: &str) -> Result<Vec<String>, ConfigError> {
        names
            .iter()
            .map(|name| {
                self.parse(name, key, worktype::check_env_name)
                    .map(|()| name.get_ref().clone())
            })
            .collect()
    }

    pub(super) fn signer(&self, i: usize, entry: &SignerSection) -> Result<SignerKey, ConfigError> {
        let key = format!("[[signer]] #{} key", i + 1);
        self.parse(&entry.key, &key, |s| Ok(s.parse()?))
    }

    pub(super) fn ansible_runner(
        &self,
        section: &AnsibleRunnerSection,
    ) -> Result<AnsibleRunnerConfig, ConfigError> {
        let path = match &section.path {
            None => None,
            Some(path) => Some(self.path_value(path, "[ansible-runner] path")?),
        };
        Ok(AnsibleRunnerConfig {
            path,
            enabled: section.enabled.unwrap_or(true),
            env_pass: self.env_names(&section.env, "[ansible-runner] env")?,
        })
    }
}

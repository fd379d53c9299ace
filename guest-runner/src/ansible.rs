//! The `ansible-runner` handler: runs `ansible-runner worker` in the job directory, the way
//! Receptor's ansible-runner work type does for AWX. It runs detached where the node can:
//! the worker reads the payload file and writes its stream straight to the results file,
//! so the job survives a restart of its node.
//!
//! The job's runtime arguments (a submission's `params`, as AWX sends them) are checked
//! against a short list; nothing unchecked reaches the command line. The private data dir
//! is always the job directory.

use std::fmt;

use crate::bindings::warren::worker::process::Command;
use crate::bindings::warren::worker::types::{Job, Outcome};
use crate::child;

/// The logical program the node's policy must list.
const PROGRAM: &str = "ansible-runner";

/// Runs `ansible-runner worker --private-data-dir .` with the job's checked runtime
/// arguments, and the submitter's terminal type as `TERM` so Ansible's output is coloured
/// as a local run's would be (the node passes only a plain terminal name).
pub(crate) fn handle(job: &Job) -> Outcome {
    let extra = match worker_args(&job.runtime_args) {
        Ok(extra) => extra,
        Err(error) => return crate::failed(error.to_string()),
    };
    let mut args = vec![
        "worker".to_owned(),
        "--private-data-dir".to_owned(),
        ".".to_owned(),
    ];
    args.extend(extra);
    let env = job.terminal.iter().map(|t| ("TERM".to_owned(), t.clone()));
    let cmd = Command {
        program: PROGRAM.to_owned(),
        args,
        env: env.collect(),
        cwd: None,
    };
    child::run_detached("ansible-runner worker", &cmd)
}

/// Why a job's runtime arguments cannot be passed to `ansible-runner worker`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ParamsError {
    /// An argument that is not on the allowed list.
    Unsupported(String),
    /// `--private-data-dir` as the last word, with no value after it.
    MissingValue(&'static str),
}

impl fmt::Display for ParamsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unsupported(arg) => write!(
                f,
                "ansible-runner params: unsupported argument `{arg}` \
                 (allowed: --worker-info, --delete, --private-data-dir=<ignored>)"
            ),
            Self::MissingValue(flag) => write!(f, "ansible-runner params: {flag} needs a value"),
        }
    }
}

/// The extra worker arguments from the job's runtime arguments, in order and without
/// repeats.
///
/// `--worker-info` and `--delete` pass through. `--private-data-dir=X` and
/// `--private-data-dir X` are dropped: the job directory is always used.
///
/// # Errors
///
/// [`ParamsError`] for any other word, so nothing unchecked reaches the command line.
pub(crate) fn worker_args(runtime: &[String]) -> Result<Vec<String>, ParamsError> {
    let mut args: Vec<String> = Vec::new();
    let mut words = runtime.iter().map(String::as_str);
    while let Some(word) = words.next() {
        match word {
            "--worker-info" | "--delete" => {
                if !args.iter().any(|a| a == word) {
                    args.push(word.to_owned());
                }
            }
            "--private-data-dir" => {
                words
                    .next()
                    .ok_or(ParamsError::MissingValue("--private-data-dir"))?;
            }
            _ if word.starts_with("--private-data-dir=") => {}
            _ => return Err(ParamsError::Unsupported(word.to_owned())),
        }
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn no_runtime_args_means_no_extra_args() {
        assert_eq!(worker_args(&[]), Ok(vec![]));
    }

    #[test]
    fn awx_params_keep_delete_and_drop_private_data_dir() {
        let args = worker_args(&words("--private-data-dir=/tmp/x --delete"));
        assert_eq!(args, Ok(vec!["--delete".to_owned()]));
    }

    #[test]
    fn worker_info_passes_through_once() {
        let args = worker_args(&words(
            "--worker-info --worker-info --private-data-dir /elsewhere",
        ));
        assert_eq!(args, Ok(vec!["--worker-info".to_owned()]));
    }

    #[test]
    fn rejects_unlisted_argument() {
        let args = worker_args(&words("--delete --ident=x"));
        assert_eq!(args, Err(ParamsError::Unsupported("--ident=x".to_owned())));
    }

    #[test]
    fn rejects_private_data_dir_without_value() {
        let args = worker_args(&words("--private-data-dir"));
        assert_eq!(args, Err(ParamsError::MissingValue("--private-data-dir")));
    }
}

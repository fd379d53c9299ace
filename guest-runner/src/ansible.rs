//! The `ansible-runner` handler: runs `ansible-runner worker` in the job directory, the way
//! Receptor's ansible-runner work type does for AWX. It runs detached where the node can:
//! the worker reads the payload file and writes its stream straight to the results file,
//! so the job survives a restart of its node.
//!
//! The submission's `params` are checked against a short list; nothing unchecked reaches the
//! command line. The private data dir is always the job directory.

use std::fmt;

use crate::bindings::warren::worker::process::Command;
use crate::bindings::warren::worker::types::{Job, Outcome};
use crate::child;

/// The `job.handler` value this module serves.
pub(crate) const HANDLER: &str = "ansible-runner";

/// The logical program the node's policy must list.
const PROGRAM: &str = "ansible-runner";

/// The name of the submission parameter that carries extra worker arguments (as AWX sends
/// them, for example `--private-data-dir=/tmp/x --delete`).
const PARAMS: &str = "params";

/// Runs `ansible-runner worker --private-data-dir .` with the job's checked params.
pub(crate) fn handle(job: &Job) -> Outcome {
    let extra = match worker_args(&job.params) {
        Ok(extra) => extra,
        Err(error) => return crate::failed(error.to_string()),
    };
    let mut args = vec![
        "worker".to_owned(),
        "--private-data-dir".to_owned(),
        ".".to_owned(),
    ];
    args.extend(extra);
    let cmd = Command {
        program: PROGRAM.to_owned(),
        args,
        env: terminal(&job.params).into_iter().collect(),
        cwd: None,
    };
    child::run_detached("ansible-runner worker", &cmd)
}

/// The submitter's terminal type, from param `term`, so Ansible's output is coloured as a
/// local run's would be. Only a plain terminal name passes.
fn terminal(params: &[(String, String)]) -> Option<(String, String)> {
    let (_, value) = params.iter().find(|(name, _)| name == TERM)?;
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '+');
    (!value.is_empty() && value.len() <= 64 && value.chars().all(plain))
        .then(|| ("TERM".to_owned(), value.clone()))
}

/// The name of the submission parameter that carries the submitter's terminal type.
const TERM: &str = "term";

/// Why a submission's `params` cannot be passed to `ansible-runner worker`.
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

/// The extra worker arguments from every `params` parameter, in order and without repeats.
///
/// `--worker-info` and `--delete` pass through. `--private-data-dir=X` and
/// `--private-data-dir X` are dropped: the job directory is always used.
///
/// # Errors
///
/// [`ParamsError`] for any other word, so nothing unchecked reaches the command line.
pub(crate) fn worker_args(params: &[(String, String)]) -> Result<Vec<String>, ParamsError> {
    let mut args: Vec<String> = Vec::new();
    let values = params.iter().filter(|(name, _)| name == PARAMS);
    for (_, value) in values {
        let mut words = value.split_whitespace();
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
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(values: &[(&str, &str)]) -> Vec<(String, String)> {
        values
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn no_params_means_no_extra_args() {
        assert_eq!(worker_args(&[]), Ok(vec![]));
    }

    #[test]
    fn awx_params_keep_delete_and_drop_private_data_dir() {
        let args = worker_args(&params(&[("params", "--private-data-dir=/tmp/x --delete")]));
        assert_eq!(args, Ok(vec!["--delete".to_owned()]));
    }

    #[test]
    fn worker_info_passes_through_once() {
        let args = worker_args(&params(&[
            ("params", "--worker-info"),
            ("params", "--worker-info --private-data-dir /elsewhere"),
        ]));
        assert_eq!(args, Ok(vec!["--worker-info".to_owned()]));
    }

    #[test]
    fn other_param_names_are_ignored() {
        let args = worker_args(&params(&[("secret_x", "--anything")]));
        assert_eq!(args, Ok(vec![]));
    }

    #[test]
    fn rejects_unlisted_argument() {
        let args = worker_args(&params(&[("params", "--delete --ident=x")]));
        assert_eq!(args, Err(ParamsError::Unsupported("--ident=x".to_owned())));
    }

    #[test]
    fn rejects_private_data_dir_without_value() {
        let args = worker_args(&params(&[("params", "--private-data-dir")]));
        assert_eq!(args, Err(ParamsError::MissingValue("--private-data-dir")));
    }
}

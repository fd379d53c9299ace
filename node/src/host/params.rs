//! What a work handler is told about its job, typed: the work type's [`Task`] (from the
//! node's config) and the submission's [`JobParams`].
//!
//! Owns the submission parameter names that mean something to the node. The control
//! protocol carries a submission's parameters as a name/value map (receptorctl sends
//! Receptor's `params`; `warren run` sends `term`); that map is checked once when the
//! unit is submitted ([`check_submission`]) and turned once, when the job starts, into the
//! typed fields of the `warren:worker@0.2.0` world's `job` ([`JobParams::from_submission`]).
//! No other module reads these names. Pure: no IO.

use std::collections::BTreeMap;

/// The submission parameter carrying runtime arguments, split at whitespace (Receptor's
/// name: receptorctl and AWX send it).
pub const RUNTIME_ARGS: &str = "params";

/// The submission parameter carrying the submitter's terminal type (`warren run` sends
/// its `TERM`).
pub const TERMINAL: &str = "term";

/// Names a submission may not set. Before the 0.2.0 world they named a command's program
/// and arguments inside the job's parameters; they are now inert, and refused so that a
/// submitter who expects to choose the program hears that it cannot.
const RESERVED: [&str; 2] = ["program", "arg"];

/// The longest terminal type passed on.
const MAX_TERMINAL_LEN: usize = 64;

/// Why a submission's parameters are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    /// A name only the node's config may set.
    #[error(
        "parameter {name:?} is reserved: the node's config names a command's program and arguments"
    )]
    Reserved {
        /// The name.
        name: String,
    },
    /// Runtime arguments for a work type that does not take them.
    #[error("work type {work_type} does not allow runtime params")]
    RuntimeNotAllowed {
        /// The work type.
        work_type: String,
    },
}

/// What the node's config makes a work type do: the world's `task`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Task {
    /// `ansible-runner worker` in the job directory.
    AnsibleRunner,
    /// The configured program, configured arguments first.
    Command {
        /// The logical program name the policy lists (the work type's name).
        program: String,
        /// The configured arguments.
        args: Vec<String>,
    },
    /// A work type configured with a component of its own.
    Component,
}

impl Task {
    /// The handler name shown in status and matched by a deploy's signed work types:
    /// `ansible-runner`, `command`, or for a component the work type's own name.
    pub fn handler_name<'a>(&'a self, work_type: &'a str) -> &'a str {
        match self {
            Self::AnsibleRunner => "ansible-runner",
            Self::Command { .. } => "command",
            Self::Component => work_type,
        }
    }
}

/// A submission's parameters as the handler gets them: the world's `job` fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobParams {
    /// Runtime arguments, split at whitespace; empty unless the work type allows them.
    pub runtime_args: Vec<String>,
    /// The submitter's terminal type, if it sent a plain one.
    pub terminal: Option<String>,
    /// Every other parameter, in name order.
    pub other: Vec<(String, String)>,
}

impl JobParams {
    /// The typed parameters of a submission to `work_type`. A terminal type that is not a
    /// plain name (letters, digits, `-._+`, at most 64 characters) is dropped: the job
    /// runs uncoloured rather than with an escape sequence in its environment.
    ///
    /// # Errors
    /// [`ParamsError`] as [`check_submission`] (the config may have changed since the
    /// unit was submitted).
    pub fn from_submission(
        work_type: &str,
        submitted: &BTreeMap<String, String>,
        allow_runtime: bool,
    ) -> Result<Self, ParamsError> {
        check_submission(work_type, submitted, allow_runtime)?;
        let mut params = Self::default();
        for (name, value) in submitted {
            match name.as_str() {
                RUNTIME_ARGS => {
                    params
                        .runtime_args
                        .extend(value.split_whitespace().map(str::to_owned));
                }
                TERMINAL => params.terminal = plain_terminal(value),
                _ => params.other.push((name.clone(), value.clone())),
            }
        }
        Ok(params)
    }
}

/// Checks a submission's parameter names against what `work_type` takes.
///
/// # Errors
/// [`ParamsError::Reserved`] for `program` or `arg`; [`ParamsError::RuntimeNotAllowed`]
/// for runtime arguments to a work type without `allow-runtime-params`.
pub fn check_submission(
    work_type: &str,
    submitted: &BTreeMap<String, String>,
    allow_runtime: bool,
) -> Result<(), ParamsError> {
    if let Some(name) = submitted.keys().find(|k| RESERVED.contains(&k.as_str())) {
        return Err(ParamsError::Reserved { name: name.clone() });
    }
    if submitted.contains_key(RUNTIME_ARGS) && !allow_runtime {
        return Err(ParamsError::RuntimeNotAllowed {
            work_type: work_type.to_owned(),
        });
    }
    Ok(())
}

/// `value` if it is a plain terminal name.
fn plain_terminal(value: &str) -> Option<String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '+');
    (!value.is_empty() && value.len() <= MAX_TERMINAL_LEN && value.chars().all(plain))
        .then(|| value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn runtime_params_become_split_arguments_and_leave_the_other_params() {
        let submitted = map(&[
            ("params", " --delete   --private-data-dir=/tmp/x "),
            ("secret_kube", "k"),
            ("term", "xterm-256color"),
        ]);
        let params = JobParams::from_submission("ansible-runner", &submitted, true).unwrap();
        assert_eq!(
            params.runtime_args,
            ["--delete", "--private-data-dir=/tmp/x"]
        );
        assert_eq!(params.terminal.as_deref(), Some("xterm-256color"));
        assert_eq!(params.other, [("secret_kube".to_owned(), "k".to_owned())]);
    }

    #[test]
    fn runtime_params_are_refused_where_the_work_type_does_not_take_them() {
        let submitted = map(&[("params", "/etc/passwd")]);
        let err = JobParams::from_submission("cat", &submitted, false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "work type cat does not allow runtime params"
        );
        assert!(JobParams::from_submission("cat", &map(&[("x", "1")]), false).is_ok());
    }

    #[test]
    fn a_submission_cannot_name_the_program_or_its_arguments() {
        for name in ["program", "arg"] {
            let err = check_submission("cat", &map(&[(name, "/bin/sh")]), true).unwrap_err();
            assert_eq!(
                err,
                ParamsError::Reserved {
                    name: name.to_owned()
                }
            );
            assert!(err.to_string().contains("is reserved"), "{err}");
        }
    }

    #[test]
    fn a_terminal_type_with_control_characters_or_spaces_is_dropped() {
        let hostile = [
            "xterm\u{1b}]0;pwned\u{7}",
            "xterm; rm -rf /",
            "",
            &"x".repeat(65),
        ];
        for value in hostile {
            let params = JobParams::from_submission("a", &map(&[("term", value)]), true).unwrap();
            assert_eq!(params.terminal, None, "{value:?}");
            assert!(params.other.is_empty(), "never passed on as another param");
        }
        let params = JobParams::from_submission("a", &map(&[("term", "screen.xterm+1")]), true);
        assert_eq!(params.unwrap().terminal.as_deref(), Some("screen.xterm+1"));
    }

    #[test]
    fn handler_names_are_those_a_deploy_is_signed_for() {
        let command = Task::Command {
            program: "cat".into(),
            args: vec![],
        };
        assert_eq!(command.handler_name("cat"), "command");
        assert_eq!(Task::AnsibleRunner.handler_name("ar"), "ansible-runner");
        assert_eq!(Task::Component.handler_name("mine"), "mine");
    }
}

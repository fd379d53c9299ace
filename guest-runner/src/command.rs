//! The `command` handler: Receptor's command work type. Runs the logical program the node's
//! config names for the work type, with the allowed extra arguments the host passes, stderr
//! merged into stdout.
//!
//! The host builds the parameters: `program` (the work type's logical program; defaults to
//! the work type's name) and one `arg` per argument, in order. The node's policy still
//! decides whether the program may run.

use crate::bindings::warren::worker::process::Command;
use crate::bindings::warren::worker::types::{Job, Outcome};
use crate::child;

/// The `job.handler` value this module serves.
pub(crate) const HANDLER: &str = "command";

/// Runs the job's command with payload → stdin and stdout+stderr → results.
pub(crate) fn handle(job: &Job) -> Outcome {
    let cmd = command_for(job);
    child::run(&cmd.program, &cmd, true)
}

/// The command a job asks for: the first `program` parameter (else the work type's name)
/// and every `arg` parameter, in order.
pub(crate) fn command_for(job: &Job) -> Command {
    let program = job
        .params
        .iter()
        .find(|(name, _)| name == "program")
        .map_or_else(|| job.work_type.clone(), |(_, value)| value.clone());
    let args = job
        .params
        .iter()
        .filter(|(name, _)| name == "arg")
        .map(|(_, value)| value.clone())
        .collect();
    Command {
        program,
        args,
        env: Vec::new(),
        cwd: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(work_type: &str, params: &[(&str, &str)]) -> Job {
        Job {
            id: "abcd1234".into(),
            work_type: work_type.into(),
            handler: HANDLER.into(),
            params: params
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn program_defaults_to_work_type() {
        let cmd = command_for(&job("cat", &[]));
        assert_eq!(cmd.program, "cat");
        assert!(cmd.args.is_empty());
        assert!(cmd.cwd.is_none());
    }

    #[test]
    fn uses_program_param_and_args_in_order() {
        let cmd = command_for(&job(
            "echo-work",
            &[
                ("arg", "one"),
                ("program", "echo"),
                ("other", "x"),
                ("arg", "two"),
            ],
        ));
        assert_eq!(cmd.program, "echo");
        assert_eq!(cmd.args, ["one", "two"]);
        assert!(cmd.env.is_empty());
    }
}

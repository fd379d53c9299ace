//! The `command` handler: Receptor's command work type. Runs the logical program the node's
//! config names for the work type, its configured arguments first and then the job's
//! runtime arguments, stderr merged into stdout. The node's policy still decides whether
//! the program may run with those arguments.

use crate::bindings::warren::worker::process::Command;
use crate::bindings::warren::worker::types::{CommandSpec, Job, Outcome};
use crate::child;

/// Runs the job's command with payload → stdin and stdout+stderr → results.
pub(crate) fn handle(job: &Job, spec: &CommandSpec) -> Outcome {
    let cmd = command_for(job, spec);
    child::run(&cmd.program, &cmd, true)
}

/// The command a job runs: the configured program with the configured arguments, then the
/// runtime arguments, in order.
pub(crate) fn command_for(job: &Job, spec: &CommandSpec) -> Command {
    let mut args = spec.args.clone();
    args.extend(job.runtime_args.iter().cloned());
    Command {
        program: spec.program.clone(),
        args,
        env: Vec::new(),
        cwd: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::warren::worker::types::Task;

    fn job(spec: &CommandSpec, runtime: &[&str], params: &[(&str, &str)]) -> Job {
        Job {
            id: "abcd1234".into(),
            work_type: "echo-work".into(),
            task: Task::Command(spec.clone()),
            runtime_args: runtime.iter().map(|a| (*a).to_owned()).collect(),
            terminal: None,
            params: params
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    fn spec(program: &str, args: &[&str]) -> CommandSpec {
        CommandSpec {
            program: program.into(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        }
    }

    #[test]
    fn runs_the_configured_program_with_its_arguments() {
        let spec = spec("cat", &[]);
        let cmd = command_for(&job(&spec, &[], &[]), &spec);
        assert_eq!(cmd.program, "cat");
        assert!(cmd.args.is_empty());
        assert!(cmd.cwd.is_none());
        assert!(cmd.env.is_empty());
    }

    #[test]
    fn configured_arguments_come_before_runtime_arguments() {
        let spec = spec("echo", &["one", "two"]);
        let cmd = command_for(&job(&spec, &["three", "four"], &[]), &spec);
        assert_eq!(cmd.args, ["one", "two", "three", "four"]);
    }

    #[test]
    fn other_params_never_reach_the_command_line() {
        let spec = spec("echo", &["one"]);
        let params = [("program", "sh"), ("arg", "-c"), ("params", "x")];
        let cmd = command_for(&job(&spec, &[], &params), &spec);
        assert_eq!(cmd.program, "echo");
        assert_eq!(cmd.args, ["one"]);
    }
}

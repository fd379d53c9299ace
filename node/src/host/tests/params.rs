//! The typed job parameters through the real guest-runner: what the node's config and the
//! submission say reaches the program exactly as the fields of the world's `job` say, and
//! nothing else does.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::host::params::JobParams;

/// A stand-in ansible-runner that prints its `TERM` and arguments.
fn echoing_runner(dir: &Path) -> PathBuf {
    let path = dir.join("ansible-runner");
    std::fs::write(&path, "#!/bin/sh\necho \"TERM=${TERM-unset} args=$*\"\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn submitted(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test]
async fn ansible_runner_gets_the_terminal_and_checked_runtime_args_from_a_submission() {
    let bin = tempfile::tempdir().unwrap();
    let runner = echoing_runner(bin.path());
    let policy = Arc::new(Policy::for_ansible_runner(
        &runner,
        &[],
        |_| None,
        Limits::default(),
    ));
    let params = JobParams::from_submission(
        "ansible-runner",
        &submitted(&[
            ("params", "--private-data-dir=/tmp/elsewhere --delete"),
            ("term", "xterm-256color"),
            ("secret_x", "--worker-info"),
        ]),
        true,
    )
    .unwrap();
    let job = Job {
        id: "Test0001".into(),
        work_type: "ansible-runner".into(),
        task: Task::AnsibleRunner,
        params,
    };
    let (outcome, results, _dir) = run(&shared().guest, policy.clone(), job, vec![], None).await;
    assert_eq!(outcome, Outcome::Succeeded, "{}", text(&results));
    assert_eq!(
        text(&results),
        "TERM=xterm-256color args=worker --private-data-dir . --delete\n"
    );

    // A terminal type carrying an escape sequence is not passed on; the job still runs.
    let params = JobParams::from_submission(
        "ansible-runner",
        &submitted(&[("term", "xterm\u{1b}]0;owned\u{7}")]),
        true,
    )
    .unwrap();
    let job = Job {
        id: "Test0002".into(),
        work_type: "ansible-runner".into(),
        task: Task::AnsibleRunner,
        params,
    };
    let (outcome, results, _dir) = run(&shared().guest, policy, job, vec![], None).await;
    assert_eq!(outcome, Outcome::Succeeded, "{}", text(&results));
    assert_eq!(
        text(&results),
        "TERM=unset args=worker --private-data-dir .\n"
    );
}

#[tokio::test]
async fn params_named_like_the_old_program_and_arg_keys_do_not_change_a_command() {
    let policy = policy(
        &[("echo", "/bin/echo"), ("sh", "/bin/sh")],
        Limits::default(),
    );
    // Before 0.2.0 the guest took its program from a `program` parameter and its
    // arguments from `arg` parameters; such names now reach the guest only as the
    // submission's other params, which the command handler does not read.
    let mut job = command_job("echo", &["configured"]);
    job.params = JobParams {
        runtime_args: vec!["runtime".into()],
        terminal: None,
        other: vec![
            ("arg".into(), "injected".into()),
            ("program".into(), "sh".into()),
        ],
    };
    let (outcome, results, _dir) = run(&shared().guest, policy, job, vec![], None).await;
    assert_eq!(outcome, Outcome::Succeeded);
    assert_eq!(text(&results), "configured runtime\n");
}

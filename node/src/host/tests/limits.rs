//! The job's limits against the probe handler doing what a hostile handler would: hoard
//! descriptors and pollables, fill its directory itself or through a child, and run a
//! granted program with arguments the policy does not allow.

use std::time::Duration;

use super::*;
use crate::host::args::ArgPolicy;
use crate::host::disk::DiskQuota;
use crate::host::fds::JOB_BASELINE;

fn with_limits(programs: &[(&str, &str)], change: impl FnOnce(&mut Limits)) -> Arc<Policy> {
    let mut limits = Limits::default();
    change(&mut limits);
    policy(programs, limits)
}

fn failure(outcome: &Outcome) -> &str {
    match outcome {
        Outcome::Failed { detail, .. } => detail,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn a_guest_opening_descriptors_in_a_loop_gets_an_error_value_at_its_cap() {
    let policy = with_limits(&[], |l| l.descriptors = Some(40));
    let (outcome, results, _dir) = run(
        &shared().probe,
        policy.clone(),
        job("open-files", &[]),
        vec![],
        None,
    )
    .await;
    assert_eq!(outcome, Outcome::Succeeded, "the guest chose how to go on");
    let opened = 40 - JOB_BASELINE;
    assert_eq!(
        text(&results),
        format!("open-files {opened} err OutOfMemory: Out of memory (os error 48)\n")
    );
    // Its descriptors went with it: the next job opens as many again.
    let (_, results, _dir) = run(
        &shared().probe,
        policy,
        job("open-files", &[]),
        vec![],
        None,
    )
    .await;
    assert!(
        text(&results).starts_with(&format!("open-files {opened} ")),
        "{}",
        text(&results)
    );
    // Without a cap (as before caps existed) the same guest takes all it asks for.
    let uncapped = with_limits(&[], |l| l.descriptors = None);
    let (_, results, _dir) = run(
        &shared().probe,
        uncapped,
        job("open-files", &[("max", "2000")]),
        vec![],
        None,
    )
    .await;
    assert_eq!(text(&results), "open-files 2000 err none\n");
}

#[tokio::test]
async fn a_guest_hoarding_pollables_fails_its_job_naming_the_resource_limit() {
    let policy = with_limits(&[], |l| l.descriptors = Some(16));
    let (outcome, _, _dir) = run(
        &shared().probe,
        policy.clone(),
        job("pollables", &[]),
        vec![],
        None,
    )
    .await;
    let detail = failure(&outcome);
    assert!(
        detail.contains("exceeded its limit of 256 open resources"),
        "{detail}"
    );
    let (outcome, _, _dir) = run(&shared().probe, policy, job("noop", &[]), vec![], None).await;
    assert_eq!(outcome, Outcome::Succeeded);
}

#[tokio::test]
async fn a_guest_writing_past_its_quota_is_refused_and_fails_with_the_reason() {
    let quota = DiskQuota {
        bytes: 1 << 20,
        inodes: 100,
    };
    let policy = with_limits(&[], |l| l.disk = Some(quota));
    let params = [("bytes", "8388608")];
    let (outcome, results, dir) = run(
        &shared().probe,
        policy.clone(),
        job("write", &params),
        vec![],
        None,
    )
    .await;
    let detail = failure(&outcome);
    assert!(
        detail.starts_with("job directory exceeded its disk quota")
            && detail.contains("the quota is 1048576 bytes and 100 inodes"),
        "{detail}"
    );
    // The guest got an error value (its report), never more than the quota on disk.
    let report = text(&results);
    let written: u64 = report
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{report}"));
    assert!(report.starts_with("write err "), "{report}");
    assert!(written <= 1 << 20, "{report}");
    assert!(
        !dir.path().join("job").exists(),
        "the stopped job's directory is removed to free the disk"
    );
    // Within the quota, the same guest succeeds; without one, it writes all it wants.
    let (outcome, results, _dir) = run(
        &shared().probe,
        policy,
        job("write", &[("bytes", "65536")]),
        vec![],
        None,
    )
    .await;
    assert_eq!(outcome, Outcome::Succeeded);
    assert_eq!(text(&results), "write ok 65536\n");
    let unlimited = with_limits(&[], |l| l.disk = None);
    let (outcome, results, _dir) = run(
        &shared().probe,
        unlimited,
        job("write", &params),
        vec![],
        None,
    )
    .await;
    assert_eq!(outcome, Outcome::Succeeded);
    assert_eq!(text(&results), "write ok 8388608\n");
}

#[tokio::test]
async fn a_guest_creating_files_past_its_inode_quota_fails_with_the_reason() {
    let quota = DiskQuota {
        bytes: 1 << 30,
        inodes: 50,
    };
    let policy = with_limits(&[], |l| l.disk = Some(quota));
    let (outcome, results, _dir) = run(
        &shared().probe,
        policy,
        job("create-files", &[]),
        vec![],
        None,
    )
    .await;
    assert!(
        failure(&outcome).contains("exceeded its disk quota"),
        "{outcome:?}"
    );
    // inside.txt is the first entry (measured at the first create); 49 more fit.
    assert_eq!(
        text(&results),
        "create-files 49 err Quota exceeded (os error 19)\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_writing_past_the_quota_is_stopped_with_the_reason() {
    let quota = DiskQuota {
        bytes: 16 << 20,
        inodes: 100,
    };
    let policy = with_limits(&[("sh", "/bin/sh")], |l| {
        l.disk = Some(quota);
        l.deadline = Duration::from_secs(60);
    });
    // Writes 256 MiB as fast as it can, then lingers: only the watcher can stop it.
    let script = "head -c 268435456 /dev/zero > flood; sleep 60";
    let params = [("program", "sh"), ("arg", "-c"), ("arg", script)];
    let started = std::time::Instant::now();
    let (outcome, _, dir) = run(&shared().probe, policy, job("spawn", &params), vec![], None).await;
    assert!(
        failure(&outcome).starts_with("job directory exceeded its disk quota"),
        "{outcome:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(50),
        "not the deadline"
    );
    assert!(!dir.path().join("job").exists());
}

#[tokio::test]
async fn a_granted_program_with_arguments_the_policy_refuses_gets_a_value() {
    let only_job_paths: ArgPolicy = serde_json::from_str(r#"{"allow":["{job-path}"]}"#).unwrap();
    let policy = policy(&[("cat", "/bin/cat")], Limits::default());
    // Without an argument policy (as before policies existed) the attack works.
    let open = policy.clone();
    let params = [("program", "cat"), ("probe-arg", "/etc/passwd")];
    let (_, results, _dir) = run(&shared().probe, open, job("spawn", &params), vec![], None).await;
    assert_eq!(text(&results), "spawn exited 0\n");
    let mut policy = (*policy).clone();
    policy.args.insert("cat".into(), only_job_paths);
    let policy = Arc::new(policy);
    let cases = [
        ("/etc/passwd", "spawn err SpawnError::NotAllowed"),
        ("../results", "spawn err SpawnError::NotAllowed"),
        ("inside.txt", "spawn exited 0"),
    ];
    for (arg, expected) in cases {
        let params = [("program", "cat"), ("probe-arg", arg)];
        let (outcome, results, _dir) = run(
            &shared().probe,
            policy.clone(),
            job("spawn", &params),
            vec![],
            None,
        )
        .await;
        assert_eq!(outcome, Outcome::Succeeded);
        assert!(
            text(&results).contains(expected),
            "{arg}: {}",
            text(&results)
        );
    }
    // guest-runner's command handler, asked at run time: the unit fails naming the argument.
    let mut job = command_job("cat", &[]);
    job.params.runtime_args = vec!["/etc/passwd".to_owned()];
    let (outcome, results, _dir) = run(&shared().guest, policy, job, vec![], None).await;
    assert_eq!(
        failure(&outcome),
        "cannot start cat: program \"cat\" may not be run with these arguments: argument 0 \
         \"/etc/passwd\" is not a path inside the job directory"
    );
    assert!(
        results.is_empty(),
        "nothing of /etc/passwd: {}",
        text(&results)
    );
}

//! Host tests against the real components: guest-runner (built into the binary) and the
//! probe handler (built for tests by build.rs). Both are compiled once per test run into one
//! shared cache.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::watch;

use super::builtin::GUEST_RUNNER;
use super::params::{JobParams, Task};
use super::policy::{Limits, Policy};
use super::runner::{Handler, Host, Job, JobIo, Outcome};

mod limits;
mod params;

/// The probe handler, for tests only.
const PROBE_HANDLER: &[u8] = include_bytes!(env!("WARREN_PROBE_HANDLER_WASM"));

struct Shared {
    host: Host,
    guest: Handler,
    probe: Handler,
}

/// One host and both compiled components, shared by every test of the run.
fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let host = Host::new(&shared_cache_dir()).expect("host");
        let guest = host.load(GUEST_RUNNER).expect("guest-runner loads");
        let probe = host.load(PROBE_HANDLER).expect("probe handler loads");
        Shared { host, guest, probe }
    })
}

/// The compile cache every test of the run shares.
fn shared_cache_dir() -> PathBuf {
    std::env::temp_dir().join(format!("warren-host-tests-{}", std::process::id()))
}

fn policy(programs: &[(&str, &str)], limits: Limits) -> Arc<Policy> {
    Arc::new(Policy {
        programs: programs
            .iter()
            .map(|(n, p)| ((*n).to_owned(), PathBuf::from(p)))
            .collect::<BTreeMap<_, _>>(),
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        env_allow: BTreeSet::from(["ALLOWED".to_owned()]),
        args: BTreeMap::new(),
        limits,
        program_limits: Default::default(),
    })
}

/// A job for the probe: work type `behaviour` (the probe's default behaviour), `params` as
/// the submission's other parameters.
fn job(behaviour: &str, params: &[(&str, &str)]) -> Job {
    Job {
        id: "Test0001".into(),
        work_type: behaviour.into(),
        task: Task::Component,
        params: JobParams {
            other: params
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..JobParams::default()
        },
    }
}

/// A job of a command work type running `program` with configured `args`.
fn command_job(program: &str, args: &[&str]) -> Job {
    Job {
        id: "Test0001".into(),
        work_type: program.into(),
        task: Task::Command {
            program: program.into(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        },
        params: JobParams::default(),
    }
}

/// Runs `job` with `payload`; returns the outcome and the results.
async fn run(
    handler: &Handler,
    policy: Arc<Policy>,
    job: Job,
    payload: Vec<u8>,
    cancel: Option<Duration>,
) -> (Outcome, Vec<u8>, tempfile::TempDir) {
    run_on(&shared().host, handler, policy, job, payload, cancel).await
}

/// [`run`] on `host` (the one that loaded `handler`).
async fn run_on(
    host: &Host,
    handler: &Handler,
    policy: Arc<Policy>,
    job: Job,
    payload: Vec<u8>,
    cancel: Option<Duration>,
) -> (Outcome, Vec<u8>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let job_dir = dir.path().join("job");
    std::fs::create_dir(&job_dir).unwrap();
    std::fs::write(job_dir.join("inside.txt"), b"hello").unwrap();
    let results_path = dir.path().join("results");
    let results = tokio::fs::File::create(&results_path).await.unwrap();
    let io = JobIo {
        job_dir,
        payload: Box::new(std::io::Cursor::new(payload)),
        results: Box::new(results),
        files: None,
    };
    let (tx, rx) = watch::channel(false);
    if let Some(after) = cancel {
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = tx.send(true);
        });
    } else {
        std::mem::forget(tx);
    }
    let outcome = host.run(handler, policy, job, io, rx).await;
    let results = std::fs::read(&results_path).unwrap();
    (outcome, results, dir)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_relays_megabytes_through_cat_byte_for_byte() {
    let payload: Vec<u8> = (0..6_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
    let policy = policy(&[("cat", "/bin/cat")], Limits::default());
    let job = command_job("cat", &[]);
    let (outcome, results, _dir) = run(&shared().guest, policy, job, payload.clone(), None).await;
    assert_eq!(outcome, Outcome::Succeeded);
    assert!(
        results == payload,
        "got {} of {} bytes",
        results.len(),
        payload.len()
    );
}

#[tokio::test]
async fn unlisted_program_is_refused_with_a_value_not_a_trap() {
    let policy = policy(&[("cat", "/bin/cat")], Limits::default());
    let (outcome, results, _dir) = run(
        &shared().probe,
        policy.clone(),
        job("spawn", &[("program", "sh")]),
        vec![],
        None,
    )
    .await;
    assert_eq!(outcome, Outcome::Succeeded);
    assert!(
        text(&results).contains("spawn err SpawnError::NotAllowed"),
        "{}",
        text(&results)
    );
    // The same through guest-runner's command handler: a clean failure naming the reason.
    let (outcome, _, _dir) = run(
        &shared().guest,
        policy,
        command_job("sh", &[]),
        vec![],
        None,
    )
    .await;
    let Outcome::Failed { detail, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(detail.contains("not allowed"), "{detail}");
}

#[tokio::test]
async fn spawn_checks_environment_and_working_directory() {
    let policy = policy(&[("true", "/bin/true")], Limits::default());
    let cases = [
        (vec![("env", "LD_PRELOAD=x")], "EnvNotAllowed"),
        (vec![("env", "ALLOWED=1")], "spawn exited 0"),
        (vec![("cwd", "../..")], "BadWorkingDirectory"),
        (vec![("cwd", "/tmp")], "BadWorkingDirectory"),
    ];
    for (extra, expected) in cases {
        let mut params = vec![("program", "true")];
        params.extend(extra);
        let (_, results, _dir) = run(
            &shared().probe,
            policy.clone(),
            job("spawn", &params),
            vec![],
            None,
        )
        .await;
        assert!(
            text(&results).contains(expected),
            "{params:?}: {}",
            text(&results)
        );
    }
}

#[tokio::test]
async fn guest_sees_only_its_job_directory_and_no_environment() {
    let policy = policy(&[], Limits::default());
    for (path, expected) in [
        ("inside.txt", "read ok 5"),
        ("/etc/passwd", "read err"),
        ("../results", "read err"),
    ] {
        let (_, results, _dir) = run(
            &shared().probe,
            policy.clone(),
            job("read-file", &[("path", path)]),
            vec![],
            None,
        )
        .await;
        assert!(
            text(&results).starts_with(expected),
            "{path}: {}",
            text(&results)
        );
    }
    let (_, results, _dir) = run(&shared().probe, policy, job("env", &[]), vec![], None).await;
    assert_eq!(text(&results), "env \n");
}

fn short_limits() -> Limits {
    Limits {
        memory_bytes: 32 << 20,
        deadline: Duration::from_millis(500),
        output_bytes: 64 * 1024,
        cancel_grace: Duration::from_millis(300),
        ..Limits::default()
    }
}

#[tokio::test]
async fn runaway_cpu_is_stopped_at_the_deadline_and_the_next_job_runs() {
    let policy = policy(&[], short_limits());
    let (outcome, _, _dir) = run(
        &shared().probe,
        policy.clone(),
        job("loop", &[]),
        vec![],
        None,
    )
    .await;
    let Outcome::Failed { detail, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(detail.contains("deadline"), "{detail}");
    let (outcome, _, _dir) = run(&shared().probe, policy, job("noop", &[]), vec![], None).await;
    assert_eq!(outcome, Outcome::Succeeded);
}

#[tokio::test]
async fn runaway_memory_is_stopped_at_the_cap_and_the_next_job_runs() {
    let policy = policy(&[], short_limits());
    let (outcome, _, _dir) = run(
        &shared().probe,
        policy.clone(),
        job("alloc", &[]),
        vec![],
        None,
    )
    .await;
    let Outcome::Failed { detail, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(detail.contains("memory limit"), "{detail}");
    let (outcome, _, _dir) = run(&shared().probe, policy, job("noop", &[]), vec![], None).await;
    assert_eq!(outcome, Outcome::Succeeded);
}

#[tokio::test]
async fn a_trapping_guest_fails_the_job() {
    let policy = policy(&[], Limits::default());
    let (outcome, _, _dir) = run(&shared().probe, policy, job("trap", &[]), vec![], None).await;
    let Outcome::Failed { detail, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(detail.contains("trapped"), "{detail}");
}

#[tokio::test]
async fn cancel_reaches_the_guest_and_a_deaf_guest_is_stopped_after_the_grace() {
    let limits = Limits {
        deadline: Duration::from_secs(30),
        ..short_limits()
    };
    let policy = policy(&[], limits);
    let cancel = Some(Duration::from_millis(100));
    let (outcome, results, _dir) = run(
        &shared().probe,
        policy.clone(),
        job("wait-cancel", &[]),
        vec![],
        cancel,
    )
    .await;
    assert!(matches!(outcome, Outcome::Canceled { .. }), "{outcome:?}");
    assert_eq!(text(&results), "cancelled\n");
    let (outcome, _, _dir) = run(&shared().probe, policy, job("loop", &[]), vec![], cancel).await;
    let Outcome::Canceled { detail } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(detail.contains("did not finish"), "{detail}");
}

#[tokio::test]
async fn cancel_terminates_the_child_and_the_job_is_canceled() {
    let policy = policy(&[("sleep", "/bin/sleep")], Limits::default());
    let started = std::time::Instant::now();
    let (outcome, _, _dir) = run(
        &shared().guest,
        policy,
        command_job("sleep", &["30"]),
        vec![],
        Some(Duration::from_millis(200)),
    )
    .await;
    assert!(matches!(outcome, Outcome::Canceled { .. }), "{outcome:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn output_past_the_cap_fails_the_job() {
    let policy = policy(&[("cat", "/bin/cat")], short_limits());
    let limits = Limits {
        deadline: Duration::from_secs(30),
        ..short_limits()
    };
    let policy = Arc::new(Policy {
        limits,
        ..(*policy).clone()
    });
    let (outcome, results, _dir) = run(
        &shared().guest,
        policy,
        command_job("cat", &[]),
        vec![b'x'; 1 << 20],
        None,
    )
    .await;
    let Outcome::Failed { detail, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(detail.contains("output limit"), "{detail}");
    assert!(results.len() <= 64 * 1024);
}

/// The shared test cache's file for `bytes`.
fn shared_cache_file(bytes: &[u8]) -> PathBuf {
    let sha256: [u8; 32] =
        sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(bytes)).into();
    shared_cache_dir().join(shared().host.cache_name(&sha256))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_cwasm_owned_by_another_user_is_not_loaded() {
    // Another user plants the probe handler's native code under guest-runner's cache name.
    let planted = std::fs::read(shared_cache_file(PROBE_HANDLER)).expect("the probe is cached");
    let guest_file = shared_cache_file(GUEST_RUNNER)
        .file_name()
        .unwrap()
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    std::fs::set_permissions(&cache, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let target = cache.join(&guest_file);
    std::fs::write(&target, &planted).unwrap();
    std::os::unix::fs::chown(&target, Some(65534), Some(65534)).expect("chown (tests run as root)");

    let host = Host::new(&cache).expect("host");
    assert_eq!(host.cache_problem(), None);
    let guest = host.load(GUEST_RUNNER).expect("guest-runner loads");
    // The probe would succeed at "noop"; guest-runner serves no component work type.
    let policy = policy(&[], Limits::default());
    let (outcome, _, _dir) = run_on(&host, &guest, policy, job("noop", &[]), vec![], None).await;
    let Outcome::Failed { detail, .. } = outcome else {
        panic!("the planted code ran: {outcome:?}");
    };
    assert!(
        detail.contains("work type noop is configured for a component of its own"),
        "{detail}"
    );
    // And the planted file was replaced by this node's own.
    let meta = std::fs::metadata(&target).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        rustix::process::geteuid().as_raw()
    );
    assert_ne!(std::fs::read(&target).unwrap(), planted);
}

#[test]
fn components_are_cached_by_content_hash() {
    let shared = shared();
    let again = shared.host.load(GUEST_RUNNER).unwrap();
    assert_eq!(again.sha256(), shared.guest.sha256());
    let _ = Path::new("");
}

/// The `process` capability called directly on a job's state, without any wasm.
mod without_wasm {
    use super::*;
    use crate::host::bindings::warren::worker::process::{
        Command, Host as _, HostChild as _, SpawnError,
    };
    use crate::host::state::JobState;
    use wasmtime_wasi::p2::pipe::{ClosedInputStream, SinkOutputStream};

    fn state(dir: &Path) -> JobState {
        let (_tx, rx) = watch::channel(false);
        let policy = policy(&[("true", "/bin/true")], Limits::default());
        JobState::new(
            "Direct01".into(),
            dir.to_owned(),
            policy,
            (Box::new(ClosedInputStream), Box::new(SinkOutputStream)),
            rx,
            None,
        )
        .unwrap()
    }

    fn command(program: &str, env: &[(&str, &str)], cwd: Option<&str>) -> Command {
        Command {
            program: program.into(),
            args: vec![],
            env: env
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            cwd: cwd.map(Into::into),
        }
    }

    #[tokio::test]
    async fn spawn_answers_policy_refusals_as_values_and_runs_what_is_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = state(dir.path());
        let refused = state.spawn(command("sh", &[], None), false).await.unwrap();
        assert!(
            matches!(refused, Err(SpawnError::NotAllowed(_))),
            "{refused:?}"
        );
        let refused = state
            .spawn(command("true", &[("PATH", "/evil")], None), false)
            .await
            .unwrap();
        assert!(
            matches!(refused, Err(SpawnError::EnvNotAllowed(_))),
            "{refused:?}"
        );
        let refused = state
            .spawn(command("true", &[], Some("/")), false)
            .await
            .unwrap();
        assert!(
            matches!(refused, Err(SpawnError::BadWorkingDirectory(_))),
            "{refused:?}"
        );
        let child = state
            .spawn(command("true", &[], None), true)
            .await
            .unwrap()
            .unwrap();
        let pid = state
            .pid(wasmtime::component::Resource::new_borrow(child.rep()))
            .await
            .unwrap();
        assert!(pid > 0);
        let rep = child.rep();
        let status = wait_exit(&mut state, rep).await;
        assert!(
            matches!(
                status,
                crate::host::bindings::warren::worker::process::ExitStatus::Exited(0)
            ),
            "{status:?}"
        );
    }

    #[tokio::test]
    async fn spawn_past_the_descriptor_cap_is_refused_with_a_value_until_pipes_close() {
        use crate::host::bindings::warren::worker::process::HostChild;
        use crate::host::fds::{CHILD_DESCRIPTORS, JOB_BASELINE};
        use wasmtime::component::Resource;
        let dir = tempfile::tempdir().unwrap();
        let (_tx, rx) = watch::channel(false);
        let limits = Limits {
            descriptors: Some(JOB_BASELINE + CHILD_DESCRIPTORS),
            ..Limits::default()
        };
        let policy = policy(&[("true", "/bin/true")], limits);
        let io = (
            Box::new(ClosedInputStream) as _,
            Box::new(SinkOutputStream) as _,
        );
        let mut state =
            JobState::new("Direct02".into(), dir.path().into(), policy, io, rx, None).unwrap();
        let first = state
            .spawn(command("true", &[], None), false)
            .await
            .unwrap()
            .unwrap();
        let refused = state
            .spawn(command("true", &[], None), false)
            .await
            .unwrap();
        assert!(
            matches!(&refused, Err(SpawnError::Io(m)) if m.contains("too many open files")),
            "{refused:?}"
        );
        // A pipe taken from the child keeps its descriptors counted after the child is gone.
        let stdout = state
            .take_stdout(Resource::new_borrow(first.rep()))
            .await
            .unwrap()
            .unwrap();
        HostChild::drop(&mut state, first).await.unwrap();
        let refused = state
            .spawn(command("true", &[], None), false)
            .await
            .unwrap();
        assert!(matches!(refused, Err(SpawnError::Io(_))), "{refused:?}");
        drop(state.table.delete(stdout).unwrap());
        // The stream's reader task lets go of the pipe once the runtime drops it.
        for _ in 0..100 {
            if state.fds.held() == JOB_BASELINE {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let again = state
            .spawn(command("true", &[], None), false)
            .await
            .unwrap();
        assert!(again.is_ok(), "{again:?}");
    }

    async fn wait_exit(
        state: &mut JobState,
        rep: u32,
    ) -> crate::host::bindings::warren::worker::process::ExitStatus {
        for _ in 0..500 {
            let child = wasmtime::component::Resource::new_borrow(rep);
            if let Some(status) = state.try_wait(child).await.unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("child did not exit");
    }
}

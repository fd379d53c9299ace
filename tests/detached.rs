//! Detached jobs through the host API, with real processes: the built-in handler starts an
//! `ansible-runner` stand-in detached (stdin the payload file, stdout appended to the results
//! file, under a `warren` supervisor); the "node" (this test binary re-executed) is
//! SIGKILLed; a fresh `Host` re-attaches and finishes the unit with the complete output.
//!
//! The node side runs in a child process that re-executes the same test with
//! `WARREN_DETACHED_NODE` set, so killing it kills a real node process, not a task.
//!
//! Then through the work layer as a user runs a playbook: `ansible-runner run ...
//! --via-receptor node1` from a controller; node1 SIGKILLed mid-job and restarted on the
//! same data dir re-attaches, and the run ends with the full output; a re-attached unit
//! cancelled or released leaves no process of its job.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use warren::host::contain::detached::Reattach;
use warren::host::contain::record::{
    DETACHED_DIR, EndReason, ExitRecord, JobRecord, ProgramExit, read_job_log,
};
use warren::host::contain::{ContainMode, Containment, UnitFiles};
use warren::host::params::{JobParams, Task};
use warren::host::policy::{Limits, Policy};
use warren::host::runner::{Host, Job, JobIo, Outcome};

use crate::contain::{assert_all_gone, marked_sleep, marker, script};
use crate::run;
use crate::support::{component_cache, wait_for, warren_bin};

/// Set in the re-executed test process that plays the node: the unit directory.
const NODE_ROLE: &str = "WARREN_DETACHED_NODE";

/// The unit's id, which names its directory (a job log is adopted only by its own unit).
const UNIT_ID: &str = "Detach01";

/// Lines the stand-in prints, one every 50 ms.
const LINES: usize = 100;

/// A unit directory as the work layer lays it out, with the stand-in program.
pub struct Unit {
    /// Holds the unit's directory and the stand-in's scripts until the test ends.
    _root: tempfile::TempDir,
    /// `<root>/Detach01`: named for its unit, as in `<data_dir>/units/`.
    dir: PathBuf,
    pub marker: String,
    pub runner: PathBuf,
}

impl Unit {
    pub fn new() -> Self {
        let root = tempfile::Builder::new()
            .prefix("warren-detached")
            .tempdir()
            .unwrap();
        let unit_dir = root.path().join(UNIT_ID);
        std::fs::create_dir(&unit_dir).unwrap();
        let marker = marker();
        let sleep = marked_sleep(root.path(), &marker);
        // Called as `<runner> worker --private-data-dir .`: echoes the payload, leaves a
        // daemon behind, prints numbered lines, and exits 3 (143 on SIGTERM).
        let runner = script(
            root.path(),
            &format!("runner-{marker}"),
            &format!(
                "trap 'echo terminated; exit 143' TERM\n\
                 printf 'payload:'; cat; echo\n\
                 setsid {} 300 &\n\
                 i=1\n\
                 while [ $i -le {LINES} ]; do echo \"line $i\"; i=$((i+1)); sleep 0.05; done\n\
                 exit 3\n",
                sleep.display()
            ),
        );
        std::fs::create_dir(unit_dir.join("job")).unwrap();
        std::fs::write(unit_dir.join("stdin"), "hello").unwrap();
        std::fs::write(unit_dir.join("stdout"), "").unwrap();
        Self {
            _root: root,
            dir: unit_dir,
            marker,
            runner,
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn results(&self) -> String {
        std::fs::read_to_string(self.path().join("stdout")).unwrap_or_default()
    }

    pub fn record(&self) -> Option<JobRecord> {
        Some(read_job_log(&self.path().join(DETACHED_DIR)).ok()??.record)
    }

    pub fn exit(&self) -> Option<ExitRecord> {
        read_job_log(&self.path().join(DETACHED_DIR)).ok()??.exit
    }
}

/// The complete output the stand-in writes when not interrupted.
fn full_output() -> String {
    let mut text = "payload:hello\n".to_owned();
    for i in 1..=LINES {
        text.push_str(&format!("line {i}\n"));
    }
    text
}

pub fn host() -> Host {
    let containment = Containment::detect(ContainMode::Auto, Some(warren_bin())).unwrap();
    Host::with_containment(&component_cache(), containment).unwrap()
}

/// The unit's files, recording every `ExtraData` the host reports.
pub fn files(dir: &Path, extra: Arc<Mutex<Vec<serde_json::Value>>>) -> UnitFiles {
    UnitFiles {
        dir: dir.to_owned(),
        payload: dir.join("stdin"),
        results: dir.join("stdout"),
        on_output: Arc::new(|| {}),
        on_extra_data: Arc::new(move |v| extra.lock().unwrap().push(v)),
    }
}

/// Runs the stand-in as the `ansible-runner` handler would, with the unit's files.
pub async fn run(
    host: &Host,
    dir: &Path,
    runner: &Path,
    cancel: watch::Receiver<bool>,
) -> (Outcome, Vec<serde_json::Value>) {
    let limits = Limits {
        deadline: Duration::from_secs(120),
        cancel_grace: Duration::from_secs(5),
        ..Limits::default()
    };
    run_with(host, dir, runner, cancel, limits).await
}

/// As [`run`], with `limits`.
async fn run_with(
    host: &Host,
    dir: &Path,
    runner: &Path,
    cancel: watch::Receiver<bool>,
    limits: Limits,
) -> (Outcome, Vec<serde_json::Value>) {
    let guest = host.load(warren::host::builtin::GUEST_RUNNER).unwrap();
    let policy = Arc::new(Policy::for_ansible_runner(runner, &[], |_| None, limits));
    let job = Job {
        id: UNIT_ID.into(),
        work_type: "ansible-runner".into(),
        task: Task::AnsibleRunner,
        params: JobParams::default(),
    };
    let extra = Arc::new(Mutex::new(Vec::new()));
    let io = JobIo {
        job_dir: dir.join("job"),
        payload: Box::new(tokio::fs::File::open(dir.join("stdin")).await.unwrap()),
        results: Box::new(
            tokio::fs::OpenOptions::new()
                .append(true)
                .open(dir.join("stdout"))
                .await
                .unwrap(),
        ),
        files: Some(files(dir, extra.clone())),
    };
    let outcome = host.run(&guest, policy, job, io, cancel).await;
    let extra = extra.lock().unwrap().clone();
    (outcome, extra)
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// In the re-executed process: be the node, start the job, say so, and wait to be killed.
/// Returns false in the test process itself.
fn play_node() -> bool {
    let Some(dir) = std::env::var_os(NODE_ROLE) else {
        return false;
    };
    let dir = PathBuf::from(dir);
    let runner = PathBuf::from(std::env::var_os("WARREN_DETACHED_RUNNER").unwrap());
    runtime().block_on(async {
        let host = host();
        let (_cancel, rx) = watch::channel(false);
        tokio::spawn(async move {
            let _ = run(&host, &dir, &runner, rx).await;
        });
        tokio::time::sleep(Duration::from_secs(600)).await;
    });
    true
}

/// Starts the node process for `unit` (this test, re-executed) and waits until its job's
/// supervisor is recorded and the job has printed a few lines.
fn start_node(unit: &Unit, test: &str) -> std::process::Child {
    let node = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(NODE_ROLE, unit.path())
        .env("WARREN_DETACHED_RUNNER", &unit.runner)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the node to start the detached job", || {
        unit.record()?.supervisor?;
        (unit.results().lines().count() >= 5).then_some(())
    });
    node
}

fn sigkill(mut node: std::process::Child) {
    node.kill().unwrap();
    node.wait().unwrap();
}

#[test]
fn a_detached_job_outlives_a_sigkilled_node_and_a_fresh_host_finishes_it() {
    if play_node() {
        return;
    }
    let unit = Unit::new();
    let node = start_node(
        &unit,
        "detached::a_detached_job_outlives_a_sigkilled_node_and_a_fresh_host_finishes_it",
    );
    sigkill(node);
    let record = unit.record().unwrap();
    let supervisor = record.supervisor.unwrap();
    assert!(
        Path::new(&format!("/proc/{}", supervisor.pid)).exists(),
        "the supervisor died with the node"
    );
    // The job goes on writing its results with no node at all.
    let before = unit.results().len();
    wait_for("the job to write on without its node", || {
        (unit.results().len() > before).then_some(())
    });
    assert!(
        unit.exit().is_none(),
        "the job ended before re-attaching: make LINES larger"
    );
    let extra = Arc::new(Mutex::new(Vec::new()));
    let outcome = runtime().block_on(async {
        let host = host();
        let Reattach::Running(job) = host.reattach(files(unit.path(), extra)) else {
            panic!("the running job was not found");
        };
        assert_eq!(job.record().label, "ansible-runner worker");
        let (_cancel, rx) = watch::channel(false);
        job.finish(rx).await
    });
    assert_eq!(
        outcome,
        Outcome::Failed {
            detail: "ansible-runner worker exited with code 3".into(),
            exit_code: Some(3)
        }
    );
    assert_eq!(unit.results(), full_output(), "every byte once, in order");
    let exit = unit.exit().unwrap();
    assert_eq!(
        (exit.status, exit.reason),
        (ProgramExit::Exited(3), EndReason::Exited)
    );
    assert_all_gone(&unit.marker, "the re-attached job's end");
    for cgroup in &record.cgroups {
        wait_for("the job's cgroups to be removed", || {
            (!cgroup.exists()).then_some(())
        });
    }
}

#[test]
fn a_detached_job_that_ended_while_its_node_was_down_reports_its_recorded_exit() {
    if play_node() {
        return;
    }
    let unit = Unit::new();
    let node = start_node(
        &unit,
        "detached::a_detached_job_that_ended_while_its_node_was_down_reports_its_recorded_exit",
    );
    sigkill(node);
    let exit = wait_for("the supervisor to record the exit", || unit.exit());
    assert_eq!(exit.status, ProgramExit::Exited(3));
    assert_all_gone(&unit.marker, "the job's end with no node");
    let extra = Arc::new(Mutex::new(Vec::new()));
    match host().reattach(files(unit.path(), extra)) {
        Reattach::Ended { outcome, exit } => {
            assert_eq!(exit.status, ProgramExit::Exited(3));
            assert_eq!(
                outcome,
                Outcome::Failed {
                    detail: "ansible-runner worker exited with code 3".into(),
                    exit_code: Some(3)
                }
            );
        }
        other => panic!("expected the recorded end, got {other:?}"),
    }
    assert_eq!(unit.results(), full_output());
}

#[test]
fn a_reattached_job_cancelled_gets_sigterm_and_leaves_nothing() {
    if play_node() {
        return;
    }
    let unit = Unit::new();
    let node = start_node(
        &unit,
        "detached::a_reattached_job_cancelled_gets_sigterm_and_leaves_nothing",
    );
    sigkill(node);
    let extra = Arc::new(Mutex::new(Vec::new()));
    let outcome = runtime().block_on(async {
        let Reattach::Running(job) = host().reattach(files(unit.path(), extra)) else {
            panic!("the running job was not found");
        };
        let (cancel, rx) = watch::channel(false);
        let finished = tokio::spawn(job.finish(rx));
        cancel.send(true).unwrap();
        finished.await.unwrap()
    });
    assert_eq!(
        outcome,
        Outcome::Canceled {
            detail: "canceled; ansible-runner worker exited with code 143".into()
        }
    );
    assert!(
        unit.results().ends_with("terminated\n"),
        "{}",
        unit.results()
    );
    assert_all_gone(&unit.marker, "the cancel");
}

#[test]
fn a_unit_without_a_job_record_is_gone() {
    let unit = Unit::new();
    let extra = Arc::new(Mutex::new(Vec::new()));
    match host().reattach(files(unit.path(), extra)) {
        Reattach::Gone { detail } => {
            assert_eq!(detail, "no detached job was recorded for this unit");
        }
        other => panic!("expected gone, got {other:?}"),
    }
}

#[test]
fn a_detached_job_runs_to_its_end_under_its_handler_and_records_its_containment() {
    let unit = Unit::new();
    let (outcome, extra) = runtime().block_on(async {
        let (_cancel, rx) = watch::channel(false);
        run(&host(), unit.path(), &unit.runner, rx).await
    });
    assert_eq!(
        outcome,
        Outcome::Failed {
            detail: "ansible-runner worker exited with code 3".into(),
            exit_code: Some(3)
        }
    );
    assert_eq!(unit.results(), full_output());
    let recorded = &extra.first().expect("ExtraData recorded")["Containment"];
    assert_eq!(recorded["Detached"], true, "{recorded}");
    assert_eq!(recorded["Supervised"], true);
    let record = unit.record().unwrap();
    assert!(record.supervisor.is_some() && record.program.is_some());
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_eq!(record.boot_id, boot.trim());
    let exit = unit.exit().expect("the exit is in the job log");
    assert_eq!(exit.status, ProgramExit::Exited(3));
    // Every file a job creates costs its start: one log, no temp files, no exit file.
    let mut names: Vec<String> = std::fs::read_dir(unit.path().join(DETACHED_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["job.json", "stderr"]);
    assert_all_gone(&unit.marker, "the job's end");
}

#[test]
fn a_detached_job_past_the_output_cap_is_stopped_with_that_reason() {
    let unit = Unit::new();
    let limits = Limits {
        deadline: Duration::from_secs(120),
        output_bytes: 100,
        ..Limits::default()
    };
    let (outcome, extra) = runtime().block_on(async {
        let (_cancel, rx) = watch::channel(false);
        run_with(&host(), unit.path(), &unit.runner, rx, limits).await
    });
    let Outcome::Failed { detail, .. } = &outcome else {
        panic!("expected a failure, got {outcome:?}");
    };
    assert!(
        detail.starts_with("results exceeded the output limit of 100 bytes; ansible-runner worker was killed by signal"),
        "{detail}"
    );
    assert!(
        unit.results().len() < full_output().len(),
        "the job was not stopped"
    );
    let stopped = extra.last().unwrap()["Containment"]["Stopped"].clone();
    assert_eq!(stopped, "results exceeded the output limit of 100 bytes");
    assert_all_gone(&unit.marker, "the output cap");
}

// ---- Through the work layer, as a user runs a playbook ----

/// A node's job processes: those working in its data dir (ansible-runner worker and
/// ansible-playbook work in the unit's job directory).
fn job_processes(data: &Path) -> Vec<(i32, String)> {
    crate::contain::working_in(data)
}

/// Waits until nothing works in `data` any more; fails naming the survivors.
pub(crate) fn assert_no_job_process(data: &Path, after: &str) {
    let start = std::time::Instant::now();
    loop {
        let left = job_processes(data);
        if left.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < crate::support::DEADLINE,
            "processes of the job survived {after}: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// node1's one unit, as `work list` shows it.
pub(crate) fn node1_unit(setup: &run::Setup) -> Option<(String, serde_json::Value)> {
    let out = setup.mesh.ctl(setup.node1, &["work", "list", "--json"]);
    let units: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let (id, unit) = units.as_object()?.iter().next()?;
    Some((id.clone(), unit.clone()))
}

/// controller -> node1 running `slow.yml` (a debug line, a `pause` of `secs`, another debug
/// line) through the `ansible-runner` front end; returns once ansible-playbook runs in the
/// pause on node1, with the front end still following.
fn run_slow_playbook(secs: u32, ident: &str) -> (run::Setup, PathBuf, std::process::Child) {
    slow_playbook_on(run::direct_setup(), secs, ident)
}

/// As [`run_slow_playbook`] on `setup`.
fn slow_playbook_on(
    setup: run::Setup,
    secs: u32,
    ident: &str,
) -> (run::Setup, PathBuf, std::process::Child) {
    playbook_on(setup, ident, |pdd| {
        run::slow_playbook(pdd, secs);
        "slow.yml"
    })
}

/// As [`run_slow_playbook`] on `setup`, with the playbook `write` puts in the private data
/// dir's `project/` (it returns its name); the playbook must print more than a few lines
/// (a debug task) and then run a while.
pub(crate) fn playbook_on(
    setup: run::Setup,
    ident: &str,
    write: impl FnOnce(&Path) -> &'static str,
) -> (run::Setup, PathBuf, std::process::Child) {
    let pdd = setup.mesh.path("demo");
    run::copy_demo(&pdd);
    let playbook = write(&pdd);
    let args = run::seed_args(&setup, &pdd, playbook, &["-i", ident]);
    let child = run::spawn_run(&setup, &args);
    run::wait_running(&setup);
    wait_for("the playbook's first debug line on node1", || {
        let (_, unit) = node1_unit(&setup)?;
        (unit["StdoutSize"].as_u64() > Some(2000)).then_some(())
    });
    let data = setup.mesh.path("node1-data");
    wait_for("ansible-playbook to run on node1", || {
        (job_processes(&data).iter())
            .any(|(_, cmd)| cmd.contains("ansible-playbook"))
            .then_some(())
    });
    (setup, pdd, child)
}

/// SIGKILLs node1 (its detached job runs on) and starts it again on the same data dir.
pub(crate) fn kill_and_restart_node1(setup: &mut run::Setup) {
    kill_and_restart_node1_after(setup, Duration::ZERO);
}

/// As [`kill_and_restart_node1`], restarting node1 only `down` after the kill.
pub(crate) fn kill_and_restart_node1_after(setup: &mut run::Setup, down: Duration) {
    let data = setup.mesh.path("node1-data");
    let before = job_processes(&data);
    let node1 = setup.node1;
    setup.mesh.node_mut(node1).kill();
    let after = job_processes(&data);
    assert!(
        after
            .iter()
            .any(|(_, cmd)| cmd.contains("ansible-playbook")),
        "the job died with its node: before {before:?}, after {after:?}"
    );
    std::thread::sleep(down);
    setup.mesh.restart(node1);
}

#[test]
fn a_run_whose_node_was_sigkilled_mid_job_finishes_with_the_full_output_after_a_restart() {
    let (mut setup, pdd, child) = run_slow_playbook(8, "k");
    kill_and_restart_node1(&mut setup);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}\n{}", setup.mesh.logs());
    let printed = run::text(&out.stdout);
    assert!(
        printed.contains("\"msg\": \"before\"") && printed.contains("\"msg\": \"after\""),
        "{printed}"
    );
    assert!(printed.contains("PLAY RECAP"), "{printed}");
    assert!(printed.contains("ok=3"), "{printed}");
    assert_eq!(
        std::fs::read_to_string(pdd.join("artifacts/k/status")).unwrap(),
        "successful"
    );
    assert_no_job_process(&setup.mesh.path("node1-data"), "the re-attached run's end");
}

/// Runs a long playbook, kills and restarts node1, and waits until the restarted node1
/// shows the unit Running again (re-attached).
fn reattached_long_run(
    setup: run::Setup,
    ident: &str,
) -> (run::Setup, PathBuf, std::process::Child, String) {
    let (mut setup, pdd, child) = slow_playbook_on(setup, 120, ident);
    kill_and_restart_node1(&mut setup);
    let (id, unit) = wait_for("node1 to list its unit again", || node1_unit(&setup));
    assert_eq!(
        unit["StateName"],
        "Running",
        "{unit}\n{}",
        setup.mesh.logs()
    );
    (setup, pdd, child, id)
}

#[test]
fn a_reattached_unit_cancelled_leaves_no_process_of_its_job() {
    let (setup, pdd, child, id) = reattached_long_run(run::direct_setup(), "c");
    let out = setup.mesh.ctl(setup.node1, &["work", "cancel", &id]);
    assert!(out.status.success(), "{out:?}");
    // The run following the unit reads its end (and then releases it).
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(254),
        "{out:?}\n{}",
        setup.mesh.logs()
    );
    assert_eq!(
        std::fs::read_to_string(pdd.join("artifacts/c/status")).unwrap(),
        "canceled"
    );
    assert_no_job_process(&setup.mesh.path("node1-data"), "the cancel");
}

/// Under the subreaper (no cgroup whose removal would kill the job anyway), only the
/// re-attached job's own kill stops it when its release does not wait.
#[test]
fn a_reattached_unit_force_released_under_the_subreaper_leaves_no_process_of_its_job() {
    let setup = run::direct_setup_contained("subreaper");
    let (setup, _pdd, mut child, id) = reattached_long_run(setup, "f");
    let containment = wait_for("node1 to report its containment", || {
        let status = setup.mesh.status(setup.node1)?;
        Some(status["Containment"].as_str()?.to_owned())
    });
    assert!(containment.starts_with("subreaper"), "{containment}");
    let out = setup
        .mesh
        .ctl(setup.node1, &["work", "release", "--force", &id]);
    assert!(out.status.success(), "{out:?}");
    assert_no_job_process(&setup.mesh.path("node1-data"), "the release");
    assert!(node1_unit(&setup).is_none(), "the unit is still listed");
    let _ = child.kill();
    let _ = child.wait();
}

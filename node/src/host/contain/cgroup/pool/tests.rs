//! The cgroup pool's tests, through the piped spawn a work handler uses: a cleanly ended
//! job's group serves the next job, and no job that could reach the next one through its
//! group (a daemon left behind, a limit hit, memory left charged, rewritten limits, a
//! frozen group, a late kill) ever lends it. Each test returns early, checking nothing,
//! on a machine without usable cgroups.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt as _;

use super::super::super::record::ProgramExit;
use super::super::super::spawn::{self, JobContain, Pipes, Resolved, Spawned};
use super::super::super::{ContainMode, Containment, ProgramLimits};
use super::*;

/// A node's containment with cgroups, or `None` here.
fn containment() -> Option<Arc<Containment>> {
    Containment::detect(ContainMode::Cgroup, None)
        .ok()
        .map(Arc::new)
}

fn job(containment: &Arc<Containment>, limits: ProgramLimits) -> JobContain {
    JobContain {
        containment: Some(containment.clone()),
        limits,
        deadline_ms: u64::MAX,
        output_bytes: u64::MAX,
        ..JobContain::default()
    }
}

/// Starts `sh -c script` as a piped program of `job`.
async fn start(job: &JobContain, script: &str) -> Spawned {
    let cmd = Resolved {
        program: PathBuf::from("/bin/sh"),
        args: vec!["-c".to_owned(), script.to_owned()],
        env: vec![("PATH".to_owned(), "/usr/bin:/bin".to_owned())],
        cwd: PathBuf::from("/tmp"),
    };
    spawn::piped(job, "pooltest", &cmd, Pipes::new(true).unwrap())
        .await
        .unwrap()
}

/// Runs `script` to its end; its exit and output.
async fn run(job: &JobContain, script: &str) -> (ProgramExit, String) {
    let mut spawned = start(job, script).await;
    drop(spawned.stdin.take());
    let mut out = String::new();
    let mut stdout = spawned.stdout.take().unwrap();
    stdout.read_to_string(&mut out).await.unwrap();
    let exit = spawned.exit.wait_for(Option::is_some).await.unwrap();
    ((*exit).unwrap(), out)
}

/// The cgroup directories of `pid`, as `/proc/<pid>/cgroup` names them under `warren/`.
fn groups_named_in(out: &str) -> Vec<String> {
    let mut names: Vec<String> = out
        .lines()
        .filter_map(|l| l.rsplit_once("/warren/").map(|(_, n)| n.to_owned()))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Waits until the pool holds `n` groups (the ended job's group is handed back off the
/// async threads, just after its end is reported).
async fn pooled(containment: &Containment, n: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if containment.pooled_cgroups() == n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// The pool stays empty for a good while (the hand-back would have happened by then).
async fn stays_empty(containment: &Containment) -> bool {
    tokio::time::sleep(Duration::from_millis(300)).await;
    containment.pooled_cgroups() == 0
}

const SHOW_GROUPS: &str = "cat /proc/self/cgroup";

#[tokio::test]
async fn a_cleanly_ended_jobs_cgroup_serves_the_next_job_with_its_limits() {
    let Some(containment) = containment() else {
        return;
    };
    let limits = ProgramLimits {
        pids: 77,
        ..ProgramLimits::default()
    };
    let job = job(&containment, limits);
    let (exit, first) = run(&job, SHOW_GROUPS).await;
    assert_eq!(exit, ProgramExit::Exited(0), "{first}");
    let first = groups_named_in(&first);
    assert_eq!(first.len(), 1, "one name in every hierarchy: {first:?}");
    assert!(first[0].starts_with("job-"), "{first:?}");
    assert!(
        pooled(&containment, 1).await,
        "the clean job's group was not pooled"
    );
    let (exit, second) = run(&job, SHOW_GROUPS).await;
    assert_eq!(exit, ProgramExit::Exited(0), "{second}");
    assert_eq!(
        groups_named_in(&second),
        first,
        "the next job got a new group"
    );
    // The limits hold for the second job: a fork bomb stops at 77 processes.
    let (_, out) = run(&job, "for i in $(seq 100); do sleep 5 & done; wait").await;
    assert!(
        job.breaches().get().is_some(),
        "no pids breach recorded: {out}"
    );
}

#[tokio::test]
async fn a_job_that_leaves_a_daemon_never_lends_its_cgroup() {
    let Some(containment) = containment() else {
        return;
    };
    let job = job(&containment, ProgramLimits::default());
    let script = "setsid sh -c 'exec sleep 60' </dev/null >/dev/null 2>&1 & cat /proc/self/cgroup";
    let (exit, out) = run(&job, script).await;
    assert_eq!(exit, ProgramExit::Exited(0), "{out}");
    assert!(
        stays_empty(&containment).await,
        "a group with a daemon was pooled"
    );
    let (_, next) = run(&job, SHOW_GROUPS).await;
    assert_ne!(groups_named_in(&next), groups_named_in(&out));
}

#[tokio::test]
async fn a_job_that_hit_its_pids_limit_never_lends_its_cgroup_or_its_breach() {
    let Some(containment) = containment() else {
        return;
    };
    let limits = ProgramLimits {
        pids: 4,
        ..ProgramLimits::default()
    };
    let bomb = job(&containment, limits);
    let (_, out) = run(&bomb, "for i in 1 2 3 4 5 6 7 8; do sleep 1 & done; wait").await;
    assert!(
        bomb.breaches().get().is_some(),
        "the bomb hit nothing: {out}"
    );
    assert!(
        stays_empty(&containment).await,
        "a group whose counters show a breach was pooled"
    );
    let clean = job(&containment, limits);
    let (exit, out) = run(&clean, "echo fine").await;
    assert_eq!(exit, ProgramExit::Exited(0), "{out}");
    assert_eq!(
        clean.breaches().get(),
        None,
        "the next job inherited a breach"
    );
}

#[tokio::test]
async fn a_job_that_leaves_memory_charged_never_lends_its_cgroup() {
    let Some(containment) = containment() else {
        return;
    };
    if !Path::new("/dev/shm").is_dir() {
        return;
    }
    let file = format!("/dev/shm/warren-pool-test-{}", std::process::id());
    let job = job(&containment, ProgramLimits::default());
    // tmpfs pages stay charged to the group that wrote them after it exits.
    let script = format!("head -c 8388608 /dev/zero > {file}");
    let (exit, out) = run(&job, &script).await;
    let pooled = !stays_empty(&containment).await;
    let _ = fs::remove_file(&file);
    assert_eq!(exit, ProgramExit::Exited(0), "{out}");
    assert!(!pooled, "a group with 8 MiB still charged was pooled");
}

/// A group made for a piped program of `containment`'s node, with no program in it.
fn bare_group(containment: &Arc<Containment>) -> Option<Arc<JobCgroup>> {
    let cell = containment
        .cell("bare", &ProgramLimits::default(), false)
        .ok()?;
    cell.cgroup
}

#[tokio::test]
async fn a_cgroup_whose_limits_were_rewritten_is_never_pooled() {
    let Some(containment) = containment() else {
        return;
    };
    let Some(group) = bare_group(&containment) else {
        return;
    };
    let pids_file = group
        .paths()
        .into_iter()
        .map(|d| d.join("pids.max"))
        .find(|f| f.exists());
    let Some(pids_file) = pids_file else {
        return;
    };
    // What a job running as the node's user can do to its own group.
    fs::write(&pids_file, "max").unwrap();
    group.end_of_job(false);
    assert_eq!(
        containment.pooled_cgroups(),
        0,
        "rewritten limits were pooled"
    );
    assert!(!pids_file.exists(), "the group was not removed");
}

#[tokio::test]
async fn a_frozen_cgroup_is_never_pooled() {
    let Some(containment) = containment() else {
        return;
    };
    let Some(group) = bare_group(&containment) else {
        return;
    };
    let freeze = group.paths().into_iter().find_map(|d| {
        [("cgroup.freeze", "1"), ("freezer.state", "FROZEN")]
            .into_iter()
            .map(|(f, v)| (d.join(f), v))
            .find(|(f, _)| f.exists())
    });
    let Some((file, value)) = freeze else {
        return;
    };
    fs::write(&file, value).unwrap();
    group.end_of_job(false);
    assert_eq!(containment.pooled_cgroups(), 0, "a frozen group was pooled");
}

#[tokio::test]
async fn a_late_kill_of_an_ended_job_cannot_reach_the_next_job_in_its_cgroup() {
    let Some(containment) = containment() else {
        return;
    };
    let job = job(&containment, ProgramLimits::default());
    let mut first = start(&job, "cat /proc/self/cgroup").await;
    drop(first.stdin.take());
    let mut out = String::new();
    first
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    let _ = first.exit.wait_for(Option::is_some).await;
    assert!(
        pooled(&containment, 1).await,
        "the clean job's group was not pooled"
    );
    let mut second = start(&job, "cat /proc/self/cgroup; exec sleep 30").await;
    // `cat` prints the whole file in one write; wait for its last line (the v2 one).
    let mut shown = String::new();
    let mut buf = vec![0; 4096];
    while !shown.contains("\n0::") {
        let n = second
            .stdout
            .as_mut()
            .unwrap()
            .read(&mut buf)
            .await
            .unwrap();
        assert!(n > 0, "the second job printed {shown:?}");
        shown.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert_eq!(
        groups_named_in(&shown),
        groups_named_in(&out),
        "not the same group"
    );
    // The first job's handle (a guest calling kill on its ended child) kills nothing now.
    first.killer.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        second.exit.borrow().is_none(),
        "the late kill reached the next job"
    );
    second.killer.kill();
    let exit = second.exit.wait_for(Option::is_some).await.unwrap();
    assert_eq!(*exit, Some(ProgramExit::Signaled(libc::SIGKILL)));
}

#[tokio::test]
async fn a_cancelled_jobs_cgroup_is_never_pooled_and_the_next_job_runs() {
    let Some(containment) = containment() else {
        return;
    };
    let job = job(&containment, ProgramLimits::default());
    let mut cancelled = start(&job, "exec sleep 30").await;
    cancelled.killer.kill();
    let _ = cancelled.exit.wait_for(Option::is_some).await;
    assert!(
        stays_empty(&containment).await,
        "a group sent a kill was pooled"
    );
    let (exit, out) = run(&job, "echo fine").await;
    assert_eq!(exit, ProgramExit::Exited(0), "{out}");
}

//! `contain`: what job containment adds to starting a job's program. The same `command` job
//! (guest-runner running `/bin/true`) through `Host::run`, one after another, with each
//! containment the node can use, interleaved round by round; beside it, a plain spawn and
//! wait of `/bin/true` from tokio. The overhead of a containment is its median minus the
//! median of the process-group baseline (what the host did before containment).
//!
//! - `cgroup`: per program a cgroup in each usable hierarchy, limits written, joined in
//!   `pre_exec`, killed and removed at the end;
//! - `subreaper`: the `warren-supervisor` binary as the program's supervisor;
//! - `detached`: the `ansible-runner` handler's detached form (supervisor in its own process
//!   group, a job log the node writes once and the supervisor appends to, stdio on the unit's
//!   files), without and with cgroups.
//!
//! Rows are measured back to back and again spaced [`GAP`] apart: moving a whole process
//! into a cgroup (a `cgroup.procs` write) takes the kernel's `cgroup_threadgroup_rwsem` for
//! writing, which waits for an RCU grace period (7 to 18 ms here, with load) unless a move
//! happened within the last one or `favordynmods` is on. The node avoids such moves: the
//! program's process is created in its v2 cgroup (`CLONE_INTO_CGROUP`) and moves its one
//! thread into each v1 hierarchy (a v1 `tasks` write by the thread itself takes no
//! threadgroup lock), so spaced jobs should cost what back-to-back ones do.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use tokio::sync::watch;
use warren::host::builtin::GUEST_RUNNER;
use warren::host::contain::{ContainMode, Containment, UnitFiles};
use warren::host::params::{JobParams, Task};
use warren::host::policy::{Limits, Policy};
use warren::host::runner::{Handler, Host, Job, JobIo, Outcome};

use crate::stats::{median, percentile};

/// Rounds; each runs every variant [`PER_ROUND`] times.
const ROUNDS: usize = 30;
/// Jobs per variant per round.
const PER_ROUND: usize = 10;
/// Warm-up jobs per variant.
const WARM_UP: usize = 20;
/// Jobs per variant started [`GAP`] apart, as jobs arrive on a real node.
const SPACED: usize = 20;
/// The pause before each spaced job. Moving a process into a cgroup v1 hierarchy (or v2
/// without `favordynmods`) waits for an RCU grace period unless another move happened
/// within about one grace period, so back-to-back jobs hide a cost isolated jobs pay.
const GAP: Duration = Duration::from_millis(100);

/// One way of running the job.
struct Variant {
    name: &'static str,
    host: Host,
    handler: Handler,
    detached: bool,
}

pub(crate) fn run() -> anyhow::Result<()> {
    let cache = tempfile::tempdir()?;
    let supervisor = Path::new(env!("CARGO_BIN_EXE_warren-supervisor")).to_owned();
    let make = |name, containment: Containment, detached| -> anyhow::Result<Variant> {
        let host = Host::with_containment(cache.path(), containment)?;
        let handler = host.load(GUEST_RUNNER).context("loading guest-runner")?;
        Ok(Variant {
            name,
            host,
            handler,
            detached,
        })
    };
    let cgroup = Containment::detect(ContainMode::Cgroup, None);
    let Ok(cgroup) = cgroup else {
        println!(
            "no usable cgroups here: the cgroup rows are skipped ({:?})",
            cgroup.err()
        );
        return Ok(());
    };
    println!("containment: {}", cgroup.describe());
    let variants = [
        make(
            "process group (baseline)",
            Containment::process_groups(),
            false,
        )?,
        make("cgroup", cgroup, false)?,
        make(
            "subreaper supervisor",
            Containment::detect(ContainMode::Subreaper, Some(supervisor.clone()))?,
            false,
        )?,
        make(
            "detached, no cgroups",
            Containment::detect(ContainMode::Subreaper, Some(supervisor.clone()))?,
            true,
        )?,
        make(
            "detached, in cgroups",
            Containment::detect(ContainMode::Auto, Some(supervisor))?,
            true,
        )?,
    ];
    let runtime = crate::runtime()?;
    let (plain, timed) = runtime.block_on(measure(&variants))?;
    let jobs = ROUNDS * PER_ROUND;
    println!(
        "back to back: {jobs} jobs per row, interleaved in {ROUNDS} rounds; µs (median, p90):"
    );
    report(&plain, &variants, &timed);
    let (plain, timed) = runtime.block_on(spaced(&variants))?;
    println!("spaced: {SPACED} jobs per row, each {GAP:?} after the last; µs (median, p90):");
    report(&plain, &variants, &timed);
    Ok(())
}

/// Each variant's jobs one at a time with a pause before each.
async fn spaced(variants: &[Variant]) -> anyhow::Result<(Vec<f64>, Vec<Vec<f64>>)> {
    let dir = tempfile::tempdir()?;
    let mut plain = Vec::new();
    let mut timed = vec![Vec::new(); variants.len()];
    for _ in 0..SPACED {
        tokio::time::sleep(GAP).await;
        plain.push(spawn_true().await?);
        for (variant, times) in variants.iter().zip(&mut timed) {
            tokio::time::sleep(GAP).await;
            times.push(job(variant, dir.path()).await?);
        }
    }
    Ok((plain, timed))
}

async fn measure(variants: &[Variant]) -> anyhow::Result<(Vec<f64>, Vec<Vec<f64>>)> {
    let dir = tempfile::tempdir()?;
    for variant in variants {
        for _ in 0..WARM_UP {
            job(variant, dir.path()).await?;
        }
    }
    let mut plain = Vec::new();
    let mut timed = vec![Vec::new(); variants.len()];
    for _ in 0..ROUNDS {
        for _ in 0..PER_ROUND {
            plain.push(spawn_true().await?);
        }
        for (variant, times) in variants.iter().zip(&mut timed) {
            for _ in 0..PER_ROUND {
                times.push(job(variant, dir.path()).await?);
            }
        }
    }
    Ok((plain, timed))
}

fn report(plain: &[f64], variants: &[Variant], timed: &[Vec<f64>]) {
    println!(
        "  plain spawn + wait of /bin/true     {:>8.0}  {:>8.0}",
        median(plain),
        percentile(plain, 90.0)
    );
    let base = median(&timed[0]);
    for (variant, times) in variants.iter().zip(timed) {
        let m = median(times);
        let extra = if std::ptr::eq(variant, &variants[0]) {
            String::new()
        } else {
            let over = m - base;
            format!(
                "   overhead {:>6.0} µs = {:.2} plain spawns   (target < 2000 µs)",
                over,
                over / median(plain)
            )
        };
        println!(
            "  Host::run, {:<25}{:>8.0}  {:>8.0}{extra}",
            variant.name,
            m,
            percentile(times, 90.0)
        );
    }
}

/// Spawns and waits for `/bin/true`; µs.
async fn spawn_true() -> anyhow::Result<f64> {
    let started = Instant::now();
    let status = tokio::process::Command::new("/bin/true")
        .process_group(0)
        .status()
        .await?;
    ensure!(status.success());
    Ok(started.elapsed().as_secs_f64() * 1e6)
}

/// One job running `/bin/true` to its end; µs.
async fn job(variant: &Variant, dir: &Path) -> anyhow::Result<f64> {
    let unit = tempfile::tempdir_in(dir)?;
    let job_dir = unit.path().join("job");
    std::fs::create_dir(&job_dir)?;
    std::fs::write(unit.path().join("stdin"), b"")?;
    std::fs::write(unit.path().join("stdout"), b"")?;
    let limits = Limits {
        deadline: Duration::from_secs(60),
        ..Limits::default()
    };
    let (policy, job, files) = if variant.detached {
        let files = UnitFiles {
            dir: unit.path().to_owned(),
            payload: unit.path().join("stdin"),
            results: unit.path().join("stdout"),
            on_output: Arc::new(|| {}),
            on_extra_data: Arc::new(|_| {}),
        };
        let policy = Policy::for_ansible_runner(Path::new("/bin/true"), &[], |_| None, limits);
        (
            policy,
            job_of("ansible-runner", Task::AnsibleRunner),
            Some(files),
        )
    } else {
        let policy = Policy::for_command("true", Path::new("/bin/true"), &[], |_| None, limits);
        let task = Task::Command {
            program: "true".into(),
            args: Vec::new(),
        };
        (policy, job_of("true", task), None)
    };
    let io = JobIo {
        job_dir,
        payload: Box::new(tokio::io::empty()),
        results: Box::new(tokio::io::sink()),
        files,
    };
    let (_cancel, cancelled) = watch::channel(false);
    let started = Instant::now();
    let outcome = variant
        .host
        .run(&variant.handler, Arc::new(policy), job, io, cancelled)
        .await;
    let took = started.elapsed();
    ensure!(
        outcome == Outcome::Succeeded,
        "{}: {outcome:?}",
        variant.name
    );
    Ok(took.as_secs_f64() * 1e6)
}

fn job_of(work_type: &str, task: Task) -> Job {
    Job {
        id: "Bench002".into(),
        work_type: work_type.into(),
        task,
        params: JobParams::default(),
    }
}

//! `start`: what a job pays before its handler runs. Component sizes; the first load of
//! guest-runner with an empty cache (compile) and with a warm one (deserialize), each in a
//! fresh host as after a node restart; then per-job start of the probe handler's `noop` job
//! (store, instantiation and one call that returns at once) with empty payload and results,
//! alternating jobs with the node's resource accounting on and off.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use tokio::sync::watch;
use warren::host::builtin::GUEST_RUNNER;
use warren::host::params::{JobParams, Task};
use warren::host::policy::Policy;
use warren::host::runner::{Handler, Host, Job, JobIo, Outcome};

use crate::PROBE_HANDLER;
use crate::stats::{median, percentile, runs};

/// Compiles of guest-runner into an empty cache.
const COMPILES: usize = 3;

/// Loads of guest-runner from a warm cache.
const WARM_LOADS: usize = 7;

/// Jobs run before measuring: fault in the instance memory, warm the allocator.
const WARM_UP_JOBS: usize = 200;

/// Jobs measured, one after another.
const JOBS: usize = 2_000;

pub(crate) fn run() -> anyhow::Result<()> {
    println!("component sizes:");
    println!("  guest-runner       {:>10} bytes", GUEST_RUNNER.len());
    println!("  probe handler      {:>10} bytes", PROBE_HANDLER.len());

    let (compile, warm) = load_times()?;
    println!("Host::load of guest-runner, ms (median):");
    println!(
        "  empty cache (compile)      {:>9.1}   runs: {}",
        median(&compile),
        runs(&compile, 1)
    );
    println!(
        "  warm cache (deserialize)   {:>9.2}   runs: {}",
        median(&warm),
        runs(&warm, 2)
    );
    println!(
        "  compile / deserialize      {:>8.0}x",
        median(&compile) / median(&warm)
    );

    let (on, off) = job_starts()?;
    let micros = |d: &[Duration]| d.iter().map(|d| d.as_secs_f64() * 1e6).collect::<Vec<_>>();
    let (on_us, off_us) = (micros(&on), micros(&off));
    println!(
        "per-job start, probe `noop`, {JOBS} sequential jobs each way after {WARM_UP_JOBS} \
         warm-up, µs:"
    );
    println!("                     accounting on   off");
    println!(
        "  median             {:>10.0}   {:>8.0}   (target < 1000)",
        median(&on_us),
        median(&off_us)
    );
    for (label, p) in [("p90", 90.0), ("p99", 99.0)] {
        println!(
            "  {label}                {:>10.0}   {:>8.0}",
            percentile(&on_us, p),
            percentile(&off_us, p)
        );
    }
    println!(
        "  on / off median    {:>9.1}%              (target <= 105%)",
        median(&on_us) / median(&off_us) * 100.0
    );
    println!(
        "  jobs per second    {:>10.0}   {:>8.0}   (one at a time)",
        JOBS as f64 / on.iter().sum::<Duration>().as_secs_f64(),
        JOBS as f64 / off.iter().sum::<Duration>().as_secs_f64()
    );
    Ok(())
}

/// Milliseconds of each compile (a fresh host and empty cache each time) and of each warm
/// load (a fresh host on the filled cache).
fn load_times() -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let mut compile = Vec::new();
    let mut warm = Vec::new();
    for _ in 0..COMPILES {
        let cache = tempfile::tempdir()?;
        let host = Host::new(cache.path())?;
        let started = Instant::now();
        host.load(GUEST_RUNNER).context("compiling guest-runner")?;
        compile.push(started.elapsed().as_secs_f64() * 1e3);
        if warm.is_empty() {
            drop(host);
            for _ in 0..WARM_LOADS {
                let host = Host::new(cache.path())?;
                let started = Instant::now();
                host.load(GUEST_RUNNER).context("loading guest-runner")?;
                warm.push(started.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    Ok((compile, warm))
}

/// The duration of each measured `noop` job, with the accounting on and off (one of each
/// in turn, so both see the same machine).
fn job_starts() -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let cache = tempfile::tempdir()?;
    let host = Host::new(cache.path())?.with_free_space_floor(crate::FREE_SPACE_FLOOR);
    let probe = host
        .load(PROBE_HANDLER)
        .context("loading the probe handler")?;
    let job_dir = tempfile::tempdir()?;
    let policy = |accounting| {
        Arc::new(Policy {
            limits: crate::limits(accounting),
            ..Policy::default()
        })
    };
    let (on_policy, off_policy) = (policy(true), policy(false));
    let runtime = crate::runtime()?;
    runtime.block_on(async {
        for _ in 0..WARM_UP_JOBS {
            noop(&host, &probe, &on_policy, job_dir.path()).await?;
            noop(&host, &probe, &off_policy, job_dir.path()).await?;
        }
        let (mut on, mut off) = (Vec::with_capacity(JOBS), Vec::with_capacity(JOBS));
        for _ in 0..JOBS {
            on.push(noop(&host, &probe, &on_policy, job_dir.path()).await?);
            off.push(noop(&host, &probe, &off_policy, job_dir.path()).await?);
        }
        Ok((on, off))
    })
}

/// Runs one `noop` job; returns how long `Host::run` took.
async fn noop(
    host: &Host,
    probe: &Handler,
    policy: &Arc<Policy>,
    job_dir: &std::path::Path,
) -> anyhow::Result<Duration> {
    let job = Job {
        id: "Bench001".into(),
        work_type: "noop".into(),
        task: Task::Component,
        params: JobParams::default(),
    };
    let io = JobIo {
        job_dir: job_dir.to_owned(),
        payload: Box::new(tokio::io::empty()),
        results: Box::new(tokio::io::sink()),
        files: None,
    };
    let (_cancel, cancelled) = watch::channel(false);
    let started = Instant::now();
    let outcome = host.run(probe, policy.clone(), job, io, cancelled).await;
    let took = started.elapsed();
    ensure!(outcome == Outcome::Succeeded, "noop job: {outcome:?}");
    Ok(took)
}

//! `start`: what a job pays before its handler runs. Component sizes; the first load of
//! guest-runner with an empty cache (compile) and with a warm one (deserialize), each in a
//! fresh host as after a node restart; then per-job start of the probe handler's `noop` job
//! (store, instantiation and one call that returns at once) with empty payload and results.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use tokio::sync::watch;
use warren::host::builtin::GUEST_RUNNER;
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

    let starts = job_starts()?;
    let us: Vec<f64> = starts.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    println!(
        "per-job start, probe `noop`, {JOBS} sequential jobs after {WARM_UP_JOBS} warm-up, µs:"
    );
    println!(
        "  median             {:>10.0}   (target < 1000)",
        median(&us)
    );
    println!("  p99                {:>10.0}", percentile(&us, 99.0));
    println!(
        "  min / p90 / max    {:>10.0} / {:.0} / {:.0}",
        percentile(&us, 0.0),
        percentile(&us, 90.0),
        percentile(&us, 100.0)
    );
    println!(
        "  jobs per second    {:>10.0}   (one at a time)",
        JOBS as f64 / starts.iter().sum::<Duration>().as_secs_f64()
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

/// The duration of each measured `noop` job.
fn job_starts() -> anyhow::Result<Vec<Duration>> {
    let cache = tempfile::tempdir()?;
    let host = Host::new(cache.path())?;
    let probe = host
        .load(PROBE_HANDLER)
        .context("loading the probe handler")?;
    let job_dir = tempfile::tempdir()?;
    let policy = Arc::new(Policy::default());
    let runtime = crate::runtime()?;
    runtime.block_on(async {
        for _ in 0..WARM_UP_JOBS {
            noop(&host, &probe, &policy, job_dir.path()).await?;
        }
        let mut took = Vec::with_capacity(JOBS);
        for _ in 0..JOBS {
            took.push(noop(&host, &probe, &policy, job_dir.path()).await?);
        }
        Ok(took)
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
        handler: "noop".into(),
        params: Vec::new(),
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

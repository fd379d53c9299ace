//! `concurrent`: 20 remote runs started at once (distinct idents, each on its own copy of the
//! demo, whose inventory names the host after the copy) against 20 local runs at once. Every
//! remote run must exit 0 with status `successful`, print exactly what the local run of the
//! same copy prints (so only its own host's events), and leave as many job events as it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, ensure};

use crate::job::{self, Finished};
use crate::mesh::Bench;
use crate::stats::{median, runs};

/// Runs in each batch.
const RUNS: usize = 20;

/// Rounds of one remote and one local batch each.
const ROUNDS: usize = 2;

pub(crate) fn run(bench: &Bench) -> anyhow::Result<()> {
    let copies: Vec<PathBuf> = (0..RUNS)
        .map(|i| copy(bench, i))
        .collect::<Result<_, _>>()?;
    let (mut remote, mut local, mut ratio) = (vec![], vec![], vec![]);
    let (mut remote_each, mut local_each) = (vec![], vec![]);
    for round in 0..ROUNDS {
        let r = batch(bench, &copies, &format!("r{round}-"), true)?;
        let l = batch(bench, &copies, &format!("l{round}-"), false)?;
        for (i, (rr, lr)) in r.1.iter().zip(&l.1).enumerate() {
            lr.check("local run")?;
            verify(&copies[i], i, &format!("r{round}-{i:02}"), rr, lr)
                .with_context(|| format!("round {round}, remote run {i}"))?;
        }
        remote_each.extend(r.1.iter().map(|f| f.secs));
        local_each.extend(l.1.iter().map(|f| f.secs));
        remote.push(r.0);
        local.push(l.0);
        ratio.push(r.0 / l.0);
    }
    println!("{RUNS} runs at once, wall time of the batch, s ({ROUNDS} rounds):");
    println!(
        "  local (venv ansible-runner)        {:>7.2}   rounds: {}   each: median {:.2}, max {:.2}",
        median(&local),
        runs(&local, 2),
        median(&local_each),
        local_each.iter().copied().fold(0.0, f64::max)
    );
    println!(
        "  --via-receptor node1 (2 hops)      {:>7.2}   rounds: {}   each: median {:.2}, max {:.2}",
        median(&remote),
        runs(&remote, 2),
        median(&remote_each),
        remote_each.iter().copied().fold(0.0, f64::max)
    );
    println!(
        "  remote / local                     {:>7.3}x",
        median(&ratio)
    );
    println!(
        "  checked: {} remote runs exited 0, status successful, stdout = the local run's, same job_events count",
        RUNS * ROUNDS
    );
    Ok(())
}

/// Copy `i` of the demo, its one host renamed `hNN` so its output names it.
fn copy(bench: &Bench, i: usize) -> anyhow::Result<PathBuf> {
    let pdd = bench.copy_demo(&format!("c{i:02}"))?;
    let hosts = pdd.join("inventory/hosts");
    let text = std::fs::read_to_string(&hosts)?;
    let renamed = text.replacen(
        "localhost",
        &format!("{} ansible_host=localhost", host(i)),
        1,
    );
    std::fs::write(hosts, renamed)?;
    Ok(pdd)
}

fn host(i: usize) -> String {
    format!("h{i:02}")
}

/// Starts one run per copy at once (`prefix` + index as ident), waits for all; returns the
/// batch's wall time and each run.
fn batch(
    bench: &Bench,
    copies: &[PathBuf],
    prefix: &str,
    remote: bool,
) -> anyhow::Result<(f64, Vec<Finished>)> {
    let start = Instant::now();
    let started: Vec<_> = copies
        .iter()
        .enumerate()
        .map(|(i, pdd)| {
            let ident = format!("{prefix}{i:02}");
            let cmd = if remote {
                bench.remote(pdd, "test.yml", &ident)
            } else {
                bench.local(pdd, &ident)
            };
            job::spawn(cmd, &bench.out(&ident))
        })
        .collect::<Result<_, _>>()?;
    let finished: Vec<Finished> = started
        .into_iter()
        .map(job::Running::wait)
        .collect::<Result<_, _>>()?;
    Ok((start.elapsed().as_secs_f64(), finished))
}

/// No job lost or mixed: remote run `i` of `pdd` against the local run of the same copy.
fn verify(
    pdd: &Path,
    i: usize,
    ident: &str,
    remote: &Finished,
    local: &Finished,
) -> anyhow::Result<()> {
    remote.check("remote run")?;
    let artifacts = pdd.join("artifacts").join(ident);
    let status = std::fs::read_to_string(artifacts.join("status"))?;
    ensure!(status == "successful", "{ident}: status {status:?}");
    let own = format!("[{}]", host(i));
    ensure!(
        remote.stdout.contains(&own),
        "{ident}: stdout lacks {own}:\n{}",
        remote.stdout
    );
    ensure!(
        remote.stdout == local.stdout,
        "{ident}: stdout differs from the local run of the same copy\n--- remote ---\n{}\n--- local ---\n{}",
        remote.stdout,
        local.stdout
    );
    let events = events(&artifacts)?;
    let local_ident = ident.replacen('r', "l", 1);
    let expected = events_count(&pdd.join("artifacts").join(local_ident))?;
    ensure!(
        events.len() == expected,
        "{ident}: {} job events, the local run {expected}",
        events.len()
    );
    for event in &events {
        let named = event["runner_ident"].as_str();
        ensure!(
            named.is_none_or(|n| n == ident),
            "{ident}: an event of {named:?}"
        );
    }
    Ok(())
}

fn events_count(artifacts: &Path) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(artifacts.join("job_events"))?.count())
}

fn events(artifacts: &Path) -> anyhow::Result<Vec<serde_json::Value>> {
    std::fs::read_dir(artifacts.join("job_events"))?
        .map(|entry| Ok(serde_json::from_slice(&std::fs::read(entry?.path())?)?))
        .collect()
}

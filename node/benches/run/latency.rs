//! `latency`: one `ansible-runner run demo -p test.yml` through the front end to node1 (two
//! hops) against the same run by the real ansible-runner here, alternating; the difference
//! is the latency Warren adds.

use anyhow::{Context, ensure};

use crate::job;
use crate::mesh::Bench;
use crate::stats::{median, runs};

/// Rounds of one remote and one local run each.
const ROUNDS: usize = 7;

/// The added latency to stay under, milliseconds.
const TARGET_MS: f64 = 50.0;

pub(crate) fn run(bench: &Bench) -> anyhow::Result<()> {
    let pdd = bench.copy_demo("latency")?;
    let (mut remote, mut local, mut added, mut ratio) = (vec![], vec![], vec![], vec![]);
    let (mut worker, mut own) = (vec![], vec![]);
    for round in 0..ROUNDS {
        let (r_id, l_id) = (format!("r{round}"), format!("l{round}"));
        let remote_run = || job::run(bench.remote(&pdd, "test.yml", &r_id), &bench.out(&r_id));
        let local_run = || job::run(bench.local(&pdd, &l_id), &bench.out(&l_id));
        // Alternate which goes first, so neither always gets the warmer machine.
        let (r, l) = if round % 2 == 0 {
            let r = remote_run()?;
            (r, local_run()?)
        } else {
            let l = local_run()?;
            (remote_run()?, l)
        };
        r.check("remote run")?;
        l.check("local run")?;
        ensure!(
            r.stdout == l.stdout,
            "round {round}: remote stdout differs from local\n--- remote ---\n{}\n--- local ---\n{}",
            r.stdout,
            l.stdout
        );
        let unit = r
            .stderr
            .lines()
            .find_map(|l| l.strip_prefix("running as unit ")?.split(' ').next())
            .context("the front end named no unit")?;
        let w = bench.worker_secs(unit)?;
        worker.push(w);
        own.push((r.secs - w) * 1e3);
        remote.push(r.secs);
        local.push(l.secs);
        added.push((r.secs - l.secs) * 1e3);
        ratio.push(r.secs / l.secs);
    }
    println!(
        "wall time of one `ansible-runner run demo -p test.yml`, s ({ROUNDS} rounds, alternating):"
    );
    println!(
        "  local (venv ansible-runner)        {:>7.3}   runs: {}",
        median(&local),
        runs(&local, 3)
    );
    println!(
        "  --via-receptor node1 (2 hops)      {:>7.3}   runs: {}",
        median(&remote),
        runs(&remote, 3)
    );
    let diff = (median(&remote) - median(&local)) * 1e3;
    println!(
        "  added latency, ms                  {:>7.1}   per round: {}   (median of remote - median of local: {diff:.1}; target < {TARGET_MS} ms)",
        median(&added),
        runs(&added, 0)
    );
    println!(
        "  of which ansible-runner worker     {:>7.3}   runs: {}   (on node1: spawn to exit, from its log)",
        median(&worker),
        runs(&worker, 3)
    );
    println!(
        "  Warren's own share, ms             {:>7.1}   per round: {}   (remote - worker: CLI start, link, route, submit, results, exit)",
        median(&own),
        runs(&own, 0)
    );
    println!(
        "  remote / local                     {:>7.3}x",
        median(&ratio)
    );
    Ok(())
}

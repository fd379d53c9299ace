//! `cargo bench -p warren --bench run [-- SECTION]`: `ansible-runner run demo -p test.yml
//! --via-receptor node1` through Warren's front end across controller -> relay -> node1 (the
//! release `warren` binary, three processes), printed beside the real `ansible-runner run`
//! of the same private data dir on this machine, because the machine is shared and noisy.
//! Figures are medians over alternating rounds; ratios are taken per round, then their median.
//!
//! Sections (a filter argument runs those whose name contains it):
//! - `latency`: one remote run against one local run, and the latency Warren adds.
//! - `concurrent`: 20 remote runs at once against 20 local runs at once, each on its own copy
//!   of the demo; every remote run is checked (exit 0, status, own output, event count).
//! - `large`: a 200 MB private data dir against a 2 MB one: run time and peak RSS of the
//!   front end and of each node.
//! - `transmit`: a 200 MB incompressible private data dir run remotely, locally and through
//!   AWX's pipeline (`ansible-runner transmit | receptorctl work submit | ansible-runner
//!   process`) in the same rounds: remote / local, AWX / local, the front end's peak RSS.
//!
//! Needs the project's venv (`scripts/setup-python.sh`). The sections live in `benches/run/`
//! (the shared statistics in `benches/mesh/`), named by `#[path]` because a file directly in
//! `benches/` would become a bench target of its own.

#[path = "run/concurrent.rs"]
mod concurrent;
#[path = "run/job.rs"]
mod job;
#[path = "run/large.rs"]
mod large;
#[path = "run/latency.rs"]
mod latency;
#[path = "run/mesh.rs"]
mod mesh;
#[path = "common/sections.rs"]
mod sections;
#[path = "mesh/stats.rs"]
#[allow(dead_code, reason = "shared with the mesh bench, which uses all of it")]
mod stats;
#[path = "run/transmit.rs"]
mod transmit;

use std::process::ExitCode;

use mesh::Bench;

/// A section: its name (the filter matches it) and its body.
type Section = (&'static str, fn(&Bench) -> anyhow::Result<()>);

const SECTIONS: [Section; 4] = [
    ("latency", latency::run),
    ("concurrent", concurrent::run),
    ("large", large::run),
    ("transmit", transmit::run),
];

fn main() -> ExitCode {
    let Some(chosen) = sections::choose(&SECTIONS) else {
        return ExitCode::FAILURE;
    };
    let bench = match Bench::start() {
        Ok(bench) => bench,
        Err(e) => {
            eprintln!("cannot start the mesh: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    sections::run(chosen, |run| {
        run(&bench).map_err(|e| anyhow::anyhow!("{e:#}\n{}", bench.logs()))
    })
}

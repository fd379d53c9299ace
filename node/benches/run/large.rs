//! `large`: the demo plus 200 MB of random bytes in project/ against the demo plus 2 MB:
//! time to submit and complete the remote run (beside a local run of the same dir), and the
//! peak RSS of the front end and of each node during it. Streaming means RSS should not
//! grow with the payload.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::job;
use crate::mesh::Bench;
use crate::stats::{median, runs};

/// Payload sizes compared, bytes (MB = 10^6 bytes).
const SIZES: [u64; 2] = [2_000_000, 200_000_000];

/// Rounds of each size (remote and local run each).
const ROUNDS: usize = 3;

/// Figures of one size.
#[derive(Default)]
struct Figures {
    remote_s: Vec<f64>,
    local_s: Vec<f64>,
    /// Peak RSS, MiB: the front end, then each node in `Bench::nodes` order.
    peaks: Vec<Vec<f64>>,
}

pub(crate) fn run(bench: &Bench) -> anyhow::Result<()> {
    let dirs: Vec<PathBuf> = SIZES
        .iter()
        .map(|&size| {
            let pdd = bench.copy_demo(&format!("large-{}mb", size / 1_000_000))?;
            write_random(&pdd.join("project/blob.bin"), size)?;
            Ok(pdd)
        })
        .collect::<anyhow::Result<_>>()?;
    let mut figures: Vec<Figures> = SIZES.iter().map(|_| Figures::default()).collect();
    for round in 0..ROUNDS {
        for (i, pdd) in dirs.iter().enumerate() {
            // New content each round: node1's content cache must not turn the later rounds
            // into repeat runs.
            renew(&pdd.join("project/blob.bin"), round)?;
            measure(bench, pdd, &format!("big{i}-{round}"), &mut figures[i])?;
        }
    }
    print(bench, &figures);
    Ok(())
}

/// Makes a file's content new (its first 8 bytes), so that the next remote run finds none
/// of it in node1's content cache.
pub(crate) fn renew(blob: &Path, round: usize) -> anyhow::Result<()> {
    use std::io::{Seek, Write};
    let mut file = std::fs::OpenOptions::new().write(true).open(blob)?;
    file.seek(std::io::SeekFrom::Start(0))?;
    file.write_all(&(round as u64 + 1).to_le_bytes())?;
    Ok(())
}

/// One remote run of `pdd` (node peaks reset first) and one local run.
fn measure(bench: &Bench, pdd: &Path, ident: &str, figures: &mut Figures) -> anyhow::Result<()> {
    for node in &bench.nodes {
        job::reset_peak(node.pid())?;
    }
    let remote = job::run(bench.remote(pdd, "test.yml", ident), &bench.out(ident))?;
    remote.check("remote run")?;
    let mut peaks = vec![remote.peak_mib];
    for node in &bench.nodes {
        peaks.push(job::peak_mib(node.pid())?);
    }
    let local_ident = format!("local-{ident}");
    let local = job::run(bench.local(pdd, &local_ident), &bench.out(&local_ident))?;
    local.check("local run")?;
    figures.remote_s.push(remote.secs);
    figures.local_s.push(local.secs);
    figures.peaks.push(peaks);
    Ok(())
}

fn print(bench: &Bench, figures: &[Figures]) {
    let [small, large] = [&figures[0], &figures[1]];
    let (ms, ml) = (SIZES[0] / 1_000_000, SIZES[1] / 1_000_000);
    println!("demo + {ms} MB vs demo + {ml} MB of random bytes in project/ ({ROUNDS} rounds):");
    println!(
        "                                   {ms:>3} MB    {ml:>3} MB    ratio   runs ({ml} MB)"
    );
    let row = |name: &str, a: &[f64], b: &[f64]| {
        let (a_m, b_m) = (median(a), median(b));
        println!(
            "  {name:<32} {a_m:>7.2}  {b_m:>7.2}  {:>6.2}x  {}",
            b_m / a_m,
            runs(b, 2)
        );
    };
    row("remote run (2 hops), s", &small.remote_s, &large.remote_s);
    row("local run, s", &small.local_s, &large.local_s);
    let added = |f: &Figures| -> Vec<f64> {
        f.remote_s
            .iter()
            .zip(&f.local_s)
            .map(|(r, l)| r - l)
            .collect()
    };
    row("added (remote - local), s", &added(small), &added(large));
    let extra_s = median(&large.remote_s) - median(&small.remote_s);
    println!(
        "  the extra {} MB cost {extra_s:.2} s: {:.0} MB/s end to end (pack, 2 hops, unpack)",
        ml - ms,
        (ml - ms) as f64 / extra_s
    );
    println!(
        "peak RSS (VmHWM; the front end's from wait4 ru_maxrss; nodes reset before each run), MiB:"
    );
    let names =
        std::iter::once("front end (ansible-runner CLI)").chain(bench.nodes.iter().map(|n| n.name));
    for (k, name) in names.enumerate() {
        let column = |f: &Figures| -> Vec<f64> { f.peaks.iter().map(|p| p[k]).collect() };
        row(name, &column(small), &column(large));
    }
}

/// Writes `size` bytes of a xorshift stream (incompressible to deflate) to `path`.
pub(crate) fn write_random(path: &Path, size: u64) -> anyhow::Result<()> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut state = 0x9E37_79B9_7F4A_7C15_u64 ^ size;
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for word in chunk.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    file.flush()?;
    Ok(())
}

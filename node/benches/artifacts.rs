//! `cargo bench -p warren --bench artifacts [-- SECTION]`: what the client does with a
//! worker's artifacts, beside a baseline measured in the same run.
//!
//! Sections (a filter argument runs those whose name contains it):
//! - `unpack`: a ~200 MB artifacts zip (a big `stdout` and two thousand fact-cache files of
//!   random text, deflated as ansible-runner deflates them) unpacked by the safe path
//!   (fd-relative opens without following symlinks, caps counted) beside the old path
//!   (paths joined, checked with `lstat`, opened by path), each into a fresh directory,
//!   alternating, several rounds. The ratio is taken per round, then its median.

#[path = "artifacts/old_unpack.rs"]
mod old_unpack;
#[path = "common/sections.rs"]
mod sections;
#[path = "mesh/stats.rs"]
#[allow(dead_code, reason = "shared with the mesh bench, which uses all of it")]
mod stats;

use std::io::{Seek, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use stats::{median, runs};
use warren::ansible::unpack::{ArtifactLimits, unpack};
use zip::write::SimpleFileOptions;

/// Rounds of each path.
const ROUNDS: usize = 7;

/// Fact-cache files in the zip, and the bytes of each.
const FACT_FILES: usize = 2000;
const FACT_BYTES: usize = 64 * 1024;

/// The `stdout` file's bytes.
const STDOUT_BYTES: usize = 128 << 20;

type Section = (&'static str, fn() -> anyhow::Result<()>);

const SECTIONS: [Section; 1] = [("unpack", unpack_section)];

fn main() -> ExitCode {
    let Some(chosen) = sections::choose(&SECTIONS) else {
        return ExitCode::FAILURE;
    };
    sections::run(chosen, |run| run())
}

/// Random printable text: compresses about as well as base64, so the zip stays near its
/// unpacked size, as the task asks of the benchmark (200 MB of zip).
fn text(len: usize, seed: &mut u64) -> Vec<u8> {
    const ALPHABET: &[u8] =
        b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789{}\":, ";
    (0..len)
        .map(|i| {
            if i % 100 == 99 {
                return b'\n';
            }
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            ALPHABET[(*seed % ALPHABET.len() as u64) as usize]
        })
        .collect()
}

/// Writes the artifacts zip into `file`; returns (zip bytes, unpacked bytes).
fn make_zip(file: &mut std::fs::File) -> anyhow::Result<(u64, u64)> {
    let mut zip = zip::ZipWriter::new(&mut *file);
    let deflated = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(0o600);
    let mut seed = 0x9e37_79b9_7f4a_7c15;
    let mut unpacked = 0;
    for (name, data) in [("rc", b"0".to_vec()), ("status", b"successful".to_vec())] {
        zip.start_file(name, deflated)?;
        zip.write_all(&data)?;
        unpacked += data.len() as u64;
    }
    zip.start_file("stdout", deflated)?;
    for _ in 0..STDOUT_BYTES / (1 << 20) {
        zip.write_all(&text(1 << 20, &mut seed))?;
    }
    unpacked += STDOUT_BYTES as u64;
    zip.add_directory(
        "job_events/",
        SimpleFileOptions::default().unix_permissions(0o700),
    )?;
    zip.add_directory(
        "fact_cache/",
        SimpleFileOptions::default().unix_permissions(0o755),
    )?;
    for i in 0..FACT_FILES {
        zip.start_file(
            format!("fact_cache/host-{i:05}"),
            deflated.unix_permissions(0o644),
        )?;
        zip.write_all(&text(FACT_BYTES, &mut seed))?;
        unpacked += FACT_BYTES as u64;
    }
    zip.finish()?;
    let len = file.stream_position()?;
    Ok((len, unpacked))
}

/// Seconds to unpack `zip` into a fresh directory under `scratch` with `unpack_one`.
fn time_one(
    zip: &std::fs::File,
    scratch: &Path,
    unpack_one: impl FnOnce(std::fs::File, &Path) -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir_in(scratch)?;
    let mut input = zip.try_clone()?;
    input.rewind()?;
    let started = Instant::now();
    unpack_one(input, dir.path())?;
    Ok(started.elapsed().as_secs_f64())
}

fn unpack_section() -> anyhow::Result<()> {
    let scratch = tempfile::Builder::new()
        .prefix("warren-bench-artifacts")
        .tempdir()?;
    let mut zip = tempfile::tempfile_in(scratch.path())?;
    let (zip_len, unpacked) = make_zip(&mut zip)?;
    println!(
        "zip {:.0} MB, unpacked {:.0} MB in {} entries",
        zip_len as f64 / 1e6,
        unpacked as f64 / 1e6,
        FACT_FILES + 5
    );
    let limits = ArtifactLimits::DEFAULT;
    let (mut old, mut safe, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // Alternate which goes first, so neither always meets a warmer page cache.
        let old_s;
        let safe_s;
        if round % 2 == 0 {
            old_s = time_one(&zip, scratch.path(), old_unpack::unpack)?;
            safe_s = time_one(&zip, scratch.path(), |f, d| {
                Ok(unpack(f, d, &limits).map(drop)?)
            })?;
        } else {
            safe_s = time_one(&zip, scratch.path(), |f, d| {
                Ok(unpack(f, d, &limits).map(drop)?)
            })?;
            old_s = time_one(&zip, scratch.path(), old_unpack::unpack)?;
        }
        old.push(old_s);
        safe.push(safe_s);
        ratios.push(safe_s / old_s);
    }
    println!("{:<40} {:>10} {:>10}  runs", "", "median s", "MB/s");
    for (name, values) in [
        ("old path (open by path)", &old),
        ("safe path (beneath, capped)", &safe),
    ] {
        let m = median(values);
        println!(
            "{name:<40} {m:>10.3} {:>10.0}  {}",
            unpacked as f64 / 1e6 / m,
            runs(values, 3)
        );
    }
    println!(
        "safe / old, median of per-round ratios: {:.3}  ({})",
        median(&ratios),
        runs(&ratios, 3)
    );
    Ok(())
}

//! `quota`: what enforcing the job-directory quota by measurement costs and allows. The
//! time to measure directories of 1,000 to 100,000 entries, against the time to list them
//! (`read_dir` alone, the floor any scan pays); then how far a program writing flat out
//! into a job directory (`head -c 2G /dev/zero`) gets past a 64 MiB quota before the
//! watcher stops it, against its write rate.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use warren::host::disk::{self, DiskQuota};
use warren::host::quota::{self, DiskLedger};

use crate::stats::{median, runs};

/// Entries per measured tree, spread over directories of 100.
const TREES: [usize; 3] = [1_000, 10_000, 100_000];

/// Measurements of each tree.
const SCANS: usize = 5;

/// The quota the flooding program runs against.
const FLOOD_QUOTA: u64 = 64 << 20;

/// Flood runs.
const FLOODS: usize = 5;

pub(crate) fn run() -> anyhow::Result<()> {
    println!("measuring a job directory, ms (median of {SCANS}):");
    println!("  entries      measure    read_dir only   µs per entry");
    for entries in TREES {
        let dir = tree(entries)?;
        let mut measured = Vec::new();
        let mut listed = Vec::new();
        for _ in 0..SCANS {
            let started = Instant::now();
            let usage = disk::measure(dir.path(), None)?;
            measured.push(started.elapsed().as_secs_f64() * 1e3);
            anyhow::ensure!(usage.inodes as usize >= entries, "{usage:?}");
            let started = Instant::now();
            list(dir.path())?;
            listed.push(started.elapsed().as_secs_f64() * 1e3);
        }
        println!(
            "  {entries:>7}   {:>9.2}   {:>13.2}   {:>12.2}",
            median(&measured),
            median(&listed),
            median(&measured) * 1e3 / entries as f64
        );
    }
    flood()
}

/// A temp dir of `entries` entries: directories of 99 small files each.
fn tree(entries: usize) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    let mut made = 0;
    let mut d = 0;
    while made < entries {
        let sub = dir.path().join(format!("d{d}"));
        std::fs::create_dir(&sub)?;
        made += 1;
        for f in 0..99 {
            if made >= entries {
                break;
            }
            std::fs::write(sub.join(format!("f{f}")), b"x")?;
            made += 1;
        }
        d += 1;
    }
    Ok(dir)
}

/// Lists every directory under `dir` without looking at the entries.
fn list(dir: &std::path::Path) -> std::io::Result<usize> {
    let mut count = 0;
    let mut pending = vec![dir.to_owned()];
    while let Some(path) = pending.pop() {
        for entry in std::fs::read_dir(&path)? {
            let entry = entry?;
            count += 1;
            if entry.file_type()?.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    Ok(count)
}

/// How far past the quota a flooding program gets before the watcher stops it.
fn flood() -> anyhow::Result<()> {
    let runtime = crate::runtime()?;
    let mut past = Vec::new();
    let mut rates = Vec::new();
    for _ in 0..FLOODS {
        let (over, rate) = runtime.block_on(flood_once())?;
        past.push(over as f64 / (1 << 20) as f64);
        rates.push(rate);
    }
    println!(
        "a program writing flat out against a {} MiB quota (median of {FLOODS}):",
        FLOOD_QUOTA >> 20
    );
    println!(
        "  its write rate, MB/s        {:>8.0}   runs: {}",
        median(&rates),
        runs(&rates, 0)
    );
    println!(
        "  past the quota when stopped {:>8.1} MiB   runs: {}",
        median(&past),
        runs(&past, 1)
    );
    Ok(())
}

/// One flood: `head -c 2G /dev/zero > flood` in a fresh directory, stopped (killed) when
/// the watcher says so; returns the bytes past the quota and the write rate in MB/s.
async fn flood_once() -> anyhow::Result<(u64, f64)> {
    let dir = tempfile::tempdir()?;
    let quota = DiskQuota {
        bytes: FLOOD_QUOTA,
        inodes: 1000,
    };
    let ledger = DiskLedger::new(dir.path().to_owned(), quota, 0);
    let mut stopped = ledger.subscribe();
    ledger.child_started();
    let watcher = tokio::spawn(quota::watch(ledger.clone()));
    let started = Instant::now();
    let mut child = tokio::process::Command::new("/bin/sh")
        .args(["-c", "exec head -c 2147483648 /dev/zero > flood"])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting the flood")?;
    let stop = tokio::time::timeout(Duration::from_secs(60), stopped.wait_for(Option::is_some));
    stop.await
        .context("the watcher never stopped the flood")??;
    child.kill().await?;
    let took = started.elapsed().as_secs_f64();
    watcher.abort();
    let written = std::fs::metadata(dir.path().join("flood"))?.len();
    Ok((
        written.saturating_sub(FLOOD_QUOTA),
        written as f64 / 1e6 / took,
    ))
}

//! Writes and checks the seed corpora (generated, not kept in git).
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml --no-default-features --example seeds -- write
//! cargo run --manifest-path fuzz/Cargo.toml --no-default-features --example seeds -- check
//! ```
//!
//! `write` builds every seed (`warren_fuzz::seeds`), with the demo's worker stream made by
//! the real `ansible-runner worker` from `.venv/` (`scripts/setup-python.sh`) when it is
//! there, replaces `fuzz/seeds/<target>/` and records in `fuzz/seeds/EXPECTED` the
//! milestones each seed must reach; then it checks. `check` runs every file of
//! `fuzz/seeds/` through its target and fails when one panics or no longer reaches its
//! milestones (a harness that stopped matching the library is noticed), then runs every
//! input of `fuzz/regressions/` (inputs that once found a bug), which must not panic.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};

fn main() -> Result<()> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("fuzz/ has a parent")?
        .to_path_buf();
    let seeds_dir = repo.join("fuzz/seeds");
    match std::env::args().nth(1).as_deref() {
        Some("write") => write(&repo, &seeds_dir)?,
        Some("check") => {}
        _ => bail!("usage: seeds write|check"),
    }
    check(&seeds_dir)?;
    check_regressions(&repo.join("fuzz/regressions"))
}

fn write(repo: &Path, dir: &Path) -> Result<()> {
    let stream = match real_worker_stream(repo) {
        Ok(stream) => Some(stream),
        Err(error) => {
            eprintln!("note: no seeds from the real ansible-runner worker: {error:#}");
            None
        }
    };
    let seeds = warren_fuzz::seeds::all(repo, stream.as_deref());
    let mut expected = String::new();
    for (target, _) in warren_fuzz::targets::ALL {
        let target_dir = dir.join(target);
        if target_dir.exists() {
            std::fs::remove_dir_all(&target_dir)?;
        }
        std::fs::create_dir_all(&target_dir)?;
    }
    for seed in &seeds {
        std::fs::write(dir.join(seed.target).join(seed.name), &seed.bytes)?;
        expected.push_str(&format!(
            "{} {} {}\n",
            seed.target,
            seed.name,
            seed.expect.join(",")
        ));
    }
    std::fs::write(dir.join("EXPECTED"), expected)?;
    println!("wrote {} seeds to {}", seeds.len(), dir.display());
    Ok(())
}

fn check(dir: &Path) -> Result<()> {
    let text = std::fs::read_to_string(dir.join("EXPECTED")).context("seeds/EXPECTED")?;
    let mut expected: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ' ');
        let (Some(t), Some(n)) = (parts.next(), parts.next()) else {
            continue;
        };
        let milestones = parts.next().unwrap_or("");
        expected.insert(
            (t.to_owned(), n.to_owned()),
            milestones
                .split(',')
                .filter(|m| !m.is_empty())
                .map(str::to_owned)
                .collect(),
        );
    }
    let mut failures = Vec::new();
    let mut count = 0;
    for (target, body) in warren_fuzz::targets::ALL {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join(target))
            .with_context(|| format!("seeds/{target}"))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()?;
        files.sort();
        ensure!(!files.is_empty(), "no seeds for {target}");
        for file in files {
            let name = file
                .file_name()
                .context("named")?
                .to_string_lossy()
                .into_owned();
            let reached = body(&std::fs::read(&file)?);
            count += 1;
            let want = expected.get(&((*target).to_owned(), name.clone()));
            let missing: Vec<&String> = want
                .map(|w| {
                    w.iter()
                        .filter(|m| !reached.contains(&m.as_str()))
                        .collect()
                })
                .unwrap_or_default();
            if !missing.is_empty() {
                failures.push(format!(
                    "{target}/{name}: missed {missing:?}, reached {reached:?}"
                ));
            }
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} seeds miss their milestones:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    println!("{count} seeds reach their milestones");
    Ok(())
}

/// Runs every file of `dir/<target>/` through its target: none may panic.
fn check_regressions(dir: &Path) -> Result<()> {
    let mut count = 0;
    for (target, body) in warren_fuzz::targets::ALL {
        let Ok(entries) = std::fs::read_dir(dir.join(target)) else {
            continue;
        };
        for entry in entries {
            let file = entry?.path();
            let _ = body(&std::fs::read(&file)?);
            count += 1;
        }
    }
    println!("{count} regression inputs pass");
    Ok(())
}

/// The demo's worker stream from the real `ansible-runner transmit | ansible-runner worker`.
fn real_worker_stream(repo: &Path) -> Result<Vec<u8>> {
    let bin = repo.join(".venv/bin");
    let runner = bin.join("ansible-runner");
    ensure!(
        runner.is_file(),
        "{} is missing: run scripts/setup-python.sh",
        runner.display()
    );
    let demo = tempfile::tempdir()?;
    let copy = demo.path().join("demo");
    copy_tree(&repo.join("examples/demo"), &copy)?;
    let path = std::env::join_paths(std::iter::once(bin.clone()).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))?;
    let run = |args: &[&str], input: &[u8]| -> Result<Vec<u8>> {
        let mut child = Command::new(&runner)
            .args(args)
            .env("PATH", &path)
            .env("LC_ALL", "C.UTF-8")
            .env("ANSIBLE_NOCOLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child.stdin.take().context("stdin")?.write_all(input)?;
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "ansible-runner {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out.stdout)
    };
    let copy_str = copy.to_str().context("utf-8 temp path")?;
    let transmit = run(&["transmit", "-p", "test.yml", "-i", "demo", copy_str], b"")?;
    run(&["worker"], &transmit)
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

//! `rss`: resident memory of an idle `warren node` (the release binary) with 3 links: a hub
//! dials three leaves. The leaves (1 link each) are the figure beside it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use tempfile::TempDir;

use crate::stats::{median, runs};

/// How long the hub idles with its links up before it is measured.
const IDLE: Duration = Duration::from_secs(2);

/// Samples of VmRSS taken across the idle time.
const SAMPLES: usize = 5;

/// Deadline for nodes to start and link.
const DEADLINE: Duration = Duration::from_secs(30);

/// The release `warren` binary, or an error naming the command that builds it.
fn warren_binary() -> anyhow::Result<PathBuf> {
    // Cargo builds the package's binary for its benches, with the bench (release) profile.
    let path = PathBuf::from(env!("CARGO_BIN_EXE_warren"));
    ensure!(
        path.exists(),
        "{} is missing; build it with: cargo build --release -p warren",
        path.display()
    );
    Ok(path)
}

/// A `warren node` process in its own temp dir, killed (and its log dumped on failure) when
/// dropped.
struct WarrenNode {
    child: Child,
    dir: PathBuf,
    name: String,
}

impl WarrenNode {
    fn socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for WarrenNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- log of {} ---\n{}", self.name, self.log());
        }
    }
}

/// Runs `warren keygen --out DIR/key` and returns the public token.
fn keygen(bin: &Path, dir: &Path) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .arg("keygen")
        .arg("--out")
        .arg(dir.join("key"))
        .output()?;
    ensure!(out.status.success(), "keygen failed: {out:?}");
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// Starts `warren node` as `name` in `dir` (which holds its key) with `extra` flags.
fn spawn_node(bin: &Path, dir: &Path, name: &str, extra: &[String]) -> anyhow::Result<WarrenNode> {
    let log = std::fs::File::create(dir.join("log"))?;
    let child = Command::new(bin)
        .arg("node")
        .args(["--id", name, "--listen", "127.0.0.1:0"])
        .arg("--key")
        .arg(dir.join("key"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--control-socket")
        .arg(dir.join("control.sock"))
        .arg("--ready-file")
        .arg(dir.join("ready"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    Ok(WarrenNode {
        child,
        dir: dir.to_owned(),
        name: name.to_owned(),
    })
}

/// Waits for the node's ready file and returns its first listen address.
fn wait_ready(node: &WarrenNode) -> anyhow::Result<String> {
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(node.dir.join("ready"))
            && let Some(addr) = text.lines().next()
        {
            return Ok(addr.to_owned());
        }
        if start.elapsed() > DEADLINE {
            bail!(
                "{} not ready after {DEADLINE:?}; log:\n{}",
                node.name,
                node.log()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How many direct links `warren status --json` reports for the node.
fn connections(bin: &Path, node: &WarrenNode) -> anyhow::Result<usize> {
    let out = Command::new(bin)
        .arg("status")
        .arg("--socket")
        .arg(node.socket())
        .arg("--json")
        .output()?;
    ensure!(out.status.success(), "warren status failed: {out:?}");
    let value: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(value["Connections"].as_array().map_or(0, Vec::len))
}

/// VmRSS of `pid` in MiB.
fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS line")?;
    let kib: f64 = line
        .split_whitespace()
        .nth(1)
        .context("empty VmRSS line")?
        .parse()?;
    Ok(kib / 1024.0)
}

pub(crate) fn run() -> anyhow::Result<()> {
    let bin = warren_binary()?;
    let tmp = TempDir::new()?;
    let mut leaves = Vec::new();
    let mut hub_flags = Vec::new();
    let hub_dir = tmp.path().join("hub");
    std::fs::create_dir(&hub_dir)?;
    let hub_token = keygen(&bin, &hub_dir)?;
    for i in 1..=3 {
        let dir = tmp.path().join(format!("leaf{i}"));
        std::fs::create_dir(&dir)?;
        let token = keygen(&bin, &dir)?;
        let leaf = spawn_node(
            &bin,
            &dir,
            &format!("leaf{i}"),
            &["--trust".to_owned(), hub_token.clone()],
        )?;
        hub_flags.extend(["--trust".to_owned(), token]);
        leaves.push(leaf);
    }
    for leaf in &leaves {
        hub_flags.extend(["--peer".to_owned(), wait_ready(leaf)?]);
    }
    let hub = spawn_node(&bin, &hub_dir, "hub", &hub_flags)?;
    wait_ready(&hub)?;
    let start = Instant::now();
    loop {
        // The socket exists once the node is ready; status can still fail while it starts.
        if connections(&bin, &hub).unwrap_or(0) == 3 {
            break;
        }
        if start.elapsed() > DEADLINE {
            bail!(
                "hub has not 3 links after {DEADLINE:?}; log:\n{}",
                hub.log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut hub_rss = Vec::new();
    for _ in 0..SAMPLES {
        std::thread::sleep(IDLE / SAMPLES as u32);
        hub_rss.push(rss_mib(hub.child.id())?);
    }
    ensure!(connections(&bin, &hub)? == 3, "a link dropped while idle");
    let leaf_rss: Vec<f64> = leaves
        .iter()
        .map(|l| rss_mib(l.child.id()))
        .collect::<Result<_, _>>()?;
    println!(
        "idle `warren node` VmRSS, MiB ({} after links up):",
        fmt_secs(IDLE)
    );
    println!(
        "  hub, 3 links       {:>6.1}   samples: {}   (= {:.1} MB; target < 15 MB)",
        median(&hub_rss),
        runs(&hub_rss, 1),
        median(&hub_rss) * 1.048_576
    );
    println!(
        "  leaf, 1 link       {:>6.1}   leaves: {}",
        median(&leaf_rss),
        runs(&leaf_rss, 1)
    );
    println!(
        "  hub - leaf         {:>6.1}",
        median(&hub_rss) - median(&leaf_rss)
    );
    Ok(())
}

fn fmt_secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

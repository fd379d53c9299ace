//! Control-socket work round trips, as `receptorctl work submit ... -f --rm` does them (and
//! AWX): submit a tiny `cat` job on the controller for node1, two hops away, read its
//! results until the unit is done, release it. Medians and p99 over sequential jobs (target:
//! median under 3 ms), and jobs per second with 50 in flight (target: at least 1,000); the
//! release `warren` binary runs the three nodes. Then the nodes' resident memory and open
//! files after 10,000 jobs against after the first 100 (target: within 10 %). Then the
//! metrics overhead: the same rate on a second mesh whose nodes serve `/metrics` (scraped
//! every second) against the first, batches alternating between them (target: at least
//! 97 %).
//!
//! `cargo bench -p warren --bench control` (with `WARREN_BENCH_QUICK=1`: the sequential and
//! in-flight figures only, on one mesh; with `WARREN_BENCH_BIN=<path>`: the nodes run that
//! `warren` binary).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use tokio::io::AsyncReadExt;
use warren::control::Client;

#[path = "mesh/stats.rs"]
#[allow(dead_code)]
mod stats;

/// Sequential jobs measured.
const SEQUENTIAL: usize = 200;
/// Jobs in flight for the throughput figure, and how many batches of them.
const IN_FLIGHT: usize = 50;
const BATCHES: usize = 5;
/// Jobs run before the memory and descriptor figures are read, early and late.
const SOAK_EARLY: usize = 100;
const SOAK_LATE: usize = 10_000;

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Names another `warren` binary for the nodes (an older build, to compare with this one
/// in the same minutes on a shared machine).
const BIN_ENV: &str = "WARREN_BENCH_BIN";

fn warren() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os(BIN_ENV).map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_warren")),
        PathBuf::from,
    );
    ensure!(
        path.exists(),
        "{} is missing; build it with: cargo build --release -p warren",
        path.display()
    );
    Ok(path)
}

fn keygen(dir: &Path, name: &str) -> anyhow::Result<String> {
    let out = Command::new(warren()?)
        .args(["keygen", "--out"])
        .arg(dir.join(format!("{name}.key")))
        .output()?;
    ensure!(out.status.success(), "keygen failed: {out:?}");
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// Starts node `name`; returns it and its bound address.
fn start(
    dir: &Path,
    name: &str,
    trust: &[String],
    extra: &[&str],
) -> anyhow::Result<(Node, String)> {
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let ready = dir.join(format!("{name}.ready"));
    let mut cmd = Command::new(warren()?);
    cmd.args(["node", "--id", name, "--listen", "127.0.0.1:0"])
        .arg("--key")
        .arg(dir.join(format!("{name}.key")))
        .arg("--data-dir")
        .arg(dir.join(format!("{name}-data")))
        .arg("--control-socket")
        .arg(dir.join(format!("{name}.sock")))
        .arg("--ready-file")
        .arg(&ready)
        .args(["--no-ansible-runner"])
        .env("WARREN_COMPONENT_CACHE", dir.join("cache"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    for token in trust {
        cmd.args(["--trust", token]);
    }
    cmd.args(extra);
    let node = Node(cmd.spawn()?);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&ready)
            && let Some(addr) = text.lines().next()
        {
            return Ok((node, addr.to_owned()));
        }
        if Instant::now() > deadline {
            bail!("{name} did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One job as `receptorctl work submit -f --rm` runs it: submit (payload, half-close),
/// follow the results, release the unit.
async fn job(socket: &Path) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let client = Client::connect(socket).await?;
    let reply = client
        .work_submit("node1", "cat", BTreeMap::new(), &mut &b"hello\n"[..])
        .await?;
    let client = Client::connect(socket).await?;
    let mut results = client.work_results(reply.unit_id, 0).await?;
    let mut out = Vec::new();
    results.read_to_end(&mut out).await?;
    ensure!(out == b"hello\n", "unexpected output {out:?}");
    let mut client = Client::connect(socket).await?;
    client.work_release(reply.unit_id, false).await?;
    Ok(started.elapsed())
}

async fn wait_offered(socket: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if job(socket).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("node1 never ran a cat job")
}

/// controller -> relay -> node1 in `dir`, each with `extra` flags; the nodes and the
/// controller's socket.
fn mesh(dir: &Path, extra: &[&str]) -> anyhow::Result<(Vec<Node>, PathBuf)> {
    let tokens: Vec<String> = ["controller", "relay", "node1"]
        .iter()
        .map(|n| keygen(dir, n))
        .collect::<Result<_, _>>()?;
    // node1 lets the controller's key submit cat.
    let allow = format!("cat={}", tokens[0]);
    let node1_flags = [
        &["--work-type", "cat=/bin/cat", "--allow-work", &allow][..],
        extra,
    ]
    .concat();
    let (node1, addr) = start(dir, "node1", &tokens, &node1_flags)?;
    let (relay, addr) = start(
        dir,
        "relay",
        &tokens,
        &[&["--peer", &addr][..], extra].concat(),
    )?;
    let (controller, _) = start(
        dir,
        "controller",
        &tokens,
        &[&["--peer", &addr][..], extra].concat(),
    )?;
    Ok((vec![node1, relay, controller], dir.join("controller.sock")))
}

/// Jobs per second with [`IN_FLIGHT`] jobs at once, over one batch.
async fn batch_rate(socket: &Path) -> anyhow::Result<f64> {
    run_jobs(socket, IN_FLIGHT).await
}

/// Runs `count` jobs, [`IN_FLIGHT`] at a time; returns jobs per second.
async fn run_jobs(socket: &Path, count: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers = (0..IN_FLIGHT.min(count)).map(|_| {
        let (socket, next) = (socket.to_owned(), next.clone());
        tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < count {
                job(&socket).await?;
            }
            anyhow::Ok(())
        })
    });
    for handle in workers.collect::<Vec<_>>() {
        handle.await??;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// Resident memory (KiB) and open descriptors of process `pid`.
fn footprint(pid: u32) -> anyhow::Result<(u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    Ok((rss, fds))
}

/// Each node's footprint, idle after a settle.
async fn footprints(nodes: &[Node]) -> anyhow::Result<Vec<(u64, usize)>> {
    tokio::time::sleep(Duration::from_secs(2)).await;
    nodes.iter().map(|n| footprint(n.0.id())).collect()
}

/// Memory and descriptors after [`SOAK_EARLY`] jobs and after [`SOAK_LATE`].
async fn soak(nodes: &[Node], socket: &Path) -> anyhow::Result<()> {
    run_jobs(socket, SOAK_EARLY).await?;
    let early = footprints(nodes).await?;
    let before = cpu_now(nodes)?;
    let rate = run_jobs(socket, SOAK_LATE - SOAK_EARLY).await?;
    let after = cpu_now(nodes)?;
    let late = footprints(nodes).await?;
    println!(
        "== control: idle footprint after {SOAK_EARLY} jobs and after {SOAK_LATE} ({rate:.0} jobs/s meanwhile)"
    );
    println!(
        "  CPU ms per job meanwhile: {}",
        cpu_per_job(&before, &after, SOAK_LATE - SOAK_EARLY)
    );
    for ((name, (rss0, fds0)), (rss1, fds1)) in
        ["node1", "relay", "controller"].iter().zip(early).zip(late)
    {
        println!(
            "  {name:<10} RSS {:>6.1} -> {:>6.1} MiB ({:+.1} %)   open fds {fds0} -> {fds1}   (target within 10 %)",
            rss0 as f64 / 1024.0,
            rss1 as f64 / 1024.0,
            100.0 * (rss1 as f64 - rss0 as f64) / rss0 as f64
        );
    }
    Ok(())
}

/// The metrics address node `name` logged at start.
fn metrics_addr(dir: &Path, name: &str) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(dir.join(format!("{name}.log")))?;
        if let Some(at) = log.find("metrics=Some(") {
            let rest = &log[at + "metrics=Some(".len()..];
            return Ok(rest[..rest.find(')').context("log line")?].to_owned());
        }
        ensure!(
            Instant::now() < deadline,
            "{name} logged no metrics address"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `GET /metrics` from `addr`; the body's length.
async fn scrape(addr: &str) -> anyhow::Result<usize> {
    use tokio::io::AsyncWriteExt;
    let mut socket = tokio::net::TcpStream::connect(addr).await?;
    socket
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut body = Vec::new();
    socket.read_to_end(&mut body).await?;
    ensure!(body.starts_with(b"HTTP/1.1 200"), "scrape of {addr} failed");
    Ok(body.len())
}

/// Alternating batches on a mesh without metrics and one serving them, scraped every
/// second; prints the rates and their ratio.
async fn metrics_overhead(plain: &Path, with: &Path, addrs: Vec<String>) -> anyhow::Result<()> {
    let scraper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            for addr in &addrs {
                let _ = scrape(addr).await;
            }
        }
    });
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for _ in 0..2 * BATCHES {
        off.push(batch_rate(plain).await?);
        on.push(batch_rate(with).await?);
    }
    scraper.abort();
    let (off_rate, on_rate) = (stats::median(&off), stats::median(&on));
    println!(
        "== control: metrics overhead, {IN_FLIGHT} in flight, batches alternating ({} each)",
        off.len()
    );
    println!(
        "  metrics off: {off_rate:.0} jobs/s   on, scraped every second on all 3 nodes: {on_rate:.0} jobs/s"
    );
    println!(
        "  on / off: {:.1} % (target >= 97 %)",
        100.0 * on_rate / off_rate
    );
    Ok(())
}

/// CPU time (user + system, in clock ticks) process `pid` and its reaped children used.
fn cpu_ticks(pid: &str) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at state.
    let rest = &stat[stat.rfind(')').context("stat")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime, stime, cutime, cstime are fields 14-17 of stat, 12-15 after the name.
    fields[11..15]
        .iter()
        .map(|f| f.parse::<u64>().context("stat field"))
        .sum()
}

/// Each node's and this process's CPU ticks.
fn cpu_now(nodes: &[Node]) -> anyhow::Result<Vec<u64>> {
    let mut ticks: Vec<u64> = nodes
        .iter()
        .map(|n| cpu_ticks(&n.0.id().to_string()))
        .collect::<anyhow::Result<_>>()?;
    ticks.push(cpu_ticks("self")?);
    Ok(ticks)
}

/// The sequential round trips and the rate with [`IN_FLIGHT`] jobs at once, and the CPU
/// time each process spent per job meanwhile.
async fn rates_and_round_trips(nodes: &[Node], socket: &Path) -> anyhow::Result<()> {
    let mut times = Vec::with_capacity(SEQUENTIAL);
    for _ in 0..SEQUENTIAL {
        times.push(job(socket).await?.as_secs_f64() * 1e3);
    }
    println!(
        "== control: `work submit cat --node node1 -f` over 2 hops ({SEQUENTIAL} jobs, one at a time)"
    );
    println!(
        "  round trip, ms: median {:.2}  p99 {:.2} (target: median < 3)",
        stats::median(&times),
        stats::percentile(&times, 99.0)
    );
    let mut rates = Vec::new();
    let before = cpu_now(nodes)?;
    for _ in 0..BATCHES {
        rates.push(batch_rate(socket).await?);
    }
    let after = cpu_now(nodes)?;
    println!(
        "  {IN_FLIGHT} in flight: {:.0} jobs/s (median of {BATCHES} batches; runs {}; target >= 1000)",
        stats::median(&rates),
        stats::runs(&rates, 0)
    );
    println!(
        "  CPU ms per job meanwhile: {}",
        cpu_per_job(&before, &after, BATCHES * IN_FLIGHT)
    );
    Ok(())
}

/// Each process's CPU time per job between two [`cpu_now`] readings `jobs` jobs apart.
fn cpu_per_job(before: &[u64], after: &[u64], jobs: usize) -> String {
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let per_job: Vec<String> = ["node1", "relay", "controller", "bench"]
        .iter()
        .zip(before.iter().zip(after))
        .map(|(name, (b, a))| format!("{name} {:.2}", (a - b) as f64 / hz / jobs as f64 * 1e3))
        .collect();
    per_job.join("  ")
}

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let plain_dir = dir.path().join("plain");
    let metrics_dir = dir.path().join("metrics");
    std::fs::create_dir_all(&plain_dir)?;
    std::fs::create_dir_all(&metrics_dir)?;
    let quick = std::env::var_os("WARREN_BENCH_QUICK").is_some();
    let (plain, socket) = mesh(&plain_dir, &[])?;
    if quick {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        return runtime.block_on(async {
            wait_offered(&socket).await.context("warming up")?;
            rates_and_round_trips(&plain, &socket).await
        });
    }
    let (_with, metrics_socket) = mesh(&metrics_dir, &["--metrics", "127.0.0.1:0"])?;
    let addrs = ["controller", "relay", "node1"]
        .iter()
        .map(|n| metrics_addr(&metrics_dir, n))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        wait_offered(&socket).await.context("warming up")?;
        wait_offered(&metrics_socket).await.context("warming up")?;
        rates_and_round_trips(&plain, &socket).await?;
        soak(&plain, &socket).await?;
        metrics_overhead(&socket, &metrics_socket, addrs).await
    })
}

//! `throughput`: one stream from the bench process to a sink over 1 and 2 mesh hops (sealed
//! end to end, as every stream is), against raw loopback TCP to a sink in a child process,
//! interleaved round by round.
//!
//! Besides the rates, each run's CPU time (user + system, of this process and both node
//! processes, from `/proc`) per megabyte moved: on a shared machine the rates swing with
//! other load, the CPU a byte costs much less. Raw TCP's CPU per byte over the mesh's is
//! what the rate ratio would be if both were bound by this machine's CPU alone.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use warren::id::NodeId;

use crate::nodes::{Line, sink_service};
use crate::stats::{mb_per_s, median, runs};

/// Rounds of (raw TCP, 1 hop, 2 hops).
const ROUNDS: usize = 7;

/// How long each measurement writes; the clock stops when the sink acknowledges all bytes.
const SEND_TIME: Duration = Duration::from_secs(1);

/// Size of one application write.
const WRITE_LEN: usize = 128 * 1024;

pub(crate) fn run() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(measure_all())
}

async fn measure_all() -> anyhow::Result<()> {
    let line = Line::start().await?;
    let (b, c) = (Line::b_id(), Line::c_id());
    // Warm-up: fills windows, faults in buffers.
    raw(&line, Duration::from_millis(200)).await?;
    mesh(&line, &b, Duration::from_millis(200)).await?;
    mesh(&line, &c, Duration::from_millis(200)).await?;
    let (mut tcp, mut one, mut two) = (Vec::new(), Vec::new(), Vec::new());
    let (mut tcp_cpu, mut one_cpu, mut two_cpu) = (Vec::new(), Vec::new(), Vec::new());
    let pids = [std::process::id(), line.b.pid(), line.c.pid()];
    for _ in 0..ROUNDS {
        let cpu = Cpu::start(&pids)?;
        let rate = raw(&line, SEND_TIME).await?;
        tcp_cpu.push(cpu.ms_per_mb(&pids, rate)?);
        tcp.push(rate);
        let cpu = Cpu::start(&pids)?;
        let rate = mesh(&line, &b, SEND_TIME).await?;
        one_cpu.push(cpu.ms_per_mb(&pids, rate)?);
        one.push(rate);
        let cpu = Cpu::start(&pids)?;
        let rate = mesh(&line, &c, SEND_TIME).await?;
        two_cpu.push(cpu.ms_per_mb(&pids, rate)?);
        two.push(rate);
    }
    line.stop().await;
    print_rates(&tcp, &one, &two);
    print_cpu(&tcp_cpu, &one_cpu, &two_cpu);
    Ok(())
}

fn print_rates(tcp: &[f64], one: &[f64], two: &[f64]) {
    let ratio = |hop: &[f64]| -> Vec<f64> { hop.iter().zip(tcp).map(|(h, t)| h / t).collect() };
    let (r1, r2) = (ratio(one), ratio(two));
    println!(
        "one stream, {} KiB writes, ~{SEND_TIME:?} per run, MB/s (median of {ROUNDS}):",
        WRITE_LEN / 1024
    );
    println!(
        "  raw TCP loopback   {:>8.0}   runs: {}",
        median(tcp),
        runs(tcp, 0)
    );
    println!(
        "  mesh 1 hop         {:>8.0}   runs: {}",
        median(one),
        runs(one, 0)
    );
    println!(
        "  mesh 2 hops        {:>8.0}   runs: {}",
        median(two),
        runs(two, 0)
    );
    println!(
        "  1 hop / raw TCP    {:>7.0}%   runs: {}   (target >= 50%)",
        median(&r1) * 100.0,
        runs(&r1, 2)
    );
    println!(
        "  2 hops / raw TCP   {:>7.0}%   runs: {}   (target >= 35%)",
        median(&r2) * 100.0,
        runs(&r2, 2)
    );
}

fn print_cpu(tcp: &[f64], one: &[f64], two: &[f64]) {
    println!("CPU time of all three processes per MB moved, ms (median of {ROUNDS}):");
    println!(
        "  raw TCP loopback   {:>8.3}   runs: {}",
        median(tcp),
        runs(tcp, 3)
    );
    println!(
        "  mesh 1 hop         {:>8.3}   runs: {}",
        median(one),
        runs(one, 3)
    );
    println!(
        "  mesh 2 hops        {:>8.3}   runs: {}",
        median(two),
        runs(two, 3)
    );
    // Per round, raw TCP's cost over the mesh's: the rate ratio a CPU-bound run would show.
    let bound = |hop: &[f64]| -> Vec<f64> { tcp.iter().zip(hop).map(|(t, h)| t / h).collect() };
    let (b1, b2) = (bound(one), bound(two));
    println!(
        "  1 hop, CPU-bound ratio   {:>5.0}%   runs: {}",
        median(&b1) * 100.0,
        runs(&b1, 2)
    );
    println!(
        "  2 hops, CPU-bound ratio  {:>5.0}%   runs: {}",
        median(&b2) * 100.0,
        runs(&b2, 2)
    );
}

/// CPU time (user + system) of some processes since a start, read from `/proc`.
struct Cpu {
    start: f64,
    at: Instant,
}

impl Cpu {
    fn start(pids: &[u32]) -> anyhow::Result<Self> {
        Ok(Self {
            start: cpu_secs(pids)?,
            at: Instant::now(),
        })
    }

    /// Milliseconds of CPU per megabyte, for a run that moved `rate` MB/s since the start.
    fn ms_per_mb(&self, pids: &[u32], rate: f64) -> anyhow::Result<f64> {
        let cpu = cpu_secs(pids)? - self.start;
        let mb = rate * self.at.elapsed().as_secs_f64();
        Ok(cpu * 1000.0 / mb)
    }
}

/// Total user + system seconds of `pids` (whole processes, all threads).
fn cpu_secs(pids: &[u32]) -> anyhow::Result<f64> {
    // `USER_HZ`, which Linux fixes at 100 for `/proc` whatever the kernel tick.
    const TICKS: f64 = 100.0;
    let mut total = 0u64;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command name (which may hold spaces) close with ')'.
        let rest = stat.rsplit_once(')').context("malformed /proc stat")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line, counted after the name from 3.
        let utime: u64 = fields.get(11).context("no utime")?.parse()?;
        let stime: u64 = fields.get(12).context("no stime")?.parse()?;
        total += utime + stime;
    }
    Ok(total as f64 / TICKS)
}

/// Raw TCP from this process to `b`'s sink; MB/s.
async fn raw(line: &Line, time: Duration) -> anyhow::Result<f64> {
    let mut stream = TcpStream::connect(line.b.sink_addr()).await?;
    stream.set_nodelay(true)?;
    pump(&mut stream, time).await
}

/// A mesh stream from `a` to `to`'s sink service; MB/s.
async fn mesh(line: &Line, to: &NodeId, time: Duration) -> anyhow::Result<f64> {
    let mut stream = line
        .a
        .connect(to, &sink_service())
        .await
        .with_context(|| format!("connecting to {to}"))?;
    pump(&mut stream, time).await
}

/// Writes for about `time`, finishes, and waits for the sink's count; MB/s from the first
/// write to the acknowledgement.
pub(crate) async fn pump<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    time: Duration,
) -> anyhow::Result<f64> {
    let buf = vec![0xa5u8; WRITE_LEN];
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < time {
        stream.write_all(&buf).await?;
        sent += WRITE_LEN as u64;
    }
    stream.shutdown().await?;
    let mut ack = [0u8; 8];
    stream.read_exact(&mut ack).await?;
    let secs = start.elapsed().as_secs_f64();
    let got = u64::from_le_bytes(ack);
    ensure!(got == sent, "sink counted {got} bytes, {sent} sent");
    // Read the sink's EOF so the stream ends cleanly rather than by reset.
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await?;
    Ok(mb_per_s(sent, secs))
}

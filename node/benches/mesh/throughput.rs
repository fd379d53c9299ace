//! `throughput`: one stream from the bench process to a sink over 1 and 2 mesh hops (sealed
//! end to end, as every stream is), against raw loopback TCP to a sink in a child process,
//! interleaved round by round.

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
    for _ in 0..ROUNDS {
        tcp.push(raw(&line, SEND_TIME).await?);
        one.push(mesh(&line, &b, SEND_TIME).await?);
        two.push(mesh(&line, &c, SEND_TIME).await?);
    }
    line.stop().await;
    let ratio = |hop: &[f64]| -> Vec<f64> { hop.iter().zip(&tcp).map(|(h, t)| h / t).collect() };
    let (r1, r2) = (ratio(&one), ratio(&two));
    println!(
        "one stream, {} KiB writes, ~{SEND_TIME:?} per run, MB/s (median of {ROUNDS}):",
        WRITE_LEN / 1024
    );
    println!(
        "  raw TCP loopback   {:>8.0}   runs: {}",
        median(&tcp),
        runs(&tcp, 0)
    );
    println!(
        "  mesh 1 hop         {:>8.0}   runs: {}",
        median(&one),
        runs(&one, 0)
    );
    println!(
        "  mesh 2 hops        {:>8.0}   runs: {}",
        median(&two),
        runs(&two, 0)
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
    Ok(())
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

//! `ping`: echo probe round trips from the bench process over 1 and 2 mesh hops, against a
//! TCP echo of the same size to a child process. Times are wall clock around each call, so
//! they include the hop from the caller's task to the node's owner task.

use std::time::{Duration, Instant};

use anyhow::bail;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warren::id::NodeId;

use crate::nodes::{ECHO_LEN, Line};
use crate::stats::{median, percentile, runs};

/// Round trips per kind.
const COUNT: usize = 1000;

/// Interleaved batches, so drift hits every kind alike; per-batch medians are printed too.
const BATCHES: usize = 5;

pub(crate) fn run() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(measure_all())
}

async fn measure_all() -> anyhow::Result<()> {
    let line = Line::start().await?;
    let (b, c) = (Line::b_id(), Line::c_id());
    let mut echo = TcpStream::connect(line.b.echo_addr()).await?;
    echo.set_nodelay(true)?;
    // Warm-up.
    tcp_rtts(&mut echo, 50).await?;
    probe_rtts(&line, &c, 50).await?;
    let per = COUNT / BATCHES;
    let (mut tcp, mut one, mut two) = (Vec::new(), Vec::new(), Vec::new());
    let (mut tcp_m, mut one_m, mut two_m) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..BATCHES {
        for (all, medians, batch) in [
            (&mut tcp, &mut tcp_m, tcp_rtts(&mut echo, per).await?),
            (&mut one, &mut one_m, probe_rtts(&line, &b, per).await?),
            (&mut two, &mut two_m, probe_rtts(&line, &c, per).await?),
        ] {
            medians.push(median(&batch));
            all.extend(batch);
        }
    }
    drop(echo);
    line.stop().await;
    println!("{COUNT} round trips each, microseconds (median / p99; batch medians):");
    for (name, all, medians) in [
        ("TCP echo (64 B)", &tcp, &tcp_m),
        ("probe 1 hop", &one, &one_m),
        ("probe 2 hops", &two, &two_m),
    ] {
        println!(
            "  {name:<16} {:>7.0} / {:>6.0}   batches: {}",
            median(all),
            percentile(all, 99.0),
            runs(medians, 0)
        );
    }
    println!(
        "  2 hops median {:.3} ms (target < 1 ms); 2 hops / TCP echo: {:.1}x",
        median(&two) / 1000.0,
        median(&two) / median(&tcp)
    );
    Ok(())
}

/// `n` probe round trips from `a` to `to`, in microseconds.
async fn probe_rtts(line: &Line, to: &NodeId, n: usize) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let outcome = line.a.probe(to, None).await?;
        let elapsed = start.elapsed();
        if let Err((from, failure, _)) = outcome {
            bail!("probe to {to} failed at {from:?}: {failure:?}");
        }
        out.push(micros(elapsed));
    }
    Ok(out)
}

/// `n` echo round trips on `echo`, in microseconds.
async fn tcp_rtts(echo: &mut TcpStream, n: usize) -> anyhow::Result<Vec<f64>> {
    let mut buf = [0x42u8; ECHO_LEN];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        echo.write_all(&buf).await?;
        echo.read_exact(&mut buf).await?;
        out.push(micros(start.elapsed()));
    }
    Ok(out)
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

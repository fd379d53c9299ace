//! `session`: what end-to-end sessions add to opening a stream over 2 hops. Each sample
//! starts a new run of the in-process node `a` (so it holds no session with `c`), times its
//! first stream open to `c` (session handshake, then the open), then later opens that reuse
//! the session. The baseline is a probe round trip over the same 2 hops in the same run: a
//! stream open is one round trip too, so what an open costs beyond a probe is what sealing
//! adds, and what a first open costs beyond a later one is the session setup.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::nodes::{Line, sink_service};
use crate::stats::{median, percentile};

/// New runs of `a`, each giving one first-open sample.
const SAMPLES: usize = 30;

/// Later opens (and probes) per sample.
const LATER: usize = 20;

pub(crate) fn run() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(measure_all())
}

async fn measure_all() -> anyhow::Result<()> {
    let mut line = Line::start().await?;
    let (mut first, mut later, mut probe) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..SAMPLES {
        line.restart_a().await?;
        first.push(open_micros(&line).await?);
        for _ in 0..LATER {
            later.push(open_micros(&line).await?);
            probe.push(probe_micros(&line).await?);
        }
    }
    line.stop().await;
    println!(
        "stream opens a -> c over 2 hops, microseconds (median / p99); {SAMPLES} new runs of a, \
         {LATER} later opens and probes after each:"
    );
    for (name, values) in [
        ("probe round trip (baseline)", &probe),
        ("first open (new session)", &first),
        ("later open (session reused)", &later),
    ] {
        println!(
            "  {name:<28} {:>7.0} / {:>6.0}",
            median(values),
            percentile(values, 99.0)
        );
    }
    let setup = median(&first) - median(&later);
    let added = median(&later) - median(&probe);
    println!(
        "  first open                   {:.3} ms median, {:.3} ms p99 (target < 5 ms)",
        median(&first) / 1000.0,
        percentile(&first, 99.0) / 1000.0
    );
    println!("  session setup (first - later open, medians)   {setup:>6.0} us");
    println!(
        "  added per later stream (later open - probe)    {added:>6.0} us (target < 1000 us); \
         later open / probe: {:.2}x",
        median(&later) / median(&probe)
    );
    Ok(())
}

/// Opens a stream from `a` to `c`'s sink, in microseconds; then ends it cleanly (untimed).
async fn open_micros(line: &Line) -> anyhow::Result<f64> {
    let c = Line::c_id();
    let start = Instant::now();
    let mut stream = line
        .a
        .connect(&c, &sink_service())
        .await
        .context("opening a stream to c")?;
    let elapsed = start.elapsed();
    stream.shutdown().await?;
    let mut ack = [0u8; 8];
    stream.read_exact(&mut ack).await?;
    Ok(micros(elapsed))
}

/// One probe round trip from `a` to `c`, in microseconds.
async fn probe_micros(line: &Line) -> anyhow::Result<f64> {
    let c = Line::c_id();
    let start = Instant::now();
    let outcome = line.a.probe(&c, None).await?;
    let elapsed = start.elapsed();
    if let Err((from, failure, _)) = outcome {
        bail!("probe to c failed at {from:?}: {failure:?}");
    }
    Ok(micros(elapsed))
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

//! `websocket`: one stream to a sink on node `b` (its own process) from two nodes in this
//! process, `a` linked to `b` over TCP and `c` over a `ws://` link, alternated round by
//! round. The WebSocket link adds framing and a copy per message; the target is at least
//! 80 % of the TCP link's throughput.

use std::time::{Duration, Instant};

use anyhow::bail;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren::id::NodeId;
use warren::mesh::driver::MeshHandle;
use warren::mesh::transport::Dial;

use crate::nodes::{NodeProcess, SEEDS, sink_service, start_node_with};
use crate::stats::{median, runs};
use crate::throughput::pump;

/// Rounds of (TCP link, WebSocket link).
const ROUNDS: usize = 7;

/// How long each measurement writes.
const SEND_TIME: Duration = Duration::from_secs(1);

pub(crate) fn run() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(measure())
}

async fn measure() -> anyhow::Result<()> {
    let b = NodeProcess::spawn_with("b", SEEDS[1], None, true)?;
    let Some(ws_port) = b.ws_port else {
        bail!("node b reported no WebSocket port");
    };
    let (tcp, tcp_driver) =
        start_node_with("a", SEEDS[0], Vec::new(), Some((b.mesh_port, Dial::Tcp)))?;
    let ws_dial = Dial::Ws {
        path: "/".to_owned(),
        tls: None,
    };
    let (ws, ws_driver) = start_node_with("c", SEEDS[2], Vec::new(), Some((ws_port, ws_dial)))?;
    let b_id: NodeId = "b".parse()?;
    for node in [&tcp, &ws] {
        ready(node, &b_id).await?;
        let mut warm = node.connect(&b_id, &sink_service()).await?;
        pump(&mut warm, Duration::from_millis(200)).await?;
    }
    let (mut over_tcp, mut over_ws) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let mut s = tcp.connect(&b_id, &sink_service()).await?;
        over_tcp.push(pump(&mut s, SEND_TIME).await?);
        let mut s = ws.connect(&b_id, &sink_service()).await?;
        over_ws.push(pump(&mut s, SEND_TIME).await?);
    }
    for (node, driver) in [(tcp, tcp_driver), (ws, ws_driver)] {
        node.shutdown().await;
        let _ = driver.await;
    }
    let ratios: Vec<f64> = over_ws.iter().zip(&over_tcp).map(|(w, t)| w / t).collect();
    println!("one stream to the same peer, ~{SEND_TIME:?} per run, MB/s (median of {ROUNDS}):");
    println!(
        "  TCP link           {:>8.0}   runs: {}",
        median(&over_tcp),
        runs(&over_tcp, 0)
    );
    println!(
        "  ws:// link         {:>8.0}   runs: {}",
        median(&over_ws),
        runs(&over_ws, 0)
    );
    println!(
        "  ws:// / TCP        {:>7.0}%   runs: {}   (target >= 80%)",
        median(&ratios) * 100.0,
        runs(&ratios, 2)
    );
    Ok(())
}

/// Waits until `node` reaches `b` and `b`'s sink answers.
async fn ready(node: &MeshHandle, b: &NodeId) -> anyhow::Result<()> {
    let started = Instant::now();
    if !node.wait_reachable(b, Duration::from_secs(20)).await? {
        bail!("b not reachable");
    }
    loop {
        match node.connect(b, &sink_service()).await {
            Ok(mut s) => {
                s.shutdown().await?;
                let mut ack = [0u8; 8];
                s.read_exact(&mut ack).await?;
                return Ok(());
            }
            Err(e) if started.elapsed() > Duration::from_secs(20) => bail!("no stream to b: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

//! `cipher`: Noise transport throughput of the two candidate suites, with snow directly.
//! Two states handshake in memory, then one encrypts full-size messages and the other
//! decrypts them; a figure counts plaintext bytes through both steps.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::Context;
use snow::{Builder, TransportState};

use crate::stats::{mb_per_s, median, runs};

/// The suite the mesh uses (see `warren::mesh::noise::NOISE_PARAMS`) and the alternative.
const SUITES: [&str; 2] = [
    "Noise_XX_25519_AESGCM_SHA256",
    "Noise_XX_25519_ChaChaPoly_BLAKE2s",
];

/// Largest Noise transport plaintext: a 65535-byte message minus the 16-byte tag.
const PLAINTEXT_LEN: usize = 65519;

/// Largest Noise message.
const MESSAGE_LEN: usize = 65535;

/// Repeats per suite, interleaved so drift on the shared machine hits both alike.
const ROUNDS: usize = 5;

/// Time per repeat: ~1 s per suite in all.
const ROUND_TIME: Duration = Duration::from_millis(200);

pub(crate) fn run() -> anyhow::Result<()> {
    let mut pairs = Vec::new();
    for suite in SUITES {
        pairs.push(transport_pair(suite).with_context(|| format!("handshake for {suite}"))?);
    }
    // Warm up caches and CPU frequency before counting.
    for (i, r) in &mut pairs {
        measure(i, r, Duration::from_millis(50))?;
    }
    let mut figures = vec![Vec::new(); SUITES.len()];
    for _ in 0..ROUNDS {
        for ((i, r), out) in pairs.iter_mut().zip(&mut figures) {
            out.push(measure(i, r, ROUND_TIME)?);
        }
    }
    let ratios: Vec<f64> = figures[0]
        .iter()
        .zip(&figures[1])
        .map(|(a, c)| a / c)
        .collect();
    println!("{PLAINTEXT_LEN}-byte messages, encrypt+decrypt, MB/s (median of {ROUNDS}):");
    for (suite, f) in SUITES.iter().zip(&figures) {
        println!("  {suite:<36} {:>8.0}   runs: {}", median(f), runs(f, 0));
    }
    println!(
        "  AESGCM / ChaChaPoly ratio: {:.2}x   runs: {}",
        median(&ratios),
        runs(&ratios, 2)
    );
    Ok(())
}

/// Handshakes an initiator and a responder in memory (XX: `-> e`, `<- e ee s es`,
/// `-> s se`) and returns their transport states.
fn transport_pair(suite: &str) -> anyhow::Result<(TransportState, TransportState)> {
    let params: snow::params::NoiseParams = suite.parse()?;
    let ik = Builder::new(params.clone()).generate_keypair()?;
    let rk = Builder::new(params.clone()).generate_keypair()?;
    let mut init = Builder::new(params.clone())
        .local_private_key(&ik.private)?
        .build_initiator()?;
    let mut resp = Builder::new(params)
        .local_private_key(&rk.private)?
        .build_responder()?;
    let mut msg = vec![0u8; MESSAGE_LEN];
    let mut payload = vec![0u8; MESSAGE_LEN];
    let n = init.write_message(&[], &mut msg)?;
    resp.read_message(&msg[..n], &mut payload)?;
    let n = resp.write_message(&[], &mut msg)?;
    init.read_message(&msg[..n], &mut payload)?;
    let n = init.write_message(&[], &mut msg)?;
    resp.read_message(&msg[..n], &mut payload)?;
    Ok((init.into_transport_mode()?, resp.into_transport_mode()?))
}

/// Encrypts on `tx` and decrypts on `rx` for about `time`; returns plaintext MB/s.
fn measure(
    tx: &mut TransportState,
    rx: &mut TransportState,
    time: Duration,
) -> anyhow::Result<f64> {
    let plain = vec![0x5au8; PLAINTEXT_LEN];
    let mut msg = vec![0u8; MESSAGE_LEN];
    let mut out = vec![0u8; MESSAGE_LEN];
    let start = Instant::now();
    let mut bytes = 0u64;
    while start.elapsed() < time {
        for _ in 0..8 {
            let n = tx.write_message(black_box(&plain), &mut msg)?;
            let m = rx.read_message(&msg[..n], &mut out)?;
            anyhow::ensure!(
                m == PLAINTEXT_LEN,
                "decrypted {m} bytes, sent {PLAINTEXT_LEN}"
            );
            black_box(&out);
            bytes += PLAINTEXT_LEN as u64;
        }
    }
    Ok(mb_per_s(bytes, start.elapsed().as_secs_f64()))
}

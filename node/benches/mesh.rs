//! `cargo bench -p warren --bench mesh [-- SECTION]`: mesh figures printed beside a baseline
//! measured in the same run, because the machine is shared and noisy. Each figure is the
//! median of a few interleaved repeats; ratios are taken per repeat, then their median.
//!
//! Sections (a filter argument runs those whose name contains it):
//! - `cipher`: Noise transport encrypt+decrypt, AES-GCM against ChaCha20-Poly1305 (snow).
//! - `throughput`: one stream over 1 and 2 hops (sealed end to end) against raw loopback TCP.
//! - `ping`: probe round trips over 1 and 2 hops against a TCP echo.
//! - `session`: the first stream open to a node (end-to-end session setup) and later opens
//!   (session reused) over 2 hops, against a probe round trip.
//! - `rss`: resident memory of an idle `warren node` with 3 links.
//! - `websocket`: one stream over a `ws://` link against one over a TCP link, same peer.
//!
//! Relays and sinks run in their own processes: this binary re-executes itself as a node when
//! `WARREN_BENCH_NODE` is set (see `nodes.rs`); `rss` runs the real `warren` binary.
//!
//! The sections live in `benches/mesh/`, named by `#[path]` because a file directly in
//! `benches/` would become a bench target of its own.

#[path = "mesh/cipher.rs"]
mod cipher;
#[path = "mesh/nodes.rs"]
mod nodes;
#[path = "mesh/ping.rs"]
mod ping;
#[path = "mesh/rss.rs"]
mod rss;
#[path = "common/sections.rs"]
mod sections;
#[path = "mesh/session.rs"]
mod session;
#[path = "mesh/stats.rs"]
mod stats;
#[path = "mesh/throughput.rs"]
mod throughput;
#[path = "mesh/websocket.rs"]
mod websocket;

use std::process::ExitCode;

/// A section: its name (the filter matches it) and its body.
type Section = (&'static str, fn() -> anyhow::Result<()>);

const SECTIONS: [Section; 6] = [
    ("cipher", cipher::run),
    ("throughput", throughput::run),
    ("ping", ping::run),
    ("session", session::run),
    ("rss", rss::run),
    ("websocket", websocket::run),
];

fn main() -> ExitCode {
    if nodes::is_child() {
        return nodes::child_main();
    }
    let Some(chosen) = sections::choose(&SECTIONS) else {
        return ExitCode::FAILURE;
    };
    sections::run(chosen, |run| run())
}

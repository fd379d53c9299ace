//! `warren top`: a node's key metrics, live in the terminal. It reads the node's `/metrics`
//! endpoint (`warren node --metrics ADDR`) with a plain HTTP/1.0 GET, so it needs nothing
//! but the address, and shows what a node is doing: links and their traffic, flaps,
//! refusals, units running and finished, queue, memory.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::EndpointAddr;

/// Largest `/metrics` response read.
const MAX_RESPONSE: u64 = 16 << 20;

/// Flags of `warren top`.
#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// The node's metrics address, as given to `warren node --metrics`.
    #[arg(value_name = "ADDR")]
    pub addr: EndpointAddr,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 2.0)]
    pub interval: f64,
    /// Print one screen and exit (for scripts and tests).
    #[arg(long)]
    pub once: bool,
}

/// One sample: metric name with its labels, and value.
type Samples = BTreeMap<String, f64>;

pub(super) async fn run(args: TopArgs) -> anyhow::Result<ExitCode> {
    let interval = Duration::try_from_secs_f64(args.interval)
        .ok()
        .filter(|d| !d.is_zero())
        .context("--interval must be a positive number of seconds")?;
    let mut previous: Option<Samples> = None;
    loop {
        let samples = parse(&scrape(&args.addr).await?);
        let screen = render(&args.addr, &samples, previous.as_ref(), interval);
        if args.once {
            print!("{screen}");
            return Ok(ExitCode::SUCCESS);
        }
        // Clear the screen and home the cursor, as top does.
        print!("\x1b[2J\x1b[H{screen}");
        previous = Some(samples);
        tokio::time::sleep(interval).await;
    }
}

/// `GET /metrics` from `addr`; the body.
async fn scrape(addr: &EndpointAddr) -> anyhow::Result<String> {
    let what = format!("http://{addr}/metrics");
    let fetch = async {
        let mut socket = tokio::net::TcpStream::connect((addr.host.as_str(), addr.port)).await?;
        let request = format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        socket.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        socket.take(MAX_RESPONSE).read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .with_context(|| format!("{what}: timed out"))?
        .with_context(|| format!("{what} (is the node running with --metrics {addr}?)"))?;
    let text = String::from_utf8_lossy(&response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("{what}: not an HTTP response");
    };
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("{what}: {}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_owned())
}

/// The samples of an OpenMetrics text body (comments skipped).
fn parse(body: &str) -> Samples {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Sum of the samples of `name` (any labels).
fn total(samples: &Samples, name: &str) -> f64 {
    samples
        .iter()
        .filter(|(k, _)| *k == name || k.starts_with(&format!("{name}{{")))
        .map(|(_, v)| v)
        .sum()
}

/// `name`'s samples by the value of label `label`.
fn by_label(samples: &Samples, name: &str, label: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let prefix = format!("{name}{{");
    for (key, value) in samples.iter().filter(|(k, _)| k.starts_with(&prefix)) {
        let pattern = format!("{label}=\"");
        if let Some(start) = key.find(&pattern) {
            let rest = &key[start + pattern.len()..];
            let end = rest.find('"').unwrap_or(rest.len());
            *out.entry(rest[..end].to_owned()).or_default() += value;
        }
    }
    out
}

fn render(
    addr: &EndpointAddr,
    now: &Samples,
    before: Option<&Samples>,
    interval: Duration,
) -> String {
    let rate = |name: &str, label: &str, key: &str| -> f64 {
        let Some(before) = before else { return 0.0 };
        let was = by_label(before, name, label)
            .get(key)
            .copied()
            .unwrap_or(0.0);
        let is = by_label(now, name, label).get(key).copied().unwrap_or(0.0);
        (is - was).max(0.0) / interval.as_secs_f64()
    };
    let mut out = format!(
        "warren top  {addr}   links up {}  routes {}  known nodes {}  rss {:.1} MiB  fds {}\n\n",
        total(now, "warren_links_up"),
        total(now, "warren_routes"),
        total(now, "warren_known_nodes"),
        total(now, "warren_process_resident_memory_bytes") / f64::from(1 << 20),
        total(now, "warren_process_open_fds"),
    );
    out.push_str("PEER                 RECEIVED      SENT   RX/s      TX/s      UPS  FLAPS\n");
    let rx = by_label(now, "warren_link_received_bytes_total", "peer");
    let tx = by_label(now, "warren_link_sent_bytes_total", "peer");
    let ups = by_label(now, "warren_link_ups_total", "peer");
    let flaps = by_label(now, "warren_link_flaps_total", "peer");
    for (peer, received) in &rx {
        let sent = tx.get(peer).copied().unwrap_or(0.0);
        out.push_str(&format!(
            "{peer:<20} {:>9} {:>9} {:>9} {:>9} {:>4} {:>6}\n",
            human(*received),
            human(sent),
            human(rate("warren_link_received_bytes_total", "peer", peer)),
            human(rate("warren_link_sent_bytes_total", "peer", peer)),
            ups.get(peer).copied().unwrap_or(0.0),
            flaps.get(peer).copied().unwrap_or(0.0),
        ));
    }
    out.push_str(&format!(
        "\nhandshake failures {}  refusals {}\n\nWORK TYPE            RUNNING  STARTED  FINISHED\n",
        total(now, "warren_handshake_failures_total"),
        total(now, "warren_link_refusals_total"),
    ));
    let running = by_label(now, "warren_units_running", "work_type");
    let started = by_label(now, "warren_units_started_total", "work_type");
    let finished = by_label(now, "warren_units_finished_total", "work_type");
    for (work_type, n) in &started {
        out.push_str(&format!(
            "{work_type:<20} {:>7} {n:>8} {:>9}\n",
            running.get(work_type).copied().unwrap_or(0.0),
            finished.get(work_type).copied().unwrap_or(0.0),
        ));
    }
    out.push_str(&format!(
        "\nqueue {}  payload {}  results {}  compiles {}  cache hits {}\n",
        total(now, "warren_work_queue_depth"),
        human(total(now, "warren_payload_bytes_total")),
        human(total(now, "warren_result_bytes_total")),
        total(now, "warren_component_compiles_total"),
        total(now, "warren_component_cache_hits_total"),
    ));
    out
}

/// Bytes as B, KiB, MiB or GiB.
fn human(bytes: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0}{}", units[unit])
    } else {
        format!("{value:.1}{}", units[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_group_samples_by_label() {
        let body = "# TYPE warren_link_sent_bytes counter\n\
                    warren_link_sent_bytes_total{peer=\"a\"} 2048\n\
                    warren_link_sent_bytes_total{peer=\"b\"} 1\n\
                    warren_links_up 2\n# EOF\n";
        let samples = parse(body);
        assert_eq!(total(&samples, "warren_links_up"), 2.0);
        assert_eq!(total(&samples, "warren_link_sent_bytes_total"), 2049.0);
        let by_peer = by_label(&samples, "warren_link_sent_bytes_total", "peer");
        assert_eq!(by_peer["a"], 2048.0);
        assert_eq!(human(2048.0), "2.0KiB");
    }
}

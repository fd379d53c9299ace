//! `/metrics` on a real node while it runs a job submitted from another node: the unit and
//! byte counters move, `warren top` shows them, and the exposition parses with the
//! reference parser (Python's `prometheus_client`, OpenMetrics and Prometheus text).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use crate::run::venv_bin;
use crate::support::{Mesh, peer, trust, wait_for, warren};

/// The metrics address node `index` logged at start (`--metrics 127.0.0.1:0`).
pub fn metrics_addr(mesh: &Mesh, index: usize) -> String {
    wait_for("the node to log its metrics address", || {
        let log = mesh.node(index).log_text();
        let at = log.find("metrics=Some(")? + "metrics=Some(".len();
        let end = log[at..].find(')')?;
        Some(log[at..at + end].to_owned())
    })
}

/// `GET /metrics` over plain HTTP/1.1; the status line and body.
pub fn get(addr: &str, path: &str) -> (String, String) {
    let mut socket = TcpStream::connect(addr).unwrap();
    write!(
        socket,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    socket.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// The value of the sample written exactly as `series` (name and labels).
pub fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_during_a_remote_job_move_and_parse_as_openmetrics_and_prometheus_text() {
    let mut mesh = Mesh::new();
    let (a, b) = (mesh.identity("a"), mesh.identity("b"));
    // The job waits for a file the test creates, so it is surely running when scraped.
    let gate = mesh.path("gate");
    let script = mesh.path("gated-cat.sh");
    let wait = format!("while [ ! -e '{}' ]; do sleep 0.05; done", gate.display());
    std::fs::write(&script, format!("#!/bin/sh\n{wait}\nexec cat\n")).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let metrics_flags = ["--metrics".to_owned(), "127.0.0.1:0".to_owned()];
    let work_type = [
        "--work-type".to_owned(),
        format!("gated={}", script.display()),
        "--allow-work".to_owned(),
        "gated=a".to_owned(),
    ];
    let ib = mesh.start(
        &b,
        &[trust(&[&a]), work_type.to_vec(), metrics_flags.to_vec()].concat(),
    );
    let b_addr = mesh.node(ib).addr().to_owned();
    let ia = mesh.start(&a, &[trust(&[&b]), peer(&b_addr)].concat());
    mesh.wait_route(ia, "b", None);
    wait_for("b to offer the gated work type", || {
        let status = mesh.status(ib)?;
        (status["WorkTypes"].to_string().contains("gated")).then_some(())
    });
    let addr = metrics_addr(&mesh, ib);

    let (status, before) = get(&addr, "/metrics");
    assert!(status.contains("200"), "{status}");
    let rx = "warren_link_received_bytes_total{peer=\"a\"}";
    let rx_before = sample(&before, rx).unwrap_or(0.0);
    assert_eq!(sample(&before, "warren_links_up"), Some(1.0), "{before}");

    let payload = mesh.path("payload");
    std::fs::write(&payload, vec![b'x'; 300_000]).unwrap();
    let socket = mesh.node(ia).socket.display().to_string();
    let warren_bin = crate::support::warren_bin();
    let mut submit = Command::new(&warren_bin)
        .args([
            "work", "submit", "gated", "--node", "b", "-f", "--socket", &socket,
        ])
        .arg("--payload")
        .arg(&payload)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let running = "warren_units_running{work_type=\"gated\"}";
    let during = wait_for("the unit to run on b", || {
        let (_, body) = get(&addr, "/metrics");
        (sample(&body, running) == Some(1.0)).then_some(body)
    });
    assert_eq!(
        sample(&during, "warren_units_started_total{work_type=\"gated\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&during, "warren_payload_bytes_total"),
        Some(300_000.0),
        "{during}"
    );
    assert!(
        sample(&during, rx).unwrap() > rx_before + 300_000.0,
        "{during}"
    );
    let top = warren(&["top", &addr, "--once"]);
    assert!(top.status.success(), "{top:?}");
    let screen = String::from_utf8_lossy(&top.stdout).into_owned();
    assert!(screen.contains("links up 1"), "{screen}");
    assert!(
        screen
            .lines()
            .any(|l| l.starts_with("gated") && l.split_whitespace().nth(1) == Some("1")),
        "{screen}"
    );

    std::fs::write(&gate, "").unwrap();
    let mut output = Vec::new();
    submit
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut output)
        .unwrap();
    assert!(submit.wait().unwrap().success());
    assert_eq!(output.len(), 300_000);
    let after = wait_for("the unit to be counted finished", || {
        let (_, body) = get(&addr, "/metrics");
        sample(
            &body,
            "warren_units_finished_total{work_type=\"gated\",state=\"Succeeded\"}",
        )
        .map(|_| body)
    });
    assert_eq!(sample(&after, running), Some(0.0));
    assert_eq!(
        sample(&after, "warren_result_bytes_total"),
        Some(300_000.0),
        "{after}"
    );
    assert_eq!(
        sample(
            &after,
            "warren_job_duration_seconds_count{work_type=\"gated\"}"
        ),
        Some(1.0)
    );
    assert!(sample(&after, "warren_link_sent_bytes_total{peer=\"a\"}").unwrap() > 300_000.0);
    assert_eq!(sample(&after, "warren_routes"), Some(1.0), "{after}");
    // The peer's advert arrived (at link-up and in the session handshake) and was stored.
    assert!(
        sample(&after, "warren_adverts_received_total").unwrap() >= 1.0,
        "{after}"
    );
    assert!(
        sample(&after, "warren_adverts_stored_total").unwrap() >= 1.0,
        "{after}"
    );
    assert!(sample(&after, "warren_process_resident_memory_bytes").unwrap() > 1e6);

    // The reference parsers accept the whole exposition and see the families.
    let check = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om
from prometheus_client.parser import text_string_to_metric_families as prom
text = sys.stdin.read()
names = sorted(f.name for f in om(text))
prom_names = sorted(f.name for f in prom(text))
print(" ".join(names))
print(" ".join(prom_names))
"#;
    let mut python = Command::new(venv_bin().join("python"))
        .args(["-c", check])
        .stdin(std::process::Stdio::piped())
        .output_with_stdin(after.as_bytes());
    let parsed = python.remove(0);
    assert!(parsed.status.success(), "{parsed:?}\n{after}");
    let out = String::from_utf8_lossy(&parsed.stdout).into_owned();
    let mut lines = out.lines();
    let (om, prom) = (lines.next().unwrap(), lines.next().unwrap());
    for family in [
        "warren_links_up",
        "warren_link_received_bytes",
        "warren_units_finished",
        "warren_job_duration_seconds",
        "warren_payload_bytes",
        "warren_process_open_fds",
    ] {
        assert!(
            om.split(' ').any(|f| f == family),
            "OpenMetrics parser: {family} not in {om}"
        );
        assert!(
            prom.split(' ').any(|f| f.starts_with(family)),
            "Prometheus parser: {family} not in {prom}"
        );
    }

    let (status, _) = get(&addr, "/other");
    assert!(status.contains("404"), "{status}");
}

/// Runs a command with `input` on its stdin; its output.
trait OutputWithStdin {
    fn output_with_stdin(&mut self, input: &[u8]) -> Vec<std::process::Output>;
}

impl OutputWithStdin for Command {
    fn output_with_stdin(&mut self, input: &[u8]) -> Vec<std::process::Output> {
        let mut child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        vec![child.wait_with_output().unwrap()]
    }
}

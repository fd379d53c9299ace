//! Human-readable text for control replies, as the `warren` CLI prints them.
//!
//! Owns layout only (aligned columns, units); pure functions of the typed replies. Every
//! value in a reply may come from another node, so each is printed through
//! [`crate::terminal::one_line`]: no escape sequence, no line break, whatever a peer advertises.

use std::fmt::Write as _;

use super::goformat::go_duration_string;
use std::collections::BTreeMap;

use super::reply::{Advertisement, PingReply, StatusReport, TraceHop, UnitStatusReply};
use crate::id::NodeId;
use crate::terminal::one_line;

/// The node's status as aligned sections: identity, links, routes, known nodes with their
/// links, the services each node offers, and the work types each node accepts.
pub fn render_status(status: &StatusReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Node ID:      {}", one_line(status.node_id.as_str()));
    let _ = writeln!(out, "Version:      {}", one_line(&status.version));
    let _ = writeln!(out, "CPUs:         {}", status.system_cpu_count);
    let _ = writeln!(out, "Memory:       {} MiB", status.system_memory_mib);
    let _ = writeln!(out, "Config:       generation {}", status.config_generation);

    let links = status
        .connections
        .iter()
        .map(|c| vec![c.node_id.to_string(), c.cost.to_string()])
        .collect();
    section(&mut out, "Links", &["Node", "Cost"], links);

    let routes = status
        .routing_table
        .iter()
        .map(|(dest, via)| vec![dest.to_string(), via.to_string()])
        .collect();
    section(&mut out, "Routes", &["Destination", "Via"], routes);

    let known = status
        .known_connection_costs
        .iter()
        .map(|(node, peers)| {
            let peers: Vec<String> = peers.iter().map(|(p, c)| format!("{p} ({c})")).collect();
            vec![node.to_string(), peers.join(", ")]
        })
        .collect();
    section(&mut out, "Known nodes", &["Node", "Links (cost)"], known);

    let services = status.advertisements.iter().map(service_row).collect();
    let headers = ["Node", "Service", "Type", "Advertised", "Tags"];
    section(&mut out, "Services", &headers, services);

    let work = status.advertisements.iter().filter_map(work_row).collect();
    section(&mut out, "Work types", &["Node", "Work types"], work);
    if !status.work_types.is_empty() {
        let headers = ["Work type", "Handler", "Component", "Sha256", "Signer"];
        let rows = status.work_types.iter().map(handler_row).collect();
        section(&mut out, "This node's handlers", &headers, rows);
        let rows: Vec<Vec<String>> = status.work_types.iter().filter_map(limits_row).collect();
        if !rows.is_empty() {
            let headers = [
                "Work type",
                "Memory",
                "Deadline",
                "Output",
                "Descriptors",
                "Job dir",
                "Arguments",
            ];
            section(&mut out, "Limits per job", &headers, rows);
        }
    }
    if !status.containment.is_empty() {
        let _ = writeln!(out, "\nJob containment: {}", status.containment);
        let rows = status
            .work_types
            .iter()
            .filter(|w| !w.program_limits.is_empty())
            .map(|w| vec![w.work_type.clone(), w.program_limits.clone()])
            .collect();
        section(&mut out, "Program limits", &["Work type", "Limits"], rows);
    }
    out
}

/// One work type's limits: sizes in MiB, the job-directory quota as bytes and files, and
/// each restricted program's arguments.
fn limits_row(w: &crate::control::reply::WorkTypeStatus) -> Option<Vec<String>> {
    let l = w.limits.as_ref()?;
    let mib = |bytes: u64| format!("{} MiB", bytes >> 20);
    let descriptors = l
        .descriptors
        .map_or_else(|| "no cap".to_owned(), |n| n.to_string());
    let disk = match (l.disk_bytes, l.disk_inodes) {
        (Some(bytes), Some(inodes)) => format!("{}, {inodes} files", mib(bytes)),
        _ => "no quota".to_owned(),
    };
    let args: Vec<String> = (l.arguments.iter())
        .map(|(program, args)| format!("{program}: {args}"))
        .collect();
    Some(vec![
        w.work_type.clone(),
        mib(l.memory_bytes),
        format!("{}s", l.deadline_seconds),
        mib(l.output_bytes),
        descriptors,
        disk,
        if args.is_empty() {
            "any".to_owned()
        } else {
            args.join("; ")
        },
    ])
}

fn handler_row(w: &crate::control::reply::WorkTypeStatus) -> Vec<String> {
    let short: String = w.sha256.chars().take(12).collect();
    vec![
        w.work_type.clone(),
        w.handler.clone(),
        format!("{} {}", w.component, w.version),
        short,
        w.signer.clone(),
    ]
}

fn service_row(ad: &Advertisement) -> Vec<String> {
    let kind = match ad.conn_type {
        0 => "datagram".to_owned(),
        1 => "stream".to_owned(),
        2 => "stream+tls".to_owned(),
        other => other.to_string(),
    };
    let tags = ad.tags.as_ref().map_or_else(String::new, |tags| {
        let pairs: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        pairs.join(", ")
    });
    vec![
        ad.node_id.to_string(),
        ad.service.clone(),
        kind,
        ad.time.clone(),
        tags,
    ]
}

fn work_row(ad: &Advertisement) -> Option<Vec<String>> {
    let commands = ad.work_commands.as_ref().filter(|c| !c.is_empty())?;
    let types: Vec<String> = commands
        .iter()
        .map(|c| {
            if c.secure {
                format!("{} (signed)", c.work_type)
            } else {
                c.work_type.clone()
            }
        })
        .collect();
    Some(vec![ad.node_id.to_string(), types.join(", ")])
}

/// Appends a titled table with columns padded to their widest cell.
fn section(out: &mut String, title: &str, headers: &[&str], rows: Vec<Vec<String>>) {
    let _ = writeln!(out, "\n{title}:");
    if rows.is_empty() {
        out.push_str("  (none)\n");
        return;
    }
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|row| row.iter().map(|cell| one_line(cell).into_owned()).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::from(" ");
        for (cell, width) in row.iter().zip(&widths) {
            let pad = width - cell.chars().count();
            let _ = write!(line, " {cell}{:pad$} ", "");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

/// One ping result: `Reply from node3 in 1.234ms` or `Ping to node3 failed: <why>`.
pub fn render_ping_line(target: &NodeId, reply: &PingReply) -> String {
    match reply {
        PingReply::Success { from, time } => {
            format!("Reply from {from} in {}", go_duration_string(*time))
        }
        PingReply::Failure { error } => format!("Ping to {target} failed: {}", one_line(error)),
    }
}

/// A traceroute, one line per hop: `<n>: <node> in <time>`, with the error on the hop
/// where the trace stopped.
pub fn render_traceroute(hops: &[TraceHop]) -> String {
    if hops.is_empty() {
        return "No hops reported\n".to_owned();
    }
    let mut out = String::new();
    for (i, hop) in hops.iter().enumerate() {
        let from = hop.from.as_ref().map_or("*", NodeId::as_str);
        let _ = write!(
            out,
            "{i}: {} in {}",
            one_line(from),
            go_duration_string(hop.time)
        );
        if let Some(error) = &hop.error {
            let _ = write!(out, ": {}", one_line(error));
        }
        out.push('\n');
    }
    out
}

/// Work units as a table: id, state, work type, output size and detail.
pub fn render_work_list(units: &BTreeMap<String, UnitStatusReply>) -> String {
    let rows = units
        .iter()
        .map(|(id, s)| {
            vec![
                id.clone(),
                s.state_name.clone(),
                s.work_type.clone(),
                s.stdout_size.to_string(),
                s.detail.clone(),
            ]
        })
        .collect();
    let headers = ["Unit", "State", "Work type", "Output bytes", "Detail"];
    let mut out = String::new();
    section(&mut out, "Work units", &headers, rows);
    out.trim_start().to_owned()
}

/// One unit's status, a field per line; extra data only when there is some.
pub fn render_work_status(unit: &str, status: &UnitStatusReply) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Unit:         {}", one_line(unit));
    let _ = writeln!(
        out,
        "State:        {} ({})",
        one_line(&status.state_name),
        status.state
    );
    let _ = writeln!(out, "Work type:    {}", one_line(&status.work_type));
    let _ = writeln!(out, "Output:       {} bytes", status.stdout_size);
    let _ = writeln!(out, "Detail:       {}", one_line(&status.detail));
    if !status.extra_data.is_null() {
        let extra = status.extra_data.to_string();
        let _ = writeln!(out, "Extra data:   {}", one_line(&extra));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::control::fake::sample_report;
    use crate::control::reply::WorkCommand;

    fn node(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    #[test]
    fn status_is_aligned_and_complete() {
        let text = render_status(&sample_report());
        let want = "\
Node ID:      a
Version:      0.1.0
CPUs:         2
Memory:       1024 MiB
Config:       generation 0

Links:
  Node  Cost
  b     1

Routes:
  Destination  Via
  b            b

Known nodes:
  Node  Links (cost)
  a     b (1)
  b     a (2.5)

Services:
  Node  Service  Type    Advertised                Tags
  a     control  stream  2026-11-28T09:00:00.123Z  type=Control Service

Work types:
  Node  Work types
  a     echo
";
        assert_eq!(text, want);
    }

    #[test]
    fn each_work_type_shows_its_job_limits() {
        use crate::control::reply::{JobLimits, WorkTypeStatus};
        let mut report = sample_report();
        report.work_types.push(WorkTypeStatus {
            work_type: "cat".into(),
            handler: "command".into(),
            component: "guest-runner".into(),
            version: "0.1.0".into(),
            sha256: "ab".repeat(32),
            signer: "built-in".into(),
            limits: Some(JobLimits {
                memory_bytes: 64 << 20,
                deadline_seconds: 60,
                output_bytes: 8 << 30,
                descriptors: Some(192),
                resources: 768,
                disk_bytes: Some(4 << 30),
                disk_inodes: Some(200_000),
                arguments: [("cat".to_owned(), "-n then {job-path}".to_owned())].into(),
            }),
            program_limits: String::new(),
        });
        let text = render_status(&report);
        let want = "\nLimits per job:
  Work type  Memory  Deadline  Output    Descriptors  Job dir                 Arguments
  cat        64 MiB  60s       8192 MiB  192          4096 MiB, 200000 files  cat: -n then {job-path}
";
        assert!(text.ends_with(want), "{text}");
        // A node that predates limits shows no such section.
        report.work_types[0].limits = None;
        assert!(!render_status(&report).contains("Limits per job"));
    }

    #[test]
    fn empty_sections_say_none() {
        let mut report = sample_report();
        report.connections.clear();
        report.advertisements.clear();
        let text = render_status(&report);
        assert!(text.contains("Links:\n  (none)\n"));
        assert!(text.contains("Work types:\n  (none)\n"));
    }

    #[test]
    fn hostile_advert_and_unit_text_prints_without_escapes_or_forged_lines() {
        let hostile = "\x1b]0;owned\x07echo\x1b[2J\x1b[31m\nz  forged-row";
        let mut report = sample_report();
        report.advertisements[0].work_commands = Some(vec![WorkCommand {
            work_type: hostile.into(),
            secure: false,
        }]);
        report.advertisements[0].service = "ctl\x1b[6n".into();
        let text = render_status(&report);
        assert!(!text.contains('\x1b'), "{text:?}");
        assert!(text.contains("  a     echo z  forged-row\n"), "{text}");
        assert!(!text.contains("\nz  forged-row"), "{text}");

        let status = UnitStatusReply {
            detail: "exit \x1bP+q544e\x1b\\1\u{9b}".into(),
            extra_data: serde_json::json!({"x": "\u{9d}0;t\u{9c}"}),
            state: 3,
            state_name: "Failed".into(),
            stdout_size: 0,
            work_type: hostile.into(),
        };
        let units = BTreeMap::from([("Ab3dEf9h".to_owned(), status.clone())]);
        for text in [
            render_work_list(&units),
            render_work_status("Ab3dEf9h", &status),
        ] {
            assert!(!text.contains('\x1b'), "{text:?}");
            assert!(
                !text.chars().any(|c| ('\u{80}'..='\u{9f}').contains(&c)),
                "{text:?}"
            );
            assert!(!text.contains("\nz "), "{text}");
        }
    }

    #[test]
    fn work_units_render_as_table_and_fields() {
        let status = UnitStatusReply {
            detail: "exit status 0".into(),
            extra_data: serde_json::Value::Null,
            state: 2,
            state_name: "Succeeded".into(),
            stdout_size: 12,
            work_type: "echo".into(),
        };
        let units = BTreeMap::from([("Ab3dEf9h".to_owned(), status.clone())]);
        assert_eq!(
            render_work_list(&units),
            "\
Work units:
  Unit      State      Work type  Output bytes  Detail
  Ab3dEf9h  Succeeded  echo       12            exit status 0
"
        );
        assert_eq!(
            render_work_list(&BTreeMap::new()),
            "Work units:\n  (none)\n"
        );
        let text = render_work_status("Ab3dEf9h", &status);
        assert!(text.starts_with("Unit:         Ab3dEf9h\nState:        Succeeded (2)\n"));
        assert!(!text.contains("Extra data"));
    }

    #[test]
    fn ping_and_traceroute_lines() {
        let ok = PingReply::Success {
            from: node("node3"),
            time: Duration::from_nanos(1_234_000),
        };
        assert_eq!(
            render_ping_line(&node("node3"), &ok),
            "Reply from node3 in 1.234ms"
        );
        let failed = PingReply::Failure {
            error: "timeout".into(),
        };
        assert_eq!(
            render_ping_line(&node("node3"), &failed),
            "Ping to node3 failed: timeout"
        );
        let hops = [
            TraceHop {
                from: Some(node("b")),
                time: Duration::from_micros(512),
                error: None,
            },
            TraceHop {
                from: None,
                time: Duration::ZERO,
                error: Some("no route to node".into()),
            },
        ];
        assert_eq!(
            render_traceroute(&hops),
            "0: b in 512µs\n1: * in 0s: no route to node\n"
        );
    }
}

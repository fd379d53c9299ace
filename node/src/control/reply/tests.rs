//! The replies byte for byte as Receptor writes them: greeting and errors, status (fields,
//! nulls, round trip), ping, traceroute, and Go's HTML escaping.

use super::*;
use crate::control::fake::sample_report;

fn node(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn status(fields: Option<&[&str]>) -> String {
    Reply::Status(StatusReply {
        report: sample_report(),
        requested_fields: fields.map(|f| f.iter().map(|s| s.to_string()).collect()),
    })
    .encode()
}

#[test]
fn greeting_and_errors_are_exact() {
    assert_eq!(greeting(&node("n1")), "Receptor Control, node n1\n");
    assert_eq!(error_line("boom"), "ERROR: boom\n");
    let unknown = ParseError::UnknownCommand {
        command: "x".into(),
    };
    assert_eq!(
        Reply::Rejected(unknown).encode(),
        "ERROR: Unknown command\n"
    );
    let bad = ParseError::BadJson {
        message: "EOF while parsing".into(),
    };
    assert_eq!(
        Reply::Rejected(bad).encode(),
        "ERROR: EOF while parsing\nERROR: Unknown command\n"
    );
}

#[test]
fn status_fields_constant_is_sorted() {
    assert!(STATUS_FIELDS.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn status_is_byte_exact() {
    let want = concat!(
        r#"{"Advertisements":[{"NodeID":"a","Service":"control","#,
        r#""Time":"2026-11-28T09:00:00.123Z","ConnType":1,"#,
        r#""Tags":{"type":"Control Service"},"#,
        r#""WorkCommands":[{"WorkType":"echo","Secure":false}]}],"#,
        r#""Connections":[{"NodeID":"b","Cost":1}],"#,
        r#""KnownConnectionCosts":{"a":{"b":1},"b":{"a":2.5}},"#,
        r#""NodeID":"a","RoutingTable":{"b":"b"},"SystemCPUCount":2,"#,
        r#""SystemMemoryMiB":1024,"Version":"0.1.0"}"#,
        "\n"
    );
    assert_eq!(status(None), want);
}

#[test]
fn status_nulls_missing_tags_and_work_commands() {
    let mut report = sample_report();
    report.advertisements[0].tags = None;
    report.advertisements[0].work_commands = None;
    let reply = Reply::Status(StatusReply {
        report,
        requested_fields: Some(vec!["Advertisements".into()]),
    });
    assert!(
        reply
            .encode()
            .contains(r#""ConnType":1,"Tags":null,"WorkCommands":null}"#)
    );
}

#[test]
fn status_honours_requested_fields() {
    assert_eq!(status(Some(&["Version"])), "{\"Version\":\"0.1.0\"}\n");
    assert_eq!(
        status(Some(&["Version", "Bogus", "NodeID", "Version"])),
        "{\"NodeID\":\"a\",\"Version\":\"0.1.0\"}\n"
    );
    assert_eq!(status(Some(&[])), "{}\n");
}

#[test]
fn status_round_trips() {
    let line = status(None);
    let back: StatusReport = serde_json::from_str(&line).unwrap();
    assert_eq!(back, sample_report());
}

#[test]
fn ping_replies_are_exact() {
    let ok = PingReply::Success {
        from: node("n3"),
        time: Duration::from_nanos(1_234_567),
    };
    let line = Reply::Ping(ok.clone()).encode();
    assert_eq!(
        line,
        "{\"From\":\"n3\",\"Success\":true,\"Time\":1234567,\"TimeStr\":\"1.234567ms\"}\n"
    );
    assert_eq!(serde_json::from_str::<PingReply>(&line).unwrap(), ok);

    let failed = PingReply::Failure {
        error: "timeout".into(),
    };
    let line = Reply::Ping(failed.clone()).encode();
    assert_eq!(line, "{\"Error\":\"timeout\",\"Success\":false}\n");
    assert_eq!(serde_json::from_str::<PingReply>(&line).unwrap(), failed);
}

#[test]
fn traceroute_keys_sort_as_strings() {
    let hop = |i: u64| TraceHop {
        from: Some(node(&format!("n{i}"))),
        time: Duration::from_micros(i),
        error: None,
    };
    let mut hops: Vec<TraceHop> = (0..11).map(hop).collect();
    hops[10].from = None;
    hops[10].error = Some("no route to node".into());
    let trace = TracerouteReply { hops };
    let line = Reply::Traceroute(trace.clone()).encode();
    assert!(line.starts_with(
        r#"{"0":{"From":"n0","Time":0,"TimeStr":"0s"},"1":{"From":"n1","Time":1000,"TimeStr":"1µs"},"10":{"Error":"no route to node","From":"","Time":10000,"TimeStr":"10µs"},"2":"#
    ));
    assert_eq!(
        serde_json::from_str::<TracerouteReply>(&line).unwrap(),
        trace
    );
}

#[test]
fn escapes_html_like_go() {
    let reply = Reply::Ping(PingReply::Failure {
        error: "a <b> & c".into(),
    });
    assert_eq!(
        reply.encode(),
        "{\"Error\":\"a \\u003cb\\u003e \\u0026 c\",\"Success\":false}\n"
    );
}

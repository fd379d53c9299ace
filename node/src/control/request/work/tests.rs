//! Tests of the `work` request parser: Receptor's forms and error texts, and round trips.

use super::*;

fn unit(s: &str) -> UnitId {
    s.parse().unwrap()
}

fn json(text: &str) -> Result<WorkRequest, WorkParseError> {
    let value: Value = serde_json::from_str(text).unwrap();
    parse_json(value.as_object().unwrap())
}

fn text_err(params: &str) -> String {
    parse_text(params).unwrap_err().to_string()
}

fn json_err(text: &str) -> String {
    json(text).unwrap_err().to_string()
}

#[test]
fn parses_text_submit_with_params_after_the_work_type() {
    let req = parse_text("submit localhost echo -v  --x y").unwrap();
    let WorkRequest::Submit {
        node,
        work_type,
        params,
        ttl,
        signwork,
        ..
    } = req
    else {
        panic!("{req:?}")
    };
    assert_eq!((node.as_str(), work_type.as_str()), ("localhost", "echo"));
    assert_eq!(params["params"], "-v  --x y");
    assert_eq!(params.len(), 1);
    assert_eq!((ttl, signwork), (None, false));
    let req = parse_text("SUBMIT n2 cat").unwrap();
    assert!(matches!(req, WorkRequest::Submit { params, .. } if params.is_empty()));
}

#[test]
fn parses_text_unit_commands() {
    let id = unit("Ab3dEf9h");
    assert_eq!(
        parse_text("list").unwrap(),
        WorkRequest::List { unit: None }
    );
    assert_eq!(
        parse_text("list Ab3dEf9h").unwrap(),
        WorkRequest::List { unit: Some(id) }
    );
    assert_eq!(
        parse_text("status Ab3dEf9h").unwrap(),
        WorkRequest::Status { unit: id }
    );
    assert_eq!(
        parse_text("results Ab3dEf9h").unwrap(),
        WorkRequest::Results {
            unit: id,
            startpos: 0
        }
    );
    assert_eq!(
        parse_text("results Ab3dEf9h 42").unwrap(),
        WorkRequest::Results {
            unit: id,
            startpos: 42
        }
    );
    assert_eq!(
        parse_text("cancel Ab3dEf9h").unwrap(),
        WorkRequest::Cancel { unit: id }
    );
    assert_eq!(
        parse_text("release Ab3dEf9h").unwrap(),
        WorkRequest::Release {
            unit: id,
            force: false
        }
    );
    assert_eq!(
        parse_text("force-release Ab3dEf9h").unwrap(),
        WorkRequest::Release {
            unit: id,
            force: true
        }
    );
}

#[test]
fn text_errors_use_receptors_wording() {
    assert_eq!(text_err(""), "bad command");
    assert_eq!(text_err("frobnicate x"), "bad command");
    assert_eq!(
        text_err("submit localhost"),
        "work submit requires a target node and work type"
    );
    assert_eq!(text_err("status"), "work status requires a unit ID");
    assert_eq!(text_err("results"), "work results requires a unit ID");
    for sub in ["status", "cancel", "release", "force-release"] {
        assert_eq!(
            text_err(&format!("{sub} Ab3dEf9h extra")),
            format!("work {sub} does not take parameters after the unit ID")
        );
    }
    assert_eq!(
        text_err("results Ab3dEf9h 1 2"),
        "work results only takes a unit ID and optional start position"
    );
    assert!(text_err("results Ab3dEf9h x").starts_with("error converting start position"));
    assert_eq!(
        text_err("status nope"),
        r#"unknown work unit nope (unit id "nope" has 4 bytes, expected 8)"#
    );
}

#[test]
fn parses_json_submit_and_splits_control_keys_from_params() {
    let req = json(
        r#"{"command":"work","subcommand":"submit","node":"localhost","worktype":"echo",
            "params":"-x","secret_kube_config":"k","ttl":"1m","signwork":"true",
            "tlsclient":"c","signature":""}"#,
    )
    .unwrap();
    let want = WorkRequest::Submit {
        node: "localhost".into(),
        work_type: "echo".into(),
        params: BTreeMap::from([
            ("params".into(), "-x".into()),
            ("secret_kube_config".into(), "k".into()),
        ]),
        ttl: Some("1m".into()),
        signwork: true,
        tls_client: Some("c".into()),
        signature: None,
    };
    assert_eq!(req, want);
}

#[test]
fn json_errors_use_receptors_wording() {
    assert_eq!(
        json_err(r#"{"command":"work"}"#),
        "field subcommand missing"
    );
    assert_eq!(
        json_err(r#"{"command":"work","subcommand":1}"#),
        "field subcommand must be a string"
    );
    assert_eq!(
        json_err(r#"{"command":"work","subcommand":"bogus"}"#),
        "bad command"
    );
    assert_eq!(
        json_err(r#"{"command":"work","subcommand":"submit","node":"a","worktype":"e","n":5}"#),
        "submit parameters must all be strings and n is not"
    );
    assert_eq!(
        json_err(r#"{"command":"work","subcommand":"submit","worktype":"e"}"#),
        "field node missing"
    );
    assert_eq!(
        json_err(r#"{"command":"work","subcommand":"results","unitid":"Ab3dEf9h"}"#),
        "field startpos missing"
    );
    assert_eq!(
        json_err(r#"{"command":"work","subcommand":"results","unitid":"Ab3dEf9h","startpos":"1"}"#),
        r#"field startpos value "1" is not convertible to an int"#
    );
    assert_eq!(
        json_err(r#"{"command":"work","subcommand":"status","unitid":7}"#),
        "field unitid must be a string"
    );
    assert_eq!(
        json_err(r#"{"command":"work","subcommand":"cancel"}"#),
        "field unitid missing"
    );
}

#[test]
fn json_results_truncates_float_start_positions_like_go() {
    let req =
        json(r#"{"command":"work","subcommand":"RESULTS","unitid":"Ab3dEf9h","startpos":7.9}"#);
    assert_eq!(
        req.unwrap(),
        WorkRequest::Results {
            unit: unit("Ab3dEf9h"),
            startpos: 7
        }
    );
}

#[test]
fn json_form_round_trips() {
    let id = unit("Zz0Zz0Zz");
    let submit = WorkRequest::Submit {
        node: "n2".into(),
        work_type: "cat".into(),
        params: BTreeMap::from([("params".into(), "a b".into())]),
        ttl: Some("20s".into()),
        signwork: true,
        tls_client: None,
        signature: None,
    };
    for req in [
        submit,
        WorkRequest::List { unit: None },
        WorkRequest::List { unit: Some(id) },
        WorkRequest::Status { unit: id },
        WorkRequest::Results {
            unit: id,
            startpos: 9,
        },
        WorkRequest::Cancel { unit: id },
        WorkRequest::Release {
            unit: id,
            force: true,
        },
    ] {
        let value = req.to_json_value();
        assert_eq!(parse_json(value.as_object().unwrap()).unwrap(), req);
    }
}

//! A mesh authority as an operator uses it: `warren ca init|sign|revoke|show`, nodes started
//! with `--ca TOKEN --cert FILE` and no per-peer trust, and the certificates a node must
//! refuse — expired, revoked, issued for another key, or from an authority it does not trust.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::support::{Identity, Mesh, peer, trust, wait_for, warren, warren_exits};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A mesh authority made with `warren ca init`: its key file and public token.
struct Authority {
    key: PathBuf,
    token: String,
}

fn ca_init(mesh: &Mesh, name: &str) -> Authority {
    let key = mesh.path(&format!("{name}.key"));
    let out = warren(&["ca", "init", "--out", key.to_str().unwrap()]);
    assert!(out.status.success(), "ca init: {out:?}");
    let token = text(&out.stdout).trim().to_owned();
    assert!(
        token.starts_with("ed25519:"),
        "ca init prints the token: {token}"
    );
    Authority { key, token }
}

/// `warren ca sign` for `id` (its own key unless `key` names another token), with `extra`
/// flags (`--group`, `--expires`, `--serial`); returns the certificate file.
fn ca_sign(mesh: &Mesh, ca: &Authority, id: &Identity, key: &str, extra: &[&str]) -> PathBuf {
    let out_path = mesh.path(&format!("{}-{}.cert", id.id, extra.join("")));
    let mut args = vec![
        "ca",
        "sign",
        "--ca",
        ca.key.to_str().unwrap(),
        "--node",
        &id.id,
        "--key",
        key,
        "--out",
        out_path.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = warren(&args);
    assert!(out.status.success(), "ca sign: {out:?}");
    out_path
}

/// `--ca TOKEN --cert FILE`.
fn certified(ca: &Authority, cert: &std::path::Path) -> Vec<String> {
    vec![
        "--ca".into(),
        ca.token.clone(),
        "--cert".into(),
        cert.display().to_string(),
    ]
}

fn ping_ok(mesh: &Mesh, from: usize, to: &str) {
    let out = mesh.ctl(from, &["ping", to, "--count", "1"]);
    assert!(
        out.status.success() && text(&out.stdout).contains(&format!("Reply from {to} in")),
        "ping {to}: {out:?}\n{}",
        mesh.logs()
    );
}

#[test]
fn certified_nodes_link_without_trust_entries_and_ca_show_prints_the_certificate() {
    let mut mesh = Mesh::new();
    let ca = ca_init(&mesh, "ca");
    let (a, b) = (mesh.identity("a"), mesh.identity("b"));
    let a_cert = ca_sign(
        &mesh,
        &ca,
        &a,
        &a.token,
        &["--group", "ops", "--serial", "11"],
    );
    let b_cert = ca_sign(&mesh, &ca, &b, &b.token, &["--group", "workers"]);

    let ia = mesh.start(&a, &certified(&ca, &a_cert));
    let a_addr = mesh.node(ia).addr().to_owned();
    let ib = mesh.start(&b, &[certified(&ca, &b_cert), peer(&a_addr)].concat());
    mesh.wait_route(ia, "b", None);
    mesh.wait_route(ib, "a", None);
    ping_ok(&mesh, ia, "b");
    ping_ok(&mesh, ib, "a");

    let out = warren(&["ca", "show", a_cert.to_str().unwrap()]);
    assert!(out.status.success(), "ca show: {out:?}");
    let shown = text(&out.stdout);
    for expected in [
        "certificate serial 11".to_owned(),
        "node:       a".to_owned(),
        format!("key:        {}", a.token),
        "groups:     ops".to_owned(),
        format!("issuer:     {}", ca.token),
        "signature:  valid".to_owned(),
    ] {
        assert!(
            shown.contains(&expected),
            "missing {expected:?} in:\n{shown}"
        );
    }
}

#[test]
fn expired_certificate_is_refused_at_link_time() {
    let mut mesh = Mesh::new();
    let ca = ca_init(&mesh, "ca");
    let (x, y) = (mesh.identity("x"), mesh.identity("y"));
    // x's certificate is valid for a few seconds: long enough for x to start with it.
    let lifetime = Duration::from_secs(5);
    let signed = Instant::now();
    let x_cert = ca_sign(
        &mesh,
        &ca,
        &x,
        &x.token,
        &["--expires", "5s", "--serial", "4242"],
    );
    let y_cert = ca_sign(&mesh, &ca, &y, &y.token, &[]);
    let ix = mesh.start(&x, &certified(&ca, &x_cert));
    let x_addr = mesh.node(ix).addr().to_owned();
    std::thread::sleep((signed + lifetime + Duration::from_secs(1)) - Instant::now());

    let iy = mesh.start(&y, &[certified(&ca, &y_cert), peer(&x_addr)].concat());
    wait_for("y to refuse x's expired certificate", || {
        let log = mesh.node(iy).log_text();
        log.lines()
            .any(|l| {
                l.contains("refused link: bad certificate") && l.contains("serial 4242 expired")
            })
            .then_some(())
    });
    let status = mesh.status(iy).expect("y answers");
    assert_eq!(status["Connections"], serde_json::json!([]), "{status}");
    assert!(mesh.status(ix).is_some(), "x still answers");
}

#[test]
fn revoked_certificate_is_refused() {
    let mut mesh = Mesh::new();
    let ca = ca_init(&mesh, "ca");
    let (a, r) = (mesh.identity("a"), mesh.identity("r"));
    let a_cert = ca_sign(&mesh, &ca, &a, &a.token, &[]);
    let r_cert = ca_sign(&mesh, &ca, &r, &r.token, &["--serial", "77"]);
    let list = mesh.path("revoked.list");
    let out = warren(&[
        "ca",
        "revoke",
        "--ca",
        ca.key.to_str().unwrap(),
        "--cert",
        r_cert.to_str().unwrap(),
        "--list",
        list.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "ca revoke: {out:?}");
    let shown = text(&warren(&["ca", "show", list.to_str().unwrap()]).stdout);
    assert!(shown.contains("revokes: 77"), "{shown}");

    let revocations = vec!["--revocations".to_owned(), list.display().to_string()];
    let ia = mesh.start(&a, &[certified(&ca, &a_cert), revocations].concat());
    let a_addr = mesh.node(ia).addr().to_owned();
    let _ir = mesh.start(&r, &[certified(&ca, &r_cert), peer(&a_addr)].concat());
    wait_for("a to refuse r's revoked certificate", || {
        let log = mesh.node(ia).log_text();
        log.lines()
            .any(|l| {
                l.contains("refused link: bad certificate") && l.contains("serial 77 is revoked")
            })
            .then_some(())
    });
    let status = mesh.status(ia).expect("a answers");
    assert_eq!(status["Connections"], serde_json::json!([]), "{status}");
}

#[test]
fn node_whose_certificate_names_another_key_refuses_to_start() {
    let mesh = Mesh::new();
    let ca = ca_init(&mesh, "ca");
    let (a, b) = (mesh.identity("a"), mesh.identity("b"));
    // A certificate for node id b, but binding a's key.
    let cert = ca_sign(&mesh, &ca, &b, &a.token, &[]);
    let data = mesh.path("b-data");
    let socket = mesh.path("b.sock");
    let out = warren_exits(&[
        "node",
        "--id",
        "b",
        "--key",
        b.key.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--control-socket",
        socket.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--ca",
        &ca.token,
        "--cert",
        cert.to_str().unwrap(),
    ]);
    assert!(
        !out.status.success(),
        "b started with another key's certificate"
    );
    let err = text(&out.stderr);
    for expected in [
        cert.display().to_string(),
        format!("certificate is for key {}", a.token),
        "warren ca sign".to_owned(),
        b.token.clone(),
    ] {
        assert!(err.contains(&expected), "missing {expected:?} in:\n{err}");
    }
    assert!(!socket.exists(), "no control socket was left behind");
}

#[test]
fn far_node_certified_by_another_authority_is_not_routable() {
    let mut mesh = Mesh::new();
    let (ca, other) = (ca_init(&mesh, "ca"), ca_init(&mesh, "other-ca"));
    let (a, b, c) = (mesh.identity("a"), mesh.identity("b"), mesh.identity("c"));
    let a_cert = ca_sign(&mesh, &ca, &a, &a.token, &[]);
    let b_cert = ca_sign(&mesh, &ca, &b, &b.token, &[]);
    let c_cert = ca_sign(&mesh, &other, &c, &c.token, &[]);
    // b pins c (so their link comes up and b routes to c); a trusts only the authority.
    let ib = mesh.start(&b, &[certified(&ca, &b_cert), trust(&[&c])].concat());
    let b_addr = mesh.node(ib).addr().to_owned();
    let ia = mesh.start(&a, &[certified(&ca, &a_cert), peer(&b_addr)].concat());
    let extra = [certified(&other, &c_cert), trust(&[&b]), peer(&b_addr)].concat();
    let _ic = mesh.start(&c, &extra);
    mesh.wait_route(ib, "c", None);
    mesh.wait_route(ia, "b", None);
    ping_ok(&mesh, ib, "c");
    // b floods c's advert to a, which refuses it: c's certificate is from an authority a
    // does not trust.
    wait_for("a to refuse c's advert", || {
        let log = mesh.node(ia).log_text();
        log.lines()
            .any(|l| {
                l.contains("refused an advert")
                    && l.contains("node=c")
                    && l.contains("may not speak for this node id")
            })
            .then_some(())
    });
    let status = mesh.status(ia).expect("a answers");
    assert!(status["RoutingTable"].get("c").is_none(), "{status}");
    let out = mesh.ctl(ia, &["ping", "c", "--count", "1"]);
    assert!(!out.status.success(), "a reached c: {out:?}");
    ping_ok(&mesh, ia, "b");
}

//! WebSocket links between real nodes: `ws://` through an HTTP CONNECT proxy (run here, in
//! tokio) with the seed's command across that link, redialling when the proxy drops the
//! tunnel; `wss://` with a self-signed certificate, which a dialler that does not trust it
//! refuses.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::run::{copy_demo, venv_bin};
use crate::support::{Identity, Mesh, trust, wait_for};

/// A small HTTP CONNECT proxy on 127.0.0.1, in its own runtime thread. It records each
/// CONNECT target and can cut every open tunnel (as a NAT or proxy timeout would).
struct Proxy {
    addr: String,
    targets: Arc<std::sync::Mutex<Vec<String>>>,
    tunnels: Arc<AtomicUsize>,
    cut: watch::Sender<u64>,
    _runtime: tokio::runtime::Runtime,
}

impl Proxy {
    fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let targets = Arc::new(std::sync::Mutex::new(Vec::new()));
        let tunnels = Arc::new(AtomicUsize::new(0));
        let (cut, cuts) = watch::channel(0);
        let (t, n) = (targets.clone(), tunnels.clone());
        runtime.spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(tunnel(client, t.clone(), n.clone(), cuts.clone()));
            }
        });
        Self {
            addr,
            targets,
            tunnels,
            cut,
            _runtime: runtime,
        }
    }

    fn cut_all(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

/// Serves one CONNECT: reads the request head, dials the target, answers 200, then copies
/// both ways until either side closes or the proxy cuts its tunnels.
async fn tunnel(
    mut client: TcpStream,
    targets: Arc<std::sync::Mutex<Vec<String>>>,
    tunnels: Arc<AtomicUsize>,
    mut cut: watch::Receiver<u64>,
) {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let Ok(byte) = client.read_u8().await else {
            return;
        };
        head.push(byte);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let Some(target) = head
        .strip_prefix("CONNECT ")
        .and_then(|rest| rest.split(' ').next())
    else {
        let _ = client.write_all(b"HTTP/1.1 405 Only CONNECT\r\n\r\n").await;
        return;
    };
    targets.lock().unwrap().push(target.to_owned());
    let Ok(mut server) = TcpStream::connect(target).await else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
        return;
    };
    client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .unwrap();
    tunnels.fetch_add(1, Ordering::SeqCst);
    cut.borrow_and_update();
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = cut.changed() => {}
    }
}

/// The address of node `name`'s second listener (the first is the TCP one every test node
/// gets), from its ready file.
fn second_listener(mesh: &Mesh, name: &str) -> String {
    let ready = std::fs::read_to_string(mesh.path(&format!("{name}.ready"))).unwrap();
    ready.lines().nth(1).expect("a second listener").to_owned()
}

fn listen_flag(addr: &str) -> Vec<String> {
    vec!["--listen".to_owned(), addr.to_owned()]
}

fn peer_flag(addr: String) -> Vec<String> {
    vec!["--peer".to_owned(), addr]
}

/// controller (TCP listener) and node1 (WebSocket listener at /warren), node1 offering
/// ansible-runner from the venv; returns the mesh, their indexes and the client identity.
fn ws_pair(mesh: &mut Mesh, proxy: &Proxy) -> (usize, usize, Identity) {
    let ids: Vec<Identity> = ["controller", "node1"]
        .iter()
        .map(|n| mesh.identity(n))
        .collect();
    let client = mesh.identity("client");
    let runner = venv_bin().join("ansible-runner").display().to_string();
    let node1 = mesh.start(
        &ids[1],
        &[
            trust(&[&ids[0]]),
            listen_flag("ws://127.0.0.1:0/warren"),
            vec!["--ansible-runner".into(), runner],
            // The front end (any id) may run ansible-runner here.
            vec![
                "--allow-work".into(),
                format!("ansible-runner={}", client.token),
            ],
        ]
        .concat(),
    );
    let ws = format!("ws://{}/warren", second_listener(mesh, "node1"));
    let env = [("HTTP_PROXY", proxy.addr.as_str()), ("NO_PROXY", "")];
    // The front end's id is a fresh one each run: trust its key as any id.
    let client_trust = vec!["--trust".to_owned(), client.token.clone()];
    let extra = [trust(&[&ids[1]]), client_trust, peer_flag(ws)].concat();
    let controller = mesh.start_env(&ids[0], &extra, &env);
    (controller, node1, client)
}

#[test]
fn nodes_link_over_ws_through_a_connect_proxy_run_the_seed_command_and_redial_when_cut() {
    let proxy = Proxy::start();
    let mut mesh = Mesh::new();
    let (controller, node1, client) = ws_pair(&mut mesh, &proxy);
    mesh.wait_route(controller, "node1", None);
    let node1_addr = second_listener(&mesh, "node1");
    assert_eq!(*proxy.targets.lock().unwrap(), [node1_addr.as_str()]);
    assert_eq!(proxy.tunnels.load(Ordering::SeqCst), 1);
    // Plain HTTP, or an upgrade at another path, at the link port is not a link; the node
    // closes it and keeps its real link.
    for request in [
        "GET /warren HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
        "GET /other HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            .to_owned(),
    ] {
        let mut raw = std::net::TcpStream::connect(&node1_addr).unwrap();
        std::io::Write::write_all(&mut raw, request.as_bytes()).unwrap();
        let mut reply = String::new();
        let _ = std::io::Read::read_to_string(&mut raw, &mut reply);
        assert!(
            reply.is_empty() || reply.starts_with("HTTP/1.1 4"),
            "{reply}"
        );
        assert!(!reply.contains("101"), "{reply}");
    }
    assert!(mesh.node_mut(node1).is_running());
    wait_for("node1 to offer ansible-runner", || {
        let status = mesh.status(node1)?;
        (status["WorkTypes"][0]["WorkType"] == "ansible-runner").then_some(())
    });

    // The seed's command, entering at the controller, runs on node1 across the WebSocket.
    let pdd = mesh.path("demo");
    copy_demo(&pdd);
    let out = seed_command(&mesh, &pdd, &client, mesh.node(controller).addr());
    assert!(out.status.success(), "{out:?}\n{}", mesh.logs());
    assert!(String::from_utf8_lossy(&out.stdout).contains("PLAY RECAP"));

    // The proxy drops the tunnel (a NAT forgets it): the controller redials through it.
    proxy.cut_all();
    wait_for("the controller to redial through the proxy", || {
        (proxy.tunnels.load(Ordering::SeqCst) >= 2).then_some(())
    });
    mesh.wait_route(controller, "node1", None);
    let out = mesh.ctl(controller, &["ping", "node1", "--count", "1"]);
    assert!(out.status.success(), "{out:?}\n{}", mesh.logs());
}

/// `ansible-runner run PDD -p test.yml --via-receptor node1 --receptor-peer ...` through
/// Warren's front end, first on PATH, as `client`.
fn seed_command(mesh: &Mesh, pdd: &Path, client: &Identity, peer: &str) -> std::process::Output {
    let frontend = mesh.path("frontend");
    std::fs::create_dir_all(&frontend).unwrap();
    std::os::unix::fs::symlink(
        crate::support::frontend_bin(),
        frontend.join("ansible-runner"),
    )
    .unwrap();
    let path = format!(
        "{}:{}:/usr/bin:/bin",
        frontend.display(),
        venv_bin().display()
    );
    let peer = format!("receptor://{peer}");
    Command::new("ansible-runner")
        .args([
            "run",
            pdd.to_str().unwrap(),
            "-p",
            "test.yml",
            "--via-receptor",
            "node1",
        ])
        .args(["--receptor-peer", &peer])
        .env_clear()
        .env("PATH", path)
        .env("HOME", mesh.path("home"))
        .env("WARREN_IDENTITY", &client.key)
        .env("WARREN_COMPONENT_CACHE", crate::support::component_cache())
        .env("LANG", "C.UTF-8")
        .output()
        .unwrap()
}

/// A self-signed certificate for `localhost` and 127.0.0.1, made with the openssl CLI:
/// (certificate, key).
fn self_signed(mesh: &Mesh) -> (String, String) {
    let (cert, key) = (mesh.path("cert.pem"), mesh.path("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        // A server certificate, not a CA (webpki refuses a CA as the end entity).
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("the openssl CLI makes the test certificate");
    assert!(out.status.success(), "{out:?}");
    (cert.display().to_string(), key.display().to_string())
}

#[test]
fn wss_links_with_a_self_signed_certificate_only_for_a_dialler_that_trusts_it() {
    let mut mesh = Mesh::new();
    let (cert, key) = self_signed(&mesh);
    let ids: Vec<Identity> = ["a", "b", "c"].iter().map(|n| mesh.identity(n)).collect();
    let all: Vec<&Identity> = ids.iter().collect();
    let tls = [
        "--tls-cert".to_owned(),
        cert.clone(),
        "--tls-key".to_owned(),
        key,
    ];
    let _b = mesh.start(
        &ids[1],
        &[trust(&all), listen_flag("wss://127.0.0.1:0/"), tls.to_vec()].concat(),
    );
    let port = second_listener(&mesh, "b")
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let wss = format!("wss://localhost:{port}/");
    let ca = ["--tls-ca".to_owned(), cert];
    let a = mesh.start(
        &ids[0],
        &[trust(&all), peer_flag(wss.clone()), ca.to_vec()].concat(),
    );
    mesh.wait_route(a, "b", None);
    let out = mesh.ctl(a, &["ping", "b", "--count", "1"]);
    assert!(out.status.success(), "{out:?}");

    // c does not trust the certificate: its dial fails in TLS, before any Noise byte.
    let c = mesh.start(&ids[2], &[trust(&all), peer_flag(wss)].concat());
    wait_for("c to log the refused certificate", || {
        let log = mesh.node(c).log_text();
        log.contains("dial failed").then_some(())
    });
    let log = mesh.node(c).log_text();
    assert!(
        log.contains("certificate") || log.contains("UnknownIssuer"),
        "{log}"
    );
    let status = mesh.status(c).unwrap();
    assert!(status["RoutingTable"]["b"].is_null(), "{status}");
}

#[test]
fn a_wss_listener_without_a_certificate_is_refused_at_start_naming_the_flags() {
    let mesh = Mesh::new();
    let id = mesh.identity("n");
    let out = crate::support::warren(&[
        "node",
        "--id",
        "n",
        "--key",
        id.key.to_str().unwrap(),
        "--data-dir",
        mesh.path("d").to_str().unwrap(),
        "--listen",
        "wss://127.0.0.1:0/",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--tls-cert") && err.contains("--listen"),
        "{err}"
    );
}

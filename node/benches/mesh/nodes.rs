//! Bench nodes: this binary re-executed as a mesh node in its own process, the in-process
//! node the bench drives, and the line `a - b - c` they form.
//!
//! A child node links with the mesh library exactly as `warren node` does (same driver, same
//! default config, a multi-thread runtime), serves a `bench-sink` mesh service, and also a
//! raw TCP sink and a TCP echo so baselines cross the same process boundary. It prints
//! `ready <mesh port> <tcp sink port> <tcp echo port>` and exits when its stdin closes.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStdout, Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use warren::id::{NodeId, ServiceName};
use warren::keys::LinkKeypair;
use warren::mesh::driver::{self, DriverConfig, MeshHandle, PeerTarget};
use warren::mesh::node::MeshConfig;
use warren::mesh::route::Cost;
use warren::mesh::transport::{Accept, Dial, Listener};
use warren::mesh::trust::TrustEntry;

/// Set (to the node id) in a child's environment: run as a node, not as the bench.
const NODE_ENV: &str = "WARREN_BENCH_NODE";
/// The child's key seed (see [`keypair`]).
const SEED_ENV: &str = "WARREN_BENCH_SEED";
/// The mesh port the child dials, if any.
const PEER_ENV: &str = "WARREN_BENCH_PEER";
/// Set in a child's environment: also accept WebSocket links (`ws://127.0.0.1:0/`), and
/// print that port fourth on the ready line.
const WS_ENV: &str = "WARREN_BENCH_WS";

/// Seeds of every bench node's key: each trusts all of them.
pub(crate) const SEEDS: [u8; 3] = [1, 2, 3];

/// Size of one probe-sized echo message.
pub(crate) const ECHO_LEN: usize = 64;

/// How long a node may take to come up and converge before the bench fails.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The mesh service the child nodes sink streams on.
pub(crate) fn sink_service() -> ServiceName {
    ServiceName::new("bench-sink").expect("invariant: valid service name")
}

fn keypair(seed: u8) -> LinkKeypair {
    LinkKeypair::from_private([seed; 32])
}

fn mesh_config(id: &str, seed: u8) -> anyhow::Result<MeshConfig> {
    let trust = SEEDS
        .iter()
        .filter(|&&s| s != seed)
        .map(|&s| TrustEntry {
            key: keypair(s).public(),
            node: None,
        })
        .collect::<Vec<_>>();
    let epoch_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    Ok(MeshConfig::new(
        id.parse()?,
        keypair(seed),
        trust.into(),
        epoch_ms,
    ))
}

/// Whether this process was started as a child node.
pub(crate) fn is_child() -> bool {
    std::env::var_os(NODE_ENV).is_some()
}

/// The child node's `main`.
pub(crate) fn child_main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench node: no runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(child()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench node: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn child() -> anyhow::Result<()> {
    let id = std::env::var(NODE_ENV)?;
    let seed: u8 = std::env::var(SEED_ENV)?.parse()?;
    let peer = match std::env::var(PEER_ENV) {
        Ok(port) => Some(port.parse()?),
        Err(_) => None,
    };
    let mesh_listener = TcpListener::bind("127.0.0.1:0").await?;
    let mesh_port = mesh_listener.local_addr()?.port();
    let mut listeners = vec![Listener::from(mesh_listener)];
    let mut ws_port = String::new();
    if std::env::var_os(WS_ENV).is_some() {
        let tcp = TcpListener::bind("127.0.0.1:0").await?;
        ws_port = format!(" {}", tcp.local_addr()?.port());
        let accept = Accept::Ws {
            path: "/".to_owned(),
            tls: None,
        };
        listeners.push(Listener { tcp, accept });
    }
    let peer = peer.map(|port| (port, Dial::Tcp));
    let (mesh, _driver) = start_node_with(&id, seed, listeners, peer)?;
    let mut incoming = mesh.listen(&sink_service())?;
    tokio::spawn(async move {
        while let Some(stream) = incoming.recv().await {
            tokio::spawn(sink(stream));
        }
    });
    let sink_listener = TcpListener::bind("127.0.0.1:0").await?;
    let echo_listener = TcpListener::bind("127.0.0.1:0").await?;
    let sink_port = sink_listener.local_addr()?.port();
    let echo_port = echo_listener.local_addr()?.port();
    tokio::spawn(accept(sink_listener, |s| tokio::spawn(sink(s))));
    tokio::spawn(accept(echo_listener, |s| tokio::spawn(echo(s))));
    println!("ready {mesh_port} {sink_port} {echo_port}{ws_port}");
    // The parent holds our stdin; its end closing (or the parent dying) ends us.
    tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink()))
        .await??;
    Ok(())
}

async fn accept(listener: TcpListener, serve: impl Fn(TcpStream) -> JoinHandle<()>) {
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        serve(stream);
    }
}

/// Starts a mesh node on the current runtime, dialling `peer` (a local port) if given.
pub(crate) fn start_node(
    id: &str,
    seed: u8,
    listeners: Vec<TcpListener>,
    peer: Option<u16>,
) -> anyhow::Result<(MeshHandle, JoinHandle<()>)> {
    let listeners = listeners.into_iter().map(Listener::from).collect();
    start_node_with(id, seed, listeners, peer.map(|port| (port, Dial::Tcp)))
}

/// [`start_node`] with any transports: listeners, and how to dial the peer's local port.
pub(crate) fn start_node_with(
    id: &str,
    seed: u8,
    listeners: Vec<Listener>,
    peer: Option<(u16, Dial)>,
) -> anyhow::Result<(MeshHandle, JoinHandle<()>)> {
    let config = mesh_config(id, seed)?;
    let listeners = listeners.into_iter().map(|l| (l, Cost::DEFAULT)).collect();
    let peers = peer
        .map(|(port, dial)| {
            let target = PeerTarget {
                host: "127.0.0.1".to_owned(),
                port,
                cost: Cost::DEFAULT,
            };
            (target, dial)
        })
        .into_iter()
        .collect();
    Ok(driver::start_with(
        config,
        DriverConfig::default(),
        listeners,
        peers,
    ))
}

/// Reads to EOF, then answers with the byte count (8 bytes, little-endian) and finishes.
async fn sink<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(_) => return,
        }
    }
    let _ = stream.write_all(&total.to_le_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Echoes fixed-size messages back until EOF.
async fn echo(mut stream: TcpStream) {
    let mut buf = [0u8; ECHO_LEN];
    while stream.read_exact(&mut buf).await.is_ok() {
        if stream.write_all(&buf).await.is_err() {
            return;
        }
    }
}

/// A child node process, killed when dropped.
pub(crate) struct NodeProcess {
    child: Child,
    /// Where it accepts mesh links.
    pub(crate) mesh_port: u16,
    /// Its raw TCP sink.
    pub(crate) sink_port: u16,
    /// Its TCP echo.
    pub(crate) echo_port: u16,
    /// Where it accepts WebSocket mesh links (path `/`), if started with them.
    pub(crate) ws_port: Option<u16>,
}

impl NodeProcess {
    /// Starts this binary as node `id`, dialling `peer`, and waits for it to be ready.
    fn spawn(id: &str, seed: u8, peer: Option<u16>) -> anyhow::Result<Self> {
        Self::spawn_with(id, seed, peer, false)
    }

    /// [`NodeProcess::spawn`], also accepting WebSocket links when `ws`.
    pub(crate) fn spawn_with(
        id: &str,
        seed: u8,
        peer: Option<u16>,
        ws: bool,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        if ws {
            cmd.env(WS_ENV, "1");
        }
        cmd.env(NODE_ENV, id)
            .env(SEED_ENV, seed.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if let Some(port) = peer {
            cmd.env(PEER_ENV, port.to_string());
        }
        let mut child = cmd.spawn().context("spawning a bench node")?;
        let stdout = child.stdout.take().context("child stdout")?;
        match read_ready(stdout) {
            Ok(ports) => Ok(Self {
                child,
                mesh_port: ports[0],
                sink_port: ports[1],
                echo_port: ports[2],
                ws_port: ports.get(3).copied(),
            }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e.context(format!("bench node {id} did not start")))
            }
        }
    }

    /// Its process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The loopback address of its raw TCP sink.
    pub(crate) fn sink_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.sink_port))
    }

    /// The loopback address of its TCP echo.
    pub(crate) fn echo_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.echo_port))
    }
}

fn read_ready(stdout: ChildStdout) -> anyhow::Result<Vec<u16>> {
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let ports: Vec<u16> = line
        .strip_prefix("ready ")
        .with_context(|| format!("unexpected first line {line:?}"))?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    if !(3..=4).contains(&ports.len()) {
        bail!("expected 3 or 4 ports, got {ports:?}");
    }
    Ok(ports)
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The line `a - b - c`: `a` runs in this process (on the caller's runtime), `b` and `c` in
/// their own. From `a`, `b` is 1 hop away and `c` 2 hops.
pub(crate) struct Line {
    /// The in-process node.
    pub(crate) a: MeshHandle,
    /// `a`'s owner task.
    driver: JoinHandle<()>,
    /// The middle node.
    pub(crate) b: NodeProcess,
    /// The far node.
    pub(crate) c: NodeProcess,
}

impl Line {
    /// Starts the three nodes and waits until `a` has routes to both others.
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let b = NodeProcess::spawn("b", SEEDS[1], None)?;
        let c = NodeProcess::spawn("c", SEEDS[2], Some(b.mesh_port))?;
        let (a, driver) = start_node("a", SEEDS[0], Vec::new(), Some(b.mesh_port))?;
        let started = Instant::now();
        for id in [Self::b_id(), Self::c_id()] {
            if !a.wait_reachable(&id, READY_TIMEOUT).await? {
                bail!("node {id} not reachable from a after {READY_TIMEOUT:?}");
            }
        }
        // A route can exist a moment before the far node's service advert arrives.
        let sink = sink_service();
        for id in [Self::b_id(), Self::c_id()] {
            loop {
                match a.connect(&id, &sink).await {
                    Ok(mut s) => {
                        s.shutdown().await?;
                        let mut ack = [0u8; 8];
                        s.read_exact(&mut ack).await?;
                        break;
                    }
                    Err(e) if started.elapsed() > READY_TIMEOUT => {
                        bail!("no stream to {id} after {READY_TIMEOUT:?}: {e}")
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }
        Ok(Self { a, driver, b, c })
    }

    /// Replaces `a` by a new run of it (same id and key, new epoch), which holds no
    /// end-to-end session yet, and waits until it and `c` can reach each other.
    pub(crate) async fn restart_a(&mut self) -> anyhow::Result<()> {
        self.a.shutdown().await;
        let (a, driver) = start_node("a", SEEDS[0], Vec::new(), Some(self.b.mesh_port))?;
        let old = std::mem::replace(&mut self.driver, driver);
        let _ = old.await;
        self.a = a;
        let c = Self::c_id();
        if !self.a.wait_reachable(&c, READY_TIMEOUT).await? {
            bail!("node c not reachable from the new a after {READY_TIMEOUT:?}");
        }
        // A probe's echo proves c routes back to the new run of a too.
        let started = Instant::now();
        while self.a.probe(&c, None).await?.is_err() {
            if started.elapsed() > READY_TIMEOUT {
                bail!("no echo from c to the new a after {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Node `b`'s id.
    pub(crate) fn b_id() -> NodeId {
        "b".parse().expect("invariant: valid node id")
    }

    /// Node `c`'s id.
    pub(crate) fn c_id() -> NodeId {
        "c".parse().expect("invariant: valid node id")
    }

    /// Stops `a`; the child processes die on drop.
    pub(crate) async fn stop(self) {
        self.a.shutdown().await;
        let _ = self.driver.await;
    }
}

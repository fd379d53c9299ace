//! `--via-receptor NODE`: a short-lived node inside the CLI links to a peer, waits for NODE,
//! submits the job and follows its results. Its identity is a key file of the user's; the
//! peer's key is remembered on first contact, like SSH's known_hosts.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

use super::{Prepared, RunArgs, WORK_TYPE, receive, send_payload, timeout};
use crate::ansible::process::ProcessOutcome;
use crate::config::{DEFAULT_PORT, EndpointAddr, Scheme};
use crate::id::NodeId;
use crate::keys::{LinkKeypair, PublicKey};
use crate::mesh::driver::{self, DriverConfig, MeshHandle, PeerTarget};
use crate::mesh::node::MeshConfig;
use crate::mesh::route::Cost;
use crate::mesh::trust::TrustEntry;
use crate::work::protocol::Request;
use crate::work::remote;

/// Where the CLI's identity lives: `$WARREN_IDENTITY`, else `~/.config/warren/identity.key`.
fn identity_path() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("WARREN_IDENTITY").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let home = std::env::var_os("HOME").context("HOME is not set; set WARREN_IDENTITY")?;
    Ok(PathBuf::from(home).join(".config/warren/identity.key"))
}

/// The CLI's link identity, created on first use.
fn identity() -> anyhow::Result<(LinkKeypair, PathBuf)> {
    let path = identity_path()?;
    if path.exists() {
        return Ok((LinkKeypair::load(&path)?, path));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let pair = LinkKeypair::generate()?;
    pair.save(&path, false)?;
    eprintln!(
        "created this client's identity {} ({})",
        path.display(),
        pair.public()
    );
    Ok((pair, path))
}

/// Peers' keys as first seen: `host:port token` per line, next to the identity file.
struct KnownPeers {
    path: PathBuf,
    entries: Vec<(String, PublicKey)>,
}

impl KnownPeers {
    fn load(identity: &std::path::Path) -> Self {
        let path = identity.with_file_name("known_peers");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let entries = text
            .lines()
            .filter_map(|l| {
                let (addr, token) = l.split_once(' ')?;
                Some((addr.to_owned(), token.trim().parse().ok()?))
            })
            .collect();
        Self { path, entries }
    }

    fn get(&self, addr: &str) -> Option<PublicKey> {
        self.entries
            .iter()
            .find(|(a, _)| a == addr)
            .map(|(_, k)| *k)
    }

    fn remember(&mut self, addr: &str, key: PublicKey) -> anyhow::Result<()> {
        self.entries.push((addr.to_owned(), key));
        let text: String = self
            .entries
            .iter()
            .map(|(a, k)| format!("{a} {k}\n"))
            .collect();
        // Written aside and renamed, so a concurrent run never reads half a file.
        let tmp = self
            .path
            .with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

fn client_id(args: &RunArgs) -> anyhow::Result<NodeId> {
    if let Some(id) = &args.receptor_node_id {
        return Ok(id.clone());
    }
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let suffix: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(NodeId::new(format!("warren-run-{suffix}"))?)
}

/// Runs the job on `node` through the peer; returns what processing the results found.
pub(super) async fn run_remote(
    args: &RunArgs,
    node: &NodeId,
    prepared: Prepared,
) -> anyhow::Result<ProcessOutcome> {
    let (keys, path) = identity()?;
    let token = keys.public();
    let peer = args.receptor_peer.clone().unwrap_or(EndpointAddr {
        host: "localhost".into(),
        port: DEFAULT_PORT,
        scheme: Scheme::Tcp,
        path: String::new(),
    });
    let mut known = KnownPeers::load(&path);
    let pinned = known.get(&peer.to_string());
    let me = client_id(args)?;
    let mesh = start_node(&me, keys, &peer, pinned)?;
    let result = async {
        let advice = match &args.receptor_node_id {
            Some(id) => format!("--trust {id}={token}"),
            None => format!(
                "--trust {token} (or run with --receptor-node-id ID and use --trust ID={token})"
            ),
        };
        let key = wait_for_link(
            &mesh,
            &peer,
            &advice,
            &token,
            pinned.is_some(),
            timeout(args),
        )
        .await?;
        if pinned.is_none() {
            known.remember(&peer.to_string(), key)?;
            eprintln!("remembered the key of {peer}: {key}");
        }
        wait_for_node(&mesh, node, &peer, timeout(args)).await?;
        submit_and_follow(&mesh, node, &prepared).await
    }
    .await;
    mesh.shutdown().await;
    result
}

fn start_node(
    me: &NodeId,
    keys: LinkKeypair,
    peer: &EndpointAddr,
    pinned: Option<PublicKey>,
) -> anyhow::Result<MeshHandle> {
    let trust = pinned
        .map(|key| TrustEntry { key, node: None })
        .into_iter()
        .collect();
    let epoch = crate::daemon::backend::wall_clock_ms();
    let mut config = MeshConfig::new(me.clone(), keys, trust, epoch);
    config.trust_first_contact = pinned.is_none();
    let target = PeerTarget {
        host: peer.host.clone(),
        port: peer.port,
        cost: Cost::DEFAULT,
    };
    // A wss:// peer's certificate is checked against the system's roots and
    // $WARREN_TLS_CA (a PEM file), if set.
    let roots: Vec<PathBuf> = std::env::var_os("WARREN_TLS_CA")
        .filter(|v| !v.is_empty())
        .map(Into::into)
        .into_iter()
        .collect();
    let dial = crate::daemon::dial_for(peer, &roots)?;
    let (mesh, _task) = driver::start_with(
        config,
        DriverConfig::default(),
        Vec::new(),
        vec![(target, dial)],
    );
    Ok(mesh)
}

/// Waits for the link to the peer; explains a refusal. Returns the peer's key.
async fn wait_for_link(
    mesh: &MeshHandle,
    peer: &EndpointAddr,
    advice: &str,
    token: &PublicKey,
    pinned: bool,
    wait: Duration,
) -> anyhow::Result<PublicKey> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let status = mesh.status().await?;
        if let Some(link) = status.links.first() {
            return Ok(link.key);
        }
        let ended = mesh.last_link_end().await?.unwrap_or_default();
        if ended.contains("closed by peer: untrusted key") {
            bail!(
                "{peer} refused this client's key {token}.\n\
                 Trust it on that node: warren node ... {advice}"
            );
        }
        if pinned && ended.contains("closed by us: untrusted key") {
            bail!(
                "the key of {peer} is not the one first seen there: refusing it (possible impostor).\n\
                 If the node was re-keyed on purpose, remove its line from the known_peers file next to this client's identity."
            );
        }
        if tokio::time::Instant::now() >= deadline {
            let why = if ended.is_empty() {
                "no answer".to_owned()
            } else {
                ended
            };
            bail!("cannot link to {peer}: {why}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits for a route to `node` and for its advert to offer ansible-runner (a node's first
/// advert may come before it has found its ansible-runner).
async fn wait_for_node(
    mesh: &MeshHandle,
    node: &NodeId,
    peer: &EndpointAddr,
    wait: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + wait;
    if !mesh.wait_reachable(node, wait).await? {
        bail!(
            "{node} is not reachable from {peer}: no route after {} s",
            wait.as_secs_f64()
        );
    }
    loop {
        let status = mesh.status().await?;
        let offers = (status.adverts.iter())
            .find(|a| &a.origin == node)
            .is_some_and(|a| a.work_types.iter().any(|w| w == WORK_TYPE));
        if offers {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("node {node} does not offer work type {WORK_TYPE}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The user's terminal type, passed along so the node's Ansible colours its output as a
/// local `ansible-runner run` would.
pub(super) fn terminal_param() -> std::collections::BTreeMap<String, String> {
    std::env::var("TERM")
        .ok()
        .filter(|t| !t.is_empty())
        .map(|t| ("term".to_owned(), t))
        .into_iter()
        .collect()
}

/// Streams the payload to a new unit on `node`, then follows its results into the
/// processor. Ctrl-C cancels the unit and goes on reading until it ends.
async fn submit_and_follow(
    mesh: &MeshHandle,
    node: &NodeId,
    prepared: &Prepared,
) -> anyhow::Result<ProcessOutcome> {
    let (payload_in, mut payload_out) = tokio::io::duplex(256 * 1024);
    let params = terminal_param();
    let (sent, submitted) = tokio::join!(
        send_payload(prepared, payload_in),
        remote::submit(mesh, node, WORK_TYPE, params, &mut payload_out)
    );
    sent?;
    let unit = submitted.map_err(|e| anyhow::anyhow!("submitting to {node}: {e}"))?;
    eprintln!("running as unit {unit} on {node}");
    let (results_in, mut results_out) = tokio::io::duplex(256 * 1024);
    let follow = async {
        let status = remote::follow(mesh, node, unit, &mut results_out).await;
        drop(results_out);
        status
    };
    let interrupted = std::sync::atomic::AtomicBool::new(false);
    let cancel_on_interrupt = async {
        if tokio::signal::ctrl_c().await.is_ok() {
            interrupted.store(true, std::sync::atomic::Ordering::Relaxed);
            eprintln!("interrupted: cancelling unit {unit} on {node}");
            if let Err(e) = remote::tell(mesh, node, Request::Cancel { unit }).await {
                eprintln!("could not cancel: {e}");
            }
        }
        std::future::pending::<()>().await;
    };
    let work = async { tokio::join!(follow, receive(prepared, results_in)) };
    let (followed, processed) = tokio::select! {
        done = work => done,
        () = cancel_on_interrupt => unreachable!("pending forever"),
    };
    let unit_status = followed.map_err(|e| anyhow::anyhow!("results from {node}: {e}"))?;
    match processed {
        // Cancelled before the worker could report it: end as a cancelled run does.
        Err(e) if interrupted.load(std::sync::atomic::Ordering::Relaxed) => {
            eprintln!("{e:#}");
            super::canceled_outcome(&prepared.process)
        }
        // The worker's stream broke off: say what became of the unit on the node.
        Err(e) => Err(e.context(format!(
            "unit {unit} on {node} ended {}: {}",
            unit_status.state, unit_status.detail
        ))),
        ok => ok,
    }
}

//! A running node: turns a validated [`Config`] into bound listeners, the mesh driver, the
//! control socket (and the control service on the mesh), and shuts them down on a signal.
//!
//! This is wiring only; protocol logic lives in `mesh/` and `control/`.

pub mod backend;
pub mod deploy;
pub mod reload;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, LinkCost};
use crate::control::{ControlSocket, ListenError, default_socket_path, serve_session};
use crate::host::contain::{ContainError, Containment, supervisor_binary};
use crate::host::registry::{self, Registry};
use crate::host::runner::{Host, HostError};
use crate::id::ServiceName;
use crate::keys::{KeyError, LinkKeypair};
use crate::mesh::driver::{self, DriverConfig, MeshHandle, PeerTarget};
use crate::mesh::link::LinkConfig;
use crate::mesh::node::MeshConfig;
use crate::mesh::route::Cost;
use crate::work::{Work, WorkConfig, WorkError};
pub use backend::{CONTROL_SERVICE, NodeBackend};
pub use deploy::{DEPLOY_SERVICE, Deployer};
pub use reload::{ConfigSource, Reloader};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The key file could not be loaded.
    #[error("key file: {0}")]
    Key(#[from] KeyError),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address as configured.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The control socket could not be set up.
    #[error("control socket: {0}")]
    Control(#[from] ListenError),
    /// The work unit store could not be opened.
    #[error("work units: {0}")]
    Work(WorkError),
    /// The WebAssembly host could not start.
    #[error("work handler host: {0}")]
    Host(HostError),
    /// The configured job containment is not available.
    #[error("job containment: {0}")]
    Containment(#[from] ContainError),
    /// The ready file could not be written.
    #[error("cannot write ready file {path}: {source}")]
    ReadyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// A node that is up: links accepted and dialled, control socket served.
#[derive(Debug)]
pub struct RunningNode {
    /// The mesh.
    pub mesh: MeshHandle,
    /// The node's work units.
    pub work: Work,
    /// The WebAssembly host that runs jobs.
    pub host: Arc<Host>,
    /// The offered work types; a deploy sends a new registry.
    pub registry: watch::Sender<Arc<Registry>>,
    /// The addresses the listeners are bound to (port 0 resolved).
    pub listen_addrs: Vec<SocketAddr>,
    /// The control socket's path.
    pub control_path: PathBuf,
    /// Tells the control socket and the mesh control service to stop; dropped on shutdown.
    stop: watch::Sender<bool>,
    driver: JoinHandle<()>,
    control: JoinHandle<()>,
}

fn cost(c: LinkCost) -> Cost {
    Cost::from_f64(c.as_f64()).unwrap_or(Cost::DEFAULT)
}

/// The mesh settings of a node config.
///
/// # Errors
/// [`StartError::Key`] when the key file cannot be loaded.
pub fn mesh_config(config: &Config) -> Result<MeshConfig, StartError> {
    let keys = LinkKeypair::load(&config.key_file)?;
    warn_if_readable_by_others(&config.key_file);
    let mut mesh = MeshConfig::new(
        config.node_id.clone(),
        keys,
        config.trust.clone(),
        backend::wall_clock_ms(),
    );
    mesh.link = LinkConfig {
        keepalive: config.mesh.keepalive,
        idle_timeout: config.mesh.idle_timeout,
        rekey_interval: config.mesh.rekey_interval,
        ..LinkConfig::default()
    };
    mesh.max_hops = config.mesh.max_hops;
    mesh.link_costs = config
        .link_costs
        .iter()
        .map(|(n, c)| (n.clone(), cost(*c)))
        .collect();
    Ok(mesh)
}

/// A private key others can read is a key others may have copied; say so (as ssh does).
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = %format!("{mode:04o}"),
                "private key file is readable by others; run `chmod 600` on it"
            );
        }
    }
}

async fn bind_listeners(config: &Config) -> Result<Vec<(TcpListener, Cost)>, StartError> {
    let mut listeners = Vec::new();
    for listen in &config.listen {
        let addr = listen.addr.to_string();
        let listener = TcpListener::bind((listen.addr.host.as_str(), listen.addr.port))
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        listeners.push((listener, cost(listen.cost)));
    }
    Ok(listeners)
}

/// Starts a node: binds its listeners and control socket, starts the mesh. `source`
/// re-reads the config for `reload` (`None`: started from flags, nothing to re-read).
///
/// # Errors
/// [`StartError`] naming what could not be set up.
pub async fn start(
    config: &Config,
    source: Option<ConfigSource>,
) -> Result<RunningNode, StartError> {
    let mesh_config = mesh_config(config)?;
    std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let listeners = bind_listeners(config).await?;
    let listen_addrs = listeners
        .iter()
        .filter_map(|(l, _)| l.local_addr().ok())
        .collect();
    let control_path = config
        .control
        .socket
        .clone()
        .unwrap_or_else(default_socket_path);
    let socket = ControlSocket::bind(&control_path, config.control.permissions).await?;
    let peers = config
        .peers
        .iter()
        .map(|p| PeerTarget {
            host: p.addr.host.clone(),
            port: p.addr.port,
            cost: cost(p.cost),
        })
        .collect();
    let max_hops = mesh_config.max_hops;
    let containment = Containment::detect(config.work.containment, supervisor_binary())?;
    tracing::info!(containment = %containment.describe(), "job containment");
    let host = Arc::new(
        Host::with_containment(&component_cache(config), containment).map_err(StartError::Host)?,
    );
    let (mesh, driver) = driver::start(mesh_config, DriverConfig::default(), listeners, peers);
    let (registry_tx, registry) = watch::channel(Arc::new(Registry::default()));
    offer_work_types(
        config.clone(),
        host.clone(),
        mesh.clone(),
        registry_tx.clone(),
    );
    let work = Work::open(
        &config.data_dir,
        config.node_id.clone(),
        host.clone(),
        registry.clone(),
        WorkConfig {
            max_running: config.work.max_running,
            max_payload: config.work.max_payload,
        },
        Some(mesh.clone()),
    )
    .map_err(StartError::Work)?;
    crate::work::remote::serve(work.clone(), &mesh);
    let deployer = Deployer::new(
        host.clone(),
        registry_tx.clone(),
        config.signers.clone(),
        mesh.clone(),
    );
    deployer.clone().serve();
    let backend = Arc::new(NodeBackend::new(
        mesh.clone(),
        max_hops,
        registry.clone(),
        deployer,
        work.clone(),
        Reloader::new(config.clone(), source),
    ));
    let (stop, stopped) = watch::channel(false);
    let control = tokio::spawn(socket.serve(backend.clone(), stopped.clone()));
    serve_control_on_mesh(&mesh, backend, stopped);
    tracing::info!(node = %config.node_id, listen = ?listen_addrs, control = %control_path.display(), "node started");
    Ok(RunningNode {
        mesh,
        work,
        host,
        registry: registry_tx,
        listen_addrs,
        control_path,
        stop,
        driver,
        control,
    })
}

/// Where compiled components are cached: `$WARREN_COMPONENT_CACHE` (tests share one
/// across nodes), else `<data-dir>/component-cache`.
fn component_cache(config: &Config) -> PathBuf {
    std::env::var_os("WARREN_COMPONENT_CACHE")
        .filter(|v| !v.is_empty())
        .map_or_else(|| config.data_dir.join("component-cache"), PathBuf::from)
}

/// Compiles the built-in handler, looks for ansible-runner and the configured programs and
/// components (slow work: off the async threads), then offers the work types found.
fn offer_work_types(
    config: Config,
    host: Arc<Host>,
    mesh: MeshHandle,
    registry: watch::Sender<Arc<Registry>>,
) {
    tokio::task::spawn_blocking(move || {
        let builtin = match registry::builtin(&host) {
            Ok(builtin) => builtin,
            Err(e) => {
                tracing::error!(error = %e, "built-in work handler unusable; no work types offered");
                return;
            }
        };
        let env = |name: &str| std::env::var(name).ok();
        let built = registry::build(&config, &host, &builtin, &env);
        for why in &built.skipped {
            tracing::warn!("not offered: {why}");
        }
        let names = built.registry.names();
        tracing::info!(work_types = ?names, "offering work types");
        let _ = mesh.set_work_types(names);
        let _ = registry.send(Arc::new(built.registry));
    });
}

/// Serves the control protocol to other nodes as the mesh service `control`.
fn serve_control_on_mesh(
    mesh: &MeshHandle,
    backend: Arc<NodeBackend>,
    mut stop: watch::Receiver<bool>,
) {
    let service = ServiceName::new(CONTROL_SERVICE).expect("invariant: valid service name");
    let Ok(mut incoming) = mesh.listen(&service) else {
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                stream = incoming.recv() => {
                    let Some(stream) = stream else { return };
                    let backend = backend.clone();
                    tokio::spawn(async move {
                        let peer = stream.peer().clone();
                        if let Err(e) = serve_session(stream, &*backend).await {
                            tracing::debug!(%peer, error = %e, "mesh control session ended");
                        }
                    });
                }
                _ = stop.changed() => return,
            }
        }
    });
}

impl RunningNode {
    /// Writes the bound listen addresses to `path`, one `host:port` per line, atomically.
    ///
    /// # Errors
    /// [`StartError::ReadyFile`] when the file cannot be written.
    pub fn write_ready_file(&self, path: &Path) -> Result<(), StartError> {
        let text: String = self.listen_addrs.iter().map(|a| format!("{a}\n")).collect();
        let tmp = path.with_extension("tmp");
        let io = |source| StartError::ReadyFile {
            path: path.to_owned(),
            source,
        };
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Closes every link (telling peers why), removes the control socket, and waits for the
    /// tasks to end.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.mesh.shutdown().await;
        let _ = self.driver.await;
        let _ = self.control.await;
    }
}

/// Runs a node until SIGINT or SIGTERM; `source` as for [`start`].
///
/// # Errors
/// [`StartError`] when the node cannot start.
pub async fn run(
    config: &Config,
    ready_file: Option<&Path>,
    source: Option<ConfigSource>,
) -> Result<(), StartError> {
    let node = start(config, source).await?;
    if let Some(path) = ready_file {
        node.write_ready_file(path)?;
    }
    wait_for_signal().await;
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without signal handlers, run until killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

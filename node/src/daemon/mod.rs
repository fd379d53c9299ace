//! A running node: turns a validated [`Config`] into bound listeners, the mesh driver, the
//! control socket (and the control service on the mesh), and shuts them down on a signal.
//!
//! This is wiring only; protocol logic lives in `mesh/` and `control/`.

pub mod backend;
pub mod deploy;
pub mod deployed;
mod lifecycle;
mod mesh_config;
pub mod reload;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::access::{AccessPolicy, Act};
use crate::config::Config;
use crate::control::{ControlSocket, ListenError, default_socket_path, serve_peer_session};
use crate::host::contain::users::JobUsers;
use crate::host::contain::{ContainError, Containment, jobdir, supervisor_binary};
use crate::host::registry::{self, Registry};
use crate::host::runner::{Host, HostError};
use crate::id::ServiceName;
use crate::keys::SigningKeypair;
use crate::keys::{KeyError, rotation};
use crate::mesh::driver::succession_store;
use crate::mesh::driver::{self, DriverConfig, MeshHandle, MeshStream};
use crate::mesh::transport::tls::TlsError;
use crate::metrics::{Metrics, MetricsServer};
use crate::work::server::{ServerSetup, SignedWork};
use crate::work::{Work, WorkConfig, WorkError, WorkSetup};
pub use backend::{CONTROL_SERVICE, NodeBackend};
pub use deploy::{DEPLOY_SERVICE, Deployer};
pub(crate) use lifecycle::apply_log_level;
pub use lifecycle::run;
use mesh_config::bind_listeners;
pub(crate) use mesh_config::{bind_listener, peer_targets, trust_settings};
pub use mesh_config::{mesh_config, trust_policy};
pub use reload::{Applier, ConfigSource, LiveListener, Reloader};

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
    /// The control socket could not be set up (the message is the listener's own, which
    /// names the socket; it is not repeated as a source).
    #[error("control socket: {0}")]
    Control(ListenError),
    /// The work unit store could not be opened.
    #[error("work units: {0}")]
    Work(WorkError),
    /// The WebAssembly host could not start.
    #[error("work handler host: {0}")]
    Host(HostError),
    /// The configured job containment is not available.
    #[error("job containment: {0}")]
    Containment(#[from] ContainError),
    /// `[work] job-users` cannot be used as configured.
    #[error("[work] job-users: {0}")]
    JobUsers(#[from] crate::host::contain::users::JobUsersError),
    /// The data dir could not be closed to job users.
    #[error("[work] job-users: cannot close the data dir {path} to jobs: {source}")]
    LockDataDir {
        /// The data dir.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A certificate, revocation list or work signing key could not be used.
    #[error("{path}: {problem}")]
    Certificates {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        problem: Box<KeyFileError>,
    },
    /// A `wss://` listener's certificate or a `wss://` peer's roots could not be loaded.
    #[error("{0}")]
    Tls(TlsError),
    /// The node's key succession file (`<key file>.succession`) is unreadable or invalid.
    #[error(transparent)]
    KeySuccession(#[from] rotation::RotationError),
    /// The store of accepted peer key successions could not be read.
    #[error("{path}: cannot read the accepted key successions: {source}")]
    SuccessionStore {
        /// The store.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The metrics endpoint could not start.
    #[error("{0}")]
    Metrics(crate::metrics::ServeError),
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
    /// Results sessions in flight on the mesh `work` service.
    pub work_sessions: watch::Receiver<usize>,
    /// The WebAssembly host that runs jobs.
    pub host: Arc<Host>,
    /// The offered work types; a deploy sends a new registry.
    pub registry: watch::Sender<Arc<Registry>>,
    /// What mesh peers may do here; a reload sends a new policy.
    pub access: watch::Sender<Arc<AccessPolicy>>,
    /// Re-reads and applies the config (`reload`, SIGHUP).
    pub reloader: Reloader,
    /// The addresses the listeners are bound to (port 0 resolved).
    pub listen_addrs: Vec<SocketAddr>,
    /// The control socket's path.
    pub control_path: PathBuf,
    /// The `/metrics` endpoint, when configured; stops when dropped.
    pub metrics: Option<MetricsServer>,
    /// Tells the control socket and the mesh control service to stop; dropped on shutdown.
    stop: watch::Sender<bool>,
    driver: JoinHandle<()>,
    control: JoinHandle<()>,
}

/// How to dial `addr` (the client's helper, shared with the daemon's peers).
pub use crate::client::dial_for;

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
    let own_key = mesh_config.keys.public();
    std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let listeners = bind_listeners(config).await?;
    let live: Vec<LiveListener> = (config.listen.iter().zip(&listeners))
        .filter_map(|(config, (l, _))| {
            Some(LiveListener {
                config: config.clone(),
                addr: l.tcp.local_addr().ok()?,
            })
        })
        .collect();
    let listen_addrs = live.iter().map(|l| l.addr).collect();
    let control_path = config
        .control
        .socket
        .clone()
        .unwrap_or_else(default_socket_path);
    let socket = ControlSocket::bind(&control_path, config.control.permissions)
        .await
        .map_err(StartError::Control)?;
    let peers = peer_targets(config)?;
    let max_hops = mesh_config.max_hops;
    let metrics = match config.metrics {
        Some(_) => Metrics::new(),
        None => Metrics::default(),
    };
    let containment = with_job_users(
        Containment::detect(config.work.containment, supervisor_binary())?,
        config,
    )?;
    tracing::info!(containment = %containment.describe(), "job containment");
    let mut host = Host::with_containment(&component_cache(config), containment)
        .map_err(StartError::Host)?
        .with_free_space_floor(config.work.free_space_floor);
    host.set_metrics(metrics.clone());
    let host = Arc::new(host);
    let driver_config = DriverConfig {
        metrics: metrics.clone(),
        succession_store: Some(succession_store::store_path(&config.data_dir)),
        ..DriverConfig::default()
    };
    let (mesh, driver) = driver::start_with(mesh_config, driver_config, listeners, peers);
    let metrics_server = match &config.metrics {
        Some(addr) => Some(
            crate::metrics::serve(&addr.to_string(), metrics.clone(), mesh.clone())
                .await
                .map_err(StartError::Metrics)?,
        ),
        None => None,
    };
    let (registry_tx, registry) = watch::channel(Arc::new(Registry::default()));
    offer_work_types(
        config.clone(),
        host.clone(),
        mesh.clone(),
        registry_tx.clone(),
    );
    let (access_tx, access) = watch::channel(Arc::new(config.access.clone()));
    let work = Work::open(WorkSetup {
        data_dir: config.data_dir.clone(),
        node: config.node_id.clone(),
        host: host.clone(),
        registry: registry.clone(),
        config: WorkConfig {
            max_running: config.work.max_running,
            max_payload: config.work.max_payload,
            keep_finished: config.work.keep_finished,
            metrics: metrics.clone(),
            free_space_floor: config.work.free_space_floor,
            mirror_output: config.work.mirror_output,
            max_units_per_submitter: config.work.max_units_per_submitter,
            ..WorkConfig::default()
        },
        mesh: Some(mesh.clone()),
        signing_key: work_signing_key(config)?,
    })
    .map_err(StartError::Work)?;
    let (signed_tx, signed_rx) = watch::channel(signed_work(config));
    let work_sessions = crate::work::server::serve(
        work.clone(),
        &mesh,
        ServerSetup {
            access: access.clone(),
            signed: signed_rx,
            contents: content_cache(config),
        },
    );
    let (signers_tx, signers) = watch::channel(config.signers.clone());
    let deployer = Deployer::new(
        host.clone(),
        registry_tx.clone(),
        signers,
        mesh.clone(),
        access.clone(),
        deployed::DeployedStore::new(&config.data_dir),
    );
    deployer.clone().serve();
    let reloader = Reloader::new(
        config.clone(),
        Some(own_key),
        live,
        source,
        Some(Applier {
            mesh: mesh.clone(),
            access: access_tx.clone(),
            signed: signed_tx,
            signers: signers_tx,
            work: work.clone(),
            registry: registry_tx.clone(),
            host: host.clone(),
        }),
    );
    let backend = Arc::new(NodeBackend::new(
        mesh.clone(),
        max_hops,
        registry.clone(),
        deployer,
        work.clone(),
        reloader.clone(),
    ));
    let (stop, stopped) = watch::channel(false);
    let control = tokio::spawn(socket.serve(backend.clone(), stopped.clone()));
    serve_control_on_mesh(&mesh, backend, access, stopped);
    tracing::info!(node = %config.node_id, listen = ?listen_addrs, control = %control_path.display(), metrics = ?metrics_server.as_ref().map(|m| m.addr), "node started");
    Ok(RunningNode {
        mesh,
        work,
        work_sessions,
        host,
        registry: registry_tx,
        access: access_tx,
        reloader,
        listen_addrs,
        control_path,
        metrics: metrics_server,
        stop,
        driver,
        control,
    })
}

/// The config's rule for signed work.
pub(crate) fn signed_work(config: &Config) -> SignedWork {
    SignedWork {
        required: config.work.require_signed,
        keys: config.work.verify_keys.clone(),
    }
}

/// With `[work] job-users`: the pool checked (range, accounts, capabilities, the data
/// dir's parents), the data dir closed to jobs and the node's umask 077. Without, and run
/// as root: one warning that jobs run as root.
fn with_job_users(containment: Containment, config: &Config) -> Result<Containment, StartError> {
    let Some(range) = config.work.job_users else {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            tracing::warn!(
                "the node runs as root without [work] job-users: jobs' programs run as root and can reach everything the node can (other jobs' payloads and results, its keys, its control socket); set [work] job-users = \"FIRST-LAST\" to run each job as a uid of its own"
            );
        }
        return Ok(containment);
    };
    crate::host::contain::users::check_control_permissions(config.control.permissions)?;
    let users = JobUsers::new(range, &config.data_dir)?;
    jobdir::lock_data_dir(&config.data_dir).map_err(|source| StartError::LockDataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    tracing::info!(range = %range, "each job runs as a uid of its own");
    let size = u64::from(range.last - range.first) + 1;
    if size < config.work.max_running as u64 {
        tracing::warn!(
            range = %range,
            max_running = config.work.max_running,
            "[work] job-users holds fewer uids than max-running: jobs beyond them fail; reserve at least max-running uids"
        );
    }
    Ok(containment.with_job_users(users))
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
pub(crate) fn offer_work_types(
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
        let mut built = registry::build(&config, &host, &builtin, &env);
        for why in &built.skipped {
            tracing::warn!("not offered: {why}");
        }
        let kept = deployed::DeployedStore::new(&config.data_dir);
        for why in kept.restore(&host, &mut built.registry, &config.signers) {
            tracing::warn!("{why}");
        }
        let names = built.registry.names();
        tracing::info!(work_types = ?names, "offering work types");
        let _ = mesh.set_work_types(names);
        let _ = registry.send(Arc::new(built.registry));
    });
}

/// Serves the control protocol to other nodes as the mesh service `control`, to the peers
/// allowed to use it (`--allow-control`); others get one `ERROR:` line naming the flag.
fn serve_control_on_mesh(
    mesh: &MeshHandle,
    backend: Arc<NodeBackend>,
    access: watch::Receiver<Arc<AccessPolicy>>,
    mut stop: watch::Receiver<bool>,
) {
    let service = ServiceName::new(CONTROL_SERVICE).expect("invariant: valid service name");
    let Ok(mut incoming) = mesh.listen(&service) else {
        return;
    };
    let me = mesh.id().clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                stream = incoming.recv() => {
                    let Some(stream) = stream else { return };
                    let backend = backend.clone();
                    let allowed = access.borrow().check(&me, stream.identity(), Act::Control);
                    tokio::spawn(control_session(stream, backend, allowed));
                }
                _ = stop.changed() => return,
            }
        }
    });
}

async fn control_session(
    mut stream: MeshStream,
    backend: Arc<NodeBackend>,
    allowed: Result<(), crate::access::Refusal>,
) {
    use tokio::io::AsyncWriteExt;
    let peer = stream.identity().clone();
    if let Err(refusal) = allowed {
        tracing::info!(peer = %peer.node, key = %peer.key, %refusal, "mesh control session refused");
        let line = crate::control::reply::error_line(&refusal.to_string());
        let _ = stream.write_all(line.as_bytes()).await;
        let _ = stream.shutdown().await;
        return;
    }
    tracing::info!(peer = %peer.node, key = %peer.key, "mesh control session");
    let audit = format!("{} ({})", peer.node, peer.key);
    if let Err(e) = serve_peer_session(stream, &*backend, &audit).await {
        tracing::debug!(peer = %peer.node, error = %e, "mesh control session ended");
    }
}

/// Why a certificate, revocation list or work signing key file named in the config cannot
/// be used ([`StartError::Certificates`] names the file).
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// It cannot be read.
    #[error(transparent)]
    Read(#[from] io::Error),
    /// Not a certificate.
    #[error(transparent)]
    Certificate(#[from] crate::ca::CertDecodeError),
    /// Not a revocation list.
    #[error(transparent)]
    RevocationList(#[from] crate::ca::RevocationError),
    /// A revocation list this node does not take.
    #[error(transparent)]
    RevocationRefused(#[from] crate::ca::RevocationRefused),
    /// This node's certificate is not for its id and key, or no longer valid.
    #[error("{source}; issue a certificate for node {node} and key {key} with `warren ca sign`")]
    NotOurs {
        /// What the check found.
        source: crate::ca::CertError,
        /// This node's id.
        node: crate::id::NodeId,
        /// This node's key.
        key: crate::keys::PublicKey,
    },
    /// The work signing key cannot be loaded.
    #[error("cannot load the work signing key: {0}")]
    SigningKey(#[source] crate::keys::SigningKeyError),
}

/// The key this node signs work with when asked (`signwork`).
pub(crate) fn work_signing_key(config: &Config) -> Result<Option<SigningKeypair>, StartError> {
    let Some(path) = &config.work.signing_key else {
        return Ok(None);
    };
    SigningKeypair::load(path)
        .map(Some)
        .map_err(|e| StartError::Certificates {
            path: path.clone(),
            problem: Box::new(KeyFileError::SigningKey(e)),
        })
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

    /// Closes every link (telling peers why), removes the control socket, waits for the
    /// tasks to end, and commits the unit store's pending writes.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.mesh.shutdown().await;
        let _ = self.driver.await;
        let _ = self.control.await;
        // Last: what the store still holds goes to the disk.
        self.work.shutdown().await;
    }
}

/// The content cache `[work] content-cache-mb` asks for (`None`: off, or it could not be
/// opened, which is logged and leaves content-addressed submissions to send whole).
fn content_cache(config: &Config) -> Option<Arc<crate::work::cache::ContentCache>> {
    if config.work.content_cache == 0 {
        return None;
    }
    match crate::work::cache::ContentCache::open(&config.data_dir, config.work.content_cache) {
        Ok(cache) => Some(cache),
        Err(e) => {
            tracing::warn!(error = %e, "content cache unavailable; submissions are sent whole");
            None
        }
    }
}

#[cfg(test)]
mod key_file_error_tests {
    use super::*;

    #[test]
    fn a_certificate_not_ours_names_the_file_the_check_and_what_to_issue() {
        let key = crate::keys::LinkKeypair::from_private([1; 32]).public();
        let error = StartError::Certificates {
            path: "node.cert".into(),
            problem: Box::new(KeyFileError::NotOurs {
                source: crate::ca::CertError::Expired {
                    serial: 7,
                    not_after_ms: 5,
                },
                node: crate::id::NodeId::new("node1").unwrap(),
                key,
            }),
        };
        assert_eq!(
            error.to_string(),
            format!(
                "node.cert: certificate serial 7 expired at 5 ms; issue a certificate for node \
                 node1 and key {key} with `warren ca sign`"
            )
        );
        let cause = std::error::Error::source(&error).unwrap().to_string();
        assert!(error.to_string().ends_with(&cause), "{cause}");
        assert!(matches!(
            error,
            StartError::Certificates { problem, .. } if matches!(*problem, KeyFileError::NotOurs { .. })
        ));
    }
}

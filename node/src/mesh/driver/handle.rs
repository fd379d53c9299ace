//! [`MeshHandle`]: how applications talk to the owner task, and the commands it carries.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::Driver;
use super::reconfig::Reconfigure;
use super::stream::{MeshStream, StreamSlot};
use crate::id::{NodeId, ServiceName};
use crate::mesh::message::ResetReason;
use crate::mesh::node::{MeshStatus, OpenError, ProbeFailure};
use crate::mesh::stream::{StreamData, StreamId};

/// A probe's result: who answered and the round trip, or who reported what failure after how
/// long.
pub type ProbeOutcome = Result<(NodeId, Duration), (Option<NodeId>, ProbeFailure, Duration)>;

/// The owner task has stopped.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the mesh node has stopped")]
pub struct DriverGone;

/// Why a stream could not be opened.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    /// The node refused locally (no route, or ourselves).
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The target (or a relay) reset the stream instead of accepting it.
    #[error("stream refused: {0}")]
    Reset(ResetReason),
    /// The owner task has stopped.
    #[error(transparent)]
    Gone(#[from] DriverGone),
}

pub(super) enum Command {
    Connect {
        node: NodeId,
        service: ServiceName,
        reply: oneshot::Sender<Result<MeshStream, ConnectError>>,
    },
    Listen {
        service: ServiceName,
        streams: mpsc::Sender<MeshStream>,
    },
    /// Data for a stream whose writer has no [`crate::mesh::stream::Outbound`] (yet).
    Send {
        id: StreamId,
        data: StreamData,
    },
    /// The stream's writer sealed data on its `Outbound` and found nothing queued before.
    Flush {
        id: StreamId,
    },
    Consumed {
        id: StreamId,
        n: usize,
    },
    Finish {
        id: StreamId,
    },
    Drop {
        id: StreamId,
    },
    Probe {
        node: NodeId,
        hops: Option<u8>,
        reply: oneshot::Sender<ProbeOutcome>,
    },
    Status {
        reply: oneshot::Sender<MeshStatus>,
    },
    SetWorkTypes(Vec<String>),
    Reconfigure(Box<Reconfigure>),
    LastLinkEnd {
        reply: oneshot::Sender<Option<String>>,
    },
    Shutdown {
        done: oneshot::Sender<()>,
    },
}

/// A cheap, cloneable handle to a running mesh node.
#[derive(Debug, Clone)]
pub struct MeshHandle {
    id: NodeId,
    commands: mpsc::UnboundedSender<Command>,
}

/// Connections to a listening service arrive here.
pub type Incoming = mpsc::Receiver<MeshStream>;

impl MeshHandle {
    pub(super) fn new(id: NodeId, commands: mpsc::UnboundedSender<Command>) -> Self {
        Self { id, commands }
    }

    /// This node's id.
    pub fn id(&self) -> &NodeId {
        &self.id
    }

    fn send(&self, command: Command) -> Result<(), DriverGone> {
        self.commands.send(command).map_err(|_| DriverGone)
    }

    /// Opens a stream to `service` on `node`.
    ///
    /// # Errors
    /// [`ConnectError`] when there is no route, the service does not exist, or the node
    /// stopped.
    pub async fn connect(
        &self,
        node: &NodeId,
        service: &ServiceName,
    ) -> Result<MeshStream, ConnectError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Connect {
            node: node.clone(),
            service: service.clone(),
            reply,
        })?;
        rx.await.map_err(|_| DriverGone)?
    }

    /// Listens for streams to `service` (and advertises it).
    ///
    /// # Errors
    /// [`DriverGone`] when the node stopped.
    pub fn listen(&self, service: &ServiceName) -> Result<Incoming, DriverGone> {
        let (streams, rx) = mpsc::channel(64);
        self.send(Command::Listen {
            service: service.clone(),
            streams,
        })?;
        Ok(rx)
    }

    /// Sends one echo probe to `node`; relays drop it after `hops` hops.
    ///
    /// # Errors
    /// [`DriverGone`] when the node stopped.
    pub async fn probe(&self, node: &NodeId, hops: Option<u8>) -> Result<ProbeOutcome, DriverGone> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Probe {
            node: node.clone(),
            hops,
            reply,
        })?;
        rx.await.map_err(|_| DriverGone)
    }

    /// A status snapshot.
    ///
    /// # Errors
    /// [`DriverGone`] when the node stopped.
    pub async fn status(&self) -> Result<MeshStatus, DriverGone> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Status { reply })?;
        rx.await.map_err(|_| DriverGone)
    }

    /// Sets the work types advertised for this node.
    ///
    /// # Errors
    /// [`DriverGone`] when the node stopped.
    pub fn set_work_types(&self, work_types: Vec<String>) -> Result<(), DriverGone> {
        self.send(Command::SetWorkTypes(work_types))
    }

    /// Applies a change of configuration (a reload): see [`Reconfigure`].
    ///
    /// # Errors
    /// [`DriverGone`] when the node stopped.
    pub fn reconfigure(&self, change: Reconfigure) -> Result<(), DriverGone> {
        self.send(Command::Reconfigure(Box::new(change)))
    }

    /// How the most recent link failure ended (for example "link to relay closed by peer:
    /// untrusted key"), if any.
    ///
    /// # Errors
    /// [`DriverGone`] when the node stopped.
    pub async fn last_link_end(&self) -> Result<Option<String>, DriverGone> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::LastLinkEnd { reply })?;
        rx.await.map_err(|_| DriverGone)
    }

    /// Waits until `node` is reachable, up to `timeout`; returns whether it is.
    ///
    /// # Errors
    /// [`DriverGone`] when the node stopped.
    pub async fn wait_reachable(
        &self,
        node: &NodeId,
        timeout: Duration,
    ) -> Result<bool, DriverGone> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status().await?;
            if status.routes.contains_key(node) || status.links.iter().any(|l| &l.peer == node) {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Closes every link (telling peers why) and stops the node.
    pub async fn shutdown(&self) {
        let (done, rx) = oneshot::channel();
        if self.send(Command::Shutdown { done }).is_ok() {
            let _ = rx.await;
        }
    }
}

impl Driver {
    pub(super) fn handle_command(&mut self, command: Command) {
        let now = Instant::now().into_std();
        match command {
            Command::Connect {
                node,
                service,
                reply,
            } => self.connect(node, service, reply),
            Command::Listen { service, streams } => {
                self.node.listen(now, service.clone());
                self.listeners.insert(service, streams);
            }
            Command::Send { id, data } => {
                self.sent_since_timer = true;
                if let Err(e) = self.node.stream_send(now, id, data) {
                    tracing::debug!(stream = %id, error = %e, "stream send refused");
                }
            }
            Command::Flush { id } => {
                self.sent_since_timer = true;
                self.node.stream_flush(now, id);
            }
            Command::Consumed { id, n } => self.node.stream_consumed(now, id, n),
            Command::Finish { id } => self.node.stream_finish(now, id),
            Command::Drop { id } => {
                self.streams.remove(&id);
                self.node.stream_reset(now, id, ResetReason::Cancelled);
            }
            Command::Probe { node, hops, reply } => {
                let probe = self.node.probe(now, &node, hops);
                self.probes.insert(probe, reply);
            }
            Command::Status { reply } => {
                let _ = reply.send(self.node.status());
            }
            Command::SetWorkTypes(types) => self.node.set_work_types(now, types),
            Command::Reconfigure(change) => self.reconfigure(now, *change),
            Command::LastLinkEnd { reply } => {
                let _ = reply.send(self.last_link_end.clone());
            }
            Command::Shutdown { done } => self.shutdown = Some(done),
        }
    }

    fn connect(
        &mut self,
        node: NodeId,
        service: ServiceName,
        reply: oneshot::Sender<Result<MeshStream, ConnectError>>,
    ) {
        let now = Instant::now().into_std();
        let Some(commands) = self.command_tx.upgrade() else {
            return;
        };
        let from = ServiceName::new("client").expect("invariant: valid service name");
        match self.node.open_stream(now, &node, service.clone(), from) {
            Ok(id) => {
                let pool = self.chunks.clone();
                let slot = StreamSlot::pending(id, node, service, commands, pool);
                self.streams.insert(id, slot);
                self.opening.insert(id, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(e.into()));
            }
        }
    }
}

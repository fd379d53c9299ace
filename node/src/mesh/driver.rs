//! Tokio glue for the mesh: sockets, timers and tasks. The only IO in `mesh/`.
//!
//! One task owns the [`MeshNode`]; it is the only code that touches protocol state. Socket
//! tasks only move bytes: a reader per link feeds the owner through a bounded channel (so a
//! fast peer is slowed by TCP, not buffered), a writer per link drains bytes the owner hands
//! it. Applications talk to the owner through a [`MeshHandle`] and get [`MeshStream`]s, which
//! implement `AsyncRead + AsyncWrite`.

mod handle;
mod inbox;
mod reader;
mod reconfig;
mod stream;
pub mod succession_store;
#[cfg(test)]
mod tests;
mod writer;

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use super::session::PeerIdentity;
pub use handle::{ConnectError, DriverGone, Incoming, MeshHandle, ProbeOutcome};
pub use reconfig::Reconfigure;
pub use stream::MeshStream;

use super::link::LinkId;
use super::message::{CloseReason, ResetReason};
use super::node::{Event, MeshConfig, MeshNode, ProbeId, Transmit};
use super::peers::PeerSlotId;
use super::route::Cost;
use super::stream::{ChunkPool, StreamEvent, StreamId};
use super::transport::{self, Accept, BoxedLink, Dial, Listener};
use crate::id::ServiceName;
use crate::metrics::{LinkMetrics, Metrics};
use handle::Command;
use stream::StreamSlot;

/// Bytes a link may have queued for its socket before the peer is judged not to be reading
/// and the link is closed. Far above what flow control lets streams queue, so only a
/// stalled peer reaches it.
pub const DEFAULT_MAX_LINK_QUEUE: usize = 64 << 20;

/// Most further events (socket or command) the owner takes after the one it woke for
/// before draining: enough to coalesce a burst, few enough that timers and the other
/// source are not starved.
const MAX_BATCH: usize = 64;

/// Longest a shutdown waits for its links' last bytes (their close reasons) to go out.
const SHUTDOWN_FLUSH: Duration = Duration::from_millis(500);

/// How long a closed link's writer may go on flushing (its close reason, its last frames)
/// before the socket is dropped regardless: a peer that stopped reading must not keep the
/// socket and the queued bytes alive.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);

/// A peer to dial: where, and at what cost.
#[derive(Debug, Clone)]
pub struct PeerTarget {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Cost of the link.
    pub cost: Cost,
}

/// Driver settings beyond the node's own.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// See [`DEFAULT_MAX_LINK_QUEUE`].
    pub max_link_queue: usize,
    /// Diagnostics: receives a copy of every frame this node's links decrypt — exactly what
    /// this node sees in clear, as a relay. Setting it turns on `LinkConfig::tap`. Only
    /// library users set it (tests that check what a relay can read); no flag or config does.
    pub tap: Option<mpsc::UnboundedSender<(LinkId, Bytes)>>,
    /// Where link counters go (disabled by default).
    pub metrics: Metrics,
    /// Where accepted key successions of pinned peers are appended (see
    /// [`succession_store`]); `None` keeps them in memory only.
    pub succession_store: Option<std::path::PathBuf>,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            max_link_queue: DEFAULT_MAX_LINK_QUEUE,
            tap: None,
            metrics: Metrics::default(),
            succession_store: None,
        }
    }
}

enum SocketEvent {
    Accepted(BoxedLink, Cost, Option<std::net::IpAddr>),
    Dialed(PeerSlotId, io::Result<BoxedLink>),
    Bytes(LinkId, BytesMut),
    Closed(LinkId, String),
}

struct Writer {
    tx: mpsc::UnboundedSender<Bytes>,
    queued: Arc<AtomicUsize>,
    reader: JoinHandle<()>,
    /// Ends once everything sent to `tx` is written and the socket shut down.
    writer: JoinHandle<()>,
    /// Set when the link is closed because its peer stopped reading: flushing is pointless,
    /// so the socket is dropped at once.
    stalled: bool,
}

/// The task that owns the node.
struct Driver {
    node: MeshNode,
    config: DriverConfig,
    commands: mpsc::UnboundedReceiver<Command>,
    sockets: mpsc::Receiver<SocketEvent>,
    /// Cloned into every socket task; the owner keeps one so the channel never closes.
    socket_tx: mpsc::Sender<SocketEvent>,
    command_tx: mpsc::WeakUnboundedSender<Command>,
    writers: HashMap<LinkId, Writer>,
    peers: HashMap<PeerSlotId, PeerTarget>,
    /// How each peer is dialled (TCP unless [`start_with`] said otherwise).
    dials: HashMap<PeerSlotId, Dial>,
    streams: HashMap<StreamId, StreamSlot>,
    opening: HashMap<StreamId, oneshot::Sender<Result<MeshStream, ConnectError>>>,
    listeners: HashMap<ServiceName, mpsc::Sender<MeshStream>>,
    probes: HashMap<ProbeId, oneshot::Sender<ProbeOutcome>>,
    shutdown: Option<oneshot::Sender<()>>,
    /// The listeners' accept tasks by bound address; aborted at shutdown (or when a reload
    /// removes one), which closes the listening sockets.
    accepts: Vec<(Option<std::net::SocketAddr>, JoinHandle<()>)>,
    /// How the most recent link that never came up (or went down) ended, for clients that
    /// explain a failure to connect.
    last_link_end: Option<String>,
    /// Per-link counters for `/metrics`.
    link_metrics: LinkMetrics,
    /// Buffers the streams' writers lay their chunks into, shared by all of them.
    chunks: ChunkPool,
    /// Whether a stream sent data since the last timer: when none did, the pool lets its
    /// buffers go.
    sent_since_timer: bool,
}

/// Starts the mesh over TCP: accepts on `listeners`, dials `peers`, and returns the handle
/// to it and the owner task (which ends after [`MeshHandle::shutdown`]).
pub fn start(
    config: MeshConfig,
    driver_config: DriverConfig,
    listeners: Vec<(TcpListener, Cost)>,
    peers: Vec<PeerTarget>,
) -> (MeshHandle, JoinHandle<()>) {
    let listeners = listeners.into_iter().map(|(l, c)| (l.into(), c)).collect();
    let peers = peers.into_iter().map(|p| (p, Dial::Tcp)).collect();
    start_with(config, driver_config, listeners, peers)
}

/// [`start`] with any transports (see [`transport`]): each listener upgrades what it
/// accepts as its [`Accept`] says, each peer is dialled as its [`Dial`] says.
pub fn start_with(
    mut config: MeshConfig,
    driver_config: DriverConfig,
    listeners: Vec<(Listener, Cost)>,
    peers: Vec<(PeerTarget, Dial)>,
) -> (MeshHandle, JoinHandle<()>) {
    let now = Instant::now().into_std();
    let id = config.id.clone();
    config.link.tap |= driver_config.tap.is_some();
    let mut node = MeshNode::new(config, now);
    let (command_tx, commands) = mpsc::unbounded_channel();
    let (socket_tx, sockets) = mpsc::channel(256);
    let mut targets = HashMap::new();
    let mut dials = HashMap::new();
    for (peer, dial) in peers {
        let slot = node.add_peer(now);
        targets.insert(slot, peer);
        dials.insert(slot, dial);
    }
    let accepts = listeners
        .into_iter()
        .map(|(listener, cost)| {
            let addr = listener.tcp.local_addr().ok();
            (
                addr,
                tokio::spawn(accept_loop(listener, cost, socket_tx.clone())),
            )
        })
        .collect();
    let link_metrics = driver_config.metrics.links();
    let driver = Driver {
        node,
        config: driver_config,
        commands,
        sockets,
        socket_tx,
        command_tx: command_tx.downgrade(),
        writers: HashMap::new(),
        peers: targets,
        dials,
        streams: HashMap::new(),
        opening: HashMap::new(),
        listeners: HashMap::new(),
        probes: HashMap::new(),
        shutdown: None,
        accepts,
        last_link_end: None,
        link_metrics,
        chunks: ChunkPool::new(),
        sent_since_timer: false,
    };
    let task = tokio::spawn(driver.run());
    (MeshHandle::new(id, command_tx), task)
}

async fn accept_loop(listener: Listener, cost: Cost, tx: mpsc::Sender<SocketEvent>) {
    let upgrades = transport::Upgrades::default();
    loop {
        match listener.tcp.accept().await {
            Ok((stream, addr)) => {
                tracing::debug!(%addr, "accepted connection");
                let is_tcp = matches!(listener.accept, Accept::Tcp);
                let slot = if is_tcp { None } else { upgrades.try_start() };
                if !is_tcp && slot.is_none() {
                    tracing::warn!(%addr, "too many connections mid-upgrade; closed this one");
                    continue;
                }
                // Upgrades (TLS, WebSocket) run beside the loop, so a slow client holds
                // up only itself.
                let (events, accept) = (tx.clone(), listener.accept.clone());
                let source = Some(addr.ip());
                let upgrade = async move {
                    let _slot = slot;
                    match transport::upgrade_accepted(stream, &accept).await {
                        Ok(link) => {
                            let _ = events.send(SocketEvent::Accepted(link, cost, source)).await;
                        }
                        Err(e) => tracing::info!(%addr, error = %e, "connection not upgraded"),
                    }
                };
                if is_tcp {
                    upgrade.await;
                } else {
                    tokio::spawn(upgrade);
                }
                if tx.is_closed() {
                    return;
                }
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl Driver {
    async fn run(mut self) {
        self.drain();
        loop {
            let deadline = self.node.poll_timeout().map(Instant::from_std);
            let sleep = async {
                match deadline {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                Some(event) = self.sockets.recv() => {
                    self.handle_socket(event);
                    // Take what else is ready before draining, so bytes batch into fewer
                    // Noise messages and writes.
                    for _ in 0..MAX_BATCH {
                        match self.sockets.try_recv() {
                            Ok(event) => self.handle_socket(event),
                            Err(_) => break,
                        }
                    }
                }
                command = self.commands.recv() => match command {
                    Some(command) => {
                        self.handle_command(command);
                        // Batch commands as sockets are batched: a stream's consecutive
                        // writes then leave as fewer Noise messages and socket writes.
                        for _ in 0..MAX_BATCH {
                            match self.commands.try_recv() {
                                Ok(command) => self.handle_command(command),
                                Err(_) => break,
                            }
                        }
                    }
                    None => break,
                },
                () = sleep => self.handle_timer(),
            }
            self.drain();
            if let Some(done) = self.shutdown.take() {
                self.finish_shutdown().await;
                let _ = done.send(());
                break;
            }
        }
    }

    fn handle_timer(&mut self) {
        self.node.handle_timeout(Instant::now().into_std());
        if !std::mem::take(&mut self.sent_since_timer) {
            self.chunks.shrink();
        }
    }

    async fn finish_shutdown(&mut self) {
        // Wait for each aborted accept task to end: its listener is closed when it returns,
        // so the port is free once shutdown is.
        for (_, accept) in self.accepts.drain(..) {
            accept.abort();
            let _ = accept.await;
        }
        let now = Instant::now().into_std();
        self.node.close_all(now);
        self.drain();
        // Let the writers flush the close reasons, but never wait on a stalled peer long.
        let deadline = Instant::now() + SHUTDOWN_FLUSH;
        for (_, writer) in self.writers.drain() {
            drop(writer.tx);
            writer.reader.abort();
            if tokio::time::timeout_at(deadline, writer.writer)
                .await
                .is_err()
            {
                break;
            }
        }
    }

    fn handle_socket(&mut self, event: SocketEvent) {
        let now = Instant::now().into_std();
        match event {
            SocketEvent::Accepted(stream, cost, source) => {
                let link = self.node.handle_accepted(now, cost, source);
                self.attach(link, stream);
            }
            // A dial that finished after its peer was removed: drop the connection.
            SocketEvent::Dialed(slot, _) if !self.peers.contains_key(&slot) => {}
            SocketEvent::Dialed(slot, Ok(stream)) => {
                let cost = self.peers.get(&slot).map_or(Cost::DEFAULT, |p| p.cost);
                let link = self.node.handle_dialed(now, slot, cost);
                self.attach(link, stream);
            }
            SocketEvent::Dialed(slot, Err(e)) => {
                if let Some(p) = self.peers.get(&slot) {
                    tracing::info!(peer = %format!("{}:{}", p.host, p.port), error = %e, "dial failed");
                }
                self.node.handle_dial_failed(now, slot);
            }
            SocketEvent::Bytes(link, bytes) => {
                self.link_metrics.received(link, bytes.len());
                self.node.handle_link_owned_bytes(now, link, bytes);
            }
            SocketEvent::Closed(link, why) => self.node.handle_link_socket_closed(now, link, &why),
        }
    }

    /// Starts the reader and writer tasks of a new link's socket.
    fn attach<S>(&mut self, link: LinkId, stream: S)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(stream);
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let writer = tokio::spawn(writer::write_loop(write, rx, queued.clone()));
        let reader = tokio::spawn(reader::read_loop(link, read, self.socket_tx.clone()));
        self.writers.insert(
            link,
            Writer {
                tx,
                queued,
                reader,
                writer,
                stalled: false,
            },
        );
    }

    /// Drains the node in the documented order: transmits, then events.
    fn drain(&mut self) {
        loop {
            let now = Instant::now().into_std();
            let mut progressed = false;
            while let Some(transmit) = self.node.poll_transmit(now) {
                progressed = true;
                self.transmit(now, transmit);
            }
            while let Some(event) = self.node.poll_event() {
                progressed = true;
                self.handle_event(event);
            }
            if !progressed {
                break;
            }
        }
    }

    fn transmit(&mut self, now: std::time::Instant, transmit: Transmit) {
        match transmit {
            Transmit::Data { link, bytes } => {
                let Some(writer) = self.writers.get(&link) else {
                    return;
                };
                self.link_metrics.sent(link, bytes.len());
                let queued = writer.queued.fetch_add(bytes.len(), Ordering::Relaxed) + bytes.len();
                let _ = writer.tx.send(bytes);
                if queued > self.config.max_link_queue {
                    tracing::warn!(%link, queued, "peer is not reading; closing link");
                    if let Some(writer) = self.writers.get_mut(&link) {
                        writer.stalled = true;
                    }
                    self.node.close_link(now, link, CloseReason::SendQueueFull);
                }
            }
            Transmit::Close { link } => {
                if let Some(writer) = self.writers.remove(&link) {
                    retire(writer);
                }
            }
        }
    }

    fn handle_event(&mut self, event: Event) {
        match event {
            Event::Dial(slot) => {
                if let Some(target) = self.peers.get(&slot).cloned() {
                    let tx = self.socket_tx.clone();
                    let how = self.dials.get(&slot).cloned().unwrap_or_default();
                    tokio::spawn(async move {
                        let result = transport::dial(&target.host, target.port, &how).await;
                        let _ = tx.send(SocketEvent::Dialed(slot, result)).await;
                    });
                }
            }
            Event::Stream(event) => self.handle_stream_event(event),
            Event::ProbeReply { probe, from, rtt } => {
                if let Some(reply) = self.probes.remove(&probe) {
                    let _ = reply.send(Ok((from, rtt)));
                }
            }
            Event::ProbeFailed {
                probe,
                from,
                reason,
                elapsed,
            } => {
                if let Some(reply) = self.probes.remove(&probe) {
                    let _ = reply.send(Err((from, reason, elapsed)));
                }
            }
            Event::Undeliverable {
                target,
                reporter,
                reason,
            } => tracing::debug!(%target, %reporter, %reason, "packet undeliverable"),
            Event::LinkDown { link, peer, end } => {
                self.link_metrics.link_down(link, &end);
                let who = peer.map_or_else(|| "peer".to_owned(), |p| p.to_string());
                self.last_link_end = Some(format!("link to {who} {end}"));
            }
            Event::LinkPlaintext { link, frame } => {
                if let Some(tap) = &self.config.tap {
                    let _ = tap.send((link, frame));
                }
            }
            Event::LinkUp { link, peer } => self.link_metrics.link_up(link, &peer),
            Event::DuplicateNodeId { .. } => self.link_metrics.duplicate_node_id(),
            Event::SuccessionAccepted { node, statement } => {
                if let Some(path) = &self.config.succession_store
                    && let Err(e) = succession_store::append(path, &statement)
                {
                    tracing::error!(%node, path = %path.display(), error = %e, "could not store an accepted key succession: after a restart the pin names the old key again");
                }
            }
        }
    }

    fn handle_stream_event(&mut self, event: StreamEvent) {
        match event {
            StreamEvent::Incoming { id, from, service } => self.incoming(id, from, service),
            StreamEvent::Opened { id } => {
                if let (Some(reply), Some(stream)) =
                    (self.opening.remove(&id), self.take_pending(id))
                    && let Err(Ok(stream)) = reply.send(Ok(stream))
                {
                    drop(stream);
                }
            }
            StreamEvent::Data { id, data } => {
                if let Some(slot) = self.streams.get(&id) {
                    slot.data(data);
                }
            }
            StreamEvent::Credit { id, bytes } => {
                if let Some(slot) = self.streams.get(&id) {
                    slot.credit(bytes);
                }
            }
            StreamEvent::Finished { id } => {
                if let Some(slot) = self.streams.get(&id) {
                    slot.finished();
                }
            }
            StreamEvent::Reset { id, reason } => {
                if let Some(slot) = self.streams.remove(&id) {
                    slot.reset(reason);
                }
                if let Some(reply) = self.opening.remove(&id) {
                    let _ = reply.send(Err(ConnectError::Reset(reason)));
                }
            }
        }
    }

    fn incoming(&mut self, id: StreamId, from: PeerIdentity, service: ServiceName) {
        let now = Instant::now().into_std();
        let Some(listener) = self.listeners.get(&service) else {
            self.node.stream_reset(now, id, ResetReason::NoService);
            return;
        };
        let Some(commands) = self.command_tx.upgrade() else {
            return;
        };
        let pool = self.chunks.clone();
        let (slot, mut stream) = StreamSlot::new(id, from, service.clone(), commands, pool);
        stream.set_outbound(self.node.stream_outbound(id));
        self.streams.insert(id, slot);
        if listener.try_send(stream).is_err() {
            tracing::warn!(%service, "listener is not accepting; refusing stream");
            self.streams.remove(&id);
            self.node.stream_reset(now, id, ResetReason::NoService);
        }
    }

    fn take_pending(&mut self, id: StreamId) -> Option<MeshStream> {
        let peer = self.node.stream_peer(id).cloned();
        let outbound = self.node.stream_outbound(id);
        let mut stream = self.streams.get_mut(&id)?.take_pending(peer)?;
        stream.set_outbound(outbound);
        Some(stream)
    }
}

/// Lets a closed link's writer flush what is queued for at most [`CLOSE_FLUSH`] (not at all
/// for a stalled peer), then drops the socket and whatever is still queued.
fn retire(writer: Writer) {
    writer.reader.abort();
    drop(writer.tx);
    let mut task = writer.writer;
    if writer.stalled {
        task.abort();
        return;
    }
    tokio::spawn(async move {
        if tokio::time::timeout(CLOSE_FLUSH, &mut task).await.is_err() {
            task.abort();
        }
    });
}

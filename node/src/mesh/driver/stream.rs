//! [`MeshStream`]: a mesh stream as `AsyncRead + AsyncWrite`, and the owner task's slot for
//! it.
//!
//! Reads come from an [`Inbox`] that flow control bounds: the peer can have sent at most the
//! credit we granted, and we grant credit only as the application reads; the inbox gathers
//! small messages so that their number does not multiply what they hold. Writes
//! take credit from a shared counter that the owner tops up as the peer grants it; with no
//! credit, `poll_write` waits.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;

use super::handle::Command;
use super::inbox::{Chunk, Delivery, Inbox, inbox};
use crate::id::{NodeId, ServiceName};
use crate::mesh::message::ResetReason;
use crate::mesh::session::PeerIdentity;
use crate::mesh::stream::{ChunkPool, MAX_CHUNK, Outbound, StreamData, StreamId};

#[derive(Default)]
struct WriteState {
    credit: u64,
    waker: Option<Waker>,
    reset: Option<ResetReason>,
}

/// The owner task's end of one stream.
pub(super) struct StreamSlot {
    chunks: Delivery,
    write: Arc<Mutex<WriteState>>,
    /// The application's end, held until the stream is accepted (for streams we open).
    pending: Option<MeshStream>,
}

impl StreamSlot {
    /// A slot and the application's stream for it.
    pub(super) fn new(
        id: StreamId,
        peer: PeerIdentity,
        service: ServiceName,
        commands: mpsc::UnboundedSender<Command>,
        pool: ChunkPool,
    ) -> (Self, MeshStream) {
        let (tx, rx) = inbox();
        let write = Arc::new(Mutex::new(WriteState::default()));
        let stream = MeshStream {
            id,
            peer,
            service,
            commands,
            chunks: rx,
            current: Bytes::new(),
            deferred: None,
            unreported: 0,
            read_done: false,
            write: write.clone(),
            finished: false,
            pool,
            outbound: None,
        };
        let slot = Self {
            chunks: tx,
            write,
            pending: None,
        };
        (slot, stream)
    }

    /// A slot that holds its stream until the peer accepts; its identity is filled in
    /// then, from the session the stream was opened in.
    pub(super) fn pending(
        id: StreamId,
        node: NodeId,
        service: ServiceName,
        commands: mpsc::UnboundedSender<Command>,
        pool: ChunkPool,
    ) -> Self {
        let unproven = PeerIdentity {
            node,
            key: crate::keys::PublicKey::from_bytes([0; 32]),
            binding: crate::mesh::trust::Binding::FirstSeen,
        };
        let (mut slot, stream) = Self::new(id, unproven, service, commands, pool);
        slot.pending = Some(stream);
        slot
    }

    /// The accepted stream, with the peer's proven identity.
    pub(super) fn take_pending(&mut self, peer: Option<PeerIdentity>) -> Option<MeshStream> {
        let mut stream = self.pending.take()?;
        if let Some(peer) = peer {
            stream.peer = peer;
        }
        Some(stream)
    }

    pub(super) fn data(&self, data: Bytes) {
        self.chunks.data(data);
    }

    pub(super) fn finished(&self) {
        self.chunks.fin();
    }

    pub(super) fn credit(&self, bytes: u64) {
        let mut state = lock(&self.write);
        state.credit += bytes;
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
    }

    pub(super) fn reset(self, reason: ResetReason) {
        self.chunks.reset(reason);
        let mut state = lock(&self.write);
        state.reset = Some(reason);
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
    }
}

fn lock(m: &Mutex<WriteState>) -> std::sync::MutexGuard<'_, WriteState> {
    // The state is plain counters; a panic elsewhere cannot leave it inconsistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A reliable, ordered byte stream to a service on another node.
///
/// Reading returns EOF when the peer finishes, and an `io::ErrorKind::ConnectionReset` error
/// carrying a [`ResetReason`] when the stream dies (for example a link on its path went
/// down). `shutdown` finishes our direction. Dropping the stream before both directions have
/// finished resets it.
pub struct MeshStream {
    id: StreamId,
    peer: PeerIdentity,
    service: ServiceName,
    commands: mpsc::UnboundedSender<Command>,
    chunks: Inbox,
    current: Bytes,
    /// A Fin or Reset taken from `chunks` while filling a read that already had data; the
    /// next read reports it.
    deferred: Option<Chunk>,
    /// Bytes read but not yet reported to the owner as consumed (see [`CONSUMED_BATCH`]).
    unreported: usize,
    read_done: bool,
    write: Arc<Mutex<WriteState>>,
    finished: bool,
    /// The node's chunk buffers, which writes are copied into.
    pool: ChunkPool,
    /// Where writes are sealed, on this task (see `Outbound`); without it, the node seals.
    outbound: Option<Outbound>,
}

impl std::fmt::Debug for MeshStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshStream")
            .field("id", &self.id)
            .field("peer", &self.peer)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl MeshStream {
    /// The node at the other end.
    pub fn peer(&self) -> &NodeId {
        &self.peer.node
    }

    /// Who is at the other end, as its end-to-end session proved it: node id, key, and
    /// what binds them (with the node's groups when a certificate does).
    pub fn identity(&self) -> &PeerIdentity {
        &self.peer
    }

    /// The service the stream was opened to.
    pub fn service(&self) -> &ServiceName {
        &self.service
    }

    pub(super) fn set_outbound(&mut self, outbound: Option<Outbound>) {
        self.outbound = outbound;
    }

    /// Hands `data` to the node: sealed here when the stream has its `Outbound` (the node
    /// is only told when it has nothing of ours queued), as plaintext otherwise.
    fn hand_over(&self, data: StreamData) -> io::Result<()> {
        let command = match &self.outbound {
            Some(outbound) => match outbound.seal_data(data.into_encoded_with_lens()) {
                Ok(false) => return Ok(()),
                Ok(true) => Command::Flush { id: self.id },
                Err(_) => {
                    let reset = lock(&self.write).reset;
                    return Err(reset.map_or_else(
                        || io::Error::new(io::ErrorKind::BrokenPipe, "stream ended"),
                        reset_error,
                    ));
                }
            },
            None => Command::Send { id: self.id, data },
        };
        self.commands
            .send(command)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "mesh node stopped"))
    }
}

/// Read bytes reported to the owner in one `Consumed` command: far fewer commands than one
/// per read, and well under the quarter window at which the node grants credit.
const CONSUMED_BATCH: usize = 128 * 1024;

fn reset_error(reason: ResetReason) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, reason)
}

impl AsyncRead for MeshStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.current.is_empty() {
            if this.read_done {
                return Poll::Ready(Ok(()));
            }
            let chunk = match this.deferred.take() {
                Some(chunk) => Some(chunk),
                None => match this.chunks.poll_recv(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(chunk) => chunk,
                },
            };
            if let Some(result) = this.take(chunk) {
                return Poll::Ready(result);
            }
        }
        this.fill(buf);
        this.report_consumed();
        Poll::Ready(Ok(()))
    }
}

impl MeshStream {
    /// Makes `chunk` current, or ends reading; returns what the read must report instead of
    /// data, if anything.
    fn take(&mut self, chunk: Option<Chunk>) -> Option<io::Result<()>> {
        match chunk {
            Some(Chunk::Data(data)) => self.current = data,
            Some(Chunk::Fin) => self.read_done = true,
            Some(Chunk::Reset(reason)) => {
                self.read_done = true;
                return Some(Err(reset_error(reason)));
            }
            None => {
                self.read_done = true;
                return Some(Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "mesh node stopped",
                )));
            }
        }
        None
    }

    /// Copies `current` and then further chunks already queued into `buf` until it is full,
    /// so one read takes a burst rather than one 32 KiB chunk; a Fin or Reset met on the
    /// way waits for the next read.
    fn fill(&mut self, buf: &mut ReadBuf<'_>) {
        loop {
            let n = self.current.len().min(buf.remaining());
            buf.put_slice(&self.current[..n]);
            self.current.advance(n);
            self.unreported += n;
            if buf.remaining() == 0 || !self.current.is_empty() {
                return;
            }
            match self.chunks.try_recv() {
                Some(Chunk::Data(data)) => self.current = data,
                Some(other) => {
                    self.deferred = Some(other);
                    return;
                }
                None => return,
            }
        }
    }

    /// Tells the owner how much was read once a batch has piled up, or once everything
    /// received has been read. The second rule keeps a sender that waits for credit from
    /// stalling on bytes we have read but not reported, whatever the batch size.
    fn report_consumed(&mut self) {
        let drained = self.current.is_empty() && self.chunks.is_empty();
        if self.unreported >= CONSUMED_BATCH || (drained && self.unreported > 0) {
            let n = std::mem::take(&mut self.unreported);
            let _ = self.commands.send(Command::Consumed { id: self.id, n });
        }
    }
}

impl AsyncWrite for MeshStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.finished {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "stream already shut down",
            )));
        }
        let mut state = lock(&self.write);
        if let Some(reason) = state.reset {
            return Poll::Ready(Err(reset_error(reason)));
        }
        if state.credit == 0 {
            state.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(MAX_CHUNK * 4).min(state.credit as usize);
        state.credit -= n as u64;
        drop(state);
        // The one copy of the application's bytes, laid out for sealing as it is made.
        let data = StreamData::copy_pooled(&buf[..n], &self.pool);
        Poll::Ready(self.hand_over(data).map(|()| n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.finished {
            self.finished = true;
            let _ = self.commands.send(Command::Finish { id: self.id });
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for MeshStream {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Drop { id: self.id });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use bytes::Bytes;

    use super::super::inbox::GATHER_BELOW;
    use super::{MAX_CHUNK, PeerIdentity, StreamSlot, mpsc};
    use crate::heap::counting::live_bytes;
    use crate::id::ServiceName;
    use crate::keys::LinkKeypair;
    use crate::mesh::driver::{self, DriverConfig, MeshHandle, PeerTarget};
    use crate::mesh::message::CircuitId;
    use crate::mesh::node::MeshConfig;
    use crate::mesh::route::Cost;
    use crate::mesh::seal::{Opener, Sealer, SessionSecrets};
    use crate::mesh::stream::{ChunkPool, DEFAULT_WINDOW, Inner, StreamId};
    use crate::mesh::trust::Binding;
    use crate::mesh::trust::TrustEntry;

    fn config(id: &str, seed: u8, peer_seed: u8) -> MeshConfig {
        let trust = vec![TrustEntry {
            key: LinkKeypair::from_private([peer_seed; 32]).public(),
            node: None,
        }];
        MeshConfig::new(
            id.parse().unwrap(),
            LinkKeypair::from_private([seed; 32]),
            trust.into(),
            1,
        )
    }

    async fn pair() -> (MeshHandle, MeshHandle) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (b, _) = driver::start(
            config("b", 2, 1),
            DriverConfig::default(),
            vec![(listener, Cost::DEFAULT)],
            Vec::new(),
        );
        let peer = PeerTarget {
            host: "127.0.0.1".to_owned(),
            port,
            cost: Cost::DEFAULT,
        };
        let (a, _) = driver::start(
            config("a", 1, 2),
            DriverConfig::default(),
            Vec::new(),
            vec![peer],
        );
        let reachable = a.wait_reachable(b.id(), Duration::from_secs(10)).await;
        assert!(reachable.unwrap(), "b never became reachable");
        (a, b)
    }

    /// `payload` as a peer's data message becomes on arrival: sealed by the peer, opened
    /// here out of the link's buffer (shared with the frames around it, so copied: into a
    /// buffer of its own size when short, into one of `pool`'s chunk buffers from half a
    /// chunk up) and cut down to its bytes.
    fn received(
        sealer: &mut Sealer,
        opener: &mut Opener,
        pool: &ChunkPool,
        payload: &[u8],
    ) -> Bytes {
        let sealed = sealer.seal(Inner::Data(Bytes::copy_from_slice(payload)).encode());
        let link_buffer = sealed.clone();
        let opened = opener.open_pooled(sealed, pool).unwrap();
        drop(link_buffer);
        match Inner::decode_owned(opened) {
            Some(Inner::Data(data)) => data,
            other => panic!("not data: {other:?}"),
        }
    }

    /// Heap bytes held by a stream's queue after the peer sent its whole window (the most
    /// it may send unread) in messages of `size` bytes, and the reader read none.
    fn held_by_a_window_in_messages_of(size: usize) -> i64 {
        let secrets = |we_initiated| SessionSecrets {
            id: 1,
            initiator_to_responder: [1; 32],
            responder_to_initiator: [2; 32],
            we_initiated,
        };
        let circuit = CircuitId {
            opener: "a".parse().unwrap(),
            number: 1,
        };
        let (mut sealer, _) = secrets(true).circuit(&circuit);
        let (_, mut opener) = secrets(false).circuit(&circuit);
        let (commands, _commands) = mpsc::unbounded_channel();
        let peer = PeerIdentity {
            node: "a".parse().unwrap(),
            key: LinkKeypair::from_private([1; 32]).public(),
            binding: Binding::FirstSeen,
        };
        let service = ServiceName::new("sink").unwrap();
        let pool = ChunkPool::new();
        let (slot, stream) = StreamSlot::new(StreamId(1), peer, service, commands, pool.clone());
        let payload = vec![7u8; size];
        let before = live_bytes();
        for _ in 0..DEFAULT_WINDOW as usize / size {
            slot.data(received(&mut sealer, &mut opener, &pool, &payload));
        }
        let held = live_bytes() - before;
        drop((slot, stream));
        held
    }

    #[test]
    fn a_window_of_one_byte_messages_unread_holds_a_small_multiple_of_the_window() {
        let held = held_by_a_window_in_messages_of(1);
        let window = i64::from(DEFAULT_WINDOW);
        eprintln!(
            "{window} one-byte messages unread hold {held} bytes ({:.1} windows)",
            held as f64 / window as f64
        );
        assert!(
            held <= 3 * window,
            "{window} one-byte messages hold {held} bytes, over 3 windows of {window}"
        );
    }

    #[test]
    fn a_window_unread_holds_at_most_three_windows_whatever_the_message_size() {
        let window = i64::from(DEFAULT_WINDOW);
        for size in [100, 4096, GATHER_BELOW - 1, GATHER_BELOW, MAX_CHUNK] {
            let held = held_by_a_window_in_messages_of(size);
            eprintln!(
                "a window in {size}-byte messages unread holds {held} bytes ({:.2} windows)",
                held as f64 / window as f64
            );
            assert!(
                held <= 3 * window,
                "a window in {size}-byte messages holds {held} bytes"
            );
        }
    }

    /// Several windows' worth, so the sender stalls unless batched reads grant credit.
    const LEN: usize = 3 << 20;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delivers_every_byte_in_order_to_small_and_large_reads() {
        let (a, b) = pair().await;
        let service = ServiceName::new("sink").unwrap();
        let mut incoming = b.listen(&service).unwrap();
        let reader = tokio::spawn(async move {
            let mut stream = incoming.recv().await.unwrap();
            let mut got = Vec::with_capacity(LEN);
            let mut buf = vec![0u8; 200_000];
            for size in [1000, 200_000].into_iter().cycle() {
                let n = stream.read(&mut buf[..size]).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            stream.shutdown().await.unwrap();
            got
        });
        let data: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
        let mut stream = a.connect(b.id(), &service).await.unwrap();
        let send = async {
            stream.write_all(&data).await.unwrap();
            stream.shutdown().await.unwrap();
            reader.await.unwrap()
        };
        let got = tokio::time::timeout(Duration::from_secs(30), send)
            .await
            .expect("stream stalled");
        assert!(
            got == data,
            "received {} bytes, not the {LEN} sent",
            got.len()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_byte_writes_between_large_ones_arrive_in_order() {
        let (a, b) = pair().await;
        let service = ServiceName::new("sink").unwrap();
        let mut incoming = b.listen(&service).unwrap();
        let reader = tokio::spawn(async move {
            let mut stream = incoming.recv().await.unwrap();
            let mut got = Vec::new();
            stream.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut sent = Vec::new();
        let mut stream = a.connect(b.id(), &service).await.unwrap();
        let send = async {
            for round in 0..4u8 {
                for i in 0..5_000u32 {
                    let byte = [(i % 251) as u8 ^ round];
                    stream.write_all(&byte).await.unwrap();
                    sent.push(byte[0]);
                }
                let large = vec![round; 100_000];
                stream.write_all(&large).await.unwrap();
                sent.extend_from_slice(&large);
            }
            stream.shutdown().await.unwrap();
            reader.await.unwrap()
        };
        let got = tokio::time::timeout(Duration::from_secs(60), send)
            .await
            .expect("stream stalled");
        assert!(
            got == sent,
            "received {} bytes, not the {} sent",
            got.len(),
            sent.len()
        );
    }
}

//! [`MeshStream`]: a mesh stream as `AsyncRead + AsyncWrite`, and the owner task's slot for
//! it.
//!
//! Reads come from an unbounded channel that flow control bounds: the peer can have sent at
//! most the credit we granted, and we grant credit only as the application reads. Writes
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
use crate::id::{NodeId, ServiceName};
use crate::mesh::message::ResetReason;
use crate::mesh::stream::{MAX_CHUNK, StreamId};

enum Chunk {
    Data(Bytes),
    Fin,
    Reset(ResetReason),
}

#[derive(Default)]
struct WriteState {
    credit: u64,
    waker: Option<Waker>,
    reset: Option<ResetReason>,
}

/// The owner task's end of one stream.
pub(super) struct StreamSlot {
    chunks: mpsc::UnboundedSender<Chunk>,
    write: Arc<Mutex<WriteState>>,
    /// The application's end, held until the stream is accepted (for streams we open).
    pending: Option<MeshStream>,
}

impl StreamSlot {
    /// A slot and the application's stream for it.
    pub(super) fn new(
        id: StreamId,
        peer: NodeId,
        service: ServiceName,
        commands: mpsc::UnboundedSender<Command>,
    ) -> (Self, MeshStream) {
        let (tx, rx) = mpsc::unbounded_channel();
        let write = Arc::new(Mutex::new(WriteState::default()));
        let stream = MeshStream {
            id,
            peer,
            service,
            commands,
            chunks: rx,
            current: Bytes::new(),
            read_done: false,
            write: write.clone(),
            finished: false,
        };
        let slot = Self {
            chunks: tx,
            write,
            pending: None,
        };
        (slot, stream)
    }

    /// A slot that holds its stream until the peer accepts.
    pub(super) fn pending(
        id: StreamId,
        peer: NodeId,
        service: ServiceName,
        commands: mpsc::UnboundedSender<Command>,
    ) -> Self {
        let (mut slot, stream) = Self::new(id, peer, service, commands);
        slot.pending = Some(stream);
        slot
    }

    pub(super) fn take_pending(&mut self) -> Option<MeshStream> {
        self.pending.take()
    }

    pub(super) fn data(&self, data: Bytes) {
        let _ = self.chunks.send(Chunk::Data(data));
    }

    pub(super) fn finished(&self) {
        let _ = self.chunks.send(Chunk::Fin);
    }

    pub(super) fn credit(&self, bytes: u64) {
        let mut state = lock(&self.write);
        state.credit += bytes;
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
    }

    pub(super) fn reset(self, reason: ResetReason) {
        let _ = self.chunks.send(Chunk::Reset(reason));
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
    peer: NodeId,
    service: ServiceName,
    commands: mpsc::UnboundedSender<Command>,
    chunks: mpsc::UnboundedReceiver<Chunk>,
    current: Bytes,
    read_done: bool,
    write: Arc<Mutex<WriteState>>,
    finished: bool,
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
        &self.peer
    }

    /// The service the stream was opened to.
    pub fn service(&self) -> &ServiceName {
        &self.service
    }
}

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
            match this.chunks.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Chunk::Data(data))) => this.current = data,
                Poll::Ready(Some(Chunk::Fin)) => this.read_done = true,
                Poll::Ready(Some(Chunk::Reset(reason))) => {
                    this.read_done = true;
                    return Poll::Ready(Err(reset_error(reason)));
                }
                Poll::Ready(None) => {
                    this.read_done = true;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "mesh node stopped",
                    )));
                }
            }
        }
        let n = this.current.len().min(buf.remaining());
        buf.put_slice(&this.current[..n]);
        this.current.advance(n);
        let _ = this.commands.send(Command::Consumed { id: this.id, n });
        Poll::Ready(Ok(()))
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
        let data = Bytes::copy_from_slice(&buf[..n]);
        if self
            .commands
            .send(Command::Send { id: self.id, data })
            .is_err()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "mesh node stopped",
            )));
        }
        Poll::Ready(Ok(n))
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

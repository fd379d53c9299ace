//! The results stream's cap: passes a job's writes through until its output limit, then
//! fails them and says so.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

/// Passes writes through until `cap` bytes, then fails them and raises `exceeded`.
pub(super) struct CappedWriter {
    inner: Box<dyn AsyncWrite + Send + Unpin>,
    written: AtomicU64,
    cap: u64,
    pub(super) exceeded: Arc<AtomicBool>,
}

impl CappedWriter {
    pub(super) fn new(inner: Box<dyn AsyncWrite + Send + Unpin>, cap: u64) -> Self {
        Self {
            inner,
            written: AtomicU64::new(0),
            cap,
            exceeded: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl AsyncWrite for CappedWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = self.written.load(Ordering::Relaxed);
        if written + buf.len() as u64 > self.cap {
            self.exceeded.store(true, Ordering::Relaxed);
            return Poll::Ready(Err(std::io::Error::other("output limit exceeded")));
        }
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            self.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

//! A link's socket writer task: writes what the owner queues, gathering the buffers already
//! waiting into one vectored write (one system call for a burst of transport messages).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Most buffers gathered into one write.
const MAX_GATHER: usize = 16;

/// Writes every queued buffer in order until the queue closes or the socket fails; counts
/// written bytes off `queued`.
pub(super) async fn write_loop<W: AsyncWrite + Unpin>(
    mut write: W,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    queued: Arc<AtomicUsize>,
) {
    let mut pending = VecDeque::new();
    while let Some(bytes) = rx.recv().await {
        pending.push_back(bytes);
        while pending.len() < MAX_GATHER {
            match rx.try_recv() {
                Ok(more) => pending.push_back(more),
                Err(_) => break,
            }
        }
        if write_gathered(&mut write, &mut pending, &queued)
            .await
            .is_err()
        {
            break;
        }
    }
    let _ = write.shutdown().await;
}

/// Writes all of `pending`, as many buffers per call as the writer takes.
async fn write_gathered<W: AsyncWrite + Unpin>(
    write: &mut W,
    pending: &mut VecDeque<Bytes>,
    queued: &AtomicUsize,
) -> io::Result<()> {
    while !pending.is_empty() {
        let mut n = {
            let slices: Vec<IoSlice<'_>> = pending.iter().map(|b| IoSlice::new(b)).collect();
            write.write_vectored(&slices).await?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        queued.fetch_sub(n, Ordering::Relaxed);
        while n > 0 {
            let Some(front) = pending.front_mut() else {
                break;
            };
            if n >= front.len() {
                n -= front.len();
                pending.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A writer that takes at most `limit` bytes per call (of the first buffer only, unless
    /// `vectored`), recording everything.
    struct Trickle {
        got: Vec<u8>,
        limit: usize,
        vectored: bool,
        calls: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.limit);
            self.got.extend_from_slice(&buf[..n]);
            self.calls += 1;
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            if !self.vectored {
                let first = bufs
                    .iter()
                    .find(|b| !b.is_empty())
                    .map_or(&[][..], |b| &b[..]);
                return self.poll_write(cx, first);
            }
            let mut left = self.limit;
            for b in bufs {
                let n = b.len().min(left);
                self.got.extend_from_slice(&b[..n]);
                left -= n;
            }
            self.calls += 1;
            Poll::Ready(Ok(self.limit - left))
        }

        fn is_write_vectored(&self) -> bool {
            self.vectored
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn gathered_buffers_are_written_whole_and_in_order_through_partial_writes() {
        for (limit, vectored) in [(7, true), (7, false), (1 << 20, true), (1 << 20, false)] {
            let mut writer = Trickle {
                got: Vec::new(),
                limit,
                vectored,
                calls: 0,
            };
            let parts: Vec<Bytes> = (0..5u8)
                .map(|i| Bytes::from(vec![i; 10 + usize::from(i) * 3]))
                .collect();
            let total: usize = parts.iter().map(Bytes::len).sum();
            let queued = AtomicUsize::new(total);
            let mut pending: VecDeque<Bytes> = parts.iter().cloned().collect();
            write_gathered(&mut writer, &mut pending, &queued)
                .await
                .unwrap();
            assert_eq!(
                writer.got,
                parts.concat(),
                "limit {limit}, vectored {vectored}"
            );
            assert_eq!(queued.load(Ordering::Relaxed), 0);
            if vectored && limit > total {
                assert_eq!(writer.calls, 1, "one call for the whole burst");
            }
        }
    }
}

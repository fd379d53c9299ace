//! A link's socket reader task: reads into buffers the owner receives as they are (no copy
//! out of a scratch buffer), reusing a few of them while the peer streams.

use std::collections::VecDeque;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use super::SocketEvent;
use crate::mesh::link::LinkId;

/// Size of one socket read.
pub(super) const READ_CHUNK: usize = 64 * 1024;

/// Buffers kept for reuse: the owner usually still holds part of the last read (a partial
/// message) when the next one comes, so one buffer alone would be fresh memory every read.
const MAX_SPARE: usize = 3;

/// A read shorter than this means the peer is not streaming: the spare buffers go, so an
/// idle link holds at most its current buffer.
const QUIET_READ: usize = 4 * 1024;

/// Reads until EOF or an error, handing each read to the owner.
pub(super) async fn read_loop<R: AsyncRead + Unpin>(
    link: LinkId,
    mut read: R,
    tx: mpsc::Sender<SocketEvent>,
) {
    let mut buffers = ReadBuffers::default();
    let why = loop {
        let buf = buffers.room();
        match read.read_buf(buf).await {
            Ok(0) => break "connection closed by peer".to_owned(),
            Ok(n) => {
                let bytes = buffers.take(n);
                if tx.send(SocketEvent::Bytes(link, bytes)).await.is_err() {
                    return;
                }
            }
            Err(e) => break e.to_string(),
        }
    };
    let _ = tx.send(SocketEvent::Closed(link, why)).await;
}

/// The buffer being read into and emptied handles of earlier ones, reclaimed once the
/// owner has dropped everything it took from them.
#[derive(Debug, Default)]
struct ReadBuffers {
    current: BytesMut,
    spare: VecDeque<BytesMut>,
}

impl ReadBuffers {
    /// The buffer to read into, with room for [`READ_CHUNK`] bytes.
    fn room(&mut self) -> &mut BytesMut {
        if self.current.capacity() - self.current.len() < READ_CHUNK
            && !self.current.try_reclaim(READ_CHUNK)
        {
            let free = self
                .spare
                .iter_mut()
                .position(|b| b.try_reclaim(READ_CHUNK));
            let next = match free.and_then(|i| self.spare.remove(i)) {
                Some(buf) => buf,
                None => BytesMut::with_capacity(READ_CHUNK),
            };
            self.spare
                .push_back(std::mem::replace(&mut self.current, next));
            while self.spare.len() > MAX_SPARE {
                self.spare.pop_front();
            }
        }
        &mut self.current
    }

    /// The `n` bytes just read, for the owner.
    fn take(&mut self, n: usize) -> BytesMut {
        if n < QUIET_READ {
            self.spare.clear();
        }
        self.current.split()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    /// Reads `n` bytes as the loop does; returns them and where they lie.
    fn read(buffers: &mut ReadBuffers, n: usize) -> (BytesMut, usize) {
        let buf = buffers.room();
        buf.put_bytes(1, n);
        let bytes = buffers.take(n);
        let at = bytes.as_ptr() as usize;
        (bytes, at)
    }

    #[test]
    fn a_streaming_link_reads_into_reused_buffers_while_the_owner_holds_the_last_read() {
        let mut buffers = ReadBuffers::default();
        let mut seen = std::collections::HashSet::new();
        let mut held = None;
        for _ in 0..50 {
            let (bytes, at) = read(&mut buffers, READ_CHUNK);
            seen.insert(at);
            // The owner keeps each read until the next arrives (a partial message).
            held = Some(bytes);
        }
        drop(held);
        assert!(seen.len() <= 2, "{} buffers for 50 reads", seen.len());
    }

    #[test]
    fn a_quiet_read_lets_the_spare_buffers_go() {
        let mut buffers = ReadBuffers::default();
        let _held: Vec<_> = (0..4).map(|_| read(&mut buffers, READ_CHUNK)).collect();
        assert!(!buffers.spare.is_empty());
        let _small = read(&mut buffers, 100);
        assert!(buffers.spare.is_empty());
    }
}

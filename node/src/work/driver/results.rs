//! A unit's results file as it grows: the writer side ([`ResultsSink`], which announces each
//! write to that unit's followers only and remembers the first write error; [`CappedSink`],
//! which holds a remote unit's mirror to a cap) and the reader side (a follower that tails
//! the file from an offset until the unit has ended).

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::watch;

/// What a unit's followers watch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Progress {
    /// Bytes written to the results so far.
    pub(crate) size: u64,
    /// The unit has ended: no more output will come.
    pub(crate) ended: bool,
}

/// The first error a results writer hit, shared with whoever decides the unit's outcome.
pub(crate) type WriteFailure = Arc<Mutex<Option<String>>>;

/// Appends to a unit's results file, announcing each write to the unit's followers.
///
/// Writes go to the OS before they are announced (a plain `write(2)` into the page cache, as
/// short as the chunks the handler writes): announcing a write still buffered in a background
/// thread would wake followers before the bytes can be read, and the next wake-up might be
/// the unit's end.
pub(crate) struct ResultsSink {
    file: std::fs::File,
    progress: watch::Sender<Progress>,
    failure: WriteFailure,
}

impl ResultsSink {
    /// Opens `path` for appending; `size` is what it already holds.
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub(crate) async fn open(
        path: &std::path::Path,
        progress: watch::Sender<Progress>,
    ) -> io::Result<(Self, WriteFailure)> {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || Self::open_blocking(&path, progress))
            .await
            .map_err(io::Error::other)?
    }

    /// [`ResultsSink::open`] on a thread that may block (its file IO is done in place).
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub(crate) fn open_blocking(
        path: &std::path::Path,
        progress: watch::Sender<Progress>,
    ) -> io::Result<(Self, WriteFailure)> {
        let file = std::fs::OpenOptions::new().append(true).open(path)?;
        let size = file.metadata()?.len();
        progress.send_modify(|p| p.size = size);
        let failure = WriteFailure::default();
        Ok((
            Self {
                file,
                progress,
                failure: failure.clone(),
            },
            failure,
        ))
    }

    fn record(&self, e: &io::Error) {
        let mut failure = self
            .failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        failure.get_or_insert_with(|| e.to_string());
    }
}

impl AsyncWrite for ResultsSink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        use std::io::Write;
        match self.file.write(buf) {
            Ok(n) => {
                let grown = n as u64;
                self.progress.send_modify(|p| p.size += grown);
                Poll::Ready(Ok(n))
            }
            Err(e) => {
                self.record(&e);
                Poll::Ready(Err(e))
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A write past a [`CappedSink`]'s cap, carried inside the `io::Error` it returns so that
/// the mirror's failure can name the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the results reached their cap of {cap} bytes")]
pub(crate) struct OverCap {
    /// The cap, in bytes.
    pub(crate) cap: u64,
}

impl OverCap {
    /// The cap `e` was returned for, if a [`CappedSink`] returned it.
    pub(crate) fn of(e: &io::Error) -> Option<Self> {
        e.get_ref()?.downcast_ref::<Self>().copied()
    }
}

/// Passes writes on until `cap` bytes are held (counting what was there before), writes
/// what fits of the one that crosses it, then refuses with [`OverCap`]: a node that streams
/// a mirrored unit's results is not trusted to stop, and they would fill the disk.
pub(crate) struct CappedSink<W> {
    inner: W,
    /// Bytes held so far, including what the file had when the mirror (re)started.
    held: u64,
    cap: u64,
}

impl<W> CappedSink<W> {
    /// `inner`, which already holds `held` bytes, capped at `cap`.
    pub(crate) fn new(inner: W, held: u64, cap: u64) -> Self {
        Self { inner, held, cap }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for CappedSink<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let room = self.cap.saturating_sub(self.held);
        if room == 0 && !buf.is_empty() {
            let cap = self.cap;
            return Poll::Ready(Err(io::Error::other(OverCap { cap })));
        }
        let fits = usize::try_from(room).map_or(buf.len(), |room| room.min(buf.len()));
        let written = Pin::new(&mut self.inner).poll_write(cx, &buf[..fits]);
        if let Poll::Ready(Ok(n)) = written {
            self.held += n as u64;
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The error recorded in `failure`, if any.
pub(crate) fn failure_of(failure: &WriteFailure) -> Option<String> {
    failure
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// Output bytes per read of a follower.
const READ_CHUNK: usize = 64 * 1024;

/// A reader of the unit's results from `offset` until it has ended and all was read.
pub(crate) fn follow(
    path: PathBuf,
    offset: u64,
    progress: watch::Receiver<Progress>,
) -> DuplexStream {
    let (reader, writer) = tokio::io::duplex(256 * 1024);
    tokio::spawn(tail(path, offset, progress, writer));
    reader
}

async fn tail(
    path: PathBuf,
    offset: u64,
    mut progress: watch::Receiver<Progress>,
    mut out: DuplexStream,
) {
    // Small first: most units' results are a few bytes (see `readbuf`).
    let mut buf = crate::work::readbuf::ReadBuf::new(READ_CHUNK);
    let Ok((file, len)) = open_at(path, offset).await else {
        return;
    };
    let mut file = tokio::fs::File::from_std(file);
    let mut at = offset;
    // Read at once if the file holds more than the offset (output no progress announced
    // yet, such as a re-attached job's), then only once the progress announces more than
    // was read, or the end: each read is a trip to the blocking pool, and one that finds
    // nothing new wakes two threads for nothing. (Output written after the open is
    // announced.)
    let mut caught_up = len <= offset;
    loop {
        // Read the state before the data: output written before the end is then always
        // seen before the follower stops.
        let Progress { size, ended } = *progress.borrow_and_update();
        if !caught_up || ended || size > at {
            let Ok(n) = file.read(buf.space()).await else {
                return;
            };
            if n > 0 {
                if out.write_all(buf.filled(n)).await.is_err() {
                    return;
                }
                buf.read_done(n);
                at += n as u64;
                continue;
            }
            if ended {
                let _ = out.shutdown().await;
                return;
            }
            caught_up = true;
        }
        // Only this unit's writes and end wake this follower.
        if progress.changed().await.is_err() {
            // The unit is gone (released): what was read is all there is.
            let _ = out.shutdown().await;
            return;
        }
    }
}

/// Opens the results at `path` positioned at `offset`, in one trip to the blocking pool;
/// the file and its length then.
async fn open_at(path: PathBuf, offset: u64) -> io::Result<(std::fs::File, u64)> {
    tokio::task::spawn_blocking(move || {
        use std::io::Seek as _;
        let mut file = std::fs::File::open(&path)?;
        let len = file.metadata()?.len();
        file.seek(io::SeekFrom::Start(offset))?;
        Ok((file, len))
    })
    .await
    .map_err(io::Error::other)?
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Reads exactly `n` bytes from the follower, or fails after 10 s.
    async fn read_n(reader: &mut DuplexStream, n: usize) -> Vec<u8> {
        let mut got = vec![0; n];
        tokio::time::timeout(Duration::from_secs(10), reader.read_exact(&mut got))
            .await
            .expect("the follower delivers in time")
            .unwrap();
        got
    }

    #[tokio::test]
    async fn a_follower_delivers_unannounced_output_at_once_then_what_is_announced_until_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout");
        // Output no progress announced (a re-attached job's, written before the restart).
        std::fs::write(&path, b"before").unwrap();
        let (progress, watched) = watch::channel(Progress::default());
        let mut reader = follow(path.clone(), 2, watched);
        assert_eq!(read_n(&mut reader, 4).await, b"fore");
        let (mut sink, _failure) = ResultsSink::open(&path, progress.clone()).await.unwrap();
        sink.write_all(b" and after").await.unwrap();
        assert_eq!(read_n(&mut reader, 10).await, b" and after");
        progress.send_modify(|p| p.ended = true);
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut rest))
            .await
            .expect("the follower stops at the end")
            .unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn a_capped_sink_keeps_bytes_up_to_its_cap_then_refuses_naming_it() {
        let mut held = Vec::new();
        let mut sink = CappedSink::new(&mut held, 4, 10);
        sink.write_all(b"abc").await.unwrap();
        let e = sink.write_all(b"defghij").await.unwrap_err();
        assert_eq!(OverCap::of(&e), Some(OverCap { cap: 10 }), "{e}");
        let e = sink.write_all(b"k").await.unwrap_err();
        assert_eq!(OverCap::of(&e), Some(OverCap { cap: 10 }), "{e}");
        // 4 bytes were there before; 6 more fit.
        assert_eq!(held, b"abcdef");
    }

    #[tokio::test]
    async fn a_follower_of_an_empty_file_delivers_what_is_announced_until_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout");
        std::fs::write(&path, b"").unwrap();
        let (progress, watched) = watch::channel(Progress::default());
        let mut reader = follow(path.clone(), 0, watched);
        let (mut sink, _failure) = ResultsSink::open(&path, progress.clone()).await.unwrap();
        sink.write_all(b"hello\n").await.unwrap();
        assert_eq!(read_n(&mut reader, 6).await, b"hello\n");
        sink.write_all(b"bye\n").await.unwrap();
        progress.send_modify(|p| p.ended = true);
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut rest))
            .await
            .expect("the follower stops at the end")
            .unwrap();
        assert_eq!(rest, b"bye\n");
    }
}

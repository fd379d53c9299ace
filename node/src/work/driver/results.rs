//! A unit's results file as it grows: the writer side ([`ResultsSink`], which announces each
//! write to that unit's followers only and remembers the first write error) and the reader
//! side (a follower that tails the file from an offset until the unit has ended).

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt, DuplexStream};
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
    let Ok(mut file) = tokio::fs::File::open(&path).await else {
        return;
    };
    if file.seek(io::SeekFrom::Start(offset)).await.is_err() {
        return;
    }
    loop {
        // Read the state before the data: output written before the end is then always
        // seen before the follower stops.
        let ended = progress.borrow_and_update().ended;
        let Ok(n) = file.read(buf.space()).await else {
            return;
        };
        if n > 0 {
            if out.write_all(buf.filled(n)).await.is_err() {
                return;
            }
            buf.read_done(n);
            continue;
        }
        if ended {
            let _ = out.shutdown().await;
            return;
        }
        // Only this unit's writes and end wake this follower.
        if progress.changed().await.is_err() {
            // The unit is gone (released): what was read is all there is.
            let _ = out.shutdown().await;
            return;
        }
    }
}

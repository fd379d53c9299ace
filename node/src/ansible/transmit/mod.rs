//! Writes the transmit stream (`ansible-runner transmit`): the kwargs line, then
//! `{"zipfile": N}`, the private data dir's zip in padded base64 without line breaks, and
//! `{"eof": true}` glued to the last base64 character.
//!
//! N must precede the data, so [`Transmit::prepare`] first walks the dir and deflates what
//! pays (already-compressed files are stored; see `compress`), which fixes the zip's exact
//! length; [`Transmit::send`] then writes the zip while it builds it, stored files straight
//! from disk. No temporary file, and memory stays flat whatever the payload's size.
//!
//! A file that changes while it is sent fails the transmit with [`TransmitError::Changed`],
//! and the stream then ends without its central directory and without `{"eof": true}`: the
//! real worker refuses such a stream ("Failed to extract private data directory") rather
//! than run the job on half a dir.
//!
//! To a node with a content cache the client sends a manifest instead (`manifest`): the
//! kwargs line and each entry's hash; then only the contents the node lacks (`contents`),
//! from which the node assembles this same stream with this same zip writer.

mod compress;
mod contents;
mod emit;
mod layout;
pub mod manifest;
mod plan;
mod source;
#[cfg(test)]
pub(super) mod tests;

use std::io;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

pub use self::contents::{ContentPlan, Held};
use self::emit::{Zip, ZipOut};
use super::kwargs::Kwargs;

/// Raw bytes per base64 chunk: a multiple of 3, so chunks encode without inner padding.
const CHUNK_LEN: usize = 3 * 32 * 1024;

/// Encoded chunks in flight between the thread writing the zip and the stream.
const CHUNKS_IN_FLIGHT: usize = 4;

/// The line after the zip.
const EOF_LINE: &[u8] = b"{\"eof\": true}\n";

/// A failure to write the transmit stream.
#[derive(Debug, thiserror::Error)]
pub enum TransmitError {
    /// A directory or file of the private data dir could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A path that is not UTF-8 cannot be named in the zip as the reference names it.
    #[error("path is not UTF-8: {path}")]
    NonUtf8 {
        /// The path.
        path: PathBuf,
    },
    /// A path longer than a zip entry name can be (64 KiB).
    #[error("path too long for a zip entry: {path}")]
    NameTooLong {
        /// The path.
        path: PathBuf,
    },
    /// A file changed (size, content or identity) between the moment the zip's length was
    /// fixed and the moment it was sent.
    #[error(
        "{path} changed while it was being sent (the stream was cut off; run again once \
         nothing writes into the private data dir)"
    )]
    Changed {
        /// The file.
        path: PathBuf,
    },
    /// The deflate stream failed (a bug in the compressor).
    #[error("deflate failed: {0}")]
    Deflate(String),
    /// The thread writing the zip failed.
    #[error("the zip writer stopped: {0}")]
    Worker(String),
    /// Writing to the output failed (e.g. the worker went away).
    #[error("writing the transmit stream")]
    Write(#[source] io::Error),
}

/// A transmit stream ready to send: the kwargs line and the zip's layout.
#[derive(Debug)]
pub struct Transmit {
    kwargs_line: String,
    zip: Zip,
    /// The thread of each file `stat` made while assembling it, for tests to see how often
    /// and where the files were looked at.
    #[cfg(test)]
    pub(crate) stat_threads: Vec<std::thread::ThreadId>,
}

impl Transmit {
    /// Walks `private_data_dir` and deflates what pays, fixing the stream's length. Runs
    /// on a blocking thread.
    ///
    /// # Errors
    ///
    /// [`TransmitError`] when the dir cannot be read.
    pub async fn prepare(private_data_dir: &Path, kwargs: &Kwargs) -> Result<Self, TransmitError> {
        let dir = private_data_dir.to_owned();
        let zip = tokio::task::spawn_blocking(move || {
            let entries = plan::walk(&dir)?;
            let data = compress::choose(&entries, compress::Holding::DEFAULT)?;
            Ok::<_, TransmitError>(Zip::new(entries, data))
        })
        .await
        .map_err(|join| TransmitError::Worker(join.to_string()))??;
        Ok(Self {
            kwargs_line: kwargs.to_line(),
            zip,
            #[cfg(test)]
            stat_threads: Vec::new(),
        })
    }

    /// The whole stream's exact length in bytes.
    pub fn stream_len(&self) -> u64 {
        self.kwargs_line.len() as u64
            + self.zipfile_line().len() as u64
            + self.zip.len().div_ceil(3) * 4
            + EOF_LINE.len() as u64
    }

    fn zipfile_line(&self) -> String {
        format!("{{\"zipfile\": {}}}\n", self.zip.len())
    }

    /// Writes the whole stream to `out`, flushed. The zip is read, encoded and written
    /// as it is built; on failure the stream stops short of `{"eof": true}`.
    ///
    /// # Errors
    ///
    /// [`TransmitError`] when a file cannot be read or changed, or `out` fails.
    pub async fn send(self, mut out: impl AsyncWrite + Unpin) -> Result<(), TransmitError> {
        let head = format!("{}{}", self.kwargs_line, self.zipfile_line());
        out.write_all(head.as_bytes())
            .await
            .map_err(TransmitError::Write)?;
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(CHUNKS_IN_FLIGHT);
        let zip = self.zip;
        let writer = tokio::task::spawn_blocking(move || {
            let mut encoder = Base64Out::new(tx);
            zip.write(&mut encoder)?;
            encoder.finish()
        });
        while let Some(chunk) = rx.recv().await {
            // On a write error the receiver drops, which stops the writer thread.
            out.write_all(&chunk).await.map_err(TransmitError::Write)?;
        }
        writer
            .await
            .map_err(|join| TransmitError::Worker(join.to_string()))??;
        out.write_all(EOF_LINE)
            .await
            .map_err(TransmitError::Write)?;
        out.flush().await.map_err(TransmitError::Write)
    }
}

/// Writes the whole transmit stream for `private_data_dir` with `kwargs` to `out`, flushed.
///
/// # Errors
///
/// [`TransmitError`] when the dir cannot be read, a file changes while it is sent, or
/// `out` fails.
pub async fn transmit(
    private_data_dir: &Path,
    kwargs: &Kwargs,
    out: impl AsyncWrite + Unpin,
) -> Result<(), TransmitError> {
    Transmit::prepare(private_data_dir, kwargs)
        .await?
        .send(out)
        .await
}

/// Encodes the zip's bytes into base64 chunks for the stream.
struct Base64Out {
    raw: Vec<u8>,
    tx: mpsc::Sender<Vec<u8>>,
}

impl Base64Out {
    fn new(tx: mpsc::Sender<Vec<u8>>) -> Self {
        Self {
            raw: Vec::with_capacity(CHUNK_LEN),
            tx,
        }
    }

    fn send(&mut self) -> Result<(), TransmitError> {
        let mut encoded = String::with_capacity(self.raw.len().div_ceil(3) * 4);
        STANDARD.encode_string(&self.raw, &mut encoded);
        self.raw.clear();
        self.tx
            .blocking_send(encoded.into_bytes())
            .map_err(|_| TransmitError::Write(io::ErrorKind::BrokenPipe.into()))
    }

    /// Sends what is left, padded.
    fn finish(mut self) -> Result<(), TransmitError> {
        if self.raw.is_empty() {
            return Ok(());
        }
        self.send()
    }
}

impl ZipOut for Base64Out {
    fn put(&mut self, mut bytes: &[u8]) -> Result<(), TransmitError> {
        while !bytes.is_empty() {
            let take = (CHUNK_LEN - self.raw.len()).min(bytes.len());
            self.raw.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.raw.len() == CHUNK_LEN {
                self.send()?;
            }
        }
        Ok(())
    }
}

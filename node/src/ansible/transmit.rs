//! Writes the transmit stream (`ansible-runner transmit`): the kwargs line, then
//! `{"zipfile": N}`, the private data dir's zip in padded base64 without line breaks, and
//! `{"eof": true}` glued to the last base64 character.
//!
//! The zip goes to an anonymous temp file first (N must precede the data), then streams out
//! in chunks; a large private data dir is never held in memory.

use std::io::{self, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::archive::{self, ArchiveError};
use super::kwargs::Kwargs;

/// Raw bytes per base64 chunk: a multiple of 3, so chunks encode without inner padding.
const CHUNK_LEN: usize = 3 * 16 * 1024;

/// A failure to write the transmit stream.
#[derive(Debug, thiserror::Error)]
pub enum TransmitError {
    /// The private data dir could not be zipped.
    #[error("cannot pack private data dir {dir}")]
    Pack {
        /// The private data dir.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: ArchiveError,
    },
    /// The temp file holding the zip failed.
    #[error("temp file for the zip")]
    TempFile(#[source] io::Error),
    /// Writing to the output failed (e.g. the worker went away).
    #[error("writing the transmit stream")]
    Write(#[source] io::Error),
}

/// Writes the whole transmit stream for `private_data_dir` with `kwargs` to `out`, flushed.
///
/// # Errors
///
/// [`TransmitError`] when the dir cannot be read, the temp file fails, or `out` fails.
pub async fn transmit(
    private_data_dir: &Path,
    kwargs: &Kwargs,
    mut out: impl AsyncWrite + Unpin,
) -> Result<(), TransmitError> {
    out.write_all(kwargs.to_line().as_bytes())
        .await
        .map_err(TransmitError::Write)?;
    out.flush().await.map_err(TransmitError::Write)?;
    let dir = private_data_dir.to_owned();
    let (zip, size) = tokio::task::spawn_blocking(move || pack_to_temp(&dir))
        .await
        .map_err(|join| TransmitError::TempFile(io::Error::other(join)))??;
    out.write_all(format!("{{\"zipfile\": {size}}}\n").as_bytes())
        .await
        .map_err(TransmitError::Write)?;
    stream_base64(zip, &mut out).await?;
    out.write_all(b"{\"eof\": true}\n")
        .await
        .map_err(TransmitError::Write)?;
    out.flush().await.map_err(TransmitError::Write)
}

/// Zips `dir` into an anonymous temp file, rewound, with the zip's size.
fn pack_to_temp(dir: &Path) -> Result<(std::fs::File, u64), TransmitError> {
    let mut file = tempfile::tempfile().map_err(TransmitError::TempFile)?;
    let size = archive::pack_dir(dir, &mut file).map_err(|source| TransmitError::Pack {
        dir: dir.to_owned(),
        source,
    })?;
    file.seek(SeekFrom::Start(0))
        .map_err(TransmitError::TempFile)?;
    Ok((file, size))
}

/// Copies `file` to `out` as one unbroken padded base64 run.
async fn stream_base64(
    file: std::fs::File,
    out: &mut (impl AsyncWrite + Unpin),
) -> Result<(), TransmitError> {
    let mut file = tokio::fs::File::from_std(file);
    let mut raw = vec![0u8; CHUNK_LEN];
    let mut encoded = String::with_capacity(CHUNK_LEN / 3 * 4);
    loop {
        let filled = read_full(&mut file, &mut raw)
            .await
            .map_err(TransmitError::TempFile)?;
        if filled == 0 {
            return Ok(());
        }
        encoded.clear();
        STANDARD.encode_string(&raw[..filled], &mut encoded);
        out.write_all(encoded.as_bytes())
            .await
            .map_err(TransmitError::Write)?;
        if filled < raw.len() {
            return Ok(());
        }
    }
}

/// Fills `buf` unless the file ends first; returns how much was read.
async fn read_full(file: &mut tokio::fs::File, buf: &mut [u8]) -> io::Result<usize> {
    use tokio::io::AsyncReadExt;
    let mut filled = 0;
    while filled < buf.len() {
        let n = file.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

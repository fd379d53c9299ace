//! The zip itself: laid out from the plan and the compression choices (so its exact length
//! is known first), then written in order into a [`ZipOut`], stored files straight from
//! disk.
//!
//! Synchronous file IO (callers run it on a blocking thread). A file that differs from the
//! plan stops the writing with [`TransmitError::Changed`] before the central directory: a
//! zip cut short has no end records, so no reader takes it for a whole one.

use super::TransmitError;
use super::compress::{self, Data};
use super::layout::{self, Method, Record};
use super::plan::{Body, Entry};
use super::source;

/// Where the zip's bytes go.
pub(super) trait ZipOut {
    /// Takes the next bytes of the zip.
    ///
    /// # Errors
    ///
    /// Whatever stops the writing (the reader went away).
    fn put(&mut self, bytes: &[u8]) -> Result<(), TransmitError>;
}

impl ZipOut for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), TransmitError> {
        self.extend_from_slice(bytes);
        Ok(())
    }
}

/// A zip ready to be written: every entry with its data choice and its records.
#[derive(Debug)]
pub(super) struct Zip {
    entries: Vec<Entry>,
    data: Vec<Data>,
    /// One per entry; CRCs of stored files are filled in as they are written.
    records: Vec<Record>,
    /// Where the central directory starts.
    directory_at: u64,
    /// The whole zip's length in bytes.
    len: u64,
}

impl Zip {
    /// Lays out `entries` with their `data` choices.
    pub(super) fn new(entries: Vec<Entry>, data: Vec<Data>) -> Self {
        let mut offset = 0;
        let mut records = Vec::with_capacity(entries.len());
        for (entry, data) in entries.iter().zip(&data) {
            let record = record(entry, data, offset);
            offset += record.span();
            records.push(record);
        }
        let directory_len: u64 = records
            .iter()
            .map(|r| r.central_header().len() as u64)
            .sum();
        let end = layout::end_records(records.len() as u64, directory_len, offset);
        Self {
            entries,
            data,
            records,
            directory_at: offset,
            len: offset + directory_len + end.len() as u64,
        }
    }

    /// The zip's exact length in bytes.
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// How many entries are stored, held deflated, and deflated while sent (for tests).
    #[cfg(test)]
    pub(super) fn data(&self) -> &[Data] {
        &self.data
    }

    /// Writes the whole zip into `out`.
    ///
    /// # Errors
    ///
    /// [`TransmitError::Changed`] when a file differs from the plan, [`TransmitError::Read`]
    /// when one cannot be read, or what `out` fails with.
    pub(super) fn write(mut self, out: &mut impl ZipOut) -> Result<(), TransmitError> {
        for index in 0..self.entries.len() {
            self.write_entry(index, out)?;
        }
        let mut directory_len = 0;
        for record in &self.records {
            let header = record.central_header();
            directory_len += header.len() as u64;
            out.put(&header)?;
        }
        let end = layout::end_records(self.records.len() as u64, directory_len, self.directory_at);
        out.put(&end)
    }

    fn write_entry(&mut self, index: usize, out: &mut impl ZipOut) -> Result<(), TransmitError> {
        let record = &mut self.records[index];
        out.put(&record.local_header())?;
        match (&self.entries[index].body, &self.data[index]) {
            (Body::Dir, _) => {}
            (Body::Link { target }, _) => out.put(target.as_bytes())?,
            (Body::Bytes(bytes), _) => out.put(bytes)?,
            (Body::File { path, stamp }, Data::Held { bytes, .. }) => {
                // Read when planned; still the same file now, or the transmit says so.
                drop(source::open(path, stamp)?);
                out.put(bytes)?;
            }
            (Body::File { path, stamp }, Data::Again { compressed, crc }) => {
                let mut left = *compressed;
                let again = compress::deflate(path, stamp, |piece| {
                    left = left
                        .checked_sub(piece.len() as u64)
                        .ok_or_else(|| changed(path))?;
                    out.put(piece)
                })?;
                if again.compressed != *compressed || again.crc != *crc {
                    return Err(changed(path));
                }
            }
            (Body::File { path, stamp }, Data::Stored) => {
                let mut crc = crc32fast::Hasher::new();
                source::read_all(path, stamp, |piece| {
                    crc.update(piece);
                    out.put(piece)
                })?;
                record.crc = crc.finalize();
            }
        }
        out.put(&record.descriptor())
    }
}

fn changed(path: &std::path::Path) -> TransmitError {
    TransmitError::Changed {
        path: path.to_owned(),
    }
}

/// The records of `entry` stored as `data` at `offset` (a stored file's CRC is still 0).
fn record(entry: &Entry, data: &Data, offset: u64) -> Record {
    let size = entry.size();
    let (method, crc, compressed) = match (&entry.body, data) {
        (Body::File { .. }, Data::Held { bytes, crc }) => {
            (Method::Deflated, *crc, bytes.len() as u64)
        }
        (Body::File { .. }, Data::Again { compressed, crc }) => {
            (Method::Deflated, *crc, *compressed)
        }
        (Body::Link { target }, _) => (Method::Stored, crc32fast::hash(target.as_bytes()), size),
        (Body::Bytes(bytes), _) => (Method::Stored, crc32fast::hash(bytes), size),
        _ => (Method::Stored, 0, size),
    };
    Record {
        name: entry.name.clone(),
        mode: entry.mode,
        time: entry.time,
        method,
        descriptor: matches!((&entry.body, data), (Body::File { .. }, Data::Stored)),
        crc,
        size,
        compressed,
        offset,
    }
}

//! The entry count a zip declares, read from its end records before the zip reader loads
//! the central directory.

use std::io::{Read, Seek, SeekFrom};

/// The entry count the zip's end-of-central-directory record declares (the largest, if
/// several records are found), read before the central directory is parsed, so a zip
/// declaring millions of entries is refused before they are loaded. `None` when no record
/// is found (the zip reader then reports the zip as malformed).
pub(super) fn declared_entries<R: Read + Seek>(input: &mut R) -> Option<u64> {
    const EOCD: &[u8] = b"PK\x05\x06";
    let len = input.seek(SeekFrom::End(0)).ok()?;
    let tail_len = len.min(22 + 0xffff);
    input.seek(SeekFrom::Start(len - tail_len)).ok()?;
    let mut tail = vec![0u8; usize::try_from(tail_len).ok()?];
    input.read_exact(&mut tail).ok()?;
    input.rewind().ok()?;
    let mut most = None;
    for at in (0..tail.len().saturating_sub(21)).rev() {
        if &tail[at..at + 4] != EOCD {
            continue;
        }
        let count = u64::from(u16::from_le_bytes([tail[at + 10], tail[at + 11]]));
        let count = if count == 0xffff {
            zip64_entries(input, &tail, at).unwrap_or(count)
        } else {
            count
        };
        most = Some(most.map_or(count, |m: u64| m.max(count)));
    }
    input.rewind().ok()?;
    most
}

/// The entry count of the zip64 end record that the locator before the EOCD at `at` points
/// to.
fn zip64_entries<R: Read + Seek>(input: &mut R, tail: &[u8], at: usize) -> Option<u64> {
    let locator = tail.get(at.checked_sub(20)?..at)?;
    if &locator[..4] != b"PK\x06\x07" {
        return None;
    }
    let offset = u64::from_le_bytes(locator[8..16].try_into().ok()?);
    input.seek(SeekFrom::Start(offset)).ok()?;
    let mut record = [0u8; 40];
    input.read_exact(&mut record).ok()?;
    if &record[..4] != b"PK\x06\x06" {
        return None;
    }
    Some(u64::from_le_bytes(record[32..40].try_into().ok()?))
}

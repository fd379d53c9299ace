//! The bytes of the zip's records (local headers, data descriptors, the central directory
//! and the end records, zip64 where a size, an offset or the entry count needs it), and so
//! the exact length of a zip before any of it is written.
//!
//! Pure: no IO. A record's length never depends on its CRC, so the planner measures the
//! records it will later write with the real CRCs (APPNOTE 6.3.10).

/// A size, offset or count field that does not fit its 32-bit (or 16-bit) slot and lives in
/// a zip64 field instead.
const SATURATED_32: u64 = 0xFFFF_FFFF;
const SATURATED_16: u64 = 0xFFFF;

/// Version made by: Unix (3), spec 4.5 (zip64).
const MADE_BY: u16 = (3 << 8) | 45;
/// Version needed: 2.0 (deflate, directories) or 4.5 (zip64).
const NEEDS_20: u16 = 20;
const NEEDS_45: u16 = 45;

/// General purpose flag: CRC and sizes follow the data in a data descriptor.
const FLAG_DESCRIPTOR: u16 = 1 << 3;
/// General purpose flag: the name is UTF-8 (readers take it as CP437 otherwise).
const FLAG_UTF8: u16 = 1 << 11;

/// How an entry's data is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Method {
    /// As is.
    Stored,
    /// Raw deflate.
    Deflated,
}

/// A DOS date and time, as zip headers carry them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct DosTime {
    pub(super) date: u16,
    pub(super) time: u16,
}

/// Everything one entry's records say.
#[derive(Debug, Clone)]
pub(super) struct Record {
    /// The entry's name (directories end with `/`).
    pub(super) name: String,
    /// `st_mode` (type and permission bits), stored in the external attributes.
    pub(super) mode: u32,
    pub(super) time: DosTime,
    pub(super) method: Method,
    /// CRC and sizes follow the data (a stored file read while it is sent).
    pub(super) descriptor: bool,
    pub(super) crc: u32,
    /// Uncompressed size.
    pub(super) size: u64,
    /// Size of the data as written.
    pub(super) compressed: u64,
    /// Where the local header starts.
    pub(super) offset: u64,
}

impl Record {
    /// Whether the local header and the descriptor carry zip64 sizes.
    fn is_zip64(&self) -> bool {
        self.size >= SATURATED_32 || self.compressed >= SATURATED_32
    }

    fn flags(&self) -> u16 {
        let mut flags = 0;
        if self.descriptor {
            flags |= FLAG_DESCRIPTOR;
        }
        if !self.name.is_ascii() {
            flags |= FLAG_UTF8;
        }
        flags
    }

    fn needs(&self) -> u16 {
        if self.is_zip64() { NEEDS_45 } else { NEEDS_20 }
    }

    fn method_code(&self) -> u16 {
        match self.method {
            Method::Stored => 0,
            Method::Deflated => 8,
        }
    }

    fn external_attributes(&self) -> u32 {
        const DOS_DIRECTORY: u32 = 0x10;
        let dos = if self.name.ends_with('/') {
            DOS_DIRECTORY
        } else {
            0
        };
        (self.mode << 16) | dos
    }

    /// The local file header. With a descriptor, CRC and sizes are zero here.
    pub(super) fn local_header(&self) -> Vec<u8> {
        let (crc, size, compressed) = if self.descriptor {
            (0, 0, 0)
        } else {
            (self.crc, self.size, self.compressed)
        };
        let mut extra = Vec::new();
        let (size32, compressed32) = if self.is_zip64() {
            // APPNOTE 4.5.3: in a local header the zip64 field holds both sizes.
            put_u16(&mut extra, 0x0001);
            put_u16(&mut extra, 16);
            put_u64(&mut extra, size);
            put_u64(&mut extra, compressed);
            (u32::MAX, u32::MAX)
        } else {
            (narrow(size), narrow(compressed))
        };
        let mut out = Vec::with_capacity(30 + self.name.len() + extra.len());
        put_u32(&mut out, 0x0403_4b50);
        put_u16(&mut out, self.needs());
        put_u16(&mut out, self.flags());
        put_u16(&mut out, self.method_code());
        put_u16(&mut out, self.time.time);
        put_u16(&mut out, self.time.date);
        put_u32(&mut out, crc);
        put_u32(&mut out, compressed32);
        put_u32(&mut out, size32);
        put_u16(&mut out, name_len(&self.name));
        put_u16(&mut out, narrow16(extra.len() as u64));
        out.extend_from_slice(self.name.as_bytes());
        out.extend_from_slice(&extra);
        out
    }

    /// The data descriptor after the data (empty without one).
    pub(super) fn descriptor(&self) -> Vec<u8> {
        if !self.descriptor {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(24);
        put_u32(&mut out, 0x0807_4b50);
        put_u32(&mut out, self.crc);
        if self.is_zip64() {
            put_u64(&mut out, self.compressed);
            put_u64(&mut out, self.size);
        } else {
            put_u32(&mut out, narrow(self.compressed));
            put_u32(&mut out, narrow(self.size));
        }
        out
    }

    /// The central directory header.
    pub(super) fn central_header(&self) -> Vec<u8> {
        // APPNOTE 4.5.3: only the fields that overflow, in this order.
        let mut zip64 = Vec::new();
        let mut field = |value: u64| {
            if value >= SATURATED_32 {
                put_u64(&mut zip64, value);
                u32::MAX
            } else {
                narrow(value)
            }
        };
        let size32 = field(self.size);
        let compressed32 = field(self.compressed);
        let offset32 = field(self.offset);
        let mut extra = Vec::new();
        if !zip64.is_empty() {
            put_u16(&mut extra, 0x0001);
            put_u16(&mut extra, narrow16(zip64.len() as u64));
            extra.extend_from_slice(&zip64);
        }
        let mut out = Vec::with_capacity(46 + self.name.len() + extra.len());
        put_u32(&mut out, 0x0201_4b50);
        put_u16(&mut out, MADE_BY);
        put_u16(
            &mut out,
            if extra.is_empty() {
                self.needs()
            } else {
                NEEDS_45
            },
        );
        put_u16(&mut out, self.flags());
        put_u16(&mut out, self.method_code());
        put_u16(&mut out, self.time.time);
        put_u16(&mut out, self.time.date);
        put_u32(&mut out, self.crc);
        put_u32(&mut out, compressed32);
        put_u32(&mut out, size32);
        put_u16(&mut out, name_len(&self.name));
        put_u16(&mut out, narrow16(extra.len() as u64));
        put_u16(&mut out, 0); // comment length
        put_u16(&mut out, 0); // disk number start
        put_u16(&mut out, 0); // internal attributes
        put_u32(&mut out, self.external_attributes());
        put_u32(&mut out, offset32);
        out.extend_from_slice(self.name.as_bytes());
        out.extend_from_slice(&extra);
        out
    }

    /// Bytes of this entry before the central directory: header, data, descriptor.
    pub(super) fn span(&self) -> u64 {
        self.local_header().len() as u64 + self.compressed + self.descriptor().len() as u64
    }
}

/// The end records after a central directory of `entries` entries, `size` bytes long,
/// starting at `offset`: zip64 end record and locator when a field overflows, then the end
/// of central directory record.
pub(super) fn end_records(entries: u64, size: u64, offset: u64) -> Vec<u8> {
    let zip64 = entries >= SATURATED_16 || size >= SATURATED_32 || offset >= SATURATED_32;
    let mut out = Vec::new();
    if zip64 {
        let record_at = offset + size;
        put_u32(&mut out, 0x0606_4b50);
        put_u64(&mut out, 44); // the record's size after this field
        put_u16(&mut out, MADE_BY);
        put_u16(&mut out, NEEDS_45);
        put_u32(&mut out, 0); // this disk
        put_u32(&mut out, 0); // the disk with the central directory
        put_u64(&mut out, entries);
        put_u64(&mut out, entries);
        put_u64(&mut out, size);
        put_u64(&mut out, offset);
        put_u32(&mut out, 0x0706_4b50);
        put_u32(&mut out, 0); // the disk with the zip64 end record
        put_u64(&mut out, record_at);
        put_u32(&mut out, 1); // disks in all
    }
    let entries16 = narrow16(entries.min(SATURATED_16));
    put_u32(&mut out, 0x0605_4b50);
    put_u16(&mut out, 0);
    put_u16(&mut out, 0);
    put_u16(&mut out, entries16);
    put_u16(&mut out, entries16);
    put_u32(&mut out, narrow(size.min(SATURATED_32)));
    put_u32(&mut out, narrow(offset.min(SATURATED_32)));
    put_u16(&mut out, 0); // comment length
    out
}

/// A value known to be below 2^32 (callers saturate first).
fn narrow(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

fn narrow16(value: u64) -> u16 {
    u16::try_from(value).unwrap_or(u16::MAX)
}

/// Names are checked against [`MAX_NAME_LEN`] when the plan is made.
fn name_len(name: &str) -> u16 {
    narrow16(name.len() as u64)
}

/// The longest entry name a zip header can carry, in bytes.
pub(super) const MAX_NAME_LEN: usize = 0xFFFF;

fn put_u16(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

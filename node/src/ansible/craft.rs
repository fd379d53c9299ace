//! Test support: zips built by hand, so that sizes can lie, modes can be anything and data
//! can be a deflate bomb, as a compromised worker would send them.

/// One entry of a hand-built zip (so sizes and data can lie or be bombs).
pub(super) struct RawEntry<'a> {
    pub(super) name: &'a str,
    /// 0 stored, 8 deflated.
    pub(super) method: u16,
    pub(super) data: &'a [u8],
    pub(super) declared: u32,
    pub(super) crc: u32,
    pub(super) mode: u32,
}

impl<'a> RawEntry<'a> {
    pub(super) fn stored(name: &'a str, data: &'a [u8], mode: u32) -> Self {
        Self {
            name,
            method: 0,
            data,
            declared: u32::try_from(data.len()).expect("small"),
            crc: crc32(data),
            mode,
        }
    }
}

/// A zip of `entries`, as Python's zipfile writes one on Unix (32-bit sizes, no extras).
pub(super) fn raw_zip(entries: &[RawEntry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for entry in entries {
        let offset = u32::try_from(out.len()).expect("small zip");
        let packed = u32::try_from(entry.data.len()).expect("small entry");
        let name = entry.name.as_bytes();
        let name_len = u16::try_from(name.len()).expect("short name");
        let common = |buf: &mut Vec<u8>| {
            buf.extend(20u16.to_le_bytes()); // version needed
            buf.extend(0u16.to_le_bytes()); // flags
            buf.extend(entry.method.to_le_bytes());
            buf.extend(0u16.to_le_bytes()); // time
            buf.extend(0x21u16.to_le_bytes()); // date: 1980-01-01
            buf.extend(entry.crc.to_le_bytes());
            buf.extend(packed.to_le_bytes());
            buf.extend(entry.declared.to_le_bytes());
            buf.extend(name_len.to_le_bytes());
            buf.extend(0u16.to_le_bytes()); // extra length
        };
        out.extend(b"PK\x03\x04");
        common(&mut out);
        out.extend(name);
        out.extend(entry.data);
        central.extend(b"PK\x01\x02");
        central.extend((3u16 << 8 | 20).to_le_bytes()); // made by Unix
        common(&mut central);
        central.extend([0u8; 6]); // comment length, disk, internal attributes
        central.extend((entry.mode << 16).to_le_bytes());
        central.extend(offset.to_le_bytes());
        central.extend(name);
    }
    let cd_offset = u32::try_from(out.len()).expect("small zip");
    let count = u16::try_from(entries.len()).expect("few entries");
    out.extend(&central);
    out.extend(b"PK\x05\x06");
    out.extend([0u8; 4]);
    out.extend(count.to_le_bytes());
    out.extend(count.to_le_bytes());
    out.extend(u32::try_from(central.len()).expect("small").to_le_bytes());
    out.extend(cd_offset.to_le_bytes());
    out.extend([0u8; 2]);
    out
}

/// LSB-first bit writer for a deflate stream.
#[derive(Default)]
struct Bits {
    out: Vec<u8>,
    used: u32,
}

impl Bits {
    /// `count` bits of `value`, least significant first (headers, extra bits).
    fn int(&mut self, value: u32, count: u32) {
        for i in 0..count {
            self.bit((value >> i) & 1);
        }
    }

    /// A Huffman code, most significant bit first, as deflate stores codes.
    fn code(&mut self, code: &str) {
        for c in code.bytes() {
            self.bit(u32::from(c == b'1'));
        }
    }

    fn bit(&mut self, bit: u32) {
        if self.used.is_multiple_of(8) {
            self.out.push(0);
        }
        if bit == 1 {
            *self.out.last_mut().expect("pushed") |= 1 << (self.used % 8);
        }
        self.used += 1;
    }
}

/// A raw deflate stream of `len` zero bytes at the format's best ratio (about 1032:1):
/// one literal zero, then length-258 distance-1 copies coded in one bit each.
pub(super) fn deflate_zeros(len: u64) -> Vec<u8> {
    let copies = (len - 1) / 258;
    assert_eq!(1 + copies * 258, len, "len must be 1 + 258k");
    let mut bits = Bits::default();
    bits.int(1, 1); // final block
    bits.int(2, 2); // dynamic Huffman codes
    bits.int(29, 5); // 286 literal/length codes
    bits.int(0, 5); // 1 distance code
    bits.int(14, 4); // 18 code-length codes
    // Code-length code lengths in the format's order 16,17,18,0,8,7,9,6,10,5,11,4,12,3,13,2,14,1:
    // symbol 18 (a run of zeros) gets 1 bit, symbols 1 and 2 get 2 bits.
    for len in [0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 2] {
        bits.int(len, 3);
    }
    // Code lengths: literal 0 -> 2, 1..=255 -> 0, 256 (end) -> 2, 257..=284 -> 0,
    // 285 (length 258) -> 1, distance 0 -> 1. Codes: 18 = "0", 1 = "10", 2 = "11".
    bits.code("11");
    bits.code("0");
    bits.int(127, 7); // 138 zeros
    bits.code("0");
    bits.int(106, 7); // 117 zeros
    bits.code("11");
    bits.code("0");
    bits.int(17, 7); // 28 zeros
    bits.code("10");
    bits.code("10");
    // Literal/length codes: 285 = "0", 0 = "10", 256 = "11"; distance 0 = "0".
    bits.code("10");
    for _ in 0..copies {
        bits.code("00");
    }
    bits.code("11");
    bits.out
}

/// CRC-32 (zip's), bit by bit: only for small test data.
pub(super) fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

//! The record format of the structured targets: `tag: u8`, `len: u16` (little-endian),
//! then `len` bytes (fewer if the input ends first). Mutations keep most records whole,
//! so a seed made of real frames stays mostly meaningful while being bent.

/// One step of a structured input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op<'a> {
    /// What to do (each target maps tags onto its own steps, modulo their number).
    pub tag: u8,
    /// Its argument.
    pub data: &'a [u8],
}

/// Reads [`Op`]s off an input.
#[derive(Debug, Clone)]
pub struct Ops<'a> {
    rest: &'a [u8],
}

impl<'a> Ops<'a> {
    /// The ops of `input`.
    pub fn new(input: &'a [u8]) -> Self {
        Self { rest: input }
    }
}

impl<'a> Iterator for Ops<'a> {
    type Item = Op<'a>;

    fn next(&mut self) -> Option<Op<'a>> {
        let (&tag, rest) = self.rest.split_first()?;
        let (len, rest) = match rest {
            [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), rest),
            _ => (0, &[][..]),
        };
        let len = len.min(rest.len());
        let (data, rest) = rest.split_at(len);
        self.rest = rest;
        Some(Op { tag, data })
    }
}

/// Writes ops in the format [`Ops`] reads (for seeds).
#[derive(Debug, Clone, Default)]
pub struct OpsWriter {
    bytes: Vec<u8>,
}

impl OpsWriter {
    /// An empty input.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one op.
    ///
    /// # Panics
    /// If `data` is longer than 65535 bytes (no seed is).
    pub fn op(mut self, tag: u8, data: &[u8]) -> Self {
        let len = u16::try_from(data.len()).expect("a seed op fits 64 KiB");
        self.bytes.push(tag);
        self.bytes.extend_from_slice(&len.to_le_bytes());
        self.bytes.extend_from_slice(data);
        self
    }

    /// The input.
    pub fn finish(self) -> Vec<u8> {
        self.bytes
    }
}

/// A little reader for the fields inside an op's bytes: what is missing reads as zero.
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    /// Fields of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { rest: data }
    }

    /// One byte, or 0.
    pub fn u8(&mut self) -> u8 {
        match self.rest.split_first() {
            Some((&b, rest)) => {
                self.rest = rest;
                b
            }
            None => 0,
        }
    }

    /// Two bytes little-endian, or what is left of them.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    /// Eight bytes little-endian, or what is left of them.
    pub fn u64(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        for b in &mut bytes {
            *b = self.u8();
        }
        u64::from_le_bytes(bytes)
    }

    /// Everything left.
    pub fn rest(self) -> &'a [u8] {
        self.rest
    }
}

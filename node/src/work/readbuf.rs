//! [`ReadBuf`]: the buffer a per-unit byte stream (a results follower, a results stream to a
//! peer, a payload on its way to a remote node) reads into. It starts small and grows only
//! while reads fill it, up to the stream's chunk size.
//!
//! Why: a node runs many short units at once, each with its streams. A fixed 64–256 KiB
//! buffer per stream, zero-filled and held for the unit's whole life, made each in-flight
//! unit cost hundreds of KiB of heap that a 6-byte job never used. Those blocks, freed in
//! other threads' malloc arenas between long-lived small allocations, left the arenas
//! fragmented: the node's idle resident memory grew with the number of jobs it had run.
//! A stream with a lot to say still reaches the full chunk after a few reads.

/// A read buffer that doubles while reads fill it, from [`ReadBuf::START`] to a ceiling.
#[derive(Debug)]
pub struct ReadBuf {
    buf: Vec<u8>,
    max: usize,
}

impl ReadBuf {
    /// The first size (or `max`, if smaller).
    pub const START: usize = 4096;

    /// A buffer that grows up to `max` bytes (at least one byte).
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        Self {
            buf: vec![0; Self::START.min(max)],
            max,
        }
    }

    /// Where the next read goes: the whole buffer.
    pub fn space(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// The first `n` bytes read.
    pub fn filled(&self, n: usize) -> &[u8] {
        &self.buf[..n.min(self.buf.len())]
    }

    /// Records that the last read returned `n` bytes: a read that filled the buffer doubles
    /// it (up to the ceiling) for the next one.
    pub fn read_done(&mut self, n: usize) {
        if n >= self.buf.len() && self.buf.len() < self.max {
            let len = (self.buf.len() * 2).min(self.max);
            self.buf.resize(len, 0);
        }
    }

    /// The buffer's size now.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::ReadBuf;

    #[test]
    fn a_buffer_starts_small_and_short_reads_never_grow_it() {
        let mut buf = ReadBuf::new(64 * 1024);
        assert_eq!(buf.capacity(), ReadBuf::START);
        for _ in 0..100 {
            buf.space()[..6].copy_from_slice(b"hello\n");
            assert_eq!(buf.filled(6), b"hello\n");
            buf.read_done(6);
        }
        assert_eq!(buf.capacity(), ReadBuf::START);
    }

    #[test]
    fn full_reads_double_the_buffer_up_to_its_ceiling_and_no_further() {
        let max = 64 * 1024;
        let mut buf = ReadBuf::new(max);
        let mut sizes = vec![buf.capacity()];
        for _ in 0..10 {
            let n = buf.space().len();
            buf.read_done(n);
            sizes.push(buf.capacity());
        }
        assert_eq!(
            &sizes[..6],
            &[4096, 8192, 16384, 32768, 65536, 65536],
            "{sizes:?}"
        );
        assert!(sizes.iter().all(|&s| s <= max));
        // A ceiling under the start, and a zero one, still give a usable buffer.
        assert_eq!(ReadBuf::new(100).capacity(), 100);
        assert_eq!(ReadBuf::new(0).capacity(), 1);
    }
}

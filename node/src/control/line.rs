//! Request-line framing on a control connection.
//!
//! Owns splitting the incoming byte stream into lines without losing what follows them:
//! bytes read past a newline stay in [`LineReader`]'s buffer and are handed, first, to
//! whatever reads the connection next (a `work submit` payload, later). Receptor reads one
//! byte per syscall to get the same guarantee; a buffer that is never dropped is cheaper.

use tokio::io::{self, AsyncBufReadExt, AsyncRead, BufReader};

/// Longest request line the server accepts, in bytes (the line ending not counted).
///
/// Requests are short commands; 64 KiB leaves room for long JSON submit parameters while
/// bounding what a misbehaving client can make us buffer.
pub const MAX_REQUEST_LINE: usize = 64 * 1024;

/// How a call to [`LineReader::read_line`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineEnd {
    /// A `\n` ended the line; more may follow.
    Newline,
    /// The stream ended. The line holds whatever came after the last newline (maybe
    /// nothing); Receptor still runs such a final unterminated command.
    Eof,
    /// The line passed the length limit. What was read of it is discarded up to the limit;
    /// the connection should be closed.
    TooLong,
}

/// Reads lines from a stream without ever losing the bytes after them.
///
/// Writes go straight to the stream through [`LineReader::get_mut`]; only reads are
/// buffered.
#[derive(Debug)]
pub struct LineReader<S> {
    /// Holds bytes read past the last line; dropped only with `self` or handed on by
    /// [`LineReader::into_payload_reader`].
    inner: BufReader<S>,
    max_len: usize,
}

/// What reads a connection after its request lines: yields the buffered leftover first,
/// then the rest of the stream.
pub type PayloadReader<S> = BufReader<S>;

impl<S: AsyncRead + Unpin> LineReader<S> {
    /// Wraps `stream`, accepting lines up to [`MAX_REQUEST_LINE`] bytes.
    pub fn new(stream: S) -> Self {
        Self::with_max_len(stream, MAX_REQUEST_LINE)
    }

    /// Wraps `stream`, accepting lines up to `max_len` bytes.
    pub fn with_max_len(stream: S, max_len: usize) -> Self {
        Self {
            inner: BufReader::new(stream),
            max_len,
        }
    }

    /// Reads one line into `line` (cleared first), dropping `\r` bytes and the `\n`.
    ///
    /// Never consumes a byte after the `\n`.
    ///
    /// # Errors
    /// Errors from the underlying stream.
    pub async fn read_line(&mut self, line: &mut Vec<u8>) -> io::Result<LineEnd> {
        line.clear();
        loop {
            let available = self.inner.fill_buf().await?;
            if available.is_empty() {
                return Ok(LineEnd::Eof);
            }
            let newline = available.iter().position(|&b| b == b'\n');
            let take = newline.map_or(available.len(), |i| i + 1);
            let room = self.max_len.saturating_sub(line.len());
            let content = available[..take]
                .iter()
                .filter(|&&b| b != b'\r' && b != b'\n');
            let before = line.len();
            line.extend(content.take(room.saturating_add(1)));
            let overflow = line.len() - before > room;
            self.inner.consume(take);
            if overflow {
                line.truncate(self.max_len);
                return Ok(LineEnd::TooLong);
            }
            if newline.is_some() {
                return Ok(LineEnd::Newline);
            }
        }
    }

    /// The buffered reader, for a payload that follows a request line: buffered bytes come
    /// first. The session goes on reading lines after it.
    pub fn reader(&mut self) -> &mut BufReader<S> {
        &mut self.inner
    }

    /// The stream, for writing replies. Reading from it directly would skip buffered bytes.
    pub fn get_mut(&mut self) -> &mut S {
        self.inner.get_mut()
    }

    /// Bytes already read from the stream but not yet returned as a line.
    pub fn buffered(&self) -> &[u8] {
        self.inner.buffer()
    }

    /// Hands the connection to a payload reader, buffered leftover first.
    pub fn into_payload_reader(self) -> PayloadReader<S> {
        self.inner
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn lines_of(input: &[u8], max_len: usize) -> Vec<(Vec<u8>, LineEnd)> {
        let mut reader = LineReader::with_max_len(input, max_len);
        let mut out = Vec::new();
        loop {
            let mut line = Vec::new();
            let end = reader.read_line(&mut line).await.unwrap();
            out.push((line, end));
            if end != LineEnd::Newline {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn splits_lines_and_strips_carriage_returns() {
        let got = lines_of(b"status\r\n\nping a\r\ntail", 100).await;
        let want: Vec<(Vec<u8>, LineEnd)> = vec![
            (b"status".to_vec(), LineEnd::Newline),
            (b"".to_vec(), LineEnd::Newline),
            (b"ping a".to_vec(), LineEnd::Newline),
            (b"tail".to_vec(), LineEnd::Eof),
        ];
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn rejects_overlong_line() {
        let got = lines_of(b"12345\nabcdefg\n", 5).await;
        assert_eq!(got[0], (b"12345".to_vec(), LineEnd::Newline));
        assert_eq!(got[1].1, LineEnd::TooLong);
    }

    #[tokio::test]
    async fn leftover_bytes_go_to_the_payload_reader() {
        let (mut client, server) = io::duplex(64);
        client.write_all(b"work submit\npayload-").await.unwrap();
        let mut reader = LineReader::new(server);
        let mut line = Vec::new();
        assert_eq!(reader.read_line(&mut line).await.unwrap(), LineEnd::Newline);
        assert_eq!(line, b"work submit");
        client.write_all(b"rest").await.unwrap();
        drop(client);
        let mut payload = Vec::new();
        let mut rest = reader.into_payload_reader();
        rest.read_to_end(&mut payload).await.unwrap();
        assert_eq!(payload, b"payload-rest");
    }

    proptest! {
        #[test]
        fn lines_rejoin_to_the_input(input in proptest::collection::vec(
            prop_oneof![Just(b'\n'), Just(b'a'), Just(b'b')], 0..200)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let got = rt.block_on(lines_of(&input, usize::MAX));
            let joined: Vec<Vec<u8>> = got.into_iter().map(|(l, _)| l).collect();
            prop_assert_eq!(joined.join(&b'\n'), input);
        }
    }
}

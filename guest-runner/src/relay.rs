//! The relay: one single-threaded poll loop that moves bytes between the job's streams and a
//! child's, in both directions at once, until the child has exited and its output is drained.
//!
//! It never writes all the input and then reads the output: a child whose stdout pipe is
//! full stops reading its stdin, and both sides would wait forever. Instead every round
//! waits on all interesting pollables with one `wasi:io/poll.poll` and then makes only
//! non-blocking calls (`read`, `check-write`, `write`, `flush`).
//!
//! The decisions live in the pure [`Pipe`] and [`Lines`], which do no IO and are unit-tested
//! on the host; [`run`] is the thin driver that calls the streams.

use crate::bindings::warren::worker::job_io::{self, Level};
use crate::bindings::warren::worker::process::{Child, ExitStatus, Signal};
use crate::bindings::wasi::io::poll::{self, Pollable};
use crate::bindings::wasi::io::streams::{InputStream, OutputStream, StreamError};

/// Largest single read, in bytes. 64 KiB is Linux's default pipe capacity, so one read can
/// empty a full pipe, and it bounds each pipe's buffer (a pipe reads only when empty).
const CHUNK: u64 = 64 * 1024;

/// Longest stderr line logged as one entry, in bytes. Longer lines are split, so a child
/// that never writes a newline cannot grow the guest's memory without bound.
pub(crate) const MAX_LINE: usize = 4096;

/// One direction of the relay (payload → child stdin, or child stdout → results), without
/// IO.
///
/// It holds at most one read's worth of bytes and reads only when that buffer is empty, so
/// a slow sink slows the source down instead of growing memory. Every write is followed by
/// a flush, so bytes reach the far side promptly; the pipe is done only when the last flush
/// has completed. If the sink closes, the rest of the source is read and dropped, so the
/// writer on the other side never blocks.
#[derive(Debug, Default)]
pub(crate) struct Pipe {
    /// Bytes read from the source that the sink has not accepted yet.
    buf: Vec<u8>,
    /// The source reported end of stream.
    source_ended: bool,
    /// The sink is gone (closed, failed, or never existed); bytes are discarded.
    sink_closed: bool,
    /// A flush was requested and the sink has not yet shown that it completed.
    flush_pending: bool,
}

/// What a [`Pipe`] waits for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// The source to become readable.
    Source,
    /// The sink to accept bytes, or to finish the last flush.
    Sink,
    /// Nothing: the pipe is finished and its streams can be dropped (closing the sink).
    Done,
}

impl Pipe {
    /// What the pipe waits for next.
    pub(crate) fn poll_wait(&self) -> Wait {
        if self.sink_closed {
            return if self.source_ended {
                Wait::Done
            } else {
                Wait::Source
            };
        }
        if !self.buf.is_empty() {
            Wait::Sink
        } else if !self.source_ended {
            Wait::Source
        } else if self.flush_pending {
            Wait::Sink
        } else {
            Wait::Done
        }
    }

    /// The source produced `bytes`.
    pub(crate) fn handle_read(&mut self, bytes: Vec<u8>) {
        if self.sink_closed {
            return;
        }
        if self.buf.is_empty() {
            self.buf = bytes;
        } else {
            self.buf.extend_from_slice(&bytes);
        }
    }

    /// The source reported end of stream (or failed, which ends it too).
    pub(crate) fn handle_source_end(&mut self) {
        self.source_ended = true;
    }

    /// The sink is closed or failed: drop what is buffered and discard the rest.
    pub(crate) fn handle_sink_closed(&mut self) {
        self.sink_closed = true;
        self.buf = Vec::new();
        self.flush_pending = false;
    }

    /// The sink has room (`check-write` gave a non-zero permit), which also means any earlier
    /// flush has completed. Returns the bytes to write now: at most `permit`, possibly none.
    pub(crate) fn handle_writable(&mut self, permit: u64) -> &[u8] {
        self.flush_pending = false;
        let len = usize::try_from(permit).map_or(self.buf.len(), |p| p.min(self.buf.len()));
        &self.buf[..len]
    }

    /// The first `len` bytes of the buffer were written and a flush was requested.
    pub(crate) fn handle_written(&mut self, len: usize) {
        self.buf.drain(..len.min(self.buf.len()));
        self.flush_pending = true;
    }
}

/// Splits a byte stream (the child's stderr) into log lines, without IO.
#[derive(Debug, Default)]
pub(crate) struct Lines {
    /// The current line's bytes, not yet ended by a newline.
    partial: Vec<u8>,
}

impl Lines {
    /// Adds `bytes` and returns the lines they complete, without line endings, lossily
    /// decoded as UTF-8. Blank lines are skipped; lines longer than [`MAX_LINE`] are split.
    pub(crate) fn handle_bytes(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        for &byte in bytes {
            if byte == b'\n' {
                lines.extend(self.take());
            } else {
                self.partial.push(byte);
                if self.partial.len() >= MAX_LINE {
                    lines.extend(self.take());
                }
            }
        }
        lines
    }

    /// The unterminated last line, at end of stream.
    pub(crate) fn finish(&mut self) -> Option<String> {
        self.take()
    }

    /// Takes the current line, if it is not blank.
    fn take(&mut self) -> Option<String> {
        let bytes = std::mem::take(&mut self.partial);
        let line = String::from_utf8_lossy(&bytes);
        let line = line.trim_end_matches('\r');
        (!line.trim().is_empty()).then(|| line.to_owned())
    }
}

/// The streams a relay moves bytes between. Any may be absent: a missing source counts as
/// already ended, a missing sink as closed.
pub(crate) struct Streams {
    /// The job's payload, copied to the child's stdin.
    pub(crate) payload: Option<InputStream>,
    /// The child's stdin; dropped (closing it) once the payload is fully written.
    pub(crate) stdin: Option<OutputStream>,
    /// The child's stdout, copied to the results.
    pub(crate) stdout: Option<InputStream>,
    /// The job's results.
    pub(crate) results: Option<OutputStream>,
    /// The child's stderr, logged line by line at `warn`; none when merged into stdout.
    pub(crate) stderr: Option<InputStream>,
}

/// How a relayed child ended.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ended {
    /// The child's exit status; none only if the host never reported one.
    pub(crate) status: Option<ExitStatus>,
    /// The job was cancelled while the child ran (the child was sent `terminate`).
    pub(crate) canceled: bool,
}

/// Relays `streams` until `child` has exited and its stdout and stderr are drained. When
/// `cancel` becomes ready, sends the child `terminate` once and keeps relaying, so the
/// child can still report (ansible-runner writes its artifacts and a canceled status).
pub(crate) fn run(child: &Child, streams: Streams, cancel: Pollable) -> Ended {
    let mut relay = Relay::new(child, streams, cancel);
    loop {
        relay.retire_finished();
        if relay.is_finished() {
            break;
        }
        let ready: Vec<Event> = {
            let (pollables, events): (Vec<&Pollable>, Vec<Event>) =
                relay.interest().into_iter().unzip();
            if pollables.is_empty() {
                // Unreachable while the child runs (its exit pollable is always polled);
                // stop rather than call poll with nothing to wait for.
                break;
            }
            poll::poll(&pollables)
                .into_iter()
                .filter_map(|i| events.get(usize::try_from(i).ok()?).copied())
                .collect()
        };
        for event in ready {
            relay.handle(event);
        }
    }
    Ended {
        status: relay.status,
        canceled: relay.canceled,
    }
}

/// Something a round of the poll loop found ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// A link's source is readable.
    Source(Side),
    /// A link's sink is writable (or its flush finished).
    Sink(Side),
    /// The child's stderr is readable.
    Stderr,
    /// The child has exited.
    Exit,
    /// The job was cancelled.
    Cancel,
}

/// Which link an event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Payload → child stdin.
    Input,
    /// Child stdout → results.
    Output,
}

/// An input stream and its readiness pollable. Field order matters: the pollable is a child
/// of the stream and must be dropped first.
struct Source {
    /// Ready when the stream has bytes or has ended.
    ready: Pollable,
    /// The stream itself.
    stream: InputStream,
}

impl Source {
    /// Subscribes to `stream`.
    fn new(stream: InputStream) -> Self {
        Self {
            ready: stream.subscribe(),
            stream,
        }
    }
}

/// An output stream and its readiness pollable; the pollable is dropped first.
struct Sink {
    /// Ready when the stream accepts bytes, its flush finished, or it closed.
    ready: Pollable,
    /// The stream itself.
    stream: OutputStream,
}

impl Sink {
    /// Subscribes to `stream`.
    fn new(stream: OutputStream) -> Self {
        Self {
            ready: stream.subscribe(),
            stream,
        }
    }
}

/// A [`Pipe`] with the streams it drives.
struct Link {
    /// What to do next.
    pipe: Pipe,
    /// Where bytes come from; none once ended.
    source: Option<Source>,
    /// Where bytes go; none once closed (dropping it closes the stream).
    sink: Option<Sink>,
}

impl Link {
    /// A link from `source` to `sink`.
    fn new(source: Option<InputStream>, sink: Option<OutputStream>) -> Self {
        let mut pipe = Pipe::default();
        if source.is_none() {
            pipe.handle_source_end();
        }
        if sink.is_none() {
            pipe.handle_sink_closed();
        }
        Self {
            pipe,
            source: source.map(Source::new),
            sink: sink.map(Sink::new),
        }
    }

    /// The pollable this link waits on, with its event.
    fn interest(&self, side: Side) -> Option<(&Pollable, Event)> {
        match self.pipe.poll_wait() {
            Wait::Source => Some((&self.source.as_ref()?.ready, Event::Source(side))),
            Wait::Sink => Some((&self.sink.as_ref()?.ready, Event::Sink(side))),
            Wait::Done => None,
        }
    }

    /// Drops the streams of a finished pipe: a drained source, and the sink once the pipe is
    /// done (for the child's stdin, that is the end of file it waits for).
    fn retire_finished(&mut self) {
        if self.pipe.source_ended {
            self.source = None;
        }
        if self.pipe.poll_wait() == Wait::Done {
            self.source = None;
            self.sink = None;
        }
    }

    /// Whether the link has nothing left to do.
    fn is_done(&self) -> bool {
        self.source.is_none() && self.sink.is_none()
    }

    /// The source is readable: read what it has.
    fn handle_readable(&mut self) {
        let Some(source) = &self.source else { return };
        match source.stream.read(CHUNK) {
            Ok(bytes) if bytes.is_empty() => {}
            Ok(bytes) => self.pipe.handle_read(bytes),
            Err(StreamError::Closed) => self.pipe.handle_source_end(),
            Err(StreamError::LastOperationFailed(error)) => {
                job_io::log(
                    Level::Warn,
                    &format!("read failed: {}", error.to_debug_string()),
                );
                self.pipe.handle_source_end();
            }
        }
    }

    /// The sink is writable: write what fits, then ask for a flush.
    fn handle_writable(&mut self) {
        let Some(sink) = &self.sink else { return };
        let permit = match sink.stream.check_write() {
            Ok(0) => return,
            Ok(permit) => permit,
            Err(_) => return self.pipe.handle_sink_closed(),
        };
        let chunk = self.pipe.handle_writable(permit);
        if chunk.is_empty() {
            return;
        }
        let len = chunk.len();
        match sink.stream.write(chunk).and_then(|()| sink.stream.flush()) {
            Ok(()) => self.pipe.handle_written(len),
            Err(_) => self.pipe.handle_sink_closed(),
        }
    }
}

/// The loop's state. Field order matters for drop order: every pollable and stream goes
/// before the borrowed child does.
struct Relay<'a> {
    /// Payload → child stdin.
    input: Link,
    /// Child stdout → results.
    output: Link,
    /// The child's stderr; none once ended (or when merged into stdout).
    stderr: Option<Source>,
    /// The stderr line being assembled.
    lines: Lines,
    /// Ready when the child exits; none once its status is known.
    exit: Option<Pollable>,
    /// Ready when the job is cancelled; none once cancellation was handled.
    cancel: Option<Pollable>,
    /// The child's exit status, once known.
    status: Option<ExitStatus>,
    /// Whether the job was cancelled.
    canceled: bool,
    /// The child being relayed.
    child: &'a Child,
}

impl<'a> Relay<'a> {
    /// Subscribes to everything the loop waits on.
    fn new(child: &'a Child, streams: Streams, cancel: Pollable) -> Self {
        Self {
            input: Link::new(streams.payload, streams.stdin),
            output: Link::new(streams.stdout, streams.results),
            stderr: streams.stderr.map(Source::new),
            lines: Lines::default(),
            exit: Some(child.subscribe_exit()),
            cancel: Some(cancel),
            status: None,
            canceled: false,
            child,
        }
    }

    /// Drops the streams of pipes that are finished.
    fn retire_finished(&mut self) {
        self.input.retire_finished();
        self.output.retire_finished();
    }

    /// Whether the child has exited and all its output has been relayed. The payload link
    /// does not count: a child may exit without reading all of its stdin.
    fn is_finished(&self) -> bool {
        self.status.is_some() && self.output.is_done() && self.stderr.is_none()
    }

    /// Every pollable the next round waits on, with the event it means.
    fn interest(&self) -> Vec<(&Pollable, Event)> {
        let mut interest = Vec::with_capacity(5);
        interest.extend(self.input.interest(Side::Input));
        interest.extend(self.output.interest(Side::Output));
        interest.extend(self.stderr.as_ref().map(|s| (&s.ready, Event::Stderr)));
        interest.extend(self.exit.as_ref().map(|p| (p, Event::Exit)));
        interest.extend(self.cancel.as_ref().map(|p| (p, Event::Cancel)));
        interest
    }

    /// Acts on one ready event.
    fn handle(&mut self, event: Event) {
        match event {
            Event::Source(Side::Input) => self.input.handle_readable(),
            Event::Sink(Side::Input) => self.input.handle_writable(),
            Event::Source(Side::Output) => self.output.handle_readable(),
            Event::Sink(Side::Output) => self.output.handle_writable(),
            Event::Stderr => self.handle_stderr(),
            Event::Exit => self.handle_exit(),
            Event::Cancel => self.handle_cancel(),
        }
    }

    /// Stderr is readable: log the lines it completes.
    fn handle_stderr(&mut self) {
        let Some(stderr) = &self.stderr else { return };
        match stderr.stream.read(CHUNK) {
            Ok(bytes) => {
                for line in self.lines.handle_bytes(&bytes) {
                    job_io::log(Level::Warn, &line);
                }
            }
            Err(_) => {
                if let Some(line) = self.lines.finish() {
                    job_io::log(Level::Warn, &line);
                }
                self.stderr = None;
            }
        }
    }

    /// The exit pollable fired: collect the status.
    fn handle_exit(&mut self) {
        if let Some(status) = self.child.try_wait() {
            self.status = Some(status);
            self.exit = None;
        }
    }

    /// The job was cancelled: ask the child to stop, once, and keep relaying its output.
    fn handle_cancel(&mut self) {
        self.cancel = None;
        self.canceled = true;
        if self.status.is_none() {
            job_io::log(
                Level::Info,
                &format!(
                    "job cancelled; sending terminate to pid {}",
                    self.child.pid()
                ),
            );
            self.child.signal(Signal::Terminate);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipe_reads_then_writes_then_confirms_flush() {
        let mut pipe = Pipe::default();
        assert_eq!(pipe.poll_wait(), Wait::Source);
        pipe.handle_read(b"hello".to_vec());
        assert_eq!(pipe.poll_wait(), Wait::Sink, "a full buffer stops reading");
        assert_eq!(pipe.handle_writable(3), b"hel");
        pipe.handle_written(3);
        assert_eq!(pipe.poll_wait(), Wait::Sink);
        assert_eq!(pipe.handle_writable(100), b"lo");
        pipe.handle_written(2);
        assert_eq!(pipe.poll_wait(), Wait::Source);
        pipe.handle_source_end();
        assert_eq!(
            pipe.poll_wait(),
            Wait::Sink,
            "the last flush is still pending"
        );
        assert!(pipe.handle_writable(100).is_empty());
        assert_eq!(pipe.poll_wait(), Wait::Done);
    }

    #[test]
    fn pipe_with_ended_source_and_nothing_written_is_done() {
        let mut pipe = Pipe::default();
        pipe.handle_source_end();
        assert_eq!(pipe.poll_wait(), Wait::Done);
    }

    #[test]
    fn pipe_discards_source_after_sink_closes() {
        let mut pipe = Pipe::default();
        pipe.handle_read(b"lost".to_vec());
        pipe.handle_sink_closed();
        assert_eq!(pipe.poll_wait(), Wait::Source, "keeps draining the source");
        pipe.handle_read(b"more".to_vec());
        assert_eq!(pipe.poll_wait(), Wait::Source);
        assert!(pipe.handle_writable(100).is_empty());
        pipe.handle_source_end();
        assert_eq!(pipe.poll_wait(), Wait::Done);
    }

    #[test]
    fn pipe_tolerates_oversized_written_length() {
        let mut pipe = Pipe::default();
        pipe.handle_read(b"ab".to_vec());
        pipe.handle_written(10);
        assert_eq!(pipe.poll_wait(), Wait::Source);
    }

    #[test]
    fn lines_split_on_newlines_across_reads() {
        let mut lines = Lines::default();
        assert!(lines.handle_bytes(b"fir").is_empty());
        assert_eq!(
            lines.handle_bytes(b"st\r\nsecond\n\nthi"),
            ["first", "second"]
        );
        assert_eq!(lines.finish().as_deref(), Some("thi"));
        assert_eq!(lines.finish(), None);
    }

    #[test]
    fn lines_split_overlong_lines() {
        let mut lines = Lines::default();
        let long = vec![b'x'; MAX_LINE * 2 + 1];
        let out = lines.handle_bytes(&long);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|l| l.len() == MAX_LINE));
        assert_eq!(lines.finish().as_deref(), Some("x"));
    }

    #[test]
    fn lines_decode_invalid_utf8_lossily() {
        let mut lines = Lines::default();
        assert_eq!(
            lines.handle_bytes(b"bad \xff byte\n"),
            ["bad \u{fffd} byte"]
        );
    }
}

//! Progress of a payload on its way out (`warren run`, `warren work submit`): bytes sent, of
//! how many when that is known, and the rate, on one self-overwriting line of standard error.
//!
//! Shown only when standard error is a terminal and the command was not asked to be quiet,
//! and only for payloads past [`SHOW_FROM`]: pipes, logs and tests stay clean. The meter is
//! sans-IO ([`Meter`], time passed in); [`Progress`] is the thin adapter that counts the
//! bytes an `AsyncRead` or `AsyncWrite` moves and prints the meter's lines.

use std::io::{IsTerminal, Write};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Payloads smaller than this finish before a progress line would help.
pub(crate) const SHOW_FROM: u64 = 4 << 20;

/// Least time between two progress lines: often enough to look live, rarely enough to
/// cost nothing.
const SHOW_EVERY: Duration = Duration::from_millis(200);

/// Erase the line and return to its start (the next line overwrites this one).
const REWRITE: &str = "\r\x1b[K";

/// Counts bytes sent and says when a progress line is due.
#[derive(Debug)]
pub(crate) struct Meter {
    total: Option<u64>,
    sent: u64,
    started: Instant,
    last_shown: Option<Instant>,
}

impl Meter {
    /// A meter for a payload of `total` bytes (`None`: unknown) starting at `now`.
    pub(crate) fn new(total: Option<u64>, now: Instant) -> Self {
        Self {
            total,
            sent: 0,
            started: now,
            last_shown: None,
        }
    }

    /// `bytes` more were sent.
    pub(crate) fn handle_sent(&mut self, bytes: u64) {
        self.sent += bytes;
    }

    fn is_big(&self) -> bool {
        self.total.unwrap_or(self.sent) >= SHOW_FROM
    }

    /// The progress line to show at `now`, if one is due.
    pub(crate) fn poll_line(&mut self, now: Instant) -> Option<String> {
        if !self.is_big() || self.last_shown.is_some_and(|at| now - at < SHOW_EVERY) {
            return None;
        }
        self.last_shown = Some(now);
        let rate = rate(self.sent, now - self.started);
        let sent = human(self.sent);
        Some(match self.total {
            Some(total) if total > 0 => {
                let percent = self.sent.min(total) * 100 / total;
                format!(
                    "{REWRITE}sent {sent} of {} ({percent}%) at {rate}",
                    human(total)
                )
            }
            _ => format!("{REWRITE}sent {sent} at {rate}"),
        })
    }

    /// The closing line at `now` (ends the line), if any progress was shown. `done` says
    /// whether everything was sent.
    pub(crate) fn finish(&mut self, now: Instant, done: bool) -> Option<String> {
        self.last_shown?;
        let elapsed = now - self.started;
        Some(if done {
            format!(
                "{REWRITE}sent {} in {:.1} s ({})\n",
                human(self.sent),
                elapsed.as_secs_f64(),
                rate(self.sent, elapsed)
            )
        } else {
            format!("{REWRITE}stopped after sending {}\n", human(self.sent))
        })
    }
}

/// `bytes` in decimal units, as network rates are given.
fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if bytes < 1_000_000 {
        format!("{:.0} kB", b / 1e3)
    } else if bytes < 1_000_000_000 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{:.2} GB", b / 1e9)
    }
}

fn rate(bytes: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    format!("{}/s", human((bytes as f64 / secs) as u64))
}

/// A reader or writer whose bytes are counted into a [`Meter`] whose lines go to standard
/// error, when progress is on.
#[derive(Debug)]
pub(crate) struct Progress<T> {
    inner: T,
    /// `None` when progress is off (quiet, or standard error is not a terminal).
    meter: Option<Meter>,
}

impl<T> Progress<T> {
    /// Wraps `inner` for a payload of `total` bytes; shows progress only when `!quiet` and
    /// standard error is a terminal.
    pub(crate) fn new(inner: T, total: Option<u64>, quiet: bool) -> Self {
        let on = !quiet && std::io::stderr().is_terminal();
        Self {
            inner,
            meter: on.then(|| Meter::new(total, Instant::now())),
        }
    }

    /// Ends the progress line; `done` says whether the whole payload went. (Dropped
    /// unfinished, as when Ctrl-C abandons the payload, it ends the line as stopped.)
    pub(crate) fn finish(&mut self, done: bool) {
        if let Some(line) = self
            .meter
            .take()
            .and_then(|mut m| m.finish(Instant::now(), done))
        {
            show(&line);
        }
    }

    fn count(&mut self, bytes: usize) {
        if let Some(meter) = &mut self.meter {
            meter.handle_sent(bytes as u64);
            if let Some(line) = meter.poll_line(Instant::now()) {
                show(&line);
            }
        }
    }
}

impl<T> Drop for Progress<T> {
    fn drop(&mut self) {
        self.finish(false);
    }
}

fn show(line: &str) {
    let mut stderr = std::io::stderr().lock();
    // A progress line that cannot be printed is not worth failing the payload for.
    let _ = stderr.write_all(line.as_bytes());
    let _ = stderr.flush();
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Progress<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = polled {
            self.count(written);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Progress<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let read = buf.filled().len() - before;
            self.count(read);
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1_000_000;

    #[test]
    fn small_payloads_show_nothing() {
        let start = Instant::now();
        let mut meter = Meter::new(Some(SHOW_FROM - 1), start);
        meter.handle_sent(SHOW_FROM - 1);
        assert_eq!(meter.poll_line(start + Duration::from_secs(1)), None);
        assert_eq!(meter.finish(start + Duration::from_secs(1), true), None);
    }

    #[test]
    fn shows_sent_of_total_and_rate_at_most_every_200_ms() {
        let start = Instant::now();
        let mut meter = Meter::new(Some(200 * MB), start);
        meter.handle_sent(50 * MB);
        let at = start + Duration::from_secs(1);
        assert_eq!(
            meter.poll_line(at).as_deref(),
            Some("\r\x1b[Ksent 50.0 MB of 200.0 MB (25%) at 50.0 MB/s")
        );
        meter.handle_sent(MB);
        assert_eq!(meter.poll_line(at + Duration::from_millis(100)), None);
        let later = at + Duration::from_millis(200);
        assert!(
            meter
                .poll_line(later)
                .is_some_and(|l| l.contains("51.0 MB of"))
        );
        meter.handle_sent(149 * MB);
        assert_eq!(
            meter
                .finish(start + Duration::from_secs(4), true)
                .as_deref(),
            Some("\r\x1b[Ksent 200.0 MB in 4.0 s (50.0 MB/s)\n")
        );
    }

    #[test]
    fn an_unknown_total_shows_once_past_the_threshold() {
        let start = Instant::now();
        let mut meter = Meter::new(None, start);
        meter.handle_sent(SHOW_FROM - 1);
        assert_eq!(meter.poll_line(start + Duration::from_secs(1)), None);
        meter.handle_sent(2 * MB);
        assert_eq!(
            meter.poll_line(start + Duration::from_secs(2)).as_deref(),
            Some("\r\x1b[Ksent 6.2 MB at 3.1 MB/s")
        );
        assert_eq!(
            meter
                .finish(start + Duration::from_secs(3), false)
                .as_deref(),
            Some("\r\x1b[Kstopped after sending 6.2 MB\n")
        );
    }

    #[tokio::test]
    async fn counts_what_a_writer_and_a_reader_move_and_is_off_when_quiet() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut writer = Progress::new(Vec::new(), Some(10), true);
        writer.write_all(b"hello").await.expect("write");
        assert!(writer.meter.is_none());
        assert_eq!(writer.inner, b"hello");
        let mut reader = Progress {
            inner: &b"0123456789"[..],
            meter: Some(Meter::new(Some(10), Instant::now())),
        };
        let mut read = Vec::new();
        reader.read_to_end(&mut read).await.expect("read");
        assert_eq!(reader.meter.as_ref().map(|m| m.sent), Some(10));
    }
}

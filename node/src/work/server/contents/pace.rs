//! The pace a content-addressed submission must keep from the moment it takes a session
//! slot (and starts pinning cached contents) to its last content: [`Pace`] decides when it
//! has fallen behind (no IO, time passed in); [`Paced`] applies that to the submission's
//! stream, checking on every read and write and on a timer.
//!
//! The rule: a fixed [`GRACE`] for the manifest frame and the `Lacking` reply; after it,
//! every content byte buys `1 / FLOOR_RATE` s of time, but the time bought never reaches
//! more than [`IDLE`] past the later of the grace and the byte's arrival. So the peer keeps
//! at least [`FLOOR_RATE`] on average from the start, and bytes sent fast early bank at
//! most [`IDLE`]: after 350 MiB in a burst, one byte every 59 s buys 61 µs each, not another
//! minute. The sizes a peer declares play no part, so a declared 700 MiB buys no time:
//! only content bytes that arrive do. Only bytes read after the `Lacking`
//! reply count ([`Pace::handle_asked`]): a 32 MiB manifest (or bytes pushed before the
//! node asked) buys no time either.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Time for the manifest frame (up to 32 MiB) and the `Lacking` reply before the floor
/// applies: a minute covers a slow link's round trips and a manifest of ordinary size.
pub(super) const GRACE: Duration = Duration::from_secs(60);

/// The slowest upload accepted on average, bytes per second (128 kbit/s).
pub(super) const FLOOR_RATE: u64 = 16 * 1024;

/// The most time bytes can buy ahead of their arrival, however far ahead of the floor the
/// peer is: bytes sent early buy no right to stall (or to trickle) with the pins held.
pub(super) const IDLE: Duration = Duration::from_secs(60);

/// How far a submission has come, and whether it has fallen behind.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pace {
    start: Instant,
    /// Whether the contents were asked for: bytes before count for nothing.
    asked: bool,
    /// Content bytes received since.
    received: u64,
    /// When the submission falls behind if nothing more arrives: the grace, plus what
    /// the bytes bought, each purchase capped at [`IDLE`] past its arrival.
    paid_until: Instant,
}

impl Pace {
    /// A submission that took its slot at `now`.
    pub(super) fn new(now: Instant) -> Self {
        Self {
            start: now,
            asked: false,
            received: 0,
            paid_until: now + GRACE,
        }
    }

    /// The contents were asked for (the `Lacking` reply is written): bytes from now on
    /// count.
    pub(super) fn handle_asked(&mut self) {
        self.asked = true;
    }

    /// `bytes` arrived at `now`; counted once the contents were asked for.
    pub(super) fn handle_received(&mut self, now: Instant, bytes: u64) {
        if !self.asked {
            return;
        }
        self.received = self.received.saturating_add(bytes);
        let whole = Duration::from_secs(bytes / FLOOR_RATE);
        let part = Duration::from_nanos((bytes % FLOOR_RATE) * 1_000_000_000 / FLOOR_RATE);
        let cap = (self.start + GRACE).max(now) + IDLE;
        let bought = self.paid_until.checked_add(whole + part).unwrap_or(cap);
        self.paid_until = bought.min(cap).max(self.paid_until);
    }

    /// Content bytes received so far.
    pub(super) fn received(&self) -> u64 {
        self.received
    }

    /// How long the submission has run at `now`.
    pub(super) fn elapsed(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.start)
    }

    /// When the submission falls behind if nothing more arrives.
    pub(super) fn deadline(&self) -> Instant {
        self.paid_until
    }

    /// Whether the submission has fallen behind at `now`.
    pub(super) fn is_behind(&self, now: Instant) -> bool {
        now >= self.deadline()
    }
}

/// A stream that fails with `TimedOut` once its [`Pace`] has fallen behind: on a read or
/// write that finds it behind, or when the timer set for its deadline fires while one
/// waits.
pub(super) struct Paced<'a, S: ?Sized> {
    inner: &'a mut S,
    pace: Pace,
    /// Fires at the pace's deadline; reset whenever bytes arrive. Dropped with the stream.
    timer: Pin<Box<Sleep>>,
    behind: bool,
}

impl<'a, S: ?Sized> Paced<'a, S> {
    /// `inner`, paced from now.
    pub(super) fn new(inner: &'a mut S) -> Self {
        let now = tokio::time::Instant::now();
        let pace = Pace::new(now.into_std());
        let timer = Box::pin(tokio::time::sleep_until(pace.deadline().into()));
        Self {
            inner,
            pace,
            timer,
            behind: false,
        }
    }

    /// Whether the stream failed for falling behind.
    pub(super) fn is_behind(&self) -> bool {
        self.behind
    }

    /// The pace so far.
    pub(super) fn pace(&self) -> &Pace {
        &self.pace
    }

    /// The contents were asked for: bytes read from now on count.
    pub(super) fn asked(&mut self) {
        self.pace.handle_asked();
    }

    fn fell_behind(&mut self) -> io::Error {
        self.behind = true;
        io::Error::new(
            io::ErrorKind::TimedOut,
            "the submission fell behind its pace",
        )
    }

    /// `Ready` with the error once behind; otherwise registers the timer.
    fn poll_behind(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if self.behind {
            return Poll::Ready(self.fell_behind());
        }
        let now = tokio::time::Instant::now().into_std();
        if self.pace.is_behind(now) {
            return Poll::Ready(self.fell_behind());
        }
        let deadline = tokio::time::Instant::from_std(self.pace.deadline());
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        // Set for the deadline as it stands: firing means that deadline has passed.
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(self.fell_behind()),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin + ?Sized> AsyncRead for Paced<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Poll::Ready(e) = this.poll_behind(cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        match Pin::new(&mut *this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let now = tokio::time::Instant::now().into_std();
                let read = (buf.filled().len() - before) as u64;
                this.pace.handle_received(now, read);
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin + ?Sized> AsyncWrite for Paced<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Poll::Ready(e) = this.poll_behind(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut *this.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Poll::Ready(e) = this.poll_behind(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut *this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Poll::Ready(e) = this.poll_behind(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut *this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_falls_behind_at_the_grace_and_bytes_buy_time_at_the_floor_rate_up_to_the_idle_limit()
    {
        let start = Instant::now();
        let mut pace = Pace::new(start);
        pace.handle_asked();
        assert_eq!(pace.deadline(), start + GRACE, "nothing received");
        assert!(!pace.is_behind(start + GRACE - Duration::from_millis(1)));
        assert!(pace.is_behind(start + GRACE));
        // 10 s worth of bytes at the floor: 10 s more.
        pace.handle_received(start + Duration::from_secs(1), 10 * FLOOR_RATE);
        assert_eq!(pace.deadline(), start + GRACE + Duration::from_secs(10));
        // Far ahead of the floor, but a pause past the grace is bounded.
        pace.handle_received(start + Duration::from_secs(2), 1 << 30);
        assert_eq!(pace.deadline(), start + GRACE + IDLE);
        // Found by an attacker's review: after a fast burst, one byte just inside every
        // minute held the slot for hours; now a byte buys its own worth only.
        pace.handle_received(start + GRACE + Duration::from_secs(59), 1);
        let one_byte = Duration::from_nanos(1_000_000_000 / FLOOR_RATE);
        assert_eq!(pace.deadline(), start + GRACE + IDLE + one_byte);
        assert!(pace.is_behind(start + GRACE + IDLE + Duration::from_millis(1)));
        // Enough bytes buy time up to a minute past their arrival again.
        let now = start + GRACE + Duration::from_secs(59);
        pace.handle_received(now, 1 << 30);
        assert_eq!(pace.deadline(), now + IDLE);
    }

    #[test]
    fn bytes_before_the_contents_are_asked_for_buy_no_time() {
        // Found by an attacker's review: the manifest's bytes counted, so a 32 MiB one
        // earned 34 minutes at the floor.
        let start = Instant::now();
        let mut pace = Pace::new(start);
        pace.handle_received(start, 32 << 20);
        assert_eq!((pace.received(), pace.deadline()), (0, start + GRACE));
        pace.handle_asked();
        pace.handle_received(start + Duration::from_secs(1), FLOOR_RATE);
        assert_eq!(pace.deadline(), start + GRACE + Duration::from_secs(1));
    }
}

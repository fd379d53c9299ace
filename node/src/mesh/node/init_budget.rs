//! How many end-to-end session handshakes each link may bring this node. A handshake's
//! first message costs the responder four Diffie-Hellman operations and a signature check,
//! where a stream packet costs one decryption, and any neighbour can send them, as copies
//! or under spoofed sources, as fast as its link carries. Each link gets a bucket: a burst
//! big enough for a relay that carries a whole site's handshakes at a cold start, refilled
//! at a steady rate; beyond it an `Init` is dropped unread. Its initiator's handshake then
//! times out (10 s), the streams that waited for it fail, and its next open starts a new
//! handshake. A flood on one link costs the node a bounded share of a core, and costs the
//! handshakes arriving on other links nothing. No IO; time is passed in.

use std::time::{Duration, Instant};

/// Session inits a link may bring at once.
pub(crate) const INIT_BURST: u32 = 256;

/// How often a link earns one more init (so 128 per second).
pub(crate) const INIT_REFILL: Duration = Duration::from_micros(7_812);

/// One link's bucket of session inits.
#[derive(Debug, Clone)]
pub(crate) struct InitBudget {
    tokens: u32,
    refilled: Instant,
}

impl InitBudget {
    /// A full bucket.
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            tokens: INIT_BURST,
            refilled: now,
        }
    }

    /// Whether one more init may be read now; counts it.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }

    fn refill(&mut self, now: Instant) {
        let since = now.saturating_duration_since(self.refilled);
        let earned = since.as_nanos() / INIT_REFILL.as_nanos();
        if earned == 0 {
            return;
        }
        let earned = u32::try_from(earned).unwrap_or(u32::MAX);
        self.tokens = self.tokens.saturating_add(earned).min(INIT_BURST);
        // Keep the remainder, so a steady sender earns the full rate.
        self.refilled += INIT_REFILL * earned.min(INIT_BURST);
        if self.tokens == INIT_BURST {
            self.refilled = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_inits_are_dropped_until_the_bucket_refills() {
        let start = Instant::now();
        let mut budget = InitBudget::new(start);
        let taken = (0..INIT_BURST * 2).filter(|_| budget.take(start)).count();
        assert_eq!(taken, INIT_BURST as usize);
        assert!(!budget.take(start + INIT_REFILL / 2));
        assert!(budget.take(start + INIT_REFILL));
        assert!(!budget.take(start + INIT_REFILL));
    }

    #[test]
    fn a_steady_sender_gets_the_refill_rate_and_no_more() {
        let start = Instant::now();
        let mut budget = InitBudget::new(start);
        while budget.take(start) {}
        // Ten seconds of one init every millisecond: 10,000 tried.
        let taken = (1..=10_000u32)
            .filter(|ms| budget.take(start + Duration::from_millis(u64::from(*ms))))
            .count();
        let per_second = Duration::from_secs(1).as_nanos() / INIT_REFILL.as_nanos();
        let expected = 10 * per_second as usize;
        assert!(
            taken.abs_diff(expected) <= 1,
            "took {taken}, the rate gives {expected}"
        );
    }

    #[test]
    fn an_idle_link_gets_its_burst_back_and_no_more() {
        let start = Instant::now();
        let mut budget = InitBudget::new(start);
        while budget.take(start) {}
        let later = start + Duration::from_secs(3600);
        let taken = (0..INIT_BURST * 2).filter(|_| budget.take(later)).count();
        assert_eq!(taken, INIT_BURST as usize);
    }
}

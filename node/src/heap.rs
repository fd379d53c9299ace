//! Giving freed heap back to the system. glibc keeps memory a burst of work freed in its
//! arenas (only the top of a heap is returned on its own), so a node's resident memory
//! stays at its busiest even when idle; `malloc_trim` returns every free page. Only on
//! glibc; elsewhere a no-op.
//!
//! A trim walks every arena under its lock, so the trims a peer's traffic can set off
//! (one after each quiet second) pass a [`TrimGate`]: at most one runs at a time, and at
//! most one starts in [`TRIM_INTERVAL`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The least time between two trims started through a [`TrimGate`].
pub(crate) const TRIM_INTERVAL: Duration = Duration::from_secs(60);

/// Returns the heap's free pages to the system. Walks every arena: call it when the node
/// has gone quiet, not per request.
pub(crate) fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory at the allocator's discretion.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Decides whether a trim may start now: none is running, and none started in the last
/// [`TRIM_INTERVAL`].
#[derive(Debug, Default)]
pub(crate) struct TrimGate {
    running: Arc<AtomicBool>,
    last: Option<Instant>,
}

/// A trim let through a [`TrimGate`]: it counts as running until this is dropped.
#[derive(Debug)]
pub(crate) struct TrimTicket(Arc<AtomicBool>);

impl Drop for TrimTicket {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl TrimGate {
    /// A ticket for a trim starting at `now`, or `None` when one still runs or the last
    /// started less than [`TRIM_INTERVAL`] before.
    pub(crate) fn start(&mut self, now: Instant) -> Option<TrimTicket> {
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < TRIM_INTERVAL)
        {
            return None;
        }
        if self.running.swap(true, Ordering::AcqRel) {
            return None;
        }
        self.last = Some(now);
        Some(TrimTicket(self.running.clone()))
    }

    /// Runs a trim on the blocking pool if the gate lets one start at `now`; else when to
    /// ask again (so that the memory of a burst right after a trim is given back too).
    pub(crate) fn trim_off_worker(&mut self, now: Instant) -> Option<Instant> {
        let Some(ticket) = self.start(now) else {
            let next = self.last.map_or(now, |last| last + TRIM_INTERVAL);
            return Some(next.max(now + Duration::from_secs(1)));
        };
        drop(tokio::task::spawn_blocking(move || {
            give_back_freed_memory();
            drop(ticket);
        }));
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trim_every_quiet_second_is_let_through_once_a_minute() {
        // Found by the s22 review: one command every ~1.1 s set off one `malloc_trim` a
        // second.
        let start = Instant::now();
        let mut gate = TrimGate::default();
        let started = (0..600)
            .filter_map(|s| gate.start(start + Duration::from_secs(s)))
            .count();
        assert_eq!(started, 10, "ten minutes");
    }

    #[test]
    fn a_trim_does_not_start_while_one_runs() {
        // Found by the s22 review: the trims were not serialised.
        let start = Instant::now();
        let mut gate = TrimGate::default();
        let running = gate.start(start).expect("the first trim runs");
        for s in 60..=120 {
            assert!(gate.start(start + Duration::from_secs(s)).is_none(), "{s}");
        }
        drop(running);
        assert!(gate.start(start + Duration::from_secs(121)).is_some());
    }

    #[test]
    fn a_trim_refused_within_the_interval_is_asked_for_again_when_it_ends() {
        // A burst right after a trim is given back too, a minute after that trim.
        let start = Instant::now();
        let mut gate = TrimGate::default();
        drop(gate.start(start));
        let ten = start + Duration::from_secs(10);
        assert_eq!(gate.trim_off_worker(ten), Some(start + TRIM_INTERVAL));
    }
}

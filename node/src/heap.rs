//! Keeping the heap's resident memory that of the live data, not of the busiest moment.
//! glibc gives each thread that meets a locked arena a new one (up to eight per core), and
//! keeps what a burst of work freed in its arenas (only the top of a heap is returned on
//! its own), so a node's resident memory stays at its busiest even when idle, spread over
//! arenas that fragment apart. [`bound_arenas`] caps the arenas at the start;
//! `malloc_trim` ([`give_back_freed_memory`]) returns every free page. Only on glibc;
//! elsewhere both are no-ops.
//!
//! A trim walks every arena under its lock, so the trims a peer's traffic can set off
//! (one after each quiet second) pass a [`TrimGate`]: at most one runs at a time, and one
//! starts only once [`TRIM_INTERVAL`] has passed since the last or the work done since
//! (counted by the caller) is worth it ([`TRIM_AFTER_WORK`]): a node that went idle after
//! a burst gives its memory back then, not up to a minute later.
//!
//! In the lib tests, `counting` is the allocator: it tells a test what its thread holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[cfg(test)]
pub(crate) mod counting;

/// The least time between two trims started through a [`TrimGate`], unless
/// [`TRIM_AFTER_WORK`] was done since the last.
pub(crate) const TRIM_INTERVAL: Duration = Duration::from_secs(60);

/// Units of work (the work layer's commands: a job takes about a dozen) after which a
/// trim may start before [`TRIM_INTERVAL`] has passed. A trim of a node's heap (tens of
/// MiB) takes about a millisecond; a thousand commands take some hundreds of milliseconds
/// of CPU, so trims cost well under 1 % of the work that freed the memory, however a peer
/// paces its commands.
pub(crate) const TRIM_AFTER_WORK: u64 = 1_000;

/// The arenas glibc may make: two, so that the runtime's threads on a two-core host rarely
/// wait for each other's allocations, while freed memory is not spread over the up to
/// eight arenas per core that glibc allows by default. Measured in the control bench (three
/// runs each, with [`TRIM_AFTER_WORK`]): idle resident memory after 10,000 jobs +2.8 to
/// +4.4 % over after 100 on node1 and the controller, against up to +10.4 % before, with no
/// more CPU per job.
const ARENA_MAX: i32 = 2;

/// Caps glibc's malloc arenas at [`ARENA_MAX`], unless the operator chose a number
/// (`MALLOC_ARENA_MAX`, or `glibc.malloc.arena_max` in `GLIBC_TUNABLES`). Call it first
/// thing, before threads are started ([`crate::cli::Cli::run`] does).
pub(crate) fn bound_arenas() {
    let chosen = std::env::var_os("MALLOC_ARENA_MAX").is_some()
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("arena_max"));
    if chosen {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; M_ARENA_MAX bounds arenas made
    // from now on.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX);
    }
}

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
/// [`TRIM_INTERVAL`] or [`TRIM_AFTER_WORK`] was done since the last.
#[derive(Debug, Default)]
pub(crate) struct TrimGate {
    running: Arc<AtomicBool>,
    last: Option<Instant>,
    /// Work done since the last trim started.
    work: u64,
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
    /// Counts one unit of work (one command handled) towards [`TRIM_AFTER_WORK`].
    pub(crate) fn note_work(&mut self) {
        self.work = self.work.saturating_add(1);
    }

    /// A ticket for a trim starting at `now`, or `None` when one still runs, or the last
    /// started less than [`TRIM_INTERVAL`] before and less than [`TRIM_AFTER_WORK`] was
    /// done since.
    pub(crate) fn start(&mut self, now: Instant) -> Option<TrimTicket> {
        let recent = self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < TRIM_INTERVAL);
        if recent && self.work < TRIM_AFTER_WORK {
            return None;
        }
        if self.running.swap(true, Ordering::AcqRel) {
            return None;
        }
        self.last = Some(now);
        self.work = 0;
        Some(TrimTicket(self.running.clone()))
    }

    /// Runs a trim on the blocking pool if the gate lets one start at `now`; else when to
    /// ask again (so that the memory of a burst right after a trim is given back too, once
    /// the interval has passed).
    pub(crate) fn trim_off_worker(&mut self, now: Instant) -> Option<Instant> {
        let Some(ticket) = self.start(now) else {
            let next = self.last.map_or(now, |last| last + TRIM_INTERVAL);
            return Some(next.max(now + Duration::from_secs(1)));
        };
        drop(tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            give_back_freed_memory();
            tracing::debug!(took = ?started.elapsed(), "gave the freed heap back");
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
    fn a_trim_within_the_interval_is_let_through_after_a_burst_of_work() {
        // The control bench's idle footprint after 10,000 jobs: they took under a minute
        // after the trim that followed the first 100, so none followed them.
        let start = Instant::now();
        let mut gate = TrimGate::default();
        drop(gate.start(start));
        for _ in 0..TRIM_AFTER_WORK - 1 {
            gate.note_work();
        }
        let later = start + Duration::from_secs(30);
        assert!(gate.start(later).is_none(), "one unit of work short");
        gate.note_work();
        assert!(gate.start(later).is_some());
        let again = later + Duration::from_secs(1);
        assert!(
            gate.start(again).is_none(),
            "the work is counted from the last trim"
        );
    }

    #[test]
    fn a_trim_after_a_burst_still_waits_for_the_one_running() {
        let start = Instant::now();
        let mut gate = TrimGate::default();
        let running = gate.start(start).expect("the first trim runs");
        for _ in 0..TRIM_AFTER_WORK {
            gate.note_work();
        }
        assert!(gate.start(start + Duration::from_secs(5)).is_none());
        drop(running);
        assert!(gate.start(start + Duration::from_secs(6)).is_some());
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

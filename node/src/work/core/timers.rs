//! The core's timers: one per unit (its retention once finished, a release's wait for a
//! stopping handler, a remote submission's expiry), kept in one ordered table whose
//! earliest deadline is [`Core::poll_timeout`]. Time is passed in.

use std::time::{Duration, Instant};

use super::{Answered, Core, Phase, UnitId, UnitState};

impl Core {
    pub(super) fn set_timer(&mut self, id: UnitId, at: Option<Instant>) {
        let Some(entry) = self.units.get_mut(&id) else {
            return;
        };
        if let Some(old) = entry.wake_at.take() {
            self.timers.remove(&(old, id));
        }
        if let Some(at) = at {
            entry.wake_at = Some(at);
            self.timers.insert((at, id));
        }
    }

    /// Fires every due timer: retention, release waits, remote start expiries.
    pub fn handle_timeout(&mut self, now: Instant, wall_ms: u64) {
        while let Some(&(at, id)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            if let Some(entry) = self.units.get_mut(&id) {
                entry.wake_at = None;
            }
            self.timer_fired(now, wall_ms, id);
        }
    }

    fn timer_fired(&mut self, now: Instant, wall_ms: u64, id: UnitId) {
        let Some(entry) = self.units.get(&id) else {
            return;
        };
        match entry.phase {
            Phase::Done if entry.release_waiters.is_empty() => {
                tracing::info!(unit = %id, "finished unit released after the retention period");
                self.drop_unit(id);
            }
            Phase::Running => {
                // A release gave the unit RELEASE_WAIT to stop; remove it regardless.
                let waiters = self
                    .units
                    .get_mut(&id)
                    .map(|e| std::mem::take(&mut e.release_waiters))
                    .unwrap_or_default();
                if !waiters.is_empty() {
                    self.drop_unit(id);
                    for t in waiters {
                        self.answer(t, Ok(Answered::Done));
                    }
                }
            }
            Phase::Submitting => {
                let detail = expired_detail(entry.status.expires_at.unwrap_or(wall_ms));
                self.finish(now, id, UnitState::Failed, detail);
            }
            _ => {}
        }
    }
}

fn expired_detail(expires_at_ms: u64) -> String {
    let when = std::time::UNIX_EPOCH + Duration::from_millis(expires_at_ms);
    format!(
        "Work unit expired on {}",
        crate::control::goformat::rfc3339_utc(when)
    )
}

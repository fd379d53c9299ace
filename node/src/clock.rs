//! The wall clock, in one place: milliseconds since the UNIX epoch, for epochs, statuses,
//! certificates and expiries. Protocol cores never call it; they take the time as an
//! argument, and their drivers call this.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the UNIX epoch now (0 if the clock is set before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

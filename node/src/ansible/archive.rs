//! Zip timestamps as ansible-runner's `stream_dir`/`unstream_dir` write and read them: DOS
//! date and time in local time. Packing is [`super::transmit`]'s, unpacking
//! [`super::unpack`]'s.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use zip::DateTime;

/// The zip timestamp for `time` in local time, clamped to the DOS range as Python's
/// `strict_timestamps=False` clamps it.
pub(super) fn dos_time(time: SystemTime) -> DateTime {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let Some(tm) = local_tm(i64::try_from(secs).unwrap_or(i64::MAX)) else {
        return DateTime::default();
    };
    let year = tm.tm_year + 1900;
    if year < 1980 {
        return DateTime::default();
    }
    if year > 2107 {
        return DateTime::from_date_and_time(2107, 12, 31, 23, 59, 59).unwrap_or_default();
    }
    let field = |value: libc::c_int| u8::try_from(value).unwrap_or(0);
    DateTime::from_date_and_time(
        u16::try_from(year).unwrap_or(1980),
        field(tm.tm_mon + 1),
        field(tm.tm_mday),
        field(tm.tm_hour),
        field(tm.tm_min),
        field(tm.tm_sec.min(59)),
    )
    .unwrap_or_default()
}

fn local_tm(secs: i64) -> Option<libc::tm> {
    let time: libc::time_t = secs;
    // SAFETY: `tm` is plain data; localtime_r writes it or returns null, touching nothing else.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        (!libc::localtime_r(&time, &mut tm).is_null()).then_some(tm)
    }
}

/// A zip timestamp read as local time (Python's `time.mktime`).
pub(super) fn system_time(time: DateTime) -> SystemTime {
    // SAFETY: `tm` is plain data owned here; mktime only reads and normalises it.
    let secs = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        tm.tm_year = libc::c_int::from(time.year()) - 1900;
        tm.tm_mon = libc::c_int::from(time.month()) - 1;
        tm.tm_mday = libc::c_int::from(time.day());
        tm.tm_hour = libc::c_int::from(time.hour());
        tm.tm_min = libc::c_int::from(time.minute());
        tm.tm_sec = libc::c_int::from(time.second());
        tm.tm_isdst = -1;
        libc::mktime(&mut tm)
    };
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

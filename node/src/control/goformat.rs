//! Go's text formats, reproduced where Receptor's clients see them.
//!
//! Owns `time.Duration.String()`, `time.Time` as `encoding/json` writes it (RFC 3339 with
//! nanoseconds), Go's float-to-JSON rule for whole numbers, and Go's HTML-safe JSON escaping.
//! Pure functions; no IO, no clock.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serializer;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Formats `d` as Go's `time.Duration.String()` does: `0s`, `999ns`, `512.3µs`,
/// `1.234567ms`, `1.5s`, `1m30s`, `1h0m0.000000001s`.
///
/// Go prints the shortest exact decimal in the largest unit below one second, and
/// `[h]m]s` with a fractional second above it.
pub fn go_duration_string(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".to_owned();
    }
    if ns < 1_000 {
        return format!("{ns}ns");
    }
    if ns < 1_000_000 {
        return decimal(ns, 1_000, 3) + "µs";
    }
    if ns < NANOS_PER_SEC {
        return decimal(ns, 1_000_000, 6) + "ms";
    }
    let secs = ns / NANOS_PER_SEC;
    let (hours, minutes, seconds) = (secs / 3600, (secs / 60) % 60, secs % 60);
    let mut out = String::new();
    if hours > 0 {
        let _ = write!(out, "{hours}h");
    }
    if hours > 0 || minutes > 0 {
        let _ = write!(out, "{minutes}m");
    }
    out + &decimal(
        seconds * NANOS_PER_SEC + ns % NANOS_PER_SEC,
        NANOS_PER_SEC,
        9,
    ) + "s"
}

/// `value / unit` as a decimal with `digits` fractional digits, trailing zeros trimmed.
fn decimal(value: u128, unit: u128, digits: usize) -> String {
    let (whole, frac) = (value / unit, value % unit);
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:0digits$}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// Formats `time` in UTC as Go's `time.Time.MarshalJSON` does (RFC 3339 with up to nine
/// fractional digits, trailing zeros trimmed, `Z` for UTC): `2026-11-28T09:00:00.123Z`.
pub fn rfc3339_utc(time: SystemTime) -> String {
    let (secs, nanos) = match time.duration_since(UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
        ),
        Err(before) => {
            let d = before.duration();
            let secs = -i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            match d.subsec_nanos() {
                0 => (secs, 0),
                n => (secs - 1, 1_000_000_000 - n),
            }
        }
    };
    let (days, secs_of_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    let (h, m, s) = (
        secs_of_day / 3600,
        (secs_of_day / 60) % 60,
        secs_of_day % 60,
    );
    let mut out = format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}");
    if nanos > 0 {
        let frac = format!("{nanos:09}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// Proleptic Gregorian date of `days` since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1st
    let mp = (5 * doy + 2) / 153; // month from March, [0, 11]
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Both are small and positive by construction.
    (year, month as u32, day as u32)
}

/// Largest magnitude below which every integer is exactly representable in an `f64`, so the
/// integer's digits are also Go's shortest decimal.
const EXACT_INT_LIMIT: f64 = 9_007_199_254_740_992.0; // 2^53

/// Serialises `value` as Go's `encoding/json` writes a `float64`: whole numbers without a
/// fraction (`1`, not `1.0`), others in their shortest form (`2.5`).
///
/// # Errors
/// Whatever the serializer returns.
pub fn serialize_go_float<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    let v = *value;
    if v.is_finite() && v.fract() == 0.0 && v.abs() < EXACT_INT_LIMIT {
        // Exact: |v| < 2^53 and whole.
        serializer.serialize_i64(v as i64)
    } else {
        serializer.serialize_f64(v)
    }
}

/// Applies Go's HTML-safe escaping to serialised JSON: `<`, `>`, `&`, U+2028 and U+2029
/// become `\u003c`, `\u003e`, `\u0026`, `\u2028`, `\u2029`.
///
/// These characters can only occur inside JSON strings, so replacing them everywhere in
/// the text is exact.
pub fn go_escape_json(json: String) -> String {
    if !json.contains(['<', '>', '&', '\u{2028}', '\u{2029}']) {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// Parses a Go duration such as `20s`, `1h20m30s` or `1.5m` (`time.ParseDuration`'s
/// syntax, units `ns us µs ms s m h`); negative durations are refused. `None` when `text`
/// is not one.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.is_empty() {
        return None;
    }
    let is_number = |c: char| c.is_ascii_digit() || c == '.';
    let mut seconds = 0f64;
    while !rest.is_empty() {
        let number_len = rest.find(|c| !is_number(c)).unwrap_or(rest.len());
        let value: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest.find(is_number).unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        seconds += value * unit;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(seconds).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        let secs = |s: &str| parse_go_duration(s).map(|d| d.as_secs_f64());
        assert_eq!(secs("20s"), Some(20.0));
        assert_eq!(secs("1h20m30s"), Some(4830.0));
        assert_eq!(secs("1.5m"), Some(90.0));
        assert_eq!(secs("250ms"), Some(0.25));
        assert_eq!(secs("0"), Some(0.0));
        for bad in ["", "5", "-5s", "1x", "s", "1h-2m", "."] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn duration_strings_match_go() {
        let cases: &[(u64, &str)] = &[
            (0, "0s"),
            (1, "1ns"),
            (999, "999ns"),
            (1_000, "1µs"),
            (1_500, "1.5µs"),
            (512_300, "512.3µs"),
            (999_999, "999.999µs"),
            (1_000_000, "1ms"),
            (1_234_567, "1.234567ms"),
            (100_000_000, "100ms"),
            (1_000_000_000, "1s"),
            (1_500_000_000, "1.5s"),
            (59_999_999_999, "59.999999999s"),
            (60_000_000_000, "1m0s"),
            (90_000_000_000, "1m30s"),
            (3_600_000_000_000, "1h0m0s"),
            (3_600_000_000_001, "1h0m0.000000001s"),
            (3_661_500_000_000, "1h1m1.5s"),
            (7_200_000_000_000, "2h0m0s"),
            (100 * 3_600_000_000_000, "100h0m0s"),
        ];
        for &(ns, want) in cases {
            assert_eq!(
                go_duration_string(Duration::from_nanos(ns)),
                want,
                "{ns} ns"
            );
        }
    }

    #[test]
    fn times_format_like_go_json() {
        let at = |secs: u64, nanos: u32| UNIX_EPOCH + Duration::new(secs, nanos);
        assert_eq!(rfc3339_utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339_utc(at(1_795_856_400, 123_000_000)),
            "2026-11-28T09:00:00.123Z"
        );
        assert_eq!(
            rfc3339_utc(at(951_782_400, 1)),
            "2000-02-29T00:00:00.000000001Z"
        );
        assert_eq!(rfc3339_utc(at(4_107_542_399, 0)), "2100-02-28T23:59:59Z");
        let before = UNIX_EPOCH - Duration::from_millis(500);
        assert_eq!(rfc3339_utc(before), "1969-12-31T23:59:59.5Z");
    }

    #[test]
    fn floats_print_like_go() {
        let json = |v: f64| {
            let mut out = Vec::new();
            serialize_go_float(&v, &mut serde_json::Serializer::new(&mut out)).unwrap();
            String::from_utf8(out).unwrap()
        };
        assert_eq!(json(1.0), "1");
        assert_eq!(json(0.0), "0");
        assert_eq!(json(-3.0), "-3");
        assert_eq!(json(2.5), "2.5");
        assert_eq!(json(0.1), "0.1");
    }

    #[test]
    fn escapes_html_like_go() {
        assert_eq!(go_escape_json(r#"{"a":"x"}"#.into()), r#"{"a":"x"}"#);
        assert_eq!(
            go_escape_json("\"<a&b>\u{2028}\"".into()),
            r#""\u003ca\u0026b\u003e\u2028""#
        );
    }
}

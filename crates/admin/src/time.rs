//! Times as people read them on the console's pages and in `smtp2oauth account status`: the
//! date and time, and how long ago or from now; and as the API writes them (RFC 3339, UTC,
//! with milliseconds, beside the number of milliseconds since the epoch).
//!
//! Pages and commands show the relay machine's local time with its offset ([`local_relative`]):
//! pages work without JavaScript, so they cannot know the reader's zone, and the offset makes
//! the time unambiguous wherever the reader sits. Civil dates and time zones come from `jiff`,
//! which reads the system's time zone database.

use jiff::Timestamp;
use jiff::tz::TimeZone;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `t` as a timestamp; times outside jiff's range (years beyond ±9999) are clamped to it.
fn timestamp(t: SystemTime) -> Timestamp {
    Timestamp::try_from(t).unwrap_or(if t > UNIX_EPOCH {
        Timestamp::MAX
    } else {
        Timestamp::MIN
    })
}

/// A time in milliseconds since the epoch.
pub fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// `2026-12-06T11:10:31.123Z`: RFC 3339 in UTC with milliseconds, as the API writes times.
pub fn rfc3339(ms: u64) -> String {
    timestamp(from_ms(ms))
        .strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// `2026-12-06 12:10:31 +01:00 (18 s ago)` for a time in ms since the epoch.
pub fn local_ms(ms: u64) -> String {
    local_relative(from_ms(ms))
}

/// `2025-03-01 14:05:09 UTC`.
pub fn utc(t: SystemTime) -> String {
    timestamp(t).strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// `2026-12-06 12:10:31 +01:00`: `t` in the time zone `tz`, with its offset from UTC.
pub fn in_zone(t: SystemTime, tz: &TimeZone) -> String {
    timestamp(t)
        .to_zoned(tz.clone())
        .strftime("%Y-%m-%d %H:%M:%S %:z")
        .to_string()
}

/// `2026-12-06 12:10:31 +01:00`: `t` in this machine's time zone (`TZ`, else
/// `/etc/localtime`; UTC when neither says).
pub fn local(t: SystemTime) -> String {
    in_zone(t, &TimeZone::system())
}

/// `3 min`, `2 h 5 min`, `4 days`: a rough length for "in ..." and "... ago".
pub fn span(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", s / 60),
        3600..=86_399 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        _ => format!("{} days", s / 86_400),
    }
}

/// ` (in 52 min)` or ` (3 days ago)`, measured from now.
fn relative(t: SystemTime) -> String {
    match t.duration_since(SystemTime::now()) {
        Ok(ahead) => format!(" (in {})", span(ahead)),
        Err(e) => format!(" ({} ago)", span(e.duration())),
    }
}

/// `2025-03-01 14:05:09 UTC (in 52 min)` or `(... 3 days ago)`.
pub fn utc_relative(t: SystemTime) -> String {
    utc(t) + &relative(t)
}

/// `2026-12-06 12:10:31 +01:00 (18 s ago)`: [`local`] with how long ago or from now.
pub fn local_relative(t: SystemTime) -> String {
    local(t) + &relative(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::tz::Offset;

    #[test]
    fn civil_dates() {
        for (secs, want) in [
            (0, "1970-01-01 00:00:00 UTC"),
            (951_782_400, "2000-02-29 00:00:00 UTC"),
            (1_709_251_199, "2024-02-29 23:59:59 UTC"),
            (1_735_689_600, "2025-01-01 00:00:00 UTC"),
        ] {
            assert_eq!(utc(UNIX_EPOCH + Duration::from_secs(secs)), want);
        }
        assert_eq!(span(Duration::from_secs(59)), "59 s");
        assert_eq!(span(Duration::from_secs(3720)), "1 h 2 min");
        assert_eq!(span(Duration::from_secs(3 * 86_400 + 5)), "3 days");
        assert!(utc_relative(SystemTime::now() + Duration::from_secs(120)).contains("(in "));
        assert!(utc_relative(SystemTime::now() - Duration::from_secs(120)).contains(" ago)"));
        // Far outside any real date: clamped, never a panic.
        assert!(utc(UNIX_EPOCH + Duration::from_secs(u64::MAX / 4)).starts_with("9999-"));
    }

    #[test]
    fn api_times() {
        assert_eq!(rfc3339(1_796_555_431_123), "2026-12-06T11:10:31.123Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(5), "1970-01-01T00:00:00.005Z");
    }

    #[test]
    fn local_times_carry_their_offset() {
        let t = UNIX_EPOCH + Duration::from_secs(1_796_555_431); // 2026-12-06 11:10:31 UTC
        let paris = TimeZone::fixed(Offset::constant(1));
        assert_eq!(in_zone(t, &paris), "2026-12-06 12:10:31 +01:00");
        let st_johns = TimeZone::fixed(Offset::from_seconds(-(3 * 3600 + 1800)).unwrap());
        assert_eq!(in_zone(t, &st_johns), "2026-12-06 07:40:31 -03:30");
        let shown = local_relative(SystemTime::now() - Duration::from_secs(18));
        assert!(shown.ends_with(" s ago)"), "{shown}");
        assert_eq!(
            shown.len(),
            "2026-12-06 12:10:31 +01:00 (18 s ago)".len(),
            "{shown}"
        );
    }
}

//! Times as people read them on the accounts page and in `smtp2oauth account status`: UTC with
//! the date, and how long ago or from now. No date crate: the civil-date arithmetic is a few
//! lines (Howard Hinnant's algorithm).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `2025-03-01 14:05:09 UTC`.
pub fn utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let days = secs.div_euclid(86_400);
    let s = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        s / 3600,
        (s % 3600) / 60,
        s % 60
    )
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

/// `2025-03-01 14:05:09 UTC (in 52 min)` or `(... 3 days ago)`.
pub fn utc_relative(t: SystemTime) -> String {
    let now = SystemTime::now();
    match t.duration_since(now) {
        Ok(ahead) => format!("{} (in {})", utc(t), span(ahead)),
        Err(e) => format!("{} ({} ago)", utc(t), span(e.duration())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}

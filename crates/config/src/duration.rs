//! Durations in the config file: a number of seconds (`30`) or a number with a unit
//! (`"500ms"`, `"30s"`, `"5m"`, `"2h"`, `"5d"`), because admins think in minutes and days.

use serde::{Deserializer, Serializer};
use std::time::Duration;

/// Ten years: longer than any timeout or queue lifetime makes sense, and far from overflow.
const MAX_SECS: f64 = 10.0 * 365.0 * 86400.0;

/// Parses a human duration: a number of seconds, or a number with a unit (`ms`, `s`, `m`,
/// `h`, `d`), e.g. `"30s"`, `"5d"`.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().map_err(|_| {
        format!("`{s}` is not a duration (examples: 30, \"30s\", \"5m\", \"2h\", \"5d\")")
    })?;
    let secs = match unit.trim() {
        "" | "s" | "sec" | "secs" | "second" | "seconds" => value,
        "ms" => value / 1000.0,
        "m" | "min" | "mins" | "minute" | "minutes" => value * 60.0,
        "h" | "hour" | "hours" => value * 3600.0,
        "d" | "day" | "days" => value * 86400.0,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` in `{s}` (use ms, s, m, h or d)"
            ));
        }
    };
    if !secs.is_finite() || !(0.0..=MAX_SECS).contains(&secs) {
        return Err(format!("duration `{s}` is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Formats a duration the way [`parse`] reads it.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else {
        let s = d.as_secs();
        if s != 0 && s.is_multiple_of(86400) {
            format!("{}d", s / 86400)
        } else if s != 0 && s.is_multiple_of(3600) {
            format!("{}h", s / 3600)
        } else if s != 0 && s.is_multiple_of(60) {
            format!("{}m", s / 60)
        } else {
            format!("{s}s")
        }
    }
}

/// What a duration key takes, as type errors say it: "expected a duration such as "20s"".
pub const EXPECTED: &str = "a duration such as \"20s\"";

/// Deserializes a duration written as a human duration or a number of seconds.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(DurationVisitor)
}

/// Takes a number of seconds or a string; anything else is a type error that says what
/// belongs here (an untagged enum would only say that no variant matched).
struct DurationVisitor;

impl serde::de::Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(EXPECTED)
    }

    fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Duration, E> {
        if n <= MAX_SECS as u64 {
            Ok(Duration::from_secs(n))
        } else {
            Err(E::custom(format!("duration {n} is out of range")))
        }
    }

    fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Duration, E> {
        match u64::try_from(n) {
            Ok(n) => self.visit_u64(n),
            Err(_) => Err(E::custom(format!("duration {n} is negative"))),
        }
    }

    fn visit_f64<E: serde::de::Error>(self, f: f64) -> Result<Duration, E> {
        if f.is_finite() && (0.0..=MAX_SECS).contains(&f) {
            Ok(Duration::from_secs_f64(f))
        } else {
            Err(E::custom(format!("duration {f} is out of range")))
        }
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Duration, E> {
        parse(s).map_err(E::custom)
    }
}

/// Serializes a duration as a human duration.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let ok = [
            ("30", 30_000),
            ("30s", 30_000),
            ("500ms", 500),
            ("5m", 300_000),
            ("2h", 7_200_000),
            ("5d", 432_000_000),
            ("1.5s", 1500),
            (" 10 s ", 10_000),
            ("0", 0),
        ];
        for (s, ms) in ok {
            assert_eq!(parse(s).unwrap().as_millis(), ms, "{s}");
        }
        for bad in ["", "s", "5x", "-1s", "1e999", "abc", "99999999d"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        for d in [0, 1, 59, 60, 3600, 86400, 90] {
            let dur = Duration::from_secs(d);
            assert_eq!(parse(&format(dur)).unwrap(), dur);
        }
        assert_eq!(format(Duration::from_millis(1500)), "1500ms");
    }
}

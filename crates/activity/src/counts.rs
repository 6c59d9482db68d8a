//! Counters since start and over the last 24 hours.
//!
//! The 24-hour figure is what an admin compares with "yesterday the printer sent 40 scans";
//! it is kept as 24 hourly buckets, so memory stays fixed however busy a device is.

use serde::{Deserialize, Serialize};

const HOUR_MS: u64 = 3_600_000;
const HOURS: usize = 24;

/// What a device did: messages we accepted, messages or commands we refused, failed logins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Messages accepted (the device got a 2xx after DATA).
    pub accepted: u64,
    /// Messages or commands refused with a 4xx or 5xx (logins not included).
    pub refused: u64,
    /// Failed logins.
    pub failed_logins: u64,
}

/// Which of the [`Counts`] to add to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A message accepted.
    Accepted,
    /// A message or command refused.
    Refused,
    /// A failed login.
    FailedLogin,
}

impl Counts {
    fn add(&mut self, c: Counter) {
        match c {
            Counter::Accepted => self.accepted += 1,
            Counter::Refused => self.refused += 1,
            Counter::FailedLogin => self.failed_logins += 1,
        }
    }

    fn merge(&mut self, other: &Counts) {
        self.accepted += other.accepted;
        self.refused += other.refused;
        self.failed_logins += other.failed_logins;
    }
}

/// Counts since start plus hourly buckets for the last 24 hours.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    since_start: Counts,
    /// `(hour number since the epoch, counts in that hour)`, indexed by hour % 24.
    hours: [(u64, Counts); HOURS],
}

impl Tally {
    /// Adds one event that happened at `at_ms`.
    pub fn add(&mut self, at_ms: u64, c: Counter) {
        self.since_start.add(c);
        let hour = at_ms / HOUR_MS;
        let slot = &mut self.hours[(hour % HOURS as u64) as usize];
        if slot.0 != hour {
            *slot = (hour, Counts::default());
        }
        slot.1.add(c);
    }

    /// Everything counted since the relay started.
    pub fn since_start(&self) -> Counts {
        self.since_start
    }

    /// What was counted in the 24 hours up to `now_ms` (by whole hours).
    pub fn last_24h(&self, now_ms: u64) -> Counts {
        let now_hour = now_ms / HOUR_MS;
        let mut sum = Counts::default();
        for (hour, counts) in &self.hours {
            if *hour <= now_hour && now_hour - *hour < HOURS as u64 {
                sum.merge(counts);
            }
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_24h_forgets_older_hours() {
        let mut t = Tally::default();
        let day0 = 1_000 * HOUR_MS;
        t.add(day0, Counter::Accepted);
        t.add(day0 + 5 * HOUR_MS, Counter::Refused);
        t.add(day0 + 5 * HOUR_MS + 10, Counter::FailedLogin);
        let now = day0 + 23 * HOUR_MS;
        assert_eq!(
            t.last_24h(now),
            Counts {
                accepted: 1,
                refused: 1,
                failed_logins: 1
            }
        );
        // A day later only the hour-5 events are still in the window.
        let later = day0 + 24 * HOUR_MS;
        assert_eq!(t.last_24h(later).accepted, 0);
        assert_eq!(t.last_24h(later).refused, 1);
        let much_later = day0 + 29 * HOUR_MS;
        assert_eq!(t.last_24h(much_later), Counts::default());
        assert_eq!(t.since_start().accepted, 1);
    }

    #[test]
    fn a_reused_bucket_starts_from_zero() {
        let mut t = Tally::default();
        t.add(0, Counter::Accepted);
        t.add(24 * HOUR_MS, Counter::Accepted);
        assert_eq!(t.last_24h(24 * HOUR_MS).accepted, 1);
        assert_eq!(t.since_start().accepted, 2);
    }
}

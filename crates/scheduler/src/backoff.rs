//! When to try again: per-message backoff with jitter (short first steps, then exponential),
//! per-account holds when the upstream refuses the account itself, and per-account pauses when
//! an upstream says it is being overwhelmed.
//!
//! Exchange throttles a *mailbox*, not a message (`451 4.7.500 Server busy`, `432 4.3.2`, `421`),
//! so retrying the next message of the same account at once only digs deeper; the whole account
//! waits instead, honouring any delay the upstream asked for. Which refusals are throttling,
//! and the wait they ask for, is decided where the upstream's answer is parsed (the refusal's
//! `Cause::Throttled`); this module only turns it into durations.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The first retries of a message: a brief fault (a restart upstream, a dropped connection,
/// a token endpoint hiccup) is usually over within seconds, and a person may be waiting at the
/// printer for the scan.
pub const FIRST_STEPS: [Duration; 3] = [
    Duration::from_secs(5),
    Duration::from_secs(15),
    Duration::from_secs(30),
];

/// Delay before attempt `attempts + 1` after `attempts` failed attempts: 5 s, 15 s and 30 s
/// (each at most `initial`), then `initial` doubling (`initial * 2^(n-4)`), everything capped
/// at `max`, with ±20 % jitter so a burst of failures does not retry in lockstep.
pub fn retry_delay(attempts: u32, initial: Duration, max: Duration) -> Duration {
    let base = match attempts.max(1) {
        n @ 1..=3 => FIRST_STEPS[n as usize - 1].min(initial),
        n => initial.saturating_mul(1u32 << (n - 4).min(20)),
    };
    jitter(base.min(max), 0.2)
}

/// How long an account whose upstream refuses it (`535 5.7.3`, a connector refusing us, ...)
/// holds all its mail after its `level`-th such refusal in a row: the same steps as a
/// message's retries, so the first retry comes within seconds of an admin's fix and a long
/// outage costs a login every `max`, not one per queued message.
pub fn hold_pause(level: u32, initial: Duration, max: Duration) -> Duration {
    retry_delay(level.saturating_add(1), initial, max)
}

/// How long an account pauses after its `level`-th throttling reply in a row (30 s doubling up
/// to 15 min), or the upstream's own hint when it gives one.
pub fn throttle_pause(level: u32, hint: Option<Duration>) -> Duration {
    if let Some(h) = hint {
        return h.min(Duration::from_secs(3600));
    }
    let base = Duration::from_secs(30)
        .saturating_mul(1u32 << level.min(5))
        .min(Duration::from_secs(900));
    jitter(base, 0.2)
}

static SEED: AtomicU64 = AtomicU64::new(0);

fn jitter(d: Duration, fraction: f64) -> Duration {
    // xorshift seeded from the clock; jitter needs spread, not unpredictability.
    let mut x = SEED.load(Ordering::Relaxed);
    if x == 0 {
        x = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|t| t.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    SEED.store(x, Ordering::Relaxed);
    let unit = (x >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
    let factor = 1.0 + fraction * (2.0 * unit - 1.0);
    Duration::from_secs_f64((d.as_secs_f64() * factor).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented schedule (docs/queue.md): 5 s, 15 s, 30 s, then `retry_initial`
    /// doubling up to `retry_max`; a small `retry_initial` shortens the first steps too.
    #[test]
    fn delays_follow_the_documented_steps_within_jitter_and_cap() {
        let i = Duration::from_secs(60);
        let m = Duration::from_secs(3600);
        let small = Duration::from_secs(2);
        for (attempts, initial, max, base) in [
            (0u32, i, m, 5.0),
            (1, i, m, 5.0),
            (2, i, m, 15.0),
            (3, i, m, 30.0),
            (4, i, m, 60.0),
            (5, i, m, 120.0),
            (6, i, m, 240.0),
            (10, i, m, 3600.0),
            (40, i, m, 3600.0),
            (1, small, m, 2.0),
            (3, small, m, 2.0),
            (5, small, m, 4.0),
            (2, i, Duration::from_secs(10), 10.0),
        ] {
            for _ in 0..50 {
                let d = retry_delay(attempts, initial, max).as_secs_f64();
                assert!(
                    d >= base * 0.8 - 0.001 && d <= base * 1.2 + 0.001,
                    "attempts {attempts}, initial {initial:?}: {d}"
                );
            }
        }
        let hold = hold_pause(0, i, m).as_secs_f64();
        assert!((4.0..=6.0).contains(&hold), "{hold}");
        let hold = hold_pause(3, i, m).as_secs_f64();
        assert!((48.0..=72.0).contains(&hold), "{hold}");
    }

    #[test]
    fn pauses_grow_and_honour_hints() {
        assert!(throttle_pause(0, None) <= Duration::from_secs(36));
        assert!(throttle_pause(10, None) <= Duration::from_secs(1080));
        assert_eq!(
            throttle_pause(0, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
    }
}

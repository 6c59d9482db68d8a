//! When to try again: per-message exponential backoff with jitter, and per-account pauses when
//! an upstream says it is being overwhelmed.
//!
//! Exchange throttles a *mailbox*, not a message (`451 4.7.500 Server busy`, `432 4.3.2`, `421`),
//! so retrying the next message of the same account at once only digs deeper; the whole account
//! waits instead, honouring any delay the upstream asked for. Which refusals are throttling,
//! and the wait they ask for, is decided where the upstream's answer is parsed (the refusal's
//! `Cause::Throttled`); this module only turns it into durations.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Delay before attempt `attempt + 1` after `attempt` failed attempts: `initial * 2^(n-1)`,
/// capped at `max`, with ±20 % jitter so a burst of failures does not retry in lockstep.
pub fn retry_delay(attempts: u32, initial: Duration, max: Duration) -> Duration {
    let exp = attempts.saturating_sub(1).min(30);
    let base = initial.saturating_mul(1u32 << exp.min(20)).min(max);
    jitter(base, 0.2)
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

    #[test]
    fn delays_grow_and_stay_within_jitter_and_cap() {
        let i = Duration::from_secs(60);
        let m = Duration::from_secs(3600);
        for (attempts, base) in [
            (1u32, 60.0),
            (2, 120.0),
            (3, 240.0),
            (7, 3600.0),
            (40, 3600.0),
        ] {
            for _ in 0..50 {
                let d = retry_delay(attempts, i, m).as_secs_f64();
                assert!(
                    d >= base * 0.8 - 0.001 && d <= base * 1.2 + 0.001,
                    "attempts {attempts}: {d}"
                );
            }
        }
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

//! When to try again: per-message exponential backoff with jitter, and per-account pauses when
//! an upstream says it is being overwhelmed.
//!
//! Exchange throttles a *mailbox*, not a message (`451 4.7.500 Server busy`, `432 4.3.2`, `421`),
//! so retrying the next message of the same account at once only digs deeper; the whole account
//! waits instead, honouring any delay the upstream suggests.

use smtp2oauth_proto::Reply;
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

/// Replies that mean "you (the mailbox) are sending too fast", not "this message is bad".
pub fn is_throttle(reply: &Reply) -> bool {
    if reply.code() == 421 {
        return true;
    }
    let text = reply.text().to_ascii_lowercase();
    let busy = [
        "busy",
        "throttl",
        "too many",
        "rate limit",
        "try again later",
        "exceeded",
        "concurrent",
    ]
    .iter()
    .any(|w| text.contains(w));
    match reply.status().map(|s| (s.class, s.subject, s.detail)) {
        Some((4, 3, 2)) => true,
        Some((4, 7, d)) if (500..=599).contains(&d) => true,
        Some((4, 5, _)) => busy,
        _ => reply.is_transient() && busy && text.contains("later"),
    }
}

/// A delay the upstream suggested in words: "try again in 30 seconds", "retry after 2 minutes".
pub fn hint(reply: &Reply) -> Option<Duration> {
    let text = reply.text().to_ascii_lowercase();
    let words: Vec<&str> = text
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    for (i, w) in words.iter().enumerate() {
        let Ok(n) = w.parse::<u64>() else { continue };
        let Some(unit) = words.get(i + 1) else {
            continue;
        };
        let secs = match *unit {
            "s" | "sec" | "secs" | "second" | "seconds" => n,
            "m" | "min" | "mins" | "minute" | "minutes" => n * 60,
            "h" | "hour" | "hours" => n * 3600,
            _ => continue,
        };
        // Only numbers that follow words about retrying count; "from 10 minutes ago" does not.
        let before = &words[i.saturating_sub(4)..i];
        if before
            .iter()
            .any(|b| matches!(*b, "retry" | "again" | "after" | "wait" | "in"))
            && (1..=86_400).contains(&secs)
        {
            return Some(Duration::from_secs(secs));
        }
    }
    None
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
    use smtp2oauth_proto::ReplyAssembler;

    fn reply(s: &str) -> Reply {
        ReplyAssembler::new()
            .push_line(s.as_bytes())
            .unwrap()
            .unwrap()
    }

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
    fn throttle_table() {
        for (line, want) in [
            (
                "451 4.7.500 Server busy. Please try again later from [203.0.113.9]. (S77719)",
                true,
            ),
            (
                "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded",
                true,
            ),
            ("421 4.3.2 Service not available", true),
            ("452 4.5.3 Too many recipients", true),
            ("451 4.4.2 Connection dropped", false),
            ("454 4.7.0 Temporary authentication failure", false),
            ("550 5.1.1 User unknown", false),
            ("451 4.3.0 Mail server temporarily rejected message", false),
        ] {
            assert_eq!(is_throttle(&reply(line)), want, "{line}");
        }
    }

    #[test]
    fn hints_in_words() {
        assert_eq!(
            hint(&reply("451 4.7.500 Server busy, retry after 30 seconds")),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            hint(&reply("421 4.7.0 Try again in 2 minutes")),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            hint(&reply("451 4.7.500 Server busy. Please try again later")),
            None
        );
        assert_eq!(hint(&reply("451 4.4.2 lost 10 minutes ago")), None);
    }

    /// Graph's Retry-After reaches the account pause through the reply the Graph route makes.
    #[test]
    fn graph_throttling_replies_pause_the_account_for_retry_after() {
        use smtp2oauth_upstream::graph::{reply_for_status, throttled_reply};
        let body = br#"{"error":{"code":"ApplicationThrottled","message":"Application is over its MailboxConcurrency limit; retry in 10 minutes."}}"#;
        for status in [429, 503] {
            let r = reply_for_status(status, Some(Duration::from_secs(7)), body);
            assert!(is_throttle(&r), "{r}");
            assert_eq!(hint(&r), Some(Duration::from_secs(7)), "{r}");
            // Without Retry-After: still a throttle, with the default pause.
            let r = throttled_reply(status, None, "");
            assert!(is_throttle(&r), "{r}");
            assert_eq!(hint(&r), None, "{r}");
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

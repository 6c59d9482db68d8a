//! Brute-force protection: an address that fails to log in too often is locked out.
//!
//! The per-session limit (`max_auth_failures`) only costs an attacker a reconnect. This guard
//! counts failed logins per client address across sessions; after `lockout_after` failures within
//! `lockout_window` the address is refused at connect (`421 4.7.0`) for `lockout_time`, doubling
//! with each lockout up to `lockout_max`, so a password guesser slows to a crawl while every
//! other device keeps working. Addresses in `lockout_exempt` (the admin's own network, say) are
//! never locked out. Memory is bounded: at most `MAX_TRACKED` addresses are remembered.

use crate::identity::normalise_ip;
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MAX_TRACKED: usize = 100_000;

/// When an address is locked out, and for how long.
#[derive(Clone, Debug)]
pub struct GuardSettings {
    /// Failed logins within `lockout_window` that lock the address out (0: never).
    pub lockout_after: u32,
    /// The window in which failures add up.
    pub lockout_window: Duration,
    /// The first lockout's length (each next one doubles).
    pub lockout_time: Duration,
    /// The longest lockout.
    pub lockout_max: Duration,
    /// Addresses never locked out.
    pub exempt: Vec<IpNet>,
}

#[derive(Default)]
struct Record {
    failures: u32,
    window_start: Option<Instant>,
    locked_until: Option<Instant>,
    /// Lockouts so far (each doubles the next one); forgotten after a success.
    level: u32,
}

/// Failed logins per client address, shared by every listener.
pub struct LoginGuard {
    settings: GuardSettings,
    records: Mutex<HashMap<IpAddr, Record>>,
}

/// What a failed login led to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Keep serving the session.
    Continue,
    /// The address is now locked out for this long: close the session.
    LockedOut(Duration),
}

impl LoginGuard {
    /// A guard with no failure recorded yet.
    pub fn new(settings: GuardSettings) -> LoginGuard {
        LoginGuard {
            settings,
            records: Mutex::new(HashMap::new()),
        }
    }

    fn exempt(&self, ip: IpAddr) -> bool {
        self.settings.exempt.iter().any(|n| n.contains(&ip))
    }

    /// How much longer `ip` is locked out, if it is.
    pub fn locked(&self, ip: IpAddr) -> Option<Duration> {
        let ip = normalise_ip(ip);
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let until = records.get(&ip)?.locked_until?;
        until
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    }

    /// Counts a failed login from `ip`.
    pub fn failure(&self, ip: IpAddr) -> Verdict {
        let ip = normalise_ip(ip);
        if self.exempt(ip) || self.settings.lockout_after == 0 {
            return Verdict::Continue;
        }
        let now = Instant::now();
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if records.len() >= MAX_TRACKED && !records.contains_key(&ip) {
            prune(&mut records, now, self.settings.lockout_window);
            if records.len() >= MAX_TRACKED {
                // Still full of live records: forget the oldest windows rather than grow.
                let drop: Vec<IpAddr> = records.keys().take(MAX_TRACKED / 10).copied().collect();
                for k in drop {
                    records.remove(&k);
                }
            }
        }
        let r = records.entry(ip).or_default();
        let in_window = r
            .window_start
            .is_some_and(|s| now.duration_since(s) < self.settings.lockout_window);
        if !in_window {
            r.window_start = Some(now);
            r.failures = 0;
        }
        r.failures += 1;
        if r.failures < self.settings.lockout_after {
            return Verdict::Continue;
        }
        let period = self
            .settings
            .lockout_time
            .saturating_mul(1u32 << r.level.min(16))
            .min(self.settings.lockout_max);
        r.level += 1;
        r.failures = 0;
        r.window_start = None;
        r.locked_until = Some(now + period);
        Verdict::LockedOut(period)
    }

    /// A successful login from `ip`: its failures and lockout history are forgotten.
    pub fn success(&self, ip: IpAddr) {
        let ip = normalise_ip(ip);
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if records
            .get(&ip)
            .is_some_and(|r| r.locked_until.is_none_or(|u| u <= Instant::now()))
        {
            records.remove(&ip);
        }
    }
}

fn prune(records: &mut HashMap<IpAddr, Record>, now: Instant, window: Duration) {
    records.retain(|_, r| {
        r.locked_until.is_some_and(|u| u > now)
            || r.window_start
                .is_some_and(|s| now.duration_since(s) < window)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(after: u32, exempt: &[&str]) -> LoginGuard {
        LoginGuard::new(GuardSettings {
            lockout_after: after,
            lockout_window: Duration::from_secs(600),
            lockout_time: Duration::from_secs(60),
            lockout_max: Duration::from_secs(300),
            exempt: exempt.iter().map(|s| s.parse().unwrap()).collect(),
        })
    }

    #[test]
    fn locks_out_after_n_failures_with_growing_periods() {
        let g = guard(3, &[]);
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        assert_eq!(g.failure(ip), Verdict::Continue);
        assert_eq!(g.failure(ip), Verdict::Continue);
        assert_eq!(g.failure(ip), Verdict::LockedOut(Duration::from_secs(60)));
        assert!(g.locked(ip).unwrap() > Duration::from_secs(59));
        // another address is unaffected
        assert!(g.locked("10.0.0.10".parse().unwrap()).is_none());
        // the next lockout of the same address is longer, up to the cap
        for _ in 0..2 {
            g.failure(ip);
        }
        assert_eq!(g.failure(ip), Verdict::LockedOut(Duration::from_secs(120)));
        for _ in 0..2 {
            g.failure(ip);
        }
        assert_eq!(g.failure(ip), Verdict::LockedOut(Duration::from_secs(240)));
        for _ in 0..2 {
            g.failure(ip);
        }
        assert_eq!(g.failure(ip), Verdict::LockedOut(Duration::from_secs(300)));
        // a mapped IPv4 address is the same client
        assert!(g.locked("::ffff:10.0.0.9".parse().unwrap()).is_some());
    }

    #[test]
    fn exempt_addresses_and_success_reset() {
        let g = guard(2, &["192.168.1.0/24"]);
        let admin: IpAddr = "192.168.1.5".parse().unwrap();
        for _ in 0..10 {
            assert_eq!(g.failure(admin), Verdict::Continue);
        }
        assert!(g.locked(admin).is_none());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(g.failure(ip), Verdict::Continue);
        g.success(ip);
        assert_eq!(
            g.failure(ip),
            Verdict::Continue,
            "the success forgot the earlier failure"
        );
        assert!(matches!(g.failure(ip), Verdict::LockedOut(_)));
    }

    #[test]
    fn zero_disables() {
        let g = guard(0, &[]);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..100 {
            assert_eq!(g.failure(ip), Verdict::Continue);
        }
    }
}

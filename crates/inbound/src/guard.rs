//! Brute-force protection: failed logins locked out per client address and per username.
//!
//! The per-session limit (`max_auth_failures`) only costs an attacker a reconnect, so failures
//! are also counted across sessions, two ways:
//!
//! - **Per address** (an IPv6 address by its /64, which one host can rotate through): after
//!   `lockout_after` failures within `lockout_window` the address is locked out for
//!   `lockout_time`, doubling with each lockout up to `lockout_max`. A success of some device
//!   from the same address erases nothing. A locked address is refused at connect, at every
//!   AUTH and every MAIL, and its open sessions are closed (`421 4.7.0`): sessions learn of a
//!   lockout through [`LoginGuard::lockouts`]. Addresses in `lockout_exempt` are never locked
//!   out.
//! - **Per username** ("smart lockout"): failures for one username from addresses where it has
//!   not logged in before (see `known.rs`) are counted too, so guessing one device's password
//!   from many addresses does not go unnoticed; after `user_lockout_after` of them within
//!   `lockout_window`, attempts for that username from such addresses are refused without a
//!   password check (`454 4.7.0`) for `lockout_time`, doubling up to `lockout_max`. The
//!   username's familiar addresses (a success within 30 days, remembered across restarts) are
//!   exempt, so the real printer keeps working while its name is attacked from elsewhere.
//!
//! Memory is bounded: at most `MAX_TRACKED` addresses and as many usernames are remembered.

use crate::identity::normalise_ip;
use crate::known::KnownLogins;
use ipnet::IpNet;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MAX_TRACKED: usize = 100_000;
/// Usernames are counted by their first bytes only (nobody's name is longer).
const MAX_USERNAME: usize = 256;

/// When an address or a username is locked out, and for how long.
#[derive(Clone, Debug)]
pub struct GuardSettings {
    /// Failed logins from one address within `lockout_window` that lock it out (0: never).
    pub lockout_after: u32,
    /// Failed logins for one username, from addresses it has not logged in from, within
    /// `lockout_window` that lock the username out for such addresses (0: never).
    pub user_lockout_after: u32,
    /// The window in which failures add up.
    pub lockout_window: Duration,
    /// The first lockout's length (each next one doubles).
    pub lockout_time: Duration,
    /// The longest lockout.
    pub lockout_max: Duration,
    /// Addresses never locked out.
    pub exempt: Vec<IpNet>,
}

/// The failures of one address or username.
#[derive(Default)]
struct Record {
    failures: u32,
    window_start: Option<Instant>,
    locked_until: Option<Instant>,
    /// Lockouts so far (each doubles the next one); forgotten after a quiet `lockout_max`.
    level: u32,
}

impl Record {
    fn locked(&self, now: Instant) -> Option<Duration> {
        self.locked_until?
            .checked_duration_since(now)
            .filter(|d| !d.is_zero())
    }

    /// Counts one failure; returns the lockout it starts, if it starts one.
    fn fail(&mut self, now: Instant, after: u32, s: &GuardSettings) -> Option<Duration> {
        if self.locked(now).is_some() {
            return None;
        }
        if self
            .locked_until
            .is_some_and(|u| now.duration_since(u) > s.lockout_max)
        {
            self.level = 0;
            self.locked_until = None;
        }
        let in_window = self
            .window_start
            .is_some_and(|start| now.duration_since(start) < s.lockout_window);
        if !in_window {
            self.window_start = Some(now);
            self.failures = 0;
        }
        self.failures += 1;
        if self.failures < after {
            return None;
        }
        let period = s
            .lockout_time
            .saturating_mul(1u32 << self.level.min(16))
            .min(s.lockout_max);
        self.level += 1;
        self.failures = 0;
        self.window_start = None;
        self.locked_until = Some(now + period);
        Some(period)
    }

    fn live(&self, now: Instant, s: &GuardSettings) -> bool {
        self.locked_until
            .is_some_and(|u| u > now || now.duration_since(u) <= s.lockout_max)
            || self
                .window_start
                .is_some_and(|start| now.duration_since(start) < s.lockout_window)
    }
}

/// Failed logins per client address and per username, shared by every listener.
pub struct LoginGuard {
    settings: GuardSettings,
    addresses: Mutex<HashMap<IpAddr, Record>>,
    users: Mutex<HashMap<Vec<u8>, Record>>,
    known: KnownLogins,
    lockouts: tokio::sync::watch::Sender<u64>,
}

/// What a failed login led to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Keep serving the session.
    Continue,
    /// Now locked out for this long.
    LockedOut(Duration),
}

/// The address failures are counted by: IPv4 (or IPv4-mapped) as it is, IPv6 by its /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match normalise_ip(ip) {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

impl LoginGuard {
    /// A guard with no failure recorded yet; `known` holds the familiar addresses of usernames.
    pub fn new(settings: GuardSettings, known: KnownLogins) -> LoginGuard {
        LoginGuard {
            settings,
            addresses: Mutex::new(HashMap::new()),
            users: Mutex::new(HashMap::new()),
            known,
            lockouts: tokio::sync::watch::Sender::new(0),
        }
    }

    fn exempt(&self, ip: IpAddr) -> bool {
        let ip = normalise_ip(ip);
        self.settings.exempt.iter().any(|n| n.contains(&ip))
    }

    /// Changes each time an address is locked out: open sessions then check their own.
    pub fn lockouts(&self) -> tokio::sync::watch::Receiver<u64> {
        self.lockouts.subscribe()
    }

    /// How much longer `ip`'s address is locked out, if it is.
    pub fn locked(&self, ip: IpAddr) -> Option<Duration> {
        let records = self.addresses.lock().unwrap_or_else(|p| p.into_inner());
        records.get(&client_key(ip))?.locked(Instant::now())
    }

    /// Counts a failed login from `ip`.
    pub fn failure(&self, ip: IpAddr) -> Verdict {
        if self.exempt(ip) || self.settings.lockout_after == 0 {
            return Verdict::Continue;
        }
        let verdict = self.count(&self.addresses, client_key(ip), self.settings.lockout_after);
        if verdict != Verdict::Continue {
            self.lockouts.send_modify(|n| *n += 1);
        }
        verdict
    }

    /// How much longer `username` is locked out for `ip`, if it is: never from an address
    /// where it logged in successfully within the last 30 days.
    pub fn user_locked(&self, username: &[u8], ip: IpAddr) -> Option<Duration> {
        let key = user_key(username);
        let locked = {
            let records = self.users.lock().unwrap_or_else(|p| p.into_inner());
            records.get(&key)?.locked(Instant::now())?
        };
        (!self.known.contains(username, client_key(ip))).then_some(locked)
    }

    /// Counts a failed login for `username` from `ip` (only from an unfamiliar address).
    pub fn user_failure(&self, username: &[u8], ip: IpAddr) -> Verdict {
        if self.settings.user_lockout_after == 0
            || self.exempt(ip)
            || self.known.contains(username, client_key(ip))
        {
            return Verdict::Continue;
        }
        self.count(
            &self.users,
            user_key(username),
            self.settings.user_lockout_after,
        )
    }

    /// A successful login of `username` from `ip`: the address becomes familiar to the
    /// username. Failures are not forgotten.
    pub fn success(&self, username: &[u8], ip: IpAddr) {
        self.known.remember(username, client_key(ip));
    }

    fn count<K: Hash + Eq + Clone>(
        &self,
        map: &Mutex<HashMap<K, Record>>,
        key: K,
        after: u32,
    ) -> Verdict {
        let now = Instant::now();
        let mut records = map.lock().unwrap_or_else(|p| p.into_inner());
        if records.len() >= MAX_TRACKED && !records.contains_key(&key) {
            records.retain(|_, r| r.live(now, &self.settings));
            if records.len() >= MAX_TRACKED {
                // Still full of live records: forget some rather than grow.
                let drop: Vec<K> = records.keys().take(MAX_TRACKED / 10).cloned().collect();
                for k in drop {
                    records.remove(&k);
                }
            }
        }
        match records
            .entry(key)
            .or_default()
            .fail(now, after, &self.settings)
        {
            Some(period) => Verdict::LockedOut(period),
            None => Verdict::Continue,
        }
    }
}

fn user_key(username: &[u8]) -> Vec<u8> {
    username[..username.len().min(MAX_USERNAME)].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(after: u32, user_after: u32, exempt: &[&str]) -> LoginGuard {
        LoginGuard::new(
            GuardSettings {
                lockout_after: after,
                user_lockout_after: user_after,
                lockout_window: Duration::from_secs(600),
                lockout_time: Duration::from_secs(60),
                lockout_max: Duration::from_secs(300),
                exempt: exempt.iter().map(|s| s.parse().unwrap()).collect(),
            },
            KnownLogins::in_memory(),
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn locks_out_after_n_failures_with_growing_periods() {
        let g = guard(3, 0, &[]);
        let mut lockouts = g.lockouts();
        let a = ip("10.0.0.9");
        assert_eq!(g.failure(a), Verdict::Continue);
        assert_eq!(g.failure(a), Verdict::Continue);
        assert!(!lockouts.has_changed().unwrap());
        assert_eq!(g.failure(a), Verdict::LockedOut(Duration::from_secs(60)));
        assert!(lockouts.has_changed().unwrap(), "open sessions are told");
        lockouts.mark_unchanged();
        assert!(g.locked(a).unwrap() > Duration::from_secs(59));
        // another address is unaffected
        assert!(g.locked(ip("10.0.0.10")).is_none());
        // a mapped IPv4 address is the same client
        assert!(g.locked(ip("::ffff:10.0.0.9")).is_some());
    }

    #[test]
    fn lockouts_double_up_to_the_cap() {
        let g = guard(1, 0, &[]);
        let a = ip("10.0.0.9");
        let mut periods = Vec::new();
        for _ in 0..4 {
            if let Verdict::LockedOut(p) = g.failure(a) {
                periods.push(p.as_secs());
            }
            // what the lockout would be after it ends: force its end
            let mut records = g.addresses.lock().unwrap();
            records.get_mut(&a).unwrap().locked_until = Some(Instant::now());
        }
        assert_eq!(periods, [60, 120, 240, 300]);
    }

    #[test]
    fn a_success_does_not_erase_failures() {
        let g = guard(3, 0, &[]);
        let a = ip("10.0.0.1");
        g.failure(a);
        g.failure(a);
        g.success(b"other-device", a);
        assert!(matches!(g.failure(a), Verdict::LockedOut(_)));
    }

    #[test]
    fn ipv6_counts_by_its_64() {
        let g = guard(3, 0, &[]);
        for host in ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3"] {
            g.failure(ip(host));
        }
        assert!(g.locked(ip("2001:db8:1:2::99")).is_some());
        assert!(g.locked(ip("2001:db8:1:3::1")).is_none());
        assert_eq!(client_key(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
    }

    #[test]
    fn exempt_addresses_and_zero_disable() {
        let g = guard(2, 2, &["192.168.1.0/24"]);
        let admin = ip("192.168.1.5");
        for _ in 0..10 {
            assert_eq!(g.failure(admin), Verdict::Continue);
            assert_eq!(g.user_failure(b"mfp", admin), Verdict::Continue);
        }
        assert!(g.locked(admin).is_none());
        let g = guard(0, 0, &[]);
        for _ in 0..100 {
            assert_eq!(g.failure(ip("10.0.0.1")), Verdict::Continue);
            assert_eq!(g.user_failure(b"mfp", ip("10.0.0.1")), Verdict::Continue);
        }
    }

    /// Guessing one username from many addresses locks the username for new addresses; the
    /// address it logged in from before is exempt.
    #[test]
    fn a_username_guessed_from_many_addresses_is_locked_for_unfamiliar_ones() {
        let g = guard(10, 5, &[]);
        let printer = ip("192.168.1.20");
        g.success(b"mfp", printer);
        for i in 0..4 {
            assert_eq!(
                g.user_failure(b"mfp", ip(&format!("2001:db8:{i}::1"))),
                Verdict::Continue
            );
        }
        // failures from the printer's own address do not count towards the username's
        assert_eq!(g.user_failure(b"mfp", printer), Verdict::Continue);
        assert!(g.user_locked(b"mfp", ip("10.9.9.9")).is_none());
        assert_eq!(
            g.user_failure(b"mfp", ip("2001:db8:9::1")),
            Verdict::LockedOut(Duration::from_secs(60))
        );
        assert!(g.user_locked(b"mfp", ip("10.9.9.9")).is_some());
        assert!(
            g.user_locked(b"mfp", printer).is_none(),
            "the printer keeps working"
        );
        assert!(g.user_locked(b"other", ip("10.9.9.9")).is_none());
        // no address got locked by this
        assert!(g.locked(ip("2001:db8:9::1")).is_none());
    }
}

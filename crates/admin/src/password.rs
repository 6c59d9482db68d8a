//! The console's password check: argon2 on a small fixed pool, one check at a time per
//! address, and a lockout per address.
//!
//! Why: anyone who can reach the admin address can post guesses. Verifying each on tokio's
//! blocking pool let 48 parallel guesses take the relay from 78 MB to 641 MB (every argon2 run
//! holds 19 MiB, and glibc keeps a grown thread heap). Here at most [`WORKERS`] verifications
//! run at once and at most [`QUEUED`] wait; an address gets one check at a time and, after
//! [`LOCKOUT_AFTER`] wrong passwords within [`WINDOW`], none for a while (doubling up to
//! [`LOCKOUT_MAX`]). So a flood from one address costs one thread and a few bytes, and the
//! admin at another address still gets in.
//!
//! Scripts send the password with every request (HTTP Basic); a correct one is remembered as
//! a keyed hash (HMAC-SHA-256 under a key made at start) for [`CACHE_TTL`], so a script does
//! not pay argon2 per call. Wrong passwords are never remembered.

use ring::hmac;
use smtp2oauth_tokens::Secret;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Verifier threads.
pub const WORKERS: usize = 2;
/// Checks waiting for a verifier beyond the running ones; more are answered "busy".
pub const QUEUED: usize = 4;
/// Wrong passwords from one address within [`WINDOW`] that lock it out.
pub const LOCKOUT_AFTER: usize = 10;
/// The window wrong passwords are counted in.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// The first lockout; each further one doubles, up to [`LOCKOUT_MAX`].
pub const LOCKOUT: Duration = Duration::from_secs(5 * 60);
/// The longest lockout.
pub const LOCKOUT_MAX: Duration = Duration::from_secs(3600);
/// How long a correct password sent by a script is remembered.
pub const CACHE_TTL: Duration = Duration::from_secs(300);
/// Addresses whose failures are remembered at most (the oldest are forgotten first).
const MAX_ADDRESSES: usize = 4096;
/// Correct passwords remembered at most (they are all the same password, hashed alike; the
/// bound only matters after a password change with a restart).
const MAX_CACHED: usize = 16;

/// What a check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The password is right.
    Ok,
    /// The password is wrong.
    Wrong,
    /// Too many wrong passwords from this address: no check until `retry_after` has passed.
    LockedOut {
        /// How long until checks resume.
        retry_after: Duration,
    },
    /// A check from this address is already running, or every verifier is busy.
    Busy,
}

/// The address an attempt is counted under: IPv4 as is, IPv6 by its /64 (a host has a whole
/// /64 to rotate through).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
        v4 => v4,
    }
}

#[derive(Debug, Default)]
struct Attempts {
    failures: VecDeque<Instant>,
    locked_until: Option<Instant>,
    lockouts: u32,
    in_flight: bool,
    last: Option<Instant>,
}

struct Job {
    password: Secret,
    reply: tokio::sync::oneshot::Sender<bool>,
}

/// The password check of the console.
pub struct PasswordCheck {
    jobs: SyncSender<Job>,
    addresses: Mutex<HashMap<IpAddr, Attempts>>,
    cache: Mutex<HashMap<Vec<u8>, Instant>>,
    key: hmac::Key,
}

impl PasswordCheck {
    /// A check against `hash` (a PHC string), with its verifier threads started.
    pub fn new(hash: Secret) -> PasswordCheck {
        let (jobs, rx) = sync_channel::<Job>(QUEUED);
        let rx = Arc::new(Mutex::new(rx));
        let hash = Arc::new(hash);
        for i in 0..WORKERS {
            let (rx, hash) = (rx.clone(), hash.clone());
            let _ = std::thread::Builder::new()
                .name(format!("admin-argon2-{i}"))
                .spawn(move || verifier(&rx, &hash));
        }
        let rng = ring::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .unwrap_or_else(|_| hmac::Key::new(hmac::HMAC_SHA256, &rand_fallback()));
        PasswordCheck {
            jobs,
            addresses: Mutex::new(HashMap::new()),
            cache: Mutex::new(HashMap::new()),
            key,
        }
    }

    fn addresses(&self) -> MutexGuard<'_, HashMap<IpAddr, Attempts>> {
        self.addresses.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cache(&self) -> MutexGuard<'_, HashMap<Vec<u8>, Instant>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks `password` sent from `peer`.
    pub async fn check(&self, peer: IpAddr, password: Secret) -> Verdict {
        let tag = hmac::sign(&self.key, password.expose().as_bytes())
            .as_ref()
            .to_vec();
        if self.remembered(&tag) {
            return Verdict::Ok;
        }
        let key = address_key(peer);
        if let Some(v) = self.admit(key) {
            return v;
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        let ok = match self.jobs.try_send(Job { password, reply }) {
            Ok(()) => rx.await.ok(),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => None,
        };
        self.settle(key, ok);
        match ok {
            None => Verdict::Busy,
            Some(true) => {
                self.remember(tag);
                Verdict::Ok
            }
            Some(false) => Verdict::Wrong,
        }
    }

    /// Whether `peer` may be checked now (None) or why not; marks a check as running.
    fn admit(&self, key: IpAddr) -> Option<Verdict> {
        let now = Instant::now();
        let mut map = self.addresses();
        if !map.contains_key(&key) && map.len() >= MAX_ADDRESSES {
            forget_oldest(&mut map);
        }
        let a = map.entry(key).or_default();
        a.last = Some(now);
        if let Some(until) = a.locked_until.filter(|u| *u > now) {
            return Some(Verdict::LockedOut {
                retry_after: until - now,
            });
        }
        if a.in_flight {
            return Some(Verdict::Busy);
        }
        a.in_flight = true;
        None
    }

    /// Records a check's result (None: it did not run) and locks the address out when it has
    /// guessed wrong too often.
    fn settle(&self, key: IpAddr, ok: Option<bool>) {
        let now = Instant::now();
        let mut map = self.addresses();
        let Some(a) = map.get_mut(&key) else { return };
        a.in_flight = false;
        if ok != Some(false) {
            return;
        }
        a.failures.push_back(now);
        while a
            .failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > WINDOW)
        {
            a.failures.pop_front();
        }
        if a.failures.len() >= LOCKOUT_AFTER {
            let lock = LOCKOUT
                .saturating_mul(1 << a.lockouts.min(8))
                .min(LOCKOUT_MAX);
            a.locked_until = Some(now + lock);
            a.lockouts += 1;
            a.failures.clear();
            tracing::warn!(address = %key, minutes = lock.as_secs() / 60,
                "admin console: too many wrong passwords from this address; its password checks are refused for a while");
        }
    }

    fn remembered(&self, tag: &[u8]) -> bool {
        let mut cache = self.cache();
        cache.retain(|_, at| at.elapsed() < CACHE_TTL);
        cache.contains_key(tag)
    }

    fn remember(&self, tag: Vec<u8>) {
        let mut cache = self.cache();
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(tag, Instant::now());
    }
}

fn forget_oldest(map: &mut HashMap<IpAddr, Attempts>) {
    let oldest = map
        .iter()
        .filter(|(_, a)| !a.in_flight)
        .min_by_key(|(_, a)| a.last)
        .map(|(k, _)| *k);
    if let Some(k) = oldest {
        map.remove(&k);
    }
}

/// Only when the system's random source fails (it does not on Linux): a key from the clock and
/// the process id is still unknown to a remote guesser.
fn rand_fallback() -> Vec<u8> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{nanos}-{}", std::process::id()).into_bytes()
}

fn verifier(rx: &Mutex<Receiver<Job>>, hash: &Secret) {
    use argon2::PasswordVerifier;
    loop {
        let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
            Ok(j) => j,
            Err(_) => return, // the check was dropped
        };
        let ok = argon2::Argon2::default()
            .verify_password(job.password.expose().as_bytes(), hash.expose())
            .is_ok();
        let _ = job.reply.send(ok);
    }
}

/// An argon2id hash that costs little to check (for tests only).
#[cfg(test)]
pub(crate) fn cheap_hash(password: &str) -> String {
    use argon2::PasswordHasher;
    let params = argon2::Params::new(64, 1, 1, None).expect("params");
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(password.as_bytes())
        .expect("hash")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cheap hash, so the test measures the rules, not argon2.
    fn check(password: &str) -> PasswordCheck {
        PasswordCheck::new(Secret::from(cheap_hash(password)))
    }

    #[tokio::test]
    async fn right_and_wrong_and_a_lockout_per_address() {
        let c = check("right");
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(c.check(a, "right".into()).await, Verdict::Ok);
        for _ in 0..LOCKOUT_AFTER {
            assert_eq!(c.check(a, "guess".into()).await, Verdict::Wrong);
        }
        // Locked out: even the right password is not checked from this address...
        assert!(matches!(
            c.check(a, "nope".into()).await,
            Verdict::LockedOut { retry_after } if retry_after > LOCKOUT - Duration::from_secs(5)
        ));
        // ...except a script's remembered one (it proved itself before the lockout), and
        // other addresses are not affected.
        assert_eq!(c.check(a, "right".into()).await, Verdict::Ok);
        assert_eq!(c.check(b, "wrong".into()).await, Verdict::Wrong);
        assert_eq!(c.check(b, "right".into()).await, Verdict::Ok);
    }

    #[tokio::test]
    async fn one_check_at_a_time_per_address() {
        let c = Arc::new(check("right"));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        c.admit(address_key(a));
        assert_eq!(c.check(a, "guess".into()).await, Verdict::Busy);
        c.settle(address_key(a), None);
        assert_eq!(c.check(a, "guess".into()).await, Verdict::Wrong);
    }

    #[test]
    fn ipv6_counts_by_its_64() {
        let k = |s: &str| address_key(s.parse().unwrap());
        assert_eq!(k("2001:db8:1:2:aaaa::1"), k("2001:db8:1:2:bbbb::2"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_eq!(k("::ffff:192.0.2.7"), k("192.0.2.7"));
    }
}

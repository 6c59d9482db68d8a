//! Concurrent session limits: in all, per client address, and for sessions not logged in.
//!
//! A misbehaving device (or anything else on the LAN) must not be able to take every session
//! slot. Over a limit, the client gets `421 4.7.0` and is closed, rather than a silent drop that
//! looks like a network fault on the device's panel.
//!
//! Sessions that have not logged in are cheap to open and worth nothing until they do, so they
//! are limited harder: at most `max_unauthenticated_per_ip` per address, and when the relay is
//! full, the oldest of them is closed (`421`) to admit the new connection, as Postfix does
//! under stress. Logged-in sessions and devices recognised by their address are never closed
//! to make room. A session gives its slot back the moment it is over (before its reply to QUIT
//! is written), so a device that reconnects at once finds it free.

use crate::identity::normalise_ip;
use smtp2oauth_proto::SessionError;
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// The limits.
#[derive(Clone, Copy, Debug)]
pub struct LimiterSettings {
    /// Sessions at once, over all listeners.
    pub max_sessions: usize,
    /// Sessions at once from one address.
    pub max_sessions_per_ip: usize,
    /// Sessions not logged in at once from one address.
    pub max_unauthenticated_per_ip: usize,
}

/// Limits sessions at once.
pub struct Limiter {
    settings: LimiterSettings,
    next_id: AtomicU64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    sessions: HashMap<u64, Entry>,
    by_ip: HashMap<IpAddr, PerIp>,
    /// Sessions not logged in, oldest first (ids grow).
    unauthenticated: BTreeSet<u64>,
}

struct Entry {
    ip: IpAddr,
    authenticated: bool,
    evict: CancellationToken,
}

#[derive(Default)]
struct PerIp {
    sessions: usize,
    unauthenticated: usize,
}

/// A session's slot; given back when released or dropped.
pub struct Permit {
    limiter: Arc<Limiter>,
    id: u64,
    evict: CancellationToken,
}

impl Limiter {
    /// A limiter with these limits.
    pub fn new(settings: LimiterSettings) -> Arc<Limiter> {
        Arc::new(Limiter {
            settings,
            next_id: AtomicU64::new(1),
            state: Mutex::new(State::default()),
        })
    }

    /// A slot for a new session from `ip` (`authenticated` when its device is known by the
    /// address), or the refusal. When the relay is full, the oldest session not logged in is
    /// closed to make room.
    pub fn try_acquire(
        self: &Arc<Self>,
        ip: IpAddr,
        authenticated: bool,
    ) -> Result<Permit, SessionError> {
        // Per full address, not per IPv6 /64 as lockouts are: on a LAN every device shares one
        // /64, and a cap on sessions for all of them together would refuse honest printers.
        let ip = normalise_ip(ip);
        let s = self.settings;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let here = state.by_ip.get(&ip);
        if here.is_some_and(|h| h.sessions >= s.max_sessions_per_ip) {
            return Err(SessionError::TooManyConnectionsFromAddress);
        }
        if !authenticated && here.is_some_and(|h| h.unauthenticated >= s.max_unauthenticated_per_ip)
        {
            return Err(SessionError::TooManyUnauthenticated);
        }
        if state.sessions.len() >= s.max_sessions {
            let victim = state.unauthenticated.first().copied();
            match victim {
                Some(id) => state.remove(id).evict.cancel(),
                None => return Err(SessionError::TooManyConnections),
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let evict = CancellationToken::new();
        state.insert(
            id,
            Entry {
                ip,
                authenticated,
                evict: evict.clone(),
            },
        );
        Ok(Permit {
            limiter: self.clone(),
            id,
            evict,
        })
    }

    /// Sessions open now.
    pub fn active(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sessions
            .len()
    }
}

impl State {
    fn insert(&mut self, id: u64, e: Entry) {
        let here = self.by_ip.entry(e.ip).or_default();
        here.sessions += 1;
        if !e.authenticated {
            here.unauthenticated += 1;
            self.unauthenticated.insert(id);
        }
        self.sessions.insert(id, e);
    }

    /// Takes a session out of every count. Panics if it is not there: callers check.
    fn remove(&mut self, id: u64) -> Entry {
        let e = self.sessions.remove(&id).expect("a counted session");
        self.unauthenticated.remove(&id);
        if let Some(here) = self.by_ip.get_mut(&e.ip) {
            here.sessions -= 1;
            if !e.authenticated {
                here.unauthenticated -= 1;
            }
            if here.sessions == 0 {
                self.by_ip.remove(&e.ip);
            }
        }
        e
    }
}

impl Permit {
    /// The session logged in: it no longer counts as unauthenticated and is never closed to
    /// make room.
    pub fn logged_in(&self) {
        let mut state = self.limiter.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(e) = state.sessions.get_mut(&self.id) else {
            return;
        };
        if e.authenticated {
            return;
        }
        e.authenticated = true;
        let ip = e.ip;
        state.unauthenticated.remove(&self.id);
        if let Some(here) = state.by_ip.get_mut(&ip) {
            here.unauthenticated -= 1;
        }
    }

    /// Gives the slot back now (the session is ending).
    pub fn release(&self) {
        let mut state = self.limiter.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.sessions.contains_key(&self.id) {
            state.remove(self.id);
        }
    }

    /// Resolves when the limiter closed this session to admit another.
    pub async fn evicted(&self) {
        self.evict.cancelled().await
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(max: usize, per_ip: usize, unauth: usize) -> Arc<Limiter> {
        Limiter::new(LimiterSettings {
            max_sessions: max,
            max_sessions_per_ip: per_ip,
            max_unauthenticated_per_ip: unauth,
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn limits_total_and_per_address() {
        let l = limiter(3, 2, 10);
        let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
        let p1 = l.try_acquire(a, true).unwrap();
        let _p2 = l.try_acquire(a, true).unwrap();
        assert_eq!(
            l.try_acquire(a, true).err(),
            Some(SessionError::TooManyConnectionsFromAddress)
        );
        let _p3 = l.try_acquire(b, true).unwrap();
        assert_eq!(
            l.try_acquire(b, true).err(),
            Some(SessionError::TooManyConnections),
            "nobody to make room: all logged in"
        );
        drop(p1);
        assert!(l.try_acquire(b, true).is_ok());
        assert_eq!(l.active(), 2);
        // IPv4-mapped IPv6 counts as the same client
        let l = limiter(10, 1, 10);
        let _p = l.try_acquire(a, true).unwrap();
        assert_eq!(
            l.try_acquire(ip("::ffff:10.0.0.1"), true).err(),
            Some(SessionError::TooManyConnectionsFromAddress)
        );
    }

    #[test]
    fn sessions_without_a_login_are_limited_per_address() {
        let l = limiter(100, 50, 2);
        let a = ip("10.0.0.1");
        let p1 = l.try_acquire(a, false).unwrap();
        let _p2 = l.try_acquire(a, false).unwrap();
        assert_eq!(
            l.try_acquire(a, false).err(),
            Some(SessionError::TooManyUnauthenticated)
        );
        assert!(
            l.try_acquire(a, true).is_ok(),
            "a known device still gets in"
        );
        p1.logged_in();
        assert!(l.try_acquire(a, false).is_ok());
    }

    #[tokio::test]
    async fn a_full_relay_closes_its_oldest_session_without_a_login() {
        let l = limiter(3, 10, 10);
        let old = l.try_acquire(ip("10.0.0.1"), false).unwrap();
        let logged = l.try_acquire(ip("10.0.0.2"), false).unwrap();
        logged.logged_in();
        let newer = l.try_acquire(ip("10.0.0.3"), false).unwrap();
        let device = l.try_acquire(ip("10.0.0.4"), false).unwrap();
        // The oldest unauthenticated session made room; the logged-in one was spared.
        tokio::time::timeout(std::time::Duration::from_secs(1), old.evicted())
            .await
            .expect("the oldest session is told to go");
        assert!(!logged.evict.is_cancelled() && !newer.evict.is_cancelled());
        assert_eq!(l.active(), 3);
        drop(old); // its task ending later does not give back someone else's slot
        assert_eq!(l.active(), 3);
        drop((logged, newer, device));
        assert_eq!(l.active(), 0);
    }

    #[test]
    fn released_slots_are_free_at_once() {
        let l = limiter(10, 1, 10);
        let a = ip("10.0.0.1");
        let p = l.try_acquire(a, true).unwrap();
        p.release();
        let q = l
            .try_acquire(a, true)
            .expect("free before the permit is dropped");
        assert_eq!(l.active(), 1, "a released permit gives nothing back twice");
        drop(q);
    }
}

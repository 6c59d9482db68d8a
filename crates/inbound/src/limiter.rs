//! Concurrent session limits, global and per client address.
//!
//! A misbehaving device (or anything else on the LAN) must not be able to take every session
//! slot. Over a limit, the client gets `421 4.7.0` and is closed, rather than a silent drop that
//! looks like a network fault on the device's panel.

use crate::identity::normalise_ip;
use smtp2oauth_proto::SessionError;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Limits sessions at once, in all and per client address.
pub struct Limiter {
    max: usize,
    per_ip: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

/// Held for the life of a session; releases its slot when dropped.
pub struct Permit {
    limiter: Arc<Limiter>,
    ip: IpAddr,
}

impl Limiter {
    /// A limiter for `max` sessions, `per_ip` from one address.
    pub fn new(max: usize, per_ip: usize) -> Arc<Limiter> {
        Arc::new(Limiter {
            max,
            per_ip,
            state: Mutex::new(State::default()),
        })
    }

    /// A slot for a new session from `ip` (released when the permit drops), or the refusal.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, SessionError> {
        let ip = normalise_ip(ip);
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.total >= self.max {
            return Err(SessionError::TooManyConnections);
        }
        let n = s.by_ip.entry(ip).or_insert(0);
        if *n >= self.per_ip {
            return Err(SessionError::TooManyConnectionsFromAddress);
        }
        *n += 1;
        s.total += 1;
        Ok(Permit {
            limiter: self.clone(),
            ip,
        })
    }

    /// Sessions open now.
    pub fn active(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut s = self.limiter.state.lock().unwrap_or_else(|p| p.into_inner());
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                s.by_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_total_and_per_address() {
        let l = Limiter::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = l.try_acquire(a).unwrap();
        let _p2 = l.try_acquire(a).unwrap();
        assert_eq!(
            l.try_acquire(a).err(),
            Some(SessionError::TooManyConnectionsFromAddress)
        );
        let _p3 = l.try_acquire(b).unwrap();
        assert_eq!(
            l.try_acquire(b).err(),
            Some(SessionError::TooManyConnections)
        );
        drop(p1);
        assert!(l.try_acquire(b).is_ok());
        assert_eq!(l.active(), 2);
        // IPv4-mapped IPv6 counts as the same client
        let l = Limiter::new(10, 1);
        let _p = l.try_acquire(a).unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(
            l.try_acquire(mapped).err(),
            Some(SessionError::TooManyConnectionsFromAddress)
        );
    }
}

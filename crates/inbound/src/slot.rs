//! A session's place in the relay, and the three reasons it may lose it while it waits for
//! the device: the relay is full and it has not logged in (the limiter closes it to admit a new
//! connection), it has not logged in within `preauth_timeout`, or its address was locked out
//! for failed logins (by this session or another one from the same address).
//!
//! The driver waits on [`Slot::closing`] beside its read; whichever comes first wins.

use crate::guard::LoginGuard;
use crate::limiter::Permit;
use smtp2oauth_proto::SessionError;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// One session's slot, login deadline and lockout watch.
pub struct Slot {
    permit: Permit,
    peer: IpAddr,
    guard: Arc<LoginGuard>,
    lockouts: tokio::sync::watch::Receiver<u64>,
    /// Until the session logs in (none for a device recognised by its address).
    login_deadline: Option<Instant>,
}

impl Slot {
    /// The slot of a session from `peer` that connected now; `logged_in` when its device is
    /// recognised by the address.
    pub fn new(
        permit: Permit,
        peer: IpAddr,
        guard: Arc<LoginGuard>,
        preauth_timeout: Duration,
        logged_in: bool,
    ) -> Slot {
        let lockouts = guard.lockouts();
        Slot {
            permit,
            peer,
            guard,
            lockouts,
            login_deadline: (!logged_in).then(|| Instant::now() + preauth_timeout),
        }
    }

    /// The session logged in: no deadline any more, and no longer the first to make room.
    pub fn logged_in(&mut self) {
        if self.login_deadline.take().is_some() {
            self.permit.logged_in();
        }
    }

    /// Gives the slot back (the session is over; its last reply is about to be written).
    pub fn release(&self) {
        self.permit.release();
    }

    /// Resolves with the refusal to send when the session must end now. Cancel-safe.
    pub async fn closing(&mut self) -> SessionError {
        let mut watching = true;
        loop {
            tokio::select! {
                () = self.permit.evicted() => return SessionError::Evicted,
                () = sleep_until(self.login_deadline) => return SessionError::LoginTimeout,
                changed = self.lockouts.changed(), if watching => {
                    if changed.is_err() {
                        watching = false;
                    } else if self.guard.locked(self.peer).is_some() {
                        return SessionError::LockedOut;
                    }
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

//! Idle authenticated upstream SMTP sessions, kept for the next message.
//!
//! Exchange Online is 20-150 ms away and a new submission session costs about eight round trips
//! before the first MAIL (connect, greeting, EHLO, STARTTLS, TLS handshake, EHLO, AUTH), plus a
//! TLS handshake's CPU on both sides. After a delivery the session is already back in its
//! initial state (a transaction ends with the reply to the body), so the next message can start
//! with MAIL at once: about two round trips a message instead of ten.
//!
//! Rules:
//! - At most `max_idle` sessions wait here (the account's connection limit), so idle plus busy
//!   sessions never exceed what the upstream allows: a delivery opens a new session only when
//!   no idle one is left.
//! - A session waits at most `idle_timeout`; a reaper task closes older ones with QUIT, so we
//!   do not hold connections the upstream would drop anyway.
//! - A session is not reused once the token it authenticated with has expired: the upstream may
//!   end such a session at any moment, and new sessions authenticate with the current token.
//!   Nor once the account holds another token or none (signed out, signed in as someone else,
//!   its token refused): a session must never outlive the permission it was opened with.
//! - A session the upstream closed or spoke on while idle is stale and is dropped when taken
//!   (checked without waiting); a session that fails later, before the body, is replaced by the
//!   caller without failing the message.
//! - Sessions are handed out most recently used first, so a quiet period lets the extra ones
//!   age out instead of keeping all of them barely alive.

use crate::client::Client;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;
use tracing::debug;

/// An authenticated session between two messages.
pub(crate) struct Idle<C> {
    pub client: Client,
    /// What the server offered after TLS (EHLO).
    pub caps: C,
    /// When the token this session authenticated with expires.
    pub token_expires: SystemTime,
    /// Which token it authenticated with ([`smtp2oauth_tokens::AccessToken::id`]).
    pub token_id: u64,
    pub since: Instant,
    /// Messages delivered on this session so far.
    pub uses: u64,
}

pub(crate) struct Pool<C> {
    idle: Mutex<Vec<Idle<C>>>,
    max_idle: usize,
    idle_timeout: Duration,
    reaper: Mutex<bool>,
}

impl<C: Send + 'static> Pool<C> {
    /// `idle_timeout` zero disables pooling: every session is closed after its message.
    pub(crate) fn new(max_idle: usize, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Pool {
            idle: Mutex::new(Vec::new()),
            max_idle,
            idle_timeout,
            reaper: Mutex::new(false),
        })
    }

    pub(crate) fn enabled(&self) -> bool {
        self.max_idle > 0 && !self.idle_timeout.is_zero()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle<C>>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used session that can still carry a message, if any. Expired or stale
    /// sessions met on the way are closed.
    pub(crate) fn take(&self, token_id: u64) -> Option<Idle<C>> {
        loop {
            let mut s = self.lock().pop()?;
            let now = Instant::now();
            if s.token_id != token_id {
                close(s.client, "the account's token changed");
                continue;
            }
            if now.duration_since(s.since) >= self.idle_timeout {
                close(s.client, "idle too long");
                continue;
            }
            if s.token_expires <= SystemTime::now() + Duration::from_secs(30) {
                close(s.client, "its token expires");
                continue;
            }
            if s.client.is_stale() {
                debug!(target = %s.client.target(), uses = s.uses, "pooled upstream session was closed by the server");
                drop(s.client);
                continue;
            }
            s.since = now;
            return Some(s);
        }
    }

    /// Closes every idle session (the account's token was withdrawn).
    pub(crate) fn close_all(&self, why: &'static str) {
        let idle = std::mem::take(&mut *self.lock());
        for s in idle {
            close(s.client, why);
        }
    }

    /// Keeps a session that just finished a message cleanly (no transaction open). A session
    /// the pool does not keep (pooling off, pool full) is given back for the caller to close.
    #[must_use]
    pub(crate) fn put(self: &Arc<Self>, mut s: Idle<C>) -> Option<Idle<C>> {
        if !self.enabled() {
            return Some(s);
        }
        s.since = Instant::now();
        {
            let mut idle = self.lock();
            if idle.len() >= self.max_idle {
                return Some(s);
            }
            idle.push(s);
        }
        self.start_reaper();
        None
    }

    /// Sessions waiting now (metrics, tests).
    pub(crate) fn idle_count(&self) -> usize {
        self.lock().len()
    }

    /// Closes idle sessions past `idle_timeout`, until the pool is dropped. Started on first
    /// use, inside the runtime; it holds only a weak reference.
    fn start_reaper(self: &Arc<Self>) {
        let mut started = self.reaper.lock().unwrap_or_else(|p| p.into_inner());
        if *started {
            return;
        }
        *started = true;
        let weak: Weak<Self> = Arc::downgrade(self);
        let period = (self.idle_timeout / 2).max(Duration::from_millis(100));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(pool) = weak.upgrade() else { return };
                let now = Instant::now();
                let expired: Vec<Idle<C>> = {
                    let mut idle = pool.lock();
                    let (old, keep): (Vec<_>, Vec<_>) = idle
                        .drain(..)
                        .partition(|s| now.duration_since(s.since) >= pool.idle_timeout);
                    *idle = keep;
                    old
                };
                for s in expired {
                    close(s.client, "idle timeout");
                }
            }
        });
    }
}

/// QUIT in the background: nobody waits for a session we no longer need.
fn close(client: Client, why: &'static str) {
    debug!(target = %client.target(), reason = why, "closing upstream session");
    tokio::spawn(client.quit());
}

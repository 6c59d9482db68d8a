//! Keeping delegated accounts signed in while the relay runs.
//!
//! - A sign-in (on the accounts page, or `smtp2oauth account login` in another process) must
//!   release the mail that waited for it at once: [`Releaser`] tells the account's token cache
//!   to forget its "sign-in needed" failure and makes the scheduler retry the account's queue.
//!   Sign-ins by another process are noticed by [`watch_store`], which looks at the token files
//!   every two seconds (a `stat`, and a read only when one changed).
//! - Refresh tokens die of inactivity after 90 days, and a token fetched only when mail arrives
//!   can be late by a network timeout: [`keep_fresh`] redeems each delegated account's refresh
//!   token shortly before its access token enters the refresh margin, so there is always a valid
//!   token and the refresh token is rotated at least hourly.

use crate::wiring::TokenSources;
use smtp2oauth_scheduler::Scheduler;
use smtp2oauth_tokens::{TokenSource, TokenStore};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How often the token files are checked for sign-ins made by another process.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);
/// Refresh margin of the token cache (it refreshes with min(this, lifetime/2) left).
const REFRESH_MARGIN: Duration = Duration::from_secs(600);

/// Acts on new sign-ins, each once, whichever way it was noticed (the sign-in manager in this
/// process, or the store watcher for another process's): acting twice would drop the access
/// token just obtained with the new sign-in.
pub struct Releaser {
    store: Arc<TokenStore>,
    tokens: TokenSources,
    scheduler: Arc<Scheduler>,
    /// The sign-in time last acted on (or found at start), per account.
    handled: Mutex<HashMap<String, Option<SystemTime>>>,
}

impl Releaser {
    pub async fn new(
        store: Arc<TokenStore>,
        accounts: &[String],
        tokens: TokenSources,
        scheduler: Arc<Scheduler>,
    ) -> Arc<Self> {
        let mut handled = HashMap::new();
        for a in accounts {
            let at = store.load(a).await.ok().flatten();
            handled.insert(a.clone(), at.and_then(|t| t.signed_in_at));
        }
        Arc::new(Releaser {
            store,
            tokens,
            scheduler,
            handled: Mutex::new(handled),
        })
    }

    /// The token file of `account` may hold a new sign-in: if so, use it now (the cache forgets
    /// its "sign-in needed" failure and redeems it) and send the mail that waited for it.
    pub async fn check(&self, account: &str) {
        let record = match self.store.load(account).await {
            Ok(Some(t)) => t,
            Ok(None) => {
                let previous = self.lock().insert(account.to_owned(), None).flatten();
                if previous.is_some()
                    && let Some(source) = self.tokens.get(account)
                {
                    // Signed out (`account logout` in another process): stop using the token
                    // and the upstream sessions of that sign-in now, not when the token expires.
                    source.credentials_changed();
                    info!(
                        account,
                        "signed out: the account's mail waits for a new sign-in"
                    );
                }
                return;
            }
            Err(e) => {
                warn!(account, error = %e, "cannot read the token file");
                return;
            }
        };
        if record.signed_in_at.is_none() || record.sign_in_required {
            return;
        }
        let previous = self
            .lock()
            .insert(account.to_owned(), record.signed_in_at)
            .flatten();
        if previous == record.signed_in_at {
            return;
        }
        if let Some(source) = self.tokens.get(account) {
            source.credentials_changed();
            // Redeem the new sign-in now: it proves it works, and the accounts page and
            // metrics show a valid token at once even when no mail is waiting.
            let source = source.clone();
            tokio::spawn(async move {
                let _ = source.token().await;
            });
        }
        let n = self.scheduler.retry_account(account);
        info!(
            account,
            queued = n,
            "signed in: queued mail of the account is being delivered"
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<SystemTime>>> {
        self.handled.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The tasks that keep delegated accounts signed in, built and not yet running.
pub struct Tasks {
    pub store: Arc<TokenStore>,
    /// The delegated accounts.
    pub accounts: Vec<String>,
    pub releaser: Arc<Releaser>,
    /// The token source of each delegated account's primary route.
    pub fresh: Vec<(String, Arc<dyn TokenSource>)>,
}

impl Tasks {
    /// Starts watching the store and keeping tokens fresh, until `stop`.
    pub fn spawn(self, stop: CancellationToken) {
        tokio::spawn(watch_store(
            self.store,
            self.accounts,
            self.releaser,
            stop.clone(),
        ));
        tokio::spawn(keep_fresh(self.fresh, stop));
    }
}

/// Watches the token files of `accounts` for sign-ins made by another process, until `stop`.
pub async fn watch_store(
    store: Arc<TokenStore>,
    accounts: Vec<String>,
    releaser: Arc<Releaser>,
    stop: CancellationToken,
) {
    let mut stamps = HashMap::new();
    for a in &accounts {
        stamps.insert(a.clone(), store.stamp(a).await);
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(WATCH_INTERVAL) => {}
        }
        for a in &accounts {
            let stamp = store.stamp(a).await;
            if stamps.get(a) == Some(&stamp) {
                continue;
            }
            stamps.insert(a.clone(), stamp);
            releaser.check(a).await;
        }
    }
}

/// How long until `source`'s access token enters the cache's refresh margin (zero: now).
fn due_in(source: &dyn TokenSource, now: SystemTime) -> Duration {
    let status = source.status();
    match (status.valid_until, status.last_refresh) {
        (Some(until), Some(from)) => {
            let lifetime = until.duration_since(from).unwrap_or_default();
            let margin = REFRESH_MARGIN.min(lifetime / 2);
            until
                .checked_sub(margin)
                .and_then(|at| at.duration_since(now).ok())
                .unwrap_or_default()
        }
        _ => Duration::ZERO,
    }
}

/// Redeems each delegated account's refresh token before its access token needs it.
pub async fn keep_fresh(tokens: Vec<(String, Arc<dyn TokenSource>)>, stop: CancellationToken) {
    loop {
        let mut next = Duration::from_secs(300);
        for (account, source) in &tokens {
            if source.status().sign_in_required {
                continue;
            }
            if due_in(source.as_ref(), SystemTime::now()).is_zero() {
                match source.token().await {
                    Ok(t) => {
                        debug!(account = %account, expires_in_secs = t.time_left().as_secs(), "access token kept fresh")
                    }
                    // The cache logged the failure (and serves a still-valid token meanwhile).
                    Err(e) => {
                        debug!(account = %account, error = %e, "could not refresh ahead of time")
                    }
                }
            }
            let due = due_in(source.as_ref(), SystemTime::now());
            next = next.min(if due.is_zero() {
                // Still due: the request failed; the cache's cooldown spaces the retries.
                Duration::from_secs(30)
            } else {
                // One second late, so the cache sees the token inside its margin.
                due + Duration::from_secs(1)
            });
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(next.max(Duration::from_secs(1))) => {}
        }
    }
}

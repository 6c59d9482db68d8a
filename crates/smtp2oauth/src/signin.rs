//! Keeping delegated accounts signed in while the relay runs.
//!
//! - A sign-in (on the accounts page, or `smtp2oauth account login` in another process) must
//!   release the mail that waited for it at once: [`released`] tells the account's token cache
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
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How often the token files are checked for sign-ins made by another process.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);
/// Refresh margin of the token cache (it refreshes with min(this, lifetime/2) left).
const REFRESH_MARGIN: Duration = Duration::from_secs(600);

/// Someone signed in to `account`: use the new sign-in now, and send what waited for it.
pub fn released(account: &str, tokens: &TokenSources, scheduler: &Scheduler) {
    if let Some(source) = tokens.get(account) {
        source.credentials_changed();
        // Redeem the new sign-in now: it proves it works, and the accounts page and metrics
        // show a valid token at once even when no mail is waiting.
        let source = source.clone();
        tokio::spawn(async move {
            let _ = source.token().await;
        });
    }
    let n = scheduler.retry_account(account);
    info!(
        account,
        queued = n,
        "signed in: queued mail of the account is being delivered"
    );
}

/// Watches the token files of `accounts` for new sign-ins until `stop`.
pub async fn watch_store(
    store: Arc<TokenStore>,
    accounts: Vec<String>,
    tokens: TokenSources,
    scheduler: Arc<Scheduler>,
    stop: CancellationToken,
) {
    let mut stamps = HashMap::new();
    let mut signed_in = HashMap::new();
    for a in &accounts {
        stamps.insert(a.clone(), store.stamp(a));
        let at = store.load(a).ok().flatten().and_then(|t| t.signed_in_at);
        signed_in.insert(a.clone(), at);
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(WATCH_INTERVAL) => {}
        }
        for a in &accounts {
            let stamp = store.stamp(a);
            if stamps.get(a) == Some(&stamp) {
                continue;
            }
            stamps.insert(a.clone(), stamp);
            let record = {
                let store = store.clone();
                let a = a.clone();
                tokio::task::spawn_blocking(move || store.load(&a)).await
            };
            match record {
                Ok(Ok(Some(t))) => {
                    let known = signed_in.insert(a.clone(), t.signed_in_at).flatten();
                    if t.signed_in_at.is_some() && t.signed_in_at != known && !t.sign_in_required {
                        info!(account = %a, "a new sign-in was stored");
                        released(a, &tokens, &scheduler);
                    }
                }
                Ok(Ok(None)) => {
                    signed_in.insert(a.clone(), None);
                }
                Ok(Err(e)) => warn!(account = %a, error = %e, "cannot read the token file"),
                Err(e) => warn!(account = %a, error = %e, "cannot read the token file"),
            }
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

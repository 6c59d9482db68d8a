//! The per-account token cache: hands out a valid access token, refreshing it before it gets
//! close to expiry, with at most one request to the token endpoint in flight per account.
//!
//! Why this shape: a burst of scans from several printers must not become a burst of token
//! requests (single flight); a Microsoft outage must not stop mail while an issued token is still
//! good (failed refreshes keep the token); and a broken configuration must not hammer the
//! endpoint (failure cooldown).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tracing::{info, warn};

use crate::error::TokenError;
use crate::grant::{ClientCredentialsGrant, Grant};
use crate::secret::Secret;

/// The longest a `Retry-After` can stretch the failure cooldown: the endpoint does not get to
/// stop an account's mail for longer than this on its say-so.
const MAX_RETRY_AFTER_COOLDOWN: Duration = Duration::from_secs(300);

/// A bearer token and when it stops being valid. `Debug` does not print the token.
#[derive(Clone)]
pub struct AccessToken {
    token: Secret,
    obtained_at: SystemTime,
    expires_at: SystemTime,
    id: u64,
}

impl AccessToken {
    /// For token sources other than [`TokenCache`] (and test doubles). `id` should be unique per
    /// source so [`TokenSource::invalidate`] can tell tokens apart.
    pub fn new(token: Secret, obtained_at: SystemTime, expires_at: SystemTime, id: u64) -> Self {
        Self {
            token,
            obtained_at,
            expires_at,
            id,
        }
    }

    /// The bearer token value.
    pub fn secret(&self) -> &str {
        self.token.expose()
    }

    /// When the token stops being accepted.
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }

    /// When the request for this token was sent (expiry is counted from here).
    pub fn obtained_at(&self) -> SystemTime {
        self.obtained_at
    }

    /// A per-cache sequence number, so callers can tell tokens apart without exposing them.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Lifetime left by the wall clock; zero once expired.
    pub fn time_left(&self) -> Duration {
        self.expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default()
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("id", &self.id)
            .field("token", &self.token)
            .field("obtained_at", &self.obtained_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

type TokenFuture<'a> = Pin<Box<dyn Future<Output = Result<AccessToken, TokenError>> + Send + 'a>>;

/// Something that can hand out a currently valid access token. Object-safe (used as
/// `Arc<dyn TokenSource>`).
pub trait TokenSource: Send + Sync {
    /// A valid access token: the cached one, or a new one from the token endpoint.
    fn token(&self) -> TokenFuture<'_>;
    /// The upstream rejected this token (e.g. SMTP 535 5.7.3): drop it from the cache if it is
    /// still the cached one, so the next `token()` fetches a new one.
    fn invalidate(&self, token: &AccessToken);
    /// The source's state, for status pages and metrics.
    fn status(&self) -> TokenStatus;
    /// [`AccessToken::id`] of the token held now, if any: what the upstream pool checks before
    /// each delivery, without building a whole [`TokenStatus`].
    fn held_token_id(&self) -> Option<u64> {
        self.status().token_id
    }
    /// The credentials behind this source changed (a person signed in again): forget the
    /// remembered failure and cached token so the next `token()` asks with the new ones.
    fn credentials_changed(&self) {}
    /// When the remembered failure's cooldown ends, so a caller may ask again (None: no
    /// failure is remembered, or its cooldown is over).
    fn retry_at(&self) -> Option<Instant> {
        None
    }
}

/// How long [`wait_for_token`] waits between tries when the source gives no cooldown.
const WAIT_STEP: Duration = Duration::from_secs(1);

/// Returns once `source` hands out a token, asking again each time its failure cooldown ends;
/// Err when it fails for a reason waiting does not cure (a needed sign-in, a configuration the
/// token endpoint refuses).
///
/// This is how mail held back by a token-endpoint outage goes out seconds after the endpoint
/// recovers, rather than at its next retry: the caller releases the account's queue when this
/// returns Ok. It makes no more requests than the cache's cooldown allows anyway.
pub async fn wait_for_token(source: &dyn TokenSource) -> Result<(), TokenError> {
    loop {
        let now = Instant::now();
        let wait = source
            .retry_at()
            .filter(|t| *t > now)
            .map_or(Duration::ZERO, |t| t - now);
        tokio::time::sleep(wait).await;
        match source.token().await {
            Ok(_) => return Ok(()),
            Err(e) if e.kind == crate::TokenErrorKind::Transient => {
                // A failure another caller already had: its cooldown is what to wait for; a
                // source without one gets a short fixed step, never a busy loop.
                if source.retry_at().is_none_or(|t| t <= Instant::now()) {
                    tokio::time::sleep(WAIT_STEP).await;
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// A snapshot for status pages and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenStatus {
    /// Expiry of the cached token, if there is one that has not expired.
    pub valid_until: Option<SystemTime>,
    /// When the last successful token request was sent.
    pub last_refresh: Option<SystemTime>,
    /// The last failure, until a request succeeds again.
    pub last_error: Option<String>,
    /// Token requests sent.
    pub requests: u64,
    /// Token requests that failed.
    pub failures: u64,
    /// No token can be had until a person signs in (delegated accounts).
    pub sign_in_required: bool,
    /// [`AccessToken::id`] of the cached token, if there is one that has not expired.
    pub token_id: Option<u64>,
}

/// How a [`TokenCache`] refreshes and backs off.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// Refresh when less than this much lifetime is left: min(refresh_margin, lifetime/2).
    /// Default 10 min (Microsoft's high-volume SMTP endpoint refuses tokens about to expire:
    /// "501 5.5.127 Token will expire soon").
    pub refresh_margin: Duration,
    /// After a failed request, callers get the same error without a new request for this long
    /// (or the Retry-After given, if longer; Retry-After counts up to 5 min). Default 5 s.
    pub failure_cooldown: Duration,
}

impl Default for CacheOptions {
    fn default() -> Self {
        Self {
            refresh_margin: Duration::from_secs(600),
            failure_cooldown: Duration::from_secs(5),
        }
    }
}

struct Cached {
    token: AccessToken,
    // Decisions use the monotonic clock so a wall-clock step cannot make a token look fresh
    // for hours or expire it early; the SystemTime copies in `token` are for display.
    refresh_at: Instant,
    expires: Instant,
}

struct Failure {
    error: TokenError,
    until: Instant,
}

#[derive(Default)]
struct State {
    cached: Option<Cached>,
    failure: Option<Failure>,
    last_id: u64,
    last_refresh: Option<SystemTime>,
    last_error: Option<String>,
    requests: u64,
    failures: u64,
    /// Bumped by `credentials_changed`: a request sent under an earlier epoch used credentials
    /// that are no longer the account's (signed out, or someone else signed in).
    epoch: u64,
}

impl State {
    fn fresh(&self, now: Instant) -> Option<AccessToken> {
        self.cached
            .as_ref()
            .filter(|cached| now < cached.refresh_at)
            .map(|cached| cached.token.clone())
    }

    fn unexpired(&self, now: Instant) -> Option<AccessToken> {
        self.held(now).map(|cached| cached.token.clone())
    }

    /// The cached token, unless it has expired.
    fn held(&self, now: Instant) -> Option<&Cached> {
        self.cached.as_ref().filter(|cached| now < cached.expires)
    }
}

/// Per-account cache implementing [`TokenSource`] around a grant.
pub struct TokenCache {
    account: String,
    grant: Box<dyn Grant>,
    http: reqwest::Client,
    opts: CacheOptions,
    state: Mutex<State>,
    /// Held while a token request is in flight: the single-flight gate. Waiters re-check the
    /// state once they get it, and find the token (or the fresh error) the holder stored.
    refresh: tokio::sync::Mutex<()>,
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("account", &self.account)
            .field("grant", &self.grant)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl TokenCache {
    /// A cache for `account` over the client-credentials `grant`.
    pub fn new(
        account: impl Into<String>,
        grant: ClientCredentialsGrant,
        http: reqwest::Client,
        opts: CacheOptions,
    ) -> Self {
        Self::with_grant(account, Box::new(grant), http, opts)
    }

    /// A cache around any grant (delegated accounts use [`crate::StoredRefreshGrant`]).
    pub fn with_grant(
        account: impl Into<String>,
        grant: Box<dyn Grant>,
        http: reqwest::Client,
        opts: CacheOptions,
    ) -> Self {
        Self {
            account: account.into(),
            grant,
            http,
            opts,
            state: Mutex::new(State::default()),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    /// The account this cache serves.
    pub fn account(&self) -> &str {
        &self.account
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding this lock, and the state stays consistent field by field
        // even if something did, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn get(&self) -> Result<AccessToken, TokenError> {
        if let Some(token) = self.state().fresh(Instant::now()) {
            return Ok(token);
        }
        let _gate = match self.refresh.try_lock() {
            Ok(gate) => gate,
            Err(_) => {
                // Someone is already refreshing. A token inside the refresh margin is still
                // good, so hand it out rather than queue behind a possibly slow request.
                if let Some(token) = self.state().unexpired(Instant::now()) {
                    return Ok(token);
                }
                self.refresh.lock().await
            }
        };
        {
            let now = Instant::now();
            let state = self.state();
            if let Some(token) = state.fresh(now) {
                return Ok(token);
            }
            if let Some(failure) = state.failure.as_ref().filter(|f| now < f.until) {
                return match state.unexpired(now) {
                    Some(token) => Ok(token),
                    None => Err(failure.error.clone()),
                };
            }
        }
        self.fetch().await
    }

    /// One token request; the caller holds the single-flight gate.
    async fn fetch(&self) -> Result<AccessToken, TokenError> {
        let sent_at = SystemTime::now();
        let sent = Instant::now();
        let epoch = self.state().epoch;
        let result = self.grant.request_token(&self.http).await;
        let mut state = self.state();
        // Counted once the outcome is known (a counter that went up, then down, would read as
        // a reset), and only when the endpoint was actually asked.
        if !matches!(&result, Err(e) if e.not_sent) {
            state.requests += 1;
        }
        if state.epoch != epoch {
            // The credentials changed while we asked: whatever came back belongs to the old
            // ones, and must not be handed out now (e.g. after a sign-out).
            if result.is_err() {
                state.failures += 1;
            }
            drop(state);
            info!(account = %self.account, "the account's sign-in changed during a token request; its result is discarded");
            return Err(TokenError::transient(
                "the account's sign-in changed during the token request; asking again later",
            ));
        }
        match result {
            Ok(response) => {
                let lifetime = response.expires_in;
                let margin = self.opts.refresh_margin.min(lifetime / 2);
                state.last_id += 1;
                let token = AccessToken {
                    token: response.access_token,
                    obtained_at: sent_at,
                    expires_at: sent_at.checked_add(lifetime).unwrap_or(sent_at),
                    id: state.last_id,
                };
                state.cached = Some(Cached {
                    token: token.clone(),
                    refresh_at: sent.checked_add(lifetime - margin).unwrap_or(sent),
                    expires: sent.checked_add(lifetime).unwrap_or(sent),
                });
                state.failure = None;
                state.last_refresh = Some(sent_at);
                state.last_error = None;
                info!(
                    account = %self.account,
                    flow = self.grant.flow(),
                    expires_in_secs = lifetime.as_secs(),
                    token_id = token.id,
                    "obtained access token"
                );
                Ok(token)
            }
            Err(error) => {
                let retry_after = error
                    .retry_after
                    .unwrap_or_default()
                    .min(MAX_RETRY_AFTER_COOLDOWN);
                let cooldown = self.opts.failure_cooldown.max(retry_after);
                let now = Instant::now();
                if !error.not_sent {
                    // `token_refreshes_total` counts requests: a relay waiting for a sign-in
                    // makes none, so none fails.
                    state.failures += 1;
                }
                state.last_error = Some(error.to_string());
                state.failure = Some(Failure {
                    error: error.clone(),
                    until: now.checked_add(cooldown).unwrap_or(now),
                });
                // An issued token stays valid until it expires whatever the endpoint now says
                // (for any kind of error), so keep serving it: mail keeps flowing through an
                // outage, or until the admin fixes a rotated secret.
                let fallback = state.unexpired(now);
                drop(state);
                warn!(
                    account = %self.account,
                    flow = self.grant.flow(),
                    kind = ?error.kind,
                    oauth_error = error.oauth_error.as_deref(),
                    aadsts = error.aadsts,
                    http_status = error.http_status,
                    cooldown_secs = cooldown.as_secs_f64(),
                    using_cached_token = fallback.is_some(),
                    advice = error.advice(),
                    "token request failed: {error}"
                );
                fallback.ok_or(error)
            }
        }
    }
}

impl TokenSource for TokenCache {
    fn token(&self) -> TokenFuture<'_> {
        Box::pin(self.get())
    }

    fn invalidate(&self, token: &AccessToken) {
        let mut state = self.state();
        if state
            .cached
            .as_ref()
            .is_some_and(|cached| cached.token.id == token.id)
        {
            state.cached = None;
            drop(state);
            info!(
                account = %self.account,
                token_id = token.id,
                "access token rejected upstream; dropped from the cache"
            );
        }
    }

    fn held_token_id(&self) -> Option<u64> {
        self.state()
            .held(Instant::now())
            .map(|cached| cached.token.id)
    }

    fn status(&self) -> TokenStatus {
        let state = self.state();
        let held = state.held(Instant::now()).map(|cached| &cached.token);
        TokenStatus {
            valid_until: held.map(|token| token.expires_at),
            token_id: held.map(|token| token.id),
            last_refresh: state.last_refresh,
            last_error: state.last_error.clone(),
            requests: state.requests,
            failures: state.failures,
            sign_in_required: self.grant.sign_in_required(),
        }
    }

    fn retry_at(&self) -> Option<Instant> {
        let now = Instant::now();
        self.state()
            .failure
            .as_ref()
            .map(|f| f.until)
            .filter(|until| *until > now)
    }

    fn credentials_changed(&self) {
        self.grant.credentials_changed();
        let mut state = self.state();
        state.failure = None;
        state.cached = None;
        state.epoch += 1;
        drop(state);
        info!(account = %self.account, "credentials changed; the next token request uses them");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_token_debug_hides_the_token() {
        let now = SystemTime::now();
        let token = AccessToken::new(
            Secret::from("eyJ0eXAiOiJKV1QiLCJub25jZSI6"),
            now,
            now + Duration::from_secs(60),
            7,
        );
        let debug = format!("{token:?}");
        assert!(!debug.contains("eyJ0eXAi"), "{debug}");
        assert!(debug.contains("id: 7"), "{debug}");
        assert_eq!(token.secret(), "eyJ0eXAiOiJKV1QiLCJub25jZSI6");
        assert!(token.time_left() <= Duration::from_secs(60));
    }

    #[test]
    fn token_source_is_object_safe() {
        fn assert_dyn(_: Option<std::sync::Arc<dyn TokenSource>>) {}
        assert_dyn(None);
    }
}

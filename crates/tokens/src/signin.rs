//! Running a person's sign-in from start to stored refresh token, for the accounts page and for
//! `smtp2oauth account login`.
//!
//! For the authorization-code flow, [`SignInManager::begin_authorization`] makes a fresh `state`
//! and PKCE verifier, remembers them bound to the caller's browser session, and returns the URL
//! to send the browser to; [`SignInManager::complete_authorization`] accepts a callback only
//! with a `state` it issued, from the same session, within ten minutes, once (the entry is
//! removed whatever the outcome), and redeems the code with the verifier. For the device-code
//! flow, it asks for a user code and polls until someone has typed it. Either way the refresh
//! token goes into the encrypted [`TokenStore`] and the listeners registered with
//! [`SignInManager::on_signed_in`] are told, so queued mail can go out at once.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::{info, warn};

use crate::delegated::{DelegatedClient, DelegatedFlow, DeviceAuthorization, PollEvent};
use crate::error::{TokenError, sanitise};
use crate::grant::TokenResponse;
use crate::pkce::{Pkce, random_token};
use crate::secret::Secret;
use crate::store::{LoginPrompt, StoreError, StoredToken, TokenStore};

/// How long a started authorization may take before its callback is refused.
pub const STATE_LIFETIME: Duration = Duration::from_secs(600);
/// Started authorizations kept at most; the oldest is forgotten first.
const MAX_PENDING: usize = 64;

/// One account that signs in with a delegated flow.
#[derive(Debug, Clone)]
pub struct SignInTarget {
    /// The account's name.
    pub account: String,
    /// Its app registration and endpoints.
    pub client: DelegatedClient,
    /// The HTTP client for its identity platform.
    pub http: reqwest::Client,
    /// Where its sign-in is stored.
    pub store: Arc<TokenStore>,
}

/// Why a sign-in did not complete, in words for the admin. Never contains a code, verifier or
/// token.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    /// No delegated account has this name.
    #[error("there is no account `{0}` that signs in with a delegated flow")]
    UnknownAccount(String),
    /// The account signs in with the other flow.
    #[error("account `{account}` uses flow = \"{flow}\"; this sign-in needs flow = \"{wanted}\"")]
    WrongFlow {
        /// The account.
        account: String,
        /// Its flow.
        flow: &'static str,
        /// The flow this sign-in needs.
        wanted: &'static str,
    },
    /// The callback's `state` was not issued here, or was already used.
    #[error(
        "this sign-in response does not belong to a sign-in started here (its state is unknown \
         or was already used); start the sign-in again from the accounts page"
    )]
    UnknownState,
    /// The callback came from another browser session than the one that started the sign-in.
    #[error(
        "this sign-in was started in another browser session; start it again from the browser \
         you want to use"
    )]
    WrongSession,
    /// The sign-in (or its code) expired before it completed.
    #[error("the sign-in took longer than 10 minutes; start it again")]
    Expired,
    /// The identity provider refused, or the sign-in could not be started or received.
    #[error("the identity provider did not sign you in: {0}")]
    Provider(String),
    /// The callback carried neither a code nor an error.
    #[error("the sign-in response has neither a code nor an error")]
    NoCode,
    /// The token endpoint refused the code or the device code.
    #[error("{error}{}", error.advice().map(|a| format!(" ({a})")).unwrap_or_default())]
    Token {
        /// What the token endpoint said, classified.
        error: TokenError,
    },
    /// The token endpoint answered without a refresh token; the text says how to get one.
    #[error(
        "the token endpoint returned no refresh token, so the relay could not stay signed in: \
         {0}"
    )]
    NoRefreshToken(&'static str),
    /// The sign-in could not be written to the token store.
    #[error("cannot save the sign-in: {0}")]
    Store(#[from] StoreError),
}

impl From<TokenError> for SignInError {
    fn from(error: TokenError) -> Self {
        SignInError::Token { error }
    }
}

/// What the provider put on the redirect URI's query string.
#[derive(Debug, Default, Clone)]
pub struct CallbackParams {
    /// The `state` we sent with the authorization request.
    pub state: Option<String>,
    /// The authorization code, on success.
    pub code: Option<Secret>,
    /// The OAuth `error`, on failure.
    pub error: Option<String>,
    /// The provider's explanation of `error`.
    pub error_description: Option<String>,
}

/// A device-code sign-in started from the accounts page, as the page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceLoginStatus {
    /// Waiting for someone to enter the code shown.
    Waiting(LoginPrompt),
    /// The sign-in ended without success, for this reason.
    Failed(String),
    /// Someone signed in.
    Done,
}

struct Pending {
    account: String,
    binding: Secret,
    pkce: Pkce,
    started: Instant,
}

type Listener = Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Starts and completes sign-ins for the delegated accounts.
pub struct SignInManager {
    targets: HashMap<String, SignInTarget>,
    pending: Mutex<HashMap<String, Pending>>,
    device: Mutex<HashMap<String, DeviceLoginStatus>>,
    listeners: Mutex<Vec<Listener>>,
}

impl std::fmt::Debug for SignInManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignInManager")
            .field("accounts", &self.targets.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl SignInManager {
    /// A manager for the delegated accounts in `targets`.
    pub fn new(targets: Vec<SignInTarget>) -> Self {
        Self {
            targets: targets
                .into_iter()
                .map(|t| (t.account.clone(), t))
                .collect(),
            pending: Mutex::new(HashMap::new()),
            device: Mutex::new(HashMap::new()),
            listeners: Mutex::new(Vec::new()),
        }
    }

    /// Calls `listener(account)` after every successful sign-in, and waits for it before the
    /// sign-in is reported complete (so whatever the listener updates is current by then).
    pub fn on_signed_in<F, Fut>(&self, listener: F)
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        lock(&self.listeners).push(Arc::new(move |account| Box::pin(listener(account))));
    }

    /// What the manager knows about `account`.
    pub fn target(&self, account: &str) -> Option<&SignInTarget> {
        self.targets.get(account)
    }

    fn target_for(&self, account: &str, flow: DelegatedFlow) -> Result<&SignInTarget, SignInError> {
        let target = self
            .targets
            .get(account)
            .ok_or_else(|| SignInError::UnknownAccount(account.to_owned()))?;
        if target.client.flow != flow {
            return Err(SignInError::WrongFlow {
                account: account.to_owned(),
                flow: target.client.flow.as_str(),
                wanted: flow.as_str(),
            });
        }
        Ok(target)
    }

    /// Starts an authorization-code sign-in bound to `binding` (the browser session, or any
    /// value the caller will present again) and returns the URL to send the browser to.
    pub fn begin_authorization(&self, account: &str, binding: &str) -> Result<String, SignInError> {
        let target = self.target_for(account, DelegatedFlow::AuthorizationCode)?;
        let state = random_token(32);
        let pkce = Pkce::new();
        let url = target.client.authorization_url(&state, &pkce)?;
        let mut pending = lock(&self.pending);
        pending.retain(|_, p| p.started.elapsed() < STATE_LIFETIME);
        while pending.len() >= MAX_PENDING {
            let oldest = pending
                .iter()
                .min_by_key(|(_, p)| p.started)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => pending.remove(&k),
                None => break,
            };
        }
        pending.insert(
            state,
            Pending {
                account: account.to_owned(),
                binding: Secret::from(binding),
                pkce,
                started: Instant::now(),
            },
        );
        info!(account, "sign-in started (authorization code with PKCE)");
        Ok(url)
    }

    /// Completes an authorization-code sign-in from the redirect URI's query. Returns the
    /// account that is now signed in.
    pub async fn complete_authorization(
        &self,
        params: CallbackParams,
        binding: &str,
    ) -> Result<String, SignInError> {
        // The state is checked (and used up) before anything else in the request is looked at:
        // a response that does not belong to a sign-in we started gets no further.
        let pending = {
            let state = params.state.as_deref().ok_or(SignInError::UnknownState)?;
            let mut map = lock(&self.pending);
            let entry = map.remove(state).ok_or(SignInError::UnknownState)?;
            if entry.binding != Secret::from(binding) {
                // Not the browser that started it: put nothing back (single use), refuse.
                warn!(account = %entry.account, "sign-in callback from another browser session refused");
                return Err(SignInError::WrongSession);
            }
            entry
        };
        let account = pending.account.clone();
        if pending.started.elapsed() >= STATE_LIFETIME {
            return Err(SignInError::Expired);
        }
        if let Some(error) = params.error.as_deref() {
            let description = params
                .error_description
                .as_deref()
                .map(|d| sanitise(d.lines().next().unwrap_or_default(), 300))
                .unwrap_or_default();
            let text = provider_error_words(&sanitise(error, 64), &description);
            warn!(account = %account, error = %sanitise(error, 64), "the identity provider did not complete the sign-in: {description}");
            return Err(SignInError::Provider(text));
        }
        let code = params.code.ok_or(SignInError::NoCode)?;
        let target = self.target_for(&account, DelegatedFlow::AuthorizationCode)?;
        let response = target
            .client
            .redeem_code(&target.http, code.expose(), pending.pkce.verifier())
            .await?;
        self.store_sign_in(target, response).await?;
        Ok(account)
    }

    /// Asks for a device code for `account` (logging who waits for it in the store so the
    /// accounts page can show it). Poll with [`Self::finish_device_login`].
    pub async fn start_device_login(
        &self,
        account: &str,
        started_by: &str,
    ) -> Result<DeviceAuthorization, SignInError> {
        let target = self.target_for(account, DelegatedFlow::DeviceCode)?;
        let device = target.client.start_device_login(&target.http).await?;
        let prompt = LoginPrompt {
            user_code: device.user_code.clone(),
            verification_uri: device.verification_uri.clone(),
            expires_at: unix(device.expires_at()),
            started_by: started_by.to_owned(),
        };
        if let Err(e) = target.store.set_login_prompt(account, Some(prompt)).await {
            warn!(account, error = %e, "cannot record the device-code login for the accounts page");
        }
        info!(account, user_code = %device.user_code, verification_uri = %device.verification_uri,
            started_by, "device-code sign-in started: waiting for someone to enter the code");
        Ok(device)
    }

    /// Polls until the device-code sign-in for `account` completes, then stores it.
    pub async fn finish_device_login(
        &self,
        account: &str,
        device: &DeviceAuthorization,
        on_event: &mut (dyn FnMut(PollEvent<'_>) + Send),
    ) -> Result<(), SignInError> {
        let target = self.target_for(account, DelegatedFlow::DeviceCode)?;
        let result = target
            .client
            .poll_device_login(&target.http, device, on_event)
            .await;
        let _ = target.store.set_login_prompt(account, None).await;
        self.store_sign_in(target, result?).await
    }

    /// Starts a device-code sign-in in the background (the accounts page's Sign in button) and
    /// returns what to show. A sign-in already waiting for `account` is shown again, not
    /// restarted.
    pub async fn start_device_login_background(
        self: &Arc<Self>,
        account: &str,
    ) -> Result<LoginPrompt, SignInError> {
        if let Some(DeviceLoginStatus::Waiting(prompt)) = self.device_login(account) {
            return Ok(prompt);
        }
        let device = self
            .start_device_login(account, "the accounts page")
            .await?;
        let prompt = LoginPrompt {
            user_code: device.user_code.clone(),
            verification_uri: device.verification_uri.clone(),
            expires_at: unix(device.expires_at()),
            started_by: "the accounts page".into(),
        };
        lock(&self.device).insert(
            account.to_owned(),
            DeviceLoginStatus::Waiting(prompt.clone()),
        );
        let me = self.clone();
        let account = account.to_owned();
        tokio::spawn(async move {
            let result = me.finish_device_login(&account, &device, &mut |_| {}).await;
            let status = match result {
                Ok(()) => DeviceLoginStatus::Done,
                Err(e) => {
                    warn!(account = %account, error = %e, "device-code sign-in did not complete");
                    DeviceLoginStatus::Failed(e.to_string())
                }
            };
            lock(&me.device).insert(account, status);
        });
        Ok(prompt)
    }

    /// The latest device-code sign-in this process started for `account`.
    pub fn device_login(&self, account: &str) -> Option<DeviceLoginStatus> {
        let status = lock(&self.device).get(account).cloned()?;
        match &status {
            DeviceLoginStatus::Waiting(p) if p.expires_at <= unix(SystemTime::now()) => None,
            _ => Some(status),
        }
    }

    async fn store_sign_in(
        &self,
        target: &SignInTarget,
        response: TokenResponse,
    ) -> Result<(), SignInError> {
        let refresh_token = response.refresh_token.ok_or(match target.client.provider {
            crate::ProviderKind::Google => {
                "Google sends one only with access_type=offline after a consent prompt; revoke the app's access in the Google account and sign in again"
            }
            _ => "add offline_access to the account's scope",
        })
        .map_err(SignInError::NoRefreshToken)?;
        let now = SystemTime::now();
        let record = StoredToken {
            refresh_token: Some(refresh_token),
            client_id: target.client.client_id.clone(),
            flow: target.client.flow.as_str().to_owned(),
            scope: response.scope.clone(),
            signed_in_at: Some(now),
            last_refresh: Some(now),
            last_error: None,
            sign_in_required: false,
            generation: 0,
        };
        target
            .store
            .update(&target.account, move |_| Some(record))
            .await?;
        info!(account = %target.account, flow = target.client.flow.as_str(), scope = response.scope.as_deref().unwrap_or(""),
            file = %target.store.path(&target.account).display(), "signed in: the refresh token is stored, encrypted");
        let listeners: Vec<Listener> = lock(&self.listeners).clone();
        for listener in listeners {
            listener(target.account.clone()).await;
        }
        Ok(())
    }
}

/// The provider's error on the redirect, in plain words first, its own words after.
fn provider_error_words(error: &str, description: &str) -> String {
    let plain = match error {
        "access_denied" => "the sign-in was cancelled, or consent was not given",
        "consent_required" | "interaction_required" => {
            "consent is needed: an administrator must grant consent for the app's permissions"
        }
        "invalid_request" => {
            "the provider refused the request (check the redirect URI and client ID)"
        }
        "unauthorized_client" => {
            "the app is not allowed to use this flow (check the app registration)"
        }
        "invalid_scope" => "the requested scope is not valid for this app",
        "server_error" | "temporarily_unavailable" => {
            "the provider had a temporary problem; try again"
        }
        _ => "",
    };
    let mut out = String::new();
    if !plain.is_empty() {
        out.push_str(plain);
        out.push_str(" — ");
    }
    out.push_str(error);
    if !description.is_empty() {
        out.push_str(": ");
        out.push_str(description);
    }
    out
}

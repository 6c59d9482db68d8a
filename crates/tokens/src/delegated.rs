//! Delegated OAuth 2.0: a person signs in once, and the relay keeps the refresh token alive.
//!
//! Many tenants do not allow app-only SMTP; they grant `SMTP.Send` (and `offline_access`) to a
//! user instead. Getting that user's first token takes a sign-in, through one of two flows:
//! - authorization code with PKCE (RFC 6749 4.1 + RFC 7636): the admin's browser goes to the
//!   provider's authorize endpoint and comes back to our redirect URI with a code we redeem;
//! - device code (RFC 8628): we get a short user code, a person types it at the provider's
//!   page on any device, and we poll the token endpoint until they have.
//!
//! After that, [`StoredRefreshGrant`] redeems the stored refresh token whenever the token cache
//! needs a new access token, stores the rotated refresh token the endpoint returns, and turns an
//! `invalid_grant` (revoked, expired after 90 idle days, password changed, Conditional Access)
//! into a persistent "sign-in needed" state that costs no further requests until someone signs
//! in again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, error, info, warn};

use crate::credential::{ClientCredential, JWT_BEARER_ASSERTION_TYPE};
use crate::error::{TokenError, TokenErrorKind, sanitise};
use crate::grant::{Grant, TokenResponse, post_form, post_token_request};
use crate::pkce::{CHALLENGE_METHOD, Pkce};
use crate::secret::Secret;
use crate::store::{StoredToken, TokenStore};

/// The device-code grant type (RFC 8628).
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// RFC 8628 3.5: on `slow_down`, the polling interval grows by 5 seconds for good.
pub const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);

/// Whose endpoints these are; decides a few provider habits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// Microsoft Entra ID.
    Microsoft,
    /// Google (refresh tokens need `access_type=offline` and a consent prompt).
    Google,
    /// Any RFC 6749 endpoint.
    Generic,
}

/// How a person signs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DelegatedFlow {
    /// Authorization code with PKCE: a browser comes back to the redirect URI.
    AuthorizationCode,
    /// Device code: a person enters a short code on any device.
    DeviceCode,
}

impl DelegatedFlow {
    /// The name used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            DelegatedFlow::AuthorizationCode => "authorization_code",
            DelegatedFlow::DeviceCode => "device_code",
        }
    }
}

/// An app registration and the endpoints a delegated sign-in uses.
#[derive(Debug, Clone)]
pub struct DelegatedClient {
    /// Whose endpoints these are.
    pub provider: ProviderKind,
    /// How a person signs in.
    pub flow: DelegatedFlow,
    /// The application (client) ID.
    pub client_id: String,
    /// None for a public client (device code, or a "Mobile and desktop" redirect URI).
    pub credential: Option<ClientCredential>,
    /// Space-separated scopes, e.g. `https://outlook.office.com/SMTP.Send offline_access`.
    pub scope: String,
    /// The authorization endpoint (authorization code flow).
    pub authorize_url: Option<String>,
    /// The token endpoint.
    pub token_url: String,
    /// The device-authorization endpoint (device code flow).
    pub device_code_url: Option<String>,
    /// Where the browser comes back (authorization code flow; unused by the device flow).
    pub redirect_uri: String,
}

/// What the device-authorization endpoint answered. `Debug` hides the device code, the one
/// value that lets its holder collect the tokens.
#[derive(Debug, Clone)]
pub struct DeviceAuthorization {
    device_code: Secret,
    /// The code a person enters.
    pub user_code: String,
    /// Where they enter it.
    pub verification_uri: String,
    /// The same page with the code filled in, when the provider gives one.
    pub verification_uri_complete: Option<String>,
    /// How long the code works.
    pub expires_in: Duration,
    /// How often to poll the token endpoint.
    pub interval: Duration,
    /// The provider's instruction text ("To sign in, use a web browser to open ...").
    pub message: Option<String>,
    /// When the endpoint answered.
    pub issued_at: SystemTime,
}

impl DeviceAuthorization {
    /// When the user code stops working.
    pub fn expires_at(&self) -> SystemTime {
        self.issued_at + self.expires_in
    }
}

/// Something that happened while polling for a device-code sign-in.
#[derive(Debug)]
pub enum PollEvent<'a> {
    /// Nobody has finished signing in yet.
    Pending,
    /// The endpoint asked us to poll less often; this is the new interval.
    SlowDown {
        /// The polling interval from now on.
        interval: Duration,
    },
    /// A temporary failure (network, 5xx); polling goes on until the code expires.
    Retrying(&'a TokenError),
}

impl DelegatedClient {
    /// The URL to send the admin's browser to. `state` and the PKCE challenge are bound to the
    /// request; the provider sends `state` back unchanged with the code.
    pub fn authorization_url(&self, state: &str, pkce: &Pkce) -> Result<String, TokenError> {
        let base = self.authorize_url.as_deref().ok_or_else(|| {
            TokenError::configuration("no authorize_url is configured for this account")
        })?;
        let mut params: Vec<(&str, &str)> = vec![
            ("client_id", &self.client_id),
            ("response_type", "code"),
            ("redirect_uri", &self.redirect_uri),
            ("response_mode", "query"),
            ("scope", &self.scope),
            ("state", state),
            ("code_challenge", pkce.challenge()),
            ("code_challenge_method", CHALLENGE_METHOD),
        ];
        match self.provider {
            // Let the admin choose which account signs in instead of silently reusing whoever
            // is signed in to the browser (often the admin, not the mailbox).
            ProviderKind::Microsoft => params.push(("prompt", "select_account")),
            // Google issues a refresh token only with access_type=offline, and again only after
            // a consent prompt.
            ProviderKind::Google => {
                params.push(("access_type", "offline"));
                params.push(("prompt", "consent"));
            }
            ProviderKind::Generic => {}
        }
        reqwest::Url::parse_with_params(base, &params)
            .map(String::from)
            .map_err(|e| TokenError::configuration(format!("authorize_url {base:?}: {e}")))
    }

    /// Redeems an authorization code with its PKCE verifier.
    pub async fn redeem_code(
        &self,
        http: &reqwest::Client,
        code: &str,
        verifier: &Secret,
    ) -> Result<TokenResponse, TokenError> {
        let mut form = vec![
            ("grant_type", "authorization_code".to_owned()),
            ("client_id", self.client_id.clone()),
            ("code", code.to_owned()),
            ("redirect_uri", self.redirect_uri.clone()),
            ("code_verifier", verifier.expose().to_owned()),
        ];
        if self.provider != ProviderKind::Google {
            form.push(("scope", self.scope.clone()));
        }
        let secrets = vec![code.to_owned(), verifier.expose().to_owned()];
        self.token_request(http, form, secrets).await
    }

    /// Redeems a refresh token. The answer usually carries a new one that replaces it.
    pub async fn refresh(
        &self,
        http: &reqwest::Client,
        refresh_token: &Secret,
    ) -> Result<TokenResponse, TokenError> {
        let mut form = vec![
            ("grant_type", "refresh_token".to_owned()),
            ("client_id", self.client_id.clone()),
            ("refresh_token", refresh_token.expose().to_owned()),
        ];
        if self.provider != ProviderKind::Google {
            form.push(("scope", self.scope.clone()));
        }
        let secrets = vec![refresh_token.expose().to_owned()];
        self.token_request(http, form, secrets).await
    }

    /// Asks the device-authorization endpoint for a user code.
    pub async fn start_device_login(
        &self,
        http: &reqwest::Client,
    ) -> Result<DeviceAuthorization, TokenError> {
        let url = self.device_code_url.as_deref().ok_or_else(|| {
            TokenError::configuration("no device_code_url is configured for this account")
        })?;
        let form = [
            ("client_id", self.client_id.as_str()),
            ("scope", self.scope.as_str()),
        ];
        debug!(url, client_id = %self.client_id, scope = %self.scope, "requesting a device code");
        let issued_at = SystemTime::now();
        let body = post_form(http, url, &form, &[]).await?;
        parse_device_authorization(&body, issued_at)
    }

    /// One poll of the token endpoint for a device-code sign-in.
    pub async fn poll_device_once(
        &self,
        http: &reqwest::Client,
        device: &DeviceAuthorization,
    ) -> Result<TokenResponse, TokenError> {
        let form = vec![
            ("grant_type", DEVICE_CODE_GRANT.to_owned()),
            ("client_id", self.client_id.clone()),
            ("device_code", device.device_code.expose().to_owned()),
        ];
        let secrets = vec![device.device_code.expose().to_owned()];
        self.token_request(http, form, secrets).await
    }

    /// Polls until the person has signed in, the code expires, or the endpoint refuses for good.
    /// Honours `interval` and grows it by 5 s at every `slow_down` (RFC 8628 3.5); temporary
    /// failures do not end the wait.
    pub async fn poll_device_login(
        &self,
        http: &reqwest::Client,
        device: &DeviceAuthorization,
        on_event: &mut (dyn FnMut(PollEvent<'_>) + Send),
    ) -> Result<TokenResponse, TokenError> {
        let deadline = Instant::now() + device.expires_in;
        let mut interval = device.interval;
        loop {
            tokio::time::sleep(interval).await;
            if Instant::now() >= deadline {
                return Err(code_expired());
            }
            match self.poll_device_once(http, device).await {
                Ok(response) => return Ok(response),
                Err(e) => match e.oauth_error.as_deref() {
                    Some("authorization_pending") => on_event(PollEvent::Pending),
                    Some("slow_down") => {
                        interval += SLOW_DOWN_STEP;
                        on_event(PollEvent::SlowDown { interval });
                    }
                    _ if e.is_transient() => {
                        on_event(PollEvent::Retrying(&e));
                        if let Some(wait) = e.retry_after {
                            tokio::time::sleep(wait.min(Duration::from_secs(60))).await;
                        }
                    }
                    _ => return Err(e),
                },
            }
        }
    }

    /// Adds the client credential (if any) and sends the form to the token endpoint.
    async fn token_request(
        &self,
        http: &reqwest::Client,
        mut form: Vec<(&'static str, String)>,
        mut secrets: Vec<String>,
    ) -> Result<TokenResponse, TokenError> {
        match &self.credential {
            None => {}
            Some(ClientCredential::Secret(secret)) => {
                form.push(("client_secret", secret.expose().to_owned()));
                secrets.push(secret.expose().to_owned());
            }
            Some(ClientCredential::Certificate(certificate)) => {
                let assertion = certificate
                    .client_assertion(&self.client_id, &self.token_url)
                    .map_err(|e| TokenError::configuration(e.to_string()))?;
                form.push((
                    "client_assertion_type",
                    JWT_BEARER_ASSERTION_TYPE.to_owned(),
                ));
                form.push(("client_assertion", assertion.expose().to_owned()));
                secrets.push(assertion.expose().to_owned());
            }
        }
        let grant_type = form
            .iter()
            .find(|(k, _)| *k == "grant_type")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        debug!(
            token_url = %self.token_url,
            client_id = %self.client_id,
            grant_type = %grant_type,
            credential = self.credential.as_ref().map_or("none (public client)".to_owned(), ClientCredential::describe),
            "requesting token"
        );
        let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let scrub: Vec<&str> = secrets.iter().map(String::as_str).collect();
        let result = post_token_request(http, &self.token_url, &pairs, &scrub).await;
        // The form held refresh tokens, codes and verifiers: do not leave them in freed memory.
        for (_, value) in &mut form {
            let mut bytes = std::mem::take(value).into_bytes();
            bytes.fill(0);
        }
        for value in &mut secrets {
            let mut bytes = std::mem::take(value).into_bytes();
            bytes.fill(0);
        }
        result
    }
}

fn code_expired() -> TokenError {
    let mut e = TokenError::new(
        TokenErrorKind::SignInRequired,
        "the code expired before anyone signed in with it; start the sign-in again",
    );
    e.oauth_error = Some("expired_token".into());
    e
}

/// Parses a device-authorization response (RFC 8628 3.2; Google names the URI
/// `verification_url`). Values shown to people are checked to be plain text and a web URL.
fn parse_device_authorization(
    body: &[u8],
    issued_at: SystemTime,
) -> Result<DeviceAuthorization, TokenError> {
    let unusable = |what: &str| {
        TokenError::transient(format!(
            "the device-authorization endpoint sent an unusable answer ({what})"
        ))
    };
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| unusable("not JSON"))?;
    let text = |key: &str| {
        value
            .get(key)
            .and_then(serde_json::Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    let device_code = text("device_code").ok_or_else(|| unusable("no device_code"))?;
    let user_code = text("user_code")
        .filter(|c| c.len() <= 64 && c.chars().all(|ch| ch.is_ascii_graphic()))
        .ok_or_else(|| unusable("no usable user_code"))?;
    let web_url = |u: &&str| {
        (u.starts_with("https://") || u.starts_with("http://"))
            && u.len() <= 2048
            && !u.chars().any(|c| c.is_whitespace() || c.is_control())
    };
    let verification_uri = text("verification_uri")
        .or_else(|| text("verification_url"))
        .filter(web_url)
        .ok_or_else(|| unusable("no usable verification_uri"))?;
    let seconds = |key: &str, default: u64| {
        value
            .get(key)
            .and_then(|v| v.as_u64().or_else(|| v.as_str()?.trim().parse().ok()))
            .filter(|s| *s > 0)
            .unwrap_or(default)
    };
    Ok(DeviceAuthorization {
        device_code: Secret::from(device_code),
        user_code: user_code.to_owned(),
        verification_uri: verification_uri.to_owned(),
        verification_uri_complete: text("verification_uri_complete")
            .filter(web_url)
            .map(str::to_owned),
        // RFC 8628 defaults: interval 5 s; Microsoft's codes live 15 minutes.
        expires_in: Duration::from_secs(seconds("expires_in", 900).min(3600)),
        interval: Duration::from_secs(seconds("interval", 5).clamp(1, 60)),
        message: text("message").map(|m| sanitise(m, 300)),
        issued_at,
    })
}

/// The grant a delegated account's token cache uses: redeem the refresh token kept in the
/// [`TokenStore`], and keep the store current (rotated token, last refresh, last error,
/// sign-in needed).
///
/// The file is the source of truth, read before every refresh: a sign-in made by another
/// process (`smtp2oauth account login`) takes effect without a restart, and a refresh never
/// overwrites a newer sign-in, because it only writes if the file's generation is still the one
/// it read.
pub struct StoredRefreshGrant {
    account: String,
    client: DelegatedClient,
    store: Arc<TokenStore>,
    sign_in_required: AtomicBool,
}

impl std::fmt::Debug for StoredRefreshGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredRefreshGrant")
            .field("account", &self.account)
            .field("flow", &self.client.flow)
            .field("token_url", &self.client.token_url)
            .finish_non_exhaustive()
    }
}

impl StoredRefreshGrant {
    /// Reads the account's file once, so a store that cannot be read (wrong master key, a
    /// modified file) stops the relay at start with the reason, instead of at the first refresh.
    pub async fn new(
        account: impl Into<String>,
        client: DelegatedClient,
        store: Arc<TokenStore>,
    ) -> Result<Self, crate::store::StoreError> {
        let account = account.into();
        let record = store.load(&account).await?;
        let needed = needs_sign_in(record.as_ref(), &client.client_id).is_some();
        Ok(Self {
            account,
            client,
            store,
            sign_in_required: AtomicBool::new(needed),
        })
    }

    /// The account whose refresh token this redeems.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// The app registration and endpoints.
    pub fn client(&self) -> &DelegatedClient {
        &self.client
    }

    /// The store the refresh token lives in.
    pub fn store(&self) -> &Arc<TokenStore> {
        &self.store
    }

    async fn load(&self) -> Result<Option<StoredToken>, TokenError> {
        self.store
            .load(&self.account)
            .await
            .map_err(|e| TokenError::configuration(e.to_string()))
    }

    /// Writes `change` to the file unless someone wrote it since generation `seen`.
    async fn record(
        &self,
        seen: u64,
        change: impl FnOnce(&mut StoredToken) + Send + 'static,
    ) -> Result<bool, crate::store::StoreError> {
        let wrote = Arc::new(AtomicBool::new(false));
        let written = wrote.clone();
        self.store
            .update(&self.account, move |current| {
                let current = current.filter(|c| c.generation == seen)?;
                let mut next = current.clone();
                change(&mut next);
                written.store(true, Ordering::SeqCst);
                Some(next)
            })
            .await?;
        Ok(wrote.load(Ordering::SeqCst))
    }

    async fn request(&self, http: &reqwest::Client) -> Result<TokenResponse, TokenError> {
        let record = self.load().await?;
        if let Some(why) = needs_sign_in(record.as_ref(), &self.client.client_id) {
            self.sign_in_required.store(true, Ordering::SeqCst);
            return Err(TokenError::not_sent(TokenErrorKind::SignInRequired, why));
        }
        let record = record.expect("needs_sign_in checked there is a record");
        let refresh_token = record
            .refresh_token
            .clone()
            .expect("needs_sign_in checked there is a refresh token");
        self.sign_in_required.store(false, Ordering::SeqCst);
        let seen = record.generation;
        match self.client.refresh(http, &refresh_token).await {
            Ok(response) => {
                let rotated = response.refresh_token.clone();
                let scope = response.scope.clone();
                let was_rotated = rotated.is_some();
                let saved = self
                    .record(seen, move |t| {
                        if let Some(rt) = rotated {
                            t.refresh_token = Some(rt);
                        }
                        if scope.is_some() {
                            t.scope = scope;
                        }
                        t.last_refresh = Some(SystemTime::now());
                        t.last_error = None;
                        t.sign_in_required = false;
                    })
                    .await;
                match saved {
                    Ok(true) => {
                        debug!(account = %self.account, rotated = was_rotated, "refresh token redeemed and the store updated")
                    }
                    Ok(false) => {
                        info!(account = %self.account, "a new sign-in was stored while refreshing; keeping it")
                    }
                    // Microsoft keeps earlier refresh tokens valid until they expire, so the
                    // stored one still works; but say so, since a restart would use it.
                    Err(e) => {
                        error!(account = %self.account, error = %e, "cannot save the rotated refresh token; the previous one stays in the store")
                    }
                }
                Ok(response)
            }
            Err(e) => {
                let text = e.to_string();
                let sign_in = e.kind == TokenErrorKind::SignInRequired;
                if sign_in {
                    self.sign_in_required.store(true, Ordering::SeqCst);
                    error!(
                        account = %self.account,
                        oauth_error = e.oauth_error.as_deref(),
                        aadsts = e.aadsts,
                        advice = e.advice(),
                        "account needs a new sign-in: the refresh token was refused ({text}); its mail stays queued until someone signs in (accounts page, or `smtp2oauth account login {}`)",
                        self.account
                    );
                }
                let saved = self
                    .record(seen, move |t| {
                        t.last_error = Some(text);
                        if sign_in {
                            t.sign_in_required = true;
                        }
                    })
                    .await;
                if let Err(store_error) = saved {
                    warn!(account = %self.account, error = %store_error, "cannot record the refresh failure in the token store");
                }
                Err(e)
            }
        }
    }
}

/// Why no refresh can be attempted (nobody signed in, the last refresh was refused for good,
/// or the sign-in belongs to another app), or None when one can.
fn needs_sign_in(record: Option<&StoredToken>, client_id: &str) -> Option<String> {
    let Some(record) = record else {
        return Some(
            "nobody has signed in to this account yet: use Sign in on the accounts page or run \
             `smtp2oauth account login <account>`"
                .into(),
        );
    };
    if record.sign_in_required {
        return Some(format!(
            "a new sign-in is needed: {}",
            record
                .last_error
                .as_deref()
                .unwrap_or("the refresh token was refused")
        ));
    }
    if record.refresh_token.is_none() {
        return Some("the stored sign-in has no refresh token: sign in again".into());
    }
    if !record.client_id.eq_ignore_ascii_case(client_id) {
        return Some(format!(
            "the stored sign-in was made with client_id {} but the account now uses {client_id}: \
             sign in again",
            record.client_id
        ));
    }
    None
}

impl Grant for StoredRefreshGrant {
    fn flow(&self) -> &'static str {
        "refresh_token"
    }

    fn request_token<'a>(
        &'a self,
        http: &'a reqwest::Client,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<TokenResponse, TokenError>> + Send + 'a>,
    > {
        Box::pin(self.request(http))
    }

    fn sign_in_required(&self) -> bool {
        self.sign_in_required.load(Ordering::SeqCst)
    }

    fn credentials_changed(&self) {
        // Whoever says the credentials changed has just read or written the file through the
        // store, which remembers it: the state is right at once, without a read here.
        match self.store.last_known(&self.account) {
            Some(record) => {
                let needed = needs_sign_in(record.as_ref(), &self.client.client_id).is_some();
                self.sign_in_required.store(needed, Ordering::SeqCst);
            }
            None => {
                warn!(account = %self.account, "the token file was never read; its state is known at the next request")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> DelegatedClient {
        DelegatedClient {
            provider: ProviderKind::Microsoft,
            flow: DelegatedFlow::AuthorizationCode,
            client_id: "11111111-2222-3333-4444-555555555555".into(),
            credential: None,
            scope: "https://outlook.office.com/SMTP.Send offline_access".into(),
            authorize_url: Some(
                "https://login.microsoftonline.com/contoso.example/oauth2/v2.0/authorize".into(),
            ),
            token_url: "https://login.microsoftonline.com/contoso.example/oauth2/v2.0/token".into(),
            device_code_url: None,
            redirect_uri: "http://localhost:8025/oauth/callback".into(),
        }
    }

    #[test]
    fn authorization_url_carries_pkce_state_and_exact_redirect() {
        let pkce = Pkce::from_verifier("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".into());
        let url = client().authorization_url("st&ate=1", &pkce).unwrap();
        let parsed = reqwest::Url::parse(&url).unwrap();
        let q: std::collections::HashMap<_, _> = parsed.query_pairs().into_owned().collect();
        assert_eq!(parsed.path(), "/contoso.example/oauth2/v2.0/authorize");
        assert_eq!(q["state"], "st&ate=1");
        assert_eq!(q["redirect_uri"], "http://localhost:8025/oauth/callback");
        assert_eq!(
            q["code_challenge"],
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["response_type"], "code");
        assert_eq!(
            q["scope"],
            "https://outlook.office.com/SMTP.Send offline_access"
        );
        assert_eq!(q["prompt"], "select_account");
        assert!(
            !url.contains("dBjftJeZ"),
            "the verifier never leaves: {url}"
        );

        let mut google = client();
        google.provider = ProviderKind::Google;
        let url = google.authorization_url("s", &pkce).unwrap();
        assert!(url.contains("access_type=offline") && url.contains("prompt=consent"));

        let mut none = client();
        none.authorize_url = None;
        assert!(none.authorization_url("s", &pkce).is_err());
    }

    #[test]
    fn device_authorization_parsing() {
        let now = SystemTime::now();
        let d = parse_device_authorization(
            br#"{"device_code":"DC-secret","user_code":"ABCD-EFGH","verification_uri":"https://microsoft.com/devicelogin","expires_in":900,"interval":5,"message":"To sign in, use a web browser"}"#,
            now,
        )
        .unwrap();
        assert_eq!(d.user_code, "ABCD-EFGH");
        assert_eq!(d.verification_uri, "https://microsoft.com/devicelogin");
        assert_eq!(d.interval, Duration::from_secs(5));
        assert_eq!(d.expires_at(), now + Duration::from_secs(900));
        assert!(!format!("{d:?}").contains("DC-secret"));

        // Google's spelling, string numbers, defaults.
        let d = parse_device_authorization(
            br#"{"device_code":"x","user_code":"WXYZ","verification_url":"https://www.google.com/device","expires_in":"1800"}"#,
            now,
        )
        .unwrap();
        assert_eq!(d.verification_uri, "https://www.google.com/device");
        assert_eq!(d.interval, Duration::from_secs(5));
        assert_eq!(d.expires_in, Duration::from_secs(1800));

        for bad in [
            &br#"{"user_code":"A","verification_uri":"https://x"}"#[..],
            br#"{"device_code":"x","user_code":"A B","verification_uri":"https://x"}"#,
            br#"{"device_code":"x","user_code":"AB","verification_uri":"javascript:alert(1)"}"#,
            br#"{"device_code":"x","user_code":"AB","verification_uri":"https://x\ny"}"#,
            b"<html>",
        ] {
            assert!(
                parse_device_authorization(bad, now).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn sign_in_needed_reasons() {
        let id = "11111111-2222-3333-4444-555555555555";
        assert!(
            needs_sign_in(None, id)
                .unwrap()
                .contains("nobody has signed in")
        );
        let mut t = StoredToken {
            refresh_token: Some(Secret::from("rt")),
            client_id: id.into(),
            ..StoredToken::default()
        };
        assert_eq!(needs_sign_in(Some(&t), id), None);
        assert_eq!(needs_sign_in(Some(&t), &id.to_uppercase()), None);
        assert!(
            needs_sign_in(Some(&t), "other")
                .unwrap()
                .contains("client_id")
        );
        t.sign_in_required = true;
        t.last_error = Some("revoked".into());
        assert!(needs_sign_in(Some(&t), id).unwrap().contains("revoked"));
        t.sign_in_required = false;
        t.refresh_token = None;
        assert!(needs_sign_in(Some(&t), id).is_some());
    }
}

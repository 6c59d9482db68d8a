//! A fake Microsoft identity platform token endpoint (`/{tenant}/oauth2/v2.0/token`).
//!
//! Why: the relay's token client must be tested against something that behaves like
//! login.microsoftonline.com for the client-credentials grant: it checks every parameter the
//! real service checks, verifies certificate credentials (JWT client assertions) cryptographically
//! and refuses replays, answers errors in Microsoft's JSON shape with AADSTS codes (which the
//! relay classifies into retryable and fatal), and can be told to be down, slow, throttled or
//! silent. Tokens are random and unguessable and can be validated by the fake SMTP server, so an
//! end-to-end test proves the relay presented the very token it obtained.
//!
//! Where Microsoft's exact AADSTS code for a case is not documented, a plausible one is used;
//! comments say so.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::{lock, random_bytes, utc_timestamp, uuid_v4};

mod delegated;
pub use delegated::{AuthorizeMode, DeviceStatus, EXPIRED_INACTIVITY, REVOKED, SIGN_IN_FREQUENCY};

/// The only assertion type Microsoft accepts for certificate credentials.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How the fake identity platform is set up. `Default` gives a tenant, an app id and a secret.
#[derive(Clone, Debug)]
pub struct IdpConfig {
    /// Tenant id or domain accepted in the path (compared case-insensitively, like Entra ID).
    pub tenant: String,
    /// The application (client) id of the only registered app.
    pub client_id: String,
    /// Accept `client_secret` equal to this. `None`: no secret is registered.
    pub client_secret: Option<String>,
    /// Accept JWT client assertions signed by this certificate's (RSA) key.
    pub client_cert_pem: Option<String>,
    /// Token lifetime (`expires_in`), default 3600 s.
    pub expires_in: Duration,
    /// Delay before every answer (emulates a slow identity platform).
    pub response_delay: Duration,
    /// Redirect URIs registered for delegated sign-in; the authorize endpoint requires an exact
    /// match.
    pub redirect_uris: Vec<String>,
    /// "Allow public client flows": delegated grants without a client secret are accepted (and
    /// a secret is refused, AADSTS700025). Otherwise they need the client secret.
    pub public_client: bool,
    /// Refuse a refresh token once it has been redeemed (stricter than Microsoft, to catch a
    /// relay that does not store the rotated one). Default true.
    pub reject_rotated_refresh_tokens: bool,
    /// `interval` of device-code sign-ins (default 5 s).
    pub device_interval: Duration,
    /// Lifetime of device codes (default 900 s).
    pub device_expires_in: Duration,
}

impl Default for IdpConfig {
    fn default() -> Self {
        IdpConfig {
            tenant: "7d2a1c3e-5b4f-4e6a-9c8d-0f1e2d3c4b5a".to_string(),
            client_id: "0b9f5c1e-8a7d-4c3b-a2e1-f0d9c8b7a6e5".to_string(),
            client_secret: Some("fake~secret.value_0123456789abcdefABCDEF".to_string()),
            client_cert_pem: None,
            expires_in: Duration::from_secs(3600),
            response_delay: Duration::ZERO,
            redirect_uris: Vec::new(),
            public_client: true,
            reject_rotated_refresh_tokens: true,
            device_interval: Duration::from_secs(5),
            device_expires_in: Duration::from_secs(900),
        }
    }
}

/// Scripted failure modes (see [`FakeIdp::set_failure`] and [`FakeIdp::fail_next`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdpFailure {
    /// 503 with an HTML body, as a load balancer in front of the service would send.
    Unavailable,
    /// 401 `invalid_client` AADSTS7000215, whatever credential was sent (an expired/rotated secret).
    InvalidClient,
    /// 429 with `Retry-After`.
    Throttled { retry_after_secs: u64 },
    /// Accept the request and never answer (until the fake shuts down).
    Hang,
    /// 500 with Entra's JSON error body (`server_error`), as during a service incident.
    ServerError,
    /// Answer normally, but only after this long (a stalled token endpoint).
    Stall(Duration),
}

/// A token the fake has issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedToken {
    pub token: String,
    pub scope: String,
    pub client_id: String,
    pub expires_at: SystemTime,
}

/// Microsoft Graph's resource: tokens for it are refused by the SMTP fake's validator.
const GRAPH_RESOURCE: &str = "https://graph.microsoft.com";

/// The signature the SMTP fake's `validator` uses (see [`FakeIdp::validator`]).
pub type TokenValidator = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Public key material of the registered certificate credential.
struct CertCredential {
    /// base64url(SHA-256(certificate DER)): the `x5t#S256` header value Microsoft expects.
    x5t_s256: String,
    /// DER `RSAPublicKey` from the certificate's SubjectPublicKeyInfo, as ring wants it.
    rsa_public_key: Vec<u8>,
}

struct State_ {
    tenant: String,
    client_id: String,
    client_secret: Option<String>,
    cert: Option<CertCredential>,
    expires_in: Duration,
    response_delay: Duration,
    failure: Option<IdpFailure>,
    fail_next: VecDeque<IdpFailure>,
    token_requests: usize,
    tokens_issued: usize,
    tokens: HashMap<String, IssuedToken>,
    /// Every token ever issued, revoked or not (tests check none leaks into logs).
    history: Vec<String>,
    used_jti: HashSet<String>,
    last_form: Option<BTreeMap<String, String>>,
    delegated: delegated::DelegatedState,
}

struct Shared {
    token_url: String,
    state: Mutex<State_>,
    shutdown: watch::Sender<bool>,
}

impl Shared {
    fn validate(&self, token: &str) -> Result<IssuedToken, &'static str> {
        let st = lock(&self.state);
        match st.tokens.get(token) {
            None => Err("not_found"),
            Some(t) if SystemTime::now() >= t.expires_at => Err("expired"),
            Some(t) => Ok(t.clone()),
        }
    }

    async fn wait_shutdown(&self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// Stops the server when the last handle clone drops (the server task itself holds only
/// `Shared`, never this guard, so it cannot keep itself alive).
struct ShutdownGuard(Arc<Shared>);

impl Drop for ShutdownGuard {
    fn drop(&mut self) {
        self.0.shutdown.send_replace(true);
    }
}

/// Handle to a running fake token endpoint. Cheap to clone; the server runs until the last clone
/// drops or [`shutdown`](Self::shutdown) is called.
#[derive(Clone)]
pub struct FakeIdp {
    shared: Arc<Shared>,
    _guard: Arc<ShutdownGuard>,
    addr: SocketAddr,
}

impl std::fmt::Debug for FakeIdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeIdp")
            .field("token_url", &self.shared.token_url)
            .finish()
    }
}

impl FakeIdp {
    /// Binds 127.0.0.1 on an OS-assigned port and starts serving on a tokio task.
    ///
    /// Panics if `client_cert_pem` is not a PEM certificate with an RSA key (a test bug).
    pub async fn start(cfg: IdpConfig) -> FakeIdp {
        Self::start_inner(cfg, None).await
    }

    /// Like [`start`](Self::start) but over HTTPS with the given server config (e.g.
    /// `TestPki::server_config()`); the authority is then "https://127.0.0.1:PORT" (the test
    /// certificate covers that IP and "localhost").
    pub async fn start_https(cfg: IdpConfig, tls: Arc<rustls::ServerConfig>) -> FakeIdp {
        Self::start_inner(cfg, Some(tls)).await
    }

    async fn start_inner(cfg: IdpConfig, tls: Option<Arc<rustls::ServerConfig>>) -> FakeIdp {
        let cert = cfg.client_cert_pem.as_deref().map(|pem| {
            parse_cert_credential(pem)
                .expect("IdpConfig::client_cert_pem must be an RSA certificate")
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0 for FakeIdp");
        let addr = listener.local_addr().expect("local addr");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let token_url = format!("{scheme}://{addr}/{}/oauth2/v2.0/token", cfg.tenant);
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            token_url,
            shutdown,
            state: Mutex::new(State_ {
                tenant: cfg.tenant,
                client_id: cfg.client_id,
                client_secret: cfg.client_secret,
                cert,
                expires_in: cfg.expires_in,
                response_delay: cfg.response_delay,
                failure: None,
                fail_next: VecDeque::new(),
                token_requests: 0,
                tokens_issued: 0,
                tokens: HashMap::new(),
                history: Vec::new(),
                used_jti: HashSet::new(),
                last_form: None,
                delegated: delegated::DelegatedState::new(
                    cfg.redirect_uris,
                    cfg.public_client,
                    cfg.reject_rotated_refresh_tokens,
                    cfg.device_interval,
                    cfg.device_expires_in,
                ),
            }),
        });

        let app = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token_endpoint))
            .route(
                "/{tenant}/oauth2/v2.0/authorize",
                axum::routing::get(authorize_endpoint),
            )
            .route(
                "/{tenant}/oauth2/v2.0/devicecode",
                post(devicecode_endpoint),
            )
            .fallback(|| async { StatusCode::NOT_FOUND })
            .with_state(shared.clone());
        let stop = shared.clone();
        match tls {
            None => {
                tokio::spawn(async move {
                    let serve = axum::serve(listener, app)
                        .with_graceful_shutdown(async move { stop.wait_shutdown().await });
                    if let Err(e) = serve.await {
                        tracing::warn!("FakeIdp server ended: {e}");
                    }
                });
            }
            Some(tls) => {
                let listener = crate::tls_listener::TlsListener::spawn(
                    listener,
                    tls,
                    shared.shutdown.subscribe(),
                );
                tokio::spawn(async move {
                    let serve = axum::serve(listener, app)
                        .with_graceful_shutdown(async move { stop.wait_shutdown().await });
                    if let Err(e) = serve.await {
                        tracing::warn!("FakeIdp server ended: {e}");
                    }
                });
            }
        }

        FakeIdp {
            _guard: Arc::new(ShutdownGuard(shared.clone())),
            shared,
            addr,
        }
    }

    /// "http://127.0.0.1:PORT"; the relay builds `{authority}/{tenant}/oauth2/v2.0/token`.
    pub fn authority(&self) -> String {
        let url = &self.shared.token_url;
        let scheme_end = url.find("://").map_or(0, |i| i + 3);
        let path_start = url[scheme_end..]
            .find('/')
            .map_or(url.len(), |i| scheme_end + i);
        url[..path_start].to_string()
    }
    /// "{authority}/{tenant}/oauth2/v2.0/token", also the required `aud` of client assertions.
    pub fn token_url(&self) -> String {
        self.shared.token_url.clone()
    }
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn tenant(&self) -> String {
        lock(&self.shared.state).tenant.clone()
    }
    pub fn client_id(&self) -> String {
        lock(&self.shared.state).client_id.clone()
    }
    /// Number of POSTs that reached a `/{tenant}/oauth2/v2.0/token` path (every outcome,
    /// including unknown tenants, scripted failures and hangs).
    pub fn token_requests(&self) -> usize {
        lock(&self.shared.state).token_requests
    }
    /// Number of tokens issued over HTTP.
    pub fn tokens_issued(&self) -> usize {
        lock(&self.shared.state).tokens_issued
    }
    /// Lifetime of tokens issued from now on.
    pub fn set_expires_in(&self, d: Duration) {
        lock(&self.shared.state).expires_in = d;
    }
    pub fn set_response_delay(&self, d: Duration) {
        lock(&self.shared.state).response_delay = d;
    }
    /// Persistent failure mode for every request; `None` = normal.
    pub fn set_failure(&self, f: Option<IdpFailure>) {
        lock(&self.shared.state).failure = f;
    }
    /// Fail only the next `count` requests this way (takes precedence over `set_failure`).
    pub fn fail_next(&self, f: IdpFailure, count: usize) {
        let mut st = lock(&self.shared.state);
        for _ in 0..count {
            st.fail_next.push_back(f.clone());
        }
    }
    /// Failures queued by `fail_next` and not used yet.
    pub fn pending_failures(&self) -> usize {
        lock(&self.shared.state).fail_next.len()
    }
    /// Rotate the registered secret (`None`: no secret registered).
    pub fn set_client_secret(&self, secret: Option<String>) {
        lock(&self.shared.state).client_secret = secret;
    }
    /// Replace the registered certificate credential. Panics on a non-RSA or bad PEM (test bug).
    pub fn set_client_cert_pem(&self, pem: Option<&str>) {
        let cert =
            pem.map(|p| parse_cert_credential(p).expect("client cert must be an RSA certificate"));
        lock(&self.shared.state).cert = cert;
    }
    /// Is `token` known and unexpired? Errors: "not_found", "expired".
    pub fn validate(&self, token: &str) -> Result<IssuedToken, &'static str> {
        self.shared.validate(token)
    }
    /// A validator for [`crate::SmtpConfig::validator`]: accepts tokens this fake issued that have
    /// not expired and were not issued for Microsoft Graph (Exchange refuses a token whose
    /// audience is another resource, as it refuses any bad token: `535 5.7.3`). It holds the
    /// token store, not the server, so it does not keep the IdP alive.
    pub fn validator(&self) -> TokenValidator {
        let shared = self.shared.clone();
        Arc::new(move |token: &str| {
            let issued = shared.validate(token).map_err(str::to_string)?;
            // `https://graph.microsoft.com/.default`, or delegated `https://graph.microsoft.com/Mail.Send offline_access`.
            if issued
                .scope
                .split_whitespace()
                .any(|s| s.starts_with(GRAPH_RESOURCE))
            {
                return Err(format!(
                    "the token was issued for {}, not Exchange: a Graph token cannot log in to SMTP",
                    issued.scope
                ));
            }
            Ok(())
        })
    }
    /// A validator for [`crate::FakeGraph`]: accepts tokens this fake issued that have not
    /// expired, and tells which scope each was issued for (Graph refuses tokens for another
    /// resource).
    pub fn scope_validator(&self) -> crate::graph::ScopeValidator {
        let shared = self.shared.clone();
        Arc::new(move |token: &str| {
            shared
                .validate(token)
                .map(|t| t.scope)
                .map_err(str::to_string)
        })
    }
    /// Forget every issued token (as if revoked): the SMTP validator then refuses them.
    pub fn revoke_all(&self) {
        lock(&self.shared.state).tokens.clear();
    }
    /// Every token issued so far, including revoked and expired ones.
    pub fn issued_tokens(&self) -> Vec<String> {
        lock(&self.shared.state).history.clone()
    }
    /// Form fields of the last POST to the token URL (tests assert `scope` etc.).
    pub fn last_form(&self) -> Option<BTreeMap<String, String>> {
        lock(&self.shared.state).last_form.clone()
    }
    /// Issue a token directly, without HTTP (for tests that only need a valid token). Does not
    /// change `token_requests` or `tokens_issued`.
    pub fn issue_token(&self, scope: &str) -> IssuedToken {
        let mut st = lock(&self.shared.state);
        issue(&mut st, scope)
    }
    /// `{authority}/{tenant}/oauth2/v2.0/authorize`.
    pub fn authorize_url(&self) -> String {
        self.token_url().replace("/token", "/authorize")
    }
    /// How the authorize endpoint answers from now on.
    pub fn set_authorize_mode(&self, mode: AuthorizeMode) {
        lock(&self.shared.state).delegated.set_mode(mode);
    }
    /// Register exactly these redirect URIs.
    pub fn set_redirect_uris(&self, uris: Vec<String>) {
        lock(&self.shared.state).delegated.redirect_uris = uris;
    }
    /// Query parameters of every request to the authorize endpoint.
    pub fn authorize_requests(&self) -> Vec<BTreeMap<String, String>> {
        lock(&self.shared.state)
            .delegated
            .authorize_requests
            .clone()
    }
    /// User codes of device-code sign-ins and their state, oldest first.
    pub fn device_codes(&self) -> Vec<(String, DeviceStatus)> {
        lock(&self.shared.state).delegated.device_codes()
    }
    /// A person enters `user_code` and consents (test hook). False if the code is unknown.
    pub fn approve_device(&self, user_code: &str) -> bool {
        lock(&self.shared.state)
            .delegated
            .set_status(user_code, DeviceStatus::Approved)
    }
    /// A person enters `user_code` and declines.
    pub fn deny_device(&self, user_code: &str) -> bool {
        lock(&self.shared.state)
            .delegated
            .set_status(user_code, DeviceStatus::Denied)
    }
    /// Answer the next `n` device-code polls with `slow_down` (and a 5 s longer interval).
    pub fn slow_down_next(&self, n: usize) {
        lock(&self.shared.state).delegated.slow_down_next += n;
    }
    /// When each device-code poll arrived.
    pub fn device_polls(&self) -> Vec<std::time::Instant> {
        lock(&self.shared.state).delegated.device_polls.clone()
    }
    /// Revoke every active refresh token: redeeming one gives `invalid_grant` with this AADSTS
    /// code ([`REVOKED`], [`EXPIRED_INACTIVITY`], [`SIGN_IN_FREQUENCY`]).
    pub fn revoke_refresh_tokens(&self, aadsts: u32) {
        lock(&self.shared.state).delegated.revoke(aadsts);
    }
    /// Refresh tokens presented to the token endpoint, in order.
    pub fn refresh_tokens_presented(&self) -> Vec<String> {
        lock(&self.shared.state).delegated.refresh_presented.clone()
    }
    /// Refresh tokens that can still be redeemed.
    pub fn active_refresh_tokens(&self) -> Vec<String> {
        lock(&self.shared.state).delegated.active_refresh_tokens()
    }
    /// Every refresh token, authorization code and device code issued so far.
    pub fn issued_delegated_secrets(&self) -> Vec<String> {
        lock(&self.shared.state).delegated.issued_secrets.clone()
    }
    /// Stop serving now (the port is released; hanging requests are abandoned).
    pub fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP handling

/// Microsoft's error JSON: error, "AADSTSnnnn: ..." description with trace/correlation ids and
/// timestamp appended, error_codes, timestamp, trace_id, correlation_id, error_uri.
fn aad_error(status: StatusCode, error: &str, code: u32, message: &str) -> Response {
    let trace_id = uuid_v4();
    let correlation_id = uuid_v4();
    let timestamp = utc_timestamp(SystemTime::now());
    let body = json!({
        "error": error,
        "error_description": format!(
            "AADSTS{code}: {message}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {timestamp}"
        ),
        "error_codes": [code],
        "timestamp": timestamp,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
        "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
    });
    json_response(status, &body)
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut resp = (status, body.to_string()).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache"),
    );
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

type Reject = Box<Response>;

fn reject(status: StatusCode, error: &str, code: u32, message: &str) -> Reject {
    Box::new(aad_error(status, error, code, message))
}

fn missing(param: &str) -> Reject {
    reject(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        900144,
        &format!("The request body must contain the following parameter: '{param}'."),
    )
}

async fn token_endpoint(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // Only a form body is a form: Microsoft ignores other bodies, and then finds no grant_type.
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    let pairs = if is_form {
        parse_form(&body)
    } else {
        Some(Vec::new())
    };

    let (delay, failure) = {
        let mut st = lock(&shared.state);
        st.token_requests += 1;
        if let Some(pairs) = &pairs {
            st.last_form = Some(pairs.iter().cloned().collect());
        }
        let failure = st.fail_next.pop_front().or_else(|| st.failure.clone());
        (st.response_delay, failure)
    };
    if !delay.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shared.wait_shutdown() => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
        }
    }

    match failure {
        None => {}
        Some(IdpFailure::Stall(d)) => {
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = shared.wait_shutdown() => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
            }
        }
        Some(IdpFailure::ServerError) => {
            // AADSTS50000: "There was an error issuing a token or an issue with our sign-in
            // service."
            return aad_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                50000,
                "There was an error issuing a token or an issue with our sign-in service.",
            );
        }
        Some(IdpFailure::Hang) => {
            shared.wait_shutdown().await;
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        Some(IdpFailure::Unavailable) => {
            let mut resp = (
                StatusCode::SERVICE_UNAVAILABLE,
                "<!DOCTYPE html>\r\n<html><head><title>Service Unavailable</title></head>\
                 <body><h2>Service Unavailable</h2><hr><p>HTTP Error 503. The service is \
                 unavailable.</p></body></html>\r\n",
            )
                .into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=us-ascii"),
            );
            return resp;
        }
        Some(IdpFailure::InvalidClient) => {
            let id = lock(&shared.state).client_id.clone();
            return *invalid_secret(&id);
        }
        Some(IdpFailure::Throttled { retry_after_secs }) => {
            // AADSTS90055 is Entra's "TenantThrottlingError: too many incoming requests".
            let mut resp = aad_error(
                StatusCode::TOO_MANY_REQUESTS,
                "temporarily_unavailable",
                90055,
                "There are too many incoming requests. Please try again later.",
            );
            if let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return resp;
        }
    }

    let basic = basic_credentials(&headers);
    let resp =
        handle_token_request(&shared, &tenant, pairs, basic).unwrap_or_else(|rejected| rejected);
    *resp
}

async fn authorize_endpoint(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let pairs = parse_form(query.unwrap_or_default().as_bytes()).unwrap_or_default();
    let mut st = lock(&shared.state);
    delegated::authorize(&mut st, &tenant, pairs.into_iter().collect())
}

async fn devicecode_endpoint(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Response {
    let pairs = parse_form(&body).unwrap_or_default();
    let mut st = lock(&shared.state);
    delegated::devicecode(&mut st, &tenant, pairs.into_iter().collect())
}

fn invalid_secret(client_id: &str) -> Reject {
    reject(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        7000215,
        &format!(
            "Invalid client secret provided. Ensure the secret being sent in the request is the \
             client secret value, not the client secret ID, for a secret added to app '{client_id}'."
        ),
    )
}

fn handle_token_request(
    shared: &Shared,
    tenant: &str,
    pairs: Option<Vec<(String, String)>>,
    basic: Option<Option<(String, String)>>,
) -> Result<Box<Response>, Reject> {
    let (cfg_tenant, cfg_client_id) = {
        let st = lock(&shared.state);
        (st.tenant.clone(), st.client_id.clone())
    };
    if !tenant.eq_ignore_ascii_case(&cfg_tenant) {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            &format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and \
                 are signing into the correct cloud. Check with your subscription administrator, \
                 this may happen if there are no active subscriptions for the tenant."
            ),
        ));
    }
    // An undecodable body (bad %-escape, not UTF-8) is as good as no body to the service.
    let pairs = pairs.unwrap_or_default();
    let mut form: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in pairs {
        if form.contains_key(&k) {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                9000411,
                &format!(
                    "The request is not properly formatted. The parameter '{k}' is duplicated."
                ),
            ));
        }
        form.insert(k, v);
    }
    let get = |k: &str| form.get(k).map(String::as_str).filter(|v| !v.is_empty());

    let grant_type = get("grant_type").ok_or_else(|| missing("grant_type"))?;
    let delegated_grant = matches!(
        grant_type,
        "authorization_code" | "refresh_token" | "urn:ietf:params:oauth:grant-type:device_code"
    );
    if grant_type != "client_credentials" && !delegated_grant {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            &format!("The app requested an unsupported grant type '{grant_type}'."),
        ));
    }
    let basic = match basic {
        None => None,
        Some(Some(pair)) => Some(pair),
        Some(None) => {
            return Err(reject(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000216,
                "The Authorization header could not be decoded as client credentials.",
            ));
        }
    };
    let client_id = get("client_id")
        .or(basic.as_ref().map(|(id, _)| id.as_str()))
        .ok_or_else(|| missing("client_id"))?;
    let basic_id_differs = basic
        .as_ref()
        .is_some_and(|(id, _)| !id.eq_ignore_ascii_case(client_id));
    if !client_id.eq_ignore_ascii_case(&cfg_client_id) || basic_id_differs {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{client_id}' was not found in the directory \
                 '{tenant}'. This can happen if the application has not been installed by the \
                 administrator of the tenant or consented to by any user in the tenant. You may \
                 have sent your authentication request to the wrong tenant."
            ),
        ));
    }
    if delegated_grant {
        let basic_secret = basic.as_ref().map(|(_, secret)| secret.clone());
        let secret = get("client_secret").map(str::to_owned).or(basic_secret);
        let mut st = lock(&shared.state);
        return delegated::token_grant(&mut st, grant_type, &form, secret.as_deref()).map(Box::new);
    }
    let scope = get("scope").ok_or_else(|| missing("scope"))?;
    let resource = scope.strip_suffix("/.default").unwrap_or("");
    if resource.is_empty() || scope.chars().any(char::is_whitespace) {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            &format!(
                "The provided value for scope {scope} is not valid. Client credential flows must \
                 have a scope value with /.default suffixed to the resource identifier \
                 (application ID URI)."
            ),
        ));
    }

    let basic_secret = basic.as_ref().map(|(_, secret)| secret.as_str());
    let secret = match (get("client_secret"), basic_secret) {
        (Some(_), Some(_)) => {
            return Err(reject(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000218,
                "The client secret was sent both in the Authorization header and in the body.",
            ));
        }
        (form, header) => form.or(header),
    };
    let assertion = get("client_assertion");
    let jti = match (secret, assertion) {
        (None, None) => {
            return Err(reject(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000216,
                "'client_assertion', 'client_secret' or 'request' is required for the \
                 'client_credentials' grant type.",
            ));
        }
        (Some(_), Some(_)) => {
            // Undocumented exact code; both credentials at once is refused as an invalid client.
            return Err(reject(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000218,
                "The request body must contain only one of the following parameters: \
                 'client_assertion', 'client_secret'.",
            ));
        }
        (Some(secret), None) => {
            let ok = lock(&shared.state).client_secret.as_deref() == Some(secret);
            if !ok {
                return Err(invalid_secret(client_id));
            }
            None
        }
        (None, Some(assertion)) => {
            match get("client_assertion_type") {
                None => return Err(missing("client_assertion_type")),
                Some(JWT_BEARER) => {}
                Some(other) => {
                    return Err(reject(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        50027,
                        &format!(
                            "JWT token is invalid or malformed. client_assertion_type '{other}' \
                             is not supported; expected '{JWT_BEARER}'."
                        ),
                    ));
                }
            }
            let st = lock(&shared.state);
            Some(verify_assertion(
                assertion,
                st.cert.as_ref(),
                &cfg_client_id,
                &shared.token_url,
            )?)
        }
    };

    let mut st = lock(&shared.state);
    if let Some(jti) = jti {
        // Checked last (and recorded only on success) so a refused assertion does not burn its jti.
        if !st.used_jti.insert(jti) {
            return Err(reject(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                50013,
                "Assertion is invalid. [Reason - The assertion's jti has already been used \
                 (replayed client assertion).]",
            ));
        }
    }
    let issued = issue(&mut st, scope);
    st.tokens_issued += 1;
    let secs = issued
        .expires_at
        .duration_since(SystemTime::now())
        .map(|d| d.as_secs_f64().round() as u64)
        .unwrap_or(0);
    let body = json!({
        "token_type": "Bearer",
        "expires_in": secs,
        "ext_expires_in": secs,
        "access_token": issued.token,
    });
    Ok(Box::new(json_response(StatusCode::OK, &body)))
}

/// Mints a JWT-shaped access token of realistic size (~1.4 KB, like Exchange Online's), so the
/// relay's AUTH line handling is exercised with real lengths. The signature part is random bytes:
/// the token is an opaque, unguessable key into our store, not a verifiable JWT.
fn issue(st: &mut State_, scope: &str) -> IssuedToken {
    let now = SystemTime::now();
    let expires_at = now + st.expires_in;
    let iat = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let exp = iat + st.expires_in.as_secs();
    let resource = scope.strip_suffix("/.default").unwrap_or(scope);
    let kid = URL_SAFE_NO_PAD.encode(random_bytes(20));
    let header = json!({"typ": "JWT", "nonce": URL_SAFE_NO_PAD.encode(random_bytes(32)),
        "alg": "RS256", "x5t": kid, "kid": kid});
    let payload = json!({
        "aud": resource,
        "iss": format!("https://sts.windows.net/{}/", st.tenant),
        "iat": iat, "nbf": iat, "exp": exp,
        "aio": URL_SAFE_NO_PAD.encode(random_bytes(48)),
        "app_displayname": "smtp2oauth fake app",
        "appid": st.client_id,
        "appidacr": "1",
        "idp": format!("https://sts.windows.net/{}/", st.tenant),
        "oid": uuid_v4(),
        "rh": URL_SAFE_NO_PAD.encode(random_bytes(24)),
        "roles": ["SMTP.SendAsApp"],
        "sid": uuid_v4(),
        "sub": uuid_v4(),
        "tid": st.tenant,
        "uti": URL_SAFE_NO_PAD.encode(random_bytes(16)),
        "ver": "1.0",
        "wids": [uuid_v4()],
        "xms_idrel": "7 12",
    });
    let token = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload.to_string()),
        URL_SAFE_NO_PAD.encode(random_bytes(256))
    );
    let issued = IssuedToken {
        token: token.clone(),
        scope: scope.to_string(),
        client_id: st.client_id.clone(),
        expires_at,
    };
    st.history.push(token.clone());
    st.tokens.insert(token, issued.clone());
    issued
}

// ---------------------------------------------------------------------------------------------
// Client assertion verification

fn bad_signature(reason: &str) -> Reject {
    reject(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        700027,
        &format!("Client assertion contains an invalid signature. [Reason - {reason}]"),
    )
}

fn malformed(why: &str) -> Reject {
    reject(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        50027,
        &format!("JWT token is invalid or malformed. [{why}]"),
    )
}

fn time_range() -> Reject {
    reject(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        700024,
        "Client assertion is not within its valid time range.",
    )
}

fn decode_segment(seg: &str) -> Option<Vec<u8>> {
    // Strict base64url without padding, as RFC 7515 requires.
    URL_SAFE_NO_PAD.decode(seg).ok()
}

/// Verifies a JWT client assertion the way Entra ID does for certificate credentials and returns
/// its `jti` (the caller checks replay). Checks: compact form, alg RS256/PS256, `x5t#S256`
/// matches the registered certificate, signature over "header.payload" with the certificate's
/// key, `aud` = token URL, `iss` = `sub` = client id, `exp` in the future but at most 1 h ahead,
/// `nbf` not more than 5 minutes in the future, `jti` present.
fn verify_assertion(
    jwt: &str,
    cert: Option<&CertCredential>,
    client_id: &str,
    token_url: &str,
) -> Result<String, Reject> {
    let parts: Vec<&str> = jwt.split('.').collect();
    let [h64, p64, s64] = parts[..] else {
        return Err(malformed("not a JWS compact serialization"));
    };
    let header: Value = decode_segment(h64)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(Value::is_object)
        .ok_or_else(|| malformed("header is not base64url JSON"))?;
    let payload: Value = decode_segment(p64)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(Value::is_object)
        .ok_or_else(|| malformed("payload is not base64url JSON"))?;
    let signature = decode_segment(s64).ok_or_else(|| malformed("signature is not base64url"))?;

    let alg: &'static dyn ring::signature::VerificationAlgorithm = match header["alg"].as_str() {
        Some("RS256") => &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        Some("PS256") => &ring::signature::RSA_PSS_2048_8192_SHA256,
        other => return Err(malformed(&format!("unsupported alg {other:?}"))),
    };
    let Some(thumb) = header["x5t#S256"].as_str() else {
        return Err(bad_signature(
            "The key was not found. The header has no 'x5t#S256'.",
        ));
    };
    let Some(cert) = cert.filter(|c| c.x5t_s256 == thumb) else {
        return Err(bad_signature(&format!(
            "The key was not found., Thumbprint of key used by client: '{thumb}'"
        )));
    };
    let signed = &jwt.as_bytes()[..h64.len() + 1 + p64.len()];
    ring::signature::UnparsedPublicKey::new(alg, &cert.rsa_public_key)
        .verify(signed, &signature)
        .map_err(|_| {
            bad_signature(
                "The provided signature value did not match the expected signature value.",
            )
        })?;

    if payload["aud"].as_str() != Some(token_url) {
        return Err(reject(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700023,
            &format!(
                "Client assertion audience claim does not match Realm issuer. Expected '{token_url}', got {}.",
                payload["aud"]
            ),
        ));
    }
    if payload["iss"].as_str() != Some(client_id) || payload["sub"].as_str() != Some(client_id) {
        return Err(reject(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700021,
            "Client assertion application identifier doesn't match 'client_id' parameter.",
        ));
    }
    let now = crate::unix_now() as i64;
    let (Some(exp), Some(nbf)) = (payload["exp"].as_i64(), payload["nbf"].as_i64()) else {
        return Err(malformed("'exp' and 'nbf' must be numeric dates"));
    };
    if exp <= now || exp > now + 3600 || nbf > now + 300 {
        return Err(time_range());
    }
    match payload["jti"].as_str() {
        Some(jti) if !jti.is_empty() => Ok(jti.to_string()),
        _ => Err(malformed("'jti' is required")),
    }
}

fn parse_cert_credential(pem: &str) -> Result<CertCredential, String> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| format!("PEM: {e}"))?;
    let digest = ring::digest::digest(&ring::digest::SHA256, der.as_ref());
    let rsa_public_key = rsa_public_key_from_cert(der.as_ref()).ok_or("not an RSA certificate")?;
    Ok(CertCredential {
        x5t_s256: URL_SAFE_NO_PAD.encode(digest.as_ref()),
        rsa_public_key: rsa_public_key.to_vec(),
    })
}

/// One DER TLV: (tag, contents, rest). Definite lengths up to 4 length octets.
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// Walks Certificate → tbsCertificate → subjectPublicKeyInfo and returns the RSAPublicKey DER
/// inside the BIT STRING, after checking the algorithm is rsaEncryption. Hand-rolled because the
/// workspace has no X.509 parser and this is all we need.
fn rsa_public_key_from_cert(der: &[u8]) -> Option<&[u8]> {
    const SEQ: u8 = 0x30;
    const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    let (tag, cert, _) = der_tlv(der)?;
    (tag == SEQ).then_some(())?;
    let (tag, mut tbs, _) = der_tlv(cert)?;
    (tag == SEQ).then_some(())?;
    // Optional [0] EXPLICIT version.
    let (tag, _, rest) = der_tlv(tbs)?;
    if tag == 0xa0 {
        tbs = rest;
    }
    // serialNumber, signature, issuer, validity, subject.
    for _ in 0..5 {
        let (_, _, rest) = der_tlv(tbs)?;
        tbs = rest;
    }
    let (tag, spki, _) = der_tlv(tbs)?;
    (tag == SEQ).then_some(())?;
    let (tag, alg, rest) = der_tlv(spki)?;
    (tag == SEQ).then_some(())?;
    let (tag, oid, _) = der_tlv(alg)?;
    (tag == 0x06 && oid == RSA_ENCRYPTION).then_some(())?;
    let (tag, bits, _) = der_tlv(rest)?;
    (tag == 0x03).then_some(())?;
    match bits.split_first()? {
        (0, key) => Some(key),
        _ => None,
    }
}

/// application/x-www-form-urlencoded decoding ('+' is a space, %XX escapes). `None` if an escape
/// is malformed or a value is not UTF-8.
fn parse_form(body: &[u8]) -> Option<Vec<(String, String)>> {
    body.split(|&b| b == b'&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let mut it = pair.splitn(2, |&b| b == b'=');
            let k = form_decode(it.next().unwrap_or_default())?;
            let v = form_decode(it.next().unwrap_or_default())?;
            Some((k, v))
        })
        .collect()
}

/// Decodes one form-urlencoded component; `None` on a malformed escape or non-UTF-8 result.
fn form_decode(s: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// `Authorization: Basic` client authentication (RFC 6749 2.3.1, "client_secret_basic", which
/// Entra ID supports besides "client_secret_post"): base64 of form-encoded id ":" secret.
/// `None`: no Basic header; `Some(None)`: a malformed one.
fn basic_credentials(headers: &HeaderMap) -> Option<Option<(String, String)>> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok();
    let Some(value) = value else {
        return Some(None);
    };
    let (scheme, b64) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok();
    Some(decoded.and_then(|d| {
        let colon = d.iter().position(|&b| b == b':')?;
        Some((form_decode(&d[..colon])?, form_decode(&d[colon + 1..])?))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        let f = parse_form(b"a=b+c&scope=https%3A%2F%2Fx%2F.default&empty=&flag").unwrap();
        assert_eq!(
            f,
            vec![
                ("a".into(), "b c".into()),
                ("scope".into(), "https://x/.default".into()),
                ("empty".into(), "".into()),
                ("flag".into(), "".into()),
            ]
        );
        assert!(parse_form(b"a=%zz").is_none());
        assert!(parse_form(b"a=%4").is_none());
        assert!(parse_form(b"a=%ff").is_none()); // not UTF-8
    }

    #[test]
    fn extracts_rsa_key_from_generated_cert() {
        let pki = crate::TestPki::new();
        let (cert, _) = pki.issue_rsa_credential();
        let c = parse_cert_credential(&cert).unwrap();
        // RSAPublicKey ::= SEQUENCE { modulus, exponent }: a 2048-bit key is ~270 bytes.
        assert_eq!(c.rsa_public_key[0], 0x30);
        assert!(c.rsa_public_key.len() > 260);
        // An ECDSA certificate is refused.
        assert!(parse_cert_credential(&pki.cert_pem()).is_err());
    }

    #[test]
    fn der_parser_never_panics_on_garbage() {
        for len in 0..64 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 % 251) as u8).collect();
            let _ = rsa_public_key_from_cert(&junk);
        }
        let _ = rsa_public_key_from_cert(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]);
    }
}

//! The delegated half of the fake identity platform: the authorize endpoint, the device-code
//! endpoint, and the `authorization_code`, `refresh_token` and device-code grants.
//!
//! Strict where a lenient fake would hide relay bugs: the redirect URI must be registered and
//! match exactly (AADSTS50011 page, no redirect), PKCE with S256 is required and the verifier is
//! checked (AADSTS501481), codes are single-use (AADSTS54005) and expire, polling faster than
//! `interval` earns `slow_down` (and a 5 s longer interval, as RFC 8628 says), and by default a
//! refresh token that has been rotated is refused, so a relay that forgets to store the new one
//! fails its tests. (Microsoft keeps rotated refresh tokens valid until they expire; set
//! `IdpConfig::reject_rotated_refresh_tokens = false` for that behaviour.)

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;

use super::{Reject, State_, issue, json_response, missing, reject};
use crate::{random_bytes, uuid_v4};

/// How the fake's authorize endpoint answers a valid request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthorizeMode {
    /// Sign the user in and redirect back with a code (a consenting user).
    Approve,
    /// Redirect back with `error=access_denied` (the user cancelled or declined consent).
    Deny,
}

/// Why refresh tokens were revoked: the AADSTS code `invalid_grant` carries.
pub const REVOKED: u32 = 50173;
pub const EXPIRED_INACTIVITY: u32 = 700082;
pub const SIGN_IN_FREQUENCY: u32 = 70043;

/// A device-code sign-in as the fake tracks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceStatus {
    Pending,
    Approved,
    Denied,
    Redeemed,
}

#[derive(Clone, Debug)]
pub(super) struct AuthCode {
    client_id: String,
    redirect_uri: String,
    scope: String,
    challenge: String,
    issued: Instant,
    redeemed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum RefreshStatus {
    Active,
    Rotated,
    Revoked(u32),
}

#[derive(Clone, Debug)]
pub(super) struct RefreshState {
    scope: String,
    status: RefreshStatus,
}

#[derive(Clone, Debug)]
pub(super) struct DeviceState {
    pub(super) user_code: String,
    scope: String,
    status: DeviceStatus,
    expires: Instant,
    interval: Duration,
    last_poll: Option<Instant>,
}

/// Everything the delegated endpoints remember.
#[derive(Default)]
pub(super) struct DelegatedState {
    pub(super) redirect_uris: Vec<String>,
    pub(super) public_client: bool,
    pub(super) reject_rotated: bool,
    pub(super) device_interval: Duration,
    pub(super) device_expires_in: Duration,
    pub(super) mode: Option<AuthorizeMode>,
    pub(super) codes: BTreeMap<String, AuthCode>,
    pub(super) refresh: BTreeMap<String, RefreshState>,
    pub(super) devices: BTreeMap<String, DeviceState>,
    pub(super) authorize_requests: Vec<BTreeMap<String, String>>,
    pub(super) device_polls: Vec<Instant>,
    pub(super) slow_down_next: usize,
    pub(super) refresh_presented: Vec<String>,
    /// Every refresh token, code and device code ever issued (tests check none leaks).
    pub(super) issued_secrets: Vec<String>,
}

impl DelegatedState {
    pub(super) fn new(
        redirect_uris: Vec<String>,
        public_client: bool,
        reject_rotated: bool,
        device_interval: Duration,
        device_expires_in: Duration,
    ) -> Self {
        DelegatedState {
            redirect_uris,
            public_client,
            reject_rotated,
            device_interval,
            device_expires_in,
            mode: Some(AuthorizeMode::Approve),
            ..DelegatedState::default()
        }
    }

    pub(super) fn set_mode(&mut self, mode: AuthorizeMode) {
        self.mode = Some(mode);
    }

    pub(super) fn set_status(&mut self, user_code: &str, status: DeviceStatus) -> bool {
        match self
            .devices
            .values_mut()
            .find(|d| d.user_code.eq_ignore_ascii_case(user_code))
        {
            Some(d) => {
                d.status = status;
                true
            }
            None => false,
        }
    }

    pub(super) fn device_codes(&self) -> Vec<(String, DeviceStatus)> {
        self.devices
            .values()
            .map(|d| (d.user_code.clone(), d.status.clone()))
            .collect()
    }

    pub(super) fn revoke(&mut self, code: u32) {
        for state in self.refresh.values_mut() {
            if state.status == RefreshStatus::Active {
                state.status = RefreshStatus::Revoked(code);
            }
        }
    }

    pub(super) fn active_refresh_tokens(&self) -> Vec<String> {
        self.refresh
            .iter()
            .filter(|(_, s)| s.status == RefreshStatus::Active)
            .map(|(t, _)| t.clone())
            .collect()
    }
}

fn token() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes(48))
}

/// Percent-encodes a query component (everything but RFC 3986 unreserved characters).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn html_error(status: StatusCode, code: u32, message: &str) -> Response {
    let escaped = message
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let body = format!(
        "<!DOCTYPE html><html><head><title>Sign in to your account</title></head><body>\
         <h1>Sorry, but we're having trouble signing you in.</h1>\
         <p>AADSTS{code}: {escaped}</p><p>Trace ID: {}</p></body></html>",
        uuid_v4()
    );
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}

fn redirect(location: String) -> Response {
    let mut resp = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

fn redirect_error(uri: &str, state: Option<&str>, error: &str, code: u32, text: &str) -> Response {
    let mut location = format!(
        "{uri}?error={}&error_description={}",
        encode(error),
        encode(&format!("AADSTS{code}: {text}\r\nTrace ID: {}", uuid_v4()))
    );
    if let Some(state) = state {
        location.push_str(&format!("&state={}", encode(state)));
    }
    redirect(location)
}

/// GET /{tenant}/oauth2/v2.0/authorize
pub(super) fn authorize(
    st: &mut State_,
    tenant: &str,
    query: BTreeMap<String, String>,
) -> Response {
    st.delegated.authorize_requests.push(query.clone());
    let get = |k: &str| query.get(k).map(String::as_str).filter(|v| !v.is_empty());
    if !tenant.eq_ignore_ascii_case(&st.tenant) {
        return html_error(
            StatusCode::BAD_REQUEST,
            90002,
            &format!("Tenant '{tenant}' not found."),
        );
    }
    let client_id = get("client_id").unwrap_or_default();
    if !client_id.eq_ignore_ascii_case(&st.client_id) {
        return html_error(
            StatusCode::BAD_REQUEST,
            700016,
            &format!(
                "Application with identifier '{client_id}' was not found in the directory '{tenant}'."
            ),
        );
    }
    let redirect_uri = get("redirect_uri").unwrap_or_default();
    // Exact match, like Entra ID: scheme, host, port, path and trailing slash.
    if !st.delegated.redirect_uris.iter().any(|r| r == redirect_uri) {
        return html_error(
            StatusCode::BAD_REQUEST,
            50011,
            &format!(
                "The redirect URI '{redirect_uri}' specified in the request does not match the \
                 redirect URIs configured for the application '{client_id}'."
            ),
        );
    }
    let state = get("state");
    if get("response_type") != Some("code") {
        return redirect_error(
            redirect_uri,
            state,
            "unsupported_response_type",
            70005,
            "The response_type is not supported.",
        );
    }
    let Some(scope) = get("scope") else {
        return redirect_error(
            redirect_uri,
            state,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'scope'.",
        );
    };
    let (Some(challenge), Some("S256")) = (get("code_challenge"), get("code_challenge_method"))
    else {
        return redirect_error(
            redirect_uri,
            state,
            "invalid_request",
            9002325,
            "Proof Key for Code Exchange is required (code_challenge with method S256).",
        );
    };
    if st.delegated.mode == Some(AuthorizeMode::Deny) {
        return redirect_error(
            redirect_uri,
            state,
            "access_denied",
            65004,
            "User declined to consent to access the app.",
        );
    }
    let code = token();
    st.delegated.issued_secrets.push(code.clone());
    st.delegated.codes.insert(
        code.clone(),
        AuthCode {
            client_id: client_id.to_owned(),
            redirect_uri: redirect_uri.to_owned(),
            scope: scope.to_owned(),
            challenge: challenge.to_owned(),
            issued: Instant::now(),
            redeemed: false,
        },
    );
    let mut location = format!("{redirect_uri}?code={}", encode(&code));
    if let Some(state) = state {
        location.push_str(&format!("&state={}", encode(state)));
    }
    location.push_str(&format!("&session_state={}", uuid_v4()));
    redirect(location)
}

/// POST /{tenant}/oauth2/v2.0/devicecode
pub(super) fn devicecode(
    st: &mut State_,
    tenant: &str,
    form: BTreeMap<String, String>,
) -> Response {
    let get = |k: &str| form.get(k).map(String::as_str).filter(|v| !v.is_empty());
    if !tenant.eq_ignore_ascii_case(&st.tenant) {
        return *reject(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            &format!("Tenant '{tenant}' not found."),
        );
    }
    let Some(client_id) = get("client_id") else {
        return *missing("client_id");
    };
    if !client_id.eq_ignore_ascii_case(&st.client_id) {
        return *reject(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &format!("Application with identifier '{client_id}' was not found in the directory."),
        );
    }
    let Some(scope) = get("scope") else {
        return *missing("scope");
    };
    let device_code = token();
    let raw = random_bytes(8);
    let user_code: String = raw
        .iter()
        .map(|b| (b'A' + b % 26) as char)
        .collect::<String>();
    let user_code = format!("{}-{}", &user_code[..4], &user_code[4..]);
    let d = &mut st.delegated;
    d.issued_secrets.push(device_code.clone());
    d.devices.insert(
        device_code.clone(),
        DeviceState {
            user_code: user_code.clone(),
            scope: scope.to_owned(),
            status: DeviceStatus::Pending,
            expires: Instant::now() + d.device_expires_in,
            interval: d.device_interval,
            last_poll: None,
        },
    );
    let body = json!({
        "user_code": user_code,
        "device_code": device_code,
        "verification_uri": "https://microsoft.com/devicelogin",
        "expires_in": d.device_expires_in.as_secs(),
        "interval": d.device_interval.as_secs(),
        "message": format!("To sign in, use a web browser to open the page https://microsoft.com/devicelogin and enter the code {user_code} to authenticate."),
    });
    json_response(StatusCode::OK, &body)
}

/// Client authentication for delegated grants: a public client must not send a secret; a
/// confidential one must send the right one.
fn client_auth(st: &State_, secret: Option<&str>, assertion: bool) -> Result<(), Reject> {
    if st.delegated.public_client {
        if secret.is_some() || assertion {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                700025,
                "Client is public so neither 'client_assertion' nor 'client_secret' should be \
                 presented.",
            ));
        }
        return Ok(());
    }
    match secret {
        None => Err(reject(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or \
             'client_secret'.",
        )),
        Some(s) if st.client_secret.as_deref() == Some(s) => Ok(()),
        Some(_) => Err(reject(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000215,
            "Invalid client secret provided.",
        )),
    }
}

fn tokens(st: &mut State_, scope: &str) -> Response {
    let issued = issue(st, scope);
    st.tokens_issued += 1;
    let refresh = token();
    st.delegated.issued_secrets.push(refresh.clone());
    st.delegated.refresh.insert(
        refresh.clone(),
        RefreshState {
            scope: scope.to_owned(),
            status: RefreshStatus::Active,
        },
    );
    let secs = st.expires_in.as_secs();
    let granted: Vec<&str> = scope
        .split_whitespace()
        .filter(|s| !matches!(*s, "offline_access" | "openid" | "profile" | "email"))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "token_type": "Bearer",
            "scope": granted.join(" "),
            "expires_in": secs,
            "ext_expires_in": secs,
            "access_token": issued.token,
            "refresh_token": refresh,
        }),
    )
}

fn invalid_grant(code: u32, text: &str) -> Reject {
    reject(StatusCode::BAD_REQUEST, "invalid_grant", code, text)
}

/// The `authorization_code`, `refresh_token` and device-code grants. The caller has checked the
/// tenant and the client id.
pub(super) fn token_grant(
    st: &mut State_,
    grant_type: &str,
    form: &BTreeMap<String, String>,
    secret: Option<&str>,
) -> Result<Response, Reject> {
    let get = |k: &str| form.get(k).map(String::as_str).filter(|v| !v.is_empty());
    client_auth(st, secret, get("client_assertion").is_some())?;
    match grant_type {
        "authorization_code" => {
            let code = get("code").ok_or_else(|| missing("code"))?;
            let Some(entry) = st.delegated.codes.get_mut(code) else {
                return Err(invalid_grant(
                    70000,
                    "The provided value for the 'code' parameter is not valid.",
                ));
            };
            if entry.redeemed {
                return Err(invalid_grant(
                    54005,
                    "OAuth2 Authorization code was already redeemed, please retry with a new \
                     valid code or use an existing refresh token.",
                ));
            }
            if entry.issued.elapsed() > Duration::from_secs(600) {
                return Err(invalid_grant(
                    70008,
                    "The provided authorization code or refresh token has expired due to \
                     inactivity.",
                ));
            }
            if get("redirect_uri") != Some(entry.redirect_uri.as_str()) {
                return Err(invalid_grant(
                    70000,
                    "The redirect_uri does not match the one used in the authorization request.",
                ));
            }
            let verifier = get("code_verifier").ok_or_else(|| missing("code_verifier"))?;
            let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
            if URL_SAFE_NO_PAD.encode(digest.as_ref()) != entry.challenge {
                return Err(invalid_grant(
                    501481,
                    "The Code_Verifier does not match the code_challenge supplied in the \
                     authorization request.",
                ));
            }
            if !entry.client_id.eq_ignore_ascii_case(&st.client_id) {
                return Err(invalid_grant(
                    70000,
                    "The code was issued to another client.",
                ));
            }
            entry.redeemed = true;
            let scope = entry.scope.clone();
            Ok(tokens(st, &scope))
        }
        "refresh_token" => {
            let presented = get("refresh_token").ok_or_else(|| missing("refresh_token"))?;
            st.delegated.refresh_presented.push(presented.to_owned());
            let reject_rotated = st.delegated.reject_rotated;
            let Some(entry) = st.delegated.refresh.get_mut(presented) else {
                return Err(invalid_grant(
                    9002313,
                    "Invalid request. Request is malformed or invalid.",
                ));
            };
            match entry.status {
                RefreshStatus::Revoked(REVOKED) => Err(invalid_grant(
                    REVOKED,
                    "The provided grant has expired due to it being revoked, a fresh auth token \
                     is needed. The user might have changed or reset their password.",
                )),
                RefreshStatus::Revoked(EXPIRED_INACTIVITY) => Err(invalid_grant(
                    EXPIRED_INACTIVITY,
                    "The refresh token has expired due to inactivity. The token was issued on \
                     2024-01-01T00:00:00Z and was inactive for 90.00:00:00.",
                )),
                RefreshStatus::Revoked(code) => Err(invalid_grant(
                    code,
                    "The refresh token has expired or is invalid due to sign-in frequency \
                     checks by conditional access.",
                )),
                RefreshStatus::Rotated if reject_rotated => Err(invalid_grant(
                    70000,
                    "The provided refresh token was already used and replaced (this fake \
                     refuses rotated refresh tokens).",
                )),
                _ => {
                    entry.status = RefreshStatus::Rotated;
                    let scope = match get("scope") {
                        Some(s) => s.to_owned(),
                        None => entry.scope.clone(),
                    };
                    Ok(tokens(st, &scope))
                }
            }
        }
        _ => {
            // urn:ietf:params:oauth:grant-type:device_code
            let device_code = get("device_code").ok_or_else(|| missing("device_code"))?;
            let now = Instant::now();
            st.delegated.device_polls.push(now);
            let scripted_slow_down = if st.delegated.slow_down_next > 0 {
                st.delegated.slow_down_next -= 1;
                true
            } else {
                false
            };
            let Some(device) = st.delegated.devices.get_mut(device_code) else {
                return Err(reject(
                    StatusCode::BAD_REQUEST,
                    "bad_verification_code",
                    70019,
                    "Verification code not recognised.",
                ));
            };
            let too_fast = device.last_poll.is_some_and(|last| {
                now.duration_since(last) + Duration::from_millis(50) < device.interval
            });
            device.last_poll = Some(now);
            if now >= device.expires {
                return Err(reject(
                    StatusCode::BAD_REQUEST,
                    "expired_token",
                    70020,
                    "The provided device code has expired.",
                ));
            }
            if too_fast || scripted_slow_down {
                device.interval += Duration::from_secs(5);
                return Err(reject(
                    StatusCode::BAD_REQUEST,
                    "slow_down",
                    70016,
                    "Polling too fast: slow down.",
                ));
            }
            match device.status {
                DeviceStatus::Pending => Err(reject(
                    StatusCode::BAD_REQUEST,
                    "authorization_pending",
                    70016,
                    "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
                )),
                DeviceStatus::Denied => Err(reject(
                    StatusCode::BAD_REQUEST,
                    "authorization_declined",
                    70017,
                    "The user declined the authorization request.",
                )),
                DeviceStatus::Redeemed => Err(reject(
                    StatusCode::BAD_REQUEST,
                    "bad_verification_code",
                    70019,
                    "The device code was already redeemed.",
                )),
                DeviceStatus::Approved => {
                    device.status = DeviceStatus::Redeemed;
                    let scope = device.scope.clone();
                    Ok(tokens(st, &scope))
                }
            }
        }
    }
}

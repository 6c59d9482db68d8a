//! The state every handler shares, and who may do what.
//!
//! Pages are used from a browser: a session cookie carries the login (when `[admin]
//! password_hash` is set) and a CSRF token that every form posts back. Scripts use the API
//! with HTTP Basic and the admin password (any user name) and need no session. A state-changing
//! request is accepted when it proves it is not a forgery:
//! - it carries a session cookie and that session's CSRF token (form field `csrf` or header
//!   `X-CSRF-Token`), plus the login when a password is set; or
//! - it carries the right password in `Authorization: Basic` (a browser never adds that to a
//!   cross-site request on its own unless the admin typed it into that browser, and then the
//!   `Origin` guard in `host.rs` still refuses other sites); or
//! - no password is set and it carries neither a cookie nor any sign of a browser (`Origin`,
//!   `Sec-Fetch-Site`): a script on a machine that can reach the console anyway.

use crate::host::{AllowedHosts, ConnInfo};
use crate::password::{PasswordCheck, Verdict};
use crate::session::{self, Refused, Session, Sessions};
use crate::{AdminState, pages};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::Markup;
use smtp2oauth_tokens::Secret;
use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

/// The console: the relay's state plus sessions, the password check and the page policy.
pub struct Console {
    pub state: AdminState,
    pub sessions: Sessions,
    pub password: Option<PasswordCheck>,
    pub hosts: Arc<AllowedHosts>,
    pub metrics_auth: bool,
    csp: String,
}

/// The caller's address (loopback when the server was not told, as in unit tests).
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub IpAddr);

impl Peer {
    pub fn ip(self) -> IpAddr {
        self.0
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            ConnInfo::of(&parts.extensions)
                .map(|c| c.peer.ip())
                .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ))
    }
}

/// Who is calling, once let in.
pub enum Caller {
    /// A browser session (logged in when a password is set).
    Browser(Session),
    /// A script: HTTP Basic with the password, or no password set.
    Script,
}

/// How refusals are worded: an HTML page or a JSON object.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Face {
    Page,
    Api,
}

impl Console {
    pub fn new(state: AdminState) -> Console {
        let hosts = Arc::new(AllowedHosts::new(
            &state.security.allowed_hosts,
            state.security.listen,
        ));
        let password = state.security.password_hash.clone().map(PasswordCheck::new);
        let csp = csp(&state);
        let metrics_auth = state.security.metrics_auth && password.is_some();
        Console {
            state,
            sessions: Sessions::default(),
            password,
            hosts,
            metrics_auth,
            csp,
        }
    }

    /// True when `s` must log in first.
    pub fn password_required(&self, s: &Session) -> bool {
        self.password.is_some() && !s.authenticated
    }

    /// A read of the API (or of `/metrics` with `metrics_auth`): a logged-in session, the
    /// password in HTTP Basic, or anyone when no password is set.
    pub async fn api_read(&self, headers: &HeaderMap, peer: IpAddr) -> Result<Caller, Response> {
        if self.password.is_none() {
            return Ok(Caller::Script);
        }
        if let Some(s) = self.sessions.find(headers).filter(|s| s.authenticated) {
            return Ok(Caller::Browser(s));
        }
        self.basic(headers, peer, Face::Api).await
    }

    /// A state-changing request (see the module comment for the rules).
    pub async fn post(
        &self,
        headers: &HeaderMap,
        peer: IpAddr,
        csrf: Option<&str>,
        face: Face,
    ) -> Result<Caller, Response> {
        let from_browser = headers.contains_key(header::ORIGIN)
            || headers.contains_key("sec-fetch-site")
            || headers.contains_key(header::COOKIE);
        // Page forms always come from a browser session; only the API serves scripts.
        if face == Face::Api {
            if headers.contains_key(header::AUTHORIZATION)
                && session::cookie(headers, session::COOKIE).is_none()
            {
                return self.basic(headers, peer, face).await;
            }
            if !from_browser {
                return self.basic(headers, peer, face).await;
            }
        }
        let csrf = csrf.or_else(|| headers.get("x-csrf-token").and_then(|v| v.to_str().ok()));
        let session = session::check_post(&self.sessions, headers, csrf)
            .map_err(|why| self.refused(why, face))?;
        if self.password_required(&session) {
            return Err(match face {
                Face::Page => self.html(
                    StatusCode::UNAUTHORIZED,
                    None,
                    pages::login(&session, None, "/"),
                ),
                Face::Api => {
                    self.unauthorized("log in first (or use HTTP Basic with the admin password)")
                }
            });
        }
        Ok(Caller::Browser(session))
    }

    /// The password from `Authorization: Basic`.
    async fn basic(
        &self,
        headers: &HeaderMap,
        peer: IpAddr,
        face: Face,
    ) -> Result<Caller, Response> {
        let Some(check) = &self.password else {
            return Ok(Caller::Script);
        };
        let Some(password) = basic_password(headers) else {
            return Err(
                self.unauthorized("the admin password is needed: HTTP Basic, any user name")
            );
        };
        match check.check(peer, password).await {
            Verdict::Ok => Ok(Caller::Script),
            Verdict::Wrong => Err(self.unauthorized("wrong password")),
            v => Err(self.verdict_refusal(v, face)),
        }
    }

    /// The answer to a lockout or a busy verifier.
    pub fn verdict_refusal(&self, v: Verdict, face: Face) -> Response {
        let (status, text, retry) = match v {
            Verdict::LockedOut { retry_after } => (
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "Too many wrong passwords from your address: try again in {}.",
                    crate::time::span(retry_after)
                ),
                retry_after.as_secs().max(1),
            ),
            _ => (
                StatusCode::SERVICE_UNAVAILABLE,
                "A password check from your address is already running, or the relay is busy checking others: try again in a moment.".to_string(),
                1,
            ),
        };
        let mut resp = match face {
            Face::Api => (status, axum::Json(serde_json::json!({"error": text}))).into_response(),
            Face::Page => self.html(status, None, pages::message("Try again later", &text)),
        };
        if let Ok(v) = HeaderValue::from_str(&retry.to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }

    fn unauthorized(&self, why: &str) -> Response {
        let mut resp = (
            StatusCode::UNAUTHORIZED,
            axum::Json(serde_json::json!({"error": why})),
        )
            .into_response();
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"smtp2oauth\", charset=\"UTF-8\""),
        );
        resp
    }

    /// The answer to a POST that failed the CSRF checks.
    pub fn refused(&self, why: Refused, face: Face) -> Response {
        let text = match why {
            Refused::NoSession => {
                "Your session has expired or the relay was restarted. Open the page again."
            }
            Refused::CrossSite => "This request came from another site and was refused.",
            Refused::BadToken => {
                "This form is out of date (or did not come from the console): the CSRF token is missing or wrong. Open the page again."
            }
        };
        match face {
            Face::Api => (
                StatusCode::FORBIDDEN,
                axum::Json(serde_json::json!({"error": text})),
            )
                .into_response(),
            Face::Page => self.html(StatusCode::FORBIDDEN, None, pages::message("Refused", text)),
        }
    }

    /// An HTML page with the console's security headers (and a new session's cookie).
    pub fn html(&self, status: StatusCode, cookie: Option<String>, body: Markup) -> Response {
        let mut resp = (status, body.into_string()).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        self.secure(h);
        if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
            h.insert(header::SET_COOKIE, c);
        }
        resp
    }

    /// A redirect (303 after a POST) with the security headers.
    pub fn redirect(&self, to: &str, cookie: Option<String>) -> Response {
        let mut resp = Redirect::to(to).into_response();
        let h = resp.headers_mut();
        self.secure(h);
        if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
            h.insert(header::SET_COOKIE, c);
        }
        resp
    }

    fn secure(&self, h: &mut HeaderMap) {
        if let Ok(v) = HeaderValue::from_str(&self.csp) {
            h.insert(header::CONTENT_SECURITY_POLICY, v);
        }
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        // The callback URL holds the code: never send it on as a Referer.
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

/// No script at all; forms may only go to us, except that Sign in redirects on to the
/// provider's authorize endpoint (browsers apply form-action to that redirect too).
fn csp(state: &AdminState) -> String {
    let mut form_action = BTreeSet::new();
    if let Some(m) = &state.accounts.sign_in {
        for a in &state.accounts.accounts {
            if let Some(url) = m
                .target(&a.name)
                .and_then(|t| t.client.authorize_url.clone())
                && let Some(origin) = crate::accounts::origin_of(&url)
            {
                form_action.insert(origin);
            }
        }
    }
    let extra: String = form_action.iter().map(|o| format!(" {o}")).collect();
    format!(
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'{extra}; \
         frame-ancestors 'none'; base-uri 'none'"
    )
}

/// The password of `Authorization: Basic base64(user:password)`.
fn basic_password(headers: &HeaderMap) -> Option<Secret> {
    use base64::Engine;
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (_, password) = text.split_once(':')?;
    Some(Secret::from(password))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials() {
        let mut h = HeaderMap::new();
        // admin:pa:ss
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic YWRtaW46cGE6c3M="),
        );
        assert_eq!(basic_password(&h).unwrap().expose(), "pa:ss");
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert!(basic_password(&h).is_none());
    }
}

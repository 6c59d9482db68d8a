//! The accounts page and the OAuth callback.
//!
//! An admin opens `http://localhost:8025/` (directly, through an SSH tunnel, or on a LAN address
//! they bound), sees every account with its route and token state (valid until, last refresh,
//! last error, "sign-in needed"), and signs delegated accounts in with one button:
//! authorization-code accounts go to the provider's sign-in page and come back to the callback;
//! device-code accounts get a code to enter on any device, shown here until it is used. Sign out
//! deletes an account's stored sign-in (as `smtp2oauth account logout` does): its mail then waits
//! in the queue until someone signs in again.
//!
//! What the page never does: render a token, code, verifier, secret or key (only states,
//! times and error texts, which the token crate keeps free of secrets), accept a state-changing
//! request without the session's CSRF token, or accept a callback whose `state` was not issued
//! to this browser session (see `session.rs` and `smtp2oauth_tokens::SignInManager`).

use crate::session::{self, Refused, Session, Sessions};
use crate::time::{utc, utc_relative};
use axum::Form;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use smtp2oauth_config::{Flow, Route};
use smtp2oauth_tokens::{
    CallbackParams, DeviceLoginStatus, Secret, SignInError, SignInManager, TokenSource,
    TokenStatus, TokenStore,
};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tracing::{info, warn};

/// One account as the page shows it.
pub struct AccountView {
    /// The account's name.
    pub name: String,
    /// The mailbox it sends as.
    pub mailbox: String,
    /// Its route.
    pub route: Route,
    /// How the account gets tokens; `None` when none of its routes needs one.
    pub flow: Option<Flow>,
    /// None for routes that need no token (capture).
    pub tokens: Option<Arc<dyn TokenSource>>,
    /// For authorization-code accounts.
    pub redirect_uri: Option<String>,
}

impl AccountView {
    /// True when a person signs the account in (authorization code or device code).
    fn signs_in(&self) -> bool {
        matches!(self.flow, Some(Flow::AuthorizationCode | Flow::DeviceCode))
    }
}

/// What the page needs from the relay.
pub struct AccountsConfig {
    /// Every account, in configuration order.
    pub accounts: Vec<AccountView>,
    /// Present when some account signs in with a delegated flow.
    pub sign_in: Option<Arc<SignInManager>>,
    /// The token store, when some account signs in.
    pub store: Option<Arc<TokenStore>>,
    /// argon2 PHC string; with it, the page asks for a password.
    pub password_hash: Option<Secret>,
}

/// The accounts page: what it shows, and the browser sessions it serves.
pub struct AccountsPage {
    cfg: AccountsConfig,
    sessions: Sessions,
    csp: String,
}

impl AccountsPage {
    /// The page for `cfg`.
    pub fn new(cfg: AccountsConfig) -> Self {
        // Forms may only go to us, except that Sign in redirects on to the provider's
        // authorize endpoint (browsers apply form-action to that redirect too).
        let mut form_action = BTreeSet::new();
        if let Some(m) = &cfg.sign_in {
            for a in &cfg.accounts {
                if let Some(url) = m
                    .target(&a.name)
                    .and_then(|t| t.client.authorize_url.clone())
                    && let Some(origin) = origin_of(&url)
                {
                    form_action.insert(origin);
                }
            }
        }
        let extra: String = form_action.iter().map(|o| format!(" {o}")).collect();
        let csp = format!(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'{extra}; \
             frame-ancestors 'none'; base-uri 'none'"
        );
        AccountsPage {
            cfg,
            sessions: Sessions::default(),
            csp,
        }
    }

    /// Paths the OAuth callback answers on: `/oauth/callback` and the path of every
    /// authorization-code account's redirect URI.
    pub fn callback_paths(&self) -> Vec<String> {
        let mut paths = BTreeSet::from(["/oauth/callback".to_string()]);
        for a in &self.cfg.accounts {
            if let Some(uri) = &a.redirect_uri
                && let Some(path) = path_of(uri)
            {
                // Characters axum treats as route syntax cannot be served; check-config
                // requires a plain path anyway.
                if path.starts_with('/') && !path.contains(['{', '}', '*']) {
                    paths.insert(path);
                } else {
                    warn!(account = %a.name, redirect_uri = %uri, "the redirect URI's path cannot be served by the accounts page");
                }
            }
        }
        paths.into_iter().collect()
    }

    fn password_required(&self, s: &Session) -> bool {
        self.cfg.password_hash.is_some() && !s.authenticated
    }

    fn account(&self, name: &str) -> Option<&AccountView> {
        self.cfg.accounts.iter().find(|a| a.name == name)
    }

    fn html(&self, status: StatusCode, cookie: Option<String>, body: String) -> Response {
        let mut resp = (status, body).into_response();
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

    fn redirect(&self, to: &str, cookie: Option<String>) -> Response {
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

    /// The checks every button on an account makes: the session's CSRF token (and same-site
    /// origin), then the page password when one is set.
    fn account_action(
        &self,
        headers: &HeaderMap,
        csrf: Option<&str>,
    ) -> Result<Session, Box<Response>> {
        let session = session::check_post(&self.sessions, headers, csrf)
            .map_err(|why| Box::new(self.refused(why)))?;
        if self.password_required(&session) {
            let login = login_form(&session, None);
            return Err(Box::new(self.html(StatusCode::UNAUTHORIZED, None, login)));
        }
        Ok(session)
    }

    fn no_such_account(&self, title: &str, name: &str) -> Response {
        self.html(
            StatusCode::NOT_FOUND,
            None,
            layout(
                title,
                false,
                &format!(
                    "<p class=\"err\">There is no account {} that signs in.</p>{BACK}",
                    esc(name)
                ),
            ),
        )
    }

    fn refused(&self, why: Refused) -> Response {
        let text = match why {
            Refused::NoSession => {
                "Your session has expired or the relay was restarted. Open the accounts page again."
            }
            Refused::CrossSite => "This request came from another site and was refused.",
            Refused::BadToken => {
                "This form is out of date (or did not come from the accounts page). Open the accounts page again."
            }
        };
        self.html(
            StatusCode::FORBIDDEN,
            None,
            layout(
                "Refused",
                false,
                &format!("<p class=\"err\">{}</p>{BACK}", esc(text)),
            ),
        )
    }

    async fn render(
        &self,
        session: &Session,
        host: Option<&str>,
        notice: Option<(bool, String)>,
    ) -> String {
        let mut body = String::new();
        if let Some((ok, text)) = &notice {
            body.push_str(&format!(
                "<p class=\"{}\">{}</p>",
                if *ok { "ok" } else { "err" },
                esc(text)
            ));
        }
        let mut refresh = false;
        let mut rows = String::new();
        for a in &self.cfg.accounts {
            let (row, waiting) = self.row(a, session, host).await;
            refresh |= waiting;
            rows.push_str(&row);
        }
        body.push_str(
            "<table><thead><tr><th>Account</th><th>Route</th><th>Sign-in</th><th>Token</th>\
             <th>Last refresh</th><th>Last error</th><th></th></tr></thead><tbody>",
        );
        body.push_str(&rows);
        body.push_str("</tbody></table>");
        if self.cfg.password_hash.is_some() {
            body.push_str(&format!(
                "<form method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf\" \
                 value=\"{}\"><button>Log out</button></form>",
                esc(&session.csrf)
            ));
        }
        body.push_str(
            "<p class=\"muted\">Tokens, codes and keys are never shown here. Metrics: \
             <a href=\"/metrics\">/metrics</a> · readiness: <a href=\"/readyz\">/readyz</a></p>",
        );
        layout("Accounts", refresh, &body)
    }

    /// One account's table row (and, while a device-code sign-in waits, the code's row); true
    /// while a sign-in is waiting, so the page refreshes itself.
    async fn row(&self, a: &AccountView, session: &Session, host: Option<&str>) -> (String, bool) {
        let delegated = a.signs_in() && a.tokens.is_some();
        let status = a.tokens.as_ref().map(|t| t.status());
        let record = match (&self.cfg.store, delegated) {
            (Some(store), true) => store.load(&a.name).await.map_err(|e| e.to_string()),
            _ => Ok(None),
        };
        let sign_in_needed = status.as_ref().is_some_and(|s| s.sign_in_required);
        let mut action = String::new();
        let mut extra_row = String::new();
        let mut waiting = false;
        if delegated && self.cfg.sign_in.is_some() {
            action = buttons(a, session, &record, sign_in_needed);
            extra_row.push_str(&redirect_note(a, host).unwrap_or_default());
            let (prompt, shown) = self.prompt_row(a, &record, sign_in_needed).await;
            extra_row.push_str(&prompt);
            waiting = shown;
        }
        let row = format!(
            "<tr id=\"{id}\"><td><strong>{name}</strong><br><span class=\"muted\">{mailbox}</span></td>\
             <td>{route}</td><td>{flow}<br>{signed_in}</td><td>{token}</td><td>{last_refresh}</td>\
             <td>{last_error}</td><td>{action}</td></tr>{extra_row}",
            id = esc(&a.name),
            name = esc(&a.name),
            mailbox = esc(&a.mailbox),
            route = esc(a.route.as_str()),
            flow = esc(a.flow.map_or("none", Flow::as_str)),
            signed_in = signed_in_cell(a, delegated, &record),
            token = token_cell(status.as_ref(), SystemTime::now()),
            last_refresh = last_refresh_cell(status.as_ref(), &record),
            last_error = last_error_cell(status.as_ref(), &record),
        );
        (row, waiting)
    }

    /// The row of a device-code sign-in in progress (started here or by `account login`), or of
    /// the last one that failed; true while one is waiting.
    async fn prompt_row(
        &self,
        a: &AccountView,
        record: &StoredRecord,
        sign_in_needed: bool,
    ) -> (String, bool) {
        let here = match self
            .cfg
            .sign_in
            .as_ref()
            .and_then(|m| m.device_login(&a.name))
        {
            Some(DeviceLoginStatus::Waiting(p)) => Some(Ok(p)),
            Some(DeviceLoginStatus::Failed(e)) => Some(Err(e)),
            _ => None,
        };
        let prompt = match (here, &self.cfg.store) {
            (Some(p), _) => Some(p),
            (None, Some(store)) => store.login_prompt(&a.name).await.map(Ok),
            (None, None) => None,
        };
        match prompt {
            Some(Ok(p)) if !record_newer_than(record, p.expires_at) => {
                let expires = SystemTime::UNIX_EPOCH + Duration::from_secs(p.expires_at);
                let row = format!(
                    "<tr class=\"prompt\"><td colspan=\"7\">Sign-in in progress for {}: on \
                     any device, open <a href=\"{}\" target=\"_blank\" rel=\"noopener \
                     noreferrer\">{}</a> and enter the code <strong class=\"code\">{}</strong>, \
                     then sign in as the mailbox user. The code works until {} (started by \
                     {}). This page refreshes by itself.</td></tr>",
                    esc(&a.name),
                    esc(&p.verification_uri),
                    esc(&p.verification_uri),
                    esc(&p.user_code),
                    esc(&utc(expires)),
                    esc(&p.started_by)
                );
                (row, true)
            }
            Some(Err(e)) if sign_in_needed => {
                let row = format!(
                    "<tr class=\"note\"><td colspan=\"7\">The last sign-in attempt for {} \
                     did not complete: {}</td></tr>",
                    esc(&a.name),
                    esc(&e)
                );
                (row, false)
            }
            _ => (String::new(), false),
        }
    }
}

/// What the token file of a delegated account holds, or why it could not be read.
type StoredRecord = Result<Option<smtp2oauth_tokens::StoredToken>, String>;

/// The token cell: valid until when, or why there is none.
fn token_cell(status: Option<&TokenStatus>, now: SystemTime) -> String {
    match status {
        None => "<span class=\"muted\">none needed</span>".to_string(),
        Some(s) if s.sign_in_required => "<span class=\"bad\">sign-in needed</span>".into(),
        Some(s) => match s.valid_until.filter(|v| *v > now) {
            Some(v) => format!(
                "<span class=\"good\">valid until {}</span>",
                esc(&utc_relative(v))
            ),
            None if s.last_error.is_some() => "<span class=\"bad\">no token</span>".into(),
            None => "<span class=\"muted\">not requested yet</span>".into(),
        },
    }
}

/// The sign-in state under the flow: app-only, signed in when, or why not.
fn signed_in_cell(a: &AccountView, delegated: bool, record: &StoredRecord) -> String {
    if !delegated {
        return if a.flow == Some(Flow::ClientCredentials) && a.tokens.is_some() {
            "app-only".to_string()
        } else {
            "—".to_string()
        };
    }
    match record {
        Err(e) => format!(
            "<span class=\"bad\">token file unreadable: {}</span>",
            esc(e)
        ),
        Ok(None) => "<span class=\"bad\">not signed in</span>".to_string(),
        Ok(Some(r)) => match r.signed_in_at {
            Some(t) => format!("signed in {}", esc(&utc_relative(t))),
            None => "signed in".into(),
        },
    }
}

/// The later of the cache's and the token file's last refresh.
fn last_refresh_cell(status: Option<&TokenStatus>, record: &StoredRecord) -> String {
    [
        status.and_then(|s| s.last_refresh),
        record.as_ref().ok().and_then(|r| r.as_ref()?.last_refresh),
    ]
    .into_iter()
    .flatten()
    .max()
    .map(|t| esc(&utc_relative(t)))
    .unwrap_or_else(|| "—".into())
}

/// The cache's last error, else the token file's.
fn last_error_cell(status: Option<&TokenStatus>, record: &StoredRecord) -> String {
    status
        .and_then(|s| s.last_error.clone())
        .or_else(|| {
            record
                .as_ref()
                .ok()
                .and_then(|r| r.as_ref()?.last_error.clone())
        })
        .map(|e| format!("<span class=\"err-text\">{}</span>", esc(&e)))
        .unwrap_or_else(|| "—".into())
}

/// Sign in (again) and, with a stored sign-in, Sign out.
fn buttons(
    a: &AccountView,
    session: &Session,
    record: &StoredRecord,
    sign_in_needed: bool,
) -> String {
    let label = match (a.flow, record) {
        (Some(Flow::DeviceCode), _) => "Sign in with a code",
        (_, Ok(Some(_))) => "Sign in again",
        _ => "Sign in",
    };
    let class = if sign_in_needed { "primary" } else { "" };
    let mut action = format!(
        "<form method=\"post\" action=\"/accounts/{}/sign-in\"><input type=\"hidden\" \
         name=\"csrf\" value=\"{}\"><button class=\"{class}\">{label}</button></form>",
        esc(&url_path_segment(&a.name)),
        esc(&session.csrf)
    );
    if matches!(record, Ok(Some(_))) {
        action.push_str(&format!(
            "<form method=\"post\" action=\"/accounts/{}/sign-out\"><input \
             type=\"hidden\" name=\"csrf\" value=\"{}\"><button>Sign out</button></form>",
            esc(&url_path_segment(&a.name)),
            esc(&session.csrf)
        ));
    }
    action
}

/// A note when an authorization-code sign-in would come back to another address than the one
/// this page was opened on (the browser session would not match).
fn redirect_note(a: &AccountView, host: Option<&str>) -> Option<String> {
    if a.flow != Some(Flow::AuthorizationCode) {
        return None;
    }
    let (uri, host) = (a.redirect_uri.as_ref()?, host?);
    let redirect_host = host_of(uri)?;
    if redirect_host.eq_ignore_ascii_case(host) {
        return None;
    }
    let page = format!("{}/accounts", origin_of(uri).unwrap_or_default());
    Some(format!(
        "<tr class=\"note\"><td colspan=\"7\">The sign-in for {} comes back to \
         <code>{}</code>, a different address from this page's: open \
         <a href=\"{}\">{}</a> to sign in, so your browser session matches.</td></tr>",
        esc(&a.name),
        esc(uri),
        esc(&page),
        esc(&page)
    ))
}

/// True when the account signed in after the prompt was written (the CLI that wrote it may
/// have been stopped without clearing it).
fn record_newer_than(record: &StoredRecord, prompt_expires: u64) -> bool {
    let Ok(Some(r)) = record else { return false };
    let Some(at) = r.signed_in_at else {
        return false;
    };
    let at = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Codes live 15 minutes; one signed in within that window answered this prompt.
    at + 900 >= prompt_expires && !r.sign_in_required
}

const BACK: &str = "<p><a href=\"/accounts\">Back to the accounts page</a></p>";

fn layout(title: &str, refresh: bool, body: &str) -> String {
    let meta = if refresh {
        "<meta http-equiv=\"refresh\" content=\"5\">"
    } else {
        ""
    };
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">{meta}\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · smtp2oauth</title><style>\
         body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}\
         table{{border-collapse:collapse;width:100%}}\
         th,td{{text-align:left;vertical-align:top;padding:.5em;border-bottom:1px solid #ddd}}\
         .muted{{color:#777;font-size:.9em}}.good{{color:#17632d}}.bad{{color:#b00020;font-weight:bold}}\
         .err{{background:#fde8e8;padding:.8em;border-left:4px solid #b00020}}\
         .ok{{background:#e6f4ea;padding:.8em;border-left:4px solid #17632d}}\
         .err-text{{color:#b00020;font-size:.9em}}.prompt td{{background:#fff8e1}}.note td{{background:#eef3fb}}\
         .code{{font-family:monospace;font-size:1.4em;letter-spacing:.1em}}\
         button{{padding:.4em .9em}}button.primary{{background:#0b57d0;color:#fff;border:0;border-radius:4px}}\
         </style></head><body><h1>smtp2oauth · {title}</h1>{body}</body></html>",
        title = esc(title),
    )
}

/// HTML-escapes text for element content and quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Account names are letters, digits, `-`, `_` and `.` (checked by the configuration), so they
/// are safe in a path segment as they are; anything else is percent-encoded all the same.
fn url_path_segment(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `scheme://host[:port]` of a URL.
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    (!authority.is_empty()).then(|| format!("{scheme}://{authority}"))
}

/// `host[:port]` of a URL, as a browser sends it in `Host`.
fn host_of(url: &str) -> Option<String> {
    let (_, rest) = url.split_once("://")?;
    rest.split(['/', '?', '#'])
        .next()
        .map(str::to_owned)
        .filter(|h| !h.is_empty())
}

fn path_of(url: &str) -> Option<String> {
    let (_, rest) = url.split_once("://")?;
    let path = &rest[rest.find('/')?..];
    Some(path.split(['?', '#']).next().unwrap_or(path).to_owned())
}

fn host_header(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::HOST).and_then(|v| v.to_str().ok())
}

/// The routes of the accounts page and the callback.
pub fn router(page: Arc<AccountsPage>) -> Router {
    let mut r = Router::new()
        .route("/", get(|| async { Redirect::to("/accounts") }))
        .route("/accounts", get(accounts))
        .route("/accounts/{name}/sign-in", post(sign_in))
        .route("/accounts/{name}/sign-out", post(sign_out))
        .route("/login", post(login))
        .route("/logout", post(logout));
    for path in page.callback_paths() {
        r = r.route(&path, get(callback));
    }
    r.with_state(page)
}

async fn accounts(State(page): State<Arc<AccountsPage>>, headers: HeaderMap) -> Response {
    let (session, cookie) = page.sessions.get_or_create(&headers);
    if page.password_required(&session) {
        return page.html(StatusCode::OK, cookie, login_form(&session, None));
    }
    let body = page.render(&session, host_header(&headers), None).await;
    page.html(StatusCode::OK, cookie, body)
}

fn login_form(session: &Session, error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=\"err\">{}</p>", esc(e)))
        .unwrap_or_default();
    layout(
        "Log in",
        false,
        &format!(
            "{error}<form method=\"post\" action=\"/login\"><input type=\"hidden\" name=\"csrf\" \
             value=\"{}\"><label>Password <input type=\"password\" name=\"password\" \
             autocomplete=\"current-password\" autofocus></label> <button>Log in</button></form>",
            esc(&session.csrf)
        ),
    )
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: Option<String>,
}

#[derive(Deserialize)]
struct LoginForm {
    csrf: Option<String>,
    password: Option<String>,
}

async fn login(
    State(page): State<Arc<AccountsPage>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let session = match session::check_post(&page.sessions, &headers, form.csrf.as_deref()) {
        Ok(s) => s,
        Err(why) => return page.refused(why),
    };
    let Some(hash) = page.cfg.password_hash.clone() else {
        return page.redirect("/accounts", None);
    };
    let password = Secret::from(form.password.unwrap_or_default());
    let ok = tokio::task::spawn_blocking(move || {
        use argon2::PasswordVerifier;
        argon2::Argon2::default()
            .verify_password(password.expose().as_bytes(), hash.expose())
            .is_ok()
    })
    .await
    .unwrap_or(false);
    if !ok {
        warn!("accounts page: wrong password");
        // Slows down guessing; argon2 already costs tens of milliseconds.
        tokio::time::sleep(Duration::from_secs(1)).await;
        return page.html(
            StatusCode::UNAUTHORIZED,
            None,
            login_form(&session, Some("Wrong password.")),
        );
    }
    let (_, cookie) = page.sessions.log_in(&session);
    info!("accounts page: logged in");
    page.redirect("/accounts", Some(cookie))
}

async fn logout(
    State(page): State<Arc<AccountsPage>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    match session::check_post(&page.sessions, &headers, form.csrf.as_deref()) {
        Ok(s) => {
            page.sessions.log_out(&s);
            page.redirect("/accounts", None)
        }
        Err(why) => page.refused(why),
    }
}

async fn sign_in(
    State(page): State<Arc<AccountsPage>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let session = match page.account_action(&headers, form.csrf.as_deref()) {
        Ok(s) => s,
        Err(refused) => return *refused,
    };
    let (Some(manager), Some(account)) = (page.cfg.sign_in.clone(), page.account(&name)) else {
        return page.no_such_account("Sign in", &name);
    };
    let host = host_header(&headers);
    let notice = match account.flow {
        Some(Flow::AuthorizationCode) => match manager.begin_authorization(&name, &session.id) {
            Ok(url) => return page.redirect(&url, None),
            Err(e) => (false, format!("Cannot start the sign-in for {name}: {e}")),
        },
        _ => match manager.start_device_login_background(&name).await {
            Ok(_) => return page.redirect(&format!("/accounts#{}", url_path_segment(&name)), None),
            Err(e) => (false, format!("Cannot start the sign-in for {name}: {e}")),
        },
    };
    let body = page.render(&session, host, Some(notice)).await;
    page.html(StatusCode::BAD_GATEWAY, None, body)
}

/// Deletes an account's stored sign-in and tells its token source at once, so no cached access
/// token is used after the admin said stop.
async fn sign_out(
    State(page): State<Arc<AccountsPage>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let session = match page.account_action(&headers, form.csrf.as_deref()) {
        Ok(s) => s,
        Err(refused) => return *refused,
    };
    let target = page
        .account(&name)
        .filter(|a| a.signs_in())
        .and_then(|a| Some((a.tokens.clone()?, page.cfg.store.clone()?)));
    let Some((tokens, store)) = target else {
        return page.no_such_account("Sign out", &name);
    };
    let removed = store.sign_out(&name).await.map_err(|e| e.to_string());
    let (status, notice) = match removed {
        Ok(removed) => {
            tokens.credentials_changed();
            info!(account = %name, "accounts page: signed out; the account's mail waits for a new sign-in");
            let text = if removed {
                format!(
                    "Signed out: the stored sign-in of {name} is deleted. Its mail waits in the \
                     queue until someone signs in again."
                )
            } else {
                format!("{name} had no stored sign-in.")
            };
            (StatusCode::OK, (true, text))
        }
        Err(e) => {
            warn!(account = %name, error = %e, "accounts page: cannot sign out");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                (false, format!("Cannot sign {name} out: {e}")),
            )
        }
    };
    let body = page
        .render(&session, host_header(&headers), Some(notice))
        .await;
    page.html(status, None, body)
}

async fn callback(
    State(page): State<Arc<AccountsPage>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(manager) = page.cfg.sign_in.clone() else {
        return page.html(
            StatusCode::NOT_FOUND,
            None,
            layout(
                "Sign in",
                false,
                "<p class=\"err\">No account here signs in with a browser.</p>",
            ),
        );
    };
    let session = page.sessions.find(&headers);
    let binding = session.as_ref().map(|s| s.id.clone()).unwrap_or_default();
    let params = CallbackParams {
        state: query.get("state").cloned(),
        code: query.get("code").map(|c| Secret::from(c.as_str())),
        error: query.get("error").cloned(),
        error_description: query.get("error_description").cloned(),
    };
    match manager.complete_authorization(params, &binding).await {
        Ok(account) => {
            let mailbox = page
                .account(&account)
                .map(|a| a.mailbox.clone())
                .unwrap_or_default();
            page.html(
                StatusCode::OK,
                None,
                layout(
                    "Signed in",
                    false,
                    &format!(
                        "<p class=\"ok\">Signed in: account <strong>{}</strong> ({}) can send \
                         mail now. Its queued messages are being delivered, and the relay keeps \
                         the sign-in alive from here on.</p>{BACK}",
                        esc(&account),
                        esc(&mailbox)
                    ),
                ),
            )
        }
        Err(e) => {
            let status = match e {
                SignInError::UnknownState | SignInError::WrongSession | SignInError::Expired => {
                    StatusCode::BAD_REQUEST
                }
                SignInError::Provider(_) => StatusCode::FORBIDDEN,
                _ => StatusCode::BAD_GATEWAY,
            };
            warn!(error = %e, "sign-in callback refused");
            page.html(
                status,
                None,
                layout(
                    "Sign-in failed",
                    false,
                    &format!(
                        "<p class=\"err\">The sign-in did not complete: {}</p>{BACK}",
                        esc(&e.to_string())
                    ),
                ),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_url_parts() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(
            origin_of("https://login.microsoftonline.com/t/oauth2/v2.0/authorize?x=1").as_deref(),
            Some("https://login.microsoftonline.com")
        );
        assert_eq!(
            host_of("http://localhost:8025/oauth/callback").as_deref(),
            Some("localhost:8025")
        );
        assert_eq!(
            path_of("http://localhost:8025/oauth/callback/").as_deref(),
            Some("/oauth/callback/")
        );
        assert_eq!(path_of("http://localhost:8025"), None);
        assert_eq!(url_path_segment("scan.ner-1_x"), "scan.ner-1_x");
        assert_eq!(url_path_segment("a/b"), "a%2Fb");
    }
}

//! The accounts page and the OAuth callback.
//!
//! An admin opens `http://localhost:8025/accounts` (directly, through an SSH tunnel, or on a LAN
//! address they bound and listed in `[admin] allowed_hosts`), sees every account with its state
//! in words (working, refused by the upstream, needs a sign-in, ...), what the upstream last
//! said, its token state (valid until, last refresh, last error), and acts: delegated accounts
//! sign in with one button (authorization-code accounts go to the provider's sign-in page and
//! come back to the callback; device-code accounts get a code to enter on any device, shown
//! here until it is used); Sign out deletes an account's stored sign-in (as `smtp2oauth account
//! logout` does); Send test gets a token and sends a short message, reporting each step.
//!
//! What the page never does: render a token, code, verifier, secret or key (only states,
//! times and error texts, which the token crate keeps free of secrets), accept a state-changing
//! request without the session's CSRF token, or accept a callback whose `state` was not issued
//! to this browser session (see `session.rs` and `smtp2oauth_tokens::SignInManager`).

use crate::console::{Caller, Console, Face, Peer};
use crate::model;
use crate::pages::{CsrfForm, Nav, Notice, layout, page_session};
use crate::pages::{badge, button, csrf, notice, reply, when};
use crate::session::Session;
use crate::time::{from_ms, utc, utc_relative};
use crate::{SendTestReport, TestStep};
use axum::Form;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::Response;
use axum::routing::{get, post};
use maud::{Markup, html};
use serde::Deserialize;
use smtp2oauth_activity::now_ms;
use smtp2oauth_config::{Flow, Route};
use smtp2oauth_tokens::{
    CallbackParams, DeviceLoginStatus, LoginPrompt, Secret, SignInError, SignInManager,
    TokenSource, TokenStore,
};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tracing::{info, warn};

/// How long the callback waits for the first token of a new sign-in before it answers.
const FIRST_TOKEN_WAIT: Duration = Duration::from_secs(15);

/// One account as the console shows it.
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

/// The accounts and what signs them in.
#[derive(Default)]
pub struct AccountsConfig {
    /// Every account, in configuration order.
    pub accounts: Vec<AccountView>,
    /// Present when some account signs in with a delegated flow.
    pub sign_in: Option<Arc<SignInManager>>,
    /// The token store, when some account signs in.
    pub store: Option<Arc<TokenStore>>,
}

impl AccountsConfig {
    fn account(&self, name: &str) -> Option<&AccountView> {
        self.accounts.iter().find(|a| a.name == name)
    }

    /// Paths the OAuth callback answers on: `/oauth/callback` and the path of every
    /// authorization-code account's redirect URI.
    pub fn callback_paths(&self) -> Vec<String> {
        let mut paths = BTreeSet::from(["/oauth/callback".to_string()]);
        for a in &self.accounts {
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
}

/// What the token file of a delegated account holds, or why it could not be read.
type StoredRecord = Result<Option<smtp2oauth_tokens::StoredToken>, String>;

/// Everything one account's block on the page needs.
struct Row<'a> {
    view: &'a AccountView,
    model: model::Account,
    delegated: bool,
    record: StoredRecord,
    prompt: Option<Result<LoginPrompt, String>>,
}

/// The routes of the accounts page and the callback.
pub fn router(console: &Console) -> Router<Arc<Console>> {
    let mut r = Router::new()
        .route("/accounts", get(accounts))
        .route("/accounts/{name}/sign-in", post(sign_in))
        .route("/accounts/{name}/sign-out", post(sign_out))
        .route("/accounts/{name}/test", post(send_test));
    for path in console.state.accounts.callback_paths() {
        r = r.route(&path, get(callback));
    }
    r
}

async fn accounts(
    State(c): State<Arc<Console>>,
    peer: Peer,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let (session, cookie) = match page_session(&c, &headers, peer, &uri) {
        Ok(s) => s,
        Err(login) => return *login,
    };
    let page = render(&c, &session, host_header(&headers), None).await;
    c.html(StatusCode::OK, cookie, page)
}

/// The page, with `n` above it.
async fn render(c: &Console, session: &Session, host: Option<&str>, n: Option<Notice>) -> Markup {
    let mut rows = Vec::new();
    for a in &c.state.accounts.accounts {
        rows.push(row(c, a).await);
    }
    let waiting = rows.iter().any(|r| matches!(r.prompt, Some(Ok(_))));
    let tests = c.state.send_test.is_some();
    let body = html! {
        (notice(n.as_ref()))
        @for r in &rows { (account_block(r, session, host, tests)) }
        p.muted { "Tokens, codes and keys are never shown here. Metrics: " a href="/metrics" { "/metrics" } " · readiness: " a href="/readyz" { "/readyz" } }
    };
    layout(
        "Accounts",
        Nav::Accounts,
        Some(session),
        waiting.then_some(5),
        body,
    )
}

async fn row<'a>(c: &Console, a: &'a AccountView) -> Row<'a> {
    let cfg = &c.state.accounts;
    let delegated = a.signs_in() && a.tokens.is_some();
    let record = match (&cfg.store, delegated) {
        (Some(store), true) => store.load(&a.name).await.map_err(|e| e.to_string()),
        _ => Ok(None),
    };
    let activity = c.state.activity.account(&a.name, now_ms());
    let model = model::account(a, activity.as_ref());
    let prompt = if delegated {
        prompt(cfg, a, &record).await
    } else {
        None
    };
    Row {
        view: a,
        model,
        delegated,
        record,
        prompt,
    }
}

/// A device-code sign-in in progress (started here or by `account login`) or the last one
/// that failed.
async fn prompt(
    cfg: &AccountsConfig,
    a: &AccountView,
    record: &StoredRecord,
) -> Option<Result<LoginPrompt, String>> {
    let here = match cfg.sign_in.as_ref().and_then(|m| m.device_login(&a.name)) {
        Some(DeviceLoginStatus::Waiting(p)) => Some(Ok(p)),
        Some(DeviceLoginStatus::Failed(e)) => Some(Err(e)),
        _ => None,
    };
    let found = match (here, &cfg.store) {
        (Some(p), _) => Some(p),
        (None, Some(store)) => store.login_prompt(&a.name).await.map(Ok),
        (None, None) => None,
    };
    match found {
        Some(Ok(p)) if record_newer_than(record, p.expires_at) => None,
        other => other,
    }
}

fn account_block(r: &Row, session: &Session, host: Option<&str>, tests: bool) -> Markup {
    let m = &r.model;
    html! {
        section id=(m.name) {
            h2 { (m.name) " " span.muted { (m.mailbox) } }
            dl.env {
                dt { "State" } dd { (badge(m.state, m.state_words)) " since " (when(m.since.as_ref().map(|s| s.at_ms)))
                    @if let Some(t) = &m.throttled_until { ", until " (when(Some(t.at_ms))) } }
                @if m.state != "ok" {
                    dt { "Why" } dd { (reply(m.reply.as_ref())) }
                    @if let Some(a) = &m.advice { dt { "What to do" } dd { (a) } }
                }
                dt { "Route" } dd { (m.route) " · sign-in: " (m.flow) " · " (signed_in_cell(r)) }
                dt { "Token" } dd { (token_cell(m.token.as_ref())) }
                dt { "Last refresh" } dd { (last_refresh_cell(r)) }
                dt { "Last error" } dd { (last_error_cell(r)) }
                dt { "Last delivery" } dd { (happened(m.last_delivery.as_ref())) }
                dt { "Last failure" } dd { (happened(m.last_failure.as_ref()))
                    @if m.consecutive_failures > 0 { " · " (m.consecutive_failures) " failed attempt(s) in a row" } }
            }
            @if r.delegated {
                (redirect_note(r.view, host))
                (prompt_note(r))
                p { (sign_in_buttons(r, session)) }
            }
            @if tests {
                (test_form(&m.name, session))
            }
        }
    }
}

fn happened(h: Option<&model::Happened>) -> Markup {
    html! {
        @match h {
            Some(h) => { (when(Some(h.at.at_ms))) br; (reply(h.reply.as_ref()))
                @if let Some(a) = &h.advice { br; span.muted { (a) } } },
            None => span.muted { "—" },
        }
    }
}

/// The token: valid until when, or why there is none.
fn token_cell(t: Option<&model::TokenInfo>) -> Markup {
    html! {
        @match t {
            None => span.muted { "none needed" },
            Some(t) => @match t.state {
                "sign_in_needed" => span.bad { "sign-in needed" },
                "valid" => span.good { "valid until " (t.valid_until.as_ref().map(|v| utc_relative(from_ms(v.at_ms))).unwrap_or_default()) },
                "failing" => span.bad { "no token" },
                _ => span.muted { "not requested yet" },
            },
        }
    }
}

/// The sign-in state: app-only, signed in when, or why not.
fn signed_in_cell(r: &Row) -> Markup {
    let a = r.view;
    html! {
        @if !r.delegated {
            @if a.flow == Some(Flow::ClientCredentials) && a.tokens.is_some() { "app-only" } @else { "—" }
        } @else {
            @match &r.record {
                Err(e) => span.bad { "token file unreadable: " (e) },
                Ok(None) => span.bad { "not signed in" },
                Ok(Some(rec)) => @match rec.signed_in_at {
                    Some(t) => { "signed in " (utc_relative(t)) },
                    None => "signed in",
                },
            }
        }
    }
}

/// The later of the cache's and the token file's last refresh.
fn last_refresh_cell(r: &Row) -> Markup {
    let cache = r.view.tokens.as_ref().and_then(|t| t.status().last_refresh);
    let file = r
        .record
        .as_ref()
        .ok()
        .and_then(|x| x.as_ref()?.last_refresh);
    match [cache, file].into_iter().flatten().max() {
        Some(t) => html! { (utc_relative(t)) },
        None => html! { "—" },
    }
}

/// The cache's last error, else the token file's.
fn last_error_cell(r: &Row) -> Markup {
    let e = r
        .view
        .tokens
        .as_ref()
        .and_then(|t| t.status().last_error)
        .or_else(|| {
            r.record
                .as_ref()
                .ok()
                .and_then(|x| x.as_ref()?.last_error.clone())
        });
    match e {
        Some(e) => html! { span.err-text { (e) } },
        None => html! { "—" },
    }
}

/// Sign in (again) and, with a stored sign-in, Sign out.
fn sign_in_buttons(r: &Row, session: &Session) -> Markup {
    let a = r.view;
    let label = match (a.flow, &r.record) {
        (Some(Flow::DeviceCode), _) => "Sign in with a code",
        (_, Ok(Some(_))) => "Sign in again",
        _ => "Sign in",
    };
    let needed = r
        .model
        .token
        .as_ref()
        .is_some_and(|t| t.state == "sign_in_needed");
    let name = url_path_segment(&a.name);
    html! {
        (button(session, &format!("/accounts/{name}/sign-in"), label, needed.then_some("primary")))
        @if matches!(r.record, Ok(Some(_))) {
            " " (button(session, &format!("/accounts/{name}/sign-out"), "Sign out", None))
        }
    }
}

fn test_form(name: &str, session: &Session) -> Markup {
    html! {
        form.filter method="post" action={ "/accounts/" (url_path_segment(name)) "/test" } {
            (csrf(session))
            label { "Send a test message to" br; input type="email" name="to" required placeholder="you@example.com"; }
            button { "Send test" }
        }
    }
}

/// The code of a device-code sign-in in progress, or why the last one failed.
fn prompt_note(r: &Row) -> Markup {
    let needed = r
        .model
        .token
        .as_ref()
        .is_some_and(|t| t.state == "sign_in_needed");
    html! {
        @match &r.prompt {
            Some(Ok(p)) => p.prompt {
                "Sign-in in progress for " (r.view.name) ": on any device, open "
                a href=(p.verification_uri) target="_blank" rel="noopener noreferrer" { (p.verification_uri) }
                " and enter the code " strong.code { (p.user_code) }
                ", then sign in as the mailbox user. The code works until "
                (utc(SystemTime::UNIX_EPOCH + Duration::from_secs(p.expires_at)))
                " (started by " (p.started_by) "). This page refreshes by itself."
            },
            Some(Err(e)) if needed => p.note { "The last sign-in attempt for " (r.view.name) " did not complete: " (e) },
            _ => {},
        }
    }
}

/// A note when an authorization-code sign-in would come back to another address than the one
/// this page was opened on (the browser session would not match).
fn redirect_note(a: &AccountView, host: Option<&str>) -> Markup {
    let show = a.flow == Some(Flow::AuthorizationCode)
        && a.redirect_uri
            .as_ref()
            .and_then(|u| host_of(u))
            .zip(host)
            .is_some_and(|(r, h)| !r.eq_ignore_ascii_case(h));
    let uri = a.redirect_uri.clone().unwrap_or_default();
    let page = format!("{}/accounts", origin_of(&uri).unwrap_or_default());
    html! {
        @if show {
            p.note { "The sign-in for " (a.name) " comes back to " code { (uri) }
                ", a different address from this page's: open " a href=(page) { (page) } " to sign in, so your browser session matches." }
        }
    }
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

/// HTML-escapes text for element content and double-quoted attribute values (for the one-shot
/// page of `smtp2oauth account login`).
pub fn esc(text: &str) -> String {
    html! { (text) }.into_string()
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
pub fn origin_of(url: &str) -> Option<String> {
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

/// The checks every button on an account makes: the session's CSRF token (and same-site
/// origin), then the password when one is set.
async fn account_action(
    c: &Console,
    peer: Peer,
    headers: &HeaderMap,
    csrf: Option<&str>,
) -> Result<Session, Response> {
    match c.post(headers, peer.ip(), csrf, Face::Page).await? {
        Caller::Browser(s) => Ok(s),
        Caller::Script => Err(c.redirect("/accounts", None)),
    }
}

fn no_such_account(c: &Console, session: &Session, title: &str, name: &str) -> Response {
    let body = html! {
        p.err { "There is no account " (name) " that signs in." }
        p { a href="/accounts" { "Back to the accounts page" } }
    };
    c.html(
        StatusCode::NOT_FOUND,
        None,
        layout(title, Nav::Accounts, Some(session), None, body),
    )
}

async fn sign_in(
    State(c): State<Arc<Console>>,
    peer: Peer,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let session = match account_action(&c, peer, &headers, form.csrf.as_deref()).await {
        Ok(s) => s,
        Err(refused) => return refused,
    };
    let cfg = &c.state.accounts;
    let (Some(manager), Some(account)) = (cfg.sign_in.clone(), cfg.account(&name)) else {
        return no_such_account(&c, &session, "Sign in", &name);
    };
    let text = match account.flow {
        Some(Flow::AuthorizationCode) => match manager.begin_authorization(&name, &session.id) {
            Ok(url) => {
                c.sessions.signing_in(&session);
                return c.redirect(&url, None);
            }
            Err(e) => format!("Cannot start the sign-in for {name}: {e}"),
        },
        _ => match manager.start_device_login_background(&name).await {
            Ok(_) => return c.redirect(&format!("/accounts#{}", url_path_segment(&name)), None),
            Err(e) => format!("Cannot start the sign-in for {name}: {e}"),
        },
    };
    let n = Notice { ok: false, text };
    let page = render(&c, &session, host_header(&headers), Some(n)).await;
    c.html(StatusCode::BAD_GATEWAY, None, page)
}

/// Deletes an account's stored sign-in and tells its token source at once, so no cached access
/// token is used after the admin said stop.
async fn sign_out(
    State(c): State<Arc<Console>>,
    peer: Peer,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let session = match account_action(&c, peer, &headers, form.csrf.as_deref()).await {
        Ok(s) => s,
        Err(refused) => return refused,
    };
    let cfg = &c.state.accounts;
    let target = cfg
        .account(&name)
        .filter(|a| a.signs_in())
        .and_then(|a| Some((a.tokens.clone()?, cfg.store.clone()?)));
    let Some((tokens, store)) = target else {
        return no_such_account(&c, &session, "Sign out", &name);
    };
    let (status, n) = match store.sign_out(&name).await {
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
            (StatusCode::OK, Notice { ok: true, text })
        }
        Err(e) => {
            warn!(account = %name, error = %e, "accounts page: cannot sign out");
            let text = format!("Cannot sign {name} out: {e}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Notice { ok: false, text },
            )
        }
    };
    let page = render(&c, &session, host_header(&headers), Some(n)).await;
    c.html(status, None, page)
}

#[derive(Deserialize)]
struct TestForm {
    csrf: Option<String>,
    to: Option<String>,
}

/// The Send test button: the same send-test as `smtp2oauth send-test` and the API.
async fn send_test(
    State(c): State<Arc<Console>>,
    peer: Peer,
    Path(name): Path<String>,
    headers: HeaderMap,
    Form(form): Form<TestForm>,
) -> Response {
    let session = match account_action(&c, peer, &headers, form.csrf.as_deref()).await {
        Ok(s) => s,
        Err(refused) => return refused,
    };
    let Some(run) = &c.state.send_test else {
        return no_such_account(&c, &session, "Send test", &name);
    };
    let to = form.to.unwrap_or_default();
    let (status, n) = match run(name.clone(), to.trim().to_string()).await {
        Ok(report) => {
            let ok = report.ok;
            (
                if ok {
                    StatusCode::OK
                } else {
                    StatusCode::BAD_GATEWAY
                },
                Notice {
                    ok,
                    text: test_words(&report),
                },
            )
        }
        Err(why) => (
            StatusCode::BAD_REQUEST,
            Notice {
                ok: false,
                text: why,
            },
        ),
    };
    let page = render(&c, &session, host_header(&headers), Some(n)).await;
    c.html(status, None, page)
}

/// A send-test's report in one paragraph: the token step, then the delivery step.
pub fn test_words(r: &SendTestReport) -> String {
    let step = |what: &str, s: &TestStep| {
        let mut t = format!("{what}: {}", s.summary);
        if let Some(reply) = &s.reply {
            t.push_str(&format!(" ({reply})"));
        }
        if let Some(a) = &s.advice {
            t.push_str(&format!(". What to do: {a}"));
        }
        t
    };
    let mut parts = vec![format!(
        "Test message to {} through {} ({} to {})",
        r.to, r.account, r.route, r.target
    )];
    if let Some(t) = &r.token {
        parts.push(step("Token", t));
    }
    match &r.delivery {
        Some(d) => parts.push(step("Delivery", d)),
        None => parts.push("Delivery: not tried without a token".into()),
    }
    parts.join(". ")
}

/// Completes a browser sign-in, and answers only once the first token of the new sign-in was
/// fetched (or could not be), so the accounts page opened next shows the token, never a
/// half-finished state.
async fn callback(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(manager) = c.state.accounts.sign_in.clone() else {
        let body = html! { p.err { "No account here signs in with a browser." } };
        return c.html(
            StatusCode::NOT_FOUND,
            None,
            layout("Sign in", Nav::None, None, None, body),
        );
    };
    let session = c.sessions.find(&headers);
    let binding = session.as_ref().map(|s| s.id.clone()).unwrap_or_default();
    let params = CallbackParams {
        state: query.get("state").cloned(),
        code: query.get("code").map(|c| Secret::from(c.as_str())),
        error: query.get("error").cloned(),
        error_description: query.get("error_description").cloned(),
    };
    let result = manager.complete_authorization(params, &binding).await;
    if let Some(s) = &session {
        c.sessions.signed_in(s);
    }
    match result {
        Ok(account) => signed_in_page(&c, &account).await,
        Err(e) => {
            let status = match e {
                SignInError::UnknownState | SignInError::WrongSession | SignInError::Expired => {
                    StatusCode::BAD_REQUEST
                }
                SignInError::Provider(_) => StatusCode::FORBIDDEN,
                _ => StatusCode::BAD_GATEWAY,
            };
            warn!(error = %e, "sign-in callback refused");
            let body = html! {
                p.err { "The sign-in did not complete: " (e.to_string()) }
                p { a href="/accounts" { "Back to the accounts page" } }
            };
            c.html(
                status,
                None,
                layout("Sign-in failed", Nav::None, None, None, body),
            )
        }
    }
}

/// The callback's answer after a sign-in: the first token fetched with it, and what it means.
async fn signed_in_page(c: &Console, account: &str) -> Response {
    let view = c.state.accounts.account(account);
    let mailbox = view.map(|a| a.mailbox.clone()).unwrap_or_default();
    let first = match view.and_then(|a| a.tokens.clone()) {
        Some(t) => tokio::time::timeout(FIRST_TOKEN_WAIT, t.token())
            .await
            .map_err(|_| "the token endpoint did not answer in time".to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
            .map(|_| ()),
        None => Ok(()),
    };
    let body = html! {
        @match &first {
            Ok(()) => p.ok { "Signed in: account " strong { (account) } " (" (mailbox) ") can send mail now. Its queued messages are being delivered, and the relay keeps the sign-in alive from here on." },
            Err(e) => p.err { "Signed in: account " strong { (account) } " (" (mailbox) "), but the first token request with the new sign-in failed: " (e) },
        }
        p { a href="/accounts" { "Back to the accounts page" } }
    };
    c.html(
        StatusCode::OK,
        None,
        layout("Signed in", Nav::None, None, None, body),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_url_parts() {
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

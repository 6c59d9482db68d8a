//! A fake Microsoft Graph mail endpoint (MIME flavour), over HTTPS with the test CA.
//!
//! Why: the relay's Graph route must send exactly what Graph expects and cope with every answer
//! Graph gives. Two ways to send are faked, strictly:
//!
//! - `POST /v1.0/users/{mailbox}/sendMail` (`sendmail.rs`): `Content-Type: text/plain`, the
//!   base64 of the whole MIME message, at most 4 MiB of body; answers `202`.
//! - The draft conversation for messages too large for one request (`drafts.rs`, `upload.rs`):
//!   `POST .../messages` with base64 MIME creates a draft (`201` and its JSON with `id`);
//!   `POST .../messages/{id}/attachments` adds a `#microsoft.graph.fileAttachment` with
//!   `contentBytes` (one request under 4 MiB); `POST .../attachments/createUploadSession` opens
//!   an upload session for an attachment of at least 3 MiB and answers a pre-authenticated
//!   `uploadUrl` on another path, which takes `PUT`s of the bytes in order (no `Authorization`
//!   header; `Content-Length` and `Content-Range: bytes a-b/total`; at most 4 MiB each and a
//!   multiple of 320 KiB except the last; `200` with `nextExpectedRanges`, `201` and `Location`
//!   for the last); `POST .../messages/{id}/send` (`202`) delivers it;
//!   `DELETE .../messages/{id}` (`204`) removes it.
//!
//! What a test can see: every message Graph would deliver (for a draft, the draft's MIME with
//! its attachments put back, and each attachment's name, type, inline flag, Content-ID and
//! bytes), the drafts that still exist, every request (method, path, status, whether it carried
//! a bearer token), and the peak number of requests in flight.
//!
//! Checks that mirror Graph: the bearer token must be one the fake IdP issued, unexpired, for
//! `https://graph.microsoft.com/.default` or (delegated) a scope granting the call (`Mail.Send`
//! to send, `Mail.ReadWrite` for drafts; a delegated token without it gets `403
//! ErrorAccessDenied`), else 401 `InvalidAuthenticationToken`; the mailbox in the path must be
//! the configured one (else 404 `ErrorInvalidUser`); bodies must be valid base64 (else 400
//! `ErrorMimeContentInvalidBase64String`) of at most 4 MiB (else 413); a message larger than
//! the mailbox's limit (35 MiB unless set) is refused with 413 `ErrorMessageSizeExceeded`.
//!
//! Scripting: [`FakeGraph::fail_next`] and [`FakeGraph::set_failure`] answer Graph API requests
//! (not upload `PUT`s, which go to another host in real life) with a failure;
//! [`FakeGraph::fail_step`] answers the Nth request of one kind (any kind, `PUT`s included),
//! e.g. a 429 with `Retry-After` on the third chunk; [`FakeGraph::set_drafts_denied`] makes
//! every draft write answer `403 ErrorAccessDenied` (an app without `Mail.ReadWrite`) while
//! `sendMail` still works.

// Handlers decide with `Result<_, Response>`: the error is the answer itself, built once per
// request, so its size does not matter.
#![allow(clippy::result_large_err)]

mod drafts;
mod mime;
mod sendmail;
mod upload;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post, put};
use serde_json::json;
use tokio::sync::watch;

use crate::lock;

/// The resource a Graph token must be for.
pub const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";
/// Largest request body accepted.
pub const MAX_REQUEST_BODY: usize = 4 * 1024 * 1024;
/// Smallest attachment an upload session accepts (Graph: "between 3 MB and 150 MB").
pub const MIN_UPLOAD_SESSION_SIZE: u64 = 3 * 1024 * 1024;
/// Largest attachment an upload session accepts.
pub const MAX_UPLOAD_SESSION_SIZE: u64 = 150 * 1024 * 1024;
/// Upload chunks must be a multiple of this, except the last.
pub const CHUNK_GRANULE: usize = 320 * 1024;
/// Largest upload chunk.
pub const MAX_CHUNK: usize = 4 * 1024 * 1024;
/// Exchange Online's default message size limit (35 MB), counted on the encoded message.
pub const DEFAULT_MAILBOX_LIMIT: usize = 35 * 1024 * 1024;

/// Checks a bearer token; returns the scope it was issued for (see `FakeIdp::scope_validator`).
pub type ScopeValidator = Arc<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

/// A scripted answer instead of the normal one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GraphFailure {
    pub status: u16,
    /// Graph's error code, e.g. `ErrorAccessDenied`, `ApplicationThrottled`.
    pub code: String,
    pub message: String,
    /// `Retry-After` in seconds.
    pub retry_after: Option<u64>,
}

impl GraphFailure {
    pub fn new(status: u16, code: &str, message: &str) -> Self {
        GraphFailure {
            status,
            code: code.into(),
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn throttled(retry_after: u64) -> Self {
        GraphFailure {
            retry_after: Some(retry_after),
            ..Self::new(
                429,
                "ApplicationThrottled",
                "Application is over its MailboxConcurrency limit.",
            )
        }
    }
}

/// The kinds of request the fake serves (for scripting and the request log).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GraphStep {
    /// `POST .../sendMail`
    SendMail,
    /// `POST .../messages` (MIME)
    CreateDraft,
    /// `POST .../messages/{id}/attachments`
    AddAttachment,
    /// `POST .../messages/{id}/attachments/createUploadSession`
    CreateUploadSession,
    /// `PUT {uploadUrl}`
    UploadChunk,
    /// `POST .../messages/{id}/send`
    SendDraft,
    /// `DELETE .../messages/{id}`
    DeleteDraft,
}

impl GraphStep {
    /// Writes to the mailbox, which need `Mail.ReadWrite`.
    fn writes_drafts(self) -> bool {
        matches!(
            self,
            GraphStep::CreateDraft
                | GraphStep::AddAttachment
                | GraphStep::CreateUploadSession
                | GraphStep::DeleteDraft
        )
    }
}

/// An attachment of a draft, as added through the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GraphAttachment {
    pub id: String,
    pub name: String,
    pub content_type: String,
    pub is_inline: bool,
    /// Without angle brackets.
    pub content_id: Option<String>,
    pub bytes: Vec<u8>,
    /// `PUT`s it took through an upload session; 0 when it came in one `POST`.
    pub chunks: usize,
}

/// One message Graph accepted for delivery.
#[derive(Clone, Debug)]
pub struct GraphMessage {
    /// The `{id}` of the URL.
    pub mailbox: String,
    /// What Graph would deliver: for `sendMail` the decoded MIME exactly; for a draft, the
    /// draft's MIME with its attachments put back.
    pub mime: Vec<u8>,
    /// Who Graph delivers to: every address in the top-level To, Cc and Bcc headers, lower case.
    pub recipients: Vec<String>,
    pub received_at: Instant,
    /// For a sent draft: its id, the MIME it was created from, and the attachments added to it
    /// (in the order they were completed). `None` and empty for `sendMail`.
    pub draft_id: Option<String>,
    pub draft_mime: Option<Vec<u8>>,
    pub attachments: Vec<GraphAttachment>,
}

impl GraphMessage {
    pub fn mime_str(&self) -> String {
        String::from_utf8_lossy(&self.mime).into_owned()
    }

    /// The text of every `text/*` leaf part, decoded the way a strict decoder (Exchange's, as
    /// reported) reads quoted-printable: `=CRLF` is a soft break and `=XX` a byte; anything else
    /// after `=` (such as spaces before the line end) is kept literally. base64 is decoded.
    pub fn rendered_text_parts(&self) -> Vec<String> {
        let mut out = Vec::new();
        mime::render_entity(&self.mime, &mut out, 0);
        out
    }
}

/// A draft that still exists in the mailbox.
#[derive(Clone, Debug)]
pub struct GraphDraft {
    pub id: String,
    pub mailbox: String,
    /// The MIME it was created from.
    pub mime: Vec<u8>,
    pub attachments: Vec<GraphAttachment>,
    /// Upload sessions opened on it and not finished.
    pub open_upload_sessions: usize,
    pub created_at: Instant,
}

/// One request, whatever its outcome.
#[derive(Clone, Debug)]
pub struct GraphRequest {
    pub at: Instant,
    pub status: u16,
    pub path: String,
    pub content_type: String,
    pub method: String,
    pub step: GraphStep,
    /// Whether it carried an `Authorization` header.
    pub authorization: bool,
    pub content_range: Option<String>,
    pub body_len: usize,
}

/// A failure for the Nth request of one kind.
struct StepScript {
    step: GraphStep,
    /// Requests of this kind still to let through before this one fires.
    skip: usize,
    failure: GraphFailure,
    /// Carry the request out first, then answer the failure (an answer lost on the way back).
    after_effect: bool,
}

struct UploadSession {
    draft_id: String,
    mailbox: String,
    authtoken: String,
    name: String,
    content_type: String,
    size: usize,
    is_inline: bool,
    content_id: Option<String>,
    received: Vec<u8>,
    chunks: usize,
}

struct Draft {
    id: String,
    mailbox: String,
    mime: Vec<u8>,
    attachments: Vec<GraphAttachment>,
    created_at: Instant,
}

struct GraphState {
    messages: Vec<GraphMessage>,
    requests: Vec<GraphRequest>,
    fail_next: VecDeque<GraphFailure>,
    failure: Option<GraphFailure>,
    scripts: Vec<StepScript>,
    drafts_denied: bool,
    mailbox_limit: usize,
    drafts: Vec<Draft>,
    sessions: HashMap<String, UploadSession>,
    delay: Duration,
    active: usize,
    peak: usize,
    tokens_seen: Vec<String>,
}

impl Default for GraphState {
    fn default() -> Self {
        GraphState {
            messages: Vec::new(),
            requests: Vec::new(),
            fail_next: VecDeque::new(),
            failure: None,
            scripts: Vec::new(),
            drafts_denied: false,
            mailbox_limit: DEFAULT_MAILBOX_LIMIT,
            drafts: Vec::new(),
            sessions: HashMap::new(),
            delay: Duration::ZERO,
            active: 0,
            peak: 0,
            tokens_seen: Vec::new(),
        }
    }
}

impl GraphState {
    /// The scripted failure for this request of kind `step`, if one fires now.
    fn step_script(&mut self, step: GraphStep) -> Option<(GraphFailure, bool)> {
        let fire = self
            .scripts
            .iter()
            .position(|s| s.step == step && s.skip == 0);
        let fired = fire.map(|i| self.scripts.remove(i));
        for s in self.scripts.iter_mut().filter(|s| s.step == step) {
            s.skip = s.skip.saturating_sub(1);
        }
        fired.map(|s| (s.failure, s.after_effect))
    }

    fn draft_mut(&mut self, id: &str) -> Option<&mut Draft> {
        self.drafts.iter_mut().find(|d| d.id == id)
    }
}

struct Shared {
    mailbox: String,
    validator: ScopeValidator,
    /// `https://127.0.0.1:PORT`, for upload URLs.
    base_url: String,
    state: Mutex<GraphState>,
    msg_count: watch::Sender<usize>,
    shutdown: watch::Sender<bool>,
}

impl Shared {
    async fn wait_shutdown(&self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }
}

struct ShutdownGuard(Arc<Shared>);

impl Drop for ShutdownGuard {
    fn drop(&mut self) {
        self.0.shutdown.send_replace(true);
    }
}

/// Handle to a running fake Graph endpoint; stops when the last clone drops.
#[derive(Clone)]
pub struct FakeGraph {
    shared: Arc<Shared>,
    _guard: Arc<ShutdownGuard>,
    addr: SocketAddr,
}

impl FakeGraph {
    /// Serves HTTPS on 127.0.0.1 (an OS-assigned port) with `tls` (e.g.
    /// `TestPki::server_config()`), for `mailbox`, accepting tokens `validator` approves.
    pub async fn start(
        tls: Arc<rustls::ServerConfig>,
        mailbox: &str,
        validator: ScopeValidator,
    ) -> FakeGraph {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0 for FakeGraph");
        let addr = listener.local_addr().expect("local addr");
        let (shutdown, _) = watch::channel(false);
        let (msg_count, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            mailbox: mailbox.to_string(),
            validator,
            base_url: format!("https://{addr}"),
            state: Mutex::new(GraphState::default()),
            msg_count,
            shutdown,
        });
        let listener =
            crate::tls_listener::TlsListener::spawn(listener, tls, shared.shutdown.subscribe());
        let stop = shared.clone();
        let app = router(shared.clone());
        tokio::spawn(async move {
            let serve = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.wait_shutdown().await });
            if let Err(e) = serve.await {
                tracing::warn!("FakeGraph server ended: {e}");
            }
        });
        FakeGraph {
            _guard: Arc::new(ShutdownGuard(shared.clone())),
            shared,
            addr,
        }
    }

    /// `https://127.0.0.1:PORT` (the relay's `graph_url`).
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// Messages Graph accepted for delivery, by `sendMail` or by sending a draft.
    pub fn messages(&self) -> Vec<GraphMessage> {
        lock(&self.shared.state).messages.clone()
    }
    pub async fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<GraphMessage> {
        let mut rx = self.shared.msg_count.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|c| *c >= n)).await;
        self.messages()
    }
    /// Drafts that exist now (created, not yet sent or deleted).
    pub fn drafts(&self) -> Vec<GraphDraft> {
        let st = lock(&self.shared.state);
        st.drafts
            .iter()
            .map(|d| GraphDraft {
                id: d.id.clone(),
                mailbox: d.mailbox.clone(),
                mime: d.mime.clone(),
                attachments: d.attachments.clone(),
                open_upload_sessions: st.sessions.values().filter(|s| s.draft_id == d.id).count(),
                created_at: d.created_at,
            })
            .collect()
    }
    pub fn requests(&self) -> Vec<GraphRequest> {
        lock(&self.shared.state).requests.clone()
    }
    /// Answer the next `count` Graph API requests with `failure` (after checking the token).
    /// Upload `PUT`s are not counted: script those with [`FakeGraph::fail_step`].
    pub fn fail_next(&self, failure: GraphFailure, count: usize) {
        let mut st = lock(&self.shared.state);
        for _ in 0..count {
            st.fail_next.push_back(failure.clone());
        }
    }
    /// Answer every Graph API request with `failure` (`None`: normal).
    pub fn set_failure(&self, failure: Option<GraphFailure>) {
        lock(&self.shared.state).failure = failure;
    }
    /// Answer the `nth` request of kind `step` from now on (1: the next one) with `failure`,
    /// without carrying it out. Scripts for the same kind count independently.
    pub fn fail_step(&self, step: GraphStep, nth: usize, failure: GraphFailure) {
        self.script(step, nth, failure, false);
    }
    /// Like [`FakeGraph::fail_step`], but the request is carried out first and only its answer
    /// is the failure: what a client sees when a 5xx or a lost connection hides a success.
    pub fn fail_step_after_effect(&self, step: GraphStep, nth: usize, failure: GraphFailure) {
        self.script(step, nth, failure, true);
    }
    fn script(&self, step: GraphStep, nth: usize, failure: GraphFailure, after_effect: bool) {
        lock(&self.shared.state).scripts.push(StepScript {
            step,
            skip: nth.saturating_sub(1),
            failure,
            after_effect,
        });
    }
    /// Every draft write (create, attachments, upload sessions, delete) answers `403
    /// ErrorAccessDenied`, as for an app without `Mail.ReadWrite`; `sendMail` still works.
    pub fn set_drafts_denied(&self, denied: bool) {
        lock(&self.shared.state).drafts_denied = denied;
    }
    /// The mailbox's message size limit in bytes of encoded message (default 35 MiB).
    pub fn set_mailbox_limit(&self, bytes: usize) {
        lock(&self.shared.state).mailbox_limit = bytes;
    }
    /// Hold every answer this long (to observe concurrency).
    pub fn set_delay(&self, d: Duration) {
        lock(&self.shared.state).delay = d;
    }
    /// Most requests in progress at once.
    pub fn peak_concurrency(&self) -> usize {
        lock(&self.shared.state).peak
    }
    /// Every bearer token presented (tests check none leaks into logs).
    pub fn tokens_seen(&self) -> Vec<String> {
        lock(&self.shared.state).tokens_seen.clone()
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1.0/users/{mailbox}/sendMail", post(sendmail::send_mail))
        .route("/v1.0/users/{mailbox}/messages", post(drafts::create))
        .route(
            "/v1.0/users/{mailbox}/messages/{id}",
            delete(drafts::remove),
        )
        .route(
            "/v1.0/users/{mailbox}/messages/{id}/attachments",
            post(drafts::add_attachment),
        )
        .route(
            "/v1.0/users/{mailbox}/messages/{id}/attachments/createUploadSession",
            post(drafts::create_upload_session),
        )
        .route(
            "/v1.0/users/{mailbox}/messages/{id}/send",
            post(drafts::send),
        )
        .route("/api/v2.0/{*session}", put(upload::put_chunk))
        .fallback(|| async { StatusCode::NOT_FOUND })
        // Our own limits answer with Graph's 413, so axum's must not answer first.
        .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
        .with_state(shared)
}

fn graph_error(status: u16, code: &str, message: &str, retry_after: Option<u64>) -> Response {
    let body = json!({
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": iso_now(),
                "request-id": crate::uuid_v4(),
                "client-request-id": crate::uuid_v4(),
            }
        }
    });
    let mut r = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    if let Some(s) = retry_after
        && let Ok(v) = s.to_string().parse()
    {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

fn failure_response(f: &GraphFailure) -> Response {
    graph_error(f.status, &f.code, &f.message, f.retry_after)
}

/// `2024-05-01T12:34:56Z`.
fn iso_now() -> String {
    crate::utc_timestamp(std::time::SystemTime::now()).replace(' ', "T")
}

/// An id shaped like Exchange's (base64url with `=` padding).
fn new_id(prefix: &str) -> String {
    use base64::Engine as _;
    let tail = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(crate::random_bytes(30));
    format!("{prefix}{tail}=")
}

fn with_request_id(mut r: Response) -> Response {
    if let Ok(v) = crate::uuid_v4().parse() {
        r.headers_mut().insert("request-id", v);
    }
    r
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    with_request_id(
        (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response(),
    )
}

struct Active(Arc<Shared>);

impl Drop for Active {
    fn drop(&mut self) {
        let mut st = lock(&self.0.state);
        st.active = st.active.saturating_sub(1);
    }
}

/// What every request goes through: counted as in flight (for the concurrency peak), held for
/// the scripted delay, answered by `handle`, then logged; waiters on messages are told only once
/// the request is on record too.
async fn serve(
    shared: Arc<Shared>,
    step: GraphStep,
    method: &str,
    path: String,
    headers: &HeaderMap,
    body_len: usize,
    handle: impl FnOnce(&Shared) -> Response,
) -> Response {
    let at = Instant::now();
    let delay = {
        let mut st = lock(&shared.state);
        st.active += 1;
        st.peak = st.peak.max(st.active);
        st.delay
    };
    let _active = Active(shared.clone());
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let response = handle(&shared);
    let text = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let stored = {
        let mut st = lock(&shared.state);
        st.requests.push(GraphRequest {
            at,
            status: response.status().as_u16(),
            path,
            content_type: text(header::CONTENT_TYPE).unwrap_or_default(),
            method: method.to_string(),
            step,
            authorization: headers.contains_key(header::AUTHORIZATION),
            content_range: text(header::CONTENT_RANGE),
            body_len,
        });
        st.messages.len()
    };
    shared.msg_count.send_replace(stored);
    response
}

/// What a Graph API request must pass before it is carried out: a valid token granting the
/// call, no scripted failure, the configured mailbox, draft writes allowed. `Ok` carries a
/// failure to answer after carrying the request out, if one is scripted so.
fn admit(
    shared: &Shared,
    step: GraphStep,
    mailbox: &str,
    headers: &HeaderMap,
) -> Result<Option<GraphFailure>, Response> {
    check_token(shared, step, headers)?;
    let (scripted, late) = {
        let mut st = lock(&shared.state);
        let global = st.fail_next.pop_front().or_else(|| st.failure.clone());
        match (global, st.step_script(step)) {
            (Some(f), _) => (Some(f), None),
            (None, Some((f, false))) => (Some(f), None),
            (None, Some((f, true))) => (None, Some(f)),
            (None, None) => (None, None),
        }
    };
    if let Some(f) = scripted {
        return Err(failure_response(&f));
    }
    if !mailbox.eq_ignore_ascii_case(&shared.mailbox) {
        return Err(graph_error(
            404,
            "ErrorInvalidUser",
            &format!("The requested user '{mailbox}' is invalid."),
            None,
        ));
    }
    if step.writes_drafts() && lock(&shared.state).drafts_denied {
        return Err(access_denied());
    }
    Ok(late)
}

fn access_denied() -> Response {
    graph_error(
        403,
        "ErrorAccessDenied",
        "Access is denied. Check credentials and try again.",
        None,
    )
}

/// App-only tokens are issued for `.default`; delegated ones (a user signed in) for the user's
/// permissions. Both have Graph as their audience.
fn check_token(shared: &Shared, step: GraphStep, headers: &HeaderMap) -> Result<(), Response> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !token.is_empty() {
        lock(&shared.state).tokens_seen.push(token.to_string());
    }
    let scope = match (shared.validator)(token) {
        Ok(scope) => scope,
        Err(why) => {
            return Err(graph_error(
                401,
                "InvalidAuthenticationToken",
                &format!("Access token is empty or invalid ({why})."),
                None,
            ));
        }
    };
    if scope == GRAPH_SCOPE {
        return Ok(());
    }
    let has = |p: &str| {
        scope
            .split_whitespace()
            .any(|s| s == format!("https://graph.microsoft.com/{p}"))
    };
    if !has("Mail.Send") && !has("Mail.ReadWrite") {
        return Err(graph_error(
            401,
            "InvalidAuthenticationToken",
            &format!("Access token validation failure. Invalid audience (token for {scope})."),
            None,
        ));
    }
    let needed = if step.writes_drafts() {
        "Mail.ReadWrite"
    } else {
        "Mail.Send"
    };
    if has(needed) {
        Ok(())
    } else {
        Err(access_denied())
    }
}

/// True when the Content-Type's media type (parameters aside) is `want`.
fn media_type_is(headers: &HeaderMap, want: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .eq_ignore_ascii_case(want)
}

fn too_large_request() -> Response {
    graph_error(
        413,
        "ErrorRequestEntityTooLarge",
        "The request body is too large.",
        None,
    )
}

fn message_too_large() -> Response {
    graph_error(
        413,
        "ErrorMessageSizeExceeded",
        "The message exceeds the maximum supported size.",
        None,
    )
}

fn not_found() -> Response {
    graph_error(
        404,
        "ErrorItemNotFound",
        "The specified object was not found in the store.",
        None,
    )
}

fn bad_request(code: &str, message: &str) -> Response {
    graph_error(400, code, message, None)
}

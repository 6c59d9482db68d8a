//! A fake Microsoft Graph `sendMail` endpoint (MIME flavour), over HTTPS with the test CA.
//!
//! Why: the relay's Graph route must send exactly what Graph expects — `POST
//! /v1.0/users/{mailbox}/sendMail`, `Content-Type: text/plain`, the base64 of the whole MIME
//! message, a bearer token for the Graph resource — and must cope with Graph's answers
//! (202, 401, 403, 429 with `Retry-After`, 503). This fake checks all of that strictly, decodes
//! and stores the MIME, works out who Graph would deliver to (the `To:`/`Cc:`/`Bcc:` headers,
//! never an envelope), renders text parts the way a strict quoted-printable decoder does (so a
//! test can see soft line breaks survive), records when each request arrived (to time
//! `Retry-After`), and can be scripted to fail.
//!
//! Checks that mirror Graph: the bearer token must be one the fake IdP issued, unexpired, for
//! `https://graph.microsoft.com/.default` (else 401 `InvalidAuthenticationToken`); the mailbox in
//! the path must be the configured one (else 404 `ErrorInvalidUser`); the body must be valid
//! base64 (else 400 `ErrorMimeContentInvalidBase64String`) of at most 4 MiB (else 413).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use serde_json::json;
use tokio::sync::watch;

use crate::lock;

/// The resource a Graph token must be for.
pub const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";
/// Largest request body accepted.
pub const MAX_REQUEST_BODY: usize = 4 * 1024 * 1024;

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

/// One message Graph accepted.
#[derive(Clone, Debug)]
pub struct GraphMessage {
    /// The `{id}` of the URL.
    pub mailbox: String,
    /// The decoded MIME, exactly.
    pub mime: Vec<u8>,
    /// Who Graph delivers to: every address in the top-level To, Cc and Bcc headers, lower case.
    pub recipients: Vec<String>,
    pub received_at: Instant,
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
        render_entity(&self.mime, &mut out, 0);
        out
    }
}

/// One request, whatever its outcome.
#[derive(Clone, Debug)]
pub struct GraphRequest {
    pub at: Instant,
    pub status: u16,
    pub path: String,
    pub content_type: String,
}

#[derive(Default)]
struct GraphState {
    messages: Vec<GraphMessage>,
    requests: Vec<GraphRequest>,
    fail_next: std::collections::VecDeque<GraphFailure>,
    failure: Option<GraphFailure>,
    delay: Duration,
    active: usize,
    peak: usize,
    tokens_seen: Vec<String>,
}

struct Shared {
    mailbox: String,
    validator: ScopeValidator,
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
            state: Mutex::new(GraphState::default()),
            msg_count,
            shutdown,
        });
        let app = Router::new()
            .route("/v1.0/users/{mailbox}/sendMail", post(send_mail))
            .fallback(|| async { StatusCode::NOT_FOUND })
            // Our own limit answers with Graph's 413, so axum's must not answer first.
            .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
            .with_state(shared.clone());
        let listener =
            crate::tls_listener::TlsListener::spawn(listener, tls, shared.shutdown.subscribe());
        let stop = shared.clone();
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
    pub fn messages(&self) -> Vec<GraphMessage> {
        lock(&self.shared.state).messages.clone()
    }
    pub async fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<GraphMessage> {
        let mut rx = self.shared.msg_count.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|c| *c >= n)).await;
        self.messages()
    }
    pub fn requests(&self) -> Vec<GraphRequest> {
        lock(&self.shared.state).requests.clone()
    }
    /// Answer the next `count` requests with `failure` (after checking the token).
    pub fn fail_next(&self, failure: GraphFailure, count: usize) {
        let mut st = lock(&self.shared.state);
        for _ in 0..count {
            st.fail_next.push_back(failure.clone());
        }
    }
    /// Answer every request with `failure` (`None`: normal).
    pub fn set_failure(&self, failure: Option<GraphFailure>) {
        lock(&self.shared.state).failure = failure;
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

fn graph_error(status: u16, code: &str, message: &str, retry_after: Option<u64>) -> Response {
    let body = json!({
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": crate::utc_timestamp(std::time::SystemTime::now()),
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

struct Active(Arc<Shared>);

impl Drop for Active {
    fn drop(&mut self) {
        let mut st = lock(&self.0.state);
        st.active = st.active.saturating_sub(1);
    }
}

async fn send_mail(
    State(shared): State<Arc<Shared>>,
    Path(mailbox): Path<String>,
    headers: HeaderMap,
    body: Bytes,
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
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let response = handle(&shared, &mailbox, &headers, &content_type, &body);
    let stored = {
        let mut st = lock(&shared.state);
        st.requests.push(GraphRequest {
            at,
            status: response.status().as_u16(),
            path: format!("/v1.0/users/{mailbox}/sendMail"),
            content_type,
        });
        st.messages.len()
    };
    // Waiters are told only once the request is on record too.
    shared.msg_count.send_replace(stored);
    response
}

fn handle(
    shared: &Shared,
    mailbox: &str,
    headers: &HeaderMap,
    content_type: &str,
    body: &[u8],
) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !token.is_empty() {
        lock(&shared.state).tokens_seen.push(token.to_string());
    }
    match (shared.validator)(token) {
        // App-only tokens are issued for `.default`; delegated ones (a user signed in) for the
        // user's Mail.Send permission. Both have Graph as their audience.
        Ok(scope)
            if scope == GRAPH_SCOPE
                || scope
                    .split_whitespace()
                    .any(|s| s == "https://graph.microsoft.com/Mail.Send") => {}
        Ok(scope) => {
            return graph_error(
                401,
                "InvalidAuthenticationToken",
                &format!("Access token validation failure. Invalid audience (token for {scope})."),
                None,
            );
        }
        Err(why) => {
            return graph_error(
                401,
                "InvalidAuthenticationToken",
                &format!("Access token is empty or invalid ({why})."),
                None,
            );
        }
    }
    let scripted = {
        let mut st = lock(&shared.state);
        st.fail_next.pop_front().or_else(|| st.failure.clone())
    };
    if let Some(f) = scripted {
        return graph_error(f.status, &f.code, &f.message, f.retry_after);
    }
    if !mailbox.eq_ignore_ascii_case(&shared.mailbox) {
        return graph_error(
            404,
            "ErrorInvalidUser",
            &format!("The requested user '{mailbox}' is invalid."),
            None,
        );
    }
    if !content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .eq_ignore_ascii_case("text/plain")
    {
        return graph_error(
            415,
            "UnsupportedMediaType",
            "A MIME message must be sent as text/plain.",
            None,
        );
    }
    if body.len() > MAX_REQUEST_BODY {
        return graph_error(
            413,
            "ErrorRequestEntityTooLarge",
            "The request body is too large.",
            None,
        );
    }
    let Ok(mime) = base64::engine::general_purpose::STANDARD.decode(body) else {
        return graph_error(
            400,
            "ErrorMimeContentInvalidBase64String",
            "Invalid base64 string for MIME content.",
            None,
        );
    };
    let recipients = header_recipients(&mime);
    if recipients.is_empty() {
        return graph_error(
            400,
            "ErrorInvalidRecipients",
            "At least one recipient isn't valid., A message can't be sent because it contains no recipients.",
            None,
        );
    }
    lock(&shared.state).messages.push(GraphMessage {
        mailbox: mailbox.to_string(),
        mime,
        recipients,
        received_at: Instant::now(),
    });
    let mut r = StatusCode::ACCEPTED.into_response();
    if let Ok(v) = crate::uuid_v4().parse() {
        r.headers_mut().insert("request-id", v);
    }
    r
}

/// The top-level header block, unfolded, as (name, value) pairs.
fn headers_of(entity: &[u8]) -> (Vec<(String, String)>, usize) {
    let end = entity
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(entity.len(), |p| p + 4);
    let text = String::from_utf8_lossy(&entity[..end])
        .replace("\r\n ", " ")
        .replace("\r\n\t", " ");
    let fields = text
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (fields, end)
}

/// Addresses in To, Cc and Bcc: `<...>` where present, else bare words with `@`.
fn header_recipients(mime: &[u8]) -> Vec<String> {
    let (fields, _) = headers_of(mime);
    let mut out = Vec::new();
    for (name, value) in fields {
        if !matches!(name.as_str(), "to" | "cc" | "bcc") {
            continue;
        }
        let mut rest = value.as_str();
        // Quoted display names may hold commas and @: drop them first.
        let mut cleaned = String::new();
        let mut in_quote = false;
        for c in rest.chars() {
            match c {
                '"' => in_quote = !in_quote,
                _ if in_quote => {}
                _ => cleaned.push(c),
            }
        }
        rest = &cleaned;
        for item in rest.split([',', ';']) {
            let item = item.rsplit(':').next().unwrap_or(item);
            let addr = match (item.find('<'), item.find('>')) {
                (Some(l), Some(r)) if l < r => &item[l + 1..r],
                _ => item.split('(').next().unwrap_or(item),
            };
            let addr = addr.trim().to_ascii_lowercase();
            if addr.contains('@') && !out.contains(&addr) {
                out.push(addr);
            }
        }
    }
    out
}

fn render_entity(entity: &[u8], out: &mut Vec<String>, depth: usize) {
    if depth > 10 {
        return;
    }
    let (fields, body_start) = headers_of(entity);
    let get = |n: &str| {
        fields
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let ct = get("content-type");
    let body = &entity[body_start.min(entity.len())..];
    let lower = ct.to_ascii_lowercase();
    if lower.starts_with("multipart/") {
        let Some(b) = lower.find("boundary=").map(|i| {
            let v = &ct[i + 9..];
            v.trim_start_matches('"')
                .split(['"', ';'])
                .next()
                .unwrap_or("")
                .to_string()
        }) else {
            return;
        };
        let delim = format!("\r\n--{b}");
        let padded = [b"\r\n".as_slice(), body].concat();
        let mut parts: Vec<&[u8]> = Vec::new();
        let mut rest = &padded[..];
        while let Some(p) = find(rest, delim.as_bytes()) {
            parts.push(&rest[..p]);
            rest = &rest[p + delim.len()..];
            if rest.starts_with(b"--") {
                break;
            }
            let line_end = find(rest, b"\r\n").map_or(rest.len(), |e| e + 2);
            rest = &rest[line_end..];
        }
        for part in parts.into_iter().skip(1) {
            render_entity(part, out, depth + 1);
        }
        return;
    }
    if !(lower.is_empty() || lower.starts_with("text/")) {
        return;
    }
    let cte = get("content-transfer-encoding").to_ascii_lowercase();
    let bytes = match cte.as_str() {
        "quoted-printable" => strict_qp(body),
        "base64" => {
            let clean: Vec<u8> = body
                .iter()
                .copied()
                .filter(|c| !c.is_ascii_whitespace())
                .collect();
            base64::engine::general_purpose::STANDARD
                .decode(clean)
                .unwrap_or_default()
        }
        _ => body.to_vec(),
    };
    out.push(String::from_utf8_lossy(&bytes).into_owned());
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// `=CRLF` soft break, `=XX` byte, anything else literal.
fn strict_qp(qp: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(qp.len());
    let mut i = 0;
    while i < qp.len() {
        if qp[i] == b'=' {
            if qp[i + 1..].starts_with(b"\r\n") {
                i += 3;
                continue;
            }
            if i + 2 < qp.len()
                && qp[i + 1].is_ascii_hexdigit()
                && qp[i + 2].is_ascii_hexdigit()
                && let Ok(v) =
                    u8::from_str_radix(std::str::from_utf8(&qp[i + 1..i + 3]).unwrap_or("zz"), 16)
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(qp[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_come_from_the_headers() {
        let m = b"From: a@x.com\r\nTo: \"Doe, J\" <J@x.com>, b@y.com\r\nCc: Team: c@z.com;\r\nBcc: d@w.com\r\nSubject: s\r\n\r\nTo: not@header.com\r\n";
        assert_eq!(
            header_recipients(m),
            vec!["j@x.com", "b@y.com", "c@z.com", "d@w.com"]
        );
    }

    #[test]
    fn strict_qp_keeps_padded_soft_breaks_literally() {
        assert_eq!(strict_qp(b"a=\r\nb =C3=A9"), "ab é".as_bytes());
        assert_eq!(strict_qp(b"a=  \r\nb"), b"a=  \r\nb");
    }
}

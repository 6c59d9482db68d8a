//! Delivery through Microsoft Graph `sendMail` with the device's MIME message, for tenants
//! that turned SMTP AUTH off.
//!
//! `POST {graph_url}/v1.0/users/{mailbox}/sendMail`, `Content-Type: text/plain`, the body the
//! base64 of the whole message, a bearer token for `https://graph.microsoft.com/.default`
//! (application permission `Mail.Send`). `202 Accepted` means Exchange queued it.
//!
//! What Graph needs that SMTP does not (`mime.rs`): the recipients come from the headers, so
//! the headers are made to match the envelope; fragile quoted-printable parts are re-encoded.
//!
//! A message whose base64 does not fit one request (Graph takes about 4 MB) goes, with
//! [`LargeMessages::Upload`], through a draft: `graph_upload.rs` creates it from the message
//! without its large attachments, adds those back (upload sessions for the largest) and sends
//! it. With [`LargeMessages::Refuse`] it is refused with `552 5.3.4` before any request (and a
//! `FallbackRoute` around this route may take it).
//!
//! Memory: a message is read whole (at most `max_message_size`) and made ready for Graph in
//! that buffer (only its header block changes, unless a quoted-printable part is re-encoded);
//! one that fits a request has its base64 built too (about 7 MB for 3 MB of message); a larger
//! one is freed once its large parts are decoded (`GraphUpload::send_owned`).
//! At most 4 requests per app run at once (Graph's limit of concurrent requests; the semaphore
//! is shared by every account of one app registration).
//!
//! Deadlines: a request that carries message bytes (`sendMail`, a draft, an attachment, an
//! upload chunk) gets [`GraphRouteConfig::transfer_timeout`]; the others (opening an upload
//! session, `send`, deleting a draft) the HTTP client's own.
//!
//! HTTP outcomes become the SMTP replies the rest of the relay understands:
//! - 2xx → `250 2.0.0`;
//! - 401 → the token is dropped and the request sent once more with a new one; a second 401 is
//!   a temporary failure (`451 4.7.0`), since a token that Graph refuses is fixable;
//! - 400, 403, 404, 413 → permanent, with Graph's error code and message (`554 5.6.0`,
//!   `550 5.7.1`, `550 5.1.0`, `552 5.3.4`);
//! - 429, 503 → temporary `451 4.7.500` / `451 4.3.2` that begin with "Retry after N seconds"
//!   when Graph sent `Retry-After`; the refusal's cause carries that wait, and the scheduler
//!   pauses the whole account that long;
//! - other 5xx, 408 → temporary; network trouble → the usual connect/timeout errors.
//!
//! What each answer is about (throttling, our app's permissions, the mailbox, the message) is
//! decided from the HTTP status and Graph's `error.code` by `cause::graph`.

use crate::graph_upload::{GraphUpload, TransportKind};
use crate::mime::prepare_for_graph_owned;
use crate::smtp::token_error;
use crate::{DeliveryFuture, DeliveryReport, Message, Route, RouteKind, cause};
use base64::Engine;
use smtp2oauth_proto::{Cause, DeliveryError, Reply, Stage};
use smtp2oauth_tokens::{AccessToken, TokenSource};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

/// Graph's request-size limit we hold ourselves to (base64 body).
pub const GRAPH_MAX_REQUEST_BODY: u64 = 4 * 1024 * 1024;
/// Graph's limit of concurrent requests per app (Outlook resources).
pub const GRAPH_MAX_CONCURRENT: usize = 4;
/// Error bodies are read up to this many bytes (they are a few hundred).
pub(crate) const MAX_ERROR_BODY: usize = 64 * 1024;

/// What the route does with a message whose base64 does not fit one `sendMail` request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LargeMessages {
    /// Send it through a draft (`graph_upload.rs`): needs the permission `Mail.ReadWrite`.
    Upload,
    /// Refuse it with `552 5.3.4` before any request.
    Refuse,
}

/// What a Graph route needs to know.
#[derive(Clone)]
pub struct GraphRouteConfig {
    /// The account's name (for logs and errors).
    pub account: String,
    /// The mailbox that sends (`{id}` in the URL; the sender Exchange uses).
    pub mailbox: String,
    /// Base URL without trailing `/`, e.g. `https://graph.microsoft.com`.
    pub graph_url: String,
    /// The largest message (bytes as spooled) sent through Graph; larger ones are refused with
    /// `552 5.3.4` before any request.
    pub max_message_size: u64,
    /// What to do with a message too large for one `sendMail` request.
    pub large_messages: LargeMessages,
    /// The deadline of a request that carries message bytes; the others get the HTTP client's.
    pub transfer_timeout: Duration,
}

/// Delivery through Microsoft Graph `sendMail`.
pub struct GraphRoute {
    cfg: GraphRouteConfig,
    http: reqwest::Client,
    tokens: Arc<dyn TokenSource>,
    /// Shared by every account of the same app registration.
    slots: Arc<Semaphore>,
}

/// A fresh semaphore for one app's Graph requests.
pub fn app_slots() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(GRAPH_MAX_CONCURRENT))
}

/// The temporary failure for a throttled request. Its text starts with "Retry after N
/// seconds" when Graph said how long to wait, for the admin reading it.
pub(crate) fn throttled_reply(
    status: u16,
    retry_after: Option<Duration>,
    graph_error: &str,
) -> Reply {
    let wait = retry_after
        .map(|d| format!("Retry after {} seconds: ", d.as_secs().max(1)))
        .unwrap_or_default();
    let (code, what) = if status == 429 {
        ((4, 7, 500), "Microsoft Graph is throttling this mailbox")
    } else {
        ((4, 3, 2), "Microsoft Graph is unavailable")
    };
    Reply::with_status(
        451,
        code,
        format!("{wait}{what} (HTTP {status}{})", sep(graph_error)),
    )
}

pub(crate) fn sep(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!(" {s}")
    }
}

/// `Retry-After`: seconds, or an HTTP date (RFC 9110).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = parse_http_date(v)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT` (the only form senders may use).
fn parse_http_date(s: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let day: i64 = day.parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)? as i64
        + 1;
    let year: i64 = year.parse().ok()?;
    let hms: Vec<i64> = time.split(':').filter_map(|x| x.parse().ok()).collect();
    let [h, m, sec] = hms.as_slice() else {
        return None;
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + m * 60 + sec;
    (secs >= 0).then(|| SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64))
}

/// Graph's error JSON, `{"error":{"code":"...","message":"..."}}`, each field one line and
/// bounded (they go into replies and log lines).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct GraphError {
    /// `error.code` (empty when the body has none): what `cause::graph` reads.
    pub code: String,
    /// `error.message`, or the body's start when it is not Graph's JSON.
    pub message: String,
}

impl GraphError {
    /// `code: message` (or whichever is there), for replies and logs.
    pub fn text(&self) -> String {
        match (self.code.as_str(), self.message.as_str()) {
            ("", m) => m.to_string(),
            (c, "") => c.to_string(),
            (c, m) => format!("{c}: {m}"),
        }
    }
}

pub(crate) fn graph_error(body: &[u8]) -> GraphError {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let err = parsed.as_ref().and_then(|v| v.get("error"));
    let field = |name: &str| {
        err.and_then(|e| e.get(name))
            .and_then(|c| c.as_str())
            .map(one_line)
            .unwrap_or_default()
    };
    let (code, message) = (field("code"), field("message"));
    if code.is_empty() && message.is_empty() {
        let start = String::from_utf8_lossy(&body[..body.len().min(300)]);
        return GraphError {
            code,
            message: one_line(&start),
        };
    }
    GraphError { code, message }
}

/// One line (control characters become spaces), at most 400 characters, trimmed.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(400)
        .collect::<String>()
        .trim()
        .to_string()
}

/// A Graph answer that is not a success, as the refusal the route returns: the reply the rest
/// of the relay understands, and what it is about (`cause::graph`), with Graph's
/// `Retry-After` when it throttles.
pub fn refusal(status: u16, retry_after: Option<Duration>, body: &[u8]) -> DeliveryError {
    let err = graph_error(body);
    let cause = match cause::graph(status, &err.code) {
        Cause::Throttled { .. } => Cause::Throttled { retry_after },
        other => other,
    };
    DeliveryError::Rejected {
        stage: Stage::Http,
        reply: reply_for(status, retry_after, &err),
        cause,
    }
}

/// The reply for a Graph answer that is not a success.
pub(crate) fn reply_for(status: u16, retry_after: Option<Duration>, err: &GraphError) -> Reply {
    let refused = |code, status_code, what: &str| {
        Reply::with_status(
            code,
            status_code,
            format!("{what} (HTTP {status}{})", sep(&err.text())),
        )
    };
    if status == 401 {
        return refused(451, (4, 7, 0), "Microsoft Graph refused the access token");
    }
    if err.code == "ErrorMessageSizeExceeded" {
        return refused(
            552,
            (5, 3, 4),
            "Microsoft Graph refused the message as too large",
        );
    }
    match status {
        429 | 503 => throttled_reply(status, retry_after, &err.text()),
        400 => refused(554, (5, 6, 0), "Microsoft Graph refused the message"),
        403 => refused(
            550,
            (5, 7, 1),
            "Microsoft Graph refused to send as this mailbox",
        ),
        404 => refused(550, (5, 1, 0), "Microsoft Graph does not know this mailbox"),
        413 => refused(
            552,
            (5, 3, 4),
            "Microsoft Graph refused the message as too large",
        ),
        408 => refused(451, (4, 4, 2), "Microsoft Graph timed out"),
        500..=599 => refused(451, (4, 3, 0), "Microsoft Graph failed, try again later"),
        _ => refused(554, (5, 0, 0), "Microsoft Graph refused the request"),
    }
}

enum Sent {
    Accepted(Reply),
    /// A 401: the token may be stale.
    Unauthorized(DeliveryError),
    Refused(DeliveryError),
}

/// Whether a message of `n` bytes fits one `sendMail` request once base64-encoded.
fn fits_one_request(n: usize) -> bool {
    (n.div_ceil(3) * 4) as u64 <= GRAPH_MAX_REQUEST_BODY
}

impl GraphRoute {
    /// A route sharing `http`, the account's `tokens` and its app's request `slots`.
    pub fn new(
        cfg: GraphRouteConfig,
        http: reqwest::Client,
        tokens: Arc<dyn TokenSource>,
        slots: Arc<Semaphore>,
    ) -> Self {
        GraphRoute {
            cfg,
            http,
            tokens,
            slots,
        }
    }

    fn url(&self) -> String {
        format!(
            "{}/v1.0/users/{}/sendMail",
            self.cfg.graph_url,
            percent_encode_path(&self.cfg.mailbox)
        )
    }

    async fn token(&self) -> Result<AccessToken, DeliveryError> {
        self.tokens
            .token()
            .await
            .map_err(|e| token_error(&self.cfg.account, &e))
    }

    fn too_large(&self, size: u64) -> DeliveryError {
        DeliveryError::Rejected {
            stage: Stage::Http,
            reply: Reply::with_status(
                552,
                (5, 3, 4),
                format!(
                    "Message size {size} exceeds the Microsoft Graph route's limit of {} bytes",
                    self.cfg.max_message_size
                ),
            ),
            cause: Cause::TooLarge,
        }
    }

    /// A message under the route's limit that still does not fit one request, with
    /// [`LargeMessages::Refuse`].
    fn too_large_for_one_request(size: u64) -> DeliveryError {
        DeliveryError::Rejected {
            stage: Stage::Http,
            reply: Reply::with_status(
                552,
                (5, 3, 4),
                format!(
                    "Message size {size} does not fit one Microsoft Graph request (about 3 MB of message); graph_large_messages = \"upload\" sends larger mail through a draft"
                ),
            ),
            cause: Cause::TooLarge,
        }
    }

    async fn attempt(&self, msg: &Message) -> Result<DeliveryReport, DeliveryError> {
        let mime = self.prepare(msg).await?;
        if fits_one_request(mime.len()) {
            return self.send_mail(msg, &mime).await;
        }
        match self.cfg.large_messages {
            LargeMessages::Upload => self.upload(msg, mime).await,
            LargeMessages::Refuse => Err(Self::too_large_for_one_request(msg.size)),
        }
    }

    /// The spooled message with its recipient headers matching the envelope (Graph has no
    /// envelope) and fragile quoted-printable re-encoded; refused when over the route's limit.
    async fn prepare(&self, msg: &Message) -> Result<Vec<u8>, DeliveryError> {
        if msg.size > self.cfg.max_message_size {
            return Err(self.too_large(msg.size));
        }
        let raw = tokio::fs::read(&msg.data_path)
            .await
            .map_err(|e| DeliveryError::Local {
                detail: format!("cannot read {}: {e}", msg.data_path.display()),
            })?;
        if raw.len() as u64 > self.cfg.max_message_size {
            return Err(self.too_large(raw.len() as u64));
        }
        // Graph has no envelope: a recipient no header can carry (control characters, from an
        // older version's spool) would be left out while the message counts as delivered.
        // Refused as the SMTP routes refuse it, so the sender's notice says which and why.
        for r in &msg.recipients {
            crate::conversation::path(r, Stage::Rcpt)?;
        }
        let prepared = prepare_for_graph_owned(raw, &msg.recipients);
        if !prepared.added_bcc.is_empty() || !prepared.removed.is_empty() {
            info!(queue_id = %msg.id, account = %self.cfg.account, bcc_added = prepared.added_bcc.len(),
                header_recipients_removed = ?prepared.removed,
                "recipient headers adjusted to the envelope for Graph");
        }
        if prepared.reencoded_parts > 0 {
            info!(queue_id = %msg.id, parts = prepared.reencoded_parts,
                "quoted-printable parts re-encoded as base64 for Graph");
        }
        Ok(prepared.bytes)
    }

    /// One `sendMail` with the whole message.
    async fn send_mail(&self, msg: &Message, mime: &[u8]) -> Result<DeliveryReport, DeliveryError> {
        let body = bytes_body(base64::engine::general_purpose::STANDARD.encode(mime));
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| DeliveryError::Local {
                detail: "Graph request slots closed".into(),
            })?;
        let mut refreshed = false;
        loop {
            let token = self.token().await?;
            match self.post(&token, body.clone()).await? {
                Sent::Accepted(reply) => return Ok(delivered(msg, reply)),
                Sent::Unauthorized(e) => {
                    self.tokens.invalidate(&token);
                    if !refreshed {
                        info!(account = %self.cfg.account, reply = %e.reply(), "Graph refused the token; retrying once with a new one");
                        refreshed = true;
                        continue;
                    }
                    return Err(e);
                }
                Sent::Refused(e) => return Err(e),
            }
        }
    }

    /// The draft conversation for a message too large for one request; its failures become
    /// refusals here, each with its cause (see `graph_upload`).
    async fn upload(&self, msg: &Message, mime: Vec<u8>) -> Result<DeliveryReport, DeliveryError> {
        info!(queue_id = %msg.id, account = %self.cfg.account, size = mime.len(),
            "too large for one Graph request: sending through a draft");
        let sent = GraphUpload::new(
            &self.http,
            &self.cfg.graph_url,
            &self.cfg.mailbox,
            self.tokens.as_ref(),
        )
        .with_slots(&self.slots)
        .with_transfer_timeout(self.cfg.transfer_timeout)
        .send_owned(mime)
        .await;
        match sent {
            Ok(d) => Ok(delivered(msg, d.reply())),
            Err(failure) => {
                let e = failure.delivery_error(&self.cfg, msg.size);
                warn!(queue_id = %msg.id, account = %self.cfg.account, failure = %failure,
                    reply = %e.reply(), "sending through a Graph draft failed");
                Err(e)
            }
        }
    }

    async fn post(&self, token: &AccessToken, body: bytes::Bytes) -> Result<Sent, DeliveryError> {
        let url = self.url();
        let mut auth =
            reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.secret())).map_err(
                |_| DeliveryError::Token {
                    account: self.cfg.account.clone(),
                    reason: "the access token is not a valid header value".into(),
                    cause: Cause::Transient,
                },
            )?;
        auth.set_sensitive(true);
        debug!(account = %self.cfg.account, url = %url, bytes = body.len(), "POST sendMail");
        let response = self
            .http
            .post(&url)
            .timeout(self.cfg.transfer_timeout)
            .header(reqwest::header::AUTHORIZATION, auth)
            .header(reqwest::header::CONTENT_TYPE, "text/plain")
            .body(body)
            .send()
            .await
            .map_err(|e| transport_error(&url, e))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let request_id = header_text(&headers, "request-id");
        let retry_after = retry_after(&headers);
        let body = read_bounded(response, MAX_ERROR_BODY)
            .await
            .unwrap_or_default();
        if (200..300).contains(&status) {
            return Ok(Sent::Accepted(accepted_reply(status, &request_id, "")));
        }
        let refused = refusal(status, retry_after, &body);
        if status == 401 {
            return Ok(Sent::Unauthorized(refused));
        }
        if !refused.is_permanent() {
            warn!(account = %self.cfg.account, status, request_id = %request_id, reply = %refused.reply(), "Graph answered with a temporary failure");
        }
        Ok(Sent::Refused(refused))
    }
}

/// Every recipient of the attempt accepted.
fn delivered(msg: &Message, reply: Reply) -> DeliveryReport {
    DeliveryReport {
        reply,
        accepted: msg.recipients.clone(),
        rejected: Vec::new(),
    }
}

/// `250 2.0.0 Accepted by Microsoft Graph (HTTP 202, request-id ...{more})`.
pub(crate) fn accepted_reply(status: u16, request_id: &str, more: &str) -> Reply {
    let id = if request_id.is_empty() {
        String::new()
    } else {
        format!(", request-id {request_id}")
    };
    Reply::with_status(
        250,
        (2, 0, 0),
        format!("Accepted by Microsoft Graph (HTTP {status}{id}{more})"),
    )
}

fn bytes_body(s: String) -> bytes::Bytes {
    bytes::Bytes::from(s.into_bytes())
}

/// A header's value as text (empty when missing or not text).
pub(crate) fn header_text(headers: &reqwest::header::HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// `Retry-After` of an answer, in either form.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    parse_retry_after(&header_text(headers, "retry-after"), SystemTime::now())
}

/// The body of an answer, at most `limit` bytes of it.
pub(crate) async fn read_bounded(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= limit {
            break;
        }
    }
    Ok(body)
}

/// How a request failed in the network, and the transport's words (with every source).
/// reqwest's messages name the URL, never headers: no token can leak through them (an upload
/// URL, which is a credential, is taken out by the caller with `without_url`).
pub(crate) fn transport_kind(e: &reqwest::Error) -> (TransportKind, String) {
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        detail.push_str(&format!(": {s}"));
        source = s.source();
    }
    let kind = if e.is_timeout() {
        TransportKind::Timeout
    } else if e.is_connect() {
        let lower = detail.to_ascii_lowercase();
        if lower.contains("certificate") || lower.contains("tls") {
            TransportKind::Tls
        } else {
            TransportKind::Connect
        }
    } else {
        TransportKind::Lost
    };
    (kind, detail)
}

/// A network failure as the error routes return; `url` names the host tried.
pub(crate) fn transport_delivery_error(
    url: &str,
    kind: TransportKind,
    detail: String,
) -> DeliveryError {
    let target = url.split('/').take(3).collect::<Vec<_>>().join("/");
    match kind {
        TransportKind::Timeout => DeliveryError::Timeout { stage: Stage::Http },
        TransportKind::Tls => DeliveryError::Tls { detail },
        TransportKind::Connect => DeliveryError::Connect { target, detail },
        TransportKind::Lost => DeliveryError::ConnectionLost {
            stage: Stage::Http,
            detail,
        },
    }
}

fn transport_error(url: &str, e: reqwest::Error) -> DeliveryError {
    let (kind, detail) = transport_kind(&e);
    transport_delivery_error(url, kind, detail)
}

/// Encodes a mailbox or an id for a URL path segment (`@`, `.`, `=` and the other
/// sub-delimiters stay, as Graph's ids use them; `/`, `?`, `#`, `%`, spaces and non-ASCII are
/// escaped).
pub(crate) fn percent_encode_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"@.-_~+!$&'()*,;=".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Route for GraphRoute {
    fn kind(&self) -> RouteKind {
        RouteKind::Graph
    }

    fn target(&self) -> String {
        format!(
            "{}/v1.0/users/{}/sendMail",
            self.cfg.graph_url, self.cfg.mailbox
        )
    }

    fn deliver<'a>(&'a self, message: &'a Message) -> DeliveryFuture<'a> {
        Box::pin(self.attempt(message))
    }

    fn wait_for_token(&self) -> crate::TokenWait<'_> {
        crate::token_wait(&self.cfg.account, self.tokens.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply_for_status(status: u16, retry_after: Option<Duration>, body: &[u8]) -> Reply {
        refusal(status, retry_after, body).reply()
    }

    #[test]
    fn statuses_map_to_replies() {
        let body = br#"{"error":{"code":"ErrorAccessDenied","message":"Access is denied. Check credentials and try again."}}"#;
        for (status, retry, want) in [
            (
                403,
                None,
                "550 5.7.1 Microsoft Graph refused to send as this mailbox (HTTP 403 ErrorAccessDenied: Access is denied. Check credentials and try again.)",
            ),
            (
                429,
                Some(7),
                "451 4.7.500 Retry after 7 seconds: Microsoft Graph is throttling this mailbox (HTTP 429 ErrorAccessDenied: Access is denied. Check credentials and try again.)",
            ),
            (
                503,
                None,
                "451 4.3.2 Microsoft Graph is unavailable (HTTP 503 ErrorAccessDenied: Access is denied. Check credentials and try again.)",
            ),
        ] {
            let r = reply_for_status(status, retry.map(Duration::from_secs), body);
            assert_eq!(r.to_string(), want);
        }
        for (status, body, code, permanent) in [
            (400, &br#"{"error":{"code":"ErrorMimeContentInvalidBase64String","message":"x"}}"#[..], 554, true),
            (400, br#"{"error":{"code":"ErrorMessageSizeExceeded","message":"too big"}}"#, 552, true),
            (404, br#"{"error":{"code":"MailboxNotEnabledForRESTAPI","message":"REST API is not yet supported for this mailbox."}}"#, 550, true),
            (413, b"", 552, true),
            (500, b"<html>oops</html>", 451, false),
            (502, b"", 451, false),
            (408, b"", 451, false),
        ] {
            let r = reply_for_status(status, None, body);
            assert_eq!((r.code(), r.is_permanent()), (code, permanent), "{status}: {r}");
        }
        let r = reply_for_status(
            401,
            None,
            br#"{"error":{"code":"InvalidAuthenticationToken","message":"x"}}"#,
        );
        assert_eq!(
            r.to_string(),
            "451 4.7.0 Microsoft Graph refused the access token (HTTP 401 InvalidAuthenticationToken: x)"
        );
    }

    /// Graph's Retry-After reaches the account's pause through the refusal's cause, never
    /// through the words of the reply.
    #[test]
    fn throttling_answers_carry_retry_after_in_their_cause() {
        let body = br#"{"error":{"code":"ApplicationThrottled","message":"Application is over its MailboxConcurrency limit; retry in 10 minutes."}}"#;
        for status in [429, 503] {
            let e = refusal(status, Some(Duration::from_secs(7)), body);
            assert_eq!(
                e.cause(),
                Cause::Throttled {
                    retry_after: Some(Duration::from_secs(7))
                },
                "{e}"
            );
            assert!(!e.is_permanent());
            // Without Retry-After: still throttling, with the account's own pause.
            let e = refusal(status, None, b"");
            assert_eq!(e.cause(), Cause::Throttled { retry_after: None }, "{e}");
        }
        let e = refusal(
            403,
            None,
            br#"{"error":{"code":"ErrorAccessDenied","message":"x"}}"#,
        );
        assert_eq!(
            e.cause(),
            Cause::Account(smtp2oauth_proto::AccountIssue::Permission)
        );
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn mailbox_is_escaped_in_the_url_path() {
        assert_eq!(
            percent_encode_path("scanner@contoso.com"),
            "scanner@contoso.com"
        );
        assert_eq!(percent_encode_path("a/b?c#d e@x"), "a%2Fb%3Fc%23d%20e@x");
    }
}

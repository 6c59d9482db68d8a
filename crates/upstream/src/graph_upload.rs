//! Sending a message through Microsoft Graph when it does not fit one `sendMail` request.
//!
//! Graph takes at most about 4 MB per request. A larger message goes as a conversation:
//!
//! 1. its large attachments are taken out (`mime_split`), and what remains is posted as MIME
//!    (base64, `text/plain`) to `POST /v1.0/users/{mailbox}/messages`, which creates a draft;
//! 2. each large part is added back as a file attachment: in one `POST .../attachments`
//!    (`#microsoft.graph.fileAttachment` with `contentBytes`) when that request stays under
//!    4 MiB, otherwise through `POST .../attachments/createUploadSession` and `PUT`s of the
//!    bytes to the returned pre-authenticated `uploadUrl` (without an `Authorization` header,
//!    which Graph refuses there), in chunks of 12 × 320 KiB (the last one shorter), following
//!    `nextExpectedRanges`, until the last answers `201`;
//! 3. `POST .../messages/{id}/send` (`202`).
//!
//! If a step fails, the draft is deleted before the failure is returned, so a retry starts
//! clean and nothing is sent twice. One exception is decided, not guessed: when the answer to
//! `send` is lost (a timeout, a dropped connection, a 5xx), the delete tells what happened: a
//! draft still there was not sent (deleted, the failure returned); a draft already gone was
//! sent (success).
//!
//! Failures are data ([`UploadError`]: the step, Graph's status, error code, `Retry-After` and
//! what the answer is about, decided where it is parsed by `cause::graph_upload`; or what went
//! wrong locally). [`UploadFailure::delivery_error`] turns one into the refusal the route
//! returns. A `401` gets one new token and the same request again, within the conversation;
//! everything else ends it.
//!
//! Deadlines: requests that carry message bytes (the draft, attachments, upload chunks) get
//! the transfer timeout given with [`GraphUpload::with_transfer_timeout`]; the others keep the
//! HTTP client's own.
//!
//! Memory: the large parts are decoded once (about ¾ of their encoded size) and sent from that
//! buffer without copies; each request body is at most 4 MiB more. [`GraphUpload::send_owned`]
//! frees the message itself once it is planned.
//! The pre-authenticated upload URL is a credential: it is never logged, and transport errors
//! on it are reported without the URL.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, CONTENT_RANGE, CONTENT_TYPE, HeaderMap, HeaderValue};
use smtp2oauth_proto::{AccountIssue, Cause, DeliveryError, Reply, Stage};
use smtp2oauth_tokens::{TokenError, TokenSource};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::cause;
use crate::graph::{
    GRAPH_MAX_REQUEST_BODY, GraphError, GraphRouteConfig, MAX_ERROR_BODY, accepted_reply,
    graph_error, header_text, percent_encode_path, read_bounded, reply_for, retry_after, sep,
    transport_delivery_error, transport_kind,
};
use crate::mime_split::{DEFAULT_THRESHOLD, LargePart, split_large_parts};

/// The largest request body we send Graph (its limit is "4 MB").
const MAX_REQUEST_BODY: usize = GRAPH_MAX_REQUEST_BODY as usize;
/// Upload chunks are a multiple of this, except the last.
pub const CHUNK_GRANULE: usize = 320 * 1024;
/// The chunk we send: the largest multiple of 320 KiB within 4 MiB (3.75 MiB).
pub const CHUNK_SIZE: usize = 12 * CHUNK_GRANULE;
/// Requests with bodies larger than this carry message bytes: they get the transfer timeout.
const TRANSFER_BODY: usize = 64 * 1024;
/// Successful answers (a draft's JSON repeats its body) are read up to this many bytes.
const MAX_ANSWER_BODY: usize = 16 * 1024 * 1024;
/// The longest a failed conversation waits for Graph to allow the delete of its draft.
const CLEANUP_WAIT_CAP: Duration = Duration::from_secs(10);
/// Deletes tried before a draft is reported as left behind.
const CLEANUP_ATTEMPTS: usize = 3;

/// A step of the conversation (for errors and logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// `POST /users/{mailbox}/messages` with the MIME.
    CreateDraft,
    /// `POST .../attachments` with the bytes inline.
    AddAttachment,
    /// `POST .../attachments/createUploadSession`.
    CreateUploadSession,
    /// A `PUT` of one chunk to the upload URL.
    UploadChunk,
    /// `POST .../send`.
    Send,
    /// `DELETE .../messages/{id}`.
    DeleteDraft,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::CreateDraft => "creating the draft",
            Step::AddAttachment => "adding an attachment",
            Step::CreateUploadSession => "opening an upload session",
            Step::UploadChunk => "uploading an attachment",
            Step::Send => "sending the draft",
            Step::DeleteDraft => "deleting the draft",
        })
    }
}

/// An answer from Graph that was not a success.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GraphAnswer {
    /// The HTTP status.
    pub status: u16,
    /// Graph's `error.code`, e.g. `ErrorAccessDenied` (empty when the body had none).
    pub code: String,
    /// Graph's `error.message`, one line, bounded.
    pub message: String,
    /// `Retry-After`, when Graph gave one.
    pub retry_after: Option<Duration>,
    /// Graph's `request-id` header, for Microsoft support.
    pub request_id: String,
    /// What the answer is about (`cause::graph_upload`), `Retry-After` included.
    pub cause: Cause,
}

/// How the network failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportKind {
    /// No connection (the request was never sent).
    Connect,
    /// The TLS handshake failed (never sent).
    Tls,
    /// No answer in time (the request may have been carried out).
    Timeout,
    /// The connection broke during the exchange (may have been carried out).
    Lost,
}

/// Why a conversation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UploadError {
    /// Graph answered with an error.
    #[error("{step}: Microsoft Graph answered HTTP {}{}", answer.status, describe(answer))]
    Refused {
        /// Where.
        step: Step,
        /// What Graph said.
        answer: GraphAnswer,
    },
    /// No access token could be had.
    #[error("{step}: no access token for Microsoft Graph: {error}")]
    Token {
        /// Where.
        step: Step,
        /// Why.
        error: TokenError,
    },
    /// The network failed.
    #[error("{step}: {}: {detail}", transport_words(*kind))]
    Transport {
        /// Where.
        step: Step,
        /// How.
        kind: TransportKind,
        /// The transport's words.
        detail: String,
    },
    /// Graph's answer did not have the shape documented for it.
    #[error("{step}: Microsoft Graph's answer cannot be followed: {detail}")]
    Unexpected {
        /// Where.
        step: Step,
        /// What was wrong with it.
        detail: String,
    },
    /// Even with every attachment taken out, what must go in the draft is over one request.
    #[error(
        "the message's headers and text alone take {draft_bytes} bytes, more than Microsoft Graph accepts in one request"
    )]
    TooLarge {
        /// The size of what must go in the draft.
        draft_bytes: usize,
    },
}

fn describe(a: &GraphAnswer) -> String {
    match (a.code.as_str(), a.message.as_str()) {
        ("", "") => String::new(),
        (c, "") => format!(" {c}"),
        ("", m) => format!(": {m}"),
        (c, m) => format!(" {c}: {m}"),
    }
}

fn transport_words(kind: TransportKind) -> &'static str {
    match kind {
        TransportKind::Connect => "cannot connect to Microsoft Graph",
        TransportKind::Tls => "TLS with Microsoft Graph failed",
        TransportKind::Timeout => "Microsoft Graph did not answer in time",
        TransportKind::Lost => "the connection to Microsoft Graph broke",
    }
}

impl UploadError {
    /// The step that failed (None when nothing was sent).
    pub fn step(&self) -> Option<Step> {
        match self {
            UploadError::Refused { step, .. }
            | UploadError::Token { step, .. }
            | UploadError::Transport { step, .. }
            | UploadError::Unexpected { step, .. } => Some(*step),
            UploadError::TooLarge { .. } => None,
        }
    }
    /// Graph's answer, when it gave one.
    pub fn answer(&self) -> Option<&GraphAnswer> {
        match self {
            UploadError::Refused { answer, .. } => Some(answer),
            _ => None,
        }
    }
    /// Graph's HTTP status, when it answered.
    pub fn status(&self) -> Option<u16> {
        self.answer().map(|a| a.status)
    }
    /// Graph's `Retry-After`, when it gave one.
    pub fn retry_after(&self) -> Option<Duration> {
        self.answer().and_then(|a| a.retry_after)
    }
    /// 429 or 503: Graph asks for a pause (of [`UploadError::retry_after`] when it said).
    pub fn is_throttled(&self) -> bool {
        matches!(self.status(), Some(429 | 503))
    }
    /// What the failure is about: the answer's cause; the network's trouble and answers we
    /// cannot follow may pass by themselves; a message whose text alone is over a request is
    /// too large.
    pub fn cause(&self) -> Cause {
        match self {
            UploadError::Refused { answer, .. } => answer.cause,
            UploadError::Token { .. }
            | UploadError::Transport { .. }
            | UploadError::Unexpected { .. } => Cause::Transient,
            UploadError::TooLarge { .. } => Cause::TooLarge,
        }
    }
    /// 401 on a Graph request even with a new token: the token is not good for this mailbox.
    /// (A 401 on an upload URL is that URL's own credential expiring: a new conversation
    /// gets a new one.)
    pub fn is_token_refused(&self) -> bool {
        self.status() == Some(401) && self.step() != Some(Step::UploadChunk)
    }
    /// 403 `ErrorAccessDenied` while writing the draft: the app lacks `Mail.ReadWrite`, or an
    /// application access policy or RBAC scope leaves the mailbox out.
    pub fn is_drafts_denied(&self) -> bool {
        let draft_write = matches!(
            self.step(),
            Some(Step::CreateDraft | Step::AddAttachment | Step::CreateUploadSession)
        );
        draft_write
            && self
                .answer()
                .is_some_and(|a| a.status == 403 && a.code == "ErrorAccessDenied")
    }
    /// 413 or `ErrorMessageSizeExceeded`: larger than the mailbox accepts (permanent).
    pub fn is_too_large(&self) -> bool {
        matches!(self, UploadError::TooLarge { .. })
            || self
                .answer()
                .is_some_and(|a| a.status == 413 || a.code == "ErrorMessageSizeExceeded")
    }
    /// The request may have been carried out although no success came back.
    fn outcome_unknown(&self) -> bool {
        match self {
            UploadError::Transport { kind, .. } => {
                matches!(kind, TransportKind::Timeout | TransportKind::Lost)
            }
            UploadError::Refused { answer, .. } => matches!(answer.status, 408 | 500..=599),
            _ => false,
        }
    }
    /// Worth one more try after a pause (for the clean-up delete).
    fn transient(&self) -> bool {
        self.is_throttled() || self.outcome_unknown()
    }
}

/// What became of the draft when a conversation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DraftCleanup {
    /// No draft was created.
    NotCreated,
    /// The request to create one failed without an answer: one may exist, with an id we were
    /// never told.
    Unknown,
    /// The draft was deleted (or was already gone).
    Deleted,
    /// The draft could not be deleted: it stays in the mailbox's Drafts folder.
    Left {
        /// The draft's id.
        id: String,
        /// Why the delete failed.
        reason: String,
    },
}

/// A failed conversation: why, and what became of its draft.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{error}{}", cleanup_words(draft))]
pub struct UploadFailure {
    /// Why it failed.
    pub error: UploadError,
    /// What became of the draft.
    pub draft: DraftCleanup,
}

fn cleanup_words(d: &DraftCleanup) -> String {
    match d {
        DraftCleanup::Left { id, reason } => {
            format!(" (the draft {id} could not be deleted: {reason})")
        }
        DraftCleanup::Unknown => " (a draft may have been created)".into(),
        _ => String::new(),
    }
}

impl UploadFailure {
    /// The refusal `route` returns: the reply a waiting device gets and the log shows (with
    /// Graph's words and the step), and what it is about. `size` is the message's, for a
    /// refusal as too large.
    pub fn delivery_error(&self, route: &GraphRouteConfig, size: u64) -> DeliveryError {
        let (account, mailbox) = (route.account.as_str(), route.mailbox.as_str());
        let left = match &self.draft {
            DraftCleanup::Left { .. } => "; the draft could not be deleted and stays in Drafts",
            DraftCleanup::Unknown => "; a draft may have been left in Drafts",
            _ => "",
        };
        match &self.error {
            UploadError::Refused { step, answer } => DeliveryError::Rejected {
                stage: Stage::Http,
                reply: refused_reply(*step, answer, mailbox, size, left),
                cause: answer.cause,
            },
            UploadError::Token { error, .. } => crate::smtp::token_error(account, error),
            // Named by Graph's host: the upload URL is a credential.
            UploadError::Transport { kind, detail, .. } => {
                transport_delivery_error(&route.graph_url, *kind, format!("{detail}{left}"))
            }
            UploadError::Unexpected { step, detail } => DeliveryError::Protocol {
                stage: Stage::Http,
                detail: format!(
                    "{step}: Microsoft Graph's answer cannot be followed: {detail}{left}"
                ),
            },
            UploadError::TooLarge { draft_bytes } => DeliveryError::Rejected {
                stage: Stage::Http,
                reply: Reply::with_status(
                    552,
                    (5, 3, 4),
                    format!(
                        "The message's headers and text alone take {draft_bytes} bytes, more than one Microsoft Graph request carries (about 3 MB)"
                    ),
                ),
                cause: Cause::TooLarge,
            },
        }
    }
}

/// The reply for an answer in the conversation. It follows the answer's cause: where a step
/// changes what an answer means (a lost draft, an expired upload URL, drafts not allowed, the
/// mailbox's size limit) the words say so; otherwise they are `sendMail`'s, with the step.
fn refused_reply(step: Step, a: &GraphAnswer, mailbox: &str, size: u64, left: &str) -> Reply {
    let err = GraphError {
        code: a.code.clone(),
        message: a.message.clone(),
    };
    let http = format!("(HTTP {}{}){left}", a.status, sep(&err.text()));
    let draft_write = matches!(
        step,
        Step::CreateDraft | Step::AddAttachment | Step::CreateUploadSession
    );
    match a.cause {
        Cause::TooLarge => Reply::with_status(
            552,
            (5, 3, 4),
            format!(
                "The message ({size} bytes) is larger than {mailbox} may send: the mailbox's limit (MaxSendSize; Exchange Online's default is 35 MB, at most 150 MB) {http}"
            ),
        ),
        Cause::Account(AccountIssue::Permission) if draft_write => Reply::with_status(
            550,
            (5, 7, 1),
            format!(
                "Microsoft Graph refused to write a draft in {mailbox}: messages too large for one request go through a draft, which needs the application permission Mail.ReadWrite {http}"
            ),
        ),
        Cause::Transient if step == Step::UploadChunk && matches!(a.status, 401 | 403) => {
            Reply::with_status(
                451,
                (4, 4, 0),
                format!("The upload session's URL expired while uploading an attachment {http}"),
            )
        }
        Cause::Transient if a.status == 404 => Reply::with_status(
            451,
            (4, 3, 0),
            format!("The draft disappeared from {mailbox} while {step} {http}"),
        ),
        _ => {
            let r = reply_for(a.status, a.retry_after, &err);
            Reply::new(
                r.code(),
                r.status(),
                format!("{} while {step}{left}", r.text()),
            )
        }
    }
}

impl Delivered {
    /// The reply recorded for the delivery: Graph's answer to `send`, and how the message went.
    pub fn reply(&self) -> Reply {
        let how = format!(
            "; sent through a draft, {} attachment(s) added, {} of them by upload session",
            self.posted + self.uploaded,
            self.uploaded
        );
        if self.confirmed_by_absence {
            let more =
                format!("{how}; the answer to send was lost, the draft's absence confirms it");
            return accepted_reply(202, "", &more);
        }
        accepted_reply(202, &self.request_id, &how)
    }
}

/// A message Graph accepted for sending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    /// The draft that was sent.
    pub draft_id: String,
    /// Graph's `request-id` of the send (empty when it was confirmed by the draft's absence).
    pub request_id: String,
    /// Attachments added in one request, and through upload sessions.
    pub posted: usize,
    /// Attachments added through upload sessions.
    pub uploaded: usize,
    /// Requests made, `PUT`s included.
    pub requests: usize,
    /// The answer to `send` was lost, and the draft's absence showed it had been sent.
    pub confirmed_by_absence: bool,
}

/// How a large part goes back into the draft.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carry {
    /// One `POST .../attachments` (the request stays under 4 MiB).
    Post,
    /// An upload session and chunked `PUT`s.
    UploadSession,
}

/// What the conversation will send: the draft's MIME and each large part with its way in.
#[derive(Debug)]
pub struct Plan<'m> {
    /// The MIME that creates the draft.
    pub draft: Cow<'m, [u8]>,
    /// The parts taken out, each with its way back in.
    pub parts: Vec<(LargePart, Carry)>,
}

impl Plan<'_> {
    /// The plan without a borrow of the message (the draft copied if it was borrowed: only
    /// when nothing was taken out).
    pub fn into_owned(self) -> Plan<'static> {
        Plan {
            draft: Cow::Owned(self.draft.into_owned()),
            parts: self.parts,
        }
    }
}

/// Splits `mime` so that the draft fits one request: at `threshold` first, then lower ones
/// (down to taking every attachment out) while the draft is still too large.
pub fn plan(mime: &[u8], threshold: usize) -> Result<Plan<'_>, UploadError> {
    let mut t = threshold;
    loop {
        let split = split_large_parts(mime, t);
        if base64_len(split.remaining.len()) <= MAX_REQUEST_BODY {
            let parts = split
                .parts
                .into_iter()
                .map(|p| {
                    let carry = carry_for(&p);
                    (p, carry)
                })
                .collect();
            return Ok(Plan {
                draft: split.remaining,
                parts,
            });
        }
        if t == 0 {
            return Err(UploadError::TooLarge {
                draft_bytes: split.remaining.len(),
            });
        }
        t = if t > 64 * 1024 { t / 2 } else { 0 };
    }
}

fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// One `POST` when its JSON body stays within the request limit, else an upload session
/// (Graph's minimum for those, 3 MB, is below what cannot be posted).
pub fn carry_for(part: &LargePart) -> Carry {
    if attachment_json_len(part) <= MAX_REQUEST_BODY {
        Carry::Post
    } else {
        Carry::UploadSession
    }
}

/// The fields of a part as Graph names them; `isInline` only for parts a body refers to by
/// Content-ID (an `inline` PDF without one would be hidden by some mail readers).
fn attachment_fields(part: &LargePart) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    m.insert("name".into(), part.name.clone().into());
    m.insert("contentType".into(), part.content_type.clone().into());
    let inline = part.inline && part.content_id.is_some();
    m.insert("isInline".into(), inline.into());
    if let Some(cid) = &part.content_id {
        m.insert("contentId".into(), cid.clone().into());
    }
    m
}

fn file_attachment_json(part: &LargePart, content: String) -> serde_json::Value {
    let mut m = attachment_fields(part);
    m.insert(
        "@odata.type".into(),
        "#microsoft.graph.fileAttachment".into(),
    );
    m.insert("contentBytes".into(), content.into());
    serde_json::Value::Object(m)
}

fn attachment_json_len(part: &LargePart) -> usize {
    let empty = file_attachment_json(part, String::new()).to_string().len();
    empty + base64_len(part.bytes.len())
}

/// One large message through Graph's draft conversation (see the module docs).
pub struct GraphUpload<'a> {
    http: &'a reqwest::Client,
    graph_url: &'a str,
    mailbox: &'a str,
    tokens: &'a dyn TokenSource,
    slots: Option<&'a Semaphore>,
    threshold: usize,
    transfer_timeout: Option<Duration>,
}

impl<'a> GraphUpload<'a> {
    /// `graph_url` without a trailing `/`, e.g. `https://graph.microsoft.com`; `tokens` gives
    /// bearer tokens for `https://graph.microsoft.com/.default`.
    pub fn new(
        http: &'a reqwest::Client,
        graph_url: &'a str,
        mailbox: &'a str,
        tokens: &'a dyn TokenSource,
    ) -> Self {
        GraphUpload {
            http,
            graph_url,
            mailbox,
            tokens,
            slots: None,
            threshold: DEFAULT_THRESHOLD,
            transfer_timeout: None,
        }
    }

    /// The deadline of each request that carries message bytes (a chunk of up to 3.75 MiB
    /// over a slow office uplink takes longer than a short request should).
    pub fn with_transfer_timeout(mut self, timeout: Duration) -> Self {
        self.transfer_timeout = Some(timeout);
        self
    }

    /// Take one of these permits for each request (Graph's concurrency limit per app).
    pub fn with_slots(mut self, slots: &'a Semaphore) -> Self {
        self.slots = Some(slots);
        self
    }

    /// Attachments over this many decoded bytes leave the draft (default 1 MiB).
    pub fn with_threshold(mut self, threshold: usize) -> Self {
        self.threshold = threshold;
        self
    }

    /// Sends `mime` (recipient headers already matching the envelope) through a draft.
    pub async fn send(&self, mime: &[u8]) -> Result<Delivered, UploadFailure> {
        let plan = plan(mime, self.threshold).map_err(not_planned)?;
        self.carry_out(plan).await
    }

    /// [`GraphUpload::send`], taking the message: it is freed once planned, so only the
    /// draft and the large parts' decoded bytes stay in memory while they upload.
    pub async fn send_owned(&self, mime: Vec<u8>) -> Result<Delivered, UploadFailure> {
        let plan = plan(&mime, self.threshold)
            .map(Plan::into_owned)
            .map_err(not_planned)?;
        drop(mime);
        self.carry_out(plan).await
    }

    async fn carry_out(&self, plan: Plan<'_>) -> Result<Delivered, UploadFailure> {
        let mut talk = Conversation {
            up: self,
            refreshed: false,
            requests: 0,
        };
        let id = match talk.create_draft(&plan.draft).await {
            Ok(id) => id,
            Err(error) => {
                let draft = if error.outcome_unknown() {
                    DraftCleanup::Unknown
                } else {
                    DraftCleanup::NotCreated
                };
                return Err(UploadFailure { error, draft });
            }
        };
        let Plan { draft, parts } = plan;
        drop(draft);
        talk.complete(id, parts).await
    }
}

fn not_planned(error: UploadError) -> UploadFailure {
    UploadFailure {
        error,
        draft: DraftCleanup::NotCreated,
    }
}

/// The state of one conversation: whether the token was already renewed once, and how many
/// requests it took.
struct Conversation<'c, 'a> {
    up: &'c GraphUpload<'a>,
    refreshed: bool,
    requests: usize,
}

/// A successful answer.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Conversation<'_, '_> {
    fn messages_url(&self) -> String {
        format!(
            "{}/v1.0/users/{}/messages",
            self.up.graph_url,
            percent_encode_path(self.up.mailbox)
        )
    }

    fn message_url(&self, id: &str, tail: &str) -> String {
        format!("{}/{}{tail}", self.messages_url(), percent_encode_path(id))
    }

    async fn create_draft(&mut self, mime: &[u8]) -> Result<String, UploadError> {
        let body = base64::engine::general_purpose::STANDARD.encode(mime);
        let url = self.messages_url();
        let a = self
            .graph(
                Step::CreateDraft,
                reqwest::Method::POST,
                &url,
                "text/plain",
                body.into(),
            )
            .await?;
        let id = json_field(&a.body, "id").ok_or_else(|| UploadError::Unexpected {
            step: Step::CreateDraft,
            detail: "the created draft has no id".into(),
        })?;
        debug!(mailbox = %self.up.mailbox, draft = %id, bytes = mime.len(), "Graph draft created");
        Ok(id)
    }

    /// Attachments, then send; on failure the draft is deleted first.
    async fn complete(
        mut self,
        id: String,
        parts: Vec<(LargePart, Carry)>,
    ) -> Result<Delivered, UploadFailure> {
        let (mut posted, mut uploaded) = (0, 0);
        for (part, carry) in parts {
            let added = match carry {
                Carry::Post => self.post_attachment(&id, part).await,
                Carry::UploadSession => self.upload_attachment(&id, part).await,
            };
            if let Err(error) = added {
                return Err(self.abandon(id, error).await);
            }
            match carry {
                Carry::Post => posted += 1,
                Carry::UploadSession => uploaded += 1,
            }
        }
        let (request_id, confirmed_by_absence) = self.send_draft(&id).await?;
        info!(mailbox = %self.up.mailbox, draft = %id, posted, uploaded, requests = self.requests,
            "Graph sent the draft");
        Ok(Delivered {
            draft_id: id,
            request_id,
            posted,
            uploaded,
            requests: self.requests,
            confirmed_by_absence,
        })
    }

    /// `send`; when its outcome is unknown, the delete decides whether it went.
    async fn send_draft(&mut self, id: &str) -> Result<(String, bool), UploadFailure> {
        let url = self.message_url(id, "/send");
        let error = match self
            .graph(Step::Send, reqwest::Method::POST, &url, "", Bytes::new())
            .await
        {
            Ok(a) => return Ok((header_text(&a.headers, "request-id"), false)),
            Err(e) => e,
        };
        if !error.outcome_unknown() {
            return Err(self.abandon(id.to_string(), error).await);
        }
        match self.delete(id).await {
            Deleted::Gone => {
                warn!(mailbox = %self.up.mailbox, draft = %id, error = %error,
                    "the answer to send was lost, but the draft is gone: Graph sent it");
                Ok((String::new(), true))
            }
            Deleted::Now => Err(UploadFailure {
                error,
                draft: DraftCleanup::Deleted,
            }),
            Deleted::Failed(e) => Err(UploadFailure {
                error,
                draft: DraftCleanup::Left {
                    id: id.to_string(),
                    reason: e.to_string(),
                },
            }),
        }
    }

    /// Deletes the draft after `error`, and says how that went.
    async fn abandon(&mut self, id: String, error: UploadError) -> UploadFailure {
        let draft = match self.delete(&id).await {
            Deleted::Now | Deleted::Gone => DraftCleanup::Deleted,
            Deleted::Failed(e) => {
                warn!(mailbox = %self.up.mailbox, draft = %id, error = %e,
                    "could not delete the Graph draft of a failed send; it stays in Drafts");
                DraftCleanup::Left {
                    id,
                    reason: e.to_string(),
                }
            }
        };
        UploadFailure { error, draft }
    }

    /// `DELETE` the draft, waiting out throttling a few times (briefly: the failure it cleans
    /// up after is waiting to be reported).
    async fn delete(&mut self, id: &str) -> Deleted {
        let url = self.message_url(id, "");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let e = match self
                .graph(
                    Step::DeleteDraft,
                    reqwest::Method::DELETE,
                    &url,
                    "",
                    Bytes::new(),
                )
                .await
            {
                Ok(_) => return Deleted::Now,
                Err(e) if e.status() == Some(404) => return Deleted::Gone,
                Err(e) => e,
            };
            if !e.transient() || attempt >= CLEANUP_ATTEMPTS {
                return Deleted::Failed(e);
            }
            let wait = e.retry_after().unwrap_or(Duration::from_secs(1));
            tokio::time::sleep(wait.min(CLEANUP_WAIT_CAP)).await;
        }
    }

    async fn post_attachment(&mut self, id: &str, part: LargePart) -> Result<(), UploadError> {
        let content = base64::engine::general_purpose::STANDARD.encode(&part.bytes);
        let body = file_attachment_json(&part, content).to_string();
        drop(part);
        let url = self.message_url(id, "/attachments");
        self.graph(
            Step::AddAttachment,
            reqwest::Method::POST,
            &url,
            "application/json",
            body.into(),
        )
        .await?;
        Ok(())
    }

    async fn upload_attachment(&mut self, id: &str, part: LargePart) -> Result<(), UploadError> {
        let mut item = attachment_fields(&part);
        item.insert("attachmentType".into(), "file".into());
        item.insert("size".into(), part.bytes.len().into());
        let body = serde_json::json!({ "AttachmentItem": item }).to_string();
        let url = self.message_url(id, "/attachments/createUploadSession");
        let a = self
            .graph(
                Step::CreateUploadSession,
                reqwest::Method::POST,
                &url,
                "application/json",
                body.into(),
            )
            .await?;
        let session = UploadSessionAnswer::parse(&a.body)?;
        let chunks = self.put_all(&session, Bytes::from(part.bytes)).await?;
        debug!(mailbox = %self.up.mailbox, draft = %id, name = %part.name, chunks,
            "attachment uploaded to Graph");
        Ok(())
    }

    /// `PUT`s the bytes from where Graph expects them until it answers `201`.
    async fn put_all(
        &mut self,
        session: &UploadSessionAnswer,
        data: Bytes,
    ) -> Result<usize, UploadError> {
        let total = data.len();
        let mut next = session.next;
        let limit = 2 * total.div_ceil(CHUNK_SIZE) + 4;
        for puts in 1..=limit {
            let end = (next + CHUNK_SIZE).min(total);
            let a = self
                .put_chunk(&session.url, data.slice(next..end), next, total)
                .await?;
            if a.status == 201 {
                return Ok(puts);
            }
            next = next_expected(&a.body)
                .filter(|&n| n < total)
                .ok_or_else(|| UploadError::Unexpected {
                    step: Step::UploadChunk,
                    detail: format!(
                        "nextExpectedRanges is missing or past the end after bytes {next}-{}",
                        end - 1
                    ),
                })?;
        }
        Err(UploadError::Unexpected {
            step: Step::UploadChunk,
            detail: format!("the upload made no progress in {limit} requests"),
        })
    }

    /// One chunk, starting at byte `start` of `total`, to the pre-authenticated URL: no
    /// Authorization header.
    async fn put_chunk(
        &mut self,
        url: &str,
        chunk: Bytes,
        start: usize,
        total: usize,
    ) -> Result<Answer, UploadError> {
        let range = format!("bytes {start}-{}/{total}", start + chunk.len() - 1);
        let _slot = permit(self.up.slots).await;
        self.requests += 1;
        let mut request = self.up.http.put(url);
        if let Some(t) = self.up.transfer_timeout {
            request = request.timeout(t);
        }
        let response = request
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_RANGE, &range)
            .body(chunk)
            .send()
            .await
            // The URL carries a credential: never in an error.
            .map_err(|e| transport(Step::UploadChunk, e.without_url()))?;
        answer(Step::UploadChunk, response).await
    }

    /// A Graph API request with a bearer token; a 401 gets one new token and a second try.
    async fn graph(
        &mut self,
        step: Step,
        method: reqwest::Method,
        url: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<Answer, UploadError> {
        loop {
            let token = self
                .up
                .tokens
                .token()
                .await
                .map_err(|error| UploadError::Token { step, error })?;
            let mut auth =
                HeaderValue::from_str(&format!("Bearer {}", token.secret())).map_err(|_| {
                    UploadError::Unexpected {
                        step,
                        detail: "the access token is not a valid header value".into(),
                    }
                })?;
            auth.set_sensitive(true);
            let mut request = self
                .up
                .http
                .request(method.clone(), url)
                .header(AUTHORIZATION, auth)
                .body(body.clone());
            if !content_type.is_empty() {
                request = request.header(CONTENT_TYPE, content_type);
            }
            if let Some(t) = self
                .up
                .transfer_timeout
                .filter(|_| body.len() > TRANSFER_BODY)
            {
                request = request.timeout(t);
            }
            let _slot = permit(self.up.slots).await;
            self.requests += 1;
            let response = request.send().await.map_err(|e| transport(step, e))?;
            match answer(step, response).await {
                Err(e) if e.status() == Some(401) && !self.refreshed => {
                    info!(mailbox = %self.up.mailbox, error = %e,
                        "Graph refused the token; retrying once with a new one");
                    self.up.tokens.invalidate(&token);
                    self.refreshed = true;
                }
                other => return other,
            }
        }
    }
}

/// One of the app's request slots, held for one request.
async fn permit(slots: Option<&Semaphore>) -> Option<tokio::sync::SemaphorePermit<'_>> {
    match slots {
        Some(s) => s.acquire().await.ok(),
        None => None,
    }
}

enum Deleted {
    /// `204`: it existed and is gone now.
    Now,
    /// `404`: it was already gone.
    Gone,
    Failed(UploadError),
}

/// What `createUploadSession` answered: where to `PUT`, and from which byte.
struct UploadSessionAnswer {
    url: String,
    next: usize,
}

impl UploadSessionAnswer {
    fn parse(body: &[u8]) -> Result<Self, UploadError> {
        let unexpected = |detail: &str| UploadError::Unexpected {
            step: Step::CreateUploadSession,
            detail: detail.into(),
        };
        let url = json_field(body, "uploadUrl").ok_or_else(|| unexpected("no uploadUrl"))?;
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(unexpected("the uploadUrl is not an HTTP URL"));
        }
        Ok(UploadSessionAnswer {
            url,
            next: next_expected(body).unwrap_or(0),
        })
    }
}

/// The start of the first range in `nextExpectedRanges` (`"N"`, `"N-"` or `"N-M"`).
fn next_expected(body: &[u8]) -> Option<usize> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let first = v.get("nextExpectedRanges")?.get(0)?.as_str()?;
    first.split('-').next()?.trim().parse().ok()
}

fn json_field(body: &[u8], name: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get(name)?.as_str().map(str::to_string)
}

/// A success with its body, or the refusal as data, classified here.
async fn answer(step: Step, response: reqwest::Response) -> Result<Answer, UploadError> {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let ok = (200..300).contains(&status);
    let limit = if ok { MAX_ANSWER_BODY } else { MAX_ERROR_BODY };
    let body = read_bounded(response, limit)
        .await
        .map_err(|e| transport(step, e.without_url()))?;
    if ok {
        return Ok(Answer {
            status,
            headers,
            body,
        });
    }
    let GraphError { code, message } = graph_error(&body);
    let retry_after = retry_after(&headers);
    let cause = match cause::graph_upload(step, status, &code) {
        Cause::Throttled { .. } => Cause::Throttled { retry_after },
        other => other,
    };
    Err(UploadError::Refused {
        step,
        answer: GraphAnswer {
            status,
            code,
            message,
            retry_after,
            request_id: header_text(&headers, "request-id"),
            cause,
        },
    })
}

fn transport(step: Step, e: reqwest::Error) -> UploadError {
    let (kind, detail) = transport_kind(&e);
    UploadError::Transport { step, kind, detail }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(size: usize, name: &str, cid: Option<&str>) -> LargePart {
        LargePart {
            name: name.into(),
            content_type: "application/pdf".into(),
            bytes: vec![0x25; size],
            inline: cid.is_some(),
            content_id: cid.map(str::to_string),
        }
    }

    #[test]
    fn parts_go_in_one_request_while_it_stays_under_four_mebibytes() {
        let mib = 1024 * 1024;
        assert_eq!(carry_for(&part(2 * mib, "a.pdf", None)), Carry::Post);
        assert_eq!(carry_for(&part(3 * mib - 2048, "a.pdf", None)), Carry::Post);
        assert_eq!(
            carry_for(&part(3 * mib, "a.pdf", None)),
            Carry::UploadSession
        );
        // A long name tips a part just under 3 MiB over the request limit.
        let long = "n".repeat(1500);
        assert_eq!(
            carry_for(&part(3 * mib - 900, &long, None)),
            Carry::UploadSession
        );
        let len = attachment_json_len(&part(1000, "a.pdf", Some("c@x")));
        let real = file_attachment_json(
            &part(1000, "a.pdf", Some("c@x")),
            base64::engine::general_purpose::STANDARD.encode(vec![0x25; 1000]),
        )
        .to_string()
        .len();
        assert_eq!(len, real);
    }

    #[test]
    fn only_parts_with_a_content_id_are_inline_for_graph() {
        let mut p = part(10, "scan.pdf", None);
        p.inline = true;
        assert_eq!(attachment_fields(&p)["isInline"], false);
        let p = part(10, "logo.png", Some("logo@x"));
        let f = attachment_fields(&p);
        assert_eq!(
            (f["isInline"].clone(), f["contentId"].clone()),
            (true.into(), "logo@x".into())
        );
    }

    #[test]
    fn the_plan_lowers_the_threshold_until_the_draft_fits() {
        // Five 900 KiB attachments: under the default threshold, but 4.5 MiB together.
        let chunk = "QUFB".repeat(76 / 4);
        let b64_part = |i: usize| {
            let mut s = format!(
                "--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"p{i}.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            );
            for _ in 0..(900 * 1024 / 57) {
                s.push_str(&chunk);
                s.push_str("\r\n");
            }
            s
        };
        let mut m = String::from(
            "To: a@x\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n",
        );
        for i in 0..5 {
            m.push_str(&b64_part(i));
        }
        m.push_str("--b--\r\n");
        let plan = plan(m.as_bytes(), DEFAULT_THRESHOLD).unwrap();
        assert!(base64_len(plan.draft.len()) <= MAX_REQUEST_BODY);
        assert!(plan.parts.len() >= 2, "{}", plan.parts.len());
        assert!(plan.parts.iter().all(|(_, c)| *c == Carry::Post));
        // Text alone over the limit cannot be helped.
        let text = format!("To: a@x\r\n\r\n{}", "x".repeat(MAX_REQUEST_BODY));
        assert!(matches!(
            plan_err(text.as_bytes()),
            UploadError::TooLarge { .. }
        ));
    }

    fn plan_err(m: &[u8]) -> UploadError {
        match plan(m, DEFAULT_THRESHOLD) {
            Err(e) => e,
            Ok(_) => panic!("planned"),
        }
    }

    #[test]
    fn next_expected_ranges_in_each_form() {
        assert_eq!(next_expected(br#"{"nextExpectedRanges":["0-"]}"#), Some(0));
        assert_eq!(
            next_expected(br#"{"nextExpectedRanges":["3932160"]}"#),
            Some(3_932_160)
        );
        assert_eq!(
            next_expected(br#"{"nextExpectedRanges":["12-99","200-"]}"#),
            Some(12)
        );
        assert_eq!(next_expected(br#"{"nextExpectedRanges":[]}"#), None);
        assert_eq!(next_expected(b"<html>"), None);
    }

    fn refused(step: Step, status: u16, code: &str) -> UploadError {
        refused_after(step, status, code, None)
    }

    /// An answer as `answer()` makes it: its cause decided by `cause::graph_upload`.
    fn refused_after(step: Step, status: u16, code: &str, wait: Option<u64>) -> UploadError {
        let retry_after = wait.map(Duration::from_secs);
        UploadError::Refused {
            step,
            answer: GraphAnswer {
                status,
                code: code.into(),
                message: "m".into(),
                retry_after,
                request_id: String::new(),
                cause: match cause::graph_upload(step, status, code) {
                    Cause::Throttled { .. } => Cause::Throttled { retry_after },
                    c => c,
                },
            },
        }
    }

    fn route() -> GraphRouteConfig {
        GraphRouteConfig {
            account: "scanner".into(),
            mailbox: "scanner@contoso.com".into(),
            graph_url: "https://graph.example:8443".into(),
            max_message_size: 36_700_160,
            large_messages: crate::graph::LargeMessages::Upload,
            transfer_timeout: Duration::from_secs(600),
        }
    }

    /// What each failure of the conversation becomes for the relay: the reply (code, status,
    /// the words an admin acts on) and its cause, which decides pausing, keeping or failing.
    #[test]
    fn failures_become_refusals_with_their_cause() {
        use smtp2oauth_proto::AccountIssue::*;
        let failed = |error| UploadFailure {
            error,
            draft: DraftCleanup::Deleted,
        };
        let cases: Vec<(UploadError, &str, Cause, &[&str])> = vec![
            (
                refused_after(Step::UploadChunk, 429, "ApplicationThrottled", Some(7)),
                "451 4.7.500",
                Cause::Throttled {
                    retry_after: Some(Duration::from_secs(7)),
                },
                &["Retry after 7 seconds", "while uploading an attachment"],
            ),
            (
                refused_after(Step::CreateDraft, 503, "", Some(3)),
                "451 4.3.2",
                Cause::Throttled {
                    retry_after: Some(Duration::from_secs(3)),
                },
                &["Retry after 3 seconds", "while creating the draft"],
            ),
            (
                refused(Step::CreateDraft, 403, "ErrorAccessDenied"),
                "550 5.7.1",
                Cause::Account(Permission),
                &["Mail.ReadWrite", "scanner@contoso.com", "ErrorAccessDenied"],
            ),
            (
                refused(Step::Send, 403, "ErrorAccessDenied"),
                "550 5.7.1",
                Cause::Account(Permission),
                &["refused to send as this mailbox", "while sending the draft"],
            ),
            (
                refused(Step::CreateDraft, 401, "InvalidAuthenticationToken"),
                "451 4.7.0",
                Cause::Account(Login),
                &["refused the access token"],
            ),
            (
                refused(Step::UploadChunk, 401, ""),
                "451 4.4.0",
                Cause::Transient,
                &["upload session's URL expired"],
            ),
            (
                refused(Step::AddAttachment, 404, "ErrorItemNotFound"),
                "451 4.3.0",
                Cause::Transient,
                &["draft disappeared", "while adding an attachment"],
            ),
            (
                refused(Step::CreateUploadSession, 413, "ErrorMessageSizeExceeded"),
                "552 5.3.4",
                Cause::TooLarge,
                &["(20000000 bytes)", "MaxSendSize", "35 MB"],
            ),
            (
                refused(Step::Send, 400, "ErrorMessageSizeExceeded"),
                "552 5.3.4",
                Cause::TooLarge,
                &["larger than scanner@contoso.com may send"],
            ),
            (
                refused(
                    Step::CreateDraft,
                    400,
                    "ErrorMimeContentInvalidBase64String",
                ),
                "554 5.6.0",
                Cause::Message,
                &["while creating the draft"],
            ),
            (
                refused(Step::Send, 502, ""),
                "451 4.3.0",
                Cause::Throttled { retry_after: None },
                &["while sending the draft"],
            ),
            (
                UploadError::TooLarge {
                    draft_bytes: 5_000_000,
                },
                "552 5.3.4",
                Cause::TooLarge,
                &["5000000 bytes"],
            ),
            (
                UploadError::Transport {
                    step: Step::UploadChunk,
                    kind: TransportKind::Timeout,
                    detail: "operation timed out".into(),
                },
                "451 4.4.2",
                Cause::Transient,
                &[],
            ),
            (
                UploadError::Unexpected {
                    step: Step::CreateUploadSession,
                    detail: "no uploadUrl".into(),
                },
                "451 4.5.0",
                Cause::Transient,
                &["opening an upload session", "no uploadUrl"],
            ),
        ];
        for (error, want, cause, words) in cases {
            let what = error.to_string();
            let e = failed(error).delivery_error(&route(), 20_000_000);
            let reply = e.reply().to_string();
            assert!(reply.starts_with(want), "{what}: {reply}");
            assert_eq!(e.cause(), cause, "{what}");
            for w in words {
                assert!(reply.contains(w), "{what}: {w:?} not in {reply}");
            }
        }
        // A draft left behind is said.
        let e = UploadFailure {
            error: refused(Step::Send, 400, "ErrorInvalidRecipients"),
            draft: DraftCleanup::Left {
                id: "AAMk=".into(),
                reason: "x".into(),
            },
        }
        .delivery_error(&route(), 1);
        assert!(e.reply().to_string().contains("stays in Drafts"), "{e}");
    }

    #[test]
    fn errors_say_what_graph_said_and_classify() {
        let e = refused(Step::CreateDraft, 403, "ErrorAccessDenied");
        assert!(e.is_drafts_denied());
        assert_eq!(
            e.to_string(),
            "creating the draft: Microsoft Graph answered HTTP 403 ErrorAccessDenied: m"
        );
        assert!(!refused(Step::Send, 403, "ErrorAccessDenied").is_drafts_denied());
        assert!(refused(Step::UploadChunk, 429, "ApplicationThrottled").is_throttled());
        assert!(refused(Step::Send, 503, "").is_throttled());
        assert!(refused(Step::UploadChunk, 400, "ErrorMessageSizeExceeded").is_too_large());
        assert!(refused(Step::AddAttachment, 413, "").is_too_large());
        assert!(refused(Step::Send, 504, "").outcome_unknown());
        assert!(!refused(Step::Send, 400, "").outcome_unknown());
        assert_eq!(
            graph_error(br#"{"error":{"code":"X","message":"line\r\nbreak"}}"#),
            GraphError {
                code: "X".into(),
                message: "line  break".into()
            }
        );
    }

    #[test]
    fn ids_and_mailboxes_are_escaped_as_path_segments() {
        assert_eq!(percent_encode_path("AAMkAD+/x=="), "AAMkAD+%2Fx==");
        assert_eq!(
            percent_encode_path("scanner@contoso.com"),
            "scanner@contoso.com"
        );
        assert_eq!(percent_encode_path("a b?#%"), "a%20b%3F%23%25");
    }
}

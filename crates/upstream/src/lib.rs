//! Upstream delivery: the routes a message can take out of the relay.
//!
//! A [`Route`] takes one spooled message and tries to deliver it, returning the upstream's own
//! reply as data: the final reply, and per-recipient refusals. Failures are
//! [`DeliveryError`]s, whose one rule is that only an upstream's own 5xx is permanent; a
//! refusal carries what it is about (a [`Cause`](smtp2oauth_proto::Cause): throttling, our account, the message, ...),
//! decided once where the answer is parsed (`cause.rs`), so nothing downstream reads its words.
//!
//! Routes know tokens (they ask a `TokenSource` for one) but nothing of devices, sessions or
//! the spool's layout: they read the message from a path.
//!
//! # Layout
//! - `cause.rs`: the table of what each upstream refusal is about (SMTP replies, Graph answers).
//! - `smtp.rs`: [`SmtpRoute`], submission with STARTTLS (or implicit TLS) and AUTH XOAUTH2 or
//!   OAUTHBEARER, over pooled sessions.
//! - `conversation.rs`: what both SMTP routes say: greeting, EHLO, STARTTLS, EHLO, and one
//!   mail transaction, pipelined when the upstream offers it, the body streamed from disk and
//!   dot-stuffed on the way.
//! - `client.rs`: the SMTP client connection: framing replies, deadlines, TLS upgrade.
//! - `graph.rs`: [`GraphRoute`], Microsoft Graph `sendMail` with the MIME message (base64),
//!   401 → one token refresh, throttling replies that carry `Retry-After`, 4 requests per app;
//!   a message too large for one request is uploaded (`graph_upload.rs`) or refused.
//! - `graph_upload.rs`: the draft conversation for such a message (a draft from the MIME, its
//!   large attachments added back, upload sessions for the largest, send), with `mime_split.rs`
//!   taking the large attachments out.
//! - `mime.rs`: making a message's recipient headers match its envelope for Graph, and
//!   re-encoding fragile quoted-printable parts.
//! - `smarthost.rs`: [`SmarthostRoute`], a fixed host or a domain's MX hosts, STARTTLS
//!   (required or opportunistic, always verified), an optional client certificate, no AUTH.
//! - `fallback.rs`: [`FallbackRoute`], an account's `fallback_route` for refusals the other
//!   route may not share (`535 5.7.139` first of all).
//! - `pool.rs`: idle authenticated sessions kept for the next message.
//! - `capture.rs`: [`CaptureRoute`], writes each message to a directory (tests, first setup).
//! - `tls.rs`: client TLS configuration (web PKI roots plus an optional extra CA file).
//! - `advice.rs`: plain-words advice for known upstream refusals.

#![warn(missing_docs)]

pub mod advice;
mod capture;
pub mod cause;
mod client;
mod conversation;
pub mod fallback;
pub mod graph;
pub mod graph_upload;
pub mod mime;
pub mod mime_split;
mod pool;
pub mod smarthost;
mod smtp;
mod tls;

pub use capture::CaptureRoute;
pub use fallback::FallbackRoute;
pub use graph::{GraphRoute, GraphRouteConfig};
pub use smarthost::{Destination, SmarthostRoute, SmarthostRouteConfig, SmarthostTls};
pub use smtp::{
    SaslMechanism, SmtpRoute, SmtpRouteConfig, TlsMode, oauthbearer_initial_response,
    xoauth2_initial_response,
};
pub use tls::{client_config, client_config_with_cert};

use smtp2oauth_proto::{DeliveryError, Reply};
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

/// A message to deliver: its envelope and where its bytes are.
#[derive(Clone, Debug)]
pub struct Message {
    /// The queue id.
    pub id: String,
    /// The account it is sent for.
    pub account: String,
    /// The device that sent it.
    pub device: String,
    /// The envelope sender.
    pub sender: String,
    /// The recipients to deliver to in this attempt.
    pub recipients: Vec<String>,
    /// Where the message's bytes are (CRLF line ends).
    pub data_path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// It has bytes >= 0x80.
    pub eight_bit: bool,
    /// Its addresses need SMTPUTF8.
    pub smtputf8: bool,
    /// When it was accepted (ms since the epoch).
    pub received_at_ms: u64,
}

/// What the upstream said to a delivery that went through (for at least one recipient).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryReport {
    /// The upstream's reply to the message body (or the route's own, for capture).
    pub reply: Reply,
    /// Recipients the upstream accepted.
    pub accepted: Vec<String>,
    /// Recipients the upstream refused, each with its reply (4xx: may succeed later).
    pub rejected: Vec<(String, Reply)>,
}

/// A delivery in progress.
pub type DeliveryFuture<'a> =
    Pin<Box<dyn Future<Output = Result<DeliveryReport, DeliveryError>> + Send + 'a>>;

/// Which kind of way out a route is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RouteKind {
    /// Submission with an OAuth token ([`SmtpRoute`]).
    Smtp,
    /// Microsoft Graph `sendMail` ([`GraphRoute`]).
    Graph,
    /// A smart host or the tenant's MX ([`SmarthostRoute`]).
    Smarthost,
    /// A directory ([`CaptureRoute`]).
    Capture,
}

impl RouteKind {
    /// The name used in the configuration, logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Smtp => "smtp",
            RouteKind::Graph => "graph",
            RouteKind::Smarthost => "smarthost",
            RouteKind::Capture => "capture",
        }
    }
}

impl fmt::Display for RouteKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A wait for a route's token (see [`Route::wait_for_token`]).
pub type TokenWait<'a> = Pin<Box<dyn Future<Output = Result<(), DeliveryError>> + Send + 'a>>;

/// A way out of the relay.
pub trait Route: Send + Sync {
    /// What kind of route this is (for logs, metrics and the fallback's rules).
    fn kind(&self) -> RouteKind;
    /// A description of the destination without secrets, e.g. `smtp.office365.com:587 (starttls)`.
    fn target(&self) -> String;
    /// Tries to deliver `message` to its recipients.
    fn deliver<'a>(&'a self, message: &'a Message) -> DeliveryFuture<'a>;
    /// After a delivery failed for want of a token: resolves once the account's token source
    /// hands one out again (asking when each failure cooldown ends), or with the failure that
    /// waiting does not cure. A route without tokens resolves at once.
    fn wait_for_token(&self) -> TokenWait<'_> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// [`Route::wait_for_token`] for a route that gets its tokens from `tokens`.
pub(crate) fn token_wait<'a>(
    account: &'a str,
    tokens: &'a dyn smtp2oauth_tokens::TokenSource,
) -> TokenWait<'a> {
    Box::pin(async move {
        smtp2oauth_tokens::wait_for_token(tokens)
            .await
            .map_err(|e| smtp::token_error(account, &e))
    })
}

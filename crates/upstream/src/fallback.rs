//! An account's second way out: `fallback_route`, tried when the primary route refuses a
//! message for a reason the other route may not share.
//!
//! Such reasons are about the *route*, not the message or its recipients, and each route has
//! its own (the refusal's [`Cause`], decided in `cause.rs`): for SMTP, a refused login (SMTP
//! AUTH disabled for the tenant, `535 5.7.139`, the reason this exists; a token Exchange
//! refuses for SMTP, `535 5.7.3`); for Graph, a refused app permission (`ErrorAccessDenied`),
//! an unknown mailbox (`MailboxNotEnabledForRESTAPI`) or the size (Graph takes about 4 MB per
//! request, SMTP 35 MB and more); for a smart host, a connector refusing our address or
//! certificate (`550 5.7.64`, `5.7.60x`, `5.7.708`) or a refusal before the transaction. A
//! refused recipient, a refused sender, a message the upstream rejects as such, a blocked
//! tenant or a used-up quota fail the same way everywhere and are not retried through the
//! fallback.
//!
//! A Graph route told to refuse large messages (`graph_large_messages = "refuse"`) keeps its
//! size refusals: [`FallbackRoute::keeping_too_large`].
//!
//! When the refusal concerns the whole tenant or app (everything above but size), the primary
//! is skipped for [`SKIP_PRIMARY_FOR`] so each message does not first pay for a doomed
//! connection; the log says so each time.

use crate::{DeliveryFuture, DeliveryReport, Message, Route, RouteKind};
use smtp2oauth_proto::{AccountIssue, Cause, DeliveryError, Reply};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How long the primary is skipped after a tenant- or app-wide refusal.
pub const SKIP_PRIMARY_FOR: Duration = Duration::from_secs(600);

/// A route with a second way out for refusals specific to the first.
pub struct FallbackRoute {
    account: String,
    primary: Arc<dyn Route>,
    fallback: Arc<dyn Route>,
    /// Size refusals of the primary go to the fallback (not when the admin chose "refuse").
    too_large_to_fallback: bool,
    skip_until: Mutex<Option<(Instant, Reply)>>,
}

/// Whether a refusal by a route of kind `route` may not hold for another route: `Some(sticky)`
/// when the fallback should be tried (sticky: the refusal concerns the tenant or app, not this
/// message). Only a permanent refusal is considered: a temporary one is retried as it is.
pub fn route_specific(route: RouteKind, e: &DeliveryError) -> Option<bool> {
    use AccountIssue::*;
    if !e.is_permanent() {
        return None;
    }
    match (route, e.cause()) {
        (RouteKind::Graph, Cause::TooLarge) => Some(false),
        (RouteKind::Smtp, Cause::Account(Login | SmtpAuthDisabled))
        | (RouteKind::Graph, Cause::Account(Permission | Mailbox))
        | (RouteKind::Smarthost, Cause::Account(Connector | Address)) => Some(true),
        _ => None,
    }
}

impl FallbackRoute {
    /// `account`'s `primary` route, and the `fallback` for what it refuses on its own account.
    pub fn new(account: String, primary: Arc<dyn Route>, fallback: Arc<dyn Route>) -> Self {
        FallbackRoute {
            account,
            primary,
            fallback,
            too_large_to_fallback: true,
            skip_until: Mutex::new(None),
        }
    }

    /// The primary's refusals as too large are the attempt's result: the admin chose to
    /// refuse large messages rather than send them another way.
    pub fn keeping_too_large(mut self) -> Self {
        self.too_large_to_fallback = false;
        self
    }

    /// Whether the fallback is tried after `err` from the primary: `Some(sticky)` as in
    /// [`route_specific`].
    fn hands_over(&self, err: &DeliveryError) -> Option<bool> {
        if !self.too_large_to_fallback && err.cause() == Cause::TooLarge {
            return None;
        }
        route_specific(self.primary.kind(), err)
    }

    fn skipping(&self) -> Option<Reply> {
        let mut s = self.skip_until.lock().unwrap_or_else(|p| p.into_inner());
        match &*s {
            Some((until, reply)) if Instant::now() < *until => Some(reply.clone()),
            Some(_) => {
                *s = None;
                None
            }
            None => None,
        }
    }

    async fn attempt(&self, msg: &Message) -> Result<DeliveryReport, DeliveryError> {
        let (p, f) = (self.primary.kind(), self.fallback.kind());
        let (primary, fallback) = (p.as_str(), f.as_str());
        if let Some(reply) = self.skipping() {
            info!(queue_id = %msg.id, account = %self.account, primary, fallback, primary_refused = %reply,
                "using the fallback route: the primary refused this account recently");
            return self.fallback.deliver(msg).await;
        }
        let err = match self.primary.deliver(msg).await {
            Ok(report) => return Ok(report),
            Err(e) => e,
        };
        let Some(sticky) = self.hands_over(&err) else {
            return Err(err);
        };
        let reply = err.reply();
        warn!(queue_id = %msg.id, account = %self.account, primary, fallback, upstream = %reply,
            advice = crate::advice::for_error(&err).unwrap_or(""),
            "the primary route refused the message for a reason the fallback may not share; trying the fallback");
        if sticky {
            *self.skip_until.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((Instant::now() + SKIP_PRIMARY_FOR, reply.clone()));
        }
        match self.fallback.deliver(msg).await {
            Ok(report) => {
                info!(queue_id = %msg.id, account = %self.account, fallback, upstream = %report.reply, "delivered through the fallback route");
                Ok(report)
            }
            Err(e) => {
                warn!(queue_id = %msg.id, account = %self.account, fallback, upstream = %e.reply(), primary_refused = %reply,
                    "the fallback route failed too");
                Err(e)
            }
        }
    }
}

impl Route for FallbackRoute {
    fn kind(&self) -> RouteKind {
        self.primary.kind()
    }

    fn target(&self) -> String {
        format!(
            "{}, fallback {} {}",
            self.primary.target(),
            self.fallback.kind(),
            self.fallback.target()
        )
    }

    fn deliver<'a>(&'a self, message: &'a Message) -> DeliveryFuture<'a> {
        Box::pin(self.attempt(message))
    }

    /// The token of the route that carries the account's mail now: the fallback while the
    /// primary is skipped, the primary otherwise.
    fn wait_for_token(&self) -> crate::TokenWait<'_> {
        if self.skipping().is_some() {
            self.fallback.wait_for_token()
        } else {
            self.primary.wait_for_token()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cause::refused;
    use crate::graph::refusal;
    use smtp2oauth_proto::Stage;

    fn smtp(stage: Stage, line: &str) -> DeliveryError {
        let reply = smtp2oauth_proto::ReplyAssembler::new()
            .push_line(line.as_bytes())
            .unwrap()
            .unwrap();
        refused(stage, reply)
    }

    fn graph(status: u16, code: &str) -> DeliveryError {
        let body = format!(r#"{{"error":{{"code":"{code}","message":"x"}}}}"#);
        refusal(status, None, body.as_bytes())
    }

    #[test]
    fn which_refusals_try_the_fallback() {
        use RouteKind::*;
        let cases = [
            (
                Smtp,
                smtp(
                    Stage::Auth,
                    "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.",
                ),
                Some(true),
            ),
            (
                Smtp,
                smtp(Stage::Auth, "535 5.7.3 Authentication unsuccessful"),
                Some(true),
            ),
            (
                Smtp,
                smtp(Stage::Auth, "504 5.7.4 Unrecognized authentication type"),
                Some(true),
            ),
            (
                Smtp,
                smtp(
                    Stage::Mail,
                    "530 5.7.57 Client not authenticated to send mail",
                ),
                Some(true),
            ),
            (Smtp, smtp(Stage::Rcpt, "550 5.1.1 User unknown"), None),
            (Smtp, smtp(Stage::Body, "554 5.2.252 SendAsDenied"), None),
            (Smtp, smtp(Stage::Auth, "454 4.7.0 try later"), None),
            (
                Smtp,
                smtp(Stage::Mail, "550 5.1.8 Access denied, bad outbound sender"),
                None,
            ),
            (Smtp, smtp(Stage::Greeting, "554 5.7.1 go away"), None),
            (Graph, graph(400, "ErrorMessageSizeExceeded"), Some(false)),
            (Graph, graph(413, ""), Some(false)),
            (Graph, graph(403, "ErrorAccessDenied"), Some(true)),
            (Graph, graph(404, "MailboxNotEnabledForRESTAPI"), Some(true)),
            (Graph, graph(404, "ErrorInvalidUser"), Some(true)),
            (
                Graph,
                graph(400, "ErrorMimeContentInvalidBase64String"),
                None,
            ),
            (Graph, graph(403, "ErrorSendAsDenied"), None),
            (Graph, graph(401, "InvalidAuthenticationToken"), None),
            (Graph, graph(429, "ApplicationThrottled"), None),
            (
                Smarthost,
                smtp(
                    Stage::Rcpt,
                    "550 5.7.64 TenantAttribution; Relay Access Denied",
                ),
                Some(true),
            ),
            (
                Smarthost,
                smtp(Stage::Rcpt, "550 5.7.708 Access denied"),
                Some(true),
            ),
            (
                Smarthost,
                smtp(Stage::Greeting, "554 5.7.1 go away"),
                Some(true),
            ),
            (
                Smarthost,
                smtp(Stage::Rcpt, "550 5.1.10 RESOLVER.ADR.RecipientNotFound"),
                None,
            ),
            (
                Smarthost,
                smtp(Stage::Rcpt, "550 5.7.1 Unable to relay"),
                None,
            ),
            (Capture, smtp(Stage::Auth, "535 5.7.3 x"), None),
        ];
        for (kind, err, want) in cases {
            assert_eq!(route_specific(kind, &err), want, "{kind} {err}");
        }
        let connect = DeliveryError::Connect {
            target: "x".into(),
            detail: "refused".into(),
        };
        assert_eq!(route_specific(Smtp, &connect), None);
    }

    /// A route that answers every message the same way and counts them.
    struct Fixed {
        kind: RouteKind,
        refusal: Option<DeliveryError>,
        delivered: std::sync::atomic::AtomicUsize,
    }

    impl Route for Fixed {
        fn kind(&self) -> RouteKind {
            self.kind
        }
        fn target(&self) -> String {
            self.kind.to_string()
        }
        fn deliver<'a>(&'a self, m: &'a Message) -> DeliveryFuture<'a> {
            Box::pin(async move {
                if let Some(e) = &self.refusal {
                    return Err(e.clone());
                }
                self.delivered
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(DeliveryReport {
                    reply: Reply::with_status(250, (2, 0, 0), "ok"),
                    accepted: m.recipients.clone(),
                    rejected: Vec::new(),
                })
            })
        }
    }

    fn fixed(kind: RouteKind, refusal: Option<DeliveryError>) -> Arc<Fixed> {
        Arc::new(Fixed {
            kind,
            refusal,
            delivered: Default::default(),
        })
    }

    /// `graph_large_messages = "refuse"` keeps Graph's size refusal from the fallback; the
    /// default ("fallback") hands it over; other refusals are unaffected.
    #[tokio::test]
    async fn a_graph_route_that_refuses_large_mail_keeps_its_size_refusals() {
        let msg = Message {
            id: "q1".into(),
            account: "a".into(),
            device: "d".into(),
            sender: "s@x".into(),
            recipients: vec!["r@x".into()],
            data_path: "/nonexistent".into(),
            size: 5_000_000,
            eight_bit: false,
            smtputf8: false,
            received_at_ms: 0,
        };
        let count = |r: &Arc<Fixed>| r.delivered.load(std::sync::atomic::Ordering::SeqCst);
        for (refusal, keeping, to_fallback) in [
            (graph(413, "ErrorMessageSizeExceeded"), false, true),
            (graph(413, "ErrorMessageSizeExceeded"), true, false),
            (graph(404, "MailboxNotEnabledForRESTAPI"), true, true),
        ] {
            let smtp = fixed(RouteKind::Smtp, None);
            let route = FallbackRoute::new(
                "a".into(),
                fixed(RouteKind::Graph, Some(refusal.clone())),
                smtp.clone(),
            );
            let route = if keeping {
                route.keeping_too_large()
            } else {
                route
            };
            let outcome = route.deliver(&msg).await;
            assert_eq!(outcome.is_ok(), to_fallback, "{refusal} keeping={keeping}");
            assert_eq!(count(&smtp), usize::from(to_fallback));
        }
    }
}

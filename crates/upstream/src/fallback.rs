//! An account's second way out: `fallback_route`, tried when the primary route refuses a
//! message for a reason the other route may not share.
//!
//! Such reasons are about the *route*, not the message or its recipients: SMTP AUTH disabled
//! for the tenant (`535 5.7.139`, the reason this exists), a token Exchange refuses for SMTP
//! (`535 5.7.3`), basic authentication reaching Exchange (`550 5.7.30`); Graph refusing the app
//! (`ErrorAccessDenied`), the mailbox (`MailboxNotEnabledForRESTAPI`) or the size (Graph takes
//! about 4 MB per request, SMTP 35 MB and more); a connector refusing our address or
//! certificate (`550 5.7.64`, `5.7.60x`, `5.7.708`) or a smart host refusing us before the
//! transaction. A refused recipient, a refused sender or a message the upstream rejects as
//! such fails the same way everywhere and is not retried through the fallback.
//!
//! When the refusal concerns the whole tenant or app (everything above but size), the primary
//! is skipped for [`SKIP_PRIMARY_FOR`] so each message does not first pay for a doomed
//! connection; the log says so each time.

use crate::{DeliveryFuture, DeliveryReport, Message, Route};
use smtp2oauth_proto::{DeliveryError, Reply, Stage};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How long the primary is skipped after a tenant- or app-wide refusal.
pub const SKIP_PRIMARY_FOR: Duration = Duration::from_secs(600);

pub struct FallbackRoute {
    account: String,
    primary: Arc<dyn Route>,
    fallback: Arc<dyn Route>,
    skip_until: Mutex<Option<(Instant, Reply)>>,
}

/// Why a refusal by `route_kind` may not hold for another route: `Some(sticky)` when the
/// fallback should be tried (sticky: the refusal concerns the tenant or app, not this message).
pub fn route_specific(route_kind: &str, e: &DeliveryError) -> Option<bool> {
    let DeliveryError::Rejected { stage, reply } = e else {
        return None;
    };
    if !reply.is_permanent() {
        return None;
    }
    let status = reply.status().map(|s| (s.class, s.subject, s.detail));
    let text = reply.text();
    let size = reply.code() == 552
        || status == Some((5, 3, 4))
        || text.contains("ErrorMessageSizeExceeded");
    match route_kind {
        "smtp" => match (reply.code(), status) {
            (535, _) => Some(true),
            (530, Some((5, 7, 57))) | (550, Some((5, 7, 30))) => Some(true),
            _ if *stage == Stage::Auth => Some(true),
            _ => None,
        },
        "graph" if *stage == Stage::Http => {
            if size {
                Some(false)
            } else if [
                "ErrorAccessDenied",
                "MailboxNotEnabledForRESTAPI",
                "ErrorInvalidUser",
                "ResourceNotFound",
                "Authorization_RequestDenied",
            ]
            .iter()
            .any(|c| text.contains(c))
                || matches!(reply.code(), 550)
            {
                Some(true)
            } else {
                None
            }
        }
        "smarthost" => match status {
            Some((5, 7, 64)) | Some((5, 7, 606..=609)) | Some((5, 7, 708)) => Some(true),
            // A null MX: the tenant's domain is not where this account's mail goes.
            _ if reply.code() == 556 => Some(true),
            _ if matches!(stage, Stage::Greeting | Stage::Ehlo | Stage::StartTls) => Some(true),
            _ => None,
        },
        _ => None,
    }
}

impl FallbackRoute {
    pub fn new(account: String, primary: Arc<dyn Route>, fallback: Arc<dyn Route>) -> Self {
        FallbackRoute {
            account,
            primary,
            fallback,
            skip_until: Mutex::new(None),
        }
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
        if let Some(reply) = self.skipping() {
            info!(queue_id = %msg.id, account = %self.account, primary = p, fallback = f, primary_refused = %reply,
                "using the fallback route: the primary refused this account recently");
            return self.fallback.deliver(msg).await;
        }
        let err = match self.primary.deliver(msg).await {
            Ok(report) => return Ok(report),
            Err(e) => e,
        };
        let Some(sticky) = route_specific(p, &err) else {
            return Err(err);
        };
        let reply = err.reply();
        warn!(queue_id = %msg.id, account = %self.account, primary = p, fallback = f, upstream = %reply,
            advice = crate::advice::for_error(&err).unwrap_or(""),
            "the primary route refused the message for a reason the fallback may not share; trying the fallback");
        if sticky {
            *self.skip_until.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((Instant::now() + SKIP_PRIMARY_FOR, reply.clone()));
        }
        match self.fallback.deliver(msg).await {
            Ok(report) => {
                info!(queue_id = %msg.id, account = %self.account, fallback = f, upstream = %report.reply, "delivered through the fallback route");
                Ok(report)
            }
            Err(e) => {
                warn!(queue_id = %msg.id, account = %self.account, fallback = f, upstream = %e.reply(), primary_refused = %reply,
                    "the fallback route failed too");
                Err(e)
            }
        }
    }
}

impl Route for FallbackRoute {
    fn kind(&self) -> &'static str {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(stage: Stage, line: &str) -> DeliveryError {
        let reply = smtp2oauth_proto::ReplyAssembler::new()
            .push_line(line.as_bytes())
            .unwrap()
            .unwrap();
        DeliveryError::Rejected { stage, reply }
    }

    #[test]
    fn which_refusals_try_the_fallback() {
        let cases = [
            (
                "smtp",
                Stage::Auth,
                "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.",
                Some(true),
            ),
            (
                "smtp",
                Stage::Auth,
                "535 5.7.3 Authentication unsuccessful",
                Some(true),
            ),
            (
                "smtp",
                Stage::Mail,
                "530 5.7.57 Client not authenticated to send mail",
                Some(true),
            ),
            ("smtp", Stage::Rcpt, "550 5.1.1 User unknown", None),
            ("smtp", Stage::Body, "554 5.2.252 SendAsDenied", None),
            ("smtp", Stage::Auth, "454 4.7.0 try later", None),
            (
                "graph",
                Stage::Http,
                "552 5.3.4 Message size 5000000 exceeds the Microsoft Graph route's limit",
                Some(false),
            ),
            (
                "graph",
                Stage::Http,
                "550 5.7.1 Microsoft Graph refused to send as this mailbox (HTTP 403 ErrorAccessDenied: Access is denied.)",
                Some(true),
            ),
            (
                "graph",
                Stage::Http,
                "550 5.1.0 Microsoft Graph does not know this mailbox (HTTP 404 MailboxNotEnabledForRESTAPI: x)",
                Some(true),
            ),
            (
                "graph",
                Stage::Http,
                "554 5.6.0 Microsoft Graph refused the message (HTTP 400 ErrorMimeContentInvalidBase64String: x)",
                None,
            ),
            (
                "smarthost",
                Stage::Rcpt,
                "550 5.7.64 TenantAttribution; Relay Access Denied",
                Some(true),
            ),
            (
                "smarthost",
                Stage::Greeting,
                "554 5.7.1 go away",
                Some(true),
            ),
            (
                "smarthost",
                Stage::Rcpt,
                "550 5.1.10 RESOLVER.ADR.RecipientNotFound",
                None,
            ),
        ];
        for (kind, stage, line, want) in cases {
            assert_eq!(
                route_specific(kind, &rejected(stage, line)),
                want,
                "{kind} {line}"
            );
        }
        assert_eq!(
            route_specific(
                "smtp",
                &DeliveryError::Connect {
                    target: "x".into(),
                    detail: "refused".into()
                }
            ),
            None
        );
    }
}

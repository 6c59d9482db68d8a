//! Which upstream refusals are about the message and which about us: the one table.
//!
//! A relay must not bounce a scan for a problem an admin can fix on our side (credentials,
//! permissions, connectors, blocks of our tenant or address), and it should pause an account
//! the upstream is throttling rather than dig deeper. So every refusal is classified once,
//! where the answer is parsed: [`smtp`] for SMTP replies (Exchange Online submission, the MX
//! smart host, any other server), [`graph`] for Microsoft Graph's HTTP answers ([`graph_upload`]
//! for those in the draft conversation of a large message). They look only
//! at codes: reply code, enhanced status and the stage it answered; HTTP status and Graph's
//! JSON `error.code`. The text after a code varies between servers and releases and is never
//! read, except for two things no code carries: how long a throttling server asks us to wait,
//! and which Exchange store exception stands behind its catch-all `554 5.2.0` (an identifier
//! such as `SubmissionQuotaExceededException`, not words: the same code also refuses a
//! sender, `SendAsDeniedException`).
//!
//! The refusals and their classes come from Microsoft's public lists of Exchange Online
//! non-delivery codes and Graph `sendMail` errors; anything not listed falls back on the
//! reply class and the stage.

use crate::graph_upload::Step;
use smtp2oauth_proto::{AccountIssue, Cause, DeliveryError, EnhancedStatus, Reply, Stage};
use std::time::Duration;

/// What an SMTP refusal is about. Throttling comes back without a wait; see [`refused`].
pub fn smtp(code: u16, status: Option<EnhancedStatus>, stage: Stage) -> Cause {
    use AccountIssue::*;
    let status = status.map(|s| (s.class, s.subject, s.detail));
    let account = |issue| Cause::Account(issue);
    match (code, status) {
        (_, Some((5, 7, 139))) => account(SmtpAuthDisabled),
        (_, Some((4, 7, 66))) => account(Tls),
        (_, Some((5, 7, 64) | (4, 4, 62))) => account(Connector),
        (_, Some((5, 7, 606..=609) | (5, 7, 708))) => account(Address),
        (_, Some((5, 7, 705) | (5, 7, 750) | (5, 1, 8))) => account(SendingBlocked),
        (535, _) | (530, Some((5, 7, 57))) | (550, Some((5, 7, 30))) => account(Login),
        (430, Some((4, 2, 0))) => account(Permission),
        (421, _) | (_, Some((4, 3, 2) | (4, 7, 500..=699) | (4, 5, 3))) => {
            Cause::Throttled { retry_after: None }
        }
        (_, Some((5, 3, 4) | (5, 2, 12))) | (552, None) => Cause::TooLarge,
        (_, Some((5, 2, 252) | (5, 7, 60))) => Cause::Message,
        (_, Some((5, 1, 1) | (5, 1, 10) | (5, 4, 1) | (5, 7, 520) | (5, 7, 703))) => {
            Cause::Recipient
        }
        _ => by_stage(code, stage),
    }
}

/// A refusal no code of the table names: its class and where it came decide.
fn by_stage(code: u16, stage: Stage) -> Cause {
    if code / 100 != 5 {
        return Cause::Transient;
    }
    match stage {
        Stage::Auth => Cause::Account(AccountIssue::Login),
        // Refused before the mail transaction: the host does not take mail from us.
        Stage::Connect | Stage::Greeting | Stage::Ehlo | Stage::StartTls => {
            Cause::Account(AccountIssue::Connector)
        }
        Stage::Rcpt => Cause::Recipient,
        _ => Cause::Message,
    }
}

/// What a Graph answer other than a success is about, from its HTTP status and the JSON
/// `error.code` (empty when the body had none). Throttling comes back without a wait.
pub fn graph(status: u16, error_code: &str) -> Cause {
    use AccountIssue::*;
    match error_code {
        "ErrorMessageSizeExceeded" => return Cause::TooLarge,
        "MailboxNotEnabledForRESTAPI" | "ErrorInvalidUser" | "ResourceNotFound" => {
            return Cause::Account(Mailbox);
        }
        "ErrorAccessDenied" | "Authorization_RequestDenied" => {
            return Cause::Account(Permission);
        }
        "ErrorQuotaExceeded" => return Cause::Account(Quota),
        "ErrorSendAsDenied" | "ErrorInvalidRecipients" => return Cause::Message,
        _ => {}
    }
    match status {
        // Only a 401 to a token fetched afresh reaches here (the first is retried).
        401 => Cause::Account(Login),
        403 => Cause::Account(Permission),
        404 => Cause::Account(Mailbox),
        413 => Cause::TooLarge,
        // Graph failing pauses the account like throttling: more requests do not help it.
        429 | 500..=599 => Cause::Throttled { retry_after: None },
        408 => Cause::Transient,
        _ => Cause::Message,
    }
}

/// What a whole SMTP reply is about: [`smtp`], and what only its text can tell: the wait a
/// throttling reply asks for ("try again in 5 minutes"), and a `5.2.0` that is Exchange's
/// daily sending quota of the mailbox (`SubmissionQuotaExceededException`) rather than a
/// refusal of the message (`SendAsDeniedException` and the rest).
pub fn of_reply(stage: Stage, reply: &Reply) -> Cause {
    let status = reply.status().map(|s| (s.class, s.subject, s.detail));
    match smtp(reply.code(), reply.status(), stage) {
        Cause::Throttled { .. } => Cause::Throttled {
            retry_after: retry_hint(&reply.text()),
        },
        _ if status == Some((5, 2, 0)) && reply.text().contains("SubmissionQuotaExceeded") => {
            Cause::Account(AccountIssue::Quota)
        }
        other => other,
    }
}

/// An SMTP refusal as the error routes return: the reply, classified by [`of_reply`].
pub(crate) fn refused(stage: Stage, reply: Reply) -> DeliveryError {
    DeliveryError::Rejected {
        stage,
        cause: of_reply(stage, &reply),
        reply,
    }
}

/// A wait a server suggested in words: "retry after 30 seconds", "try again in 2 minutes".
/// Only a number that follows words about retrying counts ("from 10 minutes ago" does not).
pub fn retry_hint(text: &str) -> Option<Duration> {
    let text = text.to_ascii_lowercase();
    let words: Vec<&str> = text
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    for (i, w) in words.iter().enumerate() {
        let Ok(n) = w.parse::<u64>() else { continue };
        let secs = match words.get(i + 1).copied() {
            Some("s" | "sec" | "secs" | "second" | "seconds") => n,
            Some("m" | "min" | "mins" | "minute" | "minutes") => n.saturating_mul(60),
            Some("h" | "hour" | "hours") => n.saturating_mul(3600),
            _ => continue,
        };
        let before = &words[i.saturating_sub(4)..i];
        if before
            .iter()
            .any(|b| matches!(*b, "retry" | "again" | "after" | "wait" | "in"))
            && (1..=86_400).contains(&secs)
        {
            return Some(Duration::from_secs(secs));
        }
    }
    None
}

/// What a Graph answer in the draft conversation of a large message (`graph_upload.rs`) is
/// about: as [`graph`], except where the step changes the meaning. Throttling comes back
/// without a wait.
pub fn graph_upload(step: Step, status: u16, error_code: &str) -> Cause {
    match (step, status, error_code) {
        // The upload URL carries its own short-lived credential, not our token: a new
        // conversation gets a new URL.
        (Step::UploadChunk, 401 | 403, _) => Cause::Transient,
        // The draft (or its upload session) is gone between two requests: deleted by someone,
        // expired. The next attempt makes a new one.
        (
            Step::AddAttachment
            | Step::CreateUploadSession
            | Step::UploadChunk
            | Step::Send
            | Step::DeleteDraft,
            404,
            "ErrorItemNotFound" | "",
        ) => Cause::Transient,
        _ => graph(status, error_code),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AccountIssue::*;
    use smtp2oauth_proto::ReplyAssembler;

    fn reply(line: &str) -> Reply {
        ReplyAssembler::new()
            .push_line(line.as_bytes())
            .unwrap()
            .unwrap()
    }

    const THROTTLED: Cause = Cause::Throttled { retry_after: None };

    /// The table of the reference on Exchange Online's replies, row by row, and what falls
    /// back on the class and the stage.
    #[test]
    fn smtp_replies_table() {
        let cases: &[(&str, Stage, Cause)] = &[
            (
                "535 5.7.3 Authentication unsuccessful",
                Stage::Auth,
                Cause::Account(Login),
            ),
            (
                "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.",
                Stage::Auth,
                Cause::Account(SmtpAuthDisabled),
            ),
            (
                "535 5.7.8 Username and Password not accepted",
                Stage::Auth,
                Cause::Account(Login),
            ),
            (
                "530 5.7.57 Client not authenticated to send mail",
                Stage::Mail,
                Cause::Account(Login),
            ),
            (
                "550 5.7.30 Basic authentication is not supported",
                Stage::Auth,
                Cause::Account(Login),
            ),
            (
                "501 5.5.127 token about to expire",
                Stage::Auth,
                Cause::Account(Login),
            ),
            (
                "421 4.7.66 TLS version is not supported",
                Stage::Greeting,
                Cause::Account(Tls),
            ),
            (
                "451 4.7.500 Server busy. Please try again later",
                Stage::Mail,
                THROTTLED,
            ),
            (
                "451 4.7.699 Access denied, sender rate limited",
                Stage::Rcpt,
                THROTTLED,
            ),
            (
                "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded",
                Stage::Body,
                THROTTLED,
            ),
            (
                "421 4.3.2 Service not available",
                Stage::Greeting,
                THROTTLED,
            ),
            (
                "421 4.4.2 Connection dropped due to timeout",
                Stage::Mail,
                THROTTLED,
            ),
            ("452 4.5.3 Too many recipients", Stage::Rcpt, THROTTLED),
            // 5.2.0 alone says nothing; see `a_5_2_0_is_told_apart_by_its_exception`.
            (
                "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException",
                Stage::Body,
                Cause::Message,
            ),
            (
                "550 5.1.8 Access denied, bad outbound sender",
                Stage::Mail,
                Cause::Account(SendingBlocked),
            ),
            (
                "550 5.7.705 tenant has exceeded threshold",
                Stage::Rcpt,
                Cause::Account(SendingBlocked),
            ),
            (
                "550 5.7.750 unregistered domain",
                Stage::Mail,
                Cause::Account(SendingBlocked),
            ),
            (
                "550 5.7.708 Access denied, traffic not accepted from this IP",
                Stage::Rcpt,
                Cause::Account(Address),
            ),
            (
                "550 5.7.606 Access denied, banned sending IP",
                Stage::Greeting,
                Cause::Account(Address),
            ),
            (
                "550 5.7.64 TenantAttribution; Relay Access Denied",
                Stage::Rcpt,
                Cause::Account(Connector),
            ),
            (
                "451 4.4.62 Mail sent to the wrong Office 365 region",
                Stage::Rcpt,
                Cause::Account(Connector),
            ),
            (
                "430 4.2.0 STOREDRV; mailbox logon failure",
                Stage::Body,
                Cause::Account(Permission),
            ),
            (
                "554 5.2.252 SendAsDenied; not allowed to send as x",
                Stage::Body,
                Cause::Message,
            ),
            (
                "550 5.7.60 Client does not have permissions to send as this sender",
                Stage::Mail,
                Cause::Message,
            ),
            ("550 5.1.1 User unknown", Stage::Rcpt, Cause::Recipient),
            (
                "550 5.1.10 RESOLVER.ADR.RecipientNotFound",
                Stage::Body,
                Cause::Recipient,
            ),
            (
                "550 5.4.1 Recipient address rejected: Access denied",
                Stage::Rcpt,
                Cause::Recipient,
            ),
            (
                "550 5.7.520 Access denied, external forwarding disabled",
                Stage::Body,
                Cause::Recipient,
            ),
            (
                "550 5.7.703 tenant block list",
                Stage::Rcpt,
                Cause::Recipient,
            ),
            (
                "552 5.3.4 Message size exceeds fixed maximum message size",
                Stage::Mail,
                Cause::TooLarge,
            ),
            ("550 5.2.12 too large", Stage::Body, Cause::TooLarge),
            ("552 message too big", Stage::Body, Cause::TooLarge),
            // What the table does not name: class and stage.
            (
                "554 5.7.1 go away",
                Stage::Greeting,
                Cause::Account(Connector),
            ),
            (
                "502 5.5.1 EHLO not understood",
                Stage::Ehlo,
                Cause::Account(Connector),
            ),
            (
                "554 5.7.0 no TLS for you",
                Stage::StartTls,
                Cause::Account(Connector),
            ),
            (
                "504 5.7.4 Unrecognized authentication type",
                Stage::Auth,
                Cause::Account(Login),
            ),
            ("550 5.7.1 Unable to relay", Stage::Rcpt, Cause::Recipient),
            (
                "554 5.6.0 Corrupt message content",
                Stage::Body,
                Cause::Message,
            ),
            (
                "550 5.7.1 Delivery not authorized",
                Stage::Mail,
                Cause::Message,
            ),
            (
                "451 4.3.0 Mail server temporarily rejected message",
                Stage::Body,
                Cause::Transient,
            ),
            (
                "454 4.7.0 Temporary authentication failure",
                Stage::Auth,
                Cause::Transient,
            ),
            (
                "451 4.4.2 lost 10 minutes ago",
                Stage::Body,
                Cause::Transient,
            ),
            (
                "250 odd reply to STARTTLS",
                Stage::StartTls,
                Cause::Transient,
            ),
        ];
        for (line, stage, want) in cases {
            let r = reply(line);
            assert_eq!(
                smtp(r.code(), r.status(), *stage),
                *want,
                "{line} at {stage}"
            );
        }
    }

    /// Exchange answers both a used-up sending quota and a refused sender with `554 5.2.0`;
    /// only the store exception's name tells them apart. The quota is the account's (it
    /// passes within a day: the message waits), the sender is the message's (final).
    #[test]
    fn a_5_2_0_is_told_apart_by_its_exception() {
        let cause = |line: &str| of_reply(Stage::Body, &reply(line));
        assert_eq!(
            cause(
                "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message due to a permanent exception with message Cannot submit message."
            ),
            Cause::Account(Quota)
        );
        assert_eq!(
            cause(
                "554 5.2.0 STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied; Failed to process message due to a permanent exception with message Cannot submit message."
            ),
            Cause::Message
        );
        assert_eq!(cause("554 5.2.0 something else"), Cause::Message);
        assert_eq!(
            refused(
                Stage::Body,
                reply("554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException")
            )
            .cause(),
            Cause::Account(Quota)
        );
    }

    #[test]
    fn graph_answers_table() {
        let cases: &[(u16, &str, Cause)] = &[
            (401, "InvalidAuthenticationToken", Cause::Account(Login)),
            (403, "ErrorAccessDenied", Cause::Account(Permission)),
            (
                403,
                "Authorization_RequestDenied",
                Cause::Account(Permission),
            ),
            (403, "", Cause::Account(Permission)),
            (403, "ErrorSendAsDenied", Cause::Message),
            (404, "ErrorInvalidUser", Cause::Account(Mailbox)),
            (404, "ResourceNotFound", Cause::Account(Mailbox)),
            (404, "MailboxNotEnabledForRESTAPI", Cause::Account(Mailbox)),
            (404, "", Cause::Account(Mailbox)),
            (400, "ErrorInvalidRecipients", Cause::Message),
            (400, "ErrorMimeContentInvalidBase64String", Cause::Message),
            (400, "ErrorMessageSizeExceeded", Cause::TooLarge),
            (413, "", Cause::TooLarge),
            (429, "ApplicationThrottled", THROTTLED),
            (429, "MailboxConcurrency", THROTTLED),
            (503, "", THROTTLED),
            (504, "", THROTTLED),
            (500, "", THROTTLED),
            (507, "ErrorQuotaExceeded", Cause::Account(Quota)),
            (408, "", Cause::Transient),
            (418, "", Cause::Message),
        ];
        for (status, code, want) in cases {
            assert_eq!(graph(*status, code), *want, "{status} {code}");
        }
    }

    /// The draft conversation: `sendMail`'s table, except an upload URL's own credential and a
    /// draft that vanished between requests, which the next attempt does not meet again.
    #[test]
    fn graph_upload_answers_table() {
        use Step::*;
        let cases: &[(Step, u16, &str, Cause)] = &[
            (
                CreateDraft,
                403,
                "ErrorAccessDenied",
                Cause::Account(Permission),
            ),
            (
                AddAttachment,
                403,
                "ErrorAccessDenied",
                Cause::Account(Permission),
            ),
            (
                CreateUploadSession,
                403,
                "ErrorAccessDenied",
                Cause::Account(Permission),
            ),
            (Send, 403, "ErrorAccessDenied", Cause::Account(Permission)),
            (
                CreateDraft,
                401,
                "InvalidAuthenticationToken",
                Cause::Account(Login),
            ),
            (UploadChunk, 401, "", Cause::Transient),
            (UploadChunk, 403, "", Cause::Transient),
            (UploadChunk, 429, "ApplicationThrottled", THROTTLED),
            (UploadChunk, 503, "", THROTTLED),
            (CreateDraft, 429, "ApplicationThrottled", THROTTLED),
            (
                AddAttachment,
                413,
                "ErrorMessageSizeExceeded",
                Cause::TooLarge,
            ),
            (
                CreateUploadSession,
                413,
                "ErrorMessageSizeExceeded",
                Cause::TooLarge,
            ),
            (Send, 400, "ErrorMessageSizeExceeded", Cause::TooLarge),
            (AddAttachment, 404, "ErrorItemNotFound", Cause::Transient),
            (Send, 404, "ErrorItemNotFound", Cause::Transient),
            (UploadChunk, 404, "", Cause::Transient),
            (
                CreateDraft,
                404,
                "ErrorInvalidUser",
                Cause::Account(Mailbox),
            ),
            (
                CreateDraft,
                404,
                "MailboxNotEnabledForRESTAPI",
                Cause::Account(Mailbox),
            ),
            (Send, 403, "ErrorSendAsDenied", Cause::Message),
            (
                CreateDraft,
                400,
                "ErrorMimeContentInvalidBase64String",
                Cause::Message,
            ),
        ];
        for (step, status, code, want) in cases {
            assert_eq!(
                graph_upload(*step, *status, code),
                *want,
                "{step} {status} {code}"
            );
        }
    }

    #[test]
    fn throttling_replies_carry_the_wait_they_ask_for() {
        let cause = |line: &str| refused(Stage::Mail, reply(line)).cause();
        assert_eq!(
            cause("451 4.7.500 Server busy, retry after 30 seconds"),
            Cause::Throttled {
                retry_after: Some(Duration::from_secs(30))
            }
        );
        assert_eq!(
            cause("421 4.7.0 Try again in 2 minutes"),
            Cause::Throttled {
                retry_after: Some(Duration::from_secs(120))
            }
        );
        assert_eq!(
            cause("451 4.7.500 Server busy. Please try again later"),
            THROTTLED
        );
        // A number that is not a wait, in a reply that is not throttling.
        assert_eq!(cause("451 4.4.2 lost 10 minutes ago"), Cause::Transient);
        assert_eq!(retry_hint("lost 10 minutes ago"), None);
        assert_eq!(retry_hint("wait 99999 hours"), None);
    }
}

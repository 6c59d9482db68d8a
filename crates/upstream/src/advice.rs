//! Plain-words advice for upstream refusals admins meet in practice.
//!
//! An admin reading "535 5.7.139" at 7 a.m. wants to know what to click, not what RFC 3463
//! says. Advice is chosen from what a refusal is about (its cause, from `cause.rs`), refined by
//! its code and enhanced status; never from its text. `docs/troubleshooting.md` explains the
//! same cases for admins.

use crate::cause;
use smtp2oauth_proto::{AccountIssue, Cause, DeliveryError, Reply, Stage};

/// Advice for any delivery failure, if we know the case.
pub fn for_error(e: &DeliveryError) -> Option<&'static str> {
    match e {
        DeliveryError::Rejected {
            stage,
            reply,
            cause,
        } => for_refusal(*cause, *stage, reply),
        DeliveryError::Dns { .. } => Some(
            "the smart host's name could not be resolved: check mx_domain / smarthost_host and dns_servers (or /etc/resolv.conf)",
        ),
        DeliveryError::Connect { .. } => Some(
            "the upstream is not reachable: check DNS, the firewall (outbound port 587 or 465 for SMTP, 443 for Graph, 25 for a smart host) and the host/port settings",
        ),
        DeliveryError::Tls { .. } => Some(
            "TLS with the upstream failed: check smtp_tls, the system clock, and ca_file if a proxy inspects TLS",
        ),
        DeliveryError::Token { .. } if e.needs_sign_in() => Some(
            "the account needs a new sign-in: use Sign in on the accounts page or run `smtp2oauth account login <account>`; queued mail goes out afterwards",
        ),
        DeliveryError::Token { .. } => Some(
            "no access token: see the token endpoint error above (client secret, tenant, client_id, network)",
        ),
        _ => None,
    }
}

/// Advice for one recipient's refusal within a delivery that went through for others.
pub fn for_recipient(reply: &Reply) -> Option<&'static str> {
    let cause = cause::of_reply(Stage::Rcpt, reply);
    for_refusal(cause, Stage::Rcpt, reply)
}

/// Advice for a refusal: by what it is about, then by its code and status. Graph's answers
/// are the ones at [`Stage::Http`].
pub fn for_refusal(cause: Cause, stage: Stage, reply: &Reply) -> Option<&'static str> {
    let status = reply.status().map(|s| (s.class, s.subject, s.detail));
    let graph = stage == Stage::Http;
    match cause {
        Cause::Account(issue) => for_account(issue, graph, reply.code(), status),
        Cause::Throttled { .. } if graph => Some(
            "Graph is throttling this mailbox or unavailable; deliveries of the account pause for the time Graph asked (Retry-After) and then resume",
        ),
        Cause::Throttled { .. } if status == Some((4, 3, 2)) && reply.code() == 432 => {
            Some("too many concurrent connections for this mailbox (Exchange allows 3)")
        }
        Cause::Throttled { .. } => Some(
            "the mailbox is being throttled (Exchange allows 30 messages a minute and 3 connections); mail will be retried",
        ),
        Cause::TooLarge if graph => Some(
            "the message is larger than this Graph route sends: one request carries about 3 MB of message, so set graph_large_messages = \"upload\" (needs Mail.ReadWrite) or fallback_route = \"smtp\"; with \"upload\" the limit is the mailbox's own (Set-Mailbox -MaxSendSize: 35 MB by default, at most 150 MB)",
        ),
        Cause::TooLarge => Some("the message is larger than the upstream accepts"),
        Cause::Message => for_message(graph, reply.code(), status),
        Cause::Recipient if matches!(status, Some((5, 7, 1))) => Some(
            "the upstream refused this recipient by policy (5.7.1); from a smart host this usually means it does not relay for us: create an inbound connector (\"Your organization's email server\" → Microsoft 365) identified by this office's public IP or certificate",
        ),
        Cause::Recipient | Cause::Transient => None,
    }
}

fn for_account(
    issue: AccountIssue,
    graph: bool,
    code: u16,
    status: Option<(u8, u16, u16)>,
) -> Option<&'static str> {
    use AccountIssue::*;
    Some(match issue {
        SmtpAuthDisabled => {
            "SMTP AUTH is disabled for the mailbox or tenant: run Set-CASMailbox -Identity <mailbox> -SmtpClientAuthenticationDisabled $false (and check the tenant-wide setting)"
        }
        Login => return for_login(graph, code, status),
        Permission if graph => {
            "Graph refused the app (ErrorAccessDenied): grant the application permission Mail.Send (Microsoft Graph) with admin consent, and Mail.ReadWrite too with graph_large_messages = \"upload\" (a large message goes through a draft, a write to the mailbox); check that an application access policy or RBAC for Applications scope includes this mailbox"
        }
        Permission => {
            "mailbox logon failure: the app lacks FullAccess on the mailbox (Add-MailboxPermission), or the mailbox is not licensed"
        }
        Mailbox => {
            "Graph does not know this mailbox: check the account's mailbox address, and that it is in Exchange Online with a licence (MailboxNotEnabledForRESTAPI: on-premises, unlicensed or inactive)"
        }
        Connector => return for_connector(code, status),
        Address if status == Some((5, 7, 708)) => {
            "Exchange Online refuses mail from this IP address (poor reputation, typically a dynamic or shared address): relay from a fixed public IP with an inbound connector, or use route = \"graph\" or \"smtp\""
        }
        Address => {
            "Exchange Online Protection refused this sending IP address (banned or listed): check the office's public IP reputation, delist it in the Microsoft delist portal, and use an inbound connector for it"
        }
        SendingBlocked if status == Some((5, 1, 8)) => {
            "the mailbox is blocked from sending (bad outbound sender): release it under Restricted entities in Microsoft Defender, and find out why it sent spam"
        }
        SendingBlocked => {
            "the tenant is blocked from sending (threshold exceeded or unregistered domain): check the tenant's sending limits and accepted domains in the Microsoft 365 admin center"
        }
        Quota => {
            "the mailbox reached its sending quota (10,000 recipients a day in Exchange Online): mail goes out once the window passes; spread devices over more mailboxes"
        }
        Tls => {
            "the upstream refused our TLS version: check that nothing between here and the upstream downgrades TLS"
        }
        SignIn => {
            "the account needs a new sign-in: use Sign in on the accounts page or run `smtp2oauth account login <account>`; queued mail goes out afterwards"
        }
        AppRegistration => {
            "no access token: see the token endpoint error above (client secret, tenant, client_id, network)"
        }
    })
}

fn for_login(graph: bool, code: u16, status: Option<(u8, u16, u16)>) -> Option<&'static str> {
    Some(match (code, status) {
        _ if graph => {
            "Graph refused the access token twice: check that the token scope is https://graph.microsoft.com/.default and the app has admin consent for Mail.Send"
        }
        (535, Some((5, 7, 8))) => {
            "Google refused the token: check the account, the scope https://mail.google.com/ and that the user consented"
        }
        (530, Some((5, 7, 57))) => {
            "the upstream did not see an authenticated session: check smtp_tls and that AUTH XOAUTH2 succeeded"
        }
        (550, Some((5, 7, 30))) => {
            "basic authentication is off for this tenant: this is what smtp2oauth replaces; check that the account uses route = \"smtp\" with XOAUTH2"
        }
        (501, Some((5, 5, 127))) => {
            "the token was about to expire; smtp2oauth refreshes early, so check the clock of this machine"
        }
        _ => {
            "the token was refused: check the service principal (New-ServicePrincipal with the Enterprise Application's object id), Add-MailboxPermission FullAccess for the mailbox, and that tenant and mailbox are right"
        }
    })
}

fn for_connector(code: u16, status: Option<(u8, u16, u16)>) -> Option<&'static str> {
    Some(match (code, status) {
        (_, Some((5, 7, 64))) => {
            "TenantAttribution: no inbound connector matched this relay; check the connector's sender IP address (this office's public IP) or its certificate subject (tls_client_cert_file), and that the sender domain belongs to the tenant"
        }
        (556, _) => {
            "mx_domain publishes a null MX (it accepts no mail): check mx_domain; for Microsoft 365 use the tenant's accepted domain"
        }
        (_, Some((4, 4, 62))) => {
            "the mail went to another Microsoft 365 region than the tenant's: check mx_domain (the tenant's accepted domain) and the inbound connector"
        }
        _ => {
            "the upstream refused this relay before the mail transaction: for a smart host, create an inbound connector (\"Your organization's email server\" → Microsoft 365) identified by this office's public IP or certificate"
        }
    })
}

fn for_message(graph: bool, code: u16, status: Option<(u8, u16, u16)>) -> Option<&'static str> {
    Some(match (code, status) {
        (554, Some((5, 2, 252))) => {
            "SendAsDenied: the sender is not the mailbox; set rewrite_sender = true, or grant Send As and list the address in allowed_senders"
        }
        (550, Some((5, 7, 60))) => {
            "no permission to send as this sender: grant Send As on the mailbox, or set rewrite_sender = true"
        }
        (_, Some((5, 7, 1))) if graph => {
            "Graph refused the sender (ErrorSendAsDenied): the From: is not the mailbox; set rewrite_sender = true, or grant Send As"
        }
        _ if graph => {
            "Graph could not read the message; keep the message from failed/ and report it as a smtp2oauth bug"
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cause::refused;
    use crate::graph::refusal;

    fn smtp(stage: Stage, line: &str) -> DeliveryError {
        refused(
            stage,
            smtp2oauth_proto::ReplyAssembler::new()
                .push_line(line.as_bytes())
                .unwrap()
                .unwrap(),
        )
    }

    fn graph(status: u16, code: &str, retry_after: Option<u64>) -> DeliveryError {
        let body = format!(r#"{{"error":{{"code":"{code}","message":"x"}}}}"#);
        refusal(
            status,
            retry_after.map(std::time::Duration::from_secs),
            body.as_bytes(),
        )
    }

    #[test]
    fn known_refusals_get_advice() {
        let cases = [
            (
                smtp(
                    Stage::Auth,
                    "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.",
                ),
                "Set-CASMailbox",
            ),
            (
                smtp(Stage::Auth, "535 5.7.3 Authentication unsuccessful [X]"),
                "service principal",
            ),
            (
                smtp(Stage::Auth, "535 5.7.8 Username and Password not accepted"),
                "Google",
            ),
            (
                smtp(
                    Stage::Body,
                    "554 5.2.252 SendAsDenied; scanner@printer.local not allowed to send as x",
                ),
                "rewrite_sender",
            ),
            (
                smtp(
                    Stage::Mail,
                    "451 4.7.500 Server busy. Please try again later",
                ),
                "throttled",
            ),
            (
                smtp(
                    Stage::Body,
                    "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded",
                ),
                "concurrent",
            ),
            (
                smtp(
                    Stage::Rcpt,
                    "550 5.7.64 TenantAttribution; Relay Access Denied",
                ),
                "connector",
            ),
            (
                smtp(
                    Stage::Mail,
                    "530 5.7.57 Client not authenticated to send mail",
                ),
                "smtp_tls",
            ),
            (
                smtp(
                    Stage::Greeting,
                    "550 5.7.606 Access denied, banned sending IP [203.0.113.9]",
                ),
                "delist",
            ),
            (
                smtp(
                    Stage::Rcpt,
                    "550 5.7.708 Service unavailable. Access denied, traffic not accepted from this IP",
                ),
                "inbound connector",
            ),
            (
                smtp(Stage::Mail, "550 5.1.8 Access denied, bad outbound sender"),
                "Restricted entities",
            ),
            (
                smtp(
                    Stage::Body,
                    "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException",
                ),
                "quota",
            ),
            (smtp(Stage::Body, "552 5.3.4 too big"), "larger"),
            (graph(403, "ErrorAccessDenied", None), "Mail.Send"),
            (graph(403, "ErrorAccessDenied", None), "Mail.ReadWrite"),
            (graph(413, "ErrorMessageSizeExceeded", None), "\"upload\""),
            (graph(404, "MailboxNotEnabledForRESTAPI", None), "licence"),
            (
                graph(400, "ErrorMessageSizeExceeded", None),
                "fallback_route",
            ),
            (graph(429, "ApplicationThrottled", Some(5)), "Retry-After"),
            (graph(401, "InvalidAuthenticationToken", None), "scope"),
            (graph(403, "ErrorSendAsDenied", None), "rewrite_sender"),
            (
                graph(400, "ErrorMimeContentInvalidBase64String", None),
                "bug",
            ),
            (
                DeliveryError::Dns {
                    target: "MX of contoso.com".into(),
                    detail: "no records".into(),
                },
                "mx_domain",
            ),
        ];
        for (e, needle) in cases {
            let a = for_error(&e).unwrap_or_else(|| panic!("no advice for {e}"));
            assert!(a.contains(needle), "{e}: {a}");
        }
        assert!(for_error(&smtp(Stage::Rcpt, "550 5.1.1 User unknown")).is_none());
    }

    #[test]
    fn recipients_get_advice_by_their_code() {
        let reply = |line: &str| {
            smtp2oauth_proto::ReplyAssembler::new()
                .push_line(line.as_bytes())
                .unwrap()
                .unwrap()
        };
        assert!(
            for_recipient(&reply("550 5.7.1 Unable to relay"))
                .is_some_and(|a| a.contains("connector"))
        );
        assert!(for_recipient(&reply("550 5.1.1 User unknown")).is_none());
        assert!(
            for_recipient(&reply("550 5.7.708 Access denied")).is_some_and(|a| a.contains("IP"))
        );
    }
}

//! Plain-words advice for upstream refusals admins meet in practice.
//!
//! An admin reading "535 5.7.139" at 7 a.m. wants to know what to click, not what RFC 3463
//! says. `docs/troubleshooting.md` explains the same cases for admins.

use smtp2oauth_proto::{DeliveryError, Reply};

/// Advice for a reply from Exchange Online, Gmail or a smart host, if we know it.
pub fn for_reply(reply: &Reply) -> Option<&'static str> {
    let status = reply.status().map(|s| (s.class, s.subject, s.detail));
    let text = reply.text().to_ascii_lowercase();
    // Microsoft Graph's error codes travel in our reply's text (graph.rs).
    if text.contains("microsoft graph")
        && let Some(a) = for_graph(&text)
    {
        return Some(a);
    }
    Some(match (reply.code(), status) {
        (535, Some((5, 7, 139))) => {
            "SMTP AUTH is disabled for the mailbox or tenant: run Set-CASMailbox -Identity <mailbox> -SmtpClientAuthenticationDisabled $false (and check the tenant-wide setting)"
        }
        (535, Some((5, 7, 3))) => {
            "the token was refused: check the service principal (New-ServicePrincipal with the Enterprise Application's object id), Add-MailboxPermission FullAccess for the mailbox, and that tenant and mailbox are right"
        }
        (535, _) if text.contains("username and password not accepted") => {
            "Google refused the token: check the account, the scope https://mail.google.com/ and that the user consented"
        }
        (554, Some((5, 2, 252))) => {
            "SendAsDenied: the sender is not the mailbox; set rewrite_sender = true, or grant Send As and list the address in allowed_senders"
        }
        (550, Some((5, 7, 60))) => {
            "no permission to send as this sender: grant Send As on the mailbox, or set rewrite_sender = true"
        }
        (530, Some((5, 7, 57))) => {
            "the upstream did not see an authenticated session: check smtp_tls and that AUTH XOAUTH2 succeeded"
        }
        (430, Some((4, 2, 0))) => {
            "mailbox logon failure: the app lacks FullAccess on the mailbox (Add-MailboxPermission), or the mailbox is not licensed"
        }
        (451, Some((4, 7, 500))) | (421, _)
            if text.contains("busy") || text.contains("throttl") =>
        {
            "the mailbox is being throttled (Exchange allows 30 messages a minute and 3 connections); mail will be retried"
        }
        (432, Some((4, 3, 2))) => {
            "too many concurrent connections for this mailbox (Exchange allows 3)"
        }
        (550, Some((5, 7, 64))) => {
            "TenantAttribution: no inbound connector matched this relay; check the connector's sender IP address (this office's public IP) or its certificate subject (tls_client_cert_file), and that the sender domain belongs to the tenant"
        }
        (550, Some((5, 7, 606..=609))) => {
            "Exchange Online Protection refused this sending IP address (banned or listed): check the office's public IP reputation, delist it in the Microsoft delist portal, and use an inbound connector for it"
        }
        (550, Some((5, 7, 708))) => {
            "Exchange Online refuses mail from this IP address (poor reputation, typically a dynamic or shared address): relay from a fixed public IP with an inbound connector, or use route = \"graph\" or \"smtp\""
        }
        (550, Some((5, 7, 1))) | (554, Some((5, 7, 1))) if text.contains("relay") => {
            "the smart host does not relay for us: create an inbound connector (\"Your organization's email server\" → Microsoft 365) identified by this office's public IP or certificate"
        }
        (556, Some((5, 1, 10))) => {
            "mx_domain publishes a null MX (it accepts no mail): check mx_domain; for Microsoft 365 use the tenant's accepted domain"
        }
        (550, Some((5, 7, 30))) => {
            "basic authentication is off for this tenant: this is what smtp2oauth replaces; check that the account uses route = \"smtp\" with XOAUTH2"
        }
        (552, _) | (550, Some((5, 2, 12))) => "the message is larger than the upstream accepts",
        (501, Some((5, 5, 127))) => {
            "the token was about to expire; smtp2oauth refreshes early, so check the clock of this machine"
        }
        _ => return None,
    })
}

/// Advice for Microsoft Graph's refusals (our reply text carries Graph's error code).
fn for_graph(text: &str) -> Option<&'static str> {
    Some(
        if text.contains("erroraccessdenied") || text.contains("http 403") {
            "Graph refused the app (ErrorAccessDenied): grant the application permission Mail.Send (Microsoft Graph) with admin consent, and check that an application access policy or RBAC for Applications scope includes this mailbox"
        } else if text.contains("mailboxnotenabledforrestapi") {
            "MailboxNotEnabledForRESTAPI: the mailbox is not in Exchange Online (on-premises, not licensed, or inactive); give it an Exchange Online licence or use another mailbox"
        } else if text.contains("errormessagesizeexceeded")
            || text.contains("too large")
            || text.contains("route's limit")
        {
            "the message is larger than Graph accepts in one request (about 4 MB, 3 MB of message): set fallback_route = \"smtp\" so large mail goes over SMTP, or lower the device's scan resolution"
        } else if text.contains("http 401") {
            "Graph refused the access token twice: check that the token scope is https://graph.microsoft.com/.default and the app has admin consent for Mail.Send"
        } else if text.contains("http 429") || text.contains("http 503") {
            "Graph is throttling this mailbox or unavailable; deliveries of the account pause for the time Graph asked (Retry-After) and then resume"
        } else if text.contains("errormimecontentinvalidbase64string") || text.contains("http 400")
        {
            "Graph could not read the message; keep the message from failed/ and report it as a smtp2oauth bug"
        } else if text.contains("http 404") || text.contains("errorinvaliduser") {
            "Graph does not know this mailbox: check the account's mailbox address"
        } else {
            return None;
        },
    )
}

/// Advice for any delivery failure.
pub fn for_error(e: &DeliveryError) -> Option<&'static str> {
    match e {
        DeliveryError::Rejected { reply, .. } => for_reply(reply),
        DeliveryError::Connect { detail, .. } if detail.starts_with("DNS lookup failed") => Some(
            "the smart host's name could not be resolved: check mx_domain / smarthost_host and dns_servers (or /etc/resolv.conf)",
        ),
        DeliveryError::Connect { .. } => Some(
            "the upstream is not reachable: check DNS, the firewall (outbound port 587 or 465 for SMTP, 443 for Graph, 25 for a smart host) and the host/port settings",
        ),
        DeliveryError::Tls { .. } => Some(
            "TLS with the upstream failed: check smtp_tls, the system clock, and ca_file if a proxy inspects TLS",
        ),
        DeliveryError::Token {
            sign_in_required: true,
            ..
        } => Some(
            "the account needs a new sign-in: use Sign in on the accounts page or run `smtp2oauth account login <account>`; queued mail goes out afterwards",
        ),
        DeliveryError::Token { .. } => Some(
            "no access token: see the token endpoint error above (client secret, tenant, client_id, network)",
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(s: &str) -> Reply {
        smtp2oauth_proto::ReplyAssembler::new()
            .push_line(s.as_bytes())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn known_replies_get_advice() {
        for (line, needle) in [
            (
                "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.",
                "Set-CASMailbox",
            ),
            (
                "535 5.7.3 Authentication unsuccessful [X]",
                "service principal",
            ),
            (
                "554 5.2.252 SendAsDenied; scanner@printer.local not allowed to send as x",
                "rewrite_sender",
            ),
            (
                "451 4.7.500 Server busy. Please try again later",
                "throttled",
            ),
            (
                "550 5.7.64 TenantAttribution; Relay Access Denied",
                "connector",
            ),
            (
                "530 5.7.57 Client not authenticated to send mail",
                "smtp_tls",
            ),
            (
                "550 5.7.606 Access denied, banned sending IP [203.0.113.9]",
                "delist",
            ),
            (
                "550 5.7.708 Service unavailable. Access denied, traffic not accepted from this IP",
                "inbound connector",
            ),
            (
                "550 5.7.1 Microsoft Graph refused to send as this mailbox (HTTP 403 ErrorAccessDenied: Access is denied.)",
                "Mail.Send",
            ),
            (
                "550 5.1.0 Microsoft Graph does not know this mailbox (HTTP 404 MailboxNotEnabledForRESTAPI: REST API is not yet supported for this mailbox.)",
                "licence",
            ),
            (
                "552 5.3.4 Microsoft Graph refused the message as too large (HTTP 400 ErrorMessageSizeExceeded: x)",
                "fallback_route",
            ),
            (
                "451 4.7.500 Retry after 5 seconds: Microsoft Graph is throttling this mailbox (HTTP 429)",
                "Retry-After",
            ),
        ] {
            let a = for_reply(&reply(line)).unwrap_or_else(|| panic!("no advice for {line}"));
            assert!(a.contains(needle), "{line}: {a}");
        }
        assert!(for_reply(&reply("250 2.0.0 OK")).is_none());
    }
}

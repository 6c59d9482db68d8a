//! Plain-words advice for upstream refusals admins meet in practice.
//!
//! An admin reading "535 5.7.139" at 7 a.m. wants to know what to click, not what RFC 3463
//! says. `docs/troubleshooting.md` explains the same cases for admins.

use smtp2oauth_proto::{DeliveryError, Reply};

/// Advice for a reply from Exchange Online, Gmail or a smart host, if we know it.
pub fn for_reply(reply: &Reply) -> Option<&'static str> {
    let status = reply.status().map(|s| (s.class, s.subject, s.detail));
    let text = reply.text().to_ascii_lowercase();
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
        (550, Some((5, 7, 64))) | (550, Some((5, 7, 606..=609))) | (550, Some((5, 7, 708))) => {
            "the connector does not accept mail from this address: check the inbound connector's IP or certificate and SPF"
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

/// Advice for any delivery failure.
pub fn for_error(e: &DeliveryError) -> Option<&'static str> {
    match e {
        DeliveryError::Rejected { reply, .. } => for_reply(reply),
        DeliveryError::Connect { .. } => Some(
            "the upstream is not reachable: check DNS, the firewall (outbound port 587 or 465) and smtp_host/smtp_port",
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
        ] {
            let a = for_reply(&reply(line)).unwrap_or_else(|| panic!("no advice for {line}"));
            assert!(a.contains(needle), "{line}: {a}");
        }
        assert!(for_reply(&reply("250 2.0.0 OK")).is_none());
    }
}

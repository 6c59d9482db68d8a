//! What a delivery failure is about, as data: the queue, the fallback route and the advice in
//! log lines act on a [`Cause`], never on the words of a reply.
//!
//! The same reply code means different things from different peers, and the text after it
//! varies, so a cause is decided once, where the upstream's answer is parsed (the upstream
//! crate's table for SMTP replies and Graph answers), and travels with the reply from there.

use std::time::Duration;

/// What a refusal or failure is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cause {
    /// The upstream is slowing this account down; `retry_after` when it said for how long.
    Throttled {
        /// The wait the upstream asked for (Graph's `Retry-After`, a hint in an SMTP reply).
        retry_after: Option<Duration>,
    },
    /// Our side: credentials, permissions, connector, tenant or address blocks. The message is
    /// fine and an admin can fix the cause.
    Account(AccountIssue),
    /// The message itself (its sender, its content).
    Message,
    /// The recipient (unknown, refused by policy).
    Recipient,
    /// The message is larger than this route takes (another route may take it).
    TooLarge,
    /// Anything else that may pass later: timeouts, lost connections, other 4xx.
    Transient,
}

/// Which part of our side an upstream refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AccountIssue {
    /// A person must sign in again (the refresh token was revoked or expired).
    SignIn,
    /// The token endpoint refuses the app: client secret or certificate, tenant, client id,
    /// scope.
    AppRegistration,
    /// The upstream refused our login or token: `535 5.7.3`, `530 5.7.57`, `550 5.7.30`, any
    /// other 5xx to AUTH, Graph's 401 to a token fetched afresh.
    Login,
    /// SMTP AUTH is disabled for the mailbox or the tenant: `535 5.7.139`.
    SmtpAuthDisabled,
    /// The app lacks a permission on the mailbox: Graph's 403 `ErrorAccessDenied`, `430 4.2.0`.
    Permission,
    /// The mailbox does not exist for this route or is not enabled for it: Graph's 404,
    /// `MailboxNotEnabledForRESTAPI`.
    Mailbox,
    /// The smart host does not recognise us: no connector matched (`5.7.64`), the wrong region
    /// (`4.4.62`), a null MX, or a refusal before the mail transaction.
    Connector,
    /// Our public IP address is refused: `5.7.606`-`5.7.609`, `5.7.708`.
    Address,
    /// The tenant or the mailbox is blocked from sending: `5.7.705`, `5.7.750`, `5.1.8`.
    SendingBlocked,
    /// The mailbox's sending quota is used up: `554 5.2.0`.
    Quota,
    /// Our TLS does not meet the upstream's requirements: `421 4.7.66`.
    Tls,
}

impl Cause {
    /// True when the refusal is about our side (credentials, permissions, connector, blocks of
    /// our tenant or address): the message is fine and waits for an admin to fix the cause.
    pub fn is_account(self) -> bool {
        matches!(self, Cause::Account(_))
    }

    /// True when a 5xx with this cause settles the message (or the recipient) for good: only
    /// what is about the message itself. A refusal of our account or a throttling reply passes
    /// once the cause is fixed or over, whatever its code.
    pub fn fails_message(self) -> bool {
        matches!(
            self,
            Cause::Message | Cause::Recipient | Cause::TooLarge | Cause::Transient
        )
    }
}

//! Every reply smtp2oauth sends, and the one mapping from our failure enums to SMTP replies.
//!
//! Devices act on the first digit (retry or give up) and admins read the enhanced code and text,
//! so the choice of code for each situation is a product decision. Keeping all of them in one file
//! makes that decision reviewable in one place, and keeps crates from inventing their own.

use crate::cause::{AccountIssue, Cause};
use crate::reply::{EnhancedStatus, Reply};
use std::fmt;

fn r(code: u16, status: (u8, u16, u16), text: impl AsRef<str>) -> Reply {
    Reply::with_status(code, status, text)
}

/// Replies of a normal session.
pub mod ok {
    use super::*;

    /// `220`: the first thing a client reads.
    pub fn greeting(hostname: &str) -> Reply {
        Reply::new(220, None, format!("{hostname} ESMTP smtp2oauth ready"))
    }
    /// The reply to HELO.
    pub fn helo(hostname: &str, peer: &str) -> Reply {
        Reply::new(250, None, format!("{hostname} Hello {peer}"))
    }
    /// `250 2.0.0 OK`.
    pub fn ok() -> Reply {
        r(250, (2, 0, 0), "OK")
    }
    /// The reply to RSET.
    pub fn reset() -> Reply {
        r(250, (2, 0, 0), "Reset state")
    }
    /// The reply to an accepted MAIL.
    pub fn sender_ok() -> Reply {
        r(250, (2, 1, 0), "Sender OK")
    }
    /// The reply to an accepted RCPT.
    pub fn recipient_ok() -> Reply {
        r(250, (2, 1, 5), "Recipient OK")
    }
    /// `354`: send the message.
    pub fn start_data() -> Reply {
        Reply::new(354, None, "End data with <CR><LF>.<CR><LF>")
    }
    /// The reply to QUIT.
    pub fn bye() -> Reply {
        r(221, (2, 0, 0), "Bye")
    }
    /// `252`: VRFY is answered without disclosing anything.
    pub fn vrfy() -> Reply {
        r(
            252,
            (2, 5, 0),
            "Cannot VRFY user, but will accept message and attempt delivery",
        )
    }
    /// The reply to HELP.
    pub fn help() -> Reply {
        Reply::multiline(
            214,
            Some(EnhancedStatus::new(2, 0, 0)),
            vec![
                "smtp2oauth relays mail from devices to Microsoft 365 and other OAuth 2.0 mail services".into(),
                "Commands: EHLO HELO AUTH STARTTLS MAIL RCPT DATA RSET NOOP VRFY HELP QUIT".into(),
            ],
        )
    }
    /// `220`: go ahead with the TLS handshake.
    pub fn start_tls() -> Reply {
        r(220, (2, 0, 0), "Ready to start TLS")
    }
    /// The empty challenge that asks for an AUTH PLAIN response.
    pub fn auth_plain_challenge() -> Reply {
        Reply::new(334, None, "")
    }
    /// `334 VXNlcm5hbWU6` ("Username:"): some devices give up on any other prompt.
    pub fn auth_login_username() -> Reply {
        Reply::new(334, None, "VXNlcm5hbWU6")
    }
    /// `334 UGFzc3dvcmQ6` ("Password:").
    pub fn auth_login_password() -> Reply {
        Reply::new(334, None, "UGFzc3dvcmQ6")
    }
    /// `235`: the device is logged in.
    pub fn auth_success() -> Reply {
        r(235, (2, 7, 0), "Authentication successful")
    }
    /// The device's message was delivered (or captured) while it waited.
    pub fn delivered(queue_id: &str) -> Reply {
        r(250, (2, 0, 0), format!("OK: delivered as {queue_id}"))
    }
    /// Delivered to some recipients; the others were refused by the upstream.
    pub fn delivered_partially(queue_id: &str, accepted: usize, total: usize) -> Reply {
        r(
            250,
            (2, 0, 0),
            format!(
                "OK: delivered as {queue_id} to {accepted} of {total} recipients; the others were refused upstream"
            ),
        )
    }
    /// Accepted into the durable queue.
    pub fn queued(queue_id: &str) -> Reply {
        r(250, (2, 0, 0), format!("OK: queued as {queue_id}"))
    }
}

/// Replies that tell a waiting device its message is not delivered yet.
pub mod later {
    use super::*;

    /// The device waited for the first attempt and the upstream refused our account (not the
    /// message): the device hears a temporary failure with the upstream's words, and the relay
    /// keeps the message and delivers it once the account works again.
    pub fn account_refused(queue_id: &str, upstream: &Reply) -> Reply {
        r(
            451,
            (4, 7, 0),
            format!(
                "Not delivered yet: the upstream refuses the relay's account ({upstream}); the relay keeps the message as {queue_id} and retries"
            ),
        )
    }
}

/// Why the inbound session refuses a command. Each variant maps to exactly one reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionError {
    /// A command we do not know.
    UnknownCommand,
    /// A command line longer than `max_line_length`.
    LineTooLong,
    /// A command that does not parse; the expected syntax.
    Syntax(&'static str),
    /// A MAIL address that does not parse.
    BadSenderAddress,
    /// A RCPT address that does not parse.
    BadRecipientAddress,
    /// A MAIL address we do not pass on (control characters, `<`, `>` or blanks outside a
    /// quoted local part, a meaning parsers disagree about); why, in words.
    InvalidSender(&'static str),
    /// A RCPT address we do not pass on; why, in words.
    InvalidRecipient(&'static str),
    /// A MAIL or RCPT parameter we do not support.
    UnsupportedParameter(String),
    /// A parameter with a value that does not parse.
    InvalidParameter(&'static str),
    /// A command we know and do not implement.
    NotImplemented(&'static str),
    /// A command before EHLO or HELO.
    NeedHelo,
    /// RCPT or DATA before MAIL.
    NeedMail,
    /// DATA before any RCPT.
    NeedRcpt,
    /// MAIL inside a transaction.
    NestedMail,
    /// DATA after every RCPT was refused.
    NoValidRecipients,
    /// AUTH after a successful login.
    AlreadyAuthenticated,
    /// AUTH inside a mail transaction.
    AuthDuringTransaction,
    /// STARTTLS on a session already encrypted.
    TlsAlreadyActive,
    /// STARTTLS where no certificate is configured.
    TlsUnavailable,
    /// An AUTH mechanism other than PLAIN and LOGIN.
    MechanismNotSupported,
    /// The client cancelled AUTH (`*`).
    AuthCancelled,
    /// An AUTH response that is not base64.
    BadBase64,
    /// Wrong credentials.
    AuthFailed,
    /// The password could not be checked now (our trouble).
    AuthUnavailable,
    /// AUTH in clear text where only TLS allows it.
    EncryptionRequired,
    /// A command that needs TLS on a listener that requires it.
    TlsRequired,
    /// MAIL without a login or a device recognised by address.
    AuthRequired,
    /// The session's last allowed failed login.
    TooManyAuthFailures,
    /// The client's address is locked out after failed logins.
    LockedOut,
    /// The username is locked out after failed logins from addresses it never used: no
    /// password is checked for it from such an address for now.
    UserLockedOut,
    /// The session did not log in within `preauth_timeout`.
    LoginTimeout,
    /// The relay is full and this session, the oldest one not logged in, makes room.
    Evicted,
    /// The client's address has as many sessions without a login as it may.
    TooManyUnauthenticated,
    /// The session sent more commands or bytes than allowed.
    SessionBudget,
    /// A sender the device may not use; the address.
    SenderNotAllowed(String),
    /// More recipients than `max_recipients`.
    TooManyRecipients,
    /// A message larger than allowed; the limit in bytes.
    MessageTooBig(u64),
    /// The client was silent too long.
    Timeout,
    /// Too many refused commands in one session.
    TooManyErrors,
    /// The relay has as many sessions as it takes.
    TooManyConnections,
    /// The client's address has as many sessions as it may.
    TooManyConnectionsFromAddress,
    /// The relay is stopping.
    ShuttingDown,
    /// The spool's disk is (nearly) full.
    StorageFull,
    /// Anything else on our side.
    LocalError,
}

impl SessionError {
    /// The one reply for this refusal.
    pub fn reply(&self) -> Reply {
        use SessionError::*;
        match self {
            UnknownCommand => r(500, (5, 5, 1), "Command unrecognized"),
            LineTooLong => r(500, (5, 5, 2), "Line too long"),
            Syntax(syntax) => r(501, (5, 5, 4), format!("Syntax: {syntax}")),
            BadSenderAddress => r(501, (5, 1, 7), "Bad sender address syntax"),
            BadRecipientAddress => r(501, (5, 1, 3), "Bad recipient address syntax"),
            InvalidSender(why) => r(553, (5, 1, 7), format!("Sender address rejected: {why}")),
            InvalidRecipient(why) => r(501, (5, 1, 3), format!("Bad recipient address: {why}")),
            UnsupportedParameter(p) => r(555, (5, 5, 4), format!("Unsupported parameter {p}")),
            InvalidParameter(p) => r(501, (5, 5, 4), format!("Invalid value for parameter {p}")),
            NotImplemented(cmd) => r(502, (5, 5, 1), format!("{cmd} not implemented")),
            NeedHelo => r(503, (5, 5, 1), "Send EHLO or HELO first"),
            NeedMail => r(503, (5, 5, 1), "Need MAIL command first"),
            NeedRcpt => r(503, (5, 5, 1), "Need RCPT command first"),
            NestedMail => r(503, (5, 5, 1), "Sender already specified"),
            NoValidRecipients => r(554, (5, 5, 1), "No valid recipients"),
            AlreadyAuthenticated => r(503, (5, 5, 1), "Already authenticated"),
            AuthDuringTransaction => r(
                503,
                (5, 5, 1),
                "AUTH not permitted during a mail transaction",
            ),
            TlsAlreadyActive => r(503, (5, 5, 1), "TLS already active"),
            TlsUnavailable => r(454, (4, 7, 0), "TLS not available"),
            MechanismNotSupported => r(504, (5, 5, 4), "Unrecognized authentication type"),
            AuthCancelled => r(501, (5, 0, 0), "Authentication cancelled"),
            BadBase64 => r(501, (5, 5, 2), "Cannot decode base64 response"),
            AuthFailed => r(535, (5, 7, 8), "Authentication credentials invalid"),
            AuthUnavailable => r(
                454,
                (4, 7, 0),
                "Temporary authentication failure, try again later",
            ),
            EncryptionRequired => r(
                538,
                (5, 7, 11),
                "Encryption required for requested authentication mechanism",
            ),
            TlsRequired => r(530, (5, 7, 0), "Must issue a STARTTLS command first"),
            AuthRequired => r(530, (5, 7, 0), "Authentication required"),
            TooManyAuthFailures => r(421, (4, 7, 0), "Too many failed authentication attempts"),
            LockedOut => r(
                421,
                (4, 7, 0),
                "Too many failed logins from your address, try again later",
            ),
            UserLockedOut => r(
                454,
                (4, 7, 0),
                "Too many failed logins for this user, try later",
            ),
            LoginTimeout => r(
                421,
                (4, 7, 0),
                "No login in the time allowed, closing connection",
            ),
            Evicted => r(
                421,
                (4, 7, 0),
                "Too many connections, closing one not logged in",
            ),
            TooManyUnauthenticated => r(421, (4, 7, 0), "Too many connections without a login"),
            SessionBudget => r(
                421,
                (4, 7, 0),
                "Session limits exceeded, closing connection",
            ),
            SenderNotAllowed(sender) => r(
                553,
                (5, 7, 1),
                format!("<{sender}>: Sender address not allowed for this device"),
            ),
            TooManyRecipients => r(452, (4, 5, 3), "Too many recipients"),
            MessageTooBig(limit) => r(
                552,
                (5, 3, 4),
                format!("Message size exceeds fixed maximum message size ({limit} bytes)"),
            ),
            Timeout => r(421, (4, 4, 2), "Timeout exceeded, closing connection"),
            TooManyErrors => r(421, (4, 7, 0), "Too many errors, closing connection"),
            TooManyConnections => r(421, (4, 7, 0), "Too many connections, try again later"),
            TooManyConnectionsFromAddress => r(
                421,
                (4, 7, 0),
                "Too many connections from your address, try again later",
            ),
            ShuttingDown => r(421, (4, 3, 2), "Service shutting down, try again later"),
            StorageFull => r(
                452,
                (4, 3, 1),
                "Insufficient system storage, try again later",
            ),
            LocalError => r(451, (4, 3, 0), "Local error in processing, try again later"),
        }
    }

    /// Errors after which the session is closed (the reply is sent first).
    pub fn closes_session(&self) -> bool {
        matches!(
            self,
            SessionError::TooManyAuthFailures
                | SessionError::LockedOut
                | SessionError::LoginTimeout
                | SessionError::Evicted
                | SessionError::TooManyUnauthenticated
                | SessionError::SessionBudget
                | SessionError::Timeout
                | SessionError::TooManyErrors
                | SessionError::TooManyConnections
                | SessionError::TooManyConnectionsFromAddress
                | SessionError::ShuttingDown
        )
    }
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.reply().fmt(f)
    }
}

/// The step of an upstream conversation at which something happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Opening the TCP connection (or resolving the name).
    Connect,
    /// The server's greeting.
    Greeting,
    /// EHLO or HELO.
    Ehlo,
    /// STARTTLS and the handshake.
    StartTls,
    /// AUTH.
    Auth,
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
    /// DATA (before the body).
    Data,
    /// Sending the body and the reply to it.
    Body,
    /// Getting an access token.
    Token,
    /// An HTTP request (Microsoft Graph).
    Http,
    /// Our side (reading the spool, writing a file).
    Local,
}

impl Stage {
    /// The stage's name in logs and spooled events.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Greeting => "greeting",
            Stage::Ehlo => "ehlo",
            Stage::StartTls => "starttls",
            Stage::Auth => "auth",
            Stage::Mail => "mail",
            Stage::Rcpt => "rcpt",
            Stage::Data => "data",
            Stage::Body => "body",
            Stage::Token => "token",
            Stage::Http => "http",
            Stage::Local => "local",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a delivery attempt did not succeed.
///
/// The rule every variant follows: only an upstream's own 5xx is permanent. Our timeouts,
/// dropped connections, TLS trouble and token trouble are always temporary, because the message
/// itself is fine and an admin can fix the cause; a scan must not be bounced for them.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// The upstream answered with a 4xx or 5xx at `stage`.
    #[error("upstream refused at {stage}: {reply}")]
    Rejected {
        /// Where in the conversation.
        stage: Stage,
        /// The upstream's own reply (a Graph answer turned into one).
        reply: Reply,
        /// What the refusal is about, decided where the answer was parsed.
        cause: Cause,
    },
    /// No access token could be obtained for the account.
    #[error("no access token for account {account}: {reason}")]
    Token {
        /// The account's name.
        account: String,
        /// The token endpoint's error, in words (never a secret).
        reason: String,
        /// [`Cause::Transient`], or the account issue a person must fix.
        cause: Cause,
    },
    /// No TCP connection to the upstream.
    #[error("cannot connect to {target}: {detail}")]
    Connect {
        /// Host and port (or address) we tried.
        target: String,
        /// Why, in words.
        detail: String,
    },
    /// The upstream's name (or its domain's MX) could not be resolved.
    #[error("cannot connect to {target}: DNS lookup failed: {detail}")]
    Dns {
        /// The name we looked up.
        target: String,
        /// The resolver's error.
        detail: String,
    },
    /// The upstream did not answer in time.
    #[error("upstream timed out at {stage}")]
    Timeout {
        /// Where in the conversation.
        stage: Stage,
    },
    /// The connection broke.
    #[error("upstream connection lost at {stage}: {detail}")]
    ConnectionLost {
        /// Where in the conversation.
        stage: Stage,
        /// Why, in words.
        detail: String,
    },
    /// The TLS handshake failed, or TLS was required and not offered.
    #[error("TLS with the upstream failed: {detail}")]
    Tls {
        /// Why, in words.
        detail: String,
    },
    /// The upstream said something that is not SMTP.
    #[error("upstream protocol error at {stage}: {detail}")]
    Protocol {
        /// Where in the conversation.
        stage: Stage,
        /// What was wrong.
        detail: String,
    },
    /// A problem on our side (reading the spool, writing a capture file).
    #[error("local error: {detail}")]
    Local {
        /// What failed.
        detail: String,
    },
}

impl DeliveryError {
    /// True for an upstream's own permanent refusal (a 5xx), whatever it is about: what the
    /// route heard. Whether it settles the message is [`DeliveryError::is_final`].
    pub fn is_permanent(&self) -> bool {
        matches!(self, DeliveryError::Rejected { reply, .. } if reply.is_permanent())
    }

    /// True only when the message will never pass: an upstream's 5xx about the message or its
    /// recipients. A 5xx about our account (`535 5.7.3`, `5.7.139`, Graph's 403 for the app, a
    /// connector refusing us, ...) is not final: the message waits until an admin fixes it.
    pub fn is_final(&self) -> bool {
        self.is_permanent() && self.cause().fails_message()
    }

    /// What the failure is about. Only a refusal or a token error can concern the account;
    /// the rest (network, TLS, timeouts, our own trouble) may pass by itself.
    pub fn cause(&self) -> Cause {
        match self {
            DeliveryError::Rejected { cause, .. } | DeliveryError::Token { cause, .. } => *cause,
            _ => Cause::Transient,
        }
    }

    /// True when a person must sign in again before the account can deliver.
    pub fn needs_sign_in(&self) -> bool {
        self.cause() == Cause::Account(AccountIssue::SignIn)
    }

    /// The upstream's own reply, when the failure is one.
    pub fn upstream_reply(&self) -> Option<&Reply> {
        match self {
            DeliveryError::Rejected { reply, .. } => Some(reply),
            _ => None,
        }
    }

    /// The reply a device that is still waiting gets for this failure.
    pub fn reply(&self) -> Reply {
        match self {
            // The upstream's own words reach the device: code, enhanced status and text.
            DeliveryError::Rejected { reply, .. } => reply.clone(),
            DeliveryError::Token {
                account, reason, ..
            } => r(
                454,
                (4, 7, 0),
                format!(
                    "Temporary authentication failure: no access token for account {account}: {reason}"
                ),
            ),
            DeliveryError::Connect { target, .. } | DeliveryError::Dns { target, .. } => r(
                451,
                (4, 4, 1),
                format!("Upstream {target} not reachable, try again later"),
            ),
            DeliveryError::Timeout { stage } => r(
                451,
                (4, 4, 2),
                format!("Upstream timed out ({stage}), try again later"),
            ),
            DeliveryError::ConnectionLost { stage, .. } => r(
                451,
                (4, 4, 2),
                format!("Upstream connection lost ({stage}), try again later"),
            ),
            DeliveryError::Tls { detail } => r(
                451,
                (4, 7, 5),
                format!("TLS with the upstream failed: {detail}"),
            ),
            DeliveryError::Protocol { stage, detail } => r(
                451,
                (4, 5, 0),
                format!("Upstream protocol error ({stage}): {detail}"),
            ),
            DeliveryError::Local { .. } => {
                r(451, (4, 3, 0), "Local error in processing, try again later")
            }
        }
    }

    /// The reply a device that waits for a synchronous delivery gets: [`DeliveryError::reply`],
    /// except that an upstream's 5xx about our account becomes `451 4.7.0` naming it, so the
    /// device keeps the message and tries again instead of discarding a scan an admin can get
    /// through.
    pub fn device_reply(&self) -> Reply {
        match self {
            DeliveryError::Rejected { reply, .. } if self.is_permanent() && !self.is_final() => r(
                451,
                (4, 7, 0),
                format!(
                    "The upstream refuses the relay's account, not this message: {reply}; try again later"
                ),
            ),
            _ => self.reply(),
        }
    }

    /// The stage at which the attempt failed.
    pub fn stage(&self) -> Stage {
        match self {
            DeliveryError::Rejected { stage, .. }
            | DeliveryError::Timeout { stage }
            | DeliveryError::ConnectionLost { stage, .. }
            | DeliveryError::Protocol { stage, .. } => *stage,
            DeliveryError::Token { .. } => Stage::Token,
            DeliveryError::Connect { .. } | DeliveryError::Dns { .. } => Stage::Connect,
            DeliveryError::Tls { .. } => Stage::StartTls,
            DeliveryError::Local { .. } => Stage::Local,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_errors_have_matching_classes() {
        use SessionError::*;
        let all = [
            UnknownCommand,
            LineTooLong,
            Syntax("x"),
            BadSenderAddress,
            BadRecipientAddress,
            InvalidSender("x"),
            InvalidRecipient("x"),
            UnsupportedParameter("X".into()),
            InvalidParameter("SIZE"),
            NotImplemented("EXPN"),
            NeedHelo,
            NeedMail,
            NeedRcpt,
            NestedMail,
            NoValidRecipients,
            AlreadyAuthenticated,
            AuthDuringTransaction,
            TlsAlreadyActive,
            TlsUnavailable,
            MechanismNotSupported,
            AuthCancelled,
            BadBase64,
            AuthFailed,
            EncryptionRequired,
            TlsRequired,
            AuthRequired,
            TooManyAuthFailures,
            LockedOut,
            UserLockedOut,
            LoginTimeout,
            Evicted,
            TooManyUnauthenticated,
            SessionBudget,
            SenderNotAllowed("a@b".into()),
            TooManyRecipients,
            MessageTooBig(10),
            Timeout,
            TooManyErrors,
            TooManyConnections,
            TooManyConnectionsFromAddress,
            ShuttingDown,
            StorageFull,
            LocalError,
        ];
        for e in all {
            let reply = e.reply();
            let status = reply
                .status()
                .expect("every refusal carries an enhanced status");
            assert_eq!(u16::from(status.class), reply.code() / 100, "{e:?}");
            assert!(reply.code() >= 400, "{e:?}");
            if e.closes_session() {
                assert_eq!(reply.code(), 421, "{e:?}");
            }
        }
    }

    #[test]
    fn contract_codes() {
        // Codes named in the product's contract with devices.
        assert_eq!(
            SessionError::EncryptionRequired.reply().to_string(),
            "538 5.7.11 Encryption required for requested authentication mechanism"
        );
        assert!(
            SessionError::AuthFailed
                .reply()
                .to_string()
                .starts_with("535 5.7.8")
        );
        assert!(
            SessionError::AuthRequired
                .reply()
                .to_string()
                .starts_with("530 5.7.0")
        );
        assert!(
            SessionError::MessageTooBig(5)
                .reply()
                .to_string()
                .starts_with("552 5.3.4")
        );
        assert!(
            SessionError::StorageFull
                .reply()
                .to_string()
                .starts_with("452 4.3.1")
        );
        assert!(
            SessionError::InvalidSender("x")
                .reply()
                .to_string()
                .starts_with("553 5.1.7")
        );
        assert!(
            SessionError::InvalidRecipient("x")
                .reply()
                .to_string()
                .starts_with("501 5.1.3")
        );
        assert!(
            SessionError::UserLockedOut
                .reply()
                .to_string()
                .starts_with("454 4.7.0")
        );
        assert_eq!(ok::auth_login_username().to_wire(), b"334 VXNlcm5hbWU6\r\n");
        assert_eq!(ok::auth_login_password().to_wire(), b"334 UGFzc3dvcmQ6\r\n");
        assert_eq!(ok::auth_plain_challenge().to_wire(), b"334 \r\n");
    }

    #[test]
    fn only_upstream_5xx_is_permanent() {
        let rej = |s: &str| {
            let mut a = crate::ReplyAssembler::new();
            a.push_line(s.as_bytes()).unwrap().unwrap()
        };
        let perm = DeliveryError::Rejected {
            stage: Stage::Mail,
            reply: rej("554 5.2.252 SendAsDenied; x"),
            cause: Cause::Message,
        };
        assert!(perm.is_permanent());
        assert_eq!(perm.reply().to_string(), "554 5.2.252 SendAsDenied; x");
        let temp = DeliveryError::Rejected {
            stage: Stage::Mail,
            reply: rej("451 4.7.500 Server busy"),
            cause: Cause::Throttled { retry_after: None },
        };
        assert!(!temp.is_permanent());
        for e in [
            DeliveryError::Token {
                account: "a".into(),
                reason: "down".into(),
                cause: Cause::Transient,
            },
            DeliveryError::Token {
                account: "a".into(),
                reason: "invalid_grant".into(),
                cause: Cause::Account(AccountIssue::SignIn),
            },
            DeliveryError::Connect {
                target: "h:1".into(),
                detail: "refused".into(),
            },
            DeliveryError::Dns {
                target: "MX of contoso.com".into(),
                detail: "no record".into(),
            },
            DeliveryError::Timeout { stage: Stage::Body },
            DeliveryError::ConnectionLost {
                stage: Stage::Body,
                detail: "eof".into(),
            },
            DeliveryError::Tls {
                detail: "bad cert".into(),
            },
            DeliveryError::Protocol {
                stage: Stage::Ehlo,
                detail: "garbage".into(),
            },
            DeliveryError::Local {
                detail: "io".into(),
            },
        ] {
            assert!(!e.is_permanent(), "{e:?}");
            assert_eq!(e.reply().code() / 100, 4, "{e:?}");
        }
        let tok = DeliveryError::Token {
            account: "scanner".into(),
            reason: "token endpoint unavailable".into(),
            cause: Cause::Transient,
        };
        assert!(tok.reply().to_string().starts_with("454 4.7.0"));
    }

    /// Only a 5xx about the message settles it; a 5xx about our account never reaches a
    /// device as a 5xx.
    #[test]
    fn refusals_of_our_account_are_not_final() {
        let rej = |s: &str, cause| DeliveryError::Rejected {
            stage: Stage::Auth,
            reply: crate::ReplyAssembler::new()
                .push_line(s.as_bytes())
                .unwrap()
                .unwrap(),
            cause,
        };
        let login = rej(
            "535 5.7.3 Authentication unsuccessful",
            Cause::Account(AccountIssue::Login),
        );
        assert!(login.is_permanent(), "the route heard a 5xx");
        assert!(!login.is_final());
        let told = login.device_reply().to_string();
        assert!(
            told.starts_with("451 4.7.0 ")
                && told.contains("535 5.7.3 Authentication unsuccessful"),
            "{told}"
        );
        let sent_as = rej("554 5.2.252 SendAsDenied", Cause::Message);
        assert!(sent_as.is_final());
        assert_eq!(
            sent_as.device_reply().to_string(),
            "554 5.2.252 SendAsDenied"
        );
        for cause in [Cause::Recipient, Cause::TooLarge, Cause::Transient] {
            assert!(rej("550 5.1.1 x", cause).is_final(), "{cause:?}");
        }
        let throttled = rej("554 5.7.600 busy", Cause::Throttled { retry_after: None });
        assert!(!throttled.is_final());
        assert!(
            !rej("451 4.3.0 later", Cause::Message).is_final(),
            "a 4xx is never final"
        );
        let queued = later::account_refused("0123", &login.reply()).to_string();
        assert!(
            queued.starts_with("451 4.7.0 ") && queued.contains("as 0123"),
            "{queued}"
        );
    }
}

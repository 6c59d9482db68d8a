//! The one hook on what a session tells its device: every reply, and a summary when the
//! session ends.
//!
//! Admins ask two questions about a device: "did it reach us, and what did we answer?" and
//! "why did that session end?". Several parts answer them (the live state behind the console,
//! the log lines), and none of them may reach into the driver to find out. So the driver sends
//! every reply through one function that hands an [`Observer`] a [`ReplyEvent`] (who the
//! session is, which command the reply answers, the reply, what it was about, the refusal as
//! an enum), and once per session a [`SessionSummary`]. Observers only look: they cannot
//! change a reply or delay it beyond their own (short, non-blocking) work.
//!
//! AUTH payloads never reach an observer: a SASL response line is reported as
//! [`Command::Auth`], and a failed login carries only the username (cut to
//! [`MAX_USERNAME`] bytes).

use crate::identity::AuthFailure;
use smtp2oauth_proto::{Reply, SessionError};
use std::net::SocketAddr;
use std::time::Duration;

/// Longest username handed to observers.
pub const MAX_USERNAME: usize = 64;

/// The command a reply answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    /// The connection itself: the greeting.
    Connect,
    /// EHLO.
    Ehlo,
    /// HELO.
    Helo,
    /// AUTH, or a line of its SASL exchange (whose content is never reported).
    Auth,
    /// STARTTLS.
    StartTls,
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
    /// DATA (the 354, or its refusal).
    Data,
    /// A message's body, answered after its final dot.
    Message,
    /// RSET.
    Rset,
    /// NOOP.
    Noop,
    /// VRFY.
    Vrfy,
    /// HELP.
    Help,
    /// QUIT.
    Quit,
    /// Anything else: an unknown or unimplemented command, a line too long.
    Other,
    /// No command: the session's own limits, a timeout, the relay stopping.
    Session,
}

impl Command {
    /// The command a line starts with (`in_sasl`: the line is a SASL response).
    pub fn of_line(line: &[u8], in_sasl: bool) -> Command {
        if in_sasl {
            return Command::Auth;
        }
        let end = line
            .iter()
            .position(|b| matches!(b, b' ' | b'\r' | b'\n' | b':'))
            .unwrap_or(line.len());
        let verb = &line[..end];
        let is = |name: &str| verb.eq_ignore_ascii_case(name.as_bytes());
        [
            ("EHLO", Command::Ehlo),
            ("HELO", Command::Helo),
            ("AUTH", Command::Auth),
            ("STARTTLS", Command::StartTls),
            ("MAIL", Command::Mail),
            ("RCPT", Command::Rcpt),
            ("DATA", Command::Data),
            ("RSET", Command::Rset),
            ("NOOP", Command::Noop),
            ("VRFY", Command::Vrfy),
            ("HELP", Command::Help),
            ("QUIT", Command::Quit),
        ]
        .into_iter()
        .find(|(name, _)| is(name))
        .map_or(Command::Other, |(_, c)| c)
    }

    /// The command's name for logs (`MAIL`, `message`, `connect`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Connect => "connect",
            Command::Ehlo => "EHLO",
            Command::Helo => "HELO",
            Command::Auth => "AUTH",
            Command::StartTls => "STARTTLS",
            Command::Mail => "MAIL",
            Command::Rcpt => "RCPT",
            Command::Data => "DATA",
            Command::Message => "message",
            Command::Rset => "RSET",
            Command::Noop => "NOOP",
            Command::Vrfy => "VRFY",
            Command::Help => "HELP",
            Command::Quit => "QUIT",
            Command::Other => "other",
            Command::Session => "session",
        }
    }
}

/// The TLS a session runs over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsInfo {
    /// The protocol version (`TLSv1_3`, `TLSv1`).
    pub version: String,
    /// The cipher suite.
    pub cipher: String,
}

/// Who the session is, as far as known when a reply goes out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionView {
    /// The session's number (as in log lines and spooled envelopes).
    pub id: u64,
    /// The client's address.
    pub peer: SocketAddr,
    /// The listener's name.
    pub listener: String,
    /// The TLS in use, None for a plain session.
    pub tls: Option<TlsInfo>,
    /// The session's device now (logged in, or recognised by address).
    pub device: Option<String>,
    /// That device's account.
    pub account: Option<String>,
    /// The username of the session's last login attempt (cut to [`MAX_USERNAME`] bytes).
    pub username: Option<String>,
}

/// A message as far as the session knew it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageInfo {
    /// The envelope sender the device gave.
    pub sender: String,
    /// The recipients accepted so far.
    pub recipients: Vec<String>,
    /// Its size in bytes as received (0 before DATA).
    pub size: u64,
}

/// What a reply was about, beyond the command it answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum About {
    /// Nothing more than its command.
    Command,
    /// A login succeeded: the session's device is known from now on.
    LoggedIn,
    /// A login failed. `username` is None when the AUTH message did not even parse; `reason`
    /// is None then too.
    LoginFailed {
        /// The username tried.
        username: Option<String>,
        /// Why, when the password was checked.
        reason: Option<AuthFailure>,
    },
    /// MAIL was accepted: the device starts a message.
    SenderAccepted {
        /// The sender as the device gave it.
        sender: String,
    },
    /// A message we refused before it was queued: at MAIL, at DATA or after its final dot
    /// (no account, sender not allowed, too large, no disk space, ...).
    MessageRefused(MessageInfo),
    /// The answer after a queued message's final dot: what the scheduler said (a 250, or the
    /// upstream's refusal that the device waited for, which the scheduler records itself).
    MessageQueued {
        /// The message's queue id.
        queue_id: String,
        /// The message.
        message: MessageInfo,
    },
}

/// One reply on its way to a device.
#[derive(Debug)]
pub struct ReplyEvent<'a> {
    /// Who the session is.
    pub session: &'a SessionView,
    /// The command it answers.
    pub command: Command,
    /// The reply, exactly as sent.
    pub reply: &'a Reply,
    /// What it was about.
    pub about: &'a About,
    /// For a refusal the session decided: which one.
    pub refusal: Option<&'a SessionError>,
}

impl ReplyEvent<'_> {
    /// True for a 2xx answer to a message's final dot: the message was accepted.
    pub fn accepted_message(&self) -> bool {
        matches!(self.about, About::MessageQueued { .. }) && self.reply.code() < 300
    }

    /// True for a refusal (4xx or 5xx) of a message, before or after it was queued.
    pub fn refused_message(&self) -> bool {
        match self.about {
            About::MessageRefused(_) => true,
            About::MessageQueued { .. } => self.reply.code() >= 400,
            _ => false,
        }
    }
}

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndReason {
    /// The client said QUIT.
    Quit,
    /// The client closed the connection (or it broke) without QUIT.
    ClientClosed,
    /// The client was silent too long.
    Timeout,
    /// A limit of the session: too many commands, bytes, errors or failed logins.
    Limit,
    /// The client's address is locked out after failed logins.
    LockedOut,
    /// The relay is stopping.
    ShuttingDown,
    /// The TLS handshake failed or timed out.
    TlsFailed,
    /// Our side: a write that failed, a listener without its certificate.
    Error,
}

impl EndReason {
    /// The reason's name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Quit => "quit",
            EndReason::ClientClosed => "client closed",
            EndReason::Timeout => "timeout",
            EndReason::Limit => "limit",
            EndReason::LockedOut => "lockout",
            EndReason::ShuttingDown => "shutting down",
            EndReason::TlsFailed => "tls failed",
            EndReason::Error => "error",
        }
    }
}

/// One session, when it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionSummary {
    /// The session's number.
    pub id: u64,
    /// The client's address.
    pub peer: SocketAddr,
    /// The listener's name.
    pub listener: String,
    /// The TLS it ended with, None for a plain session.
    pub tls: Option<TlsInfo>,
    /// The device it was identified as (the last one, if it changed).
    pub device: Option<String>,
    /// The username of its last login attempt.
    pub username: Option<String>,
    /// Messages accepted (a 2xx after their final dot).
    pub accepted: u64,
    /// Messages refused (at MAIL, at DATA, after their final dot).
    pub refused: u64,
    /// Bytes read from the client.
    pub bytes: u64,
    /// How long the session lasted.
    pub duration: Duration,
    /// Why it ended.
    pub end: EndReason,
}

/// Looks at every reply and every session's end. Called on the session's task: keep it short
/// and never block.
pub trait Observer: Send + Sync + 'static {
    /// A reply is about to be written to the device.
    fn reply(&self, event: &ReplyEvent<'_>);
    /// The session is over.
    fn ended(&self, summary: &SessionSummary);
}

/// Several observers, shown every reply and every session's end in turn (the live state and
/// the log lines, say).
pub struct Observers(pub Vec<std::sync::Arc<dyn Observer>>);

impl Observer for Observers {
    fn reply(&self, event: &ReplyEvent<'_>) {
        for o in &self.0 {
            o.reply(event);
        }
    }

    fn ended(&self, summary: &SessionSummary) {
        for o in &self.0 {
            o.ended(summary);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtp2oauth_proto::reply::truncate_at_char;

    #[test]
    fn commands_are_named_by_their_verb_and_sasl_lines_never_by_content() {
        let c = |l: &str| Command::of_line(l.as_bytes(), false);
        assert_eq!(c("MAIL FROM:<a@b>\r\n"), Command::Mail);
        assert_eq!(c("mail from:<a@b>\r\n"), Command::Mail);
        assert_eq!(c("EHLO printer\r\n"), Command::Ehlo);
        assert_eq!(c("QUIT\r\n"), Command::Quit);
        assert_eq!(c("STARTTLS\r\n"), Command::StartTls);
        assert_eq!(c("MAILX\r\n"), Command::Other);
        assert_eq!(c("\r\n"), Command::Other);
        // A base64 line inside AUTH LOGIN that happens to read "DATA".
        assert_eq!(Command::of_line(b"DATA\r\n", true), Command::Auth);
    }

    #[test]
    fn usernames_are_cut_at_a_character_boundary() {
        assert_eq!(truncate_at_char("abc", 64), "abc");
        let long = "é".repeat(40);
        assert!(truncate_at_char(&long, MAX_USERNAME).len() <= MAX_USERNAME);
        assert!(
            truncate_at_char(&long, MAX_USERNAME)
                .chars()
                .all(|c| c == 'é')
        );
    }
}

//! The log lines an admin reads to see what a device was told: one per refusal, one per
//! message accepted, one per session when it ends.
//!
//! Why an observer: a refusal is decided in many places (the session machine, the sender
//! policy, the spool, the limits, the accept loop), but every reply passes the driver's one
//! hook. Logging there means no refusal can go unlogged, and each is logged once, with the
//! same fields whichever part refused it. The lines are at the default level (`info`; failed
//! logins and lockouts at `warn`), in text and JSON alike.
//!
//! Nothing secret reaches these lines: AUTH payloads never reach an observer, and text that
//! came from a device (usernames, addresses) is written with its control characters escaped,
//! so a device cannot forge log lines.

use crate::observe::{About, Command, MessageInfo, Observer, ReplyEvent, SessionSummary};
use smtp2oauth_proto::SessionError;
use smtp2oauth_proto::address::printable as escaped;
use std::fmt::Write as _;
use tracing::{info, warn};

/// Writes the session log lines.
#[derive(Clone, Copy, Debug, Default)]
pub struct SessionLog;

/// How a refusal is logged: failed logins and lockouts are an admin's business (a device with
/// a wrong password, or someone guessing), so they stand out at `warn`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    Info,
    Warn,
}

fn level_of(e: &ReplyEvent<'_>) -> Level {
    let lockout = matches!(
        e.refusal,
        Some(
            SessionError::LockedOut | SessionError::TooManyAuthFailures | SessionError::AuthFailed
        )
    );
    if lockout || matches!(e.about, About::LoginFailed { .. }) {
        Level::Warn
    } else {
        Level::Info
    }
}

impl Observer for SessionLog {
    fn reply(&self, e: &ReplyEvent<'_>) {
        if e.accepted_message() {
            return log_accepted(e);
        }
        if e.reply.code() < 400 {
            return;
        }
        let who = who(e.session.device.as_deref(), e.session.username.as_deref());
        let what = what(e);
        let session = e.session.id;
        let peer = e.session.peer.ip();
        let command = e.command.as_str();
        let reply = e.reply;
        match level_of(e) {
            Level::Warn => warn!(
                session, %peer, listener = %e.session.listener, who = %who, command, %reply,
                what = %what, "refused"
            ),
            Level::Info => info!(
                session, %peer, listener = %e.session.listener, who = %who, command, %reply,
                what = %what, "refused"
            ),
        }
    }

    fn ended(&self, s: &SessionSummary) {
        let tls = s.tls.as_ref().map_or_else(
            || "none".to_string(),
            |t| format!("{} {}", t.version, t.cipher),
        );
        info!(
            session = s.id,
            peer = %s.peer.ip(),
            listener = %s.listener,
            tls = %tls,
            who = %who(s.device.as_deref(), s.username.as_deref()),
            accepted = s.accepted,
            refused = s.refused,
            bytes = s.bytes,
            duration_ms = s.duration.as_millis() as u64,
            end = s.end.as_str(),
            "session ended"
        );
    }
}

fn log_accepted(e: &ReplyEvent<'_>) {
    let About::MessageQueued { queue_id, message } = e.about else {
        return;
    };
    info!(
        session = e.session.id,
        peer = %e.session.peer.ip(),
        device = %escaped(e.session.device.as_deref().unwrap_or("")),
        account = %e.session.account.as_deref().unwrap_or(""),
        queue_id = %queue_id,
        from = %escaped(&message.sender),
        rcpts = message.recipients.len(),
        size = message.size,
        "message accepted"
    );
}

/// `device mfp`, `username "scaner" (no such device)`, or `not logged in`.
fn who(device: Option<&str>, username: Option<&str>) -> String {
    match (device, username) {
        (Some(d), _) => format!("device {}", escaped(d)),
        (None, Some(u)) => format!("username \"{}\"", escaped(u)),
        (None, None) => "not logged in".to_string(),
    }
}

/// What the refused command carried, as far as it is not secret: the login's outcome, the
/// message's sender, recipients and size.
fn what(e: &ReplyEvent<'_>) -> String {
    match e.about {
        About::LoginFailed {
            reason: Some(r), ..
        } => format!("login failed: {}", r.as_str()),
        About::LoginFailed { reason: None, .. } => "login failed: unreadable AUTH".to_string(),
        About::MessageRefused(m) | About::MessageQueued { message: m, .. } => message(m),
        _ if e.command == Command::Session => "session limit".to_string(),
        _ => String::new(),
    }
}

fn message(m: &MessageInfo) -> String {
    let mut out = format!("from <{}>", escaped(&m.sender));
    if !m.recipients.is_empty() {
        let _ = write!(out, " to {} recipient(s)", m.recipients.len());
    }
    if m.size > 0 {
        let _ = write!(out, ", {} bytes", m.size);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_text_cannot_forge_a_line() {
        assert_eq!(
            who(None, Some("evil\r\nINFO session ended")),
            "username \"evil\\x0d\\x0aINFO session ended\""
        );
        assert_eq!(who(Some("a\u{1b}[2J"), None), "device a\\x1b[2J");
    }
}

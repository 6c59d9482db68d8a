//! What sessions tell the live state (`activity`): devices seen, the replies they got, failed
//! logins and the messages we refused.
//!
//! An [`Observer`] on the driver's one reply hook, so what the console shows is exactly what
//! devices were told. Messages that reached the queue are the scheduler's to record (it knows
//! their fate); this records only the ones refused before they were queued.

use crate::identity::{Directory, normalise_ip};
use crate::observe::{About, MessageInfo, Observer, ReplyEvent, SessionSummary};
use smtp2oauth_activity::{
    Activity, Connection, Counter, MessageRecord, MessageResult, ReplyInfo, now_ms,
};
use smtp2oauth_proto::SessionError;
use std::sync::Arc;

/// Publishes sessions' replies to the activity store.
pub struct ActivityPublisher {
    activity: Activity,
    directory: Arc<Directory>,
}

impl ActivityPublisher {
    /// Publishes to `activity`; `directory` names the device a failed login's username
    /// belongs to.
    pub fn new(activity: Activity, directory: Arc<Directory>) -> ActivityPublisher {
        ActivityPublisher {
            activity,
            directory,
        }
    }
}

impl Observer for ActivityPublisher {
    fn reply(&self, e: &ReplyEvent<'_>) {
        let now = now_ms();
        // Written out only for the replies that record it, not for every command.
        let peer = || normalise_ip(e.session.peer.ip()).to_string();
        if let About::LoginFailed { username, .. } = e.about {
            let username = username.as_deref().unwrap_or("");
            let device = self.directory.device_by_username(username);
            let device = device.as_ref().map(|d| d.name.as_str());
            self.activity.login_failed(username, device, &peer(), now);
            return;
        }
        if let Some(device) = &e.session.device {
            if identifies(e) {
                let connection = Connection {
                    peer: peer(),
                    listener: e.session.listener.clone(),
                    tls: e.session.tls.as_ref().map(|t| t.version.clone()),
                };
                self.activity.device_seen(device, now, &connection);
            }
            if let Some(counter) = counter(e) {
                self.activity
                    .device_reply(device, now, ReplyInfo::from(e.reply), Some(counter));
            }
        }
        if let About::MessageRefused(m) = e.about {
            self.activity.message(refused_record(e, m, peer(), now));
        }
    }

    fn ended(&self, _summary: &SessionSummary) {}
}

/// A reply that shows the device is here: a login, or a sender accepted (with the TLS in use
/// by then). Not the greeting: a session from an address listed for a device that does not
/// log in may still log in as another device.
fn identifies(e: &ReplyEvent<'_>) -> bool {
    matches!(e.about, About::LoggedIn | About::SenderAccepted { .. })
}

/// What a reply to a known device counts as: an accepted message, or any refusal (logins
/// are counted apart). Other replies are not results.
fn counter(e: &ReplyEvent<'_>) -> Option<Counter> {
    if e.accepted_message() {
        Some(Counter::Accepted)
    } else if e.reply.code() >= 400 {
        Some(Counter::Refused)
    } else {
        None
    }
}

fn refused_record(e: &ReplyEvent<'_>, m: &MessageInfo, peer: String, at_ms: u64) -> MessageRecord {
    MessageRecord {
        seq: 0,
        at_ms,
        queue_id: None,
        device: e.session.device.clone().unwrap_or_default(),
        peer: Some(peer),
        account: e.session.account.clone().unwrap_or_default(),
        route: String::new(),
        sender: m.sender.clone(),
        recipients: m.recipients.clone(),
        size: m.size,
        result: MessageResult::Refused,
        reply: Some(ReplyInfo::from(e.reply)),
        advice: e.refusal.and_then(advice).map(str::to_string),
    }
}

/// What an admin can do about a message we refused.
pub fn advice(refusal: &SessionError) -> Option<&'static str> {
    use SessionError::*;
    Some(match refusal {
        SenderNotAllowed(_) => {
            "The device may send only as its account's mailbox or an address in allowed_senders: set that sender address on the device, or set rewrite_sender = true (docs/devices.md)."
        }
        AuthRequired => {
            "The device did not log in and is not recognised by its address: set its SMTP username and password, or list its address in allow_ips of a device with auth = false (docs/devices.md)."
        }
        TlsRequired => {
            "This listener requires STARTTLS first: turn on TLS/STARTTLS on the device, or point it at a listener without require_tls (docs/devices.md)."
        }
        MessageTooBig(_) => {
            "The message is larger than its account's route takes: scan at a lower resolution or in parts, or raise max_message_size where the route allows it."
        }
        StorageFull => {
            "The relay's disk is nearly full: free space on the store's filesystem (see [store] min_free_space)."
        }
        NoValidRecipients | TooManyRecipients => {
            "Check the recipient addresses configured on the device (and [server] max_recipients)."
        }
        LocalError => "The relay could not store the message: see its log at this time.",
        InvalidSender(_) => {
            "The sender address has control characters, or <, > or blanks outside a quoted local part: set a plain sender address on the device."
        }
        LockedOut => {
            "The device's address is locked out after failed logins from it: correct the password of whatever at that address keeps failing; the lockout ends by itself (lockout_time, docs/configuration.md)."
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_devices_meet_have_advice() {
        for r in [
            SessionError::SenderNotAllowed("ceo@evil.example".into()),
            SessionError::AuthRequired,
            SessionError::TlsRequired,
            SessionError::MessageTooBig(10),
            SessionError::StorageFull,
            SessionError::InvalidSender("ambiguous address"),
            SessionError::LockedOut,
        ] {
            assert!(advice(&r).is_some(), "{r:?}");
        }
        assert_eq!(advice(&SessionError::UnknownCommand), None);
    }
}

//! The event a notification carries: the JSON contract of `webhook_format = "json"`, and the
//! source of every other format and of alert e-mails.
//!
//! Field names are a contract with the admin's scripts (documented in docs/monitoring.md):
//! `event` names what happened (`account_degraded`, `account_recovered`, `message_failed`, ...),
//! `kind` says whether it is new, a reminder, or cleared.

use serde::Serialize;
use smtp2oauth_activity::{
    AccountState, Alert, AlertKind, Level, MessageRecord, Problem, ReplyInfo, Subject,
};

/// One notification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    /// What happened, e.g. `account_degraded`, `account_recovered`, `message_failed`.
    pub event: String,
    /// `raised`, `reminder` or `cleared` (`raised` for a failed message).
    pub kind: AlertKind,
    /// `error` or `warning` (`error` for a failed message).
    pub level: Level,
    /// The relay's hostname, so one receiver can serve several relays.
    pub relay: String,
    /// When the event was made, RFC 3339 in UTC.
    pub at: String,
    /// What it is about.
    pub subject: Subject,
    /// One line for people.
    pub summary: String,
    /// What to do.
    pub advice: String,
    /// The doc page and section that explains it.
    pub doc: String,
    /// Since when the problem lasts (RFC 3339, UTC), when known.
    pub since: Option<String>,
    /// For a failed message: the message.
    pub message: Option<FailedMessage>,
}

/// A message that failed for good, as events carry it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FailedMessage {
    /// The queue id (the message is kept in `failed/` under it).
    pub queue_id: Option<String>,
    /// The device that sent it.
    pub device: String,
    /// The account it went through.
    pub account: String,
    /// The envelope sender.
    pub sender: String,
    /// The envelope recipients.
    pub recipients: Vec<String>,
    /// Size in bytes.
    pub size: u64,
    /// The refusal.
    pub reply: Option<ReplyInfo>,
}

/// RFC 3339 in UTC for ms since the epoch.
pub fn rfc3339(ms: u64) -> String {
    jiff::Timestamp::from_millisecond(ms as i64)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// The event name for an alert: `account_<state>` when raised, `account_recovered` when it
/// clears; `<subject>` / `<subject>_cleared` for the others.
pub fn event_name(alert: &Alert) -> String {
    let cleared = alert.kind == AlertKind::Cleared;
    match (&alert.problem.subject, alert.problem.state) {
        (Subject::Account(_), _) if cleared => "account_recovered".into(),
        (Subject::Account(_), Some(state)) => format!("account_{}", state.as_str()),
        (Subject::Account(_), None) => format!("account_{}", AccountState::Degraded.as_str()),
        (Subject::QueueAge, _) => with_cleared("queue_age", cleared),
        (Subject::Certificate(_), _) => with_cleared("certificate_expiry", cleared),
        (Subject::FreeSpace, _) => with_cleared("free_space_low", cleared),
        (Subject::Notice(_), _) => with_cleared("notice_failed", cleared),
    }
}

fn with_cleared(name: &str, cleared: bool) -> String {
    if cleared {
        format!("{name}_cleared")
    } else {
        name.to_string()
    }
}

impl Event {
    /// The event for an alert.
    pub fn from_alert(alert: &Alert, relay: &str, now_ms: u64) -> Event {
        let p: &Problem = &alert.problem;
        let cleared = alert.kind == AlertKind::Cleared;
        Event {
            event: event_name(alert),
            kind: alert.kind,
            level: p.level,
            relay: relay.to_string(),
            at: rfc3339(now_ms),
            subject: p.subject.clone(),
            summary: if cleared {
                format!("Cleared: {}", p.summary)
            } else {
                p.summary.clone()
            },
            advice: if cleared {
                String::new()
            } else {
                p.advice.clone()
            },
            doc: p.doc.clone(),
            since: p.since_ms.map(rfc3339),
            message: None,
        }
    }

    /// The event for a message that failed for good.
    pub fn message_failed(r: &MessageRecord, relay: &str, now_ms: u64) -> Event {
        let reply = r
            .reply
            .as_ref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        let to = r.recipients.join(", ");
        Event {
            event: "message_failed".into(),
            kind: AlertKind::Raised,
            level: Level::Error,
            relay: relay.to_string(),
            at: rfc3339(now_ms),
            subject: Subject::Notice(r.queue_id.clone().unwrap_or_default()),
            summary: format!(
                "A message from {} (device {}) to {to} failed for good{reply}",
                r.sender, r.device
            ),
            advice: r.advice.clone().unwrap_or_else(|| {
                "See the message in Queue → Failed; fix the cause, then Requeue it.".into()
            }),
            doc: "queue.md#failure-notices".into(),
            since: Some(rfc3339(r.at_ms)),
            message: Some(FailedMessage {
                queue_id: r.queue_id.clone(),
                device: r.device.clone(),
                account: r.account.clone(),
                sender: r.sender.clone(),
                recipients: r.recipients.clone(),
                size: r.size,
                reply: r.reply.clone(),
            }),
        }
    }

    /// A title for chat messages and e-mail subjects.
    pub fn title(&self) -> String {
        let what = match self.kind {
            AlertKind::Cleared => "cleared",
            AlertKind::Reminder => "still",
            AlertKind::Raised => match self.level {
                Level::Error => "problem",
                Level::Warning => "warning",
            },
        };
        format!("smtp2oauth on {}: {what}: {}", self.relay, self.event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtp2oauth_activity::MessageResult;

    fn problem(state: Option<AccountState>) -> Problem {
        Problem {
            subject: Subject::Account("scanner".into()),
            level: Level::Error,
            state,
            summary: "Account scanner: refused".into(),
            advice: "grant it".into(),
            doc: "troubleshooting.md#account-degraded".into(),
            since_ms: Some(0),
        }
    }

    #[test]
    fn names() {
        let alert = |kind, state| Alert {
            kind,
            problem: problem(state),
        };
        assert_eq!(
            event_name(&alert(AlertKind::Raised, Some(AccountState::Degraded))),
            "account_degraded"
        );
        assert_eq!(
            event_name(&alert(
                AlertKind::Reminder,
                Some(AccountState::SignInNeeded)
            )),
            "account_sign_in_needed"
        );
        assert_eq!(
            event_name(&alert(AlertKind::Cleared, Some(AccountState::Degraded))),
            "account_recovered"
        );
        let mut q = alert(AlertKind::Cleared, None);
        q.problem.subject = Subject::QueueAge;
        assert_eq!(event_name(&q), "queue_age_cleared");
    }

    #[test]
    fn json_shape() {
        let e = Event::from_alert(
            &Alert {
                kind: AlertKind::Raised,
                problem: problem(Some(AccountState::Degraded)),
            },
            "relay.contoso.com",
            1_796_559_350_000,
        );
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["event"], "account_degraded");
        assert_eq!(v["kind"], "raised");
        assert_eq!(v["level"], "error");
        assert_eq!(v["subject"]["kind"], "account");
        assert_eq!(v["subject"]["name"], "scanner");
        assert_eq!(v["since"], "1970-01-01T00:00:00Z");
        assert_eq!(v["at"], "2026-12-06T12:15:50Z");
    }

    #[test]
    fn a_failed_message_names_its_recipients_and_refusal() {
        let r = MessageRecord {
            seq: 1,
            at_ms: 0,
            queue_id: Some("abc".into()),
            device: "mfp".into(),
            peer: None,
            account: "scanner".into(),
            route: "smtp".into(),
            sender: "scanner@contoso.com".into(),
            recipients: vec!["nobody@fabrikam.example".into()],
            size: 10,
            result: MessageResult::Failed,
            reply: Some(ReplyInfo::new(
                550,
                Some("5.1.1".into()),
                "RecipientNotFound",
            )),
            advice: None,
        };
        let e = Event::message_failed(&r, "relay", 0);
        assert_eq!(e.event, "message_failed");
        assert!(e.summary.contains("nobody@fabrikam.example"));
        assert!(e.summary.contains("550 5.1.1 RecipientNotFound"));
        assert_eq!(e.message.unwrap().queue_id.as_deref(), Some("abc"));
    }
}

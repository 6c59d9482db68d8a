//! What the console shows, built once for the pages and the API, so both say the same.
//!
//! These structs are the API's contract (docs/admin.md): field names do not change. Every time
//! is written twice: RFC 3339 in UTC with milliseconds (`at`), and milliseconds since the epoch
//! (`at_ms`) for scripts that compute with it. Nothing here can hold a secret: replies and
//! advice come from the activity store, which keeps upstream replies and plain words only, and
//! token states are states and times, never tokens.

use crate::accounts::AccountView;
use crate::time::rfc3339;
use serde::Serialize;
use smtp2oauth_activity::{
    AccountActivity, Activity, DeviceView, MessageRecord, ReplyInfo, UnknownLogin, now_ms,
};
use smtp2oauth_spool::{Area, Event, Queued};
use std::time::{SystemTime, UNIX_EPOCH};

/// A time as the API writes it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Stamp {
    /// RFC 3339, UTC, milliseconds.
    pub at: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
}

impl Stamp {
    pub fn new(ms: u64) -> Stamp {
        Stamp {
            at: rfc3339(ms),
            at_ms: ms,
        }
    }

    pub fn from_system(t: SystemTime) -> Stamp {
        Stamp::new(
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        )
    }
}

/// Something that happened, with the reply it got.
#[derive(Clone, Debug, Serialize)]
pub struct Happened {
    #[serde(flatten)]
    pub at: Stamp,
    pub reply: Option<ReplyInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advice: Option<String>,
}

/// An account's state alone (the `accounts` list of `/readyz`).
#[derive(Clone, Debug, Serialize)]
pub struct AccountState {
    pub name: String,
    pub state: &'static str,
    pub since: Option<Stamp>,
}

/// Every account's state, in name order.
pub fn account_states(activity: &Activity) -> Vec<AccountState> {
    activity
        .accounts(now_ms())
        .into_iter()
        .map(|a| AccountState {
            state: a.condition.state.as_str(),
            since: a.condition.since_ms.map(Stamp::new),
            name: a.name,
        })
        .collect()
}

/// The token side of an account.
#[derive(Clone, Debug, Serialize)]
pub struct TokenInfo {
    /// `valid`, `none_yet`, `failing`, `sign_in_needed`.
    pub state: &'static str,
    pub valid_until: Option<Stamp>,
    pub last_refresh: Option<Stamp>,
    pub last_error: Option<String>,
}

/// One account, as `/api/v1/accounts` and the accounts page show it.
#[derive(Clone, Debug, Serialize)]
pub struct Account {
    pub name: String,
    pub mailbox: String,
    pub route: &'static str,
    pub flow: &'static str,
    /// `ok`, `degraded`, `sign_in_needed`, `throttled`, `unreachable`.
    pub state: &'static str,
    /// The state in words.
    pub state_words: &'static str,
    pub since: Option<Stamp>,
    /// The reply that put the account in its state (for a problem state).
    pub reply: Option<ReplyInfo>,
    pub advice: Option<String>,
    /// For `throttled`: when the pause ends.
    pub throttled_until: Option<Stamp>,
    pub last_delivery: Option<Happened>,
    pub last_failure: Option<Happened>,
    pub consecutive_failures: u64,
    /// None when the account's routes need no token.
    pub token: Option<TokenInfo>,
}

fn happened(h: &smtp2oauth_activity::account::Happening) -> Happened {
    Happened {
        at: Stamp::new(h.at_ms),
        reply: h.reply.clone(),
        advice: h.advice.clone(),
    }
}

/// The account `view` with its activity (an account nothing has happened to yet reads `ok`).
pub fn account(view: &AccountView, activity: Option<&AccountActivity>) -> Account {
    let fresh = AccountActivity {
        name: view.name.clone(),
        condition: Default::default(),
        last_delivery: None,
        last_failure: None,
        consecutive_failures: 0,
    };
    let a = activity.unwrap_or(&fresh);
    let c = &a.condition;
    Account {
        name: view.name.clone(),
        mailbox: view.mailbox.clone(),
        route: view.route.as_str(),
        flow: view.flow.map_or("none", |f| f.as_str()),
        state: c.state.as_str(),
        state_words: c.state.words(),
        since: c.since_ms.map(Stamp::new),
        reply: c.reply.clone(),
        advice: c.advice.clone(),
        throttled_until: c.until_ms.map(Stamp::new),
        last_delivery: a.last_delivery.as_ref().map(happened),
        last_failure: a.last_failure.as_ref().map(happened),
        consecutive_failures: a.consecutive_failures,
        token: view.tokens.as_ref().map(|t| token_info(&t.status())),
    }
}

fn token_info(s: &smtp2oauth_tokens::TokenStatus) -> TokenInfo {
    let valid = s.valid_until.filter(|v| *v > SystemTime::now());
    let state = match (s.sign_in_required, valid, &s.last_error) {
        (true, _, _) => "sign_in_needed",
        (false, Some(_), _) => "valid",
        (false, None, Some(_)) => "failing",
        (false, None, None) => "none_yet",
    };
    TokenInfo {
        state,
        valid_until: valid.map(Stamp::from_system),
        last_refresh: s.last_refresh.map(Stamp::from_system),
        last_error: s.last_error.clone(),
    }
}

/// Every account in configuration order.
pub fn accounts(views: &[AccountView], activity: &Activity) -> Vec<Account> {
    let now = now_ms();
    views
        .iter()
        .map(|v| account(v, activity.account(&v.name, now).as_ref()))
        .collect()
}

/// Counts as the API writes them.
#[derive(Clone, Debug, Serialize)]
pub struct Counts {
    pub accepted: u64,
    pub refused: u64,
    pub failed_logins: u64,
}

impl From<smtp2oauth_activity::Counts> for Counts {
    fn from(c: smtp2oauth_activity::Counts) -> Counts {
        Counts {
            accepted: c.accepted,
            refused: c.refused,
            failed_logins: c.failed_logins,
        }
    }
}

/// One device.
#[derive(Clone, Debug, Serialize)]
pub struct Device {
    pub name: String,
    pub account: String,
    pub last_seen: Option<Stamp>,
    pub peer: Option<String>,
    pub listener: Option<String>,
    /// The TLS version of the last session, None for plain SMTP (or never seen).
    pub tls: Option<String>,
    pub last_result: Option<Happened>,
    pub since_start: Counts,
    pub last_24h: Counts,
}

pub fn device(d: DeviceView) -> Device {
    let (peer, listener, tls) = match d.connection {
        Some(c) => (Some(c.peer), Some(c.listener), c.tls),
        None => (None, None, None),
    };
    Device {
        name: d.name,
        account: d.account,
        last_seen: d.last_seen_ms.map(Stamp::new),
        peer,
        listener,
        tls,
        last_result: d.last_result.map(|r| Happened {
            at: Stamp::new(r.at_ms),
            reply: Some(r.reply),
            advice: None,
        }),
        since_start: d.since_start.into(),
        last_24h: d.last_24h.into(),
    }
}

/// A username that matched no device.
#[derive(Clone, Debug, Serialize)]
pub struct Unknown {
    pub username: String,
    pub attempts: u64,
    pub last_peer: String,
    pub last: Stamp,
}

pub fn unknown(u: UnknownLogin) -> Unknown {
    Unknown {
        username: u.username,
        attempts: u.attempts,
        last_peer: u.last_peer,
        last: Stamp::new(u.last_ms),
    }
}

/// One outcome in the recent-messages log.
#[derive(Clone, Debug, Serialize)]
pub struct Message {
    pub seq: u64,
    #[serde(flatten)]
    pub at: Stamp,
    pub queue_id: Option<String>,
    pub device: String,
    pub peer: Option<String>,
    pub account: String,
    pub route: String,
    pub sender: String,
    pub recipients: Vec<String>,
    pub size: u64,
    /// `delivered`, `deferred`, `failed`, `refused`.
    pub result: &'static str,
    pub reply: Option<ReplyInfo>,
    pub advice: Option<String>,
}

pub fn message(r: MessageRecord) -> Message {
    Message {
        seq: r.seq,
        at: Stamp::new(r.at_ms),
        queue_id: r.queue_id,
        device: r.device,
        peer: r.peer,
        account: r.account,
        route: r.route,
        sender: r.sender,
        recipients: r.recipients,
        size: r.size,
        result: r.result.as_str(),
        reply: r.reply,
        advice: r.advice,
    }
}

/// A recipient refused for good.
#[derive(Clone, Debug, Serialize)]
pub struct Refusal {
    pub rcpt: String,
    pub reply: ReplyInfo,
}

/// A message in `queue/` or `failed/`.
#[derive(Clone, Debug, Serialize)]
pub struct QueueEntry {
    pub id: String,
    /// `queued` or `failed`.
    pub state: &'static str,
    pub account: String,
    pub device: String,
    pub sender: String,
    pub recipients: Vec<String>,
    pub remaining: Vec<String>,
    pub delivered: Vec<String>,
    pub refused: Vec<Refusal>,
    pub size: u64,
    pub received: Stamp,
    pub attempts: u32,
    pub next_attempt: Option<Stamp>,
    pub last_reply: Option<String>,
    /// The message is a failure notice the relay made.
    pub notice: bool,
}

pub fn queue_entry(q: &Queued) -> QueueEntry {
    let (e, p) = (&q.envelope, &q.progress);
    QueueEntry {
        id: e.id.to_string(),
        state: match q.area {
            Area::Queue => "queued",
            Area::Failed => "failed",
        },
        account: e.account.clone(),
        device: e.device.clone(),
        sender: e.sender.clone(),
        recipients: e.recipients.clone(),
        remaining: p.remaining.clone(),
        delivered: p.delivered.clone(),
        refused: p
            .failed
            .iter()
            .map(|f| Refusal {
                rcpt: f.rcpt.clone(),
                reply: ReplyInfo::from(&f.reply),
            })
            .collect(),
        size: e.size,
        received: Stamp::new(e.received_at_ms),
        attempts: p.attempts,
        next_attempt: p.next_attempt_ms.map(Stamp::new),
        last_reply: p.last_reply.clone(),
        notice: e.notice,
    }
}

/// One line of a message's history.
#[derive(Clone, Debug, Serialize)]
pub struct HistoryItem {
    #[serde(flatten)]
    pub at: Stamp,
    /// `attempt`, `retry_requested`, `requeued`, `moved_to_failed`, `notice_queued`.
    pub event: &'static str,
    /// What happened, in words (for an attempt: its number, outcome and stage).
    pub summary: String,
    /// The upstream's reply or our description of the failure (attempts only).
    pub reply: Option<String>,
}

fn history_item(ev: &Event) -> HistoryItem {
    let (at_ms, event, summary, reply) = match ev {
        Event::Attempt {
            at_ms,
            attempt,
            outcome,
            reply,
            stage,
            ..
        } => (
            *at_ms,
            "attempt",
            format!(
                "attempt {attempt}: {outcome}{}",
                stage
                    .as_deref()
                    .map(|s| format!(" at {s}"))
                    .unwrap_or_default()
            ),
            Some(reply.clone()),
        ),
        Event::RetryRequested { at_ms } => (
            *at_ms,
            "retry_requested",
            "retry requested by the admin".into(),
            None,
        ),
        Event::Requeued { at_ms } => (*at_ms, "requeued", "requeued by the admin".into(), None),
        Event::MovedToFailed { at_ms, reason } => (
            *at_ms,
            "moved_to_failed",
            format!("moved to failed: {reason}"),
            None,
        ),
        Event::NoticeQueued {
            at_ms,
            notice_id,
            to,
            ..
        } => (
            *at_ms,
            "notice_queued",
            format!("failure notice {notice_id} queued to {to}"),
            None,
        ),
    };
    HistoryItem {
        at: Stamp::new(at_ms),
        event,
        summary,
        reply,
    }
}

/// A message with its envelope details and history (`/api/v1/queue/{id}`).
#[derive(Clone, Debug, Serialize)]
pub struct QueueDetail {
    #[serde(flatten)]
    pub entry: QueueEntry,
    pub original_sender: Option<String>,
    pub client_ip: String,
    pub helo: String,
    pub listener: String,
    pub session: u64,
    pub eight_bit: bool,
    pub history: Vec<HistoryItem>,
}

pub fn queue_detail(q: &Queued) -> QueueDetail {
    let e = &q.envelope;
    QueueDetail {
        entry: queue_entry(q),
        original_sender: e.original_sender.clone(),
        client_ip: e.client_ip.clone(),
        helo: e.helo.clone(),
        listener: e.listener.clone(),
        session: e.session,
        eight_bit: e.eight_bit,
        history: q.events.iter().map(history_item).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_serialize_as_both_forms() {
        let v = serde_json::to_value(Stamp::new(1_796_555_431_123)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"at": "2026-12-06T11:10:31.123Z", "at_ms": 1_796_555_431_123u64})
        );
    }
}

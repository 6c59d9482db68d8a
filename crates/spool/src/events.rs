//! What happened to a queued message, as lines appended to its envelope file.
//!
//! The envelope's first line never changes; every delivery attempt, admin action and notice is
//! appended as one JSON object per line and fsynced. A message's state (attempts so far, which
//! recipients are done, when to try next, the last error) is derived from these lines, so it
//! survives any crash: an append is either whole or a torn last line that is ignored.

use crate::Envelope;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// One recipient the upstream refused, with its reply as text (`550 5.1.1 User unknown`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecipientResult {
    pub rcpt: String,
    pub reply: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A delivery attempt ended.
    Attempt {
        at_ms: u64,
        attempt: u32,
        /// `delivered`, `partial`, `deferred` or `failed`.
        outcome: String,
        /// The upstream's reply, or our description of the failure.
        reply: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stage: Option<String>,
        /// Recipients accepted in this attempt (they are done).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        delivered: Vec<String>,
        /// Recipients refused for good in this attempt.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        failed: Vec<RecipientResult>,
        /// When to try the remaining recipients again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next_attempt_ms: Option<u64>,
    },
    /// An admin asked for an immediate retry (`smtp2oauth queue retry`).
    RetryRequested { at_ms: u64 },
    /// An admin moved the message back from `failed/` (`smtp2oauth queue requeue`).
    Requeued { at_ms: u64 },
    /// The message was moved to `failed/`.
    MovedToFailed { at_ms: u64, reason: String },
    /// A failure notice about this message was queued as `notice_id`.
    NoticeQueued {
        at_ms: u64,
        notice_id: String,
        to: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        rcpts: Vec<String>,
    },
}

/// The state of a message, derived from its envelope and events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub attempts: u32,
    /// Recipients accepted by the upstream.
    pub delivered: Vec<String>,
    /// Recipients refused for good, with the reply.
    pub failed: Vec<RecipientResult>,
    /// Recipients still to deliver, in envelope order.
    pub remaining: Vec<String>,
    pub next_attempt_ms: Option<u64>,
    pub last_reply: Option<String>,
    pub last_attempt_ms: Option<u64>,
    /// Recipients already reported in a failure notice.
    pub noticed: Vec<String>,
}

impl Progress {
    pub fn from_events(envelope: &Envelope, events: &[Event]) -> Progress {
        let mut p = Progress::default();
        let mut done: HashSet<String> = HashSet::new();
        for e in events {
            match e {
                Event::Attempt {
                    at_ms,
                    attempt,
                    reply,
                    delivered,
                    failed,
                    next_attempt_ms,
                    ..
                } => {
                    p.attempts = p.attempts.max(*attempt);
                    p.last_reply = Some(reply.clone());
                    p.last_attempt_ms = Some(*at_ms);
                    p.next_attempt_ms = *next_attempt_ms;
                    for r in delivered {
                        if done.insert(r.to_ascii_lowercase()) {
                            p.delivered.push(r.clone());
                        }
                    }
                    for f in failed {
                        if done.insert(f.rcpt.to_ascii_lowercase()) {
                            p.failed.push(f.clone());
                        }
                    }
                }
                Event::RetryRequested { .. } => p.next_attempt_ms = None,
                // An admin requeues after fixing the cause: refused recipients are due again
                // (delivered ones never get the message twice).
                Event::Requeued { .. } => {
                    p.next_attempt_ms = None;
                    for f in p.failed.drain(..) {
                        done.remove(&f.rcpt.to_ascii_lowercase());
                    }
                    p.noticed.clear();
                }
                Event::NoticeQueued { rcpts, .. } => p.noticed.extend(rcpts.iter().cloned()),
                Event::MovedToFailed { .. } => {}
            }
        }
        p.remaining = envelope
            .recipients
            .iter()
            .filter(|r| !done.contains(&r.to_ascii_lowercase()))
            .cloned()
            .collect();
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Envelope {
        Envelope {
            id: "x".into(),
            received_at_ms: 0,
            account: "a".into(),
            device: "d".into(),
            listener: "l".into(),
            client_ip: "127.0.0.1".into(),
            helo: "h".into(),
            sender: "s@x".into(),
            original_sender: None,
            recipients: vec!["a@x".into(), "b@x".into(), "c@x".into()],
            eight_bit: false,
            smtputf8: false,
            size: 1,
            crc32c: None,
            notice: false,
            session: 0,
        }
    }

    #[test]
    fn progress_follows_attempts() {
        let events = vec![
            Event::Attempt {
                at_ms: 10,
                attempt: 1,
                outcome: "partial".into(),
                reply: "250 2.0.0 OK".into(),
                stage: None,
                delivered: vec!["a@x".into()],
                failed: vec![RecipientResult {
                    rcpt: "B@x".into(),
                    reply: "550 5.1.1 unknown".into(),
                }],
                next_attempt_ms: Some(100),
            },
            Event::Attempt {
                at_ms: 20,
                attempt: 2,
                outcome: "deferred".into(),
                reply: "451 4.7.500 busy".into(),
                stage: Some("mail".into()),
                delivered: vec![],
                failed: vec![],
                next_attempt_ms: Some(200),
            },
        ];
        let p = Progress::from_events(&env(), &events);
        assert_eq!(p.attempts, 2);
        assert_eq!(p.delivered, vec!["a@x"]);
        assert_eq!(p.failed.len(), 1);
        assert_eq!(p.remaining, vec!["c@x"]);
        assert_eq!(p.next_attempt_ms, Some(200));
        assert_eq!(p.last_reply.as_deref(), Some("451 4.7.500 busy"));
        let mut with_retry = events.clone();
        with_retry.push(Event::RetryRequested { at_ms: 30 });
        assert_eq!(
            Progress::from_events(&env(), &with_retry).next_attempt_ms,
            None
        );
    }

    #[test]
    fn events_round_trip_as_json_lines() {
        let e = Event::NoticeQueued {
            at_ms: 1,
            notice_id: "n".into(),
            to: "admin@x".into(),
            rcpts: vec!["b@x".into()],
        };
        let line = serde_json::to_string(&e).unwrap();
        assert!(line.starts_with("{\"event\":\"notice_queued\""), "{line}");
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), e);
    }
}

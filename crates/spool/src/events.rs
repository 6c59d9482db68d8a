//! What happened to a queued message, as lines appended to its envelope file.
//!
//! The envelope's first line never changes; every delivery attempt, admin action and notice is
//! appended as one JSON object per line and fsynced. A message's state (attempts so far, which
//! recipients are done, when to try next, the last error) is derived from these lines, so it
//! survives any crash: an append is either whole or a torn last line that is ignored.

use crate::{Envelope, MessageId};
use serde::{Deserialize, Serialize};
use smtp2oauth_proto::{EnhancedStatus, Reply, ReplyAssembler};
use std::collections::HashSet;
use std::fmt;

/// One recipient the upstream refused for good, with its reply kept as data.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(into = "StoredResult", from = "StoredResult")]
pub struct RecipientResult {
    /// The recipient's address.
    pub rcpt: String,
    /// The upstream's reply to it: code, enhanced status and text.
    pub reply: Reply,
}

/// A [`RecipientResult`] as stored: `{"rcpt", "code", "status", "text"}`. Envelopes written
/// before the code and status were fields of their own carry the reply as one line in
/// `reply` (`550 5.1.1 User unknown`); it is parsed once, here, when such a line is read.
#[derive(Serialize, Deserialize)]
struct StoredResult {
    rcpt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reply: Option<String>,
}

impl From<RecipientResult> for StoredResult {
    fn from(r: RecipientResult) -> Self {
        StoredResult {
            rcpt: r.rcpt,
            code: Some(r.reply.code()),
            status: r.reply.status().map(|s| s.to_string()),
            text: Some(r.reply.text()),
            reply: None,
        }
    }
}

impl From<StoredResult> for RecipientResult {
    fn from(s: StoredResult) -> Self {
        let reply = match (s.code, s.reply) {
            (Some(code), _) => Reply::new(
                code,
                s.status.as_deref().and_then(EnhancedStatus::parse),
                s.text.unwrap_or_default(),
            ),
            (None, Some(line)) => reply_of_line(&line),
            (None, None) => Reply::new(554, None, s.text.unwrap_or_default()),
        };
        RecipientResult {
            rcpt: s.rcpt,
            reply,
        }
    }
}

/// A reply written as one line. Only refusals are stored, so a line that is not a reply at all
/// (never written by us) is kept as the text of a permanent one.
fn reply_of_line(line: &str) -> Reply {
    ReplyAssembler::new()
        .push_line(line.as_bytes())
        .ok()
        .flatten()
        .unwrap_or_else(|| Reply::new(554, None, line))
}

/// How a delivery attempt ended, as recorded in its event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttemptOutcome {
    /// Some recipients were delivered (in this attempt, or settled with earlier ones).
    Partial,
    /// Nothing settled; the message will be tried again.
    Deferred,
    /// Every remaining recipient was refused for good.
    Failed,
    /// Undelivered for the queue's lifetime: given up.
    Expired,
}

impl AttemptOutcome {
    /// The word stored in the event (`partial`, `deferred`, `failed`, `expired`).
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Partial => "partial",
            AttemptOutcome::Deferred => "deferred",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Expired => "expired",
        }
    }
}

impl fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line appended to an envelope file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A delivery attempt ended.
    Attempt {
        /// When it ended (ms since the epoch).
        at_ms: u64,
        /// Its number (1 for the first).
        attempt: u32,
        /// How it ended.
        outcome: AttemptOutcome,
        /// The upstream's reply, or our description of the failure.
        reply: String,
        /// The step of the upstream conversation at which it failed.
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
    RetryRequested {
        /// When (ms since the epoch).
        at_ms: u64,
    },
    /// An admin moved the message back from `failed/` (`smtp2oauth queue requeue`).
    Requeued {
        /// When (ms since the epoch).
        at_ms: u64,
    },
    /// The message was moved to `failed/`.
    MovedToFailed {
        /// When (ms since the epoch).
        at_ms: u64,
        /// Why, in words.
        reason: String,
    },
    /// A failure notice about this message was queued as `notice_id`.
    NoticeQueued {
        /// When (ms since the epoch).
        at_ms: u64,
        /// The notice's own queue id.
        notice_id: MessageId,
        /// Where the notice goes.
        to: String,
        /// The recipients it reports.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        rcpts: Vec<String>,
    },
}

/// The state of a message, derived from its envelope and events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Attempts made so far.
    pub attempts: u32,
    /// Recipients accepted by the upstream.
    pub delivered: Vec<String>,
    /// Recipients refused for good, with the reply.
    pub failed: Vec<RecipientResult>,
    /// Recipients still to deliver, in envelope order.
    pub remaining: Vec<String>,
    /// When the next attempt is due (None: now).
    pub next_attempt_ms: Option<u64>,
    /// The last attempt's reply.
    pub last_reply: Option<String>,
    /// When the last attempt ended.
    pub last_attempt_ms: Option<u64>,
    /// Recipients already reported in a failure notice.
    pub noticed: Vec<String>,
}

impl Progress {
    /// Replays `events` over `envelope`.
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
            id: MessageId::parse("0123456789abcdef").unwrap(),
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
            crc32c: 0,
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
                outcome: AttemptOutcome::Partial,
                reply: "250 2.0.0 OK".into(),
                stage: None,
                delivered: vec!["a@x".into()],
                failed: vec![RecipientResult {
                    rcpt: "B@x".into(),
                    reply: Reply::with_status(550, (5, 1, 1), "unknown"),
                }],
                next_attempt_ms: Some(100),
            },
            Event::Attempt {
                at_ms: 20,
                attempt: 2,
                outcome: AttemptOutcome::Deferred,
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
            notice_id: MessageId::parse("00000000000000ff").unwrap(),
            to: "admin@x".into(),
            rcpts: vec!["b@x".into()],
        };
        let line = serde_json::to_string(&e).unwrap();
        assert!(line.starts_with("{\"event\":\"notice_queued\""), "{line}");
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), e);
        let e = Event::Attempt {
            at_ms: 1,
            attempt: 2,
            outcome: AttemptOutcome::Expired,
            reply: "451 4.4.2 lost".into(),
            stage: Some("body".into()),
            delivered: vec![],
            failed: vec![RecipientResult {
                rcpt: "b@x".into(),
                reply: Reply::with_status(550, (5, 7, 708), "Access denied"),
            }],
            next_attempt_ms: None,
        };
        let line = serde_json::to_string(&e).unwrap();
        assert!(line.contains("\"outcome\":\"expired\""), "{line}");
        assert!(
            line.contains(
                "{\"rcpt\":\"b@x\",\"code\":550,\"status\":\"5.7.708\",\"text\":\"Access denied\"}"
            ),
            "{line}"
        );
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), e);
    }

    /// Event lines as the released relay writes them: outcomes as words, refused recipients
    /// with their reply as one line. They load, with code and status as data.
    #[test]
    fn event_lines_of_the_released_format_load() {
        let lines = [
            r#"{"event":"attempt","at_ms":10,"attempt":1,"outcome":"partial","reply":"250 2.0.0 OK","delivered":["a@x"],"failed":[{"rcpt":"b@x","reply":"550 5.1.1 User unknown"}]}"#,
            r#"{"event":"attempt","at_ms":20,"attempt":2,"outcome":"deferred","reply":"451 4.7.500 Server busy","stage":"mail","next_attempt_ms":200}"#,
            r#"{"event":"attempt","at_ms":30,"attempt":3,"outcome":"failed","reply":"554 5.2.252 SendAsDenied","stage":"body","failed":[{"rcpt":"c@x","reply":"554 5.2.252 SendAsDenied; x"}]}"#,
            r#"{"event":"attempt","at_ms":40,"attempt":4,"outcome":"expired","reply":"451 4.4.2 lost"}"#,
            r#"{"event":"notice_queued","at_ms":50,"notice_id":"0123456789abcdef","to":"admin@x","rcpts":["b@x"]}"#,
        ];
        let events: Vec<Event> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect();
        let outcomes: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                Event::Attempt { outcome, .. } => Some(*outcome),
                _ => None,
            })
            .collect();
        assert_eq!(
            outcomes,
            [
                AttemptOutcome::Partial,
                AttemptOutcome::Deferred,
                AttemptOutcome::Failed,
                AttemptOutcome::Expired
            ]
        );
        let p = Progress::from_events(&env(), &events);
        assert_eq!(p.delivered, ["a@x"]);
        assert_eq!(p.failed.len(), 2);
        let b = &p.failed[0];
        assert_eq!(b.rcpt, "b@x");
        assert_eq!(b.reply.code(), 550);
        assert_eq!(b.reply.status(), Some(EnhancedStatus::new(5, 1, 1)));
        assert_eq!(b.reply.text(), "User unknown");
        assert_eq!(
            p.failed[1].reply.status(),
            Some(EnhancedStatus::new(5, 2, 252))
        );
        assert_eq!(p.noticed, ["b@x"]);
        // An event line of an unknown kind or outcome is skipped, like a torn one.
        assert!(
            serde_json::from_str::<Event>(
                r#"{"event":"attempt","at_ms":1,"attempt":1,"outcome":"teleported","reply":"x"}"#
            )
            .is_err()
        );
    }
}

//! The recent-messages log: the last outcomes, newest first, searchable like a message trace.
//!
//! "My scan never arrived" is answered by looking a message up by recipient, device or time and
//! reading the exact reply. Each outcome is one record (a message deferred twice and then
//! delivered has three), in a ring of fixed capacity (`[admin] recent_messages`).

use crate::reply::ReplyInfo;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fmt;

/// Most records a filter returns when it names no limit.
pub const DEFAULT_LIMIT: usize = 100;

/// What became of a message at one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageResult {
    /// The upstream accepted it (for every remaining recipient, or the rest were refused).
    Delivered,
    /// Not delivered yet; queued for a retry.
    Deferred,
    /// Refused for good or expired: kept in `failed/`.
    Failed,
    /// We refused it to the device before it was queued (sender not allowed, too large, ...).
    Refused,
}

impl MessageResult {
    /// The name used in the API and filters.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageResult::Delivered => "delivered",
            MessageResult::Deferred => "deferred",
            MessageResult::Failed => "failed",
            MessageResult::Refused => "refused",
        }
    }

    /// Parses [`MessageResult::as_str`].
    pub fn parse(s: &str) -> Option<MessageResult> {
        [
            MessageResult::Delivered,
            MessageResult::Deferred,
            MessageResult::Failed,
            MessageResult::Refused,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

impl fmt::Display for MessageResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One outcome of one message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// Order of arrival in this log (grows by one per record; survives nothing).
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The queue id; None for a message refused before it was queued.
    pub queue_id: Option<String>,
    /// The device's name; empty when the session was not identified.
    pub device: String,
    /// The peer's address, when known.
    pub peer: Option<String>,
    /// The account; empty when not known.
    pub account: String,
    /// The route (`smtp`, `graph`, `smarthost`, `capture`); empty when not known.
    pub route: String,
    /// The envelope sender.
    pub sender: String,
    /// The envelope recipients.
    pub recipients: Vec<String>,
    /// The message's size in bytes (0 when refused before DATA).
    pub size: u64,
    /// What became of it.
    pub result: MessageResult,
    /// The upstream's reply (or ours, for a message refused to the device).
    pub reply: Option<ReplyInfo>,
    /// What to do about it, for failures.
    pub advice: Option<String>,
}

/// A search of the log. Empty fields match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageFilter {
    /// Exact device name.
    pub device: Option<String>,
    /// Exact account name.
    pub account: Option<String>,
    /// Part of a recipient address, case-insensitive.
    pub rcpt: Option<String>,
    /// Exact queue id.
    pub queue_id: Option<String>,
    /// Only this result.
    pub result: Option<MessageResult>,
    /// At most this many records (default [`DEFAULT_LIMIT`]).
    pub limit: Option<usize>,
}

impl MessageFilter {
    fn matches(&self, r: &MessageRecord) -> bool {
        let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        eq(&self.device, &r.device)
            && eq(&self.account, &r.account)
            && self
                .queue_id
                .as_deref()
                .is_none_or(|q| r.queue_id.as_deref() == Some(q))
            && self.result.is_none_or(|res| res == r.result)
            && self.rcpt.as_deref().is_none_or(|part| {
                let part = part.to_lowercase();
                r.recipients
                    .iter()
                    .any(|a| a.to_lowercase().contains(&part))
            })
    }
}

/// The ring of records.
#[derive(Clone, Debug)]
pub(crate) struct Log {
    capacity: usize,
    next_seq: u64,
    records: VecDeque<MessageRecord>,
}

impl Log {
    pub(crate) fn new(capacity: usize) -> Log {
        Log {
            capacity,
            next_seq: 1,
            records: VecDeque::with_capacity(capacity.min(4096)),
        }
    }

    /// Adds a record (its `seq` is assigned here) and returns it.
    pub(crate) fn push(&mut self, mut record: MessageRecord) -> MessageRecord {
        record.seq = self.next_seq;
        self.next_seq += 1;
        if self.capacity == 0 {
            return record;
        }
        if self.records.len() == self.capacity {
            self.records.pop_front();
        }
        self.records.push_back(record.clone());
        record
    }

    /// Matching records, newest first.
    pub(crate) fn search(&self, filter: &MessageFilter) -> Vec<MessageRecord> {
        let limit = filter.limit.unwrap_or(DEFAULT_LIMIT);
        self.records
            .iter()
            .rev()
            .filter(|r| filter.matches(r))
            .take(limit)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(device: &str, rcpt: &str, result: MessageResult) -> MessageRecord {
        MessageRecord {
            seq: 0,
            at_ms: 1,
            queue_id: Some(format!("q-{device}-{rcpt}")),
            device: device.into(),
            peer: None,
            account: "scanner".into(),
            route: "smtp".into(),
            sender: "scanner@contoso.com".into(),
            recipients: vec![rcpt.into()],
            size: 10,
            result,
            reply: None,
            advice: None,
        }
    }

    #[test]
    fn ring_keeps_the_newest_and_numbers_records() {
        let mut log = Log::new(3);
        for i in 0..5 {
            log.push(record(
                "mfp",
                &format!("u{i}@b.example"),
                MessageResult::Delivered,
            ));
        }
        let all = log.search(&MessageFilter::default());
        let seqs: Vec<u64> = all.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [5, 4, 3]);
    }

    #[test]
    fn filters_combine() {
        let mut log = Log::new(100);
        log.push(record("mfp", "Alice@B.example", MessageResult::Delivered));
        log.push(record("nas", "alice@b.example", MessageResult::Refused));
        log.push(record("mfp", "bob@b.example", MessageResult::Deferred));
        let f = |device: Option<&str>, rcpt: Option<&str>, result: Option<MessageResult>| {
            log.search(&MessageFilter {
                device: device.map(Into::into),
                rcpt: rcpt.map(Into::into),
                result,
                ..MessageFilter::default()
            })
            .len()
        };
        assert_eq!(f(None, None, None), 3);
        assert_eq!(f(Some("mfp"), None, None), 2);
        assert_eq!(f(None, Some("ALICE"), None), 2);
        assert_eq!(f(Some("mfp"), Some("alice"), None), 1);
        assert_eq!(f(None, None, Some(MessageResult::Refused)), 1);
        assert_eq!(f(Some("printer"), None, None), 0);
        let limited = log.search(&MessageFilter {
            limit: Some(1),
            ..MessageFilter::default()
        });
        assert_eq!(limited.len(), 1);
        assert_eq!(limited[0].recipients, ["bob@b.example"]);
    }

    #[test]
    fn results_parse_their_names() {
        for r in [
            MessageResult::Delivered,
            MessageResult::Deferred,
            MessageResult::Failed,
            MessageResult::Refused,
        ] {
            assert_eq!(MessageResult::parse(r.as_str()), Some(r));
        }
        assert_eq!(MessageResult::parse("bounced"), None);
    }
}

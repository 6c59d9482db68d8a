//! What each attempt tells the activity store (the console, the API, the notifier): one
//! record for the recent-messages log, and the attempt's signal about its account.
//!
//! Data flows one way: the scheduler publishes, readers only read. Nothing here decides
//! anything; the account's signal comes from `signal.rs`, its state from the activity crate.

use crate::attempt::Attempt;
use crate::signal::account_signal;
use crate::verdict::Verdict;
use crate::{Inner, now_ms};
use smtp2oauth_activity::{AttemptReport, AttemptResult, MessageRecord, MessageResult, ReplyInfo};
use smtp2oauth_proto::Reply;
use smtp2oauth_upstream::advice;
use std::time::Duration;

impl Inner {
    /// Publishes an attempt and its verdict; `pause` is the account's pause that the verdict
    /// started (throttling, or a refused account).
    pub(crate) fn publish(&self, a: &Attempt<'_>, verdict: &Verdict, pause: Option<Duration>) {
        let Some(activity) = &self.activity else {
            return;
        };
        let now = now_ms();
        let (message, account) = results(verdict);
        let reply = ReplyInfo::from(shown_reply(a));
        let advice = Some(advice_of(a))
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let env = &a.q.envelope;
        let pause_ms = pause.map_or(0, |p| u64::try_from(p.as_millis()).unwrap_or(u64::MAX));
        activity.attempt(&AttemptReport {
            account: env.account.clone(),
            at_ms: now,
            result: Some(account),
            signal: account_signal(&a.out, now.saturating_add(pause_ms)),
            reply: Some(reply.clone()),
            advice: advice.clone(),
        });
        activity.message(MessageRecord {
            seq: 0,
            at_ms: now,
            queue_id: Some(env.id.to_string()),
            device: env.device.clone(),
            peer: Some(env.client_ip.clone()),
            account: env.account.clone(),
            route: a.route_kind().to_string(),
            sender: env.sender.clone(),
            recipients: env.recipients.clone(),
            size: env.size,
            result: message,
            reply: Some(reply),
            advice,
        });
    }
}

/// What became of the message, and of the attempt as far as its account is concerned. A
/// message delivered to some recipients and refused for the others went through: both say
/// delivered (the refusals are in the record's reply and in the failure notice).
fn results(verdict: &Verdict) -> (MessageResult, AttemptResult) {
    match verdict {
        Verdict::Delivered | Verdict::Failed { partial: true } => {
            (MessageResult::Delivered, AttemptResult::Delivered)
        }
        Verdict::Deferred { .. } => (MessageResult::Deferred, AttemptResult::Deferred),
        Verdict::Refused(_) | Verdict::Failed { partial: false } | Verdict::Expired => {
            (MessageResult::Failed, AttemptResult::Failed)
        }
    }
}

/// The reply worth showing: the failure's (the upstream's own, or our description of what
/// went wrong), else a refused recipient's, else the upstream's final reply.
fn shown_reply<'a>(a: &'a Attempt<'_>) -> &'a Reply {
    let out = &a.out;
    if out.error.is_some() {
        return &out.reply;
    }
    out.failed
        .first()
        .or(out.deferred.first())
        .map_or(&out.reply, |(_, r)| r)
}

/// Advice for the failure, or for the first refused recipient.
fn advice_of(a: &Attempt<'_>) -> &'static str {
    if a.out.error.is_some() {
        return a.advice();
    }
    a.out
        .failed
        .iter()
        .chain(&a.out.deferred)
        .find_map(|(_, r)| advice::for_recipient(r))
        .unwrap_or("")
}

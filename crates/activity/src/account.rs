//! Per-account health: one state an admin can act on, and the evidence for it.
//!
//! A token that is "valid for 59 minutes" says nothing about whether Exchange accepts it. The
//! state here comes from what the upstream and the token endpoint actually answered, newest
//! first: a delivery proves the account works, a refusal of the account itself (credentials,
//! permissions, connector) makes it `degraded`, and so on. Refusals of one message (an unknown
//! recipient, a message too large) say nothing about the account and leave its state alone.
//!
//! The state is decided by [`next_condition`], a pure function, so the rules are table-tested.

use crate::reply::ReplyInfo;
use serde::{Deserialize, Serialize};
use std::fmt;

/// An account's health, as named in the API, the metric and the CLI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum AccountState {
    /// The last attempt (or sign-in) worked, or nothing has happened yet.
    Ok,
    /// The upstream refuses the account itself: `535 5.7.3`, `535 5.7.139`, `530 5.7.57`, Graph
    /// 401/403 for the app, a smart host refusing our address or certificate, a client secret
    /// the token endpoint rejects.
    Degraded,
    /// A person must sign in again before mail can go out.
    SignInNeeded,
    /// The upstream is throttling the account; its mail waits for the pause to end.
    Throttled,
    /// The token endpoint or the upstream cannot be reached (or times out).
    Unreachable,
}

impl AccountState {
    /// Every state, in the order the metric lists them.
    pub const ALL: [AccountState; 5] = [
        AccountState::Ok,
        AccountState::Degraded,
        AccountState::SignInNeeded,
        AccountState::Throttled,
        AccountState::Unreachable,
    ];

    /// The name used in the API, the metric label and the CLI's `--json`.
    pub fn as_str(self) -> &'static str {
        match self {
            AccountState::Ok => "ok",
            AccountState::Degraded => "degraded",
            AccountState::SignInNeeded => "sign_in_needed",
            AccountState::Throttled => "throttled",
            AccountState::Unreachable => "unreachable",
        }
    }

    /// The state in words, for pages and the CLI.
    pub fn words(self) -> &'static str {
        match self {
            AccountState::Ok => "working",
            AccountState::Degraded => "refused by the upstream",
            AccountState::SignInNeeded => "needs a sign-in",
            AccountState::Throttled => "throttled by the upstream",
            AccountState::Unreachable => "upstream unreachable",
        }
    }

    /// True for every state but `ok`.
    pub fn is_problem(self) -> bool {
        self != AccountState::Ok
    }
}

impl fmt::Display for AccountState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one event says about the account (not about a message).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccountSignal {
    /// The upstream accepted mail (or a sign-in completed): the account works.
    Working,
    /// The upstream or the token endpoint refuses the account itself.
    Refused,
    /// The upstream throttles the account until this time (ms since the epoch).
    Throttled {
        /// When the pause ends.
        until_ms: u64,
    },
    /// The token endpoint or the upstream could not be reached.
    Unreachable,
    /// A person must sign in again.
    SignInNeeded,
    /// Nothing about the account: a refusal of one message or recipient, a local error.
    Neutral,
}

/// The account's current condition and the evidence for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    /// The state.
    pub state: AccountState,
    /// Since when (ms since the epoch); None for `ok` before anything happened.
    pub since_ms: Option<u64>,
    /// The reply that put the account in this state (for a problem state).
    pub reply: Option<ReplyInfo>,
    /// What to do about it, in plain words.
    pub advice: Option<String>,
    /// For `throttled`: when the pause ends (ms since the epoch).
    pub until_ms: Option<u64>,
}

impl Default for Condition {
    fn default() -> Condition {
        Condition {
            state: AccountState::Ok,
            since_ms: None,
            reply: None,
            advice: None,
            until_ms: None,
        }
    }
}

impl Condition {
    /// The condition as it stands at `now_ms`: a throttling pause that has ended reads `ok`.
    pub fn at(&self, now_ms: u64) -> Condition {
        match self.until_ms {
            Some(until) if self.state == AccountState::Throttled && now_ms >= until => Condition {
                state: AccountState::Ok,
                since_ms: Some(until),
                ..Condition::default()
            },
            _ => self.clone(),
        }
    }
}

/// Decides the condition after an event. Pure: the rules of account health are this function.
///
/// - `Working` clears any problem (and keeps the time `ok` began).
/// - `Refused`, `Unreachable`, `SignInNeeded`, `Throttled` set that state; the time it began is
///   kept while the state stays the same, so "refused since 10:02" survives every retry.
/// - `Neutral` changes nothing, except that a throttling pause that has ended reads `ok`.
pub fn next_condition(
    current: &Condition,
    signal: AccountSignal,
    at_ms: u64,
    reply: Option<&ReplyInfo>,
    advice: Option<&str>,
) -> Condition {
    let current = current.at(at_ms);
    let (state, until_ms) = match signal {
        AccountSignal::Neutral => return current,
        AccountSignal::Working => (AccountState::Ok, None),
        AccountSignal::Refused => (AccountState::Degraded, None),
        AccountSignal::Unreachable => (AccountState::Unreachable, None),
        AccountSignal::SignInNeeded => (AccountState::SignInNeeded, None),
        AccountSignal::Throttled { until_ms } => (AccountState::Throttled, Some(until_ms)),
    };
    let since_ms = if current.state == state && current.since_ms.is_some() {
        current.since_ms
    } else {
        Some(at_ms)
    };
    if state == AccountState::Ok {
        return Condition {
            since_ms,
            ..Condition::default()
        };
    }
    Condition {
        state,
        since_ms,
        reply: reply.cloned(),
        advice: advice.map(str::to_string),
        until_ms,
    }
}

/// The result of one delivery attempt, as far as the account is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptResult {
    /// Delivered to every remaining recipient (or to some, the rest refused for good).
    Delivered,
    /// Not delivered yet; the message stays queued.
    Deferred,
    /// Refused for good or expired; the message is in `failed/`.
    Failed,
}

/// When something happened and what the upstream said.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Happening {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The upstream's reply (or ours, for a failure without one).
    pub reply: Option<ReplyInfo>,
    /// What to do about it, for failures.
    pub advice: Option<String>,
}

/// An account's activity as the console shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountActivity {
    /// The account's name.
    pub name: String,
    /// Its state and the evidence.
    pub condition: Condition,
    /// The last delivery (time, the upstream's reply).
    pub last_delivery: Option<Happening>,
    /// The last failed attempt (time, reply, advice), whatever its cause.
    pub last_failure: Option<Happening>,
    /// Attempts in a row that failed because of the account (reset by a delivery).
    pub consecutive_failures: u64,
}

impl AccountActivity {
    pub(crate) fn new(name: &str) -> AccountActivity {
        AccountActivity {
            name: name.to_string(),
            condition: Condition::default(),
            last_delivery: None,
            last_failure: None,
            consecutive_failures: 0,
        }
    }

    /// Applies one attempt's result; returns the state before and after.
    pub(crate) fn apply(&mut self, report: &AttemptReport) -> (AccountState, AccountState) {
        let before = self.condition.at(report.at_ms).state;
        let happening = Happening {
            at_ms: report.at_ms,
            reply: report.reply.clone(),
            advice: report.advice.clone(),
        };
        match report.result {
            Some(AttemptResult::Delivered) => self.last_delivery = Some(happening),
            Some(_) => self.last_failure = Some(happening),
            None => {}
        }
        match report.signal {
            AccountSignal::Working => self.consecutive_failures = 0,
            AccountSignal::Neutral => {}
            _ => self.consecutive_failures += 1,
        }
        self.condition = next_condition(
            &self.condition,
            report.signal,
            report.at_ms,
            report.reply.as_ref(),
            report.advice.as_deref(),
        );
        (before, self.condition.state)
    }

    /// The same activity with its condition as it stands at `now_ms`.
    pub(crate) fn at(&self, now_ms: u64) -> AccountActivity {
        AccountActivity {
            condition: self.condition.at(now_ms),
            ..self.clone()
        }
    }
}

/// What the scheduler (or the sign-in watcher) reports about an account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptReport {
    /// The account.
    pub account: String,
    /// When, in ms since the epoch.
    pub at_ms: u64,
    /// What happened to the message, if this was a delivery attempt (None for a sign-in or a
    /// token check).
    pub result: Option<AttemptResult>,
    /// What it says about the account.
    pub signal: AccountSignal,
    /// The upstream's reply.
    pub reply: Option<ReplyInfo>,
    /// What to do about it.
    pub advice: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use AccountSignal::*;
    use AccountState as S;

    fn reply(code: u16, status: &str) -> ReplyInfo {
        ReplyInfo::new(code, Some(status.into()), "text")
    }

    #[test]
    fn table() {
        let ok = Condition::default();
        let degraded = next_condition(&ok, Refused, 100, Some(&reply(535, "5.7.3")), Some("fix"));
        // (current, signal, at, expected state, expected since)
        let cases: Vec<(&Condition, AccountSignal, u64, AccountState, Option<u64>)> = vec![
            (&ok, Working, 10, S::Ok, Some(10)),
            (&ok, Neutral, 10, S::Ok, None),
            (&ok, Refused, 10, S::Degraded, Some(10)),
            (&ok, Unreachable, 10, S::Unreachable, Some(10)),
            (&ok, SignInNeeded, 10, S::SignInNeeded, Some(10)),
            (&ok, Throttled { until_ms: 50 }, 10, S::Throttled, Some(10)),
            // A repeated refusal keeps the time it began.
            (&degraded, Refused, 500, S::Degraded, Some(100)),
            // A refusal of one message says nothing about the account.
            (&degraded, Neutral, 500, S::Degraded, Some(100)),
            (&degraded, Working, 600, S::Ok, Some(600)),
            (&degraded, Unreachable, 600, S::Unreachable, Some(600)),
            (&degraded, SignInNeeded, 600, S::SignInNeeded, Some(600)),
        ];
        for (cur, signal, at, state, since) in cases {
            let next = next_condition(cur, signal, at, Some(&reply(535, "5.7.3")), Some("fix"));
            assert_eq!(next.state, state, "{:?} + {signal:?}", cur.state);
            assert_eq!(next.since_ms, since, "{:?} + {signal:?}", cur.state);
            if state == S::Ok {
                assert_eq!(next.reply, None);
                assert_eq!(next.advice, None);
            } else {
                assert_eq!(next.reply, Some(reply(535, "5.7.3")));
                assert_eq!(next.advice.as_deref(), Some("fix"));
            }
        }
    }

    #[test]
    fn a_throttling_pause_reads_ok_once_it_ends() {
        let t = next_condition(
            &Condition::default(),
            Throttled { until_ms: 1000 },
            10,
            Some(&reply(451, "4.7.500")),
            None,
        );
        assert_eq!(t.at(999).state, S::Throttled);
        assert_eq!(t.at(1000).state, S::Ok);
        assert_eq!(t.at(1000).since_ms, Some(1000));
        // A neutral event after the pause also reads ok.
        assert_eq!(next_condition(&t, Neutral, 2000, None, None).state, S::Ok);
    }

    #[test]
    fn consecutive_failures_count_account_failures_only() {
        let mut a = AccountActivity::new("scanner");
        let report = |signal, result| AttemptReport {
            account: "scanner".into(),
            at_ms: 1,
            result: Some(result),
            signal,
            reply: Some(reply(535, "5.7.3")),
            advice: None,
        };
        a.apply(&report(Refused, AttemptResult::Deferred));
        a.apply(&report(Refused, AttemptResult::Deferred));
        a.apply(&report(Neutral, AttemptResult::Failed));
        assert_eq!(a.consecutive_failures, 2);
        assert!(a.last_failure.is_some());
        let (before, after) = a.apply(&report(Working, AttemptResult::Delivered));
        assert_eq!((before, after), (S::Degraded, S::Ok));
        assert_eq!(a.consecutive_failures, 0);
        assert!(a.last_delivery.is_some());
    }

    #[test]
    fn names_are_the_contract() {
        let names: Vec<&str> = AccountState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "ok",
                "degraded",
                "sign_in_needed",
                "throttled",
                "unreachable"
            ]
        );
        for s in AccountState::ALL {
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
    }
}

/// Which account should carry a notice (a failure notice to `bounce_to`, an alert e-mail).
///
/// A notice about a broken account must not wait in that account's queue, where nobody would
/// hear of it. So: `notify_account` when the admin set one; otherwise `about` itself while it is
/// healthy; otherwise the first healthy account in name order among those that can deliver
/// (`can_carry`: not a capture account, say). None when no account is healthy: the caller keeps
/// the notice with `about` and reports that it could not be sent.
pub fn notice_carrier(
    notify_account: Option<&str>,
    about: &str,
    accounts: &[AccountActivity],
    now_ms: u64,
    can_carry: impl Fn(&str) -> bool,
) -> Option<String> {
    if let Some(n) = notify_account {
        return Some(n.to_string());
    }
    let healthy =
        |a: &AccountActivity| !a.condition.at(now_ms).state.is_problem() && can_carry(&a.name);
    if accounts.iter().any(|a| a.name == about && healthy(a)) {
        return Some(about.to_string());
    }
    let mut candidates: Vec<&AccountActivity> = accounts.iter().filter(|a| healthy(a)).collect();
    candidates.sort_by(|a, b| a.name.cmp(&b.name));
    candidates.first().map(|a| a.name.clone())
}

#[cfg(test)]
mod carrier_tests {
    use super::*;

    fn account(name: &str, state: AccountState) -> AccountActivity {
        let mut a = AccountActivity::new(name);
        a.condition.state = state;
        a
    }

    #[test]
    fn a_notice_avoids_the_broken_account() {
        let accounts = [
            account("scanner", AccountState::Degraded),
            account("fax", AccountState::Ok),
            account("capture", AccountState::Ok),
            account("backup", AccountState::Ok),
        ];
        let deliverable = |n: &str| n != "capture";
        let pick = |notify: Option<&str>, about: &str| {
            notice_carrier(notify, about, &accounts, 0, deliverable)
        };
        assert_eq!(pick(Some("alerts"), "scanner").as_deref(), Some("alerts"));
        assert_eq!(pick(None, "fax").as_deref(), Some("fax"));
        assert_eq!(pick(None, "scanner").as_deref(), Some("backup"));
        let all_down = [account("scanner", AccountState::SignInNeeded)];
        assert_eq!(
            notice_carrier(None, "scanner", &all_down, 0, |_| true),
            None
        );
    }
}

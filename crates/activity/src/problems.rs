//! What is wrong right now, in words, with what to do: the overview's list and the notifier's
//! subjects.
//!
//! One pure function, [`problems`], decides it from the accounts' conditions and a few facts
//! the binary measures (queue age, free space, certificate expiry, notices that could not be
//! sent). The overview page shows its result; the notifier sends an event when a subject
//! appears, reminds while it lasts, and says when it clears (`alerts.rs`). Both therefore agree
//! on what a problem is.

use crate::account::{AccountActivity, AccountState};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// Measures the facts besides the accounts (the binary provides it: it reads the spool, the
/// filesystem and the certificates). The overview and the notifier both call it.
pub type EnvironmentFn =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Environment> + Send>> + Send + Sync>;

const DAY_MS: u64 = 86_400_000;
const MIB: u64 = 1024 * 1024;

/// What a problem is about; one open problem per subject at a time.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum Subject {
    /// An account (by name) that is not `ok`.
    Account(String),
    /// The oldest queued message is older than `alert_queue_age`.
    QueueAge,
    /// A certificate we use (by label) expired or expires soon.
    Certificate(String),
    /// Free space on the spool's filesystem is below twice `min_free_space`.
    FreeSpace,
    /// A failure notice or a notification could not be sent (by what it was about).
    Notice(String),
}

impl Subject {
    /// A stable key, e.g. `account:scanner`.
    pub fn key(&self) -> String {
        match self {
            Subject::Account(n) => format!("account:{n}"),
            Subject::QueueAge => "queue_age".into(),
            Subject::Certificate(l) => format!("certificate:{l}"),
            Subject::FreeSpace => "free_space".into(),
            Subject::Notice(n) => format!("notice:{n}"),
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

/// How bad a problem is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Mail is stuck or will be refused until someone acts.
    Error,
    /// Mail still flows, but something needs attention soon.
    Warning,
}

/// One problem, ready to show.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// What it is about.
    pub subject: Subject,
    /// How bad it is.
    pub level: Level,
    /// For an account: its state (the alert's "kind" changes when this changes).
    pub state: Option<AccountState>,
    /// One line, e.g. `Account scanner: the upstream refuses the account (535 5.7.3 ...)`.
    pub summary: String,
    /// What to do, in plain words.
    pub advice: String,
    /// The doc page and section that explains it, e.g. `troubleshooting.md#account-degraded`.
    pub doc: String,
    /// Since when (ms since the epoch), when known.
    pub since_ms: Option<u64>,
}

/// A certificate the relay uses and when it stops being valid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateInfo {
    /// What it is, e.g. `listener certificate /data/tls/cert.pem` or `account scanner's client
    /// certificate`.
    pub label: String,
    /// Its notAfter, ms since the epoch.
    pub not_after_ms: u64,
}

/// A notice or notification that could not be sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeFailure {
    /// What it was about (a queue id, or an alert subject's key).
    pub about: String,
    /// Why it could not be sent.
    pub reason: String,
    /// When, ms since the epoch.
    pub at_ms: u64,
}

/// The facts besides the accounts that problems are decided from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Environment {
    /// Now, ms since the epoch.
    pub now_ms: u64,
    /// When the oldest queued message was received (ms since the epoch), if any is queued.
    pub oldest_queued_ms: Option<u64>,
    /// `[notify] alert_queue_age` in ms.
    pub alert_queue_age_ms: u64,
    /// Free bytes on the spool's filesystem, when known.
    pub free_space: Option<u64>,
    /// `[store] min_free_space` in bytes.
    pub min_free_space: u64,
    /// Certificates in use.
    pub certificates: Vec<CertificateInfo>,
    /// How long before expiry a certificate becomes a problem, in ms (14 days).
    pub certificate_warning_ms: u64,
    /// Notices and notifications that could not be sent and have not been sent since.
    pub notice_failures: Vec<NoticeFailure>,
}

/// Every problem, errors first, then by subject.
pub fn problems(accounts: &[AccountActivity], env: &Environment) -> Vec<Problem> {
    let mut out: Vec<Problem> = accounts
        .iter()
        .filter_map(|a| account_problem(a, env.now_ms))
        .collect();
    out.extend(queue_age_problem(env));
    out.extend(
        env.certificates
            .iter()
            .filter_map(|c| certificate_problem(c, env)),
    );
    out.extend(free_space_problem(env));
    out.extend(env.notice_failures.iter().map(notice_problem));
    out.sort_by(|a, b| {
        a.level
            .cmp(&b.level)
            .then_with(|| a.subject.key().cmp(&b.subject.key()))
    });
    out
}

fn account_problem(a: &AccountActivity, now_ms: u64) -> Option<Problem> {
    let c = a.condition.at(now_ms);
    if !c.state.is_problem() {
        return None;
    }
    let reply = c
        .reply
        .as_ref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    let name = &a.name;
    let (level, what, default_advice, doc) = match c.state {
        AccountState::Degraded => (
            Level::Error,
            "the upstream refuses the account itself; its mail stays queued",
            "Check the account's permissions and credentials in Entra ID and Exchange (see the reply); mail goes out by itself once the upstream accepts the account again.",
            "troubleshooting.md#account-degraded",
        ),
        AccountState::SignInNeeded => (
            Level::Error,
            "needs a sign-in; its mail stays queued until someone signs in",
            "Open Accounts and click Sign in, or run `smtp2oauth account login` with the account's name.",
            "troubleshooting.md#account-needs-a-sign-in",
        ),
        AccountState::Unreachable => (
            Level::Error,
            "the upstream or the token endpoint cannot be reached; its mail stays queued",
            "Check the relay's network access (DNS, firewall, proxy) to the token endpoint and the upstream; delivery resumes by itself.",
            "troubleshooting.md#account-unreachable",
        ),
        AccountState::Throttled => (
            Level::Warning,
            "throttled by the upstream; its mail waits for the pause to end",
            "Nothing to do unless it lasts: lower max_messages_per_minute or spread devices over several accounts.",
            "troubleshooting.md#account-throttled",
        ),
        AccountState::Ok => return None,
    };
    Some(Problem {
        subject: Subject::Account(name.clone()),
        level,
        state: Some(c.state),
        summary: format!("Account {name}: {what}{reply}"),
        advice: c
            .advice
            .clone()
            .unwrap_or_else(|| default_advice.to_string()),
        doc: doc.into(),
        since_ms: c.since_ms,
    })
}

fn queue_age_problem(env: &Environment) -> Option<Problem> {
    let oldest = env.oldest_queued_ms?;
    let age = env.now_ms.saturating_sub(oldest);
    if env.alert_queue_age_ms == 0 || age < env.alert_queue_age_ms {
        return None;
    }
    Some(Problem {
        subject: Subject::QueueAge,
        level: Level::Warning,
        state: None,
        summary: format!("The oldest queued message has waited {}", duration_words(age)),
        advice: "Open Queue to see why it waits (its last reply and next retry); the accounts' states usually say what to fix.".into(),
        doc: "queue.md#messages-that-wait".into(),
        since_ms: Some(oldest + env.alert_queue_age_ms),
    })
}

fn certificate_problem(c: &CertificateInfo, env: &Environment) -> Option<Problem> {
    let now = env.now_ms;
    if c.not_after_ms > now.saturating_add(env.certificate_warning_ms) {
        return None;
    }
    let (level, summary) = if c.not_after_ms <= now {
        (
            Level::Error,
            format!(
                "Certificate expired {} ago: {}",
                duration_words(now - c.not_after_ms),
                c.label
            ),
        )
    } else {
        (
            Level::Warning,
            format!(
                "Certificate expires in {}: {}",
                duration_words(c.not_after_ms - now),
                c.label
            ),
        )
    };
    Some(Problem {
        subject: Subject::Certificate(c.label.clone()),
        level,
        state: None,
        summary,
        advice: "Renew it and put the new files in place; listener certificates are reloaded without a restart (SIGHUP or automatically), client certificates at the next restart.".into(),
        doc: "troubleshooting.md#certificate-expires".into(),
        since_ms: Some(c.not_after_ms.saturating_sub(env.certificate_warning_ms)),
    })
}

fn free_space_problem(env: &Environment) -> Option<Problem> {
    let free = env.free_space?;
    let threshold = env.min_free_space.saturating_mul(2);
    if env.min_free_space == 0 || free >= threshold {
        return None;
    }
    let level = if free < env.min_free_space {
        Level::Error
    } else {
        Level::Warning
    };
    Some(Problem {
        subject: Subject::FreeSpace,
        level,
        state: None,
        summary: format!(
            "Low disk space for the spool: {} MiB free; devices get 452 4.3.1 below {} MiB",
            free / MIB,
            env.min_free_space / MIB
        ),
        advice: "Free space on the store's filesystem (old capture files, logs) or give it a larger disk.".into(),
        doc: "troubleshooting.md#low-disk-space".into(),
        since_ms: None,
    })
}

fn notice_problem(n: &NoticeFailure) -> Problem {
    Problem {
        subject: Subject::Notice(n.about.clone()),
        level: Level::Error,
        state: None,
        summary: format!("A notification about {} could not be sent: {}", n.about, n.reason),
        advice: "Check [notify] (webhook_url, notify_account) and bounce_to; until it works, this page and the log are the only place this is reported.".into(),
        doc: "monitoring.md#notifications".into(),
        since_ms: Some(n.at_ms),
    }
}

/// A duration in words for people: `45 s`, `12 min`, `3 h 5 min`, `2 days`.
pub fn duration_words(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86_400 => {
            let m = (s % 3600) / 60;
            if m == 0 {
                format!("{} h", s / 3600)
            } else {
                format!("{} h {m} min", s / 3600)
            }
        }
        _ => {
            let d = ms / DAY_MS;
            if d == 1 {
                "1 day".into()
            } else {
                format!("{d} days")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::{AccountSignal, AttemptReport, AttemptResult};
    use crate::reply::ReplyInfo;

    fn account(name: &str, signal: AccountSignal) -> AccountActivity {
        let mut a = AccountActivity::new(name);
        a.apply(&AttemptReport {
            account: name.into(),
            at_ms: 1_000,
            result: Some(AttemptResult::Deferred),
            signal,
            reply: Some(ReplyInfo::new(
                535,
                Some("5.7.3".into()),
                "Authentication unsuccessful",
            )),
            advice: Some("Grant SMTP.SendAsApp".into()),
        });
        a
    }

    fn env(now_ms: u64) -> Environment {
        Environment {
            now_ms,
            alert_queue_age_ms: 3_600_000,
            min_free_space: 100 * MIB,
            certificate_warning_ms: 14 * DAY_MS,
            ..Environment::default()
        }
    }

    #[test]
    fn a_degraded_account_is_an_error_with_its_reply_and_advice() {
        let accounts = [
            account("scanner", AccountSignal::Refused),
            account("fax", AccountSignal::Working),
        ];
        let p = problems(&accounts, &env(2_000));
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].subject, Subject::Account("scanner".into()));
        assert_eq!(p[0].level, Level::Error);
        assert_eq!(p[0].state, Some(AccountState::Degraded));
        assert!(
            p[0].summary
                .contains("535 5.7.3 Authentication unsuccessful"),
            "{}",
            p[0].summary
        );
        assert_eq!(p[0].advice, "Grant SMTP.SendAsApp");
        assert_eq!(p[0].since_ms, Some(1_000));
    }

    #[test]
    fn thresholds() {
        let now = 100 * DAY_MS;
        let mut e = env(now);
        e.oldest_queued_ms = Some(now - 3_599_000);
        e.free_space = Some(200 * MIB);
        e.certificates = vec![CertificateInfo {
            label: "far".into(),
            not_after_ms: now + 15 * DAY_MS,
        }];
        assert!(problems(&[], &e).is_empty());

        e.oldest_queued_ms = Some(now - 3_600_000);
        e.free_space = Some(199 * MIB);
        e.certificates.push(CertificateInfo {
            label: "soon".into(),
            not_after_ms: now + 13 * DAY_MS,
        });
        e.certificates.push(CertificateInfo {
            label: "gone".into(),
            not_after_ms: now - 2 * DAY_MS,
        });
        let p = problems(&[], &e);
        let keys: Vec<String> = p.iter().map(|p| p.subject.key()).collect();
        // Errors first (the expired certificate), then warnings by key.
        assert_eq!(
            keys,
            [
                "certificate:gone",
                "certificate:soon",
                "free_space",
                "queue_age"
            ]
        );
        assert_eq!(p[0].summary, "Certificate expired 2 days ago: gone");
        assert_eq!(p[2].level, Level::Warning);

        e.free_space = Some(99 * MIB);
        let p = problems(&[], &e);
        assert_eq!(
            p.iter()
                .find(|p| p.subject == Subject::FreeSpace)
                .unwrap()
                .level,
            Level::Error
        );
    }

    #[test]
    fn words_for_durations() {
        assert_eq!(duration_words(45_000), "45 s");
        assert_eq!(duration_words(12 * 60_000), "12 min");
        assert_eq!(duration_words(3 * 3_600_000), "3 h");
        assert_eq!(duration_words(3 * 3_600_000 + 5 * 60_000), "3 h 5 min");
        assert_eq!(duration_words(DAY_MS), "1 day");
        assert_eq!(duration_words(3 * DAY_MS), "3 days");
    }
}

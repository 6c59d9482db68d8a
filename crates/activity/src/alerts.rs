//! When to tell someone about a problem: once when it appears, again every `repeat_interval`
//! while it lasts, and once when it clears.
//!
//! Admins mute notifiers that repeat themselves and stop trusting ones that never say "fixed".
//! [`AlertBook::step`] is pure: given the problems now, it returns the alerts to send and
//! remembers what is open.

use crate::account::AccountState;
use crate::problems::Problem;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Why an alert is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// The problem appeared (or an account's state changed to another problem state).
    Raised,
    /// The problem still lasts, `repeat_interval` after the last alert about it.
    Reminder,
    /// The problem is gone.
    Cleared,
}

/// One alert to send.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// Why.
    pub kind: AlertKind,
    /// The problem as it is now (for `cleared`, as it was when last seen).
    pub problem: Problem,
}

#[derive(Clone, Debug)]
struct Open {
    problem: Problem,
    state: Option<AccountState>,
    last_sent_ms: u64,
}

/// The problems that have been alerted and are still open.
#[derive(Clone, Debug, Default)]
pub struct AlertBook {
    open: HashMap<String, Open>,
}

impl AlertBook {
    /// An empty book.
    pub fn new() -> AlertBook {
        AlertBook::default()
    }

    /// Compares `current` with what is open and returns the alerts due at `now_ms`.
    pub fn step(&mut self, current: &[Problem], now_ms: u64, repeat_ms: u64) -> Vec<Alert> {
        let mut alerts = Vec::new();
        let mut seen = Vec::with_capacity(current.len());
        for p in current {
            let key = p.subject.key();
            seen.push(key.clone());
            match self.open.get_mut(&key) {
                Some(open) if open.state == p.state => {
                    open.problem = p.clone();
                    if repeat_ms > 0 && now_ms.saturating_sub(open.last_sent_ms) >= repeat_ms {
                        open.last_sent_ms = now_ms;
                        alerts.push(Alert {
                            kind: AlertKind::Reminder,
                            problem: p.clone(),
                        });
                    }
                }
                _ => {
                    self.open.insert(
                        key,
                        Open {
                            problem: p.clone(),
                            state: p.state,
                            last_sent_ms: now_ms,
                        },
                    );
                    alerts.push(Alert {
                        kind: AlertKind::Raised,
                        problem: p.clone(),
                    });
                }
            }
        }
        let gone: Vec<String> = self
            .open
            .keys()
            .filter(|k| !seen.contains(k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(open) = self.open.remove(&key) {
                alerts.push(Alert {
                    kind: AlertKind::Cleared,
                    problem: open.problem,
                });
            }
        }
        alerts
    }

    /// How many problems are open.
    pub fn open(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::problems::{Level, Subject};

    fn problem(subject: Subject, state: Option<AccountState>) -> Problem {
        Problem {
            subject,
            level: Level::Error,
            state,
            summary: "s".into(),
            advice: "a".into(),
            doc: "d".into(),
            since_ms: None,
        }
    }

    fn kinds(alerts: &[Alert]) -> Vec<(AlertKind, String)> {
        alerts
            .iter()
            .map(|a| (a.kind, a.problem.subject.key()))
            .collect()
    }

    #[test]
    fn raised_once_reminded_per_interval_cleared_once() {
        let mut book = AlertBook::new();
        let degraded = problem(
            Subject::Account("scanner".into()),
            Some(AccountState::Degraded),
        );
        let p = vec![degraded.clone()];
        assert_eq!(
            kinds(&book.step(&p, 0, 100)),
            [(AlertKind::Raised, "account:scanner".into())]
        );
        assert!(book.step(&p, 50, 100).is_empty());
        assert_eq!(
            kinds(&book.step(&p, 100, 100)),
            [(AlertKind::Reminder, "account:scanner".into())]
        );
        assert!(book.step(&p, 150, 100).is_empty());
        assert_eq!(
            kinds(&book.step(&[], 160, 100)),
            [(AlertKind::Cleared, "account:scanner".into())]
        );
        assert!(book.step(&[], 170, 100).is_empty());
        assert_eq!(book.open(), 0);
    }

    #[test]
    fn a_new_state_for_the_same_account_is_raised_again() {
        let mut book = AlertBook::new();
        let subject = Subject::Account("scanner".into());
        book.step(
            &[problem(subject.clone(), Some(AccountState::Degraded))],
            0,
            1000,
        );
        let a = book.step(
            &[problem(subject, Some(AccountState::SignInNeeded))],
            10,
            1000,
        );
        assert_eq!(kinds(&a), [(AlertKind::Raised, "account:scanner".into())]);
        assert_eq!(a[0].problem.state, Some(AccountState::SignInNeeded));
    }

    #[test]
    fn zero_interval_never_reminds() {
        let mut book = AlertBook::new();
        let p = vec![problem(Subject::QueueAge, None)];
        book.step(&p, 0, 0);
        assert!(book.step(&p, 1_000_000, 0).is_empty());
    }
}

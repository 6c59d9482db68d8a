//! What the admin server reports about a running relay: the values Prometheus reads at scrape
//! time (queue depth and age, token state and health state per account) and the readiness
//! checks.
//!
//! Readiness answers "can this relay take mail right now, and if not, why": every listener is
//! still accepting and the spool accepts a write. It is about the relay itself: an account the
//! upstream refuses does not make the relay unready (a load balancer or an orchestrator can do
//! nothing about it, and restarting would only lose the live state); the account's state says
//! so instead, in the metric `smtp2oauth_account_state`, the console and `account status`.

use crate::wiring::TokenSources;
use smtp2oauth_activity::{AccountState, Activity, now_ms};
use smtp2oauth_admin::Check;
use smtp2oauth_metrics::{AccountSnapshot, QueueSnapshot, Snapshot};
use smtp2oauth_spool::{Area, Spool};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

pub struct RelaySnapshot {
    pub spool: Spool,
    pub tokens: TokenSources,
    pub accounts: Vec<String>,
    /// Where the accounts' health states are read.
    pub activity: Activity,
}

impl std::fmt::Debug for RelaySnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelaySnapshot")
            .field("accounts", &self.accounts)
            .finish()
    }
}

impl Snapshot for RelaySnapshot {
    fn queue(&self) -> QueueSnapshot {
        let queued = self.spool.list_blocking(Area::Queue).unwrap_or_default();
        let failed = self
            .spool
            .list_blocking(Area::Failed)
            .map(|l| l.len())
            .unwrap_or(0);
        // Ids start with the arrival time, and the list is sorted: the first is the oldest,
        // and no file needs to be read.
        let oldest_age_seconds = queued
            .first()
            .map(|id| {
                smtp2oauth_spool::now_ms().saturating_sub(id.received_at_ms()) as f64 / 1000.0
            })
            .unwrap_or(0.0);
        QueueSnapshot {
            queued: queued.len() as u64,
            failed: failed as u64,
            oldest_age_seconds,
        }
    }

    fn accounts(&self) -> Vec<AccountSnapshot> {
        let now = SystemTime::now();
        let states = self.activity.accounts(now_ms());
        self.accounts
            .iter()
            .map(|name| {
                let state = states
                    .iter()
                    .find(|a| &a.name == name)
                    .map_or(AccountState::Ok, |a| a.condition.state);
                let states = AccountState::ALL
                    .iter()
                    .map(|s| (s.as_str(), *s == state))
                    .collect();
                match self.tokens.get(name) {
                    Some(t) => {
                        let st = t.status();
                        AccountSnapshot {
                            account: name.clone(),
                            token_expires_in: st
                                .valid_until
                                .and_then(|v| v.duration_since(now).ok())
                                .map(|d| d.as_secs_f64()),
                            token_requests: st.requests,
                            token_failures: st.failures,
                            sign_in_required: st.sign_in_required,
                            states,
                        }
                    }
                    None => AccountSnapshot {
                        account: name.clone(),
                        states,
                        ..AccountSnapshot::default()
                    },
                }
            })
            .collect()
    }
}

/// Everything the readiness checks look at.
pub struct ReadinessInputs {
    pub spool: Spool,
    pub listeners: usize,
    /// Accept loops still running (decremented when one ends).
    pub listeners_up: Arc<AtomicUsize>,
}

pub async fn readiness(inputs: Arc<ReadinessInputs>) -> Vec<Check> {
    let up = inputs.listeners_up.load(Ordering::SeqCst);
    let listeners = Check {
        name: "listeners".into(),
        ok: up == inputs.listeners,
        detail: format!(
            "{up} of {} listeners accepting connections",
            inputs.listeners
        ),
    };
    let root = inputs.spool.root().display();
    let spool = match inputs.spool.check_writable().await {
        Ok(()) => Check {
            name: "spool".into(),
            ok: true,
            detail: format!("{root} is writable"),
        },
        Err(e) => Check {
            name: "spool".into(),
            ok: false,
            detail: format!("cannot write to {root}: {e} (new mail gets 452/451)"),
        },
    };
    vec![listeners, spool]
}

//! What the admin server reports about a running relay: the values Prometheus reads at scrape
//! time (queue depth and age, token state per account) and the readiness checks.
//!
//! Readiness answers "can this relay take and deliver mail right now, and if not, why": every
//! listener is still accepting, the spool accepts a write, and every account can get a token
//! (or, for capture, write its directory). Each check says in words what is wrong.

use crate::wiring::TokenSources;
use smtp2oauth_admin::Check;
use smtp2oauth_metrics::{AccountSnapshot, QueueSnapshot, Snapshot};
use smtp2oauth_spool::{Area, Spool};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

pub struct RelaySnapshot {
    pub spool: Spool,
    pub tokens: TokenSources,
    pub accounts: Vec<String>,
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
        self.accounts
            .iter()
            .map(|name| match self.tokens.get(name) {
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
                    }
                }
                None => AccountSnapshot {
                    account: name.clone(),
                    ..AccountSnapshot::default()
                },
            })
            .collect()
    }
}

/// What readiness checks for one account.
pub struct AccountCheck {
    pub name: String,
    /// The kind of its route, as its route names itself.
    pub route: &'static str,
    /// For capture routes, the directory that must be writable.
    pub capture_dir: Option<PathBuf>,
}

/// Everything the readiness checks look at.
pub struct ReadinessInputs {
    pub spool: Spool,
    pub tokens: TokenSources,
    pub accounts: Vec<AccountCheck>,
    pub listeners: usize,
    /// Accept loops still running (decremented when one ends).
    pub listeners_up: Arc<AtomicUsize>,
}

pub async fn readiness(inputs: Arc<ReadinessInputs>) -> Vec<Check> {
    let mut checks = Vec::new();
    let up = inputs.listeners_up.load(Ordering::SeqCst);
    checks.push(Check {
        name: "listeners".into(),
        ok: up == inputs.listeners,
        detail: format!(
            "{up} of {} listeners accepting connections",
            inputs.listeners
        ),
    });
    checks.push(match inputs.spool.check_writable().await {
        Ok(()) => Check {
            name: "spool".into(),
            ok: true,
            detail: format!("{} is writable", inputs.spool.root().display()),
        },
        Err(e) => Check {
            name: "spool".into(),
            ok: false,
            detail: format!(
                "cannot write to {}: {e} (new mail gets 452/451)",
                inputs.spool.root().display()
            ),
        },
    });
    for AccountCheck {
        name,
        route: kind,
        capture_dir: capture,
    } in &inputs.accounts
    {
        let check_name = format!("account {name}");
        let check = if let Some(t) = inputs.tokens.get(name) {
            match tokio::time::timeout(Duration::from_secs(10), t.token()).await {
                Ok(Ok(token)) => Check {
                    name: check_name,
                    ok: true,
                    detail: format!(
                        "route {kind}: token valid for {} s",
                        token
                            .expires_at()
                            .duration_since(SystemTime::now())
                            .map(|d| d.as_secs())
                            .unwrap_or(0)
                    ),
                },
                Ok(Err(e)) => Check {
                    name: check_name,
                    ok: false,
                    detail: format!(
                        "route {kind}: no token: {e}{}",
                        e.advice().map(|a| format!(" ({a})")).unwrap_or_default()
                    ),
                },
                Err(_) => Check {
                    name: check_name,
                    ok: false,
                    detail: format!("route {kind}: the token endpoint did not answer within 10 s"),
                },
            }
        } else if let Some(dir) = capture {
            match writable(dir.clone()).await {
                Ok(()) => Check {
                    name: check_name,
                    ok: true,
                    detail: format!("route {kind}: {} is writable", dir.display()),
                },
                Err(e) => Check {
                    name: check_name,
                    ok: false,
                    detail: format!("route {kind}: cannot write to {}: {e}", dir.display()),
                },
            }
        } else {
            Check {
                name: check_name,
                ok: true,
                detail: format!("route {kind}"),
            }
        };
        checks.push(check);
    }
    checks
}

async fn writable(dir: PathBuf) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir)?;
        let probe = dir.join(format!(".readyz-{}", std::process::id()));
        std::fs::write(&probe, b"ok")?;
        std::fs::remove_file(&probe)
    })
    .await
    .map_err(std::io::Error::other)?
}

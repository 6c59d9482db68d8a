//! The console's shared state: the activity store that sessions and the scheduler publish to,
//! and the measurement of the facts besides the accounts that problems are decided from.
//!
//! Both are built once here and handed to every reader (the admin server, the notifier), so
//! the overview and the notifications see the same store and decide problems from the same
//! facts.

use smtp2oauth_activity::{Activity, ActivityConfig, Environment, EnvironmentFn, now_ms};
use smtp2oauth_config::Loaded;
use smtp2oauth_spool::{Area, Spool};
use std::sync::Arc;

/// How long before a certificate's expiry it becomes a problem.
pub const CERTIFICATE_WARNING_DAYS: u64 = 14;

/// An empty activity store for the configured devices and accounts.
pub fn activity(loaded: &Loaded) -> Activity {
    let cfg = &loaded.config;
    Activity::new(&ActivityConfig {
        recent_messages: cfg.admin.recent_messages,
        devices: cfg
            .devices
            .iter()
            .map(|d| (d.label(), d.account.clone()))
            .collect(),
        accounts: loaded.accounts.iter().map(|a| a.name.clone()).collect(),
    })
}

/// Measures the environment: the oldest queued message, free space, and the notices that
/// could not be sent.
pub fn environment(loaded: &Loaded, spool: Spool, activity: Activity) -> EnvironmentFn {
    let cfg = &loaded.config;
    let alert_queue_age_ms = cfg.notify.alert_queue_age.as_millis() as u64;
    let min_free_space = cfg.store.min_free_space;
    Arc::new(move || {
        let spool = spool.clone();
        let activity = activity.clone();
        Box::pin(async move {
            let oldest_queued_ms = spool
                .list(Area::Queue)
                .await
                .ok()
                .and_then(|ids| ids.iter().map(|id| id.received_at_ms()).min());
            Environment {
                now_ms: now_ms(),
                oldest_queued_ms,
                alert_queue_age_ms,
                free_space: spool.free_space().await,
                min_free_space,
                certificates: Vec::new(),
                certificate_warning_ms: CERTIFICATE_WARNING_DAYS * 86_400_000,
                notice_failures: activity.notice_failures(),
            }
        })
    })
}

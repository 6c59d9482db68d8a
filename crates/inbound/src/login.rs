//! One AUTH attempt, decided in order: the address's lockout, the username's lockout (for an
//! address it has not logged in from), then the password (`identity::Directory::verify`);
//! then what it teaches the lockouts, the metric and the log line.
//!
//! A failure is counted against the client's address by the driver when the session reports
//! it (every failed login, including an AUTH PLAIN message that is not one); here only the
//! username's count and its familiar addresses are kept.

use crate::conn::Inbound;
use crate::guard::Verdict;
use crate::identity::{AuthFailure, Device};
use crate::observe::MAX_USERNAME;
use crate::sasl::Credentials;
use smtp2oauth_metrics::ResultLabels;
use smtp2oauth_proto::address::printable;
use smtp2oauth_proto::reply::truncate_at_char;
use std::net::IpAddr;
use std::sync::Arc;
use tracing::{debug, warn};

/// Checks a device's login from `peer`.
pub async fn check(
    ctx: &Inbound,
    creds: Credentials,
    peer: IpAddr,
) -> Result<Arc<Device>, AuthFailure> {
    let username = creds.username.clone();
    let result = decide(ctx, creds, peer).await;
    record(ctx, &username, peer, &result);
    result
}

async fn decide(
    ctx: &Inbound,
    creds: Credentials,
    peer: IpAddr,
) -> Result<Arc<Device>, AuthFailure> {
    if ctx.guard.locked(peer).is_some() {
        return Err(AuthFailure::AddressLockedOut);
    }
    if ctx.guard.user_locked(&creds.username, peer).is_some() {
        return Err(AuthFailure::UserLockedOut);
    }
    let result = ctx.directory.verify(creds, peer).await;
    // Another session from the address may have locked it out while the password was checked.
    if result.is_ok() && ctx.guard.locked(peer).is_some() {
        return Err(AuthFailure::AddressLockedOut);
    }
    result
}

/// What an attempt leaves behind: the familiar address or the username's failure, the
/// metric (one label for every failed check), one log line.
fn record(ctx: &Inbound, username: &[u8], peer: IpAddr, result: &Result<Arc<Device>, AuthFailure>) {
    if let Some(m) = &ctx.metrics {
        let result = match result {
            Ok(_) => "success",
            Err(e) => e.label(),
        };
        m.auth_attempts
            .get_or_create(&ResultLabels { result })
            .inc();
    }
    // Only failures print the username: escaped, cut as the session's log line cuts it.
    let shown = || {
        printable(truncate_at_char(
            &String::from_utf8_lossy(username),
            MAX_USERNAME,
        ))
    };
    match result {
        Ok(device) => {
            ctx.guard.success(username, peer);
            debug!(device = %device.name, account = %device.account, "authenticated");
        }
        Err(failure) if failure.is_failed_check() => {
            // The refusal's own line (session_log) is the admin's; this one is for debugging.
            debug!(username = %shown(), reason = failure.as_str(), "authentication failed");
            if let Verdict::LockedOut(period) = ctx.guard.user_failure(username, peer) {
                warn!(username = %shown(), lockout_secs = period.as_secs(),
                    "username locked out for addresses it has not logged in from, after repeated failed logins");
            }
        }
        Err(failure) => {
            debug!(username = %shown(), reason = failure.as_str(), "authentication refused without a check");
        }
    }
}

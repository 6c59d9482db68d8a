//! Reloading the listeners' certificates while the relay runs, on request (SIGHUP on Unix, the
//! service's parameter-change control on Windows) or when the files change, as a task of its
//! own.
//!
//! A renewed certificate (certbot, an ACME client, an admin's copy) must be picked up without a
//! restart, and a broken renewal must not take TLS away: running sessions keep theirs, and a
//! failed reload keeps the certificate in use.

use smtp2oauth_inbound::TlsHandle;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// Watches `handles` until `stop`: reloads all of them on each request (which says why), and
/// each one whose files changed every `interval` (zero: on request only).
pub async fn watch(
    handles: Vec<TlsHandle>,
    interval: Duration,
    mut requests: UnboundedReceiver<&'static str>,
    stop: CancellationToken,
) {
    let mut stamps: Vec<_> = handles.iter().map(|h| h.policy().stamp()).collect();
    let poll = !handles.is_empty() && !interval.is_zero();
    let mut check = tokio::time::interval(if poll {
        interval
    } else {
        Duration::from_secs(3600)
    });
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            Some(why) = requests.recv() => {
                if handles.is_empty() {
                    info!("{why}: no TLS listener, nothing to reload");
                }
                for (h, stamp) in handles.iter().zip(stamps.iter_mut()) {
                    *stamp = h.policy().stamp();
                    reload(h, why);
                }
            }
            _ = check.tick(), if poll => {
                // The stamp is taken before the reload and kept even when the reload fails, so
                // a broken file is reported once per change, and a certificate written before
                // its key is retried when the key arrives.
                for (h, stamp) in handles.iter().zip(stamps.iter_mut()) {
                    let now = h.policy().stamp();
                    if now != *stamp {
                        *stamp = now;
                        reload(h, "certificate files changed");
                    }
                }
            }
        }
    }
}

/// Loads a listener's certificate, key and client CA again; running sessions keep theirs, and
/// a failed reload keeps the current certificate in use.
fn reload(handle: &TlsHandle, why: &str) {
    let cert = handle.policy().cert.display().to_string();
    match handle.reload() {
        Ok(()) => info!(%cert, "{why}: TLS certificate reloaded"),
        Err(e) => error!(error = %e, "{why}: keeping the current certificate"),
    }
}

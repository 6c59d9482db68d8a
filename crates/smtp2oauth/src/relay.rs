//! A built relay, and running it until told to stop.
//!
//! [`wiring::build`](crate::wiring::build) constructs every part and binds every socket; nothing
//! runs until [`Relay::run`], which starts the tasks (deliveries, sign-in upkeep, the admin
//! server, the accept loops, the notifier and the state file) and, once `stop` is cancelled,
//! shuts them down in order: sessions first (the scheduler keeps delivering while devices wait
//! for their first attempt), then the deliveries in progress, then the console's tasks (so the
//! last outcomes are notified and written).

use crate::wiring::Notifications;
use crate::{signin, state_file};
use anyhow::Result;
use smtp2oauth_inbound::{Inbound, ListenerRuntime, TlsHandle};
use smtp2oauth_scheduler::Scheduler;
use smtp2oauth_spool::SpoolLock;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// How long in-flight sessions get to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Every part of the relay, constructed and bound, nothing running yet.
pub struct Relay {
    /// Held while the relay runs: one relay per spool.
    pub spool_lock: SpoolLock,
    pub scheduler: Arc<Scheduler>,
    /// Everything a session needs; its `shutdown` token ends the accept loops, the sessions,
    /// the admin server and the sign-in tasks.
    pub inbound: Arc<Inbound>,
    /// Bound SMTP listeners, in configuration order.
    pub listeners: Vec<(TcpListener, Arc<ListenerRuntime>)>,
    /// Accept loops still running (readiness reports a listener that stopped).
    pub listeners_up: Arc<AtomicUsize>,
    /// The bound admin server, unless `[admin] listen` is empty.
    pub admin: Option<smtp2oauth_admin::AdminServer>,
    /// Keeping delegated accounts signed in, when some account signs in.
    pub sign_in: Option<signin::Tasks>,
    /// One handle per distinct listener TLS setup, for reloads.
    pub tls: Vec<TlsHandle>,
    /// The readers of the live state that run as tasks.
    pub console: Console,
}

/// The notifier and the state file writer, built and waiting to run.
pub struct Console {
    pub notifications: Notifications,
    pub state_file: state_file::Writer,
}

impl Console {
    /// Starts both; they end when `stop` is cancelled (the state file is written once more).
    fn spawn(self, stop: &CancellationToken) -> Vec<JoinHandle<()>> {
        let mut tasks = self.notifications.spawn(stop.clone());
        tasks.push(tokio::spawn(self.state_file.run(stop.clone())));
        tasks
    }
}

impl Relay {
    /// Runs the relay until `stop` is cancelled, then shuts it down in order.
    pub async fn run(self, stop: CancellationToken) -> Result<()> {
        let shutdown = self.inbound.shutdown.clone();
        let dispatcher = self.scheduler.start();
        if let Some(sign_in) = self.sign_in {
            sign_in.spawn(shutdown.clone());
        }
        let admin = self.admin.map(|a| tokio::spawn(a.serve(shutdown.clone())));
        let console_stop = CancellationToken::new();
        let console = self.console.spawn(&console_stop);
        let tracker = TaskTracker::new();
        let accept_loops = accept(&self.inbound, self.listeners, &self.listeners_up, &tracker)?;
        info!(version = env!("CARGO_PKG_VERSION"), hostname = %self.inbound.hostname, "smtp2oauth started");

        stop.cancelled().await;
        shutdown.cancel();
        for l in accept_loops {
            let _ = l.await;
        }
        if let Some(a) = admin {
            let _ = a.await;
        }
        tracker.close();
        // Sessions first (the scheduler keeps delivering while devices wait for their first
        // attempt), then deliveries in progress.
        if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
            .await
            .is_err()
        {
            warn!(
                sessions = tracker.len(),
                "sessions still running after the grace period; exiting anyway"
            );
        }
        self.scheduler.shutdown().await;
        let _ = dispatcher.await;
        console_stop.cancel();
        for t in console {
            let _ = t.await;
        }
        drop(self.spool_lock);
        info!("stopped");
        Ok(())
    }
}

/// Starts an accept loop on every listener; each counts itself out of `up` when it ends.
fn accept(
    inbound: &Arc<Inbound>,
    listeners: Vec<(TcpListener, Arc<ListenerRuntime>)>,
    up: &Arc<AtomicUsize>,
    tracker: &TaskTracker,
) -> Result<Vec<JoinHandle<()>>> {
    let mut loops = Vec::new();
    for (listener, rt) in listeners {
        let addr = listener.local_addr()?;
        info!(listener = %rt.settings.label, address = %addr, tls = ?rt.settings.tls, "listening");
        let up = up.clone();
        let accept = smtp2oauth_inbound::listener::accept_loop(
            inbound.clone(),
            rt,
            listener,
            tracker.clone(),
        );
        loops.push(tokio::spawn(async move {
            accept.await;
            up.fetch_sub(1, Ordering::SeqCst);
        }));
    }
    Ok(loops)
}

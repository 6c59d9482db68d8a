//! `smtp2oauth serve`: build the relay from the configuration and run it until SIGTERM/SIGINT.
//!
//! Start-up order matters for the admin's first experience: everything that can be wrong in the
//! configuration is found before any socket is opened, and every listener is bound before any is
//! served, so a relay either starts whole or exits with the reason.

use crate::{signin, status, wiring};
use anyhow::{Context, Result, anyhow};
use smtp2oauth_config::{ListenerTls, TlsProfile};
use smtp2oauth_inbound::{
    Directory, GuardSettings, Inbound, Limiter, Limits, ListenerRuntime, ListenerSettings,
    LoginGuard, Submit, TlsHandle, TlsPolicy,
};
use smtp2oauth_metrics::Metrics;
use smtp2oauth_proto::Reply;
use smtp2oauth_scheduler::Scheduler;
use smtp2oauth_spool::{Area, Queued, Spool};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

/// How long in-flight sessions get to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

struct SchedulerSubmit(Arc<Scheduler>);

impl Submit for SchedulerSubmit {
    fn submit(&self, message: Queued) -> Pin<Box<dyn Future<Output = Reply> + Send + '_>> {
        Box::pin(self.0.submit(message))
    }
}

pub async fn run(config_path: Option<PathBuf>) -> Result<()> {
    let loaded = smtp2oauth_config::load(config_path.as_deref()).map_err(|e| anyhow!("{e}"))?;
    let cfg = loaded.config;
    for w in &loaded.warnings {
        warn!("configuration: {w}");
    }

    if let Some(p) = &config_path {
        warn_if_readable_by_others(p, "the configuration file (it may hold secrets)");
    }
    std::fs::create_dir_all(&cfg.store.dir)
        .with_context(|| format!("cannot create store dir {}", cfg.store.dir.display()))?;
    let spool = Spool::open_with(&cfg.store.dir.join("spool"), cfg.store.fsync)
        .context("cannot open the spool")?;
    // One relay per spool: a second one would deliver the same messages twice.
    let _spool_lock = spool.lock()?;
    warn_if_readable_by_others(&cfg.store.dir, "the store directory (queued mail and keys)");
    for a in &cfg.accounts {
        for f in [&a.client_secret_file, &a.private_key_file]
            .into_iter()
            .flatten()
        {
            warn_if_readable_by_others(f, "a secret file");
        }
    }
    let removed = spool
        .clean_orphans()
        .await
        .context("cannot clean the spool")?;
    if removed > 0 {
        info!(
            files = removed,
            "removed unfinished messages from an earlier run (never acknowledged to devices)"
        );
    }

    let listener_tls = listener_tls(&cfg)?;
    let directory = Arc::new(Directory::from_config(&cfg).map_err(|errs| {
        anyhow!(
            "{}",
            errs.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        )
    })?);
    let token_store = match wiring::open_token_store(&cfg, true)? {
        Some((store, origin)) => {
            if let smtp2oauth_tokens::KeyOrigin::Generated(path) = &origin {
                warn!(file = %path.display(), key_id = store.key_id(),
                    "generated the master key that encrypts stored sign-ins: back it up apart from the store (without it the sign-ins cannot be read), or move it to a secret and set [store] master_key_file");
            } else {
                info!(key = %origin, key_id = store.key_id(), dir = %store.dir().display(), "token store open");
            }
            if let smtp2oauth_tokens::KeyOrigin::File(path)
            | smtp2oauth_tokens::KeyOrigin::Generated(path) = &origin
            {
                warn_if_readable_by_others(path, "the master key file");
            }
            Some(store)
        }
        None => None,
    };
    let tokens = wiring::token_sources(&cfg, token_store.as_ref())?;
    for a in cfg.accounts.iter().filter(|a| a.is_delegated()) {
        if let Some(t) = tokens.get(&a.name)
            && t.status().sign_in_required
        {
            error!(account = %a.name, flow = a.flow.as_str(),
                "account needs a sign-in: open the accounts page on the admin address, or run `smtp2oauth account login {}`; its mail is queued until then", a.name);
        }
    }
    let routes = wiring::routes(&cfg, &tokens, token_store.as_ref())?;
    for a in &cfg.accounts {
        if let Some(r) = routes.get(&a.name) {
            info!(account = %a.name, mailbox = %a.mailbox, route = r.kind().as_str(), target = %r.target(), "account ready");
        }
    }
    let account_routes: Vec<(String, &'static str, Option<std::path::PathBuf>)> = cfg
        .accounts
        .iter()
        .map(|a| {
            let kind = routes
                .get(&a.name)
                .map(|r| r.kind().as_str())
                .unwrap_or("none");
            let capture =
                (a.route == smtp2oauth_config::Route::Capture).then(|| cfg.capture_dir(a));
            (a.name.clone(), kind, capture)
        })
        .collect();
    let metrics = Metrics::new(Some(Arc::new(status::RelaySnapshot {
        spool: spool.clone(),
        tokens: tokens.clone(),
        accounts: cfg.accounts.iter().map(|a| a.name.clone()).collect(),
    })));
    let scheduler = Arc::new(Scheduler::new(
        spool.clone(),
        routes,
        wiring::scheduler_config(&cfg),
        Some(metrics.clone()),
    ));
    if cfg.delivery.queue {
        let n = scheduler.recover().await.context("cannot read the queue")?;
        if n > 0 {
            info!(
                messages = n,
                "queued messages from an earlier run scheduled for delivery"
            );
        }
    } else {
        let left = spool.list(Area::Queue).await.unwrap_or_default();
        if !left.is_empty() {
            warn!(
                messages = left.len(),
                "the queue holds messages but [delivery] queue = false: they are kept, not delivered"
            );
        }
    }
    let dispatcher = scheduler.start();

    let shutdown = CancellationToken::new();
    let sign_in = match &token_store {
        Some(store) => {
            let manager = Arc::new(smtp2oauth_tokens::SignInManager::new(
                wiring::sign_in_targets(&cfg, store)?,
            ));
            let delegated: Vec<String> = cfg
                .accounts
                .iter()
                .filter(|a| a.is_delegated())
                .map(|a| a.name.clone())
                .collect();
            let releaser =
                signin::Releaser::new(store.clone(), &delegated, tokens.clone(), scheduler.clone());
            {
                let releaser = releaser.clone();
                manager.on_signed_in(move |account| releaser.check(account));
            }
            tokio::spawn(signin::watch_store(
                store.clone(),
                delegated.clone(),
                releaser,
                shutdown.clone(),
            ));
            let fresh = delegated
                .iter()
                .filter_map(|a| tokens.get(a).map(|t| (a.clone(), t.clone())))
                .collect();
            tokio::spawn(signin::keep_fresh(fresh, shutdown.clone()));
            Some(manager)
        }
        None => None,
    };
    let s = &cfg.server;
    let ctx = Arc::new(Inbound {
        hostname: cfg.hostname().into(),
        limits: Limits {
            min_free_space: cfg.store.min_free_space,
            max_message_size: s.max_message_size,
            max_recipients: s.max_recipients,
            max_auth_failures: s.max_auth_failures,
            max_errors: s.max_errors,
        },
        max_line_length: s.max_line_length,
        command_timeout: s.command_timeout,
        data_timeout: s.data_timeout,
        session_timeout: s.session_timeout,
        add_received_header: s.add_received_header,
        directory,
        spool: spool.clone(),
        submit: Arc::new(SchedulerSubmit(scheduler.clone())),
        limiter: Limiter::new(s.max_sessions, s.max_sessions_per_ip),
        shutdown: shutdown.clone(),
        metrics: Some(metrics.clone()),
        guard: Arc::new(LoginGuard::new(GuardSettings {
            lockout_after: s.lockout_after,
            lockout_window: s.lockout_window,
            lockout_time: s.lockout_time,
            lockout_max: s.lockout_max,
            exempt: s.lockout_exempt.clone(),
        })),
        max_commands: s.max_commands,
        max_session_bytes: s.max_session_bytes,
    });

    // Bind everything first: a relay starts whole or not at all.
    let mut bound = Vec::new();
    for (l, tls) in cfg.listeners.iter().zip(&listener_tls) {
        let listener = smtp2oauth_inbound::listener::bind(l.address)
            .with_context(|| format!("cannot listen on {} (listener {})", l.address, l.label()))?;
        let rt = Arc::new(ListenerRuntime {
            settings: Arc::new(ListenerSettings {
                label: l.label(),
                tls: l.tls,
                require_tls: l.require_tls,
                allow_insecure_auth: l.allow_insecure_auth,
            }),
            tls: tls.clone(),
        });
        bound.push((listener, rt));
    }
    let listeners_up = Arc::new(std::sync::atomic::AtomicUsize::new(bound.len()));
    let admin = if cfg.admin.listen.is_empty() {
        None
    } else {
        let addr = cfg.admin.listen.parse().context("[admin] listen")?;
        let inputs = Arc::new(status::ReadinessInputs {
            spool: spool.clone(),
            tokens: tokens.clone(),
            accounts: account_routes,
            listeners: bound.len(),
            listeners_up: listeners_up.clone(),
        });
        let readiness: smtp2oauth_admin::ReadinessFn =
            Arc::new(move || Box::pin(status::readiness(inputs.clone())));
        let page = smtp2oauth_admin::AccountsPage::new(smtp2oauth_admin::AccountsConfig {
            accounts: cfg
                .accounts
                .iter()
                .map(|a| smtp2oauth_admin::AccountView {
                    name: a.name.clone(),
                    mailbox: a.mailbox.clone(),
                    route: a.route.as_str(),
                    flow: if a.route == smtp2oauth_config::Route::Capture {
                        "none"
                    } else {
                        a.flow.as_str()
                    },
                    tokens: tokens.get(&a.name).cloned(),
                    redirect_uri: (a.flow == smtp2oauth_config::Flow::AuthorizationCode)
                        .then(|| a.redirect_uri()),
                })
                .collect(),
            sign_in: sign_in.clone(),
            store: token_store.clone(),
            password_hash: cfg
                .admin
                .password_hash
                .as_ref()
                .map(|h| smtp2oauth_tokens::Secret::from(h.expose())),
        });
        let state = smtp2oauth_admin::AdminState {
            metrics: metrics.clone(),
            readiness,
            accounts: Some(Arc::new(page)),
        };
        let (_, serve) = smtp2oauth_admin::bind(addr, shutdown.clone(), state)
            .await
            .with_context(|| format!("cannot listen on {addr} ([admin] listen)"))?;
        Some(tokio::spawn(serve))
    };
    let tracker = TaskTracker::new();
    let mut accept_loops = Vec::new();
    for (listener, rt) in bound {
        let addr = listener.local_addr()?;
        info!(listener = %rt.settings.label, address = %addr, tls = ?rt.settings.tls, "listening");
        let up = listeners_up.clone();
        let accept =
            smtp2oauth_inbound::listener::accept_loop(ctx.clone(), rt, listener, tracker.clone());
        accept_loops.push(tokio::spawn(async move {
            accept.await;
            up.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }));
    }
    // Handlers first: whoever reads "started" may send SIGTERM at once, and a signal that
    // arrives before its handler exists kills the process without a clean shutdown.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    info!(version = env!("CARGO_PKG_VERSION"), hostname = %ctx.hostname, "smtp2oauth started");
    let tls_handles = distinct_handles(&listener_tls);
    let mut tls_stamps: Vec<_> = tls_handles.iter().map(|h| h.policy().stamp()).collect();
    let watch_tls = !tls_handles.is_empty() && !cfg.tls.reload_interval.is_zero();
    let mut tls_check = tokio::time::interval(if watch_tls {
        cfg.tls.reload_interval
    } else {
        Duration::from_secs(3600)
    });
    tls_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { info!("SIGINT: shutting down"); break; }
            _ = hup.recv() => {
                if tls_handles.is_empty() {
                    info!("SIGHUP: no TLS listener, nothing to reload");
                }
                for (h, stamp) in tls_handles.iter().zip(tls_stamps.iter_mut()) {
                    *stamp = h.policy().stamp();
                    reload_tls(h, "SIGHUP");
                }
            }
            _ = tls_check.tick(), if watch_tls => {
                // A renewed certificate (certbot, an ACME client, an admin's copy) is picked
                // up without a SIGHUP. The stamp is taken before the reload and kept even when
                // the reload fails, so a broken file is reported once per change, and a
                // certificate written before its key is retried when the key arrives.
                for (h, stamp) in tls_handles.iter().zip(tls_stamps.iter_mut()) {
                    let now = h.policy().stamp();
                    if now != *stamp {
                        *stamp = now;
                        reload_tls(h, "certificate files changed");
                    }
                }
            }
        }
    }

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
    scheduler.shutdown().await;
    let _ = dispatcher.await;
    info!("stopped");
    Ok(())
}

/// Loads each listener's TLS (none for plain listeners). Listeners with the same files and
/// profile share one handle, so a reload is done once per distinct setup.
fn listener_tls(cfg: &smtp2oauth_config::Config) -> Result<Vec<Option<TlsHandle>>> {
    let files = wiring::listener_cert_files(cfg)?;
    let mut handles: Vec<Option<TlsHandle>> = Vec::new();
    for l in &cfg.listeners {
        let Some((cert, key)) = files.as_ref().filter(|_| l.tls != ListenerTls::None) else {
            handles.push(None);
            continue;
        };
        let policy = TlsPolicy {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: l.client_ca_file.clone(),
            profile: l.tls_profile,
        };
        if let Some(h) = handles.iter().flatten().find(|h| *h.policy() == policy) {
            handles.push(Some(h.clone()));
            continue;
        }
        let h = TlsHandle::load(policy)
            .with_context(|| format!("TLS of listener {} ({})", l.label(), l.address))?;
        if l.tls_profile == TlsProfile::Legacy {
            warn!(listener = %l.label(), address = %l.address,
                "legacy TLS profile: TLS 1.0 and 1.1 with old ciphers are accepted on this listener (OpenSSL); keep it on a trusted network segment");
        }
        if let Some(ca) = &l.client_ca_file {
            info!(listener = %l.label(), client_ca = %ca.display(), "client certificates required");
        }
        handles.push(Some(h));
    }
    Ok(handles)
}

fn distinct_handles(handles: &[Option<TlsHandle>]) -> Vec<TlsHandle> {
    let mut out: Vec<TlsHandle> = Vec::new();
    for h in handles.iter().flatten() {
        if !out.iter().any(|o| o.policy() == h.policy()) {
            out.push(h.clone());
        }
    }
    out
}

/// Loads a listener's certificate, key and client CA again; running sessions keep theirs, and
/// a failed reload keeps the current certificate in use.
fn reload_tls(handle: &TlsHandle, why: &str) {
    let cert = handle.policy().cert.display().to_string();
    match handle.reload() {
        Ok(()) => info!(%cert, "{why}: TLS certificate reloaded"),
        Err(e) => error!(error = %e, "{why}: keeping the current certificate"),
    }
}

/// Warns when a file or directory holding secrets or mail is readable by every user.
fn warn_if_readable_by_others(path: &std::path::Path, what: &str) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o004 != 0 {
            warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777),
                "{what} is readable by every user on this machine; restrict it (chmod o-rwx)");
        }
    }
}

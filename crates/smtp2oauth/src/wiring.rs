//! Turning configuration into the running pieces: [`build`] constructs the whole relay (spool,
//! recovered queue, token store and sources, routes with their fallbacks, scheduler, the
//! inbound context, bound listeners, the admin server) without starting anything.
//!
//! `serve`, `check-config` and `send-test` all build from here, so a configuration that passes
//! `check-config` is one `serve` can build. Everything here reads the accounts' specs, which
//! validation has already checked: nothing is checked twice and no default is chosen here.
//!
//! - `tokens.rs`: client credentials, the token store, token sources, sign-in targets.
//! - `routes.rs`: each account's route and fallback.
//! - `tls.rs`: the listeners' certificates and TLS handles.
//! - `admin.rs`: the admin server's state: readiness checks, accounts, the send-test.
//! - `console.rs`: the activity store (seeded from the spool), the certificates in use and
//!   the environment problems are decided from.
//! - `notify.rs`: the notifier from `[notify]` (webhook, alert e-mails).

mod admin;
mod console;
mod notify;
mod routes;
mod tls;
mod tokens;

pub use console::{account_certificates, not_after_ms};
pub use notify::Notifications;
pub use routes::{GraphSlots, route, routes};
pub use tls::{distinct_handles, listener_tls};
pub use tokens::{
    TokenSources, credential, open_token_store, sign_in_targets, token_source, token_sources,
};

use crate::relay::{Console, Relay};
use crate::{signin, state_file, status};
use anyhow::{Context, Result, anyhow};
use smtp2oauth_config::{Config, Loaded};
use smtp2oauth_inbound::{
    ActivityPublisher, Directory, GuardSettings, Inbound, KnownLogins, Limiter, LimiterSettings,
    Limits, ListenerRuntime, ListenerSettings, LoginGuard, Observer, Observers, SessionLog, Submit,
    TlsHandle,
};
use smtp2oauth_metrics::Metrics;
use smtp2oauth_proto::Reply;
use smtp2oauth_scheduler::{AccountSettings, Routes, Scheduler, SchedulerConfig};
use smtp2oauth_spool::{Area, Queued, Spool, SpoolLock};
use smtp2oauth_tokens::{KeyOrigin, SignInManager, TokenStore};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Builds every part of the relay, in an order that finds every problem of the configuration
/// before any socket is opened, and binds every listener before any is served (nothing is).
pub async fn build(loaded: &Loaded) -> Result<Relay> {
    let cfg = &loaded.config;
    let (spool, spool_lock) = open_spool(cfg).await?;
    let listener_tls = listener_tls(cfg)?;
    let directory = Arc::new(Directory::from_config(cfg).map_err(|errs| {
        let errs: Vec<_> = errs.iter().map(|e| e.to_string()).collect();
        anyhow!("{}", errs.join("; "))
    })?);
    let store = token_store(loaded).await?;
    let tokens = token_sources(loaded, store.as_ref()).await?;
    report_sign_ins_needed(loaded, &tokens);
    let routes = routes(loaded, &tokens, store.as_ref()).await?;
    log_accounts(loaded, &routes);
    let activity = console::activity(loaded);
    console::seed(&activity, &spool, loaded, &tokens).await;
    let certificates = console::certificate_files(loaded, &distinct_handles(&listener_tls));
    let environment = console::environment(loaded, spool.clone(), activity.clone(), certificates);
    let metrics = Metrics::new(Some(Arc::new(status::RelaySnapshot {
        spool: spool.clone(),
        tokens: tokens.clone(),
        accounts: loaded.accounts.iter().map(|a| a.name.clone()).collect(),
        activity: activity.clone(),
    })));
    let scheduler = Arc::new(Scheduler::new(
        spool.clone(),
        routes,
        scheduler_config(loaded),
        Some(metrics.clone()),
        Some(activity.clone()),
    ));
    recover(cfg, &scheduler, &spool).await?;
    let sign_in = match &store {
        Some(store) => Some(sign_in(loaded, store, &tokens, &scheduler).await?),
        None => None,
    };
    let publisher: Arc<dyn Observer> = Arc::new(Observers(vec![
        Arc::new(ActivityPublisher::new(activity.clone(), directory.clone())),
        Arc::new(SessionLog),
    ]));
    let inbound = inbound(
        cfg,
        directory,
        spool.clone(),
        scheduler.clone(),
        &metrics,
        publisher,
    )?;
    let alerts: Arc<dyn smtp2oauth_notify::Mailer> = Arc::new(SchedulerAlerts(scheduler.clone()));
    let console = Console {
        notifications: notify::build(loaded, activity.clone(), environment.clone(), alerts)?,
        state_file: state_file::Writer {
            path: state_file::path(&cfg.store.dir),
            activity: activity.clone(),
            tokens: tokens.clone(),
            started_at_ms: smtp2oauth_activity::now_ms(),
        },
    };
    let listeners = bind_listeners(cfg, &listener_tls)?;
    let listeners_up = Arc::new(AtomicUsize::new(listeners.len()));
    let admin = admin::server(admin::Parts {
        loaded,
        spool,
        tokens,
        listeners: listeners.len(),
        listeners_up: listeners_up.clone(),
        metrics,
        sign_in: sign_in.as_ref().map(|(m, _)| m.clone()),
        store,
        activity,
        environment,
        scheduler: scheduler.clone(),
    })
    .await?;
    Ok(Relay {
        spool_lock,
        scheduler,
        inbound,
        listeners,
        listeners_up,
        admin,
        sign_in: sign_in.map(|(_, tasks)| tasks),
        tls: distinct_handles(&listener_tls),
        console,
    })
}

/// Opens the spool under its lock (one relay per spool: a second one would deliver the same
/// messages twice) and removes what an earlier run left unfinished.
///
/// The directories it creates are private (0700); one that was there before, made by an
/// installer or an admin, gets a warning when every user can read it.
async fn open_spool(cfg: &Config) -> Result<(Spool, SpoolLock)> {
    let existed = cfg.store.dir.exists();
    smtp2oauth_spool::create_dir_durable(&cfg.store.dir, cfg.store.fsync)
        .with_context(|| format!("cannot create store dir {}", cfg.store.dir.display()))?;
    let spool = Spool::open_with(&cfg.store.dir.join("spool"), cfg.store.fsync)
        .context("cannot open the spool")?;
    let lock = spool.lock()?;
    if existed {
        warn_if_readable_by_others(&cfg.store.dir, "the store directory (queued mail and keys)");
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
    Ok((spool, lock))
}

/// Opens the token store (creating the master key on first use) when an account signs in.
async fn token_store(loaded: &Loaded) -> Result<Option<Arc<TokenStore>>> {
    let Some((store, origin)) = open_token_store(loaded, true).await? else {
        return Ok(None);
    };
    if let KeyOrigin::Generated(path) = &origin {
        warn!(file = %path.display(), key_id = store.key_id(),
            "generated the master key that encrypts stored sign-ins: back it up apart from the store (without it the sign-ins cannot be read), or move it to a secret and set [store] master_key_file");
    } else {
        info!(key = %origin, key_id = store.key_id(), dir = %store.dir().display(), "token store open");
    }
    if let KeyOrigin::File(path) | KeyOrigin::Generated(path) = &origin {
        warn_if_readable_by_others(path, "the master key file");
    }
    Ok(Some(store))
}

fn report_sign_ins_needed(loaded: &Loaded, tokens: &TokenSources) {
    for a in &loaded.accounts {
        if let (Some(oauth), Some(t)) = (a.delegated(), tokens.get(&a.name))
            && t.status().sign_in_required
        {
            error!(account = %a.name, flow = oauth.flow.kind().as_str(),
                "account needs a sign-in: open the accounts page on the admin address, or run `smtp2oauth account login {}`; its mail is queued until then", a.name);
        }
    }
}

fn log_accounts(loaded: &Loaded, routes: &Routes) {
    for a in &loaded.accounts {
        if let Some(r) = routes.get(&a.name) {
            info!(account = %a.name, mailbox = %a.mailbox, route = r.kind().as_str(), target = %r.target(), "account ready");
        }
    }
}

/// Schedules the messages an earlier run left queued (or says why they stay).
async fn recover(cfg: &Config, scheduler: &Scheduler, spool: &Spool) -> Result<()> {
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
    Ok(())
}

/// The sign-in manager (for the accounts page) and the tasks that notice sign-ins and keep
/// tokens fresh.
async fn sign_in(
    loaded: &Loaded,
    store: &Arc<TokenStore>,
    tokens: &TokenSources,
    scheduler: &Arc<Scheduler>,
) -> Result<(Arc<SignInManager>, signin::Tasks)> {
    let manager = Arc::new(SignInManager::new(sign_in_targets(loaded, store)?));
    let accounts: Vec<String> = loaded
        .accounts
        .iter()
        .filter(|a| a.delegated().is_some())
        .map(|a| a.name.clone())
        .collect();
    let releaser =
        signin::Releaser::new(store.clone(), &accounts, tokens.clone(), scheduler.clone()).await;
    {
        let releaser = releaser.clone();
        manager.on_signed_in(move |account| {
            let releaser = releaser.clone();
            async move { releaser.check(&account).await }
        });
    }
    let fresh = accounts
        .iter()
        .filter_map(|a| tokens.get(a).map(|t| (a.clone(), t.clone())))
        .collect();
    let tasks = signin::Tasks {
        store: store.clone(),
        accounts,
        releaser,
        fresh,
    };
    Ok((manager, tasks))
}

/// Alert e-mails through the scheduler, which queues them on `[notify] notify_account` or an
/// account that works (never the failing one).
struct SchedulerAlerts(Arc<Scheduler>);

impl smtp2oauth_notify::Mailer for SchedulerAlerts {
    fn send<'a>(
        &'a self,
        to: &'a str,
        subject: &'a str,
        text: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(self.0.send_alert(to, subject, text))
    }
}

/// Hands accepted messages to the scheduler.
struct SchedulerSubmit(Arc<Scheduler>);

impl Submit for SchedulerSubmit {
    fn submit(&self, message: Queued) -> Pin<Box<dyn Future<Output = Reply> + Send + '_>> {
        Box::pin(self.0.submit(message))
    }
}

/// What every session needs: limits, the device directory, the spool, the scheduler, the
/// lockouts (with the addresses devices logged in from, kept in the store), and the observer
/// of their replies (the live state and the session log lines).
fn inbound(
    cfg: &Config,
    directory: Arc<Directory>,
    spool: Spool,
    scheduler: Arc<Scheduler>,
    metrics: &Arc<Metrics>,
    observer: Arc<dyn Observer>,
) -> Result<Arc<Inbound>> {
    let s = &cfg.server;
    let known_path = cfg.store.dir.join("known-logins");
    let known = KnownLogins::open(known_path.clone())
        .with_context(|| format!("cannot read {}", known_path.display()))?;
    Ok(Arc::new(Inbound {
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
        preauth_timeout: s.preauth_timeout,
        add_received_header: s.add_received_header,
        directory,
        spool,
        submit: Arc::new(SchedulerSubmit(scheduler)),
        limiter: Limiter::new(LimiterSettings {
            max_sessions: s.max_sessions,
            max_sessions_per_ip: s.max_sessions_per_ip,
            max_unauthenticated_per_ip: s.max_unauthenticated_per_ip,
        }),
        shutdown: CancellationToken::new(),
        metrics: Some(metrics.clone()),
        guard: Arc::new(LoginGuard::new(
            GuardSettings {
                lockout_after: s.lockout_after,
                user_lockout_after: s.user_lockout_after,
                lockout_window: s.lockout_window,
                lockout_time: s.lockout_time,
                lockout_max: s.lockout_max,
                exempt: s.lockout_exempt.clone(),
            },
            known,
        )),
        max_commands: s.max_commands,
        max_session_bytes: s.max_session_bytes,
        observer: Some(observer),
    }))
}

/// Binds every listener: a relay starts whole or not at all.
fn bind_listeners(
    cfg: &Config,
    tls: &[Option<TlsHandle>],
) -> Result<Vec<(TcpListener, Arc<ListenerRuntime>)>> {
    let mut bound = Vec::new();
    for (l, tls) in cfg.listeners.iter().zip(tls) {
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
    Ok(bound)
}

/// Warns when a file or directory holding secrets or mail is readable by every user (the
/// mode's other-read bit on Unix, a read grant to Everyone, Users and the like on Windows).
pub fn warn_if_readable_by_others(path: &Path, what: &str) {
    if let Ok(Some(who)) = smtp2oauth_platform::readable_by_others(path) {
        warn!(path = %path.display(), access = %who,
            "{what} is readable by every user on this machine; restrict it ({})",
            smtp2oauth_platform::restrict_advice(path));
    }
}

/// The scheduler's view of the configuration.
pub fn scheduler_config(loaded: &Loaded) -> SchedulerConfig {
    let cfg = &loaded.config;
    let d = &cfg.delivery;
    SchedulerConfig {
        queue: d.queue,
        wait_for_upstream: d.wait_for_upstream,
        retry_initial: d.retry_initial,
        retry_max: d.retry_max,
        max_queue_lifetime: d.max_queue_lifetime,
        shutdown_timeout: d.shutdown_timeout,
        hostname: cfg.hostname(),
        accounts: loaded
            .accounts
            .iter()
            .map(|a| {
                (
                    a.name.clone(),
                    AccountSettings {
                        mailbox: a.mailbox.clone(),
                        bounce_to: a.bounce_to.clone(),
                        max_connections: a.max_connections,
                        max_per_minute: a.messages_per_minute,
                    },
                )
            })
            .collect(),
        control_poll: std::time::Duration::from_secs(1),
        notify_account: cfg.notify.notify_account.clone(),
    }
}

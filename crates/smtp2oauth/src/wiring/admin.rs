//! The admin server's state: the readiness checks, the accounts, the spool, the send-test and
//! who may use it, bound to `[admin] listen` (nothing is served until the relay runs).

use super::TokenSources;
use crate::send_test;
use crate::status;
use anyhow::{Context, Result};
use smtp2oauth_admin::{
    AccountView, AccountsConfig, AdminServer, AdminState, Security, SendTestFn,
};
use smtp2oauth_config::{FlowSpec, Loaded};
use smtp2oauth_metrics::Metrics;
use smtp2oauth_scheduler::Scheduler;
use smtp2oauth_spool::Spool;
use smtp2oauth_tokens::{SignInManager, TokenStore};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

/// Everything the admin server shows.
pub struct Parts<'a> {
    pub loaded: &'a Loaded,
    pub spool: Spool,
    pub tokens: TokenSources,
    pub listeners: usize,
    pub listeners_up: Arc<AtomicUsize>,
    pub metrics: Arc<Metrics>,
    pub sign_in: Option<Arc<SignInManager>>,
    pub store: Option<Arc<TokenStore>>,
    pub activity: smtp2oauth_activity::Activity,
    pub environment: smtp2oauth_activity::EnvironmentFn,
    pub scheduler: Arc<Scheduler>,
}

/// Binds the admin server, unless `[admin] listen` is empty.
pub async fn server(parts: Parts<'_>) -> Result<Option<AdminServer>> {
    let cfg = &parts.loaded.config;
    if cfg.admin.listen.is_empty() {
        return Ok(None);
    }
    let addr = cfg.admin.listen.parse().context("[admin] listen")?;
    let inputs = Arc::new(status::ReadinessInputs {
        spool: parts.spool.clone(),
        listeners: parts.listeners,
        listeners_up: parts.listeners_up,
    });
    let readiness: smtp2oauth_admin::ReadinessFn =
        Arc::new(move || Box::pin(status::readiness(inputs.clone())));
    let accounts = AccountsConfig {
        accounts: account_views(parts.loaded, &parts.tokens),
        sign_in: parts.sign_in,
        store: parts.store,
    };
    let security = Security {
        password_hash: cfg
            .admin
            .password_hash
            .as_ref()
            .map(|h| smtp2oauth_tokens::Secret::from(h.expose())),
        allowed_hosts: cfg.admin.allowed_hosts.clone(),
        listen: Some(addr),
        metrics_auth: cfg.admin.metrics_auth,
    };
    let state = AdminState {
        metrics: parts.metrics,
        readiness,
        send_test: Some(send_test_fn(parts.loaded, &parts.tokens, parts.scheduler)),
        accounts: Arc::new(accounts),
        activity: parts.activity,
        environment: parts.environment,
        spool: Some(parts.spool),
        security,
    };
    let server = smtp2oauth_admin::bind(addr, state)
        .await
        .with_context(|| format!("cannot listen on {addr} ([admin] listen)"))?;
    Ok(Some(server))
}

/// The console's send-test: each account's route and token source as the running relay uses
/// them.
fn send_test_fn(loaded: &Loaded, tokens: &TokenSources, scheduler: Arc<Scheduler>) -> SendTestFn {
    let hostname = loaded.config.hostname();
    let mailboxes: Arc<HashMap<String, String>> = Arc::new(
        loaded
            .accounts
            .iter()
            .map(|a| (a.name.clone(), a.mailbox.clone()))
            .collect(),
    );
    let tokens = tokens.clone();
    Arc::new(move |account: String, to: String| {
        let target = mailboxes.get(&account).and_then(|mailbox| {
            Some(send_test::TestTarget {
                route: scheduler.route(&account)?.clone(),
                tokens: tokens.get(&account).cloned(),
                mailbox: mailbox.clone(),
                hostname: hostname.clone(),
                account: account.clone(),
            })
        });
        Box::pin(async move {
            let target = target.ok_or_else(|| format!("no account named `{account}`"))?;
            let to = send_test::recipient(&to)?;
            Ok(send_test::run(&target, to).await)
        })
    })
}

/// Every account as the accounts page shows it.
fn account_views(loaded: &Loaded, tokens: &TokenSources) -> Vec<AccountView> {
    loaded
        .accounts
        .iter()
        .map(|a| AccountView {
            name: a.name.clone(),
            mailbox: a.mailbox.clone(),
            route: a.route.kind(),
            flow: a.flow(),
            tokens: tokens.get(&a.name).cloned(),
            redirect_uri: match a.oauth.as_ref().map(|o| &o.flow) {
                Some(FlowSpec::AuthorizationCode { redirect_uri, .. }) => {
                    Some(redirect_uri.clone())
                }
                _ => None,
            },
        })
        .collect()
}

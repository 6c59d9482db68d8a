//! The admin server's state: the readiness checks and the accounts page, bound to
//! `[admin] listen` (nothing is served until the relay runs).

use super::TokenSources;
use crate::status;
use anyhow::{Context, Result};
use smtp2oauth_admin::{AccountView, AccountsConfig, AccountsPage, AdminServer, AdminState};
use smtp2oauth_config::{FlowSpec, Loaded};
use smtp2oauth_metrics::Metrics;
use smtp2oauth_spool::Spool;
use smtp2oauth_tokens::{SignInManager, TokenStore};
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
}

/// Binds the admin server, unless `[admin] listen` is empty.
pub async fn server(parts: Parts<'_>) -> Result<Option<AdminServer>> {
    let cfg = &parts.loaded.config;
    if cfg.admin.listen.is_empty() {
        return Ok(None);
    }
    let addr = cfg.admin.listen.parse().context("[admin] listen")?;
    let inputs = Arc::new(status::ReadinessInputs {
        spool: parts.spool,
        listeners: parts.listeners,
        listeners_up: parts.listeners_up,
    });
    let readiness: smtp2oauth_admin::ReadinessFn =
        Arc::new(move || Box::pin(status::readiness(inputs.clone())));
    let page = AccountsPage::new(AccountsConfig {
        accounts: account_views(parts.loaded, &parts.tokens),
        sign_in: parts.sign_in,
        store: parts.store,
        password_hash: cfg
            .admin
            .password_hash
            .as_ref()
            .map(|h| smtp2oauth_tokens::Secret::from(h.expose())),
    });
    let state = AdminState {
        metrics: parts.metrics,
        readiness,
        accounts: Some(Arc::new(page)),
        activity: parts.activity,
        environment: parts.environment,
    };
    let server = smtp2oauth_admin::bind(addr, state)
        .await
        .with_context(|| format!("cannot listen on {addr} ([admin] listen)"))?;
    Ok(Some(server))
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

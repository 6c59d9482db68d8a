//! Routes: each account's route, wrapped with its fallback, from its spec.

use super::tokens::{TokenSources, token_source, user_agent};
use anyhow::{Context, Result, anyhow};
use smtp2oauth_config::{
    AccountSpec, Config, GraphLargeMessages, GraphSpec, Loaded, RouteSpec, SmarthostSpec, SmtpAuth,
    SmtpSpec, UpstreamTls,
};
use smtp2oauth_scheduler::Routes;
use smtp2oauth_tokens::{HttpOptions, TokenSource, TokenStore};
use smtp2oauth_upstream::graph::LargeMessages;
use smtp2oauth_upstream::{
    CaptureRoute, Destination, FallbackRoute, GraphRoute, GraphRouteConfig, Route, SaslMechanism,
    SmarthostRoute, SmarthostRouteConfig, SmarthostTls, SmtpRoute, SmtpRouteConfig, TlsMode,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Graph request slots, one set per app registration (token endpoint + client id): Graph
/// limits concurrent requests per app, whichever mailbox they are for.
#[derive(Default)]
pub struct GraphSlots(Mutex<HashMap<(String, String), Arc<tokio::sync::Semaphore>>>);

impl GraphSlots {
    fn for_app(&self, app: (String, String)) -> Arc<tokio::sync::Semaphore> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(app)
            .or_insert_with(smtp2oauth_upstream::graph::app_slots)
            .clone()
    }
}

/// Every account's route.
pub async fn routes(
    loaded: &Loaded,
    tokens: &TokenSources,
    store: Option<&Arc<TokenStore>>,
) -> Result<Routes> {
    let slots = GraphSlots::default();
    let mut out: Routes = HashMap::new();
    for a in &loaded.accounts {
        let route = route(&loaded.config, a, tokens, &slots, store).await?;
        out.insert(a.name.clone(), route);
    }
    Ok(out)
}

/// The account's route, wrapped with its fallback route when it has one. `tokens` holds the
/// primary route's token source; the fallback gets its own (its scope differs). A Graph
/// primary with `graph_large_messages = "refuse"` keeps its size refusals from the fallback.
pub async fn route(
    cfg: &Config,
    account: &AccountSpec,
    tokens: &TokenSources,
    slots: &GraphSlots,
    store: Option<&Arc<TokenStore>>,
) -> Result<Arc<dyn Route>> {
    let primary = route_of(
        cfg,
        account,
        &account.route,
        tokens.get(&account.name).cloned(),
        slots,
    )?;
    let Some(fallback) = &account.fallback else {
        return Ok(primary);
    };
    let fallback_tokens = match fallback.scope() {
        Some(scope) => Some(token_source(cfg, account, scope, store).await?),
        None => None,
    };
    let fallback = route_of(cfg, account, fallback, fallback_tokens, slots)?;
    let wrapped = FallbackRoute::new(account.name.clone(), primary, fallback);
    Ok(Arc::new(match &account.route {
        RouteSpec::Graph(g) if g.large_messages == GraphLargeMessages::Refuse => {
            wrapped.keeping_too_large()
        }
        _ => wrapped,
    }))
}

/// One route of an account; `tokens` is the token source for that route, when it needs one.
fn route_of(
    cfg: &Config,
    account: &AccountSpec,
    spec: &RouteSpec,
    tokens: Option<Arc<dyn TokenSource>>,
    slots: &GraphSlots,
) -> Result<Arc<dyn Route>> {
    let tokens = || {
        tokens
            .clone()
            .ok_or_else(|| anyhow!("account `{}` has no token source", account.name))
    };
    Ok(match spec {
        RouteSpec::Smtp(smtp) => Arc::new(smtp_route(cfg, account, smtp, tokens()?)?),
        RouteSpec::Graph(graph) => Arc::new(graph_route(cfg, account, graph, tokens()?, slots)?),
        RouteSpec::Smarthost(smarthost) => Arc::new(smarthost_route(cfg, account, smarthost)?),
        RouteSpec::Capture { dir } => Arc::new(CaptureRoute::new(absolute(dir))),
    })
}

fn helo_name(cfg: &Config) -> String {
    cfg.delivery
        .helo_name
        .clone()
        .unwrap_or_else(|| cfg.hostname())
}

fn smtp_route(
    cfg: &Config,
    account: &AccountSpec,
    smtp: &SmtpSpec,
    tokens: Arc<dyn TokenSource>,
) -> Result<SmtpRoute> {
    let tls_config = smtp2oauth_upstream::client_config(account.ca_file.as_deref())
        .map_err(|e| anyhow!("account `{}`: {e}", account.name))?;
    let d = &cfg.delivery;
    let config = SmtpRouteConfig {
        account: account.name.clone(),
        mailbox: account.mailbox.clone(),
        host: smtp.host.clone(),
        port: smtp.port,
        tls: match smtp.tls {
            UpstreamTls::Starttls => TlsMode::Starttls,
            UpstreamTls::Implicit => TlsMode::Implicit,
            UpstreamTls::None => TlsMode::None,
        },
        tls_config,
        auth: match smtp.auth {
            SmtpAuth::Xoauth2 => SaslMechanism::Xoauth2,
            SmtpAuth::Oauthbearer => SaslMechanism::Oauthbearer,
        },
        helo_name: helo_name(cfg),
        connect_timeout: d.connect_timeout,
        command_timeout: d.command_timeout,
        data_timeout: d.data_timeout,
        max_idle: account.max_connections,
        idle_timeout: d.upstream_idle_timeout,
    };
    Ok(SmtpRoute::new(config, tokens))
}

fn graph_route(
    cfg: &Config,
    account: &AccountSpec,
    graph: &GraphSpec,
    tokens: Arc<dyn TokenSource>,
    slots: &GraphSlots,
) -> Result<GraphRoute> {
    let http = smtp2oauth_tokens::http_client(&HttpOptions {
        ca_file: account.ca_file.clone(),
        // Requests without message bytes (an upload session, send, a delete) answer at once;
        // those with them get `transfer_timeout` below.
        timeout: cfg.delivery.command_timeout,
        user_agent: user_agent(),
    })
    .with_context(|| format!("account `{}`: HTTP client", account.name))?;
    let app = account
        .oauth
        .as_ref()
        .map(|o| (o.token_url.clone(), o.client_id.clone()))
        .unwrap_or_default();
    let config = GraphRouteConfig {
        account: account.name.clone(),
        mailbox: account.mailbox.clone(),
        graph_url: graph.url.clone(),
        max_message_size: graph.max_message_size,
        large_messages: match graph.large_messages {
            GraphLargeMessages::Upload => LargeMessages::Upload,
            // "fallback": the route refuses, and the FallbackRoute around it takes the message.
            GraphLargeMessages::Fallback | GraphLargeMessages::Refuse => LargeMessages::Refuse,
        },
        // A request carries a whole message or a chunk of one: the time a message body gets.
        transfer_timeout: cfg.delivery.data_timeout,
    };
    Ok(GraphRoute::new(config, http, tokens, slots.for_app(app)))
}

fn smarthost_route(
    cfg: &Config,
    account: &AccountSpec,
    smarthost: &SmarthostSpec,
) -> Result<SmarthostRoute> {
    let ca_file = account.ca_file.as_deref();
    let tls_config = match &smarthost.client_cert {
        Some(pair) => {
            smtp2oauth_upstream::client_config_with_cert(ca_file, &pair.cert_file, &pair.key_file)
        }
        None => smtp2oauth_upstream::client_config(ca_file),
    }
    .map_err(|e| anyhow!("account `{}`: {e}", account.name))?;
    let resolver = smtp2oauth_upstream::smarthost::resolver(&smarthost.dns_servers)
        .map_err(|e| anyhow!("account `{}`: {e}", account.name))?;
    let d = &cfg.delivery;
    let config = SmarthostRouteConfig {
        account: account.name.clone(),
        destination: match &smarthost.destination {
            smtp2oauth_config::Destination::Host(h) => Destination::Host(h.clone()),
            smtp2oauth_config::Destination::Mx(domain) => Destination::Mx(domain.clone()),
        },
        port: smarthost.port,
        tls: match smarthost.tls {
            smtp2oauth_config::SmarthostTls::Required => SmarthostTls::Required,
            smtp2oauth_config::SmarthostTls::Opportunistic => SmarthostTls::Opportunistic,
        },
        tls_config,
        helo_name: helo_name(cfg),
        connect_timeout: d.connect_timeout,
        command_timeout: d.command_timeout,
        data_timeout: d.data_timeout,
    };
    Ok(SmarthostRoute::new(config, resolver))
}

fn absolute(p: &Path) -> PathBuf {
    let p: PathBuf = p
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect();
    if p.is_absolute() {
        p
    } else {
        std::env::current_dir().map(|d| d.join(&p)).unwrap_or(p)
    }
}

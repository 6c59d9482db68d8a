//! Turning configuration into the running pieces: token sources, routes (with their
//! fallbacks and the Graph request slots shared per app), listener TLS.
//!
//! `serve`, `check-config` and `send-test` all build from here, so a configuration that passes
//! `check-config` is one `serve` can build.

use anyhow::{Context, Result, anyhow};
use smtp2oauth_config::{
    Account, Config, Flow, JwtAlg, Provider, Route as RouteKind, SmtpAuth, UpstreamTls,
};
use smtp2oauth_scheduler::{AccountSettings, Routes, SchedulerConfig};
use smtp2oauth_tokens::{
    CacheOptions, CertificateCredential, ClientCredential, ClientCredentialsGrant, DelegatedClient,
    DelegatedFlow, HttpOptions, KeyOrigin, ProviderKind, Secret, SignInTarget, StoredRefreshGrant,
    TokenCache, TokenSource, TokenStore,
};
use smtp2oauth_upstream::{
    CaptureRoute, Destination, FallbackRoute, GraphRoute, GraphRouteConfig, Route, SaslMechanism,
    SmarthostRoute, SmarthostRouteConfig, SmarthostTls, SmtpRoute, SmtpRouteConfig, TlsMode,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub type TokenSources = HashMap<String, Arc<dyn TokenSource>>;

/// The client credential of an account (secret, secret file, or certificate + key).
pub fn credential(account: &Account) -> Result<ClientCredential> {
    if let (Some(cert), Some(key)) = (&account.certificate_file, &account.private_key_file) {
        let alg = match account.jwt_alg {
            JwtAlg::PS256 => smtp2oauth_tokens::JwtAlg::Ps256,
            JwtAlg::RS256 => smtp2oauth_tokens::JwtAlg::Rs256,
        };
        let c = CertificateCredential::from_pem_files(cert, key, alg)
            .with_context(|| format!("account `{}`: certificate credential", account.name))?;
        return Ok(ClientCredential::Certificate(c));
    }
    match account
        .client_secret()
        .map_err(|e| anyhow!("account `{}`: {e}", account.name))?
    {
        Some(s) => Ok(ClientCredential::Secret(Secret::new(
            s.expose().to_string(),
        ))),
        None => Err(anyhow!(
            "account `{}` has no client credential",
            account.name
        )),
    }
}

/// The HTTP client for an account's identity-platform requests.
pub fn http_client(cfg: &Config, account: &Account) -> Result<smtp2oauth_tokens::HttpClient> {
    smtp2oauth_tokens::http_client(&HttpOptions {
        ca_file: account.ca_file.clone(),
        timeout: cfg.delivery.http_timeout,
        user_agent: format!("smtp2oauth/{}", env!("CARGO_PKG_VERSION")),
    })
    .with_context(|| format!("account `{}`: HTTP client", account.name))
}

/// The environment variable that holds the master key (it wins over `[store] master_key_file`).
pub const MASTER_KEY_ENV: &str = "SMTP2OAUTH_MASTER_KEY";

/// Opens the encrypted token store when some account signs in with a delegated flow. With
/// `generate`, a missing master key is created on first use (`serve`, `account login`);
/// without, `Ok(None)` means nothing was ever stored (read-only commands create nothing).
pub fn open_token_store(
    cfg: &Config,
    generate: bool,
) -> Result<Option<(Arc<TokenStore>, KeyOrigin)>> {
    if !cfg.accounts.iter().any(Account::is_delegated) {
        return Ok(None);
    }
    let env = std::env::var(MASTER_KEY_ENV).ok();
    let found = smtp2oauth_tokens::load_master_key(
        env.as_deref(),
        cfg.store.master_key_file.as_deref(),
        &cfg.store.dir,
        generate,
    )?;
    let Some((key, origin)) = found else {
        return Ok(None);
    };
    let dir = cfg.store.dir.join("tokens");
    if !generate && !dir.exists() {
        // Nothing was ever stored; a read-only command creates nothing.
        return Ok(None);
    }
    let store = TokenStore::open(&dir, &key)?;
    Ok(Some((Arc::new(store), origin)))
}

/// How an account signs in and redeems its refresh token for `route` (each route has its own
/// scope; the sign-in itself uses the primary route's).
pub fn delegated_client(account: &Account, route: RouteKind) -> Result<DelegatedClient> {
    let token_url = account.token_url().ok_or_else(|| {
        anyhow!(
            "account `{}`: no token endpoint (set tenant or token_url)",
            account.name
        )
    })?;
    let has_credential = account.client_secret.is_some()
        || account.client_secret_file.is_some()
        || account.certificate_file.is_some();
    Ok(DelegatedClient {
        provider: match account.provider {
            Provider::Microsoft => ProviderKind::Microsoft,
            Provider::Google => ProviderKind::Google,
            Provider::Generic => ProviderKind::Generic,
        },
        flow: match account.flow {
            Flow::DeviceCode => DelegatedFlow::DeviceCode,
            _ => DelegatedFlow::AuthorizationCode,
        },
        client_id: account.client_id.clone().unwrap_or_default(),
        credential: if has_credential {
            Some(credential(account)?)
        } else {
            None
        },
        scope: account.scope_for(route),
        authorize_url: account.authorize_url(),
        token_url,
        device_code_url: account.device_code_url(),
        redirect_uri: account.redirect_uri(),
    })
}

/// Everything the sign-in manager needs for each delegated account.
pub fn sign_in_targets(cfg: &Config, store: &Arc<TokenStore>) -> Result<Vec<SignInTarget>> {
    cfg.accounts
        .iter()
        .filter(|a| a.is_delegated())
        .map(|a| {
            Ok(SignInTarget {
                account: a.name.clone(),
                client: delegated_client(a, a.route)?,
                http: http_client(cfg, a)?,
                store: store.clone(),
            })
        })
        .collect()
}

/// A token source for an account's `route` (smtp or graph). Delegated accounts redeem the
/// refresh token kept in `store`.
pub fn token_source(
    cfg: &Config,
    account: &Account,
    store: Option<&Arc<TokenStore>>,
) -> Result<Arc<dyn TokenSource>> {
    token_source_for(cfg, account, account.route, store)
}

/// A token source for one of an account's routes: each route has its own scope, so each gets
/// its own cache (the primary's is the one readiness checks and metrics report). A delegated
/// account's routes share one stored sign-in.
pub fn token_source_for(
    cfg: &Config,
    account: &Account,
    route: RouteKind,
    store: Option<&Arc<TokenStore>>,
) -> Result<Arc<dyn TokenSource>> {
    let http = http_client(cfg, account)?;
    if account.is_delegated() {
        let store = store.ok_or_else(|| {
            anyhow!(
                "account `{}` signs in with flow = \"{}\" but the token store is not open",
                account.name,
                account.flow.as_str()
            )
        })?;
        let grant = StoredRefreshGrant::new(
            account.name.clone(),
            delegated_client(account, route)?,
            store.clone(),
        )
        .with_context(|| format!("account `{}`: token store", account.name))?;
        return Ok(Arc::new(TokenCache::with_grant(
            account.name.clone(),
            Box::new(grant),
            http,
            CacheOptions::default(),
        )));
    }
    let token_url = account.token_url().ok_or_else(|| {
        anyhow!(
            "account `{}`: no token endpoint (set tenant or token_url)",
            account.name
        )
    })?;
    let grant = ClientCredentialsGrant {
        token_url,
        client_id: account.client_id.clone().unwrap_or_default(),
        credential: credential(account)?,
        scope: account.scope_for(route),
    };
    Ok(Arc::new(TokenCache::new(
        account.name.clone(),
        grant,
        http,
        CacheOptions::default(),
    )))
}

/// Every account's token source for its `route` (only accounts whose route needs tokens have
/// one).
pub fn token_sources(cfg: &Config, store: Option<&Arc<TokenStore>>) -> Result<TokenSources> {
    let mut out = HashMap::new();
    for a in &cfg.accounts {
        if Account::route_needs_token(a.route) {
            out.insert(a.name.clone(), token_source(cfg, a, store)?);
        }
    }
    Ok(out)
}

/// Graph request slots, one set per app registration (token endpoint + client id): Graph
/// limits concurrent requests per app, whichever mailbox they are for.
pub type GraphSlots = Mutex<HashMap<(String, String), Arc<tokio::sync::Semaphore>>>;

/// The account's route, wrapped with its `fallback_route` when it has one.
pub fn route(
    cfg: &Config,
    account: &Account,
    tokens: &TokenSources,
    store: Option<&Arc<TokenStore>>,
) -> Result<Arc<dyn Route>> {
    route_with(cfg, account, tokens, &GraphSlots::default(), store)
}

fn route_with(
    cfg: &Config,
    account: &Account,
    tokens: &TokenSources,
    slots: &GraphSlots,
    store: Option<&Arc<TokenStore>>,
) -> Result<Arc<dyn Route>> {
    let primary = route_of(
        cfg,
        account,
        account.route,
        tokens.get(&account.name).cloned(),
        slots,
    )?;
    let Some(fallback_kind) = account.fallback_route.filter(|f| *f != account.route) else {
        return Ok(primary);
    };
    let fallback_tokens = if Account::route_needs_token(fallback_kind) {
        Some(token_source_for(cfg, account, fallback_kind, store)?)
    } else {
        None
    };
    let fallback = route_of(cfg, account, fallback_kind, fallback_tokens, slots)?;
    Ok(Arc::new(FallbackRoute::new(
        account.name.clone(),
        primary,
        fallback,
    )))
}

fn helo_name(cfg: &Config) -> String {
    cfg.delivery
        .helo_name
        .clone()
        .unwrap_or_else(|| cfg.hostname())
}

/// One route of an account; `tokens` is the token source for that route, when it needs one.
fn route_of(
    cfg: &Config,
    account: &Account,
    kind: RouteKind,
    tokens: Option<Arc<dyn TokenSource>>,
    slots: &GraphSlots,
) -> Result<Arc<dyn Route>> {
    let tokens_for = |tokens: Option<Arc<dyn TokenSource>>| {
        tokens.ok_or_else(|| anyhow!("account `{}` has no token source", account.name))
    };
    match kind {
        RouteKind::Graph => {
            let http = smtp2oauth_tokens::http_client(&HttpOptions {
                ca_file: account.ca_file.clone(),
                // One request carries the whole message: allow it the time a message body gets.
                timeout: cfg.delivery.data_timeout,
                user_agent: format!("smtp2oauth/{}", env!("CARGO_PKG_VERSION")),
            })
            .with_context(|| format!("account `{}`: HTTP client", account.name))?;
            let app = (
                account.token_url().unwrap_or_default(),
                account.client_id.clone().unwrap_or_default(),
            );
            let app_slots = slots
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(app)
                .or_insert_with(smtp2oauth_upstream::graph::app_slots)
                .clone();
            let max_message_size = account
                .max_message_size
                .unwrap_or(smtp2oauth_config::GRAPH_MAX_MESSAGE_SIZE)
                .min(cfg.server.max_message_size);
            Ok(Arc::new(GraphRoute::new(
                GraphRouteConfig {
                    account: account.name.clone(),
                    mailbox: account.mailbox.clone(),
                    graph_url: account.graph_url(),
                    max_message_size,
                },
                http,
                tokens_for(tokens)?,
                app_slots,
            )))
        }
        RouteKind::Smarthost => {
            let tls_config = match (&account.tls_client_cert_file, &account.tls_client_key_file) {
                (Some(c), Some(k)) => {
                    smtp2oauth_upstream::client_config_with_cert(account.ca_file.as_deref(), c, k)
                }
                _ => smtp2oauth_upstream::client_config(account.ca_file.as_deref()),
            }
            .map_err(|e| anyhow!("account `{}`: {e}", account.name))?;
            let servers = account
                .dns_servers
                .iter()
                .map(|s| {
                    smtp2oauth_config::parse_dns_server(s).ok_or_else(|| {
                        anyhow!(
                            "account `{}`: dns_servers: `{s}` is not ip or ip:port",
                            account.name
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let resolver = smtp2oauth_upstream::smarthost::resolver(&servers)
                .map_err(|e| anyhow!("account `{}`: {e}", account.name))?;
            let destination = match (&account.smarthost_host, &account.mx_domain) {
                (Some(h), _) => Destination::Host(h.clone()),
                (None, Some(d)) => Destination::Mx(d.clone()),
                (None, None) => {
                    return Err(anyhow!(
                        "account `{}`: route \"smarthost\" needs smarthost_host or mx_domain",
                        account.name
                    ));
                }
            };
            Ok(Arc::new(SmarthostRoute::new(
                SmarthostRouteConfig {
                    account: account.name.clone(),
                    destination,
                    port: account.smarthost_port(),
                    tls: match account.smarthost_tls() {
                        smtp2oauth_config::SmarthostTls::Required => SmarthostTls::Required,
                        smtp2oauth_config::SmarthostTls::Opportunistic => {
                            SmarthostTls::Opportunistic
                        }
                    },
                    tls_config,
                    helo_name: helo_name(cfg),
                    connect_timeout: cfg.delivery.connect_timeout,
                    command_timeout: cfg.delivery.command_timeout,
                    data_timeout: cfg.delivery.data_timeout,
                },
                resolver,
            )))
        }
        _ => route_plain(cfg, account, kind, tokens),
    }
}

fn route_plain(
    cfg: &Config,
    account: &Account,
    kind: RouteKind,
    tokens: Option<Arc<dyn TokenSource>>,
) -> Result<Arc<dyn Route>> {
    match kind {
        RouteKind::Capture => Ok(Arc::new(CaptureRoute::new(absolute(
            &cfg.capture_dir(account),
        )))),
        RouteKind::Smtp => {
            let tls_config = smtp2oauth_upstream::client_config(account.ca_file.as_deref())
                .map_err(|e| anyhow!("account `{}`: {e}", account.name))?;
            let tls = match account.smtp_tls() {
                UpstreamTls::Starttls => TlsMode::Starttls,
                UpstreamTls::Implicit => TlsMode::Implicit,
                UpstreamTls::None => TlsMode::None,
            };
            let tokens =
                tokens.ok_or_else(|| anyhow!("account `{}` has no token source", account.name))?;
            Ok(Arc::new(SmtpRoute::new(
                SmtpRouteConfig {
                    account: account.name.clone(),
                    mailbox: account.mailbox.clone(),
                    host: account.smtp_host(),
                    port: account.smtp_port(),
                    tls,
                    tls_config,
                    auth: match account.smtp_auth() {
                        SmtpAuth::Xoauth2 => SaslMechanism::Xoauth2,
                        SmtpAuth::Oauthbearer => SaslMechanism::Oauthbearer,
                    },
                    helo_name: helo_name(cfg),
                    connect_timeout: cfg.delivery.connect_timeout,
                    command_timeout: cfg.delivery.command_timeout,
                    data_timeout: cfg.delivery.data_timeout,
                    max_idle: account
                        .max_upstream_connections
                        .unwrap_or(cfg.delivery.max_upstream_connections),
                    idle_timeout: cfg.delivery.upstream_idle_timeout,
                },
                tokens,
            )))
        }
        other => Err(anyhow!(
            "account `{}`: route \"{}\" is built elsewhere",
            account.name,
            other.as_str()
        )),
    }
}

pub fn routes(
    cfg: &Config,
    tokens: &TokenSources,
    store: Option<&Arc<TokenStore>>,
) -> Result<Routes> {
    let mut out: Routes = HashMap::new();
    let slots = GraphSlots::default();
    for a in &cfg.accounts {
        out.insert(a.name.clone(), route_with(cfg, a, tokens, &slots, store)?);
    }
    Ok(out)
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

/// The certificate and key files for TLS listeners: configured ones, or a self-signed pair
/// generated once into `<store dir>/tls/` (reused on later starts).
pub fn listener_cert_files(cfg: &Config) -> Result<Option<(PathBuf, PathBuf)>> {
    let needs_tls = cfg
        .listeners
        .iter()
        .any(|l| l.tls != smtp2oauth_config::ListenerTls::None);
    if !needs_tls {
        return Ok(None);
    }
    if let (Some(c), Some(k)) = (&cfg.tls.cert_file, &cfg.tls.key_file) {
        return Ok(Some((c.clone(), k.clone())));
    }
    if !cfg.tls.self_signed {
        return Err(anyhow!(
            "a listener uses TLS but [tls] has no cert_file/key_file and self_signed = false"
        ));
    }
    let dir = cfg.store.dir.join("tls");
    let cert = dir.join("self-signed-cert.pem");
    let key = dir.join("self-signed-key.pem");
    if cert.exists() && key.exists() {
        return Ok(Some((cert, key)));
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let host = cfg.hostname();
    let generated = rcgen::generate_simple_self_signed(vec![host.clone(), "localhost".into()])
        .context("cannot generate a self-signed certificate")?;
    write_private(&key, generated.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(&cert, generated.cert.pem())
        .with_context(|| format!("cannot write {}", cert.display()))?;
    tracing::warn!(
        cert = %cert.display(),
        host = %host,
        "generated a self-signed certificate for STARTTLS and implicit TLS; set [tls] cert_file and key_file to use your own"
    );
    Ok(Some((cert, key)))
}

/// Writes a file readable only by us (mode 0600), atomically.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The scheduler's view of the configuration.
pub fn scheduler_config(cfg: &Config) -> SchedulerConfig {
    let d = &cfg.delivery;
    SchedulerConfig {
        queue: d.queue,
        wait_for_upstream: d.wait_for_upstream,
        retry_initial: d.retry_initial,
        retry_max: d.retry_max,
        max_queue_lifetime: d.max_queue_lifetime,
        shutdown_timeout: d.shutdown_timeout,
        hostname: cfg.hostname(),
        accounts: cfg
            .accounts
            .iter()
            .map(|a| {
                (
                    a.name.clone(),
                    AccountSettings {
                        mailbox: a.mailbox.clone(),
                        bounce_to: a.bounce_to.clone().or_else(|| d.bounce_to.clone()),
                        max_connections: a
                            .max_upstream_connections
                            .unwrap_or(d.max_upstream_connections),
                        max_per_minute: a.messages_per_minute(),
                    },
                )
            })
            .collect(),
        control_poll: std::time::Duration::from_secs(1),
    }
}

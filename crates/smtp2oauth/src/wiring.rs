//! Turning configuration into the running pieces: token sources, routes, listener TLS.
//!
//! `serve`, `check-config` and `send-test` all build from here, so a configuration that passes
//! `check-config` is one `serve` can build.

use anyhow::{Context, Result, anyhow};
use smtp2oauth_config::{Account, Config, Flow, JwtAlg, Provider, Route as RouteKind, UpstreamTls};
use smtp2oauth_scheduler::{AccountSettings, Routes, SchedulerConfig};
use smtp2oauth_tokens::{
    CacheOptions, CertificateCredential, ClientCredential, ClientCredentialsGrant, DelegatedClient,
    DelegatedFlow, HttpOptions, KeyOrigin, ProviderKind, Secret, SignInTarget, StoredRefreshGrant,
    TokenCache, TokenSource, TokenStore,
};
use smtp2oauth_upstream::{CaptureRoute, Route, SmtpRoute, SmtpRouteConfig, TlsMode};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// How an account signs in and redeems its refresh token.
pub fn delegated_client(account: &Account) -> Result<DelegatedClient> {
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
        scope: account.scope(),
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
                client: delegated_client(a)?,
                http: http_client(cfg, a)?,
                store: store.clone(),
            })
        })
        .collect()
}

/// A token source for an account that needs one (route = "smtp"). Delegated accounts redeem
/// the refresh token kept in `store`.
pub fn token_source(
    cfg: &Config,
    account: &Account,
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
            delegated_client(account)?,
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
        scope: account.scope(),
    };
    Ok(Arc::new(TokenCache::new(
        account.name.clone(),
        grant,
        http,
        CacheOptions::default(),
    )))
}

/// Every account's token source (only accounts whose route needs tokens have one).
pub fn token_sources(cfg: &Config, store: Option<&Arc<TokenStore>>) -> Result<TokenSources> {
    let mut out = HashMap::new();
    for a in &cfg.accounts {
        if a.route == RouteKind::Smtp {
            out.insert(a.name.clone(), token_source(cfg, a, store)?);
        }
    }
    Ok(out)
}

pub fn route(cfg: &Config, account: &Account, tokens: &TokenSources) -> Result<Arc<dyn Route>> {
    match account.route {
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
            let tokens = tokens
                .get(&account.name)
                .cloned()
                .ok_or_else(|| anyhow!("account `{}` has no token source", account.name))?;
            Ok(Arc::new(SmtpRoute::new(
                SmtpRouteConfig {
                    account: account.name.clone(),
                    mailbox: account.mailbox.clone(),
                    host: account.smtp_host(),
                    port: account.smtp_port(),
                    tls,
                    tls_config,
                    helo_name: cfg
                        .delivery
                        .helo_name
                        .clone()
                        .unwrap_or_else(|| cfg.hostname()),
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
            "account `{}`: route \"{}\" is not available in this version",
            account.name,
            other.as_str()
        )),
    }
}

pub fn routes(cfg: &Config, tokens: &TokenSources) -> Result<Routes> {
    let mut out: Routes = HashMap::new();
    for a in &cfg.accounts {
        out.insert(a.name.clone(), route(cfg, a, tokens)?);
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

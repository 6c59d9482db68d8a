//! Token sources and the token store: what each account's routes authenticate with.

use anyhow::{Context, Result, anyhow};
use smtp2oauth_config::{
    AccountSpec, Config, Credential, FlowSpec, JwtAlg, Loaded, OAuth, Provider,
};
use smtp2oauth_tokens::{
    CacheOptions, CertificateCredential, ClientCredential, ClientCredentialsGrant, DelegatedClient,
    DelegatedFlow, HttpOptions, KeyOrigin, ProviderKind, Secret, SignInTarget, StoredRefreshGrant,
    TokenCache, TokenSource, TokenStore,
};
use std::collections::HashMap;
use std::sync::Arc;

/// The token source of each account's primary route, by account name (accounts whose route
/// needs no token have none).
pub type TokenSources = HashMap<String, Arc<dyn TokenSource>>;

/// The environment variable that holds the master key (it wins over `[store] master_key_file`).
const MASTER_KEY_ENV: &str = "SMTP2OAUTH_MASTER_KEY";

/// Loads an account's client credential (a certificate is read and parsed here).
pub fn credential(account: &str, credential: &Credential) -> Result<ClientCredential> {
    match credential {
        Credential::Secret(s) => Ok(ClientCredential::Secret(Secret::new(
            s.expose().to_string(),
        ))),
        Credential::Certificate { pair, alg } => {
            let alg = match alg {
                JwtAlg::PS256 => smtp2oauth_tokens::JwtAlg::Ps256,
                JwtAlg::RS256 => smtp2oauth_tokens::JwtAlg::Rs256,
            };
            let c = CertificateCredential::from_pem_files(&pair.cert_file, &pair.key_file, alg)
                .with_context(|| format!("account `{account}`: certificate credential"))?;
            Ok(ClientCredential::Certificate(c))
        }
    }
}

/// The HTTP client for an account's identity-platform requests.
pub fn http_client(cfg: &Config, account: &AccountSpec) -> Result<smtp2oauth_tokens::HttpClient> {
    smtp2oauth_tokens::http_client(&HttpOptions {
        ca_file: account.ca_file.clone(),
        timeout: cfg.delivery.http_timeout,
        user_agent: user_agent(),
    })
    .with_context(|| format!("account `{}`: HTTP client", account.name))
}

/// What we call ourselves in HTTP requests.
pub fn user_agent() -> String {
    format!("smtp2oauth/{}", env!("CARGO_PKG_VERSION"))
}

/// Opens the encrypted token store when some account signs in with a delegated flow. With
/// `generate`, a missing master key is created on first use (`serve`, `account login`);
/// without, `Ok(None)` means nothing was ever stored (read-only commands create nothing).
pub async fn open_token_store(
    loaded: &Loaded,
    generate: bool,
) -> Result<Option<(Arc<TokenStore>, KeyOrigin)>> {
    if !loaded.has_delegated() {
        return Ok(None);
    }
    let store_dir = loaded.config.store.dir.clone();
    let key_file = loaded.config.store.master_key_file.clone();
    let env = std::env::var(MASTER_KEY_ENV).ok();
    let dir = store_dir.join("tokens");
    let found = tokio::task::spawn_blocking(move || {
        let found = smtp2oauth_tokens::load_master_key(
            env.as_deref(),
            key_file.as_deref(),
            &store_dir,
            generate,
        )?;
        // Nothing was ever stored: a read-only command creates nothing.
        let stored = generate || store_dir.join("tokens").exists();
        anyhow::Ok(found.filter(|_| stored))
    })
    .await??;
    let Some((key, origin)) = found else {
        return Ok(None);
    };
    let store = TokenStore::open(&dir, &key).await?;
    Ok(Some((Arc::new(store), origin)))
}

/// How an account signs in and redeems its refresh token for a route with `scope` (each route
/// has its own scope; the sign-in itself uses the primary route's).
pub fn delegated_client(account: &str, oauth: &OAuth, scope: &str) -> Result<DelegatedClient> {
    let (flow, authorize_url, device_code_url, redirect_uri) = match &oauth.flow {
        FlowSpec::ClientCredentials { .. } => {
            return Err(anyhow!(
                "account `{account}` uses the client-credentials flow: nobody signs in"
            ));
        }
        FlowSpec::AuthorizationCode {
            authorize_url,
            redirect_uri,
            ..
        } => (
            DelegatedFlow::AuthorizationCode,
            Some(authorize_url.clone()),
            None,
            redirect_uri.clone(),
        ),
        FlowSpec::DeviceCode {
            device_code_url, ..
        } => (
            DelegatedFlow::DeviceCode,
            None,
            Some(device_code_url.clone()),
            String::new(),
        ),
    };
    Ok(DelegatedClient {
        provider: match oauth.provider {
            Provider::Microsoft => ProviderKind::Microsoft,
            Provider::Google => ProviderKind::Google,
            Provider::Generic => ProviderKind::Generic,
        },
        flow,
        client_id: oauth.client_id.clone(),
        credential: oauth
            .flow
            .credential()
            .map(|c| credential(account, c))
            .transpose()?,
        scope: scope.to_string(),
        authorize_url,
        token_url: oauth.token_url.clone(),
        device_code_url,
        redirect_uri,
    })
}

/// Everything the sign-in manager needs for each delegated account.
pub fn sign_in_targets(loaded: &Loaded, store: &Arc<TokenStore>) -> Result<Vec<SignInTarget>> {
    let mut targets = Vec::new();
    for a in &loaded.accounts {
        let (Some(oauth), Some(scope)) = (a.delegated(), a.route.scope()) else {
            continue;
        };
        targets.push(SignInTarget {
            account: a.name.clone(),
            client: delegated_client(&a.name, oauth, scope)?,
            http: http_client(&loaded.config, a)?,
            store: store.clone(),
        });
    }
    Ok(targets)
}

/// The token source for one route of an account (`scope` is that route's): each route has its
/// own cache (the primary's is the one readiness checks and metrics report). A delegated
/// account's routes share one stored sign-in.
pub async fn token_source(
    cfg: &Config,
    account: &AccountSpec,
    scope: &str,
    store: Option<&Arc<TokenStore>>,
) -> Result<Arc<dyn TokenSource>> {
    let oauth = account
        .oauth
        .as_ref()
        .ok_or_else(|| anyhow!("account `{}` has no OAuth settings", account.name))?;
    let http = http_client(cfg, account)?;
    let name = account.name.clone();
    if let FlowSpec::ClientCredentials { credential: c } = &oauth.flow {
        let grant = ClientCredentialsGrant {
            token_url: oauth.token_url.clone(),
            client_id: oauth.client_id.clone(),
            credential: credential(&name, c)?,
            scope: scope.to_string(),
        };
        return Ok(Arc::new(TokenCache::new(
            name,
            grant,
            http,
            CacheOptions::default(),
        )));
    }
    let store = store.ok_or_else(|| {
        anyhow!(
            "account `{name}` signs in with flow = \"{}\" but the token store is not open",
            oauth.flow.kind().as_str()
        )
    })?;
    let grant = StoredRefreshGrant::new(
        name.clone(),
        delegated_client(&name, oauth, scope)?,
        store.clone(),
    )
    .await
    .with_context(|| format!("account `{name}`: token store"))?;
    Ok(Arc::new(TokenCache::with_grant(
        name,
        Box::new(grant),
        http,
        CacheOptions::default(),
    )))
}

/// Every account's token source for its primary route.
pub async fn token_sources(
    loaded: &Loaded,
    store: Option<&Arc<TokenStore>>,
) -> Result<TokenSources> {
    let mut out = HashMap::new();
    for a in &loaded.accounts {
        if let Some(scope) = a.route.scope() {
            let source = token_source(&loaded.config, a, scope, store).await?;
            out.insert(a.name.clone(), source);
        }
    }
    Ok(out)
}

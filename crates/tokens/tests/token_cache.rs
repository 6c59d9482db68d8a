//! End-to-end behaviour of the token manager against a scripted token endpoint: what goes on the
//! wire, single flight, margins, cooldowns, error classification and what stays out of logs.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use smtp2oauth_tokens::{
    AccessToken, CacheOptions, CertificateCredential, ClientCredential, ClientCredentialsGrant,
    HttpOptions, JWT_BEARER_ASSERTION_TYPE, JwtAlg, Secret, TokenCache, TokenErrorKind,
    TokenSource, http_client,
};
use support::{LogCapture, Reply, TestServer, closed_port_url, https_server};

const CLIENT_SECRET: &str = "Xy8Q~client-secret-value-for-tests_0123456789";
const SCOPE: &str = "https://outlook.office365.com/.default";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn secret_grant(token_url: String) -> ClientCredentialsGrant {
    ClientCredentialsGrant {
        token_url,
        client_id: "11111111-2222-3333-4444-555555555555".to_owned(),
        credential: ClientCredential::Secret(Secret::from(CLIENT_SECRET)),
        scope: SCOPE.to_owned(),
    }
}

fn client(timeout: Duration) -> reqwest::Client {
    http_client(&HttpOptions {
        timeout,
        ..HttpOptions::default()
    })
    .unwrap()
}

fn cache_with(server_url: String, opts: CacheOptions) -> TokenCache {
    TokenCache::new(
        "scanner@contoso.example",
        secret_grant(server_url),
        client(Duration::from_secs(10)),
        opts,
    )
}

fn cache(server: &TestServer) -> TokenCache {
    cache_with(server.token_url(), CacheOptions::default())
}

#[tokio::test]
async fn client_secret_request_and_token() {
    let server = TestServer::always(Reply::token("at-1", 3599)).await;
    let cache = cache(&server);

    let token = cache.token().await.unwrap();
    assert_eq!(token.secret(), "at-1");
    assert_eq!(token.id(), 1);
    assert_eq!(
        token
            .expires_at()
            .duration_since(token.obtained_at())
            .unwrap(),
        Duration::from_secs(3599)
    );

    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/contoso.example/oauth2/v2.0/token");
    assert_eq!(
        request.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let form = request.form();
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["client_id"], "11111111-2222-3333-4444-555555555555");
    assert_eq!(form["scope"], SCOPE);
    assert_eq!(form["client_secret"], CLIENT_SECRET);
    assert!(!form.contains_key("client_assertion"));
    assert!(!form.contains_key("client_assertion_type"));
}

fn decode_json(part: &str) -> serde_json::Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

#[tokio::test]
async fn certificate_request_carries_a_client_assertion() {
    let server = TestServer::always(Reply::token("at-cert", 3599)).await;
    for (alg, key) in [(JwtAlg::Ps256, "key.pem"), (JwtAlg::Rs256, "key-pkcs1.pem")] {
        let credential =
            CertificateCredential::from_pem_files(&fixture("cert.pem"), &fixture(key), alg)
                .unwrap();
        let grant = ClientCredentialsGrant {
            token_url: server.token_url(),
            client_id: "client-abc".to_owned(),
            credential: ClientCredential::Certificate(credential),
            scope: SCOPE.to_owned(),
        };
        let cache = TokenCache::new(
            "cert-account",
            grant,
            client(Duration::from_secs(10)),
            CacheOptions::default(),
        );
        let before = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert_eq!(cache.token().await.unwrap().secret(), "at-cert");

        let form = server.requests().last().unwrap().form();
        assert_eq!(form["grant_type"], "client_credentials");
        assert_eq!(form["client_id"], "client-abc");
        assert_eq!(form["scope"], SCOPE);
        assert_eq!(form["client_assertion_type"], JWT_BEARER_ASSERTION_TYPE);
        assert!(!form.contains_key("client_secret"));

        let parts: Vec<&str> = form["client_assertion"].split('.').collect();
        assert_eq!(parts.len(), 3);
        let header = decode_json(parts[0]);
        assert_eq!(header["alg"], alg.as_str());
        assert_eq!(header["typ"], "JWT");
        assert_eq!(
            header["x5t#S256"],
            "akqCt6T2vX5FSAZ7W1JENdwfJIMI2Zp3VA9oejL6rNo"
        );
        assert_eq!(header.get("x5t").is_some(), alg == JwtAlg::Rs256);
        let claims = decode_json(parts[1]);
        assert_eq!(claims["aud"], server.token_url().as_str());
        assert_eq!(claims["iss"], "client-abc");
        assert_eq!(claims["sub"], "client-abc");
        let iat = claims["iat"].as_u64().unwrap();
        assert!(iat >= before && iat <= before + 5);
        assert_eq!(claims["nbf"].as_u64(), Some(iat));
        assert_eq!(claims["exp"].as_u64(), Some(iat + 600));
        assert!(!claims["jti"].as_str().unwrap().is_empty());
    }
}

#[tokio::test]
async fn cached_token_is_reused_while_outside_the_margin() {
    let server = TestServer::always(Reply::token("at", 3600)).await;
    let cache = cache(&server);
    let first = cache.token().await.unwrap();
    let second = cache.token().await.unwrap();
    assert_eq!(first.id(), second.id());
    assert_eq!(server.count(), 1);
}

#[tokio::test]
async fn single_flight_for_fifty_concurrent_callers() {
    let server =
        TestServer::always(Reply::token("at-shared", 3600).delayed(Duration::from_millis(400)))
            .await;
    let cache = Arc::new(cache(&server));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.token().await })
        })
        .collect();
    for task in tasks {
        let token = task.await.unwrap().unwrap();
        assert_eq!(token.id(), 1);
        assert_eq!(token.secret(), "at-shared");
    }
    assert_eq!(server.count(), 1);
    assert_eq!(cache.status().requests, 1);
}

/// A sign-out (or a new sign-in) while a request is on its way: what comes back belongs to the
/// old credentials and is never handed out or cached.
#[tokio::test]
async fn a_token_requested_before_the_credentials_changed_is_discarded() {
    let server =
        TestServer::always(Reply::token("at-old", 3600).delayed(Duration::from_millis(400))).await;
    let cache = Arc::new(cache(&server));
    let pending = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.token().await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    cache.credentials_changed();
    let e = pending.await.unwrap().unwrap_err();
    assert!(e.to_string().contains("sign-in changed"), "{e}");
    let status = cache.status();
    assert_eq!(status.valid_until, None, "nothing cached");
    assert_eq!(status.token_id, None);
    assert_eq!((status.requests, status.failures), (1, 0));
    // The next caller asks again, under the current credentials.
    assert_eq!(cache.token().await.unwrap().secret(), "at-old");
    assert_eq!(server.count(), 2);
}

#[tokio::test]
async fn concurrent_callers_share_one_failure() {
    let server = TestServer::always(
        Reply::html(503, "<html><title>Down</title></html>").delayed(Duration::from_millis(300)),
    )
    .await;
    let cache = Arc::new(cache(&server));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.token().await })
        })
        .collect();
    for task in tasks {
        let error = task.await.unwrap().unwrap_err();
        assert_eq!(error.kind, TokenErrorKind::Transient);
        assert_eq!(error.http_status, Some(503));
    }
    assert_eq!(server.count(), 1);
}

#[tokio::test]
async fn refreshes_once_inside_the_margin() {
    // 2 s lifetime: margin = min(10 min, 1 s) = 1 s.
    let server =
        TestServer::sequence(vec![Reply::token("at-1", 2), Reply::token("at-2", 3600)]).await;
    let cache = cache(&server);
    assert_eq!(cache.token().await.unwrap().secret(), "at-1");
    assert_eq!(cache.token().await.unwrap().secret(), "at-1");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let refreshed = cache.token().await.unwrap();
    assert_eq!(refreshed.secret(), "at-2");
    assert_eq!(refreshed.id(), 2);
    assert_eq!(server.count(), 2);
}

#[tokio::test]
async fn callers_do_not_wait_for_a_refresh_while_the_old_token_is_valid() {
    let server = TestServer::sequence(vec![
        Reply::token("at-1", 2),
        Reply::token("at-2", 3600).delayed(Duration::from_millis(800)),
    ])
    .await;
    let cache = Arc::new(cache(&server));
    cache.token().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let refresher = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.token().await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let meanwhile = cache.token().await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(300));
    assert_eq!(meanwhile.secret(), "at-1");
    assert_eq!(refresher.await.unwrap().unwrap().secret(), "at-2");
    assert_eq!(server.count(), 2);
}

#[tokio::test]
async fn transient_failure_inside_the_margin_keeps_the_cached_token() {
    let server = TestServer::sequence(vec![
        Reply::token("at-1", 4),
        Reply::html(503, "<html><title>Service Unavailable</title></html>"),
    ])
    .await;
    let cache = cache(&server);
    let first = cache.token().await.unwrap();
    // 4 s lifetime: the margin is 2 s, so the token is due for refresh but still valid.
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let during_outage = cache.token().await.unwrap();
    assert_eq!(during_outage.id(), first.id());
    assert_eq!(during_outage.secret(), "at-1");
    assert_eq!(server.count(), 2);

    // Inside the cooldown: still the cached token, and no new request.
    assert_eq!(cache.token().await.unwrap().id(), first.id());
    assert_eq!(server.count(), 2);

    let status = cache.status();
    assert_eq!(status.valid_until, Some(first.expires_at()));
    assert_eq!(status.requests, 2);
    assert_eq!(status.failures, 1);
    assert!(status.last_error.unwrap().contains("HTTP 503"));
}

#[tokio::test]
async fn failure_cooldown_suppresses_repeat_requests() {
    let server = TestServer::always(Reply::json(
        401,
        r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.","error_codes":[7000215]}"#,
    ))
    .await;
    let cache = cache_with(
        server.token_url(),
        CacheOptions {
            failure_cooldown: Duration::from_millis(300),
            ..CacheOptions::default()
        },
    );
    let first = cache.token().await.unwrap_err();
    assert_eq!(first.kind, TokenErrorKind::Configuration);
    assert_eq!(first.aadsts, Some(7000215));
    assert!(first.advice().unwrap().contains("Secret ID"));
    let second = cache.token().await.unwrap_err();
    let third = cache.token().await.unwrap_err();
    assert_eq!(second, first);
    assert_eq!(third, first);
    assert_eq!(server.count(), 1);

    tokio::time::sleep(Duration::from_millis(350)).await;
    cache.token().await.unwrap_err();
    assert_eq!(server.count(), 2);
    let status = cache.status();
    assert_eq!((status.requests, status.failures), (2, 2));
    assert_eq!(status.valid_until, None);
}

#[tokio::test]
async fn retry_after_lengthens_the_cooldown() {
    let server = TestServer::sequence(vec![
        Reply::json(429, r#"{"error":"temporarily_unavailable"}"#).header("Retry-After", "1"),
        Reply::token("at", 3600),
    ])
    .await;
    let cache = cache_with(
        server.token_url(),
        CacheOptions {
            failure_cooldown: Duration::from_millis(50),
            ..CacheOptions::default()
        },
    );
    let error = cache.token().await.unwrap_err();
    assert!(error.is_transient());
    assert_eq!(error.retry_after, Some(Duration::from_secs(1)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    cache.token().await.unwrap_err();
    assert_eq!(server.count(), 1);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(cache.token().await.unwrap().secret(), "at");
    assert_eq!(server.count(), 2);
    assert_eq!(cache.status().last_error, None);
}

/// A caller waiting for an outage to end asks exactly when each cooldown ends, returns with
/// the first token, and gives up at once on a failure waiting does not cure.
#[tokio::test]
async fn waiting_for_a_token_asks_when_each_cooldown_ends() {
    let server = TestServer::sequence(vec![
        Reply::json(503, r#"{"error":"temporarily_unavailable"}"#),
        Reply::json(503, r#"{"error":"temporarily_unavailable"}"#),
        Reply::json(503, r#"{"error":"temporarily_unavailable"}"#),
        Reply::token("at", 3600),
    ])
    .await;
    let cache = cache_with(
        server.token_url(),
        CacheOptions {
            failure_cooldown: Duration::from_millis(200),
            ..CacheOptions::default()
        },
    );
    cache.token().await.unwrap_err();
    let until = cache.retry_at().expect("a cooldown after a failure");
    assert!(until > std::time::Instant::now());
    let started = std::time::Instant::now();
    smtp2oauth_tokens::wait_for_token(&cache).await.unwrap();
    let waited = started.elapsed();
    assert_eq!(
        server.count(),
        4,
        "one request per cooldown, then the token"
    );
    assert!(
        waited >= Duration::from_millis(550) && waited < Duration::from_secs(3),
        "three cooldowns of 200 ms: {waited:?}"
    );
    assert_eq!(
        cache.retry_at(),
        None,
        "no failure remembered once a token came"
    );

    let refused = TestServer::always(Reply::json(
        401,
        r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.","error_codes":[7000215]}"#,
    ))
    .await;
    let cache = cache_with(refused.token_url(), CacheOptions::default());
    let e = smtp2oauth_tokens::wait_for_token(&cache).await.unwrap_err();
    assert_eq!(e.kind, TokenErrorKind::Configuration);
    assert_eq!(refused.count(), 1);
}

#[tokio::test]
async fn invalidate_drops_only_the_current_token() {
    let server = TestServer::start(|n| Reply::token(&format!("at-{n}"), 3600)).await;
    let cache = cache(&server);
    let first = cache.token().await.unwrap();
    cache.invalidate(&first);
    let second = cache.token().await.unwrap();
    assert_ne!(second.id(), first.id());
    assert_eq!(second.secret(), "at-1");
    assert_eq!(server.count(), 2);

    // A late report about the old token must not throw away the new one.
    cache.invalidate(&first);
    assert_eq!(cache.token().await.unwrap().id(), second.id());
    assert_eq!(server.count(), 2);
}

#[tokio::test]
async fn expiry_counts_from_when_the_request_was_sent() {
    let server =
        TestServer::always(Reply::token("at", 3600).delayed(Duration::from_millis(600))).await;
    let cache = cache(&server);
    let before = SystemTime::now();
    let token = cache.token().await.unwrap();
    let after = SystemTime::now();
    assert!(after.duration_since(before).unwrap() >= Duration::from_millis(600));
    assert!(token.obtained_at().duration_since(before).unwrap() < Duration::from_millis(300));
    assert_eq!(
        token
            .expires_at()
            .duration_since(token.obtained_at())
            .unwrap(),
        Duration::from_secs(3600)
    );
    assert_eq!(cache.status().last_refresh, Some(token.obtained_at()));
}

#[tokio::test]
async fn older_response_shapes_are_accepted() {
    let server = TestServer::sequence(vec![
        Reply::json(
            200,
            r#"{"token_type":"bearer","expires_in":"3599","access_token":"at-string"}"#,
        ),
        Reply::json(200, r#"{"token_type":"Bearer","access_token":"at-none"}"#),
    ])
    .await;
    let cache = cache(&server);
    let token = cache.token().await.unwrap();
    assert_eq!(
        token
            .expires_at()
            .duration_since(token.obtained_at())
            .unwrap(),
        Duration::from_secs(3599)
    );
    cache.invalidate(&token);
    let token = cache.token().await.unwrap();
    assert_eq!(token.secret(), "at-none");
    assert_eq!(
        token
            .expires_at()
            .duration_since(token.obtained_at())
            .unwrap(),
        Duration::from_secs(3600)
    );
}

#[tokio::test]
async fn connection_refused_is_transient() {
    let cache = cache_with(closed_port_url().await, CacheOptions::default());
    let error = cache.token().await.unwrap_err();
    assert_eq!(error.kind, TokenErrorKind::Transient);
    assert_eq!(error.http_status, None);
    assert!(error.description.contains("could not connect"), "{error}");
    assert!(!error.description.contains('\n'));
}

#[tokio::test]
async fn timeout_is_transient() {
    let server =
        TestServer::always(Reply::token("late", 3600).delayed(Duration::from_secs(3))).await;
    let cache = TokenCache::new(
        "slow",
        secret_grant(server.token_url()),
        client(Duration::from_millis(300)),
        CacheOptions::default(),
    );
    let error = cache.token().await.unwrap_err();
    assert_eq!(error.kind, TokenErrorKind::Transient);
    assert!(error.description.contains("timed out"), "{error}");
}

#[tokio::test]
async fn html_error_pages_are_transient_and_short() {
    let page = format!(
        "<!DOCTYPE html><html><head><style>body{{color:red}}</style></head><body>{}</body></html>",
        "Our service is having a bad day. ".repeat(500)
    );
    let server = TestServer::always(Reply::html(503, &page)).await;
    let error = cache(&server).token().await.unwrap_err();
    assert!(error.is_transient());
    assert_eq!(error.http_status, Some(503));
    assert!(error.to_string().len() < 320, "{error}");
    assert!(error.description.contains("Service Unavailable"), "{error}");
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let target = TestServer::always(Reply::token("wrong-place", 3600)).await;
    let server =
        TestServer::always(Reply::html(307, "").header("Location", &target.token_url())).await;
    let error = cache(&server).token().await.unwrap_err();
    assert_eq!(error.kind, TokenErrorKind::Configuration);
    assert_eq!(error.http_status, Some(307));
    assert!(error.advice().unwrap().contains("token URL"));
    assert_eq!(target.count(), 0);
}

#[tokio::test]
async fn oauth_error_with_status_200_is_classified() {
    let server = TestServer::always(Reply::json(
        200,
        r#"{"error":"invalid_scope","error_description":"AADSTS70011: The provided value for the input parameter 'scope' is not valid."}"#,
    ))
    .await;
    let error = cache(&server).token().await.unwrap_err();
    assert_eq!(error.kind, TokenErrorKind::Configuration);
    assert_eq!(error.oauth_error.as_deref(), Some("invalid_scope"));
    assert_eq!(error.aadsts, Some(70011));
}

#[tokio::test]
async fn invalid_token_url_is_a_configuration_error() {
    let cache = cache_with("not a url".to_owned(), CacheOptions::default());
    let error = cache.token().await.unwrap_err();
    assert_eq!(error.kind, TokenErrorKind::Configuration);
}

#[tokio::test]
async fn secrets_stay_out_of_debug_display_and_logs() {
    let capture = LogCapture::default();
    let _guard = tracing::dispatcher::set_default(&tracing::Dispatch::new(capture.clone()));

    const ACCESS_TOKEN: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.access-token-body.sig";
    // The endpoint echoes the secret back in its error, and then succeeds.
    let echo = format!(
        r#"{{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided: '{CLIENT_SECRET}'.","error_codes":[7000215]}}"#
    );
    let server = TestServer::sequence(vec![
        Reply::json(401, &echo),
        Reply::token(ACCESS_TOKEN, 3600),
    ])
    .await;
    let cache = cache_with(
        server.token_url(),
        CacheOptions {
            failure_cooldown: Duration::ZERO,
            ..CacheOptions::default()
        },
    );
    let error = cache.token().await.unwrap_err();
    let token = cache.token().await.unwrap();
    cache.invalidate(&token);

    // Certificate flow: the assertion is as sensitive as a secret.
    let credential = ClientCredential::Certificate(
        CertificateCredential::from_pem_files(
            &fixture("cert.pem"),
            &fixture("key.pem"),
            JwtAlg::Ps256,
        )
        .unwrap(),
    );
    let cert_server = TestServer::always(Reply::json(
        401,
        r#"{"error":"invalid_client","error_description":"AADSTS700027: Client assertion failed signature validation."}"#,
    ))
    .await;
    let cert_grant = ClientCredentialsGrant {
        token_url: cert_server.token_url(),
        client_id: "client-abc".to_owned(),
        credential: credential.clone(),
        scope: SCOPE.to_owned(),
    };
    let cert_cache = TokenCache::new(
        "cert-account",
        cert_grant.clone(),
        client(Duration::from_secs(10)),
        CacheOptions::default(),
    );
    let cert_error = cert_cache.token().await.unwrap_err();
    let assertion = cert_server.requests()[0].form()["client_assertion"].clone();
    assert!(assertion.len() > 100);

    let secret_credential = ClientCredential::Secret(Secret::from(CLIENT_SECRET));
    let shown = [
        format!("{secret_credential:?}"),
        format!("{credential:?}"),
        format!("{:?}", secret_grant(server.token_url())),
        format!("{cert_grant:?}"),
        format!("{cache:?}"),
        format!("{token:?}"),
        format!("{error:?}"),
        format!("{error}"),
        format!("{cert_error:?}"),
        format!("{cert_error}"),
        format!("{:?}", cache.status()),
        capture.text(),
    ];
    let signature = assertion.rsplit('.').next().unwrap();
    for text in &shown {
        assert!(!text.contains(CLIENT_SECRET), "secret leaked: {text}");
        assert!(!text.contains(ACCESS_TOKEN), "token leaked: {text}");
        assert!(!text.contains("access-token-body"), "token leaked: {text}");
        assert!(!text.contains(signature), "assertion leaked: {text}");
    }

    // And the logs do say what happened.
    let logs = capture.lines();
    assert!(
        logs.iter()
            .any(|line| line.starts_with("INFO smtp2oauth_tokens::cache")
                && line.contains("obtained access token")
                && line.contains("scanner@contoso.example")
                && line.contains("expires_in_secs=3600")),
        "{logs:#?}"
    );
    assert!(
        logs.iter()
            .any(|line| line.starts_with("WARN smtp2oauth_tokens::cache")
                && line.contains("AADSTS7000215")
                && line.contains("Configuration")),
        "{logs:#?}"
    );
    assert!(
        logs.iter()
            .any(|line| line.starts_with("WARN") && line.contains("AADSTS700027")),
        "{logs:#?}"
    );
}

#[tokio::test]
async fn access_tokens_can_be_made_by_other_sources() {
    // Other crates build test doubles of TokenSource; the constructor must be public.
    let now = SystemTime::now();
    let token = AccessToken::new(Secret::from("fake"), now, now + Duration::from_secs(60), 9);
    assert_eq!((token.secret(), token.id()), ("fake", 9));
}

#[tokio::test]
async fn https_trusts_the_extra_ca_file() {
    let url = https_server(Reply::token("at-tls", 3600));
    let trusting = http_client(&HttpOptions {
        ca_file: Some(fixture("tls-ca.pem")),
        ..HttpOptions::default()
    })
    .unwrap();
    let cache = TokenCache::new(
        "tls",
        secret_grant(url.clone()),
        trusting,
        CacheOptions::default(),
    );
    assert_eq!(cache.token().await.unwrap().secret(), "at-tls");

    // Without the CA file the private CA is unknown; the error says what to do about it.
    let cache = TokenCache::new(
        "tls",
        secret_grant(url),
        client(Duration::from_secs(10)),
        CacheOptions::default(),
    );
    let error = cache.token().await.unwrap_err();
    assert_eq!(error.kind, TokenErrorKind::Configuration, "{error}");
    assert!(error.description.contains("not trusted"), "{error}");
}

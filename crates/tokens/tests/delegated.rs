//! Delegated sign-ins against a scripted token endpoint: the authorization-code flow with PKCE
//! and its state checks, device-code polling with `slow_down`, and the refresh-token grant
//! keeping the encrypted store current (rotation, sign-in needed, a new sign-in taking over).
//! What reaches the logs is checked end to end against the real binary (tests/e2e/signin.rs),
//! where the subscriber is process-wide.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smtp2oauth_tokens::pkce::challenge_for;
use smtp2oauth_tokens::{
    CacheOptions, CallbackParams, DelegatedClient, DelegatedFlow, HttpOptions, MasterKey,
    PollEvent, ProviderKind, Secret, SignInError, SignInManager, SignInTarget, StoredRefreshGrant,
    StoredToken, TokenCache, TokenErrorKind, TokenSource, TokenStore, http_client,
};
use support::{Reply, TestServer};

const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
const SCOPE: &str = "https://outlook.office.com/SMTP.Send offline_access";

fn http() -> reqwest::Client {
    http_client(&HttpOptions {
        timeout: Duration::from_secs(10),
        ..HttpOptions::default()
    })
    .unwrap()
}

fn client(server: &TestServer, flow: DelegatedFlow) -> DelegatedClient {
    DelegatedClient {
        provider: ProviderKind::Microsoft,
        flow,
        client_id: CLIENT_ID.into(),
        credential: None,
        scope: SCOPE.into(),
        authorize_url: Some(format!(
            "{}/contoso.example/oauth2/v2.0/authorize",
            server.base_url
        )),
        token_url: server.token_url(),
        device_code_url: Some(format!(
            "{}/contoso.example/oauth2/v2.0/devicecode",
            server.base_url
        )),
        redirect_uri: "http://localhost:8025/oauth/callback".into(),
    }
}

fn delegated_token(access: &str, refresh: &str) -> Reply {
    Reply::json(
        200,
        &format!(
            r#"{{"token_type":"Bearer","scope":"https://outlook.office.com/SMTP.Send","expires_in":3600,"ext_expires_in":3600,"access_token":"{access}","refresh_token":"{refresh}"}}"#
        ),
    )
}

fn oauth_error(status: u16, error: &str, code: u32, text: &str) -> Reply {
    Reply::json(
        status,
        &format!(
            r#"{{"error":"{error}","error_description":"AADSTS{code}: {text}","error_codes":[{code}]}}"#
        ),
    )
}

struct Env {
    _dir: tempfile::TempDir,
    store: Arc<TokenStore>,
}

async fn store() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = TokenStore::open(&dir.path().join("tokens"), &MasterKey::generate())
        .await
        .unwrap();
    Env {
        _dir: dir,
        store: Arc::new(store),
    }
}

async fn signed_in(store: &TokenStore, refresh: &str) {
    let refresh = refresh.to_owned();
    store
        .update("scanner", move |_| {
            Some(StoredToken {
                refresh_token: Some(Secret::from(refresh)),
                client_id: CLIENT_ID.into(),
                flow: "device_code".into(),
                ..StoredToken::default()
            })
        })
        .await
        .unwrap();
}

/// [`signed_in`] from code that is not async (a fake endpoint's handler), as another process
/// would: on a thread of its own.
fn signed_in_elsewhere(store: &Arc<TokenStore>, refresh: &str) {
    let (store, refresh) = (store.clone(), refresh.to_owned());
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(signed_in(&store, &refresh));
    })
    .join()
    .unwrap();
}

fn manager(server: &TestServer, flow: DelegatedFlow, store: &Arc<TokenStore>) -> SignInManager {
    SignInManager::new(vec![SignInTarget {
        account: "scanner".into(),
        client: client(server, flow),
        http: http(),
        store: store.clone(),
    }])
}

fn query(url: &str) -> HashMap<String, String> {
    reqwest::Url::parse(url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

#[tokio::test]
async fn authorization_code_with_pkce_stores_the_refresh_token() {
    let server = TestServer::always(delegated_token("at-1", "rt-from-code")).await;
    let env = store().await;
    let manager = manager(&server, DelegatedFlow::AuthorizationCode, &env.store);
    let told = Arc::new(Mutex::new(Vec::new()));
    {
        let told = told.clone();
        manager.on_signed_in(move |a| {
            told.lock().unwrap().push(a);
            async {}
        });
    }

    let url = manager.begin_authorization("scanner", "session-A").unwrap();
    let q = query(&url);
    assert!(url.starts_with(&format!(
        "{}/contoso.example/oauth2/v2.0/authorize?",
        server.base_url
    )));
    assert_eq!(q["code_challenge_method"], "S256");
    let account = manager
        .complete_authorization(
            CallbackParams {
                state: Some(q["state"].clone()),
                code: Some(Secret::from("the-code")),
                ..CallbackParams::default()
            },
            "session-A",
        )
        .await
        .unwrap();
    assert_eq!(account, "scanner");

    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let form = requests[0].form();
    assert_eq!(form["grant_type"], "authorization_code");
    assert_eq!(form["code"], "the-code");
    assert_eq!(form["redirect_uri"], "http://localhost:8025/oauth/callback");
    assert_eq!(form["client_id"], CLIENT_ID);
    assert!(
        !form.contains_key("client_secret"),
        "public client: no secret"
    );
    // The verifier sent now is the one whose hash went out with the authorization request.
    assert_eq!(challenge_for(&form["code_verifier"]), q["code_challenge"]);
    assert!(!url.contains(&form["code_verifier"]));

    let stored = env.store.load("scanner").await.unwrap().unwrap();
    assert_eq!(stored.refresh_token.unwrap().expose(), "rt-from-code");
    assert_eq!(stored.flow, "authorization_code");
    assert!(stored.signed_in_at.is_some() && !stored.sign_in_required);
    assert_eq!(*told.lock().unwrap(), vec!["scanner".to_string()]);

    // The state was single-use.
    let again = manager
        .complete_authorization(
            CallbackParams {
                state: Some(q["state"].clone()),
                code: Some(Secret::from("the-code")),
                ..CallbackParams::default()
            },
            "session-A",
        )
        .await;
    assert!(matches!(again, Err(SignInError::UnknownState)), "{again:?}");
    assert_eq!(server.count(), 1);
}

#[tokio::test]
async fn callbacks_that_do_not_belong_are_refused_before_any_request() {
    let server = TestServer::always(delegated_token("at", "rt")).await;
    let env = store().await;
    let manager = manager(&server, DelegatedFlow::AuthorizationCode, &env.store);
    let code = || Some(Secret::from("c"));

    for state in [None, Some("forged".to_string())] {
        let r = manager
            .complete_authorization(
                CallbackParams {
                    state,
                    code: code(),
                    ..CallbackParams::default()
                },
                "s",
            )
            .await;
        assert!(matches!(r, Err(SignInError::UnknownState)), "{r:?}");
    }

    // Another browser session presenting a real state: refused, and the state is used up.
    let state = query(&manager.begin_authorization("scanner", "victim").unwrap())["state"].clone();
    let r = manager
        .complete_authorization(
            CallbackParams {
                state: Some(state.clone()),
                code: code(),
                ..CallbackParams::default()
            },
            "attacker",
        )
        .await;
    assert!(matches!(r, Err(SignInError::WrongSession)), "{r:?}");
    let r = manager
        .complete_authorization(
            CallbackParams {
                state: Some(state),
                code: code(),
                ..CallbackParams::default()
            },
            "victim",
        )
        .await;
    assert!(matches!(r, Err(SignInError::UnknownState)), "{r:?}");

    // The provider's own error, in words.
    let state = query(&manager.begin_authorization("scanner", "s").unwrap())["state"].clone();
    let r = manager
        .complete_authorization(
            CallbackParams {
                state: Some(state),
                error: Some("access_denied".into()),
                error_description: Some(
                    "AADSTS65004: User declined to consent.\r\nTrace ID: x".into(),
                ),
                ..CallbackParams::default()
            },
            "s",
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        r.contains("cancelled") && r.contains("AADSTS65004: User declined to consent."),
        "{r}"
    );
    assert!(!r.contains("Trace"), "{r}");

    assert_eq!(server.count(), 0, "nothing was redeemed");
    assert!(env.store.load("scanner").await.unwrap().is_none());
    assert!(matches!(
        manager.begin_authorization("printer", "s"),
        Err(SignInError::UnknownAccount(_))
    ));
}

#[tokio::test]
async fn a_response_without_refresh_token_is_an_error_with_advice() {
    let server = TestServer::always(Reply::token("at-only", 3600)).await;
    let env = store().await;
    let manager = manager(&server, DelegatedFlow::AuthorizationCode, &env.store);
    let state = query(&manager.begin_authorization("scanner", "s").unwrap())["state"].clone();
    let e = manager
        .complete_authorization(
            CallbackParams {
                state: Some(state),
                code: Some(Secret::from("c")),
                ..CallbackParams::default()
            },
            "s",
        )
        .await
        .unwrap_err();
    assert!(matches!(e, SignInError::NoRefreshToken(_)), "{e}");
    assert!(e.to_string().contains("offline_access"), "{e}");
    assert!(env.store.load("scanner").await.unwrap().is_none());
}

#[tokio::test]
async fn device_code_polling_honours_interval_and_slow_down() {
    let server = TestServer::sequence(vec![
        Reply::json(
            200,
            r#"{"user_code":"FAKE-CODE","device_code":"DC-very-secret","verification_uri":"https://microsoft.com/devicelogin","expires_in":120,"interval":1,"message":"To sign in, open https://microsoft.com/devicelogin and enter FAKE-CODE"}"#,
        ),
        oauth_error(400, "authorization_pending", 70016, "OAuth 2.0 device flow error. Authorization is pending."),
        Reply::html(503, "<title>Service Unavailable</title>"),
        oauth_error(400, "slow_down", 70016, "Polling too fast."),
        delegated_token("at-device", "rt-device"),
    ])
    .await;
    let env = store().await;
    let manager = manager(&server, DelegatedFlow::DeviceCode, &env.store);
    let device = manager.start_device_login("scanner", "test").await.unwrap();
    assert_eq!(device.user_code, "FAKE-CODE");
    let prompt = env.store.login_prompt("scanner").await.unwrap();
    assert_eq!(prompt.user_code, "FAKE-CODE");
    let mut events = Vec::new();
    manager
        .finish_device_login("scanner", &device, &mut |e| {
            events.push(match e {
                PollEvent::Pending => "pending".to_string(),
                PollEvent::SlowDown { interval } => format!("slow_down {}", interval.as_secs()),
                PollEvent::Retrying(_) => "retrying".to_string(),
            })
        })
        .await
        .unwrap();
    assert_eq!(events, ["pending", "retrying", "slow_down 6"]);

    let requests = server.requests();
    assert_eq!(requests.len(), 5);
    assert!(
        requests[0].path.ends_with("/devicecode"),
        "{}",
        requests[0].path
    );
    assert_eq!(requests[0].form()["scope"], SCOPE);
    for r in &requests[1..] {
        let form = r.form();
        assert_eq!(
            form["grant_type"],
            "urn:ietf:params:oauth:grant-type:device_code"
        );
        assert_eq!(form["device_code"], "DC-very-secret");
    }
    let gap = |i: usize| requests[i].received - requests[i - 1].received;
    for i in 1..=3 {
        assert!(gap(i) >= Duration::from_millis(950), "{i}: {:?}", gap(i));
    }
    // After slow_down the interval is 1 + 5 seconds.
    assert!(gap(4) >= Duration::from_millis(5900), "{:?}", gap(4));

    let stored = env.store.load("scanner").await.unwrap().unwrap();
    assert_eq!(stored.refresh_token.unwrap().expose(), "rt-device");
    assert_eq!(stored.flow, "device_code");
    assert!(
        env.store.login_prompt("scanner").await.is_none(),
        "the prompt is cleared"
    );
}

#[tokio::test]
async fn device_code_declined_or_expired_ends_the_wait() {
    let server = TestServer::sequence(vec![
        Reply::json(
            200,
            r#"{"user_code":"C","device_code":"D","verification_uri":"https://microsoft.com/devicelogin","expires_in":60,"interval":1}"#,
        ),
        oauth_error(400, "authorization_declined", 70016, "The user declined."),
    ])
    .await;
    let env = store().await;
    let manager = manager(&server, DelegatedFlow::DeviceCode, &env.store);
    let device = manager.start_device_login("scanner", "test").await.unwrap();
    let e = manager
        .finish_device_login("scanner", &device, &mut |_| {})
        .await
        .unwrap_err();
    assert!(e.to_string().contains("declined"), "{e}");
    assert!(env.store.load("scanner").await.unwrap().is_none());
    assert!(env.store.login_prompt("scanner").await.is_none());

    let e = manager.begin_authorization("scanner", "s").unwrap_err();
    assert!(matches!(e, SignInError::WrongFlow { .. }), "{e}");
}

async fn refresh_cache(server: &TestServer, store: &Arc<TokenStore>) -> TokenCache {
    let grant = StoredRefreshGrant::new(
        "scanner",
        client(server, DelegatedFlow::DeviceCode),
        store.clone(),
    )
    .await
    .unwrap();
    TokenCache::with_grant(
        "scanner",
        Box::new(grant),
        http(),
        CacheOptions {
            failure_cooldown: Duration::ZERO,
            ..CacheOptions::default()
        },
    )
}

#[tokio::test]
async fn refresh_rotates_and_persists_the_refresh_token() {
    let n = Arc::new(AtomicUsize::new(0));
    let server = {
        let n = n.clone();
        TestServer::start(move |_| {
            let i = n.fetch_add(1, Ordering::SeqCst) + 1;
            delegated_token(&format!("at-{i}"), &format!("rt-{}", i + 1))
        })
        .await
    };
    let env = store().await;
    signed_in(&env.store, "rt-1").await;
    let cache = refresh_cache(&server, &env.store).await;
    assert!(!cache.status().sign_in_required);

    let first = cache.token().await.unwrap();
    assert_eq!(first.secret(), "at-1");
    let stored = env.store.load("scanner").await.unwrap().unwrap();
    assert_eq!(stored.refresh_token.as_ref().unwrap().expose(), "rt-2");
    assert!(stored.last_refresh.is_some());
    assert_eq!(stored.generation, 2);

    cache.invalidate(&first);
    assert_eq!(cache.token().await.unwrap().secret(), "at-2");
    let forms: Vec<_> = server.requests().iter().map(|r| r.form()).collect();
    assert_eq!(forms[0]["grant_type"], "refresh_token");
    assert_eq!(forms[0]["refresh_token"], "rt-1");
    assert_eq!(forms[0]["scope"], SCOPE);
    assert_eq!(
        forms[1]["refresh_token"], "rt-2",
        "the rotated token is used next"
    );
    assert_eq!(
        env.store
            .load("scanner")
            .await
            .unwrap()
            .unwrap()
            .refresh_token
            .unwrap()
            .expose(),
        "rt-3"
    );

    // A fresh cache over the same store (a restart) continues with the latest token.
    let restarted = refresh_cache(&server, &env.store).await;
    restarted.token().await.unwrap();
    assert_eq!(server.requests()[2].form()["refresh_token"], "rt-3");
}

#[tokio::test]
async fn invalid_grant_means_sign_in_needed_until_someone_signs_in() {
    let answers = Arc::new(Mutex::new(vec![oauth_error(
        400,
        "invalid_grant",
        50173,
        "The provided grant has expired due to it being revoked.",
    )]));
    let server = {
        let answers = answers.clone();
        TestServer::start(move |_| {
            let mut a = answers.lock().unwrap();
            if a.len() > 1 {
                a.remove(0)
            } else {
                a[0].clone()
            }
        })
        .await
    };
    let env = store().await;
    signed_in(&env.store, "rt-revoked").await;
    let cache = refresh_cache(&server, &env.store).await;
    let e = cache.token().await.unwrap_err();
    assert_eq!(e.kind, TokenErrorKind::SignInRequired);
    assert_eq!(e.aadsts, Some(50173));
    assert!(cache.status().sign_in_required);
    let stored = env.store.load("scanner").await.unwrap().unwrap();
    assert!(stored.sign_in_required);
    assert!(
        stored
            .last_error
            .as_deref()
            .unwrap()
            .contains("AADSTS50173")
    );

    // No more requests while nobody has signed in again, however often mail asks.
    for _ in 0..3 {
        let e = cache.token().await.unwrap_err();
        assert_eq!(e.kind, TokenErrorKind::SignInRequired);
        assert!(e.to_string().contains("revoked"), "{e}");
    }
    assert_eq!(server.count(), 1);
    let status = cache.status();
    assert_eq!(
        (status.requests, status.failures),
        (1, 1),
        "one request, refused"
    );

    // A restart does not forget it.
    assert!(
        refresh_cache(&server, &env.store)
            .await
            .status()
            .sign_in_required
    );

    // Someone signs in (another process writes the store); the cache is told.
    *answers.lock().unwrap() = vec![delegated_token("at-new", "rt-newer")];
    signed_in(&env.store, "rt-new").await;
    cache.credentials_changed();
    assert!(
        !cache.status().sign_in_required,
        "known at once, before any request"
    );
    assert_eq!(cache.token().await.unwrap().secret(), "at-new");
    assert!(!cache.status().sign_in_required);
    assert_eq!(server.requests()[1].form()["refresh_token"], "rt-new");
}

#[tokio::test]
async fn a_refresh_never_overwrites_a_newer_sign_in() {
    let env = store().await;
    signed_in(&env.store, "rt-old").await;
    let store = env.store.clone();
    // The endpoint answers slowly; meanwhile someone signs in again.
    let server = TestServer::start(move |_| {
        signed_in_elsewhere(&store, "rt-from-new-sign-in");
        delegated_token("at", "rt-rotated-from-old")
    })
    .await;
    let cache = refresh_cache(&server, &env.store).await;
    cache.token().await.unwrap();
    assert_eq!(
        env.store
            .load("scanner")
            .await
            .unwrap()
            .unwrap()
            .refresh_token
            .unwrap()
            .expose(),
        "rt-from-new-sign-in"
    );
}

#[tokio::test]
async fn nobody_signed_in_yet_is_sign_in_needed_without_a_request() {
    let server = TestServer::always(delegated_token("at", "rt")).await;
    let env = store().await;
    let cache = refresh_cache(&server, &env.store).await;
    assert!(cache.status().sign_in_required);
    let e = cache.token().await.unwrap_err();
    assert_eq!(e.kind, TokenErrorKind::SignInRequired);
    assert!(e.to_string().contains("nobody has signed in"), "{e}");
    assert_eq!(server.count(), 0);
    // Nor is one counted (the metric token_refreshes_total says what the endpoint was asked).
    let status = cache.status();
    assert_eq!((status.requests, status.failures), (0, 0));
}

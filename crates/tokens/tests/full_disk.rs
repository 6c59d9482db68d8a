//! A delegated account's token file on a real filesystem that runs full (a small tmpfs): the
//! rotated refresh token cannot be written, and the sign-in already stored stays whole and
//! usable (Microsoft keeps earlier refresh tokens valid until they expire), mail keeps its
//! access token, and the next refresh after space returns stores the rotation again.

#![allow(clippy::unwrap_used)]

mod support;

use smtp2oauth_testkit::Tmpfs;
use smtp2oauth_tokens::{
    CacheOptions, DelegatedClient, DelegatedFlow, HttpOptions, MasterKey, ProviderKind, Secret,
    StoredRefreshGrant, StoredToken, TokenCache, TokenSource, TokenStore, http_client,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::{Reply, TestServer};

const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
const SCOPE: &str = "https://outlook.office.com/SMTP.Send offline_access";

fn client(server: &TestServer) -> DelegatedClient {
    DelegatedClient {
        provider: ProviderKind::Microsoft,
        flow: DelegatedFlow::DeviceCode,
        client_id: CLIENT_ID.into(),
        credential: None,
        scope: SCOPE.into(),
        authorize_url: None,
        token_url: server.token_url(),
        device_code_url: Some(format!(
            "{}/contoso.example/oauth2/v2.0/devicecode",
            server.base_url
        )),
        redirect_uri: "http://localhost:8025/oauth/callback".into(),
    }
}

async fn cache(server: &TestServer, store: &Arc<TokenStore>) -> TokenCache {
    let grant = StoredRefreshGrant::new("scanner", client(server), store.clone())
        .await
        .unwrap();
    let http = http_client(&HttpOptions {
        timeout: Duration::from_secs(10),
        ..HttpOptions::default()
    })
    .unwrap();
    TokenCache::with_grant(
        "scanner",
        Box::new(grant),
        http,
        CacheOptions {
            failure_cooldown: Duration::ZERO,
            ..CacheOptions::default()
        },
    )
}

async fn stored_refresh_token(store: &TokenStore) -> String {
    store
        .load("scanner")
        .await
        .unwrap()
        .unwrap()
        .refresh_token
        .unwrap()
        .expose()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_while_the_rotated_token_is_written_keeps_the_old_sign_in() {
    let Some(fs) = Tmpfs::mount_or_skip("256k", "token store full-disk test") else {
        return;
    };
    // Each refresh answers a new access token and rotates the refresh token; every refresh
    // token stays valid (Microsoft's behaviour).
    let n = Arc::new(AtomicUsize::new(0));
    let server = {
        let n = n.clone();
        TestServer::start(move |_| {
            let i = n.fetch_add(1, Ordering::SeqCst) + 1;
            Reply::json(
                200,
                &format!(
                    r#"{{"token_type":"Bearer","scope":"https://outlook.office.com/SMTP.Send","expires_in":3600,"access_token":"at-{i}","refresh_token":"rt-{}"}}"#,
                    i + 1
                ),
            )
        })
        .await
    };
    let dir = fs.path().join("tokens");
    let store = Arc::new(
        TokenStore::open(&dir, &MasterKey::generate())
            .await
            .unwrap(),
    );
    store
        .update("scanner", |_| {
            Some(StoredToken {
                refresh_token: Some(Secret::from("rt-1")),
                client_id: CLIENT_ID.into(),
                flow: "device_code".into(),
                ..StoredToken::default()
            })
        })
        .await
        .unwrap();
    let files_before: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();

    fs.fill("filler");
    let tokens = cache(&server, &store).await;
    // The refresh itself works: mail gets its access token although the rotation is lost.
    assert_eq!(tokens.token().await.unwrap().secret(), "at-1");
    assert_eq!(server.requests()[0].form()["refresh_token"], "rt-1");
    // The stored sign-in is the old one, whole: it opens with the key, and nothing
    // half-written (no temporary file) is left beside it.
    assert_eq!(stored_refresh_token(&store).await, "rt-1");
    let files_now: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files_now, files_before);
    // A restart on the full disk signs in with the stored token, and it is still accepted.
    let restarted = cache(&server, &store).await;
    assert!(!restarted.status().sign_in_required);
    assert_eq!(restarted.token().await.unwrap().secret(), "at-2");
    assert_eq!(server.requests()[1].form()["refresh_token"], "rt-1");

    // Space comes back: the next refresh stores its rotation, without a restart.
    std::fs::remove_file(fs.path().join("filler")).unwrap();
    let t = restarted.token().await.unwrap();
    restarted.invalidate(&t);
    assert_eq!(restarted.token().await.unwrap().secret(), "at-3");
    assert_eq!(stored_refresh_token(&store).await, "rt-4");
    drop(fs);
}

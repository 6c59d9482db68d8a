//! The fake's delegated endpoints over real HTTP (curl for the browser side): redirect URI
//! matching, PKCE, single-use codes, refresh-token rotation and revocation, device-code polling
//! with slow_down, public versus confidential clients.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use smtp2oauth_testkit::{DeviceStatus, FakeIdp, IdpConfig, idp::REVOKED};

use crate::client::{form, http_post};

const REDIRECT: &str = "http://localhost:8025/oauth/callback";
const SCOPE: &str = "https://outlook.office.com/SMTP.Send offline_access";
const FORM: &str = "application/x-www-form-urlencoded";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

async fn idp(public: bool) -> FakeIdp {
    FakeIdp::start(IdpConfig {
        redirect_uris: vec![REDIRECT.into()],
        public_client: public,
        device_interval: Duration::from_secs(1),
        ..IdpConfig::default()
    })
    .await
}

/// GET with curl, not following redirects: (status, Location, body).
async fn get(url: &str) -> (u16, Option<String>, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-D", "-", url])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let location = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("location: ")
                .or_else(|| l.strip_prefix("Location: "))
        })
        .map(|l| l.trim().to_string());
    (status, location, body.to_string())
}

fn query(url: &str) -> HashMap<String, String> {
    let q = url.split_once('?').map_or("", |(_, q)| q);
    q.split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| {
            let v = v.replace('+', " ");
            let mut out = Vec::new();
            let b = v.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'%' {
                    out.push(u8::from_str_radix(&v[i + 1..i + 3], 16).unwrap());
                    i += 3;
                } else {
                    out.push(b[i]);
                    i += 1;
                }
            }
            (k.to_string(), String::from_utf8(out).unwrap())
        })
        .collect()
}

fn authorize_url(idp: &FakeIdp, redirect: &str, pkce: bool) -> String {
    let mut q = vec![
        ("client_id", idp.client_id()),
        ("response_type", "code".into()),
        ("redirect_uri", redirect.into()),
        ("scope", SCOPE.into()),
        ("state", "st-123".into()),
    ];
    if pkce {
        q.push(("code_challenge", CHALLENGE.into()));
        q.push(("code_challenge_method", "S256".into()));
    }
    let pairs: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
    format!("{}?{}", idp.authorize_url(), form(&pairs))
}

async fn token(idp: &FakeIdp, pairs: &[(&str, &str)]) -> (u16, Value) {
    let path = format!("/{}/oauth2/v2.0/token", idp.tenant());
    let (status, _, body) = http_post(idp.addr(), &path, FORM, &form(pairs)).await;
    (status, serde_json::from_str(&body).unwrap())
}

#[tokio::test]
async fn authorization_code_with_pkce_is_single_use() {
    let idp = idp(true).await;
    let (status, location, _) = get(&authorize_url(&idp, REDIRECT, true)).await;
    assert_eq!(status, 302);
    let location = location.unwrap();
    assert!(
        location.starts_with(&format!("{REDIRECT}?code=")),
        "{location}"
    );
    let q = query(&location);
    assert_eq!(q["state"], "st-123");
    let code = q["code"].clone();
    let client_id = idp.client_id();
    let redeem = |verifier: &'static str| {
        let code = code.clone();
        let client_id = client_id.clone();
        let idp = idp.clone();
        async move {
            token(
                &idp,
                &[
                    ("grant_type", "authorization_code"),
                    ("client_id", &client_id),
                    ("code", &code),
                    ("redirect_uri", REDIRECT),
                    ("code_verifier", verifier),
                ],
            )
            .await
        }
    };
    let (status, v) = redeem("wrong-verifier-wrong-verifier-wrong-verifier").await;
    assert_eq!(
        (status, v["error_codes"][0].as_u64()),
        (400, Some(501481)),
        "{v}"
    );
    let (status, v) = redeem(VERIFIER).await;
    assert_eq!(status, 200, "{v}");
    assert!(v["refresh_token"].as_str().is_some_and(|t| t.len() > 40));
    assert!(idp.validate(v["access_token"].as_str().unwrap()).is_ok());
    assert_eq!(v["scope"], "https://outlook.office.com/SMTP.Send");
    let (status, v) = redeem(VERIFIER).await;
    assert_eq!(
        (status, v["error_codes"][0].as_u64()),
        (400, Some(54005)),
        "{v}"
    );
}

#[tokio::test]
async fn authorize_refuses_unregistered_redirects_and_missing_pkce() {
    let idp = idp(true).await;
    // A trailing slash is a different URI: an error page, and no redirect anywhere.
    let (status, location, body) = get(&authorize_url(&idp, &format!("{REDIRECT}/"), true)).await;
    assert_eq!((status, location), (400, None));
    assert!(body.contains("AADSTS50011"), "{body}");

    let (status, location, _) = get(&authorize_url(&idp, REDIRECT, false)).await;
    assert_eq!(status, 302);
    let q = query(&location.unwrap());
    assert_eq!(q["error"], "invalid_request");
    assert!(q["error_description"].contains("AADSTS9002325"), "{q:?}");
    assert_eq!(q["state"], "st-123");

    idp.set_authorize_mode(smtp2oauth_testkit::AuthorizeMode::Deny);
    let (_, location, _) = get(&authorize_url(&idp, REDIRECT, true)).await;
    assert_eq!(query(&location.unwrap())["error"], "access_denied");
    assert_eq!(idp.authorize_requests().len(), 3);
}

#[tokio::test]
async fn refresh_tokens_rotate_and_can_be_revoked() {
    let idp = idp(true).await;
    let (_, location, _) = get(&authorize_url(&idp, REDIRECT, true)).await;
    let code = query(&location.unwrap())["code"].clone();
    let client_id = idp.client_id();
    let (_, v) = token(
        &idp,
        &[
            ("grant_type", "authorization_code"),
            ("client_id", &client_id),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ],
    )
    .await;
    let rt1 = v["refresh_token"].as_str().unwrap().to_string();
    let refresh = |rt: String| {
        let idp = idp.clone();
        let client_id = client_id.clone();
        async move {
            token(
                &idp,
                &[
                    ("grant_type", "refresh_token"),
                    ("client_id", &client_id),
                    ("refresh_token", &rt),
                    ("scope", SCOPE),
                ],
            )
            .await
        }
    };
    let (status, v) = refresh(rt1.clone()).await;
    assert_eq!(status, 200, "{v}");
    let rt2 = v["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(rt1, rt2);
    let (status, v) = refresh(rt1.clone()).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("invalid_grant")),
        "{v}"
    );
    assert_eq!(idp.active_refresh_tokens(), vec![rt2.clone()]);
    idp.revoke_refresh_tokens(REVOKED);
    let (status, v) = refresh(rt2.clone()).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"], "invalid_grant");
    assert_eq!(v["error_codes"][0], 50173);
    assert_eq!(idp.refresh_tokens_presented(), vec![rt1.clone(), rt1, rt2]);
}

#[tokio::test]
async fn device_code_pending_slow_down_and_approval() {
    let idp = idp(true).await;
    let path = format!("/{}/oauth2/v2.0/devicecode", idp.tenant());
    let client_id = idp.client_id();
    let (status, _, body) = http_post(
        idp.addr(),
        &path,
        FORM,
        &form(&[("client_id", &client_id), ("scope", SCOPE)]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["interval"], 1);
    assert_eq!(v["verification_uri"], "https://microsoft.com/devicelogin");
    let user_code = v["user_code"].as_str().unwrap().to_string();
    let device_code = v["device_code"].as_str().unwrap().to_string();
    let poll = || {
        let idp = idp.clone();
        let client_id = client_id.clone();
        let device_code = device_code.clone();
        async move {
            token(
                &idp,
                &[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                    ("client_id", &client_id),
                    ("device_code", &device_code),
                ],
            )
            .await
        }
    };
    assert_eq!(poll().await.1["error"], "authorization_pending");
    // Polling again at once is too fast.
    assert_eq!(poll().await.1["error"], "slow_down");
    assert_eq!(
        idp.device_codes(),
        vec![(user_code.clone(), DeviceStatus::Pending)]
    );
    assert!(idp.approve_device(&user_code));
    // The interval is now 1 + 5 s: 2 s later is still too fast, and grows it again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(poll().await.1["error"], "slow_down");
    tokio::time::sleep(Duration::from_millis(11100)).await;
    let (status, v) = poll().await;
    assert_eq!(status, 200, "{v}");
    assert!(v["refresh_token"].is_string());
    assert_eq!(
        idp.device_codes(),
        vec![(user_code, DeviceStatus::Redeemed)]
    );
    assert_eq!(idp.device_polls().len(), 4);
}

#[tokio::test]
async fn public_and_confidential_clients() {
    let public = idp(true).await;
    let secret = IdpConfig::default().client_secret.unwrap();
    let client_id = public.client_id();
    let rt_form = |secret: Option<&str>| {
        let mut f = vec![
            ("grant_type", "refresh_token".to_string()),
            ("client_id", client_id.clone()),
            ("refresh_token", "unknown".to_string()),
        ];
        if let Some(s) = secret {
            f.push(("client_secret", s.to_string()));
        }
        f
    };
    let pairs = |f: &Vec<(&'static str, String)>| -> Vec<(&'static str, String)> { f.clone() };
    let send = |idp: FakeIdp, f: Vec<(&'static str, String)>| async move {
        let p: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
        token(&idp, &p).await
    };
    let (_, v) = send(public.clone(), pairs(&rt_form(Some(&secret)))).await;
    assert_eq!(v["error_codes"][0], 700025, "{v}");
    let (_, v) = send(public.clone(), pairs(&rt_form(None))).await;
    assert_eq!(v["error"], "invalid_grant", "{v}");

    let confidential = idp(false).await;
    let (_, v) = send(confidential.clone(), pairs(&rt_form(None))).await;
    assert_eq!(v["error_codes"][0], 7000218, "{v}");
    let (_, v) = send(confidential, pairs(&rt_form(Some(&secret)))).await;
    assert_eq!(v["error"], "invalid_grant", "{v}");
}

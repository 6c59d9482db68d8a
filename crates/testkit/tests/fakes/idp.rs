//! FakeIdp over real HTTP: success, every refusal the relay must classify, scripted failures,
//! and JWT client assertions signed here with ring (independently of the fake's verifier).

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use smtp2oauth_testkit::{FakeIdp, IdpConfig, IdpFailure, TestPki};

use crate::client::{form, header, http_post, http_post_with};

const SCOPE: &str = "https://outlook.office365.com/.default";
const FORM: &str = "application/x-www-form-urlencoded";

fn path(idp: &FakeIdp) -> String {
    format!("/{}/oauth2/v2.0/token", idp.tenant())
}

async fn post_secret(idp: &FakeIdp, secret: &str) -> (u16, Vec<(String, String)>, Value) {
    let body = form(&[
        ("grant_type", "client_credentials"),
        ("client_id", &idp.client_id()),
        ("client_secret", secret),
        ("scope", SCOPE),
    ]);
    let (status, headers, body) = http_post(idp.addr(), &path(idp), FORM, &body).await;
    (
        status,
        headers,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

fn secret() -> String {
    IdpConfig::default().client_secret.unwrap()
}

fn assert_aad_error(v: &Value, error: &str, code: u64) {
    assert_eq!(v["error"], error, "{v}");
    assert_eq!(v["error_codes"], json!([code]), "{v}");
    let desc = v["error_description"].as_str().unwrap();
    assert!(desc.starts_with(&format!("AADSTS{code}: ")), "{desc}");
    for field in ["timestamp", "trace_id", "correlation_id"] {
        assert!(
            v[field].as_str().is_some_and(|s| !s.is_empty()),
            "{field} missing in {v}"
        );
    }
}

#[tokio::test]
async fn curl_gets_a_token_over_real_http() {
    let idp = FakeIdp::start(IdpConfig::default()).await;
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-X", "POST", "-w", "\n%{http_code}"])
        .args(["--data-urlencode", "grant_type=client_credentials"])
        .args([
            "--data-urlencode",
            &format!("client_id={}", idp.client_id()),
        ])
        .args(["--data-urlencode", &format!("client_secret={}", secret())])
        .args(["--data-urlencode", &format!("scope={SCOPE}")])
        .arg(idp.token_url())
        .output()
        .await
        .expect("curl is installed");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let (body, code) = stdout.rsplit_once('\n').unwrap();
    assert_eq!(code, "200", "{body}");
    assert_eq!(idp.authority(), format!("http://{}", idp.addr()));
    assert_eq!(
        idp.token_url(),
        format!("{}/{}/oauth2/v2.0/token", idp.authority(), idp.tenant())
    );
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 3600);
    assert_eq!(v["ext_expires_in"], 3600);
    let token = v["access_token"].as_str().unwrap();
    assert!(
        token.len() > 1000,
        "realistic token size, got {}",
        token.len()
    );
    let issued = idp.validate(token).unwrap();
    assert_eq!(issued.scope, SCOPE);
    assert_eq!(issued.client_id, idp.client_id());
    assert_eq!(idp.validate("nope"), Err("not_found"));
    assert_eq!(idp.token_requests(), 1);
    assert_eq!(idp.tokens_issued(), 1);
    let f = idp.last_form().unwrap();
    assert_eq!(f["scope"], SCOPE);
    assert_eq!(f["grant_type"], "client_credentials");
}

#[tokio::test]
async fn https_variant_verifies_against_the_test_ca() {
    let pki = TestPki::new();
    let idp = FakeIdp::start_https(IdpConfig::default(), pki.server_config()).await;
    assert!(idp.authority().starts_with("https://127.0.0.1:"));
    assert!(idp.token_url().starts_with("https://"));
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-S", "--cacert"])
        .arg(pki.ca_pem_path())
        .args(["--data-urlencode", "grant_type=client_credentials"])
        .args([
            "--data-urlencode",
            &format!("client_id={}", idp.client_id()),
        ])
        .args(["--data-urlencode", &format!("client_secret={}", secret())])
        .args(["--data-urlencode", &format!("scope={SCOPE}")])
        .arg(idp.token_url())
        .output()
        .await
        .expect("curl is installed");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(idp.validate(v["access_token"].as_str().unwrap()).is_ok());
    // Without the test CA the certificate is not trusted.
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-X", "POST"])
        .arg(idp.token_url())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
}

#[tokio::test]
async fn refusals_use_microsofts_codes_and_shape() {
    let idp = FakeIdp::start(IdpConfig::default()).await;
    let id = idp.client_id();
    let s = secret();

    let (st, h, v) = post_secret(&idp, "wrong").await;
    assert_eq!(st, 401);
    assert!(
        header(&h, "content-type")
            .unwrap()
            .starts_with("application/json")
    );
    assert_aad_error(&v, "invalid_client", 7000215);

    type Case<'a> = (Vec<(&'a str, &'a str)>, u16, &'a str, u64);
    let cases: Vec<Case> = vec![
        (
            vec![
                ("grant_type", "password"),
                ("client_id", &id),
                ("client_secret", &s),
                ("scope", SCOPE),
            ],
            400,
            "unsupported_grant_type",
            70003,
        ),
        (
            vec![("client_id", &id), ("client_secret", &s), ("scope", SCOPE)],
            400,
            "invalid_request",
            900144,
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", "11111111-0000-0000-0000-000000000000"),
                ("client_secret", &s),
                ("scope", SCOPE),
            ],
            400,
            "unauthorized_client",
            700016,
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", &id),
                ("client_secret", &s),
                ("scope", "https://outlook.office365.com/SMTP.Send"),
            ],
            400,
            "invalid_scope",
            1002012,
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", &id),
                ("client_secret", &s),
                ("scope", "openid https://outlook.office365.com/.default"),
            ],
            400,
            "invalid_scope",
            1002012,
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", &id),
                ("scope", SCOPE),
            ],
            401,
            "invalid_client",
            7000216,
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("grant_type", "client_credentials"),
                ("client_id", &id),
                ("client_secret", &s),
                ("scope", SCOPE),
            ],
            400,
            "invalid_request",
            9000411,
        ),
    ];
    for (pairs, status, error, code) in cases {
        let (st, _, body) = http_post(idp.addr(), &path(&idp), FORM, &form(&pairs)).await;
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(st, status, "{pairs:?} -> {v}");
        assert_aad_error(&v, error, code);
    }

    // A JSON body is not a form: the service sees no grant_type.
    let (st, _, body) = http_post(idp.addr(), &path(&idp), "application/json", "{}").await;
    assert_eq!(st, 400);
    assert_aad_error(
        &serde_json::from_str(&body).unwrap(),
        "invalid_request",
        900144,
    );

    // Unknown tenant.
    let ok_form = form(&[
        ("grant_type", "client_credentials"),
        ("client_id", &id),
        ("client_secret", &s),
        ("scope", SCOPE),
    ]);
    let (st, _, body) = http_post(
        idp.addr(),
        "/contoso.example/oauth2/v2.0/token",
        FORM,
        &ok_form,
    )
    .await;
    assert_eq!(st, 400);
    assert_aad_error(
        &serde_json::from_str(&body).unwrap(),
        "invalid_request",
        90002,
    );

    // Tenant comparison is case-insensitive, like Entra ID.
    let upper = format!("/{}/oauth2/v2.0/token", idp.tenant().to_uppercase());
    assert_eq!(http_post(idp.addr(), &upper, FORM, &ok_form).await.0, 200);

    assert_eq!(idp.tokens_issued(), 1);
    assert_eq!(idp.token_requests(), 11);
}

#[tokio::test]
async fn client_secret_basic_is_accepted() {
    let idp = FakeIdp::start(IdpConfig::default()).await;
    let body = form(&[("grant_type", "client_credentials"), ("scope", SCOPE)]);
    let basic = |id: &str, secret: &str| {
        // RFC 6749 2.3.1: form-encode each part, then base64 "id:secret".
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            &form(&[("", id)])[1..],
            &form(&[("", secret)])[1..]
        ));
        format!("Authorization: Basic {b64}\r\n")
    };
    let p = path(&idp);
    let (st, _, b) = http_post_with(
        idp.addr(),
        &p,
        FORM,
        &basic(&idp.client_id(), &secret()),
        &body,
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let (st, _, b) = http_post_with(
        idp.addr(),
        &p,
        FORM,
        &basic(&idp.client_id(), "nope"),
        &body,
    )
    .await;
    assert_eq!(st, 401);
    assert_aad_error(
        &serde_json::from_str(&b).unwrap(),
        "invalid_client",
        7000215,
    );
    // A secret in both places is refused.
    let both = form(&[
        ("grant_type", "client_credentials"),
        ("scope", SCOPE),
        ("client_secret", &secret()),
    ]);
    let (st, _, _) = http_post_with(
        idp.addr(),
        &p,
        FORM,
        &basic(&idp.client_id(), &secret()),
        &both,
    )
    .await;
    assert_eq!(st, 401);
    let (st, _, _) =
        http_post_with(idp.addr(), &p, FORM, "Authorization: Basic !!!\r\n", &body).await;
    assert_eq!(st, 401);
}

#[tokio::test]
async fn scripted_failures() {
    let idp = FakeIdp::start(IdpConfig::default()).await;
    let s = secret();

    idp.set_failure(Some(IdpFailure::Unavailable));
    let (st, h, body) = post_secret(&idp, &s).await;
    assert_eq!(st, 503);
    assert!(header(&h, "content-type").unwrap().starts_with("text/html"));
    assert!(body.as_str().unwrap().contains("Service Unavailable"));

    idp.set_failure(Some(IdpFailure::InvalidClient));
    let (st, _, v) = post_secret(&idp, &s).await;
    assert_eq!(st, 401);
    assert_aad_error(&v, "invalid_client", 7000215);

    idp.set_failure(Some(IdpFailure::Throttled {
        retry_after_secs: 7,
    }));
    let (st, h, _) = post_secret(&idp, &s).await;
    assert_eq!(st, 429);
    assert_eq!(header(&h, "retry-after"), Some("7"));

    idp.set_failure(Some(IdpFailure::Hang));
    let hung = tokio::time::timeout(Duration::from_millis(300), post_secret(&idp, &s)).await;
    assert!(hung.is_err(), "Hang must never answer");

    idp.set_failure(None);
    idp.fail_next(IdpFailure::Unavailable, 1);
    assert_eq!(post_secret(&idp, &s).await.0, 503);
    assert_eq!(post_secret(&idp, &s).await.0, 200);
    assert_eq!(idp.token_requests(), 6);
    assert_eq!(idp.tokens_issued(), 1);

    // Rotated secret: the old one is now refused.
    idp.set_client_secret(Some("new-secret".into()));
    assert_eq!(post_secret(&idp, &s).await.0, 401);
    assert_eq!(post_secret(&idp, "new-secret").await.0, 200);
}

#[tokio::test]
async fn expiry_delay_and_revocation() {
    let idp = FakeIdp::start(IdpConfig {
        response_delay: Duration::from_millis(200),
        ..IdpConfig::default()
    })
    .await;
    idp.set_expires_in(Duration::from_secs(1));
    let t0 = Instant::now();
    let (st, _, v) = post_secret(&idp, &secret()).await;
    assert!(t0.elapsed() >= Duration::from_millis(200));
    assert_eq!(st, 200);
    assert_eq!(v["expires_in"], 1);
    let token = v["access_token"].as_str().unwrap();
    assert!(idp.validate(token).is_ok());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(idp.validate(token), Err("expired"));

    let t = idp.issue_token(SCOPE);
    assert!((idp.validator())(&t.token).is_ok());
    idp.revoke_all();
    assert_eq!((idp.validator())(&t.token), Err("not_found".to_string()));
}

/// Builds a client assertion exactly as the Microsoft docs describe, with ring.
fn assertion(cert_pem: &str, key_pem: &str, alg: &str, claims: &Value) -> String {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    let x5t = URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, der.as_ref()));
    let header = json!({"alg": alg, "typ": "JWT", "x5t#S256": x5t});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let key = ring::signature::RsaKeyPair::from_pkcs8(key.secret_der()).unwrap();
    let enc: &dyn ring::signature::RsaEncoding = if alg == "PS256" {
        &ring::signature::RSA_PSS_SHA256
    } else {
        &ring::signature::RSA_PKCS1_SHA256
    };
    let mut sig = vec![0; key.public().modulus_len()];
    key.sign(
        enc,
        &ring::rand::SystemRandom::new(),
        input.as_bytes(),
        &mut sig,
    )
    .unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn jwt_client_assertions() {
    let pki = TestPki::new();
    let (cert, key) = pki.issue_rsa_credential();
    let (other_cert, other_key) = pki.issue_rsa_credential();
    let idp = FakeIdp::start(IdpConfig {
        client_secret: None,
        client_cert_pem: Some(cert.clone()),
        ..IdpConfig::default()
    })
    .await;
    let id = idp.client_id();
    let claims = |jti: &str| {
        json!({"aud": idp.token_url(), "iss": id, "sub": id, "jti": jti,
               "nbf": now(), "iat": now(), "exp": now() + 600})
    };
    let send = |jwt: String| {
        let idp = idp.clone();
        let id = id.clone();
        async move {
            let body = form(&[
                ("grant_type", "client_credentials"),
                ("client_id", &id),
                ("scope", SCOPE),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", &jwt),
            ]);
            let (st, _, body) = http_post(idp.addr(), &path(&idp), FORM, &body).await;
            (st, serde_json::from_str::<Value>(&body).unwrap())
        }
    };

    for alg in ["PS256", "RS256"] {
        let (st, v) = send(assertion(&cert, &key, alg, &claims(&format!("jti-{alg}")))).await;
        assert_eq!(st, 200, "{alg}: {v}");
        assert!(idp.validate(v["access_token"].as_str().unwrap()).is_ok());
    }

    // Replay of an accepted jti.
    let (st, v) = send(assertion(&cert, &key, "PS256", &claims("jti-PS256"))).await;
    assert_eq!(st, 401);
    assert_aad_error(&v, "invalid_client", 50013);

    // Tampered payload (signature no longer matches).
    let good = assertion(&cert, &key, "PS256", &claims("jti-tamper"));
    let parts: Vec<&str> = good.split('.').collect();
    let mut forged = claims("jti-tamper");
    forged["sub"] = json!("attacker");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(forged.to_string()),
        parts[2]
    );
    let (st, v) = send(tampered).await;
    assert_eq!(st, 401);
    assert_aad_error(&v, "invalid_client", 700027);

    // Signed by another key but claiming the registered certificate's thumbprint.
    let mut wrong_key = assertion(&other_cert, &other_key, "PS256", &claims("jti-wk"));
    let good_header = good.split('.').next().unwrap();
    let rest = wrong_key.split_once('.').unwrap().1.to_string();
    wrong_key = format!("{good_header}.{rest}");
    let (st, v) = send(wrong_key).await;
    assert_eq!(st, 401);
    assert_aad_error(&v, "invalid_client", 700027);

    // An unregistered certificate.
    let (st, v) = send(assertion(
        &other_cert,
        &other_key,
        "PS256",
        &claims("jti-other"),
    ))
    .await;
    assert_eq!(st, 401);
    assert_aad_error(&v, "invalid_client", 700027);

    // Wrong audience, wrong issuer, expired, too long-lived, not yet valid, no jti.
    let mut c = claims("a1");
    c["aud"] = json!("https://login.microsoftonline.com/common/oauth2/v2.0/token");
    assert_aad_error(
        &send(assertion(&cert, &key, "PS256", &c)).await.1,
        "invalid_client",
        700023,
    );
    let mut c = claims("a2");
    c["iss"] = json!("someone-else");
    assert_aad_error(
        &send(assertion(&cert, &key, "PS256", &c)).await.1,
        "invalid_client",
        700021,
    );
    let mut c = claims("a3");
    c["exp"] = json!(now() - 10);
    assert_aad_error(
        &send(assertion(&cert, &key, "PS256", &c)).await.1,
        "invalid_client",
        700024,
    );
    let mut c = claims("a4");
    c["exp"] = json!(now() + 7200);
    assert_aad_error(
        &send(assertion(&cert, &key, "PS256", &c)).await.1,
        "invalid_client",
        700024,
    );
    let mut c = claims("a5");
    c["nbf"] = json!(now() + 900);
    assert_aad_error(
        &send(assertion(&cert, &key, "PS256", &c)).await.1,
        "invalid_client",
        700024,
    );
    let mut c = claims("a6");
    c.as_object_mut().unwrap().remove("jti");
    assert_aad_error(
        &send(assertion(&cert, &key, "PS256", &c)).await.1,
        "invalid_request",
        50027,
    );
    // alg=none is not a signature.
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(claims("a7").to_string())
    );
    assert_aad_error(&send(none).await.1, "invalid_request", 50027);
    assert_aad_error(&send("garbage".into()).await.1, "invalid_request", 50027);

    // A refused assertion does not burn its jti: a1 is fine once correct.
    assert_eq!(
        send(assertion(&cert, &key, "RS256", &claims("a1"))).await.0,
        200
    );
    assert_eq!(idp.tokens_issued(), 3);
    // No secret is registered.
    assert_eq!(post_secret(&idp, &secret()).await.0, 401);
}

/// The soak's token-endpoint chaos: a 500 with Entra's error body, and a stall that still ends
/// in a token.
#[tokio::test]
async fn server_errors_and_stalls() {
    let idp = FakeIdp::start(IdpConfig::default()).await;
    let s = secret();
    idp.fail_next(IdpFailure::ServerError, 1);
    assert_eq!(idp.pending_failures(), 1);
    let (st, _, v) = post_secret(&idp, &s).await;
    assert_eq!(idp.pending_failures(), 0);
    assert_eq!(st, 500);
    assert_aad_error(&v, "server_error", 50000);

    idp.fail_next(IdpFailure::Stall(Duration::from_millis(400)), 1);
    let t0 = Instant::now();
    let (st, _, v) = post_secret(&idp, &s).await;
    assert_eq!(st, 200);
    assert!(t0.elapsed() >= Duration::from_millis(400));
    assert!(v["access_token"].is_string());
    assert_eq!(idp.tokens_issued(), 1);
}

//! The console through its router, with activity published as the relay publishes it: what
//! the pages and the API show, and who is let in.

use crate::host::ConnInfo;
use crate::*;
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use smtp2oauth_activity::{
    AccountSignal, Activity, ActivityConfig, AttemptReport, AttemptResult, Connection, Counter,
    Environment, MessageRecord, MessageResult, ReplyInfo, now_ms,
};
use smtp2oauth_config::{Flow, Route};
use std::net::SocketAddr;
use tower::ServiceExt;

const PASSWORD: &str = "c0nsole-Adm1n!";

struct Fixture {
    app: Router,
    activity: Activity,
    _dir: tempfile::TempDir,
}

fn state(password: bool, metrics_auth: bool) -> (AdminState, Activity, tempfile::TempDir) {
    let activity = Activity::new(&ActivityConfig {
        recent_messages: 100,
        devices: vec![("mfp-3f".into(), "scanner".into())],
        accounts: vec!["scanner".into(), "fax".into()],
    });
    let dir = tempfile::tempdir().unwrap();
    let spool = smtp2oauth_spool::Spool::open(dir.path()).unwrap();
    answer_like_a_relay(spool.control());
    let environment: smtp2oauth_activity::EnvironmentFn = Arc::new(|| {
        Box::pin(async {
            Environment {
                now_ms: now_ms(),
                ..Environment::default()
            }
        })
    });
    let view = |name: &str| AccountView {
        name: name.into(),
        mailbox: format!("{name}@contoso.com"),
        route: Route::Smtp,
        flow: Some(Flow::ClientCredentials),
        tokens: None,
        redirect_uri: None,
    };
    let state = AdminState {
        metrics: smtp2oauth_metrics::Metrics::new(None),
        readiness: Arc::new(|| {
            Box::pin(async {
                vec![Check {
                    name: "spool".into(),
                    ok: true,
                    detail: "writable".into(),
                }]
            })
        }),
        accounts: Arc::new(AccountsConfig {
            accounts: vec![view("scanner"), view("fax")],
            ..AccountsConfig::default()
        }),
        activity: activity.clone(),
        environment,
        spool: Some(spool),
        send_test: Some(Arc::new(|account, to| {
            Box::pin(async move {
                Ok(SendTestReport {
                    account,
                    to,
                    route: "smtp".into(),
                    target: "127.0.0.1:587".into(),
                    token: None,
                    delivery: None,
                    ok: false,
                })
            })
        })),
        security: Security {
            password_hash: password
                .then(|| smtp2oauth_tokens::Secret::from(password::cheap_hash(PASSWORD))),
            allowed_hosts: vec!["relay.contoso.lan".into()],
            listen: Some("127.0.0.1:8025".parse().unwrap()),
            metrics_auth,
        },
    };
    (state, activity, dir)
}

/// The relay's part: every request filed is answered "nothing to do".
fn answer_like_a_relay(control: smtp2oauth_spool::Control) {
    tokio::spawn(async move {
        loop {
            control.filed().await;
            for r in control.pending().await.unwrap_or_default() {
                control
                    .answer(&r, &smtp2oauth_spool::ControlAnswer::default())
                    .await;
            }
        }
    });
}

fn fixture(password: bool, metrics_auth: bool) -> Fixture {
    let (state, activity, dir) = state(password, metrics_auth);
    let conn = ConnInfo {
        peer: "127.0.0.1:50000".parse().unwrap(),
        local: "127.0.0.1:8025".parse().unwrap(),
    };
    Fixture {
        app: router(state).layer(MockConnectInfo(conn)),
        activity,
        _dir: dir,
    }
}

/// Publishes what a day of traffic would: a device session and message, a refusal, an
/// account refused by Exchange.
fn publish(a: &Activity) {
    let now = now_ms();
    a.device_seen(
        "mfp-3f",
        now - 5000,
        &Connection {
            peer: "192.0.2.10:51234".into(),
            listener: "plain".into(),
            tls: Some("TLSv1.3".into()),
        },
    );
    a.device_reply(
        "mfp-3f",
        now - 4000,
        ReplyInfo::new(
            553,
            Some("5.7.1".into()),
            "<ceo@evil.example>: sender not allowed",
        ),
        Some(Counter::Refused),
    );
    a.login_failed("<script>alert(1)</script>", None, "192.0.2.99", now - 3000);
    a.attempt(&AttemptReport {
        account: "scanner".into(),
        at_ms: now - 2000,
        result: Some(AttemptResult::Deferred),
        signal: AccountSignal::Refused,
        reply: Some(ReplyInfo::new(
            535,
            Some("5.7.3".into()),
            "Authentication unsuccessful",
        )),
        advice: Some("Grant the app SMTP.SendAsApp and add its service principal.".into()),
    });
    a.message(MessageRecord {
        seq: 0,
        at_ms: now - 1000,
        queue_id: Some("0123456789abcdef".into()),
        device: "mfp-3f".into(),
        peer: Some("192.0.2.10".into()),
        account: "scanner".into(),
        route: "smtp".into(),
        sender: "scanner@contoso.com".into(),
        recipients: vec!["alice@fabrikam.example".into()],
        size: 48_213,
        result: MessageResult::Deferred,
        reply: Some(ReplyInfo::new(
            535,
            Some("5.7.3".into()),
            "Authentication unsuccessful",
        )),
        advice: None,
    });
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

async fn call(app: &Router, req: Request<Body>) -> Answer {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

fn get(path: &str) -> axum::http::request::Builder {
    Request::get(path).header("host", "127.0.0.1:8025")
}

fn basic(password: &str) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("admin:{password}"));
    format!("Basic {encoded}")
}

fn session_of(a: &Answer) -> (String, String) {
    let cookie = a.headers["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_string();
    let start = a.body.find("name=\"csrf\" value=\"").unwrap() + 19;
    let csrf = a.body[start..start + a.body[start..].find('"').unwrap()].to_string();
    (cookie, csrf)
}

#[tokio::test]
async fn pages_and_api_show_what_was_published_escaped() {
    let f = fixture(false, false);
    publish(&f.activity);
    let overview = call(&f.app, get("/").body(Body::empty()).unwrap()).await;
    assert_eq!(overview.status, StatusCode::OK);
    // The problem first, with its reply, advice and doc link.
    assert!(
        overview
            .body
            .contains("535 5.7.3 Authentication unsuccessful"),
        "{}",
        overview.body
    );
    assert!(overview.body.contains("Grant the app SMTP.SendAsApp"));
    assert!(
        overview
            .body
            .contains("href=\"/docs/troubleshooting.md#account-degraded\"")
    );
    assert!(
        overview.headers["content-security-policy"]
            .to_str()
            .unwrap()
            .starts_with("default-src 'none'")
    );
    let devices = call(&f.app, get("/devices").body(Body::empty()).unwrap()).await;
    assert!(devices.body.contains("192.0.2.10:51234") && devices.body.contains("TLSv1.3"));
    assert!(
        devices
            .body
            .contains("&lt;ceo@evil.example&gt;: sender not allowed")
    );
    // A username from the network is text, never markup.
    assert!(
        devices
            .body
            .contains("&lt;script&gt;alert(1)&lt;/script&gt;")
    );
    assert!(!devices.body.contains("<script>"));
    let api = call(&f.app, get("/api/v1/accounts").body(Body::empty()).unwrap()).await;
    let v: serde_json::Value = serde_json::from_str(&api.body).unwrap();
    let scanner = &v["accounts"][0];
    assert_eq!(scanner["state"], "degraded");
    assert_eq!(scanner["reply"]["code"], 535);
    assert_eq!(scanner["reply"]["status"], "5.7.3");
    assert!(scanner["since"]["at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(scanner["consecutive_failures"], 1);
    assert_eq!(v["accounts"][1]["state"], "ok");
    let msgs = call(
        &f.app,
        get("/api/v1/messages?device=mfp-3f&rcpt=ALICE&limit=5")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&msgs.body).unwrap();
    assert_eq!(v["messages"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["messages"][0]["result"], "deferred");
    let none = call(
        &f.app,
        get("/api/v1/messages?account=fax")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(none.body, "{\"messages\":[]}");
    let bad = call(
        &f.app,
        get("/api/v1/messages?result=bounced")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    // readyz: the relay's checks decide; the accounts' states ride along.
    let ready = call(&f.app, get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(ready.status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&ready.body).unwrap();
    assert_eq!(v["accounts"][1]["name"], "scanner");
    assert_eq!(v["accounts"][1]["state"], "degraded");
}

/// A page reached through a name that is not ours (DNS rebinding) is refused on every route,
/// and a POST from another origin is refused even with the right token.
#[tokio::test]
async fn only_names_reached_on_purpose_are_served() {
    let f = fixture(false, false);
    for path in [
        "/",
        "/accounts",
        "/api/v1/accounts",
        "/metrics",
        "/readyz",
        "/docs",
    ] {
        let a = call(
            &f.app,
            Request::get(path)
                .header("host", "rebind.attacker.example:8025")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(a.status, StatusCode::MISDIRECTED_REQUEST, "{path}");
        assert!(!a.body.contains("csrf"));
    }
    for host in ["localhost:8025", "relay.contoso.lan:8025", "127.0.0.1"] {
        let a = call(
            &f.app,
            Request::get("/")
                .header("host", host)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{host}");
    }
    let page = call(&f.app, get("/accounts").body(Body::empty()).unwrap()).await;
    let (cookie, csrf) = session_of(&page);
    let post = |origin: &'static str, token: String| {
        Request::post("/queue/retry")
            .header("host", "127.0.0.1:8025")
            .header("cookie", cookie.clone())
            .header("origin", origin)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(format!("csrf={token}")))
            .unwrap()
    };
    let a = call(
        &f.app,
        post("http://rebind.attacker.example:8025", csrf.clone()),
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = call(&f.app, post("http://127.0.0.1:8025", "forged".into())).await;
    assert_eq!(
        a.status,
        StatusCode::FORBIDDEN,
        "a POST without the right token"
    );
    assert!(a.body.contains("CSRF token"));
}

/// With a password: pages ask for it, the API wants it (HTTP Basic), /metrics too with
/// metrics_auth; a wrong one counts towards the address's lockout.
#[tokio::test]
async fn the_password_guards_pages_api_and_metrics() {
    let f = fixture(true, true);
    publish(&f.activity);
    let page = call(&f.app, get("/accounts").body(Body::empty()).unwrap()).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("type=\"password\""));
    assert!(!page.body.contains("scanner@contoso.com") && !page.body.contains("535"));
    for path in ["/api/v1/accounts", "/api/v1/queue", "/metrics"] {
        let a = call(&f.app, get(path).body(Body::empty()).unwrap()).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(a.headers.contains_key("www-authenticate"));
        let a = call(
            &f.app,
            get(path)
                .header("authorization", basic("wrong"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{path}");
        let a = call(
            &f.app,
            get(path)
                .header("authorization", basic(PASSWORD))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{path}: {}", a.body);
    }
    // A script's POST with the password needs no session.
    let a = call(
        &f.app,
        Request::post("/api/v1/queue/retry")
            .header("host", "127.0.0.1:8025")
            .header("authorization", basic(PASSWORD))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    // Logging in from the page goes back where the admin was going.
    let (cookie, csrf) = session_of(&page);
    let a = call(
        &f.app,
        Request::post("/login")
            .header("host", "127.0.0.1:8025")
            .header("cookie", cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(format!(
                "csrf={csrf}&password={}&next=%2Faccounts",
                urlencode(PASSWORD)
            )))
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    assert_eq!(a.headers["location"], "/accounts");
    let logged_in = a.headers["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let page = call(
        &f.app,
        get("/accounts")
            .header("cookie", logged_in)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert!(
        page.body.contains("scanner@contoso.com") && page.body.contains("refused by the upstream")
    );
    for secret in [PASSWORD, "$argon2id$"] {
        assert!(!page.body.contains(secret));
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// 48 wrong passwords at once from one address cost one verification at a time; the admin at
/// another address logs in meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_wrong_passwords_neither_piles_up_nor_blocks_others() {
    let (state, _activity, _dir) = state(true, false);
    let app = router(state);
    let at = |ip: &str| {
        app.clone().layer(MockConnectInfo(ConnInfo {
            peer: format!("{ip}:40000").parse::<SocketAddr>().unwrap(),
            local: "127.0.0.1:8025".parse().unwrap(),
        }))
    };
    let attacker = at("192.0.2.66");
    let flood: Vec<_> = (0..48)
        .map(|_| {
            let app = attacker.clone();
            tokio::spawn(async move {
                call(
                    &app,
                    Request::post("/api/v1/queue/retry")
                        .header("host", "127.0.0.1:8025")
                        .header("authorization", basic("guess"))
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .status
            })
        })
        .collect();
    let admin = at("192.0.2.7");
    let ok = call(
        &admin,
        get("/api/v1/accounts")
            .header("authorization", basic(PASSWORD))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    let mut statuses = Vec::new();
    for f in flood {
        statuses.push(f.await.unwrap());
    }
    let checked = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::SERVICE_UNAVAILABLE || **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(checked + refused, 48, "{statuses:?}");
    assert!(checked <= password::LOCKOUT_AFTER, "{statuses:?}");
    assert!(refused >= 48 - password::LOCKOUT_AFTER, "{statuses:?}");
}

/// Every doc link a problem can carry opens a section that exists in the embedded docs.
#[test]
fn every_problem_links_to_a_section_that_exists() {
    use smtp2oauth_activity::{AccountActivity, CertificateInfo, NoticeFailure};
    let now = 100 * 86_400_000u64;
    let mut accounts = Vec::new();
    for (i, signal) in [
        AccountSignal::Refused,
        AccountSignal::SignInNeeded,
        AccountSignal::Unreachable,
        AccountSignal::Throttled {
            until_ms: now + 60_000,
        },
    ]
    .into_iter()
    .enumerate()
    {
        let activity = Activity::new(&ActivityConfig::default());
        let name = format!("a{i}");
        activity.attempt(&AttemptReport {
            account: name.clone(),
            at_ms: now - 1000,
            result: None,
            signal,
            reply: None,
            advice: None,
        });
        accounts.extend(activity.accounts(now));
    }
    let env = Environment {
        now_ms: now,
        oldest_queued_ms: Some(now - 7_200_000),
        alert_queue_age_ms: 3_600_000,
        free_space: Some(1),
        min_free_space: 100,
        certificates: vec![CertificateInfo {
            label: "listener".into(),
            not_after_ms: now,
        }],
        certificate_warning_ms: 14 * 86_400_000,
        notice_failures: vec![NoticeFailure {
            about: "x".into(),
            reason: "y".into(),
            at_ms: now,
        }],
    };
    let _: &[AccountActivity] = &accounts;
    let problems = smtp2oauth_activity::problems::problems(&accounts, &env);
    assert_eq!(problems.len(), 8, "{problems:#?}");
    for p in problems {
        assert!(
            docs::resolves(&p.doc),
            "{} links to {}, which does not exist",
            p.summary,
            p.doc
        );
    }
}

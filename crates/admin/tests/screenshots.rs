//! Every page of the console in a real headless Chromium, with the data a small office's relay
//! has after a morning: devices that sent, one refused sender, an account Exchange refuses, mail
//! waiting for it, a message refused for good. The activity is published as the sessions and
//! the scheduler publish it, and the queue is real spool files.
//!
//! The screenshots go to a temporary directory, or to docs/screenshots/ (what README.md and
//! docs/admin.md show) when `SMTP2OAUTH_UPDATE_SCREENSHOTS=1`:
//!   SMTP2OAUTH_UPDATE_SCREENSHOTS=1 cargo test -p smtp2oauth-admin --test screenshots

#![allow(clippy::unwrap_used)]

use smtp2oauth_activity::{
    AccountSignal, Activity, ActivityConfig, AttemptReport, AttemptResult, CertificateInfo,
    Connection, Counter, Environment, MessageRecord, MessageResult, ReplyInfo, now_ms,
};
use smtp2oauth_admin::{AccountView, AccountsConfig, AdminState, Check, Security};
use smtp2oauth_config::{Flow, Route};
use smtp2oauth_spool::{Area, AttemptOutcome, Envelope, Event, MessageId, RecipientResult, Spool};
use smtp2oauth_tokens::{AccessToken, TokenError, TokenSource, TokenStatus};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const MIN: u64 = 60_000;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn chromium_installed() -> bool {
    let have = |p: &str| {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {p}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if have("chromium") && have("chromedriver") {
        return true;
    }
    assert!(
        std::env::var_os("SMTP2OAUTH_REQUIRE_CLIENTS").is_none(),
        "chromium and chromedriver are required but not installed"
    );
    eprintln!("chromium or chromedriver not installed; skipped");
    false
}

fn reply(code: u16, status: &str, text: &str) -> ReplyInfo {
    ReplyInfo::new(code, Some(status.into()), text)
}

fn connection(peer: &str, listener: &str, tls: Option<&str>) -> Connection {
    Connection {
        peer: peer.into(),
        listener: listener.into(),
        tls: tls.map(Into::into),
    }
}

/// A morning of traffic, as sessions and the scheduler publish it.
fn publish(a: &Activity) {
    let now = now_ms();
    let mfp = connection("192.168.10.31:50412", "submission", Some("TLSv1.3"));
    let lobby = connection("192.168.10.44:1055", "legacy", None);
    for i in 0..14 {
        a.device_seen("mfp-3f", now - (200 - i * 12) * MIN, &mfp);
        a.device_reply(
            "mfp-3f",
            now - (200 - i * 12) * MIN,
            reply(250, "2.0.0", "OK: queued"),
            Some(Counter::Accepted),
        );
    }
    a.device_seen("scan-lobby", now - 26 * MIN, &lobby);
    a.device_reply(
        "scan-lobby",
        now - 26 * MIN,
        reply(
            553,
            "5.7.1",
            "<ceo@fabrikam.example>: this device may not send as that address",
        ),
        Some(Counter::Refused),
    );
    a.device_seen(
        "nas",
        now - 95 * MIN,
        &connection("192.168.10.5:44120", "submission", Some("TLSv1.2")),
    );
    a.device_reply(
        "nas",
        now - 95 * MIN,
        reply(250, "2.0.0", "OK: delivered"),
        Some(Counter::Accepted),
    );
    a.login_failed("admin", None, "192.168.10.77", now - 40 * MIN);
    a.login_failed("admin", None, "192.168.10.77", now - 39 * MIN);
    a.login_failed("scanner", Some("mfp-3f"), "192.168.10.31", now - 150 * MIN);
    for (i, to) in [
        "j.doe@contoso.com",
        "accounts@contoso.com",
        "hr@contoso.com",
    ]
    .iter()
    .enumerate()
    {
        a.message(record(
            now - (180 - i as u64 * 30) * MIN,
            "mfp-3f",
            "scanner",
            to,
            MessageResult::Delivered,
            reply(250, "2.6.0", "Queued mail for delivery"),
        ));
    }
    a.attempt(&AttemptReport {
        account: "fax".into(),
        at_ms: now - 95 * MIN,
        result: Some(AttemptResult::Delivered),
        signal: AccountSignal::Working,
        reply: Some(reply(202, "2.0.0", "Accepted by Microsoft Graph")),
        advice: None,
    });
    a.message(record(
        now - 95 * MIN,
        "nas",
        "fax",
        "it@contoso.com",
        MessageResult::Delivered,
        reply(202, "2.0.0", "Accepted by Microsoft Graph"),
    ));
    a.message(MessageRecord {
        queue_id: None,
        size: 0,
        ..record(
            now - 26 * MIN,
            "scan-lobby",
            "scanner",
            "board@contoso.com",
            MessageResult::Refused,
            reply(
                553,
                "5.7.1",
                "<ceo@fabrikam.example>: this device may not send as that address",
            ),
        )
    });
    let refused = reply(
        535,
        "5.7.3",
        "Authentication unsuccessful [AM0PR02CA0031.eurprd02.prod.outlook.com]",
    );
    for i in 0..3 {
        a.attempt(&AttemptReport {
            account: "scanner".into(),
            at_ms: now - (14 - i * 5) * MIN,
            result: Some(AttemptResult::Deferred),
            signal: AccountSignal::Refused,
            reply: Some(refused.clone()),
            advice: Some("Exchange refuses the app's login: check that the app has the SMTP.SendAsApp permission with admin consent and that its service principal was added in Exchange (Add-MailboxPermission).".into()),
        });
        a.message(MessageRecord {
            advice: Some("Exchange refuses the app's login: see the account's advice.".into()),
            ..record(
                now - (14 - i * 5) * MIN,
                "mfp-3f",
                "scanner",
                "j.doe@contoso.com",
                MessageResult::Deferred,
                refused.clone(),
            )
        });
    }
    a.message(record(
        now - 60 * MIN,
        "mfp-3f",
        "scanner",
        "old.colleague@contoso.com",
        MessageResult::Failed,
        reply(
            550,
            "5.1.10",
            "RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
        ),
    ));
}

fn record(
    at_ms: u64,
    device: &str,
    account: &str,
    to: &str,
    result: MessageResult,
    reply: ReplyInfo,
) -> MessageRecord {
    MessageRecord {
        seq: 0,
        at_ms,
        queue_id: Some(MessageId::new().to_string()),
        device: device.into(),
        peer: Some(
            match device {
                "nas" => "192.168.10.5",
                "scan-lobby" => "192.168.10.44",
                _ => "192.168.10.31",
            }
            .into(),
        ),
        account: account.into(),
        route: if account == "fax" { "graph" } else { "smtp" }.into(),
        sender: format!("{account}@contoso.com"),
        recipients: vec![to.into()],
        size: 184_233 + at_ms % 90_000,
        result,
        reply: Some(reply),
        advice: None,
    }
}

/// Queued mail of the refused account and one message refused for good, as spool files.
async fn fill_spool(spool: &Spool) -> String {
    let now = now_ms();
    let mut first = String::new();
    for (i, to) in ["j.doe@contoso.com", "finance@contoso.com", "hr@contoso.com"]
        .iter()
        .enumerate()
    {
        let received = now - (14 - i as u64 * 5) * MIN;
        let q = spool
            .write_message(
                envelope("scanner", to, received),
                b"Subject: Scan from mfp-3f\r\n\r\n%PDF-1.7 ...\r\n",
            )
            .await
            .unwrap();
        spool
            .append_event(
                q.id(),
                Area::Queue,
                &Event::Attempt {
                    at_ms: received + 2000,
                    attempt: 1,
                    outcome: AttemptOutcome::Deferred,
                    reply: "535 5.7.3 Authentication unsuccessful".into(),
                    stage: Some("auth".into()),
                    delivered: vec![],
                    failed: vec![],
                    next_attempt_ms: Some(now + (4 + i as u64) * MIN),
                },
            )
            .await
            .unwrap();
        if first.is_empty() {
            first = q.id().to_string();
        }
    }
    let failed = spool
        .write_message(
            envelope("scanner", "old.colleague@contoso.com", now - 62 * MIN),
            b"Subject: Scan\r\n\r\nx\r\n",
        )
        .await
        .unwrap();
    let refusal = smtp2oauth_proto::Reply::with_status(
        550,
        (5, 1, 10),
        "RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
    );
    spool
        .append_event(
            failed.id(),
            Area::Queue,
            &Event::Attempt {
                at_ms: now - 60 * MIN,
                attempt: 1,
                outcome: AttemptOutcome::Failed,
                reply: refusal.to_string(),
                stage: Some("rcpt".into()),
                delivered: vec![],
                failed: vec![RecipientResult {
                    rcpt: "old.colleague@contoso.com".into(),
                    reply: refusal,
                }],
                next_attempt_ms: None,
            },
        )
        .await
        .unwrap();
    spool
        .append_event(
            failed.id(),
            Area::Queue,
            &Event::MovedToFailed {
                at_ms: now - 60 * MIN,
                reason: "every recipient was refused".into(),
            },
        )
        .await
        .unwrap();
    spool
        .move_to(failed.id(), Area::Queue, Area::Failed)
        .await
        .unwrap();
    first
}

fn envelope(account: &str, to: &str, received_at_ms: u64) -> Envelope {
    Envelope {
        id: MessageId::new(),
        received_at_ms,
        account: account.into(),
        device: "mfp-3f".into(),
        listener: "submission".into(),
        client_ip: "192.168.10.31".into(),
        helo: "MFP-3F.contoso.local".into(),
        sender: format!("{account}@contoso.com"),
        original_sender: None,
        recipients: vec![to.into()],
        eight_bit: false,
        smtputf8: false,
        size: 0,
        crc32c: 0,
        session: 4711,
        notice: false,
    }
}

/// A token source holding a token fetched 10 minutes ago, valid for 50 more.
struct Fetched;

impl TokenSource for Fetched {
    fn token(&self) -> Pin<Box<dyn Future<Output = Result<AccessToken, TokenError>> + Send + '_>> {
        Box::pin(async {
            Err(TokenError::new(
                smtp2oauth_tokens::TokenErrorKind::Transient,
                "not in this test",
            ))
        })
    }
    fn invalidate(&self, _: &AccessToken) {}
    fn status(&self) -> TokenStatus {
        let now = SystemTime::now();
        TokenStatus {
            valid_until: Some(now + Duration::from_secs(50 * 60)),
            last_refresh: Some(now - Duration::from_secs(10 * 60)),
            requests: 3,
            ..TokenStatus::default()
        }
    }
}

fn view(name: &str, route: Route, flow: Option<Flow>) -> AccountView {
    AccountView {
        name: name.into(),
        mailbox: format!("{name}@contoso.com"),
        route,
        flow,
        tokens: flow.map(|_| Arc::new(Fetched) as Arc<dyn TokenSource>),
        redirect_uri: None,
    }
}

async fn serve(spool: Spool, activity: Activity) -> String {
    let env_activity = activity.clone();
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
            accounts: vec![
                view("scanner", Route::Smtp, Some(Flow::ClientCredentials)),
                view("fax", Route::Graph, Some(Flow::ClientCredentials)),
                view("nas", Route::Smarthost, None),
            ],
            ..AccountsConfig::default()
        }),
        activity,
        environment: Arc::new(move || {
            let a = env_activity.clone();
            Box::pin(async move {
                Environment {
                    now_ms: now_ms(),
                    oldest_queued_ms: Some(now_ms() - 14 * MIN),
                    alert_queue_age_ms: 60 * MIN,
                    free_space: Some(40 << 30),
                    min_free_space: 1 << 30,
                    certificates: vec![CertificateInfo {
                        label: "listener certificate /etc/smtp2oauth/tls/relay.pem".into(),
                        not_after_ms: now_ms() + 9 * 24 * 60 * MIN,
                    }],
                    certificate_warning_ms: 14 * 24 * 60 * MIN,
                    notice_failures: a.notice_failures(),
                }
            })
        }),
        spool: Some(spool),
        send_test: Some(Arc::new(|_, _| {
            Box::pin(async { Err("not in this test".to_string()) })
        })),
        security: Security::default(),
    };
    let server = smtp2oauth_admin::bind("127.0.0.1:0".parse().unwrap(), state)
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.serve(tokio_util::sync::CancellationToken::new()));
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread")]
async fn every_page_in_chromium_with_a_mornings_data() {
    if !chromium_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let activity = Activity::new(&ActivityConfig {
        recent_messages: 1000,
        devices: vec![
            ("mfp-3f".into(), "scanner".into()),
            ("scan-lobby".into(), "scanner".into()),
            ("nas".into(), "fax".into()),
        ],
        accounts: vec!["scanner".into(), "fax".into(), "nas".into()],
    });
    publish(&activity);
    let first = fill_spool(&spool).await;
    let base = serve(spool, activity).await;
    let out = if std::env::var_os("SMTP2OAUTH_UPDATE_SCREENSHOTS").is_some() {
        repo().join("docs/screenshots")
    } else {
        dir.path().join("shots")
    };
    std::fs::create_dir_all(&out).unwrap();
    let shot = |name: &str| out.join(name).display().to_string();
    let steps = serde_json::json!([
        {"open": "/"}, {"expect": "Exchange refuses the app's login"}, {"expect": "Certificate expires in"},
        {"screenshot": shot("overview.png")}, {"text": "overview"},
        {"open": "/devices"}, {"expect": "scan-lobby"}, {"screenshot": shot("devices.png")}, {"text": "devices"},
        {"open": "/accounts"}, {"expect": "refused by the upstream"}, {"screenshot": shot("accounts.png")},
        {"open": "/queue"}, {"expect": "535 5.7.3"}, {"screenshot": shot("queue.png")},
        {"open": format!("/queue/{first}")}, {"expect": "attempt 1: deferred at auth"}, {"screenshot": shot("queue-message.png")},
        {"open": "/messages?rcpt=j.doe"}, {"expect": "j.doe@contoso.com"}, {"absent": "hr@contoso.com"},
        {"open": "/messages"}, {"expect": "RecipientNotFound"}, {"screenshot": shot("messages.png")},
        {"open": "/docs/troubleshooting.md#account-degraded"}, {"expect": "Account degraded"}, {"screenshot": shot("docs.png")},
    ]);
    let report = browser(&base, &steps).await;
    assert_eq!(report["ok"], true, "{report:#}");
    let overview = report["texts"]["overview"].as_str().unwrap();
    // Problems first: the refused account before anything else on the page.
    let problem = overview.find("Exchange refuses the app's login").unwrap();
    assert!(
        problem < overview.find("Latest messages").unwrap(),
        "{overview}"
    );
    assert!(
        report["texts"]["devices"]
            .as_str()
            .unwrap()
            .contains("TLSv1.3")
    );
    for name in [
        "overview",
        "devices",
        "accounts",
        "queue",
        "queue-message",
        "messages",
        "docs",
    ] {
        let png = std::fs::read(out.join(format!("{name}.png"))).unwrap();
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
            "{name}.png"
        );
    }
}

async fn browser(base: &str, steps: &serde_json::Value) -> serde_json::Value {
    let out = tokio::process::Command::new("python3")
        .arg(repo().join("tests/clients/browser_console.py"))
        .args(["--base", base, "--steps", &steps.to_string()])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

//! The operator console through the real binary: queue actions from the page (in a headless
//! Chromium, behind the password) and from the API while mail flows, the CSRF token and the
//! password enforced, the relay's answer reported by the CLI, names that are not ours refused,
//! a flood of wrong passwords kept small, the send-test over the API, and nothing secret on
//! any page or API answer.

use crate::harness::*;
use serde_json::Value;
use smtp2oauth_testkit::Stage;
use std::process::Stdio;
use std::time::{Duration, Instant};

const TO: &str = "you@example.com";
const ADMIN_PASSWORD: &str = "C0nsole-adm1n:pass";
const WEBHOOK: &str = "https://hooks.example.net/services/T0001/B0002/w3bh00k-s3cr3t";

/// A relay whose retries wait an hour (only the admin's buttons cause attempts), behind
/// `[admin] password_hash`, with a webhook URL configured (a secret).
fn config(up: &Upstream) -> String {
    let toml = with_delivery(
        &relay_toml(&up.pki, &up.account_toml(""), ""),
        "wait_for_upstream = \"0s\"\nretry_initial = \"1h\"\nretry_max = \"1h\"",
    );
    toml.replace(
        "[admin]",
        &format!(
            "[notify]\nwebhook_url = \"{WEBHOOK}\"\n\n[admin]\npassword_hash = \"{}\"",
            password_hash(ADMIN_PASSWORD)
        ),
    )
}

async fn send(relay: &Relay, subject: &str) -> Value {
    let port = relay.port("plain").to_string();
    let args = [
        "--port",
        &port,
        "--user",
        DEVICE_USER,
        "--password",
        DEVICE_PASSWORD,
        "--from",
        MAILBOX,
        "--to",
        TO,
        "--subject",
        subject,
    ];
    smtplib(&args).await.remove(0)
}

fn queue_id(r: &Value) -> String {
    let reply = r["reply"].as_str().unwrap_or_default();
    reply
        .split(" as ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no queue id in {r}"))
        .to_string()
}

/// `curl` against the console: (status, body).
pub(crate) async fn http(relay: &Relay, method: &str, path: &str, extra: &[&str]) -> (u16, String) {
    let mut args: Vec<String> = vec![
        "-sS".into(),
        "-X".into(),
        method.into(),
        "-w".into(),
        "\n%{http_code}".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(format!("http://{}{path}", relay.addr("admin")));
    let out = run("curl", &args).await;
    assert_eq!(out.status, 0, "curl {path}: {}", out.stderr);
    let (body, code) = out.stdout.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

fn basic(password: &str) -> String {
    format!("admin:{password}")
}

pub(crate) fn chromium_installed() -> bool {
    required(&["chromium", "chromedriver"])
}

/// tests/clients/browser_console.py with `steps`; its JSON report.
pub(crate) async fn browser(relay: &Relay, steps: &Value) -> Value {
    let base = format!("http://{}", relay.addr("admin"));
    let out = tokio::process::Command::new("python3")
        .arg(repo_root().join("tests/clients/browser_console.py"))
        .args(["--base", &base, "--steps", &steps.to_string()])
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

#[tokio::test(flavor = "multi_thread")]
async fn queue_actions_from_the_page_and_the_api_while_mail_flows() {
    let up = Upstream::start().await;
    let relay = Relay::start(&config(&up));
    let store = relay.store();
    // One message the upstream refuses for good; then it defers every attempt (retries come
    // every few seconds) until the test says otherwise, so the admin acts on queued mail.
    up.smtp.script(
        Stage::DataBody,
        "550 5.7.1 Message rejected for the test",
        1,
    );
    let failed = queue_id(&send(&relay, "refused").await);
    assert!(
        eventually(Duration::from_secs(20), || spool_ids(&store, "failed")
            == [failed.clone()])
        .await
    );
    up.smtp
        .script(Stage::Mail, "451 4.3.0 Temporary server error", 1_000_000);
    let mut ids = Vec::new();
    for i in 1..=3 {
        ids.push(queue_id(&send(&relay, &format!("queued {i}")).await));
    }
    assert!(
        eventually(Duration::from_secs(20), || relay
            .logs()
            .matches("scheduler::attempt: deferred")
            .count()
            >= 3)
        .await,
        "{}",
        relay.logs()
    );
    let (id1, id2, id3) = (ids[0].clone(), ids[1].clone(), ids[2].clone());

    // Mail keeps flowing while the admin acts.
    let flow = {
        let port = relay.port("plain").to_string();
        tokio::spawn(async move {
            for i in 0..6 {
                let args = [
                    "--port",
                    &port,
                    "--user",
                    DEVICE_USER,
                    "--password",
                    DEVICE_PASSWORD,
                    "--from",
                    MAILBOX,
                    "--to",
                    TO,
                    "--subject",
                    &format!("flowing {i}"),
                ];
                assert_eq!(smtplib(&args).await[0]["code"], 250);
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };

    if chromium_installed() {
        let steps = serde_json::json!([
            {"open": "/queue"}, {"expect": "Password"},
            {"fill": ["input[name=password]", "wrong"]}, {"click": "form[action='/login'] button"},
            {"expect": "Wrong password"},
            {"fill": ["input[name=password]", ADMIN_PASSWORD]}, {"click": "form[action='/login'] button"},
            {"expect": "Retry all now"}, {"expect": id1.as_str()},
            {"open": format!("/queue/{id1}")}, {"expect": "451 4.3.0"},
            {"click": format!("form[action='/queue/{id1}/retry'] button")},
            {"expect": format!("{id1} is being attempted now")},
            {"open": format!("/queue/{id2}")}, {"blank_csrf": true},
            {"click": format!("form[action='/queue/{id2}/delete'] button")},
            {"expect": "CSRF token"}, {"text": "refused"},
            {"open": format!("/queue/{id2}")},
            {"click": format!("form[action='/queue/{id2}/delete'] button")},
            {"expect": format!("{id2} is deleted")},
            {"open": "/queue?area=failed"}, {"expect": failed.as_str()},
            {"click": format!("form[action='/failed/{failed}/requeue'] button")},
            {"expect": "back in the queue"}, {"expect": "requeued by the admin"},
        ]);
        let report = browser(&relay, &steps).await;
        assert_eq!(report["ok"], true, "{report:#}\n{}", relay.logs());
        assert!(!spool_ids(&store, "queue").contains(&id2));
    }

    // The API: the password by HTTP Basic; the same actions and answers.
    let auth = basic(ADMIN_PASSWORD);
    let (code, _) = http(&relay, "POST", &format!("/api/v1/queue/{id3}/retry"), &[]).await;
    assert_eq!(code, 401, "no password");
    let (code, _) = http(
        &relay,
        "POST",
        &format!("/api/v1/queue/{id3}/retry"),
        &["-u", &basic("wrong")],
    )
    .await;
    assert_eq!(code, 401);
    let (code, body) = http(&relay, "GET", "/api/v1/queue", &["-u", &auth]).await;
    assert_eq!(code, 200, "{body}");
    let listed: Value = serde_json::from_str(&body).unwrap();
    assert!(
        listed["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == id3.as_str()
                && m["last_reply"] == "451 4.3.0 Temporary server error"),
        "{listed}"
    );
    let (code, body) = http(
        &relay,
        "GET",
        &format!("/api/v1/queue/{id3}"),
        &["-u", &auth],
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let detail: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(detail["history"][0]["event"], "attempt");
    assert_eq!(detail["device"], DEVICE_USER);
    let (code, body) = http(
        &relay,
        "POST",
        &format!("/api/v1/queue/{id3}/retry"),
        &["-u", &auth],
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["outcomes"][0]["outcome"], "done", "{answer}");
    let (code, body) = http(
        &relay,
        "POST",
        "/api/v1/queue/deadbeefdeadbeef/delete",
        &["-u", &auth],
    )
    .await;
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("\"unknown_id\""), "{body}");
    // A browser's POST (a cookie) without the session's token is refused, password or not.
    let (code, _) = http(
        &relay,
        "POST",
        "/api/v1/queue/retry",
        &[
            "-u",
            &auth,
            "-H",
            "Cookie: smtp2oauth_session=x",
            "-H",
            "Origin: http://127.0.0.1",
        ],
    )
    .await;
    assert_eq!(code, 403);
    // The command line gets the relay's answer too.
    let out = relay.queue(&["delete", "deadbeefdeadbeef"]).await;
    assert_eq!(out.status, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("no message deadbeefdeadbeef in the queue"),
        "{}",
        out.stderr
    );
    let out = relay.queue(&["delete", "all"]).await;
    assert_eq!(out.status, 2, "{out:?}");
    assert!(out.stderr.contains("spell out --all"), "{}", out.stderr);
    flow.await.unwrap();

    // A name that is not ours (DNS rebinding) gets nothing.
    let (code, body) = http(&relay, "GET", "/", &["-H", "Host: rebind.attacker.example"]).await;
    assert_eq!(code, 421, "{body}");
    assert!(!body.contains("csrf"));

    // Once the upstream takes mail again, a retry from the command line sends what is queued.
    up.smtp.clear_scripts();
    let out = relay.queue(&["retry", "--all"]).await;
    assert_eq!(out.status, 0, "{out:?}");
    let got = up.smtp.wait_for_messages(1, Duration::from_secs(20)).await;
    assert!(
        eventually(Duration::from_secs(20), || up
            .smtp
            .messages()
            .iter()
            .any(|m| m.data_str().contains("Subject: queued 1")))
        .await,
        "the queued message went out: {} delivered",
        got.len()
    );

    // Nothing secret anywhere.
    let mut seen = String::new();
    for path in [
        "/",
        "/devices",
        "/accounts",
        "/queue",
        "/queue?area=failed",
        "/messages",
        &format!("/queue/{id3}"),
        "/api/v1/devices",
        "/api/v1/accounts",
        "/api/v1/messages",
        "/api/v1/queue",
        "/api/v1/problems",
        "/readyz",
        "/metrics",
    ] {
        let (_, body) = http(&relay, "GET", path, &["-u", &auth]).await;
        seen.push_str(&body);
    }
    let mut secrets = up.idp.issued_tokens();
    secrets.extend([
        CLIENT_SECRET.into(),
        DEVICE_PASSWORD.into(),
        ADMIN_PASSWORD.into(),
        WEBHOOK.into(),
        "w3bh00k".into(),
        "$argon2id$".into(),
    ]);
    for s in &secrets {
        assert!(
            !seen.contains(s.as_str()),
            "a secret ({}…) is on a page or in an API answer",
            &s[..6.min(s.len())]
        );
    }
}

/// The send-test of the CLI, over the API: the token step, then the upstream's reply, each with
/// its advice.
#[tokio::test(flavor = "multi_thread")]
async fn send_test_over_the_api_reports_the_token_and_the_delivery() {
    let up = Upstream::start().await;
    // No pooled upstream session: each test logs in again, as a first delivery would.
    let toml = config(&up).replace(
        "retry_max = \"1h\"",
        "retry_max = \"1h\"\nupstream_idle_timeout = \"0s\"",
    );
    let relay = Relay::start(&toml);
    let auth = basic(ADMIN_PASSWORD);
    let body = r#"{"to": "admin@example.com"}"#;
    let json = [
        "-u",
        &auth,
        "-H",
        "Content-Type: application/json",
        "-d",
        body,
    ];
    let (code, out) = http(&relay, "POST", "/api/v1/accounts/scanner/test", &json).await;
    assert_eq!(code, 200, "{out}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["token"]["ok"], true, "{r}");
    assert!(
        r["token"]["summary"]
            .as_str()
            .unwrap()
            .starts_with("token obtained, valid until")
    );
    assert_eq!(r["delivery"]["reply"]["code"], 250, "{r}");
    let m = up.smtp.wait_for_messages(1, Duration::from_secs(10)).await;
    assert_eq!(m[0].rcpt_to, vec!["admin@example.com"]);

    up.smtp.script(Stage::Auth, "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.", 5);
    let (code, out) = http(&relay, "POST", "/api/v1/accounts/scanner/test", &json).await;
    assert_eq!(code, 502, "{out}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["token"]["ok"], true, "the token is fine: {r}");
    assert_eq!(r["delivery"]["ok"], false);
    assert_eq!(r["delivery"]["reply"]["status"], "5.7.139");
    assert!(
        r["delivery"]["advice"]
            .as_str()
            .is_some_and(|a| !a.is_empty()),
        "{r}"
    );
    let (code, _) = http(&relay, "POST", "/api/v1/accounts/nobody/test", &json).await;
    assert_eq!(code, 400);
    let bad = [
        "-u",
        &auth,
        "-d",
        r#"{"to": "x@y.com\r\nRCPT TO:<z@w.com>"}"#,
    ];
    let (code, out) = http(&relay, "POST", "/api/v1/accounts/scanner/test", &bad).await;
    assert_eq!(code, 400, "{out}");
}

/// 48 wrong passwords at once cost at most two argon2 runs at a time: the relay's memory stays
/// put and the admin at another address gets in meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_wrong_passwords_stays_small_and_lets_the_admin_in() {
    let up = Upstream::start().await;
    let relay = Relay::start(&config(&up));
    let admin: std::net::SocketAddr = relay.addr("admin").parse().unwrap();
    let status = |field: &str| -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", relay.pid())).unwrap();
        let line = s.lines().find(|l| l.starts_with(field)).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    };
    // One right password first, so the baseline includes one verification's memory.
    let (code, _) = http(
        &relay,
        "GET",
        "/api/v1/accounts",
        &["-u", &basic(ADMIN_PASSWORD)],
    )
    .await;
    assert_eq!(code, 200);
    let base = status("VmRSS:");
    let flood: Vec<_> = (0..48)
        .map(|_| tokio::spawn(raw_post(admin, "127.0.0.1", basic("guess"))))
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let code = raw_post(admin, "127.0.0.2", basic(ADMIN_PASSWORD)).await;
    assert_eq!(code, 200, "the admin at another address");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let mut codes = Vec::new();
    for f in flood {
        codes.push(f.await.unwrap());
    }
    assert!(
        codes.iter().all(|c| [401, 429, 503].contains(c)),
        "{codes:?}"
    );
    let peak = status("VmHWM:");
    assert!(
        peak < base + 64 * 1024 * 1024,
        "peak {} MiB over a baseline of {} MiB",
        peak >> 20,
        base >> 20
    );
}

/// `POST /api/v1/queue/retry` with Basic `credentials`, from the local address `from`; the
/// status code.
async fn raw_post(admin: std::net::SocketAddr, from: &str, credentials: String) -> u16 {
    use base64::Engine;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut s = socket.connect(admin).await.unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(credentials);
    let req = format!(
        "POST /api/v1/queue/retry HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Basic {auth}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut resp))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&resp)
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse()
        .unwrap()
}

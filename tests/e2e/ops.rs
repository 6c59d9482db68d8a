//! Operations: what an admin's monitoring sees. `/metrics` counters move as messages pass and
//! fail and never carry addresses; `/readyz` says why the relay cannot work; the JSON log format
//! is one object per line; `smtp2oauth health` answers a container's health check.

use crate::harness::*;
use smtp2oauth_testkit::{IdpFailure, Stage};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

async fn http_get(url: &str) -> (u16, String) {
    let out = run(
        "curl",
        &[
            "-sS".into(),
            "-w".into(),
            "\n%{http_code}".into(),
            url.into(),
        ],
    )
    .await;
    assert_eq!(out.status, 0, "curl {url}: {}", out.stderr);
    let (body, code) = out.stdout.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
}

/// Parses the exposition text into `name{labels}` → value.
fn scrape(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn value(m: &HashMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

async fn send(relay: &Relay, user: &str, password: &str) -> serde_json::Value {
    let port = relay.port("plain").to_string();
    smtplib(&[
        "--port",
        &port,
        "--user",
        user,
        "--password",
        password,
        "--from",
        MAILBOX,
        "--to",
        "you@example.com",
        "--body",
        "metrics",
    ])
    .await
    .remove(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_move_as_messages_pass_and_fail_and_hold_no_addresses() {
    let up = Upstream::start().await;
    let relay = Relay::start(&relay_toml(&up.pki, &up.account_toml(""), ""));
    let url = format!("http://{}/metrics", relay.addr("admin"));
    let (code, before) = http_get(&url).await;
    assert_eq!(code, 200);
    let before = scrape(&before);

    assert_eq!(send(&relay, DEVICE_USER, DEVICE_PASSWORD).await["ok"], true);
    assert_eq!(send(&relay, DEVICE_USER, DEVICE_PASSWORD).await["ok"], true);
    up.smtp
        .script(Stage::DataBody, "550 5.7.1 Message rejected as spam", 1);
    let r = send(&relay, DEVICE_USER, DEVICE_PASSWORD).await;
    assert_eq!(r["code"], 550, "{r:?}");
    let r = send(&relay, DEVICE_USER, "wrong").await;
    assert_eq!(r["code"], 535, "{r:?}");

    let (_, text) = http_get(&url).await;
    let after = scrape(&text);
    let delta = |k: &str| value(&after, k) - value(&before, k);
    assert_eq!(
        delta("smtp2oauth_messages_received_total{account=\"scanner\"}"),
        3.0,
        "{text}"
    );
    assert_eq!(
        delta("smtp2oauth_messages_delivered_total{account=\"scanner\",route=\"smtp\"}"),
        2.0,
        "{text}"
    );
    assert_eq!(
        delta("smtp2oauth_messages_failed_total{account=\"scanner\",route=\"smtp\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(
        delta(
            "smtp2oauth_upstream_replies_total{account=\"scanner\",class=\"2xx\",status=\"2.0.0\"}"
        ),
        2.0,
        "{text}"
    );
    assert_eq!(
        delta(
            "smtp2oauth_upstream_replies_total{account=\"scanner\",class=\"5xx\",status=\"5.7.1\"}"
        ),
        1.0,
        "{text}"
    );
    assert!(
        delta("smtp2oauth_auth_attempts_total{result=\"success\"}") >= 3.0,
        "{text}"
    );
    assert_eq!(
        delta("smtp2oauth_auth_attempts_total{result=\"failure\"}"),
        1.0,
        "{text}"
    );
    assert!(
        delta("smtp2oauth_inbound_refusals_total{code=\"535\"}") >= 1.0,
        "{text}"
    );
    assert!(
        delta("smtp2oauth_sessions_total{listener=\"plain\",tls=\"none\"}") >= 4.0,
        "{text}"
    );
    assert!(
        delta("smtp2oauth_received_bytes_total{account=\"scanner\"}") > 100.0,
        "{text}"
    );
    assert!(
        delta("smtp2oauth_delivered_bytes_total{account=\"scanner\",route=\"smtp\"}") > 100.0,
        "{text}"
    );
    assert_eq!(
        delta("smtp2oauth_delivery_latency_seconds_count{account=\"scanner\"}"),
        2.0,
        "{text}"
    );
    assert!(
        value(
            &after,
            "smtp2oauth_token_expiry_seconds{account=\"scanner\"}"
        ) > 3000.0,
        "{text}"
    );
    assert_eq!(
        value(
            &after,
            "smtp2oauth_token_refreshes_total{account=\"scanner\",result=\"success\"}"
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(&after, "smtp2oauth_queue_messages{state=\"queued\"}"),
        0.0,
        "{text}"
    );
    assert_eq!(
        value(
            &after,
            "smtp2oauth_sessions_active{listener=\"plain\",tls=\"none\"}"
        ),
        0.0,
        "{text}"
    );
    // No label carries an address, a queue id or a username.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(!line.contains('@'), "address in a metric: {line}");
        assert!(!line.contains(DEVICE_USER), "username in a metric: {line}");
    }
    // A queued message shows in the queue gauges.
    up.smtp.script(Stage::Mail, "451 4.3.0 try later", 100);
    let r = send(&relay, DEVICE_USER, DEVICE_PASSWORD).await;
    assert_eq!(r["ok"], true);
    let (_, text) = http_get(&url).await;
    let m = scrape(&text);
    assert_eq!(
        value(&m, "smtp2oauth_queue_messages{state=\"queued\"}"),
        1.0,
        "{text}"
    );
    assert!(
        value(
            &m,
            "smtp2oauth_messages_deferred_total{account=\"scanner\",route=\"smtp\"}"
        ) >= 1.0,
        "{text}"
    );
}

/// Readiness is about the relay itself: an account whose token endpoint is down does not make
/// it unready (its state says so instead); an unwritable spool does, and says why.
#[tokio::test(flavor = "multi_thread")]
async fn readyz_is_about_the_relay_not_its_accounts_and_says_why_the_spool_is_unwritable() {
    let up = Upstream::start().await;
    up.idp.set_failure(Some(IdpFailure::Unavailable));
    let relay = Relay::start(&relay_toml(&up.pki, &up.account_toml(""), ""));
    let url = format!("http://{}/readyz", relay.addr("admin"));
    let (code, body) = http_get(&url).await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ready"], true);
    let checks: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(checks, ["listeners", "spool"], "{body}");
    assert!(
        up.idp.token_requests() == 0,
        "readiness asks the token endpoint nothing"
    );
    // /healthz stays 200: the process is alive
    assert_eq!(
        http_get(&format!("http://{}/healthz", relay.addr("admin")))
            .await
            .0,
        200
    );

    // The spool becomes unwritable (a file where a directory should be: root ignores modes).
    let data_dir = relay.store().join("spool/data");
    std::fs::remove_dir_all(&data_dir).unwrap();
    std::fs::write(&data_dir, b"not a directory").unwrap();
    let (code, body) = http_get(&url).await;
    assert_eq!(code, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let spool = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "spool")
        .unwrap();
    assert_eq!(spool["ok"], false, "{spool}");
    std::fs::remove_file(&data_dir).unwrap();
    std::fs::create_dir(&data_dir).unwrap();
    assert_eq!(http_get(&url).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_object_per_line_with_the_message_fields() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = relay_toml(&up.pki, &up.account_toml(""), "")
        + &format!(
            "\n[store]\ndir = \"{}\"\n",
            dir.path().join("store").display()
        );
    let cfg = file(dir.path(), "c.toml", toml.as_bytes());
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("SMTP2OAUTH_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let mut port = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while port.is_none() {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("relay started");
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if v["message"] == "listening" && v["listener"] == "plain" {
            port = v["address"]
                .as_str()
                .and_then(|a| a.rsplit(':').next())
                .map(str::to_string);
        }
        lines.push(v);
    }
    let port = port.unwrap();
    let r = smtplib(&[
        "--port",
        &port,
        "--user",
        DEVICE_USER,
        "--password",
        DEVICE_PASSWORD,
        "--from",
        MAILBOX,
        "--to",
        "you@example.com",
    ])
    .await;
    assert_eq!(r[0]["ok"], true, "{r:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let delivered = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("a delivered line");
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if v["message"] == "delivered" {
            break v;
        }
        lines.push(v);
    };
    let _ = child.kill();
    let _ = child.wait();
    for key in [
        "queue_id",
        "session",
        "device",
        "account",
        "route",
        "size",
        "recipients",
        "upstream",
    ] {
        assert!(!delivered[key].is_null(), "{key} missing in {delivered}");
    }
    assert_eq!(delivered["level"], "INFO");
    assert_eq!(delivered["device"], DEVICE_USER);
    assert!(
        lines
            .iter()
            .all(|l| l["timestamp"].is_string() && l["level"].is_string())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn health_command_answers_for_a_running_relay() {
    let up = Upstream::start().await;
    let mut relay = Relay::start(&relay_toml(&up.pki, &up.account_toml(""), ""));
    let base = format!("http://{}", relay.addr("admin"));
    let out = run(BIN, &["health".into(), "--url".into(), base.clone()]).await;
    assert_eq!(out.status, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.starts_with("alive: smtp2oauth "),
        "{}",
        out.stdout
    );
    let out = run(
        BIN,
        &[
            "health".into(),
            "--ready".into(),
            "--url".into(),
            base.clone(),
        ],
    )
    .await;
    assert_eq!(out.status, 0, "{}{}", out.stdout, out.stderr);
    // from the config file: the admin address is read from [admin] listen
    let cfg = std::fs::read_to_string(&relay.config).unwrap().replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"{}\"", relay.addr("admin")),
    );
    let cfg_path = file(relay.dir.path(), "health.toml", cfg.as_bytes());
    let out = run(
        BIN,
        &[
            "health".into(),
            "--config".into(),
            cfg_path.display().to_string(),
        ],
    )
    .await;
    assert_eq!(out.status, 0, "{}{}", out.stdout, out.stderr);
    relay.terminate();
    let out = run(BIN, &["health".into(), "--url".into(), base]).await;
    assert_eq!(out.status, 1, "a stopped relay is not healthy");
    assert!(out.stderr.contains("cannot reach"), "{}", out.stderr);
}

//! What an admin reads in the log at the default level: a line for every refusal a device
//! got (failed logins and lockouts at WARN), one per message accepted, one per session when
//! it ends; with no password in them.

use crate::harness::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// Runs smtplib from `source` with `user`/`password` (none: no AUTH) sending from `from`.
async fn send(relay: &Relay, source: &str, login: Option<&str>, from: &str) -> serde_json::Value {
    let port = relay.port("plain").to_string();
    let mut args = vec!["--port", &port, "--source", source, "--from", from];
    args.extend(["--to", "you@example.com", "--body", "hello"]);
    if let Some(password) = login {
        args.extend(["--user", DEVICE_USER, "--password", password]);
    }
    smtplib(&args).await.remove(0)
}

/// The log lines (text format) that contain every one of `needles`.
fn lines_with(relay: &Relay, needles: &[&str]) -> Vec<String> {
    relay
        .logs()
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_string)
        .collect()
}

fn wait_for(relay: &Relay, needles: &[&str]) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(l) = lines_with(relay, needles).pop() {
            return l;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no line with {needles:?} in:\n{}",
            relay.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn default_level_relay(up: &Upstream) -> Relay {
    let toml = with_server(
        &relay_toml(&up.pki, &up.account_toml(""), ""),
        "lockout_after = 3\nlockout_time = \"30s\"",
    );
    Relay::start_env(&toml, &[("RUST_LOG", "info")])
}

#[tokio::test(flavor = "multi_thread")]
async fn every_refusal_and_every_session_is_logged_at_the_default_level() {
    let up = Upstream::start().await;
    let relay = default_level_relay(&up);

    let r = send(&relay, "127.0.0.1", Some(DEVICE_PASSWORD), MAILBOX).await;
    assert_eq!(r["ok"], true, "{r}\n{}", relay.logs());
    let accepted = wait_for(&relay, &["INFO", "message accepted", "queue_id="]);
    assert!(accepted.contains(DEVICE_USER), "{accepted}");
    let ended = wait_for(
        &relay,
        &["INFO", "session ended", "end=\"quit\"", "accepted=1"],
    );
    assert!(ended.contains("peer=127.0.0.1"), "{ended}");
    assert!(ended.contains("tls=none"), "{ended}");
    assert!(ended.contains(&format!("device {DEVICE_USER}")), "{ended}");
    assert!(ended.contains("duration_ms="), "{ended}");

    // A sender the device may not use: 553 5.7.1, logged with the sender.
    let r = send(
        &relay,
        "127.0.0.1",
        Some(DEVICE_PASSWORD),
        "ceo@evil.example",
    )
    .await;
    assert_eq!(r["code"], 553, "{r}");
    let line = wait_for(
        &relay,
        &["INFO", "refused", "command=\"MAIL\"", "553 5.7.1"],
    );
    assert!(line.contains("ceo@evil.example"), "{line}");
    assert!(line.contains(&format!("device {DEVICE_USER}")), "{line}");

    // No AUTH: 530 5.7.0, and the session says who it was not.
    let r = send(&relay, "127.0.0.3", None, MAILBOX).await;
    assert_eq!(r["code"], 530, "{r}");
    let line = wait_for(&relay, &["refused", "530 5.7.0"]);
    assert!(line.contains("not logged in"), "{line}");

    // A wrong password: WARN with the username tried, never the password.
    let r = send(&relay, "127.0.0.2", Some("wrong-horse-battery"), MAILBOX).await;
    assert_eq!(r["code"], 535, "{r}");
    let line = wait_for(&relay, &["WARN", "refused", "command=\"AUTH\"", "535"]);
    assert!(line.contains("login failed: wrong password"), "{line}");
    assert!(
        line.contains(&format!("who=username \"{DEVICE_USER}\"")),
        "{line}"
    );

    // Until the address is locked out: 421 at WARN, and the session ends as a lockout.
    let mut code = serde_json::Value::Null;
    for _ in 0..5 {
        code =
            send(&relay, "127.0.0.2", Some("wrong-horse-battery"), MAILBOX).await["code"].clone();
        if code == 421 {
            break;
        }
    }
    assert_eq!(code, 421, "{}", relay.logs());
    wait_for(&relay, &["WARN", "refused", "421 4.7.0", "127.0.0.2"]);
    wait_for(&relay, &["session ended", "end=\"lockout\"", "127.0.0.2"]);

    let logs = relay.logs();
    assert!(
        !logs.contains("wrong-horse-battery"),
        "a password in the log"
    );
    assert!(!logs.contains(DEVICE_PASSWORD), "a password in the log");
}

/// The shape of a session log line: level, message, and its field names in order.
fn shape(line: &str) -> Option<(String, String, Vec<String>)> {
    let level = ["INFO", "WARN"].into_iter().find(|l| line.contains(l))?;
    let rest = line.split("smtp2oauth_inbound::session_log: ").nth(1)?;
    let message: Vec<&str> = rest.split(' ').take_while(|w| !w.contains('=')).collect();
    let keys = rest
        .split(' ')
        .filter_map(|w| w.split_once('=').map(|(k, _)| k))
        .filter(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        .map(str::to_string)
        .collect();
    Some((level.to_string(), message.join(" "), keys))
}

/// Every session log line shown in docs/deploy.md and docs/devices.md has the shape of a line
/// the relay writes (same level, message and fields), so the examples cannot drift.
#[tokio::test(flavor = "multi_thread")]
async fn the_documented_log_lines_are_the_ones_the_relay_writes() {
    let up = Upstream::start().await;
    let relay = default_level_relay(&up);
    send(&relay, "127.0.0.1", Some(DEVICE_PASSWORD), MAILBOX).await;
    send(
        &relay,
        "127.0.0.1",
        Some(DEVICE_PASSWORD),
        "ceo@evil.example",
    )
    .await;
    send(&relay, "127.0.0.3", None, MAILBOX).await;
    for _ in 0..4 {
        send(&relay, "127.0.0.2", Some("wrong-horse-battery"), MAILBOX).await;
    }
    wait_for(&relay, &["session ended", "end=\"lockout\""]);
    let written: Vec<_> = relay.logs().lines().filter_map(shape).collect();
    let mut checked = 0;
    for doc in ["docs/deploy.md", "docs/devices.md"] {
        let text = std::fs::read_to_string(repo_root().join(doc)).unwrap();
        for example in text.lines().filter_map(shape) {
            assert!(
                written.contains(&example),
                "{doc} shows a line the relay does not write: {example:?}\nwritten: {written:#?}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} examples found");
}

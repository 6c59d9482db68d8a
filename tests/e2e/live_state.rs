//! The live state through the binary: what a device was told, an account's state and its
//! evidence, as the state file (`<store>/state.json`), `smtp2oauth account status`, the metric
//! `smtp2oauth_account_state` and a webhook receiver see them.

use crate::harness::*;
use serde_json::Value;
use smtp2oauth_testkit::Stage;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A webhook receiver: a tiny HTTP server that keeps every JSON body it is posted.
struct Hook {
    url: String,
    events: Arc<Mutex<Vec<Value>>>,
}

impl Hook {
    async fn start() -> Hook {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook/t0ken", listener.local_addr().unwrap());
        let events = Arc::new(Mutex::new(Vec::new()));
        let kept = events.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(receive(stream, kept.clone()));
            }
        });
        Hook { url, events }
    }

    fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    fn named(&self, name: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == name)
            .collect()
    }

    /// Waits until an event named `name` arrived; returns every event so far.
    async fn wait_for(&self, name: &str, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        while self.named(name).is_empty() {
            assert!(
                Instant::now() < deadline,
                "no {name} event; got {:?}",
                self.events()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.events()
    }
}

/// Reads one POST (headers, then Content-Length bytes), keeps its JSON body, answers 204.
async fn receive(mut stream: tokio::net::TcpStream, events: Arc<Mutex<Vec<Value>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let body_at = loop {
        let n = stream.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..body_at]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    while buf.len() < body_at + length {
        let n = stream.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body: Value = serde_json::from_slice(&buf[body_at..body_at + length]).unwrap();
    events.lock().unwrap().push(body);
    let _ = stream
        .write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .await;
}

/// The relay's state file, once `ready` holds for it.
async fn state_when(relay: &Relay, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let path = relay.store().join("state.json");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let state = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
        match state {
            Some(s) if ready(&s) => return s,
            s => assert!(
                Instant::now() < deadline,
                "the state file never showed {what}:\n{s:#?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn account<'a>(state: &'a Value, name: &str) -> &'a Value {
    state["activity"]["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("no account {name} in {state:#}"))
}

fn device<'a>(state: &'a Value, name: &str) -> &'a Value {
    state["activity"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == name)
        .unwrap_or_else(|| panic!("no device {name} in {state:#}"))
}

fn state_of(state: &Value, name: &str) -> String {
    account(state, name)["condition"]["state"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn send(relay: &Relay, from: &str, body: &str) -> Value {
    send_as_device(relay, from, &["--body", body])
        .await
        .remove(0)
}

async fn metrics(relay: &Relay) -> String {
    let url = format!("http://{}/metrics", relay.addr("admin"));
    let out = run("curl", &["-sS".into(), url]).await;
    assert_eq!(out.status, 0, "{}", out.stderr);
    out.stdout
}

async fn cli(relay: &Relay, args: &[&str]) -> Output {
    let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    a.push("--config".into());
    a.push(relay.config.display().to_string());
    run(BIN, &a).await
}

fn with_webhook(toml: &str, hook: &Hook) -> String {
    format!("{toml}\n[notify]\nwebhook_url = \"{}\"\n", hook.url)
}

/// Exchange refuses the account's login with `535 5.7.3`: after that one attempt the account
/// is `degraded` with the reply (state file, `account status`, the metric) and the webhook gets
/// one `account_degraded` event; once the fake accepts again and a message is delivered, the
/// account is `ok` and `account_recovered` arrives.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_login_degrades_the_account_notifies_once_and_recovers() {
    let up = Upstream::start().await;
    let hook = Hook::start().await;
    up.smtp
        .script(Stage::Auth, "535 5.7.3 Authentication unsuccessful", 1000);
    let toml = with_delivery(
        &relay_toml(&up.pki, &up.account_toml(""), ""),
        "retry_initial = \"1h\"",
    );
    let relay = Relay::start(&with_webhook(&toml, &hook));

    let r = send(&relay, MAILBOX, "refused").await;
    // The device waits for the first attempt; a refusal about the account keeps the message
    // and tells the device to try later.
    assert_eq!(r["code"], 451, "{r:?}");
    let state = state_when(&relay, "scanner degraded", |s| {
        state_of(s, "scanner") == "degraded"
    })
    .await;
    let scanner = account(&state, "scanner");
    assert_eq!(scanner["consecutive_failures"], 1, "within one attempt");
    assert_eq!(scanner["condition"]["reply"]["code"], 535);
    assert_eq!(scanner["condition"]["reply"]["status"], "5.7.3");

    let status = cli(&relay, &["account", "status", "scanner"]).await;
    assert!(
        status
            .stdout
            .contains("state:        degraded (refused by the upstream) since"),
        "{status:?}"
    );
    assert!(
        status
            .stdout
            .contains("reply:        535 5.7.3 Authentication unsuccessful"),
        "{status:?}"
    );
    assert!(
        status.stdout.contains("the running relay (pid"),
        "{status:?}"
    );
    let m = metrics(&relay).await;
    assert!(
        m.contains("smtp2oauth_account_state{account=\"scanner\",state=\"degraded\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("smtp2oauth_account_state{account=\"scanner\",state=\"ok\"} 0"),
        "{m}"
    );

    // The console says the same: the API, and the overview in a real browser, problem first
    // with its advice.
    let (code, body) = crate::console::http(&relay, "GET", "/api/v1/accounts", &[]).await;
    assert_eq!(code, 200, "{body}");
    let api: Value = serde_json::from_str(&body).unwrap();
    let a = &api["accounts"][0];
    assert_eq!(a["name"], "scanner", "{api}");
    assert_eq!(a["state"], "degraded", "{api}");
    assert_eq!(a["reply"]["code"], 535, "{api}");
    assert_eq!(a["reply"]["status"], "5.7.3", "{api}");
    assert!(
        !a["advice"].as_str().unwrap_or_default().is_empty(),
        "{api}"
    );
    if crate::console::chromium_installed() {
        let advice = a["advice"].as_str().unwrap().to_string();
        let steps = serde_json::json!([
            {"open": "/"},
            {"expect": "Account scanner"},
            {"expect": "535 5.7.3 Authentication unsuccessful"},
            {"expect": advice},
        ]);
        let report = crate::console::browser(&relay, &steps).await;
        assert_eq!(report["ok"], true, "{report:#}");
    }

    let events = hook
        .wait_for("account_degraded", Duration::from_secs(10))
        .await;
    let degraded = &hook.named("account_degraded")[0];
    assert_eq!(degraded["subject"]["name"], "scanner");
    assert_eq!(degraded["kind"], "raised");
    assert!(
        degraded["summary"].as_str().unwrap().contains("535 5.7.3"),
        "{degraded}"
    );
    // A second refusal is the same problem: no second event.
    send(&relay, MAILBOX, "refused again").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(hook.named("account_degraded").len(), 1, "{events:?}");

    up.smtp.clear_scripts();
    let r = send(&relay, MAILBOX, "delivered").await;
    assert_eq!(r["ok"], true, "{r:?}");
    let state = state_when(&relay, "scanner ok again", |s| {
        state_of(s, "scanner") == "ok"
    })
    .await;
    assert!(!account(&state, "scanner")["last_delivery"].is_null());
    hook.wait_for("account_recovered", Duration::from_secs(10))
        .await;
    assert_eq!(hook.named("account_recovered").len(), 1);
    assert_eq!(hook.named("account_degraded").len(), 1);
    let m = metrics(&relay).await;
    assert!(
        m.contains("smtp2oauth_account_state{account=\"scanner\",state=\"ok\"} 1"),
        "{m}"
    );
}

/// After a device sends, the state file shows when it was last seen, from where and what it
/// was told; a wrong sender (553) becomes its last result and a refused message record with
/// the sender, the reply and advice.
#[tokio::test(flavor = "multi_thread")]
async fn a_device_shows_its_last_result_and_a_wrong_sender_its_refusal() {
    let up = Upstream::start().await;
    let relay = Relay::start(&relay_toml(&up.pki, &up.account_toml(""), ""));
    let r = send(&relay, MAILBOX, "scan").await;
    assert_eq!(r["ok"], true, "{r:?}");
    let state = state_when(&relay, "the device's accepted message", |s| {
        device(s, DEVICE_USER)["since_start"]["accepted"] == 1
    })
    .await;
    let d = device(&state, DEVICE_USER);
    assert!(d["last_seen_ms"].as_u64().unwrap() > 0);
    assert_eq!(d["connection"]["listener"], "plain");
    assert_eq!(d["connection"]["peer"], "127.0.0.1");
    assert_eq!(d["connection"]["tls"], Value::Null);
    assert_eq!(d["last_result"]["reply"]["code"], 250);
    assert_eq!(d["account"], "scanner");

    let r = send(&relay, "ceo@evil.example", "phish").await;
    assert_eq!(r["code"], 553, "{r:?}");
    let state = state_when(&relay, "the 553", |s| {
        device(s, DEVICE_USER)["last_result"]["reply"]["code"] == 553
    })
    .await;
    let d = device(&state, DEVICE_USER);
    assert_eq!(d["last_result"]["reply"]["status"], "5.7.1");
    assert_eq!(d["since_start"]["refused"], 1);
    assert_eq!(d["since_start"]["accepted"], 1);
    let refused: Vec<&Value> = state["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["result"] == "refused")
        .collect();
    assert_eq!(refused.len(), 1, "{state:#}");
    let m = refused[0];
    assert_eq!(m["device"], DEVICE_USER);
    assert_eq!(m["account"], "scanner");
    assert_eq!(m["sender"], "ceo@evil.example");
    assert_eq!(m["peer"], "127.0.0.1");
    assert_eq!(m["reply"]["code"], 553);
    assert!(
        m["advice"].as_str().unwrap().contains("allowed_senders"),
        "{m}"
    );
    // The console's API shows the same device and the refused message.
    let (code, body) = crate::console::http(&relay, "GET", "/api/v1/devices", &[]).await;
    assert_eq!(code, 200, "{body}");
    let api: Value = serde_json::from_str(&body).unwrap();
    let mfp = api["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == DEVICE_USER)
        .unwrap_or_else(|| panic!("{api}"));
    assert!(mfp["last_seen"]["at_ms"].as_u64().unwrap() > 0, "{mfp}");
    assert_eq!(mfp["last_result"]["reply"]["code"], 553, "{mfp}");
    let (code, body) = crate::console::http(
        &relay,
        "GET",
        &format!("/api/v1/messages?device={DEVICE_USER}&result=refused"),
        &[],
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let api: Value = serde_json::from_str(&body).unwrap();
    let msgs = api["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 1, "{api}");
    assert_eq!(msgs[0]["sender"], "ceo@evil.example", "{api}");
    assert_eq!(msgs[0]["reply"]["code"], 553, "{api}");

    // A device that never connected is listed, never seen.
    assert_eq!(device(&state, "ups")["last_seen_ms"], Value::Null);

    let mode = std::fs::metadata(relay.store().join("state.json"))
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .unwrap();
    assert_eq!(mode, 0o600, "the state file names devices and recipients");
    let raw = std::fs::read_to_string(relay.store().join("state.json")).unwrap();
    for secret in [DEVICE_PASSWORD, CLIENT_SECRET] {
        assert!(!raw.contains(secret), "a secret in the state file");
    }
}

/// A restart does not forget that the upstream refused an account: the attempt recorded in
/// the spool makes it `degraded` again at start, with the reply, in the state file, the CLI and
/// the metric, and the webhook hears of it once. Once the relay stops, the CLI says so.
#[tokio::test(flavor = "multi_thread")]
async fn a_restart_remembers_that_an_account_was_refused() {
    let up = Upstream::start().await;
    up.smtp
        .script(Stage::Auth, "535 5.7.3 Authentication unsuccessful", 1000);
    let store = tempfile::tempdir().unwrap();
    // The device does not wait for the attempt: the refusal is recorded in the spool.
    let toml = with_delivery(
        &relay_toml(&up.pki, &up.account_toml(""), ""),
        "wait_for_upstream = \"0s\"\nretry_initial = \"1h\"",
    );
    let mut first = Relay::start_on(&toml, store.path(), "");
    let r = send(&first, MAILBOX, "refused").await;
    assert_eq!(r["ok"], true, "{r:?}");
    assert!(
        first.wait_log("535 5.7.3", Duration::from_secs(20)),
        "{}",
        first.logs()
    );
    first.terminate();

    let hook = Hook::start().await;
    let toml = with_webhook(&toml, &hook);
    let mut relay = Relay::start_on(&toml, store.path(), "");
    let state = state_when(&relay, "scanner degraded after the restart", |s| {
        state_of(s, "scanner") == "degraded"
    })
    .await;
    let scanner = account(&state, "scanner");
    assert_eq!(scanner["condition"]["reply"]["code"], 535);
    assert_eq!(scanner["last_failure"]["reply"]["status"], "5.7.3");
    let recorded = state["messages"].as_array().unwrap();
    assert!(
        recorded
            .iter()
            .any(|m| m["account"] == "scanner" && m["reply"]["code"] == 535),
        "{state:#}"
    );

    let list = cli(&relay, &["account", "list"]).await;
    assert_eq!(list.status, 0, "{list:?}");
    assert!(
        list.stdout
            .contains("degraded (refused by the upstream) since"),
        "{list:?}"
    );
    assert!(
        list.stdout.contains("(state from the running relay"),
        "{list:?}"
    );
    let m = metrics(&relay).await;
    assert!(
        m.contains("smtp2oauth_account_state{account=\"scanner\",state=\"degraded\"} 1"),
        "{m}"
    );
    hook.wait_for("account_degraded", Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        hook.named("account_degraded").len(),
        1,
        "{:?}",
        hook.events()
    );

    relay.terminate();
    let status = cli(&relay, &["account", "status", "scanner"]).await;
    assert!(
        status
            .stdout
            .contains("relay:        the relay is not running; state as of its last run"),
        "{status:?}"
    );
    assert!(status.stdout.contains("degraded"), "{status:?}");
}

/// Without a state file (the relay never ran with this store) the CLI still shows what it
/// can, and says why the state is unknown.
#[tokio::test(flavor = "multi_thread")]
async fn without_a_state_file_the_cli_says_the_relay_never_ran() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml =
        relay_toml(&up.pki, &up.account_toml(""), "") + &store_toml(&dir.path().join("store"), "");
    let cfg = file(dir.path(), "c.toml", toml.as_bytes());
    let out = run(
        BIN,
        &[
            "account".into(),
            "status".into(),
            "scanner".into(),
            "--config".into(),
            cfg.display().to_string(),
        ],
    )
    .await;
    assert_eq!(out.status, 0, "{out:?}");
    assert!(out.stdout.contains("state:        unknown"), "{out:?}");
    assert!(
        out.stdout.contains("has never run with this store"),
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains("sign-in:      app-only: nobody signs in"),
        "{out:?}"
    );
    assert!(
        !dir.path().join("store").exists(),
        "a status query creates nothing"
    );
}

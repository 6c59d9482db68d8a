//! Delegated sign-in end to end: the real binary, the fake identity platform and the fake
//! Exchange, driven by curl (a browser's part: cookies, redirects, forms), by a real headless
//! Chromium (tests/clients/browser_sign_in.py over WebDriver: what curl does not do, such as
//! the Origin header and the Content-Security-Policy, a real browser does) and by the
//! `smtp2oauth account` command.
//!
//! Covered: authorization code + PKCE through the accounts page, with every refusal of a
//! callback that does not belong (missing, forged, replayed, other session) and of a form without
//! its CSRF token; device code through the CLI honouring slow_down; the refresh token kept fresh
//! before expiry and rotated, the rotation surviving a restart; revocation turning into "sign-in
//! needed" with mail kept queued and released by a new sign-in; a wrong master key, a missing key
//! and a modified token file stopping the relay with a clear error; no secret on the page, in
//! the CLI's output, in the trace-level log or in clear in the token file.

use crate::harness::*;
use smtp2oauth_testkit::idp::REVOKED;
use smtp2oauth_testkit::{FakeIdp, IdpConfig, SmtpConfig};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};

const KEY_1: &str = "8f1c3e5a7b9d0f2e4c6a8b0d1f3e5c7a9b1d3f5e7c9a0b2d4f6e8a1c3e5b7d9f";
const KEY_2: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A port that was free a moment ago (the accounts page must listen where the redirect URI
/// points, so it cannot use port 0).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn upstream(redirect: Option<&str>) -> Upstream {
    let redirect = redirect.map(str::to_owned);
    Upstream::start_with(
        move |ic: &mut IdpConfig| {
            ic.public_client = true;
            ic.device_interval = Duration::from_secs(1);
            ic.redirect_uris = redirect.into_iter().collect();
        },
        |_: &mut SmtpConfig| {},
    )
    .await
}

/// An `[[accounts]]` block signing in with `flow`, pointing at the fakes.
fn account(up: &Upstream, flow: &str, extra: &str) -> String {
    format!(
        r#"
[[accounts]]
name = "scanner"
mailbox = "{MAILBOX}"
route = "smtp"
flow = "{flow}"
tenant = "{TENANT}"
client_id = "{CLIENT_ID}"
authority = "{authority}"
smtp_host = "127.0.0.1"
smtp_port = {port}
smtp_tls = "starttls"
ca_file = "{ca}"
{extra}
"#,
        authority = up.idp.authority(),
        port = up.smtp.port(),
        ca = up.pki.ca_pem_path().display(),
    )
}

/// A relay configuration on `store`, with the accounts page on `admin` ("127.0.0.1:0" when
/// there is no browser sign-in). Retries are an hour apart, so mail that goes out after a
/// sign-in went because the sign-in released it.
fn config(up: &Upstream, accounts: &str, admin: &str, store: &Path) -> String {
    let toml = relay_toml(&up.pki, accounts, "")
        .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{admin}\""));
    let toml = with_delivery(
        &toml,
        "wait_for_upstream = \"3s\"\nretry_initial = \"1h\"\nretry_max = \"1h\"",
    );
    format!("{toml}{}", store_toml(store, ""))
}

fn write_config(dir: &Path, toml: &str) -> PathBuf {
    let path = dir.join("smtp2oauth.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// Runs `smtp2oauth <args>` to completion with the master key `key` (None: unset).
async fn cli(args: &[&str], key: Option<&str>) -> Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args).env_remove("SMTP2OAUTH_MASTER_KEY");
    if let Some(k) = key {
        cmd.env("SMTP2OAUTH_MASTER_KEY", k);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("smtp2oauth did not finish")
        .unwrap();
    Output {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `smtp2oauth account login scanner` for a device-code account: reads the code from its
/// output, has the fake approve it (a person typing it), and waits for the command to finish.
async fn device_login(idp: &FakeIdp, config: &Path, key: Option<&str>) -> Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(["account", "login", "scanner", "--config"])
        .arg(config)
        .env_remove("SMTP2OAUTH_MASTER_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(k) = key {
        cmd.env("SMTP2OAUTH_MASTER_KEY", k);
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stdout = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut approved = false;
    while let Ok(Ok(Some(line))) = tokio::time::timeout_at(deadline.into(), lines.next_line()).await
    {
        if let Some(code) = line.split("enter the code: ").nth(1) {
            assert!(idp.approve_device(code.trim()), "unknown code in {line}");
            approved = true;
        }
        stdout.push_str(&line);
        stdout.push('\n');
    }
    assert!(approved, "no code printed:\n{stdout}");
    let out = child.wait_with_output().await.unwrap();
    Output {
        status: out.status.code().unwrap_or(-1),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn send(relay: &Relay, subject: &str) -> serde_json::Value {
    let port = relay.port("plain").to_string();
    smtplib(&[
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
        "--subject",
        subject,
        "--body",
        "scan attached",
    ])
    .await
    .remove(0)
}

/// curl as a browser: a cookie jar, and `extra` arguments. Returns (status, effective URL,
/// body).
async fn browser(jar: &Path, url: &str, extra: &[&str]) -> (u16, String, String) {
    let mut args: Vec<String> = vec![
        "-sS".into(),
        "-b".into(),
        jar.display().to_string(),
        "-c".into(),
        jar.display().to_string(),
        "-w".into(),
        "\n%{http_code} %{url_effective}".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(url.into());
    let out = run("curl", &args).await;
    assert_eq!(out.status, 0, "curl {url}: {}", out.stderr);
    let (body, last) = out.stdout.rsplit_once('\n').unwrap();
    let (code, effective) = last.split_once(' ').unwrap();
    (
        code.parse().unwrap(),
        effective.to_string(),
        body.to_string(),
    )
}

/// The CSRF token in a page's forms.
fn csrf(page: &str) -> String {
    let start = page.find("name=\"csrf\" value=\"").expect("no csrf field") + 19;
    page[start..start + page[start..].find('"').unwrap()].to_string()
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// `smtp2oauth_account_sign_in_required` for the account, as /metrics shows it now.
async fn assert_sign_in_required(relay: &Relay, expected: f64) {
    let m = metrics(relay).await;
    assert_eq!(
        metric(
            &m,
            "smtp2oauth_account_sign_in_required{account=\"scanner\"}"
        ),
        Some(expected),
        "{m}"
    );
}

async fn metrics(relay: &Relay) -> String {
    run(
        "curl",
        &[
            "-sS".into(),
            format!("http://{}/metrics", relay.addr("admin")),
        ],
    )
    .await
    .stdout
}

/// Every secret the fakes handed out or the relay was configured with.
fn secrets(up: &Upstream) -> Vec<String> {
    let mut all = up.idp.issued_tokens();
    all.extend(up.idp.issued_delegated_secrets());
    all.extend([
        KEY_1.to_string(),
        KEY_2.to_string(),
        DEVICE_PASSWORD.to_string(),
    ]);
    all
}

fn assert_no_secret(what: &str, text: &str, secrets: &[String]) {
    assert!(secrets.len() > 3, "nothing to look for");
    for s in secrets {
        assert!(
            !text.contains(s.as_str()),
            "a secret ({}…) appears in {what}",
            &s[..8]
        );
    }
}

async fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn authorization_code_sign_in_through_the_accounts_page() {
    let port = free_port();
    let admin = format!("127.0.0.1:{port}");
    let redirect = format!("http://{admin}/oauth/callback");
    let up = upstream(Some(&redirect)).await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let accounts = account(
        &up,
        "authorization_code",
        &format!("redirect_uri = \"{redirect}\""),
    );
    let relay = Relay::start(&config(&up, &accounts, &admin, &store));
    assert!(relay.logs().contains("needs a sign-in"), "{}", relay.logs());

    // First start: the master key was generated, readable by us only.
    let key_file = store.join("master.key");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(relay.logs().contains("generated the master key"));

    // Mail sent before anyone signed in is accepted and kept.
    let r = send(&relay, "before sign-in").await;
    assert_eq!(r["code"], 250, "{r}");
    assert_eq!(spool_ids(&store, "queue").len(), 1);
    assert!(up.smtp.messages().is_empty());
    assert!(relay.wait_log("the account needs a new sign-in", Duration::from_secs(5)));
    assert_sign_in_required(&relay, 1.0).await;

    // The page shows the state, and a Sign in button.
    let base = format!("http://{admin}");
    let jar = dir.path().join("jar");
    let (code, _, page) = browser(&jar, &format!("{base}/accounts"), &["-L"]).await;
    assert_eq!(code, 200);
    assert!(
        page.contains("sign-in needed") && page.contains("not signed in"),
        "{page}"
    );
    assert!(page.contains(">Sign in</button>"), "{page}");
    let token = csrf(&page);

    // Forms without the session's token, or from another site, are refused.
    let sign_in = format!("{base}/accounts/scanner/sign-in");
    let (code, _, _) = browser(&jar, &sign_in, &["-d", "csrf=forged"]).await;
    assert_eq!(code, 403);
    let (code, _, _) = browser(
        &jar,
        &sign_in,
        &[
            "-d",
            &format!("csrf={token}"),
            "-H",
            "Origin: https://evil.example",
        ],
    )
    .await;
    assert_eq!(code, 403);
    let other_jar = dir.path().join("other-jar");
    let (code, _, _) = browser(&other_jar, &sign_in, &["-d", &format!("csrf={token}")]).await;
    assert_eq!(code, 403, "another browser cannot use this session's token");
    assert!(up.idp.authorize_requests().is_empty());

    // Sign in: the button, the provider's page (which approves), the callback.
    let (code, effective, done) =
        browser(&jar, &sign_in, &["-L", "-d", &format!("csrf={token}")]).await;
    assert_eq!(code, 200, "{done}");
    assert!(effective.starts_with(&redirect), "{effective}");
    assert!(
        done.contains("Signed in") && done.contains(MAILBOX),
        "{done}"
    );
    let asked = &up.idp.authorize_requests()[0];
    assert_eq!(asked["code_challenge_method"], "S256");
    assert_eq!(asked["code_challenge"].len(), 43);
    assert_eq!(asked["redirect_uri"], redirect);
    assert_eq!(
        asked["scope"],
        "https://outlook.office.com/SMTP.Send offline_access"
    );
    assert!(asked["state"].len() >= 32);

    // The queued message goes out at once (the next retry would be an hour away).
    let got = up.smtp.wait_for_messages(1, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 1);
    wait_until("the queue to empty", Duration::from_secs(10), || {
        spool_ids(&store, "queue").is_empty()
    })
    .await;
    assert_sign_in_required(&relay, 0.0).await;
    // The sign-in was acted on once: one redemption of its refresh token, even after the store
    // watcher (every 2 s) has seen the file change.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(up.idp.refresh_tokens_presented().len(), 1);
    let (_, _, page) = browser(&jar, &format!("{base}/accounts"), &[]).await;
    assert!(
        page.contains("valid until") && page.contains("signed in"),
        "{page}"
    );
    assert!(page.contains("Sign in again"), "{page}");

    // Callbacks that do not belong to a sign-in started by this browser are refused.
    let callback = |q: &str| format!("{redirect}?{q}");
    for q in [
        "code=abc",
        "code=abc&state=forged-state-value",
        "error=access_denied",
    ] {
        let (code, _, body) = browser(&jar, &callback(q), &[]).await;
        assert_eq!(code, 400, "{q}: {body}");
        assert!(
            body.contains("does not belong to a sign-in started here"),
            "{body}"
        );
    }
    // A real state, presented by another browser: refused, and used up.
    let token = csrf(&page);
    let out = run(
        "curl",
        &[
            "-sS".into(),
            "-b".into(),
            jar.display().to_string(),
            "-o".into(),
            "/dev/null".into(),
            "-w".into(),
            "%{http_code} %{redirect_url}".into(),
            "-d".into(),
            format!("csrf={token}"),
            sign_in.clone(),
        ],
    )
    .await;
    let (code, location) = out.stdout.split_once(' ').unwrap();
    assert_eq!(code, "303", "{out:?}");
    assert!(location.starts_with(&up.idp.authorize_url()), "{location}");
    let state = location
        .split("state=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_string();
    let (code, _, body) = browser(
        &other_jar,
        &callback(&format!("code=abc&state={state}")),
        &[],
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("another browser session"), "{body}");
    let (code, _, _) = browser(&jar, &callback(&format!("code=abc&state={state}")), &[]).await;
    assert_eq!(code, 400, "a state works once");

    // No secret on the page, in the log, or in clear in the token file.
    let secrets = secrets(&up);
    let (_, _, page) = browser(&jar, &format!("{base}/accounts"), &[]).await;
    assert_no_secret("the accounts page", &page, &secrets);
    assert_no_secret("the callback page", &done, &secrets);
    assert_no_secret("the log", &relay.logs(), &secrets);
    let file = std::fs::read_to_string(store.join("tokens/scanner.token")).unwrap();
    assert!(file.starts_with("smtp2oauth-token v1"), "{file}");
    assert_no_secret("the token file", &file, &secrets);
    let key = std::fs::read_to_string(&key_file).unwrap();
    assert!(
        !relay.logs().contains(key.trim()),
        "the master key is in the log"
    );
    assert!(!page.contains(key.trim()));

    // Sign out from the page: only with the session's token; then the stored sign-in is gone,
    // the cached access token is no longer used, and new mail waits for a new sign-in.
    assert!(page.contains(">Sign out</button>"), "{page}");
    let sign_out = format!("{base}/accounts/scanner/sign-out");
    let (code, _, _) = browser(&jar, &sign_out, &["-d", "csrf=forged"]).await;
    assert_eq!(code, 403);
    let (code, _, _) = browser(
        &other_jar,
        &sign_out,
        &["-d", &format!("csrf={}", csrf(&page))],
    )
    .await;
    assert_eq!(code, 403, "another browser's session");
    assert!(store.join("tokens/scanner.token").exists());
    let (code, _, out) = browser(&jar, &sign_out, &["-d", &format!("csrf={}", csrf(&page))]).await;
    assert_eq!(code, 200, "{out}");
    assert!(
        out.contains("Signed out") && out.contains("not signed in"),
        "{out}"
    );
    assert!(!out.contains(">Sign out</button>"), "{out}");
    assert!(!store.join("tokens/scanner.token").exists());
    let delivered = up.smtp.messages().len();
    let r = send(&relay, "after sign-out").await;
    assert_eq!(r["code"], 250, "{r}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        up.smtp.messages().len(),
        delivered,
        "sent after the sign-out"
    );
    assert_eq!(spool_ids(&store, "queue").len(), 1);
    assert_sign_in_required(&relay, 1.0).await;
}

/// tests/clients/browser_sign_in.py: a headless Chromium, driven through chromedriver, opens
/// `page`, clicks `account`'s Sign in button and waits for `expect`; then opens `then`.
/// Returns the script's JSON report.
async fn chromium_sign_in(
    page: &str,
    account: &str,
    expect: &str,
    then: &str,
) -> serde_json::Value {
    use tokio::io::AsyncReadExt;
    let script = repo_root().join("tests/clients/browser_sign_in.py");
    let mut child = tokio::process::Command::new("python3")
        .arg(script)
        .args(["--page", page, "--account", account, "--expect", expect])
        .args(["--then", then, "--timeout", "120"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s).await;
        s
    });
    let err = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });
    // The script gives up by itself after 120 s and stops the browser; this is a backstop.
    // SIGTERM, not SIGKILL, so that it still stops chromedriver and Chromium.
    if tokio::time::timeout(Duration::from_secs(180), child.wait())
        .await
        .is_err()
    {
        signal(child.id().unwrap(), Signal::TERM);
        if tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
        panic!(
            "browser_sign_in.py did not finish: {}\n{}",
            out.await.unwrap(),
            err.await.unwrap()
        );
    }
    let (out, err) = (out.await.unwrap(), err.await.unwrap());
    serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("browser_sign_in.py: {e}:\n{out}\n{err}"))
}

/// The issue's browser test: a real browser (cookies, a POSTed form with its CSRF token, the
/// redirects through the provider, the page's Content-Security-Policy) signs the account in
/// with one click, and the relay then holds the sign-in.
#[tokio::test(flavor = "multi_thread")]
async fn authorization_code_sign_in_in_a_headless_chromium() {
    if !crate::console::chromium_installed() {
        return;
    }
    let port = free_port();
    let admin = format!("127.0.0.1:{port}");
    let redirect = format!("http://{admin}/oauth/callback");
    let up = upstream(Some(&redirect)).await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let accounts = account(
        &up,
        "authorization_code",
        &format!("redirect_uri = \"{redirect}\""),
    );
    let relay = Relay::start(&config(&up, &accounts, &admin, &store));

    // A scan sent before anyone signed in waits in the queue.
    let r = send(&relay, "before sign-in").await;
    assert_eq!(r["code"], 250, "{r}");
    assert_eq!(spool_ids(&store, "queue").len(), 1);
    assert!(up.smtp.messages().is_empty());

    let accounts_page = format!("http://{admin}/accounts");
    let report = chromium_sign_in(&accounts_page, "scanner", "Signed in", &accounts_page).await;
    assert_eq!(report["ok"], true, "{report:#}");
    eprintln!(
        "Chromium {} signed in, in {} s (browser start included)",
        report["browser"], report["seconds"]
    );
    assert_eq!(report["button"], "Sign in", "{report:#}");
    // The browser landed on the callback, through the provider, and was told it worked.
    let landed = report["url"].as_str().unwrap();
    assert!(landed.starts_with(&format!("{redirect}?code=")), "{landed}");
    let text = report["text"].as_str().unwrap();
    assert!(
        text.contains("Signed in: account scanner") && text.contains(MAILBOX),
        "{text}"
    );
    let asked = up.idp.authorize_requests();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0]["code_challenge_method"], "S256");
    assert_eq!(asked[0]["redirect_uri"], redirect);

    // The relay holds the sign-in: the queued scan goes out with the user's token at once
    // (the next retry would be an hour away)...
    let got = up.smtp.wait_for_messages(1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1);
    wait_until("the queue to empty", Duration::from_secs(15), || {
        spool_ids(&store, "queue").is_empty()
    })
    .await;
    // ...the same browser's accounts page says so...
    let then = report["then_text"].as_str().unwrap();
    assert!(
        then.contains("valid until") && then.contains("Sign in again"),
        "{then}"
    );
    assert!(!then.contains("not signed in"), "{then}");
    // ...and so does the command line, reading the encrypted token store.
    let status = cli(
        &[
            "account",
            "status",
            "scanner",
            "--config",
            &relay.config.display().to_string(),
        ],
        None,
    )
    .await;
    assert_eq!(status.status, 0, "{status:?}");
    assert!(
        status.stdout.contains("sign-in:      signed in"),
        "{}",
        status.stdout
    );

    // Nothing the browser showed holds a secret.
    let secrets = secrets(&up);
    assert_no_secret("the callback page", text, &secrets);
    assert_no_secret("the accounts page", then, &secrets);
}

#[tokio::test(flavor = "multi_thread")]
async fn device_code_login_through_the_cli_honours_slow_down() {
    let up = upstream(None).await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let cfg = write_config(
        dir.path(),
        &config(&up, &account(&up, "device_code", ""), "127.0.0.1:0", &store),
    );
    let cfg_arg = cfg.display().to_string();

    let out = cli(
        &["account", "status", "scanner", "--config", &cfg_arg],
        Some(KEY_1),
    )
    .await;
    assert_eq!(out.status, 1, "{out:?}");
    assert!(out.stdout.contains("not signed in"), "{}", out.stdout);
    assert!(
        !store.join("tokens").exists(),
        "a status query creates nothing"
    );

    // The first poll is answered with slow_down: the next one waits 1 + 5 seconds.
    up.idp.slow_down_next(1);
    let started = Instant::now();
    let out = device_login(&up.idp, &cfg, Some(KEY_1)).await;
    assert_eq!(out.status, 0, "{out:?}");
    assert!(
        out.stdout.contains("https://microsoft.com/devicelogin"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("every 6 s"), "{}", out.stdout);
    assert!(
        out.stdout.contains("signed in: account scanner"),
        "{}",
        out.stdout
    );
    let polls = up.idp.device_polls();
    assert_eq!(polls.len(), 2, "{polls:?}");
    assert!(polls[0] - started >= Duration::from_millis(900));
    assert!(
        polls[1] - polls[0] >= Duration::from_millis(5900),
        "{:?}",
        polls[1] - polls[0]
    );

    let out = cli(
        &["account", "status", "scanner", "--config", &cfg_arg],
        Some(KEY_1),
    )
    .await;
    assert_eq!(out.status, 0, "{out:?}");
    assert!(
        out.stdout.contains("sign-in:      signed in"),
        "{}",
        out.stdout
    );
    let list = cli(&["account", "list", "--config", &cfg_arg], Some(KEY_1)).await;
    assert!(
        list.stdout.contains("device_code") && list.stdout.contains("signed in"),
        "{list:?}"
    );
    let known = secrets(&up);
    for o in [&out, &list] {
        assert_no_secret(
            "the CLI's output",
            &format!("{}{}", o.stdout, o.stderr),
            &known,
        );
    }
    let file = std::fs::read_to_string(store.join("tokens/scanner.token")).unwrap();
    assert_no_secret("the token file", &file, &known);

    // The relay uses the stored sign-in.
    let relay = Relay::start_env(
        &std::fs::read_to_string(&cfg).unwrap(),
        &[("SMTP2OAUTH_MASTER_KEY", KEY_1)],
    );
    let r = send(&relay, "after device login").await;
    assert_eq!(r["code"], 250, "{r}");
    assert_eq!(
        up.smtp
            .wait_for_messages(1, Duration::from_secs(10))
            .await
            .len(),
        1
    );
    assert_no_secret("the log", &relay.logs(), &secrets(&up));
}

#[tokio::test(flavor = "multi_thread")]
async fn refresh_before_expiry_and_rotation_survive_a_restart() {
    let up = upstream(None).await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let toml = config(&up, &account(&up, "device_code", ""), "127.0.0.1:0", &store);
    let cfg = write_config(dir.path(), &toml);
    assert_eq!(device_login(&up.idp, &cfg, Some(KEY_1)).await.status, 0);
    let file = store.join("tokens/scanner.token");
    let signed_in = std::fs::read(&file).unwrap();

    // Access tokens live 6 s: the relay refreshes each one before it expires, with no mail
    // flowing, and each refresh presents the token the previous one rotated in (the fake
    // refuses a rotated one).
    up.idp.set_expires_in(Duration::from_secs(6));
    let mut relay = Relay::start_env(&toml, &[("SMTP2OAUTH_MASTER_KEY", KEY_1)]);
    wait_until("three refreshes", Duration::from_secs(20), || {
        up.idp.refresh_tokens_presented().len() >= 3
    })
    .await;
    assert!(!relay.logs().contains("invalid_grant"), "{}", relay.logs());
    assert_ne!(
        std::fs::read(&file).unwrap(),
        signed_in,
        "the rotated token is stored"
    );
    let r = send(&relay, "with a fresh token").await;
    assert_eq!(r["code"], 250, "{r}");
    assert_eq!(relay.terminate().code(), Some(0));

    // After a restart the relay redeems the latest refresh token, not the one it started with.
    let active = up.idp.active_refresh_tokens();
    assert_eq!(active.len(), 1);
    let presented = up.idp.refresh_tokens_presented().len();
    let relay = Relay::start_env(&toml, &[("SMTP2OAUTH_MASTER_KEY", KEY_1)]);
    wait_until(
        "a refresh after the restart",
        Duration::from_secs(10),
        || up.idp.refresh_tokens_presented().len() > presented,
    )
    .await;
    assert_eq!(up.idp.refresh_tokens_presented()[presented], active[0]);
    let r = send(&relay, "after the restart").await;
    assert_eq!(r["code"], 250, "{r}");
    assert_eq!(
        up.smtp
            .wait_for_messages(2, Duration::from_secs(10))
            .await
            .len(),
        2
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert_no_secret("the token file", &text, &secrets(&up));
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_sign_in_keeps_mail_queued_until_a_new_sign_in() {
    let up = upstream(None).await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let toml = config(&up, &account(&up, "device_code", ""), "127.0.0.1:0", &store);
    let cfg = write_config(dir.path(), &toml);
    assert_eq!(device_login(&up.idp, &cfg, Some(KEY_1)).await.status, 0);
    let relay = Relay::start_env(&toml, &[("SMTP2OAUTH_MASTER_KEY", KEY_1)]);
    let r = send(&relay, "first").await;
    assert_eq!(r["code"], 250, "{r}");
    assert_eq!(
        up.smtp
            .wait_for_messages(1, Duration::from_secs(10))
            .await
            .len(),
        1
    );

    // The user's sessions are revoked (password reset): access and refresh tokens die, and
    // Exchange ends the sessions (including the relay's pooled one) so the next one must log in.
    up.idp.revoke_refresh_tokens(REVOKED);
    up.idp.revoke_all();
    up.smtp.close_connections();
    let r = send(&relay, "second").await;
    assert_eq!(r["code"], 250, "accepted and kept: {r}");
    assert!(relay.wait_log("account needs a new sign-in", Duration::from_secs(10)));
    let logs = relay.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("account needs a new sign-in"))
        .unwrap();
    assert!(
        line.contains("ERROR") && line.contains("AADSTS50173"),
        "{line}"
    );
    assert!(logs.lines().any(|l| l.contains("ERROR") && l.contains("deferred: the account needs a new sign-in")), "{logs}");
    assert_eq!(
        spool_ids(&store, "queue").len(),
        1,
        "the message stays queued"
    );
    assert_eq!(up.smtp.messages().len(), 1);
    assert_sign_in_required(&relay, 1.0).await;
    let (_, page) = {
        let out = run(
            "curl",
            &[
                "-sS".into(),
                format!("http://{}/accounts", relay.addr("admin")),
            ],
        )
        .await;
        (out.status, out.stdout)
    };
    assert!(
        page.contains("sign-in needed") && page.contains("AADSTS50173"),
        "{page}"
    );
    let cfg_arg = cfg.display().to_string();
    let out = cli(
        &["account", "status", "scanner", "--config", &cfg_arg],
        Some(KEY_1),
    )
    .await;
    assert_eq!(out.status, 1);
    assert!(
        out.stdout.contains("sign-in needed") && out.stdout.contains("account login scanner"),
        "{}",
        out.stdout
    );

    // Someone signs in again, from the command line while the relay runs: the relay notices
    // and sends the waiting message without waiting for its next retry.
    assert_eq!(device_login(&up.idp, &cfg, Some(KEY_1)).await.status, 0);
    let got = up.smtp.wait_for_messages(2, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 2);
    wait_until("the queue to empty", Duration::from_secs(10), || {
        spool_ids(&store, "queue").is_empty()
    })
    .await;
    assert_sign_in_required(&relay, 0.0).await;

    // `account logout` from another process while the relay runs: the relay notices (its store
    // watcher looks every 2 s), stops using the token and the upstream session of that sign-in,
    // and new mail waits.
    let out = cli(
        &["account", "logout", "scanner", "--config", &cfg_arg],
        Some(KEY_1),
    )
    .await;
    assert_eq!(out.status, 0, "{}", out.stdout);
    assert!(relay.wait_log(
        "signed out: the account's mail waits",
        Duration::from_secs(6)
    ));
    let r = send(&relay, "after logout").await;
    assert_eq!(r["code"], 250, "{r}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(up.smtp.messages().len(), 2, "sent after the logout");
    assert_eq!(spool_ids(&store, "queue").len(), 1);
    assert_no_secret("the log", &relay.logs(), &secrets(&up));
    assert_no_secret("the accounts page", &page, &secrets(&up));
}

/// `smtp2oauth serve` that is expected to refuse to start: its exit status and stderr.
async fn serve_fails(config: &Path, key: Option<&str>) -> Output {
    let out = cli(&["serve", "--config", &config.display().to_string()], key).await;
    assert_ne!(out.status, 0, "the relay started: {}", out.stderr);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_key_missing_key_and_modified_file_stop_the_relay_with_clear_errors() {
    let up = upstream(None).await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let cfg = write_config(
        dir.path(),
        &config(&up, &account(&up, "device_code", ""), "127.0.0.1:0", &store),
    );
    assert_eq!(device_login(&up.idp, &cfg, Some(KEY_1)).await.status, 0);
    let file = store.join("tokens/scanner.token");
    let original = std::fs::read(&file).unwrap();

    let out = serve_fails(&cfg, Some(KEY_2)).await;
    assert!(
        out.stderr
            .contains("was written with a different master key"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("scanner.token"), "{}", out.stderr);

    let check = cli(
        &["check-config", "--config", &cfg.display().to_string()],
        Some(KEY_2),
    )
    .await;
    assert_eq!(check.status, 1);
    assert!(
        check.stderr.contains("`accounts.0`: ") && check.stderr.contains("different master key"),
        "{}",
        check.stderr
    );

    let out = serve_fails(&cfg, None).await;
    assert!(
        out.stderr.contains("there is no master key"),
        "{}",
        out.stderr
    );
    assert!(
        !store.join("master.key").exists(),
        "no new key replaces the lost one"
    );

    let out = serve_fails(&cfg, Some("not-a-key")).await;
    assert!(
        out.stderr.contains("64 hexadecimal characters"),
        "{}",
        out.stderr
    );

    let mut modified = original.clone();
    let i = modified.len() - 10;
    modified[i] = if modified[i] == b'A' { b'B' } else { b'A' };
    std::fs::write(&file, &modified).unwrap();
    let out = serve_fails(&cfg, Some(KEY_1)).await;
    assert!(
        out.stderr.contains("was modified or damaged"),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read(&file).unwrap(), modified, "never reset");

    // With the right key and the file restored, it starts.
    std::fs::write(&file, &original).unwrap();
    let toml = std::fs::read_to_string(&cfg).unwrap();
    let relay = Relay::start_env(&toml, &[("SMTP2OAUTH_MASTER_KEY", KEY_1)]);
    assert!(relay.logs().contains("token store open"));

    // The key from a file works as well as from the environment.
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, format!("{KEY_1}\n")).unwrap();
    let with_file = toml.replace(
        &format!("dir = \"{}\"", store.display()),
        &format!(
            "dir = \"{}\"\nmaster_key_file = \"{}\"",
            store.display(),
            key_file.display()
        ),
    );
    let cfg2 = dir.path().join("with-key-file.toml");
    std::fs::write(&cfg2, &with_file).unwrap();
    let out = cli(
        &[
            "account",
            "status",
            "scanner",
            "--config",
            &cfg2.display().to_string(),
        ],
        None,
    )
    .await;
    assert_eq!(out.status, 0, "{out:?}");
}

#[tokio::test]
async fn keygen_and_check_config() {
    let a = cli(&["keygen"], None).await;
    let b = cli(&["keygen"], None).await;
    assert_eq!(a.status, 0);
    let key = a.stdout.trim();
    assert_eq!(key.len(), 64);
    assert!(key.bytes().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(key, b.stdout.trim());
    assert!(a.stderr.contains("key id"), "{}", a.stderr);
    assert!(!a.stderr.contains(key));

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[[listeners]]
address = "127.0.0.1:2525"
tls = "none"
allow_insecure_auth = true
[store]
dir = "{}"
[[accounts]]
name = "gmail"
mailbox = "scanner@gmail.com"
provider = "google"
flow = "device_code"
client_id = "x.apps.googleusercontent.com"
"#,
            dir.path().display()
        ),
    )
    .unwrap();
    let out = cli(
        &["check-config", "--config", &cfg.display().to_string()],
        None,
    )
    .await;
    assert_eq!(out.status, 1);
    assert!(
        out.stderr.contains("accounts.0.flow") && out.stderr.contains("Gmail scope"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn device_code_from_the_accounts_page_behind_a_password() {
    let up = upstream(None).await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let admin_password = "Adm1n-page-p@ss";
    let toml = config(&up, &account(&up, "device_code", ""), "127.0.0.1:0", &store).replace(
        "[admin]",
        &format!(
            "[admin]\npassword_hash = \"{}\"",
            password_hash(admin_password)
        ),
    );
    let relay = Relay::start_env(&toml, &[("SMTP2OAUTH_MASTER_KEY", KEY_1)]);
    let base = format!("http://{}", relay.addr("admin"));
    let jar = dir.path().join("jar");

    // The page asks for the password first, and shows nothing about the accounts.
    let (code, _, page) = browser(&jar, &format!("{base}/accounts"), &[]).await;
    assert_eq!(code, 200);
    assert!(
        page.contains("type=\"password\"") && !page.contains(MAILBOX),
        "{page}"
    );
    let token = csrf(&page);
    let (code, _, _) = browser(
        &jar,
        &format!("{base}/accounts/scanner/sign-in"),
        &["-d", &format!("csrf={token}")],
    )
    .await;
    assert_eq!(code, 401, "no sign-in before the password");
    let (code, _, page) = browser(
        &jar,
        &format!("{base}/login"),
        &["-d", &format!("csrf={token}&password=wrong")],
    )
    .await;
    assert_eq!(code, 401);
    assert!(page.contains("Wrong password"), "{page}");
    let (code, _, page) = browser(
        &jar,
        &format!("{base}/login"),
        &[
            "-L",
            "-d",
            // As the login form posts it: back to the page it was shown for.
            &format!("csrf={token}&password={admin_password}&next=%2Faccounts"),
        ],
    )
    .await;
    assert_eq!(code, 200);
    assert!(
        page.contains(MAILBOX) && page.contains("Sign in with a code"),
        "{page}"
    );

    // Sign in with a code: the page shows the code and where to enter it until it is used.
    let token = csrf(&page);
    let (code, _, page) = browser(
        &jar,
        &format!("{base}/accounts/scanner/sign-in"),
        &["-L", "-d", &format!("csrf={token}")],
    )
    .await;
    assert_eq!(code, 200, "{page}");
    let codes = up.idp.device_codes();
    assert_eq!(codes.len(), 1);
    let user_code = &codes[0].0;
    assert!(page.contains(user_code.as_str()), "{page}");
    assert!(page.contains("https://microsoft.com/devicelogin"), "{page}");
    assert!(page.contains("http-equiv=\"refresh\""), "{page}");
    assert!(up.idp.approve_device(user_code));
    let deadline = Instant::now() + Duration::from_secs(15);
    let page = loop {
        let (_, _, page) = browser(&jar, &format!("{base}/accounts"), &[]).await;
        if page.contains("valid until") {
            break page;
        }
        assert!(Instant::now() < deadline, "never signed in:\n{page}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(
        !page.contains(user_code.as_str()),
        "the used code is gone: {page}"
    );
    assert!(page.contains("signed in"), "{page}");
    assert_no_secret("the accounts page", &page, &secrets(&up));
    assert!(!page.contains(admin_password) && !relay.logs().contains(admin_password));
}

#[tokio::test(flavor = "multi_thread")]
async fn authorization_code_through_the_cli_listens_on_the_redirect_port() {
    let port = free_port();
    let redirect = format!("http://127.0.0.1:{port}/oauth/callback");
    let up = upstream(Some(&redirect)).await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let accounts = account(
        &up,
        "authorization_code",
        &format!("redirect_uri = \"{redirect}\""),
    );
    let toml = config(&up, &accounts, &format!("127.0.0.1:{port}"), &store);
    let cfg = write_config(dir.path(), &toml);

    let mut child = tokio::process::Command::new(BIN)
        .args(["account", "login", "scanner", "--config"])
        .arg(&cfg)
        .env("SMTP2OAUTH_MASTER_KEY", KEY_1)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("no URL printed");
        if line.starts_with(&up.idp.authorize_url()) {
            break line;
        }
    };
    // The browser's part: the provider's page approves and redirects to the command.
    let out = run(
        "curl",
        &[
            "-sS".into(),
            "-L".into(),
            "-w".into(),
            "\n%{http_code}".into(),
            url,
        ],
    )
    .await;
    assert!(out.stdout.ends_with("\n200"), "{out:?}");
    assert!(out.stdout.contains("Signed in"), "{}", out.stdout);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    let mut rest = String::new();
    while let Ok(Some(l)) = lines.next_line().await {
        rest.push_str(&l);
    }
    assert!(rest.contains("signed in: account scanner"), "{rest}");
    assert_eq!(up.idp.active_refresh_tokens().len(), 1);

    // With the relay running, the port belongs to its accounts page: the command says so.
    let relay = Relay::start_env(&toml, &[("SMTP2OAUTH_MASTER_KEY", KEY_1)]);
    let out = cli(
        &[
            "account",
            "login",
            "scanner",
            "--config",
            &cfg.display().to_string(),
        ],
        Some(KEY_1),
    )
    .await;
    assert_eq!(out.status, 1);
    assert!(out.stderr.contains("accounts page"), "{}", out.stderr);
    // And the relay uses the sign-in the command stored.
    let r = send(&relay, "signed in from the cli").await;
    assert_eq!(r["code"], 250, "{r}");
    assert_eq!(
        up.smtp
            .wait_for_messages(1, Duration::from_secs(10))
            .await
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delegated_graph_route_sends_with_the_users_mail_send_permission() {
    let up = upstream(None).await;
    let graph = smtp2oauth_testkit::FakeGraph::start(
        up.pki.server_config(),
        MAILBOX,
        up.idp.scope_validator(),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let accounts = account(
        &up,
        "device_code",
        &format!("graph_url = \"{}\"", graph.url()),
    )
    .replace("route = \"smtp\"", "route = \"graph\"");
    let toml = config(&up, &accounts, "127.0.0.1:0", &store);
    let cfg = write_config(dir.path(), &toml);
    assert_eq!(device_login(&up.idp, &cfg, Some(KEY_1)).await.status, 0);
    let relay = Relay::start_env(&toml, &[("SMTP2OAUTH_MASTER_KEY", KEY_1)]);
    let r = send(&relay, "through graph").await;
    assert_eq!(r["code"], 250, "{r}");
    let got = graph.wait_for_messages(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    // The sign-in asked for, and the refresh redeemed, the user's Graph permission.
    let scopes: Vec<String> = up
        .idp
        .issued_tokens()
        .iter()
        .filter_map(|t| up.idp.validate(t).ok().map(|i| i.scope))
        .collect();
    assert!(
        scopes
            .iter()
            .all(|s| s == "https://graph.microsoft.com/Mail.Send offline_access"),
        "{scopes:?}"
    );
    assert_no_secret("the log", &relay.logs(), &secrets(&up));
}

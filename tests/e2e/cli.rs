//! The command line: check-config, hash-password, send-test, the README's example config,
//! configuration from the environment, and a clean exit on SIGTERM.

use crate::harness::*;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn check_config_reports_every_problem_with_its_key_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = file(
        dir.path(),
        "bad.toml",
        br#"
[server]
max_line_length = 10
[[listeners]]
address = "127.0.0.1:2525"
tls = "none"
[[accounts]]
name = "scanner"
mailbox = "scanner@contoso.com"
tenant = "contoso.onmicrosoft.com"
[[devices]]
username = "mfp"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$bad"
account = "missing"
"#,
    );
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "server.max_line_length",
        "accounts.0.client_id",
        "accounts.0.client_secret",
        "devices.0.account",
    ] {
        assert!(err.contains(key), "{key} not reported:\n{err}");
    }
    // a typo is an error naming the key and the file
    let typo = file(dir.path(), "typo.toml", b"[server]\nhostnme = \"x\"\n");
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&typo)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("hostnme") && err.contains("typo.toml"),
        "{err}"
    );
    // the example config is fine
    let ex = repo_root().join("config/smtp2oauth.example.toml");
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&ex)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One problem is one message: a client CA file that is missing and a password hash that is
/// malformed were each reported twice (by validation and again by loading), and each message
/// names the line.
#[test]
fn check_config_reports_each_problem_once_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let pki = smtp2oauth_testkit::TestPki::new();
    let toml = format!(
        "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n\n[[listeners]]\naddress = \"127.0.0.1:2525\"\nclient_ca_file = \"/nonexistent/ca.pem\"\n\n[[accounts]]\nname = \"scanner\"\nmailbox = \"scanner@contoso.com\"\nroute = \"capture\"\n\n[[devices]]\nusername = \"mfp\"\npassword_hash = \"nothash\"\naccount = \"scanner\"\n",
        pki.cert_pem_path().display(),
        pki.key_pem_path().display()
    );
    let cfg = file(dir.path(), "c.toml", toml.as_bytes());
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let path = cfg.display().to_string();
    assert!(err.contains("2 configuration problem(s):"), "{err}");
    assert!(
        err.contains(&format!(
            "  - {path}:7: `listeners.0.client_ca_file`: cannot read /nonexistent/ca.pem"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "  - {path}:16: `devices.0.password_hash`: must be an argon2 hash"
        )),
        "{err}"
    );
}

/// A certificate the relay presents: expired is an error of check-config and serve alike,
/// expiring within 30 days a warning with the date.
#[test]
fn expired_and_expiring_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["relay.test".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 3, 1);
    params.not_after = rcgen::date_time_ymd(2021, 3, 1);
    let expired = params.self_signed(&key).unwrap();
    let cert = file(dir.path(), "cert.pem", expired.pem().as_bytes());
    let key_file = file(dir.path(), "key.pem", key.serialize_pem().as_bytes());
    let toml = format!(
        "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n\n[[listeners]]\naddress = \"127.0.0.1:0\"\ntls = \"implicit\"\n\n[store]\ndir = \"{}\"\n\n[[accounts]]\nname = \"scanner\"\nmailbox = \"scanner@contoso.com\"\nroute = \"capture\"\n",
        cert.display(),
        key_file.display(),
        dir.path().join("store").display()
    );
    let cfg = file(dir.path(), "c.toml", toml.as_bytes());
    let prefix = format!(
        "{}:2: `tls.cert_file`: the certificate in {} expired on 2021-03-01 ",
        cfg.display(),
        cert.display()
    );
    for command in ["check-config", "serve"] {
        let out = Command::new(BIN)
            .args([command, "--config"])
            .arg(&cfg)
            .env("SMTP2OAUTH_ADMIN__LISTEN", "")
            .env("TZ", "UTC")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{command}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&prefix), "{command}: {err}");
        assert!(err.contains(" days ago): renew it"), "{command}: {err}");
    }
    // Ten days left: a warning with the date, and the configuration passes.
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args([
            "-nodes",
            "-days",
            "10",
            "-subj",
            "/CN=relay.test",
            "-keyout",
        ])
        .arg(&key_file)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&cfg)
        .env("SMTP2OAUTH_ADMIN__LISTEN", "")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&format!(
            "warning: {}:2: `tls.cert_file`: the certificate in {} expires on ",
            cfg.display(),
            cert.display()
        )) && err.contains("(in 9 days): renew it before then"),
        "{err}"
    );
}

#[test]
fn hash_password_reads_stdin_and_prints_an_argon2id_phc_string() {
    let h = password_hash("correct horse");
    assert!(h.starts_with("$argon2id$v=19$"), "{h}");
    assert_ne!(
        h,
        password_hash_uncached("correct horse"),
        "salted: two hashes differ"
    );
    let mut child = Command::new(BIN)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "an empty password is refused");
}

fn password_hash_uncached(p: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(p.as_bytes()).unwrap();
    String::from_utf8(child.wait_with_output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn send_test_prints_the_upstream_reply() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = relay_toml(&up.pki, &up.account_toml(""), "")
        + &format!("\n[store]\ndir = \"{}\"\n", dir.path().display());
    let path = file(dir.path(), "c.toml", cfg.as_bytes());
    let out = run(
        BIN,
        &[
            "send-test".into(),
            "--config".into(),
            path.display().to_string(),
            "--account".into(),
            "scanner".into(),
            "--to".into(),
            "admin@example.com".into(),
        ],
    )
    .await;
    assert_eq!(out.status, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("upstream replied: 250 2.0.0 OK"),
        "{}",
        out.stdout
    );
    let m = up.smtp.wait_for_messages(1, Duration::from_secs(5)).await;
    assert_eq!(m[0].rcpt_to, vec!["admin@example.com"]);
    assert!(m[0].data_str().contains("Subject: smtp2oauth test message"));
    // and a failure is explained
    up.smtp.script(smtp2oauth_testkit::Stage::Auth, "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.", 5);
    let out = run(
        BIN,
        &[
            "send-test".into(),
            "--config".into(),
            path.display().to_string(),
            "--account".into(),
            "scanner".into(),
            "--to".into(),
            "admin@example.com".into(),
        ],
    )
    .await;
    assert_eq!(out.status, 1);
    assert!(
        out.stdout.contains("535 5.7.139") && out.stdout.contains("advice:"),
        "{}",
        out.stdout
    );
}

/// send-test asks for the token first and reports the two steps apart, each with its advice:
/// a refused app is fixed in Entra ID, a refused message in Exchange.
#[tokio::test(flavor = "multi_thread")]
async fn send_test_reports_the_token_and_the_delivery_apart() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let send_test = |account_toml: String| {
        let cfg = relay_toml(&up.pki, &account_toml, "") + &store_toml(dir.path(), "");
        let path = file(dir.path(), "c.toml", cfg.as_bytes());
        let args: Vec<String> = [
            "send-test",
            "--config",
            path.to_str().unwrap(),
            "--account",
            "scanner",
            "--to",
            "admin@example.com",
        ]
        .map(String::from)
        .to_vec();
        async move { run(BIN, &args).await }
    };
    // The token endpoint refuses the app: the message is not tried.
    up.idp
        .set_failure(Some(smtp2oauth_testkit::IdpFailure::InvalidClient));
    let out = send_test(up.account_toml("")).await;
    assert_eq!(out.status, 1, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines[1].starts_with("token: FAILED: no token: "),
        "{}",
        out.stdout
    );
    assert!(lines[2].starts_with("  advice: "), "{}", out.stdout);
    assert_eq!(
        lines[3], "delivery: not tried without a token",
        "{}",
        out.stdout
    );
    // The token comes, the SMTP server does not answer: the token is reported good first.
    up.idp.set_failure(None);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let unreachable = closed.local_addr().unwrap().port();
    drop(closed);
    let account = up.account_toml("").replace(
        &format!("smtp_port = {}", up.smtp.port()),
        &format!("smtp_port = {unreachable}"),
    );
    let out = send_test(account).await;
    assert_eq!(out.status, 1, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines[1].starts_with("token: ok: token obtained, valid until "),
        "{}",
        out.stdout
    );
    assert!(lines[2].starts_with("delivery: FAILED: "), "{}", out.stdout);
    assert!(out.stdout.contains("  advice: "), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_example_config_runs_and_captures_a_printer_message() {
    // The README's first command, with ports and store moved so tests can run side by side.
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    let store = store.display().to_string();
    let ex = std::fs::read_to_string(repo_root().join("config/smtp2oauth.example.toml")).unwrap();
    let relay = Relay::start_env(
        &ex,
        &[
            ("SMTP2OAUTH_LISTENERS__0__ADDRESS", "127.0.0.1:0"),
            ("SMTP2OAUTH_LISTENERS__0__NAME", "example-plain"),
            ("SMTP2OAUTH_LISTENERS__1__ADDRESS", "127.0.0.1:0"),
            ("SMTP2OAUTH_LISTENERS__1__NAME", "example-tls"),
            ("SMTP2OAUTH_STORE__DIR", &store),
            ("SMTP2OAUTH_ADMIN__LISTEN", "127.0.0.1:0"),
        ],
    );
    let port = relay.port("example-plain").to_string();
    let r = smtplib(&[
        "--port",
        &port,
        "--user",
        "mfp-3f",
        "--password",
        "scan-to-email",
        "--from",
        "scanner@contoso.com",
        "--to",
        "you@example.com",
        "--body",
        "first scan",
    ])
    .await;
    assert_eq!(r[0]["ok"], true, "{r:?}\n{}", relay.logs());
    let captured: Vec<_> = std::fs::read_dir(dir.path().join("data/capture"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        captured.iter().filter(|n| n.ends_with(".eml")).count(),
        1,
        "{captured:?}"
    );
    assert_eq!(
        captured.iter().filter(|n| n.ends_with(".json")).count(),
        1,
        "{captured:?}"
    );
    // a self-signed certificate was made for the TLS listeners
    assert!(dir.path().join("data/tls/self-signed-cert.pem").exists());
    assert!(relay.logs().contains("generated a self-signed certificate"));
    // the admin server answers health checks
    let out = run(
        "curl",
        &[
            "-sS".into(),
            format!("http://{}/healthz", relay.addr("admin")),
        ],
    )
    .await;
    assert_eq!(out.status, 0, "{}", out.stderr);
    let health: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(health["status"], "ok");
}

#[tokio::test(flavor = "multi_thread")]
async fn configuration_from_the_environment_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store").display().to_string();
    let hash = password_hash(DEVICE_PASSWORD);
    let env = [
        ("SMTP2OAUTH_LISTENERS__0__NAME", "env"),
        ("SMTP2OAUTH_LISTENERS__0__ADDRESS", "127.0.0.1:0"),
        ("SMTP2OAUTH_LISTENERS__0__TLS", "none"),
        ("SMTP2OAUTH_LISTENERS__0__ALLOW_INSECURE_AUTH", "true"),
        ("SMTP2OAUTH_STORE__DIR", store.as_str()),
        // With a file, a new entry comes by index; then its name addresses it too.
        ("SMTP2OAUTH_ACCOUNTS__0__NAME", "scanner"),
        ("SMTP2OAUTH_ACCOUNTS__SCANNER__MAILBOX", MAILBOX),
        ("SMTP2OAUTH_ACCOUNTS__SCANNER__ROUTE", "capture"),
        ("SMTP2OAUTH_DEVICES__0__USERNAME", DEVICE_USER),
        ("SMTP2OAUTH_DEVICES__0__PASSWORD_HASH", hash.as_str()),
        ("SMTP2OAUTH_DEVICES__0__ACCOUNT", "scanner"),
    ];
    // An empty file plus the environment: the harness needs a path, the relay needs nothing in it.
    let relay = Relay::start_env("[store]\n", &env);
    let r = smtplib(&[
        "--port",
        &relay.port("env").to_string(),
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
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_the_relay_cleanly() {
    let up = Upstream::start().await;
    let mut relay = Relay::start(&relay_toml(&up.pki, &up.account_toml(""), ""));
    // an idle session is told the service is going away
    let mut s = tokio::net::TcpStream::connect(relay.addr("plain"))
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    use tokio::io::AsyncReadExt;
    let _ = s.read(&mut buf).await.unwrap();
    let status = relay.terminate();
    assert!(status.success(), "{status:?}");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut rest)).await;
    assert!(
        String::from_utf8_lossy(&rest).starts_with("421 4.3.2"),
        "{:?}",
        String::from_utf8_lossy(&rest)
    );
    assert!(relay.logs().contains("stopped"));
}

#[test]
fn readme_starts_with_the_two_commands_and_ci_runs_the_same_test_command() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let blocks: Vec<&str> = readme
        .split("```")
        .skip(1)
        .step_by(2)
        .take(2)
        .map(|b| b.trim_start_matches("sh").trim())
        .collect();
    assert!(
        blocks[0].contains("serve --config config/smtp2oauth.example.toml"),
        "first command runs the example: {}",
        blocks[0]
    );
    assert!(repo_root().join("config/smtp2oauth.example.toml").exists());
    let test_cmd = blocks[1];
    let ci = std::fs::read_to_string(repo_root().join(".ci/run")).unwrap();
    assert!(
        ci.lines().any(|l| l.trim() == test_cmd),
        "`{test_cmd}` must be what .ci/run runs"
    );
}

//! TLS policy through the real binary: a renewed certificate is served without a restart and
//! without dropping sessions (SIGHUP, or the files changing), bad certificate files stop the
//! relay at start with the reason, a listener can require client certificates, and, in builds
//! with the `legacy-tls` feature, a legacy listener speaks TLS 1.0 to old devices while the
//! default listeners stay on TLS 1.2+.

use crate::harness::*;
use base64::Engine;
use smtp2oauth_testkit::TestPki;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// An SMTP session over implicit TLS, written here so it can be held open across a reload.
struct TlsSmtp {
    s: TlsStream<TcpStream>,
    buf: Vec<u8>,
}

impl TlsSmtp {
    async fn connect(
        addr: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> std::io::Result<(TlsSmtp, String)> {
        let tcp = TcpStream::connect(addr).await?;
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let s = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        let mut c = TlsSmtp { s, buf: Vec::new() };
        let greeting = c.reply().await?;
        Ok((c, greeting))
    }

    async fn reply(&mut self) -> std::io::Result<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            // A reply ends with a line whose fourth byte is a space.
            let text = String::from_utf8_lossy(&self.buf).to_string();
            if let Some(last) = text
                .strip_suffix("\r\n")
                .and_then(|t| t.rsplit("\r\n").next())
                && last.as_bytes().get(3) == Some(&b' ')
            {
                self.buf.clear();
                return Ok(text);
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, self.s.read(&mut chunk))
                .await
                .map_err(|_| std::io::Error::other("no reply in time"))??;
            if n == 0 {
                return Err(std::io::Error::other(format!(
                    "connection closed; got {text:?}"
                )));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.s
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
        self.s.flush().await.unwrap();
        self.reply().await.unwrap()
    }
}

fn auth_plain() -> String {
    let token = base64::engine::general_purpose::STANDARD
        .encode(format!("\0{DEVICE_USER}\0{DEVICE_PASSWORD}"));
    format!("AUTH PLAIN {token}")
}

/// A relay whose certificate is a copy of `up.pki`'s in files the test may overwrite.
fn relay_with_cert_copies(
    up: &Upstream,
    tls_extra: &str,
) -> (Relay, tempfile::TempDir, PathBuf, PathBuf) {
    let certs = tempfile::tempdir().unwrap();
    let cert = file(certs.path(), "cert.pem", up.pki.cert_pem().as_bytes());
    let key = file(certs.path(), "key.pem", up.pki.key_pem().as_bytes());
    let toml = relay_toml(&up.pki, &up.account_toml(""), "")
        .replace(
            &up.pki.cert_pem_path().display().to_string(),
            &cert.display().to_string(),
        )
        .replace(
            &up.pki.key_pem_path().display().to_string(),
            &key.display().to_string(),
        )
        .replace("[tls]\n", &format!("[tls]\n{tls_extra}\n"));
    (Relay::start(&toml), certs, cert, key)
}

/// Replaces a file the way renewal tools do: write a new file, rename it over the old one.
fn replace_file(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn send_message(c: &mut TlsSmtp, subject: &str) {
    assert!(c.cmd(&auth_plain()).await.starts_with("235"));
    assert!(
        c.cmd(&format!("MAIL FROM:<{MAILBOX}>"))
            .await
            .starts_with("250")
    );
    assert!(c.cmd("RCPT TO:<you@example.com>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    let r = c
        .cmd(&format!(
            "From: {MAILBOX}\r\nTo: you@example.com\r\nSubject: {subject}\r\n\r\nScan.\r\n."
        ))
        .await;
    assert!(r.starts_with("250"), "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_serves_a_renewed_certificate_without_dropping_sessions() {
    let up = Upstream::start().await;
    let renewed = TestPki::new();
    let (relay, _certs, cert, key) = relay_with_cert_copies(&up, "reload_interval = \"0s\"");
    let addr = relay.addr("implicit").to_string();

    // A session that started with the old certificate.
    let (mut old, greeting) = TlsSmtp::connect(&addr, up.pki.client_config())
        .await
        .unwrap();
    assert!(greeting.starts_with("220"), "{greeting}");
    assert!(old.cmd("EHLO mfp.test").await.starts_with("250"));

    replace_file(&cert, &renewed.cert_pem());
    replace_file(&key, &renewed.key_pem());
    relay.signal(Signal::HUP);
    assert!(
        relay.wait_log("SIGHUP: TLS certificate reloaded", Duration::from_secs(10)),
        "{}",
        relay.logs()
    );

    // New sessions get the renewed certificate; a client that trusts only the old one fails.
    let (mut new, greeting) = TlsSmtp::connect(&addr, renewed.client_config())
        .await
        .expect("handshake with the renewed certificate");
    assert!(greeting.starts_with("220"));
    assert!(
        TlsSmtp::connect(&addr, up.pki.client_config())
            .await
            .is_err(),
        "the old certificate is still served"
    );

    // The session that began before the reload carries on and its message goes through.
    send_message(&mut old, "sent across a reload").await;
    assert!(new.cmd("EHLO mfp2.test").await.starts_with("250"));
    send_message(&mut new, "sent after the reload").await;
    let msgs = up.smtp.wait_for_messages(2, Duration::from_secs(20)).await;
    assert_eq!(msgs.len(), 2, "{}", up.smtp.transcript().join("\n"));

    // A broken renewal (half-written key) is refused and the last good certificate stays.
    replace_file(&key, "-----BEGIN PRIVATE KEY-----\nAAAA\n");
    relay.signal(Signal::HUP);
    assert!(
        relay.wait_log(
            "SIGHUP: keeping the current certificate",
            Duration::from_secs(10)
        ),
        "{}",
        relay.logs()
    );
    let (_c, greeting) = TlsSmtp::connect(&addr, renewed.client_config())
        .await
        .expect("the last good certificate is still served");
    assert!(greeting.starts_with("220"));
    // The key file's content is not logged.
    assert!(!relay.logs().contains("AAAA"), "{}", relay.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn renewed_files_are_picked_up_without_a_signal() {
    let up = Upstream::start().await;
    let renewed = TestPki::new();
    let (relay, _certs, cert, key) = relay_with_cert_copies(&up, "reload_interval = \"1s\"");
    let addr = relay.addr("implicit").to_string();
    let (mut old, _) = TlsSmtp::connect(&addr, up.pki.client_config())
        .await
        .unwrap();

    // certbot-style: the certificate first, the key a moment later. In between the pair does
    // not match; the relay must keep serving and pick up the pair once it is whole.
    replace_file(&cert, &renewed.cert_pem());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    replace_file(&key, &renewed.key_pem());
    assert!(
        relay.wait_log(
            "certificate files changed: TLS certificate reloaded",
            Duration::from_secs(10)
        ),
        "{}",
        relay.logs()
    );
    assert!(
        TlsSmtp::connect(&addr, renewed.client_config())
            .await
            .is_ok()
    );
    assert!(old.cmd("EHLO mfp.test").await.starts_with("250"));
    send_message(&mut old, "across an automatic reload").await;
}

/// `serve` with bad TLS files exits at once with an error naming the problem and the file.
#[tokio::test(flavor = "multi_thread")]
async fn bad_certificate_files_stop_the_relay_at_start_with_the_reason() {
    let up = Upstream::start().await;
    let other = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let garbage = file(dir.path(), "garbage.pem", b"this is not PEM\n");
    let cert = up.pki.cert_pem_path().display().to_string();
    let key = up.pki.key_pem_path().display().to_string();
    let base = relay_toml(&up.pki, &up.account_toml(""), "");
    let cases = [
        (
            "mismatch",
            base.replace(&key, &other.key_pem_path().display().to_string()),
            "do not belong together",
        ),
        (
            "bad key",
            base.replace(&key, &garbage.display().to_string()),
            "private key file",
        ),
        (
            "bad cert",
            base.replace(&cert, &garbage.display().to_string()),
            "no CERTIFICATE",
        ),
        (
            "bad client CA",
            base.replace(
                "name = \"implicit\"",
                &format!(
                    "name = \"implicit\"\nclient_ca_file = \"{}\"",
                    garbage.display()
                ),
            ),
            "client CA",
        ),
    ];
    for (what, toml, expect) in cases {
        let toml = format!("{toml}{}", store_toml(&dir.path().join(what), ""));
        let cfg = file(dir.path(), &format!("{what}.toml"), toml.as_bytes());
        for sub in ["serve", "check-config"] {
            let out = tokio::time::timeout(
                Duration::from_secs(30),
                run(
                    BIN,
                    &[sub.into(), "--config".into(), cfg.display().to_string()],
                ),
            )
            .await
            .unwrap_or_else(|_| panic!("{what}: {sub} did not exit"));
            assert_ne!(out.status, 0, "{what}: {sub} succeeded");
            let text = format!("{}{}", out.stdout, out.stderr);
            assert!(text.contains(expect), "{what}: {sub}: {text}");
            assert!(
                text.contains("garbage.pem") || text.contains("key.pem"),
                "{what}: {sub} does not name the file: {text}"
            );
        }
    }
}

/// A listener with `client_ca_file` lets in only devices with a certificate from that CA;
/// the relay's other listeners are unaffected. Driven with curl.
#[tokio::test(flavor = "multi_thread")]
async fn a_listener_can_require_client_certificates() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let devices = TestPki::new();
    let (dev_cert, dev_key) = devices.issue_client_cert("mfp-2nd-floor");
    let (other_cert, other_key) = TestPki::new().issue_client_cert("intruder");
    let dev_cert = file(dir.path(), "dev-cert.pem", dev_cert.as_bytes());
    let dev_key = file(dir.path(), "dev-key.pem", dev_key.as_bytes());
    let other_cert = file(dir.path(), "other-cert.pem", other_cert.as_bytes());
    let other_key = file(dir.path(), "other-key.pem", other_key.as_bytes());
    let extra = format!(
        "\n[[listeners]]\nname = \"certs\"\naddress = \"127.0.0.1:0\"\ntls = \"implicit\"\nclient_ca_file = \"{}\"\n",
        devices.ca_pem_path().display()
    );
    let relay = Relay::start(&relay_toml(&up.pki, &up.account_toml(""), &extra));
    assert!(relay.logs().contains("client certificates required"));
    let msg = file(
        dir.path(),
        "m.eml",
        format!("From: {MAILBOX}\r\nTo: you@example.com\r\nSubject: cert\r\n\r\nScan.\r\n")
            .as_bytes(),
    );
    let ca = up.pki.ca_pem_path().display().to_string();
    let user = format!("{DEVICE_USER}:{DEVICE_PASSWORD}");
    let send = |port: u16, cert: Option<(&PathBuf, &PathBuf)>| {
        let mut extra: Vec<String> =
            vec!["--cacert".into(), ca.clone(), "--user".into(), user.clone()];
        if let Some((c, k)) = cert {
            extra.extend([
                "--cert".into(),
                c.display().to_string(),
                "--key".into(),
                k.display().to_string(),
            ]);
        }
        let url = format!("smtps://localhost:{port}");
        let msg = msg.clone();
        async move {
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            curl(&url, &extra, MAILBOX, &["you@example.com"], &msg).await
        }
    };
    let certs = relay.port("certs");
    let ok = send(certs, Some((&dev_cert, &dev_key))).await;
    assert_eq!(ok.status, 0, "{}", ok.stderr);
    let none = send(certs, None).await;
    assert_ne!(none.status, 0, "no client certificate was accepted");
    let wrong = send(certs, Some((&other_cert, &other_key))).await;
    assert_ne!(
        wrong.status, 0,
        "a certificate from another CA was accepted"
    );
    // The ordinary implicit-TLS listener asks for no certificate.
    let plain = send(relay.port("implicit"), None).await;
    assert_eq!(plain.status, 0, "{}", plain.stderr);
    let msgs = up.smtp.wait_for_messages(2, Duration::from_secs(20)).await;
    assert_eq!(msgs.len(), 2);
}

/// rustls listeners refuse TLS 1.0 and 1.1 (checked with OpenSSL's client, which can still
/// offer them).
#[tokio::test(flavor = "multi_thread")]
async fn default_listeners_refuse_tls_1_0_and_1_1() {
    if !required(&["openssl"]) {
        return;
    }
    let up = Upstream::start().await;
    // At the default level: the refused handshake is the admin's only clue.
    let toml = relay_toml(&up.pki, &up.account_toml(""), "");
    let relay = Relay::start_env(&toml, &[("RUST_LOG", "info")]);
    for version in ["-tls1", "-tls1_1"] {
        let out = s_client(relay.port("implicit"), false, version).await;
        assert_eq!(negotiated(&out), None, "{version} was accepted:\n{out}");
    }
    let out = s_client(relay.port("plain"), true, "-tls1").await;
    assert_eq!(
        negotiated(&out),
        None,
        "STARTTLS with TLS 1.0 was accepted:\n{out}"
    );
    // Each failed handshake says what the device offered and what to do, and its session ends
    // as a failed handshake.
    let ended_tls = |logs: &str| {
        logs.lines()
            .filter(|l| l.contains("session ended") && l.contains("end=\"tls failed\""))
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ended_tls(&relay.logs()) < 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = relay.logs();
    let failed: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("TLS handshake failed"))
        .collect();
    assert_eq!(failed.len(), 3, "{logs}");
    for line in failed {
        assert!(
            line.contains("client_offered=\"TLS 1.1 or older\""),
            "{line}"
        );
        assert!(line.contains("tls_profile = \\\"legacy\\\""), "{line}");
        assert!(line.contains("docs/devices.md"), "{line}");
    }
    assert_eq!(ended_tls(&logs), 3, "{logs}");
    let out = s_client(relay.port("implicit"), false, "-tls1_2").await;
    assert_eq!(negotiated(&out).as_deref(), Some("TLSv1.2"), "{out}");
}

/// The protocol s_client negotiated, or None when the handshake failed (s_client prints a
/// session block either way; a failed one has no cipher).
fn negotiated(out: &str) -> Option<String> {
    if out.contains("Cipher is (NONE)") || !out.contains("Cipher is ") {
        return None;
    }
    // TLS 1.3 sessions are printed only once a ticket arrives; the summary line names 1.3.
    if out.contains("New, TLSv1.3, Cipher is ") {
        return Some("TLSv1.3".into());
    }
    out.lines()
        .find_map(|l| l.trim().strip_prefix("Protocol  : "))
        .map(str::to_string)
}

/// `openssl s_client` with old protocol versions allowed (security level 0); returns its
/// output.
async fn s_client(port: u16, starttls: bool, version: &str) -> String {
    let mut args: Vec<String> = vec![
        "s_client".into(),
        "-connect".into(),
        format!("127.0.0.1:{port}"),
        version.into(),
        "-cipher".into(),
        "DEFAULT:@SECLEVEL=0".into(),
    ];
    if starttls {
        args.extend(["-starttls".into(), "smtp".into()]);
    }
    let mut child = tokio::process::Command::new("openssl")
        .args(&args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"QUIT\r\n").await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("s_client finished")
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `tls_profile = "legacy"`: TLS 1.0 for a device that knows nothing newer, through STARTTLS
/// and implicit TLS, checked with `openssl s_client -tls1` and a message sent by curl forced to
/// TLS 1.0.
#[cfg(feature = "legacy-tls")]
#[tokio::test(flavor = "multi_thread")]
async fn legacy_listener_speaks_tls_1_0_to_old_devices() {
    assert!(
        have("openssl") && have("curl"),
        "openssl and curl are needed"
    );
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = "
[[listeners]]
name = \"legacy\"
address = \"127.0.0.1:0\"
tls = \"starttls\"
tls_profile = \"legacy\"

[[listeners]]
name = \"legacy-ssl\"
address = \"127.0.0.1:0\"
tls = \"implicit\"
tls_profile = \"legacy\"
";
    let relay = Relay::start(&relay_toml(&up.pki, &up.account_toml(""), extra));
    assert!(
        relay.logs().contains("legacy TLS profile"),
        "no start-up warning:\n{}",
        relay.logs()
    );

    let out = s_client(relay.port("legacy"), true, "-tls1").await;
    assert_eq!(negotiated(&out).as_deref(), Some("TLSv1"), "{out}");
    let out = s_client(relay.port("legacy-ssl"), false, "-tls1").await;
    assert_eq!(negotiated(&out).as_deref(), Some("TLSv1"), "{out}");
    let out = s_client(relay.port("legacy-ssl"), false, "-tls1_1").await;
    assert_eq!(negotiated(&out).as_deref(), Some("TLSv1.1"), "{out}");
    // Modern clients still get a modern protocol from the legacy listener.
    let out = s_client(relay.port("legacy-ssl"), false, "-tls1_3").await;
    assert_eq!(negotiated(&out).as_deref(), Some("TLSv1.3"), "{out}");

    let msg = file(
        dir.path(),
        "m.eml",
        format!("From: {MAILBOX}\r\nTo: you@example.com\r\nSubject: tls1.0\r\n\r\nOld MFP.\r\n")
            .as_bytes(),
    );
    let ca = up.pki.ca_pem_path().display().to_string();
    let user = format!("{DEVICE_USER}:{DEVICE_PASSWORD}");
    let forced = [
        "--tlsv1.0",
        "--tls-max",
        "1.0",
        "--ciphers",
        "DEFAULT:@SECLEVEL=0",
        "--cacert",
        &ca,
        "--user",
        &user,
    ];
    let starttls_extra: Vec<&str> = forced.iter().copied().chain(["--ssl-reqd"]).collect();
    for (url, extra) in [
        (
            format!("smtp://localhost:{}", relay.port("legacy")),
            starttls_extra.clone(),
        ),
        (
            format!("smtps://localhost:{}", relay.port("legacy-ssl")),
            forced.to_vec(),
        ),
    ] {
        let out = curl(&url, &extra, MAILBOX, &["you@example.com"], &msg).await;
        assert_eq!(out.status, 0, "{url}: {}", out.stderr);
        assert!(out.stderr.contains("TLSv1.0"), "{url}: {}", out.stderr);
    }
    let msgs = up.smtp.wait_for_messages(2, Duration::from_secs(20)).await;
    assert_eq!(msgs.len(), 2);
    assert!(
        relay.wait_log("old protocol version", Duration::from_secs(5)),
        "{}",
        relay.logs()
    );
}

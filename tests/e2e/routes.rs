//! The Graph and smart-host routes and `fallback_route`, end to end: the real binary, real
//! clients (curl, Python's smtplib), and honest fakes (Graph over HTTPS with the test CA, a
//! port-25 style smart host with STARTTLS and client certificates, a DNS server for MX).

use crate::harness::*;
use smtp2oauth_testkit::{FakeDns, FakeGraph, FakeSmtp, GraphFailure, SmtpConfig, Stage, TestPki};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// Graph plus the usual token endpoint and Exchange SMTP fakes.
struct GraphUpstream {
    up: Upstream,
    graph: FakeGraph,
}

impl GraphUpstream {
    async fn start() -> GraphUpstream {
        let up = Upstream::start().await;
        let graph =
            FakeGraph::start(up.pki.server_config(), MAILBOX, up.idp.scope_validator()).await;
        GraphUpstream { up, graph }
    }

    /// An account with `route = "graph"` (plus `extra` keys) pointing at the fakes.
    fn account(&self, extra: &str) -> String {
        format!(
            r#"
[[accounts]]
name = "scanner"
mailbox = "{MAILBOX}"
route = "graph"
tenant = "{TENANT}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
authority = "{authority}"
graph_url = "{graph}"
ca_file = "{ca}"
smtp_host = "127.0.0.1"
smtp_port = {smtp_port}
{extra}
"#,
            authority = self.up.idp.authority(),
            graph = self.graph.url(),
            ca = self.up.pki.ca_pem_path().display(),
            smtp_port = self.up.smtp.port(),
        )
    }

    /// Every secret the relay handled must be absent from its trace-level log.
    fn assert_no_secrets(&self, relay: &Relay) {
        let logs = relay.logs();
        let mut secrets = self.graph.tokens_seen();
        secrets.extend(self.up.idp.issued_tokens());
        assert!(!secrets.is_empty(), "the test saw no token at all");
        secrets.push(CLIENT_SECRET.to_string());
        secrets.push(DEVICE_PASSWORD.to_string());
        for s in secrets {
            assert!(!logs.contains(&s), "a secret appears in the log");
        }
    }
}

async fn send(
    relay: &Relay,
    to: &[&str],
    file: &std::path::Path,
    extra: &[&str],
) -> serde_json::Value {
    let port = relay.port("plain").to_string();
    let mut args = vec![
        "--port",
        &port,
        "--user",
        DEVICE_USER,
        "--password",
        DEVICE_PASSWORD,
        "--from",
        MAILBOX,
    ];
    for t in to {
        args.push("--to");
        args.push(t);
    }
    let f = file.display().to_string();
    args.push("--file");
    args.push(&f);
    args.extend_from_slice(extra);
    smtplib(&args).await.remove(0)
}

/// `bytes` with `header` (a full line) inserted at the end of the header block.
fn with_header(bytes: &[u8], header: &str) -> Vec<u8> {
    let at = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 2;
    [&bytes[..at], header.as_bytes(), &bytes[at..]].concat()
}

const SCAN: &[u8] = b"From: Scanner <scanner@contoso.com>\r\nTo: Alice <alice@example.com>\r\nSubject: scan\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nA scan. Caf\xc3\xa9.\r\n.leading dot\r\n";

#[tokio::test(flavor = "multi_thread")]
async fn graph_sends_the_mime_with_bcc_for_envelope_only_recipients() {
    let g = GraphUpstream::start().await;
    let relay = Relay::start(&relay_toml(&g.up.pki, &g.account(""), ""));
    let dir = tempfile::tempdir().unwrap();
    let f = file(dir.path(), "scan.eml", SCAN);
    let r = send(
        &relay,
        &["alice@example.com", "Hidden@Example.org"],
        &f,
        &[],
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let m = g.graph.wait_for_messages(1, Duration::from_secs(20)).await;
    assert_eq!(m.len(), 1, "{}", relay.logs());
    let m = &m[0];
    assert_eq!(m.mailbox, MAILBOX);
    // Graph delivers to the envelope: the header recipient and the Bcc.
    assert_eq!(
        m.recipients,
        vec!["alice@example.com", "hidden@example.org"]
    );
    // The bytes are the device's, plus our Received header and the Bcc line.
    assert_eq!(
        strip_received(&m.mime),
        &with_header(SCAN, "Bcc: Hidden@Example.org\r\n")[..]
    );
    let req = &g.graph.requests()[0];
    assert_eq!(req.content_type, "text/plain");
    assert_eq!(req.path, format!("/v1.0/users/{MAILBOX}/sendMail"));
    let form = g.up.idp.last_form().unwrap();
    assert_eq!(form["scope"], "https://graph.microsoft.com/.default");
    assert!(relay.wait_log(
        "Accepted by Microsoft Graph (HTTP 202",
        Duration::from_secs(5)
    ));
    g.assert_no_secrets(&relay);
}

#[tokio::test(flavor = "multi_thread")]
async fn graph_does_not_send_to_header_recipients_outside_the_envelope() {
    let g = GraphUpstream::start().await;
    let relay = Relay::start(&relay_toml(&g.up.pki, &g.account(""), ""));
    let dir = tempfile::tempdir().unwrap();
    // A device that sends one copy per recipient, every name in To.
    let msg = b"From: scanner@contoso.com\r\nTo: \"Doe, Alice\" <alice@example.com>, bob@example.com\r\nCc: carol@example.com\r\nSubject: per-recipient copy\r\n\r\nbody\r\n";
    let f = file(dir.path(), "m.eml", msg);
    let out = curl(
        &format!("smtp://{}", relay.addr("plain")),
        &["--user", &format!("{DEVICE_USER}:{DEVICE_PASSWORD}")],
        MAILBOX,
        &["alice@example.com"],
        &f,
    )
    .await;
    assert_eq!(out.status, 0, "{}", out.stderr);
    let m = g.graph.wait_for_messages(1, Duration::from_secs(20)).await;
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].recipients, vec!["alice@example.com"]);
    assert_eq!(
        strip_received(&m[0].mime),
        b"From: scanner@contoso.com\r\nTo: \"Doe, Alice\" <alice@example.com>\r\nSubject: per-recipient copy\r\n\r\nbody\r\n"
    );
    assert!(relay.wait_log("header_recipients_removed", Duration::from_secs(5)));
}

#[tokio::test(flavor = "multi_thread")]
async fn graph_keeps_quoted_printable_soft_line_breaks() {
    let g = GraphUpstream::start().await;
    let relay = Relay::start(&relay_toml(&g.up.pki, &g.account(""), ""));
    let dir = tempfile::tempdir().unwrap();
    let text = "This line is longer than seventy-six characters, so the device folded it with soft breaks. Fa\u{e7}ade.";
    let head = "From: scanner@contoso.com\r\nTo: a@example.com\r\nSubject: qp\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"xx\"\r\n\r\n--xx\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n";
    // Well-formed QP (written with bare LF, as some devices do: the relay stores CRLF).
    let good = format!(
        "{head}This line is longer than seventy-six characters, so the device folded =\nit with soft breaks. Fa=C3=A7ade.\n--xx--\r\n"
    );
    // QP with whitespace after the soft-break `=`, which strict decoders show as "=  ".
    let padded = good.replace("folded =\n", "folded =  \n");
    for (name, msg) in [("good", &good), ("padded", &padded)] {
        let f = file(dir.path(), name, msg.as_bytes());
        let r = send(&relay, &["a@example.com"], &f, &[]).await;
        assert_eq!(r["ok"], true, "{r}");
    }
    let m = g.graph.wait_for_messages(2, Duration::from_secs(20)).await;
    assert_eq!(m.len(), 2, "{}", relay.logs());
    for (msg, sent, reencoded) in [(&m[0], &good, false), (&m[1], &padded, true)] {
        let parts = msg.rendered_text_parts();
        assert_eq!(
            parts,
            vec![text.to_string()],
            "rendered text of {}",
            msg.mime_str()
        );
        if !reencoded {
            // Nothing needed fixing: the MIME is the device's, byte for byte.
            assert_eq!(strip_received(&msg.mime), &crlf(sent.as_bytes())[..]);
        } else {
            assert!(msg.mime_str().contains("Content-Transfer-Encoding: base64"));
        }
    }
    assert!(relay.wait_log("quoted-printable parts re-encoded", Duration::from_secs(5)));
}

#[tokio::test(flavor = "multi_thread")]
async fn graph_429_retry_after_is_honoured() {
    let g = GraphUpstream::start().await;
    let toml = with_delivery(
        &relay_toml(&g.up.pki, &g.account(""), ""),
        "retry_initial = \"100ms\"\nwait_for_upstream = \"5s\"",
    );
    let relay = Relay::start(&toml);
    g.graph.fail_next(GraphFailure::throttled(3), 1);
    let dir = tempfile::tempdir().unwrap();
    let f = file(dir.path(), "m.eml", SCAN);
    let r = send(&relay, &["alice@example.com"], &f, &[]).await;
    // Throttled: the device is told the message is queued.
    assert_eq!(r["ok"], true, "{r}");
    assert!(r["reply"].as_str().unwrap().contains("queued"), "{r}");
    let m = g.graph.wait_for_messages(1, Duration::from_secs(20)).await;
    assert_eq!(m.len(), 1, "{}", relay.logs());
    let reqs = g.graph.requests();
    assert_eq!(
        reqs.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![429, 202]
    );
    let waited = reqs[1].at - reqs[0].at;
    // retry_initial is 100 ms: only Graph's Retry-After can explain a 3 s wait.
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(8),
        "second request after {waited:?}"
    );
    assert!(relay.logs().contains("pausing all its deliveries"));
}

#[tokio::test(flavor = "multi_thread")]
async fn graph_401_gets_one_new_token_and_a_403_for_the_app_keeps_the_message() {
    let g = GraphUpstream::start().await;
    let relay = Relay::start(&relay_toml(&g.up.pki, &g.account(""), ""));
    let dir = tempfile::tempdir().unwrap();
    let f = file(dir.path(), "m.eml", SCAN);
    // A revoked token: refused once, then a new one works.
    g.graph.fail_next(
        GraphFailure::new(
            401,
            "InvalidAuthenticationToken",
            "Access token has expired or is not yet valid.",
        ),
        1,
    );
    let r = send(&relay, &["alice@example.com"], &f, &[]).await;
    assert_eq!(r["ok"], true, "{r}");
    assert!(r["reply"].as_str().unwrap().contains("delivered"), "{r}");
    assert_eq!(g.graph.messages().len(), 1);
    assert_eq!(g.up.idp.tokens_issued(), 2, "one refresh after the 401");

    g.graph.fail_next(
        GraphFailure::new(
            403,
            "ErrorAccessDenied",
            "Access is denied. Check credentials and try again.",
        ),
        1,
    );
    let r = send(&relay, &["alice@example.com"], &f, &[]).await;
    // The app's permission is our account's problem, not the message's: the device hears
    // 451 4.7.0 with Graph's words, and the relay keeps the message.
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["code"], 451, "{r}");
    let text = r["message"].as_str().unwrap();
    assert!(
        text.starts_with("4.7.0 ")
            && text.contains("5.7.1")
            && text.contains("ErrorAccessDenied: Access is denied"),
        "{text}"
    );
    assert!(
        relay.wait_log("Mail.Send", Duration::from_secs(5)),
        "advice in the log"
    );
    assert_eq!(spool_ids(&relay.store(), "queue").len(), 1, "kept");
    // The permission is granted (Graph accepts again): the kept message goes out.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while g.graph.messages().len() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(g.graph.messages().len(), 2, "{}", relay.logs());
    g.assert_no_secrets(&relay);
}

#[tokio::test(flavor = "multi_thread")]
async fn graph_only_account_refuses_too_large_mail_with_552_naming_the_limit() {
    let g = GraphUpstream::start().await;
    let relay = Relay::start(&relay_toml(&g.up.pki, &g.account(""), ""));
    let limit = 3 * 1024 * 1024 - 64 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let mut big =
        b"From: scanner@contoso.com\r\nTo: a@example.com\r\nSubject: big\r\n\r\n".to_vec();
    while big.len() < limit + 10_000 {
        big.extend_from_slice(&[b'x'; 998]);
        big.extend_from_slice(b"\r\n");
    }
    let f = file(dir.path(), "big.eml", &big);
    // smtplib announces SIZE=: refused at MAIL.
    let r = send(&relay, &["a@example.com"], &f, &[]).await;
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["code"], 552, "{r}");
    assert!(
        r["message"].as_str().unwrap().contains(&format!(
            "5.3.4 Message size exceeds fixed maximum message size ({limit} bytes)"
        )),
        "{r}"
    );
    // Without SIZE=: refused at the end of DATA.
    let r = send(&relay, &["a@example.com"], &f, &["--no-size"]).await;
    assert_eq!(r["code"], 552, "{r}");
    // curl sees the limit in EHLO.
    let small = file(dir.path(), "s.eml", SCAN);
    let out = curl(
        &format!("smtp://{}", relay.addr("plain")),
        &["--user", &format!("{DEVICE_USER}:{DEVICE_PASSWORD}")],
        MAILBOX,
        &["alice@example.com"],
        &small,
    )
    .await;
    assert!(
        out.stderr.contains(&format!("< 250-SIZE {limit}")),
        "{}",
        out.stderr
    );
    assert!(g.graph.requests().len() <= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn smtp_falls_back_to_graph_on_535_5_7_139() {
    let g = GraphUpstream::start().await;
    let account = g.up.account_toml(&format!(
        "fallback_route = \"graph\"\ngraph_url = \"{}\"",
        g.graph.url()
    ));
    let relay = Relay::start(&relay_toml(&g.up.pki, &account, ""));
    g.up.smtp.script(
        Stage::Auth,
        "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information.",
        1,
    );
    let dir = tempfile::tempdir().unwrap();
    let f = file(dir.path(), "m.eml", SCAN);
    let r = send(&relay, &["alice@example.com"], &f, &[]).await;
    assert_eq!(r["ok"], true, "{r}");
    let m = g.graph.wait_for_messages(1, Duration::from_secs(20)).await;
    assert_eq!(m.len(), 1, "{}", relay.logs());
    assert!(g.up.smtp.messages().is_empty());
    let logs = relay.logs();
    assert!(logs.contains("trying the fallback"), "{logs}");
    assert!(
        logs.contains("Set-CASMailbox"),
        "the 535 5.7.139 advice is logged"
    );
    // The SMTP route is skipped for a while: the next message goes straight to Graph.
    let connections = g.up.smtp.connections();
    let r = send(&relay, &["alice@example.com"], &f, &[]).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(
        g.graph
            .wait_for_messages(2, Duration::from_secs(20))
            .await
            .len(),
        2
    );
    assert_eq!(g.up.smtp.connections(), connections);
    // Two scopes, two token caches: outlook for SMTP, graph for the fallback.
    let scopes: Vec<String> =
        g.up.idp
            .issued_tokens()
            .iter()
            .filter_map(|t| g.up.idp.validate(t).ok().map(|i| i.scope))
            .collect();
    assert!(scopes.contains(&"https://graph.microsoft.com/.default".to_string()));
    assert!(scopes.contains(&"https://outlook.office365.com/.default".to_string()));
    g.assert_no_secrets(&relay);
}

#[tokio::test(flavor = "multi_thread")]
async fn graph_sends_mail_too_large_for_it_through_the_smtp_fallback() {
    let g = GraphUpstream::start().await;
    let relay = Relay::start(&relay_toml(
        &g.up.pki,
        &g.account("fallback_route = \"smtp\""),
        "",
    ));
    let dir = tempfile::tempdir().unwrap();
    let mut big =
        b"From: scanner@contoso.com\r\nTo: a@example.com\r\nSubject: big\r\n\r\n".to_vec();
    while big.len() < 4 * 1024 * 1024 {
        big.extend_from_slice(&[b'y'; 998]);
        big.extend_from_slice(b"\r\n");
    }
    let f = file(dir.path(), "big.eml", &big);
    let r = send(&relay, &["a@example.com"], &f, &[]).await;
    assert_eq!(r["ok"], true, "{r}");
    let m =
        g.up.smtp
            .wait_for_messages(1, Duration::from_secs(30))
            .await;
    assert_eq!(m.len(), 1, "{}", relay.logs());
    assert_eq!(strip_received(&m[0].data), &big[..big.len() - 2]);
    assert!(g.graph.requests().is_empty(), "Graph was never asked");
    assert!(relay.logs().contains("trying the fallback"));
}

// ---------------------------------------------------------------------------------------------
// Smart host

/// The DER of the first PEM block.
fn pem_to_der(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let b64: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

fn smarthost_account(pki: &TestPki, keys: &str) -> String {
    format!(
        r#"
[[accounts]]
name = "scanner"
mailbox = "{MAILBOX}"
route = "smarthost"
ca_file = "{ca}"
{keys}
"#,
        ca = pki.ca_pem_path().display()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn smarthost_follows_mx_preference_and_falls_back_to_the_next_host() {
    let pki = TestPki::new();
    let mx = FakeSmtp::start(SmtpConfig::smarthost(
        pki.server_config_for(&["mx2.contoso.test"], false),
    ))
    .await;
    let dns = FakeDns::start().await;
    // The preferred host's address has nothing listening on the port: the next one is used.
    dns.add_mx("contoso.test", 20, "mx2.contoso.test");
    dns.add_mx("contoso.test", 10, "mx1.contoso.test");
    dns.add_a("mx1.contoso.test", Ipv4Addr::new(127, 0, 0, 2));
    dns.add_a("mx2.contoso.test", Ipv4Addr::new(127, 0, 0, 1));
    let account = smarthost_account(
        &pki,
        &format!(
            "mx_domain = \"contoso.test\"\nsmarthost_port = {}\ndns_servers = [\"{}\"]",
            mx.port(),
            dns.addr()
        ),
    );
    let relay = Relay::start(&relay_toml(&pki, &account, ""));
    let dir = tempfile::tempdir().unwrap();
    let f = file(dir.path(), "scan.eml", SCAN);
    let r = send(&relay, &["alice@example.com", "bcc@example.org"], &f, &[]).await;
    assert_eq!(r["ok"], true, "{r}");
    let m = mx.wait_for_messages(1, Duration::from_secs(20)).await;
    assert_eq!(m.len(), 1, "{}", relay.logs());
    // Envelope and bytes unchanged (no Bcc header: SMTP has an envelope).
    assert_eq!(m[0].mail_from, MAILBOX);
    assert_eq!(m[0].rcpt_to, vec!["alice@example.com", "bcc@example.org"]);
    assert_eq!(strip_received(&m[0].data), &SCAN[..SCAN.len() - 2]);
    assert!(
        m[0].tls,
        "STARTTLS with a verified certificate for mx2.contoso.test"
    );
    assert_eq!(m[0].auth_user, "", "no AUTH");
    let q = dns.queries();
    let a1 = q
        .iter()
        .position(|(n, t)| n == "mx1.contoso.test" && *t == 1);
    let a2 = q
        .iter()
        .position(|(n, t)| n == "mx2.contoso.test" && *t == 1);
    assert!(
        q.iter().any(|(n, t)| n == "contoso.test" && *t == 15),
        "{q:?}"
    );
    assert!(a1.is_some() && a1 < a2, "preference 10 before 20: {q:?}");
    assert!(relay.logs().contains("trying the next"));
}

#[tokio::test(flavor = "multi_thread")]
async fn smarthost_presents_the_client_certificate_a_connector_requires() {
    let pki = TestPki::new();
    let host = FakeSmtp::start(SmtpConfig::smarthost(
        pki.server_config_for(&["127.0.0.1"], true),
    ))
    .await;
    let (cert, key) = pki.issue_client_cert("scanner.contoso.com");
    let dir = tempfile::tempdir().unwrap();
    let cert_file = file(dir.path(), "client.pem", cert.as_bytes());
    let key_file = file(dir.path(), "client.key", key.as_bytes());
    let with_cert = smarthost_account(
        &pki,
        &format!(
            "smarthost_host = \"127.0.0.1\"\nsmarthost_port = {}\ntls_client_cert_file = \"{}\"\ntls_client_key_file = \"{}\"",
            host.port(),
            cert_file.display(),
            key_file.display()
        ),
    );
    let relay = Relay::start(&relay_toml(&pki, &with_cert, ""));
    let f = file(dir.path(), "scan.eml", SCAN);
    let r = send(&relay, &["alice@example.com"], &f, &[]).await;
    assert_eq!(r["ok"], true, "{r}");
    let m = host.wait_for_messages(1, Duration::from_secs(20)).await;
    assert_eq!(m.len(), 1, "{}", relay.logs());
    let der = pem_to_der(&cert);
    assert_eq!(m[0].client_cert.as_deref(), Some(&der[..]));
    assert!(
        !relay.logs().contains(key.lines().nth(1).unwrap()),
        "the key never reaches the log"
    );

    // Without the certificate the connector refuses the handshake: the message stays queued.
    let without = smarthost_account(
        &pki,
        &format!(
            "smarthost_host = \"127.0.0.1\"\nsmarthost_port = {}",
            host.port()
        ),
    );
    let relay = Relay::start(&with_delivery(
        &relay_toml(&pki, &without, ""),
        "wait_for_upstream = \"10s\"",
    ));
    let r = send(&relay, &["alice@example.com"], &f, &[]).await;
    assert!(r["reply"].as_str().unwrap().contains("queued"), "{r}");
    assert!(
        relay.wait_log("deferred", Duration::from_secs(10)),
        "{}",
        relay.logs()
    );
    assert_eq!(host.messages().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn smarthost_tls_required_refuses_a_host_without_starttls_and_opportunistic_sends() {
    let pki = TestPki::new();
    let mut cfg = SmtpConfig::smarthost(pki.server_config());
    cfg.tls = smtp2oauth_testkit::UpstreamTls::None;
    let host = FakeSmtp::start(cfg).await;
    let dir = tempfile::tempdir().unwrap();
    let f = file(dir.path(), "scan.eml", SCAN);
    let keys = format!(
        "smarthost_host = \"127.0.0.1\"\nsmarthost_port = {}",
        host.port()
    );

    let required = Relay::start(&with_delivery(
        &relay_toml(&pki, &smarthost_account(&pki, &keys), ""),
        "wait_for_upstream = \"10s\"",
    ));
    let started = Instant::now();
    let r = send(&required, &["alice@example.com"], &f, &[]).await;
    assert!(r["reply"].as_str().unwrap().contains("queued"), "{r}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(required.wait_log("does not offer STARTTLS", Duration::from_secs(5)));
    assert!(host.messages().is_empty(), "nothing went out in clear text");

    let opportunistic = Relay::start(&relay_toml(
        &pki,
        &smarthost_account(&pki, &format!("{keys}\nsmarthost_tls = \"opportunistic\"")),
        "",
    ));
    let r = send(&opportunistic, &["alice@example.com"], &f, &[]).await;
    assert_eq!(r["ok"], true, "{r}");
    let m = host.wait_for_messages(1, Duration::from_secs(20)).await;
    assert_eq!(m.len(), 1);
    assert!(!m[0].tls);
}

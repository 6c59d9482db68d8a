//! Integration tests of the upstream routes over real sockets on 127.0.0.1.
//!
//! Why this file exists: `SmtpRoute` is the relay's only way out to Exchange Online, and the
//! things that go wrong there (certificates, a revoked token, pipelining, per-recipient
//! refusals, size limits, a slow or vanishing server, a token endpoint that is down) can only be
//! shown against a peer that speaks the protocol strictly. These tests drive the route against
//! the testkit fakes (`FakeIdp` for tokens, `FakeSmtp` for an Exchange-like submission server,
//! `TestPki` for certificates) through the public API only, and check three things for every
//! case: what arrived upstream (byte for byte), what the server saw on the wire (its
//! transcript and counters), and what the route reports back, the upstream's reply kept whole
//! and the classification into permanent and temporary failures that decides whether a scan
//! bounces. `CaptureRoute` is covered at the end.
//!
//! assertions state the expected behaviour.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use smtp2oauth_proto::{DeliveryError, EnhancedStatus, Reply, Stage};
use smtp2oauth_testkit::Stage as At;
use smtp2oauth_testkit::{
    AuthFailureStyle, FakeIdp, FakeSmtp, IdpConfig, IdpFailure, SmtpConfig, TestPki, UpstreamTls,
};
use smtp2oauth_tokens::{
    CacheOptions, ClientCredential, ClientCredentialsGrant, HttpOptions, Secret, TokenCache,
    TokenSource, http_client,
};
use smtp2oauth_upstream::{
    CaptureRoute, DeliveryReport, Message, Route, SaslMechanism, SmtpRoute, SmtpRouteConfig,
    TlsMode, client_config,
};
use tempfile::TempDir;

mod support;

const MAILBOX: &str = "relay@contoso.example";
const ACCOUNT: &str = "contoso";
const SENDER: &str = "scanner@contoso.example";
const SCOPE: &str = "https://outlook.office365.com/.default";
/// Generous for a loopback peer, short enough that a hang fails the test quickly.
const TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Helpers

/// A fake identity platform, a fake upstream, and the relay-side pieces pointed at them.
struct Env {
    pki: TestPki,
    idp: FakeIdp,
    smtp: FakeSmtp,
    tokens: Arc<TokenCache>,
    dir: TempDir,
}

impl Env {
    /// A route trusting the test CA, in the TLS mode that matches the fake.
    fn route(&self, tls: TlsMode) -> SmtpRoute {
        self.route_with(tls, |_| {})
    }

    fn route_with(&self, tls: TlsMode, adjust: impl FnOnce(&mut SmtpRouteConfig)) -> SmtpRoute {
        let tls_config = client_config(Some(self.pki.ca_pem_path())).expect("client TLS config");
        let mut cfg = route_config(self.smtp.port(), tls, tls_config);
        adjust(&mut cfg);
        SmtpRoute::new(cfg, self.tokens.clone())
    }

    fn message(&self, id: &str, body: &[u8], recipients: &[&str]) -> Message {
        message_in(self.dir.path(), id, body, recipients)
    }
}

/// Starts the fakes; `adjust` tunes the upstream's configuration (Exchange defaults otherwise).
async fn env_with(adjust: impl FnOnce(&mut SmtpConfig)) -> Env {
    let pki = TestPki::new();
    let idp = FakeIdp::start(IdpConfig::default()).await;
    let mut cfg = SmtpConfig::microsoft(pki.server_config(), MAILBOX, idp.validator());
    // The mailbox has Send As rights on the scanner's address (the messages' sender).
    cfg.send_as = Some(vec![MAILBOX.into(), SENDER.into()]);
    adjust(&mut cfg);
    let smtp = FakeSmtp::start(cfg).await;
    let tokens = token_cache(&idp);
    let dir = TempDir::new().expect("temp dir");
    Env {
        pki,
        idp,
        smtp,
        tokens,
        dir,
    }
}

async fn env() -> Env {
    env_with(|_| {}).await
}

/// A token cache for the client-credentials grant against the fake IdP, as the relay builds it.
fn token_cache(idp: &FakeIdp) -> Arc<TokenCache> {
    let grant = ClientCredentialsGrant {
        token_url: idp.token_url(),
        client_id: idp.client_id(),
        credential: ClientCredential::Secret(Secret::new(
            IdpConfig::default().client_secret.expect("default secret"),
        )),
        scope: SCOPE.into(),
    };
    let http = http_client(&HttpOptions::default()).expect("http client");
    Arc::new(TokenCache::new(
        ACCOUNT,
        grant,
        http,
        CacheOptions::default(),
    ))
}

fn route_config(port: u16, tls: TlsMode, tls_config: Arc<rustls::ClientConfig>) -> SmtpRouteConfig {
    SmtpRouteConfig {
        account: ACCOUNT.into(),
        mailbox: MAILBOX.into(),
        host: "127.0.0.1".into(),
        port,
        tls,
        tls_config,
        auth: SaslMechanism::Xoauth2,
        helo_name: "relay.test".into(),
        connect_timeout: TIMEOUT,
        command_timeout: TIMEOUT,
        data_timeout: TIMEOUT,
        // A new session per message: these tests count connections and logins per delivery.
        // The pool has its own tests (pool.rs in this directory).
        max_idle: 0,
        idle_timeout: Duration::ZERO,
    }
}

/// Writes `body` as the message's data file in `dir` and builds its envelope.
fn message_in(dir: &Path, id: &str, body: &[u8], recipients: &[&str]) -> Message {
    let data_path = dir.join(format!("{id}.msg"));
    std::fs::write(&data_path, body).expect("write message file");
    Message {
        id: id.into(),
        account: ACCOUNT.into(),
        device: "scanner-1".into(),
        sender: SENDER.into(),
        recipients: recipients.iter().map(|r| r.to_string()).collect(),
        data_path,
        size: body.len() as u64,
        eight_bit: false,
        smtputf8: false,
        received_at_ms: 1_700_000_000_000,
    }
}

/// Delivers with a hard outer limit, so a route that hangs fails the test instead of stalling it.
async fn deliver(route: &dyn Route, msg: &Message) -> Result<DeliveryReport, DeliveryError> {
    tokio::time::timeout(Duration::from_secs(20), route.deliver(msg))
        .await
        .expect("delivery did not finish within 20 s")
}

/// The transcript's client lines (without the "[n] C: " prefix).
fn client_lines(smtp: &FakeSmtp) -> Vec<String> {
    lines_of(smtp, "C: ")
}

/// The transcript's server lines (without the "[n] S: " prefix).
fn server_lines(smtp: &FakeSmtp) -> Vec<String> {
    lines_of(smtp, "S: ")
}

fn lines_of(smtp: &FakeSmtp, marker: &str) -> Vec<String> {
    smtp.transcript()
        .iter()
        .filter_map(|l| l.split_once("] ").map(|(_, rest)| rest))
        .filter_map(|rest| rest.strip_prefix(marker))
        .map(str::to_string)
        .collect()
}

fn count_commands(smtp: &FakeSmtp, verb: &str) -> usize {
    client_lines(smtp)
        .iter()
        .filter(|l| l.to_ascii_uppercase().starts_with(verb))
        .count()
}

fn wire(reply: &Reply) -> String {
    String::from_utf8(reply.to_wire()).expect("reply is UTF-8")
}

fn status(class: u8, subject: u16, detail: u16) -> Option<EnhancedStatus> {
    Some(EnhancedStatus::new(class, subject, detail))
}

fn unwrap_rejected(result: Result<DeliveryReport, DeliveryError>) -> (Stage, Reply) {
    match result {
        Err(DeliveryError::Rejected { stage, reply, .. }) => (stage, reply),
        other => panic!("expected Rejected, got {other:?}"),
    }
}

/// A self-signed certificate marked CA:TRUE for 127.0.0.1 and localhost (what
/// `openssl req -x509` produces), as PEM, plus a server TLS config presenting it.
fn self_signed_ca_true(cn: &str) -> (String, Arc<rustls::ServerConfig>) {
    let key = KeyPair::generate().expect("generate key");
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("certificate parameters");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).expect("self-sign");
    let chain = vec![CertificateDer::from(cert.der().to_vec())];
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .expect("certificate and key match");
    (cert.pem(), Arc::new(server))
}

/// A port on 127.0.0.1 with nothing listening.
async fn closed_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    port
}

// ---------------------------------------------------------------------------------------------
// 1. STARTTLS + XOAUTH2, bytes exact

#[tokio::test]
async fn starttls_xoauth2_delivers_the_bytes_exactly() {
    let e = env().await;
    let route = e.route(TlsMode::Starttls);
    // Dot lines (including a lone "." that would end an unstuffed message), 8-bit UTF-8, and a
    // last line without CRLF (the route must complete it; the fake strips exactly that CRLF).
    let body: &[u8] = "Subject: Scan \u{2013} Gr\u{fc}\u{df}e\r\n\
                       From: scanner@contoso.example\r\n\
                       \r\n\
                       .one leading dot\r\n\
                       ..two leading dots\r\n\
                       .\r\n\
                       ..\r\n\
                       caf\u{e9} \u{20ac}100 \u{1f5a8}\r\n\
                       \r\n\
                       last line without CRLF"
        .as_bytes();
    let rcpts = ["a@example.net", "b@example.net", "c@example.net"];
    let mut msg = e.message("m1", body, &rcpts);
    msg.eight_bit = true;

    let report = deliver(&route, &msg).await.expect("delivery succeeds");

    let got = e.smtp.messages();
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(m.data, body, "stored:\n{}", m.data_str());
    assert_eq!(m.mail_from, SENDER);
    assert_eq!(m.rcpt_to, rcpts);
    assert!(m.tls, "the message must travel inside TLS");
    assert_eq!(m.auth_user, MAILBOX);
    let params: Vec<&str> = m.mail_params.split_whitespace().collect();
    assert!(params.contains(&"BODY=8BITMIME"), "{}", m.mail_params);
    let size = format!("SIZE={}", body.len());
    assert!(params.contains(&size.as_str()), "{}", m.mail_params);

    // The report carries the upstream's own final reply, whole.
    let final_line = server_lines(&e.smtp)
        .into_iter()
        .find(|l| l.starts_with("250 2.0.0 OK <"))
        .expect("the fake's final 250 in the transcript");
    assert_eq!(wire(&report.reply), format!("{final_line}\r\n"));
    assert_eq!(report.reply.code(), 250);
    assert_eq!(report.reply.status(), status(2, 0, 0));
    assert_eq!(report.accepted, rcpts);
    assert!(report.rejected.is_empty());

    let t = e.smtp.transcript();
    assert!(
        t.iter().any(|l| l.ends_with("TLS established (STARTTLS)")),
        "{t:#?}"
    );
    let clients = client_lines(&e.smtp);
    let starttls = clients
        .iter()
        .position(|l| l == "STARTTLS")
        .expect("STARTTLS sent");
    let auth = clients
        .iter()
        .position(|l| l == "AUTH XOAUTH2 [redacted]")
        .expect("AUTH XOAUTH2 with an initial response");
    assert!(starttls < auth, "AUTH before STARTTLS: {clients:#?}");
    assert_eq!(
        clients.last().map(String::as_str),
        Some("QUIT"),
        "{clients:#?}"
    );
    assert_eq!((e.smtp.auth_successes(), e.smtp.auth_failures()), (1, 0));
    assert_eq!(e.idp.token_requests(), 1);
}

#[tokio::test]
async fn a_body_ending_in_crlf_is_sent_as_is_and_the_token_is_reused() {
    let e = env().await;
    let route = e.route(TlsMode::Starttls);
    let body = b"Subject: plain ascii\r\n\r\nline 1\r\n.\r\nline 3\r\n";
    let msg = e.message("m1", body, &["a@example.net"]);
    deliver(&route, &msg).await.expect("first delivery");
    // The last line ends in a lone "." without CRLF: it must be stuffed, then completed.
    let tricky = b"Subject: t\r\n\r\nx\r\n.";
    let msg2 = e.message("m2", tricky, &["a@example.net"]);
    deliver(&route, &msg2).await.expect("second delivery");

    let got = e.smtp.messages();
    assert_eq!(got.len(), 2);
    // The fake drops the CRLF that belongs to the terminating CRLF.CRLF.
    assert_eq!(got[0].data, &body[..body.len() - 2]);
    assert_eq!(got[1].data, tricky);
    // Not eight_bit: no BODY=8BITMIME.
    assert!(
        !got[0].mail_params.contains("BODY="),
        "{}",
        got[0].mail_params
    );
    // Two connections, one token: the cache served the second delivery.
    assert_eq!(e.smtp.connections(), 2);
    assert_eq!(e.idp.token_requests(), 1);
    assert_eq!(e.smtp.auth_successes(), 2);
}

#[tokio::test]
async fn a_large_body_survives_chunking_and_dot_stuffing() {
    let e = env().await;
    let route = e.route(TlsMode::Starttls);
    // ~600 KiB of CRLF lines, a third of them starting with a dot, lengths varying so that CR/LF
    // pairs and leading dots fall on every offset, including the route's 256 KiB read steps.
    let mut body = Vec::new();
    let mut i = 0usize;
    while body.len() < 600 * 1024 {
        if i.is_multiple_of(3) {
            body.push(b'.');
        }
        body.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, i % 97));
        body.extend_from_slice(b"\r\n");
        i += 1;
    }
    // A line break exactly across the first read step's end with a dot right after it, and a
    // CR/LF pair split by the second step's end.
    let at = 256 * 1024;
    body[at - 1] = b'\r';
    body[at] = b'\n';
    body[at + 1] = b'.';
    let at = 512 * 1024;
    body[at - 2] = b'\r';
    body[at - 1] = b'\n';
    body[at] = b'.';
    let msg = e.message("big", &body, &["a@example.net"]);

    deliver(&route, &msg).await.expect("delivery succeeds");

    let got = e.smtp.messages();
    assert_eq!(got.len(), 1);
    let expected = body.strip_suffix(b"\r\n").unwrap_or(&body);
    assert_eq!(got[0].data.len(), expected.len());
    assert!(got[0].data == expected, "body changed in transit");
}

#[tokio::test]
async fn smtputf8_is_requested_for_an_internationalised_envelope() {
    let e = env().await;
    let route = e.route(TlsMode::Starttls);
    let mut msg = e.message(
        "u1",
        b"Subject: x\r\n\r\nhi\r\n",
        &["j\u{f6}rg@b\u{fc}ro.example"],
    );
    msg.smtputf8 = true;
    msg.eight_bit = true;

    let report = deliver(&route, &msg).await.expect("delivery succeeds");

    assert_eq!(
        report.accepted,
        vec!["j\u{f6}rg@b\u{fc}ro.example".to_string()]
    );
    let got = e.smtp.messages();
    assert_eq!(got.len(), 1);
    let params: Vec<&str> = got[0].mail_params.split_whitespace().collect();
    assert!(params.contains(&"SMTPUTF8"), "{}", got[0].mail_params);
    assert_eq!(
        got[0].rcpt_to,
        vec!["j\u{f6}rg@b\u{fc}ro.example".to_string()]
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Implicit TLS and plain text

#[tokio::test]
async fn implicit_tls_delivers() {
    let e = env_with(|c| c.tls = UpstreamTls::Implicit).await;
    let route = e.route(TlsMode::Implicit);
    let msg = e.message(
        "i1",
        b"Subject: implicit\r\n\r\nbody\r\n",
        &["a@example.net"],
    );

    let report = deliver(&route, &msg).await.expect("delivery succeeds");

    assert_eq!(report.reply.code(), 250);
    let got = e.smtp.messages();
    assert_eq!(got.len(), 1);
    assert!(got[0].tls);
    assert_eq!(got[0].data, b"Subject: implicit\r\n\r\nbody");
    let t = e.smtp.transcript();
    assert!(
        t.iter().any(|l| l.ends_with("TLS established (implicit)")),
        "{t:#?}"
    );
    assert_eq!(count_commands(&e.smtp, "STARTTLS"), 0);
    assert_eq!(
        route.target(),
        format!("127.0.0.1:{} (implicit)", e.smtp.port())
    );
}

#[tokio::test]
async fn plain_mode_delivers_without_tls() {
    let e = env_with(|c| {
        c.tls = UpstreamTls::None;
        c.pki = None;
    })
    .await;
    let route = e.route(TlsMode::None);
    let msg = e.message("p1", b"Subject: plain\r\n\r\nbody\r\n", &["a@example.net"]);

    let report = deliver(&route, &msg).await.expect("delivery succeeds");

    assert_eq!(report.accepted, vec!["a@example.net".to_string()]);
    let got = e.smtp.messages();
    assert_eq!(got.len(), 1);
    assert!(!got[0].tls);
    assert_eq!(got[0].auth_user, MAILBOX);
    assert_eq!(count_commands(&e.smtp, "STARTTLS"), 0);
}

#[tokio::test]
async fn starttls_mode_never_authenticates_in_clear_when_starttls_is_missing() {
    // A server (or a man in the middle) that does not offer STARTTLS but would take AUTH in
    // clear: the route must give up, not send the token unencrypted.
    let e = env_with(|c| {
        c.tls = UpstreamTls::None;
        c.pki = None;
    })
    .await;
    let route = e.route(TlsMode::Starttls);
    let msg = e.message("s1", b"x\r\n", &["a@example.net"]);

    let err = deliver(&route, &msg).await.expect_err("must refuse");

    assert!(matches!(err, DeliveryError::Tls { .. }), "{err:?}");
    assert!(!err.is_permanent());
    assert_eq!(
        count_commands(&e.smtp, "AUTH"),
        0,
        "{:#?}",
        e.smtp.transcript()
    );
    assert_eq!(e.idp.token_requests(), 0, "no token needed without TLS");
    assert!(e.smtp.messages().is_empty());
}

// ---------------------------------------------------------------------------------------------
// 3. Trust

#[tokio::test]
async fn the_configured_ca_is_trusted() {
    let e = env().await;
    let tls = client_config(Some(e.pki.ca_pem_path())).expect("config");
    let route = SmtpRoute::new(
        route_config(e.smtp.port(), TlsMode::Starttls, tls),
        e.tokens.clone(),
    );
    let msg = e.message("t1", b"x\r\n", &["a@example.net"]);
    deliver(&route, &msg).await.expect("delivery succeeds");
    assert_eq!(e.smtp.messages().len(), 1);

    // By name too: the certificate covers localhost.
    let tls = client_config(Some(e.pki.ca_pem_path())).expect("config");
    let mut cfg = route_config(e.smtp.port(), TlsMode::Starttls, tls);
    cfg.host = "localhost".into();
    let by_name = SmtpRoute::new(cfg, e.tokens.clone());
    deliver(&by_name, &msg)
        .await
        .expect("delivery by name succeeds");
    assert_eq!(e.smtp.messages().len(), 2);
}

#[tokio::test]
async fn web_pki_alone_refuses_the_test_certificate() {
    let e = env().await;
    let tls = client_config(None).expect("config");
    let route = SmtpRoute::new(
        route_config(e.smtp.port(), TlsMode::Starttls, tls),
        e.tokens.clone(),
    );
    let msg = e.message("t2", b"x\r\n", &["a@example.net"]);

    let err = deliver(&route, &msg)
        .await
        .expect_err("untrusted certificate");

    assert!(matches!(err, DeliveryError::Tls { .. }), "{err:?}");
    assert!(!err.is_permanent());
    let reply = err.reply();
    assert_eq!(reply.code(), 451);
    assert_eq!(reply.status(), status(4, 7, 5));
    assert_eq!(count_commands(&e.smtp, "AUTH"), 0);
    assert_eq!(e.idp.token_requests(), 0);
    assert!(e.smtp.messages().is_empty());
}

#[tokio::test]
async fn a_self_signed_ca_true_certificate_in_ca_file_is_pinned() {
    let (cert_pem, server_tls) = self_signed_ca_true("smtp.self-signed.test");
    let e = env_with(|c| c.pki = Some(server_tls)).await;
    let ca_file = e.dir.path().join("self-signed.pem");
    std::fs::write(&ca_file, &cert_pem).expect("write pem");
    let tls = client_config(Some(&ca_file)).expect("config");
    let route = SmtpRoute::new(
        route_config(e.smtp.port(), TlsMode::Starttls, tls),
        e.tokens.clone(),
    );
    let msg = e.message("t3", b"pinned\r\n", &["a@example.net"]);

    deliver(&route, &msg)
        .await
        .expect("the pinned certificate is accepted");

    let got = e.smtp.messages();
    assert_eq!(got.len(), 1);
    assert!(got[0].tls);
}

#[tokio::test]
async fn a_different_self_signed_certificate_is_not_trusted() {
    let (_, server_tls) = self_signed_ca_true("smtp.self-signed.test");
    let (other_pem, _) = self_signed_ca_true("smtp.self-signed.test");
    let e = env_with(|c| c.pki = Some(server_tls)).await;
    let ca_file = e.dir.path().join("other.pem");
    std::fs::write(&ca_file, &other_pem).expect("write pem");
    let tls = client_config(Some(&ca_file)).expect("config");
    let route = SmtpRoute::new(
        route_config(e.smtp.port(), TlsMode::Starttls, tls),
        e.tokens.clone(),
    );
    let msg = e.message("t4", b"x\r\n", &["a@example.net"]);

    let err = deliver(&route, &msg).await.expect_err("wrong pin");

    assert!(matches!(err, DeliveryError::Tls { .. }), "{err:?}");
    assert!(!err.is_permanent());
    assert_eq!(count_commands(&e.smtp, "AUTH"), 0);
    assert!(e.smtp.messages().is_empty());
}

// ---------------------------------------------------------------------------------------------
// 4 and 5. Authentication failures and the cached-token retry

#[tokio::test]
async fn google_style_refusal_is_acknowledged_and_kept_whole() {
    let e = env_with(|c| {
        c.failure_style = AuthFailureStyle::Google;
        // The token is valid but belongs to another mailbox: the server refuses it.
        c.mailbox = "someone-else@contoso.example".into();
    })
    .await;
    let route = e.route(TlsMode::Starttls);
    let msg = e.message("g1", b"x\r\n", &["a@example.net"]);

    let (stage, reply) = unwrap_rejected(deliver(&route, &msg).await);

    assert_eq!(stage, Stage::Auth);
    assert_eq!(reply.code(), 535);
    assert_eq!(reply.status(), status(5, 7, 8));
    assert_eq!(reply.lines().len(), 2, "{reply:?}");
    assert_eq!(
        reply.lines()[0],
        "Username and Password not accepted. Learn more at"
    );
    assert_eq!(
        reply.lines()[1].trim_start(),
        "https://support.google.com/mail/?p=BadCredentials"
    );
    assert!(reply.is_permanent());
    // The challenge was answered with an empty line (not "*", not another AUTH).
    let clients = client_lines(&e.smtp);
    let auth = clients
        .iter()
        .position(|l| l == "AUTH XOAUTH2 [redacted]")
        .expect("AUTH sent");
    assert_eq!(
        clients.get(auth + 1).map(String::as_str),
        Some(""),
        "{clients:#?}"
    );
    let t = e.smtp.transcript();
    assert!(!t.iter().any(|l| l.contains("non-empty line")), "{t:#?}");
    // A token fetched for this attempt is not retried.
    assert_eq!(e.idp.token_requests(), 1);
    assert_eq!(e.smtp.auth_failures(), 1);
    assert_eq!(count_commands(&e.smtp, "MAIL"), 0);
    assert!(e.smtp.messages().is_empty());
}

#[tokio::test]
async fn a_revoked_cached_token_is_replaced_once() {
    let e = env().await;
    let route = e.route(TlsMode::Starttls);
    let msg = e.message("r1", b"first\r\n", &["a@example.net"]);
    deliver(&route, &msg).await.expect("first delivery");
    assert_eq!(e.idp.token_requests(), 1);

    e.idp.revoke_all();
    let msg2 = e.message("r2", b"second\r\n", &["a@example.net"]);
    deliver(&route, &msg2)
        .await
        .expect("second delivery after a token refresh");

    assert_eq!(e.idp.token_requests(), 2);
    assert_eq!(e.smtp.auth_failures(), 1);
    assert_eq!(e.smtp.auth_successes(), 2);
    let got = e.smtp.messages();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].data, b"second");
    // The retry happened on the same connection.
    assert_eq!(e.smtp.connections(), 2);
    assert_eq!(got[1].connection_id, 2);
}

#[tokio::test]
async fn a_revoked_cached_token_is_replaced_once_with_google_style_refusals() {
    let e = env_with(|c| c.failure_style = AuthFailureStyle::Google).await;
    let route = e.route(TlsMode::Starttls);
    deliver(&route, &e.message("r1", b"first\r\n", &["a@example.net"]))
        .await
        .expect("first delivery");
    e.idp.revoke_all();

    deliver(&route, &e.message("r2", b"second\r\n", &["a@example.net"]))
        .await
        .expect("second delivery after a token refresh");

    assert_eq!(e.idp.token_requests(), 2);
    assert_eq!(e.smtp.auth_failures(), 1);
    assert_eq!(e.smtp.messages().len(), 2);
}

#[tokio::test]
async fn a_refused_cached_token_is_retried_only_once() {
    let e = env().await;
    let route = e.route(TlsMode::Starttls);
    deliver(&route, &e.message("r1", b"first\r\n", &["a@example.net"]))
        .await
        .expect("first delivery");
    // From now on the server refuses every token.
    e.smtp.script(
        At::Auth,
        "535 5.7.3 Authentication unsuccessful [scripted]",
        5,
    );

    let (stage, reply) =
        unwrap_rejected(deliver(&route, &e.message("r2", b"x\r\n", &["a@example.net"])).await);

    assert_eq!(stage, Stage::Auth);
    assert_eq!(reply.code(), 535);
    assert_eq!(reply.status(), status(5, 7, 3));
    assert_eq!(e.idp.token_requests(), 2, "one replacement token, no more");
    assert_eq!(e.smtp.auth_failures(), 2);
    assert_eq!(e.smtp.messages().len(), 1);
}

#[tokio::test]
async fn a_freshly_fetched_token_that_is_refused_is_not_retried() {
    let e = env().await;
    e.smtp.script(
        At::Auth,
        "535 5.7.3 Authentication unsuccessful [SN4PR0601CA0001.namprd06.prod.outlook.com]",
        5,
    );
    let route = e.route(TlsMode::Starttls);
    let msg = e.message("f1", b"x\r\n", &["a@example.net"]);

    let (stage, reply) = unwrap_rejected(deliver(&route, &msg).await);

    assert_eq!(stage, Stage::Auth);
    assert_eq!(reply.code(), 535);
    assert_eq!(reply.status(), status(5, 7, 3));
    assert_eq!(
        reply.text(),
        "Authentication unsuccessful [SN4PR0601CA0001.namprd06.prod.outlook.com]"
    );
    assert_eq!(e.idp.token_requests(), 1);
    assert_eq!(e.smtp.auth_failures(), 1);
    assert_eq!(count_commands(&e.smtp, "AUTH"), 1);
    assert_eq!(count_commands(&e.smtp, "MAIL"), 0);
    // The refused token was dropped from the cache: the next delivery fetches a new one.
    e.smtp.clear_scripts();
    deliver(&route, &e.message("f2", b"y\r\n", &["a@example.net"]))
        .await
        .expect("a new token works");
    assert_eq!(e.idp.token_requests(), 2);
}

#[tokio::test]
async fn a_revoked_token_with_the_token_endpoint_down_is_a_token_error() {
    let e = env().await;
    let route = e.route(TlsMode::Starttls);
    deliver(&route, &e.message("r1", b"first\r\n", &["a@example.net"]))
        .await
        .expect("first delivery");
    e.idp.revoke_all();
    e.idp.set_failure(Some(IdpFailure::Unavailable));

    let err = deliver(&route, &e.message("r2", b"x\r\n", &["a@example.net"]))
        .await
        .expect_err("no usable token");

    assert!(matches!(err, DeliveryError::Token { .. }), "{err:?}");
    assert!(!err.is_permanent());
    assert_eq!(err.reply().code(), 454);
    assert_eq!(e.idp.token_requests(), 2);
    assert_eq!(
        e.smtp.auth_failures(),
        1,
        "one refused AUTH, no second attempt"
    );
    assert_eq!(e.smtp.messages().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// OAUTHBEARER (RFC 7628)

/// An upstream that speaks only the standard mechanism, like many generic OAuth mail servers.
async fn oauthbearer_env(adjust: impl FnOnce(&mut SmtpConfig)) -> Env {
    env_with(|c| {
        c.xoauth2 = false;
        c.oauthbearer = true;
        adjust(c);
    })
    .await
}

fn oauthbearer_route(e: &Env) -> SmtpRoute {
    e.route_with(TlsMode::Starttls, |c| {
        c.auth = SaslMechanism::Oauthbearer;
        // A name, so the TLS handshake carries it (SNI) and the fake holds host= to it.
        c.host = "localhost".into();
    })
}

#[tokio::test]
async fn oauthbearer_delivers_with_the_server_name_and_port_in_the_initial_response() {
    let e = oauthbearer_env(|_| {}).await;
    let route = oauthbearer_route(&e);
    let body = b"Subject: scan\r\n\r\nA scan.\r\n";

    let report = deliver(&route, &e.message("o1", body, &["a@example.net"]))
        .await
        .expect("delivery succeeds");

    assert_eq!(report.reply.code(), 250);
    let got = e.smtp.messages();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, b"Subject: scan\r\n\r\nA scan.");
    assert_eq!(got[0].auth_user, MAILBOX, "a= names the account's mailbox");
    assert!(got[0].tls);
    let servers = server_lines(&e.smtp);
    assert!(
        servers.iter().any(|l| l == "250-AUTH LOGIN OAUTHBEARER"),
        "{servers:#?}"
    );
    let clients = client_lines(&e.smtp);
    let starttls = clients
        .iter()
        .position(|l| l == "STARTTLS")
        .expect("STARTTLS");
    let auth = clients
        .iter()
        .position(|l| l == "AUTH OAUTHBEARER [redacted]")
        .expect("AUTH OAUTHBEARER with an initial response");
    assert!(starttls < auth, "{clients:#?}");
    assert_eq!(count_commands(&e.smtp, "AUTH"), 1, "{clients:#?}");
    assert_eq!((e.smtp.auth_successes(), e.smtp.auth_failures()), (1, 0));
    assert_eq!(e.idp.token_requests(), 1);
}

#[tokio::test]
async fn oauthbearer_refusal_is_acknowledged_with_0x01_and_the_final_reply_kept_whole() {
    // The token is valid but the server serves another mailbox: RFC 7628's error challenge.
    let e = oauthbearer_env(|c| c.mailbox = "someone-else@contoso.example".into()).await;
    let route = oauthbearer_route(&e);

    let (stage, reply) =
        unwrap_rejected(deliver(&route, &e.message("o2", b"x\r\n", &["a@example.net"])).await);

    assert_eq!(stage, Stage::Auth);
    assert_eq!(
        wire(&reply),
        "535 5.7.8 Authentication credentials invalid\r\n"
    );
    assert_eq!(reply.status(), status(5, 7, 8));
    assert!(reply.is_permanent());
    // The server's 334 carried the JSON error; the client answered a single 0x01, nothing else.
    let servers = server_lines(&e.smtp);
    let challenge = servers
        .iter()
        .find_map(|l| l.strip_prefix("334 "))
        .expect("an error challenge");
    use base64::Engine;
    let json = base64::engine::general_purpose::STANDARD
        .decode(challenge)
        .expect("base64 challenge");
    assert!(
        String::from_utf8_lossy(&json).contains(r#""status":"invalid_token""#),
        "{}",
        String::from_utf8_lossy(&json)
    );
    let clients = client_lines(&e.smtp);
    let auth = clients
        .iter()
        .position(|l| l == "AUTH OAUTHBEARER [redacted]")
        .expect("AUTH sent");
    assert_eq!(
        clients.get(auth + 1).map(String::as_str),
        Some("AQ=="),
        "{clients:#?}"
    );
    let t = e.smtp.transcript();
    assert!(!t.iter().any(|l| l.contains("other than %x01")), "{t:#?}");
    // A token fetched for this attempt is not retried, and nothing was sent.
    assert_eq!(e.idp.token_requests(), 1);
    assert_eq!(count_commands(&e.smtp, "AUTH"), 1);
    assert_eq!(count_commands(&e.smtp, "MAIL"), 0);
    assert_eq!(e.smtp.auth_failures(), 1);
    assert!(e.smtp.messages().is_empty());
}

#[tokio::test]
async fn a_revoked_cached_token_is_replaced_once_with_oauthbearer() {
    let e = oauthbearer_env(|_| {}).await;
    let route = oauthbearer_route(&e);
    deliver(&route, &e.message("o3", b"first\r\n", &["a@example.net"]))
        .await
        .expect("first delivery");
    e.idp.revoke_all();

    deliver(&route, &e.message("o4", b"second\r\n", &["a@example.net"]))
        .await
        .expect("second delivery after a token refresh");

    assert_eq!(e.idp.token_requests(), 2);
    assert_eq!(e.smtp.auth_failures(), 1);
    assert_eq!(e.smtp.auth_successes(), 2);
    let got = e.smtp.messages();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].data, b"second");
    // The refusal was acknowledged and the new token went in on the same connection.
    assert_eq!(e.smtp.connections(), 2);
    assert_eq!(got[1].connection_id, 2);
    let second: Vec<String> = e
        .smtp
        .transcript()
        .iter()
        .filter_map(|l| l.strip_prefix("[2] C: "))
        .map(str::to_string)
        .collect();
    let auths: Vec<usize> = second
        .iter()
        .enumerate()
        .filter(|(_, l)| *l == "AUTH OAUTHBEARER [redacted]")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(auths.len(), 2, "{second:#?}");
    assert_eq!(second[auths[0] + 1], "AQ==", "{second:#?}");
}

#[tokio::test]
async fn oauthbearer_towards_a_server_without_it_is_refused_at_auth_once() {
    // Exchange-like: XOAUTH2 only. The server's own refusal is the verdict; no token is wasted.
    let e = env().await;
    let route = oauthbearer_route(&e);

    let (stage, reply) =
        unwrap_rejected(deliver(&route, &e.message("o5", b"x\r\n", &["a@example.net"])).await);

    assert_eq!(stage, Stage::Auth);
    assert_eq!(reply.code(), 504);
    assert_eq!(reply.status(), status(5, 7, 4));
    assert_eq!(count_commands(&e.smtp, "AUTH"), 1);
    assert_eq!(e.idp.token_requests(), 1);
    assert!(e.smtp.messages().is_empty());
}

// ---------------------------------------------------------------------------------------------
// 6. Pipelining

#[tokio::test]
async fn without_pipelining_the_route_waits_for_every_reply() {
    let e = env_with(|c| c.advertise_pipelining = false).await;
    let route = e.route(TlsMode::Starttls);
    let rcpts = ["a@example.net", "b@example.net", "c@example.net"];
    let msg = e.message("l1", b"lockstep\r\n", &rcpts);

    // The fake refuses anything sent ahead of a reply with 503 5.5.0: success proves lockstep.
    let report = deliver(&route, &msg).await.expect("lockstep delivery");

    assert_eq!(report.accepted, rcpts);
    assert_eq!(e.smtp.messages().len(), 1);
    let t = e.smtp.transcript();
    assert!(
        !t.iter().any(|l| l.contains("pipelining not advertised")),
        "{t:#?}"
    );
    assert!(
        !server_lines(&e.smtp).iter().any(|l| l.starts_with("503")),
        "{t:#?}"
    );
}

#[tokio::test]
async fn with_pipelining_mail_rcpt_and_data_go_out_before_their_replies() {
    // Deterministic proof: MAIL is refused, yet RCPT and DATA still reach the server. Only a
    // client that sent them before it saw the refusal can have done that.
    let e = env().await;
    e.smtp.script(At::Mail, "451 4.3.2 try later [scripted]", 1);
    let route = e.route(TlsMode::Starttls);
    let rcpts = ["a@example.net", "b@example.net"];
    let (stage, reply) = unwrap_rejected(deliver(&route, &e.message("p1", b"x\r\n", &rcpts)).await);
    assert_eq!((stage, reply.code()), (Stage::Mail, 451));

    let clients = client_lines(&e.smtp);
    let mail = clients
        .iter()
        .position(|l| l.starts_with("MAIL FROM:"))
        .expect("MAIL");
    assert_eq!(
        &clients[mail + 1..mail + 4],
        ["RCPT TO:<a@example.net>", "RCPT TO:<b@example.net>", "DATA"],
        "{clients:#?}"
    );

    // And by the clock: the fake pays one reply delay per flush, so with 5 recipients a
    // lock-step delivery costs 14 round trips and a pipelined one 9.
    let delay = Duration::from_millis(200);
    let piped = env_with(|c| c.reply_delay = delay).await;
    let lock = env_with(|c| {
        c.reply_delay = delay;
        c.advertise_pipelining = false;
    })
    .await;
    let rcpts = [
        "1@example.net",
        "2@example.net",
        "3@example.net",
        "4@example.net",
        "5@example.net",
    ];
    let (piped_route, lock_route) = (
        piped.route(TlsMode::Starttls),
        lock.route(TlsMode::Starttls),
    );
    let (piped_msg, lock_msg) = (
        piped.message("t", b"timed\r\n", &rcpts),
        lock.message("t", b"timed\r\n", &rcpts),
    );
    let timed = |route: SmtpRoute, msg: Message| async move {
        let start = Instant::now();
        let r = deliver(&route, &msg).await;
        (start.elapsed(), r)
    };
    let ((piped_time, piped_result), (lock_time, lock_result)) =
        tokio::join!(timed(piped_route, piped_msg), timed(lock_route, lock_msg));
    piped_result.expect("pipelined delivery");
    lock_result.expect("lock-step delivery");
    assert_eq!(piped.smtp.messages().len(), 1);
    assert_eq!(lock.smtp.messages().len(), 1);
    let ratio = piped_time.as_secs_f64() / lock_time.as_secs_f64();
    assert!(
        ratio < 0.8,
        "pipelined {piped_time:?} vs lock-step {lock_time:?} (ratio {ratio:.2}, expected ~9/14)"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Recipients

#[tokio::test]
async fn a_partly_refused_recipient_list_still_delivers_to_the_rest() {
    for pipelining in [true, false] {
        let e = env_with(|c| c.advertise_pipelining = pipelining).await;
        e.smtp.script(At::Rcpt, "550 5.1.1 User unknown", 1);
        let route = e.route(TlsMode::Starttls);
        let rcpts = ["gone@example.net", "b@example.net", "c@example.net"];
        let msg = e.message("r1", b"partial\r\n", &rcpts);

        let report = deliver(&route, &msg).await.expect("delivery to the rest");

        assert_eq!(
            report.accepted,
            ["b@example.net", "c@example.net"],
            "pipelining={pipelining}"
        );
        assert_eq!(report.rejected.len(), 1);
        let (who, why) = &report.rejected[0];
        assert_eq!(who, "gone@example.net");
        assert_eq!(why.code(), 550);
        assert_eq!(why.status(), status(5, 1, 1));
        assert_eq!(why.text(), "User unknown");
        assert_eq!(report.reply.code(), 250);
        let got = e.smtp.messages();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].rcpt_to, ["b@example.net", "c@example.net"]);
        assert_eq!(got[0].data, b"partial");
    }
}

#[tokio::test]
async fn all_recipients_refused_is_a_rejection_at_rcpt() {
    for pipelining in [true, false] {
        let e = env_with(|c| c.advertise_pipelining = pipelining).await;
        e.smtp.script(At::Rcpt, "550 5.1.1 User unknown", 3);
        let route = e.route(TlsMode::Starttls);
        let rcpts = ["a@example.net", "b@example.net", "c@example.net"];

        let (stage, reply) =
            unwrap_rejected(deliver(&route, &e.message("r2", b"x\r\n", &rcpts)).await);

        assert_eq!(stage, Stage::Rcpt, "pipelining={pipelining}");
        assert_eq!(reply.code(), 550);
        assert_eq!(reply.status(), status(5, 1, 1));
        assert!(reply.is_permanent());
        assert!(e.smtp.messages().is_empty());
        // No body was sent.
        let t = e.smtp.transcript();
        assert!(!t.iter().any(|l| l.contains("[message body")), "{t:#?}");
    }
}

#[tokio::test]
async fn a_temporary_recipient_refusal_wins_over_permanent_ones() {
    for pipelining in [true, false] {
        let e = env_with(|c| c.advertise_pipelining = pipelining).await;
        e.smtp.script(At::Rcpt, "550 5.1.1 User unknown", 1);
        e.smtp
            .script(At::Rcpt, "452 4.2.2 Mailbox full, try later", 1);
        e.smtp
            .script(At::Rcpt, "550 5.1.10 RESOLVER.ADR.RecipientNotFound", 1);
        let route = e.route(TlsMode::Starttls);
        let rcpts = ["a@example.net", "b@example.net", "c@example.net"];

        let result = deliver(&route, &e.message("r3", b"x\r\n", &rcpts)).await;
        let permanent = result.as_ref().err().map(DeliveryError::is_permanent);
        let (stage, reply) = unwrap_rejected(result);

        assert_eq!(stage, Stage::Rcpt, "pipelining={pipelining}");
        assert_eq!(reply.code(), 452);
        assert_eq!(reply.status(), status(4, 2, 2));
        assert_eq!(permanent, Some(false));
    }
}

// ---------------------------------------------------------------------------------------------
// 8. MAIL and body refusals

#[tokio::test]
async fn a_refused_mail_from_is_reported_with_the_upstreams_exact_reply() {
    const SEND_AS: &str = "554 5.2.252 SendAsDenied; relay@contoso.example not allowed to send as \
                           scanner@contoso.example; STOREDRV.Submission.Exception:SendAsDeniedException";
    for pipelining in [true, false] {
        let e = env_with(|c| c.advertise_pipelining = pipelining).await;
        e.smtp.script(At::Mail, SEND_AS, 1);
        let route = e.route(TlsMode::Starttls);

        let result = deliver(&route, &e.message("m1", b"x\r\n", &["a@example.net"])).await;
        let permanent = result.as_ref().err().map(DeliveryError::is_permanent);
        let (stage, reply) = unwrap_rejected(result);

        assert_eq!(stage, Stage::Mail, "pipelining={pipelining}");
        assert_eq!(reply.code(), 554);
        assert_eq!(reply.status(), status(5, 2, 252));
        assert_eq!(wire(&reply), format!("{SEND_AS}\r\n"));
        assert_eq!(permanent, Some(true));
        assert!(e.smtp.messages().is_empty());
        if !pipelining {
            assert_eq!(
                count_commands(&e.smtp, "RCPT"),
                0,
                "lock-step stops at MAIL"
            );
        }
    }
}

#[tokio::test]
async fn a_refused_body_keeps_a_wide_enhanced_status_and_is_temporary() {
    let e = env().await;
    e.smtp.script(
        At::DataBody,
        "451 4.7.500 Server busy. Please try again later from [203.0.113.9]",
        1,
    );
    let route = e.route(TlsMode::Starttls);

    let result = deliver(&route, &e.message("b1", b"body\r\n", &["a@example.net"])).await;
    let permanent = result.as_ref().err().map(DeliveryError::is_permanent);
    let (stage, reply) = unwrap_rejected(result);

    assert_eq!(stage, Stage::Body);
    assert_eq!(reply.code(), 451);
    assert_eq!(reply.status(), status(4, 7, 500));
    assert_eq!(
        reply.text(),
        "Server busy. Please try again later from [203.0.113.9]"
    );
    assert_eq!(permanent, Some(false));
    assert!(e.smtp.messages().is_empty());
}

#[tokio::test]
async fn a_send_as_refusal_after_the_body_is_permanent() {
    // Without Send As rights on the scanner's address (Exchange's default).
    let e = env_with(|c| c.send_as = Some(vec![MAILBOX.into()])).await;
    let route = e.route(TlsMode::Starttls);

    let result = deliver(&route, &e.message("b2", b"body\r\n", &["a@example.net"])).await;
    let permanent = result.as_ref().err().map(DeliveryError::is_permanent);
    let (stage, reply) = unwrap_rejected(result);

    assert_eq!(stage, Stage::Body);
    assert_eq!(reply.code(), 554);
    assert_eq!(reply.status(), status(5, 2, 252));
    assert!(reply.text().starts_with("SendAsDenied;"), "{reply}");
    assert_eq!(permanent, Some(true));
}

#[tokio::test]
async fn a_refused_data_command_is_a_rejection_at_data() {
    for pipelining in [true, false] {
        let e = env_with(|c| c.advertise_pipelining = pipelining).await;
        e.smtp.script(
            At::Data,
            "451 4.3.0 Temporary server error, please try again",
            1,
        );
        let route = e.route(TlsMode::Starttls);

        let result = deliver(&route, &e.message("d1", b"x\r\n", &["a@example.net"])).await;
        let permanent = result.as_ref().err().map(DeliveryError::is_permanent);
        let (stage, reply) = unwrap_rejected(result);

        assert_eq!(stage, Stage::Data, "pipelining={pipelining}");
        assert_eq!(reply.code(), 451);
        assert_eq!(reply.status(), status(4, 3, 0));
        assert_eq!(permanent, Some(false));
        assert!(e.smtp.messages().is_empty());
        let t = e.smtp.transcript();
        assert!(!t.iter().any(|l| l.contains("[message body")), "{t:#?}");
    }
}

#[tokio::test]
async fn recipients_over_the_upstreams_limit_are_reported_individually() {
    // Exchange takes 500 recipients per message; the 501st gets 452 4.5.3. All 501 RCPTs go out
    // in one pipelined write.
    let e = env().await;
    let route = e.route(TlsMode::Starttls);
    let rcpts: Vec<String> = (0..501)
        .map(|i| format!("user{i:03}@example.net"))
        .collect();
    let refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();

    let report = deliver(&route, &e.message("many", b"x\r\n", &refs))
        .await
        .expect("delivered to the first 500");

    assert_eq!(report.accepted, rcpts[..500]);
    assert_eq!(report.rejected.len(), 1);
    assert_eq!(report.rejected[0].0, rcpts[500]);
    assert_eq!(report.rejected[0].1.code(), 452);
    assert_eq!(report.rejected[0].1.status(), status(4, 5, 3));
    let got = e.smtp.messages();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpt_to.len(), 500);
}

// ---------------------------------------------------------------------------------------------
// 9. SIZE

#[tokio::test]
async fn a_message_over_the_upstreams_size_is_refused_before_mail() {
    let e = env_with(|c| c.max_size = 1000).await;
    let route = e.route(TlsMode::Starttls);
    let body = vec![b'x'; 1500];

    let result = deliver(&route, &e.message("s1", &body, &["a@example.net"])).await;
    let permanent = result.as_ref().err().map(DeliveryError::is_permanent);
    let (stage, reply) = unwrap_rejected(result);

    assert_eq!(stage, Stage::Mail);
    assert_eq!(reply.code(), 552);
    assert_eq!(reply.status(), status(5, 3, 4));
    assert!(
        reply.text().contains("1500") && reply.text().contains("1000"),
        "{reply}"
    );
    assert_eq!(permanent, Some(true));
    assert_eq!(
        count_commands(&e.smtp, "MAIL"),
        0,
        "{:#?}",
        e.smtp.transcript()
    );
    assert!(e.smtp.messages().is_empty());

    // Exactly at the limit is fine (CRLF-terminated, as stored messages are: the upstream
    // counts the octets of the message as transmitted).
    let mut body = vec![b'y'; 998];
    body.extend_from_slice(b"\r\n");
    deliver(&route, &e.message("s2", &body, &["a@example.net"]))
        .await
        .expect("a message of exactly SIZE bytes is accepted");
    assert_eq!(e.smtp.messages().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// 10. Timeouts, drops, refused connections, a 421 greeting

#[tokio::test]
async fn a_server_slower_than_the_command_timeout_is_a_timeout() {
    let e = env_with(|c| c.reply_delay = Duration::from_secs(3)).await;
    let route = e.route_with(TlsMode::Starttls, |c| {
        c.command_timeout = Duration::from_millis(300);
    });
    let start = Instant::now();

    let err = deliver(&route, &e.message("t1", b"x\r\n", &["a@example.net"]))
        .await
        .expect_err("timeout");

    assert!(
        matches!(
            err,
            DeliveryError::Timeout {
                stage: Stage::Greeting
            }
        ),
        "{err:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    assert!(!err.is_permanent());
    assert_eq!(err.reply().code(), 451);
}

/// A connection dropped before the upstream's final reply is tried once more at once on a
/// new connection: a brief fault costs no retry interval.
#[tokio::test]
async fn a_connection_dropped_once_is_tried_again_on_a_new_connection() {
    for at in [At::DataBody, At::Mail, At::Connect] {
        let e = env().await;
        e.smtp.drop_at(at, 1);
        let route = e.route(TlsMode::Starttls);
        let report = deliver(&route, &e.message("d0", b"body\r\n", &["a@example.net"]))
            .await
            .unwrap_or_else(|err| panic!("{at:?}: {err:?}"));
        assert_eq!(report.accepted, ["a@example.net"], "{at:?}");
        assert_eq!(e.smtp.connections(), 2, "{at:?}: a second connection");
        assert_eq!(e.smtp.messages().len(), 1, "{at:?}");
    }
}

/// Only once: a connection lost again is the attempt's failure, temporary and not a refusal.
#[tokio::test]
async fn a_connection_dropped_during_the_body_twice_is_lost_not_refused() {
    let e = env().await;
    e.smtp.drop_at(At::DataBody, 2);
    let route = e.route(TlsMode::Starttls);

    let err = deliver(&route, &e.message("d1", b"body\r\n", &["a@example.net"]))
        .await
        .expect_err("dropped");

    assert!(
        matches!(
            err,
            DeliveryError::ConnectionLost {
                stage: Stage::Body,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_permanent());
    assert_eq!(err.reply().code(), 451);
    assert!(e.smtp.messages().is_empty());
    assert_eq!(e.smtp.connections(), 2, "one more try, not more");
}

#[tokio::test]
async fn a_connection_dropped_at_mail_twice_is_lost() {
    let e = env().await;
    e.smtp.drop_at(At::Mail, 2);
    let route = e.route(TlsMode::Starttls);

    let err = deliver(&route, &e.message("d2", b"body\r\n", &["a@example.net"]))
        .await
        .expect_err("dropped");

    assert!(
        matches!(
            err,
            DeliveryError::ConnectionLost {
                stage: Stage::Mail,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_permanent());
}

#[tokio::test]
async fn nothing_listening_is_a_connect_error() {
    let pki = TestPki::new();
    let idp = FakeIdp::start(IdpConfig::default()).await;
    let dir = TempDir::new().expect("temp dir");
    let port = closed_port().await;
    let tls = client_config(Some(pki.ca_pem_path())).expect("config");
    let route = SmtpRoute::new(
        route_config(port, TlsMode::Starttls, tls),
        token_cache(&idp),
    );

    let err = deliver(
        &route,
        &message_in(dir.path(), "c1", b"x\r\n", &["a@example.net"]),
    )
    .await
    .expect_err("refused");

    match &err {
        DeliveryError::Connect { target, .. } => assert_eq!(target, &format!("127.0.0.1:{port}")),
        other => panic!("expected Connect, got {other:?}"),
    }
    assert!(!err.is_permanent());
    assert_eq!(err.reply().code(), 451);
    assert_eq!(err.reply().status(), status(4, 4, 1));
    assert_eq!(idp.token_requests(), 0);
}

#[tokio::test]
async fn a_421_greeting_is_a_transient_rejection() {
    let e = env().await;
    e.smtp.script(
        At::Connect,
        "421 4.3.2 Service not available, closing transmission channel",
        1,
    );
    let route = e.route(TlsMode::Starttls);

    let result = deliver(&route, &e.message("g1", b"x\r\n", &["a@example.net"])).await;
    let permanent = result.as_ref().err().map(DeliveryError::is_permanent);
    let (stage, reply) = unwrap_rejected(result);

    assert_eq!(stage, Stage::Greeting);
    assert_eq!(reply.code(), 421);
    assert_eq!(reply.status(), status(4, 3, 2));
    assert_eq!(permanent, Some(false));
    assert_eq!(count_commands(&e.smtp, "EHLO"), 0);
    assert_eq!(e.idp.token_requests(), 0);
}

#[tokio::test]
async fn a_refused_starttls_is_never_followed_by_auth_in_clear() {
    let e = env().await;
    e.smtp.script(
        At::StartTls,
        "454 4.7.0 TLS not available due to temporary reason",
        1,
    );
    let route = e.route(TlsMode::Starttls);

    let result = deliver(&route, &e.message("s1", b"x\r\n", &["a@example.net"])).await;
    let permanent = result.as_ref().err().map(DeliveryError::is_permanent);
    let (stage, reply) = unwrap_rejected(result);

    assert_eq!(stage, Stage::StartTls);
    assert_eq!(reply.code(), 454);
    assert_eq!(permanent, Some(false));
    assert_eq!(
        count_commands(&e.smtp, "AUTH"),
        0,
        "{:#?}",
        e.smtp.transcript()
    );
    assert_eq!(e.idp.token_requests(), 0);
}

/// RFC 5321 section 3.8: a 421 means the server is closing the channel. Exchange sends it
/// mid-transaction (throttling, "421 4.4.2 ... submission rate ... exceeded"), and its words are
/// what tells the admin why; the route must report that reply, not the closed connection that
/// follows it.
const CLOSING: &str =
    "421 4.4.2 Message submission rate for this client has exceeded the configured limit";

#[tokio::test]
async fn a_421_at_mail_without_pipelining_is_reported_whole() {
    let e = env_with(|c| c.advertise_pipelining = false).await;
    e.smtp.script(At::Mail, CLOSING, 1);
    let route = e.route(TlsMode::Starttls);

    let result = deliver(&route, &e.message("c1", b"x\r\n", &["a@example.net"])).await;
    let permanent = result.as_ref().err().map(DeliveryError::is_permanent);
    let (stage, reply) = unwrap_rejected(result);

    assert_eq!(stage, Stage::Mail);
    assert_eq!(wire(&reply), format!("{CLOSING}\r\n"));
    assert_eq!(permanent, Some(false));
}

#[tokio::test]
async fn a_421_at_mail_with_pipelining_is_reported_whole() {
    let e = env().await;
    e.smtp.script(At::Mail, CLOSING, 1);
    let route = e.route(TlsMode::Starttls);

    let result = deliver(&route, &e.message("c2", b"x\r\n", &["a@example.net"])).await;

    let (stage, reply) = unwrap_rejected(result);
    assert_eq!(stage, Stage::Mail);
    assert_eq!(wire(&reply), format!("{CLOSING}\r\n"));
}

async fn assert_421_at_first_rcpt_is_reported(pipelining: bool) {
    let e = env_with(|c| c.advertise_pipelining = pipelining).await;
    e.smtp.script(At::Rcpt, CLOSING, 1);
    let route = e.route(TlsMode::Starttls);
    let rcpts = ["a@example.net", "b@example.net"];

    let result = deliver(&route, &e.message("c3", b"x\r\n", &rcpts)).await;

    let (stage, reply) = unwrap_rejected(result);
    assert_eq!(stage, Stage::Rcpt);
    assert_eq!(wire(&reply), format!("{CLOSING}\r\n"));
    assert!(!reply.is_permanent());
}

#[tokio::test]
async fn a_421_at_rcpt_with_pipelining_is_reported_whole() {
    assert_421_at_first_rcpt_is_reported(true).await;
}

#[tokio::test]
async fn a_421_at_rcpt_without_pipelining_is_reported_whole() {
    assert_421_at_first_rcpt_is_reported(false).await;
}

#[tokio::test]
async fn a_421_after_the_body_is_reported_whole() {
    let e = env().await;
    e.smtp.script(At::DataBody, CLOSING, 1);
    let route = e.route(TlsMode::Starttls);

    let result = deliver(&route, &e.message("c4", b"x\r\n", &["a@example.net"])).await;
    let permanent = result.as_ref().err().map(DeliveryError::is_permanent);
    let (stage, reply) = unwrap_rejected(result);

    assert_eq!(stage, Stage::Body);
    assert_eq!(wire(&reply), format!("{CLOSING}\r\n"));
    assert_eq!(permanent, Some(false));
}

// ---------------------------------------------------------------------------------------------
// Deadlines and STARTTLS hygiene against the hand-written upstream (see `support`)

fn raw_route(
    e: &Env,
    port: u16,
    tls: TlsMode,
    adjust: impl FnOnce(&mut SmtpRouteConfig),
) -> SmtpRoute {
    let tls_config = client_config(Some(e.pki.ca_pem_path())).expect("client TLS config");
    let mut cfg = route_config(port, tls, tls_config);
    adjust(&mut cfg);
    SmtpRoute::new(cfg, e.tokens.clone())
}

#[tokio::test]
async fn the_final_reply_gets_the_data_timeout_not_the_command_timeout() {
    let e = env().await;
    let raw = support::start(support::RawOptions {
        final_delay: Duration::from_millis(800),
        ..Default::default()
    })
    .await;
    let route = raw_route(&e, raw.port, TlsMode::None, |c| {
        c.command_timeout = Duration::from_millis(300);
        c.data_timeout = Duration::from_secs(5);
    });

    let report = deliver(&route, &e.message("d1", b"slow\r\n", &["a@example.net"]))
        .await
        .expect("a slow final reply within data_timeout is fine");

    assert_eq!(report.reply.text(), "queued as raw-1");
    assert!(raw.commands().iter().any(|c| c == "DATA"));
}

#[tokio::test]
async fn a_final_reply_slower_than_the_data_timeout_is_a_timeout_at_body() {
    let e = env().await;
    let raw = support::start(support::RawOptions {
        final_delay: Duration::from_secs(5),
        ..Default::default()
    })
    .await;
    let route = raw_route(&e, raw.port, TlsMode::None, |c| {
        c.command_timeout = Duration::from_secs(2);
        c.data_timeout = Duration::from_millis(300);
    });
    let start = Instant::now();

    let err = deliver(&route, &e.message("d2", b"slow\r\n", &["a@example.net"]))
        .await
        .expect_err("timeout");

    assert!(
        matches!(err, DeliveryError::Timeout { stage: Stage::Body }),
        "{err:?}"
    );
    assert!(!err.is_permanent());
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn plaintext_injected_after_the_starttls_220_is_discarded() {
    let e = env().await;
    // If the route kept these bytes, it would take "250 injected" as the answer to its EHLO
    // inside TLS, and every later reply would be one step behind.
    let raw = support::start(support::RawOptions {
        starttls: Some((e.pki.server_config(), b"250 injected\r\n")),
        ..Default::default()
    })
    .await;
    let route = raw_route(&e, raw.port, TlsMode::Starttls, |_| {});

    let report = deliver(&route, &e.message("i1", b"x\r\n", &["a@example.net"]))
        .await
        .expect("delivery in step with the server");

    assert_eq!(report.reply.text(), "queued as raw-1");
    let commands = raw.commands();
    let verbs: Vec<&str> = commands
        .iter()
        .map(|c| c.split([' ', ':']).next().unwrap_or_default())
        .collect();
    assert_eq!(
        verbs,
        [
            "EHLO", "STARTTLS", "EHLO", "AUTH", "MAIL", "RCPT", "DATA", "QUIT"
        ],
        "{commands:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 11. Token endpoint down

#[tokio::test]
async fn a_token_endpoint_outage_is_a_temporary_token_error_without_auth() {
    let e = env().await;
    e.idp.set_failure(Some(IdpFailure::Unavailable));
    let route = e.route(TlsMode::Starttls);

    let err = deliver(&route, &e.message("k1", b"x\r\n", &["a@example.net"]))
        .await
        .expect_err("no token");

    match &err {
        DeliveryError::Token { account, cause, .. } => {
            assert_eq!(account, ACCOUNT);
            assert_eq!(*cause, smtp2oauth_proto::Cause::Transient);
            assert!(!err.needs_sign_in());
        }
        other => panic!("expected Token, got {other:?}"),
    }
    assert!(!err.is_permanent());
    let reply = err.reply();
    assert_eq!(reply.code(), 454);
    assert_eq!(reply.status(), status(4, 7, 0));
    assert_eq!(e.idp.token_requests(), 1);
    assert_eq!(
        count_commands(&e.smtp, "AUTH"),
        0,
        "{:#?}",
        e.smtp.transcript()
    );
    assert_eq!(e.smtp.auth_failures() + e.smtp.auth_successes(), 0);
    assert!(e.smtp.messages().is_empty());
    assert!(e.tokens.status().last_error.is_some());
}

// ---------------------------------------------------------------------------------------------
// 12. CaptureRoute

#[tokio::test]
async fn capture_writes_the_message_and_its_envelope_atomically() {
    let dir = TempDir::new().expect("temp dir");
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).expect("spool dir");
    let out = dir.path().join("captured"); // does not exist yet
    let route = CaptureRoute::new(&out);
    let body: &[u8] = b"Subject: capture\r\n\r\n.dot line\r\n8-bit \xc3\xa9\r\nno final CRLF";
    let mut msg = message_in(
        &spool,
        "0001-abc",
        body,
        &["a@example.net", "b@example.net"],
    );
    msg.eight_bit = true;

    let report = deliver(&route, &msg).await.expect("capture succeeds");

    assert_eq!(report.reply.code(), 250);
    assert_eq!(report.reply.status(), status(2, 0, 0));
    assert!(
        report.reply.text().contains("0001-abc.eml"),
        "{}",
        report.reply
    );
    assert_eq!(report.accepted, ["a@example.net", "b@example.net"]);
    assert!(report.rejected.is_empty());

    let eml = std::fs::read(out.join("0001-abc.eml")).expect("eml written");
    assert_eq!(eml, body, "captured bytes differ from the data file");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("0001-abc.json")).expect("json written"))
            .expect("envelope is JSON");
    assert_eq!(json["mail_from"], SENDER);
    assert_eq!(
        json["rcpt_to"],
        serde_json::json!(["a@example.net", "b@example.net"])
    );
    assert_eq!(json["id"], "0001-abc");
    assert_eq!(json["size"], body.len() as u64);
    assert_eq!(json["eight_bit"], true);

    let mut names: Vec<String> = std::fs::read_dir(&out)
        .expect("list capture dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["0001-abc.eml", "0001-abc.json"],
        "temporary files left behind"
    );
    // The source stays where it was: the spool owns it.
    assert!(msg.data_path.exists());
    assert_eq!(route.kind(), smtp2oauth_upstream::RouteKind::Capture);
}

#[tokio::test]
async fn capture_of_a_missing_data_file_is_a_local_error() {
    let dir = TempDir::new().expect("temp dir");
    let route = CaptureRoute::new(dir.path().join("captured"));
    let msg = message_in(dir.path(), "gone", b"x\r\n", &["a@example.net"]);
    std::fs::remove_file(&msg.data_path).expect("remove");

    let err = deliver(&route, &msg).await.expect_err("missing file");

    assert!(matches!(err, DeliveryError::Local { .. }), "{err:?}");
    assert!(!err.is_permanent());
    let left: Vec<PathBuf> = std::fs::read_dir(dir.path().join("captured"))
        .map(|d| d.map(|e| e.expect("entry").path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "files left behind: {left:?}");
}

// ---------------------------------------------------------------------------------------------
// Pooled sessions

/// A route that keeps up to `max_idle` sessions for `idle` after each message.
fn pooled(e: &Env, max_idle: usize, idle: Duration) -> SmtpRoute {
    e.route_with(TlsMode::Starttls, |c| {
        c.max_idle = max_idle;
        c.idle_timeout = idle;
    })
}

#[tokio::test]
async fn a_pooled_session_carries_message_after_message_with_one_login() {
    let e = env().await;
    let route = pooled(&e, 3, Duration::from_secs(30));
    for i in 0..5 {
        let msg = e.message(
            &format!("p{i}"),
            format!("body {i}\r\n").as_bytes(),
            &["a@example.net"],
        );
        deliver(&route, &msg).await.expect("delivered");
    }
    assert_eq!(e.smtp.messages().len(), 5);
    assert_eq!(
        e.smtp.connections(),
        1,
        "one upstream session for five messages"
    );
    assert_eq!(e.smtp.auth_successes(), 1, "one login");
    assert_eq!(count_commands(&e.smtp, "STARTTLS"), 1);
    assert_eq!(count_commands(&e.smtp, "MAIL FROM"), 5);
    // A clean transaction needs no RSET before the next one.
    assert_eq!(count_commands(&e.smtp, "RSET"), 0);
    assert_eq!(route.idle_sessions(), 1);
}

#[tokio::test]
async fn a_session_the_server_dropped_while_idle_is_replaced_without_failing_the_message() {
    for pipelining in [true, false] {
        let e = env_with(|c| c.advertise_pipelining = pipelining).await;
        let route = pooled(&e, 3, Duration::from_secs(30));
        deliver(&route, &e.message("d1", b"one\r\n", &["a@example.net"]))
            .await
            .expect("first");
        e.smtp.close_connections();
        // Give the close a moment to reach our socket, then again without waiting: both the
        // stale check and a failure on the first command must lead to a new session.
        tokio::time::sleep(Duration::from_millis(100)).await;
        deliver(&route, &e.message("d2", b"two\r\n", &["a@example.net"]))
            .await
            .expect("second message delivered on a new session");
        e.smtp.close_connections();
        deliver(&route, &e.message("d3", b"three\r\n", &["a@example.net"]))
            .await
            .expect("third message delivered on a new session");
        assert_eq!(e.smtp.messages().len(), 3, "pipelining={pipelining}");
        assert_eq!(e.smtp.connections(), 3, "pipelining={pipelining}");
    }
}

#[tokio::test]
async fn a_refused_message_leaves_the_session_clean_for_the_next() {
    let e = env().await;
    let route = pooled(&e, 3, Duration::from_secs(30));
    e.smtp.script(At::Rcpt, "550 5.1.1 User unknown", 1);
    let r = deliver(
        &route,
        &e.message("x1", b"refused\r\n", &["gone@example.net"]),
    )
    .await;
    let (stage, reply) = unwrap_rejected(r);
    assert_eq!((stage, reply.code()), (Stage::Rcpt, 550));
    deliver(&route, &e.message("x2", b"fine\r\n", &["b@example.net"]))
        .await
        .expect("next message on the same session");
    assert_eq!(e.smtp.connections(), 1);
    assert_eq!(
        count_commands(&e.smtp, "RSET"),
        1,
        "the open transaction was reset"
    );
    let got = e.smtp.messages();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpt_to, ["b@example.net"]);
}

#[tokio::test]
async fn idle_sessions_are_closed_with_quit_after_the_idle_timeout() {
    let e = env().await;
    let route = pooled(&e, 3, Duration::from_millis(300));
    deliver(&route, &e.message("i1", b"one\r\n", &["a@example.net"]))
        .await
        .expect("delivered");
    assert_eq!(e.smtp.active_connections(), 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while e.smtp.active_connections() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(e.smtp.active_connections(), 0, "idle session closed");
    assert_eq!(count_commands(&e.smtp, "QUIT"), 1, "politely");
    assert_eq!(route.idle_sessions(), 0);
    // The next message opens a new session.
    deliver(&route, &e.message("i2", b"two\r\n", &["a@example.net"]))
        .await
        .expect("delivered");
    assert_eq!(e.smtp.connections(), 2);
}

#[tokio::test]
async fn without_pooling_every_message_gets_its_own_session() {
    let e = env().await;
    let route = pooled(&e, 3, Duration::ZERO);
    for i in 0..3 {
        deliver(
            &route,
            &e.message(&format!("n{i}"), b"x\r\n", &["a@example.net"]),
        )
        .await
        .expect("delivered");
    }
    assert_eq!(e.smtp.connections(), 3);
    assert_eq!(count_commands(&e.smtp, "QUIT"), 3);
    assert_eq!(route.idle_sessions(), 0);
}

/// A session is not reused once its token is about to expire: the next message logs in anew
/// with the current token.
#[tokio::test]
async fn a_session_whose_token_is_expiring_is_not_reused() {
    let pki = TestPki::new();
    let idp = FakeIdp::start(IdpConfig {
        expires_in: Duration::from_secs(10),
        ..IdpConfig::default()
    })
    .await;
    let smtp = FakeSmtp::start(SmtpConfig {
        send_as: Some(vec![MAILBOX.into(), SENDER.into()]),
        ..SmtpConfig::microsoft(pki.server_config(), MAILBOX, idp.validator())
    })
    .await;
    let e = Env {
        tokens: token_cache(&idp),
        pki,
        idp,
        smtp,
        dir: TempDir::new().expect("temp dir"),
    };
    let route = pooled(&e, 3, Duration::from_secs(30));
    for i in 0..2 {
        deliver(
            &route,
            &e.message(&format!("t{i}"), b"x\r\n", &["a@example.net"]),
        )
        .await
        .expect("delivered");
    }
    assert_eq!(e.smtp.connections(), 2);
    assert_eq!(e.smtp.auth_successes(), 2);
}

/// Once the account holds no token (an admin signed it out, which drops the cached token), an
/// idle session opened with the old one carries no more mail: it is closed, and the next
/// message needs a token of its own.
#[tokio::test]
async fn a_session_does_not_outlive_its_accounts_token() {
    let e = env().await;
    let route = pooled(&e, 3, Duration::from_secs(30));
    let send = |i: usize| e.message(&format!("w{i}"), b"x\r\n", &["a@example.net"]);
    deliver(&route, &send(0)).await.expect("delivered");
    assert_eq!(route.idle_sessions(), 1);
    e.tokens.credentials_changed();
    deliver(&route, &send(1)).await.expect("delivered");
    assert_eq!(e.smtp.connections(), 2, "the idle session was not reused");
    assert_eq!(
        e.idp.token_requests(),
        2,
        "the second message asked for a token"
    );
    assert_eq!(route.idle_sessions(), 1);
    // With a token held, the pool works as before.
    deliver(&route, &send(2)).await.expect("delivered");
    assert_eq!(e.smtp.connections(), 2);
}

/// Idle and busy sessions together never exceed the account's limit when the caller runs at
/// most that many deliveries at once (the scheduler's rule).
#[tokio::test]
async fn concurrent_deliveries_share_at_most_max_idle_sessions() {
    let e = Arc::new(env().await);
    let route = Arc::new(pooled(&e, 3, Duration::from_secs(30)));
    let gate = Arc::new(tokio::sync::Semaphore::new(3));
    let mut tasks = Vec::new();
    for i in 0..24 {
        let (e, route, gate) = (e.clone(), route.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _slot = gate.acquire().await.unwrap();
            let msg = e.message(
                &format!("c{i}"),
                format!("m{i}\r\n").as_bytes(),
                &["a@example.net"],
            );
            deliver(route.as_ref(), &msg).await.expect("delivered");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(e.smtp.messages().len(), 24);
    assert!(
        e.smtp.peak_connections() <= 3,
        "peak {}",
        e.smtp.peak_connections()
    );
    assert!(e.smtp.connections() <= 3, "opened {}", e.smtp.connections());
}

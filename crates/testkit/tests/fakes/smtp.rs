//! FakeSmtp over real sockets with a hand-written client: the Exchange-like dialogue, every
//! refusal, scripting, exact byte storage, pipelining and STARTTLS-injection defence.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;
use smtp2oauth_testkit::{
    AuthFailureStyle, FakeIdp, FakeSmtp, IdpConfig, SmtpConfig, Stage, TestPki, UpstreamTls,
};

use crate::client::{Client, form, http_post, xoauth2};

const MAILBOX: &str = "relay@contoso.example";
const SCOPE: &str = "https://outlook.office365.com/.default";

struct Env {
    pki: TestPki,
    idp: FakeIdp,
    smtp: FakeSmtp,
}

async fn env_with(adjust: impl FnOnce(&mut SmtpConfig)) -> Env {
    let pki = TestPki::new();
    let idp = FakeIdp::start(IdpConfig::default()).await;
    let mut cfg = SmtpConfig::microsoft(pki.server_config(), MAILBOX, idp.validator());
    adjust(&mut cfg);
    let smtp = FakeSmtp::start(cfg).await;
    Env { pki, idp, smtp }
}

async fn env() -> Env {
    env_with(|_| {}).await
}

/// A token obtained the way the relay obtains one: an HTTP POST to the token endpoint.
async fn token_over_http(idp: &FakeIdp) -> String {
    let body = form(&[
        ("grant_type", "client_credentials"),
        ("client_id", &idp.client_id()),
        (
            "client_secret",
            &IdpConfig::default().client_secret.unwrap(),
        ),
        ("scope", SCOPE),
    ]);
    let path = format!("/{}/oauth2/v2.0/token", idp.tenant());
    let (status, _, body) = http_post(
        idp.addr(),
        &path,
        "application/x-www-form-urlencoded",
        &body,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["access_token"].as_str().unwrap().to_string()
}

/// Connected, TLS, EHLO'd and authenticated.
async fn authed(e: &Env) -> Client {
    let mut c = Client::to_auth(e.smtp.addr(), e.pki.client_config()).await;
    let token = e.idp.issue_token(SCOPE).token;
    let r = c
        .cmd(&format!("AUTH XOAUTH2 {}", xoauth2(MAILBOX, &token)))
        .await;
    assert_eq!(r.code, 235, "{r:?}");
    c
}

/// Dot-stuffs a canonical message (CRLF lines) and appends the terminator.
fn stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut line_start = true;
    let mut i = 0;
    while i < message.len() {
        if line_start && message[i] == b'.' {
            out.push(b'.');
        }
        out.push(message[i]);
        line_start = message[i] == b'\n' && i > 0 && message[i - 1] == b'\r';
        i += 1;
    }
    out.extend_from_slice(b".\r\n");
    out
}

async fn send_message(c: &mut Client, from: &str, to: &[&str], message: &[u8]) -> u16 {
    assert_eq!(c.cmd(&format!("MAIL FROM:<{from}>")).await.code, 250);
    for rcpt in to {
        assert_eq!(c.cmd(&format!("RCPT TO:<{rcpt}>")).await.code, 250);
    }
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.send(&stuff(message)).await;
    c.reply().await.code
}

#[tokio::test]
async fn exchange_like_dialogue_end_to_end() {
    let e = env().await;
    let token = token_over_http(&e.idp).await;
    let mut c = Client::connect(e.smtp.addr()).await;
    let greeting = c.reply().await;
    assert_eq!(
        greeting.text(),
        "220 fake.outlook.test Microsoft ESMTP MAIL Service ready"
    );

    let ehlo = c.cmd("EHLO relay.test").await;
    assert_eq!(ehlo.code, 250);
    for ext in [
        "SIZE 157286400",
        "PIPELINING",
        "DSN",
        "ENHANCEDSTATUSCODES",
        "STARTTLS",
        "8BITMIME",
        "BINARYMIME",
        "CHUNKING",
        "SMTPUTF8",
    ] {
        assert!(ehlo.has_line(ext), "missing {ext}: {ehlo:?}");
    }
    assert!(
        !ehlo.lines.iter().any(|l| l.contains("AUTH")),
        "AUTH before TLS: {ehlo:?}"
    );

    let r = c.cmd("STARTTLS").await;
    assert_eq!(r.text(), "220 2.0.0 SMTP server ready");
    c.upgrade(e.pki.client_config()).await;
    let ehlo = c.cmd("EHLO relay.test").await;
    assert!(ehlo.has_line("AUTH LOGIN XOAUTH2"), "{ehlo:?}");
    assert!(!ehlo.has_line("STARTTLS"), "{ehlo:?}");

    let r = c
        .cmd(&format!(
            "AUTH XOAUTH2 {}",
            xoauth2("Relay@Contoso.Example", &token)
        ))
        .await;
    assert_eq!(r.text(), "235 2.7.0 Authentication successful");

    let r = c
        .cmd("MAIL FROM:<relay@contoso.example> SIZE=123 BODY=8BITMIME")
        .await;
    assert_eq!(r.text(), "250 2.1.0 Sender OK");
    assert_eq!(
        c.cmd("RCPT TO:<a@example.net>").await.text(),
        "250 2.1.5 Recipient OK"
    );
    assert_eq!(
        c.cmd("RCPT TO:<b@example.net> NOTIFY=FAILURE").await.code,
        250
    );
    let r = c.cmd("DATA").await;
    assert_eq!(r.text(), "354 Start mail input; end with <CRLF>.<CRLF>");
    c.send(b"Subject: hi\r\n\r\n..stuffed\r\nbody\r\n.\r\n")
        .await;
    let r = c.reply().await;
    assert!(
        r.text().starts_with("250 2.0.0 OK <")
            && r.text().ends_with("> [Hostname=fake.outlook.test]"),
        "{r:?}"
    );
    assert_eq!(
        c.cmd("QUIT").await.text(),
        "221 2.0.0 Service closing transmission channel"
    );
    assert!(c.closed_without_reply().await);

    let msgs = e.smtp.wait_for_messages(1, Duration::from_secs(5)).await;
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    assert_eq!(m.mail_from, "relay@contoso.example");
    assert_eq!(m.rcpt_to, vec!["a@example.net", "b@example.net"]);
    assert_eq!(m.data, b"Subject: hi\r\n\r\n.stuffed\r\nbody");
    assert_eq!(m.auth_user, "Relay@Contoso.Example");
    assert!(m.tls);
    assert_eq!(m.mail_params, "SIZE=123 BODY=8BITMIME");
    assert_eq!(m.connection_id, 1);
    assert_eq!(
        (
            e.smtp.connections(),
            e.smtp.auth_successes(),
            e.smtp.auth_failures()
        ),
        (1, 1, 0)
    );

    let t = e.smtp.transcript();
    assert!(
        t.iter().any(|l| l.ends_with("C: AUTH XOAUTH2 [redacted]")),
        "{t:#?}"
    );
    assert!(
        t.iter().all(|l| !l.contains(&token)),
        "token leaked into the transcript"
    );
    assert!(
        t.iter()
            .any(|l| l.ends_with("C: MAIL FROM:<relay@contoso.example> SIZE=123 BODY=8BITMIME"))
    );
    assert!(t.iter().any(|l| l.ends_with("S: 250-PIPELINING")));
}

#[tokio::test]
async fn auth_and_mail_need_tls_and_auth() {
    let e = env().await;
    let token = e.idp.issue_token(SCOPE).token;
    let mut c = Client::connect(e.smtp.addr()).await;
    c.reply().await;
    assert_eq!(
        c.cmd("MAIL FROM:<a@b.c>").await.code,
        503,
        "MAIL before EHLO"
    );
    c.cmd("EHLO relay.test").await;
    let r = c
        .cmd(&format!("AUTH XOAUTH2 {}", xoauth2(MAILBOX, &token)))
        .await;
    assert_eq!(r.text(), "530 5.7.0 Must issue a STARTTLS command first");
    assert_eq!(
        c.cmd("MAIL FROM:<a@b.c>").await.text(),
        "530 5.7.0 Must issue a STARTTLS command first"
    );
    c.starttls(e.pki.client_config()).await;
    // The session restarted: EHLO again first.
    assert_eq!(
        c.cmd("MAIL FROM:<a@b.c>").await.text(),
        "503 5.5.2 Send hello first"
    );
    c.cmd("EHLO relay.test").await;
    let r = c.cmd("MAIL FROM:<a@b.c>").await;
    assert_eq!(
        r.text(),
        "530 5.7.57 Client not authenticated to send mail. [fake.outlook.test]"
    );
    assert_eq!(
        c.cmd("AUTH PLAIN AGZvbwBiYXI=").await.text(),
        "504 5.7.4 Unrecognized authentication type"
    );
    assert_eq!(e.smtp.auth_successes(), 0);
}

#[tokio::test]
async fn wrong_mailbox_expired_token_and_bad_encodings_are_refused() {
    let e = env().await;
    let token = e.idp.issue_token(SCOPE).token;
    let mut c = Client::to_auth(e.smtp.addr(), e.pki.client_config()).await;
    let refused =
        "535 5.7.3 Authentication unsuccessful [SN4PR0601CA0001.namprd06.prod.outlook.com]";

    let r = c
        .cmd(&format!(
            "AUTH XOAUTH2 {}",
            xoauth2("someone@contoso.example", &token)
        ))
        .await;
    assert_eq!(r.text(), refused);
    let r = c
        .cmd(&format!(
            "AUTH XOAUTH2 {}",
            xoauth2(MAILBOX, "made-up-token")
        ))
        .await;
    assert_eq!(r.text(), refused);
    // Missing the final ^A.
    let bad = STANDARD.encode(format!("user={MAILBOX}\x01auth=Bearer {token}\x01"));
    assert_eq!(c.cmd(&format!("AUTH XOAUTH2 {bad}")).await.text(), refused);
    // Not base64.
    assert_eq!(c.cmd("AUTH XOAUTH2 !!!notbase64").await.code, 501);
    assert_eq!(e.smtp.auth_failures(), 4);

    // Expired token.
    e.idp.set_expires_in(Duration::from_secs(1));
    let short = e.idp.issue_token(SCOPE).token;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        c.cmd(&format!("AUTH XOAUTH2 {}", xoauth2(MAILBOX, &short)))
            .await
            .text(),
        refused
    );
    assert!(e.smtp.transcript().iter().any(|l| l.contains("expired")));

    // The long-lived one still works, in two steps (334 then the response line).
    let r = c.cmd("AUTH XOAUTH2").await;
    assert_eq!(r.text(), "334 ");
    assert_eq!(c.cmd(&xoauth2(MAILBOX, &token)).await.code, 235);
    assert_eq!(
        c.cmd("AUTH XOAUTH2").await.code,
        503,
        "already authenticated"
    );
    assert_eq!((e.smtp.auth_successes(), e.smtp.auth_failures()), (1, 5));
    assert!(e.smtp.transcript().iter().all(|l| !l.contains(&token)));
}

#[tokio::test]
async fn auth_lines_may_exceed_the_command_limit() {
    // RFC 4954 allows 12288-octet AUTH lines; a relay with a fat token must not get 500.
    let e = env().await;
    let mut c = Client::to_auth(e.smtp.addr(), e.pki.client_config()).await;
    let big = "x".repeat(6000);
    let r = c
        .cmd(&format!("AUTH XOAUTH2 {}", xoauth2(MAILBOX, &big)))
        .await;
    assert_eq!(r.code, 535, "{r:?}");
    let r = c.cmd(&format!("NOOP {}", "y".repeat(5000))).await;
    assert_eq!(r.text(), "500 5.5.2 Line too long");
    assert_eq!(c.cmd("NOOP").await.code, 250);
}

#[tokio::test]
async fn google_style_failure_dance() {
    let e = env_with(|c| c.failure_style = AuthFailureStyle::Google).await;
    let mut c = Client::to_auth(e.smtp.addr(), e.pki.client_config()).await;
    let r = c
        .cmd(&format!("AUTH XOAUTH2 {}", xoauth2(MAILBOX, "bad-token")))
        .await;
    assert_eq!(r.code, 334);
    let json: Value = serde_json::from_slice(&STANDARD.decode(&r.lines[0][4..]).unwrap()).unwrap();
    assert_eq!(json["status"], "401");
    assert_eq!(json["schemes"], "Bearer");
    assert_eq!(json["scope"], "https://mail.google.com/");
    let r = c.cmd("").await;
    assert_eq!(
        r.lines,
        vec![
            "535-5.7.8 Username and Password not accepted. Learn more at",
            "535 5.7.8  https://support.google.com/mail/?p=BadCredentials"
        ]
    );
    // A client that answers the challenge with anything but an empty line is told so.
    assert_eq!(
        c.cmd(&format!("AUTH XOAUTH2 {}", xoauth2(MAILBOX, "bad")))
            .await
            .code,
        334
    );
    assert_eq!(c.cmd("QUIT").await.code, 501);
    assert_eq!(e.smtp.auth_failures(), 2);
    // And the session is usable afterwards.
    let token = e.idp.issue_token(SCOPE).token;
    assert_eq!(
        c.cmd(&format!("AUTH XOAUTH2 {}", xoauth2(MAILBOX, &token)))
            .await
            .code,
        235
    );
}

#[tokio::test]
async fn basic_auth_login_is_refused_like_exchange() {
    let e = env().await;
    let mut c = Client::to_auth(e.smtp.addr(), e.pki.client_config()).await;
    assert_eq!(c.cmd("AUTH LOGIN").await.text(), "334 VXNlcm5hbWU6");
    assert_eq!(
        c.cmd(&STANDARD.encode(MAILBOX)).await.text(),
        "334 UGFzc3dvcmQ6"
    );
    let r = c.cmd(&STANDARD.encode("hunter2")).await;
    assert!(r.text().starts_with("535 5.7.139"), "{r:?}");
    assert!(
        e.smtp
            .transcript()
            .iter()
            .all(|l| !l.contains(&STANDARD.encode("hunter2")))
    );
}

/// The benchmark's Postfix peer cannot speak XOAUTH2: with a password login set, AUTH PLAIN
/// (with or without an initial response) and LOGIN accept exactly that user and password, after
/// STARTTLS only, and anything else is refused and counted.
#[tokio::test]
async fn password_login_when_enabled() {
    let e = env().await;
    // Off by default: PLAIN is not even a known mechanism, as on Exchange.
    let mut c = Client::to_auth(e.smtp.addr(), e.pki.client_config()).await;
    let plain = STANDARD.encode("\0relay\0s3cret");
    assert!(!c.cmd("EHLO x").await.has_line("PLAIN"));
    assert_eq!(c.cmd(&format!("AUTH PLAIN {plain}")).await.code, 504);

    e.smtp
        .set_password_login(Some(("relay".into(), "s3cret".into())));
    let mut c = Client::connect(e.smtp.addr()).await;
    assert_eq!(c.reply().await.code, 220);
    assert_eq!(c.cmd("EHLO x").await.code, 250);
    assert_eq!(c.cmd(&format!("AUTH PLAIN {plain}")).await.code, 530);
    c.starttls(e.pki.client_config()).await;
    assert!(c.cmd("EHLO x").await.has_line("AUTH PLAIN LOGIN XOAUTH2"));
    assert_eq!(c.cmd(&format!("AUTH PLAIN {plain}")).await.code, 235);
    let msg = b"Subject: x\r\n\r\nhello\r\n";
    assert_eq!(
        send_message(&mut c, MAILBOX, &["a@b.example"], msg).await,
        250
    );
    assert_eq!(e.smtp.messages()[0].auth_user, "relay");

    // PLAIN without an initial response, and LOGIN.
    let mut c = Client::to_auth(e.smtp.addr(), e.pki.client_config()).await;
    assert_eq!(c.cmd("AUTH PLAIN").await.text(), "334 ");
    assert_eq!(c.cmd(&plain).await.code, 235);
    let mut c = Client::to_auth(e.smtp.addr(), e.pki.client_config()).await;
    assert_eq!(c.cmd("AUTH LOGIN").await.code, 334);
    assert_eq!(c.cmd(&STANDARD.encode("relay")).await.code, 334);
    assert_eq!(c.cmd(&STANDARD.encode("s3cret")).await.code, 235);
    assert_eq!(e.smtp.auth_successes(), 3);

    // Wrong password, wrong user, another authorization identity, garbage: all refused.
    let failures = e.smtp.auth_failures();
    for bad in [
        STANDARD.encode("\0relay\0wrong"),
        STANDARD.encode("\0other\0s3cret"),
        STANDARD.encode("admin\0relay\0s3cret"),
        "!!!".to_string(),
        STANDARD.encode("two\0fields"),
    ] {
        let mut c = Client::to_auth(e.smtp.addr(), e.pki.client_config()).await;
        let r = c.cmd(&format!("AUTH PLAIN {bad}")).await;
        assert!(r.code == 535 || r.code == 501, "{r:?}");
        assert_eq!(c.cmd("MAIL FROM:<a@b.example>").await.code, 530);
    }
    let mut c = Client::to_auth(e.smtp.addr(), e.pki.client_config()).await;
    c.cmd("AUTH LOGIN").await;
    c.cmd(&STANDARD.encode("relay")).await;
    assert_eq!(c.cmd(&STANDARD.encode("nope")).await.code, 535);
    assert_eq!(e.smtp.auth_failures(), failures + 6);
    assert!(
        e.smtp
            .transcript()
            .iter()
            .all(|l| !l.contains(&plain) && !l.contains(&STANDARD.encode("s3cret")))
    );
}

#[tokio::test]
async fn message_bytes_are_stored_exactly() {
    let e = env().await;
    let mut c = authed(&e).await;
    let messages: Vec<&[u8]> = vec![
        // Leading dots, a lone dot line, bare LF (also before a dot: the smuggling shape),
        // bare CR, 8-bit bytes, a long line, trailing blank line.
        b"Subject: exact\r\n\r\n.first\r\n..two\r\n.\r\nbare\nlf\r\nx\n.\r\ny\r.\r\n\xc3\xa9\xff\x00\r\n\r\n",
        // First body line is a lone dot.
        b".\r\nafter\r\n",
        // Empty message.
        b"",
    ];
    for m in &messages {
        assert_eq!(
            send_message(&mut c, MAILBOX, &["to@example.net"], m).await,
            250
        );
    }
    // Byte-at-a-time delivery with a long line.
    let long: Vec<u8> = [
        &b"Subject: slow\r\n\r\n"[..],
        &vec![b'a'; 10_000],
        b"\r\n.end\r\n",
    ]
    .concat();
    assert_eq!(c.cmd("MAIL FROM:<relay@contoso.example>").await.code, 250);
    assert_eq!(c.cmd("RCPT TO:<to@example.net>").await.code, 250);
    assert_eq!(c.cmd("DATA").await.code, 354);
    for chunk in stuff(&long).chunks(997) {
        c.send(chunk).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(c.reply().await.code, 250);

    let got = e.smtp.wait_for_messages(4, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 4);
    let strip = |m: &[u8]| m.strip_suffix(b"\r\n").unwrap_or(m).to_vec();
    assert_eq!(got[0].data, strip(messages[0]));
    assert_eq!(got[1].data, b".\r\nafter");
    assert_eq!(got[2].data, b"");
    assert_eq!(got[3].data, strip(&long));
}

#[tokio::test]
async fn pipelined_starttls_injection_is_discarded() {
    let e = env().await;
    let mut c = Client::connect(e.smtp.addr()).await;
    c.reply().await;
    c.cmd("EHLO relay.test").await;
    c.send(b"STARTTLS\r\nMAIL FROM:<evil@attacker.example>\r\nRCPT TO:<x@y.z>\r\n")
        .await;
    assert_eq!(c.reply().await.code, 220);
    c.upgrade(e.pki.client_config()).await;
    // Had the injected commands run, their replies would come first.
    assert_eq!(c.cmd("NOOP").await.text(), "250 2.0.0 OK");
    assert_eq!(
        c.cmd("MAIL FROM:<a@b.c>").await.text(),
        "503 5.5.2 Send hello first"
    );
    let t = e.smtp.transcript();
    assert!(
        t.iter()
            .any(|l| l.contains("discarded") && l.contains("after STARTTLS")),
        "{t:#?}"
    );
    assert!(
        !t.iter().any(|l| l.contains("evil@attacker.example")),
        "{t:#?}"
    );
}

#[tokio::test]
async fn pipelined_commands_are_answered_in_order() {
    let e = env().await;
    let mut c = authed(&e).await;
    c.send(b"MAIL FROM:<relay@contoso.example>\r\nRCPT TO:<a@x.y>\r\nRCPT TO:<>\r\nRCPT TO:<b@x.y>\r\nDATA\r\n")
        .await;
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(c.reply().await.code);
    }
    assert_eq!(got, vec![250, 250, 501, 250, 354]);
    c.send(b"pipelined\r\n.\r\nRSET\r\nQUIT\r\n").await;
    assert_eq!(c.reply().await.code, 250);
    assert_eq!(c.reply().await.text(), "250 2.0.0 Resetting");
    assert_eq!(c.reply().await.code, 221);
    let m = e.smtp.wait_for_messages(1, Duration::from_secs(5)).await;
    assert_eq!(m[0].rcpt_to, vec!["a@x.y", "b@x.y"]);
    assert_eq!(m[0].data, b"pipelined");
}

#[tokio::test]
async fn without_pipelining_a_pipelining_client_is_refused() {
    let e = env_with(|c| c.advertise_pipelining = false).await;
    let mut c = authed(&e).await;
    let ehlo = c.cmd("EHLO again").await;
    assert!(!ehlo.has_line("PIPELINING"), "{ehlo:?}");
    c.send(b"MAIL FROM:<relay@contoso.example>\r\nRCPT TO:<a@x.y>\r\n")
        .await;
    assert_eq!(c.reply().await.code, 250);
    assert_eq!(
        c.reply().await.text(),
        "503 5.5.0 Improper use of SMTP command pipelining"
    );
    // Lock-step works.
    assert_eq!(
        send_message(&mut c, MAILBOX, &["a@x.y"], b"ok\r\n").await,
        250
    );
}

#[tokio::test]
async fn scripted_replies_and_drops() {
    let e = env().await;

    // 421 at greeting, then closed; the next connection is normal.
    e.smtp
        .script(Stage::Connect, "421 4.3.2 Service not available", 1);
    let mut c = Client::connect(e.smtp.addr()).await;
    assert_eq!(c.reply().await.text(), "421 4.3.2 Service not available");
    assert!(c.closed_without_reply().await);

    let mut c = authed(&e).await;
    e.smtp.script(
        Stage::Mail,
        "554 5.2.252 SendAsDenied; relay@contoso.example not allowed to send as x@y",
        1,
    );
    assert_eq!(c.cmd("MAIL FROM:<x@y.z>").await.code, 554);
    assert_eq!(
        c.cmd("RCPT TO:<a@b.c>").await.code,
        503,
        "the scripted 554 started nothing"
    );
    assert_eq!(c.cmd("MAIL FROM:<x@y.z>").await.code, 250, "count was 1");
    c.cmd("RSET").await;

    // Multi-line scripted reply after the body: not stored.
    e.smtp.script(
        Stage::DataBody,
        "451 4.7.500 Server busy.\n451 4.7.500 Please try again later",
        1,
    );
    c.cmd("MAIL FROM:<relay@contoso.example>").await;
    c.cmd("RCPT TO:<a@b.c>").await;
    c.cmd("DATA").await;
    c.send(b"x\r\n.\r\n").await;
    let r = c.reply().await;
    assert_eq!(
        r.lines,
        vec![
            "451-4.7.500 Server busy.",
            "451 4.7.500 Please try again later"
        ]
    );
    assert!(e.smtp.messages().is_empty());

    // A scripted 2xx replaces only the text; the message is stored.
    e.smtp
        .script(Stage::DataBody, "250 2.0.0 Queued as ABC123", 1);
    assert_eq!(
        send_message(&mut c, MAILBOX, &["a@b.c"], b"y\r\n").await,
        250
    );
    assert!(
        e.smtp
            .transcript()
            .iter()
            .any(|l| l.ends_with("S: 250 2.0.0 Queued as ABC123"))
    );
    assert_eq!(e.smtp.messages().len(), 1);

    // Drop during the body: no reply, nothing stored.
    e.smtp.drop_at(Stage::DataBody, 1);
    assert_eq!(e.smtp.pending_scripts(), 1);
    c.cmd("MAIL FROM:<relay@contoso.example>").await;
    c.cmd("RCPT TO:<a@b.c>").await;
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.send(b"Subject: partial\r\n\r\nhalf a bo").await;
    assert!(c.closed_without_reply().await);
    assert_eq!(e.smtp.messages().len(), 1);
    assert_eq!(e.smtp.pending_scripts(), 0, "the drop was used");

    // Drop at RCPT, then 421 at EHLO closes; clear_scripts restores normal service.
    e.smtp.drop_at(Stage::Rcpt, 1);
    let mut c = authed(&e).await;
    c.cmd("MAIL FROM:<relay@contoso.example>").await;
    c.send(b"RCPT TO:<a@b.c>\r\n").await;
    assert!(c.closed_without_reply().await);
    e.smtp.script(
        Stage::Ehlo,
        "421 4.7.66 TLS 1.0 and 1.1 are not supported",
        5,
    );
    let mut c = Client::connect(e.smtp.addr()).await;
    c.reply().await;
    assert_eq!(c.cmd("EHLO x").await.code, 421);
    assert!(c.closed_without_reply().await);
    e.smtp.clear_scripts();
    let mut c = authed(&e).await;
    assert_eq!(
        send_message(&mut c, MAILBOX, &["a@b.c"], b"z\r\n").await,
        250
    );
    assert_eq!(e.smtp.auth_failures(), 0);
}

#[tokio::test]
async fn size_is_advertised_and_enforced() {
    let e = env_with(|c| c.max_size = 100).await;
    let mut c = Client::to_auth(e.smtp.addr(), e.pki.client_config()).await;
    let ehlo = c.cmd("EHLO relay.test").await;
    assert!(ehlo.has_line("SIZE 100"), "{ehlo:?}");
    let token = e.idp.issue_token(SCOPE).token;
    c.cmd(&format!("AUTH XOAUTH2 {}", xoauth2(MAILBOX, &token)))
        .await;
    let r = c.cmd("MAIL FROM:<relay@contoso.example> SIZE=101").await;
    assert_eq!(
        r.text(),
        "552 5.3.4 Message size exceeds fixed maximum message size"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<relay@contoso.example> SIZE=50")
            .await
            .code,
        250
    );
    c.cmd("RCPT TO:<a@b.c>").await;
    c.cmd("DATA").await;
    c.send(&stuff(
        &[b'z'; 300]
            .iter()
            .chain(b"\r\n")
            .copied()
            .collect::<Vec<u8>>(),
    ))
    .await;
    assert_eq!(c.reply().await.code, 552);
    assert!(e.smtp.messages().is_empty());
    // BDAT over the limit too.
    c.cmd("MAIL FROM:<relay@contoso.example>").await;
    c.cmd("RCPT TO:<a@b.c>").await;
    c.send(format!("BDAT 150 LAST\r\n{}", "q".repeat(150)).as_bytes())
        .await;
    assert_eq!(c.reply().await.code, 552);
    assert!(e.smtp.messages().is_empty());
}

#[tokio::test]
async fn sequence_and_syntax_errors() {
    let e = env().await;
    let mut c = authed(&e).await;
    assert_eq!(
        c.cmd("RCPT TO:<a@b.c>").await.text(),
        "503 5.5.1 Need MAIL command"
    );
    assert_eq!(c.cmd("DATA").await.code, 503);
    assert_eq!(
        c.cmd("FOO bar").await.text(),
        "500 5.5.1 Unrecognized command"
    );
    assert_eq!(c.cmd("MAIL FROM:a@b.c").await.code, 501);
    assert_eq!(c.cmd("MAIL FROM:<a@b.c> FROB=1").await.code, 555);
    c.cmd("MAIL FROM:<relay@contoso.example>").await;
    assert_eq!(c.cmd("MAIL FROM:<relay@contoso.example>").await.code, 503);
    assert_eq!(c.cmd("DATA").await.text(), "503 5.5.2 Need rcpt command");
    assert_eq!(
        c.cmd("RCPT TO:<jos\u{e9}@b.c>").await.code,
        553,
        "UTF-8 address without SMTPUTF8"
    );
    c.send(b"NOOP\n").await;
    assert_eq!(c.reply().await.code, 500, "bare LF");
    assert_eq!(c.cmd("NOOP").await.code, 250);
    assert_eq!(c.cmd("STARTTLS").await.code, 503, "TLS already active");

    // HELO works, but ESMTP needs EHLO.
    let mut c = Client::connect(e.smtp.addr()).await;
    c.reply().await;
    assert_eq!(c.cmd("HELO relay.test").await.code, 250);
    assert_eq!(c.cmd("STARTTLS").await.code, 503);
}

#[tokio::test]
async fn bdat_chunks_are_concatenated_exactly() {
    let e = env().await;
    let mut c = authed(&e).await;
    c.send(b"MAIL FROM:<relay@contoso.example> BODY=BINARYMIME\r\nRCPT TO:<a@b.c>\r\nBDAT 7\r\nhel\r\n.\rBDAT 6 LAST\r\n world")
        .await;
    assert_eq!(c.reply().await.code, 250);
    assert_eq!(c.reply().await.code, 250);
    assert_eq!(c.reply().await.text(), "250 2.0.0 7 octets received");
    assert_eq!(c.reply().await.code, 250);
    let m = e.smtp.wait_for_messages(1, Duration::from_secs(5)).await;
    assert_eq!(m[0].data, b"hel\r\n.\r world");
    assert_eq!(m[0].mail_params, "BODY=BINARYMIME");
    // BINARYMIME may not use DATA.
    c.cmd("MAIL FROM:<relay@contoso.example> BODY=BINARYMIME")
        .await;
    c.cmd("RCPT TO:<a@b.c>").await;
    assert_eq!(c.cmd("DATA").await.code, 503);
}

#[tokio::test]
async fn implicit_tls_mode() {
    let e = env_with(|c| c.tls = UpstreamTls::Implicit).await;
    let mut c = Client::connect_implicit_tls(e.smtp.addr(), e.pki.client_config()).await;
    assert_eq!(c.reply().await.code, 220);
    let ehlo = c.cmd("EHLO relay.test").await;
    assert!(ehlo.has_line("AUTH LOGIN XOAUTH2") && !ehlo.has_line("STARTTLS"));
    let token = e.idp.issue_token(SCOPE).token;
    assert_eq!(
        c.cmd(&format!("AUTH XOAUTH2 {}", xoauth2(MAILBOX, &token)))
            .await
            .code,
        235
    );
    assert_eq!(
        send_message(&mut c, MAILBOX, &["a@b.c"], b"tls\r\n").await,
        250
    );
    assert!(e.smtp.messages()[0].tls);
}

/// Exchange's rules are on by default, so every test of the relay runs against them: Send
/// As only as the mailbox, three sessions per mailbox, and no login with a Graph token.
#[tokio::test]
async fn send_as_session_limit_and_audience_are_on_by_default() {
    let e = env().await;
    let mut c = authed(&e).await;
    assert_eq!(
        send_message(&mut c, "scanner@printer.local", &["a@b.c"], b"x\r\n").await,
        554
    );
    assert!(
        e.smtp
            .transcript()
            .iter()
            .any(|l| l.contains("S: 554 5.2.252 SendAsDenied")),
        "{:?}",
        e.smtp.transcript()
    );
    assert_eq!(
        send_message(&mut c, "RELAY@contoso.example", &["a@b.c"], b"x\r\n").await,
        250
    );

    let _second = authed(&e).await;
    let _third = authed(&e).await;
    let mut fourth = Client::to_auth(e.smtp.addr(), e.pki.client_config()).await;
    let token = e.idp.issue_token(SCOPE).token;
    let r = fourth
        .cmd(&format!("AUTH XOAUTH2 {}", xoauth2(MAILBOX, &token)))
        .await;
    assert!(
        r.text()
            .starts_with("432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded"),
        "{r:?}"
    );
    c.cmd("QUIT").await;
    assert!(c.closed_without_reply().await);
    // The slot frees when the first session ends.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = fourth
            .cmd(&format!("AUTH XOAUTH2 {}", xoauth2(MAILBOX, &token)))
            .await;
        if r.code == 235 {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed: {r:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A token for Graph is a valid token of this IdP, for another audience: refused.
    let e = env().await;
    let mut c = Client::to_auth(e.smtp.addr(), e.pki.client_config()).await;
    let graph = e
        .idp
        .issue_token("https://graph.microsoft.com/.default")
        .token;
    let r = c
        .cmd(&format!("AUTH XOAUTH2 {}", xoauth2(MAILBOX, &graph)))
        .await;
    assert!(
        r.text()
            .starts_with("535 5.7.3 Authentication unsuccessful"),
        "{r:?}"
    );
    assert!(
        e.smtp
            .transcript()
            .iter()
            .any(|l| l.contains("a Graph token cannot log in to SMTP")),
        "{:?}",
        e.smtp.transcript()
    );

    // Each can be turned off for a test that needs it.
    e.smtp.set_send_as(None);
    e.smtp.set_max_sessions_per_mailbox(None);
    let mut c = authed(&e).await;
    assert_eq!(
        send_message(&mut c, "scanner@printer.local", &["a@b.c"], b"x\r\n").await,
        250
    );
}

#[tokio::test]
async fn reply_delay_costs_one_round_trip_per_flush() {
    let delay = Duration::from_millis(200);
    let e = env_with(|c| c.reply_delay = delay).await;
    let t0 = Instant::now();
    let mut c = Client::connect(e.smtp.addr()).await;
    c.reply().await;
    assert!(t0.elapsed() >= delay);
    let t1 = Instant::now();
    c.send(b"NOOP\r\nNOOP\r\nNOOP\r\n").await;
    for _ in 0..3 {
        assert_eq!(c.reply().await.code, 250);
    }
    let pipelined = t1.elapsed();
    assert!(
        pipelined >= delay && pipelined < delay * 3 - Duration::from_millis(50),
        "{pipelined:?}"
    );
}

#[tokio::test]
async fn many_concurrent_sessions() {
    // Exchange's 3 sessions per mailbox would refuse most of them: this is about the fake.
    let e = env_with(|c| c.max_sessions_per_mailbox = None).await;
    let mut tasks = Vec::new();
    for i in 0..25 {
        let addr = e.smtp.addr();
        let cfg = e.pki.client_config();
        let token = e.idp.issue_token(SCOPE).token;
        tasks.push(tokio::spawn(async move {
            let mut c = Client::to_auth(addr, cfg).await;
            assert_eq!(
                c.cmd(&format!("AUTH XOAUTH2 {}", xoauth2(MAILBOX, &token)))
                    .await
                    .code,
                235
            );
            let body = format!("Subject: {i}\r\n\r\nmessage {i}\r\n");
            assert_eq!(
                send_message(&mut c, MAILBOX, &["a@b.c"], body.as_bytes()).await,
                250
            );
            c.cmd("QUIT").await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let msgs = e.smtp.wait_for_messages(25, Duration::from_secs(10)).await;
    assert_eq!(msgs.len(), 25);
    assert_eq!(e.smtp.connections(), 25);
    assert!(e.smtp.peak_connections() >= 2);
    let mut ids: Vec<usize> = msgs.iter().map(|m| m.connection_id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 25);
}

#[tokio::test]
async fn garbage_never_kills_the_server() {
    let e = env_with(|c| c.tls = UpstreamTls::None).await;
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let words: [&[u8]; 14] = [
        b"\r\n",
        b"\n",
        b"\r",
        b".",
        b"DATA",
        b"BDAT ",
        b"AUTH XOAUTH2 ",
        b"MAIL FROM:<",
        b">",
        b"RCPT TO:<a@b>",
        b"EHLO x",
        b"STARTTLS",
        b"\x00\xff",
        b"BDAT 99999999999999999999 LAST",
    ];
    for _ in 0..40 {
        let mut c = Client::connect(e.smtp.addr()).await;
        let mut blob = Vec::new();
        for _ in 0..(next() % 400) {
            if next() % 3 == 0 {
                blob.extend_from_slice(words[(next() % words.len() as u64) as usize]);
            } else {
                blob.push(next() as u8);
            }
        }
        c.send(&blob).await;
        drop(c);
    }
    // Everything still works.
    let mut c = Client::connect(e.smtp.addr()).await;
    assert_eq!(c.reply().await.code, 220);
    c.cmd("EHLO x").await;
    let token = e.idp.issue_token(SCOPE).token;
    assert_eq!(
        c.cmd(&format!("AUTH XOAUTH2 {}", xoauth2(MAILBOX, &token)))
            .await
            .code,
        235
    );
    assert!(!c.is_tls());
    assert_eq!(
        send_message(&mut c, MAILBOX, &["a@b.c"], b"alive\r\n").await,
        250
    );
}

#[tokio::test]
async fn shutdown_closes_sessions_and_port() {
    let e = env().await;
    let mut c = Client::connect(e.smtp.addr()).await;
    c.reply().await;
    e.smtp.shutdown();
    assert!(c.closed_without_reply().await);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(tokio::net::TcpStream::connect(e.smtp.addr()).await.is_err());
}

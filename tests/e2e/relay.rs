//! The core relay, end to end: a device's message reaches the XOAUTH2 upstream byte for byte.

use crate::harness::*;
use smtp2oauth_testkit::{FakeSmtp, IdpFailure, Stage};
use std::time::Duration;

async fn wait_one(smtp: &FakeSmtp) -> smtp2oauth_testkit::ReceivedMessage {
    let mut m = smtp.wait_for_messages(1, Duration::from_secs(20)).await;
    assert_eq!(
        m.len(),
        1,
        "expected one message upstream, transcript:\n{}",
        smtp.transcript().join("\n")
    );
    m.remove(0)
}

/// The fake stores the body without the CRLF that belongs to the terminator.
fn as_stored(sent: &[u8]) -> Vec<u8> {
    let mut v = crlf(sent);
    if v.ends_with(b"\r\n") {
        v.truncate(v.len() - 2);
    }
    v
}

const SIMPLE: &[u8] = b"From: Scanner <scanner@contoso.com>\r\nTo: <you@example.com>\r\nSubject: scan\r\n\r\nA scan.\r\n";

#[tokio::test(flavor = "multi_thread")]
async fn auth_plain_with_curl_arrives_upstream_via_starttls_and_xoauth2() {
    let up = Upstream::start().await;
    let relay = Relay::start(&relay_toml(&up.pki, &up.account_toml(""), ""));
    let dir = tempfile::tempdir().unwrap();
    let f = file(dir.path(), "m.eml", SIMPLE);
    let out = curl(
        &format!("smtp://{}", relay.addr("plain")),
        &["--user", &format!("{DEVICE_USER}:{DEVICE_PASSWORD}")],
        MAILBOX,
        &["you@example.com"],
        &f,
    )
    .await;
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert!(out.stderr.contains("> AUTH PLAIN"), "{}", out.stderr);
    let m = wait_one(&up.smtp).await;
    assert_eq!(m.mail_from, MAILBOX);
    assert_eq!(m.rcpt_to, vec!["you@example.com"]);
    assert_eq!(
        m.auth_user, MAILBOX,
        "XOAUTH2 user= is the account's mailbox"
    );
    assert!(m.tls, "upstream session used STARTTLS");
    assert_eq!(strip_received(&m.data), &as_stored(SIMPLE)[..]);
    assert_eq!(up.smtp.auth_successes(), 1);
    assert_eq!(up.idp.token_requests(), 1);
    let form = up.idp.last_form().unwrap();
    assert_eq!(form["scope"], "https://outlook.office365.com/.default");
    assert_eq!(form["grant_type"], "client_credentials");
    // one info line for the message, with device, account, size and the upstream's reply
    assert!(relay.wait_log("delivered", Duration::from_secs(5)));
    let line = relay
        .logs()
        .lines()
        .find(|l| l.contains(" delivered "))
        .unwrap()
        .to_string();
    for needle in [
        "session=",
        "device=mfp-3f",
        "account=scanner",
        "size=",
        "upstream=250 2.0.0 OK",
    ] {
        assert!(line.contains(needle), "{needle} missing in {line}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_login_with_curl_and_with_smtplib_inline_username() {
    let up = Upstream::start().await;
    let relay = Relay::start(&relay_toml(&up.pki, &up.account_toml(""), ""));
    let dir = tempfile::tempdir().unwrap();
    let f = file(dir.path(), "m.eml", SIMPLE);
    let out = curl(
        &format!("smtp://{}", relay.addr("plain")),
        &[
            "--user",
            &format!("{DEVICE_USER}:{DEVICE_PASSWORD}"),
            "--login-options",
            "AUTH=LOGIN",
        ],
        MAILBOX,
        &["you@example.com"],
        &f,
    )
    .await;
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("< 334 VXNlcm5hbWU6") && out.stderr.contains("< 334 UGFzc3dvcmQ6"),
        "{}",
        out.stderr
    );
    // smtplib sends the username inline: AUTH LOGIN <b64>
    let port = relay.port("plain").to_string();
    let r = smtplib(&[
        "--port",
        &port,
        "--user",
        DEVICE_USER,
        "--password",
        DEVICE_PASSWORD,
        "--auth",
        "LOGIN",
        "--from",
        MAILBOX,
        "--to",
        "you@example.com",
        "--body",
        "login",
    ])
    .await;
    assert_eq!(r[0]["ok"], true, "{r:?}");
    // and AUTH PLAIN after an empty 334
    let r = smtplib(&[
        "--port",
        &port,
        "--user",
        DEVICE_USER,
        "--password",
        DEVICE_PASSWORD,
        "--no-initial-response",
        "--from",
        MAILBOX,
        "--to",
        "you@example.com",
        "--body",
        "plain",
    ])
    .await;
    assert_eq!(r[0]["ok"], true, "{r:?}");
    assert_eq!(
        up.smtp
            .wait_for_messages(3, Duration::from_secs(20))
            .await
            .len(),
        3
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn starttls_and_implicit_tls_from_devices() {
    let up = Upstream::start().await;
    let relay = Relay::start(&relay_toml(&up.pki, &up.account_toml(""), ""));
    let dir = tempfile::tempdir().unwrap();
    let f = file(dir.path(), "m.eml", SIMPLE);
    let ca = up.pki.ca_pem_path().display().to_string();
    let user = format!("{DEVICE_USER}:{DEVICE_PASSWORD}");
    // The strict listener only offers AUTH after STARTTLS.
    let out = curl(
        &format!("smtp://localhost:{}", relay.port("strict")),
        &["--ssl-reqd", "--cacert", &ca, "--user", &user],
        MAILBOX,
        &["you@example.com"],
        &f,
    )
    .await;
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert!(out.stderr.contains("> STARTTLS"), "{}", out.stderr);
    let out = curl(
        &format!("smtps://localhost:{}", relay.port("implicit")),
        &["--cacert", &ca, "--user", &user],
        MAILBOX,
        &["you@example.com"],
        &f,
    )
    .await;
    assert_eq!(out.status, 0, "{}", out.stderr);
    let port = relay.port("strict").to_string();
    let r = smtplib(&[
        "--host",
        "localhost",
        "--port",
        &port,
        "--mode",
        "starttls",
        "--cafile",
        &ca,
        "--user",
        DEVICE_USER,
        "--password",
        DEVICE_PASSWORD,
        "--from",
        MAILBOX,
        "--to",
        "you@example.com",
        "--body",
        "tls",
    ])
    .await;
    assert_eq!(r[0]["ok"], true, "{r:?}");
    let port = relay.port("implicit").to_string();
    let r = smtplib(&[
        "--host",
        "localhost",
        "--port",
        &port,
        "--mode",
        "ssl",
        "--cafile",
        &ca,
        "--user",
        DEVICE_USER,
        "--password",
        DEVICE_PASSWORD,
        "--from",
        MAILBOX,
        "--to",
        "you@example.com",
        "--body",
        "ssl",
    ])
    .await;
    assert_eq!(r[0]["ok"], true, "{r:?}");
    assert_eq!(
        up.smtp
            .wait_for_messages(4, Duration::from_secs(20))
            .await
            .len(),
        4
    );
    // AUTH before STARTTLS on the strict listener: 538 5.7.11
    let r = smtplib(&[
        "--port",
        &port_of(&relay, "strict"),
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
    assert_eq!(r[0]["ok"], false);
    assert_eq!(r[0]["code"], 538, "{r:?}");
}

fn port_of(relay: &Relay, l: &str) -> String {
    relay.port(l).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn no_auth_device_by_address_and_refusal_from_another() {
    let up = Upstream::start().await;
    let relay = Relay::start(&relay_toml(&up.pki, &up.account_toml(""), ""));
    let port = port_of(&relay, "plain");
    let ok = smtplib(&[
        "--port",
        &port,
        "--source",
        "127.0.0.1",
        "--from",
        MAILBOX,
        "--to",
        "you@example.com",
        "--body",
        "ups alarm",
    ])
    .await;
    assert_eq!(ok[0]["ok"], true, "{ok:?}");
    let m = wait_one(&up.smtp).await;
    assert!(String::from_utf8_lossy(&m.data).contains("ups alarm"));
    // 127.0.0.2 is loopback too, but not in the device's allow_ips: never an open relay
    let refused = smtplib(&[
        "--port",
        &port,
        "--source",
        "127.0.0.2",
        "--from",
        MAILBOX,
        "--to",
        "you@example.com",
        "--body",
        "x",
    ])
    .await;
    assert_eq!(refused[0]["ok"], false);
    assert_eq!(refused[0]["code"], 530, "{refused:?}");
    assert!(refused[0]["message"].as_str().unwrap().contains("5.7.0"));
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_and_unknown_user_get_535() {
    let up = Upstream::start().await;
    let relay = Relay::start(&relay_toml(&up.pki, &up.account_toml(""), ""));
    let port = port_of(&relay, "plain");
    for (user, pass) in [(DEVICE_USER, "wrong"), ("nobody", DEVICE_PASSWORD)] {
        let r = smtplib(&[
            "--port",
            &port,
            "--source",
            "127.0.0.2",
            "--user",
            user,
            "--password",
            pass,
            "--from",
            MAILBOX,
            "--to",
            "you@example.com",
        ])
        .await;
        assert_eq!(r[0]["ok"], false);
        assert_eq!(r[0]["code"], 535, "{r:?}");
        assert!(
            r[0]["message"].as_str().unwrap().starts_with("5.7.8"),
            "{r:?}"
        );
    }
    assert!(relay.logs().contains("reason=\"unknown user\""));
    assert!(relay.logs().contains("reason=\"wrong password\""));
    assert_eq!(up.smtp.messages().len(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn disallowed_sender_is_refused_and_rewrite_sender_rewrites_envelope_and_from() {
    let up = Upstream::start().await;
    let accounts = up.account_toml("")
        + &up
            .account_toml("rewrite_sender = true")
            .replace("name = \"scanner\"", "name = \"rewriting\"");
    let extra = format!(
        "[[devices]]\nusername = \"rw\"\npassword_hash = \"{}\"\naccount = \"rewriting\"\n",
        password_hash(DEVICE_PASSWORD)
    );
    let relay = Relay::start(&relay_toml(&up.pki, &accounts, &extra));
    let port = port_of(&relay, "plain");
    let r = smtplib(&[
        "--port",
        &port,
        "--user",
        DEVICE_USER,
        "--password",
        DEVICE_PASSWORD,
        "--from",
        "scanner@printer.local",
        "--to",
        "you@example.com",
    ])
    .await;
    assert_eq!(r[0]["ok"], false);
    assert_eq!(r[0]["code"], 553, "{r:?}");
    assert_eq!(r[0]["stage"], "mail");

    let dir = tempfile::tempdir().unwrap();
    let msg = b"From: \"Scanner 3rd floor\" <scanner@printer.local>\r\nTo: you@example.com\r\nSubject: s\r\n\r\nbody\r\n";
    let f = file(dir.path(), "m.eml", msg);
    let f = f.display().to_string();
    let r = smtplib(&[
        "--port",
        &port,
        "--user",
        "rw",
        "--password",
        DEVICE_PASSWORD,
        "--from",
        "scanner@printer.local",
        "--to",
        "you@example.com",
        "--file",
        &f,
    ])
    .await;
    assert_eq!(r[0]["ok"], true, "{r:?}");
    let m = wait_one(&up.smtp).await;
    assert_eq!(m.mail_from, MAILBOX);
    let body = strip_received(&m.data);
    assert_eq!(
        String::from_utf8_lossy(body),
        "From: \"Scanner 3rd floor\" <scanner@contoso.com>\r\nTo: you@example.com\r\nSubject: s\r\n\r\nbody"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn exact_bytes_eight_bit_dots_bare_lf_big_attachment_many_recipients() {
    let up = Upstream::start().await;
    let relay = Relay::start(&relay_toml(&up.pki, &up.account_toml(""), ""));
    let dir = tempfile::tempdir().unwrap();
    let user = format!("{DEVICE_USER}:{DEVICE_PASSWORD}");
    let url = format!("smtp://{}", relay.addr("plain"));

    // 8-bit UTF-8 without BODY=8BITMIME from the client; lines starting with dots
    let utf8 = "From: <scanner@contoso.com>\r\nTo: <you@example.com>\r\nSubject: =?UTF-8?B?w6lsw6h2ZQ==?=\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße aus dem Büro — 日本語\r\n.a line with a dot\r\n..two dots\r\n.\r\nend\r\n";
    let f = file(dir.path(), "utf8.eml", utf8.as_bytes());
    let out = curl(&url, &["--user", &user], MAILBOX, &["you@example.com"], &f).await;
    assert_eq!(out.status, 0, "{}", out.stderr);
    let m = wait_one(&up.smtp).await;
    up.smtp.take_messages();
    assert_eq!(strip_received(&m.data), &as_stored(utf8.as_bytes())[..]);
    assert!(
        m.mail_params.contains("BODY=8BITMIME"),
        "8-bit body announced upstream: {}",
        m.mail_params
    );

    // bare LF line ends (as some devices send): stored with CRLF. curl (like smtplib) ends a
    // body that does not end in CRLF with CRLF before the final dot, so the last bare LF
    // becomes an empty line of its own: the whole body arrives, line ends made CRLF.
    let bare = b"From: <scanner@contoso.com>\nTo: <you@example.com>\nSubject: bare\n\nline one\nline two\n";
    let f = file(dir.path(), "bare.eml", bare);
    let out = curl(&url, &["--user", &user], MAILBOX, &["you@example.com"], &f).await;
    assert_eq!(out.status, 0, "{}", out.stderr);
    let m = wait_one(&up.smtp).await;
    up.smtp.take_messages();
    assert_eq!(strip_received(&m.data), &crlf(bare)[..]);

    // a 10 MiB scan attachment (base64, as MFPs send it)
    let mut big = b"From: <scanner@contoso.com>\r\nTo: <you@example.com>\r\nSubject: big scan\r\nMIME-Version: 1.0\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n".to_vec();
    let mut x: u32 = 12345;
    while big.len() < 10 * 1024 * 1024 {
        let mut line = Vec::with_capacity(78);
        for _ in 0..76 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            line.push(
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
                    [(x >> 16) as usize % 64],
            );
        }
        big.extend_from_slice(&line);
        big.extend_from_slice(b"\r\n");
    }
    let f = file(dir.path(), "big.eml", &big);
    let out = curl(&url, &["--user", &user], MAILBOX, &["you@example.com"], &f).await;
    assert_eq!(out.status, 0, "{}", out.stderr);
    let m = wait_one(&up.smtp).await;
    up.smtp.take_messages();
    assert!(
        strip_received(&m.data) == &as_stored(&big)[..],
        "10 MiB message altered"
    );

    // many recipients in one message
    let rcpts: Vec<String> = (0..120).map(|i| format!("user{i}@example.com")).collect();
    let refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let f = file(dir.path(), "m.eml", SIMPLE);
    let out = curl(&url, &["--user", &user], MAILBOX, &refs, &f).await;
    assert_eq!(out.status, 0, "{}", out.stderr);
    let m = wait_one(&up.smtp).await;
    assert_eq!(m.rcpt_to, rcpts);
}

#[tokio::test(flavor = "multi_thread")]
async fn swaks_sends_through_the_relay_when_installed() {
    if !required(&["swaks"]) {
        return;
    }
    let up = Upstream::start().await;
    let relay = Relay::start(&relay_toml(&up.pki, &up.account_toml(""), ""));
    let out = run(
        "swaks",
        &[
            "--server",
            "localhost",
            "--port",
            &port_of(&relay, "strict"),
            "--tls",
            "--tls-verify",
            "--tls-ca-path",
            &up.pki.ca_pem_path().display().to_string(),
            "--auth",
            "LOGIN",
            "--auth-user",
            DEVICE_USER,
            "--auth-password",
            DEVICE_PASSWORD,
            "--from",
            MAILBOX,
            "--to",
            "you@example.com",
            "--body",
            "from swaks",
        ]
        .map(String::from),
    )
    .await;
    assert_eq!(out.status, 0, "{}\n{}", out.stdout, out.stderr);
    let m = wait_one(&up.smtp).await;
    assert!(String::from_utf8_lossy(&m.data).contains("from swaks"));
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_cached_refreshed_when_expiring_and_shared_by_concurrent_messages() {
    let up = Upstream::start().await;
    // A new upstream session (and login) per message: this test is about the token each login
    // presents. Pooled sessions have their own tests (crates/upstream/tests/smtp_route.rs).
    let relay = Relay::start(&with_delivery(
        &relay_toml(&up.pki, &up.account_toml(""), ""),
        "upstream_idle_timeout = \"0s\"",
    ));
    let port = port_of(&relay, "plain");
    // 50 concurrent messages from 50 sessions: one token request
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
        "--count",
        "50",
        "--parallel",
        "50",
        "--body",
        "burst",
    ])
    .await;
    assert_eq!(r.len(), 50);
    assert!(r.iter().all(|x| x["ok"] == true), "{r:?}");
    assert_eq!(
        up.smtp
            .wait_for_messages(50, Duration::from_secs(60))
            .await
            .len(),
        50
    );
    assert_eq!(
        up.idp.token_requests(),
        1,
        "single-flight: one token request for 50 concurrent messages"
    );

    // Tokens that expire after 4 s: the relay refreshes before presenting an expiring one.
    up.idp.set_expires_in(Duration::from_secs(4));
    up.idp.revoke_all();
    up.smtp.take_messages();
    for i in 0..3 {
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
            "--body",
            &format!("after expiry {i}"),
        ])
        .await;
        assert_eq!(r[0]["ok"], true, "message {i}: {r:?}");
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    assert_eq!(up.smtp.messages().len(), 3);
    assert!(
        up.idp.token_requests() >= 3,
        "expired tokens were refreshed: {} requests",
        up.idp.token_requests()
    );
    assert_eq!(
        up.smtp.auth_failures(),
        1,
        "only the revoked cached token was refused, once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn token_endpoint_down_gives_the_device_a_4xx_in_synchronous_mode() {
    let up = Upstream::start().await;
    let relay = Relay::start(&with_delivery(
        &relay_toml(&up.pki, &up.account_toml(""), ""),
        "queue = false",
    ));
    up.idp.set_failure(Some(IdpFailure::Unavailable));
    let port = port_of(&relay, "plain");
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
    assert_eq!(r[0]["ok"], false);
    assert_eq!(r[0]["code"], 454, "{r:?}");
    assert!(
        r[0]["message"].as_str().unwrap().starts_with("4.7.0"),
        "{r:?}"
    );
    // a bad client secret is also temporary for the device: the admin can fix it
    up.idp.set_failure(Some(IdpFailure::InvalidClient));
    tokio::time::sleep(Duration::from_secs(6)).await; // past the failure cooldown
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
    assert_eq!(r[0]["code"], 454, "{r:?}");
    assert!(
        relay.logs().contains("7000215"),
        "the AADSTS code is logged"
    );
    // and when it comes back, mail flows
    up.idp.set_failure(None);
    tokio::time::sleep(Duration::from_secs(6)).await;
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
    // the device never saw a 5xx, and nothing reached the upstream before the token came back
    assert_eq!(up.smtp.messages().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_535_and_554_send_as_denied_reach_the_device_with_their_text() {
    let up = Upstream::start().await;
    let relay = Relay::start(&relay_toml(&up.pki, &up.account_toml(""), ""));
    let port = port_of(&relay, "plain");
    up.smtp.script(Stage::Auth, "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.", 10);
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
    // A refusal of the relay's account, not of the message: the device hears it as 451 4.7.0
    // in the upstream's words, and the relay keeps the message.
    assert_eq!(r[0]["code"], 451, "{r:?}");
    let text = r[0]["message"].as_str().unwrap();
    assert!(text.starts_with("4.7.0 "), "{r:?}");
    assert!(
        text.contains(
            "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled"
        ),
        "{r:?}"
    );
    assert!(relay.logs().contains("Set-CASMailbox"), "advice in the log");
    assert_eq!(spool_ids(&relay.store(), "queue").len(), 1, "kept");
    up.smtp.clear_scripts();
    // Once SMTP AUTH is enabled again, the kept message goes out (the account holds ~5 s).
    let got = up.smtp.wait_for_messages(1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1, "{}", relay.logs());
    up.smtp.take_messages();

    up.smtp.script(
        Stage::DataBody,
        "554 5.2.252 SendAsDenied; scanner@contoso.com not allowed to send as printer@contoso.com",
        1,
    );
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
    assert_eq!(r[0]["code"], 554, "{r:?}");
    assert!(
        r[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("5.2.252 SendAsDenied"),
        "{r:?}"
    );
    // an upstream 4xx is the queue's business: the device gets 250 and the message is retried
    up.smtp.script(
        Stage::Mail,
        "451 4.7.500 Server busy. Please try again later.",
        1,
    );
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
    // nothing of the refused message was kept: its device was told
    assert!(
        std::fs::read_dir(relay.store().join("spool/failed"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn in_synchronous_mode_an_upstream_4xx_reaches_the_device() {
    let up = Upstream::start().await;
    let relay = Relay::start(&with_delivery(
        &relay_toml(&up.pki, &up.account_toml(""), ""),
        "queue = false",
    ));
    let port = port_of(&relay, "plain");
    up.smtp.script(
        Stage::Mail,
        "451 4.7.500 Server busy. Please try again later.",
        1,
    );
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
    assert_eq!(r[0]["code"], 451, "{r:?}");
    assert!(
        r[0]["message"].as_str().unwrap().starts_with("4.7.500"),
        "{r:?}"
    );
    // nothing is kept in synchronous mode: the device has its copy
    assert!(
        std::fs::read_dir(relay.store().join("spool/queue"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_unreachable_or_dropping_gives_4xx_never_5xx_in_synchronous_mode() {
    let up = Upstream::start().await;
    let relay = Relay::start(&with_delivery(
        &relay_toml(&up.pki, &up.account_toml(""), ""),
        "queue = false",
    ));
    let port = port_of(&relay, "plain");
    // Dropped twice: the relay tries once more on a new connection within the attempt.
    up.smtp.drop_at(Stage::DataBody, 2);
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
    assert_eq!(r[0]["code"], 451, "{r:?}");
    up.smtp.shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;
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
    assert_eq!(r[0]["code"], 451, "{r:?}");
    assert!(
        r[0]["message"].as_str().unwrap().starts_with("4.4.1"),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_message_gets_552_and_the_session_stays_usable() {
    let up = Upstream::start().await;
    let toml = relay_toml(&up.pki, &up.account_toml(""), "").replace(
        "hostname = \"relay.test\"",
        "hostname = \"relay.test\"\nmax_message_size = 20000",
    );
    let relay = Relay::start(&toml);
    let dir = tempfile::tempdir().unwrap();
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    big.extend(std::iter::repeat_n(b"x".repeat(70).into_iter().chain(*b"\r\n"), 400).flatten());
    let big = file(dir.path(), "big.eml", &big).display().to_string();
    let small = file(dir.path(), "small.eml", SIMPLE).display().to_string();
    let port = port_of(&relay, "plain");
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
        "--file",
        &big,
        "--file",
        &small,
        "--count",
        "2",
        "--per-session",
        "2",
    ])
    .await;
    assert_eq!(r[0]["ok"], false, "{r:?}");
    assert_eq!(r[0]["code"], 552, "{r:?}");
    assert!(r[0]["message"].as_str().unwrap().starts_with("5.3.4"));
    assert_eq!(r[1]["ok"], true, "same session, next message: {r:?}");
    let m = wait_one(&up.smtp).await;
    assert_eq!(strip_received(&m.data), &as_stored(SIMPLE)[..]);
    // nothing of the refused message was left in the spool
    let data = std::fs::read_dir(relay.store().join("spool/data"))
        .unwrap()
        .count();
    assert_eq!(data, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_appear_in_logs() {
    let up = Upstream::start().await;
    // A new upstream session per message, so the last one logs in again (and is refused).
    let relay = Relay::start(&with_delivery(
        &relay_toml(&up.pki, &up.account_toml(""), ""),
        "upstream_idle_timeout = \"0s\"",
    ));
    let port = port_of(&relay, "plain");
    for auth in ["PLAIN", "LOGIN"] {
        let r = smtplib(&[
            "--port",
            &port,
            "--user",
            DEVICE_USER,
            "--password",
            DEVICE_PASSWORD,
            "--auth",
            auth,
            "--from",
            MAILBOX,
            "--to",
            "you@example.com",
        ])
        .await;
        assert_eq!(r[0]["ok"], true, "{r:?}");
    }
    let _ = smtplib(&[
        "--port",
        &port,
        "--user",
        DEVICE_USER,
        "--password",
        "Wr0ng-p@ssword",
        "--from",
        MAILBOX,
        "--to",
        "you@example.com",
    ])
    .await;
    up.smtp
        .script(Stage::Auth, "535 5.7.3 Authentication unsuccessful", 2);
    let _ = smtplib(&[
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
    let logs = relay.logs();
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "logs captured at trace level"
    );
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut secrets = vec![
        DEVICE_PASSWORD.to_string(),
        "Wr0ng-p@ssword".to_string(),
        CLIENT_SECRET.to_string(),
        b64(DEVICE_PASSWORD),
        b64(&format!("\0{DEVICE_USER}\0{DEVICE_PASSWORD}")),
        // A wrong password is as secret as the right one (often a near miss of it).
        b64("Wr0ng-p@ssword"),
        b64(&format!("\0{DEVICE_USER}\0Wr0ng-p@ssword")),
        password_hash(DEVICE_PASSWORD),
    ];
    let issued = up.idp.issued_tokens();
    assert!(
        issued.len() >= 2,
        "the relay fetched a new token after the refusal"
    );
    for t in issued {
        // the signature part is unique to each token
        secrets.push(t.split('.').next_back().unwrap().to_string());
        secrets.push(t);
    }
    let stdout = relay.stdout();
    for s in &secrets {
        assert!(
            !logs.contains(s.as_str()),
            "secret found in the relay's logs: {s}"
        );
        assert!(
            !stdout.contains(s.as_str()),
            "secret found in the relay's standard output: {s}"
        );
    }
    // the real tokens the relay used: none may appear (XOAUTH2 lines included)
    for line in up.smtp.transcript() {
        assert!(!line.contains("auth=Bearer"), "{line}");
    }
    assert!(!logs.contains("auth=Bearer"));
    assert!(
        !logs.contains("dXNlcj1"),
        "no base64 XOAUTH2 string (starts with user=) in logs"
    );
}

/// Printers send one message per session; upstream, the relay keeps one authenticated session
/// for all of them (no new TLS handshake or login per scan).
#[tokio::test(flavor = "multi_thread")]
async fn one_upstream_session_carries_many_device_sessions() {
    let up = Upstream::start().await;
    let relay = Relay::start(&relay_toml(&up.pki, &up.account_toml(""), ""));
    let port = port_of(&relay, "plain");
    for i in 0..5 {
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
            "--body",
            &format!("scan {i}"),
        ])
        .await;
        assert_eq!(r[0]["ok"], true, "{r:?}");
    }
    let got = up.smtp.wait_for_messages(5, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 5);
    assert_eq!(
        up.smtp.connections(),
        1,
        "{}",
        up.smtp.transcript().join("\n")
    );
    assert_eq!(up.smtp.auth_successes(), 1);
    assert_eq!(up.idp.token_requests(), 1);
}

/// provider = "generic": an OAuth mail server that speaks only the standard SASL
/// mechanism (RFC 7628). The relay gets its token from the configured token endpoint, logs in
/// with AUTH OAUTHBEARER, and when a cached token is refused it finishes the RFC's error
/// exchange and logs in again with a new one; no token reaches the logs.
#[tokio::test(flavor = "multi_thread")]
async fn generic_provider_with_oauthbearer_delivers_and_recovers_from_a_revoked_token() {
    let up = Upstream::start_with(
        |_| {},
        |s| {
            s.xoauth2 = false;
            s.oauthbearer = true;
        },
    )
    .await;
    let scope = "https://mail.example.net/.default";
    let account = format!(
        r#"
[[accounts]]
name = "scanner"
mailbox = "{MAILBOX}"
route = "smtp"
provider = "generic"
token_url = "{token_url}"
scope = "{scope}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
smtp_host = "127.0.0.1"
smtp_port = {port}
smtp_tls = "starttls"
smtp_auth = "oauthbearer"
ca_file = "{ca}"
"#,
        token_url = up.idp.token_url(),
        port = up.smtp.port(),
        ca = up.pki.ca_pem_path().display(),
    );
    // A new upstream session per message, so the second message logs in again.
    let relay = Relay::start(&with_delivery(
        &relay_toml(&up.pki, &account, ""),
        "upstream_idle_timeout = \"0s\"",
    ));
    let port = port_of(&relay, "plain");
    let send = |body: &'static str| {
        let port = port.clone();
        async move {
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
                "--body",
                body,
            ])
            .await
        }
    };

    let r = send("first scan").await;
    assert_eq!(r[0]["ok"], true, "{r:?}");
    let m = wait_one(&up.smtp).await;
    assert_eq!(m.auth_user, MAILBOX, "a= in the GS2 header is the mailbox");
    assert!(m.tls);
    let form = up.idp.last_form().unwrap();
    assert_eq!(form["scope"], scope);
    assert_eq!(form["grant_type"], "client_credentials");

    // The token is revoked before it expires: the cached one is refused, a new one works.
    up.idp.revoke_all();
    let r = send("second scan").await;
    assert_eq!(r[0]["ok"], true, "{r:?}");
    let got = up.smtp.wait_for_messages(2, Duration::from_secs(20)).await;
    let transcript = up.smtp.transcript().join("\n");
    assert_eq!(got.len(), 2, "{transcript}");
    assert!(
        String::from_utf8_lossy(&got[1].data).contains("second scan"),
        "{transcript}"
    );
    assert_eq!(up.idp.token_requests(), 2);
    assert_eq!(
        (up.smtp.auth_successes(), up.smtp.auth_failures()),
        (2, 1),
        "{transcript}"
    );
    let clients: Vec<&str> = transcript
        .lines()
        .filter_map(|l| l.split_once("] C: ").map(|(_, c)| c))
        .collect();
    assert_eq!(
        clients
            .iter()
            .filter(|c| **c == "AUTH OAUTHBEARER [redacted]")
            .count(),
        3,
        "{transcript}"
    );
    assert!(!clients.iter().any(|c| c.starts_with("AUTH XOAUTH2")));
    assert!(
        clients.contains(&"AQ=="),
        "the error challenge was acknowledged: {transcript}"
    );

    // The refusal is explained in the log; no token, and no initial response, is.
    assert!(
        relay.wait_log("upstream refused a cached token", Duration::from_secs(5)),
        "{}",
        relay.logs()
    );
    let logs = relay.logs();
    assert!(
        logs.contains("invalid_token"),
        "the server's JSON error is logged"
    );
    for t in up.idp.issued_tokens() {
        assert!(!logs.contains(&t), "a token is in the relay's logs");
        assert!(!logs.contains(t.split('.').next_back().unwrap()));
    }
    assert!(!logs.contains("auth=Bearer"));
    // base64 of the GS2 header "n,a=" starts every OAUTHBEARER initial response.
    assert!(
        !logs.contains("bixhP"),
        "an OAUTHBEARER response is in the logs"
    );
}

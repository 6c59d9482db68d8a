//! Scans larger than one Microsoft Graph request, end to end: the real binary with
//! `graph_large_messages = "upload"` against the fake Graph (drafts, attachments, upload
//! sessions with their chunk rules, send, delete), driven by curl, Python's smtplib and swaks.
//!
//! What a user relies on: a 5, 20 or 35 MB scan arrives with every attachment byte-identical
//! (SHA-256), its subject, text, sender and recipients intact; a throttle in the middle of an
//! upload costs a pause, never a duplicate or a draft left in the mailbox; an app without
//! `Mail.ReadWrite` is told so; `"refuse"` and `"fallback"` do what they say.

use crate::harness::*;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use smtp2oauth_testkit::{FakeGraph, GraphFailure, GraphMessage, GraphStep};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The fake token endpoint and Exchange SMTP (for the fallback), and the fake Graph.
struct Env {
    up: Upstream,
    graph: FakeGraph,
}

impl Env {
    async fn start() -> Env {
        let up = Upstream::start().await;
        let graph =
            FakeGraph::start(up.pki.server_config(), MAILBOX, up.idp.scope_validator()).await;
        Env { up, graph }
    }

    /// A relay whose account sends through Graph, with `extra` account keys.
    fn relay(&self, extra: &str) -> Relay {
        Relay::start(&relay_toml(&self.up.pki, &self.account(extra), ""))
    }

    fn account(&self, extra: &str) -> String {
        let account = format!(
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
max_messages_per_minute = 0
{extra}
"#,
            authority = self.up.idp.authority(),
            graph = self.graph.url(),
            ca = self.up.pki.ca_pem_path().display(),
            smtp_port = self.up.smtp.port(),
        );
        account
    }

    async fn wait_for_messages(&self, n: usize, relay: &Relay) -> Vec<GraphMessage> {
        let m = self
            .graph
            .wait_for_messages(n, Duration::from_secs(120))
            .await;
        assert_eq!(m.len(), n, "{}", relay.logs());
        m
    }

    /// No token, client secret, device password or upload URL credential in the relay's
    /// trace-level log.
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
        assert!(
            !logs.contains("authtoken="),
            "an upload URL (a credential) appears in the log"
        );
    }
}

const UPLOAD: &str = "graph_large_messages = \"upload\"";
const TEXT: &str = "Scanned by the MFP in room 2. Caf\u{e9} au lait.";
const HTML: &str = "<p>Scanned by the MFP in room 2.</p><img src=\"cid:logo@mfp.example\">";
const FROM: &str = "Scanner <scanner@contoso.com>";
const TO: &str = "Alice <alice@example.com>";
const CC: &str = "bob@example.com";
/// The envelope: To, Cc, and a Bcc the device gives only in RCPT TO.
const RCPTS: [&str; 3] = [
    "alice@example.com",
    "bob@example.com",
    "archive@example.com",
];

/// An attachment as a device sends it.
struct Part {
    name: &'static str,
    content_type: &'static str,
    bytes: Vec<u8>,
    /// Inline parts (referred to by the HTML body) have one.
    content_id: Option<&'static str>,
}

impl Part {
    fn new(name: &'static str, content_type: &'static str, size: usize, seed: u64) -> Part {
        Part {
            name,
            content_type,
            bytes: noise(size, seed),
            content_id: None,
        }
    }
}

/// Bytes that do not repeat (xorshift), so a misplaced chunk shows.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

fn sha256(b: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn b64_lines(b: &[u8]) -> String {
    let enc = STANDARD.encode(b);
    enc.as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// A scan as an MFP sends it: multipart/mixed with a text body, the inline parts in a
/// multipart/related with an HTML body, then the attachments, all base64 in lines of 76.
fn scan(subject: &str, parts: &[Part]) -> Vec<u8> {
    let mut m = format!(
        "From: {FROM}\r\nTo: {TO}\r\nCc: {CC}\r\nSubject: {subject}\r\nMessage-ID: <{}@mfp.example>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"=_mixed\"\r\n\r\n",
        sha256(subject.as_bytes())
    );
    m.push_str(&format!(
        "--=_mixed\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n",
        b64_lines(TEXT.as_bytes())
    ));
    let inline: Vec<&Part> = parts.iter().filter(|p| p.content_id.is_some()).collect();
    if !inline.is_empty() {
        m.push_str("--=_mixed\r\nContent-Type: multipart/related; boundary=\"=_rel\"\r\n\r\n");
        m.push_str(&format!(
            "--=_rel\r\nContent-Type: text/html; charset=us-ascii\r\n\r\n{HTML}\r\n"
        ));
        for p in &inline {
            m.push_str(&format!(
                "--=_rel\r\nContent-Type: {}\r\nContent-Disposition: inline; filename=\"{}\"\r\nContent-ID: <{}>\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n",
                p.content_type,
                p.name,
                p.content_id.unwrap(),
                b64_lines(&p.bytes)
            ));
        }
        m.push_str("--=_rel--\r\n");
    }
    for p in parts.iter().filter(|p| p.content_id.is_none()) {
        m.push_str(&format!(
            "--=_mixed\r\nContent-Type: {}; name=\"{}\"\r\nContent-Disposition: attachment; filename=\"{}\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n",
            p.content_type,
            p.name,
            p.name,
            b64_lines(&p.bytes)
        ));
    }
    m.push_str("--=_mixed--\r\n");
    m.into_bytes()
}

/// What Graph delivers is what the device sent: the sender, subject and recipient headers as
/// written (plus a `Bcc:` for the envelope-only recipient), every recipient, the text and HTML
/// bodies, and every attachment byte-identical with its name, type, inline flag and
/// Content-ID, whether it went back into the draft by upload or stayed in it; no draft is left.
fn assert_delivered(m: &GraphMessage, subject: &str, parts: &[Part], graph: &FakeGraph) {
    assert_eq!(m.recipients, RCPTS, "To, Cc and the envelope-only Bcc");
    let draft = String::from_utf8_lossy(m.draft_mime.as_ref().expect("sent as a draft"));
    for h in [
        format!("\r\nFrom: {FROM}\r\n"),
        format!("\r\nTo: {TO}\r\n"),
        format!("\r\nCc: {CC}\r\n"),
        format!("\r\nSubject: {subject}\r\n"),
        "\r\nBcc: archive@example.com\r\n".to_string(),
    ] {
        assert!(draft.contains(&h), "{h:?} not in the draft's headers");
    }
    let texts = m.rendered_text_parts();
    assert_eq!(texts[0], TEXT, "the text body");
    if parts.iter().any(|p| p.content_id.is_some()) {
        assert!(texts.iter().any(|t| t == HTML), "the HTML body: {texts:?}");
    }
    let mut uploaded = 0;
    for p in parts {
        let found: Vec<_> = m.attachments.iter().filter(|a| a.name == p.name).collect();
        match found[..] {
            [a] => {
                assert_eq!(sha256(&a.bytes), sha256(&p.bytes), "{} SHA-256", p.name);
                assert_eq!(a.content_type, p.content_type, "{}", p.name);
                assert_eq!(a.is_inline, p.content_id.is_some(), "{} inline", p.name);
                assert_eq!(a.content_id.as_deref(), p.content_id, "{}", p.name);
                assert!(
                    !draft.contains(&format!("filename=\"{}\"", p.name)),
                    "{} both in the draft and attached",
                    p.name
                );
                uploaded += usize::from(a.chunks > 0);
            }
            // A small part stays in the draft, its base64 byte for byte as the device wrote it.
            [] => assert!(
                draft.contains(&b64_lines(&p.bytes)),
                "{} is neither attached nor in the draft whole",
                p.name
            ),
            _ => panic!("{} attached {} times", p.name, found.len()),
        }
    }
    assert!(uploaded >= 1, "at least one part went by upload session");
    assert!(graph.drafts().is_empty(), "no draft left");
    for r in graph
        .requests()
        .iter()
        .filter(|r| r.step == GraphStep::UploadChunk)
    {
        assert!(!r.authorization, "no bearer token on an upload URL");
        assert!(r.body_len <= 4 * 1024 * 1024, "{r:?}");
        assert!(!matches!(r.status, 400 | 411 | 415 | 416), "{r:?}");
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    file(dir, name, bytes)
}

async fn smtplib_send(relay: &Relay, path: &Path) -> serde_json::Value {
    let f = path.display().to_string();
    let mut args = vec!["--file", &f, "--timeout", "180"];
    for r in RCPTS {
        args.extend(["--to", r]);
    }
    send_as_device(relay, MAILBOX, &args).await.remove(0)
}
#[tokio::test(flavor = "multi_thread")]
async fn curl_sends_a_5_mb_scan_with_one_pdf_through_a_draft() {
    let e = Env::start().await;
    let relay = e.relay(UPLOAD);
    let parts = [Part::new("scan-0001.pdf", "application/pdf", 3_700_000, 1)];
    let subject = "Scan 5 MB";
    let msg = scan(subject, &parts);
    assert!((4_900_000..5_400_000).contains(&msg.len()), "{}", msg.len());
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "scan.eml", &msg);
    let out = curl(
        &format!("smtp://{}", relay.addr("plain")),
        &["--user", &format!("{DEVICE_USER}:{DEVICE_PASSWORD}")],
        MAILBOX,
        &RCPTS,
        &f,
    )
    .await;
    assert_eq!(out.status, 0, "{}", out.stderr);
    // Devices of an uploading account are told the server's limit, not one request's.
    assert!(out.stderr.contains("< 250-SIZE 36700160"), "{}", out.stderr);
    let m = e.wait_for_messages(1, &relay).await;
    assert_delivered(&m[0], subject, &parts, &e.graph);
    // The delivery's reply says how; it is logged once Graph has answered the send, which may
    // come after the fake recorded the message.
    assert!(
        relay.wait_log("sent through a draft", Duration::from_secs(5)),
        "{}",
        relay.logs()
    );
    e.assert_no_secrets(&relay);
}

#[tokio::test(flavor = "multi_thread")]
async fn smtplib_sends_a_20_mb_scan_with_several_attachments_one_inline() {
    let e = Env::start().await;
    let relay = e.relay(UPLOAD);
    let parts = [
        Part {
            content_id: Some("logo@mfp.example"),
            ..Part::new("logo.png", "image/png", 1_500_000, 2)
        },
        Part::new("scan-0001.pdf", "application/pdf", 7_000_000, 3),
        Part::new("scan-0002.tif", "image/tiff", 4_200_000, 4),
        Part::new("scan-0003.pdf", "application/pdf", 2_000_000, 5),
        // Small enough to stay in the draft as the device wrote it.
        Part::new("index.csv", "text/csv", 40_000, 6),
    ];
    let subject = "Scan 20 MB";
    let msg = scan(subject, &parts);
    assert!(
        (19_500_000..21_000_000).contains(&msg.len()),
        "{}",
        msg.len()
    );
    let dir = tempfile::tempdir().unwrap();
    let r = smtplib_send(&relay, &write(dir.path(), "scan.eml", &msg)).await;
    assert_eq!(r["ok"], true, "{r}");
    let m = e.wait_for_messages(1, &relay).await;
    assert_delivered(&m[0], subject, &parts, &e.graph);
    // The 1.5 and 2 MB parts went in one request each; the larger ones by upload session.
    let by_name = |n: &str| {
        m[0].attachments
            .iter()
            .find(|a| a.name == n)
            .unwrap()
            .chunks
    };
    assert_eq!(by_name("logo.png"), 0);
    assert_eq!(by_name("scan-0003.pdf"), 0);
    assert!(by_name("scan-0001.pdf") >= 2);
    e.assert_no_secrets(&relay);
}

#[tokio::test(flavor = "multi_thread")]
async fn swaks_sends_a_35_mb_scan() {
    if !required(&["swaks"]) {
        return;
    }
    let e = Env::start().await;
    let relay = e.relay(UPLOAD);
    let parts = [
        Part {
            content_id: Some("logo@mfp.example"),
            ..Part::new("logo.png", "image/png", 200_000, 7)
        },
        Part::new("scan-0001.pdf", "application/pdf", 25_300_000, 8),
    ];
    let subject = "Scan 35 MB";
    let msg = scan(subject, &parts);
    assert!(
        (34_500_000..35_500_000).contains(&msg.len()),
        "{}",
        msg.len()
    );
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "scan.eml", &msg);
    let mut args: Vec<String> = [
        "--server",
        "127.0.0.1",
        "--port",
        &relay.port("plain").to_string(),
        "--auth",
        "PLAIN",
        "--auth-user",
        DEVICE_USER,
        "--auth-password",
        DEVICE_PASSWORD,
        "--from",
        MAILBOX,
        "--to",
        &RCPTS.join(","),
        "--data",
        &format!("@{}", f.display()),
        "--timeout",
        "180",
        "--suppress-data",
    ]
    .map(String::from)
    .to_vec();
    args.push("--silent".into());
    args.push("2".into());
    let out = run("swaks", &args).await;
    assert_eq!(out.status, 0, "{}\n{}", out.stdout, out.stderr);
    let m = e.wait_for_messages(1, &relay).await;
    assert_delivered(&m[0], subject, &parts, &e.graph);
    let pdf = &m[0].attachments[0];
    assert!(
        pdf.chunks >= 7,
        "25 MB in chunks of 3.75 MiB: {}",
        pdf.chunks
    );
    e.assert_no_secrets(&relay);
}

/// Graph throttles the third chunk: the conversation deletes its draft, the account pauses for
/// the `Retry-After`, and the retry sends the message once.
#[tokio::test(flavor = "multi_thread")]
async fn a_throttle_mid_upload_is_retried_without_a_duplicate_or_a_stray_draft() {
    let e = Env::start().await;
    // The message's own backoff is short: only the account's pause explains the wait.
    let relay = Relay::start(&with_delivery(
        &relay_toml(&e.up.pki, &e.account(UPLOAD), ""),
        "retry_initial = \"100ms\"",
    ));
    let parts = [Part::new("scan-0001.pdf", "application/pdf", 9_000_000, 9)];
    let subject = "Scan throttled";
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "scan.eml", &scan(subject, &parts));
    e.graph
        .fail_step(GraphStep::UploadChunk, 3, GraphFailure::throttled(3));
    let r = smtplib_send(&relay, &f).await;
    // A temporary failure: the queue owns the message, the device got 250.
    assert_eq!(r["ok"], true, "{r}");
    let m = e.wait_for_messages(1, &relay).await;
    let throttled_at = e
        .graph
        .requests()
        .iter()
        .find(|r| r.status == 429)
        .map(|r| r.at)
        .expect("the 429 was answered");
    let second_draft = e
        .graph
        .requests()
        .iter()
        .filter(|r| r.step == GraphStep::CreateDraft)
        .nth(1)
        .map(|r| r.at)
        .expect("a second draft for the retry");
    let waited = second_draft.duration_since(throttled_at);
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(15),
        "the account paused for Retry-After: {waited:?}"
    );
    // Nothing more arrives: no duplicate.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(e.graph.messages().len(), 1, "exactly one delivery");
    assert_delivered(&m[0], subject, &parts, &e.graph);
    let count = |step| e.graph.requests().iter().filter(|r| r.step == step).count();
    assert_eq!(count(GraphStep::CreateDraft), 2);
    assert_eq!(
        count(GraphStep::DeleteDraft),
        1,
        "the throttled draft was deleted"
    );
    assert_eq!(count(GraphStep::SendDraft), 1);
    assert!(e.graph.drafts().is_empty(), "no stray draft");
    let logs = relay.logs();
    assert!(logs.contains("Retry after 3 seconds"), "{logs}");
    assert!(logs.contains("pausing all its deliveries"), "{logs}");
    assert!(logs.contains("while uploading an attachment"), "{logs}");
    assert!(
        spool_ids(&relay.store(), "queue").is_empty(),
        "delivered, removed"
    );
    e.assert_no_secrets(&relay);
}

/// An app without `Mail.ReadWrite`: the draft is refused with 403. That is the account's
/// permission, not the message's: the device hears `451 4.7.0` with Graph's words and the
/// permission to add, the advice says the same, the relay keeps the message and no draft is
/// left; once the permission is granted, the kept message goes out through a draft.
#[tokio::test(flavor = "multi_thread")]
async fn a_403_on_the_draft_keeps_the_message_and_names_mail_readwrite() {
    let e = Env::start().await;
    let relay = e.relay(UPLOAD);
    e.graph.set_drafts_denied(true);
    let parts = [Part::new("scan-0001.pdf", "application/pdf", 3_700_000, 10)];
    let subject = "Scan denied";
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "scan.eml", &scan(subject, &parts));
    let r = smtplib_send(&relay, &f).await;
    assert_eq!(
        (r["ok"].clone(), r["code"].clone()),
        (false.into(), 451.into()),
        "{r}"
    );
    let text = r["message"].as_str().unwrap();
    assert!(text.starts_with("4.7.0 "), "{text}");
    assert!(
        text.contains("5.7.1"),
        "Graph's refusal, kept whole: {text}"
    );
    assert!(
        text.contains("Mail.ReadWrite"),
        "the reply names the permission: {text}"
    );
    assert!(text.contains("ErrorAccessDenied"), "Graph's words: {text}");
    assert!(
        relay.wait_log(
            "Mail.ReadWrite too with graph_large_messages",
            Duration::from_secs(5)
        ),
        "the advice in the log: {}",
        relay.logs()
    );
    assert_eq!(spool_ids(&relay.store(), "queue").len(), 1, "kept");
    // Nothing half-built is left, and sendMail was not tried with a message it cannot take.
    assert!(e.graph.drafts().is_empty());
    assert!(
        e.graph
            .requests()
            .iter()
            .all(|r| r.step == GraphStep::CreateDraft && r.status == 403),
        "{:?}",
        e.graph.requests()
    );
    // The admin adds Mail.ReadWrite: the account's next attempt sends the kept message.
    e.graph.set_drafts_denied(false);
    let m = e.wait_for_messages(1, &relay).await;
    assert_delivered(&m[0], subject, &parts, &e.graph);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !spool_ids(&relay.store(), "queue").is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        spool_ids(&relay.store(), "queue").is_empty(),
        "delivered, removed"
    );
    e.assert_no_secrets(&relay);
}

/// `"refuse"` refuses large mail with `552 5.3.4` before it is accepted, even with a fallback
/// route (the devices are told the limit); left unset on a Graph-only account it is the
/// default, and the relay says at start that `"upload"` would send such mail.
#[tokio::test(flavor = "multi_thread")]
async fn refuse_gives_552_and_the_default_names_upload() {
    let e = Env::start().await;
    let limit = 3 * 1024 * 1024 - 64 * 1024;
    let parts = [Part::new("scan-0001.pdf", "application/pdf", 3_700_000, 11)];
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "scan.eml", &scan("Scan refused", &parts));

    let relay = e.relay("graph_large_messages = \"refuse\"\nfallback_route = \"smtp\"");
    let r = smtplib_send(&relay, &f).await;
    assert_eq!(
        (r["ok"].clone(), r["code"].clone()),
        (false.into(), 552.into()),
        "{r}"
    );
    assert!(
        r["message"].as_str().unwrap().contains(&format!(
            "5.3.4 Message size exceeds fixed maximum message size ({limit} bytes)"
        )),
        "{r}"
    );
    // Set explicitly: no start-up warning about it (the next relay, with it unset, has one).
    assert!(
        !relay.logs().contains("accounts.0.graph_large_messages"),
        "{}",
        relay.logs()
    );
    drop(relay);

    let relay = e.relay("");
    let r = smtplib_send(&relay, &f).await;
    assert_eq!(r["code"], 552, "{r}");
    let logs = relay.logs();
    assert!(
        logs.contains("accounts.0.graph_large_messages")
            && logs.contains("set graph_large_messages = \"upload\""),
        "the start-up warning names \"upload\": {logs}"
    );
    assert!(e.graph.requests().is_empty(), "Graph was never asked");
    assert!(e.up.smtp.messages().is_empty(), "nor the SMTP fallback");
}

/// `"fallback"` hands the message, unchanged, to the fallback route; Graph is never asked.
#[tokio::test(flavor = "multi_thread")]
async fn fallback_hands_large_mail_to_the_fallback_route() {
    let e = Env::start().await;
    let relay = e.relay("graph_large_messages = \"fallback\"\nfallback_route = \"smtp\"");
    let parts = [Part::new("scan-0001.pdf", "application/pdf", 3_700_000, 12)];
    let msg = scan("Scan over SMTP", &parts);
    let dir = tempfile::tempdir().unwrap();
    let r = smtplib_send(&relay, &write(dir.path(), "scan.eml", &msg)).await;
    assert_eq!(r["ok"], true, "{r}");
    let m =
        e.up.smtp
            .wait_for_messages(1, Duration::from_secs(60))
            .await;
    assert_eq!(m.len(), 1, "{}", relay.logs());
    assert_eq!(strip_received(&m[0].data), &msg[..msg.len() - 2]);
    assert!(e.graph.requests().is_empty(), "Graph was never asked");
    assert!(relay.logs().contains("trying the fallback"));
}

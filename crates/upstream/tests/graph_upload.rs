//! `graph_upload` against the fake Graph and the fake token endpoint over HTTPS: large messages
//! arrive with every attachment byte-identical (SHA-256), and every failure leaves no draft
//! behind and says what Graph said.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use smtp2oauth_testkit::{
    FakeGraph, FakeIdp, GraphAttachment, GraphFailure, GraphMessage, GraphStep, IdpConfig, TestPki,
};
use smtp2oauth_tokens::{
    CacheOptions, ClientCredential, ClientCredentialsGrant, HttpOptions, Secret, TokenCache,
    http_client,
};
use smtp2oauth_upstream::graph_upload::{
    CHUNK_GRANULE, DraftCleanup, GraphUpload, Step, UploadFailure,
};

const MAILBOX: &str = "scanner@contoso.example";
const MIB: usize = 1024 * 1024;

struct Env {
    idp: FakeIdp,
    graph: FakeGraph,
    http: reqwest::Client,
    tokens: Arc<TokenCache>,
    // Kept for its files (the CA the client trusts).
    _pki: TestPki,
}

async fn env() -> Env {
    let pki = TestPki::new();
    let idp = FakeIdp::start(IdpConfig::default()).await;
    let graph = FakeGraph::start(pki.server_config(), MAILBOX, idp.scope_validator()).await;
    let grant = ClientCredentialsGrant {
        token_url: idp.token_url(),
        client_id: idp.client_id(),
        credential: ClientCredential::Secret(Secret::new(
            IdpConfig::default().client_secret.unwrap(),
        )),
        scope: "https://graph.microsoft.com/.default".into(),
    };
    let tokens = Arc::new(TokenCache::new(
        "graph",
        grant,
        http_client(&HttpOptions::default()).unwrap(),
        CacheOptions::default(),
    ));
    let http = http_client(&HttpOptions {
        ca_file: Some(pki.ca_pem_path().to_path_buf()),
        ..HttpOptions::default()
    })
    .unwrap();
    Env {
        idp,
        graph,
        http,
        tokens,
        _pki: pki,
    }
}

impl Env {
    async fn send(
        &self,
        mime: &[u8],
    ) -> Result<smtp2oauth_upstream::graph_upload::Delivered, UploadFailure> {
        let url = self.graph.url();
        GraphUpload::new(&self.http, &url, MAILBOX, self.tokens.as_ref())
            .send(mime)
            .await
    }
}

/// An attachment as a device sends it.
struct Part {
    name: &'static str,
    content_type: &'static str,
    bytes: Vec<u8>,
    content_id: Option<&'static str>,
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

fn sha256(b: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .to_vec()
}

const TEXT: &str = "Scanned by the MFP in room 2.";
const HTML: &str = "<p>Scanned by the MFP in room 2.</p><img src=\"cid:logo@mfp\">";

/// A scan as an MFP sends it: multipart/mixed with a text body (and, with inline parts, an
/// HTML body in a multipart/related), attachments in base64 lines of 76.
fn scan(parts: &[Part]) -> Vec<u8> {
    let mut m = String::from(
        "From: Scanner <scanner@contoso.example>\r\nTo: Alice <alice@example.com>\r\nCc: bob@example.com\r\nBcc: archive@example.com\r\nSubject: Scan 2024-05-01\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"=_mixed\"\r\n\r\n",
    );
    m.push_str(&format!(
        "--=_mixed\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n{TEXT}\r\n"
    ));
    let inline: Vec<&Part> = parts.iter().filter(|p| p.content_id.is_some()).collect();
    if !inline.is_empty() {
        m.push_str("--=_mixed\r\nContent-Type: multipart/related; boundary=\"=_rel\"\r\n\r\n");
        m.push_str(&format!(
            "--=_rel\r\nContent-Type: text/html\r\n\r\n{HTML}\r\n"
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
            p.content_type, p.name, p.name, b64_lines(&p.bytes)
        ));
    }
    m.push_str("--=_mixed--\r\n");
    m.into_bytes()
}

fn b64_lines(b: &[u8]) -> String {
    let enc = STANDARD.encode(b);
    enc.as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// Every part the device sent is in what Graph delivers, byte-identical, with its name, type,
/// inline flag and Content-ID; the text and the recipients are intact; the chunks followed the
/// rules; no draft is left.
fn assert_delivered(g: &FakeGraph, parts: &[Part]) -> GraphMessage {
    let messages = g.messages();
    assert_eq!(messages.len(), 1, "exactly one message");
    let m = messages.into_iter().next().unwrap();
    assert!(g.drafts().is_empty(), "no draft left");
    assert_eq!(
        m.recipients,
        vec![
            "alice@example.com",
            "bob@example.com",
            "archive@example.com"
        ]
    );
    let draft = String::from_utf8(m.draft_mime.clone().unwrap()).unwrap();
    assert!(draft.starts_with("From: Scanner <scanner@contoso.example>\r\nTo: Alice <alice@example.com>\r\nCc: bob@example.com\r\nBcc: archive@example.com\r\nSubject: Scan 2024-05-01\r\n"));
    assert!(draft.contains(TEXT));
    let texts = m.rendered_text_parts();
    assert_eq!(texts[0], TEXT);
    for p in parts {
        let found: Vec<&GraphAttachment> =
            m.attachments.iter().filter(|a| a.name == p.name).collect();
        let in_draft = draft.contains(&format!("filename=\"{}\"", p.name));
        match found[..] {
            [a] => {
                assert!(!in_draft, "{} both in the draft and attached", p.name);
                assert_eq!(
                    sha256(&a.bytes),
                    sha256(&p.bytes),
                    "{} byte-identical",
                    p.name
                );
                assert_eq!(a.content_type, p.content_type);
                assert_eq!(a.is_inline, p.content_id.is_some(), "{}", p.name);
                assert_eq!(a.content_id.as_deref(), p.content_id);
            }
            [] => assert!(in_draft, "{} is neither attached nor in the draft", p.name),
            _ => panic!("{} attached {} times", p.name, found.len()),
        }
    }
    for r in g
        .requests()
        .iter()
        .filter(|r| r.step == GraphStep::UploadChunk)
    {
        assert!(!r.authorization, "no bearer token on the upload URL");
        let last = r.content_range.as_deref().is_some_and(|c| {
            let (range, total) = c.rsplit_once('/').unwrap();
            range.split('-').nth(1).unwrap().parse::<usize>().unwrap() + 1
                == total.parse::<usize>().unwrap()
        });
        assert!(r.body_len <= 4 * MIB);
        assert!(last || r.body_len % CHUNK_GRANULE == 0, "{r:?}");
        assert!(
            !matches!(r.status, 400 | 411 | 415 | 416),
            "a chunk broke a rule: {r:?}"
        );
    }
    m
}

#[tokio::test]
async fn five_megabytes_with_one_pdf() {
    let e = env().await;
    let parts = [Part {
        name: "scan-0001.pdf",
        content_type: "application/pdf",
        bytes: noise(3_700_000, 1),
        content_id: None,
    }];
    let mime = scan(&parts);
    assert!(
        (4_900_000..5_300_000).contains(&mime.len()),
        "{}",
        mime.len()
    );
    let sent = e.send(&mime).await.unwrap();
    assert_eq!((sent.posted, sent.uploaded), (0, 1));
    let m = assert_delivered(&e.graph, &parts);
    assert_eq!(m.attachments[0].chunks, 1, "3.7 MB fits one chunk");
}

#[tokio::test]
async fn twenty_megabytes_with_several_attachments_one_inline() {
    let e = env().await;
    let parts = [
        Part {
            name: "logo.png",
            content_type: "image/png",
            bytes: noise(1_500_000, 2),
            content_id: Some("logo@mfp"),
        },
        Part {
            name: "scan-0001.pdf",
            content_type: "application/pdf",
            bytes: noise(7_000_000, 3),
            content_id: None,
        },
        Part {
            name: "scan-0002.tif",
            content_type: "image/tiff",
            bytes: noise(4_200_000, 4),
            content_id: None,
        },
        Part {
            name: "scan-0003.jpg",
            content_type: "image/jpeg",
            bytes: noise(2_300_000, 5),
            content_id: None,
        },
        Part {
            name: "index.csv",
            content_type: "text/csv",
            bytes: b"page,file\r\n1,scan-0001.pdf\r\n".to_vec(),
            content_id: None,
        },
    ];
    let mime = scan(&parts);
    assert!(
        (19_500_000..21_000_000).contains(&mime.len()),
        "{}",
        mime.len()
    );
    let sent = e.send(&mime).await.unwrap();
    // Two under 3 MiB in one request each, two through upload sessions; the CSV stays.
    assert_eq!((sent.posted, sent.uploaded), (2, 2));
    let m = assert_delivered(&e.graph, &parts);
    let chunks: Vec<(&str, usize)> = m
        .attachments
        .iter()
        .map(|a| (a.name.as_str(), a.chunks))
        .collect();
    assert_eq!(
        chunks,
        vec![
            ("logo.png", 0),
            ("scan-0001.pdf", 2),
            ("scan-0002.tif", 2),
            ("scan-0003.jpg", 0)
        ]
    );
    // The HTML that shows the inline image stays in the draft.
    assert!(m.rendered_text_parts().iter().any(|t| t == HTML));
}

#[tokio::test]
async fn thirty_five_megabytes() {
    let e = env().await;
    let parts = [
        Part {
            name: "logo.png",
            content_type: "image/png",
            bytes: noise(1_200_000, 6),
            content_id: Some("logo@mfp"),
        },
        Part {
            name: "scan-0001.pdf",
            content_type: "application/pdf",
            bytes: noise(24_000_000, 7),
            content_id: None,
        },
        Part {
            name: "scan-0002.pdf",
            content_type: "application/pdf",
            bytes: noise(700_000, 8),
            content_id: None,
        },
    ];
    let mime = scan(&parts);
    assert!(
        (34_000_000..35_500_000).contains(&mime.len()),
        "{}",
        mime.len()
    );
    let sent = e.send(&mime).await.unwrap();
    assert_eq!((sent.posted, sent.uploaded), (1, 1));
    let m = assert_delivered(&e.graph, &parts);
    assert_eq!(
        m.attachments[1].chunks,
        24_000_000usize.div_ceil(12 * CHUNK_GRANULE)
    );
}

fn pdf_scan(size: usize) -> (Vec<u8>, [Part; 1]) {
    let parts = [Part {
        name: "scan.pdf",
        content_type: "application/pdf",
        bytes: noise(size, 11),
        content_id: None,
    }];
    (scan(&parts), parts)
}

#[tokio::test]
async fn a_throttle_mid_upload_deletes_the_draft_and_a_retry_sends_once() {
    let e = env().await;
    let (mime, parts) = pdf_scan(12 * MIB);
    e.graph
        .fail_step(GraphStep::UploadChunk, 2, GraphFailure::throttled(30));
    let failure = e.send(&mime).await.unwrap_err();
    assert_eq!(failure.draft, DraftCleanup::Deleted);
    assert!(failure.error.is_throttled(), "{failure}");
    assert_eq!(failure.error.retry_after(), Some(Duration::from_secs(30)));
    assert_eq!(failure.error.step(), Some(Step::UploadChunk));
    assert_eq!(failure.error.answer().unwrap().code, "ApplicationThrottled");
    assert!(e.graph.drafts().is_empty(), "no stray draft");
    assert!(e.graph.messages().is_empty());
    // The pre-authenticated URL is a credential: not in the error.
    assert!(!failure.to_string().contains("authtoken"), "{failure}");

    e.send(&mime).await.unwrap();
    assert_delivered(&e.graph, &parts);
}

#[tokio::test]
async fn a_403_on_the_draft_is_the_missing_mail_readwrite() {
    let e = env().await;
    e.graph.set_drafts_denied(true);
    let (mime, _) = pdf_scan(4 * MIB);
    let failure = e.send(&mime).await.unwrap_err();
    assert!(failure.error.is_drafts_denied(), "{failure}");
    assert_eq!(failure.error.step(), Some(Step::CreateDraft));
    assert_eq!(failure.draft, DraftCleanup::NotCreated);
    assert!(!failure.error.is_throttled() && !failure.error.is_too_large());
    assert!(e.graph.messages().is_empty() && e.graph.drafts().is_empty());
}

#[tokio::test]
async fn a_401_gets_one_new_token_and_a_second_ends_the_conversation() {
    let e = env().await;
    let (mime, parts) = pdf_scan(4 * MIB);
    let expired = GraphFailure::new(
        401,
        "InvalidAuthenticationToken",
        "Lifetime validation failed, the token is expired.",
    );
    e.graph
        .fail_step(GraphStep::CreateUploadSession, 1, expired.clone());
    e.send(&mime).await.unwrap();
    assert_delivered(&e.graph, &parts);
    assert_eq!(e.idp.tokens_issued(), 2, "one new token after the 401");

    let e = env().await;
    e.graph
        .fail_step(GraphStep::AddAttachment, 1, expired.clone());
    e.graph.fail_step(GraphStep::AddAttachment, 2, expired);
    let (mime, _) = pdf_scan(2 * MIB);
    let failure = e.send(&mime).await.unwrap_err();
    assert!(failure.error.is_token_refused(), "{failure}");
    assert_eq!(failure.draft, DraftCleanup::Deleted);
    assert!(e.graph.drafts().is_empty());
    for t in e.graph.tokens_seen() {
        assert!(!failure.to_string().contains(&t), "no token in the error");
    }
}

#[tokio::test]
async fn a_lost_answer_to_send_is_settled_by_whether_the_draft_is_still_there() {
    let e = env().await;
    let (mime, parts) = pdf_scan(4 * MIB);
    let gateway = GraphFailure::new(
        504,
        "GatewayTimeout",
        "The gateway did not receive a response in time.",
    );
    // Sent, but the answer was lost: the draft is gone, so it went.
    e.graph
        .fail_step_after_effect(GraphStep::SendDraft, 1, gateway.clone());
    let sent = e.send(&mime).await.unwrap();
    assert!(sent.confirmed_by_absence);
    assert_delivered(&e.graph, &parts);

    // Not sent: the draft is still there, deleted, and a retry is safe.
    let e = env().await;
    e.graph.fail_step(GraphStep::SendDraft, 1, gateway);
    let failure = e.send(&mime).await.unwrap_err();
    assert_eq!(failure.draft, DraftCleanup::Deleted);
    assert_eq!(failure.error.status(), Some(504));
    assert!(e.graph.messages().is_empty() && e.graph.drafts().is_empty());
    e.send(&mime).await.unwrap();
    assert_delivered(&e.graph, &parts);
}

#[tokio::test]
async fn over_the_mailbox_limit_is_too_large_and_leaves_nothing() {
    let e = env().await;
    e.graph.set_mailbox_limit(10 * MIB);
    let (mime, _) = pdf_scan(12 * MIB);
    let failure = e.send(&mime).await.unwrap_err();
    assert!(failure.error.is_too_large(), "{failure}");
    assert_eq!(
        failure.error.answer().unwrap().code,
        "ErrorMessageSizeExceeded"
    );
    assert_eq!(failure.draft, DraftCleanup::Deleted);
    assert!(e.graph.drafts().is_empty());
}

#[tokio::test]
async fn a_throttled_delete_is_waited_for_and_a_refused_one_is_reported() {
    let e = env().await;
    let (mime, _) = pdf_scan(4 * MIB);
    e.graph
        .fail_step(GraphStep::UploadChunk, 1, GraphFailure::throttled(1));
    e.graph
        .fail_step(GraphStep::DeleteDraft, 1, GraphFailure::throttled(1));
    let failure = e.send(&mime).await.unwrap_err();
    assert_eq!(failure.draft, DraftCleanup::Deleted);
    assert!(e.graph.drafts().is_empty());
    let deletes: Vec<u16> = e
        .graph
        .requests()
        .iter()
        .filter(|r| r.step == GraphStep::DeleteDraft)
        .map(|r| r.status)
        .collect();
    assert_eq!(deletes, vec![429, 204]);

    e.graph.fail_step(
        GraphStep::SendDraft,
        1,
        GraphFailure::new(400, "ErrorInvalidRecipients", "x"),
    );
    e.graph.fail_step(
        GraphStep::DeleteDraft,
        1,
        GraphFailure::new(403, "ErrorAccessDenied", "Access is denied."),
    );
    let failure = e.send(&mime).await.unwrap_err();
    let DraftCleanup::Left { id, reason } = &failure.draft else {
        panic!("{failure:?}")
    };
    assert!(reason.contains("ErrorAccessDenied"), "{reason}");
    assert_eq!(
        e.graph.drafts()[0].id,
        *id,
        "the draft reported is the one left"
    );
    assert!(failure.to_string().contains(id.as_str()));
}

#[tokio::test]
async fn requests_share_the_apps_slots() {
    let e = env().await;
    let (mime, _) = pdf_scan(8 * MIB);
    let slots = tokio::sync::Semaphore::new(1);
    let url = e.graph.url();
    e.graph.set_delay(Duration::from_millis(20));
    let send = |m: Vec<u8>| {
        let (http, url, tokens, slots) = (&e.http, &url, e.tokens.as_ref(), &slots);
        async move {
            GraphUpload::new(http, url, MAILBOX, tokens)
                .with_slots(slots)
                .send(&m)
                .await
        }
    };
    let (a, b) = tokio::join!(send(mime.clone()), send(mime.clone()));
    a.unwrap();
    b.unwrap();
    assert_eq!(e.graph.messages().len(), 2);
    assert_eq!(
        e.graph.peak_concurrency(),
        1,
        "one slot: one request at a time"
    );
}

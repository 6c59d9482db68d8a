//! FakeGraph over real HTTPS with a hand-written client: `sendMail`, the draft conversation
//! (create from MIME, attachments, upload sessions with their chunk rules, send, delete), the
//! permission and size refusals, and scripting by step.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use smtp2oauth_testkit::{FakeGraph, FakeIdp, GraphFailure, GraphStep, IdpConfig, TestPki};

use crate::client::{HttpAnswer, https_request};

const MAILBOX: &str = "scanner@contoso.example";
const SCOPE: &str = "https://graph.microsoft.com/.default";
const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

struct Env {
    pki: TestPki,
    idp: FakeIdp,
    graph: FakeGraph,
    token: String,
}

async fn env() -> Env {
    let pki = TestPki::new();
    let idp = FakeIdp::start(IdpConfig::default()).await;
    let graph = FakeGraph::start(pki.server_config(), MAILBOX, idp.scope_validator()).await;
    let token = idp.issue_token(SCOPE).token;
    Env {
        pki,
        idp,
        graph,
        token,
    }
}

const DRAFT: &[u8] = b"From: scanner@contoso.example\r\nTo: alice@example.com\r\nSubject: Scan\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nYour scan.\r\n--b1--\r\n";

/// Bytes that differ everywhere, so a misplaced or repeated chunk shows.
fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[1] ^ seed)
        .collect()
}

impl Env {
    async fn call(
        &self,
        method: &str,
        target: &str,
        head: &[(&str, &str)],
        body: &[u8],
    ) -> HttpAnswer {
        https_request(
            self.graph.addr(),
            self.pki.client_config(),
            method,
            target,
            head,
            body,
        )
        .await
    }

    async fn graph(&self, method: &str, path: &str, ct: &str, body: &[u8]) -> HttpAnswer {
        let auth = format!("Bearer {}", self.token);
        let mut head = vec![("Authorization", auth.as_str())];
        if !ct.is_empty() {
            head.push(("Content-Type", ct));
        }
        self.call(method, &format!("/v1.0/users/{MAILBOX}{path}"), &head, body)
            .await
    }

    async fn create_draft(&self, mime: &[u8]) -> String {
        let r = self
            .graph(
                "POST",
                "/messages",
                "text/plain",
                STANDARD.encode(mime).as_bytes(),
            )
            .await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        let v = r.json();
        assert_eq!(v["isDraft"], true);
        assert_eq!(v["subject"], "Scan");
        v["id"].as_str().unwrap().to_string()
    }

    async fn open_session(&self, id: &str, item: Value) -> HttpAnswer {
        let body = json!({ "AttachmentItem": item }).to_string();
        self.graph(
            "POST",
            &format!("/messages/{id}/attachments/createUploadSession"),
            "application/json",
            body.as_bytes(),
        )
        .await
    }

    /// The upload URL's path and query (the fake serves it on its own address).
    async fn session_target(&self, id: &str, size: usize) -> String {
        let r = self
            .open_session(id, json!({"attachmentType": "file", "name": "scan.pdf", "size": size, "contentType": "application/pdf"}))
            .await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        let v = r.json();
        assert_eq!(v["nextExpectedRanges"], json!(["0-"]));
        let url = v["uploadUrl"].as_str().unwrap();
        let target = url.strip_prefix(&self.graph.url()).unwrap().to_string();
        assert!(target.starts_with("/api/v2.0/Users('"), "{target}");
        assert!(target.contains("?authtoken="), "{target}");
        target
    }

    async fn put(&self, target: &str, range: &str, body: &[u8]) -> HttpAnswer {
        self.call(
            "PUT",
            target,
            &[
                ("Content-Type", "application/octet-stream"),
                ("Content-Range", range),
            ],
            body,
        )
        .await
    }
}

fn range(start: usize, len: usize, total: usize) -> String {
    format!("bytes {start}-{}/{total}", start + len - 1)
}

#[tokio::test]
async fn a_draft_with_attachments_is_delivered_with_every_byte_put_back() {
    let e = env().await;
    let id = e.create_draft(DRAFT).await;
    assert_eq!(e.graph.drafts().len(), 1);

    // A small inline image in one request.
    let logo = pattern(200 * KIB, 7);
    let body = json!({
        "@odata.type": "#microsoft.graph.fileAttachment",
        "name": "logo.png", "contentType": "image/png", "isInline": true, "contentId": "logo@scan",
        "contentBytes": STANDARD.encode(&logo),
    })
    .to_string();
    let r = e
        .graph(
            "POST",
            &format!("/messages/{id}/attachments"),
            "application/json",
            body.as_bytes(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["size"], logo.len());

    // A 5 MiB PDF in two chunks: 12 × 320 KiB, then the rest.
    let pdf = pattern(5 * MIB, 1);
    let target = e.session_target(&id, pdf.len()).await;
    let first = 12 * 320 * KIB;
    let r = e
        .put(&target, &range(0, first, pdf.len()), &pdf[..first])
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["nextExpectedRanges"], json!([first.to_string()]));
    let r = e
        .put(
            &target,
            &range(first, pdf.len() - first, pdf.len()),
            &pdf[first..],
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.header("location").unwrap().contains("/Attachments('"));
    assert_eq!(e.graph.drafts()[0].attachments.len(), 2);

    let r = e
        .graph("POST", &format!("/messages/{id}/send"), "", b"")
        .await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    assert!(e.graph.drafts().is_empty(), "a sent draft is gone");
    let m = &e.graph.messages()[0];
    assert_eq!(m.draft_id.as_deref(), Some(id.as_str()));
    assert_eq!(m.draft_mime.as_deref(), Some(DRAFT));
    assert_eq!(m.recipients, vec!["alice@example.com"]);
    let [a, b] = &m.attachments[..] else {
        panic!("{:?}", m.attachments.len())
    };
    assert_eq!(
        (
            a.name.as_str(),
            a.content_type.as_str(),
            a.is_inline,
            a.content_id.as_deref(),
            a.chunks
        ),
        ("logo.png", "image/png", true, Some("logo@scan"), 0)
    );
    assert_eq!(a.bytes, logo);
    assert_eq!(
        (
            b.name.as_str(),
            b.content_type.as_str(),
            b.is_inline,
            b.content_id.as_deref(),
            b.chunks
        ),
        ("scan.pdf", "application/pdf", false, None, 2)
    );
    assert_eq!(b.bytes, pdf);
    // The delivered MIME holds the text and both attachments.
    assert_eq!(m.rendered_text_parts(), vec!["Your scan."]);
    let text = m.mime_str();
    assert!(text.contains(&STANDARD.encode(&logo)[..76]));
    assert!(text.contains("Content-ID: <logo@scan>"));
    assert!(text.contains("filename=\"scan.pdf\""));
    let steps: Vec<_> = e
        .graph
        .requests()
        .iter()
        .map(|r| (r.step, r.status, r.authorization))
        .collect();
    assert_eq!(
        steps,
        vec![
            (GraphStep::CreateDraft, 201, true),
            (GraphStep::AddAttachment, 201, true),
            (GraphStep::CreateUploadSession, 201, true),
            (GraphStep::UploadChunk, 200, false),
            (GraphStep::UploadChunk, 201, false),
            (GraphStep::SendDraft, 202, true),
        ]
    );
    assert!(
        e.graph
            .requests()
            .iter()
            .all(|r| !r.path.contains("authtoken"))
    );
}

#[tokio::test]
async fn upload_chunks_must_follow_the_rules() {
    let e = env().await;
    let id = e.create_draft(DRAFT).await;
    let total = 5 * MIB;
    let data = pattern(total, 3);
    let target = e.session_target(&id, total).await;
    let chunk = 320 * KIB;

    // A bearer token on the pre-authenticated URL is the wrong audience.
    let auth = format!("Bearer {}", e.token);
    let r = e
        .call(
            "PUT",
            &target,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/octet-stream"),
                ("Content-Range", &range(0, chunk, total)),
            ],
            &data[..chunk],
        )
        .await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (401, json!("InvalidAudience"))
    );
    // The URL's own token must be right.
    let (path, _) = target.split_once("?authtoken=").unwrap();
    let forged = format!("{path}?authtoken=00");
    let r = e
        .put(&forged, &range(0, chunk, total), &data[..chunk])
        .await;
    assert_eq!(r.status, 401);

    // (Content-Range, body, status, Graph error code)
    let refusals: Vec<(Option<String>, &[u8], u16, &str)> = vec![
        (None, &data[..chunk], 400, "InvalidContentRange"),
        (
            Some("bytes 0-9/10".into()),
            &data[..10],
            400,
            "InvalidContentRange",
        ),
        (
            Some(range(0, chunk + 1, total)),
            &data[..chunk],
            400,
            "InvalidContentRange",
        ),
        (
            Some(range(0, chunk + 1, total)),
            &data[..chunk + 1],
            400,
            "InvalidChunkSize",
        ),
        (
            Some(range(0, 13 * chunk, total)),
            &data[..13 * chunk],
            400,
            "InvalidChunkSize",
        ),
        (
            Some(range(chunk, chunk, total)),
            &data[chunk..2 * chunk],
            416,
            "InvalidRange",
        ),
    ];
    for (extra, body, status, code) in refusals {
        let mut head: Vec<(&str, &str)> = vec![("Content-Type", "application/octet-stream")];
        if let Some(range) = &extra {
            head.push(("Content-Range", range));
        }
        let r = e.call("PUT", &target, &head, body).await;
        assert_eq!(
            (r.status, r.json()["error"]["code"].as_str().unwrap_or("")),
            (status, code),
            "{extra:?}"
        );
    }
    let r = e
        .call(
            "PUT",
            &target,
            &[
                ("Content-Type", "text/plain"),
                ("Content-Range", &range(0, chunk, total)),
            ],
            &data[..chunk],
        )
        .await;
    assert_eq!(r.status, 415);

    // Nothing was taken so far: the upload starts at 0 and ends with a short last chunk.
    let mut at = 0;
    while at < total {
        let n = (total - at).min(12 * chunk);
        let r = e
            .put(&target, &range(at, n, total), &data[at..at + n])
            .await;
        at += n;
        let want = if at == total { 201 } else { 200 };
        assert_eq!(r.status, want, "{}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(e.graph.drafts()[0].attachments[0].bytes, data);
    assert_eq!(e.graph.drafts()[0].open_upload_sessions, 0);
    // A finished session takes nothing more.
    assert_eq!(
        e.put(&target, &range(0, chunk, total), &data[..chunk])
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn upload_sessions_are_for_three_mebibytes_and_up() {
    let e = env().await;
    let id = e.create_draft(DRAFT).await;
    let r = e
        .open_session(
            &id,
            json!({"attachmentType": "file", "name": "small.pdf", "size": 3 * MIB - 1}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error"]["code"],
        "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize"
    );
    let r = e
        .open_session(
            &id,
            json!({"attachmentType": "reference", "name": "x", "size": 3 * MIB}),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = e
        .open_session(&id, json!({"attachmentType": "file", "size": 3 * MIB}))
        .await;
    assert_eq!(r.status, 400, "a name is required");
    // A fileAttachment request over 4 MiB is too large, whatever it holds.
    let big = json!({"@odata.type": "#microsoft.graph.fileAttachment", "name": "a.bin", "contentBytes": STANDARD.encode(pattern(3 * MIB + 10, 0))}).to_string();
    let r = e
        .graph(
            "POST",
            &format!("/messages/{id}/attachments"),
            "application/json",
            big.as_bytes(),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (413, json!("ErrorRequestEntityTooLarge"))
    );
}

#[tokio::test]
async fn the_mailbox_limit_refuses_a_message_that_would_grow_past_it() {
    let e = env().await;
    e.graph.set_mailbox_limit(5 * MIB);
    let id = e.create_draft(DRAFT).await;
    // 4 MiB of file is more than 5 MiB once encoded.
    let r = e
        .open_session(
            &id,
            json!({"attachmentType": "file", "name": "big.pdf", "size": 4 * MIB}),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (413, json!("ErrorMessageSizeExceeded"))
    );
    let r = e
        .open_session(
            &id,
            json!({"attachmentType": "file", "name": "ok.pdf", "size": 3 * MIB}),
        )
        .await;
    assert_eq!(r.status, 201);
}

#[tokio::test]
async fn drafts_need_mail_readwrite_and_send_mail_does_not() {
    let e = env().await;
    e.graph.set_drafts_denied(true);
    let r = e
        .graph(
            "POST",
            "/messages",
            "text/plain",
            STANDARD.encode(DRAFT).as_bytes(),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (403, json!("ErrorAccessDenied"))
    );
    let r = e
        .graph(
            "POST",
            "/sendMail",
            "text/plain",
            STANDARD.encode(DRAFT).as_bytes(),
        )
        .await;
    assert_eq!(r.status, 202);
    assert!(e.graph.drafts().is_empty());
    e.graph.set_drafts_denied(false);

    // A delegated token carries the user's permissions: Mail.Send alone cannot make drafts.
    let send_only = e
        .idp
        .issue_token("https://graph.microsoft.com/Mail.Send offline_access")
        .token;
    let both = e
        .idp
        .issue_token(
            "https://graph.microsoft.com/Mail.Send https://graph.microsoft.com/Mail.ReadWrite",
        )
        .token;
    for (token, want) in [(send_only, 403), (both, 201)] {
        let auth = format!("Bearer {token}");
        let r = e
            .call(
                "POST",
                &format!("/v1.0/users/{MAILBOX}/messages"),
                &[("Authorization", &auth), ("Content-Type", "text/plain")],
                STANDARD.encode(DRAFT).as_bytes(),
            )
            .await;
        assert_eq!(r.status, want, "{}", String::from_utf8_lossy(&r.body));
    }
    // A token for another resource, or none, is refused before anything else.
    let outlook = e
        .idp
        .issue_token("https://outlook.office365.com/.default")
        .token;
    for auth in [format!("Bearer {outlook}"), String::new()] {
        let mut head = vec![("Content-Type", "text/plain")];
        if !auth.is_empty() {
            head.push(("Authorization", &auth));
        }
        let r = e
            .call(
                "POST",
                &format!("/v1.0/users/{MAILBOX}/messages"),
                &head,
                STANDARD.encode(DRAFT).as_bytes(),
            )
            .await;
        assert_eq!(
            (r.status, r.json()["error"]["code"].clone()),
            (401, json!("InvalidAuthenticationToken"))
        );
    }
    let r = e
        .call(
            "POST",
            "/v1.0/users/other@contoso.example/messages",
            &[
                ("Authorization", &format!("Bearer {}", e.token)),
                ("Content-Type", "text/plain"),
            ],
            STANDARD.encode(DRAFT).as_bytes(),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (404, json!("ErrorInvalidUser"))
    );
}

#[tokio::test]
async fn a_step_fails_on_its_nth_request_and_only_then() {
    let e = env().await;
    let id = e.create_draft(DRAFT).await;
    let total = 4 * MIB;
    let data = pattern(total, 9);
    let target = e.session_target(&id, total).await;
    let chunk = 4 * 320 * KIB;
    e.graph
        .fail_step(GraphStep::UploadChunk, 2, GraphFailure::throttled(7));
    // A draft-creating failure does not touch other kinds of request.
    e.graph
        .fail_step(GraphStep::CreateDraft, 1, GraphFailure::throttled(1));

    let r = e
        .put(&target, &range(0, chunk, total), &data[..chunk])
        .await;
    assert_eq!(r.status, 200);
    let r = e
        .put(
            &target,
            &range(chunk, chunk, total),
            &data[chunk..2 * chunk],
        )
        .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("7"));
    assert_eq!(r.json()["error"]["code"], "ApplicationThrottled");
    // The refused chunk was not taken: the same range goes through now.
    let r = e
        .put(
            &target,
            &range(chunk, chunk, total),
            &data[chunk..2 * chunk],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["nextExpectedRanges"],
        json!([(2 * chunk).to_string()])
    );
    let r = e
        .graph(
            "POST",
            "/messages",
            "text/plain",
            STANDARD.encode(DRAFT).as_bytes(),
        )
        .await;
    assert_eq!(r.status, 429);

    // A send whose answer is lost: the draft is delivered all the same.
    e.graph.fail_step_after_effect(
        GraphStep::SendDraft,
        1,
        GraphFailure::new(
            504,
            "GatewayTimeout",
            "The gateway did not receive a response.",
        ),
    );
    let r = e
        .graph("POST", &format!("/messages/{id}/send"), "", b"")
        .await;
    assert_eq!(r.status, 504);
    assert_eq!(e.graph.messages().len(), 1);
    assert!(e.graph.drafts().is_empty());
    // ... and a delete afterwards finds nothing.
    let r = e.graph("DELETE", &format!("/messages/{id}"), "", b"").await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (404, json!("ErrorItemNotFound"))
    );
}

#[tokio::test]
async fn delete_removes_the_draft_and_its_upload_sessions() {
    let e = env().await;
    let id = e.create_draft(DRAFT).await;
    let target = e.session_target(&id, 3 * MIB).await;
    assert_eq!(e.graph.drafts()[0].open_upload_sessions, 1);
    let r = e.graph("DELETE", &format!("/messages/{id}"), "", b"").await;
    assert_eq!(r.status, 204);
    assert!(e.graph.drafts().is_empty());
    let data = pattern(320 * KIB, 0);
    assert_eq!(
        e.put(&target, &range(0, data.len(), 3 * MIB), &data)
            .await
            .status,
        404
    );
    assert_eq!(
        e.graph("POST", &format!("/messages/{id}/send"), "", b"")
            .await
            .status,
        404
    );
    assert!(e.graph.messages().is_empty());

    // A draft without recipients cannot be sent, and stays.
    let id = e
        .create_draft(b"From: scanner@contoso.example\r\nSubject: Scan\r\n\r\nx\r\n")
        .await;
    let r = e
        .graph("POST", &format!("/messages/{id}/send"), "", b"")
        .await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (400, json!("ErrorInvalidRecipients"))
    );
    assert_eq!(e.graph.drafts().len(), 1);
}

#[tokio::test]
async fn send_mail_still_takes_one_base64_mime_request() {
    let e = env().await;
    let r = e
        .graph(
            "POST",
            "/sendMail",
            "text/plain",
            STANDARD.encode(DRAFT).as_bytes(),
        )
        .await;
    assert_eq!(r.status, 202);
    assert!(r.header("request-id").is_some());
    let m = &e.graph.messages()[0];
    assert_eq!(m.mime, DRAFT);
    assert!(m.attachments.is_empty() && m.draft_id.is_none());
    let r = e
        .graph("POST", "/sendMail", "application/json", b"{}")
        .await;
    assert_eq!(r.status, 415);
    let r = e
        .graph("POST", "/sendMail", "text/plain", b"not base64!")
        .await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (400, json!("ErrorMimeContentInvalidBase64String"))
    );
}

//! `GraphRoute` against the fake Graph endpoint and the fake token endpoint: what the route
//! itself promises (request shape, token refresh, the concurrency limit per app, the replies
//! its failures become), without the relay around it.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use smtp2oauth_proto::{DeliveryError, Stage};
use smtp2oauth_testkit::{FakeGraph, FakeIdp, GraphFailure, IdpConfig, TestPki};
use smtp2oauth_tokens::{
    CacheOptions, ClientCredential, ClientCredentialsGrant, HttpOptions, Secret, TokenCache,
    http_client,
};
use smtp2oauth_upstream::{GraphRoute, GraphRouteConfig, Message, Route, graph};
use tempfile::TempDir;

const MAILBOX: &str = "scanner@contoso.example";

struct Env {
    pki: TestPki,
    idp: FakeIdp,
    graph: FakeGraph,
    dir: TempDir,
}

async fn env() -> Env {
    let pki = TestPki::new();
    let idp = FakeIdp::start(IdpConfig::default()).await;
    let graph = FakeGraph::start(pki.server_config(), MAILBOX, idp.scope_validator()).await;
    Env {
        pki,
        idp,
        graph,
        dir: TempDir::new().unwrap(),
    }
}

impl Env {
    fn tokens(&self) -> Arc<TokenCache> {
        let grant = ClientCredentialsGrant {
            token_url: self.idp.token_url(),
            client_id: self.idp.client_id(),
            credential: ClientCredential::Secret(Secret::new(
                IdpConfig::default().client_secret.unwrap(),
            )),
            scope: "https://graph.microsoft.com/.default".into(),
        };
        Arc::new(TokenCache::new(
            "graph",
            grant,
            http_client(&HttpOptions::default()).unwrap(),
            CacheOptions::default(),
        ))
    }

    fn route(&self, slots: Arc<tokio::sync::Semaphore>) -> GraphRoute {
        self.route_with(slots, graph::LargeMessages::Refuse, 3 * 1024 * 1024)
    }

    fn route_with(
        &self,
        slots: Arc<tokio::sync::Semaphore>,
        large_messages: graph::LargeMessages,
        max_message_size: u64,
    ) -> GraphRoute {
        let http = http_client(&HttpOptions {
            ca_file: Some(self.pki.ca_pem_path().to_path_buf()),
            ..HttpOptions::default()
        })
        .unwrap();
        GraphRoute::new(
            GraphRouteConfig {
                account: "graph".into(),
                mailbox: MAILBOX.into(),
                graph_url: self.graph.url(),
                max_message_size,
                large_messages,
                transfer_timeout: Duration::from_secs(60),
            },
            http,
            self.tokens(),
            slots,
        )
    }

    fn message(&self, id: &str, body: &[u8]) -> Message {
        let data_path = self.dir.path().join(id);
        std::fs::write(&data_path, body).unwrap();
        Message {
            id: id.into(),
            account: "graph".into(),
            device: "d".into(),
            sender: MAILBOX.into(),
            recipients: vec!["a@example.com".into()],
            data_path,
            size: body.len() as u64,
            eight_bit: false,
            smtputf8: false,
            received_at_ms: 0,
        }
    }
}

const BODY: &[u8] =
    b"From: scanner@contoso.example\r\nTo: a@example.com\r\nSubject: x\r\n\r\nhello\r\n";

#[tokio::test]
async fn at_most_four_requests_per_app_run_at_once() {
    let e = env().await;
    e.graph.set_delay(Duration::from_millis(300));
    // Two accounts of one app share the slots, as wiring arranges it.
    let slots = graph::app_slots();
    let a = Arc::new(e.route(slots.clone()));
    let b = Arc::new(e.route(slots));
    let mut tasks = Vec::new();
    for i in 0..10 {
        let route = if i % 2 == 0 { a.clone() } else { b.clone() };
        let msg = e.message(&format!("m{i}"), BODY);
        tasks.push(tokio::spawn(async move { route.deliver(&msg).await }));
    }
    for t in tasks {
        let report = t.await.unwrap().unwrap();
        assert_eq!(report.reply.code(), 250);
    }
    assert_eq!(e.graph.messages().len(), 10);
    assert_eq!(e.graph.peak_concurrency(), 4);
}

#[tokio::test]
async fn a_second_401_is_a_temporary_failure_after_one_new_token() {
    let e = env().await;
    let route = e.route(graph::app_slots());
    e.graph.fail_next(
        GraphFailure::new(
            401,
            "InvalidAuthenticationToken",
            "Lifetime validation failed.",
        ),
        2,
    );
    let err = route.deliver(&e.message("m", BODY)).await.unwrap_err();
    assert!(!err.is_permanent(), "{err}");
    let DeliveryError::Rejected {
        stage,
        reply,
        cause,
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(*stage, Stage::Http);
    assert_eq!(
        *cause,
        smtp2oauth_proto::Cause::Account(smtp2oauth_proto::AccountIssue::Login),
        "a token Graph refuses twice is the account's problem"
    );
    assert_eq!(reply.code(), 451);
    assert!(
        reply.text().contains("InvalidAuthenticationToken"),
        "{reply}"
    );
    assert_eq!(e.graph.requests().len(), 2, "exactly one retry");
    assert_eq!(e.idp.tokens_issued(), 2, "the retry used a new token");
    for t in e.graph.tokens_seen() {
        assert!(!err.to_string().contains(&t), "no token in the error");
    }
}

#[tokio::test]
async fn throttling_carries_retry_after_and_too_large_mail_never_leaves() {
    let e = env().await;
    let route = e.route(graph::app_slots());
    e.graph.fail_next(GraphFailure::throttled(42), 1);
    let err = route.deliver(&e.message("m", BODY)).await.unwrap_err();
    assert_eq!(
        err.reply().to_string().split(':').next().unwrap(),
        "451 4.7.500 Retry after 42 seconds"
    );
    assert_eq!(
        err.cause(),
        smtp2oauth_proto::Cause::Throttled {
            retry_after: Some(std::time::Duration::from_secs(42))
        }
    );
    e.graph.fail_next(
        GraphFailure {
            retry_after: Some(5),
            ..GraphFailure::new(503, "ServiceUnavailable", "Service unavailable.")
        },
        1,
    );
    let err = route.deliver(&e.message("m2", BODY)).await.unwrap_err();
    assert!(
        err.reply()
            .to_string()
            .starts_with("451 4.3.2 Retry after 5 seconds"),
        "{err}"
    );

    let big = vec![b'x'; 3 * 1024 * 1024 + 1];
    let before = e.graph.requests().len();
    let err = route.deliver(&e.message("big", &big)).await.unwrap_err();
    assert!(err.is_permanent());
    assert_eq!(err.cause(), smtp2oauth_proto::Cause::TooLarge);
    assert!(err.reply().to_string().starts_with("552 5.3.4"), "{err}");
    assert_eq!(
        e.graph.requests().len(),
        before,
        "no request for a message Graph cannot take"
    );
}

/// A scan of about `pdf + 1.4` MB: a text body, then a PDF and a PNG in base64 lines, both
/// larger than what stays in the draft.
fn large_scan(pdf: usize) -> (Vec<u8>, Vec<u8>) {
    let noise = |n: usize, seed: u64| {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect::<Vec<u8>>()
    };
    let b64 = |b: &[u8]| {
        use base64::Engine as _;
        let enc = base64::engine::general_purpose::STANDARD.encode(b);
        enc.as_bytes()
            .chunks(76)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("\r\n")
    };
    let pdf_bytes = noise(pdf, 7);
    let png = noise(1_000_000, 8);
    let m = format!(
        "From: scanner@contoso.example\r\nTo: a@example.com\r\nSubject: big scan\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nThe scan.\r\n--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"scan.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--b\r\nContent-Type: image/png\r\nContent-Disposition: attachment; filename=\"page.png\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--b--\r\n",
        b64(&pdf_bytes),
        b64(&png)
    );
    (m.into_bytes(), pdf_bytes)
}

/// With `Upload`, a message too large for one request goes through a draft and arrives whole;
/// one that fits still goes by `sendMail`. With `Refuse`, the same message is refused with
/// `552 5.3.4` naming "upload", before any request.
#[tokio::test]
async fn too_large_for_one_request_is_uploaded_or_refused_as_configured() {
    let e = env().await;
    let (big, pdf) = large_scan(5_000_000);
    let upload = e.route_with(graph::app_slots(), graph::LargeMessages::Upload, 36_700_160);
    let report = upload.deliver(&e.message("big", &big)).await.unwrap();
    assert_eq!(report.reply.code(), 250);
    assert!(
        report.reply.text().contains("sent through a draft"),
        "{}",
        report.reply
    );
    assert_eq!(report.accepted, vec!["a@example.com".to_string()]);
    let m = e.graph.messages();
    assert_eq!(m.len(), 1);
    assert!(m[0].draft_id.is_some(), "sent as a draft");
    let att: Vec<_> = m[0].attachments.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        att,
        ["scan.pdf"],
        "only the PDF is over what one request takes"
    );
    assert_eq!(m[0].attachments[0].bytes, pdf);
    assert!(
        m[0].attachments[0].chunks >= 2,
        "the PDF went by upload session"
    );
    assert!(e.graph.drafts().is_empty());
    // A small one still takes one sendMail.
    upload.deliver(&e.message("small", BODY)).await.unwrap();
    assert!(e.graph.messages()[1].draft_id.is_none());

    // Refused: under the route's limit (a fallback around it could take it), but over one
    // request.
    let refuse = e.route_with(graph::app_slots(), graph::LargeMessages::Refuse, 36_700_160);
    let before = e.graph.requests().len();
    let err = refuse.deliver(&e.message("big2", &big)).await.unwrap_err();
    assert_eq!(err.cause(), smtp2oauth_proto::Cause::TooLarge);
    let reply = err.reply().to_string();
    assert!(reply.starts_with("552 5.3.4"), "{reply}");
    assert!(
        reply.contains("graph_large_messages = \"upload\""),
        "{reply}"
    );
    assert_eq!(e.graph.requests().len(), before, "no request");
}

/// The conversation's refusals reach the route's caller as data: a 403 on the draft is the
/// account's permission and names Mail.ReadWrite; a throttle mid-upload pauses with Graph's
/// wait; neither leaves a draft.
#[tokio::test]
async fn upload_refusals_carry_their_cause() {
    use smtp2oauth_proto::{AccountIssue, Cause};
    use smtp2oauth_testkit::GraphStep;
    let e = env().await;
    let (big, _) = large_scan(9_000_000);
    let route = e.route_with(graph::app_slots(), graph::LargeMessages::Upload, 36_700_160);

    e.graph.set_drafts_denied(true);
    let err = route.deliver(&e.message("m1", &big)).await.unwrap_err();
    assert_eq!(err.cause(), Cause::Account(AccountIssue::Permission));
    let reply = err.reply().to_string();
    assert!(reply.starts_with("550 5.7.1"), "{reply}");
    assert!(reply.contains("Mail.ReadWrite"), "{reply}");
    assert!(e.graph.drafts().is_empty());
    // sendMail needs only Mail.Send: a message that fits one request still goes.
    let report = route.deliver(&e.message("small", BODY)).await.unwrap();
    assert_eq!(report.reply.code(), 250);
    assert_eq!(e.graph.messages().len(), 1);
    e.graph.set_drafts_denied(false);

    e.graph
        .fail_step(GraphStep::UploadChunk, 2, GraphFailure::throttled(9));
    let err = route.deliver(&e.message("m2", &big)).await.unwrap_err();
    assert_eq!(
        err.cause(),
        Cause::Throttled {
            retry_after: Some(Duration::from_secs(9))
        }
    );
    assert!(
        err.reply()
            .to_string()
            .starts_with("451 4.7.500 Retry after 9 seconds"),
        "{err}"
    );
    assert!(e.graph.drafts().is_empty(), "the draft was deleted");
    assert_eq!(e.graph.messages().len(), 1, "only the small one");
    // The retry sends it once.
    route.deliver(&e.message("m2", &big)).await.unwrap();
    assert_eq!(e.graph.messages().len(), 2);
    assert!(e.graph.drafts().is_empty());
    // No bearer token ever went to an upload URL.
    assert!(
        e.graph
            .requests()
            .iter()
            .filter(|r| r.step == GraphStep::UploadChunk)
            .all(|r| !r.authorization)
    );
}

/// A recipient no header can carry (a control character, as an older version's spool may hold)
/// is not dropped while the message counts as delivered: the message is refused, as the SMTP
/// routes refuse it, so the sender's notice names the recipient, and Graph sees no request.
#[tokio::test]
async fn a_recipient_no_header_can_carry_is_refused_not_dropped() {
    let e = env().await;
    let route = e.route(graph::app_slots());
    let mut msg = e.message("m-unwritable", BODY);
    msg.recipients.push("b\u{1}c@example.com".into());
    match route.deliver(&msg).await {
        Err(DeliveryError::Rejected { stage, reply, .. }) => {
            assert_eq!(stage, Stage::Rcpt);
            assert_eq!(reply.code(), 553, "{reply}");
            assert!(reply.to_string().contains("5.1.3"), "{reply}");
            assert!(reply.to_string().contains("b\\x01c@example.com"), "{reply}");
        }
        other => panic!("expected a 553 refusal, got {other:?}"),
    }
    assert!(e.graph.requests().is_empty(), "{:?}", e.graph.requests());
}

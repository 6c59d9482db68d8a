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
                max_message_size: 3 * 1024 * 1024,
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

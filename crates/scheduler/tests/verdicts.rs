//! Queued and synchronous delivery carry out the same verdicts with the same metrics: a
//! message delivered to some recipients and refused for others counts as failed in both
//! modes (it is what an admin must look at), and the device hears it was delivered partially.

#![allow(clippy::unwrap_used)]

use smtp2oauth_metrics::{Metrics, RouteLabels};
use smtp2oauth_proto::Reply;
use smtp2oauth_scheduler::{AccountSettings, Scheduler, SchedulerConfig};
use smtp2oauth_spool::{Area, Envelope, MessageId, Spool};
use smtp2oauth_upstream::{DeliveryFuture, DeliveryReport, Message, Route, RouteKind};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// A route that accepts every recipient but `refused@example.com`, which it refuses with
/// `reply`.
struct PartlyRefusing {
    reply: &'static str,
}

impl Route for PartlyRefusing {
    fn kind(&self) -> RouteKind {
        RouteKind::Capture
    }

    fn target(&self) -> String {
        "test".into()
    }

    fn deliver<'a>(&'a self, message: &'a Message) -> DeliveryFuture<'a> {
        let reply = smtp2oauth_proto::ReplyAssembler::new()
            .push_line(self.reply.as_bytes())
            .unwrap()
            .unwrap();
        let (rejected, accepted): (Vec<_>, Vec<_>) = message
            .recipients
            .iter()
            .cloned()
            .partition(|r| r == "refused@example.com");
        Box::pin(async move {
            Ok(DeliveryReport {
                reply: Reply::with_status(250, (2, 0, 0), "OK"),
                accepted,
                rejected: rejected.into_iter().map(|r| (r, reply.clone())).collect(),
            })
        })
    }
}

fn config(queue: bool) -> SchedulerConfig {
    SchedulerConfig {
        queue,
        wait_for_upstream: Duration::from_secs(30),
        retry_initial: Duration::from_secs(60),
        retry_max: Duration::from_secs(3600),
        max_queue_lifetime: Duration::from_secs(86_400),
        shutdown_timeout: Duration::from_secs(5),
        hostname: "relay.test".into(),
        accounts: HashMap::from([(
            "scanner".to_string(),
            AccountSettings {
                mailbox: "scanner@example.com".into(),
                bounce_to: None,
                max_connections: 1,
                max_per_minute: 0,
            },
        )]),
        control_poll: Duration::from_secs(60),
        notify_account: None,
    }
}

fn envelope() -> Envelope {
    Envelope {
        id: MessageId::default(),
        received_at_ms: smtp2oauth_spool::now_ms(),
        account: "scanner".into(),
        device: "mfp".into(),
        listener: "test".into(),
        client_ip: "127.0.0.1".into(),
        helo: "mfp".into(),
        sender: "scanner@example.com".into(),
        original_sender: None,
        recipients: vec!["ok@example.com".into(), "refused@example.com".into()],
        eight_bit: false,
        smtputf8: false,
        size: 0,
        crc32c: 0,
        session: 1,
        notice: false,
    }
}

/// Sends one message through a scheduler in the given mode; returns the device's reply, the
/// counters (delivered, deferred, failed) and the spool (with its directory).
async fn one_message(
    queue: bool,
    refusal: &'static str,
) -> (Reply, [u64; 3], Spool, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open_with(dir.path(), false).unwrap();
    let metrics = Metrics::new(None);
    let routes: HashMap<String, Arc<dyn Route>> = HashMap::from([(
        "scanner".to_string(),
        Arc::new(PartlyRefusing { reply: refusal }) as Arc<dyn Route>,
    )]);
    let scheduler = Scheduler::new(
        spool.clone(),
        routes,
        config(queue),
        Some(metrics.clone()),
        None,
    );
    let _dispatcher = scheduler.start();
    let queued = spool
        .write_message(envelope(), b"Subject: scan\r\n\r\nbody\r\n")
        .await
        .unwrap();
    let reply = scheduler.submit(queued).await;
    scheduler.shutdown().await;
    let labels = RouteLabels {
        account: "scanner".into(),
        route: "capture",
    };
    let counts = [
        metrics.messages_delivered.get_or_create(&labels).get(),
        metrics.messages_deferred.get_or_create(&labels).get(),
        metrics.messages_failed.get_or_create(&labels).get(),
    ];
    (reply, counts, spool, dir)
}

#[tokio::test]
async fn a_partial_refusal_counts_as_failed_queued_or_not() {
    for queue in [true, false] {
        let (reply, counts, spool, _dir) = one_message(queue, "550 5.1.1 User unknown").await;
        assert!(
            reply.to_string().contains("to 1 of 2 recipients"),
            "queue = {queue}: {reply}"
        );
        assert_eq!(counts, [0, 0, 1], "queue = {queue}");
        // Queued delivery keeps the message for the admin; synchronous delivery keeps nothing.
        let kept = spool.list(Area::Failed).await.unwrap().len();
        assert_eq!(kept, usize::from(queue), "queue = {queue}");
    }
}

/// A recipient refused for now: the queue tries it again (deferred); synchronous delivery
/// cannot (the device heard 250), so the message counts as failed there.
#[tokio::test]
async fn a_recipient_refused_for_now_is_deferred_only_when_queued() {
    let (reply, counts, spool, _dir) = one_message(true, "452 4.2.2 Mailbox full").await;
    assert!(reply.to_string().contains("queued as"), "{reply}");
    assert_eq!(counts, [0, 1, 0]);
    assert_eq!(spool.list(Area::Queue).await.unwrap().len(), 1);

    let (reply, counts, _, _dir) = one_message(false, "452 4.2.2 Mailbox full").await;
    assert!(
        reply.to_string().contains("to 1 of 2 recipients"),
        "{reply}"
    );
    assert_eq!(counts, [0, 0, 1]);
}

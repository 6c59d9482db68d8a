//! What the queue does about an account's trouble, through scripted routes: a refusal of the
//! account keeps the mail and tells a waiting device 451, the account's mail goes as soon as
//! the cause is gone (a delivery, a token again), synchronous deliveries share the account's
//! connection slots, every attempt is published to the activity store, and notices and alerts
//! avoid a broken account.

#![allow(clippy::unwrap_used)]

use smtp2oauth_activity::{
    AccountSignal, AccountState, Activity, ActivityConfig, AttemptReport, Change, MessageFilter,
    MessageResult,
};
use smtp2oauth_proto::{AccountIssue, Cause, DeliveryError, Reply, ReplyAssembler, Stage};
use smtp2oauth_scheduler::{AccountSettings, Scheduler, SchedulerConfig};
use smtp2oauth_spool::{Area, Envelope, MessageId, Spool};
use smtp2oauth_upstream::{DeliveryFuture, DeliveryReport, Message, Route, RouteKind, TokenWait};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

fn reply(line: &str) -> Reply {
    ReplyAssembler::new()
        .push_line(line.as_bytes())
        .unwrap()
        .unwrap()
}

fn login_refused() -> DeliveryError {
    DeliveryError::Rejected {
        stage: Stage::Auth,
        reply: reply("535 5.7.3 Authentication unsuccessful [SN4PR0601CA0001]"),
        cause: Cause::Account(AccountIssue::Login),
    }
}

fn send_as_denied() -> DeliveryError {
    DeliveryError::Rejected {
        stage: Stage::Body,
        reply: reply("554 5.2.252 SendAsDenied; not allowed"),
        cause: Cause::Message,
    }
}

fn token_down() -> DeliveryError {
    DeliveryError::Token {
        account: "scanner".into(),
        reason: "the token endpoint answered 503".into(),
        cause: Cause::Transient,
    }
}

/// A route that answers from a script (then accepts), remembers what it was given, counts
/// deliveries running at once, and whose token is "back" once `token_back` is notified.
#[derive(Default)]
struct Scripted {
    script: Mutex<VecDeque<DeliveryError>>,
    received: Mutex<Vec<(Message, String)>>,
    running: AtomicUsize,
    peak: AtomicUsize,
    delay: Duration,
    token_back: Notify,
}

impl Scripted {
    fn failing(errors: Vec<DeliveryError>) -> Arc<Scripted> {
        Arc::new(Scripted {
            script: Mutex::new(errors.into()),
            ..Scripted::default()
        })
    }

    /// The messages delivered, with their text as read when they were.
    fn received(&self) -> Vec<(Message, String)> {
        self.received.lock().unwrap().clone()
    }
}

impl Route for Scripted {
    fn kind(&self) -> RouteKind {
        RouteKind::Smtp
    }

    fn target(&self) -> String {
        "fake:587".into()
    }

    fn deliver<'a>(&'a self, message: &'a Message) -> DeliveryFuture<'a> {
        Box::pin(async move {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            self.running.fetch_sub(1, Ordering::SeqCst);
            if let Some(e) = self.script.lock().unwrap().pop_front() {
                return Err(e);
            }
            let text = std::fs::read_to_string(&message.data_path).unwrap();
            self.received.lock().unwrap().push((message.clone(), text));
            Ok(DeliveryReport {
                reply: Reply::with_status(250, (2, 0, 0), "OK queued"),
                accepted: message.recipients.clone(),
                rejected: Vec::new(),
            })
        })
    }

    fn wait_for_token(&self) -> TokenWait<'_> {
        Box::pin(async move {
            self.token_back.notified().await;
            Ok(())
        })
    }
}

fn settings(mailbox: &str, bounce_to: Option<&str>, max_connections: usize) -> AccountSettings {
    AccountSettings {
        mailbox: mailbox.into(),
        bounce_to: bounce_to.map(str::to_string),
        max_connections,
        max_per_minute: 0,
    }
}

fn config(accounts: &[(&str, AccountSettings)]) -> SchedulerConfig {
    SchedulerConfig {
        queue: true,
        wait_for_upstream: Duration::from_secs(10),
        retry_initial: Duration::from_secs(3600),
        retry_max: Duration::from_secs(3600),
        max_queue_lifetime: Duration::from_secs(86_400),
        shutdown_timeout: Duration::from_secs(5),
        hostname: "relay.test".into(),
        accounts: accounts
            .iter()
            .map(|(n, s)| (n.to_string(), s.clone()))
            .collect(),
        control_poll: Duration::from_secs(60),
        notify_account: None,
    }
}

fn envelope(account: &str, sender: &str) -> Envelope {
    Envelope {
        id: MessageId::default(),
        received_at_ms: smtp2oauth_spool::now_ms(),
        account: account.into(),
        device: "mfp".into(),
        listener: "test".into(),
        client_ip: "192.0.2.7".into(),
        helo: "mfp".into(),
        sender: sender.into(),
        original_sender: None,
        recipients: vec!["you@example.com".into()],
        eight_bit: false,
        smtputf8: false,
        size: 0,
        crc32c: 0,
        session: 1,
        notice: false,
    }
}

struct Relay {
    scheduler: Scheduler,
    spool: Spool,
    activity: Activity,
    _dir: tempfile::TempDir,
}

fn relay(routes: &[(&str, Arc<Scripted>)], cfg: SchedulerConfig) -> Relay {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open_with(dir.path(), false).unwrap();
    let activity = Activity::new(&ActivityConfig {
        recent_messages: 100,
        devices: vec![("mfp".into(), "scanner".into())],
        accounts: cfg.accounts.keys().cloned().collect(),
    });
    let routes = routes
        .iter()
        .map(|(n, r)| (n.to_string(), r.clone() as Arc<dyn Route>))
        .collect();
    let scheduler = Scheduler::new(spool.clone(), routes, cfg, None, Some(activity.clone()));
    scheduler.start();
    Relay {
        scheduler,
        spool,
        activity,
        _dir: dir,
    }
}

impl Relay {
    async fn send(&self, account: &str, sender: &str) -> Reply {
        let q = self
            .spool
            .write_message(
                envelope(account, sender),
                b"Subject: scan 42\r\n\r\nbody\r\n",
            )
            .await
            .unwrap();
        self.scheduler.submit(q).await
    }

    fn state(&self, account: &str) -> AccountState {
        self.activity
            .account(account, smtp2oauth_activity::now_ms())
            .unwrap()
            .condition
            .state
    }

    fn results(&self) -> Vec<MessageResult> {
        let mut r: Vec<_> = self
            .activity
            .messages(&MessageFilter::default())
            .into_iter()
            .map(|m| m.result)
            .collect();
        r.reverse();
        r
    }
}

async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

/// `535 5.7.3` to our login: the waiting device hears 451 4.7.0 with the upstream's words
/// (never the 535), the message stays queued, the account reads `degraded` with the reply,
/// and once the upstream accepts the message goes out exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_login_keeps_the_message_and_the_device_hears_451() {
    let route = Scripted::failing(vec![login_refused()]);
    let r = relay(
        &[("scanner", route.clone())],
        config(&[("scanner", settings("scanner@contoso.com", None, 3))]),
    );
    let told = r.send("scanner", "scanner@contoso.com").await.to_string();
    assert!(told.starts_with("451 4.7.0 "), "{told}");
    assert!(
        told.contains("535 5.7.3 Authentication unsuccessful"),
        "{told}"
    );
    assert_eq!(r.spool.list(Area::Queue).await.unwrap().len(), 1);
    assert_eq!(r.state("scanner"), AccountState::Degraded);
    let account = r.activity.account("scanner", u64::MAX / 2).unwrap();
    let why = account.condition.reply.unwrap();
    assert_eq!((why.code, why.status.as_deref()), (535, Some("5.7.3")));
    assert_eq!(r.results(), [MessageResult::Deferred]);
    // The account holds its mail 5 s (±20 %), then the upstream accepts.
    assert!(
        eventually(Duration::from_secs(15), || route.received().len() == 1).await,
        "delivered after the hold"
    );
    assert!(
        eventually(Duration::from_secs(5), || r.state("scanner")
            == AccountState::Ok)
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(route.received().len(), 1, "delivered once");
    assert!(r.spool.list(Area::Queue).await.unwrap().is_empty());
    assert!(r.spool.list(Area::Failed).await.unwrap().is_empty());
    assert_eq!(
        r.results(),
        [MessageResult::Deferred, MessageResult::Delivered]
    );
}

/// The first delivery after an account's trouble takes the others waiting for their next
/// retry with it: they do not sit out their backoff once the cause is gone.
#[tokio::test(flavor = "multi_thread")]
async fn the_first_delivery_after_trouble_releases_the_account_queue() {
    let route = Scripted::failing(vec![
        DeliveryError::Connect {
            target: "fake:587".into(),
            detail: "refused".into(),
        },
        DeliveryError::Connect {
            target: "fake:587".into(),
            detail: "refused".into(),
        },
    ]);
    let mut cfg = config(&[("scanner", settings("scanner@contoso.com", None, 1))]);
    cfg.wait_for_upstream = Duration::ZERO;
    let r = relay(&[("scanner", route.clone())], cfg);
    r.send("scanner", "scanner@contoso.com").await;
    r.send("scanner", "scanner@contoso.com").await;
    assert!(
        eventually(Duration::from_secs(5), || r.results().len() == 2).await,
        "both tried: {:?}",
        r.results()
    );
    assert_eq!(r.state("scanner"), AccountState::Unreachable);
    // Both wait ~5 s; a third message arrives now and goes through at once, taking them along.
    let started = Instant::now();
    r.send("scanner", "scanner@contoso.com").await;
    assert!(
        eventually(Duration::from_secs(3), || route.received().len() == 3).await,
        "released with the first delivery, not after their backoff: {:?}",
        r.results()
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(r.state("scanner"), AccountState::Ok);
}

/// After a token-endpoint failure the account's mail goes out the moment a token can be had
/// again, not at its next retry (5 s here, an hour after a few attempts).
#[tokio::test(flavor = "multi_thread")]
async fn a_token_again_releases_the_account_queue() {
    let route = Scripted::failing(vec![token_down()]);
    let mut cfg = config(&[("scanner", settings("scanner@contoso.com", None, 3))]);
    cfg.wait_for_upstream = Duration::from_secs(5);
    let r = relay(&[("scanner", route.clone())], cfg);
    let told = r.send("scanner", "scanner@contoso.com").await.to_string();
    assert!(told.starts_with("250 2.0.0 OK: queued as"), "{told}");
    assert_eq!(r.state("scanner"), AccountState::Unreachable);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(route.received().is_empty());
    let back = Instant::now();
    route.token_back.notify_waiters();
    assert!(
        eventually(Duration::from_secs(3), || route.received().len() == 1).await,
        "released when the token came back"
    );
    assert!(
        back.elapsed() < Duration::from_secs(2),
        "{:?}",
        back.elapsed()
    );
}

/// Synchronous delivery: six devices at once never hold more upstream sessions than the
/// account's `max_upstream_connections`, and every one is delivered.
#[tokio::test(flavor = "multi_thread")]
async fn synchronous_deliveries_take_the_account_connection_slots() {
    let route = Arc::new(Scripted {
        delay: Duration::from_millis(150),
        ..Scripted::default()
    });
    let mut cfg = config(&[("scanner", settings("scanner@contoso.com", None, 2))]);
    cfg.queue = false;
    let r = Arc::new(relay(&[("scanner", route.clone())], cfg));
    let sends: Vec<_> = (0..6)
        .map(|_| {
            let r = r.clone();
            tokio::spawn(async move { r.send("scanner", "scanner@contoso.com").await })
        })
        .collect();
    for s in sends {
        let told = s.await.unwrap().to_string();
        assert!(told.starts_with("250 2.0.0 OK: delivered"), "{told}");
    }
    assert_eq!(route.received().len(), 6);
    assert_eq!(route.peak.load(Ordering::SeqCst), 2, "at most two at once");
    assert_eq!(
        r.results().len(),
        6,
        "synchronous attempts are published too"
    );
}

/// In synchronous mode a refusal of our account reaches the device as 451 4.7.0, never as the
/// upstream's 535, and nothing is kept (the device keeps its copy).
#[tokio::test(flavor = "multi_thread")]
async fn synchronous_delivery_turns_a_refused_login_into_451() {
    let route = Scripted::failing(vec![login_refused()]);
    let mut cfg = config(&[("scanner", settings("scanner@contoso.com", None, 3))]);
    cfg.queue = false;
    let r = relay(&[("scanner", route.clone())], cfg);
    let told = r.send("scanner", "scanner@contoso.com").await.to_string();
    assert!(
        told.starts_with("451 4.7.0 ") && told.contains("535 5.7.3"),
        "{told}"
    );
    assert!(r.spool.list(Area::Queue).await.unwrap().is_empty());
    assert_eq!(r.state("scanner"), AccountState::Degraded);
}

/// A failure notice about an account the console shows broken goes out through a healthy
/// account, as its mailbox; with `notify_account` set, through that one.
#[tokio::test(flavor = "multi_thread")]
async fn notices_go_through_a_healthy_account() {
    for notify_account in [None, Some("backup")] {
        let scanner = Scripted::failing(vec![send_as_denied()]);
        let backup = Scripted::failing(vec![]);
        let alerts = Scripted::failing(vec![]);
        let mut cfg = config(&[
            (
                "scanner",
                settings("scanner@contoso.com", Some("it@contoso.com"), 3),
            ),
            ("backup", settings("backup@contoso.com", None, 3)),
            ("alerts", settings("alerts@contoso.com", None, 3)),
        ]);
        cfg.wait_for_upstream = Duration::ZERO;
        cfg.notify_account = notify_account.map(str::to_string);
        let r = relay(
            &[
                ("scanner", scanner.clone()),
                ("backup", backup.clone()),
                ("alerts", alerts.clone()),
            ],
            cfg,
        );
        // The console shows the scanner account refused (an earlier attempt).
        r.activity.attempt(&AttemptReport {
            account: "scanner".into(),
            at_ms: smtp2oauth_activity::now_ms(),
            result: None,
            signal: AccountSignal::Refused,
            reply: None,
            advice: None,
        });
        r.send("scanner", "scanner@contoso.com").await;
        let (carrier, other) = if notify_account.is_some() {
            (&backup, &alerts)
        } else {
            // The first healthy account in name order.
            (&alerts, &backup)
        };
        assert!(
            eventually(Duration::from_secs(5), || carrier.received().len() == 1).await,
            "{notify_account:?}: {:?}",
            r.results()
        );
        let (notice, text) = &carrier.received()[0];
        assert_eq!(notice.recipients, ["it@contoso.com"]);
        let mailbox = format!("{}@contoso.com", notify_account.unwrap_or("alerts"));
        assert_eq!(notice.sender, mailbox, "sent as the carrier");
        assert!(
            text.contains(&format!("From: Mail Delivery System <{mailbox}>")),
            "{text}"
        );
        assert!(text.contains("554 5.2.252 SendAsDenied"), "{text}");
        assert!(
            scanner.received().is_empty(),
            "not through the broken account"
        );
        assert!(other.received().is_empty());
        assert!(r.activity.notice_failures().is_empty());
    }
}

/// No account is healthy: the notice waits in the failing account's own queue, the console
/// lists it as a notice that could not be sent, and the problem clears when it goes out.
#[tokio::test(flavor = "multi_thread")]
async fn a_notice_with_no_healthy_account_is_kept_and_reported() {
    let scanner = Scripted::failing(vec![send_as_denied()]);
    let mut cfg = config(&[(
        "scanner",
        settings("scanner@contoso.com", Some("it@contoso.com"), 3),
    )]);
    cfg.wait_for_upstream = Duration::ZERO;
    let r = relay(&[("scanner", scanner.clone())], cfg);
    r.activity.attempt(&AttemptReport {
        account: "scanner".into(),
        at_ms: smtp2oauth_activity::now_ms(),
        result: None,
        signal: AccountSignal::SignInNeeded,
        reply: None,
        advice: None,
    });
    let mut changes = r.activity.subscribe();
    r.send("scanner", "scanner@contoso.com").await;
    let failure = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Change::NoticeFailed(f) = changes.recv().await.unwrap() {
                return f;
            }
        }
    })
    .await
    .expect("the notice that could not be sent is reported");
    assert!(failure.about.contains("message"), "{failure:?}");
    assert!(
        failure.reason.contains("no account is working"),
        "{failure:?}"
    );
    // Queued through the account it is about (the only one); it goes out, the problem clears.
    assert!(eventually(Duration::from_secs(5), || scanner.received().len() == 1).await);
    assert_eq!(scanner.received()[0].0.recipients, ["it@contoso.com"]);
    assert!(
        eventually(Duration::from_secs(5), || r
            .activity
            .notice_failures()
            .is_empty())
        .await
    );
}

/// An alert e-mail goes through a healthy account; with none, `send_alert` says why and
/// queues nothing.
#[tokio::test(flavor = "multi_thread")]
async fn alerts_go_through_a_healthy_account_or_fail_with_the_reason() {
    let scanner = Scripted::failing(vec![]);
    let backup = Scripted::failing(vec![]);
    let r = relay(
        &[("scanner", scanner.clone()), ("backup", backup.clone())],
        config(&[
            ("scanner", settings("scanner@contoso.com", None, 3)),
            ("backup", settings("backup@contoso.com", None, 3)),
        ]),
    );
    let refused = |account: &str| AttemptReport {
        account: account.into(),
        at_ms: smtp2oauth_activity::now_ms(),
        result: None,
        signal: AccountSignal::Refused,
        reply: None,
        advice: None,
    };
    r.activity.attempt(&refused("backup"));
    r.scheduler
        .send_alert(
            "it@contoso.com",
            "Account backup: refused",
            "Exchange refuses our login.\nWhat to do: grant SMTP.SendAsApp.",
        )
        .await
        .unwrap();
    assert!(eventually(Duration::from_secs(5), || scanner.received().len() == 1).await);
    let (alert, text) = &scanner.received()[0];
    assert_eq!(alert.sender, "scanner@contoso.com");
    assert_eq!(alert.recipients, ["it@contoso.com"]);
    assert!(
        text.contains("Subject: Account backup: refused\r\n"),
        "{text}"
    );
    assert!(
        text.ends_with("What to do: grant SMTP.SendAsApp.\r\n"),
        "{text}"
    );
    assert!(backup.received().is_empty());

    r.activity.attempt(&refused("scanner"));
    let err = r
        .scheduler
        .send_alert("it@contoso.com", "again", "text")
        .await
        .unwrap_err();
    assert!(err.contains("no account is working"), "{err}");
    assert_eq!(r.spool.list(Area::Queue).await.unwrap().len(), 0);
}

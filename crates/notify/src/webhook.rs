//! Posting events to the admin's webhook, in the background, with retries.
//!
//! A notification must never delay mail and must not be lost to a brief outage of the
//! receiver. Events go into a bounded queue (a full queue drops the event with an error line
//! rather than block anyone); one task posts them in order, retrying each with growing pauses.
//! An event given up on is logged at error level and shown on the overview as a problem until
//! a later post succeeds. The URL often carries a secret (Slack, Teams and ntfy URLs do), so
//! logs name only its host.

use crate::event::Event;
use crate::format::{WebhookFormat, render};
use smtp2oauth_activity::{Activity, NoticeFailure, now_ms};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Events waiting to be posted before new ones are dropped.
pub const QUEUE: usize = 256;
/// What a failing webhook is called in notice failures.
pub const ABOUT: &str = "webhook";

/// Where and how to post.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// The URL (a secret: never logged whole).
    pub url: String,
    /// The receiver's format.
    pub format: WebhookFormat,
    /// Pauses before each retry; the event is given up after the last.
    pub retry_delays: Vec<Duration>,
}

impl WebhookConfig {
    /// The default retries: after 5 s, 30 s, 2 min, 10 min and 30 min.
    pub fn default_retry_delays() -> Vec<Duration> {
        [5, 30, 120, 600, 1800]
            .into_iter()
            .map(Duration::from_secs)
            .collect()
    }
}

/// The handle that queues events for posting.
#[derive(Clone, Debug)]
pub struct WebhookSender {
    tx: mpsc::Sender<Event>,
}

impl WebhookSender {
    /// Queues `event`; never waits.
    pub fn send(&self, event: Event) {
        if let Err(e) = self.tx.try_send(event) {
            error!(event = %e.into_inner().event, "the webhook queue is full (the receiver has been failing): notification dropped");
        }
    }
}

/// Starts the posting task; it ends at `shutdown` (events still queued are dropped).
pub fn spawn(
    client: reqwest::Client,
    config: WebhookConfig,
    activity: Activity,
    shutdown: CancellationToken,
) -> (WebhookSender, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let poster = Poster {
        client,
        host: host_of(&config.url),
        config,
        activity,
        shutdown,
    };
    (WebhookSender { tx }, tokio::spawn(poster.run(rx)))
}

/// The URL's host, for log lines.
pub fn host_of(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_else(|| "(invalid URL)".into())
}

struct Poster {
    client: reqwest::Client,
    config: WebhookConfig,
    host: String,
    activity: Activity,
    shutdown: CancellationToken,
}

impl Poster {
    async fn run(self, mut rx: mpsc::Receiver<Event>) {
        loop {
            let event = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                e = rx.recv() => match e { Some(e) => e, None => return },
            };
            self.deliver(&event).await;
        }
    }

    async fn deliver(&self, event: &Event) {
        let mut delays = self.config.retry_delays.iter();
        let mut tries = 0u32;
        loop {
            tries += 1;
            let reason = match self.post(event).await {
                Ok(()) => return self.delivered(event, tries),
                Err(reason) => reason,
            };
            let Some(delay) = delays.next() else {
                return self.given_up(event, tries, reason);
            };
            warn!(webhook = %self.host, event = %event.event, tries, reason = %reason,
                retry_in_secs = delay.as_secs(), "webhook notification failed; retrying");
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(*delay) => {}
            }
        }
    }

    fn delivered(&self, event: &Event, tries: u32) {
        if tries > 1 {
            info!(webhook = %self.host, event = %event.event, tries, "webhook notification sent after retries");
        }
        self.activity.notice_sent(ABOUT);
    }

    fn given_up(&self, event: &Event, tries: u32, reason: String) {
        error!(webhook = %self.host, event = %event.event, tries, reason = %reason,
            "webhook notification given up; check [notify] webhook_url and the receiver");
        self.activity.notice_failed(NoticeFailure {
            about: ABOUT.into(),
            reason: format!(
                "{} ({} tries to {}): {reason}",
                event.event, tries, self.host
            ),
            at_ms: now_ms(),
        });
    }

    async fn post(&self, event: &Event) -> Result<(), String> {
        let body = render(self.config.format, event);
        let mut req = self
            .client
            .post(&self.config.url)
            .header(reqwest::header::CONTENT_TYPE, body.content_type)
            .body(body.bytes);
        for (k, v) in body.headers {
            req = req.header(k, v);
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("HTTP {}", r.status().as_u16())),
            // reqwest's error text may contain the URL; keep only its kind.
            Err(e) if e.is_timeout() => Err("timed out".into()),
            Err(e) if e.is_connect() => Err("cannot connect".into()),
            Err(_) => Err("request failed".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use axum::http::StatusCode;
    use smtp2oauth_activity::{ActivityConfig, AlertKind, Level, Subject};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn event(name: &str) -> Event {
        Event {
            event: name.into(),
            kind: AlertKind::Raised,
            level: Level::Error,
            relay: "r".into(),
            at: String::new(),
            subject: Subject::QueueAge,
            summary: "s".into(),
            advice: String::new(),
            doc: "d".into(),
            since: None,
            message: None,
        }
    }

    /// A receiver that fails the first `fail` posts with 500 and records the bodies.
    async fn receiver(
        fail: usize,
    ) -> (String, Arc<AtomicUsize>, Arc<std::sync::Mutex<Vec<String>>>) {
        let hits = Arc::new(AtomicUsize::new(0));
        let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (h, b) = (hits.clone(), bodies.clone());
        let app = axum::Router::new().route(
            "/hook/{secret}",
            axum::routing::post(move |body: String| {
                let n = h.fetch_add(1, Ordering::SeqCst);
                b.lock().unwrap().push(body);
                async move {
                    if n < fail {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::NO_CONTENT
                    }
                }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook/s3cr3t", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        (url, hits, bodies)
    }

    fn client() -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::new()
    }

    fn activity() -> Activity {
        Activity::new(&ActivityConfig::default())
    }

    fn config(url: String, delays_ms: &[u64]) -> WebhookConfig {
        WebhookConfig {
            url,
            format: WebhookFormat::Json,
            retry_delays: delays_ms
                .iter()
                .map(|m| Duration::from_millis(*m))
                .collect(),
        }
    }

    async fn wait_for(hits: &AtomicUsize, n: usize) {
        for _ in 0..200 {
            if hits.load(Ordering::SeqCst) >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("only {} posts arrived", hits.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_failing_receiver_gets_the_event_on_a_retry() {
        let (url, hits, bodies) = receiver(2).await;
        let a = activity();
        let (tx, _task) = spawn(
            client(),
            config(url, &[10, 10, 10]),
            a.clone(),
            CancellationToken::new(),
        );
        tx.send(event("account_degraded"));
        wait_for(&hits, 3).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(hits.load(Ordering::SeqCst), 3);
        assert!(
            bodies
                .lock()
                .unwrap()
                .iter()
                .all(|b| b.contains("account_degraded"))
        );
        assert!(a.notice_failures().is_empty());
    }

    #[tokio::test]
    async fn a_given_up_event_is_a_problem_until_a_post_succeeds() {
        let (url, hits, _) = receiver(2).await;
        let a = activity();
        let (tx, _task) = spawn(
            client(),
            config(url, &[10]),
            a.clone(),
            CancellationToken::new(),
        );
        tx.send(event("first"));
        wait_for(&hits, 2).await;
        for _ in 0..100 {
            if !a.notice_failures().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let failures = a.notice_failures();
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].about, ABOUT);
        assert!(
            !failures[0].reason.contains("s3cr3t"),
            "{}",
            failures[0].reason
        );
        assert!(
            failures[0].reason.contains("HTTP 500"),
            "{}",
            failures[0].reason
        );
        tx.send(event("second"));
        wait_for(&hits, 3).await;
        for _ in 0..100 {
            if a.notice_failures().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the failure was not cleared by the successful post");
    }

    #[test]
    fn logs_name_only_the_host() {
        assert_eq!(
            host_of("https://hooks.slack.com/services/T0/B0/SECRET"),
            "hooks.slack.com"
        );
        assert_eq!(host_of("not a url"), "(invalid URL)");
    }
}

//! Notifications that reach someone: a webhook event and an alert e-mail when something goes
//! wrong, a reminder while it lasts, and word when it clears.
//!
//! An admin cannot watch a page all day. This crate watches the activity store (`activity`)
//! and the facts the binary measures (queue age, free space, certificates), decides what the
//! problems are with the same function the overview uses, and sends:
//! - every alert (raised, reminder each `repeat_interval`, cleared) to `[notify] webhook_url`
//!   in the chosen format, and as an e-mail to the alert addresses through a [`Mailer`] the
//!   binary provides (which picks a healthy account, never the failing one);
//! - every message that failed for good to the webhook (its e-mail is the failure notice the
//!   scheduler already sends to `bounce_to`).
//!
//! Brief trouble does not page anyone: a throttled or unreachable account becomes an alert
//! only after it has lasted [`FLAP_GRACE`]; a refused account or a needed sign-in at once.
//!
//! # Layout
//! - `event.rs`: the event (the JSON contract).
//! - `format.rs`: webhook bodies for json, teams, slack, ntfy.
//! - `webhook.rs`: the posting task with retries.

#![warn(missing_docs)]

pub mod event;
pub mod format;
pub mod webhook;

pub use event::{Event, FailedMessage};
pub use format::WebhookFormat;
pub use webhook::{WebhookConfig, WebhookSender};

use smtp2oauth_activity::problems::problems;
use smtp2oauth_activity::{
    AccountState, Activity, AlertBook, Change, MessageResult, NoticeFailure, Problem, now_ms,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// How long a throttled or unreachable account must last before it is alerted.
pub const FLAP_GRACE: Duration = Duration::from_secs(300);

pub use smtp2oauth_activity::EnvironmentFn;

/// Sends an alert e-mail through a healthy account.
pub trait Mailer: Send + Sync {
    /// Queues a plain-text e-mail to `to`; Err with the reason when it cannot (for example, no
    /// account is healthy enough to carry it).
    fn send<'a>(
        &'a self,
        to: &'a str,
        subject: &'a str,
        text: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;
}

/// What the notifier does.
#[derive(Clone, Debug)]
pub struct NotifyConfig {
    /// The relay's hostname, in every event.
    pub relay: String,
    /// `[notify] repeat_interval`: reminders while a problem lasts (0: never).
    pub repeat_interval: Duration,
    /// How often problems are re-evaluated besides on every account change.
    pub check_interval: Duration,
    /// Addresses that get alert e-mails (empty: none).
    pub email_to: Vec<String>,
}

/// The notifier: build it, then [`Notifier::run`] it as a task.
pub struct Notifier {
    config: NotifyConfig,
    activity: Activity,
    environment: EnvironmentFn,
    webhook: Option<WebhookSender>,
    mailer: Option<Arc<dyn Mailer>>,
}

/// The problems that should be alerted now: those that have lasted their grace.
pub fn due(problems: Vec<Problem>, now_ms: u64) -> Vec<Problem> {
    problems
        .into_iter()
        .filter(|p| {
            let grace = match p.state {
                Some(AccountState::Throttled | AccountState::Unreachable) => {
                    FLAP_GRACE.as_millis() as u64
                }
                _ => 0,
            };
            p.since_ms
                .is_none_or(|since| now_ms.saturating_sub(since) >= grace)
        })
        .collect()
}

impl Notifier {
    /// A notifier that posts to `webhook` (if any) and mails through `mailer` (if any).
    pub fn new(
        config: NotifyConfig,
        activity: Activity,
        environment: EnvironmentFn,
        webhook: Option<WebhookSender>,
        mailer: Option<Arc<dyn Mailer>>,
    ) -> Notifier {
        Notifier {
            config,
            activity,
            environment,
            webhook,
            mailer,
        }
    }

    /// Watches until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut book = AlertBook::new();
        let mut changes = self.activity.subscribe();
        let mut tick = tokio::time::interval(self.config.check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => self.check(&mut book).await,
                change = changes.recv() => match change {
                    Ok(Change::Message(r)) if r.result == MessageResult::Failed => {
                        self.emit(Event::message_failed(&r, &self.config.relay, now_ms()), false);
                    }
                    Ok(Change::AccountState { .. }) | Err(RecvError::Lagged(_)) => {
                        self.check(&mut book).await
                    }
                    Ok(_) => {}
                    Err(RecvError::Closed) => return,
                },
            }
        }
    }

    async fn check(&self, book: &mut AlertBook) {
        let env = (self.environment)().await;
        let now = env.now_ms;
        let current = due(problems(&self.activity.accounts(now), &env), now);
        let repeat = self.config.repeat_interval.as_millis() as u64;
        for alert in book.step(&current, now, repeat) {
            info!(event = %event::event_name(&alert), kind = ?alert.kind, summary = %alert.problem.summary, "alert");
            self.emit(Event::from_alert(&alert, &self.config.relay, now), true);
        }
    }

    fn emit(&self, event: Event, by_mail: bool) {
        if by_mail && let Some(mailer) = &self.mailer {
            for to in &self.config.email_to {
                tokio::spawn(mail(
                    mailer.clone(),
                    self.activity.clone(),
                    to.clone(),
                    event.clone(),
                ));
            }
        }
        if let Some(w) = &self.webhook {
            w.send(event);
        }
    }
}

/// Sends one alert e-mail and records the outcome.
async fn mail(mailer: Arc<dyn Mailer>, activity: Activity, to: String, event: Event) {
    let about = format!("e-mail to {to}");
    let mut text = event.summary.clone();
    if !event.advice.is_empty() {
        text.push_str(&format!("\n\nWhat to do: {}", event.advice));
    }
    text.push_str(&format!("\n\nMore: docs/{}\n", event.doc));
    match mailer.send(&to, &event.title(), &text).await {
        Ok(()) => activity.notice_sent(&about),
        Err(reason) => {
            error!(to = %to, event = %event.event, reason = %reason, "an alert e-mail could not be sent");
            activity.notice_failed(NoticeFailure {
                about,
                reason,
                at_ms: now_ms(),
            });
        }
    }
}

#[cfg(test)]
mod tests;

//! One delivery attempt: read the message's state, give the remaining recipients to the
//! account's route, decide what the outcome means (`verdict.rs`), and carry that out.
//!
//! Carrying out a verdict is the one place where an attempt changes anything
//! ([`Inner::carry_out`]): each verdict writes the spool (remove, record the attempt, move to
//! `failed/`), moves the metrics, logs its line, queues a failure notice when one is due, and
//! answers the waiting device.

use crate::backoff;
use crate::notice::{FailedRecipient, Reason};
use crate::signal::account_signal;
use crate::verdict::{MessageState, Outcome, Retry, Verdict, verdict};
use crate::{Inner, now_ms, to_message};
use smtp2oauth_activity::AccountSignal;
use smtp2oauth_metrics::{AccountLabels, Metrics, RouteLabels};
use smtp2oauth_proto::replies::{later, ok};
use smtp2oauth_proto::{DeliveryError, Reply};
use smtp2oauth_spool::{
    Area, AttemptOutcome, Envelope, Event, MessageId, Queued, RecipientResult, SpoolError,
};
use smtp2oauth_upstream::{Route, advice};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{error, info, warn};

/// What the queue does with a message after its attempt.
pub(crate) enum Next {
    /// Nothing more: it was settled (or is gone).
    Forget,
    /// Attempt it again then.
    Retry(Instant),
}

impl Inner {
    pub(crate) async fn run_attempt(self: Arc<Self>, id: MessageId) {
        let next = self.attempt(&id).await;
        let delete = self.queue().finish(&id);
        self.slot_freed.notify_waiters();
        if delete {
            match self.spool.remove(&id, Area::Queue).await {
                Ok(()) | Err(SpoolError::NotFound(_)) => {
                    info!(queue_id = %id, "deleted by the admin")
                }
                Err(e) => error!(queue_id = %id, error = %e, "cannot delete"),
            }
            self.queue().forget(&id);
        } else {
            match next {
                Next::Forget => self.queue().forget(&id),
                Next::Retry(at) => self.queue().reschedule_after_attempt(&id, at),
            }
        }
        self.wake.notify_one();
    }

    fn reply_waiter(&self, id: &MessageId, reply: Reply) {
        if let Some(tx) = self.queue().take_waiter(id) {
            let _ = tx.send(reply);
        }
    }

    async fn attempt(&self, id: &MessageId) -> Next {
        let q = match self.queued(id).await {
            Ok(q) => q,
            Err(SpoolError::NotFound(_)) => {
                self.reply_waiter(id, ok::queued(id.as_str()));
                return Next::Forget;
            }
            Err(e) => {
                error!(queue_id = %id, error = %e, "cannot read a queued message; will try again");
                self.reply_waiter(id, ok::queued(id.as_str()));
                return Next::Retry(Instant::now() + self.cfg.retry_max);
            }
        };
        let route = self.routes.get(&q.envelope.account).cloned();
        let started = Instant::now();
        let out = deliver(route.as_deref(), &q).await;
        let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        // The waiter is taken only now: until the verdict, the device's session may still take
        // it back when it stops waiting.
        let waiter = self.queue().take_waiter(id);
        let state = MessageState {
            delivered_before: !q.progress.delivered.is_empty(),
            failed_before: !q.progress.failed.is_empty(),
            age: Duration::from_millis(now_ms().saturating_sub(q.envelope.received_at_ms)),
            waiting: waiter.as_ref().is_some_and(|tx| !tx.is_closed()),
        };
        let verdict = verdict(&out, &state, self.cfg.max_queue_lifetime);
        let attempt = Attempt {
            number: q.progress.attempts + 1,
            q: &q,
            route: route.as_deref(),
            out,
            ms,
            waiter,
        };
        self.carry_out(attempt, verdict).await
    }

    /// The message as its session committed it (still queued?), or as the spool has it.
    async fn queued(&self, id: &MessageId) -> Result<Queued, SpoolError> {
        // Taken out of the queue first: its lock must not be held across an await.
        let fresh = self.queue().take_fresh(id);
        match fresh {
            // An admin's `queue delete` may have removed it between its commit and its
            // hand-over to the queue.
            Some(q) if self.spool.is_queued(id).await => Ok(q),
            Some(_) => Err(SpoolError::NotFound(id.clone())),
            None => self.spool.read(id, Area::Queue).await,
        }
    }
}

/// Gives the remaining recipients to the route.
async fn deliver(route: Option<&dyn Route>, q: &Queued) -> Outcome {
    let remaining = &q.progress.remaining;
    let Some(route) = route else {
        let e = DeliveryError::Local {
            detail: format!("no account `{}` is configured", q.envelope.account),
        };
        return Outcome::of(Err(e), remaining);
    };
    if remaining.is_empty() {
        return Outcome::nothing_left();
    }
    let message = to_message(q, remaining.clone());
    Outcome::of(route.deliver(&message).await, remaining)
}

/// An attempt that ended, with what is needed to carry out its verdict.
pub(crate) struct Attempt<'a> {
    /// 1 for the first attempt.
    pub(crate) number: u32,
    pub(crate) q: &'a Queued,
    /// None when the message's account has no route.
    pub(crate) route: Option<&'a dyn Route>,
    pub(crate) out: Outcome,
    /// How long the route took.
    pub(crate) ms: u64,
    /// The device's session, when it waits for this attempt.
    pub(crate) waiter: Option<oneshot::Sender<Reply>>,
}

impl Attempt<'_> {
    pub(crate) fn route_kind(&self) -> &'static str {
        route_label(self.route)
    }

    fn target(&self) -> String {
        self.route.map(|r| r.target()).unwrap_or_default()
    }

    pub(crate) fn advice(&self) -> &'static str {
        self.out
            .error
            .as_ref()
            .and_then(advice::for_error)
            .unwrap_or("")
    }

    /// Answers the waiting device, if any.
    fn tell(&mut self, reply: Reply) {
        if let Some(tx) = self.waiter.take() {
            let _ = tx.send(reply);
        }
    }
}

/// A route's kind as a metric label and log field; `none` when the account has no route.
pub(crate) fn route_label(route: Option<&dyn Route>) -> &'static str {
    route.map_or("none", |r| r.kind().as_str())
}

impl Inner {
    /// Carries out what `verdict` decided about an attempt.
    pub(crate) async fn carry_out(&self, a: Attempt<'_>, verdict: Verdict) -> Next {
        let account = &a.q.envelope.account;
        if !a.out.delivered.is_empty() {
            let released = self.queue().recovered(account, Instant::now());
            if released > 0 {
                info!(account = %account, messages = released, "the account delivers again; its queued messages go now");
                self.wake.notify_one();
            }
        }
        count(
            self.metrics.as_deref(),
            &a.q.envelope,
            a.route_kind(),
            &verdict,
            &a.out,
            a.ms,
        );
        let pause = match verdict {
            Verdict::Deferred { retry, .. } => self.pause_account(&a, retry),
            _ => None,
        };
        self.publish(&a, &verdict, pause);
        match verdict {
            Verdict::Delivered => self.delivered(a).await,
            Verdict::Refused(reply) => self.refused(a, reply).await,
            Verdict::Failed { partial } => self.failed(a, partial).await,
            Verdict::Expired => self.expired(a).await,
            Verdict::Deferred { partial, retry } => self.deferred(a, partial, retry, pause).await,
        }
    }

    /// Pauses the whole account when the upstream throttles it or refuses it; returns the
    /// pause. A message whose whole attempt failed for the account's or the upstream's sake
    /// marks the account in trouble, so its first delivery again releases the rest.
    fn pause_account(&self, a: &Attempt<'_>, retry: Retry) -> Option<Duration> {
        let account = &a.q.envelope.account;
        if !matches!(
            account_signal(&a.out, 0),
            AccountSignal::Working | AccountSignal::Neutral
        ) {
            self.queue().mark_troubled(account);
        }
        let level = self.queue().throttle_level(account);
        let pause = match retry {
            Retry::PauseAccount { retry_after } => backoff::throttle_pause(level, retry_after),
            Retry::HoldAccount => {
                backoff::hold_pause(level, self.cfg.retry_initial, self.cfg.retry_max)
            }
            _ => return None,
        };
        let now = Instant::now();
        let level = self.queue().pause(account, now + pause, now);
        if retry == Retry::HoldAccount {
            error!(account = %account, upstream = %a.out.reply, pause_secs = pause.as_secs(), level, advice = a.advice(),
                "the upstream refuses this account (not the message); holding all its mail until it is fixed, retrying in {}s", pause.as_secs());
        } else {
            warn!(account = %account, upstream = %a.out.reply, pause_secs = pause.as_secs(), level,
                "the upstream is throttling this account; pausing all its deliveries");
        }
        Some(pause)
    }

    async fn delivered(&self, mut a: Attempt<'_>) -> Next {
        let env = &a.q.envelope;
        info!(queue_id = %env.id, session = env.session, device = %env.device, account = %env.account, route = a.route_kind(), size = env.size,
            recipients = env.recipients.len(), upstream = %a.out.reply, attempt = a.number, ms = a.ms, "delivered");
        // The device hears first: the removal is not flushed before anyone waits for it
        // anyway (a crash can bring a delivered message back either way), so making the
        // device wait for the unlinks would only add latency.
        a.tell(ok::delivered(env.id.as_str()));
        if env.notice {
            self.notice_delivered(a.q);
        }
        self.remove(&env.id, Area::Queue).await;
        Next::Forget
    }

    async fn refused(&self, mut a: Attempt<'_>, reply: Reply) -> Next {
        let env = &a.q.envelope;
        warn!(queue_id = %env.id, session = env.session, device = %env.device, account = %env.account, route = a.route_kind(), size = env.size,
            recipients = env.recipients.len(), upstream = %reply, attempt = a.number, advice = a.advice(), ms = a.ms,
            "refused by the upstream; the device was told");
        self.remove(&env.id, Area::Queue).await;
        a.tell(reply);
        Next::Forget
    }

    async fn failed(&self, mut a: Attempt<'_>, partial: bool) -> Next {
        let q = a.q;
        let (env, progress) = (&q.envelope, &q.progress);
        let outcome = if partial {
            AttemptOutcome::Partial
        } else {
            AttemptOutcome::Failed
        };
        self.record(&a, outcome, None).await;
        for (rcpt, r) in &a.out.failed {
            warn!(queue_id = %env.id, session = env.session, device = %env.device, account = %env.account, route = a.route_kind(), recipient = %rcpt,
                upstream = %r, attempt = a.number, advice = advice::for_recipient(r).unwrap_or(a.advice()), "recipient refused by the upstream");
        }
        self.to_failed(q, "refused by the upstream").await;
        let mut failed = refused(&a.out.failed);
        failed.extend(
            progress
                .failed
                .iter()
                .filter(|f| !progress.noticed.contains(&f.rcpt))
                .map(|f| FailedRecipient::refused(&f.rcpt, &f.reply)),
        );
        self.notify(
            q,
            Area::Failed,
            &failed,
            Reason::Refused,
            &a.target(),
            a.advice(),
        )
        .await;
        let id = env.id.as_str();
        a.tell(if partial {
            let delivered = progress.delivered.len() + a.out.delivered.len();
            ok::delivered_partially(id, delivered, env.recipients.len())
        } else {
            ok::queued(id)
        });
        Next::Forget
    }

    async fn expired(&self, mut a: Attempt<'_>) -> Next {
        let q = a.q;
        let env = &q.envelope;
        self.record(&a, AttemptOutcome::Expired, None).await;
        let lifetime = self.cfg.max_queue_lifetime;
        let age_hours = now_ms().saturating_sub(env.received_at_ms) / 3_600_000;
        error!(queue_id = %env.id, session = env.session, device = %env.device, account = %env.account, route = a.route_kind(), upstream = %a.out.reply,
            attempt = a.number, age_hours, advice = a.advice(), "giving up: undelivered for max_queue_lifetime");
        self.to_failed(q, "max_queue_lifetime exceeded").await;
        let failed: Vec<FailedRecipient> = a
            .out
            .deferred
            .iter()
            .map(|(rcpt, reply)| FailedRecipient::expired(rcpt, reply))
            .chain(refused(&a.out.failed))
            .collect();
        let reason = Reason::Expired {
            lifetime_hours: lifetime.as_secs() / 3600,
        };
        self.notify(q, Area::Failed, &failed, reason, &a.target(), a.advice())
            .await;
        a.tell(ok::queued(env.id.as_str()));
        Next::Forget
    }

    async fn deferred(
        &self,
        mut a: Attempt<'_>,
        partial: bool,
        retry: Retry,
        pause: Option<Duration>,
    ) -> Next {
        let q = a.q;
        let env = &q.envelope;
        let own = backoff::retry_delay(a.number, self.cfg.retry_initial, self.cfg.retry_max);
        let delay = pause.map_or(own, |p| own.max(p));
        let next_ms = now_ms() + u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        let outcome = if partial {
            AttemptOutcome::Partial
        } else {
            AttemptOutcome::Deferred
        };
        self.record(&a, outcome, Some(next_ms)).await;
        if !a.out.failed.is_empty() {
            let failed = refused(&a.out.failed);
            self.notify(
                q,
                Area::Queue,
                &failed,
                Reason::Refused,
                &a.target(),
                a.advice(),
            )
            .await;
        }
        log_deferred(&a, retry, delay);
        if retry == Retry::AwaitToken {
            self.wait_for_token(&env.account);
        }
        let id = env.id.as_str();
        a.tell(match retry {
            // Not the message's fault, and not a passing hiccup: the device hears why, in
            // the upstream's words (never its 5xx), and the relay keeps the message.
            Retry::HoldAccount => later::account_refused(id, &a.out.reply),
            _ => ok::queued(id),
        });
        Next::Retry(Instant::now() + delay)
    }

    /// Releases the account's queue as soon as its token source hands out a token again
    /// (after a token-endpoint failure), rather than at each message's next retry. One wait
    /// per account; it ends with the relay.
    fn wait_for_token(&self, account: &str) {
        let Some(route) = self.routes.get(account).cloned() else {
            return;
        };
        let Some(me) = self.me.upgrade() else { return };
        let fresh = self
            .token_waits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(account.to_string());
        if !fresh {
            return;
        }
        let account = account.to_string();
        tokio::spawn(async move {
            let got = tokio::select! {
                r = route.wait_for_token() => Some(r),
                _ = me.stop.cancelled() => None,
            };
            me.token_waits
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&account);
            match got {
                Some(Ok(())) => {
                    let n = me.release(&account);
                    info!(account = %account, messages = n, "a token could be had again; the account's queued messages go now");
                }
                Some(Err(e)) => {
                    info!(account = %account, error = %e, "stopped waiting for a token; the account's mail is retried on its schedule")
                }
                None => {}
            }
        });
    }

    /// Appends the attempt's event. A failure to write it (full disk) is logged and the
    /// schedule kept in memory, so deliveries go on.
    async fn record(&self, a: &Attempt<'_>, outcome: AttemptOutcome, next_attempt_ms: Option<u64>) {
        let ev = Event::Attempt {
            at_ms: now_ms(),
            attempt: a.number,
            outcome,
            reply: a.out.reply.to_string(),
            stage: a.out.stage().map(|s| s.as_str().to_string()),
            delivered: a.out.delivered.clone(),
            failed: a
                .out
                .failed
                .iter()
                .map(|(rcpt, reply)| RecipientResult {
                    rcpt: rcpt.clone(),
                    reply: reply.clone(),
                })
                .collect(),
            next_attempt_ms,
        };
        let id = a.q.id();
        if let Err(e) = self.spool.append_event(id, Area::Queue, &ev).await {
            error!(queue_id = %id, error = %e, "cannot record the delivery attempt in the spool");
        }
    }

    async fn remove(&self, id: &MessageId, area: Area) {
        match self.spool.remove(id, area).await {
            Ok(()) | Err(SpoolError::NotFound(_)) => {}
            Err(e) => {
                error!(queue_id = %id, error = %e, "cannot remove a settled message from the spool")
            }
        }
    }

    async fn to_failed(&self, q: &Queued, reason: &str) {
        let id = q.id();
        let moved = Event::MovedToFailed {
            at_ms: now_ms(),
            reason: reason.into(),
        };
        if let Err(e) = self.spool.append_event(id, Area::Queue, &moved).await {
            error!(queue_id = %id, error = %e, "cannot record the move to failed/");
        }
        if let Err(e) = self.spool.move_to(id, Area::Queue, Area::Failed).await {
            error!(queue_id = %id, error = %e, "cannot move the message to failed/");
        }
    }
}

/// The log line of a deferral: at error level when a person must act (a sign-in, an
/// account the upstream refuses), a warning otherwise.
fn log_deferred(a: &Attempt<'_>, retry: Retry, delay: Duration) {
    let env = &a.q.envelope;
    let recipients = a.out.deferred.len();
    let stage = a.out.stage().map(|s| s.as_str()).unwrap_or("");
    match retry {
        Retry::AwaitSignIn => {
            // Nothing will get better until a person signs in: say so loudly, but keep the mail.
            error!(queue_id = %env.id, session = env.session, device = %env.device, account = %env.account, route = a.route_kind(), size = env.size,
                recipients, upstream = %a.out.reply, attempt = a.number, retry_in_secs = delay.as_secs(),
                "deferred: the account needs a new sign-in; the message stays queued and goes out once someone signs in (accounts page, or `smtp2oauth account login {}`)", env.account);
        }
        Retry::HoldAccount => {
            error!(queue_id = %env.id, session = env.session, device = %env.device, account = %env.account, route = a.route_kind(), size = env.size,
                recipients, upstream = %a.out.reply, stage, attempt = a.number, retry_in_secs = delay.as_secs(), advice = a.advice(), ms = a.ms,
                "deferred: the upstream refuses the account, not the message; the message stays queued until the account works again");
        }
        _ => {
            warn!(queue_id = %env.id, session = env.session, device = %env.device, account = %env.account, route = a.route_kind(), size = env.size,
                recipients, upstream = %a.out.reply, stage, attempt = a.number, retry_in_secs = delay.as_secs(), advice = a.advice(), ms = a.ms, "deferred");
        }
    }
}

fn refused(failed: &[(String, Reply)]) -> Vec<FailedRecipient> {
    failed
        .iter()
        .map(|(rcpt, reply)| FailedRecipient::refused(rcpt, reply))
        .collect()
}

/// Moves the metrics for one attempt's verdict: the same counters for queued and synchronous
/// delivery. A message counts once per attempt: delivered, deferred, or failed (refused
/// whole or in part, or expired).
pub(crate) fn count(
    metrics: Option<&Metrics>,
    env: &Envelope,
    route: &'static str,
    verdict: &Verdict,
    out: &Outcome,
    ms: u64,
) {
    let Some(m) = metrics else { return };
    let labels = RouteLabels {
        account: env.account.clone(),
        route,
    };
    // Only replies an upstream actually sent are counted as upstream replies.
    if let Some(reply) = out.upstream_reply() {
        m.upstream_reply(
            &env.account,
            reply.code(),
            reply.status().map(|s| s.to_string()),
        );
    }
    m.upstream_duration
        .get_or_create(&labels)
        .observe(ms as f64 / 1000.0);
    match verdict {
        Verdict::Delivered => {
            m.messages_delivered.get_or_create(&labels).inc();
            m.delivered_bytes.get_or_create(&labels).inc_by(env.size);
            let age = now_ms().saturating_sub(env.received_at_ms) as f64 / 1000.0;
            m.delivery_latency
                .get_or_create(&AccountLabels {
                    account: env.account.clone(),
                })
                .observe(age);
        }
        Verdict::Deferred { .. } => {
            m.messages_deferred.get_or_create(&labels).inc();
        }
        Verdict::Refused(_) | Verdict::Failed { .. } | Verdict::Expired => {
            m.messages_failed.get_or_create(&labels).inc();
        }
    }
}

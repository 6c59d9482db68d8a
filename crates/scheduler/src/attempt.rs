//! One delivery attempt and what it changes: the spool state, the account's throttling, the
//! waiting device's reply, and failure notices.

use crate::backoff;
use crate::notice::{self, FailedRecipient, Reason};
use crate::{Inner, now_ms, to_message};
use smtp2oauth_proto::replies::ok;
use smtp2oauth_proto::{Cause, DeliveryError, Reply, Stage};
use smtp2oauth_spool::{
    Area, AttemptOutcome, Envelope, Event, MessageId, Queued, RecipientResult, SpoolError,
};
use smtp2oauth_upstream::{DeliveryReport, Route, advice};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{error, info, warn};

/// What an attempt found, recipient by recipient.
struct Outcome {
    delivered: Vec<String>,
    failed: Vec<(String, Reply)>,
    deferred: Vec<String>,
    /// The upstream's final reply, or the failure's reply.
    reply: Reply,
    stage: Option<Stage>,
    error: Option<DeliveryError>,
}

fn classify(result: Result<DeliveryReport, DeliveryError>, remaining: &[String]) -> Outcome {
    match result {
        Ok(report) => {
            let mut failed = Vec::new();
            let mut deferred = Vec::new();
            for (rcpt, reply) in report.rejected {
                if reply.is_permanent() {
                    failed.push((rcpt, reply));
                } else {
                    deferred.push(rcpt);
                }
            }
            Outcome {
                delivered: report.accepted,
                failed,
                deferred,
                reply: report.reply,
                stage: None,
                error: None,
            }
        }
        Err(e) if e.is_permanent() => Outcome {
            delivered: Vec::new(),
            failed: remaining.iter().map(|r| (r.clone(), e.reply())).collect(),
            deferred: Vec::new(),
            reply: e.reply(),
            stage: Some(e.stage()),
            error: Some(e),
        },
        Err(e) => Outcome {
            delivered: Vec::new(),
            failed: Vec::new(),
            deferred: remaining.to_vec(),
            reply: e.reply(),
            stage: Some(e.stage()),
            error: Some(e),
        },
    }
}

/// Which counter an attempt's outcome moves.
#[derive(Clone, Copy)]
enum Counted {
    Delivered,
    Deferred,
    Failed,
}

enum Next {
    Forget,
    Retry(Instant),
}

impl Inner {
    pub(crate) async fn run_attempt(self: Arc<Self>, id: MessageId) {
        let next = self.attempt(&id).await;
        let delete = self.queue().finish(&id);
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
        let fresh = self.queue().take_fresh(id);
        let read = match fresh {
            // Still queued? (An admin's `queue delete` may have removed it between its commit
            // and its hand-over; a stat of a cached directory entry is cheap.)
            Some(q) if self.spool.is_queued(id).await => Ok(q),
            Some(_) => Err(SpoolError::NotFound(id.clone())),
            None => self.spool.read(id, Area::Queue).await,
        };
        let q = match read {
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
        let remaining = q.progress.remaining.clone();
        let attempt_no = q.progress.attempts + 1;
        let Some(route) = self.routes.get(&q.envelope.account).cloned() else {
            let e = DeliveryError::Local {
                detail: format!("no account `{}` is configured", q.envelope.account),
            };
            let out = classify(Err(e), &remaining);
            return self.apply(&q, None, attempt_no, out, 0).await;
        };
        if remaining.is_empty() {
            // Every recipient was settled before a crash; only the bookkeeping is left.
            let out = Outcome {
                delivered: vec![],
                failed: vec![],
                deferred: vec![],
                reply: ok::ok(),
                stage: None,
                error: None,
            };
            return self
                .apply(&q, Some(route.as_ref()), attempt_no, out, 0)
                .await;
        }
        let message = to_message(&q, remaining.clone());
        let started = Instant::now();
        let result = route.deliver(&message).await;
        let ms = started.elapsed().as_millis() as u64;
        let out = classify(result, &remaining);
        self.apply(&q, Some(route.as_ref()), attempt_no, out, ms)
            .await
    }

    async fn apply(
        &self,
        q: &Queued,
        route: Option<&dyn Route>,
        attempt_no: u32,
        out: Outcome,
        ms: u64,
    ) -> Next {
        let env = &q.envelope;
        let id = &env.id;
        let route_kind = route.map(|r| r.kind().as_str()).unwrap_or("none");
        let target = route.map(|r| r.target()).unwrap_or_default();
        let waiter = self.queue().take_waiter(id);
        let waiting = waiter.as_ref().is_some_and(|tx| !tx.is_closed());
        let send = |reply: Reply| {
            if let Some(tx) = waiter {
                let _ = tx.send(reply);
            }
        };
        let settled = out.deferred.is_empty();
        let delivered_before = !q.progress.delivered.is_empty();
        let failed_before = !q.progress.failed.is_empty();
        let any_delivered = delivered_before || !out.delivered.is_empty();
        let advice_text = out.error.as_ref().and_then(advice::for_error).unwrap_or("");
        if !out.delivered.is_empty() {
            self.queue().clear_throttle(&env.account);
        }

        // The whole message was refused while its device waited: the device hears the refusal
        // with the upstream's own words, and keeps its copy; we keep nothing.
        if settled && waiting && !any_delivered && !failed_before && !out.failed.is_empty() {
            let reply = out.failed[0].1.clone();
            warn!(queue_id = %id, session = env.session, device = %env.device, account = %env.account, route = route_kind, size = env.size,
                recipients = env.recipients.len(), upstream = %reply, attempt = attempt_no, advice = advice_text, ms,
                "refused by the upstream; the device was told");
            self.count(env, route_kind, Counted::Failed, &out, ms);
            self.remove(id, Area::Queue).await;
            send(reply);
            return Next::Forget;
        }

        // Everything delivered.
        if settled && out.failed.is_empty() && !failed_before {
            info!(queue_id = %id, session = env.session, device = %env.device, account = %env.account, route = route_kind, size = env.size,
                recipients = env.recipients.len(), upstream = %out.reply, attempt = attempt_no, ms, "delivered");
            self.count(env, route_kind, Counted::Delivered, &out, ms);
            // The device hears first: the removal is not flushed before anyone waits for it
            // anyway (a crash can bring a delivered message back either way), so making the
            // device wait for the unlinks would only add latency.
            send(ok::delivered(id.as_str()));
            self.remove(id, Area::Queue).await;
            return Next::Forget;
        }

        let now = now_ms();
        // Settled, with refusals: kept in failed/, reported.
        if settled {
            self.record(
                id,
                Area::Queue,
                attempt_no,
                if any_delivered {
                    AttemptOutcome::Partial
                } else {
                    AttemptOutcome::Failed
                },
                &out,
                None,
            )
            .await;
            for (rcpt, r) in &out.failed {
                warn!(queue_id = %id, session = env.session, device = %env.device, account = %env.account, route = route_kind, recipient = %rcpt,
                    upstream = %r, attempt = attempt_no, advice = advice::for_recipient(r).unwrap_or(advice_text), "recipient refused by the upstream");
            }
            self.count(env, route_kind, Counted::Failed, &out, ms);
            self.to_failed(q, "refused by the upstream").await;
            let mut failed = failed_list(&out.failed);
            failed.extend(
                q.progress
                    .failed
                    .iter()
                    .filter(|f| !q.progress.noticed.contains(&f.rcpt))
                    .map(|f| FailedRecipient {
                        rcpt: f.rcpt.clone(),
                        diagnostic: f.reply.to_string(),
                        status: status_of(&f.reply),
                    }),
            );
            self.notify(
                q,
                Area::Failed,
                &failed,
                Reason::Refused,
                &target,
                Some(advice_text),
            )
            .await;
            send(if any_delivered {
                ok::delivered_partially(
                    id.as_str(),
                    q.progress.delivered.len() + out.delivered.len(),
                    env.recipients.len(),
                )
            } else {
                ok::queued(id.as_str())
            });
            return Next::Forget;
        }

        // Some recipients remain: retry later, unless the message has been queued too long.
        let age = Duration::from_millis(now.saturating_sub(env.received_at_ms));
        if age >= self.cfg.max_queue_lifetime {
            self.record(
                id,
                Area::Queue,
                attempt_no,
                AttemptOutcome::Expired,
                &out,
                None,
            )
            .await;
            error!(queue_id = %id, session = env.session, device = %env.device, account = %env.account, route = route_kind, upstream = %out.reply,
                attempt = attempt_no, age_hours = age.as_secs() / 3600, advice = advice_text, "giving up: undelivered for max_queue_lifetime");
            self.count(env, route_kind, Counted::Failed, &out, ms);
            self.to_failed(q, "max_queue_lifetime exceeded").await;
            let failed: Vec<FailedRecipient> = out
                .deferred
                .iter()
                .map(|r| FailedRecipient {
                    rcpt: r.clone(),
                    diagnostic: out.reply.to_string(),
                    status: "4.4.7".into(),
                })
                .chain(failed_list(&out.failed))
                .collect();
            let hours = self.cfg.max_queue_lifetime.as_secs() / 3600;
            self.notify(
                q,
                Area::Failed,
                &failed,
                Reason::Expired {
                    lifetime_hours: hours,
                },
                &target,
                Some(advice_text),
            )
            .await;
            send(ok::queued(id.as_str()));
            return Next::Forget;
        }

        let mut delay =
            backoff::retry_delay(attempt_no, self.cfg.retry_initial, self.cfg.retry_max);
        if let Some(Cause::Throttled { retry_after }) = out.error.as_ref().map(|e| e.cause()) {
            let level = self.queue().throttle_level(&env.account);
            let pause = backoff::throttle_pause(level, retry_after);
            let level = self.queue().pause(&env.account, Instant::now() + pause);
            warn!(account = %env.account, upstream = %out.reply, pause_secs = pause.as_secs(), level,
                "the upstream is throttling this account; pausing all its deliveries");
            delay = delay.max(pause);
        }
        let next_ms = now + delay.as_millis() as u64;
        self.record(
            id,
            Area::Queue,
            attempt_no,
            if out.delivered.is_empty() {
                AttemptOutcome::Deferred
            } else {
                AttemptOutcome::Partial
            },
            &out,
            Some(next_ms),
        )
        .await;
        if !out.failed.is_empty() {
            self.notify(
                q,
                Area::Queue,
                &failed_list(&out.failed),
                Reason::Refused,
                &target,
                Some(advice_text),
            )
            .await;
        }
        if out.error.as_ref().is_some_and(|e| e.needs_sign_in()) {
            // Nothing will get better until a person signs in: say so loudly, but keep the mail.
            error!(queue_id = %id, session = env.session, device = %env.device, account = %env.account, route = route_kind, size = env.size,
                recipients = out.deferred.len(), upstream = %out.reply, attempt = attempt_no, retry_in_secs = delay.as_secs(),
                "deferred: the account needs a new sign-in; the message stays queued and goes out once someone signs in (accounts page, or `smtp2oauth account login {}`)", env.account);
        } else {
            warn!(queue_id = %id, session = env.session, device = %env.device, account = %env.account, route = route_kind, size = env.size,
                recipients = out.deferred.len(), upstream = %out.reply, stage = out.stage.map(|s| s.as_str()).unwrap_or(""),
                attempt = attempt_no, retry_in_secs = delay.as_secs(), advice = advice_text, ms, "deferred");
        }
        self.count(env, route_kind, Counted::Deferred, &out, ms);
        send(ok::queued(id.as_str()));
        Next::Retry(Instant::now() + delay)
    }

    /// Moves the metrics for one attempt's outcome.
    fn count(&self, env: &Envelope, route: &str, counted: Counted, out: &Outcome, ms: u64) {
        let Some(m) = &self.metrics else { return };
        use smtp2oauth_metrics::{AccountLabels, RouteLabels};
        let labels = RouteLabels {
            account: env.account.clone(),
            route: match route {
                "smtp" => "smtp",
                "capture" => "capture",
                "graph" => "graph",
                "smarthost" => "smarthost",
                _ => "none",
            },
        };
        // Only replies an upstream actually sent are counted as upstream replies.
        if out
            .error
            .as_ref()
            .is_none_or(|e| matches!(e, DeliveryError::Rejected { .. }))
        {
            m.upstream_reply(
                &env.account,
                out.reply.code(),
                out.reply.status().map(|s| s.to_string()),
            );
        }
        m.upstream_duration
            .get_or_create(&labels)
            .observe(ms as f64 / 1000.0);
        match counted {
            Counted::Delivered => {
                m.messages_delivered.get_or_create(&labels).inc();
                m.delivered_bytes.get_or_create(&labels).inc_by(env.size);
                let age = now_ms().saturating_sub(env.received_at_ms) as f64 / 1000.0;
                m.delivery_latency
                    .get_or_create(&AccountLabels {
                        account: env.account.clone(),
                    })
                    .observe(age);
            }
            Counted::Deferred => {
                m.messages_deferred.get_or_create(&labels).inc();
            }
            Counted::Failed => {
                m.messages_failed.get_or_create(&labels).inc();
            }
        }
    }

    /// Appends the attempt's event. A failure to write it (full disk) is logged and the
    /// schedule kept in memory, so deliveries go on.
    async fn record(
        &self,
        id: &MessageId,
        area: Area,
        attempt: u32,
        outcome: AttemptOutcome,
        out: &Outcome,
        next_attempt_ms: Option<u64>,
    ) {
        let ev = Event::Attempt {
            at_ms: now_ms(),
            attempt,
            outcome,
            reply: out.reply.to_string(),
            stage: out.stage.map(|s| s.as_str().to_string()),
            delivered: out.delivered.clone(),
            failed: out
                .failed
                .iter()
                .map(|(r, rep)| RecipientResult {
                    rcpt: r.clone(),
                    reply: rep.clone(),
                })
                .collect(),
            next_attempt_ms,
        };
        if let Err(e) = self.spool.append_event(id, area, &ev).await {
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
        if let Err(e) = self
            .spool
            .append_event(
                id,
                Area::Queue,
                &Event::MovedToFailed {
                    at_ms: now_ms(),
                    reason: reason.into(),
                },
            )
            .await
        {
            error!(queue_id = %id, error = %e, "cannot record the move to failed/");
        }
        if let Err(e) = self.spool.move_to(id, Area::Queue, Area::Failed).await {
            error!(queue_id = %id, error = %e, "cannot move the message to failed/");
        }
    }

    /// Queues a failure notice to the account's `bounce_to`, if there is one.
    async fn notify(
        &self,
        q: &Queued,
        area: Area,
        failed: &[FailedRecipient],
        reason: Reason,
        remote: &str,
        advice: Option<&str>,
    ) {
        if failed.is_empty() {
            return;
        }
        let env = &q.envelope;
        if env.notice {
            error!(queue_id = %env.id, "a failure notice could not be delivered; it is kept in failed/ and not reported again");
            return;
        }
        let Some(settings) = self.cfg.accounts.get(&env.account) else {
            return;
        };
        let Some(to) = settings.bounce_to.clone() else {
            warn!(queue_id = %env.id, account = %env.account, "no bounce_to is set: the failure is kept in failed/ and logged, no notice sent");
            return;
        };
        let headers = match tokio::fs::File::open(&q.data_path).await {
            Ok(f) => {
                use tokio::io::AsyncReadExt;
                let mut buf = Vec::new();
                let _ = f.take(64 * 1024).read_to_end(&mut buf).await;
                notice::header_block(&buf).to_vec()
            }
            Err(_) => Vec::new(),
        };
        let now = now_ms();
        let token = format!("{}-{now:x}", env.id);
        let bytes = notice::compose(&notice::Notice {
            hostname: &self.cfg.hostname,
            mailbox: &settings.mailbox,
            to: &to,
            envelope: env,
            failed,
            reason,
            remote,
            advice: advice.filter(|a| !a.is_empty()),
            original_headers: &headers,
            now_unix: now / 1000,
            notice_id: &token,
        });
        let envelope = Envelope {
            id: MessageId::default(),
            received_at_ms: now,
            account: env.account.clone(),
            device: "smtp2oauth".into(),
            listener: "notice".into(),
            client_ip: "127.0.0.1".into(),
            helo: self.cfg.hostname.clone(),
            sender: settings.mailbox.clone(),
            original_sender: None,
            recipients: vec![to.clone()],
            eight_bit: false,
            smtputf8: false,
            size: 0,
            crc32c: 0,
            notice: true,
            session: 0,
        };
        match self.spool.write_message(envelope, &bytes).await {
            Ok(nq) => {
                let ev = Event::NoticeQueued {
                    at_ms: now,
                    notice_id: nq.id().clone(),
                    to: to.clone(),
                    rcpts: failed.iter().map(|f| f.rcpt.clone()).collect(),
                };
                let _ = self.spool.append_event(&env.id, area, &ev).await;
                info!(queue_id = %env.id, notice_id = %nq.id(), to = %to, "failure notice queued");
                self.queue()
                    .schedule(nq.id(), &env.account, Instant::now(), None);
                self.wake.notify_one();
            }
            Err(e) => {
                error!(queue_id = %env.id, error = %e, "cannot queue the failure notice; the failure is kept in failed/")
            }
        }
    }
}

fn failed_list(failed: &[(String, Reply)]) -> Vec<FailedRecipient> {
    failed
        .iter()
        .map(|(r, reply)| FailedRecipient {
            rcpt: r.clone(),
            diagnostic: reply.to_string(),
            status: status_of(reply),
        })
        .collect()
}

/// The enhanced status a notice gives for a reply: its own, or the class of its code.
fn status_of(reply: &Reply) -> String {
    reply
        .status()
        .map(|s| s.to_string())
        .unwrap_or_else(|| format!("{}.0.0", reply.code() / 100))
}

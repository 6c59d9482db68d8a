//! Synchronous delivery (`[delivery] queue = false`): the device's reply is the upstream's
//! verdict, and nothing is kept or retried: a temporary failure gives the device a 4xx, so the
//! device (which still has its copy) tries again. For sites that prefer a scanner to show an
//! error on its panel over mail waiting in a queue.
//!
//! The verdict is the queue's (`verdict.rs`), for an outcome in which nothing is retried, and
//! the metrics and what the console hears are the queue's too (`attempt::count`,
//! `publish.rs`); only what follows differs: the device always hears the verdict, and the
//! message is always removed. A delivery takes one of the account's connection slots like a
//! queued one, so devices sending at once never open more upstream sessions than
//! `max_upstream_connections` (Exchange refuses a fourth per mailbox with `432 4.3.2`).

use crate::attempt::{Attempt, count, route_label};
use crate::verdict::{MessageState, Outcome, Verdict, verdict};
use crate::{Inner, to_message};
use smtp2oauth_proto::replies::ok;
use smtp2oauth_proto::{Reply, SessionError};
use smtp2oauth_spool::{Area, Envelope, Queued};
use smtp2oauth_upstream::{Route, advice};
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

pub(crate) async fn deliver_now(inner: &Inner, queued: Queued) -> Reply {
    let env = &queued.envelope;
    let reply = match inner.routes.get(&env.account) {
        Some(route) => {
            let slot = Slot::take(inner, &env.account).await;
            let reply = deliver(inner, route.as_ref(), &queued).await;
            drop(slot);
            reply
        }
        None => {
            error!(queue_id = %env.id, account = %env.account, "no route for account; message refused");
            SessionError::LocalError.reply()
        }
    };
    if let Err(e) = inner.spool.remove(queued.id(), Area::Queue).await {
        error!(queue_id = %queued.id(), error = %e, "cannot remove a settled message from the spool");
    }
    reply
}

/// One delivery through `route`, its verdict counted, logged and published; the device's
/// reply.
async fn deliver(inner: &Inner, route: &dyn Route, queued: &Queued) -> Reply {
    let env = &queued.envelope;
    let started = Instant::now();
    let result = route
        .deliver(&to_message(queued, env.recipients.clone()))
        .await;
    let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let out = Outcome::of(result, &env.recipients).without_retries();
    let waiting = MessageState {
        waiting: true,
        ..MessageState::default()
    };
    let verdict = verdict(&out, &waiting, Duration::MAX);
    let label = route_label(Some(route));
    count(inner.metrics.as_deref(), env, label, &verdict, &out, ms);
    log(env, label, &verdict, &out, ms);
    let attempt = Attempt {
        number: 1,
        q: queued,
        route: Some(route),
        out,
        ms,
        waiter: None,
    };
    inner.publish(&attempt, &verdict, None);
    device_reply(env, verdict, attempt.out)
}

/// One of an account's connection slots, held for a synchronous delivery and given back
/// when dropped (also when the device's session goes away mid-delivery).
struct Slot<'a> {
    inner: &'a Inner,
    account: &'a str,
}

impl<'a> Slot<'a> {
    /// Waits for a free slot of `account`.
    async fn take(inner: &'a Inner, account: &'a str) -> Slot<'a> {
        loop {
            let freed = inner.slot_freed.notified();
            tokio::pin!(freed);
            // Registered before looking, so a slot given back in between is not missed.
            freed.as_mut().enable();
            if inner.queue().acquire_slot(account) {
                return Slot { inner, account };
            }
            freed.await;
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.inner.queue().release_slot(self.account);
        self.inner.slot_freed.notify_waiters();
        // A queued message (a notice) may have waited for the slot too.
        self.inner.wake.notify_one();
    }
}

/// What the device hears: the verdict, in the upstream's words when they are the news.
fn device_reply(env: &Envelope, verdict: Verdict, out: Outcome) -> Reply {
    let id = env.id.as_str();
    match verdict {
        Verdict::Delivered => ok::delivered(id),
        Verdict::Failed { partial: true } => {
            ok::delivered_partially(id, out.delivered.len(), env.recipients.len())
        }
        Verdict::Refused(reply) => reply,
        // The whole message failed; the device hears why, always as a 4xx when it is not
        // final (a refusal of our account, not of the message): it will try again.
        Verdict::Failed { partial: false } | Verdict::Expired | Verdict::Deferred { .. } => {
            out.error.as_ref().map_or(out.reply, |e| e.device_reply())
        }
    }
}

fn log(env: &Envelope, route: &str, verdict: &Verdict, out: &Outcome, ms: u64) {
    let Some(e) = &out.error else {
        info!(queue_id = %env.id, device = %env.device, account = %env.account, route, size = env.size,
            recipients = env.recipients.len(), upstream = %out.reply, ms, "delivered");
        for (rcpt, r) in &out.failed {
            warn!(queue_id = %env.id, account = %env.account, recipient = %rcpt, upstream = %r,
                advice = advice::for_recipient(r).unwrap_or(""), "recipient refused by the upstream");
        }
        return;
    };
    let told = if matches!(verdict, Verdict::Deferred { .. }) {
        "delivery failed temporarily; the device was told to retry"
    } else {
        "refused by the upstream; the device was told"
    };
    warn!(queue_id = %env.id, device = %env.device, account = %env.account, route, size = env.size,
        recipients = env.recipients.len(), upstream = %out.reply, stage = %e.stage(), error = %e,
        advice = advice::for_error(e).unwrap_or(""), ms, "{told}");
}

//! Synchronous delivery (`[delivery] queue = false`): the device's reply is the upstream's
//! verdict, and nothing is kept or retried: a temporary failure gives the device a 4xx, so the
//! device (which still has its copy) tries again. For sites that prefer a scanner to show an
//! error on its panel over mail waiting in a queue.
//!
//! The verdict is the queue's (`verdict.rs`), for an outcome in which nothing is retried, and
//! the metrics are the queue's too (`attempt::count`); only what follows differs: the device
//! always hears the verdict, and the message is always removed.

use crate::attempt::{count, route_label};
use crate::verdict::{MessageState, Outcome, Verdict, verdict};
use crate::{Inner, to_message};
use smtp2oauth_proto::replies::ok;
use smtp2oauth_proto::{Reply, SessionError};
use smtp2oauth_spool::{Area, Envelope, Queued};
use smtp2oauth_upstream::advice;
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

pub(crate) async fn deliver_now(inner: &Inner, queued: Queued) -> Reply {
    let env = &queued.envelope;
    let reply = match inner.routes.get(&env.account) {
        Some(route) => {
            let started = Instant::now();
            let result = route
                .deliver(&to_message(&queued, env.recipients.clone()))
                .await;
            let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            let out = Outcome::of(result, &env.recipients).without_retries();
            let waiting = MessageState {
                waiting: true,
                ..MessageState::default()
            };
            let verdict = verdict(&out, &waiting, Duration::MAX);
            let route = route_label(Some(route.as_ref()));
            count(inner.metrics.as_deref(), env, route, &verdict, &out, ms);
            log(env, route, &verdict, &out, ms);
            device_reply(env, verdict, out)
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

/// What the device hears: the verdict, in the upstream's words when they are the news.
fn device_reply(env: &Envelope, verdict: Verdict, out: Outcome) -> Reply {
    let id = env.id.as_str();
    match verdict {
        Verdict::Delivered => ok::delivered(id),
        Verdict::Failed { partial: true } => {
            ok::delivered_partially(id, out.delivered.len(), env.recipients.len())
        }
        Verdict::Refused(reply) => reply,
        // The whole message failed; the device hears why (4xx: it will try again).
        Verdict::Failed { partial: false } | Verdict::Expired | Verdict::Deferred { .. } => {
            out.reply
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

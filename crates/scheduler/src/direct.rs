//! Synchronous delivery (`[delivery] queue = false`): the device's reply is the upstream's
//! verdict, and nothing is kept or retried: a temporary failure gives the device a 4xx, so the
//! device (which still has its copy) tries again. For sites that prefer a scanner to show an
//! error on its panel over mail waiting in a queue.

use crate::{Inner, to_message};
use smtp2oauth_proto::replies::ok;
use smtp2oauth_proto::{Reply, SessionError};
use smtp2oauth_spool::{Area, Queued};
use smtp2oauth_upstream::advice;
use std::time::Instant;
use tracing::{error, info, warn};

pub(crate) async fn deliver_now(inner: &Inner, queued: Queued) -> Reply {
    let env = &queued.envelope;
    let remove = || async {
        if let Err(e) = inner.spool.remove(queued.id(), Area::Queue).await {
            error!(queue_id = %queued.id(), error = %e, "cannot remove a settled message from the spool");
        }
    };
    let Some(route) = inner.routes.get(&env.account).cloned() else {
        error!(queue_id = %env.id, account = %env.account, "no route for account; message refused");
        remove().await;
        return SessionError::LocalError.reply();
    };
    let message = to_message(&queued, env.recipients.clone());
    let started = Instant::now();
    let result = route.deliver(&message).await;
    let ms = started.elapsed().as_millis() as u64;
    if let Some(m) = &inner.metrics {
        use smtp2oauth_metrics::{AccountLabels, RouteLabels};
        let labels = RouteLabels {
            account: env.account.clone(),
            route: route.kind().as_str(),
        };
        m.upstream_duration
            .get_or_create(&labels)
            .observe(ms as f64 / 1000.0);
        match &result {
            Ok(report) => {
                m.upstream_reply(
                    &env.account,
                    report.reply.code(),
                    report.reply.status().map(|s| s.to_string()),
                );
                m.messages_delivered.get_or_create(&labels).inc();
                m.delivered_bytes.get_or_create(&labels).inc_by(env.size);
                let age = crate::now_ms().saturating_sub(env.received_at_ms) as f64 / 1000.0;
                m.delivery_latency
                    .get_or_create(&AccountLabels {
                        account: env.account.clone(),
                    })
                    .observe(age);
            }
            Err(e) => {
                if let smtp2oauth_proto::DeliveryError::Rejected { reply, .. } = e {
                    m.upstream_reply(
                        &env.account,
                        reply.code(),
                        reply.status().map(|s| s.to_string()),
                    );
                }
                if e.is_permanent() {
                    m.messages_failed.get_or_create(&labels).inc();
                } else {
                    m.messages_deferred.get_or_create(&labels).inc();
                }
            }
        }
    }
    let reply = match &result {
        Ok(report) => {
            info!(queue_id = %env.id, device = %env.device, account = %env.account, route = route.kind().as_str(), size = env.size,
                recipients = env.recipients.len(), upstream = %report.reply, ms, "delivered");
            for (rcpt, r) in &report.rejected {
                warn!(queue_id = %env.id, account = %env.account, recipient = %rcpt, upstream = %r,
                    advice = advice::for_recipient(r).unwrap_or(""), "recipient refused by the upstream");
            }
            if report.rejected.is_empty() {
                ok::delivered(env.id.as_str())
            } else {
                ok::delivered_partially(
                    env.id.as_str(),
                    report.accepted.len(),
                    env.recipients.len(),
                )
            }
        }
        Err(e) => {
            let reply = e.reply();
            warn!(queue_id = %env.id, device = %env.device, account = %env.account, route = route.kind().as_str(), size = env.size,
                recipients = env.recipients.len(), upstream = %reply, stage = %e.stage(), error = %e,
                advice = advice::for_error(e).unwrap_or(""), ms,
                "{}", if e.is_permanent() { "refused by the upstream; the device was told" } else { "delivery failed temporarily; the device was told to retry" });
            reply
        }
    };
    remove().await;
    reply
}

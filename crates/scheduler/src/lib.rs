//! Scheduling deliveries: takes messages from the spool and hands them to their account's route.
//!
//! This is the seam between accepting a message and delivering it. The binary connects it to
//! the inbound server (which knows nothing of routes), and routes know nothing of the spool.
//!
//! Today delivery is synchronous: the device's DATA reply waits for the upstream's answer, and
//! the message leaves the spool once that answer is known (the device keeps its copy when it is
//! refused, so nothing is lost). The durable queue with retries builds on this same seam.
//!
//! # Invariants
//! - A message leaves the spool only after its outcome has been decided and logged.
//! - Only an upstream's own 5xx is a permanent failure (see `proto::DeliveryError`).

use smtp2oauth_proto::replies::ok;
use smtp2oauth_proto::{Reply, SessionError};
use smtp2oauth_spool::{Area, Queued, Spool};
use smtp2oauth_upstream::{Message, Route, advice};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tracing::{error, info, warn};

pub struct Scheduler {
    spool: Spool,
    routes: HashMap<String, Arc<dyn Route>>,
}

/// The account → route table.
pub type Routes = HashMap<String, Arc<dyn Route>>;

impl Scheduler {
    pub fn new(spool: Spool, routes: Routes) -> Self {
        Scheduler { spool, routes }
    }

    pub fn route(&self, account: &str) -> Option<&Arc<dyn Route>> {
        self.routes.get(account)
    }

    /// Delivers a just-spooled message while its device waits, and returns the device's reply.
    pub async fn deliver_now(&self, queued: Queued) -> Reply {
        let env = &queued.envelope;
        let message = to_message(&queued);
        let Some(route) = self.routes.get(&env.account).cloned() else {
            error!(queue_id = %env.id, account = %env.account, "no route for account; message refused");
            self.remove(&queued).await;
            return SessionError::LocalError.reply();
        };
        let started = Instant::now();
        let result = route.deliver(&message).await;
        let ms = started.elapsed().as_millis() as u64;
        let reply = match &result {
            Ok(report) => {
                info!(
                    queue_id = %env.id,
                    device = %env.device,
                    account = %env.account,
                    route = route.kind(),
                    size = env.size,
                    recipients = env.recipients.len(),
                    upstream = %report.reply,
                    ms,
                    "delivered"
                );
                for (rcpt, r) in &report.rejected {
                    warn!(queue_id = %env.id, account = %env.account, recipient = %rcpt, upstream = %r,
                        advice = advice::for_reply(r).unwrap_or(""), "recipient refused by the upstream");
                }
                if report.rejected.is_empty() {
                    ok::delivered(&env.id)
                } else {
                    ok::delivered_partially(&env.id, report.accepted.len(), env.recipients.len())
                }
            }
            Err(e) => {
                let advice = advice::for_error(e).unwrap_or("");
                let reply = e.reply();
                if e.is_permanent() {
                    warn!(queue_id = %env.id, device = %env.device, account = %env.account, route = route.kind(),
                        size = env.size, recipients = env.recipients.len(), upstream = %reply, stage = %e.stage(),
                        error = %e, advice, ms, "refused by the upstream; the device was told");
                } else {
                    warn!(queue_id = %env.id, device = %env.device, account = %env.account, route = route.kind(),
                        size = env.size, recipients = env.recipients.len(), reply = %reply, stage = %e.stage(),
                        error = %e, advice, ms, "delivery failed temporarily; the device was told to retry");
                }
                reply
            }
        };
        self.remove(&queued).await;
        reply
    }

    async fn remove(&self, queued: &Queued) {
        if let Err(e) = self.spool.remove(queued.id(), Area::Queue).await {
            error!(queue_id = %queued.id(), error = %e, "cannot remove a settled message from the spool");
        }
    }
}

/// A spooled message as routes see it.
pub fn to_message(q: &Queued) -> Message {
    let e = &q.envelope;
    Message {
        id: e.id.clone(),
        account: e.account.clone(),
        device: e.device.clone(),
        sender: e.sender.clone(),
        recipients: e.recipients.clone(),
        data_path: q.data_path.clone(),
        size: e.size,
        eight_bit: e.eight_bit,
        smtputf8: e.smtputf8,
        received_at_ms: e.received_at_ms,
    }
}

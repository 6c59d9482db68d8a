//! Delivery scheduling: takes messages from the spool and hands them to their account's route,
//! until each is delivered, refused for good, or expired, and never drops one silently.
//!
//! This is the seam between accepting a message and delivering it. The binary connects it to
//! the inbound server (which knows nothing of routes), and routes know nothing of the spool.
//!
//! # How it works
//! - An in-memory index (`queue.rs`) holds, per account, which messages are due when, how many
//!   deliveries run (at most `max_upstream_connections`), and whether the account is paused
//!   because its upstream throttled it. It is rebuilt from the spool at start ([`Scheduler::recover`]).
//! - A dispatcher task starts attempts as they fall due; each attempt reads the message's
//!   progress from its envelope file and delivers the remaining recipients (`attempt.rs`). A
//!   pure function decides what the outcome means (`verdict.rs`), and one place carries that
//!   out (`attempt.rs`): delivered → removed; temporary failure → an event with the next
//!   attempt time (5 s, 15 s, 30 s, then exponential backoff with jitter; a pause of the whole
//!   account when the upstream throttles it or refuses the account itself; a release of the
//!   account's queue as soon as a token can be had again after the token endpoint failed);
//!   permanent failure or expiry → moved to `failed/` and, when `bounce_to` is set, a failure
//!   notice is queued (`notice.rs`), carried by a healthy account (`mail.rs`).
//! - Every attempt is published to the activity store (`publish.rs`): a record for the recent
//!   messages, and what the outcome says about the account (`signal.rs`, a pure function).
//! - [`Scheduler::submit`] is what a device's session calls after spooling: it waits up to
//!   `wait_for_upstream` for the first attempt and turns its outcome into the device's reply.
//! - Admin requests from `smtp2oauth queue` and the admin server arrive as files in the spool's
//!   `control/` directory; a task of their own carries them out and answers each.
//!
//! # Invariants
//! - A message leaves `queue/` only after its outcome is recorded: removed once delivered,
//!   moved to `failed/` (kept) when refused, or removed when refused while its device waited
//!   for and received that refusal.
//! - Only an upstream's own 5xx about the message (or a recipient) is a permanent failure;
//!   everything else, a 5xx about our account included, is retried until `max_queue_lifetime`.
//! - No failure notice is ever sent about a failure notice.

#![warn(missing_docs)]

mod attempt;
pub mod backoff;
mod direct;
mod mail;
pub mod notice;
mod publish;
mod queue;
mod signal;
mod verdict;

use queue::Queue;
use smtp2oauth_activity::Activity;
use smtp2oauth_proto::Reply;
use smtp2oauth_proto::replies::ok;
use smtp2oauth_spool::{
    Area, ControlAction, ControlAnswer, ControlOutcome, ControlTarget, Event, MessageId,
    OutcomeKind, Queued, Spool, SpoolError,
};
use smtp2oauth_upstream::{Message, Route};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

/// The account → route table.
pub type Routes = HashMap<String, Arc<dyn Route>>;

/// What the scheduler needs to know about each account.
#[derive(Clone, Debug)]
pub struct AccountSettings {
    /// The account's mailbox (the sender of its failure notices).
    pub mailbox: String,
    /// Where failure notices go; none: failures are only logged and kept.
    pub bounce_to: Option<String>,
    /// Deliveries of the account running at once.
    pub max_connections: usize,
    /// Attempts started per minute (pacing); 0: unlimited.
    pub max_per_minute: u32,
}

/// How the scheduler runs.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// false: synchronous delivery, nothing is retried (the device's reply is the verdict).
    pub queue: bool,
    /// How long a device waits for its message's first attempt.
    pub wait_for_upstream: Duration,
    /// The delay before the second attempt (it doubles from there).
    pub retry_initial: Duration,
    /// The longest delay between attempts.
    pub retry_max: Duration,
    /// How long a message is tried before it fails for good.
    pub max_queue_lifetime: Duration,
    /// How long running deliveries get to finish at shutdown.
    pub shutdown_timeout: Duration,
    /// This relay's name (in failure notices).
    pub hostname: String,
    /// Every account's settings, by name.
    pub accounts: HashMap<String, AccountSettings>,
    /// How often `control/` is checked for requests from other processes (those filed in this
    /// process wake the control task at once).
    pub control_poll: Duration,
    /// `[notify] notify_account`: the account that carries failure notices and alerts; None:
    /// a healthy account is chosen for each (never the one that is failing).
    pub notify_account: Option<String>,
}

/// The queue: takes committed messages and delivers them through their account's route.
pub struct Scheduler {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) spool: Spool,
    pub(crate) routes: Routes,
    pub(crate) cfg: SchedulerConfig,
    pub(crate) queue: Mutex<Queue>,
    pub(crate) wake: Notify,
    pub(crate) attempts: TaskTracker,
    pub(crate) stop: CancellationToken,
    pub(crate) metrics: Option<Arc<smtp2oauth_metrics::Metrics>>,
    /// Where every attempt's outcome and its account signal are published (the console).
    pub(crate) activity: Option<Activity>,
    /// This very `Inner`, for tasks an attempt starts that outlive it (a wait for a token).
    pub(crate) me: Weak<Inner>,
    /// Accounts whose queue waits for the token endpoint to answer again.
    pub(crate) token_waits: Mutex<HashSet<String>>,
    /// Notified whenever an account's connection slot is given back.
    pub(crate) slot_freed: Notify,
    /// Notices queued although no healthy account could carry them: notice id → what it is
    /// about, so its delivery clears the problem it raised on the overview.
    pub(crate) stranded_notices: Mutex<HashMap<MessageId, String>>,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Converts a wall-clock time (ms since epoch) to a monotonic deadline.
pub(crate) fn instant_at(ms: u64) -> Instant {
    let now = now_ms();
    if ms <= now {
        Instant::now()
    } else {
        Instant::now() + Duration::from_millis(ms - now)
    }
}

impl Scheduler {
    /// A scheduler over `spool`, publishing to `activity` when given; nothing runs before
    /// [`Scheduler::start`].
    pub fn new(
        spool: Spool,
        routes: Routes,
        cfg: SchedulerConfig,
        metrics: Option<Arc<smtp2oauth_metrics::Metrics>>,
        activity: Option<Activity>,
    ) -> Scheduler {
        let queue = Queue::new(
            cfg.accounts
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        queue::Limits {
                            max_connections: v.max_connections,
                            per_minute: v.max_per_minute,
                        },
                    )
                })
                .collect(),
        );
        Scheduler {
            inner: Arc::new_cyclic(|me| Inner {
                spool,
                routes,
                cfg,
                queue: Mutex::new(queue),
                wake: Notify::new(),
                attempts: TaskTracker::new(),
                stop: CancellationToken::new(),
                metrics,
                activity,
                me: me.clone(),
                token_waits: Mutex::new(HashSet::new()),
                slot_freed: Notify::new(),
                stranded_notices: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Queues a plain-text e-mail (an alert) to `to`, carried by `[notify] notify_account`
    /// or else by a healthy account. Err with the reason when no account can carry it or it
    /// cannot be spooled; the message is then not queued.
    pub async fn send_alert(&self, to: &str, subject: &str, text: &str) -> Result<(), String> {
        self.inner.send_alert(to, subject, text).await
    }

    /// The route of `account`, if it has one.
    pub fn route(&self, account: &str) -> Option<&Arc<dyn Route>> {
        self.inner.routes.get(account)
    }

    /// Schedules every message found in `queue/` (after a restart or a crash). Returns how many.
    pub async fn recover(&self) -> Result<usize, SpoolError> {
        let ids = self.inner.spool.list(Area::Queue).await?;
        let mut n = 0;
        for id in ids {
            match self.inner.spool.read(&id, Area::Queue).await {
                Ok(q) => {
                    let due = q
                        .progress
                        .next_attempt_ms
                        .map(instant_at)
                        .unwrap_or_else(Instant::now);
                    self.inner
                        .queue()
                        .schedule(&id, &q.envelope.account, due, None);
                    n += 1;
                }
                Err(e) => {
                    error!(queue_id = %id, error = %e, "cannot read a queued message; left in place")
                }
            }
        }
        self.inner.wake.notify_one();
        Ok(n)
    }

    /// Starts the dispatcher. It runs until [`Scheduler::shutdown`].
    pub fn start(&self) -> tokio::task::JoinHandle<()> {
        let dispatch = self.inner.clone().dispatch();
        let control = self.inner.clone().control();
        tokio::spawn(async move {
            tokio::join!(dispatch, control);
        })
    }

    /// The spool this scheduler delivers from.
    pub fn spool(&self) -> &Spool {
        &self.inner.spool
    }

    /// Messages currently known to the queue (for status and tests).
    pub fn queued(&self) -> usize {
        self.inner.queue().len()
    }

    /// Makes every queued message of `account` due now (its cause of failure was fixed, e.g.
    /// someone signed in again) and lifts any pause. Returns how many were moved.
    pub fn retry_account(&self, account: &str) -> usize {
        let n = self.inner.release(account);
        if n > 0 {
            info!(
                account,
                messages = n,
                "retrying the account's queued messages now"
            );
        }
        n
    }

    /// Stops starting attempts and waits (up to `shutdown_timeout`) for running ones. An attempt
    /// cut off here stays queued and is retried at the next start.
    pub async fn shutdown(&self) {
        self.inner.stop.cancel();
        self.inner.attempts.close();
        if tokio::time::timeout(self.inner.cfg.shutdown_timeout, self.inner.attempts.wait())
            .await
            .is_err()
        {
            warn!(
                attempts = self.inner.attempts.len(),
                "deliveries still running at shutdown; they stay queued and are retried at the next start"
            );
        }
    }

    /// Called by a device's session once its message is durable. Returns the device's reply.
    pub async fn submit(&self, queued: Queued) -> Reply {
        if !self.inner.cfg.queue {
            return direct::deliver_now(&self.inner, queued).await;
        }
        let id = queued.id().clone();
        let account = queued.envelope.account.clone();
        let wait = self.inner.cfg.wait_for_upstream;
        if wait.is_zero() || self.inner.stop.is_cancelled() {
            let mut queue = self.inner.queue();
            queue.schedule(&id, &account, Instant::now(), None);
            queue.set_fresh(&id, queued);
            drop(queue);
            self.inner.wake.notify_one();
            return ok::queued(id.as_str());
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut queue = self.inner.queue();
            queue.schedule(&id, &account, Instant::now(), Some(tx));
            queue.set_fresh(&id, queued);
        }
        self.inner.wake.notify_one();
        tokio::pin!(rx);
        tokio::select! {
            r = &mut rx => r.unwrap_or_else(|_| ok::queued(id.as_str())),
            _ = tokio::time::sleep(wait) => {
                // Take the waiter back. If it is gone, the attempt already decided and its reply
                // is on the way: wait for it, so a decision is never lost between the two sides.
                if self.inner.queue().take_waiter(&id).is_some() {
                    ok::queued(id.as_str())
                } else {
                    rx.await.unwrap_or_else(|_| ok::queued(id.as_str()))
                }
            }
        }
    }
}

impl Inner {
    pub(crate) fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes every queued message of `account` due now and lifts its pause.
    pub(crate) fn release(&self, account: &str) -> usize {
        let n = self.queue().account_due_now(account, Instant::now());
        self.wake.notify_one();
        n
    }

    async fn dispatch(self: Arc<Self>) {
        loop {
            if self.stop.is_cancelled() {
                break;
            }
            let now = Instant::now();
            let (due, next_wake) = self.queue().take_due(now);
            for id in due {
                let me = self.clone();
                self.attempts.spawn(async move { me.run_attempt(id).await });
            }
            let wake_at = next_wake.unwrap_or(now + Duration::from_secs(3600));
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep_until(wake_at) => {}
            }
        }
    }

    /// Carries out admin requests until stopped: at once when one is filed in this process
    /// (the admin server), and every `control_poll` for those of `smtp2oauth queue`.
    async fn control(self: Arc<Self>) {
        let control = self.spool.control();
        loop {
            self.handle_control().await;
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = control.filed() => {}
                _ = tokio::time::sleep(self.cfg.control_poll) => {}
            }
        }
    }

    /// Carries out requests from `smtp2oauth queue` and the admin server (files in `control/`)
    /// and answers each with what became of every message it named.
    async fn handle_control(&self) {
        let control = self.spool.control();
        let requests = match control.pending().await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "cannot read control requests");
                return;
            }
        };
        for req in requests {
            let ids = match &req.target {
                ControlTarget::All => {
                    let area = match req.action {
                        ControlAction::Requeue => Area::Failed,
                        _ => Area::Queue,
                    };
                    self.spool.list(area).await.unwrap_or_default()
                }
                ControlTarget::One(id) => vec![id.clone()],
            };
            let all = matches!(req.target, ControlTarget::All);
            let mut answer = ControlAnswer::default();
            for id in ids {
                let outcome = self.carry_out_request(req.action, id).await;
                if all && outcome.kind == OutcomeKind::UnknownId {
                    // Delivered (or deleted) between the listing and now: "all" never meant it.
                    continue;
                }
                if outcome.kind.is_success() {
                    info!(queue_id = %outcome.id, action = req.action.as_str(), outcome = outcome.kind.as_str(), "queue request carried out");
                } else {
                    warn!(queue_id = %outcome.id, action = req.action.as_str(), outcome = outcome.kind.as_str(), reason = %outcome.detail, "queue request not carried out");
                }
                answer.outcomes.push(outcome);
            }
            control.answer(&req, &answer).await;
        }
        self.wake.notify_one();
    }

    /// One message of a request: what became of it, in the relay's words.
    async fn carry_out_request(&self, action: ControlAction, id: MessageId) -> ControlOutcome {
        let result = match action {
            ControlAction::Retry => self.admin_retry(&id).await,
            ControlAction::Delete => self.admin_delete(&id).await,
            ControlAction::Requeue => self.admin_requeue(&id).await,
        };
        let (kind, detail) = match result {
            Ok(kind) => (kind, String::new()),
            Err(SpoolError::NotFound(_)) => (OutcomeKind::UnknownId, String::new()),
            Err(e) => (OutcomeKind::Error, e.to_string()),
        };
        let detail = if detail.is_empty() {
            outcome_words(action, &id, kind)
        } else {
            detail
        };
        ControlOutcome { id, kind, detail }
    }

    async fn admin_retry(&self, id: &MessageId) -> Result<OutcomeKind, SpoolError> {
        let q = match self.spool.read(id, Area::Queue).await {
            Err(SpoolError::NotFound(_)) if self.spool.read(id, Area::Failed).await.is_ok() => {
                return Ok(OutcomeKind::AlreadyFailed);
            }
            r => r?,
        };
        self.spool
            .append_event(id, Area::Queue, &Event::RetryRequested { at_ms: now_ms() })
            .await?;
        self.queue().retry_now(id, &q.envelope.account);
        Ok(OutcomeKind::Done)
    }

    async fn admin_delete(&self, id: &MessageId) -> Result<OutcomeKind, SpoolError> {
        if self.queue().request_delete(id) {
            // A delivery is running: it removes the message when it ends.
            return Ok(OutcomeKind::AfterAttempt);
        }
        match self.spool.remove(id, Area::Queue).await {
            Err(SpoolError::NotFound(_)) => self.spool.remove(id, Area::Failed).await,
            r => r,
        }?;
        Ok(OutcomeKind::Done)
    }

    async fn admin_requeue(&self, id: &MessageId) -> Result<OutcomeKind, SpoolError> {
        let q = match self.spool.read(id, Area::Failed).await {
            Err(SpoolError::NotFound(_)) if self.spool.read(id, Area::Queue).await.is_ok() => {
                return Ok(OutcomeKind::StillQueued);
            }
            r => r?,
        };
        self.spool
            .append_event(id, Area::Failed, &Event::Requeued { at_ms: now_ms() })
            .await?;
        self.spool.move_to(id, Area::Failed, Area::Queue).await?;
        self.queue()
            .schedule(id, &q.envelope.account, Instant::now(), None);
        Ok(OutcomeKind::Done)
    }
}

/// What the relay says about one message of an admin request.
fn outcome_words(action: ControlAction, id: &MessageId, kind: OutcomeKind) -> String {
    match (kind, action) {
        (OutcomeKind::Done, ControlAction::Retry) => format!("{id} is being attempted now"),
        (OutcomeKind::Done, ControlAction::Delete) => format!("{id} is deleted"),
        (OutcomeKind::Done, ControlAction::Requeue) => {
            format!("{id} is back in the queue and is being attempted now")
        }
        (OutcomeKind::AfterAttempt, _) => format!(
            "{id} is being delivered right now: it is deleted when this attempt ends, unless the attempt delivers it"
        ),
        (OutcomeKind::UnknownId, _) => format!(
            "no message {id} in the queue or in failed/ (already delivered, deleted, or never there)"
        ),
        (OutcomeKind::AlreadyFailed, _) => {
            format!("{id} failed for good and is in failed/: requeue it to try again")
        }
        (OutcomeKind::StillQueued, _) => {
            format!("{id} is still in the queue, not in failed/: retry it instead")
        }
        (OutcomeKind::Error, _) => format!("{id}: the spool refused"),
    }
}

/// A spooled message as routes see it: only the recipients still to deliver.
pub fn to_message(q: &Queued, recipients: Vec<String>) -> Message {
    let e = &q.envelope;
    Message {
        id: e.id.to_string(),
        account: e.account.clone(),
        device: e.device.clone(),
        sender: e.sender.clone(),
        recipients,
        data_path: q.data_path.clone(),
        size: e.size,
        eight_bit: e.eight_bit,
        smtputf8: e.smtputf8,
        received_at_ms: e.received_at_ms,
    }
}

//! Mail the relay writes itself: failure notices to `bounce_to` and alert e-mails, and which
//! account carries them.
//!
//! A notice about a broken account must not wait in that account's queue, where nobody would
//! hear of it. So each is carried by `[notify] notify_account` when set, else by the account
//! it is about while that one is healthy, else by another healthy account
//! (`activity::notice_carrier`). When no account is healthy, a notice still goes into the
//! queue of the account it is about (it goes out once that account works again), and the
//! relay says at error level that it could not be sent, on the console too.

use crate::notice::{self, FailedRecipient, Reason};
use crate::{Inner, now_ms};
use smtp2oauth_activity::{NoticeFailure, notice_carrier};
use smtp2oauth_spool::{Area, Event, Queued};
use smtp2oauth_upstream::RouteKind;
use tokio::time::Instant;
use tracing::{error, info, warn};

/// Why a notice could not be sent when no account can carry it.
const NO_CARRIER: &str = "no account is working to carry it (every account is refused, throttled, unreachable or needs a sign-in)";

impl Inner {
    /// The account that carries a notice about `about`'s mail, or an alert (`about` None);
    /// None when none is healthy.
    fn carrier(&self, about: Option<&str>) -> Option<String> {
        let notify = self.cfg.notify_account.as_deref();
        let Some(activity) = &self.activity else {
            // Nothing is known of the accounts' health: the configured one, or the mail's own.
            return notify.or(about).map(str::to_string).or_else(|| {
                let mut names: Vec<&String> = self.routes.keys().collect();
                names.sort();
                names.first().map(|n| n.to_string())
            });
        };
        let now = now_ms();
        // A capture account only writes files: it carries nothing but its own notices.
        let can_carry = |name: &str| {
            Some(name) == about
                || self
                    .routes
                    .get(name)
                    .is_some_and(|r| r.kind() != RouteKind::Capture)
        };
        notice_carrier(
            notify,
            about.unwrap_or(""),
            &activity.accounts(now),
            now,
            can_carry,
        )
    }

    /// Queues a failure notice about `q` to its account's `bounce_to`, if there is one.
    pub(crate) async fn notify(
        &self,
        q: &Queued,
        area: Area,
        failed: &[FailedRecipient],
        reason: Reason,
        remote: &str,
        advice: &str,
    ) {
        if failed.is_empty() {
            return;
        }
        let env = &q.envelope;
        if env.notice {
            error!(queue_id = %env.id, "a failure notice could not be delivered; it is kept in failed/ and not reported again");
            return;
        }
        let Some(to) = self
            .cfg
            .accounts
            .get(&env.account)
            .and_then(|s| s.bounce_to.clone())
        else {
            warn!(queue_id = %env.id, account = %env.account, "no bounce_to is set: the failure is kept in failed/ and logged, no notice sent");
            return;
        };
        let carrier = self.carrier(Some(&env.account));
        let account = carrier.clone().unwrap_or_else(|| env.account.clone());
        let Some(mailbox) = self.cfg.accounts.get(&account).map(|s| s.mailbox.clone()) else {
            error!(queue_id = %env.id, account = %account, "the account chosen to carry the failure notice is not configured; no notice sent");
            return;
        };
        let now = now_ms();
        let headers = notice::original_headers(&q.data_path).await;
        let notice_id = format!("{}-{now:x}", env.id);
        let bytes = notice::compose(&notice::Notice {
            hostname: &self.cfg.hostname,
            mailbox: &mailbox,
            to: &to,
            envelope: env,
            failed,
            reason,
            remote,
            advice: Some(advice).filter(|a| !a.is_empty()),
            original_headers: &headers,
            now_unix: now / 1000,
            notice_id: &notice_id,
        });
        let envelope = notice::envelope(&account, &mailbox, &to, &self.cfg.hostname, now);
        match self.spool.write_message(envelope, &bytes).await {
            Ok(nq) => {
                self.notice_queued(q, area, &nq, &to, failed, now).await;
                if carrier.is_none() {
                    self.notice_stranded(q, &nq);
                }
            }
            Err(e) => {
                error!(queue_id = %env.id, error = %e, "cannot queue the failure notice; the failure is kept in failed/");
                self.notice_failed(q, &format!("it could not be queued: {e}"));
            }
        }
    }

    /// Records that a notice about `q` was queued, and schedules the notice.
    async fn notice_queued(
        &self,
        q: &Queued,
        area: Area,
        notice: &Queued,
        to: &str,
        failed: &[FailedRecipient],
        now: u64,
    ) {
        let env = &q.envelope;
        let ev = Event::NoticeQueued {
            at_ms: now,
            notice_id: notice.id().clone(),
            to: to.to_string(),
            rcpts: failed.iter().map(|f| f.rcpt.clone()).collect(),
        };
        let _ = self.spool.append_event(&env.id, area, &ev).await;
        let carrier = &notice.envelope.account;
        info!(queue_id = %env.id, notice_id = %notice.id(), to = %to, account = %carrier, "failure notice queued");
        self.queue()
            .schedule(notice.id(), carrier, Instant::now(), None);
        self.wake.notify_one();
    }

    /// A notice went into the queue of the failing account itself, for want of a healthy
    /// one: it goes out once that account works again, but nobody hears of the failure
    /// before, so say so loudly.
    fn notice_stranded(&self, q: &Queued, notice: &Queued) {
        let env = &q.envelope;
        error!(queue_id = %env.id, notice_id = %notice.id(), account = %env.account,
            "the failure notice waits in the failing account's queue: {NO_CARRIER}; set [notify] notify_account or a webhook to hear of failures");
        let about = about(q);
        self.stranded_notices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(notice.id().clone(), about);
        self.notice_failed(q, NO_CARRIER);
    }

    fn notice_failed(&self, q: &Queued, reason: &str) {
        if let Some(activity) = &self.activity {
            activity.notice_failed(NoticeFailure {
                about: about(q),
                reason: reason.to_string(),
                at_ms: now_ms(),
            });
        }
    }

    /// A notice was delivered: if it had been stranded, its problem is over.
    pub(crate) fn notice_delivered(&self, notice: &Queued) {
        let about = self
            .stranded_notices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(notice.id());
        if let (Some(about), Some(activity)) = (about, &self.activity) {
            activity.notice_sent(&about);
        }
    }

    /// Queues a plain-text alert e-mail; Err (nothing queued) when no account can carry it.
    pub(crate) async fn send_alert(
        &self,
        to: &str,
        subject: &str,
        text: &str,
    ) -> Result<(), String> {
        let account = self.carrier(None).ok_or_else(|| NO_CARRIER.to_string())?;
        let mailbox = self
            .cfg
            .accounts
            .get(&account)
            .map(|s| s.mailbox.clone())
            .ok_or_else(|| format!("the account {account} is not configured"))?;
        let now = now_ms();
        let bytes = notice::compose_alert(&notice::Alert {
            hostname: &self.cfg.hostname,
            mailbox: &mailbox,
            to,
            subject,
            text,
            now_unix: now / 1000,
            alert_id: &format!("{now:x}"),
        });
        let envelope = notice::envelope(&account, &mailbox, to, &self.cfg.hostname, now);
        let q = self
            .spool
            .write_message(envelope, &bytes)
            .await
            .map_err(|e| format!("it could not be queued: {e}"))?;
        info!(queue_id = %q.id(), to = %to, account = %account, subject = %subject, "alert e-mail queued");
        self.queue()
            .schedule(q.id(), &account, Instant::now(), None);
        self.wake.notify_one();
        Ok(())
    }
}

/// What a notice about `q` is, on the console's list of notices that could not be sent.
fn about(q: &Queued) -> String {
    format!("the failure of message {}", q.envelope.id)
}

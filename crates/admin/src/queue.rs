//! The queue as the console reads it, and its actions.
//!
//! Reading is safe at any time (envelopes only grow by whole lines and change directory by
//! rename). Actions are never carried out here: they are filed in the spool's `control/`
//! directory, exactly as `smtp2oauth queue` files them, and the relay's control task (woken at
//! once, since it runs in this process) carries them out between deliveries and answers. So a
//! button on the page can never race a delivery in progress, and the page reports what the
//! relay actually did.

use crate::model::Stamp;
use serde::Serialize;
use smtp2oauth_activity::{Activity, MessageFilter, MessageResult};
use smtp2oauth_spool::{
    Area, ControlAction, ControlTarget, MessageId, OutcomeKind, Queued, Spool, SpoolError,
};
use std::time::Duration;

/// How long an action waits for the relay's answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages a listing shows at most (the oldest first).
pub const MAX_LISTED: usize = 1000;

/// Every message of `area` (at most [`MAX_LISTED`]), oldest first.
pub async fn list(spool: &Spool, area: Area) -> Result<Vec<Queued>, SpoolError> {
    let mut out = Vec::new();
    for id in spool.list(area).await?.into_iter().take(MAX_LISTED) {
        match spool.read(&id, area).await {
            Ok(q) => out.push(q),
            // Delivered or moved between listing and reading.
            Err(SpoolError::NotFound(_)) => {}
            Err(e) => {
                tracing::warn!(queue_id = %id, error = %e, "console: cannot read a queued message")
            }
        }
    }
    Ok(out)
}

/// The message `id` from the queue, else from `failed/`.
pub async fn find(spool: &Spool, id: &MessageId) -> Result<Option<Queued>, SpoolError> {
    for area in [Area::Queue, Area::Failed] {
        match spool.read(id, area).await {
            Ok(q) => return Ok(Some(q)),
            Err(SpoolError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// What became of one message of an action.
#[derive(Clone, Debug, Serialize)]
pub struct ActionOutcome {
    pub id: String,
    /// `done`, `after_attempt`, `unknown_id`, `already_delivered`, `already_failed`,
    /// `still_queued`, `error`.
    pub outcome: &'static str,
    /// The relay's words.
    pub detail: String,
}

/// The relay's answer to an action.
#[derive(Clone, Debug, Serialize)]
pub struct ActionReport {
    /// `retry`, `delete`, `requeue`.
    pub action: &'static str,
    /// A queue id or `all`.
    pub target: String,
    /// True when every message got what was asked (an empty `all` included).
    pub ok: bool,
    /// False when the relay did not answer within 10 s (the request stays filed).
    pub answered: bool,
    pub outcomes: Vec<ActionOutcome>,
}

impl ActionReport {
    /// One line for the page's notice.
    pub fn words(&self) -> String {
        if !self.answered {
            return format!(
                "{} {}: the relay has not answered within {} s; the request stays filed and is carried out when the relay gets to it.",
                self.action,
                self.target,
                ANSWER_TIMEOUT.as_secs()
            );
        }
        if self.outcomes.is_empty() {
            return format!(
                "{} {}: nothing to do (no message).",
                self.action, self.target
            );
        }
        self.outcomes
            .iter()
            .map(|o| o.detail.clone())
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Files `action` for `target` and waits for the relay's answer.
pub async fn act(
    spool: &Spool,
    activity: &Activity,
    action: ControlAction,
    target: ControlTarget,
) -> Result<ActionReport, SpoolError> {
    let control = spool.control();
    let ticket = control.submit(action, &target).await?;
    let answer = control.wait(&ticket, ANSWER_TIMEOUT).await?;
    let mut report = ActionReport {
        action: action.as_str(),
        target: target.to_string(),
        ok: false,
        answered: answer.is_some(),
        outcomes: Vec::new(),
    };
    if let Some(answer) = answer {
        report.ok = answer.is_success();
        report.outcomes = answer
            .outcomes
            .into_iter()
            .map(|o| outcome(activity, o))
            .collect();
    }
    Ok(report)
}

/// The relay's outcome, told more precisely when the console knows the message was delivered.
fn outcome(activity: &Activity, o: smtp2oauth_spool::ControlOutcome) -> ActionOutcome {
    if o.kind == OutcomeKind::UnknownId
        && let Some(at) = delivered_at(activity, &o.id)
    {
        return ActionOutcome {
            detail: format!("{} was already delivered ({})", o.id, at.at),
            id: o.id.to_string(),
            outcome: "already_delivered",
        };
    }
    ActionOutcome {
        id: o.id.to_string(),
        outcome: o.kind.as_str(),
        detail: o.detail,
    }
}

fn delivered_at(activity: &Activity, id: &MessageId) -> Option<Stamp> {
    activity
        .messages(&MessageFilter {
            queue_id: Some(id.to_string()),
            result: Some(MessageResult::Delivered),
            limit: Some(1),
            ..MessageFilter::default()
        })
        .first()
        .map(|r| Stamp::new(r.at_ms))
}

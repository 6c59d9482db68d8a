//! What an attempt's outcome means for its message, decided by a pure function.
//!
//! The decision (delivered, refused while the device waits, kept as failed, expired, or tried
//! again, and how) depends only on what the upstream said, what happened to the message before
//! and how long it has been queued. Keeping it apart from carrying it out (`attempt.rs`: spool,
//! metrics, log line, notice, the device's reply) lets every case be read in one table and
//! tested without a spool or a route.

use smtp2oauth_proto::{AccountIssue, Cause, DeliveryError, Reply, Stage};
use smtp2oauth_upstream::{DeliveryReport, cause};
use std::time::Duration;

/// What one attempt found, recipient by recipient.
#[derive(Clone, Debug)]
pub(crate) struct Outcome {
    /// Accepted by the upstream in this attempt.
    pub(crate) delivered: Vec<String>,
    /// Refused for good, each with its reply.
    pub(crate) failed: Vec<(String, Reply)>,
    /// Refused for now, each with its reply: they may pass later.
    pub(crate) deferred: Vec<(String, Reply)>,
    /// The upstream's final reply, or the failure's reply.
    pub(crate) reply: Reply,
    /// The failure, when the attempt did not go through for anyone.
    pub(crate) error: Option<DeliveryError>,
}

impl Outcome {
    /// Sorts a route's result for the recipients it was given.
    pub(crate) fn of(result: Result<DeliveryReport, DeliveryError>, remaining: &[String]) -> Self {
        match result {
            Ok(report) => {
                let (failed, deferred) = report
                    .rejected
                    .into_iter()
                    .partition(|(_, reply)| refuses_recipient(reply));
                Outcome {
                    delivered: report.accepted,
                    failed,
                    deferred,
                    reply: report.reply,
                    error: None,
                }
            }
            Err(e) => {
                let reply = e.reply();
                let each = remaining
                    .iter()
                    .map(|r| (r.clone(), reply.clone()))
                    .collect();
                let (failed, deferred) = if e.is_final() {
                    (each, Vec::new())
                } else {
                    (Vec::new(), each)
                };
                Outcome {
                    delivered: Vec::new(),
                    failed,
                    deferred,
                    reply,
                    error: Some(e),
                }
            }
        }
    }

    /// Nothing to deliver: every recipient was settled before (a crash came between the last
    /// attempt and its bookkeeping).
    pub(crate) fn nothing_left() -> Self {
        Outcome {
            delivered: Vec::new(),
            failed: Vec::new(),
            deferred: Vec::new(),
            reply: smtp2oauth_proto::replies::ok::ok(),
            error: None,
        }
    }

    /// For synchronous delivery, which keeps and retries nothing: once the message went
    /// through for some recipients, the device hears 250 and will not send it again, so a
    /// recipient refused for now is as good as refused. (A temporary failure of the whole
    /// message stays temporary: the device hears 4xx and retries it.)
    pub(crate) fn without_retries(mut self) -> Self {
        if self.error.is_none() {
            self.failed.append(&mut self.deferred);
        }
        self
    }

    /// Where the attempt failed, when it failed.
    pub(crate) fn stage(&self) -> Option<Stage> {
        self.error.as_ref().map(DeliveryError::stage)
    }

    /// The upstream's own reply, when it gave one (not our description of a failure).
    pub(crate) fn upstream_reply(&self) -> Option<&Reply> {
        match &self.error {
            None => Some(&self.reply),
            Some(e) => e.upstream_reply(),
        }
    }
}

/// A refusal of one recipient that settles it for good: a 5xx about the recipient or the
/// message, by the one table. A 5xx about our account (`550 5.7.64` from a connector that
/// does not know us, `5.7.708` for our address) waits for an admin like any other.
fn refuses_recipient(reply: &Reply) -> bool {
    reply.is_permanent() && cause::of_reply(Stage::Rcpt, reply).fails_message()
}

/// What happened to the message before this attempt, and whether its device still waits.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct MessageState {
    /// Some recipients were delivered by earlier attempts.
    pub(crate) delivered_before: bool,
    /// Some recipients were refused for good by earlier attempts.
    pub(crate) failed_before: bool,
    /// Time since the message was accepted.
    pub(crate) age: Duration,
    /// Its device is still waiting for the first attempt's verdict.
    pub(crate) waiting: bool,
}

/// What becomes of the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Every recipient accepted: the message is removed.
    Delivered,
    /// The whole message was refused for good while its device waited: the device hears this
    /// refusal in the upstream's own words and keeps its copy; nothing is kept.
    Refused(Reply),
    /// Every recipient is settled and some were refused for good: the message is kept in
    /// `failed/` and reported; `partial` when some recipients got it.
    Failed { partial: bool },
    /// Still undelivered after `max_queue_lifetime`: kept in `failed/` and reported.
    Expired,
    /// Some recipients may pass later: the message is tried again; `partial` when this attempt
    /// delivered to some.
    Deferred { partial: bool, retry: Retry },
}

/// How a deferred message is tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Retry {
    /// After the message's own backoff.
    Backoff,
    /// The upstream is throttling the account: the whole account pauses, for `retry_after`
    /// when the upstream said how long.
    PauseAccount { retry_after: Option<Duration> },
    /// The upstream refuses the account itself (credentials, permissions, connector): the
    /// whole account holds its mail for a growing while, until an admin fixes the cause.
    HoldAccount,
    /// A person must sign in again; the mail waits for it (and is retried meanwhile).
    AwaitSignIn,
    /// No token: the token endpoint failed. The message's own backoff, and the account's mail
    /// is released as soon as a token request succeeds again.
    AwaitToken,
}

/// Decides what becomes of a message after an attempt.
pub(crate) fn verdict(out: &Outcome, msg: &MessageState, max_queue_lifetime: Duration) -> Verdict {
    let any_delivered = msg.delivered_before || !out.delivered.is_empty();
    if out.deferred.is_empty() {
        if out.failed.is_empty() && !msg.failed_before {
            return Verdict::Delivered;
        }
        if let Some((_, reply)) = out.failed.first()
            && msg.waiting
            && !any_delivered
            && !msg.failed_before
        {
            return Verdict::Refused(reply.clone());
        }
        return Verdict::Failed {
            partial: any_delivered,
        };
    }
    if msg.age >= max_queue_lifetime {
        return Verdict::Expired;
    }
    Verdict::Deferred {
        partial: !out.delivered.is_empty(),
        retry: out.error.as_ref().map_or(Retry::Backoff, retry_for),
    }
}

/// How a message that failed as a whole is tried again, by what the failure is about.
fn retry_for(e: &DeliveryError) -> Retry {
    match e.cause() {
        Cause::Throttled { retry_after } => Retry::PauseAccount { retry_after },
        Cause::Account(AccountIssue::SignIn) => Retry::AwaitSignIn,
        Cause::Account(_) => Retry::HoldAccount,
        Cause::Transient if matches!(e, DeliveryError::Token { .. }) => Retry::AwaitToken,
        _ => Retry::Backoff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(line: &str) -> Reply {
        smtp2oauth_proto::ReplyAssembler::new()
            .push_line(line.as_bytes())
            .unwrap()
            .unwrap()
    }

    fn rejected(line: &str, cause: Cause) -> DeliveryError {
        DeliveryError::Rejected {
            stage: Stage::Mail,
            reply: reply(line),
            cause,
        }
    }

    const RCPTS: [&str; 3] = ["a@x", "b@x", "c@x"];

    fn all() -> Vec<String> {
        RCPTS.iter().map(|r| r.to_string()).collect()
    }

    /// A delivery that went through, with these recipients refused (by reply).
    fn report(refused: &[(&str, &str)]) -> Result<DeliveryReport, DeliveryError> {
        let rejected: Vec<(String, Reply)> = refused
            .iter()
            .map(|(r, line)| (r.to_string(), reply(line)))
            .collect();
        Ok(DeliveryReport {
            reply: reply("250 2.0.0 OK"),
            accepted: all()
                .into_iter()
                .filter(|r| !rejected.iter().any(|(x, _)| x == r))
                .collect(),
            rejected,
        })
    }

    const FRESH: MessageState = MessageState {
        delivered_before: false,
        failed_before: false,
        age: Duration::ZERO,
        waiting: false,
    };
    const WAITING: MessageState = MessageState {
        waiting: true,
        ..FRESH
    };
    const OLD: MessageState = MessageState {
        age: Duration::from_secs(6 * 86_400),
        ..FRESH
    };
    const LIFETIME: Duration = Duration::from_secs(5 * 86_400);

    #[test]
    fn verdicts_table() {
        use Verdict::*;
        let unknown = "550 5.1.1 User unknown";
        let busy = "451 4.7.500 Server busy";
        let throttled = |s| Cause::Throttled {
            retry_after: Some(Duration::from_secs(s)),
        };
        let backoff = |partial| Deferred {
            partial,
            retry: Retry::Backoff,
        };
        let hold = || Deferred {
            partial: false,
            retry: Retry::HoldAccount,
        };
        let cases: Vec<(
            &str,
            Result<DeliveryReport, DeliveryError>,
            MessageState,
            Verdict,
        )> = vec![
            ("all accepted", report(&[]), FRESH, Delivered),
            (
                "all accepted while waiting",
                report(&[]),
                WAITING,
                Delivered,
            ),
            (
                "the rest accepted after an earlier partial delivery",
                report(&[]),
                MessageState {
                    delivered_before: true,
                    ..FRESH
                },
                Delivered,
            ),
            (
                "the rest accepted after an earlier refusal",
                report(&[]),
                MessageState {
                    failed_before: true,
                    ..FRESH
                },
                Failed { partial: true },
            ),
            (
                "whole message refused while the device waits",
                Err(rejected("554 5.2.252 SendAsDenied", Cause::Message)),
                WAITING,
                Refused(reply("554 5.2.252 SendAsDenied")),
            ),
            (
                "whole message refused, nobody waits",
                Err(rejected("554 5.2.252 SendAsDenied", Cause::Message)),
                FRESH,
                Failed { partial: false },
            ),
            (
                "whole message refused after an earlier partial delivery",
                Err(rejected("554 5.2.252 SendAsDenied", Cause::Message)),
                MessageState {
                    delivered_before: true,
                    waiting: true,
                    ..FRESH
                },
                Failed { partial: true },
            ),
            (
                "a 5xx about our account holds the account, nobody waits",
                Err(rejected(
                    "535 5.7.139 SMTP AUTH disabled",
                    Cause::Account(AccountIssue::SmtpAuthDisabled),
                )),
                FRESH,
                hold(),
            ),
            (
                "a 5xx about our account is never heard by a waiting device",
                Err(DeliveryError::Rejected {
                    stage: Stage::Auth,
                    reply: reply("535 5.7.3 Authentication unsuccessful"),
                    cause: Cause::Account(AccountIssue::Login),
                }),
                WAITING,
                hold(),
            ),
            (
                "Graph's 403 for the app",
                Err(rejected(
                    "550 5.7.1 ErrorAccessDenied",
                    Cause::Account(AccountIssue::Permission),
                )),
                WAITING,
                hold(),
            ),
            (
                "the token endpoint refuses the app's registration",
                Err(DeliveryError::Token {
                    account: "a".into(),
                    reason: "invalid_client".into(),
                    cause: Cause::Account(AccountIssue::AppRegistration),
                }),
                WAITING,
                hold(),
            ),
            (
                "a connector refusing us at RCPT, every recipient",
                Err(DeliveryError::Rejected {
                    stage: Stage::Rcpt,
                    reply: reply("550 5.7.64 TenantAttribution; Relay Access Denied"),
                    cause: Cause::Account(AccountIssue::Connector),
                }),
                WAITING,
                hold(),
            ),
            (
                "a connector refusing one recipient while others pass is not final for it",
                report(&[("c@x", "550 5.7.64 TenantAttribution; Relay Access Denied")]),
                FRESH,
                backoff(true),
            ),
            (
                "an account refusal, too old to try again",
                Err(rejected(
                    "535 5.7.3 Authentication unsuccessful",
                    Cause::Account(AccountIssue::Login),
                )),
                OLD,
                Expired,
            ),
            (
                "one recipient refused for good, the others delivered",
                report(&[("b@x", unknown)]),
                WAITING,
                Failed { partial: true },
            ),
            (
                "every recipient refused at RCPT while waiting",
                Err(DeliveryError::Rejected {
                    stage: Stage::Rcpt,
                    reply: reply(unknown),
                    cause: Cause::Recipient,
                }),
                WAITING,
                Refused(reply(unknown)),
            ),
            (
                "one recipient refused for now, the others delivered",
                report(&[("c@x", busy)]),
                FRESH,
                backoff(true),
            ),
            (
                "one for now and one for good",
                report(&[("b@x", unknown), ("c@x", busy)]),
                WAITING,
                backoff(true),
            ),
            (
                "a temporary failure",
                Err(DeliveryError::Timeout { stage: Stage::Body }),
                WAITING,
                backoff(false),
            ),
            (
                "a temporary refusal, too old to try again",
                Err(rejected("451 4.3.0 try later", Cause::Transient)),
                OLD,
                Expired,
            ),
            (
                "throttling pauses the account for the wait asked",
                Err(rejected(
                    "451 4.7.500 Server busy, retry after 3 seconds",
                    throttled(3),
                )),
                FRESH,
                Deferred {
                    partial: false,
                    retry: Retry::PauseAccount {
                        retry_after: Some(Duration::from_secs(3)),
                    },
                },
            ),
            (
                "throttling without a wait",
                Err(rejected(busy, Cause::Throttled { retry_after: None })),
                FRESH,
                Deferred {
                    partial: false,
                    retry: Retry::PauseAccount { retry_after: None },
                },
            ),
            (
                "a throttled recipient of a delivery that went through is not the account's",
                report(&[("c@x", busy)]),
                FRESH,
                backoff(true),
            ),
            (
                "a sign-in is needed",
                Err(DeliveryError::Token {
                    account: "a".into(),
                    reason: "invalid_grant".into(),
                    cause: Cause::Account(AccountIssue::SignIn),
                }),
                WAITING,
                Deferred {
                    partial: false,
                    retry: Retry::AwaitSignIn,
                },
            ),
            (
                "the token endpoint is down",
                Err(DeliveryError::Token {
                    account: "a".into(),
                    reason: "unavailable".into(),
                    cause: Cause::Transient,
                }),
                FRESH,
                Deferred {
                    partial: false,
                    retry: Retry::AwaitToken,
                },
            ),
        ];
        for (name, result, state, want) in cases {
            let out = Outcome::of(result, &all());
            assert_eq!(verdict(&out, &state, LIFETIME), want, "{name}");
        }
        assert_eq!(
            verdict(&Outcome::nothing_left(), &FRESH, LIFETIME),
            Verdict::Delivered,
            "bookkeeping after a crash"
        );
    }

    /// Synchronous delivery retries nothing: a delivery that went through for some recipients
    /// is a partial failure whatever the others heard; a temporary failure of the whole
    /// message stays temporary (the device retries it).
    #[test]
    fn synchronous_verdicts() {
        let sync = |result| {
            verdict(
                &Outcome::of(result, &all()).without_retries(),
                &WAITING,
                Duration::MAX,
            )
        };
        assert_eq!(sync(report(&[])), Verdict::Delivered);
        assert_eq!(
            sync(report(&[("c@x", "451 4.7.500 Server busy")])),
            Verdict::Failed { partial: true }
        );
        assert_eq!(
            sync(report(&[("b@x", "550 5.1.1 User unknown")])),
            Verdict::Failed { partial: true }
        );
        assert_eq!(
            sync(Err(DeliveryError::Timeout { stage: Stage::Body })),
            Verdict::Deferred {
                partial: false,
                retry: Retry::Backoff
            }
        );
        assert_eq!(
            sync(Err(rejected("554 5.2.252 SendAsDenied", Cause::Message))),
            Verdict::Refused(reply("554 5.2.252 SendAsDenied"))
        );
    }

    #[test]
    fn outcomes_sort_recipients_and_keep_their_replies() {
        let out = Outcome::of(
            report(&[
                ("b@x", "550 5.1.1 User unknown"),
                ("c@x", "452 4.2.2 Mailbox full"),
            ]),
            &all(),
        );
        assert_eq!(out.delivered, ["a@x"]);
        assert_eq!(out.failed[0].0, "b@x");
        assert_eq!(out.deferred[0].1.to_string(), "452 4.2.2 Mailbox full");
        assert_eq!(out.upstream_reply().map(Reply::code), Some(250));
        assert_eq!(out.stage(), None);
        let out = Outcome::of(Err(DeliveryError::Timeout { stage: Stage::Body }), &all());
        assert_eq!(out.deferred.len(), 3);
        assert_eq!(out.stage(), Some(Stage::Body));
        assert!(
            out.upstream_reply().is_none(),
            "a timeout is not the upstream's reply"
        );
    }
}

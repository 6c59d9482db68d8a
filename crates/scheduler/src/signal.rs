//! What an attempt says about its account (not about its message), decided by a pure function.
//!
//! The console's account state (`ok`, `degraded`, `sign_in_needed`, `throttled`,
//! `unreachable`) must come from what the upstream and the token endpoint actually answered,
//! and a refusal of one message must not paint a working account red. The rules are this one
//! function of the attempt's outcome, so they are read and tested in one table; the activity
//! store turns the signals into states.

use crate::verdict::Outcome;
use smtp2oauth_activity::AccountSignal;
use smtp2oauth_proto::{AccountIssue, Cause, DeliveryError};

/// The signal of one attempt. `pause_until_ms` is when the account's throttling pause ends
/// (ms since the epoch), for an attempt the upstream throttled.
pub(crate) fn account_signal(out: &Outcome, pause_until_ms: u64) -> AccountSignal {
    if !out.delivered.is_empty() {
        return AccountSignal::Working;
    }
    let Some(e) = &out.error else {
        // Nothing was left to deliver (bookkeeping after a crash): nothing was asked.
        return AccountSignal::Neutral;
    };
    match e.cause() {
        Cause::Account(AccountIssue::SignIn) => AccountSignal::SignInNeeded,
        Cause::Account(_) => AccountSignal::Refused,
        Cause::Throttled { .. } => AccountSignal::Throttled {
            until_ms: pause_until_ms,
        },
        Cause::Message | Cause::Recipient | Cause::TooLarge => AccountSignal::Neutral,
        Cause::Transient => transient(e),
    }
}

/// A failure that may pass by itself: the upstream (or the token endpoint) could not be
/// reached or broke off, or it answered and merely asked us to come back later.
fn transient(e: &DeliveryError) -> AccountSignal {
    match e {
        DeliveryError::Connect { .. }
        | DeliveryError::Dns { .. }
        | DeliveryError::Timeout { .. }
        | DeliveryError::ConnectionLost { .. }
        | DeliveryError::Protocol { .. }
        | DeliveryError::Token { .. } => AccountSignal::Unreachable,
        // A TLS failure against a fixed upstream is configuration (a CA, our certificate, a
        // protocol version), which an admin must fix like a refused login.
        DeliveryError::Tls { .. } => AccountSignal::Refused,
        // The upstream answered: it is there, it only asked us to come back.
        DeliveryError::Rejected { .. } | DeliveryError::Local { .. } => AccountSignal::Neutral,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtp2oauth_proto::{Reply, Stage};
    use smtp2oauth_upstream::DeliveryReport;

    fn reply(line: &str) -> Reply {
        smtp2oauth_proto::ReplyAssembler::new()
            .push_line(line.as_bytes())
            .unwrap()
            .unwrap()
    }

    fn rejected(stage: Stage, line: &str, cause: Cause) -> DeliveryError {
        DeliveryError::Rejected {
            stage,
            reply: reply(line),
            cause,
        }
    }

    fn failed(e: DeliveryError) -> Outcome {
        Outcome::of(Err(e), &["a@x".to_string()])
    }

    const UNTIL: u64 = 1_000;

    #[test]
    fn signals_table() {
        use AccountIssue::*;
        use AccountSignal::*;
        let token = |cause| DeliveryError::Token {
            account: "scanner".into(),
            reason: "r".into(),
            cause,
        };
        let cases: Vec<(&str, Outcome, AccountSignal)> = vec![
            (
                "delivered",
                Outcome::of(
                    Ok(DeliveryReport {
                        reply: reply("250 2.0.0 OK"),
                        accepted: vec!["a@x".into()],
                        rejected: vec![],
                    }),
                    &["a@x".to_string()],
                ),
                Working,
            ),
            (
                "delivered to one, refused for the other",
                Outcome::of(
                    Ok(DeliveryReport {
                        reply: reply("250 2.0.0 OK"),
                        accepted: vec!["a@x".into()],
                        rejected: vec![("b@x".into(), reply("550 5.1.1 unknown"))],
                    }),
                    &["a@x".to_string(), "b@x".to_string()],
                ),
                Working,
            ),
            (
                "535 5.7.3 at AUTH",
                failed(rejected(
                    Stage::Auth,
                    "535 5.7.3 Authentication unsuccessful",
                    Cause::Account(Login),
                )),
                Refused,
            ),
            (
                "5.7.139",
                failed(rejected(
                    Stage::Auth,
                    "535 5.7.139 disabled",
                    Cause::Account(SmtpAuthDisabled),
                )),
                Refused,
            ),
            (
                "Graph 403 for the app",
                failed(rejected(
                    Stage::Http,
                    "550 5.7.1 ErrorAccessDenied",
                    Cause::Account(Permission),
                )),
                Refused,
            ),
            (
                "a connector refusing us",
                failed(rejected(
                    Stage::Rcpt,
                    "550 5.7.64 TenantAttribution",
                    Cause::Account(Connector),
                )),
                Refused,
            ),
            (
                "the token endpoint refuses the app",
                failed(token(Cause::Account(AppRegistration))),
                Refused,
            ),
            (
                "a sign-in is needed",
                failed(token(Cause::Account(SignIn))),
                SignInNeeded,
            ),
            (
                "throttled",
                failed(rejected(
                    Stage::Mail,
                    "451 4.7.500 Server busy",
                    Cause::Throttled { retry_after: None },
                )),
                Throttled { until_ms: UNTIL },
            ),
            (
                "the token endpoint is down",
                failed(token(Cause::Transient)),
                Unreachable,
            ),
            (
                "no connection",
                failed(DeliveryError::Connect {
                    target: "h:587".into(),
                    detail: "refused".into(),
                }),
                Unreachable,
            ),
            (
                "no DNS",
                failed(DeliveryError::Dns {
                    target: "MX of contoso.com".into(),
                    detail: "nxdomain".into(),
                }),
                Unreachable,
            ),
            (
                "a timeout",
                failed(DeliveryError::Timeout { stage: Stage::Body }),
                Unreachable,
            ),
            (
                "a lost connection",
                failed(DeliveryError::ConnectionLost {
                    stage: Stage::Body,
                    detail: "eof".into(),
                }),
                Unreachable,
            ),
            (
                "TLS refused",
                failed(DeliveryError::Tls {
                    detail: "certificate required".into(),
                }),
                Refused,
            ),
            (
                "the message refused",
                failed(rejected(
                    Stage::Body,
                    "554 5.2.252 SendAsDenied",
                    Cause::Message,
                )),
                Neutral,
            ),
            (
                "the recipient refused",
                failed(rejected(Stage::Rcpt, "550 5.1.1 unknown", Cause::Recipient)),
                Neutral,
            ),
            (
                "too large",
                failed(rejected(Stage::Mail, "552 5.3.4 too big", Cause::TooLarge)),
                Neutral,
            ),
            (
                "a temporary refusal of the message",
                failed(rejected(
                    Stage::Body,
                    "451 4.3.0 try later",
                    Cause::Transient,
                )),
                Neutral,
            ),
            (
                "our own trouble",
                failed(DeliveryError::Local {
                    detail: "io".into(),
                }),
                Neutral,
            ),
            ("nothing left to deliver", Outcome::nothing_left(), Neutral),
        ];
        for (name, out, want) in cases {
            assert_eq!(account_signal(&out, UNTIL), want, "{name}");
        }
    }
}

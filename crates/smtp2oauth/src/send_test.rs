//! The send-test: one function behind `smtp2oauth send-test`, the console's Send test button
//! and `POST /api/v1/accounts/{name}/test`.
//!
//! An admin who asks "can this account send?" needs two answers kept apart, because they are
//! fixed in different places: can the relay get a token (Entra ID: the app, its secret or
//! certificate, consent, a sign-in), and does the upstream accept the message with it
//! (Exchange: SMTP AUTH enabled, the mailbox, send-as rights). So the token is fetched first
//! and reported with its advice; only with a token is the message sent, and the upstream's reply
//! is reported with its own advice.

use smtp2oauth_admin::{ReplyInfo, SendTestReport, TestStep};
use smtp2oauth_tokens::TokenSource;
use smtp2oauth_upstream::{Message, Route, advice};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How long the token step may take.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(30);

/// What a send-test goes through: the account's route as the relay uses it.
pub struct TestTarget {
    pub account: String,
    pub mailbox: String,
    /// This relay's name (in the message).
    pub hostname: String,
    pub route: Arc<dyn Route>,
    /// The source of the route's tokens; None when the route needs none.
    pub tokens: Option<Arc<dyn TokenSource>>,
}

/// `to` if it can be a recipient: `local@domain`, without spaces, angle brackets or control
/// characters.
pub fn recipient(to: &str) -> Result<&str, String> {
    let to = to.trim();
    let bad = to.is_empty()
        || to.len() > 254
        || to
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || "<>,;\"".contains(c))
        || !matches!(to.rsplit_once('@'), Some((l, d)) if !l.is_empty() && d.contains('.') && !d.starts_with('.'));
    if bad {
        return Err(format!(
            "`{}` is not an e-mail address such as you@example.com",
            to.escape_debug()
        ));
    }
    Ok(to)
}

/// Gets a token (when the route needs one), then sends a short test message to `to`.
pub async fn run(t: &TestTarget, to: &str) -> SendTestReport {
    let mut report = SendTestReport {
        account: t.account.clone(),
        to: to.to_string(),
        route: t.route.kind().as_str().to_string(),
        target: t.route.target(),
        token: None,
        delivery: None,
        ok: false,
    };
    if let Some(source) = &t.tokens {
        let step = token_step(source.as_ref()).await;
        let ok = step.ok;
        report.token = Some(step);
        if !ok {
            return report;
        }
    }
    let step = delivery_step(t, to).await;
    report.ok = step.ok;
    report.delivery = Some(step);
    report
}

async fn token_step(source: &dyn TokenSource) -> TestStep {
    match tokio::time::timeout(TOKEN_TIMEOUT, source.token()).await {
        Ok(Ok(token)) => {
            let left = token
                .expires_at()
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            TestStep {
                ok: true,
                summary: format!(
                    "token obtained, valid until {}",
                    smtp2oauth_admin::time::local_relative(SystemTime::now() + left)
                ),
                reply: None,
                advice: None,
            }
        }
        Ok(Err(e)) => TestStep {
            ok: false,
            summary: format!("no token: {e}"),
            reply: None,
            advice: e.advice().map(str::to_string),
        },
        Err(_) => TestStep {
            ok: false,
            summary: format!(
                "no token: the token endpoint did not answer within {} s",
                TOKEN_TIMEOUT.as_secs()
            ),
            reply: None,
            advice: Some(
                "Check the relay's network access (DNS, firewall, proxy) to the token endpoint."
                    .into(),
            ),
        },
    }
}

/// The test message: plain text, saying where it came from.
fn body(t: &TestTarget, to: &str, id: &str, date: &str) -> String {
    format!(
        "From: smtp2oauth test <{mailbox}>\r\nTo: <{to}>\r\nSubject: smtp2oauth test message ({account})\r\nDate: {date}\r\nMessage-ID: <{id}@{hostname}>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThis is a test message from smtp2oauth on {hostname}, sent through account\r\n\"{account}\" (route {route}, {target}) at {date}.\r\n\r\nIf you can read it, this account can send mail.\r\n",
        mailbox = t.mailbox,
        account = t.account,
        hostname = t.hostname,
        route = t.route.kind(),
        target = t.route.target(),
    )
}

async fn delivery_step(t: &TestTarget, to: &str) -> TestStep {
    let now = smtp2oauth_spool::now_ms();
    let id = smtp2oauth_spool::MessageId::new().to_string();
    let date = smtp2oauth_inbound::headers::rfc5322_date(now / 1000);
    let text = body(t, to, &id, &date);
    let file = std::env::temp_dir().join(format!("smtp2oauth-send-test-{id}.eml"));
    let written = smtp2oauth_platform::open_private(
        std::fs::OpenOptions::new().write(true).create_new(true),
        &file,
    )
    .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()));
    if let Err(e) = written {
        return TestStep {
            ok: false,
            summary: format!("cannot write the test message to {}: {e}", file.display()),
            reply: None,
            advice: None,
        };
    }
    let msg = Message {
        id,
        account: t.account.clone(),
        device: "send-test".into(),
        sender: t.mailbox.clone(),
        recipients: vec![to.to_string()],
        data_path: file.clone(),
        size: text.len() as u64,
        eight_bit: false,
        smtputf8: false,
        received_at_ms: now,
    };
    let result = t.route.deliver(&msg).await;
    let _ = std::fs::remove_file(&file);
    match result {
        Ok(report) => match report.rejected.first() {
            Some((rcpt, reply)) => TestStep {
                ok: false,
                summary: format!("the upstream refused the recipient {rcpt}"),
                reply: Some(ReplyInfo::from(reply)),
                advice: None,
            },
            None => TestStep {
                ok: true,
                summary: "delivered".into(),
                reply: Some(ReplyInfo::from(&report.reply)),
                advice: None,
            },
        },
        Err(e) => TestStep {
            ok: false,
            summary: format!("delivery failed: {e}"),
            reply: match &e {
                smtp2oauth_proto::DeliveryError::Rejected { reply, .. } => {
                    Some(ReplyInfo::from(reply))
                }
                _ => None,
            },
            advice: advice::for_error(&e).map(str::to_string),
        },
    }
}

/// The report as the command line prints it: the token step, then the delivery step.
pub fn print(r: &SendTestReport) {
    println!(
        "send-test: account {} ({} to {}), to {}",
        r.account, r.route, r.target, r.to
    );
    let step = |what: &str, s: &TestStep| {
        println!(
            "{what}: {} {}",
            if s.ok { "ok:" } else { "FAILED:" },
            s.summary
        );
        if let Some(reply) = &s.reply {
            println!("  upstream replied: {reply}");
        }
        if let Some(a) = &s.advice {
            println!("  advice: {a}");
        }
    };
    match &r.token {
        Some(t) => step("token", t),
        None => println!("token: none needed (route {})", r.route),
    }
    match &r.delivery {
        Some(d) => step("delivery", d),
        None => println!("delivery: not tried without a token"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients() {
        assert_eq!(recipient(" you@example.com "), Ok("you@example.com"));
        for bad in [
            "",
            "you",
            "you@",
            "@example.com",
            "a b@example.com",
            "you@example",
            "<you@example.com>",
            "x@y.com\r\nRCPT TO:<z@w.com>",
        ] {
            assert!(recipient(bad).is_err(), "{bad:?}");
        }
    }
}

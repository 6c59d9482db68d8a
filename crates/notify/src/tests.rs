//! The notifier end to end with a fake environment, a fake mailer and a real HTTP receiver.

use super::*;
use smtp2oauth_activity::{
    AccountSignal, ActivityConfig, AttemptReport, AttemptResult, Environment, Level, ReplyInfo,
    Subject,
};
use std::sync::Mutex;

struct FakeMailer {
    sent: Mutex<Vec<(String, String)>>,
    fail: bool,
}

impl Mailer for FakeMailer {
    fn send<'a>(
        &'a self,
        to: &'a str,
        subject: &'a str,
        _text: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            if self.fail {
                return Err("no healthy account can carry it".into());
            }
            self.sent.lock().unwrap().push((to.into(), subject.into()));
            Ok(())
        })
    }
}

fn problem(state: AccountState, since_ms: u64) -> Problem {
    Problem {
        subject: Subject::Account("a".into()),
        level: Level::Error,
        state: Some(state),
        summary: String::new(),
        advice: String::new(),
        doc: String::new(),
        since_ms: Some(since_ms),
    }
}

#[test]
fn brief_trouble_waits_for_its_grace() {
    let grace = FLAP_GRACE.as_millis() as u64;
    let now = 10 * grace;
    let kept = |p: Problem| !due(vec![p], now).is_empty();
    assert!(kept(problem(AccountState::Degraded, now)));
    assert!(kept(problem(AccountState::SignInNeeded, now)));
    assert!(!kept(problem(AccountState::Unreachable, now - grace + 1)));
    assert!(kept(problem(AccountState::Unreachable, now - grace)));
    assert!(!kept(problem(AccountState::Throttled, now - 1000)));
}

fn refused(at_ms: u64, signal: AccountSignal) -> AttemptReport {
    AttemptReport {
        account: "scanner".into(),
        at_ms,
        result: Some(AttemptResult::Deferred),
        signal,
        reply: Some(ReplyInfo::new(
            535,
            Some("5.7.3".into()),
            "Authentication unsuccessful",
        )),
        advice: Some("grant it".into()),
    }
}

#[tokio::test]
async fn a_degraded_account_is_mailed_once_and_its_recovery_too() {
    let activity = Activity::new(&ActivityConfig {
        accounts: vec!["scanner".into()],
        ..ActivityConfig::default()
    });
    let env: EnvironmentFn = Arc::new(|| {
        Box::pin(async {
            Environment {
                now_ms: now_ms(),
                ..Environment::default()
            }
        })
    });
    let mailer = Arc::new(FakeMailer {
        sent: Mutex::new(Vec::new()),
        fail: false,
    });
    let notifier = Notifier::new(
        NotifyConfig {
            relay: "relay".into(),
            repeat_interval: Duration::from_secs(3600),
            check_interval: Duration::from_secs(3600),
            email_to: vec!["admin@contoso.com".into()],
        },
        activity.clone(),
        env,
        None,
        Some(mailer.clone()),
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn(notifier.run(stop.clone()));
    let wait = |n: usize| {
        let m = mailer.clone();
        async move {
            for _ in 0..200 {
                if m.sent.lock().unwrap().len() >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("{} mails, wanted {n}", m.sent.lock().unwrap().len());
        }
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    activity.attempt(&refused(now_ms(), AccountSignal::Refused));
    wait(1).await;
    activity.attempt(&refused(now_ms(), AccountSignal::Refused));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        mailer.sent.lock().unwrap().len(),
        1,
        "a repeated refusal mails nothing new"
    );
    activity.attempt(&refused(now_ms(), AccountSignal::Working));
    wait(2).await;
    let sent = mailer.sent.lock().unwrap().clone();
    assert!(sent[0].1.contains("account_degraded"), "{sent:?}");
    assert!(sent[1].1.contains("account_recovered"), "{sent:?}");
    assert_eq!(sent[0].0, "admin@contoso.com");
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn an_alert_mail_that_cannot_go_is_a_problem() {
    let activity = Activity::new(&ActivityConfig::default());
    let mailer: Arc<dyn Mailer> = Arc::new(FakeMailer {
        sent: Mutex::new(Vec::new()),
        fail: true,
    });
    let event = Event::from_alert(
        &smtp2oauth_activity::Alert {
            kind: smtp2oauth_activity::AlertKind::Raised,
            problem: problem(AccountState::Degraded, 0),
        },
        "relay",
        0,
    );
    mail(mailer, activity.clone(), "admin@contoso.com".into(), event).await;
    let f = activity.notice_failures();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].about, "e-mail to admin@contoso.com");
    assert!(f[0].reason.contains("no healthy account"));
}

/// Every doc link an event carries points at a heading that exists (the overview and the
/// notifications send admins there).
#[test]
fn every_doc_link_points_at_a_heading() {
    use smtp2oauth_activity::problems::problems;
    use smtp2oauth_activity::{AccountActivity, CertificateInfo, MessageRecord, MessageResult};
    let accounts: Vec<AccountActivity> = [
        AccountSignal::Refused,
        AccountSignal::SignInNeeded,
        AccountSignal::Unreachable,
        AccountSignal::Throttled { until_ms: u64::MAX },
    ]
    .into_iter()
    .enumerate()
    .map(|(i, signal)| {
        let a = Activity::new(&ActivityConfig::default());
        a.attempt(&AttemptReport {
            account: format!("a{i}"),
            ..refused(1, signal)
        });
        a.accounts(2).remove(0)
    })
    .collect();
    let env = Environment {
        now_ms: 10_000_000,
        oldest_queued_ms: Some(0),
        alert_queue_age_ms: 1,
        free_space: Some(0),
        min_free_space: 1,
        certificates: vec![CertificateInfo {
            label: "c".into(),
            not_after_ms: 0,
        }],
        certificate_warning_ms: 1,
        notice_failures: vec![smtp2oauth_activity::NoticeFailure {
            about: "webhook".into(),
            reason: "r".into(),
            at_ms: 0,
        }],
    };
    let mut docs: Vec<String> = problems(&accounts, &env)
        .into_iter()
        .map(|p| p.doc)
        .collect();
    assert_eq!(docs.len(), 8, "one problem of each kind: {docs:?}");
    let record = MessageRecord {
        seq: 1,
        at_ms: 0,
        queue_id: None,
        device: String::new(),
        peer: None,
        account: String::new(),
        route: String::new(),
        sender: String::new(),
        recipients: vec![],
        size: 0,
        result: MessageResult::Failed,
        reply: None,
        advice: None,
    };
    docs.push(Event::message_failed(&record, "r", 0).doc);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
    for doc in docs {
        let (file, anchor) = doc.split_once('#').expect("a section");
        let text =
            std::fs::read_to_string(root.join(file)).unwrap_or_else(|e| panic!("{doc}: {e}"));
        let anchors: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with('#'))
            .map(|l| slug(l.trim_start_matches('#')))
            .collect();
        assert!(
            anchors.contains(&anchor.to_string()),
            "{doc}: no such heading in {anchors:?}"
        );
    }
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

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

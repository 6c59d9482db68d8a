//! The store as its producers and readers use it.

use super::*;

fn store() -> Activity {
    Activity::new(&ActivityConfig {
        recent_messages: 10,
        devices: vec![("mfp".into(), "scanner".into())],
        accounts: vec!["scanner".into(), "fax".into()],
    })
}

fn conn() -> Connection {
    Connection {
        peer: "192.0.2.10".into(),
        listener: "submission".into(),
        tls: None,
    }
}

fn refused(at_ms: u64) -> AttemptReport {
    AttemptReport {
        account: "scanner".into(),
        at_ms,
        result: Some(AttemptResult::Deferred),
        signal: AccountSignal::Refused,
        reply: Some(ReplyInfo::new(
            535,
            Some("5.7.3".into()),
            "Authentication unsuccessful",
        )),
        advice: Some("grant the permission".into()),
    }
}

#[test]
fn configured_devices_and_accounts_are_listed_before_any_activity() {
    let a = store();
    let devices = a.devices(0);
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].name, "mfp");
    assert_eq!(devices[0].account, "scanner");
    assert_eq!(devices[0].last_seen_ms, None);
    let accounts: Vec<String> = a.accounts(0).into_iter().map(|a| a.name).collect();
    assert_eq!(accounts, ["fax", "scanner"]);
    assert!(
        a.accounts(0)
            .iter()
            .all(|a| a.condition.state == AccountState::Ok)
    );
}

#[test]
fn a_device_shows_where_it_was_seen_and_what_it_was_told() {
    let a = store();
    a.device_seen("mfp", 1_000, &conn());
    a.device_reply(
        "mfp",
        2_000,
        ReplyInfo::new(553, Some("5.7.1".into()), "Sender address not allowed"),
        Some(Counter::Refused),
    );
    a.login_failed("mfp", Some("mfp"), "192.0.2.10", 2_500);
    a.login_failed("admin", None, "192.0.2.99", 2_600);
    let d = &a.devices(3_000)[0];
    assert_eq!(d.last_seen_ms, Some(2_500));
    assert_eq!(d.connection.as_ref().unwrap().peer, "192.0.2.10");
    assert_eq!(d.last_result.as_ref().unwrap().reply.code, 553);
    assert_eq!(d.since_start.refused, 1);
    assert_eq!(d.last_24h.failed_logins, 1);
    assert_eq!(a.unknown_logins()[0].username, "admin");
}

#[test]
fn account_transitions_are_published_once() {
    let a = store();
    let mut changes = a.subscribe();
    a.attempt(&refused(1_000));
    a.attempt(&refused(2_000));
    let change = changes.try_recv().unwrap();
    match change {
        Change::AccountState { account, from, to } => {
            assert_eq!(account, "scanner");
            assert_eq!(from, AccountState::Ok);
            assert_eq!(to.state, AccountState::Degraded);
            assert_eq!(to.since_ms, Some(1_000));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        changes.try_recv().is_err(),
        "the repeated refusal is not a change"
    );
    a.attempt(&AttemptReport {
        signal: AccountSignal::Working,
        result: Some(AttemptResult::Delivered),
        ..refused(3_000)
    });
    match changes.try_recv().unwrap() {
        Change::AccountState { from, to, .. } => {
            assert_eq!((from, to.state), (AccountState::Degraded, AccountState::Ok))
        }
        other => panic!("unexpected {other:?}"),
    }
    let s = a.account("scanner", 3_000).unwrap();
    assert_eq!(s.consecutive_failures, 0);
    assert_eq!(s.last_failure.unwrap().at_ms, 2_000);
}

#[test]
fn messages_are_logged_and_published() {
    let a = store();
    let mut changes = a.subscribe();
    a.message(MessageRecord {
        seq: 0,
        at_ms: 5,
        queue_id: None,
        device: "mfp".into(),
        peer: Some("192.0.2.10".into()),
        account: "scanner".into(),
        route: String::new(),
        sender: "ceo@evil.example".into(),
        recipients: vec!["a@b.example".into()],
        size: 0,
        result: MessageResult::Refused,
        reply: Some(ReplyInfo::new(553, Some("5.7.1".into()), "not allowed")),
        advice: None,
    });
    let got = a.messages(&MessageFilter {
        device: Some("mfp".into()),
        ..MessageFilter::default()
    });
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].seq, 1);
    assert!(matches!(changes.try_recv().unwrap(), Change::Message(r) if r.seq == 1));
}

#[test]
fn notice_failures_are_bounded_and_cleared_by_a_success() {
    let a = store();
    for i in 0..(MAX_NOTICE_FAILURES + 5) {
        a.notice_failed(NoticeFailure {
            about: format!("q{i}"),
            reason: "no healthy account".into(),
            at_ms: i as u64,
        });
    }
    assert_eq!(a.notice_failures().len(), MAX_NOTICE_FAILURES);
    a.notice_sent(&format!("q{}", MAX_NOTICE_FAILURES + 4));
    assert_eq!(a.notice_failures().len(), MAX_NOTICE_FAILURES - 1);
}

#[test]
fn the_snapshot_round_trips_through_json() {
    let a = store();
    a.attempt(&refused(1_000));
    a.device_seen("mfp", 1_000, &conn());
    let snap = a.snapshot(2_000);
    let json = serde_json::to_string(&snap).unwrap();
    assert!(json.contains("\"degraded\""), "{json}");
    let back: Snapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back, snap);
}

#[tokio::test]
async fn every_change_moves_the_generation_devices_included() {
    let a = store();
    let mut g = a.generation();
    let start = *g.borrow_and_update();
    a.device_seen("mfp", 1_000, &conn());
    g.changed().await.unwrap();
    let after_device = *g.borrow_and_update();
    assert!(after_device > start);
    // Reading changes nothing.
    let _ = a.snapshot(2_000);
    assert!(!g.has_changed().unwrap());
    a.attempt(&refused(3_000));
    assert!(g.has_changed().unwrap());
}

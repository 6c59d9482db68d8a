//! Store-and-forward, end to end: once the relay answers 250, the message reaches the
//! upstream or is reported, whatever happens in between.
//!
//! Why this file exists: the spool, the scheduler and the queue command each have unit tests,
//! but the promise we make to devices (Postfix's: "a 250 survives a crash, a full disk and a long
//! outage, and is delivered or reported, never dropped") only holds if all of them and the
//! binary's wiring agree. So these tests drive the real binary with a real SMTP client
//! (tests/clients/send.py) against the honest fakes, break things the way production breaks
//! them (upstream 4xx and throttling, connections dropped mid-DATA, the token endpoint down, 5xx
//! refusals, SIGKILL under load, a full filesystem, SIGTERM during a delivery, restarts on the
//! same store) and check outcomes only: what the device heard, what the upstream received and how
//! often, what is left in `queue/` and `failed/`, what the log and `smtp2oauth queue` say.
//!
//! Timing: another benchmark may share the machine, so nothing asserts on speed. Tests poll for
//! outcomes with generous deadlines; the only time windows asserted are ones the relay itself
//! promises (a throttled account stays paused for the hinted delay), measured from the moment the
//! relay logs the pause.
//!
//! The upstream is made "down" without closing the fake's port (another test could get that
//! port): `drop_at(Stage::Connect, n)` closes every connection before the greeting, which the
//! relay sees as a lost connection (temporary), and `clear_scripts()` brings it back.

use crate::harness::*;
use serde_json::Value;
use smtp2oauth_testkit::{FakeSmtp, IdpFailure, ReceivedMessage, Stage};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

const TO: &str = "you@example.com";
const ADMIN: &str = "admin@contoso.com";

/// A relay config with fast retries (unless `delivery` sets its own) and `delivery` keys added.
fn cfg(up: &Upstream, delivery: &str) -> String {
    let mut keys = String::new();
    if !delivery.contains("retry_initial") {
        keys.push_str("retry_initial = \"1s\"\n");
    }
    if !delivery.contains("retry_max") {
        keys.push_str("retry_max = \"2s\"\n");
    }
    keys.push_str(delivery);
    with_delivery(&relay_toml(&up.pki, &up.account_toml(""), ""), &keys)
}

/// Sends with the password device on the `plain` listener; `extra` adds send.py arguments
/// (a `--to` replaces the default recipient).
async fn send(relay: &Relay, extra: &[&str]) -> Vec<Value> {
    send_as_device(relay, MAILBOX, extra).await
}

/// The queue id in a 250 reply (`2.0.0 OK: queued as <id>` / `delivered as <id>`).
fn queue_id(r: &Value) -> String {
    let reply = r["reply"].as_str().unwrap_or_default();
    reply
        .split(" as ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no queue id in {r}"))
        .to_string()
}

fn assert_ok(r: &Value) {
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["code"], 250, "{r}");
}

/// The X-Test-Seq number send.py put in a message.
fn seq_of(m: &ReceivedMessage) -> Option<u64> {
    let text = m.data_str();
    let i = text.find("X-Test-Seq: ")? + "X-Test-Seq: ".len();
    text[i..].split("\r\n").next()?.trim().parse().ok()
}

/// Waits until `queue/` is empty and the upstream has received nothing new for `quiet`.
async fn drained(store: &Path, smtp: &FakeSmtp, quiet: Duration, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut last = (usize::MAX, Instant::now());
    loop {
        let n = smtp.messages().len();
        if n != last.0 {
            last = (n, Instant::now());
        }
        if spool_ids(store, "queue").is_empty() && last.1.elapsed() >= quiet {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Log lines of the scheduler's attempts with this message (`deferred`, `delivered`, ...).
fn attempt_lines<'a>(logs: &'a str, id: &str, what: &str) -> Vec<&'a str> {
    let tag = format!("scheduler::attempt: {what} ");
    let qid = format!("queue_id={id} ");
    logs.lines()
        .filter(|l| l.contains(&tag) && l.contains(&qid))
        .collect()
}

fn mail_commands(smtp: &FakeSmtp) -> usize {
    smtp.transcript()
        .iter()
        .filter(|l| l.contains("C: MAIL FROM:"))
        .count()
}

/// `smtp2oauth queue list --json` (or `failed --json`) as JSON values, by id.
async fn queue_json(relay: &Relay, what: &str) -> BTreeMap<String, Value> {
    let out = relay.queue(&[what, "--json"]).await;
    assert_eq!(out.status, 0, "queue {what}: {}{}", out.stdout, out.stderr);
    out.stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            (v["id"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

fn dump(relay: &Relay, smtp: &FakeSmtp) -> String {
    format!(
        "--- relay log (info and above) ---\n{}\n--- upstream transcript ---\n{}",
        relay
            .logs()
            .lines()
            .filter(|l| !l.contains(" TRACE ") && !l.contains(" DEBUG "))
            .collect::<Vec<_>>()
            .join("\n"),
        smtp.transcript().join("\n")
    )
}

// 1 -------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn upstream_451_twice_then_accepts_delivers_exactly_once() {
    let up = Upstream::start().await;
    let relay = Relay::start(&cfg(&up, ""));
    // A throttling reply with a hint: the account pauses 2 s instead of 30 s.
    up.smtp.script(
        Stage::Mail,
        "451 4.7.500 Server busy. Please try again later, retry after 2 seconds",
        2,
    );
    let r = send(&relay, &["--seq-start", "1"]).await;
    assert_ok(&r[0]);
    // The device waited for the first attempt, which failed temporarily: queued, not refused.
    assert!(
        r[0]["reply"].as_str().unwrap().contains("queued as"),
        "{r:?}"
    );
    let id = queue_id(&r[0]);
    let got = up.smtp.wait_for_messages(1, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 1, "{}", dump(&relay, &up.smtp));
    assert_eq!(seq_of(&got[0]), Some(1));
    assert_eq!(got[0].rcpt_to, vec![TO]);
    assert!(
        eventually(Duration::from_secs(20), || spool_ids(
            &relay.store(),
            "queue"
        )
        .is_empty())
        .await,
        "still queued: {:?}",
        spool_ids(&relay.store(), "queue")
    );
    // Longer than any retry interval (retry_max 2 s, hint 2 s): a second copy would have come.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(up.smtp.messages().len(), 1, "{}", dump(&relay, &up.smtp));
    assert_eq!(
        mail_commands(&up.smtp),
        3,
        "two refused attempts and one accepted: {}",
        dump(&relay, &up.smtp)
    );
    assert!(spool_ids(&relay.store(), "data").is_empty());
    assert!(spool_ids(&relay.store(), "failed").is_empty());
    let logs = relay.logs();
    let deferred = attempt_lines(&logs, &id, "deferred");
    assert_eq!(deferred.len(), 2, "{}", dump(&relay, &up.smtp));
    assert!(deferred[0].contains("attempt=1") && deferred[1].contains("attempt=2"));
    for l in &deferred {
        assert!(
            l.contains("upstream=451 4.7.500 Server busy"),
            "the upstream's reply is in the log: {l}"
        );
    }
    let delivered = attempt_lines(&logs, &id, "delivered");
    assert_eq!(delivered.len(), 1, "{}", dump(&relay, &up.smtp));
    assert!(delivered[0].contains("attempt=3"), "{}", delivered[0]);
    assert!(
        logs.lines()
            .any(|l| l.contains("pausing all its deliveries") && l.contains("pause_secs=2")),
        "the hint is honoured: {}",
        dump(&relay, &up.smtp)
    );
}

// 2 -------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn connection_dropped_mid_data_twice_is_delivered_later_once() {
    let up = Upstream::start().await;
    let relay = Relay::start(&cfg(&up, ""));
    // The first drop is tried again at once on a new connection; the second defers.
    up.smtp.drop_at(Stage::DataBody, 2);
    let dir = tempfile::tempdir().unwrap();
    // Big enough that the fake drops in the middle of the body, not after it.
    let mut body =
        b"From: <scanner@contoso.com>\r\nTo: <you@example.com>\r\nSubject: dropped\r\n\r\n"
            .to_vec();
    for i in 0..3000 {
        body.extend_from_slice(format!("line {i:05} of a scan that is long enough\r\n").as_bytes());
    }
    let f = file(dir.path(), "m.eml", &body).display().to_string();
    let r = send(&relay, &["--file", &f, "--seq-start", "7"]).await;
    assert_ok(&r[0]);
    let id = queue_id(&r[0]);
    let got = up.smtp.wait_for_messages(1, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 1, "{}", dump(&relay, &up.smtp));
    assert!(
        up.smtp.transcript().iter().any(|l| l.contains("dropp")),
        "the fake did drop a connection: {}",
        dump(&relay, &up.smtp)
    );
    let mut sent = b"X-Test-Seq: 7\r\n".to_vec();
    sent.extend_from_slice(&body);
    sent.truncate(sent.len() - 2); // the fake stores the body without the final CRLF
    assert!(
        strip_received(&got[0].data) == &sent[..],
        "the retried copy is whole"
    );
    assert!(
        eventually(Duration::from_secs(20), || spool_ids(
            &relay.store(),
            "queue"
        )
        .is_empty())
        .await
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(up.smtp.messages().len(), 1, "{}", dump(&relay, &up.smtp));
    let logs = relay.logs();
    assert_eq!(attempt_lines(&logs, &id, "deferred").len(), 1);
    assert_eq!(attempt_lines(&logs, &id, "delivered").len(), 1);
}

// 3 -------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn token_endpoint_down_then_back_delivers_and_device_never_sees_5xx() {
    let up = Upstream::start().await;
    let relay = Relay::start(&cfg(&up, ""));
    up.idp.set_failure(Some(IdpFailure::Unavailable));
    let r = send(
        &relay,
        &["--count", "2", "--parallel", "2", "--seq-start", "1"],
    )
    .await;
    for x in &r {
        assert_ok(x);
        assert!(x["reply"].as_str().unwrap().contains("queued as"), "{x}");
    }
    // still down: retried, nothing reaches the upstream
    assert!(
        eventually(Duration::from_secs(30), || up.idp.token_requests() >= 2).await,
        "the token endpoint is asked again"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(up.smtp.messages().is_empty());
    assert_eq!(spool_ids(&relay.store(), "queue").len(), 2);
    up.idp.set_failure(None);
    let got = up.smtp.wait_for_messages(2, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 2, "{}", dump(&relay, &up.smtp));
    let seqs: BTreeSet<_> = got.iter().filter_map(seq_of).collect();
    assert_eq!(seqs, BTreeSet::from([1, 2]));
    assert!(
        drained(
            &relay.store(),
            &up.smtp,
            Duration::from_secs(3),
            Duration::from_secs(30)
        )
        .await
    );
    assert_eq!(up.smtp.messages().len(), 2);
    assert!(spool_ids(&relay.store(), "failed").is_empty());
    let logs = relay.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("scheduler::attempt: deferred") && l.contains("upstream=454 4.7.0")),
        "the log says why it waited: {}",
        dump(&relay, &up.smtp)
    );
}

// 4 -------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn upstream_550_reaches_a_waiting_device_and_nothing_is_kept() {
    let up = Upstream::start().await;
    let relay = Relay::start(&cfg(
        &up,
        &format!("wait_for_upstream = \"10s\"\nbounce_to = \"{ADMIN}\""),
    ));
    up.smtp.script(
        Stage::DataBody,
        "550 5.7.520 Access denied, Your organization does not allow external forwarding",
        1,
    );
    let r = send(&relay, &[]).await;
    assert_eq!(r[0]["ok"], false, "{r:?}");
    assert_eq!(r[0]["code"], 550, "{r:?}");
    assert!(
        r[0]["message"].as_str().unwrap().starts_with(
            "5.7.520 Access denied, Your organization does not allow external forwarding"
        ),
        "{r:?}"
    );
    assert!(up.smtp.messages().is_empty());
    for area in ["queue", "failed", "data"] {
        assert!(
            spool_ids(&relay.store(), area).is_empty(),
            "{area}: {:?}",
            spool_ids(&relay.store(), area)
        );
    }
    // and no notice, although bounce_to is set: the device was told
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(up.smtp.messages().is_empty(), "{}", dump(&relay, &up.smtp));
    assert!(!relay.logs().contains("failure notice queued"));
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_550_after_the_device_got_250_goes_to_failed_with_a_notice() {
    let up = Upstream::start().await;
    let relay = Relay::start(&cfg(
        &up,
        &format!("wait_for_upstream = \"0s\"\nbounce_to = \"{ADMIN}\""),
    ));
    up.smtp.script(
        Stage::DataBody,
        "550 5.7.520 Access denied, Your organization does not allow external forwarding",
        1,
    );
    let r = send(&relay, &["--subject", "Scan from 3rd floor 0042"]).await;
    assert_ok(&r[0]);
    let id = queue_id(&r[0]);
    let got = up.smtp.wait_for_messages(1, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 1, "{}", dump(&relay, &up.smtp));
    let n = &got[0];
    assert_eq!(n.rcpt_to, vec![ADMIN], "the notice goes to bounce_to");
    assert_eq!(n.mail_from, MAILBOX, "sent as the account's mailbox");
    let text = n.data_str();
    for needle in [
        "From: Mail Delivery System <scanner@contoso.com>\r\n",
        "To: <admin@contoso.com>\r\n",
        "Content-Type: multipart/report; report-type=delivery-status",
        "Content-Type: message/delivery-status",
        "Final-Recipient: rfc822; you@example.com\r\n",
        "Action: failed\r\n",
        "Status: 5.7.520\r\n",
        "Diagnostic-Code: smtp; 550 5.7.520 Access denied",
        "Subject: Scan from 3rd floor 0042",
        &format!("smtp2oauth queue requeue {id}"),
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    assert!(text.contains("\r\nStatus: 5."), "a 5.x.x status");
    // kept for the admin, not in the queue
    assert!(
        eventually(Duration::from_secs(20), || spool_ids(
            &relay.store(),
            "queue"
        )
        .is_empty())
        .await,
        "{:?}",
        spool_ids(&relay.store(), "queue")
    );
    assert_eq!(spool_ids(&relay.store(), "failed"), vec![id.clone()]);
    assert!(spool_ids(&relay.store(), "data").contains(&id));
    let failed = queue_json(&relay, "failed").await;
    assert_eq!(failed.keys().collect::<Vec<_>>(), vec![&id]);
    assert_eq!(failed[&id]["attempts"], 1);
    assert!(
        failed[&id]["last_error"]
            .as_str()
            .unwrap()
            .starts_with("550 5.7.520")
    );
    let show = relay.queue(&["show", &id]).await;
    assert_eq!(show.status, 0, "{}", show.stderr);
    for needle in [
        "state:       failed",
        "attempt 1: failed",
        "550 5.7.520 Access denied",
        "moved to failed",
        "failure notice",
        "queued to admin@contoso.com",
        "Subject: Scan from 3rd floor 0042",
    ] {
        assert!(
            show.stdout.contains(needle),
            "missing {needle:?} in\n{}",
            show.stdout
        );
    }
    // exactly one notice, and the refused message itself never reached the upstream
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(up.smtp.messages().len(), 1, "{}", dump(&relay, &up.smtp));
}

// 5 -------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn partial_rejection_delivers_to_the_others_and_reports_only_the_refused() {
    let up = Upstream::start().await;
    let relay = Relay::start(&cfg(&up, &format!("bounce_to = \"{ADMIN}\"")));
    // the first RCPT the fake sees (a@) is refused
    up.smtp.script(
        Stage::Rcpt,
        "550 5.1.1 RESOLVER.ADR.RecipNotFound; not found",
        1,
    );
    let r = send(
        &relay,
        &[
            "--to",
            "a@example.com",
            "--to",
            "b@example.com",
            "--to",
            "c@example.com",
            "--subject",
            "partial 77",
        ],
    )
    .await;
    assert_ok(&r[0]);
    assert!(
        r[0]["reply"]
            .as_str()
            .unwrap()
            .contains("to 2 of 3 recipients"),
        "{r:?}"
    );
    let id = queue_id(&r[0]);
    let got = up.smtp.wait_for_messages(2, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 2, "{}", dump(&relay, &up.smtp));
    let (notices, messages): (Vec<_>, Vec<_>) = got.iter().partition(|m| m.rcpt_to == [ADMIN]);
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].rcpt_to, vec!["b@example.com", "c@example.com"]);
    assert!(messages[0].data_str().contains("Subject: partial 77"));
    assert_eq!(notices.len(), 1);
    let text = notices[0].data_str();
    assert!(
        text.contains(
            "Final-Recipient: rfc822; a@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("550 5.1.1 RESOLVER.ADR.RecipNotFound"),
        "{text}"
    );
    assert!(
        !text.contains("Final-Recipient: rfc822; b@")
            && !text.contains("Final-Recipient: rfc822; c@"),
        "only the refused recipient is reported: {text}"
    );
    assert!(text.contains("Subject: partial 77"), "{text}");
    assert!(
        eventually(Duration::from_secs(20), || spool_ids(
            &relay.store(),
            "queue"
        )
        .is_empty())
        .await
    );
    assert_eq!(spool_ids(&relay.store(), "failed"), vec![id.clone()]);
    let show = relay.queue(&["show", &id]).await;
    assert!(
        show.stdout
            .contains("delivered:   b@example.com, c@example.com"),
        "{}",
        show.stdout
    );
    assert!(
        show.stdout
            .contains("refused:     a@example.com (550 5.1.1 RESOLVER.ADR.RecipNotFound"),
        "{}",
        show.stdout
    );
    // nobody gets a second copy
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(up.smtp.messages().len(), 2, "{}", dump(&relay, &up.smtp));
}

// 6 -------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn throttling_pauses_the_whole_account_for_the_hinted_time() {
    let up = Upstream::start().await;
    // One connection at a time, so B and C queue up behind A and would start the moment A's
    // attempt ends, were it not for the pause.
    let relay = Relay::start(&cfg(
        &up,
        "wait_for_upstream = \"0s\"\nmax_upstream_connections = 1",
    ));
    up.smtp.set_reply_delay(Duration::from_millis(300));
    up.smtp.script(
        Stage::Mail,
        "451 4.7.500 Server busy, retry after 3 seconds",
        1,
    );
    let a = send(&relay, &["--seq-start", "1"]).await;
    assert_ok(&a[0]);
    let bc = send(
        &relay,
        &["--count", "2", "--parallel", "2", "--seq-start", "2"],
    )
    .await;
    assert_ok(&bc[0]);
    assert_ok(&bc[1]);
    assert!(
        relay.wait_log("pausing all its deliveries", Duration::from_secs(60)),
        "{}",
        dump(&relay, &up.smtp)
    );
    // The pause started at most now; it lasts 3 s. Check with a margin for the log's latency.
    // What counts is MAIL: the refused session stays pooled and could carry B and C without
    // a new connection.
    let t0 = Instant::now();
    up.smtp.set_reply_delay(Duration::ZERO);
    let m0 = mail_commands(&up.smtp);
    assert_eq!(m0, 1, "only A's attempt so far: {}", dump(&relay, &up.smtp));
    while t0.elapsed() < Duration::from_millis(2500) {
        assert_eq!(
            mail_commands(&up.smtp),
            m0,
            "a delivery of the paused account started {:?} into a 3 s pause: {}",
            t0.elapsed(),
            dump(&relay, &up.smtp)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = up.smtp.wait_for_messages(3, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 3, "{}", dump(&relay, &up.smtp));
    assert!(
        t0.elapsed() >= Duration::from_millis(2500),
        "nothing was delivered during the pause"
    );
    let seqs: BTreeSet<_> = got.iter().filter_map(seq_of).collect();
    assert_eq!(seqs, BTreeSet::from([1, 2, 3]));
    let logs = relay.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("pausing all its deliveries") && l.contains("pause_secs=3")),
        "{}",
        dump(&relay, &up.smtp)
    );
    assert_eq!(
        logs.matches("pausing all its deliveries").count(),
        1,
        "B and C were not tried (and throttled) during the pause"
    );
    assert!(up.smtp.peak_connections() <= 1);
}

// 7 -------------------------------------------------------------------------------------------

/// xorshift64: kill points that differ between runs but can be replayed (E2E_SEED).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_under_load_loses_no_acknowledged_message() {
    const LIVES_KILLED: u64 = 8;
    const PER_LIFE: u64 = 90;
    const FINAL: u64 = 60;
    // Exchange's limit per mailbox, which the fake enforces.
    const MAX_CONN: usize = 3;
    let seed = std::env::var("E2E_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("crash test: E2E_SEED={seed}");
    let mut rng = Rng(seed);
    let up = Upstream::start().await;
    // A small delay per upstream reply widens the window between the upstream's 250 and our
    // removal of the message, where a kill makes a duplicate.
    up.smtp.set_reply_delay(Duration::from_millis(10));
    let store = tempfile::tempdir().unwrap();
    let toml = cfg(
        &up,
        &format!("wait_for_upstream = \"1s\"\nmax_upstream_connections = {MAX_CONN}"),
    );
    // info level: trace logging of 600 messages would slow the relay for nothing
    let env = [("RUST_LOG", "info")];
    let started = Instant::now();
    let mut results: Vec<Value> = Vec::new();
    let mut kills = 0;
    let batch = |port: String, start: u64, count: u64| {
        vec![
            "--port".to_string(),
            port,
            "--source".into(),
            "127.0.0.1".into(), // the address-listed device: no argon2 per session
            "--from".into(),
            MAILBOX.into(),
            "--to".into(),
            TO.into(),
            "--count".into(),
            count.to_string(),
            "--parallel".into(),
            "8".into(),
            "--per-session".into(),
            "5".into(),
            "--seq-start".into(),
            start.to_string(),
            "--timeout".into(),
            "30".into(),
        ]
    };
    for life in 0..LIVES_KILLED {
        let mut relay = Relay::start_on_env(&toml, store.path(), "", &env);
        let args = batch(relay.port("plain").to_string(), life * 1000, PER_LIFE);
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let delay = Duration::from_millis(300 + rng.next() % 2700);
        let before = up.smtp.messages().len();
        let (r, _) = tokio::join!(smtplib(&args), async {
            tokio::time::sleep(delay).await;
            relay.kill();
        });
        kills += 1;
        let acked = r.iter().filter(|x| x["ok"] == true).count();
        eprintln!(
            "crash test: life {life}: SIGKILL after {delay:?}: {acked}/{PER_LIFE} acknowledged, {} arrived upstream during this life",
            up.smtp.messages().len() - before
        );
        results.extend(r);
    }
    // The last life: no kill; more mail on top of what is left, then the queue must drain.
    let relay = Relay::start_on_env(&toml, store.path(), "", &env);
    let args = batch(relay.port("plain").to_string(), LIVES_KILLED * 1000, FINAL);
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    results.extend(smtplib(&args).await);
    let ok = drained(
        store.path(),
        &up.smtp,
        Duration::from_secs(3),
        Duration::from_secs(90),
    )
    .await;
    assert!(
        ok,
        "the queue did not drain: {:?}",
        spool_ids(store.path(), "queue")
    );

    let mut arrived: BTreeMap<u64, usize> = BTreeMap::new();
    let mut unnumbered = 0;
    for m in up.smtp.messages() {
        match seq_of(&m) {
            Some(s) => *arrived.entry(s).or_default() += 1,
            None => unnumbered += 1,
        }
        assert_eq!(m.rcpt_to, vec![TO]);
    }
    let sent = results.len();
    let acked: BTreeSet<u64> = results
        .iter()
        .filter(|r| r["ok"] == true)
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    let all: BTreeSet<u64> = results.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    let missing: Vec<u64> = acked
        .iter()
        .filter(|s| !arrived.contains_key(s))
        .copied()
        .collect();
    let duplicates: usize = arrived.values().map(|n| n - 1).sum();
    let duplicated: Vec<(u64, usize)> = arrived
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(s, n)| (*s, *n))
        .collect();
    let unacked_arrived = arrived.keys().filter(|s| !acked.contains(s)).count();
    let strangers: Vec<u64> = arrived
        .keys()
        .filter(|s| !all.contains(s))
        .copied()
        .collect();
    let refusals: BTreeMap<String, usize> =
        results
            .iter()
            .filter(|r| r["ok"] != true)
            .fold(BTreeMap::new(), |mut m, r| {
                *m.entry(format!("{} {}", r["stage"], r["code"]))
                    .or_default() += 1;
                m
            });
    eprintln!(
        "crash test: {sent} messages sent, {} acknowledged (250), {} never acknowledged \
         ({unacked_arrived} of those arrived anyway), {} distinct delivered, {} upstream copies, \
         {duplicates} duplicates {duplicated:?}, {kills} SIGKILLs, {:?} in all",
        acked.len(),
        sent - acked.len(),
        arrived.len(),
        arrived.values().sum::<usize>(),
        started.elapsed()
    );
    eprintln!("crash test: client failures by stage/code: {refusals:?}");
    assert!(sent as u64 >= LIVES_KILLED * PER_LIFE + FINAL);
    assert_eq!(unnumbered, 0, "messages that nobody sent arrived");
    assert!(strangers.is_empty(), "unknown seqs {strangers:?}");
    assert!(
        missing.is_empty(),
        "{} acknowledged messages never arrived: {missing:?}\n{}",
        missing.len(),
        dump(&relay, &up.smtp)
    );
    assert!(
        acked.len() >= 100,
        "too few messages were acknowledged for the test to mean anything: {}",
        acked.len()
    );
    // A duplicate needs a kill between the upstream's 250 and the spool update, so each kill
    // can make at most one per delivery in flight.
    assert!(
        duplicates <= kills * MAX_CONN,
        "{duplicates} duplicates from {kills} kills: {duplicated:?}"
    );
    assert!(spool_ids(store.path(), "failed").is_empty());
    assert!(
        spool_ids(store.path(), "data").is_empty(),
        "data files left behind: {:?}",
        spool_ids(store.path(), "data")
    );
}

// 8 -------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn below_min_free_space_mail_gets_452_and_queued_mail_is_still_delivered() {
    let up = Upstream::start().await;
    let store = tempfile::tempdir().unwrap();
    let toml = cfg(&up, "wait_for_upstream = \"0s\"");
    // queue a message while the upstream is down
    up.smtp.drop_at(Stage::Connect, 1000);
    let mut first = Relay::start_on(&toml, store.path(), "");
    let r = send(&first, &["--seq-start", "1"]).await;
    assert_ok(&r[0]);
    let id = queue_id(&r[0]);
    assert!(
        first.wait_log("scheduler::attempt: deferred", Duration::from_secs(30)),
        "{}",
        dump(&first, &up.smtp)
    );
    assert!(first.terminate().success());
    // a relay on the same store that believes the disk is full
    let mut relay = Relay::start_on(&toml, store.path(), "min_free_space = 100000000000000000");
    for _ in 0..2 {
        let r = send(&relay, &["--seq-start", "100"]).await;
        assert_eq!(r[0]["ok"], false, "{r:?}");
        assert_eq!(r[0]["stage"], "mail", "{r:?}");
        assert_eq!(r[0]["code"], 452, "{r:?}");
        assert!(
            r[0]["message"].as_str().unwrap().starts_with("4.3.1"),
            "{r:?}"
        );
    }
    assert!(relay.is_running());
    up.smtp.clear_scripts();
    let got = up.smtp.wait_for_messages(1, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 1, "{}", dump(&relay, &up.smtp));
    assert_eq!(seq_of(&got[0]), Some(1));
    assert!(
        drained(
            &relay.store(),
            &up.smtp,
            Duration::from_secs(3),
            Duration::from_secs(30)
        )
        .await
    );
    assert_eq!(up.smtp.messages().len(), 1);
    assert!(!spool_ids(&relay.store(), "queue").contains(&id));
    assert!(relay.is_running(), "{}", relay.logs());
    assert!(relay.terminate().success());
}

/// A small tmpfs the relay's store can fill; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
    /// The relay must run inside a mount namespace to see it (unprivileged fallback).
    wrapper: Option<Vec<String>>,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().display().to_string();
        if std::env::var_os("E2E_FORCE_UNSHARE").is_none() {
            let out = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", &path])
                .output();
            if matches!(&out, Ok(o) if o.status.success()) {
                return Some(Tmpfs { dir, wrapper: None });
            }
        }
        // Unprivileged: a user + mount namespace of our own, entered by the relay itself.
        let script = format!("mount -t tmpfs -o size={size} tmpfs '{path}' &&");
        let probe = std::process::Command::new("unshare")
            .args(["-rm", "sh", "-c", &format!("{script} true")])
            .output();
        if matches!(&probe, Ok(o) if o.status.success()) {
            return Some(Tmpfs {
                dir,
                wrapper: Some(vec![
                    "unshare".into(),
                    "-rm".into(),
                    "sh".into(),
                    "-c".into(),
                    script,
                ]),
            });
        }
        None
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if self.wrapper.is_none() {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_really_full_disk_gets_452_and_loses_nothing() {
    let Some(fs) = Tmpfs::mount("3m") else {
        assert!(
            std::env::var_os("SMTP2OAUTH_REQUIRE_CLIENTS").is_none(),
            "cannot mount a tmpfs (not root, no unprivileged namespaces), and \
             SMTP2OAUTH_REQUIRE_CLIENTS is set: the real-ENOSPC test must run"
        );
        eprintln!(
            "SKIPPED the real-ENOSPC part: cannot mount a tmpfs (not root, no unprivileged \
             namespaces); the min_free_space test still covers 452"
        );
        return;
    };
    eprintln!(
        "real ENOSPC on a 3 MiB tmpfs{}",
        if fs.wrapper.is_some() {
            " (in an unprivileged mount namespace)"
        } else {
            ""
        }
    );
    let up = Upstream::start().await;
    // No SIZE and no free-space margin: the disk really runs full while the message streams in.
    let toml = cfg(&up, "wait_for_upstream = \"0s\"")
        + &store_toml(&fs.dir.path().join("store"), "min_free_space = 0");
    up.smtp.drop_at(Stage::Connect, 100_000);
    let mut relay = Relay::start_cmd(&toml, &[], fs.wrapper.as_deref().unwrap_or(&[]));
    let dir = tempfile::tempdir().unwrap();
    let mut big =
        b"From: <scanner@contoso.com>\r\nTo: <you@example.com>\r\nSubject: big scan\r\n\r\n"
            .to_vec();
    while big.len() < 400 * 1024 {
        big.extend_from_slice(&[b'A' + (big.len() % 26) as u8; 76]);
        big.extend_from_slice(b"\r\n");
    }
    let f = file(dir.path(), "big.eml", &big).display().to_string();
    let mut results = Vec::new();
    let mut first_refusal = None;
    for i in 0..20u64 {
        let r = send(
            &relay,
            &["--file", &f, "--no-size", "--seq-start", &i.to_string()],
        )
        .await;
        let r = r.into_iter().next().unwrap();
        if r["ok"] != true {
            first_refusal = Some(r.clone());
        }
        results.push(r);
        if first_refusal.is_some() {
            break;
        }
    }
    let refusal = first_refusal.unwrap_or_else(|| {
        panic!(
            "20 messages of 400 KiB fit on a 3 MiB tmpfs? {results:?}\n{}",
            dump(&relay, &up.smtp)
        )
    });
    assert_eq!(
        refusal["code"],
        452,
        "{refusal}\n{}",
        dump(&relay, &up.smtp)
    );
    // a real write error while the body streamed in, not the free-space check at MAIL
    assert_eq!(refusal["stage"], "data", "{refusal}");
    assert!(
        relay.logs().contains("No space left on device"),
        "{}",
        dump(&relay, &up.smtp)
    );
    assert!(
        refusal["message"].as_str().unwrap().starts_with("4.3.1"),
        "{refusal}"
    );
    let acked: BTreeSet<u64> = results
        .iter()
        .filter(|r| r["ok"] == true)
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert!(acked.len() >= 2, "{results:?}");
    if fs.wrapper.is_none() {
        // Nothing half-written: the spool holds the acknowledged messages and nothing else
        // (the refused one's data file and envelope are gone, no temporary file is left).
        let store = relay.store();
        let queued = spool_ids(&store, "queue");
        assert_eq!(queued.len(), acked.len(), "{queued:?}");
        assert!(queued.iter().all(|n| !n.ends_with(".tmp")), "{queued:?}");
        assert_eq!(spool_ids(&store, "data"), queued, "a data file per message");
    }
    eprintln!(
        "real ENOSPC: {} messages accepted, then {} {}",
        acked.len(),
        refusal["code"],
        refusal["message"]
    );
    assert!(relay.is_running(), "{}", relay.logs());
    // still full: refused again, not crashed
    let r = send(&relay, &["--file", &f, "--no-size", "--seq-start", "500"]).await;
    assert_eq!(r[0]["code"], 452, "{r:?}");
    assert!(relay.is_running(), "{}", relay.logs());
    // the upstream comes back: everything acknowledged is delivered, which frees the space
    up.smtp.clear_scripts();
    let got = up
        .smtp
        .wait_for_messages(acked.len(), Duration::from_secs(90))
        .await;
    let arrived: BTreeSet<u64> = got.iter().filter_map(seq_of).collect();
    assert_eq!(arrived, acked, "{}", dump(&relay, &up.smtp));
    let big_len = big.len();
    for m in &got {
        assert!(
            strip_received(&m.data).len() + 2 >= big_len,
            "complete copies"
        );
    }
    // space is free again: new mail is accepted and delivered
    assert!(
        eventually(Duration::from_secs(30), || spool_ids(
            &relay.store(),
            "queue"
        )
        .is_empty()
            || fs.wrapper.is_some())
        .await
    );
    let r = send(&relay, &["--file", &f, "--no-size", "--seq-start", "900"]).await;
    assert_ok(&r[0]);
    let got = up
        .smtp
        .wait_for_messages(acked.len() + 1, Duration::from_secs(60))
        .await;
    assert!(got.iter().any(|m| seq_of(m) == Some(900)));
    assert_eq!(got.len(), acked.len() + 1, "{}", dump(&relay, &up.smtp));
    assert!(relay.is_running());
    assert!(!relay.logs().contains("panicked"), "{}", relay.logs());
    assert!(relay.terminate().success());
    drop(fs);
}

// 9 -------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn queue_cli_on_a_populated_spool_with_the_relay_running_and_stopped() {
    let up = Upstream::start().await;
    let store = tempfile::tempdir().unwrap();
    // Nothing retries by itself during the test: only the admin's commands cause attempts.
    let toml = cfg(
        &up,
        "wait_for_upstream = \"0s\"\nretry_initial = \"1h\"\nretry_max = \"1h\"",
    );
    let mut relay = Relay::start_on(&toml, store.path(), "");
    up.smtp
        .script(Stage::Mail, "451 4.3.0 Temporary server error", 1000);
    let mut ids = Vec::new();
    for i in 1..=3 {
        let r = send(&relay, &["--subject", &format!("cli message {i}")]).await;
        assert_ok(&r[0]);
        ids.push(queue_id(&r[0]));
    }
    let (id1, id2, id3) = (ids[0].clone(), ids[1].clone(), ids[2].clone());
    // list --json: each queued, one attempt, the upstream's reply as last error
    let mut list = BTreeMap::new();
    let settled = async {
        for _ in 0..300 {
            list = queue_json(&relay, "list").await;
            if list.len() == 3 && list.values().all(|v| v["attempts"] == 1) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }
    .await;
    assert!(settled, "{list:?}\n{}", dump(&relay, &up.smtp));
    for id in &ids {
        let v = &list[id];
        assert_eq!(v["account"], "scanner");
        assert_eq!(v["sender"], MAILBOX);
        assert_eq!(v["recipients"], serde_json::json!([TO]));
        assert!(v["size"].as_u64().unwrap() > 0);
        assert_eq!(v["last_error"], "451 4.3.0 Temporary server error", "{v}");
        assert!(v["next_attempt_ms"].as_u64().is_some(), "{v}");
    }
    // the text listing too
    let text = relay.queue(&["list"]).await;
    assert_eq!(text.status, 0);
    assert!(text.stdout.contains(&id1) && text.stdout.contains("3 message(s)."));
    assert!(text.stdout.contains("451 4.3.0 Temporary server error"));
    // show: envelope, history and headers, no secrets
    let show = relay.queue(&["show", &id1]).await;
    assert_eq!(show.status, 0, "{}", show.stderr);
    for needle in [
        format!("id:          {id1}"),
        "state:       queued".into(),
        "device:      mfp-3f".into(),
        "attempts:    1".into(),
        "attempt 1: deferred at mail  451 4.3.0 Temporary server error".into(),
        "Subject: cli message 1".into(),
        "Received: ".into(),
    ] {
        assert!(
            show.stdout.contains(&needle),
            "{needle:?} in\n{}",
            show.stdout
        );
    }
    for secret in [DEVICE_PASSWORD, CLIENT_SECRET] {
        assert!(!show.stdout.contains(secret));
    }

    // retry ID: an attempt now, through control/ (the relay holds the lock)
    let out = relay.queue(&["retry", &id1]).await;
    assert_eq!(out.status, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains(&format!("retry {id1}: {id1} is being attempted now")),
        "{}",
        out.stdout
    );
    let retried = async {
        for _ in 0..300 {
            let l = queue_json(&relay, "list").await;
            if l[&id1]["attempts"] == 2 {
                return Some(l);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }
    .await;
    let l = retried.unwrap_or_else(|| panic!("retry did not attempt: {}", dump(&relay, &up.smtp)));
    assert_eq!(l[&id2]["attempts"], 1, "only the one asked for");
    assert!(spool_ids(store.path(), "control").is_empty());

    // delete ID: envelope and data gone
    let out = relay.queue(&["delete", &id2]).await;
    assert_eq!(out.status, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("is deleted"), "{}", out.stdout);
    assert!(
        eventually(Duration::from_secs(15), || {
            !spool_ids(store.path(), "queue").contains(&id2)
                && !spool_ids(store.path(), "data").contains(&id2)
        })
        .await
    );
    assert!(!queue_json(&relay, "list").await.contains_key(&id2));

    // bad ids: non-zero exit and a clear message
    for args in [
        vec!["show", "0123456789abcdef"],
        vec!["delete", "../../etc/passwd"],
        vec!["retry", "nonsense"],
        vec!["requeue", "0123"],
    ] {
        let out = relay.queue(&args).await;
        assert_ne!(out.status, 0, "{args:?}: {}", out.stdout);
        assert!(
            out.stderr.contains("is not a queue id")
                || out.stderr.contains("no message 0123456789abcdef"),
            "{args:?}: {}",
            out.stderr
        );
    }
    let out = relay.queue(&["retry"]).await;
    assert_ne!(out.status, 0);
    assert!(
        out.stderr.contains("give a queue id or --all"),
        "{}",
        out.stderr
    );

    // failed: a permanent refusal after the device got 250 is kept and listed
    up.smtp.clear_scripts();
    up.smtp.script(
        Stage::DataBody,
        "550 5.7.1 Message rejected for the test",
        1,
    );
    let r = send(&relay, &["--subject", "cli message 4"]).await;
    assert_ok(&r[0]);
    let id4 = queue_id(&r[0]);
    assert!(
        eventually(Duration::from_secs(30), || spool_ids(
            store.path(),
            "failed"
        ) == [id4.clone()])
        .await,
        "{}",
        dump(&relay, &up.smtp)
    );
    let failed = queue_json(&relay, "failed").await;
    assert_eq!(
        failed.keys().cloned().collect::<Vec<_>>(),
        vec![id4.clone()]
    );
    assert_eq!(
        failed[&id4]["last_error"],
        "550 5.7.1 Message rejected for the test"
    );
    let text = relay.queue(&["failed"]).await;
    assert!(
        text.stdout.contains(&id4) && text.stdout.contains("1 message(s)."),
        "{}",
        text.stdout
    );
    let show = relay.queue(&["show", &id4]).await;
    assert!(
        show.stdout.contains("state:       failed"),
        "{}",
        show.stdout
    );
    assert!(
        show.stdout
            .contains("refused:     you@example.com (550 5.7.1"),
        "{}",
        show.stdout
    );

    // The relay stopped: the command changes the files itself.
    assert!(relay.terminate().success());
    assert!(up.smtp.messages().is_empty());
    let list = queue_json(&relay, "list").await;
    assert_eq!(
        list.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([id1.clone(), id3.clone()])
    );
    assert_eq!(list[&id1]["attempts"], 2);
    let out = relay.queue(&["retry", &id3]).await;
    assert_eq!(out.status, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("delivered when the relay next runs"),
        "{}",
        out.stdout
    );
    let show = relay.queue(&["show", &id3]).await;
    assert!(
        show.stdout.contains("retry requested by the admin"),
        "{}",
        show.stdout
    );
    let out = relay.queue(&["delete", &id1]).await;
    assert_eq!(out.status, 0, "{}{}", out.stdout, out.stderr);
    assert!(!spool_ids(store.path(), "queue").contains(&id1));
    assert!(!spool_ids(store.path(), "data").contains(&id1));
    let out = relay.queue(&["delete", &id1]).await;
    assert_ne!(out.status, 0, "deleting twice: {}", out.stdout);
    assert!(out.stderr.contains("no message"), "{}", out.stderr);
    // delete works on the failed area too
    assert_eq!(queue_json(&relay, "failed").await.len(), 1);
    let out = relay.queue(&["delete", &id4]).await;
    assert_eq!(out.status, 0, "{}{}", out.stdout, out.stderr);
    assert!(spool_ids(store.path(), "failed").is_empty());
    assert!(!spool_ids(store.path(), "data").contains(&id4));
    assert_eq!(spool_ids(store.path(), "queue"), vec![id3.clone()]);
    // id3 (retry requested) is due at once when a relay starts again, although retry_initial
    // is an hour; the deleted ones are never sent.
    let relay = Relay::start_on(&toml, store.path(), "");
    let got = up.smtp.wait_for_messages(1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1, "{}", dump(&relay, &up.smtp));
    assert!(got[0].data_str().contains("Subject: cli message 3"));
    assert!(
        drained(
            store.path(),
            &up.smtp,
            Duration::from_secs(3),
            Duration::from_secs(20)
        )
        .await
    );
    assert_eq!(up.smtp.messages().len(), 1, "deleted messages stay deleted");
    assert!(spool_ids(store.path(), "data").is_empty());
}

/// The failure notice tells the admin "to retry it after fixing the cause: smtp2oauth queue
/// requeue ID". The requeued message goes back to `queue/`, but its history says its recipient
/// was refused for good, so the next "attempt" finds nothing left to deliver and moves it straight
/// back to `failed/` without contacting the upstream (with the relay running or stopped).
#[tokio::test(flavor = "multi_thread")]
async fn requeue_after_a_permanent_refusal_delivers_once_the_upstream_accepts() {
    let up = Upstream::start().await;
    let store = tempfile::tempdir().unwrap();
    let toml = cfg(&up, "wait_for_upstream = \"0s\"");
    let mut relay = Relay::start_on(&toml, store.path(), "");
    up.smtp.script(
        Stage::DataBody,
        "550 5.7.1 Message rejected for the test",
        2,
    );
    let mut ids = Vec::new();
    for subject in ["requeued running", "requeued stopped"] {
        let r = send(&relay, &["--subject", subject]).await;
        assert_ok(&r[0]);
        ids.push(queue_id(&r[0]));
        let id = ids.last().unwrap().clone();
        assert!(
            eventually(Duration::from_secs(30), || spool_ids(
                store.path(),
                "failed"
            )
            .contains(&id))
            .await,
            "{}",
            dump(&relay, &up.smtp)
        );
    }
    assert!(up.smtp.messages().is_empty());
    // the cause is fixed: the upstream accepts now
    let out = relay.queue(&["requeue", &ids[0]]).await;
    assert_eq!(out.status, 0, "{}{}", out.stdout, out.stderr);
    let running = up.smtp.wait_for_messages(1, Duration::from_secs(20)).await;
    let running_ok = running
        .iter()
        .any(|m| m.data_str().contains("Subject: requeued running"));
    assert!(relay.terminate().success());
    let log_running = dump(&relay, &up.smtp);
    let out = relay.queue(&["requeue", &ids[1]]).await;
    assert_eq!(out.status, 0, "{}{}", out.stdout, out.stderr);
    let relay = Relay::start_on(&toml, store.path(), "");
    let n = up.smtp.messages().len();
    let stopped = up
        .smtp
        .wait_for_messages(n + 1, Duration::from_secs(20))
        .await;
    let stopped_ok = stopped
        .iter()
        .any(|m| m.data_str().contains("Subject: requeued stopped"));
    assert!(
        running_ok && stopped_ok,
        "requeued with the relay running: delivered={running_ok}; requeued with it stopped: \
         delivered={stopped_ok}; failed/ now holds {:?}\n{log_running}\n{}",
        spool_ids(store.path(), "failed"),
        dump(&relay, &up.smtp)
    );
    assert!(spool_ids(store.path(), "failed").is_empty());
}

// 10 ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_a_delivery_exits_in_time_and_loses_nothing() {
    let up = Upstream::start().await;
    let store = tempfile::tempdir().unwrap();
    let toml = cfg(&up, "wait_for_upstream = \"1s\"\nshutdown_timeout = \"3s\"");
    let mut relay = Relay::start_on(&toml, store.path(), "");
    // every upstream reply takes 2 s: a delivery needs well over 10 s
    up.smtp.set_reply_delay(Duration::from_secs(2));
    let r = send(
        &relay,
        &["--count", "3", "--parallel", "3", "--seq-start", "1"],
    )
    .await;
    for x in &r {
        assert_ok(x);
        assert!(x["reply"].as_str().unwrap().contains("queued as"), "{x}");
    }
    assert!(
        eventually(Duration::from_secs(20), || up.smtp.active_connections()
            >= 1)
        .await,
        "deliveries are in progress"
    );
    let t = Instant::now();
    let status = relay.terminate();
    let took = t.elapsed();
    assert!(status.success(), "{status:?}\n{}", relay.logs());
    eprintln!("SIGTERM with deliveries in progress: exited in {took:?}");
    // shutdown_timeout is 3 s; allow a loaded machine plenty on top
    assert!(took < Duration::from_secs(20), "{took:?}");
    let logs = relay.logs();
    assert!(logs.contains("SIGTERM: shutting down") && logs.contains("stopped"));
    assert!(
        logs.contains("deliveries still running at shutdown"),
        "the cut-off deliveries are reported: {}",
        dump(&relay, &up.smtp)
    );
    // Each delivery needs seven 2 s replies: none can have finished, all are still queued.
    assert!(up.smtp.messages().is_empty());
    assert_eq!(
        spool_ids(store.path(), "queue").len(),
        3,
        "{}",
        dump(&relay, &up.smtp)
    );
    up.smtp.set_reply_delay(Duration::ZERO);
    let relay = Relay::start_on(&toml, store.path(), "");
    assert!(
        drained(
            store.path(),
            &up.smtp,
            Duration::from_secs(3),
            Duration::from_secs(60)
        )
        .await
    );
    let mut count: BTreeMap<u64, usize> = BTreeMap::new();
    for m in up.smtp.messages() {
        *count.entry(seq_of(&m).unwrap()).or_default() += 1;
    }
    assert_eq!(
        count.keys().copied().collect::<Vec<_>>(),
        vec![1, 2, 3],
        "{}",
        dump(&relay, &up.smtp)
    );
    eprintln!(
        "SIGTERM: duplicates after restart: {}",
        count.values().map(|n| n - 1).sum::<usize>()
    );
}

// 11 ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_new_relay_delivers_what_an_earlier_one_left_queued() {
    let up = Upstream::start().await;
    let store = tempfile::tempdir().unwrap();
    let toml = cfg(&up, "wait_for_upstream = \"0s\"");
    up.smtp.drop_at(Stage::Connect, 1000);
    let mut first = Relay::start_on(&toml, store.path(), "");
    let r = send(
        &first,
        &["--count", "3", "--parallel", "3", "--seq-start", "1"],
    )
    .await;
    for x in &r {
        assert_ok(x);
    }
    assert!(
        eventually(Duration::from_secs(30), || {
            first.logs().matches("scheduler::attempt: deferred").count() >= 3
        })
        .await,
        "{}",
        dump(&first, &up.smtp)
    );
    assert!(first.terminate().success());
    assert_eq!(spool_ids(store.path(), "queue").len(), 3);
    assert!(up.smtp.messages().is_empty());
    up.smtp.clear_scripts();
    let relay = Relay::start_on(&toml, store.path(), "");
    assert!(
        relay.logs().lines().any(|l| {
            l.contains("queued messages from an earlier run scheduled for delivery")
                && l.contains("messages=3")
        }),
        "{}",
        relay.logs()
    );
    let got = up.smtp.wait_for_messages(3, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 3, "{}", dump(&relay, &up.smtp));
    let seqs: BTreeSet<_> = got.iter().filter_map(seq_of).collect();
    assert_eq!(seqs, BTreeSet::from([1, 2, 3]));
    assert!(
        drained(
            store.path(),
            &up.smtp,
            Duration::from_secs(3),
            Duration::from_secs(30)
        )
        .await
    );
    assert_eq!(up.smtp.messages().len(), 3);
    assert!(spool_ids(store.path(), "data").is_empty());
}

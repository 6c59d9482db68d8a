//! The command line as scripts use it: every command that prints, into a pipe whose reader has
//! gone (`smtp2oauth queue list | head -1`), stops quietly with status 0 instead of panicking;
//! queue actions carried out by the running relay report its answer; times read as local date
//! and time with their age; `health` speaks words unless asked for JSON.

use crate::harness::*;
use smtp2oauth_testkit::Stage;
use std::process::{Command, Stdio};

/// Runs the binary with its standard output on a pipe whose read end is already closed, so
/// the first write fails as it does after `| head -1`; `stderr_closed` closes standard error
/// the same way (`2>&1 | head -1`). Returns the exit code and standard error.
fn into_closed_pipe(args: &[&str], stdin: &[u8], stderr_closed: bool) -> (Option<i32>, String) {
    use std::io::Write;
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(writer.try_clone().unwrap());
    if stderr_closed {
        cmd.stderr(writer);
    } else {
        cmd.stderr(Stdio::piped());
    }
    let mut child = cmd.spawn().unwrap();
    let _ = child.stdin.take().unwrap().write_all(stdin);
    let out = child.wait_with_output().unwrap();
    drop(cmd);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_quiet_exit(args: &[&str], stdin: &[u8]) {
    let (code, stderr) = into_closed_pipe(args, stdin, false);
    assert_eq!(code, Some(0), "{args:?} into a closed pipe:\n{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "{args:?}:\n{stderr}"
    );
}

/// A relay whose upstream refuses every MAIL for now, holding one message smtplib sent (its
/// queue id), retried only in an hour.
async fn relay_holding_one_message() -> (Upstream, Relay, String) {
    let up = Upstream::start().await;
    let toml = with_delivery(
        &relay_toml(&up.pki, &up.account_toml(""), ""),
        "wait_for_upstream = \"0s\"\nretry_initial = \"1h\"\nretry_max = \"1h\"",
    );
    let relay = Relay::start(&toml);
    up.smtp
        .script(Stage::Mail, "451 4.3.0 Temporary server error", 1000);
    let r = send_as_device(&relay, MAILBOX, &[]).await;
    assert_eq!(r[0]["code"], 250, "{r:?}");
    let id = spool_ids(&relay.store(), "queue")
        .pop()
        .expect("a queued message");
    (up, relay, id)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_printing_command_stops_quietly_when_its_reader_goes() {
    let (_up, relay, id) = relay_holding_one_message().await;
    let config = relay.config.display().to_string();
    let admin = format!("http://{}", relay.addr("admin"));
    let c = config.as_str();
    for args in [
        vec!["queue", "--config", c, "list"],
        vec!["queue", "--config", c, "list", "--json"],
        vec!["queue", "--config", c, "failed"],
        vec!["queue", "--config", c, "show", &id],
        vec!["queue", "--config", c, "retry", &id],
        vec!["account", "--config", c, "list"],
        vec!["account", "--config", c, "status", "scanner"],
        vec!["check-config", "--config", c],
        vec!["health", "--url", &admin],
        vec!["health", "--ready", "--url", &admin],
        vec!["health", "--ready", "--json", "--url", &admin],
        vec!["keygen"],
        vec!["--version"],
        vec!["--help"],
        vec!["queue", "--help"],
        vec![
            "send-test",
            "--config",
            c,
            "--account",
            "scanner",
            "--to",
            "you@example.com",
        ],
    ] {
        assert_quiet_exit(&args, b"");
    }
    assert_quiet_exit(&["hash-password"], b"a password\n");
    // A failing command whose standard error is gone too still says so by its status.
    let typo = file(
        relay.dir.path(),
        "typo.toml",
        b"[server]\nhostnme = \"x\"\n",
    );
    let (code, _) = into_closed_pipe(
        &["check-config", "--config", typo.to_str().unwrap()],
        b"",
        true,
    );
    assert_eq!(code, Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_actions_report_the_running_relays_answer_and_times_read_as_dates() {
    let (_up, relay, id) = relay_holding_one_message().await;

    // An id the queue does not hold: the relay's reason, status 1.
    let out = relay.queue(&["delete", "deadbeefdeadbeef"]).await;
    assert_eq!(out.status, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("delete deadbeefdeadbeef: no message deadbeefdeadbeef in the queue"),
        "{out:?}"
    );
    // Every message needs --all spelled out; no target at all is refused too.
    let out = relay.queue(&["delete", "all"]).await;
    assert_eq!(out.status, 2, "{out:?}");
    assert!(
        out.stderr.contains("is not a queue id") && out.stderr.contains("spell out --all"),
        "{out:?}"
    );
    let out = relay.queue(&["delete"]).await;
    assert_eq!(out.status, 2, "{out:?}");
    assert!(out.stderr.contains("give a queue id or --all"), "{out:?}");
    assert_eq!(spool_ids(&relay.store(), "queue"), vec![id.clone()]);

    // Times: local date and time with the offset, and the age.
    let wait_for_attempt = async {
        for _ in 0..200 {
            let show = relay.queue(&["show", &id]).await;
            if show.stdout.contains("attempt 1:") {
                return show;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("no attempt recorded for {id}");
    };
    let show = wait_for_attempt.await;
    assert_eq!(show.status, 0, "{show:?}");
    let received = show
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("received:    "))
        .unwrap_or_else(|| panic!("{}", show.stdout));
    assert!(is_local_time_with_age(received, " ago)"), "{received}");
    let next = show
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("next:        "))
        .unwrap_or_else(|| panic!("{}", show.stdout));
    assert!(is_local_time_with_age(next, ")"), "{next}");
    assert!(next.contains("(in "), "{next}");
    let attempt = show
        .stdout
        .lines()
        .find(|l| l.contains("attempt 1:"))
        .unwrap();
    assert!(
        is_local_time_with_age(attempt.trim_start().split("  ").next().unwrap(), " ago)"),
        "{attempt}"
    );
    assert!(!show.stdout.contains("since epoch"), "{}", show.stdout);

    // The deletion the relay can do: status 0, and the message is gone.
    let out = relay.queue(&["delete", &id]).await;
    assert_eq!(out.status, 0, "{out:?}");
    assert!(out.stdout.contains(&format!("delete {id}")), "{out:?}");
    assert!(spool_ids(&relay.store(), "queue").is_empty());
    // A second time, it is no longer there.
    let out = relay.queue(&["delete", &id]).await;
    assert_eq!(out.status, 1, "{out:?}");
    assert!(out.stderr.contains(&format!("no message {id}")), "{out:?}");

    // health: words by default, the server's JSON on request.
    let admin = format!("http://{}", relay.addr("admin"));
    let out = run(
        BIN,
        &[
            "health".into(),
            "--ready".into(),
            "--url".into(),
            admin.clone(),
        ],
    )
    .await;
    assert_eq!(out.status, 0, "{out:?}");
    assert!(
        out.stdout.starts_with(&format!("ready: {admin}/readyz\n")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("\n  ok      listeners  3 of 3 listeners"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("\n  ok      spool "), "{}", out.stdout);
    assert!(out.stdout.contains("\n  scanner "), "{}", out.stdout);
    let out = run(
        BIN,
        &[
            "health".into(),
            "--ready".into(),
            "--json".into(),
            "--url".into(),
            admin,
        ],
    )
    .await;
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["ready"], true, "{json}");
}

/// `2026-12-06 12:10:31 +01:00 (18 s ago)`: a date, a time, an offset, and an age ending in
/// `end`.
fn is_local_time_with_age(s: &str, end: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    s.len() > 28
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[10] == b' '
        && digits(11..13)
        && b[13] == b':'
        && (b[20] == b'+' || b[20] == b'-')
        && b[23] == b':'
        && s[26..].starts_with(" (")
        && s.ends_with(end)
}

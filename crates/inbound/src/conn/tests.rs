//! The driver over an in-memory pipe: what the session reports is carried out (here, failed
//! logins counted against the client's address).

use super::*;
use crate::guard::{GuardSettings, LoginGuard};
use crate::identity::Directory;
use crate::limiter::Limiter;
use crate::observe::{ReplyEvent, SessionSummary};
use crate::session::ListenerSettings;
use smtp2oauth_config::ListenerTls;
use smtp2oauth_spool::Area;
use tokio::io::{AsyncBufReadExt, BufReader};

struct Queues;

impl Submit for Queues {
    fn submit(&self, message: Queued) -> Pin<Box<dyn Future<Output = Reply> + Send + '_>> {
        Box::pin(async move { ok::queued(message.id().as_str()) })
    }
}

/// A device that logs in (`mfp`, whose password is never right here) and one recognised by
/// its address (`ups`, 10.0.0.8).
fn directory() -> Directory {
    let toml = r#"
[[listeners]]
address = "127.0.0.1:2525"
[[accounts]]
name = "scanner"
mailbox = "scanner@contoso.com"
route = "capture"
[[devices]]
username = "mfp"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$ZHVtbXlzYWx0ZHVtbXk$5oKfUJ0g0vwnmSpS4y0P0b3Gv7oUr2j0d9cM3jVvQ0g"
account = "scanner"
[[devices]]
name = "ups"
auth = false
allow_ips = ["10.0.0.8/32"]
account = "scanner"
"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, toml).unwrap();
    let cfg = smtp2oauth_config::parse(Some(&path), Vec::new()).unwrap();
    Directory::from_config(&cfg).unwrap()
}

/// A relay context with `lockout_after` failed logins per address and 2 per session.
fn inbound(spool: Spool, lockout_after: u32) -> Arc<Inbound> {
    observed(spool, lockout_after, None)
}

/// [`inbound`] with an observer on its replies.
fn observed(spool: Spool, lockout_after: u32, observer: Option<Arc<dyn Observer>>) -> Arc<Inbound> {
    Arc::new(Inbound {
        hostname: "relay.test".into(),
        limits: Limits {
            min_free_space: 0,
            max_message_size: 10_000,
            max_recipients: 3,
            max_auth_failures: 2,
            max_errors: 12,
        },
        max_line_length: 1000,
        command_timeout: Duration::from_secs(10),
        data_timeout: Duration::from_secs(10),
        session_timeout: Duration::from_secs(30),
        add_received_header: true,
        directory: Arc::new(directory()),
        spool,
        submit: Arc::new(Queues),
        preauth_timeout: Duration::from_secs(20),
        limiter: Limiter::new(crate::limiter::LimiterSettings {
            max_sessions: 10,
            max_sessions_per_ip: 10,
            max_unauthenticated_per_ip: 10,
        }),
        shutdown: CancellationToken::new(),
        metrics: None,
        guard: Arc::new(LoginGuard::new(
            GuardSettings {
                lockout_after,
                user_lockout_after: 20,
                lockout_window: Duration::from_secs(600),
                lockout_time: Duration::from_secs(60),
                lockout_max: Duration::from_secs(300),
                exempt: Vec::new(),
            },
            crate::known::KnownLogins::in_memory(),
        )),
        max_commands: 100,
        max_session_bytes: 1 << 20,
        observer,
    })
}

/// Runs one session from `peer` with `lines`; returns the last reply line the client read.
async fn session_from(ctx: &Arc<Inbound>, peer: &str, lines: &[&str]) -> String {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let listener = Arc::new(ListenerRuntime {
        settings: Arc::new(ListenerSettings {
            label: "test".into(),
            tls: ListenerTls::None,
            require_tls: false,
            allow_insecure_auth: true,
        }),
        tls: None,
    });
    let peer: SocketAddr = format!("{peer}:40000").parse().unwrap();
    let permit = ctx
        .limiter
        .try_acquire(peer.ip(), false)
        .expect("a free slot");
    let served = tokio::spawn(serve(ctx.clone(), listener, server, peer, permit));
    let (read, mut write) = tokio::io::split(client);
    let mut read = BufReader::new(read);
    let mut last = String::new();
    let mut line = String::new();
    read.read_line(&mut line).await.unwrap(); // greeting
    for l in lines {
        write
            .write_all(format!("{l}\r\n").as_bytes())
            .await
            .unwrap();
        loop {
            line.clear();
            if read.read_line(&mut line).await.unwrap() == 0 {
                break;
            }
            if line.as_bytes().get(3) == Some(&b' ') {
                break;
            }
        }
        last = line.trim_end().to_string();
    }
    // The client goes away.
    drop((read, write));
    served.await.unwrap();
    last
}

async fn session(ctx: &Arc<Inbound>, lines: &[&str]) -> String {
    session_from(ctx, "10.0.0.7", lines).await
}

/// The session's last allowed failure closes the connection, and it is counted against the
/// address like every other: with two failures allowed per session and per address, the
/// second failure of one session locks the address out, whether it was a wrong password or an
/// AUTH PLAIN message that is not one.
#[tokio::test]
async fn the_last_failed_login_of_a_session_counts_towards_the_lockout() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open_with(dir.path(), false).unwrap();
    let peer: std::net::IpAddr = "10.0.0.7".parse().unwrap();
    let wrong = "AUTH PLAIN AG1mcAB3cm9uZw=="; // mfp / wrong
    let malformed = "AUTH PLAIN bm9udWxz"; // no NULs: not a PLAIN message

    for last in [malformed, wrong] {
        let ctx = inbound(spool.clone(), 2);
        let end = session(&ctx, &["EHLO printer", wrong, last]).await;
        assert!(
            end.starts_with("421 4.7.0 Too many failed logins from your address"),
            "{last}: {end}"
        );
        assert!(ctx.guard.locked(peer).is_some(), "{last}");
    }

    // The session's own limit closes it when the address is not locked out.
    let ctx = inbound(spool.clone(), 10);
    let end = session(&ctx, &["EHLO printer", wrong, malformed]).await;
    assert!(
        end.starts_with("421 4.7.0 Too many failed authentication attempts"),
        "{end}"
    );
    assert!(ctx.guard.locked(peer).is_none());
}

/// A message is spooled and handed on; one over the size limit is refused after its final
/// dot, counted as an error, and the session goes on.
#[tokio::test]
async fn messages_are_spooled_or_refused_after_the_final_dot() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open_with(dir.path(), false).unwrap();
    let ctx = inbound(spool.clone(), 5);
    let big = format!("Subject: x\r\n\r\n{}\r\n.", "y".repeat(20_000));
    let envelope = [
        "MAIL FROM:<scanner@contoso.com>",
        "RCPT TO:<a@example.com>",
        "DATA",
    ];
    let mut lines = vec!["EHLO ups"];
    lines.extend(envelope);
    lines.push(&big);
    let refused = session_from(&ctx, "10.0.0.8", &lines).await;
    assert!(refused.starts_with("552 5.3.4"), "{refused}");
    assert!(spool.list(Area::Queue).await.unwrap().is_empty());
    assert_eq!(
        std::fs::read_dir(dir.path().join("data")).unwrap().count(),
        0
    );

    lines.pop();
    lines.push("Subject: scan\r\n\r\nhello\r\n.");
    let queued = session_from(&ctx, "10.0.0.8", &lines).await;
    assert!(queued.starts_with("250 2.0.0 OK: queued as"), "{queued}");
    let ids = spool.list(Area::Queue).await.unwrap();
    assert_eq!(ids.len(), 1);
    let q = spool.read(&ids[0], Area::Queue).await.unwrap();
    let bytes = std::fs::read(&q.data_path).unwrap();
    assert!(
        bytes.starts_with(b"Received: from ups"),
        "our Received header first"
    );
    assert!(bytes.ends_with(b"Subject: scan\r\n\r\nhello\r\n"));
    assert_eq!(q.envelope.device, "ups");
    assert_eq!(q.envelope.recipients, ["a@example.com"]);
}

/// A device's side of a session over an in-memory pipe, for tests that hold several open.
struct Client {
    read: BufReader<tokio::io::ReadHalf<tokio::io::DuplexStream>>,
    write: tokio::io::WriteHalf<tokio::io::DuplexStream>,
    served: tokio::task::JoinHandle<()>,
}

impl Client {
    /// Connects from `peer` the way the accept loop does (a slot first); returns the greeting.
    async fn connect(ctx: &Arc<Inbound>, peer: &str) -> (Client, String) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let listener = Arc::new(ListenerRuntime {
            settings: Arc::new(ListenerSettings {
                label: "test".into(),
                tls: ListenerTls::None,
                require_tls: false,
                allow_insecure_auth: true,
            }),
            tls: None,
        });
        let peer: SocketAddr = format!("{peer}:40000").parse().unwrap();
        let known = ctx.directory.device_for_address(peer.ip()).is_some();
        let permit = ctx.limiter.try_acquire(peer.ip(), known).expect("a slot");
        let served = tokio::spawn(serve(ctx.clone(), listener, server, peer, permit));
        let (read, write) = tokio::io::split(client);
        let mut c = Client {
            read: BufReader::new(read),
            write,
            served,
        };
        let greeting = c.reply().await;
        (c, greeting)
    }

    /// The next whole reply's last line ("" when the relay closed the connection).
    async fn reply(&mut self) -> String {
        let mut line = String::new();
        loop {
            line.clear();
            if self.read.read_line(&mut line).await.unwrap() == 0 {
                return String::new();
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return line.trim_end().to_string();
            }
        }
    }

    async fn send(&mut self, line: &str) -> String {
        self.write
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
        self.reply().await
    }
}

/// What an observer saw of one reply.
#[derive(Clone, Debug)]
struct Seen {
    command: Command,
    code: u16,
    about: About,
    refusal: Option<SessionError>,
    device: Option<String>,
    username: Option<String>,
}

#[derive(Default)]
struct Recorder {
    replies: std::sync::Mutex<Vec<Seen>>,
    ended: std::sync::Mutex<Vec<SessionSummary>>,
}

impl Observer for Recorder {
    fn reply(&self, e: &ReplyEvent<'_>) {
        self.replies.lock().unwrap().push(Seen {
            command: e.command,
            code: e.reply.code(),
            about: e.about.clone(),
            refusal: e.refusal.cloned(),
            device: e.session.device.clone(),
            username: e.session.username.clone(),
        });
    }
    fn ended(&self, summary: &SessionSummary) {
        self.ended.lock().unwrap().push(summary.clone());
    }
}

impl Recorder {
    fn replies(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.replies.lock().unwrap())
    }
    fn summary(&self) -> SessionSummary {
        let mut ended = self.ended.lock().unwrap();
        assert_eq!(ended.len(), 1, "one summary per session: {ended:?}");
        ended.pop().unwrap()
    }
}

fn recorded(spool: &Spool, lockout_after: u32) -> (Arc<Inbound>, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    let observer: Arc<dyn Observer> = rec.clone();
    (observed(spool.clone(), lockout_after, Some(observer)), rec)
}

fn spool() -> (tempfile::TempDir, Spool) {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open_with(dir.path(), false).unwrap();
    (dir, spool)
}

/// When an address is locked out, every session it has open is told so and closed, and one
/// that had logged in earlier cannot send mail any more.
#[tokio::test]
async fn a_lockout_closes_the_addresses_open_sessions() {
    let (_dir, spool) = spool();
    let ctx = inbound(spool, 2);
    let (mut idle, _) = Client::connect(&ctx, "10.0.0.7").await;
    assert!(idle.send("EHLO idle").await.starts_with("250"));
    let (mut ups, _) = Client::connect(&ctx, "10.0.0.8").await;
    assert!(ups.send("EHLO ups").await.starts_with("250"));
    let (mut guesser, _) = Client::connect(&ctx, "10.0.0.7").await;
    guesser.send("EHLO x").await;
    assert!(
        guesser
            .send("AUTH PLAIN AG1mcAB3cm9uZw==")
            .await
            .starts_with("535")
    );
    let last = guesser.send("AUTH PLAIN AG1mcAB3cm9uZw==").await;
    assert!(
        last.starts_with("421 4.7.0 Too many failed logins from your address"),
        "{last}"
    );
    // The idle session of the same address hears it without saying anything.
    let told = tokio::time::timeout(Duration::from_secs(5), idle.reply())
        .await
        .expect("told at once");
    assert!(
        told.starts_with("421 4.7.0 Too many failed logins"),
        "{told}"
    );
    assert_eq!(idle.reply().await, "", "and closed");
    // Another address goes on.
    assert!(ups.send("NOOP").await.starts_with("250"));
    for c in [idle, guesser] {
        c.served.await.unwrap();
    }
}

/// A session that does not log in within `preauth_timeout` is closed, whatever it sends; a
/// device recognised by its address is logged in from the start.
#[tokio::test(start_paused = true)]
async fn sessions_must_log_in_within_the_preauth_timeout() {
    let (_dir, spool) = spool();
    let ctx = inbound(spool, 10);
    let (mut lurker, _) = Client::connect(&ctx, "10.0.0.7").await;
    let (mut ups, _) = Client::connect(&ctx, "10.0.0.8").await;
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(lurker.send("NOOP").await.starts_with("250"));
        assert!(ups.send("NOOP").await.starts_with("250"));
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let closed = lurker.reply().await;
    assert_eq!(
        closed,
        "421 4.7.0 No login in the time allowed, closing connection"
    );
    assert!(ups.send("NOOP").await.starts_with("250"), "the UPS stays");
}

/// A full relay closes its oldest session that has not logged in to admit a new one; the
/// slot of a session that said QUIT is free before the device reads 221.
#[tokio::test]
async fn a_full_relay_makes_room_and_quit_frees_the_slot_at_once() {
    let (_dir, spool) = spool();
    let ctx = inbound(spool, 10);
    let mut open = Vec::new();
    for i in 0..9 {
        open.push(Client::connect(&ctx, &format!("10.0.1.{i}")).await.0);
    }
    let (mut ups, _) = Client::connect(&ctx, "10.0.0.8").await;
    assert_eq!(ctx.limiter.active(), 10);
    let (mut newcomer, greeting) = Client::connect(&ctx, "10.0.2.1").await;
    assert!(greeting.starts_with("220"), "{greeting}");
    let oldest = open[0].reply().await;
    assert_eq!(
        oldest,
        "421 4.7.0 Too many connections, closing one not logged in"
    );
    assert!(ups.send("NOOP").await.starts_with("250"), "never the UPS");
    assert_eq!(newcomer.send("QUIT").await, "221 2.0.0 Bye");
    assert_eq!(ctx.limiter.active(), 9, "free once 221 is read");
}

/// Every reply passes the hook, in order, with what it was about: the refused sender with
/// its refusal, the accepted message with its queue id, the device it came from; the session's
/// summary counts one message accepted and one refused, every byte read, and the QUIT.
#[tokio::test]
async fn every_reply_and_the_end_of_the_session_pass_the_observer() {
    let (_dir, spool) = spool();
    let (ctx, rec) = recorded(&spool, 5);
    let lines = [
        "EHLO ups",
        "MAIL FROM:<ceo@evil.example>",
        "MAIL FROM:<scanner@contoso.com>",
        "RCPT TO:<a@example.com>",
        "DATA",
        "Subject: scan\r\n\r\nhello\r\n.",
        "QUIT",
    ];
    let last = session_from(&ctx, "10.0.0.8", &lines).await;
    assert!(last.starts_with("221"), "{last}");
    let seen = rec.replies();
    let sequence: Vec<(Command, u16)> = seen.iter().map(|s| (s.command, s.code)).collect();
    assert_eq!(
        sequence,
        [
            (Command::Connect, 220),
            (Command::Ehlo, 250),
            (Command::Mail, 553),
            (Command::Mail, 250),
            (Command::Rcpt, 250),
            (Command::Data, 354),
            (Command::Message, 250),
            (Command::Quit, 221),
        ]
    );
    assert!(seen.iter().all(|s| s.device.as_deref() == Some("ups")));
    assert_eq!(
        seen[2].about,
        About::MessageRefused(MessageInfo {
            sender: "ceo@evil.example".into(),
            recipients: vec![],
            size: 0,
        })
    );
    assert_eq!(
        seen[2].refusal,
        Some(SessionError::SenderNotAllowed("ceo@evil.example".into()))
    );
    assert_eq!(
        seen[3].about,
        About::SenderAccepted {
            sender: "scanner@contoso.com".into()
        }
    );
    let About::MessageQueued { queue_id, message } = &seen[6].about else {
        panic!("{:?}", seen[6]);
    };
    assert_eq!(spool.list(Area::Queue).await.unwrap()[0].as_str(), queue_id);
    assert_eq!(message.recipients, ["a@example.com"]);
    assert_eq!(message.size, "Subject: scan\r\n\r\nhello\r\n".len() as u64);

    let summary = rec.summary();
    assert_eq!((summary.accepted, summary.refused), (1, 1));
    assert_eq!(summary.end, EndReason::Quit);
    assert_eq!(summary.device.as_deref(), Some("ups"));
    assert_eq!(summary.listener, "test");
    assert_eq!(summary.tls, None);
    let sent: usize = lines.iter().map(|l| l.len() + 2).sum();
    assert_eq!(summary.bytes, sent as u64);
}

/// Failed logins reach the observer with the username tried (never the password) and why;
/// the session that reaches its limit ends with `limit`, the one that locks its address out
/// with `lockout`.
#[tokio::test]
async fn failed_logins_and_how_sessions_end_reach_the_observer() {
    let (_dir, spool) = spool();
    let wrong = "AUTH PLAIN AG1mcAB3cm9uZw=="; // mfp / wrong
    let malformed = "AUTH PLAIN bm9udWxz";
    for (lockout_after, end, last_code) in
        [(10, EndReason::Limit, 421), (2, EndReason::LockedOut, 421)]
    {
        let (ctx, rec) = recorded(&spool, lockout_after);
        session(&ctx, &["EHLO printer", wrong, malformed]).await;
        let seen = rec.replies();
        let logins: Vec<&Seen> = seen.iter().filter(|s| s.command == Command::Auth).collect();
        assert_eq!(logins.len(), 2, "{seen:?}");
        assert_eq!(
            logins[0].about,
            About::LoginFailed {
                username: Some("mfp".into()),
                reason: Some(crate::identity::AuthFailure::WrongPassword),
            }
        );
        assert_eq!(logins[0].code, 535);
        assert_eq!(logins[0].refusal, Some(SessionError::AuthFailed));
        assert_eq!(logins[0].username.as_deref(), Some("mfp"));
        assert_eq!(
            logins[1].about,
            About::LoginFailed {
                username: None,
                reason: None
            }
        );
        assert_eq!(logins[1].code, last_code);
        assert!(logins.iter().all(|s| s.device.is_none()));
        let debug = format!("{seen:?}");
        assert!(
            !debug.contains("wrong"),
            "no password reaches observers: {debug}"
        );
        let summary = rec.summary();
        assert_eq!(summary.end, end);
        assert_eq!(summary.username.as_deref(), Some("mfp"));
        assert_eq!(summary.device, None);
    }
}

/// MAIL without a login is a refused message (no device known); a message over the size
/// limit is refused after its final dot with its size; a client that goes away without QUIT
/// ends the session as `client closed`.
#[tokio::test]
async fn refused_messages_carry_what_was_known() {
    let (_dir, spool) = spool();
    let (ctx, rec) = recorded(&spool, 5);
    session(&ctx, &["EHLO printer", "MAIL FROM:<scanner@contoso.com>"]).await;
    let seen = rec.replies();
    assert_eq!((seen[2].command, seen[2].code), (Command::Mail, 530));
    assert_eq!(seen[2].refusal, Some(SessionError::AuthRequired));
    assert!(
        matches!(&seen[2].about, About::MessageRefused(m) if m.sender == "scanner@contoso.com")
    );
    assert_eq!(rec.summary().end, EndReason::ClientClosed);

    let big = format!("Subject: x\r\n\r\n{}\r\n.", "y".repeat(20_000));
    session_from(
        &ctx,
        "10.0.0.8",
        &[
            "EHLO ups",
            "MAIL FROM:<scanner@contoso.com>",
            "RCPT TO:<a@example.com>",
            "DATA",
            &big,
        ],
    )
    .await;
    let seen = rec.replies();
    let last = seen.last().unwrap();
    assert_eq!((last.command, last.code), (Command::Message, 552));
    assert_eq!(last.refusal, Some(SessionError::MessageTooBig(10_000)));
    let About::MessageRefused(m) = &last.about else {
        panic!("{last:?}")
    };
    assert_eq!(m.recipients, ["a@example.com"]);
    assert!(m.size > 20_000, "{}", m.size);
    let summary = rec.summary();
    assert_eq!((summary.accepted, summary.refused), (0, 1));
}

/// The publisher turns the replies into the live state: the device's last result and counts,
/// the refused message with its advice, failed logins by device or unknown username.
#[tokio::test]
async fn the_publisher_feeds_the_live_state() {
    use smtp2oauth_activity::{Activity, ActivityConfig, MessageFilter, MessageResult};
    let (_dir, spool) = spool();
    let activity = Activity::new(&ActivityConfig {
        recent_messages: 10,
        devices: vec![
            ("mfp".into(), "scanner".into()),
            ("ups".into(), "scanner".into()),
        ],
        accounts: vec!["scanner".into()],
    });
    let publisher = crate::publish::ActivityPublisher::new(activity.clone(), Arc::new(directory()));
    let ctx = observed(spool.clone(), 10, Some(Arc::new(publisher)));
    session_from(
        &ctx,
        "10.0.0.8",
        &[
            "EHLO ups",
            "MAIL FROM:<scanner@contoso.com>",
            "RCPT TO:<a@example.com>",
            "DATA",
            "Subject: scan\r\n\r\nhello\r\n.",
            "MAIL FROM:<ceo@evil.example>",
        ],
    )
    .await;
    session(
        &ctx,
        &[
            "EHLO printer",
            "AUTH PLAIN AG1mcAB3cm9uZw==",
            "AUTH PLAIN AG5vYm9keQB4",
        ],
    )
    .await;

    let devices = activity.devices(smtp2oauth_activity::now_ms());
    let ups = devices.iter().find(|d| d.name == "ups").unwrap();
    assert!(ups.last_seen_ms.is_some());
    let connection = ups.connection.as_ref().unwrap();
    assert_eq!(
        (connection.peer.as_str(), connection.listener.as_str()),
        ("10.0.0.8", "test")
    );
    let last = ups.last_result.as_ref().unwrap();
    assert_eq!(
        (last.reply.code, last.reply.status.as_deref()),
        (553, Some("5.7.1"))
    );
    assert_eq!((ups.since_start.accepted, ups.since_start.refused), (1, 1));
    let mfp = devices.iter().find(|d| d.name == "mfp").unwrap();
    assert_eq!(mfp.since_start.failed_logins, 1);
    assert_eq!(activity.unknown_logins()[0].username, "nobody");

    let refused = activity.messages(&MessageFilter {
        result: Some(MessageResult::Refused),
        ..MessageFilter::default()
    });
    assert_eq!(refused.len(), 1, "{refused:?}");
    let r = &refused[0];
    assert_eq!((r.device.as_str(), r.account.as_str()), ("ups", "scanner"));
    assert_eq!(r.sender, "ceo@evil.example");
    assert_eq!(r.peer.as_deref(), Some("10.0.0.8"));
    assert_eq!(r.reply.as_ref().unwrap().code, 553);
    assert!(r.advice.as_deref().unwrap().contains("allowed_senders"));

    // A temporary refusal counts too and is the new last result.
    session_from(
        &ctx,
        "10.0.0.8",
        &[
            "EHLO ups",
            "MAIL FROM:<scanner@contoso.com>",
            "RCPT TO:<a@example.com>",
            "RCPT TO:<b@example.com>",
            "RCPT TO:<c@example.com>",
            "RCPT TO:<d@example.com>",
        ],
    )
    .await;
    let devices = activity.devices(smtp2oauth_activity::now_ms());
    let ups = devices.iter().find(|d| d.name == "ups").unwrap();
    let last = &ups.last_result.as_ref().unwrap().reply;
    assert_eq!((last.code, last.status.as_deref()), (452, Some("4.5.3")));
    assert_eq!(ups.since_start.refused, 2);
}

/// A connection refused at accept (over the limit per address) passes the observer too: its
/// one reply, and a summary that ends with `limit`.
#[tokio::test]
async fn a_connection_refused_at_accept_passes_the_observer() {
    let (_dir, spool) = spool();
    let rec = Arc::new(Recorder::default());
    let observer: Arc<dyn Observer> = rec.clone();
    let mut ctx = observed(spool, 5, Some(observer));
    Arc::get_mut(&mut ctx).unwrap().limiter = Limiter::new(crate::limiter::LimiterSettings {
        max_sessions: 10,
        max_sessions_per_ip: 1,
        max_unauthenticated_per_ip: 10,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let rt = Arc::new(ListenerRuntime {
        settings: Arc::new(ListenerSettings {
            label: "test".into(),
            tls: ListenerTls::None,
            require_tls: false,
            allow_insecure_auth: true,
        }),
        tls: None,
    });
    let tracker = tokio_util::task::TaskTracker::new();
    let accepting = tokio::spawn(crate::listener::accept_loop(
        ctx.clone(),
        rt,
        listener,
        tracker.clone(),
    ));
    let read_line = |s: tokio::net::TcpStream| async move {
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).await.unwrap();
        line
    };
    let first = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (r1, _w1) = first.into_split();
    let mut r1 = BufReader::new(r1);
    let mut greeting = String::new();
    r1.read_line(&mut greeting).await.unwrap();
    assert!(greeting.starts_with("220"), "{greeting}");
    let second = tokio::net::TcpStream::connect(addr).await.unwrap();
    let refused = read_line(second).await;
    assert!(refused.starts_with("421 4.7.0"), "{refused}");
    let seen = rec.replies();
    let last = seen.last().unwrap();
    assert_eq!((last.command, last.code), (Command::Connect, 421));
    assert_eq!(
        last.refusal,
        Some(SessionError::TooManyConnectionsFromAddress)
    );
    assert_eq!(rec.summary().end, EndReason::Limit);
    ctx.shutdown.cancel();
    accepting.await.unwrap();
}

/// Every way a lockout ends a session reaches the observer as a refusal, and the session
/// ends as `lockout`: a session of the address waiting for a command is told at once, AUTH
/// from a locked address is a failed login refused without a check, and MAIL from a device
/// recognised by a locked address is a message refused (its sender known).
#[tokio::test]
async fn lockouts_reach_the_observer_and_end_sessions_as_lockout() {
    let (_dir, spool) = spool();
    let (ctx, rec) = recorded(&spool, 2);
    let wrong = "AUTH PLAIN AG1mcAB3cm9uZw=="; // mfp / wrong
    let (mut idle, _) = Client::connect(&ctx, "10.0.0.7").await;
    assert!(idle.send("EHLO idle").await.starts_with("250"));
    let (mut guesser, _) = Client::connect(&ctx, "10.0.0.7").await;
    guesser.send("EHLO x").await;
    assert!(guesser.send(wrong).await.starts_with("535"));
    assert!(guesser.send(wrong).await.starts_with("421 4.7.0"));
    assert!(
        idle.reply()
            .await
            .starts_with("421 4.7.0 Too many failed logins")
    );
    for c in [idle, guesser] {
        c.served.await.unwrap();
    }
    let seen = rec.replies();
    let told = seen.iter().find(|s| s.command == Command::Session).unwrap();
    assert_eq!(
        (told.code, &told.refusal),
        (421, &Some(SessionError::LockedOut))
    );

    // A session opened before the accept loop could refuse it tries to log in.
    let (mut late, _) = Client::connect(&ctx, "10.0.0.7").await;
    late.send("EHLO late").await;
    assert!(late.send(wrong).await.starts_with("421 4.7.0"));
    late.served.await.unwrap();
    let auth = rec
        .replies()
        .into_iter()
        .find(|s| s.command == Command::Auth);
    let auth = auth.unwrap();
    assert_eq!(auth.refusal, Some(SessionError::LockedOut));
    assert_eq!(
        auth.about,
        About::LoginFailed {
            username: Some("mfp".into()),
            reason: Some(crate::identity::AuthFailure::AddressLockedOut),
        }
    );

    // The UPS's address is locked out; a session of it opened before the accept loop could
    // refuse it (as in the race between accept and a lockout) sends a message.
    let ups_ip = "10.0.0.8".parse().unwrap();
    for _ in 0..2 {
        ctx.guard.failure(ups_ip);
    }
    let (mut ups, _) = Client::connect(&ctx, "10.0.0.8").await;
    assert!(ups.send("EHLO ups").await.starts_with("250"));
    ups.write
        .write_all(b"MAIL FROM:<scanner@contoso.com>\r\n")
        .await
        .unwrap();
    let refused = ups.reply().await;
    assert!(
        refused.starts_with("421 4.7.0 Too many failed logins"),
        "{refused}"
    );
    ups.served.await.unwrap();
    let mail = rec
        .replies()
        .into_iter()
        .find(|s| s.command == Command::Mail);
    let mail = mail.unwrap();
    assert_eq!(mail.refusal, Some(SessionError::LockedOut));
    assert_eq!(
        mail.about,
        About::MessageRefused(MessageInfo {
            sender: "scanner@contoso.com".into(),
            recipients: vec![],
            size: 0,
        })
    );
    let ended = std::mem::take(&mut *rec.ended.lock().unwrap());
    assert_eq!(ended.len(), 4);
    assert!(
        ended.iter().all(|s| s.end == EndReason::LockedOut),
        "{ended:?}"
    );
    assert_eq!(ended[3].refused, 1, "the UPS's message counts as refused");
}

//! The driver over an in-memory pipe: what the session reports is carried out (here, failed
//! logins counted against the client's address).

use super::*;
use crate::guard::{GuardSettings, LoginGuard};
use crate::identity::Directory;
use crate::limiter::Limiter;
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

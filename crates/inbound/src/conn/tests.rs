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
        limiter: Limiter::new(10, 10),
        shutdown: CancellationToken::new(),
        metrics: None,
        guard: Arc::new(LoginGuard::new(GuardSettings {
            lockout_after,
            lockout_window: Duration::from_secs(600),
            lockout_time: Duration::from_secs(60),
            lockout_max: Duration::from_secs(300),
            exempt: Vec::new(),
        })),
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
    let served = tokio::spawn(serve(ctx.clone(), listener, server, peer));
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

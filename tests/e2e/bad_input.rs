//! Hostile and broken clients. No real client sends these bytes, so a raw socket does; after
//! every case the relay must still deliver a normal message from a real client.

use crate::harness::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(addr: &str) -> Raw {
        let s = TcpStream::connect(addr).await.unwrap();
        let mut r = Raw { s, buf: Vec::new() };
        let greeting = r.reply().await;
        assert!(greeting.starts_with("220 "), "{greeting}");
        r
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.unwrap();
    }

    /// Reads one whole reply (all lines); "" when the connection closed.
    async fn reply(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // a reply ends with a line "ddd <text>\r\n"
            let text = String::from_utf8_lossy(&self.buf).to_string();
            let mut end = 0;
            for line in text.split_inclusive("\r\n") {
                end += line.len();
                if line.ends_with("\r\n") && line.len() >= 4 && line.as_bytes()[3] == b' ' {
                    let r = text[..end].to_string();
                    self.buf.drain(..end);
                    return r;
                }
                if !line.ends_with("\r\n") {
                    break;
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline.into(), self.s.read(&mut chunk))
                .await
                .expect("reply timed out")
                .unwrap_or(0);
            if n == 0 {
                return String::new();
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }
}

async fn a_normal_message_still_goes_through(relay: &Relay, up: &Upstream) {
    let before = up.smtp.messages().len();
    let r = smtplib(&[
        "--port",
        &relay.port("plain").to_string(),
        "--user",
        DEVICE_USER,
        "--password",
        DEVICE_PASSWORD,
        "--from",
        MAILBOX,
        "--to",
        "you@example.com",
        "--body",
        "still alive",
    ])
    .await;
    assert_eq!(r[0]["ok"], true, "{r:?}\n{}", relay.logs());
    assert_eq!(
        up.smtp
            .wait_for_messages(before + 1, Duration::from_secs(20))
            .await
            .len(),
        before + 1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_battery_gets_correct_replies() {
    let up = Upstream::start().await;
    let relay = Relay::start(&relay_toml(&up.pki, &up.account_toml(""), ""));
    let addr = relay.addr("plain").to_string();

    let mut c = Raw::connect(&addr).await;
    // sequencing before EHLO
    assert!(
        c.cmd("MAIL FROM:<scanner@contoso.com>")
            .await
            .starts_with("503 5.5.1")
    );
    assert!(c.cmd("RCPT TO:<a@example.com>").await.starts_with("503"));
    assert!(c.cmd("DATA").await.starts_with("503"));
    assert!(c.cmd("EHLO raw").await.starts_with("250-"));
    // a 10,000-byte line, then the session goes on
    let long = format!("NOOP {}", "x".repeat(10_000));
    assert!(c.cmd(&long).await.starts_with("500 5.5.2"));
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 OK\r\n");
    // NUL bytes and non-UTF-8
    c.send(b"NO\0OP\r\n").await;
    assert!(c.reply().await.starts_with("500 5.5.1"));
    c.send(b"\xff\xfe\xfd\r\n").await;
    assert!(c.reply().await.starts_with("500"));
    // AUTH problems
    assert!(
        c.cmd("AUTH PLAIN !!!not-base64!!!")
            .await
            .starts_with("501 5.5.2")
    );
    assert!(c.cmd("AUTH CRAM-MD5").await.starts_with("504 5.5.4"));
    assert_eq!(c.cmd("AUTH LOGIN").await, "334 VXNlcm5hbWU6\r\n");
    assert!(c.cmd("*").await.starts_with("501"));
    // RCPT before MAIL, DATA before RCPT
    assert!(
        c.cmd("RCPT TO:<a@example.com>")
            .await
            .starts_with("503 5.5.1")
    );
    c.quit_ok().await;

    let mut c = Raw::connect(&addr).await; // 127.0.0.1: the no-auth device
    c.cmd("EHLO raw").await;
    assert!(
        c.cmd("MAIL FROM:<scanner@contoso.com> SIZE=999999999999")
            .await
            .starts_with("552 5.3.4")
    );
    assert!(
        c.cmd("MAIL FROM:<scanner@contoso.com>")
            .await
            .starts_with("250")
    );
    assert!(c.cmd("DATA").await.starts_with("503 5.5.1"));
    // pipelined commands after an error are each answered, in order
    c.send(b"RCPT TO:<bad>\r\nRCPT TO:<a@example.com>\r\nBOGUS\r\nRSET\r\nNOOP\r\n")
        .await;
    assert!(c.reply().await.starts_with("501 5.1.3"));
    assert!(c.reply().await.starts_with("250 2.1.5"));
    assert!(c.reply().await.starts_with("500 5.5.1"));
    assert!(c.reply().await.starts_with("250 2.0.0 Reset"));
    assert!(c.reply().await.starts_with("250 2.0.0 OK"));
    c.quit_ok().await;

    // a client vanishing in the middle of DATA: nothing is delivered, nothing stays spooled
    let mut c = Raw::connect(&addr).await;
    c.cmd("EHLO raw").await;
    c.cmd("MAIL FROM:<scanner@contoso.com>").await;
    c.cmd("RCPT TO:<a@example.com>").await;
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(b"Subject: half\r\n\r\nhalf a mes").await;
    drop(c);
    assert!(relay.wait_log("client disconnected during DATA", Duration::from_secs(10)));
    assert_eq!(up.smtp.messages().len(), 0);
    assert_eq!(
        std::fs::read_dir(relay.store().join("spool/data"))
            .unwrap()
            .count(),
        0
    );

    // STARTTLS with commands pipelined behind it: they must not be executed
    let mut c = Raw::connect(relay.addr("strict")).await;
    c.cmd("EHLO raw").await;
    c.send(b"STARTTLS\r\nMAIL FROM:<scanner@contoso.com>\r\n")
        .await;
    assert!(c.reply().await.starts_with("220"));
    // the injected MAIL is not answered in clear text (the relay waits for a TLS handshake)
    let mut probe = [0u8; 64];
    let got = tokio::time::timeout(Duration::from_millis(500), c.s.read(&mut probe)).await;
    assert!(
        got.is_err() || matches!(got, Ok(Ok(0))),
        "a reply to injected plaintext: {:?}",
        got
    );
    // The handshake completes, and the injected MAIL was discarded, not run inside TLS: the
    // first reply is EHLO's, and a RCPT finds no transaction (the address-listed device could
    // have opened one).
    assert!(c.buf.is_empty(), "{:?}", String::from_utf8_lossy(&c.buf));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(up.pki.client_config())
        .connect(name, c.s)
        .await
        .expect("the TLS handshake completes after the injected bytes");
    let mut t = Tls { s: tls };
    let ehlo = t.cmd("EHLO raw").await;
    assert!(
        ehlo.starts_with("250-") || ehlo.starts_with("250 "),
        "{ehlo}"
    );
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    let rcpt = t.cmd("RCPT TO:<a@example.com>").await;
    assert!(
        rcpt.starts_with("503 5.5.1"),
        "the injected MAIL ran: {rcpt}"
    );
    let mail = t.cmd("MAIL FROM:<scanner@contoso.com>").await;
    assert!(mail.starts_with("250"), "{mail}");
    let quit = t.cmd("QUIT").await;
    assert!(quit.starts_with("221"), "{quit}");

    a_normal_message_still_goes_through(&relay, &up).await;
}

/// A session after STARTTLS: one command, then every line up to its reply's last line.
struct Tls {
    s: tokio_rustls::client::TlsStream<TcpStream>,
}

impl Tls {
    async fn cmd(&mut self, line: &str) -> String {
        self.s
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
        self.s.flush().await.unwrap();
        let mut text = String::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(last) = text
                .strip_suffix("\r\n")
                .and_then(|t| t.rsplit("\r\n").next())
                && last.as_bytes().get(3) == Some(&b' ')
            {
                return text;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline.into(), self.s.read(&mut chunk))
                .await
                .expect("reply timed out")
                .unwrap_or(0);
            if n == 0 {
                return text;
            }
            text.push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    }
}

impl Raw {
    async fn quit_ok(&mut self) {
        let r = self.cmd("QUIT").await;
        assert!(r.starts_with("221"), "{r}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_clients_are_cut_off_by_the_command_deadline() {
    let up = Upstream::start().await;
    let toml = relay_toml(&up.pki, &up.account_toml(""), "").replace(
        "hostname = \"relay.test\"",
        "hostname = \"relay.test\"\ncommand_timeout = \"2s\"",
    );
    let relay = Relay::start(&toml);
    let mut c = Raw::connect(relay.addr("plain")).await;
    let started = Instant::now();
    // one byte every 300 ms: every read is quick, but the line never completes in time
    let mut closed = String::new();
    for b in b"NOOP and then some more bytes arriving very slowly\r\n".iter() {
        if c.s.write_all(&[*b]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        if started.elapsed() > Duration::from_secs(2) {
            closed = c.reply().await;
            break;
        }
    }
    assert!(closed.starts_with("421 4.4.2"), "{closed:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // an idle client is also closed after the deadline
    let mut c = Raw::connect(relay.addr("plain")).await;
    let r = c.reply().await;
    assert!(r.starts_with("421 4.4.2"), "{r}");
    a_normal_message_still_goes_through(&relay, &up).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn session_limits_answer_421_and_release_slots() {
    let up = Upstream::start().await;
    let toml = relay_toml(&up.pki, &up.account_toml(""), "").replace(
        "hostname = \"relay.test\"",
        "hostname = \"relay.test\"\nmax_sessions_per_ip = 3",
    );
    let relay = Relay::start(&toml);
    let addr = relay.addr("plain").to_string();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(Raw::connect(&addr).await);
    }
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let mut buf = vec![0u8; 512];
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("421 4.7.0"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    a_normal_message_still_goes_through(&relay, &up).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn too_many_auth_failures_close_the_session() {
    let up = Upstream::start().await;
    let relay = Relay::start(&relay_toml(&up.pki, &up.account_toml(""), ""));
    let mut c = Raw::connect(relay.addr("plain")).await;
    c.cmd("EHLO raw").await;
    for i in 0..3 {
        let r = c.cmd("AUTH PLAIN AG1mcC0zZgB3cm9uZw==").await;
        if i < 2 {
            assert!(r.starts_with("535 5.7.8"), "{r}");
        } else {
            assert!(r.starts_with("421 4.7.0"), "{r}");
        }
    }
    assert_eq!(c.reply().await, "", "closed after the limit");
}

/// The relay's peak resident memory so far (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn brute_force_locks_out_one_address_while_others_are_served() {
    let up = Upstream::start().await;
    let toml = relay_toml(&up.pki, &up.account_toml(""), "").replace(
        "hostname = \"relay.test\"",
        "hostname = \"relay.test\"\nlockout_after = 5\nlockout_time = \"30s\"\nlockout_exempt = [\"127.0.0.3/32\"]",
    );
    let relay = Relay::start(&toml);
    let port = relay.port("plain").to_string();
    let mut locked = false;
    for attempt in 0..10 {
        let r = smtplib(&[
            "--port",
            &port,
            "--source",
            "127.0.0.2",
            "--user",
            DEVICE_USER,
            "--password",
            &format!("guess{attempt}"),
            "--from",
            MAILBOX,
            "--to",
            "you@example.com",
        ])
        .await;
        if r[0]["code"] == 421 {
            locked = true;
            assert!(attempt >= 4, "locked after {attempt} failures");
            break;
        }
        assert_eq!(r[0]["code"], 535, "{r:?}");
    }
    assert!(locked, "no lockout after 10 failures");
    // the locked address is refused at connect, even with the right password
    let mut s = TcpStream::connect(relay.addr("plain")).await.unwrap();
    drop(s);
    let r = smtplib(&[
        "--port",
        &port,
        "--source",
        "127.0.0.2",
        "--user",
        DEVICE_USER,
        "--password",
        DEVICE_PASSWORD,
        "--from",
        MAILBOX,
        "--to",
        "you@example.com",
    ])
    .await;
    assert_eq!(r[0]["ok"], false);
    assert!(
        r[0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("Too many failed logins")
            || r[0]["code"] == 421,
        "{r:?}"
    );
    assert!(relay.logs().contains("address locked out"));
    // another address is served normally
    a_normal_message_still_goes_through(&relay, &up).await;
    // an exempt address is never locked out
    for attempt in 0..8 {
        let r = smtplib(&[
            "--port",
            &port,
            "--source",
            "127.0.0.3",
            "--user",
            DEVICE_USER,
            "--password",
            &format!("x{attempt}"),
            "--from",
            MAILBOX,
            "--to",
            "you@example.com",
        ])
        .await;
        assert_eq!(r[0]["code"], 535, "exempt address: {r:?}");
    }
    let r = smtplib(&[
        "--port",
        &port,
        "--source",
        "127.0.0.3",
        "--user",
        DEVICE_USER,
        "--password",
        DEVICE_PASSWORD,
        "--from",
        MAILBOX,
        "--to",
        "you@example.com",
    ])
    .await;
    assert_eq!(r[0]["ok"], true, "{r:?}");
    s = TcpStream::connect(relay.addr("plain")).await.unwrap();
    drop(s);
}

#[tokio::test(flavor = "multi_thread")]
async fn five_hundred_idle_connections_keep_memory_bounded_and_mail_flowing() {
    let up = Upstream::start().await;
    let toml = relay_toml(&up.pki, &up.account_toml(""), "").replace(
        "hostname = \"relay.test\"",
        "hostname = \"relay.test\"\nmax_sessions = 1000\nmax_sessions_per_ip = 1000",
    );
    let relay = Relay::start(&toml);
    let before = peak_rss_mib(relay.pid());
    let mut idle = Vec::new();
    for _ in 0..500 {
        let mut c = Raw::connect(relay.addr("plain")).await;
        c.send(b"EHLO idle\r\n").await;
        idle.push(c);
    }
    for c in idle.iter_mut() {
        assert!(c.reply().await.starts_with("250-"));
    }
    a_normal_message_still_goes_through(&relay, &up).await;
    let after = peak_rss_mib(relay.pid());
    eprintln!(
        "peak RSS: {before:.1} MiB at start, {after:.1} MiB with 500 idle sessions (debug build)"
    );
    assert!(
        after < 200.0,
        "500 idle sessions took the relay to {after:.1} MiB"
    );
    drop(idle);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_command_budget_closes_a_chatty_session() {
    let up = Upstream::start().await;
    let toml = relay_toml(&up.pki, &up.account_toml(""), "").replace(
        "hostname = \"relay.test\"",
        "hostname = \"relay.test\"\nmax_commands = 50",
    );
    let relay = Relay::start(&toml);
    let mut c = Raw::connect(relay.addr("plain")).await;
    let mut closed = false;
    for _ in 0..60 {
        let r = c.cmd("NOOP").await;
        if r.starts_with("421 4.7.0") {
            closed = true;
            break;
        }
        assert!(r.starts_with("250"), "{r}");
    }
    assert!(closed, "no 421 after 60 commands with max_commands = 50");
    assert_eq!(c.reply().await, "", "closed");
    a_normal_message_still_goes_through(&relay, &up).await;
}

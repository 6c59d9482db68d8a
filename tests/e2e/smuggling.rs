//! SMTP smuggling, end to end: no line end other than `CRLF . CRLF` inside DATA may end a
//! message at the relay or at the upstream, so a device (or anyone who can put bytes into a
//! message) can never inject a second message with its own envelope.
//!
//! The exact byte sequences are sent over a raw socket, because every client library normalises
//! line ends and stuffs dots before we could see them; one case goes through Python's smtplib as
//! a real client would. On the other side, the fake upstream ends a message only at
//! `CRLF . CRLF` and unstuffs dots, exactly, so the relay's encoder must stuff every line that
//! starts with a dot or the upstream would read our stored `.` line as the end.

use crate::harness::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The smuggled second transaction, as an attacker would append it after a fake end of data.
const SECOND: &[u8] = b"MAIL FROM:<scanner@contoso.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled body";

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

    /// One whole reply (all its lines); "" when the connection closed.
    async fn reply(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut start = 0;
            while let Some(p) = self.buf[start..].windows(2).position(|w| w == b"\r\n") {
                let end = start + p + 2;
                let line = &self.buf[start..end];
                if line.len() >= 6 && line[3] == b' ' {
                    let r = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                    self.buf.drain(..end);
                    return r;
                }
                start = end;
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
        self.s
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
        self.reply().await
    }
}

/// What the relay must store for `payload` (the bytes after 354, up to and including the CRLF
/// before the final dot), written from RFC 5321 §4.5.2 independently of `proto::dot`: split at
/// real CRLFs, remove one leading dot per line, then make every bare CR and bare LF a CRLF.
fn normalised(payload: &[u8]) -> Vec<u8> {
    assert!(payload.ends_with(b"\r\n"));
    let mut out = Vec::new();
    let mut rest = payload;
    while let Some(p) = rest.windows(2).position(|w| w == b"\r\n") {
        let line = &rest[..p];
        let line = line.strip_prefix(b".").unwrap_or(line);
        out.extend_from_slice(&crlf(line));
        out.extend_from_slice(b"\r\n");
        rest = &rest[p + 2..];
    }
    out
}

/// The fake upstream keeps the body without the CRLF that belongs to the terminator.
fn as_received(stored: &[u8]) -> &[u8] {
    stored.strip_suffix(b"\r\n").unwrap_or(stored)
}

/// Sends one message over a raw socket as the address-listed device: `payload` then `.CRLF`.
/// Returns the reply to the data and what the relay answered to a QUIT sent right after it.
async fn send_raw(addr: &str, payload: &[u8]) -> (String, String) {
    let mut c = Raw::connect(addr).await;
    assert!(c.cmd("EHLO smuggler").await.starts_with("250"));
    assert!(
        c.cmd(&format!("MAIL FROM:<{MAILBOX}>"))
            .await
            .starts_with("250")
    );
    assert!(c.cmd("RCPT TO:<you@example.com>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    let mut wire = payload.to_vec();
    wire.extend_from_slice(b".\r\n");
    c.s.write_all(&wire).await.unwrap();
    let data_reply = c.reply().await;
    let quit_reply = c.cmd("QUIT").await;
    (data_reply, quit_reply)
}

/// The smuggling line ends of SEC Consult's 2023 research and their combinations, each followed
/// by a complete second transaction.
fn cases() -> Vec<(&'static str, Vec<u8>)> {
    let one = |seq: &[u8]| {
        let mut p = b"Subject: smuggling\r\n\r\nfirst part".to_vec();
        p.extend_from_slice(seq);
        p.extend_from_slice(SECOND);
        p.extend_from_slice(b"\r\n");
        p
    };
    let mut combo = b"Subject: smuggling, all at once\r\n\r\n".to_vec();
    for seq in [
        &b"\n.\n"[..],
        b"\r\n.\n",
        b"\n.\r\n",
        b"\r.\r\n",
        b"\r\n.\r",
        b"\r\n\0.\r\n",
    ] {
        combo.extend_from_slice(b"part");
        combo.extend_from_slice(seq);
        combo.extend_from_slice(SECOND);
    }
    combo.extend_from_slice(b"\r\n");
    vec![
        ("LF . LF", one(b"\n.\n")),
        ("CRLF . LF", one(b"\r\n.\n")),
        ("LF . CRLF", one(b"\n.\r\n")),
        ("CR . CRLF", one(b"\r.\r\n")),
        ("CRLF . CR", one(b"\r\n.\r")),
        ("LF . LF CRLF . CR", one(b"\n.\n\r\n.\r")),
        ("CRLF NUL . CRLF", one(b"\r\n\0.\r\n")),
        ("dot line first after DATA, LF", {
            let mut p = b".\n".to_vec();
            p.extend_from_slice(SECOND);
            p.extend_from_slice(b"\r\n");
            p
        }),
        ("all of them in one message", combo),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn no_bare_line_end_inside_data_ends_a_message_or_injects_one() {
    let up = Upstream::start().await;
    let relay = Relay::start(&relay_toml(&up.pki, &up.account_toml(""), ""));
    let addr = relay.addr("plain").to_string();

    // The oracle for two cases, written out by hand.
    assert_eq!(
        normalised(&cases()[0].1),
        b"Subject: smuggling\r\n\r\nfirst part\r\n.\r\nMAIL FROM:<scanner@contoso.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n"
    );
    assert_eq!(
        normalised(&cases()[1].1),
        b"Subject: smuggling\r\n\r\nfirst part\r\n\r\nMAIL FROM:<scanner@contoso.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n"
    );

    for (i, (name, payload)) in cases().into_iter().enumerate() {
        let (data_reply, quit_reply) = send_raw(&addr, &payload).await;
        assert!(
            data_reply.starts_with("250 "),
            "{name}: one reply for the one message: {data_reply:?}\n{}",
            relay.logs()
        );
        // Had the relay ended the message early, the smuggled MAIL, RCPT and DATA would have
        // been answered (250, 250, 354) before this QUIT.
        assert!(
            quit_reply.starts_with("221 "),
            "{name}: the smuggled commands were answered: {quit_reply:?}"
        );

        let got = up
            .smtp
            .wait_for_messages(i + 1, Duration::from_secs(20))
            .await;
        assert_eq!(
            got.len(),
            i + 1,
            "{name}: exactly one message upstream per DATA; transcript:\n{}",
            up.smtp.transcript().join("\n")
        );
        let m = &got[i];
        assert_eq!(m.mail_from, MAILBOX, "{name}");
        assert_eq!(m.rcpt_to, vec!["you@example.com"], "{name}");
        let expect = normalised(&payload);
        assert_eq!(
            String::from_utf8_lossy(strip_received(&m.data)),
            String::from_utf8_lossy(as_received(&expect)),
            "{name}: delivered bytes"
        );
    }

    // Nothing arrives late either, and no message ever went to the smuggled recipient.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = up.smtp.messages();
    assert_eq!(all.len(), cases().len());
    assert!(
        all.iter()
            .all(|m| !m.rcpt_to.iter().any(|r| r.contains("victim")))
    );
}

/// The control: the test above can fail. A real `CRLF . CRLF` does end the message, and the
/// commands after it (pipelined in the same write) are a second transaction, answered and
/// delivered as such.
#[tokio::test(flavor = "multi_thread")]
async fn a_real_crlf_dot_crlf_ends_the_message_and_what_follows_is_a_command() {
    let up = Upstream::start().await;
    let relay = Relay::start(&relay_toml(&up.pki, &up.account_toml(""), ""));
    let mut c = Raw::connect(relay.addr("plain")).await;
    assert!(c.cmd("EHLO x").await.starts_with("250"));
    assert!(
        c.cmd(&format!("MAIL FROM:<{MAILBOX}>"))
            .await
            .starts_with("250")
    );
    assert!(c.cmd("RCPT TO:<you@example.com>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    let mut wire = b"first part\r\n.\r\n".to_vec();
    wire.extend_from_slice(SECOND);
    wire.extend_from_slice(b"\r\n.\r\n");
    c.s.write_all(&wire).await.unwrap();
    for want in ["250 ", "250 ", "250 ", "354 ", "250 "] {
        let r = c.reply().await;
        assert!(r.starts_with(want), "want {want}, got {r:?}");
    }
    assert!(c.cmd("QUIT").await.starts_with("221"));
    let got = up.smtp.wait_for_messages(2, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].rcpt_to, vec!["victim@example.com"]);
}

/// What Python's smtplib puts on the wire for a bytes message (`SMTP.data`): the bytes as they
/// are, a dot added after the start and after every LF (`re.sub(rb'(?m)^\.', b'..', msg)`),
/// CRLF appended if missing, then `.CRLF`. Returned without the final `.CRLF`.
fn smtplib_payload(msg: &[u8]) -> Vec<u8> {
    let mut q = Vec::with_capacity(msg.len() + 16);
    for (i, &b) in msg.iter().enumerate() {
        if b == b'.' && (i == 0 || msg[i - 1] == b'\n') {
            q.push(b'.');
        }
        q.push(b);
    }
    if !q.ends_with(b"\r\n") {
        q.extend_from_slice(b"\r\n");
    }
    q
}

/// A real client. smtplib sends a bytes message as it is, so the bare line ends reach the relay;
/// it also stuffs a dot after every bare LF, which RFC 5321 does not count as a line end, so
/// those dots arrive doubled (curl stuffs only after CRLF; see docs/fuzzing.md). What matters
/// here: one message upstream, with exactly the normalised bytes of what smtplib sent.
#[tokio::test(flavor = "multi_thread")]
async fn smtplib_message_with_smuggling_sequences_arrives_as_one_message() {
    let up = Upstream::start().await;
    let relay = Relay::start(&relay_toml(&up.pki, &up.account_toml(""), ""));
    let dir = tempfile::tempdir().unwrap();
    let mut msg = format!("From: <{MAILBOX}>\r\nTo: <you@example.com>\r\nSubject: smtplib\r\n\r\n")
        .into_bytes();
    for seq in [
        &b"\n.\n"[..],
        b"\r\n.\n",
        b"\n.\r\n",
        b"\r.\r\n",
        b"\r\n.\r",
    ] {
        msg.extend_from_slice(b"part");
        msg.extend_from_slice(seq);
        msg.extend_from_slice(SECOND);
    }
    msg.extend_from_slice(b"\r\n..leading dots\r\n.\r\n");
    let f = file(dir.path(), "smuggle.eml", &msg);
    let r = smtplib(&[
        "--port",
        &relay.port("plain").to_string(),
        "--from",
        MAILBOX,
        "--to",
        "you@example.com",
        "--file",
        &f.display().to_string(),
    ])
    .await;
    assert_eq!(r[0]["ok"], true, "{r:?}\n{}", relay.logs());
    let got = up.smtp.wait_for_messages(1, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(up.smtp.messages().len(), 1, "one message upstream");
    assert_eq!(got[0].rcpt_to, vec!["you@example.com"]);
    let expect = normalised(&smtplib_payload(&msg));
    assert_eq!(
        String::from_utf8_lossy(strip_received(&got[0].data)),
        String::from_utf8_lossy(as_received(&expect))
    );
    // The lines that were a lone dot in the CRLF-only parts are single dots again.
    assert!(
        String::from_utf8_lossy(&got[0].data).ends_with("\r\n..leading dots\r\n."),
        "dot-stuffing undone after CRLF"
    );
}

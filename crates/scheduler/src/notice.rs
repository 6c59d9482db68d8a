//! Failure notices: what an admin gets when a message could not be delivered.
//!
//! Devices rarely read mail, so the notice goes to an admin address (`bounce_to`), sent as the
//! mailbox of the account that carries it (Exchange accepts nothing else). It has the shape of a delivery status
//! notification (RFC 3464): a readable explanation, a `message/delivery-status` part machines
//! can parse, and the original message's headers (the message itself stays in `failed/`, since a
//! scan can be tens of megabytes).

use smtp2oauth_proto::address::display_stored;
use smtp2oauth_proto::{EnhancedStatus, Reply};
use smtp2oauth_spool::{Envelope, MessageId};
use std::fmt::Write;
use std::path::Path;

/// One recipient a notice reports.
pub struct FailedRecipient {
    /// The recipient's address.
    pub rcpt: String,
    /// The upstream's reply as one line (`550 5.1.1 User unknown`), or our description.
    pub diagnostic: String,
    /// The enhanced status the notice gives (`5.1.1`; `4.4.7` when the message expired).
    pub status: EnhancedStatus,
}

impl FailedRecipient {
    /// A recipient the upstream refused with `reply`.
    pub fn refused(rcpt: &str, reply: &Reply) -> Self {
        FailedRecipient {
            rcpt: rcpt.to_string(),
            diagnostic: reply.to_string(),
            // A reply without an enhanced status: the class of its code.
            status: reply.status().unwrap_or(EnhancedStatus::new(
                u8::try_from(reply.code() / 100).unwrap_or(5),
                0,
                0,
            )),
        }
    }

    /// A recipient still undelivered when the queue gave up; `reply` is the last one it got.
    pub fn expired(rcpt: &str, reply: &Reply) -> Self {
        FailedRecipient {
            rcpt: rcpt.to_string(),
            diagnostic: reply.to_string(),
            status: EnhancedStatus::new(4, 4, 7),
        }
    }
}

/// Why a notice is sent.
pub enum Reason {
    /// The upstream refused the message or some recipients for good.
    Refused,
    /// Still undelivered when `max_queue_lifetime` ran out.
    Expired {
        /// The configured lifetime, for the text.
        lifetime_hours: u64,
    },
}

/// Everything a notice says.
pub struct Notice<'a> {
    /// This relay's name.
    pub hostname: &'a str,
    /// The account's mailbox: the notice's sender.
    pub mailbox: &'a str,
    /// Where the notice goes (`bounce_to`).
    pub to: &'a str,
    /// The message the notice is about.
    pub envelope: &'a Envelope,
    /// The recipients it reports.
    pub failed: &'a [FailedRecipient],
    /// Why.
    pub reason: Reason,
    /// Where we tried to deliver (route target), for Remote-MTA.
    pub remote: &'a str,
    /// What to do about it, in plain words.
    pub advice: Option<&'a str>,
    /// The original header block (without the blank line).
    pub original_headers: &'a [u8],
    /// Now, in seconds since the epoch.
    pub now_unix: u64,
    /// Makes the notice's Message-ID and MIME boundary unique.
    pub notice_id: &'a str,
}

/// The whole notice: headers, then a `multipart/report` with a part for people, one for
/// machines and the original headers.
pub fn compose(n: &Notice<'_>) -> Vec<u8> {
    let boundary = format!("smtp2oauth-{}", n.notice_id);
    let mut out = String::new();
    headers(&mut out, n, &boundary);
    out.push_str("This is a MIME-encapsulated delivery status notification.\r\n\r\n");
    let _ = write!(
        out,
        "--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    );
    for_people(&mut out, n);
    let _ = write!(
        out,
        "--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
    );
    for_machines(&mut out, n);
    let _ = write!(
        out,
        "--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
    );
    let mut bytes = out.into_bytes();
    let headers = n.original_headers;
    bytes.extend_from_slice(headers);
    if !headers.ends_with(b"\r\n") {
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    bytes
}

/// The notice's own header block.
fn headers(out: &mut String, n: &Notice<'_>, boundary: &str) {
    let subject_of = original_subject(n.original_headers).unwrap_or_default();
    let subject = match n.reason {
        Reason::Refused => "Undelivered mail",
        Reason::Expired { .. } => "Undelivered mail (gave up after retrying)",
    };
    let _ = write!(
        out,
        "From: Mail Delivery System <{}>\r\nTo: <{}>\r\nSubject: {subject}: {}\r\nDate: {}\r\n",
        display_stored(n.mailbox),
        display_stored(n.to),
        sanitize(&subject_of, 120),
        smtp2oauth_date(n.now_unix)
    );
    let _ = write!(
        out,
        "Message-ID: <{}.notice@{}>\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n",
        n.notice_id, n.hostname
    );
    let _ = write!(
        out,
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\r\n"
    );
}

/// The part for people: what, from where, why, and what to do.
fn for_people(out: &mut String, n: &Notice<'_>) {
    let env = n.envelope;
    let subject_of = original_subject(n.original_headers).unwrap_or_default();
    let _ = write!(
        out,
        "smtp2oauth on {} could not deliver a message.\r\n\r\n  Queue id:  {}\r\n  Device:    {} ({})\r\n  Account:   {}\r\n",
        n.hostname, env.id, env.device, env.client_ip, env.account
    );
    let _ = write!(
        out,
        "  Sender:    {}\r\n  Subject:   {}\r\n  Received:  {}\r\n\r\n",
        display_stored(env.original_sender.as_deref().unwrap_or(&env.sender)),
        sanitize(&subject_of, 200),
        smtp2oauth_date(env.received_at_ms / 1000)
    );
    match n.reason {
        Reason::Refused => out.push_str("The upstream refused it for these recipients:\r\n\r\n"),
        Reason::Expired { lifetime_hours } => {
            let _ = write!(
                out,
                "It could not be delivered within {lifetime_hours} hours; the last error for each recipient:\r\n\r\n"
            );
        }
    }
    for f in n.failed {
        let _ = write!(
            out,
            "  <{}>\r\n    {}\r\n",
            display_stored(&f.rcpt),
            sanitize(&f.diagnostic, 400)
        );
    }
    if let Some(a) = n.advice {
        let _ = write!(out, "\r\nWhat to do: {a}\r\n");
    }
    let _ = write!(
        out,
        "\r\nThe message is kept in the relay's failed area. To retry it after fixing the cause:\r\n  smtp2oauth queue requeue {}\r\n\r\n",
        env.id
    );
}

/// The `message/delivery-status` part (RFC 3464): one block per recipient.
fn for_machines(out: &mut String, n: &Notice<'_>) {
    let env = n.envelope;
    let date = smtp2oauth_date(n.now_unix);
    let _ = write!(
        out,
        "Reporting-MTA: dns; {}\r\nX-Smtp2oauth-Queue-ID: {}\r\nArrival-Date: {}\r\n",
        n.hostname,
        env.id,
        smtp2oauth_date(env.received_at_ms / 1000)
    );
    for f in n.failed {
        let _ = write!(
            out,
            "\r\nFinal-Recipient: rfc822; {}\r\nAction: failed\r\nStatus: {}\r\n",
            display_stored(&f.rcpt),
            f.status
        );
        if !n.remote.is_empty() {
            let _ = write!(out, "Remote-MTA: dns; {}\r\n", sanitize(n.remote, 200));
        }
        let _ = write!(
            out,
            "Diagnostic-Code: smtp; {}\r\nLast-Attempt-Date: {date}\r\n",
            sanitize(&f.diagnostic, 400)
        );
    }
    out.push_str("\r\n");
}

/// The envelope of a notice or an alert carried by `account`, sent as its mailbox.
pub fn envelope(account: &str, mailbox: &str, to: &str, hostname: &str, now_ms: u64) -> Envelope {
    Envelope {
        id: MessageId::default(),
        received_at_ms: now_ms,
        account: account.to_string(),
        device: "smtp2oauth".into(),
        listener: "notice".into(),
        client_ip: "127.0.0.1".into(),
        helo: hostname.to_string(),
        sender: mailbox.to_string(),
        original_sender: None,
        recipients: vec![to.to_string()],
        eight_bit: false,
        smtputf8: false,
        size: 0,
        crc32c: 0,
        notice: true,
        session: 0,
    }
}

/// An alert e-mail: plain text, about something the relay noticed (an account refused, the
/// queue growing old, a certificate about to expire).
pub struct Alert<'a> {
    /// This relay's name.
    pub hostname: &'a str,
    /// The carrying account's mailbox: the alert's sender.
    pub mailbox: &'a str,
    /// Where it goes.
    pub to: &'a str,
    /// Its subject (any text; encoded as RFC 2047 words when not ASCII).
    pub subject: &'a str,
    /// Its text; lines may end in LF or CRLF.
    pub text: &'a str,
    /// Now, in seconds since the epoch.
    pub now_unix: u64,
    /// Makes the Message-ID unique.
    pub alert_id: &'a str,
}

/// The whole alert: headers and the text as one `text/plain` part in UTF-8.
pub fn compose_alert(a: &Alert<'_>) -> Vec<u8> {
    let mut out = String::new();
    let _ = write!(
        out,
        "From: smtp2oauth on {} <{}>\r\nTo: <{}>\r\nSubject: {}\r\nDate: {}\r\n",
        sanitize(a.hostname, 200),
        a.mailbox,
        a.to,
        header_words(&sanitize(a.subject, 400)),
        smtp2oauth_date(a.now_unix)
    );
    let _ = write!(
        out,
        "Message-ID: <{}.alert@{}>\r\nAuto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\n",
        a.alert_id, a.hostname
    );
    out.push_str(
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
    );
    for line in a.text.lines() {
        // Lines are at most 998 octets (RFC 5322); a longer one is broken, not refused.
        let mut rest = line.trim_end_matches('\r');
        loop {
            let mut cut = rest.len().min(998);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            out.push_str(&rest[..cut]);
            out.push_str("\r\n");
            rest = &rest[cut..];
            if rest.is_empty() {
                break;
            }
        }
    }
    out.into_bytes()
}

/// A header value as it may appear in a header: itself when ASCII, else RFC 2047 encoded
/// words (`=?UTF-8?Q?...?=`, at most 75 characters each, folded onto continuation lines).
fn header_words(value: &str) -> String {
    if value.is_ascii() {
        return value.to_string();
    }
    let mut words = Vec::new();
    let mut word = String::new();
    for c in value.chars() {
        let mut buf = [0u8; 4];
        let mut encoded = String::new();
        for b in c.encode_utf8(&mut buf).bytes() {
            match b {
                b' ' => encoded.push('_'),
                b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z' | b'!' | b'*' | b'+' | b'-' | b'/' => {
                    encoded.push(char::from(b))
                }
                _ => {
                    let _ = write!(encoded, "={b:02X}");
                }
            }
        }
        // "=?UTF-8?Q?" and "?=" take 12 of the 75 characters.
        if word.len() + encoded.len() > 63 {
            words.push(std::mem::take(&mut word));
        }
        word.push_str(&encoded);
    }
    words.push(word);
    words
        .iter()
        .map(|w| format!("=?UTF-8?Q?{w}?="))
        .collect::<Vec<_>>()
        .join("\r\n ")
}

/// The header block of the stored message at `path` (empty when it cannot be read).
pub async fn original_headers(path: &Path) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let Ok(f) = tokio::fs::File::open(path).await else {
        return Vec::new();
    };
    let mut buf = Vec::new();
    let _ = f.take(64 * 1024).read_to_end(&mut buf).await;
    header_block(&buf).to_vec()
}

/// The header block of a stored message (up to 64 KiB), without the blank line.
pub fn header_block(message: &[u8]) -> &[u8] {
    let cap = &message[..message.len().min(64 * 1024)];
    match memchr_crlfcrlf(cap) {
        Some(end) => &cap[..end + 2],
        None => cap,
    }
}

fn memchr_crlfcrlf(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n")
}

fn original_subject(headers: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(headers);
    let mut lines = text.split("\r\n").peekable();
    while let Some(line) = lines.next() {
        if line.len() >= 8 && line[..8].eq_ignore_ascii_case("subject:") {
            let mut v = line[8..].trim().to_string();
            while let Some(next) = lines.peek() {
                if next.starts_with([' ', '\t']) {
                    v.push(' ');
                    v.push_str(next.trim());
                    lines.next();
                } else {
                    break;
                }
            }
            return Some(v);
        }
    }
    None
}

fn sanitize(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > max {
        let mut cut = max;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

fn smtp2oauth_date(unix: u64) -> String {
    // RFC 5322 date in UTC; shared shape with the Received header.
    let days = (unix / 86400) as i64;
    let secs = unix % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let wd = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    let mon = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(m - 1) as usize];
    format!(
        "{wd}, {d} {mon} {y} {:02}:{:02}:{:02} +0000",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notice_has_the_rfc3464_shape() {
        let env = Envelope {
            id: smtp2oauth_spool::MessageId::parse("0123456789abcdef").unwrap(),
            received_at_ms: 1_795_428_000_000,
            account: "scanner".into(),
            device: "mfp-3f".into(),
            listener: "smtp-2525".into(),
            client_ip: "192.168.1.20".into(),
            helo: "mfp".into(),
            sender: "scanner@contoso.com".into(),
            original_sender: Some("scan@printer.local".into()),
            recipients: vec!["a@example.com".into(), "b@example.com".into()],
            eight_bit: false,
            smtputf8: false,
            size: 10,
            crc32c: 0,
            notice: false,
            session: 7,
        };
        let failed = [FailedRecipient::refused(
            "b@example.com",
            &Reply::with_status(550, (5, 1, 1), "User unknown"),
        )];
        let headers = b"Subject: Scan from\r\n 3rd floor\r\nFrom: x@y\r\n";
        let n = Notice {
            hostname: "relay.lan",
            mailbox: "scanner@contoso.com",
            to: "admin@contoso.com",
            envelope: &env,
            failed: &failed,
            reason: Reason::Refused,
            remote: "smtp.office365.com:587 (starttls)",
            advice: None,
            original_headers: headers,
            now_unix: 1_795_428_060,
            notice_id: "fedcba9876543210",
        };
        let text = String::from_utf8(compose(&n)).unwrap();
        for needle in [
            "From: Mail Delivery System <scanner@contoso.com>\r\n",
            "To: <admin@contoso.com>\r\n",
            "Subject: Undelivered mail: Scan from 3rd floor\r\n",
            "Auto-Submitted: auto-replied\r\n",
            "Content-Type: multipart/report; report-type=delivery-status;",
            "Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; relay.lan\r\n",
            "Final-Recipient: rfc822; b@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n",
            "Diagnostic-Code: smtp; 550 5.1.1 User unknown\r\n",
            "Content-Type: text/rfc822-headers\r\n\r\nSubject: Scan from\r\n 3rd floor\r\n",
            "Sender:    scan@printer.local",
            "smtp2oauth queue requeue 0123456789abcdef",
            "--smtp2oauth-fedcba9876543210--\r\n",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        assert!(
            !text.contains("a@example.com>\r\n    "),
            "delivered recipients are not listed as failed"
        );
        // every line ends with CRLF
        assert!(!text.replace("\r\n", "").contains('\n'));
    }

    /// Addresses in a notice are written one way (`proto::Address`): quoted where needed, and
    /// an older version's stored text never puts a control character into the notice.
    #[test]
    fn notice_addresses_are_written_by_the_address_type() {
        let env = Envelope {
            id: smtp2oauth_spool::MessageId::parse("0123456789abcdef").unwrap(),
            received_at_ms: 0,
            account: "scanner".into(),
            device: "mfp".into(),
            listener: "smtp-2525".into(),
            client_ip: "192.168.1.20".into(),
            helo: "mfp".into(),
            sender: "scanner@contoso.com".into(),
            original_sender: Some("a b@printer.local".into()),
            recipients: vec!["\"x y\"@example.com".into(), "\x1b[2J@b.example".into()],
            eight_bit: false,
            smtputf8: false,
            size: 10,
            crc32c: 0,
            notice: false,
            session: 7,
        };
        let reply = Reply::with_status(550, (5, 1, 1), "User unknown");
        let failed = [
            FailedRecipient::refused("\"x y\"@example.com", &reply),
            FailedRecipient::refused("\x1b[2J@b.example", &reply),
        ];
        let n = Notice {
            hostname: "relay.lan",
            mailbox: "scanner@contoso.com",
            to: "admin@contoso.com",
            envelope: &env,
            failed: &failed,
            reason: Reason::Refused,
            remote: "",
            advice: None,
            original_headers: b"",
            now_unix: 0,
            notice_id: "fedcba9876543210",
        };
        let text = String::from_utf8(compose(&n)).unwrap();
        for needle in [
            "Sender:    \"a b\"@printer.local",
            "  <\"x y\"@example.com>\r\n",
            "Final-Recipient: rfc822; \"x y\"@example.com\r\n",
            "Final-Recipient: rfc822; \\x1b[2J@b.example\r\n",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        assert!(!text.contains('\x1b'));
    }

    #[test]
    fn alerts_are_plain_text_with_encoded_subjects_and_short_lines() {
        let long = "x".repeat(2500);
        let text = format!(
            "Account scanner: Exchange refuses our login (535 5.7.3).\n\nWhat to do: grant SMTP.SendAsApp.\n{long}"
        );
        let bytes = compose_alert(&Alert {
            hostname: "relay.test",
            mailbox: "scanner@contoso.com",
            to: "it@contoso.com",
            subject: "Konto scanner: Anmeldung abgelehnt — bitte prüfen",
            text: &text,
            now_unix: 1_700_000_000,
            alert_id: "abc",
        });
        let mail = String::from_utf8(bytes).unwrap();
        assert!(mail.starts_with("From: smtp2oauth on relay.test <scanner@contoso.com>\r\nTo: <it@contoso.com>\r\nSubject: =?UTF-8?Q?"), "{mail}");
        let (head, body) = mail.split_once("\r\n\r\n").unwrap();
        assert!(head.is_ascii(), "{head}");
        assert!(head.contains("Auto-Submitted: auto-generated\r\n"));
        assert!(head.contains("Content-Type: text/plain; charset=utf-8"));
        for line in mail.split("\r\n") {
            assert!(line.len() <= 998, "{}", line.len());
        }
        for line in head.split("\r\n").filter(|l| l.contains("=?UTF-8?Q?")) {
            for w in line.split_whitespace().filter(|w| w.starts_with("=?")) {
                assert!(w.len() <= 75, "{w}");
            }
        }
        assert!(body.starts_with(
            "Account scanner: Exchange refuses our login (535 5.7.3).\r\n\r\nWhat to do"
        ));
        assert!(
            !body.replace("\r\n", "").contains(['\r', '\n']),
            "CRLF only"
        );
        let xs: usize = body
            .split("\r\n")
            .filter(|l| !l.is_empty() && l.bytes().all(|b| b == b'x'))
            .map(str::len)
            .sum();
        assert_eq!(xs, 2500, "nothing lost when a long line is broken");
        assert_eq!(header_words("plain subject"), "plain subject");
        assert_eq!(header_words("prüfen"), "=?UTF-8?Q?pr=C3=BCfen?=");
    }

    #[test]
    fn header_block_stops_at_the_blank_line() {
        assert_eq!(
            header_block(b"A: 1\r\nB: 2\r\n\r\nbody"),
            b"A: 1\r\nB: 2\r\n"
        );
        assert_eq!(header_block(b"A: 1\r\n"), b"A: 1\r\n");
    }
}

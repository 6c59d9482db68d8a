//! Failure notices: what an admin gets when a message could not be delivered.
//!
//! Devices rarely read mail, so the notice goes to an admin address (`bounce_to`), sent as the
//! account's mailbox (Exchange accepts nothing else). It has the shape of a delivery status
//! notification (RFC 3464): a readable explanation, a `message/delivery-status` part machines
//! can parse, and the original message's headers (the message itself stays in `failed/`, since a
//! scan can be tens of megabytes).

use smtp2oauth_spool::Envelope;

pub struct FailedRecipient {
    pub rcpt: String,
    /// The reply as text (`550 5.1.1 User unknown`), or our description.
    pub diagnostic: String,
    /// Enhanced status for the notice (`5.1.1`, `4.4.7` when expired).
    pub status: String,
}

pub enum Reason {
    /// The upstream refused the message or some recipients for good.
    Refused,
    /// Still undelivered when `max_queue_lifetime` ran out.
    Expired { lifetime_hours: u64 },
}

pub struct Notice<'a> {
    pub hostname: &'a str,
    pub mailbox: &'a str,
    pub to: &'a str,
    pub envelope: &'a Envelope,
    pub failed: &'a [FailedRecipient],
    pub reason: Reason,
    /// Where we tried to deliver (route target), for Remote-MTA.
    pub remote: &'a str,
    pub advice: Option<&'a str>,
    /// The original header block (without the blank line).
    pub original_headers: &'a [u8],
    pub now_unix: u64,
    pub notice_id: &'a str,
}

pub fn compose(n: &Notice<'_>) -> Vec<u8> {
    let date = smtp2oauth_date(n.now_unix);
    let boundary = format!("smtp2oauth-{}", n.notice_id);
    let env = n.envelope;
    let subject_of = original_subject(n.original_headers).unwrap_or_default();
    let subject = match n.reason {
        Reason::Refused => "Undelivered mail",
        Reason::Expired { .. } => "Undelivered mail (gave up after retrying)",
    };
    let mut out = String::new();
    out.push_str(&format!("From: Mail Delivery System <{}>\r\n", n.mailbox));
    out.push_str(&format!("To: <{}>\r\n", n.to));
    out.push_str(&format!(
        "Subject: {subject}: {}\r\n",
        sanitize(&subject_of, 120)
    ));
    out.push_str(&format!("Date: {date}\r\n"));
    out.push_str(&format!(
        "Message-ID: <{}.notice@{}>\r\n",
        n.notice_id, n.hostname
    ));
    out.push_str("Auto-Submitted: auto-replied\r\n");
    out.push_str("MIME-Version: 1.0\r\n");
    out.push_str(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\r\n"
    ));
    out.push_str("This is a MIME-encapsulated delivery status notification.\r\n\r\n");

    // 1. for people
    out.push_str(&format!("--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"));
    out.push_str(&format!(
        "smtp2oauth on {} could not deliver a message.\r\n\r\n",
        n.hostname
    ));
    out.push_str(&format!("  Queue id:  {}\r\n", env.id));
    out.push_str(&format!(
        "  Device:    {} ({})\r\n",
        env.device, env.client_ip
    ));
    out.push_str(&format!("  Account:   {}\r\n", env.account));
    out.push_str(&format!(
        "  Sender:    {}\r\n",
        env.original_sender.as_deref().unwrap_or(&env.sender)
    ));
    out.push_str(&format!("  Subject:   {}\r\n", sanitize(&subject_of, 200)));
    out.push_str(&format!(
        "  Received:  {}\r\n\r\n",
        smtp2oauth_date(env.received_at_ms / 1000)
    ));
    match n.reason {
        Reason::Refused => out.push_str("The upstream refused it for these recipients:\r\n\r\n"),
        Reason::Expired { lifetime_hours } => out.push_str(&format!(
            "It could not be delivered within {lifetime_hours} hours; the last error for each recipient:\r\n\r\n"
        )),
    }
    for f in n.failed {
        out.push_str(&format!(
            "  <{}>\r\n    {}\r\n",
            f.rcpt,
            sanitize(&f.diagnostic, 400)
        ));
    }
    if let Some(a) = n.advice {
        out.push_str(&format!("\r\nWhat to do: {a}\r\n"));
    }
    out.push_str(&format!(
        "\r\nThe message is kept in the relay's failed area. To retry it after fixing the cause:\r\n  smtp2oauth queue requeue {}\r\n\r\n",
        env.id
    ));

    // 2. for machines
    out.push_str(&format!(
        "--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
    ));
    out.push_str(&format!("Reporting-MTA: dns; {}\r\n", n.hostname));
    out.push_str(&format!("X-Smtp2oauth-Queue-ID: {}\r\n", env.id));
    out.push_str(&format!(
        "Arrival-Date: {}\r\n",
        smtp2oauth_date(env.received_at_ms / 1000)
    ));
    for f in n.failed {
        out.push_str("\r\n");
        out.push_str(&format!("Final-Recipient: rfc822; {}\r\n", f.rcpt));
        out.push_str("Action: failed\r\n");
        out.push_str(&format!("Status: {}\r\n", f.status));
        if !n.remote.is_empty() {
            out.push_str(&format!("Remote-MTA: dns; {}\r\n", sanitize(n.remote, 200)));
        }
        out.push_str(&format!(
            "Diagnostic-Code: smtp; {}\r\n",
            sanitize(&f.diagnostic, 400)
        ));
        out.push_str(&format!("Last-Attempt-Date: {date}\r\n"));
    }
    out.push_str("\r\n");

    // 3. the original headers
    out.push_str(&format!(
        "--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
    ));
    let mut bytes = out.into_bytes();
    let headers = n.original_headers;
    bytes.extend_from_slice(headers);
    if !headers.ends_with(b"\r\n") {
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    bytes
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
        let failed = [FailedRecipient {
            rcpt: "b@example.com".into(),
            diagnostic: "550 5.1.1 User unknown".into(),
            status: "5.1.1".into(),
        }];
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

    #[test]
    fn header_block_stops_at_the_blank_line() {
        assert_eq!(
            header_block(b"A: 1\r\nB: 2\r\n\r\nbody"),
            b"A: 1\r\nB: 2\r\n"
        );
        assert_eq!(header_block(b"A: 1\r\n"), b"A: 1\r\n");
    }
}

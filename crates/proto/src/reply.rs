//! SMTP replies as data.
//!
//! Upstream replies are the single most useful thing an admin sees when mail fails ("535 5.7.139
//! SmtpClientAuthentication is disabled for the Tenant"), so we keep them whole: the code, the
//! enhanced status code with its full range (Exchange uses details such as `4.7.500` and `5.7.708`,
//! which do not fit in a byte), and every line of text. The same type is used for the replies we
//! send to devices, so a reply can travel from the upstream to a device unchanged.

use std::fmt;

/// An RFC 3463 enhanced status code, `class.subject.detail`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EnhancedStatus {
    /// `2`, `4` or `5`.
    pub class: u8,
    /// 0 to 999 (`7` in `5.7.139`).
    pub subject: u16,
    /// 0 to 999 (`139` in `5.7.139`).
    pub detail: u16,
}

impl EnhancedStatus {
    /// `class.subject.detail`.
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        Self {
            class,
            subject,
            detail,
        }
    }

    /// Parses exactly `c.s.d` (`5.1.1`, `4.7.500`).
    pub fn parse(text: &str) -> Option<EnhancedStatus> {
        match Self::parse_prefix(text)? {
            (status, "") if !text.ends_with(' ') => Some(status),
            _ => None,
        }
    }

    /// Parses `c.s.d` at the start of `text` (followed by a space or the end), returning the code
    /// and the rest of the text after the separating space. Subject and detail are 1-3 digits as
    /// RFC 3463 allows; the class must be 2, 4 or 5.
    pub fn parse_prefix(text: &str) -> Option<(EnhancedStatus, &str)> {
        let bytes = text.as_bytes();
        let class = match bytes.first()? {
            c @ (b'2' | b'4' | b'5') => c - b'0',
            _ => return None,
        };
        if bytes.get(1) != Some(&b'.') {
            return None;
        }
        let (subject, used_s) = parse_digits(&bytes[2..])?;
        let pos = 2 + used_s;
        if bytes.get(pos) != Some(&b'.') {
            return None;
        }
        let (detail, used_d) = parse_digits(&bytes[pos + 1..])?;
        let end = pos + 1 + used_d;
        let rest = match bytes.get(end) {
            None => "",
            Some(b' ') => &text[end + 1..],
            Some(_) => return None,
        };
        Some((
            EnhancedStatus {
                class,
                subject,
                detail,
            },
            rest,
        ))
    }
}

fn parse_digits(bytes: &[u8]) -> Option<(u16, usize)> {
    let n = bytes
        .iter()
        .take(4)
        .take_while(|b| b.is_ascii_digit())
        .count();
    if n == 0 || n > 3 {
        return None;
    }
    let mut v: u16 = 0;
    for b in &bytes[..n] {
        v = v * 10 + u16::from(b - b'0');
    }
    Some((v, n))
}

impl fmt::Display for EnhancedStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One SMTP reply: a three-digit code, an optional enhanced status code, and one or more lines
/// of text (without the code and status prefix, without line endings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    status: Option<EnhancedStatus>,
    lines: Vec<String>,
}

/// The severity of a reply, from its first digit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// 2xx.
    Positive,
    /// 3xx: more input expected (354, 334).
    Intermediate,
    /// 4xx: try again later.
    Transient,
    /// 5xx: do not retry.
    Permanent,
}

impl Reply {
    /// Builds a reply. Text containing CR or LF is split into lines, so a reply can never inject
    /// extra protocol lines, whatever text (for example an upstream's) it carries.
    pub fn new(code: u16, status: Option<EnhancedStatus>, text: impl AsRef<str>) -> Reply {
        let mut lines: Vec<String> = text
            .as_ref()
            .split(['\r', '\n'])
            .filter(|l| !l.is_empty())
            .map(sanitize_line)
            .collect();
        if lines.is_empty() {
            lines.push(String::new());
        }
        Reply {
            code: clamp_code(code),
            status,
            lines,
        }
    }

    /// A reply with an enhanced status code.
    pub fn with_status(code: u16, status: (u8, u16, u16), text: impl AsRef<str>) -> Reply {
        Reply::new(
            code,
            Some(EnhancedStatus::new(status.0, status.1, status.2)),
            text,
        )
    }

    /// A multi-line reply (EHLO, HELP).
    pub fn multiline(code: u16, status: Option<EnhancedStatus>, lines: Vec<String>) -> Reply {
        let mut r = Reply::new(code, status, "");
        let lines: Vec<String> = lines.iter().map(|l| sanitize_line(l)).collect();
        if !lines.is_empty() {
            r.lines = lines;
        }
        r
    }

    /// The three-digit code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The enhanced status code, when the reply has one.
    pub fn status(&self) -> Option<EnhancedStatus> {
        self.status
    }

    /// The text of each line, without code and status.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// All lines joined with a space: the text as one log-friendly string.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }

    /// What the first digit says.
    pub fn severity(&self) -> Severity {
        match self.code / 100 {
            2 => Severity::Positive,
            3 => Severity::Intermediate,
            4 => Severity::Transient,
            _ => Severity::Permanent,
        }
    }

    /// 2xx.
    pub fn is_positive(&self) -> bool {
        self.severity() == Severity::Positive
    }

    /// 4xx: may succeed later.
    pub fn is_transient(&self) -> bool {
        self.severity() == Severity::Transient
    }

    /// 5xx: will not succeed as it is.
    pub fn is_permanent(&self) -> bool {
        self.severity() == Severity::Permanent
    }

    /// The same reply with another code and status class (used when a failure must be reported
    /// with a different severity than the upstream gave, e.g. an upstream 5xx on AUTH that we
    /// must not turn into a permanent failure of the device's message).
    pub fn with_code(mut self, code: u16) -> Reply {
        self.code = clamp_code(code);
        if let Some(s) = &mut self.status {
            s.class = (self.code / 100) as u8;
        }
        self
    }

    /// Appends the wire form (`250-...\r\n250 ...\r\n`) to `out`. Each line is cut to fit
    /// [`MAX_WIRE_LINE`]: stored text is capped without knowing the prefix, and devices with
    /// fixed 512-byte reply buffers exist.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let last = self.lines.len() - 1;
        for (i, line) in self.lines.iter().enumerate() {
            let start = out.len();
            out.extend_from_slice(format!("{:03}", self.code).as_bytes());
            out.push(if i == last { b' ' } else { b'-' });
            if let Some(status) = self.status {
                out.extend_from_slice(status.to_string().as_bytes());
                if !line.is_empty() {
                    out.push(b' ');
                }
            }
            let room = MAX_WIRE_LINE.saturating_sub(out.len() - start + 2);
            out.extend_from_slice(truncate_at_char(line, room).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The wire form as bytes.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_to(&mut v);
        v
    }
}

impl fmt::Display for Reply {
    /// One line: `535 5.7.3 Authentication unsuccessful`, multi-line text joined with spaces.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(s) = self.status {
            write!(f, " {s}")?;
        }
        let text = self.text();
        if !text.is_empty() {
            write!(f, " {text}")?;
        }
        Ok(())
    }
}

/// RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets, code and CRLF included.
pub const MAX_WIRE_LINE: usize = 512;

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary: how
/// every bounded text we keep or send (reply lines, usernames, recorded replies) is shortened.
pub fn truncate_at_char(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

fn clamp_code(code: u16) -> u16 {
    if (200..=599).contains(&code) {
        code
    } else {
        451
    }
}

/// Keeps a reply line printable: control characters other than tab become `?`, and the length is
/// capped (RFC 5321 allows 512 octets per reply line).
fn sanitize_line(line: &str) -> String {
    let mut s: String = line
        .chars()
        .map(|c| if c.is_control() && c != '\t' { '?' } else { c })
        .collect();
    if s.len() > 500 {
        let mut cut = 500;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// Why a reply received from a peer could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyParseError {
    /// A line that does not start with a code; its start.
    #[error("reply line does not start with a three-digit code: {0:?}")]
    BadCode(String),
    /// A multi-line reply whose lines carry different codes.
    #[error("reply lines carry different codes ({0} then {1})")]
    MixedCodes(u16, u16),
    /// More than this many lines.
    #[error("reply has more than {0} lines")]
    TooManyLines(usize),
    /// A line longer than this many bytes.
    #[error("reply line longer than {0} bytes")]
    LineTooLong(usize),
}

/// Assembles a reply from the lines a peer sends (`250-...`, `250 ...`). Framing into lines is
/// the caller's job; this checks codes, finds the last line, and keeps the enhanced status.
#[derive(Debug, Default)]
pub struct ReplyAssembler {
    code: Option<u16>,
    status: Option<EnhancedStatus>,
    lines: Vec<String>,
}

/// A reply is bounded so a hostile or broken upstream cannot make us buffer without end.
pub const MAX_REPLY_LINES: usize = 200;
/// The longest reply line taken from a peer, in bytes.
pub const MAX_REPLY_LINE: usize = 8192;

impl ReplyAssembler {
    /// An assembler waiting for a reply's first line.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one line (with or without its CRLF). Returns the finished reply after its last line.
    pub fn push_line(&mut self, raw: &[u8]) -> Result<Option<Reply>, ReplyParseError> {
        if raw.len() > MAX_REPLY_LINE {
            return Err(ReplyParseError::LineTooLong(MAX_REPLY_LINE));
        }
        let raw = trim_eol(raw);
        let line = String::from_utf8_lossy(raw);
        let b = line.as_bytes();
        if b.len() < 3 || !b[..3].iter().all(u8::is_ascii_digit) {
            return Err(ReplyParseError::BadCode(line.chars().take(40).collect()));
        }
        let code =
            u16::from(b[0] - b'0') * 100 + u16::from(b[1] - b'0') * 10 + u16::from(b[2] - b'0');
        let (last, text) = match b.get(3) {
            None => (true, ""),
            Some(b' ') => (true, &line[4..]),
            Some(b'-') => (false, &line[4..]),
            Some(_) => return Err(ReplyParseError::BadCode(line.chars().take(40).collect())),
        };
        match self.code {
            None => self.code = Some(code),
            Some(c) if c != code => return Err(ReplyParseError::MixedCodes(c, code)),
            Some(_) => {}
        }
        // RFC 3463: the status class must agree with the reply code; otherwise it is just text.
        let text = match EnhancedStatus::parse_prefix(text) {
            Some((st, rest)) if u16::from(st.class) == code / 100 => {
                if self.lines.is_empty() {
                    self.status = Some(st);
                    rest
                } else if self.status == Some(st) {
                    rest
                } else {
                    text
                }
            }
            _ => text,
        };
        if self.lines.len() >= MAX_REPLY_LINES {
            return Err(ReplyParseError::TooManyLines(MAX_REPLY_LINES));
        }
        self.lines.push(sanitize_line(text));
        if last {
            let reply = Reply {
                code: clamp_code(code),
                status: self.status.take(),
                lines: std::mem::take(&mut self.lines),
            };
            self.code = None;
            return Ok(Some(reply));
        }
        Ok(None)
    }

    /// True when part of a multi-line reply has been seen.
    pub fn in_progress(&self) -> bool {
        self.code.is_some()
    }
}

fn trim_eol(mut raw: &[u8]) -> &[u8] {
    while let [rest @ .., b'\r' | b'\n'] = raw {
        raw = rest;
    }
    raw
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(lines: &[&str]) -> Reply {
        let mut a = ReplyAssembler::new();
        for (i, l) in lines.iter().enumerate() {
            let r = a.push_line(l.as_bytes()).unwrap();
            if i + 1 == lines.len() {
                return r.expect("last line completes the reply");
            }
            assert!(r.is_none());
        }
        unreachable!()
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn enhanced_status_table() {
        let cases: &[(&str, Option<(u8, u16, u16, &str)>)] = &[
            (
                "5.7.139 Authentication unsuccessful",
                Some((5, 7, 139, "Authentication unsuccessful")),
            ),
            ("4.7.500 Server busy", Some((4, 7, 500, "Server busy"))),
            ("5.7.708 Access denied", Some((5, 7, 708, "Access denied"))),
            ("2.0.0", Some((2, 0, 0, ""))),
            (
                "5.2.252 SendAsDenied; x",
                Some((5, 2, 252, "SendAsDenied; x")),
            ),
            ("3.0.0 no such class", None),
            ("5.7.1234 too long", None),
            ("5..1 missing", None),
            ("5.7.1x", None),
            ("8BITMIME", None),
            ("", None),
        ];
        for (input, want) in cases {
            let got = EnhancedStatus::parse_prefix(input)
                .map(|(s, rest)| (s.class, s.subject, s.detail, rest));
            assert_eq!(got, *want, "input {input:?}");
        }
        assert_eq!(
            EnhancedStatus::parse("4.7.500"),
            Some(EnhancedStatus::new(4, 7, 500))
        );
        for bad in ["4.7.500 busy", "4.7.500 ", "4.7", ""] {
            assert_eq!(EnhancedStatus::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn assembles_exchange_replies_whole() {
        let r = parse(&[
            "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.",
        ]);
        assert_eq!(r.code(), 535);
        assert_eq!(r.status(), Some(EnhancedStatus::new(5, 7, 139)));
        assert_eq!(
            r.text(),
            "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant."
        );
        assert!(r.is_permanent());

        let r = parse(&[
            "451 4.7.500 Server busy. Please try again later from [203.0.113.9]. (S77719)",
        ]);
        assert_eq!(r.status(), Some(EnhancedStatus::new(4, 7, 500)));
        assert!(r.is_transient());
        assert_eq!(
            r.to_string(),
            "451 4.7.500 Server busy. Please try again later from [203.0.113.9]. (S77719)"
        );
    }

    #[test]
    fn multiline_with_repeated_status() {
        let r = parse(&[
            "535-5.7.8 Username and Password not accepted. Learn more at\r\n",
            "535 5.7.8  https://support.google.com/mail/?p=BadCredentials\r\n",
        ]);
        assert_eq!(r.lines().len(), 2);
        assert_eq!(
            r.lines()[0],
            "Username and Password not accepted. Learn more at"
        );
        assert_eq!(
            r.lines()[1],
            " https://support.google.com/mail/?p=BadCredentials"
        );
        assert_eq!(
            String::from_utf8(r.to_wire()).unwrap(),
            "535-5.7.8 Username and Password not accepted. Learn more at\r\n535 5.7.8  https://support.google.com/mail/?p=BadCredentials\r\n"
        );
    }

    #[test]
    fn ehlo_reply_lines_are_not_mistaken_for_status() {
        let r = parse(&[
            "250-mx.test Hello",
            "250-SIZE 157286400",
            "250-8BITMIME",
            "250 AUTH LOGIN XOAUTH2",
        ]);
        assert_eq!(r.status(), None);
        assert_eq!(r.lines()[2], "8BITMIME");
    }

    #[test]
    fn status_class_must_match_code() {
        let r = parse(&["250 5.0.0 odd"]);
        assert_eq!(r.status(), None);
        assert_eq!(r.text(), "5.0.0 odd");
    }

    #[test]
    fn bad_replies_are_errors() {
        let mut a = ReplyAssembler::new();
        assert!(matches!(
            a.push_line(b"hello"),
            Err(ReplyParseError::BadCode(_))
        ));
        let mut a = ReplyAssembler::new();
        assert!(a.push_line(b"250-a").unwrap().is_none());
        assert_eq!(
            a.push_line(b"251 b"),
            Err(ReplyParseError::MixedCodes(250, 251))
        );
        let mut a = ReplyAssembler::new();
        assert!(matches!(
            a.push_line(b"250x"),
            Err(ReplyParseError::BadCode(_))
        ));
        // a bare code is a complete reply
        let mut a = ReplyAssembler::new();
        assert_eq!(a.push_line(b"220\r\n").unwrap().unwrap().code(), 220);
    }

    #[test]
    fn reply_text_cannot_inject_lines() {
        let r = Reply::new(
            554,
            Some(EnhancedStatus::new(5, 0, 0)),
            "bad\r\n250 2.0.0 OK\n\u{0}x",
        );
        let wire = String::from_utf8(r.to_wire()).unwrap();
        assert_eq!(
            wire,
            "554-5.0.0 bad\r\n554-5.0.0 250 2.0.0 OK\r\n554 5.0.0 ?x\r\n"
        );
    }

    /// A 500-byte upstream text behind `554 5.2.252 ` must still make a line of at most 512
    /// octets.
    #[test]
    fn wire_lines_fit_in_512_octets() {
        let long = format!("{}é{}", "x".repeat(496), "y".repeat(600));
        for status in [None, Some(EnhancedStatus::new(5, 2, 252))] {
            for r in [
                Reply::new(554, status, &long),
                parse(&[&format!("554 5.2.252 {long}")]),
                Reply::multiline(250, status, vec![long.clone(), "short".into()]),
            ] {
                let wire = String::from_utf8(r.to_wire()).unwrap();
                for line in wire.split_inclusive("\r\n") {
                    assert!(line.len() <= MAX_WIRE_LINE, "{} octets", line.len());
                }
                assert!(wire.contains("xxxx"), "text kept up to the limit");
            }
        }
        // Short lines are untouched.
        assert_eq!(
            Reply::new(250, Some(EnhancedStatus::new(2, 0, 0)), "OK").to_wire(),
            b"250 2.0.0 OK\r\n"
        );
    }

    #[test]
    fn with_code_keeps_status_consistent() {
        let r = parse(&["535 5.7.3 Authentication unsuccessful"]).with_code(454);
        assert_eq!(r.to_string(), "454 4.7.3 Authentication unsuccessful");
    }
}

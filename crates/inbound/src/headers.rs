//! The only two changes we make to a device's message: a `Received:` header on top, and, when
//! `rewrite_sender` is on, the `From:` (and `Sender:`) address replaced by the account's mailbox.
//!
//! Exchange refuses a message whose From is not the mailbox or one it may send as
//! (`554 5.2.252 SendAsDenied`), and printers send as `scanner@printer.local` or their login name.
//! Rewriting keeps the device's display name ("Scanner 3rd floor"), so recipients still see which
//! device sent the scan. Everything else, including the rest of the header block, passes through
//! byte for byte.
//!
//! A From (or Sender) is kept only when it is one plain field holding exactly one mailbox the
//! device may use. Everything that readers could take for another sender is rewritten: a list
//! of mailboxes or a group (`From: HR <hr@contoso.com>, Boss <ceo@evil.example>`) becomes the
//! account's mailbox with the first mailbox's display name; a field in obsolete syntax
//! (`From : ...`, blanks before the colon) is rewritten like a disallowed one; and a second
//! From (or Sender) field is removed, so every reader sees the one we checked.
//!
//! The rewriter sees the message as it streams in (already CRLF-canonical, see `proto::dot`). It
//! holds back only the header block, up to a cap; a header block larger than the cap is passed on
//! unchanged (and logged), never buffered without bound.

use crate::identity::SenderPolicy;
use smtp2oauth_proto::Address;
use std::borrow::Cow;

/// Largest header block we buffer for rewriting.
pub const MAX_HEADER_BLOCK: usize = 256 * 1024;

/// Streaming From/Sender rewriter.
pub struct HeaderRewriter {
    policy: SenderPolicy,
    buf: Vec<u8>,
    state: RewriteState,
    /// What the rewriter did, for the log.
    pub outcome: RewriteOutcome,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RewriteState {
    Collecting,
    Passing,
}

/// What the From rewriter did to one message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RewriteOutcome {
    /// The From the device wrote (its value), when it was replaced.
    pub from_rewritten: Option<String>,
    /// Further From and Sender fields removed.
    pub fields_removed: usize,
    /// The message had no From; the mailbox was added.
    pub from_added: bool,
    /// The Sender header was set to the mailbox.
    pub sender_rewritten: bool,
    /// The header block exceeded [`MAX_HEADER_BLOCK`] and was passed through unchanged.
    pub too_large: bool,
}

impl HeaderRewriter {
    /// A rewriter for a device with `policy`.
    pub fn new(policy: SenderPolicy) -> Self {
        HeaderRewriter {
            policy,
            buf: Vec::new(),
            state: RewriteState::Collecting,
            outcome: RewriteOutcome::default(),
        }
    }

    /// Feeds message bytes; appends whatever can be released to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if self.state == RewriteState::Passing {
            out.extend_from_slice(input);
            return;
        }
        self.buf.extend_from_slice(input);
        let end = if self.buf.starts_with(b"\r\n") {
            Some(0)
        } else {
            memchr::memmem::find(&self.buf, b"\r\n\r\n").map(|p| p + 2)
        };
        match end {
            Some(end) => {
                let body = self.buf.split_off(end);
                let headers = std::mem::take(&mut self.buf);
                self.rewrite_block(&headers, out);
                out.extend_from_slice(&body);
                self.state = RewriteState::Passing;
            }
            None if self.buf.len() > MAX_HEADER_BLOCK => {
                self.outcome.too_large = true;
                out.append(&mut self.buf);
                self.state = RewriteState::Passing;
            }
            None => {}
        }
    }

    /// Releases anything still held (a message that is all headers, without a blank line).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.state == RewriteState::Collecting {
            let headers = std::mem::take(&mut self.buf);
            self.rewrite_block(&headers, out);
            self.state = RewriteState::Passing;
        }
    }

    /// `headers` is the header block including the CRLF of its last line (not the blank line).
    fn rewrite_block(&mut self, headers: &[u8], out: &mut Vec<u8>) {
        let (mut saw_from, mut saw_sender) = (false, false);
        for field in split_fields(headers) {
            let (name, obsolete) = field_name(field);
            let (label, seen) = if name.eq_ignore_ascii_case(b"from") {
                ("From", &mut saw_from)
            } else if name.eq_ignore_ascii_case(b"sender") {
                ("Sender", &mut saw_sender)
            } else {
                out.extend_from_slice(field);
                continue;
            };
            if std::mem::replace(seen, true) {
                self.outcome.fields_removed += 1;
                continue;
            }
            let value = field_value(field);
            if !obsolete && self.allowed(&value) {
                out.extend_from_slice(field);
                continue;
            }
            let display = first_display(&value);
            let field = format_mailbox_field(label, display.as_deref(), &self.policy.mailbox);
            out.extend_from_slice(field.as_bytes());
            if label == "From" {
                self.outcome.from_rewritten = Some(value);
            } else {
                self.outcome.sender_rewritten = true;
            }
        }
        if !saw_from {
            out.extend_from_slice(
                format_mailbox_field("From", None, &self.policy.mailbox).as_bytes(),
            );
            self.outcome.from_added = true;
        }
    }

    /// The value is exactly one mailbox, one the device may use.
    fn allowed(&self, value: &str) -> bool {
        single_mailbox(value)
            .and_then(|addr| Address::parse(&addr).ok())
            .is_some_and(|a| self.policy.allows(&a))
    }
}

/// Splits a header block into fields, each with its continuation lines and final CRLF.
fn split_fields(block: &[u8]) -> Vec<&[u8]> {
    let mut fields = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < block.len() {
        let line_end = memchr::memchr(b'\n', &block[i..])
            .map(|p| i + p + 1)
            .unwrap_or(block.len());
        let next_is_continuation = matches!(block.get(line_end), Some(b' ' | b'\t'));
        if !next_is_continuation {
            fields.push(&block[start..line_end]);
            start = line_end;
        }
        i = line_end;
    }
    if start < block.len() {
        fields.push(&block[start..]);
    }
    fields
}

/// The field's name, and whether blanks stand between it and the colon (RFC 5322's obsolete
/// syntax, which readers differ about).
fn field_name(field: &[u8]) -> (&[u8], bool) {
    let colon = memchr::memchr(b':', field).unwrap_or(0);
    let written = &field[..colon];
    let name = written.trim_ascii_end();
    // a name with blanks inside is not a header field name (e.g. an mbox "From " line)
    if name.iter().any(|b| b.is_ascii_whitespace()) {
        (b"", false)
    } else {
        (name, name.len() != written.len())
    }
}

/// The unfolded value of a field.
fn field_value(field: &[u8]) -> String {
    let colon = memchr::memchr(b':', field).map(|p| p + 1).unwrap_or(0);
    let raw = String::from_utf8_lossy(&field[colon..]);
    raw.replace("\r\n", "").replace('\n', "").trim().to_string()
}

/// Extracts the display name (raw, as written) and the address of the first mailbox in a
/// From/Sender value. Handles `Name <addr>`, `"Quoted, Name" <addr>`, `addr (Comment)`, `addr`.
pub fn parse_mailbox(value: &str) -> (Option<String>, Option<String>) {
    let v = value.trim();
    // Find a '<' that is neither inside quotes nor inside a (possibly nested) comment; a quote
    // inside a comment is just a character, as is a parenthesis inside quotes.
    let mut in_quote = false;
    let mut comment_depth = 0usize;
    let mut escaped = false;
    let mut lt = None;
    for (i, c) in v.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quote || comment_depth > 0 => escaped = true,
            '"' if comment_depth == 0 => in_quote = !in_quote,
            '(' if !in_quote => comment_depth += 1,
            ')' if !in_quote && comment_depth > 0 => comment_depth -= 1,
            '<' if !in_quote && comment_depth == 0 => {
                lt = Some(i);
                break;
            }
            _ => {}
        }
    }
    if let Some(lt) = lt {
        let display = v[..lt].trim();
        let rest = &v[lt + 1..];
        let addr = rest.split('>').next().unwrap_or("").trim();
        let display = (!display.is_empty()).then(|| display.to_string());
        let addr = (!addr.is_empty()).then(|| addr.to_string());
        return (display, addr);
    }
    // addr-spec, possibly followed by a comment used as a display name
    let (addr_part, comment) = match v.find('(') {
        Some(p) => (
            v[..p].trim(),
            v[p + 1..]
                .rsplit_once(')')
                .map(|(c, _)| c.trim())
                .filter(|c| !c.is_empty()),
        ),
        None => (v, None),
    };
    let addr = addr_part.split([',', ' ']).next().unwrap_or("").trim();
    let addr = (!addr.is_empty()).then(|| addr.to_string());
    let display = comment.map(quote_phrase);
    (display, addr)
}

/// The characters of a header value that stand outside quoted strings, comments and angle
/// brackets, with their positions: where list separators and group colons can be.
fn top_level(value: &str) -> Vec<(usize, char)> {
    let mut out = Vec::new();
    let (mut depth, mut in_quote, mut in_angle, mut escaped) = (0usize, false, false, false);
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quote || depth > 0 => escaped = true,
            '"' if depth == 0 => in_quote = !in_quote,
            _ if in_quote => {}
            '(' => depth += 1,
            ')' if depth > 0 => depth -= 1,
            _ if depth > 0 => {}
            '<' => {
                in_angle = true;
                out.push((i, c));
            }
            '>' => {
                in_angle = false;
                out.push((i, c));
            }
            _ if in_angle => {}
            c => out.push((i, c)),
        }
    }
    out
}

/// Where the non-empty entries of an address list end (split at top-level commas).
fn list_ends(value: &str) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut start = 0;
    let commas = top_level(value).into_iter().filter(|&(_, c)| c == ',');
    for end in commas.map(|(i, _)| i).chain([value.len()]) {
        if !value[start..end].trim().is_empty() {
            ends.push(end);
        }
        start = (end + 1).min(value.len());
    }
    ends
}

/// The display name of the first mailbox of a From or Sender value: the first entry with an
/// address, together with any entries before it that are only words (`Scan, 3F <mfp@...>` is a
/// display name with an unquoted comma to its writer); a group's name is left out.
fn first_display(value: &str) -> Option<String> {
    let ends = list_ends(value);
    let mut start = 0;
    let end = ends.iter().copied().find(|&end| {
        let item = &value[start..end];
        start = (end + 1).min(value.len());
        top_level(item).iter().any(|&(_, c)| c == '@' || c == '<')
    });
    let text = &value[..end.or(ends.first().copied())?];
    let text = match top_level(text).into_iter().find(|&(_, c)| c == ':') {
        Some((i, _)) => &text[i + 1..],
        None => text,
    };
    parse_mailbox(text).0
}

/// The address of a value that is exactly one mailbox (`addr`, `addr (comment)`,
/// `phrase <addr>`, `<addr>`); None for a list, a group, a route, or text around the mailbox.
fn single_mailbox(value: &str) -> Option<String> {
    if top_level(value)
        .iter()
        .any(|&(_, c)| matches!(c, ',' | ':' | ';'))
    {
        return None;
    }
    let (_, addr) = parse_mailbox(value);
    let addr = addr?;
    let bare = strip_comments(value)?;
    let bare = bare.trim();
    let Some(lt) = find_unquoted(bare, '<') else {
        return (bare == addr).then_some(addr);
    };
    let inner = bare[lt + 1..].strip_suffix('>')?;
    let phrase = bare[..lt].trim();
    (inner.trim() == addr && (phrase.is_empty() || is_phrase(phrase))).then_some(addr)
}

/// The text without its comments; None when a comment or a quoted string does not end.
fn strip_comments(value: &str) -> Option<String> {
    let mut out = String::with_capacity(value.len());
    let (mut depth, mut in_quote, mut escaped) = (0usize, false, false);
    for c in value.chars() {
        match c {
            _ if escaped => {
                escaped = false;
                if depth == 0 {
                    out.push(c);
                }
            }
            '\\' if in_quote || depth > 0 => {
                escaped = true;
                if depth == 0 {
                    out.push(c);
                }
            }
            '"' if depth == 0 => {
                in_quote = !in_quote;
                out.push(c);
            }
            '(' if !in_quote => depth += 1,
            ')' if !in_quote && depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    (depth == 0 && !in_quote).then_some(out)
}

/// The first `c` outside a quoted string.
fn find_unquoted(s: &str, c: char) -> Option<usize> {
    let (mut in_quote, mut escaped) = (false, false);
    for (i, ch) in s.char_indices() {
        match ch {
            _ if escaped => escaped = false,
            '\\' if in_quote => escaped = true,
            '"' => in_quote = !in_quote,
            _ if ch == c && !in_quote => return Some(i),
            _ => {}
        }
    }
    None
}

/// A display name taken from a comment becomes a quoted string (unless it is encoded words).
fn quote_phrase(s: &str) -> String {
    if s.starts_with("=?") && s.ends_with("?=") && is_phrase(s) {
        return s.to_string();
    }
    quote(s)
}

/// A quoted string with `s` as its text; control characters (no use in a name, and not
/// allowed in a quoted string) are dropped.
fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars().filter(|&c| c == '\t' || !c.is_control()) {
        if c == '"' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q
}

/// True when `s` can stand before `<addr>` as it is: atoms, quoted strings and encoded words
/// with whitespace between them (UTF-8 allowed, RFC 6532). Anything else (`Scan, 3F`, an
/// unbalanced quote, `<` outside quotes) would make a mail parser read a different address, or a
/// list, instead of the mailbox we put there. Comments are valid in a phrase, but parsers
/// disagree about them (mail-parser reads `e (c) f <addr>` as the address `e`), so a display
/// name with one is quoted too: we write only what every parser reads the same way. For the
/// same reason words must be apart: RFC 5322 lets a quoted string touch an atom, but a parser
/// that decodes `=?...?=` reads an atom like `=?x"y?=` as one encoded word and no longer sees
/// the quote open.
fn is_phrase(s: &str) -> bool {
    let b = s.as_bytes();
    let atext =
        |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.".contains(&c) || c >= 0x80;
    // Inside quotes: printable characters and whitespace, no controls (RFC 5322 qtext, WSP).
    let qtext = |c: u8| c == b'\t' || (c >= 0x20 && c != 0x7f);
    let mut i = 0;
    let mut words = 0;
    while i < b.len() {
        if words > 0 && !matches!(b[i], b' ' | b'\t') && !matches!(b[i - 1], b' ' | b'\t') {
            return false;
        }
        match b[i] {
            b' ' | b'\t' => i += 1,
            b'"' => {
                i += 1;
                loop {
                    match b.get(i) {
                        None => return false,
                        Some(b'\\') if i + 1 < b.len() && qtext(b[i + 1]) => i += 2,
                        Some(b'"') => break,
                        Some(&c) if qtext(c) => i += 1,
                        Some(_) => return false,
                    }
                }
                i += 1;
                words += 1;
            }
            c if atext(c) => {
                while i < b.len() && atext(b[i]) {
                    i += 1;
                }
                words += 1;
            }
            _ => return false,
        }
    }
    words > 0
}

fn format_mailbox_field(name: &str, display: Option<&str>, mailbox: &Address) -> String {
    match display {
        Some(d) if is_phrase(d) => format!("{name}: {d} <{mailbox}>\r\n"),
        Some(d) if !d.trim().is_empty() => {
            format!("{name}: {} <{mailbox}>\r\n", quote(&unquote(d.trim())))
        }
        _ => format!("{name}: {mailbox}\r\n"),
    }
}

/// The text of a display name that is one quoted string (`"a \"b\""` → `a "b"`), so quoting it
/// again does not show its quotes; anything else as it is.
fn unquote(d: &str) -> Cow<'_, str> {
    let Some(inner) = d.strip_prefix('"').and_then(|r| r.strip_suffix('"')) else {
        return Cow::Borrowed(d);
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            '"' => return Cow::Borrowed(d), // several quoted strings: keep it all
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The `Received:` header we prepend (RFC 5321 §4.4). It does not name the device's login.
pub struct ReceivedInfo<'a> {
    /// The name the device gave in EHLO or HELO.
    pub helo: &'a str,
    /// The device's address.
    pub client_ip: &'a str,
    /// Our name.
    pub hostname: &'a str,
    /// The device said EHLO (ESMTP).
    pub esmtp: bool,
    /// The session was encrypted.
    pub tls: bool,
    /// The device logged in.
    pub authenticated: bool,
    /// The message's queue id.
    pub queue_id: &'a str,
    /// Named only when the message has a single recipient (as Postfix does), to not disclose Bcc.
    pub single_recipient: Option<&'a Address>,
    /// When the message arrived (seconds since the epoch).
    pub unix_time: u64,
}

/// Our `Received:` header for a message (RFC 5321 section 4.4), folded, with CRLF.
pub fn received_header(r: &ReceivedInfo<'_>) -> String {
    // RFC 3848 protocol names
    let with = match (r.esmtp, r.tls, r.authenticated) {
        (false, _, _) => "SMTP",
        (true, false, false) => "ESMTP",
        (true, true, false) => "ESMTPS",
        (true, false, true) => "ESMTPA",
        (true, true, true) => "ESMTPSA",
    };
    let helo: String = r
        .helo
        .chars()
        .filter(|c| !c.is_control() && *c != '(' && *c != ')')
        .take(100)
        .collect();
    let mut h = format!(
        "Received: from {} ([{}])\r\n\tby {} (smtp2oauth) with {} id {}",
        if helo.is_empty() { "unknown" } else { &helo },
        r.client_ip,
        r.hostname,
        with,
        r.queue_id
    );
    if let Some(rcpt) = r.single_recipient {
        h.push_str(&format!("\r\n\tfor {}", rcpt.path()));
    }
    h.push_str(&format!(";\r\n\t{}\r\n", rfc5322_date(r.unix_time)));
    h
}

/// `Mon, 23 Nov 2026 10:15:00 +0000`
pub fn rfc5322_date(unix: u64) -> String {
    let days = (unix / 86400) as i64;
    let secs = unix % 86400;
    let (y, m, d) = civil_from_days(days);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days.rem_euclid(7)) as usize];
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(m - 1) as usize];
    format!(
        "{weekday}, {d} {month} {y} {:02}:{:02}:{:02} +0000",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> SenderPolicy {
        SenderPolicy::new(
            Address::parse("scanner@contoso.com").unwrap(),
            &["*@contoso.com".into()],
            true,
        )
    }

    fn rewrite(msg: &[u8], chunk: usize) -> (Vec<u8>, RewriteOutcome) {
        let mut r = HeaderRewriter::new(policy());
        let mut out = Vec::new();
        for c in msg.chunks(chunk) {
            r.push(c, &mut out);
        }
        r.finish(&mut out);
        (out, r.outcome)
    }

    #[test]
    fn from_rewrite_table() {
        let cases: &[(&str, &str)] = &[
            (
                "From: Scanner 3F <scanner@printer.local>\r\nSubject: s\r\n\r\nbody\r\n",
                "From: Scanner 3F <scanner@contoso.com>\r\nSubject: s\r\n\r\nbody\r\n",
            ),
            (
                "From: \"Scan, <3F>\" <mfp@printer.local>\r\n\r\nb\r\n",
                "From: \"Scan, <3F>\" <scanner@contoso.com>\r\n\r\nb\r\n",
            ),
            (
                "From: mfp@printer.local (Scanner 3F)\r\n\r\nb\r\n",
                "From: \"Scanner 3F\" <scanner@contoso.com>\r\n\r\nb\r\n",
            ),
            (
                "From: mfp@printer.local\r\n\r\nb\r\n",
                "From: scanner@contoso.com\r\n\r\nb\r\n",
            ),
            (
                "From: mfp-3f\r\n\r\nb\r\n",
                "From: scanner@contoso.com\r\n\r\nb\r\n",
            ),
            (
                "From: =?UTF-8?B?U2PDpG5uZXI=?= <mfp@printer.local>\r\n\r\nb\r\n",
                "From: =?UTF-8?B?U2PDpG5uZXI=?= <scanner@contoso.com>\r\n\r\nb\r\n",
            ),
            // An atom touching a quoted string: a parser that decodes `=?a"b?B?eA==?=` as one
            // encoded word reads <ceo@evil.example> as the address, so the name is quoted.
            (
                "From: =?a\"b?B?eA==?= <ceo@evil.example>\" <mfp@printer.local>\r\n\r\nb\r\n",
                "From: \"=?a\\\"b?B?eA==?= <ceo@evil.example>\\\"\" <scanner@contoso.com>\r\n\r\nb\r\n",
            ),
            // folded From is replaced whole
            (
                "Subject: x\r\nFrom: \"Long name\"\r\n <mfp@printer.local>\r\nTo: a@b.c\r\n\r\nb\r\n",
                "Subject: x\r\nFrom: \"Long name\" <scanner@contoso.com>\r\nTo: a@b.c\r\n\r\nb\r\n",
            ),
            // allowed senders are left alone, byte for byte
            (
                "FROM:   HR <hr@contoso.com>\r\n\r\nb\r\n",
                "FROM:   HR <hr@contoso.com>\r\n\r\nb\r\n",
            ),
            // Sender is rewritten too
            (
                "From: a@contoso.com\r\nSender: mfp@printer.local\r\n\r\nb\r\n",
                "From: a@contoso.com\r\nSender: scanner@contoso.com\r\n\r\nb\r\n",
            ),
            // no From: one is added
            (
                "Subject: s\r\n\r\nb\r\n",
                "Subject: s\r\nFrom: scanner@contoso.com\r\n\r\nb\r\n",
            ),
            // body lines that look like headers are not touched
            (
                "From: a@contoso.com\r\n\r\nFrom: evil@x.y\r\n",
                "From: a@contoso.com\r\n\r\nFrom: evil@x.y\r\n",
            ),
            // a message with no blank line after the headers
            (
                "From: mfp@printer.local\r\n",
                "From: scanner@contoso.com\r\n",
            ),
            // a display name with a comment is quoted: parsers disagree about comments
            (
                "From: Scanner (3rd floor) <mfp@printer.local>\r\n\r\nb\r\n",
                "From: \"Scanner (3rd floor)\" <scanner@contoso.com>\r\n\r\nb\r\n",
            ),
            // A display name that is not an RFC 5322 phrase is quoted, or a mail parser reads a
            // list or another address instead of the mailbox.
            (
                "From: Scan, 3F <mfp@printer.local>\r\n\r\nb\r\n",
                "From: \"Scan, 3F\" <scanner@contoso.com>\r\n\r\nb\r\n",
            ),
            (
                "From: \"Scan, <6F>From: \"Scan, <6F>\"\" <mfp@printer.local>\r\n\r\nb\r\n",
                "From: \"\\\"Scan, <6F>From: \\\"Scan,\" <scanner@contoso.com>\r\n\r\nb\r\n",
            ),
            (
                "From: mfp@printer.local (=?x?Q?a\"b?=)\r\n\r\nb\r\n",
                "From: \"=?x?Q?a\\\"b?=\" <scanner@contoso.com>\r\n\r\nb\r\n",
            ),
            (
                "From: mfp@printer.local (=?x?Q?<evil@x.example>?=)\r\n\r\nb\r\n",
                "From: \"=?x?Q?<evil@x.example>?=\" <scanner@contoso.com>\r\n\r\nb\r\n",
            ),
            // control characters inside quotes are not a phrase: dropped, then re-quoted
            (
                "From: \"Scan\u{0} 3F\u{1}\" <mfp@printer.local>\r\n\r\nb\r\n",
                "From: \"Scan 3F\" <scanner@contoso.com>\r\n\r\nb\r\n",
            ),
            // Exactly one mailbox the device may use is kept; anything a reader could take for
            // another sender is rewritten to the mailbox, the first display name kept.
            (
                "From: hr@contoso.com, ceo@evil.example\r\n\r\nb\r\n",
                "From: scanner@contoso.com\r\n\r\nb\r\n",
            ),
            (
                "From: HR <hr@contoso.com>, Boss <ceo@evil.example>\r\n\r\nb\r\n",
                "From: HR <scanner@contoso.com>\r\n\r\nb\r\n",
            ),
            (
                "From: Team: hr@contoso.com, ceo@evil.example;\r\n\r\nb\r\n",
                "From: scanner@contoso.com\r\n\r\nb\r\n",
            ),
            (
                "From: HR <hr@contoso.com> ceo@evil.example\r\n\r\nb\r\n",
                "From: HR <scanner@contoso.com>\r\n\r\nb\r\n",
            ),
            (
                "From: <hr@contoso.com>\r\nSender: hr@contoso.com (HR)\r\n\r\nb\r\n",
                "From: <hr@contoso.com>\r\nSender: hr@contoso.com (HR)\r\n\r\nb\r\n",
            ),
            // obsolete syntax (blanks before the colon) is always rewritten
            (
                "From : Boss <ceo@evil.example>\r\n\r\nb\r\n",
                "From: Boss <scanner@contoso.com>\r\n\r\nb\r\n",
            ),
            (
                "Subject: s\r\nFrom\t: HR <hr@contoso.com>\r\n\r\nb\r\n",
                "Subject: s\r\nFrom: HR <scanner@contoso.com>\r\n\r\nb\r\n",
            ),
            // a second From (or Sender) is removed, whatever it says
            (
                "From: HR <hr@contoso.com>\r\nSubject: s\r\nfrom: Boss <ceo@evil.example>\r\n\r\nb\r\n",
                "From: HR <hr@contoso.com>\r\nSubject: s\r\n\r\nb\r\n",
            ),
            (
                "From: mfp@printer.local\r\nFROM : a@contoso.com\r\nSender: a@contoso.com\r\nSender: x@y.z\r\n\r\nb\r\n",
                "From: scanner@contoso.com\r\nSender: a@contoso.com\r\n\r\nb\r\n",
            ),
            // a quote inside a comment does not open a quoted string (else our own output
            // would be read back as a different address)
            (
                "From: Scan (3\" floor) <mfp@printer.local>\r\n\r\nb\r\n",
                "From: \"Scan (3\\\" floor)\" <scanner@contoso.com>\r\n\r\nb\r\n",
            ),
        ];
        for (input, want) in cases {
            for chunk in [1, 3, 1000] {
                let (got, _) = rewrite(input.as_bytes(), chunk);
                assert_eq!(
                    String::from_utf8_lossy(&got),
                    *want,
                    "input {input:?} chunk {chunk}"
                );
            }
        }
    }

    #[test]
    fn outcome_records_original() {
        let (_, o) = rewrite(b"From: S <mfp@printer.local>\r\n\r\n", 5);
        assert_eq!(o.from_rewritten.as_deref(), Some("S <mfp@printer.local>"));
        let (_, o) = rewrite(b"Subject: s\r\n\r\n", 5);
        assert!(o.from_added);
    }

    #[test]
    fn huge_header_block_passes_unchanged() {
        let mut msg = b"From: mfp@printer.local\r\n".to_vec();
        while msg.len() <= MAX_HEADER_BLOCK + 10_000 {
            msg.extend_from_slice(b"X-Pad: 0123456789012345678901234567890123456789\r\n");
        }
        msg.extend_from_slice(b"\r\nbody\r\n");
        let (got, o) = rewrite(&msg, 4096);
        assert!(o.too_large);
        assert_eq!(got, msg);
    }

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_795_428_000),
            "Mon, 23 Nov 2026 10:00:00 +0000"
        );
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
    }

    #[test]
    fn received_header_shape() {
        let h = received_header(&ReceivedInfo {
            helo: "printer(evil)\r\nX: y",
            client_ip: "192.168.1.20",
            hostname: "relay.lan",
            esmtp: true,
            tls: true,
            authenticated: true,
            queue_id: "0123456789abcdef",
            single_recipient: Some(&Address::parse("a@b.c").unwrap()),
            unix_time: 0,
        });
        assert_eq!(
            h,
            "Received: from printerevilX: y ([192.168.1.20])\r\n\tby relay.lan (smtp2oauth) with ESMTPSA id 0123456789abcdef\r\n\tfor <a@b.c>;\r\n\tThu, 1 Jan 1970 00:00:00 +0000\r\n"
        );
    }
}

//! Preparing a device's message for Microsoft Graph `sendMail`, which has no envelope.
//!
//! Graph takes the recipients from the MIME headers (`To:`, `Cc:`, `Bcc:`), not from an SMTP
//! envelope. So that the people who get the message are exactly the envelope's recipients, as
//! with SMTP:
//!
//! - envelope recipients that no `To:`/`Cc:`/`Bcc:` header names are added in one `Bcc:` header
//!   at the end of the header block (Exchange removes `Bcc:` from the copies it delivers);
//! - addresses in `To:`/`Cc:`/`Bcc:` that are not envelope recipients are taken out of those
//!   headers (the other entries keep their exact text, display names included; a header left
//!   empty is removed). Otherwise Graph would deliver to them: a device that sends one copy per
//!   recipient with every name in `To:` would make each person receive every copy.
//!
//! Nothing else changes unless a quoted-printable part would be mangled by Exchange's decoder
//! (see [`needs_reencoding`]): such parts, and only those, are re-encoded as base64. A message
//! whose headers already match its envelope and that has no such part goes out byte for byte.

use base64::Engine;
use smtp2oauth_proto::Address;

/// What [`prepare_for_graph`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Prepared {
    /// The message as Graph gets it.
    pub bytes: Vec<u8>,
    /// Envelope recipients added in a `Bcc:` header.
    pub added_bcc: Vec<String>,
    /// Header recipients removed because they are not envelope recipients.
    pub removed: Vec<String>,
    /// Quoted-printable parts re-encoded as base64.
    pub reencoded_parts: usize,
}

/// Makes the message's recipient headers match the envelope and fixes fragile
/// quoted-printable parts. `message` has CRLF line ends (as the spool stores it).
pub fn prepare_for_graph(message: &[u8], envelope: &[String]) -> Prepared {
    prepare_for_graph_owned(message.to_vec(), envelope)
}

/// [`prepare_for_graph`] in `message`'s own buffer: unless a part is re-encoded, only the
/// header block is replaced, so a message of tens of megabytes is never held twice.
pub fn prepare_for_graph_owned(mut message: Vec<u8>, envelope: &[String]) -> Prepared {
    let (header_end, body_start) = split_header(&message);
    let fields = header_fields(&message[..header_end]);
    let mut filter = RecipientFilter {
        wanted: envelope.iter().map(|r| comparable(r)).collect(),
        named: Vec::new(),
        removed: Vec::new(),
    };
    let mut headers = Vec::with_capacity(header_end + 256);
    for f in &fields {
        let raw = &message[f.start..f.end];
        if !is_recipient_field(&f.name) {
            headers.extend_from_slice(raw);
            continue;
        }
        let (keep, dropped_any) = filter.items(&address_list(&message[f.value_start..f.end]));
        if !dropped_any {
            headers.extend_from_slice(raw);
        } else if keep.iter().any(|k| !is_empty_group(k)) {
            let name = String::from_utf8_lossy(&message[f.start..f.name_end]).into_owned();
            headers.extend_from_slice(&fold_list(&name, &keep));
        }
    }
    let mut added_bcc = Vec::new();
    for (r, lower) in envelope.iter().zip(&filter.wanted) {
        if !filter.named.contains(lower)
            && !added_bcc.iter().any(|a: &String| a.eq_ignore_ascii_case(r))
        {
            added_bcc.push(r.clone());
        }
    }
    // Written by `Address`, like every address we send: a quoted local part stays quoted. An
    // address that cannot be written (control characters, from an older version's spool) is
    // left out: no header can carry it (the Graph route refuses such a message before this).
    let mut items: Vec<Vec<u8>> = Vec::with_capacity(added_bcc.len());
    added_bcc.retain(|a| match Address::from_stored(a) {
        Ok(written) => {
            items.push(written.to_string().into_bytes());
            true
        }
        Err(_) => false,
    });
    if !items.is_empty() {
        headers.extend_from_slice(&fold_list("Bcc", &items));
    }
    let (body, reencoded_parts) =
        fix_quoted_printable(&message, &message[..header_end], body_start);
    let top_ct = header_value(&message[..header_end], "Content-Type").unwrap_or_default();
    if reencoded_parts > 0 && boundary(&top_ct).is_none() {
        // A single-part message: its own header names the encoding.
        headers = set_cte_base64(&headers);
    }
    let bytes = match body {
        None => {
            drop(message.splice(..header_end, headers));
            message
        }
        Some(body) => {
            let mut bytes = headers;
            bytes.extend_from_slice(&message[header_end..body_start]);
            bytes.extend_from_slice(&body);
            bytes
        }
    };
    Prepared {
        bytes,
        added_bcc,
        removed: filter.removed,
        reencoded_parts,
    }
}

/// Keeps the envelope's recipients in recipient headers and notes what it drops.
struct RecipientFilter {
    /// The envelope's recipients, lowercase.
    wanted: Vec<String>,
    /// Envelope recipients a header names (lowercase).
    named: Vec<String>,
    /// Header addresses that are not envelope recipients.
    removed: Vec<String>,
}

impl RecipientFilter {
    fn keeps(&mut self, addr: &str) -> bool {
        let lower = comparable(addr);
        if self.wanted.contains(&lower) {
            self.named.push(lower);
            true
        } else {
            self.removed.push(addr.to_string());
            false
        }
    }

    /// The items of one header to keep, as text, and whether any address was dropped.
    fn items(&mut self, items: &[Item]) -> (Vec<Vec<u8>>, bool) {
        let mut keep = Vec::new();
        let mut dropped_any = false;
        for item in items {
            match item {
                Item::Mailbox { text, addr } => {
                    if self.keeps(addr) {
                        keep.push(text.clone());
                    } else {
                        dropped_any = true;
                    }
                }
                Item::Group { name, members } => {
                    let mut kept_members = Vec::new();
                    for (text, addr) in members {
                        if self.keeps(addr) {
                            kept_members.push(text.clone());
                        } else {
                            dropped_any = true;
                        }
                    }
                    // A group keeps its name even when empty ("undisclosed-recipients:;").
                    let mut g = format!("{name}: ").into_bytes();
                    g.extend_from_slice(&kept_members.join(&b", "[..]));
                    g.push(b';');
                    keep.push(g);
                }
            }
        }
        (keep, dropped_any)
    }
}

/// An address in the form envelope and header addresses are compared in: as [`Address`]
/// writes it (so `"a"@b` in a header is the envelope's `a@b`), lowercase.
fn comparable(addr: &str) -> String {
    Address::from_stored(addr)
        .map_or_else(|_| addr.to_string(), |a| a.to_string())
        .to_ascii_lowercase()
}

fn is_empty_group(item: &[u8]) -> bool {
    item.ends_with(b": ;")
}

fn is_recipient_field(name: &str) -> bool {
    ["to", "cc", "bcc"].contains(&name.to_ascii_lowercase().as_str())
}

/// (end of the last header field, start of the body): the header block ends at the first empty
/// line. A message without one is all header.
fn split_header(m: &[u8]) -> (usize, usize) {
    if m.starts_with(b"\r\n") {
        return (0, 2);
    }
    match memchr::memmem::find(m, b"\r\n\r\n") {
        Some(p) => (p + 2, p + 4),
        None => (m.len(), m.len()),
    }
}

struct Field {
    name: String,
    start: usize,
    name_end: usize,
    value_start: usize,
    /// After the field's final CRLF.
    end: usize,
}

/// Header fields with their folded continuation lines.
fn header_fields(h: &[u8]) -> Vec<Field> {
    let mut out: Vec<Field> = Vec::new();
    let mut i = 0;
    while i < h.len() {
        let line_end = memchr::memmem::find(&h[i..], b"\r\n").map_or(h.len(), |p| i + p + 2);
        if matches!(h[i], b' ' | b'\t')
            && let Some(last) = out.last_mut()
        {
            last.end = line_end;
        } else {
            let colon = h[i..line_end].iter().position(|&b| b == b':');
            let (name_end, value_start) = match colon {
                Some(c) => (i + c, i + c + 1),
                None => (i, i),
            };
            out.push(Field {
                name: String::from_utf8_lossy(&h[i..name_end]).trim().to_string(),
                start: i,
                name_end,
                value_start,
                end: line_end,
            });
        }
        i = line_end;
    }
    out
}

#[derive(Debug, PartialEq, Eq)]
enum Item {
    /// One mailbox: its exact text (trimmed) and its address.
    Mailbox { text: Vec<u8>, addr: String },
    Group {
        name: String,
        members: Vec<(Vec<u8>, String)>,
    },
}

/// A group being read: its name and its members (text, address).
type Group = Option<(String, Vec<(Vec<u8>, String)>)>;

/// Splits an RFC 5322 address list into its entries, keeping each entry's exact text. Commas
/// inside quoted strings, comments and angle brackets do not split; `name: a, b;` is a group.
fn address_list(value: &[u8]) -> Vec<Item> {
    // Unfold: CRLF followed by whitespace is just whitespace.
    let mut v = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        if value[i..].starts_with(b"\r\n") {
            i += 2;
            continue;
        }
        v.push(value[i]);
        i += 1;
    }
    let mut items = Vec::new();
    let mut group: Group = None;
    let (mut quote, mut escape, mut comment, mut angle) = (false, false, 0u32, false);
    let mut start = 0;
    fn push(items: &mut Vec<Item>, text: &[u8], group: &mut Group) {
        let text = trim(text);
        if text.is_empty() {
            return;
        }
        let Some(addr) = addr_spec(text) else { return };
        match group {
            Some((_, members)) => members.push((text.to_vec(), addr)),
            None => items.push(Item::Mailbox {
                text: text.to_vec(),
                addr,
            }),
        }
    }
    for (j, &b) in v.iter().enumerate() {
        if escape {
            escape = false;
            continue;
        }
        match b {
            b'\\' if quote || comment > 0 => escape = true,
            b'"' if comment == 0 => quote = !quote,
            b'(' if !quote => comment += 1,
            b')' if !quote && comment > 0 => comment -= 1,
            _ if quote || comment > 0 => {}
            b'<' => angle = true,
            b'>' => angle = false,
            b':' if !angle && group.is_none() => {
                let name = String::from_utf8_lossy(trim(&v[start..j])).into_owned();
                group = Some((name, Vec::new()));
                start = j + 1;
            }
            b',' if !angle => {
                push(&mut items, &v[start..j], &mut group);
                start = j + 1;
            }
            b';' if !angle && group.is_some() => {
                push(&mut items, &v[start..j], &mut group);
                let (name, members) = group.take().unwrap_or_default();
                items.push(Item::Group { name, members });
                start = j + 1;
            }
            _ => {}
        }
    }
    push(&mut items, &v[start..], &mut group);
    if let Some((name, members)) = group {
        items.push(Item::Group { name, members });
    }
    items
}

fn trim(b: &[u8]) -> &[u8] {
    let s = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let e = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(s, |e| e + 1);
    &b[s..e]
}

/// The address of one mailbox: inside `<...>` when there is one, else the text without
/// comments. None for text with no `@` (a stray word is not a recipient).
fn addr_spec(text: &[u8]) -> Option<String> {
    let s = String::from_utf8_lossy(text);
    let addr = match (s.rfind('<'), s.rfind('>')) {
        (Some(l), Some(r)) if l < r => s[l + 1..r].trim().to_string(),
        _ => {
            // Remove (comments).
            let mut out = String::new();
            let mut depth = 0;
            for c in s.chars() {
                match c {
                    '(' => depth += 1,
                    ')' if depth > 0 => depth -= 1,
                    _ if depth == 0 => out.push(c),
                    _ => {}
                }
            }
            out.trim().to_string()
        }
    };
    // A source route (`<@a,@b:x@y>`) names the mailbox after the colon.
    let addr = addr.rsplit(':').next().unwrap_or(&addr).trim().to_string();
    addr.contains('@').then_some(addr)
}

/// `Name: item, item` folded before an item that would pass 78 columns.
fn fold_list(name: &str, items: &[Vec<u8>]) -> Vec<u8> {
    let mut out = format!("{name}:").into_bytes();
    let mut col = out.len();
    for (i, item) in items.iter().enumerate() {
        let sep: &[u8] = if i == 0 { b"" } else { b"," };
        out.extend_from_slice(sep);
        col += sep.len();
        if i > 0 && col + 1 + item.len() > 78 {
            out.extend_from_slice(b"\r\n");
            col = 0;
        }
        out.push(b' ');
        out.extend_from_slice(item);
        col += 1 + item.len();
    }
    out.extend_from_slice(b"\r\n");
    out
}

// ---------------------------------------------------------------------------------------------
// Quoted-printable

/// True when a quoted-printable body holds a construction that decoders disagree on, so that
/// Exchange may show it wrongly (`=` signs at line ends, words run together):
/// - a soft line break written with whitespace after the `=` (`=  CRLF`, "transport padding"
///   that RFC 2045 tells decoders to drop but strict decoders take as a literal `=`);
/// - an `=` not followed by two hexadecimal digits or a line end (an unencoded `=`);
/// - an `=` as the very last byte, with no line end after it.
///
/// Well-formed QP (`=CRLF` soft breaks, `=XX` escapes) is left alone: the spool stores CRLF
/// line ends only, which is what Exchange needs to see soft breaks (a bare LF after `=` is the
/// usual cause of the `=` signs people report, and cannot reach Graph through us).
pub fn needs_reencoding(qp: &[u8]) -> bool {
    let mut i = 0;
    while let Some(p) = memchr::memchr(b'=', &qp[i..]) {
        let at = i + p;
        let rest = &qp[at + 1..];
        match rest {
            [] => return true,
            [b'\r', b'\n', ..] => {}
            [a, b, ..] if a.is_ascii_hexdigit() && b.is_ascii_hexdigit() => {}
            // Padding after a soft break, a stray `=`, or a bad escape.
            _ => return true,
        }
        i = at + 1;
    }
    false
}

/// Decodes quoted-printable as RFC 2045 says a robust decoder should: `=XX` escapes, soft line
/// breaks (with any whitespace between `=` and the line end), trailing whitespace on a line
/// removed, anything malformed kept literally.
pub fn decode_quoted_printable(qp: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(qp.len());
    let mut lines = qp.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let last = lines.peek().is_none();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut end = line.len();
        while end > 0 && matches!(line[end - 1], b' ' | b'\t') {
            end -= 1;
        }
        let line = &line[..end];
        let (line, soft) = match line.strip_suffix(b"=") {
            Some(l) => (l, true),
            None => (line, false),
        };
        let mut i = 0;
        while i < line.len() {
            if line[i] == b'='
                && i + 3 <= line.len()
                && line[i + 1].is_ascii_hexdigit()
                && line[i + 2].is_ascii_hexdigit()
            {
                let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
                out.push(hex(line[i + 1]) * 16 + hex(line[i + 2]));
                i += 3;
                continue;
            }
            out.push(line[i]);
            i += 1;
        }
        // A hard line break is a CRLF in the text; a soft one is nothing.
        if !soft && !last {
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

/// base64 in lines of 76 characters, each ending in CRLF.
fn base64_lines(data: &[u8]) -> Vec<u8> {
    let enc = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = Vec::with_capacity(enc.len() + enc.len() / 38 + 2);
    for chunk in enc.as_bytes().chunks(76) {
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A header's value (unfolded, trimmed) from a header block.
fn header_value(h: &[u8], name: &str) -> Option<String> {
    header_fields(h)
        .into_iter()
        .find(|f| f.name.eq_ignore_ascii_case(name))
        .map(|f| {
            let v = &h[f.value_start..f.end];
            String::from_utf8_lossy(v)
                .replace("\r\n", "")
                .trim()
                .to_string()
        })
}

/// The `boundary` parameter of a multipart Content-Type.
fn boundary(content_type: &str) -> Option<String> {
    let lower = content_type.to_ascii_lowercase();
    if !lower.trim_start().starts_with("multipart/") {
        return None;
    }
    let at = lower.find("boundary=")? + "boundary=".len();
    let rest = &content_type[at..];
    let b = if let Some(q) = rest.strip_prefix('"') {
        q.split('"').next()?
    } else {
        rest.split([';', ' ', '\t']).next()?
    };
    (!b.is_empty()).then(|| b.to_string())
}

/// The body with its fragile quoted-printable parts re-encoded, and how many; `None` when
/// nothing needed it.
fn fix_quoted_printable(m: &[u8], headers: &[u8], body_start: usize) -> (Option<Vec<u8>>, usize) {
    let body = &m[body_start..];
    fix_entity(headers, body, 0)
}

/// Returns the entity's new body when some part in it was re-encoded.
fn fix_entity(headers: &[u8], body: &[u8], depth: usize) -> (Option<Vec<u8>>, usize) {
    if depth > 20 {
        return (None, 0);
    }
    let ct = header_value(headers, "Content-Type").unwrap_or_default();
    if let Some(b) = boundary(&ct) {
        return fix_multipart(body, &b, depth);
    }
    let cte = header_value(headers, "Content-Transfer-Encoding").unwrap_or_default();
    if cte.eq_ignore_ascii_case("quoted-printable") && needs_reencoding(body) {
        return (Some(base64_lines(&decode_quoted_printable(body))), 1);
    }
    (None, 0)
}

fn fix_multipart(body: &[u8], boundary: &str, depth: usize) -> (Option<Vec<u8>>, usize) {
    let delim = format!("--{boundary}");
    // Positions of delimiter lines: at the body's start or after a CRLF.
    let mut marks = Vec::new();
    let mut i = 0;
    while let Some(p) = memchr::memmem::find(&body[i..], delim.as_bytes()) {
        let at = i + p;
        if at == 0 || body[..at].ends_with(b"\r\n") {
            marks.push(at);
        }
        i = at + delim.len();
    }
    if marks.len() < 2 {
        return (None, 0);
    }
    let mut out = Vec::with_capacity(body.len() + body.len() / 3);
    let mut changed = 0;
    out.extend_from_slice(&body[..marks[0]]);
    for w in marks.windows(2) {
        let (a, b) = (w[0], w[1]);
        // The delimiter line, then the part up to the CRLF before the next delimiter.
        let line_end = memchr::memmem::find(&body[a..b], b"\r\n").map_or(b, |p| a + p + 2);
        out.extend_from_slice(&body[a..line_end]);
        let part_end = b.saturating_sub(2).max(line_end);
        let part = &body[line_end..part_end];
        let (he, bs) = split_header(part);
        let (part_headers, part_body) = (&part[..he], &part[bs.min(part.len())..]);
        match fix_entity(part_headers, part_body, depth + 1) {
            (Some(new_body), n) => {
                changed += n;
                out.extend_from_slice(&set_cte_base64(part_headers));
                out.extend_from_slice(&part[he..bs.min(part.len())]);
                // The new body ends with CRLF; the CRLF before the delimiter follows.
                out.extend_from_slice(new_body.strip_suffix(b"\r\n").unwrap_or(&new_body));
            }
            (None, _) => out.extend_from_slice(part),
        }
        out.extend_from_slice(&body[part_end..b]);
    }
    out.extend_from_slice(&body[*marks.last().unwrap_or(&0)..]);
    if changed == 0 {
        return (None, 0);
    }
    (Some(out), changed)
}

/// The part's headers with `Content-Transfer-Encoding: base64`.
fn set_cte_base64(headers: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(headers.len() + 8);
    for f in header_fields(headers) {
        if f.name.eq_ignore_ascii_case("Content-Transfer-Encoding") {
            out.extend_from_slice(b"Content-Transfer-Encoding: base64\r\n");
        } else {
            out.extend_from_slice(&headers[f.start..f.end]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(rcpts: &[&str]) -> Vec<String> {
        rcpts.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn address_lists_keep_exact_entries() {
        let cases: &[(&str, &[&str])] = &[
            ("a@x.com", &["a@x.com"]),
            (
                " \"Doe, John\" <john@x.com>, b@y.com",
                &["john@x.com", "b@y.com"],
            ),
            ("=?utf-8?q?M=C3=BCller?= <m@x.de>", &["m@x.de"]),
            ("c@x.com (Carl, the boss)", &["c@x.com"]),
            (
                "Team: a@x.com, b@x.com;, d@y.com",
                &["a@x.com", "b@x.com", "d@y.com"],
            ),
            ("undisclosed-recipients:;", &[]),
            ("<@relay.example:e@x.com>", &["e@x.com"]),
            ("A <a@x.com>,\r\n B <b@x.com>", &["a@x.com", "b@x.com"]),
        ];
        for (value, want) in cases {
            let got: Vec<String> = address_list(value.as_bytes())
                .into_iter()
                .flat_map(|i| match i {
                    Item::Mailbox { addr, .. } => vec![addr],
                    Item::Group { members, .. } => members.into_iter().map(|m| m.1).collect(),
                })
                .collect();
            assert_eq!(&got, want, "{value}");
        }
    }

    #[test]
    fn headers_matching_the_envelope_are_untouched() {
        let m = b"From: s@x.com\r\nTo: A <a@x.com>\r\nCc: b@x.com\r\nSubject: hi\r\n\r\nbody\r\n";
        let p = prepare_for_graph(m, &env(&["a@x.com", "B@X.com"]));
        assert_eq!(p.bytes, m.to_vec());
        assert!(p.added_bcc.is_empty() && p.removed.is_empty());
    }

    #[test]
    fn envelope_only_recipients_become_bcc_and_others_are_removed() {
        let m = b"From: s@x.com\r\nTo: \"Doe, A\" <a@x.com>, c@x.com\r\nCc: d@x.com\r\nSubject: hi\r\n\r\nbody\r\n";
        let p = prepare_for_graph(m, &env(&["a@x.com", "hidden@y.com"]));
        assert_eq!(
            String::from_utf8(p.bytes).unwrap(),
            "From: s@x.com\r\nTo: \"Doe, A\" <a@x.com>\r\nSubject: hi\r\nBcc: hidden@y.com\r\n\r\nbody\r\n"
        );
        assert_eq!(p.added_bcc, vec!["hidden@y.com"]);
        assert_eq!(p.removed, vec!["c@x.com", "d@x.com"]);
    }

    /// Graph gets the envelope's addresses as `Address` writes them: a quoted local part stays
    /// quoted (one recipient, not a list), and a header naming it quoted or not is the same one.
    #[test]
    fn recipients_are_written_in_their_one_form() {
        let m = b"To: <\"a\"@x.com>\r\nSubject: hi\r\n\r\nbody\r\n";
        let p = prepare_for_graph(
            m,
            &env(&[
                "a@x.com",
                "\"v@fabrikam.example>, e@evil.example\"@b.example",
            ]),
        );
        assert_eq!(
            String::from_utf8(p.bytes).unwrap(),
            "To: <\"a\"@x.com>\r\nSubject: hi\r\nBcc: \"v@fabrikam.example>, e@evil.example\"@b.example\r\n\r\nbody\r\n"
        );
        assert!(p.removed.is_empty());
        // An address an older version stored unquoted is written quoted too.
        let p = prepare_for_graph(m, &env(&["a@x.com", "v w@b.example"]));
        assert!(
            String::from_utf8(p.bytes)
                .unwrap()
                .contains("Bcc: \"v w\"@b.example\r\n")
        );
    }

    #[test]
    fn many_bcc_recipients_are_folded() {
        let rcpts: Vec<String> = (0..20).map(|i| format!("user{i}@example.com")).collect();
        let m = b"Subject: x\r\n\r\nb\r\n";
        let p = prepare_for_graph(m, &rcpts);
        let text = String::from_utf8(p.bytes).unwrap();
        assert!(text.lines().all(|l| l.len() <= 78), "{text}");
        assert_eq!(
            address_list(
                text.split_once("Bcc:")
                    .unwrap()
                    .1
                    .split("\r\n\r\n")
                    .next()
                    .unwrap()
                    .as_bytes()
            )
            .len(),
            20
        );
    }

    #[test]
    fn qp_detection_table() {
        for (qp, want) in [
            (&b"plain text\r\n"[..], false),
            (b"soft=\r\nbreak and =C3=A9\r\n", false),
            (b"padded soft break=  \r\nnext\r\n", true),
            (b"a = b\r\n", true),
            (b"ends with =", true),
            (b"lower =c3=a9 hex\r\n", false),
        ] {
            assert_eq!(
                needs_reencoding(qp),
                want,
                "{:?}",
                String::from_utf8_lossy(qp)
            );
        }
    }

    #[test]
    fn qp_decoding_follows_rfc_2045() {
        for (qp, text) in [
            (
                &b"Now's the time =\r\nfor all folk\r\n"[..],
                &b"Now's the time for all folk\r\n"[..],
            ),
            (b"padded=  \r\nsoft\r\n", b"paddedsoft\r\n"),
            (
                b"caf=C3=A9 trailing   \r\nx",
                "café trailing\r\nx".as_bytes(),
            ),
            (b"a = b", b"a = b"),
        ] {
            assert_eq!(decode_quoted_printable(qp), text.to_vec());
        }
    }

    #[test]
    fn only_fragile_qp_parts_are_reencoded() {
        let good = "Content-Type: multipart/alternative; boundary=\"b1\"\r\nSubject: s\r\nTo: a@x.com\r\n\r\npreamble\r\n--b1\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nlong line =\r\nsoft\r\n--b1\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n<p>x=3Dy</p>\r\n--b1--\r\n";
        let p = prepare_for_graph(good.as_bytes(), &env(&["a@x.com"]));
        assert_eq!(p.reencoded_parts, 0);
        assert_eq!(p.bytes, good.as_bytes());

        let bad = good.replace("long line =\r\nsoft", "long line =  \r\nsoft");
        let p = prepare_for_graph(bad.as_bytes(), &env(&["a@x.com"]));
        assert_eq!(p.reencoded_parts, 1);
        let text = String::from_utf8(p.bytes).unwrap();
        // The CRLF before the delimiter belongs to the delimiter, not to the text.
        let encoded = base64::engine::general_purpose::STANDARD.encode("long line soft");
        assert!(
            text.contains(&format!(
                "--b1\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n{encoded}\r\n--b1\r\n"
            )),
            "{text}"
        );
        // The other part and the structure are unchanged.
        assert!(text.contains(
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n<p>x=3Dy</p>\r\n--b1--\r\n"
        ));
        assert!(text.starts_with("Content-Type: multipart/alternative; boundary=\"b1\"\r\nSubject: s\r\nTo: a@x.com\r\n\r\npreamble\r\n"));

        let single =
            "To: a@x.com\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nx =  \r\ny\r\n";
        let p = prepare_for_graph(single.as_bytes(), &env(&["a@x.com"]));
        assert_eq!(p.reencoded_parts, 1);
        assert_eq!(
            String::from_utf8(p.bytes).unwrap(),
            format!(
                "To: a@x.com\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n",
                base64::engine::general_purpose::STANDARD.encode("x y\r\n")
            )
        );
    }
}

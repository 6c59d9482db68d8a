//! Taking the large attachments out of a message, for Graph's draft route.
//!
//! Graph takes at most about 4 MB per request, so a message that does not fit one `sendMail`
//! goes as a draft created from its MIME plus its large attachments uploaded one by one. This
//! module decides, without I/O, what goes where: every attachment part whose decoded size is
//! over a threshold is taken out (its file name, content type, decoded bytes, inline flag and
//! Content-ID kept), and what remains (every header, the text and HTML bodies, small
//! attachments) is still valid MIME, byte for byte the original except for the parts taken
//! out.
//!
//! What counts as an attachment part: a leaf part (not `multipart/*`; `message/rfc822` is a
//! leaf) with `Content-Disposition: attachment`, or a file name, or a type other than `text/*`
//! (an inline image is one). Text and HTML bodies without a file name never are. Multiparts are walked at any depth (`multipart/related`
//! inside `multipart/mixed`, ...), up to a nesting limit.
//!
//! Removing a part removes its delimiter line with it (from the CRLF before `--boundary` to the
//! CRLF before the next one), which leaves the multipart well-formed. A multipart whose parts
//! are all taken is removed whole from its parent; when that is the message itself (or the
//! message is one large part) its `Content-*` header fields and its body go, leaving the other
//! headers and an empty body.
//!
//! Header fields are read with mail-parser, which decodes RFC 2047 words and RFC 2231
//! parameters in any charset; boundaries, offsets and bodies are found here, so offsets are
//! exact and only the parts taken out are decoded (a message of tens of megabytes is not
//! copied whole).

use std::borrow::Cow;
use std::ops::Range;

use base64::Engine as _;
use mail_parser::{MessageParser, MimeHeaders};

/// Attachments over this many decoded bytes are taken out by default.
pub const DEFAULT_THRESHOLD: usize = 1024 * 1024;
/// Multiparts nested deeper than this are left as they are.
const MAX_DEPTH: usize = 20;

/// An attachment taken out of the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LargePart {
    /// The file name (`filename`, else the type's `name`), decoded; a made-up
    /// `attachment.<ext>` when the part has none.
    pub name: String,
    /// `type/subtype`, lower case, without parameters.
    pub content_type: String,
    /// The decoded content.
    pub bytes: Vec<u8>,
    /// `Content-Disposition: inline`, or no disposition and a Content-ID.
    pub inline: bool,
    /// Without the angle brackets.
    pub content_id: Option<String>,
}

/// A message with its large attachments taken out.
#[derive(Clone, Debug)]
pub struct Split<'a> {
    /// The message without them: borrowed, and equal to the original, when none was taken.
    pub remaining: Cow<'a, [u8]>,
    /// In the order they appeared.
    pub parts: Vec<LargePart>,
    /// The byte ranges of the original that are not in `remaining`, in order.
    pub removed: Vec<Range<usize>>,
}

/// Splits `message` (CRLF line ends) at `threshold` decoded bytes (see the module docs).
pub fn split_large_parts(message: &[u8], threshold: usize) -> Split<'_> {
    let mut parts = Vec::new();
    let mut walker = Walker {
        msg: message,
        threshold,
        parts: &mut parts,
    };
    let mut removed = match walker.entity(0..message.len(), 0) {
        Fate::Kept(removed) => removed,
        Fate::Taken => emptied_message(message),
    };
    removed.sort_by_key(|r| r.start);
    let remaining = if removed.is_empty() {
        Cow::Borrowed(message)
    } else {
        Cow::Owned(without(message, &removed))
    };
    Split {
        remaining,
        parts,
        removed,
    }
}

/// What happens to an entity: kept (with these ranges inside it removed), or taken whole.
enum Fate {
    Kept(Vec<Range<usize>>),
    Taken,
}

struct Walker<'m, 'p> {
    msg: &'m [u8],
    threshold: usize,
    parts: &'p mut Vec<LargePart>,
}

impl Walker<'_, '_> {
    /// `range` is one entity: a header block, an empty line, a body.
    fn entity(&mut self, range: Range<usize>, depth: usize) -> Fate {
        let entity = &self.msg[range.clone()];
        let body_at = body_start(entity);
        let parsed = MessageParser::new().parse_headers(&entity[..body_at]);
        let head = parsed.as_ref().map(Head::of).unwrap_or_default();
        let body = range.start + body_at..range.end;
        match &head.boundary {
            Some(b) if head.multipart && depth < MAX_DEPTH => {
                self.multipart(body, b.as_bytes(), depth)
            }
            _ if head.multipart => Fate::Kept(Vec::new()),
            _ => self.leaf(&head, body),
        }
    }

    fn multipart(&mut self, body: Range<usize>, boundary: &[u8], depth: usize) -> Fate {
        let children = child_spans(&self.msg[body.clone()], boundary);
        if children.is_empty() {
            return Fate::Kept(Vec::new());
        }
        let mut removed = Vec::new();
        let mut taken = 0;
        for (span, content) in &children {
            let shift = |r: &Range<usize>| body.start + r.start..body.start + r.end;
            match self.entity(shift(content), depth + 1) {
                Fate::Kept(inner) => removed.extend(inner),
                Fate::Taken => {
                    taken += 1;
                    removed.push(shift(span));
                }
            }
        }
        if taken == children.len() {
            Fate::Taken
        } else {
            Fate::Kept(removed)
        }
    }

    fn leaf(&mut self, head: &Head, body: Range<usize>) -> Fate {
        let raw = &self.msg[body];
        if !head.is_attachment() || decoded_upper_bound(raw, head.encoding) <= self.threshold {
            return Fate::Kept(Vec::new());
        }
        let bytes = decode(raw, head.encoding);
        if bytes.len() <= self.threshold {
            return Fate::Kept(Vec::new());
        }
        self.parts.push(LargePart {
            name: head.file_name(),
            content_type: head.content_type.clone(),
            bytes,
            inline: head.inline,
            content_id: head.content_id.clone(),
        });
        Fate::Taken
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Encoding {
    Base64,
    QuotedPrintable,
    /// 7bit, 8bit, binary, or anything unknown: the bytes as they are.
    #[default]
    Identity,
}

/// What the header fields of one entity say about it.
#[derive(Debug)]
struct Head {
    content_type: String,
    multipart: bool,
    boundary: Option<String>,
    disposition: Option<String>,
    name: Option<String>,
    content_id: Option<String>,
    inline: bool,
    encoding: Encoding,
}

impl Default for Head {
    /// RFC 2045: no Content-Type means `text/plain`.
    fn default() -> Self {
        Head {
            content_type: "text/plain".into(),
            multipart: false,
            boundary: None,
            disposition: None,
            name: None,
            content_id: None,
            inline: false,
            encoding: Encoding::Identity,
        }
    }
}

impl Head {
    fn of(h: &mail_parser::Message<'_>) -> Head {
        let ct = h.content_type();
        let content_type = ct
            .map(|c| {
                let sub = c.subtype().unwrap_or("octet-stream");
                format!("{}/{sub}", c.ctype()).to_ascii_lowercase()
            })
            .unwrap_or_else(|| "text/plain".into());
        let disposition = h
            .content_disposition()
            .map(|d| d.ctype().to_ascii_lowercase());
        let content_id = h
            .content_id()
            .map(|c| {
                c.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .trim()
                    .to_string()
            })
            .filter(|c| !c.is_empty());
        let inline = match disposition.as_deref() {
            Some(d) => d == "inline",
            None => content_id.is_some(),
        };
        let encoding = match h.content_transfer_encoding().map(str::trim) {
            Some(e) if e.eq_ignore_ascii_case("base64") => Encoding::Base64,
            Some(e) if e.eq_ignore_ascii_case("quoted-printable") => Encoding::QuotedPrintable,
            _ => Encoding::Identity,
        };
        Head {
            multipart: content_type.starts_with("multipart/"),
            boundary: ct.and_then(|c| c.attribute("boundary")).map(str::to_string),
            name: h
                .attachment_name()
                .map(clean_name)
                .filter(|n| !n.is_empty()),
            content_type,
            disposition,
            content_id,
            inline,
            encoding,
        }
    }

    fn is_attachment(&self) -> bool {
        self.disposition.as_deref() == Some("attachment")
            || self.name.is_some()
            || !self.content_type.starts_with("text/")
    }

    fn file_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("attachment{}", extension(&self.content_type)))
    }
}

/// A decoded file name without control characters (they cannot be shown, and a name with a
/// line break would end a header field where one is written).
fn clean_name(name: &str) -> String {
    name.chars()
        .filter(|c| !c.is_control())
        .collect::<String>()
        .trim()
        .to_string()
}

/// The usual extension for a type, for a part without a file name.
fn extension(content_type: &str) -> &'static str {
    match content_type {
        "application/pdf" => ".pdf",
        "image/jpeg" | "image/jpg" => ".jpg",
        "image/png" => ".png",
        "image/tiff" => ".tif",
        "image/gif" => ".gif",
        "application/zip" => ".zip",
        "message/rfc822" => ".eml",
        "text/plain" => ".txt",
        "text/html" => ".html",
        _ => ".bin",
    }
}

/// Where an entity's body starts: after the empty line that ends its header block (2 when it
/// has no header fields; the entity's end when it has no empty line).
fn body_start(entity: &[u8]) -> usize {
    if entity.starts_with(b"\r\n") {
        return 2;
    }
    memchr::memmem::find(entity, b"\r\n\r\n").map_or(entity.len(), |p| p + 4)
}

/// The body parts of a multipart body: for each, the span to remove with it (from its
/// delimiter line, with the CRLF before it, to its last byte) and its content (after the
/// delimiter line). Delimiter lines start the body or follow a CRLF, and are `--boundary`
/// followed by optional spaces and a CRLF; the close delimiter adds `--`. A missing close
/// delimiter leaves the last part running to the end of the body.
fn child_spans(body: &[u8], boundary: &[u8]) -> Vec<(Range<usize>, Range<usize>)> {
    let mut marks: Vec<(usize, usize, bool)> = Vec::new();
    let finder = memchr::memmem::Finder::new(boundary);
    let mut from = 0;
    while let Some(p) = finder.find(&body[from..]) {
        let at = from + p;
        from = at + boundary.len();
        let Some(start) = delimiter_start(body, at) else {
            continue;
        };
        let after = &body[at + boundary.len()..];
        if after.starts_with(b"--") {
            marks.push((start, start, true));
            break;
        }
        let pad = after
            .iter()
            .take_while(|c| matches!(c, b' ' | b'\t'))
            .count();
        if after[pad..].starts_with(b"\r\n") {
            marks.push((start, at + boundary.len() + pad + 2, false));
        }
    }
    let mut out = Vec::new();
    for (i, &(start, content_start, close)) in marks.iter().enumerate() {
        if close {
            break;
        }
        let end = marks.get(i + 1).map_or(body.len(), |next| next.0);
        out.push((start..end, content_start..end.max(content_start)));
    }
    out
}

/// Where the delimiter whose boundary is at `at` starts (including the CRLF before it), if
/// `--` precedes the boundary at the start of a line.
fn delimiter_start(body: &[u8], at: usize) -> Option<usize> {
    let dashes = at.checked_sub(2)?;
    if &body[dashes..at] != b"--" {
        return None;
    }
    match dashes {
        0 => Some(0),
        d if d >= 2 && &body[d - 2..d] == b"\r\n" => Some(d - 2),
        _ => None,
    }
}

/// At least the decoded size (so a part this says is small never needs decoding).
fn decoded_upper_bound(raw: &[u8], encoding: Encoding) -> usize {
    match encoding {
        Encoding::Base64 => raw.len() / 4 * 3 + 3,
        _ => raw.len(),
    }
}

fn decode(raw: &[u8], encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::Base64 => decode_base64_lenient(raw),
        Encoding::QuotedPrintable => crate::mime::decode_quoted_printable(raw),
        Encoding::Identity => raw.to_vec(),
    }
}

/// base64 as mail readers decode it: characters outside the alphabet (line ends, stray
/// spaces) are skipped, padding is optional, and decoding stops at the first `=`. Decoded in
/// blocks, so a part of tens of megabytes needs no cleaned copy of its text.
fn decode_base64_lenient(raw: &[u8]) -> Vec<u8> {
    const BLOCK: usize = 64 * 1024;
    let engine = &base64::engine::general_purpose::STANDARD_NO_PAD;
    let mut out = Vec::with_capacity(raw.len() / 4 * 3 + 3);
    let mut block: Vec<u8> = Vec::with_capacity(BLOCK);
    for &c in raw {
        match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'+' | b'/' => {
                block.push(c);
                if block.len() == BLOCK {
                    // Whole quanta of 4 characters: no padding question mid-way.
                    let _ = engine.decode_vec(&block, &mut out);
                    block.clear();
                }
            }
            b'=' => break,
            _ => {}
        }
    }
    // A lone sixth of a byte at the end carries nothing.
    if block.len() % 4 == 1 {
        block.pop();
    }
    let _ = engine.decode_vec(&block, &mut out);
    out
}

/// For a message that is nothing but parts taken out: its `Content-*` header fields and its
/// body.
fn emptied_message(message: &[u8]) -> Vec<Range<usize>> {
    let body_at = body_start(message);
    let mut removed: Vec<Range<usize>> = header_fields(&message[..body_at])
        .into_iter()
        .filter(|(name, _)| name.len() > 8 && name[..8].eq_ignore_ascii_case(b"content-"))
        .map(|(_, r)| r)
        .collect();
    if body_at < message.len() {
        removed.push(body_at..message.len());
    }
    removed
}

/// Each header field (folded lines together, with its CRLF) of a header block: its name and
/// its byte range.
fn header_fields(block: &[u8]) -> Vec<(&[u8], Range<usize>)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while let Some(p) = memchr::memmem::find(&block[i..], b"\r\n") {
        let end = i + p + 2;
        i = end;
        if matches!(block.get(end), Some(b' ' | b'\t')) {
            continue;
        }
        let field = &block[start..end];
        if let Some(colon) = memchr::memchr(b':', field) {
            out.push((&field[..colon], start..end));
        }
        start = end;
    }
    out
}

/// `message` without the (sorted, disjoint) `removed` ranges.
fn without(message: &[u8], removed: &[Range<usize>]) -> Vec<u8> {
    let cut: usize = removed.iter().map(|r| r.len()).sum();
    let mut out = Vec::with_capacity(message.len().saturating_sub(cut));
    let mut at = 0;
    for r in removed {
        out.extend_from_slice(&message[at..r.start]);
        at = r.end;
    }
    out.extend_from_slice(&message[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const B64_PDF: &str = "JVBERi0xLjQKJeLjz9MK"; // "%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"

    fn split(m: &str, threshold: usize) -> Split<'_> {
        split_large_parts(m.as_bytes(), threshold)
    }

    fn text(s: &Split<'_>) -> String {
        String::from_utf8(s.remaining.to_vec()).unwrap()
    }

    #[test]
    fn a_scan_loses_its_pdf_and_keeps_its_text() {
        let m = format!(
            "From: s@x\r\nTo: a@y\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
             --b1\r\nContent-Type: text/plain\r\n\r\nScan attached.\r\n\
             --b1\r\nContent-Type: application/pdf; name=\"scan.pdf\"\r\nContent-Disposition: attachment; filename=\"scan.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{B64_PDF}\r\n{B64_PDF}\r\n\
             --b1--\r\n"
        );
        let s = split(&m, 10);
        assert_eq!(
            text(&s),
            "From: s@x\r\nTo: a@y\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nScan attached.\r\n--b1--\r\n"
        );
        let [p] = &s.parts[..] else {
            panic!("{:?}", s.parts)
        };
        assert_eq!(p.name, "scan.pdf");
        assert_eq!(p.content_type, "application/pdf");
        assert_eq!(
            p.bytes,
            b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"
        );
        assert!(!p.inline);
        assert_eq!(p.content_id, None);
        // At the threshold itself, nothing moves.
        let s = split(&m, 30);
        assert!(matches!(s.remaining, Cow::Borrowed(_)) && s.parts.is_empty());
    }

    #[test]
    fn inline_images_leave_related_and_the_html_stays() {
        let m = "Content-Type: multipart/mixed; boundary=outer\r\n\r\npreamble\r\n\
                 --outer\r\nContent-Type: multipart/related; boundary=\"inner\"\r\n\r\n\
                 --inner\r\nContent-Type: text/html\r\n\r\n<img src=\"cid:logo@x\">\r\n\
                 --inner\r\nContent-Type: image/png\r\nContent-ID: <logo@x>\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgoAAAANSUhEUg==\r\n\
                 --inner--\r\n\
                 --outer\r\nContent-Type: image/tiff\r\nContent-Disposition: inline\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nII*=00=\r\n0123456789abcdef\r\n\
                 --outer--\r\nepilogue\r\n";
        let s = split(m, 12);
        assert_eq!(
            text(&s),
            "Content-Type: multipart/mixed; boundary=outer\r\n\r\npreamble\r\n--outer\r\nContent-Type: multipart/related; boundary=\"inner\"\r\n\r\n--inner\r\nContent-Type: text/html\r\n\r\n<img src=\"cid:logo@x\">\r\n--inner--\r\n--outer--\r\nepilogue\r\n"
        );
        let names: Vec<_> = s
            .parts
            .iter()
            .map(|p| {
                (
                    p.name.as_str(),
                    p.content_type.as_str(),
                    p.inline,
                    p.content_id.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            names,
            vec![
                ("attachment.png", "image/png", true, Some("logo@x")),
                ("attachment.tif", "image/tiff", true, None),
            ]
        );
        assert_eq!(s.parts[1].bytes, b"II*\x000123456789abcdef");
    }

    #[test]
    fn a_message_that_is_one_large_part_keeps_its_other_headers() {
        let m = format!(
            "From: s@x\r\nContent-Type: application/pdf;\r\n name=scan.pdf\r\nSubject: Scan\r\nContent-Transfer-Encoding: base64\r\n\r\n{B64_PDF}\r\n"
        );
        let s = split(&m, 5);
        assert_eq!(text(&s), "From: s@x\r\nSubject: Scan\r\n\r\n");
        assert_eq!(s.parts[0].name, "scan.pdf");
        // The same when every part of the top multipart goes.
        let m = format!(
            "Subject: x\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n{B64_PDF}\r\n--b--\r\n"
        );
        let s = split(&m, 5);
        assert_eq!(text(&s), "Subject: x\r\n\r\n");
        assert_eq!(s.parts[0].name, "attachment.pdf");
    }

    #[test]
    fn file_names_are_decoded_in_any_charset() {
        for (params, want) in [
            ("; filename=\"=?UTF-8?B?w6l0w6kucGRm?=\"", "été.pdf"),
            (
                "; filename*=utf-8''%C3%A9t%C3%A9%20scan.pdf",
                "été scan.pdf",
            ),
            (
                "; filename*0*=iso-8859-1''%E9t; filename*1=\"e.pdf\"",
                "éte.pdf",
            ),
            (
                "; filename=\"=?ISO-2022-JP?B?GyRCJUYlOSVIGyhC?=.pdf\"",
                "テスト.pdf",
            ),
            (
                "; filename=\"=?Shift_JIS?B?g1iDTIODg5M=?=.pdf\"",
                "スキャン.pdf",
            ),
        ] {
            let m = format!(
                "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment{params}\r\n\r\n0123456789\r\n--b--\r\n"
            );
            let s = split(&m, 5);
            assert_eq!(s.parts[0].name, want, "{params}");
            assert_eq!(s.parts[0].bytes, b"0123456789");
        }
    }

    #[test]
    fn only_delimiter_lines_delimit() {
        // `--b` inside a line, or followed by more of a longer boundary, is content.
        let m = "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee --b here\r\n--bx not a delimiter\r\n--b \r\nContent-Type: application/octet-stream\r\n\r\n0123456789\r\n--b--";
        let s = split(m, 5);
        assert_eq!(
            text(&s),
            "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee --b here\r\n--bx not a delimiter\r\n--b--"
        );
        assert_eq!(s.parts[0].bytes, b"0123456789");
    }

    #[test]
    fn the_first_part_can_go_and_a_missing_close_delimiter_is_tolerated() {
        let m = "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: image/jpeg\r\n\r\n0123456789\r\n--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b--\r\n";
        let s = split(m, 5);
        // An empty preamble line, then the text part: still one valid multipart.
        assert_eq!(
            text(&s),
            "Content-Type: multipart/mixed; boundary=b\r\n\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b--\r\n"
        );
        let parsed = MessageParser::new().parse(s.remaining.as_ref()).unwrap();
        assert_eq!(parsed.body_text(0).as_deref(), Some("hello"));

        let truncated = "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b\r\nContent-Type: image/jpeg\r\n\r\n0123456789\r\n";
        let s = split(truncated, 5);
        assert_eq!(s.parts[0].bytes, b"0123456789\r\n");
        assert_eq!(
            text(&s),
            "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhello"
        );
    }

    #[test]
    fn text_bodies_and_small_parts_stay_and_bare_lf_messages_are_left_alone() {
        let m = "Content-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n0123456789012345\r\n--b\r\nContent-Type: text/html\r\n\r\n<p>0123456789012345</p>\r\n--b--\r\n";
        let s = split(m, 5);
        assert!(s.parts.is_empty() && matches!(s.remaining, Cow::Borrowed(_)));
        let lf = "Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: image/png\n\n0123456789\n--b--\n";
        assert!(split(lf, 5).parts.is_empty());
    }

    #[test]
    fn lenient_base64() {
        assert_eq!(decode_base64_lenient(b"aGVs\r\nbG8=\r\n"), b"hello");
        assert_eq!(decode_base64_lenient(b"aGVsbG8"), b"hello");
        assert_eq!(decode_base64_lenient(b"aGVs bG8h\r\n=ignored"), b"hello!");
        // Across the block boundary, with line ends anywhere.
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7919 % 251) as u8).collect();
        let enc = base64::engine::general_purpose::STANDARD.encode(&data);
        let wrapped: Vec<u8> = enc
            .as_bytes()
            .chunks(76)
            .flat_map(|l| l.iter().copied().chain(*b"\r\n"))
            .collect();
        assert_eq!(decode_base64_lenient(&wrapped), data);
    }
}

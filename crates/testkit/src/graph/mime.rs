//! The little MIME reading and writing the fake Graph needs: who a message goes to (Graph reads
//! the `To:`/`Cc:`/`Bcc:` headers, never an envelope), its text parts as a strict decoder renders
//! them, and the message a draft becomes once its attachments are put back.
//!
//! Deliberately independent of the relay's own MIME code, so a test compares the relay's output
//! with a second reading rather than with itself.

use base64::Engine as _;

use super::GraphAttachment;

/// The top-level header block, unfolded, as (lower-case name, value) pairs, and where the body
/// starts.
pub(crate) fn headers_of(entity: &[u8]) -> (Vec<(String, String)>, usize) {
    let end = header_end(entity);
    let text = String::from_utf8_lossy(&entity[..end])
        .replace("\r\n ", " ")
        .replace("\r\n\t", " ");
    let fields = text
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (fields, end)
}

/// Where the body starts: after the first empty line (the whole entity if there is none).
fn header_end(entity: &[u8]) -> usize {
    if entity.starts_with(b"\r\n") {
        return 2;
    }
    find(entity, b"\r\n\r\n").map_or(entity.len(), |p| p + 4)
}

/// Addresses in To, Cc and Bcc: `<...>` where present, else bare words with `@`.
pub(crate) fn header_recipients(mime: &[u8]) -> Vec<String> {
    let (fields, _) = headers_of(mime);
    let mut out = Vec::new();
    for (name, value) in fields {
        if !matches!(name.as_str(), "to" | "cc" | "bcc") {
            continue;
        }
        // Quoted display names may hold commas and @: drop them first.
        let mut cleaned = String::new();
        let mut in_quote = false;
        for c in value.chars() {
            match c {
                '"' => in_quote = !in_quote,
                _ if in_quote => {}
                _ => cleaned.push(c),
            }
        }
        for item in cleaned.split([',', ';']) {
            let item = item.rsplit(':').next().unwrap_or(item);
            let addr = match (item.find('<'), item.find('>')) {
                (Some(l), Some(r)) if l < r => &item[l + 1..r],
                _ => item.split('(').next().unwrap_or(item),
            };
            let addr = addr.trim().to_ascii_lowercase();
            if addr.contains('@') && !out.contains(&addr) {
                out.push(addr);
            }
        }
    }
    out
}

/// The value of `Subject:`, if any (for the draft's JSON).
pub(crate) fn subject(mime: &[u8]) -> String {
    headers_of(mime)
        .0
        .into_iter()
        .find(|(n, _)| n == "subject")
        .map(|(_, v)| v)
        .unwrap_or_default()
}

/// The `boundary` parameter of a multipart Content-Type value.
fn boundary_of(ct: &str) -> Option<String> {
    let lower = ct.to_ascii_lowercase();
    let i = lower.find("boundary=")?;
    let v = &ct[i + 9..];
    let b = v
        .trim_start_matches('"')
        .split(['"', ';'])
        .next()
        .unwrap_or("")
        .trim();
    (!b.is_empty()).then(|| b.to_string())
}

pub(crate) fn render_entity(entity: &[u8], out: &mut Vec<String>, depth: usize) {
    if depth > 10 {
        return;
    }
    let (fields, body_start) = headers_of(entity);
    let get = |n: &str| {
        fields
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let ct = get("content-type");
    let body = &entity[body_start.min(entity.len())..];
    let lower = ct.to_ascii_lowercase();
    if lower.starts_with("multipart/") {
        let Some(b) = boundary_of(&ct) else {
            return;
        };
        for part in multipart_parts(body, &b) {
            render_entity(part, out, depth + 1);
        }
        return;
    }
    if !(lower.is_empty() || lower.starts_with("text/")) {
        return;
    }
    let cte = get("content-transfer-encoding").to_ascii_lowercase();
    let bytes = match cte.as_str() {
        "quoted-printable" => strict_qp(body),
        "base64" => {
            let clean: Vec<u8> = body
                .iter()
                .copied()
                .filter(|c| !c.is_ascii_whitespace())
                .collect();
            base64::engine::general_purpose::STANDARD
                .decode(clean)
                .unwrap_or_default()
        }
        _ => body.to_vec(),
    };
    out.push(String::from_utf8_lossy(&bytes).into_owned());
}

/// The body parts of a multipart body (delimiters at line starts only).
fn multipart_parts<'a>(body: &'a [u8], boundary: &str) -> Vec<&'a [u8]> {
    let delim = format!("\r\n--{boundary}");
    let padded = [b"\r\n".as_slice(), body].concat();
    let mut offsets: Vec<(usize, usize)> = Vec::new();
    let mut rest_at = 0;
    while let Some(p) = find(&padded[rest_at..], delim.as_bytes()) {
        let at = rest_at + p;
        if let Some(last) = offsets.last_mut() {
            last.1 = at;
        }
        rest_at = at + delim.len();
        if padded[rest_at..].starts_with(b"--") {
            break;
        }
        let line_end = find(&padded[rest_at..], b"\r\n").map_or(padded.len(), |e| rest_at + e + 2);
        rest_at = line_end;
        offsets.push((line_end, padded.len()));
    }
    // Offsets are into `padded`, which has two more bytes at the front than `body`.
    offsets
        .into_iter()
        .map(|(a, b)| &body[a.saturating_sub(2)..b.saturating_sub(2).max(a.saturating_sub(2))])
        .collect()
}

pub(crate) fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    if n.is_empty() || h.len() < n.len() {
        return None;
    }
    h.windows(n.len()).position(|w| w == n)
}

/// `=CRLF` soft break, `=XX` byte, anything else literal.
pub(crate) fn strict_qp(qp: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(qp.len());
    let mut i = 0;
    while i < qp.len() {
        if qp[i] == b'=' {
            if qp[i + 1..].starts_with(b"\r\n") {
                i += 3;
                continue;
            }
            if i + 2 < qp.len()
                && qp[i + 1].is_ascii_hexdigit()
                && qp[i + 2].is_ascii_hexdigit()
                && let Ok(v) =
                    u8::from_str_radix(std::str::from_utf8(&qp[i + 1..i + 3]).unwrap_or("zz"), 16)
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(qp[i]);
        i += 1;
    }
    out
}

/// The message a draft becomes when it is sent: the draft's MIME with every attachment added
/// through the API as one more part of a `multipart/mixed` (the draft's own, or one wrapped
/// around its body). Exchange builds its own MIME when it sends a draft; what matters to a test
/// is that every byte of text and every attachment is there, which this keeps.
pub(crate) fn reassemble(draft: &[u8], attachments: &[GraphAttachment]) -> Vec<u8> {
    if attachments.is_empty() {
        return draft.to_vec();
    }
    let (fields, body_start) = headers_of(draft);
    let ct = fields
        .iter()
        .find(|(n, _)| n == "content-type")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    if ct.to_ascii_lowercase().starts_with("multipart/mixed")
        && let Some(b) = boundary_of(&ct)
        && let Some(close) = rfind(draft, format!("\r\n--{b}--").as_bytes())
        && close >= body_start.saturating_sub(2)
    {
        let mut out = Vec::with_capacity(draft.len() + encoded_size(attachments));
        out.extend_from_slice(&draft[..close]);
        for a in attachments {
            out.extend_from_slice(format!("\r\n--{b}\r\n").as_bytes());
            out.extend_from_slice(&attachment_part(a));
        }
        out.extend_from_slice(&draft[close..]);
        return out;
    }
    wrap_in_mixed(draft, body_start, attachments)
}

/// A single-part draft (or another multipart type) inside a new `multipart/mixed`.
fn wrap_in_mixed(draft: &[u8], body_start: usize, attachments: &[GraphAttachment]) -> Vec<u8> {
    let b = format!("----=_FakeGraph_{}", crate::random_hex(8));
    let header_block = &draft[..body_start.min(draft.len())];
    let mut top = Vec::new();
    let mut content = Vec::new();
    for line in header_fields(header_block) {
        let name = line
            .split(|&c| c == b':')
            .next()
            .map(|n| String::from_utf8_lossy(n).trim().to_ascii_lowercase())
            .unwrap_or_default();
        if name.starts_with("content-") {
            content.extend_from_slice(line);
        } else {
            top.extend_from_slice(line);
        }
    }
    let mut out = Vec::with_capacity(draft.len() + encoded_size(attachments) + 512);
    out.extend_from_slice(&top);
    out.extend_from_slice(
        format!("Content-Type: multipart/mixed; boundary=\"{b}\"\r\n\r\n--{b}\r\n").as_bytes(),
    );
    out.extend_from_slice(&content);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&draft[body_start.min(draft.len())..]);
    for a in attachments {
        out.extend_from_slice(format!("\r\n--{b}\r\n").as_bytes());
        out.extend_from_slice(&attachment_part(a));
    }
    out.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
    out
}

/// Whole header fields (folded lines kept together), each ending in CRLF; the empty line is
/// not included.
fn header_fields(block: &[u8]) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while let Some(p) = find(&block[i..], b"\r\n") {
        let end = i + p + 2;
        let continued = matches!(block.get(end), Some(b' ' | b'\t'));
        if !continued {
            if end - start > 2 {
                out.push(&block[start..end]);
            }
            start = end;
        }
        i = end;
    }
    out
}

fn rfind(h: &[u8], n: &[u8]) -> Option<usize> {
    if h.len() < n.len() {
        return None;
    }
    (0..=h.len() - n.len())
        .rev()
        .find(|&i| &h[i..i + n.len()] == n)
}

/// How many bytes the attachments add to a message: base64 in 76-character lines plus a few
/// hundred bytes of headers each (Exchange counts the encoded size against its limits).
pub(crate) fn encoded_size(attachments: &[GraphAttachment]) -> usize {
    attachments.iter().map(|a| encoded_len(a.bytes.len())).sum()
}

/// The encoded size of an attachment of `n` bytes (see [`encoded_size`]).
pub(crate) fn encoded_len(n: usize) -> usize {
    let b64 = n.div_ceil(3) * 4;
    b64 + b64.div_ceil(76) * 2 + 300
}

/// One MIME part for an attachment: headers (the name in RFC 2231 form when it is not plain
/// ASCII) and the base64 body without a final line end (the delimiter's CRLF follows).
fn attachment_part(a: &GraphAttachment) -> Vec<u8> {
    let disposition = if a.is_inline { "inline" } else { "attachment" };
    let name_param = |key: &str| {
        if a.name.bytes().all(|c| c.is_ascii_graphic() || c == b' ') && !a.name.contains('"') {
            format!("{key}=\"{}\"", a.name)
        } else {
            let pct: String = a
                .name
                .bytes()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || b".-_".contains(&c) {
                        (c as char).to_string()
                    } else {
                        format!("%{c:02X}")
                    }
                })
                .collect();
            format!("{key}*=utf-8''{pct}")
        }
    };
    let mut head = format!(
        "Content-Type: {}; {}\r\nContent-Disposition: {disposition}; {}\r\n",
        a.content_type,
        name_param("name"),
        name_param("filename")
    );
    if let Some(cid) = &a.content_id {
        head.push_str(&format!("Content-ID: <{cid}>\r\n"));
    }
    head.push_str("Content-Transfer-Encoding: base64\r\n\r\n");
    let b64 = base64::engine::general_purpose::STANDARD.encode(&a.bytes);
    let mut out = head.into_bytes();
    for (i, line) in b64.as_bytes().chunks(76).enumerate() {
        if i > 0 {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_come_from_the_headers() {
        let m = b"From: a@x.com\r\nTo: \"Doe, J\" <J@x.com>, b@y.com\r\nCc: Team: c@z.com;\r\nBcc: d@w.com\r\nSubject: s\r\n\r\nTo: not@header.com\r\n";
        assert_eq!(
            header_recipients(m),
            vec!["j@x.com", "b@y.com", "c@z.com", "d@w.com"]
        );
    }

    #[test]
    fn strict_qp_keeps_padded_soft_breaks_literally() {
        assert_eq!(strict_qp(b"a=\r\nb =C3=A9"), "ab é".as_bytes());
        assert_eq!(strict_qp(b"a=  \r\nb"), b"a=  \r\nb");
    }

    fn att(name: &str, bytes: &[u8], cid: Option<&str>) -> GraphAttachment {
        GraphAttachment {
            id: "a".into(),
            name: name.into(),
            content_type: "application/pdf".into(),
            is_inline: cid.is_some(),
            content_id: cid.map(str::to_string),
            bytes: bytes.to_vec(),
            chunks: 0,
        }
    }

    #[test]
    fn attachments_join_a_mixed_draft_before_its_close_delimiter() {
        let draft = b"To: a@x.com\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b1--\r\n";
        let out = reassemble(draft, &[att("scan.pdf", b"%PDF-1", None)]);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.ends_with(
                "hello\r\n--b1\r\nContent-Type: application/pdf; name=\"scan.pdf\"\r\nContent-Disposition: attachment; filename=\"scan.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0x\r\n--b1--\r\n"
            ),
            "{text}"
        );
        let mut texts = Vec::new();
        render_entity(text.as_bytes(), &mut texts, 0);
        assert_eq!(texts, vec!["hello"]);
    }

    #[test]
    fn a_single_part_draft_is_wrapped_and_keeps_its_body() {
        let draft =
            b"To: a@x.com\r\nSubject: s\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nbody\r\n";
        let out = reassemble(draft, &[att("été.pdf", b"x", Some("c1@x"))]);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("To: a@x.com\r\nSubject: s\r\nContent-Type: multipart/mixed; boundary=\"----=_FakeGraph_"), "{text}");
        assert!(text.contains("\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nbody\r\n\r\n--"));
        assert!(
            text.contains("filename*=utf-8''%C3%A9t%C3%A9.pdf"),
            "{text}"
        );
        assert!(text.contains("Content-Disposition: inline;"));
        assert!(text.contains("Content-ID: <c1@x>"));
        let mut texts = Vec::new();
        render_entity(text.as_bytes(), &mut texts, 0);
        assert_eq!(texts, vec!["body\r\n"]);
        assert_eq!(header_recipients(text.as_bytes()), vec!["a@x.com"]);
    }
}

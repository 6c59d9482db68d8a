//! Shared oracles for the fuzz targets: what a well-formed SMTP reply looks like, and a
//! reference DATA decoder written from RFC 5321 §4.5.2 in the simplest possible way (whole input
//! at once, no state machine) to compare the streaming `DotDecoder` against.
//!
//! The reference is deliberately a different formulation from `proto::dot`: it finds the end of
//! the message by searching for `CRLF . CRLF` in the input (with the CRLF that ended the DATA
//! command in front), splits the body at real CRLFs, removes one leading dot per line, and only
//! then turns bare CR and bare LF into CRLF. If both agree on arbitrary bytes, neither has a
//! smuggling hole the other lacks.

/// Checks the wire form of one reply we send; returns its code.
///
/// Every line is `ddd-text CRLF` except the last, `ddd text CRLF`; all lines carry the same code
/// in 200..=599; no CR, LF or other control character (except tab) inside a line; at most 512
/// octets per line (RFC 5321 §4.5.3.1.5).
pub fn check_reply_wire(wire: &[u8]) -> u16 {
    assert!(
        wire.ends_with(b"\r\n"),
        "reply not CRLF-terminated: {wire:?}"
    );
    let body = &wire[..wire.len() - 2];
    let lines: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
    let mut code = None;
    for (i, line) in lines.iter().enumerate() {
        let line = if i + 1 < lines.len() {
            line.strip_suffix(b"\r")
                .unwrap_or_else(|| panic!("bare LF inside reply {wire:?}"))
        } else {
            line
        };
        assert!(line.len() >= 4, "short reply line {line:?} in {wire:?}");
        assert!(
            line.len() + 2 <= 512,
            "reply line over 512 octets: {wire:?}"
        );
        assert!(
            line[..3].iter().all(u8::is_ascii_digit),
            "no 3-digit code: {wire:?}"
        );
        let c = std::str::from_utf8(&line[..3])
            .unwrap()
            .parse::<u16>()
            .unwrap();
        assert!((200..=599).contains(&c), "code {c} out of range: {wire:?}");
        if let Some(prev) = code {
            assert_eq!(prev, c, "mixed codes in {wire:?}");
        }
        code = Some(c);
        let sep = if i + 1 == lines.len() { b' ' } else { b'-' };
        assert_eq!(line[3], sep, "bad separator in {wire:?}");
        let text = std::str::from_utf8(&line[4..])
            .unwrap_or_else(|_| panic!("reply text is not UTF-8: {wire:?}"));
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\t'),
            "control character in reply {wire:?}"
        );
    }
    code.unwrap()
}

/// The decoded message per RFC 5321 §4.5.2 with our normalisation, computed from the whole
/// input. Returns `(bytes consumed, message)` when `input` (bytes after the DATA command's CRLF)
/// contains the terminator, `None` when it does not.
pub fn reference_decode(input: &[u8]) -> Option<(usize, Vec<u8>)> {
    // The CRLF that ended the DATA command counts as the line end before a first-line ".".
    let mut framed = b"\r\n".to_vec();
    framed.extend_from_slice(input);
    let end = find(&framed, b"\r\n.\r\n")?;
    // Body: everything before the terminator's dot, including the CRLF that ends the last line.
    let body = &framed[2..end + 2];
    let consumed = end + 5 - 2;
    let mut out = Vec::with_capacity(body.len());
    for line in split_crlf_lines(body) {
        let line = line.strip_prefix(b".").unwrap_or(line);
        out.extend_from_slice(&normalise_line_ends(line));
        out.extend_from_slice(b"\r\n");
    }
    Some((consumed, out))
}

/// Splits at real CRLFs; every returned line had a CRLF after it (the body always ends in one).
fn split_crlf_lines(body: &[u8]) -> Vec<&[u8]> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 1 < body.len() {
        if body[i] == b'\r' && body[i + 1] == b'\n' {
            lines.push(&body[start..i]);
            i += 2;
            start = i;
        } else {
            i += 1;
        }
    }
    debug_assert_eq!(start, body.len());
    lines
}

/// Every CRLF, bare CR and bare LF becomes CRLF.
pub fn normalise_line_ends(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 8);
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\r' if bytes.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 2;
                continue;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// True when every CR is followed by LF and every LF preceded by CR.
pub fn is_canonical(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().all(|(i, &b)| match b {
        b'\r' => bytes.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && bytes[i - 1] == b'\r',
        _ => true,
    })
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Takes a little-endian integer of `n` bytes from the front of `data` (fewer at the end).
pub fn take_num(data: &mut &[u8], n: usize) -> u64 {
    let k = n.min(data.len());
    let mut v = 0u64;
    for (i, &b) in data[..k].iter().enumerate() {
        v |= u64::from(b) << (8 * i);
    }
    *data = &data[k..];
    v
}

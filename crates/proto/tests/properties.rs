//! Property tests of the DATA codec, of upstream replies and of addresses: the stable, in-suite
//! equivalents of the `dot`, `reply` and `address` fuzz targets (fuzz/, docs/fuzzing.md).
//!
//! The decoder is compared with a reference written from RFC 5321 §4.5.2 in the plainest way
//! (whole input at once: find `CRLF . CRLF`, split at real CRLFs, drop one leading dot per line,
//! then turn bare CR and LF into CRLF). Inputs are built from the fragments that matter (every
//! smuggling line end, dots, CR, LF) mixed with arbitrary bytes.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use smtp_proto::Request;
use smtp2oauth_proto::address::split_path;
use smtp2oauth_proto::reply::MAX_WIRE_LINE;
use smtp2oauth_proto::{Address, AddressError, DotDecoder, DotEncoder, ReplyAssembler};

/// What a device sends after 354: smuggling fragments, dots, line ends and other bytes.
fn wire() -> impl Strategy<Value = Vec<u8>> {
    const FRAGMENTS: &[&[u8]] = &[
        b"\r\n",
        b"\n",
        b"\r",
        b".",
        b"..",
        b"\n.\n",
        b"\r\n.\n",
        b"\n.\r\n",
        b"\r.\r\n",
        b"\r\n.\r",
        b"\r\n.\r\n",
        b"MAIL FROM:<evil@x.example>",
        b"text",
    ];
    // One flat strategy (an index and a byte per fragment) keeps generation cheap in debug.
    proptest::collection::vec((0..FRAGMENTS.len() + 3, any::<u8>()), 0..40).prop_map(|v| {
        let mut out = Vec::new();
        for (i, b) in v {
            match FRAGMENTS.get(i) {
                Some(f) => out.extend_from_slice(f),
                None => out.push(b),
            }
        }
        out
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn normalise_line_ends(bytes: &[u8]) -> Vec<u8> {
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

/// The reference decoder: `(consumed, message)` when the input holds the terminator.
fn reference(input: &[u8]) -> Option<(usize, Vec<u8>)> {
    let mut framed = b"\r\n".to_vec(); // the CRLF that ended the DATA command
    framed.extend_from_slice(input);
    let end = find(&framed, b"\r\n.\r\n")?;
    let body = &framed[2..end + 2];
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 1 < body.len() {
        if &body[i..i + 2] == b"\r\n" {
            let line = &body[start..i];
            let line = line.strip_prefix(b".").unwrap_or(line);
            out.extend_from_slice(&normalise_line_ends(line));
            out.extend_from_slice(b"\r\n");
            i += 2;
            start = i;
        } else {
            i += 1;
        }
    }
    Some((end + 3, out))
}

struct Run {
    out: Vec<u8>,
    consumed: usize,
    done: bool,
    size: u64,
    over: bool,
}

/// Feeds `input` cut at `cuts` (any order, any values).
fn decode(input: &[u8], cuts: &[usize], limit: u64) -> Run {
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    bounds.push(input.len());
    bounds.sort_unstable();
    let mut d = DotDecoder::new(limit);
    let mut out = Vec::new();
    let mut pos = 0;
    let mut done = false;
    for end in bounds {
        if end < pos {
            continue;
        }
        let r = d.decode(&input[pos..end], &mut out);
        pos += r.consumed;
        if r.done {
            done = true;
            break;
        }
        assert_eq!(
            pos, end,
            "a decoder that is not done consumes all it is given"
        );
    }
    Run {
        out,
        consumed: pos,
        done,
        size: d.size(),
        over: d.over_limit(),
    }
}

fn encode(msg: &[u8], chunk: usize) -> Vec<u8> {
    let mut e = DotEncoder::new();
    let mut out = Vec::new();
    for c in msg.chunks(chunk.max(1)) {
        e.encode(c, &mut out);
    }
    e.finish(&mut out);
    out
}

fn is_canonical(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().all(|(i, &b)| match b {
        b'\r' => bytes.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && bytes[i - 1] == b'\r',
        _ => true,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Only CRLF.CRLF ends the message, exactly there, and the message is the unstuffed,
    /// CRLF-normalised body: `\n.\n`, `\r\n.\n`, `\n.\r\n`, `\r.\r\n`, `\r\n.\r` never end it.
    #[test]
    fn decoder_agrees_with_the_reference(input in wire()) {
        let run = decode(&input, &[], u64::MAX);
        match reference(&input) {
            Some((consumed, msg)) => {
                prop_assert!(run.done);
                prop_assert_eq!(run.consumed, consumed);
                prop_assert_eq!(run.out, msg);
            }
            None => {
                prop_assert!(!run.done, "ended without CRLF.CRLF");
                prop_assert_eq!(run.consumed, input.len());
            }
        }
    }

    /// However the socket splits the bytes, the message and its end are the same.
    #[test]
    fn chunking_never_changes_the_message(
        input in wire(),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let whole = decode(&input, &[], u64::MAX);
        let cut = decode(&input, &cuts, u64::MAX);
        prop_assert_eq!(cut.out, whole.out);
        prop_assert_eq!(cut.consumed, whole.consumed);
        prop_assert_eq!(cut.done, whole.done);
    }

    /// What we store has CRLF line ends only.
    #[test]
    fn stored_bytes_have_no_bare_cr_or_lf(input in wire(), cuts in proptest::collection::vec(any::<usize>(), 0..4)) {
        let run = decode(&input, &cuts, u64::MAX);
        prop_assert!(is_canonical(&run.out), "{:?}", run.out);
    }

    /// The limit keeps exactly `limit` bytes, the size counts past it, and the framing (where the
    /// message ends) does not change, so the session stays in sync after a 552.
    #[test]
    fn size_limit_is_exact(input in wire(), limit in 0u64..300, cuts in proptest::collection::vec(any::<usize>(), 0..4)) {
        let whole = decode(&input, &[], u64::MAX);
        let limited = decode(&input, &cuts, limit);
        let keep = limit.min(whole.out.len() as u64) as usize;
        prop_assert_eq!(&limited.out[..], &whole.out[..keep]);
        prop_assert_eq!(limited.size, whole.out.len() as u64);
        prop_assert_eq!(limited.over, whole.out.len() as u64 > limit);
        prop_assert_eq!((limited.done, limited.consumed), (whole.done, whole.consumed));
    }

    /// Whatever we stored reaches the upstream as exactly one message with exactly those bytes:
    /// the encoder stuffs every leading dot, and `CRLF.CRLF` appears only at the very end.
    #[test]
    fn encoder_sends_exactly_one_message(input in wire(), chunk in 1usize..20) {
        let stored = decode(&input, &[], u64::MAX);
        // A stored message is complete: empty or ending in CRLF.
        let stored = if stored.done { stored.out } else { Vec::new() };
        let messages = [
            (stored.clone(), stored),
            // any bytes at all (e.g. a message file written by another tool): canonicalised
            (input.clone(), {
                let mut m = normalise_line_ends(&input);
                if !m.is_empty() && !m.ends_with(b"\r\n") {
                    m.extend_from_slice(b"\r\n");
                }
                m
            }),
        ];
        for (msg, expect) in messages {
            let wire = encode(&msg, chunk);
            prop_assert_eq!(&wire, &encode(&msg, usize::MAX), "encoder chunking");
            let mut framed = b"\r\n".to_vec();
            framed.extend_from_slice(&wire);
            prop_assert_eq!(find(&framed, b"\r\n.\r\n"), Some(framed.len() - 5));
            let back = decode(&wire, &[chunk], u64::MAX);
            prop_assert!(back.done);
            prop_assert_eq!(back.consumed, wire.len());
            prop_assert_eq!(back.out, expect);
        }
    }

}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// An upstream's reply, however broken, is passed on as well-formed reply lines of at most
    /// 512 octets with no CR, LF or control character inside: it cannot inject a line into the
    /// device's session.
    #[test]
    fn upstream_replies_cannot_inject_lines(
        lines in proptest::collection::vec(
            (prop_oneof![Just("250"), Just("451"), Just("554"), Just("12"), Just("999")],
             prop_oneof![Just(" "), Just("-"), Just("")],
             prop_oneof![Just(""), Just("5.7.3 "), Just("4.7.500 "), Just("2.0.0 ")],
             proptest::collection::vec(any::<char>(), 0..600)),
            1..5),
    ) {
        let mut a = ReplyAssembler::new();
        for (code, sep, status, text) in lines {
            let text: String = text.into_iter().collect();
            let line = format!("{code}{sep}{status}{text}\r\n");
            match a.push_line(line.as_bytes()) {
                Ok(Some(reply)) => {
                    let wire = String::from_utf8(reply.to_wire()).unwrap();
                    let wire_lines: Vec<&str> = wire.split_inclusive("\r\n").collect();
                    prop_assert_eq!(wire_lines.len(), reply.lines().len());
                    for (i, l) in wire_lines.iter().enumerate() {
                        prop_assert!(l.len() <= MAX_WIRE_LINE);
                        let body = l.strip_suffix("\r\n").unwrap();
                        prop_assert!(!body.chars().any(|c| c.is_control() && c != '\t'), "{:?}", l);
                        prop_assert!(body.len() >= 4 && body[..3].bytes().all(|b| b.is_ascii_digit()));
                        let sep = if i + 1 == wire_lines.len() { ' ' } else { '-' };
                        prop_assert_eq!(body.as_bytes()[3], sep as u8);
                    }
                    prop_assert!((200..=599).contains(&reply.code()));
                }
                Ok(None) => {}
                Err(_) => a = ReplyAssembler::new(),
            }
        }
    }
}

/// Address texts built from what matters: atoms, dots, quotes, backslashes, brackets, blanks,
/// parameters an attacker would smuggle, `@`, non-ASCII and control characters.
fn address_text() -> impl Strategy<Value = String> {
    const FRAGMENTS: &[&str] = &[
        "a",
        "Z9",
        "!#$%&'*+-/=?^_`{|}~",
        ".",
        "\"",
        "\\",
        "<",
        ">",
        "@",
        " ",
        "\t",
        ",",
        ":",
        ";",
        "[",
        "]",
        "(",
        ")",
        " ENVID=x",
        " NOTIFY=NEVER",
        "> SIZE=1",
        "é",
        "ü.example",
        "\x1b]2;owned\x07",
        "\r\n",
        "\0",
        "\u{85}",
        "contoso.com",
        "[192.0.2.1]",
    ];
    proptest::collection::vec(0..FRAGMENTS.len(), 1..12)
        .prop_map(|v| v.into_iter().map(|i| FRAGMENTS[i]).collect::<String>())
}

/// A local part's value, written as a quoted string (so that most of them parse).
fn quoted_address() -> impl Strategy<Value = String> {
    (
        address_text(),
        prop_oneof!["contoso\\.com", "[a-z]{1,8}(\\.[a-z]{1,8}){0,2}"],
    )
        .prop_map(|(local, domain)| {
            let escaped: String = local
                .chars()
                .flat_map(|c| match c {
                    '"' | '\\' => vec!['\\', c],
                    c => vec![c],
                })
                .collect();
            format!("\"{escaped}\"@{domain}")
        })
}

/// What an upstream reads from `MAIL FROM:` and `RCPT TO:` with `a` written as we write it: the
/// same address (smtp-proto's unquoted value and our own reading) and no parameter but ours.
fn assert_sent_as_is(a: &Address) {
    let written = a.to_string();
    assert!(
        !written.chars().any(char::is_control),
        "control character written: {written:?}"
    );
    assert_eq!(Address::parse(&written).as_ref(), Ok(a), "{written}");
    let mail = format!("MAIL FROM:{} SIZE=10\r\n", a.path());
    // The path ends where we think it ends, and reads back as `a`.
    let (raw, rest) = split_path(&mail["MAIL FROM:<".len()..]).expect("a closing bracket");
    assert_eq!(rest, " SIZE=10\r\n");
    assert_eq!(Address::from_path(raw, &a.unquoted()).as_ref(), Ok(a));
    if a.domain().starts_with('[') {
        // smtp-proto, our stand-in for the upstream's parser, reads no address literal
        // (`a@[192.0.2.1]`); what it would make of one cannot be asked of it.
        return;
    }
    let Ok(Request::Mail { from }) = Request::parse(&mut mail.as_bytes().iter()) else {
        panic!("{mail:?} does not parse as MAIL");
    };
    assert_eq!(from.address, a.unquoted(), "{mail:?}");
    let reference = "MAIL FROM:<x@y> SIZE=10\r\n";
    let Ok(Request::Mail { from: want }) = Request::parse(&mut reference.as_bytes().iter()) else {
        unreachable!()
    };
    let mut from = from.into_owned();
    from.address = "x@y".into();
    assert_eq!(from, want.into_owned(), "parameters changed: {mail:?}");

    let rcpt = format!("RCPT TO:{}\r\n", a.path());
    let Ok(Request::Rcpt { to }) = Request::parse(&mut rcpt.as_bytes().iter()) else {
        panic!("{rcpt:?} does not parse as RCPT");
    };
    assert_eq!(
        (to.address.as_ref(), to.orcpt, to.flags, to.rrvs),
        (a.unquoted().as_str(), None, 0, 0),
        "{rcpt:?}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever we accept is written in a form that parses back to the same address and adds
    /// no parameter upstream; refused texts are refused for a reason a device can be told.
    #[test]
    fn accepted_addresses_are_sent_as_they_were_read(text in prop_oneof![address_text(), quoted_address()]) {
        match Address::parse(&text) {
            Ok(a) => {
                prop_assert!(!a.local().is_empty() && !a.domain().is_empty());
                prop_assert!(!a.domain().contains(|c: char| c.is_whitespace() || c == '<' || c == '>'));
                assert_sent_as_is(&a);
            }
            Err(_) => {
                prop_assert!(Address::from_path(&text, &text).is_err());
            }
        }
    }

    /// Any text with a control character is refused, by every way of reading an address.
    #[test]
    fn control_characters_are_always_refused(text in address_text()) {
        if text.chars().any(char::is_control) {
            prop_assert_eq!(Address::parse(&text), Err(AddressError::Control));
            prop_assert!(Address::from_stored(&text).is_err());
        }
    }

    /// What older versions stored (smtp-proto's unquoted value) is written quoted, so it, too,
    /// reaches the upstream as one address without parameters.
    #[test]
    fn stored_texts_are_written_safely(text in address_text()) {
        if let Ok(a) = Address::from_stored(&text) {
            assert_sent_as_is(&a);
        }
    }
}

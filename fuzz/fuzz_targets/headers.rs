//! The header rewriter behind `rewrite_sender` (`inbound::headers::HeaderRewriter`).
//!
//! Input: 1 byte chunk size, then a first line of `allowed_senders` patterns (comma-separated),
//! then the message. The message is fed as the rewriter sees it in the relay (the output of the
//! DATA decoder: CRLF line ends only, ending in CRLF) and, for robustness only, raw.
//!
//! Oracles: never a panic; chunking never changes the output; the body after the first blank
//! line passes byte for byte; the output is still CRLF-only; rewriting is idempotent (our own
//! output passes unchanged: its From is the mailbox or an allowed sender); the header fields
//! other than From and Sender pass unchanged and in order; and an independent RFC 5322 parser
//! (mail-parser) reads the rewritten From as the account's mailbox.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp2oauth_fuzz::{find, is_canonical, normalise_line_ends, take_num};
use smtp2oauth_inbound::headers::{HeaderRewriter, RewriteOutcome, parse_mailbox};
use smtp2oauth_inbound::identity::SenderPolicy;
use smtp2oauth_proto::Address;

const MAILBOX: &str = "scanner@contoso.com";

fn rewrite(policy: &SenderPolicy, msg: &[u8], chunk: usize) -> (Vec<u8>, RewriteOutcome) {
    let mut r = HeaderRewriter::new(policy.clone());
    let mut out = Vec::new();
    for c in msg.chunks(chunk.max(1)) {
        r.push(c, &mut out);
    }
    r.finish(&mut out);
    (out, r.outcome)
}

/// Where the body starts (after the blank line), or `msg.len()` without a blank line.
fn body_start(msg: &[u8]) -> usize {
    if msg.starts_with(b"\r\n") {
        return 0;
    }
    find(msg, b"\r\n\r\n").map_or(msg.len(), |p| p + 2)
}

/// Header fields (with continuation lines) of a CRLF-canonical header block.
fn fields(block: &[u8]) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < block.len() {
        let end = find(&block[i..], b"\r\n").map_or(block.len(), |p| i + p + 2);
        if !matches!(block.get(end), Some(b' ' | b'\t')) {
            out.push(&block[start..end]);
            start = end;
        }
        i = end;
    }
    out
}

fn name(field: &[u8]) -> Option<String> {
    let colon = field.iter().position(|&b| b == b':')?;
    // Obsolete syntax (RFC 5322 §4.5) allows blanks before the colon: `From : ...`.
    let n = field[..colon].trim_ascii_end();
    if n.is_empty() || n.iter().any(|b| b.is_ascii_whitespace()) {
        return None;
    }
    Some(String::from_utf8_lossy(n).to_ascii_lowercase())
}

fn value(field: &[u8]) -> String {
    let colon = field.iter().position(|&b| b == b':').map_or(0, |p| p + 1);
    String::from_utf8_lossy(&field[colon..])
        .replace("\r\n", "")
        .trim()
        .to_string()
}

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let chunk = take_num(&mut data, 1) as usize;
    let (patterns, raw) = match data.iter().position(|&b| b == b'\n') {
        Some(p) => (&data[..p], &data[p + 1..]),
        None => (&b""[..], data),
    };
    let patterns: Vec<String> = String::from_utf8_lossy(patterns)
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .take(4)
        .map(str::to_string)
        .collect();
    let mailbox = Address::parse(MAILBOX).expect("a mailbox");
    let policy = SenderPolicy::new(mailbox, &patterns, true);

    // Robustness on bytes the decoder would never produce.
    let (a, oa) = rewrite(&policy, raw, chunk);
    let (b, ob) = rewrite(&policy, raw, usize::MAX);
    assert_eq!((a, oa), (b, ob), "chunking changed the output (raw input)");

    // What the relay feeds it: canonical, ending in CRLF.
    let mut msg = normalise_line_ends(raw);
    if !msg.is_empty() && !msg.ends_with(b"\r\n") {
        msg.extend_from_slice(b"\r\n");
    }
    let (out, outcome) = rewrite(&policy, &msg, usize::MAX);
    for c in [chunk, 1, 7] {
        let (o, oc) = rewrite(&policy, &msg, c);
        assert_eq!((&o, &oc), (&out, &outcome), "chunking changed the output");
    }
    assert!(
        is_canonical(&out),
        "rewriting made a bare CR or LF: {out:?}"
    );

    let in_body = &msg[body_start(&msg)..];
    assert!(out.ends_with(in_body), "the body must pass byte for byte");
    let in_head = &msg[..msg.len() - in_body.len()];
    let out_head = &out[..out.len() - in_body.len()];
    let in_fields = fields(in_head);
    let out_fields = fields(out_head);

    // Fields other than From and Sender pass unchanged, in order.
    let others = |fs: &[&[u8]]| -> Vec<Vec<u8>> {
        fs.iter()
            .filter(|f| !matches!(name(f).as_deref(), Some("from" | "sender")))
            .map(|f| f.to_vec())
            .collect()
    };
    assert_eq!(
        others(&in_fields),
        others(&out_fields),
        "other fields changed"
    );
    let count = |fs: &[&[u8]], wanted: &str| {
        fs.iter()
            .filter(|f| name(f).as_deref() == Some(wanted))
            .count()
    };
    let (froms, senders) = (count(&in_fields, "from"), count(&in_fields, "sender"));
    assert_eq!(outcome.from_added, froms == 0);
    // One From and at most one Sender: every reader sees the one that was checked.
    assert_eq!(count(&out_fields, "from"), 1);
    assert_eq!(count(&out_fields, "sender"), senders.min(1));
    assert_eq!(
        outcome.fields_removed,
        froms.saturating_sub(1) + senders.saturating_sub(1)
    );

    // The first From now names an allowed sender; our own output passes unchanged.
    let first_from = out_fields
        .iter()
        .find(|f| name(f).as_deref() == Some("from"))
        .expect("a From field");
    let (_, addr) = parse_mailbox(&value(first_from));
    assert!(
        addr.as_deref()
            .and_then(|a| Address::parse(a).ok())
            .is_some_and(|a| policy.allows(&a)),
        "From after rewriting is not allowed: {:?}",
        String::from_utf8_lossy(first_from)
    );
    let (again, o2) = rewrite(&policy, &out, chunk);
    assert_eq!(again, out, "rewriting our own output changed it");
    assert_eq!(o2, RewriteOutcome::default());

    // An independent parser agrees that a From we wrote is the mailbox.
    if outcome.from_rewritten.is_some() || outcome.from_added {
        let mut probe = first_from.to_vec();
        probe.extend_from_slice(b"\r\n");
        let parsed = mail_parser::MessageParser::default().parse(&probe[..]);
        let got = parsed
            .as_ref()
            .and_then(|m| m.from())
            .and_then(|a| a.first())
            .and_then(|a| a.address())
            .map(str::to_ascii_lowercase);
        assert_eq!(
            got.as_deref(),
            Some(MAILBOX),
            "an RFC 5322 parser reads the rewritten From differently: {:?}",
            String::from_utf8_lossy(first_from)
        );
    }
});

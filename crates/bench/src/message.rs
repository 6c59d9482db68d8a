//! The messages the load generator sends.
//!
//! Why a module of its own: the generator must not be the bottleneck, so a message is built once
//! per run and only a small, fixed-length header block changes per message (it carries the
//! sequence number the sink uses to detect lost and duplicated messages). The body is shared by
//! every session and written straight from memory: no per-message formatting, no per-byte work.
//!
//! The body looks like a scanned attachment: base64-alphabet lines of 76 characters ending in
//! CRLF, which is what printers send (a PDF in base64). No line starts with '.', so the body needs
//! no dot-stuffing on the way in; the final `.` CRLF is part of the shared body.

use std::sync::Arc;

/// Width of the zero-padded sequence number, so every header block has the same length and the
/// total message size is exactly what was asked for.
const SEQ_WIDTH: usize = 10;
/// Characters per body line (RFC 2045's base64 line length), CRLF not included.
const LINE: usize = 76;
/// Where the sink finds the sequence number: `Message-ID: <bench.TAG.SEQ@smtp2oauth.bench>`.
const MSGID_PREFIX: &str = "Message-ID: <bench.";

/// The parts of every message of one run.
#[derive(Clone)]
pub struct Template {
    from: String,
    to: String,
    tag: String,
    header_len: usize,
    /// Body lines, then ".\r\n" (the end of DATA), shared by all sessions.
    body_with_dot: Arc<[u8]>,
}

impl Template {
    /// A template whose messages are `size` bytes (headers + body, without the final dot), or
    /// just the headers when `size` is smaller than they are. `tag` makes message ids unique to
    /// this run, so a message left over from an earlier run is never counted.
    pub fn new(from: &str, to: &str, tag: &str, size: usize) -> Template {
        let mut t = Template {
            from: from.to_string(),
            to: to.to_string(),
            tag: tag.to_string(),
            header_len: 0,
            body_with_dot: Arc::from(&b""[..]),
        };
        let mut probe = Vec::new();
        t.write_header(0, &mut probe);
        t.header_len = probe.len();
        let mut body = make_body(size.saturating_sub(t.header_len));
        body.extend_from_slice(b".\r\n");
        t.body_with_dot = Arc::from(body);
        t
    }

    /// Writes the header block for message `seq` (always the same length) into `out`.
    pub fn write_header(&self, seq: u64, out: &mut Vec<u8>) {
        use std::io::Write as _;
        out.clear();
        // Writing into a Vec cannot fail.
        let _ = write!(
            out,
            "From: <{from}>\r\nTo: <{to}>\r\nSubject: smtp2oauth bench {seq:0w$}\r\n\
             Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n\
             {MSGID_PREFIX}{tag}.{seq:0w$}@smtp2oauth.bench>\r\n\
             MIME-Version: 1.0\r\nContent-Type: application/pdf; name=\"scan.pdf\"\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n",
            from = self.from,
            to = self.to,
            tag = self.tag,
            w = SEQ_WIDTH,
        );
    }

    /// The shared body, terminated by ".\r\n".
    pub fn body_with_dot(&self) -> &Arc<[u8]> {
        &self.body_with_dot
    }

    /// Bytes of one message as sent (headers + body, without the final ".\r\n").
    pub fn message_len(&self) -> usize {
        self.header_len + self.body_with_dot.len() - 3
    }
}

/// Messages of several sizes in set proportions, the choice fixed by each sequence number (so
/// a run is reproducible and no generator state is shared between sessions).
#[derive(Clone)]
pub struct Mix {
    /// (weight, template); weights are relative.
    entries: Vec<(u32, Template)>,
    total: u64,
}

impl Mix {
    /// `entries` must not be empty, and some weight must be above 0.
    pub fn new(entries: Vec<(u32, Template)>) -> Mix {
        let total = entries
            .iter()
            .map(|(w, _)| u64::from(*w))
            .sum::<u64>()
            .max(1);
        assert!(!entries.is_empty(), "a message mix needs a template");
        Mix { entries, total }
    }

    /// The template of message `seq`.
    pub fn pick(&self, seq: u64) -> &Template {
        let mut at = mix64(seq) % self.total;
        for (w, t) in &self.entries {
            if at < u64::from(*w) {
                return t;
            }
            at -= u64::from(*w);
        }
        &self.entries[0].1
    }
}

impl From<Template> for Mix {
    fn from(t: Template) -> Mix {
        Mix::new(vec![(1, t)])
    }
}

/// A well-spread hash of `x` (splitmix64's finaliser).
pub fn mix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `len` bytes of CRLF-terminated lines of base64 characters (pseudo-random, so compression or
/// deduplication anywhere on the path cannot flatter the figures). The last line absorbs a
/// remainder too short to be a line of its own.
fn make_body(len: usize) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(len + 3);
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        // xorshift64: deterministic, fast, good enough to defeat compression.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ALPHABET[(state >> 58) as usize]
    };
    let mut left = len;
    while left > 0 {
        // A line needs at least one character and CRLF; a remainder of 1 or 2 bytes after this
        // line is folded into it (lines stay far below SMTP's 998-character limit).
        let mut chars = LINE.min(left.saturating_sub(2));
        let after = left - (chars + 2).min(left);
        if after > 0 && after < 3 {
            chars += after;
        }
        if chars == 0 {
            // 1 or 2 bytes in total: too small for a line; pad with spaces (a tiny message).
            out.extend(std::iter::repeat_n(b' ', left));
            break;
        }
        for _ in 0..chars {
            out.push(next());
        }
        out.extend_from_slice(b"\r\n");
        left -= chars + 2;
    }
    out
}

/// The sequence number of a message built from a template with `tag`, found in its headers
/// (the relay prepends a Received header, so we search rather than expect a fixed offset).
pub fn find_seq(data: &[u8], tag: &str) -> Option<u64> {
    // Only the header block can hold it; never scan a large body.
    let head = &data[..data.len().min(16 * 1024)];
    let needle = format!("{MSGID_PREFIX}{tag}.");
    let at = memchr::memmem::find(head, needle.as_bytes())? + needle.len();
    let digits = head.get(at..at + SEQ_WIDTH)?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_the_requested_size_and_valid_lines() {
        for size in [0, 1, 300, 400, 401, 402, 403, 1000, 10_240, 100_001] {
            let t = Template::new("a@b.example", "c@d.example", "t1", size);
            let mut h = Vec::new();
            t.write_header(42, &mut h);
            let mut msg = h.clone();
            msg.extend_from_slice(t.body_with_dot());
            assert!(msg.ends_with(b".\r\n"));
            let len = msg.len() - 3;
            assert_eq!(len, t.message_len());
            if size >= h.len() {
                assert_eq!(len, size, "size {size}");
            }
            let body = &msg[h.len()..len];
            if size >= h.len() + 3 {
                assert!(body.ends_with(b"\r\n"));
                for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    assert!(line.len() <= 81 && !line.starts_with(b"."), "{size}");
                }
            }
        }
    }

    #[test]
    fn a_mix_follows_its_weights() {
        let small = Template::new("a@b.example", "c@d.example", "m", 1000);
        let large = Template::new("a@b.example", "c@d.example", "m", 5000);
        let mix = Mix::new(vec![(3, small), (1, large)]);
        let large_ones = (0..4000)
            .filter(|&s| mix.pick(s).message_len() == 5000)
            .count();
        assert!((800..1200).contains(&large_ones), "{large_ones}");
        assert_eq!(mix.pick(7).message_len(), mix.pick(7).message_len());
    }

    #[test]
    fn headers_have_a_fixed_length_and_carry_the_sequence() {
        let t = Template::new("a@b.example", "c@d.example", "run7", 2048);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        t.write_header(1, &mut a);
        t.write_header(9_999_999, &mut b);
        assert_eq!(a.len(), b.len());
        let mut with_received = b"Received: from x\r\n".to_vec();
        with_received.extend_from_slice(&b);
        assert_eq!(find_seq(&with_received, "run7"), Some(9_999_999));
        assert_eq!(find_seq(&with_received, "run8"), None);
    }
}

//! The DATA transparency procedure (RFC 5321 §4.5.2), in both directions, while streaming.
//!
//! Inbound, [`DotDecoder`] turns the bytes a device sends after `354` into the message we store:
//! - the message ends only at `CRLF . CRLF`; no other sequence (`LF . LF`, `CR . CR LF`,
//!   `LF . CRLF`, ...) ends it, so SMTP smuggling through us is impossible;
//! - a line that starts with `.` after a real CRLF loses that first dot (dot-unstuffing);
//! - a bare LF or bare CR inside the data is normalised to CRLF in what we store, so what we hand
//!   upstream is canonical and no upstream can read a line end we did not mean;
//! - the stored size is counted exactly, so a size limit is enforced while streaming.
//!
//! We do not use smtp-proto's `DataReceiver` here: it needs priming for a first-line `.` and
//! holds back a byte between reads, and it neither normalises line ends nor counts output.
//! Keeping the whole procedure in one small state machine makes it testable and fuzzable.
//!
//! Outbound, [`DotEncoder`] stuffs dots and canonicalises line ends while streaming a stored
//! message to an upstream, then writes the terminator.

/// Where the decoder is in the current line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// After a real CRLF (or at the very start of the data).
    LineStart,
    /// Saw `.` at a line start.
    LineStartDot,
    /// Saw `.` `CR` at a line start.
    LineStartDotCr,
    /// Inside a line.
    Mid,
    /// Inside a line, saw a CR that is not yet known to be part of CRLF.
    MidCr,
    /// Saw the terminator.
    Done,
}

/// Streaming decoder for the DATA phase. Feed it what the socket gives; it appends the decoded
/// message to your buffer and tells you where the message ended.
#[derive(Clone, Debug)]
pub struct DotDecoder {
    state: State,
    /// Bytes of decoded message produced so far (including bytes not stored past the limit).
    decoded: u64,
    limit: u64,
    eight_bit: bool,
}

/// What one call to [`DotDecoder::decode`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// Input bytes consumed. When `done`, bytes after this belong to the next command.
    pub consumed: usize,
    /// The terminating `CRLF.CRLF` was seen.
    pub done: bool,
}

impl DotDecoder {
    /// A decoder that stores at most `limit` bytes of message; past that it keeps reading to the
    /// terminator (so the session stays in sync) but stores nothing more.
    pub fn new(limit: u64) -> Self {
        DotDecoder {
            state: State::LineStart,
            decoded: 0,
            limit,
            eight_bit: false,
        }
    }

    /// Total decoded size so far (counting bytes discarded past the limit).
    pub fn size(&self) -> u64 {
        self.decoded
    }

    /// True when the decoded message is larger than the limit.
    pub fn over_limit(&self) -> bool {
        self.decoded > self.limit
    }

    /// True when any byte >= 0x80 was seen (the message needs 8BITMIME upstream).
    pub fn saw_eight_bit(&self) -> bool {
        self.eight_bit
    }

    /// True once the final `.` line was read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes as much of `input` as possible, appending message bytes to `out`.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Decoded {
        let mut i = 0;
        while i < input.len() && self.state != State::Done {
            i += self.step(&input[i..], out);
        }
        Decoded {
            consumed: i,
            done: self.state == State::Done,
        }
    }

    /// Decodes from the start of `rest` (never empty) in the current state. Returns how many
    /// bytes it consumed: 0 when only the state changed and the byte is to be looked at again.
    #[inline]
    fn step(&mut self, rest: &[u8], out: &mut Vec<u8>) -> usize {
        let b = rest[0];
        match self.state {
            State::Done => 0,
            State::Mid => {
                // Fast path: copy everything up to the next CR or LF in one go.
                let n = memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
                if n > 0 {
                    self.emit(&rest[..n], out);
                    return n;
                }
                if b == b'\r' {
                    self.state = State::MidCr;
                } else {
                    // bare LF: normalised, and not a line start for dot purposes
                    self.emit(b"\r\n", out);
                }
                1
            }
            State::MidCr => {
                // CRLF ends the line; a bare CR is normalised, and this byte looked at again
                // mid-line.
                self.emit(b"\r\n", out);
                if b == b'\n' {
                    self.state = State::LineStart;
                    1
                } else {
                    self.state = State::Mid;
                    0
                }
            }
            State::LineStart if b == b'.' => {
                self.state = State::LineStartDot;
                1
            }
            State::LineStart => {
                self.state = State::Mid;
                0
            }
            State::LineStartDot if b == b'\r' => {
                self.state = State::LineStartDotCr;
                1
            }
            State::LineStartDot => {
                // A line "." followed by more: the first dot was stuffing; drop it and treat
                // the byte as the line's first byte (a second '.' is content).
                self.state = State::Mid;
                if b == b'.' {
                    self.emit(b".", out);
                    1
                } else {
                    0
                }
            }
            State::LineStartDotCr if b == b'\n' => {
                self.state = State::Done;
                1
            }
            State::LineStartDotCr => {
                // ". CR x": stuffed dot dropped, the CR is bare.
                self.state = State::MidCr;
                0
            }
        }
    }

    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if !self.eight_bit && bytes.iter().any(|&b| b >= 0x80) {
            self.eight_bit = true;
        }
        let before = self.decoded;
        self.decoded += bytes.len() as u64;
        if self.decoded <= self.limit {
            out.extend_from_slice(bytes);
        } else if before < self.limit {
            out.extend_from_slice(&bytes[..(self.limit - before) as usize]);
        }
    }
}

/// Streaming encoder for sending a stored message: canonical CRLF line ends, a dot added to every
/// line that starts with one, and the `CRLF.CRLF` terminator at the end.
#[derive(Clone, Debug)]
pub struct DotEncoder {
    at_line_start: bool,
    pending_cr: bool,
    empty: bool,
}

impl Default for DotEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl DotEncoder {
    /// An encoder at the start of a message.
    pub fn new() -> Self {
        DotEncoder {
            at_line_start: true,
            pending_cr: false,
            empty: true,
        }
    }

    /// Encodes a chunk of the message, appending wire bytes to `out`.
    pub fn encode(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + input.len() / 64 + 4);
        let mut i = 0;
        while i < input.len() {
            self.empty = false;
            if self.pending_cr {
                self.pending_cr = false;
                out.extend_from_slice(b"\r\n");
                self.at_line_start = true;
                if input[i] == b'\n' {
                    i += 1;
                    continue;
                }
            }
            let b = input[i];
            if self.at_line_start && b == b'.' {
                out.push(b'.');
            }
            self.at_line_start = false;
            let rest = &input[i..];
            let n = memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
            out.extend_from_slice(&rest[..n]);
            i += n;
            if i < input.len() {
                if input[i] == b'\r' {
                    self.pending_cr = true;
                } else {
                    out.extend_from_slice(b"\r\n");
                    self.at_line_start = true;
                }
                i += 1;
            }
        }
    }

    /// Finishes the message: completes the last line if needed and appends `.CRLF`.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.pending_cr {
            self.pending_cr = false;
            out.extend_from_slice(b"\r\n");
            self.at_line_start = true;
        }
        if !self.at_line_start && !self.empty {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        self.at_line_start = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Decodes `input` fed in chunks of `chunk` bytes; returns (message, leftover, done).
    fn decode_chunked(input: &[u8], chunk: usize, limit: u64) -> (Vec<u8>, Vec<u8>, bool) {
        let mut d = DotDecoder::new(limit);
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < input.len() {
            let end = (pos + chunk).min(input.len());
            let r = d.decode(&input[pos..end], &mut out);
            pos += r.consumed;
            if r.done {
                return (out, input[pos..].to_vec(), true);
            }
            assert_eq!(pos, end, "consumes all input until done");
        }
        (out, Vec::new(), false)
    }

    #[test]
    fn decoder_table() {
        // (wire bytes after DATA, stored message, leftover after terminator)
        let cases: &[(&[u8], &[u8], &[u8])] = &[
            (b".\r\n", b"", b""),
            (b"hello\r\n.\r\n", b"hello\r\n", b""),
            (b"hello\r\n.\r\nQUIT\r\n", b"hello\r\n", b"QUIT\r\n"),
            (b"..\r\n.\r\n", b".\r\n", b""),
            (
                b"..leading\r\n...two\r\n.\r\n",
                b".leading\r\n..two\r\n",
                b"",
            ),
            (b"a\r\n.b\r\n.\r\n", b"a\r\nb\r\n", b""),
            // bare LF and bare CR are normalised, and never end the message
            (b"a\nb\r\n.\r\n", b"a\r\nb\r\n", b""),
            (b"a\rb\r\n.\r\n", b"a\r\nb\r\n", b""),
            (b"a\r\r\nb\r\n.\r\n", b"a\r\n\r\nb\r\n", b""),
            // smuggling attempts: none of these end the message
            (
                b"a\n.\nMAIL FROM:<x@y>\r\n.\r\n",
                b"a\r\n.\r\nMAIL FROM:<x@y>\r\n",
                b"",
            ),
            (
                b"a\r\n.\nMAIL FROM:<x@y>\r\n.\r\n",
                b"a\r\n\r\nMAIL FROM:<x@y>\r\n",
                b"",
            ),
            (
                b"a\n.\r\nMAIL FROM:<x@y>\r\n.\r\n",
                b"a\r\n.\r\nMAIL FROM:<x@y>\r\n",
                b"",
            ),
            (
                b"a\r.\r\nMAIL FROM:<x@y>\r\n.\r\n",
                b"a\r\n.\r\nMAIL FROM:<x@y>\r\n",
                b"",
            ),
            (b"a\r\n.\rMAIL\r\n.\r\n", b"a\r\n\r\nMAIL\r\n", b""),
            // the terminator must be exactly CRLF . CRLF
            (b"a\r\n. \r\n.\r\n", b"a\r\n \r\n", b""),
            // 8-bit and NUL bytes pass through
            (b"caf\xc3\xa9 \x00\r\n.\r\n", b"caf\xc3\xa9 \x00\r\n", b""),
            // no final CRLF before the dot line: ".\r\n" only counts at a line start
            (b"x.\r\n.\r\n", b"x.\r\n", b""),
        ];
        for (wire, msg, rest) in cases {
            for chunk in [1, 2, 3, 7, 4096] {
                let (got, left, done) = decode_chunked(wire, chunk, u64::MAX);
                assert!(done, "{wire:?} chunk {chunk}: not done");
                assert_eq!(
                    got,
                    *msg,
                    "{:?} chunk {chunk}",
                    String::from_utf8_lossy(wire)
                );
                assert_eq!(left, *rest, "{wire:?} chunk {chunk}");
            }
        }
    }

    #[test]
    fn decoder_needs_more() {
        for wire in [
            &b"abc"[..],
            b"abc\r\n",
            b"abc\r\n.",
            b"abc\r\n.\r",
            b"a\n.\n",
            b"\r\n.\n",
        ] {
            let (_, _, done) = decode_chunked(wire, 1, u64::MAX);
            assert!(!done, "{wire:?}");
        }
    }

    #[test]
    fn decoder_limit_counts_and_keeps_reading() {
        let mut d = DotDecoder::new(5);
        let mut out = Vec::new();
        let r = d.decode(b"0123456789\r\n.\r\nNOOP\r\n", &mut out);
        assert!(r.done);
        assert_eq!(&out, b"01234");
        assert_eq!(d.size(), 12);
        assert!(d.over_limit());
        assert_eq!(r.consumed, 15);

        let mut d = DotDecoder::new(12);
        let mut out = Vec::new();
        d.decode(b"0123456789\r\n.\r\n", &mut out);
        assert!(!d.over_limit());
        assert_eq!(out.len(), 12);
    }

    #[test]
    fn decoder_reports_eight_bit() {
        let mut d = DotDecoder::new(100);
        d.decode(b"plain\r\n", &mut Vec::new());
        assert!(!d.saw_eight_bit());
        d.decode(b"\xe2\x82\xac\r\n.\r\n", &mut Vec::new());
        assert!(d.saw_eight_bit());
    }

    fn encode(input: &[u8], chunk: usize) -> Vec<u8> {
        let mut e = DotEncoder::new();
        let mut out = Vec::new();
        for c in input.chunks(chunk.max(1)) {
            e.encode(c, &mut out);
        }
        e.finish(&mut out);
        out
    }

    #[test]
    fn encoder_table() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b".\r\n"),
            (b"hello\r\n", b"hello\r\n.\r\n"),
            (b"hello", b"hello\r\n.\r\n"),
            (b".\r\n", b"..\r\n.\r\n"),
            (b"a\r\n.b\r\n..c\r\n", b"a\r\n..b\r\n...c\r\n.\r\n"),
            (b"a\n.b\n", b"a\r\n..b\r\n.\r\n"),
            (b"a\r.b", b"a\r\n..b\r\n.\r\n"),
            (b"a\r", b"a\r\n.\r\n"),
            (b"\r\n", b"\r\n.\r\n"),
        ];
        for (msg, wire) in cases {
            for chunk in [1, 2, 5, 1000] {
                assert_eq!(encode(msg, chunk), *wire, "{msg:?} chunk {chunk}");
            }
        }
    }

    proptest! {
        /// Whatever a device sends, decoding then re-encoding then decoding again is stable: what
        /// we deliver upstream decodes to exactly what we stored.
        #[test]
        fn encode_decode_round_trip(body in proptest::collection::vec(
            prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), Just(b'a'), Just(0xffu8)], 0..200),
            chunk in 1usize..17)
        {
            // Canonical content, as the decoder would store it.
            let mut wire = body.clone();
            wire.extend_from_slice(b"\r\n.\r\n");
            let (stored, _, done) = decode_chunked(&wire, chunk, u64::MAX);
            if done {
                let encoded = encode(&stored, chunk);
                let (again, left, done2) = decode_chunked(&encoded, chunk, u64::MAX);
                prop_assert!(done2);
                prop_assert!(left.is_empty());
                // The encoder adds a final CRLF when the message did not end with one.
                let mut expect = stored.clone();
                if !expect.is_empty() && !expect.ends_with(b"\r\n") {
                    expect.extend_from_slice(b"\r\n");
                }
                prop_assert_eq!(again, expect);
            }
        }

        /// Stored content never contains a bare CR or LF, and the message ends only at CRLF.CRLF.
        #[test]
        fn decoded_content_is_canonical(body in proptest::collection::vec(any::<u8>(), 0..300), chunk in 1usize..9) {
            let (stored, _, done) = decode_chunked(&body, chunk, u64::MAX);
            for (i, &b) in stored.iter().enumerate() {
                if b == b'\n' { prop_assert!(i > 0 && stored[i - 1] == b'\r'); }
                if b == b'\r' { prop_assert!(stored.get(i + 1) == Some(&b'\n')); }
            }
            if done {
                let end = body.windows(5).position(|w| w == b"\r\n.\r\n");
                let starts = body.starts_with(b".\r\n");
                prop_assert!(end.is_some() || starts);
            }
        }
    }
}

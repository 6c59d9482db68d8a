//! The AUTH PLAIN / LOGIN decoders (`inbound::sasl`), fed the raw response line a device sends.
//!
//! Input: 1 mode byte, then the bytes.
//! - mode even: the bytes are a response line as received (base64 or not, any line end).
//! - mode odd: the bytes are a decoded PLAIN message; we base64 it the way clients do (with or
//!   without padding, with CRLF or LF) and check the decoders give it back.
//!
//! Oracles: never a panic; anything outside the base64 alphabet (after trimming the line) is
//! refused as bad base64, never half-decoded; a decoded response re-encodes to the same bytes;
//! PLAIN credentials are always a non-empty username and a NUL-free password that reassemble to
//! the decoded message, and an authorization identity for someone else is refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp2oauth_inbound::sasl::{self, Credentials, SaslError};

const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64(bytes: &[u8], pad: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        let chars = c.len() + 1;
        for i in 0..4 {
            if i < chars {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize]);
            } else if pad {
                out.push(b'=');
            }
        }
    }
    out
}

fn trimmed(line: &[u8]) -> &[u8] {
    let end = line
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .map_or(0, |p| p + 1);
    let line = &line[..end];
    let start = line
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(line.len());
    &line[start..]
}

fn check_plain(decoded: &[u8]) {
    match sasl::parse_plain(decoded) {
        Ok(c) => {
            assert!(!c.username.is_empty());
            assert!(!c.password.contains(&0));
            assert!(!c.username.contains(&0));
            let mut a = vec![0];
            a.extend_from_slice(&c.username);
            a.push(0);
            a.extend_from_slice(&c.password);
            let mut b = c.username.clone();
            b.extend_from_slice(&a);
            assert!(
                decoded == &a[..] || decoded == &b[..],
                "PLAIN credentials must be exactly what was sent"
            );
            // The password never shows in Debug output (credentials reach log statements).
            let probe = Credentials {
                username: b"u".to_vec(),
                password: c.password,
            };
            assert_eq!(
                format!("{probe:?}"),
                r#"Credentials { username: "u", password: "[redacted]" }"#
            );
        }
        Err(e) => assert_eq!(e, SaslError::Malformed),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let line = bytes;
        let t = trimmed(line);
        match sasl::decode_response(line) {
            Ok(decoded) => {
                assert!(
                    t.iter().all(|b| B64.contains(b) || *b == b'='),
                    "accepted a byte outside base64: {line:?}"
                );
                // Lenient about padding only: the canonical encoding of what we decoded is the
                // input, give or take '=' characters.
                let canon = b64(&decoded, false);
                let stripped: Vec<u8> = t.iter().copied().filter(|&b| b != b'=').collect();
                assert_eq!(canon, stripped, "decoded bytes must re-encode to the input");
                check_plain(&decoded);
            }
            Err(SaslError::Cancelled) => assert_eq!(t, b"*"),
            Err(SaslError::BadBase64) => assert!(!t.is_empty() && t != b"*"),
            Err(SaslError::Malformed) => panic!("decode_response never says Malformed"),
        }
    } else {
        // A message a client built: its encodings must all decode back to it.
        for (pad, eol) in [
            (true, &b"\r\n"[..]),
            (false, b"\r\n"),
            (true, b"\n"),
            (false, b""),
        ] {
            let mut line = b64(bytes, pad);
            line.extend_from_slice(eol);
            let got = sasl::decode_response(&line);
            if bytes.is_empty() {
                assert_eq!(got, Ok(Vec::new()));
            } else {
                assert_eq!(got.as_deref(), Ok(bytes), "{line:?}");
            }
        }
        check_plain(bytes);
    }
});

//! The DATA reader and writer (`proto::dot`): dot-unstuffing, CRLF handling, the size limit, and
//! the encoder that feeds the upstream.
//!
//! Input: 2 bytes size limit (0xffff = none), 1 byte chunk size, 1 byte split point, then the
//! bytes a device sends after `354`.
//!
//! Oracles: the streaming decoder agrees with the whole-input reference (so only CRLF.CRLF ends
//! a message, and the output is exactly the unstuffed, CRLF-normalised body); chunking never
//! changes anything; the limit truncates exactly while the size keeps counting; and whatever we
//! stored, the encoder's output decodes back to it with the terminator only at the very end
//! (the upstream sees exactly one message).
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp2oauth_fuzz::{find, is_canonical, normalise_line_ends, reference_decode, take_num};
use smtp2oauth_proto::{DotDecoder, DotEncoder};

struct Run {
    out: Vec<u8>,
    consumed: usize,
    done: bool,
    size: u64,
    over: bool,
    eight_bit: bool,
}

/// Feeds `input` in pieces cut at `cuts` (sorted positions).
fn decode(input: &[u8], cuts: &[usize], limit: u64) -> Run {
    let mut d = DotDecoder::new(limit);
    let mut out = Vec::new();
    let mut pos = 0;
    let mut done = false;
    let mut bounds: Vec<usize> = cuts.iter().copied().filter(|&c| c < input.len()).collect();
    bounds.push(input.len());
    for end in bounds {
        if end < pos {
            continue;
        }
        let r = d.decode(&input[pos..end], &mut out);
        assert!(r.consumed <= end - pos);
        pos += r.consumed;
        if r.done {
            done = true;
            assert!(d.is_done());
            break;
        }
        assert_eq!(
            pos, end,
            "a decoder that is not done consumes everything it is given"
        );
    }
    if done {
        // Once done, the decoder takes nothing more: later bytes belong to the next command.
        let r = d.decode(b"more\r\n.\r\n", &mut out);
        assert_eq!(r.consumed, 0);
        assert!(r.done);
    }
    Run {
        out,
        consumed: pos,
        done,
        size: d.size(),
        over: d.over_limit(),
        eight_bit: d.saw_eight_bit(),
    }
}

fn encode(msg: &[u8], chunk: usize) -> Vec<u8> {
    let mut e = DotEncoder::new();
    let mut out = Vec::new();
    for c in msg.chunks(chunk.max(1)) {
        e.encode(c, &mut out);
    }
    if msg.is_empty() {
        e.encode(b"", &mut out);
    }
    e.finish(&mut out);
    out
}

/// What an upstream decodes from our encoder's output: exactly `expect`, and the terminator
/// only at the end.
fn check_encoded(wire: &[u8], expect: &[u8]) {
    let mut framed = b"\r\n".to_vec();
    framed.extend_from_slice(wire);
    assert_eq!(
        find(&framed, b"\r\n.\r\n"),
        Some(framed.len() - 5),
        "terminator must appear once, at the end: {wire:?}"
    );
    let (consumed, back) = reference_decode(wire).expect("encoder output is terminated");
    assert_eq!(consumed, wire.len());
    assert_eq!(back, expect, "round trip through the encoder");
}

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let limit = match take_num(&mut data, 2) {
        0xffff => u64::MAX,
        n => n,
    };
    let chunk = take_num(&mut data, 1) as usize;
    let split = take_num(&mut data, 1) as usize;
    let input = data;

    // 1. Whole input, no limit, against the reference.
    let whole = decode(input, &[], u64::MAX);
    assert!(
        is_canonical(&whole.out),
        "stored bytes must be CRLF-only: {:?}",
        whole.out
    );
    assert_eq!(whole.size, whole.out.len() as u64);
    assert_eq!(whole.eight_bit, whole.out.iter().any(|&b| b >= 0x80));
    match reference_decode(input) {
        Some((consumed, msg)) => {
            assert!(whole.done, "reference found CRLF.CRLF, decoder did not");
            assert_eq!(
                whole.consumed, consumed,
                "message must end exactly at CRLF.CRLF"
            );
            assert_eq!(whole.out, msg);
        }
        None => {
            assert!(
                !whole.done,
                "decoder ended the message without CRLF.CRLF: {input:?}"
            );
            assert_eq!(whole.consumed, input.len());
            // What was emitted so far is a prefix of any completion.
            let mut completed = input.to_vec();
            completed.extend_from_slice(b"\r\n.\r\n");
            let (_, full) = reference_decode(&completed).unwrap();
            assert!(full.starts_with(&whole.out), "emitted bytes are final");
        }
    }

    // 2. Chunking independence: fixed-size chunks, and one cut anywhere.
    let n = input.len().max(1);
    let fixed: Vec<usize> = (1..=n).filter(|i| chunk > 0 && i % chunk == 0).collect();
    let cut = [split * n / 256];
    for cuts in [&fixed[..], &cut[..]] {
        let r = decode(input, cuts, u64::MAX);
        assert_eq!(r.out, whole.out, "chunking changed the output");
        assert_eq!(r.consumed, whole.consumed);
        assert_eq!(r.done, whole.done);
    }

    // 3. The size limit: exact truncation, honest size, same framing.
    let limited = decode(input, &cut, limit);
    let keep = (limit.min(whole.out.len() as u64)) as usize;
    assert_eq!(limited.out, whole.out[..keep], "limit truncates exactly");
    assert_eq!(limited.size, whole.size, "size counts past the limit");
    assert_eq!(limited.over, whole.size > limit);
    assert_eq!(
        (limited.done, limited.consumed),
        (whole.done, whole.consumed)
    );

    // 4. Outbound: what we stored reaches the upstream as exactly one message with those bytes.
    if whole.done {
        check_encoded(&encode(&whole.out, chunk), &whole.out);
    }
    // The encoder also canonicalises what it is given (any bytes), and chunks do not matter.
    let enc = encode(input, chunk);
    assert_eq!(enc, encode(input, usize::MAX), "encoder chunking");
    let mut expect = normalise_line_ends(input);
    if !expect.is_empty() && !expect.ends_with(b"\r\n") {
        expect.extend_from_slice(b"\r\n");
    }
    check_encoded(&enc, &expect);
});

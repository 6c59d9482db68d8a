//! Replies from an upstream (`proto::ReplyAssembler`), which the relay keeps as data and may
//! pass on to the device.
//!
//! Input: the bytes an upstream sends, framed into lines at LF.
//!
//! Oracles: never a panic; every assembled reply has a code in 200..=599, at most
//! `MAX_REPLY_LINES` lines, and re-serialises to a well-formed reply (no line we pass on can
//! carry a CR, LF or control character, so an upstream cannot inject protocol lines into our
//! session with the device); its one-line `Display` form (used in logs) is a single line; and
//! the wire form parses back to the same reply.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp2oauth_fuzz::check_reply_wire;
use smtp2oauth_proto::reply::MAX_REPLY_LINES;
use smtp2oauth_proto::{Reply, ReplyAssembler};

fn reparse(wire: &[u8]) -> Reply {
    let mut a = ReplyAssembler::new();
    let mut last = None;
    for line in wire.split_inclusive(|&b| b == b'\n') {
        last = a.push_line(line).expect("our own wire form parses");
    }
    last.expect("a complete reply")
}

fuzz_target!(|data: &[u8]| {
    let mut a = ReplyAssembler::new();
    for line in data.split_inclusive(|&b| b == b'\n') {
        match a.push_line(line) {
            Ok(Some(reply)) => {
                assert!(reply.lines().len() <= MAX_REPLY_LINES);
                let wire = reply.to_wire();
                let code = check_reply_wire(&wire);
                assert_eq!(code, reply.code());
                let shown = reply.to_string();
                assert!(
                    !shown.contains(['\r', '\n']),
                    "log form spans lines: {shown:?}"
                );
                let back = reparse(&wire);
                assert_eq!(back.code(), reply.code());
                assert_eq!(back.lines().len(), reply.lines().len());
                // The reply a device would get for an upstream refusal stays well-formed too.
                check_reply_wire(&reply.clone().with_code(451).to_wire());
            }
            Ok(None) => assert!(a.in_progress()),
            Err(_) => a = ReplyAssembler::new(),
        }
    }
});

//! Mail addresses (`proto::Address`): read once, written one way.
//!
//! Input: byte 0 picks how the rest is read: even, as an RFC 5321 mailbox (`Address::parse`);
//! odd, as a spooled envelope's text (`Address::from_stored`, which also reads what older
//! versions stored unquoted). The rest is the text (lossy UTF-8).
//!
//! Oracles: never a panic; whatever is accepted is written (`Display`) without a control
//! character, and parse → write → parse is the identity; the written form is its own canonical
//! form (writing it again changes nothing); as a path in `MAIL FROM:<...> SIZE=1` and
//! `RCPT TO:<...>`, our own path reading (`split_path`, `from_path`) ends the path where it
//! ends and gets the same address back, and smtp-proto (the parser devices' commands go
//! through) reads the same address and no parameter but `SIZE=1` (for domain names: it reads
//! no address literal); any text with a control character is refused by every reading.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp_proto::Request;
use smtp2oauth_proto::address::{display_stored, split_path};
use smtp2oauth_proto::{Address, AddressError};

fn check_sent_as_is(a: &Address) {
    let written = a.to_string();
    assert!(
        !written.chars().any(char::is_control),
        "control character written: {written:?}"
    );
    assert_eq!(Address::parse(&written).as_ref(), Ok(a), "{written:?}");
    assert_eq!(
        Address::parse(&written).map(|b| b.to_string()).as_deref(),
        Ok(written.as_str())
    );

    let mail = format!("MAIL FROM:{} SIZE=1\r\n", a.path());
    let (raw, rest) = split_path(&mail["MAIL FROM:<".len()..]).expect("a closing bracket");
    assert_eq!(rest, " SIZE=1\r\n");
    assert_eq!(Address::from_path(raw, &a.unquoted()).as_ref(), Ok(a));
    if a.domain().starts_with('[') {
        // smtp-proto reads no address literal (`a@[192.0.2.1]`): our own reading above is
        // the only one to ask.
        return;
    }
    match Request::parse(&mut mail.as_bytes().iter()) {
        Ok(Request::Mail { from }) => {
            assert_eq!(from.address, a.unquoted(), "{mail:?}");
            assert_eq!(from.size, 1, "{mail:?}");
            assert_eq!(from.flags, 0, "{mail:?}");
            assert!(
                from.env_id.is_none() && from.auth.is_none() && from.trans_id.is_none(),
                "{mail:?}"
            );
        }
        other => panic!("{mail:?} read as {other:?}"),
    }
    let rcpt = format!("RCPT TO:{}\r\n", a.path());
    match Request::parse(&mut rcpt.as_bytes().iter()) {
        Ok(Request::Rcpt { to }) => {
            assert_eq!(to.address, a.unquoted(), "{rcpt:?}");
            assert!(to.orcpt.is_none() && to.flags == 0, "{rcpt:?}");
        }
        other => panic!("{rcpt:?} read as {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let read = if mode % 2 == 0 {
        Address::parse(&text)
    } else {
        Address::from_stored(&text)
    };
    let _ = display_stored(&text);
    if text.chars().any(char::is_control) {
        assert_eq!(read, Err(AddressError::Control), "{text:?}");
        assert!(!display_stored(&text).chars().any(char::is_control));
        return;
    }
    if let Ok(a) = read {
        assert!(!a.local().is_empty() && !a.domain().is_empty());
        check_sent_as_is(&a);
    }
});

//! The address of a `MAIL FROM` or `RCPT TO` line, read from the bytes the device sent.
//!
//! smtp-proto gives a path's value with its quotes removed, so it cannot tell
//! `"a> b"@c` (one address) from `a> b@c`; we read the path ourselves, from the raw line, with
//! RFC 5321's rules ([`Address`]), and the session then checks that smtp-proto's value is the
//! same address. Anything either reading refuses, or that they read differently, is refused.

use smtp2oauth_proto::address::split_path;
use smtp2oauth_proto::{Address, AddressError};
use std::fmt;

/// The reverse-path a device gave in `MAIL FROM`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Given {
    /// `<>`.
    Null,
    /// A word without a domain, such as the device's login name: it can only be rewritten.
    Unqualified(String),
    /// A mailbox.
    Mailbox(Address),
}

impl fmt::Display for Given {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Given::Null => Ok(()),
            Given::Unqualified(word) => f.write_str(word),
            Given::Mailbox(a) => a.fmt(f),
        }
    }
}

/// The path argument of a command line, as we read it.
#[derive(Debug)]
pub enum PathArg {
    /// Not a MAIL or RCPT line, or one without a path we can find (smtp-proto says why).
    None,
    /// `MAIL FROM:<...>`.
    Sender(Result<Given, AddressError>),
    /// `RCPT TO:<...>`.
    Recipient(Result<Address, AddressError>),
}

/// Reads the path of a MAIL or RCPT line.
pub fn read(line: &[u8]) -> PathArg {
    let start = line.iter().take_while(|&&b| b == b' ').count();
    let verb = line.get(start..start + 4).unwrap_or_default();
    let mail = verb.eq_ignore_ascii_case(b"MAIL");
    if !mail && !verb.eq_ignore_ascii_case(b"RCPT") {
        return PathArg::None;
    }
    let raw = match raw_path(line) {
        Some(Ok(raw)) => Ok(raw),
        Some(Err(e)) => Err(e),
        None => return PathArg::None,
    };
    if mail {
        PathArg::Sender(raw.and_then(sender))
    } else {
        PathArg::Recipient(raw.and_then(Address::parse_path))
    }
}

/// The text between the path's angle brackets. None when there is no `<` or no `>` after it
/// (a syntax error smtp-proto reports); an error when a quoted string hides the `>`, or the
/// line is not UTF-8.
fn raw_path(line: &[u8]) -> Option<Result<&str, AddressError>> {
    let lt = memchr::memchr(b'<', line)?;
    let Ok(after) = std::str::from_utf8(&line[lt + 1..]) else {
        return Some(Err(AddressError::Control));
    };
    match split_path(after) {
        Some((raw, _)) => Some(Ok(raw)),
        None if after.contains('"') => Some(Err(AddressError::BadQuote)),
        None => None,
    }
}

fn sender(raw: &str) -> Result<Given, AddressError> {
    if raw.is_empty() {
        return Ok(Given::Null);
    }
    match Address::parse_path(raw) {
        Ok(a) => Ok(Given::Mailbox(a)),
        Err(AddressError::NoDomain) if is_word(raw) => Ok(Given::Unqualified(raw.to_string())),
        Err(e) => Err(e),
    }
}

/// A login name as some devices give it for a sender: atext and dots, nothing to quote.
fn is_word(s: &str) -> bool {
    s.len() <= 256
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender_of(line: &str) -> Result<Given, AddressError> {
        match read(line.as_bytes()) {
            PathArg::Sender(s) => s,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn reads_the_path_as_written() {
        assert_eq!(sender_of("MAIL FROM:<>\r\n"), Ok(Given::Null));
        assert_eq!(
            sender_of("mail from:<mfp-3f> SIZE=1\r\n"),
            Ok(Given::Unqualified("mfp-3f".into()))
        );
        let Ok(Given::Mailbox(a)) =
            sender_of("MAIL FROM:<\"ceo@fabrikam.example> ENVID=x\"@contoso.com> SIZE=246\r\n")
        else {
            panic!()
        };
        assert_eq!(a.local(), "ceo@fabrikam.example> ENVID=x");
        assert_eq!(
            sender_of("MAIL FROM:<\"x> ENVID=y@contoso.com\r\n"),
            Err(AddressError::BadQuote)
        );
        assert_eq!(
            sender_of("MAIL FROM:<\"\x1b]2;owned\x07\"@b.example>\r\n"),
            Err(AddressError::Control)
        );
        let PathArg::Recipient(Err(AddressError::Unquoted)) = read(b"RCPT TO:<a b@c>\r\n") else {
            panic!()
        };
        assert!(matches!(read(b"MAIL FROM:a@b\r\n"), PathArg::None));
        assert!(matches!(read(b"NOOP <a@b>\r\n"), PathArg::None));
    }
}

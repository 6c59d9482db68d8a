//! Mail addresses: read once, written one way.
//!
//! An address passes through the relay as text many times: a device's `MAIL FROM`, the spooled
//! envelope, the upstream's `MAIL FROM` and `RCPT TO`, Graph's recipient headers, our `Received:`
//! header, failure notices, logs and the queue command. If any of those places wrote the text
//! differently from how it was read, an address could change meaning on the way: smtp-proto
//! unquotes `"ceo@fabrikam.example> ENVID=x"@contoso.com`, and written back without its quotes
//! that is an address followed by an `ENVID` parameter. So an [`Address`] keeps the two parts
//! RFC 5321 knows, the local part (its value, unquoted) and the domain, and there is one way to
//! write it ([`Address`]'s `Display`): the local part as a Dot-string when it is one, else as a
//! Quoted-string with `"` and `\` escaped.
//!
//! What is refused, whatever any other parser would make of it: control characters anywhere
//! (C0, DEL, C1), and `<`, `>` or whitespace outside a properly quoted local part. Non-ASCII
//! UTF-8 is taken in atoms, quoted strings and domain labels (RFC 6531).

use std::fmt;

/// The longest address we take, as written (RFC 5321 allows 256 octets for a path with its
/// angle brackets).
pub const MAX_LENGTH: usize = 254;

/// A mailbox: local part and domain, both non-empty and free of control characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Address {
    local: String,
    domain: String,
}

/// Why a text is not an address we take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressError {
    /// Nothing at all.
    Empty,
    /// A control character (or a byte that is not UTF-8) anywhere.
    Control,
    /// No `@domain`.
    NoDomain,
    /// `<`, `>`, whitespace or another special outside a quoted local part.
    Unquoted,
    /// A quoted local part that does not end, or is empty.
    BadQuote,
    /// A domain that is not a host name or an address literal.
    BadDomain,
    /// Longer than [`MAX_LENGTH`] octets as written.
    TooLong,
    /// Our reading and smtp-proto's disagree: the text means different things to different
    /// parsers, so it is not passed on.
    Ambiguous,
}

impl AddressError {
    /// The reason in words, for the reply a device gets.
    pub fn as_str(self) -> &'static str {
        match self {
            AddressError::Empty => "empty address",
            AddressError::Control => "control character in address",
            AddressError::NoDomain => "address without a domain",
            AddressError::Unquoted => "invalid character outside a quoted local part",
            AddressError::BadQuote => "unterminated or empty quoted local part",
            AddressError::BadDomain => "invalid domain",
            AddressError::TooLong => "address too long",
            AddressError::Ambiguous => "ambiguous address",
        }
    }
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for AddressError {}

impl Address {
    /// Parses an RFC 5321 `Mailbox` (what stands between `<` and `>`, without a source route).
    pub fn parse(text: &str) -> Result<Address, AddressError> {
        if text.is_empty() {
            return Err(AddressError::Empty);
        }
        if text.chars().any(char::is_control) {
            return Err(AddressError::Control);
        }
        let (local, rest) = if let Some(quoted) = text.strip_prefix('"') {
            quoted_string(quoted)?
        } else {
            let end = text
                .find(|c: char| !is_atext(c) && c != '.')
                .unwrap_or(text.len());
            (text[..end].to_string(), &text[end..])
        };
        let domain = match rest.strip_prefix('@') {
            Some(d) => d,
            None if rest.is_empty() => return Err(AddressError::NoDomain),
            None => return Err(AddressError::Unquoted),
        };
        if local.is_empty() {
            return Err(AddressError::Unquoted);
        }
        check_domain(domain)?;
        let address = Address {
            local,
            domain: domain.to_string(),
        };
        if address.to_string().len() > MAX_LENGTH {
            return Err(AddressError::TooLong);
        }
        Ok(address)
    }

    /// The address of a `MAIL FROM` or `RCPT TO` path: `raw` is the text the device wrote
    /// between the angle brackets (a source route is dropped, RFC 5321 §4.1.1.3), `parsed` is
    /// smtp-proto's (unquoted) value of the same path. They must agree.
    pub fn from_path(raw: &str, parsed: &str) -> Result<Address, AddressError> {
        let address = Address::parse_path(raw)?;
        if address.unquoted() != parsed {
            return Err(AddressError::Ambiguous);
        }
        Ok(address)
    }

    /// The address of a path's text as the device wrote it between the angle brackets, a
    /// source route dropped; [`Address::from_path`] also checks it against smtp-proto's value.
    pub fn parse_path(raw: &str) -> Result<Address, AddressError> {
        Address::parse(without_source_route(raw)?)
    }

    /// An address as the spool keeps it: written by this type (see `Display`). Envelopes
    /// spooled by older versions hold smtp-proto's unquoted value; such a text is read as a
    /// local part up to its last `@`, which is what smtp-proto had made of it, so it is written
    /// quoted like any other. Control characters are refused either way.
    pub fn from_stored(text: &str) -> Result<Address, AddressError> {
        match Address::parse(text) {
            Ok(a) => Ok(a),
            Err(e @ (AddressError::Control | AddressError::TooLong)) => Err(e),
            Err(e) => {
                let Some((local, domain)) = text.rsplit_once('@') else {
                    return Err(e);
                };
                if local.is_empty() || local.chars().any(char::is_control) {
                    return Err(e);
                }
                check_domain(domain)?;
                let address = Address {
                    local: local.to_string(),
                    domain: domain.to_string(),
                };
                // Quoted, it may grow past what `parse` takes back.
                if address.to_string().len() > MAX_LENGTH {
                    return Err(AddressError::TooLong);
                }
                Ok(address)
            }
        }
    }

    /// The local part's value (quotes and escapes removed).
    pub fn local(&self) -> &str {
        &self.local
    }

    /// The domain (or address literal), as written.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// `local@domain` without quoting: what smtp-proto makes of a path. Never write this
    /// anywhere; it is only for comparing with such a value.
    pub fn unquoted(&self) -> String {
        format!("{}@{}", self.local, self.domain)
    }

    /// True when the local part must be written as a quoted string.
    pub fn needs_quotes(&self) -> bool {
        !is_dot_string(&self.local)
    }

    /// The same mailbox, ignoring ASCII case (how recipients are told apart in one message).
    pub fn same_mailbox(&self, other: &Address) -> bool {
        self.local.eq_ignore_ascii_case(&other.local)
            && self.domain.eq_ignore_ascii_case(&other.domain)
    }

    /// `<address>`, as it goes into `MAIL FROM:` and `RCPT TO:`.
    pub fn path(&self) -> String {
        format!("<{self}>")
    }
}

/// The RFC 5321 form: the one way an address is written.
impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.needs_quotes() {
            f.write_str("\"")?;
            for c in self.local.chars() {
                if c == '"' || c == '\\' {
                    f.write_str("\\")?;
                }
                write!(f, "{c}")?;
            }
            f.write_str("\"")?;
        } else {
            f.write_str(&self.local)?;
        }
        write!(f, "@{}", self.domain)
    }
}

/// Splits the text after a path's `<` at the `>` that ends it (one outside a quoted string):
/// `(path, rest after '>')`. None when no such `>` exists.
pub fn split_path(after_lt: &str) -> Option<(&str, &str)> {
    let mut in_quote = false;
    let mut escaped = false;
    for (i, c) in after_lt.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quote => escaped = true,
            '"' => in_quote = !in_quote,
            '>' if !in_quote => return Some((&after_lt[..i], &after_lt[i + 1..])),
            _ => {}
        }
    }
    None
}

/// Text as it may be shown on a terminal or in a log: control characters written as `\x1b`.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// A stored address as it is written in notices and logs: its RFC 5321 form, or (for a text
/// that is no address we could write) the text with its control characters escaped.
pub fn display_stored(text: &str) -> String {
    Address::from_stored(text).map_or_else(|_| printable(text), |a| a.to_string())
}

/// `"...` after the opening quote: the quoted string's value and what follows it.
fn quoted_string(s: &str) -> Result<(String, &str), AddressError> {
    let mut value = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' if value.is_empty() => return Err(AddressError::BadQuote),
            '"' => return Ok((value, &s[i + 1..])),
            '\\' => match chars.next() {
                Some((_, e)) => value.push(e),
                None => return Err(AddressError::BadQuote),
            },
            c => value.push(c),
        }
    }
    Err(AddressError::BadQuote)
}

/// `@a,@b:rest` → `rest` (a source route, which RFC 5321 says to accept and ignore).
fn without_source_route(raw: &str) -> Result<&str, AddressError> {
    if !raw.starts_with('@') {
        return Ok(raw);
    }
    let colon = raw.find(':').ok_or(AddressError::Unquoted)?;
    for hop in raw[..colon].split(',') {
        let domain = hop.strip_prefix('@').ok_or(AddressError::Unquoted)?;
        check_domain(domain)?;
    }
    Ok(&raw[colon + 1..])
}

/// RFC 5322 atext, and (RFC 6531) any non-ASCII character that is not a control.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || "!#$%&'*+-/=?^_`{|}~".contains(c)
        || (!c.is_ascii() && !c.is_control())
}

/// `atom *("." atom)`: written without quotes.
fn is_dot_string(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|a| !a.is_empty() && a.chars().all(is_atext))
}

/// A host name (labels of letters, digits, `-` and `_`, non-ASCII allowed) or an address
/// literal (`[...]` of printable ASCII without `[`, `]`, `\`, and without the `<`, `>` and
/// `"` that RFC 5321 allows there but that would end a path, or open a quote, for whoever
/// reads the path after us).
fn check_domain(d: &str) -> Result<(), AddressError> {
    if d.is_empty() || d.len() > 255 {
        return Err(AddressError::BadDomain);
    }
    if let Some(inner) = d.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or(AddressError::BadDomain)?;
        let ok = !inner.is_empty()
            && inner.bytes().all(|b| {
                b.is_ascii_graphic() && !matches!(b, b'[' | b']' | b'\\' | b'<' | b'>' | b'"')
            });
        return if ok {
            Ok(())
        } else {
            Err(AddressError::BadDomain)
        };
    }
    let label = |l: &str| {
        !l.is_empty()
            && l.chars().all(|c| {
                c.is_ascii_alphanumeric()
                    || c == '-'
                    || c == '_'
                    || (!c.is_ascii() && !c.is_control())
            })
    };
    if d.split('.').all(label) {
        Ok(())
    } else {
        Err(AddressError::BadDomain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_write_table() {
        let cases: &[(&str, &str, &str, &str)] = &[
            // input, local, domain, written
            ("a@b.example", "a", "b.example", "a@b.example"),
            ("first.last@b", "first.last", "b", "first.last@b"),
            ("\"abc\"@b", "abc", "b", "abc@b"),
            ("\"a b\"@b", "a b", "b", "\"a b\"@b"),
            ("\"a\\\"b\"@b", "a\"b", "b", "\"a\\\"b\"@b"),
            ("\"a\\\\b\"@b", "a\\b", "b", "\"a\\\\b\"@b"),
            ("\"a\\xb\"@b", "axb", "b", "axb@b"),
            ("a.@b", "a.", "b", "\"a.\"@b"),
            ("a..b@b", "a..b", "b", "\"a..b\"@b"),
            (
                "\"ceo@fabrikam.example> ENVID=x\"@contoso.com",
                "ceo@fabrikam.example> ENVID=x",
                "contoso.com",
                "\"ceo@fabrikam.example> ENVID=x\"@contoso.com",
            ),
            (
                "user@[192.0.2.1]",
                "user",
                "[192.0.2.1]",
                "user@[192.0.2.1]",
            ),
            (
                "user@[IPv6:2001:db8::1]",
                "user",
                "[IPv6:2001:db8::1]",
                "user@[IPv6:2001:db8::1]",
            ),
            (
                "jörg@bücher.example",
                "jörg",
                "bücher.example",
                "jörg@bücher.example",
            ),
            (
                "a+tag@sub_domain.example",
                "a+tag",
                "sub_domain.example",
                "a+tag@sub_domain.example",
            ),
        ];
        for (input, local, domain, written) in cases {
            let a = Address::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!((a.local(), a.domain()), (*local, *domain), "{input}");
            assert_eq!(a.to_string(), *written, "{input}");
            assert_eq!(Address::parse(written).unwrap(), a, "{input} round trip");
        }
    }

    #[test]
    fn refusals() {
        use AddressError::*;
        let cases: &[(&str, AddressError)] = &[
            ("", Empty),
            ("a b@c", Unquoted),
            ("a@b c", BadDomain),
            ("a<b@c", Unquoted),
            ("a>b@c", Unquoted),
            ("a@b>c", BadDomain),
            ("\"a\x1b\"@c", Control),
            ("\"\x1b]2;owned\x07\x1b[2J\"@b.example", Control),
            ("a\u{85}@c", Control),
            ("\"a\tb\"@c", Control),
            ("a@b\r\nRCPT TO:<x@y>", Control),
            ("mfp-3f", NoDomain),
            ("\"a\"", NoDomain),
            ("\"a@c", BadQuote),
            ("\"\"@c", BadQuote),
            ("\"a\"b@c", Unquoted),
            ("a\"b\"@c", Unquoted),
            ("@c", Unquoted),
            ("a@", BadDomain),
            ("a@b.", BadDomain),
            ("a@.b", BadDomain),
            ("a@b@c", BadDomain),
            ("a@[1.2.3.4", BadDomain),
            ("a@[1 2]", BadDomain),
            // Found by the `address` fuzz target: the path ended at the `>` inside.
            ("user@[IPv3:2001:db8<you@example.com>::1]", BadDomain),
            ("a@[x\"y]", BadDomain),
            ("a@b!c", BadDomain),
        ];
        for (input, want) in cases {
            assert_eq!(Address::parse(input), Err(*want), "{input:?}");
        }
        let long = format!("{}@b", "a".repeat(MAX_LENGTH));
        assert_eq!(Address::parse(&long), Err(TooLong));
    }

    #[test]
    fn paths_agree_with_smtp_protos_value_or_are_refused() {
        let a = Address::from_path("\"a b\"@c", "a b@c").unwrap();
        assert_eq!(a.path(), "<\"a b\"@c>");
        assert_eq!(
            Address::from_path("@relay.example,@b.example:x@y", "x@y")
                .unwrap()
                .to_string(),
            "x@y"
        );
        assert_eq!(
            Address::from_path("\"a b\"@c", "ab@c"),
            Err(AddressError::Ambiguous)
        );
        assert_eq!(
            Address::from_path("@relay example:x@y", "x@y"),
            Err(AddressError::BadDomain)
        );
    }

    #[test]
    fn split_path_ends_at_the_first_bracket_outside_quotes() {
        assert_eq!(split_path("a@b> SIZE=1"), Some(("a@b", " SIZE=1")));
        assert_eq!(
            split_path("\"x> ENVID=y\"@b> SIZE=1"),
            Some(("\"x> ENVID=y\"@b", " SIZE=1"))
        );
        assert_eq!(split_path("\"x\\\">\"@b>"), Some(("\"x\\\">\"@b", "")));
        assert_eq!(split_path("\"x>@b"), None);
        assert_eq!(split_path("a@b"), None);
    }

    #[test]
    fn stored_texts_of_older_versions_are_written_quoted() {
        let legacy = "ceo@fabrikam.example> ENVID=x@contoso.com";
        let a = Address::from_stored(legacy).unwrap();
        assert_eq!(a.local(), "ceo@fabrikam.example> ENVID=x");
        assert_eq!(a.path(), "<\"ceo@fabrikam.example> ENVID=x\"@contoso.com>");
        assert_eq!(
            Address::from_stored("\"a b\"@c").unwrap().local(),
            "a b",
            "our own form is read as such"
        );
        assert_eq!(
            Address::from_stored("\x1b]2;x\x07@b"),
            Err(AddressError::Control)
        );
        assert_eq!(display_stored("\x1b[2J@b"), "\\x1b[2J@b");
        // Found by the `address` fuzz target: a legacy text is as long as it was stored, and
        // quoted it is longer still, so `parse` would not take it back.
        let long = format!("{}@x@b", "a".repeat(250));
        assert_eq!(Address::from_stored(&long), Err(AddressError::TooLong));
    }

    #[test]
    fn printable_escapes_controls_only() {
        assert_eq!(printable("a\x1b]2;owned\x07b é"), "a\\x1b]2;owned\\x07b é");
        assert_eq!(printable("\u{9b}"), "\\x9b");
    }

    #[test]
    fn same_mailbox_ignores_ascii_case() {
        let a = Address::parse("Alice@Example.COM").unwrap();
        assert!(a.same_mailbox(&Address::parse("alice@example.com").unwrap()));
        assert!(!a.same_mailbox(&Address::parse("bob@example.com").unwrap()));
    }
}

//! Property tests of what devices' bytes reach first: the session state machine, the AUTH
//! decoders and the From rewriter. The stable, in-suite equivalents of the `session`, `sasl` and
//! `headers` fuzz targets (fuzz/, docs/fuzzing.md).

#![allow(clippy::unwrap_used)]

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use proptest::prelude::*;
use smtp2oauth_config::ListenerTls;
use smtp2oauth_inbound::headers::{HeaderRewriter, RewriteOutcome, parse_mailbox};
use smtp2oauth_inbound::identity::{AuthFailure, Directory, SenderPolicy};
use smtp2oauth_inbound::sasl::{self, Credentials, SaslError};
use smtp2oauth_inbound::{Limits, ListenerSettings, Session, Step};
use smtp2oauth_proto::{Address, Reply};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

const UPS_IP: &str = "192.168.1.50";

fn directory() -> Arc<Directory> {
    static DIR: OnceLock<Arc<Directory>> = OnceLock::new();
    DIR.get_or_init(|| {
        let toml = format!(
            r#"
[server]
auth_workers = 1
[[listeners]]
address = "127.0.0.1:2525"
[[accounts]]
name = "scanner"
mailbox = "scanner@contoso.com"
route = "capture"
rewrite_sender = true
allowed_senders = ["*@contoso.com"]
[[devices]]
username = "mfp"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$ZHVtbXlzYWx0ZHVtbXk$5oKfUJ0g0vwnmSpS4y0P0b3Gv7oUr2j0d9cM3jVvQ0g"
account = "scanner"
[[devices]]
name = "ups"
auth = false
allow_ips = ["{UPS_IP}/32"]
account = "scanner"
"#
        );
        let cfg = smtp2oauth_config::parse_str(&toml, Vec::new()).unwrap();
        Arc::new(Directory::from_config(&cfg).unwrap())
    })
    .clone()
}

/// A reply as the device receives it: every line `ddd-text` but the last `ddd text`, one code
/// in 200..=599, no CR, LF or control character inside a line, at most 512 octets a line.
fn assert_well_formed(r: &Reply) {
    let wire = String::from_utf8(r.to_wire()).expect("replies are UTF-8");
    let lines: Vec<&str> = wire.split_inclusive("\r\n").collect();
    assert!(
        !lines.is_empty() && (200..=599).contains(&r.code()),
        "{wire:?}"
    );
    for (i, l) in lines.iter().enumerate() {
        assert!(l.len() <= 512, "{wire:?}");
        let body = l.strip_suffix("\r\n").expect("CRLF-terminated");
        assert!(
            !body.chars().any(|c| c.is_control() && c != '\t'),
            "{wire:?}"
        );
        assert_eq!(&body[..3], format!("{:03}", r.code()));
        let sep = if i + 1 == lines.len() { " " } else { "-" };
        assert_eq!(&body[3..4], sep, "{wire:?}");
    }
}

/// Command lines: the real vocabulary with good and bad arguments, AUTH responses, junk bytes,
/// and the line ends devices use.
fn command() -> impl Strategy<Value = Vec<u8>> {
    const COMMANDS: &[&str] = &[
        "EHLO printer",
        "HELO printer",
        "EHLO",
        "AUTH PLAIN AG1mcABzZWNyZXQ=",
        "AUTH PLAIN",
        "AG1mcABzZWNyZXQ=",
        "AUTH LOGIN",
        "AUTH LOGIN bWZw",
        "bWZw",
        "c2VjcmV0",
        "d3Jvbmc=",
        "*",
        "AUTH CRAM-MD5",
        "MAIL FROM:<scanner@contoso.com>",
        "MAIL FROM:<a@contoso.com> SIZE=500",
        "MAIL FROM:<a@contoso.com> SIZE=99999999999",
        "MAIL FROM:scanner@contoso.com",
        "MAIL FROM:<mfp-3f>",
        "MAIL FROM:<evil@outside.example>",
        "MAIL FROM:<> BODY=BINARYMIME",
        "RCPT TO:<you@example.com>",
        "RCPT TO:<YOU@example.com>",
        "RCPT TO:<b@example.com>",
        "RCPT TO:<c@example.com>",
        "RCPT TO:you@example.com",
        "RCPT TO:<nodomain>",
        "MAIL FROM:<\"ceo@fabrikam.example> ENVID=x\"@contoso.com> SIZE=246",
        "MAIL FROM:<\"a b\"@contoso.com>",
        "RCPT TO:<\"victim@fabrikam.example> NOTIFY=NEVER\"@b.example>",
        "RCPT TO:<\"\x1b]2;owned\x07\"@b.example>",
        "RCPT TO:<a b@example.com>",
        "RCPT TO:<@relay.example:routed@example.com>",
        "DATA",
        "RSET",
        "NOOP",
        "VRFY x",
        "EXPN x",
        "HELP",
        "STARTTLS",
        "BDAT 10 LAST",
        "QUIT",
        "DAT\rA",
    ];
    (
        0..COMMANDS.len() + 2,
        proptest::collection::vec(any::<u8>(), 0..40),
        prop_oneof![Just(&b"\r\n"[..]), Just(&b"\n"[..]), Just(&b"\r\r\n"[..])],
    )
        .prop_map(|(i, junk, eol)| {
            let mut line = match COMMANDS.get(i) {
                Some(c) => c.as_bytes().to_vec(),
                None if i == COMMANDS.len() => {
                    // a real command with junk appended
                    let mut l = b"MAIL FROM:<".to_vec();
                    l.extend_from_slice(&junk);
                    l.push(b'>');
                    l
                }
                None => junk.into_iter().filter(|&b| b != b'\n').collect(),
            };
            line.extend_from_slice(eol);
            line
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    /// Any sequence of commands: no panic, every reply well-formed, a message only from an
    /// authenticated or address-listed device with an allowed sender and 1..=max distinct
    /// recipients free of CR/LF/NUL, and the error limits close the session.
    #[test]
    fn session_on_arbitrary_commands(
        settings in 0u8..=255,
        commands in proptest::collection::vec(command(), 0..30),
    ) {
        let tls = [ListenerTls::None, ListenerTls::Starttls, ListenerTls::Implicit][usize::from(settings % 3)];
        let listener = Arc::new(ListenerSettings {
            label: "prop".into(),
            tls,
            require_tls: settings & 4 != 0,
            allow_insecure_auth: settings & 8 != 0,
        });
        let peer: IpAddr = if settings & 16 != 0 { UPS_IP } else { "10.0.0.7" }.parse().unwrap();
        let limits = Limits {
            min_free_space: 0,
            max_message_size: 1000,
            max_recipients: 2,
            max_auth_failures: 3,
            max_errors: 5,
        };
        let dir = directory();
        let mut s = Session::new(
            "relay.test".into(),
            listener,
            limits,
            peer,
            tls == ListenerTls::Implicit,
            tls != ListenerTls::None,
            dir.device_for_address(peer),
        );
        let mut errors = 0;
        for line in commands {
            let before = s.authenticated();
            let mut step = s.handle_line(&line);
            if let Step::Verify(c) = step {
                prop_assert!(!before);
                let ok = c.username == b"mfp" && c.password == b"secret";
                let result = if ok {
                    Ok(dir.device_by_username("mfp").unwrap())
                } else {
                    Err(AuthFailure::WrongPassword)
                };
                step = s.auth_result(result);
                let answered = matches!(step, Step::Reply(_) | Step::AuthFailed { .. });
                prop_assert!(answered);
                prop_assert_eq!(s.authenticated(), ok);
            } else {
                prop_assert_eq!(s.authenticated(), before, "only a password check logs in");
            }
            match step {
                Step::Reply(r) => {
                    assert_well_formed(&r);
                    if r.code() >= 400 && r.code() != 535 {
                        errors += 1;
                    }
                    prop_assert!(errors <= limits.max_errors, "error limit not enforced");
                    prop_assert_eq!(s.in_sasl(), r.code() == 334);
                }
                Step::Close(r) => {
                    assert_well_formed(&r);
                    prop_assert!(r.code() == 221 || r.code() == 421);
                    break;
                }
                Step::AuthFailed { reply, close } => {
                    assert_well_formed(&reply);
                    prop_assert_eq!(reply.code(), if close { 421 } else { 535 });
                    prop_assert!(!s.authenticated());
                    if close {
                        break;
                    }
                }
                Step::StartTls(r) => {
                    assert_well_formed(&r);
                    prop_assert_eq!(tls, ListenerTls::Starttls);
                    s.tls_established();
                    prop_assert!(!s.authenticated());
                }
                Step::Data(plan) => {
                    prop_assert!(line.trim_ascii_start().starts_with(b"DATA"), "{:?}", line);
                    prop_assert!(plan.authenticated || plan.device.name == "ups");
                    prop_assert!(plan.device.policy.allows(&plan.sender), "open relay: {}", plan.sender);
                    prop_assert!(!plan.recipients.is_empty() && plan.recipients.len() <= 2);
                    // Every address is written so that it reads back as itself: no control
                    // character, no parameter of its own upstream.
                    for (i, r) in plan.recipients.iter().enumerate() {
                        prop_assert_eq!(Address::parse(&r.to_string()), Ok(r.clone()));
                        prop_assert!(!r.to_string().chars().any(char::is_control));
                        prop_assert!(!plan.recipients[..i].iter().any(|o| o.same_mailbox(r)));
                    }
                    prop_assert_eq!(Address::parse(&plan.sender.to_string()), Ok(plan.sender.clone()));
                }
                Step::Verify(_) => unreachable!("handled above"),
            }
        }
    }

    /// AUTH responses: no panic on any bytes; anything outside the base64 alphabet is refused,
    /// never half-decoded; what clients encode (padded or not, any line end) decodes back.
    #[test]
    fn sasl_decoders_on_arbitrary_bytes(
        line in proptest::collection::vec(any::<u8>(), 0..80),
        message in proptest::collection::vec(prop_oneof![Just(0u8), any::<u8>()], 0..40),
    ) {
        let trimmed = String::from_utf8_lossy(&line).trim_matches([' ', '\t', '\r', '\n']).to_string();
        match sasl::decode_response(&line) {
            Ok(decoded) => {
                prop_assert!(trimmed.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)), "{:?}", line);
                prop_assert_eq!(STANDARD_NO_PAD.encode(&decoded), trimmed.trim_end_matches('='));
            }
            Err(SaslError::Cancelled) => prop_assert_eq!(trimmed, "*"),
            Err(e) => prop_assert_eq!(e, SaslError::BadBase64),
        }
        for encoded in [STANDARD.encode(&message), STANDARD_NO_PAD.encode(&message)] {
            for eol in ["", "\r\n", "\n"] {
                let got = sasl::decode_response(format!("{encoded}{eol}").as_bytes());
                prop_assert_eq!(got.as_deref(), Ok(&message[..]));
            }
        }
        if let Ok(c) = sasl::parse_plain(&message) {
            prop_assert!(!c.username.is_empty() && !c.password.contains(&0));
            prop_assert!(message.ends_with(&c.password));
            let probe = Credentials { username: b"u".to_vec(), password: c.password };
            prop_assert_eq!(
                format!("{probe:?}"),
                r#"Credentials { username: "u", password: "[redacted]" }"#
            );
        }
    }

    /// The From rewrite: chunking never matters, the body passes byte for byte, the output is
    /// CRLF-only, the From we write is read back as an allowed sender, and our own output passes
    /// unchanged.
    #[test]
    fn header_rewriter_properties(
        parts in proptest::collection::vec(prop_oneof![
            Just("From: "), Just("Sender: "), Just("Subject: s"), Just("\r\n"), Just("\r\n "),
            Just("From : "), Just("HR <hr@contoso.com>, Boss <ceo@evil.example>"), Just("g: a@contoso.com;"),
            Just("<mfp@printer.local>"), Just("a@contoso.com"), Just("\""), Just("("), Just(")"),
            Just(","), Just("<"), Just(">"), Just("=?UTF-8?Q?x?="), Just("Scan 3F"), Just("\\"),
            Just("é"), Just(" "),
        ], 0..24),
        chunk in 1usize..9,
    ) {
        let mut msg = parts.concat().into_bytes();
        if !msg.is_empty() && !msg.ends_with(b"\r\n") {
            msg.extend_from_slice(b"\r\n");
        }
        msg.extend_from_slice(b"\r\nbody\r\n.From: x\r\n");
        let mailbox = Address::parse("scanner@contoso.com").unwrap();
        let policy = SenderPolicy::new(mailbox, &["*@contoso.com".into()], true);
        let run = |m: &[u8], c: usize| {
            let mut r = HeaderRewriter::new(policy.clone());
            let mut out = Vec::new();
            for part in m.chunks(c) {
                r.push(part, &mut out);
            }
            r.finish(&mut out);
            (out, r.outcome)
        };
        let (out, outcome) = run(&msg, usize::MAX);
        prop_assert_eq!(run(&msg, chunk), (out.clone(), outcome.clone()));
        let body_at = if msg.starts_with(b"\r\n") { 0 } else {
            msg.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 2
        };
        prop_assert!(out.ends_with(&msg[body_at..]), "body changed");
        for (i, &b) in out.iter().enumerate() {
            if b == b'\n' { prop_assert!(i > 0 && out[i - 1] == b'\r'); }
            if b == b'\r' { prop_assert_eq!(out.get(i + 1), Some(&b'\n')); }
        }
        let text = String::from_utf8_lossy(&out).into_owned();
        let head = &text[..text.len() - (msg.len() - body_at)];
        // Exactly one From field (in any syntax) reaches the upstream.
        let is_from = |l: &&str| {
            l.split_once(':').is_some_and(|(name, _)| name.trim_end().eq_ignore_ascii_case("from"))
        };
        prop_assert_eq!(head.split("\r\n").filter(is_from).count(), 1, "{:?}", head);
        let from = head.split("\r\n").find(is_from);
        if outcome.from_rewritten.is_some() || outcome.from_added {
            let from = from.expect("a From line");
            prop_assert!(from.starts_with("From: "), "{}", from);
            let (_, addr) = parse_mailbox(&from[5..]);
            prop_assert_eq!(addr.as_deref(), Some("scanner@contoso.com"));
        }
        let (again, o2) = run(&out, chunk);
        prop_assert_eq!(again, out);
        prop_assert_eq!(o2, RewriteOutcome::default());
    }
}

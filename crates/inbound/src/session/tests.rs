//! Transcript tests of the state machine: lines in, replies out, no sockets.

use super::*;
use crate::identity::Directory;
use smtp2oauth_config::Config;

fn config(rewrite: bool) -> Config {
    let toml = format!(
        r#"
[[listeners]]
address = "127.0.0.1:2525"
[[accounts]]
name = "scanner"
mailbox = "scanner@contoso.com"
route = "capture"
rewrite_sender = {rewrite}
allowed_senders = ["*@contoso.com"]
[[devices]]
username = "mfp"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$ZHVtbXlzYWx0ZHVtbXk$5oKfUJ0g0vwnmSpS4y0P0b3Gv7oUr2j0d9cM3jVvQ0g"
account = "scanner"
[[devices]]
name = "ups"
auth = false
allow_ips = ["192.168.1.50/32"]
account = "scanner"
"#
    );
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let path = std::env::temp_dir().join(format!("s2o-session-{}-{n}.toml", std::process::id()));
    std::fs::write(&path, toml).unwrap();
    let c = smtp2oauth_config::parse(Some(&path), Vec::new()).unwrap();
    std::fs::remove_file(&path).ok();
    c
}

struct T {
    s: Session,
    dir: Arc<Directory>,
}

fn session(
    tls_mode: ListenerTls,
    insecure: bool,
    require_tls: bool,
    peer: &str,
    rewrite: bool,
) -> T {
    let dir = Arc::new(Directory::from_config(&config(rewrite)).unwrap());
    let peer: IpAddr = peer.parse().unwrap();
    let listener = Arc::new(ListenerSettings {
        label: "test".into(),
        tls: tls_mode,
        require_tls,
        allow_insecure_auth: insecure,
    });
    let limits = Limits {
        min_free_space: 100,
        max_message_size: 1000,
        max_recipients: 3,
        max_auth_failures: 2,
        max_errors: 12,
    };
    let implicit = tls_mode == ListenerTls::Implicit;
    let s = Session::new(
        "relay.test".into(),
        listener,
        limits,
        peer,
        implicit,
        tls_mode != ListenerTls::None,
        dir.device_for_address(peer),
    );
    T { s, dir }
}

impl T {
    /// Sends a line; returns the reply as text, "VERIFY user" for a credentials check,
    /// "STARTTLS", or "DATA" for a data step. Close steps are prefixed with "CLOSE ".
    fn line(&mut self, l: &str) -> String {
        let step = self.s.handle_line(format!("{l}\r\n").as_bytes());
        self.render(step)
    }

    fn render(&mut self, step: Step) -> String {
        match step {
            Step::Reply(r) => String::from_utf8(r.to_wire())
                .unwrap()
                .trim_end()
                .to_string(),
            Step::Close(r) => format!(
                "CLOSE {}",
                String::from_utf8(r.to_wire()).unwrap().trim_end()
            ),
            Step::AuthFailed { reply, close } => format!(
                "{}AUTHFAIL {}",
                if close { "CLOSE " } else { "" },
                String::from_utf8(reply.to_wire()).unwrap().trim_end()
            ),
            Step::StartTls(r) => format!("STARTTLS {}", r.code()),
            Step::Verify(c) => format!(
                "VERIFY {}:{}",
                String::from_utf8_lossy(&c.username),
                String::from_utf8_lossy(&c.password)
            ),
            Step::Data(p) => format!(
                "DATA from={} orig={:?} to={}",
                p.sender,
                p.original_sender.map(|o| o.to_string()),
                p.recipients
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }

    fn login_ok(&mut self) -> String {
        let dev = self.dir.device_by_username("mfp").unwrap();
        let step = self.s.auth_result(Ok(dev));
        self.render(step)
    }

    fn login_fail(&mut self) -> String {
        let step = self.s.auth_result(Err(AuthFailure::WrongPassword));
        self.render(step)
    }
}

fn code(reply: &str) -> &str {
    &reply[..reply.len().min(3)]
}

#[test]
fn ehlo_advertises_extensions_by_listener() {
    let mut t = session(ListenerTls::Starttls, false, false, "10.0.0.1", false);
    let r = t.line("EHLO printer");
    for ext in [
        "PIPELINING",
        "SIZE 1000",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "STARTTLS",
        "HELP",
    ] {
        assert!(r.contains(ext), "{ext} missing in {r}");
    }
    assert!(
        !r.contains("AUTH"),
        "AUTH must not be offered before TLS without allow_insecure_auth: {r}"
    );
    t.s.tls_established();
    let r = t.line("EHLO printer");
    assert!(
        r.contains("250-AUTH PLAIN LOGIN")
            && r.contains("AUTH=PLAIN LOGIN")
            && !r.contains("STARTTLS"),
        "{r}"
    );

    let mut t = session(ListenerTls::None, true, false, "10.0.0.1", false);
    let r = t.line("EHLO printer");
    assert!(
        r.contains("AUTH PLAIN LOGIN") && !r.contains("STARTTLS"),
        "{r}"
    );
}

#[test]
fn auth_before_starttls_is_refused_with_538() {
    let mut t = session(ListenerTls::Starttls, false, false, "10.0.0.1", false);
    t.line("EHLO printer");
    assert_eq!(
        t.line("AUTH PLAIN AG1mcABzZWNyZXQ="),
        "538 5.7.11 Encryption required for requested authentication mechanism"
    );
    assert_eq!(
        t.line("AUTH LOGIN"),
        "538 5.7.11 Encryption required for requested authentication mechanism"
    );
}

#[test]
fn require_tls_refuses_auth_and_mail_until_starttls() {
    let mut t = session(ListenerTls::Starttls, true, true, "192.168.1.50", false);
    t.line("EHLO printer");
    assert!(t.line("AUTH LOGIN").starts_with("530 5.7.0"));
    assert!(
        t.line("MAIL FROM:<scanner@contoso.com>")
            .starts_with("530 5.7.0 Must issue a STARTTLS")
    );
    assert_eq!(t.line("STARTTLS"), "STARTTLS 220");
    t.s.tls_established();
    assert!(
        code(&t.line("MAIL FROM:<scanner@contoso.com>")) == "503",
        "EHLO again after TLS"
    );
}

#[test]
fn auth_login_prompts_exactly_and_takes_inline_username() {
    let mut t = session(ListenerTls::None, true, false, "10.0.0.1", false);
    t.line("HELO printer");
    assert_eq!(t.line("AUTH LOGIN"), "334 VXNlcm5hbWU6");
    assert_eq!(t.line("bWZw"), "334 UGFzc3dvcmQ6");
    assert_eq!(t.line("c2VjcmV0"), "VERIFY mfp:secret");
    assert_eq!(t.login_ok(), "235 2.7.0 Authentication successful");

    let mut t = session(ListenerTls::None, true, false, "10.0.0.1", false);
    t.line("EHLO printer");
    assert_eq!(t.line("AUTH LOGIN bWZw"), "334 UGFzc3dvcmQ6");
    assert_eq!(t.line("c2VjcmV0"), "VERIFY mfp:secret");
}

#[test]
fn auth_plain_inline_or_after_334() {
    let mut t = session(ListenerTls::None, true, false, "10.0.0.1", false);
    t.line("EHLO printer");
    assert_eq!(t.line("AUTH PLAIN AG1mcABzZWNyZXQ="), "VERIFY mfp:secret");
    let mut t = session(ListenerTls::None, true, false, "10.0.0.1", false);
    t.line("EHLO printer");
    assert_eq!(t.line("AUTH PLAIN"), "334");
    assert_eq!(t.line("AG1mcABzZWNyZXQ"), "VERIFY mfp:secret");
}

#[test]
fn auth_errors() {
    let mut t = session(ListenerTls::None, true, false, "10.0.0.1", false);
    assert!(t.line("AUTH PLAIN").starts_with("503"), "AUTH before EHLO");
    t.line("EHLO printer");
    assert!(t.line("AUTH CRAM-MD5").starts_with("504 5.5.4"));
    assert!(t.line("AUTH XOAUTH2 abc").starts_with("504 5.5.4"));
    assert!(t.line("AUTH").starts_with("501"));
    assert_eq!(t.line("AUTH PLAIN"), "334");
    assert!(t.line("*").starts_with("501 5.0.0"));
    assert_eq!(t.line("AUTH LOGIN"), "334 VXNlcm5hbWU6");
    assert!(t.line("!!!notbase64").starts_with("501 5.5.2"));
    // a PLAIN message without NULs is a failed login, not a protocol error
    assert!(
        t.line("AUTH PLAIN bm9udWxz")
            .starts_with("AUTHFAIL 535 5.7.8")
    );
    // second failure reaches max_auth_failures = 2: still a failed login for the lockout
    assert_eq!(t.line("AUTH PLAIN AG1mcABzZWNyZXQ="), "VERIFY mfp:secret");
    assert!(t.login_fail().starts_with("CLOSE AUTHFAIL 421 4.7.0"));
}

/// Every failed login is reported as one, the session's last allowed failure included,
/// whichever way it failed; nothing else is.
#[test]
fn failed_logins_are_reported_as_such() {
    let mut t = session(ListenerTls::None, true, false, "10.0.0.1", false);
    t.line("EHLO printer");
    assert_eq!(t.line("AUTH PLAIN AG1mcAB3cm9uZw=="), "VERIFY mfp:wrong");
    assert!(t.login_fail().starts_with("AUTHFAIL 535 5.7.8"));
    assert!(
        t.line("AUTH PLAIN bm9udWxz")
            .starts_with("CLOSE AUTHFAIL 421 4.7.0")
    );
    // A protocol error in AUTH, or our own trouble, is not a failed login.
    let mut t = session(ListenerTls::None, true, false, "10.0.0.1", false);
    t.line("EHLO printer");
    assert!(t.line("AUTH PLAIN !!!").starts_with("501"));
    assert_eq!(t.line("AUTH PLAIN AG1mcABzZWNyZXQ="), "VERIFY mfp:secret");
    let step = t.s.auth_result(Err(AuthFailure::Busy));
    assert!(t.render(step).starts_with("454 4.7.0"));
}

/// Lockouts met at AUTH are refusals the driver's observers hear as such: a username locked
/// out for this address is a failed login (`454`, the session goes on until its limit), a
/// locked-out address closes the session.
#[test]
fn lockouts_at_auth_are_reported_with_their_refusal() {
    let mut t = session(ListenerTls::None, true, false, "10.0.0.1", false);
    t.line("EHLO printer");
    t.line("AUTH PLAIN AG1mcAB3cm9uZw==");
    let step = t.s.auth_result(Err(AuthFailure::UserLockedOut));
    assert!(t.render(step).starts_with("AUTHFAIL 454 4.7.0"));
    assert_eq!(t.s.take_refusal(), Some(SessionError::UserLockedOut));
    t.line("AUTH PLAIN AG1mcAB3cm9uZw==");
    let step = t.s.auth_result(Err(AuthFailure::UserLockedOut));
    assert!(t.render(step).starts_with("CLOSE AUTHFAIL 421 4.7.0"));
    assert_eq!(t.s.take_refusal(), Some(SessionError::TooManyAuthFailures));

    let mut t = session(ListenerTls::None, true, false, "10.0.0.1", false);
    t.line("EHLO printer");
    t.line("AUTH PLAIN AG1mcAB3cm9uZw==");
    let step = t.s.auth_result(Err(AuthFailure::AddressLockedOut));
    assert!(
        t.render(step)
            .starts_with("CLOSE 421 4.7.0 Too many failed logins")
    );
    assert_eq!(t.s.take_refusal(), Some(SessionError::LockedOut));
}

#[test]
fn already_authenticated_and_auth_in_transaction() {
    let mut t = session(ListenerTls::None, true, false, "192.168.1.50", false);
    t.line("EHLO printer");
    assert_eq!(
        t.line("MAIL FROM:<scanner@contoso.com>"),
        "250 2.1.0 Sender OK"
    );
    assert!(t.line("AUTH PLAIN AG1mcABzZWNyZXQ=").starts_with("503"));
    t.line("RSET");
    t.line("AUTH PLAIN AG1mcABzZWNyZXQ=");
    t.login_ok();
    assert!(
        t.line("AUTH PLAIN AG1mcABzZWNyZXQ=")
            .starts_with("503 5.5.1 Already")
    );
}

#[test]
fn unauthenticated_mail_needs_an_allowed_address() {
    let mut t = session(ListenerTls::None, true, false, "10.9.9.9", false);
    t.line("EHLO x");
    assert_eq!(
        t.line("MAIL FROM:<scanner@contoso.com>"),
        "530 5.7.0 Authentication required"
    );
    let mut t = session(ListenerTls::None, true, false, "192.168.1.50", false);
    t.line("EHLO x");
    assert_eq!(
        t.line("MAIL FROM:<scanner@contoso.com>"),
        "250 2.1.0 Sender OK"
    );
    assert_eq!(t.line("RCPT TO:<a@example.com>"), "250 2.1.5 Recipient OK");
    assert_eq!(
        t.line("DATA"),
        "DATA from=scanner@contoso.com orig=None to=a@example.com"
    );
}

#[test]
fn sequencing_errors() {
    let mut t = session(ListenerTls::None, true, false, "192.168.1.50", false);
    assert!(
        t.line("MAIL FROM:<a@contoso.com>")
            .starts_with("503 5.5.1 Send EHLO")
    );
    t.line("EHLO x");
    assert!(
        t.line("RCPT TO:<a@example.com>")
            .starts_with("503 5.5.1 Need MAIL")
    );
    assert!(t.line("DATA").starts_with("503 5.5.1 Need MAIL"));
    t.line("MAIL FROM:<a@contoso.com>");
    assert!(
        t.line("MAIL FROM:<a@contoso.com>")
            .starts_with("503 5.5.1 Sender already")
    );
    assert!(t.line("DATA").starts_with("503 5.5.1 Need RCPT"));
    assert!(t.line("RCPT TO:<nodomain>").starts_with("501 5.1.3"));
    assert!(t.line("DATA").starts_with("554 5.5.1 No valid recipients"));
    assert_eq!(t.line("RSET"), "250 2.0.0 Reset state");
    assert!(t.line("FOO bar").starts_with("500 5.5.1"));
    assert!(t.line("EXPN list").starts_with("502 5.5.1"));
    assert!(t.line("BDAT 10 LAST").starts_with("502"));
    assert_eq!(
        t.line("VRFY someone"),
        "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"
    );
    assert_eq!(t.line("NOOP"), "250 2.0.0 OK");
    assert!(t.line("HELP").starts_with("214-2.0.0"));
    assert!(t.line("STARTTLS").starts_with("502"), "tls = none listener");
    assert_eq!(t.line("QUIT"), "CLOSE 221 2.0.0 Bye");
}

#[test]
fn too_many_errors_closes() {
    let mut t = session(ListenerTls::None, true, false, "10.0.0.1", false);
    for _ in 0..12 {
        assert!(t.line("BOGUS").starts_with("500"));
    }
    assert!(t.line("BOGUS").starts_with("CLOSE 421 4.7.0"));
}

#[test]
fn limits_size_and_recipients() {
    let mut t = session(ListenerTls::None, true, false, "192.168.1.50", false);
    t.line("EHLO x");
    assert!(
        t.line("MAIL FROM:<a@contoso.com> SIZE=1001")
            .starts_with("552 5.3.4")
    );
    assert_eq!(
        t.line("MAIL FROM:<a@contoso.com> SIZE=1000 BODY=8BITMIME"),
        "250 2.1.0 Sender OK"
    );
    for i in 0..3 {
        assert_eq!(
            t.line(&format!("RCPT TO:<r{i}@example.com>")),
            "250 2.1.5 Recipient OK"
        );
    }
    // a duplicate is accepted without counting
    assert_eq!(t.line("RCPT TO:<R0@example.com>"), "250 2.1.5 Recipient OK");
    assert!(t.line("RCPT TO:<r9@example.com>").starts_with("452 4.5.3"));
    assert_eq!(
        t.line("DATA"),
        "DATA from=a@contoso.com orig=None to=r0@example.com,r1@example.com,r2@example.com"
    );
    assert!(
        t.line("MAIL FROM:<a@contoso.com> BODY=BINARYMIME")
            .starts_with("555")
    );
}

#[test]
fn sender_policy_reject_and_rewrite() {
    let mut t = session(ListenerTls::None, true, false, "192.168.1.50", false);
    t.line("EHLO x");
    assert_eq!(
        t.line("MAIL FROM:<scanner@printer.local>"),
        "553 5.7.1 <scanner@printer.local>: Sender address not allowed for this device"
    );
    assert!(t.line("MAIL FROM:<>").starts_with("553 5.7.1"));
    let mut t = session(ListenerTls::None, true, false, "192.168.1.50", true);
    t.line("EHLO x");
    assert_eq!(
        t.line("MAIL FROM:<scanner@printer.local>"),
        "250 2.1.0 Sender OK"
    );
    t.line("RCPT TO:<a@example.com>");
    assert_eq!(
        t.line("DATA"),
        "DATA from=scanner@contoso.com orig=Some(\"scanner@printer.local\") to=a@example.com"
    );
}

#[test]
fn legacy_path_forms() {
    let mut t = session(ListenerTls::None, true, false, "192.168.1.50", true);
    t.line("HELO x");
    // no angle brackets, as some old devices send
    assert_eq!(
        t.line("MAIL FROM:scanner@contoso.com"),
        "250 2.1.0 Sender OK"
    );
    assert_eq!(t.line("RCPT TO: a@example.com"), "250 2.1.5 Recipient OK");
    t.line("RSET");
    // the login name as sender: allowed only because it is rewritten
    assert_eq!(t.line("MAIL FROM:<mfp-3f> SIZE=10"), "250 2.1.0 Sender OK");
    t.line("RCPT TO:<a@example.com>");
    assert_eq!(
        t.line("DATA"),
        "DATA from=scanner@contoso.com orig=Some(\"mfp-3f\") to=a@example.com"
    );
    let mut t = session(ListenerTls::None, true, false, "192.168.1.50", false);
    t.line("EHLO x");
    assert!(t.line("MAIL FROM:<mfp-3f>").starts_with("553 5.7.1"));
    assert!(
        t.line("MAIL FROM:<bad address@x>")
            .starts_with("553 5.1.7 Sender address rejected: invalid character")
    );
}

#[test]
fn starttls_resets_state_and_cannot_repeat() {
    let mut t = session(ListenerTls::Starttls, true, false, "10.0.0.1", false);
    t.line("EHLO x");
    t.line("AUTH PLAIN AG1mcABzZWNyZXQ=");
    t.login_ok();
    assert_eq!(t.line("STARTTLS"), "STARTTLS 220");
    t.s.tls_established();
    assert!(!t.s.authenticated());
    assert!(t.line("MAIL FROM:<a@contoso.com>").starts_with("503"));
    t.line("EHLO x");
    assert!(
        t.line("STARTTLS")
            .starts_with("503 5.5.1 TLS already active")
    );
    let mut t = session(ListenerTls::Implicit, false, false, "10.0.0.1", false);
    t.line("EHLO x");
    assert_eq!(
        t.line("AUTH PLAIN AG1mcABzZWNyZXQ="),
        "VERIFY mfp:secret",
        "implicit TLS allows AUTH"
    );
}

#[test]
fn garbage_never_panics() {
    let mut t = session(ListenerTls::Starttls, true, false, "10.0.0.1", true);
    for l in [
        "",
        "\0\0\0",
        "MAIL",
        "MAIL FROM",
        "MAIL FROM:<",
        "RCPT TO:<>",
        "AUTH PLAIN =",
        "EHLO",
        "HELO",
        "MAIL FROM:<a@b> SIZE=99999999999999999999999",
        "\u{00e9}\u{00e9}",
        "DATA extra",
        "QUIT now",
    ] {
        let _ = t.line(l);
    }
}

/// smtp-proto skips the CR in `DAT<CR>A` and would read DATA.
#[test]
fn a_cr_inside_a_command_is_refused() {
    let mut t = session(ListenerTls::None, true, false, "192.168.1.50", false);
    t.line("EHLO x");
    t.line("MAIL FROM:<a@contoso.com>");
    t.line("RCPT TO:<a@example.com>");
    let cases: &[(&[u8], &str)] = &[
        (b"DAT\rA\r\n", "501 5.5.4 Syntax: bare CR in a command"),
        (b"DATA\rX\r\n", "501 5.5.4"),
        (b"RCPT TO:<b\r@example.com>\r\n", "501 5.5.4"),
        (b"RSET\rMAIL FROM:<x@y.z>\r\n", "501 5.5.4"),
        (b"\rNOOP\r\n", "501 5.5.4"),
        // line ends, however sloppy, are not "inside"
        (b"NOOP\r\n", "250 2.0.0 OK"),
        (b"NOOP\n", "250 2.0.0 OK"),
        (b"NOOP\r\r\n", "250 2.0.0 OK"),
    ];
    for (line, want) in cases {
        let step = t.s.handle_line(line);
        let got = t.render(step);
        assert!(got.starts_with(want), "{line:?}: {got}");
    }
    // The transaction is intact: the refused lines did nothing.
    assert!(t.line("DATA").starts_with("DATA from=a@contoso.com"));
}

/// The driver tells the session its address is locked out before MAIL: no mail, whoever
/// logged in, and the session is closed.
#[test]
fn mail_from_a_locked_out_address_is_refused_and_closes() {
    let mut t = session(ListenerTls::None, true, false, "192.168.1.50", false);
    t.line("EHLO x");
    t.s.set_address_locked(true);
    assert_eq!(
        t.line("MAIL FROM:<scanner@contoso.com>"),
        "CLOSE 421 4.7.0 Too many failed logins from your address, try again later"
    );
    // The driver's observers hear why, and of which sender.
    assert_eq!(t.s.take_refusal(), Some(SessionError::LockedOut));
    assert_eq!(t.s.envelope().0.as_deref(), Some("scanner@contoso.com"));
    t.s.set_address_locked(false);
    assert!(t.line("MAIL FROM:<scanner@contoso.com>").starts_with("250"));
}

/// An address is read from what the device wrote, quotes and all, and carried as one value:
/// a quoted local part with `>` and a parameter inside is an address of its domain (and is
/// written quoted upstream), never an address followed by a parameter.
#[test]
fn addresses_keep_their_quoted_local_parts() {
    let mut t = session(ListenerTls::None, true, false, "192.168.1.50", false);
    t.line("EHLO x");
    assert_eq!(
        t.line("MAIL FROM:<\"ceo@fabrikam.example> ENVID=x\"@contoso.com> SIZE=246"),
        "250 2.1.0 Sender OK"
    );
    assert_eq!(
        t.line("RCPT TO:<\"victim@fabrikam.example> NOTIFY=NEVER\"@b.example>"),
        "250 2.1.5 Recipient OK"
    );
    assert_eq!(
        t.line("RCPT TO:<\"plain\"@b.example>"),
        "250 2.1.5 Recipient OK"
    );
    // Observers get the envelope written as it goes upstream, quotes and all.
    assert_eq!(
        t.s.envelope(),
        (
            Some("\"ceo@fabrikam.example> ENVID=x\"@contoso.com".to_string()),
            vec![
                "\"victim@fabrikam.example> NOTIFY=NEVER\"@b.example".to_string(),
                "plain@b.example".to_string()
            ]
        )
    );
    assert_eq!(
        t.line("DATA"),
        "DATA from=\"ceo@fabrikam.example> ENVID=x\"@contoso.com orig=None \
         to=\"victim@fabrikam.example> NOTIFY=NEVER\"@b.example,plain@b.example"
    );
    // The sender pattern sees the address as written: `@contoso.com` inside quotes is no domain.
    assert!(
        t.line("MAIL FROM:<\"x@contoso.com\"@evil.example>")
            .starts_with("553 5.7.1 <\"x@contoso.com\"@evil.example>")
    );
}

/// Control characters anywhere, and `<`, `>` or blanks outside quotes, are refused: 553 5.1.7
/// for a sender, 501 5.1.3 for a recipient.
#[test]
fn unsafe_addresses_are_refused() {
    let mut t = session(ListenerTls::None, true, false, "192.168.1.50", true);
    t.line("EHLO x");
    for (line, want) in [
        (
            "MAIL FROM:<\"\x1b]2;owned\x07\"@contoso.com>",
            "553 5.1.7 Sender address rejected: control character in address",
        ),
        (
            "MAIL FROM:<a b@contoso.com>",
            "553 5.1.7 Sender address rejected: invalid character outside a quoted local part",
        ),
        (
            "MAIL FROM:<\"unterminated@contoso.com>",
            "553 5.1.7 Sender address rejected: unterminated or empty quoted local part",
        ),
    ] {
        assert_eq!(t.line(line), want, "{line:?}");
    }
    assert_eq!(t.line("MAIL FROM:<a@contoso.com>"), "250 2.1.0 Sender OK");
    for line in [
        "RCPT TO:<\"\x1b]2;owned\x07\x1b[2J\"@b.example>",
        "RCPT TO:<a b@b.example>",
        "RCPT TO:<a@b.example c>",
        "RCPT TO:<a\u{85}@b.example>",
    ] {
        let got = t.line(line);
        assert!(
            got.starts_with("501 5.1.3 Bad recipient address: "),
            "{line:?}: {got}"
        );
    }
    assert!(t.line("DATA").starts_with("554 5.5.1 No valid recipients"));
}

#[test]
fn full_spool_refuses_mail_with_452() {
    let mut t = session(ListenerTls::None, true, false, "192.168.1.50", false);
    t.line("EHLO x");
    t.s.set_free_space(Some(50));
    assert!(t.line("MAIL FROM:<a@contoso.com>").starts_with("452 4.3.1"));
    t.s.set_free_space(Some(1000));
    assert!(
        t.line("MAIL FROM:<a@contoso.com> SIZE=950")
            .starts_with("452 4.3.1"),
        "announced size counts"
    );
    assert_eq!(
        t.line("MAIL FROM:<a@contoso.com> SIZE=800"),
        "250 2.1.0 Sender OK"
    );
}

/// A device whose account goes through Microsoft Graph (no fallback) may send less than the
/// server takes: EHLO says so once the device is known, and MAIL SIZE= over it gets 552.
#[test]
fn a_graph_account_limits_its_devices_message_size() {
    let toml = r#"
[server]
max_message_size = 36700160
[[listeners]]
address = "127.0.0.1:2525"
[[accounts]]
name = "graph"
mailbox = "scanner@contoso.com"
route = "graph"
tenant = "contoso.onmicrosoft.com"
client_id = "11111111-2222-3333-4444-555555555555"
client_secret = "x"
[[devices]]
name = "ups"
auth = false
allow_ips = ["192.168.1.50/32"]
account = "graph"
"#;
    let path = std::env::temp_dir().join(format!("s2o-session-graph-{}.toml", std::process::id()));
    std::fs::write(&path, toml).unwrap();
    let cfg = smtp2oauth_config::parse(Some(&path), Vec::new()).unwrap();
    std::fs::remove_file(&path).ok();
    let dir = Directory::from_config(&cfg).unwrap();
    let limit = smtp2oauth_config::GRAPH_MAX_MESSAGE_SIZE;
    assert_eq!(dir.largest_message_size(), Some(limit));
    let limits = Limits {
        min_free_space: 0,
        max_message_size: 36_700_160,
        max_recipients: 3,
        max_auth_failures: 2,
        max_errors: 12,
    };
    let peer: IpAddr = "192.168.1.50".parse().unwrap();
    let listener = Arc::new(ListenerSettings {
        label: "t".into(),
        tls: ListenerTls::None,
        require_tls: false,
        allow_insecure_auth: false,
    });
    let mut s = Session::new(
        "relay.test".into(),
        listener,
        limits,
        peer,
        false,
        false,
        dir.device_for_address(peer),
    );
    let Step::Reply(ehlo) = s.handle_line(b"EHLO ups\r\n") else {
        panic!("EHLO")
    };
    assert!(
        ehlo.to_string().contains(&format!("SIZE {limit}")),
        "{ehlo}"
    );
    let Step::Reply(r) =
        s.handle_line(format!("MAIL FROM:<scanner@contoso.com> SIZE={}\r\n", limit + 1).as_bytes())
    else {
        panic!("MAIL")
    };
    assert_eq!(
        r.to_string(),
        format!("552 5.3.4 Message size exceeds fixed maximum message size ({limit} bytes)")
    );
    let Step::Reply(r) =
        s.handle_line(format!("MAIL FROM:<scanner@contoso.com> SIZE={limit}\r\n").as_bytes())
    else {
        panic!("MAIL")
    };
    assert_eq!(r.code(), 250);
}

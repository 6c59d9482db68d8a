//! The command-line parser and the SMTP session state machine (`inbound::Session`), fed a byte
//! stream the way the connection driver (`inbound::conn`) feeds it: lines framed at LF under the
//! line limit (longer for a SASL response), over-long lines reported and discarded, and after
//! `354` the DATA decoder reading up to the terminator.
//!
//! Input: 1 byte listener settings, 1 byte limits, then everything the client sends.
//!
//! Oracles: never a panic; every reply is a well-formed SMTP reply (3-digit code, `-` on all
//! lines but the last, no CR/LF/control characters inside); a message is accepted only after
//! `CRLF.CRLF` arrived, never on another line end; a message's envelope is that of an
//! authenticated or address-listed device, with a sender its account may use (we are never an
//! open relay), 1..=max recipients without duplicates, and no CR, LF or NUL that could inject
//! an upstream command; only a successful password check authenticates; STARTTLS only where
//! offered and TLS forgets the login; the error and failed-login limits close the session.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp2oauth_config::ListenerTls;
use smtp2oauth_fuzz::{check_reply_wire, find};
use smtp2oauth_inbound::identity::{AuthFailure, Directory};
use smtp2oauth_inbound::session::DataPlan;
use smtp2oauth_inbound::{Limits, ListenerSettings, Session, Step};
use smtp2oauth_proto::{DotDecoder, Reply};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

const LINE_LIMIT: usize = 512;
/// The driver allows longer lines while a SASL response is expected (conn.rs MAX_SASL_LINE).
const SASL_LINE_LIMIT: usize = 12288;
const UPS_IP: &str = "192.168.1.50";

fn directory(rewrite: bool) -> Arc<Directory> {
    static DIRS: OnceLock<[Arc<Directory>; 2]> = OnceLock::new();
    let dirs = DIRS.get_or_init(|| {
        [false, true].map(|rewrite| {
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
rewrite_sender = {rewrite}
allowed_senders = ["*@contoso.com", "hr@fabrikam.com"]
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
            let cfg = smtp2oauth_config::parse_str(&toml, Vec::new()).expect("fixture config");
            Arc::new(Directory::from_config(&cfg).expect("fixture directory"))
        })
    });
    dirs[usize::from(rewrite)].clone()
}

struct Driver<'a> {
    s: Session,
    dir: Arc<Directory>,
    limits: Limits,
    listener: Arc<ListenerSettings>,
    free_space: Option<u64>,
    input: &'a [u8],
    pos: usize,
    discarding: bool,
    errors: u32,
    auth_failures: u32,
    closed: bool,
}

enum LineEvent {
    Line(usize, usize),
    TooLong,
    End,
}

impl Driver<'_> {
    /// conn.rs `take_line`: a line ends at LF; longer than the limit, it is reported once and
    /// discarded up to its LF.
    fn take_line(&mut self) -> LineEvent {
        let limit = if self.s.in_sasl() {
            LINE_LIMIT.max(SASL_LINE_LIMIT)
        } else {
            LINE_LIMIT
        };
        loop {
            let buf = &self.input[self.pos..];
            match buf.iter().position(|&b| b == b'\n') {
                Some(p) if self.discarding => {
                    self.pos += p + 1;
                    self.discarding = false;
                }
                Some(p) if p < limit => {
                    let start = self.pos;
                    self.pos += p + 1;
                    return LineEvent::Line(start, self.pos);
                }
                Some(p) => {
                    self.pos += p + 1;
                    return LineEvent::TooLong;
                }
                None if self.discarding => return LineEvent::End,
                None if buf.len() >= limit => {
                    self.pos = self.input.len();
                    self.discarding = true;
                    return LineEvent::TooLong;
                }
                None => return LineEvent::End,
            }
        }
    }

    fn reply(&mut self, r: &Reply, from_session: bool) -> u16 {
        let code = check_reply_wire(&r.to_wire());
        assert_eq!(code, r.code());
        if from_session && code >= 400 && code != 535 {
            self.errors += 1;
        }
        if code == 535 {
            self.auth_failures += 1;
        }
        code
    }

    fn check_limits(&self) {
        assert!(
            self.errors <= self.limits.max_errors,
            "{} refusals with max_errors = {} and the session still open",
            self.errors,
            self.limits.max_errors
        );
        assert!(self.auth_failures < self.limits.max_auth_failures.max(1));
    }

    /// Carries out a step from `handle_line` / `line_too_long`.
    fn perform(&mut self, step: Step, line: &[u8]) {
        let was_authenticated = self.s.authenticated();
        match step {
            Step::Reply(r) => {
                let code = self.reply(&r, true);
                assert_ne!(code, 235, "235 only after a successful password check");
                assert_ne!(code, 354, "354 only with a Data step");
                assert_eq!(self.s.in_sasl(), code == 334, "334 if and only if in SASL");
                assert_eq!(
                    self.s.authenticated(),
                    was_authenticated,
                    "only a check logs in"
                );
                self.check_limits();
            }
            Step::Close(r) => {
                let code = self.reply(&r, false);
                assert!(
                    code == 221 || code == 421,
                    "a session ends with 221 or 421, not {code}"
                );
                assert_eq!(
                    self.s.authenticated(),
                    was_authenticated,
                    "only a check logs in"
                );
                self.closed = true;
            }
            Step::AuthFailed { reply, close } => self.auth_failed(&reply, close),
            Step::StartTls(r) => {
                assert_eq!(self.reply(&r, false), 220);
                assert_eq!(self.listener.tls, ListenerTls::Starttls);
                assert!(!self.s.tls_active(), "STARTTLS twice");
                self.s.tls_established();
                assert!(!self.s.authenticated(), "TLS must forget the login");
                assert!(!self.s.in_sasl());
            }
            Step::Verify(creds) => {
                assert!(!was_authenticated, "AUTH after a login");
                let result = match (&creds.username[..], &creds.password[..]) {
                    (b"mfp", b"secret") => Ok(self.dir.device_by_username("mfp").unwrap()),
                    (b"busy", _) => Err(AuthFailure::Busy),
                    (b"mfp", _) => Err(AuthFailure::WrongPassword),
                    _ => Err(AuthFailure::UnknownUser),
                };
                let ok = result.is_ok();
                match self.s.auth_result(result) {
                    Step::Reply(r) => {
                        let code = self.reply(&r, false);
                        assert_eq!(ok, code == 235);
                        assert_eq!(self.s.authenticated(), ok);
                        self.check_limits();
                    }
                    Step::Close(r) => {
                        assert!(!ok);
                        assert_eq!(self.reply(&r, false), 421);
                        self.closed = true;
                    }
                    Step::AuthFailed { reply, close } => {
                        assert!(!ok);
                        self.auth_failed(&reply, close);
                    }
                    other => panic!("auth_result asked for {other:?}"),
                }
            }
            Step::Data(plan) => {
                // smtp-proto tolerates blanks before the verb, as many servers do; nothing else.
                let verb = line.trim_ascii_start();
                assert!(
                    verb.len() >= 4 && verb[..4].eq_ignore_ascii_case(b"DATA"),
                    "a Data step from {line:?}"
                );
                assert_eq!(
                    self.s.authenticated(),
                    was_authenticated,
                    "only a check logs in"
                );
                assert_eq!(plan.authenticated, was_authenticated);
                self.check_plan(&plan);
                self.receive(&plan);
            }
        }
    }

    /// A failed login: 535 and the session goes on, or the last one allowed: 421 and closed.
    fn auth_failed(&mut self, reply: &Reply, close: bool) {
        let code = self.reply(reply, false);
        assert!(!self.s.authenticated(), "a failed login logged in");
        if close {
            assert_eq!(code, 421);
            self.closed = true;
        } else {
            assert_eq!(code, 535);
            self.check_limits();
        }
    }

    /// The envelope a message would be delivered with.
    fn check_plan(&self, plan: &DataPlan) {
        let peer_is_ups = !plan.authenticated;
        if peer_is_ups {
            assert_eq!(
                plan.device.name, "ups",
                "unauthenticated mail from a non-listed address"
            );
        }
        assert!(
            plan.device.policy.allows(&plan.sender),
            "sender {:?} not allowed for the account: open relay",
            plan.sender
        );
        if let Some(orig) = &plan.original_sender {
            assert!(plan.device.policy.rewrite);
            assert_eq!(plan.sender, plan.device.policy.mailbox);
            assert!(!orig.to_string().contains(char::is_control));
        }
        assert!(!plan.recipients.is_empty());
        assert!(plan.recipients.len() <= self.limits.max_recipients);
        for (i, r) in plan.recipients.iter().enumerate() {
            let written = r.to_string();
            assert!(written.contains('@'));
            assert!(
                !written.contains(char::is_control),
                "recipient {r:?} could inject an upstream command"
            );
            assert!(
                !plan.recipients[..i].iter().any(|o| o.same_mailbox(r)),
                "duplicate recipient {r:?}"
            );
        }
        assert!(
            !plan.sender.to_string().contains(char::is_control),
            "sender {:?} could inject an upstream command",
            plan.sender
        );
        assert!(plan.helo.len() < SASL_LINE_LIMIT);
        assert_eq!(plan.tls, self.s.tls_active());
    }

    /// conn.rs `receive_message`: 354, then the DATA decoder until the terminator.
    fn receive(&mut self, _plan: &DataPlan) {
        let rest = &self.input[self.pos..];
        let mut d = DotDecoder::new(self.limits.max_message_size);
        let mut out = Vec::new();
        let r = d.decode(rest, &mut out);
        if !r.done {
            // The client went away mid-DATA: nothing is accepted, no reply is sent.
            assert_eq!(r.consumed, rest.len());
            self.closed = true;
            return;
        }
        // Only CRLF.CRLF (the DATA line's CRLF counting as the first) ended the message.
        let mut framed = b"\r\n".to_vec();
        framed.extend_from_slice(&rest[..r.consumed]);
        assert_eq!(
            find(&framed, b"\r\n.\r\n"),
            Some(framed.len() - 5),
            "message ended without CRLF.CRLF"
        );
        self.pos += r.consumed;
        if d.over_limit() {
            // 552, counted as an error.
            self.errors += 1;
            if self.s.data_refused() {
                self.closed = true;
            } else {
                self.check_limits();
            }
        }
        // Otherwise the driver spools it and answers 250 (not part of the session machine).
    }
}

fuzz_target!(|data: &[u8]| {
    let [flags, lim, input @ ..] = data else {
        return;
    };
    let tls = match flags & 3 {
        0 => ListenerTls::None,
        1 | 3 => ListenerTls::Starttls,
        _ => ListenerTls::Implicit,
    };
    let listener = Arc::new(ListenerSettings {
        label: "fuzz".into(),
        tls,
        require_tls: flags & 4 != 0,
        allow_insecure_auth: flags & 8 != 0,
    });
    let peer: IpAddr = if flags & 16 != 0 { UPS_IP } else { "10.0.0.7" }
        .parse()
        .unwrap();
    let dir = directory(flags & 32 != 0);
    let limits = Limits {
        min_free_space: 100,
        max_message_size: [64, 1000, 1 << 20, u64::MAX][usize::from(lim & 3)],
        max_recipients: 1 + usize::from((lim >> 2) & 3),
        max_auth_failures: 1 + u32::from((lim >> 4) & 3),
        max_errors: [0, 1, 3, 20][usize::from(lim >> 6)],
    };
    let free_space = match flags >> 6 {
        0 => None,
        1 => Some(150),
        _ => Some(u64::MAX),
    };
    let s = Session::new(
        "relay.fuzz".into(),
        listener.clone(),
        limits,
        peer,
        tls == ListenerTls::Implicit,
        tls != ListenerTls::None,
        dir.device_for_address(peer),
    );
    check_reply_wire(&s.greeting().to_wire());
    let mut d = Driver {
        s,
        dir,
        limits,
        listener,
        free_space,
        input,
        pos: 0,
        discarding: false,
        errors: 0,
        auth_failures: 0,
        closed: false,
    };
    while !d.closed {
        let (step, line) = match d.take_line() {
            LineEvent::End => break,
            LineEvent::TooLong => (d.s.line_too_long(), &b""[..]),
            LineEvent::Line(a, b) => {
                let line = &d.input[a..b];
                if line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"MAIL") {
                    let free = d.free_space;
                    d.s.set_free_space(free);
                }
                (d.s.handle_line(line), line)
            }
        };
        d.perform(step, line);
    }
});

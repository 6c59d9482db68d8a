//! The SMTP session state machine, free of I/O.
//!
//! It takes one complete line at a time and answers with a [`Step`]: a reply to send, or an
//! effect the driver must perform and report back (check a password, start TLS, receive a
//! message body). Because it never touches a socket, the whole protocol (sequencing, legacy
//! quirks, limits, error counting) can be tested from a transcript, and the same code runs on
//! plain TCP, TLS, or an in-memory pipe.
//!
//! Legacy behaviour we keep on purpose, because printers depend on it: AUTH after HELO as well
//! as EHLO; AUTH LOGIN prompts exactly `334 VXNlcm5hbWU6` / `334 UGFzc3dvcmQ6`; the username
//! inline (`AUTH LOGIN <b64>`); AUTH PLAIN inline or after `334`; `AUTH=PLAIN LOGIN` advertised
//! for old clients; `MAIL FROM:addr` without angle brackets; an unqualified sender such as the
//! device's login name (it can only pass by being rewritten to the mailbox).
//!
//! Addresses are read from the bytes the device sent (`paths.rs`) and must mean the same to
//! smtp-proto: an [`Address`] is what goes into the envelope, written one way from then on.

mod paths;

pub use paths::Given;

use crate::identity::{AuthFailure, Device};
use crate::sasl::{self, Credentials, SaslError};
use paths::PathArg;
use smtp_proto::{
    AUTH_LOGIN, AUTH_PLAIN, Error as ParseError, MAIL_BODY_BINARYMIME, MAIL_SMTPUTF8, Request,
};
use smtp2oauth_config::ListenerTls;
use smtp2oauth_proto::replies::ok;
use smtp2oauth_proto::{Address, Reply, SessionError};
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

/// What the session needs to know about the listener it runs on.
#[derive(Clone, Debug)]
pub struct ListenerSettings {
    /// The listener's name in logs and metrics.
    pub label: String,
    /// How it does TLS.
    pub tls: ListenerTls,
    /// MAIL and AUTH only after TLS.
    pub require_tls: bool,
    /// AUTH without TLS (for devices that cannot do TLS).
    pub allow_insecure_auth: bool,
}

/// Per-session limits from `[server]`.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// New mail is refused (452 4.3.1) when less than this plus the announced size is free.
    pub min_free_space: u64,
    /// The largest message taken.
    pub max_message_size: u64,
    /// Recipients per message.
    pub max_recipients: usize,
    /// Failed logins per session before it is closed.
    pub max_auth_failures: u32,
    /// Refused commands per session before it is closed.
    pub max_errors: u32,
}

/// The next thing the driver must do.
#[derive(Debug)]
pub enum Step {
    /// Send this reply and read on.
    Reply(Reply),
    /// Send this reply, then close the connection.
    Close(Reply),
    /// Send this reply (220), discard anything already read, then do the TLS handshake and
    /// call [`Session::tls_established`].
    StartTls(Reply),
    /// Check these credentials, then call [`Session::auth_result`].
    Verify(Credentials),
    /// A failed login (wrong credentials, or an AUTH PLAIN message that is not one): count it
    /// against the client's address, then send `reply`, and close the connection if `close`
    /// (the session's last allowed failure).
    AuthFailed {
        /// What the device hears.
        reply: Reply,
        /// The session allows no more failures.
        close: bool,
    },
    /// Send 354, receive the message, deliver it, and send the outcome.
    Data(DataPlan),
}

/// Everything the driver needs to receive and hand over one message.
#[derive(Clone, Debug)]
pub struct DataPlan {
    /// The device sending.
    pub device: Arc<Device>,
    /// The envelope sender to use (after any rewrite).
    pub sender: Address,
    /// The sender the device gave, when it was rewritten.
    pub original_sender: Option<Given>,
    /// The accepted recipients.
    pub recipients: Vec<Address>,
    /// The device asked for SMTPUTF8.
    pub smtputf8: bool,
    /// The name the device gave in EHLO or HELO.
    pub helo: String,
    /// It said EHLO.
    pub esmtp: bool,
    /// The session is encrypted.
    pub tls: bool,
    /// The device logged in (rather than being recognised by address).
    pub authenticated: bool,
}

#[derive(Clone, Debug)]
enum Sasl {
    Plain,
    LoginUser,
    LoginPass { username: Vec<u8> },
}

#[derive(Clone, Debug)]
struct Transaction {
    device: Arc<Device>,
    sender: Address,
    original_sender: Option<Given>,
    recipients: Vec<Address>,
    rcpt_attempts: usize,
    smtputf8: bool,
}

/// One SMTP session's state: what has been said, who logged in, the transaction.
pub struct Session {
    /// Session number, for log lines and the spooled envelope.
    pub id: u64,
    hostname: Arc<str>,
    listener: Arc<ListenerSettings>,
    limits: Limits,
    peer: IpAddr,
    tls: bool,
    tls_offered: bool,
    helo: Option<String>,
    esmtp: bool,
    sasl: Option<Sasl>,
    device: Option<Arc<Device>>,
    ip_device: Option<Arc<Device>>,
    tx: Option<Transaction>,
    auth_failures: u32,
    errors: u32,
    free_space: Option<u64>,
    address_locked: bool,
    /// The sender of the MAIL line being handled, accepted or not.
    mail_from: Option<Given>,
    /// The refusal behind the last reply, until the driver takes it.
    refusal: Option<SessionError>,
}

impl Session {
    /// `tls` is true on implicit-TLS listeners; `tls_offered` when STARTTLS can be done here;
    /// `ip_device` is the no-auth device recognised by the peer's address, if any.
    pub fn new(
        hostname: Arc<str>,
        listener: Arc<ListenerSettings>,
        limits: Limits,
        peer: IpAddr,
        tls: bool,
        tls_offered: bool,
        ip_device: Option<Arc<Device>>,
    ) -> Session {
        Session {
            id: 0,
            hostname,
            listener,
            limits,
            peer,
            tls,
            tls_offered,
            helo: None,
            esmtp: false,
            sasl: None,
            device: None,
            ip_device,
            tx: None,
            auth_failures: 0,
            errors: 0,
            free_space: None,
            address_locked: false,
            mail_from: None,
            refusal: None,
        }
    }

    /// Bytes free in the spool, checked by the driver before MAIL (None: unknown).
    pub fn set_free_space(&mut self, free: Option<u64>) {
        self.free_space = free;
    }

    /// Whether the client's address is locked out for failed logins, checked by the driver
    /// before MAIL: a locked address sends no mail, whoever logged in.
    pub fn set_address_locked(&mut self, locked: bool) {
        self.address_locked = locked;
    }

    /// The client's address.
    pub fn peer(&self) -> IpAddr {
        self.peer
    }

    /// The greeting to send first.
    pub fn greeting(&self) -> Reply {
        ok::greeting(&self.hostname)
    }

    /// True while an AUTH exchange waits for a client response (a line of base64, not a command).
    pub fn in_sasl(&self) -> bool {
        self.sasl.is_some()
    }

    /// The listener the session runs on.
    pub fn listener(&self) -> &ListenerSettings {
        &self.listener
    }

    /// True once the session is encrypted.
    pub fn tls_active(&self) -> bool {
        self.tls
    }

    /// The device of this session: logged in, or recognised by address.
    pub fn device(&self) -> Option<&Arc<Device>> {
        self.device.as_ref().or(self.ip_device.as_ref())
    }

    /// True after a successful login.
    pub fn authenticated(&self) -> bool {
        self.device.is_some()
    }

    /// The message as far as the session knows it: with a transaction open, the sender the
    /// device gave and the recipients accepted so far; otherwise the sender of the MAIL line
    /// just handled (refused), if that line was one.
    /// Addresses come written in their RFC 5321 form (what `Address` writes).
    pub fn envelope(&self) -> (Option<String>, Vec<String>) {
        match &self.tx {
            Some(tx) => {
                let sender = match &tx.original_sender {
                    Some(given) => given.to_string(),
                    None => tx.sender.to_string(),
                };
                let recipients = tx.recipients.iter().map(Address::to_string).collect();
                (Some(sender), recipients)
            }
            None => (self.mail_from.as_ref().map(Given::to_string), Vec::new()),
        }
    }

    /// The refusal behind the reply just returned, if the session refused something (taken:
    /// a second call returns None).
    pub fn take_refusal(&mut self) -> Option<SessionError> {
        self.refusal.take()
    }

    /// Handles one line (including its line end).
    pub fn handle_line(&mut self, line: &[u8]) -> Step {
        self.mail_from = None;
        self.refusal = None;
        if let Some(state) = self.sasl.take() {
            return self.sasl_response(state, line);
        }
        if has_inner_cr(line) {
            return self.refuse(SessionError::Syntax("bare CR in a command"));
        }
        let line = normalise_path_command(line);
        let path = match paths::read(&line) {
            PathArg::Sender(Err(e)) => return self.refuse(SessionError::InvalidSender(e.as_str())),
            PathArg::Recipient(Err(e)) => return self.bad_recipient(e.as_str()),
            path => path,
        };
        match Request::parse(&mut line.iter()) {
            Ok(req) => self.request(req, path),
            Err(ParseError::InvalidSenderAddress) => match (path, parse_unqualified_mail(&line)) {
                (PathArg::Sender(Ok(given @ Given::Unqualified(_))), Some((flags, size))) => {
                    self.mail(given, flags, size)
                }
                _ => self.refuse(SessionError::BadSenderAddress),
            },
            Err(e) => {
                if matches!(e, ParseError::InvalidRecipientAddress)
                    && let Some(tx) = self.tx.as_mut()
                {
                    tx.rcpt_attempts += 1;
                }
                let err = match e {
                    ParseError::UnknownCommand => SessionError::UnknownCommand,
                    ParseError::InvalidRecipientAddress => SessionError::BadRecipientAddress,
                    ParseError::InvalidSenderAddress => SessionError::BadSenderAddress,
                    ParseError::SyntaxError { syntax }
                        if syntax.starts_with("AUTH") && has_argument(&line) =>
                    {
                        SessionError::MechanismNotSupported
                    }
                    ParseError::SyntaxError { syntax } => SessionError::Syntax(syntax),
                    ParseError::InvalidParameter { param } => SessionError::InvalidParameter(param),
                    ParseError::UnsupportedParameter { param } => {
                        SessionError::UnsupportedParameter(param)
                    }
                    ParseError::ResponseTooLong => SessionError::LineTooLong,
                    ParseError::NeedsMoreData { .. } | ParseError::InvalidResponse { .. } => {
                        SessionError::Syntax("incomplete command")
                    }
                };
                self.refuse(err)
            }
        }
    }

    /// The driver saw a line longer than the limit (and discarded it).
    pub fn line_too_long(&mut self) -> Step {
        if self.sasl.take().is_some() {
            return self.refuse(SessionError::AuthCancelled);
        }
        self.refuse(SessionError::LineTooLong)
    }

    /// Counts a refusal; too many and the session is closed. Remembers which refusal was
    /// sent, for the driver's observers.
    fn refuse(&mut self, err: SessionError) -> Step {
        let (sent, step): (SessionError, fn(Reply) -> Step) = if err.closes_session() {
            (err, Step::Close)
        } else {
            self.errors += 1;
            if self.errors > self.limits.max_errors {
                (SessionError::TooManyErrors, Step::Close)
            } else {
                (err, Step::Reply)
            }
        };
        let reply = sent.reply();
        self.refusal = Some(sent);
        step(reply)
    }

    /// A refused RCPT address: counted as a recipient attempt (DATA then says none was valid).
    fn bad_recipient(&mut self, why: &'static str) -> Step {
        if let Some(tx) = self.tx.as_mut() {
            tx.rcpt_attempts += 1;
        }
        self.refuse(SessionError::InvalidRecipient(why))
    }

    fn request(&mut self, req: Request<Cow<'_, str>>, path: PathArg) -> Step {
        match req {
            Request::Ehlo { host } => {
                self.reset_helo(host.as_ref(), true);
                Step::Reply(self.ehlo_reply())
            }
            Request::Helo { host } => {
                self.reset_helo(host.as_ref(), false);
                Step::Reply(ok::helo(&self.hostname, host.as_ref()))
            }
            Request::Mail { from } => match path {
                PathArg::Sender(Ok(given)) if agrees(&given, &from.address) => {
                    self.mail(given, from.flags, from.size as u64)
                }
                _ => self.refuse(SessionError::InvalidSender("ambiguous address")),
            },
            Request::Rcpt { to } => match path {
                PathArg::Recipient(Ok(a)) if a.unquoted() == to.address => self.rcpt(a),
                _ => self.bad_recipient("ambiguous address"),
            },
            Request::Data => self.data(),
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, initial_response.as_ref()),
            Request::StartTls => self.starttls(),
            Request::Rset => {
                self.tx = None;
                Step::Reply(ok::reset())
            }
            Request::Noop { .. } => Step::Reply(ok::ok()),
            Request::Vrfy { .. } => Step::Reply(ok::vrfy()),
            Request::Help { .. } => Step::Reply(ok::help()),
            Request::Quit => Step::Close(ok::bye()),
            Request::Expn { .. } => self.refuse(SessionError::NotImplemented("EXPN")),
            Request::Bdat { .. } => self.refuse(SessionError::NotImplemented("BDAT")),
            Request::Lhlo { .. } => self.refuse(SessionError::NotImplemented("LHLO")),
            Request::Etrn { .. } => self.refuse(SessionError::NotImplemented("ETRN")),
            Request::Atrn { .. } => self.refuse(SessionError::NotImplemented("ATRN")),
            Request::Burl { .. } => self.refuse(SessionError::NotImplemented("BURL")),
        }
    }

    fn reset_helo(&mut self, host: &str, esmtp: bool) {
        self.helo = Some(host.to_string());
        self.esmtp = esmtp;
        self.tx = None;
    }

    fn auth_offered(&self) -> bool {
        if self.listener.require_tls && !self.tls {
            return false;
        }
        self.tls || self.listener.allow_insecure_auth
    }

    fn ehlo_reply(&self) -> Reply {
        let mut lines = vec![
            format!(
                "{} Hello {} [{}]",
                self.hostname,
                self.helo.as_deref().unwrap_or(""),
                self.peer
            ),
            "PIPELINING".into(),
            format!("SIZE {}", self.size_limit()),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "ENHANCEDSTATUSCODES".into(),
        ];
        if self.tls_offered && !self.tls && self.listener.tls == ListenerTls::Starttls {
            lines.push("STARTTLS".into());
        }
        if self.auth_offered() {
            lines.push("AUTH PLAIN LOGIN".into());
            // Some old clients only recognise the pre-standard form.
            lines.push("AUTH=PLAIN LOGIN".into());
        }
        lines.push("HELP".into());
        Reply::multiline(250, None, lines)
    }

    /// The SIZE to advertise: the known device's limit (its account's route may take less
    /// than the server), else the session's.
    fn size_limit(&self) -> u64 {
        self.device().map_or(self.limits.max_message_size, |d| {
            d.max_message_size.min(self.limits.max_message_size)
        })
    }

    fn starttls(&mut self) -> Step {
        if self.tls {
            return self.refuse(SessionError::TlsAlreadyActive);
        }
        if self.listener.tls != ListenerTls::Starttls {
            return self.refuse(SessionError::NotImplemented("STARTTLS"));
        }
        if !self.tls_offered {
            return self.refuse(SessionError::TlsUnavailable);
        }
        Step::StartTls(ok::start_tls())
    }

    /// After a successful TLS handshake: everything learnt before it is forgotten (RFC 3207).
    pub fn tls_established(&mut self) {
        self.tls = true;
        self.helo = None;
        self.esmtp = false;
        self.sasl = None;
        self.device = None;
        self.tx = None;
    }

    fn auth(&mut self, mechanism: u64, initial: &str) -> Step {
        if self.helo.is_none() {
            return self.refuse(SessionError::NeedHelo);
        }
        if self.device.is_some() {
            return self.refuse(SessionError::AlreadyAuthenticated);
        }
        if self.tx.is_some() {
            return self.refuse(SessionError::AuthDuringTransaction);
        }
        if self.listener.require_tls && !self.tls {
            return self.refuse(SessionError::TlsRequired);
        }
        if !self.tls && !self.listener.allow_insecure_auth {
            return self.refuse(SessionError::EncryptionRequired);
        }
        match mechanism {
            AUTH_PLAIN if initial.is_empty() => {
                self.sasl = Some(Sasl::Plain);
                Step::Reply(ok::auth_plain_challenge())
            }
            AUTH_PLAIN => self.sasl_response(Sasl::Plain, initial.as_bytes()),
            AUTH_LOGIN if initial.is_empty() => {
                self.sasl = Some(Sasl::LoginUser);
                Step::Reply(ok::auth_login_username())
            }
            AUTH_LOGIN => self.sasl_response(Sasl::LoginUser, initial.as_bytes()),
            _ => self.refuse(SessionError::MechanismNotSupported),
        }
    }

    fn sasl_response(&mut self, state: Sasl, line: &[u8]) -> Step {
        let decoded = match sasl::decode_response(line) {
            Ok(d) => d,
            Err(SaslError::Cancelled) => return self.refuse(SessionError::AuthCancelled),
            Err(_) => return self.refuse(SessionError::BadBase64),
        };
        match state {
            Sasl::Plain => match sasl::parse_plain(&decoded) {
                Ok(creds) => Step::Verify(creds),
                Err(_) => self.auth_result(Err(AuthFailure::UnknownUser)),
            },
            Sasl::LoginUser => {
                self.sasl = Some(Sasl::LoginPass { username: decoded });
                Step::Reply(ok::auth_login_password())
            }
            Sasl::LoginPass { username } => Step::Verify(Credentials {
                username,
                password: decoded,
            }),
        }
    }

    /// The outcome of a [`Step::Verify`].
    pub fn auth_result(&mut self, result: Result<Arc<Device>, AuthFailure>) -> Step {
        match result {
            Ok(device) => {
                self.device = Some(device);
                Step::Reply(ok::auth_success())
            }
            Err(AuthFailure::AddressLockedOut) => self.refuse(SessionError::LockedOut),
            // Our own trouble (verifiers overloaded) is not the device's failed login.
            Err(AuthFailure::Busy | AuthFailure::Internal) => {
                self.refusal = Some(SessionError::AuthUnavailable);
                Step::Reply(SessionError::AuthUnavailable.reply())
            }
            Err(failure) => {
                self.auth_failures += 1;
                let close = self.auth_failures >= self.limits.max_auth_failures;
                let refusal = match failure {
                    _ if close => SessionError::TooManyAuthFailures,
                    AuthFailure::UserLockedOut => SessionError::UserLockedOut,
                    _ => SessionError::AuthFailed,
                };
                let reply = refusal.reply();
                self.refusal = Some(refusal);
                Step::AuthFailed { reply, close }
            }
        }
    }

    fn mail(&mut self, given: Given, flags: u64, size: u64) -> Step {
        self.mail_from = Some(given.clone());
        if self.address_locked {
            return self.refuse(SessionError::LockedOut);
        }
        if self.helo.is_none() {
            return self.refuse(SessionError::NeedHelo);
        }
        if self.listener.require_tls && !self.tls {
            return self.refuse(SessionError::TlsRequired);
        }
        let Some(device) = self.device.clone().or_else(|| self.ip_device.clone()) else {
            return self.refuse(SessionError::AuthRequired);
        };
        if self.tx.is_some() {
            return self.refuse(SessionError::NestedMail);
        }
        let limit = device.max_message_size.min(self.limits.max_message_size);
        if size > limit {
            return self.refuse(SessionError::MessageTooBig(limit));
        }
        if let Some(free) = self.free_space
            && free < self.limits.min_free_space.saturating_add(size)
        {
            return self.refuse(SessionError::StorageFull);
        }
        if flags & MAIL_BODY_BINARYMIME != 0 {
            return self.refuse(SessionError::UnsupportedParameter("BODY=BINARYMIME".into()));
        }
        let policy = &device.policy;
        let (sender, original_sender) = match given {
            Given::Mailbox(a) if policy.allows(&a) => (a, None),
            given if policy.rewrite => (policy.mailbox.clone(), Some(given)),
            given => return self.refuse(SessionError::SenderNotAllowed(given.to_string())),
        };
        self.tx = Some(Transaction {
            device,
            sender,
            original_sender,
            recipients: Vec::new(),
            rcpt_attempts: 0,
            smtputf8: flags & MAIL_SMTPUTF8 != 0,
        });
        Step::Reply(ok::sender_ok())
    }

    fn rcpt(&mut self, addr: Address) -> Step {
        let max = self.limits.max_recipients;
        let Some(tx) = self.tx.as_mut() else {
            return self.refuse(SessionError::NeedMail);
        };
        tx.rcpt_attempts += 1;
        if tx.recipients.iter().any(|r| r.same_mailbox(&addr)) {
            return Step::Reply(ok::recipient_ok());
        }
        if tx.recipients.len() >= max {
            return self.refuse(SessionError::TooManyRecipients);
        }
        tx.recipients.push(addr);
        Step::Reply(ok::recipient_ok())
    }

    fn data(&mut self) -> Step {
        if self.helo.is_none() {
            return self.refuse(SessionError::NeedHelo);
        }
        let Some(tx) = self.tx.as_ref() else {
            return self.refuse(SessionError::NeedMail);
        };
        if tx.recipients.is_empty() {
            let err = if tx.rcpt_attempts == 0 {
                SessionError::NeedRcpt
            } else {
                SessionError::NoValidRecipients
            };
            return self.refuse(err);
        }
        // The transaction ends with this DATA, whatever its outcome.
        let tx = self.tx.take().expect("checked above");
        Step::Data(DataPlan {
            device: tx.device,
            sender: tx.sender,
            original_sender: tx.original_sender,
            recipients: tx.recipients,
            smtputf8: tx.smtputf8,
            helo: self.helo.clone().unwrap_or_default(),
            esmtp: self.esmtp,
            tls: self.tls,
            authenticated: self.device.is_some(),
        })
    }

    /// Counts a refused message (too large, storage full) towards the error limit.
    pub fn data_refused(&mut self) -> bool {
        self.errors += 1;
        self.errors > self.limits.max_errors
    }
}

/// smtp-proto's value of a MAIL path is the address we read: `<>` is empty, a mailbox unquoted
/// the same, and a bare word is what smtp-proto makes `<postmaster>` (empty) or refuses.
fn agrees(given: &Given, value: &str) -> bool {
    match given {
        Given::Null => value.is_empty(),
        Given::Mailbox(a) => a.unquoted() == value,
        Given::Unqualified(word) => value.is_empty() && word.eq_ignore_ascii_case("postmaster"),
    }
}

/// A CR inside a command line, not part of its line end. smtp-proto skips CRs while parsing, so
/// `DAT<CR>A` would read as DATA, while a peer that ends lines at a bare CR reads two commands:
/// the kind of disagreement between parsers that SMTP smuggling is built on. No client we know
/// puts a CR inside a command, so it is refused rather than interpreted.
fn has_inner_cr(line: &[u8]) -> bool {
    let mut body = line.strip_suffix(b"\n").unwrap_or(line);
    while let [rest @ .., b'\r'] = body {
        body = rest;
    }
    memchr::memchr(b'\r', body).is_some()
}

fn has_argument(line: &[u8]) -> bool {
    let s = String::from_utf8_lossy(line);
    s.split_whitespace().count() >= 2
}

/// Puts angle brackets around a path given without them (`MAIL FROM:addr`), which some old
/// devices send and RFC 821-era servers accepted.
fn normalise_path_command(line: &[u8]) -> Cow<'_, [u8]> {
    for prefix in [&b"MAIL FROM:"[..], b"RCPT TO:"] {
        if line.len() > prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix) {
            let rest = &line[prefix.len()..];
            let skip = rest.iter().take_while(|&&b| b == b' ').count();
            let path = &rest[skip..];
            if matches!(path.first(), None | Some(b'<' | b'\r' | b'\n')) {
                return Cow::Borrowed(line);
            }
            let end = path
                .iter()
                .position(|&b| matches!(b, b' ' | b'\r' | b'\n'))
                .unwrap_or(path.len());
            let mut fixed = Vec::with_capacity(line.len() + 2);
            fixed.extend_from_slice(&line[..prefix.len()]);
            fixed.push(b'<');
            fixed.extend_from_slice(&path[..end]);
            fixed.push(b'>');
            fixed.extend_from_slice(&path[end..]);
            return Cow::Owned(fixed);
        }
    }
    Cow::Borrowed(line)
}

/// `MAIL FROM:<mfp-3f>`: an address without a domain. Parses the parameters with a placeholder
/// address (the address itself is read by `paths`; the sender policy rewrites or refuses it).
fn parse_unqualified_mail(line: &[u8]) -> Option<(u64, u64)> {
    let s = std::str::from_utf8(line).ok()?;
    if !s.get(..10)?.eq_ignore_ascii_case("MAIL FROM:") {
        return None;
    }
    let lt = s.find('<')?;
    let gt = lt + s[lt..].find('>')?;
    let addr = &s[lt + 1..gt];
    if addr.is_empty()
        || addr.len() > 256
        || addr.contains('@')
        || !addr
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c))
    {
        return None;
    }
    let patched = format!("{}<unqualified@sender.invalid>{}", &s[..lt], &s[gt + 1..]);
    match Request::parse(&mut patched.as_bytes().iter()) {
        Ok(Request::Mail { from }) => Some((from.flags, from.size as u64)),
        _ => None,
    }
}

#[cfg(test)]
mod tests;

//! The session driver: runs a [`Session`] over any byte stream (TCP, TLS, an in-memory pipe).
//!
//! It owns everything the state machine deliberately does not: framing lines under a length
//! limit, deadlines, flushing pipelined replies, the TLS upgrade, checking passwords, and
//! streaming a message body through the dot decoder and header rewriter into the spool. It hands
//! the committed message to [`Submit`] and sends the device whatever reply that returns.
//!
//! Deadlines: each command line must arrive whole within `command_timeout` of when we started
//! waiting for it (so a client trickling one byte a second is cut off, not served forever);
//! during DATA, no read may take longer than `data_timeout`; and no session outlives
//! `session_timeout`. Every write is bounded by `command_timeout` too, so a client that stops
//! reading cannot hold a session. While it waits for the device, the driver also watches the
//! session's [`Slot`]: a session that has not logged in within `preauth_timeout`, one the
//! relay closes to make room, and every session of an address just locked out are ended.

use crate::guard::Verdict;
use crate::headers::{HeaderRewriter, ReceivedInfo, received_header};
use crate::identity::{AuthFailure, Directory};
use crate::limiter::{Limiter, Permit};
use crate::observe::{self, About, Command, EndReason, MessageInfo, Observer, TlsInfo};
use crate::session::{DataPlan, Limits, ListenerSettings, Session, Step};
use crate::slot::Slot;
use crate::tls::TlsHandle;
use smtp2oauth_config::ListenerTls;
use smtp2oauth_metrics::{AccountLabels, Metrics, RefusalLabels, SessionLabels};
use smtp2oauth_proto::replies::ok;
use smtp2oauth_proto::reply::truncate_at_char;
use smtp2oauth_proto::{DotDecoder, Reply, SessionError};
use smtp2oauth_spool::{Envelope, Incoming, MessageId, Queued, Spool, SpoolError};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};
use track::Tracker;

/// Where an accepted message goes next (the scheduler). It returns the reply the device gets.
pub trait Submit: Send + Sync + 'static {
    /// Queues a durable message; returns the reply its device gets.
    fn submit(&self, message: Queued) -> Pin<Box<dyn Future<Output = Reply> + Send + '_>>;
}

/// Everything sessions share.
pub struct Inbound {
    /// Our name in the greeting, EHLO and Received headers.
    pub hostname: Arc<str>,
    /// What one session may do.
    pub limits: Limits,
    /// The longest command line taken.
    pub max_line_length: usize,
    /// How long a command line may take to arrive whole.
    pub command_timeout: Duration,
    /// How long one read during DATA may wait.
    pub data_timeout: Duration,
    /// How long a session may last.
    pub session_timeout: Duration,
    /// How long a session may take to log in (a device recognised by address has from the start).
    pub preauth_timeout: Duration,
    /// Put our Received header on top of each message.
    pub add_received_header: bool,
    /// The devices and their passwords.
    pub directory: Arc<Directory>,
    /// Where accepted messages go.
    pub spool: Spool,
    /// Who gets them next.
    pub submit: Arc<dyn Submit>,
    /// Sessions allowed at once, in all and per address.
    pub limiter: Arc<Limiter>,
    /// Cancelled when the relay stops: idle sessions are closed.
    pub shutdown: CancellationToken,
    /// Where sessions, logins and refusals are counted.
    pub metrics: Option<Arc<Metrics>>,
    /// Failed logins per address, and lockouts.
    pub guard: Arc<crate::guard::LoginGuard>,
    /// Commands (lines) and bytes one session may send.
    pub max_commands: u64,
    /// Bytes one session may send.
    pub max_session_bytes: u64,
    /// Sees every reply a device gets and every session's end (the live state, log lines).
    pub observer: Option<Arc<dyn Observer>>,
}

/// One listener's settings and TLS acceptor.
pub struct ListenerRuntime {
    /// The listener's settings.
    pub settings: Arc<ListenerSettings>,
    /// Its certificate, when it has one.
    pub tls: Option<TlsHandle>,
}

/// SASL responses may be longer than commands (RFC 4954 §4).
const MAX_SASL_LINE: usize = 12288;
/// Decoded message bytes are written to the spool in chunks of about this size.
const WRITE_CHUNK: usize = 64 * 1024;
const READ_CHUNK: usize = 64 * 1024;

static SESSION_IDS: AtomicU64 = AtomicU64::new(1);

/// Serves one accepted connection to the end, in the slot `permit` holds (see [`Limiter`]).
pub async fn serve<S>(
    ctx: Arc<Inbound>,
    listener: Arc<ListenerRuntime>,
    io: S,
    peer: SocketAddr,
    permit: Permit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let id = SESSION_IDS.fetch_add(1, Ordering::Relaxed);
    let span = info_span!("session", id, listener = %listener.settings.label, peer = %peer.ip());
    async move {
        let mut tracker = Tracker::new(&ctx, &listener.settings.label, peer, id);
        let end = serve_inner(&ctx, &listener, io, peer, &mut tracker, permit).await;
        tracker.finish(end);
    }
    .instrument(span)
    .await
}

/// A connection refused when it was accepted (too many sessions, an address locked out): its
/// one reply passes the observer like any other, and it ends as a session of its own. Returns
/// the reply to write.
pub fn refused_at_accept(
    ctx: &Inbound,
    listener: &str,
    peer: SocketAddr,
    refusal: &SessionError,
) -> Reply {
    let id = SESSION_IDS.fetch_add(1, Ordering::Relaxed);
    let mut tracker = Tracker::new(ctx, listener, peer, id);
    let reply = refusal.reply();
    tracker.observe(Command::Connect, &reply, About::Command, Some(refusal));
    tracker.finish(end_of(refusal));
    reply
}

/// Runs the session over plain TCP or implicit TLS, and over STARTTLS when the client asks;
/// returns why it ended.
async fn serve_inner<S>(
    ctx: &Arc<Inbound>,
    listener: &ListenerRuntime,
    io: S,
    peer: SocketAddr,
    tracker: &mut Tracker,
    permit: Permit,
) -> EndReason
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    debug!("connected");
    let at = Context {
        ctx,
        peer,
        session_deadline: Instant::now() + ctx.session_timeout,
    };
    let implicit = listener.settings.tls == ListenerTls::Implicit;
    let mut gauge = SessionGauge::new(
        ctx.metrics.clone(),
        &listener.settings.label,
        if implicit { "implicit" } else { "none" },
    );
    let mut session = new_session(ctx, listener, peer, tracker.id());
    let known = session.device().is_some();
    let guard = ctx.guard.clone();
    let slot = &mut Slot::new(permit, peer.ip(), guard, ctx.preauth_timeout, known);
    if implicit {
        let stream = match handshake(listener, io, &at).await {
            Ok(stream) => stream,
            Err(end) => return end,
        };
        tracker.tls(log_tls(&stream));
        let mut conn = Conn::new(stream, ctx.metrics.clone());
        let greeting = session.greeting();
        tracker.send(
            &mut conn,
            &session,
            Command::Connect,
            &greeting,
            About::Command,
            None,
        );
        return converse(&mut conn, &mut session, tracker, slot, &at)
            .await
            .end();
    }

    let mut conn = Conn::new(io, ctx.metrics.clone());
    let greeting = session.greeting();
    tracker.send(
        &mut conn,
        &session,
        Command::Connect,
        &greeting,
        About::Command,
        None,
    );
    let outcome = converse(&mut conn, &mut session, tracker, slot, &at).await;
    if outcome != Outcome::StartTls {
        return outcome.end();
    }
    let buffered = conn.rbuf.len() - conn.rpos;
    if buffered > 0 {
        // Command injection defence (CVE-2011-0411 class): bytes sent before the handshake
        // completed must never be read as commands of the encrypted session.
        warn!(bytes = buffered, "discarding data pipelined after STARTTLS");
    }
    let stream = match handshake(listener, conn.io, &at).await {
        Ok(stream) => stream,
        Err(end) => return end,
    };
    tracker.tls(log_tls(&stream));
    session.tls_established();
    gauge.set_tls("starttls");
    let mut conn = Conn::new(stream, ctx.metrics.clone());
    converse(&mut conn, &mut session, tracker, slot, &at)
        .await
        .end()
}

/// Runs the session over one connection until it ends or turns to TLS; counts the bytes read.
async fn converse<S>(
    conn: &mut Conn<S>,
    session: &mut Session,
    tracker: &mut Tracker,
    slot: &mut Slot,
    at: &Context<'_>,
) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let outcome = drive(conn, session, tracker, slot, at).await;
    tracker.read(conn.read_total);
    outcome
}

/// The server side of the TLS handshake, within `command_timeout` (and the session's time).
async fn handshake<S>(
    listener: &ListenerRuntime,
    io: S,
    at: &Context<'_>,
) -> Result<crate::tls::TlsStream<S>, EndReason>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(tls) = &listener.tls else {
        error!("TLS listener without a certificate");
        return Err(EndReason::Error);
    };
    let deadline = (Instant::now() + at.ctx.command_timeout).min(at.session_deadline);
    match timeout_at(deadline, tls.accept(io)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(tls_failed(Some(e))),
        Err(_) => Err(tls_failed(None)),
    }
}

/// Logs a failed TLS handshake (None: it timed out).
fn tls_failed(error: Option<io::Error>) -> EndReason {
    let Some(e) = error else {
        info!("TLS handshake timed out");
        return EndReason::TlsFailed;
    };
    match crate::tls::handshake_failure(&e) {
        crate::tls::HandshakeFailure {
            offered: Some(offered),
            hint: Some(hint),
        } => warn!(error = %e, client_offered = offered, hint, "TLS handshake failed"),
        _ => info!(error = %e, "TLS handshake failed"),
    }
    EndReason::TlsFailed
}

fn new_session(
    ctx: &Inbound,
    listener: &ListenerRuntime,
    peer: SocketAddr,
    session_id: u64,
) -> Session {
    let ip_device = ctx.directory.device_for_address(peer.ip());
    // Before a device is known, advertise the largest size any device may send.
    let mut limits = ctx.limits;
    if let Some(largest) = ctx.directory.largest_message_size() {
        limits.max_message_size = limits.max_message_size.min(largest);
    }
    let mut session = Session::new(
        ctx.hostname.clone(),
        listener.settings.clone(),
        limits,
        peer.ip(),
        listener.settings.tls == ListenerTls::Implicit,
        listener.tls.is_some(),
        ip_device,
    );
    session.id = session_id;
    session
}

/// Says which TLS version and cipher a device got: the way to find the devices that still
/// need a legacy listener, and proof of what a session was protected by.
fn log_tls<S>(stream: &crate::tls::TlsStream<S>) -> TlsInfo {
    let (version, cipher) = stream.describe();
    if version == "TLSv1" || version == "TLSv1.1" {
        info!(%version, %cipher, "TLS established with an old protocol version (legacy listener)");
    } else {
        debug!(%version, %cipher, "TLS established");
    }
    TlsInfo { version, cipher }
}

/// Keeps `sessions_active` right for the life of a session (whatever way it ends) and counts
/// the session in `sessions_total` with the TLS state it ended in.
struct SessionGauge {
    metrics: Option<Arc<Metrics>>,
    listener: String,
    tls: &'static str,
}

impl SessionGauge {
    fn new(metrics: Option<Arc<Metrics>>, listener: &str, tls: &'static str) -> Self {
        if let Some(m) = &metrics {
            m.sessions_active
                .get_or_create(&SessionLabels {
                    listener: listener.to_string(),
                    tls,
                })
                .inc();
        }
        SessionGauge {
            metrics,
            listener: listener.to_string(),
            tls,
        }
    }

    fn set_tls(&mut self, tls: &'static str) {
        if let Some(m) = &self.metrics {
            m.sessions_active
                .get_or_create(&SessionLabels {
                    listener: self.listener.clone(),
                    tls: self.tls,
                })
                .dec();
            m.sessions_active
                .get_or_create(&SessionLabels {
                    listener: self.listener.clone(),
                    tls,
                })
                .inc();
        }
        self.tls = tls;
    }
}

impl Drop for SessionGauge {
    fn drop(&mut self) {
        if let Some(m) = &self.metrics {
            let labels = SessionLabels {
                listener: self.listener.clone(),
                tls: self.tls,
            };
            m.sessions_active.get_or_create(&labels).dec();
            m.sessions.get_or_create(&labels).inc();
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Ended(EndReason),
    StartTls,
}

impl Outcome {
    /// Why the session ended (a STARTTLS whose handshake never came is an error).
    fn end(self) -> EndReason {
        match self {
            Outcome::Ended(end) => end,
            Outcome::StartTls => EndReason::Error,
        }
    }
}

enum LineEvent {
    Line(Vec<u8>),
    TooLong,
    NeedMore,
}

struct Conn<S> {
    io: S,
    rbuf: Vec<u8>,
    rpos: usize,
    wbuf: Vec<u8>,
    /// Inside an over-long line: drop bytes up to the next LF.
    discarding: bool,
    metrics: Option<Arc<Metrics>>,
    /// Bytes read from the client so far (the session's byte budget).
    read_total: u64,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn new(io: S, metrics: Option<Arc<Metrics>>) -> Self {
        Conn {
            io,
            rbuf: Vec::with_capacity(4096),
            rpos: 0,
            wbuf: Vec::with_capacity(1024),
            discarding: false,
            metrics,
            read_total: 0,
        }
    }

    fn queue(&mut self, reply: &Reply) {
        if reply.code() >= 400
            && let Some(m) = &self.metrics
        {
            m.refusals
                .get_or_create(&RefusalLabels {
                    code: reply.code().to_string(),
                })
                .inc();
        }
        reply.write_to(&mut self.wbuf);
    }

    fn buffered(&self) -> &[u8] {
        &self.rbuf[self.rpos..]
    }

    fn consume(&mut self, n: usize) {
        self.rpos += n;
        if self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
        }
    }

    async fn flush(&mut self, deadline: Instant) -> io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let write = async {
            self.io.write_all(&self.wbuf).await?;
            self.io.flush().await
        };
        match timeout_at(deadline, write).await {
            Ok(r) => r?,
            Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")),
        }
        self.wbuf.clear();
        Ok(())
    }

    /// Reads more input; 0 means the peer closed. Reads into spare capacity, so the buffer is
    /// never zero-filled before a read.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.rpos > 0 && self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
        } else if self.rpos > READ_CHUNK {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        self.rbuf.reserve(READ_CHUNK);
        let n = self.io.read_buf(&mut self.rbuf).await?;
        self.read_total += n as u64;
        Ok(n)
    }

    fn take_line(&mut self, limit: usize) -> LineEvent {
        loop {
            let buf = self.buffered();
            match memchr::memchr(b'\n', buf) {
                Some(pos) if self.discarding => {
                    self.consume(pos + 1);
                    self.discarding = false;
                    continue;
                }
                Some(pos) if pos < limit => {
                    let line = buf[..=pos].to_vec();
                    self.consume(pos + 1);
                    return LineEvent::Line(line);
                }
                Some(pos) => {
                    self.consume(pos + 1);
                    return LineEvent::TooLong;
                }
                None if self.discarding => {
                    let n = buf.len();
                    self.consume(n);
                    return LineEvent::NeedMore;
                }
                None if buf.len() >= limit => {
                    let n = buf.len();
                    self.consume(n);
                    self.discarding = true;
                    return LineEvent::TooLong;
                }
                None => return LineEvent::NeedMore,
            }
        }
    }
}

async fn drive<S>(
    conn: &mut Conn<S>,
    session: &mut Session,
    tracker: &mut Tracker,
    slot: &mut Slot,
    at: &Context<'_>,
) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let ctx = at.ctx;
    let mut command_deadline: Option<Instant> = None;
    let mut commands: u64 = 0;
    loop {
        if commands > ctx.max_commands || conn.read_total > ctx.max_session_bytes {
            warn!(commands, bytes = conn.read_total, "session limits exceeded");
            let refusal = SessionError::SessionBudget;
            return close(conn, session, tracker, slot, refusal, at).await;
        }
        if let Some((command, step)) =
            next_step(conn, session, ctx, &mut commands, &mut command_deadline).await
        {
            match perform(step, command, conn, session, tracker, slot, at).await {
                Some(outcome) => return outcome,
                None => continue,
            }
        }

        // Nothing complete to act on: send what we owe, then wait for more.
        if conn.flush(at.write_deadline()).await.is_err() {
            return Outcome::Ended(EndReason::ClientClosed);
        }
        let deadline = (*command_deadline
            .get_or_insert_with(|| Instant::now() + ctx.command_timeout))
        .min(at.session_deadline);
        let idle = conn.buffered().is_empty() && !session.in_sasl();
        if session.device().is_some() {
            slot.logged_in();
        }
        tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled(), if idle => {
                let refusal = SessionError::ShuttingDown;
                return close(conn, session, tracker, slot, refusal, at).await;
            }
            refusal = slot.closing() => {
                info!(reply = %refusal, "session closed");
                return close(conn, session, tracker, slot, refusal, at).await;
            }
            r = timeout_at(deadline, conn.fill()) => match r {
                Err(_) => {
                    info!("timeout waiting for a command");
                    let refusal = SessionError::Timeout;
                    return close(conn, session, tracker, slot, refusal, at).await;
                }
                Ok(Ok(0)) => return Outcome::Ended(EndReason::ClientClosed),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    debug!(error = %e, "read failed");
                    return Outcome::Ended(EndReason::ClientClosed);
                }
            }
        }
    }
}

/// Ends the session with a refusal of our own (a limit, a timeout, no login in time, room
/// needed, a lockout, the relay stopping).
async fn close<S>(
    conn: &mut Conn<S>,
    session: &Session,
    tracker: &mut Tracker,
    slot: &Slot,
    refusal: SessionError,
    at: &Context<'_>,
) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let reply = refusal.reply();
    tracker.send(
        conn,
        session,
        Command::Session,
        &reply,
        About::Command,
        Some(&refusal),
    );
    slot.release();
    let _ = conn.flush(at.write_deadline()).await;
    Outcome::Ended(end_of(&refusal))
}

/// Why a session ends when we close it with `refusal`.
fn end_of(refusal: &SessionError) -> EndReason {
    match refusal {
        SessionError::LockedOut => EndReason::LockedOut,
        SessionError::Timeout | SessionError::LoginTimeout => EndReason::Timeout,
        SessionError::ShuttingDown => EndReason::ShuttingDown,
        _ => EndReason::Limit,
    }
}

/// The session's answer to the next complete line already read, with the command it
/// answers, if there is one. A whole line counts as a command and ends the wait for one
/// (`command_deadline`).
async fn next_step<S>(
    conn: &mut Conn<S>,
    session: &mut Session,
    ctx: &Inbound,
    commands: &mut u64,
    command_deadline: &mut Option<Instant>,
) -> Option<(Command, Step)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let in_sasl = session.in_sasl();
    let limit = if in_sasl {
        ctx.max_line_length.max(MAX_SASL_LINE)
    } else {
        ctx.max_line_length
    };
    match conn.take_line(limit) {
        LineEvent::Line(line) => {
            *command_deadline = None;
            *commands += 1;
            let command = Command::of_line(&line, in_sasl);
            if command == Command::Mail {
                session.set_free_space(ctx.spool.free_space().await);
                session.set_address_locked(ctx.guard.locked(session.peer()).is_some());
            }
            Some((command, session.handle_line(&line)))
        }
        LineEvent::TooLong => {
            warn!(limit, "command line too long");
            let command = if in_sasl {
                Command::Auth
            } else {
                Command::Other
            };
            Some((command, session.line_too_long()))
        }
        LineEvent::NeedMore => None,
    }
}

/// What a step needs besides the connection and the session.
struct Context<'a> {
    ctx: &'a Arc<Inbound>,
    peer: SocketAddr,
    session_deadline: Instant,
}

impl Context<'_> {
    fn write_deadline(&self) -> Instant {
        (Instant::now() + self.ctx.command_timeout)
            .min(self.session_deadline + Duration::from_secs(5))
    }
}

/// Carries out one step: checks a password, receives a message, or just answers. Returns
/// `Some` when the session is over (or switches to TLS).
async fn perform<S>(
    step: Step,
    command: Command,
    conn: &mut Conn<S>,
    session: &mut Session,
    tracker: &mut Tracker,
    slot: &Slot,
    at: &Context<'_>,
) -> Option<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut login = None;
    let step = match step {
        Step::Verify(creds) => {
            if conn.flush(at.write_deadline()).await.is_err() {
                return Some(Outcome::Ended(EndReason::ClientClosed));
            }
            let username = username_of(&creds);
            tracker.tried(&username);
            let result = crate::login::check(at.ctx, creds, at.peer.ip()).await;
            login = Some((username, result.as_ref().err().copied()));
            session.auth_result(result)
        }
        Step::Data(plan) => return message(plan, conn, session, tracker, slot, at).await,
        other => other,
    };
    let mut refusal = session.take_refusal();
    let (reply, about, next) = match step {
        Step::Reply(r) => {
            let about = about_reply(command, &r, session);
            (r, about, None)
        }
        Step::Close(r) => {
            let end = match &refusal {
                _ if command == Command::Quit && r.code() < 400 => EndReason::Quit,
                Some(refusal) => end_of(refusal),
                None => EndReason::Limit,
            };
            let about = match login {
                // A login refused because the address is locked out (the session closes).
                Some((username, reason @ Some(AuthFailure::AddressLockedOut))) => {
                    let username = Some(username);
                    About::LoginFailed { username, reason }
                }
                _ => about_reply(command, &r, session),
            };
            (r, about, Some(Outcome::Ended(end)))
        }
        Step::AuthFailed { reply, close } => {
            let (username, reason) = login.map_or((None, None), |(u, r)| (Some(u), r));
            let about = About::LoginFailed { username, reason };
            if let Verdict::LockedOut(period) = at.ctx.guard.failure(at.peer.ip()) {
                warn!(
                    lockout_secs = period.as_secs(),
                    "address locked out after repeated failed logins"
                );
                refusal = Some(SessionError::LockedOut);
                let ended = Some(Outcome::Ended(EndReason::LockedOut));
                (SessionError::LockedOut.reply(), about, ended)
            } else {
                let ended = close.then_some(Outcome::Ended(EndReason::Limit));
                (reply, about, ended)
            }
        }
        Step::StartTls(r) => (r, About::Command, Some(Outcome::StartTls)),
        Step::Verify(_) | Step::Data(_) => {
            unreachable!("handled above; auth_result never asks to verify again")
        }
    };
    tracker.send(conn, session, command, &reply, about, refusal.as_ref());
    finish_step(conn, next, slot, at).await
}

/// After a step's reply: nothing (read on), or send it before the connection closes or
/// turns to TLS. A session that is over gives its slot back before the device can read that
/// reply (to QUIT, say) and reconnect.
async fn finish_step<S>(
    conn: &mut Conn<S>,
    next: Option<Outcome>,
    slot: &Slot,
    at: &Context<'_>,
) -> Option<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let outcome = next?;
    if matches!(outcome, Outcome::Ended(_)) {
        slot.release();
    }
    match conn.flush(at.write_deadline()).await {
        Ok(()) => Some(outcome),
        Err(_) => Some(Outcome::Ended(EndReason::ClientClosed)),
    }
}

/// What a reply to an ordinary command was about: a login that worked, a sender accepted,
/// a message refused at MAIL or DATA.
fn about_reply(command: Command, reply: &Reply, session: &Session) -> About {
    let refused = reply.code() >= 400;
    match command {
        Command::Auth if reply.code() == 235 => About::LoggedIn,
        // The envelope is written out only for the replies about it, not for every command.
        Command::Mail if !refused => About::SenderAccepted {
            sender: session.envelope().0.unwrap_or_default(),
        },
        Command::Mail | Command::Data if refused => {
            let (sender, recipients) = session.envelope();
            About::MessageRefused(MessageInfo {
                sender: sender.unwrap_or_default(),
                recipients,
                size: 0,
            })
        }
        _ => About::Command,
    }
}

/// The username of a login attempt, for observers (never the password).
fn username_of(creds: &crate::sasl::Credentials) -> String {
    let name = String::from_utf8_lossy(&creds.username);
    truncate_at_char(&name, observe::MAX_USERNAME).to_string()
}

/// Receives a message after DATA, hands it on, and answers its final dot.
async fn message<S>(
    plan: DataPlan,
    conn: &mut Conn<S>,
    session: &mut Session,
    tracker: &mut Tracker,
    slot: &Slot,
    at: &Context<'_>,
) -> Option<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    tracker.send(
        conn,
        session,
        Command::Data,
        &ok::start_data(),
        About::Command,
        None,
    );
    if conn.flush(at.write_deadline()).await.is_err() {
        return Some(Outcome::Ended(EndReason::ClientClosed));
    }
    let (outcome, size) =
        receive_message(conn, session, at.ctx, &plan, at.peer, at.session_deadline).await;
    let message = MessageInfo {
        sender: match &plan.original_sender {
            Some(given) => given.to_string(),
            None => plan.sender.to_string(),
        },
        recipients: plan.recipients.iter().map(ToString::to_string).collect(),
        size,
    };
    let (reply, about, refusal, next) = match outcome {
        DataOutcome::Queued { queue_id, reply } => {
            let about = About::MessageQueued { queue_id, message };
            (reply, about, None, None)
        }
        DataOutcome::Refused(refusal) => {
            let about = About::MessageRefused(message);
            (refusal.reply(), about, Some(refusal), None)
        }
        DataOutcome::Close(refusal) => {
            let end = end_of(&refusal);
            let about = About::MessageRefused(message);
            (
                refusal.reply(),
                about,
                Some(refusal),
                Some(Outcome::Ended(end)),
            )
        }
        DataOutcome::Gone => return Some(Outcome::Ended(EndReason::ClientClosed)),
    };
    tracker.send(
        conn,
        session,
        Command::Message,
        &reply,
        about,
        refusal.as_ref(),
    );
    finish_step(conn, next, slot, at).await
}

/// How receiving a message ended.
enum DataOutcome {
    /// It was queued; the scheduler's answer for the device.
    Queued { queue_id: String, reply: Reply },
    /// We refused it; the session goes on.
    Refused(SessionError),
    /// We refused it, and the session ends.
    Close(SessionError),
    /// The device went away before its final dot.
    Gone,
}

/// Receives one message body into the spool and hands the committed message on; returns how
/// that ended and the size received.
async fn receive_message<S>(
    conn: &mut Conn<S>,
    session: &mut Session,
    ctx: &Arc<Inbound>,
    plan: &DataPlan,
    peer: SocketAddr,
    session_deadline: Instant,
) -> (DataOutcome, u64)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut sink = BodySink::open(ctx, session, plan, peer).await;
    // The device's account may take less than the server (a Graph route without a fallback).
    let size_limit = plan
        .device
        .max_message_size
        .min(ctx.limits.max_message_size);
    let mut decoder = DotDecoder::new(size_limit);
    if let Err(end) = read_body(conn, ctx, &mut decoder, &mut sink, session_deadline).await {
        sink.abort().await;
        return (end, decoder.size());
    }
    let committed = if decoder.over_limit() {
        info!(
            size = decoder.size(),
            limit = size_limit,
            account = %plan.device.account,
            "message refused: too large"
        );
        sink.abort().await;
        Err(SessionError::MessageTooBig(size_limit))
    } else {
        sink.log_rewrites(plan);
        sink.commit(decoder.saw_eight_bit()).await
    };
    let outcome = match committed {
        Ok(queued) => {
            debug!(queue_id = %queued.id(), size = queued.envelope.size, "message spooled");
            if let Some(m) = &ctx.metrics {
                let labels = AccountLabels {
                    account: queued.envelope.account.clone(),
                };
                m.messages_received.get_or_create(&labels).inc();
                m.received_bytes
                    .get_or_create(&labels)
                    .inc_by(queued.envelope.size);
            }
            let queue_id = queued.id().as_str().to_string();
            let reply = ctx.submit.submit(queued).await;
            DataOutcome::Queued { queue_id, reply }
        }
        Err(_) if session.data_refused() => DataOutcome::Close(SessionError::TooManyErrors),
        Err(refusal) => DataOutcome::Refused(refusal),
    };
    (outcome, decoder.size())
}

/// Reads the body up to its final dot, into `sink`. `Err` is what to do when the device timed
/// out or went away before the end.
async fn read_body<S>(
    conn: &mut Conn<S>,
    ctx: &Inbound,
    decoder: &mut DotDecoder,
    sink: &mut BodySink,
    session_deadline: Instant,
) -> Result<(), DataOutcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut decoded = Vec::with_capacity(WRITE_CHUNK + 1024);
    loop {
        let r = decoder.decode(conn.buffered(), &mut decoded);
        conn.consume(r.consumed);
        if decoded.len() >= WRITE_CHUNK || r.done {
            sink.push(&decoded, r.done, decoder.over_limit()).await;
            decoded.clear();
        }
        if r.done {
            return Ok(());
        }
        let deadline = (Instant::now() + ctx.data_timeout).min(session_deadline);
        match timeout_at(deadline, conn.fill()).await {
            Err(_) => {
                info!("timeout while receiving message data");
                return Err(DataOutcome::Close(SessionError::Timeout));
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                warn!(
                    received = decoder.size(),
                    "client disconnected during DATA; nothing was accepted"
                );
                return Err(DataOutcome::Gone);
            }
            Ok(Ok(_)) => {}
        }
    }
}

/// The refusal a device hears when the spool cannot take its message: decided here only.
fn storage_refusal(e: &SpoolError) -> SessionError {
    if e.is_full() {
        SessionError::StorageFull
    } else {
        SessionError::LocalError
    }
}

/// Where a message body goes: its spool file, behind our Received header and through the
/// From rewriter. When the spool fails, the failure is kept and the rest of the body read and
/// dropped, so the device hears the refusal after its final dot.
struct BodySink {
    incoming: Option<Incoming>,
    failed: Option<SpoolError>,
    rewriter: Option<HeaderRewriter>,
    /// Bytes on their way to the spool (after the rewriter).
    staged: Vec<u8>,
}

impl BodySink {
    async fn open(ctx: &Inbound, session: &Session, plan: &DataPlan, peer: SocketAddr) -> Self {
        let client_ip = crate::identity::normalise_ip(peer.ip()).to_string();
        let envelope = Envelope {
            id: MessageId::default(),
            received_at_ms: smtp2oauth_spool::now_ms(),
            account: plan.device.account.clone(),
            device: plan.device.name.clone(),
            listener: session.listener().label.clone(),
            client_ip: client_ip.clone(),
            helo: plan.helo.clone(),
            sender: plan.sender.to_string(),
            original_sender: plan.original_sender.as_ref().map(ToString::to_string),
            recipients: plan.recipients.iter().map(ToString::to_string).collect(),
            eight_bit: false,
            smtputf8: plan.smtputf8,
            size: 0,
            crc32c: 0,
            notice: false,
            session: session.id,
        };
        let mut sink = BodySink {
            incoming: None,
            failed: None,
            rewriter: plan
                .device
                .policy
                .rewrite
                .then(|| HeaderRewriter::new(plan.device.policy.clone())),
            staged: Vec::with_capacity(WRITE_CHUNK + 1024),
        };
        match ctx.spool.receive(envelope).await {
            Ok(inc) => sink.incoming = Some(inc),
            Err(e) => {
                error!(error = %e, "cannot create a spool file; the message will be refused");
                sink.failed = Some(e);
                return sink;
            }
        }
        if let Some(inc) = &sink.incoming
            && ctx.add_received_header
        {
            let header = received_header(&ReceivedInfo {
                helo: &plan.helo,
                client_ip: &client_ip,
                hostname: &ctx.hostname,
                esmtp: plan.esmtp,
                tls: plan.tls,
                authenticated: plan.authenticated,
                queue_id: inc.id().as_str(),
                single_recipient: (plan.recipients.len() == 1).then(|| &plan.recipients[0]),
                unix_time: smtp2oauth_spool::now_ms() / 1000,
            });
            sink.staged.extend_from_slice(header.as_bytes());
        }
        sink
    }

    /// Takes decoded body bytes (`done` with the last ones). A message over its size limit is
    /// not written any further: its file goes, the rest is only counted.
    async fn push(&mut self, decoded: &[u8], done: bool, over_limit: bool) {
        match self.rewriter.as_mut() {
            Some(rw) => rw.push(decoded, &mut self.staged),
            None => self.staged.extend_from_slice(decoded),
        }
        if done && let Some(rw) = self.rewriter.as_mut() {
            rw.finish(&mut self.staged);
        }
        if over_limit {
            self.abort().await;
        } else if let Some(inc) = self.incoming.as_mut()
            && let Err(e) = inc.write(&self.staged).await
        {
            error!(error = %e, "writing to the spool failed; the message will be refused");
            self.failed = Some(e);
            self.abort().await;
        }
        self.staged.clear();
    }

    /// Gives up the spool file (if any).
    async fn abort(&mut self) {
        if let Some(inc) = self.incoming.take() {
            inc.abort().await;
        }
    }

    fn log_rewrites(&self, plan: &DataPlan) {
        let Some(rw) = &self.rewriter else { return };
        let o = &rw.outcome;
        if let Some(orig) = &o.from_rewritten {
            info!(from = %orig.escape_debug(), to = %plan.device.policy.mailbox, "header From rewritten");
        }
        if o.from_added {
            info!(to = %plan.device.policy.mailbox, "header From added");
        }
        if o.fields_removed > 0 {
            info!(
                removed = o.fields_removed,
                "second From or Sender header removed"
            );
        }
        if o.too_large {
            warn!("header block too large to rewrite; passed unchanged");
        }
    }

    /// Makes the message durable, or says how the device is refused.
    async fn commit(mut self, eight_bit: bool) -> Result<Queued, SessionError> {
        if let Some(e) = &self.failed {
            return Err(storage_refusal(e));
        }
        let Some(inc) = self.incoming.take() else {
            return Err(SessionError::LocalError);
        };
        inc.commit(eight_bit).await.map_err(|e| {
            error!(error = %e, "committing the message to the spool failed; refused");
            storage_refusal(&e)
        })
    }
}

mod track;

#[cfg(test)]
mod tests;

//! A fake upstream SMTP submission server that behaves like Exchange Online
//! (smtp.office365.com:587).
//!
//! Why: the relay's upstream client must speak ESMTP exactly right to a strict peer: EHLO,
//! STARTTLS (and nothing pipelined behind it), EHLO again, AUTH XOAUTH2 (or, when enabled, AUTH
//! OAUTHBEARER per RFC 7628, GS2 header, host and port checked) with a token that really came
//! from the identity platform, MAIL/RCPT/DATA (or BDAT) with correct dot-stuffing, SIZE and
//! pipelining. This server enforces all of that, stores what it received byte for byte, answers
//! with Exchange's texts and codes, and can be scripted per test (a reply instead of the normal
//! one at any stage, a dropped connection, slow replies) so the relay's failure handling can be
//! driven deterministically. Commands are parsed with smtp-proto (the parser Stalwart uses);
//! line framing, the DATA decoder and all policy are ours, because a fake must be exact about
//! what ends a line and a body.
//!
//! Strictness beyond Exchange, chosen to catch relay bugs: command lines must end in CRLF;
//! ESMTP parameters and AUTH/STARTTLS/BDAT need EHLO (not HELO); with `advertise_pipelining =
//! false` any command sent before the previous reply is refused with 503 5.5.0.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use smtp_proto::{Error as ParseError, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

pub use crate::idp::TokenValidator;
use crate::lock;

/// Hostname used in the greeting, EHLO and replies.
pub const HOSTNAME: &str = "fake.outlook.test";
/// Longest command line accepted, CRLF included.
pub const MAX_COMMAND_LINE: usize = 4096;
/// Longest AUTH command or SASL response line (RFC 4954 section 4 raises the limit to 12288).
pub const MAX_AUTH_LINE: usize = 12288;
/// Exchange Online's per-message recipient limit.
pub const MAX_RECIPIENTS: usize = 500;

const MS_AUTH_FAILED: &str =
    "535 5.7.3 Authentication unsuccessful [SN4PR0601CA0001.namprd06.prod.outlook.com]";
const GOOGLE_ERROR_JSON: &str =
    r#"{"status":"401","schemes":"Bearer","scope":"https://mail.google.com/"}"#;
/// RFC 7628 section 3.2.2: the error a server sends as a challenge; `{status}` is filled in.
const OAUTHBEARER_ERROR_JSON: &str =
    r#"{"status":"{status}","schemes":"bearer","scope":"https://mail.example.com/"}"#;
/// The final reply after the client acknowledged the error (RFC 7628 section 4.3).
const OAUTHBEARER_AUTH_FAILED: &str = "535 5.7.8 Authentication credentials invalid";
const GOOGLE_AUTH_FAILED: &str = "535-5.7.8 Username and Password not accepted. Learn more at\r\n\
                                  535 5.7.8  https://support.google.com/mail/?p=BadCredentials";

/// How the upstream offers TLS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UpstreamTls {
    /// Plain connect, STARTTLS required before AUTH and MAIL (Exchange Online on 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465 style).
    Implicit,
    /// No TLS at all; AUTH is offered in clear (for smart-host style tests).
    None,
}

/// How a refused XOAUTH2 attempt is answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AuthFailureStyle {
    /// `535 5.7.3 Authentication unsuccessful [...]` directly.
    #[default]
    Microsoft,
    /// `334 <base64 JSON>` challenge; the client must send an empty line, then `535 5.7.8`.
    Google,
}

/// Points in a session where a test can script a reply or a dropped connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Greeting time.
    Connect,
    /// EHLO or HELO.
    Ehlo,
    StartTls,
    /// The AUTH command.
    Auth,
    Mail,
    Rcpt,
    /// The DATA command (or the first BDAT of a transaction).
    Data,
    /// Script: after the body's final dot (or the BDAT LAST chunk). Drop: after part of the body.
    DataBody,
    Rset,
    Quit,
}

/// The fake's configuration. Prefer [`SmtpConfig::microsoft`] and adjust fields.
#[derive(Clone)]
pub struct SmtpConfig {
    pub tls: UpstreamTls,
    /// Server TLS config (from `TestPki::server_config()`); required unless `tls` is `None`.
    pub pki: Option<Arc<rustls::ServerConfig>>,
    /// The only `user=` accepted in XOAUTH2 (compared case-insensitively).
    pub mailbox: String,
    /// Validates the bearer token, e.g. `FakeIdp::validator()`.
    pub validator: TokenValidator,
    pub failure_style: AuthFailureStyle,
    /// Delay before every write of replies (one WAN round trip per flush: a pipelined group of
    /// replies costs one delay, a lock-step exchange one per command).
    pub reply_delay: Duration,
    pub advertise_pipelining: bool,
    /// Advertised SIZE, enforced on MAIL SIZE= and on the body.
    pub max_size: usize,
    /// MAIL needs a successful AUTH (submission). `false`: a port-25 smart host that takes
    /// mail from anyone it lets in (a connector), like Exchange Online Protection's MX.
    pub require_auth: bool,
    /// Offer and accept AUTH XOAUTH2 (Exchange Online's only OAuth mechanism). `false`: AUTH
    /// XOAUTH2 gets `504 5.7.4`, as from a server that speaks only the standard mechanism.
    pub xoauth2: bool,
    /// Offer and accept AUTH OAUTHBEARER (RFC 7628), as Gmail and standards-based servers do:
    /// the GS2 header must be `n,a=<mailbox>,` (or `y,`; channel binding is refused), `host=`
    /// must name this server (the TLS SNI when there was one, else `fake.outlook.test`,
    /// `localhost` or its IP address) and `port=` its port. A refusal is a `334` with a base64
    /// JSON error; the client must answer a single `%x01` (`AQ==`) to get the final `535 5.7.8`.
    pub oauthbearer: bool,
    /// Exchange Online's limit of concurrent authenticated sessions per mailbox: an AUTH that
    /// would exceed it gets `432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded`.
    /// On (3) for [`SmtpConfig::microsoft`], so every test runs against it; `None`: no limit.
    /// Changed at run time with [`FakeSmtp::set_max_sessions_per_mailbox`].
    pub max_sessions_per_mailbox: Option<usize>,
    /// Exchange's Send As check: a MAIL FROM not in the list (case-insensitive) is refused
    /// after the body with `554 5.2.252 SendAsDenied`. For [`SmtpConfig::microsoft`] the list
    /// is the mailbox alone; `None`: any sender. Changed with [`FakeSmtp::set_send_as`].
    pub send_as: Option<Vec<String>>,
}

impl std::fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("tls", &self.tls)
            .field("pki", &self.pki.is_some())
            .field("mailbox", &self.mailbox)
            .field("failure_style", &self.failure_style)
            .field("reply_delay", &self.reply_delay)
            .field("advertise_pipelining", &self.advertise_pipelining)
            .field("max_size", &self.max_size)
            .field("require_auth", &self.require_auth)
            .field("xoauth2", &self.xoauth2)
            .field("oauthbearer", &self.oauthbearer)
            .field("max_sessions_per_mailbox", &self.max_sessions_per_mailbox)
            .field("send_as", &self.send_as)
            .finish_non_exhaustive()
    }
}

impl SmtpConfig {
    /// Exchange Online defaults: STARTTLS, Microsoft failure style, no delay, PIPELINING,
    /// SIZE 157286400, at most 3 sessions for the mailbox, Send As only as the mailbox. The
    /// validator (e.g. `FakeIdp::validator()`) decides which tokens log in; the IdP's refuses
    /// a token issued for another resource, such as Graph.
    pub fn microsoft(
        pki: Arc<rustls::ServerConfig>,
        mailbox: &str,
        validator: TokenValidator,
    ) -> Self {
        SmtpConfig {
            tls: UpstreamTls::Starttls,
            pki: Some(pki),
            mailbox: mailbox.to_string(),
            validator,
            failure_style: AuthFailureStyle::Microsoft,
            reply_delay: Duration::ZERO,
            advertise_pipelining: true,
            max_size: 157_286_400,
            require_auth: true,
            xoauth2: true,
            oauthbearer: false,
            max_sessions_per_mailbox: Some(3),
            send_as: Some(vec![mailbox.to_string()]),
        }
    }

    /// A smart host on port 25 behind an inbound connector: STARTTLS offered (and required
    /// before MAIL when `tls` is `Starttls`), no AUTH needed. For a certificate-based connector
    /// use `TestPki::server_config_with_client_auth()` as `pki`: the handshake then requires a
    /// client certificate from the test CA, recorded in [`ReceivedMessage::client_cert`].
    pub fn smarthost(pki: Arc<rustls::ServerConfig>) -> Self {
        SmtpConfig {
            require_auth: false,
            // A connector takes mail for its domains from anyone it lets in, any number of
            // connections at a time.
            max_sessions_per_mailbox: None,
            send_as: None,
            ..SmtpConfig::microsoft(pki, "", Arc::new(|_: &str| Err("no AUTH here".to_string())))
        }
    }
}

/// One accepted message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedMessage {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// The message after dot-unstuffing, without the terminating CRLF.CRLF (for BDAT: the
    /// concatenated chunks, exactly).
    pub data: Vec<u8>,
    /// The `user=` the session authenticated as, as the client spelled it.
    pub auth_user: String,
    pub tls: bool,
    /// Raw MAIL FROM parameters, e.g. "SIZE=123 BODY=8BITMIME".
    pub mail_params: String,
    pub connection_id: usize,
    /// DER of the TLS client certificate the session presented, if any.
    pub client_cert: Option<Vec<u8>>,
}

impl ReceivedMessage {
    /// The data as text (lossy), for assertions and debugging.
    pub fn data_str(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

#[derive(Clone, Debug)]
enum Action {
    Reply(String),
    Drop,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ActionKind {
    Any,
    ReplyOnly,
    DropOnly,
}

struct ScriptEntry {
    stage: Stage,
    action: Action,
    remaining: usize,
}

#[derive(Default)]
struct SmtpState {
    messages: Vec<ReceivedMessage>,
    transcript: Vec<String>,
    scripts: Vec<ScriptEntry>,
    connections: usize,
    active: usize,
    peak: usize,
    auth_successes: usize,
    auth_failures: usize,
    authenticated_sessions: usize,
    max_sessions_per_mailbox: Option<usize>,
    send_as: Option<Vec<String>>,
    /// `set_password_login`: the one user and password accepted with AUTH PLAIN and LOGIN.
    password_login: Option<(String, String)>,
    reply_delay: Duration,
    next_message: u64,
}

struct Inner {
    cfg: SmtpConfig,
    addr: SocketAddr,
    state: Mutex<SmtpState>,
    msg_count: watch::Sender<usize>,
    shutdown: watch::Sender<bool>,
    /// Bumped by `close_connections`: every open session ends.
    kick: watch::Sender<u64>,
}

impl Inner {
    fn note(&self, conn: usize, text: &str) {
        lock(&self.state)
            .transcript
            .push(format!("[{conn}] -- {text}"));
    }

    fn take_action(&self, stage: Stage, kind: ActionKind) -> Option<Action> {
        let mut st = lock(&self.state);
        let entry = st.scripts.iter_mut().find(|e| {
            e.stage == stage
                && e.remaining > 0
                && match kind {
                    ActionKind::Any => true,
                    ActionKind::ReplyOnly => matches!(e.action, Action::Reply(_)),
                    ActionKind::DropOnly => matches!(e.action, Action::Drop),
                }
        })?;
        entry.remaining -= 1;
        let action = entry.action.clone();
        st.scripts.retain(|e| e.remaining > 0);
        Some(action)
    }

    async fn wait_shutdown(&self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// Resolves when `close_connections` is called after `rx` was made.
async fn kicked(mut rx: watch::Receiver<u64>) {
    let _ = rx.changed().await;
}

struct ShutdownGuard(Arc<Inner>);

impl Drop for ShutdownGuard {
    fn drop(&mut self) {
        self.0.shutdown.send_replace(true);
    }
}

/// Handle to a running fake upstream. Cheap to clone; the server (and every open session)
/// stops when the last clone drops or [`shutdown`](Self::shutdown) is called.
#[derive(Clone)]
pub struct FakeSmtp {
    inner: Arc<Inner>,
    _guard: Arc<ShutdownGuard>,
}

impl std::fmt::Debug for FakeSmtp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeSmtp")
            .field("addr", &self.inner.addr)
            .finish()
    }
}

impl FakeSmtp {
    /// Binds 127.0.0.1 on an OS-assigned port and starts accepting on a tokio task.
    ///
    /// Panics if `tls` needs a certificate and `pki` is `None` (a test bug).
    pub async fn start(cfg: SmtpConfig) -> FakeSmtp {
        assert!(
            cfg.tls == UpstreamTls::None || cfg.pki.is_some(),
            "SmtpConfig::pki is required for {:?}",
            cfg.tls
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0 for FakeSmtp");
        let addr = listener.local_addr().expect("local addr");
        let (shutdown, _) = watch::channel(false);
        let (msg_count, _) = watch::channel(0usize);
        let (kick, _) = watch::channel(0u64);
        let state = SmtpState {
            reply_delay: cfg.reply_delay,
            max_sessions_per_mailbox: cfg.max_sessions_per_mailbox,
            send_as: cfg.send_as.clone(),
            ..SmtpState::default()
        };
        let inner = Arc::new(Inner {
            cfg,
            addr,
            state: Mutex::new(state),
            msg_count,
            shutdown,
            kick,
        });
        let acceptor = inner.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    r = listener.accept() => r,
                    _ = acceptor.wait_shutdown() => return,
                };
                let (tcp, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends are transient; do not spin.
                        tracing::warn!("FakeSmtp accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let id = {
                    let mut st = lock(&acceptor.state);
                    st.connections += 1;
                    st.active += 1;
                    st.peak = st.peak.max(st.active);
                    st.connections
                };
                let inner = acceptor.clone();
                let kick = acceptor.kick.subscribe();
                tokio::spawn(async move {
                    let _active = ActiveGuard(inner.clone());
                    tokio::select! {
                        _ = run_session(inner.clone(), tcp, peer.ip(), id) => {}
                        _ = inner.wait_shutdown() => {}
                        _ = kicked(kick) => inner.note(id, "connection closed by the server (close_connections)"),
                    }
                });
            }
        });
        FakeSmtp {
            _guard: Arc::new(ShutdownGuard(inner.clone())),
            inner,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }
    pub fn port(&self) -> u16 {
        self.inner.addr.port()
    }
    /// The name the server uses for itself ("fake.outlook.test"; the certificate covers it).
    pub fn hostname(&self) -> &'static str {
        HOSTNAME
    }
    pub fn messages(&self) -> Vec<ReceivedMessage> {
        lock(&self.inner.state).messages.clone()
    }
    /// Removes and returns the stored messages (counting for `wait_for_messages` restarts at 0).
    pub fn take_messages(&self) -> Vec<ReceivedMessage> {
        let taken = std::mem::take(&mut lock(&self.inner.state).messages);
        self.inner.msg_count.send_replace(0);
        taken
    }
    /// Returns once at least `n` messages are stored, or at `timeout` with what there is.
    pub async fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<ReceivedMessage> {
        let mut rx = self.inner.msg_count.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|count| *count >= n)).await;
        self.messages()
    }
    /// Drops every open connection without a word, as a server does that restarts or times
    /// out idle sessions. New connections are served as usual.
    pub fn close_connections(&self) {
        self.inner.kick.send_modify(|k| *k += 1);
    }
    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        lock(&self.inner.state).connections
    }
    /// Connections open right now.
    pub fn active_connections(&self) -> usize {
        lock(&self.inner.state).active
    }
    /// Most connections ever open at once (to check the relay respects Exchange's limit of 3).
    pub fn peak_connections(&self) -> usize {
        lock(&self.inner.state).peak
    }
    pub fn auth_successes(&self) -> usize {
        lock(&self.inner.state).auth_successes
    }
    /// Refused AUTH attempts (bad token, wrong mailbox, malformed response, basic auth, scripted
    /// 4xx/5xx at Stage::Auth).
    pub fn auth_failures(&self) -> usize {
        lock(&self.inner.state).auth_failures
    }
    /// Every command line received and reply line sent, in order, as "[conn] C: ..." /
    /// "[conn] S: ..."; AUTH payloads are redacted; "[conn] -- ..." lines are the fake's notes
    /// (TLS up, token refused and why, dropped, ...).
    pub fn transcript(&self) -> Vec<String> {
        lock(&self.inner.state).transcript.clone()
    }
    /// The next `count` times `stage` is reached, answer `reply` instead of the normal answer.
    ///
    /// A 4xx/5xx reply replaces the command's effect (nothing is started, stored or
    /// authenticated; 421 also closes the connection, as does any reply at Connect that is not
    /// 2xx, and any reply at Quit). A 2xx/3xx reply lets normal processing run and only replaces
    /// the text of its success reply. Multi-line replies may be given with "\n" or "\r\n"
    /// separators; continuation hyphens are added where missing.
    pub fn script(&self, stage: Stage, reply: &str, count: usize) {
        let reply = normalize_reply(reply);
        lock(&self.inner.state).scripts.push(ScriptEntry {
            stage,
            action: Action::Reply(reply),
            remaining: count,
        });
    }
    /// Drop the TCP connection without replying when `stage` is reached, `count` times.
    /// `Stage::DataBody` drops after part of the body has been received.
    pub fn drop_at(&self, stage: Stage, count: usize) {
        lock(&self.inner.state).scripts.push(ScriptEntry {
            stage,
            action: Action::Drop,
            remaining: count,
        });
    }
    /// Scripted replies and drops not used yet (a chaos driver adds one only when the last one
    /// was used, so faults never pile up while the client is away).
    pub fn pending_scripts(&self) -> usize {
        lock(&self.inner.state)
            .scripts
            .iter()
            .map(|e| e.remaining)
            .sum()
    }
    pub fn clear_scripts(&self) {
        lock(&self.inner.state).scripts.clear();
    }
    /// Exchange's Send As check (on by default, see [`SmtpConfig::send_as`]): when `Some`, a
    /// message whose MAIL FROM is not in the list (case-insensitive) is refused after the body
    /// with `554 5.2.252 SendAsDenied`.
    pub fn set_send_as(&self, allowed: Option<Vec<String>>) {
        lock(&self.inner.state).send_as = allowed;
    }
    /// Exchange's concurrent-session limit per mailbox (3 by default, see
    /// [`SmtpConfig::max_sessions_per_mailbox`]): an AUTH that would exceed it gets
    /// `432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded`.
    pub fn set_max_sessions_per_mailbox(&self, max: Option<usize>) {
        lock(&self.inner.state).max_sessions_per_mailbox = max;
    }
    pub fn set_reply_delay(&self, d: Duration) {
        lock(&self.inner.state).reply_delay = d;
    }
    /// Also accept AUTH PLAIN and AUTH LOGIN (after STARTTLS, like XOAUTH2) for exactly this
    /// user and password, as a smart host with basic authentication does; `None` (the default)
    /// refuses them like Exchange Online. For peers that cannot speak XOAUTH2, e.g. Postfix in
    /// the benchmark, so they deliver to the same strict sink. XOAUTH2 keeps working as before.
    pub fn set_password_login(&self, login: Option<(String, String)>) {
        lock(&self.inner.state).password_login = login;
    }
    /// Stop listening and drop every open session now.
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }
}

struct ActiveGuard(Arc<Inner>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let mut st = lock(&self.0.state);
        st.active = st.active.saturating_sub(1);
    }
}

/// "554 a\n554 b" → "554-a\r\n554 b"; trims trailing empty lines.
fn normalize_reply(reply: &str) -> String {
    let lines: Vec<&str> = reply
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    let end = lines
        .iter()
        .rposition(|l| !l.is_empty())
        .map_or(0, |i| i + 1);
    let lines = &lines[..end];
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let b = l.as_bytes();
            if i + 1 < lines.len()
                && b.len() >= 4
                && b[..3].iter().all(u8::is_ascii_digit)
                && b[3] == b' '
            {
                format!("{}-{}", &l[..3], &l[4..])
            } else {
                (*l).to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

fn code_of(reply: &str) -> u16 {
    reply.get(..3).and_then(|c| c.parse().ok()).unwrap_or(500)
}

// ---------------------------------------------------------------------------------------------
// Connection I/O

enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Conn {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf).await,
            Conn::Tls(s) => s.read(buf).await,
        }
    }
    async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
            Conn::Tls(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
        }
    }
    async fn shutdown(&mut self) {
        let _ = match self {
            Conn::Plain(s) => s.shutdown().await,
            Conn::Tls(s) => s.shutdown().await,
        };
    }
}

async fn tls_accept(
    cfg: &Arc<rustls::ServerConfig>,
    tcp: TcpStream,
) -> Result<tokio_rustls::server::TlsStream<TcpStream>, String> {
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg.clone());
    match tokio::time::timeout(Duration::from_secs(30), acceptor.accept(tcp)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("handshake timed out".to_string()),
    }
}

/// The first certificate the client presented, if it presented one.
fn peer_cert(s: &tokio_rustls::server::TlsStream<TcpStream>) -> Option<Vec<u8>> {
    s.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
}

/// What the protocol engine wants the I/O loop to do next.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    NeedMore,
    StartTls,
    Close,
    Drop,
}

async fn run_session(inner: Arc<Inner>, tcp: TcpStream, peer: IpAddr, id: usize) {
    let _ = tcp.set_nodelay(true);
    let mut sess = Session::new(inner.clone(), id, peer);
    let mut conn = Conn::Plain(tcp);
    inner.note(id, &format!("connected from {peer}"));

    if inner.cfg.tls == UpstreamTls::Implicit {
        let (Conn::Plain(tcp), Some(cfg)) = (conn, inner.cfg.pki.as_ref()) else {
            return;
        };
        match tls_accept(cfg, tcp).await {
            Ok(s) => {
                sess.client_cert = peer_cert(&s);
                sess.sni = s.get_ref().1.server_name().map(str::to_string);
                conn = Conn::Tls(Box::new(s));
            }
            Err(e) => return inner.note(id, &format!("TLS handshake failed: {e}")),
        }
        sess.tls = true;
        inner.note(id, "TLS established (implicit)");
    }

    let mut close_after_greeting = false;
    match inner.take_action(Stage::Connect, ActionKind::Any) {
        Some(Action::Drop) => return inner.note(id, "dropped at Connect (scripted)"),
        Some(Action::Reply(r)) => {
            close_after_greeting = code_of(&r) / 100 != 2;
            sess.reply(&r);
        }
        None => sess.reply(&format!(
            "220 {HOSTNAME} Microsoft ESMTP MAIL Service ready"
        )),
    }
    if sess.flush(&mut conn).await.is_err() {
        return;
    }
    if close_after_greeting {
        conn.shutdown().await;
        return inner.note(id, "closed after scripted greeting");
    }

    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let flow = sess.process();
        if sess.flush(&mut conn).await.is_err() {
            return inner.note(id, "write failed; client gone");
        }
        match flow {
            Flow::NeedMore => {}
            Flow::Close => {
                conn.shutdown().await;
                return inner.note(id, "closed");
            }
            Flow::Drop => return inner.note(id, "connection dropped (scripted)"),
            Flow::StartTls => {
                let (Conn::Plain(tcp), Some(cfg)) = (conn, inner.cfg.pki.as_ref()) else {
                    return;
                };
                match tls_accept(cfg, tcp).await {
                    Ok(s) => {
                        sess.client_cert = peer_cert(&s);
                        sess.sni = s.get_ref().1.server_name().map(str::to_string);
                        conn = Conn::Tls(Box::new(s));
                    }
                    Err(e) => return inner.note(id, &format!("TLS handshake failed: {e}")),
                }
                sess.tls = true;
                inner.note(id, "TLS established (STARTTLS)");
                continue;
            }
        }
        match conn.read(&mut buf).await {
            Ok(0) => return inner.note(id, "client closed the connection"),
            Ok(n) => sess.inbuf.extend_from_slice(&buf[..n]),
            Err(e) => return inner.note(id, &format!("read failed: {e}")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Protocol engine (synchronous: bytes in, replies out)

#[derive(Clone, Copy, PartialEq, Eq)]
enum Greeting {
    None,
    Helo,
    Ehlo,
}

struct Transaction {
    from: String,
    params: String,
    binarymime: bool,
    smtputf8: bool,
    rcpts: Vec<String>,
    /// A BDAT chunk has been accepted: DATA and more RCPTs are now out of sequence.
    bdat_started: bool,
    /// A BDAT chunk was refused: later BDATs get 503 until RSET (RFC 3030).
    bdat_failed: bool,
    bdat_data: Vec<u8>,
    bdat_too_big: bool,
}

/// DATA body decoder state: only CRLF "." CRLF ends the body; a leading dot is removed from
/// every other line; bare CR and LF are data.
#[derive(Default)]
struct DataRx {
    body: Vec<u8>,
    size: usize,
    too_big: bool,
    /// The previous byte ended a CRLF (true right after the DATA command's CRLF).
    at_line_start: bool,
    started: bool,
}

/// Feeds `buf` to the decoder; returns (bytes consumed, body complete). Stops early (consuming
/// less) only when it needs more bytes to decide, so the caller keeps the rest in its buffer.
fn ingest_data(rx: &mut DataRx, buf: &[u8], max: usize) -> (usize, bool) {
    fn push(rx: &mut DataRx, bytes: &[u8], max: usize) {
        rx.size += bytes.len();
        if rx.size > max {
            // Keep counting, stop storing: the 552 comes after the final dot.
            rx.too_big = true;
        } else {
            rx.body.extend_from_slice(bytes);
        }
    }
    let mut i = 0;
    loop {
        let rest = &buf[i..];
        if rx.at_line_start {
            match rest {
                [] | [b'.'] | [b'.', b'\r'] => return (i, false),
                [b'.', b'\r', b'\n', ..] => return (i + 3, true),
                [b'.', ..] => {
                    i += 1; // dot-unstuffing
                    rx.at_line_start = false;
                    continue;
                }
                _ => rx.at_line_start = false,
            }
        }
        let rest = &buf[i..];
        // Find the next CRLF; a bare LF is data.
        let mut from = 0;
        let crlf = loop {
            match rest[from..].iter().position(|&b| b == b'\n') {
                Some(p) if from + p > 0 && rest[from + p - 1] == b'\r' => break Some(from + p),
                Some(p) => from += p + 1,
                None => break None,
            }
        };
        match crlf {
            Some(lf) => {
                push(rx, &rest[..=lf], max);
                i += lf + 1;
                rx.at_line_start = true;
            }
            None => {
                // Hold back a trailing CR: it may be the start of the CRLF that ends this line.
                let n = rest.len() - usize::from(rest.last() == Some(&b'\r'));
                push(rx, &rest[..n], max);
                return (i + n, false);
            }
        }
    }
}

enum Mode {
    Command,
    /// After an over-long line: discard up to and including the next LF.
    DiscardLine,
    /// Waiting for a SASL response line.
    AuthXoauth2,
    AuthOauthbearer,
    /// AUTH PLAIN without an initial response (password login enabled).
    AuthPlain,
    AuthLoginUser,
    /// Waiting for the password; holds the decoded user name when there was one.
    AuthLoginPassword(Option<String>),
    /// Google style: waiting for the empty line that acknowledges the error challenge.
    GoogleAck,
    /// RFC 7628: waiting for the `%x01` that acknowledges the error challenge.
    OauthbearerAck,
    Data(DataRx),
    /// Reading a BDAT chunk's octets (always consumed, even when the chunk is refused).
    Bdat {
        remaining: usize,
        last: bool,
        outcome: BdatOutcome,
        started: bool,
    },
}

enum BdatOutcome {
    Accept,
    /// Discard the octets, then send this reply.
    Refuse(String),
    /// Discard the octets; the reply was already sent (scripted).
    Silent,
}

struct Session {
    inner: Arc<Inner>,
    id: usize,
    peer: IpAddr,
    tls: bool,
    client_cert: Option<Vec<u8>>,
    /// The server name the client asked for in the TLS handshake, if any.
    sni: Option<String>,
    greeting: Greeting,
    auth_user: Option<String>,
    /// This session counts against `max_sessions_per_mailbox`.
    holds_auth_slot: bool,
    tx: Option<Transaction>,
    mode: Mode,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    /// A scripted 2xx/3xx text that replaces the next success reply of this stage.
    success_override: Option<(Stage, String)>,
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.holds_auth_slot {
            let mut st = lock(&self.inner.state);
            st.authenticated_sessions = st.authenticated_sessions.saturating_sub(1);
        }
    }
}

fn auth_line(buf: &[u8]) -> bool {
    buf.len() >= 5 && buf[..5].eq_ignore_ascii_case(b"AUTH ")
}

/// Parameters after the closing '>' of the path in a MAIL/RCPT line (quotes respected).
fn params_after_path(line: &str) -> String {
    let Some(start) = line.find('<') else {
        return String::new();
    };
    let (mut in_quote, mut escaped) = (false, false);
    for (i, b) in line.bytes().enumerate().skip(start + 1) {
        if escaped {
            escaped = false;
            continue;
        }
        match b {
            b'\\' if in_quote => escaped = true,
            b'"' => in_quote = !in_quote,
            b'>' if !in_quote => return line[i + 1..].trim().to_string(),
            _ => {}
        }
    }
    String::new()
}

/// A base64 SASL response decoded as UTF-8 text, if it is one.
fn decode_text(b64: &str) -> Option<String> {
    String::from_utf8(STANDARD.decode(b64).ok()?).ok()
}

/// Parses the decoded XOAUTH2 initial response: exactly
/// `user=<mailbox>\x01auth=Bearer <token>\x01\x01`. Returns (user, token).
fn parse_xoauth2(decoded: &[u8]) -> Result<(String, String), String> {
    let s = std::str::from_utf8(decoded).map_err(|_| "response is not UTF-8".to_string())?;
    let body = s
        .strip_suffix("\x01\x01")
        .ok_or("response does not end with ^A^A")?;
    let (user_kv, auth_kv) = body
        .split_once('\x01')
        .ok_or("response has no ^A separator")?;
    let user = user_kv
        .strip_prefix("user=")
        .ok_or("first field is not user=")?;
    let token = auth_kv
        .strip_prefix("auth=Bearer ")
        .ok_or("second field is not 'auth=Bearer <token>'")?;
    if user.is_empty() || user.contains('\x01') {
        return Err("empty or malformed user".into());
    }
    if token.is_empty() || token.contains(['\x01', ' ', '\t', '\r', '\n']) {
        return Err("empty or malformed token".into());
    }
    Ok((user.to_string(), token.to_string()))
}

/// The fields of an OAUTHBEARER initial response.
#[derive(Debug, PartialEq, Eq)]
struct Oauthbearer {
    /// The GS2 authorization identity, unescaped.
    authzid: String,
    host: String,
    port: String,
    token: String,
}

/// Parses the decoded OAUTHBEARER initial response of RFC 7628 section 3.1 exactly:
/// `gs2-header %x01 *(key "=" value %x01) %x01` with `gs2-header = ("n" / "y") "," "a="
/// saslname ","` (this server requires the authorization identity); `auth`, `host` and `port`
/// must each appear once; unknown keys are ignored, as the RFC asks.
fn parse_oauthbearer(decoded: &[u8]) -> Result<Oauthbearer, String> {
    let s = std::str::from_utf8(decoded).map_err(|_| "response is not UTF-8".to_string())?;
    let (flag, rest) = s.split_once(',').ok_or("no GS2 header")?;
    match flag {
        "n" | "y" => {}
        f if f.starts_with("p=") => return Err("channel binding is not supported".into()),
        f => return Err(format!("GS2 flag {f:?} is not n, y or p=")),
    }
    let (authzid, rest) = rest
        .split_once(',')
        .ok_or("GS2 header does not end with ','")?;
    let saslname = authzid
        .strip_prefix("a=")
        .ok_or("GS2 header has no a=<mailbox>")?;
    let authzid = unescape_saslname(saslname)?;
    let pairs = rest
        .strip_prefix('\x01')
        .and_then(|r| r.strip_suffix("\x01\x01"))
        .ok_or("key/value pairs are not framed by ^A ... ^A^A")?;
    let (mut host, mut port, mut auth) = (None, None, None);
    for pair in pairs.split('\x01') {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not key=value"))?;
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(format!("bad key {key:?}"));
        }
        let slot = match key {
            "host" => &mut host,
            "port" => &mut port,
            "auth" => &mut auth,
            _ => continue,
        };
        if slot.replace(value.to_string()).is_some() {
            return Err(format!("{key}= appears twice"));
        }
    }
    let host = host.ok_or("no host=")?;
    let port = port.ok_or("no port=")?;
    let auth = auth.ok_or("no auth=")?;
    if host.is_empty() {
        return Err("empty host=".into());
    }
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("port={port} is not a number"));
    }
    let token = match auth.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("Bearer") => token,
        _ => return Err("auth= is not 'Bearer <token>'".into()),
    };
    if token.is_empty() || token.contains([' ', '\t', '\r', '\n']) {
        return Err("empty or malformed token".into());
    }
    Ok(Oauthbearer {
        authzid,
        host,
        port,
        token: token.to_string(),
    })
}

/// RFC 5801 saslname: `=2C` is `,`, `=3D` is `=`, any other `=` is an error.
fn unescape_saslname(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(format!("bad escape in a={s}")),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    if out.is_empty() {
        return Err("empty a=".into());
    }
    Ok(out)
}

impl Session {
    fn new(inner: Arc<Inner>, id: usize, peer: IpAddr) -> Self {
        Session {
            inner,
            id,
            peer,
            tls: false,
            client_cert: None,
            sni: None,
            greeting: Greeting::None,
            auth_user: None,
            holds_auth_slot: false,
            tx: None,
            mode: Mode::Command,
            inbuf: Vec::new(),
            out: Vec::new(),
            success_override: None,
        }
    }

    fn cfg(&self) -> &SmtpConfig {
        &self.inner.cfg
    }

    fn log(&self, dir: &str, line: &str) {
        lock(&self.inner.state)
            .transcript
            .push(format!("[{}] {dir}: {line}", self.id));
    }

    fn note(&self, text: &str) {
        self.inner.note(self.id, text);
    }

    /// Queue a (possibly multi-line, CRLF-separated) reply.
    fn reply(&mut self, text: &str) {
        let mut st = lock(&self.inner.state);
        for line in text.split("\r\n") {
            self.out.extend_from_slice(line.as_bytes());
            self.out.extend_from_slice(b"\r\n");
            st.transcript.push(format!("[{}] S: {line}", self.id));
        }
    }

    /// A failure reply; a pending scripted success text no longer applies.
    fn fail(&mut self, text: &str) {
        self.success_override = None;
        self.reply(text);
    }

    /// The success reply of `stage`, or the scripted 2xx/3xx text replacing it.
    fn ok(&mut self, stage: Stage, normal: &str) {
        match self.success_override.take() {
            Some((s, text)) if s == stage => self.reply(&text),
            other => {
                self.success_override = other;
                self.reply(normal);
            }
        }
    }

    async fn flush(&mut self, conn: &mut Conn) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let delay = lock(&self.inner.state).reply_delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let out = std::mem::take(&mut self.out);
        conn.write_all(&out).await
    }

    /// Runs the protocol over everything buffered, queueing replies in order. Returns
    /// `NeedMore` when nothing more can be done without input.
    fn process(&mut self) -> Flow {
        loop {
            match &self.mode {
                Mode::DiscardLine => match self.inbuf.iter().position(|&b| b == b'\n') {
                    Some(p) => {
                        self.inbuf.drain(..=p);
                        self.mode = Mode::Command;
                    }
                    None => {
                        self.inbuf.clear();
                        return Flow::NeedMore;
                    }
                },
                Mode::Data(_) | Mode::Bdat { .. } => {
                    let flow = self.body_bytes();
                    if flow != Flow::NeedMore {
                        return flow;
                    }
                    if matches!(self.mode, Mode::Data(_) | Mode::Bdat { .. }) {
                        return Flow::NeedMore;
                    }
                }
                Mode::Command => {
                    let limit = if auth_line(&self.inbuf) {
                        MAX_AUTH_LINE
                    } else {
                        MAX_COMMAND_LINE
                    };
                    let Some(line) = self.take_line(limit, false) else {
                        return Flow::NeedMore;
                    };
                    let Some(line) = line else { continue };
                    let flow = self.command(&line);
                    if flow != Flow::NeedMore {
                        return flow;
                    }
                    // RFC 2920 without PIPELINING: the client must wait for each reply. (BDAT
                    // octets legitimately follow their command at once.)
                    if !self.cfg().advertise_pipelining
                        && !self.inbuf.is_empty()
                        && !matches!(self.mode, Mode::Bdat { .. })
                    {
                        let n = self.inbuf.len();
                        self.inbuf.clear();
                        self.tx = None;
                        self.mode = Mode::Command;
                        self.note(&format!(
                            "pipelining not advertised: {n} bytes sent before the reply discarded"
                        ));
                        self.fail("503 5.5.0 Improper use of SMTP command pipelining");
                    }
                }
                Mode::AuthXoauth2
                | Mode::AuthOauthbearer
                | Mode::AuthPlain
                | Mode::AuthLoginUser
                | Mode::AuthLoginPassword(_)
                | Mode::GoogleAck
                | Mode::OauthbearerAck => {
                    let counted = matches!(self.mode, Mode::GoogleAck | Mode::OauthbearerAck);
                    let Some(line) = self.take_line(MAX_AUTH_LINE, true) else {
                        return Flow::NeedMore;
                    };
                    match line {
                        Some(line) => {
                            let flow = self.sasl_line(&line);
                            if flow != Flow::NeedMore {
                                return flow;
                            }
                        }
                        // Over-long or not CRLF-terminated: answered, and the exchange is over.
                        None if !counted => lock(&self.inner.state).auth_failures += 1,
                        None => {}
                    }
                }
            }
        }
    }

    /// Frames one line. `None`: need more input. `Some(None)`: a bad line was answered and
    /// consumed. `Some(Some(line))`: the line without its CRLF.
    fn take_line(&mut self, limit: usize, sensitive: bool) -> Option<Option<String>> {
        let Some(lf) = self.inbuf.iter().position(|&b| b == b'\n') else {
            if self.inbuf.len() > limit {
                self.inbuf.clear();
                self.mode = Mode::DiscardLine;
                self.note("line too long (no LF yet); discarding to end of line");
                self.fail("500 5.5.2 Line too long");
                return Some(None);
            }
            return None;
        };
        let raw: Vec<u8> = self.inbuf.drain(..=lf).collect();
        if raw.len() > limit {
            self.note(&format!("line of {} bytes refused", raw.len()));
            self.mode = Mode::Command;
            self.fail("500 5.5.2 Line too long");
            return Some(None);
        }
        if lf == 0 || raw[lf - 1] != b'\r' {
            if sensitive {
                self.log("C", "[redacted]");
            } else {
                self.log("C", &String::from_utf8_lossy(&raw[..lf]));
            }
            self.note("line ended with a bare LF");
            self.mode = Mode::Command;
            self.fail("500 5.5.2 Syntax error, command lines must end with CRLF");
            return Some(None);
        }
        Some(Some(String::from_utf8_lossy(&raw[..lf - 1]).into_owned()))
    }

    fn log_command(&self, line: &str) {
        if auth_line(line.as_bytes()) {
            let mut words = line.split_ascii_whitespace();
            let verb = words.next().unwrap_or("AUTH");
            let mech = words.next().unwrap_or("");
            if words.next().is_some() {
                return self.log("C", &format!("{verb} {mech} [redacted]"));
            }
        }
        self.log("C", line);
    }

    fn command(&mut self, line: &str) -> Flow {
        self.log_command(line);
        let mut wire = Vec::with_capacity(line.len() + 2);
        wire.extend_from_slice(line.as_bytes());
        wire.extend_from_slice(b"\r\n");
        let parsed = Request::parse(&mut wire.iter());
        let request = match parsed {
            Ok(r) => r,
            Err(e) => {
                let reply = match e {
                    ParseError::UnknownCommand => "500 5.5.1 Unrecognized command".to_string(),
                    ParseError::InvalidSenderAddress => "501 5.1.7 Invalid address".to_string(),
                    ParseError::InvalidRecipientAddress => "501 5.1.3 Invalid address".to_string(),
                    ParseError::SyntaxError { syntax } => {
                        format!("501 5.5.4 Syntax error, expected: {syntax}")
                    }
                    ParseError::InvalidParameter { param } => {
                        format!("501 5.5.4 Invalid parameter {param}")
                    }
                    ParseError::UnsupportedParameter { param } => {
                        format!("555 5.5.4 Unsupported parameter {param}")
                    }
                    ParseError::ResponseTooLong => "500 5.5.2 Line too long".to_string(),
                    _ => "501 5.5.4 Syntax error".to_string(),
                };
                self.fail(&reply);
                return Flow::NeedMore;
            }
        };

        let stage = match &request {
            Request::Ehlo { .. } | Request::Helo { .. } => Some(Stage::Ehlo),
            Request::StartTls => Some(Stage::StartTls),
            Request::Auth { .. } => Some(Stage::Auth),
            Request::Mail { .. } => Some(Stage::Mail),
            Request::Rcpt { .. } => Some(Stage::Rcpt),
            Request::Data => Some(Stage::Data),
            Request::Bdat { .. } if self.tx.as_ref().is_some_and(|t| !t.bdat_started) => {
                Some(Stage::Data)
            }
            Request::Rset => Some(Stage::Rset),
            Request::Quit => Some(Stage::Quit),
            _ => None,
        };
        self.success_override = None;
        if let Some(stage) = stage {
            match self.inner.take_action(stage, ActionKind::Any) {
                Some(Action::Drop) => {
                    self.note(&format!("dropping at {stage:?} (scripted)"));
                    return Flow::Drop;
                }
                Some(Action::Reply(r)) => {
                    let code = code_of(&r);
                    if code < 400 {
                        self.success_override = Some((stage, r));
                    } else {
                        self.note(&format!("scripted reply at {stage:?}"));
                        self.reply(&r);
                        if stage == Stage::Auth {
                            lock(&self.inner.state).auth_failures += 1;
                        }
                        if let Request::Bdat {
                            chunk_size,
                            is_last,
                        } = request
                        {
                            // The chunk's octets follow regardless and must be consumed.
                            self.tx = None;
                            self.mode = Mode::Bdat {
                                remaining: chunk_size,
                                last: is_last,
                                outcome: BdatOutcome::Silent,
                                started: false,
                            };
                        }
                        return if code == 421 || stage == Stage::Quit {
                            Flow::Close
                        } else {
                            Flow::NeedMore
                        };
                    }
                }
                None => {}
            }
        }

        match request {
            Request::Ehlo { host } => self.ehlo(&host),
            Request::Helo { .. } => {
                self.greeting = Greeting::Helo;
                self.tx = None;
                self.ok(Stage::Ehlo, &format!("250 {HOSTNAME} Hello [{}]", self.peer));
            }
            Request::StartTls => return self.starttls(line),
            Request::Auth { mechanism, initial_response } => self.auth(line, mechanism, &initial_response),
            Request::Mail { from } => self.mail(line, from),
            Request::Rcpt { to } => self.rcpt(line, to),
            Request::Data => self.data(line),
            Request::Bdat { chunk_size, is_last } => self.bdat(chunk_size, is_last),
            Request::Rset => {
                self.tx = None;
                self.ok(Stage::Rset, "250 2.0.0 Resetting");
            }
            Request::Noop { .. } => self.reply("250 2.0.0 OK"),
            Request::Quit => {
                self.ok(Stage::Quit, "221 2.0.0 Service closing transmission channel");
                return Flow::Close;
            }
            Request::Vrfy { .. } => self.reply("252 2.1.5 Cannot VRFY user, but will accept message for delivery"),
            Request::Help { .. } => self.reply(
                "214 2.0.0 Commands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP",
            ),
            Request::Lhlo { .. } => self.fail("500 5.5.1 Unrecognized command"),
            Request::Expn { .. } | Request::Etrn { .. } | Request::Atrn { .. } | Request::Burl { .. } => {
                self.fail("502 5.5.1 Command not implemented")
            }
        }
        Flow::NeedMore
    }

    fn auth_allowed_in_clear(&self) -> bool {
        self.cfg().tls != UpstreamTls::Starttls
    }

    fn ehlo(&mut self, _host: &str) {
        self.greeting = Greeting::Ehlo;
        self.tx = None;
        let cfg = self.cfg();
        let mut lines = vec![
            format!("{HOSTNAME} Hello [{}]", self.peer),
            format!("SIZE {}", cfg.max_size),
        ];
        if cfg.advertise_pipelining {
            lines.push("PIPELINING".into());
        }
        lines.push("DSN".into());
        lines.push("ENHANCEDSTATUSCODES".into());
        if cfg.tls == UpstreamTls::Starttls && !self.tls {
            lines.push("STARTTLS".into());
        }
        if self.tls || self.auth_allowed_in_clear() {
            let mut auth = vec!["AUTH"];
            if lock(&self.inner.state).password_login.is_some() {
                auth.push("PLAIN");
            }
            auth.push("LOGIN");
            if cfg.xoauth2 {
                auth.push("XOAUTH2");
            }
            if cfg.oauthbearer {
                auth.push("OAUTHBEARER");
            }
            lines.push(auth.join(" "));
        }
        for ext in ["8BITMIME", "BINARYMIME", "CHUNKING", "SMTPUTF8"] {
            lines.push(ext.into());
        }
        let n = lines.len();
        let text = lines
            .iter()
            .enumerate()
            .map(|(i, l)| format!("250{}{l}", if i + 1 < n { '-' } else { ' ' }))
            .collect::<Vec<_>>()
            .join("\r\n");
        self.ok(Stage::Ehlo, &text);
    }

    fn starttls(&mut self, line: &str) -> Flow {
        if self.cfg().tls != UpstreamTls::Starttls {
            self.fail("500 5.5.1 Unrecognized command 'STARTTLS'");
        } else if self.tls {
            self.fail("503 5.5.1 TLS already active");
        } else if !line.trim_end().eq_ignore_ascii_case("STARTTLS") {
            self.fail("501 5.5.4 Syntax error, STARTTLS takes no parameters");
        } else if self.greeting != Greeting::Ehlo {
            self.fail("503 5.5.2 Send hello first");
        } else {
            self.ok(Stage::StartTls, "220 2.0.0 SMTP server ready");
            if !self.inbuf.is_empty() {
                // CVE-2011-0411: nothing sent in clear may be executed inside TLS.
                self.note(&format!(
                    "discarded {} bytes pipelined after STARTTLS",
                    self.inbuf.len()
                ));
                self.inbuf.clear();
            }
            self.greeting = Greeting::None;
            self.auth_user = None;
            self.tx = None;
            self.mode = Mode::Command;
            return Flow::StartTls;
        }
        Flow::NeedMore
    }

    fn auth(&mut self, line: &str, mechanism: u64, initial_response: &str) {
        if self.cfg().tls == UpstreamTls::Starttls && !self.tls {
            return self.fail("530 5.7.0 Must issue a STARTTLS command first");
        }
        match self.greeting {
            Greeting::None => return self.fail("503 5.5.2 Send hello first"),
            Greeting::Helo => {
                return self.fail("503 5.5.1 Bad sequence of commands: AUTH requires EHLO");
            }
            Greeting::Ehlo => {}
        }
        if self.auth_user.is_some() {
            return self.fail("503 5.5.1 Already authenticated");
        }
        if self.tx.is_some() {
            return self.fail("503 5.5.1 Bad sequence of commands: mail transaction in progress");
        }
        if line.split_ascii_whitespace().count() > 3 {
            return self
                .fail("501 5.5.4 Syntax error, expected: AUTH mechanism [initial-response]");
        }
        match mechanism {
            smtp_proto::AUTH_XOAUTH2 if self.cfg().xoauth2 => {
                if initial_response.is_empty() {
                    self.mode = Mode::AuthXoauth2;
                    self.reply("334 ");
                } else {
                    self.xoauth2(initial_response);
                }
            }
            smtp_proto::AUTH_OAUTHBEARER if self.cfg().oauthbearer => {
                if initial_response.is_empty() {
                    self.mode = Mode::AuthOauthbearer;
                    self.reply("334 ");
                } else {
                    self.oauthbearer(initial_response);
                }
            }
            smtp_proto::AUTH_PLAIN if self.password_login_enabled() => {
                if initial_response.is_empty() {
                    self.mode = Mode::AuthPlain;
                    self.reply("334 ");
                } else {
                    self.plain(initial_response);
                }
            }
            smtp_proto::AUTH_LOGIN => {
                // Advertised (as Exchange does); unless a password login is set, basic
                // authentication is disabled: run the dance so a client that falls back to
                // LOGIN sees the real refusal.
                if initial_response.is_empty() {
                    self.mode = Mode::AuthLoginUser;
                    self.reply("334 VXNlcm5hbWU6");
                } else {
                    self.mode = Mode::AuthLoginPassword(decode_text(initial_response));
                    self.reply("334 UGFzc3dvcmQ6");
                }
            }
            _ => self.fail("504 5.7.4 Unrecognized authentication type"),
        }
    }

    fn sasl_line(&mut self, line: &str) -> Flow {
        let mode = std::mem::replace(&mut self.mode, Mode::Command);
        match mode {
            Mode::GoogleAck => {
                self.log("C", line);
                if line.is_empty() {
                    self.fail(GOOGLE_AUTH_FAILED);
                } else {
                    self.note("client answered the error challenge with a non-empty line");
                    self.fail(
                        "501 5.5.2 Syntax error, expected an empty line after the error challenge",
                    );
                }
            }
            Mode::OauthbearerAck => {
                // Not redacted: the only valid answer is the dummy `AQ==`.
                self.log("C", line);
                if STANDARD.decode(line).ok().as_deref() == Some(&[0x01][..]) {
                    self.fail(OAUTHBEARER_AUTH_FAILED);
                } else {
                    self.note("client answered the error challenge with something other than %x01");
                    self.fail(
                        "501 5.5.2 Syntax error, expected %x01 (AQ==) after the error challenge",
                    );
                }
            }
            _ if line == "*" => {
                self.log("C", "*");
                lock(&self.inner.state).auth_failures += 1;
                self.fail("501 5.7.0 Authentication cancelled");
            }
            Mode::AuthXoauth2 => {
                self.log("C", "[redacted]");
                self.xoauth2(line);
            }
            Mode::AuthOauthbearer => {
                self.log("C", "[redacted]");
                self.oauthbearer(line);
            }
            Mode::AuthPlain => {
                self.log("C", "[redacted]");
                self.plain(line);
            }
            Mode::AuthLoginUser => {
                self.log("C", "[redacted]");
                self.mode = Mode::AuthLoginPassword(decode_text(line));
                self.reply("334 UGFzc3dvcmQ6");
            }
            Mode::AuthLoginPassword(user) => {
                self.log("C", "[redacted]");
                if self.password_login_enabled() {
                    let password = decode_text(line);
                    self.password_verdict(user.as_deref(), password.as_deref(), "LOGIN");
                } else {
                    lock(&self.inner.state).auth_failures += 1;
                    self.note("AUTH LOGIN refused: basic authentication is disabled");
                    self.fail(&format!(
                        "535 5.7.139 Authentication unsuccessful, basic authentication is disabled. [{HOSTNAME}]"
                    ));
                }
            }
            other => self.mode = other,
        }
        Flow::NeedMore
    }

    fn xoauth2(&mut self, b64: &str) {
        let decoded = if b64 == "=" {
            Ok(Vec::new())
        } else {
            STANDARD.decode(b64)
        };
        let Ok(decoded) = decoded else {
            lock(&self.inner.state).auth_failures += 1;
            self.note("XOAUTH2 response is not valid base64");
            return self.fail("501 5.5.2 Cannot Decode response");
        };
        let verdict = parse_xoauth2(&decoded).and_then(|(user, token)| {
            if !user.eq_ignore_ascii_case(&self.cfg().mailbox) {
                return Err(format!(
                    "user={user} is not the mailbox {}",
                    self.cfg().mailbox
                ));
            }
            (self.cfg().validator)(&token).map_err(|e| format!("token refused: {e}"))?;
            Ok(user)
        });
        match verdict {
            Ok(user) => self.authenticated(user),
            Err(why) => {
                lock(&self.inner.state).auth_failures += 1;
                self.note(&format!("XOAUTH2 refused: {why}"));
                match self.cfg().failure_style {
                    AuthFailureStyle::Microsoft => self.fail(MS_AUTH_FAILED),
                    AuthFailureStyle::Google => {
                        self.success_override = None;
                        self.mode = Mode::GoogleAck;
                        self.reply(&format!("334 {}", STANDARD.encode(GOOGLE_ERROR_JSON)));
                    }
                }
            }
        }
    }

    /// Checks an OAUTHBEARER initial response (RFC 7628) and answers: 235, or the RFC's error
    /// challenge, a `334` with a base64 JSON whose `status` says what was wrong.
    fn oauthbearer(&mut self, b64: &str) {
        let Ok(decoded) = STANDARD.decode(b64) else {
            lock(&self.inner.state).auth_failures += 1;
            self.note("OAUTHBEARER response is not valid base64");
            return self.fail("501 5.5.2 Cannot Decode response");
        };
        let verdict = parse_oauthbearer(&decoded)
            .map_err(|why| ("invalid_request", why))
            .and_then(|r| {
                if !r.authzid.eq_ignore_ascii_case(&self.cfg().mailbox) {
                    return Err((
                        "invalid_token",
                        format!("a={} is not the mailbox {}", r.authzid, self.cfg().mailbox),
                    ));
                }
                let names = self.names();
                if !names.iter().any(|n| n.eq_ignore_ascii_case(&r.host)) {
                    return Err((
                        "invalid_request",
                        format!("host={} is not one of {names:?}", r.host),
                    ));
                }
                if r.port != self.inner.addr.port().to_string() {
                    return Err((
                        "invalid_request",
                        format!("port={} is not {}", r.port, self.inner.addr.port()),
                    ));
                }
                (self.cfg().validator)(&r.token)
                    .map_err(|e| ("invalid_token", format!("token refused: {e}")))?;
                Ok(r.authzid)
            });
        match verdict {
            Ok(user) => self.authenticated(user),
            Err((status, why)) => {
                lock(&self.inner.state).auth_failures += 1;
                self.note(&format!("OAUTHBEARER refused: {why}"));
                self.success_override = None;
                self.mode = Mode::OauthbearerAck;
                let json = OAUTHBEARER_ERROR_JSON.replace("{status}", status);
                self.reply(&format!("334 {}", STANDARD.encode(json)));
            }
        }
    }

    /// The names a client may give as OAUTHBEARER `host=`: the one it asked for in TLS, or
    /// when it sent none (an IP address, no TLS), what this server answers to.
    fn names(&self) -> Vec<String> {
        match &self.sni {
            Some(sni) => vec![sni.clone()],
            None => vec![
                HOSTNAME.to_string(),
                "localhost".to_string(),
                self.inner.addr.ip().to_string(),
            ],
        }
    }

    fn password_login_enabled(&self) -> bool {
        lock(&self.inner.state).password_login.is_some()
    }

    /// AUTH PLAIN's response: `[authzid] NUL user NUL password` in base64 (RFC 4616); an
    /// authorization identity other than the user is refused.
    fn plain(&mut self, b64: &str) {
        let decoded = STANDARD.decode(b64).ok();
        let fields: Option<Vec<String>> = decoded.and_then(|d| {
            let s = String::from_utf8(d).ok()?;
            let parts: Vec<String> = s.split('\0').map(str::to_string).collect();
            (parts.len() == 3).then_some(parts)
        });
        match fields {
            Some(f) if f[0].is_empty() || f[0] == f[1] => {
                self.password_verdict(Some(&f[1]), Some(&f[2]), "PLAIN")
            }
            _ => {
                lock(&self.inner.state).auth_failures += 1;
                self.note("AUTH PLAIN response is malformed");
                self.fail("501 5.5.2 Cannot Decode response");
            }
        }
    }

    /// Checks a user and password against `set_password_login` and answers.
    fn password_verdict(&mut self, user: Option<&str>, password: Option<&str>, mech: &str) {
        let expected = lock(&self.inner.state).password_login.clone();
        let ok = match (expected, user, password) {
            (Some((u, p)), Some(user), Some(password)) => u == user && p == password,
            _ => false,
        };
        match (ok, user) {
            (true, Some(user)) => self.authenticated(user.to_string()),
            _ => {
                lock(&self.inner.state).auth_failures += 1;
                self.note(&format!("AUTH {mech} refused: wrong user or password"));
                self.fail("535 5.7.8 Authentication credentials invalid");
            }
        }
    }

    /// A successful AUTH (any mechanism), subject to the per-mailbox session limit.
    fn authenticated(&mut self, user: String) {
        let mut st = lock(&self.inner.state);
        if let Some(max) = st.max_sessions_per_mailbox
            && st.authenticated_sessions >= max
        {
            drop(st);
            self.note("session limit per mailbox reached");
            return self.fail(&format!(
                "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded [Hostname={HOSTNAME}]"
            ));
        }
        st.authenticated_sessions += 1;
        st.auth_successes += 1;
        drop(st);
        self.holds_auth_slot = true;
        self.auth_user = Some(user);
        self.ok(Stage::Auth, "235 2.7.0 Authentication successful");
    }

    /// Common checks before MAIL; `Err` is the refusal.
    fn may_send(&self) -> Result<(), String> {
        if self.greeting == Greeting::None {
            return Err("503 5.5.2 Send hello first".into());
        }
        if self.cfg().tls == UpstreamTls::Starttls && !self.tls {
            return Err("530 5.7.0 Must issue a STARTTLS command first".into());
        }
        if self.auth_user.is_none() && self.cfg().require_auth {
            return Err(format!(
                "530 5.7.57 Client not authenticated to send mail. [{HOSTNAME}]"
            ));
        }
        Ok(())
    }

    fn mail(&mut self, line: &str, from: smtp_proto::MailFrom<std::borrow::Cow<'_, str>>) {
        if let Err(r) = self.may_send() {
            return self.fail(&r);
        }
        if self.tx.is_some() {
            return self.fail("503 5.5.1 Sender already specified");
        }
        let params = params_after_path(line);
        if !params.is_empty() && self.greeting != Greeting::Ehlo {
            return self.fail("555 5.5.4 MAIL parameters require EHLO");
        }
        if from.size > self.cfg().max_size {
            return self.fail("552 5.3.4 Message size exceeds fixed maximum message size");
        }
        let smtputf8 = from.flags & smtp_proto::MAIL_SMTPUTF8 != 0;
        if !from.address.is_ascii() && !smtputf8 {
            return self.fail("553 5.6.7 Non-ASCII address requires SMTPUTF8");
        }
        self.tx = Some(Transaction {
            from: from.address.into_owned(),
            params,
            binarymime: from.flags & smtp_proto::MAIL_BODY_BINARYMIME != 0,
            smtputf8,
            rcpts: Vec::new(),
            bdat_started: false,
            bdat_failed: false,
            bdat_data: Vec::new(),
            bdat_too_big: false,
        });
        self.ok(Stage::Mail, "250 2.1.0 Sender OK");
    }

    fn rcpt(&mut self, line: &str, to: smtp_proto::RcptTo<std::borrow::Cow<'_, str>>) {
        let ehlo = self.greeting == Greeting::Ehlo;
        let Some(tx) = self.tx.as_mut() else {
            return self.fail("503 5.5.1 Need MAIL command");
        };
        let reply = if tx.bdat_started {
            Err("503 5.5.1 Bad sequence of commands: RCPT after BDAT")
        } else if to.address.is_empty() {
            Err("501 5.1.3 Invalid address")
        } else if !params_after_path(line).is_empty() && !ehlo {
            Err("555 5.5.4 RCPT parameters require EHLO")
        } else if !to.address.is_ascii() && !tx.smtputf8 {
            Err("553 5.6.7 Non-ASCII address requires SMTPUTF8")
        } else if tx.rcpts.len() >= MAX_RECIPIENTS {
            Err("452 4.5.3 Too many recipients")
        } else {
            tx.rcpts.push(to.address.into_owned());
            Ok(())
        };
        match reply {
            Ok(()) => self.ok(Stage::Rcpt, "250 2.1.5 Recipient OK"),
            Err(r) => self.fail(r),
        }
    }

    fn data(&mut self, line: &str) {
        let refusal = match &self.tx {
            None => Some("503 5.5.1 Need MAIL command"),
            Some(tx) if tx.rcpts.is_empty() => Some("503 5.5.2 Need rcpt command"),
            Some(tx) if tx.bdat_started => {
                Some("503 5.5.1 Bad sequence of commands: DATA after BDAT")
            }
            Some(tx) if tx.binarymime => Some("503 5.5.1 BODY=BINARYMIME requires BDAT"),
            Some(_) if !line.trim_end().eq_ignore_ascii_case("DATA") => {
                Some("501 5.5.4 Syntax error, DATA takes no parameters")
            }
            Some(_) => None,
        };
        if let Some(r) = refusal {
            return self.fail(r);
        }
        self.ok(Stage::Data, "354 Start mail input; end with <CRLF>.<CRLF>");
        self.mode = Mode::Data(DataRx {
            at_line_start: true,
            ..DataRx::default()
        });
    }

    fn bdat(&mut self, chunk_size: usize, last: bool) {
        let refusal = if self.greeting != Greeting::Ehlo {
            Some("503 5.5.1 Bad sequence of commands: BDAT requires EHLO".to_string())
        } else {
            match &self.tx {
                None => Some("503 5.5.1 Need MAIL command".to_string()),
                Some(tx) if tx.rcpts.is_empty() => Some("503 5.5.2 Need rcpt command".to_string()),
                Some(tx) if tx.bdat_failed => {
                    Some("503 5.5.1 Bad sequence of commands: an earlier chunk failed".to_string())
                }
                Some(_) => None,
            }
        };
        if refusal.is_none() {
            if let Some(tx) = self.tx.as_mut() {
                tx.bdat_started = true;
            }
            // The 250 comes after the chunk; keep the stage's scripted text for then.
            if let Some((Stage::Data, _)) = self.success_override {
                self.success_override = None;
            }
        }
        let outcome = refusal.map_or(BdatOutcome::Accept, BdatOutcome::Refuse);
        self.mode = Mode::Bdat {
            remaining: chunk_size,
            last,
            outcome,
            started: false,
        };
    }

    /// Consumes body bytes for DATA or BDAT.
    fn body_bytes(&mut self) -> Flow {
        let max = self.cfg().max_size;
        // "Drop during the body": the first time some of the body is in hand.
        let first_bytes = match &mut self.mode {
            Mode::Data(rx) if !rx.started && !self.inbuf.is_empty() => {
                rx.started = true;
                true
            }
            Mode::Bdat {
                started, remaining, ..
            } if !*started && *remaining > 0 && !self.inbuf.is_empty() => {
                *started = true;
                true
            }
            _ => false,
        };
        if first_bytes
            && let Some(Action::Drop) = self
                .inner
                .take_action(Stage::DataBody, ActionKind::DropOnly)
        {
            self.note("dropping during the body (scripted)");
            return Flow::Drop;
        }

        if let Mode::Data(rx) = &mut self.mode {
            let (used, done) = ingest_data(rx, &self.inbuf, max);
            self.inbuf.drain(..used);
            if !done {
                return Flow::NeedMore;
            }
            let Mode::Data(rx) = std::mem::replace(&mut self.mode, Mode::Command) else {
                return Flow::NeedMore;
            };
            let mut body = rx.body;
            if body.ends_with(b"\r\n") {
                body.truncate(body.len() - 2);
            }
            self.log(
                "C",
                &format!("[message body: {} octets, final dot received]", rx.size),
            );
            return self.finish_message(body, rx.too_big);
        }

        let Mode::Bdat {
            remaining, outcome, ..
        } = &mut self.mode
        else {
            return Flow::NeedMore;
        };
        let n = (*remaining).min(self.inbuf.len());
        *remaining -= n;
        if let (BdatOutcome::Accept, Some(tx)) = (&*outcome, self.tx.as_mut())
            && !tx.bdat_too_big
        {
            if tx.bdat_data.len() + n > max {
                tx.bdat_too_big = true;
                tx.bdat_data = Vec::new();
            } else {
                tx.bdat_data.extend_from_slice(&self.inbuf[..n]);
            }
        }
        self.inbuf.drain(..n);
        if *remaining > 0 {
            return Flow::NeedMore;
        }
        let Mode::Bdat { last, outcome, .. } = std::mem::replace(&mut self.mode, Mode::Command)
        else {
            return Flow::NeedMore;
        };
        self.log(
            "C",
            &format!("[BDAT chunk received{}]", if last { ", LAST" } else { "" }),
        );
        match outcome {
            BdatOutcome::Silent => return Flow::NeedMore,
            BdatOutcome::Refuse(r) => {
                self.fail(&r);
                return Flow::NeedMore;
            }
            BdatOutcome::Accept => {}
        }
        if self.tx.as_ref().is_some_and(|t| t.bdat_too_big) {
            if let Some(tx) = self.tx.as_mut() {
                tx.bdat_failed = true;
            }
            self.fail("552 5.3.4 Message size exceeds fixed maximum message size");
            return Flow::NeedMore;
        }
        if !last {
            let size = self.tx.as_ref().map_or(0, |t| t.bdat_data.len());
            self.reply(&format!("250 2.0.0 {size} octets received"));
            return Flow::NeedMore;
        }
        let body = self
            .tx
            .as_mut()
            .map(|t| std::mem::take(&mut t.bdat_data))
            .unwrap_or_default();
        self.finish_message(body, false)
    }

    /// End of body: scripted reply, size, Send As, then store.
    fn finish_message(&mut self, body: Vec<u8>, too_big: bool) -> Flow {
        let Some(tx) = self.tx.take() else {
            self.fail("503 5.5.1 Bad sequence of commands");
            return Flow::NeedMore;
        };
        if let Some(Action::Reply(r)) = self
            .inner
            .take_action(Stage::DataBody, ActionKind::ReplyOnly)
        {
            let code = code_of(&r);
            if code >= 400 {
                self.note("scripted reply after the body; message not stored");
                self.reply(&r);
                return if code == 421 {
                    Flow::Close
                } else {
                    Flow::NeedMore
                };
            }
            self.success_override = Some((Stage::DataBody, r));
        }
        if too_big {
            return self.fail_body("552 5.3.4 Message size exceeds fixed maximum message size");
        }
        let send_as = lock(&self.inner.state).send_as.clone();
        if let Some(allowed) = send_as
            && !allowed.iter().any(|a| a.eq_ignore_ascii_case(&tx.from))
        {
            let user = self.auth_user.clone().unwrap_or_default();
            return self.fail_body(&format!(
                "554 5.2.252 SendAsDenied; {user} not allowed to send as {}; \
                 STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied; \
                 Failed to process message due to a permanent exception with message \
                 [BeginDiagnosticData]Cannot submit message. [Hostname={HOSTNAME}]",
                tx.from
            ));
        }
        let id = {
            let mut st = lock(&self.inner.state);
            st.next_message += 1;
            let id = format!(
                "<{:04}{}@{HOSTNAME}>",
                st.next_message,
                crate::random_hex(8)
            );
            st.messages.push(ReceivedMessage {
                mail_from: tx.from,
                rcpt_to: tx.rcpts,
                data: body,
                auth_user: self.auth_user.clone().unwrap_or_default(),
                tls: self.tls,
                mail_params: tx.params,
                connection_id: self.id,
                client_cert: self.client_cert.clone(),
            });
            self.inner.msg_count.send_replace(st.messages.len());
            id
        };
        self.ok(
            Stage::DataBody,
            &format!("250 2.0.0 OK {id} [Hostname={HOSTNAME}]"),
        );
        Flow::NeedMore
    }

    fn fail_body(&mut self, reply: &str) -> Flow {
        self.fail(reply);
        Flow::NeedMore
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(chunks: &[&[u8]]) -> Option<(Vec<u8>, Vec<u8>)> {
        let mut rx = DataRx {
            at_line_start: true,
            ..DataRx::default()
        };
        let mut buf = Vec::new();
        for c in chunks {
            buf.extend_from_slice(c);
            let (used, done) = ingest_data(&mut rx, &buf, usize::MAX);
            buf.drain(..used);
            if done {
                return Some((rx.body, buf));
            }
        }
        None
    }

    #[test]
    fn data_decoder_unstuffs_and_ends_only_on_crlf_dot_crlf() {
        let (body, rest) = decode_all(&[b"a\r\n..b\r\n.c\r\n\n.\n\r.\r\r\n.\r\nQUIT\r\n"]).unwrap();
        assert_eq!(body, b"a\r\n.b\r\nc\r\n\n.\n\r.\r\r\n");
        assert_eq!(rest, b"QUIT\r\n");
        // First line is the terminator: empty message.
        assert_eq!(decode_all(&[b".\r\n"]).unwrap().0, b"");
        // Byte-at-a-time delivery gives the same result.
        let input = b"x\r\n..\r\n.\r\n";
        let chunks: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(decode_all(&chunks).unwrap().0, b"x\r\n.\r\n");
        // Split between CR and LF of the terminator.
        assert_eq!(decode_all(&[b"y\r", b"\n.\r", b"\n"]).unwrap().0, b"y\r\n");
        // Not terminated.
        assert!(decode_all(&[b"a\r\n.\n", b"b\n.\r\n"]).is_none());
    }

    #[test]
    fn xoauth2_parsing_is_exact() {
        assert_eq!(
            parse_xoauth2(b"user=a@b.c\x01auth=Bearer tok\x01\x01").unwrap(),
            ("a@b.c".to_string(), "tok".to_string())
        );
        for bad in [
            &b"user=a@b.c\x01auth=Bearer tok\x01"[..],
            b"user=a@b.c\x01auth=bearer tok\x01\x01",
            b"user=a@b.c\x01auth=Bearer \x01\x01",
            b"user=\x01auth=Bearer tok\x01\x01",
            b"auth=Bearer tok\x01user=a\x01\x01",
            b"user=a@b.c\x01auth=Bearer tok\x01\x01\x01",
            b"user=a@b.c\x01host=x\x01auth=Bearer tok\x01\x01",
        ] {
            assert!(parse_xoauth2(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn oauthbearer_parsing_is_exact() {
        // RFC 7628 section 4.1, decoded.
        let rfc = b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg==\x01\x01";
        assert_eq!(
            parse_oauthbearer(rfc).unwrap(),
            Oauthbearer {
                authzid: "user@example.com".into(),
                host: "server.example.com".into(),
                port: "143".into(),
                token: "vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg==".into(),
            }
        );
        // Escaped authzid, "y" flag, an unknown key, keys in another order.
        let ok = parse_oauthbearer(
            b"y,a=a=2Cb=3Dc@d,\x01port=587\x01x=1\x01auth=bearer t\x01host=h\x01\x01",
        )
        .unwrap();
        assert_eq!((ok.authzid.as_str(), ok.token.as_str()), ("a,b=c@d", "t"));
        for bad in [
            // channel binding, unknown flag, no authzid, bad escape
            &b"p=tls-unique,a=u@d,\x01host=h\x01port=1\x01auth=Bearer t\x01\x01"[..],
            b"x,a=u@d,\x01host=h\x01port=1\x01auth=Bearer t\x01\x01",
            b"n,,\x01host=h\x01port=1\x01auth=Bearer t\x01\x01",
            b"n,a=u=2Xd,\x01host=h\x01port=1\x01auth=Bearer t\x01\x01",
            // XOAUTH2's format
            b"user=u@d\x01auth=Bearer t\x01\x01",
            // missing or repeated fields, bad framing
            b"n,a=u@d,\x01port=1\x01auth=Bearer t\x01\x01",
            b"n,a=u@d,\x01host=h\x01auth=Bearer t\x01\x01",
            b"n,a=u@d,\x01host=h\x01port=1\x01\x01",
            b"n,a=u@d,\x01host=h\x01host=h\x01port=1\x01auth=Bearer t\x01\x01",
            b"n,a=u@d,\x01host=h\x01port=1\x01auth=Bearer t\x01",
            b"n,a=u@d,host=h\x01port=1\x01auth=Bearer t\x01\x01",
            b"n,a=u@d,\x01host=h\x01port=x1\x01auth=Bearer t\x01\x01",
            b"n,a=u@d,\x01host=h\x01port=1\x01auth=Basic t\x01\x01",
            b"n,a=u@d,\x01host=h\x01port=1\x01auth=Bearer \x01\x01",
        ] {
            assert!(
                parse_oauthbearer(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn reply_normalization() {
        assert_eq!(normalize_reply("554 a\n554 b\n"), "554-a\r\n554 b");
        assert_eq!(
            normalize_reply("421 4.3.2 Service not available"),
            "421 4.3.2 Service not available"
        );
        assert_eq!(code_of("451 x"), 451);
    }

    #[test]
    fn params_extraction() {
        assert_eq!(
            params_after_path("MAIL FROM:<a@b> SIZE=12 BODY=8BITMIME"),
            "SIZE=12 BODY=8BITMIME"
        );
        assert_eq!(
            params_after_path("MAIL FROM:<\"x>y\"@b> SMTPUTF8"),
            "SMTPUTF8"
        );
        assert_eq!(params_after_path("MAIL FROM:<>"), "");
    }
}

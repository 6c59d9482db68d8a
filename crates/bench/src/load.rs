//! The load generator: many concurrent SMTP sessions sending messages as printers do.
//!
//! Why our own: the figures must be comparable across servers (the relay, the sink alone,
//! Postfix), so the same client drives them all, and it has to report what we need (per-message
//! latency, which stage refused what) without becoming the bottleneck. It is lock-step SMTP, no
//! PIPELINING, because devices talk that way: each command waits for its reply. It logs in with
//! AUTH PLAIN as devices do, or with AUTH XOAUTH2 when it stands in for a transparent proxy
//! sending straight to the sink (the ceiling).
//!
//! Work is handed out from one shared counter: `--sessions` workers each open a session, claim a
//! message, send it, and claim the next one for the same session until `--per-session` is reached
//! (default 1: a new session, and a new login, per message). Every claimed message ends as exactly
//! one of accepted (2xx after the body), refused (a 4xx/5xx reply at any stage) or error (connect
//! failure, timeout, lost connection, TLS failure); nothing on the network path panics.
//!
//! Cost per message on our side: one header block formatted into a reused buffer, the shared
//! body written from memory, replies read into a reused buffer.

use crate::message::Mix;
use base64::Engine as _;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Replies longer than this are treated as a broken server (protects our memory).
const MAX_REPLY: usize = 64 * 1024;

/// What to send, where, and how.
pub struct LoadSpec {
    /// "host:port".
    pub addr: String,
    pub sessions: usize,
    pub messages: u64,
    pub per_session: u64,
    /// The messages, chosen per sequence number.
    pub template: Mix,
    /// AUTH, sent after EHLO (and after STARTTLS when enabled).
    pub auth: Option<Auth>,
    /// STARTTLS with this client config and server name.
    pub starttls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    pub from: String,
    pub to: String,
    pub helo: String,
    /// Longest wait for any one reply (and for connect and the TLS handshake).
    pub timeout: Duration,
    /// What the power-cut rig and the soak add; `Hooks::default()` for a plain run.
    pub hooks: Hooks,
}

/// Called with the sequence number of each message as its 250 arrives.
pub type OnAccept = Arc<dyn Fn(u64) + Send + Sync>;

/// Ways to steer a long or interrupted load from outside.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Sequence numbers are taken from this counter (shared by several loads, so numbers stay
    /// unique across the segments of one run) instead of one starting at 0.
    pub next: Option<Arc<AtomicU64>>,
    /// Once true, no new message is started.
    pub stop: Option<Arc<AtomicBool>>,
    pub on_accept: Option<OnAccept>,
    /// Each worker rests this long (±50 %) after each session: a steady load, not a flood.
    pub pace: Option<Duration>,
}

/// How a session authenticates.
#[derive(Clone, Debug)]
pub enum Auth {
    /// AUTH PLAIN, as devices log in to the relay or to Postfix.
    Plain { user: String, password: String },
    /// AUTH XOAUTH2 with a bearer token, as the relay logs in upstream (the ceiling: the load
    /// sent straight to the sink).
    XOAuth2 { user: String, token: String },
}

impl Auth {
    /// The whole AUTH command line, initial response included (one round trip).
    pub fn command(&self) -> Vec<u8> {
        let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
        match self {
            Auth::Plain { user, password } => {
                format!("AUTH PLAIN {}\r\n", b64(format!("\0{user}\0{password}"))).into_bytes()
            }
            Auth::XOAuth2 { user, token } => format!(
                "AUTH XOAUTH2 {}\r\n",
                b64(format!("user={user}\x01auth=Bearer {token}\x01\x01"))
            )
            .into_bytes(),
        }
    }
}

/// What happened, merged over all sessions. Times are offsets from the `base` given to [`run`].
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Messages claimed by a session (= accepted + refused + errors).
    pub sent: u64,
    pub accepted: u64,
    pub refused: u64,
    pub errors: u64,
    pub sessions: u64,
    /// "refused at MAIL: 451", "timeout at DATA end", ... with counts (includes problems after the
    /// last message of a session, e.g. at QUIT, which do not fail a message).
    pub problems: BTreeMap<String, u64>,
    pub bytes_accepted: u64,
    pub first_connect: Option<Duration>,
    pub last_accept: Option<Duration>,
    /// Per accepted message, microseconds: connect → 250 for a session's first message (it
    /// includes the greeting, EHLO, STARTTLS and AUTH), previous 250 → 250 for later ones.
    pub latencies_us: Vec<u32>,
    /// Sequence numbers of accepted messages (the sink checks every one arrives).
    pub accepted_seqs: Vec<u64>,
}

impl LoadResult {
    /// Adds another load's figures to these.
    pub fn merge(&mut self, o: LoadResult) {
        self.sent += o.sent;
        self.accepted += o.accepted;
        self.refused += o.refused;
        self.errors += o.errors;
        self.sessions += o.sessions;
        for (k, v) in o.problems {
            *self.problems.entry(k).or_default() += v;
        }
        self.bytes_accepted += o.bytes_accepted;
        self.first_connect = min_opt(self.first_connect, o.first_connect);
        self.last_accept = max_opt(self.last_accept, o.last_accept);
        self.latencies_us.extend(o.latencies_us);
        self.accepted_seqs.extend(o.accepted_seqs);
    }

    fn problem(&mut self, key: String) {
        *self.problems.entry(key).or_default() += 1;
    }
}

fn min_opt(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

fn max_opt(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    }
}

/// Runs the whole load and returns when every message has an outcome.
pub async fn run(spec: Arc<LoadSpec>, base: Instant) -> LoadResult {
    let next = spec
        .hooks
        .next
        .clone()
        .unwrap_or_else(|| Arc::new(AtomicU64::new(0)));
    let commands = Arc::new(Commands::new(&spec));
    let mut tasks = Vec::with_capacity(spec.sessions);
    for _ in 0..spec.sessions {
        let worker = Worker {
            spec: spec.clone(),
            commands: commands.clone(),
            next: next.clone(),
            base,
            stats: LoadResult::default(),
            header: Vec::with_capacity(512),
            reply: Vec::with_capacity(1024),
            current: None,
        };
        tasks.push(tokio::spawn(worker.run()));
    }
    let mut total = LoadResult::default();
    for t in tasks {
        match t.await {
            Ok(stats) => total.merge(stats),
            // A panic in a worker is a bug of ours; report it rather than hide its messages.
            Err(e) => total.problem(format!("worker failed: {e}")),
        }
    }
    total
}

/// Command lines that are the same for every message, formatted once.
struct Commands {
    ehlo: Vec<u8>,
    auth: Option<Vec<u8>>,
    mail: Vec<u8>,
    rcpt: Vec<u8>,
}

impl Commands {
    fn new(spec: &LoadSpec) -> Commands {
        Commands {
            ehlo: format!("EHLO {}\r\n", spec.helo).into_bytes(),
            auth: spec.auth.as_ref().map(Auth::command),
            mail: format!("MAIL FROM:<{}>\r\n", spec.from).into_bytes(),
            rcpt: format!("RCPT TO:<{}>\r\n", spec.to).into_bytes(),
        }
    }
}

/// Where in the session something went wrong (for the problem counts).
#[derive(Clone, Copy, Debug)]
enum Stage {
    Connect,
    Greeting,
    Ehlo,
    StartTls,
    Handshake,
    Auth,
    Mail,
    Rcpt,
    Data,
    DataEnd,
    Quit,
}

/// Why a session stopped early.
enum Fail {
    /// The server answered with this code where another class was expected.
    Refused(Stage, u16),
    /// No usable answer: timeout, I/O error, closed connection, garbage.
    Error(Stage, String),
}

impl Fail {
    fn key(&self) -> String {
        match self {
            Fail::Refused(stage, code) => format!("refused at {stage:?}: {code}"),
            Fail::Error(stage, what) => format!("{what} at {stage:?}"),
        }
    }
}

fn io_fail(stage: Stage, e: &std::io::Error) -> Fail {
    Fail::Error(stage, e.kind().to_string())
}

struct Worker {
    spec: Arc<LoadSpec>,
    commands: Arc<Commands>,
    next: Arc<AtomicU64>,
    base: Instant,
    stats: LoadResult,
    /// Reused buffers: the per-message header block and the reply being read.
    header: Vec<u8>,
    reply: Vec<u8>,
    /// The message in flight, if any: it fails with the session.
    current: Option<u64>,
}

impl Worker {
    async fn run(mut self) -> LoadResult {
        let mut rests = 0u64;
        while let Some(seq) = self.claim() {
            if let Some(pace) = self.spec.hooks.pace
                && rests > 0
            {
                tokio::time::sleep(jitter(pace, seq)).await;
                if self.stopped() {
                    self.stats.sent -= 1;
                    break;
                }
            }
            rests += 1;
            self.current = Some(seq);
            if let Err(fail) = self.session().await {
                let key = fail.key();
                match (self.current.take(), &fail) {
                    (Some(_), Fail::Refused(..)) => self.stats.refused += 1,
                    (Some(_), Fail::Error(..)) => self.stats.errors += 1,
                    // After the session's last message (e.g. at QUIT): no message is lost.
                    (None, _) => {}
                }
                self.stats.problem(key);
            }
        }
        self.stats
    }

    fn stopped(&self) -> bool {
        self.spec
            .hooks
            .stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::SeqCst))
    }

    fn claim(&mut self) -> Option<u64> {
        if self.stopped() {
            return None;
        }
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        if seq < self.spec.messages {
            self.stats.sent += 1;
            Some(seq)
        } else {
            None
        }
    }

    async fn session(&mut self) -> Result<(), Fail> {
        let spec = self.spec.clone();
        let commands = self.commands.clone();
        let t0 = Instant::now();
        self.stats.sessions += 1;
        self.stats.first_connect = min_opt(self.stats.first_connect, Some(t0 - self.base));
        let tcp = match tokio::time::timeout(spec.timeout, TcpStream::connect(&spec.addr)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(io_fail(Stage::Connect, &e)),
            Err(_) => return Err(Fail::Error(Stage::Connect, "timeout".into())),
        };
        // Commands are small and lock-step: do not let Nagle hold them back.
        let _ = tcp.set_nodelay(true);
        let mut conn = BufReader::with_capacity(4096, tcp);
        self.expect(&mut conn, 2, Stage::Greeting).await?;
        self.command(&mut conn, &commands.ehlo, 2, Stage::Ehlo)
            .await?;
        match &spec.starttls {
            None => self.transactions(conn, t0).await,
            Some((config, name)) => {
                self.command(&mut conn, b"STARTTLS\r\n", 2, Stage::StartTls)
                    .await?;
                // The server speaks only after the handshake, so nothing is left in the buffer.
                let tcp = conn.into_inner();
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                let tls =
                    match tokio::time::timeout(spec.timeout, connector.connect(name.clone(), tcp))
                        .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => return Err(io_fail(Stage::Handshake, &e)),
                        Err(_) => return Err(Fail::Error(Stage::Handshake, "timeout".into())),
                    };
                let mut conn = BufReader::with_capacity(4096, tls);
                self.command(&mut conn, &commands.ehlo, 2, Stage::Ehlo)
                    .await?;
                self.transactions(conn, t0).await
            }
        }
    }

    /// AUTH, then messages until the session's quota or the work runs out, then QUIT.
    async fn transactions<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        mut conn: BufReader<S>,
        t0: Instant,
    ) -> Result<(), Fail> {
        let spec = self.spec.clone();
        let commands = self.commands.clone();
        if let Some(auth) = &commands.auth {
            self.command(&mut conn, auth, 2, Stage::Auth).await?;
        }
        let mut started = t0;
        let mut done = 0u64;
        while let Some(seq) = self.current {
            self.command(&mut conn, &commands.mail, 2, Stage::Mail)
                .await?;
            self.command(&mut conn, &commands.rcpt, 2, Stage::Rcpt)
                .await?;
            self.command(&mut conn, b"DATA\r\n", 3, Stage::Data).await?;
            spec.template.pick(seq).write_header(seq, &mut self.header);
            self.send_message(&mut conn, seq).await?;
            self.expect(&mut conn, 2, Stage::DataEnd).await?;
            let now = Instant::now();
            self.current = None;
            self.stats.accepted += 1;
            self.stats.bytes_accepted += spec.template.pick(seq).message_len() as u64;
            self.stats.accepted_seqs.push(seq);
            if let Some(hook) = &spec.hooks.on_accept {
                hook(seq);
            }
            self.stats
                .latencies_us
                .push((now - started).as_micros().min(u32::MAX as u128) as u32);
            self.stats.last_accept = max_opt(self.stats.last_accept, Some(now - self.base));
            started = now;
            done += 1;
            if done < spec.per_session {
                // A worker leaves a session after its share, or when the load is stopped.
                self.current = self.claim();
            }
        }
        self.command(&mut conn, b"QUIT\r\n", 2, Stage::Quit).await?;
        Ok(())
    }

    /// Writes the header block and the shared body (with its final dot): two writes, no copy.
    async fn send_message<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut BufReader<S>,
        seq: u64,
    ) -> Result<(), Fail> {
        let stage = Stage::DataEnd;
        let timeout = self.spec.timeout;
        let body = self.spec.template.pick(seq).body_with_dot().clone();
        let header = &self.header;
        let write = async {
            conn.write_all(header).await?;
            conn.write_all(&body).await?;
            conn.flush().await
        };
        match tokio::time::timeout(timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(io_fail(stage, &e)),
            Err(_) => Err(Fail::Error(stage, "timeout".into())),
        }
    }

    /// Sends one command line and checks the reply's class (2 for 2xx, 3 for 3xx).
    async fn command<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut BufReader<S>,
        line: &[u8],
        class: u16,
        stage: Stage,
    ) -> Result<(), Fail> {
        let write = async {
            conn.write_all(line).await?;
            conn.flush().await
        };
        match tokio::time::timeout(self.spec.timeout, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(io_fail(stage, &e)),
            Err(_) => return Err(Fail::Error(stage, "timeout".into())),
        }
        self.expect(conn, class, stage).await
    }

    /// Reads one (possibly multi-line) reply and checks its class.
    async fn expect<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut BufReader<S>,
        class: u16,
        stage: Stage,
    ) -> Result<(), Fail> {
        let code = self.read_reply(conn, stage).await?;
        if code / 100 == class {
            Ok(())
        } else {
            Err(Fail::Refused(stage, code))
        }
    }

    async fn read_reply<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut BufReader<S>,
        stage: Stage,
    ) -> Result<u16, Fail> {
        self.reply.clear();
        loop {
            let start = self.reply.len();
            let read =
                tokio::time::timeout(self.spec.timeout, conn.read_until(b'\n', &mut self.reply))
                    .await;
            match read {
                Ok(Ok(0)) => return Err(Fail::Error(stage, "connection closed".into())),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(io_fail(stage, &e)),
                Err(_) => return Err(Fail::Error(stage, "timeout".into())),
            }
            let line = &self.reply[start..];
            let code = match parse_code(line) {
                Some(c) => c,
                None => return Err(Fail::Error(stage, "malformed reply".into())),
            };
            if line.get(3) == Some(&b'-') {
                if self.reply.len() > MAX_REPLY {
                    return Err(Fail::Error(stage, "reply too long".into()));
                }
                continue;
            }
            return Ok(code);
        }
    }
}

/// `base` ±50 %, varied by `seed` (a sequence number: deterministic, no RNG state to share).
fn jitter(base: Duration, seed: u64) -> Duration {
    let spread = crate::message::mix64(seed) % 1001;
    base.mul_f64(0.5 + spread as f64 / 1000.0)
}

/// The code of a reply line ("250-..." / "250 ..." / "250\r\n"), if it has one.
pub fn parse_code(line: &[u8]) -> Option<u16> {
    let digits = line.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    match line.get(3) {
        None | Some(b' ' | b'-' | b'\r' | b'\n') => {}
        Some(_) => return None,
    }
    Some(
        digits
            .iter()
            .fold(0u16, |n, d| n * 10 + u16::from(d - b'0')),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Template;

    #[test]
    fn auth_command_lines() {
        let plain = Auth::Plain {
            user: "u".into(),
            password: "p".into(),
        };
        assert_eq!(plain.command(), b"AUTH PLAIN AHUAcA==\r\n");
        let xoauth2 = Auth::XOAuth2 {
            user: "a@b.c".into(),
            token: "tok".into(),
        };
        // base64("user=a@b.c^Aauth=Bearer tok^A^A")
        assert_eq!(
            xoauth2.command(),
            b"AUTH XOAUTH2 dXNlcj1hQGIuYwFhdXRoPUJlYXJlciB0b2sBAQ==\r\n"
        );
    }

    #[test]
    fn reply_codes() {
        assert_eq!(parse_code(b"250 ok\r\n"), Some(250));
        assert_eq!(parse_code(b"250-PIPELINING\r\n"), Some(250));
        assert_eq!(parse_code(b"354\r\n"), Some(354));
        assert_eq!(parse_code(b"25x ok\r\n"), None);
        assert_eq!(parse_code(b"2500 ok\r\n"), None);
        assert_eq!(parse_code(b"25"), None);
    }

    /// A scripted server on loopback: the generator's whole conversation, a refusal, and a
    /// session that ends without a reply, each counted once and never panicking.
    #[tokio::test]
    async fn counts_accepted_refused_and_errors() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((tcp, _)) = listener.accept().await {
                n += 1;
                let nth = n;
                tokio::spawn(async move {
                    let mut c = BufReader::new(tcp);
                    // Session 2 is refused at MAIL; session 3 is dropped after the greeting.
                    let _ = c.write_all(b"220 hi\r\n").await;
                    let mut line = Vec::new();
                    let mut in_data = false;
                    loop {
                        line.clear();
                        if c.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if nth == 3 {
                            return;
                        }
                        let reply: &[u8] = if in_data {
                            if line != b".\r\n" {
                                continue;
                            }
                            in_data = false;
                            b"250 queued\r\n"
                        } else if line.starts_with(b"EHLO") {
                            b"250-hi\r\n250 AUTH PLAIN\r\n"
                        } else if line.starts_with(b"AUTH PLAIN AHUAcA==") {
                            b"235 ok\r\n"
                        } else if line.starts_with(b"MAIL") && nth == 2 {
                            b"451 busy\r\n"
                        } else if line.starts_with(b"DATA") {
                            in_data = true;
                            b"354 go\r\n"
                        } else if line.starts_with(b"QUIT") {
                            let _ = c.write_all(b"221 bye\r\n").await;
                            let _ = c.read_to_end(&mut line).await;
                            return;
                        } else {
                            b"250 ok\r\n"
                        };
                        let _ = c.write_all(reply).await;
                    }
                });
            }
        });
        let spec = Arc::new(LoadSpec {
            addr,
            sessions: 1,
            messages: 5,
            per_session: 2,
            template: Template::new("a@b.example", "c@d.example", "t", 1000).into(),
            auth: Some(Auth::Plain {
                user: "u".into(),
                password: "p".into(),
            }),
            starttls: None,
            from: "a@b.example".into(),
            to: "c@d.example".into(),
            helo: "bench".into(),
            timeout: Duration::from_secs(5),
            hooks: Hooks::default(),
        });
        let r = run(spec, Instant::now()).await;
        // Session 1: 2 accepted; 2: refused; 3: error; 4: the remaining message... (5 claimed).
        assert_eq!(r.sent, 5);
        assert_eq!(r.refused, 1);
        assert_eq!(r.errors, 1);
        assert_eq!(r.accepted, 3);
        assert_eq!(r.latencies_us.len(), 3);
        assert_eq!(r.bytes_accepted, 3000);
        assert_eq!(r.problems.get("refused at Mail: 451"), Some(&1));
        assert_eq!(r.problems.get("connection closed at Ehlo"), Some(&1));
        let mut seqs = r.accepted_seqs.clone();
        seqs.sort();
        assert_eq!(seqs, vec![0, 1, 4]);
    }
}

//! A hand-written upstream for the few behaviours `FakeSmtp` cannot stage.
//!
//! `FakeSmtp` delays every reply alike and never misbehaves on the wire. Some route behaviour
//! needs a peer that does one specific odd thing: answer the message body (and only the body)
//! slowly, or send plaintext after its STARTTLS `220` (the CVE-2011-0411 response injection).
//! This peer accepts one connection, speaks just enough ESMTP for `SmtpRoute` (any AUTH
//! succeeds: token checking is `FakeSmtp`'s job), and records the command lines it got.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Default)]
pub struct RawOptions {
    /// Offer STARTTLS with this certificate; after the `220` send `inject` in clear.
    pub starttls: Option<(Arc<rustls::ServerConfig>, &'static [u8])>,
    /// Wait this long before answering the message body.
    pub final_delay: Duration,
}

pub struct RawUpstream {
    pub port: u16,
    commands: Arc<Mutex<Vec<String>>>,
}

impl RawUpstream {
    /// Command lines received so far (AUTH payloads cut off), in order.
    pub fn commands(&self) -> Vec<String> {
        self.commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

pub async fn start(opts: RawOptions) -> RawUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let commands = Arc::new(Mutex::new(Vec::new()));
    let log = commands.clone();
    tokio::spawn(async move {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        session(tcp, opts, log).await;
    });
    RawUpstream { port, commands }
}

async fn session(mut tcp: TcpStream, opts: RawOptions, log: Arc<Mutex<Vec<String>>>) {
    if send(&mut tcp, b"220 raw.test ESMTP ready\r\n")
        .await
        .is_none()
    {
        return;
    }
    let Some(tcp) = serve(tcp, false, &opts, &log).await else {
        return;
    };
    let Some((cfg, _)) = &opts.starttls else {
        return;
    };
    let Ok(tls) = tokio_rustls::TlsAcceptor::from(cfg.clone())
        .accept(tcp)
        .await
    else {
        return;
    };
    serve(tls, true, &opts, &log).await;
}

/// Runs commands until QUIT or EOF; returns the stream when the client asked for STARTTLS.
async fn serve<S>(stream: S, tls: bool, opts: &RawOptions, log: &Mutex<Vec<String>>) -> Option<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut s = BufReader::new(stream);
    loop {
        let mut raw = Vec::new();
        if s.read_until(b'\n', &mut raw).await.ok()? == 0 {
            return None;
        }
        let line = String::from_utf8_lossy(&raw).trim_end().to_string();
        let verb = line
            .split(' ')
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let logged = if verb == "AUTH" {
            "AUTH [redacted]".to_string()
        } else {
            line.clone()
        };
        log.lock().unwrap_or_else(|e| e.into_inner()).push(logged);
        let reply: &[u8] = match verb.as_str() {
            "EHLO" if opts.starttls.is_some() && !tls => b"250-raw.test\r\n250 STARTTLS\r\n",
            "EHLO" => b"250-raw.test\r\n250-SIZE 10000000\r\n250 AUTH XOAUTH2\r\n",
            "STARTTLS" => {
                let inject = opts.starttls.as_ref().map_or(&b""[..], |(_, i)| *i);
                let mut out = b"220 2.0.0 go ahead\r\n".to_vec();
                out.extend_from_slice(inject);
                // One write, so the client reads the injection together with the 220.
                send(s.get_mut(), &out).await?;
                // Whatever the client pipelined in clear is dropped with the buffer.
                return Some(s.into_inner());
            }
            "AUTH" => b"235 2.7.0 Authentication successful\r\n",
            "MAIL" => b"250 2.1.0 Sender OK\r\n",
            "RCPT" => b"250 2.1.5 Recipient OK\r\n",
            "DATA" => {
                send(s.get_mut(), b"354 go ahead\r\n").await?;
                loop {
                    let mut body_line = Vec::new();
                    if s.read_until(b'\n', &mut body_line).await.ok()? == 0 {
                        return None;
                    }
                    if body_line == b".\r\n" {
                        break;
                    }
                }
                tokio::time::sleep(opts.final_delay).await;
                b"250 2.0.0 queued as raw-1\r\n"
            }
            "QUIT" => {
                let _ = send(s.get_mut(), b"221 2.0.0 bye\r\n").await;
                return None;
            }
            _ => b"500 5.5.1 unrecognized command\r\n",
        };
        send(s.get_mut(), reply).await?;
    }
}

async fn send<S: AsyncWrite + Unpin>(s: &mut S, bytes: &[u8]) -> Option<()> {
    s.write_all(bytes).await.ok()?;
    s.flush().await.ok()
}

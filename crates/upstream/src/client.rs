//! An SMTP client connection: send commands, read replies whole, upgrade to TLS.
//!
//! Every read and write has a deadline, so a stalled upstream turns into a temporary failure
//! instead of a stuck delivery. Replies are framed line by line here and assembled by
//! `proto::ReplyAssembler`, which keeps enhanced status codes of any size and every line.

use rustls::pki_types::ServerName;
use smtp2oauth_proto::{DeliveryError, Reply, ReplyAssembler, Stage};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::time::timeout;
use tracing::trace;

/// A plain or TLS stream, so one client type covers both phases of STARTTLS.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

pub(crate) struct Client {
    stream: Option<Stream>,
    rbuf: Vec<u8>,
    pub(crate) command_timeout: Duration,
    target: String,
}

fn lost(stage: Stage, e: impl std::fmt::Display) -> DeliveryError {
    DeliveryError::ConnectionLost {
        stage,
        detail: e.to_string(),
    }
}

impl Client {
    /// Connects to `addr` (a host and port, or a resolved address) within `connect_timeout`;
    /// `target` names the peer in errors and logs.
    pub(crate) async fn connect(
        target: String,
        addr: impl ToSocketAddrs,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Result<Client, DeliveryError> {
        let tcp = match timeout(connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(DeliveryError::Connect {
                    target,
                    detail: e.to_string(),
                });
            }
            Err(_) => {
                return Err(DeliveryError::Connect {
                    target,
                    detail: format!("no connection within {}s", connect_timeout.as_secs()),
                });
            }
        };
        let _ = tcp.set_nodelay(true);
        Ok(Client {
            stream: Some(Stream::Plain(tcp)),
            rbuf: Vec::with_capacity(4096),
            command_timeout,
            target,
        })
    }

    pub(crate) fn target(&self) -> &str {
        &self.target
    }

    fn stream(&mut self, stage: Stage) -> Result<&mut Stream, DeliveryError> {
        self.stream
            .as_mut()
            .ok_or_else(|| lost(stage, "connection already closed"))
    }

    /// Wraps the connection in TLS. Anything the server sent before the handshake is dropped:
    /// it cannot be trusted as part of the encrypted session.
    pub(crate) async fn start_tls(
        &mut self,
        config: Arc<rustls::ClientConfig>,
        host: &str,
    ) -> Result<(), DeliveryError> {
        let name = ServerName::try_from(host.to_string()).map_err(|_| DeliveryError::Tls {
            detail: format!("`{host}` is not a valid TLS server name"),
        })?;
        let tcp = match self.stream.take() {
            Some(Stream::Plain(tcp)) => tcp,
            Some(tls @ Stream::Tls(_)) => {
                self.stream = Some(tls);
                return Ok(());
            }
            None => return Err(lost(Stage::StartTls, "connection already closed")),
        };
        self.rbuf.clear();
        let connector = tokio_rustls::TlsConnector::from(config);
        match timeout(self.command_timeout, connector.connect(name, tcp)).await {
            Ok(Ok(tls)) => {
                self.stream = Some(Stream::Tls(Box::new(tls)));
                Ok(())
            }
            Ok(Err(e)) => Err(DeliveryError::Tls {
                detail: e.to_string(),
            }),
            Err(_) => Err(DeliveryError::Timeout {
                stage: Stage::StartTls,
            }),
        }
    }

    /// Writes bytes (commands or body) with the command deadline.
    pub(crate) async fn write(&mut self, bytes: &[u8], stage: Stage) -> Result<(), DeliveryError> {
        let t = self.command_timeout;
        let stream = self.stream(stage)?;
        let w = async {
            stream.write_all(bytes).await?;
            stream.flush().await
        };
        match timeout(t, w).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(lost(stage, e)),
            Err(_) => Err(DeliveryError::Timeout { stage }),
        }
    }

    /// Writes without flushing (for streaming a body in chunks).
    pub(crate) async fn write_part(
        &mut self,
        bytes: &[u8],
        stage: Stage,
    ) -> Result<(), DeliveryError> {
        let t = self.command_timeout;
        let stream = self.stream(stage)?;
        match timeout(t, stream.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(lost(stage, e)),
            Err(_) => Err(DeliveryError::Timeout { stage }),
        }
    }

    /// Reads one whole reply (all its lines) within `wait`.
    pub(crate) async fn read_reply_within(
        &mut self,
        stage: Stage,
        wait: Duration,
    ) -> Result<Reply, DeliveryError> {
        let mut asm = ReplyAssembler::new();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(pos) = memchr::memchr(b'\n', &self.rbuf) {
                let line: Vec<u8> = self.rbuf.drain(..=pos).collect();
                trace!(stage = %stage, line = %String::from_utf8_lossy(&line).trim_end(), "upstream said");
                match asm.push_line(&line) {
                    Ok(Some(reply)) => return Ok(reply),
                    Ok(None) => {}
                    Err(e) => {
                        return Err(DeliveryError::Protocol {
                            stage,
                            detail: e.to_string(),
                        });
                    }
                }
            }
            if self.rbuf.len() > smtp2oauth_proto::reply::MAX_REPLY_LINE {
                return Err(DeliveryError::Protocol {
                    stage,
                    detail: "reply line too long".into(),
                });
            }
            let mut chunk = [0u8; 8192];
            let stream = self.stream(stage)?;
            match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
                Ok(Ok(0)) => return Err(lost(stage, "upstream closed the connection")),
                Ok(Ok(n)) => self.rbuf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => return Err(lost(stage, e)),
                Err(_) => return Err(DeliveryError::Timeout { stage }),
            }
        }
    }

    pub(crate) async fn read_reply(&mut self, stage: Stage) -> Result<Reply, DeliveryError> {
        let t = self.command_timeout;
        self.read_reply_within(stage, t).await
    }

    /// Sends a command line and reads its reply.
    pub(crate) async fn command(
        &mut self,
        line: &str,
        stage: Stage,
    ) -> Result<Reply, DeliveryError> {
        trace!(stage = %stage, "sending {}", if stage == Stage::Auth { "AUTH [redacted]" } else { line });
        self.write(format!("{line}\r\n").as_bytes(), stage).await?;
        self.read_reply(stage).await
    }

    /// True when the server has closed (or spoken on) a connection we were not using: an idle
    /// pooled session the upstream timed out. Checked without waiting: one read is polled
    /// once. A server says nothing unasked in SMTP, so any byte (typically `421 4.4.2 ...
    /// timeout`) or an end of stream means the session cannot be reused.
    pub(crate) fn is_stale(&mut self) -> bool {
        if !self.rbuf.is_empty() {
            return true;
        }
        let Some(stream) = self.stream.as_mut() else {
            return true;
        };
        let mut byte = [0u8; 64];
        let mut buf = ReadBuf::new(&mut byte);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(stream).poll_read(&mut cx, &mut buf) {
            Poll::Pending => false,
            Poll::Ready(Ok(())) => {
                // Keep what arrived for the log line of whoever drops the session.
                self.rbuf.extend_from_slice(buf.filled());
                true
            }
            Poll::Ready(Err(_)) => true,
        }
    }

    /// Says goodbye politely, without waiting long: the message is already settled.
    pub(crate) async fn quit(mut self) {
        if self.write(b"QUIT\r\n", Stage::Data).await.is_ok() {
            let _ = self
                .read_reply_within(Stage::Data, Duration::from_secs(5))
                .await;
        }
        if let Some(mut s) = self.stream.take() {
            let _ = timeout(Duration::from_secs(5), s.shutdown()).await;
        }
    }
}

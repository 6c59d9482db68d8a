//! Hand-written minimal SMTP and HTTP clients, independent of the fakes' code, so the tests prove
//! the fakes speak the protocols over real sockets rather than agreeing with themselves.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const T: Duration = Duration::from_secs(10);

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

pub struct Client {
    stream: Option<Stream>,
    buf: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
    pub fn has_line(&self, needle: &str) -> bool {
        self.lines.iter().any(|l| l.get(4..) == Some(needle))
    }
}

pub fn xoauth2(user: &str, token: &str) -> String {
    STANDARD.encode(format!("user={user}\x01auth=Bearer {token}\x01\x01"))
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).await.unwrap();
        Client {
            stream: Some(Stream::Plain(tcp)),
            buf: Vec::new(),
        }
    }

    pub async fn connect_implicit_tls(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> Client {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .unwrap();
        Client {
            stream: Some(Stream::Tls(Box::new(tls))),
            buf: Vec::new(),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Some(Stream::Tls(_)))
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        let r = match self.stream.as_mut().unwrap() {
            Stream::Plain(s) => s.write_all(bytes).await,
            Stream::Tls(s) => {
                let r = s.write_all(bytes).await;
                s.flush().await.and(r)
            }
        };
        r.unwrap();
    }

    async fn read_some(&mut self) -> std::io::Result<usize> {
        let mut tmp = [0u8; 8192];
        let n = match self.stream.as_mut().unwrap() {
            Stream::Plain(s) => s.read(&mut tmp).await?,
            Stream::Tls(s) => s.read(&mut tmp).await?,
        };
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    /// Reads one complete (possibly multi-line) reply. Panics on EOF or timeout.
    pub async fn reply(&mut self) -> Reply {
        tokio::time::timeout(T, self.try_reply())
            .await
            .expect("timed out waiting for a reply")
            .expect("connection closed before a reply")
    }

    /// One reply, or `None` if the connection closed first.
    pub async fn try_reply(&mut self) -> Option<Reply> {
        let mut lines = Vec::new();
        loop {
            while let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..p + 2).collect();
                let line = String::from_utf8(line[..p].to_vec()).expect("reply is UTF-8");
                assert!(line.len() >= 3, "short reply line {line:?}");
                let code: u16 = line[..3].parse().expect("reply code");
                let last = line.as_bytes().get(3) != Some(&b'-');
                lines.push(line);
                if last {
                    return Some(Reply { code, lines });
                }
            }
            match self.read_some().await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    pub async fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// STARTTLS + handshake; asserts the 220.
    pub async fn starttls(&mut self, cfg: Arc<rustls::ClientConfig>) {
        let r = self.cmd("STARTTLS").await;
        assert_eq!(r.code, 220, "{r:?}");
        self.upgrade(cfg).await;
    }

    pub async fn upgrade(&mut self, cfg: Arc<rustls::ClientConfig>) {
        assert!(
            self.buf.is_empty(),
            "server sent bytes after 220: {:?}",
            self.buf
        );
        let Some(Stream::Plain(tcp)) = self.stream.take() else {
            panic!("already TLS")
        };
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .unwrap();
        self.stream = Some(Stream::Tls(Box::new(tls)));
    }

    /// True if the server closes (EOF or reset) without sending anything more.
    pub async fn closed_without_reply(&mut self) -> bool {
        match tokio::time::timeout(T, self.read_some()).await {
            Ok(Ok(0)) | Ok(Err(_)) => self.buf.is_empty(),
            Ok(Ok(_)) => false,
            Err(_) => false,
        }
    }

    /// Greeting, EHLO, STARTTLS, EHLO: ready for AUTH.
    pub async fn to_auth(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> Client {
        let mut c = Client::connect(addr).await;
        assert_eq!(c.reply().await.code, 220);
        assert_eq!(c.cmd("EHLO relay.test").await.code, 250);
        c.starttls(cfg).await;
        assert_eq!(c.cmd("EHLO relay.test").await.code, 250);
        c
    }
}

/// A minimal HTTP/1.1 POST over a raw socket; returns (status, lower-cased headers, body).
pub async fn http_post(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    http_post_with(addr, path, content_type, "", body).await
}

/// Like [`http_post`] with extra header lines (each ending in CRLF).
pub async fn http_post_with(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    extra_headers: &str,
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\n{extra_headers}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(T, tcp.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

/// application/x-www-form-urlencoded encoding of pairs.
pub fn form(pairs: &[(&str, &str)]) -> String {
    fn enc(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                b' ' => "+".to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    }
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// An HTTP/1.1 answer: status, lower-cased headers, body.
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpAnswer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// One HTTP/1.1 request over TLS (`Connection: close`), written by hand: `head` holds the
/// extra header lines as given (so a test can send exactly the headers it means, a wrong one
/// included); `Content-Length` is added unless `head` has one.
pub async fn https_request(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    method: &str,
    target: &str,
    head: &[(&str, &str)],
    body: &[u8],
) -> HttpAnswer {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .unwrap();
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in head {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !head
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    tls.write_all(req.as_bytes()).await.unwrap();
    tls.write_all(body).await.unwrap();
    tls.flush().await.unwrap();
    let mut raw = Vec::new();
    let mut tmp = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(T, tls.read(&mut tmp)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => raw.extend_from_slice(&tmp[..n]),
            Err(_) => panic!("timed out reading the answer"),
        }
    }
    parse_answer(&raw)
}

fn parse_answer(raw: &[u8]) -> HttpAnswer {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP head");
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if header(&headers, "transfer-encoding") == Some("chunked") {
        body = dechunk(&body);
    }
    HttpAnswer {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(p) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&b[..p]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[p + 2..p + 2 + size]);
        b = &b[p + 2 + size + 2..];
    }
    out
}
